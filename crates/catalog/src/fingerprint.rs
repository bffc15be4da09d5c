//! A catalog fingerprint: what `prepare` saw of a database's catalog, to be
//! compared at `cutover` with what is there then. Any committed change to
//! a catalog row writes a new row version with a new `xmin`, so a
//! fingerprint of the live rows' `xmin`s (and their number) per catalog
//! table catches every change since, even one made and undone, while the
//! values VACUUM and ANALYZE update in place (`relpages`, `reltuples`,
//! `relfrozenxid`, `datfrozenxid` …) leave it alone. Statistics
//! (pg_statistic*) and large-object data (pg_largeobject, carried as a
//! file) are left out; temporary objects (their rows, their namespaces) too.
//! Before 12 the values of extended statistics lived in their definitions'
//! rows: there those rows are hashed by what they define.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Per catalog table: live rows and a hash of their `xmin`s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub tables: BTreeMap<String, (i64, String)>,
}

/// Catalog tables whose rows belong to a relation, by the column naming it:
/// rows of temporary relations are left out.
const BY_RELATION: &[(&str, &str)] = &[
    ("pg_attribute", "attrelid"),
    ("pg_attrdef", "adrelid"),
    ("pg_index", "indrelid"),
    ("pg_inherits", "inhrelid"),
    ("pg_trigger", "tgrelid"),
    ("pg_rewrite", "ev_class"),
    ("pg_sequence", "seqrelid"),
    ("pg_policy", "polrelid"),
    ("pg_statistic_ext", "stxrelid"),
    ("pg_partitioned_table", "partrelid"),
    ("pg_publication_rel", "prrelid"),
    ("pg_foreign_table", "ftrelid"),
    ("pg_subscription_rel", "srrelid"),
];

/// Catalog tables that point at any object by (class, object): rows about
/// temporary objects are left out.
const BY_OBJECT: &[(&str, &str, &str)] = &[
    ("pg_depend", "classid", "objid"),
    ("pg_description", "classoid", "objoid"),
    ("pg_seclabel", "classoid", "objoid"),
    ("pg_init_privs", "classoid", "objoid"),
    ("pg_shdepend", "classid", "objid"),
];

/// Catalog tables not fingerprinted: statistics change with every ANALYZE,
/// and large-object data is user data (its file is carried).
const LEFT_OUT: &[&str] = &["pg_statistic", "pg_statistic_ext_data", "pg_largeobject"];

/// Temporary namespaces, relations and the objects that hang off them.
const TEMPORARY: &str = "
WITH temp_ns AS (
  SELECT oid FROM pg_catalog.pg_namespace WHERE nspname ~ '^pg_(toast_)?temp_'),
temp_rel AS (
  SELECT oid FROM pg_catalog.pg_class WHERE relnamespace IN (SELECT oid FROM temp_ns)),
temp_obj AS (
  SELECT 'pg_catalog.pg_class'::regclass::oid AS classid, oid FROM temp_rel
  UNION ALL SELECT 'pg_catalog.pg_namespace'::regclass::oid, oid FROM temp_ns
  UNION ALL SELECT 'pg_catalog.pg_type'::regclass::oid, oid FROM pg_catalog.pg_type
            WHERE typnamespace IN (SELECT oid FROM temp_ns)
  UNION ALL SELECT 'pg_catalog.pg_proc'::regclass::oid, oid FROM pg_catalog.pg_proc
            WHERE pronamespace IN (SELECT oid FROM temp_ns)
  UNION ALL SELECT 'pg_catalog.pg_constraint'::regclass::oid, oid FROM pg_catalog.pg_constraint
            WHERE connamespace IN (SELECT oid FROM temp_ns)
  UNION ALL SELECT 'pg_catalog.pg_attrdef'::regclass::oid, oid FROM pg_catalog.pg_attrdef
            WHERE adrelid IN (SELECT oid FROM temp_rel)
  UNION ALL SELECT 'pg_catalog.pg_trigger'::regclass::oid, oid FROM pg_catalog.pg_trigger
            WHERE tgrelid IN (SELECT oid FROM temp_rel)
  UNION ALL SELECT 'pg_catalog.pg_rewrite'::regclass::oid, oid FROM pg_catalog.pg_rewrite
            WHERE ev_class IN (SELECT oid FROM temp_rel)
  UNION ALL SELECT 'pg_catalog.pg_policy'::regclass::oid, oid FROM pg_catalog.pg_policy
            WHERE polrelid IN (SELECT oid FROM temp_rel))
";

/// The fingerprint of the connected database's catalog: its own catalog
/// tables, and (with `shared`) the catalogs shared by every database
/// (fingerprint those once, in one database).
pub fn fingerprint(
    client: &mut postgres::Client,
    database: &str,
    shared: bool,
) -> Result<Fingerprint, Error> {
    let q = |e: postgres::Error| Error::query(database, "fingerprinting the catalog", &e);
    // Every catalog table of this server, with its namespace-like column.
    let rows = client
        .query(
            "SELECT c.relname::text, c.relisshared,
                    (SELECT a.attname::text FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                        AND a.atttypid = 'pg_catalog.oid'::pg_catalog.regtype
                        AND a.attname ~ 'namespace$' LIMIT 1)
               FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'pg_catalog'::pg_catalog.regnamespace AND c.relkind = 'r'
              ORDER BY 1",
            &[],
        )
        .map_err(q)?;
    let statistics_in_definitions = client
        .query_opt(
            "SELECT FROM pg_catalog.pg_attribute
              WHERE attrelid = 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass
                AND attname = 'stxndistinct'",
            &[],
        )
        .map_err(q)?
        .is_some();
    let mut parts = Vec::new();
    for row in rows {
        let (name, is_shared, namespace_column): (String, bool, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        if LEFT_OUT.contains(&name.as_str()) || is_shared != shared && name != "pg_shdepend" {
            continue;
        }
        let mut filters: Vec<String> = Vec::new();
        if name == "pg_namespace" {
            filters.push("t.oid NOT IN (SELECT oid FROM temp_ns)".into());
        } else if let Some(column) = namespace_column {
            filters.push(format!("t.{column} NOT IN (SELECT oid FROM temp_ns)"));
        }
        if let Some((_, column)) = BY_RELATION.iter().find(|(n, _)| *n == name) {
            filters.push(format!("t.{column} NOT IN (SELECT oid FROM temp_rel)"));
        }
        if let Some((_, class, object)) = BY_OBJECT.iter().find(|(n, _, _)| *n == name) {
            filters.push(format!(
                "NOT EXISTS (SELECT FROM temp_obj o WHERE o.classid = t.{class} AND o.oid = t.{object})"
            ));
            if name == "pg_depend" {
                filters.push(
                    "NOT EXISTS (SELECT FROM temp_obj o WHERE o.classid = t.refclassid AND o.oid = t.refobjid)"
                        .into(),
                );
            }
        }
        // pg_shdepend is shared, but its rows belong to one database each
        // (or to none): each database fingerprints its own rows, the shared
        // fingerprint those of no database.
        if name == "pg_shdepend" {
            filters.push(if shared {
                "t.dbid = 0".into()
            } else {
                "t.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())"
                    .into()
            });
        }
        let filter = if filters.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", filters.join(" AND "))
        };
        // Before 12, ANALYZE wrote extended statistics' values into the
        // definitions' own rows (new xmins): there, the definitions are
        // hashed instead.
        let hashed = if name == "pg_statistic_ext" && statistics_in_definitions {
            "ROW(t.oid, t.stxrelid, t.stxname, t.stxnamespace, t.stxowner, t.stxkeys::text, t.stxkind::text)::text"
        } else {
            "t.xmin::text"
        };
        parts.push(format!(
            "SELECT '{name}'::text, count(*), coalesce(sum(pg_catalog.hashtext({hashed})::bigint), 0)::text
               FROM pg_catalog.{name} t{filter}"
        ));
    }
    let sql = format!("{TEMPORARY}{}", parts.join("\nUNION ALL\n"));
    let mut tables = BTreeMap::new();
    for row in client.query(sql.as_str(), &[]).map_err(q)? {
        tables.insert(row.get::<_, String>(0), (row.get::<_, i64>(1), row.get(2)));
    }
    Ok(Fingerprint { tables })
}

/// The catalog tables whose rows changed between two fingerprints.
pub fn changed_tables(before: &Fingerprint, after: &Fingerprint) -> Vec<String> {
    let mut names: Vec<&String> = before.tables.keys().chain(after.tables.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| before.tables.get(*n) != after.tables.get(*n))
        .map(|n| n.to_string())
        .collect()
}
