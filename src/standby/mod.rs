//! Standbys upgraded in place from their own files. `make` takes a kit from
//! the primary's finished upgrade (`kit` is its format); `apply` upgrades a
//! stopped standby with it: links the standby's own relation files, installs
//! the kit's, carries the standby's configuration, and journals every step
//! (here, `standby.ndjson` in the new data directory's `pg_migrate.d`) so
//! that `resume` and `revert` can finish or undo it. Reporting is the
//! command's (`commands/standby.rs`).

pub mod apply;
pub mod kit;
pub mod make;

use std::io::Write;
use std::path::{Path, PathBuf};

use pgm_cluster::ControlStamp;
use serde::{Deserialize, Serialize};

use crate::journal;

const JOURNAL: &str = "standby.ndjson";
const MANIFEST: &str = "kit-manifest.json";
/// Where the kit's files wait until they are installed.
const STAGING: &str = "kit";

/// What `pg-migrate standby` was started with, and what resume and revert need.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StandbyPlan {
    pub old_bindir: PathBuf,
    pub new_bindir: PathBuf,
    pub old_datadir: PathBuf,
    pub new_datadir: PathBuf,
    /// pg-migrate made the new data directory (revert removes it whole).
    pub created_new: bool,
    /// Each tablespace of the standby: OID → location.
    pub tablespaces: Vec<(u32, PathBuf)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum StandbyRecord {
    Plan(Box<StandbyPlan>),
    Step {
        step: String,
    },
    /// Just before the old standby's pg_control is renamed: a pg_control.old
    /// found later is this run's own only with this record.
    Protecting,
    /// The standby's files are in place; its pg_control is the kit's.
    Complete {
        new_control: ControlStamp,
    },
    RevertStarted,
    Reverted,
    Failed {
        code: String,
        message: String,
    },
}

pub fn journal_path(new_datadir: &Path) -> PathBuf {
    journal::dir(new_datadir).join(JOURNAL)
}

pub fn manifest_path(new_datadir: &Path) -> PathBuf {
    journal::dir(new_datadir).join(MANIFEST)
}

pub fn staging_path(new_datadir: &Path) -> PathBuf {
    journal::dir(new_datadir).join(STAGING)
}

/// Whether `new_datadir` holds a standby's journal (resume and revert
/// then work on it).
pub fn is_standby(new_datadir: &Path) -> bool {
    journal_path(new_datadir).is_file()
}

/// Appends one record, durably.
pub fn record(new_datadir: &Path, record: &StandbyRecord) -> std::io::Result<()> {
    let path = journal_path(new_datadir);
    let fresh = !path.exists();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    file.write_all(&line)?;
    file.sync_all()?;
    if fresh {
        crate::support::sync_dir(&journal::dir(new_datadir)).map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// The records of a standby's journal (a line cut short by a crash is left out).
pub fn records(new_datadir: &Path) -> Vec<StandbyRecord> {
    std::fs::read_to_string(journal_path(new_datadir))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn plan_of(records: &[StandbyRecord]) -> Option<StandbyPlan> {
    records.iter().find_map(|r| match r {
        StandbyRecord::Plan(plan) => Some(plan.as_ref().clone()),
        _ => None,
    })
}

pub fn done_steps(records: &[StandbyRecord]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match r {
            StandbyRecord::Step { step } => Some(step.clone()),
            _ => None,
        })
        .collect()
}
