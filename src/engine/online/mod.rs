//! The online mode: `prepare` does the catalog work while the old cluster
//! still serves, `cutover` only the short rest in the window.
//!
//! prepare: the checks (a running old server is inspected as it runs); the
//! new cluster prepared; globals dumped between two fingerprints of the
//! shared catalogs; each database's schema dumped in a snapshot it shares
//! with that database's catalog fingerprint and relation map; the counters
//! handed over as they stand; the restore; then every catalog row of the
//! new cluster frozen and the freeze proven (the cutover replaces the
//! commit log those rows' transaction ids would be looked up in); the
//! relation map saved; in link mode the old files hard-linked now (the old
//! server goes on writing into the same inodes); the new pg_control hidden,
//! so that nobody starts a cluster that shares files with a live one.
//!
//! cutover (old server cleanly stopped): the old catalog checked against
//! what prepare saw (globals, databases, fingerprints, relation files), and
//! a refusal naming what changed otherwise, nothing modified; then link
//! mode's point of no return, the counters handed over again from the old
//! cluster's final pg_control with its commit log and multixacts, the
//! freeze horizons set from the old cluster's current values, the files
//! linked anew where they changed (or copied), sync, done.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use pgm_catalog::fingerprint::{changed_tables, fingerprint, Fingerprint};
use pgm_catalog::{Database, RelationQuery};
use pgm_cluster::{ControlFile, DataDir, Server, ServerStatus};
use pgm_transfer::RelationFiles;
use pgm_verifier::CheckConfig;
use serde_json::json;

use super::{Code, Engine, Failure, Finished, NextStep};

mod cutover;
mod prepare;

pub use cutover::stop_old_server;

/// The pg_control fields an in-place upgrade needs the same on both sides.
fn layout_of(control: &ControlFile) -> Vec<(String, u64)> {
    vec![
        (
            "data checksums".into(),
            u64::from(control.data_checksum_version),
        ),
        ("block size".into(), u64::from(control.block_size)),
        ("segment size".into(), u64::from(control.relseg_size)),
        ("WAL block size".into(), u64::from(control.wal_block_size)),
        (
            "WAL segment size".into(),
            u64::from(control.wal_segment_size),
        ),
        ("alignment".into(), u64::from(control.max_align)),
        (
            "TOAST chunk size".into(),
            u64::from(control.toast_max_chunk_size),
        ),
        ("system identifier".into(), control.system_identifier),
    ]
}

/// The SHA-256 of the globals dump's text, less `\restrict` /
/// `\unrestrict` (a random key on every run of 18's pg_dumpall). Only the
/// digest is kept: the dump holds the roles' password hashes, which must
/// not stay in the new data directory (base backups and standbys copy it).
pub fn globals_digest(path: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::new(Code::DumpFailed, format!("{}: {e}", path.display())))?;
    let normalized = text
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(crate::support::sha256_hex(normalized.as_bytes()))
}

/// Opens a repeatable-read, read-only transaction on `client`, exports its
/// snapshot for pg_dump, and fingerprints the catalog in it. The
/// transaction stays open (the snapshot lives as long as it does): the
/// caller commits once pg_dump is done.
pub fn export_snapshot(
    client: &mut postgres::Client,
    database: &str,
) -> Result<(String, Fingerprint), Failure> {
    let sql_error = |e: postgres::Error| {
        Failure::new(
            Code::OldCatalogFailed,
            format!(
                "database \"{database}\": {}",
                pgm_cluster::describe_pg_error(&e)
            ),
        )
    };
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .map_err(sql_error)?;
    let snapshot: String = client
        .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
        .map_err(sql_error)?
        .get(0);
    let print = fingerprint(client, database, false)
        .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
    Ok((snapshot, print))
}

impl<'a> Engine<'a> {}
