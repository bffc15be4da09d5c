//! `resume` and `revert`, and the guards every run passes first: one
//! pg-migrate at a time per cluster, and no new upgrade over an unfinished one.

use std::path::Path;

use pgm_cluster::command::PgCommand;
use pgm_cluster::{ControlFile, DataDir, ServerStatus};
use serde_json::json;

use crate::cli::{Options, Settings};
use crate::journal::{self, Journal, JournalView, RunLock, State};

/// A refusal before anything was done.
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    pub remedy: String,
}

/// Locks both clusters' directories for the life of the run.
pub fn lock(settings: &Settings) -> Result<RunLock, Refusal> {
    let mut dirs: Vec<std::path::PathBuf> = [&settings.old_datadir, &settings.new_datadir]
        .into_iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .filter(|d| d.is_dir())
        .collect();
    dirs.dedup();
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    RunLock::acquire(&dirs).map_err(|busy| Refusal {
        code: "locked",
        message: format!("another pg-migrate is working on {}", busy.display()),
        remedy: "wait for it to finish (or find it with: ps -C pg-migrate -f); two runs on the same clusters would damage them".into(),
    })
}

/// A new upgrade (or check) must not run over an unfinished or finished one.
pub fn refuse_unfinished(settings: &Settings) -> Result<(), Refusal> {
    let new = &settings.new_datadir;
    match journal::read_state(new) {
        Some(State::Upgrading) | Some(State::Failed) => Err(Refusal {
            code: "unfinished_upgrade",
            message: format!("{} holds an upgrade that did not finish", new.display()),
            remedy: crate::upgrade::recovery_commands(new),
        }),
        Some(State::Complete) => Err(Refusal {
            code: "already_upgraded",
            message: format!(
                "{} is already the result of a finished upgrade",
                new.display()
            ),
            remedy: "start it; to upgrade again, give -D a new directory".into(),
        }),
        Some(State::Prepared) => Err(Refusal {
            code: "already_prepared",
            message: format!("{} holds a prepared upgrade", new.display()),
            remedy: format!(
                "finish it: pg-migrate cutover -D {0}; or throw it away: pg-migrate discard -D {0}",
                crate::upgrade::quote(new)
            ),
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
pub fn fill_from_journal(options: &mut Options, resume: bool) -> Result<JournalView, Refusal> {
    let Some(new) = options.new_datadir.clone() else {
        return Err(Refusal {
            code: "usage",
            message: "no new data directory was given".into(),
            remedy: "pass the data directory of the interrupted upgrade with -D/--new-datadir"
                .into(),
        });
    };
    let view = JournalView::read(&new)
        .filter(|v| v.plan().is_some())
        .ok_or_else(|| Refusal {
            code: "no_journal",
            message: format!(
                "{} holds no pg-migrate journal: there is nothing to resume or revert",
                new.display()
            ),
            remedy: "check -D; an upgrade that never started needs no recovery".into(),
        })?;
    let plan = view.plan().cloned().unwrap_or_default();
    let path = |v: &serde_json::Value| v.as_str().map(std::path::PathBuf::from);
    if options.old_bindir.is_none() {
        options.old_bindir = path(&plan["old"]["bindir"]);
    }
    if options.new_bindir.is_none() {
        options.new_bindir = path(&plan["new"]["bindir"]);
    }
    if options.old_datadir.is_none() {
        options.old_datadir = path(&plan["old"]["datadir"]);
    }
    if options.username.is_none() {
        options.username = plan["user"].as_str().map(str::to_string);
    }
    if plan["method"] == "dump" {
        options.method = crate::cli::Method::Dump;
    }
    // -j as the upgrade was given it, unless given now.
    if options.jobs == 1 {
        if let Some(jobs) = plan["jobs"].as_u64().and_then(|j| u16::try_from(j).ok()) {
            options.jobs = jobs.max(1);
        }
    }
    if resume {
        // A resumed upgrade still does what the interrupted one was asked
        // to: a resume that starts over makes the backup again, and the
        // steps after the upgrade follow it.
        if options.backup_dir.is_none() {
            options.backup_dir = path(&plan["backup_dir"]);
        }
        if options.log_dir.is_none() {
            options.log_dir = path(&plan["log_dir"]);
        }
        let after = &plan["after"];
        let asked = |key: &str| after[key].as_bool().unwrap_or(false);
        options.carry_config |= asked("carry_config");
        options.update_extensions |= asked("update_extensions");
        options.reindex_collation |= asked("reindex_collation");
        options.analyze |= asked("analyze");
        if options.post_upgrade.is_none() {
            options.post_upgrade = path(&after["post_upgrade"]);
        }
        if let Ok(verify) = serde_json::from_value::<crate::cli::Verify>(after["verify"].clone()) {
            options.verify = options.verify.or(Some(verify.mode));
            options.verify_sample_above = options.verify_sample_above.or(Some(verify.sample_above));
        }
    }
    let mode = plan["mode"].as_str().unwrap_or("copy");
    let asked = options.mode();
    let any_mode =
        options.link || options.copy || options.clone || options.copy_file_range || options.swap;
    if any_mode
        && serde_json::to_value(asked)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .as_deref()
            != Some(mode)
    {
        return Err(Refusal {
            code: "usage",
            message: format!(
                "the interrupted upgrade used --{mode}; it cannot continue in another mode"
            ),
            remedy: format!("drop the mode flag, or pass --{mode}"),
        });
    }
    options.link = mode == "link";
    options.copy = mode == "copy";
    options.clone = mode == "clone";
    options.copy_file_range = mode == "copy-file-range";
    options.swap = mode == "swap";
    Ok(view)
}

/// Stops servers an interrupted pg-migrate left running (those listening in
/// one of its run directories). A server someone else runs is a refusal,
/// but on the old cluster of an online upgrade (prepare, discard), which
/// serves on as it should.
pub fn stop_leftover_servers(
    settings: &Settings,
    view: Option<&JournalView>,
) -> Result<(), Refusal> {
    let ours = view.map(|v| v.run_dirs()).unwrap_or_default();
    let online = view.is_some_and(|v| v.is_online()) && !view.is_some_and(|v| v.in_cutover());
    for (datadir, bindir) in [
        (&settings.old_datadir, &settings.old_bindir),
        (&settings.new_datadir, &settings.new_bindir),
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
                if view.is_none() || (online && datadir == &settings.old_datadir) {
                    // Not ours: the checks will report it (or, prepared,
                    // the old server serves).
                    continue;
                }
                return Err(Refusal {
                    code: "server_running",
                    message: format!(
                        "a server that pg-migrate did not start runs on {} (pid {})",
                        datadir.display(),
                        pid.pid
                    ),
                    remedy: format!(
                        "stop it first: {} -D {} stop",
                        bindir.join("pg_ctl").display(),
                        datadir.display()
                    ),
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

/// `PG_<major>_<catversion>` of the new cluster (for its tablespace directories).
pub fn new_tablespace_dir(settings: &Settings) -> Option<String> {
    // The saved copy first: the new cluster may be half-reset.
    let new = &settings.new_datadir;
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
pub fn reset_new_cluster(settings: &Settings) -> Result<(), Refusal> {
    let refusal = |e: String| Refusal {
        code: "reset_failed",
        message: format!("could not return the new cluster to its state before the upgrade: {e}"),
        remedy: format!(
            "remove {} and re-create it with initdb, then run the upgrade again",
            settings.new_datadir.display()
        ),
    };
    let version_dir = new_tablespace_dir(settings)
        .ok_or_else(|| refusal("its pg_control cannot be read".into()))?;
    journal::restore_pristine(&settings.new_datadir, &version_dir)
        .map_err(|e| refusal(e.to_string()))?;
    let mut journal = Journal::open(&settings.new_datadir).map_err(|e| refusal(e.to_string()))?;
    journal
        .record("reset", json!({}))
        .map_err(|e| refusal(e.to_string()))?;
    Ok(())
}

/// What `revert` did, for the summary.
pub struct Reverted {
    pub renamed_control_back: bool,
}

/// Returns the old cluster to a startable state identical to before the
/// upgrade and the new one to its pristine state, unless the new cluster has
/// run since the upgrade finished.
pub fn revert(settings: &Settings, view: &JournalView) -> Result<Reverted, Refusal> {
    let new = &settings.new_datadir;
    if journal::read_state(new) == Some(State::Reverted) {
        return Err(Refusal {
            code: "already_reverted",
            message: format!("the upgrade into {} was already reverted", new.display()),
            remedy: "the old cluster can be started as before".into(),
        });
    }
    if journal::read_state(new) == Some(State::Complete) {
        let recorded = view.completed_checkpoint();
        let now = ControlFile::read(new).ok().map(|c| c.checkpoint_lsn);
        if recorded.is_none() || recorded != now || new.join("postmaster.pid").exists() {
            return Err(Refusal {
                code: "new_cluster_has_run",
                message: "the new cluster has been started since the upgrade finished: it may hold changes, and in link mode it has written to files it shares with the old cluster".into(),
                remedy: "revert is no longer safe; keep the new cluster, or restore the old one from a backup".into(),
            });
        }
    }
    if settings.mode == crate::cli::Mode::Swap {
        // The old cluster's directories come home before anything else
        // touches the new cluster (its reset would delete them).
        if let Some(moves) = crate::upgrade::saved_moves(new) {
            let dirs = pgm_transfer::swap_dirs(&moves).map_err(|file| Refusal {
                code: "revert_failed",
                message: format!(
                    "the saved transfer plan cannot be swapped back ({})",
                    file.display()
                ),
                remedy: "restore the old cluster from a backup".into(),
            })?;
            pgm_transfer::unswap(&dirs, &journal::dir(new).join("swap")).map_err(|e| Refusal {
                code: "revert_failed",
                message: format!("could not move the old cluster's directories back: {e}"),
                remedy: "run pg-migrate revert again; if it fails again, move the directories named above back by hand".into(),
            })?;
        }
    }
    let control = settings.old_datadir.join("global/pg_control");
    let renamed = settings.old_datadir.join("global/pg_control.old");
    let mut renamed_back = false;
    if !control.exists() && renamed.exists() {
        std::fs::rename(&renamed, &control).map_err(|e| Refusal {
            code: "revert_failed",
            message: format!("could not rename {} back: {e}", renamed.display()),
            remedy: format!(
                "rename it by hand: mv {} {}",
                renamed.display(),
                control.display()
            ),
        })?;
        renamed_back = true;
    }
    if journal::has_pristine(new) {
        reset_new_cluster(settings)?;
    }
    let mut journal = Journal::open(new).map_err(|e| Refusal {
        code: "journal_failed",
        message: e.to_string(),
        remedy: "check the new data directory's permissions".into(),
    })?;
    let _ = journal.record("reverted", json!({ "renamed_control_back": renamed_back }));
    let _ = journal::write_state(new, State::Reverted);
    Ok(Reverted {
        renamed_control_back: renamed_back,
    })
}
