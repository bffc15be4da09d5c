//! The one way to run a PostgreSQL program: an absolute path from a chosen
//! bindir (never PATH), a cleared environment with an explicit allow-list,
//! English messages, stdin closed, both output pipes drained, and the exit
//! status always checked; a program we wait for ends if we die first (a
//! server does not). Failures keep the command line and stderr's tail.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::Error;

/// What an observer (the CLI's `--verbose`) learns about each command.
pub struct CommandRecord<'a> {
    pub command_line: &'a str,
    pub duration: Duration,
    pub success: bool,
}

type Observer = Box<dyn Fn(&CommandRecord<'_>) + Send + Sync>;
static OBSERVER: OnceLock<Observer> = OnceLock::new();

/// Installs the process-wide observer; the first call wins.
pub fn set_observer(observer: impl Fn(&CommandRecord<'_>) + Send + Sync + 'static) {
    let _ = OBSERVER.set(Box::new(observer));
}

/// Environment variables passed through from our own environment; everything
/// else (notably PG* variables that would redirect a client) is dropped.
/// Other libpq variables (PGOPTIONS, PGHOST, PGSSLMODE …) are not passed:
/// every connection is named in full, and server options come from -o/-O.
const PASSED_THROUGH: &[&str] = &["HOME", "TMPDIR", "TZ"];

/// PGPASSWORD and PGPASSFILE, for the client programs only: they find a
/// password as our own connections do (crate::password). A server never
/// gets them (anything in it that uses libpq would use them unasked).
const PASSWORD_VARIABLES: &[&str] = &["PGPASSWORD", "PGPASSFILE"];
const CLIENT_PROGRAMS: &[&str] = &["pg_dump", "pg_dumpall", "pg_restore", "psql", "vacuumdb"];

/// A PostgreSQL program invocation being built.
#[derive(Debug, Clone)]
pub struct PgCommand {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

/// A finished command's captured output.
#[derive(Debug)]
pub struct Captured {
    pub stdout: String,
    pub stderr: String,
}

impl PgCommand {
    pub fn new(program: impl Into<PathBuf>) -> PgCommand {
        PgCommand {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> PgCommand {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> PgCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> PgCommand {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The command as a shell-quoted line, for logs and error messages.
    pub fn command_line(&self) -> String {
        std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(OsString::as_os_str))
            .map(|part| shell_quote(&part.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn build(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args).env_clear();
        let client = self
            .program
            .file_name()
            .is_some_and(|name| CLIENT_PROGRAMS.iter().any(|c| name == *c));
        let passwords: &[&str] = if client { PASSWORD_VARIABLES } else { &[] };
        for key in PASSED_THROUGH.iter().chain(passwords) {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        command
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LC_ALL", "C")
            .env("LC_MESSAGES", "C")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        command
    }

    /// As `build`, for a program we wait for: should we die first (SIGKILL,
    /// the OOM killer), it gets SIGTERM, so that no pg_dump holds the old
    /// server's locks, and no pg_restore or initdb goes on writing, for a run
    /// that is gone and may be resumed or reverted at once. (pg_dump cancels
    /// its query on SIGTERM; initdb removes what it made.) The signal comes
    /// when the thread that started the program ends, and ours wait for it.
    /// Servers (`spawn_into`) outlive us on purpose: recovery finds them.
    #[allow(unsafe_code)] // the one exception to the workspace's rule: see SAFETY
    fn build_waited(&self) -> Command {
        use nix::sys::signal::{signal, SigHandler, Signal};
        use std::os::unix::process::CommandExt;
        let mut command = self.build();
        let parent = nix::unistd::getpid();
        // SAFETY: the closure runs between fork and exec, where only
        // async-signal-safe calls are allowed: it makes three system calls
        // (rt_sigaction, prctl, getppid), takes no lock and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                // Our SIGTERM handler (signals.rs) lives on in the child until
                // exec and would swallow the signal: the default ends it.
                signal(Signal::SIGTERM, SigHandler::SigDfl)?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
                if nix::unistd::getppid() != parent {
                    // We died before the prctl: no signal would come.
                    return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
                }
                Ok(())
            });
        }
        command
    }

    /// Starts the program in a process group of its own (so that a Ctrl-C
    /// at the terminal reaches only us), its output appended to `output`.
    pub fn spawn_into(&self, output: &Path) -> Result<std::process::Child, Error> {
        use std::os::unix::process::CommandExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(output)
            .map_err(|source| Error::Spawn {
                command: self.command_line(),
                source,
            })?;
        let error_file = file.try_clone().map_err(|source| Error::Spawn {
            command: self.command_line(),
            source,
        })?;
        self.build()
            .stdout(file)
            .stderr(error_file)
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Spawn {
                command: self.command_line(),
                source,
            })
    }

    /// Tells the observer about a command run some other way than [`run`](Self::run).
    pub fn observe(&self, duration: Duration, success: bool) {
        if let Some(observer) = OBSERVER.get() {
            observer(&CommandRecord {
                command_line: &self.command_line(),
                duration,
                success,
            });
        }
    }

    /// Runs the program and fails unless it exits with status 0.
    pub fn run(&self) -> Result<Captured, Error> {
        let (status, captured) = self.run_unchecked()?;
        if status.success() {
            Ok(captured)
        } else {
            Err(Error::CommandFailed {
                command: self.command_line(),
                status: describe_status(status),
                stderr_tail: tail(&captured.stderr, &captured.stdout),
            })
        }
    }

    /// As [`run_unchecked`](Self::run_unchecked), handing each line of
    /// standard output to `on_line` as the program writes it (how far a
    /// long client program is: vacuumdb's stages, psql's command tags).
    pub fn run_watching(
        &self,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(std::process::ExitStatus, Captured), Error> {
        use std::io::{BufRead, Read};
        let line = self.command_line();
        let started = Instant::now();
        let spawn_error = |source| Error::Spawn {
            command: line.clone(),
            source,
        };
        let mut child = self
            .build_waited()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        let mut stderr = child.stderr.take().expect("piped above");
        let errors = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text);
            text
        });
        let mut stdout = String::new();
        if let Some(out) = child.stdout.take() {
            let mut reader = std::io::BufReader::new(out);
            let mut buffer = Vec::new();
            while reader.read_until(b'\n', &mut buffer).map_err(spawn_error)? > 0 {
                let text = String::from_utf8_lossy(&buffer);
                on_line(text.trim_end_matches(['\n', '\r']));
                stdout.push_str(&text);
                buffer.clear();
            }
        }
        let status = child.wait().map_err(spawn_error)?;
        let stderr = errors.join().unwrap_or_default();
        if let Some(observer) = OBSERVER.get() {
            observer(&CommandRecord {
                command_line: &line,
                duration: started.elapsed(),
                success: status.success(),
            });
        }
        Ok((
            status,
            Captured {
                stdout,
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            },
        ))
    }

    /// Runs the program and returns its status without judging it.
    pub fn run_unchecked(&self) -> Result<(std::process::ExitStatus, Captured), Error> {
        let line = self.command_line();
        let started = Instant::now();
        let output = self
            .build_waited()
            .output()
            .map_err(|source| Error::Spawn {
                command: line.clone(),
                source,
            })?;
        if let Some(observer) = OBSERVER.get() {
            observer(&CommandRecord {
                command_line: &line,
                duration: started.elapsed(),
                success: output.status.success(),
            });
        }
        Ok((
            output.status,
            Captured {
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            },
        ))
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "unknown status".into(),
    }
}

/// The last few lines of stderr (or stdout when stderr is empty).
fn tail(stderr: &str, stdout: &str) -> String {
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Quotes a word for display the way a POSIX shell would need it.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_failures_are_reported_precisely() {
        assert_eq!(shell_quote("/usr/bin/x"), "/usr/bin/x");
        assert_eq!(shell_quote("it's here"), r"'it'\''s here'");
        assert_eq!(shell_quote(""), "''");
        let err = PgCommand::new("/bin/sh")
            .args(["-c", "echo oops >&2; exit 3"])
            .run()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("exit status 3") && text.contains("oops"),
            "{text}"
        );
        let err = PgCommand::new("/nonexistent/postgres").run().unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }));
        let mut seen = Vec::new();
        let (status, captured) = PgCommand::new("/bin/sh")
            .args(["-c", "echo one; echo oops >&2; echo two; exit 4"])
            .run_watching(&mut |line| seen.push(line.to_string()))
            .unwrap();
        assert_eq!(seen, ["one", "two"]);
        assert_eq!(status.code(), Some(4));
        assert_eq!(captured.stdout, "one\ntwo\n");
        assert_eq!(captured.stderr, "oops\n");
        let err = PgCommand::new("/nonexistent/postgres")
            .run_watching(&mut |_| {})
            .unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }));
    }

    const PID_FILE: &str = "PGM_TEST_WAITED_PID_FILE";

    /// Run by the test below in a process of its own, which it then kills.
    #[test]
    #[ignore = "a helper: waited_programs_end_when_we_are_killed runs it"]
    fn helper_waits_for_a_program() {
        let Some(pid_file) = std::env::var_os(PID_FILE) else {
            return;
        };
        let _ = PgCommand::new("/bin/sh")
            .args([
                "-c",
                r#"echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec sleep 60"#,
            ])
            .arg(pid_file)
            .run();
    }

    /// A program we wait for does not outlive us: killed with SIGKILL while
    /// it runs, we leave no orphan behind.
    #[test]
    fn waited_programs_end_when_we_are_killed() {
        struct Helper(std::process::Child);
        impl Drop for Helper {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        // State and start time (fields 3 and 22), read after the name,
        // which may hold spaces and parentheses.
        let stat = |pid: i32| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<String> = text
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .map(str::to_string)
                .collect();
            Some((fields.first()?.clone(), fields.get(19)?.clone()))
        };
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let mut helper = Helper(
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "command::tests::helper_waits_for_a_program"])
                .args(["--ignored", "--test-threads=1"])
                .env(PID_FILE, &pid_file)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let started = Instant::now();
        while !pid_file.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the helper never started its program"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let (state, start_time) = stat(pid).expect("the program runs");
        assert!(!["Z", "X"].contains(&state.as_str()), "state {state}");
        // Alive: the same process (not a later one with its pid), not a zombie.
        let alive = || {
            stat(pid).is_some_and(|(state, start)| {
                start == start_time && !["Z", "X"].contains(&state.as_str())
            })
        };
        helper.0.kill().unwrap();
        helper.0.wait().unwrap();
        let killed = Instant::now();
        while alive() && killed.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let orphaned = alive();
        if orphaned {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(
            !orphaned,
            "the program outlived the process that waited for it"
        );
    }

    #[test]
    fn environment_is_cleared_except_the_allow_list() {
        std::env::set_var("PGHOST", "elsewhere.example");
        let out = PgCommand::new("/usr/bin/env").run().unwrap().stdout;
        assert!(!out.contains("PGHOST"), "{out}");
        assert!(out.contains("LC_ALL=C"));
    }
}
