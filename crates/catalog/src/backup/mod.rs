//! Logical backups of a whole cluster, and their restore into a fresh one:
//! roles and tablespaces (`pg_dumpall --globals-only`), then one
//! `pg_dump --format=custom` per database (`--format=directory` for one
//! dumped over several connections), into a directory with a manifest
//! (versions, databases, sizes, the SHA-256 of every file).
//!
//! The manifest is written last, after every file is on disk: a directory
//! without one is an unfinished backup, and a file whose size or checksum
//! differs from the manifest's is a damaged one. Both are refused before a
//! restore changes anything.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use pgm_cluster::{Installation, Tool};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dump::{client, dbname_conninfo, run_logged};
use crate::Error;
use pgm_cluster::server::Endpoint;

pub const MANIFEST: &str = "manifest.json";
/// Raised when the manifest changes incompatibly.
pub const MANIFEST_FORMAT: u32 = 1;
/// A manifest that lists a dump in pg_dump's directory format: a
/// pg-migrate that reads only format 1 would take the directory for a
/// damaged file, so such a backup says it needs a newer reader. One
/// without writes format 1, which every pg-migrate reads.
pub const MANIFEST_FORMAT_DIRECTORIES: u32 = 2;
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
    /// The dump: a file in pg_dump's custom format, or, when `files` is
    /// not empty, a directory in its directory format (then `bytes` is
    /// its files' total and `sha256` that of their list, see
    /// [`directory_digest`]).
    pub dump: BackupFile,
    /// A directory dump's files, by name inside it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<BackupFile>,
}

impl BackupDatabase {
    /// The manifest format this entry needs.
    pub fn format(&self) -> u32 {
        if self.files.is_empty() {
            MANIFEST_FORMAT
        } else {
            MANIFEST_FORMAT_DIRECTORIES
        }
    }
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
    /// The lowest format that describes these databases.
    pub fn format_for(databases: &[BackupDatabase]) -> u32 {
        databases
            .iter()
            .map(BackupDatabase::format)
            .max()
            .unwrap_or(MANIFEST_FORMAT)
    }

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
    /// Their sizes on disk (`pg_database_size`), in the same order, when
    /// asked for (each costs a look at every file of the database).
    pub database_bytes: Option<Vec<u64>>,
    /// Other databases that do not: pg_dump cannot reach them.
    pub unconnectable: Vec<String>,
}

pub fn source_facts(client: &mut postgres::Client, sizes: bool) -> Result<SourceFacts, Error> {
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
    let mut database_bytes = Vec::new();
    let mut unconnectable = Vec::new();
    for row in client
        .query(
            "SELECT datname::text, datallowconn,
                    CASE WHEN datallowconn AND $1 THEN pg_catalog.pg_database_size(oid) END
               FROM pg_catalog.pg_database
              WHERE datname <> 'template0' ORDER BY oid",
            &[&sizes],
        )
        .map_err(|e| q(e, "listing databases"))?
    {
        let (name, allowed): (String, bool) = (row.get(0), row.get(1));
        if allowed {
            databases.push(name);
            database_bytes.push(row.get::<_, Option<i64>>(2).unwrap_or(0).max(0) as u64);
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
        database_bytes: sizes.then_some(database_bytes),
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

/// `pg_dump` of one whole database into `out`: a file in the custom
/// format, or over `jobs` connections (above 1) a directory in the
/// directory format, the only one pg_dump writes in parallel. Its workers
/// take each table's lock without waiting and give up when another session
/// asked for a conflicting one meanwhile: only for a server nobody else uses.
pub fn dump_database_for_backup(
    tools: &Installation,
    conn: &Endpoint,
    database: &str,
    out: &Path,
    log: &Path,
    jobs: usize,
) -> Result<(), Error> {
    let format: &[String] = if jobs > 1 {
        &["--format=directory".into(), format!("--jobs={jobs}")]
    } else {
        &["--format=custom".into()]
    };
    let command = client(tools, Tool::PgDump)?
        .args(conn.args())
        .args(format)
        .args(["--no-sync", "--verbose"])
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

/// A directory dump `name` in `dir` described, after fsyncing each of its
/// files and itself: the whole (see [`BackupDatabase::dump`]) and each file.
pub fn describe_directory(dir: &Path, name: &str) -> Result<(BackupFile, Vec<BackupFile>), Error> {
    let path = dir.join(name);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&path).map_err(|e| Error::io(&path, e))? {
        let entry = entry.map_err(|e| Error::io(&path, e))?;
        let kind = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
        if !kind.is_file() {
            // pg_dump's directory format is flat: anything else is not its.
            return Err(Error::Inconsistent(format!(
                "{} is not a file of a pg_dump directory",
                entry.path().display()
            )));
        }
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let files = names
        .iter()
        .map(|file| describe_file(&path, file))
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::File::open(&path)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(&path, e))?;
    let whole = BackupFile {
        file: name.to_string(),
        bytes: files.iter().map(|f| f.bytes).sum(),
        sha256: directory_digest(&files),
    };
    Ok((whole, files))
}

/// A directory dump's SHA-256: that of its list of files, one line each
/// as `sha256sum` prints them (`<sha256>  <name>`), in the order listed.
pub fn directory_digest(files: &[BackupFile]) -> String {
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(format!("{}  {}\n", file.sha256, file.file));
    }
    hex(&hasher.finalize())
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
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
    Ok((bytes, hex(&digest)))
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
    if !(MANIFEST_FORMAT..=MANIFEST_FORMAT_DIRECTORIES).contains(&manifest.format) {
        return Err(Error::BackupManifestUnreadable(format!(
            "format {} (this pg-migrate reads formats {MANIFEST_FORMAT} to {MANIFEST_FORMAT_DIRECTORIES})",
            manifest.format
        )));
    }
    check_file(dir, "", &manifest.globals)?;
    for database in &manifest.databases {
        if database.format() > manifest.format {
            return Err(Error::BackupManifestUnreadable(format!(
                "it is of format {} but lists {} as a directory",
                manifest.format, database.dump.file
            )));
        }
        if database.files.is_empty() {
            check_file(dir, "", &database.dump)?;
            continue;
        }
        check_plain_name(&database.dump.file)?;
        let inside = dir.join(&database.dump.file);
        let shown = format!("{}/", database.dump.file);
        for file in &database.files {
            check_file(&inside, &shown, file)?;
        }
        // The list itself must be the one described (a line removed from
        // the manifest would leave a dump pg_restore cannot finish).
        let total: u64 = database.files.iter().map(|f| f.bytes).sum();
        if total != database.dump.bytes || directory_digest(&database.files) != database.dump.sha256
        {
            return Err(Error::BackupManifestUnreadable(format!(
                "its list of the files of {} differs from its size or SHA-256",
                database.dump.file
            )));
        }
        // Nothing else may be in it: pg_restore takes a table's data from
        // `N.dat` before `N.dat.gz`, so an unlisted file (a `gunzip -k` to
        // look inside) would be restored unchecked.
        let listed: std::collections::HashSet<&str> =
            database.files.iter().map(|f| f.file.as_str()).collect();
        let entries = std::fs::read_dir(&inside).map_err(|e| Error::BackupFileDamaged {
            file: database.dump.file.clone(),
            detail: e.to_string(),
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::BackupFileDamaged {
                file: database.dump.file.clone(),
                detail: e.to_string(),
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !listed.contains(name.as_str()) {
                return Err(Error::BackupFileDamaged {
                    file: format!("{shown}{name}"),
                    detail: "the manifest does not list it: pg_restore could read it unchecked"
                        .into(),
                });
            }
        }
    }
    Ok(manifest)
}

/// A name from the manifest must stay inside the directory it is in.
fn check_plain_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.contains('/')
        || name.starts_with('.')
        || name.contains(char::is_control)
    {
        return Err(Error::BackupManifestUnreadable(format!(
            "it names the file {name:?}"
        )));
    }
    Ok(())
}

/// One file of the backup, in `dir`, against the manifest (named in
/// errors after `shown`, the directory dump it is in, if any).
fn check_file(dir: &Path, shown: &str, expected: &BackupFile) -> Result<(), Error> {
    check_plain_name(&expected.file)?;
    let name = format!("{shown}{}", expected.file);
    let path = dir.join(&expected.file);
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::BackupFileMissing(name))
        }
        Err(e) => {
            return Err(Error::BackupFileDamaged {
                file: name,
                detail: e.to_string(),
            })
        }
    };
    let (bytes, sha256) = sha256_of(&mut file).map_err(|e| Error::BackupFileDamaged {
        file: name.clone(),
        detail: e.to_string(),
    })?;
    if bytes != expected.bytes {
        return Err(Error::BackupFileDamaged {
            file: name,
            detail: format!("{bytes} bytes where the manifest says {}", expected.bytes),
        });
    }
    if sha256 != expected.sha256 {
        return Err(Error::BackupFileDamaged {
            file: name,
            detail: "its SHA-256 differs from the manifest's".into(),
        });
    }
    Ok(())
}

mod restore;
pub use restore::*;

#[cfg(test)]
mod tests;
