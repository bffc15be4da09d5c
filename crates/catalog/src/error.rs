use std::path::PathBuf;

/// What can go wrong while moving the catalog.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cluster(#[from] pgm_cluster::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("query failed in database \"{database}\" ({what}): {detail}")]
    Query {
        database: String,
        what: String,
        detail: String,
    },
    /// A dump or restore program failed; `log` holds its full output.
    #[error("{what} failed: {detail} (full output: {log})")]
    Program {
        what: String,
        detail: String,
        log: PathBuf,
    },
    #[error("{0}")]
    Inconsistent(String),
    /// A backup cannot be restored: no manifest (it never finished, or is
    /// no pg-migrate backup) …
    #[error(
        "it has no manifest.json: the backup did not finish, or this is not a pg-migrate backup"
    )]
    BackupWithoutManifest,
    /// … a manifest that cannot be read or is of an unknown format …
    #[error("its manifest.json is unreadable: {0}")]
    BackupManifestUnreadable(String),
    /// … a file it lists is missing …
    #[error("{0}, which its manifest lists, is missing")]
    BackupFileMissing(String),
    /// … or differs from it (size or SHA-256).
    #[error("{file} is damaged: {detail}")]
    BackupFileDamaged { file: String, detail: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn query(database: &str, what: &str, e: &postgres::Error) -> Error {
        Error::Query {
            database: database.to_string(),
            what: what.to_string(),
            detail: pgm_cluster::describe_pg_error(e),
        }
    }
}
