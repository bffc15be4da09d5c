//! The bin directories: the programs pg-migrate runs, their versions, and the
//! upgrade path between the two majors.

use crate::{Finding, Report, SideConfig, Which};
use pgm_cluster::{Error, Installation, Tool};
use std::io::ErrorKind;

#[allow(unused_imports)]
use super::*;

pub(crate) fn check_bindir(which: Which, side: &SideConfig) -> (Finding, Option<Installation>) {
    let (id, title) = match which {
        Which::Old => ("old-bindir", "old installation's programs"),
        Which::New => ("new-bindir", "new installation's programs"),
    };
    let dir = side.bindir.display();
    let install = match Installation::discover(&side.bindir) {
        Ok(install) => install,
        Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            let f = Finding::fail(
                id,
                title,
                "bindir_not_found",
                format!("the {} bin directory {dir} does not exist", which.name()),
                format!(
                    "pass the bin directory of the {} PostgreSQL installation with {}",
                    which.name(),
                    flag(which, true)
                ),
            );
            return (f, None);
        }
        Err(Error::Io { source, .. }) => {
            let f = Finding::fail(
                id,
                title,
                "bindir_unreadable",
                format!(
                    "the {} bin directory {dir} cannot be used: {source}",
                    which.name()
                ),
                "make it a directory this user can read and execute, or pass the right one with "
                    .to_string()
                    + flag(which, true),
            );
            return (f, None);
        }
        Err(e) => {
            let f = Finding::fail(
                id,
                title,
                "bindir_incomplete",
                format!("{e}: this is not the bin directory of a PostgreSQL installation"),
                format!(
                    "pass the directory that holds postgres and pg_ctl with {}",
                    flag(which, true)
                ),
            );
            return (f, None);
        }
    };
    let required: &[Tool] = match which {
        Which::Old => &Tool::REQUIRED_OLD,
        Which::New => &Tool::REQUIRED_NEW,
    };
    let missing = install.missing(required);
    if !missing.is_empty() {
        let names: Vec<String> = missing
            .iter()
            .map(|t| match install.broken.get(t) {
                Some(why) => format!("{} ({why})", t.file_name()),
                None => t.file_name().to_string(),
            })
            .collect();
        let remedy = match which {
            Which::Old => "the old side only needs postgres and pg_ctl; install them or pass the right directory with -b".to_string(),
            Which::New => format!(
                "install the full PostgreSQL {} (server and client programs) or pass its bin directory with -B",
                install.version.major
            ),
        };
        let f = Finding::fail(
            id,
            title,
            "bindir_incomplete",
            format!("{dir} lacks {}", names.join(", ")),
            remedy,
        );
        return (f, Some(install));
    }
    // Only what pg-migrate runs counts: another major there is refused,
    // another minor release (packages updated one at a time) only noted.
    let used: &[Tool] = match which {
        Which::Old => &Tool::USED_OLD,
        Which::New => &Tool::REQUIRED_NEW,
    };
    let mixed = install.version_mismatches(used);
    let list = |majors: bool| -> Vec<String> {
        mixed
            .iter()
            .filter(|(_, v)| (v.major != install.version.major) == majors)
            .map(|(t, v)| format!("{} is {v}", t.file_name()))
            .collect()
    };
    let (other_major, other_minor) = (list(true), list(false));
    if !other_major.is_empty() {
        let f = Finding::fail(
            id,
            title,
            "bindir_mixed_versions",
            format!(
                "{dir} mixes majors among the programs pg-migrate runs: postgres is {} but {}",
                install.version,
                other_major.join(", ")
            ),
            "point to a bin directory whose programs all come from one PostgreSQL major",
        );
        return (f, Some(install));
    }
    if !other_minor.is_empty() {
        let f = Finding::warn(
            id,
            title,
            "bindir_mixed_minor",
            format!(
                "{dir} holds programs of other minor releases: postgres is {} but {}; programs of one major work together, so the upgrade goes on",
                install.version,
                other_minor.join(", ")
            ),
            "update the installation's packages to one minor release when convenient",
        );
        return (f, Some(install));
    }
    let f = Finding::pass(
        id,
        title,
        format!(
            "PostgreSQL {} in {dir} ({} programs found)",
            install.version,
            install.tools.len()
        ),
    );
    (f, Some(install))
}

pub(crate) fn check_version_pair(report: &Report) -> Finding {
    let (id, title) = ("version-pair", "upgrade path");
    let (Some(old), Some(new)) = (&report.old.install, &report.new.install) else {
        return Finding::skip(id, title, "both installations must be known first");
    };
    let (old_major, new_major) = (old.version.major, new.version.major);
    if old_major >= new_major {
        return Finding::fail(
            id,
            title,
            "version_not_newer",
            format!(
                "the old installation is PostgreSQL {old_major} and the new one {new_major}: an upgrade must go to a newer major"
            ),
            "check that -b names the old installation and -B the new one (they may be swapped)",
        );
    }
    if !old_major.is_supported_as_old() {
        return Finding::fail(
            id,
            title,
            "version_unsupported",
            format!("upgrading from PostgreSQL {old_major} is not supported: pg-migrate upgrades from 10 to 17"),
            "upgrade to PostgreSQL 10 or later first (with that release's pg_upgrade or by dump and restore)",
        );
    }
    if !new_major.is_supported_as_new() {
        return Finding::fail(
            id,
            title,
            "version_unsupported",
            format!("upgrading to PostgreSQL {new_major} is not supported: pg-migrate upgrades to 13 up to 18"),
            "use a new installation of PostgreSQL 18 or another supported major",
        );
    }
    Finding::pass(id, title, format!("PostgreSQL {old_major} → {new_major}"))
}
