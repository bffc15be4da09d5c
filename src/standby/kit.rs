//! The standby kit's format: one zstd-compressed tar stream. First
//! `manifest.json` (both clusters' identities, the relation map), then the
//! new primary's files that are not relation files moved from the old
//! cluster, under `data/` (the data directory) and `tblspc/OID/` (a
//! tablespace's location), then `end.json`: every file's size and SHA-256,
//! and the manifest's. A stream without its end, or with a file whose hash
//! differs, is refused whole. This module reads and writes the stream; what
//! goes into it and what is done with it are `make`'s and `apply`'s.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cli::Mode;
use crate::support::hex;

/// The kit format this build writes and reads.
pub const FORMAT: u32 = 1;

const MANIFEST: &str = "manifest.json";
const END: &str = "end.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The pg-migrate that made it.
    pub made_by: String,
    pub mode: Mode,
    pub old: KitCluster,
    pub new: KitCluster,
    /// The tablespaces (OIDs) both clusters have.
    pub tablespaces: Vec<u32>,
    /// Each relation file of the old cluster and where it goes.
    pub relations: Vec<RelationFile>,
    /// Physical replication slots the new primary keeps for its standbys.
    pub slots: Vec<String>,
    /// Bytes of the files in the kit.
    pub bytes: u64,
    /// The settings the new pg_control records, which a standby starting
    /// from it must match or exceed (PostgreSQL's hot standby rule).
    #[serde(default)]
    pub standby_minimums: Vec<(String, i64)>,
    /// Bytes of the kit's files that go into each tablespace's location.
    #[serde(default)]
    pub tablespace_bytes: Vec<(u32, u64)>,
}

/// One cluster as the kit knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KitCluster {
    pub major: u32,
    pub version: String,
    pub system_identifier: u64,
    /// The last checkpoint: the old primary's before the upgrade, the new
    /// one's as the upgrade left it.
    pub checkpoint_lsn: u64,
    pub timeline: u32,
    pub catalog_version: u32,
    /// `PG_<major>_<catalog version>`: its directory in each tablespace.
    pub tablespace_dir: String,
}

/// A path in one of a cluster's places.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KitPath {
    /// `None`: the data directory; `Some(oid)`: the tablespace's location.
    pub tablespace: Option<u32>,
    pub path: PathBuf,
}

/// What a relation file is to a standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fork {
    /// A main fork's segment (the first one must exist).
    Main,
    /// Free space map: a hint the standby keeps as it has it, or not at all.
    Fsm,
    /// Visibility map (WAL-logged).
    Vm,
    /// An unlogged relation's init fork: all a standby holds of it.
    Init,
    /// An unlogged relation's other forks: a standby has none (PostgreSQL
    /// makes them from the init fork when it is promoted).
    Unlogged,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelationFile {
    pub old: KitPath,
    pub new: KitPath,
    pub fork: Fork,
    /// The primary's size.
    pub size: u64,
    /// The primary's size less the all-zero pages at its end.
    pub min_size: u64,
}

/// The end of the stream: what was in it.
#[derive(Debug, Serialize, Deserialize)]
struct End {
    manifest_sha256: String,
    files: Vec<EndFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct EndFile {
    name: String,
    size: u64,
    sha256: String,
}

/// One entry to write: its name in the kit and where it comes from.
pub struct Source {
    pub name: String,
    pub from: PathBuf,
    pub dir: bool,
}

/// Reading through, hashing what passes.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(mode);
    header.set_entry_type(kind);
    header.set_mtime(0);
    header
}

/// Writes the kit to `out`; returns the bytes of files it holds.
pub fn write(out: impl Write, manifest: &Manifest, sources: &[Source]) -> std::io::Result<u64> {
    let encoder = zstd::stream::write::Encoder::new(out, 3)?;
    let mut tar = tar::Builder::new(encoder);
    let manifest_bytes = serde_json::to_vec_pretty(manifest).map_err(std::io::Error::other)?;
    let mut h = header(manifest_bytes.len() as u64, 0o600, tar::EntryType::Regular);
    tar.append_data(&mut h, MANIFEST, manifest_bytes.as_slice())?;
    let mut end = End {
        manifest_sha256: hex(&Sha256::digest(&manifest_bytes)),
        files: Vec::new(),
    };
    let mut total = 0;
    for source in sources {
        if source.dir {
            let mut h = header(0, 0o700, tar::EntryType::Directory);
            tar.append_data(&mut h, &source.name, std::io::empty())?;
            continue;
        }
        let file = std::fs::File::open(&source.from).map_err(|e| {
            std::io::Error::new(e.kind(), format!("{}: {e}", source.from.display()))
        })?;
        let size = file.metadata()?.len();
        let mut h = header(size, 0o600, tar::EntryType::Regular);
        let mut reader = Hashing {
            inner: file.take(size),
            hash: Sha256::new(),
        };
        tar.append_data(&mut h, &source.name, &mut reader)?;
        total += size;
        end.files.push(EndFile {
            name: source.name.clone(),
            size,
            sha256: hex(&reader.hash.finalize()),
        });
    }
    let end_bytes = serde_json::to_vec(&end).map_err(std::io::Error::other)?;
    let mut h = header(end_bytes.len() as u64, 0o600, tar::EntryType::Regular);
    tar.append_data(&mut h, END, end_bytes.as_slice())?;
    let encoder = tar.into_inner()?;
    let mut out = encoder.finish()?;
    out.flush()?;
    Ok(total)
}

/// Why a kit cannot be used.
#[derive(Debug)]
pub enum ReadError {
    /// The stream is not a whole, undamaged kit.
    Damaged(String),
    /// It is a kit, but refused by the caller's look at the manifest.
    Refused(crate::failure::Failure),
    Io(String),
}

/// A kit's name in the kit, made safe: relative, no `..`.
fn safe_name(name: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in name.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// A manifest path: relative, without `..`, in one of the kit's tablespaces.
fn within(at: &KitPath, manifest: &Manifest) -> bool {
    safe_name(&at.path).as_deref() == Some(at.path.as_path())
        && match at.tablespace {
            None => true,
            Some(oid) => manifest.tablespaces.contains(&oid),
        }
}

/// Where a kit's file may go: the new data directory, but not through its
/// tablespace links nor into pg-migrate's own directory; a tablespace's
/// location, only inside the new major's directory of a known tablespace.
fn installable(name: &Path, manifest: &Manifest) -> bool {
    let parts: Vec<&str> = name.iter().filter_map(|p| p.to_str()).collect();
    match parts.as_slice() {
        ["data", "pg_tblspc"] => true,
        ["data", "pg_tblspc", ..] | ["data", crate::journal::DIR, ..] => false,
        ["data", ..] => true,
        ["tblspc", oid, dir, ..] => {
            oid.parse::<u32>()
                .is_ok_and(|o| manifest.tablespaces.contains(&o))
                && *dir == manifest.new.tablespace_dir
        }
        _ => false,
    }
}

/// What the caller's look at the manifest decided.
pub enum Look {
    /// Read the files too.
    Unpack,
    /// The manifest was all it wanted (`--check`).
    Stop,
}

/// How far a kit was read.
#[derive(Debug)]
pub enum Unpacked {
    /// The manifest only (the look said [`Look::Stop`]).
    ManifestOnly(Manifest),
    /// Every file is in `staging`, proven.
    Whole(Manifest),
}

/// Reads a kit: the manifest first, handed to `look` (which may refuse, or
/// stop, before anything is written), then every file into `staging` (made
/// here), each checked against the end's size and hash.
pub fn read(
    input: impl Read,
    staging: &Path,
    look: impl FnOnce(&Manifest) -> Result<Look, crate::failure::Failure>,
) -> Result<Unpacked, ReadError> {
    let damaged = |what: String| ReadError::Damaged(what);
    let decoder = zstd::stream::read::Decoder::new(input)
        .map_err(|e| damaged(format!("not a kit stream: {e}")))?;
    let mut archive = tar::Archive::new(decoder);
    let mut entries = archive
        .entries()
        .map_err(|e| damaged(format!("not a kit stream: {e}")))?;
    let first = entries
        .next()
        .ok_or_else(|| damaged("the stream is empty".into()))?
        .map_err(|e| damaged(format!("not a kit stream: {e}")))?;
    let name = first.path().map(|p| p.into_owned()).unwrap_or_default();
    if name != Path::new(MANIFEST) {
        return Err(damaged(format!(
            "it begins with {}, not a kit's manifest",
            name.display()
        )));
    }
    let mut manifest_bytes = Vec::new();
    let mut first = first;
    first
        .read_to_end(&mut manifest_bytes)
        .map_err(|e| damaged(format!("the manifest is cut short: {e}")))?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| damaged(format!("the manifest is not a kit manifest: {e}")))?;
    if manifest.format != FORMAT {
        return Err(damaged(format!(
            "kit format {} (made by pg-migrate {}); this pg-migrate reads format {FORMAT}",
            manifest.format, manifest.made_by
        )));
    }
    if let Some(bad) = manifest.relations.iter().find_map(|r| {
        [&r.old, &r.new]
            .into_iter()
            .find(|p| !within(p, &manifest))
            .map(|p| p.path.display().to_string())
    }) {
        return Err(damaged(format!(
            "the manifest names {bad}, outside the clusters' places"
        )));
    }
    if let Look::Stop = look(&manifest).map_err(ReadError::Refused)? {
        return Ok(Unpacked::ManifestOnly(manifest));
    }
    std::fs::create_dir_all(staging)
        .map_err(|e| ReadError::Io(format!("{}: {e}", staging.display())))?;
    let mut seen: Vec<EndFile> = Vec::new();
    let mut end: Option<End> = None;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| damaged(format!("the stream is damaged or cut short: {e}")))?;
        if end.is_some() {
            return Err(damaged("there is more after the kit's end".into()));
        }
        let raw = entry
            .path()
            .map_err(|e| damaged(format!("a name in the kit is unreadable: {e}")))?
            .into_owned();
        if raw == Path::new(END) {
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| damaged(format!("the end is cut short: {e}")))?;
            end = Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| damaged(format!("the end is unreadable: {e}")))?,
            );
            continue;
        }
        let name = safe_name(&raw)
            .filter(|n| installable(n, &manifest))
            .ok_or_else(|| {
                damaged(format!(
                    "the kit names {}, outside its places",
                    raw.display()
                ))
            })?;
        let target = staging.join(&name);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target)
                    .map_err(|e| ReadError::Io(format!("{}: {e}", target.display())))?;
            }
            tar::EntryType::Regular => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| ReadError::Io(format!("{}: {e}", parent.display())))?;
                }
                let mut out = std::fs::File::create(&target)
                    .map_err(|e| ReadError::Io(format!("{}: {e}", target.display())))?;
                let mut hashing = Hashing {
                    inner: &mut entry,
                    hash: Sha256::new(),
                };
                let size = std::io::copy(&mut hashing, &mut out).map_err(|e| {
                    damaged(format!("{} is cut short or damaged: {e}", name.display()))
                })?;
                seen.push(EndFile {
                    name: name.display().to_string(),
                    size,
                    sha256: hex(&hashing.hash.finalize()),
                });
            }
            other => {
                return Err(damaged(format!(
                    "{} is a {other:?}, which a kit never holds",
                    name.display()
                )))
            }
        }
    }
    let end = end
        .ok_or_else(|| damaged("the stream ends before the kit's end: it was cut short".into()))?;
    if end.manifest_sha256 != hex(&Sha256::digest(&manifest_bytes)) {
        return Err(damaged(
            "the manifest differs from the one the kit was made with".into(),
        ));
    }
    if end.files.len() != seen.len() {
        return Err(damaged(format!(
            "the kit was made with {} files, the stream holds {}",
            end.files.len(),
            seen.len()
        )));
    }
    for (want, got) in end.files.iter().zip(&seen) {
        if want.name != got.name || want.size != got.size || want.sha256 != got.sha256 {
            return Err(damaged(format!(
                "{} differs from the file the kit was made with",
                got.name
            )));
        }
    }
    Ok(Unpacked::Whole(manifest))
}

/// The kit's name of a file of the data directory.
pub fn data_name(relative: &Path) -> String {
    Path::new("data").join(relative).display().to_string()
}

/// The kit's name of a file in a tablespace's location.
pub fn tablespace_name(oid: u32, relative: &Path) -> String {
    Path::new("tblspc")
        .join(oid.to_string())
        .join(relative)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let cluster = |major| KitCluster {
            major,
            version: format!("{major}.1"),
            system_identifier: 7,
            checkpoint_lsn: 0x100_0028,
            timeline: 1,
            catalog_version: 1,
            tablespace_dir: format!("PG_{major}_1"),
        };
        Manifest {
            format: FORMAT,
            made_by: "test".into(),
            mode: Mode::Link,
            old: cluster(16),
            new: cluster(18),
            tablespaces: vec![],
            relations: vec![],
            slots: vec!["s".into()],
            bytes: 0,
            standby_minimums: vec![],
            tablespace_bytes: vec![],
        }
    }

    fn kit_of(dir: &Path) -> Vec<u8> {
        std::fs::create_dir_all(dir.join("src/global")).unwrap();
        std::fs::write(dir.join("src/global/pg_control"), vec![3u8; 8192]).unwrap();
        std::fs::write(dir.join("src/PG_VERSION"), "18\n").unwrap();
        let sources = vec![
            Source {
                name: data_name(Path::new("global")),
                from: dir.join("src/global"),
                dir: true,
            },
            Source {
                name: data_name(Path::new("global/pg_control")),
                from: dir.join("src/global/pg_control"),
                dir: false,
            },
            Source {
                name: data_name(Path::new("PG_VERSION")),
                from: dir.join("src/PG_VERSION"),
                dir: false,
            },
        ];
        let mut out = Vec::new();
        let bytes = write(&mut out, &manifest(), &sources).unwrap();
        assert_eq!(bytes, 8192 + 3);
        out
    }

    #[test]
    fn a_kit_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let kit = kit_of(dir.path());
        let staging = dir.path().join("staging");
        let read_back = read(kit.as_slice(), &staging, |m| {
            assert_eq!(m.slots, vec!["s".to_string()]);
            Ok(Look::Unpack)
        })
        .unwrap_or_else(|e| panic!("{e:?}"));
        let Unpacked::Whole(read_back) = read_back else {
            panic!("not read whole")
        };
        assert_eq!(read_back.old.major, 16);
        assert_eq!(
            std::fs::read(staging.join("data/global/pg_control")).unwrap(),
            vec![3u8; 8192]
        );
        assert_eq!(
            std::fs::read_to_string(staging.join("data/PG_VERSION")).unwrap(),
            "18\n"
        );
    }

    #[test]
    fn a_kit_cut_short_or_damaged_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let kit = kit_of(dir.path());
        for cut in [kit.len() - 1, kit.len() * 3 / 4, kit.len() / 2] {
            let staging = dir.path().join(format!("cut{cut}"));
            let result = read(&kit[..cut], &staging, |_| Ok(Look::Unpack));
            assert!(
                matches!(result, Err(ReadError::Damaged(_))),
                "cut at {cut}: {result:?}"
            );
        }
        // Uncompressed, a flipped byte in a file is caught by its hash.
        let mut plain = Vec::new();
        zstd::stream::copy_decode(kit.as_slice(), &mut plain).unwrap();
        let at = plain.windows(8).position(|w| w == [3u8; 8]).unwrap() + 100;
        plain[at] ^= 1;
        let damaged = zstd::stream::encode_all(plain.as_slice(), 3).unwrap();
        let result = read(damaged.as_slice(), &dir.path().join("flipped"), |_| {
            Ok(Look::Unpack)
        });
        match result {
            Err(ReadError::Damaged(why)) => assert!(why.contains("pg_control"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refusal_at_the_manifest_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let kit = kit_of(dir.path());
        let staging = dir.path().join("staging");
        let result = read(kit.as_slice(), &staging, |_| {
            Err(crate::failure::Failure::new(
                crate::failure::Code::ChecksFailed,
                "no",
            ))
        });
        assert!(matches!(result, Err(ReadError::Refused(_))));
        assert!(!staging.exists());
        let result = read(kit.as_slice(), &staging, |_| Ok(Look::Stop));
        assert!(
            matches!(result, Ok(Unpacked::ManifestOnly(_))),
            "{result:?}"
        );
        assert!(!staging.exists());
    }

    #[test]
    fn only_the_new_clusters_places_are_installable() {
        let mut m = manifest();
        m.tablespaces = vec![16400];
        for (name, ok) in [
            ("data/base/1/1259", true),
            ("data/pg_tblspc", true),
            ("data/pg_tblspc/16400/PG_16_1/1/16384", false),
            ("data/pg_migrate.d/standby.ndjson", false),
            ("tblspc/16400/PG_18_1/5/16384", true),
            ("tblspc/16400/PG_16_1/5/16384", false),
            ("tblspc/99/PG_18_1/5/16384", false),
            ("elsewhere/x", false),
        ] {
            assert_eq!(installable(Path::new(name), &m), ok, "{name}");
        }
        let at = |tablespace, path: &str| KitPath {
            tablespace,
            path: PathBuf::from(path),
        };
        assert!(within(&at(None, "base/5/16384.1"), &m));
        assert!(within(&at(Some(16400), "PG_18_1/5/16384"), &m));
        assert!(!within(&at(None, "../other/base/5/16384"), &m));
        assert!(!within(&at(None, "/etc/passwd"), &m));
        assert!(!within(&at(Some(7), "PG_18_1/5/16384"), &m));
    }

    #[test]
    fn names_outside_the_kit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let bytes = serde_json::to_vec(&manifest()).unwrap();
        let mut h = header(bytes.len() as u64, 0o600, tar::EntryType::Regular);
        tar.append_data(&mut h, MANIFEST, bytes.as_slice()).unwrap();
        let mut h = header(4, 0o600, tar::EntryType::Regular);
        let name = b"data/../../evil";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        tar.append(&h, &b"evil"[..]).unwrap();
        let plain = tar.into_inner().unwrap();
        let kit = zstd::stream::encode_all(plain.as_slice(), 3).unwrap();
        let staging = dir.path().join("deep/staging");
        let result = read(kit.as_slice(), &staging, |_| Ok(Look::Unpack));
        assert!(matches!(result, Err(ReadError::Damaged(_))), "{result:?}");
        assert!(!dir.path().join("evil").exists());
    }
}
