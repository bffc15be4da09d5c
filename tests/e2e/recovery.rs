//! Recovery after what operators do between a failure and the recovery: the
//! old cluster served again before `resume`, the new one started and stopped
//! with `-m immediate` before `revert`, a revert itself cut short (killed,
//! signalled) and run again, a swap plan gone, pg-migrate killed anywhere in
//! its first second, a new cluster with its WAL elsewhere, a supervisor
//! restarting the old server during a copy-mode cutover, and the order of
//! renames and fsyncs that makes each step durable before it is journalled,
//! and a saved new cluster that an earlier pg-migrate stored with holes.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::proof::*;
use crate::support::*;

/// An old 15 cluster with a table, its state before, an empty new 18 one.
fn seeded() -> Option<(Pair, State)> {
    let mut pair = Pair::new(15, 18)?;
    let before = seed(&mut pair);
    Some((pair, before))
}

fn seed(pair: &mut Pair) -> State {
    pair.old.start();
    pair.old.sql(
        "postgres",
        "CREATE TABLE kept AS SELECT g FROM generate_series(1, 1000) g;
         CREATE INDEX ON kept (g);",
    );
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    before
}

/// The upgrade in `mode`, killed with SIGKILL at `point`.
fn killed_at(pair: &Pair, mode: &str, point: &str) {
    let output = as_test_user(&pair.bin)
        .current_dir(pair.sandbox.path())
        .args(with(pair.dir_args(), &[mode]))
        .env("PG_MIGRATE_TEST_KILL_AT", point)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        None,
        "pg-migrate {mode} was not killed at {point}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `pg-migrate revert -D NEW`, killed with SIGKILL at `point`.
fn revert_killed_at(pair: &Pair, point: &str) {
    let output = as_test_user(&pair.bin)
        .current_dir(pair.sandbox.path())
        .args(with(
            vec!["-D".into(), pair.new.datadir.clone().into()],
            &["revert"],
        ))
        .env("PG_MIGRATE_TEST_KILL_AT", point)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        None,
        "revert was not killed at {point}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `pg-migrate <command> -D NEW --json`.
fn on_new(pair: &Pair, command: &str) -> Run {
    pair.run(&with(
        vec!["-D".into(), pair.new.datadir.clone().into()],
        &[command],
    ))
}

/// The old cluster as it is now (started, captured, stopped).
fn old_state_now(pair: &mut Pair) -> State {
    pair.old.start();
    let state = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    state
}

fn served_meanwhile(pair: &mut Pair) {
    pair.old.start();
    pair.old.sql(
        "postgres",
        "CREATE TABLE late (x int); INSERT INTO late VALUES (1), (2);
         UPDATE kept SET g = -g WHERE g <= 10;",
    );
    pair.old.stop();
}

/// The late resume refuses, names the cause and the remedy, and changes
/// nothing; revert and a new upgrade then carry what the old cluster holds.
fn late_resume_refused_then_revert_and_rerun(pair: &mut Pair, mode: &str) {
    let (old_before, new_before) = pair.snapshots();
    let resumed = on_new(pair, "resume");
    assert_eq!(resumed.status, 3, "{}\n{}", resumed.stderr, resumed.stdout);
    crate::json_schema::validate(&resumed.events);
    let error = resumed.error();
    assert_eq!(error["code"], "old_cluster_changed", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("has run since the counters were handed over"),
        "{error}"
    );
    assert!(
        error["remedy"]
            .as_str()
            .unwrap()
            .contains("pg-migrate revert -D"),
        "{error}"
    );
    assert_eq!(error["clusters"]["new"], "incomplete");
    let (old_after, new_after) = pair.snapshots();
    assert_same_tree(&old_before, &old_after, "old cluster (refused resume)");
    assert_same_tree(&new_before, &new_after, "new cluster (refused resume)");
    let reverted = on_new(pair, "revert");
    assert_eq!(reverted.status, 0, "{}", reverted.stderr);
    let now = old_state_now(pair);
    assert!(
        now.dump.contains("late"),
        "the old cluster kept its new table"
    );
    let rerun = pair.run(&with(pair.dir_args(), &[mode]));
    assert_eq!(rerun.status, 0, "{}", rerun.stderr);
    assert_upgraded_to(pair, &now, (15, 18), "upgrade after the refused resume");
}

#[test]
fn resume_refuses_an_old_cluster_that_served_after_a_copy_handover() {
    let Some((mut pair, _)) = seeded() else {
        return;
    };
    killed_at(&pair, "--copy", "transfer:file:1");
    // The advice said the old cluster can be started as before: it served.
    served_meanwhile(&mut pair);
    late_resume_refused_then_revert_and_rerun(&mut pair, "--copy");
}

#[test]
fn resume_refuses_an_old_cluster_made_startable_and_run_in_link_mode() {
    let Some((mut pair, _)) = seeded() else {
        return;
    };
    killed_at(&pair, "--link", "transfer:file:1");
    let global = pair.old.datadir.join("global");
    std::fs::rename(global.join("pg_control.old"), global.join("pg_control")).unwrap();
    served_meanwhile(&mut pair);
    late_resume_refused_then_revert_and_rerun(&mut pair, "--link");
}

#[test]
fn resume_protects_again_an_old_cluster_made_startable_but_not_started() {
    let Some((mut pair, before)) = seeded() else {
        return;
    };
    killed_at(&pair, "--link", "transfer:file:1");
    let global = pair.old.datadir.join("global");
    std::fs::rename(global.join("pg_control.old"), global.join("pg_control")).unwrap();
    let resumed = on_new(&pair, "resume");
    assert_eq!(resumed.status, 0, "{}", resumed.stderr);
    assert!(
        !global.join("pg_control").exists() && global.join("pg_control.old").exists(),
        "the old cluster shares its files with the new one: it must not be startable"
    );
    assert_upgraded_to(
        &mut pair,
        &before,
        (15, 18),
        "resume after pg_control was put back",
    );
}

/// Killed before its point of no return (after the dump); the operator
/// starts the old cluster and it serves. `resume` refuses while that server
/// runs (server_running), changing nothing; `revert` goes through with the
/// old server still serving (it never was disabled: the revert touches only
/// the new cluster), and the old cluster keeps what it was given meanwhile.
#[test]
fn revert_before_the_point_of_no_return_leaves_a_serving_old_server_alone() {
    let Some((mut pair, _)) = seeded() else {
        return;
    };
    killed_at(&pair, "--link", "after:dump-old");
    pair.old.start();
    pair.old
        .sql("postgres", "CREATE TABLE late AS SELECT 1 AS x");
    let resumed = on_new(&pair, "resume");
    assert_eq!(resumed.status, 3, "{}\n{}", resumed.stderr, resumed.stdout);
    assert_eq!(resumed.error()["code"], "server_running");
    let reverted = on_new(&pair, "revert");
    assert_eq!(
        reverted.status, 0,
        "{}\n{}",
        reverted.stderr, reverted.stdout
    );
    crate::json_schema::validate(&reverted.events);
    // Still the operator's server, serving, with its table.
    let rows: i64 = pair
        .old
        .client("postgres")
        .query_one("SELECT count(*) FROM late", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    pair.old.stop();
    let now = old_state_now(&mut pair);
    let rerun = pair.run(&with(pair.dir_args(), &["--link"]));
    assert_eq!(rerun.status, 0, "{}", rerun.stderr);
    assert_upgraded_to(&mut pair, &now, (15, 18), "upgrade after the revert");
}

/// A new cluster started and stopped with `-m immediate` leaves no pid file
/// and no new checkpoint; its writes sit in files it shares with the old one.
fn revert_refused_after_an_immediate_stop(pair: &mut Pair) {
    pair.new.start();
    pair.new.sql("postgres", "INSERT INTO kept VALUES (0)");
    pair.new.stop_immediate();
    assert!(!pair.new.datadir.join("postmaster.pid").exists());
    let (old_before, new_before) = pair.snapshots();
    let refused = on_new(pair, "revert");
    assert_eq!(refused.status, 4, "{}\n{}", refused.stderr, refused.stdout);
    let error = refused.error();
    assert_eq!(error["code"], "new_cluster_has_run", "{error}");
    assert_eq!(error["clusters"]["old"], "protected", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("cluster state"),
        "{error}"
    );
    let (old_after, new_after) = pair.snapshots();
    assert_same_tree(&old_before, &old_after, "old cluster (refused revert)");
    assert_same_tree(&new_before, &new_after, "new cluster (refused revert)");
}

#[test]
fn revert_refuses_a_new_cluster_that_ran_after_the_upgrade_even_stopped_immediately() {
    let Some((mut pair, _)) = seeded() else {
        return;
    };
    let run = pair.run(&with(pair.dir_args(), &["--link"]));
    assert_eq!(run.status, 0, "{}", run.stderr);
    revert_refused_after_an_immediate_stop(&mut pair);
}

#[test]
fn revert_refuses_a_new_cluster_that_ran_after_the_transfer_of_a_failed_run() {
    let Some((mut pair, _)) = seeded() else {
        return;
    };
    killed_at(&pair, "--link", "after:transfer");
    revert_refused_after_an_immediate_stop(&mut pair);
}

/// A swap-mode upgrade killed after its transfer; a revert killed at
/// `revert_point`; the revert run again gives back the old cluster whole.
fn swap_revert_cut_short(revert_point: &str) {
    let Some((mut pair, before)) = seeded() else {
        return;
    };
    killed_at(&pair, "--swap", "after:transfer");
    revert_killed_at(&pair, revert_point);
    // Not resumed: the revert must be finished.
    let resumed = on_new(&pair, "resume");
    assert_eq!(resumed.status, 4, "{}", resumed.stderr);
    assert_eq!(resumed.error()["code"], "unfinished_revert");
    let again = on_new(&pair, "revert");
    assert_eq!(
        again.status, 0,
        "revert again after {revert_point}:\n{}",
        again.stderr
    );
    assert_same_state(
        &before,
        &old_state_now(&mut pair),
        (18, 18),
        &format!("old cluster after a revert cut short at {revert_point}"),
    );
    let rerun = pair.run(&with(pair.dir_args(), &["--swap"]));
    assert_eq!(rerun.status, 0, "{}", rerun.stderr);
    assert_upgraded_to(&mut pair, &before, (15, 18), "swap after the revert");
}

#[test]
fn swap_revert_killed_while_moving_the_new_catalog_out_then_run_again() {
    swap_revert_cut_short("revert:unswap:2");
}

#[test]
fn swap_revert_killed_while_moving_the_old_catalog_back_then_run_again() {
    // A database directory holds a few hundred catalog files: past the
    // first directory's new ones, among its old ones coming back.
    swap_revert_cut_short("revert:unswap:450");
}

#[test]
fn swap_revert_killed_after_giving_the_old_cluster_back_then_run_again() {
    swap_revert_cut_short("revert:old-given-back");
}

#[test]
fn a_signal_during_a_swap_revert_says_what_was_changed() {
    let Some((mut pair, before)) = seeded() else {
        return;
    };
    killed_at(&pair, "--swap", "after:transfer");
    let (child, pause) = spawn_paused(
        &pair,
        &with(
            vec!["-D".into(), pair.new.datadir.clone().into()],
            &["revert"],
        ),
        "revert:unswap:10",
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    std::fs::remove_file(&pause).unwrap();
    let run = pgm_testkit::finish(child.wait_with_output().unwrap());
    assert_eq!(run.status, 4, "{}\n{}", run.stderr, run.stdout);
    let error = run.error();
    assert_eq!(error["code"], "interrupted");
    assert_eq!(error["clusters"]["old"], "protected", "{error}");
    assert_eq!(error["clusters"]["new"], "incomplete", "{error}");
    let remedy = error["remedy"].as_str().unwrap();
    assert!(
        remedy.contains("pg-migrate revert -D") && !remedy.contains("nothing was changed"),
        "{remedy}"
    );
    let again = on_new(&pair, "revert");
    assert_eq!(again.status, 0, "{}", again.stderr);
    assert_same_state(
        &before,
        &old_state_now(&mut pair),
        (18, 18),
        "old cluster after a signalled revert and another",
    );
}

#[test]
fn swap_revert_without_its_transfer_plan_refuses_and_changes_nothing() {
    let Some((pair, _)) = seeded() else {
        return;
    };
    killed_at(&pair, "--swap", "after:transfer");
    let plan = pair.new.datadir.join("pg_migrate.d/transfer-plan.json");
    for damage in ["unreadable", "missing"] {
        if damage == "missing" {
            std::fs::remove_file(&plan).unwrap();
        } else {
            std::fs::write(&plan, b"{\"moves\": [[").unwrap();
        }
        let (old_before, new_before) = pair.snapshots();
        let refused = on_new(&pair, "revert");
        assert_eq!(refused.status, 4, "{damage}: {}", refused.stderr);
        let error = refused.error();
        assert_eq!(error["code"], "revert_failed", "{error}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("transfer-plan.json"),
            "{error}"
        );
        assert_eq!(error["clusters"]["old"], "protected", "{error}");
        let (old_after, new_after) = pair.snapshots();
        assert_same_tree(&old_before, &old_after, "old cluster (swap plan {damage})");
        assert_same_tree(&new_before, &new_after, "new cluster (swap plan {damage})");
    }
}

/// No server runs on either cluster.
fn assert_no_server(pair: &Pair, after: &str) {
    for dir in [&pair.old.datadir, &pair.new.datadir] {
        assert!(
            !dir.join("postmaster.pid").exists(),
            "{after}: a server still runs on {}",
            dir.display()
        );
    }
}

/// After a kill anywhere, revert leaves no server running, tells the truth
/// about the clusters, and the old cluster is as before.
fn revert_after_a_kill(pair: &mut Pair, before: &State, what: &str) {
    let reverted = on_new(pair, "revert");
    crate::json_schema::validate(&reverted.events);
    match reverted.status {
        0 => assert_eq!(reverted.summary()["result"], "reverted"),
        2 => {
            let error = reverted.error();
            assert_eq!(error["code"], "no_journal", "{what}: {error}");
            // Whatever it found running it stopped, and says so.
            let stopped = error["message"].as_str().unwrap().contains("now stopped");
            let said = [&error["clusters"]["old"], &error["clusters"]["new"]]
                .iter()
                .any(|s| **s == "started_and_stopped");
            assert_eq!(stopped, said, "{what}: {error}");
        }
        other => panic!("{what}: revert exited {other}:\n{}", reverted.stderr),
    }
    assert_no_server(pair, what);
    assert_same_state(before, &old_state_now(pair), (18, 18), what);
}

#[test]
fn killed_at_any_point_of_its_first_second_pg_migrate_leaves_nothing_running() {
    let Some((mut pair, before)) = seeded() else {
        return;
    };
    for point in [
        "checks:old-server-started",
        "checks:new-server-started",
        "open-output:pristine-saved",
        "open-output:journal-made",
        "before:dump-old",
    ] {
        killed_at(&pair, "--link", point);
        revert_after_a_kill(&mut pair, &before, &format!("killed at {point}"));
    }
    // And by the clock, wherever that lands.
    for ms in [60, 150, 250, 350, 450, 600, 800, 1000] {
        let mut child = as_test_user(&pair.bin)
            .current_dir(pair.sandbox.path())
            .args(with(pair.dir_args(), &["--link"]))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill();
        let _ = child.wait();
        // A server being started at the kill is up a moment later.
        std::thread::sleep(Duration::from_millis(500));
        revert_after_a_kill(&mut pair, &before, &format!("killed after {ms} ms"));
    }
    // Resume, too, finds what a kill left running.
    killed_at(&pair, "--link", "checks:new-server-started");
    let resumed = on_new(&pair, "resume");
    assert_eq!(resumed.status, 2, "{}", resumed.stderr);
    assert!(resumed.error()["message"]
        .as_str()
        .unwrap()
        .contains("now stopped"));
    assert_no_server(&pair, "resume without a journal");
    killed_at(&pair, "--link", "open-output:journal-made");
    let resumed = on_new(&pair, "resume");
    assert_eq!(resumed.status, 0, "{}", resumed.stderr);
    assert_upgraded_to(
        &mut pair,
        &before,
        (15, 18),
        "resume after a kill in the first second",
    );
}

/// A pair whose new cluster keeps its WAL in a directory of its own.
fn pair_with_external_wal() -> Option<(Pair, State)> {
    require(15)?;
    require(18)?;
    let sandbox = Sandbox::new();
    let wal = sandbox.path().join("new-wal");
    let old = sandbox.cluster("old", 15, &[]);
    let new = sandbox.cluster(
        "new",
        18,
        &["--no-data-checksums", "-X", wal.to_str().unwrap()],
    );
    let bin = binary(&sandbox);
    let mut pair = Pair {
        old,
        new,
        bin,
        sandbox,
    };
    let before = seed(&mut pair);
    Some((pair, before))
}

fn new_cluster_starts(pair: &mut Pair, what: &str) {
    assert!(
        std::fs::read_link(pair.new.datadir.join("pg_wal")).is_ok(),
        "{what}: pg_wal is still a link"
    );
    pair.new.start();
    pair.new.sql("postgres", "SELECT 1");
    pair.new.stop();
}

#[test]
fn a_new_cluster_with_its_wal_elsewhere_is_reset_to_a_cluster_that_starts() {
    let Some((mut pair, before)) = pair_with_external_wal() else {
        return;
    };
    // Revert after the counters were handed over (pg_resetwal wrote the
    // external directory's segments).
    killed_at(&pair, "--link", "after:restore-schema");
    let reverted = on_new(&pair, "revert");
    assert_eq!(reverted.status, 0, "{}", reverted.stderr);
    new_cluster_starts(&mut pair, "after revert");
    // An early resume starts over from a reset new cluster.
    killed_at(&pair, "--copy", "after:handover-counters");
    let resumed = on_new(&pair, "resume");
    assert_eq!(resumed.status, 0, "{}", resumed.stderr);
    assert_upgraded_to(
        &mut pair,
        &before,
        (15, 18),
        "resume with an external WAL directory",
    );
}

#[test]
fn a_prepare_run_again_resets_a_new_cluster_with_its_wal_elsewhere() {
    let Some((mut pair, _)) = pair_with_external_wal() else {
        return;
    };
    killed_at_command(&pair, "prepare", "after:restore-schema");
    let again = pair.run(&with(pair.dir_args(), &["prepare", "--link"]));
    assert_eq!(again.status, 0, "{}", again.stderr);
    let discarded = on_new(&pair, "discard");
    assert_eq!(discarded.status, 0, "{}", discarded.stderr);
    new_cluster_starts(&mut pair, "after a prepare run again and discarded");
}

fn killed_at_command(pair: &Pair, command: &str, point: &str) {
    let output = as_test_user(&pair.bin)
        .current_dir(pair.sandbox.path())
        .args(with(pair.dir_args(), &[command, "--link"]))
        .env("PG_MIGRATE_TEST_KILL_AT", point)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        None,
        "{command} not killed at {point}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_copy_cutover_refuses_when_the_old_server_was_restarted_during_its_copy() {
    let Some((mut pair, before)) = seeded() else {
        return;
    };
    let prepared = pair.run(&with(pair.dir_args(), &["prepare", "--copy"]));
    assert_eq!(prepared.status, 0, "{}", prepared.stderr);
    let (child, pause) = spawn_paused(
        &pair,
        &with(
            vec!["-D".into(), pair.new.datadir.clone().into()],
            &["cutover"],
        ),
        "transfer:file:1",
    );
    // A supervisor brings the old server back while its files are copied.
    pair.old.start();
    std::fs::remove_file(&pause).unwrap();
    let run = pgm_testkit::finish(child.wait_with_output().unwrap());
    assert_eq!(run.status, 3, "{}\n{}", run.stderr, run.stdout);
    let error = run.error();
    assert_eq!(error["code"], "old_cluster_changed", "{error}");
    assert!(
        error["remedy"]
            .as_str()
            .unwrap()
            .contains("pg-migrate revert -D"),
        "{error}"
    );
    pair.old.stop();
    // Finishing it is refused too; going back works.
    let again = on_new(&pair, "cutover");
    assert_ne!(again.status, 0, "{}", again.stderr);
    assert_eq!(again.error()["code"], "old_cluster_changed");
    let reverted = on_new(&pair, "revert");
    assert_eq!(reverted.status, 0, "{}", reverted.stderr);
    assert_same_state(
        &before,
        &old_state_now(&mut pair),
        (18, 18),
        "old cluster after the refused cutover",
    );
}

/// pg-migrate's system calls, as strace saw them (the test user's run).
fn traced(pair: &Pair, args: &[OsString], trace: &Path) -> Run {
    let user = pgm_testkit::test_user();
    let mut command = std::process::Command::new("strace");
    command
        .args(["-f", "-y", "-qq", "-s", "0", "-o"])
        .arg(trace)
        .args([
            "-e",
            "trace=rename,renameat,renameat2,fsync,fdatasync,syncfs,write,pwrite64",
        ]);
    if user.switch {
        command.args(["-u", &user.name]);
    }
    command
        .arg(&pair.bin)
        .args(args)
        .current_dir(pair.sandbox.path())
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGUSER")
        .stdin(std::process::Stdio::null());
    pgm_testkit::finish(command.output().unwrap())
}

#[test]
fn renames_of_pg_control_are_durable_before_they_are_journalled_and_linked_files_are_synced() {
    let Some((pair, _)) = seeded() else {
        return;
    };
    let trace = pair.sandbox.path().join("strace.out");
    let run = traced(&pair, &with(pair.dir_args(), &["--link"]), &trace);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let calls = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    let global = pair.old.datadir.join("global");
    let global = std::fs::canonicalize(&global).unwrap();
    let renamed = lines
        .iter()
        .position(|l| l.contains("rename") && l.contains("pg_control.old\""))
        .unwrap_or_else(|| panic!("no rename of pg_control in the trace:\n{calls}"));
    let synced = lines[renamed..]
        .iter()
        .position(|l| {
            (l.contains(" fsync(") || l.contains(" fdatasync("))
                && l.contains(&format!("<{}>", global.display()))
        })
        .map(|i| renamed + i);
    let journalled = lines[renamed..]
        .iter()
        .position(|l| l.contains("write(") && l.contains("journal.ndjson>"))
        .map(|i| renamed + i)
        .expect("the step is journalled after the rename");
    assert!(
        synced.is_some_and(|s| s < journalled),
        "the old global/ directory must be fsynced between the rename of pg_control and the journal record:\n{}",
        lines[renamed..=journalled].join("\n")
    );
    // The old cluster's relation files, linked rather than fsynced one by
    // one, are flushed by a syncfs of their filesystem.
    assert!(
        lines.iter().any(|l| l.contains(" syncfs(")),
        "no syncfs in the trace of a link upgrade"
    );
}

/// A revert of a finished upgrade, cut short: until it is done, nothing may
/// take the upgrade for finished (the state file says so too): resume and
/// post-upgrade refuse, and the revert run again gives the old cluster back.
#[test]
fn a_revert_of_a_finished_swap_upgrade_cut_short_is_finished_not_taken_for_done() {
    let Some((mut pair, before)) = seeded() else {
        return;
    };
    let run = pair.run(&with(pair.dir_args(), &["--swap"]));
    assert_eq!(run.status, 0, "{}", run.stderr);
    revert_killed_at(&pair, "revert:unswap:5");
    assert_eq!(
        state(&pair),
        "failed",
        "a revert under way is no finished upgrade"
    );
    for command in ["resume", "post-upgrade"] {
        let mut args = vec!["-D".into(), pair.new.datadir.clone().into()];
        if command == "post-upgrade" {
            args.push("--analyze".into());
        }
        let refused = pair.run(&with(args, &[command]));
        assert_eq!(refused.status, 4, "{command}: {}", refused.stderr);
        assert_eq!(refused.error()["code"], "unfinished_revert", "{command}");
    }
    let again = on_new(&pair, "revert");
    assert_eq!(again.status, 0, "{}", again.stderr);
    assert_same_state(
        &before,
        &old_state_now(&mut pair),
        (18, 18),
        "old cluster after a revert of a finished swap upgrade, cut short and run again",
    );
}

/// A link-mode revert cut short after it gave the old pg_control back but
/// before it reset the new cluster; the new cluster is then started and
/// used (it shares the old one's files): run again, the revert refuses.
#[test]
fn a_revert_cut_short_does_not_excuse_a_new_cluster_started_after_it() {
    let Some((mut pair, _)) = seeded() else {
        return;
    };
    let run = pair.run(&with(pair.dir_args(), &["--link"]));
    assert_eq!(run.status, 0, "{}", run.stderr);
    revert_killed_at(&pair, "revert:old-given-back");
    pair.new.start();
    pair.new.sql("postgres", "INSERT INTO kept VALUES (0)");
    pair.new.stop_immediate();
    let refused = on_new(&pair, "revert");
    assert_eq!(refused.status, 4, "{}", refused.stderr);
    assert_eq!(refused.error()["code"], "new_cluster_has_run");
}

/// The saved new cluster, written by a pg-migrate whose archiver could store
/// a file being written back as holes only: revert gives the old cluster
/// back, refuses to put zeros into the new one, names the file and the
/// remedy, and leaves the new cluster's files as they were.
#[test]
fn revert_refuses_a_saved_new_cluster_holding_a_file_as_holes() {
    let Some((mut pair, before)) = seeded() else {
        return;
    };
    killed_at(&pair, "--link", "after:dump-old");
    let archive = pair.new.datadir.join("pg_migrate.d/pristine.tar");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&archive).unwrap());
    // The same archive, but global/1260 (pg_authid) stored as the crate's
    // default builder stores a file whose block count reads 0.
    let holed = pair.sandbox.path().join("holed");
    let rewritten = pair.sandbox.path().join("rewritten.tar");
    {
        let mut reader = tar::Archive::new(std::fs::File::open(&archive).unwrap());
        let mut writer = tar::Builder::new(std::fs::File::create(&rewritten).unwrap());
        for entry in reader.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            if path == Path::new("global/1260") {
                std::fs::File::create(&holed)
                    .unwrap()
                    .set_len(entry.header().size().unwrap())
                    .unwrap();
                writer.append_path_with_name(&holed, &path).unwrap();
            } else {
                let header = entry.header().clone();
                writer.append(&header, entry).unwrap();
            }
        }
        writer.into_inner().unwrap();
    }
    std::fs::rename(&rewritten, &archive).unwrap();
    std::os::unix::fs::chown(&archive, Some(owner), None).unwrap();
    let (_, new_before) = pair.snapshots();
    let refused = on_new(&pair, "revert");
    crate::json_schema::validate(&refused.events);
    assert_ne!(refused.status, 0, "{}", refused.stderr);
    let error = refused.error();
    assert_eq!(error["code"], "reset_failed", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("global/1260") && message.contains("holes"),
        "{error}"
    );
    assert!(
        error["remedy"].as_str().unwrap().contains("initdb"),
        "{error}"
    );
    let outside_journal = |tree: pgm_testkit::TreeSnapshot| -> pgm_testkit::TreeSnapshot {
        tree.into_iter()
            .filter(|(path, _)| !path.starts_with("pg_migrate.d"))
            .collect()
    };
    let (_, new_after) = pair.snapshots();
    assert_same_tree(
        &outside_journal(new_before),
        &outside_journal(new_after),
        "new cluster after the refused reset",
    );
    // Nor does the journal say a reset began.
    let journal =
        std::fs::read_to_string(pair.new.datadir.join("pg_migrate.d/journal.ndjson")).unwrap();
    assert!(!journal.contains("\"reset_started\""), "{journal}");
    assert_same_state(&before, &old_state_now(&mut pair), (18, 18), "old cluster");
}
