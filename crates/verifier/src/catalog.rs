//! Checks that need a server: the old one is started privately in
//! binary-upgrade mode (or, in a live check, inspected as it runs), the new
//! one likewise; one connection per database, `-j` databases at a time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use pgm_cluster::server::Endpoint;
use pgm_cluster::{DataDir, Installation, PgMajor, Server, ServerOptions, ServerStatus};
use serde::Serialize;

use crate::catalogue::{
    not_applicable, CapabilityUse, ObjectRef, ScanMode, EXTENSIONS_SQL, LIBRARIES_SQL, RULES,
    UNICODE_DEPENDENT_SQL,
};
use crate::initdb::suggested_initdb;
use crate::{CheckConfig, Finding, Report, Which};

/// Every catalog check, so that all of them can be reported as skipped.
pub(crate) const CHECKS: [(&str, &str); 32] = [
    ("old-connect", "old server reachable"),
    ("old-install-user", "old cluster's install user"),
    ("old-databases", "old databases accept connections"),
    ("old-names", "names the dump tools can carry"),
    ("old-database-scan", "every old database inspected"),
    (
        "old-prepared-transactions",
        "no prepared transactions in the old cluster",
    ),
    ("old-reg-types", "no columns of OID-referencing reg* types"),
    ("old-aclitem-columns", "no columns of type aclitem"),
    ("old-postfix-operators", "no postfix operators"),
    (
        "old-polymorphic-functions",
        "no aggregates or operators on the old polymorphic array functions",
    ),
    (
        "old-encoding-conversions",
        "no user-defined encoding conversions",
    ),
    (
        "old-not-null-inheritance",
        "NOT NULL agrees between inheritance parents and children",
    ),
    (
        "old-logical-slots",
        "no logical replication slots left behind",
    ),
    (
        "old-logical-slots-usable",
        "every logical slot valid and caught up",
    ),
    (
        "old-subscription-states",
        "every subscribed table ready or still to be copied",
    ),
    (
        "old-subscription-origins",
        "every subscription has its replication origin",
    ),
    (
        "old-isn-float8",
        "contrib/isn only where float8 passing matches",
    ),
    ("old-reserved-role-names", "no user roles named pg_*"),
    ("new-connect", "new server reachable"),
    ("new-install-user", "new cluster's install user"),
    ("new-empty", "new cluster freshly initialized"),
    (
        "new-prepared-transactions",
        "no prepared transactions in the new cluster",
    ),
    ("template0-locale", "encoding and locale provider"),
    ("new-icu", "ICU, where the old cluster uses it"),
    ("new-lz4", "lz4, where the old cluster uses it"),
    ("new-xml", "libxml, where the restore must parse xml values"),
    (
        "new-extensions",
        "every installed extension available in the new installation",
    ),
    (
        "new-libraries",
        "every shared library the old cluster needs loads in the new installation",
    ),
    (
        "new-collation-versions",
        "collation library versions unchanged for indexes",
    ),
    (
        "new-unicode-version",
        "no expressions that depend on a changed Unicode version",
    ),
    (
        "new-replication-origins",
        "replication origins for every subscription",
    ),
    (
        "new-logical-slots",
        "the new cluster can take the old cluster's logical slots",
    ),
];

fn title(id: &str) -> &'static str {
    CHECKS
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, t)| *t)
        .unwrap_or("catalog check")
}

/// What the catalog of one cluster says.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogFacts {
    /// The bootstrap superuser (OID 10).
    pub install_user: String,
    pub connected_as: String,
    pub databases: Vec<DatabaseInfo>,
    pub template0: TemplateLocale,
    /// Whether the server was built with ICU (initdb imports ICU collations).
    pub icu_available: bool,
    /// Roles other than the predefined `pg_*` ones.
    pub roles: Vec<String>,
    /// Databases, roles and tablespaces whose names hold a newline or
    /// carriage return (pg_dumpall refuses them).
    pub names_with_newlines: Vec<String>,
    /// Old cluster: offending objects per catalogue rule.
    pub rule_hits: Vec<(&'static str, ObjectRef)>,
    /// Old cluster: what it uses that the new installation must provide.
    pub uses: CapabilityUse,
    /// New cluster: what its installation can do.
    pub can: Capabilities,
    /// Prepared transactions, each as "'gid' (database d, owner o, prepared at t)".
    pub prepared_transactions: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseInfo {
    pub oid: u32,
    pub name: String,
    pub allow_connections: bool,
    pub connection_limit: i32,
    /// Objects with user OIDs (relations, functions, types, schemas,
    /// extensions); `None` when the database was not scanned.
    pub user_objects: Option<i64>,
    pub user_relations: Option<i64>,
    /// User tables (ordinary and partitioned): what pg_dump locks, one each.
    pub user_tables: Option<i64>,
    /// User sequences: pg_dump locks each too when it reads its value
    /// (`--sequence-data`, as an upgrade in one go dumps them).
    pub user_sequences: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateLocale {
    pub encoding: String,
    /// "libc", "icu" or "builtin".
    pub provider: String,
    pub collate: String,
    pub ctype: String,
    /// The ICU or builtin locale, where the provider uses one.
    pub locale: Option<String>,
}

type Emit<'a> = dyn FnMut(&mut Report, Finding) + 'a;

pub(crate) fn run(config: &CheckConfig, report: &mut Report, emit: &mut Emit<'_>) {
    let Some(old) = inspect(Which::Old, config, report, emit) else {
        skip_from(
            CHECKS
                .iter()
                .position(|(id, _)| *id == "new-connect")
                .unwrap(),
            report,
            emit,
        );
        return;
    };
    report.old.catalog = Some(old);
    if report.new_to_create {
        for (id, title) in &CHECKS[CHECKS
            .iter()
            .position(|(id, _)| *id == "new-connect")
            .unwrap()..]
        {
            emit(
                report,
                Finding::skip(
                    id,
                    title,
                    "the new cluster does not exist yet: checked once pg-migrate has created it",
                ),
            );
        }
        return;
    }
    run_new(config, report, emit);
}

/// The new cluster's catalog checks and the locale comparison.
pub(crate) fn run_new(config: &CheckConfig, report: &mut Report, emit: &mut Emit<'_>) {
    let Some(new) = inspect(Which::New, config, report, emit) else {
        skip_from(CHECKS.len() - 1, report, emit);
        return;
    };
    report.new.catalog = Some(new);
    let finding = compare_locales(report);
    emit(report, finding);
    for finding in compare_capabilities(report) {
        emit(report, finding);
    }
}

fn skip_from(index: usize, report: &mut Report, emit: &mut Emit<'_>) {
    let index = if index == CHECKS.len() - 1 {
        CHECKS
            .iter()
            .position(|(id, _)| *id == "template0-locale")
            .unwrap()
    } else {
        index
    };
    for (id, title) in &CHECKS[index..] {
        emit(
            report,
            Finding::skip(id, title, "not run: an earlier catalog check failed"),
        );
    }
}

fn ids(which: Which) -> [&'static str; 5] {
    match which {
        Which::Old => [
            "old-connect",
            "old-install-user",
            "old-databases",
            "old-database-scan",
            "old-prepared-transactions",
        ],
        Which::New => [
            "new-connect",
            "new-install-user",
            "new-empty",
            "new-empty",
            "new-prepared-transactions",
        ],
    }
}

/// Starts (or attaches to) one cluster's server, gathers its catalog facts
/// and emits that side's findings. `None` when the server could not be used.
fn inspect(
    which: Which,
    config: &CheckConfig,
    report: &mut Report,
    emit: &mut Emit<'_>,
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
                    fail_connect(&e, which, config, report, emit);
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
        report.kept_old = Some(server);
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
fn fail_connect(
    error: &pgm_cluster::Error,
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

fn skip_rest(which: Which, report: &mut Report, emit: &mut Emit<'_>) {
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

fn classify_connect_error(
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

/// The major of the cluster being inspected and of the new installation.
#[derive(Clone, Copy)]
struct Majors {
    this: PgMajor,
    new: PgMajor,
}

fn gather(
    server: &Server,
    which: Which,
    majors: Majors,
    mode: ScanMode,
    jobs: usize,
    needed: Option<&CapabilityUse>,
) -> Result<CatalogFacts, pgm_cluster::Error> {
    let (major, new_major) = (majors.this, majors.new);
    let db = "template1";
    let mut client = server.connect(db)?;
    let mut rule_hits: Vec<(&'static str, ObjectRef)> = Vec::new();
    let mut cluster_uses = CapabilityUse::default();
    let mut uses_preload: Vec<String> = Vec::new();
    // (plugin, quoted slot name, database) of every logical slot the upgrade carries.
    let mut slot_plugins: Vec<(String, String, String)> = Vec::new();
    let q = |what: &str| {
        let what = what.to_string();
        move |e: postgres::Error| pgm_cluster::Error::Query {
            database: db.to_string(),
            what,
            detail: pgm_cluster::describe_pg_error(&e),
        }
    };
    let row = client
        .query_one(
            "SELECT current_user::text, (SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = 10),
                    (SELECT pg_catalog.array_agg(pg_catalog.format('%L (database %I, owner %I, prepared at %s)',
                                                                   gid, database, owner, prepared)
                                                 ORDER BY prepared)
                       FROM pg_catalog.pg_prepared_xacts),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_collation WHERE collprovider = 'i')",
            &[],
        )
        .map_err(q("reading the install user"))?;
    let (connected_as, install_user, prepared_transactions, icu_available): (
        String,
        String,
        Option<Vec<String>>,
        bool,
    ) = (row.get(0), row.get(1), row.get(2), row.get(3));
    let prepared_transactions = prepared_transactions.unwrap_or_default();
    let roles = client
        .query(
            "SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname !~ '^pg_' ORDER BY 1",
            &[],
        )
        .map_err(q("listing roles"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let provider = if major.has_locale_provider() {
        "CASE datlocprovider WHEN 'i' THEN 'icu' WHEN 'b' THEN 'builtin' ELSE 'libc' END"
    } else {
        "'libc'"
    };
    let locale = major
        .datlocale_column()
        .map_or("NULL::text".to_string(), |c| format!("{c}::text"));
    let row = client
        .query_one(
            &format!(
                "SELECT pg_catalog.pg_encoding_to_char(encoding)::text, {provider}, datcollate::text, datctype::text, {locale}
                   FROM pg_catalog.pg_database WHERE datname = 'template0'"
            ),
            &[],
        )
        .map_err(q("reading template0's locale"))?;
    let template0 = TemplateLocale {
        encoding: row.get(0),
        provider: row.get(1),
        collate: row.get(2),
        ctype: row.get(3),
        locale: row.get(4),
    };
    let mut databases: Vec<DatabaseInfo> = client
        .query(
            "SELECT oid, datname::text, datallowconn, datconnlimit FROM pg_catalog.pg_database ORDER BY oid",
            &[],
        )
        .map_err(q("listing databases"))?
        .iter()
        .map(|r| DatabaseInfo {
            oid: r.get(0),
            name: r.get(1),
            allow_connections: r.get(2),
            connection_limit: r.get(3),
            user_objects: None,
            user_relations: None,
            user_tables: None,
            user_sequences: None,
        })
        .collect();
    let names_with_newlines = client
        .query(
            "SELECT kind || ' ' || pg_catalog.quote_ident(name) FROM (
               SELECT 'database' AS kind, datname::text AS name FROM pg_catalog.pg_database
               UNION ALL SELECT 'role', rolname::text FROM pg_catalog.pg_roles
               UNION ALL SELECT 'tablespace', spcname::text FROM pg_catalog.pg_tablespace) n
             WHERE name ~ '[\n\r]' ORDER BY 1",
            &[],
        )
        .map_err(q("looking for names with newlines"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (mut rule_hits, can) = match (which, needed) {
        (Which::Old, _) => {
            for rule in RULES
                .iter()
                .filter(|r| r.global && (r.applies)(major, new_major))
            {
                for mut object in objects(&mut client, db, &(rule.sql)(mode), rule.title)? {
                    object.database = None;
                    rule_hits.push((rule.id, object));
                }
            }
            let preload: String = client
                .query_one(
                    "SELECT pg_catalog.current_setting('shared_preload_libraries')",
                    &[],
                )
                .map_err(q("reading shared_preload_libraries"))?
                .get(0);
            for library in preload.split(',').map(str::trim).filter(|l| !l.is_empty()) {
                uses_preload.push(library.trim_matches('"').to_string());
            }
            if major.number() >= 17 {
                let row = client
                    .query_one(
                        "SELECT (SELECT count(*) FROM pg_catalog.pg_subscription),
                                pg_catalog.unicode_version()",
                        &[],
                    )
                    .map_err(q("counting subscriptions"))?;
                cluster_uses.subscriptions = row.get(0);
                cluster_uses.unicode_version = row.get(1);
                // Each slot is made again in the new cluster, which must
                // load its output plugin.
                for row in client
                    .query(
                        "SELECT plugin::text, pg_catalog.quote_ident(slot_name::text), database::text
                           FROM pg_catalog.pg_replication_slots
                          WHERE slot_type = 'logical' AND NOT temporary ORDER BY 2",
                        &[],
                    )
                    .map_err(q("listing the logical slots"))?
                {
                    slot_plugins.push((row.get(0), row.get(1), row.get(2)));
                }
                cluster_uses.logical_slots = slot_plugins.len() as i64;
            }
            if major.number() >= 14 {
                let compression: String = client
                    .query_one(
                        "SELECT pg_catalog.current_setting('default_toast_compression')",
                        &[],
                    )
                    .map_err(q("reading default_toast_compression"))?
                    .get(0);
                if compression == "lz4" {
                    cluster_uses.lz4.push(ObjectRef {
                        schema: None,
                        database: None,
                        kind: "setting".into(),
                        name: "default_toast_compression = lz4".into(),
                    });
                }
            }
            if major.has_locale_provider() {
                for row in client
                    .query("SELECT datname::text FROM pg_catalog.pg_database WHERE datlocprovider = 'i' ORDER BY 1", &[])
                    .map_err(q("looking for ICU databases"))?
                {
                    cluster_uses.icu.push(ObjectRef {
                        schema: None,
                        database: None,
                        kind: "database".into(),
                        name: quote_ident(&row.get::<_, String>(0)),
                    });
                }
            }
            (rule_hits, Capabilities::default())
        }
        (Which::New, needed) => (Vec::new(), probe_capabilities(&mut client, major, needed)?),
    };
    drop(client);
    let old_scan = (which == Which::Old).then_some((majors, mode));
    let (hits, scanned) = scan_databases(server, &mut databases, jobs, old_scan)?;
    rule_hits.extend(hits);
    let mut uses = scanned;
    uses.icu.splice(0..0, cluster_uses.icu);
    uses.lz4.splice(0..0, cluster_uses.lz4);
    uses.subscriptions = cluster_uses.subscriptions;
    uses.logical_slots = cluster_uses.logical_slots;
    uses.unicode_version = cluster_uses.unicode_version;
    for library in uses_preload {
        uses.libraries
            .entry(library.clone())
            .or_default()
            .push(ObjectRef {
                schema: None,
                database: None,
                kind: "setting".into(),
                name: format!("shared_preload_libraries = '{library}'"),
            });
    }
    for (plugin, slot, database) in slot_plugins {
        uses.libraries.entry(plugin).or_default().push(ObjectRef {
            schema: None,
            database: Some(database),
            kind: "slot".into(),
            name: slot,
        });
    }
    Ok(CatalogFacts {
        install_user,
        connected_as,
        databases,
        template0,
        icu_available: if which == Which::New {
            can.icu
        } else {
            icu_available
        },
        roles,
        names_with_newlines,
        prepared_transactions,
        rule_hits,
        uses,
        can,
    })
}

/// One connection per database, `jobs` databases at a time.
/// Offending objects, by the id of the rule they break.
type RuleHits = Vec<(&'static str, ObjectRef)>;

/// What one database's scan found.
#[derive(Default)]
struct DbScan {
    objects: i64,
    relations: i64,
    tables: i64,
    sequences: i64,
    hits: Vec<(&'static str, ObjectRef)>,
    uses: CapabilityUse,
}

/// One connection per database, `jobs` databases at a time. With
/// `old_scan`, the old cluster's catalogue rules run in each database too.
fn scan_databases(
    server: &Server,
    databases: &mut [DatabaseInfo],
    jobs: usize,
    old_scan: Option<(Majors, ScanMode)>,
) -> Result<(RuleHits, CapabilityUse), pgm_cluster::Error> {
    let targets: Vec<(usize, String)> = databases
        .iter()
        .enumerate()
        .filter(|(_, d)| d.allow_connections && d.connection_limit != -2 && d.name != "template0")
        .map(|(i, d)| (i, d.name.clone()))
        .collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, DbScan)>> = Mutex::new(Vec::new());
    let first_error: Mutex<Option<pgm_cluster::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, targets.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((index, name)) = targets.get(i) else {
                    break;
                };
                match scan_one(server, name, old_scan) {
                    Ok(scan) => results.lock().unwrap().push((*index, scan)),
                    Err(e) => {
                        first_error.lock().unwrap().get_or_insert(e);
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap() {
        return Err(e);
    }
    let mut hits = Vec::new();
    let mut uses = CapabilityUse::default();
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    for (index, scan) in results {
        databases[index].user_objects = Some(scan.objects);
        databases[index].user_relations = Some(scan.relations);
        databases[index].user_tables = Some(scan.tables);
        databases[index].user_sequences = Some(scan.sequences);
        hits.extend(scan.hits);
        uses.icu.extend(scan.uses.icu);
        uses.lz4.extend(scan.uses.lz4);
        uses.xml.extend(scan.uses.xml);
        uses.xml_literals.extend(scan.uses.xml_literals);
        uses.collated_indexes.extend(scan.uses.collated_indexes);
        uses.unicode_dependent.extend(scan.uses.unicode_dependent);
        for (key, dbs) in scan.uses.extensions {
            uses.extensions.entry(key).or_default().extend(dbs);
        }
        for (lib, objects) in scan.uses.libraries {
            uses.libraries.entry(lib).or_default().extend(objects);
        }
    }
    Ok((hits, uses))
}

/// Runs `sql` (returning kind, name) in one database.
fn objects(
    client: &mut postgres::Client,
    database: &str,
    sql: &str,
    what: &str,
) -> Result<Vec<ObjectRef>, pgm_cluster::Error> {
    Ok(client
        .query(sql, &[])
        .map_err(|e| pgm_cluster::Error::Query {
            database: database.to_string(),
            what: what.to_string(),
            detail: pgm_cluster::describe_pg_error(&e),
        })?
        .iter()
        .map(|r| ObjectRef {
            database: Some(database.to_string()),
            kind: r.get(0),
            name: r.get(1),
            // Schema objects' queries name the schema in a third column.
            schema: if r.len() > 2 { r.get(2) } else { None },
        })
        .collect())
}

fn scan_one(
    server: &Server,
    database: &str,
    old_scan: Option<(Majors, ScanMode)>,
) -> Result<DbScan, pgm_cluster::Error> {
    let mut client = server.connect(database)?;
    // OIDs below 16384 belong to initdb; temporary schemas come and go.
    let row = client
        .query_one(
            "SELECT
               (SELECT count(*) FROM pg_catalog.pg_class WHERE oid >= 16384),
               (SELECT count(*) FROM pg_catalog.pg_class WHERE oid >= 16384 AND relkind IN ('r', 'p')),
               (SELECT count(*) FROM pg_catalog.pg_class WHERE oid >= 16384 AND relkind = 'S'),
               (SELECT count(*) FROM pg_catalog.pg_proc WHERE oid >= 16384)
             + (SELECT count(*) FROM pg_catalog.pg_type t WHERE oid >= 16384
                  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid)
                  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e JOIN pg_catalog.pg_class c ON c.oid = e.typrelid
                                   WHERE e.oid = t.typelem))
             + (SELECT count(*) FROM pg_catalog.pg_namespace WHERE oid >= 16384 AND nspname !~ '^pg_(toast_)?temp_')
             + (SELECT count(*) FROM pg_catalog.pg_extension WHERE oid >= 16384)",
            &[],
        )
        .map_err(|e| pgm_cluster::Error::Query {
            database: database.to_string(),
            what: "counting user objects".into(),
            detail: pgm_cluster::describe_pg_error(&e),
        })?;
    let relations: i64 = row.get(0);
    let tables: i64 = row.get(1);
    let sequences: i64 = row.get(2);
    let others: i64 = row.get(3);
    let mut scan = DbScan {
        objects: relations + others,
        relations,
        tables,
        sequences,
        ..DbScan::default()
    };
    let Some((majors, mode)) = old_scan else {
        return Ok(scan);
    };
    let (old, new) = (majors.this, majors.new);
    for rule in RULES.iter().filter(|r| !r.global && (r.applies)(old, new)) {
        for object in objects(&mut client, database, &(rule.sql)(mode), rule.title)? {
            scan.hits.push((rule.id, object));
        }
    }
    if let Some(sql) = crate::catalogue::icu_sql(old) {
        scan.uses.icu = objects(&mut client, database, &sql, "looking for ICU collations")?;
    }
    if let Some(sql) = crate::catalogue::lz4_sql(old) {
        scan.uses.lz4 = objects(&mut client, database, &sql, "looking for lz4 columns")?;
    }
    scan.uses.xml = objects(
        &mut client,
        database,
        &crate::catalogue::xml_sql(),
        "looking for xml columns",
    )?;
    scan.uses.xml_literals = objects(
        &mut client,
        database,
        &crate::catalogue::xml_literals_sql(old),
        "looking for xml values in expressions",
    )?;
    let collated = client
        .query(crate::catalogue::collated_indexes_sql(old).as_str(), &[])
        .map_err(|e| pgm_cluster::Error::Query {
            database: database.to_string(),
            what: "looking for collation-dependent indexes".into(),
            detail: pgm_cluster::describe_pg_error(&e),
        })?;
    scan.uses.collated_indexes = collated
        .iter()
        .map(|r| crate::catalogue::CollatedIndex {
            database: database.to_string(),
            index: r.get(0),
            bytes: r.get(1),
            provider: r.get(2),
            locale: r.get(3),
            old_version: r.get(4),
            recorded_version: r.get(5),
            collation: r.get(6),
            schema: r.get(7),
        })
        .collect();
    if old.number() >= 17 {
        scan.uses.unicode_dependent = objects(
            &mut client,
            database,
            UNICODE_DEPENDENT_SQL,
            "looking for expressions that depend on Unicode",
        )?;
    }
    let q = |what: &'static str| {
        move |e: postgres::Error| pgm_cluster::Error::Query {
            database: database.to_string(),
            what: what.into(),
            detail: pgm_cluster::describe_pg_error(&e),
        }
    };
    for row in client
        .query(EXTENSIONS_SQL, &[])
        .map_err(q("listing extensions"))?
    {
        scan.uses
            .extensions
            .entry((row.get(0), row.get(1)))
            .or_default()
            .push(database.to_string());
    }
    for row in client
        .query(LIBRARIES_SQL, &[])
        .map_err(q("listing shared libraries"))?
    {
        scan.uses
            .libraries
            .entry(row.get(0))
            .or_default()
            .push(ObjectRef {
                schema: None,
                database: Some(database.to_string()),
                kind: "function".into(),
                name: row.get(1),
            });
    }
    Ok(scan)
}

fn compare_locales(report: &Report) -> Finding {
    let id = "template0-locale";
    let (Some(old), Some(new)) = (&report.old.catalog, &report.new.catalog) else {
        return Finding::skip(id, title(id), "catalogs not read");
    };
    let new_major = report.new.install.as_ref().map(|i| i.version.major);
    let o = &old.template0;
    let describe = |l: &TemplateLocale| {
        format!(
            "{} / {}{} / collate {} / ctype {}",
            l.encoding,
            l.provider,
            l.locale
                .as_ref()
                .map(|x| format!(" {x}"))
                .unwrap_or_default(),
            l.collate,
            l.ctype
        )
    };
    if o.provider == "icu" && !new.icu_available {
        return Finding::fail(
            id,
            title(id),
            "locale_provider_unsupported",
            format!("the old cluster's default locale comes from ICU ({}), but the new installation was built without ICU", o.locale.clone().unwrap_or_default()),
            "use a new PostgreSQL installation built with ICU (configure --with-icu), or move the data by dump and restore into a libc-locale cluster",
        );
    }
    if o.provider == "builtin" && !new_major.is_some_and(|m| m.has_builtin_locale_provider()) {
        return Finding::fail(
            id,
            title(id),
            "locale_provider_unsupported",
            "the old cluster uses the builtin locale provider, which the new installation does not have",
            "upgrade to PostgreSQL 17 or later",
        );
    }
    if *o == new.template0 {
        Finding::pass(id, title(id), format!("{} on both", describe(o)))
    } else {
        Finding::pass(
            id,
            title(id),
            format!(
                "old {}; new {}: the upgrade gives the new template0 the old settings, and each database keeps its own",
                describe(o),
                describe(&new.template0)
            ),
        )
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| quote_ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the new installation can do, for the old cluster's needs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Capabilities {
    pub icu: bool,
    pub lz4: bool,
    pub xml: bool,
    /// Extensions the old cluster has whose control file the new installation lacks.
    pub missing_extensions: Vec<String>,
    /// (extension, old version) with no update path to the new default version.
    pub stuck_extensions: Vec<(String, String, String)>,
    /// Libraries that did not load, with the server's complaint.
    pub failed_libraries: BTreeMap<String, String>,
    /// The new installation's default version of each extension the old cluster has.
    pub extension_defaults: BTreeMap<String, String>,
    /// (provider, locale) → the collation library's version in the new installation.
    pub collation_versions: BTreeMap<(String, String), String>,
    /// How many replication origins the new server can track (17 and later).
    pub replication_origins: Option<i64>,
    /// What the new server offers logical slots carried into it.
    pub slot_settings: Option<SlotSettings>,
    /// `unicode_version()` of the new server (17 and later).
    pub unicode_version: Option<String>,
}

/// The new server's settings that carried logical slots depend on.
#[derive(Debug, Clone, Serialize)]
pub struct SlotSettings {
    pub logical_slots: i64,
    pub wal_level: String,
    pub max_replication_slots: i64,
}

fn probe_capabilities(
    client: &mut postgres::Client,
    new_major: PgMajor,
    needed: Option<&CapabilityUse>,
) -> Result<Capabilities, pgm_cluster::Error> {
    let q = |what: &'static str| {
        move |e: postgres::Error| pgm_cluster::Error::Query {
            database: "template1".into(),
            what: what.into(),
            detail: pgm_cluster::describe_pg_error(&e),
        }
    };
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_collation WHERE collprovider = 'i'),
                    coalesce((SELECT 'lz4' = ANY(enumvals) FROM pg_catalog.pg_settings
                               WHERE name = 'default_toast_compression'), false)",
            &[],
        )
        .map_err(q("probing ICU and lz4"))?;
    let mut can = Capabilities {
        icu: icu_built_in(client)?,
        lz4: row.get(1),
        // Without libxml every xml input fails.
        xml: client
            .batch_execute("SELECT '<a/>'::pg_catalog.xml")
            .is_ok(),
        ..Capabilities::default()
    };
    if new_major.number() >= 17 {
        // 18 has its own setting; 17 counted origins against replication slots.
        let setting = if new_major.number() >= 18 {
            "max_active_replication_origins"
        } else {
            "max_replication_slots"
        };
        let value: String = client
            .query_one("SELECT pg_catalog.current_setting($1)", &[&setting])
            .map_err(q("reading the replication origin limit"))?
            .get(0);
        can.replication_origins = value.parse().ok();
        can.unicode_version = client
            .query_one("SELECT pg_catalog.unicode_version()", &[])
            .map_err(q("reading the Unicode version"))?
            .get(0);
    }
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_catalog.pg_replication_slots
                      WHERE slot_type = 'logical' AND NOT temporary),
                    pg_catalog.current_setting('wal_level'),
                    pg_catalog.current_setting('max_replication_slots')::bigint",
            &[],
        )
        .map_err(q("reading the replication slot settings"))?;
    can.slot_settings = Some(SlotSettings {
        logical_slots: row.get(0),
        wal_level: row.get(1),
        max_replication_slots: row.get(2),
    });
    let Some(needed) = needed else { return Ok(can) };
    for (name, version) in needed.extensions.keys() {
        let default: Option<String> = client
            .query_opt(
                "SELECT default_version FROM pg_catalog.pg_available_extensions WHERE name = $1",
                &[name],
            )
            .map_err(q("looking for an extension"))?
            .map(|r| r.get(0));
        match default {
            None => can.missing_extensions.push(name.clone()),
            Some(default) if default != *version => {
                can.extension_defaults.insert(name.clone(), default.clone());
                let reachable: bool = client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension_update_paths($1)
                                         WHERE source = $2 AND target = $3 AND path IS NOT NULL)",
                        &[name, version, &default],
                    )
                    .map_err(q("looking for an extension update path"))?
                    .get(0);
                if !reachable {
                    can.stuck_extensions
                        .push((name.clone(), version.clone(), default));
                }
            }
            Some(default) => {
                can.extension_defaults.insert(name.clone(), default);
            }
        }
    }
    let mut wanted: Vec<(String, String)> = needed
        .collated_indexes
        .iter()
        .map(|i| (i.provider.clone(), i.locale.clone()))
        .collect();
    wanted.sort();
    wanted.dedup();
    for (provider, locale) in wanted {
        // ICU versions its collators per locale; libc reports the C
        // library's version for every locale, so any versioned libc
        // collation answers for a locale the new cluster has no row for.
        let (column, any_locale) = if provider == "i" {
            (new_major.icu_collation_locale_column(), "false")
        } else {
            ("collcollate", "true")
        };
        let sql = format!(
            "SELECT pg_catalog.pg_collation_actual_version(oid) FROM pg_catalog.pg_collation
              WHERE collprovider::text = $1 AND ({column} = $2 OR {any_locale})
                AND pg_catalog.pg_collation_actual_version(oid) IS NOT NULL
              ORDER BY {column} = $2 DESC LIMIT 1"
        );
        if let Some(row) = client
            .query_opt(sql.as_str(), &[&provider, &locale])
            .map_err(q("reading collation versions"))?
        {
            can.collation_versions
                .insert((provider, locale), row.get(0));
        }
    }
    for library in needed.libraries.keys() {
        let load = format!("LOAD {}", quote_literal(library));
        if let Err(e) = client.batch_execute(&load) {
            can.failed_libraries
                .insert(library.clone(), pgm_cluster::describe_pg_error(&e));
        }
    }
    Ok(can)
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The old cluster's catalogue rules, as findings.
fn rule_findings(report: &Report, facts: &CatalogFacts) -> Vec<Finding> {
    let old = report.old.install.as_ref().map(|i| i.version.major);
    let new = report.new.install.as_ref().map(|i| i.version.major);
    let (Some(old), Some(new)) = (old, new) else {
        return Vec::new();
    };
    RULES
        .iter()
        .map(|rule| {
            if !(rule.applies)(old, new) {
                return Finding::pass(rule.id, rule.title, not_applicable(old, new));
            }
            if rule.id == "old-isn-float8" {
                let differs = match (&report.old.control, &report.new.control) {
                    (Some(o), Some(n)) => o.float8_by_value != n.float8_by_value,
                    _ => false,
                };
                if !differs {
                    return Finding::pass(
                        rule.id,
                        rule.title,
                        "both installations pass float8 the same way",
                    );
                }
            }
            let hits: Vec<ObjectRef> = facts
                .rule_hits
                .iter()
                .filter(|(id, _)| *id == rule.id)
                .map(|(_, o)| o.clone())
                .collect();
            if hits.is_empty() {
                Finding::pass(rule.id, rule.title, "none")
            } else {
                Finding::fail(
                    rule.id,
                    rule.title,
                    rule.code,
                    format!(
                        "{} found ({}): {}",
                        hits.len(),
                        rule.why,
                        describe_objects(&hits)
                    ),
                    rule.remedy,
                )
                .with_objects(hits)
            }
        })
        .collect()
}

fn describe_objects(objects: &[ObjectRef]) -> String {
    let mut shown: Vec<String> = objects
        .iter()
        .take(10)
        .map(|o| match &o.database {
            Some(db) => format!("{} {} in database {}", o.kind, o.name, quote_ident(db)),
            None => format!("{} {}", o.kind, o.name),
        })
        .collect();
    if objects.len() > 10 {
        shown.push(format!(
            "and {} more (see the objects list)",
            objects.len() - 10
        ));
    }
    shown.join("; ")
}

/// xml without libxml: stored values carry over as files and read back
/// unchanged (their output needs no libxml), as in pg_upgrade; what breaks
/// is parsing an xml value, which the restore does for the literals in
/// defaults, constraints, views and the like. Only those refuse.
fn xml_without_libxml(uses: &CapabilityUse, can: &Capabilities, dump_reload: bool) -> Finding {
    let id = "new-xml";
    let title = title(id);
    if uses.xml.is_empty() && uses.xml_literals.is_empty() {
        return Finding::pass(id, title, "the old cluster does not use the xml type");
    }
    if can.xml {
        return Finding::pass(
            id,
            title,
            "the old cluster uses the xml type, and the new installation has libxml",
        );
    }
    if dump_reload && !uses.xml.is_empty() {
        // A reload parses every stored value (COPY).
        return Finding::fail(
            id,
            title,
            "xml_unavailable",
            format!(
                "the new installation was built without libxml, and --method dump reloads these xml columns' values, which parses them: {}",
                describe_objects(&uses.xml)
            ),
            "use a new installation built with libxml (configure --with-libxml), or upgrade in place (without --method dump), which carries the values as files",
        )
        .with_objects(uses.xml.clone());
    }
    if !uses.xml_literals.is_empty() {
        return Finding::fail(
            id,
            title,
            "xml_unavailable",
            format!(
                "the new installation was built without libxml, and restoring these objects parses an xml value, which needs it: {}",
                describe_objects(&uses.xml_literals)
            ),
            "use a new installation built with libxml (configure --with-libxml), or change those objects in the old cluster so that they hold no xml literal (e.g. a default written as '<a/>'::text::xml is converted when used, not when restored)",
        )
        .with_objects(uses.xml_literals.clone());
    }
    Finding::warn(
        id,
        title,
        "xml_without_libxml",
        format!(
            "these xml columns carry over and read back unchanged, but the new installation was built without libxml: there, new xml values cannot be parsed (inserting or updating them from text, casts to xml, XMLPARSE, xpath and the other xml functions fail): {}",
            describe_objects(&uses.xml)
        ),
        "if the application writes xml, use a new installation built with libxml (configure --with-libxml); otherwise nothing to do",
    )
    .with_objects(uses.xml.clone())
}

/// What the old cluster uses against what the new installation can do.
fn compare_capabilities(report: &Report) -> Vec<Finding> {
    let (Some(old), Some(new)) = (&report.old.catalog, &report.new.catalog) else {
        return Vec::new();
    };
    let (uses, can) = (&old.uses, &new.can);
    let capability = |id: &'static str,
                      used: &[ObjectRef],
                      available: bool,
                      code: &'static str,
                      what: &str,
                      remedy: &str| {
        let title = title(id);
        if used.is_empty() {
            Finding::pass(id, title, format!("the old cluster does not use {what}"))
        } else if available {
            Finding::pass(
                id,
                title,
                format!("the old cluster uses {what}, and the new installation has it"),
            )
        } else {
            Finding::fail(
                id,
                title,
                code,
                format!(
                    "the old cluster uses {what}, which the new installation was built without: {}",
                    describe_objects(used)
                ),
                remedy,
            )
            .with_objects(used.to_vec())
        }
    };
    let mut out = vec![
        capability(
            "new-icu",
            &uses.icu,
            can.icu,
            "icu_unavailable",
            "ICU collations",
            "use a new installation built with ICU (configure --with-icu), or move these objects to libc collations in the old cluster first",
        ),
        capability(
            "new-lz4",
            &uses.lz4,
            can.lz4,
            "lz4_unavailable",
            "lz4 compression",
            "use a new installation built with lz4 (configure --with-lz4), or recompress in the old cluster: ALTER TABLE … ALTER COLUMN … SET COMPRESSION pglz, then rewrite the table (VACUUM FULL)",
        ),
    ];
    out.push(xml_without_libxml(uses, can, report.dump_reload));
    let missing: Vec<ObjectRef> = uses
        .extensions
        .iter()
        .filter(|((name, _), _)| can.missing_extensions.contains(name))
        .flat_map(|((name, version), dbs)| {
            dbs.iter().map(move |db| ObjectRef {
                schema: None,
                database: Some(db.clone()),
                kind: "extension".into(),
                name: format!("{name} {version}"),
            })
        })
        .collect();
    out.push(if !missing.is_empty() && report.dump_reload {
        // A reload runs CREATE EXTENSION, which reads the control file.
        Finding::fail(
            "new-extensions",
            title("new-extensions"),
            "extension_missing",
            format!("the new installation lacks these extensions, which --method dump creates anew (CREATE EXTENSION reads their files): {}", describe_objects(&missing)),
            "install the extensions for the new PostgreSQL major (their packages or builds), drop them in the old cluster (DROP EXTENSION … in each database), or upgrade in place (without --method dump)",
        )
        .with_objects(missing)
    } else if !missing.is_empty() {
        // A binary-upgrade restore makes an extension's catalog entry and
        // its objects without reading its control or script files (as with
        // pg_upgrade, which does not look for them): what an extension's
        // objects need to work is its shared libraries, which new-libraries
        // loads. Without the files, only later changes to the extension fail.
        Finding::warn(
            "new-extensions",
            title("new-extensions"),
            "extension_missing",
            format!("the new installation lacks the files (control and scripts) of these extensions: {}; they carry over with their objects, but in the new cluster they cannot be updated (ALTER EXTENSION … UPDATE), created in another database, or restored from a plain dump", describe_objects(&missing)),
            "install the extensions for the new PostgreSQL major (their packages or builds) before or after the upgrade, or drop them in the old cluster (DROP EXTENSION … in each database)",
        )
        .with_objects(missing)
    } else if !can.stuck_extensions.is_empty() {
        let stuck: Vec<String> = can.stuck_extensions.iter().map(|(n, from, to)| format!("{n} {from} (new default {to})")).collect();
        Finding::warn(
            "new-extensions",
            title("new-extensions"),
            "extension_not_updatable",
            format!("these extensions will move as they are, but have no update path to the new default version: {}", stuck.join(", ")),
            "they keep their old version after the upgrade; check with the extension's maintainers how to update them",
        )
    } else {
        let count = uses.extensions.len();
        Finding::pass(
            "new-extensions",
            title("new-extensions"),
            format!("{count} extension versions in use; each is available in the new installation"),
        )
        .with_objects(extension_report(uses, can))
    });
    let failed: Vec<ObjectRef> = can
        .failed_libraries
        .keys()
        .flat_map(|lib| uses.libraries.get(lib).cloned().unwrap_or_default())
        .collect();
    // A library only the old cluster's shared_preload_libraries names is
    // needed by nothing the upgrade carries: the new cluster keeps its own
    // postgresql.conf unless --carry-config brings the setting over.
    let only_preloaded = !failed.is_empty() && failed.iter().all(|o| o.kind == "setting");
    out.push(if can.failed_libraries.is_empty() {
        Finding::pass(
            "new-libraries",
            title("new-libraries"),
            format!("{} shared libraries load in the new installation", uses.libraries.len()),
        )
    } else if only_preloaded && !report.carry_config {
        let libs: Vec<String> = can.failed_libraries.iter().map(|(l, e)| format!("{l} ({e})")).collect();
        Finding::warn(
            "new-libraries",
            title("new-libraries"),
            "preload_library_missing",
            format!("the old cluster preloads shared libraries that do not load in the new installation: {}; the upgrade does not need them (the new cluster keeps its own settings), but a new cluster given the same shared_preload_libraries would not start", libs.join("; ")),
            "install the new major's build of those modules before giving the new cluster that setting, or leave them out of its shared_preload_libraries",
        )
        .with_objects(failed)
    } else {
        let libs: Vec<String> = can.failed_libraries.iter().map(|(l, e)| format!("{l} ({e})")).collect();
        let mut remedy = String::from("install the new major's build of the extension or module that provides them, or drop the objects that need them in the old cluster");
        if failed.iter().any(|o| o.kind == "slot") {
            remedy.push_str(" (a slot: pg_drop_replication_slot('name'), once its subscriber no longer needs it)");
        }
        Finding::fail(
            "new-libraries",
            title("new-libraries"),
            "library_missing",
            format!("these shared libraries do not load in the new installation: {}; needed by: {}", libs.join("; "), describe_objects(&failed)),
            remedy,
        )
        .with_objects(failed)
    });
    out.push(collation_drift(uses, can, report.strict));
    out.push(unicode_update(uses, can, report.strict));
    let id = "new-replication-origins";
    out.push(match can.replication_origins {
        _ if uses.subscriptions == 0 => Finding::pass(id, title(id), "the old cluster has no subscriptions to carry"),
        Some(limit) if limit < uses.subscriptions => Finding::fail(
            id,
            title(id),
            "too_few_replication_origins",
            format!(
                "the old cluster has {} subscriptions, each needing a replication origin, but the new server allows {limit}",
                uses.subscriptions
            ),
            "raise max_active_replication_origins (18; max_replication_slots on 17) in the new cluster's postgresql.conf to at least the number of subscriptions",
        ),
        _ => Finding::pass(id, title(id), format!("{} subscriptions, and origins enough for them", uses.subscriptions)),
    });
    out.push(new_slot_settings(uses, can));
    out
}

/// Whether the server was built with ICU. 16 and later say so directly
/// (icu_unicode_version() is NULL without ICU; they keep an ICU "unicode"
/// collation row either way); before 16, initdb imports ICU collations only
/// when built with ICU.
fn icu_built_in(client: &mut postgres::Client) -> Result<bool, pgm_cluster::Error> {
    let q = |e: postgres::Error| pgm_cluster::Error::Query {
        database: "template1".into(),
        what: "probing ICU".into(),
        detail: pgm_cluster::describe_pg_error(&e),
    };
    let has_function: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE proname = 'icu_unicode_version')",
            &[],
        )
        .map_err(q)?
        .get(0);
    let sql = if has_function {
        "SELECT pg_catalog.icu_unicode_version() IS NOT NULL"
    } else {
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_collation WHERE collprovider = 'i')"
    };
    Ok(client.query_one(sql, &[]).map_err(q)?.get(0))
}

/// Every installed extension, per database, with what the new installation
/// offers for it: the preflight report.
fn extension_report(uses: &CapabilityUse, can: &Capabilities) -> Vec<ObjectRef> {
    uses.extensions
        .iter()
        .flat_map(|((name, version), dbs)| {
            let status = match can.extension_defaults.get(name) {
                None => "not available in the new installation".to_string(),
                Some(default) if default == version => {
                    format!("{version}, the new installation's default too")
                }
                Some(default) if can.stuck_extensions.iter().any(|(n, _, _)| n == name) => {
                    format!("{version}; the new default {default} cannot be reached")
                }
                Some(default) => {
                    format!("{version}; update to {default} afterwards (update_extensions.sql)")
                }
            };
            dbs.iter().map(move |db| ObjectRef {
                schema: None,
                database: Some(db.clone()),
                kind: "extension".into(),
                name: format!("{name} {status}"),
            })
        })
        .collect()
}

/// Indexes ordered by a collation whose version in the new installation
/// differs from the one they may have been built under, with that new version.
pub fn drifted_indexes<'a>(
    uses: &'a CapabilityUse,
    can: &'a Capabilities,
) -> Vec<(&'a crate::catalogue::CollatedIndex, &'a str)> {
    uses.collated_indexes
        .iter()
        .filter_map(|i| {
            let new = can
                .collation_versions
                .get(&(i.provider.clone(), i.locale.clone()))?;
            i.drifts_to(new).then_some((i, new.as_str()))
        })
        .collect()
}

/// Indexes ordered by a collation whose library version differs between the
/// installations, or from the version recorded when the collation was made,
/// may be silently corrupt after the upgrade until rebuilt.
fn collation_drift(uses: &CapabilityUse, can: &Capabilities, strict: bool) -> Finding {
    let id = "new-collation-versions";
    let drifted = drifted_indexes(uses, can);
    if drifted.is_empty() {
        return Finding::pass(
            id,
            title(id),
            format!(
                "{} indexes depend on a versioned collation; none changed version",
                uses.collated_indexes.len()
            ),
        );
    }
    let bytes: i64 = drifted.iter().map(|(i, _)| i.bytes).sum();
    let objects: Vec<ObjectRef> = drifted
        .iter()
        .map(|(i, new)| {
            let built_under = match (&i.recorded_version, &i.old_version) {
                (Some(recorded), Some(old)) if recorded != old => {
                    format!("recorded {recorded}, old library {old}")
                }
                (_, Some(old)) => old.clone(),
                (Some(recorded), None) => format!("recorded {recorded}"),
                (None, None) => "unknown".into(),
            };
            ObjectRef {
                schema: Some(i.schema.clone()),
                database: Some(i.database.clone()),
                kind: "index".into(),
                name: format!(
                    "{} ({} collation {}{}: {built_under} -> {new}, {} bytes)",
                    i.index,
                    if i.provider == "i" { "ICU" } else { "libc" },
                    i.locale,
                    if i.collation.is_none() {
                        ", the database default"
                    } else {
                        ""
                    },
                    i.bytes
                ),
            }
        })
        .collect();
    let finding = if strict { Finding::fail } else { Finding::warn };
    finding(
        id,
        title(id),
        "collation_version_changed",
        format!(
            "{} indexes ({} bytes) are ordered by collations whose version differs in the new installation; they may return wrong results until rebuilt: {}",
            drifted.len(),
            bytes,
            describe_objects(&objects)
        ),
        "after the upgrade, rebuild them and record the new collation versions with the statements in reindex_after_upgrade.sql (written by the upgrade)",
    )
    .with_objects(objects)
}

/// 17 and later carry Unicode tables of their own (case mapping,
/// normalization, the builtin provider's classes): expressions computed
/// under the old tables may disagree with the new ones.
fn unicode_update(uses: &CapabilityUse, can: &Capabilities, strict: bool) -> Finding {
    let id = "new-unicode-version";
    let (Some(old), Some(new)) = (&uses.unicode_version, &can.unicode_version) else {
        return Finding::pass(
            id,
            title(id),
            "the old server predates the builtin Unicode provider (17): nothing to compare",
        );
    };
    if old == new {
        return Finding::pass(id, title(id), format!("Unicode {old} in both"));
    }
    if uses.unicode_dependent.is_empty() {
        return Finding::pass(
            id,
            title(id),
            format!("Unicode {old} -> {new}; no index, constraint, partition key or materialized view depends on it"),
        );
    }
    let finding = if strict { Finding::fail } else { Finding::warn };
    finding(
        id,
        title(id),
        "unicode_version_changed",
        format!(
            "the new installation carries Unicode {new} (the old one {old}); these depend on Unicode behaviour and may disagree with their stored results: {}",
            describe_objects(&uses.unicode_dependent)
        ),
        "after the upgrade, rebuild the indexes and refresh the materialized views (reindex_after_upgrade.sql does both), and check that rows still satisfy the listed constraints and partition keys",
    )
    .with_objects(uses.unicode_dependent.clone())
}

/// Logical slots carried into the new cluster need room and `wal_level = logical` there.
fn new_slot_settings(uses: &CapabilityUse, can: &Capabilities) -> Finding {
    let id = "new-logical-slots";
    let Some(settings) = can
        .slot_settings
        .as_ref()
        .filter(|_| uses.logical_slots > 0)
    else {
        return Finding::pass(
            id,
            title(id),
            "the old cluster has no logical slots to carry",
        );
    };
    let mut problems = Vec::new();
    if settings.logical_slots > 0 {
        problems.push((
            "new_cluster_has_logical_slots",
            format!(
                "the new cluster already has {} logical slots",
                settings.logical_slots
            ),
        ));
    }
    if settings.wal_level != "logical" {
        problems.push((
            "new_wal_level_not_logical",
            format!(
                "the new cluster's wal_level is {}, not logical",
                settings.wal_level
            ),
        ));
    }
    if settings.max_replication_slots < uses.logical_slots {
        problems.push((
            "too_few_replication_slots",
            format!(
                "the new cluster's max_replication_slots is {}, fewer than the old cluster's {} logical slots",
                settings.max_replication_slots, uses.logical_slots
            ),
        ));
    }
    let Some((code, _)) = problems.first() else {
        return Finding::pass(
            id,
            title(id),
            format!(
                "{} logical slots; wal_level = logical and room for them",
                uses.logical_slots
            ),
        );
    };
    Finding::fail(
        id,
        title(id),
        code,
        problems.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>().join("; "),
        format!(
            "in the new cluster's postgresql.conf set wal_level = logical and max_replication_slots = {} or more, and drop any logical slots it has (SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_type = 'logical')",
            uses.logical_slots
        ),
    )
}
