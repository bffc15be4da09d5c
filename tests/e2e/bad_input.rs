//! Bad input: each case is refused with a check naming the problem and the
//! fix, a JSON error event, and both clusters left as they were.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;

use crate::support::*;

/// Runs `check` with the directory flags replaced as asked, and asserts the
/// refusal and that neither data directory changed by a single byte.
fn refused_unchanged(pair: &Pair, args: Vec<OsString>, check_id: &str, code: &str) -> Run {
    let (old_before, new_before) = pair.snapshots();
    let mut full: Vec<OsString> = vec!["check".into()];
    full.extend(args);
    full.push("--json".into());
    let run = pair.run(&full);
    assert_refused(&run, check_id, code);
    let (old_after, new_after) = pair.snapshots();
    assert_same_tree(&old_before, &old_after, "old cluster");
    assert_same_tree(&new_before, &new_after, "new cluster");
    assert_eq!(run.error()["clusters"]["old"], "unchanged");
    assert_eq!(run.error()["clusters"]["new"], "unchanged");
    run
}

fn replace(args: &[OsString], flag: &str, value: impl Into<OsString>) -> Vec<OsString> {
    let mut out = args.to_vec();
    let at = out.iter().position(|a| a == flag).unwrap();
    out[at + 1] = value.into();
    out
}

#[test]
fn nonexistent_data_directory() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let args = replace(
        &pair.dir_args(),
        "-d",
        pair.sandbox.path().join("no-such-dir"),
    );
    let run = refused_unchanged(&pair, args, "old-datadir", "datadir_not_found");
    assert!(run.check("old-datadir")["remedy"]
        .as_str()
        .unwrap()
        .contains("-d"));
}

#[test]
fn nonexistent_bin_directory() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let args = replace(&pair.dir_args(), "-B", "/nonexistent/bin");
    let run = refused_unchanged(&pair, args, "new-bindir", "bindir_not_found");
    assert!(run.check("new-bindir")["remedy"]
        .as_str()
        .unwrap()
        .contains("-B"));
}

#[test]
fn unreadable_data_directory() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let (old_before, _) = pair.snapshots();
    std::fs::set_permissions(&pair.old.datadir, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut args: Vec<OsString> = vec!["check".into()];
    args.extend(pair.dir_args());
    args.push("--json".into());
    let run = pair.run(&args);
    std::fs::set_permissions(&pair.old.datadir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_refused(&run, "old-datadir", "datadir_unreadable");
    assert_same_tree(&old_before, &snapshot(&pair.old.datadir), "old cluster");
}

#[test]
fn bin_directory_missing_a_tool() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let partial = pair.sandbox.mkdir("partial-bin");
    for tool in [
        "postgres",
        "pg_ctl",
        "initdb",
        "pg_dumpall",
        "pg_restore",
        "pg_resetwal",
        "vacuumdb",
    ] {
        std::os::unix::fs::symlink(pair.new.bindir.join(tool), partial.join(tool)).unwrap();
    }
    let args = replace(&pair.dir_args(), "-B", &partial);
    let run = refused_unchanged(&pair, args, "new-bindir", "bindir_incomplete");
    let message = run.check("new-bindir")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("pg_dump") && message.contains("psql"),
        "{message}"
    );
    assert!(!message.contains("pg_ctl"), "{message}");
}

#[test]
fn server_only_old_bindir_is_enough() {
    // The old side needs only postgres and pg_ctl: a 12 install from npm has
    // no pg_dump or pg_controldata, and the check passes anyway.
    let Some(pair) = Pair::new(12, 18) else {
        return;
    };
    assert!(!pair.old.bindir.join("pg_controldata").exists());
    let run = pair.check(&[]);
    assert_eq!(run.status, 0, "{}", run.stderr);
}

#[test]
fn bin_directory_of_another_major_than_its_data_directory() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let Some(bin17) = require(17) else { return };
    let args = replace(&pair.dir_args(), "-b", bin17);
    let run = refused_unchanged(
        &pair,
        args,
        "old-datadir-version",
        "datadir_version_mismatch",
    );
    let message = run.check("old-datadir-version")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("PostgreSQL 15") && message.contains("PostgreSQL 17"),
        "{message}"
    );
}

#[test]
fn data_directory_that_is_not_a_cluster() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let empty = pair.sandbox.mkdir("not-a-cluster");
    std::fs::write(empty.join("notes.txt"), "hello").unwrap();
    let before = snapshot(&empty);
    let args = replace(&pair.dir_args(), "-d", &empty);
    let run = refused_unchanged(&pair, args, "old-datadir", "not_a_cluster");
    assert!(run.check("old-datadir")["message"]
        .as_str()
        .unwrap()
        .contains("PG_VERSION"));
    assert_same_tree(&before, &snapshot(&empty), "the directory");
}

#[test]
fn old_and_new_are_the_same_directory() {
    let Some(pair) = Pair::new(18, 18) else {
        return;
    };
    let args = replace(&pair.dir_args(), "-D", &pair.old.datadir);
    let args = replace(&args, "-B", &pair.old.bindir);
    refused_unchanged(&pair, args, "distinct-datadirs", "same_datadir");
}

#[test]
fn old_major_not_older_than_new() {
    // Swapped: 18 as old, 15 as new.
    let Some(pair) = Pair::new(18, 15) else {
        return;
    };
    let run = refused_unchanged(&pair, pair.dir_args(), "version-pair", "version_not_newer");
    assert!(run.check("version-pair")["remedy"]
        .as_str()
        .unwrap()
        .contains("swapped"));
    // Same major on both sides.
    let Some(pair) = Pair::new(17, 17) else {
        return;
    };
    refused_unchanged(&pair, pair.dir_args(), "version-pair", "version_not_newer");
}

#[test]
fn running_new_server() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.new.start();
    let pid = pair.new.postmaster_pid();
    let old_before = snapshot(&pair.old.datadir);
    let run = pair.check(&[]);
    assert_refused(&run, "new-server", "new_server_running");
    assert_same_tree(&old_before, &snapshot(&pair.old.datadir), "old cluster");
    assert_eq!(
        pair.new.postmaster_pid(),
        pid,
        "the new server must not be touched"
    );
    pair.new.stop();
}

#[test]
fn crashed_old_cluster_with_a_stale_pid_file() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    let pid = pair.old.postmaster_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    // Wait until the postmaster is gone (it is the test user's child's child).
    for _ in 0..100 {
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    pair.old.mark_stopped();
    // Its backends notice the postmaster's death and exit soon; wait for quiet.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let run = refused_unchanged(&pair, pair.dir_args(), "old-server", "server_crashed");
    assert!(run.check("old-server")["remedy"]
        .as_str()
        .unwrap()
        .contains("start"));
}

#[test]
fn old_cluster_stopped_without_a_shutdown_checkpoint() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    pair.old.stop_immediate();
    let run = refused_unchanged(
        &pair,
        pair.dir_args(),
        "old-server",
        "server_not_shut_down_cleanly",
    );
    assert!(run.check("old-server")["message"]
        .as_str()
        .unwrap()
        .contains("in production"));
}

#[test]
fn new_cluster_that_is_not_empty() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.new.with_running(|c| {
        c.sql(
            "postgres",
            "CREATE TABLE stray (x int); INSERT INTO stray VALUES (1);",
        );
        c.sql("postgres", "CREATE DATABASE leftover");
        c.sql("postgres", "CREATE ROLE someone");
    });
    let run = pair.check(&[]);
    assert_refused(&run, "new-empty", "new_cluster_not_empty");
    let empty = run.check("new-empty");
    let message = empty["message"].as_str().unwrap();
    assert!(
        message.contains("leftover") && message.contains("postgres (1 user object)"),
        "{message}"
    );
    assert!(
        empty["remedy"].as_str().unwrap().contains("initdb"),
        "{empty}"
    );
    let roles = run.check("new-install-user");
    assert_eq!(roles["code"], "new_cluster_not_empty");
    assert!(roles["message"].as_str().unwrap().contains("someone"));
    // Servers were started for these checks; both were stopped cleanly and
    // kept their contents.
    assert_eq!(run.error()["clusters"]["old"], "started_and_stopped");
    assert_eq!(run.error()["clusters"]["new"], "started_and_stopped");
    for datadir in [&pair.old.datadir, &pair.new.datadir] {
        let control = pgm_cluster::ControlFile::read(datadir).unwrap();
        assert_eq!(control.state, pgm_cluster::ClusterState::ShutDown);
        assert!(!datadir.join("postmaster.pid").exists());
    }
    pair.new.with_running(|c| {
        let n: i64 = c
            .client("postgres")
            .query_one("SELECT count(*) FROM stray", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    });
}

#[test]
fn data_checksums_on_one_side_only() {
    // The most common way wrappers break: 18's initdb enables checksums by
    // default, 15's does not.
    let Some(pair) = Pair::with_options(15, &[], 18, &[]) else {
        return;
    };
    let run = refused_unchanged(
        &pair,
        pair.dir_args(),
        "control-data-checksums",
        "control_mismatch",
    );
    let check = run.check("control-data-checksums");
    assert!(check["message"]
        .as_str()
        .unwrap()
        .contains("old cluster off, new cluster on"));
    assert!(
        check["remedy"]
            .as_str()
            .unwrap()
            .contains("--no-data-checksums"),
        "{check}"
    );
    // And the other way round.
    let Some(pair) = Pair::with_options(15, &["--data-checksums"], 17, &[]) else {
        return;
    };
    let run = refused_unchanged(
        &pair,
        pair.dir_args(),
        "control-data-checksums",
        "control_mismatch",
    );
    assert!(run.check("control-data-checksums")["remedy"]
        .as_str()
        .unwrap()
        .contains("--data-checksums"));
}

#[test]
fn wal_segment_size_mismatch() {
    let Some(pair) = Pair::with_options(15, &["--wal-segsize=32"], 18, &["--no-data-checksums"])
    else {
        return;
    };
    let run = refused_unchanged(
        &pair,
        pair.dir_args(),
        "control-wal-segment-size",
        "control_mismatch",
    );
    let check = run.check("control-wal-segment-size");
    assert!(
        check["message"].as_str().unwrap().contains("33554432"),
        "{check}"
    );
    assert!(
        check["remedy"]
            .as_str()
            .unwrap()
            .contains("--wal-segsize=32"),
        "{check}"
    );
}

#[test]
fn damaged_pg_control() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let control = pair.old.datadir.join("global/pg_control");
    let mut bytes = std::fs::read(&control).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&control, &bytes).unwrap();
    let run = refused_unchanged(&pair, pair.dir_args(), "old-control", "control_damaged");
    assert!(run.check("old-control")["message"]
        .as_str()
        .unwrap()
        .contains("CRC-32C"));
}

#[test]
fn truncated_pg_control() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let control = pair.new.datadir.join("global/pg_control");
    let bytes = std::fs::read(&control).unwrap();
    std::fs::write(&control, &bytes[..100]).unwrap();
    let run = refused_unchanged(&pair, pair.dir_args(), "new-control", "control_damaged");
    assert!(run.check("new-control")["message"]
        .as_str()
        .unwrap()
        .contains("truncated"));
}

#[test]
fn wrong_install_user() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let run = pair.check(&["-U", "nobody_here"]);
    assert_refused(&run, "old-connect", "not_install_user");
    assert!(run.check("old-connect")["remedy"]
        .as_str()
        .unwrap()
        .contains("-U"));
}

#[test]
fn server_options_the_old_server_rejects() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let old_before = snapshot(&pair.old.datadir);
    let run = pair.check(&["-o", "-c no_such_setting=1"]);
    assert_refused(&run, "old-connect", "server_start_failed");
    let message = run.check("old-connect")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("no_such_setting"),
        "the server's own complaint is quoted: {message}"
    );
    // The log is kept and named.
    let logs = run.summary()["logs"]
        .as_str()
        .expect("logs kept after a failure")
        .to_string();
    assert!(std::path::Path::new(&logs)
        .join("log/old-server.log")
        .exists());
    std::fs::remove_dir_all(&logs).unwrap();
    // The server never came up, so nothing in the old cluster changed.
    assert_same_tree(&old_before, &snapshot(&pair.old.datadir), "old cluster");
}

#[test]
fn interrupted_check_stops_the_servers_it_started() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let mut args: Vec<OsString> = vec!["check".into()];
    args.extend(pair.dir_args());
    args.push("--json".into());
    let child = as_test_user(&pair.bin)
        .current_dir(pair.sandbox.path())
        .args(&args)
        .env("PG_MIGRATE_TEST_PAUSE_AT", "checks:old-server-started")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid_file = pair.old.datadir.join("postmaster.pid");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !pid_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the old server never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGINT,
    )
    .unwrap();
    let run = pgm_testkit::finish(child.wait_with_output().unwrap());
    assert_eq!(run.status, 3, "{}", run.stderr);
    assert_eq!(run.error()["code"], "interrupted");
    assert_eq!(run.summary()["exit_code"], 3);
    assert!(!pid_file.exists(), "the old server was left running");
    let control = pgm_cluster::ControlFile::read(&pair.old.datadir).unwrap();
    assert_eq!(control.state, pgm_cluster::ClusterState::ShutDown);
}

/// A directory of the new major already in an old tablespace (left by an
/// earlier attempt) would make the restore fail: the check finds it, with
/// the new cluster present (its exact name) and with one still to be created
/// (any directory of that major).
#[test]
fn tablespace_already_holding_a_directory_of_the_new_major() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    let location = pair.sandbox.mkdir("tblspc");
    pair.old.with_running(|c| {
        c.sql(
            "postgres",
            &format!("CREATE TABLESPACE space LOCATION '{}'", location.display()),
        )
    });
    let control = pgm_cluster::ControlFile::read(&pair.new.datadir).unwrap();
    let leftover = location.join(format!("PG_18_{}", control.catalog_version));
    std::fs::create_dir(&leftover).unwrap();
    pgm_testkit::chown_to_test_user(&leftover);
    let run = refused_unchanged(
        &pair,
        pair.dir_args(),
        "new-tablespace-dirs",
        "new_tablespace_dir_exists",
    );
    assert!(run.check("new-tablespace-dirs")["message"]
        .as_str()
        .unwrap()
        .contains(&leftover.display().to_string()));
    // With -D still to be created, any directory of the new major counts.
    let args = replace(&pair.dir_args(), "-D", pair.sandbox.path().join("new18"));
    refused_unchanged(
        &pair,
        args,
        "new-tablespace-dirs",
        "new_tablespace_dir_exists",
    );
    assert!(!pair.sandbox.path().join("new18").exists());
    // Gone, the check passes.
    std::fs::remove_dir(&leftover).unwrap();
    let run = pair.check(&[]);
    assert_eq!(
        run.check("new-tablespace-dirs")["status"],
        "pass",
        "{}",
        run.stderr
    );
}

/// A postmaster.pid left behind by a cluster that pg_control says was shut
/// down (a container restarted: the pid now names some other live process,
/// or none): not a running server, not a crash. A note; the upgrade's own
/// server replaces the file, as PostgreSQL does.
#[test]
fn a_leftover_pid_file_of_a_cleanly_stopped_cluster_is_no_running_server() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    // A live process of the cluster's owner that is not its postmaster.
    let mut other = as_test_user("sleep")
        .arg("120")
        .current_dir("/")
        .spawn()
        .unwrap();
    std::fs::write(
        pair.old.datadir.join("postmaster.pid"),
        format!(
            "{}\n{}\n1700000000\n{}\n/tmp\n\n  5432001         1\nready   \n",
            other.id(),
            pair.old.datadir.display(),
            pair.old.port
        ),
    )
    .unwrap();
    pgm_testkit::chown_to_test_user(&pair.old.datadir.join("postmaster.pid"));
    let run = pair.check(&[]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let check = run.check("old-server");
    assert_eq!(check["status"], "warn", "{check}");
    assert_eq!(check["code"], "stale_pid_file", "{check}");
    // PostgreSQL alone would take that live process for a postmaster.
    let mut args: Vec<OsString> = vec!["--link".into(), "--json".into()];
    args.extend(pair.dir_args());
    let upgraded = pair.run(&args);
    assert_eq!(upgraded.status, 0, "{}", upgraded.stderr);
    let _ = other.kill();
    let _ = other.wait();
}

/// Packages updated one at a time: programs of another minor release of
/// the same major beside the server. pg-migrate never runs the old side's
/// pg_controldata or pg_resetwal (it reads pg_control itself), so they do
/// not matter; another minor among what it runs (pg_dump, for a backup) is
/// a note; another major among them is refused.
#[test]
fn old_bindir_with_programs_of_another_release() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let mixed = pair.sandbox.mkdir("mixed-bin");
    for entry in std::fs::read_dir(&pair.old.bindir).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), mixed.join(entry.file_name())).unwrap();
    }
    let answer_as = |tool: &str, version: &str| {
        let path = mixed.join(tool);
        let _ = std::fs::remove_file(&path);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho '{tool} (PostgreSQL) {version}'\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    // Another minor release than the installed server's, whatever it is.
    let installed = String::from_utf8(
        run_ok(std::process::Command::new(pair.old.bindir.join("postgres")).arg("--version"))
            .stdout,
    )
    .unwrap();
    let other_minor = if installed.contains(" 15.2") {
        "15.1"
    } else {
        "15.2"
    };
    answer_as("pg_controldata", other_minor);
    answer_as("pg_resetwal", other_minor);
    let args = replace(&pair.dir_args(), "-b", &mixed);
    let mut check: Vec<OsString> = vec!["check".into(), "--json".into()];
    check.extend(args.clone());
    let run = pair.run(&check);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.check("old-bindir")["status"], "pass");
    answer_as("pg_dump", other_minor);
    let run = pair.run(&check);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.check("old-bindir")["status"], "warn");
    assert_eq!(run.check("old-bindir")["code"], "bindir_mixed_minor");
    let mut upgrade: Vec<OsString> = vec!["--link".into(), "--json".into()];
    upgrade.extend(args.clone());
    answer_as("pg_dump", "14.9");
    refused_unchanged(&pair, args, "old-bindir", "bindir_mixed_versions");
    answer_as("pg_dump", other_minor);
    let upgraded = pair.run(&upgrade);
    assert_eq!(upgraded.status, 0, "{}", upgraded.stderr);
}

/// The restore makes the new cluster's directory in every tablespace
/// location: one this user cannot write is found before anything changes.
#[test]
fn tablespace_location_this_user_cannot_write() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    let location = pair.sandbox.mkdir("tblspc");
    pair.old.start();
    pair.old.sql(
        "postgres",
        &format!("CREATE TABLESPACE ts LOCATION '{}'", location.display()),
    );
    pair.old
        .sql("postgres", "CREATE TABLE t (x int) TABLESPACE ts");
    pair.old.stop();
    std::fs::set_permissions(&location, std::fs::Permissions::from_mode(0o555)).unwrap();
    let run = refused_unchanged(
        &pair,
        pair.dir_args(),
        "new-tablespace-dirs",
        "tablespace_not_writable",
    );
    assert!(run.check("new-tablespace-dirs")["message"]
        .as_str()
        .unwrap()
        .contains(location.to_str().unwrap()));
    std::fs::set_permissions(&location, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// After a link upgrade, a run pointed at the old directory again says the
/// upgrade renamed its pg_control and why, not that it is missing.
#[test]
fn an_old_directory_already_upgraded_by_link_is_named_as_such() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let mut args = pair.dir_args();
    args.extend(["--link".into(), "--json".into()]);
    let run = pair.run(&args);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let before = snapshot(&pair.old.datadir);
    let again = pair.sandbox.path().join("new-again");
    let run = pair.run(&[
        "check".into(),
        "-b".into(),
        pair.old.bindir.clone().into(),
        "-B".into(),
        pair.new.bindir.clone().into(),
        "-d".into(),
        pair.old.datadir.clone().into(),
        "-D".into(),
        again.clone().into(),
        "--json".into(),
    ]);
    assert_refused(&run, "old-control", "cluster_already_upgraded");
    let check = run.check("old-control");
    assert!(
        check["message"]
            .as_str()
            .unwrap()
            .contains("pg_control.old"),
        "{check}"
    );
    assert!(
        check["remedy"]
            .as_str()
            .unwrap()
            .contains("pg-migrate revert"),
        "{check}"
    );
    assert!(!again.exists());
    assert_same_tree(&before, &snapshot(&pair.old.datadir), "the old directory");
}
