//! `pg-migrate prepare`: the catalog work while the old server serves (or
//! privately started): what it refuses up front, the shared catalogs'
//! fingerprint around the globals dump, the freeze of every catalog row and
//! its proof, and the new cluster hidden until its cutover.

use super::*;
use crate::engine::*;

impl<'a> Engine<'a> {
    /// prepare: the old server as it runs (attached through its socket),
    /// or one started privately when the old cluster is stopped.
    pub(in crate::engine) fn old_server_live_or_private(&mut self) -> Result<Server, Failure> {
        match self.old_server.take() {
            // The serving server, attached (and its lock table judged) before.
            Some(server) if !server.is_owned() => return Ok(server),
            Some(server) => {
                self.old_server = Some(server);
                return self.old_server_for_dumps();
            }
            None => {}
        }
        if let Ok(ServerStatus::Running(pid)) = self.old_dir.server_status() {
            let socket_dir = pid.socket_dir.clone().ok_or_else(|| Failure {
                code: Code::ServerRunning,
                message: "the running old server listens on no unix socket".into(),
                remedy: Some("set unix_socket_directories on the old server".into()),
                clusters: None,
            })?;
            let endpoint = pgm_cluster::server::Endpoint {
                socket_dir,
                port: pid.port.unwrap_or(5432),
                user: self.settings.user.clone(),
            };
            let server = Server::attach(endpoint);
            self.live_lock_budget(&server)?;
            self.old_live = true;
            return Ok(server);
        }
        // Stopped: started privately, with a lock table as large as the dump needs.
        self.old_server_for_dumps()
    }

    /// A serving server cannot be restarted with a larger lock table: if
    /// pg_dump's locks would not fit, it would fail, and so would the
    /// application's own lock requests while it holds them.
    pub(in crate::engine) fn live_lock_budget(&self, server: &Server) -> Result<(), Failure> {
        let Some(per_transaction) = self.lock_slots_for_dump(server)? else {
            return Ok(());
        };
        let named: Vec<String> = self
            .dump_locks_by_database()
            .iter()
            .take(self.settings.jobs.max(1))
            .map(|(name, tables)| format!("\"{name}\" {tables} tables"))
            .collect();
        Err(Failure {
            code: Code::LockTableTooSmall,
            message: format!(
                "the serving old server's lock table cannot hold the locks prepare's pg_dump takes (one per ordinary or partitioned table of each of the {} databases dumped at a time: {}) beside the application's",
                self.settings.jobs.max(1),
                named.join(", ")
            ),
            remedy: Some(format!(
                "nothing was changed; lower -j, or set max_locks_per_transaction = {per_transaction} on the old server (takes a restart), or run prepare with the old server stopped"
            )),
            clusters: None,
        })
    }

    /// Refusals of what prepare cannot carry, before anything is changed.
    pub(in crate::engine) fn prepare_gate(&mut self) -> Result<(), Failure> {
        let server = self.old_server_live_or_private()?;
        let row = server
            .connect("template1")
            .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?
            .query_one(
                "SELECT (SELECT pg_catalog.array_agg(pg_catalog.quote_ident(subname) ORDER BY 1)
                           FROM pg_catalog.pg_subscription),
                        (SELECT pg_catalog.array_agg(pg_catalog.format('%I (database %I)', slot_name, database) ORDER BY 1)
                           FROM pg_catalog.pg_replication_slots
                          WHERE slot_type = 'logical' AND NOT temporary)",
                &[],
            )
            .map_err(|e| Failure::new(Code::OldCatalogFailed, pgm_cluster::describe_pg_error(&e)))?;
        let (subscriptions, slots): (Option<Vec<String>>, Option<Vec<String>>) =
            (row.get(0), row.get(1));
        let (subscriptions, slots) = (subscriptions.unwrap_or_default(), slots.unwrap_or_default());
        self.old_server = Some(server);
        // From 17 on, an upgrade carries each subscription's replication
        // progress (its origin), which goes on advancing after prepare's
        // dump recorded it (the cutover's copy would replay or skip
        // changes). Before 17 no upgrade carries it: the online mode loses
        // nothing an upgrade in one go would keep. Slots are made again
        // only by an upgrade in one go.
        let carries_progress = self
            .old_install
            .version
            .major
            .upgrade_carries_logical_replication();
        let mut what = Vec::new();
        if !subscriptions.is_empty() && carries_progress {
            what.push(format!(
                "subscriptions {} (their replication progress moves on after prepare, and the prepared cluster would hold a stale one)",
                subscriptions.join(", ")
            ));
        }
        if !slots.is_empty() {
            what.push(format!(
                "logical replication slots {} (the online mode does not carry them)",
                slots.join(", ")
            ));
        }
        if !what.is_empty() {
            return Err(Failure {
                code: Code::PrepareNotPossible,
                message: format!("the old cluster has {}", what.join(" and ")),
                remedy: Some("nothing was changed; upgrade in one go instead (pg-migrate without prepare/cutover)".into()),
                clusters: None,
            });
        }
        Ok(())
    }

    /// The shared catalogs' fingerprint around `work` (the globals dump):
    /// taken before and after, and `work` done again until they agree.
    pub(in crate::engine) fn shared_fingerprint(
        &mut self,
        server: &Server,
        mut work: impl FnMut(&Engine<'a>) -> Result<(), Failure>,
    ) -> Result<Fingerprint, Failure> {
        let take = || -> Result<Fingerprint, Failure> {
            let mut client = server
                .connect("template1")
                .map_err(|e| Failure::new(Code::OldCatalogFailed, e))?;
            fingerprint(&mut client, "template1", true)
                .map_err(|e| Failure::new(Code::OldCatalogFailed, e))
        };
        for _ in 0..5 {
            let before = take()?;
            work(self)?;
            if take()? == before {
                return Ok(before);
            }
        }
        Err(Failure {
            code: Code::OldClusterChanged,
            message: "roles, tablespaces or databases kept changing while they were dumped".into(),
            remedy: Some("run prepare again when they are quiet".into()),
            clusters: None,
        })
    }

    pub(in crate::engine) fn prepare_steps(&mut self) -> Result<Finished, Failure> {
        self.prepare_gate()?;
        if self.new_to_create {
            self.step("create-new-cluster", Engine::create_new_cluster)?;
        }
        self.open_output()?;
        self.publish_interrupt_status();
        if self.settings.backup_dir.is_some() {
            self.step("backup", Engine::backup)?;
        }
        self.step("dump-old", Engine::dump_old)?;
        self.step("prepare-new", Engine::prepare_new)?;
        self.step("handover-counters", Engine::handover_counters)?;
        self.step("restore-schema", Engine::restore_schema)?;
        self.step("freeze-catalogs", Engine::freeze_catalogs)?;
        self.step("match-relations", Engine::match_relations)?;
        if self.settings.mode == Mode::Link {
            self.step("link-ahead", Engine::transfer)?;
        }
        // The prepared cluster may wait days for its cutover: on disk first.
        if !self.settings.no_sync {
            self.step("sync", Engine::sync)?;
        }
        self.step("hide-new", Engine::hide_new)?;
        let new = self.new_dir().path.clone();
        let next_steps = vec![
            NextStep {
                done_by: None,
                text: format!(
                    "in the maintenance window, stop the old server and run: pg-migrate cutover -D {} (or let it stop the server: add --stop-old)",
                    crate::engine::quote(&new)
                ),
            },
            NextStep {
                done_by: None,
                text: "until then, no DDL, role or tablespace change, large-object creation or removal, TRUNCATE, VACUUM FULL, CLUSTER, REINDEX or sequence RESTART on the old cluster: the cutover would refuse (ordinary reads and writes are fine)".into(),
            },
            NextStep {
                done_by: None,
                text: format!(
                    "to give up instead: pg-migrate discard -D {}",
                    crate::engine::quote(&new)
                ),
            },
        ];
        let logs = self.cleanup_output();
        Ok(Finished {
            next_steps,
            backup: self.backup.clone(),
            reindex_script: None,
            scripts: Vec::new(),
            databases: self.databases.len(),
            relations: self.relations,
            files: self.transferred.0,
            files_copied_ahead: 0,
            bytes: self.transferred.1,
            logs,
        })
    }

    /// Every catalog table of every database of the new cluster frozen,
    /// and proven so: right after, no relation that is not a user's has a
    /// horizon older than the next transaction or multixact (age 0). The
    /// proof comes last: nothing may take a transaction id after it.
    /// template0 is left alone: initdb made it frozen, and nothing writes
    /// to it (pg-migrate changes only its row in the shared pg_database).
    pub(in crate::engine) fn freeze_catalogs(&mut self) -> Result<(), Failure> {
        let server = self.start_new()?;
        let q = |db: &str, e: postgres::Error| {
            Failure::new(
                Code::FreezeFailed,
                format!("database \"{db}\": {}", pgm_cluster::describe_pg_error(&e)),
            )
        };
        let databases: Vec<String> = server
            .connect("template1")
            .map_err(|e| Failure::new(Code::FreezeFailed, e))?
            .query(
                "SELECT datname::text FROM pg_catalog.pg_database WHERE datallowconn ORDER BY oid",
                &[],
            )
            .map_err(|e| q("template1", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let skip = pgm_cluster::faults::freeze_skipped();
        parallel(&databases, self.settings.jobs, |name| {
            let mut client = server
                .connect(name)
                .map_err(|e| Failure::new(Code::FreezeFailed, e))?;
            let tables: Vec<String> = client
                .query(
                    "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
                       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.oid < 16384 AND c.relkind IN ('r', 'm') ORDER BY c.oid",
                    &[],
                )
                .map_err(|e| q(name, e))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for table in tables {
                if skip {
                    break;
                }
                client
                    .batch_execute(&format!("VACUUM (FREEZE) {table}"))
                    .map_err(|e| q(name, e))?;
            }
            Ok(())
        })?;
        pgm_cluster::faults::point(|| "freeze-catalogs:frozen".into());
        let mut unfrozen = Vec::new();
        for name in &databases {
            let mut client = server
                .connect(name)
                .map_err(|e| Failure::new(Code::FreezeFailed, e))?;
            for row in client
                .query(
                    "SELECT c.oid::pg_catalog.regclass::text, pg_catalog.age(c.relfrozenxid),
                            pg_catalog.mxid_age(c.relminmxid)
                       FROM pg_catalog.pg_class c
                      WHERE c.oid < 16384 AND c.relkind IN ('r', 'm', 't')
                        AND (pg_catalog.age(c.relfrozenxid) <> 0
                             OR pg_catalog.mxid_age(c.relminmxid) <> 0)
                      ORDER BY c.oid",
                    &[],
                )
                .map_err(|e| q(name, e))?
            {
                unfrozen.push(format!(
                    "{name}: {} (age {}, multixact age {})",
                    row.get::<_, String>(0),
                    row.get::<_, i32>(1),
                    row.get::<_, i32>(2)
                ));
            }
        }
        if !unfrozen.is_empty() && !pgm_cluster::faults::freeze_proof_skipped() {
            let shown: Vec<String> = unfrozen.iter().take(10).cloned().collect();
            return Err(Failure {
                code: Code::FreezeFailed,
                message: format!(
                    "{} catalog relations of the new cluster are not proven frozen: {}",
                    unfrozen.len(),
                    shown.join(", ")
                ),
                remedy: Some("run the same prepare again (it starts over); nothing was done to the old cluster".into()),
                clusters: None,
            });
        }
        if let Some(journal) = self.journal.as_mut() {
            journal
                .record(Record::Frozen {
                    databases: json!(databases),
                })
                .map_err(|e| Failure::new(Code::JournalFailed, e))?;
        }
        server
            .stop()
            .map_err(|e| Failure::new(Code::ServerStopFailed, e))
    }

    /// The new pg_control goes out of the way (nobody may start a cluster
    /// that shares files with a live one), and what prepare saw is saved.
    pub(in crate::engine) fn hide_new(&mut self) -> Result<(), Failure> {
        self.prepared.reindex_sql = self.reindex_sql();
        self.prepared.outdated_extensions = self.outdated_extensions.clone();
        self.prepared.old_layout = layout_of(&self.old_control);
        let hidden = read_control(&self.new_dir().path)?;
        self.prepared.new_checkpoint_lsn = hidden.checkpoint_lsn;
        self.prepared.new_control = Some(hidden.stamp());
        crate::journal::write_prepared(&self.new_dir().path, &self.prepared).map_err(|e| {
            let path = crate::journal::prepared_path(&self.new_dir().path);
            Failure::new(Code::JournalFailed, format!("{}: {e}", path.display()))
        })?;
        let global = self.new_dir().path.join("global");
        if global.join("pg_control").exists() {
            std::fs::rename(
                global.join("pg_control"),
                global.join("pg_control.prepared"),
            )
            .map_err(|e| Failure::new(Code::JournalFailed, format!("{}: {e}", global.display())))?;
        }
        std::fs::File::open(&global)
            .and_then(|d| d.sync_all())
            .map_err(|e| Failure::new(Code::JournalFailed, format!("{}: {e}", global.display())))
    }
}
