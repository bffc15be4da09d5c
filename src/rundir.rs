//! The run directory: a private (0700) directory outside both clusters that
//! holds the servers' unix sockets and the logs. Removed after success unless
//! `--retain`; kept after a failure so that its logs can be read. With
//! `--log-dir`, the logs go to a directory of this run's own under the one
//! named instead, and stay there (a container removed after the run keeps
//! them on its volume).

use std::path::{Path, PathBuf};

use pgm_cluster::{ClusterState, DataDir, Installation, Server, ServerOptions, ServerStatus};

use crate::failure::{ClusterCondition, Code, Failure};

use crate::cli::Settings;

pub struct RunDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    /// `--log-dir`: this run's directory under it.
    logs: Option<PathBuf>,
    /// Held while the run lives: a run directory whose lock is free belongs
    /// to a pg-migrate that is gone (killed), whose servers may still run.
    _alive: Option<nix::fcntl::Flock<std::fs::File>>,
}

/// `run.json` in a run directory: which clusters the run works on, so that
/// servers it left running can be found and stopped by a later pg-migrate
/// even when it was killed before it wrote a journal.
const RUN_FILE: &str = "run.json";

/// The clusters a run named in its run directory.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct RunClusters {
    /// `None` for a command with one cluster (backup, restore).
    pub old_datadir: Option<PathBuf>,
    pub new_datadir: Option<PathBuf>,
    pub pid: u32,
}

impl RunClusters {
    /// The clusters the run named.
    pub fn datadirs(&self) -> impl Iterator<Item = &Path> {
        [&self.old_datadir, &self.new_datadir]
            .into_iter()
            .flatten()
            .map(|p| p.as_path())
    }
}

impl RunDir {
    pub fn create(
        base: &Path,
        log_base: Option<&Path>,
        clusters: (Option<&Path>, Option<&Path>),
    ) -> std::io::Result<RunDir> {
        let logs = match log_base {
            Some(log_base) => Some(make_log_dir(log_base)?),
            None => None,
        };
        let dir = tempfile::Builder::new().prefix("pgm-").tempdir_in(base)?;
        let path = dir.path().to_path_buf();
        let alive = nix::fcntl::Flock::lock(
            std::fs::File::open(&path)?,
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        )
        .ok();
        let absolute = |p: Option<&Path>| {
            p.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
        };
        let run = RunClusters {
            old_datadir: absolute(clusters.0),
            new_datadir: absolute(clusters.1),
            pid: std::process::id(),
        };
        std::fs::write(path.join(RUN_FILE), serde_json::to_vec(&run)?)?;
        std::fs::create_dir(path.join("log"))?;
        // The new server's socket lives apart from the old one's: both may
        // run at once (the checks hand the old server on to the dump) with
        // the same port, as pg_upgrade's defaults have it.
        std::fs::create_dir(path.join("new"))?;
        Ok(RunDir {
            dir: Some(dir),
            path,
            logs,
            _alive: alive,
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

    /// A server pg-migrate starts outside binary-upgrade mode (to read or
    /// back up the old cluster, or for the steps after an upgrade): the
    /// side's port and server options as the user gave them, its socket
    /// here, its log in `log_file`.
    pub fn plain_server_options(
        &self,
        settings: &Settings,
        old: bool,
        log_file: PathBuf,
    ) -> ServerOptions {
        let (port, extra_options) = if old {
            (settings.old_port, settings.old_options.clone())
        } else {
            (settings.new_port, settings.new_options.clone())
        };
        ServerOptions {
            port,
            socket_dir: self.socket_dir(old),
            binary_upgrade: false,
            durability_off: false,
            extra_options,
            log_file,
            user: settings.user.clone(),
        }
    }

    pub fn log_dir(&self) -> PathBuf {
        self.logs.clone().unwrap_or_else(|| self.path.join("log"))
    }

    /// Whether the logs go to a directory the user named (`--log-dir`).
    pub fn logs_elsewhere(&self) -> bool {
        self.logs.is_some()
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

    /// Where the summary says the logs are, if they stay: the `--log-dir`
    /// directory always; the run directory with `retain` or after a failure
    /// that left logs (it is then kept on disk).
    pub fn kept_logs(self, retain: bool, failed: bool) -> Option<String> {
        if let Some(logs) = &self.logs {
            return Some(logs.display().to_string());
        }
        (retain || (failed && self.has_logs())).then(|| self.keep().display().to_string())
    }
}

/// `<base>/run-<ms since the epoch>` (0700), `base` made if need be.
fn make_log_dir(base: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::create_dir_all(base)?;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut n = 0;
    loop {
        let dir = base.join(if n == 0 {
            format!("run-{ms}")
        } else {
            format!("run-{ms}-{n}")
        });
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(e),
        }
    }
}

/// The run directories under `base` whose pg-migrate is gone (their lock
/// is free) and which name `datadir` as one of their clusters.
pub fn abandoned_runs(base: &Path, datadir: &Path) -> Vec<(PathBuf, RunClusters)> {
    let wanted = std::fs::canonicalize(datadir).unwrap_or_else(|_| datadir.to_path_buf());
    let same = |p: &Path| std::fs::canonicalize(p).is_ok_and(|p| p == wanted);
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("pgm-") {
            continue;
        }
        let path = entry.path();
        let Some(run) = std::fs::read(path.join(RUN_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<RunClusters>(&b).ok())
        else {
            continue;
        };
        if !run.datadirs().any(same) {
            continue;
        }
        let Ok(dir) = std::fs::File::open(&path) else {
            continue;
        };
        // Taken and let go at once: only whether it is free matters.
        if nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok() {
            out.push((path, run));
        }
    }
    out
}

/// A server on `dir` for pg-migrate to work through, outside binary-upgrade
/// mode (a backup, the steps after an upgrade): the one that runs, attached
/// and only queried; or, with the cluster shut down cleanly, one started
/// privately on this run's socket. A server without a unix socket and a
/// crashed cluster are refused. `old` says which cluster it is (for the
/// error codes); `log` is where a private server logs.
pub fn running_or_private(
    settings: &Settings,
    run_dir: &RunDir,
    install: &Installation,
    dir: &DataDir,
    old: bool,
    log: PathBuf,
) -> Result<(Server, ClusterCondition), Failure> {
    let what = if old { "old" } else { "new" };
    match dir.server_status() {
        Ok(ServerStatus::Running(pid)) => {
            let socket_dir = pid.socket_dir.clone().ok_or_else(|| Failure {
                code: Code::ServerRunning,
                message: format!(
                    "the server of {} runs without a unix socket, which pg-migrate connects through",
                    dir.path.display()
                ),
                remedy: Some("set unix_socket_directories, or stop the server (pg-migrate then starts it privately)".into()),
                clusters: None,
            })?;
            let endpoint = pgm_cluster::server::Endpoint {
                socket_dir,
                port: pid.port.unwrap_or(5432),
                user: settings.user.clone(),
            };
            let catalog_failed = if old {
                Code::OldCatalogFailed
            } else {
                Code::NewCatalogFailed
            };
            endpoint
                .connect("template1")
                .map_err(|e| Failure::new(catalog_failed, e))?;
            return Ok((Server::attach(endpoint), ClusterCondition::RunningUntouched));
        }
        Ok(ServerStatus::StalePidFile(_)) => {
            return Err(Failure {
                code: Code::ServerRunning,
                message: format!(
                    "{} has a postmaster.pid but no server: it crashed or was killed",
                    dir.path.display()
                ),
                remedy: Some(format!(
                    "start the {what} server once so that it recovers (and stop it cleanly), then run pg-migrate again"
                )),
                clusters: None,
            });
        }
        _ => {}
    }
    if let Ok(control) = dir.control() {
        if control.state != ClusterState::ShutDown {
            return Err(Failure {
                // The old cluster is the user's to fix; the new one, pg-migrate's own.
                code: if old { Code::Usage } else { Code::ServerStartFailed },
                message: format!(
                    "{} was not shut down cleanly (pg_control says \"{}\")",
                    dir.path.display(),
                    control.state.describe()
                ),
                remedy: Some(format!(
                    "start the {what} server once so that it recovers and stop it cleanly, then run pg-migrate again"
                )),
                clusters: None,
            });
        }
    }
    let options = run_dir.plain_server_options(settings, old, log);
    let server = Server::start(install, dir, &options)
        .map_err(|e| Failure::new(Code::ServerStartFailed, e))?;
    Ok((server, ClusterCondition::StartedAndStopped))
}
