//! Golden pg_control files, one per supported major, made by that major's own
//! initdb; `expected.txt` holds what PostgreSQL itself reports for the file
//! (pg_controldata, or the server's pg_control_*() functions for the
//! server-only installs). Regenerate with scripts/make-control-golden.sh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pgm_cluster::{ControlFile, Error, PgMajor};

fn golden_dir(major: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../fixtures/pg_control/{major}"))
}

fn expected(major: u32) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(golden_dir(major).join("expected.txt")).unwrap();
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(label, value)| (label.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// Labels pg_controldata prints that are not fields of the file we decode
/// (derived values, or backup bookkeeping we have no use for).
const NOT_DECODED: &[&str] = &[
    "Latest checkpoint's REDO WAL file",
    "Backup start location",
    "Backup end location",
    "End-of-backup record required",
    "Date/time type storage",
];

#[test]
fn every_major_decodes_to_what_postgres_reports() {
    for major in 10..=18 {
        let bytes = std::fs::read(golden_dir(major).join("pg_control")).unwrap();
        let control = ControlFile::decode(&bytes, Path::new("pg_control")).unwrap();
        assert!(control.matches_major(PgMajor::new(major)), "{major}");
        let expected = expected(major);
        let ours: BTreeMap<&str, String> = control.controldata_lines().into_iter().collect();
        let mut compared = 0;
        for (label, value) in &expected {
            match ours.get(label.as_str()) {
                Some(mine) => {
                    assert_eq!(mine, value, "PostgreSQL {major}: {label}");
                    compared += 1;
                }
                None => assert!(
                    NOT_DECODED.contains(&label.as_str()),
                    "{major}: {label} not decoded"
                ),
            }
        }
        // Where pg_controldata exists, every field we decode is cross-checked.
        if expected.len() > 40 {
            for label in ours.keys() {
                assert!(
                    expected.contains_key(*label),
                    "{major}: {label} not checked"
                );
            }
        }
        assert!(compared >= 30, "{major}: only {compared} values compared");
    }
}

#[test]
fn char_signedness_is_only_read_where_recorded() {
    for major in 10..=18 {
        let bytes = std::fs::read(golden_dir(major).join("pg_control")).unwrap();
        let control = ControlFile::decode(&bytes, Path::new("pg_control")).unwrap();
        assert_eq!(
            control.default_char_signed.is_some(),
            major >= 18,
            "{major}"
        );
    }
}

/// Fields only some versions record: max_wal_senders from 12, float4ByVal
/// up to 12; 10 and 11 store the next xid as two halves.
#[test]
fn version_specific_fields_are_read_only_where_recorded() {
    for major in 10..=18 {
        let bytes = std::fs::read(golden_dir(major).join("pg_control")).unwrap();
        let control = ControlFile::decode(&bytes, Path::new("pg_control")).unwrap();
        assert_eq!(control.max_wal_senders.is_some(), major >= 12, "{major}");
        assert_eq!(control.float4_by_value.is_some(), major <= 12, "{major}");
        // 13 … 16 share one layout.
        let layout = if (13..=16).contains(&major) {
            13
        } else {
            major
        };
        assert_eq!(control.layout_major, PgMajor::new(layout), "{major}");
    }
}

#[test]
fn damage_is_a_typed_error() {
    for major in 10..=18 {
        let good = std::fs::read(golden_dir(major).join("pg_control")).unwrap();
        let p = Path::new("pg_control");

        let mut flipped = good.clone();
        flipped[100] ^= 0x40;
        assert!(
            matches!(
                ControlFile::decode(&flipped, p),
                Err(Error::ControlBadCrc { .. })
            ),
            "{major}"
        );

        for len in [0, 7, 16, 200, 291, 4096] {
            let err = ControlFile::decode(&good[..len], p).unwrap_err();
            assert!(
                matches!(err, Error::ControlTruncated { .. }),
                "{major} len {len}: {err}"
            );
        }

        let mut unknown = good.clone();
        unknown[8..12].copy_from_slice(&942u32.to_ne_bytes());
        assert!(matches!(
            ControlFile::decode(&unknown, p),
            Err(Error::ControlUnknownVersion { found: 942, .. })
        ));

        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(
            ControlFile::decode(&longer, p),
            Err(Error::ControlTruncated { .. })
        ));
    }
}
