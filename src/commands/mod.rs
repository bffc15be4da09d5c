//! The commands, one file each (like uv's `commands/`): what each does
//! with the settings, and the reporting they share: the summary, refusals
//! and early failures (every one an `error` event and a `summary`).

use std::time::Instant;

use crate::cli::{self, Action, Settings};
use crate::engine;
use crate::exit;
use crate::failure::{Code, Failure};
use crate::journal;
use crate::logical_backup;
use crate::output::ClusterCondition;
use crate::output::{self, ClusterStates, Event, Printer};
use crate::recovery;
use crate::rundir::RunDir;

mod backup;
mod check;
mod cutover;
mod generate;
mod patroni;
mod post_upgrade;
mod prepare;
mod restore;
mod resume;
mod revert;
mod standby;
mod upgrade;

pub(crate) use self::generate::run_generate;
pub(crate) use self::patroni::{run_patroni, run_patroni_member};
pub(crate) use self::standby::run_standby_kit;
pub(crate) use self::upgrade::{run_command, run_from_journal, FromJournal};

/// PostgreSQL refuses to run as root, and files made as root would be
/// the clusters' owner's no more: every command refuses first.
pub(crate) fn refuse_root(printer: &Printer, started: Instant, name: &'static str) -> Option<i32> {
    nix::unistd::geteuid().is_root().then(|| {
        fail_early(
            printer,
            started,
            name,
            Code::RunningAsRoot,
            "pg-migrate cannot be run as root".into(),
            "run it as the operating-system user that owns the clusters, e.g. sudo -u postgres pg-migrate …",
            exit::USAGE,
        )
    })
}

pub(crate) fn dispatch(action: Action, mut options: cli::Options, started: Instant) -> i32 {
    let printer = Printer::new(options.json);
    let name = action.name();
    if let Some(exit_code) = refuse_root(&printer, started, name) {
        return exit_code;
    }
    // A standby's upgrade keeps its own journal.
    if matches!(action, Action::Resume | Action::Revert) {
        if let Some(new) = options
            .new_datadir
            .as_deref()
            .filter(|d| crate::standby::is_standby(d))
        {
            crate::signals::install(options.json, started, action.name());
            return standby::run_standby_recovery(action == Action::Revert, new, &printer, started);
        }
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
            Err(r) if r.code == Code::NoJournal => {
                return no_journal(&printer, started, name, &options, r)
            }
            Err(r) => return refuse(&printer, started, name, r, exit::USAGE),
        }
    } else {
        None
    };
    // A revert that began must be finished before anything else goes on
    // with the upgrade: its clusters may be half given back.
    if let Some(view) = &journal {
        let reverting = view.revert_started()
            && journal::read_state(view.new_datadir()) != Some(journal::State::Reverted);
        if reverting && action != Action::Revert && action != Action::Discard {
            return fail_leaving(
                &printer,
                started,
                name,
                Code::UnfinishedRevert,
                format!(
                    "a revert of the upgrade into {} began and did not finish",
                    view.new_datadir().display()
                ),
                &format!(
                    "finish it: pg-migrate revert -D {} (every part of it can be repeated)",
                    engine::quote(view.new_datadir())
                ),
                exit::FAILED_NEEDS_RECOVERY,
                ClusterStates {
                    old: ClusterCondition::Protected,
                    new: ClusterCondition::Incomplete,
                },
            );
        }
    }
    let named = (options.old_datadir.is_some(), options.new_datadir.is_some());
    let settings = match options.resolve(action) {
        Ok(settings) => settings,
        Err(mut e) => {
            if e.clusters.is_none() {
                e.clusters = Some(ClusterStates::untouched(named.0, named.1));
            }
            return refuse(&printer, started, name, e, exit::USAGE);
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
    crate::signals::install(settings.json, started, name);
    match (action, journal) {
        (Action::Revert, Some(view)) => {
            revert::run_revert(&settings, &printer, started, &view, "revert")
        }
        (Action::Discard, Some(view)) => {
            if !view.is_online() {
                return fail_early(
                    &printer,
                    started,
                    "discard",
                    Code::Usage,
                    format!(
                        "{} holds no prepared upgrade",
                        settings.new_datadir().display()
                    ),
                    "to undo an upgrade made in one go, use pg-migrate revert",
                    exit::USAGE,
                );
            }
            revert::run_revert(&settings, &printer, started, &view, "discard")
        }
        (Action::Cutover, Some(view)) => cutover::run_cutover(&settings, &printer, started, &view),
        (Action::Prepare, _) => prepare::run_prepare(&settings, &printer, started),
        (Action::Resume, Some(view)) => resume::run_resume(&settings, &printer, started, &view),
        (Action::PostUpgrade | Action::Verify, Some(view)) => {
            self::post_upgrade::run_post_upgrade(&settings, &printer, started, &view, name)
        }
        (Action::Backup, _) => backup::run_backup(&settings, &printer, started),
        (Action::Standby, _) => standby::run_standby(&settings, &printer, started),
        (Action::Restore, _) => restore::run_restore(&settings, &printer, started),
        _ => {
            if let Err(r) = recovery::refuse_unfinished(&settings) {
                return refuse(&printer, started, name, r, exit::USAGE);
            }
            if action == Action::Upgrade {
                if let Some(dir) = &settings.backup_dir {
                    if let Some(r) = logical_backup::refuse_backup_dir(
                        dir,
                        &[settings.old_datadir(), settings.new_datadir()],
                    ) {
                        return fail_with(&printer, started, name, r, exit::USAGE);
                    }
                }
                recovery::archive_reverted_journal(settings.new_datadir());
            }
            // A pg-migrate killed during its checks may have left a server of
            // its own running; with the lock held, it can be stopped.
            let _ = recovery::stop_leftover_servers(&settings, None, false);
            upgrade::run_command(&settings, &printer, started, false, engine::Phase::Full)
        }
    }
}

/// `resume`, `revert` (and the other commands that continue a journal)
/// where there is none: no upgrade began in `-D`, but a pg-migrate killed
/// during its checks may have left its servers running; they are stopped,
/// and the report says so.
pub(crate) fn no_journal(
    printer: &Printer,
    started: Instant,
    name: &'static str,
    options: &cli::Options,
    mut r: Failure,
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
            ClusterCondition::StartedAndStopped
        } else {
            ClusterCondition::Unchanged
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
        r.remedy = Some(
            "stop those servers (pg_ctl -D DIR stop -m fast), then run the upgrade again".into(),
        );
    }
    refuse(printer, started, name, r, exit::USAGE)
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
        (
            settings.old_datadir.as_deref(),
            settings.new_datadir.as_deref(),
        ),
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
            Code::RunDirFailed,
            message,
            remedy,
            exit::USAGE,
        )
    })
}

pub(crate) fn mode_flag(mode: cli::Mode) -> String {
    // Copy is the default: no flag needed.
    match mode {
        cli::Mode::Copy => String::new(),
        mode => format!(" {}", mode.flag()),
    }
}

/// What the final summary event reports.
pub(crate) struct Summary {
    command: &'static str,
    exit_code: i32,
    checks: Option<output::CheckCounts>,
    versions: (Option<String>, Option<String>),
    next_steps: Vec<String>,
    upgrade: Option<output::UpgradeCounts>,
    backup: Option<output::BackupCounts>,
    after: Option<Vec<output::AfterStep>>,
    logs: Option<String>,
    result: Option<output::RunResult>,
    kit: Option<Box<output::KitCounts>>,
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
            kit: None,
        }
    }
}

pub(crate) fn summarize(
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
        result: summary
            .result
            .unwrap_or(output::RunResult::of_exit(summary.exit_code)),
        exit_code: summary.exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        checks: summary.checks,
        old_version: summary.versions.0,
        new_version: summary.versions.1,
        upgrade: summary.upgrade,
        backup: summary.backup,
        restore: None,
        kit: summary.kit,
        standby: None,
        patroni: None,
        after: summary.after,
        logs,
        next_steps: summary.next_steps,
    });
    summary.exit_code
}

/// Reports a refusal (nothing was done) and the summary.
pub(crate) fn refuse(
    printer: &Printer,
    started: Instant,
    command: &'static str,
    r: Failure,
    exit_code: i32,
) -> i32 {
    let clusters = r.clusters.unwrap_or(ClusterStates::unchanged());
    fail_leaving(
        printer,
        started,
        command,
        r.code,
        r.message,
        r.remedy.as_deref().unwrap_or(""),
        exit_code,
        clusters,
    )
}

/// `fail_early` for a failure the engine's helpers returned.
pub(crate) fn fail_with(
    printer: &Printer,
    started: Instant,
    command: &'static str,
    failure: engine::Failure,
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
    code: Code,
    message: String,
    remedy: &str,
    exit_code: i32,
) -> i32 {
    let unchanged = ClusterStates::unchanged();
    fail_leaving(
        printer, started, command, code, message, remedy, exit_code, unchanged,
    )
}

/// Reports an error that leaves the clusters as `clusters` says, and the summary.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fail_leaving(
    printer: &Printer,
    started: Instant,
    command: &'static str,
    code: Code,
    message: String,
    remedy: &str,
    exit_code: i32,
    clusters: ClusterStates,
) -> i32 {
    // A code whose exit status never depends on the run has that one.
    let exit_code = code.fixed_exit_status().unwrap_or(exit_code);
    printer.emit(&Event::Error {
        code,
        message,
        remedy: Some(remedy.to_string()),
        causes: Vec::new(),
        clusters,
        step: None,
        log: None,
    });
    printer.emit(&Event::bare_summary(
        command,
        output::RunResult::Error,
        exit_code,
        started,
        Vec::new(),
    ));
    exit_code
}

/// `pg-migrate patroni` is proven for Patroni clusters of 12 and later
/// only (Patroni needs the old major's pg_controldata, which the only
/// builds of 10 and 11 these tests can get lack): an old 10 or 11 is
/// refused before anything, naming what does work. None: go on.
pub(crate) fn refuse_patroni_before_12(
    printer: &Printer,
    started: Instant,
    command: &'static str,
    old_datadir: &std::path::Path,
) -> Option<i32> {
    let major = std::fs::read_to_string(old_datadir.join("PG_VERSION"))
        .ok()
        .and_then(|text| pgm_cluster::PgMajor::parse_pg_version_file(&text).ok())?;
    if !(10..12).contains(&major.number()) {
        return None;
    }
    Some(fail_early(
        printer,
        started,
        command,
        Code::NotFromThisMajor,
        format!("a Patroni cluster's upgrade is not supported from PostgreSQL {major} (only from 12 on)"),
        "follow Patroni's own documentation for a major upgrade, with pg-migrate upgrade --standby-kit on the leader and pg-migrate standby on each replica (docs/standbys.md) in place of pg_upgrade and rsync",
        exit::USAGE,
    ))
}
