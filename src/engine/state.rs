//! What the engine carries between its steps: each database's part of the
//! plan, the copies made ahead of the transfer, the freeze horizons the
//! cutover takes over. What it saves for a later run (the transfer plan,
//! prepare's state) is the journal's (`journal/saved.rs`).

use crate::engine::*;

/// One database's part of the plan.
pub(in crate::engine) struct DatabasePlan {
    pub(in crate::engine) db: Database,
    pub(in crate::engine) old_relations: RelationList,
    pub(in crate::engine) new_relations: RelationList,
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
            old_relations: RelationList::default(),
            new_relations: RelationList::default(),
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

/// What the cutover reads of the old cluster besides the comparison: the
/// freeze horizons the new cluster must take over.
#[derive(Debug, Default)]
pub(in crate::engine) struct Horizons {
    /// Per database: (datfrozenxid, datminmxid) and per relation (oid,
    /// relfrozenxid, relminmxid).
    pub(in crate::engine) databases: BTreeMap<String, DatabaseHorizons>,
}

/// One database's (datfrozenxid, datminmxid), and per relation (oid,
/// relfrozenxid, relminmxid).
pub(in crate::engine) type DatabaseHorizons = ((String, String), Vec<(u32, String, String)>);
