//! `pg-migrate check` on every supported pair of real clusters.

use crate::support::*;

/// Every check id a complete run reports, in order.
const ALL_CHECKS: [&str; 64] = [
    "old-bindir",
    "new-bindir",
    "version-pair",
    "old-datadir",
    "new-datadir",
    "distinct-datadirs",
    "old-datadir-version",
    "old-control",
    "old-server",
    "new-datadir-version",
    "new-control",
    "new-server",
    "control-alignment",
    "control-block-size",
    "control-segment-size",
    "control-wal-block-size",
    "control-wal-segment-size",
    "control-name-length",
    "control-index-columns",
    "control-toast-chunk",
    "control-large-object-chunk",
    "control-data-checksums",
    "char-signedness",
    "old-tablespace-locations",
    "new-tablespace-dirs",
    "transfer-mode",
    "disk-space",
    "old-connect",
    "old-install-user",
    "old-databases",
    "old-names",
    "old-database-scan",
    "old-prepared-transactions",
    "old-reg-types",
    "old-system-composite-columns",
    "old-tables-with-oids",
    "old-sql-identifier-columns",
    "old-removed-time-types",
    "old-aclitem-columns",
    "old-postfix-operators",
    "old-polymorphic-functions",
    "old-encoding-conversions",
    "old-not-null-inheritance",
    "old-logical-slots",
    "old-logical-slots-usable",
    "old-subscription-states",
    "old-subscription-origins",
    "old-isn-float8",
    "old-reserved-role-names",
    "new-connect",
    "new-install-user",
    "new-empty",
    "new-prepared-transactions",
    "template0-locale",
    "new-icu",
    "new-lz4",
    "new-xml",
    "new-extensions",
    "new-libraries",
    "new-collation-versions",
    "new-unicode-version",
    "new-replication-origins",
    "new-logical-slots",
    "new-physical-slots",
];

fn check_passes(old_major: u32, new_major: u32) {
    let Some(mut pair) = Pair::new(old_major, new_major) else {
        return;
    };
    add_some_data(&mut pair.old);
    let run = pair.check(&["-j", "2"]);
    assert_eq!(
        run.status, 0,
        "stderr:\n{}\nstdout:\n{}",
        run.stderr, run.stdout
    );
    let ids: Vec<&str> = run
        .events_named("check")
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ALL_CHECKS);
    // The checks' progress counted to exactly the checks reported.
    let progress = run.events_named("progress");
    let last = progress
        .iter()
        .rfind(|e| e["step"] == "checks")
        .expect("the checks report their progress");
    assert_eq!(last["done"], ALL_CHECKS.len(), "{last}");
    assert_eq!(last["total"], ALL_CHECKS.len(), "{last}");
    assert_eq!(last["unit"], "checks", "{last}");
    for check in run.events_named("check") {
        assert_eq!(check["status"], "pass", "{check}");
    }
    assert_eq!(run.events[0]["event"], "plan");
    let summary = run.summary();
    assert_eq!(summary["result"], "ok");
    assert_eq!(summary["checks"]["pass"], ALL_CHECKS.len());
    assert!(summary["old_version"]
        .as_str()
        .unwrap()
        .starts_with(&old_major.to_string()));
    assert!(summary["new_version"]
        .as_str()
        .unwrap()
        .starts_with(&new_major.to_string()));
    assert!(run.events_named("error").is_empty());
    // Every database was reached, two at a time.
    let scan = run.check("old-database-scan")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        scan.starts_with("4 databases scanned") && scan.ends_with("2 at a time"),
        "{scan}"
    );
    // The old cluster is intact and still starts with its data.
    pair.old.with_running(|c| {
        let n: i64 = c
            .client("app")
            .query_one("SELECT count(*) FROM items", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 500);
    });
    // The run directory (sockets, logs) is gone after success.
    let run_dir = run.events[0]["run_dir"].as_str().unwrap();
    assert!(
        !std::path::Path::new(run_dir).exists(),
        "{run_dir} left behind"
    );
}

macro_rules! pairs {
    ($($name:ident: $old:expr => $new:expr;)*) => {$(
        #[test]
        fn $name() {
            check_passes($old, $new);
        }
    )*};
}

pairs! {
    check_15_to_17: 15 => 17;
    check_15_to_18: 15 => 18;
    check_17_to_18: 17 => 18;
    check_10_to_18: 10 => 18;
    check_11_to_18: 11 => 18;
    check_12_to_18: 12 => 18;
    check_13_to_18: 13 => 18;
    check_14_to_18: 14 => 18;
    check_16_to_18: 16 => 18;
}

#[test]
fn human_output_lists_every_check_on_stderr_and_nothing_on_stdout() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let mut args = vec!["check".into()];
    args.extend(pair.dir_args());
    let run = pair.run(&args);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        run.stdout.is_empty(),
        "stdout must stay empty without --json: {}",
        run.stdout
    );
    assert_eq!(
        run.stderr.matches('✓').count(),
        ALL_CHECKS.len(),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("*Clusters are compatible*"));
}

#[test]
fn pg_upgrade_flags_and_environment_variables_are_accepted() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    // The pg_upgrade spelling: -c instead of the subcommand, every path from
    // the environment, the options pg_upgrade has.
    let output = as_test_user(&pair.bin)
        .current_dir(pair.sandbox.path())
        .args([
            "-c",
            "--json",
            "-k",
            "-j",
            "2",
            "-r",
            "-N",
            "--sync-method=fsync",
            "-v",
        ])
        .args(["-p", "50555", "-P", "50556", "-s", "/tmp"])
        .args(["-o", "-c work_mem=8MB", "-O", "-c work_mem=16MB"])
        .env("PGBINOLD", &pair.old.bindir)
        .env("PGBINNEW", &pair.new.bindir)
        .env("PGDATAOLD", &pair.old.datadir)
        .env("PGDATANEW", &pair.new.datadir)
        .output()
        .unwrap();
    let run = pgm_testkit::finish(output);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let plan = &run.events[0];
    assert_eq!(plan["mode"], "link");
    assert_eq!(plan["old"]["port"], 50555);
    assert_eq!(plan["jobs"], 2);
    // The next step says to drop what was given: -c, not a subcommand.
    let next = run.summary()["next_steps"].to_string();
    assert!(next.contains("without -c/--check"), "{next}");
    // --verbose shows every command with its duration.
    assert!(
        run.stderr.contains("pg_ctl") && run.stderr.contains(" ms"),
        "{}",
        run.stderr
    );
    // --retain keeps the run directory and says where.
    let logs = run.summary()["logs"]
        .as_str()
        .expect("logs kept with -r")
        .to_string();
    let server_log =
        std::fs::read_to_string(std::path::Path::new(&logs).join("log/new-server.log")).unwrap();
    assert!(!server_log.is_empty());
    std::fs::remove_dir_all(&logs).unwrap();
}

#[test]
fn live_check_inspects_a_running_old_server_and_leaves_it_running() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    add_some_data(&mut pair.old);
    pair.old.start();
    let pid = pair.old.postmaster_pid();
    let run = pair.check(&[]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let server = run.check("old-server");
    assert_eq!(server["status"], "warn");
    assert_eq!(server["code"], "old_server_running");
    assert!(run.check("old-connect")["message"]
        .as_str()
        .unwrap()
        .contains("inspected while running"));
    assert!(run.check("old-database-scan")["message"]
        .as_str()
        .unwrap()
        .starts_with("4 databases"));
    assert_eq!(
        pair.old.postmaster_pid(),
        pid,
        "the old server must keep running"
    );
    pair.old.sql("app", "SELECT 1");
    // The upgrade itself refuses a running old server, and leaves it running.
    let mut args = pair.dir_args();
    args.push("--json".into());
    let run = pair.run(&args);
    assert_refused(&run, "old-server", "old_server_running");
    assert_eq!(pair.old.postmaster_pid(), pid);
    pair.old.stop();
}

#[test]
fn configuration_only_directories_are_resolved() {
    // Debian's layout: postgresql.conf, pg_hba.conf and pg_ident.conf live
    // in /etc/postgresql/<major>/<name>, which is what -d/-D name.
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let config = pair.sandbox.mkdir("old-config");
    for file in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
        std::fs::rename(pair.old.datadir.join(file), config.join(file)).unwrap();
    }
    let mut conf = std::fs::read_to_string(config.join("postgresql.conf")).unwrap();
    conf.push_str(&format!(
        "\ndata_directory = '{}'\n",
        pair.old.datadir.display()
    ));
    std::fs::write(config.join("postgresql.conf"), conf).unwrap();
    let mut args: Vec<std::ffi::OsString> = vec!["check".into()];
    let mut dirs = pair.dir_args();
    let at = dirs.iter().position(|a| a == "-d").unwrap();
    dirs[at + 1] = config.clone().into();
    args.extend(dirs);
    args.push("--json".into());
    let run = pair.run(&args);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let datadir = run.check("old-datadir")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        datadir.contains(pair.old.datadir.to_str().unwrap()),
        "{datadir}"
    );
}

#[test]
fn check_with_a_new_data_directory_still_to_be_created() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let mut args: Vec<std::ffi::OsString> = vec!["check".into()];
    let mut dirs = pair.dir_args();
    let at = dirs.iter().position(|a| a == "-D").unwrap();
    let target = pair.sandbox.path().join("not-yet");
    dirs[at + 1] = target.clone().into();
    args.extend(dirs);
    args.push("--json".into());
    let run = pair.run(&args);
    assert_eq!(run.status, 0, "{}", run.stderr);
    crate::json_schema::validate(&run.events);
    assert!(run.check("new-datadir")["message"]
        .as_str()
        .unwrap()
        .contains("will create it"));
    assert_eq!(run.check("new-empty")["status"], "skip");
    assert_eq!(
        run.check("old-connect")["status"],
        "pass",
        "the old cluster is still inspected"
    );
    assert!(!target.exists(), "check creates nothing");
    // A parent that does not exist is refused.
    let mut args: Vec<std::ffi::OsString> = vec!["check".into()];
    let mut dirs = pair.dir_args();
    dirs[at + 1] = pair.sandbox.path().join("no/such/parent").into();
    args.extend(dirs);
    args.push("--json".into());
    let run = pair.run(&args);
    assert_refused(&run, "new-datadir", "datadir_not_found");
}

/// When an early check fails, every later one is still listed (skipped):
/// a person counting the list sees all of them.
#[test]
fn an_early_failure_still_lists_every_check() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let Some(other_new) = pgm_testkit::require(17) else {
        return;
    };
    // -B names 17 while -D holds an 18 cluster: refused on disk, early.
    let run = pair.check(&["-B", other_new.to_str().unwrap()]);
    assert_eq!(run.status, 1, "{}", run.stderr);
    let ids: Vec<&str> = run
        .events_named("check")
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ALL_CHECKS);
    assert_eq!(run.check("new-datadir-version")["status"], "fail");
    assert_eq!(run.check("old-removed-time-types")["status"], "skip");
}

/// The checks' catalog queries over many relations get row estimates in the
/// millions, and JIT then spends most of a second compiling each: none of
/// pg-migrate's queries may be compiled, on a server it starts (jit=off) or
/// on a running one it inspects (turned off per session). pg_stat_statements
/// counts the functions each query had compiled.
#[test]
fn no_query_of_pg_migrate_is_jit_compiled() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    let llvmjit = pair.old.bindir.parent().unwrap().join("lib/llvmjit.so");
    assert!(
        llvmjit.exists()
            || pair
                .old
                .bindir
                .parent()
                .unwrap()
                .join("lib/postgresql/llvmjit.so")
                .exists(),
        "PostgreSQL 15 here has no JIT provider: this test would prove nothing"
    );
    let conf = pair.old.datadir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(
        "\nshared_preload_libraries = 'pg_stat_statements'\njit = on\njit_above_cost = 0\n\
         pg_stat_statements.track = all\n",
    );
    std::fs::write(&conf, text).unwrap();
    pair.old.start();
    pair.old
        .sql("postgres", "CREATE EXTENSION pg_stat_statements");
    // JIT works here: a catalog query of our own is compiled.
    pair.old.sql(
        "postgres",
        "SELECT count(*) AS jit_probe FROM pg_catalog.pg_class WHERE relname ~ 'x'",
    );
    let compiled = |cluster: &Cluster, what: &str| -> i64 {
        cluster
            .client("postgres")
            .query_one(
                &format!(
                    "SELECT coalesce(sum(jit_functions), 0)::bigint FROM pg_stat_statements
                      WHERE {what}"
                ),
                &[],
            )
            .unwrap()
            .get(0)
    };
    assert!(
        compiled(&pair.old, "query ~ 'jit_probe'") > 0,
        "JIT compiled nothing"
    );
    // Each session's first statement (which turns JIT off) runs before JIT
    // is off: compiled here (jit_above_cost = 0), never at the default cost.
    let ours = "query !~ 'jit_probe' AND query !~ 'pg_stat_statements' AND query ~ 'pg_catalog' \
                AND query !~ 'set_config'";
    // A running server is inspected over sessions with JIT off.
    pair.old
        .sql("postgres", "SELECT pg_stat_statements_reset()");
    let none_compiled = |cluster: &Cluster, which: &str| {
        let queries: i64 = cluster
            .client("postgres")
            .query_one(
                &format!("SELECT count(*) FROM pg_stat_statements WHERE {ours}"),
                &[],
            )
            .unwrap()
            .get(0);
        assert!(
            queries > 5,
            "{which}: its queries were not seen ({queries})"
        );
        assert_eq!(
            compiled(cluster, ours),
            0,
            "{which}: a query was JIT-compiled: {:?}",
            compiled_queries(cluster, ours)
        );
    };
    let run = pair.check(&[]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    none_compiled(&pair.old, "the live check");
    // A server pg-migrate starts itself runs with jit=off (the statistics
    // are saved at its shutdown and read at the next start).
    pair.old
        .sql("postgres", "SELECT pg_stat_statements_reset()");
    pair.old.stop();
    let run = pair.check(&[]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    pair.old.start();
    none_compiled(&pair.old, "the check on a server pg-migrate started");
    pair.old.stop();
}

fn compiled_queries(cluster: &Cluster, which: &str) -> Vec<String> {
    cluster
        .client("postgres")
        .query(
            &format!("SELECT left(query, 120) FROM pg_stat_statements WHERE {which} AND jit_functions > 0"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}
