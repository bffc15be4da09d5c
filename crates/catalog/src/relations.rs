//! The relation map: which relation files hold user data, keyed by OID, for
//! one database of one cluster. Old and new maps are matched by OID; the
//! binary-upgrade restore keeps OIDs (and, from 15 on, relfilenumbers).

use serde::Serialize;

use crate::Error;

/// A database whose files are carried (template0 is not: it never changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Database {
    pub oid: u32,
    pub name: String,
    /// Location of the database's default tablespace; empty for pg_default.
    pub tablespace_location: String,
}

/// One relation with storage; small, because there may be hundreds of
/// thousands of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Relation {
    pub oid: u32,
    pub relfilenode: u32,
    /// `schema.name`, for messages.
    pub name: Box<str>,
    /// The relation's tablespace location; empty for the database's default.
    pub tablespace_location: Box<str>,
}

/// Which relations carry user data that moves as files.
#[derive(Debug, Clone, Copy)]
pub struct RelationQuery {
    /// Sequences move as files unless the dump carries their state (18's
    /// `pg_dump --sequence-data`).
    pub include_sequences: bool,
}

/// Databases that accept connections, in OID order.
pub fn list_databases(client: &mut postgres::Client) -> Result<Vec<Database>, Error> {
    let rows = client
        .query(
            "SELECT d.oid, d.datname::text, coalesce(pg_catalog.pg_tablespace_location(d.dattablespace), '')
               FROM pg_catalog.pg_database d
              WHERE d.datallowconn
              ORDER BY d.oid",
            &[],
        )
        .map_err(|e| Error::query("template1", "listing databases", &e))?;
    Ok(rows
        .iter()
        .map(|r| Database {
            oid: r.get(0),
            name: r.get(1),
            tablespace_location: r.get(2),
        })
        .collect())
}

/// Extensions installed at an older version than the installation's default.
pub fn outdated_extensions(
    client: &mut postgres::Client,
    database: &str,
) -> Result<Vec<String>, Error> {
    let rows = client
        .query(
            "SELECT name::text FROM pg_catalog.pg_available_extensions
              WHERE installed_version IS NOT NULL AND installed_version <> default_version ORDER BY 1",
            &[],
        )
        .map_err(|e| Error::query(database, "listing outdated extensions", &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Locations of user tablespaces.
pub fn list_tablespaces(client: &mut postgres::Client) -> Result<Vec<String>, Error> {
    let rows = client
        .query(
            "SELECT pg_catalog.pg_tablespace_location(oid) FROM pg_catalog.pg_tablespace
              WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1",
            &[],
        )
        .map_err(|e| Error::query("template1", "listing tablespaces", &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The relations of the connected database whose files hold user data:
/// user tables, materialized views (and sequences, when asked), their TOAST
/// tables, and every valid index on any of them; plus pg_largeobject, whose
/// rows are user data.
pub fn list_relations(
    client: &mut postgres::Client,
    database: &str,
    query: RelationQuery,
) -> Result<Vec<Relation>, Error> {
    let kinds = if query.include_sequences {
        "'r', 'm', 'S'"
    } else {
        "'r', 'm'"
    };
    let sql = format!(
        "WITH regular_heap (reloid) AS (
            SELECT c.oid
              FROM pg_catalog.pg_class c
              JOIN pg_catalog.pg_namespace n ON c.relnamespace = n.oid
             WHERE c.relkind IN ({kinds})
               AND ((n.nspname !~ '^pg_temp_' AND n.nspname !~ '^pg_toast_temp_'
                     AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'binary_upgrade', 'pg_toast')
                     AND c.oid >= 16384)
                    OR (n.nspname = 'pg_catalog' AND c.relname = 'pg_largeobject'))),
         toast_heap (reloid) AS (
            SELECT c.reltoastrelid FROM regular_heap JOIN pg_catalog.pg_class c ON regular_heap.reloid = c.oid
             WHERE c.reltoastrelid <> 0),
         all_index (reloid) AS (
            SELECT indexrelid FROM pg_catalog.pg_index
             WHERE indisvalid AND indisready
               AND indrelid IN (SELECT reloid FROM regular_heap UNION ALL SELECT reloid FROM toast_heap))
         SELECT c.oid, n.nspname::text || '.' || c.relname::text, c.relfilenode,
                coalesce(pg_catalog.pg_tablespace_location(t.oid), '')
           FROM (SELECT reloid FROM regular_heap UNION ALL SELECT reloid FROM toast_heap
                 UNION ALL SELECT reloid FROM all_index) all_rels
           JOIN pg_catalog.pg_class c ON all_rels.reloid = c.oid
           JOIN pg_catalog.pg_namespace n ON c.relnamespace = n.oid
           LEFT JOIN pg_catalog.pg_tablespace t ON c.reltablespace = t.oid
          ORDER BY c.oid"
    );
    let failed = |e: postgres::Error| Error::query(database, "listing relations", &e);
    // Row by row, never all rows at once beside the list they become.
    let mut rows = client
        .query_raw(sql.as_str(), std::iter::empty::<&str>())
        .map_err(failed)?;
    let mut relations = Vec::new();
    while let Some(row) =
        postgres::fallible_iterator::FallibleIterator::next(&mut rows).map_err(failed)?
    {
        let text = |i: usize| row.get::<_, &str>(i).into();
        relations.push(Relation {
            oid: row.get(0),
            name: text(1),
            relfilenode: row.get(2),
            tablespace_location: text(3),
        });
    }
    relations.shrink_to_fit();
    if let Some(bad) = relations.iter().find(|r| r.relfilenode == 0) {
        return Err(Error::Inconsistent(format!(
            "relation {} in database \"{database}\" has no relfilenode",
            bad.name
        )));
    }
    Ok(relations)
}
