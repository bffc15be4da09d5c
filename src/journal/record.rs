//! The journal's records, as one typed enum: what each run writes and what
//! resume, revert, the cutover and the steps after the upgrade read back.
//! One line of `journal.ndjson` is a [`Line`]: a record and its time. The
//! spelling of each (`record` tag, field names) is docs/recovery.md's.

use std::path::PathBuf;

use pgm_cluster::ControlStamp;
use serde::{Deserialize, Serialize};

use crate::cli::{Method, Mode, Verify};

/// One journal line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    #[serde(flatten)]
    pub record: Record,
    #[serde(default)]
    pub at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// What the upgrade was started with (the first record).
    Plan(Box<PlanRecord>),
    /// Each run: its private run directory and its output directory.
    Run {
        run_dir: PathBuf,
        output: PathBuf,
        pid: u32,
        resuming: bool,
    },
    /// A finished step, with the new cluster's pg_control as it left it.
    Step {
        step: String,
        #[serde(default)]
        duration_ms: u64,
        #[serde(default)]
        new_control: Option<ControlStamp>,
    },
    /// The old cluster's pg_control as the upgrade found it, before any
    /// server of pg-migrate's ran on it: the checkpoint its standbys
    /// replayed to (a standby kit names it).
    OldAsFound {
        old: ControlStamp,
        timeline: u32,
    },
    /// The physical replication slots of the old cluster, made again in
    /// the new one for its standbys.
    PhysicalSlots {
        slots: Vec<String>,
    },
    /// The old cluster's pg_control as the counters were handed over from it.
    Handover {
        old: ControlStamp,
    },
    /// pg-migrate starts a server on the new cluster.
    NewServer,
    /// pg-migrate runs pg_resetwal on the new cluster.
    NewControlChanging,
    /// Link and swap mode, just before the old pg_control is renamed.
    PointOfNoReturn {
        renamed: PathBuf,
        to: PathBuf,
        #[serde(default)]
        new_control: Option<ControlStamp>,
    },
    /// The new cluster is being put back as initdb made it.
    ResetStarted,
    /// It was.
    Reset,
    Failed {
        code: String,
        message: String,
    },
    Interrupted {
        signal: String,
    },
    Complete {
        #[serde(default)]
        new_control: Option<ControlStamp>,
    },
    RevertStarted {
        #[serde(default)]
        new_control: Option<ControlStamp>,
    },
    Reverted {
        renamed_control_back: bool,
    },
    /// prepare: the new catalog's freeze was proven (per database).
    Frozen {
        databases: serde_json::Value,
    },
    Prepared,
    /// A cutover began: the steps count afresh.
    Cutover,
    /// The old cluster's freeze horizons and pg_control as a cutover
    /// verified it.
    Horizons(HorizonsRecord),
    /// The logical replication slots made again in the new cluster.
    #[serde(rename = "logical-slots")]
    LogicalSlots {
        slots: Vec<pgm_catalog::LogicalSlot>,
    },
    /// The reindex script `finish` wrote.
    Scripts {
        reindex: Option<PathBuf>,
    },
    /// `--backup-dir`: the backup written.
    Backup {
        dir: PathBuf,
        databases: usize,
        bytes: u64,
    },
    /// A step after the upgrade.
    AfterStep {
        step: String,
        status: String,
        #[serde(default)]
        message: Option<String>,
    },
}

/// Both clusters, the mode and what else the upgrade was asked to do: all a
/// resume, a revert or a cutover needs of the command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanRecord {
    pub mode: Mode,
    pub method: Method,
    /// `full` (an upgrade in one go) or `prepare` (the online mode).
    pub phase: String,
    pub old: PlanSide,
    pub new: PlanSide,
    pub user: String,
    pub jobs: usize,
    /// `--cpus`, as given (None: the CPUs of the machine that runs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<usize>,
    pub created_new: bool,
    pub backup_dir: Option<PathBuf>,
    pub log_dir: Option<PathBuf>,
    pub after: AfterRecord,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanSide {
    pub bindir: PathBuf,
    pub datadir: PathBuf,
    pub version: String,
    pub port: u16,
}

/// The steps after the upgrade that were asked for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AfterRecord {
    pub carry_config: bool,
    pub update_extensions: bool,
    pub reindex_collation: bool,
    pub post_upgrade: Option<PathBuf>,
    pub analyze: bool,
    pub verify: Option<Verify>,
}

/// The cutover's view of the old cluster when it verified it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HorizonsRecord {
    pub old_control: ControlStamp,
    pub databases: Vec<DatabaseHorizonsRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseHorizonsRecord {
    pub name: String,
    pub datfrozenxid: String,
    pub datminmxid: String,
    /// (relation OID, relfrozenxid, relminmxid)
    pub tables: Vec<(u32, String, String)>,
}
