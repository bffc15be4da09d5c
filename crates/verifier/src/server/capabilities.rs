//! What the new installation can do, asked of its server: ICU, lz4, libxml,
//! extensions and their versions, libraries that load, collation and Unicode
//! versions, replication settings.

use crate::rules::CapabilityUse;
use pgm_cluster::PgMajor;
use serde::Serialize;
use std::collections::BTreeMap;

#[allow(unused_imports)]
use super::*;

/// What the new installation can do, for the old cluster's needs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Capabilities {
    pub icu: bool,
    pub lz4: bool,
    pub xml: bool,
    /// Extensions the old cluster has whose control file the new installation lacks.
    pub missing_extensions: Vec<String>,
    /// (extension, old version) with no update path to the new default version.
    pub stuck_extensions: Vec<(String, String, String)>,
    /// Libraries that did not load, with the server's complaint.
    pub failed_libraries: BTreeMap<String, String>,
    /// The new installation's default version of each extension the old cluster has.
    pub extension_defaults: BTreeMap<String, String>,
    /// (provider, locale) → the collation library's version in the new installation.
    pub collation_versions: BTreeMap<(String, String), String>,
    /// How many replication origins the new server can track (17 and later).
    pub replication_origins: Option<i64>,
    /// What the new server offers logical slots carried into it.
    pub slot_settings: Option<SlotSettings>,
    /// `unicode_version()` of the new server (17 and later).
    pub unicode_version: Option<String>,
}

/// The new server's settings that carried logical slots depend on.
#[derive(Debug, Clone, Serialize)]
pub struct SlotSettings {
    pub logical_slots: i64,
    pub wal_level: String,
    pub max_replication_slots: i64,
}

pub(crate) fn probe_capabilities(
    client: &mut postgres::Client,
    new_major: PgMajor,
    needed: Option<&CapabilityUse>,
) -> Result<Capabilities, crate::Error> {
    let q = |what: &'static str| {
        move |e: postgres::Error| crate::Error::Query {
            database: "template1".into(),
            what: what.into(),
            detail: pgm_cluster::describe_pg_error(&e),
        }
    };
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_collation WHERE collprovider = 'i'),
                    coalesce((SELECT 'lz4' = ANY(enumvals) FROM pg_catalog.pg_settings
                               WHERE name = 'default_toast_compression'), false)",
            &[],
        )
        .map_err(q("probing ICU and lz4"))?;
    let mut can = Capabilities {
        icu: icu_built_in(client)?,
        lz4: row.get(1),
        // Without libxml every xml input fails.
        xml: client
            .batch_execute("SELECT '<a/>'::pg_catalog.xml")
            .is_ok(),
        ..Capabilities::default()
    };
    if let Some(setting) = new_major.replication_origin_setting() {
        let value: String = client
            .query_one("SELECT pg_catalog.current_setting($1)", &[&setting])
            .map_err(q("reading the replication origin limit"))?
            .get(0);
        can.replication_origins = value.parse().ok();
        can.unicode_version = client
            .query_one("SELECT pg_catalog.unicode_version()", &[])
            .map_err(q("reading the Unicode version"))?
            .get(0);
    }
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_catalog.pg_replication_slots
                      WHERE slot_type = 'logical' AND NOT temporary),
                    pg_catalog.current_setting('wal_level'),
                    pg_catalog.current_setting('max_replication_slots')::bigint",
            &[],
        )
        .map_err(q("reading the replication slot settings"))?;
    can.slot_settings = Some(SlotSettings {
        logical_slots: row.get(0),
        wal_level: row.get(1),
        max_replication_slots: row.get(2),
    });
    let Some(needed) = needed else { return Ok(can) };
    for (name, version) in needed.extensions.keys() {
        let default: Option<String> = client
            .query_opt(
                "SELECT default_version FROM pg_catalog.pg_available_extensions WHERE name = $1",
                &[name],
            )
            .map_err(q("looking for an extension"))?
            .map(|r| r.get(0));
        match default {
            None => can.missing_extensions.push(name.clone()),
            Some(default) if default != *version => {
                can.extension_defaults.insert(name.clone(), default.clone());
                let reachable: bool = client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension_update_paths($1)
                                         WHERE source = $2 AND target = $3 AND path IS NOT NULL)",
                        &[name, version, &default],
                    )
                    .map_err(q("looking for an extension update path"))?
                    .get(0);
                if !reachable {
                    can.stuck_extensions
                        .push((name.clone(), version.clone(), default));
                }
            }
            Some(default) => {
                can.extension_defaults.insert(name.clone(), default);
            }
        }
    }
    let mut wanted: Vec<(String, String)> = needed
        .collated_indexes
        .iter()
        .map(|i| (i.provider.clone(), i.locale.clone()))
        .collect();
    wanted.sort();
    wanted.dedup();
    for (provider, locale) in wanted {
        // ICU versions its collators per locale; libc reports the C
        // library's version for every locale, so any versioned libc
        // collation answers for a locale the new cluster has no row for.
        let (column, any_locale) = if provider == "i" {
            (new_major.icu_collation_locale_column(), "false")
        } else {
            ("collcollate", "true")
        };
        let sql = format!(
            "SELECT pg_catalog.pg_collation_actual_version(oid) FROM pg_catalog.pg_collation
              WHERE collprovider::text = $1 AND ({column} = $2 OR {any_locale})
                AND pg_catalog.pg_collation_actual_version(oid) IS NOT NULL
              ORDER BY {column} = $2 DESC LIMIT 1"
        );
        if let Some(row) = client
            .query_opt(sql.as_str(), &[&provider, &locale])
            .map_err(q("reading collation versions"))?
        {
            can.collation_versions
                .insert((provider, locale), row.get(0));
        }
    }
    for library in needed.libraries.keys() {
        let load = format!("LOAD {}", quote_literal(library));
        if let Err(e) = client.batch_execute(&load) {
            can.failed_libraries
                .insert(library.clone(), pgm_cluster::describe_pg_error(&e));
        }
    }
    Ok(can)
}

/// Whether the server was built with ICU. 16 and later say so directly
/// (icu_unicode_version() is NULL without ICU; they keep an ICU "unicode"
/// collation row either way); before 16, initdb imports ICU collations only
/// when built with ICU.
pub(crate) fn icu_built_in(client: &mut postgres::Client) -> Result<bool, crate::Error> {
    let q = |e: postgres::Error| crate::Error::Query {
        database: "template1".into(),
        what: "probing ICU".into(),
        detail: pgm_cluster::describe_pg_error(&e),
    };
    let has_function: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE proname = 'icu_unicode_version')",
            &[],
        )
        .map_err(q)?
        .get(0);
    let sql = if has_function {
        "SELECT pg_catalog.icu_unicode_version() IS NOT NULL"
    } else {
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_collation WHERE collprovider = 'i')"
    };
    Ok(client.query_one(sql, &[]).map_err(q)?.get(0))
}
