//! `--carry-config`: the old cluster's postgresql.conf (and
//! postgresql.auto.conf) rewritten for the new major, its pg_hba.conf and
//! pg_ident.conf copied. The old file is the base, comments and layout
//! kept; each setting line that must change is changed and reported:
//! renamed settings get their new name (and value), settings that name the
//! old cluster's files keep the new cluster's values, include directives
//! (whose files are not carried) are commented out, and whatever the new
//! server still rejects is commented out with its own reason.

/// One line of a configuration file, as far as carrying it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A comment, a blank line, or anything not understood (kept as is).
    Other(String),
    /// `name = value` (the `=` is optional), with what followed the value.
    Setting {
        name: String,
        value: String,
        text: String,
    },
}

/// Splits a configuration file into lines, recognising setting lines.
pub fn parse(text: &str) -> Vec<Line> {
    text.lines().map(parse_line).collect()
}

fn parse_line(line: &str) -> Line {
    let trimmed = line.trim_start();
    let name_len = trimmed
        .char_indices()
        .take_while(|(i, c)| {
            c.is_ascii_alphabetic() || *c == '_' || (*i > 0 && (c.is_ascii_digit() || *c == '.'))
        })
        .count();
    if name_len == 0 {
        return Line::Other(line.to_string());
    }
    let name = &trimmed[..name_len];
    let mut rest = trimmed[name_len..].trim_start();
    if let Some(after) = rest.strip_prefix('=') {
        rest = after.trim_start();
    } else if !trimmed[name_len..].starts_with(char::is_whitespace) {
        return Line::Other(line.to_string());
    }
    let Some(value) = value_prefix(rest) else {
        return Line::Other(line.to_string());
    };
    Line::Setting {
        name: name.to_ascii_lowercase(),
        value: value.to_string(),
        text: line.to_string(),
    }
}

/// The value at the start of `rest`: a quoted string ('' and \' escapes)
/// or a bare word, up to a comment.
fn value_prefix(rest: &str) -> Option<&str> {
    if let Some(body) = rest.strip_prefix('\'') {
        let bytes = body.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'\'' if bytes.get(i + 1) == Some(&b'\'') => i += 2,
                b'\'' => return Some(&rest[..i + 2]),
                _ => i += 1,
            }
        }
        return None;
    }
    let end = rest
        .find(|c: char| c == '#' || c.is_whitespace())
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// The text of a value without its quotes.
pub fn unquote(value: &str) -> String {
    match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) => inner.replace("''", "'").replace("\\'", "'"),
        None => value.to_string(),
    }
}

/// A postgresql.conf value (quoted as SQL literals are).
fn quote(value: &str) -> String {
    pgm_cluster::sql::quote_literal(value)
}

/// What carrying did to one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub setting: String,
    /// `renamed`, `kept_new` (the new cluster's value stays), or `removed`
    /// (commented out).
    pub action: &'static str,
    pub old_value: Option<String>,
    pub new_setting: Option<String>,
    pub new_value: Option<String>,
    pub reason: String,
}

/// Settings that name the cluster's own files: the new cluster keeps its own.
const OWN_FILES: [&str; 5] = [
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "external_pid_file",
];

/// Directives that pull in other files, which are not carried.
const INCLUDES: [&str; 3] = ["include", "include_dir", "include_if_exists"];

/// A setting renamed between majors: the new name from `major` on, and the
/// value it gets (`wal_segment_mb` for segment counts turned into sizes).
fn renamed(
    name: &str,
    old_major: u32,
    new_major: u32,
    value: &str,
    wal_segment_mb: u64,
) -> Option<(String, String, String)> {
    match name {
        "wal_keep_segments" if old_major < 13 && new_major >= 13 => {
            let segments: u64 = unquote(value).trim().parse().ok()?;
            Some((
                "wal_keep_size".into(),
                format!("'{}MB'", segments * wal_segment_mb),
                format!(
                    "PostgreSQL 13 keeps WAL by size: {segments} segments of {wal_segment_mb} MB"
                ),
            ))
        }
        "force_parallel_mode" if old_major < 16 && new_major >= 16 => Some((
            "debug_parallel_query".into(),
            value.to_string(),
            "renamed in PostgreSQL 16".into(),
        )),
        "ssl_ecdh_curve" if old_major < 18 && new_major >= 18 => Some((
            "ssl_groups".into(),
            value.to_string(),
            "renamed in PostgreSQL 18".into(),
        )),
        _ => None,
    }
}

/// Rewrites an old configuration file for the new major. `new_values` are
/// the new cluster's own settings of its files (`data_directory` …), which
/// replace the old ones.
pub fn carry(
    old_text: &str,
    old_major: u32,
    new_major: u32,
    wal_segment_mb: u64,
    new_values: &[(String, String)],
) -> (String, Vec<Change>) {
    let mut out = Vec::new();
    let mut changes = Vec::new();
    let mut kept_new: Vec<String> = Vec::new();
    for line in parse(old_text) {
        let Line::Setting { name, value, text } = line else {
            if let Line::Other(text) = line {
                out.push(text);
            }
            continue;
        };
        if OWN_FILES.contains(&name.as_str()) {
            out.push(format!("#{text}\t# pg-migrate: the old cluster's file"));
            let new_value = new_values.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
            if let Some(v) = new_value {
                if !kept_new.contains(&name) {
                    out.push(format!("{name} = {}", quote(v)));
                    kept_new.push(name.clone());
                }
            }
            changes.push(Change {
                setting: name.clone(),
                action: if new_value.is_some() {
                    "kept_new"
                } else {
                    "removed"
                },
                old_value: Some(unquote(&value)),
                new_setting: None,
                new_value: new_value.cloned(),
                reason: "it names a file of the old cluster; the new cluster uses its own".into(),
            });
            continue;
        }
        if INCLUDES.contains(&name.as_str()) {
            out.push(format!(
                "#{text}\t# pg-migrate: included files are not carried"
            ));
            changes.push(Change {
                setting: name.clone(),
                action: "removed",
                old_value: Some(unquote(&value)),
                new_setting: None,
                new_value: None,
                reason: "the file it includes is not carried: copy what it sets into the new cluster's configuration yourself".into(),
            });
            continue;
        }
        if let Some((new_name, new_value, reason)) =
            renamed(&name, old_major, new_major, &value, wal_segment_mb)
        {
            out.push(format!("#{text}\t# pg-migrate: renamed"));
            out.push(format!("{new_name} = {new_value}"));
            changes.push(Change {
                setting: name.clone(),
                action: "renamed",
                old_value: Some(unquote(&value)),
                new_setting: Some(new_name),
                new_value: Some(unquote(&new_value)),
                reason,
            });
            continue;
        }
        out.push(text);
    }
    // The new cluster's own file settings the old file did not have.
    for (name, value) in new_values {
        if !kept_new.contains(name) {
            out.push(format!(
                "{name} = {}\t# pg-migrate: the new cluster's own",
                quote(value)
            ));
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    (text, changes)
}

/// Recovery targets name points of the old cluster's history (its WAL,
/// transactions, restore points), which the new cluster does not share.
const RECOVERY_TARGETS: [&str; 8] = [
    "recovery_target",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_lsn",
    "recovery_target_inclusive",
    "recovery_target_action",
    "pause_at_recovery_target",
];

/// A 10 or 11 standby's recovery.conf as the setting lines a 12+ server
/// reads from postgresql.auto.conf (12 made them ordinary settings and
/// refuses to start beside a recovery.conf). `standby_mode` becomes
/// `standby.signal`, which the caller writes; `trigger_file` is
/// `promote_trigger_file` until 16 removed it; recovery targets and a
/// numbered timeline, which name the old cluster's history, are left out.
pub fn carry_recovery_conf(text: &str, new_major: u32) -> (Vec<String>, Vec<Change>) {
    let mut lines = Vec::new();
    let mut changes = Vec::new();
    let mut change = |setting: &str,
                      action: &'static str,
                      value: &str,
                      new: Option<(&str, &str)>,
                      reason: String| {
        // What is reported (events, the terminal) never holds a password.
        let shown = |v: &str| {
            if setting.ends_with("conninfo") {
                hide_conninfo_password(&unquote(v))
            } else {
                unquote(v)
            }
        };
        changes.push(Change {
            setting: setting.into(),
            action,
            old_value: Some(shown(value)),
            new_setting: new.map(|(n, _)| n.to_string()),
            new_value: new.map(|(_, v)| shown(v)),
            reason,
        });
    };
    for line in parse(text) {
        let Line::Setting { name, value, .. } = line else {
            continue;
        };
        let timeline = unquote(&value).to_ascii_lowercase();
        match name.as_str() {
            "standby_mode" => change(
                &name,
                "moved",
                &value,
                Some(("standby.signal", "")),
                "PostgreSQL 12 replaced it by the file standby.signal in the data directory".into(),
            ),
            "trigger_file" if new_major >= 16 => change(
                &name,
                "removed",
                &value,
                None,
                "PostgreSQL 16 removed promote_trigger_file (its successor): promote with pg_ctl promote or SELECT pg_promote()".into(),
            ),
            "trigger_file" => {
                lines.push(format!("promote_trigger_file = {value}"));
                change(
                    &name,
                    "renamed",
                    &value,
                    Some(("promote_trigger_file", &value)),
                    "renamed in PostgreSQL 12".into(),
                );
            }
            _ if RECOVERY_TARGETS.contains(&name.as_str()) => change(
                &name,
                "removed",
                &value,
                None,
                "a recovery target names a point of the old cluster's history, which the upgraded standby does not share".into(),
            ),
            "recovery_target_timeline" if timeline != "latest" && timeline != "current" => change(
                &name,
                "removed",
                &value,
                None,
                "a numbered timeline is of the old cluster's history: the upgraded standby follows the new primary's latest".into(),
            ),
            _ => {
                lines.push(format!("{name} = {value}"));
                change(
                    &name,
                    "moved",
                    &value,
                    Some((&name, &value)),
                    "PostgreSQL 12 reads recovery.conf's settings from the ordinary configuration: now in postgresql.auto.conf".into(),
                );
            }
        }
    }
    (lines, changes)
}

/// A libpq connection string with its password's value hidden
/// (`password=…`), for reports; everything else as it was.
pub fn hide_conninfo_password(conninfo: &str) -> String {
    // A URI: postgresql://user:password@host/…
    for scheme in ["postgresql://", "postgres://"] {
        if let Some(after) = conninfo.strip_prefix(scheme) {
            let authority_end = after.find(['/', '?']).unwrap_or(after.len());
            if let Some(at) = after[..authority_end].rfind('@') {
                if let Some(colon) = after[..at].find(':') {
                    return format!("{scheme}{}:…{}", &after[..colon], &after[at..]);
                }
            }
            return conninfo.to_string();
        }
    }
    let mut out = String::new();
    let mut rest = conninfo;
    while let Some(at) = rest.find("password") {
        let before_ok = rest[..at].chars().last().is_none_or(|c| c.is_whitespace());
        let after = rest[at + "password".len()..].trim_start();
        if !before_ok || !after.starts_with('=') {
            out.push_str(&rest[..at + "password".len()]);
            rest = &rest[at + "password".len()..];
            continue;
        }
        out.push_str(&rest[..at]);
        out.push_str("password=…");
        let value = after[1..].trim_start();
        // The value: quoted ('…', with \' and \\ escapes) or up to a space.
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            1 + end
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// Comments out every active line setting `name` (the new server rejects
/// it); true if there was one.
pub fn comment_out(text: &str, name: &str, why: &str) -> (String, bool) {
    let mut found = false;
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        match parse_line(line) {
            Line::Setting { name: n, .. } if n == name => {
                found = true;
                out.push(format!("#{line}\t# pg-migrate: {why}"));
            }
            _ => out.push(line.to_string()),
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    (text, found)
}

/// The active value of `name` in a file, unquoted.
pub fn value_of(text: &str, name: &str) -> Option<String> {
    parse(text).into_iter().rev().find_map(|line| match line {
        Line::Setting { name: n, value, .. } if n == name => Some(unquote(&value)),
        _ => None,
    })
}

/// The settings a server's complaint names as unknown or wrongly valued
/// (`unrecognized configuration parameter "x"`, `invalid value for
/// parameter "x"`, `parameter "x" …`), in the order named.
pub fn rejected_settings(server_output: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in server_output.lines() {
        let Some(at) = line.find("parameter \"") else {
            continue;
        };
        let rest = &line[at + "parameter \"".len()..];
        let Some(end) = rest.find('"') else {
            continue;
        };
        let name = rest[..end].to_ascii_lowercase();
        let message = line
            .split_once(": ")
            .map(|(_, m)| m)
            .unwrap_or(line)
            .trim()
            .to_string();
        if !out.iter().any(|(n, _)| *n == name) {
            out.push((name, message));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each change as (setting, action).
    fn actions_of(changes: &[Change]) -> Vec<(&str, &str)> {
        changes
            .iter()
            .map(|c| (c.setting.as_str(), c.action))
            .collect()
    }

    #[test]
    fn setting_lines_are_recognised_with_their_values() {
        assert_eq!(
            parse_line("shared_buffers = 128MB   # min 128kB"),
            Line::Setting {
                name: "shared_buffers".into(),
                value: "128MB".into(),
                text: "shared_buffers = 128MB   # min 128kB".into()
            }
        );
        assert!(matches!(parse_line("#work_mem = 4MB"), Line::Other(_)));
        assert!(matches!(parse_line(""), Line::Other(_)));
        match parse_line("  log_line_prefix '%m [%p] it''s # not a comment' # one") {
            Line::Setting { name, value, .. } => {
                assert_eq!(name, "log_line_prefix");
                assert_eq!(unquote(&value), "%m [%p] it's # not a comment");
            }
            other => panic!("{other:?}"),
        }
        match parse_line("pg_stat_statements.max=10000") {
            Line::Setting { name, value, .. } => {
                assert_eq!(
                    (name.as_str(), value.as_str()),
                    ("pg_stat_statements.max", "10000")
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn conninfo_passwords_are_hidden_in_reports() {
        assert_eq!(
            hide_conninfo_password("host=/tmp port=5432 user=rep password=s3cret sslmode=disable"),
            "host=/tmp port=5432 user=rep password=… sslmode=disable"
        );
        assert_eq!(
            hide_conninfo_password("password = 'it\\'s secret' host=h"),
            "password=… host=h"
        );
        assert_eq!(
            hide_conninfo_password("user=passwordless host=h"),
            "user=passwordless host=h"
        );
        assert_eq!(
            hide_conninfo_password("postgresql://rep:s3cret@h:5432/db"),
            "postgresql://rep:…@h:5432/db"
        );
        let (_, changes) =
            carry_recovery_conf("primary_conninfo = 'host=h password=s3cret user=rep'\n", 15);
        assert_eq!(
            changes[0].old_value.as_deref(),
            Some("host=h password=… user=rep")
        );
        assert!(!format!("{changes:?}").contains("s3cret"));
    }

    #[test]
    fn a_recovery_conf_becomes_settings_and_a_signal() {
        let old = "# made by pg_basebackup\nstandby_mode = 'on'\nprimary_conninfo = 'host=/tmp port=5432 user=rep'\n\
                   primary_slot_name = 'one'\ntrigger_file = '/tmp/promote'\nrecovery_target_timeline = 'latest'\n\
                   recovery_target_xid = '1234'\n";
        let (lines, changes) = carry_recovery_conf(old, 15);
        assert_eq!(
            lines,
            [
                "primary_conninfo = 'host=/tmp port=5432 user=rep'",
                "primary_slot_name = 'one'",
                "promote_trigger_file = '/tmp/promote'",
                "recovery_target_timeline = 'latest'",
            ]
        );
        let actions = actions_of(&changes);
        assert_eq!(
            actions,
            [
                ("standby_mode", "moved"),
                ("primary_conninfo", "moved"),
                ("primary_slot_name", "moved"),
                ("trigger_file", "renamed"),
                ("recovery_target_timeline", "moved"),
                ("recovery_target_xid", "removed"),
            ]
        );
        let (lines, changes) = carry_recovery_conf(
            "trigger_file = '/tmp/p'\nrecovery_target_timeline = 2\n",
            18,
        );
        assert!(lines.is_empty(), "{lines:?}");
        assert!(changes.iter().all(|c| c.action == "removed"), "{changes:?}");
    }

    #[test]
    fn old_settings_are_renamed_converted_or_left_to_the_new_cluster() {
        let old = "# my settings\nport = 5433\nwal_keep_segments = 32\nforce_parallel_mode = on\n\
                   data_directory = '/var/lib/postgresql/12/main'\nhba_file = '/etc/postgresql/12/main/pg_hba.conf'\n\
                   include_dir = 'conf.d'\nwork_mem = '8MB'\n";
        let new_values = vec![(
            "data_directory".to_string(),
            "/var/lib/postgresql/18/main".to_string(),
        )];
        let (text, changes) = carry(old, 12, 18, 16, &new_values);
        assert!(text.contains("# my settings\nport = 5433\n"), "{text}");
        assert!(text.contains("#wal_keep_segments = 32"), "{text}");
        assert!(text.contains("wal_keep_size = '512MB'"), "{text}");
        assert!(text.contains("debug_parallel_query = on"), "{text}");
        assert!(
            text.contains("data_directory = '/var/lib/postgresql/18/main'"),
            "{text}"
        );
        assert!(!text.lines().any(|l| l.starts_with("hba_file")), "{text}");
        assert!(text.contains("#include_dir = 'conf.d'"), "{text}");
        assert!(text.contains("\nwork_mem = '8MB'\n"), "{text}");
        let actions = actions_of(&changes);
        assert_eq!(
            actions,
            vec![
                ("wal_keep_segments", "renamed"),
                ("force_parallel_mode", "renamed"),
                ("data_directory", "kept_new"),
                ("hba_file", "removed"),
                ("include_dir", "removed"),
            ]
        );
        assert_eq!(value_of(&text, "wal_keep_size").as_deref(), Some("512MB"));
        // Settings of a major already past a rename stay.
        let (same, none) = carry("force_parallel_mode = on\n", 16, 18, 16, &[]);
        assert!(none.is_empty() && same == "force_parallel_mode = on\n");
    }

    #[test]
    fn what_the_server_rejects_is_found_and_commented_out() {
        let output = "2026-11-30 LOG:  unrecognized configuration parameter \"old_snapshot_threshold\" in file \"/x/postgresql.conf\" line 3\n\
                      2026-11-30 LOG:  invalid value for parameter \"wal_level\": \"archive\"\n\
                      2026-11-30 FATAL:  configuration file \"/x/postgresql.conf\" contains errors";
        let rejected = rejected_settings(output);
        assert_eq!(
            rejected.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            vec!["old_snapshot_threshold", "wal_level"]
        );
        let (text, found) = comment_out(
            "a = 1\nold_snapshot_threshold = 5\n",
            "old_snapshot_threshold",
            "gone",
        );
        assert!(found);
        assert_eq!(
            text,
            "a = 1\n#old_snapshot_threshold = 5\t# pg-migrate: gone\n"
        );
    }
}
