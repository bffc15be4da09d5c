//! The new cluster to disk: every file and directory fsynced, write-back
//! asked for first and several fsyncs in flight, but the files known durable.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[allow(unused_imports)]
use super::*;

/// What `sync_tree` tells of its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncProgress {
    /// Files and directories it will sync.
    Total(u64),
    /// One more synced.
    Synced,
}

/// fsyncs every regular file under `roots` but those in `durable` (files
/// whose contents already were on disk: the old cluster's, hard-linked or
/// moved), then every directory, so that new names are durable too; `jobs`
/// files at a time. Symbolic links are not followed. `progress` learns the
/// files and directories to sync (once, first) and then each one synced.
/// Returns how many files were synced.
pub fn sync_tree(
    roots: &[PathBuf],
    durable: &HashSet<&Path>,
    jobs: usize,
    progress: &(dyn Fn(SyncProgress) + Sync),
) -> Result<u64, Error> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for root in roots {
        for entry in walkdir::WalkDir::new(root) {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(root).to_path_buf();
                io(&path, std::io::Error::other(e.to_string()))
            })?;
            if entry.file_type().is_dir() {
                dirs.push(entry.into_path());
            } else if entry.file_type().is_file() && !durable.contains(entry.path()) {
                files.push(entry.into_path());
            }
        }
        if let Some(parent) = root.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    let fsync = |path: &Path| -> Result<(), Error> {
        std::fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(path, e))
    };
    // First ask the kernel to start writing every file back, without
    // waiting: the fsyncs that follow then mostly find their data on disk
    // already and share journal commits (initdb --sync-only does the same).
    for path in &files {
        start_writeback(path);
    }
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    progress(SyncProgress::Total((files.len() + dirs.len()) as u64));
    // An fsync mostly waits for the disk: more of them in flight let the
    // filesystem commit its journal for many at once.
    let threads = jobs.max(1) * 4;
    // Files before directories: a directory is synced after the files in it
    // got their names (a directory's fsync does not wait for file data).
    for batch in [&files, &dirs] {
        next.store(0, Ordering::SeqCst);
        std::thread::scope(|scope| {
            for _ in 0..threads.clamp(1, batch.len().max(1)) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(path) = batch.get(i) else { break };
                    if let Err(e) = fsync(path) {
                        failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        break;
                    }
                    progress(SyncProgress::Synced);
                });
            }
        });
        if let Some(e) = failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(e);
        }
    }
    Ok(files.len() as u64)
}
