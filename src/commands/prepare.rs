//! `pg-migrate prepare`: the online mode's first half.

use std::time::Instant;

use crate::cli::Settings;
use crate::engine;
use crate::exit;
use crate::failure::Code;
use crate::journal;
use crate::logical_backup;
use crate::output::Printer;
use crate::recovery;

use super::*;

/// `pg-migrate prepare`: the first half of the online mode. A prepare
/// that did not finish is started over (the new cluster back as initdb
/// made it); a finished one waits for its cutover or discard.
pub(crate) fn run_prepare(settings: &Settings, printer: &Printer, started: Instant) -> i32 {
    let name = "prepare";
    let new = settings.new_datadir();
    let refuse_with = |code: Code, message: String, remedy: String| {
        fail_early(printer, started, name, code, message, &remedy, exit::USAGE)
    };
    let quoted = engine::quote(new);
    let mut resuming = false;
    match journal::read_state(new) {
        Some(journal::State::Prepared) => {
            return refuse_with(
                Code::AlreadyPrepared,
                format!("{} already holds a prepared upgrade", new.display()),
                format!("finish it: pg-migrate cutover -D {quoted}; or throw it away: pg-migrate discard -D {quoted}"),
            )
        }
        Some(journal::State::Upgrading) | Some(journal::State::Failed) => {
            let view = journal::JournalView::read(new);
            let restartable = view
                .as_ref()
                .is_some_and(|v| v.is_online() && !v.in_cutover());
            if !restartable {
                return refuse_with(
                    Code::UnfinishedUpgrade,
                    format!("{} holds an upgrade that did not finish", new.display()),
                    engine::recovery_commands(new),
                );
            }
            if let Err(r) = recovery::stop_leftover_servers(settings, view.as_ref(), false) {
                return refuse(printer, started, name, r, exit::FAILED_OLD_INTACT);
            }
            if let Err(r) = recovery::reset_new_cluster(settings) {
                return refuse(printer, started, name, r, exit::FAILED_OLD_INTACT);
            }
            resuming = true;
        }
        Some(journal::State::Complete) => {
            return refuse_with(
                Code::AlreadyUpgraded,
                format!("{} is already the result of a finished upgrade", new.display()),
                "start it; to upgrade again, give -D a new directory".into(),
            )
        }
        Some(journal::State::Reverted) => recovery::archive_reverted_journal(new),
        None => {}
    }
    if let Some(dir) = &settings.backup_dir {
        if let Some(r) = logical_backup::refuse_backup_dir(dir, &[settings.old_datadir(), new]) {
            return fail_with(printer, started, name, r, exit::USAGE);
        }
    }
    run_command(settings, printer, started, resuming, engine::Phase::Prepare)
}
