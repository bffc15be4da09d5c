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
    crate::json_schema::validate(&run.events);
    // No data directory was named: no cluster to call "unchanged".
    assert_eq!(error["clusters"]["old"], "not_named", "{error}");
    assert_eq!(error["clusters"]["new"], "not_named", "{error}");
    assert_eq!(run.summary()["exit_code"], 2);
    let text = pgm_testkit::pg_migrate(
        &bin,
        sandbox.path(),
        &["check".as_ref(), "-b".as_ref(), "/x".as_ref()],
    );
    assert!(!text.stderr.contains("old cluster:"), "{}", text.stderr);
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
    assert_eq!(run.error()["clusters"]["old"], "not_named");
    assert!(run.error()["message"]
        .as_str()
        .unwrap()
        .contains("--frobnicate"));
    // A count of CPUs that is not one: named, before anything is looked at.
    let run = pgm_testkit::pg_migrate(
        &bin,
        sandbox.path(),
        &["--json".as_ref(), "--cpus".as_ref(), "0".as_ref()],
    );
    assert_eq!(run.status, 2);
    assert_eq!(run.error()["code"], "usage");
    assert!(
        run.error()["message"].as_str().unwrap().contains("--cpus"),
        "{}",
        run.error()
    );
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

/// What PostgreSQL's programs do, pg-migrate does: `-?` is help (for every
/// command too), a repeated option takes its last value, `-V` names the
/// pg_upgrade it stands in for beside its own version.
#[test]
fn drop_in_details_of_the_command_line() {
    let sandbox = Sandbox::new();
    let bin = binary(&sandbox);
    let run_with = |args: &[&str]| {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        pgm_testkit::pg_migrate(&bin, sandbox.path(), &args)
    };
    let help = run_with(&["--help"]);
    let question = run_with(&["-?"]);
    assert_eq!(question.status, 0, "{}", question.stderr);
    assert!(
        question.stdout.contains("--old-datadir"),
        "{}",
        question.stdout
    );
    assert!(help.stdout.contains("Usage: pg-migrate"));
    let check_help = run_with(&["check", "-?"]);
    assert_eq!(check_help.status, 0, "{}", check_help.stderr);
    assert!(
        check_help.stdout.contains("Usage: pg-migrate check"),
        "{}",
        check_help.stdout
    );
    // check's help shows what the checks use, not what happens after them.
    for shown in [
        "--old-datadir",
        "--link",
        "--swap",
        "--jobs",
        "--carry-config",
        "--strict",
    ] {
        assert!(
            check_help.stdout.contains(shown),
            "{shown}:\n{}",
            check_help.stdout
        );
    }
    for hidden in [
        "--analyze",
        "--no-sync",
        "--post-upgrade",
        "--stop-old",
        "--verify",
        "--standby-kit",
    ] {
        assert!(
            !check_help.stdout.contains(&format!("  {hidden}")),
            "{hidden}:\n{}",
            check_help.stdout
        );
    }
    assert!(check_help
        .stdout
        .contains("accepted and change nothing here"));

    let version = run_with(&["-V"]);
    assert_eq!(version.status, 0);
    let line = version.stdout.trim();
    assert!(
        line.starts_with(&format!("pg-migrate {}", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    let (oldest, newest, oldest_new) = (
        pgm_cluster::version::OLDEST_SUPPORTED.number(),
        pgm_cluster::version::NEWEST_SUPPORTED.number(),
        pgm_cluster::version::OLDEST_NEW.number(),
    );
    assert!(
        line.contains(&format!(
            "pg_upgrade of PostgreSQL {oldest_new} to {newest}"
        )) && line.contains(&format!("old clusters of {oldest} to {newest}")),
        "{line}"
    );

    // Twice -b (and -j): the last is used, as getopt does for pg_upgrade.
    let repeated = run_with(&[
        "check",
        "--json",
        "-j",
        "1",
        "-j",
        "3",
        "-b",
        "/nonexistent/first",
        "-b",
        "/nonexistent/last",
        "-B",
        "/nonexistent/new",
        "-d",
        "/nonexistent/old-data",
        "-D",
        "/nonexistent/new-data",
    ]);
    assert_eq!(repeated.status, 1, "{}", repeated.stderr);
    let plan = &repeated.events_named("plan")[0];
    assert_eq!(plan["old"]["bindir"], "/nonexistent/last", "{plan}");
    assert_eq!(plan["jobs"], 3, "{plan}");
    assert!(repeated.check("old-bindir")["message"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/last"));
    // The upgrade's command line with check added still parses: its
    // after-steps are accepted (and the checks run as without them).
    let upgrade_line = run_with(&[
        "check",
        "--json",
        "-N",
        "--analyze",
        "--post-upgrade",
        "/nonexistent/scripts",
        "-b",
        "/nonexistent/old",
        "-B",
        "/nonexistent/new",
        "-d",
        "/nonexistent/old-data",
        "-D",
        "/nonexistent/new-data",
    ]);
    assert_eq!(upgrade_line.status, 1, "{}", upgrade_line.stderr);
    assert!(upgrade_line
        .events_named("error")
        .iter()
        .all(|e| e["code"] != "usage"));
    assert_eq!(upgrade_line.check("old-bindir")["status"], "fail");
}

/// The man pages and completions come from the command-line definition:
/// one page per visible command, each naming that command's options, and
/// completion scripts the shells load.
#[test]
fn man_pages_and_completions_are_generated_from_the_options() {
    let sandbox = Sandbox::new();
    let bin = binary(&sandbox);
    let dir = sandbox.path().join("man");
    let run = pgm_testkit::pg_migrate(
        &bin,
        sandbox.path(),
        &["generate".as_ref(), "man".as_ref(), dir.as_os_str()],
    );
    assert_eq!(run.status, 0, "{}", run.stderr);
    let page = |name: &str| {
        std::fs::read_to_string(dir.join(format!("{name}.1")))
            .unwrap_or_else(|e| panic!("{name}.1: {e}"))
    };
    let main = page("pg-migrate");
    assert!(main.contains(".TH pg-migrate 1"), "{main}");
    for flag in ["old\\-datadir", "new\\-bindir", "\\-\\-link", "\\-\\-json"] {
        assert!(main.contains(flag), "pg-migrate.1 lacks {flag}");
    }
    for command in [
        "check",
        "resume",
        "revert",
        "prepare",
        "cutover",
        "standby",
        "standby-kit",
        "patroni",
    ] {
        let text = page(&format!("pg-migrate-{command}"));
        assert!(text.contains(".SH OPTIONS"), "{command}");
    }
    assert!(
        !dir.join("pg-migrate-patroni-member.1").exists(),
        "hidden commands get no page"
    );
    for shell in ["bash", "zsh", "fish"] {
        let run = pgm_testkit::pg_migrate(
            &bin,
            sandbox.path(),
            &["generate".as_ref(), "completions".as_ref(), shell.as_ref()],
        );
        assert_eq!(run.status, 0, "{shell}: {}", run.stderr);
        assert!(run.stdout.contains("pg-migrate"), "{shell}");
        assert!(run.stdout.contains("old-datadir"), "{shell}");
        if shell == "bash" {
            // Bash itself loads it and registers the completion.
            let script = sandbox.path().join("pg-migrate.bash");
            std::fs::write(&script, &run.stdout).unwrap();
            let out = std::process::Command::new("bash")
                .args(["-c", "source \"$0\" && complete -p pg-migrate"])
                .arg(&script)
                .output()
                .unwrap();
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("pg-migrate"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
