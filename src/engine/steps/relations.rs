//! `match-relations`: the old and new relation maps paired by OID into the
//! files to move, saved (durably) before the first one moves.

use crate::engine::*;

impl<'a> Engine<'a> {
    /// `PG_<major>_<catversion>`: the per-version directory in a tablespace.
    pub(in crate::engine) fn tablespace_dir(&self, old: bool) -> Result<String, Failure> {
        let (major, control) = if old {
            (self.old_install.version.major, Some(&self.old_control))
        } else {
            (self.new_install.version.major, self.new_control.as_ref())
        };
        let control = control
            .ok_or_else(|| Failure::new(Code::Internal, "the new pg_control was not read"))?;
        Ok(format!("PG_{major}_{}", control.catalog_version))
    }

    /// Old and new relation maps must list the same relations (by OID);
    /// each pair becomes its files' moves.
    pub(in crate::engine) fn match_relations(&mut self) -> Result<(), Failure> {
        let old_suffix = self.tablespace_dir(true)?;
        let new_suffix = self.tablespace_dir(false)?;
        let new_path = self.new_dir().path.clone();
        self.relations = 0;
        self.moves = Vec::new();
        // A database at a time, so that only one database's pairs and
        // directory listings are held at once.
        for plan in &mut self.databases {
            let mut pairs = Vec::with_capacity(plan.old_relations.len());
            let new_by_oid: BTreeMap<u32, &Relation> =
                plan.new_relations.iter().map(|r| (r.oid, r)).collect();
            let mut missing = Vec::new();
            for old in &plan.old_relations {
                let Some(new) = new_by_oid.get(&old.oid) else {
                    missing.push(old.name.to_string());
                    continue;
                };
                let old_location = if old.tablespace_location.is_empty() {
                    plan.db.tablespace_location.as_str()
                } else {
                    &old.tablespace_location
                };
                let new_location = if new.tablespace_location.is_empty() {
                    plan.new_tablespace_location.as_str()
                } else {
                    &new.tablespace_location
                };
                pairs.push(RelationFiles {
                    old_base: pgm_transfer::relation_base(
                        &self.old_dir.path,
                        &old_suffix,
                        old_location,
                        plan.db.oid,
                        old.relfilenode,
                    ),
                    new_base: pgm_transfer::relation_base(
                        &new_path,
                        &new_suffix,
                        new_location,
                        plan.new_oid,
                        new.relfilenode,
                    ),
                });
            }
            if !missing.is_empty() || plan.new_relations.len() != plan.old_relations.len() {
                return Err(Failure::new(Code::RelationMapMismatch,
                    format!(
                        "database \"{}\": the old cluster has {} relations with data, the new one {} after the restore{}",
                        plan.db.name,
                        plan.old_relations.len(),
                        plan.new_relations.len(),
                        if missing.is_empty() { String::new() } else { format!("; missing in the new cluster: {}", missing.join(", ")) }
                    ),
                ));
            }
            drop(new_by_oid);
            self.moves.extend(
                pgm_transfer::plan(&pairs).map_err(|e| Failure::new(Code::TransferFailed, e))?,
            );
            if self.phase == Phase::Prepare {
                // The cutover plans its files again from the same pairs.
                self.prepared.pairs.extend(
                    pairs
                        .iter()
                        .map(|p| (p.old_base.clone(), p.new_base.clone())),
                );
            }
            self.relations += plan.old_relations.len();
            // The pairs hold what the transfer needs; the lists go (memory
            // stays flatter with tens of thousands of relations).
            plan.old_relations = Vec::new();
            plan.new_relations = Vec::new();
        }
        self.moves.shrink_to_fit();
        if self.settings.mode == Mode::Swap {
            // Found here, before the point of no return.
            pgm_transfer::swap_dirs(&self.moves).map_err(|file| Failure {
                code: Code::SwapNotPossible,
                message: format!(
                    "{} would change its name in the new cluster: --swap needs every relation file to keep its name",
                    file.display()
                ),
                remedy: Some("use --link (or --copy); nothing was changed in the old cluster".into()),
                clusters: None,
            })?;
        }
        self.save_plan()
    }

    /// Saves the transfer plan beside the journal (fsynced) before any file moves.
    pub(in crate::engine) fn save_plan(&self) -> Result<(), Failure> {
        let plan = crate::journal::TransferPlanRef {
            moves: &self.moves,
            databases: self.databases.iter().map(|d| d.db.name.as_str()).collect(),
            tablespaces: &self.tablespaces,
            outdated_extensions: &self.outdated_extensions,
            relations: self.relations,
        };
        // Durable before anything depends on it (the point of no return).
        let new = &self.new_dir().path;
        crate::journal::write_transfer_plan(new, &plan).map_err(|e| {
            Failure::new(
                Code::JournalFailed,
                format!("{}: {e}", crate::journal::transfer_plan_path(new).display()),
            )
        })
    }
}
