//! Logical backups: `pg-migrate backup`, the `backup` step of an upgrade
//! (`--backup-dir`), `pg-migrate restore`, and the two halves of the
//! dump-and-reload method. pgm-catalog dumps, describes and verifies; here
//! are the servers, the parallelism, the events and the refusals.

use std::path::{Path, PathBuf};
use std::time::Instant;

use pgm_catalog::backup::{self as catalog, BackupDatabase, Manifest, Unusable};
use pgm_catalog::ClientConn;
use pgm_cluster::{ClusterState, DataDir, Installation, Server, ServerOptions, ServerStatus};

use crate::cli::Settings;
use crate::engine::parallel;
use crate::exit;
use crate::failure::{Code, Failure};
use crate::report::ClusterCondition;
use crate::report::{BackupCounts, ClusterStates, Event, PlanSide, Printer, StepStatus};
use crate::rundir::RunDir;

/// A finished backup.
pub struct Written {
    pub manifest: Manifest,
    /// Where an earlier backup in the same directory went.
    pub moved_aside: Option<PathBuf>,
}

pub fn conn_of(server: &Server) -> ClientConn {
    ClientConn {
        socket_dir: server.endpoint.socket_dir.clone(),
        port: server.endpoint.port,
        user: server.endpoint.user.clone(),
    }
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
    let facts =
        catalog::source_facts(&mut client).map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
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
    let conn = conn_of(server);
    catalog::dump_globals_for_backup(
        tools,
        &conn,
        &partial.join(catalog::GLOBALS_FILE),
        &log_dir.join("backup-globals.log"),
    )
    .map_err(fail)?;
    let globals = catalog::describe_file(&partial, catalog::GLOBALS_FILE).map_err(fail)?;
    let meter = printer.meter(step, facts.databases.len() as u64, "databases");
    let indexed: Vec<(usize, &String)> = facts.databases.iter().enumerate().collect();
    let databases = parallel(&indexed, jobs, |(index, name)| {
        let file = catalog::database_file(*index);
        catalog::dump_database_for_backup(
            tools,
            &conn,
            name,
            &partial.join(&file),
            &log_dir.join(format!("backup-{}.log", file.trim_end_matches(".dump"))),
        )
        .map_err(fail)?;
        let dump = catalog::describe_file(&partial, &file).map_err(fail)?;
        meter.add(1, dump.bytes);
        pgm_cluster::faults::point(|| format!("backup:database:{}", index + 1));
        Ok(BackupDatabase {
            name: (*name).clone(),
            dump,
        })
    })?;
    meter.finish();
    let manifest = Manifest {
        format: catalog::MANIFEST_FORMAT,
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
/// at a time, each dropped if present and created as it was.
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
    let conn = conn_of(server);
    let globals = work_dir.join("globals-for-restore.sql");
    catalog::globals_for_target(manifest, dir, &roles, tablespace_map, &globals).map_err(fail)?;
    catalog::run_globals(tools, &conn, &globals, &log_dir.join("restore-globals.log"))
        .map_err(fail)?;
    let meter = printer.meter(step, manifest.databases.len() as u64, "databases");
    let restore = |db: &BackupDatabase| -> Result<(), Failure> {
        let log = log_dir.join(format!(
            "restore-{}.log",
            db.dump.file.trim_end_matches(".dump")
        ));
        catalog::restore_backup_database(tools, &conn, &db.name, &dir.join(&db.dump.file), &log)
            .map_err(fail)?;
        meter.add(1, db.dump.bytes);
        Ok(())
    };
    // template1 is dropped and re-created: nothing else may use it meanwhile.
    let (first, rest): (Vec<&BackupDatabase>, Vec<&BackupDatabase>) = manifest
        .databases
        .iter()
        .partition(|d| d.name == "template1");
    for db in first {
        restore(db)?;
    }
    parallel(&rest, jobs, |db| restore(db))?;
    meter.finish();
    Ok(())
}

/// Why a backup cannot go into a cluster of `target`'s installation, if it cannot.
pub fn refuse_for_target(manifest: &Manifest, target: &Installation) -> Option<Failure> {
    let major = target.version.major.number();
    if manifest.server_major > major {
        return Some(Failure {
            code: Code::BackupTooNew,
            message: format!(
                "the backup is of a PostgreSQL {} cluster; {} is PostgreSQL {major}, and a cluster's dump cannot go back to an older major",
                manifest.server_major,
                target.bindir.display()
            ),
            remedy: Some(format!(
                "restore it with an installation of PostgreSQL {} or later (-B)",
                manifest.server_major
            )),
            clusters: None,
        });
    }
    if !catalog::restore_can_read(target.version.major, manifest.tools_major) {
        return Some(Failure {
            code: Code::BackupTooNew,
            message: format!(
                "the backup was written by pg_dump {}; pg_restore {major} cannot read it",
                manifest.tools_version
            ),
            remedy: Some(format!(
                "restore it into PostgreSQL {} or later, or back up again with an installation of PostgreSQL {major} that has pg_dump",
                manifest.tools_major
            )),
            clusters: None,
        });
    }
    None
}

/// `pg-migrate backup`.
pub fn run_backup(settings: &Settings, printer: &Printer, started: Instant) -> i32 {
    let name = "backup";
    let fail_early = |code: Code, message: String, remedy: &str, status: i32| {
        crate::commands::fail_early(printer, started, name, code, message, remedy, status)
    };
    let dir = settings
        .backup_dir
        .clone()
        .expect("resolve requires --backup-dir for backup");
    let old_install = match Installation::discover(&settings.old_bindir) {
        Ok(install) => install,
        Err(e) => {
            return fail_early(
                Code::Usage,
                format!("the old installation cannot be used: {e}"),
                "pass the old cluster's bin directory with -b",
                exit::USAGE,
            )
        }
    };
    let old_dir = match DataDir::open(&settings.old_datadir, None) {
        Ok(dir) => dir,
        Err(e) => {
            return fail_early(
                Code::Usage,
                format!("the old data directory cannot be used: {e}"),
                "pass the old cluster's data directory with -d",
                exit::USAGE,
            )
        }
    };
    if let Some(refusal) = refuse_backup_dir(&dir, &[&old_dir.path]) {
        return fail_early(
            refusal.code,
            refusal.message,
            &refusal.remedy.unwrap_or_default(),
            exit::USAGE,
        );
    }
    let fallback = if settings.new_bindir_given {
        Installation::discover(&settings.new_bindir).ok()
    } else {
        None
    };
    let Some(tools) = catalog::choose_dump_tools(&old_install, fallback.as_ref()) else {
        return fail_early(
            Code::Usage,
            format!(
                "{} has no pg_dump and pg_dumpall to write the backup with",
                old_install.bindir.display()
            ),
            "pass -B with the bin directory of an installation of the same or a newer major that has them (its pg_restore will be needed to restore the backup)",
            exit::USAGE,
        );
    };
    if old_dir.major != old_install.version.major {
        return fail_early(
            Code::Usage,
            format!(
                "{} is a PostgreSQL {} cluster and {} is PostgreSQL {}",
                old_dir.path.display(),
                old_dir.major,
                old_install.bindir.display(),
                old_install.version.major
            ),
            "pass the bin directory of the cluster's own major with -b",
            exit::USAGE,
        );
    }
    let run_dir = match crate::commands::make_run_dir(settings, printer, started, name) {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    let log_dir = run_dir.log_dir();
    printer.emit(&Event::Plan {
        command: name,
        mode: settings.mode,
        old: PlanSide::new(&old_install.bindir, &old_dir.path, settings.old_port),
        new: PlanSide::new(&tools.bindir, &dir, 0),
        user: settings.user.clone(),
        jobs: settings.jobs,
        run_dir: run_dir.path().display().to_string(),
        live_check_allowed: true,
        backup_dir: Some(dir.display().to_string()),
        note: None,
    });
    let (server, old_state) = match old_server(settings, &old_install, &old_dir, &run_dir, &log_dir)
    {
        Ok(found) => found,
        Err(failure) => {
            // A server pg-migrate cannot use is a refusal; one that fails
            // to start or answer is a failure.
            let code = if matches!(failure.code, Code::ServerRunning | Code::Usage) {
                exit::USAGE
            } else {
                exit::FAILED_OLD_INTACT
            };
            let ending = Ending::Failed {
                failure,
                exit_code: code,
                clusters: ClusterStates::unchanged(),
            };
            return report(printer, settings, started, name, run_dir, ending, None);
        }
    };
    printer.emit(&Event::StepStart { step: "backup" });
    let step_started = Instant::now();
    let work = Work {
        printer,
        step: "backup",
        jobs: settings.jobs,
        log_dir: &log_dir,
    };
    let result = write(&work, &server, tools, &old_dir.path, &dir);
    printer.emit(&Event::StepEnd {
        step: "backup",
        status: StepStatus::of(&result),
        duration_ms: step_started.elapsed().as_millis() as u64,
    });
    let stopped = server
        .stop()
        .map_err(|e| Failure::new(Code::ServerStopFailed, e));
    let (ending, counts) = match (result, stopped) {
        (Ok(written), Ok(())) => (
            Ending::Done(vec![format!(
                "restore it with: pg-migrate restore --backup-dir {} -B BIN -D NEW_DATADIR",
                crate::engine::quote(&dir)
            )]),
            Some(BackupCounts {
                dir: dir.display().to_string(),
                databases: written.manifest.databases.len(),
                bytes: written.manifest.bytes(),
                moved_aside: written
                    .moved_aside
                    .as_ref()
                    .map(|p| p.display().to_string()),
            }),
        ),
        (Err(failure), _) | (Ok(_), Err(failure)) => (
            Ending::Failed {
                exit_code: if failure.code == Code::Usage {
                    exit::USAGE
                } else {
                    exit::FAILED_OLD_INTACT
                },
                failure,
                clusters: ClusterStates {
                    old: old_state,
                    new: ClusterCondition::Unchanged,
                },
            },
            None,
        ),
    };
    report(printer, settings, started, name, run_dir, ending, counts)
}

/// The old cluster's server for a backup: the running one (a live backup
/// over its unix socket), else one started privately. With the state the
/// cluster will be left in.
fn old_server(
    settings: &Settings,
    install: &Installation,
    dir: &DataDir,
    run_dir: &RunDir,
    log_dir: &Path,
) -> Result<(Server, ClusterCondition), Failure> {
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
                .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
            return Ok((Server::attach(endpoint), ClusterCondition::RunningUntouched));
        }
        Ok(ServerStatus::StalePidFile(_)) => {
            return Err(Failure {
                code: Code::ServerRunning,
                message: format!(
                    "{} has a postmaster.pid but no server: it crashed or was killed",
                    dir.path.display()
                ),
                remedy: Some("start the server once so that it recovers, then back up the running server (or stop it cleanly first)".into()),
                clusters: None,
            })
        }
        _ => {}
    }
    let control = dir.control().map_err(|e| Failure::new(Code::Usage, e))?;
    if control.state != ClusterState::ShutDown {
        return Err(Failure {
            code: Code::Usage,
            message: format!(
                "{} was not shut down cleanly (pg_control says \"{}\")",
                dir.path.display(),
                control.state.describe()
            ),
            remedy: Some("start the server once so that it recovers and stop it cleanly, or back up the running server".into()),
            clusters: None,
        });
    }
    let options = run_dir.plain_server_options(settings, true, log_dir.join("old-server.log"));
    let server = Server::start(install, dir, &options)
        .map_err(|e| Failure::new(Code::ServerStartFailed, e))?;
    Ok((server, ClusterCondition::StartedAndStopped))
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
fn resolve_existing_prefix(path: &Path) -> PathBuf {
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

/// The backup must not lie in the target cluster.
fn restore_source_check(dir: &Path, target: &Path) -> Option<Failure> {
    let (dir, cluster) = (
        resolve_existing_prefix(dir),
        resolve_existing_prefix(target),
    );
    (dir.starts_with(&cluster) || cluster.starts_with(&dir)).then(|| Failure {
        code: Code::Usage,
        message: format!(
            "the backup {} and the target cluster {} lie inside one another",
            dir.display(),
            cluster.display()
        ),
        remedy: Some("restore into a cluster outside the backup directory".into()),
        clusters: None,
    })
}

/// `pg-migrate restore`.
pub fn run_restore(settings: &Settings, printer: &Printer, started: Instant) -> i32 {
    let name = "restore";
    let fail_early = |code: Code, message: String, remedy: &str, status: i32| {
        crate::commands::fail_early(printer, started, name, code, message, remedy, status)
    };
    let dir = settings
        .backup_dir
        .clone()
        .expect("resolve requires --backup-dir for restore");
    // The backup first: nothing is touched for a backup that cannot be used.
    let manifest = match catalog::verify_backup(&dir) {
        Ok(manifest) => manifest,
        Err(unusable) => {
            let remedy = match unusable {
                Unusable::NoManifest => "name the directory a finished pg-migrate backup wrote (the one with manifest.json), or make a new backup",
                _ => "use another copy of the backup (the older one may be in DIR.old), or make a new one",
            };
            return fail_early(
                Code::BackupUnusable,
                format!(
                    "the backup in {} cannot be restored: {unusable}",
                    dir.display()
                ),
                remedy,
                exit::USAGE,
            );
        }
    };
    let target = match Installation::discover(&settings.new_bindir) {
        Ok(install) => install,
        Err(e) => {
            return fail_early(
                Code::Usage,
                format!("the target installation cannot be used: {e}"),
                "pass the bin directory of the installation to restore into with -B",
                exit::USAGE,
            )
        }
    };
    let missing = target.missing(&[
        pgm_cluster::Tool::Postgres,
        pgm_cluster::Tool::Initdb,
        pgm_cluster::Tool::PgRestore,
        pgm_cluster::Tool::Psql,
    ]);
    if !missing.is_empty() {
        return fail_early(
            Code::Usage,
            format!(
                "{} lacks {}",
                target.bindir.display(),
                missing
                    .iter()
                    .map(|t| t.file_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "pass -B with a full installation (server and client programs)",
            exit::USAGE,
        );
    }
    if let Some(refusal) = refuse_for_target(&manifest, &target) {
        return fail_early(
            refusal.code,
            refusal.message,
            &refusal.remedy.unwrap_or_default(),
            exit::USAGE,
        );
    }
    for (tablespace, _) in &settings.tablespace_map {
        if !manifest.tablespaces.iter().any(|t| &t.name == tablespace) {
            return fail_early(
                Code::Usage,
                format!("the backup has no tablespace named {tablespace:?}"),
                &format!(
                    "its tablespaces are: {}",
                    manifest
                        .tablespaces
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                exit::USAGE,
            );
        }
    }
    let target_dir = settings.new_datadir.clone();
    let same = |a: &Path, b: &Path| {
        std::fs::canonicalize(a)
            .ok()
            .is_some_and(|a| std::fs::canonicalize(b).ok() == Some(a))
    };
    if same(&target_dir, &manifest.datadir) {
        return fail_early(
            Code::Usage,
            format!(
                "{} is the cluster this backup was made of",
                target_dir.display()
            ),
            "restore into a fresh cluster: a restore would replace the original's postgres and template1 databases",
            exit::USAGE,
        );
    }
    if let Some(refusal) = restore_source_check(&dir, &target_dir) {
        return fail_early(
            refusal.code,
            refusal.message,
            &refusal.remedy.unwrap_or_default(),
            exit::USAGE,
        );
    }
    let create = !target_dir.exists();
    if !create {
        match DataDir::open(&target_dir, None) {
            Ok(existing) if existing.major != target.version.major => {
                return fail_early(
                    Code::Usage,
                    format!(
                        "{} is a PostgreSQL {} cluster, not {}",
                        target_dir.display(),
                        existing.major,
                        target.version.major
                    ),
                    "name a fresh cluster of the -B installation, or a directory that does not exist yet",
                    exit::USAGE,
                )
            }
            Ok(existing) => {
                if !matches!(existing.server_status(), Ok(ServerStatus::Stopped)) {
                    return fail_early(
                        Code::ServerRunning,
                        format!("a server runs on {} (or crashed there)", target_dir.display()),
                        "stop it: pg-migrate restores into a stopped fresh cluster",
                        exit::USAGE,
                    );
                }
            }
            Err(e) => {
                return fail_early(
                    Code::Usage,
                    format!("{} is not a cluster: {e}", target_dir.display()),
                    "name a fresh cluster of the -B installation, or a directory that does not exist yet",
                    exit::USAGE,
                )
            }
        }
    }
    let run_dir = match crate::commands::make_run_dir(settings, printer, started, name) {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    let log_dir = run_dir.log_dir();
    printer.emit(&Event::Plan {
        command: name,
        mode: settings.mode,
        old: PlanSide::new(&manifest.tools_bindir, &dir, 0),
        new: PlanSide::new(&target.bindir, &target_dir, settings.new_port),
        user: settings.user.clone(),
        jobs: settings.jobs,
        run_dir: run_dir.path().display().to_string(),
        live_check_allowed: false,
        backup_dir: Some(dir.display().to_string()),
        note: None,
    });
    let mut new_state = ClusterCondition::Unchanged;
    let result = (|| -> Result<(), Failure> {
        if create {
            let command = catalog::initdb_for(&target, &manifest, &target_dir, &settings.user)
                .map_err(|e| Failure::new(Code::InitdbFailed, e))?
                .args(crate::engine::initdb_auth(printer, &settings.user));
            printer.emit(&Event::Initdb {
                command: command.command_line(),
                datadir: target_dir.display().to_string(),
            });
            new_state = ClusterCondition::Incomplete;
            command
                .run()
                .map_err(|e| Failure::new(Code::InitdbFailed, e))?;
        }
        let datadir =
            DataDir::open(&target_dir, None).map_err(|e| Failure::new(Code::RestoreFailed, e))?;
        let options = ServerOptions {
            // Synced as a whole at the end; a restore cut short is redone.
            durability_off: true,
            ..run_dir.plain_server_options(settings, false, log_dir.join("target-server.log"))
        };
        let server = Server::start(&target, &datadir, &options)
            .map_err(|e| Failure::new(Code::ServerStartFailed, e))?;
        if new_state == ClusterCondition::Unchanged {
            new_state = ClusterCondition::StartedAndStopped;
        }
        let mut extra = Vec::new();
        for database in ["template1", "postgres"] {
            let mut client = server
                .connect(database)
                .map_err(|e| Failure::new(Code::NewCatalogFailed, e))?;
            extra.extend(
                catalog::not_fresh(&mut client, database)
                    .map_err(|e| Failure::new(Code::NewCatalogFailed, e))?,
            );
        }
        if !extra.is_empty() {
            return Err(Failure {
                code: Code::RestoreTargetNotFresh,
                message: format!(
                    "{} is not a fresh cluster: it holds {}",
                    target_dir.display(),
                    extra.join(", ")
                ),
                remedy: Some("restore into a freshly made cluster (or a directory that does not exist yet): a restore replaces postgres and template1 and changes roles".into()),
                clusters: None,
            });
        }
        new_state = ClusterCondition::Incomplete;
        printer.emit(&Event::StepStart { step: "restore" });
        let step_started = Instant::now();
        let work = Work {
            printer,
            step: "restore",
            jobs: settings.jobs,
            log_dir: &log_dir,
        };
        let result = restore_into(
            &work,
            &server,
            &target,
            &manifest,
            &dir,
            &settings.tablespace_map,
            run_dir.path(),
        );
        printer.emit(&Event::StepEnd {
            step: "restore",
            status: StepStatus::of(&result),
            duration_ms: step_started.elapsed().as_millis() as u64,
        });
        result?;
        server
            .stop()
            .map_err(|e| Failure::new(Code::ServerStopFailed, e))?;
        if !settings.no_sync {
            target
                .command(pgm_cluster::Tool::Initdb)
                .map_err(|e| Failure::new(Code::SyncFailed, e))?
                .arg("--sync-only")
                .arg("-D")
                .arg(&target_dir)
                .run()
                .map_err(|e| Failure::new(Code::SyncFailed, e))?;
        }
        Ok(())
    })();
    let (ending, counts) = match result {
        Ok(()) => (
            Ending::Done(vec![format!(
                "start the restored cluster: {} -D {} start",
                crate::engine::quote(&target.bindir.join("pg_ctl")),
                crate::engine::quote(&target_dir)
            )]),
            Some(BackupCounts {
                dir: dir.display().to_string(),
                databases: manifest.databases.len(),
                bytes: manifest.bytes(),
                moved_aside: None,
            }),
        ),
        Err(mut failure) => {
            if new_state == ClusterCondition::Incomplete {
                let advice = format!(
                    "the cluster in {} is half-restored: remove it{} and restore again",
                    target_dir.display(),
                    if create {
                        ""
                    } else {
                        " (and re-create it with initdb)"
                    }
                );
                failure.remedy = Some(match failure.remedy.take() {
                    Some(r) => format!("{r}; {advice}"),
                    None => advice,
                });
            }
            let exit_code = if failure.code == Code::RestoreTargetNotFresh {
                exit::USAGE
            } else {
                exit::FAILED_OLD_INTACT
            };
            (
                Ending::Failed {
                    failure,
                    exit_code,
                    // The backup is the "old" side: it is only read.
                    clusters: ClusterStates {
                        old: ClusterCondition::Unchanged,
                        new: new_state,
                    },
                },
                None,
            )
        }
    };
    report(printer, settings, started, name, run_dir, ending, counts)
}

/// How a backup or restore run ended.
enum Ending {
    Done(Vec<String>),
    Failed {
        failure: Failure,
        exit_code: i32,
        clusters: ClusterStates,
    },
}

/// The error (if any) and the summary of a backup or restore run.
fn report(
    printer: &Printer,
    settings: &Settings,
    started: Instant,
    name: &'static str,
    run_dir: RunDir,
    ending: Ending,
    counts: Option<BackupCounts>,
) -> i32 {
    let (exit_code, next_steps) = match ending {
        Ending::Done(next) => (exit::SUCCESS, next),
        Ending::Failed {
            failure,
            exit_code,
            clusters,
        } => {
            printer.emit(&Event::Error {
                code: failure.code,
                message: failure.message,
                remedy: failure.remedy,
                causes: Vec::new(),
                clusters,
            });
            (exit_code, Vec::new())
        }
    };
    let logs = run_dir.kept_logs(settings.retain, exit_code != exit::SUCCESS);
    let restore = name == "restore";
    printer.emit(&Event::Summary {
        command: name,
        result: if exit_code == exit::SUCCESS {
            "ok"
        } else {
            "error"
        },
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        checks: None,
        old_version: None,
        new_version: None,
        upgrade: None,
        backup: if restore { None } else { counts.clone() },
        restore: if restore { counts } else { None },
        after: None,
        logs,
        next_steps,
    });
    exit_code
}
