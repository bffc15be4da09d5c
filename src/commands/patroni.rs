//! `patroni` (on the leader's host) and `patroni-member` (what it runs on
//! each member's host): the preflight's events and summary; the judging
//! is `crate::patroni`'s, the leader's own checks the verifier's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgm_verifier::{Finding, Status};
use serde_json::Value;

use crate::cli::{Action, MemberArgs, PatroniArgs};
use crate::exit;
use crate::failure::Code;
use crate::output::{CheckCounts, ClusterCondition, ClusterStates, Event, Printer, RunResult};
use crate::patroni::config::PatroniConfig;
use crate::patroni::member::{self, Probe};
use crate::patroni::node;
use crate::patroni::preflight::{self, Inputs};
use crate::patroni::procedure::{Outcome, Procedure};
use crate::patroni::remote::Remote;
use crate::patroni::rest::{self, ClusterView, MemberView};
use crate::patroni::state::{self, OperationState};
use crate::patroni::store::Etcd3;

const NAME: &str = "patroni";

pub(crate) fn run_patroni(args: PatroniArgs, started: Instant) -> i32 {
    let printer = Printer::new(args.json);
    if let Some(exit_code) = super::refuse_root(&printer, started, NAME) {
        return exit_code;
    }
    let Some(new_bindir) = args
        .new_bindir
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
    else {
        return super::fail_early(
            &printer,
            started,
            NAME,
            Code::Usage,
            "no new bin directory was given".into(),
            "pass the new installation's bin directory (the same path on every member) with -B/--new-bindir or set PGBINNEW",
            exit::USAGE,
        );
    };
    let new_bindir = std::path::absolute(&new_bindir).unwrap_or(new_bindir);
    // The other members read --member-config on their own hosts: a relative
    // path would be relative to wherever the remote command starts.
    let mut args = args;
    args.config = std::path::absolute(&args.config).unwrap_or(args.config);
    let config = match PatroniConfig::read(&args.config) {
        Ok(config) => config,
        Err(message) => {
            return super::fail_early(
                &printer,
                started,
                NAME,
                Code::NotPatroniConfig,
                message,
                "pass the leader's Patroni configuration file (the YAML file its patroni process was started with) with --config",
                exit::USAGE,
            )
        }
    };
    if let Some(code) = super::refuse_patroni_before_12(&printer, started, NAME, &config.data_dir) {
        return code;
    }
    let remote = match Remote::new(
        &args.remote,
        &args.remote_pg_migrate,
        args.member_config
            .as_deref()
            .unwrap_or(&args.config.display().to_string()),
    ) {
        Ok(remote) => remote,
        Err(message) => {
            return super::fail_early(
                &printer,
                started,
                NAME,
                Code::Usage,
                message,
                "give --remote a command such as 'ssh {host} --'",
                exit::USAGE,
            )
        }
    };

    let state_path = state::path(&config);
    if args.resume {
        return resume(&args, &config, &remote, &printer, started, state_path);
    }
    if !args.check && state_path.exists() {
        return super::fail_early(
            &printer,
            started,
            NAME,
            Code::UnfinishedUpgrade,
            format!("an earlier pg-migrate patroni was interrupted (its journal: {})", state_path.display()),
            "finish it, or put the cluster back, with pg-migrate patroni --resume and the same options",
            exit::USAGE,
        );
    }
    printer.emit(&Event::StepStart { step: "preflight" });
    let step_started = Instant::now();
    let mut findings: Vec<Finding> = Vec::new();
    let emit = |f: Finding, findings: &mut Vec<Finding>| {
        printer.emit(&Event::check(&f));
        findings.push(f);
    };
    let preflight = gather(&args, &config, &new_bindir, &remote);
    let mut kept: Option<(ClusterView, Vec<Probe>)> = None;
    match preflight {
        Err(f) => emit(*f, &mut findings),
        Ok(gathered) => {
            for f in gathered.store_findings {
                emit(f, &mut findings);
            }
            let inputs = Inputs {
                config: &config,
                view: &gathered.view,
                dynamic: &gathered.dynamic,
                status: gathered.status.as_ref(),
                probes: &gathered.probes,
                mode: args.mode(),
                wal_archive: args.wal_archive,
                dynamic_unknown: gathered.dynamic_unknown.clone(),
                initialize: gathered.initialize.clone(),
                archive: gathered.archive.clone(),
            };
            for f in preflight::judge(&inputs) {
                emit(f, &mut findings);
            }
            let leader_probe = gathered
                .probes
                .iter()
                .find(|(n, _)| n == &config.name)
                .and_then(|(_, p)| p.as_ref().ok());
            match leader_probe {
                Some(probe) if probe.new_install_problem.is_none() && probe.problems.is_empty() => {
                    for f in leader_checks(&args, &config, probe) {
                        emit(f, &mut findings);
                    }
                }
                _ => emit(
                    Finding::skip(
                        "patroni-leader-checks",
                        "pg-migrate check on the leader",
                        "skipped: the leader's probe found problems (see above)",
                    ),
                    &mut findings,
                ),
            }
            kept = Some((
                gathered.view.clone(),
                gathered
                    .probes
                    .iter()
                    .filter_map(|(_, p)| p.as_ref().ok().cloned())
                    .collect(),
            ));
        }
    }
    let failed: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.status == Status::Fail)
        .collect();
    printer.emit(&Event::step_end(
        "preflight",
        failed.is_empty(),
        step_started,
    ));
    let counts = CheckCounts {
        pass: findings.iter().filter(|f| f.status == Status::Pass).count(),
        warn: findings.iter().filter(|f| f.status == Status::Warn).count(),
        fail: failed.len(),
        skip: findings.iter().filter(|f| f.status == Status::Skip).count(),
    };
    let exit_code = if failed.is_empty() {
        exit::SUCCESS
    } else {
        printer.emit(&Event::checks_failed(&failed, ClusterStates::unchanged()));
        exit::CHECKS_FAILED
    };
    let (Some((view, probes)), true, false) = (kept, failed.is_empty(), args.check) else {
        let mut summary = Event::bare_summary(
            NAME,
            RunResult::of_exit(exit_code),
            exit_code,
            started,
            if failed.is_empty() {
                vec!["the cluster passes the preflight; nothing was changed".into()]
            } else {
                vec!["fix what the failed checks name, then run the preflight again; nothing was changed".into()]
            },
        );
        if let Event::Summary { checks, .. } = &mut summary {
            *checks = Some(counts);
        }
        printer.emit(&summary);
        return exit_code;
    };
    let Some(old_bindir) = node::old_bindir(&config) else {
        return super::fail_early(
            &printer,
            started,
            NAME,
            Code::Usage,
            "no old bin directory".into(),
            "set postgresql.bin_dir in the Patroni configuration",
            exit::USAGE,
        );
    };
    let leader_probe = probes.iter().find(|p| p.name == config.name);
    let state = OperationState {
        scope: config.scope.clone(),
        leader: config.name.clone(),
        old_system_identifier: leader_probe
            .and_then(|p| p.system_identifier.clone())
            .unwrap_or_default(),
        view,
        probes,
        old_bindir,
        new_bindir,
        leader_options: Vec::new(),
        leader_upgrade_started: false,
        leader_upgraded: false,
    };
    let mut procedure = Procedure::new(&args, &config, &remote, &printer, state, state_path);
    let outcome = procedure.run();
    report(&printer, started, &procedure, outcome, Some(counts), false)
}

/// `--resume`: the operation's journal says where the interrupted run was.
fn resume(
    args: &PatroniArgs,
    config: &PatroniConfig,
    remote: &Remote,
    printer: &Printer,
    started: Instant,
    state_path: PathBuf,
) -> i32 {
    let state = match state::load(&state_path) {
        Ok(Some(state)) => state,
        Ok(None) => {
            return super::fail_early(
                printer,
                started,
                NAME,
                Code::NoJournal,
                format!(
                    "there is no interrupted pg-migrate patroni to resume: {} does not exist",
                    state_path.display()
                ),
                "run pg-migrate patroni without --resume",
                exit::USAGE,
            )
        }
        Err(e) => {
            return super::fail_early(
                printer,
                started,
                NAME,
                Code::JournalFailed,
                e,
                "make the operation's journal readable",
                exit::USAGE,
            )
        }
    };
    if state.scope != config.scope || state.leader != config.name {
        return super::fail_early(
            printer,
            started,
            NAME,
            Code::NoJournal,
            format!(
                "{} is the journal of {}'s {}, not of {}'s {}",
                state_path.display(),
                state.leader,
                state.scope,
                config.name,
                config.scope
            ),
            "resume on the leader's host with its configuration",
            exit::USAGE,
        );
    }
    let mut procedure = Procedure::new(args, config, remote, printer, state, state_path);
    let outcome = procedure.resume();
    report(printer, started, &procedure, outcome, None, true)
}

/// The end of a run: an error event where it failed, and the summary.
fn report(
    printer: &Printer,
    started: Instant,
    procedure: &Procedure,
    outcome: Outcome,
    counts: Option<CheckCounts>,
    resuming: bool,
) -> i32 {
    let (exit_code, result, next_steps) = match outcome {
        Outcome::Upgraded => (
            exit::SUCCESS,
            RunResult::Ok,
            vec![
                "take a new base backup: the new cluster has a new system identifier, and the old cluster's backups cannot restore it".into(),
                format!(
                    "once you are sure, remove each member's old data directory (its Patroni configuration as it was is kept beside it as .pg-migrate-{})",
                    procedure.state.probes.iter().find_map(|p| p.old_major).unwrap_or(0)
                ),
            ],
        ),
        Outcome::PutBack { message } if resuming => {
            printer.notice(crate::output::NoticeCode::PatroniPutBack, message);
            (
                exit::SUCCESS,
                RunResult::Reverted,
                vec!["every member is back on the old major and Patroni is resumed; run pg-migrate patroni again when ready".into()],
            )
        }
        Outcome::PutBack { message } => {
            printer.emit(&Event::Error {
                code: Code::PatroniFailed,
                message,
                remedy: Some("every member is back on the old major and Patroni is resumed; fix the cause, then run again".into()),
                causes: Vec::new(),
                clusters: ClusterStates {
                    old: ClusterCondition::StartedAndStopped,
                    new: ClusterCondition::Unchanged,
                },
                step: None,
                log: None,
            });
            (exit::FAILED_OLD_INTACT, RunResult::Error, Vec::new())
        }
        Outcome::NotStarted { message } => {
            printer.emit(&Event::Error {
                code: Code::PatroniFailed,
                message,
                remedy: Some("nothing was changed; fix the cause, then run again".into()),
                causes: Vec::new(),
                clusters: ClusterStates::unchanged(),
                step: None,
                log: None,
            });
            (exit::FAILED_OLD_INTACT, RunResult::Error, Vec::new())
        }
        Outcome::Unfinished {
            message,
            leader_upgraded,
        } => {
            printer.emit(&Event::Error {
                code: Code::PatroniFailed,
                message,
                remedy: Some("run pg-migrate patroni --resume with the same options once the cause is fixed; see each member's result in the summary (a replica left stopped is rebuilt with the reinit command given)".into()),
                causes: Vec::new(),
                clusters: if leader_upgraded {
                    ClusterStates {
                        old: ClusterCondition::Protected,
                        new: ClusterCondition::Upgraded,
                    }
                } else {
                    // Before the leader's point of no return its old cluster
                    // is whole (stopped cleanly, or started again since).
                    ClusterStates {
                        old: ClusterCondition::StartedAndStopped,
                        new: ClusterCondition::Incomplete,
                    }
                },
                step: None,
                log: None,
            });
            (exit::FAILED_NEEDS_RECOVERY, RunResult::Error, Vec::new())
        }
    };
    let mut summary = Event::bare_summary(NAME, result, exit_code, started, next_steps);
    if let Event::Summary {
        checks, patroni, ..
    } = &mut summary
    {
        *checks = counts;
        *patroni = Some(Box::new(procedure.summary.clone()));
    }
    printer.emit(&summary);
    exit_code
}

/// What the preflight reads before it judges.
struct Gathered {
    view: ClusterView,
    dynamic: Value,
    status: Option<Value>,
    probes: Vec<(String, Result<Probe, String>)>,
    archive: Option<(String, String, String)>,
    dynamic_unknown: Vec<String>,
    initialize: Option<String>,
    store_findings: Vec<Finding>,
}

fn gather(
    args: &PatroniArgs,
    config: &PatroniConfig,
    new_bindir: &Path,
    remote: &Remote,
) -> Result<Gathered, Box<Finding>> {
    let id = "patroni-rest";
    let title = "Patroni's REST API answers";
    if config.rest_url.starts_with("https:") {
        return Err(Box::new(Finding::fail(
            id,
            title,
            "rest_unreachable",
            format!(
                "{}'s REST API speaks https (restapi.certfile in {}): pg-migrate patroni speaks only plain HTTP to it so far",
                config.name,
                config.path.display()
            ),
            "check and upgrade this cluster by hand (docs/patroni.md) until pg-migrate speaks https",
        )));
    }
    let view = rest::cluster(&config.rest_url).map_err(|e| {
        Box::new(Finding::fail(
            id,
            title,
            "rest_unreachable",
            format!("the leader's REST API did not answer: {e}"),
            format!(
                "start {}'s Patroni, or correct restapi.connect_address in {}",
                config.name,
                config.path.display()
            ),
        ))
    })?;
    if view.scope != config.scope && !view.scope.is_empty() {
        return Err(Box::new(Finding::fail(
            id,
            title,
            "not_patroni_config",
            format!(
                "{} answers for cluster {}, not {}",
                config.rest_url, view.scope, config.scope
            ),
            "pass the configuration of this cluster's leader",
        )));
    }
    let dynamic = rest::dynamic_config(&config.rest_url).map_err(|e| {
        Box::new(Finding::fail(
            id,
            title,
            "rest_unreachable",
            e,
            "make the leader's REST API answer",
        ))
    })?;
    // A busy leader's replicas are behind for moments at a time: a replica
    // counts as lagging only if it stays behind across a few seconds of
    // samples (each member's least lag is kept).
    let mut view = view;
    let limit = dynamic["maximum_lag_on_failover"]
        .as_u64()
        .unwrap_or(1 << 20);
    for _ in 0..5 {
        if view
            .members
            .iter()
            .all(|m| m.role == "leader" || m.lag.is_some_and(|l| l <= limit))
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        let Ok(again) = rest::cluster(&config.rest_url) else {
            break;
        };
        for m in &mut view.members {
            if let Some(now) = again.members.iter().find(|a| a.name == m.name) {
                m.lag = match (m.lag, now.lag) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
    }

    // The store.
    let mut store_findings = Vec::new();
    let id = "patroni-store";
    let title = "Patroni's store answers";
    let mut status = None;
    let mut initialize_key = None;
    match Etcd3::of(&config.store) {
        Err(e) => store_findings.push(Finding::fail(
            id,
            title,
            "store_unsupported",
            e,
            "upgrade this cluster by hand (docs/patroni.md), or move it to etcd",
        )),
        Ok(etcd) => match etcd.get(&config.key("initialize")) {
            Err(e) => store_findings.push(Finding::fail(
                id,
                title,
                "store_unreachable",
                format!("etcd did not answer: {e}"),
                format!(
                    "make etcd reachable at the addresses in {}",
                    config.path.display()
                ),
            )),
            Ok(None) => store_findings.push(Finding::fail(
                id,
                title,
                "store_unreachable",
                format!(
                    "etcd holds no {} key: the cluster is not initialized there",
                    config.key("initialize")
                ),
                "check the configuration's namespace and scope",
            )),
            Ok(Some(initialize)) => {
                initialize_key = Some(initialize.clone());
                status = etcd
                    .get(&config.key("status"))
                    .ok()
                    .flatten()
                    .and_then(|s| serde_json::from_str(&s).ok());
                store_findings.push(Finding::pass(
                    id,
                    title,
                    format!("etcd: {} = {initialize}", config.key("initialize")),
                ));
            }
        },
    }

    let mut probes = Vec::new();
    for m in &view.members {
        let probe = if m.name == config.name {
            member::probe(&config.path, new_bindir, &args.new_datadir)
        } else {
            remote_probe(remote, m, new_bindir, &args.new_datadir)
        };
        probes.push((m.name.clone(), probe));
    }
    let archive =
        node::old_bindir(config).and_then(|bindir| archive_settings(&bindir, &config.data_dir));
    // The dynamic configuration's settings, asked of the new server.
    let new_major = probes
        .iter()
        .find(|(n, _)| n == &config.name)
        .and_then(|(_, p)| p.as_ref().ok())
        .and_then(|p| p.new_major);
    let dynamic_unknown = match (dynamic["postgresql"]["parameters"].as_object(), new_major) {
        (Some(params), Some(major)) => {
            let names: Vec<String> = params
                .keys()
                .filter(|n| crate::patroni::config::known_change(n, major).is_none())
                .cloned()
                .collect();
            member::unknown_to(new_bindir, &names).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    Ok(Gathered {
        view,
        dynamic,
        status,
        probes,
        archive,
        dynamic_unknown,
        initialize: initialize_key,
        store_findings,
    })
}

fn remote_probe(
    remote: &Remote,
    m: &MemberView,
    new_bindir: &Path,
    template: &str,
) -> Result<Probe, String> {
    let args = vec![
        "patroni-member".to_string(),
        "probe".to_string(),
        "--config".to_string(),
        remote.member_config(m),
        "-B".to_string(),
        new_bindir.display().to_string(),
        "-D".to_string(),
        template.to_string(),
    ];
    let out = remote.pg_migrate(m, &args, None)?;
    let probe: Probe = serde_json::from_str(out.trim()).map_err(|e| {
        format!(
            "on {}: pg-migrate answered what is not a probe ({e}): {}",
            m.name,
            out.trim()
        )
    })?;
    if probe.name != m.name {
        return Err(format!(
            "{} on {}'s host is the configuration of {}, not {}",
            probe.config.display(),
            m.name,
            probe.name,
            m.name
        ));
    }
    Ok(probe)
}

/// archive_mode, archive_command and archive_library as the old server
/// reads its configuration (`postgres -C`).
fn archive_settings(bindir: &Path, datadir: &Path) -> Option<(String, String, String)> {
    let read = |name: &str| {
        pgm_cluster::command::PgCommand::new(bindir.join("postgres"))
            .arg("-D")
            .arg(datadir)
            .arg("-C")
            .arg(name)
            .run()
            .ok()
            .map(|o| o.stdout.trim().to_string())
    };
    let mode = read("archive_mode")?;
    let command = read("archive_command").unwrap_or_default();
    // archive_library came with 15.
    let library = read("archive_library").unwrap_or_default();
    Some((mode, command, library))
}

/// `pg-migrate check` on the leader (live: its server runs), each of its
/// findings reported as the preflight's.
fn leader_checks(args: &PatroniArgs, config: &PatroniConfig, probe: &Probe) -> Vec<Finding> {
    let Some(old_bindir) = node::old_bindir(config) else {
        return vec![Finding::fail(
            "patroni-leader-checks",
            "pg-migrate check on the leader",
            "old_installation_missing",
            format!(
                "{} sets no bin_dir and PATH has no postgres",
                config.path.display()
            ),
            "set postgresql.bin_dir in the Patroni configuration",
        )];
    };
    let mut words: Vec<std::ffi::OsString> = vec![
        "pg-migrate".into(),
        "check".into(),
        "-b".into(),
        old_bindir.into(),
        "-B".into(),
        probe.new_bindir.clone().into(),
        "-d".into(),
        config.data_dir.clone().into(),
        "-D".into(),
        probe.new_datadir.clone().into(),
    ];
    words.push(match args.mode() {
        crate::cli::Mode::Copy => "--copy".into(),
        crate::cli::Mode::Clone => "--clone".into(),
        _ => "--link".into(),
    });
    let cli = match <crate::cli::Cli as clap::Parser>::try_parse_from(words) {
        Ok(cli) => cli,
        Err(e) => {
            return vec![Finding::fail(
                "patroni-leader-checks",
                "pg-migrate check on the leader",
                "leader_checks_failed",
                e.to_string(),
                "report this: pg-migrate could not say its own check command",
            )]
        }
    };
    let Some(crate::cli::Command::Check(options)) = cli.command else {
        return Vec::new();
    };
    super::check::leader_findings(options, Action::Check)
}

/// `patroni-member`: this member's part, its answer on stdout as JSON.
pub(crate) fn run_patroni_member(args: MemberArgs) -> i32 {
    if nix::unistd::geteuid().is_root() {
        eprintln!("pg-migrate cannot be run as root: run it as the clusters' owner");
        return exit::USAGE;
    }
    let fail = |message: String| {
        // One line: the leader shows the last line of stderr.
        eprintln!("{}", message.replace('\n', " "));
        exit::FAILED_OLD_INTACT
    };
    let done = |answer: Value| {
        crate::output::write_stdout_line(&answer.to_string());
        exit::SUCCESS
    };
    if args.op == "probe" {
        return match member::probe(&args.config, &args.new_bindir, &args.new_datadir) {
            Ok(probe) => done(serde_json::to_value(&probe).unwrap_or_default()),
            Err(e) => fail(format!("pg-migrate patroni-member probe: {e}")),
        };
    }
    let config = match PatroniConfig::read(&args.config) {
        Ok(config) => config,
        Err(e) => return fail(e),
    };
    let Some(old_bindir) = node::old_bindir(&config) else {
        return fail(format!(
            "{} sets no bin_dir and PATH has no postgres",
            config.path.display()
        ));
    };
    let data_dir = config.data_dir.clone();
    match args.op.as_str() {
        "stop-replica" => {
            let (Some(lsn), Some(timeline)) = (args.lsn.as_deref().and_then(node::parse_lsn), args.timeline) else {
                return fail("stop-replica needs --lsn and --timeline".into());
            };
            if node::running(&data_dir) {
                if let Err(e) = node::wait_replayed(&data_dir, lsn, Duration::from_secs(args.timeout)) {
                    return fail(e);
                }
                if let Err(e) = node::stop_server(&old_bindir, &data_dir) {
                    return fail(e);
                }
            }
            // Stopped (by us, or before): exactly at the leader's shutdown
            // checkpoint, or its upgrade from the kit would be refused.
            match pgm_cluster::ControlFile::read(&data_dir) {
                Ok(control) if pgm_verifier::stopped_at(&control, lsn, timeline) => {
                    done(serde_json::json!({ "ok": true }))
                }
                Ok(control) => fail(format!(
                    "the replica stopped at {} (timeline {}, {}), not at the leader's shutdown checkpoint {} (timeline {timeline})",
                    pgm_cluster::control::format_lsn(control.checkpoint_lsn),
                    control.timeline,
                    control.state.describe(),
                    pgm_cluster::control::format_lsn(lsn)
                )),
                Err(e) => fail(e.to_string()),
            }
        }
        "start-old" => {
            if !node::running(&data_dir) {
                let started = node::server_options(&data_dir).and_then(|options| {
                    node::start_server(&old_bindir, &data_dir, &options, &crate::patroni::procedure::start_log(&data_dir))
                });
                if let Err(e) = started {
                    return fail(e);
                }
            }
            done(serde_json::json!({ "ok": true }))
        }
        "upgrade-replica" => match upgrade_replica(&args) {
            Ok(new_datadir) => done(serde_json::json!({ "ok": true, "new_datadir": new_datadir })),
            Err(e) => fail(e),
        },
        "start-new" => match start_new_replica(&args) {
            Ok(new_datadir) => done(serde_json::json!({ "ok": true, "new_datadir": new_datadir })),
            Err(e) => fail(e),
        },
        other => fail(format!("pg-migrate patroni-member: no such operation {other:?} (probe, stop-replica, start-old, upgrade-replica, start-new)")),
    }
}

/// A replica's upgrade on its own host: `pg-migrate standby` from the kit
/// on stdin, Patroni's files carried, its Patroni configuration rewritten,
/// the new standby started as Patroni started the old one (not with
/// `--no-start`: `start-new` does it once its primary runs).
fn upgrade_replica(args: &MemberArgs) -> Result<PathBuf, String> {
    let old_config_path = old_member_config(args)?;
    let config = &PatroniConfig::read(&old_config_path)?;
    let old_bindir = &node::old_bindir(config).ok_or_else(|| {
        format!(
            "{} sets no bin_dir and PATH has no postgres",
            config.path.display()
        )
    })?;
    let probe = member::probe(&old_config_path, &args.new_bindir, &args.new_datadir)?;
    let (old_major, new_major) = (probe.old_major.unwrap_or(0), probe.new_major.unwrap_or(0));
    let new_datadir = probe.new_datadir.clone();
    let mut kit = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut kit)
        .map_err(|e| format!("reading the kit: {e}"))?;
    if !standby_upgraded(&new_datadir) {
        if crate::standby::is_standby(&new_datadir) {
            // An earlier run began this standby's upgrade: its journal finishes it.
            run_pg_migrate(
                &[
                    "resume".as_ref(),
                    "-D".as_ref(),
                    new_datadir.as_os_str(),
                    "--json".as_ref(),
                ],
                None,
            )?;
        } else {
            run_pg_migrate(
                &[
                    "standby".as_ref(),
                    "-b".as_ref(),
                    old_bindir.as_os_str(),
                    "-B".as_ref(),
                    args.new_bindir.as_os_str(),
                    "-d".as_ref(),
                    config.data_dir.as_os_str(),
                    "-D".as_ref(),
                    new_datadir.as_os_str(),
                    "--kit".as_ref(),
                    "-".as_ref(),
                    "--json".as_ref(),
                ],
                Some(&kit),
            )?;
        }
    }
    node::carry_patroni_files(
        &config.data_dir,
        &new_datadir,
        old_major,
        &args.new_bindir,
        new_major,
        false,
    )?;
    let current = PatroniConfig::read(&args.config)?;
    node::rewrite_member_config(
        &current,
        &args.new_bindir,
        &new_datadir,
        old_major,
        new_major,
        false,
    )?;
    if !args.no_start {
        start_new(&config.data_dir, &args.new_bindir, &new_datadir)?;
    }
    Ok(new_datadir)
}

/// The new standby (upgraded by `upgrade-replica --no-start`) started as
/// Patroni started the old one.
fn start_new_replica(args: &MemberArgs) -> Result<PathBuf, String> {
    let config = PatroniConfig::read(&old_member_config(args)?)?;
    let probe = member::probe(&config.path, &args.new_bindir, &args.new_datadir)?;
    let new_datadir = probe.new_datadir;
    if !standby_upgraded(&new_datadir) {
        return Err(format!(
            "{} is not an upgraded standby: run upgrade-replica first",
            new_datadir.display()
        ));
    }
    start_new(&config.data_dir, &args.new_bindir, &new_datadir)?;
    Ok(new_datadir)
}

/// Whether a standby's upgrade into `new_datadir` finished (its last step,
/// the sync, is done).
fn standby_upgraded(new_datadir: &Path) -> bool {
    crate::standby::done_steps(&crate::standby::records(new_datadir))
        .iter()
        .any(|s| s == "sync")
}

fn start_new(old_datadir: &Path, new_bindir: &Path, new_datadir: &Path) -> Result<(), String> {
    if node::running(new_datadir) {
        return Ok(());
    }
    let options = node::server_options(old_datadir)?;
    node::start_server(
        new_bindir,
        new_datadir,
        &options,
        &crate::patroni::procedure::start_log(new_datadir),
    )
}

/// This member's Patroni configuration as it was before the upgrade: the
/// file itself, or once an earlier run rewrote it (it names -B), the old
/// one kept beside it, named after the old major.
fn old_member_config(args: &MemberArgs) -> Result<PathBuf, String> {
    let current = PatroniConfig::read(&args.config)?;
    let rewritten = current.bin_dir.as_deref() == Some(args.new_bindir.as_path());
    Ok(match (rewritten, args.old_major) {
        (true, Some(major)) => {
            let kept = PathBuf::from(format!("{}.pg-migrate-{major}", args.config.display()));
            if !kept.is_file() {
                return Err(format!(
                    "{} names the new installation already, and its old copy {} is missing",
                    args.config.display(),
                    kept.display()
                ));
            }
            kept
        }
        (true, None) => {
            return Err("upgrade-replica of a rewritten configuration needs --old-major".into())
        }
        (false, _) => args.config.clone(),
    })
}

/// Runs pg-migrate (`standby`, or `resume` of a standby) with `input` on
/// its stdin; its error event's message when it fails.
fn run_pg_migrate(args: &[&std::ffi::OsStr], input: Option<&[u8]>) -> Result<(), String> {
    let pg_migrate = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(&pg_migrate)
        .args(args)
        .stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", pg_migrate.display()))?;
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        std::io::Write::write_all(&mut stdin, bytes)
            .map_err(|e| format!("handing the kit on: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(());
    }
    let what = args[0].to_string_lossy();
    Err(match crate::patroni::remote::error_event(&out.stdout) {
        Some(error) => format!("pg-migrate {what} refused or failed {error}"),
        None => format!("pg-migrate {what} failed ({})", out.status),
    })
}
