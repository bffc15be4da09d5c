//! `--update-extensions`, `--reindex-collation` and `--analyze`: each runs
//! over pg-migrate's own connection to the new cluster's private server.

use crate::cli::Settings;
use crate::failure::{Code, Failure};
use crate::rundir::RunDir;
use pgm_cluster::{Server, Tool};

#[allow(unused_imports)]
use super::*;

/// `ALTER EXTENSION … UPDATE` for every extension older than the new
/// installation's default, in every database, over pg-migrate's own
/// connection (no database name goes through a script); what was run is
/// written to the log.
pub(crate) fn update_extensions(server: &Server, run_dir: &RunDir) -> Result<(), Failure> {
    let log = run_dir.log_dir().join("update-extensions.log");
    let mut databases = user_databases(server)?;
    databases.insert(0, "template1".into());
    for database in databases {
        let mut client = connect(server, &database)?;
        let names = pgm_catalog::outdated_extensions(&mut client, &database)
            .map_err(|e| Failure::new(Code::NewCatalogFailed, e))?;
        for name in names {
            let sql = format!(
                "ALTER EXTENSION {} UPDATE",
                pgm_cluster::sql::quote_ident(&name)
            );
            append(&log, &format!("database {database:?}: {sql}"));
            client.batch_execute(&sql).map_err(|e| Failure {
                code: Code::AfterStepFailed,
                message: format!(
                    "{sql} in database \"{database}\" failed: {}",
                    pgm_cluster::describe_pg_error(&e)
                ),
                remedy: Some("update that extension by hand (its new version may need something first), then run the remaining steps".into()),
                clusters: None,
            })?;
        }
    }
    Ok(())
}

/// Runs the reindex script the upgrade wrote for indexes (and views) whose
/// collation or Unicode version changed.
pub(crate) fn reindex_collation(
    printer: &Printer,
    upgraded: &Upgraded<'_>,
    server: &Server,
    run_dir: &RunDir,
) -> Result<(), Failure> {
    let Some(script) = upgraded.reindex_script.as_ref() else {
        // The checks found nothing that depends on a changed version.
        return Ok(());
    };
    if !script.exists() {
        return Err(Failure {
            code: Code::AfterStepFailed,
            message: format!("the reindex script {} is gone", script.display()),
            remedy: Some("run pg-migrate check on a copy to see what the collation checks find, or REINDEX by hand".into()),
            clusters: None,
        });
    }
    let command = upgraded
        .new_install
        .command(Tool::Psql)
        .map_err(|e| Failure::new(Code::AfterStepFailed, e))?
        .args(["-X", "--dbname=template1", "-f"])
        .arg(script);
    // Each statement's command tag, as psql prints it, is one done.
    const STATEMENTS: [&str; 4] = [
        "REINDEX",
        "REFRESH MATERIALIZED VIEW",
        "ALTER COLLATION",
        "ALTER DATABASE",
    ];
    let text = std::fs::read_to_string(script)
        .map_err(|e| Failure::new(Code::AfterStepFailed, format!("{}: {e}", script.display())))?;
    let total = text
        .lines()
        .filter(|l| STATEMENTS.iter().any(|s| l.starts_with(&format!("{s} "))))
        .count() as u64;
    let meter = printer.meter("reindex-collation", total, "statements");
    let mut done = 0;
    let result = run_client(
        command,
        server,
        "rebuilding collation-dependent indexes",
        &run_dir.log_dir().join("reindex-collation.log"),
        &mut |line| {
            if STATEMENTS.contains(&line) && done < total {
                done += 1;
                meter.set(done, 0);
            }
        },
    );
    meter.finish();
    result
}

/// Statistics the upgrade did not carry: the missing ones only, in stages,
/// where the new version can (18), else all of them in stages.
pub(crate) fn analyze(
    printer: &Printer,
    settings: &Settings,
    upgraded: &Upgraded<'_>,
    server: &Server,
    run_dir: &RunDir,
) -> Result<(), Failure> {
    let mut command = upgraded
        .new_install
        .command(Tool::Vacuumdb)
        .map_err(|e| Failure::new(Code::AfterStepFailed, e))?
        .args(["--all", "--analyze-in-stages"]);
    if upgraded.new_install.version.major.dumps_statistics() {
        command = command.arg("--missing-stats-only");
    }
    if settings.jobs > 1 {
        command = command.arg(format!("--jobs={}", settings.jobs));
    }
    // vacuumdb --all visits every database that takes connections (all
    // but template0) once per stage, and says so on a line of its own.
    let databases = user_databases(server)?.len() as u64 + 1;
    let total = databases * 3;
    let meter = printer.meter("analyze", total, "passes");
    let mut done = 0;
    let result = run_client(
        command,
        server,
        "gathering statistics (vacuumdb --analyze-in-stages)",
        &run_dir.log_dir().join("analyze.log"),
        &mut |line| {
            if line.starts_with("vacuumdb: processing database") && done < total {
                done += 1;
                meter.set(done, 0);
            }
        },
    );
    meter.finish();
    result
}
