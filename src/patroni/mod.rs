//! `pg-migrate patroni`: a whole Patroni cluster upgraded as one operation,
//! run on the leader's host. This module owns what is Patroni's: its
//! configuration files (`config`), its REST API (`rest`), its store
//! (`store`), the remote command that reaches the other members
//! (`remote`), the work on one member (`member`) and the preflight's
//! judgement (`preflight`). Upgrading a cluster is the engine's and the
//! standby kit's; nothing here prints (the command reports).

pub mod config;
pub mod member;
pub mod node;
pub mod preflight;
pub mod procedure;
pub mod remote;
pub mod rest;
pub mod state;
pub mod store;
