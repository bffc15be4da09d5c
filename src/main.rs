//! pg-migrate: upgrade a PostgreSQL cluster to a new major version in place.
//! This binary is the CLI and the orchestrator; the work lives in crates/.

mod after;
mod backup;
mod check;
mod cli;
mod config;
mod exit;
mod journal;
mod recovery;
mod report;
mod rundir;
mod upgrade;
mod verify;

use std::time::Instant;

use clap::Parser;

use crate::cli::{Action, Cli, Command, Settings};
use crate::report::{ClusterStates, Event, Printer};
use crate::rundir::RunDir;

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let started = Instant::now();
    // Everything pg-migrate writes (journal, logs, dumps, scripts) is private.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let wants_json = std::env::args_os().any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return exit::SUCCESS;
        }
        Err(e) => {
            if !wants_json {
                let _ = e.print();
                return exit::USAGE;
            }
            let message = e.kind().to_string();
            let detail = e.to_string();
            let first = detail
                .lines()
                .next()
                .unwrap_or(&message)
                .trim_start_matches("error: ")
                .to_string();
            let printer = Printer::new(true);
            return fail_early(
                &printer,
                started,
                "pg-migrate",
                "usage",
                first,
                "run pg-migrate --help for the options",
                exit::USAGE,
            );
        }
    };
    let (mut options, action) = match cli.command {
        Some(Command::Check(options)) => (options, Action::Check),
        Some(Command::Resume(options)) => (options, Action::Resume),
        Some(Command::Revert(options)) => (options, Action::Revert),
        Some(Command::Backup(options)) => (options, Action::Backup),
        Some(Command::Restore(options)) => (options, Action::Restore),
        Some(Command::PostUpgrade(options)) => (options, Action::PostUpgrade),
        Some(Command::Prepare(options)) => (options, Action::Prepare),
        Some(Command::Cutover(options)) => (options, Action::Cutover),
        Some(Command::Discard(options)) => (options, Action::Discard),
        Some(Command::Verify(options)) => (options, Action::Verify),
        None if cli.options.check => (cli.options, Action::Check),
        None => (cli.options, Action::Upgrade),
    };
    let printer = Printer::new(options.json);
    let name = action.name();
    if nix::unistd::geteuid().is_root() {
        return fail_early(
            &printer,
            started,
            name,
            "running_as_root",
            "pg-migrate cannot be run as root".into(),
            "run it as the operating-system user that owns the clusters, e.g. sudo -u postgres pg-migrate …",
            exit::USAGE,
        );
    }
    let journal = if matches!(
        action,
        Action::Resume
            | Action::Revert
            | Action::PostUpgrade
            | Action::Cutover
            | Action::Discard
            | Action::Verify
    ) {
        match recovery::fill_from_journal(
            &mut options,
            matches!(action, Action::Resume | Action::Cutover),
        ) {
            Ok(view) => Some(view),
            Err(r) if r.code == "no_journal" => {
                return no_journal(&printer, started, name, &options, r)
            }
            Err(r) => return refuse(&printer, started, name, r, exit::USAGE),
        }
    } else {
        None
    };
    let settings = match options.resolve(action) {
        Ok(settings) => settings,
        Err(e) => {
            return fail_early(
                &printer,
                started,
                name,
                "usage",
                e.message,
                &e.remedy,
                exit::USAGE,
            )
        }
    };
    if settings.verbose {
        let verbose_printer = Printer::new(false);
        pgm_cluster::command::set_observer(move |record| {
            verbose_printer.say(&format!(
                "$ {}   ({} ms{})",
                record.command_line,
                record.duration.as_millis(),
                if record.success { "" } else { ", failed" }
            ));
        });
    }
    let _lock = match recovery::lock(&settings) {
        Ok(lock) => lock,
        Err(r) => return refuse(&printer, started, name, r, exit::USAGE),
    };
    install_signal_handlers(settings.json, started, name);
    match (action, journal) {
        (Action::Revert, Some(view)) => run_revert(&settings, &printer, started, &view, "revert"),
        (Action::Discard, Some(view)) => {
            if !view.is_online() {
                return fail_early(
                    &printer,
                    started,
                    "discard",
                    "usage",
                    format!(
                        "{} holds no prepared upgrade",
                        settings.new_datadir.display()
                    ),
                    "to undo an upgrade made in one go, use pg-migrate revert",
                    exit::USAGE,
                );
            }
            run_revert(&settings, &printer, started, &view, "discard")
        }
        (Action::Cutover, Some(view)) => run_cutover(&settings, &printer, started, &view),
        (Action::Prepare, _) => run_prepare(&settings, &printer, started),
        (Action::Resume, Some(view)) => run_resume(&settings, &printer, started, &view),
        (Action::PostUpgrade | Action::Verify, Some(view)) => {
            after::run_post_upgrade(&settings, &printer, started, &view, name)
        }
        (Action::Backup, _) => backup::run_backup(&settings, &printer, started),
        (Action::Restore, _) => backup::run_restore(&settings, &printer, started),
        _ => {
            if let Err(r) = recovery::refuse_unfinished(&settings) {
                return refuse(&printer, started, name, r, exit::USAGE);
            }
            if action == Action::Upgrade {
                if let Some(dir) = &settings.backup_dir {
                    if let Some(r) = backup::refuse_backup_dir(
                        dir,
                        &[&settings.old_datadir, &settings.new_datadir],
                    ) {
                        return fail_with(&printer, started, name, r, exit::USAGE);
                    }
                }
                recovery::archive_reverted_journal(&settings.new_datadir);
            }
            // A pg-migrate killed during its checks may have left a server of
            // its own running; with the lock held, it can be stopped.
            let _ = recovery::stop_leftover_servers(&settings, None);
            run_command(&settings, &printer, started, false, upgrade::Phase::Full)
        }
    }
}

/// `resume`, `revert` (and the other commands that continue a journal)
/// where there is none: no upgrade began in `-D`, but a pg-migrate killed
/// during its checks may have left its servers running; they are stopped,
/// and the report says so.
fn no_journal(
    printer: &Printer,
    started: Instant,
    name: &'static str,
    options: &cli::Options,
    mut r: recovery::Refusal,
) -> i32 {
    let base = options.socketdir.clone().unwrap_or_else(std::env::temp_dir);
    let datadirs: Vec<&std::path::Path> = [&options.new_datadir, &options.old_datadir]
        .into_iter()
        .flatten()
        .map(|p| p.as_path())
        .collect();
    let (stopped, failed) = recovery::stop_abandoned_servers(&base, &datadirs);
    let is_new = |p: &std::path::PathBuf| {
        options
            .new_datadir
            .as_ref()
            .and_then(|n| std::fs::canonicalize(n).ok())
            .is_some_and(|n| std::fs::canonicalize(p).is_ok_and(|p| p == n))
    };
    let state = |stopped_one: bool| {
        if stopped_one {
            "started_and_stopped"
        } else {
            "unchanged"
        }
    };
    r.clusters = Some(ClusterStates {
        old: state(stopped.iter().any(|p| !is_new(p))),
        new: state(stopped.iter().any(is_new)),
    });
    if !stopped.is_empty() {
        r.message.push_str(&format!(
            "; an interrupted pg-migrate had left its servers running, now stopped cleanly: {}",
            stopped
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !failed.is_empty() {
        r.message.push_str(&format!(
            "; servers an interrupted pg-migrate left running could not be stopped: {}",
            failed.join("; ")
        ));
        r.remedy =
            "stop those servers (pg_ctl -D DIR stop -m fast), then run the upgrade again".into();
    }
    refuse(printer, started, name, r, exit::USAGE)
}

/// `pg-migrate prepare`: the first half of the online mode. A prepare
/// that did not finish is started over (the new cluster back as initdb
/// made it); a finished one waits for its cutover or discard.
fn run_prepare(settings: &Settings, printer: &Printer, started: Instant) -> i32 {
    let name = "prepare";
    let new = &settings.new_datadir;
    let refuse_with = |code: &'static str, message: String, remedy: String| {
        fail_early(printer, started, name, code, message, &remedy, exit::USAGE)
    };
    let quoted = upgrade::quote(new);
    let mut resuming = false;
    match journal::read_state(new) {
        Some(journal::State::Prepared) => {
            return refuse_with(
                "already_prepared",
                format!("{} already holds a prepared upgrade", new.display()),
                format!("finish it: pg-migrate cutover -D {quoted}; or throw it away: pg-migrate discard -D {quoted}"),
            )
        }
        Some(journal::State::Upgrading) | Some(journal::State::Failed) => {
            let view = journal::JournalView::read(new);
            let restartable = view
                .as_ref()
                .is_some_and(|v| v.is_online() && !v.in_cutover());
            if !restartable {
                return refuse_with(
                    "unfinished_upgrade",
                    format!("{} holds an upgrade that did not finish", new.display()),
                    upgrade::recovery_commands(new),
                );
            }
            if let Err(r) = recovery::stop_leftover_servers(settings, view.as_ref()) {
                return refuse(printer, started, name, r, exit::FAILED_OLD_INTACT);
            }
            if let Err(r) = recovery::reset_new_cluster(settings) {
                return refuse(printer, started, name, r, exit::FAILED_OLD_INTACT);
            }
            resuming = true;
        }
        Some(journal::State::Complete) => {
            return refuse_with(
                "already_upgraded",
                format!("{} is already the result of a finished upgrade", new.display()),
                "start it; to upgrade again, give -D a new directory".into(),
            )
        }
        Some(journal::State::Reverted) => recovery::archive_reverted_journal(new),
        None => {}
    }
    if let Some(dir) = &settings.backup_dir {
        if let Some(r) = backup::refuse_backup_dir(dir, &[&settings.old_datadir, new]) {
            return fail_with(printer, started, name, r, exit::USAGE);
        }
    }
    run_command(
        settings,
        printer,
        started,
        resuming,
        upgrade::Phase::Prepare,
    )
}

/// `pg-migrate cutover`: the second half, in the window.
fn run_cutover(
    settings: &Settings,
    printer: &Printer,
    started: Instant,
    view: &journal::JournalView,
) -> i32 {
    let name = "cutover";
    let new = &settings.new_datadir;
    let quoted = upgrade::quote(new);
    let refuse_with = |code: &'static str, message: String, remedy: String| {
        fail_early(printer, started, name, code, message, &remedy, exit::USAGE)
    };
    if !view.is_online() {
        return refuse_with(
            "usage",
            format!("{} holds no prepared upgrade", new.display()),
            format!("an upgrade made in one go is finished with: pg-migrate resume -D {quoted}"),
        );
    }
    match journal::read_state(new) {
        Some(journal::State::Prepared) => {}
        Some(journal::State::Upgrading) | Some(journal::State::Failed) if view.in_cutover() => {}
        Some(journal::State::Upgrading) | Some(journal::State::Failed) => {
            return refuse_with(
                "unfinished_upgrade",
                format!("the prepare into {} did not finish", new.display()),
                format!(
                "run pg-migrate prepare again (it starts over), or: pg-migrate discard -D {quoted}"
            ),
            )
        }
        Some(journal::State::Complete) => {
            return refuse_with(
                "already_upgraded",
                format!("the upgrade into {} already finished", new.display()),
                "start the new cluster".into(),
            )
        }
        Some(journal::State::Reverted) | None => {
            return refuse_with(
                "already_reverted",
                format!("the upgrade into {} was discarded", new.display()),
                "prepare again".into(),
            )
        }
    }
    // The old server: stopped cleanly by its owner, or by us when asked.
    let old_global = settings.old_datadir.join("global");
    let protected =
        !old_global.join("pg_control").exists() && old_global.join("pg_control.old").exists();
    if !protected {
        match pgm_cluster::DataDir::open(&settings.old_datadir, None).map(|d| d.server_status()) {
            Ok(Ok(pgm_cluster::ServerStatus::Running(pid))) => {
                if !settings.stop_old {
                    return fail_early(
                        printer,
                        started,
                        name,
                        "server_running",
                        format!("the old server is running (pid {})", pid.pid),
                        &format!(
                            "stop it cleanly ({} -D {} stop -m fast), or let pg-migrate do it: add --stop-old",
                            settings.old_bindir.join("pg_ctl").display(),
                            upgrade::quote(&settings.old_datadir)
                        ),
                        exit::USAGE,
                    );
                }
                if let Err(failure) = upgrade::stop_old_server(&settings.old_datadir) {
                    return fail_with(printer, started, name, failure, exit::FAILED_OLD_INTACT);
                }
            }
            Ok(Ok(pgm_cluster::ServerStatus::StalePidFile(_))) => return refuse_with(
                "server_running",
                "the old server crashed or was killed (a stale postmaster.pid)".into(),
                "start it once so that it recovers and stop it cleanly, then run the cutover again"
                    .into(),
            ),
            _ => {}
        }
        let clean = pgm_cluster::ControlFile::read(&settings.old_datadir)
            .map(|c| c.state == pgm_cluster::ClusterState::ShutDown)
            .unwrap_or(false);
        if !clean {
            return refuse_with(
                "usage",
                format!(
                    "the old cluster {} was not shut down cleanly",
                    settings.old_datadir.display()
                ),
                "start it once so that it recovers and stop it cleanly (pg_ctl stop -m fast), then run the cutover again".into(),
            );
        }
    }
    if let Err(r) = recovery::stop_leftover_servers(settings, Some(view)) {
        return refuse(printer, started, name, r, exit::FAILED_OLD_INTACT);
    }
    run_from_journal(settings, printer, started, name, view, FromJournal::Cutover)
}

/// What a run continues from a journal.
#[derive(Clone, Copy)]
enum FromJournal {
    /// The cutover of a prepared upgrade.
    Cutover,
    /// An upgrade resumed after its relations were matched.
    LateResume,
}

/// A run that continues what a journal records: the plan (from the
/// settings the journal filled in), the engine, its summary.
fn run_from_journal(
    settings: &Settings,
    printer: &Printer,
    started: Instant,
    name: &'static str,
    view: &journal::JournalView,
    what: FromJournal,
) -> i32 {
    let run_dir = match make_run_dir(settings, printer, started, name) {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    printer.emit(&Event::Plan {
        command: name,
        mode: settings.mode,
        old: report::PlanSide::new(
            &settings.old_bindir,
            &settings.old_datadir,
            settings.old_port,
        ),
        new: report::PlanSide::new(
            &settings.new_bindir,
            &settings.new_datadir,
            settings.new_port,
        ),
        user: settings.user.clone(),
        jobs: settings.jobs,
        run_dir: run_dir.path().display().to_string(),
        live_check_allowed: false,
        backup_dir: None,
        note: None,
    });
    let config = check::config(settings, &run_dir);
    let engine = match what {
        FromJournal::Cutover => {
            upgrade::Engine::for_cutover(settings, printer, &run_dir, config, view)
        }
        FromJournal::LateResume => {
            upgrade::Engine::resume_late(settings, printer, &run_dir, config, view)
        }
    };
    let mut summary = Summary::new(name, exit::SUCCESS);
    finish_upgrade(settings, printer, &run_dir, engine, &mut summary);
    summarize(settings, printer, started, run_dir, summary)
}

pub(crate) fn make_run_dir(
    settings: &Settings,
    printer: &Printer,
    started: Instant,
    name: &'static str,
) -> Result<RunDir, i32> {
    RunDir::create(
        &settings.socket_base,
        settings.log_dir.as_deref(),
        (&settings.old_datadir, &settings.new_datadir),
    )
    .map_err(|e| {
        let (message, remedy) = match &settings.log_dir {
            Some(dir) => (
                format!(
                    "cannot make a private directory in {} or a log directory in {}: {e}",
                    settings.socket_base.display(),
                    dir.display()
                ),
                "pass writable directories with -s/--socketdir and --log-dir",
            ),
            None => (
                format!(
                    "cannot make a private directory in {}: {e}",
                    settings.socket_base.display()
                ),
                "pass a writable directory with -s/--socketdir",
            ),
        };
        fail_early(
            printer,
            started,
            name,
            "run_dir_failed",
            message,
            remedy,
            exit::USAGE,
        )
    })
}

/// `check`, or the upgrade (checks first); `resuming` continues a journal.
fn run_command(
    settings: &Settings,
    printer: &Printer,
    started: Instant,
    resuming: bool,
    phase: upgrade::Phase,
) -> i32 {
    let name = if settings.check_only {
        "check"
    } else if phase == upgrade::Phase::Prepare {
        "prepare"
    } else if resuming {
        "resume"
    } else {
        "upgrade"
    };
    let run_dir = match make_run_dir(settings, printer, started, name) {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    let outcome = check::run_checks(settings, printer, &run_dir);
    let versions = (
        outcome
            .report
            .old
            .install
            .as_ref()
            .map(|i| i.version.text.clone()),
        outcome
            .report
            .new
            .install
            .as_ref()
            .map(|i| i.version.text.clone()),
    );
    let mut summary = Summary {
        checks: Some(check::counts(&outcome.report)),
        versions,
        ..Summary::new(name, outcome.exit_code)
    };
    if summary.exit_code == exit::SUCCESS && settings.check_only {
        if outcome.report.live_old {
            summary
                .next_steps
                .push("stop the old server before upgrading".to_string());
        }
        summary.next_steps.push(format!(
            "run the same command without `check`{} to upgrade",
            mode_flag(settings.mode)
        ));
    } else if summary.exit_code == exit::SUCCESS {
        summary.checks = None;
        let engine =
            upgrade::Engine::new(settings, printer, &run_dir, outcome.config, outcome.report);
        finish_upgrade(
            settings,
            printer,
            &run_dir,
            engine.map(|e| e.resuming(resuming).with_phase(phase)),
            &mut summary,
        );
    }
    summarize(settings, printer, started, run_dir, summary)
}

/// Runs an engine and fills the summary from its outcome.
fn finish_upgrade(
    settings: &Settings,
    printer: &Printer,
    run_dir: &RunDir,
    engine: Result<upgrade::Engine<'_>, upgrade::Failure>,
    summary: &mut Summary,
) {
    let mut engine = match engine {
        Ok(engine) => engine,
        Err(failure) => {
            printer.emit(&Event::Error {
                code: failure.code,
                message: failure.message,
                remedy: failure.remedy,
                causes: Vec::new(),
                clusters: ClusterStates {
                    old: "started_and_stopped",
                    new: "unchanged",
                },
            });
            summary.exit_code = exit::FAILED_OLD_INTACT;
            return;
        }
    };
    match engine.run() {
        Ok(finished) => {
            let mut next_steps = finished.next_steps;
            summary.logs = finished.logs.map(|p| p.display().to_string());
            summary.upgrade = Some(report::UpgradeCounts {
                mode: settings.mode,
                method: settings.method,
                databases: finished.databases,
                relations: finished.relations,
                files: finished.files,
                files_copied_ahead: finished.files_copied_ahead,
                bytes: finished.bytes,
                scripts: finished
                    .scripts
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            });
            summary.backup = finished.backup;
            if settings.after.any() {
                let upgraded = after::Upgraded {
                    new_install: engine.new_install(),
                    new_dir: engine.new_datadir(),
                    old_config_dir: Some(engine.old_config_dir()),
                    old_datadir: Some(settings.old_datadir.clone()),
                    old_version: Some(engine.old_version()),
                    reindex_script: finished.reindex_script.clone(),
                };
                let (steps, failure) = after::run_steps(settings, printer, run_dir, &upgraded);
                // What a step did is no longer left to do; once the new
                // cluster ran, there is no going back to the old one.
                let ran = steps
                    .iter()
                    .any(|s| s.step != "carry-config" && s.status != "not_run");
                next_steps.retain(|n| match n.done_by {
                    Some(upgrade::NEW_CLUSTER_RAN) => !ran,
                    Some(step) => !steps.iter().any(|s| s.step == step && s.status == "ok"),
                    None => true,
                });
                summary.after = Some(steps);
                if let Some(failure) = failure {
                    printer.emit(&Event::Error {
                        code: failure.code,
                        message: failure.message,
                        remedy: failure.remedy,
                        causes: Vec::new(),
                        clusters: ClusterStates {
                            old: engine.old_state(),
                            new: "upgraded",
                        },
                    });
                    summary.exit_code = after::failure_exit_code(failure.code);
                    summary.result = Some(after::result_of(summary.exit_code));
                }
            }
            summary.next_steps = next_steps.into_iter().map(|n| n.text).collect();
        }
        Err(failed) => {
            printer.emit(&Event::Error {
                code: failed.failure.code,
                message: failed.failure.message,
                remedy: failed.failure.remedy,
                causes: Vec::new(),
                clusters: failed.clusters,
            });
            summary.exit_code = failed.exit_code;
            summary.logs = failed.logs.map(|p| p.display().to_string());
        }
    }
}

/// `pg-migrate resume`: finishes an interrupted upgrade. Once the relation
/// map was saved, the remaining steps continue where they stopped; before
/// that, the new cluster returns to its pristine state and the upgrade runs
/// again from its checks.
fn run_resume(
    settings: &Settings,
    printer: &Printer,
    started: Instant,
    view: &journal::JournalView,
) -> i32 {
    let name = "resume";
    if let Err(r) = recovery::stop_leftover_servers(settings, Some(view)) {
        return refuse(printer, started, name, r, exit::FAILED_OLD_INTACT);
    }
    match journal::read_state(&settings.new_datadir) {
        Some(journal::State::Complete) => {
            return fail_early(
                printer,
                started,
                name,
                "already_upgraded",
                format!(
                    "the upgrade into {} already finished",
                    settings.new_datadir.display()
                ),
                "start the new cluster",
                exit::USAGE,
            )
        }
        Some(journal::State::Prepared) => {
            return fail_early(
                printer,
                started,
                name,
                "already_prepared",
                format!(
                    "{} holds a prepared upgrade, finished by its cutover",
                    settings.new_datadir.display()
                ),
                &format!(
                    "pg-migrate cutover -D {}",
                    upgrade::quote(&settings.new_datadir)
                ),
                exit::USAGE,
            )
        }
        Some(journal::State::Reverted) => {
            return fail_early(
                printer,
                started,
                name,
                "already_reverted",
                format!(
                    "the upgrade into {} was reverted",
                    settings.new_datadir.display()
                ),
                "run the upgrade again to start afresh",
                exit::USAGE,
            )
        }
        _ => {}
    }
    if view.revert_started() {
        return fail_early(
            printer,
            started,
            name,
            "unfinished_revert",
            format!(
                "a revert of the upgrade into {} began and did not finish",
                settings.new_datadir.display()
            ),
            &format!(
                "finish it: pg-migrate revert -D {} (every part of it can be repeated)",
                upgrade::quote(&settings.new_datadir)
            ),
            exit::FAILED_NEEDS_RECOVERY,
        );
    }
    let done = view.done_steps();
    if done.contains("match-relations") {
        if let Err(r) = recovery::refuse_late_resume(settings, view) {
            return refuse(printer, started, name, r, exit::FAILED_OLD_INTACT);
        }
        return run_from_journal(
            settings,
            printer,
            started,
            name,
            view,
            FromJournal::LateResume,
        );
    }
    if let Err(r) = recovery::reset_new_cluster(settings) {
        return refuse(printer, started, name, r, exit::FAILED_OLD_INTACT);
    }
    run_command(settings, printer, started, true, upgrade::Phase::Full)
}

/// `pg-migrate revert`: the old cluster as before the upgrade, the new one as
/// initdb made it.
fn run_revert(
    settings: &Settings,
    printer: &Printer,
    started: Instant,
    view: &journal::JournalView,
    name: &'static str,
) -> i32 {
    if let Err(r) = recovery::stop_leftover_servers(settings, Some(view)) {
        return refuse(printer, started, name, r, exit::FAILED_OLD_INTACT);
    }
    match recovery::revert(settings, view) {
        Ok(reverted) => {
            let mut next_steps = Vec::new();
            if reverted.renamed_control_back {
                next_steps.push(format!(
                    "the old cluster's global/pg_control is back in place; start it as before: {} -D {} start",
                    settings.old_bindir.join("pg_ctl").display(),
                    settings.old_datadir.display()
                ));
            } else {
                next_steps.push(format!(
                    "the old cluster was never disabled; start it as before: {} -D {} start",
                    settings.old_bindir.join("pg_ctl").display(),
                    settings.old_datadir.display()
                ));
            }
            next_steps.push(format!(
                "the new cluster {} is back as initdb made it; run the upgrade again when ready, or remove it",
                settings.new_datadir.display()
            ));
            printer.emit(&Event::Summary {
                command: name,
                result: "reverted",
                exit_code: exit::SUCCESS,
                duration_ms: started.elapsed().as_millis() as u64,
                checks: None,
                old_version: None,
                new_version: None,
                upgrade: None,
                backup: None,
                restore: None,
                after: None,
                logs: None,
                next_steps,
            });
            exit::SUCCESS
        }
        Err(r) => {
            // Refusals that change nothing are usage-class; the others leave
            // an upgrade that still needs resolving.
            let code = match r.code {
                "already_reverted" => exit::USAGE,
                "reset_failed" => exit::FAILED_OLD_INTACT,
                _ => exit::FAILED_NEEDS_RECOVERY,
            };
            refuse(printer, started, name, r, code)
        }
    }
}

fn mode_flag(mode: cli::Mode) -> &'static str {
    match mode {
        cli::Mode::Link => " --link",
        cli::Mode::Clone => " --clone",
        cli::Mode::CopyFileRange => " --copy-file-range",
        cli::Mode::Swap => " --swap",
        cli::Mode::Copy => "",
    }
}

/// What the final summary event reports.
struct Summary {
    command: &'static str,
    exit_code: i32,
    checks: Option<report::CheckCounts>,
    versions: (Option<String>, Option<String>),
    next_steps: Vec<String>,
    upgrade: Option<report::UpgradeCounts>,
    backup: Option<report::BackupCounts>,
    after: Option<Vec<report::AfterStep>>,
    logs: Option<String>,
    result: Option<&'static str>,
}

impl Summary {
    fn new(command: &'static str, exit_code: i32) -> Summary {
        Summary {
            command,
            exit_code,
            checks: None,
            versions: (None, None),
            next_steps: Vec::new(),
            upgrade: None,
            backup: None,
            after: None,
            logs: None,
            result: None,
        }
    }
}

fn summarize(
    settings: &Settings,
    printer: &Printer,
    started: Instant,
    run_dir: RunDir,
    summary: Summary,
) -> i32 {
    let kept = run_dir.kept_logs(settings.retain, summary.exit_code != exit::SUCCESS);
    // Logs the user named (--log-dir) are where the summary points.
    let logs = if settings.log_dir.is_some() {
        kept
    } else {
        summary.logs.or(kept)
    };
    printer.emit(&Event::Summary {
        command: summary.command,
        result: summary.result.unwrap_or(match summary.exit_code {
            exit::SUCCESS => "ok",
            exit::CHECKS_FAILED => "checks_failed",
            _ => "error",
        }),
        exit_code: summary.exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        checks: summary.checks,
        old_version: summary.versions.0,
        new_version: summary.versions.1,
        upgrade: summary.upgrade,
        backup: summary.backup,
        restore: None,
        after: summary.after,
        logs,
        next_steps: summary.next_steps,
    });
    summary.exit_code
}

/// Reports a refusal (nothing was done) and the summary.
fn refuse(
    printer: &Printer,
    started: Instant,
    command: &'static str,
    r: recovery::Refusal,
    exit_code: i32,
) -> i32 {
    let clusters = r.clusters.unwrap_or(ClusterStates {
        old: "unchanged",
        new: "unchanged",
    });
    fail_leaving(
        printer, started, command, r.code, r.message, &r.remedy, exit_code, clusters,
    )
}

/// `fail_early` for a failure the engine's helpers returned.
fn fail_with(
    printer: &Printer,
    started: Instant,
    command: &'static str,
    failure: upgrade::Failure,
    exit_code: i32,
) -> i32 {
    fail_early(
        printer,
        started,
        command,
        failure.code,
        failure.message,
        &failure.remedy.unwrap_or_default(),
        exit_code,
    )
}

/// Reports an error found before any cluster was changed, and the summary.
pub(crate) fn fail_early(
    printer: &Printer,
    started: Instant,
    command: &'static str,
    code: &'static str,
    message: String,
    remedy: &str,
    exit_code: i32,
) -> i32 {
    let unchanged = ClusterStates {
        old: "unchanged",
        new: "unchanged",
    };
    fail_leaving(
        printer, started, command, code, message, remedy, exit_code, unchanged,
    )
}

/// Reports an error that leaves the clusters as `clusters` says, and the summary.
#[allow(clippy::too_many_arguments)]
fn fail_leaving(
    printer: &Printer,
    started: Instant,
    command: &'static str,
    code: &'static str,
    message: String,
    remedy: &str,
    exit_code: i32,
    clusters: ClusterStates,
) -> i32 {
    printer.emit(&Event::Error {
        code,
        message,
        remedy: Some(remedy.to_string()),
        causes: Vec::new(),
        clusters,
    });
    printer.emit(&Event::Summary {
        command,
        result: "error",
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        checks: None,
        old_version: None,
        new_version: None,
        upgrade: None,
        backup: None,
        restore: None,
        after: None,
        logs: None,
        next_steps: Vec::new(),
    });
    exit_code
}

/// On SIGINT/SIGTERM: stop every server we started, record the interruption
/// in the journal, say in what state each cluster is and what to run next,
/// and exit.
fn install_signal_handlers(json: bool, started: Instant, command: &'static str) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let name = if signal == SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            report::REPORTS_INTERRUPTION.with(|r| r.set(true));
            report::INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
            pgm_cluster::server::stop_all();
            let printer = Printer::new(json);
            let status = upgrade::INTERRUPT
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let code = match status {
                Some(status) => {
                    if let Ok(mut journal) = journal::Journal::open(&status.new_datadir) {
                        let _ =
                            journal.record("interrupted", serde_json::json!({ "signal": name }));
                    }
                    let _ = journal::write_state(&status.new_datadir, journal::State::Failed);
                    printer.emit(&Event::Error {
                        code: "interrupted",
                        message: format!(
                            "interrupted by {name}; every server pg-migrate started was stopped"
                        ),
                        remedy: Some(status.resume.clone()),
                        causes: Vec::new(),
                        clusters: status.clusters.clone(),
                    });
                    status.exit_code
                }
                None => {
                    printer.emit(&Event::Error {
                        code: "interrupted",
                        message: format!(
                            "interrupted by {name}; every server pg-migrate started was stopped"
                        ),
                        remedy: Some(
                            "run the command again when ready; nothing was changed".into(),
                        ),
                        causes: Vec::new(),
                        clusters: ClusterStates {
                            old: "unchanged",
                            new: "unchanged",
                        },
                    });
                    exit::FAILED_OLD_INTACT
                }
            };
            printer.emit(&Event::Summary {
                command,
                result: "error",
                exit_code: code,
                duration_ms: started.elapsed().as_millis() as u64,
                checks: None,
                old_version: None,
                new_version: None,
                upgrade: None,
                backup: None,
                restore: None,
                after: None,
                logs: None,
                next_steps: Vec::new(),
            });
            std::process::exit(code);
        }
    });
}
