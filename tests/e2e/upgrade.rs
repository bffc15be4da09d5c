//! The upgrade beyond the proof matrix: against PostgreSQL's own pg_upgrade,
//! transaction visibility, a new cluster pg-migrate creates itself, scripts
//! and statistics, many relations and segment files, and failures.

use std::path::Path;

use crate::proof::*;
use crate::support::*;

/// pg_upgrade (18's) and pg-migrate, each on the same old cluster, must give
/// new clusters whose dumps are identical to the byte, with no rule at all.
#[test]
fn same_result_as_pg_upgrade() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    let tablespace = load_rich(&pair);
    pair.old.stop();

    run_ok(
        as_test_user(pair.new.bindir.join("pg_upgrade"))
            .current_dir(pair.sandbox.path())
            .arg("-b")
            .arg(&pair.old.bindir)
            .arg("-B")
            .arg(&pair.new.bindir)
            .arg("-d")
            .arg(&pair.old.datadir)
            .arg("-D")
            .arg(&pair.new.datadir)
            .arg("-s")
            .arg(pair.sandbox.path())
            .args(["--copy", "--no-sync"]),
    );
    pair.new.start();
    let by_pg_upgrade = capture(&pair.new, &pair.new.bindir);
    pair.new.stop();
    // Make room for the second upgrade of the same old cluster.
    clear_new_tablespace_dirs(&tablespace);
    let mut ours = pair.sandbox.cluster("ours", 18, no_checksums(18));
    let mut args = pair.dir_args();
    let at = args.iter().position(|a| a == "-D").unwrap();
    args[at + 1] = ours.datadir.clone().into();
    args.extend(["--copy".into(), "--json".into(), "--no-sync".into()]);
    let run = pair.run(&args);
    assert_eq!(run.status, 0, "{}", run.stderr);
    ours.start();
    let by_pg_migrate = capture(&ours, &pair.new.bindir);
    ours.stop();
    assert_same_dump(
        &by_pg_upgrade.dump,
        &by_pg_migrate.dump,
        "pg_upgrade vs pg-migrate",
    );
    assert_eq!(by_pg_upgrade.contents, by_pg_migrate.contents);
}

pub const VISIBILITY_SETUP: &str = "
CREATE TABLE vis (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false);
INSERT INTO vis SELECT g, 'v' || g FROM generate_series(1, 1000) g;
CREATE SEQUENCE vis_seq;
SELECT nextval('vis_seq') FROM generate_series(1, 41);";

/// Rows whose fate only the commit log and multixacts know: deleted but not
/// vacuumed, written by aborted transactions, locked by several transactions.
/// Nothing reads them after the last change, so no hint bit gives it away.
pub fn make_visibility_probes(cluster: &Cluster) {
    cluster.sql("postgres", VISIBILITY_SETUP);
    make_visibility_rows(cluster);
}

/// The row changes of the probes, on a table made by VISIBILITY_SETUP.
pub fn make_visibility_rows(cluster: &Cluster) {
    cluster.sql("postgres", "DELETE FROM vis WHERE id <= 100");
    let mut a = cluster.client("postgres");
    let mut b = cluster.client("postgres");
    a.batch_execute("BEGIN; INSERT INTO vis VALUES (5000, 'aborted insert'); ROLLBACK;")
        .unwrap();
    a.batch_execute("BEGIN; UPDATE vis SET v = 'aborted update' WHERE id = 200; ROLLBACK;")
        .unwrap();
    a.batch_execute("BEGIN; DELETE FROM vis WHERE id = 300; ROLLBACK;")
        .unwrap();
    // Two share lockers: the rows' xmax becomes a multixact.
    a.batch_execute("BEGIN; SELECT * FROM vis WHERE id BETWEEN 400 AND 410 FOR SHARE;")
        .unwrap();
    b.batch_execute("BEGIN; SELECT * FROM vis WHERE id BETWEEN 400 AND 410 FOR SHARE;")
        .unwrap();
    b.batch_execute("COMMIT").unwrap();
    a.batch_execute("COMMIT").unwrap();
    // A key-share locker and a committed updater in one multixact.
    a.batch_execute("BEGIN; SELECT * FROM vis WHERE id = 500 FOR KEY SHARE;")
        .unwrap();
    b.batch_execute("UPDATE vis SET v = 'updated under a lock' WHERE id = 500")
        .unwrap();
    a.batch_execute("COMMIT").unwrap();
    // A key-share locker and an aborted updater.
    a.batch_execute("BEGIN; SELECT * FROM vis WHERE id = 600 FOR KEY SHARE;")
        .unwrap();
    b.batch_execute("BEGIN; UPDATE vis SET v = 'aborted under a lock' WHERE id = 600;")
        .unwrap();
    b.batch_execute("ROLLBACK").unwrap();
    a.batch_execute("COMMIT").unwrap();
}

pub fn assert_visibility(cluster: &Cluster, major: u32) {
    let mut c = cluster.client("postgres");
    let one =
        |c: &mut postgres::Client, sql: &str| -> String { c.query_one(sql, &[]).unwrap().get(0) };
    assert_eq!(
        one(&mut c, "SELECT count(*)::text FROM vis"),
        "900",
        "deleted rows stay deleted, aborted inserts invisible"
    );
    assert_eq!(
        one(
            &mut c,
            "SELECT count(*)::text FROM vis WHERE id <= 100 OR id = 5000"
        ),
        "0"
    );
    assert_eq!(
        one(&mut c, "SELECT v FROM vis WHERE id = 200"),
        "v200",
        "an aborted update leaves the old row"
    );
    assert_eq!(
        one(&mut c, "SELECT v FROM vis WHERE id = 300"),
        "v300",
        "an aborted delete leaves the row"
    );
    assert_eq!(
        one(&mut c, "SELECT v FROM vis WHERE id = 500"),
        "updated under a lock"
    );
    assert_eq!(one(&mut c, "SELECT v FROM vis WHERE id = 600"), "v600");
    // Multixact-locked rows can be locked and changed again.
    c.batch_execute("BEGIN; SELECT * FROM vis WHERE id BETWEEN 400 AND 410 FOR UPDATE; UPDATE vis SET v = 'relocked' WHERE id BETWEEN 400 AND 410; COMMIT;")
        .unwrap();
    assert_eq!(
        one(
            &mut c,
            "SELECT count(*)::text FROM vis WHERE v = 'relocked'"
        ),
        "11"
    );
    assert_eq!(
        one(&mut c, "SELECT nextval('vis_seq')::text"),
        "42",
        "sequences continue"
    );
    // Freezing must find no tuple older than the horizons the upgrade set,
    // and the heap must verify clean.
    c.batch_execute("VACUUM (FREEZE) vis").unwrap();
    c.batch_execute("VACUUM (FREEZE)").unwrap();
    assert_eq!(one(&mut c, "SELECT count(*)::text FROM vis"), "900");
    if major >= 14 {
        c.batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            .unwrap();
        assert_eq!(
            one(&mut c, "SELECT count(*)::text FROM verify_heapam('vis')"),
            "0"
        );
    }
}

fn visibility(old_major: u32, mode: &str) {
    let Some(mut pair) = Pair::new(old_major, 18) else {
        return;
    };
    pair.old.start();
    make_visibility_probes(&pair.old);
    let multis: i64 = pair
        .old
        .client("postgres")
        .query_one(
            "SELECT count(*) FROM pg_get_multixact_members((SELECT xmax FROM vis WHERE id = 400))",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(multis, 2, "the probe rows must hold a multixact");
    pair.old.stop();
    let control = pgm_cluster::ControlFile::read(&pair.old.datadir).unwrap();
    assert!(control.next_multixact > 1);
    upgrade(&pair, &[mode]);
    let new_control = pgm_cluster::ControlFile::read(&pair.new.datadir).unwrap();
    // The new cluster continues the old counters (the restore itself then
    // used a few more XIDs, in the new cluster's own, carried-over history).
    assert_eq!(new_control.next_xid_epoch, control.next_xid_epoch);
    assert!(
        new_control.next_xid >= control.next_xid
            && new_control.next_xid < control.next_xid + 10_000
    );
    assert!(new_control.oldest_xid <= control.next_xid);
    assert!(new_control.next_multixact >= control.next_multixact);
    assert!(new_control.next_multi_offset >= control.next_multi_offset);
    assert!(new_control.next_oid >= control.next_oid);
    pair.new.start();
    assert_visibility(&pair.new, 18);
    pair.new.stop();
}

#[test]
fn transaction_visibility_survives_link_15_to_18() {
    visibility(15, "--link");
}

#[test]
fn transaction_visibility_survives_copy_12_to_18() {
    visibility(12, "--copy");
}

#[test]
fn creates_a_matching_new_cluster_when_d_does_not_exist() {
    let Some(mut pair) = Pair::with_options(15, &["--wal-segsize=32", "--locale=C"], 18, &[])
    else {
        return;
    };
    pair.old.start();
    load_rich(&pair);
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let target = pair.sandbox.path().join("made-by-pg-migrate");
    let mut args = pair.dir_args();
    let at = args.iter().position(|a| a == "-D").unwrap();
    args[at + 1] = target.clone().into();
    args.extend(["--link".into(), "--json".into()]);
    let run = pair.run(&args);
    assert_eq!(run.status, 0, "{}", run.stderr);
    crate::json_schema::validate(&run.events);
    let initdb = run.events_named("initdb");
    assert_eq!(initdb.len(), 1);
    let command = initdb[0]["command"].as_str().unwrap();
    for word in [
        "--wal-segsize=32",
        "--no-data-checksums",
        "--encoding=UTF8",
        "--locale=C",
        "-U pgmigrate",
    ] {
        assert!(command.contains(word), "{command} lacks {word}");
    }
    // The checks that waited for the new cluster ran once it existed.
    let checks = run.events_named("check");
    assert!(checks
        .iter()
        .any(|c| c["id"] == "control-wal-segment-size" && c["status"] == "pass"));
    assert!(checks
        .iter()
        .any(|c| c["id"] == "new-empty" && c["status"] == "pass"));
    let control = pgm_cluster::ControlFile::read(&target).unwrap();
    assert_eq!(control.wal_segment_size, 32 * 1024 * 1024);
    assert_eq!(control.data_checksum_version, 0);
    // pg-migrate gave the new cluster peer authentication; the tests connect
    // as root over the socket, so they trust local connections here.
    let hba = std::fs::read_to_string(target.join("pg_hba.conf")).unwrap();
    assert!(
        hba.lines()
            .any(|l| l.starts_with("local") && l.contains("peer")),
        "{hba}"
    );
    std::fs::write(target.join("pg_hba.conf"), "local all all trust\n").unwrap();
    let mut new = pair.sandbox.existing("made", 18, &target);
    new.start();
    let after = capture(&new, &pair.new.bindir);
    assert_same_state(&before, &after, (15, 18), "created new cluster");
    new.stop();
}

#[test]
fn scripts_and_statistics_advice() {
    let Some(mut pair) = Pair::new(12, 18) else {
        return;
    };
    pair.old.start();
    load_rich(&pair);
    pair.old.stop();
    let run = upgrade(&pair, &["--link"]);
    let next: Vec<&str> = run.summary()["next_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    // 12's hstore and pg_trgm are older than 18's.
    let script =
        std::fs::read_to_string(pair.new.datadir.join("pg_migrate.d/update_extensions.sql"))
            .unwrap();
    assert!(
        script.contains("ALTER EXTENSION \"hstore\" UPDATE;"),
        "{script}"
    );
    assert!(
        next.iter().any(|s| s.contains("update_extensions.sql")),
        "{next:?}"
    );
    let delete =
        std::fs::read_to_string(pair.new.datadir.join("pg_migrate.d/delete_old_cluster.sh"))
            .unwrap();
    assert!(
        delete.contains(&format!("rm -rf {}", pair.old.datadir.display())),
        "{delete}"
    );
    assert!(delete.contains("tblspc/PG_12_"), "{delete}");
    assert!(
        next.iter().any(|s| s.contains("--missing-stats-only")),
        "{next:?}"
    );
    pair.new.start();
    // The update script runs cleanly and brings the extensions up to date.
    run_ok(
        as_test_user(pair.new.bindir.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&pair.new.sockdir)
            .args(["-p", &pair.new.port.to_string(), "-d", "postgres", "-f"])
            .arg(pair.new.datadir.join("pg_migrate.d/update_extensions.sql")),
    );
    let stale: i64 = pair
        .new
        .client("appdb")
        .query_one("SELECT count(*) FROM pg_available_extensions WHERE installed_version <> default_version", &[])
        .unwrap()
        .get(0);
    assert_eq!(stale, 0);
    pair.new.stop();
}

#[test]
fn statistics_are_carried_to_18_and_advised_before() {
    for new_major in [18, 17] {
        let Some(mut pair) = Pair::new(15, new_major) else {
            return;
        };
        pair.old.start();
        pair.old.sql("postgres", "CREATE TABLE s AS SELECT g AS id, g % 10 AS bucket FROM generate_series(1, 5000) g; ANALYZE s;");
        pair.old.stop();
        let run = upgrade(&pair, &["--link"]);
        let next = run.summary()["next_steps"].to_string();
        pair.new.start();
        let stats: i64 = pair
            .new
            .client("postgres")
            .query_one("SELECT count(*) FROM pg_stats WHERE tablename = 's'", &[])
            .unwrap()
            .get(0);
        pair.new.stop();
        if new_major >= 18 {
            assert_eq!(stats, 2, "18 carries the statistics");
            assert!(next.contains("--missing-stats-only"), "{next}");
        } else {
            assert_eq!(stats, 0);
            assert!(next.contains("--analyze-in-stages"), "{next}");
        }
    }
}

/// 2,000 tables (6,000+ relations) in one database, and an old lock table
/// too small for pg_dump to lock them all.
#[test]
fn many_relations() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    psql_file(
        &pair.old,
        &pair.new.bindir,
        "postgres",
        &fixture("many_relations.sql"),
        &[],
    );
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    // A lock table of 10 x 5 slots (and the spare shared memory it may
    // grow into) cannot hold pg_dump's lock on each of 2,000 tables: a
    // plain pg_dump fails with "out of shared memory". pg-migrate sizes its
    // private old server's lock table for the dump.
    let conf = pair.old.datadir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nmax_locks_per_transaction = 10\nmax_connections = 5\n");
    std::fs::write(&conf, text).unwrap();
    let run = upgrade(&pair, &["--link"]);
    assert!(
        run.stderr.contains("max_locks_per_transaction="),
        "{}",
        run.stderr
    );
    assert!(run.summary()["upgrade"]["relations"].as_u64().unwrap() >= 6000);
    pair.new.start();
    let after = capture(&pair.new, &pair.new.bindir);
    assert_same_state(&before, &after, (15, 18), "many relations");
    pair.new.stop();
}

/// One database of 2,500 tables: the restore shows its objects advancing
/// within that database, the transfer its files and bytes, and the checks,
/// the sync, --verify and --analyze their own progress; a log without a
/// terminal gets a line on how far the step is while nothing else is said.
#[test]
fn progress_within_one_database() {
    let Some(mut pair) = Pair::new(17, 18) else {
        return;
    };
    pair.old.with_running(|c| {
        c.sql("postgres", "CREATE DATABASE big");
        c.sql(
            "big",
            "DO $$ BEGIN
               FOR i IN 1..2500 LOOP
                 EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, payload text)', i);
                 EXECUTE format('INSERT INTO t%s VALUES (1, %L)', i, md5(i::text));
               END LOOP;
             END $$",
        );
    });
    let mut words = pair.dir_args();
    words.extend(
        ["--link", "--json", "--verify", "--analyze"]
            .iter()
            .map(std::ffi::OsString::from),
    );
    let mut command = pgm_testkit::as_test_user(&pair.bin);
    command
        .current_dir(pair.sandbox.path())
        .args(&words)
        .env("PG_MIGRATE_TEST_PROGRESS_EVERY_MS", "300");
    let run = pgm_testkit::finish(command.output().unwrap());
    assert_eq!(run.status, 0, "{}\n{}", run.stderr, run.stdout);
    crate::json_schema::validate(&run.events);
    let progress = |step: &str| -> Vec<serde_json::Value> {
        run.events_named("progress")
            .into_iter()
            .filter(|e| e["step"] == step)
            .cloned()
            .collect()
    };
    let number = |e: &serde_json::Value, field: &str| e[field].as_u64().unwrap();
    // Every metered step ends at its total, counting up.
    for (step, unit) in [
        ("checks", "checks"),
        ("restore-schema", "objects"),
        ("transfer", "files"),
        ("sync", "files"),
        ("record-old", "tables"),
        ("verify", "tables"),
        ("analyze", "passes"),
    ] {
        let events = progress(step);
        let last = events
            .last()
            .unwrap_or_else(|| panic!("no progress for {step}"));
        assert_eq!(last["unit"], unit, "{last}");
        assert_eq!(number(last, "done"), number(last, "total"), "{last}");
        assert!(number(last, "total") > 0, "{last}");
        let done: Vec<u64> = events.iter().map(|e| number(e, "done")).collect();
        assert!(done.windows(2).all(|w| w[0] <= w[1]), "{step}: {done:?}");
    }
    // The restore of the one database is seen advancing, object by object
    // batch: its tables, keys and their dependents.
    let restore = progress("restore-schema");
    let total = number(restore.last().unwrap(), "total");
    assert!(total >= 5000, "{total} objects");
    let between = restore
        .iter()
        .filter(|e| (1..total).contains(&number(e, "done")))
        .count();
    assert!(between >= 2, "{restore:?}");
    // The transfer counts every relation file, and its bytes.
    let transfer = progress("transfer");
    let last = transfer.last().unwrap();
    assert!(number(last, "total") >= 7500, "{last}");
    assert_eq!(
        number(last, "bytes_done"),
        number(last, "bytes_total"),
        "{last}"
    );
    assert!(number(last, "bytes_total") > 0, "{last}");
    // verify measured the old side's tables and the new side's: 2,500 each.
    assert!(number(progress("verify").last().unwrap(), "total") >= 2500);
    // Three stages in each of big, postgres and template1.
    assert_eq!(number(progress("analyze").last().unwrap(), "total"), 9);
    // stderr is no terminal here: the restore's own line came while it ran.
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("  restore-schema: ") && l.contains(" objects ("))
        .unwrap_or_else(|| panic!("no progress line:\n{}", run.stderr));
    assert!(line.contains(" of ") && line.contains("so far"), "{line}");
}

/// A table over 1 GiB has segment files (`<relfilenode>.1`); all must move.
#[test]
fn relation_larger_than_a_segment() {
    let Some(mut pair) = Pair::new(17, 18) else {
        return;
    };
    pair.old.start();
    psql_file(
        &pair.old,
        &pair.new.bindir,
        "postgres",
        &fixture("big_table.sql"),
        &[],
    );
    let before = contents(&pair.old);
    let relfilenode: u32 = pair
        .old
        .client("postgres")
        .query_one(
            "SELECT relfilenode FROM pg_class WHERE relname = 'big'",
            &[],
        )
        .unwrap()
        .get(0);
    pair.old.stop();
    let segment = |dir: &Path| dir.join(format!("base/5/{relfilenode}.1"));
    assert!(
        segment(&pair.old.datadir).exists(),
        "the fixture must reach a second segment"
    );
    upgrade(&pair, &["--link"]);
    assert!(segment(&pair.new.datadir).exists());
    pair.new.start();
    assert_eq!(before, contents(&pair.new));
    pair.new.stop();
}

/// A view that calls a system function the new major no longer has
/// (pg_stop_backup(), removed in 15) cannot be restored: a clear error
/// naming it, the state of each cluster, and in copy mode an old cluster
/// that is untouched.
#[test]
fn failed_restore_leaves_the_old_cluster_intact() {
    let Some(mut pair) = Pair::new(12, 18) else {
        return;
    };
    pair.old.start();
    pair.old.sql(
        "postgres",
        "CREATE TABLE t AS SELECT 1 AS x; CREATE VIEW legacy_backup AS SELECT pg_stop_backup();",
    );
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let old_snapshot = snapshot(&pair.old.datadir);
    let mut args = pair.dir_args();
    args.extend(["--copy".into(), "--json".into()]);
    let run = pair.run(&args);
    assert_eq!(run.status, 3, "{}", run.stderr);
    let error = run.error();
    assert_eq!(error["code"], "restore_failed");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("pg_stop_backup"),
        "{error}"
    );
    assert_eq!(error["clusters"]["old"], "started_and_stopped");
    assert_eq!(error["clusters"]["new"], "incomplete");
    // The step and where to read more, as fields.
    assert_eq!(error["step"], "restore-schema", "{error}");
    let log = std::path::Path::new(error["log"].as_str().expect("a log named"));
    assert!(log.exists(), "{error}");
    let remedy = error["remedy"].as_str().unwrap();
    assert!(
        remedy.contains("old cluster is unchanged") && remedy.contains("pg-migrate revert -D"),
        "{remedy}"
    );
    assert_data_files_untouched(&old_snapshot, &snapshot(&pair.old.datadir));
    // The logs are kept and named; the failing database's log says why.
    let logs = std::path::PathBuf::from(run.summary()["logs"].as_str().expect("logs named"));
    let said = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .any(|text| text.contains("pg_stop_backup"));
    assert!(said, "no log in {} names the problem", logs.display());
    // The copies made while the catalog was restored are gone with the run.
    let run_dir = logs.parent().unwrap();
    assert!(run_dir.join("dump").is_dir());
    assert!(
        !run_dir.join("staging").exists(),
        "copies left in {}",
        run_dir.display()
    );
    pair.old.start();
    assert_same_state(
        &before,
        &capture(&pair.old, &pair.new.bindir),
        (18, 18),
        "old cluster after a failed upgrade",
    );
    pair.old.stop();
}

/// `--link` across filesystems is found by the checks, before anything changes.
#[test]
fn link_across_filesystems_is_refused_by_the_checks() {
    if require(15).is_none() || require(18).is_none() {
        return;
    }
    let shm = Path::new("/dev/shm");
    let same_device = |a: &Path, b: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(a).unwrap().dev() == std::fs::metadata(b).unwrap().dev()
    };
    if !shm.is_dir() || same_device(shm, Path::new("/tmp")) {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI machines have /dev/shm on tmpfs"
        );
        eprintln!("SKIP: no second filesystem");
        return;
    }
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    let elsewhere = pgm_testkit::Sandbox::new_in(shm);
    let new = elsewhere.cluster("new", 18, no_checksums(18));
    pair.old.start();
    pair.old.sql("postgres", "CREATE TABLE t AS SELECT 1 AS x;");
    pair.old.stop();
    let (old_before, new_before) = (snapshot(&pair.old.datadir), snapshot(&new.datadir));
    let mut args = pair.dir_args();
    let at = args.iter().position(|a| a == "-D").unwrap();
    args[at + 1] = new.datadir.clone().into();
    args.extend(["--link".into(), "--json".into()]);
    let run = pair.run(&args);
    assert_refused(&run, "transfer-mode", "cross_device_link");
    assert_same_tree(&old_before, &snapshot(&pair.old.datadir), "old cluster");
    assert_same_tree(&new_before, &snapshot(&new.datadir), "new cluster");
    // The same pair in copy mode is fine.
    let mut args = pair.dir_args();
    args[at + 1] = new.datadir.clone().into();
    args.extend(["-c".into(), "--copy".into(), "--json".into()]);
    let run = pair.run(&args);
    assert_eq!(run.check("transfer-mode")["status"], "pass");
}

/// A file that cannot be read fails the copy; the old cluster stays intact.
#[test]
fn failed_transfer_in_copy_mode() {
    use std::os::unix::fs::PermissionsExt;
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    pair.old.sql(
        "postgres",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g;",
    );
    let path: String = pair
        .old
        .client("postgres")
        .query_one("SELECT pg_relation_filepath('t')", &[])
        .unwrap()
        .get(0);
    pair.old.stop();
    let file = pair.old.datadir.join(path);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut args = pair.dir_args();
    args.extend(["--copy".into(), "--json".into()]);
    let run = pair.run(&args);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(run.status, 3, "{}", run.stderr);
    assert_eq!(run.error()["code"], "transfer_failed");
    assert!(run.error()["message"]
        .as_str()
        .unwrap()
        .contains(file.to_str().unwrap()));
    assert_eq!(run.error()["clusters"]["new"], "incomplete");
    pair.old.start();
    let n: i64 = pair
        .old
        .client("postgres")
        .query_one("SELECT count(*) FROM t", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
    pair.old.stop();
}

/// The last step writes the operator's scripts after link mode's point of
/// no return: never into the working directory, which may not be writable
/// (a container's /), but beside the journal, named in the summary.
#[test]
fn an_unwritable_working_directory_fails_nothing() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    pair.old.sql(
        "postgres",
        "CREATE EXTENSION pg_stat_statements; CREATE TABLE t AS SELECT 1 AS x;",
    );
    pair.old.stop();
    let mut args: Vec<std::ffi::OsString> = vec!["--link".into(), "--json".into()];
    args.extend(pair.dir_args());
    let output = as_test_user(&pair.bin)
        .current_dir("/")
        .args(&args)
        .output()
        .unwrap();
    let run = pgm_testkit::finish(output);
    assert_eq!(run.status, 0, "{}", run.stderr);
    crate::json_schema::validate(&run.events);
    let scripts: Vec<String> = run.summary()["upgrade"]["scripts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let journal_dir = pair.new.datadir.join("pg_migrate.d");
    for name in ["update_extensions.sql", "delete_old_cluster.sh"] {
        let path = journal_dir.join(name);
        assert!(path.is_file(), "{} was not written", path.display());
        assert!(
            scripts.iter().any(|s| std::path::Path::new(s) == path),
            "{name} not in {scripts:?}"
        );
    }
    let update = std::fs::read_to_string(journal_dir.join("update_extensions.sql")).unwrap();
    assert!(update.contains("pg_stat_statements"), "{update}");
}

/// With the sequences' values in the dump (--sequence-data, as an upgrade
/// in one go takes them), pg_dump locks every sequence too: 5,000 tables
/// (which alone would fit the default lock table of 64 × 100) with two
/// serial columns each are 15,000 locks in one transaction, far more than
/// it holds, and the old server must be given a larger one for the dump.
#[test]
fn the_dump_is_given_locks_for_its_sequences_too() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    for batch in 0..10 {
        pair.old.sql(
            "postgres",
            &format!(
                "DO $$ BEGIN FOR i IN {} .. {} LOOP
                   EXECUTE format('CREATE TABLE t%s (id serial, other serial)', i);
                 END LOOP; END $$;",
                batch * 500 + 1,
                batch * 500 + 500
            ),
        );
    }
    pair.old.stop();
    let mut args: Vec<std::ffi::OsString> = vec!["--link".into(), "--json".into()];
    args.extend(pair.dir_args());
    let run = pair.run(&args);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("restarts with max_locks_per_transaction"),
        "{}",
        run.stderr
    );
    crate::json_schema::validate(&run.events);
    assert!(
        run.events_named("notice")
            .iter()
            .any(|e| e["code"] == "old_lock_table_raised"),
        "{:?}",
        run.events
    );
}

/// Clusters whose local connections need a password (scram-sha-256 on the
/// socket): found in PGPASSWORD, PGPASSFILE or ~/.pgpass as libpq finds
/// it, for our connections and the client programs alike; without one, a
/// refusal that says so; the password itself nowhere in what pg-migrate
/// writes or prints.
#[test]
fn clusters_that_need_a_password_upgrade_with_pgpassword_pgpassfile_or_pgpass() {
    const SECRET: &str = "s3cret-ZQX-pw";
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    add_some_data(&mut pair.old);
    let user = pgm_testkit::test_user().name.clone();
    for cluster in [&mut pair.old, &mut pair.new] {
        cluster.with_running(|c| {
            c.sql(
                "postgres",
                &format!("ALTER ROLE \"{user}\" PASSWORD '{SECRET}'"),
            )
        });
        std::fs::write(
            cluster.datadir.join("pg_hba.conf"),
            "local all all scram-sha-256\n",
        )
        .unwrap();
    }
    let home = pair.sandbox.mkdir("home");
    let run_with = |env: &[(&str, &std::ffi::OsStr)], extra: &[&str]| {
        let mut command = as_test_user(&pair.bin);
        command
            .current_dir(pair.sandbox.path())
            .env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE");
        command.env("HOME", &home);
        for (key, value) in env {
            command.env(key, value);
        }
        command.args(pair.dir_args()).args(extra).arg("--json");
        pgm_testkit::finish(command.output().unwrap())
    };
    let no_secret = |run: &Run, what: &str| {
        assert!(
            !run.stdout.contains(SECRET),
            "{what}: stdout shows the password"
        );
        assert!(
            !run.stderr.contains(SECRET),
            "{what}: stderr shows the password"
        );
    };

    // No password anywhere: refused, saying where one is looked for.
    let (old_before, new_before) = pair.snapshots();
    let refused = run_with(&[], &["-c"]);
    assert_eq!(refused.status, 1, "{}", refused.stderr);
    assert_eq!(refused.check("old-connect")["code"], "password_needed");
    let text = refused.stdout.clone() + &refused.stderr;
    assert!(text.contains("password"), "{text}");
    assert!(
        text.contains("PGPASSWORD") && text.contains(".pgpass"),
        "{text}"
    );
    let (old_after, new_after) = pair.snapshots();
    crate::proof::assert_data_files_untouched(&old_before, &old_after);
    crate::proof::assert_data_files_untouched(&new_before, &new_after);

    // PGPASSWORD.
    let checked = run_with(&[("PGPASSWORD", SECRET.as_ref())], &["-c"]);
    assert_eq!(checked.status, 0, "{}", checked.stderr);
    no_secret(&checked, "PGPASSWORD");

    // PGPASSFILE: used when only its owner can read it, as libpq does.
    let passfile = pair.sandbox.path().join("passfile");
    std::fs::write(&passfile, format!("*:*:*:{user}:{SECRET}\n")).unwrap();
    pgm_testkit::chown_to_test_user(&passfile);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ignored = run_with(&[("PGPASSFILE", passfile.as_os_str())], &["-c"]);
    assert_ne!(ignored.status, 0, "a file others can read is ignored");
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let checked = run_with(&[("PGPASSFILE", passfile.as_os_str())], &["-c"]);
    assert_eq!(checked.status, 0, "{}", checked.stderr);

    // ~/.pgpass, for the upgrade itself (our connections, pg_dump,
    // pg_dumpall and the restore all need it).
    let pgpass = home.join(".pgpass");
    std::fs::write(&pgpass, format!("# the clusters\n*:*:*:{user}:{SECRET}\n")).unwrap();
    pgm_testkit::chown_to_test_user(&pgpass);
    pgm_testkit::chown_to_test_user(&home);
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let upgraded = run_with(&[], &["--copy", "--verify"]);
    assert_eq!(upgraded.status, 0, "{}", upgraded.stderr);
    no_secret(&upgraded, "~/.pgpass");
    for entry in walkdir::WalkDir::new(pair.new.datadir.join("pg_migrate.d"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
    {
        let bytes = std::fs::read(entry.path()).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the password",
            entry.path().display()
        );
    }
    // The new cluster asks for the password and has the old one's rows.
    pair.new.start();
    let connect = |password: Option<&str>| {
        let mut config = postgres::Config::new();
        config
            .host_path(&pair.new.sockdir)
            .port(pair.new.port)
            .user(&user)
            .dbname("app");
        if let Some(password) = password {
            config.password(password);
        }
        config.connect(postgres::NoTls)
    };
    assert!(
        connect(None).is_err(),
        "the new cluster asks for a password"
    );
    let rows: i64 = connect(Some(SECRET))
        .unwrap()
        .query_one("SELECT count(*) FROM items", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 500);
    pair.new.stop();
}
