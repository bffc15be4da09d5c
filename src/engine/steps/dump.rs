//! `dump-old` (and `backup`, `record-old` around it): the old server up,
//! the catalog listed and dumped schema-only, `-j` databases at a time; the
//! old server down; copy modes then start copying ahead.

use crate::engine::*;

impl<'a> Engine<'a> {
    /// The locks each database's pg_dump takes, largest first: one per
    /// ordinary or partitioned table, and one per sequence when it reads
    /// their values (`--sequence-data`); none for indexes, TOAST tables or
    /// views (pg_dump.c's getTables locks only the former).
    pub(in crate::engine) fn dump_locks_by_database(&self) -> Vec<(String, u64)> {
        let sequences_read = self.dump_options().sequence_data;
        let mut locks: Vec<(String, u64)> = self
            .old_catalog
            .as_ref()
            .map(|c| {
                c.databases
                    .iter()
                    .filter_map(|d| {
                        let sequences = if sequences_read { d.user_sequences? } else { 0 };
                        Some((d.name.clone(), (d.user_tables? + sequences).max(0) as u64))
                    })
                    .collect()
            })
            .unwrap_or_default();
        locks.sort_by_key(|d| std::cmp::Reverse(d.1));
        locks
    }

    /// The max_locks_per_transaction the dump needs when the old server's
    /// lock table cannot hold the tables of the `-j` largest databases at
    /// once (each pg_dump locks every ordinary and partitioned table of its
    /// database, and every sequence whose value it reads; not indexes,
    /// TOAST tables or views); `None` when it can.
    pub(in crate::engine) fn lock_slots_for_dump(
        &self,
        server: &Server,
    ) -> Result<Option<u64>, Failure> {
        let needed: u64 = self
            .dump_locks_by_database()
            .iter()
            .take(self.settings.jobs.max(1))
            .map(|d| d.1)
            .sum::<u64>()
            + 1000;
        let mut client = server
            .connect("template1")
            .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
        let row = client
            .query_one(
                "SELECT pg_catalog.current_setting('max_locks_per_transaction')::bigint,
                        pg_catalog.current_setting('max_connections')::bigint
                      + pg_catalog.current_setting('max_prepared_transactions')::bigint",
                &[],
            )
            .map_err(|e| {
                Failure::new(Code::OldCatalogFailed, pgm_cluster::describe_pg_error(&e))
            })?;
        let (per_transaction, slots_for): (i64, i64) = (row.get(0), row.get(1));
        let slots_for = slots_for.max(1) as u64;
        if (per_transaction.max(0) as u64) * slots_for >= needed {
            return Ok(None);
        }
        Ok(Some(needed.div_ceil(slots_for)))
    }

    pub(in crate::engine) fn dump_options(&self) -> DumpOptions {
        DumpOptions {
            new_major: self.new_install.version.major,
            statistics: !self.settings.no_statistics,
            sequence_data: self.phase == Phase::Full,
            snapshot: None,
            lock_wait_timeout: (self.phase == Phase::Prepare).then_some(PREPARE_LOCK_WAIT),
        }
    }

    /// The old server for dumping: the one the checks (or the backup) left
    /// running, else a new one; restarted with a lock table that holds the
    /// tables pg_dump locks (every table of a database in one transaction),
    /// where pg_upgrade would fail with "out of shared memory".
    pub(in crate::engine) fn old_server_for_dumps(&mut self) -> Result<Server, Failure> {
        let mut server = match self.old_server.take() {
            Some(server) => server,
            None => self.start_old()?,
        };
        if let Some(per_transaction) = self.lock_slots_for_dump(&server)? {
            server
                .stop()
                .map_err(|e| Failure::new(Code::ServerStopFailed, e))?;
            let mut options = self.server_options(true);
            options.extra_options = Some(format!(
                "{} -c max_locks_per_transaction={per_transaction}",
                options.extra_options.unwrap_or_default()
            ));
            self.printer.notice(
                crate::output::NoticeCode::OldLockTableRaised,
                format!("the old server restarts with max_locks_per_transaction={per_transaction}: its databases have more tables than its lock table holds"),
            );
            server = Server::start(&self.old_install, &self.old_dir, &options)
                .map_err(|e| Failure::new(Code::ServerStartFailed, e))?;
        }
        Ok(server)
    }

    /// `--backup-dir`: a logical backup of the old cluster (with its data)
    /// before anything of it changes; its server is handed on to the dump.
    pub(in crate::engine) fn backup(&mut self) -> Result<(), Failure> {
        let dir = self
            .settings
            .backup_dir
            .clone()
            .ok_or_else(|| Failure::new(Code::Internal, "backup without --backup-dir"))?;
        let server = if self.phase == Phase::Prepare {
            self.old_server_live_or_private()?
        } else {
            self.old_server_for_dumps()?
        };
        let tools =
            pgm_catalog::backup::choose_dump_tools(&self.old_install, Some(&self.new_install))
                .ok_or_else(|| {
                    Failure::new(
                        Code::BackupFailed,
                        "neither installation has pg_dump and pg_dumpall",
                    )
                })?;
        let log_dir = self.log_dir();
        let work = crate::logical_backup::Work {
            printer: self.printer,
            step: "backup",
            jobs: self.settings.jobs,
            log_dir: &log_dir,
        };
        let result = crate::logical_backup::write(&work, &server, tools, &self.old_dir.path, &dir);
        self.old_server = Some(server);
        let written = result?;
        if let Some(journal) = self.journal.as_mut() {
            journal
                .record(Record::Backup {
                    dir: dir.clone(),
                    databases: written.manifest.databases.len(),
                    bytes: written.manifest.bytes(),
                })
                .map_err(|e| Failure::new(Code::JournalFailed, e))?;
        }
        self.backup = Some(crate::output::BackupCounts {
            dir: dir.display().to_string(),
            databases: written.manifest.databases.len(),
            bytes: written.manifest.bytes(),
            moved_aside: written.moved_aside.map(|p| p.display().to_string()),
        });
        Ok(())
    }

    /// `--verify`: the old cluster measured while its server is up, before
    /// anything of it changes; kept for the comparison after the upgrade.
    pub(in crate::engine) fn record_old(&mut self) -> Result<(), Failure> {
        let verify = self
            .settings
            .after
            .verify
            .ok_or_else(|| Failure::new(Code::Internal, "record-old without --verify"))?;
        let server = self.old_server_for_dumps()?;
        let meter = self.printer.meter("record-old", 0, "tables");
        let result = crate::proving::record_old(
            &self.new_install,
            &server,
            &self.old_install,
            &self.new_dir().path,
            crate::proving::measure_options(verify, self.settings.method),
            self.settings.jobs,
            &meter,
        );
        meter.finish();
        server
            .stop()
            .map_err(|e| Failure::new(Code::ServerStopFailed, e))?;
        result?;
        if self.settings.method == Method::InPlace {
            self.start_staging();
        }
        Ok(())
    }

    /// Old server up: list databases, tablespaces and relations; dump globals
    /// and every database's schema (`-j` at a time); old server down.
    pub(in crate::engine) fn dump_old(&mut self) -> Result<(), Failure> {
        let prepare = self.phase == Phase::Prepare;
        let server = if prepare {
            self.old_server_live_or_private()?
        } else {
            self.old_server_for_dumps()?
        };
        let mut client = server
            .connect("template1")
            .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
        let databases = pgm_catalog::list_databases(&mut client)
            .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
        self.tablespaces = pgm_catalog::list_tablespaces(&mut client)
            .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
        if !prepare {
            self.logical_slots =
                pgm_catalog::list_logical_slots(&mut client, self.old_install.version.major)
                    .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
            self.physical_slots = pgm_catalog::list_physical_slots(&mut client)
                .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
            if let Some(journal) = self.journal.as_mut() {
                journal
                    .record(Record::PhysicalSlots {
                        slots: self.physical_slots.clone(),
                    })
                    .map_err(|e| Failure::new(Code::JournalFailed, e))?;
            }
        }
        drop(client);
        let new_suffix = self.tablespace_dir(false)?;
        for location in &self.tablespaces {
            let dir = Path::new(location).join(&new_suffix);
            if dir.exists() {
                return Err(Failure {
                    code: Code::NewTablespaceDirExists,
                    message: format!("{} already exists", dir.display()),
                    remedy: Some("remove it (a leftover of an earlier attempt) if it holds nothing you need, and run again".into()),
                    clusters: None,
                });
            }
        }
        let conn = server.endpoint.clone();
        let globals = self.output().join("dump/globals.sql");
        if prepare {
            // The shared catalogs as the globals dump saw them: fingerprinted
            // before and after it, until nothing changed in between.
            self.prepared.shared = self.shared_fingerprint(&server, |engine| {
                pgm_catalog::dump_globals(
                    &engine.new_install,
                    &conn,
                    &globals,
                    &engine.log("globals.log"),
                )
                .map_err(|e| Failure::new(Code::DumpFailed, e))
            })?;
            self.prepared.globals_sha256 = online::globals_digest(&globals)?;
        } else {
            pgm_catalog::dump_globals(&self.new_install, &conn, &globals, &self.log("globals.log"))
                .map_err(|e| Failure::new(Code::DumpFailed, e))?;
        }
        let query = RelationQuery {
            include_sequences: !self.dump_options().sequences_in_dump(),
        };
        self.databases = databases
            .into_iter()
            .map(|db| DatabasePlan {
                dump: self.output().join(format!("dump/{}.custom", db.oid)),
                log: self.log(&format!("database-{}.log", db.oid)),
                db,
                old_relations: RelationList::default(),
                new_relations: RelationList::default(),
                new_oid: 0,
                new_tablespace_location: String::new(),
            })
            .collect();
        let options = self.dump_options();
        let install = &self.new_install;
        let meter = self
            .printer
            .meter("dump-old", self.databases.len() as u64, "databases");
        let results = parallel(&self.databases, self.settings.jobs, |plan| {
            let mut client = server
                .connect(&plan.db.name)
                .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
            let mut options = options.clone();
            let mut fingerprint = None;
            if prepare {
                // One snapshot for the fingerprint, the relation map and
                // the dump: the cutover compares against exactly what the
                // new cluster received.
                let (snapshot, print) = online::export_snapshot(&mut client, &plan.db.name)?;
                options.snapshot = Some(snapshot);
                fingerprint = Some(print);
            }
            // The relation map is read while pg_dump runs (on its own
            // connection, in the same snapshot when prepare exported one):
            // at 100,000 relations in one database it takes most of a second.
            let (relations, dumped) = std::thread::scope(|scope| {
                let dump = scope.spawn(|| {
                    pgm_catalog::dump_database(
                        install,
                        &conn,
                        &plan.db.name,
                        &plan.dump,
                        &plan.log,
                        &options,
                    )
                });
                let relations = pgm_catalog::list_relations(&mut client, &plan.db.name, query);
                let dumped = dump
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (relations, dumped)
            });
            dumped.map_err(|e| Failure::new(Code::DumpFailed, e))?;
            let relations = relations.map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
            if prepare {
                client.batch_execute("COMMIT").map_err(|e| {
                    Failure::new(Code::OldCatalogFailed, pgm_cluster::describe_pg_error(&e))
                })?;
            }
            drop(client);
            meter.add(1, 0);
            Ok((relations, fingerprint))
        })?;
        meter.finish();
        for (plan, (relations, fingerprint)) in self.databases.iter_mut().zip(results) {
            if let Some(fingerprint) = fingerprint {
                self.prepared
                    .databases
                    .push(crate::journal::PreparedDatabase {
                        name: plan.db.name.clone(),
                        oid: plan.db.oid,
                        fingerprint,
                        relations: relations
                            .iter()
                            .map(|r| (r.oid, r.relfilenode, r.tablespace_location.to_string()))
                            .collect(),
                    });
            }
            plan.old_relations = relations;
        }
        self.start_restore_planning();
        if !prepare && self.settings.after.verify.is_some() {
            // Measured next, by the same server (record-old starts the copying).
            self.old_server = Some(server);
            return Ok(());
        }
        // A server someone else runs (prepare, live) is not ours to stop.
        server
            .stop()
            .map_err(|e| Failure::new(Code::ServerStopFailed, e))?;
        if !prepare {
            self.start_staging();
        }
        Ok(())
    }

    /// Copy modes: with the old server stopped its relation files no longer
    /// change, so copying them can begin now, into the run's directory in the
    /// new cluster (same filesystem, renamed into place by the transfer).
    /// Relations in user tablespaces wait for the transfer (their files go
    /// to another filesystem perhaps).
    pub(in crate::engine) fn start_staging(&mut self) {
        let mode = self.settings.mode.file_mode();
        if !matches!(
            mode,
            pgm_transfer::Mode::Copy | pgm_transfer::Mode::CopyFileRange
        ) || pgm_cluster::faults::copy_ahead_disabled()
        {
            return;
        }
        let dir = self.output().join("staging");
        if std::fs::create_dir(&dir).is_err() {
            return;
        }
        let sources: Vec<pgm_transfer::StageSource> = self
            .databases
            .iter()
            .filter(|plan| plan.db.tablespace_location.is_empty())
            .map(|plan| pgm_transfer::StageSource {
                dir: pgm_transfer::database_dir(&self.old_dir.path, "", "", plan.db.oid),
                relfilenodes: plan
                    .old_relations
                    .iter()
                    .filter(|r| r.tablespace_location.is_empty())
                    .map(|r| r.relfilenode)
                    .collect(),
            })
            .collect();
        let copies = Arc::new(pgm_transfer::StagedCopies::new(&dir));
        let worker = {
            let copies = copies.clone();
            std::thread::spawn(move || pgm_transfer::stage(&sources, mode, &copies))
        };
        self.staging = Some(Staging { copies, worker });
    }
}
