//! Standbys upgraded in place from their own files: a primary with two
//! streaming standbys (one on a slot, each with its tablespace elsewhere),
//! the primary upgraded, a kit made, each standby upgraded with it, then
//! the proof: both stream from the new primary, hold its rows (written
//! before and after), pass amcheck, and one promoted takes writes. Also
//! every refusal before a change, and kills, resume and revert.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::proof::{contents_of, load_rich_into, round_floats_for, upgrade};
use crate::support::*;

const OLD: u32 = 16;
const NEW: u32 = 18;

/// Waits up to a minute for `ready`.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn checkpoint(datadir: &Path) -> u64 {
    pgm_cluster::ControlFile::read(datadir)
        .unwrap()
        .checkpoint_lsn
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Waits until the standby has replayed up to `lsn`.
fn replayed(standby: &Cluster, lsn: &str) {
    let log = std::fs::read_to_string(standby.datadir.with_extension("log")).unwrap_or_default();
    let tail: String = log.lines().rev().take(15).collect::<Vec<_>>().join("\n");
    wait_for(
        &format!(
            "{} to replay {lsn}; its log ends (reversed):\n{tail}",
            standby.datadir.display()
        ),
        || {
            standby
                .client("postgres")
                .query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    &[&lsn],
                )
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
        },
    );
}

fn current_lsn(primary: &Cluster) -> String {
    primary
        .client("postgres")
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0)
}

/// Stops the primary cleanly and each standby once it replayed the
/// primary's shutdown checkpoint: the documented state for an upgrade.
fn shut_down_in_order(primary: &mut Cluster, standbys: &mut [&mut Cluster]) {
    primary.stop();
    let last = lsn_text(checkpoint(&primary.datadir));
    for standby in standbys.iter_mut() {
        replayed(standby, &last);
        standby.stop();
        assert_eq!(
            checkpoint(&standby.datadir),
            checkpoint(&primary.datadir),
            "{} stopped at the primary's shutdown checkpoint",
            standby.datadir.display()
        );
    }
}

/// A primary of `OLD` (or another old major) with the rich fixture (its tablespace in `tblspc`),
/// a slot for the first standby, and two standbys streaming from it.
struct Bed {
    pair: Pair,
    standbys: Vec<Cluster>,
    tablespace: PathBuf,
}

fn bed(rich: bool) -> Option<Bed> {
    bed_of(OLD, rich)
}

fn bed_of(old: u32, rich: bool) -> Option<Bed> {
    let mut pair = Pair::new(old, NEW)?;
    pair.old.start();
    let tablespace = pair.sandbox.mkdir("tblspc");
    if rich {
        load_rich_into(&pair.old, &pair.new.bindir, &tablespace);
    } else {
        pair.old.sql(
            "postgres",
            &format!("CREATE TABLESPACE ts LOCATION '{}'", tablespace.display()),
        );
        pair.old.sql("postgres", "CREATE DATABASE appdb");
        pair.old.sql(
            "appdb",
            "CREATE TABLE t (id int PRIMARY KEY, v text) TABLESPACE ts;
             INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5000) g;
             CREATE TABLE u (id int PRIMARY KEY, v text);
             INSERT INTO u SELECT g, 'u' || g FROM generate_series(1, 3000) g;
             CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 100) g;",
        );
    }
    pair.old.sql(
        "postgres",
        "SELECT pg_create_physical_replication_slot('standby_one')",
    );
    let mut standbys = Vec::new();
    for (name, slot) in [("standby1", Some("standby_one")), ("standby2", None)] {
        let mapped = pair.sandbox.mkdir(&format!("tblspc_{name}"));
        let mut standby =
            pair.sandbox
                .standby(&pair.old, name, slot, &[(tablespace.clone(), mapped)]);
        standby.start();
        standbys.push(standby);
    }
    // Both stream before any test goes on: a primary stopped while a
    // standby still connects refuses it ("shutting down"), and that standby
    // never receives the shutdown checkpoint.
    wait_for("both standbys to stream from the primary", || {
        pair.old
            .client("postgres")
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .map(|r| r.get::<_, i64>(0) == 2)
            .unwrap_or(false)
    });
    Some(Bed {
        pair,
        standbys,
        tablespace,
    })
}

/// Writes in flight before the shutdown: committed rows, and an aborted
/// transaction whose rows must never appear.
fn last_writes(primary: &Cluster) {
    let mut client = primary.client("appdb");
    let table = if client
        .query_opt("SELECT 1 FROM pg_class WHERE relname = 't'", &[])
        .unwrap()
        .is_some()
    {
        "t"
    } else {
        "app.customers"
    };
    if table == "t" {
        client
            .batch_execute("INSERT INTO t SELECT g, 'late' FROM generate_series(100001, 100100) g")
            .unwrap();
        client
            .batch_execute("BEGIN; INSERT INTO t VALUES (-1, 'aborted'); ROLLBACK;")
            .unwrap();
    } else {
        client
            .batch_execute(
                "INSERT INTO app.customers (email, name) VALUES ('late@example.com', 'Late')",
            )
            .unwrap();
        client
            .batch_execute("BEGIN; INSERT INTO app.customers (email, name) VALUES ('aborted@example.com', 'Aborted'); ROLLBACK;")
            .unwrap();
    }
}

fn run_in(bin: &Path, cwd: &Path, args: &[OsString]) -> Run {
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
    pgm_testkit::pg_migrate(bin, cwd, &refs)
}

fn kit_args(pair: &Pair, kit: &Path) -> Vec<OsString> {
    vec![
        "standby-kit".into(),
        "-D".into(),
        pair.new.datadir.clone().into(),
        "-o".into(),
        kit.into(),
        "--json".into(),
    ]
}

fn standby_args(pair: &Pair, old: &Path, new: &Path, kit: &str, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "standby".into(),
        "-b".into(),
        pair.old.bindir.clone().into(),
        "-B".into(),
        pair.new.bindir.clone().into(),
        "-d".into(),
        old.into(),
        "-D".into(),
        new.into(),
        "--kit".into(),
        kit.into(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args
}

/// `pg-migrate standby … --kit -` with the kit on stdin.
fn standby_from_stdin(pair: &Pair, old: &Path, new: &Path, kit: &Path) -> Run {
    let output = as_test_user(&pair.bin)
        .current_dir(pair.sandbox.path())
        .args(standby_args(pair, old, new, "-", &[]))
        .stdin(Stdio::from(std::fs::File::open(kit).unwrap()))
        .output()
        .unwrap();
    pgm_testkit::finish(output)
}

/// The new primary, started where the old one listened (its standbys'
/// primary_conninfo names that socket and port).
fn start_new_primary(pair: &mut Pair) {
    pair.new.port = pair.old.port;
    pair.new.sockdir = pair.old.sockdir.clone();
    pair.new.start();
}

/// amcheck on a standby: every btree index (with every heap tuple looked
/// up) and every table's heap, read-only as a standby allows.
fn amcheck_standby(standby: &Cluster, database: &str) {
    let mut client = standby.client(database);
    let indexes: Vec<String> = client
        .query(
            "SELECT c.oid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               JOIN pg_am a ON a.oid = c.relam
              WHERE a.amname = 'btree' AND c.relkind = 'i' AND c.relpersistence = 'p' AND i.indisvalid ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(indexes.len() > 5, "{database}: {indexes:?}");
    for index in &indexes {
        client
            .query("SELECT bt_index_check($1::text::regclass, true)", &[index])
            .unwrap_or_else(|e| panic!("amcheck {index}: {}", pgm_cluster::describe_pg_error(&e)));
    }
    let problems: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class c, LATERAL verify_heapam(c.oid) v
              WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence = 'p'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(problems, 0, "verify_heapam found corruption on {database}");
}

/// The kit's manifest and the names of its files.
fn open_kit(kit: &Path) -> (serde_json::Value, Vec<String>) {
    let decoder = zstd::stream::read::Decoder::new(std::fs::File::open(kit).unwrap()).unwrap();
    let mut archive = tar::Archive::new(decoder);
    let mut manifest = serde_json::Value::Null;
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        if name == "manifest.json" {
            manifest = serde_json::from_reader(&mut entry).unwrap();
        } else {
            names.push(name);
        }
    }
    (manifest, names)
}

/// None of the relation files the map names is in the kit, and every
/// table's file is in the map: the kit carries no user data.
fn assert_no_user_data(kit: &Path, new_datadir: &Path) {
    let (manifest, names) = open_kit(kit);
    let mapped: std::collections::HashSet<String> = manifest["relations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let new = &r["new"];
            match new["tablespace"].as_u64() {
                None => format!("data/{}", new["path"].as_str().unwrap()),
                Some(oid) => format!("tblspc/{oid}/{}", new["path"].as_str().unwrap()),
            }
        })
        .collect();
    assert!(!mapped.is_empty());
    for name in &names {
        assert!(
            !mapped.contains(name),
            "the kit holds {name}, a relation file of the map"
        );
    }
    assert!(
        names.iter().any(|n| n == "data/global/pg_control"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("data/pg_xact/")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("data/pg_migrate.d")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("data/pg_replslot/")),
        "the primary's slots stay on the primary"
    );
    // The biggest user relation file is in the map, not the kit.
    let biggest = walkdir::WalkDir::new(new_datadir.join("base"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let base = name.split(['.', '_']).next().unwrap_or("");
            base.parse::<u32>().is_ok_and(|n| n >= 16384)
        })
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap();
    let relative = biggest.path().strip_prefix(new_datadir).unwrap();
    assert!(
        mapped.contains(&format!("data/{}", relative.display())),
        "{} is the biggest file and not in the map",
        relative.display()
    );
}

fn streaming(primary: &Cluster) -> i64 {
    primary
        .client("postgres")
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            &[],
        )
        .unwrap()
        .get(0)
}

fn standbys_upgraded_in_place(old: u32, mode: &str) {
    let Some(Bed {
        mut pair,
        standbys,
        tablespace: _,
    }) = bed_of(old, true)
    else {
        return;
    };
    round_floats_for(old);
    let [mut s1, mut s2]: [Cluster; 2] = standbys.try_into().ok().unwrap();
    // A setting the old major knows and 18 does not: carried, then left out.
    let conf = s1.datadir.join("postgresql.conf");
    let text = std::fs::read_to_string(&conf).unwrap() + "\nold_snapshot_threshold = -1\n";
    std::fs::write(&conf, text).unwrap();
    const CONNINFO_SECRET: &str = "s3cret-conninfo-pw";
    if old < 12 {
        // A password in primary_conninfo (trust ignores it): carried, and
        // never shown.
        let recovery = s1.datadir.join("recovery.conf");
        let text = std::fs::read_to_string(&recovery).unwrap().replace(
            "application_name=standby1'",
            &format!("application_name=standby1 password={CONNINFO_SECRET}'"),
        );
        assert!(text.contains(CONNINFO_SECRET), "{text}");
        std::fs::write(&recovery, text).unwrap();
        // recovery.conf's own settings: one renamed and then removed by
        // 16, one that names the old cluster's history.
        let recovery = s2.datadir.join("recovery.conf");
        let text = std::fs::read_to_string(&recovery).unwrap()
            + "trigger_file = '/nonexistent/promote'\nrecovery_target_timeline = 'latest'\n";
        std::fs::write(&recovery, text).unwrap();
    }
    last_writes(&pair.old);
    // amcheck travels to the standbys as any DDL does.
    pair.old.sql("appdb", "CREATE EXTENSION amcheck");
    let lsn = current_lsn(&pair.old);
    replayed(&s1, &lsn);
    replayed(&s2, &lsn);
    assert_eq!(streaming(&pair.old), 2);
    let before = contents_of(&pair.old, true);
    shut_down_in_order(&mut pair.old, &mut [&mut s1, &mut s2]);

    let kit = pair.sandbox.path().join("standbys.kit");
    let made = if mode == "--copy" {
        // The kit written by the upgrade itself, before a step after it
        // (--analyze) starts the new cluster. The slotless standby needs
        // the WAL written since kept some other way.
        let conf = pair.new.datadir.join("postgresql.conf");
        let text = std::fs::read_to_string(&conf).unwrap() + "\nwal_keep_size = 256MB\n";
        std::fs::write(&conf, text).unwrap();
        let run = upgrade(
            &pair,
            &[mode, "--analyze", "--standby-kit", kit.to_str().unwrap()],
        );
        let next = run.summary()["next_steps"].to_string();
        assert!(next.contains("--kit"), "{next}");
        assert!(!next.contains("pg-migrate standby-kit"), "{next}");
        run
    } else {
        let run = upgrade(&pair, &[mode]);
        assert!(
            run.summary()["next_steps"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s.as_str().unwrap().contains("standby_one")),
            "the next steps name the slot kept for the standbys"
        );
        let made = pair.run(&kit_args(&pair, &kit));
        assert_eq!(made.status, 0, "{}\n{}", made.stderr, made.stdout);
        crate::json_schema::validate(&made.events);
        made
    };
    let summary = &made.summary()["kit"];
    assert_eq!(summary["slots"], serde_json::json!(["standby_one"]));
    assert!(
        summary["relation_files"].as_u64().unwrap() > 50,
        "{summary}"
    );
    assert_no_user_data(&kit, &pair.new.datadir);

    // The primary goes back into service at once; its standbys follow later.
    start_new_primary(&mut pair);
    let slots: Vec<String> = pair
        .new
        .client("postgres")
        .query("SELECT slot_name::text FROM pg_replication_slots", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(slots, vec!["standby_one".to_string()]);
    pair.new.sql(
        "appdb",
        "INSERT INTO app.customers (email, name) VALUES ('after-primary-start@example.com', 'P')",
    );

    let new1 = pair.sandbox.path().join("standby1_new");
    let new2 = pair.sandbox.path().join("standby2_new");
    let checked = pair.run(&standby_args(
        &pair,
        &s1.datadir,
        &new1,
        kit.to_str().unwrap(),
        &["--check"],
    ));
    assert_eq!(checked.status, 0, "{}\n{}", checked.stderr, checked.stdout);
    crate::json_schema::validate(&checked.events);
    assert!(!new1.exists(), "--check wrote nothing");
    let documented = crate::json_schema::documented_codes("docs/checks.md", "## Standby checks");
    for id in &documented {
        assert_eq!(checked.check(id)["status"], "pass", "{id}");
    }

    let one = pair.run(&standby_args(
        &pair,
        &s1.datadir,
        &new1,
        kit.to_str().unwrap(),
        &[],
    ));
    assert_eq!(one.status, 0, "{}\n{}", one.stderr, one.stdout);
    crate::json_schema::validate(&one.events);
    assert!(
        one.events_named("config_change")
            .iter()
            .any(|e| e["setting"] == "old_snapshot_threshold" && e["action"] == "removed"),
        "{}",
        one.stdout
    );
    let counts = &one.summary()["standby"];
    assert!(counts["linked"].as_u64().unwrap() > 50, "{counts}");
    assert!(
        counts["unlogged_left_out"].as_u64().unwrap() >= 1,
        "{counts}"
    );
    assert!(
        !s1.datadir.join("global/pg_control").exists(),
        "the old standby is disabled"
    );
    let two = if old < 12 {
        // Killed after its configuration was written, before that was
        // journaled: the resume writes it again, recovery.conf's block once.
        killed_at(
            &pair,
            &s2.datadir,
            &new2,
            &kit,
            "standby:configure:unrecorded",
        );
        let resumed = pair.run(&[
            "resume".into(),
            "-D".into(),
            new2.clone().into(),
            "--json".into(),
        ]);
        let auto = std::fs::read_to_string(new2.join("postgresql.auto.conf")).unwrap();
        assert_eq!(
            auto.matches("carried from the old standby's recovery.conf")
                .count(),
            1,
            "{auto}"
        );
        resumed
    } else {
        standby_from_stdin(&pair, &s2.datadir, &new2, &kit)
    };
    assert_eq!(two.status, 0, "{}\n{}", two.stderr, two.stdout);
    crate::json_schema::validate(&two.events);
    if old < 12 {
        let from_recovery_conf = |run: &Run| -> Vec<String> {
            run.events_named("config_change")
                .iter()
                .filter(|e| e["file"] == "recovery.conf")
                .map(|e| {
                    format!(
                        "{} {}",
                        e["setting"].as_str().unwrap(),
                        e["action"].as_str().unwrap()
                    )
                })
                .collect()
        };
        let one_changes = from_recovery_conf(&one);
        for expected in [
            "standby_mode moved",
            "primary_conninfo moved",
            "primary_slot_name moved",
        ] {
            assert!(
                one_changes.iter().any(|c| c == expected),
                "{expected}: {one_changes:?}"
            );
        }
        let two_changes = from_recovery_conf(&two);
        for expected in ["trigger_file removed", "recovery_target_timeline moved"] {
            assert!(
                two_changes.iter().any(|c| c == expected),
                "{expected}: {two_changes:?}"
            );
        }
        for new in [&new1, &new2] {
            assert!(
                !new.join("recovery.conf").exists(),
                "a 12+ server refuses it"
            );
            assert!(new.join("standby.signal").exists());
        }
        let auto = std::fs::read_to_string(new1.join("postgresql.auto.conf")).unwrap();
        assert!(auto.contains("primary_slot_name = 'standby_one'"), "{auto}");
        assert!(
            auto.contains(CONNINFO_SECRET),
            "the password is carried: {auto}"
        );
        assert!(
            !one.stdout.contains(CONNINFO_SECRET) && !one.stderr.contains(CONNINFO_SECRET),
            "the password is shown"
        );
        assert!(one.stdout.contains("password=…"), "{}", one.stdout);
    }

    let mut n1 = pair.sandbox.existing("standby1_new", NEW, &new1);
    let mut n2 = pair.sandbox.existing("standby2_new", NEW, &new2);
    n1.start();
    n2.start();
    wait_for("both standbys to stream from the new primary", || {
        streaming(&pair.new) == 2
    });
    let active: bool = pair
        .new
        .client("postgres")
        .query_one(
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'standby_one'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(active, "standby 1 streams on its slot");
    // amcheck made on an old major is brought to the new one's version
    // (verify_heapam came with 14); the standbys follow.
    pair.new.sql("appdb", "ALTER EXTENSION amcheck UPDATE");
    pair.new.sql(
        "appdb",
        "INSERT INTO app.customers (email, name) VALUES ('after-standbys@example.com', 'S');
         CREATE TABLE app.made_after AS SELECT g FROM generate_series(1, 1000) g;",
    );
    let lsn = current_lsn(&pair.new);
    replayed(&n1, &lsn);
    replayed(&n2, &lsn);
    let primary = contents_of(&pair.new, true);
    assert_eq!(primary.len(), before.len() + 1, "one table made after");
    for (name, standby) in [("standby 1", &n1), ("standby 2", &n2)] {
        let theirs = contents_of(standby, true);
        for (key, value) in &primary {
            let their = theirs
                .get(key)
                .unwrap_or_else(|| panic!("{name} lacks {key}"));
            // A standby shows a sequence as last logged, which runs up to
            // 32 values ahead of the primary's (as on any standby).
            let sequence = |v: &str| {
                let (n, called) = v.split_once(' ')?;
                (called == "true" || called == "false").then(|| n.parse::<i64>().ok())?
            };
            match (sequence(value), sequence(their)) {
                (Some(ours), Some(theirs)) => {
                    assert!(
                        (ours..=ours + 32).contains(&theirs),
                        "{name}: {key}: {value} / {their}"
                    )
                }
                _ => assert_eq!(value, their, "{name}: {key}"),
            }
        }
        amcheck_standby(standby, "appdb");
    }
    let late: i64 = n1
        .client("appdb")
        .query_one(
            "SELECT count(*) FROM app.customers WHERE email IN ('late@example.com', 'after-primary-start@example.com', 'after-standbys@example.com')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(late, 3);
    let aborted: i64 = n2
        .client("appdb")
        .query_one(
            "SELECT count(*) FROM app.customers WHERE email = 'aborted@example.com'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(aborted, 0);

    // A standby promoted afterwards is a primary that takes writes.
    run_ok(
        as_test_user(n2.bindir.join("pg_ctl"))
            .args(["-w", "-D"])
            .arg(&n2.datadir)
            .arg("promote"),
    );
    n2.sql(
        "appdb",
        "INSERT INTO app.customers (email, name) VALUES ('promoted@example.com', 'X')",
    );
    n1.stop();
    n2.stop();
    pair.new.stop();
}

#[test]
fn standbys_upgraded_in_place_after_a_link_upgrade() {
    standbys_upgraded_in_place(OLD, "--link");
}

#[test]
fn standbys_upgraded_in_place_after_a_copy_upgrade() {
    standbys_upgraded_in_place(OLD, "--copy");
}

/// Standbys of 11 and 10, configured by recovery.conf, carried into the
/// new majors' settings and standby.signal.
#[test]
fn standbys_of_11_upgraded_in_place_after_a_link_upgrade() {
    standbys_upgraded_in_place(11, "--link");
}

#[test]
fn standbys_of_10_upgraded_in_place_after_a_copy_upgrade() {
    standbys_upgraded_in_place(10, "--copy");
}

/// Gives a copied data directory a copy of its (one) tablespace, as if on
/// another host: `from` copied to `to`, its pg_tblspc link pointed there.
fn copy_tablespace(datadir: &Path, from: &Path, to: &Path) {
    run_ok(as_test_user("cp").arg("-a").arg(from).arg(to));
    for entry in std::fs::read_dir(datadir.join("pg_tblspc"))
        .unwrap()
        .flatten()
    {
        std::fs::remove_file(entry.path()).unwrap();
        std::os::unix::fs::symlink(to, entry.path()).unwrap();
        run_ok(
            std::process::Command::new("chown")
                .arg("-h")
                .arg(&pgm_testkit::test_user().name)
                .arg(entry.path()),
        );
    }
}

/// One refusal: the check (or, for a kit, the error) named, the old
/// standby byte for byte as before, the new data directory as before.
fn assert_unchanged(old: &Path, old_before: &TreeSnapshot, new: &Path, new_existed: bool) {
    assert_same_tree(old_before, &snapshot(old), "the old standby");
    if new_existed {
        assert!(new.is_dir(), "{} is kept", new.display());
    } else {
        assert!(!new.exists(), "{} was not left behind", new.display());
    }
}

#[test]
fn standbys_that_cannot_follow_are_refused_before_anything_changes() {
    let Some(Bed {
        mut pair,
        standbys,
        tablespace,
    }) = bed(false)
    else {
        return;
    };
    let [mut good, mut early]: [Cluster; 2] = standbys.try_into().ok().unwrap();
    let table_file: String = pair
        .old
        .client("appdb")
        .query_one("SELECT pg_relation_filepath('u')", &[])
        .unwrap()
        .get(0);
    // One standby stops before the primary's last writes and shutdown.
    early.stop();
    last_writes(&pair.old);
    let lsn = current_lsn(&pair.old);
    replayed(&good, &lsn);
    shut_down_in_order(&mut pair.old, &mut [&mut good]);
    // A copy of the stopped primary holds what a standby stopped there does.
    let cold = pair.sandbox.path().join("cold_copy");
    run_ok(
        as_test_user("cp")
            .arg("-a")
            .arg(&pair.old.datadir)
            .arg(&cold),
    );
    // As on another host: its tablespace in a place of its own.
    copy_tablespace(&cold, &tablespace, &pair.sandbox.path().join("tblspc_cold"));
    upgrade(&pair, &["--copy"]);
    let kit = pair.sandbox.path().join("standbys.kit");
    let made = pair.run(&kit_args(&pair, &kit));
    assert_eq!(made.status, 0, "{}\n{}", made.stderr, made.stdout);
    let kit_text = kit.to_str().unwrap().to_string();
    let new = pair.sandbox.path().join("standby_new");
    let good_dir = good.datadir.clone();
    let refused = |old: &Path, new: &Path, kit: &str, extra: &[&str], id: &str, code: &str| {
        let old_before = snapshot(old);
        let existed = new.exists();
        let mut args = standby_args(&pair, old, new, kit, &[]);
        if let ["-B", bindir] = extra {
            args[4] = bindir.into();
        } else {
            args.extend(extra.iter().map(OsString::from));
        }
        let run = pair.run(&args);
        crate::json_schema::validate(&run.events);
        assert_refused(&run, id, code);
        assert_eq!(run.error()["clusters"]["old"], "unchanged");
        assert_unchanged(old, &old_before, new, existed);
    };

    refused(
        &early.datadir,
        &new,
        &kit_text,
        &[],
        "standby-caught-up",
        "standby_behind",
    );
    // The old primary itself (copy mode left it startable) has run since:
    // pg-migrate's own start of it wrote a checkpoint after the one the
    // standbys replayed to.
    refused(
        &pair.old.datadir,
        &new,
        &kit_text,
        &[],
        "standby-caught-up",
        "standby_not_a_standby",
    );
    let checked = pair.run(&standby_args(&pair, &cold, &new, &kit_text, &["--check"]));
    assert_eq!(checked.status, 0, "{}\n{}", checked.stderr, checked.stdout);
    assert!(
        checked.check("standby-caught-up")["message"]
            .as_str()
            .unwrap()
            .contains("a copy of the primary"),
        "{}",
        checked.stdout
    );
    let stranger = pair.sandbox.cluster("stranger", OLD, no_checksums(OLD));
    refused(
        &stranger.datadir,
        &new,
        &kit_text,
        &[],
        "standby-same-cluster",
        "standby_of_another_cluster",
    );
    refused(
        &good_dir,
        &new,
        &kit_text,
        &["-B", pair.old.bindir.to_str().unwrap()],
        "standby-installations",
        "standby_installation_mismatch",
    );

    // Running, then stopped with -m immediate: neither may be upgraded.
    good.start();
    refused(
        &good_dir,
        &new,
        &kit_text,
        &[],
        "standby-stopped",
        "standby_running",
    );
    good.stop_immediate();
    refused(
        &good_dir,
        &new,
        &kit_text,
        &[],
        "standby-caught-up",
        "standby_not_stopped_cleanly",
    );
    // Started again and stopped cleanly, it is as good as before.
    good.start();
    good.stop();
    let before = snapshot(&good_dir);

    // A relation file missing, or of a size the primary's does not explain.
    let file = good_dir.join(&table_file);
    let aside = file.with_extension("aside");
    std::fs::rename(&file, &aside).unwrap();
    refused(
        &good_dir,
        &new,
        &kit_text,
        &[],
        "standby-relation-files",
        "standby_relation_file_missing",
    );
    std::fs::rename(&aside, &file).unwrap();
    let size = std::fs::metadata(&file).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
    }
    refused(
        &good_dir,
        &new,
        &kit_text,
        &[],
        "standby-relation-files",
        "standby_relation_file_size",
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(size)
        .unwrap();

    // Settings below what the new pg_control records: its recovery would pause.
    let conf = good_dir.join("postgresql.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{text}\nmax_connections = 20\n")).unwrap();
    refused(
        &good_dir,
        &new,
        &kit_text,
        &[],
        "standby-settings",
        "standby_settings_too_low",
    );
    std::fs::write(&conf, text).unwrap();

    // A new data directory that is not empty; one on another filesystem.
    let full = pair.sandbox.mkdir("not_empty");
    std::fs::write(full.join("something"), "x").unwrap();
    pgm_testkit::chown_to_test_user(&full.join("something"));
    refused(
        &good_dir,
        &full,
        &kit_text,
        &[],
        "standby-new-datadir",
        "new_datadir_not_empty",
    );
    if Path::new("/dev/shm").is_dir() {
        let elsewhere = Sandbox::new_in(Path::new("/dev/shm"));
        refused(
            &good_dir,
            &elsewhere.path().join("standby_new"),
            &kit_text,
            &[],
            "standby-same-filesystem",
            "standby_cross_device",
        );
    }

    // Not room enough for the kit: a copy of the standby (it is one: same
    // files, same pg_control) on a filesystem with little left.
    let disk = SmallDisk::mount_or_skip(&pair.sandbox.path().join("small"), 1024, "the room check");
    if let Some(disk) = &disk {
        let copy = disk.path.join("standby");
        let copy_location = disk.path.join("tblspc");
        run_ok(as_test_user("cp").arg("-a").arg(&good_dir).arg(&copy));
        let mapped = pair.sandbox.path().join("tblspc_standby1");
        copy_tablespace(&copy, &mapped, &copy_location);
        let stat = nix::sys::statvfs::statvfs(&disk.path).unwrap();
        let used = (stat.blocks() - stat.blocks_free()) as u64 * stat.fragment_size() as u64;
        disk.resize(used / (1 << 20) + 40);
        refused(
            &copy,
            &disk.path.join("standby_new"),
            &kit_text,
            &[],
            "standby-room",
            "standby_no_room",
        );
    }
    drop(disk);

    // A damaged kit, and one cut short: found while it is read, after the
    // checks; what was unpacked is removed again.
    let bytes = std::fs::read(&kit).unwrap();
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    for b in &mut damaged[middle..middle + 64] {
        *b ^= 0x5a;
    }
    for (name, content) in [
        ("damaged.kit", damaged),
        ("short.kit", bytes[..bytes.len() * 2 / 3].to_vec()),
    ] {
        let path = pair.sandbox.path().join(name);
        std::fs::write(&path, content).unwrap();
        pgm_testkit::chown_to_test_user(&path);
        let old_before = snapshot(&good_dir);
        let run = pair.run(&standby_args(
            &pair,
            &good_dir,
            &new,
            path.to_str().unwrap(),
            &[],
        ));
        crate::json_schema::validate(&run.events);
        assert_eq!(run.status, 2, "{name}: {}\n{}", run.stderr, run.stdout);
        assert_eq!(run.error()["code"], "kit_unusable", "{name}");
        assert_eq!(run.error()["clusters"]["old"], "unchanged");
        assert_unchanged(&good_dir, &old_before, &new, false);
    }
    // Not a kit at all.
    let run = pair.run(&standby_args(
        &pair,
        &good_dir,
        &new,
        pair.old.datadir.join("PG_VERSION").to_str().unwrap(),
        &[],
    ));
    assert_eq!(run.status, 2);
    assert_eq!(run.error()["code"], "kit_unusable");

    // A kit made after the new primary ran is refused where it is made.
    pair.new.start();
    pair.new.stop();
    let late = pair.run(&kit_args(&pair, &pair.sandbox.path().join("late.kit")));
    assert_eq!(late.status, 2, "{}", late.stdout);
    assert_eq!(late.error()["code"], "kit_not_possible");
    assert!(
        late.error()["message"]
            .as_str()
            .unwrap()
            .contains("has run"),
        "{}",
        late.stdout
    );
    assert!(!pair.sandbox.path().join("late.kit").exists());

    // After all that, the good standby is as it was and is upgraded.
    assert_same_tree(&before, &snapshot(&good_dir), "the good standby");
    let run = pair.run(&standby_args(&pair, &good_dir, &new, &kit_text, &[]));
    assert_eq!(run.status, 0, "{}\n{}", run.stderr, run.stdout);
}

/// Kills `pg-migrate standby` at `point` (a step just recorded).
fn killed_at(pair: &Pair, old: &Path, new: &Path, kit: &Path, point: &str) {
    let output = as_test_user(&pair.bin)
        .current_dir(pair.sandbox.path())
        .args(standby_args(pair, old, new, kit.to_str().unwrap(), &[]))
        .env("PG_MIGRATE_TEST_KILL_AT", point)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), None, "killed at {point}: {output:?}");
}

#[test]
fn a_standby_killed_mid_way_is_resumed_after_the_primary_moved_on() {
    let Some(Bed {
        mut pair,
        standbys,
        tablespace: _,
    }) = bed(false)
    else {
        return;
    };
    let [mut one, mut two]: [Cluster; 2] = standbys.try_into().ok().unwrap();
    last_writes(&pair.old);
    shut_down_in_order(&mut pair.old, &mut [&mut one, &mut two]);
    upgrade(&pair, &["--link"]);
    let kit = pair.sandbox.path().join("standbys.kit");
    assert_eq!(pair.run(&kit_args(&pair, &kit)).status, 0);
    let new1 = pair.sandbox.path().join("one_new");
    let new2 = pair.sandbox.path().join("two_new");
    killed_at(&pair, &one.datadir, &new1, &kit, "standby:protect-old");
    // SIGTERM after it disabled the old standby: said so, and resumable.
    let pause = pair.sandbox.path().join("pause");
    let child = as_test_user(&pair.bin)
        .current_dir(pair.sandbox.path())
        .args(standby_args(
            &pair,
            &two.datadir,
            &new2,
            kit.to_str().unwrap(),
            &[],
        ))
        .env("PG_MIGRATE_TEST_PAUSE_AT", "standby:install-kit")
        .env("PG_MIGRATE_TEST_PAUSE_FILE", &pause)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("pg-migrate standby to pause", || pause.exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    std::fs::remove_file(&pause).unwrap();
    let run = pgm_testkit::finish(child.wait_with_output().unwrap());
    crate::json_schema::validate(&run.events);
    assert_eq!(run.status, 4, "{}\n{}", run.stderr, run.stdout);
    let error = run.error();
    assert_eq!(error["code"], "interrupted");
    assert_eq!(error["clusters"]["old"], "protected");
    assert!(
        error["remedy"]
            .as_str()
            .unwrap()
            .contains("pg-migrate resume -D"),
        "{error}"
    );
    let journal = std::fs::read_to_string(new2.join("pg_migrate.d/standby.ndjson")).unwrap();
    assert!(journal.contains("\"interrupted\""), "{journal}");
    // Meanwhile the primary serves.
    start_new_primary(&mut pair);
    pair.new.sql(
        "appdb",
        "INSERT INTO t SELECT g, 'meanwhile' FROM generate_series(200001, 200500) g",
    );
    // The operator resumes from a directory they cannot write.
    // The first resume is itself killed, after it linked the files.
    let output = as_test_user(&pair.bin)
        .current_dir(pair.sandbox.path())
        .args(["resume", "-D"])
        .arg(&new1)
        .env("PG_MIGRATE_TEST_KILL_AT", "standby:link-relations")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), None, "{output:?}");
    for new in [&new1, &new2] {
        let run = run_in(
            &pair.bin,
            Path::new("/"),
            &["resume".into(), "-D".into(), new.into(), "--json".into()],
        );
        assert_eq!(run.status, 0, "{}\n{}", run.stderr, run.stdout);
        crate::json_schema::validate(&run.events);
        let ended = run.steps_ended();
        assert!(!ended.contains(&"protect-old"), "done before: {ended:?}");
        assert!(ended.contains(&"sync"), "{ended:?}");
        // A second resume finds nothing to do.
        let again = pair.run(&["resume".into(), "-D".into(), new.into(), "--json".into()]);
        assert_eq!(again.status, 2);
        assert_eq!(again.error()["code"], "already_upgraded");
    }
    let mut n1 = pair.sandbox.existing("one_new", NEW, &new1);
    let mut n2 = pair.sandbox.existing("two_new", NEW, &new2);
    n1.start();
    n2.start();
    wait_for("both standbys to stream", || streaming(&pair.new) == 2);
    let lsn = current_lsn(&pair.new);
    for standby in [&n1, &n2] {
        replayed(standby, &lsn);
        let rows: i64 = standby
            .client("appdb")
            .query_one("SELECT count(*) FROM t WHERE v = 'meanwhile'", &[])
            .unwrap()
            .get(0);
        assert_eq!(rows, 500);
    }
    // Once it ran, the new standby cannot be reverted, even stopped with
    // -m immediate (no shutdown checkpoint).
    n1.stop_immediate();
    let run = pair.run(&[
        "revert".into(),
        "-D".into(),
        new1.clone().into(),
        "--json".into(),
    ]);
    assert_eq!(run.status, 4, "{}", run.stdout);
    assert_eq!(run.error()["code"], "new_cluster_has_run");
    n2.stop();
    pair.new.stop();
}

#[test]
fn a_standby_reverted_follows_its_old_primary_again() {
    let Some(Bed {
        mut pair,
        standbys,
        tablespace,
    }) = bed(false)
    else {
        return;
    };
    let [mut one, mut two]: [Cluster; 2] = standbys.try_into().ok().unwrap();
    last_writes(&pair.old);
    shut_down_in_order(&mut pair.old, &mut [&mut one, &mut two]);
    let one_before = snapshot(&one.datadir);
    upgrade(&pair, &["--copy"]);
    let kit = pair.sandbox.path().join("standbys.kit");
    assert_eq!(pair.run(&kit_args(&pair, &kit)).status, 0);
    let new1 = pair.sandbox.path().join("one_new");
    let new2 = pair.sandbox.path().join("two_new");
    killed_at(&pair, &one.datadir, &new1, &kit, "standby:configure");
    // Killed before it disabled the old standby, which then runs again.
    killed_at(&pair, &two.datadir, &new2, &kit, "standby:staged");
    // The revert itself is cut short, then run again.
    let output = as_test_user(&pair.bin)
        .current_dir(pair.sandbox.path())
        .args(["revert", "-D"])
        .arg(&new1)
        .env("PG_MIGRATE_TEST_KILL_AT", "standby-revert:files-removed")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), None, "{output:?}");
    let resumed = pair.run(&[
        "resume".into(),
        "-D".into(),
        new1.clone().into(),
        "--json".into(),
    ]);
    assert_eq!(
        resumed.status, 4,
        "a begun revert must be finished: {}",
        resumed.stdout
    );
    assert_eq!(resumed.error()["code"], "unfinished_revert");
    let run = pair.run(&[
        "revert".into(),
        "-D".into(),
        new1.clone().into(),
        "--json".into(),
    ]);
    assert_eq!(run.status, 0, "{}\n{}", run.stderr, run.stdout);
    crate::json_schema::validate(&run.events);
    assert!(!new1.exists());
    let version_dirs: Vec<String> = std::fs::read_dir(pair.sandbox.path().join("tblspc_standby1"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        version_dirs.len(),
        1,
        "only the old major's: {version_dirs:?}"
    );
    // The standby's files are as before; only its own bookkeeping differs.
    crate::proof::assert_data_files_untouched(&one_before, &snapshot(&one.datadir));

    // The primary is reverted too; both run again as before.
    let run = pair.run(&[
        "revert".into(),
        "-D".into(),
        pair.new.datadir.clone().into(),
        "--json".into(),
    ]);
    assert_eq!(run.status, 0, "{}\n{}", run.stderr, run.stdout);
    pair.old.start();
    one.start();
    two.start();
    wait_for("the old standbys to stream from the old primary", || {
        streaming(&pair.old) == 2
    });
    pair.old
        .sql("appdb", "INSERT INTO t VALUES (-7, 'after the revert')");
    replayed(&one, &current_lsn(&pair.old));
    let rows: i64 = one
        .client("appdb")
        .query_one("SELECT count(*) FROM t WHERE id = -7", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    let _ = tablespace;
    shut_down_in_order(&mut pair.old, &mut [&mut one, &mut two]);
    // The second standby's files moved on since its run was cut short:
    // resume refuses to link them, and revert gives it back.
    let run = pair.run(&[
        "resume".into(),
        "-D".into(),
        new2.clone().into(),
        "--json".into(),
    ]);
    assert_eq!(run.status, 3, "{}\n{}", run.stderr, run.stdout);
    assert_eq!(run.error()["code"], "standby_failed");
    assert!(
        run.error()["message"]
            .as_str()
            .unwrap()
            .contains("ran since"),
        "{}",
        run.stdout
    );
    assert!(two.datadir.join("global/pg_control").exists());
    let run = pair.run(&[
        "revert".into(),
        "-D".into(),
        new2.clone().into(),
        "--json".into(),
    ]);
    assert_eq!(run.status, 0, "{}\n{}", run.stderr, run.stdout);
    assert!(!new2.exists());
}

#[test]
fn physical_slots_need_a_new_cluster_that_can_keep_them() {
    let Some(mut pair) = Pair::new(OLD, NEW) else {
        return;
    };
    pair.old.with_running(|c| {
        c.sql(
            "postgres",
            "SELECT pg_create_physical_replication_slot('standby_one')",
        )
    });
    let conf = pair.new.datadir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nwal_level = minimal\nmax_wal_senders = 0\n");
    std::fs::write(&conf, text).unwrap();
    let run = pair.check(&[]);
    crate::json_schema::validate(&run.events);
    assert_refused(&run, "new-physical-slots", "new_wal_level_minimal");
}

/// An upgrade that read the old primary's tables after its standbys' last
/// checkpoint (--verify measures them) on a cluster without checksums
/// gives no kit: a standby's page could stay unpruned under an all-visible
/// flag the primary's VACUUM sends without the page.
#[test]
fn no_kit_after_an_upgrade_that_read_the_old_tables_without_checksums() {
    let Some(Bed {
        mut pair,
        standbys,
        tablespace: _,
    }) = bed(false)
    else {
        return;
    };
    let [mut one, mut two]: [Cluster; 2] = standbys.try_into().ok().unwrap();
    shut_down_in_order(&mut pair.old, &mut [&mut one, &mut two]);
    // The upgrade's own --standby-kit: the kit would be made before
    // --verify starts the new cluster, after it measured the old one.
    let kit = pair.sandbox.path().join("standbys.kit");
    let mut args = pair.dir_args();
    args.extend(["--link", "--verify", "--json", "--standby-kit"].map(OsString::from));
    args.push(kit.clone().into());
    let run = pair.run(&args);
    crate::json_schema::validate(&run.events);
    assert_eq!(run.status, 5, "the upgrade is complete: {}", run.stdout);
    assert_eq!(run.error()["code"], "kit_not_possible");
    assert!(
        run.error()["message"]
            .as_str()
            .unwrap()
            .contains("--verify"),
        "{}",
        run.stdout
    );
    assert!(!kit.exists());
}

/// What cannot give a kit, or is asked wrongly, is refused with nothing
/// changed: no upgrade in -D, the kit and --json both on stdout, a standby
/// without a kit, --standby-kit with a mode that shares no files, a kit of
/// a swap-mode upgrade.
#[test]
fn kits_that_cannot_be_made_are_refused() {
    let Some(pair) = Pair::new(OLD, NEW) else {
        return;
    };
    let kit = pair.sandbox.path().join("standbys.kit");
    let (old_before, new_before) = pair.snapshots();
    let no_upgrade = pair.run(&kit_args(&pair, &kit));
    crate::json_schema::validate(&no_upgrade.events);
    assert_eq!(no_upgrade.status, 2, "{}", no_upgrade.stdout);
    assert_eq!(no_upgrade.error()["code"], "no_journal");
    let mut both = kit_args(&pair, &kit);
    both[4] = "-".into();
    let run = pair.run(&both);
    crate::json_schema::validate(&run.events);
    assert_eq!(run.status, 2);
    assert_eq!(run.error()["code"], "usage");
    let run = pair.run(&[
        "standby".into(),
        "-b".into(),
        pair.old.bindir.clone().into(),
        "-d".into(),
        pair.old.datadir.clone().into(),
        "-D".into(),
        pair.sandbox.path().join("s").into(),
        "--json".into(),
    ]);
    assert_eq!(run.status, 2);
    assert_eq!(run.error()["code"], "usage");
    assert!(run.error()["message"].as_str().unwrap().contains("kit"));
    let mut args = pair.dir_args();
    args.extend(["--swap", "--json", "--standby-kit"].map(OsString::from));
    args.push(kit.clone().into());
    let run = pair.run(&args);
    assert_eq!(run.status, 2, "{}", run.stdout);
    assert_eq!(run.error()["code"], "usage");
    let (old_after, new_after) = pair.snapshots();
    assert_same_tree(&old_before, &old_after, "old cluster");
    assert_same_tree(&new_before, &new_after, "new cluster");
    assert!(!kit.exists());

    upgrade(&pair, &["--swap"]);
    let upgraded = snapshot(&pair.new.datadir);
    let run = pair.run(&kit_args(&pair, &kit));
    crate::json_schema::validate(&run.events);
    assert_eq!(run.status, 2, "{}", run.stdout);
    assert_eq!(run.error()["code"], "kit_not_possible");
    assert!(run.error()["message"].as_str().unwrap().contains("--swap"));
    assert_same_tree(&upgraded, &snapshot(&pair.new.datadir), "new cluster");
    assert!(!kit.exists());
}

/// A new cluster whose last server ran with wal_level = minimal records it
/// in pg_control, and a standby cannot start from that: no kit.
#[test]
fn no_kit_from_a_new_cluster_at_wal_level_minimal() {
    let Some(pair) = Pair::new(OLD, NEW) else {
        return;
    };
    let conf = pair.new.datadir.join("postgresql.conf");
    let text =
        std::fs::read_to_string(&conf).unwrap() + "\nwal_level = minimal\nmax_wal_senders = 0\n";
    std::fs::write(&conf, text).unwrap();
    upgrade(&pair, &["--link"]);
    let upgraded = snapshot(&pair.new.datadir);
    let kit = pair.sandbox.path().join("standbys.kit");
    let run = pair.run(&kit_args(&pair, &kit));
    crate::json_schema::validate(&run.events);
    assert_eq!(run.status, 2, "{}", run.stdout);
    assert_eq!(run.error()["code"], "kit_not_possible");
    assert!(run.error()["message"].as_str().unwrap().contains("minimal"));
    assert_same_tree(&upgraded, &snapshot(&pair.new.datadir), "new cluster");
    assert!(!kit.exists());
}
