//! The optional steps after an upgrade, each journaled with its own events
//! and outcome: `carry-config`, `update-extensions`, `reindex-collation`,
//! `post-upgrade` (the user's numbered scripts, each run once) and
//! `analyze`. They run at the end of an upgrade that asked for them, or
//! later by `pg-migrate post-upgrade -D NEW` (commands/post_upgrade.rs). A
//! failure stops the sequence and is reported (exit status 5: the upgrade
//! itself is complete).
//!
//! All but carry-config need the new server: pg-migrate starts it
//! privately (unix socket only, full durability) and stops it again, or
//! uses it if it already runs. From then on the new cluster has run, so
//! `revert` is no longer possible.

use crate::cli::{AfterSteps, Settings};
use crate::exit;
use crate::failure::{Code, Failure};
use crate::journal::{Journal, Record};
use crate::output::{AfterStep, Event, Printer, StepStatus};
use crate::rundir::RunDir;
use pgm_cluster::command::PgCommand;
use pgm_cluster::{DataDir, Installation, Server};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod carry_config;
mod scripts;
mod steps;

pub(crate) use carry_config::*;
pub(crate) use scripts::*;
pub(crate) use steps::*;

/// What the steps need to know about the upgrade they follow.
pub struct Upgraded<'a> {
    pub new_install: &'a Installation,
    pub new_dir: &'a DataDir,
    /// The old cluster's configuration directory (carry-config), if known.
    pub old_config_dir: Option<PathBuf>,
    /// The old cluster's data directory (files its settings name relatively).
    pub old_datadir: Option<PathBuf>,
    pub old_version: Option<String>,
    /// The scripts the upgrade wrote (journal `scripts` record).
    pub reindex_script: Option<PathBuf>,
}

/// The steps in the order they run.
pub(crate) fn wanted(steps: &AfterSteps) -> Vec<&'static str> {
    let mut out = Vec::new();
    // First: the result as the upgrade made it, before any step changes it.
    if steps.verify.is_some() {
        out.push("verify");
    }
    if steps.carry_config {
        out.push("carry-config");
    }
    if steps.update_extensions {
        out.push("update-extensions");
    }
    if steps.reindex_collation {
        out.push("reindex-collation");
    }
    if steps.post_upgrade.is_some() {
        out.push("post-upgrade");
    }
    if steps.analyze {
        out.push("analyze");
    }
    out
}

/// Runs the asked-for steps; how each ended, and the first failure.
pub fn run_steps(
    settings: &Settings,
    printer: &Printer,
    run_dir: &RunDir,
    upgraded: &Upgraded<'_>,
) -> (Vec<AfterStep>, Option<Failure>) {
    let names = wanted(&settings.after);
    let mut outcome: Vec<AfterStep> = Vec::new();
    let mut server: Option<Server> = None;
    let mut failure = None;
    let mut journal = match Journal::open(&upgraded.new_dir.path) {
        Ok(journal) => Some(journal),
        Err(e) => {
            failure = Some(Failure::new(
                Code::JournalFailed,
                format!(
                    "{}: {e}",
                    crate::journal::dir(&upgraded.new_dir.path).display()
                ),
            ));
            None
        }
    };
    for name in names.iter().copied() {
        if failure.is_some() {
            outcome.push(AfterStep {
                step: name,
                status: StepStatus::NotRun,
            });
            continue;
        }
        crate::output::park_if_interrupted();
        pgm_cluster::faults::point(|| format!("before:{name}"));
        printer.emit(&Event::StepStart { step: name });
        let started = Instant::now();
        let result = (|| -> Result<(), Failure> {
            if name == "carry-config" {
                return carry_config(settings, printer, upgraded, run_dir);
            }
            if name == "verify" {
                crate::proving::preflight(settings, &upgraded.new_dir.path)?;
            }
            if server.is_none() {
                server = Some(new_server(settings, upgraded, run_dir)?);
            }
            let server = server.as_ref().expect("started above");
            match name {
                "verify" => crate::proving::run(
                    settings,
                    printer,
                    upgraded.new_install,
                    &upgraded.new_dir.path,
                    server,
                    run_dir,
                    settings.after.verify.expect("asked for"),
                ),
                "update-extensions" => update_extensions(server, run_dir),
                "reindex-collation" => reindex_collation(printer, upgraded, server, run_dir),
                "post-upgrade" => post_upgrade(settings, printer, upgraded, server, run_dir),
                "analyze" => analyze(printer, settings, upgraded, server, run_dir),
                _ => unreachable!("every step is matched"),
            }
        })();
        let status = StepStatus::of(&result);
        printer.emit(&Event::StepEnd {
            step: name,
            status,
            duration_ms: started.elapsed().as_millis() as u64,
        });
        let detail = result.as_ref().err().map(|f| f.message.clone());
        let recorded = journal.as_mut().map(|j| {
            j.record(Record::AfterStep {
                step: name.to_string(),
                status: status.as_str().to_string(),
                message: detail.clone(),
            })
        });
        outcome.push(AfterStep { step: name, status });
        if let Some(Err(e)) = recorded {
            if result.is_ok() {
                failure = Some(Failure::new(Code::JournalFailed, e));
                continue;
            }
        }
        if let Err(e) = result {
            failure = Some(Failure {
                code: e.code,
                message: format!("step {name}: {}", e.message),
                remedy: Some(format!(
                    "{}the upgrade itself is complete; fix the cause and run only this step and the ones after it again: pg-migrate post-upgrade -D {} {}",
                    e.remedy.map(|r| format!("{r}; ")).unwrap_or_default(),
                    crate::support::quote(&upgraded.new_dir.path),
                    flags_from(&names, name, &settings.after)
                )),
                clusters: None,
            });
        }
    }
    if let Some(server) = server {
        if let Err(e) = server.stop() {
            failure.get_or_insert(Failure::new(Code::ServerStopFailed, e));
        }
    }
    (outcome, failure)
}

/// The flags that re-run `from` and the steps after it.
pub(crate) fn flags_from(names: &[&str], from: &str, steps: &AfterSteps) -> String {
    names
        .iter()
        .skip_while(|n| **n != from)
        .map(|n| match *n {
            "verify" => match steps.verify {
                Some(v) if v.mode == crate::cli::VerifyMode::Full => "--verify=full".into(),
                _ => "--verify".into(),
            },
            "post-upgrade" => format!(
                "--post-upgrade {}",
                steps
                    .post_upgrade
                    .as_deref()
                    .map(crate::support::quote)
                    .unwrap_or_default()
            ),
            other => format!("--{other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The new cluster's server for the steps: the running one if the user
/// started it, else one of our own (private socket, durable).
pub(crate) fn new_server(
    settings: &Settings,
    upgraded: &Upgraded<'_>,
    run_dir: &RunDir,
) -> Result<Server, Failure> {
    crate::rundir::running_or_private(
        settings,
        run_dir,
        upgraded.new_install,
        upgraded.new_dir,
        false,
        run_dir.log_dir().join("new-server-after-upgrade.log"),
    )
    .map(|(server, _)| server)
}

/// Runs a client program of the new installation against `server`,
/// appending its output to `log`; the error names the program's last words.
pub(crate) fn run_client(
    command: PgCommand,
    server: &Server,
    what: &str,
    log: &Path,
    on_line: &mut dyn FnMut(&str),
) -> Result<(), Failure> {
    let command = command
        .arg("--host")
        .arg(&server.endpoint.socket_dir)
        .arg("--port")
        .arg(server.endpoint.port.to_string())
        .arg("--username")
        .arg(&server.endpoint.user);
    let line = command.command_line();
    let (status, captured) = command
        .run_watching(on_line)
        .map_err(|e| Failure::new(Code::AfterStepFailed, e))?;
    append(
        log,
        &format!("command: {line}\n{}{}", captured.stdout, captured.stderr),
    );
    if status.success() {
        return Ok(());
    }
    let tail: Vec<&str> = captured.stderr.trim_end().lines().collect();
    Err(Failure {
        code: Code::AfterStepFailed,
        message: format!(
            "{what} failed: {} (full output: {})",
            tail[tail.len().saturating_sub(5)..].join("\n"),
            log.display()
        ),
        remedy: None,
        clusters: None,
    })
}

pub(crate) fn append(log: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(file, "{text}");
    }
}

pub(crate) fn connect(server: &Server, database: &str) -> Result<postgres::Client, Failure> {
    server
        .connect(database)
        .map_err(|e| Failure::new(Code::NewCatalogFailed, e))
}

/// Databases that accept connections, template0 and template1 aside.
pub(crate) fn user_databases(server: &Server) -> Result<Vec<String>, Failure> {
    let mut client = connect(server, "template1")?;
    let rows = client
        .query(
            "SELECT datname::text FROM pg_catalog.pg_database
              WHERE datallowconn AND datname NOT IN ('template0', 'template1') ORDER BY oid",
            &[],
        )
        .map_err(|e| Failure::new(Code::NewCatalogFailed, pgm_cluster::describe_pg_error(&e)))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The exit status of a failed step: differences `--verify` found have
/// their own.
pub fn failure_exit_code(code: Code) -> i32 {
    if code == Code::VerifyFoundDifferences {
        exit::VERIFY_FAILED
    } else {
        exit::AFTER_STEP_FAILED
    }
}

/// The summary's `result` for a run of the steps.
pub fn result_of(exit_code: i32) -> crate::output::RunResult {
    use crate::output::RunResult;
    match exit_code {
        exit::SUCCESS => RunResult::Ok,
        exit::VERIFY_FAILED => RunResult::VerifyFailed,
        _ => RunResult::AfterStepFailed,
    }
}
