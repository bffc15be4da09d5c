//! The upgrade, as the ordered list of named steps it is. Each step is
//! announced, timed and recorded in the journal; everything before
//! `protect-old` leaves the old cluster as it was, and in link mode nothing
//! after it happens unless everything before it succeeded.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pgm_catalog::{ClientConn, Database, DumpOptions, Relation, RelationQuery};
use pgm_cluster::command::{shell_quote, PgCommand};
use pgm_cluster::{ControlFile, DataDir, Installation, Server, ServerOptions, Tool};
use pgm_transfer::{FileMove, RelationFiles};
use pgm_verifier::{CheckConfig, Report};
use serde_json::json;

use crate::cli::{Method, Mode, Settings, Signedness, SyncMethod};
use crate::exit;
use crate::journal::{Journal, JournalView, State};
use crate::report::{ClusterStates, Event, Printer};
use crate::rundir::RunDir;

mod online;
pub use online::stop_old_server;

/// Which part of an upgrade a run does: all of it, or the halves of the
/// online mode (`prepare` while the old cluster serves, `cutover` in the
/// window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Full,
    Prepare,
    Cutover,
}

/// Why a step failed: a stable code, what happened, and what to do.
pub struct Failure {
    pub code: &'static str,
    pub message: String,
    pub remedy: Option<String>,
}

impl Failure {
    pub fn new(code: &'static str, error: impl std::fmt::Display) -> Failure {
        Failure {
            code,
            message: error.to_string(),
            remedy: None,
        }
    }
}

/// Reads a pg_control wherever a run may have left it: hidden by prepare
/// (`pg_control.prepared`) or renamed by link mode (`pg_control.old`).
fn read_control(datadir: &Path) -> Result<ControlFile, Failure> {
    let global = datadir.join("global");
    let path = [
        global.join("pg_control"),
        global.join("pg_control.prepared"),
        global.join("pg_control.old"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .ok_or_else(|| {
        Failure::new(
            "resume_failed",
            format!("{} has no pg_control", global.display()),
        )
    })?;
    let bytes = std::fs::read(&path)
        .map_err(|e| Failure::new("resume_failed", format!("{}: {e}", path.display())))?;
    ControlFile::decode(&bytes, &path).map_err(|e| Failure::new("resume_failed", e))
}

/// One database's part of the plan.
struct DatabasePlan {
    db: Database,
    old_relations: Vec<Relation>,
    new_relations: Vec<Relation>,
    new_oid: u32,
    new_tablespace_location: String,
    dump: PathBuf,
    log: PathBuf,
}

impl DatabasePlan {
    /// A database known only by its OID and name (a run continued from a
    /// journal); the rest is filled in by the steps that need it.
    fn named(oid: u32, name: String) -> DatabasePlan {
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

/// A failed upgrade: why, the state of each cluster, the exit status, and
/// where the logs are.
pub struct Failed {
    pub failure: Failure,
    pub clusters: ClusterStates,
    pub exit_code: i32,
    pub logs: Option<PathBuf>,
}

/// Something left for the user after the upgrade. `done_by` names the step
/// after the upgrade that does it (or [`NEW_CLUSTER_RAN`]: advice that holds
/// only while the new cluster has never run), so that it is not repeated.
pub struct NextStep {
    pub done_by: Option<&'static str>,
    pub text: String,
}

/// Marks advice that starting the new cluster makes moot.
pub const NEW_CLUSTER_RAN: &str = "new-cluster-ran";

/// How long prepare's pg_dump waits for a table's lock on the serving old
/// server before it gives up (and prepare with it: run it again later).
const PREPARE_LOCK_WAIT: &str = "60s";

impl NextStep {
    fn plain(text: String) -> NextStep {
        NextStep {
            done_by: None,
            text,
        }
    }

    fn done_by(step: &'static str, text: String) -> NextStep {
        NextStep {
            done_by: Some(step),
            text,
        }
    }
}

/// What the finished upgrade reports.
pub struct Finished {
    pub next_steps: Vec<NextStep>,
    pub backup: Option<crate::report::BackupCounts>,
    pub reindex_script: Option<PathBuf>,
    /// The scripts `finish` wrote (in `pg_migrate.d`).
    pub scripts: Vec<PathBuf>,
    pub databases: usize,
    pub relations: usize,
    pub files: u64,
    pub files_copied_ahead: u64,
    pub bytes: u64,
    pub logs: Option<PathBuf>,
}

pub struct Engine<'a> {
    settings: &'a Settings,
    printer: &'a Printer,
    run_dir: &'a RunDir,
    config: CheckConfig,
    report: Report,
    old_install: Installation,
    new_install: Installation,
    old_dir: DataDir,
    old_control: ControlFile,
    new_dir: Option<DataDir>,
    output: Option<PathBuf>,
    journal: Option<Journal>,
    databases: Vec<DatabasePlan>,
    tablespaces: Vec<String>,
    moves: Vec<FileMove>,
    /// Copy modes: the relation files being copied in the background while
    /// the catalog is restored.
    staging: Option<Staging>,
    /// Per database, the extensions whose installed version is older than
    /// the new installation's default (read while the restore's server runs).
    outdated_extensions: BTreeMap<String, Vec<String>>,
    /// Set once the new cluster differs from what initdb made.
    new_touched: bool,
    created_new: bool,
    /// Link mode: the old cluster's pg_control has been renamed.
    old_protected: bool,
    transferred: (u64, u64),
    files_copied_ahead: u64,
    /// Relations whose files the plan moves.
    relations: usize,
    /// Steps an earlier run finished (a resumed run skips them).
    done: BTreeSet<String>,
    /// Whether this run continues a journal (resume) rather than starting one.
    resuming: bool,
    /// `--backup-dir`: the backup this run wrote.
    backup: Option<crate::report::BackupCounts>,
    phase: Phase,
    /// prepare: what the old catalog looked like, for the cutover to compare.
    prepared: online::PreparedState,
    /// prepare: the old server is someone else's, running (only queried).
    old_live: bool,
    /// cutover: the old cluster's freeze horizons, read as it was verified.
    horizons: Option<online::Horizons>,
    /// cutover: the old cluster's pg_control when a cutover verified it.
    cutover_old_stamp: Option<pgm_cluster::ControlStamp>,
    /// The script `finish` wrote for collation-dependent indexes.
    reindex_script: Option<PathBuf>,
    /// Every script `finish` wrote (for the summary).
    scripts: Vec<PathBuf>,
    /// The old cluster's logical replication slots (17 and later), made
    /// again in the new cluster by the restore's server.
    logical_slots: Vec<pgm_catalog::LogicalSlot>,
}

/// Copies of the old relation files made in the background from the moment
/// the old server stops until the transfer starts (which renames them into
/// place): in copy mode the restore's time then hides part of the copy's.
struct Staging {
    copies: Arc<pgm_transfer::StagedCopies>,
    worker: std::thread::JoinHandle<()>,
}

impl Staging {
    /// Stops the copying (after the file at hand) and removes the copies.
    fn abandon(self) {
        self.copies.stop();
        let _ = self.worker.join();
        let _ = std::fs::remove_dir_all(self.copies.dir());
    }
}

/// The transfer as planned before its first file moves: enough to finish
/// the upgrade without the old catalog (whose cluster link mode has disabled).
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPlan {
    moves: Vec<(PathBuf, PathBuf, u64)>,
    databases: Vec<String>,
    tablespaces: Vec<String>,
    #[serde(default)]
    outdated_extensions: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    relations: usize,
}

/// A [`SavedPlan`] written straight from the engine's own lists (tens of
/// thousands of moves are not copied to be saved).
#[derive(serde::Serialize)]
struct SavedPlanRef<'p> {
    moves: MovesRef<'p>,
    databases: Vec<&'p str>,
    tablespaces: &'p [String],
    outdated_extensions: &'p BTreeMap<String, Vec<String>>,
    relations: usize,
}

struct MovesRef<'p>(&'p [FileMove]);

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

/// What a signal handler needs to report an interrupted upgrade.
#[derive(Clone)]
pub struct Interruptible {
    pub new_datadir: PathBuf,
    pub clusters: ClusterStates,
    pub exit_code: i32,
    pub resume: String,
}

pub static INTERRUPT: Mutex<Option<Interruptible>> = Mutex::new(None);

/// Tells the signal handler that a revert is changing the clusters: an
/// interruption now leaves a revert to finish, not "nothing changed".
pub fn publish_revert_in_progress(new_datadir: &Path, old_protected: bool) {
    let status = Interruptible {
        new_datadir: new_datadir.to_path_buf(),
        clusters: ClusterStates {
            old: if old_protected { "protected" } else { "unchanged" },
            new: "incomplete",
        },
        exit_code: exit::FAILED_NEEDS_RECOVERY,
        resume: format!(
            "the revert was cut short; finish it: pg-migrate revert -D {} (every part of it can be repeated)",
            quote(new_datadir)
        ),
    };
    *INTERRUPT.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

impl<'a> Engine<'a> {
    pub fn new(
        settings: &'a Settings,
        printer: &'a Printer,
        run_dir: &'a RunDir,
        config: CheckConfig,
        report: Report,
    ) -> Result<Engine<'a>, Failure> {
        let missing = |what| {
            Failure::new(
                "internal",
                format!("the checks passed without establishing {what}"),
            )
        };
        let old_install = report
            .old
            .install
            .clone()
            .ok_or_else(|| missing("the old installation"))?;
        let new_install = report
            .new
            .install
            .clone()
            .ok_or_else(|| missing("the new installation"))?;
        let old_dir = report
            .old
            .datadir
            .clone()
            .ok_or_else(|| missing("the old data directory"))?;
        let old_control = report
            .old
            .control
            .clone()
            .ok_or_else(|| missing("the old pg_control"))?;
        let new_dir = report.new.datadir.clone();
        Ok(Engine {
            settings,
            printer,
            run_dir,
            config,
            report,
            old_install,
            new_install,
            old_dir,
            old_control,
            new_dir,
            output: None,
            journal: None,
            databases: Vec::new(),
            tablespaces: Vec::new(),
            moves: Vec::new(),
            staging: None,
            outdated_extensions: BTreeMap::new(),
            new_touched: false,
            created_new: false,
            old_protected: false,
            transferred: (0, 0),
            files_copied_ahead: 0,
            relations: 0,
            done: BTreeSet::new(),
            resuming: false,
            backup: None,
            reindex_script: None,
            scripts: Vec::new(),
            phase: Phase::Full,
            prepared: online::PreparedState::default(),
            old_live: false,
            horizons: None,
            cutover_old_stamp: None,
            logical_slots: Vec::new(),
        })
    }

    pub fn new_install(&self) -> &Installation {
        &self.new_install
    }

    pub fn new_datadir(&self) -> &DataDir {
        self.new_dir()
    }

    /// Where the old cluster's postgresql.conf is.
    pub fn old_config_dir(&self) -> PathBuf {
        self.old_dir.pg_ctl_dir().to_path_buf()
    }

    pub fn old_version(&self) -> String {
        self.old_install.version.text.clone()
    }

    /// What the run left the old cluster as (for reports after it).
    pub fn old_state(&self) -> &'static str {
        self.cluster_states().old
    }

    /// Makes this engine run one half of the online mode.
    pub fn with_phase(mut self, phase: Phase) -> Self {
        self.phase = phase;
        self
    }

    /// Marks a run that continues an earlier one's journal.
    pub fn resuming(mut self, resuming: bool) -> Self {
        self.resuming = resuming;
        self
    }

    /// An engine for a run that continues a journal (a late resume, a
    /// cutover): both installations and data directories as the settings
    /// name them, each pg_control wherever the run left it, and what the
    /// journal says of the new cluster's creation.
    fn from_journal(
        settings: &'a Settings,
        printer: &'a Printer,
        run_dir: &'a RunDir,
        config: CheckConfig,
        journal: &JournalView,
    ) -> Result<Engine<'a>, Failure> {
        let io = |e: pgm_cluster::Error| Failure::new("resume_failed", e);
        let old_install = Installation::discover(&settings.old_bindir).map_err(io)?;
        let new_install = Installation::discover(&settings.new_bindir).map_err(io)?;
        let old_dir = DataDir::open(&settings.old_datadir, None).map_err(io)?;
        let new_dir = DataDir::open(&settings.new_datadir, None).map_err(io)?;
        let mut report = Report::default();
        report.old.install = Some(old_install);
        report.new.install = Some(new_install);
        report.old.control = Some(read_control(&old_dir.path)?);
        report.new.control = Some(read_control(&new_dir.path)?);
        report.old.datadir = Some(old_dir);
        report.new.datadir = Some(new_dir);
        let mut engine = Engine::new(settings, printer, run_dir, config, report)?;
        engine.resuming = true;
        let global = engine.old_dir.path.join("global");
        engine.old_protected =
            !global.join("pg_control").exists() && global.join("pg_control.old").exists();
        engine.created_new = journal
            .plan()
            .and_then(|p| p["created_new"].as_bool())
            .unwrap_or(false);
        Ok(engine)
    }

    /// An engine that continues a journal whose relation map was saved: the
    /// remaining steps need neither the old server nor the old catalog.
    pub fn resume_late(
        settings: &'a Settings,
        printer: &'a Printer,
        run_dir: &'a RunDir,
        config: CheckConfig,
        journal: &JournalView,
    ) -> Result<Engine<'a>, Failure> {
        let mut engine = Engine::from_journal(settings, printer, run_dir, config, journal)?;
        engine.new_touched = true;
        engine.done = journal.done_steps();
        if !engine.old_protected {
            // Protected once, then made startable again by hand (and, as
            // the resume's guard found, not started): protected again
            // before anything more is linked or moved.
            engine.done.remove("protect-old");
        }
        let plan_path = crate::journal::dir(&engine.new_dir().path).join("transfer-plan.json");
        let saved: SavedPlan = std::fs::read(&plan_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                Failure::new(
                    "resume_failed",
                    format!("{} is missing or damaged", plan_path.display()),
                )
            })?;
        engine.moves = saved
            .moves
            .into_iter()
            .map(|(from, to, bytes)| FileMove { from, to, bytes })
            .collect();
        engine.tablespaces = saved.tablespaces;
        engine.outdated_extensions = saved.outdated_extensions;
        engine.relations = saved.relations;
        engine.databases = saved
            .databases
            .into_iter()
            .map(|name| DatabasePlan::named(0, name))
            .collect();
        Ok(engine)
    }

    /// Runs every step in order; stops at the first failure.
    pub fn run(&mut self) -> Result<Finished, Box<Failed>> {
        let result = self.run_steps();
        if let Some(staging) = self.staging.take() {
            staging.abandon();
        }
        result.map_err(|failure| {
            pgm_cluster::server::stop_all();
            let states = self.cluster_states();
            let code = if self.old_protected {
                exit::FAILED_NEEDS_RECOVERY
            } else {
                exit::FAILED_OLD_INTACT
            };
            if let Some(journal) = self.journal.as_mut() {
                let _ = journal.record(
                    "failed",
                    json!({ "code": failure.code, "message": failure.message }),
                );
            }
            if self.journal.is_some() {
                let _ = crate::journal::write_state(&self.new_dir().path, State::Failed);
            }
            *INTERRUPT.lock().unwrap_or_else(|e| e.into_inner()) = None;
            Box::new(Failed {
                failure: self.with_recovery_advice(failure),
                clusters: states,
                exit_code: code,
                logs: self.output.as_ref().map(|_| self.log_dir()),
            })
        })
    }

    fn run_steps(&mut self) -> Result<Finished, Failure> {
        match self.phase {
            Phase::Full => {}
            Phase::Prepare => return self.prepare_steps(),
            Phase::Cutover => return self.cutover_steps(),
        }
        if self.report.new_to_create {
            self.step("create-new-cluster", Engine::create_new_cluster)?;
        }
        self.open_output()?;
        self.publish_interrupt_status();
        if self.settings.backup_dir.is_some() {
            self.step("backup", Engine::backup)?;
        }
        if self.settings.method == Method::Dump {
            self.step("dump-all", Engine::dump_all)?;
            if self.settings.after.verify.is_some() {
                self.step("record-old", Engine::record_old)?;
            }
            self.step("restore-all", Engine::restore_all)?;
        } else {
            self.step("dump-old", Engine::dump_old)?;
            if self.settings.after.verify.is_some() {
                self.step("record-old", Engine::record_old)?;
            }
            self.step("prepare-new", Engine::prepare_new)?;
            self.step("handover-counters", Engine::handover_counters)?;
            self.step("restore-schema", Engine::restore_schema)?;
            self.step("match-relations", Engine::match_relations)?;
            if matches!(self.settings.mode, Mode::Link | Mode::Swap) {
                self.step("protect-old", Engine::protect_old)?;
            }
            self.step("transfer", Engine::transfer)?;
        }
        self.sync_and_finish()
    }

    /// The end every upgrade shares (cutover included): sync unless
    /// --no-sync, finish, and what was done.
    fn sync_and_finish(&mut self) -> Result<Finished, Failure> {
        if !self.settings.no_sync {
            self.step("sync", Engine::sync)?;
        }
        let mut next_steps = Vec::new();
        self.step("finish", |e| {
            next_steps = e.finish()?;
            Ok(())
        })?;
        let logs = self.cleanup_output();
        Ok(Finished {
            next_steps,
            backup: self.backup.clone(),
            reindex_script: self.reindex_script.clone(),
            scripts: self.scripts.clone(),
            databases: self.databases.len(),
            relations: self.relations,
            files: self.transferred.0,
            files_copied_ahead: self.files_copied_ahead,
            bytes: self.transferred.1,
            logs,
        })
    }

    fn step(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&mut Engine<'a>) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        if self.done.contains(name) {
            self.printer.emit(&Event::StepEnd {
                step: name,
                status: "skipped",
                duration_ms: 0,
            });
            return Ok(());
        }
        crate::report::park_if_interrupted();
        pgm_cluster::faults::point(|| format!("before:{name}"));
        self.printer.emit(&Event::StepStart { step: name });
        let started = Instant::now();
        let result = f(self);
        self.publish_interrupt_status();
        let duration_ms = started.elapsed().as_millis() as u64;
        self.printer.emit(&Event::StepEnd {
            step: name,
            status: if result.is_ok() { "ok" } else { "failed" },
            duration_ms,
        });
        if result.is_ok() {
            let new_control = self.new_control_stamp();
            if let Some(journal) = self.journal.as_mut() {
                journal
                    .record(
                        "step",
                        json!({ "step": name, "status": "done", "duration_ms": duration_ms, "new_control": new_control }),
                    )
                    .map_err(|e| Failure::new("journal_failed", e))?;
            }
            pgm_cluster::faults::point(|| format!("after:{name}"));
        }
        result.map_err(|mut failure| {
            failure.message = format!("step {name}: {}", failure.message);
            failure
        })
    }

    /// Tells the signal handler what an interruption now would leave behind.
    fn publish_interrupt_status(&self) {
        let Some(new_dir) = self.new_dir.as_ref() else {
            return;
        };
        let status = Interruptible {
            new_datadir: new_dir.path.clone(),
            clusters: self.cluster_states(),
            exit_code: if self.old_protected {
                exit::FAILED_NEEDS_RECOVERY
            } else {
                exit::FAILED_OLD_INTACT
            },
            resume: self.recovery_commands(),
        };
        *INTERRUPT.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    }

    fn new_dir(&self) -> &DataDir {
        self.new_dir
            .as_ref()
            .expect("the new data directory exists from create-new-cluster on")
    }

    fn output(&self) -> &Path {
        self.output
            .as_deref()
            .expect("the output directory exists from dump-old on")
    }

    /// This run's logs: under `--log-dir` when given, else beside the
    /// journal in the run's output directory.
    fn log_dir(&self) -> PathBuf {
        match &self.output {
            Some(output) if !self.run_dir.logs_elsewhere() => output.join("log"),
            // Before the output directory exists (the cutover's check), the
            // run directory's.
            _ => self.run_dir.log_dir(),
        }
    }

    fn log(&self, name: &str) -> PathBuf {
        self.log_dir().join(name)
    }

    fn server_options(&self, old: bool) -> ServerOptions {
        ServerOptions {
            port: if old {
                self.settings.old_port
            } else {
                self.settings.new_port
            },
            socket_dir: self.run_dir.socket_dir(old),
            binary_upgrade: true,
            durability_off: !old,
            extra_options: if old {
                self.settings.old_options.clone()
            } else {
                self.settings.new_options.clone()
            },
            log_file: self.log(if old {
                "old-server.log"
            } else {
                "new-server.log"
            }),
            user: self.settings.user.clone(),
        }
    }

    fn client_conn(&self, old: bool) -> ClientConn {
        ClientConn {
            socket_dir: self.run_dir.socket_dir(old),
            port: if old {
                self.settings.old_port
            } else {
                self.settings.new_port
            },
            user: self.settings.user.clone(),
        }
    }

    /// The max_locks_per_transaction the dump needs when the old server's
    /// lock table cannot hold the tables of the `-j` largest databases at
    /// once (each pg_dump locks every ordinary and partitioned table of its
    /// database, and nothing else: not indexes, TOAST tables, sequences or
    /// views); `None` when it can.
    fn lock_slots_for_dump(&self, server: &Server) -> Result<Option<u64>, Failure> {
        let mut sizes: Vec<u64> = self
            .report
            .old
            .catalog
            .as_ref()
            .map(|c| {
                c.databases
                    .iter()
                    .filter_map(|d| d.user_tables)
                    .map(|n| n.max(0) as u64)
                    .collect()
            })
            .unwrap_or_default();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let needed: u64 = sizes.iter().take(self.settings.jobs.max(1)).sum::<u64>() + 1000;
        let mut client = server
            .connect("template1")
            .map_err(|e| Failure::new("old_catalog_failed", e))?;
        let row = client
            .query_one(
                "SELECT pg_catalog.current_setting('max_locks_per_transaction')::bigint,
                        pg_catalog.current_setting('max_connections')::bigint
                      + pg_catalog.current_setting('max_prepared_transactions')::bigint",
                &[],
            )
            .map_err(|e| Failure::new("old_catalog_failed", pgm_cluster::describe_pg_error(&e)))?;
        let (per_transaction, slots_for): (i64, i64) = (row.get(0), row.get(1));
        let slots_for = slots_for.max(1) as u64;
        if (per_transaction.max(0) as u64) * slots_for >= needed {
            return Ok(None);
        }
        Ok(Some(needed.div_ceil(slots_for)))
    }

    fn start_old(&self) -> Result<Server, Failure> {
        Server::start(&self.old_install, &self.old_dir, &self.server_options(true))
            .map_err(|e| Failure::new("server_start_failed", e))
    }

    /// The new cluster's pg_control as it is now (wherever a run left it),
    /// for the journal: revert compares it with what it finds.
    fn new_control_stamp(&self) -> Option<pgm_cluster::ControlStamp> {
        let dir = self.new_dir.as_ref()?;
        read_control(&dir.path).ok().map(|c| c.stamp())
    }

    /// Notes in the journal that pg-migrate starts the new server: until
    /// the next step record, changes to the new pg_control are its own.
    fn note_new_server(&mut self) -> Result<(), Failure> {
        if let Some(journal) = self.journal.as_mut() {
            journal
                .record("new_server", json!({}))
                .map_err(|e| Failure::new("journal_failed", e))?;
        }
        Ok(())
    }

    fn start_new(&mut self) -> Result<Server, Failure> {
        self.note_new_server()?;
        Server::start(
            &self.new_install,
            self.new_dir(),
            &self.server_options(false),
        )
        .map_err(|e| Failure::new("server_start_failed", e))
    }

    /// initdb a new cluster that matches the old one, then run the checks
    /// that had to wait for it.
    fn create_new_cluster(&mut self) -> Result<(), Failure> {
        let mut words = pgm_verifier::matching_initdb(&self.config, &self.report);
        words.extend(initdb_auth(self.printer, &self.settings.user));
        // The whole cluster is synced at the end.
        words.push("--no-sync".to_string());
        let command_line = words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ");
        self.printer.emit(&Event::Initdb {
            command: command_line.clone(),
            datadir: self.settings.new_datadir.display().to_string(),
        });
        // initdb writes into a sibling directory that is renamed into place, so
        // that an interrupted initdb never leaves a half-made cluster at -D.
        let target = self.settings.new_datadir.clone();
        let staging = PathBuf::from(format!("{}.pg-migrate-initdb", target.display()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| {
                Failure::new("initdb_failed", format!("{}: {e}", staging.display()))
            })?;
        }
        let mut args = words[1..].to_vec();
        if let Some(at) = args.iter().position(|w| w == "-D") {
            args[at + 1] = staging.display().to_string();
        }
        PgCommand::new(&words[0])
            .args(&args)
            .run()
            .map_err(|e| Failure::new("initdb_failed", e))?;
        std::fs::rename(&staging, &target)
            .map_err(|e| Failure::new("initdb_failed", format!("{}: {e}", target.display())))?;
        self.created_new = true;
        let printer = self.printer;
        let ok = pgm_verifier::check_created_new(&self.config, &mut self.report, &mut |f| {
            printer.emit(&crate::check::check_event(f))
        });
        if !ok {
            return Err(Failure {
                code: "new_cluster_mismatch",
                message: "the new cluster pg-migrate created does not pass the checks (see the failed check events)".into(),
                remedy: Some(format!(
                    "remove {} and use a new installation built like the old one",
                    self.settings.new_datadir.display()
                )),
            });
        }
        self.new_dir = self.report.new.datadir.clone();
        Ok(())
    }

    /// `<new>/pg_migrate.d/`: the journal, the state file, the pristine copy
    /// of the new cluster, and per run the logs and dumps.
    fn open_output(&mut self) -> Result<(), Failure> {
        let new_path = self.new_dir().path.clone();
        let base = crate::journal::dir(&new_path);
        let output = base.join(format!("run-{}", now_ms()));
        let fail = |e: std::io::Error| {
            Failure::new("output_dir_failed", format!("{}: {e}", base.display()))
        };
        for sub in ["log", "dump"] {
            std::fs::create_dir_all(output.join(sub)).map_err(fail)?;
        }
        crate::journal::remove_staged_copies(&new_path);
        let first = JournalView::read(&new_path)
            .and_then(|j| j.plan().cloned())
            .is_none();
        let run = json!({ "run_dir": self.run_dir.path(), "output": output, "pid": std::process::id(), "resuming": self.resuming });
        let journal = if first {
            // What recovery needs is durable before the journal appears:
            // first the new cluster as initdb made it, then the journal
            // with its plan, whole, then the state.
            crate::journal::save_pristine(&new_path).map_err(fail)?;
            pgm_cluster::faults::point(|| "open-output:pristine-saved".into());
            let plan = json!({
                "mode": self.settings.mode,
                "method": self.settings.method,
                "phase": if self.phase == Phase::Prepare { "prepare" } else { "full" },
                "old": { "bindir": self.old_install.bindir, "datadir": self.old_dir.path, "version": self.old_install.version.text, "port": self.settings.old_port },
                "new": { "bindir": self.new_install.bindir, "datadir": new_path, "version": self.new_install.version.text, "port": self.settings.new_port },
                "user": self.settings.user,
                "jobs": self.settings.jobs,
                "created_new": self.created_new,
                // What a resume must still do as asked.
                "backup_dir": self.settings.backup_dir,
                "log_dir": self.settings.log_dir,
                "after": {
                    "carry_config": self.settings.after.carry_config,
                    "update_extensions": self.settings.after.update_extensions,
                    "reindex_collation": self.settings.after.reindex_collation,
                    "post_upgrade": self.settings.after.post_upgrade,
                    "analyze": self.settings.after.analyze,
                    "verify": self.settings.after.verify,
                },
            });
            Journal::create(&new_path, &[("plan", plan), ("run", run)])
                .map_err(|e| Failure::new("journal_failed", e))?
        } else {
            let mut journal =
                Journal::open(&new_path).map_err(|e| Failure::new("journal_failed", e))?;
            journal
                .record("run", run)
                .map_err(|e| Failure::new("journal_failed", e))?;
            journal
        };
        pgm_cluster::faults::point(|| "open-output:journal-made".into());
        crate::journal::write_state(&new_path, State::Upgrading)
            .map_err(|e| Failure::new("journal_failed", e))?;
        self.journal = Some(journal);
        self.output = Some(output);
        Ok(())
    }

    fn dump_options(&self) -> DumpOptions {
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
    fn old_server_for_dumps(&mut self) -> Result<Server, Failure> {
        let mut server = match self.report.kept_old.take() {
            Some(server) => server,
            None => self.start_old()?,
        };
        if let Some(per_transaction) = self.lock_slots_for_dump(&server)? {
            server
                .stop()
                .map_err(|e| Failure::new("server_stop_failed", e))?;
            let mut options = self.server_options(true);
            options.extra_options = Some(format!(
                "{} -c max_locks_per_transaction={per_transaction}",
                options.extra_options.unwrap_or_default()
            ));
            self.printer.say(&format!(
                "  the old server restarts with max_locks_per_transaction={per_transaction}: its databases have more tables than its lock table holds"
            ));
            server = Server::start(&self.old_install, &self.old_dir, &options)
                .map_err(|e| Failure::new("server_start_failed", e))?;
        }
        Ok(server)
    }

    /// `--backup-dir`: a logical backup of the old cluster (with its data)
    /// before anything of it changes; its server is handed on to the dump.
    fn backup(&mut self) -> Result<(), Failure> {
        let dir = self
            .settings
            .backup_dir
            .clone()
            .ok_or_else(|| Failure::new("internal", "backup without --backup-dir"))?;
        let server = if self.phase == Phase::Prepare {
            self.old_server_live_or_private()?
        } else {
            self.old_server_for_dumps()?
        };
        let tools =
            pgm_catalog::backup::choose_dump_tools(&self.old_install, Some(&self.new_install))
                .ok_or_else(|| {
                    Failure::new(
                        "backup_failed",
                        "neither installation has pg_dump and pg_dumpall",
                    )
                })?;
        let log_dir = self.log_dir();
        let work = crate::backup::Work {
            printer: self.printer,
            step: "backup",
            jobs: self.settings.jobs,
            log_dir: &log_dir,
        };
        let result = crate::backup::write(&work, &server, tools, &self.old_dir.path, &dir);
        self.report.kept_old = Some(server);
        let written = result?;
        if let Some(journal) = self.journal.as_mut() {
            journal
                .record(
                    "backup",
                    json!({ "dir": dir, "databases": written.manifest.databases.len(), "bytes": written.manifest.bytes() }),
                )
                .map_err(|e| Failure::new("journal_failed", e))?;
        }
        self.backup = Some(crate::report::BackupCounts {
            dir: dir.display().to_string(),
            databases: written.manifest.databases.len(),
            bytes: written.manifest.bytes(),
            moved_aside: written.moved_aside.map(|p| p.display().to_string()),
        });
        Ok(())
    }

    /// The dump-and-reload method's dump: the backup when one was made,
    /// else every database with its data into the run's directory.
    fn dump_dir(&self) -> PathBuf {
        match &self.settings.backup_dir {
            Some(dir) => dir.clone(),
            None => self.output().join("dump-all"),
        }
    }

    /// `--method dump`: globals and every database, with their data, by
    /// the new installation's pg_dumpall and pg_dump (unless the backup
    /// already holds them); the old server stops.
    fn dump_all(&mut self) -> Result<(), Failure> {
        let server = self.old_server_for_dumps()?;
        if self.settings.backup_dir.is_none() {
            let dir = self.dump_dir();
            let log_dir = self.log_dir();
            let work = crate::backup::Work {
                printer: self.printer,
                step: "dump-all",
                jobs: self.settings.jobs,
                log_dir: &log_dir,
            };
            crate::backup::write(&work, &server, &self.new_install, &self.old_dir.path, &dir)?;
        }
        if self.settings.after.verify.is_some() {
            // Measured next, by the same server.
            self.report.kept_old = Some(server);
            return Ok(());
        }
        server
            .stop()
            .map_err(|e| Failure::new("server_stop_failed", e))
    }

    /// `--verify`: the old cluster measured while its server is up, before
    /// anything of it changes; kept for the comparison after the upgrade.
    fn record_old(&mut self) -> Result<(), Failure> {
        let verify = self
            .settings
            .after
            .verify
            .ok_or_else(|| Failure::new("internal", "record-old without --verify"))?;
        let server = self.old_server_for_dumps()?;
        let result = crate::verify::record_old(
            &self.new_install,
            &server,
            &self.old_install,
            &self.new_dir().path,
            crate::verify::measure_options(verify, self.settings.method),
            self.settings.jobs,
        );
        server
            .stop()
            .map_err(|e| Failure::new("server_stop_failed", e))?;
        result?;
        if self.settings.method == Method::InPlace {
            self.start_staging();
        }
        Ok(())
    }

    /// `--method dump`: the dump restored into the new cluster (a normal
    /// server, not binary-upgrade mode: every object gets new OIDs and
    /// every index is built anew).
    fn restore_all(&mut self) -> Result<(), Failure> {
        self.new_touched = true;
        let dir = self.dump_dir();
        let manifest = pgm_catalog::backup::verify_backup(&dir).map_err(|u| {
            Failure::new(
                "restore_failed",
                format!("the dump in {} cannot be restored: {u}", dir.display()),
            )
        })?;
        let mut options = self.server_options(false);
        options.binary_upgrade = false;
        self.note_new_server()?;
        let server = Server::start(&self.new_install, self.new_dir(), &options)
            .map_err(|e| Failure::new("server_start_failed", e))?;
        let log_dir = self.log_dir();
        let work = crate::backup::Work {
            printer: self.printer,
            step: "restore-all",
            jobs: self.settings.jobs,
            log_dir: &log_dir,
        };
        crate::backup::restore_into(
            &work,
            &server,
            &self.new_install,
            &manifest,
            &dir,
            &[],
            self.output(),
        )?;
        self.relations = 0;
        self.databases = manifest
            .databases
            .iter()
            .map(|d| DatabasePlan::named(0, d.name.clone()))
            .collect();
        self.transferred = (0, manifest.bytes());
        self.tablespaces = manifest
            .tablespaces
            .iter()
            .map(|t| t.location.clone())
            .collect();
        server
            .stop()
            .map_err(|e| Failure::new("server_stop_failed", e))
    }

    /// Old server up: list databases, tablespaces and relations; dump globals
    /// and every database's schema (`-j` at a time); old server down.
    fn dump_old(&mut self) -> Result<(), Failure> {
        let prepare = self.phase == Phase::Prepare;
        let server = if prepare {
            self.old_server_live_or_private()?
        } else {
            self.old_server_for_dumps()?
        };
        let mut client = server
            .connect("template1")
            .map_err(|e| Failure::new("old_catalog_failed", e))?;
        let databases = pgm_catalog::list_databases(&mut client)
            .map_err(|e| Failure::new("old_catalog_failed", e))?;
        self.tablespaces = pgm_catalog::list_tablespaces(&mut client)
            .map_err(|e| Failure::new("old_catalog_failed", e))?;
        if !prepare {
            self.logical_slots =
                pgm_catalog::list_logical_slots(&mut client, self.old_install.version.major)
                    .map_err(|e| Failure::new("old_catalog_failed", e))?;
        }
        drop(client);
        let new_suffix = self.tablespace_dir(false)?;
        for location in &self.tablespaces {
            let dir = Path::new(location).join(&new_suffix);
            if dir.exists() {
                return Err(Failure {
                    code: "new_tablespace_dir_exists",
                    message: format!("{} already exists", dir.display()),
                    remedy: Some("remove it (a leftover of an earlier attempt) if it holds nothing you need, and run again".into()),
                });
            }
        }
        let conn = crate::backup::conn_of(&server);
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
                .map_err(|e| Failure::new("dump_failed", e))
            })?;
            self.prepared.globals_sha256 = online::globals_digest(&globals)?;
        } else {
            pgm_catalog::dump_globals(&self.new_install, &conn, &globals, &self.log("globals.log"))
                .map_err(|e| Failure::new("dump_failed", e))?;
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
                old_relations: Vec::new(),
                new_relations: Vec::new(),
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
                .map_err(|e| Failure::new("old_catalog_failed", e))?;
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
            let relations = pgm_catalog::list_relations(&mut client, &plan.db.name, query)
                .map_err(|e| Failure::new("old_catalog_failed", e))?;
            pgm_catalog::dump_database(
                install,
                &conn,
                &plan.db.name,
                &plan.dump,
                &plan.log,
                &options,
            )
            .map_err(|e| Failure::new("dump_failed", e))?;
            if prepare {
                client.batch_execute("COMMIT").map_err(|e| {
                    Failure::new("old_catalog_failed", pgm_cluster::describe_pg_error(&e))
                })?;
            }
            drop(client);
            meter.add(1, 0);
            Ok((relations, fingerprint))
        })?;
        meter.finish();
        for (plan, (relations, fingerprint)) in self.databases.iter_mut().zip(results) {
            if let Some(fingerprint) = fingerprint {
                self.prepared.databases.push(online::PreparedDatabase {
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
        if !prepare && self.settings.after.verify.is_some() {
            // Measured next, by the same server (record-old starts the copying).
            self.report.kept_old = Some(server);
            return Ok(());
        }
        // A server someone else runs (prepare, live) is not ours to stop.
        server
            .stop()
            .map_err(|e| Failure::new("server_stop_failed", e))?;
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
    fn start_staging(&mut self) {
        let mode = self.settings.mode.transfer();
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
        let old_bases: Vec<PathBuf> = self
            .databases
            .iter()
            .filter(|plan| plan.db.tablespace_location.is_empty())
            .flat_map(|plan| {
                plan.old_relations
                    .iter()
                    .filter(|r| r.tablespace_location.is_empty())
                    .map(|r| {
                        pgm_transfer::relation_base(
                            &self.old_dir.path,
                            "",
                            "",
                            plan.db.oid,
                            r.relfilenode,
                        )
                    })
            })
            .collect();
        let copies = Arc::new(pgm_transfer::StagedCopies::new(&dir));
        let worker = {
            let copies = copies.clone();
            std::thread::spawn(move || pgm_transfer::stage(&old_bases, mode, &copies))
        };
        self.staging = Some(Staging { copies, worker });
    }

    /// `PG_<major>_<catversion>`: the per-version directory in a tablespace.
    fn tablespace_dir(&self, old: bool) -> Result<String, Failure> {
        let (major, control) = if old {
            (self.old_install.version.major, Some(&self.old_control))
        } else {
            (
                self.new_install.version.major,
                self.report.new.control.as_ref(),
            )
        };
        let control =
            control.ok_or_else(|| Failure::new("internal", "the new pg_control was not read"))?;
        Ok(format!("PG_{major}_{}", control.catalog_version))
    }

    /// New server up: template0 gets the old locale; every row analyzed and
    /// frozen, so nothing in the new catalogs depends on the new cluster's
    /// commit log, which is about to be replaced.
    fn prepare_new(&mut self) -> Result<(), Failure> {
        self.new_touched = true;
        let server = self.start_new()?;
        let locale = self
            .report
            .old
            .catalog
            .as_ref()
            .map(|c| c.template0.clone())
            .ok_or_else(|| Failure::new("internal", "the old catalog was not read"))?;
        let mut client = server
            .connect("template1")
            .map_err(|e| Failure::new("new_catalog_failed", e))?;
        pgm_catalog::set_template0_locale(
            &mut client,
            self.new_install.version.major,
            &locale.encoding,
            &locale.provider,
            &locale.collate,
            &locale.ctype,
            locale.locale.as_deref(),
        )
        .map_err(|e| Failure::new("new_catalog_failed", e))?;
        drop(client);
        let conn = self.client_conn(false);
        for option in ["--analyze", "--freeze"] {
            pgm_catalog::vacuum_all(
                &self.new_install,
                &conn,
                option,
                self.settings.jobs,
                &self.log("vacuum.log"),
            )
            .map_err(|e| Failure::new("vacuum_failed", e))?;
        }
        server
            .stop()
            .map_err(|e| Failure::new("server_stop_failed", e))
    }

    fn char_signedness(&self) -> Option<bool> {
        if self.new_install.version.major.number() < 18 {
            return None;
        }
        Some(match self.settings.set_char_signedness {
            Some(Signedness::Signed) => true,
            Some(Signedness::Unsigned) => false,
            None => self
                .old_control
                .default_char_signed
                .unwrap_or(pgm_verifier::platform_char_is_signed()),
        })
    }

    /// The old commit log and multixacts replace the new ones; the new
    /// cluster's counters continue the old ones, its OID counter too: OIDs
    /// the restore assigns then never equal one the old cluster used.
    fn handover_counters(&mut self) -> Result<(), Failure> {
        let (old, new) = (self.old_dir.path.clone(), self.new_dir().path.clone());
        if self.phase == Phase::Prepare {
            // While the old cluster runs its transaction counters and commit
            // log move on: the new cluster keeps its own until the cutover
            // (every catalog row is frozen before then); only the OID counter
            // moves past the old one's, as the restore needs.
            return pgm_catalog::set_next_oid(&self.new_install, &new, self.old_control.next_oid)
                .map_err(|e| Failure::new("handover_failed", e));
        }
        // The counters come from the old cluster as it is now, stopped for
        // the last time; the journal keeps what proves it is this very
        // cluster, so that a late resume can refuse one that ran since.
        let now = read_control(&old)?;
        if now.state != pgm_cluster::ClusterState::ShutDown {
            return Err(Failure::new(
                "handover_failed",
                format!(
                    "the old cluster's pg_control says \"{}\", not \"shut down\"",
                    now.state.describe()
                ),
            ));
        }
        if self.phase == Phase::Cutover && now.stamp() != self.old_control.stamp() {
            return Err(self.old_changed_since_verified(&now));
        }
        self.old_control = now;
        if let Some(journal) = self.journal.as_mut() {
            journal
                .record("handover", json!({ "old": self.old_control.stamp() }))
                .map_err(|e| Failure::new("journal_failed", e))?;
        }
        pgm_catalog::copy_commit_log(&old, &new).map_err(|e| Failure::new("handover_failed", e))?;
        pgm_cluster::faults::point(|| "handover-counters:commit-log-copied".into());
        pgm_catalog::copy_multixacts(&old, &new).map_err(|e| Failure::new("handover_failed", e))?;
        let wal = pgm_catalog::next_wal_file_name(&old, &self.old_control)
            .map_err(|e| Failure::new("handover_failed", e))?;
        pgm_catalog::reset_counters(
            &self.new_install,
            &new,
            &self.old_control,
            Some(&wal),
            self.char_signedness(),
        )
        .map_err(|e| Failure::new("handover_failed", e))
    }

    /// New server up: frozen horizons set to the old next XID, globals and
    /// every database's schema restored (template1 first, then `-j` at a
    /// time), the new relation map read.
    fn restore_schema(&mut self) -> Result<(), Failure> {
        let server = self.start_new()?;
        // prepare: the horizons follow the old cluster's counters only at
        // the cutover (every catalog row is frozen before then).
        if self.phase != Phase::Prepare {
            pgm_catalog::set_frozen_xids(
                |db| server.connect(db),
                self.old_control.next_xid,
                self.old_control.next_multixact,
            )
            .map_err(|e| Failure::new("restore_failed", e))?;
        }
        let conn = self.client_conn(false);
        pgm_catalog::restore_globals(
            &self.new_install,
            &conn,
            &self.output().join("dump/globals.sql"),
            &self.log("globals.log"),
        )
        .map_err(|e| Failure::new("restore_failed", e))?;
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
            .map_err(|e| Failure::new("restore_failed", e))?;
        let major = self.new_install.version.major;
        let size = pgm_catalog::restore_transaction_size(major, self.settings.jobs);
        let install = &self.new_install;
        let meter = self
            .printer
            .meter("restore-schema", self.databases.len() as u64, "databases");
        let restored = AtomicUsize::new(0);
        let restore = |plan: &DatabasePlan| -> Result<(), Failure> {
            pgm_catalog::restore_database(
                install,
                &conn,
                &plan.db.name,
                &plan.dump,
                &plan.log,
                size,
            )
            .map_err(|e| Failure::new("restore_failed", e))?;
            let restored = restored.fetch_add(1, Ordering::SeqCst) + 1;
            meter.add(1, 0);
            pgm_cluster::faults::point(|| format!("restore-schema:database:{restored}"));
            Ok(())
        };
        // template1 is dropped and re-created: nothing else may use it meanwhile.
        let (first, rest): (Vec<&DatabasePlan>, Vec<&DatabasePlan>) = self
            .databases
            .iter()
            .partition(|p| p.db.name == "template1");
        for plan in first {
            restore(plan)?;
        }
        parallel(&rest, self.settings.jobs, |plan| restore(plan))?;
        meter.finish();
        let mut client = server
            .connect("template1")
            .map_err(|e| Failure::new("new_catalog_failed", e))?;
        let new_databases = pgm_catalog::list_databases(&mut client)
            .map_err(|e| Failure::new("new_catalog_failed", e))?;
        drop(client);
        let by_name: BTreeMap<&str, &Database> =
            new_databases.iter().map(|d| (d.name.as_str(), d)).collect();
        let query = RelationQuery {
            include_sequences: !self.dump_options().sequences_in_dump(),
        };
        let lists = parallel(&self.databases, self.settings.jobs, |plan| {
            let mut client = server
                .connect(&plan.db.name)
                .map_err(|e| Failure::new("new_catalog_failed", e))?;
            let relations = pgm_catalog::list_relations(&mut client, &plan.db.name, query)
                .map_err(|e| Failure::new("new_catalog_failed", e))?;
            let outdated = pgm_catalog::outdated_extensions(&mut client, &plan.db.name)
                .map_err(|e| Failure::new("new_catalog_failed", e))?;
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
                    "relation_map_mismatch",
                    format!("database \"{}\" is missing after the restore", plan.db.name),
                )
            })?;
            plan.new_oid = new_db.oid;
            plan.new_tablespace_location = new_db.tablespace_location.clone();
            plan.new_relations = relations;
        }
        self.create_logical_slots(&server)?;
        server
            .stop()
            .map_err(|e| Failure::new("server_stop_failed", e))
    }

    /// The old cluster's logical slots, made again now: this server runs
    /// after the new cluster's last pg_resetwal, so the WAL they keep from
    /// here on stays. Their consumers continue from this position.
    fn create_logical_slots(&mut self, server: &Server) -> Result<(), Failure> {
        if self.logical_slots.is_empty() {
            return Ok(());
        }
        pgm_catalog::create_logical_slots(|db| server.connect(db), &self.logical_slots)
            .map_err(|e| Failure::new("slots_failed", e))?;
        self.printer.say(&format!(
            "  {} logical replication slots made again: {}",
            self.logical_slots.len(),
            self.logical_slots
                .iter()
                .map(|s| format!("\"{}\" ({})", s.name, s.database))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if let Some(journal) = self.journal.as_mut() {
            journal
                .record("logical-slots", json!({ "slots": self.logical_slots }))
                .map_err(|e| Failure::new("journal_failed", e))?;
        }
        Ok(())
    }

    /// Old and new relation maps must list the same relations (by OID);
    /// each pair becomes its files' moves.
    fn match_relations(&mut self) -> Result<(), Failure> {
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
                return Err(Failure::new(
                    "relation_map_mismatch",
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
                pgm_transfer::plan(&pairs).map_err(|e| Failure::new("transfer_failed", e))?,
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
                code: "swap_not_possible",
                message: format!(
                    "{} would change its name in the new cluster: --swap needs every relation file to keep its name",
                    file.display()
                ),
                remedy: Some("use --link (or --copy); nothing was changed in the old cluster".into()),
            })?;
        }
        self.save_plan()
    }

    /// Saves the transfer plan beside the journal (fsynced) before any file moves.
    fn save_plan(&self) -> Result<(), Failure> {
        let plan = SavedPlanRef {
            moves: MovesRef(&self.moves),
            databases: self.databases.iter().map(|d| d.db.name.as_str()).collect(),
            tablespaces: &self.tablespaces,
            outdated_extensions: &self.outdated_extensions,
            relations: self.relations,
        };
        let dir = crate::journal::dir(&self.new_dir().path);
        let tmp = dir.join("transfer-plan.json.tmp");
        let fail =
            |e: std::io::Error| Failure::new("journal_failed", format!("{}: {e}", tmp.display()));
        let file = std::fs::File::create(&tmp).map_err(fail)?;
        let mut writer = std::io::BufWriter::new(file);
        serde_json::to_writer(&mut writer, &plan).map_err(|e| Failure::new("journal_failed", e))?;
        let file = writer.into_inner().map_err(|e| fail(e.into_error()))?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, dir.join("transfer-plan.json")).map_err(fail)?;
        // Durable before anything depends on it (the point of no return).
        sync_dir(&dir).map_err(|e| Failure::new("journal_failed", e))
    }

    /// Link mode's point of no return: the old cluster is made unstartable
    /// (its pg_control renamed) so that nobody starts it while it shares
    /// files with the new one. A link is tried first so that a cross-device
    /// setup fails here, with the old cluster still intact.
    fn protect_old(&mut self) -> Result<(), Failure> {
        let control = self.old_dir.path.join("global/pg_control");
        let renamed = self.old_dir.path.join("global/pg_control.old");
        if !control.exists() && renamed.exists() {
            // An interrupted run got this far already.
            self.old_protected = true;
            return Ok(());
        }
        if self.phase == Phase::Cutover {
            // Nobody (a service manager, say) may have started the old
            // server again since it was verified.
            self.old_still_as_verified()?;
        }
        pgm_transfer::probe(pgm_transfer::Mode::Link, &self.old_dir.path.join("PG_VERSION"), &self.new_dir().path).map_err(|e| Failure {
            code: "link_not_possible",
            message: e.to_string(),
            remedy: Some("hard links need the old and new data directories (and tablespaces) on one filesystem: use --copy, or put the new cluster on the old one's filesystem".into()),
        })?;
        let new_control = self.new_control_stamp();
        if let Some(journal) = self.journal.as_mut() {
            journal
                .record(
                    "point_of_no_return",
                    json!({ "renamed": control, "to": renamed, "new_control": new_control }),
                )
                .map_err(|e| Failure::new("journal_failed", e))?;
        }
        // Said before it happens: an interruption now must not report an
        // old cluster that might already be disabled as untouched.
        self.old_protected = true;
        self.publish_interrupt_status();
        crate::report::park_if_interrupted();
        if let Err(e) = std::fs::rename(&control, &renamed) {
            self.old_protected = false;
            self.publish_interrupt_status();
            return Err(Failure::new(
                "protect_failed",
                format!("{}: {e}", control.display()),
            ));
        }
        // Durable before the step is journalled as done.
        sync_dir(&self.old_dir.path.join("global")).map_err(|e| Failure::new("protect_failed", e))
    }

    fn transfer(&mut self) -> Result<(), Failure> {
        if self.settings.mode == Mode::Swap {
            return self.swap();
        }
        let mode = self.settings.mode.transfer();
        let total_bytes = self.moves.iter().map(|m| m.bytes).sum();
        // The copying ahead may still be busy with one file: the transfer
        // takes everything else first (and that file last, once copied).
        let staging = self.staging.take();
        let no_copies = pgm_transfer::StagedCopies::default();
        let staged = staging.as_ref().map_or(&no_copies, |s| s.copies.as_ref());
        let meter = self
            .printer
            .meter_bytes("transfer", self.moves.len() as u64, total_bytes);
        let done = pgm_transfer::transfer(&self.moves, mode, self.settings.jobs, staged, &|p| {
            meter.set(p.files_done, p.bytes_done);
            pgm_cluster::faults::point(|| format!("transfer:file:{}", p.files_done));
        });
        if let Some(staging) = staging {
            // Copies not used (a relation the plan does not move) go.
            staging.abandon();
        }
        let done = done.map_err(|e| Failure::new("transfer_failed", e))?;
        meter.finish();
        self.transferred = (done.files_done, done.bytes_done);
        self.files_copied_ahead = done.files_ahead;
        Ok(())
    }

    /// Swap mode: whole database directories move into the new cluster.
    fn swap(&mut self) -> Result<(), Failure> {
        let dirs = pgm_transfer::swap_dirs(&self.moves).map_err(|file| {
            Failure::new(
                "swap_not_possible",
                format!("{} would change its name", file.display()),
            )
        })?;
        let total_bytes = self.moves.iter().map(|m| m.bytes).sum();
        let meter = self
            .printer
            .meter_bytes("transfer", dirs.len() as u64, total_bytes);
        let markers = crate::journal::dir(&self.new_dir().path).join("swap");
        pgm_transfer::swap(&dirs, &markers, &|done| {
            meter.set(done as u64, 0);
            pgm_cluster::faults::point(|| format!("transfer:directory:{done}"));
        })
        .map_err(|e| Failure::new("transfer_failed", e))?;
        meter.finish();
        self.transferred = (self.moves.len() as u64, total_bytes);
        Ok(())
    }

    /// The new cluster to disk. With fsync (the default) pg-migrate syncs
    /// it itself, `-j` files at a time, and skips the files whose contents
    /// were durable before the upgrade began: the old cluster's relation
    /// files that link and swap mode only gave new names (their directories
    /// are synced, which makes the names durable). syncfs goes to initdb.
    fn sync(&mut self) -> Result<(), Failure> {
        if self.settings.sync_method == SyncMethod::Fsync {
            let new = self.new_dir().path.clone();
            let mut roots = vec![new.clone()];
            // What initdb --sync-only follows: pg_wal and the tablespaces.
            if let Ok(wal) = std::fs::read_link(new.join("pg_wal")) {
                roots.push(new.join(wal));
            }
            let version_dir = self.tablespace_dir(false)?;
            if let Ok(entries) = std::fs::read_dir(new.join("pg_tblspc")) {
                for entry in entries.flatten() {
                    if let Ok(location) = std::fs::read_link(entry.path()) {
                        roots.push(location.join(&version_dir));
                    }
                }
            }
            let durable: HashSet<&Path> = if matches!(self.settings.mode, Mode::Link | Mode::Swap) {
                // The old relation files are not fsynced one by one, but
                // they are not taken on trust either (an old cluster run
                // with fsync=off, files just copied into place): one
                // syncfs per filesystem that holds them flushes whatever
                // of them is not on disk yet, and costs little when all is.
                self.sync_old_filesystems()?;
                self.moves.iter().map(|m| m.to.as_path()).collect()
            } else {
                HashSet::new()
            };
            pgm_transfer::sync_tree(&roots, &durable, self.settings.jobs)
                .map_err(|e| Failure::new("sync_failed", e))?;
            return Ok(());
        }
        let mut command = self
            .new_install
            .command(Tool::Initdb)
            .map_err(|e| Failure::new("sync_failed", e))?
            .arg("--sync-only")
            .arg("-D")
            .arg(&self.new_dir().path);
        if self.new_install.version.major.number() >= 17 {
            let method = match self.settings.sync_method {
                SyncMethod::Fsync => "fsync",
                SyncMethod::Syncfs => "syncfs",
            };
            command = command.args(["--sync-method", method]);
        }
        command.run().map_err(|e| Failure::new("sync_failed", e))?;
        Ok(())
    }

    /// syncfs(2) on every filesystem that holds the old cluster's
    /// relation files (its data directory and its tablespaces).
    fn sync_old_filesystems(&self) -> Result<(), Failure> {
        use std::os::unix::fs::MetadataExt;
        let mut places = vec![self.old_dir.path.clone()];
        places.extend(self.tablespaces.iter().map(PathBuf::from));
        let mut done = HashSet::new();
        for place in places {
            let fail = |e: String| Failure::new("sync_failed", format!("{}: {e}", place.display()));
            let dir = std::fs::File::open(&place).map_err(|e| fail(e.to_string()))?;
            let device = dir.metadata().map_err(|e| fail(e.to_string()))?.dev();
            if done.insert(device) {
                nix::unistd::syncfs(&dir).map_err(|e| fail(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Scripts for the user and the next steps. No server starts here: the
    /// restore's server was the last to run (after the last pg_resetwal, so
    /// pg_control records the real wal_level, which standbys built by rsync
    /// need), and the sync step came after it.
    fn finish(&mut self) -> Result<Vec<NextStep>, Failure> {
        let mut next = Vec::new();
        let newbin = self.new_install.bindir.clone();
        let new_path = self.new_dir().path.clone();
        next.push(NextStep::plain(format!(
            "start the new cluster: {} -D {} start",
            shell_quote(&newbin.join("pg_ctl").display().to_string()),
            shell_quote(&new_path.display().to_string())
        )));
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
                        "ALTER EXTENSION \"{}\" UPDATE;\n",
                        name.replace('"', "\"\"")
                    ));
                }
            }
            let path = scripts_dir.join("update_extensions.sql");
            std::fs::write(&path, sql)
                .map_err(|e| Failure::new("script_failed", format!("{}: {e}", path.display())))?;
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
        } else if self.new_install.version.major.number() >= 18 && !self.settings.no_statistics {
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
                .record("scripts", json!({ "reindex": reindex }))
                .map_err(|e| Failure::new("journal_failed", e))?;
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
    fn write_reindex_script(&self, dir: &Path) -> Result<Option<PathBuf>, Failure> {
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
            .map_err(|e| Failure::new("script_failed", format!("{}: {e}", path.display())))?;
        Ok(Some(path))
    }

    /// The text of `reindex_after_upgrade.sql`, when there is anything to rebuild.
    fn reindex_sql(&self) -> Option<String> {
        let (Some(old), Some(new)) = (&self.report.old.catalog, &self.report.new.catalog) else {
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
                    format_args!("\"{}\"", index.database.replace('"', "\"\""))
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
    fn write_delete_script(&self, dir: &Path) -> Option<PathBuf> {
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
    fn cleanup_output(&mut self) -> Option<PathBuf> {
        let output = self.output.clone()?;
        if self.phase == Phase::Prepare {
            if let Some(journal) = self.journal.as_mut() {
                let _ = journal.record("prepared", json!({}));
            }
            let _ = crate::journal::write_state(&self.new_dir().path, State::Prepared);
        } else {
            let new_control = self.new_control_stamp();
            if let Some(journal) = self.journal.as_mut() {
                let _ = journal.record("complete", json!({ "new_control": new_control }));
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

    fn cluster_states(&self) -> ClusterStates {
        ClusterStates {
            old: if self.old_protected {
                "protected"
            } else if self.old_live {
                "running_untouched"
            } else {
                "started_and_stopped"
            },
            new: if self.new_touched {
                "incomplete"
            } else if self.created_new {
                "created"
            } else {
                "unchanged"
            },
        }
    }

    /// What continues or undoes this run once it has a journal.
    fn recovery_commands(&self) -> String {
        let dir = quote(&self.new_dir().path);
        match self.phase {
            Phase::Full => recovery_commands(&self.new_dir().path),
            Phase::Prepare => format!(
                "run the same pg-migrate prepare again (it starts over), or throw it away: pg-migrate discard -D {dir}"
            ),
            Phase::Cutover => format!(
                "continue with: pg-migrate cutover -D {dir}; or go back with: pg-migrate revert -D {dir}"
            ),
        }
    }

    fn with_recovery_advice(&self, mut failure: Failure) -> Failure {
        let new = self.settings.new_datadir.display();
        let mut advice = Vec::new();
        if let Some(remedy) = failure.remedy.take() {
            advice.push(remedy);
        }
        if self.output.is_some() {
            advice.push(format!("the logs are in {}", self.log_dir().display()));
        }
        if self.journal.is_some() {
            advice.push(self.recovery_commands());
        } else if self.new_touched {
            if self.created_new {
                advice.push(format!("remove the half-made new cluster (pg-migrate created it: rm -rf {new}) and run again; pg-migrate will create it afresh"));
            } else {
                advice.push(format!("the new cluster is half-made: remove it (rm -rf {new}), re-create it with initdb as before, and run again"));
            }
        }
        if self.old_protected && self.settings.mode == Mode::Swap {
            // Renaming pg_control back is not enough: directories may have moved.
            advice.push(format!(
                "the old cluster is disabled and some of its database directories may now be in the new cluster: to go back, run pg-migrate revert -D {} (only while the new cluster has never been started); do not rename its pg_control by hand",
                self.new_dir().path.display()
            ));
        } else if self.old_protected {
            advice.push(format!(
                "the old cluster is intact but disabled: to start it again, rename {0}/global/pg_control.old back to pg_control (only while the new cluster has never been started)",
                self.old_dir.path.display()
            ));
        } else {
            advice.push("the old cluster is unchanged and can be started as before".into());
        }
        failure.remedy = Some(advice.join("; "));
        failure
    }
}

/// initdb's authentication for a cluster pg-migrate creates: local
/// connections by the install user's own OS account, passwords over TCP;
/// trust (with a warning) only when the names differ and nothing else works.
pub fn initdb_auth(printer: &Printer, user: &str) -> Vec<String> {
    let os_user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name);
    if os_user.as_deref() == Some(user) {
        return vec![
            "--auth-local=peer".to_string(),
            "--auth-host=scram-sha-256".to_string(),
        ];
    }
    printer.say(&format!(
        "warning: the new cluster's pg_hba.conf trusts local connections, because the install user \"{user}\" is not this OS user; review it before starting the server"
    ));
    vec!["--auth=trust".to_string()]
}

/// Removes the `dump` directory of every run in `journal_dir` but `current`.
fn remove_earlier_dumps(journal_dir: &Path, current: &Path) {
    let Ok(entries) = std::fs::read_dir(journal_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let run = entry.path();
        if run != current && entry.file_name().to_string_lossy().starts_with("run-") {
            let _ = std::fs::remove_dir_all(run.join("dump"));
        }
    }
}

/// Makes the names in a directory durable (after a rename in it).
pub fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// A path as a shell word, for the commands we print.
pub fn quote(path: &Path) -> String {
    shell_quote(&path.display().to_string())
}

/// A `\connect` line for psql that reaches exactly the database `name`.
/// psql takes single-quoted text with doubled quotes and C-like backslash
/// escapes; a name with `=` (or a URI prefix) would be read as a
/// connection string, so such a name is given as one (`dbname='…'`).
fn psql_connect(name: &str) -> String {
    let psql_literal = |text: &str| {
        format!(
            "'{}'",
            text.replace('\\', "\\\\")
                .replace('\'', "''")
                .replace('\n', "\\n")
                .replace('\r', "\\r")
        )
    };
    let conninfo_like =
        name.contains('=') || name.starts_with("postgres://") || name.starts_with("postgresql://");
    if conninfo_like {
        let value = name.replace('\\', "\\\\").replace('\'', "\\'");
        format!("\\connect {}", psql_literal(&format!("dbname='{value}'")))
    } else {
        format!("\\connect {}", psql_literal(name))
    }
}

/// The commands that continue or undo an interrupted upgrade of `new_datadir`.
pub fn recovery_commands(new_datadir: &Path) -> String {
    let dir = shell_quote(&new_datadir.display().to_string());
    format!(
        "continue with: pg-migrate resume -D {dir}; or go back with: pg-migrate revert -D {dir}"
    )
}

/// Runs `f` on every item, `jobs` at a time, keeping the input order in the
/// results; the first failure wins.
pub(crate) fn parallel<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> Result<R, Failure> + Sync,
) -> Result<Vec<R>, Failure> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    let failure: Mutex<Option<Failure>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| loop {
                if failure.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                match f(item) {
                    Ok(r) => results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r),
                    Err(e) => {
                        failure
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        break;
                    }
                }
            });
        }
    });
    if let Some(f) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(f);
    }
    Ok(results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every item produced a result"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_reach_any_database_name() {
        assert_eq!(psql_connect("shop"), "\\connect 'shop'");
        assert_eq!(psql_connect("it's"), "\\connect 'it''s'");
        assert_eq!(psql_connect("a\\b"), "\\connect 'a\\\\b'");
        assert_eq!(psql_connect("two\nlines"), "\\connect 'two\\nlines'");
        // Read as a connection string otherwise.
        assert_eq!(
            psql_connect("x=1 it's"),
            "\\connect 'dbname=''x=1 it\\\\''s'''"
        );
    }
}
