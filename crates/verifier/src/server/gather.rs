//! What the old cluster's catalog holds, read once: its roles, databases and
//! locale, then every database scanned `-j` at a time for what the rules and
//! the capability checks need.

use crate::rules::{
    CapabilityUse, ObjectRef, ScanMode, EXTENSIONS_SQL, LIBRARIES_SQL, RULES, UNICODE_DEPENDENT_SQL,
};
use crate::{Finding, Report, Which};
use pgm_cluster::{PgMajor, Server};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[allow(unused_imports)]
use super::*;

/// The major of the cluster being inspected and of the new installation.
#[derive(Clone, Copy)]
pub(crate) struct Majors {
    pub(crate) this: PgMajor,
    pub(crate) new: PgMajor,
}

pub(crate) fn gather(
    server: &Server,
    which: Which,
    majors: Majors,
    mode: ScanMode,
    jobs: usize,
    needed: Option<&CapabilityUse>,
) -> Result<CatalogFacts, crate::Error> {
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
        move |e: postgres::Error| crate::Error::Query {
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
                for mut object in objects(&mut client, db, &(rule.sql)(mode, major), rule.title)? {
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
            // Each is made again in the new cluster for its standby.
            cluster_uses.physical_slots = client
                .query_one(
                    "SELECT count(*) FROM pg_catalog.pg_replication_slots
                      WHERE slot_type = 'physical' AND NOT temporary",
                    &[],
                )
                .map_err(q("counting the physical slots"))?
                .get(0);
            if major.upgrade_carries_logical_replication() {
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
            if major.has_toast_compression() {
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
    uses.physical_slots = cluster_uses.physical_slots;
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
pub(crate) type RuleHits = Vec<(&'static str, ObjectRef)>;

/// What one database's scan found.
#[derive(Default)]
pub(crate) struct DbScan {
    pub(crate) objects: i64,
    pub(crate) relations: i64,
    pub(crate) tables: i64,
    pub(crate) sequences: i64,
    pub(crate) hits: Vec<(&'static str, ObjectRef)>,
    pub(crate) uses: CapabilityUse,
}

/// One piece of a database's scan, run on whichever connection is free: a
/// database holding most of the cluster's relations spreads its rules over
/// -j connections instead of keeping one busy while the others idle (at
/// 100,000 relations in one database, three rules took a second each).
#[derive(Clone, Copy)]
enum Piece {
    /// Its counts and what the capability checks need.
    Base,
    /// One of the old cluster's catalogue rules.
    Rule(&'static crate::rules::Rule, ScanMode, PgMajor),
}

/// Every database's pieces, `jobs` at a time over as many connections.
/// With `old_scan`, the old cluster's catalogue rules run in each database
/// too.
pub(crate) fn scan_databases(
    server: &Server,
    databases: &mut [DatabaseInfo],
    jobs: usize,
    old_scan: Option<(Majors, ScanMode)>,
) -> Result<(RuleHits, CapabilityUse), crate::Error> {
    let targets: Vec<(usize, String)> = databases
        .iter()
        .enumerate()
        .filter(|(_, d)| d.allow_connections && d.connection_limit != -2 && d.name != "template0")
        .map(|(i, d)| (i, d.name.clone()))
        .collect();
    // (index into targets, piece), each database's pieces together.
    let mut pieces: Vec<(usize, Piece)> = Vec::new();
    for target in 0..targets.len() {
        pieces.push((target, Piece::Base));
        if let Some((majors, mode)) = old_scan {
            pieces.extend(
                RULES
                    .iter()
                    .filter(|r| !r.global && (r.applies)(majors.this, majors.new))
                    .map(|r| (target, Piece::Rule(r, mode, majors.this))),
            );
        }
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, DbScan)>> = Mutex::new(Vec::new());
    let first_error: Mutex<Option<crate::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, pieces.len().max(1)) {
            scope.spawn(|| {
                // The connection of the last piece, kept while the next
                // piece is of the same database.
                let mut connected: Option<(usize, postgres::Client)> = None;
                loop {
                    if first_error.lock().unwrap().is_some() {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&(target, piece)) = pieces.get(i) else {
                        break;
                    };
                    let name = &targets[target].1;
                    if connected.as_ref().is_none_or(|(t, _)| *t != target) {
                        // The last database's connection closes first.
                        drop(connected.take());
                        match server.connect(name) {
                            Ok(client) => connected = Some((target, client)),
                            Err(e) => {
                                first_error.lock().unwrap().get_or_insert(e.into());
                                break;
                            }
                        }
                    }
                    let (_, client) = connected.as_mut().expect("connected above");
                    match scan_piece(client, name, piece, old_scan) {
                        Ok(scan) => results.lock().unwrap().push((i, scan)),
                        Err(e) => {
                            first_error.lock().unwrap().get_or_insert(e);
                            break;
                        }
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
    // In the order of the pieces: each database's rules, rule by rule.
    results.sort_by_key(|(i, _)| *i);
    for (i, scan) in results {
        let (target, piece) = pieces[i];
        hits.extend(scan.hits);
        if matches!(piece, Piece::Rule(..)) {
            continue;
        }
        let index = targets[target].0;
        databases[index].user_objects = Some(scan.objects);
        databases[index].user_relations = Some(scan.relations);
        databases[index].user_tables = Some(scan.tables);
        databases[index].user_sequences = Some(scan.sequences);
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
pub(crate) fn objects(
    client: &mut postgres::Client,
    database: &str,
    sql: &str,
    what: &str,
) -> Result<Vec<ObjectRef>, crate::Error> {
    Ok(client
        .query(sql, &[])
        .map_err(|e| crate::Error::Query {
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

/// Runs one piece of a database's scan on a connection to it.
fn scan_piece(
    client: &mut postgres::Client,
    database: &str,
    piece: Piece,
    old_scan: Option<(Majors, ScanMode)>,
) -> Result<DbScan, crate::Error> {
    match piece {
        Piece::Base => scan_base(client, database, old_scan),
        Piece::Rule(rule, mode, old) => Ok(DbScan {
            hits: objects(client, database, &(rule.sql)(mode, old), rule.title)?
                .into_iter()
                .map(|object| (rule.id, object))
                .collect(),
            ..DbScan::default()
        }),
    }
}

/// A database's counts and, for the old cluster, what the capability
/// checks need (its catalogue rules are pieces of their own).
fn scan_base(
    client: &mut postgres::Client,
    database: &str,
    old_scan: Option<(Majors, ScanMode)>,
) -> Result<DbScan, crate::Error> {
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
        .map_err(|e| crate::Error::Query {
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
    let Some((majors, _)) = old_scan else {
        return Ok(scan);
    };
    let old = majors.this;
    if let Some(sql) = crate::rules::icu_sql(old) {
        scan.uses.icu = objects(client, database, &sql, "looking for ICU collations")?;
    }
    if let Some(sql) = crate::rules::lz4_sql(old) {
        scan.uses.lz4 = objects(client, database, &sql, "looking for lz4 columns")?;
    }
    scan.uses.xml = objects(
        client,
        database,
        &crate::rules::xml_sql(old),
        "looking for xml columns",
    )?;
    scan.uses.xml_literals = objects(
        client,
        database,
        &crate::rules::xml_literals_sql(old),
        "looking for xml values in expressions",
    )?;
    let collated = client
        .query(crate::rules::collated_indexes_sql(old).as_str(), &[])
        .map_err(|e| crate::Error::Query {
            database: database.to_string(),
            what: "looking for collation-dependent indexes".into(),
            detail: pgm_cluster::describe_pg_error(&e),
        })?;
    scan.uses.collated_indexes = collated
        .iter()
        .map(|r| crate::rules::CollatedIndex {
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
    if old.has_unicode_version() {
        scan.uses.unicode_dependent = objects(
            client,
            database,
            UNICODE_DEPENDENT_SQL,
            "looking for expressions that depend on Unicode",
        )?;
    }
    let q = |what: &'static str| {
        move |e: postgres::Error| crate::Error::Query {
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

pub(crate) fn compare_locales(report: &Report) -> Finding {
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
