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
    pair.old.start();
    load_rich(&pair);
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
    pair.old.sql(
        "appdb",
        "SELECT nextval('app.orders_id_seq') FROM generate_series(1, 7)",
    );
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();

    let run = cutover(&pair, &[]);
    assert_eq!(run.status, 0, "cutover:\n{}\n{}", run.stderr, run.stdout);
    assert_eq!(state(&pair), "complete");
    let steps: Vec<&str> = run
        .events_named("step_end")
        .iter()
        .map(|e| e["step"].as_str().unwrap())
        .collect();
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
    assert_healthy(&pair.new);
    // The freeze held: freezing everything again finds nothing wrong, and
    // the catalogs' tuples check out.
    for db in ["postgres", "appdb"] {
        let mut client = pair.new.client(db);
        client.batch_execute("VACUUM (FREEZE)").unwrap();
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            .unwrap();
        for catalog in [
            "pg_class",
            "pg_attribute",
            "pg_type",
            "pg_proc",
            "pg_depend",
        ] {
            let problems: i64 = client
                .query_one(
                    &format!("SELECT count(*) FROM verify_heapam('pg_catalog.{catalog}')"),
                    &[],
                )
                .unwrap()
                .get(0);
            assert_eq!(problems, 0, "{db}: verify_heapam({catalog})");
        }
    }
    pair.new.stop();
}

#[test]
fn prepare_then_cutover_link_15_to_18() {
    prove_online(15, 18, "--link");
}

#[test]
fn prepare_then_cutover_copy_17_to_18() {
    prove_online(17, 18, "--copy");
}
