//! `create-new-cluster` (initdb a new cluster that matches the old one, then
//! the checks that waited for it) and what every run opens first: its output
//! directory, the journal, the new cluster's pristine archive.

use crate::engine::*;
use crate::journal::{AfterRecord, PlanRecord, PlanSide};

impl<'a> Engine<'a> {
    /// initdb a new cluster that matches the old one, then run the checks
    /// that had to wait for it.
    pub(in crate::engine) fn create_new_cluster(&mut self) -> Result<(), Failure> {
        // Only a run that began with the checks creates the new cluster.
        let mut checks = self.checks.take().ok_or_else(|| {
            Failure::new(
                Code::Internal,
                "the new cluster is to be created without the checks' report",
            )
        })?;
        let mut words = pgm_verifier::matching_initdb(&self.config, &checks);
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
            datadir: self.settings.new_datadir().display().to_string(),
        });
        // initdb writes into a sibling directory that is renamed into place, so
        // that an interrupted initdb never leaves a half-made cluster at -D.
        let target = self.settings.new_datadir().to_path_buf();
        let staging = PathBuf::from(format!("{}.pg-migrate-initdb", target.display()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| {
                Failure::new(Code::InitdbFailed, format!("{}: {e}", staging.display()))
            })?;
        }
        let mut args = words[1..].to_vec();
        if let Some(at) = args.iter().position(|w| w == "-D") {
            args[at + 1] = staging.display().to_string();
        }
        PgCommand::new(&words[0])
            .args(&args)
            .run()
            .map_err(|e| Failure::new(Code::InitdbFailed, e))?;
        std::fs::rename(&staging, &target)
            .map_err(|e| Failure::new(Code::InitdbFailed, format!("{}: {e}", target.display())))?;
        self.created_new = true;
        let printer = self.printer;
        let ok = pgm_verifier::check_created_new(&self.config, &mut checks, &mut |f| {
            printer.emit(&crate::output::Event::check(f))
        });
        // What the checks of the created cluster found is the plan's now.
        self.new_dir = checks.new.datadir.clone();
        self.new_control = checks.new.control.clone();
        self.new_catalog = checks.new.catalog.clone();
        self.checks = Some(checks);
        if !ok {
            return Err(Failure {
                code: Code::NewClusterMismatch,
                message: "the new cluster pg-migrate created does not pass the checks (see the failed check events)".into(),
                remedy: Some(format!(
                    "remove {} and use a new installation built like the old one",
                    self.settings.new_datadir().display()
                )),
                clusters: None,
            });
        }
        Ok(())
    }

    /// `<new>/pg_migrate.d/`: the journal, the state file, the pristine copy
    /// of the new cluster, and per run the logs and dumps.
    pub(in crate::engine) fn open_output(&mut self) -> Result<(), Failure> {
        let new_path = self.new_dir().path.clone();
        let base = crate::journal::dir(&new_path);
        let output = base.join(format!("run-{}", now_ms()));
        let fail = |e: std::io::Error| {
            Failure::new(Code::OutputDirFailed, format!("{}: {e}", base.display()))
        };
        for sub in ["log", "dump"] {
            std::fs::create_dir_all(output.join(sub)).map_err(fail)?;
        }
        crate::journal::remove_staged_copies(&new_path);
        let first = JournalView::read(&new_path)
            .and_then(|j| j.plan().cloned())
            .is_none();
        let run = Record::Run {
            run_dir: self.run_dir.path().to_path_buf(),
            output: output.clone(),
            pid: std::process::id(),
            resuming: self.resuming,
        };
        let journal = if first {
            // What recovery needs is durable before the journal appears:
            // first the new cluster as initdb made it, then the journal
            // with its plan, whole, then the state.
            crate::journal::save_pristine(&new_path).map_err(fail)?;
            pgm_cluster::faults::point(|| "open-output:pristine-saved".into());
            let side = |install: &Installation, datadir: &Path, port: u16| PlanSide {
                bindir: install.bindir.clone(),
                datadir: datadir.to_path_buf(),
                version: install.version.text.clone(),
                port,
            };
            let after = &self.settings.after;
            let plan = PlanRecord {
                mode: self.settings.mode,
                method: self.settings.method,
                phase: if self.phase == Phase::Prepare {
                    "prepare"
                } else {
                    "full"
                }
                .into(),
                old: side(
                    &self.old_install,
                    &self.old_dir.path,
                    self.settings.old_port,
                ),
                new: side(&self.new_install, &new_path, self.settings.new_port),
                user: self.settings.user.clone(),
                jobs: self.settings.jobs,
                cpus: self.settings.cpus,
                created_new: self.created_new,
                // What a resume must still do as asked.
                backup_dir: self.settings.backup_dir.clone(),
                log_dir: self.settings.log_dir.clone(),
                after: AfterRecord {
                    carry_config: after.carry_config,
                    update_extensions: after.update_extensions,
                    reindex_collation: after.reindex_collation,
                    post_upgrade: after.post_upgrade.clone(),
                    analyze: after.analyze,
                    verify: after.verify,
                },
            };
            let mut first = vec![Record::Plan(Box::new(plan)), run];
            if self.phase == Phase::Full {
                // Read before any server of ours ran on it: the checkpoint
                // the old cluster's standbys replayed to.
                first.push(Record::OldAsFound {
                    old: self.old_control.stamp(),
                    timeline: self.old_control.timeline,
                });
            }
            Journal::create(&new_path, first).map_err(|e| Failure::new(Code::JournalFailed, e))?
        } else {
            let mut journal =
                Journal::open(&new_path).map_err(|e| Failure::new(Code::JournalFailed, e))?;
            journal
                .record(run)
                .map_err(|e| Failure::new(Code::JournalFailed, e))?;
            journal
        };
        pgm_cluster::faults::point(|| "open-output:journal-made".into());
        crate::journal::write_state(&new_path, State::Upgrading)
            .map_err(|e| Failure::new(Code::JournalFailed, e))?;
        self.journal = Some(journal);
        self.output = Some(output);
        Ok(())
    }
}
