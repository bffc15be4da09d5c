//! pg_control decoded by pg-migrate against PostgreSQL's own report of the
//! same file: pg_controldata where the install has it (15, 17, 18), the
//! server's pg_control_*() functions for the server-only installs (12, 13,
//! 14, 16). Clusters get non-default settings and some activity first.

use std::collections::BTreeMap;

use pgm_cluster::ControlFile;

use crate::support::*;

const SQL_REPORT: &str = "
SELECT 'pg_control version number', pg_control_version::text FROM pg_control_system()
UNION ALL SELECT 'Catalog version number', catalog_version_no::text FROM pg_control_system()
UNION ALL SELECT 'Database system identifier', system_identifier::text FROM pg_control_system()
UNION ALL SELECT 'Latest checkpoint location', checkpoint_lsn::text FROM pg_control_checkpoint()
UNION ALL SELECT 'Latest checkpoint''s REDO location', redo_lsn::text FROM pg_control_checkpoint()
UNION ALL SELECT 'Latest checkpoint''s TimeLineID', timeline_id::text FROM pg_control_checkpoint()
UNION ALL SELECT 'Latest checkpoint''s PrevTimeLineID', prev_timeline_id::text FROM pg_control_checkpoint()
UNION ALL SELECT 'Latest checkpoint''s full_page_writes', CASE WHEN full_page_writes THEN 'on' ELSE 'off' END FROM pg_control_checkpoint()
UNION ALL SELECT 'Latest checkpoint''s NextXID', next_xid FROM pg_control_checkpoint()
UNION ALL SELECT 'Latest checkpoint''s NextOID', next_oid::text FROM pg_control_checkpoint()
UNION ALL SELECT 'Latest checkpoint''s NextMultiXactId', next_multixact_id::text FROM pg_control_checkpoint()
UNION ALL SELECT 'Latest checkpoint''s NextMultiOffset', next_multi_offset::text FROM pg_control_checkpoint()
UNION ALL SELECT 'Latest checkpoint''s oldestXID', oldest_xid::text FROM pg_control_checkpoint()
UNION ALL SELECT 'Latest checkpoint''s oldestXID''s DB', oldest_xid_dbid::text FROM pg_control_checkpoint()
UNION ALL SELECT 'Latest checkpoint''s oldestActiveXID', oldest_active_xid::text FROM pg_control_checkpoint()
UNION ALL SELECT 'Latest checkpoint''s oldestMultiXid', oldest_multi_xid::text FROM pg_control_checkpoint()
UNION ALL SELECT 'Latest checkpoint''s oldestMulti''s DB', oldest_multi_dbid::text FROM pg_control_checkpoint()
UNION ALL SELECT 'Latest checkpoint''s oldestCommitTsXid', oldest_commit_ts_xid::text FROM pg_control_checkpoint()
UNION ALL SELECT 'Latest checkpoint''s newestCommitTsXid', newest_commit_ts_xid::text FROM pg_control_checkpoint()
UNION ALL SELECT 'Minimum recovery ending location', min_recovery_end_lsn::text FROM pg_control_recovery()
UNION ALL SELECT 'Min recovery ending loc''s timeline', min_recovery_end_timeline::text FROM pg_control_recovery()
UNION ALL SELECT 'Maximum data alignment', max_data_alignment::text FROM pg_control_init()
UNION ALL SELECT 'Database block size', database_block_size::text FROM pg_control_init()
UNION ALL SELECT 'Blocks per segment of large relation', blocks_per_segment::text FROM pg_control_init()
UNION ALL SELECT 'WAL block size', wal_block_size::text FROM pg_control_init()
UNION ALL SELECT 'Bytes per WAL segment', bytes_per_wal_segment::text FROM pg_control_init()
UNION ALL SELECT 'Maximum length of identifiers', max_identifier_length::text FROM pg_control_init()
UNION ALL SELECT 'Maximum columns in an index', max_index_columns::text FROM pg_control_init()
UNION ALL SELECT 'Maximum size of a TOAST chunk', max_toast_chunk_size::text FROM pg_control_init()
UNION ALL SELECT 'Size of a large-object chunk', large_object_chunk_size::text FROM pg_control_init()
UNION ALL SELECT 'Float8 argument passing', CASE WHEN float8_pass_by_value THEN 'by value' ELSE 'by reference' END FROM pg_control_init()
UNION ALL SELECT 'Data page checksum version', data_page_checksum_version::text FROM pg_control_init()";

/// Settings that move fields away from their defaults.
fn initdb_options(major: u32) -> Vec<&'static str> {
    let mut options = match major {
        12 | 16 => vec!["--wal-segsize=4"],
        13 | 17 => vec!["--data-checksums"],
        _ => vec!["--wal-segsize=32", "--data-checksums"],
    };
    if major >= 18 && !options.contains(&"--data-checksums") {
        options.push("--no-data-checksums");
    }
    options
}

/// Activity that moves the XID, OID, multixact and LSN counters.
const ACTIVITY: &str = "
CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g;
CREATE TABLE u (id int);
INSERT INTO u VALUES (1); INSERT INTO u VALUES (2); INSERT INTO u VALUES (3);
CHECKPOINT;";

fn parse(lines: &str) -> BTreeMap<String, String> {
    lines
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn compare(
    major: u32,
    decoded: &ControlFile,
    reported: &BTreeMap<String, String>,
    min_fields: usize,
) {
    let mut compared = 0;
    for (label, value) in decoded.controldata_lines() {
        if let Some(theirs) = reported.get(label) {
            assert_eq!(&value, theirs, "PostgreSQL {major}: {label}");
            compared += 1;
        }
    }
    assert!(
        compared >= min_fields,
        "PostgreSQL {major}: only {compared} fields compared"
    );
}

/// Creates multixacts: two transactions share a row lock.
fn make_multixacts(cluster: &Cluster) {
    let mut a = cluster.client("postgres");
    let mut b = cluster.client("postgres");
    let mut ta = a.transaction().unwrap();
    ta.query("SELECT * FROM u WHERE id = 1 FOR SHARE", &[])
        .unwrap();
    let mut tb = b.transaction().unwrap();
    tb.query("SELECT * FROM u WHERE id = 1 FOR SHARE", &[])
        .unwrap();
    tb.commit().unwrap();
    ta.commit().unwrap();
}

fn cross_check(major: u32) {
    let Some(bindir) = require(major) else { return };
    let sandbox = Sandbox::new();
    let options = initdb_options(major);
    let mut cluster = sandbox.cluster("c", major, &options);
    cluster.start();
    cluster.sql("postgres", ACTIVITY);
    make_multixacts(&cluster);
    cluster.sql("postgres", "CHECKPOINT");
    if bindir.join("pg_controldata").exists() {
        cluster.stop();
        let output = run_ok(
            as_test_user(bindir.join("pg_controldata"))
                .arg(&cluster.datadir)
                .env("LC_ALL", "C"),
        );
        let reported = parse(&String::from_utf8_lossy(&output.stdout));
        let decoded = ControlFile::read(&cluster.datadir).unwrap();
        compare(
            major,
            &decoded,
            &reported,
            decoded.controldata_lines().len(),
        );
        assert!(decoded.next_multixact > 1, "the test made a multixact");
    } else {
        // The functions read the file on disk; read it between two identical
        // reports so that no checkpoint can slip in unnoticed.
        let query = |c: &Cluster| -> BTreeMap<String, String> {
            c.client("postgres")
                .query(SQL_REPORT, &[])
                .unwrap()
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect()
        };
        let before = query(&cluster);
        let decoded = ControlFile::read(&cluster.datadir).unwrap();
        let after = query(&cluster);
        assert_eq!(
            before, after,
            "a checkpoint happened during the comparison; run again"
        );
        compare(major, &decoded, &before, 32);
        assert_eq!(decoded.state, pgm_cluster::ClusterState::InProduction);
        assert!(decoded.next_multixact > 1, "the test made a multixact");
        cluster.stop();
        let stopped = ControlFile::read(&cluster.datadir).unwrap();
        assert_eq!(stopped.state, pgm_cluster::ClusterState::ShutDown);
    }
    let decoded = ControlFile::read(&cluster.datadir).unwrap();
    assert!(decoded.matches_major(pgm_cluster::PgMajor::new(major)));
    let checksums = options.contains(&"--data-checksums");
    assert_eq!(decoded.data_checksum_version != 0, checksums, "{major}");
}

macro_rules! majors {
    ($($name:ident: $major:expr;)*) => {$(
        #[test]
        fn $name() {
            cross_check($major);
        }
    )*};
}

majors! {
    pg_control_12_matches_the_server: 12;
    pg_control_13_matches_the_server: 13;
    pg_control_14_matches_the_server: 14;
    pg_control_15_matches_pg_controldata: 15;
    pg_control_16_matches_the_server: 16;
    pg_control_17_matches_pg_controldata: 17;
    pg_control_18_matches_pg_controldata: 18;
}

#[test]
fn installations_are_described_precisely() {
    let Some(full) = require(18) else { return };
    let Some(server_only) = require(14) else {
        return;
    };
    let install = pgm_cluster::Installation::discover(&full).unwrap();
    assert_eq!(install.version.major, pgm_cluster::PgMajor::new(18));
    assert!(install.missing(&pgm_cluster::Tool::REQUIRED_NEW).is_empty());
    assert!(install
        .version_mismatches(&pgm_cluster::Tool::ALL)
        .is_empty());
    let install = pgm_cluster::Installation::discover(&server_only).unwrap();
    assert_eq!(install.version.major, pgm_cluster::PgMajor::new(14));
    assert!(install.missing(&pgm_cluster::Tool::REQUIRED_OLD).is_empty());
    let missing = install.missing(&pgm_cluster::Tool::REQUIRED_NEW);
    assert!(
        missing.contains(&pgm_cluster::Tool::PgDump) && missing.contains(&pgm_cluster::Tool::Psql)
    );
}

#[test]
fn server_status_tells_running_stopped_and_crashed_apart() {
    use pgm_cluster::{DataDir, ServerStatus};
    if require(17).is_none() {
        return;
    }
    let sandbox = Sandbox::new();
    let mut cluster = sandbox.cluster("c", 17, &[]);
    let status = DataDir::open(&cluster.datadir, None)
        .unwrap()
        .server_status()
        .unwrap();
    assert_eq!(status, ServerStatus::Stopped);
    cluster.start();
    let pid = cluster.postmaster_pid();
    match DataDir::open(&cluster.datadir, None)
        .unwrap()
        .server_status()
        .unwrap()
    {
        ServerStatus::Running(pf) => {
            assert_eq!(pf.pid, pid);
            assert_eq!(pf.port, Some(cluster.port));
            assert_eq!(pf.socket_dir.as_deref(), Some(cluster.sockdir.as_path()));
        }
        other => panic!("{other:?}"),
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    for _ in 0..100 {
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    cluster.mark_stopped();
    assert!(matches!(
        DataDir::open(&cluster.datadir, None)
            .unwrap()
            .server_status()
            .unwrap(),
        ServerStatus::StalePidFile(_)
    ));
}
