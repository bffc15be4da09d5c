//! The new cluster as initdb made it, kept to return to (resume before the
//! relation map, revert, a re-run prepare): one archive of the data directory
//! (and one of an external WAL directory), each written under a temporary
//! name and fsynced before it takes its own.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{dir, DIR};

/// The saved new cluster: one archive, not a copy of its thousand files
/// (creating files is what costs, on a filesystem that has just deleted
/// many it is a millisecond each), fsynced before it takes its name.
const PRISTINE: &str = "pristine.tar";

/// The contents of an external WAL directory (`initdb -X`), which the
/// upgrade changes too (pg_resetwal writes its segments there): saved
/// beside the archive, before it.
const PRISTINE_WAL: &str = "pristine-wal.tar";

/// Where the new cluster's `pg_wal` points when it is a symbolic link.
fn external_wal(new_datadir: &Path) -> Option<PathBuf> {
    let link = std::fs::read_link(new_datadir.join("pg_wal")).ok()?;
    Some(new_datadir.join(link))
}

/// Writes a tar of `entries` (name in the archive, path) as `name` in
/// `pg_migrate.d`: under a temporary name, fsynced, then renamed.
fn write_archive(dir: &Path, name: &str, entries: Vec<(OsString, PathBuf)>) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(
        1 << 20,
        File::create(&tmp)?,
    ));
    // Symbolic links (an external pg_wal) are kept as links.
    builder.follow_symlinks(false);
    // Every byte is read, never skipped as a hole: the sparse detection
    // starts from a file's block count, which ext4 shows as 0 for a moment
    // while a freshly written file is written back (and ZFS until its
    // transaction commits); it once saved initdb's catalog index as zeros.
    // The data directory holds no sparse files worth the saving.
    builder.sparse(false);
    for (name, path) in entries {
        if std::fs::symlink_metadata(&path)?.is_dir() {
            builder.append_dir_all(&name, &path)?;
        } else {
            builder.append_path_with_name(&path, &name)?;
        }
    }
    let file = builder
        .into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// The entries of a directory as (name, path), but `skip`.
fn listing(dir: &Path, skip: &[&str]) -> std::io::Result<Vec<(OsString, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if !skip.iter().any(|s| name == *s) {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}

/// Saves the new cluster as initdb made it (written under a temporary name
/// and renamed, so a half-written archive is never taken for whole). An
/// archive from an earlier attempt is replaced: until a journal exists,
/// nothing of the new cluster has changed, so what is there now is pristine.
pub fn save_pristine(new_datadir: &Path) -> std::io::Result<()> {
    let dir = dir(new_datadir);
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(dir.join(PRISTINE_WAL));
    if let Some(wal) = external_wal(new_datadir) {
        write_archive(&dir, PRISTINE_WAL, listing(&wal, &[])?)?;
    }
    let skip = [DIR, "postmaster.pid", "postmaster.opts"];
    write_archive(&dir, PRISTINE, listing(new_datadir, &skip)?)
}

/// Whether the new cluster's state before the upgrade was saved.
pub fn has_pristine(new_datadir: &Path) -> bool {
    dir(new_datadir).join(PRISTINE).is_file()
}

/// One file of the saved new cluster (e.g. `global/pg_control`), if saved.
pub fn pristine_file(new_datadir: &Path, name: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = File::open(dir(new_datadir).join(PRISTINE)).ok()?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        if entry.path().ok()?.as_ref() == Path::new(name) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).ok()?;
            return Some(bytes);
        }
    }
    None
}

/// Removes the copies that runs made ahead of their transfer and could not
/// remove themselves (a run killed or interrupted).
pub fn remove_staged_copies(new_datadir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir(new_datadir)) {
        for entry in entries.flatten() {
            let staging = entry.path().join("staging");
            if entry.file_name().to_string_lossy().starts_with("run-") && staging.is_dir() {
                let _ = std::fs::remove_dir_all(staging);
            }
        }
    }
}

/// Returns the new cluster to its pristine state: every new-version directory
/// it made in a tablespace, and everything in the data directory but
/// `pg_migrate.d`, is removed; the saved copy is put back (an external WAL
/// directory's contents too) and made durable. The saved copy is checked
/// first; `before_changing` runs once it passed, before anything is removed.
pub fn restore_pristine(
    new_datadir: &Path,
    tablespace_version_dir: &str,
    before_changing: impl FnOnce() -> std::io::Result<()>,
) -> std::io::Result<()> {
    let pristine = dir(new_datadir).join(PRISTINE);
    if !pristine.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is missing", pristine.display()),
        ));
    }
    let saved_wal = dir(new_datadir).join(PRISTINE_WAL);
    for archive in [&pristine, &saved_wal] {
        if archive.is_file() {
            refuse_holes(archive)?;
        }
    }
    before_changing()?;
    remove_staged_copies(new_datadir);
    let tblspc = new_datadir.join("pg_tblspc");
    if let Ok(entries) = std::fs::read_dir(&tblspc) {
        for entry in entries.flatten() {
            if let Ok(location) = std::fs::read_link(entry.path()) {
                let version_dir = location.join(tablespace_version_dir);
                if version_dir.exists() {
                    std::fs::remove_dir_all(&version_dir)?;
                    File::open(&location)?.sync_all()?;
                }
            }
        }
    }
    clear_dir(new_datadir, &[DIR])?;
    unpack(&pristine, new_datadir)?;
    let mut roots = vec![new_datadir.to_path_buf()];
    if let (Some(wal), true) = (external_wal(new_datadir), saved_wal.is_file()) {
        clear_dir(&wal, &[])?;
        unpack(&saved_wal, &wal)?;
        roots.push(wal);
    }
    // Durable before the journal says "reset".
    pgm_transfer::sync_tree(&roots, &HashSet::new(), 2, &|_| {}).map_err(std::io::Error::other)?;
    Ok(())
}

/// Refuses, before anything is removed, an archive that holds a file as a
/// map of holes: pg-migrate before 2026-12-04 let its archiver store a file
/// whose block count read 0 during writeback so, and restoring it would put
/// zeros in place of initdb's catalog. initdb writes no sparse file.
fn refuse_holes(archive: &Path) -> std::io::Result<()> {
    let mut reader = tar::Archive::new(std::io::BufReader::new(File::open(archive)?));
    for entry in reader.entries()? {
        let entry = entry?;
        if entry.header().entry_type() == tar::EntryType::GNUSparse {
            return Err(std::io::Error::other(format!(
                "{} holds {} as holes only, not as the bytes initdb wrote (an earlier pg-migrate could save a file so while it was being written back)",
                archive.display(),
                entry.path()?.display()
            )));
        }
    }
    Ok(())
}

/// Removes everything in `dir` but the names in `keep`.
fn clear_dir(dir: &Path, keep: &[&str]) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if keep.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn unpack(archive: &Path, into: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(std::io::BufReader::new(File::open(archive)?));
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(false);
    archive.unpack(into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_external_wal_directory_comes_back_too() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let wal = dir.path().join("wal");
        std::fs::create_dir_all(data.join("global")).unwrap();
        std::fs::create_dir_all(wal.join("archive_status")).unwrap();
        std::fs::write(wal.join("000000010000000000000001"), b"initdb's").unwrap();
        std::os::unix::fs::symlink(&wal, data.join("pg_wal")).unwrap();
        save_pristine(&data).unwrap();
        // pg_resetwal of the upgrade: its segment goes, another comes.
        std::fs::remove_file(wal.join("000000010000000000000001")).unwrap();
        std::fs::write(wal.join("0000000100000000000000A0"), b"upgrade's").unwrap();
        restore_pristine(&data, "PG_18_1", || Ok(())).unwrap();
        assert_eq!(
            std::fs::read(wal.join("000000010000000000000001")).unwrap(),
            b"initdb's"
        );
        assert!(!wal.join("0000000100000000000000A0").exists());
        assert!(wal.join("archive_status").is_dir());
        assert_eq!(std::fs::read_link(data.join("pg_wal")).unwrap(), wal);
    }

    /// A file being written back can show no blocks for a moment (ext4
    /// with delayed allocation, ZFS before its transaction commits), and an
    /// archiver that maps holes from the block count then saves zeros in
    /// place of data: it once did so for initdb's catalog index. No entry of
    /// the archive may be a map of holes; a file with a real hole shows it.
    #[test]
    fn every_file_is_saved_byte_for_byte_never_as_a_map_of_holes() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("base/1")).unwrap();
        let holed = data.join("base/1/2656");
        let mut file = File::create(&holed).unwrap();
        file.write_all(&[7u8; 8192]).unwrap();
        file.set_len(1 << 20).unwrap();
        drop(file);
        save_pristine(&data).unwrap();
        let archive = File::open(super::dir(&data).join(PRISTINE)).unwrap();
        let mut archive = tar::Archive::new(archive);
        let mut seen = false;
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().as_ref() == Path::new("base/1/2656") {
                assert_eq!(entry.header().entry_type(), tar::EntryType::Regular);
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                assert_eq!(bytes.len(), 1 << 20);
                assert!(bytes[..8192].iter().all(|b| *b == 7));
                seen = true;
            }
        }
        assert!(seen, "the file is in the archive");
    }

    /// An archive an earlier pg-migrate wrote with a file as holes is
    /// refused before the data directory is touched.
    #[test]
    fn an_archive_holding_a_file_as_holes_is_refused_and_nothing_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("base/1")).unwrap();
        let holed = data.join("base/1/2656");
        File::create(&holed).unwrap().set_len(16384).unwrap();
        std::fs::create_dir_all(super::dir(&data)).unwrap();
        // As the crate's default builder wrote it.
        let mut old = tar::Builder::new(File::create(super::dir(&data).join(PRISTINE)).unwrap());
        old.append_dir_all("base", data.join("base")).unwrap();
        old.into_inner().unwrap();
        std::fs::write(data.join("PG_VERSION"), b"18\n").unwrap();
        let refused = restore_pristine(&data, "PG_18_1", || Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("base/1/2656") && refused.contains("holes"),
            "{refused}"
        );
        assert_eq!(std::fs::read(data.join("PG_VERSION")).unwrap(), b"18\n");
        assert!(holed.exists());
    }

    #[test]
    fn pristine_copy_comes_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("base/1")).unwrap();
        std::fs::write(data.join("base/1/1259"), b"catalog").unwrap();
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
                & 0o777
        };
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
        };
        set(&data.join("base/1"), 0o750);
        set(&data.join("base/1/1259"), 0o640);
        std::fs::write(data.join("PG_VERSION"), b"18\n").unwrap();
        std::os::unix::fs::symlink("/somewhere", data.join("link")).unwrap();
        save_pristine(&data).unwrap();
        std::fs::write(data.join("base/1/1259"), b"changed").unwrap();
        std::fs::write(data.join("base/1/16384"), b"restored table").unwrap();
        restore_pristine(&data, "PG_18_1", || Ok(())).unwrap();
        assert_eq!(std::fs::read(data.join("base/1/1259")).unwrap(), b"catalog");
        assert!(!data.join("base/1/16384").exists());
        assert_eq!(mode(&data.join("base/1")), 0o750);
        assert_eq!(mode(&data.join("base/1/1259")), 0o640);
        assert_eq!(
            std::fs::read_link(data.join("link")).unwrap(),
            PathBuf::from("/somewhere")
        );
        assert!(has_pristine(&data));
        assert_eq!(pristine_file(&data, "PG_VERSION").unwrap(), b"18\n");
        assert!(pristine_file(&data, "base/1/16384").is_none());
    }
}
