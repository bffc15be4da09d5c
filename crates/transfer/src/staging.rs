//! Copies made ahead of the transfer (copy modes): while the catalog is
//! restored, the old relation files are copied into a staging directory of the
//! new cluster, at low priority; the transfer renames each into place, unless
//! its source changed since.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[allow(unused_imports)]
use super::*;

/// A copy made ahead of the transfer, and what its source looked like
/// just before: the transfer renames it into place only if the source has
/// not changed since.
#[derive(Debug, Clone)]
pub(crate) struct Staged {
    /// The copy's name in the staging directory.
    pub(crate) number: u32,
    pub(crate) len: u64,
    pub(crate) modified: std::time::SystemTime,
}

#[derive(Debug, Clone)]
pub(crate) enum Entry {
    /// Being copied right now.
    Copying,
    Ready(Staged),
}

/// The copies made ahead, keyed by source file: filled in by [`stage`] on
/// its own thread while the transfer may already be reading it.
#[derive(Debug, Default)]
pub struct StagedCopies {
    dir: PathBuf,
    files: Mutex<HashMap<PathBuf, Entry>>,
    pub(crate) stop: AtomicBool,
}

impl StagedCopies {
    pub fn new(dir: &Path) -> StagedCopies {
        StagedCopies {
            dir: dir.to_path_buf(),
            ..StagedCopies::default()
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Copies finished so far.
    pub fn ready(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| matches!(e, Entry::Ready(_)))
            .count()
    }

    /// Asks [`stage`] to start no further copy (it finishes the one at hand).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Where the finished copy of `source` is, if there is one.
    pub fn copy_of(&self, source: &Path) -> Option<PathBuf> {
        match self.lock().get(source) {
            Some(Entry::Ready(staged)) => Some(self.path(staged)),
            _ => None,
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Entry>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn path(&self, staged: &Staged) -> PathBuf {
        self.dir.join(staged.number.to_string())
    }

    pub(crate) fn is_copying(&self, source: &Path) -> bool {
        matches!(self.lock().get(source), Some(Entry::Copying))
    }

    /// Waits until no copy is in progress (after [`stop`](Self::stop)).
    pub(crate) fn wait_for_copies(&self) {
        while self.lock().values().any(|e| matches!(e, Entry::Copying)) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Gives the calling thread only the CPU time nothing else wants
/// (SCHED_IDLE): copying ahead must not slow down the restore it runs
/// beside, which on a schema of many tables keeps every core busy. Best
/// effort: a thread that cannot be made idle just copies.
pub(crate) fn yield_to_everything_else() {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
    let _ = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
}

/// Smaller files are left to the transfer: copying them is mostly creating
/// files, which the restore beside it does too (tens of thousands of small
/// copies ahead slowed a restore of 80,000 relations by a third), while the
/// big files, whose bytes take the time, gain the most.
pub const STAGE_MIN_BYTES: u64 = 1 << 20;

/// The relations of one database directory whose files may be copied
/// ahead: the directory and their file numbers (4 bytes a relation, where a
/// path each took some 70).
#[derive(Debug, Clone)]
pub struct StageSource {
    pub dir: PathBuf,
    pub relfilenodes: Vec<u32>,
}

/// Copies (`mode`: Copy or CopyFileRange) every file of at least
/// [`STAGE_MIN_BYTES`] of the relations of `sources` into `copies`'
/// directory (which must exist), one at a time, until done or stopped, at
/// idle priority (call it on a thread of its own). For the time the catalog
/// is being restored: the copies are renamed into place by [`transfer`], so
/// the directory must be on the new cluster's filesystem. A failure only
/// ends the copying early (the transfer copies the rest itself).
pub fn stage(sources: &[StageSource], mode: Mode, copies: &StagedCopies) {
    /// However the copying ends (even by a panic), no file stays claimed:
    /// the transfer would wait for it.
    struct Release<'a>(&'a StagedCopies);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.lock().retain(|_, e| matches!(e, Entry::Ready(_)));
        }
    }
    let _release = Release(copies);
    if !matches!(mode, Mode::Copy | Mode::CopyFileRange) {
        return;
    }
    yield_to_everything_else();
    let mut listing = Listing::default();
    let mut number = 0u32;
    let bases = sources.iter().flat_map(|source| {
        source
            .relfilenodes
            .iter()
            .map(|node| source.dir.join(node.to_string()))
    });
    for base in bases {
        let Ok(suffixes) = listing.existing(&base) else {
            return;
        };
        for suffix in suffixes {
            let from = with_suffix(&base, &suffix);
            let Ok((len, modified)) =
                std::fs::metadata(&from).and_then(|m| Ok((m.len(), m.modified()?)))
            else {
                return;
            };
            if len < STAGE_MIN_BYTES {
                continue;
            }
            {
                // Checked and claimed at once: a file the transfer has
                // looked up and found unclaimed is never copied here.
                let mut files = copies.lock();
                if copies.stop.load(Ordering::SeqCst) {
                    return;
                }
                files.insert(from.clone(), Entry::Copying);
            }
            number += 1;
            let staged = Staged {
                number,
                len,
                modified,
            };
            let to = copies.path(&staged);
            if place(&from, &to, mode).is_err() {
                let _ = std::fs::remove_file(&to);
                copies.lock().remove(&from);
                return;
            }
            // Handed over first: a transfer waiting for this copy need not
            // also wait for its write-back to be queued (the sync asks again).
            copies.lock().insert(from, Entry::Ready(staged));
            start_writeback(&to);
        }
    }
}

/// Renames a staged copy of `file.from` to `file.to` if the source is as it
/// was when copied; false (and the staged copy removed) otherwise.
pub(crate) fn use_staged(file: &FileMove, copies: &StagedCopies) -> bool {
    let Some(Entry::Ready(staged)) = copies.lock().get(&file.from).cloned() else {
        return false;
    };
    let copy = copies.path(&staged);
    let unchanged = std::fs::metadata(&file.from)
        .map(|m| m.len() == staged.len && m.modified().ok() == Some(staged.modified))
        .unwrap_or(false);
    if unchanged && std::fs::rename(&copy, &file.to).is_ok() {
        return true;
    }
    let _ = std::fs::remove_file(&copy);
    false
}
