//! The checks before a standby is upgraded from its own files (`pg-migrate
//! standby`): that it is a standby of the primary the kit was made from,
//! stopped cleanly after replaying exactly to the primary's last checkpoint,
//! that every relation file the kit's map names is there with a size the
//! primary's file explains, and that the new data directory can be made
//! beside it with links. Like every check here, they only read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pgm_cluster::{ClusterState, DataDir, Installation, ServerStatus};

use crate::on_disk::{device, free_bytes, human_bytes};
use crate::Finding;

/// What the primary's upgrade says this standby must be.
#[derive(Debug, Clone)]
pub struct StandbyExpectations {
    pub old_bindir: PathBuf,
    pub new_bindir: PathBuf,
    pub old_datadir: PathBuf,
    pub new_datadir: PathBuf,
    pub old_major: u32,
    pub new_major: u32,
    /// The old primary's system identifier.
    pub system_identifier: u64,
    /// The old primary's last checkpoint before the upgrade, and its timeline.
    pub checkpoint_lsn: u64,
    pub timeline: u32,
    /// The tablespaces (by OID) the standby must have.
    pub tablespaces: Vec<u32>,
    /// The new major's directory in each tablespace (`PG_18_…`).
    pub new_tablespace_dir: String,
    pub files: Vec<ExpectedFile>,
    /// What the new data directory needs besides the links.
    pub kit_bytes: u64,
    /// Settings the standby must have at least (the new pg_control's).
    pub minimums: Vec<(String, i64)>,
    /// What the kit puts into each tablespace's location.
    pub tablespace_bytes: Vec<(u32, u64)>,
}

/// One relation file of the old primary, as the standby must hold it.
#[derive(Debug, Clone)]
pub struct ExpectedFile {
    /// `None`: relative to the data directory; `Some(oid)`: to that
    /// tablespace's location.
    pub tablespace: Option<u32>,
    pub path: PathBuf,
    /// The primary's size.
    pub size: u64,
    /// The least the standby may hold: the primary's size less the pages at
    /// its end that are all zeros (extended but never written to WAL).
    pub min_size: u64,
    /// A file the standby must have (a relation's first main segment, an
    /// init fork); others may be absent when `min_size` is 0.
    pub required: bool,
}

/// Where the standby keeps tablespace `oid`: its `pg_tblspc` entry, followed.
pub fn standby_tablespace(datadir: &Path, oid: u32) -> Result<PathBuf, String> {
    let link = datadir.join("pg_tblspc").join(oid.to_string());
    std::fs::canonicalize(&link).map_err(|e| format!("{}: {e}", link.display()))
}

/// The standby's path of one expected file.
fn standby_path(
    datadir: &Path,
    locations: &BTreeMap<u32, PathBuf>,
    tablespace: Option<u32>,
    path: &Path,
) -> Option<PathBuf> {
    match tablespace {
        None => Some(datadir.join(path)),
        Some(oid) => locations.get(&oid).map(|l| l.join(path)),
    }
}

/// At most this many objects are named in one finding.
const NAMED: usize = 20;

fn lsn(value: u64) -> String {
    format!("{:X}/{:X}", value >> 32, value & 0xffff_ffff)
}

/// Every check, in order; the files are looked at only when the standby is
/// the one the kit expects.
pub fn run_standby_checks(expect: &StandbyExpectations) -> Vec<Finding> {
    let mut findings = vec![installations(expect)];
    let dir = match DataDir::open(&expect.old_datadir, None) {
        Ok(dir) => dir,
        Err(e) => {
            findings.push(Finding::fail(
                "standby-datadir",
                "the standby's data directory",
                "standby_datadir_unusable",
                e.to_string(),
                "name the old standby's data directory with -d",
            ));
            return findings;
        }
    };
    if dir.major.number() != expect.old_major {
        findings.push(Finding::fail(
            "standby-datadir",
            "the standby's data directory",
            "standby_major_mismatch",
            format!(
                "{} is a PostgreSQL {} data directory; the primary was {}",
                dir.path.display(),
                dir.major.number(),
                expect.old_major
            ),
            "name this standby's old data directory with -d, and a kit made from its primary's upgrade",
        ));
        return findings;
    }
    findings.push(Finding::pass(
        "standby-datadir",
        "the standby's data directory",
        format!("{} (PostgreSQL {})", dir.path.display(), expect.old_major),
    ));
    findings.push(stopped(&dir));
    let control = match dir.control() {
        Ok(control) => control,
        Err(e) => {
            findings.push(Finding::fail(
                "standby-same-cluster",
                "the standby belongs to the upgraded primary",
                "standby_control_unreadable",
                e.to_string(),
                "the standby's global/pg_control must be readable; if a revert or an earlier run renamed it, finish that first",
            ));
            return findings;
        }
    };
    if control.system_identifier != expect.system_identifier {
        findings.push(Finding::fail(
            "standby-same-cluster",
            "the standby belongs to the upgraded primary",
            "standby_of_another_cluster",
            format!(
                "the standby's system identifier is {}, the kit's primary's {}: it is a standby of another cluster, or the kit is from another upgrade",
                control.system_identifier, expect.system_identifier
            ),
            "use the kit made from the upgrade of this standby's own primary",
        ));
        return findings;
    }
    findings.push(Finding::pass(
        "standby-same-cluster",
        "the standby belongs to the upgraded primary",
        format!("system identifier {}", control.system_identifier),
    ));
    findings.push(caught_up(expect, &control));
    findings.push(settings(expect, &dir));
    if findings.iter().any(|f| f.status == crate::Status::Fail) {
        return findings;
    }
    findings.push(new_datadir(expect));
    let (files, locations) = relation_files(expect);
    findings.push(files);
    findings.push(same_filesystem(expect, &locations));
    findings.push(room(expect, &locations));
    findings
}

fn installations(expect: &StandbyExpectations) -> Finding {
    let (id, title) = (
        "standby-installations",
        "the installations are the primary's majors",
    );
    let mut problems = Vec::new();
    for (bindir, want, flag) in [
        (&expect.old_bindir, expect.old_major, "-b"),
        (&expect.new_bindir, expect.new_major, "-B"),
    ] {
        match Installation::discover(bindir) {
            Ok(install) if install.version.major.number() == want => {}
            Ok(install) => problems.push(format!(
                "{flag} {} is PostgreSQL {}, the primary's is {want}",
                bindir.display(),
                install.version.major.number()
            )),
            Err(e) => problems.push(format!("{flag} {}: {e}", bindir.display())),
        }
    }
    if problems.is_empty() {
        Finding::pass(
            id,
            title,
            format!("old {}, new {}", expect.old_major, expect.new_major),
        )
    } else {
        Finding::fail(
            id,
            title,
            "standby_installation_mismatch",
            problems.join("; "),
            format!(
                "install PostgreSQL {} on this host and name its bin directory with -B (and the old {}'s with -b)",
                expect.new_major, expect.old_major
            ),
        )
    }
}

fn stopped(dir: &DataDir) -> Finding {
    let (id, title) = ("standby-stopped", "the standby is stopped");
    match dir.server_status() {
        Ok(ServerStatus::Stopped) => Finding::pass(id, title, "no postmaster.pid"),
        Ok(ServerStatus::Running(pid)) => Finding::fail(
            id,
            title,
            "standby_running",
            format!("a server (pid {}) runs on {}", pid.pid, dir.path.display()),
            format!(
                "stop it cleanly once it has replayed the primary's shutdown: pg_ctl -D {} stop -m fast",
                dir.path.display()
            ),
        ),
        Ok(ServerStatus::StalePidFile(pid)) => Finding::fail(
            id,
            title,
            "standby_not_stopped_cleanly",
            format!(
                "{} has a postmaster.pid of a process that is gone (pid {}): the standby crashed or was killed",
                dir.path.display(),
                pid.pid
            ),
            "start the standby so that it replays to the primary's shutdown checkpoint, then stop it cleanly (pg_ctl stop -m fast)",
        ),
        Err(e) => Finding::fail(id, title, "standby_running", e.to_string(), "make postmaster.pid readable"),
    }
}

/// The rule of PostgreSQL's documentation for standbys upgraded with the
/// primary: the standby's latest checkpoint is the primary's, which it can
/// only be after replaying everything the primary wrote and stopping cleanly.
fn caught_up(expect: &StandbyExpectations, control: &pgm_cluster::ControlFile) -> Finding {
    let (id, title) = (
        "standby-caught-up",
        "the standby replayed exactly to the primary's last checkpoint",
    );
    let theirs = format!(
        "the primary's last checkpoint is at {} on timeline {}",
        lsn(expect.checkpoint_lsn),
        expect.timeline
    );
    if stopped_at(control, expect.checkpoint_lsn, expect.timeline) {
        return Finding::pass(
            id,
            title,
            format!(
                "latest checkpoint {} on timeline {}, {}",
                lsn(control.checkpoint_lsn),
                control.timeline,
                if control.state == ClusterState::ShutDown {
                    "a copy of the primary as it shut down"
                } else {
                    "shut down in recovery"
                }
            ),
        );
    }
    // "shut down" at another checkpoint: it ran as a primary.
    if control.state == ClusterState::ShutDown {
        return Finding::fail(
            id,
            title,
            "standby_not_a_standby",
            format!(
                "the standby's pg_control says \"shut down\" at checkpoint {} on timeline {}: it ran as a primary (promoted?); {theirs}",
                lsn(control.checkpoint_lsn),
                control.timeline
            ),
            "a standby that ran as a primary holds writes the upgraded primary never had; rebuild it from the new primary (pg_basebackup)",
        );
    }
    if control.state != ClusterState::ShutDownInRecovery {
        return Finding::fail(
            id,
            title,
            "standby_not_stopped_cleanly",
            format!(
                "the standby's pg_control says \"{}\": it was not stopped cleanly, so its files may lack what it replayed last; {theirs}",
                control.state.describe()
            ),
            "start the standby, let it replay, and stop it cleanly (pg_ctl stop -m fast)",
        );
    }
    if control.timeline != expect.timeline || control.checkpoint_lsn > expect.checkpoint_lsn {
        return Finding::fail(
            id,
            title,
            "standby_ahead",
            format!(
                "the standby's latest checkpoint is at {} on timeline {}: it followed WAL the upgraded primary did not have; {theirs}",
                lsn(control.checkpoint_lsn),
                control.timeline
            ),
            "this standby cannot join the upgraded primary; rebuild it from the new primary (pg_basebackup)",
        );
    }
    Finding::fail(
        id,
        title,
        "standby_behind",
        format!(
            "the standby's latest checkpoint is at {}: it stopped before it replayed the primary's shutdown; {theirs}",
            lsn(control.checkpoint_lsn)
        ),
        "if the old primary's WAL up to its shutdown is in an archive, start the standby with restore_command set so it replays it, and stop it cleanly; otherwise revert the primary's upgrade and let the standby catch up first (stop the primary only after the standby streams it), or rebuild this standby from the new primary",
    )
}

/// Whether a standby's pg_control shows it stopped cleanly exactly at the
/// primary's last checkpoint: in recovery, or — a copy of the primary made
/// while it was stopped, which holds the same — "shut down" there.
pub fn stopped_at(control: &pgm_cluster::ControlFile, checkpoint_lsn: u64, timeline: u32) -> bool {
    matches!(
        control.state,
        ClusterState::ShutDownInRecovery | ClusterState::ShutDown
    ) && control.checkpoint_lsn == checkpoint_lsn
        && control.timeline == timeline
}

/// A standby starts from the kit's pg_control only with settings at least
/// those it records (else its recovery pauses: "insufficient parameter
/// settings"); the standby's own configuration is carried, so its values
/// are read from it with the old server (`postgres -C`).
fn settings(expect: &StandbyExpectations, dir: &DataDir) -> Finding {
    let (id, title) = (
        "standby-settings",
        "the standby's settings allow it to follow the new primary",
    );
    if expect.minimums.is_empty() {
        return Finding::skip(id, title, "the kit records no settings");
    }
    let postgres = expect.old_bindir.join("postgres");
    let mut low = Vec::new();
    for (name, minimum) in &expect.minimums {
        let value = pgm_cluster::command::PgCommand::new(&postgres)
            .arg("-D")
            .arg(dir.pg_ctl_dir())
            .args(["-C", name])
            .run()
            .ok()
            .and_then(|out| out.stdout.trim().parse::<i64>().ok());
        match value {
            Some(value) if value < *minimum => {
                low.push(format!("{name} = {value} (at least {minimum})"))
            }
            Some(_) => {}
            None => {
                return Finding::skip(
                    id,
                    title,
                    format!("{name} could not be read with {}", postgres.display()),
                )
            }
        }
    }
    if low.is_empty() {
        return Finding::pass(id, title, "each at least the new pg_control's");
    }
    Finding::fail(
        id,
        title,
        "standby_settings_too_low",
        format!(
            "the standby's {}: the new primary's pg_control records more, and a standby with less pauses its recovery",
            low.join(", ")
        ),
        "raise them in the standby's postgresql.conf (it is carried into the new standby), then run again",
    )
}

fn new_datadir(expect: &StandbyExpectations) -> Finding {
    let (id, title) = ("standby-new-datadir", "the new data directory is free");
    let path = &expect.new_datadir;
    match std::fs::read_dir(path) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Finding::fail(
                    id,
                    title,
                    "new_datadir_not_empty",
                    format!("{} exists and is not empty", path.display()),
                    "name a new data directory that does not exist or is empty",
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path.parent().unwrap_or(Path::new("/"));
            if !parent.is_dir() {
                return Finding::fail(
                    id,
                    title,
                    "new_datadir_unusable",
                    format!("{} does not exist", parent.display()),
                    "create the new data directory's parent first",
                );
            }
        }
        Err(e) => {
            return Finding::fail(
                id,
                title,
                "new_datadir_unusable",
                format!("{}: {e}", path.display()),
                "name a new data directory this user can create and write",
            )
        }
    }
    Finding::pass(id, title, path.display().to_string())
}

fn relation_files(expect: &StandbyExpectations) -> (Finding, BTreeMap<u32, PathBuf>) {
    let (id, title) = (
        "standby-relation-files",
        "the standby holds every relation file the primary's upgrade moved",
    );
    let mut locations = BTreeMap::new();
    let mut problems = Vec::new();
    for &oid in &expect.tablespaces {
        match standby_tablespace(&expect.old_datadir, oid) {
            Ok(location) => {
                locations.insert(oid, location);
            }
            Err(e) => problems.push(format!("tablespace {oid}: {e}")),
        }
    }
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut checked = 0usize;
    for file in &expect.files {
        let Some(path) = standby_path(&expect.old_datadir, &locations, file.tablespace, &file.path)
        else {
            continue;
        };
        match std::fs::metadata(&path) {
            Ok(meta) => {
                checked += 1;
                if meta.len() > file.size || meta.len() < file.min_size {
                    wrong.push(format!(
                        "{} is {} bytes; the primary's is {}{}",
                        path.display(),
                        meta.len(),
                        file.size,
                        if file.min_size < file.size {
                            format!(" (at least {} of them written)", file.min_size)
                        } else {
                            String::new()
                        }
                    ));
                }
            }
            Err(_) if !file.required && file.min_size == 0 => {}
            Err(e) => missing.push(format!("{}: {e}", path.display())),
        }
    }
    let objects = |list: &[String]| {
        list.iter()
            .take(NAMED)
            .map(|name| crate::ObjectRef {
                database: None,
                kind: "file".into(),
                name: name.clone(),
                schema: None,
            })
            .collect::<Vec<_>>()
    };
    if !problems.is_empty() {
        return (
            Finding::fail(
                id,
                title,
                "standby_tablespace_missing",
                problems.join("; "),
                "the standby must have each of the primary's tablespaces (pg_tblspc/OID linking to its location); rebuild this standby from the new primary",
            ),
            locations,
        );
    }
    if !missing.is_empty() || !wrong.is_empty() {
        let code = if missing.is_empty() {
            "standby_relation_file_size"
        } else {
            "standby_relation_file_missing"
        };
        let mut listed = missing.clone();
        listed.extend(wrong.iter().cloned());
        return (
            Finding::fail(
                id,
                title,
                code,
                format!(
                    "{} of the primary's {} relation files are missing on the standby, {} have a size the primary's does not explain; first: {}",
                    missing.len(),
                    expect.files.len(),
                    wrong.len(),
                    listed[0]
                ),
                "this standby's files are not the primary's (damaged, or changed since): rebuild it from the new primary (pg_basebackup)",
            )
            .with_objects(objects(&listed)),
            locations,
        );
    }
    (
        Finding::pass(
            id,
            title,
            format!("{checked} files, each of a size the primary's explains"),
        ),
        locations,
    )
}

fn same_filesystem(expect: &StandbyExpectations, locations: &BTreeMap<u32, PathBuf>) -> Finding {
    let (id, title) = (
        "standby-same-filesystem",
        "the new data directory can hold links to the standby's files",
    );
    let old = device(&expect.old_datadir);
    let new = device(&expect.new_datadir);
    if old.is_none() || old != new {
        return Finding::fail(
            id,
            title,
            "standby_cross_device",
            format!(
                "{} and {} are on different filesystems: the standby's files cannot be linked",
                expect.old_datadir.display(),
                expect.new_datadir.display()
            ),
            "put the new data directory on the old one's filesystem (e.g. beside it)",
        );
    }
    let unusable: Vec<String> = locations
        .values()
        .filter(|l| !l.is_dir())
        .map(|l| l.display().to_string())
        .collect();
    let taken: Vec<String> = locations
        .values()
        .map(|l| l.join(&expect.new_tablespace_dir))
        .filter(|d| d.exists())
        .map(|d| d.display().to_string())
        .collect();
    if !taken.is_empty() {
        return Finding::fail(
            id,
            title,
            "new_tablespace_dir_exists",
            format!("the new major's tablespace directories exist already: {}", taken.join(", ")),
            "remove them (a leftover of an earlier attempt) if they hold nothing you need, and run again",
        );
    }
    if !unusable.is_empty() {
        return Finding::fail(
            id,
            title,
            "standby_tablespace_missing",
            format!(
                "tablespace locations are not directories: {}",
                unusable.join(", ")
            ),
            "rebuild this standby from the new primary",
        );
    }
    Finding::pass(id, title, "one filesystem")
}

fn room(expect: &StandbyExpectations, locations: &BTreeMap<u32, PathBuf>) -> Finding {
    let (id, title) = ("standby-room", "room for the kit's files");
    // A tablespace's share goes to its own location (a catalog of a
    // database whose default tablespace it is).
    for (oid, bytes) in &expect.tablespace_bytes {
        let Some(location) = locations.get(oid) else {
            continue;
        };
        if let Some(free) = free_bytes(location) {
            if free < *bytes {
                return Finding::fail(
                    id,
                    title,
                    "standby_no_room",
                    format!(
                        "the tablespace at {} needs {} for the kit's files, its filesystem has {} free",
                        location.display(),
                        human_bytes(*bytes),
                        human_bytes(free)
                    ),
                    "make room on that filesystem",
                );
            }
        }
    }
    // The kit is unpacked once and then renamed into place; a margin for
    // the WAL the standby receives before its first restartpoint.
    let needed = expect.kit_bytes + (64 << 20);
    match free_bytes(&expect.new_datadir) {
        Some(free) if free >= needed => Finding::pass(
            id,
            title,
            format!("{} needed, {} free", human_bytes(needed), human_bytes(free)),
        ),
        Some(free) => Finding::fail(
            id,
            title,
            "standby_no_room",
            format!(
                "the new data directory needs {} (the kit's files and a margin for WAL), its filesystem has {} free",
                human_bytes(needed),
                human_bytes(free)
            ),
            "make room on the new data directory's filesystem",
        ),
        None => Finding::skip(id, title, "free space could not be read"),
    }
}
