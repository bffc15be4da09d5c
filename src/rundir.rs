//! The run directory: a private (0700) directory outside both clusters that
//! holds the servers' unix sockets and the logs. Removed after success unless
//! `--retain`; kept after a failure so that its logs can be read.

use std::path::{Path, PathBuf};

pub struct RunDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl RunDir {
    pub fn create(base: &Path) -> std::io::Result<RunDir> {
        let dir = tempfile::Builder::new().prefix("pgm-").tempdir_in(base)?;
        let path = dir.path().to_path_buf();
        std::fs::create_dir(path.join("log"))?;
        // The new server's socket lives apart from the old one's: both may
        // run at once (the checks hand the old server on to the dump) with
        // the same port, as pg_upgrade's defaults have it.
        std::fs::create_dir(path.join("new"))?;
        Ok(RunDir {
            dir: Some(dir),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where a server puts its unix socket.
    pub fn socket_dir(&self, old: bool) -> PathBuf {
        if old {
            self.path.clone()
        } else {
            self.path.join("new")
        }
    }

    pub fn log_dir(&self) -> PathBuf {
        self.path.join("log")
    }

    /// Keeps the directory on disk and returns its path.
    pub fn keep(mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        self.path.clone()
    }

    /// Whether any server wrote a log (worth keeping after a failure).
    pub fn has_logs(&self) -> bool {
        std::fs::read_dir(self.log_dir())
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }
}
