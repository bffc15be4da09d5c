//! Logical backups: the `backup` step of an upgrade (`--backup-dir`), the
//! two halves of the dump-and-reload method, and the work under the
//! `backup` and `restore` commands (commands/backup.rs, restore.rs).
//! pgm-catalog dumps, describes and verifies; here are the servers, the
//! parallelism, the events and the refusals.

use crate::failure::{Code, Failure};
use crate::output::Printer;
use crate::support::parallel;
use pgm_catalog::backup::{self as catalog, BackupDatabase, Manifest};
use pgm_cluster::{Installation, Server};
use std::path::{Path, PathBuf};

/// A finished backup.
pub struct Written {
    pub manifest: Manifest,
    /// Where an earlier backup in the same directory went.
    pub moved_aside: Option<PathBuf>,
}

/// How a backup or restore is carried out: reported as `step`, `jobs`
/// databases at a time, logs in `log_dir`.
pub struct Work<'a> {
    pub printer: &'a Printer,
    pub step: &'static str,
    pub jobs: usize,
    pub log_dir: &'a Path,
}

/// Backs up the cluster `server` serves (data directory `datadir`) into
/// `dir` with `tools`' pg_dumpall and pg_dump. An existing `dir` moves to
/// `dir.old`.
pub fn write(
    work: &Work<'_>,
    server: &Server,
    tools: &Installation,
    datadir: &Path,
    dir: &Path,
) -> Result<Written, Failure> {
    let (printer, step, jobs, log_dir) = (work.printer, work.step, work.jobs, work.log_dir);
    let mut client = server
        .connect("template1")
        .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
    // The databases' sizes only where they choose the one dumped in
    // parallel (see below): without them every database gets one connection.
    let sizes = jobs > 1 && server.is_owned();
    let facts = catalog::source_facts(&mut client, sizes)
        .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
    drop(client);
    if !facts.unconnectable.is_empty() {
        return Err(Failure {
            code: Code::BackupFailed,
            message: format!(
                "databases that do not accept connections cannot be dumped: {}",
                facts.unconnectable.join(", ")
            ),
            remedy: Some(
                "allow connections (ALTER DATABASE … ALLOW_CONNECTIONS true) or drop them, and run again".into(),
            ),
            clusters: None,
        });
    }
    // Not in the cluster, nor in one of its tablespaces.
    let mut clusters: Vec<PathBuf> = vec![datadir.to_path_buf()];
    clusters.extend(facts.tablespaces.iter().map(|t| PathBuf::from(&t.location)));
    let cluster_refs: Vec<&Path> = clusters.iter().map(PathBuf::as_path).collect();
    if let Some(refusal) = refuse_backup_dir(dir, &cluster_refs) {
        return Err(refusal);
    }
    let fail = |e: pgm_catalog::Error| Failure::new(Code::BackupFailed, e);
    // Written beside the destination and put in place once whole.
    let partial = catalog::start_backup_dir(dir).map_err(fail)?;
    let conn = server.endpoint.clone();
    catalog::dump_globals_for_backup(
        tools,
        &conn,
        &partial.join(catalog::GLOBALS_FILE),
        &log_dir.join("backup-globals.log"),
    )
    .map_err(fail)?;
    let globals = catalog::describe_file(&partial, catalog::GLOBALS_FILE).map_err(fail)?;
    let meter = printer.meter(step, facts.databases.len() as u64, "databases");
    let dump = |index: usize, connections: usize| -> Result<BackupDatabase, Failure> {
        let file = catalog::database_file(index);
        let name = &facts.databases[index];
        catalog::dump_database_for_backup(
            tools,
            &conn,
            name,
            &partial.join(&file),
            &log_dir.join(format!("backup-{}.log", file.trim_end_matches(".dump"))),
            connections,
        )
        .map_err(fail)?;
        let (dump, files) = if connections > 1 {
            catalog::describe_directory(&partial, &file).map_err(fail)?
        } else {
            (
                catalog::describe_file(&partial, &file).map_err(fail)?,
                Vec::new(),
            )
        };
        meter.add(1, dump.bytes);
        pgm_cluster::faults::point(|| format!("backup:database:{}", index + 1));
        Ok(BackupDatabase {
            name: name.clone(),
            dump,
            files,
        })
    };
    // On a server pg-migrate started (nobody else uses it), the largest
    // database comes last, alone, over every connection (as its restore
    // does): -j across databases does nothing for a cluster whose data is in
    // one of them. A running server's (`backup`, or `prepare` of a live
    // cluster) keeps one connection per database: pg_dump's parallel workers
    // give up on a table another session asked to lock.
    let mut indexes: Vec<usize> = (0..facts.databases.len()).collect();
    let largest = facts.database_bytes.as_ref().and_then(|bytes| {
        (0..indexes.len())
            .max_by_key(|&i| bytes[i])
            .map(|at| indexes.remove(at))
    });
    let mut databases = parallel(&indexes, jobs, |&index| dump(index, 1))?;
    if let Some(index) = largest {
        databases.insert(index, dump(index, jobs)?);
    }
    meter.finish();
    let manifest = Manifest {
        format: Manifest::format_for(&databases),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        pg_migrate_version: env!("CARGO_PKG_VERSION").to_string(),
        server_version: facts.version,
        server_major: facts.major,
        datadir: datadir.to_path_buf(),
        tools_bindir: tools.bindir.clone(),
        tools_version: tools.version.text.clone(),
        tools_major: tools.version.major.number(),
        install_user: facts.install_user,
        template0: facts.template0,
        globals,
        databases,
        tablespaces: facts.tablespaces,
    };
    catalog::write_manifest(&partial, &manifest).map_err(fail)?;
    let moved_aside = catalog::finish_backup_dir(dir).map_err(fail)?;
    Ok(Written {
        manifest,
        moved_aside,
    })
}

/// Restores a verified backup into the (fresh) cluster `server` serves:
/// roles and tablespaces, then template1, then the other databases `jobs`
/// at a time but the largest, which comes last, alone, over `jobs`
/// connections; each dropped if present and created as it was.
pub fn restore_into(
    work: &Work<'_>,
    server: &Server,
    tools: &Installation,
    manifest: &Manifest,
    dir: &Path,
    tablespace_map: &[(String, PathBuf)],
    work_dir: &Path,
) -> Result<(), Failure> {
    let (printer, step, jobs, log_dir) = (work.printer, work.step, work.jobs, work.log_dir);
    let fail = |e: pgm_catalog::Error| Failure::new(Code::RestoreFailed, e);
    let mut client = server
        .connect("template1")
        .map_err(|e| Failure::new(Code::NewCatalogFailed, e))?;
    let roles = catalog::existing_roles(&mut client).map_err(fail)?;
    drop(client);
    let conn = server.endpoint.clone();
    let globals = work_dir.join("globals-for-restore.sql");
    catalog::globals_for_target(manifest, dir, &roles, tablespace_map, &globals).map_err(fail)?;
    catalog::run_globals(tools, &conn, &globals, &log_dir.join("restore-globals.log"))
        .map_err(fail)?;
    let meter = printer.meter(step, manifest.databases.len() as u64, "databases");
    let restore = |db: &BackupDatabase, connections: usize| -> Result<(), Failure> {
        let log = log_dir.join(format!(
            "restore-{}.log",
            db.dump.file.trim_end_matches(".dump")
        ));
        let dump = dir.join(&db.dump.file);
        catalog::restore_backup_database(tools, &conn, &db.name, &dump, &log, connections)
            .map_err(fail)?;
        meter.add(1, db.dump.bytes);
        Ok(())
    };
    // template1 is dropped and re-created: nothing else may use it meanwhile.
    let (first, mut rest): (Vec<&BackupDatabase>, Vec<&BackupDatabase>) = manifest
        .databases
        .iter()
        .partition(|d| d.name == "template1");
    for db in first {
        restore(db, 1)?;
    }
    // The largest last, over every connection: -j across databases does
    // nothing for a cluster whose time is in one of them.
    let largest = match (0..rest.len()).max_by_key(|&i| rest[i].dump.bytes) {
        Some(at) if jobs > 1 => Some(rest.remove(at)),
        _ => None,
    };
    parallel(&rest, jobs, |db| restore(db, 1))?;
    if let Some(db) = largest {
        restore(db, jobs)?;
    }
    meter.finish();
    Ok(())
}

/// Why `dir` cannot take a backup, if it cannot: it (and `DIR.old` and
/// `DIR.partial` beside it, which pg-migrate also writes or removes) must
/// lie outside every cluster directory given (data directories,
/// tablespaces), and each must be absent, empty or a pg-migrate backup.
pub fn refuse_backup_dir(dir: &Path, clusters: &[&Path]) -> Option<Failure> {
    let paths = [
        dir.to_path_buf(),
        catalog::old_backup_dir(dir),
        catalog::partial_backup_dir(dir),
    ];
    for path in &paths {
        let resolved = resolve_existing_prefix(path);
        for cluster in clusters {
            if cluster.as_os_str().is_empty() {
                continue;
            }
            let cluster = resolve_existing_prefix(cluster);
            if resolved.starts_with(&cluster) || cluster.starts_with(&resolved) {
                return Some(Failure {
                    code: Code::Usage,
                    message: format!(
                        "the backup directory {} and the cluster directory {} lie inside one another",
                        path.display(),
                        cluster.display()
                    ),
                    remedy: Some("put the backup outside every data directory and tablespace".into()),
                    clusters: None,
                });
            }
        }
    }
    catalog::refuse_backup_dir(dir).map(|why| Failure {
        code: Code::Usage,
        message: why,
        remedy: Some(
            "name a directory that does not exist yet, an empty one, or one holding an earlier pg-migrate backup".into(),
        ),
        clusters: None,
    })
}

/// `path` with its longest existing ancestor resolved (symbolic links
/// followed), so that a directory still to be made is compared truthfully.
pub(crate) fn resolve_existing_prefix(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut current = path.to_path_buf();
    loop {
        if let Ok(real) = std::fs::canonicalize(&current) {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (current.file_name(), current.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                current = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}
