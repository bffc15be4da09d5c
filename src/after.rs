//! The optional steps after an upgrade, each journaled with its own events
//! and outcome: `carry-config`, `update-extensions`, `reindex-collation`,
//! `post-upgrade` (the user's numbered scripts, each run once) and
//! `analyze`. They run at the end of an upgrade that asked for them, or
//! later by `pg-migrate post-upgrade -D NEW`. A failure stops the sequence
//! and is reported (exit status 5: the upgrade itself is complete).
//!
//! All but carry-config need the new server: pg-migrate starts it
//! privately (unix socket only, full durability) and stops it again, or
//! uses it if it already runs. From then on the new cluster has run, so
//! `revert` is no longer possible.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use pgm_cluster::command::PgCommand;
use pgm_cluster::{ClusterState, DataDir, Installation, Server, ServerStatus, Tool};

use crate::cli::{AfterSteps, Settings};
use crate::exit;
use crate::failure::{Code, Failure};
use crate::journal::{Journal, JournalView, Record};
use crate::report::ClusterCondition;
use crate::report::{AfterStep, ClusterStates, Event, Printer, StepStatus};
use crate::rundir::RunDir;

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
fn wanted(steps: &AfterSteps) -> Vec<&'static str> {
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
        crate::report::park_if_interrupted();
        pgm_cluster::faults::point(|| format!("before:{name}"));
        printer.emit(&Event::StepStart { step: name });
        let started = Instant::now();
        let result = (|| -> Result<(), Failure> {
            if name == "carry-config" {
                return carry_config(settings, printer, upgraded, run_dir);
            }
            if name == "verify" {
                crate::verify::preflight(settings, &upgraded.new_dir.path)?;
            }
            if server.is_none() {
                server = Some(new_server(settings, upgraded, run_dir)?);
            }
            let server = server.as_ref().expect("started above");
            match name {
                "verify" => crate::verify::run(
                    settings,
                    printer,
                    upgraded.new_install,
                    &upgraded.new_dir.path,
                    server,
                    run_dir,
                    settings.after.verify.expect("asked for"),
                ),
                "update-extensions" => update_extensions(server, run_dir),
                "reindex-collation" => reindex_collation(upgraded, server, run_dir),
                "post-upgrade" => post_upgrade(settings, printer, upgraded, server, run_dir),
                "analyze" => analyze(settings, upgraded, server, run_dir),
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
                    crate::engine::quote(&upgraded.new_dir.path),
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
fn flags_from(names: &[&str], from: &str, steps: &AfterSteps) -> String {
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
                    .map(crate::engine::quote)
                    .unwrap_or_default()
            ),
            other => format!("--{other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The new cluster's server for the steps: the running one if the user
/// started it, else one of our own (private socket, durable).
fn new_server(
    settings: &Settings,
    upgraded: &Upgraded<'_>,
    run_dir: &RunDir,
) -> Result<Server, Failure> {
    let dir = upgraded.new_dir;
    match dir.server_status() {
        Ok(ServerStatus::Running(pid)) => {
            let socket_dir = pid.socket_dir.clone().ok_or_else(|| Failure {
                code: Code::ServerRunning,
                message: format!(
                    "the server of {} runs without a unix socket, which pg-migrate connects through",
                    dir.path.display()
                ),
                remedy: Some("set unix_socket_directories, or stop the server (pg-migrate then starts it privately)".into()),
                clusters: None,
            })?;
            let endpoint = pgm_cluster::server::Endpoint {
                socket_dir,
                port: pid.port.unwrap_or(5432),
                user: settings.user.clone(),
            };
            endpoint
                .connect("template1")
                .map_err(|e| Failure::new(Code::NewCatalogFailed, e))?;
            return Ok(Server::attach(endpoint));
        }
        Ok(ServerStatus::StalePidFile(_)) => {
            return Err(Failure {
                code: Code::ServerRunning,
                message: format!(
                    "{} has a postmaster.pid but no server: it crashed or was killed",
                    dir.path.display()
                ),
                remedy: Some("start the new server once so that it recovers".into()),
                clusters: None,
            })
        }
        _ => {}
    }
    if let Ok(control) = dir.control() {
        if control.state != ClusterState::ShutDown {
            return Err(Failure {
                code: Code::ServerStartFailed,
                message: format!(
                    "the new cluster was not shut down cleanly (pg_control says \"{}\")",
                    control.state.describe()
                ),
                remedy: None,
                clusters: None,
            });
        }
    }
    let options = run_dir.plain_server_options(
        settings,
        false,
        run_dir.log_dir().join("new-server-after-upgrade.log"),
    );
    Server::start(upgraded.new_install, dir, &options)
        .map_err(|e| Failure::new(Code::ServerStartFailed, e))
}

/// Runs a client program of the new installation against `server`,
/// appending its output to `log`; the error names the program's last words.
fn run_client(command: PgCommand, server: &Server, what: &str, log: &Path) -> Result<(), Failure> {
    let command = command
        .arg("--host")
        .arg(&server.endpoint.socket_dir)
        .arg("--port")
        .arg(server.endpoint.port.to_string())
        .arg("--username")
        .arg(&server.endpoint.user);
    let line = command.command_line();
    let (status, captured) = command
        .run_unchecked()
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

fn append(log: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(file, "{text}");
    }
}

fn connect(server: &Server, database: &str) -> Result<postgres::Client, Failure> {
    server
        .connect(database)
        .map_err(|e| Failure::new(Code::NewCatalogFailed, e))
}

/// Databases that accept connections, template0 and template1 aside.
fn user_databases(server: &Server) -> Result<Vec<String>, Failure> {
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

/// `ALTER EXTENSION … UPDATE` for every extension older than the new
/// installation's default, in every database, over pg-migrate's own
/// connection (no database name goes through a script); what was run is
/// written to the log.
fn update_extensions(server: &Server, run_dir: &RunDir) -> Result<(), Failure> {
    let log = run_dir.log_dir().join("update-extensions.log");
    let mut databases = user_databases(server)?;
    databases.insert(0, "template1".into());
    for database in databases {
        let mut client = connect(server, &database)?;
        let names = pgm_catalog::outdated_extensions(&mut client, &database)
            .map_err(|e| Failure::new(Code::NewCatalogFailed, e))?;
        for name in names {
            let sql = format!("ALTER EXTENSION \"{}\" UPDATE", name.replace('"', "\"\""));
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
fn reindex_collation(
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
    run_client(
        command,
        server,
        "rebuilding collation-dependent indexes",
        &run_dir.log_dir().join("reindex-collation.log"),
    )
}

/// Statistics the upgrade did not carry: the missing ones only, in stages,
/// where the new version can (18), else all of them in stages.
fn analyze(
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
    if upgraded.new_install.version.major.number() >= 18 {
        command = command.arg("--missing-stats-only");
    }
    if settings.jobs > 1 {
        command = command.arg(format!("--jobs={}", settings.jobs));
    }
    run_client(
        command,
        server,
        "gathering statistics (vacuumdb --analyze-in-stages)",
        &run_dir.log_dir().join("analyze.log"),
    )
}

// ---------------------------------------------------------------------------
// carry-config

fn carry_config(
    settings: &Settings,
    printer: &Printer,
    upgraded: &Upgraded<'_>,
    run_dir: &RunDir,
) -> Result<(), Failure> {
    let log_dir = &run_dir.log_dir();
    let old_dir = upgraded.old_config_dir.as_ref().ok_or_else(|| Failure {
        code: Code::AfterStepFailed,
        message: "the old cluster's configuration directory is not known".into(),
        remedy: Some("pass it with -d".into()),
        clusters: None,
    })?;
    let new_dir = upgraded.new_dir.pg_ctl_dir().to_path_buf();
    let io = |path: &Path, e: std::io::Error| {
        Failure::new(Code::AfterStepFailed, format!("{}: {e}", path.display()))
    };
    let read = |path: &Path| std::fs::read_to_string(path).map_err(|e| io(path, e));
    let old_conf_path = old_dir.join("postgresql.conf");
    let old_conf = read(&old_conf_path)?;
    let new_conf_path = new_dir.join("postgresql.conf");
    let new_conf = read(&new_conf_path)?;
    // The new cluster's own files stay its own.
    let new_values: Vec<(String, String)> = [
        "data_directory",
        "hba_file",
        "ident_file",
        "external_pid_file",
    ]
    .iter()
    .filter_map(|name| crate::config::value_of(&new_conf, name).map(|v| (name.to_string(), v)))
    .collect();
    let old_major = DataDir::open(old_dir, None)
        .map(|d| d.major.number())
        .or_else(|_| {
            upgraded
                .old_version
                .as_deref()
                .and_then(|v| v.split('.').next()?.parse().ok())
                .ok_or(())
        })
        .unwrap_or(0);
    let new_major = upgraded.new_install.version.major.number();
    let wal_mb = upgraded
        .new_dir
        .control()
        .map(|c| u64::from(c.wal_segment_size) / (1024 * 1024))
        .unwrap_or(16);
    // Where the old cluster keeps its access files.
    let old_file = |setting: &str, default: &str| {
        crate::config::value_of(&old_conf, setting)
            .map(|v| {
                let p = PathBuf::from(v);
                if p.is_absolute() {
                    p
                } else {
                    old_dir.join(p)
                }
            })
            .unwrap_or_else(|| old_dir.join(default))
    };
    let new_file = |setting: &str, default: &str| {
        crate::config::value_of(&new_conf, setting)
            .map(|v| {
                let p = PathBuf::from(v);
                if p.is_absolute() {
                    p
                } else {
                    new_dir.join(p)
                }
            })
            .unwrap_or_else(|| new_dir.join(default))
    };
    let mut carried: Vec<(PathBuf, String)> = Vec::new();
    let mut changes = Vec::new();
    let (conf, conf_changes) =
        crate::config::carry(&old_conf, old_major, new_major, wal_mb, &new_values);
    carried.push((new_conf_path.clone(), conf));
    changes.extend(conf_changes.into_iter().map(|c| ("postgresql.conf", c)));
    let old_auto = old_dir.join("postgresql.auto.conf");
    if old_auto.exists() {
        let (auto, auto_changes) =
            crate::config::carry(&read(&old_auto)?, old_major, new_major, wal_mb, &[]);
        carried.push((upgraded.new_dir.path.join("postgresql.auto.conf"), auto));
        changes.extend(
            auto_changes
                .into_iter()
                .map(|c| ("postgresql.auto.conf", c)),
        );
    }
    for (setting, default) in [("hba_file", "pg_hba.conf"), ("ident_file", "pg_ident.conf")] {
        let from = old_file(setting, default);
        carried.push((new_file(setting, default), read(&from)?));
    }
    // The new cluster's files as they were, to put back if the carried
    // ones cannot be made acceptable (and for the record).
    let saved = crate::journal::dir(&upgraded.new_dir.path).join("carry-config");
    std::fs::create_dir_all(&saved).map_err(|e| io(&saved, e))?;
    let mut originals = Vec::new();
    for (path, _) in &carried {
        let text = std::fs::read(path).unwrap_or_default();
        let name = path.file_name().unwrap_or_default();
        let keep = saved.join(name);
        if !keep.exists() {
            std::fs::write(&keep, &text).map_err(|e| io(&keep, e))?;
        }
        originals.push((path.clone(), text));
    }
    let put_back = |originals: &[(PathBuf, Vec<u8>)]| {
        for (path, text) in originals {
            let _ = std::fs::write(path, text);
        }
    };
    for (path, text) in &carried {
        if let Err(e) = std::fs::write(path, text) {
            put_back(&originals);
            return Err(io(path, e));
        }
    }
    // The new server judges: what it rejects is commented out, with its
    // reason; anything else it cannot accept undoes the step.
    let mut rejected_all = Vec::new();
    let mut accepted = false;
    for _ in 0..50 {
        let verdict = validate(upgraded, log_dir);
        let Err(output) = verdict else {
            accepted = true;
            break;
        };
        let rejected = crate::config::rejected_settings(&output);
        let mut fixed = false;
        for (setting, message) in &rejected {
            for (path, text) in carried.iter_mut() {
                if !path.ends_with("postgresql.conf") && !path.ends_with("postgresql.auto.conf") {
                    continue;
                }
                let (new_text, found) =
                    crate::config::comment_out(text, setting, "the new server rejects it");
                if found {
                    *text = new_text;
                    fixed = true;
                    let file = path
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    rejected_all.push((file, setting.clone(), message.clone()));
                    let _ = std::fs::write(&*path, &*text);
                }
            }
        }
        if !fixed {
            put_back(&originals);
            return Err(Failure {
                code: Code::AfterStepFailed,
                message: format!(
                    "the new server does not accept the carried configuration: {}",
                    output.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ")
                ),
                remedy: Some(format!(
                    "the new cluster's own configuration is back in place (a copy is in {}); carry the settings by hand",
                    saved.display()
                )),
                clusters: None,
            });
        }
    }
    if !accepted {
        put_back(&originals);
        return Err(Failure {
            code: Code::AfterStepFailed,
            message: "the new server still rejects the carried configuration after commenting out 50 settings".into(),
            remedy: Some(format!(
                "the new cluster's own configuration is back in place (a copy is in {}); carry the settings by hand",
                saved.display()
            )),
            clusters: None,
        });
    }
    // Certificate and key files named relative to the old data directory
    // (the defaults server.crt and server.key among them) come along.
    let copied =
        copy_relative_files(upgraded, &old_conf, &carried).inspect_err(|_| put_back(&originals))?;
    // Last, a real start: what postgres -C does not load (certificates,
    // shared libraries) must work too, or the step is undone.
    if let Err(e) = new_server(settings, upgraded, run_dir).and_then(|server| {
        server
            .stop()
            .map_err(|e| Failure::new(Code::ServerStopFailed, e))
    }) {
        put_back(&originals);
        for path in &copied {
            let _ = std::fs::remove_file(path);
        }
        return Err(Failure {
            code: Code::AfterStepFailed,
            message: format!(
                "the new server does not start with the carried configuration: {}",
                e.message
            ),
            remedy: Some(format!(
                "the new cluster's own configuration is back in place (a copy is in {}); carry the settings by hand",
                saved.display()
            )),
            clusters: None,
        });
    }
    for path in &copied {
        printer.emit(&Event::ConfigChange {
            file: "postgresql.conf".into(),
            setting: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            action: "file_copied",
            old_value: None,
            new_setting: None,
            new_value: Some(path.display().to_string()),
            reason:
                "a file the settings name relative to the data directory, copied from the old one"
                    .into(),
        });
    }
    for (file, change) in &changes {
        printer.emit(&Event::ConfigChange {
            file: file.to_string(),
            setting: change.setting.clone(),
            action: change.action,
            old_value: change.old_value.clone(),
            new_setting: change.new_setting.clone(),
            new_value: change.new_value.clone(),
            reason: change.reason.clone(),
        });
    }
    for (file, setting, message) in rejected_all {
        printer.emit(&Event::ConfigChange {
            file,
            setting,
            action: "removed",
            old_value: None,
            new_setting: None,
            new_value: None,
            reason: format!("the new server rejects it: {message}"),
        });
    }
    Ok(())
}

/// SSL settings whose files a relative path puts in the data directory,
/// with the default of those that have one.
const DATA_DIR_FILES: [(&str, Option<&str>); 6] = [
    ("ssl_cert_file", Some("server.crt")),
    ("ssl_key_file", Some("server.key")),
    ("ssl_ca_file", None),
    ("ssl_crl_file", None),
    ("ssl_crl_dir", None),
    ("ssl_dh_params_file", None),
];

/// Copies the files the carried settings name relative to the data
/// directory (when ssl is on, or the setting is explicit) from the old data
/// directory into the new one, where the new one lacks them; returns what
/// was copied.
fn copy_relative_files(
    upgraded: &Upgraded<'_>,
    old_conf: &str,
    carried: &[(PathBuf, String)],
) -> Result<Vec<PathBuf>, Failure> {
    let Some(old_data) = upgraded.old_datadir.as_ref() else {
        return Ok(Vec::new());
    };
    let conf = carried
        .iter()
        .find(|(p, _)| p.ends_with("postgresql.conf"))
        .map(|(_, t)| t.as_str())
        .unwrap_or(old_conf);
    let ssl_on = crate::config::value_of(conf, "ssl")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "on" | "true" | "yes" | "1"));
    let mut copied = Vec::new();
    for (setting, default) in DATA_DIR_FILES {
        let value = match (crate::config::value_of(conf, setting), default) {
            (Some(v), _) if !v.is_empty() => v,
            (None, Some(d)) if ssl_on => d.to_string(),
            _ => continue,
        };
        let relative = PathBuf::from(&value);
        if relative.is_absolute() {
            continue;
        }
        let (from, to) = (
            old_data.join(&relative),
            upgraded.new_dir.path.join(&relative),
        );
        if !from.is_file() || to.exists() {
            continue;
        }
        pgm_cluster::datadir::copy_file(&from, &to)
            .map_err(|e| Failure::new(Code::AfterStepFailed, format!("{}: {e}", to.display())))?;
        copied.push(to);
    }
    Ok(copied)
}

/// Whether the new server accepts its configuration files: `postgres -C`
/// reads them as a start would, without starting. The server's words on
/// failure.
fn validate(upgraded: &Upgraded<'_>, log_dir: &Path) -> Result<(), String> {
    let command = upgraded
        .new_install
        .command(Tool::Postgres)
        .map_err(|e| e.to_string())?
        .arg("-D")
        .arg(upgraded.new_dir.pg_ctl_dir())
        .args(["-C", "data_directory"]);
    let (status, captured) = command.run_unchecked().map_err(|e| e.to_string())?;
    append(
        &log_dir.join("carry-config.log"),
        &format!(
            "{}\n{}{}",
            command.command_line(),
            captured.stdout,
            captured.stderr
        ),
    );
    if status.success() {
        Ok(())
    } else {
        Err(captured.stderr)
    }
}

// ---------------------------------------------------------------------------
// post-upgrade scripts

/// One script of the post-upgrade directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub number: u64,
    pub name: String,
    pub path: PathBuf,
    pub shell: bool,
}

/// The scripts named `NN-description.sql` or `NN-description.sh`, in
/// numeric order (then by name); other files are not scripts.
pub fn list_scripts(dir: &Path) -> std::io::Result<Vec<Script>> {
    let mut scripts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let (stem, shell) = if let Some(stem) = name.strip_suffix(".sql") {
            (stem, false)
        } else if let Some(stem) = name.strip_suffix(".sh") {
            (stem, true)
        } else {
            continue;
        };
        let Some((digits, description)) = stem.split_once('-') else {
            continue;
        };
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || description.is_empty()
        {
            continue;
        }
        let Ok(number) = digits.parse::<u64>() else {
            continue;
        };
        if !entry.file_type()?.is_file() && !entry.path().is_file() {
            continue;
        }
        scripts.push(Script {
            number,
            name,
            path: entry.path(),
            shell,
        });
    }
    scripts.sort_by(|a, b| a.number.cmp(&b.number).then_with(|| a.name.cmp(&b.name)));
    Ok(scripts)
}

/// What a .sql script's header comment asks for: the database to run in
/// (`-- database: NAME`; every database when absent) and whether to wrap it
/// in one transaction (`-- transaction: none` opts out).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub database: Option<String>,
    pub single_transaction: bool,
}

pub fn read_header(text: &str) -> Header {
    let mut header = Header {
        database: None,
        single_transaction: true,
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some(comment) = line.strip_prefix("--") else {
            break;
        };
        let Some((key, value)) = comment.split_once(':') else {
            continue;
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "database" => header.database = Some(value.trim().to_string()),
            "transaction" => header.single_transaction = !value.trim().eq_ignore_ascii_case("none"),
            _ => {}
        }
    }
    header
}

/// `pg_migrate.d/post-upgrade.json`: the scripts that ran to the end,
/// per database, with the checksum of the text that ran.
const MARKERS: &str = "post-upgrade.json";

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Markers {
    /// `script name` → database (`""` for a shell script) → record.
    done: BTreeMap<String, BTreeMap<String, Marker>>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Marker {
    sha256: String,
    finished_unix_ms: u64,
    duration_ms: u64,
}

fn read_markers(new_datadir: &Path) -> Markers {
    std::fs::read(crate::journal::dir(new_datadir).join(MARKERS))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Replaces the marker file atomically (write, fsync, rename, fsync).
fn write_markers(new_datadir: &Path, markers: &Markers) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(markers).map_err(std::io::Error::other)?;
    crate::journal::write_atomically(&crate::journal::dir(new_datadir).join(MARKERS), &text)
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn post_upgrade(
    settings: &Settings,
    printer: &Printer,
    upgraded: &Upgraded<'_>,
    server: &Server,
    run_dir: &RunDir,
) -> Result<(), Failure> {
    let dir = settings
        .after
        .post_upgrade
        .as_ref()
        .expect("the step runs only with --post-upgrade");
    let scripts = list_scripts(dir).map_err(|e| Failure {
        code: Code::AfterStepFailed,
        message: format!("{}: {e}", dir.display()),
        remedy: Some("name a readable directory of NN-description.sql / .sh scripts".into()),
        clusters: None,
    })?;
    let new_path = &upgraded.new_dir.path;
    let mut markers = read_markers(new_path);
    let log = run_dir.log_dir().join("post-upgrade.log");
    for script in scripts {
        let text = std::fs::read(&script.path).map_err(|e| {
            Failure::new(
                Code::AfterStepFailed,
                format!("{}: {e}", script.path.display()),
            )
        })?;
        let checksum = sha256_hex(&text);
        let targets: Vec<Option<String>> = if script.shell {
            vec![None]
        } else {
            match read_header(&String::from_utf8_lossy(&text)).database {
                Some(database) => vec![Some(database)],
                None => user_databases(server)?.into_iter().map(Some).collect(),
            }
        };
        for database in targets {
            let key = database.clone().unwrap_or_default();
            if let Some(done) = markers.done.get(&script.name).and_then(|m| m.get(&key)) {
                let changed = done.sha256 != checksum;
                printer.emit(&Event::Script {
                    name: script.name.clone(),
                    database: database.clone(),
                    status: "skipped",
                    duration_ms: 0,
                    message: Some(if changed {
                        "it ran before; its text has changed since (pg-migrate does not run a script twice: give a changed migration a new number)".into()
                    } else {
                        "it ran before".into()
                    }),
                });
                continue;
            }
            let started = Instant::now();
            let result = if script.shell {
                run_shell_script(settings, upgraded, server, &script, &log)
            } else {
                run_sql_script(
                    upgraded,
                    server,
                    &script,
                    &text,
                    database.as_deref().unwrap_or("postgres"),
                    &log,
                )
            };
            let duration_ms = started.elapsed().as_millis() as u64;
            match result {
                Ok(()) => {
                    markers.done.entry(script.name.clone()).or_default().insert(
                        key,
                        Marker {
                            sha256: checksum.clone(),
                            finished_unix_ms: now_ms(),
                            duration_ms,
                        },
                    );
                    write_markers(new_path, &markers).map_err(|e| {
                        Failure::new(Code::JournalFailed, format!("{}: {e}", MARKERS))
                    })?;
                    printer.emit(&Event::Script {
                        name: script.name.clone(),
                        database,
                        status: "ran",
                        duration_ms,
                        message: None,
                    });
                }
                Err(why) => {
                    printer.emit(&Event::Script {
                        name: script.name.clone(),
                        database: database.clone(),
                        status: "failed",
                        duration_ms,
                        message: Some(why.clone()),
                    });
                    return Err(Failure {
                        code: Code::PostUpgradeScriptFailed,
                        message: format!(
                            "{}{} failed: {why} (full output: {})",
                            script.name,
                            database.map(|d| format!(" in database \"{d}\"")).unwrap_or_default(),
                            log.display()
                        ),
                        remedy: Some("fix the script (or the data it trips on); a re-run skips the scripts that finished and starts at this one".into()),
                        clusters: None,
                    });
                }
            }
        }
    }
    Ok(())
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn run_sql_script(
    upgraded: &Upgraded<'_>,
    server: &Server,
    script: &Script,
    text: &[u8],
    database: &str,
    log: &Path,
) -> Result<(), String> {
    let header = read_header(&String::from_utf8_lossy(text));
    let mut command = upgraded
        .new_install
        .command(Tool::Psql)
        .map_err(|e| e.to_string())?
        .args(["-X", "-v", "ON_ERROR_STOP=1"]);
    if header.single_transaction {
        command = command.arg("--single-transaction");
    }
    let command = command
        .arg("--host")
        .arg(&server.endpoint.socket_dir)
        .arg("--port")
        .arg(server.endpoint.port.to_string())
        .arg("--username")
        .arg(&server.endpoint.user)
        .arg(format!("--dbname={}", conninfo_dbname(database)))
        .arg("-f")
        .arg(&script.path);
    let line = command.command_line();
    let (status, captured) = command.run_unchecked().map_err(|e| e.to_string())?;
    append(
        log,
        &format!("command: {line}\n{}{}", captured.stdout, captured.stderr),
    );
    if status.success() {
        Ok(())
    } else {
        Err(last_lines(&captured.stderr, 3))
    }
}

fn conninfo_dbname(name: &str) -> String {
    format!(
        "dbname='{}'",
        name.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// A shell script runs with pg-migrate's own environment (an application's
/// migration may need its settings), the connection variables pointing at
/// the new server, and the versions.
fn run_shell_script(
    settings: &Settings,
    upgraded: &Upgraded<'_>,
    server: &Server,
    script: &Script,
    log: &Path,
) -> Result<(), String> {
    let new = upgraded.new_install;
    let path = format!(
        "{}:{}",
        new.bindir.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    let old_major = upgraded
        .old_version
        .as_deref()
        .and_then(|v| v.split('.').next())
        .unwrap_or("")
        .to_string();
    let mut command = std::process::Command::new("/bin/sh");
    command.arg(&script.path);
    // Variables that would send a client elsewhere go; the connection and
    // PGDATA name the new cluster.
    for key in [
        "PGHOSTADDR",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGTARGETSESSIONATTRS",
        "PGLOADBALANCEHOSTS",
    ] {
        command.env_remove(key);
    }
    command
        .env("PATH", path)
        .env("PGDATA", &upgraded.new_dir.path)
        .env("PGHOST", &server.endpoint.socket_dir)
        .env("PGPORT", server.endpoint.port.to_string())
        .env("PGUSER", &server.endpoint.user)
        .env("PGDATABASE", "postgres")
        .env("PG_MIGRATE_NEW_VERSION", &new.version.text)
        .env(
            "PG_MIGRATE_NEW_MAJOR",
            new.version.major.number().to_string(),
        )
        .env(
            "PG_MIGRATE_OLD_VERSION",
            upgraded.old_version.clone().unwrap_or_default(),
        )
        .env("PG_MIGRATE_OLD_MAJOR", old_major)
        .env("PG_MIGRATE_NEW_DATADIR", &upgraded.new_dir.path)
        .env("PG_MIGRATE_NEW_BINDIR", &new.bindir)
        .env("PG_MIGRATE_JOBS", settings.jobs.to_string())
        .stdin(std::process::Stdio::null());
    if let Some(dir) = script.path.parent() {
        command.current_dir(dir);
    }
    let output = command
        .output()
        .map_err(|e| format!("it could not be started: {e}"))?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    append(
        log,
        &format!(
            "command: /bin/sh {}\n{stdout}{stderr}",
            script.path.display()
        ),
    );
    if output.status.success() {
        return Ok(());
    }
    let said = last_lines(&stderr, 3);
    Err(if said.is_empty() {
        format!("it exited with {}", output.status)
    } else {
        format!("it exited with {}: {said}", output.status)
    })
}

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
    match crate::journal::read_state(&settings.new_datadir) {
        Some(crate::journal::State::Complete) => {}
        _ => {
            return fail_early(
                Code::UnfinishedUpgrade,
                format!(
                    "{} holds no finished upgrade",
                    settings.new_datadir.display()
                ),
                &format!(
                    "finish it first: pg-migrate resume -D {}",
                    crate::engine::quote(&settings.new_datadir)
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
    let new_dir = match DataDir::open(&settings.new_datadir, None) {
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
        old: crate::report::PlanSide::new(
            &settings.old_bindir,
            &settings.old_datadir,
            settings.old_port,
        ),
        new: crate::report::PlanSide::new(&new_install.bindir, &new_dir.path, settings.new_port),
        user: settings.user.clone(),
        jobs: settings.jobs,
        run_dir: run_dir.path().display().to_string(),
        live_check_allowed: false,
        backup_dir: None,
        note: None,
    });
    let old_config_dir = (!settings.old_datadir.as_os_str().is_empty()).then(|| {
        DataDir::open(&settings.old_datadir, None)
            .map(|d| d.pg_ctl_dir().to_path_buf())
            .unwrap_or_else(|_| settings.old_datadir.clone())
    });
    let upgraded = Upgraded {
        new_install: &new_install,
        new_dir: &new_dir,
        old_config_dir,
        old_datadir: (!settings.old_datadir.as_os_str().is_empty())
            .then(|| settings.old_datadir.clone()),
        old_version: old_version.clone(),
        reindex_script: view.reindex_script(),
    };
    let (steps, failure) = run_steps(settings, printer, &run_dir, &upgraded);
    // Link and swap mode left the old cluster disabled; this run did not touch it.
    let global = settings.old_datadir.join("global");
    let old_state = if !settings.old_datadir.as_os_str().is_empty()
        && !global.join("pg_control").exists()
        && global.join("pg_control.old").exists()
    {
        ClusterCondition::Protected
    } else {
        ClusterCondition::Unchanged
    };
    let exit_code = match failure {
        None => exit::SUCCESS,
        Some(failure) => {
            let code = failure_exit_code(failure.code);
            printer.emit(&Event::failure(
                failure,
                ClusterStates {
                    old: old_state,
                    new: ClusterCondition::Upgraded,
                },
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
        after: Some(steps),
        logs,
        next_steps: Vec::new(),
    });
    exit_code
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
pub fn result_of(exit_code: i32) -> &'static str {
    match exit_code {
        exit::SUCCESS => "ok",
        exit::VERIFY_FAILED => "verify_failed",
        _ => "after_step_failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_found_by_name_and_ordered_by_number() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "10-later.sql",
            "2-second.sh",
            "01-first.sql",
            "README.md",
            "3_wrong.sql",
            "-nonumber.sql",
            "4-.sql",
            "02-second-too.sql",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let names: Vec<String> = list_scripts(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            [
                "01-first.sql",
                "02-second-too.sql",
                "2-second.sh",
                "10-later.sql"
            ]
        );
    }

    #[test]
    fn the_header_names_the_database_and_the_transaction() {
        assert_eq!(
            read_header(
                "-- Fix prices\n-- database: shop\n\nUPDATE t SET x = 1;\n-- database: not this\n"
            ),
            Header {
                database: Some("shop".into()),
                single_transaction: true
            }
        );
        assert_eq!(
            read_header("-- Transaction: none\nCREATE INDEX CONCURRENTLY i ON t (x);"),
            Header {
                database: None,
                single_transaction: false
            }
        );
        assert_eq!(read_header("SELECT 1;").database, None);
    }
}
