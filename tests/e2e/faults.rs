//! Fault injection: pg-migrate is killed with SIGKILL at every step boundary
//! and inside the long steps (PG_MIGRATE_TEST_KILL_AT names the point), in
//! link and copy mode, on the rich fixture. After each kill, `resume` must
//! finish an upgrade that passes the proof, and — on a second copy killed at
//! the same point — `revert` must give back an old cluster whose dump and
//! checksums equal those taken before. Each point is its own test, so the
//! test output lists them all.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::proof::*;
use crate::support::*;

/// A 15 cluster with the rich fixture, made once and copied for every case.
struct Template {
    _sandbox: Sandbox,
    old: PathBuf,
    tablespace: PathBuf,
    before: State,
}

fn template() -> Option<&'static Template> {
    static TEMPLATE: OnceLock<Option<Template>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            require(15)?;
            let new_bindir = require(18)?;
            // In the process's directory: a static's sandbox is never
            // dropped, and 93 MB were left behind by every run.
            let sandbox = Sandbox::new_in(pgm_testkit::process_dir());
            let mut old = sandbox.cluster("old", 15, &[]);
            let tablespace = sandbox.mkdir("tblspc");
            old.start();
            load_rich_into(&old, &new_bindir, &tablespace);
            let before = capture(&old, &new_bindir);
            old.stop();
            Some(Template {
                old: old.datadir.clone(),
                tablespace,
                before,
                _sandbox: sandbox,
            })
        })
        .as_ref()
}

/// A fresh copy of the template (its tablespace link re-pointed) and a fresh
/// empty 18 cluster, in a sandbox of their own.
struct Case {
    old: Cluster,
    new: Cluster,
    tablespace: PathBuf,
    bin: PathBuf,
    sandbox: Sandbox,
}

fn case(template: &Template) -> Case {
    let sandbox = Sandbox::new();
    let old_path = sandbox.path().join("old");
    let tablespace = sandbox.path().join("tblspc");
    run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&template.old)
            .arg(&old_path),
    );
    run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&template.tablespace)
            .arg(&tablespace),
    );
    for link in std::fs::read_dir(old_path.join("pg_tblspc")).unwrap() {
        let link = link.unwrap().path();
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&tablespace, &link).unwrap();
    }
    let old = sandbox.existing("old", 15, &old_path);
    let new = sandbox.cluster("new", 18, no_checksums(18));
    let bin = binary(&sandbox);
    Case {
        old,
        new,
        tablespace,
        bin,
        sandbox,
    }
}

impl Case {
    fn run(&self, args: &[&str], kill_at: Option<&str>) -> Run {
        let mut all: Vec<OsString> = args.iter().map(OsString::from).collect();
        for (flag, value) in [
            ("-b", &self.old.bindir),
            ("-B", &self.new.bindir),
            ("-d", &self.old.datadir),
            ("-D", &self.new.datadir),
        ] {
            all.push(flag.into());
            all.push(value.clone().into());
        }
        all.extend(["--json".into(), "-j".into(), "2".into()]);
        let mut command = as_test_user(&self.bin);
        command.current_dir(self.sandbox.path()).args(&all);
        if let Some(point) = kill_at {
            command.env("PG_MIGRATE_TEST_KILL_AT", point);
        }
        pgm_testkit::finish(command.output().unwrap())
    }

    /// The template's dump names the template's tablespace path.
    fn normalized(&self, state: &State, template: &Template) -> State {
        State {
            dump: state.dump.replace(
                self.tablespace.to_str().unwrap(),
                template.tablespace.to_str().unwrap(),
            ),
            contents: state.contents.clone(),
        }
    }
}

fn killed(run: &Run, point: &str) {
    assert_eq!(
        run.status, -1,
        "kill point {point} was never reached (exit {}):\n{}",
        run.status, run.stderr
    );
}

fn kill_then_resume(mode: &str, point: &str) {
    let Some(template) = template() else { return };
    let mut case = case(template);
    killed(&case.run(&[mode], Some(point)), point);
    let resumed = case.run(&["resume"], None);
    assert_eq!(
        resumed.status, 0,
        "resume after {point}:\n{}\n{}",
        resumed.stderr, resumed.stdout
    );
    crate::json_schema::validate(&resumed.events);
    assert_eq!(
        std::fs::read_to_string(case.new.datadir.join("pg_migrate.d/state"))
            .unwrap()
            .trim(),
        "complete"
    );
    case.new.start();
    let after = case.normalized(&capture(&case.new, &case.new.bindir), template);
    assert_same_state(
        &template.before,
        &after,
        (15, 18),
        &format!("resume after {point}"),
    );
    case.new.stop();
    if mode == "--copy" {
        // The old cluster is as it was.
        case.old.start();
        let again = case.normalized(&capture(&case.old, &case.new.bindir), template);
        assert_same_state(
            &template.before,
            &again,
            (18, 18),
            &format!("old cluster after {point}"),
        );
        case.old.stop();
    }
}

/// Staging directories (copies made ahead of the transfer) in the runs' directories.
fn staged_copy_dirs(new_datadir: &std::path::Path) -> usize {
    std::fs::read_dir(new_datadir.join("pg_migrate.d"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().join("staging").is_dir())
                .count()
        })
        .unwrap_or(0)
}

fn kill_then_revert(mode: &str, point: &str) {
    let Some(template) = template() else { return };
    let mut case = case(template);
    killed(&case.run(&[mode], Some(point)), point);
    if mode == "--copy" && point.contains("restore") {
        assert!(
            staged_copy_dirs(&case.new.datadir) > 0,
            "a kill during the restore leaves the copies made ahead"
        );
    }
    let reverted = case.run(&["revert"], None);
    assert_eq!(
        reverted.status, 0,
        "revert after {point}:\n{}\n{}",
        reverted.stderr, reverted.stdout
    );
    assert_eq!(reverted.summary()["result"], "reverted");
    assert_eq!(
        staged_copy_dirs(&case.new.datadir),
        0,
        "revert removes the copies made ahead"
    );
    assert!(case.old.datadir.join("global/pg_control").exists());
    case.old.start();
    let again = case.normalized(&capture(&case.old, &case.new.bindir), template);
    assert_same_state(
        &template.before,
        &again,
        (18, 18),
        &format!("revert after {point}"),
    );
    case.old.stop();
    // The new cluster is back as initdb made it: the upgrade can run again.
    let rerun = case.run(&[mode], None);
    assert_eq!(rerun.status, 0, "upgrade after revert:\n{}", rerun.stderr);
}

fn kill_point(mode: &str, point: &str) {
    kill_then_resume(mode, point);
    kill_then_revert(mode, point);
}

macro_rules! kill_points {
    ($($name:ident: $mode:expr, $point:expr;)*) => {$(
        #[test]
        fn $name() {
            kill_point($mode, $point);
        }
    )*};
}

kill_points! {
    link_before_dump_old: "--link", "before:dump-old";
    link_after_dump_old: "--link", "after:dump-old";
    link_after_prepare_new: "--link", "after:prepare-new";
    link_inside_handover: "--link", "handover-counters:commit-log-copied";
    link_after_handover: "--link", "after:handover-counters";
    link_inside_restore_first_database: "--link", "restore-schema:database:1";
    link_inside_restore_third_database: "--link", "restore-schema:database:3";
    link_inside_parallel_restore: "--link", "restore-schema:parallel-batch:2";
    link_after_restore: "--link", "after:restore-schema";
    link_after_match_relations: "--link", "after:match-relations";
    link_after_protect_old: "--link", "after:protect-old";
    link_inside_transfer_first_file: "--link", "transfer:file:1";
    link_inside_transfer_many_files: "--link", "transfer:file:60";
    link_after_transfer: "--link", "after:transfer";
    link_after_sync: "--link", "after:sync";
    link_after_finish: "--link", "after:finish";
    swap_after_protect_old: "--swap", "after:protect-old";
    swap_inside_transfer_first_directory: "--swap", "transfer:directory:1";
    swap_inside_transfer_third_directory: "--swap", "transfer:directory:3";
    swap_after_transfer: "--swap", "after:transfer";
    swap_after_finish: "--swap", "after:finish";
    copy_after_dump_old: "--copy", "after:dump-old";
    copy_after_prepare_new: "--copy", "after:prepare-new";
    copy_after_handover: "--copy", "after:handover-counters";
    copy_inside_restore: "--copy", "restore-schema:database:2";
    copy_inside_parallel_restore: "--copy", "restore-schema:parallel-batch:2";
    copy_after_restore: "--copy", "after:restore-schema";
    copy_after_match_relations: "--copy", "after:match-relations";
    copy_inside_transfer_first_file: "--copy", "transfer:file:1";
    copy_inside_transfer_many_files: "--copy", "transfer:file:60";
    copy_after_transfer: "--copy", "after:transfer";
    copy_after_sync: "--copy", "after:sync";
    copy_after_finish: "--copy", "after:finish";
}

/// Killed before the journal exists (the new cluster just created): nothing
/// needs recovering; the same command simply runs again.
#[test]
fn killed_right_after_creating_the_new_cluster() {
    let Some(template) = template() else { return };
    let case = case(template);
    let target = case.sandbox.path().join("created");
    let args = |extra: &[&str]| -> Vec<OsString> {
        let mut all: Vec<OsString> = extra.iter().map(OsString::from).collect();
        for (flag, value) in [
            ("-b", &case.old.bindir),
            ("-B", &case.new.bindir),
            ("-d", &case.old.datadir),
            ("-D", &target),
        ] {
            all.push(flag.into());
            all.push(value.clone().into());
        }
        all.push("--json".into());
        all
    };
    let output = as_test_user(&case.bin)
        .current_dir(case.sandbox.path())
        .args(args(&["--link"]))
        .env("PG_MIGRATE_TEST_KILL_AT", "after:create-new-cluster")
        .output()
        .unwrap();
    killed(&pgm_testkit::finish(output), "after:create-new-cluster");
    assert!(!target.join("pg_migrate.d/journal.ndjson").exists());
    let output = as_test_user(&case.bin)
        .current_dir(case.sandbox.path())
        .args(args(&["--link"]))
        .output()
        .unwrap();
    let run = pgm_testkit::finish(output);
    assert_eq!(run.status, 0, "{}", run.stderr);
}
