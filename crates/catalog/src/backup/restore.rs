//! Restoring a backup into a fresh cluster: its globals rewritten for the
//! target (roles it has, tablespace locations), each database through
//! pg_restore, and the checks that the target is fresh and the tools can
//! read the backup. Verifying the backup itself is the parent's job.

use std::path::{Path, PathBuf};

use pgm_cluster::command::PgCommand;
use pgm_cluster::server::Endpoint;
use pgm_cluster::{Installation, PgMajor, Tool};

use super::Manifest;
use crate::dump::{client, run_logged};
use crate::script::{Piece, Splitter};
use crate::Error;

/// Writes the backup's globals script for a target cluster: `CREATE ROLE`
/// of a role the target already has (its bootstrap superuser) is left out
/// (the `ALTER ROLE` after it still gives the role its attributes), and a
/// tablespace gets the location `locations` maps its name to.
pub fn globals_for_target(
    manifest: &Manifest,
    backup_dir: &Path,
    existing_roles: &[String],
    locations: &[(String, PathBuf)],
    out: &Path,
) -> Result<(), Error> {
    let source = backup_dir.join(&manifest.globals.file);
    let file = std::fs::File::open(&source).map_err(|e| Error::io(&source, e))?;
    let mut splitter = Splitter::new(std::io::BufReader::new(file));
    let mut text = String::new();
    let skip: Vec<String> = existing_roles
        .iter()
        .map(|r| format!("CREATE ROLE {};", quote_ident(r)))
        .collect();
    let relocate: Vec<(String, String)> = locations
        .iter()
        .map(|(name, dir)| {
            (
                format!("CREATE TABLESPACE {} ", quote_ident(name)),
                dir.display().to_string(),
            )
        })
        .collect();
    while let Some(piece) = splitter
        .next_piece()
        .map_err(|e| Error::Inconsistent(format!("{}: {e}", source.display())))?
    {
        match piece {
            Piece::Sql(sql) => {
                let statement = without_comment_lines(&sql);
                if skip.contains(&statement) {
                    continue;
                }
                let moved = relocate.iter().find_map(|(prefix, dir)| {
                    let at = statement.rfind(" LOCATION '")?;
                    statement
                        .starts_with(prefix.as_str())
                        .then(|| format!("{} LOCATION {};", &statement[..at], quote_literal(dir)))
                });
                text.push_str(moved.as_deref().unwrap_or(&sql));
                text.push('\n');
            }
            Piece::Meta(line) => {
                text.push_str(&line);
                text.push('\n');
            }
            Piece::Copy { .. } => {
                return Err(Error::Inconsistent(format!(
                    "{}: a globals dump holds no COPY",
                    source.display()
                )))
            }
        }
    }
    std::fs::write(out, text).map_err(|e| Error::io(out, e))
}

fn without_comment_lines(sql: &str) -> String {
    sql.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub use pgm_cluster::sql::{quote_ident, quote_literal};

/// Runs a globals script with psql (stopping at the first error).
pub fn run_globals(
    tools: &Installation,
    conn: &Endpoint,
    file: &Path,
    log: &Path,
) -> Result<(), Error> {
    let command = client(tools, Tool::Psql)?
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

/// Restores one database of a backup: the database is dropped if it exists
/// and created as it was (`--clean --if-exists --create`), from template1's
/// connection, or postgres's for template1 itself; over `jobs` connections
/// (pg_restore's own parallel restore: tables' data and indexes side by
/// side) when above 1.
pub fn restore_backup_database(
    tools: &Installation,
    conn: &Endpoint,
    database: &str,
    dump: &Path,
    log: &Path,
    jobs: usize,
) -> Result<(), Error> {
    let via = if database == "template1" {
        "postgres"
    } else {
        "template1"
    };
    let command = client(tools, Tool::PgRestore)?
        .args(conn.args())
        .args([
            "--clean",
            "--if-exists",
            "--create",
            "--exit-on-error",
            "--verbose",
        ])
        .args(["--dbname", via])
        .args((jobs > 1).then(|| format!("--jobs={jobs}")))
        .arg(dump);
    run_logged(
        command,
        &format!("restoring database \"{database}\" (pg_restore)"),
        log,
    )
}

/// The roles a cluster has (their CREATE ROLE is left out of a restore).
pub fn existing_roles(client: &mut postgres::Client) -> Result<Vec<String>, Error> {
    Ok(client
        .query(
            "SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname !~ '^pg_' ORDER BY 1",
            &[],
        )
        .map_err(|e| Error::query("template1", "listing roles", &e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// What a cluster holds beyond what initdb made: databases other than its
/// three, roles, and relations in `database` (call it for postgres and
/// template1, which a restore drops and re-creates). A restore target must
/// hold nothing of the kind.
pub fn not_fresh(client: &mut postgres::Client, database: &str) -> Result<Vec<String>, Error> {
    let q = |e: postgres::Error| Error::query(database, "looking for user objects", &e);
    let mut found = Vec::new();
    if database == "template1" {
        for row in client
            .query(
                "SELECT datname::text FROM pg_catalog.pg_database
                  WHERE datname NOT IN ('template0', 'template1', 'postgres') ORDER BY 1",
                &[],
            )
            .map_err(q)?
        {
            found.push(format!("database \"{}\"", row.get::<_, String>(0)));
        }
        // Objects made after initdb have OIDs from 16384 (FirstNormalObjectId) on.
        for row in client
            .query(
                "SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid >= 16384 ORDER BY 1",
                &[],
            )
            .map_err(q)?
        {
            found.push(format!("role \"{}\"", row.get::<_, String>(0)));
        }
    }
    for row in client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid >= 16384 AND c.relpersistence <> 't' ORDER BY 1 LIMIT 10",
            &[],
        )
        .map_err(q)?
    {
        found.push(format!(
            "relation {} in database \"{database}\"",
            row.get::<_, String>(0)
        ));
    }
    Ok(found)
}

/// Whether a pg_restore of `reader`'s major can read dumps written by
/// pg_dump of `writer`'s major (the archive format only ever grows).
pub fn restore_can_read(reader: PgMajor, writer_major: u32) -> bool {
    reader.number() >= writer_major
}

/// An initdb command for a cluster to restore `manifest` into.
pub fn initdb_for(
    tools: &Installation,
    manifest: &Manifest,
    datadir: &Path,
    user: &str,
) -> Result<PgCommand, Error> {
    let locale = &manifest.template0;
    let mut command = tools
        .command(Tool::Initdb)?
        .arg("-D")
        .arg(datadir)
        .args(["-U", user])
        .arg(format!("--encoding={}", locale.encoding));
    let major = tools.version.major.number();
    match (locale.provider.as_str(), &locale.locale) {
        ("icu", Some(icu)) if major >= 15 => {
            command = command
                .arg("--locale-provider=icu")
                .arg(format!("--icu-locale={icu}"));
        }
        ("builtin", Some(builtin)) if major >= 17 => {
            command = command
                .arg("--locale-provider=builtin")
                .arg(format!("--builtin-locale={builtin}"));
        }
        _ => {}
    }
    command = command
        .arg(format!("--lc-collate={}", locale.collate))
        .arg(format!("--lc-ctype={}", locale.ctype))
        .arg("--no-sync");
    Ok(command)
}
