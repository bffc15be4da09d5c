//! What the engine saves and carries between its steps: each database's
//! part of the plan, the copies made ahead of the transfer, and the transfer
//! plan saved before the first file moves (read back by resume and revert).

use crate::engine::*;

/// One database's part of the plan.
pub(in crate::engine) struct DatabasePlan {
    pub(in crate::engine) db: Database,
    pub(in crate::engine) old_relations: Vec<Relation>,
    pub(in crate::engine) new_relations: Vec<Relation>,
    pub(in crate::engine) new_oid: u32,
    pub(in crate::engine) new_tablespace_location: String,
    pub(in crate::engine) dump: PathBuf,
    pub(in crate::engine) log: PathBuf,
}

impl DatabasePlan {
    /// A database known only by its OID and name (a run continued from a
    /// journal); the rest is filled in by the steps that need it.
    pub(in crate::engine) fn named(oid: u32, name: String) -> DatabasePlan {
        DatabasePlan {
            db: Database {
                oid,
                name,
                tablespace_location: String::new(),
            },
            old_relations: Vec::new(),
            new_relations: Vec::new(),
            new_oid: 0,
            new_tablespace_location: String::new(),
            dump: PathBuf::new(),
            log: PathBuf::new(),
        }
    }
}

/// Copies of the old relation files made in the background from the moment
/// the old server stops until the transfer starts (which renames them into
/// place): in copy mode the restore's time then hides part of the copy's.
pub(in crate::engine) struct Staging {
    pub(in crate::engine) copies: Arc<pgm_transfer::StagedCopies>,
    pub(in crate::engine) worker: std::thread::JoinHandle<()>,
}

impl Staging {
    /// Stops the copying (after the file at hand) and removes the copies.
    pub(in crate::engine) fn abandon(self) {
        self.copies.stop();
        let _ = self.worker.join();
        let _ = std::fs::remove_dir_all(self.copies.dir());
    }
}

/// The transfer as planned before its first file moves: enough to finish
/// the upgrade without the old catalog (whose cluster link mode has disabled).
#[derive(serde::Serialize, serde::Deserialize)]
pub(in crate::engine) struct SavedPlan {
    pub(in crate::engine) moves: Vec<(PathBuf, PathBuf, u64)>,
    pub(in crate::engine) databases: Vec<String>,
    pub(in crate::engine) tablespaces: Vec<String>,
    #[serde(default)]
    pub(in crate::engine) outdated_extensions: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub(in crate::engine) relations: usize,
}

/// A [`SavedPlan`] written straight from the engine's own lists (tens of
/// thousands of moves are not copied to be saved).
#[derive(serde::Serialize)]
pub(in crate::engine) struct SavedPlanRef<'p> {
    pub(in crate::engine) moves: MovesRef<'p>,
    pub(in crate::engine) databases: Vec<&'p str>,
    pub(in crate::engine) tablespaces: &'p [String],
    pub(in crate::engine) outdated_extensions: &'p BTreeMap<String, Vec<String>>,
    pub(in crate::engine) relations: usize,
}

pub(in crate::engine) struct MovesRef<'p>(pub(in crate::engine) &'p [FileMove]);

impl serde::Serialize for MovesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|m| (&m.from, &m.to, m.bytes)))
    }
}

/// Where the transfer plan is saved before the first file moves.
pub fn transfer_plan_path(new_datadir: &Path) -> PathBuf {
    crate::journal::dir(new_datadir).join("transfer-plan.json")
}

/// The tablespaces an upgrade's saved plan names.
pub fn saved_tablespaces(new_datadir: &Path) -> Vec<String> {
    let path = transfer_plan_path(new_datadir);
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<SavedPlan>(&b).ok())
        .map(|p| p.tablespaces)
        .unwrap_or_default()
}

/// The transfer plan an upgrade saved, for revert.
pub fn saved_moves(new_datadir: &Path) -> Option<Vec<FileMove>> {
    let path = transfer_plan_path(new_datadir);
    let saved: SavedPlan = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(
        saved
            .moves
            .into_iter()
            .map(|(from, to, bytes)| FileMove { from, to, bytes })
            .collect(),
    )
}
