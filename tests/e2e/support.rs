//! The harness: a pair of clusters in a sandbox and pg-migrate run on them.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub use pgm_testkit::{
    as_test_user, assert_same_tree, no_checksums, require, run_ok, snapshot, Cluster, Run, Sandbox,
    TreeSnapshot,
};

/// The pg-migrate binary, where the test user can run it.
pub fn binary(sandbox: &Sandbox) -> PathBuf {
    pgm_testkit::binary_for_test_user(Path::new(env!("CARGO_BIN_EXE_pg-migrate")), sandbox.path())
}

/// An old and a new cluster made for one test.
pub struct Pair {
    pub old: Cluster,
    pub new: Cluster,
    pub bin: PathBuf,
    // Last: dropped after the clusters are stopped.
    pub sandbox: Sandbox,
}

impl Pair {
    /// Both majors must be installed (a failure in CI, a skip elsewhere).
    pub fn new(old_major: u32, new_major: u32) -> Option<Pair> {
        Pair::with_options(
            old_major,
            no_checksums(old_major),
            new_major,
            no_checksums(new_major),
        )
    }

    pub fn with_options(
        old_major: u32,
        old_opts: &[&str],
        new_major: u32,
        new_opts: &[&str],
    ) -> Option<Pair> {
        require(old_major)?;
        require(new_major)?;
        Some(Pair::in_sandbox(
            Sandbox::new(),
            (old_major, old_opts),
            (new_major, new_opts),
        ))
    }

    /// Both clusters in a sandbox under `base` (another filesystem).
    pub fn new_in(base: &Path, old_major: u32, new_major: u32) -> Option<Pair> {
        require(old_major)?;
        require(new_major)?;
        Some(Pair::in_sandbox(
            Sandbox::new_in(base),
            (old_major, no_checksums(old_major)),
            (new_major, no_checksums(new_major)),
        ))
    }

    fn in_sandbox(sandbox: Sandbox, old: (u32, &[&str]), new: (u32, &[&str])) -> Pair {
        let ((old_major, old_opts), (new_major, new_opts)) = (old, new);
        let old = sandbox.cluster("old", old_major, old_opts);
        let new = sandbox.cluster("new", new_major, new_opts);
        let bin = binary(&sandbox);
        Pair {
            old,
            new,
            bin,
            sandbox,
        }
    }

    /// The four directory flags.
    pub fn dir_args(&self) -> Vec<OsString> {
        vec![
            "-b".into(),
            self.old.bindir.clone().into(),
            "-B".into(),
            self.new.bindir.clone().into(),
            "-d".into(),
            self.old.datadir.clone().into(),
            "-D".into(),
            self.new.datadir.clone().into(),
        ]
    }

    /// `pg-migrate check <dirs> --json <extra>`.
    pub fn check(&self, extra: &[&str]) -> Run {
        let mut args: Vec<OsString> = vec!["check".into()];
        args.extend(self.dir_args());
        args.push("--json".into());
        args.extend(extra.iter().map(OsString::from));
        self.run(&args)
    }

    pub fn run(&self, args: &[OsString]) -> Run {
        let refs: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        pgm_testkit::pg_migrate(&self.bin, self.sandbox.path(), &refs)
    }

    pub fn snapshots(&self) -> (TreeSnapshot, TreeSnapshot) {
        (snapshot(&self.old.datadir), snapshot(&self.new.datadir))
    }
}

/// Fills a cluster with a little of everything a check must look through.
pub fn add_some_data(cluster: &mut Cluster) {
    cluster.with_running(|c| {
        c.sql("postgres", "CREATE DATABASE \"odd \"\"name\"\" é\"");
        c.sql("postgres", "CREATE DATABASE app");
        c.sql(
            "app",
            "CREATE TABLE items (id serial PRIMARY KEY, name text); INSERT INTO items (name) SELECT 'n' || g FROM generate_series(1, 500) g;",
        );
        c.sql("odd \"name\" é", "CREATE SCHEMA s; CREATE TABLE s.t AS SELECT 1 AS x;");
    });
}

/// The assertions every refusal must satisfy: the named check failed with the
/// named code, a message and a remedy; one error event lists it; the summary
/// is last and carries the exit status.
pub fn assert_refused(run: &Run, check_id: &str, code: &str) {
    assert_eq!(run.status, 1, "exit status; stderr:\n{}", run.stderr);
    let check = run.check(check_id);
    assert_eq!(check["status"], "fail", "{check}");
    assert_eq!(check["code"], code, "{check}");
    assert!(
        check["message"].as_str().is_some_and(|m| m.len() > 10),
        "{check}"
    );
    assert!(
        check["remedy"].as_str().is_some_and(|m| m.len() > 10),
        "{check}"
    );
    let error = run.error();
    assert_eq!(error["code"], "checks_failed");
    assert_eq!(error["step"], "checks");
    assert!(
        error["causes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["check"] == check_id && c["code"] == code),
        "{error}"
    );
    let summary = run.summary();
    assert_eq!(summary["exit_code"], 1);
    assert_eq!(summary["result"], "checks_failed");
    // People get the same problem and its fix on stderr.
    assert!(
        run.stderr.contains(check["remedy"].as_str().unwrap()),
        "{}",
        run.stderr
    );
}

/// Starts pg-migrate paused at `point` (see pgm_cluster::faults); returns the
/// child once it is waiting there, and the file whose removal lets it go on.
pub fn spawn_paused(pair: &Pair, args: &[OsString], point: &str) -> (Child, PathBuf) {
    spawn_paused_with(pair, args, point, &[])
}

pub fn spawn_paused_with(
    pair: &Pair,
    args: &[OsString],
    point: &str,
    env: &[(&str, &str)],
) -> (Child, PathBuf) {
    let pause = pair.sandbox.path().join("pause");
    let _ = std::fs::remove_file(&pause);
    let child = as_test_user(&pair.bin)
        .current_dir(pair.sandbox.path())
        .envs(env.iter().copied())
        .args(args)
        .env("PG_MIGRATE_TEST_PAUSE_AT", point)
        .env("PG_MIGRATE_TEST_PAUSE_FILE", &pause)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pause.exists() {
        assert!(
            Instant::now() < deadline,
            "pg-migrate never reached {point}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, pause)
}

pub fn with(args: Vec<OsString>, extra: &[&str]) -> Vec<OsString> {
    let mut all: Vec<OsString> = extra.iter().map(OsString::from).collect();
    all.extend(args);
    all.push("--json".into());
    all
}

pub fn state(pair: &Pair) -> String {
    std::fs::read_to_string(pair.new.datadir.join("pg_migrate.d/state"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A tmpfs of a given size, mounted for one test (root only), owned by the test user.
pub struct SmallDisk {
    pub path: PathBuf,
}

impl SmallDisk {
    pub fn mount(path: &Path, megabytes: u64) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).unwrap();
        let user = pgm_testkit::test_user();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!(
                "size={megabytes}m,mode=0700,uid={},gid={}",
                user.uid, user.gid
            ))
            .arg("tmpfs")
            .arg(path)
            .status()
            .ok()?;
        status.success().then(|| SmallDisk {
            path: path.to_path_buf(),
        })
    }

    /// [`SmallDisk::mount`], or — where it cannot be mounted (not root) —
    /// `None` after saying what is skipped; never in CI, which runs as root.
    pub fn mount_or_skip(path: &Path, megabytes: u64, what: &str) -> Option<SmallDisk> {
        let disk = SmallDisk::mount(path, megabytes);
        if disk.is_none() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI runs as root and can mount a tmpfs"
            );
            eprintln!("SKIP: {what} (cannot mount a tmpfs here: not root?)");
        }
        disk
    }

    pub fn resize(&self, megabytes: u64) {
        run_ok(
            std::process::Command::new("mount")
                .args(["-o", &format!("remount,size={megabytes}m")])
                .arg(&self.path),
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// The new major's (18's) directories in a tablespace, gone: room for
/// another upgrade of the same old cluster.
pub fn clear_new_tablespace_dirs(tablespace: &Path) {
    for entry in std::fs::read_dir(tablespace).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("PG_18_")
        {
            std::fs::remove_dir_all(path).unwrap();
        }
    }
}

/// Every log file under `dir`, read.
pub fn logs_under(dir: &Path) -> String {
    walk(dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

pub fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
