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
            let mut old_relations = std::mem::take(&mut plan.old_relations);
            let mut new_relations = std::mem::take(&mut plan.new_relations);
            // Both by OID: the same OIDs then pair up in order, without a map.
            old_relations.sort_unstable_by_key(|r| r.oid);
            new_relations.sort_unstable_by_key(|r| r.oid);
            // With no OID twice in the old list, the checks below leave the
            // two lists the same OIDs, so that each file pairs with its own.
            if let Some(twice) = old_relations.windows(2).find(|w| w[0].oid == w[1].oid) {
                return Err(Failure::new(
                    Code::RelationMapMismatch,
                    format!(
                        "database \"{}\": the old cluster's relation list names OID {} twice ({})",
                        plan.db.name, twice[0].oid, twice[0].name
                    ),
                ));
            }
            let missing: Vec<&str> = old_relations
                .iter()
                .filter(|old| {
                    new_relations
                        .binary_search_by_key(&old.oid, |r| r.oid)
                        .is_err()
                })
                .map(|old| &*old.name)
                .collect();
            if !missing.is_empty() || new_relations.len() != old_relations.len() {
                return Err(Failure::new(Code::RelationMapMismatch,
                    format!(
                        "database \"{}\": the old cluster has {} relations with data, the new one {} after the restore{}",
                        plan.db.name,
                        old_relations.len(),
                        new_relations.len(),
                        if missing.is_empty() { String::new() } else { format!("; missing in the new cluster: {}", missing.join(", ")) }
                    ),
                ));
            }
            drop(missing);
            self.relations += old_relations.len();
            let keep_pairs = self.phase == Phase::Prepare;
            let mut kept = Vec::new();
            // Each pair made as the plan reaches it, and each relation let
            // go then: lists, pairs and moves are never all held at once.
            let pairs = old_relations
                .into_iter()
                .zip(new_relations)
                .map(|(old, new)| {
                    debug_assert_eq!(old.oid, new.oid);
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
                    let pair = RelationFiles {
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
                    };
                    if keep_pairs {
                        // The cutover plans its files again from the same pairs.
                        kept.push((pair.old_base.clone(), pair.new_base.clone()));
                    }
                    pair
                });
            let mut planned =
                pgm_transfer::plan(pairs).map_err(|e| Failure::new(Code::TransferFailed, e))?;
            self.prepared.pairs.append(&mut kept);
            if self.moves.is_empty() {
                self.moves = planned;
            } else {
                self.moves.append(&mut planned);
            }
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
