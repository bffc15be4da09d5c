//! `sync`: the new cluster to disk (and link/swap mode's old files by syncfs).

use crate::engine::*;

impl<'a> Engine<'a> {
    /// The new cluster to disk. With fsync (the default) pg-migrate syncs
    /// it itself, `-j` files at a time, and skips the files whose contents
    /// were durable before the upgrade began: the old cluster's relation
    /// files that link and swap mode only gave new names (their directories
    /// are synced, which makes the names durable). syncfs goes to initdb.
    pub(in crate::engine) fn sync(&mut self) -> Result<(), Failure> {
        if self.settings.sync_method == SyncMethod::Fsync {
            let new = self.new_dir().path.clone();
            let mut roots = vec![new.clone()];
            // What initdb --sync-only follows: pg_wal and the tablespaces.
            if let Ok(wal) = std::fs::read_link(new.join("pg_wal")) {
                roots.push(new.join(wal));
            }
            let version_dir = self.tablespace_dir(false)?;
            if let Ok(entries) = std::fs::read_dir(new.join("pg_tblspc")) {
                for entry in entries.flatten() {
                    if let Ok(location) = std::fs::read_link(entry.path()) {
                        roots.push(location.join(&version_dir));
                    }
                }
            }
            // Nothing after this step needs the moves (a resume reads them
            // from the saved plan). Copy mode lets go of them before the
            // files to sync are listed, so that the two lists (each about
            // 10 MB at 100,000 relations) are not held at once; link and
            // swap mode list only the few files not among them.
            let mut moves = std::mem::take(&mut self.moves);
            if matches!(self.settings.mode, Mode::Link | Mode::Swap) {
                // The old relation files are not fsynced one by one, but
                // they are not taken on trust either (an old cluster run
                // with fsync=off, files just copied into place): one
                // syncfs per filesystem that holds them flushes whatever
                // of them is not on disk yet, and costs little when all is.
                self.sync_old_filesystems()?;
            } else {
                moves = Vec::new();
            }
            let durable: HashSet<&Path> = moves.iter().map(|m| m.to.as_path()).collect();
            let meter = self.printer.meter("sync", 0, "files");
            pgm_transfer::sync_tree(&roots, &durable, self.settings.jobs, &|p| match p {
                pgm_transfer::SyncProgress::Total(n) => meter.grow(n),
                pgm_transfer::SyncProgress::Synced => meter.add(1, 0),
            })
            .map_err(|e| Failure::new(Code::SyncFailed, e))?;
            meter.finish();
            return Ok(());
        }
        let mut command = self
            .new_install
            .command(Tool::Initdb)
            .map_err(|e| Failure::new(Code::SyncFailed, e))?
            .arg("--sync-only")
            .arg("-D")
            .arg(&self.new_dir().path);
        if self.new_install.version.major.initdb_has_sync_method() {
            let method = match self.settings.sync_method {
                SyncMethod::Fsync => "fsync",
                SyncMethod::Syncfs => "syncfs",
            };
            command = command.args(["--sync-method", method]);
        }
        command
            .run()
            .map_err(|e| Failure::new(Code::SyncFailed, e))?;
        Ok(())
    }

    /// syncfs(2) on every filesystem that holds the old cluster's
    /// relation files (its data directory and its tablespaces).
    pub(in crate::engine) fn sync_old_filesystems(&self) -> Result<(), Failure> {
        use std::os::unix::fs::MetadataExt;
        let mut places = vec![self.old_dir.path.clone()];
        places.extend(self.tablespaces.iter().map(PathBuf::from));
        let mut done = HashSet::new();
        for place in places {
            let fail =
                |e: String| Failure::new(Code::SyncFailed, format!("{}: {e}", place.display()));
            let dir = std::fs::File::open(&place).map_err(|e| fail(e.to_string()))?;
            let device = dir.metadata().map_err(|e| fail(e.to_string()))?.dev();
            if done.insert(device) {
                nix::unistd::syncfs(&dir).map_err(|e| fail(e.to_string()))?;
            }
        }
        Ok(())
    }
}
