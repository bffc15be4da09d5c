//! The text for people (stderr) of each event: what the JSON says, in
//! words, with the fix under each problem. Only the printer calls it.

use super::*;

pub(super) fn human(event: &Event, repeated_skip: bool) -> Option<String> {
    match event {
        Event::Plan {
            command,
            old,
            new,
            note,
            ..
        } => {
            let mut text = format!(
                "pg-migrate {command}\n  old: {} (bin {})\n  new: {} (bin {})",
                old.datadir, old.bindir, new.datadir, new.bindir
            );
            if let Some(note) = note {
                text.push_str(&format!("\n  note: {note}"));
            }
            Some(text)
        }
        Event::StepStart { step } => Some(match step_purpose(step) {
            Some(purpose) => format!("{step}: {purpose} …"),
            None => format!("{step} …"),
        }),
        Event::StepEnd {
            step,
            status,
            duration_ms,
        } => Some(format!(
            "{step}: {} ({:.1} s)",
            status.as_str(),
            Duration::from_millis(*duration_ms).as_secs_f64()
        )),
        Event::Initdb { command, .. } => Some(format!("creating the new cluster: {command}")),
        Event::Member {
            member,
            role,
            step,
            status,
            message,
        } => Some(format!(
            "  {member} ({role}): {step} {}{}",
            status.as_str(),
            message
                .as_ref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        )),
        Event::Script {
            name,
            database,
            status,
            message,
            ..
        } => {
            let place = database
                .as_ref()
                .map(|d| format!(" in database \"{d}\""))
                .unwrap_or_default();
            let mut text = format!("  {name}{place}: {status}");
            if let Some(message) = message {
                text.push_str(&format!(" ({message})"));
            }
            Some(text)
        }
        Event::Verify {
            outcome,
            rules,
            tables,
            sampled_tables,
            sequences,
            large_objects,
            difference_count,
            differences,
            report,
            ..
        } => {
            let verdict = match outcome {
                pgm_verifier::proof::Outcome::Identical => "identical".to_string(),
                pgm_verifier::proof::Outcome::Explained => format!(
                    "the same, differences explained by: {}",
                    rules
                        .iter()
                        .map(|r| format!("{} ({} lines)", r.rule, r.lines))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                pgm_verifier::proof::Outcome::Different => {
                    format!("{difference_count} UNEXPLAINED DIFFERENCES")
                }
            };
            let mut text = format!(
                "  verify: {verdict}; {tables} tables ({sampled_tables} sampled), {sequences} sequences, {large_objects} large objects compared; report: {report}"
            );
            for line in differences.iter().take(20) {
                text.push_str(&format!("\n    {line}"));
            }
            Some(text)
        }
        // As these lines read before they were events: a warning about the
        // new cluster and a Patroni put-back stand alone, the rest belong
        // to the step that is running.
        Event::Notice {
            code: NoticeCode::NewClusterTrustsLocal,
            message,
        } => Some(format!("warning: {message}")),
        Event::Notice {
            code: NoticeCode::PatroniPutBack,
            message,
        } => Some(message.clone()),
        Event::Notice { message, .. } => Some(format!("  {message}")),
        Event::ConfigChange {
            file,
            setting,
            action,
            new_setting,
            new_value,
            reason,
            ..
        } => {
            let to = match (new_setting, new_value) {
                (Some(s), Some(v)) => format!(" → {s} = {v}"),
                (Some(s), None) => format!(" → {s}"),
                (None, Some(v)) => format!(" → {v}"),
                (None, None) => String::new(),
            };
            Some(format!("  {file}: {setting} {action}{to}: {reason}"))
        }
        Event::Progress { .. } => None,
        Event::Check {
            id,
            title,
            status,
            message,
            remedy,
            ..
        } => {
            let mark = match status {
                pgm_verifier::Status::Pass => "✓",
                pgm_verifier::Status::Warn => "!",
                pgm_verifier::Status::Fail => "✗",
                pgm_verifier::Status::Skip => "-",
            };
            if repeated_skip {
                return Some(format!("  {mark} {title} [{id}]"));
            }
            let mut text = format!("  {mark} {title} [{id}]: {message}");
            if let Some(remedy) = remedy {
                text.push_str(&format!("\n      fix: {remedy}"));
            }
            Some(text)
        }
        Event::Error {
            code,
            message,
            remedy,
            clusters,
            log,
            ..
        } => {
            let mut text = format!("error [{code}]: {message}");
            if let Some(remedy) = remedy {
                text.push_str(&format!("\n  fix: {remedy}"));
            }
            if let Some(log) = log {
                text.push_str(&format!("\n  log: {log}"));
            }
            if (clusters.old, clusters.new)
                != (ClusterCondition::NotNamed, ClusterCondition::NotNamed)
            {
                text.push_str(&format!(
                    "\n  old cluster: {}; new cluster: {}",
                    words(clusters.old),
                    words(clusters.new)
                ));
            }
            Some(text)
        }
        Event::Summary {
            command,
            result,
            checks,
            logs,
            next_steps,
            duration_ms,
            ..
        } => {
            let mut text = String::new();
            if let Some(c) = checks {
                text.push_str(&format!(
                    "{} passed, {} warnings, {} failed, {} skipped ({:.1} s)",
                    c.pass,
                    c.warn,
                    c.fail,
                    c.skip,
                    Duration::from_millis(*duration_ms).as_secs_f64()
                ));
            }
            let total = format!(
                " ({:.1} s in all)",
                Duration::from_millis(*duration_ms).as_secs_f64()
            );
            match *result {
                RunResult::Ok if *command == "check" => {
                    text.push_str("\n*Clusters are compatible*")
                }
                RunResult::Ok if *command == "backup" => {
                    text.push_str(&format!("\nBackup complete{total}."))
                }
                RunResult::Ok if *command == "restore" => {
                    text.push_str(&format!("\nRestore complete{total}."))
                }
                RunResult::Ok if *command == "post-upgrade" => {
                    text.push_str(&format!("\nThe steps after the upgrade are done{total}."))
                }
                RunResult::Ok => text.push_str(&format!("\nUpgrade complete{total}.")),
                RunResult::AfterStepFailed => text.push_str(&format!(
                    "\nUpgrade complete{total}, but a step after it failed (see the error above)."
                )),
                RunResult::Reverted => text.push_str(&format!("\nUpgrade reverted{total}.")),
                RunResult::ChecksFailed => {
                    text.push_str("\nThe clusters are not compatible yet; nothing was changed.")
                }
                RunResult::VerifyFailed | RunResult::Error => {}
            }
            if let Some(logs) = logs {
                text.push_str(&format!("\nLogs: {logs}"));
            }
            for step in next_steps {
                text.push_str(&format!("\nnext: {step}"));
            }
            Some(text.trim_start().to_string())
        }
    }
}

/// What a step does, in a few words, for the line that starts it (the
/// whole story of each: docs/upgrade.md, "The steps").
fn step_purpose(step: &str) -> Option<&'static str> {
    Some(match step {
        "checks" => "every check, nothing changed",
        "create-new-cluster" => "initdb makes the new cluster to match the old one",
        "backup" => "a logical backup of the old cluster",
        "dump-old" => "the old cluster's schema dumped (binary-upgrade mode)",
        "prepare-new" => "the new cluster's own catalog frozen",
        "handover-counters" => {
            "the old commit log and transaction and OID counters carried to the new cluster"
        }
        "restore-schema" => "the schema restored into the new cluster",
        "match-relations" => "old and new relation files matched",
        "protect-old" => {
            "the point of no return: the old cluster disabled (pg_control renamed pg_control.old)"
        }
        "transfer" => "the data files moved into the new cluster",
        "sync" => "the new cluster flushed to disk",
        "finish" => "the scripts for after the upgrade written",
        "verify" => "the new cluster compared with the old one",
        "analyze" => "statistics gathered",
        "update-extensions" => "extensions updated to the new installation's versions",
        "reindex-collation" => "indexes on changed collations rebuilt",
        "carry-config" => "the old configuration carried over",
        "record-old" => "the old cluster's rows measured for the later comparison",
        "standby-kit" => "the kit for the standbys written",
        "dump-all" => "every database dumped whole (dump and reload)",
        "restore-all" => "every database restored whole (dump and reload)",
        _ => return None,
    })
}

fn words(state: ClusterCondition) -> &'static str {
    match state {
        ClusterCondition::Unchanged => "unchanged",
        ClusterCondition::NotNamed => "none named",
        ClusterCondition::StartedAndStopped => "unchanged (its server was started privately and stopped cleanly)",
        ClusterCondition::RunningUntouched => "still running, only queried",
        ClusterCondition::Protected => "disabled so that it cannot be started by mistake: its global/pg_control is renamed to pg_control.old (and in swap mode its database directories may be in the new cluster: go back only with pg-migrate revert)",
        ClusterCondition::Incomplete => "half-made: it must be re-created before another attempt",
        ClusterCondition::Created => "created by pg-migrate, still empty",
        ClusterCondition::Upgraded => "upgraded: complete and consistent",
    }
}
