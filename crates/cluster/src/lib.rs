//! `pgm-cluster` knows a PostgreSQL installation (a bindir: which tools, which
//! version) and a data directory (PG_VERSION, layout, postmaster.pid and
//! `global/pg_control`, decoded natively for every supported major), and runs
//! servers privately (unix socket in a 0700 directory, no TCP).
//!
//! It trusts neither: every fact is read and validated, and every problem is a
//! typed [`Error`]. It never decides whether an upgrade may proceed (that is
//! the verifier's job) and never prints: callers observe commands through
//! [`command::set_observer`].

pub mod command;
pub mod control;
pub mod datadir;
mod error;
pub mod faults;
pub mod install;
mod mode;
pub mod password;
pub mod server;
pub mod sql;
pub mod version;

pub use control::{ClusterState, ControlFile, ControlStamp};
pub use datadir::{DataDir, PidFile, ServerStatus};
pub use error::{describe_pg_error, Error};
pub use install::{Installation, Tool};
pub use mode::TransferMode;
pub use server::{Server, ServerOptions};
pub use version::{PgMajor, PgVersion};

pub type Result<T, E = Error> = std::result::Result<T, E>;
