//! What pg-migrate keeps in the new cluster's `pg_migrate.d/`, so that an
//! interrupted run can be resumed or reverted and wrappers can tell where an
//! upgrade stands without running pg-migrate (docs/recovery.md):
//!
//! - `journal.ndjson`: append-only records (the plan, each finished step, the
//!   point of no return, the end), fsynced at every step boundary;
//! - `state`: one word, `upgrading`, `failed`, `reverted`, `complete` or
//!   `prepared` (waiting for `cutover`), replaced atomically;
//! - `pristine.tar`: the new cluster as initdb made it, to return to;
//! - `transfer-plan.json`: the files to move, saved before the first one
//!   moves, so that the transfer can be finished without the old catalog.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use pgm_cluster::ControlStamp;
use serde_json::{json, Value};

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

/// Replaces the state file atomically (write, fsync, rename, fsync the directory).
pub fn write_state(new_datadir: &Path, state: State) -> std::io::Result<()> {
    let dir = dir(new_datadir);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join("state.tmp");
    let mut file = File::create(&tmp)?;
    writeln!(file, "{}", state.word())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join("state"))?;
    File::open(&dir)?.sync_all()
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
    /// step: written under a temporary name, fsynced, renamed into place and
    /// the directory fsynced, so that a journal is never seen without them.
    pub fn create(new_datadir: &Path, first: &[(&str, Value)]) -> std::io::Result<Journal> {
        let dir = dir(new_datadir);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("journal.ndjson.tmp");
        let mut text = String::new();
        for (kind, fields) in first {
            text.push_str(&line(kind, fields.clone()));
        }
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join("journal.ndjson"))?;
        File::open(&dir)?.sync_all()?;
        Journal::open(new_datadir)
    }

    /// Appends one record and makes it durable before returning.
    pub fn record(&mut self, kind: &str, fields: Value) -> std::io::Result<()> {
        let mut text = line(kind, fields);
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

/// One journal line: the fields, the record's kind and the time.
fn line(kind: &str, mut fields: Value) -> String {
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    if let Value::Object(map) = &mut fields {
        map.insert("record".into(), json!(kind));
        map.insert("at_ms".into(), json!(at_ms));
    }
    let mut line = fields.to_string();
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

/// A journal read back.
pub struct JournalView {
    records: Vec<Value>,
    new_datadir: PathBuf,
}

impl JournalView {
    pub fn read(new_datadir: &Path) -> Option<JournalView> {
        let text = std::fs::read_to_string(dir(new_datadir).join("journal.ndjson")).ok()?;
        // A record cut short by a crash is ignored: it was never fsynced.
        let records = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Some(JournalView {
            records,
            new_datadir: new_datadir.to_path_buf(),
        })
    }

    /// The new data directory whose journal this is.
    pub fn new_datadir(&self) -> &Path {
        &self.new_datadir
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.records.iter().filter(move |r| r["record"] == kind)
    }

    /// The last record of a kind.
    pub fn last(&self, kind: &str) -> Option<&Value> {
        self.records.iter().rev().find(|r| r["record"] == kind)
    }

    /// The first plan: what the upgrade was started with.
    pub fn plan(&self) -> Option<&Value> {
        self.of_kind("plan").next()
    }

    /// Steps recorded as done since the last reset of the new cluster.
    pub fn done_steps(&self) -> BTreeSet<String> {
        let mut done = BTreeSet::new();
        for record in &self.records {
            match record["record"].as_str() {
                // A reset, or the start of the cutover (whose steps share
                // names with prepare's), starts the count afresh.
                Some("reset") | Some("cutover") => done.clear(),
                Some("step") => {
                    if let Some(step) = record["step"].as_str() {
                        done.insert(step.to_string());
                    }
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
            .find(|r| matches!(r["record"].as_str(), Some("cutover") | Some("reset")))
            .is_some_and(|r| r["record"] == "cutover")
    }

    /// Whether the journal is of a `prepare` (its plan says so).
    pub fn is_online(&self) -> bool {
        self.plan().is_some_and(|p| p["phase"] == "prepare")
    }

    /// Every run directory (sockets) a run recorded: servers listening there
    /// were started by pg-migrate.
    pub fn run_dirs(&self) -> Vec<PathBuf> {
        self.of_kind("run")
            .filter_map(|r| r["run_dir"].as_str().map(PathBuf::from))
            .collect()
    }

    /// The reindex script the upgrade wrote, if any (`scripts` record).
    pub fn reindex_script(&self) -> Option<PathBuf> {
        self.of_kind("scripts")
            .last()
            .and_then(|r| r["reindex"].as_str().map(PathBuf::from))
    }

    /// The records since the new cluster was last put back as initdb made it.
    fn since_reset(&self) -> &[Value] {
        let start = self
            .records
            .iter()
            .rposition(|r| r["record"] == "reset")
            .map_or(0, |i| i + 1);
        &self.records[start..]
    }

    /// The old cluster's pg_control as the counters were handed over from
    /// it (`handover` record): a late resume may continue only from the very
    /// same old cluster, not run since.
    pub fn handover_stamp(&self) -> Option<ControlStamp> {
        self.since_reset()
            .iter()
            .rev()
            .find(|r| r["record"] == "handover")
            .and_then(|r| serde_json::from_value(r["old"].clone()).ok())
    }

    /// Whether link or swap mode passed its point of no return (the old
    /// cluster's pg_control renamed, files shared or moved).
    pub fn passed_point_of_no_return(&self) -> bool {
        self.since_reset()
            .iter()
            .any(|r| r["record"] == "point_of_no_return")
    }

    /// Whether a revert began (it must then be finished, not resumed).
    pub fn revert_started(&self) -> bool {
        self.since_reset()
            .iter()
            .any(|r| r["record"] == "revert_started")
    }

    /// A revert that began: the new cluster's pg_control as it found it
    /// (`Some(None)`: unreadable), and whether it began putting the new
    /// cluster back (`reset_started`), after which that changes by its hand.
    pub fn revert_began_with(&self) -> Option<(Option<ControlStamp>, bool)> {
        let records = self.since_reset();
        let at = records
            .iter()
            .position(|r| r["record"] == "revert_started")?;
        let stamp = serde_json::from_value(records[at]["new_control"].clone()).ok();
        let resetting = records[at..].iter().any(|r| r["record"] == "reset_started");
        Some((stamp, resetting))
    }

    /// The new cluster's pg_control as pg-migrate last left it: the stamp
    /// of the latest record that carries one (each step, the point of no
    /// return, the end). `None` when no record carries one, or when
    /// pg-migrate started a new server after it (a run killed while its own
    /// server ran: that server, not a stranger, moved the stamp on).
    pub fn new_control_as_left(&self) -> Option<ControlStamp> {
        for record in self.since_reset().iter().rev() {
            // pg-migrate itself changes it: a server it starts, pg_resetwal.
            if record["record"] == "new_server" || record["record"] == "new_control_changing" {
                return None;
            }
            if let Ok(stamp) = serde_json::from_value(record["new_control"].clone()) {
                return Some(stamp);
            }
        }
        None
    }
}

/// The saved new cluster: one archive, not a copy of its thousand files
/// (creating files is what costs, on a filesystem that has just deleted
/// many it is a millisecond each), fsynced before it takes its name.
const PRISTINE: &str = "pristine.tar";

/// The contents of an external WAL directory (`initdb -X`), which the
/// upgrade changes too (pg_resetwal writes its segments there): saved
/// beside the archive, before it.
const PRISTINE_WAL: &str = "pristine-wal.tar";

/// Where the new cluster's `pg_wal` points when it is a symbolic link.
fn external_wal(new_datadir: &Path) -> Option<PathBuf> {
    let link = std::fs::read_link(new_datadir.join("pg_wal")).ok()?;
    Some(new_datadir.join(link))
}

/// Writes a tar of `entries` (name in the archive, path) as `name` in
/// `pg_migrate.d`: under a temporary name, fsynced, then renamed.
fn write_archive(dir: &Path, name: &str, entries: Vec<(OsString, PathBuf)>) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(
        1 << 20,
        File::create(&tmp)?,
    ));
    // Symbolic links (an external pg_wal) are kept as links.
    builder.follow_symlinks(false);
    for (name, path) in entries {
        if std::fs::symlink_metadata(&path)?.is_dir() {
            builder.append_dir_all(&name, &path)?;
        } else {
            builder.append_path_with_name(&path, &name)?;
        }
    }
    let file = builder
        .into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// The entries of a directory as (name, path), but `skip`.
fn listing(dir: &Path, skip: &[&str]) -> std::io::Result<Vec<(OsString, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if !skip.iter().any(|s| name == *s) {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}

/// Saves the new cluster as initdb made it (written under a temporary name
/// and renamed, so a half-written archive is never taken for whole). An
/// archive from an earlier attempt is replaced: until a journal exists,
/// nothing of the new cluster has changed, so what is there now is pristine.
pub fn save_pristine(new_datadir: &Path) -> std::io::Result<()> {
    let dir = dir(new_datadir);
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(dir.join(PRISTINE_WAL));
    if let Some(wal) = external_wal(new_datadir) {
        write_archive(&dir, PRISTINE_WAL, listing(&wal, &[])?)?;
    }
    let skip = [DIR, "postmaster.pid", "postmaster.opts"];
    write_archive(&dir, PRISTINE, listing(new_datadir, &skip)?)
}

/// Whether the new cluster's state before the upgrade was saved.
pub fn has_pristine(new_datadir: &Path) -> bool {
    dir(new_datadir).join(PRISTINE).is_file()
}

/// One file of the saved new cluster (e.g. `global/pg_control`), if saved.
pub fn pristine_file(new_datadir: &Path, name: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = File::open(dir(new_datadir).join(PRISTINE)).ok()?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        if entry.path().ok()?.as_ref() == Path::new(name) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).ok()?;
            return Some(bytes);
        }
    }
    None
}

/// Removes the copies that runs made ahead of their transfer and could not
/// remove themselves (a run killed or interrupted).
pub fn remove_staged_copies(new_datadir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir(new_datadir)) {
        for entry in entries.flatten() {
            let staging = entry.path().join("staging");
            if entry.file_name().to_string_lossy().starts_with("run-") && staging.is_dir() {
                let _ = std::fs::remove_dir_all(staging);
            }
        }
    }
}

/// Returns the new cluster to its pristine state: every new-version directory
/// it made in a tablespace, and everything in the data directory but
/// `pg_migrate.d`, is removed; the saved copy is put back (an external WAL
/// directory's contents too) and made durable.
pub fn restore_pristine(new_datadir: &Path, tablespace_version_dir: &str) -> std::io::Result<()> {
    let pristine = dir(new_datadir).join(PRISTINE);
    remove_staged_copies(new_datadir);
    if !pristine.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is missing", pristine.display()),
        ));
    }
    let tblspc = new_datadir.join("pg_tblspc");
    if let Ok(entries) = std::fs::read_dir(&tblspc) {
        for entry in entries.flatten() {
            if let Ok(location) = std::fs::read_link(entry.path()) {
                let version_dir = location.join(tablespace_version_dir);
                if version_dir.exists() {
                    std::fs::remove_dir_all(&version_dir)?;
                    File::open(&location)?.sync_all()?;
                }
            }
        }
    }
    clear_dir(new_datadir, &[DIR])?;
    unpack(&pristine, new_datadir)?;
    let mut roots = vec![new_datadir.to_path_buf()];
    let saved_wal = dir(new_datadir).join(PRISTINE_WAL);
    if let (Some(wal), true) = (external_wal(new_datadir), saved_wal.is_file()) {
        clear_dir(&wal, &[])?;
        unpack(&saved_wal, &wal)?;
        roots.push(wal);
    }
    // Durable before the journal says "reset".
    pgm_transfer::sync_tree(&roots, &HashSet::new(), 2).map_err(std::io::Error::other)?;
    Ok(())
}

/// Removes everything in `dir` but the names in `keep`.
fn clear_dir(dir: &Path, keep: &[&str]) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if keep.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn unpack(archive: &Path, into: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(std::io::BufReader::new(File::open(archive)?));
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(false);
    archive.unpack(into)
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
    use super::*;

    #[test]
    fn state_and_journal_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_state(dir.path()), None);
        write_state(dir.path(), State::Upgrading).unwrap();
        assert_eq!(read_state(dir.path()), Some(State::Upgrading));
        let mut journal =
            Journal::create(dir.path(), &[("plan", json!({"mode": "link"}))]).unwrap();
        journal.record("step", json!({"step": "dump-old"})).unwrap();
        journal.record("reset", json!({})).unwrap();
        journal.record("step", json!({"step": "checks"})).unwrap();
        journal
            .record("run", json!({"run_dir": "/tmp/pgm-x"}))
            .unwrap();
        // A torn last line is ignored.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(DIR).join("journal.ndjson"))
            .unwrap()
            .write_all(b"{\"record\":\"st")
            .unwrap();
        let view = JournalView::read(dir.path()).unwrap();
        assert_eq!(view.plan().unwrap()["mode"], "link");
        assert_eq!(
            view.done_steps().into_iter().collect::<Vec<_>>(),
            vec!["checks"]
        );
        assert_eq!(view.run_dirs(), vec![PathBuf::from("/tmp/pgm-x")]);
    }

    #[test]
    fn a_line_torn_by_a_failed_write_does_not_swallow_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Journal::open(dir.path()).is_err(),
            "a journal is made whole by create, never by open"
        );
        Journal::create(dir.path(), &[("plan", json!({"mode": "copy"}))]).unwrap();
        // A full disk cut the last record short.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(DIR).join("journal.ndjson"))
            .unwrap()
            .write_all(b"{\"record\":\"step\",\"st")
            .unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        journal.record("step", json!({"step": "checks"})).unwrap();
        journal.record("step", json!({"step": "dump-old"})).unwrap();
        let view = JournalView::read(dir.path()).unwrap();
        assert_eq!(view.plan().unwrap()["mode"], "copy");
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
        let stamp = |lsn: u64| {
            json!({ "system_identifier": 1, "state": "shut_down", "time": 5, "checkpoint_lsn": lsn,
                    "next_xid_epoch": 0, "next_xid": 700, "next_oid": 16384, "next_multixact": 1 })
        };
        let mut journal = Journal::create(dir.path(), &[("plan", json!({}))]).unwrap();
        journal
            .record("step", json!({"step": "a", "new_control": stamp(10)}))
            .unwrap();
        let view = JournalView::read(dir.path()).unwrap();
        assert_eq!(view.new_control_as_left().unwrap().checkpoint_lsn, 10);
        assert!(!view.passed_point_of_no_return());
        journal.record("new_server", json!({})).unwrap();
        let view = JournalView::read(dir.path()).unwrap();
        assert!(
            view.new_control_as_left().is_none(),
            "its own server ran last"
        );
        journal
            .record("point_of_no_return", json!({"new_control": stamp(20)}))
            .unwrap();
        journal
            .record("handover", json!({"old": stamp(30)}))
            .unwrap();
        let view = JournalView::read(dir.path()).unwrap();
        assert_eq!(view.new_control_as_left().unwrap().checkpoint_lsn, 20);
        assert!(view.passed_point_of_no_return());
        assert_eq!(view.handover_stamp().unwrap().checkpoint_lsn, 30);
        journal.record("reset", json!({})).unwrap();
        let view = JournalView::read(dir.path()).unwrap();
        assert!(!view.passed_point_of_no_return());
        assert!(view.handover_stamp().is_none());
    }

    #[test]
    fn an_external_wal_directory_comes_back_too() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let wal = dir.path().join("wal");
        std::fs::create_dir_all(data.join("global")).unwrap();
        std::fs::create_dir_all(wal.join("archive_status")).unwrap();
        std::fs::write(wal.join("000000010000000000000001"), b"initdb's").unwrap();
        std::os::unix::fs::symlink(&wal, data.join("pg_wal")).unwrap();
        save_pristine(&data).unwrap();
        // pg_resetwal of the upgrade: its segment goes, another comes.
        std::fs::remove_file(wal.join("000000010000000000000001")).unwrap();
        std::fs::write(wal.join("0000000100000000000000A0"), b"upgrade's").unwrap();
        restore_pristine(&data, "PG_18_1").unwrap();
        assert_eq!(
            std::fs::read(wal.join("000000010000000000000001")).unwrap(),
            b"initdb's"
        );
        assert!(!wal.join("0000000100000000000000A0").exists());
        assert!(wal.join("archive_status").is_dir());
        assert_eq!(std::fs::read_link(data.join("pg_wal")).unwrap(), wal);
    }

    #[test]
    fn pristine_copy_comes_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("base/1")).unwrap();
        std::fs::write(data.join("base/1/1259"), b"catalog").unwrap();
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
                & 0o777
        };
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
        };
        set(&data.join("base/1"), 0o750);
        set(&data.join("base/1/1259"), 0o640);
        std::fs::write(data.join("PG_VERSION"), b"18\n").unwrap();
        std::os::unix::fs::symlink("/somewhere", data.join("link")).unwrap();
        save_pristine(&data).unwrap();
        std::fs::write(data.join("base/1/1259"), b"changed").unwrap();
        std::fs::write(data.join("base/1/16384"), b"restored table").unwrap();
        restore_pristine(&data, "PG_18_1").unwrap();
        assert_eq!(std::fs::read(data.join("base/1/1259")).unwrap(), b"catalog");
        assert!(!data.join("base/1/16384").exists());
        assert_eq!(mode(&data.join("base/1")), 0o750);
        assert_eq!(mode(&data.join("base/1/1259")), 0o640);
        assert_eq!(
            std::fs::read_link(data.join("link")).unwrap(),
            PathBuf::from("/somewhere")
        );
        assert!(has_pristine(&data));
        assert_eq!(pristine_file(&data, "PG_VERSION").unwrap(), b"18\n");
        assert!(pristine_file(&data, "base/1/16384").is_none());
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
