//! Checks that need a server: the old one is started privately in
//! binary-upgrade mode (or, in a live check, inspected as it runs), the new
//! one likewise; one connection per database, `-j` databases at a time.
//! This file runs them and holds what they find; `inspect` is one side's
//! sequence, `gather` reads the old catalog, `capabilities` asks the new
//! installation, `compare` judges the one against the other.

use crate::rules::{CapabilityUse, ObjectRef};
use crate::{CheckConfig, Finding, Report, Which};
use serde::Serialize;

mod capabilities;
mod compare;
mod gather;
mod inspect;

pub use capabilities::*;
pub use compare::*;
pub(crate) use gather::*;
pub(crate) use inspect::*;

/// Every catalog check, so that all of them can be reported as skipped.
pub(crate) const CHECKS: [(&str, &str); 37] = [
    ("old-connect", "old server reachable"),
    ("old-install-user", "old cluster's install user"),
    ("old-databases", "old databases accept connections"),
    ("old-names", "names the dump tools can carry"),
    ("old-database-scan", "every old database inspected"),
    (
        "old-prepared-transactions",
        "no prepared transactions in the old cluster",
    ),
    ("old-reg-types", "no columns of OID-referencing reg* types"),
    (
        "old-system-composite-columns",
        "no columns of system-defined composite types",
    ),
    ("old-tables-with-oids", "no tables declared WITH OIDS"),
    (
        "old-sql-identifier-columns",
        "no columns of type information_schema.sql_identifier",
    ),
    (
        "old-removed-time-types",
        "nothing built on the removed types abstime, reltime, tinterval",
    ),
    ("old-aclitem-columns", "no columns of type aclitem"),
    ("old-postfix-operators", "no postfix operators"),
    (
        "old-polymorphic-functions",
        "no aggregates or operators on the old polymorphic array functions",
    ),
    (
        "old-encoding-conversions",
        "no user-defined encoding conversions",
    ),
    (
        "old-not-null-inheritance",
        "NOT NULL agrees between inheritance parents and children",
    ),
    (
        "old-logical-slots",
        "no logical replication slots left behind",
    ),
    (
        "old-logical-slots-usable",
        "every logical slot valid and caught up",
    ),
    (
        "old-subscription-states",
        "every subscribed table ready or still to be copied",
    ),
    (
        "old-subscription-origins",
        "every subscription has its replication origin",
    ),
    (
        "old-isn-float8",
        "contrib/isn only where float8 passing matches",
    ),
    ("old-reserved-role-names", "no user roles named pg_*"),
    ("new-connect", "new server reachable"),
    ("new-install-user", "new cluster's install user"),
    ("new-empty", "new cluster freshly initialized"),
    (
        "new-prepared-transactions",
        "no prepared transactions in the new cluster",
    ),
    ("template0-locale", "encoding and locale provider"),
    ("new-icu", "ICU, where the old cluster uses it"),
    ("new-lz4", "lz4, where the old cluster uses it"),
    ("new-xml", "libxml, where the restore must parse xml values"),
    (
        "new-extensions",
        "every installed extension available in the new installation",
    ),
    (
        "new-libraries",
        "every shared library the old cluster needs loads in the new installation",
    ),
    (
        "new-collation-versions",
        "collation library versions unchanged for indexes",
    ),
    (
        "new-unicode-version",
        "no expressions that depend on a changed Unicode version",
    ),
    (
        "new-replication-origins",
        "replication origins for every subscription",
    ),
    (
        "new-logical-slots",
        "the new cluster can take the old cluster's logical slots",
    ),
    (
        "new-physical-slots",
        "the new cluster can keep its standbys' physical slots",
    ),
];

pub(crate) fn title(id: &str) -> &'static str {
    CHECKS
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, t)| *t)
        .unwrap_or("catalog check")
}

/// What the catalog of one cluster says.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogFacts {
    /// The bootstrap superuser (OID 10).
    pub install_user: String,
    pub connected_as: String,
    pub databases: Vec<DatabaseInfo>,
    pub template0: TemplateLocale,
    /// Whether the server was built with ICU (initdb imports ICU collations).
    pub icu_available: bool,
    /// Roles other than the predefined `pg_*` ones.
    pub roles: Vec<String>,
    /// Databases, roles and tablespaces whose names hold a newline or
    /// carriage return (pg_dumpall refuses them).
    pub names_with_newlines: Vec<String>,
    /// Old cluster: offending objects per catalogue rule.
    pub rule_hits: Vec<(&'static str, ObjectRef)>,
    /// Old cluster: what it uses that the new installation must provide.
    pub uses: CapabilityUse,
    /// New cluster: what its installation can do.
    pub can: Capabilities,
    /// Prepared transactions, each as "'gid' (database d, owner o, prepared at t)".
    pub prepared_transactions: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseInfo {
    pub oid: u32,
    pub name: String,
    pub allow_connections: bool,
    pub connection_limit: i32,
    /// Objects with user OIDs (relations, functions, types, schemas,
    /// extensions); `None` when the database was not scanned.
    pub user_objects: Option<i64>,
    pub user_relations: Option<i64>,
    /// User tables (ordinary and partitioned): what pg_dump locks, one each.
    pub user_tables: Option<i64>,
    /// User sequences: pg_dump locks each too when it reads its value
    /// (`--sequence-data`, as an upgrade in one go dumps them).
    pub user_sequences: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateLocale {
    pub encoding: String,
    /// "libc", "icu" or "builtin".
    pub provider: String,
    pub collate: String,
    pub ctype: String,
    /// The ICU or builtin locale, where the provider uses one.
    pub locale: Option<String>,
}

pub(crate) type Emit<'a> = dyn FnMut(&mut Report, Finding) + 'a;

/// Inspects both clusters; returns the old server when the checks started
/// it and `keep_old_server` asks to keep it running.
pub(crate) fn run(
    config: &CheckConfig,
    report: &mut Report,
    emit: &mut Emit<'_>,
) -> Option<pgm_cluster::Server> {
    let mut kept = None;
    let Some(old) = inspect(Which::Old, config, report, emit, &mut kept) else {
        skip_from(
            CHECKS
                .iter()
                .position(|(id, _)| *id == "new-connect")
                .unwrap(),
            report,
            emit,
        );
        return kept;
    };
    report.old.catalog = Some(old);
    if report.new_to_create {
        for (id, title) in &CHECKS[CHECKS
            .iter()
            .position(|(id, _)| *id == "new-connect")
            .unwrap()..]
        {
            emit(
                report,
                Finding::skip(
                    id,
                    title,
                    "the new cluster does not exist yet: checked once pg-migrate has created it",
                ),
            );
        }
        return kept;
    }
    run_new(config, report, emit);
    kept
}

/// The new cluster's catalog checks and the locale comparison.
pub(crate) fn run_new(config: &CheckConfig, report: &mut Report, emit: &mut Emit<'_>) {
    // Only the old server is ever kept.
    let Some(new) = inspect(Which::New, config, report, emit, &mut None) else {
        skip_from(CHECKS.len() - 1, report, emit);
        return;
    };
    report.new.catalog = Some(new);
    let finding = compare_locales(report);
    emit(report, finding);
    for finding in compare_capabilities(report) {
        emit(report, finding);
    }
}

pub(crate) fn skip_from(index: usize, report: &mut Report, emit: &mut Emit<'_>) {
    let index = if index == CHECKS.len() - 1 {
        CHECKS
            .iter()
            .position(|(id, _)| *id == "template0-locale")
            .unwrap()
    } else {
        index
    };
    for (id, title) in &CHECKS[index..] {
        emit(
            report,
            Finding::skip(id, title, "not run: an earlier catalog check failed"),
        );
    }
}

pub(crate) fn ids(which: Which) -> [&'static str; 5] {
    match which {
        Which::Old => [
            "old-connect",
            "old-install-user",
            "old-databases",
            "old-database-scan",
            "old-prepared-transactions",
        ],
        Which::New => [
            "new-connect",
            "new-install-user",
            "new-empty",
            "new-empty",
            "new-prepared-transactions",
        ],
    }
}

pub(crate) use pgm_cluster::sql::{quote_ident, quote_literal};

pub(crate) fn quote_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| quote_ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn describe_objects(objects: &[ObjectRef]) -> String {
    let mut shown: Vec<String> = objects
        .iter()
        .take(10)
        .map(|o| match &o.database {
            Some(db) => format!("{} {} in database {}", o.kind, o.name, quote_ident(db)),
            None => format!("{} {}", o.kind, o.name),
        })
        .collect();
    if objects.len() > 10 {
        shown.push(format!(
            "and {} more (see the objects list)",
            objects.len() - 10
        ));
    }
    shown.join("; ")
}

#[cfg(test)]
mod tests {
    use super::CHECKS;

    /// Every rule is in the list reported as skipped, under its own title,
    /// so that a run whose early checks fail still lists every check.
    #[test]
    fn every_rule_can_be_reported_as_skipped() {
        for rule in crate::rules::RULES {
            assert!(
                CHECKS.contains(&(rule.id, rule.title)),
                "{} ({}) is missing from CHECKS",
                rule.id,
                rule.title
            );
        }
    }
}
