//! `pg-migrate backup`: a logical backup of the old cluster (roles and
//! tablespaces, every database with pg_dump -Fc) into --backup-dir, with a
//! manifest that `restore` verifies; and how both commands end (the error,
//! the summary).

use crate::cli::Settings;
use crate::exit;
use crate::failure::{Code, Failure};
use crate::logical_backup::*;
use crate::output::ClusterCondition;
use crate::output::{BackupCounts, ClusterStates, Event, PlanSide, Printer, StepStatus};
use crate::rundir::RunDir;
use pgm_catalog::backup::{self as catalog};
use pgm_cluster::{DataDir, Installation, Server};
use std::path::Path;
use std::time::Instant;

/// `pg-migrate backup`.
pub fn run_backup(settings: &Settings, printer: &Printer, started: Instant) -> i32 {
    let name = "backup";
    let fail_early = |code: Code, message: String, remedy: &str, status: i32| {
        crate::commands::fail_early(printer, started, name, code, message, remedy, status)
    };
    let dir = settings
        .backup_dir
        .clone()
        .expect("resolve requires --backup-dir for backup");
    let old_install = match Installation::discover(settings.old_bindir()) {
        Ok(install) => install,
        Err(e) => {
            return fail_early(
                Code::Usage,
                format!("the old installation cannot be used: {e}"),
                "pass the old cluster's bin directory with -b",
                exit::USAGE,
            )
        }
    };
    let old_dir = match DataDir::open(settings.old_datadir(), None) {
        Ok(dir) => dir,
        Err(e) => {
            return fail_early(
                Code::Usage,
                format!("the old data directory cannot be used: {e}"),
                "pass the old cluster's data directory with -d",
                exit::USAGE,
            )
        }
    };
    if let Some(refusal) = refuse_backup_dir(&dir, &[&old_dir.path]) {
        return fail_early(
            refusal.code,
            refusal.message,
            &refusal.remedy.unwrap_or_default(),
            exit::USAGE,
        );
    }
    let fallback = if settings.new_bindir_given {
        Installation::discover(&settings.new_bindir).ok()
    } else {
        None
    };
    let Some(tools) = catalog::choose_dump_tools(&old_install, fallback.as_ref()) else {
        return fail_early(
            Code::Usage,
            format!(
                "{} has no pg_dump and pg_dumpall to write the backup with",
                old_install.bindir.display()
            ),
            "pass -B with the bin directory of an installation of the same or a newer major that has them (its pg_restore will be needed to restore the backup)",
            exit::USAGE,
        );
    };
    if old_dir.major != old_install.version.major {
        return fail_early(
            Code::Usage,
            format!(
                "{} is a PostgreSQL {} cluster and {} is PostgreSQL {}",
                old_dir.path.display(),
                old_dir.major,
                old_install.bindir.display(),
                old_install.version.major
            ),
            "pass the bin directory of the cluster's own major with -b",
            exit::USAGE,
        );
    }
    let run_dir = match crate::commands::make_run_dir(settings, printer, started, name) {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    let log_dir = run_dir.log_dir();
    printer.emit(&Event::Plan {
        command: name,
        mode: settings.mode,
        old: PlanSide::new(&old_install.bindir, &old_dir.path, settings.old_port),
        new: PlanSide::new(&tools.bindir, &dir, 0),
        user: settings.user.clone(),
        jobs: settings.jobs,
        run_dir: run_dir.path().display().to_string(),
        live_check_allowed: true,
        backup_dir: Some(dir.display().to_string()),
        note: None,
    });
    let (server, old_state) = match old_server(settings, &old_install, &old_dir, &run_dir, &log_dir)
    {
        Ok(found) => found,
        Err(failure) => {
            // A server pg-migrate cannot use is a refusal; one that fails
            // to start or answer is a failure.
            let code = if matches!(failure.code, Code::ServerRunning | Code::Usage) {
                exit::USAGE
            } else {
                exit::FAILED_OLD_INTACT
            };
            let ending = Ending::Failed {
                failure,
                exit_code: code,
                clusters: ClusterStates::unchanged(),
            };
            return report(printer, settings, started, name, run_dir, ending, None);
        }
    };
    printer.emit(&Event::StepStart { step: "backup" });
    let step_started = Instant::now();
    let work = Work {
        printer,
        step: "backup",
        jobs: settings.jobs,
        log_dir: &log_dir,
    };
    let result = write(&work, &server, tools, &old_dir.path, &dir);
    printer.emit(&Event::StepEnd {
        step: "backup",
        status: StepStatus::of(&result),
        duration_ms: step_started.elapsed().as_millis() as u64,
    });
    let stopped = server
        .stop()
        .map_err(|e| Failure::new(Code::ServerStopFailed, e));
    let (ending, counts) = match (result, stopped) {
        (Ok(written), Ok(())) => (
            Ending::Done(vec![format!(
                "restore it with: pg-migrate restore --backup-dir {} -B BIN -D NEW_DATADIR",
                crate::support::quote(&dir)
            )]),
            Some(BackupCounts {
                dir: dir.display().to_string(),
                databases: written.manifest.databases.len(),
                bytes: written.manifest.bytes(),
                moved_aside: written
                    .moved_aside
                    .as_ref()
                    .map(|p| p.display().to_string()),
            }),
        ),
        (Err(failure), _) | (Ok(_), Err(failure)) => (
            Ending::Failed {
                exit_code: if failure.code == Code::Usage {
                    exit::USAGE
                } else {
                    exit::FAILED_OLD_INTACT
                },
                failure,
                clusters: ClusterStates {
                    old: old_state,
                    new: ClusterCondition::Unchanged,
                },
            },
            None,
        ),
    };
    report(printer, settings, started, name, run_dir, ending, counts)
}

/// The old cluster's server for a backup: the running one, or a private one.
pub(crate) fn old_server(
    settings: &Settings,
    install: &Installation,
    dir: &DataDir,
    run_dir: &RunDir,
    log_dir: &Path,
) -> Result<(Server, ClusterCondition), Failure> {
    crate::rundir::running_or_private(
        settings,
        run_dir,
        install,
        dir,
        true,
        log_dir.join("old-server.log"),
    )
}

/// How a backup or restore run ended.
pub(crate) enum Ending {
    Done(Vec<String>),
    Failed {
        failure: Failure,
        exit_code: i32,
        clusters: ClusterStates,
    },
}

/// The error (if any) and the summary of a backup or restore run.
pub(crate) fn report(
    printer: &Printer,
    settings: &Settings,
    started: Instant,
    name: &'static str,
    run_dir: RunDir,
    ending: Ending,
    counts: Option<BackupCounts>,
) -> i32 {
    let (exit_code, next_steps) = match ending {
        Ending::Done(next) => (exit::SUCCESS, next),
        Ending::Failed {
            failure,
            exit_code,
            clusters,
        } => {
            printer.emit(&Event::Error {
                code: failure.code,
                message: failure.message,
                remedy: failure.remedy,
                causes: Vec::new(),
                clusters,
                step: None,
                log: None,
            });
            (exit_code, Vec::new())
        }
    };
    let logs = run_dir.kept_logs(settings.retain, exit_code != exit::SUCCESS);
    let restore = name == "restore";
    printer.emit(&Event::Summary {
        command: name,
        result: if exit_code == exit::SUCCESS {
            crate::output::RunResult::Ok
        } else {
            crate::output::RunResult::Error
        },
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        checks: None,
        old_version: None,
        new_version: None,
        upgrade: None,
        backup: if restore { None } else { counts.clone() },
        restore: if restore { counts } else { None },
        kit: None,
        standby: None,
        patroni: None,
        after: None,
        logs,
        next_steps,
    });
    exit_code
}
