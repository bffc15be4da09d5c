//! `check` and the upgrade (checks first), and the runs that continue a
//! journal (a late resume, the cutover): the engine run and its summary.

use std::time::Instant;

use crate::cli::Settings;
use crate::engine;
use crate::exit;
use crate::journal;
use crate::output::ClusterCondition;
use crate::output::{self, ClusterStates, Event, Printer, StepStatus};
use crate::post_upgrade;
use crate::rundir::RunDir;

use super::check;

use super::*;

/// `check`, or the upgrade (checks first); `resuming` continues a journal.
pub(crate) fn run_command(
    settings: &Settings,
    printer: &Printer,
    started: Instant,
    resuming: bool,
    phase: engine::Phase,
) -> i32 {
    let name = if settings.check_only {
        "check"
    } else if phase == engine::Phase::Prepare {
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
            "run the same command without {}{} to upgrade",
            if settings.check_by_flag {
                "-c/--check"
            } else {
                "`check`"
            },
            mode_flag(settings.mode)
        ));
    } else if summary.exit_code == exit::SUCCESS {
        summary.checks = None;
        // The plan, built once from what the checks established; the old
        // server they kept up goes on to the dump.
        let report = outcome.report;
        let engine = engine::Plan::from_checks(&report).map(|plan| {
            engine::Engine::new(
                settings,
                printer,
                &run_dir,
                outcome.config,
                plan,
                outcome.old_server,
                Some(report),
            )
        });
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
pub(crate) fn finish_upgrade(
    settings: &Settings,
    printer: &Printer,
    run_dir: &RunDir,
    engine: Result<engine::Engine<'_>, engine::Failure>,
    summary: &mut Summary,
) {
    let mut engine = match engine {
        Ok(engine) => engine,
        Err(failure) => {
            printer.emit(&Event::failure(
                failure,
                ClusterStates {
                    old: ClusterCondition::StartedAndStopped,
                    new: ClusterCondition::Unchanged,
                },
            ));
            summary.exit_code = exit::FAILED_OLD_INTACT;
            return;
        }
    };
    match engine.run() {
        Ok(finished) => {
            let mut next_steps = finished.next_steps;
            summary.logs = finished.logs.map(|p| p.display().to_string());
            summary.upgrade = Some(output::UpgradeCounts {
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
            if let Some(kit) = &settings.standby_kit {
                match super::standby::write_kit_file(printer, &engine.new_datadir().path, kit) {
                    Ok(counts) => {
                        next_steps.retain(|n| n.done_by != Some(engine::STANDBY_KIT_ADVICE));
                        next_steps.push(engine::NextStep {
                            done_by: None,
                            text: format!(
                                "upgrade each standby (stopped cleanly after it replayed the old primary's shutdown) with the kit: pg-migrate standby -b OLDBIN -B NEWBIN -d OLD_STANDBY_DATA -D NEW_STANDBY_DATA --kit {}",
                                engine::quote(kit)
                            ),
                        });
                        summary.kit = Some(Box::new(counts));
                    }
                    Err(failure) => {
                        // The upgrade is complete; nothing after it runs, so
                        // that a kit can still be made by hand.
                        printer.emit(&Event::failure(
                            failure,
                            ClusterStates {
                                old: engine.old_state(),
                                new: ClusterCondition::Upgraded,
                            },
                        ));
                        summary.exit_code = exit::AFTER_STEP_FAILED;
                        summary.result = Some(output::RunResult::AfterStepFailed);
                        summary.next_steps = next_steps.into_iter().map(|n| n.text).collect();
                        return;
                    }
                }
            }
            if settings.after.any() {
                let upgraded = post_upgrade::Upgraded {
                    new_install: engine.new_install(),
                    new_dir: engine.new_datadir(),
                    old_config_dir: Some(engine.old_config_dir()),
                    old_datadir: Some(settings.old_datadir().to_path_buf()),
                    old_version: Some(engine.old_version()),
                    reindex_script: finished.reindex_script.clone(),
                };
                let (steps, failure) =
                    post_upgrade::run_steps(settings, printer, run_dir, &upgraded);
                // What a step did is no longer left to do; once the new
                // cluster ran, there is no going back to the old one.
                let ran = steps
                    .iter()
                    .any(|s| s.step != "carry-config" && s.status != StepStatus::NotRun);
                next_steps.retain(|n| match n.done_by {
                    Some(engine::NEW_CLUSTER_RAN | engine::STANDBY_KIT_ADVICE) => !ran,
                    Some(step) => !steps
                        .iter()
                        .any(|s| s.step == step && s.status == StepStatus::Ok),
                    None => true,
                });
                summary.after = Some(steps);
                if let Some(failure) = failure {
                    let code = failure.code;
                    let failed_step = summary
                        .after
                        .as_ref()
                        .and_then(|steps| steps.iter().find(|s| s.status == StepStatus::Failed))
                        .map(|s| s.step);
                    printer.emit(&Event::failure_in_step(
                        failure,
                        ClusterStates {
                            old: engine.old_state(),
                            new: ClusterCondition::Upgraded,
                        },
                        failed_step,
                        None,
                    ));
                    summary.exit_code = post_upgrade::failure_exit_code(code);
                    summary.result = Some(post_upgrade::result_of(summary.exit_code));
                }
            }
            summary.next_steps = next_steps.into_iter().map(|n| n.text).collect();
        }
        Err(failed) => {
            printer.emit(&Event::failure_in_step(
                failed.failure,
                failed.clusters,
                failed.step,
                failed.logs.as_deref(),
            ));
            summary.exit_code = failed.exit_code;
            summary.logs = failed.logs.map(|p| p.display().to_string());
        }
    }
}

/// What a run continues from a journal.
#[derive(Clone, Copy)]
pub(crate) enum FromJournal {
    /// The cutover of a prepared upgrade.
    Cutover,
    /// An upgrade resumed after its relations were matched.
    LateResume,
}

/// A run that continues what a journal records: the plan (from the
/// settings the journal filled in), the engine, its summary.
pub(crate) fn run_from_journal(
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
        old: output::PlanSide::new(
            settings.old_bindir(),
            settings.old_datadir(),
            settings.old_port,
        ),
        new: output::PlanSide::new(
            &settings.new_bindir,
            settings.new_datadir(),
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
            engine::Engine::for_cutover(settings, printer, &run_dir, config, view)
        }
        FromJournal::LateResume => {
            engine::Engine::resume_late(settings, printer, &run_dir, config, view)
        }
    };
    let mut summary = Summary::new(name, exit::SUCCESS);
    finish_upgrade(settings, printer, &run_dir, engine, &mut summary);
    summarize(settings, printer, started, run_dir, summary)
}
