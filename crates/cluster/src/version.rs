//! The PostgreSQL major version as a type. Every version difference the
//! project cares about is decided by a method here, not by comparisons
//! scattered through the code.

use std::fmt;

use serde::Serialize;

use crate::Error;

/// A PostgreSQL major version, held as pg_upgrade does: major × 100, so
/// that 9.6 (906) orders below 10 (1000). Displays as "9.6" or "15".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgMajor(u32);

/// Oldest and newest majors whose `pg_control` layout we know.
pub const OLDEST_SUPPORTED: PgMajor = PgMajor(1000);
pub const NEWEST_SUPPORTED: PgMajor = PgMajor(1800);
/// The oldest major an upgrade may go to.
pub const OLDEST_NEW: PgMajor = PgMajor(1300);

impl PgMajor {
    /// A major of the 10-and-later numbering (12, 13, … 18).
    pub const fn new(major: u32) -> PgMajor {
        PgMajor(major * 100)
    }

    /// The major's number for 10 and later (15 for 15); 0 for older ones,
    /// which nothing here supports.
    pub fn number(self) -> u32 {
        if self.0 >= 1000 {
            self.0 / 100
        } else {
            0
        }
    }

    pub fn is_supported(self) -> bool {
        (OLDEST_SUPPORTED..=NEWEST_SUPPORTED).contains(&self)
    }

    /// Whether a cluster of this major can be upgraded from (the newest
    /// major has nothing newer to go to).
    pub fn is_supported_as_old(self) -> bool {
        self.is_supported() && self < NEWEST_SUPPORTED
    }

    /// Whether an upgrade may go to a cluster of this major.
    pub fn is_supported_as_new(self) -> bool {
        (OLDEST_NEW..=NEWEST_SUPPORTED).contains(&self)
    }

    /// Parses the contents of a `PG_VERSION` file ("15\n", or "9.6\n").
    pub fn parse_pg_version_file(text: &str) -> Result<PgMajor, Error> {
        let line = text.lines().next().unwrap_or("").trim();
        parse_major(line).ok_or_else(|| Error::BadVersionString(line.to_string()))
    }

    /// The `pg_control_version` this major writes.
    pub fn pg_control_version(self) -> Option<u32> {
        match self.number() {
            10 => Some(1002),
            11 => Some(1100),
            12 => Some(1201),
            13..=16 => Some(1300),
            17 => Some(1700),
            18 => Some(1800),
            _ => None,
        }
    }

    /// 12 still stores `float4ByVal` in pg_control; 13 removed it.
    pub fn control_has_float4_byval(self) -> bool {
        self.0 <= 1200
    }

    /// 18 records the default signedness of `char` in pg_control.
    pub fn control_has_char_signedness(self) -> bool {
        self.0 >= 1800
    }

    /// 15 added `datlocprovider` (libc or ICU); 17 added the builtin provider.
    pub fn has_locale_provider(self) -> bool {
        self.0 >= 1500
    }

    pub fn has_builtin_locale_provider(self) -> bool {
        self.0 >= 1700
    }

    /// The column holding a database's non-libc locale.
    pub fn datlocale_column(self) -> Option<&'static str> {
        match self.number() {
            ..=14 => None,
            15 | 16 => Some("daticulocale"),
            _ => Some("datlocale"),
        }
    }

    /// The pg_collation column holding an ICU collation's locale.
    pub fn icu_collation_locale_column(self) -> &'static str {
        match self.number() {
            ..=14 => "collcollate",
            15 | 16 => "colliculocale",
            _ => "colllocale",
        }
    }

    /// 18's initdb enables data checksums unless told otherwise.
    pub fn initdb_checksums_default_on(self) -> bool {
        self.0 >= 1800
    }

    /// Whether `initdb` accepts `--no-data-checksums`.
    pub fn initdb_has_no_data_checksums(self) -> bool {
        self.0 >= 1800
    }

    /// 17 and later: `initdb --sync-only` takes `--sync-method`.
    pub fn initdb_has_sync_method(self) -> bool {
        self.0 >= 1700
    }

    /// 17 and later: pg_restore takes `--transaction-size`.
    pub fn pg_restore_has_transaction_size(self) -> bool {
        self.0 >= 1700
    }

    /// 18 and later: pg_dump carries optimizer statistics (`--statistics`,
    /// `--no-statistics`), dumps the schema with `--no-data` and sequence
    /// values with `--sequence-data`, and vacuumdb fills in only what is
    /// missing (`--missing-stats-only`).
    pub fn dumps_statistics(self) -> bool {
        self.0 >= 1800
    }

    /// 17 and later (as the old side): an upgrade carries the logical
    /// replication slots and the subscriptions' progress (pg_upgrade migrates
    /// them); the server has `unicode_version()`.
    pub fn upgrade_carries_logical_replication(self) -> bool {
        self.0 >= 1700
    }

    /// 17 and later: a server in binary-upgrade mode starts only if its
    /// slots keep all WAL (`max_slot_wal_keep_size=-1`).
    pub fn binary_upgrade_keeps_slot_wal(self) -> bool {
        self.0 >= 1700
    }

    /// 11 and later have JIT compilation (the `jit` setting).
    pub fn has_jit(self) -> bool {
        self.0 >= 1100
    }

    /// Whether the server reports `unicode_version()` (17 and later).
    pub fn has_unicode_version(self) -> bool {
        self.0 >= 1700
    }

    /// 14 and later: per-column TOAST compression (lz4), SQL-standard
    /// function bodies, expressions in extended statistics.
    pub fn has_toast_compression(self) -> bool {
        self.0 >= 1400
    }

    /// The setting that bounds replication origins: 18's own, 17's the
    /// slots'; before 17 subscriptions are not carried at all.
    pub fn replication_origin_setting(self) -> Option<&'static str> {
        match self.number() {
            ..=16 => None,
            17 => Some("max_replication_slots"),
            _ => Some("max_active_replication_origins"),
        }
    }

    /// 15 and later (as the new side) keep each relation's file names
    /// (relfilenumbers) and database OIDs: what `--swap` needs.
    pub fn preserves_relfilenumbers(self) -> bool {
        self.0 >= 1500
    }
}

impl fmt::Display for PgMajor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 1000 {
            write!(f, "{}", self.0 / 100)
        } else {
            write!(f, "{}.{}", self.0 / 100, self.0 % 100)
        }
    }
}

impl Serialize for PgMajor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 >= 1000 {
            serializer.serialize_u32(self.0 / 100)
        } else {
            serializer.collect_str(self)
        }
    }
}

/// A full version as a program reports it: major plus minor ("15.18").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PgVersion {
    pub major: PgMajor,
    /// The version text as printed, e.g. "15.18" or "18.6".
    pub text: String,
}

impl PgVersion {
    /// Parses `--version` output: "pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)".
    pub fn parse_version_output(output: &str) -> Result<PgVersion, Error> {
        let line = output.lines().next().unwrap_or("").trim();
        let after = line
            .split_once("(PostgreSQL) ")
            .map(|(_, rest)| rest)
            .ok_or_else(|| Error::BadVersionString(line.to_string()))?;
        let text = after.split_whitespace().next().unwrap_or("").to_string();
        let major = parse_major(&text).ok_or_else(|| Error::BadVersionString(line.to_string()))?;
        Ok(PgVersion { major, text })
    }
}

impl fmt::Display for PgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// "15", "15.18", "18beta1", "9.6", "9.6.24" → the major. Pre-10 majors are
/// encoded as 9.6 → 906 so that they order below 10 and are never supported.
fn parse_major(text: &str) -> Option<PgMajor> {
    let digits = |s: &str| -> Option<u32> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    let first = digits(text)?;
    if first >= 10 {
        return Some(PgMajor(first * 100));
    }
    let rest = text.split_once('.')?.1;
    Some(PgMajor(first * 100 + digits(rest)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_files_and_outputs() {
        assert_eq!(
            PgMajor::parse_pg_version_file("15\n").unwrap(),
            PgMajor::new(15)
        );
        assert_eq!(
            PgMajor::parse_pg_version_file("9.6\n").unwrap().to_string(),
            "9.6"
        );
        assert!(PgMajor::parse_pg_version_file("").is_err());
        assert!(PgMajor::parse_pg_version_file("banana").is_err());
        let v =
            PgVersion::parse_version_output("pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n")
                .unwrap();
        assert_eq!((v.major, v.text.as_str()), (PgMajor::new(15), "15.18"));
        let v = PgVersion::parse_version_output("postgres (PostgreSQL) 18beta1").unwrap();
        assert_eq!(v.major, PgMajor::new(18));
        assert!(PgVersion::parse_version_output("bash: command not found").is_err());
    }

    #[test]
    fn old_majors_order_below_new_ones() {
        let nine_six = PgMajor::parse_pg_version_file("9.6").unwrap();
        assert!(nine_six < PgMajor::new(10));
        assert!(!nine_six.is_supported() && !PgMajor::new(19).is_supported());
        assert!(PgMajor::new(10).is_supported() && PgMajor::new(18).is_supported());
        assert!(PgMajor::new(10).is_supported_as_old() && !PgMajor::new(18).is_supported_as_old());
        assert!(!PgMajor::new(12).is_supported_as_new() && PgMajor::new(13).is_supported_as_new());
    }
}
