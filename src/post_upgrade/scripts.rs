//! `--post-upgrade DIR`: the operator's numbered SQL and shell scripts, each run
//! once (a marker per script and database, with its checksum, in
//! pg_migrate.d), in order, stopping at the first that fails.

use crate::cli::Settings;
use crate::failure::{Code, Failure};
use crate::output::{Event, Printer};
use crate::rundir::RunDir;
use pgm_cluster::{Server, Tool};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[allow(unused_imports)]
use super::*;

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
pub(crate) const MARKERS: &str = "post-upgrade.json";

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Markers {
    /// `script name` → database (`""` for a shell script) → record.
    pub(crate) done: BTreeMap<String, BTreeMap<String, Marker>>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Marker {
    sha256: String,
    pub(crate) finished_unix_ms: u64,
    pub(crate) duration_ms: u64,
}

pub(crate) fn read_markers(new_datadir: &Path) -> Markers {
    std::fs::read(crate::journal::dir(new_datadir).join(MARKERS))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Replaces the marker file atomically (write, fsync, rename, fsync).
pub(crate) fn write_markers(new_datadir: &Path, markers: &Markers) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(markers).map_err(std::io::Error::other)?;
    crate::journal::write_atomically(&crate::journal::dir(new_datadir).join(MARKERS), &text)
}

pub(crate) fn post_upgrade(
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
        let checksum = crate::support::sha256_hex(&text);
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

pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub(crate) fn run_sql_script(
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

pub(crate) fn conninfo_dbname(name: &str) -> String {
    format!(
        "dbname='{}'",
        name.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// A shell script runs with pg-migrate's own environment (an application's
/// migration may need its settings), the connection variables pointing at
/// the new server, and the versions.
pub(crate) fn run_shell_script(
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
