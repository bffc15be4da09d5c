//! Servers started privately: a unix socket in a 0700 directory of our own,
//! no TCP listener, binary-upgrade mode when asked. A [`Server`] value owns
//! the running server and stops it when dropped; [`stop_all`] stops every
//! server this process started, for signal handlers.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::command::{shell_quote, PgCommand};
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
    pub fn connect(&self, database: &str) -> Result<postgres::Client, Error> {
        let mut client = postgres::Config::new()
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(&self.user)
            .dbname(database)
            .application_name("pg-migrate")
            .connect_timeout(Duration::from_secs(30))
            .connect(postgres::NoTls)
            .map_err(|e| Error::Connect {
                socket_dir: self.socket_dir.clone(),
                port: self.port,
                database: database.to_string(),
                detail: crate::describe_pg_error(&e),
            })?;
        // Nothing we run may resolve names through a user's search_path.
        client
            .batch_execute("SELECT pg_catalog.set_config('search_path', '', false)")
            .map_err(|e| Error::Query {
                database: database.to_string(),
                what: "clearing search_path".into(),
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
    pg_ctl: PathBuf,
    pg_ctl_dir: PathBuf,
    datadir: PathBuf,
    log_file: PathBuf,
}

static STARTED: Mutex<Vec<Owned>> = Mutex::new(Vec::new());

/// Options a major needs in binary-upgrade mode.
fn binary_upgrade_options(major: PgMajor) -> &'static [&'static str] {
    // 17 and later refuse to start in binary-upgrade mode unless slots can
    // keep all WAL: a slot invalidated during the upgrade would be lost.
    if major.number() >= 17 {
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
        server_args.extend(["-c".into(), "listen_addresses=".into()]);
        server_args.extend(["-c".into(), "unix_socket_permissions=0700".into()]);
        server_args.extend([
            "-c".into(),
            format!("unix_socket_directories={}", opts.socket_dir.display()),
        ]);
        // pg_ctl hands -o to a shell, so each word is quoted.
        let mut option_text = server_args
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(extra) = &opts.extra_options {
            // The user's words are split the way a shell would and quoted
            // again one by one, so that a metacharacter in -o/-O reaches the
            // server as text and is never run by pg_ctl's shell.
            let words =
                shlex::split(extra).ok_or_else(|| Error::BadServerOptions(extra.clone()))?;
            for word in words {
                option_text.push(' ');
                option_text.push_str(&shell_quote(&word));
            }
        }
        let pg_ctl = install.require(Tool::PgCtl)?.to_path_buf();
        let owned = Owned {
            pg_ctl: pg_ctl.clone(),
            pg_ctl_dir: datadir.pg_ctl_dir().to_path_buf(),
            datadir: datadir.path.clone(),
            log_file: opts.log_file.clone(),
        };
        let started = PgCommand::new(&pg_ctl)
            .args(["-w", "-t", "120", "-l"])
            .arg(&opts.log_file)
            .arg("-D")
            .arg(datadir.pg_ctl_dir())
            .arg("-o")
            .arg(&option_text)
            .arg("start")
            .run();
        // From here on a postmaster may exist even if pg_ctl failed (timeout):
        // register it so that it is stopped on every path.
        STARTED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(owned.clone());
        let server = Server {
            endpoint: Endpoint {
                socket_dir: opts.socket_dir.clone(),
                port: opts.port,
                user: opts.user.clone(),
            },
            owned: Some(owned),
        };
        if let Err(e) = started {
            let detail = log_tail(&opts.log_file).unwrap_or_else(|| e.to_string());
            drop(server);
            return Err(Error::ServerStart {
                datadir: datadir.path.clone(),
                log: opts.log_file.clone(),
                detail,
            });
        }
        // pg_ctl saw *a* server become ready; prove it is ours by connecting
        // through our private socket.
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

fn stop_owned(owned: &Owned) -> Result<(), Error> {
    let result = PgCommand::new(&owned.pg_ctl)
        .args(["-w", "-t", "120", "-m", "fast", "-D"])
        .arg(&owned.pg_ctl_dir)
        .arg("stop")
        .run_unchecked();
    STARTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|o| o.datadir != owned.datadir);
    let (status, captured) = result?;
    if !status.success() && owned.datadir.join("postmaster.pid").exists() {
        return Err(Error::ServerStop {
            datadir: owned.datadir.clone(),
            detail: format!(
                "{} {}",
                captured.stderr.trim(),
                log_tail(&owned.log_file).unwrap_or_default()
            ),
        });
    }
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
