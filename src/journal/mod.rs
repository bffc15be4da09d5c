//! What pg-migrate keeps in the new cluster's `pg_migrate.d/`, so that an
//! interrupted run can be resumed or reverted and wrappers can tell where an
//! upgrade stands without running pg-migrate (docs/recovery.md):
//!
//! - `journal.ndjson`: append-only [`Record`]s (typed, in `record.rs`: the
//!   plan, each finished step, the point of no return, the end), fsynced at
//!   every record; read back as a [`JournalView`];
//! - `state`: one word, `upgrading`, `failed`, `reverted`, `complete` or
//!   `prepared` (waiting for `cutover`);
//! - `pristine.tar` (`pristine.rs`): the new cluster as initdb made it;
//! - the files a continuing run reads (`saved.rs`): the transfer plan
//!   (`transfer-plan.json`) and what prepare saw (`prepared.json`);
//! - the post-upgrade markers.
//!
//! Every one of these files is written with [`write_atomically`]: whole or
//! not at all, and durable before anything depends on it. This module knows
//! nothing of how an upgrade runs; it only keeps its record.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use pgm_cluster::ControlStamp;

mod pristine;
mod record;
mod saved;

pub use pristine::{
    has_pristine, pristine_file, remove_staged_copies, restore_pristine, save_pristine,
};
pub use record::{
    AfterRecord, DatabaseHorizonsRecord, HorizonsRecord, Line, PlanRecord, PlanSide, Record,
};
pub use saved::{
    prepared_path, read_prepared, read_transfer_plan, transfer_plan_path, write_prepared,
    write_transfer_plan, PreparedDatabase, PreparedState, TransferPlanRef,
};

pub const DIR: &str = "pg_migrate.d";

pub fn dir(new_datadir: &Path) -> PathBuf {
    new_datadir.join(DIR)
}

/// Where an upgrade stands, as the `state` file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Upgrading,
    Failed,
    Reverted,
    Complete,
    /// `prepare` finished: the new cluster waits for `cutover` (or `discard`).
    Prepared,
}

impl State {
    pub fn word(self) -> &'static str {
        match self {
            State::Upgrading => "upgrading",
            State::Failed => "failed",
            State::Reverted => "reverted",
            State::Complete => "complete",
            State::Prepared => "prepared",
        }
    }
}

/// Replaces the state file atomically (written whole under a temporary
/// name, fsynced, renamed, the directory fsynced).
pub fn write_state(new_datadir: &Path, state: State) -> std::io::Result<()> {
    write_atomically(
        &dir(new_datadir).join("state"),
        format!("{}\n", state.word()).as_bytes(),
    )
}

pub fn read_state(new_datadir: &Path) -> Option<State> {
    let Ok(text) = std::fs::read_to_string(dir(new_datadir).join("state")) else {
        // The journal is made before the state file: one without the other
        // is an upgrade killed in between.
        return dir(new_datadir)
            .join("journal.ndjson")
            .is_file()
            .then_some(State::Upgrading);
    };
    match text.trim() {
        "upgrading" => Some(State::Upgrading),
        "failed" => Some(State::Failed),
        "reverted" => Some(State::Reverted),
        "complete" => Some(State::Complete),
        "prepared" => Some(State::Prepared),
        _ => None,
    }
}

pub struct Journal {
    file: File,
    /// The file may end in a line cut short (a write that failed part-way,
    /// a full disk): the next record starts on a line of its own.
    torn: bool,
}

impl Journal {
    /// Opens `<new>/pg_migrate.d/journal.ndjson` for appending. It must
    /// exist: [`Journal::create`] makes it, whole, with its first records.
    pub fn open(new_datadir: &Path) -> std::io::Result<Journal> {
        let path = dir(new_datadir).join("journal.ndjson");
        let mut file = OpenOptions::new().read(true).append(true).open(&path)?;
        Ok(Journal {
            torn: !ends_with_newline(&mut file)?,
            file,
        })
    }

    /// Makes the journal with its first records (the plan, the run) in one
    /// step, so that a journal is never seen without them.
    pub fn create(new_datadir: &Path, first: Vec<Record>) -> std::io::Result<Journal> {
        let text: String = first.into_iter().map(line).collect();
        write_atomically(&dir(new_datadir).join("journal.ndjson"), text.as_bytes())?;
        Journal::open(new_datadir)
    }

    /// Appends one record and makes it durable before returning.
    pub fn record(&mut self, record: Record) -> std::io::Result<()> {
        let mut text = line(record);
        if self.torn {
            text.insert(0, '\n');
        }
        // One write per record (formatting straight into the file would
        // write it piece by piece).
        if let Err(e) = self.file.write_all(text.as_bytes()) {
            // Part of it may be in the file.
            self.torn = true;
            return Err(e);
        }
        self.torn = false;
        self.file.sync_all()
    }
}

/// One journal line: the record and the time.
fn line(record: Record) -> String {
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut line =
        serde_json::to_string(&Line { record, at_ms }).expect("a journal record always serializes");
    line.push('\n');
    line
}

/// Whether a file is empty or ends with a newline.
fn ends_with_newline(file: &mut File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// Writes `path` whole or not at all, durably: under a temporary name,
/// fsynced, renamed into place, its directory fsynced. Every file of
/// `pg_migrate.d` that recovery depends on is written this way.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomically_with(path, |out| out.write_all(bytes))
}

/// [`write_atomically`], the contents streamed by `write` (a large plan
/// need not be held in memory whole).
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    write(&mut out)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// A journal read back: its records, typed. A line that does not parse (cut
/// short by a crash, so never fsynced) is left out.
/// The old cluster's identity and last checkpoint as the upgrade found it.
pub struct OldAsFound {
    pub old: pgm_cluster::ControlStamp,
    pub timeline: u32,
}

pub struct JournalView {
    records: Vec<Record>,
    new_datadir: PathBuf,
}

impl JournalView {
    pub fn read(new_datadir: &Path) -> Option<JournalView> {
        let text = std::fs::read_to_string(dir(new_datadir).join("journal.ndjson")).ok()?;
        let records = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Line>(l).ok())
            .map(|l| l.record)
            .collect();
        Some(JournalView {
            records,
            new_datadir: new_datadir.to_path_buf(),
        })
    }

    /// The old cluster's pg_control as the upgrade found it.
    pub fn old_as_found(&self) -> Option<OldAsFound> {
        self.records.iter().find_map(|r| match r {
            Record::OldAsFound { old, timeline } => Some(OldAsFound {
                old: old.clone(),
                timeline: *timeline,
            }),
            _ => None,
        })
    }

    /// The physical slots the upgrade made again (the latest record).
    pub fn physical_slots(&self) -> Vec<String> {
        self.records
            .iter()
            .rev()
            .find_map(|r| match r {
                Record::PhysicalSlots { slots } => Some(slots.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The new data directory whose journal this is.
    pub fn new_datadir(&self) -> &Path {
        &self.new_datadir
    }

    /// The first plan: what the upgrade was started with.
    pub fn plan(&self) -> Option<&PlanRecord> {
        self.records.iter().find_map(|r| match r {
            Record::Plan(plan) => Some(plan.as_ref()),
            _ => None,
        })
    }

    /// Steps recorded as done since the last reset of the new cluster.
    pub fn done_steps(&self) -> BTreeSet<String> {
        let mut done = BTreeSet::new();
        for record in &self.records {
            match record {
                // A reset, or the start of the cutover (whose steps share
                // names with prepare's), starts the count afresh.
                Record::Reset | Record::Cutover => done.clear(),
                Record::Step { step, .. } => {
                    done.insert(step.clone());
                }
                _ => {}
            }
        }
        done
    }

    /// Whether the last phase the journal records is a cutover (as opposed
    /// to a prepare or a whole upgrade).
    pub fn in_cutover(&self) -> bool {
        self.records
            .iter()
            .rev()
            .find(|r| matches!(r, Record::Cutover | Record::Reset))
            .is_some_and(|r| matches!(r, Record::Cutover))
    }

    /// Whether the journal is of a `prepare` (its plan says so).
    pub fn is_online(&self) -> bool {
        self.plan().is_some_and(|p| p.phase == "prepare")
    }

    /// Every run directory (sockets) a run recorded: servers listening there
    /// were started by pg-migrate.
    pub fn run_dirs(&self) -> Vec<PathBuf> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::Run { run_dir, .. } => Some(run_dir.clone()),
                _ => None,
            })
            .collect()
    }

    /// The reindex script the upgrade wrote, if any (`scripts` record).
    pub fn reindex_script(&self) -> Option<PathBuf> {
        self.records.iter().rev().find_map(|r| match r {
            Record::Scripts { reindex } => Some(reindex.clone()),
            _ => None,
        })?
    }

    /// The horizons the last cutover verified.
    pub fn horizons(&self) -> Option<&HorizonsRecord> {
        self.records.iter().rev().find_map(|r| match r {
            Record::Horizons(horizons) => Some(horizons),
            _ => None,
        })
    }

    /// The records since the new cluster was last put back as initdb made it.
    fn since_reset(&self) -> &[Record] {
        let start = self
            .records
            .iter()
            .rposition(|r| matches!(r, Record::Reset))
            .map_or(0, |i| i + 1);
        &self.records[start..]
    }

    /// The old cluster's pg_control as the counters were handed over from
    /// it (`handover` record): a late resume may continue only from the very
    /// same old cluster, not run since.
    pub fn handover_stamp(&self) -> Option<ControlStamp> {
        self.since_reset().iter().rev().find_map(|r| match r {
            Record::Handover { old } => Some(old.clone()),
            _ => None,
        })
    }

    /// Whether link or swap mode passed its point of no return (the old
    /// cluster's pg_control renamed, files shared or moved).
    pub fn passed_point_of_no_return(&self) -> bool {
        self.since_reset()
            .iter()
            .any(|r| matches!(r, Record::PointOfNoReturn { .. }))
    }

    /// Whether a revert began (it must then be finished, not resumed).
    pub fn revert_started(&self) -> bool {
        self.since_reset()
            .iter()
            .any(|r| matches!(r, Record::RevertStarted { .. }))
    }

    /// A revert that began: the new cluster's pg_control as it found it
    /// (`Some(None)`: unreadable), and whether it began putting the new
    /// cluster back (`reset_started`), after which that changes by its hand.
    pub fn revert_began_with(&self) -> Option<(Option<ControlStamp>, bool)> {
        let records = self.since_reset();
        let at = records
            .iter()
            .position(|r| matches!(r, Record::RevertStarted { .. }))?;
        let Record::RevertStarted { new_control } = &records[at] else {
            return None;
        };
        let resetting = records[at..]
            .iter()
            .any(|r| matches!(r, Record::ResetStarted));
        Some((new_control.clone(), resetting))
    }

    /// The new cluster's pg_control as pg-migrate last left it: the stamp
    /// of the latest record that carries one (each step, the point of no
    /// return, the end). `None` when no record carries one, or when
    /// pg-migrate changed it itself after it (a run killed while its own
    /// server ran, or in pg_resetwal: not a stranger's doing).
    pub fn new_control_as_left(&self) -> Option<ControlStamp> {
        for record in self.since_reset().iter().rev() {
            match record {
                Record::NewServer | Record::NewControlChanging => return None,
                Record::Step {
                    new_control: Some(stamp),
                    ..
                }
                | Record::PointOfNoReturn {
                    new_control: Some(stamp),
                    ..
                }
                | Record::Complete {
                    new_control: Some(stamp),
                } => return Some(stamp.clone()),
                _ => {}
            }
        }
        None
    }
}

/// An exclusive lock on each existing directory, held until dropped (and
/// released by the kernel if the process dies): a second pg-migrate on the
/// same clusters refuses instead of interfering.
pub struct RunLock {
    _locks: Vec<nix::fcntl::Flock<File>>,
}

impl RunLock {
    pub fn acquire(dirs: &[&Path]) -> Result<RunLock, PathBuf> {
        let mut locks = Vec::new();
        for dir in dirs {
            let Ok(file) = File::open(dir) else { continue };
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(lock) => locks.push(lock),
                Err(_) => return Err(dir.to_path_buf()),
            }
        }
        Ok(RunLock { _locks: locks })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::cli::{Method, Mode};

    fn plan(mode: Mode) -> Record {
        let side = || PlanSide {
            bindir: "/bin".into(),
            datadir: "/data".into(),
            version: "18.6".into(),
            port: 50432,
        };
        Record::Plan(Box::new(PlanRecord {
            mode,
            method: Method::InPlace,
            phase: "full".into(),
            old: side(),
            new: side(),
            user: "postgres".into(),
            jobs: 2,
            cpus: None,
            created_new: false,
            backup_dir: None,
            log_dir: None,
            after: AfterRecord::default(),
        }))
    }

    fn step(name: &str, new_control: Option<ControlStamp>) -> Record {
        Record::Step {
            step: name.into(),
            duration_ms: 1,
            new_control,
        }
    }

    #[test]
    fn state_and_journal_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_state(dir.path()), None);
        write_state(dir.path(), State::Upgrading).unwrap();
        assert_eq!(read_state(dir.path()), Some(State::Upgrading));
        let mut journal = Journal::create(dir.path(), vec![plan(Mode::Link)]).unwrap();
        journal.record(step("dump-old", None)).unwrap();
        journal.record(Record::Reset).unwrap();
        journal.record(step("checks", None)).unwrap();
        journal
            .record(Record::Run {
                run_dir: "/tmp/pgm-x".into(),
                output: "/tmp/out".into(),
                pid: 1,
                resuming: false,
            })
            .unwrap();
        // A torn last line is ignored.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(DIR).join("journal.ndjson"))
            .unwrap()
            .write_all(b"{\"record\":\"st")
            .unwrap();
        let view = JournalView::read(dir.path()).unwrap();
        assert_eq!(view.plan().unwrap().mode, Mode::Link);
        assert_eq!(
            view.done_steps().into_iter().collect::<Vec<_>>(),
            vec!["checks"]
        );
        assert_eq!(view.run_dirs(), vec![PathBuf::from("/tmp/pgm-x")]);
        // The lines keep the spelling docs/recovery.md gives.
        let text = std::fs::read_to_string(dir.path().join(DIR).join("journal.ndjson")).unwrap();
        assert!(
            text.starts_with("{\"record\":\"plan\",\"mode\":\"link\""),
            "{text}"
        );
        assert!(text.contains("{\"record\":\"reset\",\"at_ms\":"), "{text}");
    }

    #[test]
    fn a_line_torn_by_a_failed_write_does_not_swallow_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Journal::open(dir.path()).is_err(),
            "a journal is made whole by create, never by open"
        );
        Journal::create(dir.path(), vec![plan(Mode::Copy)]).unwrap();
        // A full disk cut the last record short.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(DIR).join("journal.ndjson"))
            .unwrap()
            .write_all(b"{\"record\":\"step\",\"st")
            .unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        journal.record(step("checks", None)).unwrap();
        journal.record(step("dump-old", None)).unwrap();
        let view = JournalView::read(dir.path()).unwrap();
        assert_eq!(view.plan().unwrap().mode, Mode::Copy);
        assert_eq!(
            view.done_steps().into_iter().collect::<Vec<_>>(),
            vec!["checks", "dump-old"]
        );
        // A journal without a state file is an upgrade killed in between.
        assert_eq!(read_state(dir.path()), Some(State::Upgrading));
    }

    #[test]
    fn the_stamps_pg_migrate_left_tell_its_own_servers_from_others() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = |lsn: u64| ControlStamp {
            system_identifier: 1,
            state: pgm_cluster::ClusterState::ShutDown,
            time: 5,
            checkpoint_lsn: lsn,
            next_xid_epoch: 0,
            next_xid: 700,
            next_oid: 16384,
            next_multixact: 1,
        };
        let mut journal = Journal::create(dir.path(), vec![plan(Mode::Link)]).unwrap();
        journal.record(step("a", Some(stamp(10)))).unwrap();
        let view = JournalView::read(dir.path()).unwrap();
        assert_eq!(view.new_control_as_left().unwrap().checkpoint_lsn, 10);
        assert!(!view.passed_point_of_no_return());
        journal.record(Record::NewServer).unwrap();
        let view = JournalView::read(dir.path()).unwrap();
        assert!(
            view.new_control_as_left().is_none(),
            "its own server ran last"
        );
        journal
            .record(Record::PointOfNoReturn {
                renamed: "/old/global/pg_control".into(),
                to: "/old/global/pg_control.old".into(),
                new_control: Some(stamp(20)),
            })
            .unwrap();
        journal.record(Record::Handover { old: stamp(30) }).unwrap();
        let view = JournalView::read(dir.path()).unwrap();
        assert_eq!(view.new_control_as_left().unwrap().checkpoint_lsn, 20);
        assert!(view.passed_point_of_no_return());
        assert_eq!(view.handover_stamp().unwrap().checkpoint_lsn, 30);
        journal.record(Record::Reset).unwrap();
        let view = JournalView::read(dir.path()).unwrap();
        assert!(!view.passed_point_of_no_return());
        assert!(view.handover_stamp().is_none());
    }

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(&[dir.path()]).unwrap();
        assert!(RunLock::acquire(&[dir.path()]).is_err());
        drop(first);
        assert!(RunLock::acquire(&[dir.path()]).is_ok());
    }
}
