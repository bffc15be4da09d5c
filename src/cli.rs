//! Command-line flags, compatible with pg_upgrade's (same names, same
//! environment variables), resolved into validated settings before any work.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::failure::{Code, Failure};

/// `-V`: our own version, and the pg_upgrade we stand in for (wrappers
/// that ask pg_upgrade for its version learn both).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (a drop-in for pg_upgrade of PostgreSQL 13 to 18; old clusters of 10 to 18)"
);

#[derive(Debug, Parser)]
#[command(
    name = "pg-migrate",
    version = VERSION,
    about = "Upgrade a PostgreSQL cluster to a new major version in place (a drop-in for pg_upgrade)",
    args_conflicts_with_subcommands = true,
    // As getopt does for pg_upgrade: a repeated option takes its last value.
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub options: Options,
    /// Print help (every PostgreSQL program takes -? for it)
    #[arg(short = '?', action = clap::ArgAction::Help, global = true, hide = true)]
    pub question_mark_help: Option<bool>,
}

/// The whole command-line definition: what is parsed, and what the man
/// pages and completions are made from.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command().mut_subcommand("check", |check| {
        CHECK_IGNORES
            .iter()
            .fold(check, |check, id| check.mut_arg(*id, |arg| arg.hide(true)))
            .after_help(
                "The upgrade's other options (-N, --analyze, --post-upgrade, …) are accepted and \
                 change nothing here, so that the upgrade's own command line runs as a check; \
                 the ones that cannot apply to a check (--verify, --standby-kit, …) are refused.",
            )
    })
}

/// The upgrade's options `check` does not show: what they change happens
/// after the checks (or never in a check run). Each is still accepted, as
/// pg_upgrade -c accepts the upgrade's whole command line.
const CHECK_IGNORES: &[&str] = &[
    "check",
    "cpus",
    "no_sync",
    "sync_method",
    "no_statistics",
    "backup_dir",
    "tablespace_map",
    "post_upgrade",
    "analyze",
    "update_extensions",
    "reindex_collation",
    "verify",
    "verify_sample_above",
    "stop_old",
    "kit",
    "standby_kit",
];

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every check without changing either cluster (same as -c/--check)
    Check(Options),
    /// Finish an interrupted upgrade (reads the journal in -D; other flags default to the journal's)
    Resume(Options),
    /// Undo an interrupted or finished upgrade whose new cluster has never run
    Revert(Options),
    /// Back up the old cluster (-b, -d): roles and tablespaces, and every database with pg_dump -Fc, into --backup-dir
    Backup(Options),
    /// Restore a backup (--backup-dir) into a fresh cluster (-D, made with -B's initdb if it does not exist)
    Restore(Options),
    /// Run the steps after an upgrade (--post-upgrade DIR, --analyze, --update-extensions, --reindex-collation, --carry-config) on a finished one (-D)
    PostUpgrade(Options),
    /// Online mode, first half: do the catalog work while the old cluster runs and serves
    Prepare(Options),
    /// Online mode, second half (the downtime): finish a prepared upgrade once the old server is stopped
    Cutover(Options),
    /// Throw a prepared new cluster away without touching the old one
    Discard(Options),
    /// Prove a finished upgrade (-D): compare the new cluster with the old one as --verify measured it (or, copy modes, as it is)
    Verify(Options),
    /// Write a standby kit from a finished upgrade (-D) before the new primary first starts: what a standby needs besides its own files
    StandbyKit(KitArgs),
    /// Upgrade a stopped standby (-d) into -D from its own files and a kit (--kit), linking its relation files
    Standby(Options),
    /// Upgrade a whole Patroni cluster: run on the leader's host with its Patroni configuration
    Patroni(PatroniArgs),
    /// The work `pg-migrate patroni` does on one member's host (run by it through --remote)
    #[command(hide = true)]
    PatroniMember(MemberArgs),
    /// Write the man pages or a shell's completions, made from these very options (for packagers)
    Generate(GenerateArgs),
}

/// `generate`'s flags.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: Generated,
}

/// What `generate` writes.
#[derive(Debug, Clone, Subcommand)]
pub enum Generated {
    /// Man pages: pg-migrate.1 and one per command (pg-migrate-check.1 …), into DIR
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// The completion script for SHELL, on standard output
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// The JSON Schema of the events --json writes (docs/events.schema.json), on standard output
    EventSchema,
}

/// `patroni`'s flags.
#[derive(Debug, Clone, Args)]
pub struct PatroniArgs {
    /// The leader's Patroni configuration file (this host's member)
    #[arg(long = "config", value_name = "PATRONI_YML")]
    pub config: PathBuf,
    /// The new installation's bin directory, the same path on every member
    #[arg(short = 'B', long = "new-bindir", env = "PGBINNEW", value_name = "DIR")]
    pub new_bindir: Option<PathBuf>,
    /// Each member's new data directory: {data_dir} (its old one), {name}, {major} (the new major)
    #[arg(
        short = 'D',
        long = "new-datadir",
        value_name = "TEMPLATE",
        default_value = "{data_dir}.{major}"
    )]
    pub new_datadir: String,
    /// How to run a command on a member's host: its last argument is the shell command line; {host} and {name} are the member's
    #[arg(
        long = "remote",
        value_name = "TEMPLATE",
        default_value = "ssh -o BatchMode=yes -o ConnectTimeout=10 {host} --"
    )]
    pub remote: String,
    /// pg-migrate's path on the other members' hosts
    #[arg(
        long = "remote-pg-migrate",
        value_name = "PATH",
        default_value = "pg-migrate"
    )]
    pub remote_pg_migrate: String,
    /// Each member's Patroni configuration on its own host ({name}, {host}) [default: the --config path]
    #[arg(long = "member-config", value_name = "TEMPLATE")]
    pub member_config: Option<String>,
    /// Copy the relation files instead of linking them
    #[arg(long = "copy", conflicts_with = "clone")]
    pub copy: bool,
    /// Clone (reflink) the relation files instead of linking them
    #[arg(long = "clone")]
    pub clone: bool,
    /// What to do when the cluster archives WAL: refuse, off (the new cluster starts with archive_mode off), keep (unchanged)
    #[arg(long = "wal-archive", value_enum, default_value = "refuse")]
    pub wal_archive: WalArchive,
    /// Stops a member's Patroni (run on its host through --remote; {name}, {host})
    #[arg(
        long = "patroni-stop",
        value_name = "TEMPLATE",
        default_value = "systemctl stop patroni"
    )]
    pub patroni_stop: String,
    /// Starts a member's Patroni and returns (run on its host through --remote; {name}, {host})
    #[arg(
        long = "patroni-start",
        value_name = "TEMPLATE",
        default_value = "systemctl start patroni"
    )]
    pub patroni_start: String,
    /// Number of databases (and files) the leader's upgrade works on at once
    #[arg(short = 'j', long = "jobs", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// How long a replica may take to replay the leader's last WAL, in seconds
    #[arg(long = "replay-timeout", value_name = "SECONDS", default_value_t = 120)]
    pub replay_timeout: u64,
    /// Only the preflight: change nothing
    #[arg(short = 'c', long = "check", conflicts_with = "resume")]
    pub check: bool,
    /// Go on with an interrupted run (same options): finish it once the leader's upgrade can be finished, else put the cluster back
    #[arg(long = "resume")]
    pub resume: bool,
    /// Write status to stdout as JSON lines (see docs/json-status.md)
    #[arg(long = "json")]
    pub json: bool,
}

impl PatroniArgs {
    pub fn mode(&self) -> Mode {
        if self.copy {
            Mode::Copy
        } else if self.clone {
            Mode::Clone
        } else {
            Mode::Link
        }
    }
}

/// What a cluster that archives WAL gets (`--wal-archive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WalArchive {
    /// Refuse before any change, naming the archive and what it needs
    Refuse,
    /// The new cluster starts with archive_mode = off
    Off,
    /// Archive unchanged
    Keep,
}

/// `patroni-member`'s flags.
#[derive(Debug, Clone, Args)]
pub struct MemberArgs {
    /// What to do: probe, stop-replica, start-old, upgrade-replica, start-new
    #[arg(value_name = "OP")]
    pub op: String,
    /// upgrade-replica: leave the new standby stopped (start-new starts it)
    #[arg(long = "no-start")]
    pub no_start: bool,
    /// stop-replica: the leader's shutdown checkpoint to replay first
    #[arg(long = "lsn", value_name = "LSN")]
    pub lsn: Option<String>,
    /// stop-replica: how long to wait for the replay, in seconds
    #[arg(long = "timeout", value_name = "SECONDS", default_value_t = 120)]
    pub timeout: u64,
    /// stop-replica: the leader's timeline
    #[arg(long = "timeline", value_name = "TLI")]
    pub timeline: Option<u32>,
    /// upgrade-replica, start-new: the cluster's old major (names the configuration kept by an earlier run)
    #[arg(long = "old-major", value_name = "MAJOR")]
    pub old_major: Option<u32>,
    /// This member's Patroni configuration file
    #[arg(long = "config", value_name = "PATRONI_YML")]
    pub config: PathBuf,
    #[arg(short = 'B', long = "new-bindir", value_name = "DIR")]
    pub new_bindir: PathBuf,
    #[arg(short = 'D', long = "new-datadir", value_name = "TEMPLATE")]
    pub new_datadir: String,
}

/// `standby-kit`'s flags.
#[derive(Debug, Clone, Args)]
pub struct KitArgs {
    /// The new primary's data directory: a finished upgrade whose new cluster has not run since
    #[arg(
        short = 'D',
        long = "new-datadir",
        env = "PGDATANEW",
        value_name = "DIR"
    )]
    pub new_datadir: Option<PathBuf>,
    /// Where to write the kit (- writes it to stdout)
    #[arg(short = 'o', long = "output", value_name = "KIT")]
    pub output: PathBuf,
    /// Write status to stdout as JSON lines (see docs/json-status.md)
    #[arg(long = "json")]
    pub json: bool,
}

/// What was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Check,
    Upgrade,
    Resume,
    Revert,
    Backup,
    Restore,
    PostUpgrade,
    Prepare,
    Cutover,
    Discard,
    Verify,
    Standby,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Check => "check",
            Action::Upgrade => "upgrade",
            Action::Resume => "resume",
            Action::Revert => "revert",
            Action::Backup => "backup",
            Action::Restore => "restore",
            Action::PostUpgrade => "post-upgrade",
            Action::Prepare => "prepare",
            Action::Cutover => "cutover",
            Action::Discard => "discard",
            Action::Verify => "verify",
            Action::Standby => "standby",
        }
    }
}

/// How the upgrade moves the data.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The catalog by a binary-upgrade dump, the data files by link/copy/clone/swap
    InPlace,
    /// Every database dumped with its data and restored into the new cluster
    Dump,
}

/// How much `--verify` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyMode {
    /// Every table, those above --verify-sample-above by a sample of their blocks
    Sampled,
    /// Every row of every table
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncMethod {
    Fsync,
    Syncfs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Signedness {
    Signed,
    Unsigned,
}

/// The transfer mode: one enum from these flags to the transfer.
pub use pgm_cluster::TransferMode as Mode;

#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Old cluster's bin directory
    #[arg(short = 'b', long = "old-bindir", env = "PGBINOLD", value_name = "DIR")]
    pub old_bindir: Option<PathBuf>,
    /// New cluster's bin directory [default: the directory of this program]
    #[arg(short = 'B', long = "new-bindir", env = "PGBINNEW", value_name = "DIR")]
    pub new_bindir: Option<PathBuf>,
    /// Old cluster's data (or configuration) directory
    #[arg(
        short = 'd',
        long = "old-datadir",
        env = "PGDATAOLD",
        value_name = "DIR"
    )]
    pub old_datadir: Option<PathBuf>,
    /// New cluster's data (or configuration) directory
    #[arg(
        short = 'D',
        long = "new-datadir",
        env = "PGDATANEW",
        value_name = "DIR"
    )]
    pub new_datadir: Option<PathBuf>,
    /// Port for the old cluster's temporary server
    #[arg(
        short = 'p',
        long = "old-port",
        env = "PGPORTOLD",
        default_value_t = 50432
    )]
    pub old_port: u16,
    /// Port for the new cluster's temporary server
    #[arg(
        short = 'P',
        long = "new-port",
        env = "PGPORTNEW",
        default_value_t = 50432
    )]
    pub new_port: u16,
    /// Cluster's install user (superuser created by initdb) [default: current OS user]
    #[arg(short = 'U', long = "username", env = "PGUSER", value_name = "NAME")]
    pub username: Option<String>,
    /// Directory in which a private socket directory is made [default: $TMPDIR or /tmp]
    #[arg(
        short = 's',
        long = "socketdir",
        env = "PGSOCKETDIR",
        value_name = "DIR"
    )]
    pub socketdir: Option<PathBuf>,
    /// Number of databases (and files) to work on at once; the largest database is restored over as many connections (up to the CPUs) unless one connection per database is estimated to finish sooner
    #[arg(short = 'j', long = "jobs", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// CPUs counted for the largest database's schema restore split over several connections: min(-j, max(N, 2)) connections [default: the CPUs this process may run on]
    #[arg(long = "cpus", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub cpus: Option<u16>,
    /// Options for the old server's command line (repeatable)
    #[arg(
        short = 'o',
        long = "old-options",
        value_name = "OPTIONS",
        allow_hyphen_values = true
    )]
    pub old_options: Vec<String>,
    /// Options for the new server's command line (repeatable)
    #[arg(
        short = 'O',
        long = "new-options",
        value_name = "OPTIONS",
        allow_hyphen_values = true
    )]
    pub new_options: Vec<String>,
    /// Check clusters only, change nothing
    #[arg(short = 'c', long = "check")]
    pub check: bool,
    /// Hard-link files instead of copying them
    #[arg(short = 'k', long = "link", group = "mode")]
    pub link: bool,
    /// Copy files (the default)
    #[arg(long = "copy", group = "mode")]
    pub copy: bool,
    /// Clone (reflink) files
    #[arg(long = "clone", group = "mode")]
    pub clone: bool,
    /// Copy files with copy_file_range(2)
    #[arg(long = "copy-file-range", group = "mode")]
    pub copy_file_range: bool,
    /// Move data directories into the new cluster
    #[arg(long = "swap", group = "mode")]
    pub swap: bool,
    /// Keep logs and the run directory after success
    #[arg(short = 'r', long = "retain")]
    pub retain: bool,
    /// Do not wait for changes to be written safely to disk
    #[arg(short = 'N', long = "no-sync")]
    pub no_sync: bool,
    /// How to sync the new cluster to disk
    #[arg(long = "sync-method", value_enum, default_value_t = SyncMethod::Fsync)]
    pub sync_method: SyncMethod,
    /// Show every command run, with its duration
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Do not carry optimizer statistics
    #[arg(long = "no-statistics")]
    pub no_statistics: bool,
    /// Default char signedness to record in the new cluster (old < 18 only)
    #[arg(long = "set-char-signedness", value_enum)]
    pub set_char_signedness: Option<Signedness>,
    /// Write status to stdout as JSON lines (see docs/json-status.md)
    #[arg(long = "json")]
    pub json: bool,
    /// Treat warnings that can hide wrong results (collation versions) as failures
    #[arg(long = "strict")]
    pub strict: bool,
    /// How to upgrade: in place (the default) or by dumping and reloading every database
    #[arg(long = "method", value_enum, default_value_t = Method::InPlace)]
    pub method: Method,
    /// Before anything changes, back up the old cluster here (an existing directory moves to DIR.old)
    #[arg(long = "backup-dir", value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,
    /// restore: put the backup's tablespace NAME in DIR instead of its old location (repeatable)
    #[arg(long = "tablespace-map", value_name = "NAME=DIR")]
    pub tablespace_map: Vec<String>,
    /// After the upgrade, run the NN-description.sql/.sh scripts in DIR once each, in order
    #[arg(long = "post-upgrade", value_name = "DIR")]
    pub post_upgrade: Option<PathBuf>,
    /// After the upgrade, gather the optimizer statistics it did not carry (in stages)
    #[arg(long = "analyze")]
    pub analyze: bool,
    /// After the upgrade, update extensions older than the new installation's default
    #[arg(long = "update-extensions")]
    pub update_extensions: bool,
    /// After the upgrade, rebuild what a changed collation or Unicode version affects
    #[arg(long = "reindex-collation")]
    pub reindex_collation: bool,
    /// Carry postgresql.conf settings, pg_hba.conf and pg_ident.conf into the new cluster
    #[arg(long = "carry-config")]
    pub carry_config: bool,
    /// Prove the result: the old cluster measured before the transfer, the new one after, compared (HOW: sampled, the default, or full)
    #[arg(
        long = "verify",
        value_enum,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "sampled",
        value_name = "HOW"
    )]
    pub verify: Option<VerifyMode>,
    /// --verify: tables larger than SIZE (e.g. 64MB, 1GB) are sampled, about SIZE of each read [default: 64MB]
    #[arg(long = "verify-sample-above", value_name = "SIZE", value_parser = parse_size)]
    pub verify_sample_above: Option<u64>,
    /// Keep this run's logs in DIR (kept after success too; the summary names them)
    #[arg(long = "log-dir", value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// cutover: stop the running old server first (a fast shutdown)
    #[arg(long = "stop-old")]
    pub stop_old: bool,
    /// standby: the kit pg-migrate standby-kit wrote (- reads it from stdin)
    #[arg(long = "kit", value_name = "KIT")]
    pub kit: Option<PathBuf>,
    /// After the upgrade, before any step that starts the new cluster, write a standby kit to KIT
    #[arg(long = "standby-kit", value_name = "KIT")]
    pub standby_kit: Option<PathBuf>,
}

impl Options {
    pub fn mode(&self) -> Mode {
        if self.link {
            Mode::Link
        } else if self.clone {
            Mode::Clone
        } else if self.copy_file_range {
            Mode::CopyFileRange
        } else if self.swap {
            Mode::Swap
        } else {
            Mode::Copy
        }
    }
}

/// What the user asked for, complete and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub check_only: bool,
    /// Asked for by -c/--check (pg_upgrade's spelling), not `check`.
    pub check_by_flag: bool,
    /// `None` only for restore, post-upgrade and verify, which may go
    /// without the old cluster; every other command has both.
    pub old_bindir: Option<PathBuf>,
    pub new_bindir: PathBuf,
    pub old_datadir: Option<PathBuf>,
    /// `None` only for backup, which writes no new cluster.
    pub new_datadir: Option<PathBuf>,
    pub old_port: u16,
    pub new_port: u16,
    pub user: String,
    pub socket_base: PathBuf,
    pub jobs: usize,
    /// `--cpus`: None, the CPUs this process may run on.
    pub cpus: Option<usize>,
    pub old_options: Option<String>,
    pub new_options: Option<String>,
    pub mode: Mode,
    pub retain: bool,
    pub no_sync: bool,
    pub sync_method: SyncMethod,
    pub no_statistics: bool,
    pub verbose: bool,
    pub json: bool,
    pub strict: bool,
    pub set_char_signedness: Option<Signedness>,
    pub method: Method,
    pub backup_dir: Option<PathBuf>,
    /// restore: tablespace name → new location.
    pub tablespace_map: Vec<(String, PathBuf)>,
    pub after: AfterSteps,
    pub log_dir: Option<PathBuf>,
    /// Whether -B was given (or PGBINNEW set), rather than defaulted.
    pub new_bindir_given: bool,
    /// The online mode's first half: the old server may run.
    pub prepare: bool,
    pub stop_old: bool,
    /// standby: where the kit comes from (`-`: stdin).
    pub kit: Option<PathBuf>,
    /// The upgrade: where to write a standby kit once it finished.
    pub standby_kit: Option<PathBuf>,
}

/// The paths `resolve` requires of the command that asks for them: a
/// command that may go without one reads the field instead.
impl Settings {
    pub fn old_bindir(&self) -> &Path {
        self.old_bindir
            .as_deref()
            .expect("resolve requires -b of every command that reads it")
    }

    pub fn old_datadir(&self) -> &Path {
        self.old_datadir
            .as_deref()
            .expect("resolve requires -d of every command that reads it")
    }

    pub fn new_datadir(&self) -> &Path {
        self.new_datadir
            .as_deref()
            .expect("resolve requires -D of every command that reads it")
    }
}

/// `--verify`, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verify {
    pub mode: VerifyMode,
    pub sample_above: u64,
}

/// The default `--verify-sample-above`.
pub const DEFAULT_SAMPLE_ABOVE: u64 = 64 << 20;

/// `64MB`, `1GB`, `512kB`, `1048576`: a size in bytes (units of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("\"{text}\" is not a size (say 64MB, 1GB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" => 10,
        "m" | "mb" => 20,
        "g" | "gb" => 30,
        "t" | "tb" => 40,
        _ => return Err(format!("\"{unit}\" is not a size unit (kB, MB, GB, TB)")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("\"{text}\" is too large"))
}

/// The optional steps after an upgrade.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AfterSteps {
    /// Runs first: the result as the upgrade made it.
    pub verify: Option<Verify>,
    pub carry_config: bool,
    pub update_extensions: bool,
    pub reindex_collation: bool,
    pub post_upgrade: Option<PathBuf>,
    pub analyze: bool,
}

impl AfterSteps {
    pub fn any(&self) -> bool {
        self.verify.is_some()
            || self.carry_config
            || self.update_extensions
            || self.reindex_collation
            || self.post_upgrade.is_some()
            || self.analyze
    }
}

impl Options {
    /// The settings, or a usage failure that names what is wrong and how to
    /// say it right.
    pub fn resolve(self, action: Action) -> Result<Settings, Failure> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let absolute = |p: PathBuf| if p.is_absolute() { p } else { cwd.join(p) };
        let given = |value: Option<PathBuf>| value.filter(|p| !p.as_os_str().is_empty());
        let required = |value: Option<PathBuf>, what: &str, flag: &str, env: &str| {
            given(value).map(absolute).ok_or_else(|| Failure {
                code: Code::Usage,
                message: format!("no {what} was given"),
                remedy: Some(format!("pass it with {flag} or set {env}")),
                clusters: None,
            })
        };
        // restore works on a backup and a target cluster only; post-upgrade
        // reads the old side from the journal when it needs it.
        let needs_old = !matches!(
            action,
            Action::Restore | Action::PostUpgrade | Action::Verify
        );
        let needs_new_datadir = action != Action::Backup;
        let (old_bindir, old_datadir) = if needs_old {
            (
                Some(required(
                    self.old_bindir.clone(),
                    "old bin directory",
                    "-b/--old-bindir",
                    "PGBINOLD",
                )?),
                Some(required(
                    self.old_datadir.clone(),
                    "old data directory",
                    "-d/--old-datadir",
                    "PGDATAOLD",
                )?),
            )
        } else {
            (
                given(self.old_bindir.clone()).map(absolute),
                given(self.old_datadir.clone()).map(absolute),
            )
        };
        let new_datadir = if needs_new_datadir {
            Some(required(
                self.new_datadir.clone(),
                "new data directory",
                "-D/--new-datadir",
                "PGDATANEW",
            )?)
        } else {
            given(self.new_datadir.clone()).map(absolute)
        };
        let new_bindir_given = given(self.new_bindir.clone()).is_some();
        let new_bindir = match given(self.new_bindir.clone()) {
            Some(dir) => absolute(dir),
            // pg_upgrade's default: the directory it was started from.
            None => std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|p| p.to_path_buf()))
                .ok_or_else(|| Failure {
                    code: Code::Usage,
                    message: "no new bin directory was given".into(),
                    remedy: Some("pass it with -B/--new-bindir or set PGBINNEW".into()),
                    clusters: None,
                })?,
        };
        let user = match self.username.clone().filter(|u| !u.is_empty()) {
            Some(user) => user,
            None => nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
                .ok_or_else(|| Failure {
                    code: Code::Usage,
                    message: "the current user has no name in the user database".into(),
                    remedy: Some("pass the cluster's install user with -U/--username".into()),
                    clusters: None,
                })?,
        };
        let backup_dir = given(self.backup_dir.clone()).map(absolute);
        if matches!(action, Action::Backup | Action::Restore) && backup_dir.is_none() {
            return Err(Failure {
                code: Code::Usage,
                message: format!("{} needs a backup directory", action.name()),
                remedy: Some("pass it with --backup-dir DIR".into()),
                clusters: None,
            });
        }
        let mut tablespace_map = Vec::new();
        for entry in &self.tablespace_map {
            let parsed = entry
                .split_once('=')
                .filter(|(name, dir)| !name.is_empty() && !dir.is_empty());
            let Some((name, dir)) = parsed else {
                return Err(Failure {
                    code: Code::Usage,
                    message: format!("--tablespace-map {entry:?} is not NAME=DIR"),
                    remedy: Some("name the tablespace and its new directory, e.g. --tablespace-map archive=/srv/pg/archive".into()),
                    clusters: None,
                });
            };
            tablespace_map.push((name.to_string(), absolute(PathBuf::from(dir))));
        }
        if !tablespace_map.is_empty() && action != Action::Restore {
            return Err(Failure {
                code: Code::Usage,
                message: "--tablespace-map only applies to restore".into(),
                remedy: Some("leave it out, or use it with pg-migrate restore".into()),
                clusters: None,
            });
        }
        let mode = self.mode();
        if action == Action::Prepare && (mode == Mode::Swap || self.method == Method::Dump) {
            return Err(Failure {
                code: Code::Usage,
                message: "prepare works with --link, --copy, --clone and --copy-file-range".into(),
                remedy: Some("swap mode moves directories a live cluster still uses, and a dump and reload has no catalog work to do ahead: choose another mode, or upgrade in one go".into()),
                clusters: None,
            });
        }
        if self.method == Method::Dump && mode != Mode::Copy {
            return Err(Failure {
                code: Code::Usage,
                message: "--method dump reloads every row: it takes no transfer mode".into(),
                remedy: Some("leave out --link, --clone, --copy-file-range and --swap, or use the in-place method".into()),
                clusters: None,
            });
        }
        if self.verify_sample_above.is_some() && self.verify.is_none() && action != Action::Verify {
            return Err(Failure {
                code: Code::Usage,
                message: "--verify-sample-above only applies with --verify".into(),
                remedy: Some("add --verify, or leave it out".into()),
                clusters: None,
            });
        }
        let verify_mode = match action {
            Action::Verify => Some(self.verify.unwrap_or(VerifyMode::Sampled)),
            _ => self.verify,
        };
        if verify_mode.is_some()
            && matches!(
                action,
                Action::Check
                    | Action::Prepare
                    | Action::Cutover
                    | Action::Backup
                    | Action::Restore
                    | Action::Discard
                    | Action::Revert
            )
        {
            return Err(Failure {
                code: Code::Usage,
                message: format!("--verify does not apply to {}", action.name()),
                remedy: Some("use it on an upgrade made in one go (or its resume), or run pg-migrate verify -D NEW on a finished copy-mode upgrade".into()),
                clusters: None,
            });
        }
        let after = AfterSteps {
            verify: verify_mode.map(|mode| Verify {
                mode,
                sample_above: self.verify_sample_above.unwrap_or(DEFAULT_SAMPLE_ABOVE),
            }),
            carry_config: self.carry_config,
            update_extensions: self.update_extensions,
            reindex_collation: self.reindex_collation,
            post_upgrade: given(self.post_upgrade.clone()).map(absolute),
            analyze: self.analyze,
        };
        if action == Action::PostUpgrade && !after.any() {
            return Err(Failure {
                code: Code::Usage,
                message: "post-upgrade was given nothing to do".into(),
                remedy: Some("name the steps: --verify, --post-upgrade DIR, --analyze, --update-extensions, --reindex-collation, --carry-config".into()),
                clusters: None,
            });
        }
        let kit =
            given(self.kit.clone()).map(|k| if k == Path::new("-") { k } else { absolute(k) });
        if action == Action::Standby && kit.is_none() {
            return Err(Failure {
                code: Code::Usage,
                message: "standby needs a kit".into(),
                remedy: Some("name the kit pg-migrate standby-kit wrote with --kit KIT (or --kit - to read it from stdin)".into()),
                clusters: None,
            });
        }
        if kit.is_some() && action != Action::Standby {
            return Err(Failure {
                code: Code::Usage,
                message: format!("--kit does not apply to {}", action.name()),
                remedy: Some("leave it out, or use it with pg-migrate standby".into()),
                clusters: None,
            });
        }
        if action == Action::Standby
            && (after.any() || mode != Mode::Copy || self.method != Method::InPlace)
        {
            return Err(Failure {
                code: Code::Usage,
                message: "standby takes no transfer mode, method or steps after the upgrade: it links the standby's own files".into(),
                remedy: Some("leave out --link/--copy/--clone/--swap, --method and the post-upgrade steps".into()),
                clusters: None,
            });
        }
        let standby_kit = given(self.standby_kit.clone()).map(absolute);
        if standby_kit.is_some()
            && (!matches!(action, Action::Upgrade | Action::Resume)
                || mode == Mode::Swap
                || self.method == Method::Dump
                || self.check)
        {
            return Err(Failure {
                code: Code::Usage,
                message: "--standby-kit applies to an in-place upgrade in one go by link, copy or clone".into(),
                remedy: Some("leave it out; standbys of a cluster upgraded otherwise are rebuilt from the new primary (pg_basebackup)".into()),
                clusters: None,
            });
        }
        let socket_base = absolute(self.socketdir.clone().unwrap_or_else(std::env::temp_dir));
        let join = |opts: &[String]| (!opts.is_empty()).then(|| opts.join(" "));
        Ok(Settings {
            check_only: action == Action::Check || self.check,
            check_by_flag: self.check,
            old_bindir,
            new_bindir,
            old_datadir,
            new_datadir,
            old_port: self.old_port,
            new_port: self.new_port,
            user,
            socket_base,
            jobs: usize::from(self.jobs),
            cpus: self.cpus.map(usize::from),
            old_options: join(&self.old_options),
            new_options: join(&self.new_options),
            mode,
            retain: self.retain,
            no_sync: self.no_sync,
            sync_method: self.sync_method,
            no_statistics: self.no_statistics,
            verbose: self.verbose,
            json: self.json,
            strict: self.strict,
            set_char_signedness: self.set_char_signedness,
            method: self.method,
            backup_dir,
            tablespace_map,
            after,
            log_dir: given(self.log_dir.clone()).map(absolute),
            new_bindir_given,
            prepare: action == Action::Prepare,
            stop_old: self.stop_old,
            kit,
            standby_kit,
        })
    }
}
