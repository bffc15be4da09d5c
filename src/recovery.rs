//! `resume` and `revert`, and the guards every run passes first: one
//! pg-migrate at a time per cluster, and no new upgrade over an unfinished one.

use std::path::{Path, PathBuf};

use pgm_cluster::command::PgCommand;
use pgm_cluster::{ControlFile, DataDir, ServerStatus};

use crate::cli::{Options, Settings};
use crate::failure::{Code, Failure};
use crate::journal::{self, Journal, JournalView, Record, RunLock, State};
use crate::output::ClusterCondition;
use crate::output::ClusterStates;

/// Locks both clusters' directories for the life of the run.
pub fn lock(settings: &Settings) -> Result<RunLock, Failure> {
    let mut dirs: Vec<std::path::PathBuf> = [&settings.old_datadir, &settings.new_datadir]
        .into_iter()
        .flatten()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .filter(|d| d.is_dir())
        .collect();
    dirs.dedup();
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    lock_dirs(&dirs)
}

/// An exclusive lock on each existing directory, or the `locked` refusal.
pub fn lock_dirs(dirs: &[&Path]) -> Result<RunLock, Failure> {
    RunLock::acquire(dirs).map_err(|busy| Failure {
        clusters: None,
        code: Code::Locked,
        message: format!("another pg-migrate is working on {}", busy.display()),
        remedy: Some("wait for it to finish (or find it with: ps -C pg-migrate -f); two runs on the same clusters would damage them".into()),
    })
}

/// A new upgrade (or check) must not run over an unfinished or finished one.
pub fn refuse_unfinished(settings: &Settings) -> Result<(), Failure> {
    let new = settings.new_datadir();
    match journal::read_state(new) {
        Some(State::Upgrading) | Some(State::Failed) => Err(Failure {
            clusters: None,
            code: Code::UnfinishedUpgrade,
            message: format!("{} holds an upgrade that did not finish", new.display()),
            remedy: Some(crate::engine::recovery_commands(new)),
        }),
        Some(State::Complete) => Err(Failure {
            clusters: None,
            code: Code::AlreadyUpgraded,
            message: format!(
                "{} is already the result of a finished upgrade",
                new.display()
            ),
            remedy: Some("start it; to upgrade again, give -D a new directory".into()),
        }),
        Some(State::Prepared) => Err(Failure {
            clusters: None,
            code: Code::AlreadyPrepared,
            message: format!("{} holds a prepared upgrade", new.display()),
            remedy: Some(format!(
                "finish it: pg-migrate cutover -D {0}; or throw it away: pg-migrate discard -D {0}",
                crate::support::quote(new)
            )),
        }),
        Some(State::Reverted) | None => Ok(()),
    }
}

/// After a revert the journal is archived, so that a new upgrade starts its own.
pub fn archive_reverted_journal(new_datadir: &Path) {
    if journal::read_state(new_datadir) == Some(State::Reverted) {
        let dir = journal::dir(new_datadir);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let _ = std::fs::rename(
            dir.join("journal.ndjson"),
            dir.join(format!("journal-{stamp}.reverted.ndjson")),
        );
        let _ = std::fs::remove_file(dir.join("state"));
    }
}

/// Fills the flags a resume or revert did not repeat from the journal's
/// plan, so that `pg-migrate resume -D NEW` is enough.
pub fn fill_from_journal(options: &mut Options, resume: bool) -> Result<JournalView, Failure> {
    let Some(new) = options.new_datadir.clone() else {
        return Err(Failure {
            clusters: None,
            code: Code::Usage,
            message: "no new data directory was given".into(),
            remedy: Some(
                "pass the data directory of the interrupted upgrade with -D/--new-datadir".into(),
            ),
        });
    };
    let view = JournalView::read(&new)
        .filter(|v| v.plan().is_some())
        .ok_or_else(|| Failure {
            clusters: None,
            code: Code::NoJournal,
            message: format!(
                "{} holds no pg-migrate journal: no upgrade began there, there is nothing to resume or revert",
                new.display()
            ),
            remedy: Some("check -D; an upgrade that never began changed neither cluster: run it again".into()),
        })?;
    let Some(plan) = view.plan() else {
        unreachable!("filtered above: the journal has a plan");
    };
    if options.old_bindir.is_none() {
        options.old_bindir = Some(plan.old.bindir.clone());
    }
    if options.new_bindir.is_none() {
        options.new_bindir = Some(plan.new.bindir.clone());
    }
    if options.old_datadir.is_none() {
        options.old_datadir = Some(plan.old.datadir.clone());
    }
    if options.username.is_none() {
        options.username = Some(plan.user.clone());
    }
    if plan.method == crate::cli::Method::Dump {
        options.method = crate::cli::Method::Dump;
    }
    // -j and --cpus as the upgrade was given them, unless given now.
    if options.jobs == 1 {
        if let Ok(jobs) = u16::try_from(plan.jobs) {
            options.jobs = jobs.max(1);
        }
    }
    if options.cpus.is_none() {
        options.cpus = plan.cpus.and_then(|n| u16::try_from(n).ok());
    }
    if resume {
        // A resumed upgrade still does what the interrupted one was asked
        // to: a resume that starts over makes the backup again, and the
        // steps after the upgrade follow it.
        if options.backup_dir.is_none() {
            options.backup_dir = plan.backup_dir.clone();
        }
        if options.log_dir.is_none() {
            options.log_dir = plan.log_dir.clone();
        }
        let after = &plan.after;
        options.carry_config |= after.carry_config;
        options.update_extensions |= after.update_extensions;
        options.reindex_collation |= after.reindex_collation;
        options.analyze |= after.analyze;
        if options.post_upgrade.is_none() {
            options.post_upgrade = after.post_upgrade.clone();
        }
        if let Some(verify) = after.verify {
            options.verify = options.verify.or(Some(verify.mode));
            options.verify_sample_above = options.verify_sample_above.or(Some(verify.sample_above));
        }
    }
    let mode = plan.mode;
    let any_mode =
        options.link || options.copy || options.clone || options.copy_file_range || options.swap;
    if any_mode && options.mode() != mode {
        let flag = mode.flag();
        return Err(Failure {
            clusters: None,
            code: Code::Usage,
            message: format!(
                "the interrupted upgrade used {flag}; it cannot continue in another mode"
            ),
            remedy: Some(format!("drop the mode flag, or pass {flag}")),
        });
    }
    options.link = mode == crate::cli::Mode::Link;
    options.copy = mode == crate::cli::Mode::Copy;
    options.clone = mode == crate::cli::Mode::Clone;
    options.copy_file_range = mode == crate::cli::Mode::CopyFileRange;
    options.swap = mode == crate::cli::Mode::Swap;
    Ok(view)
}

/// Stops servers an interrupted pg-migrate left running (those listening in
/// one of its run directories). A server someone else runs is a refusal,
/// but on the old cluster of an online upgrade (prepare, discard), which
/// serves on as it should, and with `old_may_serve` (a revert of a run
/// that never disabled the old cluster: it leaves the old cluster alone).
pub fn stop_leftover_servers(
    settings: &Settings,
    view: Option<&JournalView>,
    old_may_serve: bool,
) -> Result<(), Failure> {
    let ours = view.map(|v| v.run_dirs()).unwrap_or_default();
    let online = view.is_some_and(|v| v.is_online()) && !view.is_some_and(|v| v.in_cutover());
    for (datadir, bindir) in [
        (settings.old_datadir(), settings.old_bindir()),
        (settings.new_datadir(), &settings.new_bindir),
    ] {
        let Ok(dir) = DataDir::open(datadir, None) else {
            continue;
        };
        if let Ok(ServerStatus::Running(pid)) = dir.server_status() {
            // Our private socket directories are named pgm-*; with the lock
            // held, no other pg-migrate can be using one.
            // The new server's socket is in the run directory's `new`.
            let mine = pid.socket_dir.as_ref().is_some_and(|socket| {
                [Some(socket.as_path()), socket.parent()]
                    .into_iter()
                    .flatten()
                    .any(|s| {
                        ours.iter().any(|o| o == s)
                            || s.file_name()
                                .is_some_and(|n| n.to_string_lossy().starts_with("pgm-"))
                    })
            });
            if !mine {
                if view.is_none()
                    || ((online || old_may_serve) && datadir == settings.old_datadir())
                {
                    // Not ours: the checks will report it (or, prepared,
                    // the old server serves).
                    continue;
                }
                return Err(Failure {
                    clusters: None,
                    code: Code::ServerRunning,
                    message: format!(
                        "a server that pg-migrate did not start runs on {} (pid {})",
                        datadir.display(),
                        pid.pid
                    ),
                    remedy: Some(format!(
                        "stop it first: {} -D {} stop",
                        bindir.join("pg_ctl").display(),
                        datadir.display()
                    )),
                });
            }
            let _ = PgCommand::new(bindir.join("pg_ctl"))
                .args(["-w", "-t", "120", "-m", "fast", "-D"])
                .arg(datadir)
                .arg("stop")
                .run();
        }
    }
    Ok(())
}

/// Stops the servers that a pg-migrate killed before it wrote a journal
/// left running (found through its run directory under the socket base,
/// which names its clusters, and its lock, which is free once it is gone).
/// Returns the data directories whose server was stopped; errors name the
/// ones that could not be.
pub fn stop_abandoned_servers(
    socket_base: &Path,
    datadirs: &[&Path],
) -> (Vec<PathBuf>, Vec<String>) {
    let mut stopped = Vec::new();
    let mut failed = Vec::new();
    let mut runs = Vec::new();
    for datadir in datadirs {
        runs.extend(crate::rundir::abandoned_runs(socket_base, datadir));
    }
    for (run_dir, run) in runs {
        for datadir in run.datadirs() {
            if stopped.iter().any(|s: &PathBuf| s.as_path() == datadir) {
                continue;
            }
            let dirs: Vec<&Path> = vec![datadir];
            // Not while another pg-migrate works on the cluster.
            let Ok(_lock) = RunLock::acquire(&dirs) else {
                continue;
            };
            let Ok(dir) = DataDir::open(datadir, None) else {
                continue;
            };
            let Ok(ServerStatus::Running(pid)) = dir.server_status() else {
                continue;
            };
            if !pid
                .socket_dir
                .as_ref()
                .is_some_and(|socket| socket.starts_with(&run_dir))
            {
                continue;
            }
            match fast_shutdown(datadir, pid.pid) {
                Ok(()) => stopped.push(datadir.to_path_buf()),
                Err(e) => failed.push(format!("{}: {e}", datadir.display())),
            }
        }
    }
    (stopped, failed)
}

/// A fast shutdown of the postmaster `pid` of `datadir` (SIGINT, as
/// `pg_ctl stop -m fast` sends), waited for until its postmaster.pid is gone.
pub fn fast_shutdown(datadir: &Path, pid: i32) -> Result<(), String> {
    use nix::sys::signal::{kill, Signal};
    kill(nix::unistd::Pid::from_raw(pid), Signal::SIGINT)
        .map_err(|e| format!("could not signal the server (pid {pid}): {e}"))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while datadir.join("postmaster.pid").exists() {
        if std::time::Instant::now() > deadline {
            return Err(format!("the server (pid {pid}) did not stop within 300 s"));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// `PG_<major>_<catversion>` of the new cluster (for its tablespace directories).
pub fn new_tablespace_dir(settings: &Settings) -> Option<String> {
    // The saved copy first: the new cluster may be half-reset.
    let new = settings.new_datadir();
    let control = journal::pristine_file(new, "global/pg_control")
        .and_then(|bytes| ControlFile::decode(&bytes, &new.join("global/pg_control")).ok())
        .or_else(|| ControlFile::read(new).ok())?;
    let major = DataDir::open(new, None).map(|d| d.major).ok().or_else(|| {
        let text = journal::pristine_file(new, "PG_VERSION")?;
        pgm_cluster::PgMajor::parse_pg_version_file(&String::from_utf8(text).ok()?).ok()
    })?;
    Some(format!("PG_{major}_{}", control.catalog_version))
}

/// Puts the new cluster back as initdb made it, noting it in the journal.
pub fn reset_new_cluster(settings: &Settings) -> Result<(), Failure> {
    let refusal = |e: String| Failure {
        clusters: None,
        code: Code::ResetFailed,
        message: format!("could not return the new cluster to its state before the upgrade: {e}"),
        remedy: Some(format!(
            "remove {} and re-create it with initdb, then run the upgrade again",
            settings.new_datadir().display()
        )),
    };
    let version_dir = new_tablespace_dir(settings)
        .ok_or_else(|| refusal("its pg_control cannot be read".into()))?;
    let mut journal = Journal::open(settings.new_datadir()).map_err(|e| refusal(e.to_string()))?;
    // Once the saved copy is found whole, the new cluster changes by
    // pg-migrate's hand (a revert cut short in it must not take that for a
    // stranger's start); a refused copy leaves the journal as it was.
    journal::restore_pristine(settings.new_datadir(), &version_dir, || {
        journal
            .record(Record::ResetStarted)
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
    .map_err(|e| refusal(e.to_string()))?;
    journal
        .record(Record::Reset)
        .map_err(|e| refusal(e.to_string()))?;
    Ok(())
}

/// What `revert` did, for the summary.
pub struct Reverted {
    pub renamed_control_back: bool,
}

/// Why the new cluster cannot be given up: a server other than
/// pg-migrate's own ran on it since pg-migrate last left it (its
/// pg_control differs from the one the journal recorded then, or a
/// postmaster.pid is there). It matters once the upgrade finished (the new
/// cluster may hold new work) and, in link and swap mode, once the old
/// cluster's files are shared or moved (a started new cluster writes to them).
pub fn new_cluster_ran(settings: &Settings, view: &JournalView) -> Option<String> {
    let new = settings.new_datadir();
    let shares_files = matches!(
        settings.mode,
        crate::cli::Mode::Link | crate::cli::Mode::Swap
    ) && view.passed_point_of_no_return();
    if journal::read_state(new) != Some(State::Complete) && !shares_files {
        return None;
    }
    if new.join("postmaster.pid").exists() {
        return Some(format!(
            "{} has a postmaster.pid: a server runs on it or crashed there",
            new.display()
        ));
    }
    let recorded = view.new_control_as_left()?;
    match current_new_stamp(new) {
        None => Some(format!(
            "{}/global/pg_control cannot be read",
            new.display()
        )),
        Some(now) if now != recorded => Some(format!(
            "its pg_control is not as pg-migrate left it: {}",
            now.changes_since(&recorded).join("; ")
        )),
        Some(_) => None,
    }
}

/// The new cluster's pg_control as it is now (also when prepare hid it).
fn current_new_stamp(new: &Path) -> Option<pgm_cluster::ControlStamp> {
    let global = new.join("global");
    ["pg_control", "pg_control.prepared"]
        .iter()
        .map(|name| global.join(name))
        .find(|p| p.exists())
        .and_then(|p| ControlFile::decode(&std::fs::read(&p).ok()?, &p).ok())
        .map(|c| c.stamp())
}

/// A late resume continues from the old cluster the counters were handed
/// over from; one that ran since (started as the advice allows, or its
/// pg_control renamed back in link mode) holds rows and objects the new
/// cluster's commit log and catalog know nothing of.
pub fn refuse_late_resume(settings: &Settings, view: &JournalView) -> Result<(), Failure> {
    let old = settings.old_datadir();
    let quoted = crate::support::quote(settings.new_datadir());
    let refusal = |message: String| {
        Failure {
        clusters: Some(ClusterStates {
            old: ClusterCondition::Unchanged,
            new: ClusterCondition::Incomplete,
        }),
        code: Code::OldClusterChanged,
        message,
        remedy: Some(format!(
            "the new cluster cannot be finished from it: put it back as initdb made it with pg-migrate revert -D {quoted}, then run the upgrade again (it carries what the old cluster holds now)"
        )),
    }
    };
    let Some(recorded) = view.handover_stamp() else {
        return Err(refusal(
            "the journal does not record which old cluster the counters were handed over from"
                .into(),
        ));
    };
    if let Ok(ServerStatus::Running(_)) = DataDir::open(old, None).and_then(|d| d.server_status()) {
        return Err(refusal(format!(
            "the old cluster {} has run since the counters were handed over from it (a server runs on it)",
            old.display()
        )));
    }
    let global = old.join("global");
    let now = ["pg_control", "pg_control.old"]
        .iter()
        .map(|name| global.join(name))
        .find(|p| p.exists())
        .and_then(|p| ControlFile::decode(&std::fs::read(&p).ok()?, &p).ok())
        .map(|c| c.stamp());
    match now {
        Some(now) if now == recorded => Ok(()),
        Some(now) => Err(refusal(format!(
            "the old cluster {} has run since the counters were handed over from it: {}",
            old.display(),
            now.changes_since(&recorded).join("; ")
        ))),
        None => Err(refusal(format!(
            "the old cluster's pg_control in {} cannot be read",
            global.display()
        ))),
    }
}

/// Returns the old cluster to a startable state identical to before the
/// upgrade and the new one to its pristine state, unless the new cluster has
/// run since pg-migrate left it. Every part can be repeated: a revert cut
/// short is finished by running it again.
pub fn revert(settings: &Settings, view: &JournalView) -> Result<Reverted, Failure> {
    let new = settings.new_datadir();
    let quoted = crate::support::quote(new);
    if journal::read_state(new) == Some(State::Reverted) {
        return Err(Failure {
            clusters: None,
            code: Code::AlreadyReverted,
            message: format!("the upgrade into {} was already reverted", new.display()),
            remedy: Some("the old cluster can be started as before".into()),
        });
    }
    let protected = view.passed_point_of_no_return()
        && matches!(
            settings.mode,
            crate::cli::Mode::Link | crate::cli::Mode::Swap
        );
    let as_found = ClusterStates {
        old: if protected {
            ClusterCondition::Protected
        } else {
            ClusterCondition::Unchanged
        },
        new: if journal::read_state(new) == Some(State::Complete) {
            ClusterCondition::Upgraded
        } else {
            ClusterCondition::Incomplete
        },
    };
    // A revert cut short passed this guard before it changed anything, and
    // recorded the new cluster's pg_control as it found it: run again, the
    // new cluster must still be so (nobody ran it meanwhile), unless the
    // reset had begun (then it is the revert's own doing).
    let ran = match view.revert_began_with() {
        None => new_cluster_ran(settings, view),
        Some((_, true)) => None,
        Some((found, false)) => {
            let now = current_new_stamp(new);
            if new.join("postmaster.pid").exists() {
                Some(format!(
                    "{} has a postmaster.pid: a server runs on it or crashed there",
                    new.display()
                ))
            } else if found.is_some() && now != found {
                Some(format!(
                    "its pg_control changed since the revert began: {}",
                    match (&now, &found) {
                        (Some(now), Some(found)) => now.changes_since(found).join("; "),
                        _ => "it cannot be read".into(),
                    }
                ))
            } else {
                None
            }
        }
    };
    if let Some(why) = ran {
        return Err(Failure {
            clusters: Some(as_found),
            code: Code::NewClusterHasRun,
            message: format!("the new cluster has been started since pg-migrate left it ({why}): it may hold changes, and in link and swap mode it has written to files it shares with the old cluster"),
            remedy: Some("revert is no longer safe; nothing was changed: keep the new cluster, or restore the old one from a backup".into()),
        });
    }
    // Swap mode: which files in the new cluster's database directories are
    // the old cluster's is known only from the saved plan.
    let swap_dirs = if settings.mode == crate::cli::Mode::Swap && view.passed_point_of_no_return() {
        let plan = crate::journal::transfer_plan_path(new);
        let moves = crate::journal::read_transfer_plan(new).map(|plan| plan.moves).ok_or_else(|| Failure {
            clusters: Some(as_found.clone()),
            code: Code::RevertFailed,
            message: format!(
                "{} is missing or unreadable: without it the old cluster's files cannot be told from the new one's; nothing was changed",
                plan.display()
            ),
            remedy: Some(format!("put {} back from a copy of the new cluster's pg_migrate.d, then run pg-migrate revert again; otherwise restore the old cluster from a backup (do not rename its pg_control back by hand)", plan.display())),
        })?;
        Some(pgm_transfer::swap_dirs(&moves).map_err(|file| Failure {
            clusters: Some(as_found.clone()),
            code: Code::RevertFailed,
            message: format!(
                "the saved transfer plan cannot be swapped back ({}); nothing was changed",
                file.display()
            ),
            remedy: Some("restore the old cluster from a backup".into()),
        })?)
    } else {
        None
    };
    let failed_midway = |message: String, remedy: String| Failure {
        clusters: Some(ClusterStates {
            old: if protected {
                ClusterCondition::Protected
            } else {
                ClusterCondition::Unchanged
            },
            new: ClusterCondition::Incomplete,
        }),
        code: Code::RevertFailed,
        message,
        remedy: Some(remedy),
    };
    let mut journal = Journal::open(new).map_err(|e| Failure {
        clusters: Some(as_found.clone()),
        code: Code::JournalFailed,
        message: e.to_string(),
        remedy: Some("check the new data directory's permissions".into()),
    })?;
    if !view.revert_started() {
        journal
            .record(Record::RevertStarted {
                new_control: current_new_stamp(new),
            })
            .map_err(|e| Failure {
                clusters: Some(as_found.clone()),
                code: Code::JournalFailed,
                message: e.to_string(),
                remedy: Some("check the new data directory's permissions and free space".into()),
            })?;
    }
    // Nothing may take the clusters for a finished upgrade meanwhile (a
    // wrapper starting the new one, post-upgrade): until it is done, the
    // state says the upgrade is not.
    journal::write_state(new, State::Failed).map_err(|e| Failure {
        clusters: Some(as_found.clone()),
        code: Code::JournalFailed,
        message: e.to_string(),
        remedy: Some("check the new data directory's permissions and free space".into()),
    })?;
    // From here on an interruption leaves a revert to finish.
    crate::engine::publish_revert_in_progress(new, protected);
    if let Some(dirs) = swap_dirs {
        // The old cluster's directories come home before anything else
        // touches the new cluster (its reset would delete them).
        pgm_transfer::unswap(&dirs, &journal::dir(new).join("swap"), &|step| {
            pgm_cluster::faults::point(|| format!("revert:unswap:{step}"))
        })
        .map_err(|e| {
            failed_midway(
                format!("could not move the old cluster's directories back: {e}"),
                format!("run pg-migrate revert -D {quoted} again (every part of it can be repeated); if it fails again, restore the old cluster from a backup"),
            )
        })?;
    }
    let control = settings.old_datadir().join("global/pg_control");
    let renamed = settings.old_datadir().join("global/pg_control.old");
    let mut renamed_back = false;
    if !control.exists() && renamed.exists() {
        std::fs::rename(&renamed, &control)
            .map_err(|e| e.to_string())
            .and_then(|()| crate::support::sync_dir(&settings.old_datadir().join("global")))
            .map_err(|e| {
                failed_midway(
                    format!("could not rename {} back: {e}", renamed.display()),
                    format!(
                        "run pg-migrate revert -D {quoted} again, or rename it by hand: mv {} {}",
                        renamed.display(),
                        control.display()
                    ),
                )
            })?;
        renamed_back = true;
    }
    pgm_cluster::faults::point(|| "revert:old-given-back".into());
    if journal::has_pristine(new) {
        reset_new_cluster(settings)?;
    }
    let _ = journal.record(Record::Reverted {
        renamed_control_back: renamed_back,
    });
    let _ = journal::write_state(new, State::Reverted);
    Ok(Reverted {
        renamed_control_back: renamed_back,
    })
}
