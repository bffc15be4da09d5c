//! Logical replication across the upgrade (17 → 18), with real servers
//! replicating over unix sockets: a publisher upgraded keeps its slots and
//! its subscriber goes on receiving without a new initial copy; a
//! subscriber upgraded keeps its subscription, table states and origin, and
//! goes on replicating.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::proof::*;
use crate::support::*;

fn append_conf(cluster: &Cluster, lines: &str) {
    let conf = cluster.datadir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(lines);
    std::fs::write(&conf, text).unwrap();
}

fn conninfo(cluster: &Cluster) -> String {
    format!(
        "host={} port={} dbname=postgres",
        cluster.sockdir.display(),
        cluster.port
    )
}

fn count(cluster: &Cluster, sql: &str) -> i64 {
    cluster
        .client("postgres")
        .query_one(sql, &[])
        .unwrap()
        .get(0)
}

/// Polls until `sql` (one boolean) is true on `cluster`.
fn wait_until(cluster: &Cluster, sql: &str, what: &str) {
    let started = Instant::now();
    loop {
        let done: Option<bool> = cluster
            .client("postgres")
            .query_opt(sql, &[])
            .unwrap()
            .and_then(|r| r.get(0));
        if done == Some(true) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The publisher's walsender has had everything the publisher wrote
/// confirmed by the subscriber.
fn wait_for_catchup(publisher: &Cluster) {
    wait_until(
        publisher,
        "SELECT bool_and(replay_lsn >= pg_current_wal_lsn()) FROM pg_stat_replication",
        "the subscriber to confirm the publisher's WAL",
    );
}

fn subscribe(subscriber: &Cluster, publisher: &Cluster, rows: i64) {
    subscriber.sql("postgres", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    subscriber.sql(
        "postgres",
        &format!(
            "CREATE SUBSCRIPTION sub CONNECTION '{}' PUBLICATION pub",
            conninfo(publisher)
        ),
    );
    wait_until(
        subscriber,
        &format!(
            "SELECT (SELECT count(*) FROM t) = {rows}
                AND NOT EXISTS (SELECT FROM pg_subscription_rel WHERE srsubstate <> 'r')"
        ),
        "the initial copy",
    );
}

fn publish(publisher: &Cluster) {
    publisher.sql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'before' FROM generate_series(1, 100) g;
         CREATE PUBLICATION pub FOR TABLE t",
    );
}

fn upgrade(pair: &Pair, mode: &str) -> Run {
    let mut words: Vec<OsString> = pair.dir_args();
    words.extend([mode.into(), "--json".into(), "-j".into(), "2".into()]);
    let run = pair.run(&words);
    crate::json_schema::validate(&run.events);
    assert_eq!(run.status, 0, "{}\n{}", run.stderr, run.stdout);
    run
}

/// The publisher is upgraded (link mode): its slots are made again in the
/// new cluster with their plugin and flags; the subscriber, pointed at the
/// new server, receives what is written there, and nothing is copied again.
#[test]
fn a_publisher_upgraded_17_to_18_keeps_its_subscriber() {
    let Some(mut pair) = Pair::new(17, 18) else {
        return;
    };
    append_conf(&pair.old, "\nwal_level = logical\n");
    append_conf(&pair.new, "\nwal_level = logical\n");
    let mut subscriber = pair.sandbox.cluster("subscriber", 18, no_checksums(18));
    pair.old.start();
    subscriber.start();
    publish(&pair.old);
    subscribe(&subscriber, &pair.old, 100);
    pair.old.sql(
        "postgres",
        "INSERT INTO t SELECT g, 'streamed' FROM generate_series(101, 150) g",
    );
    wait_until(&subscriber, "SELECT count(*) = 150 FROM t", "streamed rows");
    wait_for_catchup(&pair.old);
    subscriber.sql("postgres", "ALTER SUBSCRIPTION sub DISABLE");
    wait_until(
        &pair.old,
        "SELECT NOT active FROM pg_replication_slots WHERE slot_name = 'sub'",
        "the walsender to go",
    );
    // A second slot with the other flags, made after the last write.
    pair.old.sql(
        "postgres",
        "SELECT pg_create_logical_replication_slot('spare', 'test_decoding', false, true, true)",
    );
    let slots_sql = "SELECT slot_name::text, plugin::text, two_phase, failover
                       FROM pg_replication_slots ORDER BY 1";
    let slots = |cluster: &Cluster| -> Vec<(String, String, bool, bool)> {
        cluster
            .client("postgres")
            .query(slots_sql, &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    };
    let old_slots = slots(&pair.old);
    assert_eq!(old_slots.len(), 2);
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();

    let run = upgrade(&pair, "--link");
    // A wrapper is told which slots were made again.
    let told: Vec<&str> = run
        .events_named("notice")
        .into_iter()
        .filter(|e| e["code"] == "logical_slots_recreated")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        told.len() == 1 && told[0].contains("\"sub\"") && told[0].contains("\"spare\""),
        "{told:?}"
    );
    pair.new.start();
    let after = capture(&pair.new, &pair.new.bindir);
    assert_same_state(&before, &after, (17, 18), "publisher 17 -> 18");
    assert_eq!(slots(&pair.new), old_slots, "the slots, made again");

    // The subscriber follows the publisher to its new server.
    subscriber.sql(
        "postgres",
        &format!(
            "ALTER SUBSCRIPTION sub CONNECTION '{}'",
            conninfo(&pair.new)
        ),
    );
    subscriber.sql("postgres", "ALTER SUBSCRIPTION sub ENABLE");
    pair.new.sql(
        "postgres",
        "INSERT INTO t SELECT g, 'after' FROM generate_series(151, 175) g; UPDATE t SET v = 'changed' WHERE id = 1",
    );
    wait_until(
        &subscriber,
        "SELECT count(*) = 175 AND count(*) FILTER (WHERE v = 'changed') = 1 FROM t",
        "the rows written after the upgrade",
    );
    wait_for_catchup(&pair.new);
    // No initial copy again: every table stayed 'r', and the subscriber's
    // rows are the publisher's exactly.
    assert_eq!(
        count(
            &subscriber,
            "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'"
        ),
        0
    );
    let digest = "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM t";
    let on =
        |c: &Cluster| -> String { c.client("postgres").query_one(digest, &[]).unwrap().get(0) };
    assert_eq!(on(&subscriber), on(&pair.new));
    subscriber.stop();
    pair.new.stop();
}

/// The subscriber is upgraded (copy mode): its subscription comes over
/// enabled as it was, its tables still synchronized and its origin at the
/// same remote position; started, it goes on replicating without copying
/// anything again.
#[test]
fn a_subscriber_upgraded_17_to_18_keeps_replicating() {
    let Some(mut pair) = Pair::new(17, 18) else {
        return;
    };
    let mut publisher = pair.sandbox.cluster("publisher", 18, no_checksums(18));
    append_conf(&publisher, "\nwal_level = logical\n");
    publisher.start();
    pair.old.start();
    publish(&publisher);
    subscribe(&pair.old, &publisher, 100);
    publisher.sql(
        "postgres",
        "INSERT INTO t SELECT g, 'streamed' FROM generate_series(101, 150) g",
    );
    wait_until(&pair.old, "SELECT count(*) = 150 FROM t", "streamed rows");
    wait_for_catchup(&publisher);
    let state_sql = "SELECT s.subenabled, (SELECT string_agg(r.srsubstate::text, '') FROM pg_subscription_rel r WHERE r.srsubid = s.oid),
                            (SELECT o.remote_lsn::text FROM pg_replication_origin_status o
                               JOIN pg_replication_origin n ON n.roident = o.local_id
                              WHERE n.roname = 'pg_' || s.oid)
                       FROM pg_subscription s WHERE s.subname = 'sub'";
    let state = |cluster: &Cluster| -> (bool, String, String) {
        let row = cluster
            .client("postgres")
            .query_one(state_sql, &[])
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    let old_state = state(&pair.old);
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();

    upgrade(&pair, "--copy");
    pair.new.start();
    let after = capture(&pair.new, &pair.new.bindir);
    assert_same_state(&before, &after, (17, 18), "subscriber 17 -> 18");
    let new_state = state(&pair.new);
    assert_eq!(new_state.0, old_state.0, "enabled as before");
    assert_eq!(new_state.1, old_state.1, "the tables' states");
    assert!(old_state.0 && old_state.1 == "r");
    // The origin may have moved on since (the new subscriber connects at
    // once), but never back.
    let lsn = |text: &str| -> u64 {
        let (high, low) = text.split_once('/').unwrap();
        (u64::from_str_radix(high, 16).unwrap() << 32) | u64::from_str_radix(low, 16).unwrap()
    };
    assert!(
        lsn(&new_state.2) >= lsn(&old_state.2),
        "origin {} -> {}",
        old_state.2,
        new_state.2
    );

    publisher.sql(
        "postgres",
        "INSERT INTO t SELECT g, 'after' FROM generate_series(151, 175) g; DELETE FROM t WHERE id = 2",
    );
    wait_until(
        &pair.new,
        "SELECT count(*) = 174 AND count(*) FILTER (WHERE v = 'after') = 25 FROM t",
        "the rows the publisher wrote after the upgrade",
    );
    assert_eq!(
        count(
            &pair.new,
            "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'"
        ),
        0
    );
    let digest = "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM t";
    let on =
        |c: &Cluster| -> String { c.client("postgres").query_one(digest, &[]).unwrap().get(0) };
    assert_eq!(on(&pair.new), on(&publisher));
    pair.new.stop();
    publisher.stop();
}

/// Slots of 16 and older cannot be carried (their position is not saved at
/// shutdown): the checks refuse them, naming them, with nothing changed.
/// (15: this machine's 16 is a server-only build without output plugins.)
#[test]
fn slots_before_17_are_refused() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    append_conf(&pair.old, "\nwal_level = logical\n");
    pair.old.with_running(|c| {
        c.sql(
            "postgres",
            "SELECT pg_create_logical_replication_slot('old_style', 'test_decoding')",
        )
    });
    let (old_before, new_before) = pair.snapshots();
    let mut words: Vec<OsString> = pair.dir_args();
    words.extend(["--link".into(), "--json".into()]);
    let run = pair.run(&words);
    crate::json_schema::validate(&run.events);
    assert_refused(&run, "old-logical-slots", "logical_slots_not_carried");
    let check = run.check("old-logical-slots");
    assert!(
        check["objects"].to_string().contains("old_style"),
        "{check}"
    );
    crate::proof::assert_data_files_untouched(&old_before, &snapshot(&pair.old.datadir));
    crate::proof::assert_data_files_untouched(&new_before, &snapshot(&pair.new.datadir));
}

/// A slot's output plugin must load in the new installation, where the slot
/// is made again: a plugin the old installation has and the new one lacks
/// (here 17's test_decoding, copied beside the old cluster under a name of
/// its own and found through dynamic_library_path) is found by the checks,
/// naming the slot, before anything changes.
#[test]
fn a_slot_whose_plugin_the_new_installation_lacks_is_refused() {
    let Some(mut pair) = Pair::new(17, 18) else {
        return;
    };
    let old_bin = require(17).unwrap();
    let pkglibdir = std::process::Command::new(old_bin.join("pg_config"))
        .arg("--pkglibdir")
        .output()
        .unwrap();
    let pkglibdir = String::from_utf8(pkglibdir.stdout).unwrap();
    let plugins = pair.sandbox.mkdir("old-plugins");
    std::fs::copy(
        Path::new(pkglibdir.trim()).join("test_decoding.so"),
        plugins.join("decoder_of_17.so"),
    )
    .unwrap();
    append_conf(
        &pair.old,
        &format!(
            "\nwal_level = logical\ndynamic_library_path = '$libdir:{}'\n",
            plugins.display()
        ),
    );
    append_conf(&pair.new, "\nwal_level = logical\n");
    pair.old.with_running(|c| {
        c.sql(
            "postgres",
            "SELECT pg_create_logical_replication_slot('only_in_17', 'decoder_of_17')",
        );
        c.sql(
            "postgres",
            "SELECT pg_create_logical_replication_slot('everywhere', 'test_decoding')",
        );
    });
    let (old_before, new_before) = pair.snapshots();
    let mut words: Vec<OsString> = pair.dir_args();
    words.extend(["--link".into(), "--json".into()]);
    let run = pair.run(&words);
    crate::json_schema::validate(&run.events);
    assert_refused(&run, "new-libraries", "library_missing");
    let check = run.check("new-libraries");
    assert!(
        check["message"]
            .as_str()
            .is_some_and(|m| m.contains("decoder_of_17") && m.contains("only_in_17")),
        "{check}"
    );
    assert!(!check.to_string().contains("everywhere"), "{check}");
    assert!(
        check["objects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "slot"
                && o["name"] == "only_in_17"
                && o["database"] == "postgres"),
        "{check}"
    );
    assert!(
        check["remedy"]
            .as_str()
            .is_some_and(|r| r.contains("pg_drop_replication_slot")),
        "{check}"
    );
    // The slots' own checks pass: the plugin is the only problem.
    let failed: Vec<&str> = run
        .events
        .iter()
        .filter(|e| e["event"] == "check" && e["status"] == "fail")
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["new-libraries"], "{}", run.stderr);
    crate::proof::assert_data_files_untouched(&old_before, &snapshot(&pair.old.datadir));
    crate::proof::assert_data_files_untouched(&new_before, &snapshot(&pair.new.datadir));
}

/// A run killed between the step that lists the old cluster's slots and
/// the restore that makes them again (before link mode's point of no
/// return, so the resume starts over): every slot, logical and physical,
/// is made again.
#[test]
fn a_resumed_upgrade_makes_every_slot_again() {
    let Some(mut pair) = Pair::new(17, 18) else {
        return;
    };
    append_conf(&pair.old, "\nwal_level = logical\n");
    append_conf(&pair.new, "\nwal_level = logical\n");
    pair.old.start();
    pair.old.sql(
        "postgres",
        "SELECT pg_create_logical_replication_slot('keep', 'test_decoding')",
    );
    pair.old.sql(
        "postgres",
        "SELECT pg_create_physical_replication_slot('standby')",
    );
    pair.old.stop();
    let mut words: Vec<OsString> = pair.dir_args();
    words.extend(["--link".into(), "--json".into()]);
    let output = as_test_user(&pair.bin)
        .current_dir(pair.sandbox.path())
        .args(&words)
        .env("PG_MIGRATE_TEST_KILL_AT", "after:handover-counters")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), None, "{output:?}");
    let run = pair.run(&[
        "resume".into(),
        "-D".into(),
        pair.new.datadir.clone().into(),
        "--json".into(),
    ]);
    assert_eq!(run.status, 0, "{}\n{}", run.stderr, run.stdout);
    pair.new.start();
    let slots: Vec<(String, String)> = pair
        .new
        .client("postgres")
        .query(
            "SELECT slot_name::text, slot_type FROM pg_replication_slots ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        slots,
        vec![
            ("keep".to_string(), "logical".to_string()),
            ("standby".to_string(), "physical".to_string())
        ]
    );
    pair.new.stop();
}
