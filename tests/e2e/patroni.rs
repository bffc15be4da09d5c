//! `pg-migrate patroni`: a real three-member Patroni cluster (real etcd,
//! real Patroni, streaming replicas on loopback) on this machine; the other
//! members are reached through a local remote-command template (`sh -c`).
//! Each refusal is proven to change nothing: every member's data directory,
//! the store's keys and Patroni's view are the same after.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use pgm_testkit::ha::PatroniCluster;
use pgm_testkit::{pg_migrate, snapshot, Run, Sandbox, TreeSnapshot};

use super::support::binary;

const OLD: u32 = 15;
const NEW: u32 = 17;

struct Bed {
    cluster: PatroniCluster,
    bin: PathBuf,
    sandbox: Sandbox,
}

fn bed() -> Option<Bed> {
    pgm_testkit::require(NEW)?;
    let sandbox = Sandbox::new();
    let cluster = PatroniCluster::start(&sandbox, OLD, 3)?;
    let bin = binary(&sandbox);
    cluster.members[0].sql(
        "postgres",
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int);
         INSERT INTO accounts SELECT g, g * 10 FROM generate_series(1, 2000) g;",
    );
    cluster.wait_healthy(Duration::from_secs(60));
    for m in &cluster.members[1..] {
        cluster.wait_until(
            Duration::from_secs(60),
            "the replica to hold accounts",
            |_| {
                m.try_client("postgres")
                    .and_then(|mut c| c.query_one("SELECT count(*) FROM accounts", &[]))
                    .is_ok_and(|row| row.get::<_, i64>(0) == 2000)
            },
        );
    }
    Some(Bed {
        cluster,
        bin,
        sandbox,
    })
}

impl Bed {
    fn args(&self, extra: &[&str]) -> Vec<OsString> {
        let leader = &self.cluster.members[0];
        let member_config = leader.config.with_file_name("{name}.yml");
        let mut args: Vec<OsString> = vec![
            "patroni".into(),
            "--config".into(),
            leader.config.clone().into(),
            "-B".into(),
            PatroniCluster::bindir_of(NEW).into(),
            "--remote".into(),
            "sh -c".into(),
            "--remote-pg-migrate".into(),
            self.bin.clone().into(),
            "--member-config".into(),
            member_config.into(),
            "--json".into(),
        ];
        args.extend(extra.iter().map(OsString::from));
        args
    }

    fn run(&self, extra: &[&str]) -> Run {
        let args = self.args(extra);
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        pg_migrate(&self.bin, self.sandbox.path(), &refs)
    }

    /// What a refusal must leave alone, of what a running cluster does not
    /// change by itself: each member's Patroni configuration, the absence
    /// of any new data directory, the store's initialize key.
    fn world(&self) -> (Vec<TreeSnapshot>, Vec<bool>, Option<String>) {
        let trees = self
            .cluster
            .members
            .iter()
            .map(|m| snapshot(&m.config))
            .collect();
        let new_dirs = self
            .cluster
            .members
            .iter()
            .map(|m| m.datadir.with_extension(NEW.to_string()).exists())
            .collect();
        let initialize = self
            .cluster
            .etcd
            .get(&format!("/service/{}/initialize", self.cluster.scope));
        (trees, new_dirs, initialize)
    }
}

fn assert_refused_by(run: &Run, check: &str, code: &str) {
    assert_eq!(run.status, 1, "{}\n{}", run.stdout, run.stderr);
    let finding = run
        .events
        .iter()
        .find(|e| e["event"] == "check" && e["id"] == check)
        .unwrap_or_else(|| panic!("no check {check}:\n{}", run.stdout));
    assert_eq!(finding["status"], "fail", "{finding}");
    assert_eq!(finding["code"], code, "{finding}");
    assert!(
        finding["remedy"].as_str().is_some_and(|r| !r.is_empty()),
        "{finding}"
    );
    let error = run.error();
    assert_eq!(error["code"], "checks_failed");
    assert_eq!(error["clusters"]["old"], "unchanged");
    assert_eq!(run.summary()["result"], "checks_failed");
}

/// A healthy cluster passes the preflight, every member probed through the
/// remote template, and nothing changes; then each bad input is refused
/// before any change (a paused cluster, a lagging replica, a member down,
/// a member without the new installation), and the cluster is healthy
/// again after each.
#[test]
fn preflight_passes_a_healthy_cluster_and_refuses_each_bad_input() {
    let Some(bed) = bed() else { return };
    let before = bed.world();

    let run = bed.run(&["--check"]);
    assert_eq!(run.status, 0, "{}\n{}", run.stdout, run.stderr);
    for id in [
        "patroni-store",
        "patroni-leader-here",
        "patroni-not-paused",
        "patroni-members",
        "patroni-caught-up",
        "patroni-timeline",
        "patroni-member-probes",
        "patroni-new-installation",
        "patroni-same-cluster",
        "patroni-new-datadir",
        "patroni-room",
        "patroni-settings",
        "patroni-wal-archive",
    ] {
        assert_eq!(run.check(id)["status"], "pass", "{id}: {}", run.check(id));
    }
    // The leader's own pg-migrate checks ran, live, as part of it.
    assert!(
        run.events
            .iter()
            .any(|e| e["event"] == "check" && e["id"] == "old-control"),
        "{}",
        run.stdout
    );
    let probes = run.check("patroni-new-datadir")["message"]
        .as_str()
        .unwrap()
        .to_string();
    for m in ["m1", "m2", "m3"] {
        assert!(probes.contains(m), "{probes}");
    }
    assert_eq!(run.summary()["checks"]["fail"], 0);
    super::json_schema::validate(&run.events);
    assert_eq!(bed.world(), before);

    // Paused.
    bed.cluster.set_pause(true);
    let run = bed.run(&["--check"]);
    assert_refused_by(&run, "patroni-not-paused", "cluster_paused");
    bed.cluster.set_pause(false);
    assert_eq!(bed.world(), before);

    // A replica that replays behind the leader: a query on m2 holds a lock
    // that the leader's ALTER TABLE needs, so m2's replay waits behind it
    // (up to max_standby_streaming_delay) while the leader writes more than
    // maximum_lag_on_failover. (Pausing replay would not do: Patroni resumes
    // a replica's paused replay by itself.)
    let m2 = bed.cluster.member("m2");
    let mut holder = m2.client("postgres");
    holder
        .batch_execute("BEGIN; LOCK TABLE accounts IN ACCESS SHARE MODE")
        .unwrap();
    bed.cluster.members[0].sql(
        "postgres",
        "ALTER TABLE accounts ADD COLUMN note text;
         CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 40000) g",
    );
    bed.cluster
        .wait_until(Duration::from_secs(30), "m2 to lag", |c| {
            c.cluster_view().is_some_and(|v| {
                v["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["name"] == "m2" && m["replay_lag"].as_u64().unwrap_or(0) > 1 << 20)
            })
        });
    let run = bed.run(&["--check"]);
    assert_refused_by(&run, "patroni-caught-up", "replica_lagging");
    assert!(run.check("patroni-caught-up")["message"]
        .as_str()
        .unwrap()
        .contains("m2"));
    drop(holder);
    bed.cluster.wait_healthy(Duration::from_secs(60));

    // A member without the new installation: the remote command for m3
    // runs on a "host" where -B's path holds nothing (the script swaps the
    // path for one that does not exist, as m3's own filesystem would).
    let script = bed.sandbox.path().join("remote.sh");
    std::fs::write(
        &script,
        format!(
            "name=$1; shift\n\
             if [ \"$name\" = m3 ]; then\n\
             \x20 exec sh -c \"$(printf '%s' \"$1\" | sed 's#{new}#/nonexistent/bin#')\"\n\
             fi\n\
             exec sh -c \"$1\"\n",
            new = PatroniCluster::bindir_of(NEW).display()
        ),
    )
    .unwrap();
    pgm_testkit::chown_to_test_user(&script);
    let run = {
        let mut args = bed.args(&["--check"]);
        let at = args.iter().position(|a| a == "--remote").unwrap();
        args[at + 1] = format!("sh {} {{name}}", script.display()).into();
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        pg_migrate(&bed.bin, bed.sandbox.path(), &refs)
    };
    assert_refused_by(&run, "patroni-new-installation", "new_installation_missing");
    let message = run.check("patroni-new-installation")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.starts_with("m3: ") && !message.contains("m2"),
        "{message}"
    );

    // A member down: m3's Patroni stopped (and its PostgreSQL with it).
    let m3 = bed.cluster.member("m3");
    m3.stop_patroni();
    bed.cluster
        .wait_until(Duration::from_secs(30), "m3 to leave the view", |c| {
            c.cluster_view()
                .is_some_and(|v| v["members"].as_array().unwrap().len() == 2)
        });
    let run = bed.run(&["--check"]);
    assert_refused_by(&run, "patroni-members", "member_missing");
    assert!(run.check("patroni-members")["message"]
        .as_str()
        .unwrap()
        .contains("m3"));
    m3.start_patroni();
    bed.cluster.wait_healthy(Duration::from_secs(90));
    let after = bed.world();
    assert_eq!(after.1, before.1, "no new data directory was made");
    assert_eq!(after.2, before.2, "the initialize key is unchanged");

    // --member-config that names another member's file for every member.
    let run = {
        let mut args = bed.args(&["--check"]);
        let at = args.iter().position(|a| a == "--member-config").unwrap();
        args[at + 1] = bed.cluster.members[0].config.clone().into();
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        pg_migrate(&bed.bin, bed.sandbox.path(), &refs)
    };
    assert_refused_by(&run, "patroni-member-probes", "member_unreachable");
    assert!(
        run.check("patroni-member-probes")["message"]
            .as_str()
            .unwrap()
            .contains("not m2"),
        "{}",
        run.check("patroni-member-probes")
    );

    // The dynamic configuration archives WAL and sets a setting 17 removed:
    // the archive is refused until the operator chooses; the setting is
    // carried (a warning).
    let edit = bed.cluster.patronictl(&[
        "edit-config",
        "--force",
        "-s",
        "postgresql.parameters.archive_mode=on",
        "-s",
        "postgresql.parameters.archive_command=pgbackrest --stanza=main archive-push %p",
        "-s",
        "postgresql.parameters.vacuum_defer_cleanup_age=0",
        // Known to 17, but not listed by --describe-config (not in samples).
        "-s",
        "postgresql.parameters.zero_damaged_pages=off",
    ]);
    assert!(
        edit.status.success(),
        "{}",
        String::from_utf8_lossy(&edit.stderr)
    );
    let conf = bed.cluster.members[0].datadir.join("postgresql.conf");
    bed.cluster.wait_until(
        Duration::from_secs(30),
        "Patroni to write archive_command",
        |_| std::fs::read_to_string(&conf).is_ok_and(|t| t.contains("pgbackrest")),
    );
    let run = bed.run(&["--check"]);
    assert_refused_by(&run, "patroni-wal-archive", "wal_archive_in_use");
    let archive = run.check("patroni-wal-archive");
    assert!(
        archive["message"].as_str().unwrap().contains("pgBackRest"),
        "{archive}"
    );
    assert!(
        archive["remedy"]
            .as_str()
            .unwrap()
            .contains("stanza-upgrade"),
        "{archive}"
    );
    let settings = run.check("patroni-settings");
    assert_eq!(settings["status"], "warn", "{settings}");
    assert_eq!(settings["code"], "setting_renamed");
    assert!(settings["message"]
        .as_str()
        .unwrap()
        .contains("vacuum_defer_cleanup_age"));
    super::json_schema::validate(&run.events);
    let run = bed.run(&["--check", "--wal-archive", "off"]);
    assert_eq!(run.status, 0, "{}", run.stdout);
    assert_eq!(run.check("patroni-wal-archive")["code"], "wal_archive_off");
    super::json_schema::validate(&run.events);

    // A setting no PostgreSQL knows, in the dynamic configuration: the new
    // server would refuse to start with it.
    let edit = bed.cluster.patronictl(&[
        "edit-config",
        "--force",
        "-s",
        "postgresql.parameters.no_such_setting=1",
    ]);
    assert!(
        edit.status.success(),
        "{}",
        String::from_utf8_lossy(&edit.stderr)
    );
    bed.cluster.wait_until(
        Duration::from_secs(30),
        "the dynamic configuration to hold it",
        |c| {
            pgm_testkit::ha::http_get(&c.members[0].rest_url("/config")).is_some_and(|v| {
                v["postgresql"]["parameters"]["no_such_setting"].is_string()
                    || v["postgresql"]["parameters"]["no_such_setting"].is_number()
            })
        },
    );
    let run = bed.run(&["--check", "--wal-archive", "off"]);
    assert_refused_by(&run, "patroni-settings", "setting_unknown_to_new");
    let message = run.check("patroni-settings")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("no_such_setting (in the dynamic configuration)"),
        "{message}"
    );
    assert!(!message.contains("zero_damaged_pages"), "{message}");
    assert_eq!(bed.world(), before);
}

/// A file that is not a Patroni configuration is refused before anything
/// is asked of anyone: exit 2, `not_patroni_config`, naming the file.
#[test]
fn a_file_that_is_not_patronis_is_refused() {
    let Some(new) = pgm_testkit::require(NEW) else {
        return;
    };
    let sandbox = Sandbox::new();
    let bin = binary(&sandbox);
    let conf = sandbox.path().join("postgresql.conf");
    std::fs::write(&conf, "shared_buffers = 128MB\n").unwrap();
    pgm_testkit::chown_to_test_user(&conf);
    let yaml = sandbox.path().join("other.yml");
    std::fs::write(&yaml, "listen: 127.0.0.1:8008\nname: x\n").unwrap();
    pgm_testkit::chown_to_test_user(&yaml);
    for (file, says) in [(&conf, "not a mapping"), (&yaml, "no scope")] {
        let args: Vec<OsString> = vec![
            "patroni".into(),
            "--config".into(),
            file.into(),
            "-B".into(),
            new.clone().into(),
            "--check".into(),
            "--json".into(),
        ];
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let run = pg_migrate(&bin, sandbox.path(), &refs);
        assert_eq!(run.status, 2, "{}\n{}", run.stdout, run.stderr);
        let error = run.error();
        assert_eq!(error["code"], "not_patroni_config", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(says) && message.contains(&file.display().to_string()),
            "{message}"
        );
        assert_eq!(run.summary()["exit_code"], 2);
    }
}

/// A Patroni cluster of PostgreSQL 11 is refused before anything is asked
/// of it (its replicas would be upgraded as standbys, which is not
/// supported from 11): no REST API, store or member is contacted (none
/// exists here), and its data directory is left as it was.
#[test]
fn a_cluster_of_11_is_refused_before_anything() {
    let Some(new) = pgm_testkit::require(NEW) else {
        return;
    };
    if pgm_testkit::require(11).is_none() {
        return;
    }
    let sandbox = Sandbox::new();
    let bin = binary(&sandbox);
    let old = sandbox.cluster("m1", 11, &[]);
    let yaml = sandbox.path().join("m1.yml");
    std::fs::write(
        &yaml,
        format!(
            "scope: pgm\nname: m1\nrestapi:\n  listen: 127.0.0.1:1\netcd3:\n  hosts: 127.0.0.1:1\n\
             postgresql:\n  data_dir: {}\n  bin_dir: {}\n",
            old.datadir.display(),
            old.bindir.display()
        ),
    )
    .unwrap();
    pgm_testkit::chown_to_test_user(&yaml);
    let before = snapshot(&old.datadir);
    let run = patroni_upgrade(&bin, &sandbox, &yaml, &new);
    assert_eq!(run.status, 2, "{}\n{}", run.stdout, run.stderr);
    super::json_schema::validate(&run.events);
    let error = run.error();
    assert_eq!(error["code"], "not_from_this_major", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("PostgreSQL 11"),
        "{error}"
    );
    assert!(
        run.events.iter().all(|e| e["event"] != "check"),
        "nothing was probed: {}",
        run.stdout
    );
    pgm_testkit::assert_same_tree(&before, &snapshot(&old.datadir), "the old data directory");
}

/// `pg-migrate patroni --config YAML -B NEW --json`, run in the sandbox.
fn patroni_upgrade(
    bin: &std::path::Path,
    sandbox: &Sandbox,
    yaml: &std::path::Path,
    new: &std::path::Path,
) -> Run {
    let args: [&std::ffi::OsStr; 6] = [
        "patroni".as_ref(),
        "--config".as_ref(),
        yaml.as_os_str(),
        "-B".as_ref(),
        new.as_os_str(),
        "--json".as_ref(),
    ];
    pg_migrate(bin, sandbox.path(), &args)
}

/// The upgrade (no --check) of a cluster whose REST API does not answer is
/// refused by its preflight, nothing changed anywhere.
#[test]
fn an_unreachable_rest_api_is_refused_before_anything() {
    let Some(new) = pgm_testkit::require(NEW) else {
        return;
    };
    let sandbox = Sandbox::new();
    let bin = binary(&sandbox);
    let yaml = sandbox.path().join("patroni.yml");
    let data = sandbox.mkdir("data");
    std::fs::write(
        &yaml,
        format!(
            "scope: s\nname: n\nrestapi:\n  listen: 127.0.0.1:9\netcd3:\n  hosts: 127.0.0.1:9\npostgresql:\n  data_dir: {}\n",
            data.display()
        ),
    )
    .unwrap();
    pgm_testkit::chown_to_test_user(&yaml);
    let before = snapshot(sandbox.path());
    let run = patroni_upgrade(&bin, &sandbox, &yaml, &new);
    assert_refused_by(&run, "patroni-rest", "rest_unreachable");
    super::json_schema::validate(&run.events);
    assert_eq!(snapshot(sandbox.path()), before);
}

/// The member as a cluster the proof helpers can read (through its socket;
/// Patroni runs it).
fn attached(m: &pgm_testkit::ha::Member, major: u32) -> pgm_testkit::Cluster {
    pgm_testkit::Cluster::attached(
        major,
        PatroniCluster::bindir_of(major),
        m.datadir.clone(),
        m.sockdir.clone(),
        m.pg_port,
    )
}

fn patroni_templates(bed: &Bed) -> Vec<String> {
    let dir = bed.cluster.members[0]
        .config
        .parent()
        .unwrap()
        .display()
        .to_string();
    vec![
        "--patroni-stop".into(),
        format!("sh {dir}/{{name}}.stop"),
        "--patroni-start".into(),
        format!("sh {dir}/{{name}}.start"),
    ]
}

/// The whole cluster upgraded with one command, with the rich fixture
/// (tablespace included) and a writer running until the leader stops: every
/// member on the new major under Patroni, the same leader, both replicas
/// streaming, the same schema (new pg_dumpall before and after) and the same
/// contents on all three, every committed write there, writes reaching the
/// replicas, the store's initialize key the new system identifier, and a
/// switchover that works.
#[test]
fn upgrades_the_whole_cluster_with_one_command() {
    if pgm_testkit::require(NEW).is_none() {
        return;
    }
    let new_bindir = PatroniCluster::bindir_of(NEW);
    let sandbox = Sandbox::new();
    let Some(cluster) = PatroniCluster::start_with(&sandbox, OLD, 3, |leader, tablespace| {
        let c = attached(leader, OLD);
        super::proof::load_rich_into(&c, &new_bindir, tablespace);
        leader.sql(
            "postgres",
            "CREATE TABLE writes (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())",
        );
    }) else {
        return;
    };
    let bin = binary(&sandbox);
    let bed = Bed {
        cluster,
        bin,
        sandbox,
    };
    let leader = &bed.cluster.members[0];
    // The cluster archives WAL: the upgrade starts the new cluster with
    // archiving off (--wal-archive off), everywhere Patroni could set it.
    let edit = bed.cluster.patronictl(&[
        "edit-config",
        "--force",
        "-s",
        "postgresql.parameters.archive_mode=on",
        "-s",
        "postgresql.parameters.archive_command=/bin/true",
    ]);
    assert!(
        edit.status.success(),
        "{}",
        String::from_utf8_lossy(&edit.stderr)
    );
    let conf = leader.datadir.join("postgresql.conf");
    bed.cluster.wait_until(
        Duration::from_secs(30),
        "Patroni to write archive_command",
        |_| std::fs::read_to_string(&conf).is_ok_and(|t| t.contains("/bin/true")),
    );
    let before_dump = super::proof::dumpall(&attached(leader, OLD), &new_bindir);
    let old_sysid = bed.cluster.etcd.get("/service/pgm/initialize").unwrap();

    // A writer until the leader goes away (or, should pg-migrate refuse,
    // until it has answered).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let mut client = leader.client("postgres");
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut committed = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && client
                    .execute("INSERT INTO writes DEFAULT VALUES", &[])
                    .is_ok()
            {
                committed += 1;
            }
            committed
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    let mut templates = patroni_templates(&bed);
    templates.extend(["--wal-archive".to_string(), "off".to_string()]);
    let extra: Vec<&str> = templates.iter().map(String::as_str).collect();
    let run = bed.run(&extra);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let committed = writer.join().unwrap();
    assert_eq!(
        run.status,
        0,
        "{}\n{}\n{}",
        run.stdout,
        run.stderr,
        bed.cluster.logs_tail()
    );
    super::json_schema::validate(&run.events);
    let summary = &run.summary()["patroni"];
    for m in summary["members"].as_array().unwrap() {
        assert_eq!(m["result"], "upgraded", "{m}");
    }
    // The leader's upgrade made its replicas' slots again: its notice is
    // passed on, naming the leader.
    let notices = run.events_named("notice");
    assert!(
        notices
            .iter()
            .any(|n| n["code"] == "physical_slots_recreated"
                && n["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("leader m1: ") && m.contains("m2"))),
        "{notices:?}"
    );
    assert!(
        committed > 0,
        "the writer wrote nothing before the leader stopped"
    );

    // The store and Patroni's view.
    let new_sysid = bed.cluster.etcd.get("/service/pgm/initialize").unwrap();
    assert_ne!(new_sysid, old_sysid);
    assert_eq!(summary["new_system_identifier"], new_sysid.as_str());
    bed.cluster.wait_healthy(Duration::from_secs(60));
    assert_eq!(bed.cluster.leader().as_deref(), Some("m1"));
    for m in &bed.cluster.members {
        let status = m.status().unwrap();
        assert_eq!(
            status["server_version"].as_u64().unwrap() / 10000,
            NEW as u64,
            "{status}"
        );
        assert_eq!(status["database_system_identifier"], new_sysid.as_str());
        assert!(!status["pause"].as_bool().unwrap_or(false), "{status}");
    }
    let listed = bed.cluster.patronictl(&["list", "-f", "json"]);
    assert!(listed.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");

    // Archiving is off on the new leader and in the dynamic configuration.
    let archive_mode: String = leader
        .client("postgres")
        .query_one("SHOW archive_mode", &[])
        .unwrap()
        .get(0);
    assert_eq!(archive_mode, "off");
    let dynamic = pgm_testkit::ha::http_get(&leader.rest_url("/config")).unwrap();
    assert_eq!(
        dynamic["postgresql"]["parameters"]["archive_mode"], "off",
        "{dynamic}"
    );
    assert_eq!(run.check("patroni-wal-archive")["code"], "wal_archive_off");

    // Every committed write, and the same contents on all three.
    let rows: i64 = leader
        .client("postgres")
        .query_one("SELECT count(*) FROM writes", &[])
        .unwrap()
        .get(0);
    assert!(
        rows as u64 >= committed,
        "{rows} rows, {committed} committed"
    );
    let after_dump = super::proof::dumpall(&attached(leader, NEW), &new_bindir);
    let schema = |dump: &str| {
        super::proof::normalize(dump, OLD, NEW)
            .lines()
            .filter(|l| !l.contains("writes_id_seq"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (before, after) = (schema(&before_dump), schema(&after_dump));
    let writes_free = |lines: &[String]| -> Vec<String> {
        // The writes table's rows come after the first dump.
        let mut out = Vec::new();
        let mut skipping = false;
        for l in lines {
            if l.starts_with("COPY public.writes") {
                skipping = true;
                continue;
            }
            if skipping {
                if l == "\\." {
                    skipping = false;
                }
                continue;
            }
            out.push(l.clone());
        }
        out
    };
    assert_eq!(
        writes_free(&before),
        writes_free(&after),
        "the dumps differ"
    );
    // Unlogged tables have no contents on a standby, and a standby's
    // sequences stand where the primary last logged them (up to 32 ahead).
    let tables_of = |m: &pgm_testkit::ha::Member| -> std::collections::BTreeMap<String, String> {
        super::proof::contents_of(&attached(m, NEW), true)
            .into_iter()
            .filter(|(_, v)| !(v.ends_with(" true") || v.ends_with(" false")))
            .collect()
    };
    let leader_contents = tables_of(leader);
    assert!(leader_contents.len() > 10, "{leader_contents:?}");
    for m in &bed.cluster.members[1..] {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let theirs = tables_of(m);
            if theirs == leader_contents {
                break;
            }
            if std::time::Instant::now() > deadline {
                let differing: Vec<String> = leader_contents
                    .iter()
                    .filter(|(k, v)| theirs.get(*k) != Some(v))
                    .map(|(k, v)| format!("{k}: leader {v}, {} {:?}", m.name, theirs.get(k)))
                    .chain(
                        theirs
                            .keys()
                            .filter(|k| !leader_contents.contains_key(*k))
                            .map(|k| format!("{k}: only on {}", m.name)),
                    )
                    .collect();
                panic!("{} does not hold the leader's rows: {differing:#?}", m.name);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    // New writes reach both replicas.
    leader.sql(
        "postgres",
        "CREATE TABLE after_upgrade AS SELECT 42 AS answer",
    );
    for m in &bed.cluster.members[1..] {
        bed.cluster.wait_until(
            Duration::from_secs(30),
            "the new write to reach the replica",
            |_| {
                m.try_client("postgres")
                    .and_then(|mut c| c.query_one("SELECT answer FROM after_upgrade", &[]))
                    .is_ok()
            },
        );
    }

    // A switchover to a replica works.
    bed.cluster.switchover("m1", "m2");
}

/// A failure before the leader's point of no return puts the cluster back:
/// m2's replay is held up (so it cannot replay the leader's shutdown
/// checkpoint) and the wait for it times out. Every member is back on the
/// old major under Patroni, resumed, the store unchanged, no new data
/// directory left; once m2 replays again, the cluster is healthy and takes
/// writes, and the upgrade, run again, goes through.
#[test]
fn a_failure_before_the_point_of_no_return_puts_the_cluster_back() {
    let Some(bed) = bed() else { return };
    let before = bed.world();
    let m2 = bed.cluster.member("m2");
    // m2's replay waits behind a lock its own query holds (Patroni would
    // resume a paused replay by itself).
    let mut holder = m2.client("postgres");
    holder
        .batch_execute("BEGIN; LOCK TABLE accounts IN ACCESS SHARE MODE")
        .unwrap();
    bed.cluster.members[0].sql("postgres", "ALTER TABLE accounts ADD COLUMN note text");

    let mut extra = patroni_templates(&bed);
    extra.extend(["--replay-timeout".to_string(), "3".to_string()]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let run = bed.run(&extra);
    assert_eq!(run.status, 3, "{}\n{}", run.stdout, run.stderr);
    super::json_schema::validate(&run.events);
    let error = run.error();
    assert_eq!(error["code"], "patroni_failed", "{error}");
    assert!(error["message"].as_str().unwrap().contains("m2"), "{error}");
    for m in run.summary()["patroni"]["members"].as_array().unwrap() {
        assert_eq!(m["result"], "put_back", "{m}");
    }
    assert!(run
        .events
        .iter()
        .any(|e| e["event"] == "step_end" && e["step"] == "put-back" && e["status"] == "ok"));

    // Back as it was: old major, not paused, the store unchanged.
    assert_eq!(bed.world(), before);
    drop(holder);
    bed.cluster.wait_healthy(Duration::from_secs(120));
    assert_eq!(bed.cluster.leader().as_deref(), Some("m1"));
    for m in &bed.cluster.members {
        let status = m.status().unwrap();
        assert_eq!(
            status["server_version"].as_u64().unwrap() / 10000,
            OLD as u64,
            "{status}"
        );
        assert!(!status["pause"].as_bool().unwrap_or(false), "{status}");
    }
    bed.cluster.members[0].sql("postgres", "INSERT INTO accounts VALUES (100001, 1)");
    for m in &bed.cluster.members[1..] {
        bed.cluster.wait_until(
            Duration::from_secs(30),
            "the write to reach the replica",
            |_| {
                m.try_client("postgres")
                    .and_then(|mut c| c.query_one("SELECT 1 FROM accounts WHERE id = 100001", &[]))
                    .is_ok()
            },
        );
    }

    // Run again: it goes through.
    let extra = patroni_templates(&bed);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let run = bed.run(&extra);
    assert_eq!(run.status, 0, "{}\n{}", run.stdout, run.stderr);
    bed.cluster.wait_healthy(Duration::from_secs(60));
    for m in &bed.cluster.members {
        let status = m.status().unwrap();
        assert_eq!(
            status["server_version"].as_u64().unwrap() / 10000,
            NEW as u64,
            "{status}"
        );
    }
}

impl Bed {
    /// pg-migrate patroni with the member scripts as Patroni's service
    /// commands, `extra` flags and environment.
    fn run_with(&self, extra: &[&str], env: &[(&str, &str)]) -> Run {
        pgm_testkit::finish(self.command_with(extra, env).output().unwrap())
    }

    fn command_with(&self, extra: &[&str], env: &[(&str, &str)]) -> std::process::Command {
        let mut args = self.args(&[]);
        args.extend(patroni_templates(self).into_iter().map(OsString::from));
        args.extend(extra.iter().map(OsString::from));
        let mut command = pgm_testkit::as_test_user(&self.bin);
        command
            .current_dir(self.sandbox.path())
            .args(&args)
            .env_remove("PGBINNEW");
        for (k, v) in env {
            command.env(k, v);
        }
        command
    }

    fn assert_on(&self, major: u32) {
        self.cluster.wait_healthy(Duration::from_secs(120));
        assert_eq!(self.cluster.leader().as_deref(), Some("m1"));
        for m in &self.cluster.members {
            let status = m.status().unwrap();
            assert_eq!(
                status["server_version"].as_u64().unwrap() / 10000,
                major as u64,
                "{status}"
            );
            assert!(!status["pause"].as_bool().unwrap_or(false), "{status}");
        }
    }
}

/// Killed after the leader stopped (before its upgrade): the cluster is
/// left paused, every Patroni stopped, the leader down. A second run is
/// refused (unfinished_upgrade). The operator stops a replica with
/// -m immediate meanwhile. --resume puts everything back on the old major,
/// resumed; a run after that goes through.
#[test]
fn killed_before_the_point_of_no_return_resume_puts_the_cluster_back() {
    let Some(bed) = bed() else { return };
    let before = bed.world();
    let run = bed.run_with(
        &[],
        &[("PG_MIGRATE_TEST_KILL_AT", "patroni:leader-stopped")],
    );
    assert_ne!(run.status, 0, "{}", run.stdout);
    assert!(
        run.events.iter().all(|e| e["event"] != "summary"),
        "it was killed: {}",
        run.stdout
    );
    assert!(
        bed.cluster.members.iter().all(|m| m.status().is_none()),
        "every Patroni is stopped"
    );

    let again = bed.run_with(&[], &[]);
    assert_eq!(again.status, 2, "{}", again.stdout);
    assert_eq!(again.error()["code"], "unfinished_upgrade");

    // Meanwhile: m3's server stopped the hard way.
    let m3 = bed.cluster.member("m3");
    pgm_testkit::run_ok(
        pgm_testkit::as_test_user(bed.cluster.bindir.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&m3.datadir),
    );

    let resumed = bed.run_with(&["--resume"], &[]);
    assert_eq!(resumed.status, 0, "{}\n{}", resumed.stdout, resumed.stderr);
    super::json_schema::validate(&resumed.events);
    assert_eq!(resumed.summary()["result"], "reverted");
    for m in resumed.summary()["patroni"]["members"].as_array().unwrap() {
        assert_eq!(m["result"], "put_back", "{m}");
    }
    bed.assert_on(OLD);
    assert_eq!(bed.world(), before);

    let run = bed.run_with(&[], &[]);
    assert_eq!(run.status, 0, "{}\n{}", run.stdout, run.stderr);
    bed.assert_on(NEW);
}

/// Killed, with its child, in the middle of the leader's upgrade (after
/// the dump, before its point of no return). Meanwhile the operator brings
/// the service back by hand: the old leader started with pg_ctl and
/// written to, and a replica started too. --resume, from a directory the
/// operator cannot write, finds the leader's upgrade cannot be finished
/// (its old cluster ran since), reverts and removes it, and puts the
/// cluster back on the old major with every row written meanwhile on all
/// three; a run after that upgrades with those rows.
#[test]
fn killed_mid_leader_upgrade_then_old_leader_used_resume_puts_back_keeping_the_writes() {
    use std::os::unix::process::CommandExt as _;
    let Some(bed) = bed() else { return };
    let leader = &bed.cluster.members[0];
    let pause = bed.sandbox.path().join("pause");
    let mut child = bed
        .command_with(
            &[],
            &[
                ("PG_MIGRATE_TEST_PAUSE_AT", "after:dump-old"),
                ("PG_MIGRATE_TEST_PAUSE_FILE", pause.to_str().unwrap()),
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !pause.exists() {
        assert!(
            std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the leader's upgrade never reached its dump"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let new_datadir = leader.datadir.with_extension(NEW.to_string());
    assert!(
        new_datadir.join("pg_migrate.d").exists(),
        "the leader's upgrade began"
    );
    // The whole operation killed: pg-migrate patroni and its upgrade child.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    std::fs::remove_file(&pause).unwrap();

    // The operator: the old leader and m2 started by hand (on the port in
    // their Patroni configuration: Patroni gives it on the command line),
    // writes made.
    for m in [leader, bed.cluster.member("m2")] {
        pgm_testkit::run_ok(
            pgm_testkit::as_test_user(bed.cluster.bindir.join("pg_ctl"))
                .args(["start", "-w", "-D"])
                .arg(&m.datadir)
                .arg("-o")
                .arg(format!("-p {}", m.pg_port))
                .arg("-l")
                .arg(m.datadir.with_extension("by-hand.log")),
        );
    }
    leader.sql(
        "postgres",
        "INSERT INTO accounts SELECT g, 7 FROM generate_series(100001, 100500) g",
    );
    let rows = |m: &pgm_testkit::ha::Member| -> i64 {
        m.client("postgres")
            .query_one("SELECT count(*) FROM accounts", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(rows(leader), 2500);

    // --resume from a directory the test user cannot write.
    let unwritable = bed.sandbox.path().join("unwritable");
    std::fs::create_dir(&unwritable).unwrap();
    std::fs::set_permissions(
        &unwritable,
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    let resumed = pgm_testkit::finish(
        bed.command_with(&["--resume"], &[])
            .current_dir(&unwritable)
            .output()
            .unwrap(),
    );
    assert_eq!(resumed.status, 0, "{}\n{}", resumed.stdout, resumed.stderr);
    super::json_schema::validate(&resumed.events);
    assert_eq!(
        resumed.summary()["result"],
        "reverted",
        "{}",
        resumed.stdout
    );
    assert!(!new_datadir.exists(), "the begun upgrade is removed");
    bed.assert_on(OLD);
    for m in &bed.cluster.members {
        bed.cluster
            .wait_until(Duration::from_secs(60), "every row on every member", |_| {
                m.try_client("postgres")
                    .and_then(|mut c| c.query_one("SELECT count(*) FROM accounts", &[]))
                    .is_ok_and(|row| row.get::<_, i64>(0) == 2500)
            });
    }

    let run = bed.run_with(&[], &[]);
    assert_eq!(run.status, 0, "{}\n{}", run.stdout, run.stderr);
    bed.assert_on(NEW);
    for m in &bed.cluster.members {
        assert_eq!(rows(m), 2500, "{}", m.name);
    }
}

/// Killed right after the leader's upgrade (past its point of no return),
/// then the resume itself killed once the new leader runs: a second
/// --resume finishes the cluster's upgrade, every member on the new major
/// with the leader's rows, the store's initialize key the new identifier.
#[test]
fn killed_after_the_point_of_no_return_resume_finishes_even_when_killed_itself() {
    let Some(bed) = bed() else { return };
    let old_sysid = bed.cluster.etcd.get("/service/pgm/initialize").unwrap();
    let run = bed.run_with(
        &[],
        &[("PG_MIGRATE_TEST_KILL_AT", "patroni:leader-upgraded")],
    );
    assert!(
        run.events.iter().all(|e| e["event"] != "summary"),
        "it was killed: {}",
        run.stdout
    );

    let resumed = bed.run_with(
        &["--resume"],
        &[("PG_MIGRATE_TEST_KILL_AT", "patroni:leader-started")],
    );
    assert!(
        resumed.events.iter().all(|e| e["event"] != "summary"),
        "it was killed: {}",
        resumed.stdout
    );

    let resumed = bed.run_with(&["--resume"], &[]);
    assert_eq!(resumed.status, 0, "{}\n{}", resumed.stdout, resumed.stderr);
    super::json_schema::validate(&resumed.events);
    for m in resumed.summary()["patroni"]["members"].as_array().unwrap() {
        assert_eq!(m["result"], "upgraded", "{m}");
    }
    bed.assert_on(NEW);
    let new_sysid = bed.cluster.etcd.get("/service/pgm/initialize").unwrap();
    assert_ne!(new_sysid, old_sysid);
    let leader = &bed.cluster.members[0];
    let rows = |m: &pgm_testkit::ha::Member| -> i64 {
        m.client("postgres")
            .query_one("SELECT count(*) + sum(balance) FROM accounts", &[])
            .unwrap()
            .get(0)
    };
    let want = rows(leader);
    for m in &bed.cluster.members[1..] {
        assert_eq!(rows(m), want, "{}", m.name);
    }
    let again = bed.run_with(&["--resume"], &[]);
    assert_eq!(again.status, 2, "nothing left to resume: {}", again.stdout);
    assert_eq!(again.error()["code"], "no_journal");
}

/// A replica whose upgrade fails half-way (m3's `pg-migrate standby` killed
/// after it linked its relation files): the leader and m2 are upgraded, m3
/// is left stopped and reported with the command that rebuilds it (exit 4,
/// its Patroni not started, never running on either major), and --resume
/// finishes m3's own upgrade from its journal.
#[test]
fn a_replica_that_fails_is_left_stopped_and_resume_finishes_it() {
    let Some(bed) = bed() else { return };
    // m3's "host" runs pg-migrate with a fault point armed.
    let script = bed.sandbox.path().join("remote-m3-fails.sh");
    std::fs::write(
        &script,
        "name=$1; shift\n\
         if [ \"$name\" = m3 ]; then export PG_MIGRATE_TEST_KILL_AT=standby:link-relations; fi\n\
         exec sh -c \"$1\"\n",
    )
    .unwrap();
    pgm_testkit::chown_to_test_user(&script);
    let remote = format!("sh {} {{name}}", script.display());
    let run = {
        let mut args = bed.args(&[]);
        let at = args.iter().position(|a| a == "--remote").unwrap();
        args[at + 1] = remote.into();
        args.extend(patroni_templates(&bed).into_iter().map(OsString::from));
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        pg_migrate(&bed.bin, bed.sandbox.path(), &refs)
    };
    assert_eq!(run.status, 4, "{}\n{}", run.stdout, run.stderr);
    super::json_schema::validate(&run.events);
    assert_eq!(run.error()["code"], "patroni_failed");
    let members = run.summary()["patroni"]["members"]
        .as_array()
        .unwrap()
        .clone();
    let result_of = |name: &str| members.iter().find(|m| m["name"] == name).unwrap().clone();
    assert_eq!(result_of("m1")["result"], "upgraded");
    assert_eq!(result_of("m2")["result"], "upgraded");
    let m3 = result_of("m3");
    assert_eq!(m3["result"], "left_stopped", "{m3}");
    assert!(
        m3["reinit"].as_str().unwrap().contains("patronictl"),
        "{m3}"
    );
    let m3_member = bed.cluster.member("m3");
    assert!(m3_member.status().is_none(), "m3's Patroni must not run");
    assert!(
        m3_member.try_client("postgres").is_err(),
        "m3's server must not run"
    );

    let resumed = bed.run_with(&["--resume"], &[]);
    assert_eq!(resumed.status, 0, "{}\n{}", resumed.stdout, resumed.stderr);
    for m in resumed.summary()["patroni"]["members"].as_array().unwrap() {
        assert_eq!(m["result"], "upgraded", "{m}");
    }
    bed.assert_on(NEW);
    let count = |m: &pgm_testkit::ha::Member| -> i64 {
        m.client("postgres")
            .query_one("SELECT count(*) FROM accounts", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(count(m3_member), count(&bed.cluster.members[0]));
}

/// --copy: the leader's relation files are copied, so its old cluster is
/// left whole (pg_control in place, not renamed) and startable; the
/// replicas still come from their own files with the kit. Every member on
/// the new major with the leader's rows, with -j 2.
#[test]
fn upgrades_with_copy_leaving_the_old_leader_whole() {
    let Some(bed) = bed() else { return };
    let leader = &bed.cluster.members[0];
    let run = bed.run_with(&["--copy", "-j", "2"], &[]);
    assert_eq!(run.status, 0, "{}\n{}", run.stdout, run.stderr);
    super::json_schema::validate(&run.events);
    bed.assert_on(NEW);
    let sum = |m: &pgm_testkit::ha::Member| -> i64 {
        m.client("postgres")
            .query_one("SELECT count(*) + sum(balance) FROM accounts", &[])
            .unwrap()
            .get(0)
    };
    let want = sum(leader);
    assert_eq!(want, 2000 + (1..=2000).map(|g| g * 10).sum::<i64>());
    for m in &bed.cluster.members[1..] {
        bed.cluster
            .wait_until(Duration::from_secs(60), "the replica's rows", |_| {
                sum(m) == want
            });
    }
    // The old leader's cluster: whole, and it starts (on its own port,
    // privately) with the rows it had.
    assert!(leader.datadir.join("global/pg_control").is_file());
    let sockdir = bed.sandbox.mkdir("old-leader");
    let mut old = pgm_testkit::Cluster::attached(
        OLD,
        bed.cluster.bindir.clone(),
        leader.datadir.clone(),
        sockdir,
        pgm_testkit::ha::free_ports(1)[0],
    );
    old.start();
    let count: i64 = old
        .client("postgres")
        .query_one("SELECT count(*) FROM accounts", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, 2000);
    old.stop();
}

/// A cluster that has been through switchovers (timeline 3, with Patroni's
/// history of them in the store) upgrades too. The new cluster starts on
/// timeline 1 (as pg_upgrade's does), so the store's history of the old
/// timelines is removed (Patroni would take every member for one behind the
/// cluster's timeline); a switchover afterwards works and its history is
/// the new cluster's.
#[test]
fn a_cluster_on_a_later_timeline_upgrades() {
    let Some(bed) = bed() else { return };
    for (from, to) in [("m1", "m2"), ("m2", "m1")] {
        bed.cluster.switchover(from, to);
    }
    let timeline = |bed: &Bed| {
        bed.cluster.members[0].status().unwrap()["timeline"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(timeline(&bed), 3);
    assert!(bed.cluster.etcd.get("/service/pgm/history").is_some());
    let run = bed.run_with(&[], &[]);
    assert_eq!(run.status, 0, "{}\n{}", run.stdout, run.stderr);
    bed.assert_on(NEW);
    assert_eq!(timeline(&bed), 1);
    assert_eq!(bed.cluster.etcd.get("/service/pgm/history"), None);
    bed.cluster.switchover("m1", "m3");
    let history = bed.cluster.etcd.get("/service/pgm/history").unwrap();
    assert!(history.starts_with("[[1,"), "{history}");
}
