//! Native decoding of `global/pg_control` for every supported major.
//!
//! The file is a C struct in native byte order and alignment, padded to
//! 8 KiB, with a CRC-32C over everything before the `crc` field. The layout
//! has been stable since 12 up to byte 248; after that, 12 stores an extra
//! `float4ByVal` flag and 18 adds `default_char_signedness`, which moves the
//! CRC. Every field is read at an explicit offset; nothing is transmuted.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, PgMajor};

/// Size of the file on disk (the struct is much smaller; the rest is zeros).
pub const CONTROL_FILE_SIZE: usize = 8192;

/// Byte offsets shared by 12 … 18.
mod off {
    pub const SYSTEM_IDENTIFIER: usize = 0;
    pub const PG_CONTROL_VERSION: usize = 8;
    pub const CATALOG_VERSION: usize = 12;
    pub const STATE: usize = 16;
    pub const TIME: usize = 24;
    pub const CHECKPOINT: usize = 32;
    // The copy of the last checkpoint record starts at 40.
    pub const REDO: usize = 40;
    pub const TIMELINE: usize = 48;
    pub const PREV_TIMELINE: usize = 52;
    pub const FULL_PAGE_WRITES: usize = 56;
    pub const NEXT_FULL_XID: usize = 64;
    pub const NEXT_OID: usize = 72;
    pub const NEXT_MULTI: usize = 76;
    pub const NEXT_MULTI_OFFSET: usize = 80;
    pub const OLDEST_XID: usize = 84;
    pub const OLDEST_XID_DB: usize = 88;
    pub const OLDEST_MULTI: usize = 92;
    pub const OLDEST_MULTI_DB: usize = 96;
    pub const CHECKPOINT_TIME: usize = 104;
    pub const OLDEST_COMMIT_TS_XID: usize = 112;
    pub const NEWEST_COMMIT_TS_XID: usize = 116;
    pub const OLDEST_ACTIVE_XID: usize = 120;
    // End of the checkpoint copy (128).
    pub const UNLOGGED_LSN: usize = 128;
    pub const MIN_RECOVERY_POINT: usize = 136;
    pub const MIN_RECOVERY_POINT_TLI: usize = 144;
    pub const WAL_LEVEL: usize = 172;
    pub const WAL_LOG_HINTS: usize = 176;
    pub const MAX_CONNECTIONS: usize = 180;
    pub const MAX_WORKER_PROCESSES: usize = 184;
    pub const MAX_WAL_SENDERS: usize = 188;
    pub const MAX_PREPARED_XACTS: usize = 192;
    pub const MAX_LOCKS_PER_XACT: usize = 196;
    pub const TRACK_COMMIT_TIMESTAMP: usize = 200;
    pub const MAX_ALIGN: usize = 204;
    pub const FLOAT_FORMAT: usize = 208;
    pub const BLOCK_SIZE: usize = 216;
    pub const RELSEG_SIZE: usize = 220;
    pub const WAL_BLOCK_SIZE: usize = 224;
    pub const WAL_SEGMENT_SIZE: usize = 228;
    pub const NAME_DATA_LEN: usize = 232;
    pub const INDEX_MAX_KEYS: usize = 236;
    pub const TOAST_MAX_CHUNK_SIZE: usize = 240;
    pub const LARGE_OBJECT_CHUNK_SIZE: usize = 244;
}

/// What differs after byte 248, per pg_control version.
struct Tail {
    float8_by_val: usize,
    data_checksum_version: usize,
    char_signedness: Option<usize>,
    crc: usize,
}

fn tail_for(pg_control_version: u32) -> Option<(PgMajor, Tail)> {
    let layout = |float8_by_val, char_signedness, crc| Tail {
        float8_by_val,
        data_checksum_version: 252,
        char_signedness,
        crc,
    };
    match pg_control_version {
        // 12: float4ByVal at 248, float8ByVal at 249.
        1201 => Some((PgMajor::new(12), layout(249, None, 288))),
        // 13 … 16 share 1300; 17 only grew the checkpoint record into padding.
        1300 => Some((PgMajor::new(13), layout(248, None, 288))),
        1700 => Some((PgMajor::new(17), layout(248, None, 288))),
        1800 => Some((PgMajor::new(18), layout(248, Some(256), 292))),
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
    pub max_wal_senders: i32,
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
        if bytes.len() < off::CATALOG_VERSION {
            return Err(Error::ControlTruncated {
                path: path.into(),
                len: bytes.len(),
                need: CONTROL_FILE_SIZE,
            });
        }
        let r = Reader(bytes);
        let version = r.u32(off::PG_CONTROL_VERSION);
        let (layout_major, tail) =
            tail_for(version).ok_or_else(|| Error::ControlUnknownVersion {
                path: path.into(),
                found: version,
            })?;
        if bytes.len() < tail.crc + 4 {
            return Err(Error::ControlTruncated {
                path: path.into(),
                len: bytes.len(),
                need: CONTROL_FILE_SIZE,
            });
        }
        let stored = r.u32(tail.crc);
        let computed = crc32c::crc32c(&bytes[..tail.crc]);
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
        let float_format = r.f64(off::FLOAT_FORMAT);
        if float_format != 1234567.0 {
            return Err(Error::ControlImplausible {
                path: path.into(),
                detail: format!("float format check value is {float_format}, expected 1234567"),
            });
        }
        let full_xid = r.u64(off::NEXT_FULL_XID);
        Ok(ControlFile {
            layout_major,
            pg_control_version: version,
            catalog_version: r.u32(off::CATALOG_VERSION),
            system_identifier: r.u64(off::SYSTEM_IDENTIFIER),
            state: ClusterState::from_raw(r.i32(off::STATE)),
            time: r.i64(off::TIME),
            checkpoint_lsn: r.u64(off::CHECKPOINT),
            redo_lsn: r.u64(off::REDO),
            timeline: r.u32(off::TIMELINE),
            prev_timeline: r.u32(off::PREV_TIMELINE),
            full_page_writes: r.bool(off::FULL_PAGE_WRITES),
            next_xid_epoch: (full_xid >> 32) as u32,
            next_xid: full_xid as u32,
            next_oid: r.u32(off::NEXT_OID),
            next_multixact: r.u32(off::NEXT_MULTI),
            next_multi_offset: r.u32(off::NEXT_MULTI_OFFSET),
            oldest_xid: r.u32(off::OLDEST_XID),
            oldest_xid_db: r.u32(off::OLDEST_XID_DB),
            oldest_multixact: r.u32(off::OLDEST_MULTI),
            oldest_multi_db: r.u32(off::OLDEST_MULTI_DB),
            checkpoint_time: r.i64(off::CHECKPOINT_TIME),
            oldest_commit_ts_xid: r.u32(off::OLDEST_COMMIT_TS_XID),
            newest_commit_ts_xid: r.u32(off::NEWEST_COMMIT_TS_XID),
            oldest_active_xid: r.u32(off::OLDEST_ACTIVE_XID),
            unlogged_lsn: r.u64(off::UNLOGGED_LSN),
            min_recovery_point: r.u64(off::MIN_RECOVERY_POINT),
            min_recovery_point_timeline: r.u32(off::MIN_RECOVERY_POINT_TLI),
            wal_level: r.i32(off::WAL_LEVEL),
            wal_log_hints: r.bool(off::WAL_LOG_HINTS),
            max_connections: r.i32(off::MAX_CONNECTIONS),
            max_worker_processes: r.i32(off::MAX_WORKER_PROCESSES),
            max_wal_senders: r.i32(off::MAX_WAL_SENDERS),
            max_prepared_xacts: r.i32(off::MAX_PREPARED_XACTS),
            max_locks_per_xact: r.i32(off::MAX_LOCKS_PER_XACT),
            track_commit_timestamp: r.bool(off::TRACK_COMMIT_TIMESTAMP),
            max_align: r.u32(off::MAX_ALIGN),
            block_size: r.u32(off::BLOCK_SIZE),
            relseg_size: r.u32(off::RELSEG_SIZE),
            wal_block_size: r.u32(off::WAL_BLOCK_SIZE),
            wal_segment_size: r.u32(off::WAL_SEGMENT_SIZE),
            name_data_len: r.u32(off::NAME_DATA_LEN),
            index_max_keys: r.u32(off::INDEX_MAX_KEYS),
            toast_max_chunk_size: r.u32(off::TOAST_MAX_CHUNK_SIZE),
            large_object_chunk_size: r.u32(off::LARGE_OBJECT_CHUNK_SIZE),
            float8_by_value: r.bool(tail.float8_by_val),
            data_checksum_version: r.u32(tail.data_checksum_version),
            default_char_signed: tail.char_signedness.map(|at| r.bool(at)),
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
            ("max_wal_senders setting", self.max_wal_senders.to_string()),
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
