//! The initdb command that would make a new cluster match the old one: the
//! remedy for every mismatch that only re-creating the new cluster can fix.

use pgm_cluster::command::shell_quote;

use crate::{CheckConfig, Report};

/// The initdb command (program first) that makes a new cluster matching the old one.
pub fn suggested_initdb(config: &CheckConfig, report: &Report) -> String {
    matching_initdb(config, report)
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The same as words: program path, then arguments.
pub fn matching_initdb(config: &CheckConfig, report: &Report) -> Vec<String> {
    let bindir = report
        .new
        .install
        .as_ref()
        .map(|i| i.bindir.clone())
        .unwrap_or_else(|| config.new.bindir.clone());
    let new_major = report.new.install.as_ref().map(|i| i.version.major);
    let mut words = vec![
        bindir.join("initdb").display().to_string(),
        "-D".to_string(),
        config.new.datadir.display().to_string(),
    ];
    let catalog = report.old.catalog.as_ref();
    let user = catalog
        .map(|c| c.install_user.clone())
        .unwrap_or_else(|| config.user.clone());
    words.extend(["-U".to_string(), user]);
    if let Some(locale) = catalog.map(|c| &c.template0) {
        words.push(format!("--encoding={}", locale.encoding));
        match locale.provider.as_str() {
            "icu" => {
                words.push("--locale-provider=icu".into());
                words.push(format!(
                    "--icu-locale={}",
                    locale.locale.clone().unwrap_or_default()
                ));
            }
            "builtin" => {
                words.push("--locale-provider=builtin".into());
                words.push(format!(
                    "--builtin-locale={}",
                    locale.locale.clone().unwrap_or_default()
                ));
            }
            _ => {}
        }
        if locale.collate == locale.ctype {
            words.push(format!("--locale={}", locale.collate));
        } else {
            words.push(format!("--lc-collate={}", locale.collate));
            words.push(format!("--lc-ctype={}", locale.ctype));
        }
    }
    // A cluster whose files the group may read (initdb -g) stays so.
    let group_access = report.old.datadir.as_ref().is_some_and(|d| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&d.path).is_ok_and(|m| m.permissions().mode() & 0o070 != 0)
    });
    if group_access {
        words.push("--allow-group-access".into());
    }
    if let Some(control) = &report.old.control {
        words.push(format!(
            "--wal-segsize={}",
            control.wal_segment_size / (1024 * 1024)
        ));
        let checksums_on = control.data_checksum_version != 0;
        match (checksums_on, new_major) {
            (true, _) => words.push("--data-checksums".into()),
            (false, Some(major)) if major.initdb_has_no_data_checksums() => {
                words.push("--no-data-checksums".into())
            }
            (false, _) => {}
        }
    }
    words
}
