//! The catalogue of incompatibilities only the old catalog reveals: each
//! rule names the majors it concerns, the query that lists offending
//! objects in one database, why they matter, and the remedy. Rules about
//! what the new installation can do (ICU, lz4, libxml, extensions, shared
//! libraries) are judged once the new server has been asked.

use std::collections::BTreeMap;

use pgm_cluster::PgMajor;
use serde::Serialize;

/// An object a finding is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ObjectRef {
    /// The database it lives in (absent for cluster-wide objects).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// column, operator, aggregate, conversion, role, collation, extension, library, function …
    pub kind: String,
    /// The qualified name, quoted as SQL needs it.
    pub name: String,
    /// The schema it lives in, for schema objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

pub(crate) struct Rule {
    pub id: &'static str,
    pub title: &'static str,
    pub code: &'static str,
    /// Whether the rule concerns this old → new pair.
    pub applies: fn(PgMajor, PgMajor) -> bool,
    /// Lists (kind, name) of offending objects in the connected database.
    pub sql: fn() -> String,
    /// Cluster-wide objects: asked in one database only.
    pub global: bool,
    pub why: &'static str,
    pub remedy: &'static str,
}

/// Columns of user relations whose type is one of `types` (schema, name),
/// directly or through a domain, an array, a composite or a range.
pub fn columns_using(types: &[(&str, &str)]) -> String {
    let list = types
        .iter()
        .map(|(schema, name)| format!("(n.nspname = '{schema}' AND t.typname = '{name}')"))
        .collect::<Vec<_>>()
        .join(" OR ");
    format!(
        "WITH RECURSIVE oids AS (
             SELECT t.oid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE {list}
           UNION ALL
             -- One recursive reference only: the derived types of the last round.
             SELECT * FROM (
               WITH x AS (SELECT oid FROM oids)
                 SELECT t.oid FROM pg_catalog.pg_type t, x WHERE t.typtype = 'd' AND t.typbasetype = x.oid
               UNION ALL
                 SELECT t.oid FROM pg_catalog.pg_type t, x WHERE t.typtype = 'b' AND t.typelem = x.oid
               UNION ALL
                 SELECT t.oid FROM pg_catalog.pg_type t
                   JOIN pg_catalog.pg_class c ON c.oid = t.typrelid AND c.relkind = 'c'
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND NOT a.attisdropped
                   JOIN x ON a.atttypid = x.oid
               UNION ALL
                 SELECT r.rngtypid FROM pg_catalog.pg_range r, x WHERE r.rngsubtype = x.oid) derived)
         SELECT 'column', pg_catalog.format('%I.%I.%I', n.nspname, c.relname, a.attname), n.nspname::text
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
          WHERE a.atttypid IN (SELECT oid FROM oids) AND NOT a.attisdropped AND a.attnum > 0
            AND c.relkind IN ('r', 'm', 'p', 'i', 'I')
            AND n.nspname !~ '^pg_(toast_)?temp_' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          ORDER BY 2"
    )
}

fn reg_types() -> String {
    columns_using(&[
        ("pg_catalog", "regcollation"),
        ("pg_catalog", "regconfig"),
        ("pg_catalog", "regdictionary"),
        ("pg_catalog", "regnamespace"),
        ("pg_catalog", "regoper"),
        ("pg_catalog", "regoperator"),
        ("pg_catalog", "regproc"),
        ("pg_catalog", "regprocedure"),
    ])
}

/// Array functions whose signatures changed to anycompatible* in 14.
const OLD_POLYMORPHICS: &str =
    "ARRAY['array_append(anyarray,anyelement)', 'array_cat(anyarray,anyarray)',
    'array_prepend(anyelement,anyarray)', 'array_remove(anyarray,anyelement)',
    'array_replace(anyarray,anyelement,anyelement)', 'array_position(anyarray,anyelement)',
    'array_position(anyarray,anyelement,integer)', 'array_positions(anyarray,anyelement)',
    'width_bucket(anyelement,anyarray)']::pg_catalog.regprocedure[]";

pub(crate) const RULES: &[Rule] = &[
    Rule {
        id: "old-reg-types",
        title: "no columns of OID-referencing reg* types",
        code: "reg_type_columns",
        applies: |_, _| true,
        sql: reg_types,
        global: false,
        why: "values of these types store OIDs of functions, operators, namespaces or configurations, which the upgrade does not preserve",
        remedy: "change those columns to text (ALTER TABLE … ALTER COLUMN … TYPE text), or drop them, in the old cluster; regclass, regrole and regtype columns are fine",
    },
    Rule {
        id: "old-aclitem-columns",
        title: "no columns of type aclitem",
        code: "aclitem_columns",
        applies: |old, new| old.number() < 16 && new.number() >= 16,
        sql: || columns_using(&[("pg_catalog", "aclitem")]),
        global: false,
        why: "the storage format of aclitem changed in PostgreSQL 16",
        remedy: "drop those columns or change them to text (ALTER TABLE … ALTER COLUMN … TYPE text) in the old cluster",
    },
    Rule {
        id: "old-postfix-operators",
        title: "no postfix operators",
        code: "postfix_operators",
        applies: |old, new| old.number() <= 13 && new.number() >= 14,
        sql: || "SELECT 'operator', pg_catalog.format('%I.%s (%s, NONE)', n.nspname, o.oprname, o.oprleft::pg_catalog.regtype), n.nspname::text
                   FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
                  WHERE o.oprright = 0 AND o.oid >= 16384 ORDER BY 2".into(),
        global: false,
        why: "PostgreSQL 14 removed postfix operators",
        remedy: "drop them (DROP OPERATOR name (type, NONE)) in the old cluster and use a function or a prefix operator instead",
    },
    Rule {
        id: "old-polymorphic-functions",
        title: "no aggregates or operators on the old polymorphic array functions",
        code: "incompatible_polymorphics",
        applies: |old, new| old.number() <= 13 && new.number() >= 14,
        sql: || format!(
            "SELECT 'aggregate', p.oid::pg_catalog.regprocedure::text, p.pronamespace::pg_catalog.regnamespace::text
               FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_aggregate a ON a.aggfnoid = p.oid
              WHERE p.oid >= 16384
                AND (a.aggtransfn = ANY({OLD_POLYMORPHICS}) OR a.aggfinalfn = ANY({OLD_POLYMORPHICS}))
                AND a.aggtranstype = ANY(ARRAY['anyarray', 'anyelement']::pg_catalog.regtype[])
             UNION ALL
             SELECT 'operator', o.oid::pg_catalog.regoperator::text, o.oprnamespace::pg_catalog.regnamespace::text
               FROM pg_catalog.pg_operator o
              WHERE o.oid >= 16384 AND o.oprcode = ANY({OLD_POLYMORPHICS})
                AND o.oprleft = ANY(ARRAY['anyarray', 'anyelement']::pg_catalog.regtype[])
             ORDER BY 2"
        ),
        global: false,
        why: "PostgreSQL 14 changed these array functions to take anycompatible arguments; objects built on the old signatures cannot be restored",
        remedy: "drop them in the old cluster and re-create them after the upgrade with anycompatible/anycompatiblearray in place of anyelement/anyarray",
    },
    Rule {
        id: "old-encoding-conversions",
        title: "no user-defined encoding conversions",
        code: "user_encoding_conversions",
        applies: |old, new| old.number() <= 13 && new.number() >= 14,
        sql: || "SELECT 'conversion', pg_catalog.format('%I.%I', n.nspname, c.conname), n.nspname::text
                   FROM pg_catalog.pg_conversion c JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace
                  WHERE c.oid >= 16384 ORDER BY 2".into(),
        global: false,
        why: "PostgreSQL 14 changed the signature of encoding conversion functions",
        remedy: "drop them (DROP CONVERSION) in the old cluster and re-create them after the upgrade with functions of the new signature",
    },
    Rule {
        id: "old-not-null-inheritance",
        title: "NOT NULL agrees between inheritance parents and children",
        code: "inconsistent_not_null",
        applies: |old, new| old.number() < 18 && new.number() >= 18,
        sql: || "SELECT DISTINCT 'column', pg_catalog.format('%I.%I.%I', n.nspname, cc.relname, ac.attname), n.nspname::text
                   FROM pg_catalog.pg_inherits i
                   JOIN pg_catalog.pg_attribute ac ON ac.attrelid = i.inhrelid
                   JOIN pg_catalog.pg_attribute ap ON ap.attrelid = i.inhparent AND ap.attname = ac.attname
                   JOIN pg_catalog.pg_class cc ON cc.oid = ac.attrelid
                   JOIN pg_catalog.pg_namespace n ON n.oid = cc.relnamespace
                  WHERE ac.attnum > 0 AND ap.attnum > 0 AND ap.attnotnull AND NOT ac.attnotnull
                    AND NOT ac.attisdropped AND NOT ap.attisdropped ORDER BY 2".into(),
        global: false,
        why: "18 records NOT NULL as constraints that children inherit; a child column that is nullable under a NOT NULL parent column cannot be restored",
        remedy: "make the child columns NOT NULL in the old cluster: ALTER TABLE child ALTER COLUMN col SET NOT NULL",
    },
    Rule {
        id: "old-logical-slots",
        title: "no logical replication slots left behind",
        code: "logical_slots_not_carried",
        applies: |old, _| old.number() >= 17,
        sql: || "SELECT 'slot', pg_catalog.quote_ident(slot_name::text) FROM pg_catalog.pg_replication_slots
                  WHERE slot_type = 'logical' AND NOT temporary ORDER BY 2".into(),
        global: true,
        why: "this version of pg-migrate does not yet re-create logical replication slots in the new cluster; their subscribers would lose their place",
        remedy: "drop the slots before upgrading (SELECT pg_drop_replication_slot(name)) and re-create them, and re-sync their subscribers, afterwards; or use PostgreSQL's pg_upgrade for this cluster",
    },
    Rule {
        id: "old-subscription-states",
        title: "every subscribed table ready or still to be copied",
        code: "subscription_relation_state",
        applies: |old, _| old.number() >= 17,
        sql: || "SELECT 'subscription', pg_catalog.format('%I: table %s in state %s', s.subname, r.srrelid::pg_catalog.regclass, r.srsubstate)
                   FROM pg_catalog.pg_subscription_rel r JOIN pg_catalog.pg_subscription s ON s.oid = r.srsubid
                  WHERE r.srsubstate NOT IN ('i', 'r') ORDER BY 2".into(),
        global: false,
        why: "a table in the middle of its initial copy or catch-up cannot be carried: its synchronization state does not survive the upgrade",
        remedy: "let the subscriptions finish synchronizing (every table 'r' in pg_subscription_rel) or disable them before the initial copy starts, then upgrade",
    },
    Rule {
        id: "old-isn-float8",
        title: "contrib/isn only where float8 passing matches",
        code: "isn_float8_mismatch",
        // Judged against control data: see `float8_by_value_differs`.
        applies: |_, _| true,
        sql: || "SELECT 'function', p.oid::pg_catalog.regprocedure::text, p.pronamespace::pg_catalog.regnamespace::text FROM pg_catalog.pg_proc p
                  WHERE p.probin = '$libdir/isn' ORDER BY 2".into(),
        global: false,
        why: "the old and new installations pass float8 differently (by value or by reference), and contrib/isn's functions depend on it",
        remedy: "drop the isn extension (and what uses its types) in the old cluster, or use a new installation built like the old one",
    },
    Rule {
        id: "old-reserved-role-names",
        title: "no user roles named pg_*",
        code: "reserved_role_names",
        applies: |_, _| true,
        sql: || "SELECT 'role', pg_catalog.quote_ident(rolname) FROM pg_catalog.pg_roles
                  WHERE rolname ~ '^pg_' AND oid >= 16384 ORDER BY 2".into(),
        global: true,
        why: "role names starting with pg_ are reserved for the system; the new cluster refuses to create them",
        remedy: "rename them in the old cluster (ALTER ROLE … RENAME TO …)",
    },
];

/// Facts gathered per old database for the rules judged against the new installation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CapabilityUse {
    /// Columns, collations and databases that use ICU.
    pub icu: Vec<ObjectRef>,
    /// Columns set to lz4 compression (14 and later).
    pub lz4: Vec<ObjectRef>,
    /// Columns of type xml.
    pub xml: Vec<ObjectRef>,
    /// Installed extensions: (name, version) → databases.
    pub extensions: BTreeMap<(String, String), Vec<String>>,
    /// Shared libraries of C functions → the functions that need them.
    pub libraries: BTreeMap<String, Vec<ObjectRef>>,
    /// Indexes that depend on a versioned collation.
    pub collated_indexes: Vec<CollatedIndex>,
    /// Subscriptions (17 and later carry them; each needs a replication origin).
    pub subscriptions: i64,
}

/// An index whose order depends on a collation's library version.
#[derive(Debug, Clone, Serialize)]
pub struct CollatedIndex {
    pub database: String,
    pub index: String,
    pub bytes: i64,
    /// "c" (libc) or "i" (ICU).
    pub provider: String,
    pub locale: String,
    /// The collation library's version as the old installation reports it.
    pub old_version: String,
}

pub(crate) fn collated_indexes_sql(old: PgMajor) -> String {
    let icu = old.icu_collation_locale_column();
    format!(
        "SELECT DISTINCT pg_catalog.format('%I.%I', n.nspname, ic.relname), pg_catalog.pg_relation_size(ic.oid),
                c.collprovider::text,
                CASE WHEN c.collprovider = 'i' THEN c.{icu} ELSE c.collcollate END::text,
                pg_catalog.pg_collation_actual_version(c.oid)
           FROM pg_catalog.pg_index i
           JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace
           CROSS JOIN LATERAL pg_catalog.unnest(i.indcollation::pg_catalog.oid[]) AS u(coll)
           JOIN pg_catalog.pg_collation c ON c.oid = u.coll
          WHERE c.collprovider IN ('c', 'i')
            AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
            AND pg_catalog.pg_collation_actual_version(c.oid) IS NOT NULL
          ORDER BY 1"
    )
}

pub(crate) fn icu_sql(old: PgMajor) -> Option<String> {
    // ICU collations exist since 10; database-level ICU since 15.
    let columns = "SELECT 'column', pg_catalog.format('%I.%I.%I (collation %I)', n.nspname, c.relname, a.attname, co.collname), n.nspname::text
                     FROM pg_catalog.pg_attribute a
                     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                     JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
                    WHERE co.collprovider = 'i' AND NOT a.attisdropped AND a.attnum > 0
                      AND c.relkind IN ('r', 'm', 'p', 'i', 'I')
                      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                   UNION ALL
                   SELECT 'collation', pg_catalog.format('%I.%I', n.nspname, co.collname), n.nspname::text
                     FROM pg_catalog.pg_collation co JOIN pg_catalog.pg_namespace n ON n.oid = co.collnamespace
                    WHERE co.collprovider = 'i' AND co.oid >= 16384";
    let _ = old;
    Some(format!("{columns} ORDER BY 2"))
}

pub(crate) fn lz4_sql(old: PgMajor) -> Option<String> {
    (old.number() >= 14).then(|| {
        "SELECT 'column', pg_catalog.format('%I.%I.%I', n.nspname, c.relname, a.attname), n.nspname::text
           FROM pg_catalog.pg_attribute a
           JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE a.attcompression = 'l' AND NOT a.attisdropped
            AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 2"
            .into()
    })
}

pub(crate) fn xml_sql() -> String {
    columns_using(&[("pg_catalog", "xml")])
}

pub(crate) const EXTENSIONS_SQL: &str =
    "SELECT extname::text, extversion FROM pg_catalog.pg_extension ORDER BY 1";

/// Shared libraries of C-language functions (13 is the C language's OID).
pub(crate) const LIBRARIES_SQL: &str =
    "SELECT probin, p.oid::pg_catalog.regprocedure::text FROM pg_catalog.pg_proc p
      WHERE prolang = 13 AND probin IS NOT NULL AND p.oid >= 16384 ORDER BY 1, 2";

/// Whether a rule concerns the pair, as text for a passing finding.
pub(crate) fn not_applicable(old: PgMajor, new: PgMajor) -> String {
    format!("does not concern an upgrade from {old} to {new}")
}

/// The query of a catalogue rule, by id (for tests that prove a rule's query
/// on a real cluster where the rule itself cannot fire).
pub fn rule_sql(id: &str) -> Option<String> {
    RULES.iter().find(|r| r.id == id).map(|r| (r.sql)())
}
