//! The HA case of scripts/bench.sh (run by scripts/bench.py; measures, is not
//! a test). On identical fresh three-member Patroni clusters (real etcd, real
//! Patroni, streaming replicas), loaded the same way, with a writer inserting
//! a row every 10 ms through the leader's socket:
//!   - `pg-migrate patroni` (link mode);
//!   - the procedure Spilo scripts around pg_upgrade: pause, stop the leader,
//!     replicas replay its shutdown checkpoint and stop, `pg_upgrade --link`,
//!     `rsync --hard-links --size-only` of the old and new data directories to
//!     every replica (in parallel), the store's `initialize` key deleted, the
//!     leader started by its Patroni (`POST /restart`), the replicas' Patroni
//!     started, resume.
//!
//! Each trial gives the write downtime (the last write the old leader
//! accepted to the first the new one accepted) and the time from that last
//! write until every replica streams from the new leader; then proves the
//! result (every member on the new major under Patroni, the same leader,
//! replicas streaming and holding the leader's rows, `initialize` the new
//! system identifier) or exits non-zero. Prints one JSON document.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgm_testkit::ha::{http_post_status, Member, PatroniCluster};
use pgm_testkit::{as_test_user, binary_for_test_user, pg_migrate, run_ok, Sandbox};
use serde_json::{json, Value};

struct Args {
    pg_migrate: PathBuf,
    workdir: PathBuf,
    old: u32,
    new: u32,
    rounds: usize,
    jobs: u16,
    pgbench_scale: u32,
    tables: u32,
}

fn parse_args() -> Args {
    let mut args = Args {
        pg_migrate: PathBuf::new(),
        workdir: std::env::temp_dir(),
        old: 15,
        new: 18,
        rounds: 2,
        jobs: 2,
        pgbench_scale: 20,
        tables: 2000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = || {
            value
                .parse::<u32>()
                .unwrap_or_else(|_| panic!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--pg-migrate" => {
                args.pg_migrate = std::fs::canonicalize(&value)
                    .unwrap_or_else(|e| panic!("--pg-migrate {value}: {e}"))
            }
            "--workdir" => args.workdir = PathBuf::from(&value),
            "--old" => args.old = number(),
            "--new" => args.new = number(),
            "--rounds" => args.rounds = number() as usize,
            "--jobs" => args.jobs = number() as u16,
            "--pgbench-scale" => args.pgbench_scale = number(),
            "--tables" => args.tables = number(),
            _ => panic!("unknown option {flag}"),
        }
    }
    assert!(
        args.pg_migrate.is_file(),
        "--pg-migrate: the release binary"
    );
    args
}

#[derive(Clone, Copy, PartialEq)]
enum Procedure {
    PgMigrate,
    SpiloStyle,
}

impl Procedure {
    fn name(self) -> &'static str {
        match self {
            Procedure::PgMigrate => "pg-migrate patroni",
            Procedure::SpiloStyle => "pg_upgrade --link + rsync (Spilo's procedure)",
        }
    }
}

fn main() {
    let args = parse_args();
    let mut trials = Vec::new();
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [Procedure::PgMigrate, Procedure::SpiloStyle]
        } else {
            [Procedure::SpiloStyle, Procedure::PgMigrate]
        };
        for procedure in order {
            eprintln!("  HA round {}: {}", round + 1, procedure.name());
            let trial = trial(&args, procedure);
            eprintln!("    {trial}");
            trials.push(trial);
        }
    }
    let report = json!({
        "old": args.old,
        "new": args.new,
        "members": 3,
        "pgbench_scale": args.pgbench_scale,
        "tables": args.tables,
        "jobs": args.jobs,
        "rounds": args.rounds,
        "trials": trials,
    });
    writeln!(std::io::stdout().lock(), "{report}").unwrap();
}

/// One procedure on a fresh cluster: its measures and the proof it worked.
fn trial(args: &Args, procedure: Procedure) -> Value {
    let sandbox = Sandbox::new_in(&args.workdir);
    let cluster = PatroniCluster::start_with(&sandbox, args.old, 3, |leader, _| load(args, leader))
        .expect(
            "Patroni, etcd and PostgreSQL installed (scripts/install-ha.sh, install-postgres.sh)",
        );
    cluster.wait_healthy(Duration::from_secs(300));
    let leader = &cluster.members[0];
    let data_bytes = bytes_under(&leader.datadir);
    let clock = Instant::now();
    let probe = Probe::start(leader, clock, args.old, args.new, cluster.members.len() - 1);
    std::thread::sleep(Duration::from_secs(1));
    let began = clock.elapsed();
    let steps = match procedure {
        Procedure::PgMigrate => pg_migrate_patroni(args, &cluster, &sandbox),
        Procedure::SpiloStyle => spilo_style(args, &cluster, &sandbox),
    };
    let ended = clock.elapsed();
    let seen = probe.finish(Duration::from_secs(300));
    prove(args, &cluster);
    json!({
        "procedure": procedure.name(),
        "data_bytes": data_bytes,
        "write_downtime_s": (seen.first_new - seen.last_old).as_secs_f64(),
        "replicas_streaming_s": (seen.streaming - seen.last_old).as_secs_f64(),
        "command_s": (ended - began).as_secs_f64(),
        "writes": seen.writes,
        "steps": steps,
    })
}

/// pgbench's tables, `--tables` small tables (each with an index and a
/// TOAST table: the catalog an upgrade carries), and the writer's table.
fn load(args: &Args, leader: &Member) {
    let bindir = PatroniCluster::bindir_of(args.old);
    run_ok(
        as_test_user(bindir.join("pgbench"))
            .args(["-i", "-q", "-s", &args.pgbench_scale.to_string(), "-h"])
            .arg(&leader.sockdir)
            .args(["-p", &leader.pg_port.to_string(), "postgres"]),
    );
    let mut sql = String::new();
    for i in 1..=args.tables {
        sql.push_str(&format!(
            "CREATE TABLE t{i} (id int PRIMARY KEY, payload text); INSERT INTO t{i} VALUES (1, 'x');\n"
        ));
        if i % 250 == 0 || i == args.tables {
            leader.sql("postgres", &format!("BEGIN;\n{sql}COMMIT;"));
            sql.clear();
        }
    }
    leader.sql(
        "postgres",
        "CREATE TABLE writes (id bigserial PRIMARY KEY, at timestamptz DEFAULT now()); CHECKPOINT;",
    );
}

fn bytes_under(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// What the writer and the streaming watcher saw, as times on the trial's clock.
struct Seen {
    last_old: Duration,
    first_new: Duration,
    streaming: Duration,
    writes: u64,
}

#[derive(Default)]
struct Marks {
    last_old: Option<Duration>,
    first_new: Option<Duration>,
    streaming: Option<Duration>,
    writes: u64,
}

struct Probe {
    stop: Arc<AtomicBool>,
    marks: Arc<Mutex<Marks>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Probe {
    /// A writer (a row every 10 ms, reconnecting every 10 ms while the
    /// leader is down) and, once the new leader took a write, a watcher of
    /// its pg_stat_replication every 50 ms.
    fn start(leader: &Member, clock: Instant, old: u32, new: u32, replicas: usize) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let marks = Arc::new(Mutex::new(Marks::default()));
        let writer = {
            let (stop, marks) = (stop.clone(), marks.clone());
            let connect = connector(leader);
            std::thread::spawn(move || {
                let mut client: Option<(postgres::Client, u32)> = None;
                while !stop.load(Ordering::SeqCst) {
                    if client.is_none() {
                        client = connect().ok().and_then(|mut c| {
                            let major = major_of(&mut c)?;
                            Some((c, major))
                        });
                    }
                    if let Some((c, major)) = client.as_mut() {
                        if c.execute("INSERT INTO writes DEFAULT VALUES", &[]).is_ok() {
                            let now = clock.elapsed();
                            let mut m = marks.lock().unwrap();
                            m.writes += 1;
                            if *major == old {
                                m.last_old = Some(now);
                            } else if *major == new && m.first_new.is_none() {
                                m.first_new = Some(now);
                            }
                        } else {
                            client = None;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let watcher = {
            let (stop, marks) = (stop.clone(), marks.clone());
            let connect = connector(leader);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                    if marks.lock().unwrap().first_new.is_none() {
                        continue;
                    }
                    let streaming = connect().ok().and_then(|mut c| {
                        let major = major_of(&mut c)?;
                        let row = c
                            .query_one(
                                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                                &[],
                            )
                            .ok()?;
                        Some(major == new && row.get::<_, i64>(0) as usize == replicas)
                    });
                    if streaming == Some(true) {
                        marks.lock().unwrap().streaming = Some(clock.elapsed());
                        return;
                    }
                }
            })
        };
        Probe {
            stop,
            marks,
            threads: vec![writer, watcher],
        }
    }

    fn finish(self, timeout: Duration) -> Seen {
        let deadline = Instant::now() + timeout;
        while self.marks.lock().unwrap().streaming.is_none() {
            assert!(
                Instant::now() < deadline,
                "the replicas never streamed from the new leader"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().unwrap();
        }
        let m = self.marks.lock().unwrap();
        Seen {
            last_old: m.last_old.expect("the old leader took writes"),
            first_new: m.first_new.expect("the new leader took writes"),
            streaming: m.streaming.unwrap(),
            writes: m.writes,
        }
    }
}

fn connector(
    leader: &Member,
) -> impl Fn() -> Result<postgres::Client, postgres::Error> + Send + 'static {
    let (sockdir, port) = (leader.sockdir.clone(), leader.pg_port);
    let user = pgm_testkit::test_user().name.clone();
    move || {
        postgres::Config::new()
            .host_path(&sockdir)
            .port(port)
            .user(&user)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2))
            .connect(postgres::NoTls)
    }
}

fn major_of(client: &mut postgres::Client) -> Option<u32> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int / 10000",
            &[],
        )
        .ok()?;
    Some(row.get::<_, i32>(0) as u32)
}

/// Runs `pg-migrate patroni`; its steps' durations (step_end events).
fn pg_migrate_patroni(args: &Args, cluster: &PatroniCluster, sandbox: &Sandbox) -> Value {
    let bin = binary_for_test_user(&args.pg_migrate, sandbox.path());
    let leader = &cluster.members[0];
    let dir = leader.config.parent().unwrap().display().to_string();
    let argv: Vec<std::ffi::OsString> = vec![
        "patroni".into(),
        "--config".into(),
        leader.config.clone().into(),
        "-B".into(),
        PatroniCluster::bindir_of(args.new).into(),
        "-j".into(),
        args.jobs.to_string().into(),
        "--remote".into(),
        "sh -c".into(),
        "--remote-pg-migrate".into(),
        bin.clone().into(),
        "--member-config".into(),
        format!("{dir}/{{name}}.yml").into(),
        "--patroni-stop".into(),
        format!("sh {dir}/{{name}}.stop").into(),
        "--patroni-start".into(),
        format!("sh {dir}/{{name}}.start").into(),
        "--json".into(),
    ];
    let refs: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
    let run = pg_migrate(&bin, sandbox.path(), &refs);
    assert_eq!(
        run.status, 0,
        "pg-migrate patroni failed:\n{}\n{}",
        run.stdout, run.stderr
    );
    let steps: serde_json::Map<String, Value> = run
        .events
        .iter()
        .filter(|e| e["event"] == "step_end")
        .map(|e| {
            let seconds = e["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0;
            (
                e["step"].as_str().unwrap_or("?").to_string(),
                json!(seconds),
            )
        })
        .collect();
    Value::Object(steps)
}

/// The procedure Spilo's inplace_upgrade.py runs, with this machine's
/// programs: everything it does before stopping the leader is done before
/// too (the new cluster's initdb, pg_upgrade --check on the live cluster).
/// Returns when each stage ended, in seconds after the leader's stop began.
fn spilo_style(args: &Args, cluster: &PatroniCluster, sandbox: &Sandbox) -> Value {
    let old_bindir = cluster.bindir.clone();
    let new_bindir = PatroniCluster::bindir_of(args.new);
    let leader = &cluster.members[0];
    let replicas = &cluster.members[1..];
    let new_datadir = |m: &Member| m.datadir.with_extension(args.new.to_string());
    let work = sandbox.mkdir("pg_upgrade");
    let upgrade = |extra: &[&str]| {
        let mut command = as_test_user(new_bindir.join("pg_upgrade"));
        command
            .current_dir(&work)
            .arg("-b")
            .arg(&old_bindir)
            .arg("-B")
            .arg(&new_bindir)
            .arg("-d")
            .arg(&leader.datadir)
            .arg("-D")
            .arg(new_datadir(leader))
            .args(["-p", &leader.pg_port.to_string()])
            .args(["-P", &pgm_testkit::ha::free_ports(1)[0].to_string()])
            .args(["-j", &args.jobs.to_string()])
            .args(extra);
        command
    };

    run_ok(
        as_test_user(new_bindir.join("initdb"))
            .arg("-D")
            .arg(new_datadir(leader))
            .args(["-E", "UTF8", "--locale=C.UTF-8", "--data-checksums"]),
    );
    run_ok(&mut upgrade(&["--check"]));
    cluster.set_pause(true);
    // Paused, a stopped Patroni leaves its PostgreSQL running: every one is
    // stopped before the downtime (Spilo restarts them within it).
    for member in &cluster.members {
        member.stop_patroni();
    }

    // The downtime begins.
    let downtime = Instant::now();
    let marks = std::cell::RefCell::new(serde_json::Map::new());
    let step = |what: &str| {
        let at = downtime.elapsed().as_secs_f64();
        marks.borrow_mut().insert(what.to_string(), json!(at));
    };
    pg_ctl(&old_bindir, &leader.datadir, &["stop", "-m", "fast"]);
    step("leader stopped");
    let checkpoint = controldata(&old_bindir, &leader.datadir, "Latest checkpoint location");
    std::thread::scope(|scope| {
        let upgraded = scope.spawn(|| run_ok(&mut upgrade(&["--link"])));
        // Replicas replay up to the leader's shutdown checkpoint, then stop
        // (their CHECKPOINT runs beside pg_upgrade, as Spilo does it).
        for replica in replicas {
            let (old_bindir, checkpoint) = (&old_bindir, &checkpoint);
            scope.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let replayed = replica.try_client("postgres").ok().and_then(|mut c| {
                        c.query_one(
                            &format!("SELECT pg_last_wal_replay_lsn() >= '{checkpoint}'::pg_lsn"),
                            &[],
                        )
                        .ok()
                        .map(|row| row.get::<_, bool>(0))
                    });
                    if replayed == Some(true) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "{} never replayed", replica.name);
                    std::thread::sleep(Duration::from_millis(50));
                }
                replica.sql("postgres", "CHECKPOINT");
                pg_ctl(old_bindir, &replica.datadir, &["stop", "-m", "fast"]);
            });
        }
        upgraded.join().unwrap();
    });
    step("pg_upgrade --link done, replicas stopped");

    // Every Patroni is started again on the new major's directories.
    for member in &cluster.members {
        point_at(member, &cluster.bindir, &new_bindir, &new_datadir(member));
    }
    // rsync of both directories to every replica before the leader starts
    // (the new leader's first writes would make --size-only miss changes),
    // WAL left out as Spilo does.
    let home = leader.datadir.parent().unwrap();
    let (old_name, new_name) = (
        leader.datadir.file_name().unwrap().to_str().unwrap(),
        new_datadir(leader)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string(),
    );
    std::thread::scope(|scope| {
        for replica in replicas {
            let target = replica.datadir.parent().unwrap();
            let new_name = &new_name;
            scope.spawn(move || {
                run_ok(
                    as_test_user("rsync")
                        .current_dir(home)
                        .args([
                            "--archive",
                            "--delete",
                            "--hard-links",
                            "--size-only",
                            "--omit-dir-times",
                            "--no-inc-recursive",
                            &format!("--exclude=/{old_name}/pg_wal/*"),
                            &format!("--exclude=/{new_name}/pg_wal/*"),
                            old_name,
                            new_name,
                        ])
                        .arg(format!("{}/", target.display())),
                )
            });
        }
    });
    step("rsync to the replicas done");
    let initialize = format!("/service/{}/initialize", cluster.scope);
    cluster.etcd.delete(&initialize);
    leader.start_patroni();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = http_post_status(&leader.rest_url("/restart"), "{}");
        if matches!(status, Some(code) if code < 300) {
            break;
        }
        assert!(Instant::now() < deadline, "POST /restart never succeeded");
        std::thread::sleep(Duration::from_millis(100));
    }
    step("leader started by its Patroni");
    let new_sysid = controldata(
        &new_bindir,
        &new_datadir(leader),
        "Database system identifier",
    );
    cluster.wait_until(
        Duration::from_secs(60),
        "initialize to be the new system",
        |c| c.etcd.get(&initialize).as_deref() == Some(new_sysid.as_str()),
    );
    step("initialize set by Patroni");
    for replica in replicas {
        replica.start_patroni();
    }
    cluster.set_pause(false);
    step("replicas' Patroni started, resumed");
    Value::Object(marks.into_inner())
}

fn pg_ctl(bindir: &Path, datadir: &Path, args: &[&str]) {
    run_ok(
        as_test_user(bindir.join("pg_ctl"))
            .arg("-w")
            .arg("-D")
            .arg(datadir)
            .args(args),
    );
}

fn controldata(bindir: &Path, datadir: &Path, field: &str) -> String {
    let out = run_ok(Command::new(bindir.join("pg_controldata")).arg(datadir));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == field).then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| panic!("pg_controldata of {}: no {field}", datadir.display()))
}

/// A member's Patroni configuration pointed at the new major's programs
/// and data directory.
fn point_at(member: &Member, old_bindir: &Path, new_bindir: &Path, new_datadir: &Path) {
    let text = std::fs::read_to_string(&member.config).unwrap();
    let text = text
        .replace(
            &format!("bin_dir: {}", old_bindir.display()),
            &format!("bin_dir: {}", new_bindir.display()),
        )
        .replace(
            &format!("data_dir: {}\n", member.datadir.display()),
            &format!("data_dir: {}\n", new_datadir.display()),
        );
    std::fs::write(&member.config, text).unwrap();
}

/// The result is what the issue asks of both: every member on the new
/// major under Patroni, m1 the leader, replicas streaming with the
/// leader's rows, the store's initialize key the new system identifier.
fn prove(args: &Args, cluster: &PatroniCluster) {
    cluster.wait_healthy(Duration::from_secs(120));
    assert_eq!(cluster.leader().as_deref(), Some("m1"));
    let leader = &cluster.members[0];
    let rows: i64 = leader
        .client("postgres")
        .query_one("SELECT count(*) FROM writes", &[])
        .unwrap()
        .get(0);
    for member in &cluster.members {
        let mut client = member.client("postgres");
        assert_eq!(
            major_of(&mut client),
            Some(args.new),
            "{} major",
            member.name
        );
        cluster.wait_until(
            Duration::from_secs(60),
            "the replica to hold the rows",
            |_| {
                member
                    .client("postgres")
                    .query_one("SELECT count(*) FROM writes", &[])
                    .is_ok_and(|row| row.get::<_, i64>(0) == rows)
            },
        );
    }
    let new_bindir = PatroniCluster::bindir_of(args.new);
    let sysid = controldata(
        &new_bindir,
        &leader.datadir.with_extension(args.new.to_string()),
        "Database system identifier",
    );
    assert_eq!(
        cluster
            .etcd
            .get(&format!("/service/{}/initialize", cluster.scope)),
        Some(sysid)
    );
}
