//! Checks that only read files and run `--version`: no server is started, so
//! a failure here leaves both data directories byte-for-byte as they were.
//! This file runs them in order; `installation` judges the bin directories,
//! `control` the data directories and their pg_control, `filesystems` where
//! the files go.

use crate::initdb::suggested_initdb;
use crate::{CheckConfig, Finding, Report, SideConfig, Which};
use pgm_cluster::Tool;
use std::io::ErrorKind;
use std::path::Path;

mod control;
mod filesystems;
mod installation;

pub use control::*;
pub(crate) use filesystems::*;
pub(crate) use installation::*;

pub(crate) fn run(config: &CheckConfig, report: &mut Report) -> Vec<Finding> {
    let mut out = Vec::new();
    for which in [Which::Old, Which::New] {
        let (side, facts) = side(config, report, which);
        let (finding, install) = check_bindir(which, side);
        facts.install = install;
        out.push(finding);
    }
    out.push(check_version_pair(report));
    for which in [Which::Old, Which::New] {
        if which == Which::New && config.create_new && is_missing(&config.new.datadir) {
            out.push(check_new_parent(config, report));
            continue;
        }
        let (side, facts) = side(config, report, which);
        let postgres = facts
            .install
            .as_ref()
            .and_then(|i| i.path(Tool::Postgres))
            .map(Path::to_path_buf);
        let (finding, datadir) = check_datadir(which, side, postgres.as_deref());
        facts.datadir = datadir;
        out.push(finding);
    }
    out.push(check_distinct(config, report));
    out.extend(side_details(Which::Old, config, report));
    if report.new_to_create {
        for (id, title) in NEW_CLUSTER_CHECKS {
            out.push(Finding::skip(
                id,
                title,
                "the new cluster does not exist yet: checked once pg-migrate has created it",
            ));
        }
    } else {
        out.extend(side_details(Which::New, config, report));
        out.extend(compare_with_old(config, report));
    }
    out.push(check_char_signedness(config, report));
    out.extend(check_filesystems(config, report));
    out
}

/// The checks of the new cluster that wait until it exists when pg-migrate creates it.
pub(crate) const NEW_CLUSTER_CHECKS: [(&str, &str); 13] = [
    (
        "new-datadir-version",
        "new data directory matches the new installation",
    ),
    ("new-control", "new pg_control"),
    ("new-server", "new cluster shut down cleanly"),
    ("control-alignment", "maximum data alignment"),
    ("control-block-size", "database block size"),
    (
        "control-segment-size",
        "blocks per segment of large relation",
    ),
    ("control-wal-block-size", "WAL block size"),
    ("control-wal-segment-size", "WAL segment size"),
    ("control-name-length", "maximum identifier length"),
    ("control-index-columns", "maximum columns in an index"),
    ("control-toast-chunk", "TOAST chunk size"),
    ("control-large-object-chunk", "large-object chunk size"),
    ("control-data-checksums", "data checksums"),
];

/// The on-disk checks of a new cluster pg-migrate has just created.
pub(crate) fn run_created_new(config: &CheckConfig, report: &mut Report) -> Vec<Finding> {
    let mut out = Vec::new();
    let postgres = report
        .new
        .install
        .as_ref()
        .and_then(|i| i.path(Tool::Postgres))
        .map(Path::to_path_buf);
    let (finding, datadir) = check_datadir(Which::New, &config.new, postgres.as_deref());
    report.new.datadir = datadir;
    out.push(finding);
    out.extend(side_details(Which::New, config, report));
    out.extend(compare_with_old(config, report));
    out
}

pub(crate) fn is_missing(path: &Path) -> bool {
    matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == ErrorKind::NotFound)
}

/// A new data directory that does not exist yet will be made by initdb: its
/// parent must exist and be writable.
pub(crate) fn check_new_parent(config: &CheckConfig, report: &mut Report) -> Finding {
    let (id, title) = ("new-datadir", "new data directory");
    let dir = &config.new.datadir;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let usable = parent.is_dir()
        && nix::unistd::access(
            parent,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .is_ok();
    if !usable {
        return Finding::fail(
            id,
            title,
            "datadir_not_found",
            format!(
                "the new data directory {} does not exist, and its parent {} is not a directory this user can write to",
                dir.display(),
                parent.display()
            ),
            "create the parent directory (owned by this user) or pass another path with -D/--new-datadir (PGDATANEW)",
        );
    }
    report.new_to_create = true;
    Finding::pass(
        id,
        title,
        format!(
            "{} does not exist yet: pg-migrate will create it with the new installation's initdb, matching the old cluster (encoding, locale, data checksums, WAL segment size, install user)",
            dir.display()
        ),
    )
}

pub(crate) fn side_details(
    which: Which,
    config: &CheckConfig,
    report: &mut Report,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let (side, facts) = side(config, report, which);
    if let Some(f) =
        check_datadir_version(which, side, facts.install.as_ref(), facts.datadir.as_ref())
    {
        out.push(f);
    }
    let (findings, control, server) =
        check_control_and_server(which, side, facts.datadir.as_ref(), config);
    facts.control = control;
    facts.server = server;
    out.extend(findings);
    out
}

pub(crate) fn compare_with_old(config: &CheckConfig, report: &Report) -> Vec<Finding> {
    match (&report.old.control, &report.new.control) {
        (Some(old), Some(new)) => compare_control(old, new, &suggested_initdb(config, report)),
        _ => Vec::new(),
    }
}

pub(crate) fn side<'a>(
    config: &'a CheckConfig,
    report: &'a mut Report,
    which: Which,
) -> (&'a SideConfig, &'a mut crate::SideFacts) {
    match which {
        Which::Old => (&config.old, &mut report.old),
        Which::New => (&config.new, &mut report.new),
    }
}

pub(crate) fn flag(which: Which, short_bin: bool) -> &'static str {
    match (which, short_bin) {
        (Which::Old, true) => "-b/--old-bindir (PGBINOLD)",
        (Which::New, true) => "-B/--new-bindir (PGBINNEW)",
        (Which::Old, false) => "-d/--old-datadir (PGDATAOLD)",
        (Which::New, false) => "-D/--new-datadir (PGDATANEW)",
    }
}
