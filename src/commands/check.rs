//! The check run shared by `pg-migrate check` and the upgrade's first phase.

use std::time::Instant;

use pgm_verifier::{CharSignedness, CheckConfig, Report, SideConfig, Status};

use crate::cli::{Settings, Signedness};
use crate::exit;
use crate::output::ClusterCondition;
use crate::output::{CheckCounts, ClusterStates, Event, PlanSide, Printer};
use crate::rundir::RunDir;

pub struct Outcome {
    pub report: Report,
    /// The old server the checks kept running for the upgrade's dump.
    pub old_server: Option<pgm_cluster::Server>,
    pub config: CheckConfig,
    pub exit_code: i32,
}

fn command_name(settings: &Settings) -> &'static str {
    if settings.check_only {
        "check"
    } else if settings.prepare {
        "prepare"
    } else {
        "upgrade"
    }
}

/// What the verifier needs to know, from the settings.
pub fn config(settings: &Settings, run_dir: &RunDir) -> CheckConfig {
    CheckConfig {
        old: SideConfig {
            bindir: settings.old_bindir().to_path_buf(),
            datadir: settings.old_datadir().to_path_buf(),
            port: settings.old_port,
            server_options: settings.old_options.clone(),
        },
        new: SideConfig {
            bindir: settings.new_bindir.clone(),
            datadir: settings.new_datadir().to_path_buf(),
            port: settings.new_port,
            server_options: settings.new_options.clone(),
        },
        user: settings.user.clone(),
        jobs: settings.jobs,
        socket_dir: run_dir.path().to_path_buf(),
        log_dir: run_dir.log_dir(),
        // prepare works while the old server serves.
        allow_live_old: settings.check_only || settings.prepare,
        create_new: true,
        strict: settings.strict,
        carry_config: settings.after.carry_config,
        keep_old_server: !settings.check_only,
        dump_reload: settings.method == crate::cli::Method::Dump,
        transfer: settings.mode,
        probe: |mode, from, into| pgm_transfer::probe(mode, from, into).map_err(|e| e.to_string()),
        set_char_signedness: settings.set_char_signedness.map(|s| match s {
            Signedness::Signed => CharSignedness::Signed,
            Signedness::Unsigned => CharSignedness::Unsigned,
        }),
    }
}

/// Runs every check, streaming the events; returns the report and the exit
/// status a `check` run ends with.
pub fn run_checks(settings: &Settings, printer: &Printer, run_dir: &RunDir) -> Outcome {
    let config = config(settings, run_dir);
    printer.emit(&Event::Plan {
        command: command_name(settings),
        mode: settings.mode,
        old: PlanSide::new(settings.old_bindir(), settings.old_datadir(), settings.old_port),
        new: PlanSide::new(&settings.new_bindir, settings.new_datadir(), settings.new_port),
        user: settings.user.clone(),
        jobs: settings.jobs,
        run_dir: run_dir.path().display().to_string(),
        live_check_allowed: settings.check_only || settings.prepare,
        backup_dir: settings
            .backup_dir
            .as_ref()
            .map(|d| d.display().to_string()),
        note: settings.prepare.then(|| {
            "while each database's schema is dumped, pg_dump holds an ACCESS SHARE lock on every table of that database: DDL waits for it, and queries queue behind waiting DDL; each database's dump takes about as long as its schema is large".to_string()
        }),
    });
    let started = Instant::now();
    printer.emit(&Event::StepStart { step: "checks" });
    let meter = printer.meter_without_bar("checks", 0, "checks");
    let pgm_verifier::Checked { report, old_server } =
        pgm_verifier::run_checks(&config, &mut |total| meter.grow(total as u64), &mut |f| {
            printer.emit(&Event::check(f));
            meter.add(1, 0);
        });
    meter.finish();
    drop(meter);
    let failed = report.failed();
    printer.emit(&Event::step_end("checks", failed.is_empty(), started));
    let exit_code = if failed.is_empty() {
        exit::SUCCESS
    } else {
        printer.emit(&Event::checks_failed(&failed, cluster_states(&report)));
        exit::CHECKS_FAILED
    };
    Outcome {
        report,
        old_server,
        config,
        exit_code,
    }
}

/// What the checks did to each cluster.
pub fn cluster_states(report: &Report) -> ClusterStates {
    ClusterStates {
        old: if report.live_old {
            ClusterCondition::RunningUntouched
        } else if report.old_started {
            ClusterCondition::StartedAndStopped
        } else {
            ClusterCondition::Unchanged
        },
        new: if report.new_started {
            ClusterCondition::StartedAndStopped
        } else {
            ClusterCondition::Unchanged
        },
    }
}

pub fn counts(report: &Report) -> CheckCounts {
    CheckCounts {
        pass: report.count(Status::Pass),
        warn: report.count(Status::Warn),
        fail: report.count(Status::Fail),
        skip: report.count(Status::Skip),
    }
}

/// The checks of one upgrade's clusters as findings, reported by another
/// command (`patroni`'s preflight of its leader): a run of `check` without
/// its own events.
pub fn leader_findings(
    options: crate::cli::Options,
    action: crate::cli::Action,
) -> Vec<pgm_verifier::Finding> {
    let fail = |message: String, remedy: Option<String>| {
        vec![pgm_verifier::Finding::fail(
            "patroni-leader-checks",
            "pg-migrate check on the leader",
            "leader_checks_failed",
            message,
            remedy.unwrap_or_else(|| "see the message".into()),
        )]
    };
    let settings = match options.resolve(action) {
        Ok(settings) => settings,
        Err(f) => return fail(f.message, f.remedy),
    };
    let run_dir = match RunDir::create(
        &settings.socket_base,
        settings.log_dir.as_deref(),
        (
            settings.old_datadir.as_deref(),
            settings.new_datadir.as_deref(),
        ),
    ) {
        Ok(run_dir) => run_dir,
        Err(e) => {
            return fail(
                format!(
                    "a run directory under {}: {e}",
                    settings.socket_base.display()
                ),
                None,
            )
        }
    };
    let config = config(&settings, &run_dir);
    let mut findings = Vec::new();
    let checked = pgm_verifier::run_checks(&config, &mut |_| {}, &mut |f| findings.push(f.clone()));
    drop(checked.old_server);
    findings
}
