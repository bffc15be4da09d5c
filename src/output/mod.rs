//! All output goes through the [`Printer`]: NDJSON events on stdout under
//! `--json` (and nothing else there), text for people on stderr always.
//! The event types here are the documented schema (docs/json-status.md).

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::failure::Code;
pub use crate::failure::{ClusterCondition, ClusterStates};

mod human;
use human::human;
mod heartbeat;
mod notice;
pub use notice::NoticeCode;

/// Set by the signal handler: from then on only its own thread reports (the
/// interrupted work would otherwise report the failures the interruption
/// causes, e.g. a restore whose server was just stopped).
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

thread_local! {
    /// Marks the signal handler's thread.
    pub static REPORTS_INTERRUPTION: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Blocks the calling thread for good if an interruption is being reported
/// by the signal handler, which ends the process.
pub fn park_if_interrupted() {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
        && !REPORTS_INTERRUPTION.with(|r| r.get())
    {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Bumped only by a deliberate, documented change of the event schema.
pub const SCHEMA_VERSION: u32 = 1;

/// One status event. Every event carries `schema` and `event`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// What will be done, with which clusters; always the first event of a run
    /// whose flags parsed.
    Plan {
        command: &'static str,
        #[schemars(with = "String")]
        mode: crate::cli::Mode,
        old: PlanSide,
        new: PlanSide,
        user: String,
        jobs: usize,
        run_dir: String,
        live_check_allowed: bool,
        /// `--backup-dir`, where given.
        #[serde(skip_serializing_if = "Option::is_none")]
        backup_dir: Option<String>,
        /// What the run will do to a running cluster (prepare's locks).
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    StepStart {
        step: &'static str,
    },
    /// pg-migrate created the new cluster with this initdb command.
    Initdb {
        command: String,
        datadir: String,
    },
    /// How far a long step is.
    Progress {
        step: &'static str,
        done: u64,
        total: u64,
        unit: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes_done: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes_total: Option<u64>,
    },
    StepEnd {
        step: &'static str,
        status: StepStatus,
        duration_ms: u64,
    },
    /// One check's verdict.
    Check {
        id: &'static str,
        title: &'static str,
        status: pgm_verifier::Status,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<&'static str>,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        remedy: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        objects: Vec<pgm_verifier::ObjectRef>,
    },
    /// One post-upgrade script run (or skipped, having run before).
    Script {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        database: Option<String>,
        status: &'static str,
        duration_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Something the operator should know that is neither progress nor a
    /// failure: a setting pg-migrate chose for them, objects it made again,
    /// a `-j` it could not use, and why. `code` is stable.
    Notice {
        code: NoticeCode,
        message: String,
    },
    /// One change `--carry-config` made to a setting while carrying it.
    ConfigChange {
        file: String,
        setting: String,
        action: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        old_value: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        new_setting: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        new_value: Option<String>,
        reason: String,
    },
    /// `--verify`: how the new cluster compares with the old one.
    Verify {
        outcome: pgm_verifier::proof::Outcome,
        /// Where the old side was measured: `before_transfer` (recorded by
        /// the upgrade) or `now` (copy modes, after the fact).
        old_measured: &'static str,
        rules: Vec<pgm_verifier::proof::RuleUse>,
        tables: usize,
        sampled_tables: usize,
        sequences: usize,
        large_objects: i64,
        difference_count: usize,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        differences: Vec<String>,
        report: String,
    },
    /// `patroni`: one step of the cluster's upgrade on one member.
    Member {
        member: String,
        role: &'static str,
        step: &'static str,
        status: StepStatus,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Why the run failed, and in what state it leaves each cluster.
    Error {
        code: Code,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        remedy: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        causes: Vec<Cause>,
        clusters: ClusterStates,
        /// The step that failed, when a step did.
        #[serde(skip_serializing_if = "Option::is_none")]
        step: Option<String>,
        /// The log that says more: the file the message names, else the
        /// run's log directory.
        #[serde(skip_serializing_if = "Option::is_none")]
        log: Option<String>,
    },
    /// Always the last event.
    Summary {
        command: &'static str,
        result: RunResult,
        exit_code: i32,
        duration_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        checks: Option<CheckCounts>,
        #[serde(skip_serializing_if = "Option::is_none")]
        old_version: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        new_version: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        upgrade: Option<UpgradeCounts>,
        #[serde(skip_serializing_if = "Option::is_none")]
        backup: Option<BackupCounts>,
        #[serde(skip_serializing_if = "Option::is_none")]
        restore: Option<BackupCounts>,
        #[serde(skip_serializing_if = "Option::is_none")]
        after: Option<Vec<AfterStep>>,
        /// `standby-kit`: the kit written.
        #[serde(skip_serializing_if = "Option::is_none")]
        kit: Option<Box<KitCounts>>,
        /// `standby`: what the standby's upgrade did.
        #[serde(skip_serializing_if = "Option::is_none")]
        standby: Option<Box<StandbyCounts>>,
        /// `patroni`: the cluster and each member's result.
        #[serde(skip_serializing_if = "Option::is_none")]
        patroni: Option<Box<PatroniSummary>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        logs: Option<String>,
        next_steps: Vec<String>,
    },
}

impl Event {
    /// The `error` event of checks that failed: how many, which, the first
    /// one's message and remedy, and each as a cause.
    pub fn checks_failed(failed: &[&pgm_verifier::Finding], clusters: ClusterStates) -> Event {
        let names: Vec<&str> = failed.iter().map(|f| f.id).collect();
        let first = failed.first();
        Event::Error {
            code: Code::ChecksFailed,
            message: format!(
                "{} check{} failed: {}; first: {}",
                failed.len(),
                if failed.len() == 1 { "" } else { "s" },
                names.join(", "),
                first.map(|f| f.message.as_str()).unwrap_or("")
            ),
            remedy: first.and_then(|f| f.remedy.clone()),
            causes: failed
                .iter()
                .map(|f| Cause {
                    check: f.id,
                    code: f.code.unwrap_or("failed"),
                })
                .collect(),
            clusters,
            step: Some("checks".into()),
            log: None,
        }
    }

    /// The `step_end` of a step begun at `started`.
    pub fn step_end(step: &'static str, ok: bool, started: std::time::Instant) -> Event {
        Event::StepEnd {
            step,
            status: if ok {
                StepStatus::Ok
            } else {
                StepStatus::Failed
            },
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// The `check` event of one finding.
    pub fn check(f: &pgm_verifier::Finding) -> Event {
        Event::Check {
            id: f.id,
            title: f.title,
            status: f.status,
            code: f.code,
            message: f.message.clone(),
            remedy: f.remedy.clone(),
            objects: f.objects.clone(),
        }
    }

    /// The `config_change` event of one setting carried from `file`.
    pub fn config_change(file: &str, change: crate::config::Change) -> Event {
        Event::ConfigChange {
            file: file.to_string(),
            setting: change.setting,
            action: change.action,
            old_value: change.old_value,
            new_setting: change.new_setting,
            new_value: change.new_value,
            reason: change.reason,
        }
    }

    /// The `error` event of a failure, leaving the clusters as `clusters`
    /// says (a failure that knows better says so itself).
    pub fn failure(failure: crate::failure::Failure, clusters: ClusterStates) -> Event {
        Event::failure_in_step(failure, clusters, None, None)
    }

    /// [`Event::failure`] of a step, with the run's log directory for when
    /// the message names no log file of its own.
    pub fn failure_in_step(
        failure: crate::failure::Failure,
        clusters: ClusterStates,
        step: Option<&str>,
        log_dir: Option<&std::path::Path>,
    ) -> Event {
        let log = log_named_in(&failure.message)
            .or_else(|| failure.remedy.as_deref().and_then(log_named_in))
            .or_else(|| log_dir.map(|d| d.display().to_string()));
        Event::Error {
            code: failure.code,
            message: failure.message,
            remedy: failure.remedy,
            causes: Vec::new(),
            clusters: failure.clusters.unwrap_or(clusters),
            step: step.map(str::to_string),
            log,
        }
    }

    /// A summary that says only how the command ended (and what to do
    /// next): one that ran into an error before it did anything to report,
    /// or a revert.
    pub fn bare_summary(
        command: &'static str,
        result: RunResult,
        exit_code: i32,
        started: std::time::Instant,
        next_steps: Vec<String>,
    ) -> Event {
        Event::Summary {
            command,
            result,
            exit_code,
            duration_ms: started.elapsed().as_millis() as u64,
            checks: None,
            old_version: None,
            new_version: None,
            upgrade: None,
            backup: None,
            restore: None,
            kit: None,
            standby: None,
            patroni: None,
            after: None,
            logs: None,
            next_steps,
        }
    }
}

/// What `patroni` did to the cluster.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PatroniSummary {
    pub scope: String,
    pub leader: String,
    pub old_system_identifier: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_system_identifier: Option<String>,
    pub members: Vec<MemberResult>,
    /// The old cluster's backups cannot restore the new one.
    pub base_backup_needed: bool,
}

/// One member's result.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct MemberResult {
    pub name: String,
    pub role: &'static str,
    /// `upgraded`, `put_back` (on the old major, as before), `left_stopped`
    /// (not upgraded; see `reinit`) or `not_reached`.
    pub result: &'static str,
    pub data_dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How to rebuild a member left stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reinit: Option<String>,
}

/// A backup written (backup, `--backup-dir`) or restored (restore).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct BackupCounts {
    pub dir: String,
    pub databases: usize,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_aside: Option<String>,
}

/// How one step after the upgrade ended.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AfterStep {
    pub step: &'static str,
    pub status: StepStatus,
}

/// How a command ended: the summary's `result` (docs/json-status.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    Ok,
    Reverted,
    ChecksFailed,
    /// Upgraded, but a step after it failed (exit status 5).
    AfterStepFailed,
    /// Upgraded, but `--verify` found unexplained differences (exit status 6).
    VerifyFailed,
    Error,
}

impl RunResult {
    /// The result an exit status stands for where the status alone says it.
    pub fn of_exit(exit_code: i32) -> RunResult {
        match exit_code {
            crate::exit::SUCCESS => RunResult::Ok,
            crate::exit::CHECKS_FAILED => RunResult::ChecksFailed,
            _ => RunResult::Error,
        }
    }
}

/// How a step ended (`step_end` events, the summary's `after` list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Ok,
    Failed,
    /// Done by an earlier run of the same upgrade (a resume).
    Skipped,
    /// A step after the upgrade not run because an earlier one failed.
    NotRun,
}

impl StepStatus {
    pub fn of<T, E>(result: &Result<T, E>) -> StepStatus {
        if result.is_ok() {
            StepStatus::Ok
        } else {
            StepStatus::Failed
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Ok => "ok",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::NotRun => "not_run",
        }
    }
}

/// What an upgrade carried.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct UpgradeCounts {
    #[schemars(with = "String")]
    pub mode: crate::cli::Mode,
    pub method: crate::cli::Method,
    pub databases: usize,
    pub relations: usize,
    pub files: u64,
    /// Copy modes: files copied while the catalog was restored.
    pub files_copied_ahead: u64,
    pub bytes: u64,
    /// The scripts the upgrade wrote for the operator (in `NEW/pg_migrate.d`).
    pub scripts: Vec<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct PlanSide {
    pub bindir: String,
    pub datadir: String,
    pub port: u16,
}

impl PlanSide {
    pub fn new(bindir: &std::path::Path, datadir: &std::path::Path, port: u16) -> PlanSide {
        PlanSide {
            bindir: bindir.display().to_string(),
            datadir: datadir.display().to_string(),
            port,
        }
    }

    /// A side the command may go without: an absent path is an empty string.
    pub fn maybe(
        bindir: Option<&std::path::Path>,
        datadir: Option<&std::path::Path>,
        port: u16,
    ) -> PlanSide {
        let text = |p: Option<&std::path::Path>| p.map(|p| p.display().to_string());
        PlanSide {
            bindir: text(bindir).unwrap_or_default(),
            datadir: text(datadir).unwrap_or_default(),
            port,
        }
    }
}

/// A failed check behind an error.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Cause {
    pub check: &'static str,
    /// The check's problem code (docs/checks.md), not an error code.
    pub code: &'static str,
}

/// `standby-kit`'s summary.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct KitCounts {
    /// The file written, or `-` for stdout.
    pub path: String,
    /// Files of the new cluster in the kit, and their bytes.
    pub files: usize,
    pub bytes: u64,
    /// The kit's own size (compressed), when written to a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kit_bytes: Option<u64>,
    /// Relation files in the map (the standbys' own, linked).
    pub relation_files: usize,
    pub relation_bytes: u64,
    /// Physical slots the new primary keeps for its standbys.
    pub slots: Vec<String>,
}

/// `standby`'s summary.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct StandbyCounts {
    /// The standby's relation files linked into the new data directory.
    pub linked: u64,
    /// The kit's files installed.
    pub kit_files: u64,
    /// Files of unlogged relations a standby does not hold.
    pub unlogged_left_out: usize,
}

#[derive(Debug, Default, Serialize, schemars::JsonSchema)]
pub struct CheckCounts {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub skip: usize,
}

#[derive(Serialize, schemars::JsonSchema)]
struct Envelope<'a> {
    schema: u32,
    time_ms: u64,
    #[serde(flatten)]
    event: &'a Event,
    /// On the summary: pg-migrate's own peak memory (its servers and the
    /// tools it runs not included).
    #[serde(skip_serializing_if = "Option::is_none")]
    peak_rss_bytes: Option<u64>,
}

/// The JSON Schema of every line `--json` writes (docs/events.schema.json
/// is this, written by `pg-migrate generate event-schema`).
pub fn event_schema() -> serde_json::Value {
    // What pg-migrate writes (a field skipped when empty is not required),
    // not what it would read.
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<Envelope<'static>>();
    schema.insert(
        "title".into(),
        "pg-migrate --json: one event per line".into(),
    );
    schema.to_value()
}

/// This process's peak resident set size, from /proc/self/status (VmHWM).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub struct Printer {
    json: bool,
    heartbeat: heartbeat::Heartbeat,
    /// The reason of the last skipped check, so that a run of checks skipped
    /// for one reason states it once.
    last_skip: Mutex<Option<String>>,
}

impl Printer {
    pub fn new(json: bool) -> Printer {
        Printer {
            json,
            heartbeat: heartbeat::Heartbeat::new(),
            last_skip: Mutex::new(None),
        }
    }

    /// Emits one event as a JSON line (under `--json`) and as text for people.
    pub fn emit(&self, event: &Event) {
        park_if_interrupted();
        match event {
            Event::StepStart { step } => self.heartbeat.step_started(step),
            // A failure ends the step too: what follows (a revert, the
            // summary) is not that step still running.
            Event::StepEnd { .. } | Event::Error { .. } | Event::Summary { .. } => {
                self.heartbeat.step_ended()
            }
            _ => {}
        }
        if self.json {
            let time_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let line = serde_json::to_string(&Envelope {
                schema: SCHEMA_VERSION,
                time_ms,
                event,
                peak_rss_bytes: matches!(event, Event::Summary { .. })
                    .then(peak_rss_bytes)
                    .flatten(),
            })
            .unwrap_or_else(|e| format!("{{\"schema\":{SCHEMA_VERSION},\"event\":\"error\",\"code\":\"internal\",\"message\":\"{e}\"}}"));
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        let skip_reason = match event {
            Event::Check {
                status: pgm_verifier::Status::Skip,
                message,
                ..
            } => Some(message.clone()),
            _ => None,
        };
        let repeated = skip_reason.is_some()
            && *self.last_skip.lock().unwrap_or_else(|e| e.into_inner()) == skip_reason;
        if let Some(text) = human(event, repeated) {
            self.say(&text);
        }
        *self.last_skip.lock().unwrap_or_else(|e| e.into_inner()) = skip_reason;
    }

    /// A `notice` event: under `--json` a line a wrapper can act on, and
    /// for people the message on stderr.
    pub fn notice(&self, code: NoticeCode, message: String) {
        self.emit(&Event::Notice { code, message });
    }

    /// Text for people only (stderr).
    pub fn say(&self, text: &str) {
        self.heartbeat.said_something();
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{text}");
    }
}

/// One line of a command's own answer on stdout (not a status event).
pub fn write_stdout_line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Progress of a long step: throttled `progress` events, and a bar on a
/// terminal when no JSON is asked for.
pub struct ProgressMeter<'a> {
    printer: &'a Printer,
    step: &'static str,
    unit: &'static str,
    total: std::sync::atomic::AtomicU64,
    bytes_total: Option<u64>,
    done: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
    last: Mutex<std::time::Instant>,
    started: std::time::Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl Printer {
    pub fn meter(&self, step: &'static str, total: u64, unit: &'static str) -> ProgressMeter<'_> {
        self.make_meter(step, total, unit, None)
    }

    /// A meter without a bar, for a step that prints its own line per unit
    /// (the checks): its events, and the line of a log without a terminal.
    pub fn meter_without_bar(
        &self,
        step: &'static str,
        total: u64,
        unit: &'static str,
    ) -> ProgressMeter<'_> {
        let mut meter = self.make_meter(step, total, unit, None);
        meter.bar = None;
        meter
    }

    pub fn meter_bytes(&self, step: &'static str, files: u64, bytes: u64) -> ProgressMeter<'_> {
        self.make_meter(step, files, "files", Some(bytes))
    }

    fn make_meter(
        &self,
        step: &'static str,
        total: u64,
        unit: &'static str,
        bytes_total: Option<u64>,
    ) -> ProgressMeter<'_> {
        use std::io::IsTerminal;
        let bar = (!self.json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(bytes_total.unwrap_or(total));
            // Only bytes come at a steady enough pace to foretell the end:
            // objects, tables and databases differ too much in cost (a
            // restore's first objects, its databases, take longest).
            let template = if bytes_total.is_some() {
                "  {prefix} [{bar:30}] {bytes}/{total_bytes} ({steady_eta})"
            } else {
                "  {prefix} [{bar:30}] {pos}/{len} ({elapsed})"
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> ").with_key(
                    "steady_eta",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let eta = heartbeat::steady_eta(
                            state.elapsed(),
                            state.pos(),
                            state.len().unwrap_or(0),
                        );
                        let _ = match eta {
                            Some(eta) => {
                                write!(w, "about {} to go", heartbeat::duration_words(eta))
                            }
                            None => write!(w, "{}", heartbeat::duration_words(state.elapsed())),
                        };
                    },
                ));
            }
            bar.set_prefix(step);
            bar
        });
        ProgressMeter {
            printer: self,
            step,
            unit,
            total: total.into(),
            bytes_total,
            done: 0.into(),
            bytes: 0.into(),
            last: Mutex::new(std::time::Instant::now()),
            started: std::time::Instant::now(),
            bar,
        }
    }
}

impl ProgressMeter<'_> {
    /// More units than the meter was made with (a step that learns its
    /// total as it goes: the tables of each database it measures).
    pub fn grow(&self, more: u64) {
        use std::sync::atomic::Ordering;
        let total = self.total.fetch_add(more, Ordering::SeqCst) + more;
        if let Some(bar) = &self.bar {
            if self.bytes_total.is_none() {
                bar.set_length(total);
            }
        }
    }

    pub fn add(&self, done: u64, bytes: u64) {
        use std::sync::atomic::Ordering;
        let d = self.done.fetch_add(done, Ordering::SeqCst) + done;
        let b = self.bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.report(d, b, false);
    }

    pub fn set(&self, done: u64, bytes: u64) {
        use std::sync::atomic::Ordering;
        self.done.fetch_max(done, Ordering::SeqCst);
        self.bytes.fetch_max(bytes, Ordering::SeqCst);
        self.report(done, bytes, false);
    }

    pub fn finish(&self) {
        use std::sync::atomic::Ordering;
        self.report(
            self.done.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
            true,
        );
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn report(&self, done: u64, bytes: u64, last: bool) {
        if let Some(bar) = &self.bar {
            bar.set_position(if self.bytes_total.is_some() {
                bytes
            } else {
                done
            });
        }
        let mut previous = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if !last && previous.elapsed() < Duration::from_millis(250) {
            return;
        }
        *previous = std::time::Instant::now();
        let total = self.total.load(std::sync::atomic::Ordering::SeqCst);
        self.printer.heartbeat.read(heartbeat::Reading {
            done,
            total,
            unit: self.unit,
            bytes: self.bytes_total.map(|total| (bytes, total)),
            eta: self
                .bytes_total
                .and_then(|total| heartbeat::steady_eta(self.started.elapsed(), bytes, total)),
        });
        if self.printer.json {
            self.printer.emit(&Event::Progress {
                step: self.step,
                done,
                total,
                unit: self.unit,
                bytes_done: self.bytes_total.map(|_| bytes),
                bytes_total: self.bytes_total,
            });
        }
    }
}

/// The first log file a message names (an absolute path ending in `.log`).
fn log_named_in(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | ',' | ';' | '"' | '\''))
        .map(|word| word.trim_end_matches(['.', ':']))
        .find(|word| word.starts_with('/') && word.ends_with(".log"))
        .map(str::to_string)
}

/// The codes in the first column of the table that follows `marker` in
/// docs/json-status.md (several to a row, comma-separated).
#[cfg(test)]
pub(crate) fn documented_codes(marker: &str) -> std::collections::BTreeSet<String> {
    let doc = include_str!("../../docs/json-status.md");
    let table = &doc[doc
        .find(marker)
        .unwrap_or_else(|| panic!("docs/json-status.md has no {marker}"))..];
    table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .flat_map(|l| {
            l.split('|')
                .nth(1)
                .unwrap_or("")
                .split(',')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty())
        .collect()
}

#[cfg(test)]
mod schema_tests {
    /// The published schema is the one the event types make: it cannot
    /// drift from what pg-migrate writes.
    #[test]
    fn the_published_event_schema_is_generated_from_the_event_types() {
        let published: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/events.schema.json")).unwrap();
        assert!(
            published == super::event_schema(),
            "docs/events.schema.json is stale: pg-migrate generate event-schema > docs/events.schema.json"
        );
    }
}
