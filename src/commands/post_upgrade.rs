//! `pg-migrate post-upgrade` and `pg-migrate verify`: the steps after an
//! upgrade (post_upgrade/), run on a finished one.

use crate::cli::Settings;
use crate::exit;
use crate::failure::Code;
use crate::journal::JournalView;
use crate::output::ClusterCondition;
use crate::output::{ClusterStates, Event, Printer};
use crate::post_upgrade::*;
use pgm_cluster::{DataDir, Installation};
use std::time::Instant;

// ---------------------------------------------------------------------------
// pg-migrate post-upgrade

/// `pg-migrate post-upgrade -D NEW …`: the steps on a finished upgrade.
pub fn run_post_upgrade(
    settings: &Settings,
    printer: &Printer,
    started: Instant,
    view: &JournalView,
    name: &'static str,
) -> i32 {
    let fail_early = |code: Code, message: String, remedy: &str, status: i32| {
        crate::commands::fail_early(printer, started, name, code, message, remedy, status)
    };
    match crate::journal::read_state(settings.new_datadir()) {
        Some(crate::journal::State::Complete) => {}
        _ => {
            return fail_early(
                Code::UnfinishedUpgrade,
                format!(
                    "{} holds no finished upgrade",
                    settings.new_datadir().display()
                ),
                &format!(
                    "finish it first: pg-migrate resume -D {}",
                    crate::support::quote(settings.new_datadir())
                ),
                exit::USAGE,
            )
        }
    }
    let new_install = match Installation::discover(&settings.new_bindir) {
        Ok(install) => install,
        Err(e) => {
            return fail_early(
                Code::Usage,
                format!("the new installation cannot be used: {e}"),
                "pass the new bin directory with -B",
                exit::USAGE,
            )
        }
    };
    let new_dir = match DataDir::open(settings.new_datadir(), None) {
        Ok(dir) => dir,
        Err(e) => {
            return fail_early(
                Code::Usage,
                format!("the new data directory cannot be used: {e}"),
                "pass the upgraded cluster's data directory with -D",
                exit::USAGE,
            )
        }
    };
    let run_dir = match crate::commands::make_run_dir(settings, printer, started, name) {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    let old_version = view.plan().map(|p| p.old.version.clone());
    printer.emit(&Event::Plan {
        command: name,
        mode: settings.mode,
        old: crate::output::PlanSide::maybe(
            settings.old_bindir.as_deref(),
            settings.old_datadir.as_deref(),
            settings.old_port,
        ),
        new: crate::output::PlanSide::new(&new_install.bindir, &new_dir.path, settings.new_port),
        user: settings.user.clone(),
        jobs: settings.jobs,
        run_dir: run_dir.path().display().to_string(),
        live_check_allowed: false,
        backup_dir: None,
        note: None,
    });
    let old_config_dir = settings.old_datadir.as_ref().map(|old| {
        DataDir::open(old, None)
            .map(|d| d.pg_ctl_dir().to_path_buf())
            .unwrap_or_else(|_| old.clone())
    });
    let upgraded = Upgraded {
        new_install: &new_install,
        new_dir: &new_dir,
        old_config_dir,
        old_datadir: settings.old_datadir.clone(),
        old_version: old_version.clone(),
        reindex_script: view.reindex_script(),
    };
    let (steps, failure) = run_steps(settings, printer, &run_dir, &upgraded);
    // Link and swap mode left the old cluster disabled; this run did not touch it.
    let old_disabled = settings.old_datadir.as_ref().is_some_and(|old| {
        let global = old.join("global");
        !global.join("pg_control").exists() && global.join("pg_control.old").exists()
    });
    let old_state = if old_disabled {
        ClusterCondition::Protected
    } else {
        ClusterCondition::Unchanged
    };
    let exit_code = match failure {
        None => exit::SUCCESS,
        Some(failure) => {
            let code = failure_exit_code(failure.code);
            let failed_step = steps
                .iter()
                .find(|s| s.status == crate::output::StepStatus::Failed)
                .map(|s| s.step);
            printer.emit(&Event::failure_in_step(
                failure,
                ClusterStates {
                    old: old_state,
                    new: ClusterCondition::Upgraded,
                },
                failed_step,
                None,
            ));
            code
        }
    };
    let logs = run_dir.kept_logs(settings.retain, exit_code != exit::SUCCESS);
    printer.emit(&Event::Summary {
        command: name,
        result: result_of(exit_code),
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        checks: None,
        old_version,
        new_version: Some(new_install.version.text.clone()),
        upgrade: None,
        backup: None,
        restore: None,
        kit: None,
        standby: None,
        patroni: None,
        after: Some(steps),
        logs,
        next_steps: Vec::new(),
    });
    exit_code
}
