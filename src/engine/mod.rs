//! The upgrade, as the ordered list of named steps it is. Each step is
//! announced, timed and recorded in the journal; everything before
//! `protect-old` leaves the old cluster as it was, and in link mode nothing
//! after it happens unless everything before it succeeded.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pgm_catalog::{Database, DumpOptions, RelationList, RelationQuery};
use pgm_cluster::command::{shell_quote, PgCommand};
use pgm_cluster::server::Endpoint;
use pgm_cluster::{ControlFile, DataDir, Installation, Server, ServerOptions, Tool};
use pgm_transfer::{FileMove, RelationFiles};
use pgm_verifier::{CheckConfig, Report};

use crate::cli::{Method, Mode, Settings, Signedness, SyncMethod};
use crate::exit;
use crate::journal::{Journal, JournalView, Record, State};
use crate::output::ClusterCondition;
use crate::output::{ClusterStates, Event, Printer, StepStatus};
use crate::rundir::RunDir;

mod online;
mod plan;
mod state;
mod steps;
mod support;

pub use crate::support::{parallel, quote, sync_dir};
pub use plan::{read_control, Plan};
pub use support::{initdb_auth, recovery_commands};
use support::{psql_connect, remove_earlier_dumps};

pub use online::stop_old_server;
use state::{DatabasePlan, Horizons, Staging};

/// Which part of an upgrade a run does: all of it, or the halves of the
/// online mode (`prepare` while the old cluster serves, `cutover` in the
/// window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Full,
    Prepare,
    Cutover,
}

pub use crate::failure::{Code, Failure};

/// A failed upgrade: why, the state of each cluster, the exit status, and
/// where the logs are.
pub struct Failed {
    pub failure: Failure,
    /// The step that failed (none: before the first).
    pub step: Option<&'static str>,
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

/// Marks the advice to make a standby kit (moot once one was written, or
/// once the new cluster ran).
pub const STANDBY_KIT_ADVICE: &str = "standby-kit";

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
    pub backup: Option<crate::output::BackupCounts>,
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
    /// The checks' report, for the checks of a new cluster pg-migrate
    /// creates (a run that continues a journal has none).
    checks: Option<Report>,
    /// The old server the checks (or an earlier step) left running, handed
    /// on to the next step that needs it.
    old_server: Option<Server>,
    new_control: Option<ControlFile>,
    new_to_create: bool,
    old_catalog: Option<pgm_verifier::CatalogFacts>,
    new_catalog: Option<pgm_verifier::CatalogFacts>,
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
    /// The restore being made ready while the steps before it run.
    restore_planning: Option<steps::RestorePlanning>,
    /// Per database, the extensions whose installed version is older than
    /// the new installation's default (read while the restore's server runs).
    outdated_extensions: BTreeMap<String, Vec<String>>,
    /// Set once the new cluster differs from what initdb made.
    new_touched: bool,
    created_new: bool,
    /// Link mode: the old cluster's pg_control has been renamed.
    old_protected: bool,
    /// The step that failed, for the error event.
    failed_step: Option<&'static str>,
    transferred: (u64, u64),
    files_copied_ahead: u64,
    /// Relations whose files the plan moves.
    relations: usize,
    /// Steps an earlier run finished (a resumed run skips them).
    done: BTreeSet<String>,
    /// Whether this run continues a journal (resume) rather than starting one.
    resuming: bool,
    /// `--backup-dir`: the backup this run wrote.
    backup: Option<crate::output::BackupCounts>,
    phase: Phase,
    /// prepare: what the old catalog looked like, for the cutover to compare.
    prepared: crate::journal::PreparedState,
    /// prepare: the old server is someone else's, running (only queried).
    old_live: bool,
    /// cutover: the old cluster's freeze horizons, read as it was verified.
    horizons: Option<Horizons>,
    /// cutover: the old cluster's pg_control when a cutover verified it.
    cutover_old_stamp: Option<pgm_cluster::ControlStamp>,
    /// The script `finish` wrote for collation-dependent indexes.
    reindex_script: Option<PathBuf>,
    /// Every script `finish` wrote (for the summary).
    scripts: Vec<PathBuf>,
    /// The old cluster's logical replication slots (17 and later), made
    /// again in the new cluster by the restore's server.
    logical_slots: Vec<pgm_catalog::LogicalSlot>,
    /// The old cluster's physical slots, made again for its standbys.
    physical_slots: Vec<String>,
}

/// What a signal handler needs to report an interrupted upgrade.
#[derive(Clone)]
pub struct Interruptible {
    pub new_datadir: PathBuf,
    pub clusters: ClusterStates,
    pub exit_code: i32,
    pub resume: String,
    /// A standby's upgrade (`pg-migrate standby`): its own journal.
    pub standby: bool,
}

pub static INTERRUPT: Mutex<Option<Interruptible>> = Mutex::new(None);

/// Tells the signal handler that a revert is changing the clusters: an
/// interruption now leaves a revert to finish, not "nothing changed".
pub fn publish_revert_in_progress(new_datadir: &Path, old_protected: bool) {
    let status = Interruptible {
        new_datadir: new_datadir.to_path_buf(),
        clusters: ClusterStates {
            old: if old_protected { ClusterCondition::Protected } else { ClusterCondition::Unchanged },
            new: ClusterCondition::Incomplete,
        },
        exit_code: exit::FAILED_NEEDS_RECOVERY,
        resume: format!(
            "the revert was cut short; finish it: pg-migrate revert -D {} (every part of it can be repeated)",
            quote(new_datadir)
        ),
        standby: false,
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
    /// An engine for the plan; `old_server` is a running old server
    /// handed on to the first step that needs it, `checks` the checks'
    /// report (for the checks of a new cluster pg-migrate creates).
    pub fn new(
        settings: &'a Settings,
        printer: &'a Printer,
        run_dir: &'a RunDir,
        config: CheckConfig,
        plan: Plan,
        old_server: Option<Server>,
        checks: Option<Report>,
    ) -> Engine<'a> {
        let Plan {
            old_install,
            new_install,
            old_dir,
            old_control,
            new_dir,
            new_control,
            new_to_create,
            old_catalog,
            new_catalog,
        } = plan;
        Engine {
            settings,
            printer,
            run_dir,
            config,
            checks,
            old_server,
            new_control,
            new_to_create,
            old_catalog,
            new_catalog,
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
            restore_planning: None,
            outdated_extensions: BTreeMap::new(),
            new_touched: false,
            created_new: false,
            old_protected: false,
            failed_step: None,
            transferred: (0, 0),
            files_copied_ahead: 0,
            relations: 0,
            done: BTreeSet::new(),
            resuming: false,
            backup: None,
            reindex_script: None,
            scripts: Vec::new(),
            phase: Phase::Full,
            prepared: crate::journal::PreparedState::default(),
            old_live: false,
            horizons: None,
            cutover_old_stamp: None,
            logical_slots: Vec::new(),
            physical_slots: Vec::new(),
        }
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
    pub fn old_state(&self) -> ClusterCondition {
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
        let plan = Plan::from_journal(settings)?;
        let mut engine = Engine::new(settings, printer, run_dir, config, plan, None, None);
        engine.resuming = true;
        let global = engine.old_dir.path.join("global");
        engine.old_protected =
            !global.join("pg_control").exists() && global.join("pg_control.old").exists();
        engine.created_new = journal.plan().is_some_and(|p| p.created_new);
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
        let saved =
            crate::journal::read_transfer_plan(&engine.new_dir().path).ok_or_else(|| {
                Failure::new(
                    Code::ResumeFailed,
                    format!(
                        "{} is missing or damaged",
                        crate::journal::transfer_plan_path(&engine.new_dir().path).display()
                    ),
                )
            })?;
        engine.moves = saved.moves;
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
        if let Some(planning) = self.restore_planning.take() {
            // Its pg_restore writes into this run's directory: done before
            // the failure is told, as nothing of the run may go on after.
            let _ = planning.join();
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
                let _ = journal.record(Record::Failed {
                    code: failure.code.as_str().to_string(),
                    message: failure.message.clone(),
                });
            }
            if self.journal.is_some() {
                let _ = crate::journal::write_state(&self.new_dir().path, State::Failed);
            }
            *INTERRUPT.lock().unwrap_or_else(|e| e.into_inner()) = None;
            Box::new(Failed {
                failure: self.with_recovery_advice(failure),
                step: self.failed_step,
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
        if self.new_to_create {
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
                status: StepStatus::Skipped,
                duration_ms: 0,
            });
            return Ok(());
        }
        crate::output::park_if_interrupted();
        pgm_cluster::faults::point(|| format!("before:{name}"));
        self.printer.emit(&Event::StepStart { step: name });
        let started = Instant::now();
        let result = f(self);
        if result.is_err() {
            self.failed_step = Some(name);
        }
        self.publish_interrupt_status();
        let duration_ms = started.elapsed().as_millis() as u64;
        self.printer.emit(&Event::StepEnd {
            step: name,
            status: StepStatus::of(&result),
            duration_ms,
        });
        if result.is_ok() {
            let new_control = self.new_control_stamp();
            if let Some(journal) = self.journal.as_mut() {
                journal
                    .record(Record::Step {
                        step: name.to_string(),
                        duration_ms,
                        new_control,
                    })
                    .map_err(|e| Failure::new(Code::JournalFailed, e))?;
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
            standby: false,
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

    fn client_conn(&self, old: bool) -> Endpoint {
        Endpoint {
            socket_dir: self.run_dir.socket_dir(old),
            port: if old {
                self.settings.old_port
            } else {
                self.settings.new_port
            },
            user: self.settings.user.clone(),
        }
    }

    fn start_old(&self) -> Result<Server, Failure> {
        Server::start(&self.old_install, &self.old_dir, &self.server_options(true))
            .map_err(|e| Failure::new(Code::ServerStartFailed, e))
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
        self.note_new_control(Record::NewServer)
    }

    /// Notes in the journal that pg-migrate is about to change the new
    /// pg_control itself (`new_server`: a server it starts;
    /// `new_control_changing`: pg_resetwal), so that a run killed meanwhile
    /// is not taken for a stranger's start of the new cluster.
    pub(in crate::engine) fn note_new_control(&mut self, record: Record) -> Result<(), Failure> {
        if let Some(journal) = self.journal.as_mut() {
            journal
                .record(record)
                .map_err(|e| Failure::new(Code::JournalFailed, e))?;
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
        .map_err(|e| Failure::new(Code::ServerStartFailed, e))
    }

    fn cluster_states(&self) -> ClusterStates {
        ClusterStates {
            old: if self.old_protected {
                ClusterCondition::Protected
            } else if self.old_live {
                ClusterCondition::RunningUntouched
            } else {
                ClusterCondition::StartedAndStopped
            },
            new: if self.new_touched {
                ClusterCondition::Incomplete
            } else if self.created_new {
                ClusterCondition::Created
            } else {
                ClusterCondition::Unchanged
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
        let new = self.settings.new_datadir().display();
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
