//! `pg-migrate cutover`: the old catalog compared with prepare's, the
//! counters and horizons handed over, the files linked (what changed) or
//! copied, and the guard against an old server started meanwhile.

use super::*;
use crate::engine::*;
use crate::journal::{DatabaseHorizonsRecord, HorizonsRecord};
use crate::output::StepStatus;

impl<'a> Engine<'a> {
    /// An engine for the cutover of a prepared upgrade in `-D`.
    pub fn for_cutover(
        settings: &'a Settings,
        printer: &'a Printer,
        run_dir: &'a RunDir,
        config: CheckConfig,
        journal: &JournalView,
    ) -> Result<Engine<'a>, Failure> {
        let mut engine = Engine::from_journal(settings, printer, run_dir, config, journal)?;
        let path = crate::journal::prepared_path(&engine.new_dir().path);
        let prepared = crate::journal::read_prepared(&engine.new_dir().path).ok_or_else(|| {
            Failure::new(
                Code::ResumeFailed,
                format!(
                    "{} is missing or damaged: prepare did not finish",
                    path.display()
                ),
            )
        })?;
        engine.phase = Phase::Cutover;
        // Untouched until the old catalog is found unchanged.
        engine.new_touched = journal.in_cutover();
        engine.done = if journal.in_cutover() {
            journal.done_steps()
        } else {
            Default::default()
        };
        engine.cutover_old_stamp = journal.horizons().map(|h| h.old_control.clone());
        engine.databases = prepared
            .databases
            .iter()
            .map(|d| DatabasePlan::named(d.oid, d.name.clone()))
            .collect();
        if !journal.in_cutover() {
            // Hidden since prepare: nobody can have run it, unless by hand.
            let now = read_control(&engine.new_dir().path)?;
            let ran = match &prepared.new_control {
                Some(then) => &now.stamp() != then,
                None => now.checkpoint_lsn != prepared.new_checkpoint_lsn,
            };
            if ran {
                return Err(Failure {
                    code: Code::OldClusterChanged,
                    message: "the prepared new cluster has been started since prepare (its pg_control was renamed back by hand?)".into(),
                    remedy: Some(format!(
                        "throw it away (pg-migrate discard -D {}) and prepare again",
                        crate::engine::quote(&engine.new_dir().path)
                    )),
                    clusters: None,
                });
            }
        }
        engine.outdated_extensions = prepared.outdated_extensions.clone();
        engine.tablespaces = crate::journal::read_transfer_plan(&engine.new_dir().path)
            .map(|plan| plan.tablespaces)
            .unwrap_or_default();
        engine.relations = prepared.databases.iter().map(|d| d.relations.len()).sum();
        engine.prepared = prepared;
        Ok(engine)
    }

    pub(in crate::engine) fn cutover_steps(&mut self) -> Result<Finished, Failure> {
        // Until the counters are handed over nothing is irreversible: the
        // old catalog is checked (again) and the cutover begins afresh.
        // After that it can only go on, and only if the old cluster has
        // not run since (link mode: it cannot, it is disabled).
        let fresh = !self.old_protected && !self.done.contains("handover-counters");
        if fresh {
            let horizons = self.verify_unchanged()?;
            self.horizons = Some(horizons);
            self.done.clear();
            self.new_touched = true;
        } else {
            // The old cluster as this cutover left it: stopped, its
            // checkpoint the one verified (it cannot have run, unless its
            // pg_control was put back by hand, or copy mode left it startable).
            let now = read_control(&self.old_dir.path)?.stamp();
            let running = !matches!(self.old_dir.server_status(), Ok(ServerStatus::Stopped));
            if running || self.cutover_old_stamp.as_ref() != Some(&now) {
                let changes = self
                    .cutover_old_stamp
                    .as_ref()
                    .map(|then| now.changes_since(then).join("; "))
                    .unwrap_or_else(|| "the journal does not record it as verified".into());
                return Err(Failure {
                    code: Code::OldClusterChanged,
                    message: format!("the old cluster has run since this cutover verified it: the new cluster cannot be finished from it ({})", if running { "it is running" } else { changes.as_str() }),
                    remedy: Some(format!(
                        "stop it; throw the half-made cluster away (pg-migrate revert -D {}) and prepare again",
                        crate::engine::quote(&self.new_dir().path)
                    )),
                    clusters: None,
                });
            }
        }
        self.open_output()?;
        if fresh {
            let horizons = self.horizons_record();
            if let Some(journal) = self.journal.as_mut() {
                let mut records = vec![
                    Record::Cutover,
                    Record::Step {
                        step: "verify-unchanged".into(),
                        duration_ms: 0,
                        new_control: None,
                    },
                ];
                records.extend(horizons.map(Record::Horizons));
                for record in records {
                    journal
                        .record(record)
                        .map_err(|e| Failure::new(Code::JournalFailed, e))?;
                }
            }
        }
        self.publish_interrupt_status();
        if matches!(self.settings.mode, Mode::Link) {
            self.step("protect-old", Engine::protect_old)?;
        }
        self.step("unhide-new", Engine::unhide_new)?;
        self.step("handover-counters", Engine::handover_counters)?;
        self.step("set-horizons", Engine::set_horizons)?;
        self.step("transfer", Engine::transfer_at_cutover)?;
        self.sync_and_finish()
    }

    /// The old catalog as prepare saw it, or a refusal that lists what
    /// changed; the old cluster's current freeze horizons otherwise. The old
    /// server is started privately and stopped again; nothing else changes.
    pub(in crate::engine) fn verify_unchanged(&mut self) -> Result<Horizons, Failure> {
        self.printer.emit(&crate::output::Event::StepStart {
            step: "verify-unchanged",
        });
        let started = std::time::Instant::now();
        let result = self.compare_with_prepared();
        self.printer.emit(&crate::output::Event::StepEnd {
            step: "verify-unchanged",
            status: StepStatus::of(&result),
            duration_ms: started.elapsed().as_millis() as u64,
        });
        result
    }

    pub(in crate::engine) fn compare_with_prepared(&mut self) -> Result<Horizons, Failure> {
        let server = self.start_old()?;
        let mut changes: Vec<String> = Vec::new();
        // Roles, tablespaces and the other shared catalogs.
        let scratch = self.run_dir.path().join("globals-cutover.sql");
        let conn = server.endpoint.clone();
        pgm_catalog::dump_globals(
            &self.new_install,
            &conn,
            &scratch,
            &self.run_dir.log_dir().join("globals-cutover.log"),
        )
        .map_err(|e| Failure::new(Code::DumpFailed, e))?;
        if globals_digest(&scratch)? != self.prepared.globals_sha256 {
            changes.push("roles or tablespaces (the globals dump differs)".into());
        }
        let mut template1 = server
            .connect("template1")
            .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
        let shared = fingerprint(&mut template1, "template1", true)
            .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
        for table in changed_tables(&self.prepared.shared, &shared) {
            changes.push(format!("shared catalog {table}"));
        }
        let databases = pgm_catalog::list_databases(&mut template1)
            .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
        // What is no catalog row: prepared transactions (their work would
        // be lost) and logical slots (not carried) made since prepare.
        let names = |client: &mut postgres::Client, sql: &str| -> Result<Vec<String>, Failure> {
            client
                .query_one(sql, &[])
                .map(|r| r.get::<_, Option<Vec<String>>>(0).unwrap_or_default())
                .map_err(|e| {
                    Failure::new(Code::OldCatalogFailed, pgm_cluster::describe_pg_error(&e))
                })
        };
        let prepared_xacts = names(
            &mut template1,
            "SELECT pg_catalog.array_agg(pg_catalog.format('%L (database %I)', gid, database) ORDER BY prepared)
               FROM pg_catalog.pg_prepared_xacts",
        )?;
        if !prepared_xacts.is_empty() {
            changes.push(format!(
                "prepared transactions {} (COMMIT PREPARED or ROLLBACK PREPARED them first)",
                prepared_xacts.join(", ")
            ));
        }
        let slots = names(
            &mut template1,
            "SELECT pg_catalog.array_agg(pg_catalog.format('%I (database %I)', slot_name, database) ORDER BY 1)
               FROM pg_catalog.pg_replication_slots WHERE slot_type = 'logical'",
        )?;
        if !slots.is_empty() {
            changes.push(format!("logical replication slots {}", slots.join(", ")));
        }
        drop(template1);
        let now: BTreeMap<(String, u32), &Database> = databases
            .iter()
            .map(|d| ((d.name.clone(), d.oid), d))
            .collect();
        let then: BTreeMap<(String, u32), &crate::journal::PreparedDatabase> = self
            .prepared
            .databases
            .iter()
            .map(|d| ((d.name.clone(), d.oid), d))
            .collect();
        for key in now.keys().filter(|k| !then.contains_key(*k)) {
            changes.push(format!("database \"{}\" is new", key.0));
        }
        for key in then.keys().filter(|k| !now.contains_key(*k)) {
            changes.push(format!("database \"{}\" is gone", key.0));
        }
        let query = RelationQuery {
            include_sequences: true,
        };
        let common: Vec<&crate::journal::PreparedDatabase> = self
            .prepared
            .databases
            .iter()
            .filter(|d| now.contains_key(&(d.name.clone(), d.oid)))
            .collect();
        let per_database = parallel(&common, self.settings.jobs, |prepared| {
            let name = &prepared.name;
            let mut client = server
                .connect(name)
                .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
            let mut found = Vec::new();
            let print = fingerprint(&mut client, name, false)
                .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
            for table in changed_tables(&prepared.fingerprint, &print) {
                found.push(format!("database \"{name}\": catalog {table}"));
            }
            let relations = pgm_catalog::list_relations(&mut client, name, query)
                .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
            let current: HashSet<(u32, u32, String)> = relations
                .iter()
                .map(|r| (r.oid, r.relfilenode, r.tablespace_location.to_string()))
                .collect();
            let before: HashSet<(u32, u32, String)> = prepared.relations.iter().cloned().collect();
            let moved: Vec<String> = relations
                .iter()
                .filter(|r| {
                    !before.contains(&(r.oid, r.relfilenode, r.tablespace_location.to_string()))
                })
                .map(|r| r.name.to_string())
                .collect();
            if !moved.is_empty() || current.len() != before.len() {
                found.push(format!(
                    "database \"{name}\": relation files replaced or added (TRUNCATE, VACUUM FULL, CLUSTER, REINDEX, sequence RESTART, DDL){}",
                    if moved.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", moved.into_iter().take(10).collect::<Vec<_>>().join(", "))
                    }
                ));
            }
            let (datfrozen, datminmxid): (String, String) = {
                let row = client
                    .query_one(
                        "SELECT datfrozenxid::text, datminmxid::text FROM pg_catalog.pg_database
                          WHERE datname = pg_catalog.current_database()",
                        &[],
                    )
                    .map_err(|e| {
                        Failure::new(Code::OldCatalogFailed, pgm_cluster::describe_pg_error(&e))
                    })?;
                (row.get(0), row.get(1))
            };
            // Every relation whose files the new cluster takes over (the
            // large-object table among them) keeps the old horizons.
            let carried: Vec<u32> = relations.iter().map(|r| r.oid).collect();
            let tables: Vec<(u32, String, String)> = client
                .query(
                    "SELECT oid, relfrozenxid::text, relminmxid::text FROM pg_catalog.pg_class
                      WHERE oid = ANY($1) AND relkind IN ('r', 'm', 't')",
                    &[&carried],
                )
                .map_err(|e| {
                    Failure::new(Code::OldCatalogFailed, pgm_cluster::describe_pg_error(&e))
                })?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            Ok((found, (datfrozen, datminmxid), tables))
        })?;
        server
            .stop()
            .map_err(|e| Failure::new(Code::ServerStopFailed, e))?;
        let mut horizons = Horizons::default();
        for (prepared, (found, database, tables)) in common.iter().zip(per_database) {
            changes.extend(found);
            horizons
                .databases
                .insert(prepared.name.clone(), (database, tables));
        }
        if !changes.is_empty() {
            return Err(Failure {
                code: Code::OldClusterChanged,
                message: format!(
                    "the old cluster changed since prepare: {}",
                    changes.join("; ")
                ),
                remedy: Some(format!(
                    "nothing was changed; the old cluster can be started as before. Throw the prepared cluster away and prepare again: pg-migrate discard -D {0}, then pg-migrate prepare",
                    crate::engine::quote(&self.new_dir().path)
                )),
                clusters: None,
            });
        }
        // The counters to hand over are the stopped cluster's final ones;
        // its layout is still the one the new cluster matches.
        self.old_control = read_control(&self.old_dir.path)?;
        let layout = layout_of(&self.old_control);
        if !self.prepared.old_layout.is_empty() && layout != self.prepared.old_layout {
            let changed: Vec<String> = layout
                .iter()
                .zip(&self.prepared.old_layout)
                .filter(|(now, then)| now != then)
                .map(|(now, then)| format!("{}: {} then, {} now", now.0, then.1, now.1))
                .collect();
            return Err(Failure {
                code: Code::OldClusterChanged,
                message: format!("the old cluster's pg_control changed since prepare: {}", changed.join("; ")),
                remedy: Some(format!(
                    "nothing was changed; throw the prepared cluster away (pg-migrate discard -D {}) and prepare again",
                    crate::engine::quote(&self.new_dir().path)
                )),
                clusters: None,
            });
        }
        Ok(horizons)
    }

    /// The journal's record of the horizons this cutover verified.
    pub(in crate::engine) fn horizons_record(&self) -> Option<HorizonsRecord> {
        let horizons = self.horizons.as_ref()?;
        Some(HorizonsRecord {
            old_control: self.old_control.stamp(),
            databases: horizons
                .databases
                .iter()
                .map(|(name, ((x, m), tables))| DatabaseHorizonsRecord {
                    name: name.clone(),
                    datfrozenxid: x.clone(),
                    datminmxid: m.clone(),
                    tables: tables.clone(),
                })
                .collect(),
        })
    }

    /// The horizons recorded by an earlier run of this cutover.
    pub(in crate::engine) fn horizons_from_journal(&self) -> Option<Horizons> {
        let view = JournalView::read(&self.new_dir().path)?;
        let record = view.horizons()?;
        let mut horizons = Horizons::default();
        for db in &record.databases {
            horizons.databases.insert(
                db.name.clone(),
                (
                    (db.datfrozenxid.clone(), db.datminmxid.clone()),
                    db.tables.clone(),
                ),
            );
        }
        Some(horizons)
    }

    /// The old server is still stopped and its pg_control the one the
    /// cutover verified (a start, even one stopped with `-m immediate`,
    /// rewrites it).
    pub(in crate::engine) fn old_still_as_verified(&self) -> Result<(), Failure> {
        let running = !matches!(self.old_dir.server_status(), Ok(ServerStatus::Stopped));
        let now = read_control(&self.old_dir.path)?;
        if running || now.stamp() != self.old_control.stamp() {
            return Err(self.old_changed_since_verified(&now));
        }
        Ok(())
    }

    /// The refusal when the old server ran after the cutover verified it.
    pub(in crate::engine) fn old_changed_since_verified(&self, now: &ControlFile) -> Failure {
        let changes = now.stamp().changes_since(&self.old_control.stamp());
        let remedy = if self.new_touched {
            format!(
                "stop it (and whatever restarts it); throw the half-made cluster away (pg-migrate revert -D {}) and prepare again",
                crate::engine::quote(&self.new_dir().path)
            )
        } else {
            "stop it (and whatever restarts it), then run the cutover again: it checks the old cluster anew".into()
        };
        Failure {
            clusters: None,
            code: Code::OldClusterChanged,
            message: format!(
                "the old server was started again after the cutover checked it{}",
                if changes.is_empty() {
                    " (it is running)".to_string()
                } else {
                    format!(": {}", changes.join("; "))
                }
            ),
            remedy: Some(remedy),
        }
    }

    pub(in crate::engine) fn unhide_new(&mut self) -> Result<(), Failure> {
        let global = self.new_dir().path.join("global");
        let hidden = global.join("pg_control.prepared");
        if hidden.exists() {
            std::fs::rename(&hidden, global.join("pg_control")).map_err(|e| {
                Failure::new(Code::HandoverFailed, format!("{}: {e}", hidden.display()))
            })?;
        }
        // Durable before the step is journalled as done.
        crate::engine::sync_dir(&global).map_err(|e| Failure::new(Code::HandoverFailed, e))
    }

    /// The new cluster's horizons from the old cluster's: every catalog
    /// relation (all frozen) and every database from the next transaction
    /// and multixact, then each carried relation and database from the old
    /// cluster's current values; one pass per database, `-j` at a time.
    pub(in crate::engine) fn set_horizons(&mut self) -> Result<(), Failure> {
        let horizons = match self.horizons.take() {
            Some(h) => h,
            None => self.horizons_from_journal().ok_or_else(|| {
                Failure::new(
                    Code::ResumeFailed,
                    "the journal holds no horizons of the old cluster",
                )
            })?,
        };
        let (next_xid, next_multi) = (
            self.old_control.next_xid.to_string(),
            self.old_control.next_multixact.to_string(),
        );
        let server = self.start_new()?;
        let sql_error = |db: &str, e: postgres::Error| {
            Failure::new(
                Code::HandoverFailed,
                format!("database \"{db}\": {}", pgm_cluster::describe_pg_error(&e)),
            )
        };
        let mut template1 = server
            .connect("template1")
            .map_err(|e| Failure::new(Code::HandoverFailed, e))?;
        template1
            .execute(
                "UPDATE pg_catalog.pg_database SET datfrozenxid = $1::text::pg_catalog.xid,
                        datminmxid = $2::text::pg_catalog.xid",
                &[&next_xid, &next_multi],
            )
            .map_err(|e| sql_error("template1", e))?;
        let databases: Vec<(String, bool)> = template1
            .query(
                "SELECT datname::text, datallowconn FROM pg_catalog.pg_database ORDER BY oid",
                &[],
            )
            .map_err(|e| sql_error("template1", e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        // template0 is opened for the pass and closed by name after it (a
        // pass cut short and resumed must not leave it open).
        let toggle = |client: &mut postgres::Client, allow: bool| -> Result<(), Failure> {
            client
                .batch_execute(&format!(
                    "ALTER DATABASE template0 ALLOW_CONNECTIONS = {allow}"
                ))
                .map_err(|e| sql_error("template0", e))
        };
        toggle(&mut template1, true)?;
        pgm_cluster::faults::point(|| "set-horizons:template0-open".into());
        let names: Vec<String> = databases.iter().map(|d| d.0.clone()).collect();
        let result = parallel(&names, self.settings.jobs, |name| {
            let mut client = server
                .connect(name)
                .map_err(|e| Failure::new(Code::HandoverFailed, e))?;
            let carried = horizons.databases.get(name);
            let (oids, xids, mxids): (Vec<u32>, Vec<String>, Vec<String>) = carried
                .map(|(_, tables)| {
                    (
                        tables.iter().map(|t| t.0).collect(),
                        tables.iter().map(|t| t.1.clone()).collect(),
                        tables.iter().map(|t| t.2.clone()).collect(),
                    )
                })
                .unwrap_or_default();
            let mut transaction = client.transaction().map_err(|e| sql_error(name, e))?;
            transaction
                .execute(
                    "UPDATE pg_catalog.pg_class SET relfrozenxid = $1::text::pg_catalog.xid,
                            relminmxid = $2::text::pg_catalog.xid
                      WHERE relkind IN ('r', 'm', 't') AND oid <> ALL($3::pg_catalog.oid[])",
                    &[&next_xid, &next_multi, &oids],
                )
                .map_err(|e| sql_error(name, e))?;
            if let Some(((datfrozen, datmin), _)) = carried {
                transaction
                    .execute(
                        "UPDATE pg_catalog.pg_class c
                            SET relfrozenxid = u.x::pg_catalog.xid, relminmxid = u.m::pg_catalog.xid
                           FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.oid[]),
                                           pg_catalog.unnest($2::text[]),
                                           pg_catalog.unnest($3::text[])) AS u(oid, x, m)
                          WHERE c.oid = u.oid",
                        &[&oids, &xids, &mxids],
                    )
                    .map_err(|e| sql_error(name, e))?;
                transaction
                    .execute(
                        "UPDATE pg_catalog.pg_database SET datfrozenxid = $1::text::pg_catalog.xid,
                                datminmxid = $2::text::pg_catalog.xid
                          WHERE datname = pg_catalog.current_database()",
                        &[datfrozen, datmin],
                    )
                    .map_err(|e| sql_error(name, e))?;
            }
            transaction.commit().map_err(|e| sql_error(name, e))
        });
        toggle(&mut template1, false)?;
        drop(template1);
        result?;
        server
            .stop()
            .map_err(|e| Failure::new(Code::ServerStopFailed, e))
    }

    /// The files planned again from prepare's pairs: in link mode a file
    /// still linked to the same inode stays, a new one (a segment, a fork)
    /// is linked, a name the old cluster no longer has goes; copy and clone
    /// modes copy or clone everything now.
    pub(in crate::engine) fn transfer_at_cutover(&mut self) -> Result<(), Failure> {
        let pairs = self.prepared.pairs.iter().map(|(old, new)| RelationFiles {
            old_base: old.clone(),
            new_base: new.clone(),
        });
        self.moves =
            pgm_transfer::plan(pairs).map_err(|e| Failure::new(Code::TransferFailed, e))?;
        self.save_plan()?;
        if self.settings.mode != Mode::Link {
            // The old cluster stays startable in these modes: a server
            // started meanwhile (a supervisor restarting it) may have
            // changed files while they were copied.
            self.transfer()?;
            return self.old_still_as_verified();
        }
        // Link mode moves only what changed; the sync then knows every
        // relation file for one the old cluster made durable (its clean
        // shutdown flushed them all).
        // Inode numbers from the directory listings (no stat per file):
        // link mode keeps both clusters on one filesystem.
        let mut inodes = Inodes::default();
        let all = std::mem::take(&mut self.moves);
        let (unchanged, changed): (Vec<_>, Vec<_>) = all.into_iter().partition(|m| {
            let from = inodes.of(&m.from);
            from.is_some() && from == inodes.of(&m.to)
        });
        self.moves = changed;
        let result = self.transfer();
        self.moves.extend(unchanged);
        self.transferred = (
            self.moves.len() as u64,
            self.moves.iter().map(|m| m.bytes).sum(),
        );
        result
    }
}

/// The inode number of every name in a directory, read once per directory.
#[derive(Default)]
struct Inodes {
    dirs: std::collections::HashMap<PathBuf, std::collections::HashMap<std::ffi::OsString, u64>>,
}

impl Inodes {
    fn of(&mut self, path: &Path) -> Option<u64> {
        use std::os::unix::fs::DirEntryExt;
        let (dir, name) = (path.parent()?, path.file_name()?);
        let names = self.dirs.entry(dir.to_path_buf()).or_insert_with(|| {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| (e.file_name(), e.ino()))
                        .collect()
                })
                .unwrap_or_default()
        });
        names.get(name).copied()
    }
}

/// Stops a running old server for the cutover (`--stop-old`): a fast
/// shutdown (SIGINT to its postmaster), waited for until pg_control says
/// "shut down".
pub fn stop_old_server(datadir: &Path) -> Result<bool, Failure> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dir = DataDir::open(datadir, None).map_err(|e| Failure::new(Code::Usage, e))?;
    let ServerStatus::Running(pid) = dir
        .server_status()
        .map_err(|e| Failure::new(Code::Usage, e))?
    else {
        return Ok(false);
    };
    kill(Pid::from_raw(pid.pid), Signal::SIGINT).map_err(|e| Failure {
        code: Code::ServerStopFailed,
        message: format!("could not signal the old server (pid {}): {e}", pid.pid),
        remedy: Some("stop it yourself (pg_ctl stop -m fast) and run the cutover again".into()),
        clusters: None,
    })?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while datadir.join("postmaster.pid").exists() {
        if std::time::Instant::now() > deadline {
            return Err(Failure {
                code: Code::ServerStopFailed,
                message: "the old server did not stop within 300 s".into(),
                remedy: Some(
                    "stop it yourself (pg_ctl stop -m fast) and run the cutover again".into(),
                ),
                clusters: None,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(true)
}
