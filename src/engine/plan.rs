//! What the engine runs on, built once: both installations, both data
//! directories with their pg_control, and what the checks learned of both
//! catalogs. The checks build it from their report (`from_checks`); a run
//! that continues a journal (a late resume, a cutover) builds it from the
//! settings the journal filled in and the files as the run left them
//! (`from_journal`). A running old server the checks kept up for the dump
//! is no part of it: it is handed on beside it, to the step that uses it.

use std::path::Path;

use pgm_cluster::{ControlFile, DataDir, Installation};
use pgm_verifier::{CatalogFacts, Report};

use crate::cli::Settings;
use crate::failure::{Code, Failure};

pub struct Plan {
    pub old_install: Installation,
    pub new_install: Installation,
    pub old_dir: DataDir,
    pub old_control: ControlFile,
    /// `None` until pg-migrate has created the new cluster.
    pub new_dir: Option<DataDir>,
    pub new_control: Option<ControlFile>,
    /// The new data directory does not exist yet: pg-migrate creates it.
    pub new_to_create: bool,
    pub old_catalog: Option<CatalogFacts>,
    pub new_catalog: Option<CatalogFacts>,
}

impl Plan {
    /// The plan the checks established. The report stays with the caller's
    /// engine for the checks of a new cluster pg-migrate creates.
    pub fn from_checks(report: &Report) -> Result<Plan, Failure> {
        let missing = |what| {
            Failure::new(
                Code::Internal,
                format!("the checks passed without establishing {what}"),
            )
        };
        let plan = Plan {
            old_install: report
                .old
                .install
                .clone()
                .ok_or_else(|| missing("the old installation"))?,
            new_install: report
                .new
                .install
                .clone()
                .ok_or_else(|| missing("the new installation"))?,
            old_dir: report
                .old
                .datadir
                .clone()
                .ok_or_else(|| missing("the old data directory"))?,
            old_control: report
                .old
                .control
                .clone()
                .ok_or_else(|| missing("the old pg_control"))?,
            new_dir: report.new.datadir.clone(),
            new_control: report.new.control.clone(),
            new_to_create: report.new_to_create,
            old_catalog: report.old.catalog.clone(),
            new_catalog: report.new.catalog.clone(),
        };
        Ok(plan)
    }

    /// The plan of a run that continues a journal: both installations and
    /// data directories as the settings name them, each pg_control wherever
    /// the run left it. No catalog facts: what such a run needs of them the
    /// journal's saved files hold.
    pub fn from_journal(settings: &Settings) -> Result<Plan, Failure> {
        let io = |e: pgm_cluster::Error| Failure::new(Code::ResumeFailed, e);
        let old_dir = DataDir::open(settings.old_datadir(), None).map_err(io)?;
        let new_dir = DataDir::open(settings.new_datadir(), None).map_err(io)?;
        Ok(Plan {
            old_install: Installation::discover(settings.old_bindir()).map_err(io)?,
            new_install: Installation::discover(&settings.new_bindir).map_err(io)?,
            old_control: read_control(&old_dir.path)?,
            new_control: Some(read_control(&new_dir.path)?),
            old_dir,
            new_dir: Some(new_dir),
            new_to_create: false,
            old_catalog: None,
            new_catalog: None,
        })
    }
}

/// Reads a pg_control wherever a run may have left it: hidden by prepare
/// (`pg_control.prepared`) or renamed by link mode (`pg_control.old`).
pub fn read_control(datadir: &Path) -> Result<ControlFile, Failure> {
    let global = datadir.join("global");
    let path = [
        global.join("pg_control"),
        global.join("pg_control.prepared"),
        global.join("pg_control.old"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .ok_or_else(|| {
        Failure::new(
            Code::ResumeFailed,
            format!("{} has no pg_control", global.display()),
        )
    })?;
    let bytes = std::fs::read(&path)
        .map_err(|e| Failure::new(Code::ResumeFailed, format!("{}: {e}", path.display())))?;
    ControlFile::decode(&bytes, &path).map_err(|e| Failure::new(Code::ResumeFailed, e))
}
