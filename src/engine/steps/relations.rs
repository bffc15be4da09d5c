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
        let old_path = self.old_dir.path.clone();
        self.relations = 0;
        self.moves = Vec::new();
        let mut planner = pgm_transfer::Planner::default();
        let failed = |e| Failure::new(Code::TransferFailed, e);
        // First every database's lists checked and its files counted, so
        // that the list of moves is made once, as long as it must be.
        let mut files = 0;
        for plan in &mut self.databases {
            check_relations(plan)?;
            self.relations += plan.old_relations.len();
            files += planner
                .count(relation_pairs(
                    plan,
                    &old_path,
                    &old_suffix,
                    &new_path,
                    &new_suffix,
                ))
                .map_err(failed)?;
        }
        planner.reserve(files);
        let keep_pairs = self.phase == Phase::Prepare;
        for plan in &mut self.databases {
            let mut kept = Vec::new();
            // Each pair made as the plan reaches it: pairs and moves are
            // never all held at once.
            let pairs = relation_pairs(plan, &old_path, &old_suffix, &new_path, &new_suffix)
                .inspect(|pair| {
                    if keep_pairs {
                        // The cutover plans its files again from the same pairs.
                        kept.push((pair.old_base.clone(), pair.new_base.clone()));
                    }
                });
            planner.add(pairs).map_err(failed)?;
            self.prepared.pairs.append(&mut kept);
            // Only the moves are needed from here on.
            plan.old_relations = RelationList::default();
            plan.new_relations = RelationList::default();
        }
        self.moves = planner.finish();
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

/// Sorts one database's old and new relation lists by OID and checks that
/// they list the same relations: then each file pairs with its own.
fn check_relations(plan: &mut DatabasePlan) -> Result<(), Failure> {
    let (old, new) = (&mut plan.old_relations, &mut plan.new_relations);
    // Both by OID: the same OIDs then pair up in order, without a map.
    old.sort_by_oid();
    new.sort_by_oid();
    // With no OID twice in the old list, the checks below leave the two
    // lists the same OIDs.
    if let Some((twice, _)) = old
        .iter()
        .zip(old.iter().skip(1))
        .find(|(a, b)| a.oid == b.oid)
    {
        return Err(Failure::new(
            Code::RelationMapMismatch,
            format!(
                "database \"{}\": the old cluster's relation list names OID {} twice ({})",
                plan.db.name, twice.oid, twice.name
            ),
        ));
    }
    let missing: Vec<&str> = old
        .iter()
        .filter(|r| !new.contains_sorted(r.oid))
        .map(|r| r.name)
        .collect();
    if !missing.is_empty() || new.len() != old.len() {
        return Err(Failure::new(
            Code::RelationMapMismatch,
            format!(
                "database \"{}\": the old cluster has {} relations with data, the new one {} after the restore{}",
                plan.db.name,
                old.len(),
                new.len(),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!("; missing in the new cluster: {}", missing.join(", "))
                }
            ),
        ));
    }
    Ok(())
}

/// One database's relations as pairs of file paths, old and new, made as
/// they are asked for (the lists are sorted by OID and checked).
fn relation_pairs<'p>(
    plan: &'p DatabasePlan,
    old_path: &'p Path,
    old_suffix: &'p str,
    new_path: &'p Path,
    new_suffix: &'p str,
) -> impl Iterator<Item = RelationFiles> + 'p {
    plan.old_relations
        .iter()
        .zip(plan.new_relations.iter())
        .map(move |(old, new)| {
            debug_assert_eq!(old.oid, new.oid);
            let old_location = if old.tablespace_location.is_empty() {
                plan.db.tablespace_location.as_str()
            } else {
                old.tablespace_location
            };
            let new_location = if new.tablespace_location.is_empty() {
                plan.new_tablespace_location.as_str()
            } else {
                new.tablespace_location
            };
            RelationFiles {
                old_base: pgm_transfer::relation_base(
                    old_path,
                    old_suffix,
                    old_location,
                    plan.db.oid,
                    old.relfilenode,
                ),
                new_base: pgm_transfer::relation_base(
                    new_path,
                    new_suffix,
                    new_location,
                    plan.new_oid,
                    new.relfilenode,
                ),
            }
        })
}
