//! `patroni` (on the leader's host) and `patroni-member` (what it runs on
//! each member's host): the preflight's events and summary; the judging
//! is `crate::patroni`'s, the leader's own checks the verifier's.

use std::path::{Path, PathBuf};
use std::time::Instant;

use pgm_verifier::{Finding, Status};
use serde_json::Value;

use crate::cli::{Action, MemberArgs, PatroniArgs};
use crate::exit;
use crate::failure::Code;
use crate::output::{CheckCounts, ClusterStates, Event, Printer, RunResult};
use crate::patroni::config::PatroniConfig;
use crate::patroni::member::{self, Probe};
use crate::patroni::preflight::{self, Inputs};
use crate::patroni::remote::Remote;
use crate::patroni::rest::{self, ClusterView, MemberView};
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
    if !args.check {
        return super::fail_early(
            &printer,
            started,
            NAME,
            Code::Usage,
            "pg-migrate patroni does its preflight only (--check) in this version: the upgrade itself is not built yet".into(),
            "run pg-migrate patroni --check to learn whether the cluster can be upgraded; upgrade it by hand as docs/patroni.md describes",
            exit::USAGE,
        );
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

    printer.emit(&Event::StepStart { step: "preflight" });
    let step_started = Instant::now();
    let mut findings: Vec<Finding> = Vec::new();
    let emit = |f: Finding, findings: &mut Vec<Finding>| {
        printer.emit(&Event::check(&f));
        findings.push(f);
    };
    let preflight = gather(&args, &config, &new_bindir, &remote);
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

    // The store.
    let mut store_findings = Vec::new();
    let id = "patroni-store";
    let title = "Patroni's store answers";
    let mut status = None;
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
    let archive = old_bindir(config).and_then(|bindir| archive_settings(&bindir, &config.data_dir));
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

/// Where Patroni runs the old PostgreSQL from: `bin_dir`, else PATH's.
fn old_bindir(config: &PatroniConfig) -> Option<PathBuf> {
    if let Some(dir) = &config.bin_dir {
        return Some(dir.clone());
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("postgres").is_file()))
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
    let Some(old_bindir) = old_bindir(config) else {
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
    match args.op.as_str() {
        "probe" => match member::probe(&args.config, &args.new_bindir, &args.new_datadir) {
            Ok(probe) => {
                let text = serde_json::to_string(&probe).unwrap_or_default();
                crate::output::write_stdout_line(&text);
                exit::SUCCESS
            }
            Err(e) => {
                eprintln!("pg-migrate patroni-member probe: {e}");
                exit::USAGE
            }
        },
        other => {
            eprintln!("pg-migrate patroni-member: no such operation {other:?} (probe)");
            exit::USAGE
        }
    }
}
