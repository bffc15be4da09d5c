//! `finish`: the scripts for the operator (in pg_migrate.d), the next steps,
//! and the end of a run (the journal's `complete`, the output removed).

use crate::engine::*;

impl<'a> Engine<'a> {
    /// Scripts for the user and the next steps. No server starts here: the
    /// restore's server was the last to run (after the last pg_resetwal, so
    /// pg_control records the real wal_level, which standbys built by rsync
    /// need), and the sync step came after it.
    pub(in crate::engine) fn finish(&mut self) -> Result<Vec<NextStep>, Failure> {
        let mut next = Vec::new();
        let newbin = self.new_install.bindir.clone();
        let new_path = self.new_dir().path.clone();
        next.push(NextStep::plain(format!(
            "start the new cluster: {} -D {} start",
            shell_quote(&newbin.join("pg_ctl").display().to_string()),
            shell_quote(&new_path.display().to_string())
        )));
        if !self.physical_slots.is_empty() {
            next.push(NextStep::done_by(
                STANDBY_KIT_ADVICE,
                format!(
                    "the new cluster keeps WAL for the standbys' slots ({}): before its first start, make a standby kit (pg-migrate standby-kit -D {} -o KIT) and upgrade each standby with it (pg-migrate standby); drop the slot of a standby that will not come back, or its WAL piles up",
                    self.physical_slots.join(", "),
                    shell_quote(&new_path.display().to_string())
                ),
            ));
        }
        let outdated = &self.outdated_extensions;
        // Written beside the journal, never into the current directory:
        // this step comes after link and swap mode's point of no return,
        // where nothing may fail for want of a writable place (a container
        // whose working directory is /), and pg_migrate.d is where this
        // run has been writing all along.
        let scripts_dir = crate::journal::dir(&new_path);
        if !outdated.is_empty() {
            let mut sql = String::from("-- Written by pg-migrate: extensions whose installed version is older than the new installation's default.\n\\set ON_ERROR_STOP on\n");
            for (db, names) in outdated {
                sql.push_str(&psql_connect(db));
                sql.push('\n');
                for name in names {
                    sql.push_str(&format!(
                        "ALTER EXTENSION {} UPDATE;\n",
                        pgm_cluster::sql::quote_ident(name)
                    ));
                }
            }
            let path = scripts_dir.join("update_extensions.sql");
            std::fs::write(&path, sql).map_err(|e| {
                Failure::new(Code::ScriptFailed, format!("{}: {e}", path.display()))
            })?;
            self.scripts.push(path.clone());
            next.push(NextStep::done_by(
                "update-extensions",
                format!(
                    "update extensions: {} -f {}",
                    shell_quote(&newbin.join("psql").display().to_string()),
                    shell_quote(&path.display().to_string())
                ),
            ));
        }
        if self.settings.method == Method::Dump {
            next.push(NextStep::done_by(
                "analyze",
                format!(
                    "gather optimizer statistics (a reload carries none): {} --all --analyze-in-stages",
                    newbin.join("vacuumdb").display()
                ),
            ));
        } else if self.new_install.version.major.dumps_statistics() && !self.settings.no_statistics
        {
            next.push(NextStep::done_by(
                "analyze",
                format!(
                    "fill in statistics the upgrade could not carry: {} --all --analyze-in-stages --missing-stats-only, later {} --all --analyze-only",
                    newbin.join("vacuumdb").display(),
                    newbin.join("vacuumdb").display()
                ),
            ));
        } else {
            next.push(NextStep::done_by(
                "analyze",
                format!(
                    "gather optimizer statistics (they were not carried): {} --all --analyze-in-stages",
                    newbin.join("vacuumdb").display()
                ),
            ));
        }
        // A reload built every index anew, under the new installation's collations.
        let reindex = if self.settings.method == Method::Dump {
            None
        } else {
            self.write_reindex_script(&scripts_dir)?
        };
        self.scripts.extend(reindex.clone());
        self.reindex_script = reindex.clone();
        if let Some(journal) = self.journal.as_mut() {
            journal
                .record(Record::Scripts {
                    reindex: reindex.clone(),
                })
                .map_err(|e| Failure::new(Code::JournalFailed, e))?;
        }
        if let Some(path) = reindex {
            next.push(NextStep::done_by(
                "reindex-collation",
                format!(
                    "rebuild what a changed collation or Unicode version affects: {} -f {}",
                    shell_quote(&newbin.join("psql").display().to_string()),
                    shell_quote(&path.display().to_string())
                ),
            ));
        }
        let delete = self.write_delete_script(&scripts_dir);
        self.scripts.extend(delete.clone());
        match delete {
            Some(path) => next.push(NextStep::plain(format!(
                "once the new cluster runs well, delete the old one's files with {}",
                shell_quote(&path.display().to_string())
            ))),
            None => next.push(NextStep::plain("delete the old cluster's files by hand once the new one runs well (no script: a data directory or tablespace lies inside another)".into())),
        }
        match self.settings.mode {
            Mode::Link => next.push(NextStep::done_by(
                NEW_CLUSTER_RAN,
                format!(
                    "the old cluster cannot be started: its global/pg_control was renamed to pg_control.old; to go back instead, and only while the new cluster has never been started, rename it back: mv {0}/global/pg_control.old {0}/global/pg_control",
                    shell_quote(&self.old_dir.path.display().to_string())
                ),
            )),
            Mode::Swap => next.push(NextStep::done_by(
                NEW_CLUSTER_RAN,
                format!(
                    "the old cluster cannot be started: its database directories now belong to the new cluster; to go back instead, and only while the new cluster has never been started: pg-migrate revert -D {}",
                    shell_quote(&self.new_dir().path.display().to_string())
                ),
            )),
            _ => {}
        }
        Ok(next)
    }

    /// `reindex_after_upgrade.sql` in `dir`: what the check warned may disagree with
    /// the new installation: indexes ordered by a collation whose version
    /// changed (then the collation's recorded version is refreshed), and
    /// indexes and materialized views computed with the old Unicode tables.
    pub(in crate::engine) fn write_reindex_script(
        &self,
        dir: &Path,
    ) -> Result<Option<PathBuf>, Failure> {
        // A cutover has no catalog facts of its own: prepare wrote the script's text.
        let sql = match self.phase {
            Phase::Cutover => self.prepared.reindex_sql.clone(),
            _ => self.reindex_sql(),
        };
        let Some(sql) = sql else {
            return Ok(None);
        };
        let path = dir.join("reindex_after_upgrade.sql");
        std::fs::write(&path, sql)
            .map_err(|e| Failure::new(Code::ScriptFailed, format!("{}: {e}", path.display())))?;
        Ok(Some(path))
    }

    /// The text of `reindex_after_upgrade.sql`, when there is anything to rebuild.
    pub(in crate::engine) fn reindex_sql(&self) -> Option<String> {
        let (Some(old), Some(new)) = (&self.old_catalog, &self.new_catalog) else {
            return None;
        };
        #[derive(Default)]
        struct Work {
            reindex: BTreeSet<String>,
            refresh_views: BTreeSet<String>,
            refresh_versions: BTreeSet<String>,
        }
        let mut by_database: BTreeMap<String, Work> = BTreeMap::new();
        for (index, _) in pgm_verifier::drifted_indexes(&old.uses, &new.can) {
            let work = by_database.entry(index.database.clone()).or_default();
            work.reindex.insert(index.index.clone());
            work.refresh_versions.insert(match &index.collation {
                Some(collation) => format!("ALTER COLLATION {collation} REFRESH VERSION;"),
                None => format!(
                    "ALTER DATABASE {} REFRESH COLLATION VERSION;",
                    pgm_cluster::sql::quote_ident(&index.database)
                ),
            });
        }
        if old.uses.unicode_version.is_some() && old.uses.unicode_version != new.can.unicode_version
        {
            for object in &old.uses.unicode_dependent {
                let Some(database) = &object.database else {
                    continue;
                };
                let work = by_database.entry(database.clone()).or_default();
                match object.kind.as_str() {
                    "index" => {
                        work.reindex.insert(object.name.clone());
                    }
                    "materialized view" => {
                        work.refresh_views.insert(object.name.clone());
                    }
                    _ => {}
                }
            }
        }
        by_database.retain(|_, w| !w.reindex.is_empty() || !w.refresh_views.is_empty());
        if by_database.is_empty() {
            return None;
        }
        let mut sql = String::from(
            "-- Written by pg-migrate: indexes and materialized views computed under a collation\n\
             -- or Unicode version that changed with the upgrade. It stops at the first error, so\n\
             -- that no collation is marked current while an index built under it failed to rebuild.\n\
             \\set ON_ERROR_STOP on\n",
        );
        for (database, work) in by_database {
            sql.push_str(&psql_connect(&database));
            sql.push('\n');
            for index in work.reindex {
                sql.push_str(&format!("REINDEX INDEX CONCURRENTLY {index};\n"));
            }
            for view in work.refresh_views {
                sql.push_str(&format!("REFRESH MATERIALIZED VIEW {view};\n"));
            }
            for statement in work.refresh_versions {
                sql.push_str(&statement);
                sql.push('\n');
            }
        }
        Some(sql)
    }

    /// `delete_old_cluster.sh` in `dir`, unless a directory of one cluster
    /// lies inside the other's (deleting would hit the new one).
    pub(in crate::engine) fn write_delete_script(&self, dir: &Path) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let old = &self.old_dir.path;
        let new = &self.new_dir().path;
        if new.starts_with(old)
            || self
                .tablespaces
                .iter()
                .any(|t| Path::new(t).starts_with(old))
        {
            return None;
        }
        let suffix = self.tablespace_dir(true).ok()?;
        let mut script = String::from(
            "#!/bin/sh\n# Written by pg-migrate: removes the old cluster's files.\n\n",
        );
        script.push_str(&format!(
            "rm -rf {}\n",
            shell_quote(&old.display().to_string())
        ));
        for location in &self.tablespaces {
            script.push_str(&format!(
                "rm -rf {}\n",
                shell_quote(&Path::new(location).join(&suffix).display().to_string())
            ));
        }
        let path = dir.join("delete_old_cluster.sh");
        std::fs::write(&path, script).ok()?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).ok()?;
        Some(path)
    }

    /// Removes this run's logs and dumps after success unless `--retain`;
    /// the journal stays.
    pub(in crate::engine) fn cleanup_output(&mut self) -> Option<PathBuf> {
        let output = self.output.clone()?;
        if self.phase == Phase::Prepare {
            if let Some(journal) = self.journal.as_mut() {
                let _ = journal.record(Record::Prepared);
            }
            let _ = crate::journal::write_state(&self.new_dir().path, State::Prepared);
        } else {
            let new_control = self.new_control_stamp();
            if let Some(journal) = self.journal.as_mut() {
                let _ = journal.record(Record::Complete { new_control });
            }
            let _ = crate::journal::write_state(&self.new_dir().path, State::Complete);
        }
        *INTERRUPT.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // Earlier runs that failed kept their dumps (for a look at what
        // went wrong); they hold the roles' password hashes, which must not
        // stay in the new data directory once it is done.
        remove_earlier_dumps(&crate::journal::dir(&self.new_dir().path), &output);
        if self.settings.retain {
            return Some(output);
        }
        let _ = std::fs::remove_dir_all(&output);
        None
    }
}
