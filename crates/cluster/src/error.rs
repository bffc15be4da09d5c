use std::path::PathBuf;

use crate::PgMajor;

/// Everything that can go wrong while inspecting or running a cluster.
/// Each variant names the path or command involved so that the CLI can tell
/// the user exactly what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make sense of the version string \"{0}\"")]
    BadVersionString(String),
    #[error("{path} is not a PostgreSQL data directory: {reason}")]
    NotACluster { path: PathBuf, reason: String },
    #[error("PostgreSQL {0} is not supported (supported majors: 12 to 18)")]
    UnsupportedMajor(PgMajor),
    #[error("{path} is truncated: {len} bytes, a pg_control file needs at least {need}")]
    ControlTruncated {
        path: PathBuf,
        len: usize,
        need: usize,
    },
    #[error(
        "{path} is damaged: its CRC-32C is {stored:#010x} but its contents give {computed:#010x}"
    )]
    ControlBadCrc {
        path: PathBuf,
        stored: u32,
        computed: u32,
    },
    #[error("{path} has pg_control version {found}, which no supported PostgreSQL major writes")]
    ControlUnknownVersion { path: PathBuf, found: u32 },
    #[error("{path} looks damaged: {detail}")]
    ControlImplausible { path: PathBuf, detail: String },
    #[error("{bindir} is missing {}", tools.join(", "))]
    ToolsMissing { bindir: PathBuf, tools: Vec<String> },
    #[error("{command} could not be started: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}){}", if stderr_tail.is_empty() { String::new() } else { format!(": {stderr_tail}") })]
    CommandFailed {
        command: String,
        status: String,
        stderr_tail: String,
    },
    #[error("the server options \"{0}\" have an unbalanced quote")]
    BadServerOptions(String),
    #[error("the unix socket path {path} is {len} bytes long; the limit is 107")]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("the server for {datadir} did not start: {detail} (server log: {log})")]
    ServerStart {
        datadir: PathBuf,
        log: PathBuf,
        detail: String,
    },
    #[error("the server for {datadir} did not stop: {detail}")]
    ServerStop { datadir: PathBuf, detail: String },
    #[error("could not connect to the server at {socket_dir} port {port}, database \"{database}\": {detail}")]
    Connect {
        socket_dir: PathBuf,
        port: u16,
        database: String,
        detail: String,
    },
    #[error("query failed in database \"{database}\" ({what}): {detail}")]
    Query {
        database: String,
        what: String,
        detail: String,
    },
}

/// A client error with the server's own words (the plain Display of a
/// server error says only "db error").
pub fn describe_pg_error(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{}: {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!(" hint: {hint}"));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(inner) = source {
                text.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            text
        }
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
