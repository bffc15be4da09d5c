//! Servers started privately: a unix socket in a 0700 directory of our own,
//! no TCP listener, binary-upgrade mode when asked. A [`Server`] value owns
//! the running server and stops it when dropped; [`stop_all`] stops every
//! server this process started, for signal handlers.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::command::PgCommand;
use crate::{ClusterState, DataDir, Error, Installation, PgMajor, Tool};

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub port: u16,
    /// An existing directory that only we can enter.
    pub socket_dir: PathBuf,
    /// Start with `-b`: no autovacuum, superusers only, binary_upgrade_* functions.
    pub binary_upgrade: bool,
    /// Skip fsync and full-page writes: only for a new cluster that is
    /// re-created anyway if the run fails.
    pub durability_off: bool,
    /// The user's own `-o`/`-O` text, passed through verbatim.
    pub extra_options: Option<String>,
    pub log_file: PathBuf,
    /// The role to connect as.
    pub user: String,
}

/// Where a server listens.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub socket_dir: PathBuf,
    pub port: u16,
    pub user: String,
}

impl Endpoint {
    /// The connection flags of PostgreSQL's client programs for it.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--host".into(),
            self.socket_dir.display().to_string(),
            "--port".into(),
            self.port.to_string(),
            "--username".into(),
            self.user.clone(),
        ]
    }

    /// The password for `database` on this server, where its local
    /// connections need one: found as the client programs we run (libpq)
    /// find it.
    pub fn password(&self, database: &str) -> Option<String> {
        crate::password::password_for(&crate::password::Target {
            socket_dir: &self.socket_dir,
            port: self.port,
            database,
            user: &self.user,
        })
    }

    pub fn connect(&self, database: &str) -> Result<postgres::Client, Error> {
        let mut config = postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(&self.user)
            .dbname(database)
            .application_name("pg-migrate")
            .connect_timeout(Duration::from_secs(30));
        if let Some(password) = self.password(database) {
            config.password(password);
        }
        let mut client = config
            .connect(postgres::NoTls)
            .map_err(|e| Error::Connect {
                socket_dir: self.socket_dir.clone(),
                port: self.port,
                database: database.to_string(),
                detail: crate::describe_pg_error(&e),
            })?;
        // Nothing we run may resolve names through a user's search_path.
        // No JIT either, on a server we did not start too (online mode): a
        // catalog query over many relations spends most of a second
        // compiling. `jit` exists from 11 on, hence the lookup.
        client
            .batch_execute(
                "SELECT pg_catalog.set_config('search_path', '', false);
                 SELECT pg_catalog.set_config(name, 'off', false)
                   FROM pg_catalog.pg_settings WHERE name = 'jit'",
            )
            .map_err(|e| Error::Query {
                database: database.to_string(),
                what: "clearing search_path and turning JIT off".into(),
                detail: crate::describe_pg_error(&e),
            })?;
        Ok(client)
    }
}

/// A server we started (stopped on drop) or one already running that we only
/// talk to (a live check; never stopped by us).
#[derive(Debug)]
pub struct Server {
    pub endpoint: Endpoint,
    owned: Option<Owned>,
}

#[derive(Debug, Clone)]
struct Owned {
    /// The postmaster: our child.
    pid: i32,
    datadir: PathBuf,
    log_file: PathBuf,
}

/// How long a server may take to start or to stop (pg_ctl's -t 120).
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(5);

/// Waits until the postmaster we started says "ready" in its lock file
/// (PostgreSQL 10 and later write the status there); an error with the
/// reason if it exits first or takes too long.
fn wait_until_ready(
    child: &mut std::process::Child,
    datadir: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let pid = child.id().to_string();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the server exited at start ({status})"));
        }
        if let Ok(text) = std::fs::read_to_string(datadir.join("postmaster.pid")) {
            let lines: Vec<&str> = text.lines().collect();
            if lines.first().map(|l| l.trim()) == Some(pid.as_str())
                && lines.get(7).map(|l| l.trim()) == Some("ready")
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the server did not become ready within {} s",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(POLL);
    }
}

static STARTED: Mutex<Vec<Owned>> = Mutex::new(Vec::new());

/// Options a major needs in binary-upgrade mode.
fn binary_upgrade_options(major: PgMajor) -> &'static [&'static str] {
    // 17 and later refuse to start in binary-upgrade mode unless slots can
    // keep all WAL: a slot invalidated during the upgrade would be lost.
    if major.binary_upgrade_keeps_slot_wal() {
        &["-c", "max_slot_wal_keep_size=-1"]
    } else {
        &[]
    }
}

impl Server {
    pub fn start(
        install: &Installation,
        datadir: &DataDir,
        opts: &ServerOptions,
    ) -> Result<Server, Error> {
        let socket_file = opts.socket_dir.join(format!(".s.PGSQL.{}", opts.port));
        let len = socket_file.as_os_str().len();
        if len > 107 {
            return Err(Error::SocketPathTooLong {
                path: socket_file,
                len,
            });
        }
        // A postmaster.pid whose process is no postmaster of this directory
        // (a pid recycled by a restart) is removed first: PostgreSQL cannot
        // tell such a process of its own user from a live postmaster and
        // would refuse to start. Only after a clean shutdown: a crashed
        // cluster is refused by the checks before any server starts.
        if let Ok(crate::ServerStatus::StalePidFile(_)) = datadir.server_status() {
            let clean = crate::ControlFile::read(&datadir.path)
                .is_ok_and(|c| c.state == crate::ClusterState::ShutDown);
            if clean {
                let pid_file = datadir.path.join("postmaster.pid");
                std::fs::remove_file(&pid_file).map_err(|e| Error::io(&pid_file, e))?;
            }
        }
        let mut server_args: Vec<String> = vec!["-p".into(), opts.port.to_string()];
        if opts.binary_upgrade {
            server_args.push("-b".into());
            server_args.extend(
                binary_upgrade_options(datadir.major)
                    .iter()
                    .map(|s| s.to_string()),
            );
        }
        if opts.durability_off {
            for setting in [
                "synchronous_commit=off",
                "fsync=off",
                "full_page_writes=off",
            ] {
                server_args.extend(["-c".into(), setting.into()]);
            }
        }
        if datadir.major.has_jit() {
            // Catalog queries over tens of thousands of relations get row
            // estimates in the millions, and JIT then compiles each for
            // most of a second (pg_dump's and the checks' alike); none of
            // what runs on a server we start gains from it.
            server_args.extend(["-c".into(), "jit=off".into()]);
        }
        server_args.extend(["-c".into(), "listen_addresses=".into()]);
        server_args.extend(["-c".into(), "unix_socket_permissions=0700".into()]);
        server_args.extend([
            "-c".into(),
            format!("unix_socket_directories={}", opts.socket_dir.display()),
        ]);
        if let Some(extra) = &opts.extra_options {
            // The user's words are split the way a shell would; they reach
            // the server as arguments and no shell ever runs them.
            let words =
                shlex::split(extra).ok_or_else(|| Error::BadServerOptions(extra.clone()))?;
            server_args.extend(words);
        }
        // The postmaster is started directly rather than through pg_ctl,
        // whose waits poll every 100 ms: a run starts and stops servers
        // half a dozen times.
        let command = PgCommand::new(install.require(Tool::Postgres)?)
            .arg("-D")
            .arg(datadir.pg_ctl_dir())
            .args(&server_args);
        let started_at = Instant::now();
        let mut child = command.spawn_into(&opts.log_file)?;
        let owned = Owned {
            pid: child.id() as i32,
            datadir: datadir.path.clone(),
            log_file: opts.log_file.clone(),
        };
        // From here on the postmaster exists: register it so that it is
        // stopped on every path.
        STARTED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(owned.clone());
        let ready = wait_until_ready(&mut child, &datadir.path, STOP_TIMEOUT);
        command.observe(started_at.elapsed(), ready.is_ok());
        let server = Server {
            endpoint: Endpoint {
                socket_dir: opts.socket_dir.clone(),
                port: opts.port,
                user: opts.user.clone(),
            },
            owned: Some(owned),
        };
        if let Err(detail) = ready {
            let detail = log_tail(&opts.log_file).unwrap_or(detail);
            let mut server = server;
            if matches!(child.try_wait(), Ok(Some(_))) {
                // It exited and was reaped: nothing to stop, and its pid may
                // already name another process, which must not be signalled.
                if let Some(owned) = server.owned.take() {
                    STARTED
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|o| o.pid != owned.pid);
                }
            }
            drop(server);
            return Err(Error::ServerStart {
                datadir: datadir.path.clone(),
                log: opts.log_file.clone(),
                detail,
            });
        }
        // Ready by its lock file; prove it is ours by connecting through
        // our private socket.
        server
            .endpoint
            .connect("template1")
            .map_err(|e| Error::ServerStart {
                datadir: datadir.path.clone(),
                log: opts.log_file.clone(),
                detail: e.to_string(),
            })?;
        Ok(server)
    }

    /// A server someone else runs (live check). Never stopped by us.
    pub fn attach(endpoint: Endpoint) -> Server {
        Server {
            endpoint,
            owned: None,
        }
    }

    pub fn is_owned(&self) -> bool {
        self.owned.is_some()
    }

    pub fn connect(&self, database: &str) -> Result<postgres::Client, Error> {
        self.endpoint.connect(database)
    }

    /// Stops a server we started with a clean (fast) shutdown and confirms
    /// pg_control says "shut down". A no-op for attached servers.
    pub fn stop(mut self) -> Result<(), Error> {
        match self.owned.take() {
            Some(owned) => stop_owned(&owned),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(owned) = self.owned.take() {
            let _ = stop_owned(&owned);
        }
    }
}

/// A fast shutdown (SIGINT), waited for by reaping our child, then
/// pg_control must say "shut down".
fn stop_owned(owned: &Owned) -> Result<(), Error> {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(owned.pid);
    let fail = |detail: String| Error::ServerStop {
        datadir: owned.datadir.clone(),
        detail: format!("{detail} {}", log_tail(&owned.log_file).unwrap_or_default()),
    };
    let signalled = kill(pid, Signal::SIGINT);
    let deadline = Instant::now() + STOP_TIMEOUT;
    let result = loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => break Ok(()),
            // Not (or no longer) our child: it is gone once its lock file is.
            Err(_) if !owned.datadir.join("postmaster.pid").exists() => break Ok(()),
            Err(_) if signalled.is_err() => {
                break Err(fail(format!("could not signal process {pid}")))
            }
            Err(_) => {}
        }
        if Instant::now() > deadline {
            break Err(fail(format!(
                "the server did not stop within {} s",
                STOP_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(POLL);
    };
    STARTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|o| o.datadir != owned.datadir);
    result?;
    let control = crate::ControlFile::read(&owned.datadir)?;
    if control.state != ClusterState::ShutDown {
        return Err(Error::ServerStop {
            datadir: owned.datadir.clone(),
            detail: format!(
                "pg_control says \"{}\" after stopping",
                control.state.describe()
            ),
        });
    }
    Ok(())
}

/// Stops every server this process started and has not stopped yet. For
/// signal handlers and fatal paths; errors are ignored because nothing more
/// can be done about them there.
pub fn stop_all() {
    let owned: Vec<Owned> = STARTED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for server in owned {
        let _ = stop_owned(&server);
    }
}

fn log_tail(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.trim_end().lines().collect();
    if lines.is_empty() {
        return None;
    }
    Some(lines[lines.len().saturating_sub(6)..].join("\n"))
}
