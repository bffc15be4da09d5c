//! Transfer modes beyond link and copy. `--clone` is proven on a real
//! reflink filesystem: an XFS image on a loop device that the test makes
//! (root only; CI runs as root). Where the filesystem cannot clone, the
//! check refuses before anything changes. `--copy-file-range` and `--swap`
//! have their proofs in proof.rs, swap's interruptions in faults.rs.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// A system program, found in the sbin directories a non-login PATH may lack.
fn system_program(name: &str) -> Command {
    let path = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name));
    Command::new(path)
}

/// An XFS filesystem with reflink, on a loop device, for one test.
struct ReflinkDisk {
    mount_point: PathBuf,
    image: PathBuf,
}

impl ReflinkDisk {
    /// A disk in the sandbox; where none can be made, None after saying
    /// what goes untested (`untested`) — except on CI, which runs as root
    /// and must be able to make one.
    fn mount_or_skip(sandbox: &Sandbox, untested: &str) -> Option<ReflinkDisk> {
        match ReflinkDisk::mount(&sandbox.path().join("xfs")) {
            Ok(disk) => Some(disk),
            Err(why) => {
                assert_ne!(
                    std::env::var("CI").as_deref(),
                    Ok("true"),
                    "CI runs as root and must be able to make an XFS loop device: {why}"
                );
                eprintln!("SKIP: {untested} ({why})");
                None
            }
        }
    }

    /// Why it could not be made, when it could not.
    fn mount(scratch: &Path) -> Result<ReflinkDisk, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not root: only root can mount a loop device".into());
        }
        let image = scratch.with_extension("xfs.img");
        let mount_point = scratch.to_path_buf();
        std::fs::create_dir_all(&mount_point).map_err(|e| e.to_string())?;
        // Sparse: only what the test writes takes space. 300 MB is XFS's minimum.
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(600 << 20))
            .map_err(|e| e.to_string())?;
        let run = |command: &mut Command| -> Result<(), String> {
            let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{command:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        run(system_program("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&image))?;
        let disk = ReflinkDisk { mount_point, image };
        run(system_program("mount")
            .args(["-o", "loop"])
            .arg(&disk.image)
            .arg(&disk.mount_point))?;
        let user = pgm_testkit::test_user();
        run(system_program("chown")
            .arg(format!("{}:{}", user.uid, user.gid))
            .arg(&disk.mount_point))?;
        Ok(disk)
    }
}

impl Drop for ReflinkDisk {
    fn drop(&mut self) {
        let _ = system_program("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Whether the kernel reports any extent of `file` as shared with another file.
fn shares_extents(file: &Path) -> bool {
    let out = system_program("filefrag")
        .arg("-v")
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("shared")
}

/// The largest file of a user relation (relfilenode ≥ 16384) under base/.
fn largest_user_file(datadir: &Path) -> PathBuf {
    walkdir::WalkDir::new(datadir.join("base"))
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .split(['_', '.'])
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n >= 16384)
        })
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .into_path()
}

#[test]
fn clone_on_a_reflink_filesystem() {
    if pgm_testkit::require(15).is_none() || pgm_testkit::require(18).is_none() {
        return;
    }
    let scratch = Sandbox::new();
    let Some(disk) = ReflinkDisk::mount_or_skip(
        &scratch,
        "the clone itself is not tested here; the refusal is (clone_refused_where_the_filesystem_cannot_clone)",
    ) else {
        return;
    };
    let mut pair = Pair::new_in(&disk.mount_point, 15, 18).unwrap();
    let check = pair.check(&["--clone"]);
    assert_eq!(check.status, 0, "{}", check.stderr);
    assert_eq!(check.check("transfer-mode")["status"], "pass");
    assert_eq!(check.check("disk-space")["status"], "pass");
    crate::proof::prove_on(&mut pair, "--clone", |pair| {
        // Cloned, not copied: the new file shares its blocks with the old one.
        let file = largest_user_file(&pair.new.datadir);
        let twin = pair
            .old
            .datadir
            .join(file.strip_prefix(&pair.new.datadir).unwrap());
        assert!(
            twin.exists(),
            "{} has no twin in the old cluster",
            file.display()
        );
        assert!(
            shares_extents(&file),
            "{} shares no extents",
            file.display()
        );
        assert_eq!(std::fs::read(&file).unwrap(), std::fs::read(&twin).unwrap());
    });
    drop(pair);
    drop(disk);
}

/// On XFS, links go one database directory per worker (two workers in one
/// directory slow each other down there): the rich fixture's six databases
/// and its tablespace upgraded with --link -j 2 on XFS, proven, and a user
/// relation's file shared with the old cluster.
#[test]
fn link_on_xfs_one_worker_per_directory() {
    if pgm_testkit::require(15).is_none() || pgm_testkit::require(18).is_none() {
        return;
    }
    let scratch = Sandbox::new();
    let Some(disk) = ReflinkDisk::mount_or_skip(
        &scratch,
        "links on XFS are not tested here; links elsewhere are (proof::)",
    ) else {
        return;
    };
    let mut pair = Pair::new_in(&disk.mount_point, 15, 18).unwrap();
    crate::proof::prove_on(&mut pair, "--link", |pair| {
        let file = largest_user_file(&pair.new.datadir);
        let twin = pair
            .old
            .datadir
            .join(file.strip_prefix(&pair.new.datadir).unwrap());
        let (new, old) = (
            std::fs::metadata(&file).unwrap(),
            std::fs::metadata(&twin).unwrap(),
        );
        assert_eq!(
            (new.dev(), new.ino()),
            (old.dev(), old.ino()),
            "{} is not a link of the old file",
            file.display()
        );
    });
    drop(pair);
    drop(disk);
}

/// tmpfs cannot clone: `check --clone` and the upgrade refuse, naming the
/// problem, and neither cluster changes.
#[test]
fn clone_refused_where_the_filesystem_cannot_clone() {
    let Some(pair) = Pair::new_in(Path::new("/dev/shm"), 15, 18) else {
        return;
    };
    let (old_before, new_before) = pair.snapshots();
    let run = pair.check(&["--clone"]);
    assert_refused(&run, "transfer-mode", "clone_unsupported");
    crate::json_schema::validate(&run.events);
    let mut args = pair.dir_args();
    args.extend(["--clone".into(), "--json".into()]);
    let run = pair.run(&args);
    assert_refused(&run, "transfer-mode", "clone_unsupported");
    assert_eq!(run.error()["clusters"]["old"], "unchanged");
    assert_eq!(run.error()["clusters"]["new"], "unchanged");
    let (old_after, new_after) = pair.snapshots();
    assert_same_tree(&old_before, &old_after, "old cluster");
    assert_same_tree(&new_before, &new_after, "new cluster");
}

/// Before 15 the new cluster gives relation files new names: --swap cannot
/// move directories whole, and the check says so before anything changes.
#[test]
fn swap_needs_a_new_cluster_that_keeps_file_names() {
    let Some(pair) = Pair::new(12, 14) else {
        return;
    };
    let (old_before, new_before) = pair.snapshots();
    let run = pair.check(&["--swap"]);
    assert_refused(&run, "transfer-mode", "swap_not_possible");
    let (old_after, new_after) = pair.snapshots();
    assert_same_tree(&old_before, &old_after, "old cluster");
    assert_same_tree(&new_before, &new_after, "new cluster");
}
