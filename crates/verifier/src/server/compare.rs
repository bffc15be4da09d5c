//! What the old cluster uses against what the new installation can do: each
//! capability check's finding, and the rules' hits as findings.

use crate::rules::{not_applicable, CapabilityUse, ObjectRef, RULES};
use crate::{Finding, Report};

#[allow(unused_imports)]
use super::*;

/// The old cluster's catalogue rules, as findings.
pub(crate) fn rule_findings(report: &Report, facts: &CatalogFacts) -> Vec<Finding> {
    let old = report.old.install.as_ref().map(|i| i.version.major);
    let new = report.new.install.as_ref().map(|i| i.version.major);
    let (Some(old), Some(new)) = (old, new) else {
        return Vec::new();
    };
    RULES
        .iter()
        .map(|rule| {
            if !(rule.applies)(old, new) {
                return Finding::pass(rule.id, rule.title, not_applicable(old, new));
            }
            if rule.id == "old-isn-float8" {
                let differs = match (&report.old.control, &report.new.control) {
                    (Some(o), Some(n)) => o.float8_by_value != n.float8_by_value,
                    _ => false,
                };
                if !differs {
                    return Finding::pass(
                        rule.id,
                        rule.title,
                        "both installations pass float8 the same way",
                    );
                }
            }
            let hits: Vec<ObjectRef> = facts
                .rule_hits
                .iter()
                .filter(|(id, _)| *id == rule.id)
                .map(|(_, o)| o.clone())
                .collect();
            if hits.is_empty() {
                Finding::pass(rule.id, rule.title, "none")
            } else {
                Finding::fail(
                    rule.id,
                    rule.title,
                    rule.code,
                    format!(
                        "{} found ({}): {}",
                        hits.len(),
                        rule.why,
                        describe_objects(&hits)
                    ),
                    rule.remedy,
                )
                .with_objects(hits)
            }
        })
        .collect()
}

/// xml without libxml: stored values carry over as files and read back
/// unchanged (their output needs no libxml), as in pg_upgrade; what breaks
/// is parsing an xml value, which the restore does for the literals in
/// defaults, constraints, views and the like. Only those refuse.
pub(crate) fn xml_without_libxml(
    uses: &CapabilityUse,
    can: &Capabilities,
    dump_reload: bool,
) -> Finding {
    let id = "new-xml";
    let title = title(id);
    if uses.xml.is_empty() && uses.xml_literals.is_empty() {
        return Finding::pass(id, title, "the old cluster does not use the xml type");
    }
    if can.xml {
        return Finding::pass(
            id,
            title,
            "the old cluster uses the xml type, and the new installation has libxml",
        );
    }
    if dump_reload && !uses.xml.is_empty() {
        // A reload parses every stored value (COPY).
        return Finding::fail(
            id,
            title,
            "xml_unavailable",
            format!(
                "the new installation was built without libxml, and --method dump reloads these xml columns' values, which parses them: {}",
                describe_objects(&uses.xml)
            ),
            "use a new installation built with libxml (configure --with-libxml), or upgrade in place (without --method dump), which carries the values as files",
        )
        .with_objects(uses.xml.clone());
    }
    if !uses.xml_literals.is_empty() {
        return Finding::fail(
            id,
            title,
            "xml_unavailable",
            format!(
                "the new installation was built without libxml, and restoring these objects parses an xml value, which needs it: {}",
                describe_objects(&uses.xml_literals)
            ),
            "use a new installation built with libxml (configure --with-libxml), or change those objects in the old cluster so that they hold no xml literal (e.g. a default written as '<a/>'::text::xml is converted when used, not when restored)",
        )
        .with_objects(uses.xml_literals.clone());
    }
    Finding::warn(
        id,
        title,
        "xml_without_libxml",
        format!(
            "these xml columns carry over and read back unchanged, but the new installation was built without libxml: there, new xml values cannot be parsed (inserting or updating them from text, casts to xml, XMLPARSE, xpath and the other xml functions fail): {}",
            describe_objects(&uses.xml)
        ),
        "if the application writes xml, use a new installation built with libxml (configure --with-libxml); otherwise nothing to do",
    )
    .with_objects(uses.xml.clone())
}

/// What the old cluster uses against what the new installation can do.
pub(crate) fn compare_capabilities(report: &Report) -> Vec<Finding> {
    let (Some(old), Some(new)) = (&report.old.catalog, &report.new.catalog) else {
        return Vec::new();
    };
    let (uses, can) = (&old.uses, &new.can);
    let capability = |id: &'static str,
                      used: &[ObjectRef],
                      available: bool,
                      code: &'static str,
                      what: &str,
                      remedy: &str| {
        let title = title(id);
        if used.is_empty() {
            Finding::pass(id, title, format!("the old cluster does not use {what}"))
        } else if available {
            Finding::pass(
                id,
                title,
                format!("the old cluster uses {what}, and the new installation has it"),
            )
        } else {
            Finding::fail(
                id,
                title,
                code,
                format!(
                    "the old cluster uses {what}, which the new installation was built without: {}",
                    describe_objects(used)
                ),
                remedy,
            )
            .with_objects(used.to_vec())
        }
    };
    let mut out = vec![
        capability(
            "new-icu",
            &uses.icu,
            can.icu,
            "icu_unavailable",
            "ICU collations",
            "use a new installation built with ICU (configure --with-icu), or move these objects to libc collations in the old cluster first",
        ),
        capability(
            "new-lz4",
            &uses.lz4,
            can.lz4,
            "lz4_unavailable",
            "lz4 compression",
            "use a new installation built with lz4 (configure --with-lz4), or recompress in the old cluster: ALTER TABLE … ALTER COLUMN … SET COMPRESSION pglz, then rewrite the table (VACUUM FULL)",
        ),
    ];
    out.push(xml_without_libxml(uses, can, report.dump_reload));
    let missing: Vec<ObjectRef> = uses
        .extensions
        .iter()
        .filter(|((name, _), _)| can.missing_extensions.contains(name))
        .flat_map(|((name, version), dbs)| {
            dbs.iter().map(move |db| ObjectRef {
                schema: None,
                database: Some(db.clone()),
                kind: "extension".into(),
                name: format!("{name} {version}"),
            })
        })
        .collect();
    out.push(if !missing.is_empty() && report.dump_reload {
        // A reload runs CREATE EXTENSION, which reads the control file.
        Finding::fail(
            "new-extensions",
            title("new-extensions"),
            "extension_missing",
            format!("the new installation lacks these extensions, which --method dump creates anew (CREATE EXTENSION reads their files): {}", describe_objects(&missing)),
            "install the extensions for the new PostgreSQL major (their packages or builds), drop them in the old cluster (DROP EXTENSION … in each database), or upgrade in place (without --method dump)",
        )
        .with_objects(missing)
    } else if !missing.is_empty() {
        // A binary-upgrade restore makes an extension's catalog entry and
        // its objects without reading its control or script files (as with
        // pg_upgrade, which does not look for them): what an extension's
        // objects need to work is its shared libraries, which new-libraries
        // loads. Without the files, only later changes to the extension fail.
        Finding::warn(
            "new-extensions",
            title("new-extensions"),
            "extension_missing",
            format!("the new installation lacks the files (control and scripts) of these extensions: {}; they carry over with their objects, but in the new cluster they cannot be updated (ALTER EXTENSION … UPDATE), created in another database, or restored from a plain dump", describe_objects(&missing)),
            "install the extensions for the new PostgreSQL major (their packages or builds) before or after the upgrade, or drop them in the old cluster (DROP EXTENSION … in each database)",
        )
        .with_objects(missing)
    } else if !can.stuck_extensions.is_empty() {
        let stuck: Vec<String> = can.stuck_extensions.iter().map(|(n, from, to)| format!("{n} {from} (new default {to})")).collect();
        Finding::warn(
            "new-extensions",
            title("new-extensions"),
            "extension_not_updatable",
            format!("these extensions will move as they are, but have no update path to the new default version: {}", stuck.join(", ")),
            "they keep their old version after the upgrade; check with the extension's maintainers how to update them",
        )
    } else {
        let count = uses.extensions.len();
        Finding::pass(
            "new-extensions",
            title("new-extensions"),
            match count {
                0 => "no extensions in use (beyond what initdb installs)".to_string(),
                1 => "1 extension version in use, available in the new installation".to_string(),
                n => format!("{n} extension versions in use, each available in the new installation"),
            },
        )
        .with_objects(extension_report(uses, can))
    });
    let failed: Vec<ObjectRef> = can
        .failed_libraries
        .keys()
        .flat_map(|lib| uses.libraries.get(lib).cloned().unwrap_or_default())
        .collect();
    // A library only the old cluster's shared_preload_libraries names is
    // needed by nothing the upgrade carries: the new cluster keeps its own
    // postgresql.conf unless --carry-config brings the setting over.
    let only_preloaded = !failed.is_empty() && failed.iter().all(|o| o.kind == "setting");
    out.push(if can.failed_libraries.is_empty() {
        Finding::pass(
            "new-libraries",
            title("new-libraries"),
            match uses.libraries.len() {
                0 => "the old cluster needs no shared libraries beyond the server's own".to_string(),
                1 => "the 1 shared library the old cluster needs loads in the new installation".to_string(),
                n => format!("all {n} shared libraries the old cluster needs load in the new installation"),
            },
        )
    } else if only_preloaded && !report.carry_config {
        let libs: Vec<String> = can.failed_libraries.iter().map(|(l, e)| format!("{l} ({e})")).collect();
        Finding::warn(
            "new-libraries",
            title("new-libraries"),
            "preload_library_missing",
            format!("the old cluster preloads shared libraries that do not load in the new installation: {}; the upgrade does not need them (the new cluster keeps its own settings), but a new cluster given the same shared_preload_libraries would not start", libs.join("; ")),
            "install the new major's build of those modules before giving the new cluster that setting, or leave them out of its shared_preload_libraries",
        )
        .with_objects(failed)
    } else {
        let libs: Vec<String> = can.failed_libraries.iter().map(|(l, e)| format!("{l} ({e})")).collect();
        let mut remedy = String::from("install the new major's build of the extension or module that provides them, or drop the objects that need them in the old cluster");
        if failed.iter().any(|o| o.kind == "slot") {
            remedy.push_str(" (a slot: pg_drop_replication_slot('name'), once its subscriber no longer needs it)");
        }
        Finding::fail(
            "new-libraries",
            title("new-libraries"),
            "library_missing",
            format!("these shared libraries do not load in the new installation: {}; needed by: {}", libs.join("; "), describe_objects(&failed)),
            remedy,
        )
        .with_objects(failed)
    });
    out.push(collation_drift(uses, can, report.strict));
    out.push(unicode_update(uses, can, report.strict));
    let id = "new-replication-origins";
    out.push(match can.replication_origins {
        _ if uses.subscriptions == 0 => Finding::pass(id, title(id), "the old cluster has no subscriptions to carry"),
        Some(limit) if limit < uses.subscriptions => Finding::fail(
            id,
            title(id),
            "too_few_replication_origins",
            format!(
                "the old cluster has {} subscriptions, each needing a replication origin, but the new server allows {limit}",
                uses.subscriptions
            ),
            "raise max_active_replication_origins (18; max_replication_slots on 17) in the new cluster's postgresql.conf to at least the number of subscriptions",
        ),
        _ => Finding::pass(id, title(id), format!("{} subscriptions, and origins enough for them", uses.subscriptions)),
    });
    out.push(new_slot_settings(uses, can));
    out.push(new_physical_slots(uses, can));
    out
}

/// Every installed extension, per database, with what the new installation
/// offers for it: the preflight report.
pub(crate) fn extension_report(uses: &CapabilityUse, can: &Capabilities) -> Vec<ObjectRef> {
    uses.extensions
        .iter()
        .flat_map(|((name, version), dbs)| {
            let status = match can.extension_defaults.get(name) {
                None => "not available in the new installation".to_string(),
                Some(default) if default == version => {
                    format!("{version}, the new installation's default too")
                }
                Some(default) if can.stuck_extensions.iter().any(|(n, _, _)| n == name) => {
                    format!("{version}; the new default {default} cannot be reached")
                }
                Some(default) => {
                    format!("{version}; update to {default} afterwards (update_extensions.sql)")
                }
            };
            dbs.iter().map(move |db| ObjectRef {
                schema: None,
                database: Some(db.clone()),
                kind: "extension".into(),
                name: format!("{name} {status}"),
            })
        })
        .collect()
}

/// Indexes ordered by a collation whose version in the new installation
/// differs from the one they may have been built under, with that new version.
pub fn drifted_indexes<'a>(
    uses: &'a CapabilityUse,
    can: &'a Capabilities,
) -> Vec<(&'a crate::rules::CollatedIndex, &'a str)> {
    uses.collated_indexes
        .iter()
        .filter_map(|i| {
            let new = can
                .collation_versions
                .get(&(i.provider.clone(), i.locale.clone()))?;
            i.drifts_to(new).then_some((i, new.as_str()))
        })
        .collect()
}

/// Indexes ordered by a collation whose library version differs between the
/// installations, or from the version recorded when the collation was made,
/// may be silently corrupt after the upgrade until rebuilt.
pub(crate) fn collation_drift(uses: &CapabilityUse, can: &Capabilities, strict: bool) -> Finding {
    let id = "new-collation-versions";
    let drifted = drifted_indexes(uses, can);
    if drifted.is_empty() {
        return Finding::pass(
            id,
            title(id),
            match uses.collated_indexes.len() {
                0 => "no index depends on a versioned collation".to_string(),
                1 => "1 index depends on a versioned collation, which did not change version"
                    .to_string(),
                n => format!("{n} indexes depend on versioned collations; none changed version"),
            },
        );
    }
    let bytes: i64 = drifted.iter().map(|(i, _)| i.bytes).sum();
    let objects: Vec<ObjectRef> = drifted
        .iter()
        .map(|(i, new)| {
            let built_under = match (&i.recorded_version, &i.old_version) {
                (Some(recorded), Some(old)) if recorded != old => {
                    format!("recorded {recorded}, old library {old}")
                }
                (_, Some(old)) => old.clone(),
                (Some(recorded), None) => format!("recorded {recorded}"),
                (None, None) => "unknown".into(),
            };
            ObjectRef {
                schema: Some(i.schema.clone()),
                database: Some(i.database.clone()),
                kind: "index".into(),
                name: format!(
                    "{} ({} collation {}{}: {built_under} -> {new}, {} bytes)",
                    i.index,
                    if i.provider == "i" { "ICU" } else { "libc" },
                    i.locale,
                    if i.collation.is_none() {
                        ", the database default"
                    } else {
                        ""
                    },
                    i.bytes
                ),
            }
        })
        .collect();
    let finding = if strict { Finding::fail } else { Finding::warn };
    finding(
        id,
        title(id),
        "collation_version_changed",
        format!(
            "{} indexes ({} bytes) are ordered by collations whose version differs in the new installation; they may return wrong results until rebuilt: {}",
            drifted.len(),
            bytes,
            describe_objects(&objects)
        ),
        "after the upgrade, rebuild them and record the new collation versions with the statements in reindex_after_upgrade.sql (written by the upgrade)",
    )
    .with_objects(objects)
}

/// 17 and later carry Unicode tables of their own (case mapping,
/// normalization, the builtin provider's classes): expressions computed
/// under the old tables may disagree with the new ones.
pub(crate) fn unicode_update(uses: &CapabilityUse, can: &Capabilities, strict: bool) -> Finding {
    let id = "new-unicode-version";
    let (Some(old), Some(new)) = (&uses.unicode_version, &can.unicode_version) else {
        return Finding::pass(
            id,
            title(id),
            "the old server predates the builtin Unicode provider (17): nothing to compare",
        );
    };
    if old == new {
        return Finding::pass(id, title(id), format!("Unicode {old} in both"));
    }
    if uses.unicode_dependent.is_empty() {
        return Finding::pass(
            id,
            title(id),
            format!("Unicode {old} -> {new}; no index, constraint, partition key or materialized view depends on it"),
        );
    }
    let finding = if strict { Finding::fail } else { Finding::warn };
    finding(
        id,
        title(id),
        "unicode_version_changed",
        format!(
            "the new installation carries Unicode {new} (the old one {old}); these depend on Unicode behaviour and may disagree with their stored results: {}",
            describe_objects(&uses.unicode_dependent)
        ),
        "after the upgrade, rebuild the indexes and refresh the materialized views (reindex_after_upgrade.sql does both), and check that rows still satisfy the listed constraints and partition keys",
    )
    .with_objects(uses.unicode_dependent.clone())
}

/// Logical slots carried into the new cluster need room and `wal_level = logical` there.
pub(crate) fn new_slot_settings(uses: &CapabilityUse, can: &Capabilities) -> Finding {
    let id = "new-logical-slots";
    let Some(settings) = can
        .slot_settings
        .as_ref()
        .filter(|_| uses.logical_slots > 0)
    else {
        return Finding::pass(
            id,
            title(id),
            "the old cluster has no logical slots to carry",
        );
    };
    let mut problems = Vec::new();
    if settings.logical_slots > 0 {
        problems.push((
            "new_cluster_has_logical_slots",
            format!(
                "the new cluster already has {} logical slots",
                settings.logical_slots
            ),
        ));
    }
    if settings.wal_level != "logical" {
        problems.push((
            "new_wal_level_not_logical",
            format!(
                "the new cluster's wal_level is {}, not logical",
                settings.wal_level
            ),
        ));
    }
    if settings.max_replication_slots < uses.logical_slots {
        problems.push((
            "too_few_replication_slots",
            format!(
                "the new cluster's max_replication_slots is {}, fewer than the old cluster's {} logical slots",
                settings.max_replication_slots, uses.logical_slots
            ),
        ));
    }
    let Some((code, _)) = problems.first() else {
        return Finding::pass(
            id,
            title(id),
            format!(
                "{} logical slots; wal_level = logical and room for them",
                uses.logical_slots
            ),
        );
    };
    Finding::fail(
        id,
        title(id),
        code,
        problems.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>().join("; "),
        format!(
            "in the new cluster's postgresql.conf set wal_level = logical and max_replication_slots = {} or more, and drop any logical slots it has (SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_type = 'logical')",
            uses.logical_slots
        ),
    )
}

/// The old cluster's physical slots are made again in the new one (for its
/// standbys, upgraded from their own files): slots need `wal_level` above
/// minimal and room beside the logical ones.
pub(crate) fn new_physical_slots(uses: &CapabilityUse, can: &Capabilities) -> Finding {
    let id = "new-physical-slots";
    let Some(settings) = can
        .slot_settings
        .as_ref()
        .filter(|_| uses.physical_slots > 0)
    else {
        return Finding::pass(id, title(id), "the old cluster has no physical slots");
    };
    let needed = uses.physical_slots + uses.logical_slots;
    if settings.wal_level == "minimal" {
        return Finding::fail(
            id,
            title(id),
            "new_wal_level_minimal",
            format!(
                "the old cluster has {} physical slots (its standbys'), and the new cluster's wal_level is minimal, which allows none",
                uses.physical_slots
            ),
            "in the new cluster's postgresql.conf set wal_level = replica (the default), or drop the old cluster's physical slots if no standby will follow the new primary",
        );
    }
    if settings.max_replication_slots < needed {
        return Finding::fail(
            id,
            title(id),
            "too_few_replication_slots",
            format!(
                "the new cluster's max_replication_slots is {}, fewer than the old cluster's {} slots",
                settings.max_replication_slots, needed
            ),
            format!("in the new cluster's postgresql.conf set max_replication_slots = {needed} or more"),
        );
    }
    Finding::pass(
        id,
        title(id),
        format!("{} physical slots; room for them", uses.physical_slots),
    )
}
