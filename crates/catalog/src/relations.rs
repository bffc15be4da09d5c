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

/// One relation with storage, as a list hands it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relation<'a> {
    pub oid: u32,
    pub relfilenode: u32,
    /// `schema.name`, for messages.
    pub name: &'a str,
    /// The relation's tablespace location; empty for the database's default.
    pub tablespace_location: &'a str,
}

/// The relations with storage of one database, compact because there may be
/// hundreds of thousands of them: 16 bytes each, their names one after
/// another in one string, each tablespace location once (a list of 100,000
/// takes about 3.5 MB, where one allocation per name took twice that).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelationList {
    items: Vec<Item>,
    names: String,
    /// Tablespace locations, the database's default ("") first.
    locations: Vec<Box<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Item {
    oid: u32,
    relfilenode: u32,
    name_start: u32,
    name_len: u16,
    location: u16,
}

impl RelationList {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds one; fails only past 4 GB of names, 65,535 tablespaces or a
    /// name of 65,535 bytes.
    pub fn push(&mut self, relation: Relation<'_>) -> Result<(), Error> {
        let too_many =
            |what: &str| Error::Inconsistent(format!("too many {what} in one relation list"));
        if self.locations.is_empty() {
            self.locations.push("".into());
        }
        let location = match self
            .locations
            .iter()
            .position(|l| **l == *relation.tablespace_location)
        {
            Some(at) => at,
            None => {
                self.locations.push(relation.tablespace_location.into());
                self.locations.len() - 1
            }
        };
        let name = relation.name;
        let item = Item {
            oid: relation.oid,
            relfilenode: relation.relfilenode,
            name_start: u32::try_from(self.names.len()).map_err(|_| too_many("names"))?,
            name_len: u16::try_from(name.len()).map_err(|_| too_many("bytes in a name"))?,
            location: u16::try_from(location).map_err(|_| too_many("tablespaces"))?,
        };
        self.names.push_str(name);
        self.items.push(item);
        Ok(())
    }

    pub fn get(&self, index: usize) -> Option<Relation<'_>> {
        let item = self.items.get(index)?;
        let start = item.name_start as usize;
        Some(Relation {
            oid: item.oid,
            relfilenode: item.relfilenode,
            name: self
                .names
                .get(start..start + usize::from(item.name_len))
                .unwrap_or(""),
            tablespace_location: self
                .locations
                .get(usize::from(item.location))
                .map_or("", |l| l),
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = Relation<'_>> + '_ {
        (0..self.items.len()).filter_map(|i| self.get(i))
    }

    /// Orders the list by OID (names stay where they are).
    pub fn sort_by_oid(&mut self) {
        self.items.sort_unstable_by_key(|item| item.oid);
    }

    /// Whether a relation of this OID is listed; the list sorted by OID.
    pub fn contains_sorted(&self, oid: u32) -> bool {
        self.items
            .binary_search_by_key(&oid, |item| item.oid)
            .is_ok()
    }

    pub fn shrink_to_fit(&mut self) {
        self.items.shrink_to_fit();
        self.names.shrink_to_fit();
        self.locations.shrink_to_fit();
    }
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
) -> Result<RelationList, Error> {
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
    let mut relations = RelationList::default();
    while let Some(row) =
        postgres::fallible_iterator::FallibleIterator::next(&mut rows).map_err(failed)?
    {
        let relation = Relation {
            oid: row.get(0),
            name: row.get(1),
            relfilenode: row.get(2),
            tablespace_location: row.get(3),
        };
        if relation.relfilenode == 0 {
            return Err(Error::Inconsistent(format!(
                "relation {} in database \"{database}\" has no relfilenode",
                relation.name
            )));
        }
        relations.push(relation)?;
    }
    relations.shrink_to_fit();
    Ok(relations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relation_list_hands_back_what_it_was_given_sorted_by_oid() {
        let mut list = RelationList::default();
        let given = [
            (30, 300, "s.c", ""),
            (10, 100, "s.a", "/ts/one"),
            (20, 200, "s.bé", ""),
            (40, 400, "s.d", "/ts/one"),
            (50, 500, "s.e", "/ts/two"),
        ];
        for (oid, relfilenode, name, tablespace_location) in given {
            list.push(Relation {
                oid,
                relfilenode,
                name,
                tablespace_location,
            })
            .unwrap();
        }
        assert_eq!(list.len(), 5);
        assert_eq!(list.locations.len(), 3, "each location kept once");
        list.sort_by_oid();
        let back: Vec<_> = list
            .iter()
            .map(|r| (r.oid, r.relfilenode, r.name, r.tablespace_location))
            .collect();
        let mut expected = given.to_vec();
        expected.sort();
        assert_eq!(back, expected);
        assert!(list.contains_sorted(40) && !list.contains_sorted(35));
        assert_eq!(list.get(5), None);
    }
}
