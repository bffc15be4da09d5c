//! `restore-schema`: the globals and every database's schema restored in
//! binary-upgrade mode, the new relation map read, logical slots made again.

use crate::engine::*;

/// A database of this many objects restored over one connection although
/// -j asked for more is told to the operator: below it the restore takes
/// about a second either way.
const SERIAL_WORTH_SAYING: u64 = 1000;

impl<'a> Engine<'a> {
    /// New server up: frozen horizons set to the old next XID, globals and
    /// every database's schema restored (template1 first, then `-j` at a
    /// time), the new relation map read.
    pub(in crate::engine) fn restore_schema(&mut self) -> Result<(), Failure> {
        let server = self.start_new()?;
        // prepare: the horizons follow the old cluster's counters only at
        // the cutover (every catalog row is frozen before then).
        if self.phase != Phase::Prepare {
            pgm_catalog::set_frozen_xids(
                |db| server.connect(db),
                self.old_control.next_xid,
                self.old_control.next_multixact,
            )
            .map_err(|e| Failure::new(Code::RestoreFailed, e))?;
        }
        let conn = self.client_conn(false);
        pgm_catalog::restore_globals(
            &self.new_install,
            &conn,
            &self.output().join("dump/globals.sql"),
            &self.log("globals.log"),
        )
        .map_err(|e| Failure::new(Code::RestoreFailed, e))?;
        // Databases are created with the FILE_COPY strategy, whose checkpoints
        // binary-upgrade mode skips: template0 must be on disk first.
        server
            .connect("template1")
            .and_then(|mut c| {
                c.batch_execute("CHECKPOINT")
                    .map_err(|e| pgm_cluster::Error::Query {
                        database: "template1".into(),
                        what: "CHECKPOINT".into(),
                        detail: pgm_cluster::describe_pg_error(&e),
                    })
            })
            .map_err(|e| Failure::new(Code::RestoreFailed, e))?;
        // Every database's restore made ready first (usually while the
        // steps before this one ran), so that the progress counts objects
        // of the whole cluster.
        let planned = match self.restore_planning.take() {
            Some(planning) => planning.join()?,
            None => plan_restores(&self.restore_targets())?,
        };
        let install = &self.new_install;
        let jobs = self.settings.jobs;
        // The connections' backends build catalog rows on this machine's
        // CPUs: more of them than CPUs only contend (on two CPUs four
        // connections were at times twice as slow as two).
        let cpus = self
            .settings
            .cpus
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let last_workers = jobs.min(cpus.max(2));
        // template1 is restored first, alone; the others share the
        // connections as [`share_connections`] finds soonest done.
        let candidates: Vec<usize> = (0..planned.len())
            .filter(|&i| self.databases[i].db.name != "template1")
            .collect();
        let shares = share_connections(
            &candidates
                .iter()
                .map(|&i| planned[i].objects)
                .collect::<Vec<_>>(),
            jobs,
            last_workers,
        );
        let largest = shares.split.map(|k| candidates[k]);
        if jobs > 1 {
            self.log_restore_shares(&shares, &candidates, &planned, last_workers);
        }
        let objects = planned.iter().map(|p| p.objects).sum();
        let meter = self.printer.meter("restore-schema", objects, "objects");
        let restored = AtomicUsize::new(0);
        let printer = self.printer;
        let restore = |planned: &pgm_catalog::PlannedRestore, workers: usize| {
            let serial = pgm_catalog::restore_database(install, &conn, planned, workers, &|n| {
                meter.add(n, 0)
            })
            .map_err(|e| Failure::new(Code::RestoreFailed, e))?;
            // -j was meant for this database: say why it did not help
            // where that cost time (the log of each database says it always).
            if let Some(reason) = serial.filter(|_| planned.objects >= SERIAL_WORTH_SAYING) {
                printer.notice(
                    crate::output::NoticeCode::RestoredOverOneConnection,
                    format!(
                        "database \"{}\" was restored over one connection, not {workers}: {reason}",
                        planned.database
                    ),
                );
            }
            let restored = restored.fetch_add(1, Ordering::SeqCst) + 1;
            pgm_cluster::faults::point(|| format!("restore-schema:database:{restored}"));
            Ok(())
        };
        // template1 is dropped and re-created first: nothing else may use
        // it meanwhile. The database restored side by side has its script
        // read for that part while the others restore, on this thread:
        // glibc keeps what a thread frees for that thread, and the steps
        // after (matching 100,000 relations' files) then reuse the plan's
        // memory instead of adding to it.
        let first: Vec<_> = self
            .databases
            .iter()
            .zip(&planned)
            .filter(|(p, _)| p.db.name == "template1")
            .map(|(_, planned)| planned)
            .collect();
        let others: Vec<_> = shares
            .order
            .iter()
            .map(|&k| &planned[candidates[k]])
            .collect();
        std::thread::scope(|scope| -> Result<(), Failure> {
            let rest = scope.spawn(|| -> Result<(), Failure> {
                for planned in &first {
                    restore(planned, 1)?;
                }
                parallel(&others, jobs, |planned| restore(planned, 1))?;
                Ok(())
            });
            if let Some(i) = largest {
                planned[i].find_side_by_side(last_workers);
            }
            rest.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            if let Some(i) = largest {
                restore(&planned[i], last_workers)?;
            }
            Ok(())
        })?;
        meter.finish();
        let mut client = server
            .connect("template1")
            .map_err(|e| Failure::new(Code::NewCatalogFailed, e))?;
        let new_databases = pgm_catalog::list_databases(&mut client)
            .map_err(|e| Failure::new(Code::NewCatalogFailed, e))?;
        drop(client);
        let by_name: BTreeMap<&str, &Database> =
            new_databases.iter().map(|d| (d.name.as_str(), d)).collect();
        let query = RelationQuery {
            include_sequences: !self.dump_options().sequences_in_dump(),
        };
        let lists = parallel(&self.databases, self.settings.jobs, |plan| {
            let mut client = server
                .connect(&plan.db.name)
                .map_err(|e| Failure::new(Code::NewCatalogFailed, e))?;
            let relations = pgm_catalog::list_relations(&mut client, &plan.db.name, query)
                .map_err(|e| Failure::new(Code::NewCatalogFailed, e))?;
            let outdated = pgm_catalog::outdated_extensions(&mut client, &plan.db.name)
                .map_err(|e| Failure::new(Code::NewCatalogFailed, e))?;
            Ok((relations, outdated))
        })?;
        self.outdated_extensions.clear();
        for (plan, (relations, outdated)) in self.databases.iter_mut().zip(lists) {
            if !outdated.is_empty() {
                self.outdated_extensions
                    .insert(plan.db.name.clone(), outdated);
            }
            let new_db = by_name.get(plan.db.name.as_str()).ok_or_else(|| {
                Failure::new(
                    Code::RelationMapMismatch,
                    format!("database \"{}\" is missing after the restore", plan.db.name),
                )
            })?;
            plan.new_oid = new_db.oid;
            plan.new_tablespace_location = new_db.tablespace_location.clone();
            plan.new_relations = relations;
        }
        self.create_logical_slots(&server)?;
        self.create_physical_slots(&server)?;
        server
            .stop()
            .map_err(|e| Failure::new(Code::ServerStopFailed, e))
    }

    /// Says in `restore-schedule.log` how the databases were shared among
    /// the connections, and why the largest was or was not split.
    fn log_restore_shares(
        &self,
        shares: &ConnectionShares,
        candidates: &[usize],
        planned: &[pgm_catalog::PlannedRestore],
        workers: usize,
    ) {
        let name = |k: usize| format!("\"{}\"", planned[candidates[k]].database);
        let largest = shares.split.or(shares.order.first().copied());
        let mut text = format!(
            "-j {}, {workers} connections for one database; databases by objects, the restore's \
             cost estimate, most first (template1 before them, alone):\n",
            self.settings.jobs
        );
        for k in shares.split.iter().chain(&shares.order) {
            text += &format!("  {} {}\n", name(*k), planned[candidates[*k]].objects);
        }
        text += &format!(
            "one connection per database: done after about {} objects' time\n",
            shares.one_each
        );
        if let Some(k) = largest {
            text += &format!(
                "{} split at the end, {workers} connections at once: about {}\n",
                name(k),
                shares.split_last
            );
        }
        text += &match shares.split {
            Some(k) => format!("so {} is restored last, split\n", name(k)),
            None => {
                "so every database is restored over one connection (more than a tenth sooner)\n"
                    .to_string()
            }
        };
        // The log only explains the schedule: losing it is no reason to fail.
        let _ = std::fs::write(self.log("restore-schedule.log"), text);
    }

    /// The old cluster's logical slots, made again now: this server runs
    /// after the new cluster's last pg_resetwal, so the WAL they keep from
    /// here on stays. Their consumers continue from this position.
    pub(in crate::engine) fn create_logical_slots(
        &mut self,
        server: &Server,
    ) -> Result<(), Failure> {
        if self.logical_slots.is_empty() {
            return Ok(());
        }
        pgm_catalog::create_logical_slots(|db| server.connect(db), &self.logical_slots)
            .map_err(|e| Failure::new(Code::SlotsFailed, e))?;
        self.printer.notice(
            crate::output::NoticeCode::LogicalSlotsRecreated,
            format!(
                "{} logical replication slots made again: {}",
                self.logical_slots.len(),
                self.logical_slots
                    .iter()
                    .map(|s| format!("\"{}\" ({})", s.name, s.database))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        if let Some(journal) = self.journal.as_mut() {
            journal
                .record(Record::LogicalSlots {
                    slots: self.logical_slots.clone(),
                })
                .map_err(|e| Failure::new(Code::JournalFailed, e))?;
        }
        Ok(())
    }

    /// The old cluster's physical slots, made again now (after the last
    /// pg_resetwal, as the logical ones): each keeps the new cluster's WAL
    /// from its first checkpoint until its standby, upgraded from its own
    /// files (`pg-migrate standby`), connects.
    pub(in crate::engine) fn create_physical_slots(
        &mut self,
        server: &Server,
    ) -> Result<(), Failure> {
        if self.physical_slots.is_empty() {
            return Ok(());
        }
        let mut client = server
            .connect("template1")
            .map_err(|e| Failure::new(Code::SlotsFailed, e))?;
        pgm_catalog::create_physical_slots(&mut client, &self.physical_slots)
            .map_err(|e| Failure::new(Code::SlotsFailed, e))?;
        self.printer.notice(
            crate::output::NoticeCode::PhysicalSlotsRecreated,
            format!(
                "{} physical replication slots made again for the standbys: {}",
                self.physical_slots.len(),
                self.physical_slots
                    .iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        Ok(())
    }
}

/// What making every database's restore ready needs: pg_restore and the
/// transaction size (of the new installation), and each database's name,
/// dump and log.
pub(in crate::engine) struct RestoreTargets {
    install: Installation,
    transaction_size: Option<u32>,
    jobs: usize,
    databases: Vec<(String, PathBuf, PathBuf)>,
}

/// The restore made ready on a thread of its own while the steps before
/// it run (see [`Engine::start_restore_planning`]).
pub(in crate::engine) struct RestorePlanning(
    std::thread::JoinHandle<Result<Vec<pgm_catalog::PlannedRestore>, Failure>>,
);

impl RestorePlanning {
    /// Waits for it: every database's plan, or why one could not be made.
    pub(in crate::engine) fn join(self) -> Result<Vec<pgm_catalog::PlannedRestore>, Failure> {
        self.0
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl<'a> Engine<'a> {
    fn restore_targets(&self) -> RestoreTargets {
        RestoreTargets {
            install: self.new_install.clone(),
            transaction_size: pgm_catalog::restore_transaction_size(
                self.new_install.version.major,
                self.settings.jobs,
            ),
            jobs: self.settings.jobs,
            databases: self
                .databases
                .iter()
                .map(|p| (p.db.name.clone(), p.dump.clone(), p.log.clone()))
                .collect(),
        }
    }

    /// Starts making the restore ready as soon as the dumps are written:
    /// pg_restore writes each database's script (half a second at 100,000
    /// relations in one database). It needs no server, and the steps until
    /// the restore (the old server's stop, prepare-new, the handover) leave
    /// a CPU free meanwhile.
    pub(in crate::engine) fn start_restore_planning(&mut self) {
        let targets = self.restore_targets();
        self.restore_planning = Some(RestorePlanning(std::thread::spawn(move || {
            plan_restores(&targets)
        })));
    }
}

/// Every database's restore made ready (`jobs` at a time), in the order of
/// `targets`.
fn plan_restores(targets: &RestoreTargets) -> Result<Vec<pgm_catalog::PlannedRestore>, Failure> {
    parallel(&targets.databases, targets.jobs, |(name, dump, log)| {
        pgm_catalog::plan_restore(&targets.install, name, dump, log, targets.transaction_size)
            .map_err(|e| Failure::new(Code::RestoreFailed, e))
    })
}

/// How the databases other than template1 share the `-j` connections: the
/// one restored side by side at the end over `workers` connections, if any,
/// and the order in which the rest go to the connections (most objects
/// first, so that a large one does not start last and run alone).
#[derive(Debug, PartialEq)]
struct ConnectionShares {
    split: Option<usize>,
    order: Vec<usize>,
    /// When the restore was estimated to end (counted in objects restored
    /// over one connection) with one connection per database, and with the
    /// largest split at the end: why `split` is what it is.
    one_each: u64,
    split_last: u64,
}

/// What two connections restoring one database side by side gained over
/// one, measured: 100,000 relations in one database restored in 18.4 s over
/// one connection, 12.9 s over two (2 CPUs). Each connection beyond the
/// second is assumed to add as much, which more CPUs than were measured may
/// better.
const SIDE_BY_SIDE_GAIN: f64 = 0.4;

/// Splits the largest database (by objects, its cost in the restore) over
/// `workers` connections at the end, unless giving every database one
/// connection is estimated to finish more than a tenth sooner (counting no
/// more connections at work than `workers`, the CPUs: the restore runs
/// `jobs` at a time, but more than the CPUs go no faster): with one large database
/// and small ones it is split; eight equal databases at -j 2 are done
/// soonest four per connection, while a split eighth would run after the
/// other seven at less than twice one connection's pace. Closer than a
/// tenth, the split wins: about the same time, and the side by side
/// restore's progress counts across the connections.
fn share_connections(objects: &[u64], jobs: usize, workers: usize) -> ConnectionShares {
    let mut order: Vec<usize> = (0..objects.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(objects[i]));
    // Each database to the connection that is free first, in this order.
    let finish = |order: &[usize], connections: usize| -> u64 {
        let mut busy = vec![0u64; connections.max(1)];
        for &i in order {
            let soonest = busy.iter_mut().min().expect("one connection at least");
            *soonest += objects[i];
        }
        busy.into_iter().max().unwrap_or(0)
    };
    let connections = jobs.min(workers);
    let one_each = finish(&order, connections);
    if jobs < 2 || order.is_empty() {
        return ConnectionShares {
            split: None,
            order,
            one_each,
            split_last: one_each,
        };
    }
    let speedup = 1.0 + SIDE_BY_SIDE_GAIN * (workers.max(1) - 1) as f64;
    let split_last =
        finish(&order[1..], connections) + (objects[order[0]] as f64 / speedup).round() as u64;
    let split = if (one_each as f64) < 0.9 * split_last as f64 {
        None
    } else {
        Some(order.remove(0))
    };
    ConnectionShares {
        split,
        order,
        one_each,
        split_last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_large_database_is_split_and_equal_ones_are_not() {
        // One large database beside the small postgres one: split.
        let shares = share_connections(&[6, 100_000], 2, 2);
        assert_eq!(shares.split, Some(1));
        assert_eq!(shares.order, vec![0]);
        // Eight equal databases and postgres at -j 2: four per connection.
        let mut eight = vec![6];
        eight.extend([12_500; 8]);
        let shares = share_connections(&eight, 2, 2);
        assert_eq!(shares.split, None);
        assert_eq!(shares.order[8], 0, "the smallest last");
        assert_eq!(
            (shares.one_each, shares.split_last),
            (50_006, 50_000 + 8_929)
        );
        // Seven: three per connection, the seventh split at the end.
        let shares = share_connections(&eight[..8], 2, 2);
        assert!(shares.split.is_some());
        assert_eq!(shares.order.len(), 7);
        // Two equal ones at -j 2: one each, side by side.
        assert_eq!(share_connections(&[50, 50], 2, 2).split, None);
        // -j 1 never splits.
        assert_eq!(share_connections(&[6, 100_000], 1, 2).split, None);
        // Small databases: the largest split, as it costs nothing.
        assert_eq!(share_connections(&[6, 30], 2, 2).split, Some(1));
    }

    #[test]
    fn the_rest_go_largest_first() {
        let shares = share_connections(&[10, 5_000, 300, 4_000, 90_000], 2, 2);
        assert_eq!(shares.split, Some(4));
        assert_eq!(shares.order, vec![1, 3, 2, 0]);
    }
}
