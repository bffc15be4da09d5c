//! Logical replication slots (old 17 and later): read from the old cluster
//! while its server is up, made again in the new cluster after its last
//! pg_resetwal, so that the WAL they keep is the new cluster's. Their
//! consumers then continue from the new cluster's first position: the checks
//! made sure nothing decodable was left unconsumed in the old one.

use serde::{Deserialize, Serialize};

use crate::Error;

/// What a slot is made again from; its position is the new cluster's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalSlot {
    pub name: String,
    pub plugin: String,
    pub database: String,
    pub two_phase: bool,
    pub failover: bool,
}

/// The old cluster's permanent logical slots. Before 17 a slot's position is
/// not saved at shutdown, so none is carried (the checks refuse them).
pub fn list_logical_slots(
    client: &mut postgres::Client,
    old_major: pgm_cluster::PgMajor,
) -> Result<Vec<LogicalSlot>, Error> {
    if !old_major.upgrade_carries_logical_replication() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT slot_name::text, plugin::text, database::text, two_phase, failover
               FROM pg_catalog.pg_replication_slots
              WHERE slot_type = 'logical' AND NOT temporary
              ORDER BY database, slot_name",
            &[],
        )
        .map_err(|e| Error::query("template1", "listing logical replication slots", &e))?;
    Ok(rows
        .iter()
        .map(|r| LogicalSlot {
            name: r.get(0),
            plugin: r.get(1),
            database: r.get(2),
            two_phase: r.get(3),
            failover: r.get(4),
        })
        .collect())
}

/// Makes each slot in its database of the new cluster (its server up in
/// binary-upgrade mode, after the last pg_resetwal).
pub fn create_logical_slots<F>(connect: F, slots: &[LogicalSlot]) -> Result<(), Error>
where
    F: Fn(&str) -> Result<postgres::Client, pgm_cluster::Error>,
{
    let mut current: Option<(String, postgres::Client)> = None;
    for slot in slots {
        if current.as_ref().map(|(db, _)| db) != Some(&slot.database) {
            current = Some((slot.database.clone(), connect(&slot.database)?));
        }
        let Some((_, client)) = current.as_mut() else {
            continue;
        };
        client
            .execute(
                "SELECT pg_catalog.pg_create_logical_replication_slot($1, $2, false, $3, $4)",
                &[&slot.name, &slot.plugin, &slot.two_phase, &slot.failover],
            )
            .map_err(|e| {
                Error::query(
                    &slot.database,
                    &format!("creating logical replication slot \"{}\"", slot.name),
                    &e,
                )
            })?;
    }
    Ok(())
}

/// The old cluster's permanent physical replication slots, by name: its
/// standbys' (`primary_slot_name`).
pub fn list_physical_slots(client: &mut postgres::Client) -> Result<Vec<String>, Error> {
    let rows = client
        .query(
            "SELECT slot_name::text FROM pg_catalog.pg_replication_slots
              WHERE slot_type = 'physical' AND NOT temporary
              ORDER BY slot_name",
            &[],
        )
        .map_err(|e| Error::query("template1", "listing physical replication slots", &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Makes each physical slot in the new cluster, keeping WAL from now on:
/// made after the new cluster's last pg_resetwal, they keep every record a
/// standby upgraded from its own files needs, from the new cluster's first
/// checkpoint until the standby connects.
pub fn create_physical_slots(client: &mut postgres::Client, names: &[String]) -> Result<(), Error> {
    for name in names {
        client
            .execute(
                "SELECT pg_catalog.pg_create_physical_replication_slot($1, true)",
                &[name],
            )
            .map_err(|e| {
                Error::query(
                    "template1",
                    &format!("creating physical replication slot \"{name}\""),
                    &e,
                )
            })?;
    }
    Ok(())
}
