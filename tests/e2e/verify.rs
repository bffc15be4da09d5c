//! `--verify` and `pg-migrate verify`: a clean upgrade is proven (by named
//! rules where the majors print the schema differently), a planted
//! difference in the data or the schema is found and fails the run with
//! exit status 6, verifying changes no data file, and sampling picks the
//! same blocks on both sides.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use serde_json::Value;

use crate::proof::*;
use crate::support::*;

fn verify_event(run: &Run) -> Value {
    let events = run.events_named("verify");
    assert_eq!(events.len(), 1, "{}\n{}", run.stderr, run.stdout);
    events[0].clone()
}

/// A cluster's files, less pg-migrate's own directory (its journal and
/// reports change with every run).
fn cluster_files(dir: &std::path::Path) -> pgm_testkit::TreeSnapshot {
    snapshot(dir)
        .into_iter()
        .filter(|(path, _)| !path.starts_with("pg_migrate.d"))
        .collect()
}

/// The bytes of every user relation file (relfilenode ≥ 16384) of a
/// stopped cluster.
fn user_relation_files(dir: &std::path::Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walkdir::WalkDir::new(dir.join("base"))
        .into_iter()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().is_file())
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let relfilenode: Option<u32> =
                name.split(['_', '.']).next().and_then(|n| n.parse().ok());
            relfilenode.is_some_and(|n| n >= 16384)
        })
        .map(|entry| {
            let path = entry.path().strip_prefix(dir).unwrap().to_path_buf();
            (path, std::fs::read(entry.path()).unwrap())
        })
        .collect()
}

/// A heap page with the four hint bits of every row's `t_infomask`
/// cleared (committed/invalid for xmin and xmax), and the page checksum
/// (which covers them) zeroed: what a reading server may change.
fn without_hint_bits(page: &[u8]) -> Vec<u8> {
    const PAGE_HEADER: usize = 24;
    const INFOMASK_OFFSET: usize = 20;
    const HINT_BITS: u16 = 0x0F00;
    let mut page = page.to_vec();
    page[8..10].fill(0);
    let lower = u16::from_le_bytes([page[12], page[13]]) as usize;
    for item in (PAGE_HEADER..lower.min(page.len())).step_by(4) {
        let word = u32::from_le_bytes(page[item..item + 4].try_into().unwrap());
        let (offset, flags) = ((word & 0x7FFF) as usize, (word >> 15) & 3);
        let at = offset + INFOMASK_OFFSET;
        if flags == 1 && at + 2 <= page.len() {
            let mask = u16::from_le_bytes([page[at], page[at + 1]]) & !HINT_BITS;
            page[at..at + 2].copy_from_slice(&mask.to_le_bytes());
        }
    }
    page
}

/// Reading a table through a server sets hint bits on rows whose
/// transaction's outcome was not yet noted on the page; that, and nothing
/// else, may differ: same files, same sizes, same rows.
fn assert_only_hint_bits_changed(
    before: &BTreeMap<PathBuf, Vec<u8>>,
    after: &BTreeMap<PathBuf, Vec<u8>>,
    what: &str,
) {
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{what}: the user relation files"
    );
    let mut hinted = 0;
    for (path, old) in before {
        let new = &after[path];
        if old == new {
            continue;
        }
        let main_fork = !path.to_string_lossy().contains('_');
        assert!(
            main_fork && old.len() == new.len(),
            "{what}: {} changed",
            path.display()
        );
        for (number, (a, b)) in old.chunks(8192).zip(new.chunks(8192)).enumerate() {
            assert!(
                without_hint_bits(a) == without_hint_bits(b),
                "{what}: page {number} of {} changed beyond hint bits",
                path.display()
            );
        }
        hinted += 1;
    }
    eprintln!("{what}: {hinted} files with hint bits set, nothing else changed");
}

fn verify_again(pair: &Pair, extra: &[&str]) -> Run {
    let mut words: Vec<OsString> = vec![
        "verify".into(),
        "-D".into(),
        pair.new.datadir.clone().into(),
        "--json".into(),
    ];
    words.extend(extra.iter().map(OsString::from));
    let run = pair.run(&words);
    crate::json_schema::validate(&run.events);
    run
}

/// 15 → 18 in link mode with the rich fixture: explained by the rules the
/// two majors need, nothing unexplained; the same proof run again changes
/// no data file; then a row changed and an index added in the new cluster
/// are both found.
#[test]
fn verify_proves_a_link_upgrade_and_finds_what_differs() {
    let Some(mut pair) = Pair::new(15, 18) else {
        return;
    };
    pair.old.start();
    load_rich(&pair);
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let mut words = pair.dir_args();
    words.extend([
        "--link".into(),
        "--json".into(),
        "--verify".into(),
        "-j".into(),
        "2".into(),
    ]);
    let run = pair.run(&words);
    crate::json_schema::validate(&run.events);
    assert_eq!(run.status, 0, "{}\n{}", run.stderr, run.stdout);
    let steps: Vec<&str> = run.steps_ended();
    assert!(
        steps.contains(&"record-old") && steps.contains(&"verify"),
        "{steps:?}"
    );
    let event = verify_event(&run);
    assert_eq!(event["outcome"], "explained", "{event}");
    assert_eq!(event["old_measured"], "before_transfer");
    assert_eq!(event["difference_count"], 0, "{event}");
    let rules: Vec<&str> = event["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert!(
        rules.contains(&"role-grant-options") || rules.contains(&"view-deparsing"),
        "{rules:?}"
    );
    assert!(event["tables"].as_u64().unwrap() > 10, "{event}");
    assert!(event["large_objects"].as_u64().unwrap() > 0, "{event}");
    // The upgrade itself, proven independently of --verify.
    pair.new.start();
    let after = capture(&pair.new, &pair.new.bindir);
    assert_same_state(&before, &after, (15, 18), "link 15 -> 18 with --verify");
    pair.new.stop();

    // Verifying again reads only.
    let untouched = cluster_files(&pair.new.datadir);
    let again = verify_again(&pair, &["--verify=full"]);
    assert_eq!(again.status, 0, "{}", again.stderr);
    assert_eq!(verify_event(&again)["outcome"], "explained");
    assert_eq!(again.summary()["command"], "verify");
    crate::proof::assert_data_files_untouched(&untouched, &cluster_files(&pair.new.datadir));

    // A changed row and an extra index are differences no rule explains.
    pair.new.with_running(|c| {
        c.sql(
            "appdb",
            "UPDATE app.orders SET note = 'tampered' WHERE id = (SELECT min(id) FROM app.orders);
             CREATE INDEX planted ON app.orders (id)",
        )
    });
    let found = verify_again(&pair, &[]);
    assert_eq!(found.status, 6, "{}", found.stderr);
    let event = verify_event(&found);
    assert_eq!(event["outcome"], "different");
    let differences = event["differences"].to_string();
    assert!(differences.contains("app.orders"), "{differences}");
    assert!(
        differences.contains("schema + CREATE INDEX planted"),
        "{differences}"
    );
    let error = found.error();
    assert_eq!(error["code"], "verify_found_differences");
    assert_eq!(found.summary()["result"], "verify_failed");
    let report = event["report"].as_str().unwrap();
    assert!(std::path::Path::new(report).exists());
}

/// Copy mode without --verify: `pg-migrate verify` measures the old cluster
/// now (it is as the upgrade left it). Tables larger than the sample limit
/// are sampled by block on both sides, and agree.
#[test]
fn verify_after_a_copy_upgrade_samples_the_same_blocks() {
    let Some(mut pair) = Pair::new(17, 18) else {
        return;
    };
    pair.old.with_running(|c| {
        c.sql(
            "postgres",
            "CREATE TABLE big (id int PRIMARY KEY, payload text);
             INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 20000) g;
             CREATE SEQUENCE s; SELECT nextval('s') FROM generate_series(1, 5);",
        )
    });
    let mut words = pair.dir_args();
    words.extend(["--copy".into(), "--json".into()]);
    let run = pair.run(&words);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let (old_before, new_before) = (
        user_relation_files(&pair.old.datadir),
        user_relation_files(&pair.new.datadir),
    );
    let run = verify_again(&pair, &["--verify-sample-above=64kB"]);
    assert_eq!(run.status, 0, "{}\n{}", run.stderr, run.stdout);
    // Both servers were started and stopped cleanly, and read only: no row
    // changed, only the hint bits any reader may set.
    assert_only_hint_bits_changed(
        &old_before,
        &user_relation_files(&pair.old.datadir),
        "old cluster",
    );
    assert_only_hint_bits_changed(
        &new_before,
        &user_relation_files(&pair.new.datadir),
        "new cluster",
    );
    let event = verify_event(&run);
    assert_eq!(event["old_measured"], "now");
    assert_eq!(event["outcome"], "identical", "{event}");
    assert!(event["sampled_tables"].as_u64().unwrap() >= 1, "{event}");
    assert!(event["sequences"].as_u64().unwrap() >= 1, "{event}");
    // A row changed in the sampled table is found only if its block is
    // read: a change in every block always is.
    pair.new
        .with_running(|c| c.sql("postgres", "UPDATE big SET payload = 'x'"));
    let run = verify_again(&pair, &["--verify-sample-above=64kB"]);
    assert_eq!(run.status, 6, "{}", run.stderr);
    assert!(verify_event(&run)["differences"]
        .to_string()
        .contains("public.big"));
}

/// After a link upgrade made without --verify the old cluster cannot be
/// measured any more: verify says so and changes nothing.
#[test]
fn verify_after_a_link_upgrade_without_a_measure_is_refused() {
    let Some(mut pair) = Pair::new(16, 18) else {
        return;
    };
    add_some_data(&mut pair.old);
    let mut words = pair.dir_args();
    words.extend(["--link".into(), "--json".into()]);
    let run = pair.run(&words);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let (old_before, new_before) = (
        snapshot(&pair.old.datadir),
        cluster_files(&pair.new.datadir),
    );
    let run = verify_again(&pair, &[]);
    assert_eq!(run.status, 5, "{}", run.stderr);
    let error = run.error();
    assert_eq!(error["code"], "verify_not_possible", "{error}");
    assert!(error["remedy"].as_str().unwrap().contains("--verify"));
    let (old_after, new_after) = (
        snapshot(&pair.old.datadir),
        cluster_files(&pair.new.datadir),
    );
    assert_same_tree(&old_before, &old_after, "old cluster");
    assert_same_tree(&new_before, &new_after, "new cluster");
}
