//! The command line itself: usage errors and refusing root, in text and JSON.

use crate::support::*;

#[test]
fn missing_directories_are_a_usage_error_with_a_json_event() {
    let sandbox = Sandbox::new();
    let bin = binary(&sandbox);
    let run = pgm_testkit::pg_migrate(
        &bin,
        sandbox.path(),
        &[
            "check".as_ref(),
            "--json".as_ref(),
            "-b".as_ref(),
            "/x".as_ref(),
        ],
    );
    assert_eq!(run.status, 2, "{}", run.stderr);
    let error = run.error();
    assert_eq!(error["code"], "usage");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("old data directory"),
        "{error}"
    );
    assert!(
        error["remedy"].as_str().unwrap().contains("PGDATAOLD"),
        "{error}"
    );
    assert_eq!(run.summary()["exit_code"], 2);
}

#[test]
fn unknown_flags_are_a_usage_error_with_a_json_event() {
    let sandbox = Sandbox::new();
    let bin = binary(&sandbox);
    let run = pgm_testkit::pg_migrate(
        &bin,
        sandbox.path(),
        &["--json".as_ref(), "--frobnicate".as_ref()],
    );
    assert_eq!(run.status, 2);
    assert_eq!(run.error()["code"], "usage");
    assert!(run.error()["message"]
        .as_str()
        .unwrap()
        .contains("--frobnicate"));
    // Without --json: clap's own message on stderr, nothing on stdout.
    let run = pgm_testkit::pg_migrate(
        &bin,
        sandbox.path(),
        &["--link".as_ref(), "--copy".as_ref()],
    );
    assert_eq!(run.status, 2);
    assert!(run.stdout.is_empty());
    assert!(run.stderr.contains("cannot be used with"), "{}", run.stderr);
}

#[test]
fn refuses_to_run_as_root() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: only root can show that pg-migrate refuses root");
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI runs as root, so this test must run there"
        );
        return;
    }
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let (old_before, new_before) = pair.snapshots();
    let output = std::process::Command::new(&pair.bin)
        .arg("check")
        .args(pair.dir_args())
        .arg("--json")
        .current_dir(pair.sandbox.path())
        .output()
        .unwrap();
    let run = pgm_testkit::finish(output);
    assert_eq!(run.status, 2);
    assert_eq!(run.error()["code"], "running_as_root");
    assert!(run.error()["remedy"].as_str().unwrap().contains("postgres"));
    assert!(run.stderr.contains("cannot be run as root"));
    let (old_after, new_after) = pair.snapshots();
    assert_same_tree(&old_before, &old_after, "old cluster");
    assert_same_tree(&new_before, &new_after, "new cluster");
}

#[test]
fn help_names_the_pg_upgrade_options() {
    let sandbox = Sandbox::new();
    let bin = binary(&sandbox);
    let run = pgm_testkit::pg_migrate(&bin, sandbox.path(), &["--help".as_ref()]);
    assert_eq!(run.status, 0);
    for flag in [
        "--old-bindir",
        "--new-bindir",
        "--old-datadir",
        "--new-datadir",
        "--old-port",
        "--new-port",
        "--username",
        "--socketdir",
        "--jobs",
        "--old-options",
        "--new-options",
        "--check",
        "--link",
        "--copy",
        "--clone",
        "--copy-file-range",
        "--swap",
        "--retain",
        "--no-sync",
        "--sync-method",
        "--verbose",
        "--no-statistics",
        "--set-char-signedness",
        "--json",
        "PGBINOLD",
        "PGDATANEW",
        "PGPORTOLD",
        "PGUSER",
        "PGSOCKETDIR",
    ] {
        assert!(run.stdout.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn set_char_signedness_is_refused_for_an_old_cluster_that_records_it() {
    let Some(bin18) = require(18) else { return };
    let _ = bin18;
    // Only an 18 (or later) old cluster records signedness; no newer target
    // exists here, so the refusal is shown next to the version-pair failure.
    let Some(pair) = Pair::new(18, 18) else {
        return;
    };
    let run = pair.check(&["--set-char-signedness", "unsigned"]);
    assert_eq!(run.status, 1);
    let check = run.check("char-signedness");
    assert_eq!(check["code"], "set_char_signedness_not_allowed");
    // Allowed (and reported) for an old cluster before 18.
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    let run = pair.check(&["--set-char-signedness", "unsigned"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(run.check("char-signedness")["message"]
        .as_str()
        .unwrap()
        .contains("unsigned"));
}
