//! pg-migrate: upgrade a PostgreSQL cluster to a new major version in place.
//! This binary is the CLI and the orchestrator; the work lives in crates/.

mod check;
mod cli;
mod exit;
mod journal;
mod report;
mod rundir;
mod upgrade;

use std::time::Instant;

use clap::Parser;

use crate::cli::{Cli, Command, Settings};
use crate::report::{ClusterStates, Event, Printer};
use crate::rundir::RunDir;

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let started = Instant::now();
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
            return fail_early(
                &Printer::new(true),
                started,
                "usage",
                first,
                "run pg-migrate --help for the options",
                exit::USAGE,
            );
        }
    };
    let (options, check_only) = match cli.command {
        Some(Command::Check(options)) => (options, true),
        None => (cli.options, false),
    };
    let printer = Printer::new(options.json);
    if nix::unistd::geteuid().is_root() {
        return fail_early(
            &printer,
            started,
            "running_as_root",
            "pg-migrate cannot be run as root".into(),
            "run it as the operating-system user that owns the clusters, e.g. sudo -u postgres pg-migrate …",
            exit::USAGE,
        );
    }
    let settings = match options.resolve(check_only) {
        Ok(settings) => settings,
        Err(e) => {
            return fail_early(
                &printer,
                started,
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
    install_signal_handlers(settings.json, started);
    run_command(&settings, &printer, started)
}

fn run_command(settings: &Settings, printer: &Printer, started: Instant) -> i32 {
    let run_dir = match RunDir::create(&settings.socket_base) {
        Ok(dir) => dir,
        Err(e) => {
            return fail_early(
                printer,
                started,
                "run_dir_failed",
                format!(
                    "cannot make a private directory in {}: {e}",
                    settings.socket_base.display()
                ),
                "pass a writable directory with -s/--socketdir",
                exit::USAGE,
            )
        }
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
    let mut exit_code = outcome.exit_code;
    let mut next_steps = Vec::new();
    let mut upgrade_counts = None;
    let mut logs = None;
    if exit_code == exit::SUCCESS && settings.check_only {
        if outcome.report.live_old {
            next_steps.push("stop the old server before upgrading".to_string());
        }
        next_steps.push(format!(
            "run the same command without `check`{} to upgrade",
            mode_flag(settings.mode)
        ));
    } else if exit_code == exit::SUCCESS {
        match run_upgrade(settings, printer, &run_dir, outcome) {
            Ok(finished) => {
                next_steps = finished.next_steps;
                logs = finished.logs.map(|p| p.display().to_string());
                upgrade_counts = Some(report::UpgradeCounts {
                    mode: settings.mode,
                    databases: finished.databases,
                    relations: finished.relations,
                    files: finished.files,
                    bytes: finished.bytes,
                });
            }
            Err((code, kept)) => {
                exit_code = code;
                logs = kept.map(|p| p.display().to_string());
            }
        }
        let summary = Summary {
            exit_code,
            checks: None,
            versions,
            next_steps,
            upgrade: upgrade_counts,
            logs,
        };
        return summarize(settings, printer, started, run_dir, summary);
    }
    let summary = Summary {
        exit_code,
        checks: Some(check::counts(&outcome.report)),
        versions,
        next_steps,
        upgrade: upgrade_counts,
        logs,
    };
    summarize(settings, printer, started, run_dir, summary)
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

/// The upgrade after its checks passed; returns the exit status on failure.
fn run_upgrade(
    settings: &Settings,
    printer: &Printer,
    run_dir: &RunDir,
    outcome: check::Outcome,
) -> Result<upgrade::Finished, (i32, Option<std::path::PathBuf>)> {
    if !matches!(settings.mode, cli::Mode::Copy | cli::Mode::Link) {
        printer.emit(&Event::Error {
            code: "mode_not_supported",
            message: format!(
                "{} is not supported yet; use --copy or --link",
                mode_flag(settings.mode).trim()
            ),
            remedy: Some("nothing was changed".into()),
            causes: Vec::new(),
            clusters: check::cluster_states(&outcome.report),
        });
        return Err((exit::USAGE, None));
    }
    let mut engine =
        match upgrade::Engine::new(settings, printer, run_dir, outcome.config, outcome.report) {
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
                return Err((exit::FAILED_OLD_INTACT, None));
            }
        };
    engine.run().map_err(|failed| {
        printer.emit(&Event::Error {
            code: failed.failure.code,
            message: failed.failure.message,
            remedy: failed.failure.remedy,
            causes: Vec::new(),
            clusters: failed.clusters,
        });
        (failed.exit_code, failed.logs)
    })
}

/// What the final summary event reports.
struct Summary {
    exit_code: i32,
    checks: Option<report::CheckCounts>,
    versions: (Option<String>, Option<String>),
    next_steps: Vec<String>,
    upgrade: Option<report::UpgradeCounts>,
    logs: Option<String>,
}

fn summarize(
    settings: &Settings,
    printer: &Printer,
    started: Instant,
    run_dir: RunDir,
    summary: Summary,
) -> i32 {
    let Summary {
        exit_code,
        checks,
        versions,
        next_steps,
        upgrade,
        logs,
    } = summary;
    let keep = settings.retain || (exit_code != exit::SUCCESS && run_dir.has_logs());
    let run_dir_kept = keep.then(|| run_dir.keep().display().to_string());
    printer.emit(&Event::Summary {
        command: if settings.check_only {
            "check"
        } else {
            "upgrade"
        },
        result: match exit_code {
            exit::SUCCESS => "ok",
            exit::CHECKS_FAILED => "checks_failed",
            _ => "error",
        },
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        checks,
        old_version: versions.0,
        new_version: versions.1,
        upgrade,
        logs: logs.or(run_dir_kept),
        next_steps,
    });
    exit_code
}

/// Reports an error found before any cluster was looked at, and the summary.
fn fail_early(
    printer: &Printer,
    started: Instant,
    code: &'static str,
    message: String,
    remedy: &str,
    exit_code: i32,
) -> i32 {
    printer.emit(&Event::Error {
        code,
        message,
        remedy: Some(remedy.to_string()),
        causes: Vec::new(),
        clusters: ClusterStates {
            old: "unchanged",
            new: "unchanged",
        },
    });
    printer.emit(&Event::Summary {
        command: "pg-migrate",
        result: "error",
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        checks: None,
        old_version: None,
        new_version: None,
        upgrade: None,
        logs: None,
        next_steps: Vec::new(),
    });
    exit_code
}

/// On SIGINT/SIGTERM: stop every server we started, say so, and exit.
fn install_signal_handlers(json: bool, started: Instant) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            pgm_cluster::server::stop_all();
            let printer = Printer::new(json);
            fail_early(
                &printer,
                started,
                "interrupted",
                format!(
                    "interrupted by signal {}; every server pg-migrate started was stopped",
                    if signal == SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    }
                ),
                "run the command again when ready; nothing was changed",
                exit::FAILED_OLD_INTACT,
            );
            std::process::exit(exit::FAILED_OLD_INTACT);
        }
    });
}
