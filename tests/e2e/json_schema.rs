//! Pins the JSON status schema to its documentation: every event pg-migrate
//! emits in a set of real runs is validated against the tables of
//! docs/json-status.md (every field documented with its type, every required
//! field present), and every check id and code against docs/checks.md.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::support::*;

struct Field {
    kind: String,
    /// "yes", "no", or the name of the one event that requires it.
    required: String,
}

/// Section name (event names, comma-separated) → field rows.
fn documented_events() -> BTreeMap<String, BTreeMap<String, Field>> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/json-status.md"))
            .unwrap();
    let mut sections: BTreeMap<String, BTreeMap<String, Field>> = BTreeMap::new();
    let mut current = String::new();
    let mut in_field_table = false;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            current = heading.replace('`', "");
            in_field_table = false;
            continue;
        }
        if line.starts_with("| field | type | required |") {
            in_field_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_field_table = false;
            continue;
        }
        if !in_field_table || line.starts_with("|---") {
            continue;
        }
        let cells: Vec<String> = line.split('|').map(|c| c.trim().replace('`', "")).collect();
        sections.entry(current.clone()).or_default().insert(
            cells[1].clone(),
            Field {
                kind: cells[2].clone(),
                required: cells[3].clone(),
            },
        );
    }
    sections
}

pub fn documented_codes(file: &str, heading_marker: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    let start = text
        .find(heading_marker)
        .unwrap_or_else(|| panic!("{file} lacks {heading_marker}"));
    text[start..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| !l.starts_with("|---"))
        .skip(1)
        .map(|l| l.split('|').nth(1).unwrap().trim().replace('`', ""))
        .collect()
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "string",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::Bool(_) => "boolean",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

fn validate_object(
    event: &str,
    object: &serde_json::Map<String, Value>,
    prefix: &str,
    fields: &BTreeMap<String, Field>,
) {
    for (key, value) in object {
        let name = format!("{prefix}{key}");
        let field = fields.get(&name).unwrap_or_else(|| {
            panic!("`{event}` emits `{name}`, which docs/json-status.md does not document")
        });
        assert_eq!(
            field.kind,
            type_of(value),
            "`{event}`.`{name}` has the wrong type: {value}"
        );
        match value {
            Value::Object(inner) => validate_object(event, inner, &format!("{name}."), fields),
            Value::Array(items) => {
                for item in items {
                    match item {
                        Value::Object(inner) => {
                            validate_object(event, inner, &format!("{name}[]."), fields)
                        }
                        other => assert_eq!(type_of(other), "string", "`{event}`.`{name}` items"),
                    }
                }
            }
            _ => {}
        }
    }
    // Required fields at this level.
    for (name, field) in fields {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        if rest.contains('.') || rest.contains("[]") {
            continue;
        }
        let required = field.required == "yes" || field.required == event;
        assert!(
            !required || object.contains_key(rest),
            "`{event}` lacks required `{name}`"
        );
    }
}

pub fn validate(events: &[Value]) {
    // The published JSON Schema, by a real validator (every run the tests
    // read is checked so in pgm_testkit::finish; events made otherwise too).
    pgm_testkit::assert_events_match_schema(events);
    let docs = documented_events();
    let common = &docs["Every event"];
    let error_codes = documented_codes("docs/json-status.md", "Error codes:");
    let notice_codes = documented_codes("docs/json-status.md", "Notice codes:");
    let mut check_ids = documented_codes("docs/checks.md", "## Checks");
    check_ids.extend(documented_codes("docs/checks.md", "## Standby checks"));
    check_ids.extend(documented_codes("docs/checks.md", "## Patroni checks"));
    let mut check_codes = documented_codes("docs/checks.md", "## Problem codes");
    check_codes.extend(documented_codes(
        "docs/checks.md",
        "## Standby problem codes",
    ));
    check_codes.extend(documented_codes(
        "docs/checks.md",
        "## Patroni problem codes",
    ));
    assert!(!events.is_empty());
    for event in events {
        let name = event["event"].as_str().expect("every event has a name");
        assert_eq!(event["schema"], 1);
        let section = docs
            .iter()
            .find(|(heading, _)| heading.split(", ").any(|h| h == name))
            .unwrap_or_else(|| panic!("event `{name}` is not documented"))
            .1;
        let mut fields: BTreeMap<String, Field> = BTreeMap::new();
        for (k, f) in common.iter().chain(section.iter()) {
            fields.insert(
                k.clone(),
                Field {
                    kind: f.kind.clone(),
                    required: f.required.clone(),
                },
            );
        }
        validate_object(name, event.as_object().unwrap(), "", &fields);
        if name == "error" {
            let code = event["code"].as_str().unwrap();
            assert!(
                error_codes.iter().any(|c| c == code),
                "error code {code} is not documented"
            );
        }
        if name == "notice" {
            let code = event["code"].as_str().unwrap();
            assert!(
                notice_codes.iter().any(|c| c == code),
                "notice code {code} is not documented"
            );
        }
        if name == "check" {
            let id = event["id"].as_str().unwrap();
            assert!(
                check_ids.iter().any(|c| c == id),
                "check id {id} is not in docs/checks.md"
            );
            if let Some(code) = event["code"].as_str() {
                assert!(
                    check_codes.iter().any(|c| c == code),
                    "check code {code} is not in docs/checks.md"
                );
            }
        }
    }
    assert_eq!(events.iter().filter(|e| e["event"] == "summary").count(), 1);
    assert_eq!(events.last().unwrap()["event"], "summary");
    assert!(events.iter().filter(|e| e["event"] == "plan").count() <= 1);
}

#[test]
fn every_emitted_event_is_documented() {
    let Some(pair) = Pair::new(15, 18) else {
        return;
    };
    // A passing check, a failing check, a usage error, and the upgrade.
    let passing = pair.check(&[]);
    assert_eq!(passing.status, 0, "{}", passing.stderr);
    validate(&passing.events);
    assert_eq!(passing.events[0]["event"], "plan");

    let failing = pair.check(&["-U", "nobody_here"]);
    assert_eq!(failing.status, 1);
    validate(&failing.events);

    let usage = pair.run(&["check".into(), "--json".into()]);
    assert_eq!(usage.status, 2);
    validate(&usage.events);

    let mut args = pair.dir_args();
    args.push("--json".into());
    let upgrade = pair.run(&args);
    validate(&upgrade.events);

    let Some(mismatch) = Pair::with_options(15, &["--wal-segsize=32"], 18, &[]) else {
        return;
    };
    let run = mismatch.check(&[]);
    assert_eq!(run.status, 1);
    validate(&run.events);
}

#[test]
fn every_documented_check_id_exists_in_a_full_run() {
    let Some(pair) = Pair::new(17, 18) else {
        return;
    };
    let run = pair.check(&[]);
    let emitted: Vec<&str> = run
        .events_named("check")
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    for id in documented_codes("docs/checks.md", "## Checks") {
        assert!(
            emitted.contains(&id.as_str()),
            "docs/checks.md lists {id}, which no run emits"
        );
    }
}
