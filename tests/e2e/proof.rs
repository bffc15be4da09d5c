//! The proof of an upgrade: the old cluster dumped before and the new one
//! after by the same (new) pg_dumpall must be identical; every table's
//! contents, every sequence and every large object must match by checksum;
//! the new cluster must start, answer, accept writes, and pass amcheck.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::support::*;

/// A fixed key for pg_dump's `\restrict` lines, which are otherwise random.
const RESTRICT_KEY: &str = "pgmigratetest";

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Runs a SQL file with the given psql against a running cluster.
pub fn psql_file(
    cluster: &Cluster,
    psql_bindir: &Path,
    database: &str,
    file: &Path,
    vars: &[(&str, &str)],
) {
    let mut command = as_test_user(psql_bindir.join("psql"));
    command
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&cluster.sockdir)
        .args(["-p", &cluster.port.to_string(), "-d", database, "-f"])
        .arg(file);
    for (name, value) in vars {
        command.args(["-v", &format!("{name}={value}")]);
    }
    run_ok(&mut command);
}

/// Loads fixtures/rich/base.sql into a running old cluster; its tablespace
/// goes to `<sandbox>/tblspc`.
pub fn load_rich(pair: &Pair) -> PathBuf {
    let tablespace = pair.sandbox.mkdir("tblspc");
    load_rich_into(&pair.old, &pair.new.bindir, &tablespace);
    tablespace
}

pub fn load_rich_into(cluster: &Cluster, psql_bindir: &Path, tablespace: &Path) {
    psql_file(
        cluster,
        psql_bindir,
        "postgres",
        &fixture("rich/base.sql"),
        &[("tblspc", tablespace.to_str().unwrap())],
    );
}

/// A decimal of 16 or more significant digits as the shortest text of the
/// double it reads as; anything else as it is.
fn shortest_float(field: &str) -> String {
    let digits = field
        .chars()
        .take_while(|c| *c != 'e')
        .filter(char::is_ascii_digit)
        .count();
    let decimal = field.contains('.')
        && field
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e'));
    match field.parse::<f64>() {
        Ok(value) if decimal && digits >= 16 => format!("{value}"),
        _ => field.to_string(),
    }
}

/// pg_dumpall of a running cluster, made with the programs in `bindir`.
pub fn dumpall(cluster: &Cluster, bindir: &Path) -> String {
    let output = run_ok(
        as_test_user(bindir.join("pg_dumpall"))
            .args(["-h"])
            .arg(&cluster.sockdir)
            .args([
                "-p",
                &cluster.port.to_string(),
                "--no-sync",
                &format!("--restrict-key={RESTRICT_KEY}"),
            ]),
    );
    // Databases in other encodings (LATIN1) dump in their own encoding.
    String::from_utf8_lossy(&output.stdout).into_owned()
}

thread_local! {
    /// Set by a proof from an old 10 or 11: floats are compared as both
    /// majors can print them (rounded to 15 digits; 12 prints the shortest
    /// exact form, older servers could not). The dumps still compare them
    /// exactly (the "float output" rule).
    static ROUNDED_FLOATS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Compares floats as an old cluster of `old_major` can print them (see
/// `ROUNDED_FLOATS`), in this thread's later [`contents_of`].
pub fn round_floats_for(old_major: u32) {
    ROUNDED_FLOATS.set(old_major < 12);
}

/// Table row counts and content checksums, sequence states and large-object
/// checksums of every connectable database but the templates.
pub fn contents(cluster: &Cluster) -> BTreeMap<String, String> {
    contents_of(cluster, false)
}

/// [`contents`], without unlogged tables when `logged_only` (a standby has
/// none of their rows, and refuses to read them).
pub fn contents_of(cluster: &Cluster, logged_only: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let databases: Vec<String> = cluster
        .client("postgres")
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn AND datname NOT IN ('template1') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for db in databases {
        let mut client = cluster.client(&db);
        if ROUNDED_FLOATS.get() {
            client.batch_execute("SET extra_float_digits = 0").unwrap();
        }
        let tables: Vec<(String, String)> = client
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname), c.relkind::text
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind IN ('r', 'm', 'p', 'S')
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
                    AND (NOT $1 OR c.relpersistence = 'p')
                  ORDER BY 1",
                &[&logged_only],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (table, kind) in tables {
            let sql = if kind == "S" {
                format!("SELECT last_value::text || ' ' || is_called::text FROM {table}")
            } else {
                format!(
                    "SELECT count(*)::text || ' ' || coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '-') FROM ONLY {table} t"
                )
            };
            let value: String = client.query_one(sql.as_str(), &[]).unwrap().get(0);
            out.insert(format!("{db}: {table}"), value);
        }
        let los: Vec<String> = client
            .query(
                "SELECT oid::text || ' ' || md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY oid",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        out.insert(format!("{db}: large objects"), los.join(", "));
    }
    out
}

/// Differences between a dump of the old cluster and one of the new cluster
/// that are not differences in what the clusters hold, each named and
/// explained; applied to both dumps alike. PostgreSQL's own pg_upgrade
/// produces the same differences (the pg_upgrade comparison test checks the
/// two new clusters against each other with no rule at all).
pub fn normalize(dump: &str, old_major: u32, new_major: u32) -> String {
    let mut out = Vec::new();
    let mut in_view = false;
    for line in dump.lines() {
        // Rule "server version header": each database's dump names the server
        // it was taken from.
        if line.starts_with("-- Dumped from database version") {
            continue;
        }
        // Rule "float output" (old before 12): pg_dump prints floats with
        // 17 significant digits from a server before 12 and in their
        // shortest exact form from 12 on; a data value of 16 or more digits
        // is compared as the shortest form of the double it reads as.
        let line = if old_major < 12 && line.contains('\t') {
            std::borrow::Cow::Owned(
                line.split('\t')
                    .map(shortest_float)
                    .collect::<Vec<_>>()
                    .join("\t"),
            )
        } else {
            std::borrow::Cow::Borrowed(line)
        };
        let line = line.as_ref();
        // Rule "trigger functions" (old before 12): a 12+ server prints a
        // trigger's EXECUTE FUNCTION, an older one EXECUTE PROCEDURE.
        let line = if old_major < 12
            && (line.starts_with("CREATE TRIGGER ")
                || line.starts_with("CREATE CONSTRAINT TRIGGER "))
        {
            std::borrow::Cow::Owned(line.replace(" EXECUTE PROCEDURE ", " EXECUTE FUNCTION "))
        } else {
            std::borrow::Cow::Borrowed(line)
        };
        let line = line.as_ref();
        // Rule "table access method" (old before 12): pg_dump sets the
        // default table access method before each table of a 12+ server
        // (heap, the only one before 12).
        if old_major < 12 && line.starts_with("SET default_table_access_method = ") {
            continue;
        }
        // Rule "multirange types" (old before 14): 14 gave every range type a
        // multirange type, which pg_dump names for a 14+ server only.
        if old_major < 14 && line.trim_start().starts_with("multirange_type_name = ") {
            continue;
        }
        // Rule "empty sections" (old before 15): pg_dumpall prints a section
        // for privileges on parameters (15+) even when it is empty; runs of
        // blank lines are collapsed on both sides.
        if old_major < 15 && line.is_empty() && out.last().is_some_and(|l: &String| l.is_empty()) {
            continue;
        }
        let mut line = line.to_string();
        // Rule "procedure argument modes" (old before 14): 14 prints the IN
        // of procedure arguments (procedures gained OUT arguments).
        if old_major < 14
            && new_major >= 14
            && (line.starts_with("CREATE PROCEDURE ") || line.starts_with("ALTER PROCEDURE "))
        {
            line = line.replace("(IN ", "(").replace(", IN ", ", ");
        }
        // Rule "role grant options" (old before 16): 16 added the INHERIT
        // option and the grantor to role memberships; pg_dumpall prints them
        // for a 16+ server and cannot for an older one.
        if old_major < 16 && new_major >= 16 && line.starts_with("GRANT ") && !line.contains(" ON ")
        {
            line = line
                .replace(", INHERIT TRUE", "")
                .replace(" WITH INHERIT TRUE", "");
            if let Some(at) = line.find(" GRANTED BY ") {
                line.truncate(at);
                line.push(';');
            }
        }
        // Rule "view deparsing" (old before 16): view bodies are printed by
        // the server; 16 stopped qualifying column names with the table name
        // when a query reads a single relation. Qualifiers are dropped from
        // view bodies on both sides.
        if old_major < 16 && new_major >= 16 {
            if line.starts_with("CREATE VIEW ") || line.starts_with("CREATE MATERIALIZED VIEW ") {
                in_view = true;
            }
            if in_view {
                line = strip_qualifiers(&line);
                if line.trim_end().ends_with(';') {
                    in_view = false;
                }
            }
        }
        out.push(line);
    }
    out.join("\n")
}

/// `a.b` → `b` for identifiers (not numbers) in one line of a view body.
fn strip_qualifiers(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let start_ok = i == 0
            || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_' || chars[i - 1] == '.');
        if start_ok && (chars[i].is_alphabetic() || chars[i] == '_') {
            let mut j = i;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            if j + 1 < chars.len()
                && chars[j] == '.'
                && (chars[j + 1].is_alphabetic() || chars[j + 1] == '_' || chars[j + 1] == '"')
            {
                i = j + 1;
                continue;
            }
            out.extend(&chars[i..j]);
            i = j;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// A line diff good enough to read a dump mismatch.
pub fn assert_same_dump(before: &str, after: &str, what: &str) {
    if before == after {
        return;
    }
    // Both dumps, for a closer look than the excerpt below.
    let stem = std::env::temp_dir().join(format!(
        "pgm-dump-{}",
        what.chars()
            .map(|c| if c.is_alphanumeric() { c } else { '_' })
            .collect::<String>()
    ));
    let _ = std::fs::write(stem.with_extension("before.sql"), before);
    let _ = std::fs::write(stem.with_extension("after.sql"), after);
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let mut report = Vec::new();
    let (mut i, mut j) = (0, 0);
    while (i < a.len() || j < b.len()) && report.len() < 60 {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
            continue;
        }
        // Resynchronise on the next line both sides share.
        let next = (i..a.len().min(i + 200)).find_map(|x| {
            (j..b.len().min(j + 200))
                .find(|&y| a[x] == b[y])
                .map(|y| (x, y))
        });
        let (x, y) = next.unwrap_or((a.len(), b.len()));
        for line in &a[i..x] {
            report.push(format!("- {line}"));
        }
        for line in &b[j..y] {
            report.push(format!("+ {line}"));
        }
        i = x;
        j = y;
    }
    panic!(
        "{what}: the dumps differ (- before, + after):\n{}",
        report.join("\n")
    );
}

/// What is compared before and after.
pub struct State {
    pub dump: String,
    pub contents: BTreeMap<String, String>,
}

/// The new cluster started, proven to hold `before` (dump and contents),
/// and stopped again.
pub fn assert_upgraded_to(pair: &mut Pair, before: &State, majors: (u32, u32), what: &str) {
    pair.new.start();
    let after = capture(&pair.new, &pair.new.bindir);
    pair.new.stop();
    assert_same_state(before, &after, majors, what);
}

pub fn capture(cluster: &Cluster, bindir: &Path) -> State {
    State {
        dump: dumpall(cluster, bindir),
        contents: contents(cluster),
    }
}

pub fn assert_same_state(before: &State, after: &State, majors: (u32, u32), what: &str) {
    assert_same_dump(
        &normalize(&before.dump, majors.0, majors.1),
        &normalize(&after.dump, majors.0, majors.1),
        what,
    );
    assert_eq!(
        before.contents.len(),
        after.contents.len(),
        "{what}: tables differ"
    );
    for (key, value) in &before.contents {
        assert_eq!(Some(value), after.contents.get(key), "{what}: {key}");
    }
}

/// The new cluster takes writes and its btree indexes pass amcheck
/// (bt_index_check with heapallindexed: every heap tuple is in the index).
pub fn assert_healthy(cluster: &Cluster) {
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
    let mut checked = 0;
    for db in databases {
        let mut client = cluster.client(&db);
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            .unwrap();
        let indexes: Vec<String> = client
            .query(
                "SELECT c.oid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                   JOIN pg_am a ON a.oid = c.relam
                  WHERE a.amname = 'btree' AND c.relkind = 'i' AND i.indisvalid AND c.relpersistence <> 't' ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for index in indexes {
            client
                .query("SELECT bt_index_check($1::text::regclass, true)", &[&index])
                .unwrap_or_else(|e| {
                    panic!(
                        "amcheck {db} {index}: {}",
                        pgm_cluster::describe_pg_error(&e)
                    )
                });
            checked += 1;
        }
        client
            .batch_execute("CREATE TABLE pgm_write_probe AS SELECT g FROM generate_series(1, 100) g; DROP TABLE pgm_write_probe;")
            .unwrap();
    }
    assert!(checked > 20, "only {checked} btree indexes checked");
    let mut app = cluster.client("appdb");
    app.batch_execute(
        "INSERT INTO app.orders (customer, amount, placed) VALUES (1, 10, '2025-01-01');
         UPDATE app.customers SET name = name || '!' WHERE id < 10;
         INSERT INTO app.customers (email, name) VALUES ('new@example.com', 'New');",
    )
    .unwrap();
}

/// Runs pg-migrate (upgrade, JSON) and returns the run; asserts success.
pub fn upgrade(pair: &Pair, extra: &[&str]) -> Run {
    let mut args: Vec<std::ffi::OsString> = pair.dir_args();
    args.extend(["--json".into(), "-j".into(), "2".into()]);
    args.extend(extra.iter().map(Into::into));
    let run = pair.run(&args);
    assert_eq!(
        run.status, 0,
        "upgrade failed:\n{}\n{}",
        run.stderr, run.stdout
    );
    crate::json_schema::validate(&run.events);
    run
}

fn prove(old_major: u32, new_major: u32, mode: &str) {
    let Some(mut pair) = Pair::new(old_major, new_major) else {
        return;
    };
    prove_on(&mut pair, mode, |_| ());
}

/// The full proof on a pair: the rich fixture, the upgrade in `mode`, dump
/// and contents compared, the visibility probes held, the new cluster healthy, and the old cluster
/// protected (link) or untouched and still equal (every other mode).
/// `after_upgrade` looks at the pair before either server starts again.
pub fn prove_on(pair: &mut Pair, mode: &str, after_upgrade: impl FnOnce(&Pair)) {
    let old_major = pair.old.major;
    let new_major = pair.new.major;
    round_floats_for(old_major);
    pair.old.start();
    load_rich(pair);
    crate::upgrade::make_visibility_probes(&pair.old);
    let before = capture(&pair.old, &pair.new.bindir);
    pair.old.stop();
    let old_snapshot = snapshot(&pair.old.datadir);

    let run = upgrade(pair, &[mode]);
    after_upgrade(pair);
    let summary = run.summary();
    assert_eq!(summary["result"], "ok");
    assert_eq!(summary["upgrade"]["mode"], mode.trim_start_matches("--"));
    assert_eq!(summary["upgrade"]["databases"], 6);
    assert!(summary["upgrade"]["files"].as_u64().unwrap() > 50);
    // The copy modes copy the default tablespace's files of 1 MiB or more
    // (here: orders) while the catalog is restored; the others have nothing
    // to gain from it.
    let ahead = summary["upgrade"]["files_copied_ahead"].as_u64().unwrap();
    if mode == "--copy" || mode == "--copy-file-range" {
        assert!(ahead >= 1, "{mode}: no file copied ahead");
    } else {
        assert_eq!(ahead, 0, "{mode}");
    }
    // Its own memory, reported for benchmarks and capacity planning.
    assert!(summary["peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
    // A server ran after the last pg_resetwal: pg_control records the real
    // wal_level (standbys built by rsync need it), not pg_resetwal's minimal.
    let control = pgm_cluster::ControlFile::read(&pair.new.datadir).unwrap();
    assert_ne!(
        control.wal_level, 0,
        "the new pg_control says wal_level=minimal"
    );

    pair.new.start();
    let after = capture(&pair.new, &pair.new.bindir);
    assert_same_state(
        &before,
        &after,
        (old_major, new_major),
        &format!("{old_major} -> {new_major} {mode}"),
    );
    assert_healthy(&pair.new);
    // Deleted rows, aborted inserts and updates, multixact lockers (this
    // changes the new cluster: after its capture).
    crate::upgrade::assert_visibility(&pair.new, new_major);
    pair.new.stop();

    let control = pair.old.datadir.join("global/pg_control");
    if mode == "--link" || mode == "--swap" {
        assert!(
            !control.exists() && control.with_extension("old").exists(),
            "{mode} protects the old cluster"
        );
    }
    if mode == "--swap" {
        // The old cluster's database directories (but template0's and
        // those without user relations) went whole into the new one; its
        // catalog files wait beside them.
        let aside = pair.old.datadir.join("base/moved_for_upgrade");
        assert!(aside.is_dir(), "{} is missing", aside.display());
        assert!(std::fs::read_dir(&aside)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with("_old_catalogs")));
    } else if mode != "--link" {
        // Copy mode: no data file of the old cluster was written (its server
        // ran only to be read), and it still starts with identical contents.
        assert_data_files_untouched(&old_snapshot, &snapshot(&pair.old.datadir));
        pair.old.start();
        let again = capture(&pair.old, &pair.new.bindir);
        assert_same_state(
            &before,
            &again,
            (new_major, new_major),
            "old cluster after a copy upgrade",
        );
        pair.old.stop();
    }
}

/// Starting and cleanly stopping a server, and reading its catalog, rewrites
/// the server's own bookkeeping: pg_control, WAL, the commit log, statistics,
/// relation-cache files, and hint bits on catalog pages. Nothing else may
/// change: every user relation file (relfilenode ≥ 16384) and the large-object
/// table (2613, 2683) must be byte-for-byte as before.
pub fn assert_data_files_untouched(before: &TreeSnapshot, after: &TreeSnapshot) {
    let bookkeeping = |path: &Path| {
        let text = path.to_string_lossy();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let relfilenode: Option<u32> = name.split(['_', '.']).next().and_then(|n| n.parse().ok());
        let in_relation_dir = text.starts_with("base/") || text.starts_with("global/");
        match relfilenode {
            Some(n) if in_relation_dir => n < 16384 && n != 2613 && n != 2683,
            _ => {
                [
                    "pg_wal",
                    "pg_xact",
                    "pg_subtrans",
                    "pg_multixact",
                    "pg_stat",
                    "pg_stat_tmp",
                    "pg_logical",
                    "pg_replslot",
                ]
                .iter()
                .any(|d| text.starts_with(d))
                    || name == "pg_control"
                    || name == "pg_internal.init"
                    || name == "postmaster.opts"
                    || text.starts_with("base/pgsql_tmp")
            }
        }
    };
    let mut touched = Vec::new();
    for (path, entry) in before {
        if after.get(path) != Some(entry) && !bookkeeping(path) {
            touched.push(path.display().to_string());
        }
    }
    for path in after.keys().filter(|p| !before.contains_key(*p)) {
        if !bookkeeping(path) {
            touched.push(format!("added {}", path.display()));
        }
    }
    assert!(
        touched.is_empty(),
        "the old cluster's data files changed: {touched:?}"
    );
}

macro_rules! proofs {
    ($($name:ident: $old:expr => $new:expr, $mode:expr;)*) => {$(
        #[test]
        fn $name() {
            prove($old, $new, $mode);
        }
    )*};
}

proofs! {
    link_15_to_17: 15 => 17, "--link";
    copy_15_to_17: 15 => 17, "--copy";
    link_15_to_18: 15 => 18, "--link";
    copy_15_to_18: 15 => 18, "--copy";
    link_17_to_18: 17 => 18, "--link";
    copy_17_to_18: 17 => 18, "--copy";
    link_12_to_18: 12 => 18, "--link";
    // 10 and 11 (the rich fixture's parts that exist there).
    link_10_to_18: 10 => 18, "--link";
    copy_10_to_18: 10 => 18, "--copy";
    link_11_to_18: 11 => 18, "--link";
    copy_11_to_18: 11 => 18, "--copy";
    swap_10_to_18: 10 => 18, "--swap";
    link_10_to_17: 10 => 17, "--link";
    link_11_to_15: 11 => 15, "--link";
    link_13_to_18: 13 => 18, "--link";
    link_14_to_18: 14 => 18, "--link";
    link_16_to_18: 16 => 18, "--link";
    // The rest of the version matrix: every old major to 17 and 18, and the
    // older ones to 15, in both modes.
    copy_12_to_18: 12 => 18, "--copy";
    copy_13_to_18: 13 => 18, "--copy";
    copy_14_to_18: 14 => 18, "--copy";
    copy_16_to_18: 16 => 18, "--copy";
    link_12_to_17: 12 => 17, "--link";
    copy_12_to_17: 12 => 17, "--copy";
    link_13_to_17: 13 => 17, "--link";
    copy_13_to_17: 13 => 17, "--copy";
    link_14_to_17: 14 => 17, "--link";
    copy_14_to_17: 14 => 17, "--copy";
    link_16_to_17: 16 => 17, "--link";
    copy_16_to_17: 16 => 17, "--copy";
    link_12_to_15: 12 => 15, "--link";
    copy_12_to_15: 12 => 15, "--copy";
    link_13_to_15: 13 => 15, "--link";
    copy_13_to_15: 13 => 15, "--copy";
    link_14_to_15: 14 => 15, "--link";
    copy_14_to_15: 14 => 15, "--copy";
    copy_file_range_15_to_18: 15 => 18, "--copy-file-range";
    swap_15_to_18: 15 => 18, "--swap";
    swap_17_to_18: 17 => 18, "--swap";
    swap_12_to_15: 12 => 15, "--swap";
}
