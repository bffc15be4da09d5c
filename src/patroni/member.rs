//! The work pg-migrate does on one member's own host, asked by the leader's
//! `pg-migrate patroni` (through the remote command, or in-process for the
//! leader): `probe` looks at the member without changing anything. The
//! answer is one JSON document on stdout; what is wrong goes in it, for the
//! leader to judge with every other member's.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use pgm_cluster::install::{Installation, Tool};

use super::config::{known_change, PatroniConfig};

/// What a member is and has, as its own host sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    pub name: String,
    pub scope: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    /// PG_VERSION of the data directory.
    pub old_major: Option<u32>,
    pub system_identifier: Option<String>,
    /// Whether the data directory is a standby's (standby.signal).
    pub standby: bool,
    pub new_bindir: PathBuf,
    /// The new installation's version, when it is usable.
    pub new_version: Option<String>,
    pub new_major: Option<u32>,
    /// Why the new installation is not usable here.
    pub new_install_problem: Option<String>,
    pub new_datadir: PathBuf,
    /// Why the new data directory cannot be made here.
    pub new_datadir_problem: Option<String>,
    /// The new data directory's parent and the data directory share a
    /// filesystem (needed to link relation files).
    pub same_filesystem: Option<bool>,
    /// Free bytes where the new data directory goes.
    pub free_bytes: Option<u64>,
    /// Bytes of the system catalogs (global/ and relations below OID 16384)
    /// and of the rest besides relation files: what the new data directory
    /// takes when relation files are linked.
    pub catalog_bytes: u64,
    /// Settings in this member's `postgresql.parameters` the new server does
    /// not know and pg-migrate cannot carry.
    pub unknown_settings: Vec<String>,
    /// Settings renamed or removed by the new major that pg-migrate carries.
    pub changed_settings: Vec<String>,
    /// Problems that make this member's answer incomplete.
    pub problems: Vec<String>,
}

/// The new data directory from its template: `{data_dir}`, `{name}`, `{major}`.
pub fn new_datadir(template: &str, config: &PatroniConfig, new_major: Option<u32>) -> PathBuf {
    let major = new_major
        .map(|m| m.to_string())
        .unwrap_or_else(|| "new".into());
    PathBuf::from(
        template
            .replace("{data_dir}", &config.data_dir.display().to_string())
            .replace("{name}", &config.name)
            .replace("{major}", &major),
    )
}

/// Looks at this member: its configuration `config`, the new installation
/// `new_bindir`, the new data directory from `new_datadir_template`.
pub fn probe(
    config_path: &Path,
    new_bindir: &Path,
    new_datadir_template: &str,
) -> Result<Probe, String> {
    let config = PatroniConfig::read(config_path)?;
    let mut problems = Vec::new();
    let data_dir = config.data_dir.clone();
    let old_major = std::fs::read_to_string(data_dir.join("PG_VERSION"))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok());
    if old_major.is_none() {
        problems.push(format!("{} has no readable PG_VERSION", data_dir.display()));
    }
    let system_identifier = match pgm_cluster::ControlFile::read(&data_dir) {
        Ok(control) => Some(control.system_identifier.to_string()),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    let standby = data_dir.join("standby.signal").exists();

    let (new_version, new_major, new_install_problem) = match Installation::discover(new_bindir) {
        Ok(install) => {
            let missing: Vec<&str> = install
                .missing(&[Tool::Postgres, Tool::PgCtl, Tool::Initdb])
                .iter()
                .map(|t| t.file_name())
                .collect();
            let major = install.version.major.number();
            let problem = if !missing.is_empty() {
                Some(format!(
                    "{} lacks {}",
                    new_bindir.display(),
                    missing.join(", ")
                ))
            } else {
                None
            };
            (Some(install.version.text.clone()), Some(major), problem)
        }
        Err(e) => (None, None, Some(e.to_string())),
    };

    let new_datadir = new_datadir(new_datadir_template, &config, new_major);
    let parent = new_datadir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let new_datadir_problem = if new_datadir == data_dir {
        Some("the new data directory is the old one".to_string())
    } else if std::fs::read_dir(&new_datadir).is_ok_and(|mut d| d.next().is_some()) {
        Some(format!("{} exists and is not empty", new_datadir.display()))
    } else if new_datadir.exists() && !new_datadir.is_dir() {
        Some(format!(
            "{} exists and is not a directory",
            new_datadir.display()
        ))
    } else if !parent.is_dir() {
        Some(format!("{} does not exist", parent.display()))
    } else if nix::unistd::access(&parent, nix::unistd::AccessFlags::W_OK).is_err() {
        Some(format!("{} is not writable by this user", parent.display()))
    } else {
        None
    };
    let same_filesystem = match (std::fs::metadata(&data_dir), std::fs::metadata(&parent)) {
        (Ok(a), Ok(b)) => {
            use std::os::unix::fs::MetadataExt;
            Some(a.dev() == b.dev())
        }
        _ => None,
    };
    let free_bytes = nix::sys::statvfs::statvfs(&parent)
        .ok()
        .map(|s| s.blocks_available() * s.fragment_size());

    let mut unknown_settings = Vec::new();
    let mut changed_settings = Vec::new();
    if let Some(major) = new_major {
        let names: Vec<String> = config
            .parameters
            .keys()
            .chain(config.bootstrap_parameters.keys())
            .cloned()
            .collect();
        changed_settings = names
            .iter()
            .filter(|n| known_change(n, major).is_some())
            .cloned()
            .collect();
        let others: Vec<String> = names
            .into_iter()
            .filter(|n| known_change(n, major).is_none())
            .collect();
        match unknown_to(new_bindir, &others) {
            Ok(unknown) => unknown_settings = unknown,
            Err(e) => problems.push(e),
        }
    }
    unknown_settings.sort();
    unknown_settings.dedup();
    changed_settings.sort();
    changed_settings.dedup();
    Ok(Probe {
        name: config.name.clone(),
        scope: config.scope.clone(),
        config: config_path.to_path_buf(),
        catalog_bytes: catalog_bytes(&data_dir),
        data_dir,
        old_major,
        system_identifier,
        standby,
        new_bindir: new_bindir.to_path_buf(),
        new_version,
        new_major,
        new_install_problem,
        new_datadir,
        new_datadir_problem,
        same_filesystem,
        free_bytes,
        unknown_settings,
        changed_settings,
        problems,
    })
}

/// Which of `names` the server of `bindir` does not know. Settings with a
/// dot are an extension's (placeholders, accepted). `--describe-config`
/// leaves out settings not meant for postgresql.conf samples, so a name it
/// lacks is asked of the server itself: `postgres -C NAME` on a scratch
/// directory holding an empty postgresql.conf (-C answers before the data
/// directory is looked at).
pub fn unknown_to(bindir: &Path, names: &[String]) -> Result<Vec<String>, String> {
    let candidates: Vec<&String> = names.iter().filter(|n| !n.contains('.')).collect();
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let described = described_settings(bindir).unwrap_or_default();
    let doubtful: Vec<&String> = candidates
        .into_iter()
        .filter(|n| !described.contains(&n.to_ascii_lowercase()))
        .collect();
    if doubtful.is_empty() {
        return Ok(Vec::new());
    }
    let scratch = tempfile::Builder::new()
        .prefix("pgm-settings-")
        .tempdir()
        .map_err(|e| format!("a scratch directory to ask the new server about settings: {e}"))?;
    std::fs::write(scratch.path().join("postgresql.conf"), "")
        .map_err(|e| format!("{}: {e}", scratch.path().display()))?;
    Ok(doubtful
        .into_iter()
        .filter(|name| {
            pgm_cluster::command::PgCommand::new(bindir.join("postgres"))
                .arg("-D")
                .arg(scratch.path())
                .arg("-C")
                .arg(name.as_str())
                .run()
                .is_err()
        })
        .cloned()
        .collect())
}

/// Every setting `postgres --describe-config` of `bindir` lists.
fn described_settings(bindir: &Path) -> Option<std::collections::BTreeSet<String>> {
    let out = pgm_cluster::command::PgCommand::new(bindir.join("postgres"))
        .arg("--describe-config")
        .run()
        .ok()?;
    Some(
        out.stdout
            .lines()
            .filter_map(|l| l.split('\t').next())
            .filter(|n| !n.is_empty())
            .map(|n| n.to_ascii_lowercase())
            .collect(),
    )
}

/// What a data directory holds besides user relation files: what a new
/// data directory made by linking them takes (an estimate, from above).
fn catalog_bytes(data_dir: &Path) -> u64 {
    let mut total = 0;
    for entry in walkdir::WalkDir::new(data_dir)
        .follow_links(false)
        .into_iter()
        .flatten()
    {
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.path();
        let user_relation = path
            .strip_prefix(data_dir)
            .ok()
            .filter(|rel| rel.starts_with("base"))
            .and_then(|rel| rel.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.split(['.', '_']).next())
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|oid| oid >= 16384);
        let wal = path
            .strip_prefix(data_dir)
            .is_ok_and(|rel| rel.starts_with("pg_wal"));
        if !user_relation && !wal {
            total += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}
