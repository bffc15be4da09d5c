//! Safety beyond the happy path: one run at a time, no new upgrade over an
//! unfinished one, revert's limits, signals, hostile names and paths, shell
//! metacharacters, private servers and files, no secrets in logs, and a full
//! disk.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::proof::*;
use crate::support::*;

#[test]
fn a_second_run_on_the_same_clusters_is_refused() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let (child, pause) = spawn_paused(
        &pair,
        &with(pair.dir_args(), &["check"]),
        "checks:old-server-started",
    );
    let second = pair.run(&with(pair.dir_args(), &["check"]));
    assert_eq!(second.status, 2, "{}", second.stderr);
    assert_eq!(second.error()["code"], "locked");
    assert!(second.error()["message"]
        .as_str()
        .unwrap()
        .contains(pair.old.datadir.to_str().unwrap()));
    std::fs::remove_file(&pause).unwrap();
    let first = pgm_testkit::finish(child.wait_with_output().unwrap());
    assert_eq!(first.status, 0, "{}", first.stderr);
}

#[test]
fn an_unfinished_upgrade_is_not_run_over() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let output = as_test_user(&pair.bin)
        .current_dir(pair.sandbox.path())
        .args(with(pair.dir_args(), &["--copy"]))
        .env("PG_MIGRATE_TEST_KILL_AT", "after:restore-schema")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), None, "killed");
    assert_eq!(state(&pair), "upgrading");
    for extra in [&["--copy"][..], &["check"][..]] {
        let run = pair.run(&with(pair.dir_args(), extra));
        assert_eq!(run.status, 2, "{}", run.stderr);
        assert_eq!(run.error()["code"], "unfinished_upgrade");
        let remedy = run.error()["remedy"].as_str().unwrap();
        assert!(
            remedy.contains("pg-migrate resume -D") && remedy.contains("pg-migrate revert -D"),
            "{remedy}"
        );
    }
}

#[test]
fn revert_after_a_finished_link_upgrade_and_its_limit() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    pair.old.sql(
        "postgres",
        "CREATE TABLE kept AS SELECT g FROM generate_series(1, 1000) g;",
    );
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let run = pair.run(&with(pair.dir_args(), &["--link"]));
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(state(&pair), "complete");
    // Never started since: revert gives the old cluster back, as it was.
    let reverted = pair.run(&with(
        vec!["-D".into(), pair.new.datadir.clone().into()],
        &["revert"],
    ));
    assert_eq!(reverted.status, 0, "{}", reverted.stderr);
    assert_eq!(state(&pair), "reverted");
    // Reverting or resuming what was reverted is refused, changing nothing.
    let (old_before, new_before) = pair.snapshots();
    for command in ["revert", "resume"] {
        let again = pair.run(&with(
            vec!["-D".into(), pair.new.datadir.clone().into()],
            &[command],
        ));
        assert_eq!(again.status, 2, "{}", again.stderr);
        assert_eq!(again.error()["code"], "already_reverted");
    }
    let (old_after, new_after) = pair.snapshots();
    assert_same_tree(&old_before, &old_after, "old cluster");
    assert_same_tree(&new_before, &new_after, "new cluster");
    pair.old.start();
    assert_same_state(
        &before,
        &capture(&pair.old, &pair.new.bindir),
        (18, 18),
        "old cluster after revert",
    );
    pair.old.stop();
    // Upgrade again, then run the new cluster: now revert must refuse.
    let run = pair.run(&with(pair.dir_args(), &["--link"]));
    assert_eq!(run.status, 0, "{}", run.stderr);
    // A finished upgrade is not run over.
    let again = pair.run(&with(pair.dir_args(), &["--link"]));
    assert_eq!(again.status, 2, "{}", again.stderr);
    assert_eq!(again.error()["code"], "already_upgraded");
    pair.new.start();
    pair.new.sql("postgres", "INSERT INTO kept VALUES (0)");
    pair.new.stop();
    let refused = pair.run(&with(
        vec!["-D".into(), pair.new.datadir.clone().into()],
        &["revert"],
    ));
    assert_eq!(refused.status, 4, "{}", refused.stderr);
    assert_eq!(refused.error()["code"], "new_cluster_has_run");
    assert!(
        pair.old.datadir.join("global/pg_control.old").exists(),
        "nothing was undone"
    );
}

fn interrupted(mode: &str, point: &str, expect_exit: i32, old_state: &str) {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    pair.old.sql(
        "postgres",
        "CREATE TABLE kept AS SELECT g FROM generate_series(1, 1000) g;",
    );
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let (child, pause) = spawn_paused(&pair, &with(pair.dir_args(), &[mode]), point);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    std::fs::remove_file(&pause).unwrap();
    let run = pgm_testkit::finish(child.wait_with_output().unwrap());
    assert_eq!(run.status, expect_exit, "{}", run.stderr);
    assert_eq!(
        run.events_named("error").len(),
        1,
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    let error = run.error();
    assert_eq!(
        error["code"], "interrupted",
        "{}\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(error["clusters"]["old"], old_state);
    assert!(
        error["remedy"]
            .as_str()
            .unwrap()
            .contains("pg-migrate resume -D"),
        "{error}"
    );
    assert_eq!(run.summary()["exit_code"], expect_exit);
    assert_eq!(state(&pair), "failed");
    let journal =
        std::fs::read_to_string(pair.new.datadir.join("pg_migrate.d/journal.ndjson")).unwrap();
    assert!(journal.contains("\"interrupted\""));
    assert!(
        !pair.new.datadir.join("postmaster.pid").exists(),
        "the new server was stopped"
    );
    assert!(
        !pair.old.datadir.join("postmaster.pid").exists(),
        "the old server was stopped"
    );
    let resumed = pair.run(&with(
        vec!["-D".into(), pair.new.datadir.clone().into()],
        &["resume"],
    ));
    assert_eq!(resumed.status, 0, "{}", resumed.stderr);
    pair.new.start();
    assert_same_state(
        &before,
        &capture(&pair.new, &pair.new.bindir),
        (15, 18),
        "after resume",
    );
    pair.new.stop();
}

#[test]
fn sigterm_during_the_restore_is_recorded_and_resumable() {
    interrupted(
        "--copy",
        "restore-schema:database:1",
        3,
        "started_and_stopped",
    );
}

#[test]
fn sigterm_after_the_point_of_no_return_says_so() {
    interrupted("--link", "after:protect-old", 4, "protected");
}

#[test]
fn sigterm_in_the_middle_of_a_swap_says_so_and_resumes() {
    interrupted("--swap", "transfer:directory:1", 4, "protected");
}

/// Names and paths that break naive quoting, a symlinked data directory,
/// group access, a new data directory with spaces created by pg-migrate.
#[test]
fn hostile_names_and_paths() {
    let Some(_) = require(15) else { return };
    let Some(new_bindir) = require(18) else {
        return;
    };
    let sandbox = Sandbox::new();
    let odd = sandbox.mkdir("dir with 'quotes' and spaces");
    let old_path = odd.join("old data");
    let mut old = sandbox.cluster("old", 15, &["--allow-group-access"]);
    std::fs::rename(&old.datadir, &old_path).unwrap();
    old.datadir = old_path.clone();
    let link = sandbox.path().join("old-link");
    std::os::unix::fs::symlink(&old_path, &link).unwrap();
    // PostgreSQL refuses single quotes in tablespace locations; spaces it takes.
    let tablespace = sandbox.mkdir("space dir").join("table space");
    std::fs::create_dir(&tablespace).unwrap();
    pgm_testkit::chown_to_test_user(&tablespace);
    old.start();
    psql_file(
        &old,
        &new_bindir,
        "postgres",
        &fixture("hostile.sql"),
        &[("tblspc", tablespace.to_str().unwrap())],
    );
    let per_database = [
        (
            "it's a \"db\" \\with\\ = and spaces",
            "CREATE SCHEMA \"sch'ema \"\"x\"\" \\ y\";
             CREATE EXTENSION hstore SCHEMA \"sch'ema \"\"x\"\" \\ y\";
             CREATE TABLE \"sch'ema \"\"x\"\" \\ y\".\"tab'le \"\"t\"\" = 1\" (\"col'umn \"\"c\"\"\" int PRIMARY KEY, h \"sch'ema \"\"x\"\" \\ y\".hstore);
             INSERT INTO \"sch'ema \"\"x\"\" \\ y\".\"tab'le \"\"t\"\" = 1\" SELECT g, ('k=>' || g)::\"sch'ema \"\"x\"\" \\ y\".hstore FROM generate_series(1, 100) g;
             GRANT SELECT ON \"sch'ema \"\"x\"\" \\ y\".\"tab'le \"\"t\"\" = 1\" TO \"-leading-dash-role\";",
        ),
        ("-leading-dash-db", "CREATE TABLE \"-t\" (\"-c\" text); INSERT INTO \"-t\" VALUES ('--help'), ('-c fsync=off');"),
        ("ünïcödé ✓ db", "CREATE TABLE \"ünïcödé ✓ tåble\" (v text); INSERT INTO \"ünïcödé ✓ tåble\" VALUES ('✓'), ('ü');"),
        (
            "d23456789012345678901234567890123456789012345678901234567890123",
            "CREATE TABLE t23456789012345678901234567890123456789012345678901234567890123 (c int); INSERT INTO t23456789012345678901234567890123456789012345678901234567890123 VALUES (63);",
        ),
        ("dbname=postgres host=elsewhere", "CREATE TABLE lookalike (v text); INSERT INTO lookalike VALUES ('not the postgres database');"),
    ];
    for (db, sql) in per_database {
        old.sql(db, sql);
    }
    let before = capture(&old, &new_bindir);
    old.stop();
    let target = odd.join("new data, made by pg-migrate");
    let bin = binary(&sandbox);
    let args: Vec<OsString> = vec![
        "--link".into(),
        "--json".into(),
        "-b".into(),
        old.bindir.clone().into(),
        "-B".into(),
        new_bindir.clone().into(),
        "-d".into(),
        link.clone().into(),
        "-D".into(),
        target.clone().into(),
    ];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let run = pgm_testkit::pg_migrate(&bin, sandbox.path(), &refs);
    assert_eq!(run.status, 0, "{}\n{}", run.stderr, run.stdout);
    // Group access is preserved in the cluster pg-migrate made.
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o750, "new data directory mode {mode:o}");
    std::fs::write(target.join("pg_hba.conf"), "local all all trust\n").unwrap();
    let mut new = sandbox.existing("made", 18, &target);
    new.start();
    let after = capture(&new, &new_bindir);
    assert_same_state(&before, &after, (15, 18), "hostile names");
    let value: String = new
        .client("dbname=postgres host=elsewhere")
        .query_one("SELECT v FROM lookalike", &[])
        .unwrap()
        .get(0);
    assert_eq!(value, "not the postgres database");
    new.stop();
}

#[test]
fn names_with_line_breaks_are_refused_before_anything_changes() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    pair.old.sql("postgres", "CREATE DATABASE \"two\nlines\"");
    pair.old.stop();
    let run = pair.check(&[]);
    assert_refused(&run, "old-names", "newline_in_name");
    assert!(run.check("old-names")["message"]
        .as_str()
        .unwrap()
        .contains("two\\nlines"));
}

/// -o/-O text reaches the server as words; no shell ever runs any of it.
#[test]
fn shell_metacharacters_in_server_options_are_not_run() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let witness = pair.sandbox.path().join("pwned");
    // Quoted values work as a user means them.
    let run = pair.check(&[
        "-o",
        "-c application_name='a b;c' -c work_mem=8MB",
        "-O",
        "-c work_mem=16MB",
    ]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    for hostile in [
        format!("-c work_mem=8MB; touch {}", witness.display()),
        format!("-c work_mem=8MB $(touch {})", witness.display()),
        format!("-c work_mem=8MB `touch {}`", witness.display()),
        format!("-c work_mem=8MB | touch {}", witness.display()),
    ] {
        let run = pair.check(&["-o", &hostile]);
        assert_eq!(run.status, 1, "{hostile}: {}", run.stderr);
        assert_eq!(run.check("old-connect")["code"], "server_start_failed");
        assert!(!witness.exists(), "{hostile} ran a command");
    }
}

#[test]
fn temporary_servers_listen_on_no_tcp_port() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    for point in ["checks:old-server-started", "checks:new-server-started"] {
        let (child, pause) = spawn_paused(&pair, &with(pair.dir_args(), &["check"]), point);
        let datadir = if point.contains("old") {
            &pair.old.datadir
        } else {
            &pair.new.datadir
        };
        let pid_file = std::fs::read_to_string(datadir.join("postmaster.pid")).unwrap();
        let lines: Vec<&str> = pid_file.lines().collect();
        let port: u16 = lines[3].trim().parse().unwrap();
        let socket_dir = Path::new(lines[4].trim());
        assert_eq!(lines[5].trim(), "", "listen address line must be empty");
        for address in ["127.0.0.1", "::1"] {
            let target = std::net::SocketAddr::new(address.parse().unwrap(), port);
            assert!(
                std::net::TcpStream::connect_timeout(&target, Duration::from_millis(500)).is_err(),
                "something listens on {address}:{port}"
            );
        }
        let mode = std::fs::metadata(socket_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "socket directory {}", socket_dir.display());
        std::fs::remove_file(&pause).unwrap();
        let run = pgm_testkit::finish(child.wait_with_output().unwrap());
        assert_eq!(run.status, 0, "{}", run.stderr);
    }
}

/// Everything pg-migrate writes is private to its owner, and no password or
/// connection secret of the fixture shows in its logs or its JSON.
#[test]
fn private_files_and_no_secrets_in_logs_or_events() {
    let Some(mut pair) = Pair::new(12, 18) else {
        return;
    };
    pair.old.start();
    load_rich(&pair);
    pair.old.stop();
    let run = pair.run(&with(pair.dir_args(), &["--link", "--retain", "-v"]));
    assert_eq!(run.status, 0, "{}", run.stderr);
    // The scripts for the operator are among them (pg_migrate.d).
    let written: Vec<PathBuf> = walkdir_files(&pair.new.datadir.join("pg_migrate.d"));
    for script in ["delete_old_cluster.sh", "update_extensions.sql"] {
        assert!(written.iter().any(|p| p.ends_with(script)), "{script}");
    }
    for path in &written {
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "{} is readable by others ({:o})",
            path.display(),
            mode & 0o777
        );
    }
    let logs: Vec<PathBuf> = written
        .iter()
        .filter(|p| p.to_string_lossy().contains("/log/"))
        .cloned()
        .collect();
    assert!(logs.len() >= 5, "{logs:?}");
    let mut texts = vec![run.stdout.clone(), run.stderr.clone()];
    texts.extend(
        logs.iter()
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned()),
    );
    for secret in ["owner-secret", "remote-secret", "SCRAM-SHA-256$"] {
        for text in &texts {
            assert!(
                !text.contains(secret),
                "{secret} appears in pg-migrate's output or logs"
            );
        }
    }
}

fn walkdir_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out
}

#[test]
fn copy_onto_a_filesystem_that_is_too_small() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    let Some(disk) = SmallDisk::mount_or_skip(&pair.sandbox.path().join("small"), 70, "the test")
    else {
        return;
    };
    pair.old.start();
    pair.old.sql("postgres", "CREATE TABLE filler AS SELECT g, md5(g::text) || md5((g + 1)::text) AS v FROM generate_series(1, 400000) g;");
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let new = Sandbox::cluster_at(&pair.sandbox, &disk.path.join("new"), 18, no_checksums(18));
    let mut args = pair.dir_args();
    let at = args.iter().position(|a| a == "-D").unwrap();
    args[at + 1] = new.datadir.clone().into();

    // The check sees that the copy cannot fit, before anything changes.
    let old_snapshot = snapshot(&pair.old.datadir);
    let run = pair.run(&with(args.clone(), &["--copy"]));
    assert_refused(&run, "disk-space", "insufficient_space");
    assert_same_tree(&old_snapshot, &snapshot(&pair.old.datadir), "old cluster");

    // Room enough at the check, but the disk fills up before the transfer
    // (which, for this test, has to copy everything itself): a clean
    // failure, then resume once there is room again.
    disk.resize(200);
    let (child, pause) = spawn_paused_with(
        &pair,
        &with(args.clone(), &["--copy"]),
        "before:transfer",
        &[("PG_MIGRATE_TEST_NO_COPY_AHEAD", "1")],
    );
    let ballast = disk.path.join("ballast");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=400"])
        .arg(format!("of={}", ballast.display()))
        .stderr(Stdio::null())
        .status();
    std::fs::remove_file(&pause).unwrap();
    let run = pgm_testkit::finish(child.wait_with_output().unwrap());
    assert_eq!(run.status, 3, "{}", run.stderr);
    assert_eq!(run.error()["code"], "transfer_failed");
    assert!(
        run.error()["message"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{}",
        run.error()
    );
    assert_eq!(run.error()["clusters"]["old"], "started_and_stopped");
    std::fs::remove_file(&ballast).unwrap();
    let resumed = pair.run(&with(
        vec!["-D".into(), new.datadir.clone().into()],
        &["resume"],
    ));
    assert_eq!(resumed.status, 0, "{}", resumed.stderr);
    let mut new = new;
    new.start();
    assert_same_state(
        &before,
        &capture(&new, &pair.new.bindir),
        (15, 18),
        "after a full disk and resume",
    );
    new.stop();
    pair.old.start();
    assert_same_state(
        &before,
        &capture(&pair.old, &pair.new.bindir),
        (18, 18),
        "old cluster",
    );
    pair.old.stop();
    drop(disk);
}

/// resume and revert need a journal; a new data directory without one is refused.
#[test]
fn resume_and_revert_without_a_journal_are_refused() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let (old_before, new_before) = pair.snapshots();
    for command in ["resume", "revert"] {
        let run = pair.run(&with(
            vec!["-D".into(), pair.new.datadir.clone().into()],
            &[command],
        ));
        assert_eq!(run.status, 2, "{}", run.stderr);
        let error = run.error();
        assert_eq!(error["code"], "no_journal");
        assert!(error["remedy"].as_str().unwrap().contains("-D"), "{error}");
    }
    let (old_after, new_after) = pair.snapshots();
    assert_same_tree(&old_before, &old_after, "old cluster");
    assert_same_tree(&new_before, &new_after, "new cluster");
}
