//! The operation's own journal: what `pg-migrate patroni` must know to
//! finish the cluster's upgrade, or put the cluster back, after it was
//! interrupted (`--resume`): the members as the preflight saw them, their
//! probes, the leader's server options as Patroni gave them, and how far
//! the leader's upgrade got. Each node's own work keeps its own journal
//! (the leader's upgrade in its new data directory, each replica's in its
//! own); this file is only the whole operation's. Written atomically.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::PatroniConfig;
use super::member::Probe;
use super::rest::ClusterView;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperationState {
    pub scope: String,
    pub leader: String,
    pub old_system_identifier: String,
    pub view: ClusterView,
    pub probes: Vec<Probe>,
    pub old_bindir: PathBuf,
    pub new_bindir: PathBuf,
    /// The leader's server options as Patroni gave them (postmaster.opts
    /// before the upgrade's own servers rewrote it); empty until read.
    pub leader_options: Vec<String>,
    /// The leader's upgrade was started.
    pub leader_upgrade_started: bool,
    /// The leader's upgrade finished: from here on, only forward.
    pub leader_upgraded: bool,
}

/// Where the operation's journal lives: beside the leader's data
/// directory (old and new share the parent with the default
/// `--new-datadir`), named after the cluster.
pub fn path(config: &PatroniConfig) -> PathBuf {
    let parent = config
        .data_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    parent.join(format!("pg-migrate-patroni-{}.json", config.scope))
}

pub fn load(path: &Path) -> Result<Option<OperationState>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub fn save(path: &Path, state: &OperationState) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
    crate::journal::write_atomically(path, &bytes).map_err(|e| format!("{}: {e}", path.display()))
}
