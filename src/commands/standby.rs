//! `standby-kit` (on the primary's host, after its upgrade) and `standby`
//! (on each standby's host), and `resume`/`revert` of a standby's upgrade:
//! the events and the summary; the work is `crate::standby`'s.

use std::path::Path;
use std::time::Instant;

use crate::cli::{KitArgs, Settings};
use crate::exit;
use crate::failure::{ClusterCondition, ClusterStates, Code, Failure};
use crate::output::{self, CheckCounts, Event, PlanSide, Printer, RunResult};
use crate::standby::apply::{self, KitInput, Request, Staged};
use crate::standby::{kit, make};
use crate::support::quote;

use super::{fail_leaving, refuse};

pub(crate) fn run_standby_kit(args: KitArgs, started: Instant) -> i32 {
    let printer = Printer::new(args.json);
    let name = "standby-kit";
    if let Some(exit_code) = super::refuse_root(&printer, started, name) {
        return exit_code;
    }
    let Some(new_datadir) = args.new_datadir.filter(|p| !p.as_os_str().is_empty()) else {
        return super::fail_early(
            &printer,
            started,
            name,
            Code::Usage,
            "no new data directory was given".into(),
            "pass the new primary's data directory with -D/--new-datadir or set PGDATANEW",
            exit::USAGE,
        );
    };
    let to_stdout = args.output == Path::new("-");
    if to_stdout && args.json {
        return super::fail_early(
            &printer,
            started,
            name,
            Code::Usage,
            "--json writes its events to stdout, where -o - writes the kit".into(),
            "write the kit to a file (-o KIT), or leave out --json (the text goes to stderr)",
            exit::USAGE,
        );
    }
    let _lock = match crate::recovery::lock_dirs(&[&new_datadir]) {
        Ok(lock) => lock,
        Err(failure) => return refuse(&printer, started, name, failure, exit::USAGE),
    };
    printer.emit(&Event::StepStart {
        step: "standby-kit",
    });
    let step_started = Instant::now();
    let made = match make::gather(&new_datadir) {
        Ok(made) => made,
        Err(failure) => return refuse(&printer, started, name, failure, exit::USAGE),
    };
    let written = if to_stdout {
        let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        kit::write(out, &made.manifest, &made.sources).map(|_| ())
    } else {
        crate::journal::write_atomically_with(&args.output, |out| {
            kit::write(out, &made.manifest, &made.sources).map(|_| ())
        })
    };
    if let Err(e) = written {
        if !to_stdout {
            let _ = std::fs::remove_file(&args.output);
        }
        return refuse(
            &printer,
            started,
            name,
            Failure {
                code: Code::OutputDirFailed,
                message: format!("writing the kit to {}: {e}", args.output.display()),
                remedy: Some("name a writable place with room for the kit (-o)".into()),
                clusters: Some(ClusterStates::unchanged()),
            },
            exit::FAILED_OLD_INTACT,
        );
    }
    printer.emit(&Event::step_end("standby-kit", true, step_started));
    let manifest = &made.manifest;
    let counts = kit_counts(&made, &args.output, to_stdout);
    let kit_arg = if to_stdout {
        "-".to_string()
    } else {
        quote(&args.output)
    };
    printer.emit(&Event::Summary {
        command: name,
        result: RunResult::Ok,
        exit_code: exit::SUCCESS,
        duration_ms: started.elapsed().as_millis() as u64,
        checks: None,
        old_version: Some(manifest.old.version.clone()),
        new_version: Some(manifest.new.version.clone()),
        upgrade: None,
        backup: None,
        restore: None,
        after: None,
        kit: Some(Box::new(counts)),
        standby: None,
        patroni: None,
        logs: None,
        next_steps: vec![
            format!(
                "on each standby, stopped cleanly after it replayed the old primary's shutdown: pg-migrate standby -b OLDBIN -B NEWBIN -d OLD_STANDBY_DATA -D NEW_STANDBY_DATA --kit {kit_arg}"
            ),
            "the new primary may start now: its standbys catch up by streaming once upgraded (each slot keeps the WAL they need; a standby without a slot needs the WAL kept by wal_keep_size or an archive)".into(),
        ],
    });
    exit::SUCCESS
}

/// The kit of a finished upgrade, written to a file (`--standby-kit` of
/// the upgrade, before any step after it starts the new cluster).
pub(crate) fn write_kit_file(
    printer: &Printer,
    new_datadir: &Path,
    output: &Path,
) -> Result<output::KitCounts, Failure> {
    printer.emit(&Event::StepStart {
        step: "standby-kit",
    });
    let started = Instant::now();
    let result = make::gather(new_datadir).and_then(|made| {
        crate::journal::write_atomically_with(output, |out| {
            kit::write(out, &made.manifest, &made.sources).map(|_| ())
        })
        .map_err(|e| Failure {
            code: Code::AfterStepFailed,
            message: format!("writing the standby kit to {}: {e}", output.display()),
            remedy: Some(format!(
                "make it before the new cluster first starts: pg-migrate standby-kit -D {} -o KIT (a writable place with room)",
                quote(new_datadir)
            )),
            clusters: None,
        })?;
        Ok(kit_counts(&made, output, false))
    });
    printer.emit(&Event::step_end("standby-kit", result.is_ok(), started));
    result
}

fn kit_counts(made: &make::Made, output: &Path, to_stdout: bool) -> output::KitCounts {
    let manifest = &made.manifest;
    output::KitCounts {
        path: output.display().to_string(),
        files: made.sources.iter().filter(|s| !s.dir).count(),
        bytes: manifest.bytes,
        kit_bytes: (!to_stdout)
            .then(|| std::fs::metadata(output).ok().map(|m| m.len()))
            .flatten(),
        relation_files: manifest.relations.len(),
        relation_bytes: manifest.relations.iter().map(|r| r.size).sum(),
        slots: manifest.slots.clone(),
    }
}

fn plan_event(settings: &Settings) -> Event {
    Event::Plan {
        command: "standby",
        mode: crate::cli::Mode::Link,
        old: PlanSide::new(settings.old_bindir(), settings.old_datadir(), 0),
        new: PlanSide::new(&settings.new_bindir, settings.new_datadir(), 0),
        user: settings.user.clone(),
        jobs: 1,
        run_dir: String::new(),
        live_check_allowed: false,
        backup_dir: None,
        note: None,
    }
}

fn counts(findings: &[pgm_verifier::Finding]) -> CheckCounts {
    let count = |s| findings.iter().filter(|f| f.status == s).count();
    CheckCounts {
        pass: count(pgm_verifier::Status::Pass),
        warn: count(pgm_verifier::Status::Warn),
        fail: count(pgm_verifier::Status::Fail),
        skip: count(pgm_verifier::Status::Skip),
    }
}

pub(crate) fn run_standby(settings: &Settings, printer: &Printer, started: Instant) -> i32 {
    let name = "standby";
    let new = settings.new_datadir();
    if crate::standby::is_standby(new) {
        return refuse(
            printer,
            started,
            name,
            Failure {
                code: Code::UnfinishedUpgrade,
                message: format!("{} holds a standby's upgrade already", new.display()),
                remedy: Some(format!(
                    "finish it with pg-migrate resume -D {0}, or undo it with pg-migrate revert -D {0}",
                    quote(new)
                )),
                clusters: Some(ClusterStates::unchanged()),
            },
            exit::USAGE,
        );
    }
    printer.emit(&plan_event(settings));
    let request = Request {
        old_bindir: settings.old_bindir(),
        new_bindir: &settings.new_bindir,
        old_datadir: settings.old_datadir(),
        new_datadir: new,
        kit: KitInput::parse(settings.kit.as_deref().unwrap_or(Path::new("-"))),
        check_only: settings.check_only,
    };
    let mut findings = Vec::new();
    let staged = apply::check_and_stage(&request, printer, &mut findings);
    let checks = Some(counts(&findings));
    let manifest = match staged {
        Ok(Staged::Checked(manifest)) => {
            return summary(
                printer,
                started,
                name,
                exit::SUCCESS,
                checks,
                &manifest,
                None,
                vec![format!(
                    "upgrade the standby: the same command without --check"
                )],
            )
        }
        Ok(Staged::Ready(manifest)) => manifest,
        Err(failure) if failure.code == Code::ChecksFailed => {
            let failed: Vec<&pgm_verifier::Finding> = findings
                .iter()
                .filter(|f| f.status == pgm_verifier::Status::Fail)
                .collect();
            printer.emit(&Event::checks_failed(&failed, ClusterStates::unchanged()));
            return summary_bare(printer, started, name, exit::CHECKS_FAILED, checks);
        }
        Err(failure) => {
            let exit_code = failure
                .code
                .fixed_exit_status()
                .unwrap_or(exit::FAILED_OLD_INTACT);
            return refuse(printer, started, name, failure, exit_code);
        }
    };
    finish_steps(printer, started, name, new, checks, &manifest)
}

/// Runs the steps left and reports; shared by `standby` and its `resume`.
fn finish_steps(
    printer: &Printer,
    started: Instant,
    name: &'static str,
    new: &Path,
    checks: Option<CheckCounts>,
    manifest: &kit::Manifest,
) -> i32 {
    match apply::run_steps(new, printer) {
        Ok(applied) => {
            let plan = &applied.plan;
            let mut next = vec![format!(
                "start the standby (before or after the new primary: it waits for it): {} -D {} start",
                quote(&plan.new_bindir.join("pg_ctl")),
                quote(&plan.new_datadir)
            )];
            next.push(format!(
                "the old standby cannot be started: its global/pg_control was renamed to pg_control.old; to go back instead, and only while the new standby has never been started: pg-migrate revert -D {}",
                quote(&plan.new_datadir)
            ));
            next.push(format!(
                "once the new standby streams from the new primary, delete the old standby's files ({}; the new standby's are links and stay)",
                quote(&plan.old_datadir)
            ));
            summary(
                printer,
                started,
                name,
                exit::SUCCESS,
                checks,
                manifest,
                Some(Box::new(output::StandbyCounts {
                    linked: applied.linked,
                    kit_files: applied.kit_files,
                    unlogged_left_out: applied.unlogged_left_out,
                })),
                next,
            )
        }
        Err(failure) => {
            let records = crate::standby::records(new);
            let protected = crate::standby::done_steps(&records)
                .iter()
                .any(|s| s == "protect-old");
            let _ = crate::standby::record(
                new,
                &crate::standby::StandbyRecord::Failed {
                    code: failure.code.as_str().into(),
                    message: failure.message.clone(),
                },
            );
            let remedy = failure.remedy.clone().unwrap_or_else(|| {
                format!(
                    "fix what the message names, then finish it: pg-migrate resume -D {0}; or give the old standby back: pg-migrate revert -D {0}",
                    quote(new)
                )
            });
            fail_leaving(
                printer,
                started,
                name,
                failure.code,
                failure.message,
                &remedy,
                if protected {
                    exit::FAILED_NEEDS_RECOVERY
                } else {
                    exit::FAILED_OLD_INTACT
                },
                failure.clusters.clone().unwrap_or(ClusterStates {
                    old: if protected {
                        ClusterCondition::Protected
                    } else {
                        ClusterCondition::Unchanged
                    },
                    new: ClusterCondition::Incomplete,
                }),
            )
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn summary(
    printer: &Printer,
    started: Instant,
    name: &'static str,
    exit_code: i32,
    checks: Option<CheckCounts>,
    manifest: &kit::Manifest,
    standby: Option<Box<output::StandbyCounts>>,
    next_steps: Vec<String>,
) -> i32 {
    printer.emit(&Event::Summary {
        command: name,
        result: RunResult::of_exit(exit_code),
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        checks,
        old_version: Some(manifest.old.version.clone()),
        new_version: Some(manifest.new.version.clone()),
        upgrade: None,
        backup: None,
        restore: None,
        after: None,
        kit: None,
        standby,
        patroni: None,
        logs: None,
        next_steps,
    });
    exit_code
}

fn summary_bare(
    printer: &Printer,
    started: Instant,
    name: &'static str,
    exit_code: i32,
    checks: Option<CheckCounts>,
) -> i32 {
    printer.emit(&Event::Summary {
        command: name,
        result: RunResult::of_exit(exit_code),
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        checks,
        old_version: None,
        new_version: None,
        upgrade: None,
        backup: None,
        restore: None,
        after: None,
        kit: None,
        standby: None,
        patroni: None,
        logs: None,
        next_steps: Vec::new(),
    });
    exit_code
}

/// `resume` or `revert` of a standby's upgrade (`-D` holds its journal).
pub(crate) fn run_standby_recovery(
    reverting: bool,
    new: &Path,
    printer: &Printer,
    started: Instant,
) -> i32 {
    let name = if reverting { "revert" } else { "resume" };
    let _lock = match crate::recovery::lock_dirs(&[new]) {
        Ok(lock) => lock,
        Err(failure) => return refuse(printer, started, name, failure, exit::USAGE),
    };
    let records = crate::standby::records(new);
    let revert_started = records
        .iter()
        .any(|r| matches!(r, crate::standby::StandbyRecord::RevertStarted));
    if reverting {
        return match apply::revert(new) {
            Ok(plan) => {
                printer.emit(&Event::bare_summary(
                    "revert",
                    RunResult::Reverted,
                    exit::SUCCESS,
                    started,
                    vec![format!(
                        "the old standby is as it was: start it once its primary runs again ({} -D {} start)",
                        quote(&plan.old_bindir.join("pg_ctl")),
                        quote(&plan.old_datadir)
                    )],
                ));
                exit::SUCCESS
            }
            Err(failure) => {
                let exit_code = failure
                    .code
                    .fixed_exit_status()
                    .unwrap_or(exit::FAILED_NEEDS_RECOVERY);
                let clusters = failure.clusters.clone().unwrap_or(ClusterStates {
                    old: ClusterCondition::Protected,
                    new: ClusterCondition::Incomplete,
                });
                let remedy = failure.remedy.clone().unwrap_or_else(|| {
                    format!(
                        "fix what the message names and run pg-migrate revert -D {} again (every part of it can be repeated)",
                        quote(new)
                    )
                });
                fail_leaving(
                    printer,
                    started,
                    name,
                    failure.code,
                    failure.message,
                    &remedy,
                    exit_code,
                    clusters,
                )
            }
        };
    }
    if revert_started {
        return fail_leaving(
            printer,
            started,
            name,
            Code::UnfinishedRevert,
            format!(
                "a revert of the standby's upgrade into {} began and did not finish",
                new.display()
            ),
            &format!("finish it: pg-migrate revert -D {}", quote(new)),
            exit::FAILED_NEEDS_RECOVERY,
            ClusterStates {
                old: ClusterCondition::Protected,
                new: ClusterCondition::Incomplete,
            },
        );
    }
    if records
        .iter()
        .any(|r| matches!(r, crate::standby::StandbyRecord::Complete { .. }))
    {
        return super::fail_early(
            printer,
            started,
            name,
            Code::AlreadyUpgraded,
            format!("the standby's upgrade into {} finished", new.display()),
            "start the new standby",
            exit::USAGE,
        );
    }
    let manifest = match apply::saved_manifest(new) {
        Ok(manifest) => manifest,
        Err(failure) => {
            return refuse(printer, started, name, failure, exit::FAILED_NEEDS_RECOVERY)
        }
    };
    if let Some(plan) = crate::standby::plan_of(&records) {
        if let Ok(pgm_cluster::ServerStatus::Running(pid)) =
            pgm_cluster::DataDir::open(&plan.old_datadir, None).and_then(|d| d.server_status())
        {
            return super::fail_early(
                printer,
                started,
                name,
                Code::ServerRunning,
                format!("a server (pid {}) runs on the old standby {}", pid.pid, plan.old_datadir.display()),
                "stop it; it shares its files with the new standby, so it must not run: then revert (or resume) again",
                exit::FAILED_NEEDS_RECOVERY,
            );
        }
    }
    finish_steps(printer, started, name, new, None, &manifest)
}
