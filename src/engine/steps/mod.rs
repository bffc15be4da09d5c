//! The upgrade's steps, a file each (or a close family): each adds its
//! methods to the [`Engine`](crate::engine::Engine), which runs them in the
//! order `engine/mod.rs` lists. A step does its work and reports through
//! the engine's printer; the journal records it when it returns.

mod create;
mod dump;
mod finish;
mod handover;
mod prepare_new;
mod protect;
mod relations;
mod reload;
mod restore;
mod sync;
mod transfer;

pub(in crate::engine) use restore::RestorePlanning;
