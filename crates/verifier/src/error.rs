//! What can keep a check from finishing (a server that does not start, a
//! query that fails): the crate's own error, turned into a failing finding
//! by the check that met it.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cluster(#[from] pgm_cluster::Error),
    #[error("query failed in database \"{database}\" ({what}): {detail}")]
    Query {
        database: String,
        what: String,
        detail: String,
    },
    /// The proof's schema dump (pg_dumpall) failed.
    #[error("pg_dumpall failed: {0}")]
    Dump(String),
}
