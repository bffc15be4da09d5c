//! A PostgreSQL installation: a bindir, the programs found in it, and the
//! version each reports. Server-only installs (just `postgres`, `pg_ctl`,
//! `initdb`) are normal on the old side and must be described, not rejected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::command::PgCommand;
use crate::{Error, PgVersion};

/// The PostgreSQL programs pg-migrate may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tool {
    Postgres,
    PgCtl,
    Initdb,
    PgDump,
    PgDumpall,
    PgRestore,
    PgResetwal,
    PgControldata,
    Psql,
    Vacuumdb,
}

impl Tool {
    pub const ALL: [Tool; 10] = [
        Tool::Postgres,
        Tool::PgCtl,
        Tool::Initdb,
        Tool::PgDump,
        Tool::PgDumpall,
        Tool::PgRestore,
        Tool::PgResetwal,
        Tool::PgControldata,
        Tool::Psql,
        Tool::Vacuumdb,
    ];

    /// The old side only needs to run its server: every client program and
    /// pg_control reading comes from the new install or from pg-migrate itself.
    pub const REQUIRED_OLD: [Tool; 2] = [Tool::Postgres, Tool::PgCtl];

    /// What pg-migrate runs from the old bindir: its server, and its
    /// pg_dump and pg_dumpall for a backup when they are there.
    pub const USED_OLD: [Tool; 4] = [Tool::Postgres, Tool::PgCtl, Tool::PgDump, Tool::PgDumpall];

    /// The new side does all the work.
    pub const REQUIRED_NEW: [Tool; 9] = [
        Tool::Postgres,
        Tool::PgCtl,
        Tool::Initdb,
        Tool::PgDump,
        Tool::PgDumpall,
        Tool::PgRestore,
        Tool::PgResetwal,
        Tool::Psql,
        Tool::Vacuumdb,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            Tool::Postgres => "postgres",
            Tool::PgCtl => "pg_ctl",
            Tool::Initdb => "initdb",
            Tool::PgDump => "pg_dump",
            Tool::PgDumpall => "pg_dumpall",
            Tool::PgRestore => "pg_restore",
            Tool::PgResetwal => "pg_resetwal",
            Tool::PgControldata => "pg_controldata",
            Tool::Psql => "psql",
            Tool::Vacuumdb => "vacuumdb",
        }
    }
}

/// One program found in the bindir.
#[derive(Debug, Clone, Serialize)]
pub struct FoundTool {
    pub path: PathBuf,
    pub version: PgVersion,
}

/// A bindir and what it holds.
#[derive(Debug, Clone, Serialize)]
pub struct Installation {
    pub bindir: PathBuf,
    /// The version of the server program (`postgres --version`), or of
    /// `pg_ctl` when there is no server.
    pub version: PgVersion,
    pub tools: BTreeMap<Tool, FoundTool>,
    /// Programs present but unusable (not executable, or no version answer).
    pub broken: BTreeMap<Tool, String>,
}

impl Installation {
    /// Looks at every known program in `bindir`. Fails only when the bindir
    /// is unusable or holds neither `postgres` nor `pg_ctl`.
    pub fn discover(bindir: &Path) -> Result<Installation, Error> {
        let meta = std::fs::metadata(bindir).map_err(|e| Error::io(bindir, e))?;
        if !meta.is_dir() {
            return Err(Error::io(
                bindir,
                std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        let mut tools = BTreeMap::new();
        let mut broken = BTreeMap::new();
        for tool in Tool::ALL {
            let path = bindir.join(tool.file_name());
            if !path.exists() {
                continue;
            }
            if nix::unistd::access(&path, nix::unistd::AccessFlags::X_OK).is_err() {
                broken.insert(tool, "not executable by this user".to_string());
                continue;
            }
            match PgCommand::new(&path).arg("--version").run() {
                Ok(out) => match PgVersion::parse_version_output(&out.stdout) {
                    Ok(version) => {
                        tools.insert(tool, FoundTool { path, version });
                    }
                    Err(e) => {
                        broken.insert(tool, e.to_string());
                    }
                },
                Err(e) => {
                    broken.insert(tool, e.to_string());
                }
            }
        }
        let version = [Tool::Postgres, Tool::PgCtl]
            .iter()
            .find_map(|t| tools.get(t))
            .map(|t| t.version.clone())
            .ok_or_else(|| Error::ToolsMissing {
                bindir: bindir.to_path_buf(),
                tools: vec!["postgres".into(), "pg_ctl".into()],
            })?;
        Ok(Installation {
            bindir: bindir.to_path_buf(),
            version,
            tools,
            broken,
        })
    }

    pub fn path(&self, tool: Tool) -> Option<&Path> {
        self.tools.get(&tool).map(|t| t.path.as_path())
    }

    /// The path of a program the caller cannot do without.
    pub fn require(&self, tool: Tool) -> Result<&Path, Error> {
        self.path(tool).ok_or_else(|| Error::ToolsMissing {
            bindir: self.bindir.clone(),
            tools: vec![tool.file_name().to_string()],
        })
    }

    /// Which of `required` are absent or unusable.
    pub fn missing(&self, required: &[Tool]) -> Vec<Tool> {
        required
            .iter()
            .copied()
            .filter(|t| !self.tools.contains_key(t))
            .collect()
    }

    /// Of the programs in `used`, those whose version differs from the
    /// install's (a mixed bindir). Programs pg-migrate never runs do not
    /// matter, whatever their version.
    pub fn version_mismatches(&self, used: &[Tool]) -> Vec<(Tool, &PgVersion)> {
        self.tools
            .iter()
            .filter(|(tool, found)| used.contains(tool) && found.version != self.version)
            .map(|(tool, found)| (*tool, &found.version))
            .collect()
    }

    pub fn command(&self, tool: Tool) -> Result<PgCommand, Error> {
        Ok(PgCommand::new(self.require(tool)?))
    }
}
