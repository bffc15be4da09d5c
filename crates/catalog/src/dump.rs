//! Schema-only binary-upgrade dump of the old cluster and its restore into
//! the new one, always with the new installation's client programs (they
//! talk to every older server).

use std::io::Write;
use std::path::Path;

use pgm_cluster::command::PgCommand;
use pgm_cluster::server::Endpoint;
use pgm_cluster::{Installation, PgMajor, Tool};

use crate::{Error, Serial};

/// What the per-database dump carries besides the schema.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// The new installation's major (decides the flags its pg_dump takes).
    pub new_major: PgMajor,
    /// Carry optimizer statistics (18 and later can).
    pub statistics: bool,
    /// Let the dump carry sequence state where it can (18): false when the
    /// sequences' files are carried instead (`prepare`: their values would
    /// be stale by the cutover).
    pub sequence_data: bool,
    /// Dump in the snapshot another transaction exported (`prepare`).
    pub snapshot: Option<String>,
    /// Give up instead of waiting longer than this for a table's lock (a
    /// live server: pg_dump must not sit behind a long DDL holding its
    /// snapshot open).
    pub lock_wait_timeout: Option<&'static str>,
}

impl DumpOptions {
    /// 18's pg_dump carries sequence state in the dump; before 18 (or
    /// when asked) the sequences' files are transferred like tables.
    pub fn sequences_in_dump(&self) -> bool {
        self.sequence_data && self.new_major.dumps_statistics()
    }
}

/// `--transaction-size` for pg_restore: batches commits (17 and later), kept
/// small enough with `-j` that the parallel restores do not exhaust the lock table.
pub fn restore_transaction_size(new_major: PgMajor, jobs: usize) -> Option<u32> {
    new_major
        .pg_restore_has_transaction_size()
        .then(|| (1000 / jobs.max(1) as u32).max(10))
}

/// Every client program: no read-only default transactions in the way, no
/// psqlrc, and the PG* environment cleared by PgCommand.
pub(crate) fn client(install: &Installation, tool: Tool) -> Result<PgCommand, Error> {
    Ok(install
        .command(tool)?
        .env("PGOPTIONS", "-c default_transaction_read_only=false"))
}

/// Runs a program, appending its command line and output to `log`.
pub(crate) fn run_logged(command: PgCommand, what: &str, log: &Path) -> Result<(), Error> {
    let line = command.command_line();
    let result = command.run_unchecked();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(log, e))?;
    let (status, captured) = result?;
    writeln!(
        file,
        "command: {line}\n{}{}",
        captured.stdout, captured.stderr
    )
    .map_err(|e| Error::io(log, e))?;
    if status.success() {
        return Ok(());
    }
    let tail: Vec<&str> = captured.stderr.trim_end().lines().collect();
    let detail = tail[tail.len().saturating_sub(5)..].join("\n");
    Err(Error::Program {
        what: what.to_string(),
        detail: if detail.is_empty() {
            status.to_string()
        } else {
            detail
        },
        log: log.to_path_buf(),
    })
}

/// A libpq connection string naming one database, quoted so that any name works.
pub(crate) fn dbname_conninfo(name: &str) -> String {
    format!(
        "dbname='{}'",
        name.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

pub fn dump_globals(
    install: &Installation,
    conn: &Endpoint,
    out: &Path,
    log: &Path,
) -> Result<(), Error> {
    let command = client(install, Tool::PgDumpall)?
        .args(conn.args())
        .args([
            "--globals-only",
            "--quote-all-identifiers",
            "--binary-upgrade",
            "--no-sync",
            "-f",
        ])
        .arg(out);
    run_logged(
        command,
        "dumping roles and tablespaces (pg_dumpall --globals-only)",
        log,
    )
}

pub fn dump_database(
    install: &Installation,
    conn: &Endpoint,
    database: &str,
    out: &Path,
    log: &Path,
    options: &DumpOptions,
) -> Result<(), Error> {
    let mut command = client(install, Tool::PgDump)?.args(conn.args());
    if options.new_major.dumps_statistics() {
        command = command.arg("--no-data");
        if options.sequences_in_dump() {
            command = command.arg("--sequence-data");
        }
        command = command.arg(if options.statistics {
            "--statistics"
        } else {
            "--no-statistics"
        });
    } else {
        command = command.arg("--schema-only");
    }
    if let Some(snapshot) = &options.snapshot {
        command = command.arg(format!("--snapshot={snapshot}"));
    }
    if let Some(timeout) = options.lock_wait_timeout {
        command = command.arg(format!("--lock-wait-timeout={timeout}"));
    }
    let command = command
        .args([
            "--quote-all-identifiers",
            "--binary-upgrade",
            "--format=custom",
            "--no-sync",
            "--verbose",
        ])
        .arg(format!("--file={}", out.display()))
        .arg(dbname_conninfo(database));
    run_logged(
        command,
        &format!("dumping the schema of database \"{database}\""),
        log,
    )
}

pub fn restore_globals(
    install: &Installation,
    conn: &Endpoint,
    file: &Path,
    log: &Path,
) -> Result<(), Error> {
    let command = client(install, Tool::Psql)?
        .args([
            "--set",
            "ON_ERROR_STOP=on",
            "--no-psqlrc",
            "--dbname=template1",
        ])
        .args(conn.args())
        .arg("-f")
        .arg(file);
    run_logged(command, "restoring roles and tablespaces", log)
}

/// One database's restore, ready to run: how many objects it restores (the
/// total its progress counts to) and the script pg-migrate runs itself.
#[derive(Debug, Clone)]
pub struct PlannedRestore {
    pub objects: u64,
    pub database: String,
    dump: std::path::PathBuf,
    log: std::path::PathBuf,
    /// None: pg_restore restores over its own connection (before 17, or a
    /// script that is not UTF-8).
    script: Option<std::path::PathBuf>,
    transaction_size: Option<u32>,
    /// The part of the script that runs side by side, found ahead of the
    /// restore (for how many connections), while other databases restore.
    ahead: std::sync::Arc<std::sync::Mutex<Option<(usize, crate::parallel::Ahead)>>>,
}

impl PlannedRestore {
    /// Reads the script for a restore over `workers` connections now, so
    /// that [`restore_database`] with as many need not (it takes a third
    /// of a second at 20,000 relations). A failure is left to the restore,
    /// which reads it again and reports it.
    pub fn find_side_by_side(&self, workers: usize) {
        let Some(script) = &self.script else {
            return;
        };
        if workers < 2 {
            return;
        }
        if let Ok(found) = crate::parallel::plan(script, workers) {
            *self.ahead.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((workers, crate::parallel::Ahead(found)));
        }
    }
}

/// Makes ready one database's restore: with `transaction_size` (17 and
/// later) pg_restore writes the script (its transactions included) that
/// `restore_database` runs, a transaction per message; the objects are
/// counted from that script or from the dump's table of contents. The
/// script is written `--verbose`: each entry's dump id and dependencies,
/// which a restore over several connections schedules by.
pub fn plan_restore(
    install: &Installation,
    database: &str,
    dump: &Path,
    log: &Path,
    transaction_size: Option<u32>,
) -> Result<PlannedRestore, Error> {
    if let Some(size) = transaction_size {
        let script = dump.with_extension("sql");
        let writer = restore_command(install, database, Some(size))?
            .arg("--verbose")
            .arg(format!("--file={}", script.display()))
            .arg(dump);
        run_logged(
            writer,
            &format!("restoring the schema of database \"{database}\": writing the restore script"),
            log,
        )?;
        if let Some(objects) = crate::script::utf8_script_objects(&script)? {
            return Ok(PlannedRestore {
                objects,
                database: database.to_string(),
                dump: dump.to_path_buf(),
                log: log.to_path_buf(),
                script: Some(script),
                transaction_size,
                ahead: Default::default(),
            });
        }
    }
    // The dump's table of contents: one line per entry, after `;` comments.
    let (status, captured) = client(install, Tool::PgRestore)?
        .arg("--list")
        .arg(dump)
        .run_unchecked()?;
    if !status.success() {
        return Err(Error::Program {
            what: format!("listing the dump of database \"{database}\""),
            detail: captured.stderr.trim().to_string(),
            log: log.to_path_buf(),
        });
    }
    let objects = captured
        .stdout
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .count() as u64;
    Ok(PlannedRestore {
        objects,
        database: database.to_string(),
        dump: dump.to_path_buf(),
        log: log.to_path_buf(),
        script: None,
        transaction_size,
        ahead: Default::default(),
    })
}

/// pg_restore with the flags every restore of a binary-upgrade dump takes.
/// template1 is re-created from `postgres`; every other database from
/// template1 (`postgres` itself is dropped first).
fn restore_command(
    install: &Installation,
    database: &str,
    transaction_size: Option<u32>,
) -> Result<PgCommand, Error> {
    let mut command = client(install, Tool::PgRestore)?;
    if database == "template1" || database == "postgres" {
        command = command.arg("--clean");
    }
    command = command.args(["--create", "--exit-on-error"]);
    if let Some(size) = transaction_size {
        command = command.arg(format!("--transaction-size={size}"));
    }
    Ok(command)
}

/// The database a restore of `database` starts in (and creates it from).
fn restore_via(database: &str) -> &'static str {
    if database == "template1" {
        "postgres"
    } else {
        "template1"
    }
}

/// Restores one database's dump as `plan_restore` made it ready; `progress`
/// is told how many objects were restored as they are (in all, exactly the
/// plan's count). With `workers` above 1, the part of its script that may
/// run side by side runs over that many connections at once (17 and
/// later); when none does, why is returned.
pub fn restore_database(
    install: &Installation,
    conn: &Endpoint,
    planned: &PlannedRestore,
    workers: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Option<Serial>, Error> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let reported = AtomicU64::new(0);
    let counted = |n: u64| {
        // Never past the plan's count, however the script's pieces add up.
        let before = reported
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| {
                Some((r + n).min(planned.objects))
            })
            .unwrap_or(0);
        let added = (before + n).min(planned.objects) - before;
        if added > 0 {
            progress(added);
        }
    };
    let (database, dump, log) = (planned.database.as_str(), &planned.dump, &planned.log);
    let via = restore_via(database);
    let what = format!("restoring the schema of database \"{database}\"");
    let mut serial = None;
    match &planned.script {
        Some(script) => {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| Error::io(log, e))?;
            let _ = writeln!(file, "running {} in database {via}", script.display());
            let ahead = match planned
                .ahead
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                Some((for_workers, found)) if for_workers == workers => Some(found),
                _ => None,
            };
            let how = crate::parallel::Restore {
                workers,
                transaction_size: planned.transaction_size.unwrap_or(1000) as usize,
                progress: &counted,
                ahead,
            };
            let result = crate::script::run_script(script, conn, via, database, &mut file, how);
            if let Err(e) = &result {
                let _ = writeln!(file, "failed: {e}");
            }
            serial = result.map_err(|e| Error::Program {
                what,
                detail: e.to_string(),
                log: log.to_path_buf(),
            })?;
        }
        None => {
            if workers > 1 {
                let reason = Serial::ByPgRestore;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .map_err(|e| Error::io(log, e))?;
                let _ = writeln!(file, "{}", reason.log_line(workers));
                serial = Some(reason);
            }
            let command = restore_command(install, database, planned.transaction_size)?
                .args(conn.args())
                .arg("--verbose")
                .args(["--dbname", via])
                .arg(dump);
            run_logged(command, &what, log)?;
        }
    }
    // Objects the script restored without a header of their own.
    counted(planned.objects);
    Ok(serial)
}

/// `vacuumdb --all` with `--analyze` or `--freeze` on the new cluster, `jobs`
/// tables at a time: the freeze makes every catalog row independent of the
/// new cluster's own transaction history, which the counter hand-over
/// replaces.
pub fn vacuum_all(
    install: &Installation,
    conn: &Endpoint,
    option: &str,
    jobs: usize,
    log: &Path,
) -> Result<(), Error> {
    let mut command = client(install, Tool::Vacuumdb)?
        .args(conn.args())
        .args(["--all", option]);
    if jobs > 1 {
        command = command.arg(format!("--jobs={jobs}"));
    }
    run_logged(command, &format!("vacuumdb --all {option}"), log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_quoted_for_libpq() {
        assert_eq!(dbname_conninfo("app"), "dbname='app'");
        assert_eq!(dbname_conninfo("it's"), r"dbname='it\'s'");
        assert_eq!(dbname_conninfo(r"a\b c"), r"dbname='a\\b c'");
    }

    #[test]
    fn transaction_size_shrinks_with_jobs_and_needs_17() {
        assert_eq!(restore_transaction_size(PgMajor::new(18), 1), Some(1000));
        assert_eq!(restore_transaction_size(PgMajor::new(18), 4), Some(250));
        assert_eq!(restore_transaction_size(PgMajor::new(17), 200), Some(10));
        assert_eq!(restore_transaction_size(PgMajor::new(15), 1), None);
    }
}
