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

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

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
    let text = std::fs::read_to_string(dir(new_datadir).join("state")).ok()?;
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
}

impl Journal {
    /// Opens (creating) `<new>/pg_migrate.d/journal.ndjson` for appending.
    pub fn open(new_datadir: &Path) -> std::io::Result<Journal> {
        let dir = dir(new_datadir);
        std::fs::create_dir_all(&dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("journal.ndjson"))?;
        Ok(Journal { file })
    }

    /// Appends one record and makes it durable before returning.
    pub fn record(&mut self, kind: &str, mut fields: Value) -> std::io::Result<()> {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        if let Value::Object(map) = &mut fields {
            map.insert("record".into(), json!(kind));
            map.insert("at_ms".into(), json!(at_ms));
        }
        // One write per record (formatting straight into the file would
        // write it piece by piece).
        let mut line = fields.to_string();
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.sync_all()
    }
}

/// A journal read back.
pub struct JournalView {
    records: Vec<Value>,
}

impl JournalView {
    pub fn read(new_datadir: &Path) -> Option<JournalView> {
        let text = std::fs::read_to_string(dir(new_datadir).join("journal.ndjson")).ok()?;
        // A record cut short by a crash is ignored: it was never fsynced.
        let records = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Some(JournalView { records })
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

    /// The new cluster's checkpoint location recorded when the upgrade
    /// completed: if pg_control still says so, nobody has run the cluster since.
    pub fn completed_checkpoint(&self) -> Option<u64> {
        self.of_kind("complete")
            .last()
            .and_then(|r| r["checkpoint_lsn"].as_u64())
    }
}

/// The saved new cluster: one archive, not a copy of its thousand files
/// (creating files is what costs, on a filesystem that has just deleted
/// many it is a millisecond each), fsynced before it takes its name.
const PRISTINE: &str = "pristine.tar";

/// Saves the new cluster as initdb made it (once; written under a temporary
/// name and renamed, so a half-written archive is never taken for whole).
pub fn save_pristine(new_datadir: &Path) -> std::io::Result<()> {
    let dir = dir(new_datadir);
    let pristine = dir.join(PRISTINE);
    if pristine.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join("pristine.tar.tmp");
    let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(
        1 << 20,
        File::create(&tmp)?,
    ));
    // Symbolic links (an external pg_wal) are kept as links.
    builder.follow_symlinks(false);
    let skip = [DIR, "postmaster.pid", "postmaster.opts"];
    for entry in std::fs::read_dir(new_datadir)? {
        let entry = entry?;
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            builder.append_dir_all(&name, entry.path())?;
        } else {
            builder.append_path_with_name(entry.path(), &name)?;
        }
    }
    let file = builder
        .into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &pristine)?;
    File::open(&dir)?.sync_all()
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
/// `pg_migrate.d`, is removed; the saved copy is put back.
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
                }
            }
        }
    }
    for entry in std::fs::read_dir(new_datadir)? {
        let entry = entry?;
        if entry.file_name() == DIR {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    let mut archive = tar::Archive::new(std::io::BufReader::new(File::open(&pristine)?));
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(false);
    archive.unpack(new_datadir)?;
    File::open(new_datadir)?.sync_all()
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
        let mut journal = Journal::open(dir.path()).unwrap();
        journal.record("plan", json!({"mode": "link"})).unwrap();
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
