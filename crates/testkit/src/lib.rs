//! Test support: real PostgreSQL clusters of several majors, made and run as
//! an unprivileged OS user (PostgreSQL refuses root, and CI runs as root),
//! plus helpers to run pg-migrate as that user and to prove that a directory
//! tree did not change. Tests only; never a dependency of the product.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;

pub use serde_json::Value;

pub mod ha;

/// Where scripts/install-postgres.sh put the installs.
pub fn pg_prefix() -> PathBuf {
    match std::env::var_os("PG_MIGRATE_PG_PREFIX") {
        Some(prefix) => PathBuf::from(prefix),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/postgres"),
    }
}

/// The bindir of an installed major, if present.
pub fn bindir(major: u32) -> Option<PathBuf> {
    let dir = pg_prefix().join(major.to_string()).join("bin");
    dir.join("postgres")
        .exists()
        .then(|| std::fs::canonicalize(&dir).unwrap_or(dir))
}

/// The bindir of a major a test needs. Missing, the test fails: a test that
/// did not run must not pass. Only with `PG_MIGRATE_SKIP_MISSING=1` is it
/// skipped (returns None), and then loudly: the test and the missing major
/// are appended to the skip log (`PG_MIGRATE_SKIP_LOG`, else
/// `$TMPDIR/pg-migrate-skipped.log`), which scripts/test.sh counts and
/// prints at the end.
pub fn require(major: u32) -> Option<PathBuf> {
    if let Some(dir) = bindir(major) {
        return Some(dir);
    }
    skip_or_fail(
        &format!(
            "PostgreSQL {major} is not installed under {}: run scripts/install-postgres.sh",
            pg_prefix().display()
        ),
        &format!("PostgreSQL {major} missing"),
    )
}

/// A test that cannot run for a missing install: fails with `message`, or
/// with `PG_MIGRATE_SKIP_MISSING=1` is skipped and logged as `missing`
/// (see [`require`]).
pub fn skip_or_fail<T>(message: &str, missing: &str) -> Option<T> {
    if std::env::var_os("PG_MIGRATE_SKIP_MISSING").is_none_or(|v| v != "1") {
        panic!("{message} (or set PG_MIGRATE_SKIP_MISSING=1 to skip, counted, what needs it)");
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let log = std::env::var_os("PG_MIGRATE_SKIP_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("pg-migrate-skipped.log"));
    let line = format!("{test}: {missing}\n");
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
    if let Err(e) = appended {
        panic!(
            "{message}; and the skip could not be recorded in {}: {e}",
            log.display()
        );
    }
    eprintln!("SKIPPED (not passed): {test}: {message}");
    None
}

/// The OS user that runs servers and pg-migrate in tests.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Whether we are root and must switch to this user for every child.
    pub switch: bool,
}

pub fn test_user() -> &'static TestUser {
    static USER: OnceLock<TestUser> = OnceLock::new();
    USER.get_or_init(|| {
        let me = nix::unistd::geteuid();
        if !me.is_root() {
            let user = nix::unistd::User::from_uid(me)
                .ok()
                .flatten()
                .expect("current user has a name");
            return TestUser {
                name: user.name,
                uid: me.as_raw(),
                gid: nix::unistd::getegid().as_raw(),
                switch: false,
            };
        }
        let name = std::env::var("PG_MIGRATE_TEST_USER").unwrap_or_else(|_| "pgmigrate".into());
        if nix::unistd::User::from_name(&name).ok().flatten().is_none() {
            let status = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    &name,
                ])
                .status()
                .expect("run useradd");
            // Another test binary may have created it meanwhile.
            assert!(
                status.success() || nix::unistd::User::from_name(&name).ok().flatten().is_some(),
                "could not create test user {name}"
            );
        }
        let user = nix::unistd::User::from_name(&name).unwrap().unwrap();
        TestUser {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            switch: true,
        }
    })
}

/// A command that will run as the test user. Its TMPDIR is this test
/// process's own (see [`process_dir`]): the run directories pg-migrate
/// keeps after a failure (for its logs; many tests fail it on purpose) go
/// there and not into /tmp, where thousands piled up.
pub fn as_test_user(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let user = test_user();
    let mut command = Command::new(program);
    if user.switch {
        command.uid(user.uid).gid(user.gid);
    }
    command
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGUSER")
        .env("TMPDIR", process_dir().join("tmp"))
        .stdin(Stdio::null());
    command
}

/// This test process's directory, `/tmp/pgmt-proc-<pid>`, for what lasts
/// as long as the process (a static is never dropped, so a TempDir in one
/// would never be removed): the test user's TMPDIR, fixtures made once,
/// the binary's copy. Those of test processes that have ended are removed
/// when the next one makes its own.
pub fn process_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        const PREFIX: &str = "pgmt-proc-";
        let base = Path::new("/tmp");
        for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = base.join(format!("{PREFIX}{}", std::process::id()));
        // Left by an earlier process that had this pid.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tmp = dir.join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown_to_test_user(&tmp);
        dir
    })
}

/// Runs a command and panics with its output unless it succeeds.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Gives a path to the test user.
pub fn chown_to_test_user(path: &Path) {
    let user = test_user();
    if user.switch {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).unwrap();
    }
}

/// A temporary directory with a short path (unix sockets live in it), owned
/// by the test user. Removed on drop, after its clusters are stopped.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox::new_in(Path::new("/tmp"))
    }

    /// A sandbox on another filesystem (e.g. /dev/shm), for cross-device cases.
    pub fn new_in(base: &Path) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("pgmt-")
            .tempdir_in(base)
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        chown_to_test_user(dir.path());
        Sandbox { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh subdirectory owned by the test user.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let dir = self.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        chown_to_test_user(&dir);
        dir
    }

    /// initdb a cluster of `major` with UTF8 / C.UTF-8 / trust, the install
    /// user named after the test user, and `extra` initdb options.
    pub fn cluster(&self, name: &str, major: u32, extra: &[&str]) -> Cluster {
        let bindir = bindir(major).unwrap_or_else(|| panic!("PostgreSQL {major} not installed"));
        let datadir = self.path().join(name);
        let sockdir = self.mkdir(&format!("{name}.sock"));
        run_ok(
            as_test_user(bindir.join("initdb"))
                .arg("-D")
                .arg(&datadir)
                .args(["-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
                .args(extra),
        );
        Cluster {
            major,
            bindir,
            datadir,
            sockdir,
            port: next_port(),
            running: false,
        }
    }

    /// initdb a cluster at a given path (e.g. on another filesystem).
    pub fn cluster_at(&self, datadir: &Path, major: u32, extra: &[&str]) -> Cluster {
        let bindir = bindir(major).unwrap_or_else(|| panic!("PostgreSQL {major} not installed"));
        let name = datadir.file_name().unwrap().to_string_lossy().into_owned();
        let sockdir = self.mkdir(&format!("{name}-at.sock"));
        run_ok(
            as_test_user(bindir.join("initdb"))
                .arg("-D")
                .arg(datadir)
                .args(["-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
                .args(extra),
        );
        Cluster {
            major,
            bindir,
            datadir: datadir.to_path_buf(),
            sockdir,
            port: next_port(),
            running: false,
        }
    }

    /// A streaming standby of the running `primary`, made with
    /// pg_basebackup (`-R`: standby.signal and primary_conninfo naming the
    /// primary's socket and port), on `slot` if given, with each tablespace
    /// location mapped to another directory (as on another host).
    pub fn standby(
        &self,
        primary: &Cluster,
        name: &str,
        slot: Option<&str>,
        tablespaces: &[(PathBuf, PathBuf)],
    ) -> Cluster {
        let datadir = self.path().join(name);
        let sockdir = self.mkdir(&format!("{name}.sock"));
        // Server-only installations have no pg_basebackup; a newer one
        // backs up older servers.
        let basebackup = (primary.major..=18)
            .filter_map(bindir)
            .map(|dir| dir.join("pg_basebackup"))
            .find(|p| p.exists())
            .expect("no installation has pg_basebackup");
        let mut command = as_test_user(basebackup);
        command
            .arg("-D")
            .arg(&datadir)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-h"])
            .arg(&primary.sockdir)
            .args(["-p", &primary.port.to_string(), "-U", &test_user().name]);
        if let Some(slot) = slot {
            command.args(["-S", slot]);
        }
        for (from, to) in tablespaces {
            command.arg(format!(
                "--tablespace-mapping={}={}",
                from.display(),
                to.display()
            ));
        }
        run_ok(&mut command);
        // A newer pg_basebackup writes connection options the standby's
        // own libpq may not know: name the primary plainly (before 12 in
        // recovery.conf, which -R writes for those).
        let auto = datadir.join(if primary.major < 12 {
            "recovery.conf"
        } else {
            "postgresql.auto.conf"
        });
        let text = std::fs::read_to_string(&auto).unwrap();
        let mut kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("primary_conninfo"))
            .collect();
        let conninfo = format!(
            "primary_conninfo = 'host={} port={} user={} application_name={name}'",
            primary.sockdir.display(),
            primary.port,
            test_user().name
        );
        kept.push(&conninfo);
        std::fs::write(&auto, kept.join("\n") + "\n").unwrap();
        Cluster {
            major: primary.major,
            bindir: primary.bindir.clone(),
            datadir,
            sockdir,
            port: next_port(),
            running: false,
        }
    }

    /// A cluster someone else made (pg-migrate, pg_upgrade) at `datadir`.
    pub fn existing(&self, name: &str, major: u32, datadir: &Path) -> Cluster {
        Cluster {
            major,
            bindir: bindir(major).unwrap_or_else(|| panic!("PostgreSQL {major} not installed")),
            datadir: datadir.to_path_buf(),
            sockdir: self.mkdir(&format!("{name}.sock")),
            port: next_port(),
            running: false,
        }
    }
}

fn next_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    30000 + (std::process::id() % 500) as u16 * 40 + NEXT.fetch_add(1, Ordering::SeqCst) % 40
}

/// initdb options that give `major` the checksum setting older majors default to.
pub fn no_checksums(major: u32) -> &'static [&'static str] {
    if major >= 18 {
        &["--no-data-checksums"]
    } else {
        &[]
    }
}

/// A cluster made by a test. Stopped (immediately) on drop if still running.
pub struct Cluster {
    pub major: u32,
    pub bindir: PathBuf,
    pub datadir: PathBuf,
    pub sockdir: PathBuf,
    pub port: u16,
    running: bool,
}

impl Cluster {
    /// A cluster run by someone else (Patroni), seen through its socket:
    /// never started or stopped by this handle.
    pub fn attached(
        major: u32,
        bindir: PathBuf,
        datadir: PathBuf,
        sockdir: PathBuf,
        port: u16,
    ) -> Cluster {
        Cluster {
            major,
            bindir,
            datadir,
            sockdir,
            port,
            running: false,
        }
    }

    pub fn start(&mut self) {
        let log = self.datadir.with_extension("log");
        run_ok(
            as_test_user(self.bindir.join("pg_ctl"))
                .args(["-w", "-D"])
                .arg(&self.datadir)
                .arg("-l")
                .arg(&log)
                .arg("-o")
                .arg(format!(
                    "-c listen_addresses='' -c unix_socket_directories='{}' -p {}",
                    self.sockdir.display(),
                    self.port
                ))
                .arg("start"),
        );
        self.running = true;
    }

    pub fn stop(&mut self) {
        self.stop_mode("fast");
    }

    /// Stops with `-m immediate`: the cluster is left needing crash recovery.
    pub fn stop_immediate(&mut self) {
        self.stop_mode("immediate");
    }

    fn stop_mode(&mut self, mode: &str) {
        run_ok(
            as_test_user(self.bindir.join("pg_ctl"))
                .args(["-w", "-m", mode, "-D"])
                .arg(&self.datadir)
                .arg("stop"),
        );
        self.running = false;
    }

    /// Forgets that the server runs (after it was killed by the test).
    pub fn mark_stopped(&mut self) {
        self.running = false;
    }

    pub fn postmaster_pid(&self) -> i32 {
        let text = std::fs::read_to_string(self.datadir.join("postmaster.pid")).unwrap();
        text.lines().next().unwrap().trim().parse().unwrap()
    }

    pub fn client(&self, database: &str) -> postgres::Client {
        postgres::Config::new()
            .host_path(&self.sockdir)
            .port(self.port)
            .user(&test_user().name)
            .dbname(database)
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {} ({database}): {e}", self.datadir.display()))
    }

    /// Runs SQL (several statements allowed) in `database` of a running cluster.
    pub fn sql(&self, database: &str, sql: &str) {
        self.client(database)
            .batch_execute(sql)
            .unwrap_or_else(|e| match e.as_db_error() {
                Some(db) => panic!("{sql}: {}: {}", db.code().code(), db.message()),
                None => panic!("{sql}: {e}"),
            });
    }

    /// Starts the cluster, runs SQL, and stops it again.
    pub fn with_running<T>(&mut self, f: impl FnOnce(&Cluster) -> T) -> T {
        self.start();
        let result = f(self);
        self.stop();
        result
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = as_test_user(self.bindir.join("pg_ctl"))
                .args(["-w", "-m", "immediate", "-D"])
                .arg(&self.datadir)
                .arg("stop")
                .output();
        }
    }
}

/// Every file under a directory with its size, mode and CRC-32C: two equal
/// snapshots mean the tree is byte-for-byte the same.
pub type TreeSnapshot = BTreeMap<PathBuf, (u64, u32, u32)>;

pub fn snapshot(dir: &Path) -> TreeSnapshot {
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .map(|entry| entry.unwrap())
        .map(|entry| {
            let meta = entry.metadata().unwrap();
            let crc = if meta.is_file() {
                crc32c::crc32c(&std::fs::read(entry.path()).unwrap())
            } else {
                0
            };
            let rel = entry.path().strip_prefix(dir).unwrap().to_path_buf();
            (
                rel,
                (meta.len() * u64::from(meta.is_file()), meta.mode(), crc),
            )
        })
        .collect()
}

/// Panics with the paths that differ.
pub fn assert_same_tree(before: &TreeSnapshot, after: &TreeSnapshot, what: &str) {
    let mut differences = Vec::new();
    for (path, old) in before {
        match after.get(path) {
            None => differences.push(format!("removed {}", path.display())),
            Some(new) if new != old => differences.push(format!("changed {}", path.display())),
            _ => {}
        }
    }
    for path in after.keys().filter(|p| !before.contains_key(*p)) {
        differences.push(format!("added {}", path.display()));
    }
    assert!(
        differences.is_empty(),
        "{what} changed:\n{}",
        differences.join("\n")
    );
}

/// The result of one pg-migrate run.
#[derive(Debug)]
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as JSON lines (empty without --json).
    pub events: Vec<Value>,
}

impl Run {
    /// The events named `name`.
    pub fn events_named(&self, name: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == name).collect()
    }

    /// The steps that ended (their `step_end` events), in order.
    pub fn steps_ended(&self) -> Vec<&str> {
        self.events
            .iter()
            .filter(|e| e["event"] == "step_end")
            .map(|e| e["step"].as_str().expect("a step_end event names its step"))
            .collect()
    }

    /// The `check` event with this id.
    pub fn check(&self, id: &str) -> &Value {
        self.events
            .iter()
            .find(|e| e["event"] == "check" && e["id"] == id)
            .unwrap_or_else(|| panic!("no check event {id} in:\n{}", self.stdout))
    }

    pub fn summary(&self) -> &Value {
        let last = self
            .events
            .last()
            .unwrap_or_else(|| panic!("no events; stderr:\n{}", self.stderr));
        assert_eq!(last["event"], "summary", "last event must be the summary");
        last
    }

    pub fn error(&self) -> &Value {
        self.events
            .iter()
            .find(|e| e["event"] == "error")
            .unwrap_or_else(|| panic!("no error event in:\n{}", self.stdout))
    }
}

/// Runs pg-migrate (as the test user) from `cwd` with `args`.
pub fn pg_migrate(binary: &Path, cwd: &Path, args: &[&std::ffi::OsStr]) -> Run {
    let output = as_test_user(binary)
        .current_dir(cwd)
        .args(args)
        .env_remove("PGBINOLD")
        .env_remove("PGBINNEW")
        .env_remove("PGDATAOLD")
        .env_remove("PGDATANEW")
        .output()
        .unwrap();
    finish(output)
}

/// Every event matches the published JSON Schema (docs/events.schema.json),
/// judged by a real validator.
pub fn assert_events_match_schema(events: &[Value]) {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/events.schema.json");
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        jsonschema::validator_for(&schema).expect("docs/events.schema.json is a JSON Schema")
    });
    for event in events {
        let errors: Vec<String> = validator
            .iter_errors(event)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "event does not match docs/events.schema.json: {errors:?}\n{event}"
        );
    }
}

/// Turns a process's output into a [`Run`], parsing every stdout line as JSON
/// when the first one looks like JSON (each event checked against the
/// published schema).
pub fn finish(output: Output) -> Run {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let events: Vec<Value> = if stdout.starts_with('{') {
        stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect()
    } else {
        Vec::new()
    };
    assert_events_match_schema(&events);
    Run {
        status: output.status.code().unwrap_or(-1),
        stdout,
        stderr,
        events,
    }
}

/// The pg-migrate binary as the test user can run it: the build's own file
/// when the test user can reach it, else one copy per test process (made
/// once: copying a binary while other threads fork makes exec fail with
/// "text file busy").
pub fn binary_for_test_user(binary: &Path, _dir: &Path) -> PathBuf {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    let user = test_user();
    if !user.switch {
        return binary.to_path_buf();
    }
    let reachable = as_test_user("test")
        .arg("-x")
        .arg(binary)
        .status()
        .is_ok_and(|s| s.success());
    if reachable {
        return binary.to_path_buf();
    }
    COPY.get_or_init(|| {
        let dir = process_dir().join("bin");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let target = dir.join("pg-migrate");
        std::fs::copy(binary, &target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        target
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test whose major is missing fails; allowed to skip, it is counted.
    /// (One test: the environment is the process's.)
    #[test]
    fn a_missing_major_fails_or_is_counted_never_passes_silently() {
        let empty = tempfile::tempdir().unwrap();
        let log = empty.path().join("skipped.log");
        std::env::set_var("PG_MIGRATE_PG_PREFIX", empty.path());
        std::env::set_var("PG_MIGRATE_SKIP_LOG", &log);
        std::env::remove_var("PG_MIGRATE_SKIP_MISSING");
        let failed = std::panic::catch_unwind(|| require(15));
        assert!(failed.is_err(), "a missing major must fail the test");
        std::env::set_var("PG_MIGRATE_SKIP_MISSING", "1");
        assert!(require(15).is_none());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("PostgreSQL 15 missing"), "{text}");
        std::env::remove_var("PG_MIGRATE_SKIP_MISSING");
        std::env::remove_var("PG_MIGRATE_PG_PREFIX");
    }
}
