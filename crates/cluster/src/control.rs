//! Native decoding of `global/pg_control` for every supported major.
//!
//! The file is a C struct in native byte order and alignment, padded to
//! 8 KiB, with a CRC-32C over everything before the `crc` field. The layout
//! has been stable since 12 up to byte 248; after that, 12 stores an extra
//! `float4ByVal` flag and 18 adds `default_char_signedness`, which moves the
//! CRC. 10 and 11 differ in the middle (a previous checkpoint in 10, the
//! next xid as two halves, no max_wal_senders). Every field is read at an
//! explicit offset of its version's layout; nothing is transmuted.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, PgMajor};

/// Size of the file on disk (the struct is much smaller; the rest is zeros).
pub const CONTROL_FILE_SIZE: usize = 8192;

/// Where the next transaction id is stored: one 64-bit full id (12 on) or
/// an epoch and an xid of 32 bits each (10, 11).
#[derive(Clone, Copy)]
enum XidAt {
    Full(usize),
    Split { epoch: usize, xid: usize },
}

/// Where each field sits in one pg_control version's struct (x86-64
/// alignment, as the server wrote it).
struct Layout {
    major: PgMajor,
    redo: usize,
    timeline: usize,
    prev_timeline: usize,
    full_page_writes: usize,
    next_xid: XidAt,
    next_oid: usize,
    next_multi: usize,
    next_multi_offset: usize,
    oldest_xid: usize,
    oldest_xid_db: usize,
    oldest_multi: usize,
    oldest_multi_db: usize,
    checkpoint_time: usize,
    oldest_commit_ts_xid: usize,
    newest_commit_ts_xid: usize,
    oldest_active_xid: usize,
    unlogged_lsn: usize,
    min_recovery_point: usize,
    min_recovery_point_tli: usize,
    wal_level: usize,
    wal_log_hints: usize,
    max_connections: usize,
    max_worker_processes: usize,
    /// Recorded from 12 on.
    max_wal_senders: Option<usize>,
    max_prepared_xacts: usize,
    max_locks_per_xact: usize,
    track_commit_timestamp: usize,
    max_align: usize,
    float_format: usize,
    block_size: usize,
    relseg_size: usize,
    wal_block_size: usize,
    wal_segment_size: usize,
    name_data_len: usize,
    index_max_keys: usize,
    toast_max_chunk_size: usize,
    large_object_chunk_size: usize,
    /// Recorded up to 12.
    float4_by_val: Option<usize>,
    float8_by_val: usize,
    data_checksum_version: usize,
    /// Recorded from 18 on.
    char_signedness: Option<usize>,
    crc: usize,
}

/// The first fields, at the same offsets in every version.
const SYSTEM_IDENTIFIER: usize = 0;
const PG_CONTROL_VERSION: usize = 8;
const CATALOG_VERSION: usize = 12;
const STATE: usize = 16;
const TIME: usize = 24;
const CHECKPOINT: usize = 32;

/// 12 … 18: stable up to byte 248 (the checkpoint copy from 40 to 128).
const fn layout_12_on(
    major: u32,
    float4_by_val: Option<usize>,
    float8_by_val: usize,
    char_signedness: Option<usize>,
    crc: usize,
) -> Layout {
    Layout {
        major: PgMajor::new(major),
        redo: 40,
        timeline: 48,
        prev_timeline: 52,
        full_page_writes: 56,
        next_xid: XidAt::Full(64),
        next_oid: 72,
        next_multi: 76,
        next_multi_offset: 80,
        oldest_xid: 84,
        oldest_xid_db: 88,
        oldest_multi: 92,
        oldest_multi_db: 96,
        checkpoint_time: 104,
        oldest_commit_ts_xid: 112,
        newest_commit_ts_xid: 116,
        oldest_active_xid: 120,
        unlogged_lsn: 128,
        min_recovery_point: 136,
        min_recovery_point_tli: 144,
        wal_level: 172,
        wal_log_hints: 176,
        max_connections: 180,
        max_worker_processes: 184,
        max_wal_senders: Some(188),
        max_prepared_xacts: 192,
        max_locks_per_xact: 196,
        track_commit_timestamp: 200,
        max_align: 204,
        float_format: 208,
        block_size: 216,
        relseg_size: 220,
        wal_block_size: 224,
        wal_segment_size: 228,
        name_data_len: 232,
        index_max_keys: 236,
        toast_max_chunk_size: 240,
        large_object_chunk_size: 244,
        float4_by_val,
        float8_by_val,
        data_checksum_version: 252,
        char_signedness,
        crc,
    }
}

/// 10 (1002): the previous checkpoint's location at 40 moves the checkpoint
/// copy to 48; the copy stores the next xid as epoch + xid; no
/// max_wal_senders. From the float format check on, as in 12.
const LAYOUT_10: Layout = Layout {
    major: PgMajor::new(10),
    redo: 48,
    timeline: 56,
    prev_timeline: 60,
    full_page_writes: 64,
    next_xid: XidAt::Split { epoch: 68, xid: 72 },
    next_oid: 76,
    next_multi: 80,
    next_multi_offset: 84,
    oldest_xid: 88,
    oldest_xid_db: 92,
    oldest_multi: 96,
    oldest_multi_db: 100,
    checkpoint_time: 104,
    oldest_commit_ts_xid: 112,
    newest_commit_ts_xid: 116,
    oldest_active_xid: 120,
    unlogged_lsn: 128,
    min_recovery_point: 136,
    min_recovery_point_tli: 144,
    wal_level: 172,
    wal_log_hints: 176,
    max_connections: 180,
    max_worker_processes: 184,
    max_wal_senders: None,
    max_prepared_xacts: 188,
    max_locks_per_xact: 192,
    track_commit_timestamp: 196,
    max_align: 200,
    float_format: 208,
    block_size: 216,
    relseg_size: 220,
    wal_block_size: 224,
    wal_segment_size: 228,
    name_data_len: 232,
    index_max_keys: 236,
    toast_max_chunk_size: 240,
    large_object_chunk_size: 244,
    float4_by_val: Some(248),
    float8_by_val: 249,
    data_checksum_version: 252,
    char_signedness: None,
    crc: 288,
};

/// 11 (1100): 10 without the previous checkpoint: the checkpoint copy at
/// 40, everything after it lower (the CRC at 280).
const LAYOUT_11: Layout = Layout {
    major: PgMajor::new(11),
    redo: 40,
    timeline: 48,
    prev_timeline: 52,
    full_page_writes: 56,
    next_xid: XidAt::Split { epoch: 60, xid: 64 },
    next_oid: 68,
    next_multi: 72,
    next_multi_offset: 76,
    oldest_xid: 80,
    oldest_xid_db: 84,
    oldest_multi: 88,
    oldest_multi_db: 92,
    checkpoint_time: 96,
    oldest_commit_ts_xid: 104,
    newest_commit_ts_xid: 108,
    oldest_active_xid: 112,
    unlogged_lsn: 120,
    min_recovery_point: 128,
    min_recovery_point_tli: 136,
    wal_level: 164,
    wal_log_hints: 168,
    max_connections: 172,
    max_worker_processes: 176,
    max_wal_senders: None,
    max_prepared_xacts: 180,
    max_locks_per_xact: 184,
    track_commit_timestamp: 188,
    max_align: 192,
    float_format: 200,
    block_size: 208,
    relseg_size: 212,
    wal_block_size: 216,
    wal_segment_size: 220,
    name_data_len: 224,
    index_max_keys: 228,
    toast_max_chunk_size: 232,
    large_object_chunk_size: 236,
    float4_by_val: Some(240),
    float8_by_val: 241,
    data_checksum_version: 244,
    char_signedness: None,
    crc: 280,
};

fn layout_for(pg_control_version: u32) -> Option<Layout> {
    match pg_control_version {
        1002 => Some(LAYOUT_10),
        1100 => Some(LAYOUT_11),
        // 12: float4ByVal at 248, float8ByVal at 249.
        1201 => Some(layout_12_on(12, Some(248), 249, None, 288)),
        // 13 … 16 share 1300; 17 only grew the checkpoint record into padding.
        1300 => Some(layout_12_on(13, None, 248, None, 288)),
        1700 => Some(layout_12_on(17, None, 248, None, 288)),
        1800 => Some(layout_12_on(18, None, 248, Some(256), 292)),
        _ => None,
    }
}

/// The cluster state recorded in pg_control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    StartingUp,
    ShutDown,
    ShutDownInRecovery,
    ShuttingDown,
    InCrashRecovery,
    InArchiveRecovery,
    InProduction,
    Unknown(i32),
}

impl ClusterState {
    fn from_raw(raw: i32) -> ClusterState {
        match raw {
            0 => ClusterState::StartingUp,
            1 => ClusterState::ShutDown,
            2 => ClusterState::ShutDownInRecovery,
            3 => ClusterState::ShuttingDown,
            4 => ClusterState::InCrashRecovery,
            5 => ClusterState::InArchiveRecovery,
            6 => ClusterState::InProduction,
            other => ClusterState::Unknown(other),
        }
    }

    /// The wording `pg_controldata` uses.
    pub fn describe(self) -> String {
        match self {
            ClusterState::StartingUp => "starting up".into(),
            ClusterState::ShutDown => "shut down".into(),
            ClusterState::ShutDownInRecovery => "shut down in recovery".into(),
            ClusterState::ShuttingDown => "shutting down".into(),
            ClusterState::InCrashRecovery => "in crash recovery".into(),
            ClusterState::InArchiveRecovery => "in archive recovery".into(),
            ClusterState::InProduction => "in production".into(),
            ClusterState::Unknown(raw) => format!("unrecognized status code {raw}"),
        }
    }
}

/// The decoded contents of `global/pg_control`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlFile {
    /// The major whose layout the file has (13 stands for 13 … 16, which share one).
    pub layout_major: PgMajor,
    pub pg_control_version: u32,
    pub catalog_version: u32,
    pub system_identifier: u64,
    pub state: ClusterState,
    pub time: i64,
    pub checkpoint_lsn: u64,
    pub redo_lsn: u64,
    pub timeline: u32,
    pub prev_timeline: u32,
    pub full_page_writes: bool,
    pub next_xid_epoch: u32,
    pub next_xid: u32,
    pub next_oid: u32,
    pub next_multixact: u32,
    pub next_multi_offset: u32,
    pub oldest_xid: u32,
    pub oldest_xid_db: u32,
    pub oldest_multixact: u32,
    pub oldest_multi_db: u32,
    pub checkpoint_time: i64,
    pub oldest_commit_ts_xid: u32,
    pub newest_commit_ts_xid: u32,
    pub oldest_active_xid: u32,
    pub unlogged_lsn: u64,
    pub min_recovery_point: u64,
    pub min_recovery_point_timeline: u32,
    pub wal_level: i32,
    pub wal_log_hints: bool,
    pub max_connections: i32,
    pub max_worker_processes: i32,
    /// `None` before 12, which did not record it.
    pub max_wal_senders: Option<i32>,
    pub max_prepared_xacts: i32,
    pub max_locks_per_xact: i32,
    pub track_commit_timestamp: bool,
    pub max_align: u32,
    pub block_size: u32,
    pub relseg_size: u32,
    pub wal_block_size: u32,
    pub wal_segment_size: u32,
    pub name_data_len: u32,
    pub index_max_keys: u32,
    pub toast_max_chunk_size: u32,
    pub large_object_chunk_size: u32,
    /// `Some` only up to 12, which record it.
    pub float4_by_value: Option<bool>,
    pub float8_by_value: bool,
    pub data_checksum_version: u32,
    /// `Some` only for 18 and later, which record it.
    pub default_char_signed: Option<bool>,
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u32(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.0[at..at + 4].try_into().expect("4 bytes"))
    }
    fn i32(&self, at: usize) -> i32 {
        i32::from_ne_bytes(self.0[at..at + 4].try_into().expect("4 bytes"))
    }
    fn u64(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.0[at..at + 8].try_into().expect("8 bytes"))
    }
    fn i64(&self, at: usize) -> i64 {
        i64::from_ne_bytes(self.0[at..at + 8].try_into().expect("8 bytes"))
    }
    fn f64(&self, at: usize) -> f64 {
        f64::from_ne_bytes(self.0[at..at + 8].try_into().expect("8 bytes"))
    }
    fn bool(&self, at: usize) -> bool {
        self.0[at] != 0
    }
}

impl ControlFile {
    /// Reads and decodes `<datadir>/global/pg_control`.
    pub fn read(datadir: &Path) -> Result<ControlFile, Error> {
        let path = datadir.join("global").join("pg_control");
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        ControlFile::decode(&bytes, &path)
    }

    /// Decodes the bytes of a pg_control file; `path` only names it in errors.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<ControlFile, Error> {
        // The version sits at a fixed offset in every format, so read it first.
        if bytes.len() < CATALOG_VERSION {
            return Err(Error::ControlTruncated {
                path: path.into(),
                len: bytes.len(),
                need: CONTROL_FILE_SIZE,
            });
        }
        let r = Reader(bytes);
        let version = r.u32(PG_CONTROL_VERSION);
        let l = layout_for(version).ok_or_else(|| Error::ControlUnknownVersion {
            path: path.into(),
            found: version,
        })?;
        if bytes.len() < l.crc + 4 {
            return Err(Error::ControlTruncated {
                path: path.into(),
                len: bytes.len(),
                need: CONTROL_FILE_SIZE,
            });
        }
        let stored = r.u32(l.crc);
        let computed = crc32c::crc32c(&bytes[..l.crc]);
        if stored != computed {
            return Err(Error::ControlBadCrc {
                path: path.into(),
                stored,
                computed,
            });
        }
        // A valid CRC over a file cut short by a copy tool is still a damaged file.
        if bytes.len() != CONTROL_FILE_SIZE {
            return Err(Error::ControlTruncated {
                path: path.into(),
                len: bytes.len(),
                need: CONTROL_FILE_SIZE,
            });
        }
        let float_format = r.f64(l.float_format);
        if float_format != 1234567.0 {
            return Err(Error::ControlImplausible {
                path: path.into(),
                detail: format!("float format check value is {float_format}, expected 1234567"),
            });
        }
        let (next_xid_epoch, next_xid) = match l.next_xid {
            XidAt::Full(at) => {
                let full = r.u64(at);
                ((full >> 32) as u32, full as u32)
            }
            XidAt::Split { epoch, xid } => (r.u32(epoch), r.u32(xid)),
        };
        Ok(ControlFile {
            layout_major: l.major,
            pg_control_version: version,
            catalog_version: r.u32(CATALOG_VERSION),
            system_identifier: r.u64(SYSTEM_IDENTIFIER),
            state: ClusterState::from_raw(r.i32(STATE)),
            time: r.i64(TIME),
            checkpoint_lsn: r.u64(CHECKPOINT),
            redo_lsn: r.u64(l.redo),
            timeline: r.u32(l.timeline),
            prev_timeline: r.u32(l.prev_timeline),
            full_page_writes: r.bool(l.full_page_writes),
            next_xid_epoch,
            next_xid,
            next_oid: r.u32(l.next_oid),
            next_multixact: r.u32(l.next_multi),
            next_multi_offset: r.u32(l.next_multi_offset),
            oldest_xid: r.u32(l.oldest_xid),
            oldest_xid_db: r.u32(l.oldest_xid_db),
            oldest_multixact: r.u32(l.oldest_multi),
            oldest_multi_db: r.u32(l.oldest_multi_db),
            checkpoint_time: r.i64(l.checkpoint_time),
            oldest_commit_ts_xid: r.u32(l.oldest_commit_ts_xid),
            newest_commit_ts_xid: r.u32(l.newest_commit_ts_xid),
            oldest_active_xid: r.u32(l.oldest_active_xid),
            unlogged_lsn: r.u64(l.unlogged_lsn),
            min_recovery_point: r.u64(l.min_recovery_point),
            min_recovery_point_timeline: r.u32(l.min_recovery_point_tli),
            wal_level: r.i32(l.wal_level),
            wal_log_hints: r.bool(l.wal_log_hints),
            max_connections: r.i32(l.max_connections),
            max_worker_processes: r.i32(l.max_worker_processes),
            max_wal_senders: l.max_wal_senders.map(|at| r.i32(at)),
            max_prepared_xacts: r.i32(l.max_prepared_xacts),
            max_locks_per_xact: r.i32(l.max_locks_per_xact),
            track_commit_timestamp: r.bool(l.track_commit_timestamp),
            max_align: r.u32(l.max_align),
            block_size: r.u32(l.block_size),
            relseg_size: r.u32(l.relseg_size),
            wal_block_size: r.u32(l.wal_block_size),
            wal_segment_size: r.u32(l.wal_segment_size),
            name_data_len: r.u32(l.name_data_len),
            index_max_keys: r.u32(l.index_max_keys),
            toast_max_chunk_size: r.u32(l.toast_max_chunk_size),
            large_object_chunk_size: r.u32(l.large_object_chunk_size),
            float4_by_value: l.float4_by_val.map(|at| r.bool(at)),
            float8_by_value: r.bool(l.float8_by_val),
            data_checksum_version: r.u32(l.data_checksum_version),
            default_char_signed: l.char_signedness.map(|at| r.bool(at)),
        })
    }

    /// Whether the file's format is the one `major` writes.
    pub fn matches_major(&self, major: PgMajor) -> bool {
        major.pg_control_version() == Some(self.pg_control_version)
    }

    /// The next full transaction id as `pg_controldata` prints it ("0:754").
    pub fn next_xid_text(&self) -> String {
        format!("{}:{}", self.next_xid_epoch, self.next_xid)
    }
}

/// What proves that a cluster has not run since a moment: every start of a
/// server rewrites pg_control (its state and its `time`), every clean stop
/// writes a checkpoint, and the counters move with any work done. Two equal
/// stamps of one data directory mean no server ran on it in between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlStamp {
    pub system_identifier: u64,
    pub state: ClusterState,
    /// When pg_control was last written (seconds since the epoch).
    pub time: i64,
    pub checkpoint_lsn: u64,
    pub next_xid_epoch: u32,
    pub next_xid: u32,
    pub next_oid: u32,
    pub next_multixact: u32,
}

impl ControlFile {
    pub fn stamp(&self) -> ControlStamp {
        ControlStamp {
            system_identifier: self.system_identifier,
            state: self.state,
            time: self.time,
            checkpoint_lsn: self.checkpoint_lsn,
            next_xid_epoch: self.next_xid_epoch,
            next_xid: self.next_xid,
            next_oid: self.next_oid,
            next_multixact: self.next_multixact,
        }
    }
}

impl ControlStamp {
    /// What differs from `then`, in pg_controldata's words; empty when equal.
    pub fn changes_since(&self, then: &ControlStamp) -> Vec<String> {
        let mut out = Vec::new();
        let mut differ = |what: &str, then: String, now: String| {
            if then != now {
                out.push(format!("{what} {then} then, {now} now"));
            }
        };
        differ(
            "database system identifier",
            then.system_identifier.to_string(),
            self.system_identifier.to_string(),
        );
        differ(
            "cluster state",
            then.state.describe(),
            self.state.describe(),
        );
        differ(
            "latest checkpoint location",
            format_lsn(then.checkpoint_lsn),
            format_lsn(self.checkpoint_lsn),
        );
        differ(
            "NextXID",
            format!("{}:{}", then.next_xid_epoch, then.next_xid),
            format!("{}:{}", self.next_xid_epoch, self.next_xid),
        );
        differ(
            "NextOID",
            then.next_oid.to_string(),
            self.next_oid.to_string(),
        );
        differ(
            "NextMultiXactId",
            then.next_multixact.to_string(),
            self.next_multixact.to_string(),
        );
        differ(
            "pg_control last modified (epoch seconds)",
            then.time.to_string(),
            self.time.to_string(),
        );
        out
    }
}

impl ControlFile {
    /// The fields as `pg_controldata` labels and words them, so that the
    /// decoder can be checked against PostgreSQL's own tool line by line.
    pub fn controldata_lines(&self) -> Vec<(&'static str, String)> {
        let on_off = |b: bool| if b { "on" } else { "off" }.to_string();
        let wal_level = match self.wal_level {
            0 => "minimal".to_string(),
            1 => "replica".to_string(),
            2 => "logical".to_string(),
            other => format!("unrecognized wal_level {other}"),
        };
        let mut lines = vec![
            (
                "pg_control version number",
                self.pg_control_version.to_string(),
            ),
            ("Catalog version number", self.catalog_version.to_string()),
            (
                "Database system identifier",
                self.system_identifier.to_string(),
            ),
            ("Database cluster state", self.state.describe()),
            (
                "Latest checkpoint location",
                format_lsn(self.checkpoint_lsn),
            ),
            (
                "Latest checkpoint's REDO location",
                format_lsn(self.redo_lsn),
            ),
            ("Latest checkpoint's TimeLineID", self.timeline.to_string()),
            (
                "Latest checkpoint's PrevTimeLineID",
                self.prev_timeline.to_string(),
            ),
            (
                "Latest checkpoint's full_page_writes",
                on_off(self.full_page_writes),
            ),
            ("Latest checkpoint's NextXID", self.next_xid_text()),
            ("Latest checkpoint's NextOID", self.next_oid.to_string()),
            (
                "Latest checkpoint's NextMultiXactId",
                self.next_multixact.to_string(),
            ),
            (
                "Latest checkpoint's NextMultiOffset",
                self.next_multi_offset.to_string(),
            ),
            ("Latest checkpoint's oldestXID", self.oldest_xid.to_string()),
            (
                "Latest checkpoint's oldestXID's DB",
                self.oldest_xid_db.to_string(),
            ),
            (
                "Latest checkpoint's oldestActiveXID",
                self.oldest_active_xid.to_string(),
            ),
            (
                "Latest checkpoint's oldestMultiXid",
                self.oldest_multixact.to_string(),
            ),
            (
                "Latest checkpoint's oldestMulti's DB",
                self.oldest_multi_db.to_string(),
            ),
            (
                "Latest checkpoint's oldestCommitTsXid",
                self.oldest_commit_ts_xid.to_string(),
            ),
            (
                "Latest checkpoint's newestCommitTsXid",
                self.newest_commit_ts_xid.to_string(),
            ),
            (
                "Fake LSN counter for unlogged rels",
                format_lsn(self.unlogged_lsn),
            ),
            (
                "Minimum recovery ending location",
                format_lsn(self.min_recovery_point),
            ),
            (
                "Min recovery ending loc's timeline",
                self.min_recovery_point_timeline.to_string(),
            ),
            ("wal_level setting", wal_level),
            ("wal_log_hints setting", on_off(self.wal_log_hints)),
            ("max_connections setting", self.max_connections.to_string()),
            (
                "max_worker_processes setting",
                self.max_worker_processes.to_string(),
            ),
            (
                "max_prepared_xacts setting",
                self.max_prepared_xacts.to_string(),
            ),
            (
                "max_locks_per_xact setting",
                self.max_locks_per_xact.to_string(),
            ),
            (
                "track_commit_timestamp setting",
                on_off(self.track_commit_timestamp),
            ),
            ("Maximum data alignment", self.max_align.to_string()),
            ("Database block size", self.block_size.to_string()),
            (
                "Blocks per segment of large relation",
                self.relseg_size.to_string(),
            ),
            ("WAL block size", self.wal_block_size.to_string()),
            ("Bytes per WAL segment", self.wal_segment_size.to_string()),
            (
                "Maximum length of identifiers",
                self.name_data_len.to_string(),
            ),
            (
                "Maximum columns in an index",
                self.index_max_keys.to_string(),
            ),
            (
                "Maximum size of a TOAST chunk",
                self.toast_max_chunk_size.to_string(),
            ),
            (
                "Size of a large-object chunk",
                self.large_object_chunk_size.to_string(),
            ),
            (
                "Float8 argument passing",
                if self.float8_by_value {
                    "by value"
                } else {
                    "by reference"
                }
                .to_string(),
            ),
            (
                "Data page checksum version",
                self.data_checksum_version.to_string(),
            ),
        ];
        // What only some versions record, where pg_controldata prints it.
        if let Some(senders) = self.max_wal_senders {
            lines.push(("max_wal_senders setting", senders.to_string()));
        }
        if let Some(by_value) = self.float4_by_value {
            lines.push((
                "Float4 argument passing",
                if by_value { "by value" } else { "by reference" }.to_string(),
            ));
        }
        if let Some(signed) = self.default_char_signed {
            lines.push((
                "Default char data signedness",
                if signed { "signed" } else { "unsigned" }.to_string(),
            ));
        }
        lines
    }
}

/// An LSN as PostgreSQL prints it ("0/1A2B3C8").
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_formatting_matches_postgres() {
        assert_eq!(format_lsn(0x0000_0001_0000_0028), "1/28");
        assert_eq!(format_lsn(0x1A2B3C8), "0/1A2B3C8");
    }

    #[test]
    fn short_or_foreign_files_are_errors_not_panics() {
        let p = Path::new("pg_control");
        assert!(matches!(
            ControlFile::decode(&[], p),
            Err(Error::ControlTruncated { .. })
        ));
        assert!(matches!(
            ControlFile::decode(&[0; 8192], p),
            Err(Error::ControlUnknownVersion { .. })
        ));
        let mut bytes = vec![0u8; 100];
        bytes[8..12].copy_from_slice(&1300u32.to_ne_bytes());
        assert!(matches!(
            ControlFile::decode(&bytes, p),
            Err(Error::ControlTruncated { .. })
        ));
    }
}
