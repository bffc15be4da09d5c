//! One cluster's server checks in their order: reachable, install user,
//! databases that allow connections, the new cluster empty, no prepared
//! transactions, names that break a dump; each finding emitted as it is known.

use crate::initdb::suggested_initdb;
use crate::rules::ScanMode;
use crate::{CheckConfig, Finding, Report, Which};
use pgm_cluster::server::Endpoint;
use pgm_cluster::{DataDir, Installation, Server, ServerOptions, ServerStatus};

#[allow(unused_imports)]
use super::*;

/// Starts (or attaches to) one cluster's server, gathers its catalog facts
/// and emits that side's findings. `None` when the server could not be used.
pub(crate) fn inspect(
    which: Which,
    config: &CheckConfig,
    report: &mut Report,
    emit: &mut Emit<'_>,
    kept: &mut Option<Server>,
) -> Option<CatalogFacts> {
    let [connect_id, user_id, databases_id, _, prepared_id] = ids(which);
    let side = match which {
        Which::Old => &config.old,
        Which::New => &config.new,
    };
    let facts = match which {
        Which::Old => &report.old,
        Which::New => &report.new,
    };
    let install: Installation = facts.install.clone()?;
    let datadir: DataDir = facts.datadir.clone()?;
    let live = match (&facts.server, which) {
        (Some(ServerStatus::Running(pid)), Which::Old) => Some(pid.clone()),
        _ => None,
    };
    let server = match live {
        Some(pid) => {
            let (Some(socket_dir), Some(port)) = (pid.socket_dir.clone(), pid.port) else {
                let f = Finding::fail(
                    connect_id,
                    title(connect_id),
                    "live_server_unreachable",
                    "the running old server listens on no unix socket, so it cannot be inspected",
                    "stop the old server and run the check again (it will then be started privately)",
                );
                emit(report, f);
                skip_rest(which, report, emit);
                return None;
            };
            report.live_old = true;
            Server::attach(Endpoint {
                socket_dir,
                port,
                user: config.user.clone(),
            })
        }
        None => {
            let options = ServerOptions {
                port: side.port,
                socket_dir: match which {
                    Which::Old => config.socket_dir.clone(),
                    Which::New => config.socket_dir.join("new"),
                },
                binary_upgrade: true,
                durability_off: which == Which::New,
                extra_options: side.server_options.clone(),
                log_file: config.log_dir.join(format!("{}-server.log", which.name())),
                user: config.user.clone(),
            };
            match which {
                Which::Old => report.old_started = true,
                Which::New => report.new_started = true,
            }
            match Server::start(&install, &datadir, &options) {
                Ok(server) => server,
                Err(e) => {
                    fail_connect(&e.into(), which, config, report, emit);
                    return None;
                }
            }
        }
    };
    pgm_cluster::faults::point(|| format!("checks:{}-server-started", which.name()));
    let new_major = report
        .new
        .install
        .as_ref()
        .map(|i| i.version.major)
        .unwrap_or(install.version.major);
    let needed = report.old.catalog.as_ref().map(|c| c.uses.clone());
    let mode = if report.live_old && which == Which::Old {
        ScanMode::Live
    } else {
        ScanMode::Private
    };
    let gathered = gather(
        &server,
        which,
        Majors {
            this: install.version.major,
            new: new_major,
        },
        mode,
        config.jobs,
        needed.as_ref(),
    );
    // An upgrade keeps a server it started for its first steps.
    let keep =
        config.keep_old_server && which == Which::Old && gathered.is_ok() && !report.live_old;
    let stopped = if keep {
        *kept = Some(server);
        Ok(())
    } else {
        server.stop()
    };
    let mut facts = match gathered {
        Ok(facts) => facts,
        Err(e) => {
            fail_connect(&e, which, config, report, emit);
            return None;
        }
    };
    if let Err(e) = stopped {
        emit(
            report,
            Finding::fail(
                connect_id,
                title(connect_id),
                "server_stop_failed",
                e.to_string(),
                "look at the server log named above; stop the server by hand with pg_ctl stop before retrying",
            ),
        );
        skip_rest(which, report, emit);
        return None;
    }
    emit(
        report,
        Finding::pass(
            connect_id,
            title(connect_id),
            format!(
                "PostgreSQL {} {} as \"{}\"",
                install.version,
                if report.live_old && which == Which::Old {
                    "inspected while running"
                } else if keep {
                    "started privately (kept running for the upgrade)"
                } else {
                    "started privately and stopped again"
                },
                facts.connected_as
            ),
        ),
    );
    // The connecting role must be the bootstrap superuser on both sides.
    let user_finding = if facts.connected_as != facts.install_user {
        Finding::fail(
            user_id,
            title(user_id),
            "not_install_user",
            format!(
                "connected as \"{}\", but the {} cluster's install user (the role initdb created) is \"{}\"",
                facts.connected_as,
                which.name(),
                facts.install_user
            ),
            format!("pass -U {} (or set PGUSER)", facts.install_user),
        )
    } else if which == Which::New && facts.roles.len() > 1 {
        let others: Vec<&String> = facts
            .roles
            .iter()
            .filter(|r| **r != facts.install_user)
            .collect();
        Finding::fail(
            user_id,
            title(user_id),
            "new_cluster_not_empty",
            format!(
                "the new cluster has roles besides its install user: {}",
                others
                    .iter()
                    .map(|r| format!("\"{r}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!(
                "the new cluster must be freshly initialized; remove it and re-create it: {}",
                suggested_initdb(config, report)
            ),
        )
    } else {
        Finding::pass(
            user_id,
            title(user_id),
            format!("\"{}\" is the install user", facts.install_user),
        )
    };
    emit(report, user_finding);
    match which {
        Which::Old => {
            let blocked: Vec<String> = facts
                .databases
                .iter()
                .filter(|d| d.name != "template0" && !d.allow_connections)
                .map(|d| d.name.clone())
                .collect();
            let invalid: Vec<String> = facts
                .databases
                .iter()
                .filter(|d| d.connection_limit == -2)
                .map(|d| d.name.clone())
                .collect();
            let finding = if !invalid.is_empty() {
                Finding::fail(
                    databases_id,
                    title(databases_id),
                    "invalid_database",
                    format!(
                        "invalid databases (left by an interrupted DROP DATABASE): {}",
                        quote_list(&invalid)
                    ),
                    format!(
                        "drop them in the old cluster: {}",
                        invalid
                            .iter()
                            .map(|d| format!("DROP DATABASE {};", quote_ident(d)))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                )
            } else if !blocked.is_empty() {
                Finding::fail(
                    databases_id,
                    title(databases_id),
                    "database_not_connectable",
                    format!(
                        "databases that refuse connections cannot be carried over: {}",
                        quote_list(&blocked)
                    ),
                    format!(
                        "allow connections to them in the old cluster: {}",
                        blocked
                            .iter()
                            .map(|d| format!(
                                "ALTER DATABASE {} ALLOW_CONNECTIONS true;",
                                quote_ident(d)
                            ))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                )
            } else {
                Finding::pass(
                    databases_id,
                    title(databases_id),
                    format!("{} databases", facts.databases.len()),
                )
            };
            emit(report, finding);
            let names = if facts.names_with_newlines.is_empty() {
                Finding::pass(
                    "old-names",
                    title("old-names"),
                    "no database, role or tablespace name holds a line break",
                )
            } else {
                Finding::fail(
                    "old-names",
                    title("old-names"),
                    "newline_in_name",
                    format!(
                        "these names hold a newline or carriage return, which pg_dumpall refuses to write into a script: {}",
                        facts.names_with_newlines.join(", ").replace('\n', "\\n").replace('\r', "\\r")
                    ),
                    "rename them in the old cluster (ALTER DATABASE … RENAME TO, ALTER ROLE … RENAME TO, ALTER TABLESPACE … RENAME TO)",
                )
            };
            emit(report, names);
            let scanned: Vec<&DatabaseInfo> = facts
                .databases
                .iter()
                .filter(|d| d.user_objects.is_some())
                .collect();
            let relations: i64 = scanned.iter().filter_map(|d| d.user_relations).sum();
            emit(
                report,
                Finding::pass(
                    "old-database-scan",
                    title("old-database-scan"),
                    format!(
                        "{} databases scanned ({} user relations), {} at a time",
                        scanned.len(),
                        relations,
                        config.jobs
                    ),
                ),
            );
        }
        Which::New => {
            let extra_dbs: Vec<String> = facts
                .databases
                .iter()
                .filter(|d| !["template0", "template1", "postgres"].contains(&d.name.as_str()))
                .map(|d| d.name.clone())
                .collect();
            let busy_dbs: Vec<String> = facts
                .databases
                .iter()
                .filter(|d| d.user_objects.unwrap_or(0) > 0)
                .map(|d| {
                    let n = d.user_objects.unwrap_or(0);
                    format!(
                        "{} ({n} user object{})",
                        d.name,
                        if n == 1 { "" } else { "s" }
                    )
                })
                .collect();
            let finding = if extra_dbs.is_empty() && busy_dbs.is_empty() {
                Finding::pass(
                    "new-empty",
                    title("new-empty"),
                    "only the databases and objects initdb creates",
                )
            } else {
                let mut what = Vec::new();
                if !extra_dbs.is_empty() {
                    what.push(format!("user databases {}", quote_list(&extra_dbs)));
                }
                if !busy_dbs.is_empty() {
                    what.push(format!("user objects in {}", busy_dbs.join(", ")));
                }
                Finding::fail(
                    "new-empty",
                    title("new-empty"),
                    "new_cluster_not_empty",
                    format!(
                        "the new cluster is not freshly initialized: it has {}",
                        what.join(" and ")
                    ),
                    format!(
                        "remove the new cluster and re-create it empty: {}",
                        suggested_initdb(config, report)
                    ),
                )
            };
            emit(report, finding);
        }
    }
    let prepared = if !facts.prepared_transactions.is_empty() {
        Finding::fail(
            prepared_id,
            title(prepared_id),
            "prepared_transactions",
            format!(
                "the {} cluster has {} prepared transactions: {}",
                which.name(),
                facts.prepared_transactions.len(),
                facts.prepared_transactions.join(", ")
            ),
            "commit or roll back each, in its database: COMMIT PREPARED 'gid'; or ROLLBACK PREPARED 'gid'; (SELECT * FROM pg_prepared_xacts lists them)",
        )
    } else {
        Finding::pass(prepared_id, title(prepared_id), "none")
    };
    emit(report, prepared);
    if which == Which::Old {
        for finding in rule_findings(report, &facts) {
            emit(report, finding);
        }
    }
    facts.databases.sort_by_key(|d| d.oid);
    Some(facts)
}

/// The server could not be started or queried: that side's connect check
/// fails and the rest of its checks are skipped.
pub(crate) fn fail_connect(
    error: &crate::Error,
    which: Which,
    config: &CheckConfig,
    report: &mut Report,
    emit: &mut Emit<'_>,
) {
    let connect_id = ids(which)[0];
    let (code, remedy) = classify_connect_error(&error.to_string(), which, config);
    emit(
        report,
        Finding::fail(
            connect_id,
            title(connect_id),
            code,
            error.to_string(),
            remedy,
        ),
    );
    skip_rest(which, report, emit);
}

pub(crate) fn skip_rest(which: Which, report: &mut Report, emit: &mut Emit<'_>) {
    let prefix = format!("{}-", which.name());
    let compare_phase = CHECKS
        .iter()
        .position(|(id, _)| *id == "template0-locale")
        .unwrap();
    for (id, title) in CHECKS[..compare_phase]
        .iter()
        .filter(|(id, _)| id.starts_with(&prefix))
        .skip(1)
    {
        emit(
            report,
            Finding::skip(id, title, "not run: the server could not be used"),
        );
    }
}

pub(crate) fn classify_connect_error(
    text: &str,
    which: Which,
    config: &CheckConfig,
) -> (&'static str, String) {
    if text.contains("does not exist") && text.contains("role") {
        (
            "not_install_user",
            format!(
                "the role \"{}\" does not exist in the {} cluster: pass its install user (the role initdb created) with -U",
                config.user,
                which.name()
            ),
        )
    } else if [
        "password authentication failed",
        "password missing",
        "no password supplied",
    ]
    .iter()
    .any(|said| text.contains(said))
    {
        (
            "password_needed",
            format!(
                "the {} cluster's pg_hba.conf asks local connections for a password: give the password of \"{}\" in PGPASSWORD, or in a password file only you can read (chmod 0600) named by PGPASSFILE or at ~/.pgpass, as the line *:*:*:{}:PASSWORD (the host field * matches the private socket directory pg-migrate's servers listen in); or allow local connections by peer or trust while upgrading",
                which.name(),
                config.user,
                config.user
            ),
        )
    } else if text.contains("socket path") {
        (
            "socket_path_too_long",
            "pass a short socket directory with -s, e.g. -s /tmp".to_string(),
        )
    } else {
        (
            "server_start_failed",
            format!(
                "read the server log in {}; fix what it names (often an option given with {} or a setting in postgresql.conf)",
                config.log_dir.display(),
                if which == Which::Old { "-o" } else { "-O" }
            ),
        )
    }
}
