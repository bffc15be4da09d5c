//! Where the files go: the tablespaces, the transfer mode the filesystems
//! allow (tried for real), and the room a copy needs.

use pgm_cluster::TransferMode;

use crate::{CheckConfig, Finding, Report};
use std::collections::BTreeMap;
use std::path::Path;

#[allow(unused_imports)]
use super::*;

/// Bytes in every file under `dir` (what a copy of it needs).
pub(crate) fn tree_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Bytes under a `base` directory in relation files a copy transfers (user
/// relations: file numbers from 16384 on, every fork and segment) and in
/// the rest (the catalogs, which the new cluster makes again by restoring).
pub(crate) fn split_base(base: &Path) -> (u64, u64) {
    const FIRST_NORMAL_OBJECT_ID: u64 = 16384;
    let mut user = 0;
    let mut other = 0;
    for entry in walkdir::WalkDir::new(base)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        if !entry.file_type().is_file() {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let name = entry.file_name().to_string_lossy();
        let number: String = name.chars().take_while(char::is_ascii_digit).collect();
        match number.parse::<u64>() {
            Ok(n) if n >= FIRST_NORMAL_OBJECT_ID => user += meta.len(),
            _ => other += meta.len(),
        }
    }
    (user, other)
}

pub(crate) fn device(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let existing = path.ancestors().find(|p| p.exists())?;
    std::fs::metadata(existing).ok().map(|m| m.dev())
}

pub(crate) fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let stat = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

pub(crate) fn human_bytes(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

/// The new cluster puts its files for each tablespace in a directory named
/// for its major and catalog version beside the old one's; one that exists
/// already (an earlier attempt, or another cluster sharing the location)
/// would make the restore fail.
pub(crate) fn new_tablespace_dirs(report: &Report, tablespaces: &[std::path::PathBuf]) -> Finding {
    let (id, title) = (
        "new-tablespace-dirs",
        "the tablespaces have room for the new major's directory",
    );
    let Some(new_major) = report.new.install.as_ref().map(|i| i.version.major) else {
        return Finding::skip(id, title, "the new installation is unknown");
    };
    // Without a new cluster yet its catalog version is unknown: any
    // directory of the new major is in the way.
    let exact = report
        .new
        .control
        .as_ref()
        .map(|c| format!("PG_{}_{}", new_major, c.catalog_version));
    // The restore makes the new cluster's directory in each location: one
    // this user cannot write would fail it half-way.
    let unwritable: Vec<String> = tablespaces
        .iter()
        .filter(|location| {
            nix::unistd::access(
                location.as_path(),
                nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            )
            .is_err()
        })
        .map(|p| p.display().to_string())
        .collect();
    if !unwritable.is_empty() {
        return Finding::fail(
            id,
            title,
            "tablespace_not_writable",
            format!(
                "the new cluster's directory for these tablespaces must be made beside the old one's, but this user cannot write to their locations: {}",
                unwritable.join(", ")
            ),
            "give the cluster's owner write access to those directories (as when the tablespaces were created), or run pg-migrate as the user that owns them",
        );
    }
    let prefix = format!("PG_{new_major}_");
    let found: Vec<String> = tablespaces
        .iter()
        .flat_map(|location| {
            std::fs::read_dir(location)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
        })
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            match &exact {
                Some(exact) => name == exact.as_str(),
                None => name.starts_with(&prefix),
            }
        })
        .map(|p| p.display().to_string())
        .collect();
    if found.is_empty() {
        Finding::pass(
            id,
            title,
            match tablespaces.len() {
                0 => "no user tablespaces".to_string(),
                1 => "the 1 user tablespace has room for the new cluster's directory".to_string(),
                n => format!("all {n} user tablespaces have room for the new cluster's directory"),
            },
        )
    } else {
        Finding::fail(
            id,
            title,
            "new_tablespace_dir_exists",
            format!(
                "the new cluster's tablespace directories exist already: {}",
                found.join(", ")
            ),
            "remove them if they hold nothing you need (a leftover of an earlier attempt: pg-migrate revert -D NEW removes its own), or give the other cluster that shares the location its own",
        )
    }
}

/// Link, clone and swap need one filesystem (clone one that can clone);
/// copy_file_range must work between the two. Tried for real with a scratch
/// file in the new directory (the old cluster's PG_VERSION is only read).
pub(crate) fn check_transfer_mode(
    config: &CheckConfig,
    old: &Path,
    new: &Path,
    tablespaces: &[std::path::PathBuf],
    new_major: Option<pgm_cluster::PgMajor>,
) -> Finding {
    let (id, title) = ("transfer-mode", "filesystems allow the transfer mode");
    let mode = config.transfer;
    let flag = mode.flag();
    if mode == TransferMode::Swap && new_major.is_some_and(|m| !m.preserves_relfilenumbers()) {
        return Finding::fail(
            id,
            title,
            "swap_not_possible",
            "--swap needs a new cluster of PostgreSQL 15 or later, which keeps every relation file's name (relfilenumber)",
            "use --link or --copy",
        );
    }
    let same_device = device(old) == device(new);
    // Clones may cross devices (btrfs subvolumes): the probe decides.
    if matches!(mode, TransferMode::Link | TransferMode::Swap) && !same_device {
        return Finding::fail(
            id,
            title,
            "cross_device_link",
            format!(
                "{flag} needs the old and new data directories on one filesystem; {} and {} are on different ones",
                old.display(),
                new.display()
            ),
            "put the new data directory on the old one's filesystem, or use --copy",
        );
    }
    if mode == TransferMode::Copy {
        return Finding::pass(id, title, "copy mode works across filesystems");
    }
    // The new directory, or the existing directory it will be made in.
    let Some(target) = new.ancestors().find(|p| p.is_dir()) else {
        return Finding::skip(id, title, "no existing directory to try the transfer in");
    };
    // Each tablespace's files go beside the old ones, in the same location:
    // tried there too, from one of the old cluster's files in it.
    let mut trials = vec![(old.join("PG_VERSION"), target.to_path_buf())];
    for location in tablespaces {
        let sample = walkdir::WalkDir::new(location)
            .min_depth(2)
            .into_iter()
            .flatten()
            .find(|e| e.file_type().is_file());
        if let Some(sample) = sample {
            trials.push((sample.into_path(), location.clone()));
        }
    }
    let outcome = trials
        .iter()
        .try_for_each(|(from, into)| (config.probe)(mode.file_mode(), from, into));
    match outcome {
        Ok(()) => Finding::pass(
            id,
            title,
            match mode {
                TransferMode::Link => "old and new data directories share a filesystem: hard links work".to_string(),
                _ => format!("{flag} works from the old data directory into {}", target.display()),
            },
        ),
        Err(e) => match mode {
            TransferMode::Clone => Finding::fail(
                id,
                title,
                "clone_unsupported",
                format!("the filesystem cannot clone files (reflink): {e}"),
                "use --link or --copy, or put both clusters on a filesystem that clones (XFS made with reflink=1, btrfs)",
            ),
            TransferMode::CopyFileRange => Finding::fail(
                id,
                title,
                "copy_file_range_unsupported",
                format!("copy_file_range does not work here: {e}"),
                "use --copy",
            ),
            _ => Finding::fail(
                id,
                title,
                "cross_device_link",
                format!("{flag} does not work between the data directories: {e}"),
                "put the new data directory on the old one's filesystem, or use --copy",
            ),
        },
    }
}

/// Link mode needs one filesystem; copy mode needs room for the data, the
/// new cluster's own files and the pristine copy pg-migrate keeps of it.
pub(crate) fn check_filesystems(config: &CheckConfig, report: &Report) -> Vec<Finding> {
    let (link_id, link_title) = ("transfer-mode", "filesystems allow the transfer mode");
    let (space_id, space_title) = ("disk-space", "room for the new cluster");
    let Some(old) = report.old.datadir.as_ref() else {
        return vec![
            Finding::skip(
                "old-tablespace-locations",
                "tablespaces outside the old data directory",
                "no old data directory",
            ),
            Finding::skip(
                "new-tablespace-dirs",
                "the tablespaces have room for the new major's directory",
                "no old data directory",
            ),
            Finding::skip(link_id, link_title, "no old data directory"),
            Finding::skip(space_id, space_title, "no old data directory"),
        ];
    };
    let new = &config.new.datadir;
    // Old tablespaces: the new cluster's files go beside them, in the same place.
    let tablespaces: Vec<std::path::PathBuf> = std::fs::read_dir(old.path.join("pg_tblspc"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    let inside: Vec<String> = tablespaces
        .iter()
        .filter(|t| t.starts_with(&old.path))
        .map(|t| t.display().to_string())
        .collect();
    out.push(if inside.is_empty() {
        Finding::pass(
            "old-tablespace-locations",
            "tablespaces outside the old data directory",
            match tablespaces.len() {
                0 => "no user tablespaces".to_string(),
                1 => "1 user tablespace, outside the data directory".to_string(),
                n => format!("{n} user tablespaces, none inside the data directory"),
            },
        )
    } else {
        Finding::warn(
            "old-tablespace-locations",
            "tablespaces outside the old data directory",
            "tablespace_in_datadir",
            format!(
                "these tablespaces lie inside the old data directory: {}; the new cluster's files will be put beside them, so deleting the old data directory later would delete them too",
                inside.join(", ")
            ),
            "no delete_old_cluster.sh is written; after the upgrade, move those tablespaces' contents out (ALTER TABLE … SET TABLESPACE to a tablespace elsewhere) before removing the old data directory",
        )
    });
    out.push(new_tablespace_dirs(report, &tablespaces));
    let new_major = report.new.install.as_ref().map(|i| i.version.major);
    out.push(check_transfer_mode(
        config,
        &old.path,
        new,
        &tablespaces,
        new_major,
    ));
    match config.transfer {
        TransferMode::Link | TransferMode::Clone | TransferMode::Swap => {
            out.push(Finding::pass(
                space_id,
                space_title,
                format!("{} copies no data", config.transfer.flag()),
            ));
        }
        TransferMode::Copy | TransferMode::CopyFileRange => {
            // Needs per filesystem: the data directory's share, each tablespace's.
            let mut needs: BTreeMap<u64, (u64, std::path::PathBuf)> = BTreeMap::new();
            let mut add = |path: &Path, bytes: u64| {
                if let Some(dev) = device(path) {
                    let entry = needs.entry(dev).or_insert((0, path.to_path_buf()));
                    entry.0 += bytes;
                }
            };
            let new_cluster = if new.exists() {
                tree_size(new)
            } else {
                64 << 20
            };
            // What is copied, and room for the new cluster's own catalogs
            // (as large as the old ones, besides what initdb made).
            let (relations, catalogs) = split_base(&old.path.join("base"));
            let mut copied = relations;
            add(new, relations + catalogs + 2 * new_cluster);
            for location in &tablespaces {
                let size = std::fs::read_dir(location)
                    .map(|entries| {
                        entries
                            .flatten()
                            .filter(|e| {
                                e.file_name()
                                    .to_string_lossy()
                                    .starts_with(&format!("PG_{}_", old.major))
                            })
                            .map(|e| tree_size(&e.path()))
                            .sum()
                    })
                    .unwrap_or(0);
                copied += size;
                add(location, size);
            }
            let mut short = Vec::new();
            let mut total = 0;
            for (need, path) in needs.values() {
                total += need;
                let need = need + need / 20;
                if let Some(free) = free_bytes(path) {
                    if free < need {
                        short.push(format!(
                            "{} needs about {} but has {} free",
                            path.display(),
                            human_bytes(need),
                            human_bytes(free)
                        ));
                    }
                }
            }
            out.push(if short.is_empty() {
                Finding::pass(
                    space_id,
                    space_title,
                    format!(
                        "about {} of relation files to copy and {} for the new cluster's catalogs: room for both",
                        human_bytes(copied),
                        human_bytes(total.saturating_sub(copied))
                    ),
                )
            } else {
                Finding::fail(
                    space_id,
                    space_title,
                    "insufficient_space",
                    format!("not enough free space for a copy: {}", short.join("; ")),
                    "free space there, put the new cluster on a larger filesystem, or use --link (no copy) if old and new can share a filesystem",
                )
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_counts_user_relation_files_apart_from_the_catalogs() {
        let dir = std::env::temp_dir().join(format!("pgm-split-base-{}", std::process::id()));
        let db = dir.join("base/5");
        std::fs::create_dir_all(&db).unwrap();
        for (name, len) in [
            ("1259", 100),
            ("2619_fsm", 10),
            ("PG_VERSION", 3),
            ("16384", 1000),
            ("16384.1", 500),
            ("16385_vm", 20),
        ] {
            std::fs::write(db.join(name), vec![0u8; len]).unwrap();
        }
        assert_eq!(split_base(&dir.join("base")), (1520, 113));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
