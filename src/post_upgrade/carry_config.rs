//! `--carry-config`: the old cluster's settings, pg_hba.conf and pg_ident.conf
//! carried into the new cluster, renamed or left out where the new major
//! differs, proven by a real private start, and put back on any failure.

use crate::cli::Settings;
use crate::failure::{Code, Failure};
use crate::output::{Event, Printer};
use crate::rundir::RunDir;
use pgm_cluster::{DataDir, Tool};
use std::path::{Path, PathBuf};

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------
// carry-config

pub(crate) fn carry_config(
    settings: &Settings,
    printer: &Printer,
    upgraded: &Upgraded<'_>,
    run_dir: &RunDir,
) -> Result<(), Failure> {
    let log_dir = &run_dir.log_dir();
    let old_dir = upgraded.old_config_dir.as_ref().ok_or_else(|| Failure {
        code: Code::AfterStepFailed,
        message: "the old cluster's configuration directory is not known".into(),
        remedy: Some("pass it with -d".into()),
        clusters: None,
    })?;
    let new_dir = upgraded.new_dir.pg_ctl_dir().to_path_buf();
    let io = |path: &Path, e: std::io::Error| {
        Failure::new(Code::AfterStepFailed, format!("{}: {e}", path.display()))
    };
    let read = |path: &Path| std::fs::read_to_string(path).map_err(|e| io(path, e));
    let old_conf_path = old_dir.join("postgresql.conf");
    let old_conf = read(&old_conf_path)?;
    let new_conf_path = new_dir.join("postgresql.conf");
    let new_conf = read(&new_conf_path)?;
    // The new cluster's own files stay its own.
    let new_values: Vec<(String, String)> = [
        "data_directory",
        "hba_file",
        "ident_file",
        "external_pid_file",
    ]
    .iter()
    .filter_map(|name| crate::config::value_of(&new_conf, name).map(|v| (name.to_string(), v)))
    .collect();
    let old_major = DataDir::open(old_dir, None)
        .map(|d| d.major.number())
        .or_else(|_| {
            upgraded
                .old_version
                .as_deref()
                .and_then(|v| v.split('.').next()?.parse().ok())
                .ok_or(())
        })
        .unwrap_or(0);
    let new_major = upgraded.new_install.version.major.number();
    let wal_mb = upgraded
        .new_dir
        .control()
        .map(|c| u64::from(c.wal_segment_size) / (1024 * 1024))
        .unwrap_or(16);
    // Where the old cluster keeps its access files.
    let old_file = |setting: &str, default: &str| {
        crate::config::value_of(&old_conf, setting)
            .map(|v| {
                let p = PathBuf::from(v);
                if p.is_absolute() {
                    p
                } else {
                    old_dir.join(p)
                }
            })
            .unwrap_or_else(|| old_dir.join(default))
    };
    let new_file = |setting: &str, default: &str| {
        crate::config::value_of(&new_conf, setting)
            .map(|v| {
                let p = PathBuf::from(v);
                if p.is_absolute() {
                    p
                } else {
                    new_dir.join(p)
                }
            })
            .unwrap_or_else(|| new_dir.join(default))
    };
    let mut carried: Vec<(PathBuf, String)> = Vec::new();
    let mut changes = Vec::new();
    let (conf, conf_changes) =
        crate::config::carry(&old_conf, old_major, new_major, wal_mb, &new_values);
    carried.push((new_conf_path.clone(), conf));
    changes.extend(conf_changes.into_iter().map(|c| ("postgresql.conf", c)));
    let old_auto = old_dir.join("postgresql.auto.conf");
    if old_auto.exists() {
        let (auto, auto_changes) =
            crate::config::carry(&read(&old_auto)?, old_major, new_major, wal_mb, &[]);
        carried.push((upgraded.new_dir.path.join("postgresql.auto.conf"), auto));
        changes.extend(
            auto_changes
                .into_iter()
                .map(|c| ("postgresql.auto.conf", c)),
        );
    }
    for (setting, default) in [("hba_file", "pg_hba.conf"), ("ident_file", "pg_ident.conf")] {
        let from = old_file(setting, default);
        carried.push((new_file(setting, default), read(&from)?));
    }
    // The new cluster's files as they were, to put back if the carried
    // ones cannot be made acceptable (and for the record).
    let saved = crate::journal::dir(&upgraded.new_dir.path).join("carry-config");
    std::fs::create_dir_all(&saved).map_err(|e| io(&saved, e))?;
    let mut originals = Vec::new();
    for (path, _) in &carried {
        let text = std::fs::read(path).unwrap_or_default();
        let name = path.file_name().unwrap_or_default();
        let keep = saved.join(name);
        if !keep.exists() {
            std::fs::write(&keep, &text).map_err(|e| io(&keep, e))?;
        }
        originals.push((path.clone(), text));
    }
    let put_back = |originals: &[(PathBuf, Vec<u8>)]| {
        for (path, text) in originals {
            let _ = std::fs::write(path, text);
        }
    };
    for (path, text) in &carried {
        if let Err(e) = std::fs::write(path, text) {
            put_back(&originals);
            return Err(io(path, e));
        }
    }
    // The new server judges: what it rejects is commented out, with its
    // reason; anything else it cannot accept undoes the step.
    let mut rejected_all = Vec::new();
    let mut accepted = false;
    for _ in 0..50 {
        let verdict = validate(upgraded, log_dir);
        let Err(output) = verdict else {
            accepted = true;
            break;
        };
        let rejected = crate::config::rejected_settings(&output);
        let mut fixed = false;
        for (setting, message) in &rejected {
            for (path, text) in carried.iter_mut() {
                if !path.ends_with("postgresql.conf") && !path.ends_with("postgresql.auto.conf") {
                    continue;
                }
                let (new_text, found) =
                    crate::config::comment_out(text, setting, "the new server rejects it");
                if found {
                    *text = new_text;
                    fixed = true;
                    let file = path
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    rejected_all.push((file, setting.clone(), message.clone()));
                    let _ = std::fs::write(&*path, &*text);
                }
            }
        }
        if !fixed {
            put_back(&originals);
            return Err(Failure {
                code: Code::AfterStepFailed,
                message: format!(
                    "the new server does not accept the carried configuration: {}",
                    output.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ")
                ),
                remedy: Some(format!(
                    "the new cluster's own configuration is back in place (a copy is in {}); carry the settings by hand",
                    saved.display()
                )),
                clusters: None,
            });
        }
    }
    if !accepted {
        put_back(&originals);
        return Err(Failure {
            code: Code::AfterStepFailed,
            message: "the new server still rejects the carried configuration after commenting out 50 settings".into(),
            remedy: Some(format!(
                "the new cluster's own configuration is back in place (a copy is in {}); carry the settings by hand",
                saved.display()
            )),
            clusters: None,
        });
    }
    // Certificate and key files named relative to the old data directory
    // (the defaults server.crt and server.key among them) come along.
    let copied =
        copy_relative_files(upgraded, &old_conf, &carried).inspect_err(|_| put_back(&originals))?;
    // Last, a real start: what postgres -C does not load (certificates,
    // shared libraries) must work too, or the step is undone.
    if let Err(e) = new_server(settings, upgraded, run_dir).and_then(|server| {
        server
            .stop()
            .map_err(|e| Failure::new(Code::ServerStopFailed, e))
    }) {
        put_back(&originals);
        for path in &copied {
            let _ = std::fs::remove_file(path);
        }
        return Err(Failure {
            code: Code::AfterStepFailed,
            message: format!(
                "the new server does not start with the carried configuration: {}",
                e.message
            ),
            remedy: Some(format!(
                "the new cluster's own configuration is back in place (a copy is in {}); carry the settings by hand",
                saved.display()
            )),
            clusters: None,
        });
    }
    for path in &copied {
        printer.emit(&Event::ConfigChange {
            file: "postgresql.conf".into(),
            setting: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            action: "file_copied",
            old_value: None,
            new_setting: None,
            new_value: Some(path.display().to_string()),
            reason:
                "a file the settings name relative to the data directory, copied from the old one"
                    .into(),
        });
    }
    for (file, change) in &changes {
        printer.emit(&Event::config_change(file, change.clone()));
    }
    for (file, setting, message) in rejected_all {
        printer.emit(&Event::ConfigChange {
            file,
            setting,
            action: "removed",
            old_value: None,
            new_setting: None,
            new_value: None,
            reason: format!("the new server rejects it: {message}"),
        });
    }
    Ok(())
}

/// SSL settings whose files a relative path puts in the data directory,
/// with the default of those that have one.
pub(crate) const DATA_DIR_FILES: [(&str, Option<&str>); 6] = [
    ("ssl_cert_file", Some("server.crt")),
    ("ssl_key_file", Some("server.key")),
    ("ssl_ca_file", None),
    ("ssl_crl_file", None),
    ("ssl_crl_dir", None),
    ("ssl_dh_params_file", None),
];

/// Copies the files the carried settings name relative to the data
/// directory (when ssl is on, or the setting is explicit) from the old data
/// directory into the new one, where the new one lacks them; returns what
/// was copied.
pub(crate) fn copy_relative_files(
    upgraded: &Upgraded<'_>,
    old_conf: &str,
    carried: &[(PathBuf, String)],
) -> Result<Vec<PathBuf>, Failure> {
    let Some(old_data) = upgraded.old_datadir.as_ref() else {
        return Ok(Vec::new());
    };
    let conf = carried
        .iter()
        .find(|(p, _)| p.ends_with("postgresql.conf"))
        .map(|(_, t)| t.as_str())
        .unwrap_or(old_conf);
    let ssl_on = crate::config::value_of(conf, "ssl")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "on" | "true" | "yes" | "1"));
    let mut copied = Vec::new();
    for (setting, default) in DATA_DIR_FILES {
        let value = match (crate::config::value_of(conf, setting), default) {
            (Some(v), _) if !v.is_empty() => v,
            (None, Some(d)) if ssl_on => d.to_string(),
            _ => continue,
        };
        let relative = PathBuf::from(&value);
        if relative.is_absolute() {
            continue;
        }
        let (from, to) = (
            old_data.join(&relative),
            upgraded.new_dir.path.join(&relative),
        );
        if !from.is_file() || to.exists() {
            continue;
        }
        pgm_cluster::datadir::copy_file(&from, &to)
            .map_err(|e| Failure::new(Code::AfterStepFailed, format!("{}: {e}", to.display())))?;
        copied.push(to);
    }
    Ok(copied)
}

/// Whether the new server accepts its configuration files: `postgres -C`
/// reads them as a start would, without starting. The server's words on
/// failure.
pub(crate) fn validate(upgraded: &Upgraded<'_>, log_dir: &Path) -> Result<(), String> {
    let command = upgraded
        .new_install
        .command(Tool::Postgres)
        .map_err(|e| e.to_string())?
        .arg("-D")
        .arg(upgraded.new_dir.pg_ctl_dir())
        .args(["-C", "data_directory"]);
    let (status, captured) = command.run_unchecked().map_err(|e| e.to_string())?;
    append(
        &log_dir.join("carry-config.log"),
        &format!(
            "{}\n{}{}",
            command.command_line(),
            captured.stdout,
            captured.stderr
        ),
    );
    if status.success() {
        Ok(())
    } else {
        Err(captured.stderr)
    }
}
