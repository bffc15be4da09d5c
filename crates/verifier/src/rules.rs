//! The catalogue of incompatibilities only the old catalog reveals: each
//! rule names the majors it concerns, the query that lists offending
//! objects in one database, why they matter, and the remedy. Rules about
//! what the new installation can do (ICU, lz4, libxml, extensions, shared
//! libraries) are judged once the new server has been asked.

use std::collections::BTreeMap;

use pgm_cluster::PgMajor;
use serde::Serialize;

/// An object a finding is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
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

/// How the old server is being inspected: some questions can only be asked
/// of a server pg-migrate started privately in binary-upgrade mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanMode {
    /// Started by pg-migrate with `-b`.
    Private,
    /// A running server, inspected as it serves (`check` only).
    Live,
}

pub(crate) struct Rule {
    pub id: &'static str,
    pub title: &'static str,
    pub code: &'static str,
    /// Whether the rule concerns this old → new pair.
    pub applies: fn(PgMajor, PgMajor) -> bool,
    /// Lists (kind, name[, schema]) of offending objects in the connected database.
    pub sql: fn(ScanMode, PgMajor) -> String,
    /// Cluster-wide objects: asked in one database only.
    pub global: bool,
    pub why: &'static str,
    pub remedy: &'static str,
}

/// The CTE `oids`: the types of `types` (schema, name) and every type
/// derived from them (domains, arrays, composites, ranges).
fn derived_types(types: &[(&str, &str)], old: PgMajor) -> String {
    let list = types
        .iter()
        .map(|(schema, name)| format!("(n.nspname = '{schema}' AND t.typname = '{name}')"))
        .collect::<Vec<_>>()
        .join(" OR ");
    derived_types_where(&list, old)
}

/// The CTE `oids`: the types matching `list` (over pg_type t and its
/// pg_namespace n) and every type derived from them: domains, arrays,
/// ranges, and the row type of any relation with a column of one (a
/// table's or a view's row type is a composite type as much as a
/// standalone one is).
///
/// Which row type has a column of which type (`contains`) is read from
/// pg_attribute once, not in every round of the recursion: at 100,000
/// relations each read takes a tenth of a second. Only columns whose type
/// could be in `oids` are kept (one of `list`, or a type that derives from
/// another: a domain, composite, range or a type with elements), which
/// leaves out the ordinary columns of every table.
fn derived_types_where(list: &str, old: PgMajor) -> String {
    // From 12 on, a WITH query used once is folded into the query using
    // it, here the recursion's every round, unless it is MATERIALIZED (a
    // word 10 and 11 do not know, and do not need: they never fold).
    let materialized = if old.number() >= 12 {
        "MATERIALIZED "
    } else {
        ""
    };
    format!(
        "WITH RECURSIVE
           base AS (
             SELECT t.oid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE {list}),
           contains AS {materialized}(
             SELECT a.atttypid AS member, t.oid AS composite
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_type t ON t.typrelid = a.attrelid
               JOIN pg_catalog.pg_type m ON m.oid = a.atttypid
              WHERE NOT a.attisdropped
                AND (m.typtype IN ('d', 'c', 'r') OR m.typelem <> 0 OR m.oid IN (SELECT oid FROM base))),
           oids AS (
             SELECT oid FROM base
           UNION ALL
             -- One recursive reference only: the derived types of the last round.
             SELECT * FROM (
               WITH x AS (SELECT oid FROM oids)
                 SELECT t.oid FROM pg_catalog.pg_type t, x WHERE t.typtype = 'd' AND t.typbasetype = x.oid
               UNION ALL
                 SELECT t.oid FROM pg_catalog.pg_type t, x WHERE t.typtype = 'b' AND t.typelem = x.oid
               UNION ALL
                 SELECT k.composite FROM contains k, x WHERE k.member = x.oid
               UNION ALL
                 SELECT r.rngtypid FROM pg_catalog.pg_range r, x WHERE r.rngsubtype = x.oid) derived)"
    )
}

/// Columns of relations of `relkinds` whose type is in the CTE `oids`.
/// The columns are found first, on their own (OFFSET 0 keeps the planner
/// from merging that step into the joins): it cannot tell how few the
/// types are and would otherwise join every column to its relation before
/// looking at the type.
fn columns_of(relkinds: &str) -> String {
    format!(
        "SELECT 'column', pg_catalog.format('%I.%I.%I', n.nspname, c.relname, a.attname), n.nspname::text
           FROM (SELECT a.attrelid, a.attname FROM pg_catalog.pg_attribute a
                  WHERE a.atttypid IN (SELECT oid FROM oids) AND NOT a.attisdropped AND a.attnum > 0
                 OFFSET 0) a
           JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ({relkinds})
            AND n.nspname !~ '^pg_(toast_)?temp_' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
    )
}

/// Columns of user relations whose type is one of `types` (schema, name),
/// directly or through a domain, an array, a composite or a range.
pub fn columns_using(types: &[(&str, &str)], old: PgMajor) -> String {
    format!(
        "{} {} ORDER BY 2",
        derived_types(types, old),
        columns_of("'r', 'm', 'p', 'i', 'I'")
    )
}

/// Everything of the user's the restore would have to create with one of
/// `types` (which the new major no longer has): columns of every kind of
/// relation (views and composite types too), domains and ranges built on
/// them, and functions that take or return them.
pub fn objects_using(types: &[(&str, &str)], old: PgMajor) -> String {
    format!(
        "{} {}
         UNION ALL
         SELECT 'type', pg_catalog.format('%I.%I', n.nspname, t.typname), n.nspname::text
           FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
          WHERE t.oid IN (SELECT oid FROM oids) AND t.oid >= 16384 AND t.typtype IN ('d', 'r')
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                             WHERE d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
                               AND d.objid = t.oid AND d.deptype = 'e')
         UNION ALL
         SELECT 'function', p.oid::pg_catalog.regprocedure::text, n.nspname::text
           FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
          WHERE p.oid >= 16384
            -- An extension's own functions are made again by its script, not restored.
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                             WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                               AND d.objid = p.oid AND d.deptype = 'e')
            AND (p.prorettype IN (SELECT oid FROM oids)
                 OR EXISTS (SELECT 1 FROM pg_catalog.unnest(coalesce(p.proallargtypes, p.proargtypes::pg_catalog.oid[])) arg
                             WHERE arg IN (SELECT oid FROM oids)))
         ORDER BY 2",
        derived_types(types, old),
        columns_of("'r', 'm', 'p', 'i', 'I', 'v', 'c', 'f'")
    )
}

fn reg_types(old: PgMajor) -> String {
    columns_using(
        &[
            ("pg_catalog", "regcollation"),
            ("pg_catalog", "regconfig"),
            ("pg_catalog", "regdictionary"),
            ("pg_catalog", "regnamespace"),
            ("pg_catalog", "regoper"),
            ("pg_catalog", "regoperator"),
            ("pg_catalog", "regproc"),
            ("pg_catalog", "regprocedure"),
        ],
        old,
    )
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
        sql: |_, old| reg_types(old),
        global: false,
        why: "values of these types store OIDs of functions, operators, namespaces or configurations, which the upgrade does not preserve",
        remedy: "change those columns to text (ALTER TABLE … ALTER COLUMN … TYPE text), or drop them, in the old cluster; regclass, regrole and regtype columns are fine",
    },
    Rule {
        id: "old-system-composite-columns",
        title: "no columns of system-defined composite types",
        code: "system_composite_columns",
        applies: |_, _| true,
        sql: |_, old| {
            format!(
                "{} {} ORDER BY 2",
                derived_types_where(
                    "t.typtype = 'c' AND (t.oid < 16384 OR n.nspname = 'information_schema')",
                    old
                ),
                columns_of("'r', 'm', 'p', 'i', 'I'")
            )
        },
        global: false,
        why: "a stored composite value names its type's OID, and the row types of the system catalogs and of information_schema's views get other OIDs in the new major",
        remedy: "drop those columns, or change them to text or to a composite type of your own, in the old cluster",
    },
    Rule {
        id: "old-tables-with-oids",
        title: "no tables declared WITH OIDS",
        code: "tables_with_oids",
        // relhasoids is gone from 12 on, with the feature.
        applies: |old, _| old.number() <= 11,
        sql: |_, _| "SELECT 'table', pg_catalog.format('%I.%I', n.nspname, c.relname), n.nspname::text
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relhasoids AND n.nspname <> 'pg_catalog' ORDER BY 2".into(),
        global: false,
        why: "PostgreSQL 12 removed WITH OIDS: a table's hidden oid column cannot be carried",
        remedy: "ALTER TABLE … SET WITHOUT OIDS in the old cluster (its oid values are dropped: copy them into an ordinary column first if anything reads them)",
    },
    Rule {
        id: "old-sql-identifier-columns",
        title: "no columns of type information_schema.sql_identifier",
        code: "sql_identifier_columns",
        applies: |old, _| old.number() <= 11,
        sql: |_, old| columns_using(&[("information_schema", "sql_identifier")], old),
        global: false,
        why: "the storage format of sql_identifier changed in PostgreSQL 12: the new server would misread the values",
        remedy: "change those columns to text (ALTER TABLE … ALTER COLUMN … TYPE text), or drop them, in the old cluster",
    },
    Rule {
        id: "old-removed-time-types",
        title: "nothing built on the removed types abstime, reltime, tinterval",
        code: "removed_type_columns",
        applies: |old, _| old.number() <= 11,
        sql: |_, old| {
            objects_using(
                &[
                    ("pg_catalog", "abstime"),
                    ("pg_catalog", "reltime"),
                    ("pg_catalog", "tinterval"),
                ],
                old,
            )
        },
        global: false,
        why: "PostgreSQL 12 removed these types: no column, domain or function built on them can be restored",
        remedy: "in the old cluster, change the columns (ALTER TABLE … ALTER COLUMN … TYPE timestamptz for abstime, interval for reltime) or drop them (tinterval has no successor), then drop or redefine the domains, views and functions built on these types",
    },
    Rule {
        id: "old-aclitem-columns",
        title: "no columns of type aclitem",
        code: "aclitem_columns",
        applies: |old, new| old.number() < 16 && new.number() >= 16,
        sql: |_, old| columns_using(&[("pg_catalog", "aclitem")], old),
        global: false,
        why: "the storage format of aclitem changed in PostgreSQL 16",
        remedy: "drop those columns or change them to text (ALTER TABLE … ALTER COLUMN … TYPE text) in the old cluster",
    },
    Rule {
        id: "old-postfix-operators",
        title: "no postfix operators",
        code: "postfix_operators",
        applies: |old, new| old.number() <= 13 && new.number() >= 14,
        sql: |_, _| "SELECT 'operator', pg_catalog.format('%I.%s (%s, NONE)', n.nspname, o.oprname, o.oprleft::pg_catalog.regtype), n.nspname::text
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
        sql: |_, _| format!(
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
        sql: |_, _| "SELECT 'conversion', pg_catalog.format('%I.%I', n.nspname, c.conname), n.nspname::text
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
        sql: |_, _| "SELECT DISTINCT 'column', pg_catalog.format('%I.%I.%I', n.nspname, cc.relname, ac.attname), n.nspname::text
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
        // 17 and later save a slot's position at shutdown: those are carried.
        applies: |old, _| old.number() < 17,
        sql: |_, _| "SELECT 'slot', pg_catalog.quote_ident(slot_name::text) FROM pg_catalog.pg_replication_slots
                  WHERE slot_type = 'logical' AND NOT temporary ORDER BY 2".into(),
        global: true,
        why: "before PostgreSQL 17 a slot's position is not saved at shutdown, so its slots cannot be carried (pg_upgrade drops them silently); their subscribers would lose their place",
        remedy: "drop the slots before upgrading (SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_type = 'logical'), and afterwards re-create them and re-sync their subscribers",
    },
    Rule {
        id: "old-logical-slots-usable",
        title: "every logical slot valid and caught up",
        code: "logical_slot_unusable",
        applies: |old, _| old.number() >= 17,
        sql: logical_slots_unusable,
        // The caught-up question decodes the slot's WAL, which only works
        // in the slot's own database.
        global: false,
        why: "a slot that was invalidated, or whose consumer has not yet received all WAL before the shutdown, cannot be carried: the changes it still owes would be lost",
        remedy: "drop invalid slots (SELECT pg_drop_replication_slot(name)); let the consumers of the others catch up (or advance them with pg_replication_slot_advance), then stop the old server cleanly and check again",
    },
    Rule {
        id: "old-subscription-states",
        title: "every subscribed table ready or still to be copied",
        code: "subscription_relation_state",
        applies: |old, _| old.number() >= 17,
        sql: |_, _| "SELECT 'subscription', pg_catalog.format('%I: table %s in state %s', s.subname, r.srrelid::pg_catalog.regclass, r.srsubstate)
                   FROM pg_catalog.pg_subscription_rel r JOIN pg_catalog.pg_subscription s ON s.oid = r.srsubid
                  WHERE r.srsubstate NOT IN ('i', 'r') ORDER BY 2".into(),
        global: false,
        why: "a table in the middle of its initial copy or catch-up cannot be carried: its synchronization state does not survive the upgrade",
        remedy: "let the subscriptions finish synchronizing (every table 'r' in pg_subscription_rel) or disable them before the initial copy starts, then upgrade",
    },
    Rule {
        id: "old-subscription-origins",
        title: "every subscription has its replication origin",
        code: "subscription_without_origin",
        applies: |old, _| old.number() >= 17,
        sql: |_, _| "SELECT 'subscription', pg_catalog.format('%I (database %I)', s.subname, d.datname)
                   FROM pg_catalog.pg_subscription s
                   JOIN pg_catalog.pg_database d ON d.oid = s.subdbid
                  WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_origin o
                                     WHERE o.roname = 'pg_' || s.oid::text)
                  ORDER BY 2".into(),
        global: true,
        why: "a subscription's replication origin records how far it has applied; without it the new cluster cannot know where to resume",
        remedy: "re-create the subscription in the old cluster (DROP SUBSCRIPTION, then CREATE SUBSCRIPTION … WITH (copy_data = false) if its tables are current), or drop it",
    },
    Rule {
        id: "old-isn-float8",
        title: "contrib/isn only where float8 passing matches",
        code: "isn_float8_mismatch",
        // Judged against control data: see `float8_by_value_differs`.
        applies: |_, _| true,
        sql: |_, _| "SELECT 'function', p.oid::pg_catalog.regprocedure::text, p.pronamespace::pg_catalog.regnamespace::text FROM pg_catalog.pg_proc p
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
        sql: |_, _| "SELECT 'role', pg_catalog.quote_ident(rolname) FROM pg_catalog.pg_roles
                  WHERE rolname ~ '^pg_' AND oid >= 16384 ORDER BY 2".into(),
        global: true,
        why: "role names starting with pg_ are reserved for the system; the new cluster refuses to create them",
        remedy: "rename them in the old cluster (ALTER ROLE … RENAME TO …)",
    },
];

/// Logical slots of the connected database that cannot be carried: invalid
/// ones, and (privately started servers only: the question needs
/// binary-upgrade mode, and a live server is still producing WAL) those that
/// have not consumed all WAL.
fn logical_slots_unusable(mode: ScanMode, _old: PgMajor) -> String {
    let behind = match mode {
        ScanMode::Private => "NOT pg_catalog.binary_upgrade_logical_slot_has_caught_up(slot_name)",
        ScanMode::Live => "false",
    };
    // CASE, not OR: the caught-up question must never reach an invalid slot.
    format!(
        "SELECT 'slot', pg_catalog.format('%s (%s)', pg_catalog.quote_ident(slot_name::text), problem)
           FROM (SELECT slot_name,
                        CASE WHEN invalidation_reason IS NOT NULL THEN 'invalidated: ' || invalidation_reason
                             WHEN conflicting THEN 'invalidated: conflicting'
                             WHEN {behind} THEN 'has not consumed all WAL'
                        END AS problem
                   FROM pg_catalog.pg_replication_slots
                  WHERE slot_type = 'logical' AND NOT temporary
                    AND database = pg_catalog.current_database()) s
          WHERE problem IS NOT NULL ORDER BY 2"
    )
}

/// Facts gathered per old database for the rules judged against the new installation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CapabilityUse {
    /// Columns, collations and databases that use ICU.
    pub icu: Vec<ObjectRef>,
    /// Columns set to lz4 compression (14 and later).
    pub lz4: Vec<ObjectRef>,
    /// Columns of type xml.
    pub xml: Vec<ObjectRef>,
    /// Expressions the restore parses that hold an xml value (a default,
    /// a constraint, a view, an index, a policy …): parsing it needs libxml.
    pub xml_literals: Vec<ObjectRef>,
    /// Installed extensions: (name, version) → databases.
    pub extensions: BTreeMap<(String, String), Vec<String>>,
    /// Shared libraries of C functions → the functions that need them.
    pub libraries: BTreeMap<String, Vec<ObjectRef>>,
    /// Indexes that depend on a versioned collation.
    pub collated_indexes: Vec<CollatedIndex>,
    /// Subscriptions (17 and later carry them; each needs a replication origin).
    pub subscriptions: i64,
    /// Logical replication slots (17 and later).
    pub logical_slots: i64,
    /// Physical replication slots (its standbys').
    pub physical_slots: i64,
    /// `unicode_version()` of the old server (17 and later).
    pub unicode_version: Option<String>,
    /// Relations whose contents depend on that Unicode version.
    pub unicode_dependent: Vec<ObjectRef>,
}

/// An index whose order depends on a collation's library version.
#[derive(Debug, Clone, Serialize)]
pub struct CollatedIndex {
    pub database: String,
    pub schema: String,
    /// Qualified and quoted.
    pub index: String,
    pub bytes: i64,
    /// "c" (libc) or "i" (ICU).
    pub provider: String,
    pub locale: String,
    /// The collation library's version as the old installation reports it.
    pub old_version: Option<String>,
    /// The version the catalog recorded when the collation (or, for the
    /// database default, the database) was created or last refreshed: the
    /// one the index was most likely built under.
    pub recorded_version: Option<String>,
    /// The collation's qualified name; `None` for the database's default.
    pub collation: Option<String>,
}

impl CollatedIndex {
    /// Whether `new_version` differs from a version the index may have been
    /// built under.
    pub fn drifts_to(&self, new_version: &str) -> bool {
        [&self.old_version, &self.recorded_version]
            .into_iter()
            .flatten()
            .any(|v| v != new_version)
    }
}

/// Indexes of the connected database ordered by a versioned libc or ICU
/// collation, explicit or the database default (15 and later record the
/// default's version).
pub(crate) fn collated_indexes_sql(old: PgMajor) -> String {
    let icu = old.icu_collation_locale_column();
    let default_collation = match old.datlocale_column() {
        Some(datlocale) => format!(
            "UNION ALL
             SELECT 100, d.datlocprovider::text,
                    CASE WHEN d.datlocprovider = 'i' THEN d.{datlocale} ELSE d.datcollate END::text,
                    pg_catalog.pg_database_collation_actual_version(d.oid), d.datcollversion, NULL
               FROM pg_catalog.pg_database d
              WHERE d.datname = pg_catalog.current_database() AND d.datlocprovider IN ('c', 'i')"
        ),
        None => String::new(),
    };
    format!(
        "WITH versioned (oid, provider, locale, actual, recorded, name) AS (
             SELECT c.oid, c.collprovider::text,
                    CASE WHEN c.collprovider = 'i' THEN c.{icu} ELSE c.collcollate END::text,
                    pg_catalog.pg_collation_actual_version(c.oid), c.collversion,
                    pg_catalog.format('%I.%I', cn.nspname, c.collname)
               FROM pg_catalog.pg_collation c JOIN pg_catalog.pg_namespace cn ON cn.oid = c.collnamespace
              WHERE c.collprovider IN ('c', 'i')
             {default_collation})
         SELECT DISTINCT pg_catalog.format('%I.%I', n.nspname, ic.relname), pg_catalog.pg_relation_size(ic.oid),
                v.provider, v.locale, v.actual, v.recorded, v.name, n.nspname::text
           FROM pg_catalog.pg_index i
           JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace
           CROSS JOIN LATERAL pg_catalog.unnest(i.indcollation::pg_catalog.oid[]) AS u(coll)
           JOIN versioned v ON v.oid = u.coll
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
            AND (v.actual IS NOT NULL OR v.recorded IS NOT NULL)
          ORDER BY 1"
    )
}

/// Objects of the connected database (17 and later) whose contents depend
/// on the Unicode tables built into PostgreSQL: expressions in indexes,
/// table and domain constraints, partition keys, stored generated columns
/// and materialized views that call the
/// Unicode functions, or case mapping and case-insensitive matching under a
/// builtin Unicode collation. A new major with other Unicode tables may
/// order, match or normalize them differently.
pub(crate) const UNICODE_DEPENDENT_SQL: &str = r"
WITH unicode_collations (oid) AS (
    SELECT oid FROM pg_catalog.pg_collation
     WHERE collprovider = 'b' AND colllocale IN ('C.UTF-8', 'PG_UNICODE_FAST')
    UNION
    SELECT 100 FROM pg_catalog.pg_database
     WHERE datname = pg_catalog.current_database() AND datlocprovider = 'b'
       AND datlocale IN ('C.UTF-8', 'PG_UNICODE_FAST')),
unicode_functions (oid) AS (
    SELECT oid FROM pg_catalog.pg_proc
     WHERE pronamespace = 'pg_catalog'::pg_catalog.regnamespace
       AND proname IN ('normalize', 'is_normalized', 'unicode_assigned', 'unicode_version')),
case_operators (oid, code) AS (
    SELECT oid, oprcode FROM pg_catalog.pg_operator
     WHERE oprnamespace = 'pg_catalog'::pg_catalog.regnamespace
       AND oprname IN ('~', '~*', '!~', '!~*', '~~*', '!~~*') AND oprright = 'text'::pg_catalog.regtype),
case_functions (oid) AS (
    SELECT oid FROM pg_catalog.pg_proc
     WHERE pronamespace = 'pg_catalog'::pg_catalog.regnamespace
       AND proname IN ('lower', 'upper', 'initcap') AND proargtypes[0] = 'text'::pg_catalog.regtype
    UNION SELECT code FROM case_operators),
patterns (p) AS (
    SELECT '\{FUNCEXPR :funcid ' || f.oid || '[ }]' FROM unicode_functions f
    UNION
    SELECT '\{(OPEXPR|SCALARARRAYOPEXPR) :opno ' || o.oid || ' (:\w+ \w+ )*:inputcollid ' || c.oid || '[ }]'
      FROM case_operators o, unicode_collations c
    UNION
    SELECT '\{FUNCEXPR :funcid ' || f.oid || ' (:\w+ \w+ )*:inputcollid ' || c.oid || '[ }]'
      FROM case_functions f, unicode_collations c),
dependent (relid, kind, detail) AS (
    SELECT conrelid, 'constraint', conname::text FROM pg_catalog.pg_constraint, patterns
     WHERE conrelid <> 0 AND conbin::text ~ p
    UNION
    SELECT a.attrelid, 'generated column', a.attname::text
      FROM pg_catalog.pg_attrdef d
      JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum, patterns
     WHERE a.attgenerated = 's' AND d.adbin::text ~ p
    UNION
    SELECT indexrelid, 'index', NULL FROM pg_catalog.pg_index, patterns
     WHERE indexprs::text ~ p OR indpred::text ~ p
    UNION
    SELECT partrelid, 'partitioned table', NULL FROM pg_catalog.pg_partitioned_table, patterns
     WHERE partexprs::text ~ p
    UNION
    SELECT r.ev_class, 'materialized view', NULL
      FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class, patterns
     WHERE c.relkind = 'm' AND r.ev_action::text ~ p),
found (kind, name, schema) AS (
    SELECT d.kind,
           pg_catalog.format('%I.%I', n.nspname, c.relname)
             || CASE WHEN d.detail IS NULL THEN '' ELSE pg_catalog.format(' (%I)', d.detail) END,
           n.nspname::text
      FROM dependent d
      JOIN pg_catalog.pg_class c ON c.oid = d.relid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    UNION
    SELECT 'domain constraint', pg_catalog.format('%I.%I (%I)', n.nspname, t.typname, k.conname), n.nspname::text
      FROM pg_catalog.pg_constraint k
      JOIN pg_catalog.pg_type t ON t.oid = k.contypid
      JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace, patterns
     WHERE k.contypid <> 0 AND k.conbin::text ~ p)
SELECT kind, name, schema FROM found
 WHERE (SELECT encoding FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
       = pg_catalog.pg_char_to_encoding('UTF8')
 ORDER BY 2, 1";

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
    old.has_toast_compression().then(|| {
        "SELECT 'column', pg_catalog.format('%I.%I.%I', n.nspname, c.relname, a.attname), n.nspname::text
           FROM pg_catalog.pg_attribute a
           JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE a.attcompression = 'l' AND NOT a.attisdropped
            AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 2"
            .into()
    })
}

pub(crate) fn xml_sql(old: PgMajor) -> String {
    columns_using(&[("pg_catalog", "xml")], old)
}

/// The expressions a binary-upgrade restore parses again that hold a
/// non-null constant of type xml or xml[] (OIDs 142 and 143): the parser
/// turns such a literal into a value with the type's input function, which
/// without libxml fails ("unsupported XML feature"). Values stored in
/// tables are carried as files and never parsed.
pub(crate) fn xml_literals_sql(old: PgMajor) -> String {
    let mut parts = vec![
        "SELECT 'column', pg_catalog.format('%I.%I.%I (default)', n.nspname, c.relname, a.attname), n.nspname::text
           FROM pg_catalog.pg_attrdef d
           JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
           JOIN pg_catalog.pg_class c ON c.oid = d.adrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace, x
          WHERE d.adbin::text ~ x.p".to_string(),
        "SELECT 'constraint', pg_catalog.format('%I.%I', n.nspname, k.conname)
                || CASE WHEN k.conrelid <> 0 THEN pg_catalog.format(' on %s', k.conrelid::pg_catalog.regclass)
                        ELSE pg_catalog.format(' on domain %s', k.contypid::pg_catalog.regtype) END,
                n.nspname::text
           FROM pg_catalog.pg_constraint k
           JOIN pg_catalog.pg_namespace n ON n.oid = k.connamespace, x
          WHERE k.conbin::text ~ x.p".to_string(),
        "SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' ELSE 'rule' END,
                pg_catalog.format('%I.%I', n.nspname, c.relname)
                || CASE WHEN r.rulename = '_RETURN' THEN '' ELSE pg_catalog.format(' (rule %I)', r.rulename) END,
                n.nspname::text
           FROM pg_catalog.pg_rewrite r
           JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace, x
          WHERE r.oid >= 16384 AND (r.ev_action::text ~ x.p OR r.ev_qual::text ~ x.p)".to_string(),
        "SELECT 'index', pg_catalog.format('%I.%I', n.nspname, c.relname), n.nspname::text
           FROM pg_catalog.pg_index i
           JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace, x
          WHERE i.indexrelid >= 16384 AND (i.indexprs::text ~ x.p OR i.indpred::text ~ x.p)".to_string(),
        "SELECT 'domain', pg_catalog.format('%I.%I (default)', n.nspname, t.typname), n.nspname::text
           FROM pg_catalog.pg_type t
           JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace, x
          WHERE t.oid >= 16384 AND t.typdefaultbin::text ~ x.p".to_string(),
        "SELECT 'policy', pg_catalog.format('%I on %s', p.polname, p.polrelid::pg_catalog.regclass), n.nspname::text
           FROM pg_catalog.pg_policy p
           JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace, x
          WHERE p.polqual::text ~ x.p OR p.polwithcheck::text ~ x.p".to_string(),
        "SELECT 'trigger', pg_catalog.format('%I on %s', t.tgname, t.tgrelid::pg_catalog.regclass), n.nspname::text
           FROM pg_catalog.pg_trigger t
           JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace, x
          WHERE t.tgqual::text ~ x.p".to_string(),
        "SELECT 'table', pg_catalog.format('%I.%I (partition bound)', n.nspname, c.relname), n.nspname::text
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace, x
          WHERE c.relpartbound::text ~ x.p".to_string(),
        "SELECT 'table', pg_catalog.format('%I.%I (partition key)', n.nspname, c.relname), n.nspname::text
           FROM pg_catalog.pg_partitioned_table pt
           JOIN pg_catalog.pg_class c ON c.oid = pt.partrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace, x
          WHERE pt.partexprs::text ~ x.p".to_string(),
        "SELECT 'function', p.oid::pg_catalog.regprocedure::text || ' (argument default)', n.nspname::text
           FROM pg_catalog.pg_proc p
           JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace, x
          WHERE p.oid >= 16384 AND p.proargdefaults::text ~ x.p".to_string(),
        // CREATE AGGREGATE checks an initial value with its type's input function.
        "SELECT 'aggregate', a.aggfnoid::pg_catalog.regprocedure::text, n.nspname::text
           FROM pg_catalog.pg_aggregate a
           JOIN pg_catalog.pg_proc p ON p.oid = a.aggfnoid
           JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
          WHERE a.aggfnoid >= 16384
            AND ((a.aggtranstype IN (142, 143) AND a.agginitval IS NOT NULL)
              OR (a.aggmtranstype IN (142, 143) AND a.aggminitval IS NOT NULL))".to_string(),
    ];
    if old.has_toast_compression() {
        // SQL-standard function bodies are parsed when created.
        parts.push(
            "SELECT 'function', p.oid::pg_catalog.regprocedure::text, n.nspname::text
               FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace, x
              WHERE p.oid >= 16384 AND p.prosqlbody::text ~ x.p"
                .to_string(),
        );
        parts.push(
            "SELECT 'statistics', pg_catalog.format('%I.%I', n.nspname, s.stxname), n.nspname::text
               FROM pg_catalog.pg_statistic_ext s
               JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace, x
              WHERE s.stxexprs::text ~ x.p"
                .to_string(),
        );
    }
    format!(
        "WITH x AS (SELECT ':consttype 14[23] :consttypmod -?[0-9]+ :constcollid [0-9]+ :constlen -?[0-9]+ :constbyval (true|false) :constisnull false'::text AS p)
         SELECT * FROM ({}) found(kind, name, schema)
          WHERE schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 2, 1",
        parts.join("\n UNION ALL\n")
    )
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

/// The query of a catalogue rule for an old cluster of `old`, by id (for
/// tests that prove a rule's query on a real cluster where the rule itself
/// cannot fire).
pub fn rule_sql(id: &str, old: PgMajor) -> Option<String> {
    RULES
        .iter()
        .find(|r| r.id == id)
        .map(|r| (r.sql)(ScanMode::Private, old))
}
