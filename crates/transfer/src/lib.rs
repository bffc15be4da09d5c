//! `pgm-transfer` moves user data: it turns a relation map into file pairs
//! (every segment of every fork, in base/ or a tablespace) and links,
//! clones or copies them into the new cluster with `jobs` workers,
//! reporting files and bytes as it goes.
//!
//! It never writes to the old cluster's files: linking adds a name to an old
//! inode, cloning shares its blocks copy-on-write, copying reads it. It
//! knows nothing of catalogs or servers.
//!
//! `copy` places one file, `staging` copies ahead of the transfer, `sync`
//! makes the result durable, `swap` moves whole directories.

use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

mod copy;
mod staging;
mod sync;

pub use copy::*;
pub use staging::*;
pub use sync::*;

mod swap;

pub use swap::{swap, swap_dirs, unswap, SwapDir};

/// How files reach the new cluster (swap moves directories with
/// [`swap`]; its single files are linked).
pub use pgm_cluster::TransferMode as Mode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the old cluster has no file {0} for a relation it lists (is the old data directory damaged?)")]
    MissingMainFork(PathBuf),
    #[error("could not {verb} {from} to {to}: {source}")]
    Transfer {
        verb: &'static str,
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One relation's storage in both clusters: the path of its main fork's
/// first segment (`…/<dboid>/<relfilenode>`), without fork or segment suffix.
#[derive(Debug, Clone)]
pub struct RelationFiles {
    pub old_base: PathBuf,
    pub new_base: PathBuf,
}

/// One file to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMove {
    pub from: PathBuf,
    pub to: PathBuf,
    pub bytes: u64,
}

/// A database's directory in a tablespace: `base/<db>` in the data
/// directory for the default tablespace, `<location>/<version dir>/<db>`
/// for a user tablespace.
pub fn database_dir(
    datadir: &Path,
    tablespace_version_dir: &str,
    tablespace_location: &str,
    database_oid: u32,
) -> PathBuf {
    let dir = if tablespace_location.is_empty() {
        datadir.join("base")
    } else {
        Path::new(tablespace_location).join(tablespace_version_dir)
    };
    dir.join(database_oid.to_string())
}

/// Where a relation's files live: its file number in its
/// [`database_dir`], without fork or segment suffix.
pub fn relation_base(
    datadir: &Path,
    tablespace_version_dir: &str,
    tablespace_location: &str,
    database_oid: u32,
    relfilenode: u32,
) -> PathBuf {
    let mut base = database_dir(
        datadir,
        tablespace_version_dir,
        tablespace_location,
        database_oid,
    )
    .join(relfilenode.to_string());
    // Held for every relation at once: no spare capacity.
    base.shrink_to_fit();
    base
}

/// The forks a relation may have besides the main one.
pub(crate) const FORKS: [&str; 4] = ["", "_fsm", "_vm", "_init"];

/// The relation files in each database directory, read once: a relation's
/// forks and segments are looked up here rather than asked of the
/// filesystem one by one (tens of thousands of relations would cost
/// hundreds of thousands of stat calls). Each file is kept as one number
/// (relfilenode, fork, segment) in a sorted vector: 100,000 files take
/// 800 kB, where a set of their names took several megabytes.
#[derive(Default)]
pub(crate) struct Listing {
    pub(crate) dirs: HashMap<PathBuf, Vec<u64>>,
}

/// A relation file's name as one number: `<relfilenode>[_fork][.segment]`,
/// each number as PostgreSQL writes it (no leading zero, no sign). Other
/// names (PG_VERSION, the relation map, temporary relations' `t…_…`) are
/// none.
fn file_key(name: &std::ffi::OsStr) -> Option<u64> {
    let name = name.to_str()?;
    let (stem, segment) = match name.split_once('.') {
        Some((stem, segment)) => (stem, canonical_number(segment).filter(|&s| s > 0)?),
        None => (name, 0),
    };
    let (node, fork) = match stem.split_once('_') {
        Some((node, fork)) => (node, FORKS.iter().position(|f| f.get(1..) == Some(fork))?),
        None => (stem, 0),
    };
    key(canonical_number(node)?, fork, segment)
}

/// The number a relation file's name part stands for, when written as
/// PostgreSQL writes it.
fn canonical_number(text: &str) -> Option<u32> {
    if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Relfilenode in the high half; fork (an index in FORKS) and segment in
/// the low one (a segment beyond 2^28 is never reached: that many 1 GB
/// segments is 256 PB).
fn key(node: u32, fork: usize, segment: u32) -> Option<u64> {
    (segment < 1 << 28)
        .then(|| (u64::from(node) << 32) | ((fork as u64) << 28) | u64::from(segment))
}

impl Listing {
    fn keys(&mut self, dir: &Path) -> Result<&mut Vec<u64>, Error> {
        if !self.dirs.contains_key(dir) {
            let mut keys = Vec::new();
            match std::fs::read_dir(dir) {
                Ok(entries) => {
                    for entry in entries {
                        let name = entry.map_err(|e| io(dir, e))?.file_name();
                        keys.extend(file_key(&name));
                    }
                }
                // A database without files in this tablespace yet.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(dir, e)),
            }
            keys.sort_unstable();
            keys.shrink_to_fit();
            self.dirs.insert(dir.to_path_buf(), keys);
        }
        Ok(self.dirs.get_mut(dir).expect("just inserted"))
    }

    /// The old relation's files, as suffixes of its base name; an error
    /// without its main fork (nothing of it could be carried).
    fn old_files(&mut self, base: &Path) -> Result<Vec<String>, Error> {
        let files = self.existing(base)?;
        if !files.iter().any(|suffix| suffix.is_empty()) {
            return Err(Error::MissingMainFork(base.to_path_buf()));
        }
        Ok(files)
    }

    /// Every existing segment of every fork, as suffixes of the base name.
    fn existing(&mut self, base: &Path) -> Result<Vec<String>, Error> {
        let (Some(dir), Some(node)) = (
            base.parent(),
            base.file_name().and_then(|n| canonical_number(n.to_str()?)),
        ) else {
            return Ok(Vec::new());
        };
        let keys = self.keys(dir)?;
        let mut out = Vec::new();
        for (fork_index, fork) in FORKS.iter().enumerate() {
            for segment in 0u32.. {
                match key(node, fork_index, segment) {
                    Some(k) if keys.binary_search(&k).is_ok() => {}
                    _ => break,
                }
                out.push(if segment == 0 {
                    fork.to_string()
                } else {
                    format!("{fork}.{segment}")
                });
            }
        }
        Ok(out)
    }

    fn forget(&mut self, path: &Path) {
        if let (Some(dir), Some(k)) = (path.parent(), path.file_name().and_then(file_key)) {
            if let Some(keys) = self.dirs.get_mut(dir) {
                if let Ok(at) = keys.binary_search(&k) {
                    keys.remove(at);
                }
            }
        }
    }
}

pub(crate) fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    // Exactly as long as it needs to be: one is held for every file.
    let mut name = std::ffi::OsString::with_capacity(base.as_os_str().len() + suffix.len());
    name.push(base.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// The files to move for these relations. Files of the new relation that the
/// old one lacks (a fork the restore created) are removed here, so that the
/// new relation ends up with exactly the old one's files.
///
/// The pairs are taken by value and let go one by one as their
/// files are planned: with hundreds of thousands of relations the paths of
/// the pairs and of the moves would otherwise be held twice.
pub fn plan(relations: impl IntoIterator<Item = RelationFiles>) -> Result<Vec<FileMove>, Error> {
    let mut planner = Planner::default();
    planner.add(relations)?;
    Ok(planner.finish())
}

/// [`plan`] over several groups of relations (databases) into one list of
/// moves, whose room can be made first ([`Planner::count`]): grown by
/// doubling, or by appending one list to another, 100,000 moves (5.6 MB)
/// would be held twice while they move, and in room for 131,072.
#[derive(Default)]
pub struct Planner {
    listing: Listing,
    moves: Vec<FileMove>,
}

impl Planner {
    /// How many files these relations have in the old cluster (each
    /// directory is read once, for this and for [`Planner::add`]); fails,
    /// as `add` would, for a relation without its main fork.
    pub fn count(
        &mut self,
        relations: impl IntoIterator<Item = RelationFiles>,
    ) -> Result<usize, Error> {
        let mut files = 0;
        for relation in relations {
            // A missing main fork is found here, before add removes strays.
            files += self.listing.old_files(&relation.old_base)?.len();
        }
        Ok(files)
    }

    /// Room for this many more moves, exactly.
    pub fn reserve(&mut self, files: usize) {
        self.moves.reserve_exact(files);
    }

    /// Plans these relations' moves after those planned before.
    pub fn add(&mut self, relations: impl IntoIterator<Item = RelationFiles>) -> Result<(), Error> {
        let listing = &mut self.listing;
        for relation in relations {
            let old_files = listing.old_files(&relation.old_base)?;
            for suffix in listing.existing(&relation.new_base)? {
                if !old_files.contains(&suffix) {
                    let stray = with_suffix(&relation.new_base, &suffix);
                    std::fs::remove_file(&stray).map_err(|e| io(&stray, e))?;
                    listing.forget(&stray);
                }
            }
            for suffix in old_files {
                let from = with_suffix(&relation.old_base, &suffix);
                // One stat per file that exists, for the byte counts.
                let bytes = std::fs::metadata(&from).map_err(|e| io(&from, e))?.len();
                self.moves.push(FileMove {
                    from,
                    to: with_suffix(&relation.new_base, &suffix),
                    bytes,
                });
            }
        }
        Ok(())
    }

    /// Every move planned, in the order added.
    pub fn finish(self) -> Vec<FileMove> {
        let mut moves = self.moves;
        drop(self.listing);
        moves.shrink_to_fit();
        moves
    }
}

/// Progress so far.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Progress {
    pub files_done: u64,
    /// Of those, files whose copy was made ahead and only renamed.
    pub files_ahead: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Moves every file, `jobs` at a time; a file with an up-to-date copy in
/// `staged` gets that copy renamed into place. `progress` is called after
/// each file (from worker threads). Stops at the first error and returns it.
pub fn transfer(
    moves: &[FileMove],
    mode: Mode,
    jobs: usize,
    staged: &StagedCopies,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Progress, Error> {
    // No copy ahead starts from here on; one under way is waited for only
    // if its file comes up, and then at the end.
    staged.stop();
    let files_done = AtomicU64::new(0);
    let files_ahead = AtomicU64::new(0);
    let bytes_done = AtomicU64::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let deferred: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    let bytes_total: u64 = moves.iter().map(|m| m.bytes).sum();
    let files_total = moves.len() as u64;
    // `batch`: indexes into `moves`, taken by the workers a unit at a time.
    let run = |mut batch: Vec<usize>, may_defer: bool| {
        let units = matches!(mode, Mode::Link | Mode::Swap)
            .then(|| link_units(moves, &mut batch, one_worker_per_directory));
        let unit_count = units.as_ref().map_or(batch.len(), Vec::len);
        let next_unit = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..jobs.clamp(1, unit_count.max(1)) {
                scope.spawn(|| 'units: loop {
                    let u = next_unit.fetch_add(1, Ordering::SeqCst);
                    if u >= unit_count {
                        break;
                    }
                    let unit = units.as_ref().map_or(u..u + 1, |units| units[u].clone());
                    for &index in &batch[unit] {
                        if failed.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                            break 'units;
                        }
                        let file = &moves[index];
                        if may_defer && staged.is_copying(&file.from) {
                            deferred
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(index);
                            continue;
                        }
                        match move_one(file, mode, staged) {
                            Ok(ahead) => {
                                if ahead {
                                    files_ahead.fetch_add(1, Ordering::SeqCst);
                                }
                                let files = files_done.fetch_add(1, Ordering::SeqCst) + 1;
                                let bytes =
                                    bytes_done.fetch_add(file.bytes, Ordering::SeqCst) + file.bytes;
                                progress(Progress {
                                    files_done: files,
                                    files_ahead: files_ahead.load(Ordering::SeqCst),
                                    files_total,
                                    bytes_done: bytes,
                                    bytes_total,
                                });
                            }
                            Err(e) => {
                                failed
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .get_or_insert(e);
                                break 'units;
                            }
                        }
                    }
                });
            }
        });
    };
    run((0..moves.len()).collect(), true);
    let later = std::mem::take(&mut *deferred.lock().unwrap_or_else(|e| e.into_inner()));
    if !later.is_empty() {
        staged.wait_for_copies();
        run(later, false);
    }
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(Progress {
        files_done: files_done.into_inner(),
        files_ahead: files_ahead.into_inner(),
        files_total,
        bytes_done: bytes_done.into_inner(),
        bytes_total,
    })
}

/// For linking, splits `batch` into units a worker takes whole (otherwise
/// each file is a unit of its own); `batch` is reordered so that each unit
/// is one range of it. Linking only changes directories, and each change holds
/// its directory's lock. On XFS two workers in one directory wait on each
/// other: 100,000 unlinks and links there took 8.4-9.1 s with two threads,
/// 4.5-5.1 s with one, so a directory on XFS is one unit and -j spreads
/// directories. On ext4 two workers in one directory gain (without a
/// journal the files of 100,000 relations took 2.0-2.5 s with two, 5.7-6.0
/// s with one; with a journal two were as fast as one), so elsewhere a
/// unit is a few files. Copies spend their time on the data and go a file
/// at a time.
fn link_units(
    moves: &[FileMove],
    batch: &mut [usize],
    whole_directory: impl Fn(&Path) -> bool,
) -> Vec<std::ops::Range<usize>> {
    const FILES_PER_UNIT: usize = 64;
    batch.sort_by(|&a, &b| moves[a].to.parent().cmp(&moves[b].to.parent()));
    let mut units = Vec::new();
    let mut start = 0;
    for i in 1..=batch.len() {
        let dir = moves[batch[start]].to.parent();
        if i < batch.len() && moves[batch[i]].to.parent() == dir {
            continue;
        }
        if dir.is_some_and(&whole_directory) {
            units.push(start..i);
        } else {
            units.extend(
                (start..i)
                    .step_by(FILES_PER_UNIT)
                    .map(|s| s..(s + FILES_PER_UNIT).min(i)),
            );
        }
        start = i;
    }
    // The largest units first, so that a whole directory begun last does
    // not keep one worker busy after the others are done.
    units.sort_by_key(|unit| std::cmp::Reverse(unit.len()));
    units
}

/// Whether `dir` is on a filesystem where two workers changing one
/// directory at once are slower than one (XFS; see [`link_units`]).
fn one_worker_per_directory(dir: &Path) -> bool {
    use nix::sys::statfs::{statfs, XFS_SUPER_MAGIC};
    statfs(dir).is_ok_and(|fs| fs.filesystem_type() == XFS_SUPER_MAGIC)
}

/// Places one file; true if that was renaming its copy made ahead.
pub(crate) fn move_one(file: &FileMove, mode: Mode, staged: &StagedCopies) -> Result<bool, Error> {
    // The restore created an (empty) file under the same name; a re-run may
    // find a partial copy. Either way the old file replaces it.
    match std::fs::remove_file(&file.to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&file.to, e)),
    }
    if use_staged(file, staged) {
        return Ok(true);
    }
    let failed = |verb, source| Error::Transfer {
        verb,
        from: file.from.clone(),
        to: file.to.clone(),
        source,
    };
    place(&file.from, &file.to, mode).map_err(|e| failed(mode.verb(), e))?;
    if matches!(mode, Mode::Copy | Mode::CopyFileRange) {
        // Start writing the copy back now, while the rest is copied: the
        // sync step then finds it on disk.
        start_writeback(&file.to);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn relation_file_names_become_keys_only_as_postgres_writes_them() {
        let k = |name: &str| file_key(std::ffi::OsStr::new(name));
        assert_eq!(k("16384"), key(16384, 0, 0));
        assert_eq!(k("16384_fsm"), key(16384, 1, 0));
        assert_eq!(k("16384_vm"), key(16384, 2, 0));
        assert_eq!(k("16384_init"), key(16384, 3, 0));
        assert_eq!(k("16384.2"), key(16384, 0, 2));
        assert_eq!(k("16384_fsm.1"), key(16384, 1, 1));
        assert_eq!(k("4294967295"), key(u32::MAX, 0, 0));
        for other in [
            "PG_VERSION",
            "pg_filenode.map",
            "pg_internal.init",
            "t3_16384",
            "016384",
            "16384.0",
            "16384.01",
            "16384_",
            "16384_main",
            "16384.",
            "4294967296",
            "+1",
            "",
        ] {
            assert_eq!(k(other), None, "{other}");
        }
        // Distinct files, distinct keys; ordered by relfilenode first.
        assert!(key(1, 3, 5) < key(2, 0, 0));
        assert_ne!(key(1, 1, 0), key(1, 0, 1));
    }

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn copies_are_exact_whole_blocks_or_ragged() {
        // Empty, whole blocks, several chunks, and a damaged file's ragged
        // end (written partly direct, partly through the page cache).
        let dir = tempfile::tempdir().unwrap();
        let probe = std::fs::File::create(dir.path().join("probe")).unwrap();
        if set_direct(&probe, true).is_err() {
            eprintln!(
                "note: {} has no O_DIRECT; only the buffered path is tested",
                dir.path().display()
            );
        }
        for (i, len) in [
            0usize,
            8192,
            3 * COPY_CHUNK,
            COPY_CHUNK + 8192 * 7 + 100,
            4095,
        ]
        .into_iter()
        .enumerate()
        {
            // Each file's own bytes: the copying thread reuses its buffer,
            // and a copy must never carry the file before's.
            let bytes: Vec<u8> = (0..len)
                .map(|n| (n * 7 + n / 4099 + i * 13) as u8)
                .collect();
            let from = dir.path().join(format!("from{i}"));
            let to = dir.path().join(format!("to{i}"));
            write(&from, &bytes);
            copy_bytes(&from, &to).unwrap();
            assert!(
                std::fs::read(&to).unwrap() == bytes,
                "copy of {len} bytes differs"
            );
            assert_eq!(
                std::fs::metadata(&to).unwrap().permissions(),
                std::fs::metadata(&from).unwrap().permissions()
            );
        }
    }

    #[test]
    fn links_go_a_directory_or_a_few_files_at_a_time() {
        // 150 files in a, 3 in b, 70 in c, interleaved.
        let mut moves = Vec::new();
        for i in 0..150 {
            for (dir, count) in [("a", 150), ("b", 3), ("c", 70)] {
                if i < count {
                    moves.push(FileMove {
                        from: PathBuf::from(format!("/old/{dir}/{i}")),
                        to: PathBuf::from(format!("/new/{dir}/{i}")),
                        bytes: 0,
                    });
                }
            }
        }
        let dir_of = |batch: &[usize], unit: &std::ops::Range<usize>| -> Vec<PathBuf> {
            let mut dirs: Vec<PathBuf> = batch[unit.clone()]
                .iter()
                .map(|&i| moves[i].to.parent().unwrap().to_path_buf())
                .collect();
            dirs.dedup();
            dirs
        };
        for whole in [true, false] {
            let mut batch: Vec<usize> = (0..moves.len()).collect();
            let units = link_units(&moves, &mut batch, |_| whole);
            let mut covered: Vec<usize> = units
                .iter()
                .flat_map(|u| batch[u.clone()].to_vec())
                .collect();
            covered.sort();
            assert_eq!(
                covered,
                (0..moves.len()).collect::<Vec<_>>(),
                "each file once"
            );
            for unit in &units {
                assert_eq!(
                    dir_of(&batch, unit).len(),
                    1,
                    "a unit stays in one directory"
                );
            }
            let sizes: Vec<usize> = units.iter().map(|u| u.len()).collect();
            if whole {
                assert_eq!(sizes, [150, 70, 3], "whole directories, the largest first");
            } else {
                assert_eq!(sizes, [64, 64, 64, 22, 6, 3], "at most 64 files a unit");
            }
        }
    }

    #[test]
    fn paths_follow_the_tablespace_layout() {
        let base = relation_base(Path::new("/data"), "PG_18_202506291", "", 5, 16384);
        assert_eq!(base, Path::new("/data/base/5/16384"));
        let base = relation_base(Path::new("/data"), "PG_18_202506291", "/ts", 16400, 16500);
        assert_eq!(base, Path::new("/ts/PG_18_202506291/16400/16500"));
    }

    #[test]
    fn every_fork_and_segment_moves_and_strays_go() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old/base/5/16384");
        let new = dir.path().join("new/base/5/16384");
        for suffix in ["", ".1", ".2", "_fsm", "_vm", "_init"] {
            write(&with_suffix(&old, suffix), suffix.as_bytes());
        }
        // The restore left an empty main fork and a fork the old relation lacks.
        write(&new, b"");
        write(&with_suffix(&new, "_vm"), b"stale");
        std::fs::remove_file(with_suffix(&old, "_vm")).unwrap();
        let rel = RelationFiles {
            old_base: old.clone(),
            new_base: new.clone(),
        };
        let moves = plan([rel.clone()]).unwrap();
        assert_eq!(moves.len(), 5);
        assert!(
            !with_suffix(&new, "_vm").exists(),
            "a fork the old relation lacks is removed"
        );
        // Clone needs a reflink filesystem: tested end to end on one.
        for mode in [Mode::Copy, Mode::CopyFileRange, Mode::Link] {
            let seen = AtomicU64::new(0);
            let done = transfer(&moves, mode, 3, &StagedCopies::default(), &|p| {
                seen.fetch_max(p.files_done, Ordering::SeqCst);
            })
            .unwrap();
            assert_eq!((done.files_done, seen.into_inner()), (5, 5));
            for m in &moves {
                assert_eq!(
                    std::fs::read(&m.to).unwrap(),
                    std::fs::read(&m.from).unwrap()
                );
                let same_inode = std::fs::metadata(&m.to).unwrap().ino()
                    == std::fs::metadata(&m.from).unwrap().ino();
                assert_eq!(same_inode, mode == Mode::Link);
            }
        }
    }

    #[test]
    fn staged_copies_are_renamed_into_place_unless_the_source_changed() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old/base/5/16384");
        let new = dir.path().join("new/base/5/16384");
        let staging = dir.path().join("new/pg_migrate.d/staging");
        std::fs::create_dir_all(&staging).unwrap();
        // Two files big enough to be copied ahead, and a small one that is not.
        let big = |tag: &str| {
            let mut bytes = tag.as_bytes().to_vec();
            bytes.resize(STAGE_MIN_BYTES as usize + 1, b'.');
            bytes
        };
        for (suffix, bytes) in [
            ("", big("old")),
            (".1", big("old.1")),
            ("_fsm", b"fsm".to_vec()),
        ] {
            write(&with_suffix(&old, suffix), &bytes);
            write(&with_suffix(&new, suffix), b"");
        }
        // Link mode never stages: its transfer is a rename already.
        let sources = [StageSource {
            dir: old.parent().unwrap().to_path_buf(),
            relfilenodes: vec![16384],
        }];
        let none = StagedCopies::new(&staging);
        stage(&sources, Mode::Link, &none);
        assert_eq!(none.ready(), 0);
        let stopped = StagedCopies::new(&staging);
        stopped.stop();
        stage(&sources, Mode::Copy, &stopped);
        assert_eq!(stopped.ready(), 0);
        let staged = StagedCopies::new(&staging);
        stage(&sources, Mode::Copy, &staged);
        assert_eq!(staged.ready(), 2);
        assert!(staged.copy_of(&with_suffix(&old, "_fsm")).is_none());
        // A source written after its copy was made is copied again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(&with_suffix(&old, ".1"), &big("changed since"));
        let moves = plan([RelationFiles {
            old_base: old.clone(),
            new_base: new.clone(),
        }])
        .unwrap();
        let staged_inode = std::fs::metadata(staged.copy_of(&old).unwrap())
            .unwrap()
            .ino();
        let done = transfer(&moves, Mode::Copy, 2, &staged, &|_| {}).unwrap();
        assert_eq!((done.files_done, done.files_ahead), (3, 1));
        for m in &moves {
            assert_eq!(
                std::fs::read(&m.to).unwrap(),
                std::fs::read(&m.from).unwrap()
            );
            if let Some(copy) = staged.copy_of(&m.from) {
                assert!(!copy.exists(), "staged copies are used or removed");
            }
        }
        assert_eq!(
            std::fs::read(with_suffix(&new, ".1")).unwrap(),
            big("changed since")
        );
        // An unchanged one was renamed: its inode is the staged copy's.
        assert_eq!(std::fs::metadata(&new).unwrap().ino(), staged_inode);
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    }

    #[test]
    fn a_copy_still_being_made_is_waited_for_and_used_last() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old/base/5/16384");
        let new = dir.path().join("new/base/5/16384");
        let staging = dir.path().join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        for suffix in ["", "_fsm"] {
            write(&with_suffix(&old, suffix), suffix.as_bytes());
            write(&with_suffix(&new, suffix), b"");
        }
        let copies = StagedCopies::new(&staging);
        // The main fork's copy is under way when the transfer starts.
        copies.lock().insert(old.clone(), Entry::Copying);
        let moves = plan([RelationFiles {
            old_base: old.clone(),
            new_base: new.clone(),
        }])
        .unwrap();
        let done = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(100));
                let metadata = std::fs::metadata(&old).unwrap();
                let staged = Staged {
                    number: 7,
                    len: metadata.len(),
                    modified: metadata.modified().unwrap(),
                };
                std::fs::copy(&old, copies.path(&staged)).unwrap();
                copies.lock().insert(old.clone(), Entry::Ready(staged));
            });
            transfer(&moves, Mode::Copy, 2, &copies, &|_| {}).unwrap()
        });
        assert_eq!((done.files_done, done.files_ahead), (2, 1));
        assert!(
            copies.stop.load(Ordering::SeqCst),
            "no copy ahead starts once the transfer has"
        );
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
        for m in &moves {
            assert_eq!(
                std::fs::read(&m.to).unwrap(),
                std::fs::read(&m.from).unwrap()
            );
        }
    }

    #[test]
    fn sync_tree_syncs_all_but_durable_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("new");
        for name in [
            "base/5/1259",
            "base/5/16384",
            "global/pg_control",
            "PG_VERSION",
        ] {
            write(&root.join(name), b"x");
        }
        let linked = root.join("base/5/16384");
        let durable = HashSet::from([linked.as_path()]);
        let told = std::sync::Mutex::new(Vec::new());
        let progress = |p: SyncProgress| told.lock().unwrap().push(p);
        assert_eq!(
            sync_tree(std::slice::from_ref(&root), &durable, 2, &progress).unwrap(),
            3
        );
        // new, base, base/5, global and new's parent: 5 directories.
        let told = told.into_inner().unwrap();
        assert_eq!(told[0], SyncProgress::Total(3 + 5));
        assert_eq!(told.len(), 1 + 3 + 5);
        assert!(told[1..].iter().all(|p| *p == SyncProgress::Synced));
        assert_eq!(sync_tree(&[root], &HashSet::new(), 1, &|_| {}).unwrap(), 4);
        assert!(sync_tree(&[dir.path().join("missing")], &HashSet::new(), 1, &|_| {}).is_err());
    }

    #[test]
    fn a_missing_old_main_fork_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let rel = RelationFiles {
            old_base: dir.path().join("old/1/2"),
            new_base: dir.path().join("new/1/2"),
        };
        assert!(matches!(plan([rel]), Err(Error::MissingMainFork(_))));
    }
}
