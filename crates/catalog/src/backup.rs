//! Logical backups of a whole cluster, and their restore into a fresh one:
//! roles and tablespaces (`pg_dumpall --globals-only`), then one
//! `pg_dump --format=custom` per database, into a directory with a manifest
//! (versions, databases, sizes, the SHA-256 of every file).
//!
//! The manifest is written last, after every file is on disk: a directory
//! without one is an unfinished backup, and a file whose size or checksum
//! differs from the manifest's is a damaged one. Both are refused before a
//! restore changes anything.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use pgm_cluster::command::PgCommand;
use pgm_cluster::{Installation, PgMajor, Tool};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dump::{client, dbname_conninfo, run_logged};
use crate::script::{Piece, Splitter};
use crate::Error;
use pgm_cluster::server::Endpoint;

pub const MANIFEST: &str = "manifest.json";
/// Raised when the manifest changes incompatibly.
pub const MANIFEST_FORMAT: u32 = 1;
pub const GLOBALS_FILE: &str = "globals.sql";

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    /// Name inside the backup directory.
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupDatabase {
    pub name: String,
    pub dump: BackupFile,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupTablespace {
    pub name: String,
    pub location: String,
}

/// The locale template0 was made with: what a cluster created for the
/// restore is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupLocale {
    pub encoding: String,
    /// `libc`, `icu` or `builtin`.
    pub provider: String,
    pub collate: String,
    pub ctype: String,
    pub locale: Option<String>,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub created_unix_ms: u64,
    pub pg_migrate_version: String,
    /// The backed-up server's version, e.g. `15.18`, and major.
    pub server_version: String,
    pub server_major: u32,
    pub datadir: PathBuf,
    /// The pg_dump that wrote the dumps: a pg_restore at least this new reads them.
    pub tools_bindir: PathBuf,
    pub tools_version: String,
    pub tools_major: u32,
    pub install_user: String,
    pub template0: BackupLocale,
    pub globals: BackupFile,
    pub databases: Vec<BackupDatabase>,
    pub tablespaces: Vec<BackupTablespace>,
}

impl Manifest {
    pub fn bytes(&self) -> u64 {
        self.globals.bytes + self.databases.iter().map(|d| d.dump.bytes).sum::<u64>()
    }
}

/// Marks a directory as a backup pg-migrate writes or wrote: pg-migrate
/// moves aside or removes only such directories (and empty ones).
pub const MARKER: &str = ".pg-migrate-backup";

/// `DIR.old` beside `DIR`: the backup before the newest.
pub fn old_backup_dir(dir: &Path) -> PathBuf {
    sibling(dir, ".old")
}

/// `DIR.partial` beside `DIR`: a backup being written.
pub fn partial_backup_dir(dir: &Path) -> PathBuf {
    sibling(dir, ".partial")
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// What may stand at a path pg-migrate is about to replace.
fn replaceable(path: &Path) -> Result<bool, String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(meta) if !meta.is_dir() => {
            Err(format!("{} exists and is not a directory", path.display()))
        }
        Ok(_) => {
            let is_backup = path.join(MARKER).exists() || path.join(MANIFEST).exists();
            let empty = std::fs::read_dir(path)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if is_backup || empty {
                Ok(true)
            } else {
                Err(format!(
                    "{} exists and is not a pg-migrate backup (it has no {MANIFEST}): pg-migrate neither moves nor removes it",
                    path.display()
                ))
            }
        }
    }
}

/// Why `dir` (and `DIR.old`, `DIR.partial` beside it) cannot take a new
/// backup, if it cannot: each must be absent, empty, or a pg-migrate backup.
pub fn refuse_backup_dir(dir: &Path) -> Option<String> {
    [
        dir.to_path_buf(),
        old_backup_dir(dir),
        partial_backup_dir(dir),
    ]
    .iter()
    .find_map(|p| replaceable(p).err())
}

/// Starts a backup: `DIR.partial` made afresh (mode 0700, marked); the
/// backup is written there and [`finish_backup_dir`] puts it in place.
pub fn start_backup_dir(dir: &Path) -> Result<PathBuf, Error> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(why) = refuse_backup_dir(dir) {
        return Err(Error::Inconsistent(why));
    }
    let partial = partial_backup_dir(dir);
    if partial.exists() {
        // What a failed or killed backup left.
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&partial)
        .map_err(|e| Error::io(&partial, e))?;
    std::fs::write(partial.join(MARKER), b"").map_err(|e| Error::io(partial.join(MARKER), e))?;
    Ok(partial)
}

/// Puts a finished backup (its manifest written) in place: an existing
/// `DIR` moves to `DIR.old`, replacing an older one, and `DIR.partial`
/// becomes `DIR`. Until this moment the earlier backups are untouched, so
/// a failed backup never costs a good one. Returns where the earlier
/// backup went.
pub fn finish_backup_dir(dir: &Path) -> Result<Option<PathBuf>, Error> {
    if let Some(why) = refuse_backup_dir(dir) {
        return Err(Error::Inconsistent(why));
    }
    let partial = partial_backup_dir(dir);
    let aside = old_backup_dir(dir);
    let moved = if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if empty {
            std::fs::remove_dir(dir).map_err(|e| Error::io(dir, e))?;
            None
        } else {
            if aside.exists() {
                std::fs::remove_dir_all(&aside).map_err(|e| Error::io(&aside, e))?;
            }
            std::fs::rename(dir, &aside).map_err(|e| Error::io(dir, e))?;
            Some(aside)
        }
    } else {
        None
    };
    std::fs::rename(&partial, dir).map_err(|e| Error::io(&partial, e))?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(parent, e))?;
    }
    Ok(moved)
}

/// The database dump's file name: by position, since a database may be
/// named anything.
pub fn database_file(index: usize) -> String {
    format!("database-{:04}.dump", index + 1)
}

/// Facts about the server being backed up, read over one connection.
pub struct SourceFacts {
    pub version: String,
    pub major: u32,
    pub install_user: String,
    pub template0: BackupLocale,
    pub tablespaces: Vec<BackupTablespace>,
    /// Databases that accept connections (template0 never changes).
    pub databases: Vec<String>,
    /// Other databases that do not: pg_dump cannot reach them.
    pub unconnectable: Vec<String>,
}

pub fn source_facts(client: &mut postgres::Client) -> Result<SourceFacts, Error> {
    let q = |e: postgres::Error, what: &str| Error::query("template1", what, &e);
    let row = client
        .query_one(
            "SELECT pg_catalog.current_setting('server_version'),
                    pg_catalog.current_setting('server_version_num')::int,
                    (SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = 10)",
            &[],
        )
        .map_err(|e| q(e, "reading the server version"))?;
    let version: String = row.get(0);
    let version_num: i32 = row.get(1);
    let install_user: String = row.get(2);
    let major = (version_num / 10000) as u32;
    let provider_sql = if major >= 17 {
        "d.datlocprovider::text, d.datlocale::text"
    } else if major >= 15 {
        "d.datlocprovider::text, d.daticulocale::text"
    } else {
        "'c'::text, NULL::text"
    };
    let row = client
        .query_one(
            format!(
                "SELECT pg_catalog.pg_encoding_to_char(d.encoding)::text, d.datcollate::text,
                        d.datctype::text, {provider_sql}
                   FROM pg_catalog.pg_database d WHERE d.datname = 'template0'"
            )
            .as_str(),
            &[],
        )
        .map_err(|e| q(e, "reading template0's locale"))?;
    let provider: String = row.get(3);
    let template0 = BackupLocale {
        encoding: row.get(0),
        collate: row.get(1),
        ctype: row.get(2),
        provider: match provider.as_str() {
            "i" => "icu",
            "b" => "builtin",
            _ => "libc",
        }
        .to_string(),
        locale: row.get(4),
    };
    let tablespaces = client
        .query(
            "SELECT spcname::text, pg_catalog.pg_tablespace_location(oid)
               FROM pg_catalog.pg_tablespace
              WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1",
            &[],
        )
        .map_err(|e| q(e, "listing tablespaces"))?
        .iter()
        .map(|r| BackupTablespace {
            name: r.get(0),
            location: r.get(1),
        })
        .collect();
    let mut databases = Vec::new();
    let mut unconnectable = Vec::new();
    for row in client
        .query(
            "SELECT datname::text, datallowconn FROM pg_catalog.pg_database
              WHERE datname <> 'template0' ORDER BY oid",
            &[],
        )
        .map_err(|e| q(e, "listing databases"))?
    {
        let (name, allowed): (String, bool) = (row.get(0), row.get(1));
        if allowed {
            databases.push(name);
        } else {
            unconnectable.push(name);
        }
    }
    Ok(SourceFacts {
        version,
        major,
        install_user,
        template0,
        tablespaces,
        databases,
        unconnectable,
    })
}

/// Which installation's pg_dump writes a backup of a `source` server: the
/// old one's own when it has the client programs (its dumps restore into
/// the same major and every newer one), else `fallback`'s (newer: its
/// dumps restore only into its own major or later).
pub fn choose_dump_tools<'a>(
    source: &'a Installation,
    fallback: Option<&'a Installation>,
) -> Option<&'a Installation> {
    let complete = |i: &Installation| i.missing(&[Tool::PgDump, Tool::PgDumpall]).is_empty();
    if complete(source) {
        return Some(source);
    }
    fallback.filter(|i| complete(i) && i.version.major >= source.version.major)
}

/// `pg_dumpall --globals-only` into `out`.
pub fn dump_globals_for_backup(
    tools: &Installation,
    conn: &Endpoint,
    out: &Path,
    log: &Path,
) -> Result<(), Error> {
    let command = client(tools, Tool::PgDumpall)?
        .args(conn.args())
        .args([
            "--globals-only",
            "--quote-all-identifiers",
            "--no-sync",
            "-f",
        ])
        .arg(out);
    run_logged(
        command,
        "backing up roles and tablespaces (pg_dumpall)",
        log,
    )
}

/// `pg_dump --format=custom` of one whole database into `out`.
pub fn dump_database_for_backup(
    tools: &Installation,
    conn: &Endpoint,
    database: &str,
    out: &Path,
    log: &Path,
) -> Result<(), Error> {
    let command = client(tools, Tool::PgDump)?
        .args(conn.args())
        .args(["--format=custom", "--no-sync", "--verbose"])
        .arg(format!("--file={}", out.display()))
        .arg(dbname_conninfo(database));
    run_logged(
        command,
        &format!("backing up database \"{database}\" (pg_dump)"),
        log,
    )
}

/// Size and SHA-256 of a file, after fsyncing it (a backup is only
/// described once it is on disk).
pub fn describe_file(dir: &Path, name: &str) -> Result<BackupFile, Error> {
    let path = dir.join(name);
    let mut file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    file.sync_all().map_err(|e| Error::io(&path, e))?;
    let (bytes, sha256) = sha256_of(&mut file).map_err(|e| Error::io(&path, e))?;
    Ok(BackupFile {
        file: name.to_string(),
        bytes,
        sha256,
    })
}

fn sha256_of(file: &mut impl Read) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    let digest = hasher.finalize();
    Ok((bytes, digest.iter().map(|b| format!("{b:02x}")).collect()))
}

/// Writes the manifest (temporary name, fsync, rename, fsync the
/// directory): the last act of a backup.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), Error> {
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let text = serde_json::to_vec_pretty(manifest)
        .map_err(|e| Error::Inconsistent(format!("encoding the manifest: {e}")))?;
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(&text).map_err(|e| Error::io(&tmp, e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, dir.join(MANIFEST)).map_err(|e| Error::io(dir, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Reads the manifest and checks every file it lists (presence, size,
/// SHA-256).
pub fn verify_backup(dir: &Path) -> Result<Manifest, Error> {
    let text = match std::fs::read(dir.join(MANIFEST)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::BackupWithoutManifest)
        }
        Err(e) => return Err(Error::BackupManifestUnreadable(e.to_string())),
    };
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| Error::BackupManifestUnreadable(e.to_string()))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(Error::BackupManifestUnreadable(format!(
            "format {} (this pg-migrate reads format {MANIFEST_FORMAT})",
            manifest.format
        )));
    }
    let files =
        std::iter::once(&manifest.globals).chain(manifest.databases.iter().map(|d| &d.dump));
    for expected in files {
        // A name from the manifest must stay inside the backup directory.
        if expected.file.contains('/') || expected.file.starts_with('.') {
            return Err(Error::BackupManifestUnreadable(format!(
                "it names the file {:?}",
                expected.file
            )));
        }
        let path = dir.join(&expected.file);
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::BackupFileMissing(expected.file.clone()))
            }
            Err(e) => {
                return Err(Error::BackupFileDamaged {
                    file: expected.file.clone(),
                    detail: e.to_string(),
                })
            }
        };
        let (bytes, sha256) = sha256_of(&mut file).map_err(|e| Error::BackupFileDamaged {
            file: expected.file.clone(),
            detail: e.to_string(),
        })?;
        if bytes != expected.bytes {
            return Err(Error::BackupFileDamaged {
                file: expected.file.clone(),
                detail: format!("{bytes} bytes where the manifest says {}", expected.bytes),
            });
        }
        if sha256 != expected.sha256 {
            return Err(Error::BackupFileDamaged {
                file: expected.file.clone(),
                detail: "its SHA-256 differs from the manifest's".into(),
            });
        }
    }
    Ok(manifest)
}

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
/// connection, or postgres's for template1 itself.
pub fn restore_backup_database(
    tools: &Installation,
    conn: &Endpoint,
    database: &str,
    dump: &Path,
    log: &Path,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path) -> Manifest {
        std::fs::write(dir.join(GLOBALS_FILE), "CREATE ROLE \"a\";\n").unwrap();
        std::fs::write(dir.join(database_file(0)), b"dump bytes").unwrap();
        Manifest {
            format: MANIFEST_FORMAT,
            created_unix_ms: 1,
            pg_migrate_version: "0".into(),
            server_version: "15.18".into(),
            server_major: 15,
            datadir: "/old".into(),
            tools_bindir: "/bin".into(),
            tools_version: "15.18".into(),
            tools_major: 15,
            install_user: "postgres".into(),
            template0: BackupLocale {
                encoding: "UTF8".into(),
                provider: "libc".into(),
                collate: "C".into(),
                ctype: "C".into(),
                locale: None,
            },
            globals: describe_file(dir, GLOBALS_FILE).unwrap(),
            databases: vec![BackupDatabase {
                name: "app".into(),
                dump: describe_file(dir, &database_file(0)).unwrap(),
            }],
            tablespaces: Vec::new(),
        }
    }

    #[test]
    fn a_backup_is_verified_file_by_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            verify_backup(dir.path()),
            Err(Error::BackupWithoutManifest)
        ));
        let m = manifest(dir.path());
        write_manifest(dir.path(), &m).unwrap();
        assert_eq!(verify_backup(dir.path()).unwrap(), m);
        // The same size, another byte.
        std::fs::write(dir.path().join(database_file(0)), b"dump bytez").unwrap();
        assert!(matches!(
            verify_backup(dir.path()),
            Err(Error::BackupFileDamaged { ref file, .. }) if *file == database_file(0)
        ));
        std::fs::write(dir.path().join(database_file(0)), b"dump").unwrap();
        assert!(matches!(
            verify_backup(dir.path()),
            Err(Error::BackupFileDamaged { .. })
        ));
        std::fs::remove_file(dir.path().join(database_file(0))).unwrap();
        assert!(matches!(
            verify_backup(dir.path()),
            Err(Error::BackupFileMissing(ref file)) if *file == database_file(0)
        ));
        std::fs::write(dir.path().join(MANIFEST), b"{").unwrap();
        assert!(matches!(
            verify_backup(dir.path()),
            Err(Error::BackupManifestUnreadable(_))
        ));
    }

    #[test]
    fn a_backup_replaces_only_backups_and_only_once_finished() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("backup");
        let write = |name: &str| {
            let partial = start_backup_dir(&dir).unwrap();
            std::fs::write(partial.join(name), b"x").unwrap();
            std::fs::write(partial.join(MANIFEST), b"{}").unwrap();
            partial
        };
        write("first");
        assert_eq!(finish_backup_dir(&dir).unwrap(), None);
        assert!(dir.join("first").exists() && !partial_backup_dir(&dir).exists());
        // A backup that fails leaves the good one alone; the next one clears it.
        let failed = start_backup_dir(&dir).unwrap();
        std::fs::write(failed.join("half"), b"x").unwrap();
        assert!(dir.join("first").exists());
        write("second");
        assert!(!partial_backup_dir(&dir).join("half").exists());
        let aside = finish_backup_dir(&dir).unwrap().unwrap();
        assert_eq!(aside, root.path().join("backup.old"));
        assert!(aside.join("first").exists() && dir.join("second").exists());
        write("third");
        finish_backup_dir(&dir).unwrap();
        assert!(aside.join("second").exists() && !aside.join("first").exists());
        // Anything else is neither moved nor removed.
        let foreign = root.path().join("photos");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("cat.jpg"), b"meow").unwrap();
        assert!(refuse_backup_dir(&foreign)
            .unwrap()
            .contains("not a pg-migrate backup"));
        assert!(start_backup_dir(&foreign).is_err());
        std::fs::create_dir(root.path().join("docs.old")).unwrap();
        std::fs::write(root.path().join("docs.old/letter"), b"").unwrap();
        assert!(refuse_backup_dir(&root.path().join("docs")).is_some());
        std::fs::write(root.path().join("file"), b"").unwrap();
        assert!(refuse_backup_dir(&root.path().join("file")).is_some());
        // An empty directory (a fresh mount, say) takes a backup.
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(refuse_backup_dir(&empty).is_none());
        assert!(foreign.join("cat.jpg").exists());
    }

    #[test]
    fn globals_skip_existing_roles_and_move_tablespaces() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manifest(dir.path());
        std::fs::write(
            dir.path().join(GLOBALS_FILE),
            "\\restrict abc\nSET x = 1;\n--\n-- Roles\n--\n\nCREATE ROLE \"postgres\";\nALTER ROLE \"postgres\" WITH SUPERUSER;\nCREATE ROLE \"app\"\"s\";\nCREATE TABLESPACE \"extra\" OWNER \"postgres\" LOCATION '/old/ts';\nCREATE TABLESPACE \"other\" OWNER \"postgres\" LOCATION '/keep';\n\\unrestrict abc\n",
        )
        .unwrap();
        m.globals = describe_file(dir.path(), GLOBALS_FILE).unwrap();
        let out = dir.path().join("out.sql");
        globals_for_target(
            &m,
            dir.path(),
            &["postgres".into()],
            &[("extra".into(), PathBuf::from("/new/it's"))],
            &out,
        )
        .unwrap();
        let text = std::fs::read_to_string(out).unwrap();
        assert!(!text.contains("CREATE ROLE \"postgres\";"), "{text}");
        assert!(text.contains("ALTER ROLE \"postgres\" WITH SUPERUSER;"));
        assert!(text.contains("CREATE ROLE \"app\"\"s\";"));
        assert!(
            text.contains("CREATE TABLESPACE \"extra\" OWNER \"postgres\" LOCATION '/new/it''s';"),
            "{text}"
        );
        assert!(text.contains("LOCATION '/keep';"));
        assert!(text.starts_with("\\restrict abc\n") && text.ends_with("\\unrestrict abc\n"));
    }

    #[test]
    fn restore_reads_dumps_of_its_own_major_and_older() {
        assert!(restore_can_read(PgMajor::new(18), 15));
        assert!(restore_can_read(PgMajor::new(15), 15));
        assert!(!restore_can_read(PgMajor::new(15), 18));
    }
}
