//! `--verify`: the upgrade proves itself the way the tests do. Each side is
//! measured with the new installation's pg_dumpall (schema only) and, per
//! table, a row count and an order-independent checksum of the rows' text
//! (sampled above a size, by block, with the same blocks on both sides: an
//! in-place upgrade keeps every table's file as it was); sequences and large
//! objects too. Schema differences the two majors are known to print
//! differently are recognised by named rules, never silently dropped.
//!
//! Nothing here writes to a cluster: every query reads.

use std::collections::BTreeMap;
use std::path::Path;

use pgm_cluster::{Installation, PgMajor, Server, Tool};
use serde::{Deserialize, Serialize};

/// How much of each table is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasureOptions {
    /// Tables larger than this are sampled (`None`: every row of every table).
    pub sample_above_bytes: Option<u64>,
}

/// One table (or the large objects of a database): rows counted and
/// checksummed, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measure {
    pub rows: i64,
    pub checksum: String,
    /// The share of the table's blocks read, when sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_percent: Option<String>,
}

/// What one cluster looked like.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Side {
    pub major: u32,
    /// `pg_dumpall --schema-only` by the new installation.
    pub schema: String,
    /// "database: schema.table" → its measure.
    pub tables: BTreeMap<String, Measure>,
    /// "database: schema.sequence" → "last_value is_called".
    pub sequences: BTreeMap<String, String>,
    /// database → its large objects' count and checksum.
    pub large_objects: BTreeMap<String, Measure>,
    /// How rows were hashed and floats printed: the other side, measured
    /// later (perhaps by another release, from a saved file), repeats it.
    #[serde(default)]
    pub row_hash: RowHash,
    #[serde(default = "default_float_digits")]
    pub extra_float_digits: i32,
}

fn default_float_digits() -> i32 {
    3
}

fn query_error(database: &str, what: &str, e: &postgres::Error) -> crate::Error {
    crate::Error::Query {
        database: database.to_string(),
        what: what.to_string(),
        detail: pgm_cluster::describe_pg_error(e),
    }
}

/// Session settings that make every row's text the same on both sides,
/// whatever either server's configuration says.
const SESSION: &str =
    "SET datestyle = 'ISO, MDY'; SET timezone = 'UTC'; SET intervalstyle = 'postgres';
     SET extra_float_digits = 3; SET bytea_output = 'hex'; SET default_transaction_read_only = on";

/// Measures a running cluster. `like`: the other side, whose sampling this
/// side repeats table by table (the new side follows the old).
pub fn measure(
    install: &Installation,
    server: &Server,
    major: PgMajor,
    options: MeasureOptions,
    like: Option<&Side>,
    jobs: usize,
    progress: &(dyn Fn(MeasureProgress) + Sync),
) -> Result<Side, crate::Error> {
    let schema = dump_schema(install, server)?;
    let databases: Vec<String> = server
        .connect("template1")?
        .query(
            "SELECT datname::text FROM pg_catalog.pg_database WHERE datallowconn ORDER BY datname",
            &[],
        )
        .map_err(|e| query_error("template1", "listing databases", &e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Both sides hash rows and print floats the same way: as the side
    // measured first says it did, else hashtextextended from 11 on (an
    // md5-derived 64-bit value before).
    let older = major.number().min(like.map_or(u32::MAX, |side| side.major));
    let hash = match like {
        Some(side) => side.row_hash,
        None if older < 11 => RowHash::Md5,
        None => RowHash::HashTextExtended,
    };
    // 12 prints floats in their shortest exact form, older servers rounded
    // (to 15 digits, or 17 with extra_float_digits = 3): across 12 both sides
    // print the rounded form, the one format they share (a float8 that
    // differs past its 15th digit, a float4 past its 6th, is then not seen).
    let float_digits = match like {
        Some(side) => side.extra_float_digits,
        None if older < 12 => 0,
        None => default_float_digits(),
    };
    let results = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1).min(databases.len().max(1)) {
            scope.spawn(|| loop {
                let at = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(name) = databases.get(at) else {
                    return;
                };
                let measured = measure_database(
                    server,
                    name,
                    Measuring {
                        options,
                        like,
                        hash,
                        float_digits,
                        progress,
                    },
                );
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(measured);
            });
        }
    });
    let mut side = Side {
        major: major.number(),
        schema,
        row_hash: hash,
        extra_float_digits: float_digits,
        ..Side::default()
    };
    for measured in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
        let (tables, sequences, large_objects) = measured?;
        side.tables.extend(tables);
        side.sequences.extend(sequences);
        side.large_objects.extend(large_objects);
    }
    Ok(side)
}

type DatabaseMeasures = (
    BTreeMap<String, Measure>,
    BTreeMap<String, String>,
    BTreeMap<String, Measure>,
);

/// How a row (or a large object) is hashed into the sums compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowHash {
    /// hashtextextended (11 and later), the default of a side saved
    /// without the field.
    #[default]
    HashTextExtended,
    /// An md5-derived bigint, where a side predates hashtextextended.
    Md5,
}

impl RowHash {
    /// A bigint hash of the text `expr`.
    fn of(self, expr: &str) -> String {
        match self {
            RowHash::HashTextExtended => format!("pg_catalog.hashtextextended({expr}, 0)"),
            RowHash::Md5 => format!(
                "('x' || pg_catalog.substr(pg_catalog.md5({expr}), 1, 16))::pg_catalog.bit(64)::bigint"
            ),
        }
    }
}

/// What `measure` tells of its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasureProgress {
    /// A database's tables and sequences, listed: more to measure.
    Found(u64),
    /// One more begun (the ones before it are measured).
    Started,
}

/// How every database of one side is measured.
struct Measuring<'a> {
    options: MeasureOptions,
    like: Option<&'a Side>,
    hash: RowHash,
    float_digits: i32,
    progress: &'a (dyn Fn(MeasureProgress) + Sync),
}

fn measure_database(
    server: &Server,
    database: &str,
    how: Measuring<'_>,
) -> Result<DatabaseMeasures, crate::Error> {
    let Measuring {
        options,
        like,
        hash,
        float_digits,
        progress,
    } = how;
    let mut client = server.connect(database)?;
    let q = |what: &'static str| move |e: postgres::Error| query_error(database, what, &e);
    client.batch_execute(SESSION).map_err(q("setting up"))?;
    client
        .batch_execute(&format!("SET extra_float_digits = {float_digits}"))
        .map_err(q("setting up"))?;
    let relations: Vec<(String, String, bool, i64)> = client
        .query(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), c.relkind::text,
                    c.relispopulated, pg_catalog.pg_relation_size(c.oid)
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'm', 'S') AND c.relpersistence <> 't'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname !~ '^pg_toast'
              ORDER BY 1",
            &[],
        )
        .map_err(q("listing tables"))?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let mut tables = BTreeMap::new();
    let mut sequences = BTreeMap::new();
    progress(MeasureProgress::Found(relations.len() as u64));
    for (name, kind, populated, bytes) in relations {
        progress(MeasureProgress::Started);
        let key = format!("{database}: {name}");
        if kind == "S" {
            let row = client
                .query_one(
                    &format!("SELECT last_value::text || ' ' || is_called::text FROM {name}"),
                    &[],
                )
                .map_err(q("reading a sequence"))?;
            sequences.insert(key, row.get(0));
            continue;
        }
        if !populated {
            tables.insert(
                key,
                Measure {
                    rows: -1,
                    checksum: "not populated".into(),
                    sample_percent: None,
                },
            );
            continue;
        }
        // The other side's sampling when it has this table, else our own.
        let percent = match like {
            Some(side) => side.tables.get(&key).and_then(|m| m.sample_percent.clone()),
            None => sample_percent(bytes, options.sample_above_bytes),
        };
        let sample = percent
            .as_ref()
            .map(|p| format!(" TABLESAMPLE SYSTEM ({p}) REPEATABLE (0)"))
            .unwrap_or_default();
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(sum({}), 0)::text FROM ONLY {name} t{sample}",
                    hash.of("t::text")
                ),
                &[],
            )
            .map_err(q("checksumming a table"))?;
        tables.insert(
            key,
            Measure {
                rows: row.get(0),
                checksum: row.get(1),
                sample_percent: percent,
            },
        );
    }
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(sum({}), 0)::text FROM pg_catalog.pg_largeobject_metadata",
                hash.of("oid::text || ':' || pg_catalog.md5(pg_catalog.lo_get(oid))")
            ),
            &[],
        )
        .map_err(q("checksumming large objects"))?;
    let mut large_objects = BTreeMap::new();
    large_objects.insert(
        database.to_string(),
        Measure {
            rows: row.get(0),
            checksum: row.get(1),
            sample_percent: None,
        },
    );
    Ok((tables, sequences, large_objects))
}

/// The share of blocks that reads about `limit` bytes of a table of `bytes`.
fn sample_percent(bytes: i64, limit: Option<u64>) -> Option<String> {
    let limit = limit?;
    let bytes = u64::try_from(bytes).ok()?;
    if bytes <= limit || bytes == 0 {
        return None;
    }
    let percent = (limit as f64 * 100.0 / bytes as f64).clamp(0.01, 100.0);
    Some(format!("{percent:.2}"))
}

fn dump_schema(install: &Installation, server: &Server) -> Result<String, crate::Error> {
    let endpoint = &server.endpoint;
    let mut command = install
        .command(Tool::PgDumpall)?
        .env("PGOPTIONS", "-c default_transaction_read_only=on")
        .arg("--host")
        .arg(&endpoint.socket_dir)
        .arg("--port")
        .arg(endpoint.port.to_string())
        .arg("--username")
        .arg(&endpoint.user)
        .args(["--schema-only", "--no-sync", "--no-role-passwords"]);
    if install.version.major.dumps_statistics() {
        command = command.arg("--no-statistics");
    }
    let (status, captured) = command.run_unchecked()?;
    if !status.success() {
        return Err(crate::Error::Dump(captured.stderr));
    }
    Ok(captured.stdout)
}

/// A known way two majors print the same schema differently.
pub struct Rule {
    pub name: &'static str,
    /// Noise rather than a difference (a version string, a random key):
    /// applying it does not make a result "explained".
    pub cosmetic: bool,
    applies: fn(u32, u32) -> bool,
    /// The line as it is compared, or `None` to leave it out.
    rewrite: fn(&str, &mut RuleState) -> Option<String>,
}

/// What a rule remembers from line to line.
#[derive(Default)]
pub struct RuleState {
    in_view: bool,
    last_blank: bool,
}

pub const RULES: &[Rule] = &[
    Rule {
        name: "version-header",
        cosmetic: true,
        applies: |_, _| true,
        rewrite: |line, _| {
            (!line.starts_with("-- Dumped from database version")).then(|| line.into())
        },
    },
    Rule {
        name: "restrict-key",
        cosmetic: true,
        applies: |_, _| true,
        rewrite: |line, _| {
            (!line.starts_with("\\restrict ") && !line.starts_with("\\unrestrict "))
                .then(|| line.into())
        },
    },
    // 12 added table access methods: pg_dump sets the default one before
    // each table it dumps from a 12+ server (heap, the only one before 12).
    Rule {
        name: "table-access-method",
        cosmetic: false,
        applies: |old, _| old < 12,
        rewrite: |line, _| {
            (!line.starts_with("SET default_table_access_method = ")).then(|| line.into())
        },
    },
    // A 12+ server prints a trigger's EXECUTE FUNCTION, an older one
    // EXECUTE PROCEDURE (the same trigger).
    Rule {
        name: "trigger-functions",
        cosmetic: false,
        applies: |old, _| old < 12,
        rewrite: |line, _| {
            if line.starts_with("CREATE TRIGGER ") || line.starts_with("CREATE CONSTRAINT TRIGGER ")
            {
                Some(line.replace(" EXECUTE PROCEDURE ", " EXECUTE FUNCTION "))
            } else {
                Some(line.into())
            }
        },
    },
    // 14 gave every range type a multirange type, named only for 14+ servers.
    Rule {
        name: "multirange-types",
        cosmetic: false,
        applies: |old, _| old < 14,
        rewrite: |line, _| {
            (!line.trim_start().starts_with("multirange_type_name = ")).then(|| line.into())
        },
    },
    // pg_dumpall prints a (possibly empty) section for privileges on
    // parameters for 15+ servers: runs of blank lines count as one.
    Rule {
        name: "empty-sections",
        cosmetic: false,
        applies: |old, _| old < 15,
        rewrite: |line, state| {
            let blank = line.is_empty();
            let repeat = blank && state.last_blank;
            state.last_blank = blank;
            (!repeat).then(|| line.into())
        },
    },
    // 14 prints the IN of procedure arguments (procedures gained OUT ones).
    Rule {
        name: "procedure-argument-modes",
        cosmetic: false,
        applies: |old, new| old < 14 && new >= 14,
        rewrite: |line, _| {
            if line.starts_with("CREATE PROCEDURE ") || line.starts_with("ALTER PROCEDURE ") {
                Some(line.replace("(IN ", "(").replace(", IN ", ", "))
            } else {
                Some(line.into())
            }
        },
    },
    // 16 added INHERIT and the grantor to role memberships, printed for 16+
    // servers only.
    Rule {
        name: "role-grant-options",
        cosmetic: false,
        applies: |old, new| old < 16 && new >= 16,
        rewrite: |line, _| {
            if !line.starts_with("GRANT ") || line.contains(" ON ") {
                return Some(line.into());
            }
            let mut line = line
                .replace(", INHERIT TRUE", "")
                .replace(" WITH INHERIT TRUE", "");
            if let Some(at) = line.find(" GRANTED BY ") {
                line.truncate(at);
                line.push(';');
            }
            Some(line)
        },
    },
    // 16's server stopped qualifying column names in the bodies of views
    // that read a single relation: qualifiers are dropped from view bodies.
    Rule {
        name: "view-deparsing",
        cosmetic: false,
        applies: |old, new| old < 16 && new >= 16,
        rewrite: |line, state| {
            if line.starts_with("CREATE VIEW ") || line.starts_with("CREATE MATERIALIZED VIEW ") {
                state.in_view = true;
            }
            if !state.in_view {
                return Some(line.into());
            }
            if line.trim_end().ends_with(';') {
                state.in_view = false;
            }
            Some(unqualified(line))
        },
    },
];

/// `a.b` → `b` for identifiers (not numbers) in one line of a view body.
fn unqualified(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        let at_word_start = i == 0 || !(is_word(chars[i - 1]) || chars[i - 1] == '.');
        if at_word_start && (chars[i].is_alphabetic() || chars[i] == '_') {
            let end = (i..chars.len())
                .find(|&j| !is_word(chars[j]))
                .unwrap_or(chars.len());
            let qualifies = chars.get(end) == Some(&'.')
                && chars
                    .get(end + 1)
                    .is_some_and(|&c| c.is_alphabetic() || c == '_' || c == '"');
            if !qualifies {
                out.extend(&chars[i..end]);
            }
            i = if qualifies { end + 1 } else { end };
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// A schema dump as compared, and how many lines each rule changed or left out.
pub fn normalize(dump: &str, old: u32, new: u32) -> (String, BTreeMap<&'static str, usize>) {
    let rules: Vec<&Rule> = RULES.iter().filter(|r| (r.applies)(old, new)).collect();
    let mut states: Vec<RuleState> = rules.iter().map(|_| RuleState::default()).collect();
    let mut applied: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut out = Vec::new();
    'lines: for line in dump.lines() {
        let mut current = line.to_string();
        for (rule, state) in rules.iter().zip(states.iter_mut()) {
            match (rule.rewrite)(&current, state) {
                None => {
                    *applied.entry(rule.name).or_default() += 1;
                    continue 'lines;
                }
                Some(rewritten) => {
                    if rewritten != current {
                        *applied.entry(rule.name).or_default() += 1;
                        current = rewritten;
                    }
                }
            }
        }
        out.push(current);
    }
    (out.join("\n"), applied)
}

/// The outcome of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Nothing differs but noise (version strings, random keys).
    Identical,
    /// Every difference is one a named rule explains.
    Explained,
    /// Something differs that no rule explains.
    Different,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RuleUse {
    pub rule: &'static str,
    pub lines: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub outcome: Outcome,
    /// The rules that explained (or quieted) something, with how many
    /// lines of either dump each touched.
    pub rules: Vec<RuleUse>,
    pub tables: usize,
    pub sampled_tables: usize,
    pub sequences: usize,
    pub large_objects: i64,
    /// What differs, schema lines first (`-` old, `+` new), at most 50.
    pub differences: Vec<String>,
    /// How many differences there are in all.
    pub difference_count: usize,
}

/// Compares the old side with the new.
pub fn compare(old: &Side, new: &Side) -> Verdict {
    let (old_schema, old_rules) = normalize(&old.schema, old.major, new.major);
    let (new_schema, new_rules) = normalize(&new.schema, old.major, new.major);
    let mut differences = schema_differences(&old_schema, &new_schema);
    let keyed = |what: &str,
                 old: &BTreeMap<String, String>,
                 new: &BTreeMap<String, String>,
                 out: &mut Vec<String>| {
        for (key, before) in old {
            match new.get(key) {
                None => out.push(format!("{what} {key}: missing in the new cluster")),
                Some(after) if after != before => {
                    out.push(format!("{what} {key}: {before} before, {after} after"))
                }
                _ => {}
            }
        }
        for key in new.keys().filter(|k| !old.contains_key(*k)) {
            out.push(format!("{what} {key}: only in the new cluster"));
        }
    };
    let text = |m: &BTreeMap<String, Measure>| -> BTreeMap<String, String> {
        m.iter()
            .map(|(k, v)| {
                let sampled = v
                    .sample_percent
                    .as_ref()
                    .map(|p| format!(" (sampled {p}%)"))
                    .unwrap_or_default();
                (
                    k.clone(),
                    format!("{} rows, checksum {}{sampled}", v.rows, v.checksum),
                )
            })
            .collect()
    };
    keyed(
        "table",
        &text(&old.tables),
        &text(&new.tables),
        &mut differences,
    );
    keyed("sequence", &old.sequences, &new.sequences, &mut differences);
    keyed(
        "large objects of",
        &text(&old.large_objects),
        &text(&new.large_objects),
        &mut differences,
    );
    let mut uses: BTreeMap<&'static str, usize> = old_rules;
    for (rule, lines) in new_rules {
        *uses.entry(rule).or_default() += lines;
    }
    let explained = uses
        .keys()
        .any(|name| RULES.iter().any(|r| r.name == *name && !r.cosmetic));
    let outcome = if !differences.is_empty() {
        Outcome::Different
    } else if explained {
        Outcome::Explained
    } else {
        Outcome::Identical
    };
    let difference_count = differences.len();
    differences.truncate(50);
    Verdict {
        outcome,
        rules: uses
            .into_iter()
            .map(|(rule, lines)| RuleUse { rule, lines })
            .collect(),
        tables: new.tables.len(),
        sampled_tables: new
            .tables
            .values()
            .filter(|m| m.sample_percent.is_some())
            .count(),
        sequences: new.sequences.len(),
        large_objects: new.large_objects.values().map(|m| m.rows.max(0)).sum(),
        differences,
        difference_count,
    }
}

/// The lines of one dump the other lacks, in order (`-` old, `+` new); a
/// line that moved shows on both sides.
fn schema_differences(old: &str, new: &str) -> Vec<String> {
    if old == new {
        return Vec::new();
    }
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
            continue;
        }
        // Re-align on the nearest line both still share.
        let next = (i..a.len().min(i + 500)).find_map(|x| {
            (j..b.len().min(j + 500))
                .find(|&y| a[x] == b[y])
                .map(|y| (x, y))
        });
        let (x, y) = next.unwrap_or((a.len(), b.len()));
        out.extend(a[i..x].iter().map(|l| format!("schema - {l}")));
        out.extend(b[j..y].iter().map(|l| format!("schema + {l}")));
        i = x;
        j = y;
    }
    out
}

/// Writes `side` as JSON (the old side, kept for the comparison after the
/// point of no return).
pub fn save(side: &Side, path: &Path) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec(side).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub fn load(path: &Path) -> std::io::Result<Side> {
    let text = std::fs::read(path)?;
    serde_json::from_slice(&text).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(major: u32, schema: &str) -> Side {
        Side {
            major,
            schema: schema.into(),
            ..Side::default()
        }
    }

    /// A side saved before the method was recorded was measured the only
    /// way there was then.
    #[test]
    fn a_side_saved_without_its_method_says_the_old_one() {
        let side: Side = serde_json::from_str(
            r#"{"major": 15, "schema": "", "tables": {}, "sequences": {}, "large_objects": {}}"#,
        )
        .unwrap();
        assert_eq!(side.row_hash, RowHash::HashTextExtended);
        assert_eq!(side.extra_float_digits, 3);
    }

    #[test]
    fn only_noise_is_identical() {
        let old = side(
            17,
            "-- Dumped from database version 17.6\n\\restrict abc\nCREATE TABLE t (x int);",
        );
        let new = side(
            18,
            "-- Dumped from database version 18.1\n\\restrict xyz\nCREATE TABLE t (x int);",
        );
        let verdict = compare(&old, &new);
        assert_eq!(verdict.outcome, Outcome::Identical);
        assert!(verdict.rules.iter().any(|r| r.rule == "version-header"));
    }

    #[test]
    fn a_known_difference_is_explained_by_name() {
        let old = side(15, "GRANT a TO b;");
        let new = side(18, "GRANT a TO b WITH INHERIT TRUE GRANTED BY postgres;");
        let verdict = compare(&old, &new);
        assert_eq!(verdict.outcome, Outcome::Explained);
        assert_eq!(verdict.rules[0].rule, "role-grant-options");
        // The same text between two 16+ majors is a real difference.
        let verdict = compare(&side(16, "GRANT a TO b;"), &new);
        assert_eq!(verdict.outcome, Outcome::Different);
        assert!(verdict
            .differences
            .iter()
            .any(|d| d.starts_with("schema +")));
    }

    #[test]
    fn data_differences_are_named() {
        let mut old = side(17, "");
        let mut new = side(18, "");
        let measure = |rows, checksum: &str| Measure {
            rows,
            checksum: checksum.into(),
            sample_percent: None,
        };
        old.tables.insert("db: public.t".into(), measure(3, "42"));
        new.tables.insert("db: public.t".into(), measure(3, "41"));
        old.sequences.insert("db: public.s".into(), "7 true".into());
        let verdict = compare(&old, &new);
        assert_eq!(verdict.outcome, Outcome::Different);
        assert_eq!(verdict.difference_count, 2);
        assert!(verdict.differences[0].contains("public.t"));
        assert!(verdict.differences[1].contains("missing in the new cluster"));
    }

    #[test]
    fn view_bodies_lose_their_qualifiers() {
        assert_eq!(
            unqualified("    SELECT t.a, s.\"B\", 1.5 FROM public.t;"),
            "    SELECT a, \"B\", 1.5 FROM t;"
        );
    }

    #[test]
    fn sampling_reads_about_the_limit() {
        assert_eq!(sample_percent(100, Some(1000)), None);
        assert_eq!(sample_percent(4000, Some(1000)).as_deref(), Some("25.00"));
        assert_eq!(sample_percent(4000, None), None);
    }
}
