//! The upgrade of a whole Patroni cluster, after its preflight passed:
//! pause, stop every Patroni (paused, each leaves its server running), stop
//! the leader cleanly, let each replica replay its shutdown checkpoint and
//! stop, upgrade the leader (with a standby kit), carry Patroni's files,
//! set the store's `initialize` key in one compare-and-set step, start the
//! new leader and its Patroni (paused, Patroni adopts the running primary
//! and takes the leader key: no promotion, no new timeline), upgrade each
//! replica from the kit in parallel and start it, resume.
//!
//! Until the leader's upgrade has passed its point of no return, a failure
//! puts every member back as it was (old servers started, Patroni started,
//! resumed). After it, nothing is undone: what is left is reported.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::config::{apply_changes_json, dynamic_changes, PatroniConfig};
use super::member::Probe;
use super::node;
use super::remote::Remote;
use super::rest::{self, ClusterView, MemberView};
use super::store::Etcd3;
use crate::cli::{Mode, PatroniArgs, WalArchive};
use crate::output::{Event, MemberResult, PatroniSummary, Printer, StepStatus};

/// How the procedure ended.
pub enum Outcome {
    /// Every member on the new major, the cluster resumed.
    Upgraded,
    /// Failed before the leader's point of no return: every member put
    /// back as it was (or as far as the message says).
    PutBack { message: String },
    /// Failed after it: the leader is upgraded; what is left is said.
    Unfinished { message: String },
}

/// Why the part before the leader's point of no return stopped.
enum Stop {
    Before(String),
    PastThePoint(String),
}

pub struct Procedure<'a> {
    pub args: &'a PatroniArgs,
    pub config: &'a PatroniConfig,
    pub remote: &'a Remote,
    pub printer: &'a Printer,
    pub view: &'a ClusterView,
    pub probes: Vec<Probe>,
    pub old_bindir: PathBuf,
    pub new_bindir: PathBuf,
    pub pg_migrate: PathBuf,
    // What was done, for putting it back.
    paused: bool,
    patroni_stopped: Vec<String>,
    leader_stopped: bool,
    replicas_stopped: Vec<String>,
    /// The leader's server options as Patroni gave them, read before the
    /// upgrade starts its own servers (which rewrite postmaster.opts).
    leader_options: Vec<String>,
    pub summary: PatroniSummary,
}

impl<'a> Procedure<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        args: &'a PatroniArgs,
        config: &'a PatroniConfig,
        remote: &'a Remote,
        printer: &'a Printer,
        view: &'a ClusterView,
        probes: Vec<Probe>,
        old_bindir: PathBuf,
        new_bindir: PathBuf,
    ) -> Procedure<'a> {
        let leader_probe = probes.iter().find(|p| p.name == config.name);
        let summary = PatroniSummary {
            scope: config.scope.clone(),
            leader: config.name.clone(),
            old_system_identifier: leader_probe
                .and_then(|p| p.system_identifier.clone())
                .unwrap_or_default(),
            new_system_identifier: None,
            members: view
                .members
                .iter()
                .map(|m| MemberResult {
                    name: m.name.clone(),
                    role: role(m, config),
                    result: "not_reached",
                    data_dir: probes
                        .iter()
                        .find(|p| p.name == m.name)
                        .map(|p| p.data_dir.display().to_string())
                        .unwrap_or_default(),
                    message: None,
                    reinit: None,
                })
                .collect(),
            base_backup_needed: true,
        };
        Procedure {
            args,
            config,
            remote,
            printer,
            view,
            probes,
            old_bindir,
            new_bindir,
            pg_migrate: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("pg-migrate")),
            paused: false,
            patroni_stopped: Vec::new(),
            leader_stopped: false,
            replicas_stopped: Vec::new(),
            leader_options: Vec::new(),
            summary,
        }
    }

    fn leader(&self) -> &MemberView {
        self.view
            .members
            .iter()
            .find(|m| m.name == self.config.name)
            .expect("the preflight found the leader")
    }

    fn replicas(&self) -> Vec<&MemberView> {
        self.view
            .members
            .iter()
            .filter(|m| m.name != self.config.name)
            .collect()
    }

    fn probe(&self, name: &str) -> &Probe {
        self.probes
            .iter()
            .find(|p| p.name == name)
            .expect("the preflight probed every member")
    }

    fn event(&self, m: &MemberView, step: &'static str, result: &Result<(), String>) {
        self.printer.emit(&Event::Member {
            member: m.name.clone(),
            role: role(m, self.config),
            step,
            status: if result.is_ok() {
                StepStatus::Ok
            } else {
                StepStatus::Failed
            },
            message: result.as_ref().err().cloned(),
        });
    }

    fn set_result(
        &mut self,
        name: &str,
        result: &'static str,
        message: Option<String>,
        reinit: Option<String>,
    ) {
        if let Some(m) = self.summary.members.iter_mut().find(|m| m.name == name) {
            m.result = result;
            m.message = message;
            m.reinit = reinit;
        }
    }

    /// Runs an operator's command (`--patroni-stop`, `--patroni-start`) on
    /// a member's host: the leader's here, through `sh -c`.
    fn on_host(&self, m: &MemberView, template: &str) -> Result<(), String> {
        let line = template
            .replace("{host}", &m.host)
            .replace("{name}", &m.name);
        if m.name == self.config.name {
            let out = Command::new("sh")
                .arg("-c")
                .arg(&line)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("{line}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{line} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        } else {
            self.remote.run_shell(m, &line)
        }
    }

    /// pg-migrate's member work on a replica's host.
    fn agent(
        &self,
        m: &MemberView,
        op: &str,
        extra: &[String],
        input: Option<&[u8]>,
    ) -> Result<Value, String> {
        let mut args = vec![
            "patroni-member".to_string(),
            op.to_string(),
            "--config".to_string(),
            self.remote.member_config(m),
            "-B".to_string(),
            self.new_bindir.display().to_string(),
            "-D".to_string(),
            self.args.new_datadir.clone(),
        ];
        args.extend_from_slice(extra);
        let out = self.remote.pg_migrate(m, &args, input)?;
        let answer: Value = serde_json::from_str(out.trim()).map_err(|e| {
            format!(
                "pg-migrate on {} answered what is not JSON ({e}): {}",
                m.name,
                out.trim()
            )
        })?;
        match answer["error"].as_str() {
            Some(error) => Err(error.to_string()),
            None => Ok(answer),
        }
    }

    pub fn run(&mut self) -> Outcome {
        match self.before_the_point_of_no_return() {
            Ok(()) => {}
            Err(Stop::PastThePoint(message)) => return Outcome::Unfinished { message },
            Err(Stop::Before(message)) => {
                let put_back = self.put_back();
                return Outcome::PutBack {
                    message: match put_back {
                        Ok(()) => message,
                        Err(e) => format!("{message}; putting the cluster back failed too: {e}"),
                    },
                };
            }
        }
        match self.after_the_point_of_no_return() {
            Ok(()) => Outcome::Upgraded,
            Err(message) => Outcome::Unfinished { message },
        }
    }

    fn step<T, E>(&self, step: &'static str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        self.printer.emit(&Event::StepStart { step });
        let started = Instant::now();
        let result = f();
        self.printer
            .emit(&Event::step_end(step, result.is_ok(), started));
        result
    }

    fn before_the_point_of_no_return(&mut self) -> Result<(), Stop> {
        // Pause, and wait until every member has seen it.
        self.step("pause", || rest::set_pause(&self.config.rest_url, true))
            .map_err(Stop::Before)?;
        self.paused = true;
        let deadline = Instant::now() + Duration::from_secs(60);
        for m in &self.view.members {
            let seen = loop {
                if rest::member_status(&m.api_url)
                    .is_some_and(|s| s["pause"].as_bool() == Some(true))
                {
                    break Ok(());
                }
                if Instant::now() > deadline {
                    break Err("did not report the pause within 60 s".to_string());
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            self.event(m, "pause", &seen);
            seen.map_err(|e| Stop::Before(format!("{}: {e}", m.name)))?;
        }

        // Every Patroni stopped (paused, each leaves its server running):
        // replicas first.
        self.printer.emit(&Event::StepStart {
            step: "stop-patroni",
        });
        let started = Instant::now();
        let mut order: Vec<MemberView> = self.replicas().into_iter().cloned().collect();
        order.push(self.leader().clone());
        for m in &order {
            let result = self.on_host(m, &self.args.patroni_stop);
            self.event(m, "stop-patroni", &result);
            if let Err(e) = result {
                self.printer
                    .emit(&Event::step_end("stop-patroni", false, started));
                return Err(Stop::Before(format!("stopping {}'s Patroni: {e}", m.name)));
            }
            self.patroni_stopped.push(m.name.clone());
        }
        self.printer
            .emit(&Event::step_end("stop-patroni", true, started));
        if !node::running(&self.config.data_dir) {
            self.leader_stopped = true;
            return Err(Stop::Before(format!(
                "the leader's server stopped with its Patroni: is {} paused? (--patroni-stop must stop Patroni alone)",
                self.config.scope
            )));
        }

        // The leader stopped cleanly: its shutdown checkpoint is the last WAL.
        let leader = self.leader().clone();
        self.leader_options = node::server_options(&self.config.data_dir).map_err(Stop::Before)?;
        let checkpoint = self.step("stop-leader", || {
            node::stop_server(&self.old_bindir, &self.config.data_dir)?;
            let control =
                pgm_cluster::ControlFile::read(&self.config.data_dir).map_err(|e| e.to_string())?;
            Ok(control.checkpoint_lsn)
        });
        self.leader_stopped = checkpoint.is_ok() || !node::running(&self.config.data_dir);
        self.event(
            &leader,
            "stop-leader",
            &checkpoint.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        let checkpoint = checkpoint.map_err(Stop::Before)?;

        // Each replica replays it, then stops.
        self.printer.emit(&Event::StepStart {
            step: "stop-replicas",
        });
        let started = Instant::now();
        let replicas: Vec<MemberView> = self.replicas().into_iter().cloned().collect();
        for m in &replicas {
            let result = self
                .agent(
                    m,
                    "stop-replica",
                    &[
                        "--lsn".into(),
                        pgm_cluster::control::format_lsn(checkpoint),
                        "--timeout".into(),
                        self.args.replay_timeout.to_string(),
                    ],
                    None,
                )
                .map(|_| ());
            self.event(m, "stop-replica", &result);
            if let Err(e) = result {
                self.printer
                    .emit(&Event::step_end("stop-replicas", false, started));
                // A replica that stopped anyway is started again too.
                self.replicas_stopped.push(m.name.clone());
                return Err(Stop::Before(format!("{}: {e}", m.name)));
            }
            self.replicas_stopped.push(m.name.clone());
        }
        self.printer
            .emit(&Event::step_end("stop-replicas", true, started));

        // The leader's upgrade, with its kit.
        let probe = self.probe(&self.config.name).clone();
        let kit = kit_path(&probe.new_datadir);
        let result = self.step("upgrade-leader", || self.upgrade_leader(&probe, &kit));
        self.event(
            &leader,
            "upgrade",
            &result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()),
        );
        match result {
            Ok(()) => Ok(()),
            // Past its point of no return: nothing is put back.
            Err((message, true)) => Err(Stop::PastThePoint(message)),
            Err((message, false)) => {
                self.discard_leader_upgrade(&probe.new_datadir, &kit);
                Err(Stop::Before(message))
            }
        }
    }

    /// Runs `pg-migrate upgrade … --standby-kit` on the leader. Err's bool:
    /// whether the upgrade passed its point of no return.
    fn upgrade_leader(&self, probe: &Probe, kit: &Path) -> Result<(), (String, bool)> {
        let mut command = Command::new(&self.pg_migrate);
        command
            .arg("-b")
            .arg(&self.old_bindir)
            .arg("-B")
            .arg(&self.new_bindir)
            .arg("-d")
            .arg(&self.config.data_dir)
            .arg("-D")
            .arg(&probe.new_datadir)
            .arg(match self.args.mode() {
                Mode::Copy => "--copy",
                Mode::Clone => "--clone",
                _ => "--link",
            })
            .arg("--standby-kit")
            .arg(kit)
            .arg("--json")
            .stdin(Stdio::null())
            .env_remove("PGDATAOLD")
            .env_remove("PGDATANEW");
        let out = command
            .output()
            .map_err(|e| (format!("running {}: {e}", self.pg_migrate.display()), false))?;
        if out.status.success() {
            return Ok(());
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let error = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["event"] == "error");
        let message = error
            .as_ref()
            .map(|e| {
                format!(
                    "the leader's upgrade failed ({}): {}",
                    e["code"].as_str().unwrap_or("?"),
                    e["message"].as_str().unwrap_or("")
                )
            })
            .unwrap_or_else(|| format!("the leader's upgrade failed ({})", out.status));
        // Exit 3: failed with the old cluster intact; anything else (4, a
        // signal) may be past the point of no return.
        let intact = out.status.code() == Some(crate::exit::FAILED_OLD_INTACT)
            || out.status.code() == Some(crate::exit::CHECKS_FAILED);
        Err((message, !intact))
    }

    /// A leader's upgrade that failed with the old cluster intact leaves a
    /// new cluster that never ran: reverted and removed, so that a second
    /// run finds the place free.
    fn discard_leader_upgrade(&self, new_datadir: &Path, kit: &Path) {
        let _ = std::fs::remove_file(kit);
        if !new_datadir.join("pg_migrate.d").exists() {
            return;
        }
        let reverted = Command::new(&self.pg_migrate)
            .arg("revert")
            .arg("-D")
            .arg(new_datadir)
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success());
        if reverted {
            let _ = std::fs::remove_dir_all(new_datadir);
        }
    }

    /// Every member back as it was: old servers started, Patroni started
    /// (the leader first), resumed.
    fn put_back(&mut self) -> Result<(), String> {
        self.printer.emit(&Event::StepStart { step: "put-back" });
        let started = Instant::now();
        let mut errors = Vec::new();
        let leader = self.leader().clone();
        if self.leader_stopped && !node::running(&self.config.data_dir) {
            let result = node::start_server(
                &self.old_bindir,
                &self.config.data_dir,
                &self.leader_options,
                &start_log(&self.config.data_dir),
            );
            self.event(&leader, "start-old", &result);
            errors.extend(result.err());
        }
        let replicas: Vec<MemberView> = self.replicas().into_iter().cloned().collect();
        for m in replicas
            .iter()
            .filter(|m| self.replicas_stopped.contains(&m.name))
        {
            let result = self.agent(m, "start-old", &[], None).map(|_| ());
            self.event(m, "start-old", &result);
            errors.extend(result.err().map(|e| format!("{}: {e}", m.name)));
        }
        let mut order = vec![leader.clone()];
        order.extend(replicas.iter().cloned());
        for m in order
            .iter()
            .filter(|m| self.patroni_stopped.contains(&m.name))
        {
            let result = self.on_host(m, &self.args.patroni_start);
            self.event(m, "start-patroni", &result);
            errors.extend(result.err().map(|e| format!("{}: {e}", m.name)));
        }
        if self.paused {
            // The leader's Patroni answers once it has started.
            let deadline = Instant::now() + Duration::from_secs(90);
            let resumed = loop {
                match rest::set_pause(&self.config.rest_url, false) {
                    Ok(()) => break Ok(()),
                    Err(e) if Instant::now() > deadline => break Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            };
            self.event(&leader, "resume", &resumed);
            errors.extend(resumed.err());
        }
        for m in &self.view.members {
            self.set_result(&m.name, "put_back", None, None);
        }
        self.printer
            .emit(&Event::step_end("put-back", errors.is_empty(), started));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn after_the_point_of_no_return(&mut self) -> Result<(), String> {
        let leader = self.leader().clone();
        let probe = self.probe(&self.config.name).clone();
        let new_datadir = probe.new_datadir.clone();
        let old_major = probe.old_major.unwrap_or(0);
        let new_major = probe.new_major.unwrap_or(0);
        let new_control =
            pgm_cluster::ControlFile::read(&new_datadir).map_err(|e| e.to_string())?;
        let new_sysid = new_control.system_identifier.to_string();
        self.summary.new_system_identifier = Some(new_sysid.clone());

        // Patroni's files and configuration for the new leader.
        let result = self.step("configure-leader", || {
            node::carry_patroni_files(
                &self.config.data_dir,
                &new_datadir,
                old_major,
                &self.new_bindir,
                new_major,
            )?;
            node::rewrite_member_config(
                self.config,
                &self.new_bindir,
                &new_datadir,
                old_major,
                new_major,
            )
            .map(|_| ())
        });
        self.event(&leader, "configure", &result);
        result?;

        // The store: the new system identifier, the dynamic configuration
        // for the new major (still paused).
        let result = self.step("store", || self.update_store(&new_sysid, new_major));
        self.event(&leader, "store", &result);
        result?;

        // The new leader, then its Patroni, which adopts it.
        let result = self.step("start-leader", || {
            node::start_server(
                &self.new_bindir,
                &new_datadir,
                &self.leader_options,
                &start_log(&new_datadir),
            )?;
            self.on_host(&leader, &self.args.patroni_start)?;
            self.wait_member(&leader, Duration::from_secs(120), |s| {
                s["role"] == "primary" && s["database_system_identifier"] == new_sysid.as_str()
            })
        });
        self.event(&leader, "start", &result);
        if let Err(e) = result {
            return Err(format!(
                "the leader is upgraded but did not come up under Patroni: {e}"
            ));
        }
        self.set_result(&leader.name, "upgraded", None, None);

        // Every replica from the kit, at once.
        let kit =
            std::fs::read(kit_path(&new_datadir)).map_err(|e| format!("the standby kit: {e}"))?;
        self.printer.emit(&Event::StepStart {
            step: "upgrade-replicas",
        });
        let started = Instant::now();
        let replicas: Vec<MemberView> = self.replicas().into_iter().cloned().collect();
        let results: Vec<(MemberView, Result<(), String>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = replicas
                .iter()
                .map(|m| {
                    let kit = &kit;
                    let this = &*self;
                    scope.spawn(move || {
                        let result = this.agent(m, "upgrade-replica", &[], Some(kit)).map(|_| ());
                        this.event(m, "upgrade", &result);
                        let result = result.and_then(|()| {
                            let started = this.on_host(m, &this.args.patroni_start);
                            this.event(m, "start-patroni", &started);
                            started
                        });
                        (m.clone(), result)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a replica's thread"))
                .collect()
        });
        let mut failed = Vec::new();
        for (m, result) in &results {
            match result {
                Ok(()) => self.set_result(&m.name, "upgraded", None, None),
                Err(e) => {
                    failed.push(m.name.clone());
                    let reinit = format!(
                        "patronictl -c {} reinit {} {} (after pointing its Patroni configuration at the new installation: postgresql.bin_dir, data_dir)",
                        self.remote.member_config(m),
                        self.config.scope,
                        m.name
                    );
                    self.set_result(&m.name, "left_stopped", Some(e.clone()), Some(reinit));
                }
            }
        }
        self.printer.emit(&Event::step_end(
            "upgrade-replicas",
            failed.is_empty(),
            started,
        ));

        // Resume, and see every upgraded replica stream.
        let result = self.step("resume", || {
            rest::set_pause(&self.config.rest_url, false)?;
            let upgraded: Vec<MemberView> = replicas
                .iter()
                .filter(|m| !failed.contains(&m.name))
                .cloned()
                .collect();
            for m in &upgraded {
                let streaming = self.wait_member(m, Duration::from_secs(120), |s| {
                    s["state"] == "streaming" || s["replication_state"] == "streaming"
                });
                self.event(m, "streaming", &streaming);
                streaming?;
            }
            Ok(())
        });
        self.event(&leader, "resume", &result);
        result?;
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} could not be upgraded and {} left stopped (see each member's reinit)",
                failed.join(", "),
                if failed.len() == 1 { "is" } else { "are" }
            ))
        }
    }

    /// The store, while every Patroni is stopped: `initialize` from the old
    /// system identifier to the new one in one compare-and-set step (a
    /// second writer loses instead of racing), and the dynamic
    /// configuration with the new major's renamed and removed settings
    /// (and archiving off, with --wal-archive off).
    fn update_store(&self, new_sysid: &str, new_major: u32) -> Result<(), String> {
        let etcd = Etcd3::of(&self.config.store)?;
        let key = self.config.key("initialize");
        let old = &self.summary.old_system_identifier;
        let current = etcd.get(&key)?;
        if current.as_deref() != Some(new_sysid) && !etcd.compare_and_set(&key, old, new_sysid)? {
            return Err(format!(
                "{key} holds {} now, neither the old system identifier {old} nor the new {new_sysid}: someone else changed the cluster",
                current.unwrap_or_default()
            ));
        }
        let config_key = self.config.key("config");
        if let Some(text) = etcd.get(&config_key)? {
            let mut doc: Value =
                serde_json::from_str(&text).map_err(|e| format!("{config_key}: {e}"))?;
            let changes = dynamic_changes(&doc, new_major);
            apply_changes_json(&mut doc, &changes);
            if self.args.wal_archive == WalArchive::Off {
                if let Some(params) = doc
                    .get_mut("postgresql")
                    .and_then(|p| p.get_mut("parameters"))
                    .and_then(|p| p.as_object_mut())
                {
                    params.insert("archive_mode".into(), Value::from("off"));
                }
            }
            let new_text = doc.to_string();
            if new_text != text && !etcd.compare_and_set(&config_key, &text, &new_text)? {
                return Err(format!(
                    "{config_key} changed while pg-migrate was writing it"
                ));
            }
        }
        Ok(())
    }

    /// Waits until a member's `/patroni` satisfies `ready`.
    fn wait_member(
        &self,
        m: &MemberView,
        timeout: Duration,
        ready: impl Fn(&Value) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = rest::member_status(&m.api_url);
            if status.as_ref().is_some_and(&ready) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not come up within {} s (its Patroni says: {})",
                    m.name,
                    timeout.as_secs(),
                    status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "nothing".into())
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn role(m: &MemberView, config: &PatroniConfig) -> &'static str {
    if m.name == config.name {
        "leader"
    } else {
        "replica"
    }
}

/// Where the leader's standby kit is written: beside its new data directory.
pub fn kit_path(new_datadir: &Path) -> PathBuf {
    PathBuf::from(format!("{}.standby-kit", new_datadir.display()))
}

/// The log of a server pg-migrate starts for Patroni: beside its data
/// directory (never inside the new one's pg_migrate.d, which a kit carries).
pub fn start_log(datadir: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pg-migrate-start.log", datadir.display()))
}
