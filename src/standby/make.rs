//! Making a standby kit from a finished upgrade of the primary, before the
//! new primary's first start: the relation map from the saved transfer
//! plan, the old primary's identity as the upgrade found it, and every file
//! of the new cluster that is not a relation file moved from the old one.
//! It reads the new cluster and its journal; it changes neither cluster.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pgm_cluster::ControlFile;

use super::kit::{self, Fork, KitCluster, KitPath, Manifest, RelationFile, Source};
use crate::cli::{Method, Mode};
use crate::failure::{Code, Failure};
use crate::journal::{self, JournalView, State};

/// What a kit was made of.
pub struct Made {
    pub manifest: Manifest,
    pub sources: Vec<Source>,
}

fn refuse(code: Code, message: String, remedy: &str) -> Failure {
    Failure {
        code,
        message,
        remedy: Some(remedy.into()),
        clusters: Some(crate::failure::ClusterStates::unchanged()),
    }
}

/// Everything a kit of `new_datadir` holds, checked: a finished in-place
/// upgrade by link or copy, whose new cluster has not run since.
pub fn gather(new_datadir: &Path) -> Result<Made, Failure> {
    let rebuild = "rebuild the standbys from the new primary instead (pg_basebackup)";
    let view = JournalView::read(new_datadir).ok_or_else(|| {
        refuse(
            Code::NoJournal,
            format!(
                "{} has no pg-migrate journal: it is not the new data directory of an upgrade by pg-migrate",
                new_datadir.display()
            ),
            "name the new primary's data directory with -D",
        )
    })?;
    let plan = view.plan().ok_or_else(|| {
        refuse(
            Code::NoJournal,
            "the journal has no plan".into(),
            "name the new primary's data directory with -D",
        )
    })?;
    if journal::read_state(new_datadir) != Some(State::Complete) {
        return Err(refuse(
            Code::UnfinishedUpgrade,
            format!("the upgrade of {} has not finished", new_datadir.display()),
            "finish it first (pg-migrate resume), then make the kit",
        ));
    }
    if plan.method != Method::InPlace
        || !matches!(
            plan.mode,
            Mode::Link | Mode::Copy | Mode::Clone | Mode::CopyFileRange
        )
        || plan.phase != "full"
    {
        return Err(refuse(
            Code::KitNotPossible,
            format!(
                "the upgrade ran with {} by {}{}: a kit is made only from an in-place upgrade in one go by link, copy or clone",
                plan.mode.flag(),
                if plan.method == Method::Dump { "dump and reload" } else { "moving the files" },
                if plan.phase != "full" { " in the online mode" } else { "" }
            ),
            rebuild,
        ));
    }
    if let Some(why) = ran_since(new_datadir, &view) {
        return Err(refuse(
            Code::KitNotPossible,
            format!(
                "the new cluster has run since the upgrade ({why}): its files hold changes the standbys' files do not, and the WAL from before them is gone"
            ),
            "a kit is made right after the upgrade, before the new primary first starts; rebuild the standbys from the new primary now (pg_basebackup)",
        ));
    }
    let found = view.old_as_found().ok_or_else(|| {
        refuse(
            Code::KitNotPossible,
            "the journal does not record the old cluster's last checkpoint as the upgrade found it (an upgrade by an older pg-migrate)".into(),
            rebuild,
        )
    })?;
    let moves = journal::read_transfer_plan(new_datadir).ok_or_else(|| {
        refuse(
            Code::KitNotPossible,
            "the saved transfer plan is missing or damaged".into(),
            rebuild,
        )
    })?;
    let new_datadir = std::fs::canonicalize(new_datadir).map_err(|e| {
        Failure::new(
            Code::KitNotPossible,
            format!("{}: {e}", new_datadir.display()),
        )
    })?;
    let new_control =
        ControlFile::read(&new_datadir).map_err(|e| Failure::new(Code::KitNotPossible, e))?;
    if new_control.wal_level == 0 {
        return Err(refuse(
            Code::KitNotPossible,
            "the new cluster's pg_control records wal_level = minimal (its last server ran so): a standby cannot start from it".into(),
            "set wal_level = replica (or higher) in the new cluster's postgresql.conf and upgrade again; or rebuild the standbys",
        ));
    }
    // A read of the old primary's tables after the checkpoint its standbys
    // stopped at may prune their pages, in WAL the standbys never get. A
    // page's first change after the kit's checkpoint reaches them whole —
    // except VACUUM marking it all-visible, which carries the page only
    // with data checksums (or wal_log_hints): without, a standby could mark
    // its unpruned page all-visible.
    let read_tables: Vec<&str> = ["record-old", "backup"]
        .into_iter()
        .filter(|step| view.done_steps().contains(*step))
        .collect();
    if !read_tables.is_empty() && new_control.data_checksum_version == 0 {
        return Err(refuse(
            Code::KitNotPossible,
            format!(
                "this upgrade read the old primary's tables after its standbys' last checkpoint ({}), on a cluster without data checksums: a standby's pages could differ from the primary's in ways replay would not repair",
                read_tables
                    .iter()
                    .map(|s| if *s == "record-old" { "--verify" } else { "--backup-dir" })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "rebuild the standbys from the new primary (pg_basebackup); next time, upgrade a primary with standbys without --verify and --backup-dir (take the backup before, verify after with pg-migrate verify in copy mode), or with data checksums",
        ));
    }
    let old_datadir = std::fs::canonicalize(&plan.old.datadir).map_err(|e| {
        Failure::new(
            Code::KitNotPossible,
            format!("{}: {e}", plan.old.datadir.display()),
        )
    })?;
    let old_control = crate::engine::read_control(&old_datadir)?;
    let old_major = major_of(&plan.old.version);
    let new_major = major_of(&plan.new.version);
    if new_major < 15 {
        return Err(refuse(
            Code::KitNotPossible,
            format!("the new major is {new_major}: before 15 an upgrade gives tablespaces new OIDs, which the kit's map does not follow"),
            rebuild,
        ));
    }
    let old = KitCluster {
        major: old_major,
        version: plan.old.version.clone(),
        system_identifier: found.old.system_identifier,
        checkpoint_lsn: found.old.checkpoint_lsn,
        timeline: found.timeline,
        catalog_version: old_control.catalog_version,
        tablespace_dir: format!("PG_{old_major}_{}", old_control.catalog_version),
    };
    let new = KitCluster {
        major: new_major,
        version: plan.new.version.clone(),
        system_identifier: new_control.system_identifier,
        checkpoint_lsn: new_control.checkpoint_lsn,
        timeline: new_control.timeline,
        catalog_version: new_control.catalog_version,
        tablespace_dir: format!("PG_{new_major}_{}", new_control.catalog_version),
    };
    let old_spaces = tablespaces(&old_datadir)?;
    let new_spaces = tablespaces(&new_datadir)?;
    let place = |path: &Path, datadir: &Path, spaces: &BTreeMap<u32, PathBuf>| -> Option<KitPath> {
        if let Ok(rest) = path.strip_prefix(datadir) {
            return Some(KitPath {
                tablespace: None,
                path: rest.to_path_buf(),
            });
        }
        spaces.iter().find_map(|(oid, location)| {
            path.strip_prefix(location).ok().map(|rest| KitPath {
                tablespace: Some(*oid),
                path: rest.to_path_buf(),
            })
        })
    };
    let block = u64::from(new_control.block_size);
    let unlogged: HashSet<PathBuf> = moves
        .moves
        .iter()
        .filter_map(|m| {
            let name = m.to.file_name()?.to_str()?;
            let base = name.strip_suffix("_init")?;
            Some(m.to.with_file_name(base))
        })
        .collect();
    let destinations: HashSet<PathBuf> = moves.moves.iter().map(|m| m.to.clone()).collect();
    let mut relations = Vec::with_capacity(moves.moves.len());
    let mut moved: HashSet<PathBuf> = HashSet::with_capacity(moves.moves.len());
    for m in &moves.moves {
        let (Some(old_path), Some(new_path)) = (
            place(&m.from, &old_datadir, &old_spaces),
            place(&m.to, &new_datadir, &new_spaces),
        ) else {
            return Err(Failure::new(
                Code::KitNotPossible,
                format!(
                    "{} → {} lies in no data directory or tablespace of the clusters",
                    m.from.display(),
                    m.to.display()
                ),
            ));
        };
        let name = m.to.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let base = name.split(['.', '_']).next().unwrap_or(name);
        let fork = if name.contains("_init") {
            Fork::Init
        } else if unlogged.contains(&m.to.with_file_name(base)) {
            Fork::Unlogged
        } else if name.contains("_fsm") {
            Fork::Fsm
        } else if name.contains("_vm") {
            Fork::Vm
        } else {
            Fork::Main
        };
        let size = std::fs::metadata(&m.to)
            .map_err(|e| Failure::new(Code::KitNotPossible, format!("{}: {e}", m.to.display())))?
            .len();
        // A segment followed by another must be whole on the standby too
        // (PostgreSQL ends a relation at its first short segment); only
        // the last may lack the zero pages nothing logged.
        let followed = next_segment(&m.to).is_some_and(|next| destinations.contains(&next));
        let min_size = match fork {
            Fork::Main | Fork::Vm if followed => size,
            Fork::Main | Fork::Vm => written_size(&m.to, size, block).map_err(|e| {
                Failure::new(Code::KitNotPossible, format!("{}: {e}", m.to.display()))
            })?,
            Fork::Init => size,
            Fork::Fsm | Fork::Unlogged => 0,
        };
        moved.insert(m.to.clone());
        relations.push(RelationFile {
            old: old_path,
            new: new_path,
            fork,
            size,
            min_size,
        });
    }
    let wal_keep = wal_segment_name(&new_control);
    let mut sources = Vec::new();
    collect(
        &new_datadir,
        &new_datadir,
        &moved,
        &wal_keep,
        &mut |relative, from, dir| {
            sources.push(Source {
                name: kit::data_name(relative),
                from: from.to_path_buf(),
                dir,
            })
        },
    )?;
    for (oid, location) in &new_spaces {
        let root = location.join(&new.tablespace_dir);
        if !root.is_dir() {
            continue;
        }
        sources.push(Source {
            name: kit::tablespace_name(*oid, Path::new(&new.tablespace_dir)),
            from: root.clone(),
            dir: true,
        });
        collect(
            &root,
            &root,
            &moved,
            &wal_keep,
            &mut |relative, from, dir| {
                sources.push(Source {
                    name: kit::tablespace_name(
                        *oid,
                        &Path::new(&new.tablespace_dir).join(relative),
                    ),
                    from: from.to_path_buf(),
                    dir,
                })
            },
        )?;
    }
    let bytes = sources
        .iter()
        .filter(|s| !s.dir)
        .filter_map(|s| std::fs::metadata(&s.from).ok())
        .map(|m| m.len())
        .sum();
    let tablespace_bytes = new_spaces
        .keys()
        .map(|oid| {
            let prefix = format!("tblspc/{oid}/");
            let bytes = sources
                .iter()
                .filter(|s| !s.dir && s.name.starts_with(&prefix))
                .filter_map(|s| std::fs::metadata(&s.from).ok())
                .map(|m| m.len())
                .sum();
            (*oid, bytes)
        })
        .filter(|(_, bytes)| *bytes > 0)
        .collect();
    let manifest = Manifest {
        format: kit::FORMAT,
        made_by: env!("CARGO_PKG_VERSION").to_string(),
        mode: plan.mode,
        old,
        new,
        tablespaces: old_spaces.keys().copied().collect(),
        relations,
        slots: view.physical_slots(),
        bytes,
        tablespace_bytes,
        standby_minimums: [
            (
                "max_connections",
                Some(i64::from(new_control.max_connections)),
            ),
            (
                "max_worker_processes",
                Some(i64::from(new_control.max_worker_processes)),
            ),
            // Recorded by every new major (12 on).
            (
                "max_wal_senders",
                new_control.max_wal_senders.map(i64::from),
            ),
            (
                "max_prepared_transactions",
                Some(i64::from(new_control.max_prepared_xacts)),
            ),
            (
                "max_locks_per_transaction",
                Some(i64::from(new_control.max_locks_per_xact)),
            ),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_string(), value?)))
        .collect(),
    };
    Ok(Made { manifest, sources })
}

/// `16384.2` → `16384.3`, `16384_vm` → `16384_vm.1`.
fn next_segment(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let (base, number) = match name.rsplit_once('.') {
        Some((base, n)) => (base, n.parse::<u32>().ok()?),
        None => (name, 0),
    };
    Some(path.with_file_name(format!("{base}.{}", number + 1)))
}

fn major_of(version: &str) -> u32 {
    version
        .split(['.', ' '])
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// Why the new cluster is no longer as the upgrade left it, if it is not.
fn ran_since(new_datadir: &Path, view: &JournalView) -> Option<String> {
    if new_datadir.join("postmaster.pid").exists() {
        return Some("it has a postmaster.pid".into());
    }
    let Some(left) = view.new_control_as_left() else {
        return Some("the journal does not say how the upgrade left its pg_control".into());
    };
    match ControlFile::read(new_datadir) {
        Ok(now) if now.stamp() == left => None,
        Ok(now) => Some(now.stamp().changes_since(&left).join("; ")),
        Err(e) => Some(e.to_string()),
    }
}

/// Each tablespace of a data directory: OID → location (its `pg_tblspc`
/// link as written, which is how the catalog and the transfer plan name it).
pub fn tablespaces(datadir: &Path) -> Result<BTreeMap<u32, PathBuf>, Failure> {
    let dir = datadir.join("pg_tblspc");
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| Failure::new(Code::KitNotPossible, format!("{}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        let Some(oid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let location = std::fs::read_link(entry.path()).map_err(|e| {
            Failure::new(
                Code::KitNotPossible,
                format!(
                    "{}: {e} (a tablespace inside the data directory is not supported)",
                    entry.path().display()
                ),
            )
        })?;
        out.insert(oid, location);
    }
    Ok(out)
}

/// The size of a relation file without the all-zero pages at its end: those
/// a backend extended the file by without writing them (nothing logs them,
/// so a standby may not have them).
fn written_size(path: &Path, size: u64, block: u64) -> std::io::Result<u64> {
    let file = std::fs::File::open(path)?;
    let mut end = size - size % block;
    let mut page = vec![0u8; block as usize];
    while end >= block {
        file.read_exact_at(&mut page, end - block)?;
        if page.iter().any(|&b| b != 0) {
            break;
        }
        end -= block;
    }
    Ok(end)
}

/// The WAL segment the new cluster's last checkpoint is in: the only WAL a
/// standby needs from the kit (the rest it streams).
fn wal_segment_name(control: &ControlFile) -> String {
    let segment = u64::from(control.wal_segment_size.max(1));
    let number = control.redo_lsn / segment;
    let per_id = 0x1_0000_0000u64 / segment;
    format!(
        "{:08X}{:08X}{:08X}",
        control.timeline,
        number / per_id,
        number % per_id
    )
}

/// What a standby must not inherit from the primary's data directory:
/// pg-migrate's own directory, the running server's files, the primary's
/// replication slots, old and pre-allocated WAL, caches rebuilt at start.
fn left_out(relative: &Path, wal_keep: &str) -> bool {
    let text = relative.to_string_lossy();
    let mut parts = relative.components();
    let first = parts
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    let is_child = relative.components().count() > 1;
    let name = relative
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match first.as_str() {
        journal::DIR => true,
        "postmaster.pid" | "postmaster.opts" | "standby.signal" | "recovery.signal" => true,
        // The server log (log_directory's default), the primary's own.
        "log" => true,
        "pg_replslot" | "pg_stat_tmp" | "pg_dynshmem" | "pg_notify" | "pg_serial"
        | "pg_snapshots" | "pg_subtrans" | "pg_tblspc" => is_child,
        "pg_wal" => {
            is_child
                && !(text == "pg_wal/archive_status"
                    || text == "pg_wal/summaries"
                    || name == wal_keep
                    || name.ends_with(".history"))
        }
        _ => name == "pg_internal.init",
    }
}

fn collect(
    root: &Path,
    walk: &Path,
    moved: &HashSet<PathBuf>,
    wal_keep: &str,
    add: &mut dyn FnMut(&Path, &Path, bool),
) -> Result<(), Failure> {
    let mut entries: Vec<_> = std::fs::read_dir(walk)
        .map_err(|e| Failure::new(Code::KitNotPossible, format!("{}: {e}", walk.display())))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if left_out(&relative, wal_keep) || moved.contains(&path) {
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(|e| Failure::new(Code::KitNotPossible, format!("{}: {e}", path.display())))?;
        if kind.is_dir() {
            add(&relative, &path, true);
            collect(root, &path, moved, wal_keep, add)?;
        } else if kind.is_file() {
            add(&relative, &path, false);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_after_each_fork_file() {
        let next = |p: &str| next_segment(Path::new(p)).unwrap();
        assert_eq!(next("/d/base/5/16384"), Path::new("/d/base/5/16384.1"));
        assert_eq!(next("/d/base/5/16384.7"), Path::new("/d/base/5/16384.8"));
        assert_eq!(
            next("/d/base/5/16384_vm"),
            Path::new("/d/base/5/16384_vm.1")
        );
    }
}
