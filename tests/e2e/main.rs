//! End-to-end tests: the pg-migrate binary against real PostgreSQL servers of
//! several majors (scripts/install-postgres.sh installs them). One test
//! binary; each module is one area.

mod bad_input;
mod catalogue;
mod check_pairs;
mod cli;
mod control;
mod faults;
mod json_schema;
mod modes;
mod online;
mod parallel_restore;
mod patroni;
mod proof;
mod recovery;
mod replication;
mod safety;
mod standby;
mod support;
mod upgrade;
mod verify;
mod workflows;
