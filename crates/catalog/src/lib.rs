//! `pgm-catalog` moves the catalog: it reads the old cluster's databases,
//! tablespaces and relation map, dumps globals and each database's schema
//! with the new installation's binary-upgrade pg_dumpall/pg_dump, restores
//! them into the new cluster, and hands over the transaction counters
//! (commit log, multixacts, XID/epoch/OID, WAL position) with pg_resetwal.
//!
//! It never touches user data files (that is `pgm-transfer`'s job) and
//! never writes to the old cluster: the old side is only read (its server
//! queried, its pg_xact and pg_multixact copied from). Its `backup` module
//! makes and restores logical backups (every database's data included),
//! for `--backup-dir`, `backup`/`restore` and the dump-and-reload method.
//! Logical replication slots (17 and later) are read from the old cluster
//! and made again in the new one.

pub mod backup;
mod dump;
mod error;
pub mod fingerprint;
mod handover;
mod parallel;
mod relations;
mod script;
mod slots;

pub use dump::{
    dump_database, dump_globals, plan_restore, restore_database, restore_globals,
    restore_transaction_size, vacuum_all, DumpOptions, PlannedRestore,
};
pub use error::Error;
pub use handover::{
    copy_commit_log, copy_multixacts, next_wal_file_name, reset_counters, set_char_signedness,
    set_frozen_xids, set_next_oid, set_template0_locale,
};
pub use parallel::Serial;
pub use relations::{
    list_databases, list_relations, list_tablespaces, outdated_extensions, Database, Relation,
    RelationList, RelationQuery,
};
pub use slots::{
    create_logical_slots, create_physical_slots, list_logical_slots, list_physical_slots,
    LogicalSlot,
};

pub type Result<T, E = Error> = std::result::Result<T, E>;
