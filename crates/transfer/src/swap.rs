//! `--swap`: whole database directories move from the old cluster into the
//! new one instead of file by file, and only the catalogs are exchanged: the
//! old cluster's catalog files go aside (into `moved_for_upgrade/` beside the
//! old directory, so that deleting the old cluster removes them), the new
//! cluster's restored catalog files take their place.
//!
//! Every step is a rename on one filesystem, and the state of each directory
//! can be read back from the filesystem plus one marker per directory, so an
//! interrupted swap can be finished (`swap` again) or undone (`unswap`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::{io, Error, FileMove};

/// One database directory (in the default tablespace or a user one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapDir {
    /// `<old tablespace dir>/<database oid>`.
    pub old_dir: PathBuf,
    /// `<new tablespace dir>/<database oid>`.
    pub new_dir: PathBuf,
    /// File names of user relations: they stay where they are. Everything
    /// else in a database directory belongs to the catalog.
    pub keep: BTreeSet<String>,
}

impl SwapDir {
    fn aside(&self) -> PathBuf {
        self.old_dir
            .parent()
            .unwrap_or(Path::new("/"))
            .join("moved_for_upgrade")
    }

    fn name(&self) -> String {
        self.old_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Where the new cluster's restored directory waits.
    pub fn moved_new(&self) -> PathBuf {
        self.aside().join(self.name())
    }

    /// Where the old cluster's catalog files wait.
    pub fn old_catalogs(&self) -> PathBuf {
        self.aside().join(format!("{}_old_catalogs", self.name()))
    }
}

/// Groups a transfer plan by database directory. Swapping needs every file
/// to keep its name (relfilenumbers preserved, as the new cluster does from
/// PostgreSQL 15 on); `None` names the first file that would not.
pub fn swap_dirs(moves: &[FileMove]) -> Result<Vec<SwapDir>, PathBuf> {
    let mut dirs: Vec<SwapDir> = Vec::new();
    for m in moves {
        let (Some(old_dir), Some(new_dir), Some(name)) =
            (m.from.parent(), m.to.parent(), m.from.file_name())
        else {
            return Err(m.from.clone());
        };
        if m.to.file_name() != Some(name) {
            return Err(m.from.clone());
        }
        let name = name.to_string_lossy().into_owned();
        match dirs.iter_mut().find(|d| d.old_dir == old_dir) {
            Some(d) if d.new_dir == new_dir => {
                d.keep.insert(name);
            }
            Some(_) => return Err(m.from.clone()),
            None => dirs.push(SwapDir {
                old_dir: old_dir.to_path_buf(),
                new_dir: new_dir.to_path_buf(),
                keep: BTreeSet::from([name]),
            }),
        }
    }
    Ok(dirs)
}

/// Exists from the moment every old catalog file of directory `index` is
/// aside until the revert has moved the new cluster's catalog files out of
/// it again: while it exists, the catalog files in the swapped directory
/// are the new cluster's.
fn marker(markers: &Path, index: usize) -> PathBuf {
    markers.join(format!("{index}.catalogs-aside"))
}

/// A rename that never replaces an existing name: a file of one cluster
/// must never silently take the place of one of the other's.
fn rename(from: &Path, to: &Path) -> Result<(), Error> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    let failed = |source| Error::Transfer {
        verb: "move",
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    };
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        // A filesystem without RENAME_NOREPLACE: look, then rename (nothing
        // else works on these directories meanwhile, the run holds the lock).
        Err(nix::errno::Errno::EINVAL) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(failed(std::io::Error::from(
                    std::io::ErrorKind::AlreadyExists,
                )));
            }
            std::fs::rename(from, to).map_err(failed)
        }
        Err(errno) => Err(failed(std::io::Error::from(errno))),
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(dir, e))
}

/// The regular files of `dir` whose names are not in `keep`.
fn catalog_files(dir: &Path, keep: &BTreeSet<String>) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().map_err(|e| io(dir, e))?.is_file() && !keep.contains(&name) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Moves the named files and makes both directories durable; `step` is
/// called before each rename (fault points count them).
fn move_all(names: &[String], from: &Path, to: &Path, step: &dyn Fn()) -> Result<(), Error> {
    for name in names {
        step();
        rename(&from.join(name), &to.join(name))?;
    }
    sync_dir(from)?;
    sync_dir(to)
}

/// Creates a marker durably.
fn set_marker(marker: &Path, markers: &Path) -> Result<(), Error> {
    std::fs::File::create(marker)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(marker, e))?;
    sync_dir(markers)
}

/// Removes a marker durably.
fn clear_marker(marker: &Path, markers: &Path) -> Result<(), Error> {
    std::fs::remove_file(marker).map_err(|e| io(marker, e))?;
    sync_dir(markers)
}

/// Swaps every directory (or finishes an interrupted swap); `progress` is
/// called with the number of directories done. `markers` is a directory
/// that survives until the upgrade ends (the journal's).
pub fn swap(dirs: &[SwapDir], markers: &Path, progress: &dyn Fn(usize)) -> Result<(), Error> {
    std::fs::create_dir_all(markers).map_err(|e| io(markers, e))?;
    for (index, dir) in dirs.iter().enumerate() {
        let (moved_new, old_catalogs) = (dir.moved_new(), dir.old_catalogs());
        // 1. The new cluster's restored directory goes aside.
        if !moved_new.exists() {
            std::fs::create_dir_all(&old_catalogs).map_err(|e| io(&old_catalogs, e))?;
            rename(&dir.new_dir, &moved_new)?;
            sync_dir(&dir.aside())?;
        }
        // 2. The old directory takes its place.
        if dir.old_dir.exists() {
            rename(&dir.old_dir, &dir.new_dir)?;
            sync_dir(dir.new_dir.parent().unwrap_or(Path::new("/")))?;
            sync_dir(dir.old_dir.parent().unwrap_or(Path::new("/")))?;
        }
        // 3. Its catalog files go aside; until the marker exists, every
        //    catalog file in it is the old cluster's.
        let marker = marker(markers, index);
        if !marker.exists() {
            let names = catalog_files(&dir.new_dir, &dir.keep)?;
            move_all(&names, &dir.new_dir, &old_catalogs, &|| {})?;
            set_marker(&marker, markers)?;
        }
        // 4. The new cluster's catalog files come in.
        let names = catalog_files(&moved_new, &dir.keep)?;
        move_all(&names, &moved_new, &dir.new_dir, &|| {})?;
        progress(index + 1);
    }
    Ok(())
}

/// Undoes `swap`, wholly or partly done, and can itself be cut short at
/// any point and run again: every old directory is back where the old
/// cluster keeps it with its own catalog files, the new cluster's
/// directories are back in place, and the aside directories are gone.
/// `step` is called before every rename with their running count.
///
/// The order is what makes it repeatable: while the marker exists, the
/// catalog files in the swapped directory are the new cluster's (they go
/// back aside); the marker goes only once they all have, durably; only
/// then do the old cluster's catalog files come back. No rename replaces
/// an existing name, so no file is ever moved over another.
pub fn unswap(dirs: &[SwapDir], markers: &Path, step: &dyn Fn(usize)) -> Result<(), Error> {
    let count = std::cell::Cell::new(0usize);
    let next = || {
        count.set(count.get() + 1);
        step(count.get());
    };
    for (index, dir) in dirs.iter().enumerate().rev() {
        let (moved_new, old_catalogs) = (dir.moved_new(), dir.old_catalogs());
        let marker = marker(markers, index);
        if marker.exists() {
            let names = catalog_files(&dir.new_dir, &dir.keep)?;
            move_all(&names, &dir.new_dir, &moved_new, &next)?;
            clear_marker(&marker, markers)?;
        }
        if old_catalogs.exists() {
            let names = catalog_files(&old_catalogs, &BTreeSet::new())?;
            if !names.is_empty() {
                move_all(&names, &old_catalogs, &dir.new_dir, &next)?;
            }
        }
        // The directory in the new cluster's place is the old one once the
        // new one went aside and the old one left its place.
        if moved_new.exists() && !dir.old_dir.exists() && dir.new_dir.exists() {
            next();
            rename(&dir.new_dir, &dir.old_dir)?;
            sync_dir(dir.old_dir.parent().unwrap_or(Path::new("/")))?;
            sync_dir(dir.new_dir.parent().unwrap_or(Path::new("/")))?;
        }
        if moved_new.exists() && !dir.new_dir.exists() {
            next();
            rename(&moved_new, &dir.new_dir)?;
            sync_dir(dir.new_dir.parent().unwrap_or(Path::new("/")))?;
        }
        for leftover in [&old_catalogs, &dir.aside()] {
            // Only empty directories go; anything else stays for a human.
            let _ = std::fs::remove_dir(leftover);
        }
        sync_dir(dir.old_dir.parent().unwrap_or(Path::new("/")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn tree(dir: &Path) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = walkdir(dir);
        out.sort();
        out
    }

    fn walkdir(dir: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    for (name, text) in walkdir(&p) {
                        out.push((format!("{}/{name}", e.file_name().to_string_lossy()), text));
                    }
                } else {
                    out.push((
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read_to_string(&p).unwrap(),
                    ));
                }
            }
        }
        out
    }

    /// Old: catalogs 1259 and PG_VERSION plus user files 16384, 16384_fsm;
    /// new: its own 1259, PG_VERSION and the restore's empty 16384.
    fn clusters(root: &Path) -> (Vec<SwapDir>, PathBuf) {
        let old = root.join("old/base/5");
        let new = root.join("new/base/5");
        write(&old.join("1259"), "old catalog");
        write(&old.join("PG_VERSION"), "15");
        write(&old.join("16384"), "user data");
        write(&old.join("16384_fsm"), "user fsm");
        write(&new.join("1259"), "new catalog");
        write(&new.join("PG_VERSION"), "18");
        write(&new.join("16384"), "");
        let moves: Vec<FileMove> = ["16384", "16384_fsm"]
            .iter()
            .map(|n| FileMove {
                from: old.join(n),
                to: new.join(n),
                bytes: 1,
            })
            .collect();
        (swap_dirs(&moves).unwrap(), root.join("markers"))
    }

    #[test]
    fn swap_exchanges_catalogs_and_unswap_restores_both_sides() {
        let root = tempfile::tempdir().unwrap();
        let (dirs, markers) = clusters(root.path());
        let old_before = tree(&root.path().join("old/base/5"));
        let new_before = tree(&root.path().join("new/base/5"));
        swap(&dirs, &markers, &|_| {}).unwrap();
        assert_eq!(
            tree(&root.path().join("new/base/5")),
            [
                ("1259".into(), "new catalog".into()),
                ("16384".into(), "user data".into()),
                ("16384_fsm".into(), "user fsm".into()),
                ("PG_VERSION".into(), "18".into()),
            ]
        );
        assert!(!root.path().join("old/base/5").exists());
        // Finishing again changes nothing.
        swap(&dirs, &markers, &|_| {}).unwrap();
        unswap(&dirs, &markers, &|_| {}).unwrap();
        assert_eq!(tree(&root.path().join("old/base/5")), old_before);
        assert_eq!(tree(&root.path().join("new/base/5")), new_before);
        assert!(!root.path().join("old/base/moved_for_upgrade").exists());
    }

    #[test]
    fn an_interrupted_swap_is_finished_or_undone_from_any_point() {
        // Stop after each of the renames in turn, by doing them by hand.
        for stage in 0..5 {
            let root = tempfile::tempdir().unwrap();
            let (dirs, markers) = clusters(root.path());
            let d = &dirs[0];
            let old_before = tree(&d.old_dir);
            let new_before = tree(&d.new_dir);
            std::fs::create_dir_all(&markers).unwrap();
            if stage >= 1 {
                std::fs::create_dir_all(d.old_catalogs()).unwrap();
                std::fs::rename(&d.new_dir, d.moved_new()).unwrap();
            }
            if stage >= 2 {
                std::fs::rename(&d.old_dir, &d.new_dir).unwrap();
            }
            if stage >= 3 {
                // Half of the old catalog files moved aside.
                std::fs::rename(d.new_dir.join("1259"), d.old_catalogs().join("1259")).unwrap();
            }
            if stage >= 4 {
                // All of them, the marker written, one new catalog file in.
                std::fs::rename(
                    d.new_dir.join("PG_VERSION"),
                    d.old_catalogs().join("PG_VERSION"),
                )
                .unwrap();
                std::fs::write(markers.join("0.catalogs-aside"), "").unwrap();
                std::fs::rename(d.moved_new().join("1259"), d.new_dir.join("1259")).unwrap();
            }
            let undone = tempfile::tempdir().unwrap();
            let copy = |from: &Path, to: &Path| {
                std::process::Command::new("cp")
                    .arg("-a")
                    .arg(from)
                    .arg(to)
                    .status()
                    .unwrap();
            };
            copy(root.path(), undone.path());
            let undone_root = undone.path().join(root.path().file_name().unwrap());
            let (undone_dirs, undone_markers) = {
                let moves: Vec<FileMove> = ["16384", "16384_fsm"]
                    .iter()
                    .map(|n| FileMove {
                        from: undone_root.join("old/base/5").join(n),
                        to: undone_root.join("new/base/5").join(n),
                        bytes: 1,
                    })
                    .collect();
                (swap_dirs(&moves).unwrap(), undone_root.join("markers"))
            };
            swap(&dirs, &markers, &|_| {}).unwrap();
            assert_eq!(
                tree(&d.new_dir)
                    .iter()
                    .map(|(n, t)| format!("{n}={t}"))
                    .collect::<Vec<_>>(),
                [
                    "1259=new catalog",
                    "16384=user data",
                    "16384_fsm=user fsm",
                    "PG_VERSION=18"
                ],
                "finished from stage {stage}"
            );
            unswap(&undone_dirs, &undone_markers, &|_| {}).unwrap();
            assert_eq!(
                tree(&undone_dirs[0].old_dir),
                old_before,
                "undone from stage {stage}"
            );
            assert_eq!(
                tree(&undone_dirs[0].new_dir),
                new_before,
                "undone from stage {stage}"
            );
        }
    }

    #[test]
    fn a_revert_cut_short_at_any_rename_and_run_again_gives_both_clusters_back() {
        // A full swap, then an unswap stopped before its k-th rename (a
        // signal, a crash), then a second unswap to the end.
        let mut renames_in_full = 0;
        for k in 1.. {
            let root = tempfile::tempdir().unwrap();
            let (dirs, markers) = clusters(root.path());
            let old_before = tree(&root.path().join("old/base/5"));
            let new_before = tree(&root.path().join("new/base/5"));
            swap(&dirs, &markers, &|_| {}).unwrap();
            let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                unswap(&dirs, &markers, &|n| {
                    if n == k {
                        panic!("cut short before rename {k}");
                    }
                })
            }));
            let finished_first_time = cut.is_ok();
            unswap(&dirs, &markers, &|_| {}).unwrap();
            assert_eq!(
                tree(&root.path().join("old/base/5")),
                old_before,
                "old cluster after a revert cut short before rename {k}"
            );
            assert_eq!(
                tree(&root.path().join("new/base/5")),
                new_before,
                "new cluster after a revert cut short before rename {k}"
            );
            assert!(!root.path().join("old/base/moved_for_upgrade").exists());
            if finished_first_time {
                renames_in_full = k - 1;
                break;
            }
        }
        // Two catalog files out and in, two directory renames.
        assert_eq!(renames_in_full, 6);
    }

    #[test]
    fn a_rename_never_replaces_a_file() {
        let root = tempfile::tempdir().unwrap();
        let (from, to) = (root.path().join("a"), root.path().join("b"));
        std::fs::write(&from, "a").unwrap();
        std::fs::write(&to, "b").unwrap();
        assert!(rename(&from, &to).is_err());
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "b");
        assert_eq!(std::fs::read_to_string(&from).unwrap(), "a");
    }

    #[test]
    fn a_renamed_relation_file_cannot_be_swapped() {
        let moves = [FileMove {
            from: PathBuf::from("/old/base/5/16384"),
            to: PathBuf::from("/new/base/5/16999"),
            bytes: 0,
        }];
        assert_eq!(swap_dirs(&moves), Err(PathBuf::from("/old/base/5/16384")));
    }
}
