//! `--method dump`: `dump-all` (every database with its data) and
//! `restore-all` (reloaded into a plain new server).

use crate::engine::*;

impl<'a> Engine<'a> {
    /// The dump-and-reload method's dump: the backup when one was made,
    /// else every database with its data into the run's directory.
    pub(in crate::engine) fn dump_dir(&self) -> PathBuf {
        match &self.settings.backup_dir {
            Some(dir) => dir.clone(),
            None => self.output().join("dump-all"),
        }
    }

    /// `--method dump`: globals and every database, with their data, by
    /// the new installation's pg_dumpall and pg_dump (unless the backup
    /// already holds them); the old server stops.
    pub(in crate::engine) fn dump_all(&mut self) -> Result<(), Failure> {
        let server = self.old_server_for_dumps()?;
        if self.settings.backup_dir.is_none() {
            let dir = self.dump_dir();
            let log_dir = self.log_dir();
            let work = crate::logical_backup::Work {
                printer: self.printer,
                step: "dump-all",
                jobs: self.settings.jobs,
                log_dir: &log_dir,
            };
            crate::logical_backup::write(
                &work,
                &server,
                &self.new_install,
                &self.old_dir.path,
                &dir,
            )?;
        }
        if self.settings.after.verify.is_some() {
            // Measured next, by the same server.
            self.old_server = Some(server);
            return Ok(());
        }
        server
            .stop()
            .map_err(|e| Failure::new(Code::ServerStopFailed, e))
    }

    /// `--method dump`: the dump restored into the new cluster (a normal
    /// server, not binary-upgrade mode: every object gets new OIDs and
    /// every index is built anew).
    pub(in crate::engine) fn restore_all(&mut self) -> Result<(), Failure> {
        self.new_touched = true;
        let dir = self.dump_dir();
        let manifest = pgm_catalog::backup::verify_backup(&dir).map_err(|u| {
            Failure::new(
                Code::RestoreFailed,
                format!("the dump in {} cannot be restored: {u}", dir.display()),
            )
        })?;
        let mut options = self.server_options(false);
        options.binary_upgrade = false;
        self.note_new_server()?;
        let server = Server::start(&self.new_install, self.new_dir(), &options)
            .map_err(|e| Failure::new(Code::ServerStartFailed, e))?;
        let log_dir = self.log_dir();
        let work = crate::logical_backup::Work {
            printer: self.printer,
            step: "restore-all",
            jobs: self.settings.jobs,
            log_dir: &log_dir,
        };
        crate::logical_backup::restore_into(
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
            .map_err(|e| Failure::new(Code::ServerStopFailed, e))
    }
}
