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
use super::rest::{self, MemberView};
use super::state::{self, OperationState};
use super::store::Etcd3;
use crate::cli::{Mode, PatroniArgs, WalArchive};
use crate::output::{Event, MemberResult, PatroniSummary, Printer, StepStatus};

/// How the procedure ended.
pub enum Outcome {
    /// Every member on the new major, the cluster resumed.
    Upgraded,
    /// Nothing was done to any member.
    NotStarted { message: String },
    /// Failed before the leader's point of no return: every member put
    /// back as it was.
    PutBack { message: String },
    /// Stopped half-way: `--resume` goes on. `leader_upgraded`: the
    /// leader's upgrade finished (else it may be under way or undecided).
    Unfinished {
        message: String,
        leader_upgraded: bool,
    },
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
    /// The operation's journal, saved at each milestone.
    pub state: OperationState,
    state_path: PathBuf,
    pub pg_migrate: PathBuf,
    pub summary: PatroniSummary,
}

impl<'a> Procedure<'a> {
    pub fn new(
        args: &'a PatroniArgs,
        config: &'a PatroniConfig,
        remote: &'a Remote,
        printer: &'a Printer,
        state: OperationState,
        state_path: PathBuf,
    ) -> Procedure<'a> {
        let summary = PatroniSummary {
            scope: state.scope.clone(),
            leader: state.leader.clone(),
            old_system_identifier: state.old_system_identifier.clone(),
            new_system_identifier: None,
            members: state
                .view
                .members
                .iter()
                .map(|m| MemberResult {
                    name: m.name.clone(),
                    role: if m.name == state.leader {
                        "leader"
                    } else {
                        "replica"
                    },
                    result: "not_reached",
                    data_dir: state
                        .probes
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
            state,
            state_path,
            pg_migrate: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("pg-migrate")),
            summary,
        }
    }

    /// The journal is written beside the leader's old data directory and,
    /// where that differs, beside its new one: the leader's configuration
    /// names the new one once rewritten, and `--resume` finds it there.
    fn journal_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.state_path.clone()];
        let (old, new) = self.leader_dirs();
        for dir in [old, new] {
            if let (Some(parent), Some(name)) = (dir.parent(), self.state_path.file_name()) {
                let path = parent.join(name);
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
        }
        paths
    }

    fn save(&self) -> Result<(), String> {
        for path in self.journal_paths() {
            state::save(&path, &self.state)?;
        }
        Ok(())
    }

    fn remove_journal(&self) {
        for path in self.journal_paths() {
            let _ = std::fs::remove_file(path);
        }
    }

    fn leader(&self) -> &MemberView {
        self.state
            .view
            .members
            .iter()
            .find(|m| m.name == self.state.leader)
            .expect("the preflight found the leader")
    }

    fn replicas(&self) -> Vec<&MemberView> {
        self.state
            .view
            .members
            .iter()
            .filter(|m| m.name != self.state.leader)
            .collect()
    }

    fn probe(&self, name: &str) -> &Probe {
        self.state
            .probes
            .iter()
            .find(|p| p.name == name)
            .expect("the preflight probed every member")
    }

    /// The leader's data directories: the old one and the new one.
    fn leader_dirs(&self) -> (PathBuf, PathBuf) {
        let probe = self.probe(&self.state.leader);
        (probe.data_dir.clone(), probe.new_datadir.clone())
    }

    fn event(&self, m: &MemberView, step: &'static str, result: &Result<(), String>) {
        self.printer.emit(&Event::Member {
            member: m.name.clone(),
            role: if m.name == self.state.leader {
                "leader"
            } else {
                "replica"
            },
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
        if m.name == self.state.leader {
            super::remote::run_local_shell(&line)
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
            self.state.new_bindir.display().to_string(),
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

    /// Goes on with an interrupted operation: forward once the leader's
    /// upgrade was started and can be finished, else back.
    pub fn resume(&mut self) -> Outcome {
        if !self.state.leader_upgraded && self.state.leader_upgrade_started {
            let (_, new) = self.leader_dirs();
            let journal = crate::journal::JournalView::read(&new);
            let state = crate::journal::read_state(&new);
            let begun = journal.is_some() && state != Some(crate::journal::State::Reverted);
            if begun {
                // Begun: finish it. Only a run that never passed its point of
                // no return may be given up, and only when it cannot finish.
                match self.finish_leader_upgrade(&new) {
                    Ok(()) => {
                        self.state.leader_upgraded = true;
                        self.set_result(&self.state.leader.clone(), "upgraded", None, None);
                        if let Err(e) = self.save() {
                            return Outcome::Unfinished {
                                message: e,
                                leader_upgraded: true,
                            };
                        }
                    }
                    Err(e)
                        if journal
                            .as_ref()
                            .is_some_and(|j| j.passed_point_of_no_return()) =>
                    {
                        return Outcome::Unfinished {
                            message: format!("the leader's upgrade passed its point of no return and cannot be finished yet: {e}; fix the cause and run --resume again"),
                            leader_upgraded: false,
                        };
                    }
                    Err(e) => {
                        let kit = kit_path(&new);
                        if !self.discard_leader_upgrade(&new, &kit) {
                            return Outcome::Unfinished {
                                message: format!(
                                    "the leader's upgrade into {} can be neither finished ({e}) nor reverted: see pg-migrate resume -D {} and pg-migrate revert -D {}",
                                    new.display(),
                                    new.display(),
                                    new.display()
                                ),
                                leader_upgraded: false,
                            };
                        }
                    }
                }
            } else if !self.discard_leader_upgrade(&new, &kit_path(&new)) {
                return Outcome::Unfinished {
                    message: format!(
                        "{} is left from a reverted upgrade and cannot be removed",
                        new.display()
                    ),
                    leader_upgraded: false,
                };
            }
        }
        if !self.state.leader_upgraded {
            return match self.put_back() {
                Ok(()) => Outcome::PutBack {
                    message: "the interrupted run had not upgraded the leader: the cluster is put back".into(),
                },
                Err(e) => Outcome::Unfinished {
                    message: format!("putting the cluster back failed: {e}; run --resume again once the cause is fixed"),
                    leader_upgraded: false,
                },
            };
        }
        match self.after_the_point_of_no_return() {
            Ok(()) => Outcome::Upgraded,
            Err(message) => Outcome::Unfinished {
                message,
                leader_upgraded: true,
            },
        }
    }

    pub fn run(&mut self) -> Outcome {
        if let Err(e) = self.save() {
            return Outcome::NotStarted {
                message: format!("the operation's journal cannot be written: {e}"),
            };
        }
        match self.before_the_point_of_no_return() {
            Ok(()) => {}
            Err(Stop::PastThePoint(message)) => {
                return Outcome::Unfinished {
                    message,
                    leader_upgraded: false,
                }
            }
            Err(Stop::Before(message)) => {
                // A leader's upgrade that could not be undone is not put back
                // around: its old cluster may share files with it.
                if self.state.leader_upgrade_started {
                    return Outcome::Unfinished {
                        message: format!("{message}; the leader's begun upgrade could not be reverted: run --resume once the cause is fixed"),
                        leader_upgraded: false,
                    };
                }
                return match self.put_back() {
                    Ok(()) => Outcome::PutBack { message },
                    Err(e) => Outcome::Unfinished {
                        message: format!("{message}; putting the cluster back failed too: {e}; run --resume once the cause is fixed"),
                        leader_upgraded: false,
                    },
                };
            }
        }
        match self.after_the_point_of_no_return() {
            Ok(()) => Outcome::Upgraded,
            Err(message) => Outcome::Unfinished {
                message,
                leader_upgraded: true,
            },
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
        let deadline = Instant::now() + Duration::from_secs(60);
        for m in &self.state.view.members {
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
            let result = self.on_host(m, &self.args.patroni_stop).and_then(|()| {
                // Its REST API goes with it; one that still answers was not stopped.
                let deadline = Instant::now() + Duration::from_secs(60);
                while rest::member_status(&m.api_url).is_some() {
                    if Instant::now() > deadline {
                        return Err(
                            "--patroni-stop returned, but its Patroni still answers after 60 s"
                                .to_string(),
                        );
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Ok(())
            });
            self.event(m, "stop-patroni", &result);
            if let Err(e) = result {
                self.printer
                    .emit(&Event::step_end("stop-patroni", false, started));
                return Err(Stop::Before(format!("stopping {}'s Patroni: {e}", m.name)));
            }
        }
        self.printer
            .emit(&Event::step_end("stop-patroni", true, started));
        let (old_dir, _) = self.leader_dirs();
        if !node::running(&old_dir) {
            return Err(Stop::Before(format!(
                "the leader's server stopped with its Patroni: is {} paused? (--patroni-stop must stop Patroni alone)",
                self.config.scope
            )));
        }

        // The leader stopped cleanly: its shutdown checkpoint is the last WAL.
        let leader = self.leader().clone();
        self.state.leader_options = node::server_options(&old_dir).map_err(Stop::Before)?;
        self.save().map_err(Stop::Before)?;
        let checkpoint = self.step("stop-leader", || {
            node::stop_server(&self.state.old_bindir, &old_dir)?;
            let control = pgm_cluster::ControlFile::read(&old_dir).map_err(|e| e.to_string())?;
            Ok((control.checkpoint_lsn, control.timeline))
        });
        pgm_cluster::faults::point(|| "patroni:leader-stopped".into());
        self.event(
            &leader,
            "stop-leader",
            &checkpoint.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        let (checkpoint, timeline) = checkpoint.map_err(Stop::Before)?;

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
                        "--timeline".into(),
                        timeline.to_string(),
                    ],
                    None,
                )
                .map(|_| ());
            self.event(m, "stop-replica", &result);
            if let Err(e) = result {
                self.printer
                    .emit(&Event::step_end("stop-replicas", false, started));
                return Err(Stop::Before(format!("{}: {e}", m.name)));
            }
        }
        self.printer
            .emit(&Event::step_end("stop-replicas", true, started));

        // The leader's upgrade, with its kit.
        let probe = self.probe(&self.state.leader).clone();
        let kit = kit_path(&probe.new_datadir);
        self.state.leader_upgrade_started = true;
        self.save().map_err(Stop::Before)?;
        let result = self.step("upgrade-leader", || self.upgrade_leader(&probe, &kit));
        self.event(
            &leader,
            "upgrade",
            &result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()),
        );
        match result {
            Ok(()) => {
                self.state.leader_upgraded = true;
                let leader_name = self.state.leader.clone();
                self.set_result(&leader_name, "upgraded", None, None);
                self.save().map_err(Stop::PastThePoint)?;
                pgm_cluster::faults::point(|| "patroni:leader-upgraded".into());
                Ok(())
            }
            // Past its point of no return: nothing is put back.
            Err((message, true)) => Err(Stop::PastThePoint(message)),
            Err((message, false)) => {
                if self.discard_leader_upgrade(&probe.new_datadir, &kit) {
                    self.state.leader_upgrade_started = false;
                    self.save().map_err(Stop::Before)?;
                }
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
            .arg(&self.state.old_bindir)
            .arg("-B")
            .arg(&self.state.new_bindir)
            .arg("-d")
            .arg(&probe.data_dir)
            .arg("-D")
            .arg(&probe.new_datadir)
            .arg(match self.args.mode() {
                Mode::Copy => "--copy",
                Mode::Clone => "--clone",
                _ => "--link",
            })
            .arg("--jobs")
            .arg(self.args.jobs.to_string())
            .arg("--standby-kit")
            .arg(kit)
            .arg("--json")
            .stdin(Stdio::null())
            .env_remove("PGDATAOLD")
            .env_remove("PGDATANEW");
        let out = command
            .output()
            .map_err(|e| (format!("running {}: {e}", self.pg_migrate.display()), false))?;
        self.pass_on_notices(&out.stdout);
        if out.status.success() {
            return Ok(());
        }
        let message = match super::remote::error_event(&out.stdout) {
            Some(error) => format!("the leader's upgrade failed {error}"),
            None => format!("the leader's upgrade failed ({})", out.status),
        };
        // Past the point of no return only if the upgrade's own journal says
        // so (whatever its exit status: a refusal, a signal).
        let past = crate::journal::JournalView::read(&probe.new_datadir)
            .is_some_and(|j| j.passed_point_of_no_return());
        Err((message, past))
    }

    /// What the leader's upgrade (or its resume) told its operator, told
    /// this one's, naming the leader: the slots made again, a raised lock
    /// table, a restore over one connection.
    fn pass_on_notices(&self, stdout: &[u8]) {
        for (code, message) in super::remote::notice_events(stdout) {
            self.printer
                .notice(code, format!("leader {}: {message}", self.state.leader));
        }
    }

    /// A leader's upgrade that failed with the old cluster intact leaves a
    /// new cluster that never ran: reverted and removed, so that a second
    /// run finds the place free.
    fn discard_leader_upgrade(&self, new_datadir: &Path, kit: &Path) -> bool {
        if new_datadir.join("pg_migrate.d").exists()
            && crate::journal::read_state(new_datadir) != Some(crate::journal::State::Reverted)
        {
            let reverted = Command::new(&self.pg_migrate)
                .arg("revert")
                .arg("-D")
                .arg(new_datadir)
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success());
            if !reverted {
                return false;
            }
        }
        // Reverted (or never begun): the new cluster never ran, and the kit
        // is of an upgrade that is no more.
        let _ = std::fs::remove_file(kit);
        if new_datadir.exists() && std::fs::remove_dir_all(new_datadir).is_err() {
            return false;
        }
        true
    }

    /// An interrupted leader's upgrade finished by the engine's resume (an
    /// upgrade that had finished already answers so, which is as good).
    fn finish_leader_upgrade(&self, new_datadir: &Path) -> Result<(), String> {
        let kit = kit_path(new_datadir);
        let complete =
            crate::journal::read_state(new_datadir) == Some(crate::journal::State::Complete);
        if complete && kit.is_file() {
            return Ok(());
        }
        let out = Command::new(&self.pg_migrate)
            .arg("resume")
            .arg("-D")
            .arg(new_datadir)
            .arg("--json")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        self.pass_on_notices(&out.stdout);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let already = stdout.contains("\"already_upgraded\"")
            || crate::journal::read_state(new_datadir) == Some(crate::journal::State::Complete);
        if !(out.status.success() || already) {
            return Err(format!(
                "pg-migrate resume -D {} failed ({})",
                new_datadir.display(),
                out.status
            ));
        }
        if !kit.is_file() {
            // The kit is written before the new cluster first starts; it has not.
            let made = Command::new(&self.pg_migrate)
                .arg("standby-kit")
                .arg("-D")
                .arg(new_datadir)
                .arg("-o")
                .arg(&kit)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| e.to_string())?;
            if !made.status.success() {
                return Err(format!(
                    "pg-migrate standby-kit -D {} failed",
                    new_datadir.display()
                ));
            }
        }
        Ok(())
    }

    /// Every member back as it was: old servers started, Patroni started
    /// (the leader first), resumed. Each part looks before it acts, so that
    /// it can run again (a resume after an interrupted run).
    fn put_back(&mut self) -> Result<(), String> {
        self.printer.emit(&Event::StepStart { step: "put-back" });
        let started = Instant::now();
        let mut errors = Vec::new();
        let leader = self.leader().clone();
        let (old_dir, _) = self.leader_dirs();
        if !node::running(&old_dir) {
            let options = if self.state.leader_options.is_empty() {
                node::server_options(&old_dir)
            } else {
                Ok(self.state.leader_options.clone())
            };
            let result = options.and_then(|options| {
                node::start_server(
                    &self.state.old_bindir,
                    &old_dir,
                    &options,
                    &start_log(&old_dir),
                )
            });
            self.event(&leader, "start-old", &result);
            errors.extend(result.err());
        }
        let replicas: Vec<MemberView> = self.replicas().into_iter().cloned().collect();
        for m in &replicas {
            let result = self.agent(m, "start-old", &[], None).map(|_| ());
            self.event(m, "start-old", &result);
            errors.extend(result.err().map(|e| format!("{}: {e}", m.name)));
        }
        let mut order = vec![leader.clone()];
        order.extend(replicas.iter().cloned());
        for m in &order {
            if rest::member_status(&m.api_url).is_some() {
                continue;
            }
            let result = self.on_host(m, &self.args.patroni_start);
            self.event(m, "start-patroni", &result);
            errors.extend(result.err().map(|e| format!("{}: {e}", m.name)));
        }
        // The leader's Patroni answers once it has started.
        let deadline = Instant::now() + Duration::from_secs(90);
        let resumed = loop {
            match rest::set_pause(&self.config.rest_url, false) {
                Ok(()) => break Ok(()),
                Err(e) if Instant::now() > deadline => break Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        // Resumed is what every member's Patroni says, not only the store
        // (each reads it on its next loop): a wrapper that looks right after
        // must not find one still paused.
        let resumed = resumed.and_then(|()| self.wait_resumed(&order));
        self.event(&leader, "resume", &resumed);
        errors.extend(resumed.err());
        let names: Vec<String> = self
            .state
            .view
            .members
            .iter()
            .map(|m| m.name.clone())
            .collect();
        for name in names {
            self.set_result(&name, "put_back", None, None);
        }
        self.printer
            .emit(&Event::step_end("put-back", errors.is_empty(), started));
        if errors.is_empty() {
            let _ = std::fs::remove_file(&self.state_path);
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn after_the_point_of_no_return(&mut self) -> Result<(), String> {
        let leader = self.leader().clone();
        let probe = self.probe(&self.state.leader).clone();
        let old_datadir = probe.data_dir.clone();
        let new_datadir = probe.new_datadir.clone();
        let old_major = probe.old_major.unwrap_or(0);
        let new_major = probe.new_major.unwrap_or(0);
        let new_control =
            pgm_cluster::ControlFile::read(&new_datadir).map_err(|e| e.to_string())?;
        let new_sysid = new_control.system_identifier.to_string();
        self.summary.new_system_identifier = Some(new_sysid.clone());

        // Patroni's files and configuration for the new leader (not again
        // once its Patroni runs it: Patroni owns them then).
        let archive_off = self.args.wal_archive == WalArchive::Off;
        let leader_runs_new = rest::member_status(&leader.api_url)
            .is_some_and(|s| s["database_system_identifier"] == new_sysid.as_str());
        let result = self.step("configure-leader", || {
            if leader_runs_new {
                return Ok(());
            }
            node::carry_patroni_files(
                &old_datadir,
                &new_datadir,
                old_major,
                &self.state.new_bindir,
                new_major,
                archive_off,
            )?;
            node::rewrite_member_config(
                self.config,
                &self.state.new_bindir,
                &new_datadir,
                old_major,
                new_major,
                archive_off,
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

        // The new leader, then its Patroni, which adopts it; meanwhile every
        // replica's files are upgraded from the kit. A replica's server
        // starts only once the leader runs: a standby that finds no primary
        // waits wal_retrieve_retry_interval (5 s) before it tries again.
        let kit =
            std::fs::read(kit_path(&new_datadir)).map_err(|e| format!("the standby kit: {e}"))?;
        let replicas: Vec<MemberView> = self.replicas().into_iter().cloned().collect();
        let old_major_arg = vec!["--old-major".to_string(), old_major.to_string()];
        let new_sysid = &new_sysid;
        let (result, upgraded_files) = std::thread::scope(|scope| {
            let handles: Vec<_> = replicas
                .iter()
                .map(|m| {
                    let (kit, this, old_major_arg) = (&kit, &*self, &old_major_arg);
                    scope.spawn(move || {
                        // Done by an earlier run: its Patroni answers for the
                        // new cluster (Ok(true): nothing left to do).
                        if rest::member_status(&m.api_url)
                            .is_some_and(|s| s["database_system_identifier"] == new_sysid.as_str())
                        {
                            return Ok(true);
                        }
                        let mut extra = old_major_arg.clone();
                        extra.push("--no-start".to_string());
                        let result = this
                            .agent(m, "upgrade-replica", &extra, Some(kit))
                            .map(|_| ());
                        this.event(m, "upgrade", &result);
                        result.map(|_| false)
                    })
                })
                .collect();
            let result = self.step("start-leader", || {
                if !node::running(&new_datadir) {
                    node::start_server(
                        &self.state.new_bindir,
                        &new_datadir,
                        &self.state.leader_options,
                        &start_log(&new_datadir),
                    )?;
                }
                if rest::member_status(&leader.api_url).is_none() {
                    self.on_host(&leader, &self.args.patroni_start)?;
                }
                self.wait_member(&leader, Duration::from_secs(120), |s| {
                    s["role"] == "primary" && s["database_system_identifier"] == new_sysid.as_str()
                })
            });
            self.event(&leader, "start", &result);
            let files: Vec<Result<bool, String>> = handles
                .into_iter()
                .map(|h| h.join().expect("a replica's thread"))
                .collect();
            (result, files)
        });
        pgm_cluster::faults::point(|| "patroni:leader-started".into());
        if let Err(e) = result {
            return Err(format!(
                "the leader is upgraded but did not come up under Patroni: {e}"
            ));
        }
        self.set_result(&leader.name, "upgraded", None, None);

        // Every upgraded replica started, then its Patroni, at once.
        self.printer.emit(&Event::StepStart {
            step: "upgrade-replicas",
        });
        let started = Instant::now();
        let results: Vec<(MemberView, Result<Option<String>, String>)> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = replicas
                    .iter()
                    .zip(upgraded_files)
                    .map(|(m, files)| {
                        let this = &*self;
                        let old_major_arg = &old_major_arg;
                        scope.spawn(move || {
                            match files {
                                Ok(true) => return (m.clone(), Ok(None)),
                                Err(e) => return (m.clone(), Err(e)),
                                Ok(false) => {}
                            }
                            let result =
                                this.agent(m, "start-new", old_major_arg, None).map(|_| ());
                            this.event(m, "start", &result);
                            if let Err(e) = result {
                                return (m.clone(), Err(e));
                            }
                            // Upgraded and running: a Patroni that does not
                            // start is reported, not undone.
                            let started = this.on_host(m, &this.args.patroni_start);
                            this.event(m, "start-patroni", &started);
                            (m.clone(), Ok(started.err()))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a replica's thread"))
                    .collect()
            });
        let mut failed = Vec::new();
        let mut failed_patroni = Vec::new();
        for (m, result) in &results {
            match result {
                Ok(None) => self.set_result(&m.name, "upgraded", None, None),
                Ok(Some(e)) => {
                    failed_patroni.push(m.name.clone());
                    self.set_result(
                        &m.name,
                        "upgraded",
                        Some(format!(
                            "upgraded and running, but its Patroni did not start: {e}"
                        )),
                        None,
                    )
                }
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
            let mut running = vec![leader.clone()];
            running.extend(
                replicas
                    .iter()
                    .filter(|m| !failed.contains(&m.name) && !failed_patroni.contains(&m.name))
                    .cloned(),
            );
            self.wait_resumed(&running)?;
            let upgraded: Vec<MemberView> = replicas
                .iter()
                .filter(|m| !failed.contains(&m.name) && !failed_patroni.contains(&m.name))
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
        if failed.is_empty() && failed_patroni.is_empty() {
            self.remove_journal();
            Ok(())
        } else if failed.is_empty() {
            Err(format!(
                "{}: upgraded, but Patroni did not start: start it (--patroni-start), then run --resume",
                failed_patroni.join(", ")
            ))
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
    /// second writer loses instead of racing), the old cluster's timeline
    /// history removed, and the dynamic configuration with the new major's
    /// renamed and removed settings (and archiving off, with --wal-archive
    /// off).
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
        // The old cluster's timelines: the upgrade starts the new one on
        // timeline 1 (as pg_upgrade does), and Patroni takes a member whose
        // timeline is behind the store's history for one that may not lead.
        etcd.delete(&self.config.key("history"))?;
        let config_key = self.config.key("config");
        if let Some(text) = etcd.get(&config_key)? {
            let mut doc: Value =
                serde_json::from_str(&text).map_err(|e| format!("{config_key}: {e}"))?;
            let changes = dynamic_changes(&doc, new_major);
            apply_changes_json(&mut doc, &changes);
            if self.args.wal_archive == WalArchive::Off {
                if let Some(doc) = doc.as_object_mut() {
                    let postgresql = doc
                        .entry("postgresql")
                        .or_insert_with(|| serde_json::json!({}));
                    if let Some(postgresql) = postgresql.as_object_mut() {
                        let params = postgresql
                            .entry("parameters")
                            .or_insert_with(|| serde_json::json!({}));
                        if let Some(params) = params.as_object_mut() {
                            params.insert("archive_mode".into(), Value::from("off"));
                        }
                    }
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
    /// Waits until each of `members`' Patroni no longer says paused.
    fn wait_resumed(&self, members: &[MemberView]) -> Result<(), String> {
        for m in members {
            self.wait_member(m, Duration::from_secs(60), |s| {
                !s["pause"].as_bool().unwrap_or(false)
            })
            .map_err(|e| format!("not seen resumed: {e}"))?;
        }
        Ok(())
    }

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

/// Where the leader's standby kit is written: beside its new data directory.
pub fn kit_path(new_datadir: &Path) -> PathBuf {
    PathBuf::from(format!("{}.standby-kit", new_datadir.display()))
}

/// The log of a server pg-migrate starts for Patroni: beside its data
/// directory (never inside the new one's pg_migrate.d, which a kit carries).
pub fn start_log(datadir: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pg-migrate-start.log", datadir.display()))
}
