//! `pg-migrate standby`: a stopped standby upgraded from its own files and
//! a kit. Before anything changes: the kit read whole into the new data
//! directory's `pg_migrate.d` and proven, and every standby check passed;
//! a refusal removes what it made and leaves the old standby as it was.
//! Then the steps, each journaled and each safe to repeat: the old standby
//! disabled (its pg_control renamed, as link mode does), its relation files
//! linked under their new names, the kit's files installed, its own
//! configuration carried with `standby.signal`, everything synced.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use pgm_cluster::ControlFile;
use pgm_verifier::{ExpectedFile, Finding, StandbyExpectations, Status};

use super::kit::{self, Fork, Manifest};
use super::{StandbyPlan, StandbyRecord};
use crate::failure::{ClusterCondition, ClusterStates, Code, Failure};
use crate::journal;
use crate::output::{Event, Printer};

/// The steps, in order.
pub const STEPS: [&str; 5] = [
    "protect-old",
    "link-relations",
    "install-kit",
    "configure",
    "sync",
];

/// Where the kit comes from.
pub enum KitInput {
    Stdin,
    File(PathBuf),
}

impl KitInput {
    pub fn parse(text: &Path) -> KitInput {
        if text == Path::new("-") {
            KitInput::Stdin
        } else {
            KitInput::File(text.to_path_buf())
        }
    }
}

/// What the standby was asked to be.
pub struct Request<'a> {
    pub old_bindir: &'a Path,
    pub new_bindir: &'a Path,
    pub old_datadir: &'a Path,
    pub new_datadir: &'a Path,
    pub kit: KitInput,
    pub check_only: bool,
}

/// How the checks and the staging ended.
pub enum Staged {
    /// `--check`: every check passed; nothing was written.
    Checked(Manifest),
    /// The kit is in place, the journal begun.
    Ready(Manifest),
}

fn unchanged(code: Code, message: String, remedy: &str) -> Failure {
    Failure {
        code,
        message,
        remedy: Some(remedy.into()),
        clusters: Some(ClusterStates::unchanged()),
    }
}

/// The checks' view of what the kit expects of this standby.
pub fn expectations(request: &Request, manifest: &Manifest) -> StandbyExpectations {
    StandbyExpectations {
        old_bindir: request.old_bindir.to_path_buf(),
        new_bindir: request.new_bindir.to_path_buf(),
        old_datadir: request.old_datadir.to_path_buf(),
        new_datadir: request.new_datadir.to_path_buf(),
        old_major: manifest.old.major,
        new_major: manifest.new.major,
        system_identifier: manifest.old.system_identifier,
        checkpoint_lsn: manifest.old.checkpoint_lsn,
        timeline: manifest.old.timeline,
        tablespaces: manifest.tablespaces.clone(),
        new_tablespace_dir: manifest.new.tablespace_dir.clone(),
        files: manifest
            .relations
            .iter()
            .filter(|r| r.fork != Fork::Unlogged)
            .map(|r| ExpectedFile {
                tablespace: r.old.tablespace,
                path: r.old.path.clone(),
                // A free space map is a hint each server keeps for itself.
                size: if r.fork == Fork::Fsm {
                    u64::MAX
                } else {
                    r.size
                },
                min_size: r.min_size,
                required: r.fork == Fork::Init
                    || (r.fork == Fork::Main && !r.old.path.to_string_lossy().contains('.')),
            })
            .collect(),
        kit_bytes: manifest.bytes,
        minimums: manifest.standby_minimums.clone(),
        tablespace_bytes: manifest.tablespace_bytes.clone(),
    }
}

/// A leftover of a run cut short while it read the kit (before its
/// journal began): only pg-migrate's own directory, no journal.
fn remove_leftover_staging(new_datadir: &Path) {
    let Ok(entries) = std::fs::read_dir(new_datadir) else {
        return;
    };
    let names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
    let ours = journal::dir(new_datadir);
    if names.len() == 1 && names[0] == journal::DIR && !super::is_standby(new_datadir) {
        let only_kit = std::fs::read_dir(&ours)
            .map(|e| {
                e.flatten()
                    .all(|e| e.file_name() == "kit" || e.file_name() == "kit-manifest.json")
            })
            .unwrap_or(false);
        if only_kit {
            let _ = std::fs::remove_dir_all(&ours);
        }
    }
}

/// Tells the signal handler what an interruption now leaves: the old
/// standby disabled or not, and what to run.
pub fn publish_interruptible(new_datadir: &Path, old_disabled: bool, remedy: String) {
    let status = crate::engine::Interruptible {
        new_datadir: new_datadir.to_path_buf(),
        clusters: ClusterStates {
            old: if old_disabled {
                ClusterCondition::Protected
            } else {
                ClusterCondition::Unchanged
            },
            new: ClusterCondition::Incomplete,
        },
        exit_code: if old_disabled {
            crate::exit::FAILED_NEEDS_RECOVERY
        } else {
            crate::exit::FAILED_OLD_INTACT
        },
        resume: remedy,
        standby: true,
    };
    *crate::engine::INTERRUPT
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(status);
}

/// What to run after a standby's run was cut short once its journal began.
pub fn finish_or_revert(new_datadir: &Path) -> String {
    let new = crate::support::quote(new_datadir);
    format!("finish it: pg-migrate resume -D {new}; or give the old standby back: pg-migrate revert -D {new}")
}

/// Runs the checks on the kit's manifest, then (unless `--check`) reads
/// the kit whole into the staging directory and begins the journal. On any
/// refusal what was made is removed again.
pub fn check_and_stage(
    request: &Request,
    printer: &Printer,
    findings: &mut Vec<Finding>,
) -> Result<Staged, Failure> {
    let new = request.new_datadir;
    remove_leftover_staging(new);
    let input: Box<dyn Read> = match &request.kit {
        KitInput::Stdin => Box::new(std::io::stdin().lock()),
        KitInput::File(path) => Box::new(std::fs::File::open(path).map_err(|e| {
            unchanged(
                Code::Usage,
                format!("the kit {}: {e}", path.display()),
                "name the kit pg-migrate standby-kit wrote with --kit (or --kit - to read it from stdin)",
            )
        })?),
    };
    let created_new = !new.exists();
    let staging = super::staging_path(new);
    let mut staging_made = false;
    let result = kit::read(
        std::io::BufReader::with_capacity(1 << 20, input),
        &staging,
        |manifest| {
            let expect = expectations(request, manifest);
            let started = std::time::Instant::now();
            printer.emit(&Event::StepStart { step: "checks" });
            for finding in pgm_verifier::run_standby_checks(&expect) {
                printer.emit(&Event::check(&finding));
                findings.push(finding);
            }
            let failed: Vec<&Finding> = findings
                .iter()
                .filter(|f| f.status == Status::Fail)
                .collect();
            printer.emit(&Event::step_end("checks", failed.is_empty(), started));
            if !failed.is_empty() {
                // The command reports the findings (`Event::checks_failed`).
                return Err(Failure {
                    code: Code::ChecksFailed,
                    message: format!("{} standby checks failed", failed.len()),
                    remedy: None,
                    clusters: Some(ClusterStates::unchanged()),
                });
            }
            if request.check_only {
                return Ok(kit::Look::Stop);
            }
            // The checks found the new data directory absent or empty: what
            // is made in it from here on is this run's own.
            staging_made = true;
            publish_interruptible(
                new,
                false,
                "run the same pg-migrate standby again: it removes what this run unpacked".into(),
            );
            Ok(kit::Look::Unpack)
        },
    );
    let manifest = match result {
        Ok(kit::Unpacked::ManifestOnly(manifest)) => return Ok(Staged::Checked(manifest)),
        Ok(kit::Unpacked::Whole(manifest)) => manifest,
        Err(e) => {
            // Give back what was made, whatever stopped it.
            if staging_made {
                if created_new {
                    let _ = std::fs::remove_dir_all(new);
                } else {
                    let _ = std::fs::remove_dir_all(journal::dir(new));
                }
            }
            return Err(match e {
                kit::ReadError::Refused(failure) => failure,
                kit::ReadError::Damaged(why) => unchanged(
                    Code::KitUnusable,
                    format!("the standby kit cannot be used: {why}"),
                    "make the kit again on the primary's host (pg-migrate standby-kit) and carry it whole (check its size and that the command that carried it succeeded)",
                ),
                kit::ReadError::Io(why) => unchanged(
                    Code::StandbyFailed,
                    format!("the kit could not be unpacked: {why}"),
                    "make the new data directory's filesystem writable and roomy enough, and run again",
                ),
            });
        }
    };
    let tablespaces = manifest
        .tablespaces
        .iter()
        .map(|oid| {
            pgm_verifier::standby_tablespace(request.old_datadir, *oid)
                .map(|location| (*oid, location))
                .map_err(|e| Failure::new(Code::StandbyFailed, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let plan = StandbyPlan {
        old_bindir: request.old_bindir.to_path_buf(),
        new_bindir: request.new_bindir.to_path_buf(),
        old_datadir: std::fs::canonicalize(request.old_datadir)
            .unwrap_or_else(|_| request.old_datadir.to_path_buf()),
        new_datadir: new.to_path_buf(),
        created_new,
        tablespaces,
    };
    let begin = || -> std::io::Result<()> {
        // The kit durable before the journal says it is there.
        pgm_transfer::sync_tree(std::slice::from_ref(&staging), &HashSet::new(), 2, &|_| {})
            .map_err(std::io::Error::other)?;
        journal::write_atomically(
            &super::manifest_path(new),
            &serde_json::to_vec(&manifest).map_err(std::io::Error::other)?,
        )?;
        super::record(new, &StandbyRecord::Plan(Box::new(plan)))
    };
    if let Err(e) = begin() {
        if created_new {
            let _ = std::fs::remove_dir_all(new);
        } else {
            let _ = std::fs::remove_dir_all(journal::dir(new));
        }
        return Err(unchanged(
            Code::JournalFailed,
            format!("{}: {e}", journal::dir(new).display()),
            "make the new data directory writable and run again",
        ));
    }
    Ok(Staged::Ready(manifest))
}

/// What the steps did.
pub struct Applied {
    pub linked: u64,
    pub kit_files: u64,
    pub unlogged_left_out: usize,
    pub plan: StandbyPlan,
    pub manifest: Manifest,
}

fn io(step: &str, path: &Path, e: impl std::fmt::Display) -> Failure {
    Failure::new(
        Code::StandbyFailed,
        format!("{step}: {}: {e}", path.display()),
    )
}

/// The manifest the journal began with.
pub fn saved_manifest(new_datadir: &Path) -> Result<Manifest, Failure> {
    let path = super::manifest_path(new_datadir);
    let bytes = std::fs::read(&path).map_err(|e| io("the saved kit manifest", &path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| io("the saved kit manifest", &path, e))
}

/// Runs every step the journal does not record as done.
pub fn run_steps(new_datadir: &Path, printer: &Printer) -> Result<Applied, Failure> {
    let records = super::records(new_datadir);
    let plan = super::plan_of(&records)
        .ok_or_else(|| Failure::new(Code::NoJournal, "the standby's journal has no plan"))?;
    let manifest = saved_manifest(new_datadir)?;
    let done = super::done_steps(&records);
    let mut applied = Applied {
        linked: 0,
        kit_files: 0,
        unlogged_left_out: 0,
        plan,
        manifest,
    };
    publish_interruptible(
        new_datadir,
        done.iter().any(|d| d == "protect-old"),
        finish_or_revert(new_datadir),
    );
    pgm_cluster::faults::point(|| "standby:staged".into());
    if !done.iter().any(|d| d == "protect-old") {
        still_as_checked(&applied)?;
    }
    for step in STEPS {
        if done.iter().any(|d| d == step) {
            continue;
        }
        if step == "protect-old" {
            // Said before the rename: either way resume and revert know.
            publish_interruptible(new_datadir, true, finish_or_revert(new_datadir));
        }
        let started = std::time::Instant::now();
        printer.emit(&Event::StepStart { step });
        let result = match step {
            "protect-old" => protect_old(&applied.plan),
            "link-relations" => link_relations(&mut applied),
            "install-kit" => install_kit(&mut applied),
            "configure" => configure(&applied, printer),
            _ => sync(&applied),
        };
        printer.emit(&Event::step_end(step, result.is_ok(), started));
        result?;
        // Done but not journaled: a resume repeats the step.
        pgm_cluster::faults::point(|| format!("standby:{step}:unrecorded"));
        super::record(new_datadir, &StandbyRecord::Step { step: step.into() })
            .map_err(|e| io("the journal", new_datadir, e))?;
        pgm_cluster::faults::point(|| format!("standby:{step}"));
    }
    let control =
        ControlFile::read(new_datadir).map_err(|e| Failure::new(Code::StandbyFailed, e))?;
    super::record(
        new_datadir,
        &StandbyRecord::Complete {
            new_control: control.stamp(),
        },
    )
    .map_err(|e| io("the journal", new_datadir, e))?;
    Ok(applied)
}

/// Until the old standby is disabled it can be started (a run killed
/// before that, then the operator's doing): its files then hold more than
/// the kit's checkpoint, and must not be linked.
fn still_as_checked(applied: &Applied) -> Result<(), Failure> {
    let old = &applied.plan.old_datadir;
    let running = old.join("postmaster.pid").exists();
    let control = ControlFile::read(old).map_err(|e| Failure::new(Code::StandbyFailed, e))?;
    let old_checkpoint = &applied.manifest.old;
    if running
        || !pgm_verifier::stopped_at(
            &control,
            old_checkpoint.checkpoint_lsn,
            old_checkpoint.timeline,
        )
    {
        return Err(Failure {
            code: Code::StandbyFailed,
            message: format!(
                "the old standby {} ran since it was checked (state \"{}\"{}): its files are no longer those the kit expects",
                old.display(),
                control.state.describe(),
                if running { ", a postmaster.pid" } else { "" }
            ),
            remedy: Some(format!(
                "give it up here: pg-migrate revert -D {}; then stop the standby cleanly at the primary's shutdown checkpoint and run pg-migrate standby again, or rebuild it",
                crate::support::quote(&applied.plan.new_datadir)
            )),
            clusters: Some(ClusterStates {
                old: ClusterCondition::Unchanged,
                new: ClusterCondition::Incomplete,
            }),
        });
    }
    Ok(())
}

/// The old standby cannot start any more: it shares its files with the new one.
fn protect_old(plan: &StandbyPlan) -> Result<(), Failure> {
    let global = plan.old_datadir.join("global");
    let control = global.join("pg_control");
    let renamed = global.join("pg_control.old");
    let ours = super::records(&plan.new_datadir)
        .iter()
        .any(|r| matches!(r, StandbyRecord::Protecting));
    if !control.exists() && renamed.exists() {
        if ours {
            return Ok(());
        }
        return Err(io(
            "protect-old",
            &renamed,
            "the old standby was disabled by someone else (another pg-migrate standby run?): its files may be another new standby's",
        ));
    }
    if renamed.exists() {
        return Err(io(
            "protect-old",
            &renamed,
            "exists beside pg_control; remove the one that is not the standby's own",
        ));
    }
    super::record(&plan.new_datadir, &StandbyRecord::Protecting)
        .map_err(|e| io("protect-old", &plan.new_datadir, e))?;
    std::fs::rename(&control, &renamed).map_err(|e| io("protect-old", &control, e))?;
    crate::support::sync_dir(&global).map_err(|e| Failure::new(Code::StandbyFailed, e))
}

fn location(plan: &StandbyPlan, oid: u32) -> Result<&Path, Failure> {
    plan.tablespaces
        .iter()
        .find(|(o, _)| *o == oid)
        .map(|(_, l)| l.as_path())
        .ok_or_else(|| Failure::new(Code::StandbyFailed, format!("tablespace {oid} is unknown")))
}

fn place(plan: &StandbyPlan, base: &Path, at: &kit::KitPath) -> Result<PathBuf, Failure> {
    Ok(match at.tablespace {
        None => base.join(&at.path),
        Some(oid) => location(plan, oid)?.join(&at.path),
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn link_relations(applied: &mut Applied) -> Result<(), Failure> {
    let plan = &applied.plan;
    let new = &plan.new_datadir;
    let tblspc = new.join("pg_tblspc");
    std::fs::create_dir_all(&tblspc).map_err(|e| io("link-relations", &tblspc, e))?;
    for (oid, location) in &plan.tablespaces {
        let version_dir = location.join(&applied.manifest.new.tablespace_dir);
        std::fs::create_dir_all(&version_dir).map_err(|e| io("link-relations", &version_dir, e))?;
        let link = tblspc.join(oid.to_string());
        if std::fs::read_link(&link).is_err() {
            std::os::unix::fs::symlink(location, &link)
                .map_err(|e| io("link-relations", &link, e))?;
        }
    }
    let mut made_dirs: HashSet<PathBuf> = HashSet::new();
    let mut linked = 0u64;
    let mut unlogged = 0usize;
    for file in &applied.manifest.relations {
        if file.fork == Fork::Unlogged {
            unlogged += 1;
            continue;
        }
        let from = place(plan, &plan.old_datadir, &file.old)?;
        let to = place(plan, new, &file.new)?;
        if !from.exists() {
            // The checks let only optional files be absent.
            continue;
        }
        if let Some(parent) = to.parent() {
            if made_dirs.insert(parent.to_path_buf()) {
                std::fs::create_dir_all(parent).map_err(|e| io("link-relations", parent, e))?;
            }
        }
        match std::fs::hard_link(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && same_file(&from, &to) => {}
            Err(e) => return Err(io("link-relations", &to, e)),
        }
        linked += 1;
    }
    // The names durable before the step is recorded as done: a link lost
    // in a crash after it would be a relation cut short.
    let mut dirs: HashSet<PathBuf> = made_dirs
        .iter()
        .filter_map(|d| d.parent().map(Path::to_path_buf))
        .collect();
    dirs.extend(made_dirs);
    dirs.insert(tblspc.clone());
    dirs.insert(new.clone());
    dirs.extend(plan.tablespaces.iter().map(|(_, l)| l.clone()));
    for dir in &dirs {
        crate::support::sync_dir(dir).map_err(|e| Failure::new(Code::SyncFailed, e))?;
    }
    applied.linked = linked;
    applied.unlogged_left_out = unlogged;
    Ok(())
}

/// Moves the staged kit into place: `data/` into the new data directory,
/// `tblspc/OID/` into each tablespace's location (copied where that is
/// another filesystem), `global/pg_control` last, so that a directory cut
/// short here cannot start. Repeated, it moves what is left. Synced before
/// it is recorded as done.
fn install_kit(applied: &mut Applied) -> Result<(), Failure> {
    let plan = &applied.plan;
    let staging = super::staging_path(&plan.new_datadir);
    let mut roots: Vec<(PathBuf, PathBuf)> = vec![(staging.join("data"), plan.new_datadir.clone())];
    for (oid, location) in &plan.tablespaces {
        roots.push((
            staging.join("tblspc").join(oid.to_string()),
            location.clone(),
        ));
    }
    let control = Path::new("global").join("pg_control");
    let mut files = 0u64;
    let mut last = None;
    for (from_root, to_root) in &roots {
        if !from_root.exists() {
            continue;
        }
        for entry in walkdir::WalkDir::new(from_root).min_depth(1) {
            let entry = entry.map_err(|e| io("install-kit", from_root, e))?;
            let relative = entry
                .path()
                .strip_prefix(from_root)
                .unwrap_or(entry.path())
                .to_path_buf();
            let target = to_root.join(&relative);
            if entry.file_type().is_dir() {
                std::fs::create_dir_all(&target).map_err(|e| io("install-kit", &target, e))?;
            } else if to_root == &plan.new_datadir && relative == control {
                last = Some((entry.path().to_path_buf(), target));
            } else {
                move_file(entry.path(), &target)?;
                files += 1;
            }
        }
    }
    // Everything else durable before the file that makes it a cluster.
    sync_new(applied)?;
    if let Some((from, to)) = last {
        move_file(&from, &to)?;
        if let Some(dir) = to.parent() {
            crate::support::sync_dir(dir).map_err(|e| Failure::new(Code::SyncFailed, e))?;
        }
        files += 1;
    }
    match std::fs::remove_dir_all(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("install-kit", &staging, e)),
    }
    applied.kit_files = files;
    Ok(())
}

/// A rename, or where the target is on another filesystem (a tablespace),
/// a copy made durable and the staged file removed.
fn move_file(from: &Path, to: &Path) -> Result<(), Failure> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            pgm_cluster::datadir::copy_file(from, to).map_err(|e| io("install-kit", to, e))?;
            std::fs::File::open(to)
                .and_then(|f| f.sync_all())
                .map_err(|e| io("install-kit", to, e))?;
            std::fs::remove_file(from).map_err(|e| io("install-kit", from, e))
        }
        Err(e) => Err(io("install-kit", to, e)),
    }
}

/// The standby's own configuration, carried as `--carry-config` carries a
/// primary's (renamed settings rewritten), and `standby.signal`.
fn configure(applied: &Applied, printer: &Printer) -> Result<(), Failure> {
    let plan = &applied.plan;
    let (old, new) = (&plan.old_datadir, &plan.new_datadir);
    let wal_mb = ControlFile::read(new)
        .map(|c| u64::from(c.wal_segment_size) / (1024 * 1024))
        .unwrap_or(16);
    let (old_major, new_major) = (applied.manifest.old.major, applied.manifest.new.major);
    for name in ["postgresql.conf", "postgresql.auto.conf"] {
        let from = old.join(name);
        let Ok(text) = std::fs::read_to_string(&from) else {
            if name == "postgresql.conf" {
                printer.notice(crate::output::NoticeCode::StandbyConfigElsewhere, "the standby keeps its postgresql.conf elsewhere: the new standby has the new primary's; set it up as the old one was (primary_conninfo, primary_slot_name)".into());
            }
            continue;
        };
        let (carried, changes) = crate::config::carry(&text, old_major, new_major, wal_mb, &[]);
        for change in changes {
            printer.emit(&Event::config_change(name, change));
        }
        let to = new.join(name);
        journal::write_atomically(&to, carried.as_bytes()).map_err(|e| io("configure", &to, e))?;
    }
    if old_major < 12 {
        carry_recovery_conf(applied, printer)?;
    }
    for name in ["pg_hba.conf", "pg_ident.conf"] {
        let from = old.join(name);
        if from.is_file() {
            let to = new.join(name);
            let bytes = std::fs::read(&from).map_err(|e| io("configure", &from, e))?;
            journal::write_atomically(&to, &bytes).map_err(|e| io("configure", &to, e))?;
        }
    }
    let signal = new.join("standby.signal");
    journal::write_atomically(&signal, b"").map_err(|e| io("configure", &signal, e))?;
    accepted_by_new_server(applied, printer)
}

/// A 10 or 11 standby's recovery.conf, its settings appended to the new
/// postgresql.auto.conf (a 12+ server reads them from there and refuses
/// to start beside a recovery.conf, which is not carried).
fn carry_recovery_conf(applied: &Applied, printer: &Printer) -> Result<(), Failure> {
    let plan = &applied.plan;
    let from = plan.old_datadir.join("recovery.conf");
    let text = match std::fs::read_to_string(&from) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            printer.notice(crate::output::NoticeCode::StandbyWithoutRecoveryConf, "the old standby has no recovery.conf: the new one is a standby (standby.signal) that finds its primary only if its configuration names it (primary_conninfo)".into());
            return Ok(());
        }
        Err(e) => return Err(io("configure", &from, e)),
    };
    let (lines, changes) = crate::config::carry_recovery_conf(&text, applied.manifest.new.major);
    for change in changes {
        printer.emit(&Event::config_change("recovery.conf", change));
    }
    let to = plan.new_datadir.join("postgresql.auto.conf");
    let mut auto = match std::fs::read_to_string(&to) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io("configure", &to, e)),
    };
    // A resumed step finds its own block from before (when the old standby
    // had no postgresql.auto.conf to carry afresh): it is written again.
    const MARK: &str = "# carried from the old standby's recovery.conf by pg-migrate\n";
    if let Some(at) = auto.find(MARK) {
        auto.truncate(at);
    }
    if !auto.is_empty() && !auto.ends_with('\n') {
        auto.push('\n');
    }
    auto.push_str(MARK);
    for line in lines {
        auto.push_str(&line);
        auto.push('\n');
    }
    journal::write_atomically(&to, auto.as_bytes()).map_err(|e| io("configure", &to, e))
}

/// The new server judges the carried configuration (`postgres -C`, which
/// reads it as a start would): what it rejects is commented out, with its
/// reason, as `--carry-config` does; anything else fails the step.
fn accepted_by_new_server(applied: &Applied, printer: &Printer) -> Result<(), Failure> {
    let new = &applied.plan.new_datadir;
    let postgres = applied.plan.new_bindir.join("postgres");
    for _ in 0..50 {
        let (status, captured) = pgm_cluster::command::PgCommand::new(&postgres)
            .arg("-D")
            .arg(new)
            .args(["-C", "data_directory"])
            .run_unchecked()
            .map_err(|e| Failure::new(Code::StandbyFailed, e))?;
        if status.success() {
            return Ok(());
        }
        let mut fixed = false;
        for (setting, message) in crate::config::rejected_settings(&captured.stderr) {
            for name in ["postgresql.conf", "postgresql.auto.conf"] {
                let path = new.join(name);
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue;
                };
                let (text, found) =
                    crate::config::comment_out(&text, &setting, "the new server rejects it");
                if found {
                    journal::write_atomically(&path, text.as_bytes())
                        .map_err(|e| io("configure", &path, e))?;
                    printer.emit(&Event::ConfigChange {
                        file: name.into(),
                        setting: setting.clone(),
                        action: "removed",
                        old_value: None,
                        new_setting: None,
                        new_value: None,
                        reason: format!("the new server rejects it: {message}"),
                    });
                    fixed = true;
                }
            }
        }
        if !fixed {
            return Err(Failure {
                code: Code::StandbyFailed,
                message: format!(
                    "configure: the new server does not accept the standby's carried configuration: {}",
                    captured.stderr.lines().last().unwrap_or("").trim()
                ),
                remedy: Some(format!(
                    "fix it in the old standby's configuration ({}), which is carried again, then: pg-migrate resume -D {}",
                    applied.plan.old_datadir.join("postgresql.conf").display(),
                    crate::support::quote(new)
                )),
                clusters: None,
            });
        }
    }
    Ok(())
}

fn sync(applied: &Applied) -> Result<(), Failure> {
    let plan = &applied.plan;
    // The standby's own files were written by its own server, which synced
    // them at its clean shutdown; one syncfs per filesystem makes sure.
    let mut places = vec![plan.old_datadir.clone()];
    places.extend(plan.tablespaces.iter().map(|(_, l)| l.clone()));
    let mut devices = HashSet::new();
    for place in &places {
        use std::os::unix::fs::MetadataExt;
        let dir = std::fs::File::open(place).map_err(|e| io("sync", place, e))?;
        let device = dir.metadata().map_err(|e| io("sync", place, e))?.dev();
        if devices.insert(device) {
            nix::unistd::syncfs(&dir).map_err(|e| io("sync", place, e))?;
        }
    }
    sync_new(applied)
}

/// The new standby's files and directories fsynced, but for the standby's
/// own relation files (linked: their data is the old standby's, synced by
/// its server and by syncfs).
fn sync_new(applied: &Applied) -> Result<(), Failure> {
    let plan = &applied.plan;
    let mut roots = vec![plan.new_datadir.clone()];
    roots.extend(
        plan.tablespaces
            .iter()
            .map(|(_, l)| l.join(&applied.manifest.new.tablespace_dir)),
    );
    let linked: Vec<PathBuf> = applied
        .manifest
        .relations
        .iter()
        .filter_map(|r| place(plan, &plan.new_datadir, &r.new).ok())
        .collect();
    let durable: HashSet<&Path> = linked.iter().map(|p| p.as_path()).collect();
    pgm_transfer::sync_tree(&roots, &durable, 2, &|_| {})
        .map_err(|e| Failure::new(Code::SyncFailed, e))?;
    Ok(())
}

/// Why the new standby may not be given up: it ran (its pg_control is no
/// longer the kit's, or a postmaster.pid is there).
pub fn new_standby_ran(new_datadir: &Path, manifest: &Manifest) -> Option<String> {
    if new_datadir.join("postmaster.pid").exists() {
        return Some(format!("{} has a postmaster.pid", new_datadir.display()));
    }
    match ControlFile::read(new_datadir) {
        Ok(c)
            if c.checkpoint_lsn != manifest.new.checkpoint_lsn
                || c.state != pgm_cluster::ClusterState::ShutDown =>
        {
            Some(format!(
                "its pg_control is no longer the kit's (state \"{}\")",
                c.state.describe()
            ))
        }
        _ => None,
    }
}

/// Gives the old standby back: the new standby's files removed (its links
/// only: the old files stay), the old pg_control renamed back. Each part
/// can be repeated.
pub fn revert(new_datadir: &Path) -> Result<StandbyPlan, Failure> {
    let records = super::records(new_datadir);
    let plan = super::plan_of(&records)
        .ok_or_else(|| Failure::new(Code::NoJournal, "the standby's journal has no plan"))?;
    let started_revert = records
        .iter()
        .any(|r| matches!(r, StandbyRecord::RevertStarted));
    if !started_revert {
        if let Ok(manifest) = saved_manifest(new_datadir) {
            // Its pg_control comes last: without it, it cannot have run.
            let installed = new_datadir.join("global").join("pg_control").exists();
            if let Some(why) = new_standby_ran(new_datadir, &manifest).filter(|_| installed) {
                return Err(Failure {
                    code: Code::NewClusterHasRun,
                    message: format!(
                        "the new standby has run ({why}): it wrote to files it shares with the old standby, which can no longer be given back"
                    ),
                    remedy: Some("keep the new standby (it follows the new primary), or rebuild the old one from its primary".into()),
                    clusters: Some(ClusterStates {
                        old: ClusterCondition::Protected,
                        new: ClusterCondition::Upgraded,
                    }),
                });
            }
        }
        super::record(new_datadir, &StandbyRecord::RevertStarted)
            .map_err(|e| io("revert", new_datadir, e))?;
    }
    publish_interruptible(
        new_datadir,
        true,
        format!(
            "the revert was cut short; finish it: pg-migrate revert -D {} (every part of it can be repeated)",
            crate::support::quote(new_datadir)
        ),
    );
    let fail = |path: &Path, e: std::io::Error| io("revert", path, e);
    let manifest = saved_manifest(new_datadir).ok();
    if let Some(manifest) = &manifest {
        for (_, location) in &plan.tablespaces {
            let dir = location.join(&manifest.new.tablespace_dir);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail(&dir, e)),
            }
        }
    }
    let entries = std::fs::read_dir(new_datadir).map_err(|e| fail(new_datadir, e))?;
    for entry in entries.flatten() {
        if entry.file_name() == journal::DIR {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| fail(&path, e))?;
    }
    let staging = super::staging_path(new_datadir);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| fail(&staging, e))?;
    }
    pgm_cluster::faults::point(|| "standby-revert:files-removed".into());
    let global = plan.old_datadir.join("global");
    let renamed = global.join("pg_control.old");
    let control = global.join("pg_control");
    if renamed.exists() && !control.exists() {
        std::fs::rename(&renamed, &control).map_err(|e| fail(&renamed, e))?;
        crate::support::sync_dir(&global).map_err(|e| Failure::new(Code::RevertFailed, e))?;
    }
    super::record(new_datadir, &StandbyRecord::Reverted)
        .map_err(|e| io("revert", new_datadir, e))?;
    // Nothing of the run is left: the journal goes last.
    let gone = if plan.created_new {
        std::fs::remove_dir_all(new_datadir)
    } else {
        std::fs::remove_dir_all(journal::dir(new_datadir))
    };
    gone.map_err(|e| fail(new_datadir, e))?;
    Ok(plan)
}
