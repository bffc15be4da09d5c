//! One database's schema restored over several connections (`-j`): the same
//! catalog as a serial restore and as pg_upgrade's, and a kill in the
//! middle of it (and of its resume) resumed to a proven result.

use std::ffi::OsString;
use std::path::Path;

use crate::proof::*;
use crate::support::*;

/// Many relations in one schema, and the post-data objects that must keep
/// their order or not share a table: keys and indexes, foreign keys (one
/// to a partitioned table, which reaches every partition), comments on
/// indexes, triggers, a policy, extended statistics, a partitioned key
/// and its partitions' attached indexes.
const WIDE: &str = "
CREATE SCHEMA wide;
DO $$ BEGIN
  FOR i IN 1..600 LOOP
    EXECUTE format('CREATE TABLE wide.p%s (id int PRIMARY KEY, v text, n int)', i);
    EXECUTE format('CREATE INDEX ON wide.p%s (v)', i);
    EXECUTE format('CREATE TABLE wide.c%s (id int PRIMARY KEY, p int REFERENCES wide.p%s, w text UNIQUE)', i, i);
    EXECUTE format('COMMENT ON INDEX wide.p%s_v_idx IS %L', i, 'index ' || i);
    EXECUTE format('INSERT INTO wide.p%s VALUES (1, %L, %s)', i, md5(i::text), i);
    EXECUTE format('INSERT INTO wide.c%s VALUES (1, 1, %L)', i, md5(i::text));
  END LOOP;
END $$;
CREATE TABLE wide.parted (k int PRIMARY KEY, v text) PARTITION BY RANGE (k);
DO $$ BEGIN
  FOR i IN 0..59 LOOP
    EXECUTE format('CREATE TABLE wide.parted_%s PARTITION OF wide.parted FOR VALUES FROM (%s) TO (%s)', i, i * 10, i * 10 + 10);
  END LOOP;
END $$;
CREATE INDEX ON wide.parted (v);
INSERT INTO wide.parted SELECT g, md5(g::text) FROM generate_series(0, 599) g;
CREATE TABLE wide.refs (id int PRIMARY KEY, k int REFERENCES wide.parted);
INSERT INTO wide.refs SELECT g, g FROM generate_series(0, 99) g;
CREATE FUNCTION wide.touch() RETURNS trigger LANGUAGE plpgsql
  AS $f$BEGIN NEW.n := coalesce(NEW.n, 0); RETURN NEW; END$f$;
DO $$ BEGIN
  FOR i IN 1..100 LOOP
    EXECUTE format('CREATE TRIGGER touch BEFORE INSERT ON wide.p%s FOR EACH ROW EXECUTE FUNCTION wide.touch()', i);
  END LOOP;
END $$;
ALTER TABLE wide.p1 ENABLE ROW LEVEL SECURITY;
CREATE POLICY positive ON wide.p1 USING (n > 0);
CREATE STATISTICS wide.p2_stats ON v, n FROM wide.p2;
ANALYZE;
";

/// The rich fixture with 2,000 more relations in its largest database:
/// pg_upgrade, pg-migrate -j 1 and pg-migrate -j 4 (whose largest database
/// is restored over 4 connections, `--cpus 4` on any machine) give the same
/// dump, to the byte, and the same contents.
#[test]
fn one_database_restored_side_by_side_is_the_serial_restore_and_pg_upgrades() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    let tablespace = load_rich(&pair);
    pair.old.sql("appdb", WIDE);
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();

    run_ok(
        as_test_user(pair.new.bindir.join("pg_upgrade"))
            .current_dir(pair.sandbox.path())
            .args(pair.dir_args())
            .arg("-s")
            .arg(pair.sandbox.path())
            .args(["--copy", "--no-sync", "-j", "4"]),
    );
    pair.new.start();
    let by_pg_upgrade = capture(&pair.new, &pair.new.bindir);
    pair.new.stop();
    clear_new_tablespace_dirs(&tablespace);

    let ours = |name: &str, jobs: &str| {
        let mut cluster = pair.sandbox.cluster(name, 18, no_checksums(18));
        let logs = pair.sandbox.mkdir(&format!("{name}-logs"));
        let mut args = pair.dir_args();
        let at = args.iter().position(|a| a == "-D").unwrap();
        args[at + 1] = cluster.datadir.clone().into();
        args.extend(
            [
                "--copy",
                "--json",
                "--no-sync",
                "-j",
                jobs,
                "--cpus",
                "4",
                "--log-dir",
            ]
            .iter()
            .map(OsString::from),
        );
        args.push(logs.clone().into());
        let run = pair.run(&args);
        assert_eq!(run.status, 0, "-j {jobs}: {}", run.stderr);
        crate::json_schema::validate(&run.events);
        cluster.start();
        let state = capture(&cluster, &pair.new.bindir);
        cluster.stop();
        clear_new_tablespace_dirs(&tablespace);
        (state, run, logs_under(&logs))
    };
    let (serial, _, serial_logs) = ours("serial", "1");
    let (side_by_side, run, logs) = ours("side-by-side", "4");

    // It did run side by side, over -j connections (on two CPUs too:
    // --cpus 4), and the serial run did not.
    assert!(
        logs.contains("over 4 connections"),
        "appdb was not restored side by side over 4 connections:\n{logs}"
    );
    assert!(!serial_logs.contains(" objects (bytes "), "{serial_logs}");
    // In transactions of 50 entries at most: a larger commit overflows the
    // server's invalidation queue and resets the other connections' caches.
    let number_in = |line_marker: &str, word: usize| -> u64 {
        let line = logs
            .lines()
            .find(|l| l.contains(line_marker))
            .unwrap_or_else(|| panic!("no line with {line_marker}: {logs}"));
        line.split(' ').nth(word).unwrap().parse().unwrap()
    };
    // "restoring N objects (bytes …", "ran the parallel part in T transactions …"
    let entries = number_in(" objects (bytes ", 1);
    let transactions = number_in("ran the parallel part in ", 5);
    assert!(
        entries > 1000 && transactions * 50 >= entries,
        "{entries} entries in {transactions} transactions:\n{logs}"
    );
    // Every object counted, across the connections.
    let restore: Vec<_> = run
        .events_named("progress")
        .into_iter()
        .filter(|e| e["step"] == "restore-schema")
        .collect();
    let last = restore.last().unwrap();
    assert_eq!(last["done"], last["total"], "{last}");
    assert!(last["total"].as_u64().unwrap() > 4000, "{last}");

    assert_same_dump(&by_pg_upgrade.dump, &serial.dump, "pg_upgrade vs -j 1");
    assert_same_dump(&serial.dump, &side_by_side.dump, "-j 1 vs -j 4");
    assert_eq!(by_pg_upgrade.contents, serial.contents);
    assert_eq!(serial.contents, side_by_side.contents);
    assert_same_state(&before, &side_by_side, (15, 18), "-j 4");
}

/// Killed in the middle of restoring one database over 3 connections
/// (-j 4 --cpus 3, which the resumes take from the journal: 3 connections
/// on no machine by default); its resume killed again in the middle of its
/// own; the last resume run from a directory the operator cannot write: the
/// result is proven.
#[test]
fn a_parallel_restore_killed_and_its_resume_killed_is_resumed_to_a_proven_result() {
    let Some(mut pair) = Pair::new(17, 18) else {
        return;
    };
    pair.old.start();
    pair.old.sql("postgres", "CREATE DATABASE big");
    pair.old.sql("big", WIDE);
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let run_at = |args: Vec<OsString>, cwd: &Path, kill_at: Option<&str>| {
        let mut command = as_test_user(&pair.bin);
        command.current_dir(cwd).args(&args);
        if let Some(point) = kill_at {
            command.env("PG_MIGRATE_TEST_KILL_AT", point);
        }
        pgm_testkit::finish(command.output().unwrap())
    };
    let on_new = |command: &str| {
        vec![
            OsString::from(command),
            "-D".into(),
            pair.new.datadir.clone().into(),
            "--json".into(),
        ]
    };
    let logs = pair.sandbox.mkdir("logs");
    let mut args = with(pair.dir_args(), &["--link", "-j", "4", "--cpus", "3"]);
    args.extend([OsString::from("--log-dir"), logs.clone().into()]);
    let killed = run_at(
        args,
        pair.sandbox.path(),
        Some("restore-schema:parallel-batch:3"),
    );
    assert_eq!(killed.status, -1, "not killed: {}", killed.stderr);
    let resume_killed = run_at(
        on_new("resume"),
        pair.sandbox.path(),
        Some("restore-schema:parallel-batch:2"),
    );
    assert_eq!(
        resume_killed.status, -1,
        "the resume did not restore side by side: {}",
        resume_killed.stderr
    );
    let unwritable = pair.sandbox.path().join("not-yours");
    std::fs::create_dir(&unwritable).unwrap();
    std::fs::set_permissions(
        &unwritable,
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    let resumed = run_at(on_new("resume"), &unwritable, None);
    assert_eq!(resumed.status, 0, "{}\n{}", resumed.stderr, resumed.stdout);
    // The killed upgrade and the killed resume (whose logs stay) both
    // restored over 3 connections: the resume took -j and --cpus from the
    // journal.
    let logs = logs_under(&logs);
    let over = |n: u32| logs.matches(&format!(" over {n} connections")).count();
    assert!(
        over(3) >= 2 && over(2) + over(4) == 0,
        "the resume did not restore over the upgrade's 3 connections:\n{logs}"
    );
    crate::json_schema::validate(&resumed.events);
    assert_upgraded_to(&mut pair, &before, (17, 18), "resumed parallel restore");
}

/// A partitioned table with a primary key, in a database small enough that
/// one transaction takes every object that is ready: its partitions'
/// definitions and its key would share one, and the partitions' attachment
/// come after the key (which then needs an index the restore has no OID
/// for). Every relation is defined before any key, as in a serial restore.
#[test]
fn partitions_are_attached_before_their_parents_key_exists() {
    let Some(mut pair) = Pair::new(17, 18) else {
        return;
    };
    pair.old.start();
    pair.old.sql("postgres", "CREATE DATABASE small");
    pair.old.sql(
        "small",
        "CREATE TABLE parted (k int PRIMARY KEY, v text) PARTITION BY RANGE (k);
         CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
         CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (10) TO (20);
         CREATE TABLE parted_3 PARTITION OF parted FOR VALUES FROM (20) TO (30);
         CREATE INDEX ON parted (v);
         INSERT INTO parted SELECT g, md5(g::text) FROM generate_series(0, 29) g;
         CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
         CREATE TABLE c (id int PRIMARY KEY, a int REFERENCES a);",
    );
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let logs = pair.sandbox.mkdir("logs");
    let mut args = pair.dir_args();
    args.extend(
        ["--link", "--json", "-j", "2", "--log-dir"]
            .iter()
            .map(OsString::from),
    );
    args.push(logs.clone().into());
    let run = pair.run(&args);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        logs_under(&logs).contains("over 2 connections"),
        "small was not restored side by side"
    );
    assert_upgraded_to(
        &mut pair,
        &before,
        (17, 18),
        "partitions restored side by side",
    );
}

/// An object of the part restored side by side cannot be restored (a view
/// calling a function 18 no longer has, after every table): the error names
/// it and says it failed in that part, the other connections stop, and the
/// old cluster's files and contents are as they were.
#[test]
fn a_failure_inside_the_side_by_side_part_leaves_the_old_cluster_intact() {
    let Some(mut pair) = Pair::new(14, 18) else {
        return;
    };
    pair.old.start();
    pair.old.sql("postgres", "CREATE DATABASE big");
    pair.old.sql("big", WIDE);
    pair.old.sql(
        "big",
        "CREATE VIEW wide.zz_legacy_backup AS SELECT pg_stop_backup();",
    );
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let old_snapshot = snapshot(&pair.old.datadir);
    let run = pair.run(&with(pair.dir_args(), &["--link", "-j", "4", "--json"]));
    assert_eq!(run.status, 3, "{}", run.stderr);
    let error = run.error();
    assert_eq!(error["code"], "restore_failed", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("pg_stop_backup") && message.contains("side by side"),
        "not a failure inside the side-by-side part: {message}"
    );
    assert_eq!(error["clusters"]["new"], "incomplete", "{error}");
    assert!(
        error["remedy"]
            .as_str()
            .unwrap()
            .contains("old cluster is unchanged"),
        "{error}"
    );
    assert_data_files_untouched(&old_snapshot, &snapshot(&pair.old.datadir));
    pair.old.start();
    assert_same_state(
        &before,
        &capture(&pair.old, &pair.new.bindir),
        (18, 18),
        "old cluster after a failure inside the side-by-side restore",
    );
    pair.old.stop();
}

/// -j asked for a database no part of which can run side by side: it is
/// restored over one connection, and a database of 1,000 objects or more
/// says why on stderr (pg_restore restores it itself for a new installation
/// older than 17; a schema of functions alone creates no relation); a small
/// one (three tables after 30 functions) only in its log. Each upgrade is proven.
#[test]
fn a_database_restored_over_one_connection_despite_jobs_says_why() {
    let cases = [
        (
            14,
            15,
            "DO $$ BEGIN FOR i IN 1..600 LOOP
               EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY)', i);
             END LOOP; END $$;",
            "pg_restore restores it itself",
            true,
        ),
        (
            17,
            18,
            "DO $$ BEGIN FOR i IN 1..1100 LOOP
               EXECUTE format('CREATE FUNCTION f%s() RETURNS int LANGUAGE sql AS ''SELECT %s''', i, i);
             END LOOP; END $$;",
            "its schema creates no relation",
            true,
        ),
        (
            17,
            18,
            // The functions make "big" larger than postgres by enough that
            // it is split at all (two databases of a few objects each go
            // one to each connection); they are restored before the tables.
            "DO $$ BEGIN FOR i IN 1..30 LOOP
               EXECUTE format('CREATE FUNCTION f%s() RETURNS int LANGUAGE sql AS ''SELECT %s''', i, i);
             END LOOP; END $$;
             CREATE TABLE a (id int); CREATE TABLE b (id int); CREATE TABLE c (id int);",
            "objects could run side by side, too few for 2 connections",
            false,
        ),
    ];
    for (old, new, schema, reason, said) in cases {
        let Some(mut pair) = Pair::new(old, new) else {
            continue;
        };
        pair.old.start();
        pair.old.sql("postgres", "CREATE DATABASE big");
        pair.old.sql("big", schema);
        let (before, run, logs) = upgrade_logged_j2(&mut pair);
        assert_eq!(run.status, 0, "{old}->{new}: {}", run.stderr);
        crate::json_schema::validate(&run.events);
        // Under --json, a wrapper reads it as a notice.
        let notices: Vec<&str> = run
            .events_named("notice")
            .into_iter()
            .filter(|e| e["code"] == "restored_over_one_connection")
            .map(|e| e["message"].as_str().unwrap())
            .collect();
        assert_eq!(
            notices.len(),
            usize::from(said),
            "{old}->{new}: notices {notices:?}"
        );
        assert!(
            notices
                .iter()
                .all(|m| m.contains("\"big\"") && m.contains(reason)),
            "{old}->{new}: {notices:?}"
        );
        // The line, where said, and the log's, each naming the reason.
        let line_with = |text: &str, prefix: &str| {
            text.lines()
                .any(|l| l.contains(prefix) && l.contains(reason))
        };
        let prefix = "database \"big\" was restored over one connection, not 2: ";
        assert_eq!(
            line_with(&run.stderr, prefix),
            said,
            "{old}->{new}: \"{prefix}{reason}\" said: {}, expected {said}:\n{}",
            !said,
            run.stderr
        );
        let logs = logs_under(&logs);
        assert!(
            line_with(&logs, "restoring over one connection, not 2: "),
            "{old}->{new}: the log does not say why:\n{logs}"
        );
        assert_upgraded_to(
            &mut pair,
            &before,
            (old, new),
            "restored over one connection",
        );
    }
}

/// Equal databases at -j 2: four go two to each connection, none split
/// (splitting the last would leave one connection idle while the other
/// three restore, then run it at less than twice the pace); of three, the
/// last is split. `restore-schedule.log` says which, and each upgrade is
/// proven.
#[test]
fn equal_databases_are_split_only_where_that_is_sooner() {
    for (databases, split) in [(4, false), (3, true)] {
        let Some(mut pair) = Pair::new(17, 18) else {
            return;
        };
        pair.old.start();
        for d in 1..=databases {
            pair.old.sql("postgres", &format!("CREATE DATABASE d{d}"));
            pair.old.sql(
                &format!("d{d}"),
                "DO $$ BEGIN FOR i IN 1..40 LOOP
                   EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text)', i);
                   EXECUTE format('CREATE INDEX ON t%s (v)', i);
                   EXECUTE format('INSERT INTO t%s VALUES (1, %L)', i, md5(i::text));
                 END LOOP; END $$;",
            );
        }
        let (before, run, logs) = upgrade_logged_j2(&mut pair);
        assert_eq!(run.status, 0, "{databases}: {}", run.stderr);
        let files = walk(&logs);
        let schedule = files
            .iter()
            .find(|p| p.ends_with("restore-schedule.log"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .unwrap_or_else(|| panic!("{databases}: no restore-schedule.log in {files:?}"));
        let restores: String = files
            .iter()
            .filter(|p| !p.ends_with("restore-schedule.log"))
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect();
        let chosen = if split {
            "is restored last, split"
        } else {
            "so every database is restored over one connection"
        };
        assert!(schedule.contains(chosen), "{databases}:\n{schedule}");
        assert_eq!(
            restores.contains("over 2 connections"),
            split,
            "{databases}: a database restored side by side: {}",
            !split
        );
        assert_upgraded_to(
            &mut pair,
            &before,
            (17, 18),
            &format!("{databases} equal databases"),
        );
    }
}

/// The old cluster's state captured, then the cluster stopped and upgraded
/// with `--link -j 2 --json`, its logs kept under the returned directory.
fn upgrade_logged_j2(pair: &mut Pair) -> (State, Run, std::path::PathBuf) {
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let logs = pair.sandbox.mkdir("logs");
    let mut args = with(pair.dir_args(), &["--link", "-j", "2", "--json"]);
    args.extend([OsString::from("--log-dir"), logs.clone().into()]);
    (before, pair.run(&args), logs)
}
