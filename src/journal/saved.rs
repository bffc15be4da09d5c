//! The files an engine saves beside the journal for the run that continues
//! it: the transfer plan (written before the first file moves; read by
//! resume and revert, when the old catalog may no longer be readable) and
//! what prepare saw of the old cluster (read by the cutover). Each is
//! written with [`write_atomically`] and read back whole or not at all.
//! This module keeps the files; what they mean is the engine's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pgm_catalog::fingerprint::Fingerprint;
use pgm_transfer::FileMove;
use serde::{Deserialize, Serialize};

use super::{dir, write_atomically, write_atomically_with};

const TRANSFER_PLAN: &str = "transfer-plan.json";
const PREPARED: &str = "prepared.json";

/// The transfer as planned before its first file moves: enough to finish
/// the upgrade without the old catalog (whose cluster link mode has disabled).
pub struct TransferPlan {
    pub moves: Vec<FileMove>,
    pub databases: Vec<String>,
    pub tablespaces: Vec<String>,
    pub outdated_extensions: BTreeMap<String, Vec<String>>,
    pub relations: usize,
}

/// A [`TransferPlan`] as the engine holds it (tens of thousands of moves
/// are not copied to be saved).
#[derive(Serialize)]
pub struct TransferPlanRef<'p> {
    #[serde(serialize_with = "moves_as_tuples")]
    pub moves: &'p [FileMove],
    pub databases: Vec<&'p str>,
    pub tablespaces: &'p [String],
    pub outdated_extensions: &'p BTreeMap<String, Vec<String>>,
    pub relations: usize,
}

/// The file's form: a move is `[from, to, bytes]`.
#[derive(Deserialize)]
struct TransferPlanFile {
    moves: Vec<(PathBuf, PathBuf, u64)>,
    databases: Vec<String>,
    tablespaces: Vec<String>,
    #[serde(default)]
    outdated_extensions: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    relations: usize,
}

fn moves_as_tuples<S: serde::Serializer>(moves: &&[FileMove], out: S) -> Result<S::Ok, S::Error> {
    out.collect_seq(moves.iter().map(|m| (&m.from, &m.to, m.bytes)))
}

pub fn transfer_plan_path(new_datadir: &Path) -> PathBuf {
    dir(new_datadir).join(TRANSFER_PLAN)
}

/// Saves the transfer plan, durably, before anything depends on it.
pub fn write_transfer_plan(new_datadir: &Path, plan: &TransferPlanRef) -> std::io::Result<()> {
    write_atomically_with(&transfer_plan_path(new_datadir), |out| {
        serde_json::to_writer(out, plan).map_err(std::io::Error::other)
    })
}

/// The saved transfer plan; `None` when it is missing or damaged.
pub fn read_transfer_plan(new_datadir: &Path) -> Option<TransferPlan> {
    let bytes = std::fs::read(transfer_plan_path(new_datadir)).ok()?;
    let file: TransferPlanFile = serde_json::from_slice(&bytes).ok()?;
    Some(TransferPlan {
        moves: file
            .moves
            .into_iter()
            .map(|(from, to, bytes)| FileMove { from, to, bytes })
            .collect(),
        databases: file.databases,
        tablespaces: file.tablespaces,
        outdated_extensions: file.outdated_extensions,
        relations: file.relations,
    })
}

/// What prepare saw of the old cluster, saved for the cutover.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PreparedState {
    /// The digest of the globals dump (see `engine::online::globals_digest`).
    #[serde(default)]
    pub globals_sha256: String,
    pub shared: Fingerprint,
    pub databases: Vec<PreparedDatabase>,
    /// Every relation's first-segment paths, old and new (the cutover plans
    /// the files again from these).
    pub pairs: Vec<(PathBuf, PathBuf)>,
    /// The scripts the finished upgrade writes, from prepare's catalog facts.
    #[serde(default)]
    pub reindex_sql: Option<String>,
    #[serde(default)]
    pub outdated_extensions: BTreeMap<String, Vec<String>>,
    /// What of the old pg_control the new cluster was made to match: the
    /// cutover refuses if it changed (pg_checksums, say).
    #[serde(default)]
    pub old_layout: Vec<(String, u64)>,
    /// The new cluster's checkpoint when prepare hid it: if it differs at
    /// the cutover, someone ran it.
    #[serde(default)]
    pub new_checkpoint_lsn: u64,
    /// The new cluster's whole pg_control when prepare hid it: a start
    /// stopped with `-m immediate` leaves the checkpoint as it was.
    #[serde(default)]
    pub new_control: Option<pgm_cluster::ControlStamp>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreparedDatabase {
    pub name: String,
    pub oid: u32,
    pub fingerprint: Fingerprint,
    /// (oid, relfilenode, tablespace location) of every relation with files.
    pub relations: Vec<(u32, u32, String)>,
}

pub fn prepared_path(new_datadir: &Path) -> PathBuf {
    dir(new_datadir).join(PREPARED)
}

pub fn write_prepared(new_datadir: &Path, state: &PreparedState) -> std::io::Result<()> {
    let text = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    write_atomically(&prepared_path(new_datadir), &text)
}

/// What prepare saved; `None` when it is missing or damaged.
pub fn read_prepared(new_datadir: &Path) -> Option<PreparedState> {
    let bytes = std::fs::read(prepared_path(new_datadir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}
