//! The workflows around an upgrade: a logical backup and its restore into a
//! fresh cluster of the same or a newer major, the steps after an upgrade
//! (configuration carried, extensions updated, statistics, the user's
//! numbered migration scripts, each run once), logs kept where the user
//! says, and the dump-and-reload method where in place is impossible.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::proof::*;
use crate::support::*;

fn args(words: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    words.iter().map(|w| w.as_ref().to_os_string()).collect()
}

/// A file the test user can read, written by the test.
fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    pgm_testkit::chown_to_test_user(path);
}

fn backup(pair: &Pair, cluster: &Cluster, dir: &Path, extra: &[&str]) -> Run {
    let mut words = args(&[
        &"backup",
        &"-b",
        &cluster.bindir,
        &"-d",
        &cluster.datadir,
        &"--backup-dir",
        &dir,
        &"-j",
        &"2",
        &"--json",
    ]);
    words.extend(extra.iter().map(OsString::from));
    let run = pair.run(&words);
    crate::json_schema::validate(&run.events);
    run
}

fn restore(pair: &Pair, bindir: &Path, target: &Path, dir: &Path, extra: &[&str]) -> Run {
    let mut words = args(&[
        &"restore",
        &"-B",
        &bindir,
        &"-D",
        &target,
        &"--backup-dir",
        &dir,
        &"-j",
        &"2",
        &"--json",
    ]);
    words.extend(extra.iter().map(OsString::from));
    let run = pair.run(&words);
    crate::json_schema::validate(&run.events);
    run
}

/// A cluster pg-migrate made gets peer authentication; the tests connect
/// as root over the socket.
fn trust_local(datadir: &Path) {
    write_file(&datadir.join("pg_hba.conf"), "local all all trust\n");
}

/// The dump with one tablespace location put in place of another.
fn relocated(state: &State, from: &Path, to: &str) -> State {
    State {
        dump: state.dump.replace(&from.display().to_string(), to),
        contents: state.contents.clone(),
    }
}

/// A reload computes every populated materialized view anew (pg_restore
/// refreshes them), where an in-place upgrade carries their rows as they
/// were. The fixture leaves one stale; refreshed first, the old cluster is
/// what a reload must reproduce.
fn refresh_materialized_views(cluster: &Cluster) {
    let databases: Vec<String> = cluster
        .client("postgres")
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for db in databases {
        let mut client = cluster.client(&db);
        let views: Vec<String> = client
            .query(
                "SELECT format('%I.%I', schemaname, matviewname) FROM pg_matviews WHERE ispopulated",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for view in views {
            client
                .batch_execute(&format!("REFRESH MATERIALIZED VIEW {view}"))
                .unwrap();
        }
    }
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn backup_then_restore_into_the_same_and_a_newer_major() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    let tablespace = load_rich(&pair);
    refresh_materialized_views(&pair.old);
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let dir = pair.sandbox.path().join("backup");

    let run = backup(&pair, &pair.old, &dir, &[]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let summary = run.summary();
    assert_eq!(summary["result"], "ok");
    assert_eq!(summary["backup"]["databases"], 6, "{summary}");
    assert!(summary["backup"].get("moved_aside").is_none());
    let written = manifest(&dir);
    assert_eq!(written["server_major"], 15);
    // The old installation has its own pg_dump: its dumps restore into 15 too.
    assert_eq!(written["tools_major"], 15);
    assert_eq!(written["databases"].as_array().unwrap().len(), 6);
    assert!(written["databases"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["dump"]["sha256"].as_str().unwrap().len() == 64));
    // The server pg-migrate started for it is stopped again.
    assert!(!pair.old.datadir.join("postmaster.pid").exists());

    // The same major, into a cluster pg-migrate creates; the tablespace moves.
    let same = pair.sandbox.path().join("restored-15");
    let ts15 = pair.sandbox.mkdir("ts15");
    let map15 = format!("extra={}", ts15.display());
    let run = restore(
        &pair,
        &pair.old.bindir,
        &same,
        &dir,
        &["--tablespace-map", &map15],
    );
    assert_eq!(run.status, 0, "{}\n{}", run.stderr, run.stdout);
    assert_eq!(run.events_named("initdb").len(), 1);
    assert_eq!(run.summary()["restore"]["databases"], 6);
    trust_local(&same);
    let mut restored = pair.sandbox.existing("restored-15", 15, &same);
    restored.start();
    let after = capture(&restored, &pair.new.bindir);
    assert_same_state(
        &relocated(&before, &tablespace, "TABLESPACE"),
        &relocated(&after, &ts15, "TABLESPACE"),
        (15, 15),
        "backup restored into 15",
    );
    restored.stop();

    // A newer major, into an existing fresh cluster.
    let ts18 = pair.sandbox.mkdir("ts18");
    let map18 = format!("extra={}", ts18.display());
    let run = restore(
        &pair,
        &pair.new.bindir,
        &pair.new.datadir,
        &dir,
        &["--tablespace-map", &map18],
    );
    assert_eq!(run.status, 0, "{}\n{}", run.stderr, run.stdout);
    assert!(run.events_named("initdb").is_empty());
    pair.new.start();
    let after = capture(&pair.new, &pair.new.bindir);
    assert_same_state(
        &relocated(&before, &tablespace, "TABLESPACE"),
        &relocated(&after, &ts18, "TABLESPACE"),
        (15, 18),
        "backup restored into 18",
    );
    pair.new.stop();

    // A second backup, of the running server, moves the first aside, whole.
    let first = manifest(&dir);
    pair.old.start();
    let run = backup(&pair, &pair.old, &dir, &[]);
    pair.old.stop();
    assert_eq!(run.status, 0, "{}", run.stderr);
    // A server others may use is dumped over one connection per database:
    // pg_dump's parallel workers give up on a table another session wants
    // to lock. The first, of a server pg-migrate started, was not.
    assert_eq!(first["format"], 2, "{first}");
    let live = manifest(&dir);
    assert_eq!(live["format"], 1, "{live}");
    assert!(
        live["databases"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d.get("files").is_none()),
        "{live}"
    );
    let aside = pair.sandbox.path().join("backup.old");
    assert_eq!(
        run.summary()["backup"]["moved_aside"],
        aside.display().to_string()
    );
    assert_eq!(manifest(&aside), first);
    assert_ne!(manifest(&dir)["created_unix_ms"], first["created_unix_ms"]);
}

#[test]
fn a_damaged_incomplete_or_too_new_backup_is_refused() {
    let Some(mut pair) = Pair::new(17, 18) else {
        return;
    };
    if require(15).is_none() {
        return;
    }
    // app the largest database by far: -j 2 dumps it as a directory, its
    // table's rows in a file of their own.
    add_data_app_largest(&mut pair.old);
    let dir = pair.sandbox.path().join("backup");
    let run = backup(&pair, &pair.old, &dir, &[]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let target = pair.sandbox.path().join("target");
    let new_before = snapshot(&pair.new.datadir);

    let refused = |run: &Run, code: &str, words: &str| {
        assert_eq!(run.status, 2, "{}", run.stderr);
        let error = run.error();
        assert_eq!(error["code"], code, "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(words), "{message}");
        assert!(error["remedy"].as_str().is_some_and(|r| r.len() > 10));
        assert!(!target.exists(), "a refused restore created its target");
    };

    // A 17 cluster cannot go into 15.
    let run = restore(&pair, &require(15).unwrap(), &target, &dir, &[]);
    refused(&run, "backup_too_new", "PostgreSQL 17");

    // One byte changed (same size) in a database's dump: a custom-format
    // file, and a file of the largest database's directory (-j 2 dumped it
    // in pg_dump's directory format).
    let written = manifest(&dir);
    assert_eq!(written["format"], 2, "{written}");
    let directory = written["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d.get("files").is_some())
        .unwrap_or_else(|| panic!("no database dumped as a directory: {written}"));
    assert_eq!(directory["name"], "app", "{written}");
    let largest = directory["dump"]["file"].as_str().unwrap();
    let table_data = directory["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap())
        .find(|f| f.ends_with(".dat.gz"))
        .unwrap_or_else(|| panic!("no compressed table data in {directory}"));
    let a_file = written["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d.get("files").is_none())
        .unwrap()["dump"]["file"]
        .as_str()
        .unwrap()
        .to_string();
    for file in [a_file, format!("{largest}/{table_data}")] {
        let damaged = pair.sandbox.path().join("damaged");
        let _ = std::fs::remove_dir_all(&damaged);
        copy_dir(&dir, &damaged);
        let path = damaged.join(&file);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        let run = restore(&pair, &pair.new.bindir, &target, &damaged, &[]);
        refused(&run, "backup_unusable", &format!("{file} is damaged"));
    }
    // A file the manifest does not list, beside those it does (a table's
    // data unpacked to look at it: pg_restore would read `N.dat` before
    // the listed `N.dat.gz`).
    let extra = pair.sandbox.path().join("extra");
    copy_dir(&dir, &extra);
    let unpacked = format!("{largest}/{}", table_data.trim_end_matches(".gz"));
    std::fs::write(extra.join(&unpacked), b"1\tnot the dumped rows\n").unwrap();
    let run = restore(&pair, &pair.new.bindir, &target, &extra, &[]);
    refused(&run, "backup_unusable", &format!("{unpacked} is damaged"));

    // A missing file, into an existing cluster that must stay as it was.
    let missing = pair.sandbox.path().join("missing");
    copy_dir(&dir, &missing);
    std::fs::remove_file(missing.join("globals.sql")).unwrap();
    let run = restore(&pair, &pair.new.bindir, &pair.new.datadir, &missing, &[]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert_eq!(run.error()["code"], "backup_unusable");
    assert!(run.error()["message"]
        .as_str()
        .unwrap()
        .contains("globals.sql"));
    assert_same_tree(&new_before, &snapshot(&pair.new.datadir), "new cluster");

    // No manifest: the backup never finished.
    let unfinished = pair.sandbox.path().join("unfinished");
    copy_dir(&dir, &unfinished);
    std::fs::remove_file(unfinished.join("manifest.json")).unwrap();
    let run = restore(&pair, &pair.new.bindir, &target, &unfinished, &[]);
    refused(&run, "backup_unusable", "did not finish");

    // A target that already holds databases is refused before any restore.
    pair.new
        .with_running(|c| c.sql("postgres", "CREATE DATABASE already_here"));
    let run = restore(&pair, &pair.new.bindir, &pair.new.datadir, &dir, &[]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert_eq!(run.error()["code"], "restore_target_not_fresh");
    assert_eq!(run.error()["clusters"]["new"], "started_and_stopped");
    assert!(run.error()["message"]
        .as_str()
        .unwrap()
        .contains("database \"already_here\""));
    // So is one whose postgres database holds a table (the restore would
    // drop it with the database), and nothing was restored into either.
    let mut other = pair.sandbox.cluster("other", 18, no_checksums(18));
    other.with_running(|c| c.sql("postgres", "CREATE TABLE keep_me (x int)"));
    let run = restore(&pair, &pair.new.bindir, &other.datadir, &dir, &[]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert_eq!(run.error()["code"], "restore_target_not_fresh");
    assert!(run.error()["message"]
        .as_str()
        .unwrap()
        .contains("public.keep_me"));
    for cluster in [&mut pair.new, &mut other] {
        cluster.with_running(|c| {
            let names: Vec<String> = c
                .client("postgres")
                .query("SELECT datname::text FROM pg_database ORDER BY 1", &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert!(!names.iter().any(|n| n == "app"), "{names:?}");
        });
    }
    other.with_running(|c| c.sql("postgres", "SELECT * FROM keep_me"));
    // Nor into the backup's own cluster.
    let run = restore(&pair, &pair.old.bindir, &pair.old.datadir, &dir, &[]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(run.error()["message"]
        .as_str()
        .unwrap()
        .contains("this backup was made of"));
}

/// `add_some_data`, with app's table made the bulk of the cluster's data.
fn add_data_app_largest(cluster: &mut Cluster) {
    add_some_data(cluster);
    cluster.with_running(|c| {
        c.sql(
            "app",
            "INSERT INTO items (name) SELECT repeat('n', 100) FROM generate_series(1, 50000)",
        )
    });
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    let status = std::process::Command::new("chown")
        .arg("-R")
        .arg(&pgm_testkit::test_user().name)
        .arg(to)
        .status();
    let _ = status;
}

/// Post-upgrade scripts: an application's migration that changes data
/// (in one database), a shell script that sees the versions, one for every
/// database.
fn write_scripts(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    pgm_testkit::chown_to_test_user(dir);
    write_file(
        &dir.join("01-double-small-orders.sql"),
        "-- Doubles the first orders' amounts: runs once, ever.\n-- database: appdb\nUPDATE app.orders SET amount = amount * 2 WHERE id <= 3;\n",
    );
    write_file(
        &dir.join("02-audit.sh"),
        "#!/bin/sh\nset -e\npsql -X -v ON_ERROR_STOP=1 -d appdb -c \"CREATE TABLE IF NOT EXISTS public.upgrade_audit (old_major text, new_major text, host text); INSERT INTO public.upgrade_audit VALUES ('$PG_MIGRATE_OLD_MAJOR', '$PG_MIGRATE_NEW_MAJOR', '$PGHOST')\"\n",
    );
    write_file(
        &dir.join("10-everywhere.sql"),
        "CREATE TABLE IF NOT EXISTS public.pgm_everywhere (x int);\nINSERT INTO public.pgm_everywhere VALUES (1);\n",
    );
    write_file(&dir.join("README"), "not a script\n");
}

fn script_events(run: &Run, status: &str) -> Vec<(String, String)> {
    run.events_named("script")
        .iter()
        .filter(|e| e["status"] == status)
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["database"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn query_one_text(cluster: &Cluster, database: &str, sql: &str) -> String {
    cluster
        .client(database)
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[test]
fn upgrade_with_a_backup_logs_and_every_step_after_it() {
    let Some(mut pair) = Pair::new(12, 18) else {
        return;
    };
    pair.old.start();
    load_rich(&pair);
    refresh_materialized_views(&pair.old);
    let before = capture(&pair.old, &pair.new.bindir);
    let amounts_before = query_one_text(
        &pair.old,
        "appdb",
        "SELECT string_agg(amount::text, ',' ORDER BY id) FROM app.orders WHERE id <= 3",
    );
    pair.old.stop();
    // Settings to carry: one renamed (and converted) in 13, one removed in
    // 17, two unchanged; and an access rule.
    let conf = pair.old.datadir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\n# ours\nwal_keep_segments = 8\nold_snapshot_threshold = 60min\nwork_mem = '7MB'\nmax_connections = 42\n");
    write_file(&conf, &text);
    let hba = pair.old.datadir.join("pg_hba.conf");
    let mut text = std::fs::read_to_string(&hba).unwrap();
    text.push_str("# carried by pg-migrate's test\n");
    write_file(&hba, &text);
    let scripts = pair.sandbox.path().join("migrations");
    write_scripts(&scripts);
    let backup_dir = pair.sandbox.path().join("backup");
    let logs = pair.sandbox.mkdir("logs");

    let script_dir = scripts.display().to_string();
    let run = upgrade(
        &pair,
        &[
            "--link",
            "--backup-dir",
            &backup_dir.display().to_string(),
            "--log-dir",
            &logs.display().to_string(),
            "--carry-config",
            "--update-extensions",
            "--reindex-collation",
            "--post-upgrade",
            &script_dir,
            "--analyze",
        ],
    );
    let summary = run.summary();
    assert_eq!(summary["result"], "ok", "{summary}");
    let steps: Vec<(&str, &str)> = summary["after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("carry-config", "ok"),
            ("update-extensions", "ok"),
            ("reindex-collation", "ok"),
            ("post-upgrade", "ok"),
            ("analyze", "ok"),
        ]
    );
    // What the steps did is not left to do, and there is no going back
    // once the new cluster ran.
    let next = summary["next_steps"].to_string();
    for done in ["statistics", "update extensions", "rename it back"] {
        assert!(!next.contains(done), "{next}");
    }
    assert!(next.contains("delete_old_cluster.sh"), "{next}");
    // The backup came first, with 18's tools (12's install has none).
    let ends: Vec<&str> = run.steps_ended();
    let at = |step: &str| ends.iter().position(|s| *s == step).unwrap();
    assert!(at("backup") < at("dump-old"), "{ends:?}");
    assert_eq!(summary["backup"]["databases"], 6);
    assert_eq!(manifest(&backup_dir)["tools_major"], 18);
    // The logs stay where asked, and the summary says where.
    let log_dir = PathBuf::from(summary["logs"].as_str().unwrap());
    assert!(log_dir.starts_with(&logs), "{}", log_dir.display());
    for name in [
        "old-server.log",
        "new-server.log",
        "analyze.log",
        "post-upgrade.log",
    ] {
        assert!(
            log_dir.join(name).exists(),
            "{name} missing in {}",
            log_dir.display()
        );
    }
    // Each change to a setting is reported.
    let changes: Vec<(String, String)> = run
        .events_named("config_change")
        .iter()
        .map(|e| {
            (
                e["setting"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        changes.contains(&("wal_keep_segments".into(), "renamed".into())),
        "{changes:?}"
    );
    assert!(
        changes.contains(&("old_snapshot_threshold".into(), "removed".into())),
        "{changes:?}"
    );
    assert_eq!(
        script_events(&run, "ran"),
        vec![
            ("01-double-small-orders.sql".into(), "appdb".into()),
            ("02-audit.sh".into(), String::new()),
            ("10-everywhere.sql".into(), "postgres".into()),
            ("10-everywhere.sql".into(), "appdb".into()),
            (
                "10-everywhere.sql".into(),
                "odd \"name\" with spaces é".into()
            ),
            ("10-everywhere.sql".into(), "latin1db".into()),
            ("10-everywhere.sql".into(), "in_tablespace".into()),
        ]
    );

    // The new cluster runs with the carried configuration (its pg_hba.conf
    // is the old one: trust, as the tests made it).
    let new_hba = std::fs::read_to_string(pair.new.datadir.join("pg_hba.conf")).unwrap();
    assert!(new_hba.contains("# carried by pg-migrate's test"));
    pair.new.start();
    let show = |name: &str| query_one_text(&pair.new, "postgres", &format!("SHOW {name}"));
    assert_eq!(show("wal_keep_size"), "128MB");
    assert_eq!(show("work_mem"), "7MB");
    assert_eq!(show("max_connections"), "42");
    // hstore was older in 12; the update brought it to 18's default.
    assert_eq!(
        query_one_text(
            &pair.new,
            "appdb",
            "SELECT (installed_version = default_version)::text FROM pg_available_extensions WHERE name = 'hstore'"
        ),
        "true"
    );
    let amounts = query_one_text(
        &pair.new,
        "appdb",
        "SELECT string_agg(amount::text, ',' ORDER BY id) FROM app.orders WHERE id <= 3",
    );
    let doubled: Vec<String> = amounts_before
        .split(',')
        .map(|a| (a.parse::<f64>().unwrap() * 2.0).to_string())
        .collect();
    let got: Vec<String> = amounts
        .split(',')
        .map(|a| a.parse::<f64>().unwrap().to_string())
        .collect();
    assert_eq!(got, doubled);
    assert_eq!(
        query_one_text(
            &pair.new,
            "appdb",
            "SELECT old_major || '->' || new_major FROM public.upgrade_audit"
        ),
        "12->18"
    );
    // Statistics: every user table has them after the analyze.
    assert_eq!(
        query_one_text(
            &pair.new,
            "appdb",
            "SELECT count(*)::text FROM pg_stat_user_tables t WHERE t.schemaname = 'app' AND NOT EXISTS (SELECT FROM pg_stats s WHERE s.schemaname = t.schemaname AND s.tablename = t.relname) AND n_live_tup > 0"
        ),
        "0"
    );
    pair.new.stop();

    // Run again: every script is skipped, and no data changes twice.
    let again = pair.run(&args(&[
        &"post-upgrade",
        &"-D",
        &pair.new.datadir,
        &"--post-upgrade",
        &scripts,
        &"--json",
    ]));
    crate::json_schema::validate(&again.events);
    assert_eq!(again.status, 0, "{}", again.stderr);
    assert!(script_events(&again, "ran").is_empty());
    assert_eq!(script_events(&again, "skipped").len(), 7);
    pair.new.start();
    let amounts_again = query_one_text(
        &pair.new,
        "appdb",
        "SELECT string_agg(amount::text, ',' ORDER BY id) FROM app.orders WHERE id <= 3",
    );
    assert_eq!(amounts_again, amounts, "a script ran twice");
    assert_eq!(
        query_one_text(
            &pair.new,
            "postgres",
            "SELECT count(*)::text FROM public.pgm_everywhere"
        ),
        "1"
    );
    pair.new.stop();

    // A failing script stops the sequence; a re-run resumes at it.
    write_file(
        &scripts.join("03-broken.sql"),
        "-- database: appdb\nUPDATE app.orders SET amount = amount / 0 WHERE id = 1;\n",
    );
    write_file(
        &scripts.join("04-after-broken.sql"),
        "-- database: appdb\nCREATE TABLE public.after_broken AS SELECT 1 AS x;\n",
    );
    let failed = pair.run(&args(&[
        &"post-upgrade",
        &"-D",
        &pair.new.datadir,
        &"--post-upgrade",
        &scripts,
        &"--json",
    ]));
    crate::json_schema::validate(&failed.events);
    assert_eq!(failed.status, 5, "{}", failed.stderr);
    let error = failed.error();
    assert_eq!(error["code"], "post_upgrade_script_failed");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("03-broken.sql") && message.contains("division by zero"),
        "{message}"
    );
    assert!(error["remedy"]
        .as_str()
        .unwrap()
        .contains("pg-migrate post-upgrade"));
    assert_eq!(failed.summary()["result"], "after_step_failed");
    assert_eq!(
        script_events(&failed, "failed"),
        vec![("03-broken.sql".to_string(), "appdb".to_string())]
    );
    assert!(script_events(&failed, "ran").is_empty());
    write_file(
        &scripts.join("03-broken.sql"),
        "-- database: appdb\nUPDATE app.orders SET amount = amount WHERE id = 1;\n",
    );
    let resumed = pair.run(&args(&[
        &"post-upgrade",
        &"-D",
        &pair.new.datadir,
        &"--post-upgrade",
        &scripts,
        &"--json",
    ]));
    assert_eq!(resumed.status, 0, "{}", resumed.stderr);
    assert_eq!(
        script_events(&resumed, "ran"),
        vec![
            ("03-broken.sql".to_string(), "appdb".to_string()),
            ("04-after-broken.sql".to_string(), "appdb".to_string())
        ]
    );

    // The backup restores into a fresh 18 cluster as the old cluster was.
    let restored_dir = pair.sandbox.path().join("restored");
    let ts = pair.sandbox.mkdir("ts-restored");
    let map = format!("extra={}", ts.display());
    let run = restore(
        &pair,
        &pair.new.bindir,
        &restored_dir,
        &backup_dir,
        &["--tablespace-map", &map],
    );
    assert_eq!(run.status, 0, "{}", run.stderr);
    trust_local(&restored_dir);
    let mut restored = pair.sandbox.existing("restored", 18, &restored_dir);
    restored.start();
    let after = capture(&restored, &pair.new.bindir);
    let tablespace = pair.sandbox.path().join("tblspc");
    assert_same_state(
        &relocated(&before, &tablespace, "TABLESPACE"),
        &relocated(&after, &ts, "TABLESPACE"),
        (12, 18),
        "the upgrade's backup restored",
    );
    restored.stop();
}

#[test]
fn a_failing_step_after_the_upgrade_is_reported_with_its_own_exit_status() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    add_some_data(&mut pair.old);
    let scripts = pair.sandbox.path().join("migrations");
    std::fs::create_dir_all(&scripts).unwrap();
    pgm_testkit::chown_to_test_user(&scripts);
    write_file(
        &scripts.join("1-fails.sh"),
        "echo 'the application is not ready' >&2\nexit 3\n",
    );
    let mut words = pair.dir_args();
    words.extend(args(&[
        &"--json",
        &"--post-upgrade",
        &scripts,
        &"--analyze",
    ]));
    let run = pair.run(&words);
    crate::json_schema::validate(&run.events);
    assert_eq!(run.status, 5, "{}", run.stderr);
    let error = run.error();
    assert_eq!(error["code"], "post_upgrade_script_failed");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("the application is not ready"));
    assert_eq!(error["clusters"]["new"], "upgraded");
    let summary = run.summary();
    assert_eq!(summary["result"], "after_step_failed");
    assert_eq!(summary["exit_code"], 5);
    // The upgrade itself is complete and reported.
    assert_eq!(summary["upgrade"]["databases"], 4);
    let after: Vec<(&str, &str)> = summary["after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        after,
        vec![("post-upgrade", "failed"), ("analyze", "not_run")]
    );
    assert_eq!(
        std::fs::read_to_string(pair.new.datadir.join("pg_migrate.d/state"))
            .unwrap()
            .trim(),
        "complete"
    );
}

#[test]
fn dump_and_reload_upgrades_where_in_place_cannot() {
    // The new cluster has data checksums, the old one none: no in-place
    // upgrade, but a reload does not care.
    let Some(mut pair) = Pair::with_options(15, &[], 18, &[]) else {
        return;
    };
    pair.old.start();
    load_rich(&pair);
    refresh_materialized_views(&pair.old);
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();

    let check = pair.check(&[]);
    assert_refused(&check, "control-data-checksums", "control_mismatch");
    let remedy = check.check("control-data-checksums")["remedy"]
        .as_str()
        .unwrap();
    assert!(remedy.contains("--method dump"), "{remedy}");

    let run = upgrade(&pair, &["--method", "dump"]);
    let warned = run.check("control-data-checksums");
    assert_eq!(warned["status"], "warn", "{warned}");
    let steps: Vec<&str> = run.steps_ended();
    assert_eq!(
        steps,
        vec!["checks", "dump-all", "restore-all", "sync", "finish"]
    );
    let summary = run.summary();
    assert_eq!(summary["upgrade"]["method"], "dump");
    assert_eq!(summary["upgrade"]["databases"], 6);
    assert_eq!(
        std::fs::read_to_string(pair.new.datadir.join("pg_migrate.d/state"))
            .unwrap()
            .trim(),
        "complete"
    );
    pair.new.start();
    let after = capture(&pair.new, &pair.new.bindir);
    assert_same_state(&before, &after, (15, 18), "15 -> 18 by dump and reload");
    assert_healthy(&pair.new);
    pair.new.stop();
    // The old cluster still holds what it held (its pages may have gained
    // hint bits: the dump read every row through its server).
    pair.old.start();
    let again = capture(&pair.old, &pair.new.bindir);
    assert_same_state(
        &before,
        &again,
        (18, 18),
        "old cluster after dump and reload",
    );
    pair.old.stop();
}

#[test]
fn bad_workflow_input_changes_nothing() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let (old_before, new_before) = pair.snapshots();
    let cases: Vec<(Vec<OsString>, &str)> = vec![
        // A backup inside a cluster.
        (
            {
                let mut a = pair.dir_args();
                a.extend(args(&[
                    &"--backup-dir",
                    &pair.old.datadir.join("backup"),
                    &"--json",
                ]));
                a
            },
            "lie inside one another",
        ),
        (
            args(&[
                &"backup",
                &"-b",
                &pair.old.bindir,
                &"-d",
                &pair.old.datadir,
                &"--json",
            ]),
            "needs a backup directory",
        ),
        (
            args(&[
                &"restore",
                &"-B",
                &pair.new.bindir,
                &"-D",
                &pair.new.datadir,
                &"--backup-dir",
                &pair.sandbox.path().join("nothing"),
                &"--json",
            ]),
            "did not finish",
        ),
        (
            {
                let mut a = pair.dir_args();
                a.extend(args(&[&"--method", &"dump", &"--link", &"--json"]));
                a
            },
            "takes no transfer mode",
        ),
        (
            args(&[
                &"restore",
                &"-B",
                &pair.new.bindir,
                &"-D",
                &pair.new.datadir,
                &"--backup-dir",
                &pair.sandbox.path(),
                &"--tablespace-map",
                &"noequals",
                &"--json",
            ]),
            "is not NAME=DIR",
        ),
        (
            args(&[
                &"post-upgrade",
                &"-D",
                &pair.new.datadir,
                &"--analyze",
                &"--json",
            ]),
            "no pg-migrate journal",
        ),
        (
            {
                let mut a = pair.dir_args();
                a.extend(args(&[&"--verify-sample-above", &"1GB", &"--json"]));
                a
            },
            "only applies with --verify",
        ),
        (
            {
                let mut a = vec![OsString::from("check")];
                a.extend(pair.dir_args());
                a.extend(args(&[&"--verify", &"--json"]));
                a
            },
            "--verify does not apply to check",
        ),
        (
            {
                let mut a = pair.dir_args();
                a.extend(args(&[&"--verify=some", &"--json"]));
                a
            },
            "some",
        ),
        (
            args(&[&"verify", &"-D", &pair.new.datadir, &"--json"]),
            "no pg-migrate journal",
        ),
    ];
    for (words, expected) in cases {
        let run = pair.run(&words);
        crate::json_schema::validate(&run.events);
        assert_eq!(run.status, 2, "{words:?}: {}", run.stderr);
        let error = run.error();
        assert!(
            error["message"].as_str().unwrap().contains(expected),
            "{words:?}: {error}"
        );
        assert!(error["remedy"].as_str().is_some_and(|r| !r.is_empty()));
        assert!(run.stderr.contains(expected), "{}", run.stderr);
    }
    let (old_after, new_after) = pair.snapshots();
    assert_same_tree(&old_before, &old_after, "old cluster");
    assert_same_tree(&new_before, &new_after, "new cluster");
}

/// examples/container-entrypoint.sh, run as a container would run it (but
/// directly): killed in the middle of its upgrade (after the backup and the
/// dump, before the point of no return), started again it resumes, starting
/// over with a new backup; started while another pg-migrate holds the
/// clusters it waits; started again it only starts the server. The upgrade
/// is proven like every other, and the migration script runs once.
#[test]
fn the_example_container_entrypoint_upgrades_resumes_waits_and_then_just_starts() {
    let (Some(old_bin), Some(new_bin)) = (require(15), require(18)) else {
        return;
    };
    let sandbox = Sandbox::new();
    let root = sandbox.mkdir("pgroot");
    sandbox.mkdir("pgroot/15");
    let mut old = sandbox.cluster_at(&root.join("15/data"), 15, &[]);
    old.start();
    let tablespace = sandbox.mkdir("tblspc");
    load_rich_into(&old, &new_bin, &tablespace);
    let before = capture(&old, &new_bin);
    old.stop();
    let scripts = sandbox.mkdir("migrations");
    write_file(
        &scripts.join("01-note.sh"),
        "echo \"$PG_MIGRATE_OLD_MAJOR -> $PG_MIGRATE_NEW_MAJOR\" >> \"$PGROOT/migrated\"\n",
    );
    let backups = sandbox.mkdir("backups");
    let entrypoint = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/container-entrypoint.sh");
    let binary = binary(&sandbox);
    let entrypoint_command = |kill_at: Option<&str>| {
        let mut command = as_test_user("bash");
        command
            .arg(&entrypoint)
            .args(["sh", "-c", "echo started >> \"$PGROOT/started\""])
            .current_dir(&root)
            .env("PGBINNEW", &new_bin)
            .env("PGROOT", &root)
            .env("PGBINOLD_15", &old_bin)
            .env("PG_MIGRATE", &binary)
            .env("PG_MIGRATE_JOBS", "2")
            .env("PG_MIGRATE_POST_UPGRADE_DIR", &scripts)
            .env("PG_MIGRATE_BACKUP_DIR", backups.join("pg15"))
            .env_remove("PGDATA");
        if let Some(point) = kill_at {
            command.env("PG_MIGRATE_TEST_KILL_AT", point);
        }
        command
    };
    let events = || -> Vec<Value> {
        std::fs::read_to_string(root.join("pg-migrate-logs/events.ndjson"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // Where the official image of 18 keeps its cluster.
    let new_data = root.join("18/docker");
    let state = || std::fs::read_to_string(new_data.join("pg_migrate.d/state")).unwrap_or_default();

    // Killed after the backup and the dump: the container fails, the
    // server does not start.
    let first = entrypoint_command(Some("after:dump-old")).output().unwrap();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(!first.status.success());
    assert!(!root.join("started").exists());
    assert_eq!(state().trim(), "upgrading", "{stderr}");
    assert!(
        stderr.contains("backup: ok") && stderr.contains("dump-old: ok"),
        "{stderr}"
    );
    let first_backup = manifest(&backups.join("pg15"));

    // Started again: the upgrade resumes (from the start: a new backup, as
    // the journal asks), the script runs, the server starts.
    let second = entrypoint_command(None).output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("resuming"), "{stderr}");
    assert_eq!(state().trim(), "complete");
    assert_eq!(
        std::fs::read_to_string(root.join("started")).unwrap(),
        "started\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("migrated")).unwrap(),
        "15 -> 18\n"
    );
    assert_eq!(manifest(&backups.join("pg15.old")), first_backup);
    assert_ne!(
        manifest(&backups.join("pg15"))["created_unix_ms"],
        first_backup["created_unix_ms"]
    );
    let all = events();
    let summaries: Vec<&Value> = all.iter().filter(|e| e["event"] == "summary").collect();
    // The killed run never got to its summary.
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0]["command"], "resume");
    assert_eq!(summaries[0]["result"], "ok");
    assert_eq!(summaries[0]["after"][0]["step"], "post-upgrade");

    // Another pg-migrate holds the clusters (a post-upgrade run paused at
    // its analyze): the entrypoint waits, then goes on.
    let pause = sandbox.path().join("pause");
    let mut holder = as_test_user(&binary)
        .args(["post-upgrade", "-D"])
        .arg(&new_data)
        .args(["--analyze", "--json"])
        .env("PG_MIGRATE_TEST_PAUSE_AT", "before:analyze")
        .env("PG_MIGRATE_TEST_PAUSE_FILE", &pause)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !pause.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the holder never paused"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let waiting = entrypoint_command(None)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(
        std::fs::read_to_string(root.join("started")).unwrap(),
        "started\n"
    );
    std::fs::remove_file(&pause).unwrap();
    assert!(holder.wait().unwrap().success());
    let third = waiting.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&third.stderr);
    assert!(third.status.success(), "{stderr}");
    assert!(stderr.contains("waiting"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(root.join("started")).unwrap(),
        "started\nstarted\n"
    );
    // The script ran once only.
    assert_eq!(
        std::fs::read_to_string(root.join("migrated")).unwrap(),
        "15 -> 18\n"
    );
    let last = events();
    let latest: Vec<&Value> = last
        .iter()
        .rev()
        .take_while(|e| e["event"] != "plan")
        .filter(|e| e["event"] == "script")
        .collect();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0]["status"], "skipped");

    // The upgrade is proven like any other.
    trust_local(&new_data);
    let mut new = sandbox.existing("entry-new", 18, &new_data);
    new.start();
    let after = capture(&new, &new_bin);
    assert_same_state(&before, &after, (15, 18), "upgraded by the entrypoint");
    new.stop();
}

/// The example entrypoint started as root, as a container starts it, with
/// the old cluster in each of the official images' layouts ($PGROOT/data up
/// to 17, $PGROOT/<major>/docker from 18): it makes what it needs, gives it
/// to the clusters' owner, goes on as that user, and leaves the upgraded
/// cluster where the image of 18 expects it ($PGROOT/18/docker).
#[test]
fn the_example_entrypoint_started_as_root_upgrades_both_image_layouts() {
    let (Some(old_bin), Some(new_bin)) = (require(15), require(18)) else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        pgm_testkit::skip_or_fail::<()>(
            "the entrypoint's start as root needs a test run as root",
            "root",
        );
        return;
    }
    let entrypoint = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/container-entrypoint.sh");
    let owner = pgm_testkit::test_user();
    for layout in ["data", "15/docker"] {
        let sandbox = Sandbox::new();
        let binary = binary(&sandbox);
        // $PGROOT belongs to root, as a fresh volume's mount point may.
        let root = sandbox.path().join("pgroot");
        std::fs::create_dir_all(root.join(layout)).unwrap();
        pgm_testkit::chown_to_test_user(&root.join(layout));
        if let Some(major_dir) = Path::new(layout)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            pgm_testkit::chown_to_test_user(&root.join(major_dir));
        }
        // The test's own server log beside the data directory.
        let test_log = root.join(layout).with_extension("log");
        std::fs::write(&test_log, "").unwrap();
        pgm_testkit::chown_to_test_user(&test_log);
        let mut old = sandbox.cluster_at(&root.join(layout), 15, &[]);
        old.start();
        old.sql(
            "postgres",
            "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g",
        );
        let before = capture(&old, &new_bin);
        old.stop();
        let output = std::process::Command::new("bash")
            .arg(&entrypoint)
            .args(["sh", "-c", "id -u > \"$PGROOT/18/started-as\""])
            .current_dir(sandbox.path())
            .env("PGBINNEW", &new_bin)
            .env("PGROOT", &root)
            .env("PGBINOLD_15", &old_bin)
            .env("PG_MIGRATE", &binary)
            .env("PG_MIGRATE_JOBS", "2")
            .env_remove("PGDATA")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{layout}: {stderr}");
        assert!(stderr.contains("going on as"), "{layout}: {stderr}");
        // The command ran as the owner, not as root.
        let started_as = std::fs::read_to_string(root.join("18/started-as")).unwrap();
        assert_eq!(started_as.trim(), owner.uid.to_string(), "{layout}");
        let new_data = root.join("18/docker");
        assert_eq!(
            std::fs::read_to_string(new_data.join("PG_VERSION"))
                .unwrap()
                .trim(),
            "18",
            "{layout}"
        );
        assert_eq!(
            std::fs::read_to_string(new_data.join("pg_migrate.d/state"))
                .unwrap()
                .trim(),
            "complete"
        );
        use std::os::unix::fs::MetadataExt;
        for made in [
            root.join("18"),
            new_data.clone(),
            root.join("pg-migrate-logs/events.ndjson"),
        ] {
            assert_eq!(
                std::fs::metadata(&made).unwrap().uid(),
                owner.uid,
                "{} belongs to the clusters' owner",
                made.display()
            );
        }
        trust_local(&new_data);
        let mut new = sandbox.existing("entry-root-new", 18, &new_data);
        new.start();
        let after = capture(&new, &new_bin);
        assert_same_state(
            &before,
            &after,
            (15, 18),
            &format!("entrypoint as root, {layout}"),
        );
        new.stop();
    }
}

/// The entrypoint reads pg-migrate's events with jq: a message with
/// quotes, backslashes and a line break in it (paths and names are quoted in
/// messages) comes out whole, on one line, with its code and log.
#[test]
fn the_example_entrypoint_reads_events_with_jq_whole() {
    let entrypoint = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/container-entrypoint.sh");
    let message = r#"cannot read "/srv/a b\c": the "old" cluster's file"#;
    let lines = [
        serde_json::json!({"event": "step_start", "step": "dump-old"}),
        serde_json::json!({"event": "step_end", "step": "dump-old", "status": "ok", "duration_ms": 12}),
        serde_json::json!({
            "event": "error", "code": "some_code", "message": format!("{message}\nsecond line"),
            "clusters": { "old": "unchanged", "new": "unchanged" }, "log": "/logs/x.log",
        }),
    ]
    .map(|l| l.to_string())
    .join("\n");
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#"eval "$(sed -n '/^describe_events() {/,/^}/p' "$0")"; describe_events <<<"$1""#)
        .arg(&entrypoint)
        .arg(&lines)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let described: Vec<&str> = text.lines().collect();
    assert_eq!(
        described,
        [
            "say\t-\tdump-old: ok (12 ms)".to_string(),
            format!("error\tsome_code\terror some_code: {message} second line (log: /logs/x.log)"),
        ]
    );
}

/// `--reindex-collation` runs the script the collation check wrote: the
/// indexes are rebuilt and the versions recorded as the library's own
/// (a database and a collation recorded under an older glibc, as in
/// catalogue.rs; needs the en_US.UTF-8 locale).
#[test]
fn reindex_collation_rebuilds_what_the_check_found() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.with_running(|c| {
        c.sql(
            "postgres",
            "CREATE DATABASE shop LOCALE 'en_US.UTF-8' TEMPLATE template0",
        );
        c.sql(
            "postgres",
            "UPDATE pg_database SET datcollversion = '2.31' WHERE datname = 'shop'",
        );
        c.sql(
            "shop",
            "CREATE COLLATION us (provider = libc, locale = 'en_US.UTF-8');
             UPDATE pg_collation SET collversion = '2.31' WHERE collname = 'us';
             CREATE TABLE names (n text, u text COLLATE us);
             INSERT INTO names SELECT md5(g::text), md5(g::text) FROM generate_series(1, 500) g;
             CREATE INDEX names_n ON names (n);
             CREATE INDEX names_u ON names (u);",
        );
    });
    let run = upgrade(&pair, &["--link", "--reindex-collation"]);
    assert_eq!(
        run.summary()["after"],
        serde_json::json!([{ "step": "reindex-collation", "status": "ok" }])
    );
    // Its progress: the script's statements, each counted as psql ran it.
    let progress = run.events_named("progress");
    let last = progress
        .iter()
        .rfind(|e| e["step"] == "reindex-collation")
        .expect("reindex-collation reports its progress");
    assert_eq!(last["unit"], "statements", "{last}");
    assert_eq!(last["done"], last["total"], "{last}");
    // Two indexes, the collation's and the database's recorded versions.
    assert_eq!(last["total"], 4, "{last}");
    let next = run.summary()["next_steps"].to_string();
    assert!(!next.contains("reindex_after_upgrade.sql"), "{next}");
    pair.new.start();
    let row = pair
        .new
        .client("shop")
        .query_one(
            "SELECT d.datcollversion = pg_database_collation_actual_version(d.oid),
                    c.collversion = pg_collation_actual_version(c.oid)
               FROM pg_database d, pg_collation c WHERE d.datname = 'shop' AND c.collname = 'us'",
            &[],
        )
        .unwrap();
    assert!(row.get::<_, bool>(0) && row.get::<_, bool>(1));
    pair.new.stop();
}

/// The dump-and-reload method keeps the same journal as the in-place modes:
/// killed between its dump and its reload, it resumes to a proven result;
/// killed again, it reverts to the old cluster, never changed.
#[test]
fn dump_and_reload_killed_resumes_or_reverts() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    load_rich(&pair);
    refresh_materialized_views(&pair.old);
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let run_with = |extra: &[&str], kill_at: Option<&str>| {
        let mut words: Vec<OsString> = extra.iter().map(OsString::from).collect();
        words.extend(pair.dir_args());
        words.extend(args(&[&"--method", &"dump", &"--json", &"-j", &"2"]));
        let mut command = as_test_user(&pair.bin);
        command.current_dir(pair.sandbox.path()).args(&words);
        if let Some(point) = kill_at {
            command.env("PG_MIGRATE_TEST_KILL_AT", point);
        }
        pgm_testkit::finish(command.output().unwrap())
    };
    let killed = run_with(&[], Some("after:dump-all"));
    assert_eq!(killed.status, -1, "{}", killed.stderr);
    let state =
        || std::fs::read_to_string(pair.new.datadir.join("pg_migrate.d/state")).unwrap_or_default();
    assert_eq!(state().trim(), "upgrading");
    let logs = pair.sandbox.mkdir("resume-logs");
    let logs_text = logs.to_string_lossy().into_owned();
    let resumed = run_with(&["resume", "--log-dir", &logs_text], None);
    assert_eq!(resumed.status, 0, "{}", resumed.stderr);
    crate::json_schema::validate(&resumed.events);
    assert_eq!(resumed.summary()["upgrade"]["method"], "dump");
    assert_eq!(state().trim(), "complete");
    // -j 2: the largest database (by its dump's size, in the manifest)
    // came last, restored by pg_restore over 2 connections (its parallel
    // restore launches items), the others not.
    let manifests: Vec<PathBuf> = walk(&pair.new.datadir.join("pg_migrate.d"))
        .into_iter()
        .filter(|p| p.ends_with("dump-all/manifest.json"))
        .collect();
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let written = manifest(manifests[0].parent().unwrap());
    let largest = written["databases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["name"] != "template1")
        .max_by_key(|d| d["dump"]["bytes"].as_u64().unwrap())
        .unwrap()["dump"]["file"]
        .as_str()
        .unwrap()
        .trim_end_matches(".dump")
        .to_string();
    let restore_logs: Vec<(PathBuf, String, std::time::SystemTime)> = walk(&logs)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("restore-"))
        })
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let written = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p, text, written)
        })
        .collect();
    let name = |path: &PathBuf| path.file_name().unwrap().to_string_lossy().into_owned();
    let parallel: Vec<String> = restore_logs
        .iter()
        .filter(|(_, text, _)| text.contains("--jobs=2") && text.contains("launching item"))
        .map(|(path, _, _)| name(path))
        .collect();
    // The largest database was also dumped over 2 connections (pg_dump's
    // directory format), the others each over one, into a file.
    assert_eq!(written["format"], 2, "{written}");
    let directories: Vec<&str> = written["databases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d.get("files").is_some())
        .map(|d| d["dump"]["file"].as_str().unwrap())
        .collect();
    assert_eq!(directories.len(), 1, "{written}");
    let dumped_in_parallel: Vec<String> = walk(pair.sandbox.path())
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("backup-database-"))
        })
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            text.contains("--format=directory") && text.contains("--jobs=2")
        })
        .map(|p| name(&p))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        dumped_in_parallel,
        vec![format!(
            "backup-{}.log",
            directories[0].trim_end_matches(".dump")
        )]
    );
    let expected = format!("restore-{largest}.log");
    assert_eq!(
        parallel,
        vec![expected.clone()],
        "not the largest database alone restored over 2 connections"
    );
    let last = restore_logs
        .iter()
        .filter(|(path, _, _)| !path.ends_with("restore-globals.log"))
        .max_by_key(|(_, _, written)| *written)
        .unwrap();
    assert_eq!(
        name(&last.0),
        expected,
        "the largest database was not restored last"
    );
    pair.new.start();
    let after = capture(&pair.new, &pair.new.bindir);
    assert_same_state(&before, &after, (15, 18), "dump and reload, resumed");
    pair.new.stop();

    // Killed in the middle of another run: revert leaves the old cluster as
    // it was and the new one as initdb made it.
    let Some(mut again) = Pair::new(15, 18) else {
        return;
    };
    add_some_data(&mut again.old);
    again.old.start();
    let old_state = capture(&again.old, &again.new.bindir);
    again.old.stop();
    let mut words = again.dir_args();
    words.extend(args(&[&"--method", &"dump", &"--json"]));
    let mut command = as_test_user(&again.bin);
    command
        .current_dir(again.sandbox.path())
        .args(&words)
        .env("PG_MIGRATE_TEST_KILL_AT", "after:restore-all");
    let killed = pgm_testkit::finish(command.output().unwrap());
    assert_eq!(killed.status, -1, "{}", killed.stderr);
    let reverted = again.run(&args(&[&"revert", &"-D", &again.new.datadir, &"--json"]));
    assert_eq!(reverted.status, 0, "{}", reverted.stderr);
    assert_eq!(reverted.summary()["result"], "reverted");
    // Reading every row through the old server sets hint bits on its pages
    // (as any read does); what the old cluster holds is unchanged.
    again.old.start();
    let old_after = capture(&again.old, &again.new.bindir);
    assert_same_state(
        &old_state,
        &old_after,
        (18, 18),
        "old cluster after a revert",
    );
    again.old.stop();
    again.new.with_running(|c| {
        let databases: i64 = c
            .client("postgres")
            .query_one("SELECT count(*) FROM pg_database", &[])
            .unwrap()
            .get(0);
        assert_eq!(databases, 3, "the new cluster is back as initdb made it");
    });
}

/// `--method dump -j 2` killed just after the largest database was dumped
/// over both connections (the manifest not yet written); the server it left
/// stopped with -m immediate, the old cluster started and written to: the
/// resumed run dumps it again, whole, and the new cluster holds the rows
/// written after the kill.
#[test]
fn dump_and_reload_killed_after_the_parallel_dump_resumes_with_later_writes() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    // app the largest (template1, postgres, "odd…", app: the 4th).
    add_data_app_largest(&mut pair.old);
    let mut words = pair.dir_args();
    words.extend(args(&[&"--method", &"dump", &"--json", &"-j", &"2"]));
    let mut command = as_test_user(&pair.bin);
    command
        .current_dir(pair.sandbox.path())
        .args(&words)
        .env("PG_MIGRATE_TEST_KILL_AT", "backup:database:4");
    let killed = pgm_testkit::finish(command.output().unwrap());
    assert_eq!(killed.status, -1, "{}", killed.stderr);
    let dumped: Vec<PathBuf> = walk(&pair.new.datadir.join("pg_migrate.d"))
        .into_iter()
        .filter(|p| p.ends_with("dump-all.partial/database-0004.dump/toc.dat"))
        .collect();
    assert_eq!(
        dumped.len(),
        1,
        "app was not dumped as a directory before the kill"
    );

    // The operator stops the old server the killed run left up, abruptly,
    // and uses the old cluster in between.
    pair.old.stop_immediate();
    pair.old.with_running(|c| {
        c.sql(
            "app",
            "INSERT INTO items (name) VALUES ('written after the kill')",
        )
    });
    pair.old.start();
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();

    let resumed = pair.run(&args(&[&"resume", &"-D", &pair.new.datadir, &"--json"]));
    assert_eq!(resumed.status, 0, "{}", resumed.stderr);
    crate::json_schema::validate(&resumed.events);
    pair.new.start();
    let after = capture(&pair.new, &pair.new.bindir);
    assert_same_state(
        &before,
        &after,
        (15, 18),
        "dump and reload, resumed after later writes",
    );
    let row: i64 = pair
        .new
        .client("app")
        .query_one(
            "SELECT count(*) FROM items WHERE name = 'written after the kill'",
            &[],
        )
        .unwrap()
        .get(0);
    pair.new.stop();
    assert_eq!(row, 1);
}
