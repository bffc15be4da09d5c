//! `pg-migrate restore`: a backup verified against its manifest and restored
//! into a fresh cluster (made with the new installation's initdb if need be).

use super::backup::{report, Ending};
use crate::cli::Settings;
use crate::exit;
use crate::failure::{Code, Failure};
use crate::logical_backup::*;
use crate::output::ClusterCondition;
use crate::output::{BackupCounts, ClusterStates, Event, PlanSide, Printer, StepStatus};
use pgm_catalog::backup::{self as catalog, Manifest};
use pgm_cluster::{DataDir, Installation, Server, ServerOptions, ServerStatus};
use std::path::Path;
use std::time::Instant;

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

/// The backup must not lie in the target cluster.
pub(crate) fn restore_source_check(dir: &Path, target: &Path) -> Option<Failure> {
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
                pgm_catalog::Error::BackupWithoutManifest => "name the directory a finished pg-migrate backup wrote (the one with manifest.json), or make a new backup",
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
    let target_dir = settings.new_datadir().to_path_buf();
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
                crate::support::quote(&target.bindir.join("pg_ctl")),
                crate::support::quote(&target_dir)
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
