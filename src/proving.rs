//! `--verify` and `pg-migrate verify`: the old cluster measured while its
//! server is up for the dump (before any point of no return), the new one
//! after the upgrade, both by the same new-version tools, and compared.
//! Only reads: the servers it starts are started and stopped cleanly.

use std::path::Path;

use pgm_cluster::{DataDir, Installation, Server};
use pgm_verifier::proof::{self, MeasureOptions, Outcome, Side};

use crate::cli::{Method, Mode, Settings, Verify, VerifyMode};
use crate::failure::{Code, Failure};
use crate::output::{Event, Printer, ProgressMeter};
use crate::rundir::RunDir;

/// The old side as the upgrade measured it, beside the journal.
pub const OLD_SIDE: &str = "verify-old.json";
/// The last comparison's full report.
pub const REPORT: &str = "verify-report.json";

/// A measure's progress on a meter of tables (and sequences).
fn counted(meter: &ProgressMeter, progress: proof::MeasureProgress) {
    match progress {
        proof::MeasureProgress::Found(n) => meter.grow(n),
        proof::MeasureProgress::Started => meter.add(1, 0),
    }
}

/// How much of each table is read. A dump and reload lays every table out
/// anew, so samples of blocks would not match: it reads everything.
pub fn measure_options(verify: Verify, method: Method) -> MeasureOptions {
    let full = verify.mode == VerifyMode::Full || method == Method::Dump;
    MeasureOptions {
        sample_above_bytes: (!full).then_some(verify.sample_above),
    }
}

/// Measures the old cluster through `server` and keeps the result in the
/// new cluster's journal directory.
pub fn record_old(
    new_install: &Installation,
    server: &Server,
    old_install: &Installation,
    new_datadir: &Path,
    options: MeasureOptions,
    jobs: usize,
    meter: &ProgressMeter,
) -> Result<(), Failure> {
    let side = proof::measure(
        new_install,
        server,
        old_install.version.major,
        options,
        None,
        jobs,
        &|p| counted(meter, p),
    )
    .map_err(|e| Failure::new(Code::VerifyFailed, e))?;
    let path = crate::journal::dir(new_datadir).join(OLD_SIDE);
    proof::save(&side, &path)
        .map_err(|e| Failure::new(Code::VerifyFailed, format!("{}: {e}", path.display())))
}

/// The after-step: the new cluster (through `server`) against the old
/// side the upgrade recorded, or, when it recorded none and the old
/// cluster was left as it was (copy modes), against the old cluster now.
/// `preflight` has said there is an old side to compare with.
pub fn run(
    settings: &Settings,
    printer: &Printer,
    new_install: &Installation,
    new_datadir: &Path,
    server: &Server,
    run_dir: &RunDir,
    verify: Verify,
) -> Result<(), Failure> {
    let recorded = crate::journal::dir(new_datadir).join(OLD_SIDE);
    let meter = printer.meter("verify", 0, "tables");
    let (old, old_measured) = match proof::load(&recorded) {
        Ok(side) => (side, "before_transfer"),
        Err(_) => (
            measure_old_now(settings, new_install, run_dir, verify, &meter)?,
            "now",
        ),
    };
    let new = proof::measure(
        new_install,
        server,
        new_install.version.major,
        measure_options(verify, settings.method),
        Some(&old),
        settings.jobs,
        &|p| counted(&meter, p),
    )
    .map_err(|e| Failure::new(Code::VerifyFailed, e))?;
    meter.finish();
    let verdict = proof::compare(&old, &new);
    let report = crate::journal::dir(new_datadir).join(REPORT);
    write_report(&report, &verdict, &old, &new)?;
    printer.emit(&Event::Verify {
        outcome: verdict.outcome,
        old_measured,
        rules: verdict.rules.clone(),
        tables: verdict.tables,
        sampled_tables: verdict.sampled_tables,
        sequences: verdict.sequences,
        large_objects: verdict.large_objects,
        difference_count: verdict.difference_count,
        differences: verdict.differences.iter().take(20).cloned().collect(),
        report: report.display().to_string(),
    });
    if verdict.outcome != Outcome::Different {
        return Ok(());
    }
    Err(Failure {
        code: Code::VerifyFoundDifferences,
        message: format!(
            "the new cluster differs from the old one in {} ways no rule explains; first: {}",
            verdict.difference_count,
            verdict.differences.first().cloned().unwrap_or_default()
        ),
        remedy: Some(format!(
            "read {} (both schema dumps are beside it); do not put the new cluster into service until each difference is understood{}",
            report.display(),
            if old_measured == "now" {
                " (the old cluster was measured now: if it ran since the upgrade, its own changes show too)"
            } else {
                ""
            }
        )),
        clusters: None,
    })
}

/// The comparison as JSON, and both normalized schema dumps beside it.
fn write_report(
    path: &Path,
    verdict: &proof::Verdict,
    old: &Side,
    new: &Side,
) -> Result<(), Failure> {
    let fail = |p: &Path, e: std::io::Error| {
        Failure::new(Code::VerifyFailed, format!("{}: {e}", p.display()))
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    for (name, side) in [
        ("verify-old-schema.sql", old),
        ("verify-new-schema.sql", new),
    ] {
        let file = dir.join(name);
        std::fs::write(&file, &side.schema).map_err(|e| fail(&file, e))?;
    }
    let text = serde_json::to_vec_pretty(&serde_json::json!({
        "outcome": verdict.outcome,
        "rules": verdict.rules,
        "tables": verdict.tables,
        "sampled_tables": verdict.sampled_tables,
        "sequences": verdict.sequences,
        "large_objects": verdict.large_objects,
        "difference_count": verdict.difference_count,
        "differences": verdict.differences,
        "old_major": old.major,
        "new_major": new.major,
    }))
    .map_err(|e| Failure::new(Code::VerifyFailed, e))?;
    std::fs::write(path, text).map_err(|e| fail(path, e))
}

/// Whether there is an old side to compare with, asked before the new
/// server starts (a refusal must leave the new cluster as it was).
pub fn preflight(settings: &Settings, new_datadir: &Path) -> Result<(), Failure> {
    if crate::journal::dir(new_datadir).join(OLD_SIDE).exists() {
        return Ok(());
    }
    if matches!(settings.mode, Mode::Link | Mode::Swap) || settings.old_datadir.is_none() {
        return Err(Failure {
            code: Code::VerifyNotPossible,
            message: "the upgrade did not measure the old cluster, and after a link or swap upgrade it cannot be measured any more (its files are the new cluster's)".into(),
            remedy: Some("ask for --verify on the upgrade itself: it measures the old cluster before anything of it changes".into()),
            clusters: None,
        });
    }
    Ok(())
}

/// No old side was recorded: measure the old cluster now, if it is as the
/// upgrade left it (copy modes never change it; link and swap modes
/// disabled it, and its files are the new cluster's now).
fn measure_old_now(
    settings: &Settings,
    new_install: &Installation,
    run_dir: &RunDir,
    verify: Verify,
    meter: &ProgressMeter,
) -> Result<Side, Failure> {
    let not_possible = |why: String| {
        Failure {
        code: Code::VerifyNotPossible,
        message: why,
        remedy: Some("ask for --verify on the upgrade itself: it measures the old cluster before anything of it changes".into()),
        clusters: None,
    }
    };
    let (Some(old_bindir), Some(old_datadir)) = (&settings.old_bindir, &settings.old_datadir)
    else {
        return Err(not_possible(
            "the journal names no old cluster to measure".into(),
        ));
    };
    let old_install = Installation::discover(old_bindir)
        .map_err(|e| not_possible(format!("the old installation cannot be used: {e}")))?;
    let old_dir = DataDir::open(old_datadir, None)
        .map_err(|e| not_possible(format!("the old cluster cannot be used: {e}")))?;
    if !matches!(
        old_dir.server_status(),
        Ok(pgm_cluster::ServerStatus::Stopped)
    ) {
        return Err(Failure {
            code: Code::ServerRunning,
            message: "the old server is running".into(),
            remedy: Some(
                "stop it: the old cluster is measured with a server of pg-migrate's own".into(),
            ),
            clusters: None,
        });
    }
    let options = run_dir.plain_server_options(
        settings,
        true,
        run_dir.log_dir().join("old-server-verify.log"),
    );
    let server = Server::start(&old_install, &old_dir, &options)
        .map_err(|e| Failure::new(Code::ServerStartFailed, e))?;
    let side = proof::measure(
        new_install,
        &server,
        old_install.version.major,
        measure_options(verify, settings.method),
        None,
        settings.jobs,
        &|p| counted(meter, p),
    )
    .map_err(|e| Failure::new(Code::VerifyFailed, e));
    server
        .stop()
        .map_err(|e| Failure::new(Code::ServerStopFailed, e))?;
    side
}
