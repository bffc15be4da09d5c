//! The online mode: `prepare` while the old cluster serves (a writer busy
//! throughout), `cutover` in the window, the result proven like every
//! upgrade; and every change that must stop a cutover, stopping it.

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::proof::*;
use crate::support::*;

fn args(words: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    words.iter().map(|w| w.as_ref().to_os_string()).collect()
}

pub fn prepare(pair: &Pair, extra: &[&str]) -> Run {
    let mut words = vec![OsString::from("prepare")];
    words.extend(pair.dir_args());
    words.extend(args(&[&"--json", &"-j", &"2"]));
    words.extend(extra.iter().map(OsString::from));
    let run = pair.run(&words);
    if run.status != 0 {
        eprintln!("prepare failed:\n{}", run.stderr);
    }
    crate::json_schema::validate(&run.events);
    run
}

pub fn cutover(pair: &Pair, extra: &[&str]) -> Run {
    let mut words = args(&[&"cutover", &"-D", &pair.new.datadir, &"--json"]);
    words.extend(extra.iter().map(OsString::from));
    let run = pair.run(&words);
    if run.status != 0 {
        eprintln!(
            "cutover failed ({}):\n{}\n{}",
            run.status, run.stderr, run.stdout
        );
    }
    crate::json_schema::validate(&run.events);
    run
}

fn state(pair: &Pair) -> String {
    std::fs::read_to_string(pair.new.datadir.join("pg_migrate.d/state"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A client that inserts rows and draws sequence values until stopped;
/// returns how many rows it wrote.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(cluster: &Cluster) -> Writer {
        let mut client = cluster.client("appdb");
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS public.live_writes (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), payload text)")
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, written) = (stop.clone(), written.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    client
                        .batch_execute("INSERT INTO public.live_writes (payload) SELECT md5(g::text) FROM generate_series(1, 20) g; UPDATE app.counters SET value = value + 1 WHERE name = 'b'")
                        .unwrap();
                    written.fetch_add(20, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })
        };
        Writer {
            stop,
            written,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.written.load(Ordering::SeqCst)
    }
}

fn prove_online(old_major: u32, new_major: u32, mode: &str) {
    let Some(mut pair) = Pair::new(old_major, new_major) else {
        return;
    };
    crate::proof::round_floats_for(old_major);
    pair.old.start();
    let tablespace = load_rich(&pair);
    pair.old.sql("postgres", crate::upgrade::VISIBILITY_SETUP);
    // Statistics the prepare carries (18): the new cluster must keep them
    // (a VACUUM or ANALYZE of its still empty tables would overwrite them).
    pair.old.sql("appdb", "ANALYZE app.orders");
    let stats_sql =
        "SELECT reltuples::bigint::text FROM pg_class WHERE oid = 'app.orders'::regclass";
    let old_stats: String = pair
        .old
        .client("appdb")
        .query_one(stats_sql, &[])
        .unwrap()
        .get(0);
    // The table the writer uses exists before prepare (creating it after
    // would be DDL).
    let writer = Writer::start(&pair.old);
    let run = prepare(&pair, &[mode]);
    assert_eq!(run.status, 0, "prepare:\n{}\n{}", run.stderr, run.stdout);
    assert_eq!(state(&pair), "prepared");
    let summary = run.summary();
    assert_eq!(summary["command"], "prepare");
    // Nobody can start the prepared cluster.
    let global = pair.new.datadir.join("global");
    assert!(!global.join("pg_control").exists() && global.join("pg_control.prepared").exists());
    // The writer goes on after prepare, and draws sequence values.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let written = writer.stop();
    assert!(written > 0);
    // ANALYZE is no DDL, though before 12 it rewrote the rows of extended
    // statistics' definitions (orders_stats) in the catalog.
    pair.old.sql("appdb", "ANALYZE app.orders");
    pair.old.sql(
        "appdb",
        "SELECT nextval('app.orders_id_seq') FROM generate_series(1, 7)",
    );
    // Rows whose fate only the commit log and multixacts know, made after
    // prepare: the cutover's hand-over must carry them.
    crate::upgrade::make_visibility_rows(&pair.old);
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    // The same old cluster by pg_upgrade, for a comparison without rules
    // (copy mode: the old cluster stays usable; pg_upgrade needs the old
    // installation's pg_controldata, which the server-only 10 and 11 lack).
    let by_pg_upgrade =
        (mode == "--copy" && old_major >= 12).then(|| pg_upgrade_result(&pair, &tablespace));

    let run = cutover(&pair, &[]);
    assert_eq!(run.status, 0, "cutover:\n{}\n{}", run.stderr, run.stdout);
    assert_eq!(state(&pair), "complete");
    let steps: Vec<&str> = run.steps_ended();
    assert!(
        steps.contains(&"verify-unchanged") && steps.contains(&"set-horizons"),
        "{steps:?}"
    );
    pair.new.start();
    let after = capture(&pair.new, &pair.new.bindir);
    assert_same_state(
        &before,
        &after,
        (old_major, new_major),
        &format!("prepare + cutover {old_major} -> {new_major} {mode}"),
    );
    let rows: i64 = pair
        .new
        .client("appdb")
        .query_one("SELECT count(*) FROM public.live_writes", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows as u64, written, "every row the writer wrote arrived");
    if let Some(by_pg_upgrade) = by_pg_upgrade {
        assert_same_dump(
            &by_pg_upgrade.dump,
            &after.dump,
            "pg_upgrade vs prepare + cutover",
        );
        assert_eq!(by_pg_upgrade.contents, after.contents);
    }
    let new_stats: String = pair
        .new
        .client("appdb")
        .query_one(stats_sql, &[])
        .unwrap()
        .get(0);
    assert_eq!(new_stats, old_stats, "the restored statistics stay");
    crate::upgrade::assert_visibility(&pair.new, new_major);
    assert_healthy(&pair.new);
    // The freeze held: every catalog tuple of every database checks out,
    // and freezing everything again finds nothing wrong.
    let damage = catalog_damage(&pair.new);
    assert!(damage.is_empty(), "{damage:#?}");
    for db in databases_of(&pair.new) {
        pair.new.sql(&db, "VACUUM (FREEZE)");
    }
    // The scripts the finished upgrade leaves, from what prepare found:
    // the extensions the new cluster holds at versions older than its
    // installation's are those update_extensions.sql updates.
    let mut stale = Vec::new();
    for db in databases_of(&pair.new) {
        for row in pair
            .new
            .client(&db)
            .query(
                "SELECT name FROM pg_available_extensions WHERE installed_version <> default_version ORDER BY 1",
                &[],
            )
            .unwrap()
        {
            stale.push(format!("ALTER EXTENSION \"{}\" UPDATE;", row.get::<_, String>(0)));
        }
    }
    let script =
        std::fs::read_to_string(pair.new.datadir.join("pg_migrate.d/update_extensions.sql"));
    match script {
        Ok(script) => {
            assert!(!stale.is_empty(), "a script with nothing to do:\n{script}");
            for line in &stale {
                assert!(script.contains(line.as_str()), "{line} missing:\n{script}");
            }
        }
        Err(_) => assert!(stale.is_empty(), "no update_extensions.sql for {stale:?}"),
    }
    pair.new.stop();
}

fn databases_of(cluster: &Cluster) -> Vec<String> {
    cluster
        .client("postgres")
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn ORDER BY oid",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// What amcheck's verify_heapam finds wrong in the tuples of every catalog
/// table (and its TOAST table) of every database: a catalog row the freeze
/// missed has an xmin older than the horizon the cutover set, or newer
/// than the old cluster's next transaction.
fn catalog_damage(cluster: &Cluster) -> Vec<String> {
    let mut damage = Vec::new();
    for db in databases_of(cluster) {
        let mut client = cluster.client(&db);
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            .unwrap();
        for row in client
            .query(
                "SELECT c.oid::regclass::text, v.msg
                   FROM pg_class c, LATERAL verify_heapam(c.oid) v
                  WHERE c.oid < 16384 AND c.relkind IN ('r', 't', 'm')
                  ORDER BY c.oid",
                &[],
            )
            .unwrap()
        {
            damage.push(format!(
                "{db}: {}: {}",
                row.get::<_, String>(0),
                row.get::<_, String>(1)
            ));
        }
    }
    damage
}

#[test]
fn prepare_then_cutover_link_15_to_18() {
    prove_online(15, 18, "--link");
}

#[test]
fn prepare_then_cutover_copy_17_to_18() {
    prove_online(17, 18, "--copy");
}

#[test]
fn prepare_then_cutover_link_10_to_18() {
    prove_online(10, 18, "--link");
}

#[test]
fn prepare_then_cutover_copy_11_to_18() {
    prove_online(11, 18, "--copy");
}

/// PostgreSQL 18's pg_upgrade on a copy of the (stopped) old cluster: the
/// new cluster's state.
fn pg_upgrade_result(pair: &Pair, tablespace: &std::path::Path) -> State {
    let old_copy = pair.sandbox.path().join("old-for-pg_upgrade");
    copy_tree(&pair.old.datadir, &old_copy);
    // Its tablespace: a copy too, the link re-pointed.
    let ts_copy = pair.sandbox.path().join("tblspc-for-pg_upgrade");
    copy_tree(tablespace, &ts_copy);
    // Without the new version's directory prepare made there.
    clear_new_tablespace_dirs(&ts_copy);
    for link in std::fs::read_dir(old_copy.join("pg_tblspc")).unwrap() {
        let link = link.unwrap().path();
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&ts_copy, &link).unwrap();
    }
    let mut target = pair.sandbox.cluster("by-pg_upgrade", 18, no_checksums(18));
    run_ok(
        as_test_user(pair.new.bindir.join("pg_upgrade"))
            .current_dir(pair.sandbox.path())
            .arg("-b")
            .arg(&pair.old.bindir)
            .arg("-B")
            .arg(&pair.new.bindir)
            .arg("-d")
            .arg(&old_copy)
            .arg("-D")
            .arg(&target.datadir)
            .arg("-s")
            .arg(pair.sandbox.path())
            .args(["--copy", "--no-sync"]),
    );
    target.start();
    let state = capture(&target, &pair.new.bindir);
    target.stop();
    // The copy's tablespace has another path; nothing else may differ.
    State {
        dump: state
            .dump
            .replace(ts_copy.to_str().unwrap(), tablespace.to_str().unwrap()),
        contents: state.contents,
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Every kind of change that must stop a cutover stops it, with nothing
/// changed, the old cluster starting as before and the prepared one
/// discardable; ordinary writes, temporary tables, VACUUM and ANALYZE
/// after prepare do not stop it.
#[test]
fn cutover_refuses_what_changed_since_prepare() {
    cutover_refuses_what_changed_since_prepare_from(15, None);
}

/// Before 12, ANALYZE rewrote extended statistics' rows in the catalog:
/// it must still pass, and a change to their definition still refuse.
#[test]
fn cutover_from_11_refuses_a_statistics_change_not_an_analyze() {
    cutover_refuses_what_changed_since_prepare_from(
        11,
        Some(&["a new table", "extended statistics renamed"]),
    );
}

/// The cases of [`cutover_refuses_what_changed_since_prepare`] from `old`,
/// all of them or those named in `only`.
fn cutover_refuses_what_changed_since_prepare_from(old: u32, only: Option<&[&str]>) {
    let Some(mut pair) = Pair::new(old, 18) else {
        return;
    };
    crate::proof::round_floats_for(old);
    add_some_data(&mut pair.old);
    pair.old.start();
    pair.old.sql(
        "app",
        "CREATE SEQUENCE ticket; SELECT nextval('ticket');
         CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 300) g;
         CREATE STATISTICS t_stats (dependencies) ON id, v FROM t;
         CREATE ROLE app_reader; GRANT SELECT ON t TO app_reader;
         SELECT lo_from_bytea(424242, 'a large object');",
    );
    // A session with a temporary table lives through prepare.
    let mut session = pair.old.client("app");
    session
        .batch_execute("CREATE TEMPORARY TABLE scratch AS SELECT 1 AS x")
        .unwrap();
    let run = prepare(&pair, &["--copy"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    drop(session);
    pair.old.stop();
    // Each case starts from the same prepared pair.
    let templates = pair.sandbox.mkdir("templates");
    copy_tree(&pair.old.datadir, &templates.join("old"));
    copy_tree(&pair.new.datadir, &templates.join("new"));
    let restore = |pair: &Pair| {
        copy_tree(&templates.join("old"), &pair.old.datadir);
        copy_tree(&templates.join("new"), &pair.new.datadir);
    };

    let refusing = [
        ("a new table", "CREATE TABLE t2 (x int)", "catalog"),
        (
            "a rename made and undone",
            "ALTER TABLE t RENAME TO t_tmp; ALTER TABLE t_tmp RENAME TO t",
            "catalog pg_class",
        ),
        (
            "a new role",
            "CREATE ROLE late_comer",
            "roles or tablespaces",
        ),
        (
            "a password",
            "ALTER ROLE app_reader PASSWORD 'secret'",
            "roles or tablespaces",
        ),
        (
            "a large object created",
            "SELECT lo_create(0)",
            "pg_largeobject_metadata",
        ),
        (
            "a large object removed",
            "SELECT lo_unlink(424242)",
            "pg_largeobject_metadata",
        ),
        (
            "extended statistics renamed",
            "ALTER STATISTICS t_stats RENAME TO t_statistics",
            "catalog pg_statistic_ext",
        ),
        ("TRUNCATE", "TRUNCATE t", "relation files"),
        ("VACUUM FULL", "VACUUM FULL t", "relation files"),
        ("REINDEX", "REINDEX TABLE t", "relation files"),
        (
            "a sequence restarted",
            "ALTER SEQUENCE ticket RESTART",
            "relation files",
        ),
        (
            "a database created",
            "CREATE DATABASE late",
            "database \"late\" is new",
        ),
        (
            "a database setting",
            "ALTER DATABASE app SET work_mem = '8MB'",
            "pg_db_role_setting",
        ),
        (
            "a comment on a role",
            "COMMENT ON ROLE app_reader IS 'reads'",
            "pg_shdescription",
        ),
        (
            "a prepared transaction",
            "BEGIN; INSERT INTO t VALUES (5000, 'pending'); PREPARE TRANSACTION 'pending'",
            "prepared transactions 'pending' (database app)",
        ),
    ];
    for (what, sql, expected) in refusing {
        if only.is_some_and(|only| !only.contains(&what)) {
            continue;
        }
        restore(&pair);
        if what == "a prepared transaction" {
            // A setting, not a catalog change.
            let conf = pair.old.datadir.join("postgresql.auto.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str("max_prepared_transactions = 2\n");
            std::fs::write(&conf, text).unwrap();
        }
        pair.old.start();
        pair.old.sql("app", sql);
        pair.old.stop();
        pair.old.start();
        let old_before = crate::proof::capture(&pair.old, &pair.new.bindir);
        pair.old.stop();
        let new_before = snapshot(&pair.new.datadir);
        let run = cutover(&pair, &[]);
        assert_eq!(run.status, 3, "{what}: {}", run.stderr);
        let error = run.error();
        assert_eq!(error["code"], "old_cluster_changed", "{what}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(expected), "{what}: {message}");
        assert!(error["remedy"]
            .as_str()
            .unwrap()
            .contains("pg-migrate discard"));
        assert_eq!(error["clusters"]["old"], "started_and_stopped", "{what}");
        // The prepared cluster is untouched; the old one starts as before.
        assert_same_tree(&new_before, &snapshot(&pair.new.datadir), what);
        assert_eq!(state(&pair), "prepared", "{what}");
        pair.old.start();
        let old_after = crate::proof::capture(&pair.old, &pair.new.bindir);
        assert_same_state(&old_before, &old_after, (18, 18), what);
        pair.old.stop();
        // And the prepared cluster can be thrown away.
        let discarded = pair.run(&args(&[&"discard", &"-D", &pair.new.datadir, &"--json"]));
        crate::json_schema::validate(&discarded.events);
        assert_eq!(discarded.status, 0, "{what}: {}", discarded.stderr);
        assert_eq!(state(&pair), "reverted", "{what}");
    }

    // Ordinary writes, temporary tables, VACUUM and ANALYZE are fine.
    restore(&pair);
    pair.old.start();
    pair.old.sql(
        "app",
        "INSERT INTO t VALUES (1000, 'late'); UPDATE t SET v = 'changed' WHERE id < 10; DELETE FROM t WHERE id BETWEEN 20 AND 29;
         SELECT nextval('ticket'); CREATE TEMPORARY TABLE passing (x int); INSERT INTO passing VALUES (1);
         SELECT lo_put(424242, 0, 'rewritten');",
    );
    pair.old.sql("app", "VACUUM ANALYZE t");
    pair.old.sql("app", "ANALYZE");
    let before = crate::proof::capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let run = cutover(&pair, &[]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    pair.new.start();
    let after = crate::proof::capture(&pair.new, &pair.new.bindir);
    assert_same_state(&before, &after, (old, 18), "cutover after writes");
    pair.new.stop();
}

/// The freeze is what makes the prepared catalog independent of the commit
/// log the cutover brings; without it a cluster starts and dumps "fine"
/// but is corrupt. A prepare whose freeze did not happen (a test hook
/// skips it) is stopped by the proof, and can be run again.
#[test]
fn a_prepare_without_its_freeze_is_stopped_by_the_proof() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    add_some_data(&mut pair.old);
    let mut words = vec![OsString::from("prepare")];
    words.extend(pair.dir_args());
    words.extend(args(&[&"--json", &"--link"]));
    let mut command = as_test_user(&pair.bin);
    command
        .current_dir(pair.sandbox.path())
        .args(&words)
        .env("PG_MIGRATE_TEST_SKIP_FREEZE", "1");
    let run = pgm_testkit::finish(command.output().unwrap());
    crate::json_schema::validate(&run.events);
    assert_eq!(run.status, 3, "{}", run.stderr);
    let error = run.error();
    assert_eq!(error["code"], "freeze_failed", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not proven frozen"),
        "{error}"
    );
    assert!(error["remedy"].as_str().unwrap().contains("prepare again"));
    // Run again (the hook gone): it starts over and prepares.
    let again = prepare(&pair, &["--link"]);
    assert_eq!(again.status, 0, "{}", again.stderr);
    assert_eq!(state(&pair), "prepared");
}

/// What the freeze protects against is real and is found: a prepare that
/// skips the freeze and its proof (a test hook) gives, after the cutover,
/// a cluster that starts, but whose catalog tuples amcheck finds damaged.
/// (The proven runs above find none with the same check.)
#[test]
fn without_the_freeze_the_cutover_leaves_damage_amcheck_finds() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    add_some_data(&mut pair.old);
    let mut words = vec![OsString::from("prepare")];
    words.extend(pair.dir_args());
    words.extend(args(&[&"--json", &"--link"]));
    let mut command = as_test_user(&pair.bin);
    command
        .current_dir(pair.sandbox.path())
        .args(&words)
        .env("PG_MIGRATE_TEST_SKIP_FREEZE", "all");
    let run = pgm_testkit::finish(command.output().unwrap());
    assert_eq!(run.status, 0, "{}", run.stderr);
    // The catalog rows the restore wrote are judged by the old commit log:
    // the server cannot even find its databases, or, where it can, amcheck
    // finds tuples outside the horizons.
    let run = cutover(&pair, &[]);
    if run.status == 0 {
        pair.new.start();
        let damage = catalog_damage(&pair.new);
        assert!(!damage.is_empty(), "amcheck found nothing wrong");
        pair.new.stop();
    } else {
        let error = run.error();
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("cache lookup failed"),
            "{error}"
        );
    }
}

/// A pair with a little of everything and the visibility probes' table,
/// its old server running.
fn small_running_pair() -> Option<Pair> {
    let mut pair = Pair::new(15, 18)?;
    add_some_data(&mut pair.old);
    pair.old.start();
    pair.old.sql("postgres", crate::upgrade::VISIBILITY_SETUP);
    Some(pair)
}

fn run_killed(pair: &Pair, words: Vec<OsString>, point: &str) {
    let mut command = as_test_user(&pair.bin);
    command
        .current_dir(pair.sandbox.path())
        .args(&words)
        .env("PG_MIGRATE_TEST_KILL_AT", point);
    let run = pgm_testkit::finish(command.output().unwrap());
    assert_eq!(
        run.status, -1,
        "kill point {point} was never reached (exit {}):\n{}",
        run.status, run.stderr
    );
}

fn prepare_words(pair: &Pair) -> Vec<OsString> {
    let mut words = vec![OsString::from("prepare")];
    words.extend(pair.dir_args());
    words.extend(args(&[&"--json", &"--link", &"-j", &"2"]));
    words
}

/// prepare killed at `point`: run again it prepares, and the cutover
/// proves; or, killed again, discard leaves the old cluster serving as
/// before and the new one as initdb made it.
fn prepare_killed(point: &str) {
    let Some(mut pair) = small_running_pair() else {
        return;
    };
    run_killed(&pair, prepare_words(&pair), point);
    assert_eq!(state(&pair), "upgrading", "{point}");
    // The old cluster never stopped serving.
    pair.old.sql("postgres", "SELECT 1");
    let again = prepare(&pair, &["--link"]);
    assert_eq!(again.status, 0, "{point}: {}", again.stderr);
    crate::upgrade::make_visibility_rows(&pair.old);
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let run = cutover(&pair, &[]);
    assert_eq!(run.status, 0, "{point}: {}", run.stderr);
    pair.new.start();
    let after = capture(&pair.new, &pair.new.bindir);
    assert_same_state(&before, &after, (15, 18), point);
    crate::upgrade::assert_visibility(&pair.new, 18);
    pair.new.stop();

    let Some(mut other) = small_running_pair() else {
        return;
    };
    let before = capture(&other.old, &other.new.bindir);
    run_killed(&other, prepare_words(&other), point);
    let discarded = other.run(&args(&[&"discard", &"-D", &other.new.datadir, &"--json"]));
    crate::json_schema::validate(&discarded.events);
    assert_eq!(discarded.status, 0, "{point}: {}", discarded.stderr);
    let after = capture(&other.old, &other.new.bindir);
    assert_same_state(&before, &after, (18, 18), point);
    other.old.stop();
    // The new cluster is back as initdb made it.
    other.new.with_running(|c| {
        let mut client = c.client("postgres");
        let databases: i64 = client
            .query_one("SELECT count(*) FROM pg_database", &[])
            .unwrap()
            .get(0);
        let relations: i64 = client
            .query_one("SELECT count(*) FROM pg_class WHERE oid >= 16384", &[])
            .unwrap()
            .get(0);
        assert_eq!((databases, relations), (3, 0), "{point}");
    });
}

/// cutover killed at `point`: run again it finishes, proven; or, killed
/// again, revert gives back the old cluster as it was.
fn cutover_killed(point: &str) {
    let Some(mut pair) = small_running_pair() else {
        return;
    };
    let run = prepare(&pair, &["--link"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    // New files since prepare (the free-space and visibility maps VACUUM
    // makes), for the cutover's transfer to link.
    pair.old.sql("postgres", "VACUUM vis");
    crate::upgrade::make_visibility_rows(&pair.old);
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let words = args(&[&"cutover", &"-D", &pair.new.datadir, &"--json"]);
    run_killed(&pair, words.clone(), point);
    let resumed = cutover(&pair, &[]);
    assert_eq!(resumed.status, 0, "{point}: {}", resumed.stderr);
    pair.new.start();
    let after = capture(&pair.new, &pair.new.bindir);
    assert_same_state(&before, &after, (15, 18), point);
    crate::upgrade::assert_visibility(&pair.new, 18);
    // template0, opened for the horizons, is closed again.
    let template0_open: bool = pair
        .new
        .client("postgres")
        .query_one(
            "SELECT datallowconn FROM pg_database WHERE datname = 'template0'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!template0_open, "{point}: template0 left open");
    pair.new.stop();

    let Some(mut other) = small_running_pair() else {
        return;
    };
    let run = prepare(&other, &["--link"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    other.old.sql("postgres", "VACUUM vis");
    let before = capture(&other.old, &other.new.bindir);
    other.old.stop();
    let words = args(&[&"cutover", &"-D", &other.new.datadir, &"--json"]);
    run_killed(&other, words, point);
    let reverted = other.run(&args(&[&"revert", &"-D", &other.new.datadir, &"--json"]));
    crate::json_schema::validate(&reverted.events);
    assert_eq!(reverted.status, 0, "{point}: {}", reverted.stderr);
    other.old.start();
    let again = capture(&other.old, &other.new.bindir);
    assert_same_state(&before, &again, (18, 18), point);
    other.old.stop();
}

macro_rules! kill_points {
    ($($name:ident: $kind:ident($point:expr),)*) => {
        $(
            #[test]
            fn $name() {
                $kind($point);
            }
        )*
    };
}

kill_points! {
    prepare_killed_after_dump: prepare_killed("after:dump-old"),
    prepare_killed_in_the_restore: prepare_killed("restore-schema:database:2"),
    prepare_killed_after_the_freeze: prepare_killed("freeze-catalogs:frozen"),
    prepare_killed_linking_ahead: prepare_killed("transfer:file:3"),
    prepare_killed_before_hiding: prepare_killed("after:link-ahead"),
    cutover_killed_after_protecting: cutover_killed("after:protect-old"),
    cutover_killed_in_the_handover: cutover_killed("handover-counters:commit-log-copied"),
    cutover_killed_with_template0_open: cutover_killed("set-horizons:template0-open"),
    cutover_killed_after_the_horizons: cutover_killed("after:set-horizons"),
    cutover_killed_linking: cutover_killed("transfer:file:1"),
    cutover_killed_after_sync: cutover_killed("after:sync"),
}

/// Copy mode leaves the old cluster startable during the cutover. Once the
/// counters are handed over, a cutover killed and run again must find the
/// old cluster as it left it: if it ran in between, it refuses (the half
/// made cluster cannot be finished from it), and revert goes back.
#[test]
fn a_cutover_resumed_after_the_old_cluster_ran_refuses() {
    let Some(mut pair) = small_running_pair() else {
        return;
    };
    let run = prepare(&pair, &["--copy"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    pair.old.stop();
    let words = args(&[&"cutover", &"-D", &pair.new.datadir, &"--json"]);
    run_killed(&pair, words, "after:handover-counters");
    pair.old
        .with_running(|c| c.sql("postgres", "INSERT INTO vis VALUES (7000, 'too late')"));
    let run = cutover(&pair, &[]);
    assert_eq!(run.status, 3, "{}", run.stderr);
    let error = run.error();
    assert_eq!(error["code"], "old_cluster_changed", "{error}");
    assert!(error["message"].as_str().unwrap().contains("has run since"));
    let reverted = pair.run(&args(&[&"revert", &"-D", &pair.new.datadir, &"--json"]));
    assert_eq!(reverted.status, 0, "{}", reverted.stderr);
    pair.old
        .with_running(|c| c.sql("postgres", "SELECT * FROM vis WHERE id = 7000"));
}

/// What prepare cannot carry is refused before anything is changed, the
/// old server serving on: a lock table too small for pg_dump's locks (a
/// serving server cannot be restarted with a larger one), subscriptions.
/// And in link mode a cutover refuses before its point of no return: the
/// old cluster keeps its pg_control and starts as before.
/// From 17 on an upgrade carries a subscription's progress, which moves on
/// after prepare: refused, naming it. Before 17 no upgrade carries it, so
/// prepare loses nothing an upgrade in one go would keep: not refused.
#[test]
fn prepare_refuses_subscriptions_only_where_an_upgrade_carries_their_progress() {
    for old_major in [17, 15] {
        let Some(mut pair) = Pair::new(old_major, 18) else {
            return;
        };
        pair.old.start();
        pair.old.sql(
            "postgres",
            "CREATE PUBLICATION everything FOR ALL TABLES;
             CREATE TABLE t (x int);",
        );
        pair.old.sql(
            "postgres",
            "CREATE SUBSCRIPTION elsewhere CONNECTION 'dbname=nowhere' PUBLICATION everything WITH (connect = false)",
        );
        let run = prepare(&pair, &["--link"]);
        if old_major >= 17 {
            assert_eq!(run.status, 3, "{}", run.stderr);
            let error = run.error();
            assert_eq!(error["code"], "prepare_not_possible", "{error}");
            assert!(
                error["message"]
                    .as_str()
                    .unwrap()
                    .contains("subscriptions elsewhere"),
                "{error}"
            );
            assert!(!pair.new.datadir.join("pg_migrate.d").exists());
        } else {
            assert_eq!(run.status, 0, "{}", run.stderr);
            let discarded = pair.run(&[
                "discard".into(),
                "-D".into(),
                pair.new.datadir.clone().into(),
                "--json".into(),
            ]);
            assert_eq!(discarded.status, 0, "{}", discarded.stderr);
        }
        pair.old.sql(
            "postgres",
            "ALTER SUBSCRIPTION elsewhere SET (slot_name = NONE)",
        );
        pair.old.sql("postgres", "DROP SUBSCRIPTION elsewhere");
        pair.old.stop();
    }
}

#[test]
fn prepare_refuses_what_it_cannot_carry() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    add_some_data(&mut pair.old);
    pair.old.start();
    pair.old.sql(
        "postgres",
        "ALTER SYSTEM SET max_locks_per_transaction = 10",
    );
    pair.old
        .sql("postgres", "ALTER SYSTEM SET max_connections = 20");
    pair.old.stop();
    pair.old.start();
    let refused = |pair: &Pair, code: &str, remedy: &str| {
        let old_before = capture(&pair.old, &pair.new.bindir);
        let new_before = snapshot(&pair.new.datadir);
        let run = prepare(pair, &["--link"]);
        assert_eq!(run.status, 3, "{code}: {}", run.stderr);
        let error = run.error();
        assert_eq!(error["code"], code, "{error}");
        let text = error["remedy"].as_str().unwrap();
        assert!(
            text.contains(remedy) && text.contains("nothing was changed"),
            "{error}"
        );
        // The old server served throughout and is as it was; the new
        // cluster's data files are as initdb made them, and no journal.
        pair.old.sql("postgres", "SELECT 1");
        let old_after = capture(&pair.old, &pair.new.bindir);
        assert_same_state(&old_before, &old_after, (18, 18), code);
        crate::proof::assert_data_files_untouched(&new_before, &snapshot(&pair.new.datadir));
        assert!(!pair.new.datadir.join("pg_migrate.d").exists(), "{code}");
    };
    refused(
        &pair,
        "lock_table_too_small",
        "max_locks_per_transaction = ",
    );
    pair.old
        .sql("postgres", "ALTER SYSTEM RESET max_locks_per_transaction");
    pair.old
        .sql("postgres", "ALTER SYSTEM RESET max_connections");
    pair.old.stop();
    pair.old.start();

    // Link mode: prepared, then DDL; the cutover refuses with the old
    // cluster's pg_control where it was.
    let run = prepare(&pair, &["--link"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    pair.old.sql("app", "CREATE TABLE late (x int)");
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let new_before = snapshot(&pair.new.datadir);
    let run = cutover(&pair, &[]);
    assert_eq!(run.status, 3, "{}", run.stderr);
    assert_eq!(run.error()["code"], "old_cluster_changed");
    let global = pair.old.datadir.join("global");
    assert!(global.join("pg_control").exists() && !global.join("pg_control.old").exists());
    assert_same_tree(&new_before, &snapshot(&pair.new.datadir), "link refusal");
    assert_eq!(state(&pair), "prepared");
    pair.old.start();
    let after = capture(&pair.old, &pair.new.bindir);
    assert_same_state(&before, &after, (18, 18), "link refusal");
    let discarded = pair.run(&args(&[&"discard", &"-D", &pair.new.datadir, &"--json"]));
    assert_eq!(discarded.status, 0, "{}", discarded.stderr);
    pair.old.sql("app", "SELECT count(*) FROM late");
    pair.old.stop();
}

/// The online mode does not make logical slots again: prepare refuses an
/// old cluster that has one, before anything is changed, and the slot
/// stays where it was.
#[test]
fn prepare_refuses_logical_slots() {
    let Some(mut pair) = Pair::new(17, 18) else {
        return;
    };
    // Both sides fit for slots, so that the checks pass and only the
    // online mode's own refusal is left.
    for datadir in [&pair.old.datadir, &pair.new.datadir] {
        let conf = datadir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nwal_level = logical\n");
        std::fs::write(&conf, text).unwrap();
    }
    pair.old.start();
    pair.old.sql(
        "postgres",
        "SELECT pg_create_logical_replication_slot('feed', 'test_decoding')",
    );
    let old_before = capture(&pair.old, &pair.new.bindir);
    let new_before = snapshot(&pair.new.datadir);
    let run = prepare(&pair, &["--copy"]);
    assert_eq!(run.status, 3, "{}", run.stderr);
    let error = run.error();
    assert_eq!(error["code"], "prepare_not_possible", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("logical replication slots feed (database postgres)"),
        "{error}"
    );
    assert!(error["remedy"]
        .as_str()
        .unwrap()
        .contains("nothing was changed"));
    let slot: String = pair
        .old
        .client("postgres")
        .query_one("SELECT slot_name::text FROM pg_replication_slots", &[])
        .unwrap()
        .get(0);
    assert_eq!(slot, "feed");
    let old_after = capture(&pair.old, &pair.new.bindir);
    assert_same_state(&old_before, &old_after, (18, 18), "slot refusal");
    crate::proof::assert_data_files_untouched(&new_before, &snapshot(&pair.new.datadir));
    assert!(!pair.new.datadir.join("pg_migrate.d").exists());
    pair.old.stop();
}

/// pg_dump locks one entry per ordinary or partitioned table, nothing for
/// indexes, TOAST tables or sequences: a server with the default lock table
/// (64 × 100 slots) serves two databases of 1,500 tables (6,000 relations
/// each, with their keys and TOAST) and prepare, at -j 2, fits beside it.
#[test]
fn prepare_counts_the_locks_pg_dump_takes_not_every_relation() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    for db in ["one", "two"] {
        pair.old.sql("postgres", &format!("CREATE DATABASE {db}"));
        for batch in 0..3 {
            pair.old.sql(
                db,
                &format!(
                    "DO $$ BEGIN FOR i IN {} .. {} LOOP
                       EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, body text)', i);
                     END LOOP; END $$;",
                    batch * 500 + 1,
                    batch * 500 + 500
                ),
            );
        }
    }
    let row = pair
        .old
        .client("one")
        .query_one(
            "SELECT current_setting('max_locks_per_transaction')::int
                  * (current_setting('max_connections')::int + current_setting('max_prepared_transactions')::int),
                    (SELECT count(*) FROM pg_class WHERE oid >= 16384)",
            &[],
        )
        .unwrap();
    let (slots, relations): (i32, i64) = (row.get(0), row.get(1));
    assert!(
        relations + 1000 > i64::from(slots),
        "the case needs a database with more relations ({relations}) than the lock table holds ({slots})"
    );
    let run = prepare(&pair, &["--link"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    pair.old.sql("one", "SELECT count(*) FROM t1");
    pair.old.stop();
    let discarded = pair.run(&[
        "discard".into(),
        "-D".into(),
        pair.new.datadir.clone().into(),
        "--json".into(),
    ]);
    assert_eq!(discarded.status, 0, "{}", discarded.stderr);
}

/// Whether any file under `dir` holds `needle`.
fn holds(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            std::fs::read(e.path())
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .map(|e| e.into_path())
        .collect()
}

/// The globals dump holds the roles' password hashes: once the cutover is
/// done none stays in pg-migrate's files in the new data directory, which
/// base backups and standbys copy (not prepare's state, not a failed run's
/// dump); the role itself of course carries its password (pg_authid).
#[test]
fn no_password_hash_stays_in_the_new_data_directory() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    pair.old.sql(
        "postgres",
        "CREATE ROLE app LOGIN PASSWORD 'not-to-be-kept'; CREATE TABLE t AS SELECT 1 AS x;",
    );
    let hash: String = pair
        .old
        .client("postgres")
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'",
            &[],
        )
        .unwrap()
        .get(0);
    let ours = pair.new.datadir.join("pg_migrate.d");
    // A prepare killed after its dump keeps it for a look: the search works.
    run_killed(&pair, prepare_words(&pair), "after:dump-old");
    assert!(
        !holds(&ours, &hash).is_empty(),
        "the failed run's globals dump holds the hash"
    );
    let prepared = prepare(&pair, &["--link"]);
    assert_eq!(prepared.status, 0, "{}", prepared.stderr);
    assert_eq!(
        holds(&ours, &hash),
        Vec::<std::path::PathBuf>::new(),
        "after prepare"
    );
    pair.old.stop();
    let run = cutover(&pair, &[]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(
        holds(&ours, &hash),
        Vec::<std::path::PathBuf>::new(),
        "after the cutover"
    );
    // The role and its password arrived all the same.
    pair.new.start();
    let carried: String = pair
        .new
        .client("postgres")
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(carried, hash);
    pair.new.stop();
}

/// A prepared new cluster named again is called what it is: as the target
/// (-D) by its journal (`already_prepared`), as an old cluster (-d) by its
/// pg_control set aside until the cutover (`cluster_prepared`), each with
/// the commands that finish or discard it; both clusters stay as they were.
#[test]
fn a_prepared_cluster_is_named_as_such() {
    let Some(mut pair) = small_running_pair() else {
        return;
    };
    // With a backup of the serving cluster: -j 2, yet every database over
    // one connection (pg_dump's parallel workers would give up on a table
    // one of its sessions asked to lock), so no directory dump (format 1).
    let backup = pair.sandbox.path().join("backup");
    let backup_text = backup.to_string_lossy().into_owned();
    let run = prepare(&pair, &["--copy", "--backup-dir", &backup_text]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], 1, "{manifest}");
    assert!(
        manifest["databases"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d.get("files").is_none()),
        "{manifest}"
    );
    pair.old.stop();
    let (old_before, new_before) = pair.snapshots();
    let again = pair.check(&[]);
    assert_eq!(
        again.error()["code"],
        "already_prepared",
        "{}",
        again.stdout
    );
    let elsewhere = pair.sandbox.path().join("elsewhere");
    let run = pair.run(&[
        "check".into(),
        "-b".into(),
        pair.new.bindir.clone().into(),
        "-B".into(),
        pair.new.bindir.clone().into(),
        "-d".into(),
        pair.new.datadir.clone().into(),
        "-D".into(),
        elsewhere.clone().into(),
        "--json".into(),
    ]);
    assert_refused(&run, "old-control", "cluster_prepared");
    let remedy = run.check("old-control")["remedy"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        remedy.contains("pg-migrate cutover") && remedy.contains("pg-migrate discard"),
        "{remedy}"
    );
    assert!(!elsewhere.exists());
    let (old_after, new_after) = pair.snapshots();
    crate::proof::assert_data_files_untouched(&old_before, &old_after);
    assert_same_tree(&new_before, &new_after, "the prepared cluster");
}
