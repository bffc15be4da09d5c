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
