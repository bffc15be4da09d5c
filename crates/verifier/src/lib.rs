//! `pgm-verifier` owns every check pg-migrate makes before it changes
//! anything: the bindirs, the data directories, the servers' state, the
//! control data both clusters must share, and what only the catalogs can
//! tell (install user, databases, an empty new cluster, locale providers).
//!
//! It returns findings and the facts it gathered; it never decides how they
//! are shown, and it never writes to a cluster beyond what starting and
//! cleanly stopping a server does. The checks that only read files
//! (`on_disk`) come first; those that need a server (`server`) run only
//! when every one of them passed, so a problem found on disk leaves both
//! trees untouched. `rules` is the catalogue of what pg_upgrade (and
//! pg-migrate) refuses or warns about, with the SQL that finds it.
//!
//! It also owns the proof after the fact (`proof`, for `--verify`): both
//! clusters measured the same way and compared, known differences between
//! majors explained by named rules; that too only reads.

mod error;
mod finding;
mod initdb;
mod on_disk;
pub mod proof;
mod rules;
mod server;
mod standby;

use std::path::PathBuf;

use pgm_cluster::{ControlFile, DataDir, Installation, ServerStatus, TransferMode};

pub use error::Error;
pub use finding::{Finding, Status, DUMP_RELOAD_AVOIDS};
pub use initdb::{matching_initdb, suggested_initdb};
pub use on_disk::platform_char_is_signed;
pub use rules::{columns_using, rule_sql, CapabilityUse, CollatedIndex, ObjectRef};
pub use server::{
    drifted_indexes, Capabilities, CatalogFacts, DatabaseInfo, SlotSettings, TemplateLocale,
};
pub use standby::{
    run_standby_checks, standby_tablespace, stopped_at, ExpectedFile, StandbyExpectations,
};

/// One cluster as the user named it.
#[derive(Debug, Clone)]
pub struct SideConfig {
    pub bindir: PathBuf,
    pub datadir: PathBuf,
    pub port: u16,
    /// `-o` / `-O` text for the server command line.
    pub server_options: Option<String>,
}

/// `signed` or `unsigned`, for `--set-char-signedness`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CharSignedness {
    Signed,
    Unsigned,
}

/// Everything the checks need to know.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub old: SideConfig,
    pub new: SideConfig,
    /// The role to connect as (`-U`); must be each cluster's install user.
    pub user: String,
    pub jobs: usize,
    /// A private (0700) directory for the servers' sockets: the old
    /// server's in it, the new one's in its subdirectory `new`.
    pub socket_dir: PathBuf,
    /// Where server logs go (never inside either data directory).
    pub log_dir: PathBuf,
    /// `check` may inspect a running old server instead of starting it.
    pub allow_live_old: bool,
    pub set_char_signedness: Option<CharSignedness>,
    /// A new data directory that does not exist yet will be created by
    /// pg-migrate (checks of it then wait until it exists).
    pub create_new: bool,
    /// How files will move: decides what the filesystems must allow.
    pub transfer: TransferMode,
    /// The transfer's own trial of that mode.
    pub probe: TransferProbe,
    /// Collation-version changes fail instead of warning.
    pub strict: bool,
    /// `--carry-config`: the old cluster's settings (its preloaded
    /// libraries among them) will be carried into the new cluster.
    pub carry_config: bool,
    /// The upgrade: the old server the checks started stays up when every
    /// check passes, for the dump (each start costs time). The new one is
    /// always stopped: the upgrade copies it as it is before changing it.
    pub keep_old_server: bool,
    /// The upgrade dumps and reloads every database (`--method dump`):
    /// checks of what only an in-place upgrade needs only warn.
    pub dump_reload: bool,
}

/// Tries for real whether one file can move from `from` into the directory
/// `into` in a mode (the CLI hands the transfer crate's probe in: the
/// checks know nothing of how files move).
pub type TransferProbe = fn(TransferMode, &std::path::Path, &std::path::Path) -> Result<(), String>;

/// Which cluster a fact or finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Old,
    New,
}

impl Which {
    pub fn name(self) -> &'static str {
        match self {
            Which::Old => "old",
            Which::New => "new",
        }
    }
}

/// What was learned about one cluster (as far as the checks got).
#[derive(Debug, Default)]
pub struct SideFacts {
    pub install: Option<Installation>,
    pub datadir: Option<DataDir>,
    pub control: Option<ControlFile>,
    pub server: Option<ServerStatus>,
    pub catalog: Option<CatalogFacts>,
}

/// The outcome of a check run.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub old: SideFacts,
    pub new: SideFacts,
    /// Whether the old server was already running and was only inspected.
    pub live_old: bool,
    /// Whether the checks started (and stopped again) each cluster's server.
    pub old_started: bool,
    pub new_started: bool,
    /// The new data directory does not exist yet; pg-migrate will create it.
    pub new_to_create: bool,
    /// `--strict`: warnings that can hide wrong results fail.
    pub strict: bool,
    /// `--carry-config`: preloaded libraries that do not load fail.
    pub carry_config: bool,
    /// `--method dump`: every row and every extension is loaded anew (what
    /// an in-place upgrade carries unparsed must then parse).
    pub dump_reload: bool,
}

/// What a check run hands on: the findings and facts, and beside them the
/// old server the checks started and kept running for the upgrade.
#[derive(Debug)]
pub struct Checked {
    pub report: Report,
    /// With `keep_old_server`, the old server the checks started, still
    /// running (stopped when dropped); `None` when any check failed.
    pub old_server: Option<pgm_cluster::Server>,
}

impl Report {
    pub fn failed(&self) -> Vec<&Finding> {
        self.findings
            .iter()
            .filter(|f| f.status == Status::Fail)
            .collect()
    }

    pub fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }
}

/// Runs every check, handing each finding to `sink` as soon as it is known;
/// `total` learns first how many findings the run will report (every check
/// once, run or skipped).
pub fn run_checks(
    config: &CheckConfig,
    total: &mut dyn FnMut(usize),
    sink: &mut dyn FnMut(&Finding),
) -> Checked {
    let mut report = Report {
        strict: config.strict,
        carry_config: config.carry_config,
        dump_reload: config.dump_reload,
        ..Report::default()
    };
    let mut emit = |report: &mut Report, finding: Finding| {
        let finding = finding.for_method(config.dump_reload);
        sink(&finding);
        report.findings.push(finding);
    };
    let on_disk = on_disk::run(config, &mut report);
    total(on_disk.len() + server::CHECKS.len());
    for finding in on_disk {
        emit(&mut report, finding);
    }
    if !report.failed().is_empty() {
        for (id, title) in server::CHECKS {
            emit(
                &mut report,
                Finding::skip(
                    id,
                    title,
                    "not run: an earlier check failed, and catalog checks start servers",
                ),
            );
        }
        return Checked {
            report,
            old_server: None,
        };
    }
    let kept = server::run(config, &mut report, &mut |r, f| emit(r, f));
    // A server is kept only for an upgrade that goes on.
    let old_server = match kept {
        Some(server) if !report.failed().is_empty() => {
            let _ = server.stop();
            None
        }
        kept => kept,
    };
    Checked { report, old_server }
}

/// The checks of a new cluster pg-migrate has just created: what `run_checks`
/// skipped for it, now on the real directory and server. Returns whether all passed.
pub fn check_created_new(
    config: &CheckConfig,
    report: &mut Report,
    sink: &mut dyn FnMut(&Finding),
) -> bool {
    report.new_to_create = false;
    let first = report.findings.len();
    let mut emit = |report: &mut Report, finding: Finding| {
        let finding = finding.for_method(config.dump_reload);
        sink(&finding);
        report.findings.push(finding);
    };
    for finding in on_disk::run_created_new(config, report) {
        emit(report, finding);
    }
    if report.findings[first..]
        .iter()
        .all(|f| f.status != Status::Fail)
    {
        server::run_new(config, report, &mut |r, f| emit(r, f));
    }
    report.findings[first..]
        .iter()
        .all(|f| f.status != Status::Fail)
}
