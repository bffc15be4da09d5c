//! `pg-migrate resume`: finishes an interrupted upgrade.

use std::time::Instant;

use crate::cli::Settings;
use crate::engine;
use crate::exit;
use crate::failure::Code;
use crate::journal;
use crate::output::Printer;
use crate::recovery;

use super::*;

/// `pg-migrate resume`: finishes an interrupted upgrade. Once the relation
/// map was saved, the remaining steps continue where they stopped; before
/// that, the new cluster returns to its pristine state and the upgrade runs
/// again from its checks.
pub(crate) fn run_resume(
    settings: &Settings,
    printer: &Printer,
    started: Instant,
    view: &journal::JournalView,
) -> i32 {
    let name = "resume";
    if let Err(r) = recovery::stop_leftover_servers(settings, Some(view), false) {
        return refuse(printer, started, name, r, exit::FAILED_OLD_INTACT);
    }
    match journal::read_state(settings.new_datadir()) {
        Some(journal::State::Complete) => {
            return fail_early(
                printer,
                started,
                name,
                Code::AlreadyUpgraded,
                format!(
                    "the upgrade into {} already finished",
                    settings.new_datadir().display()
                ),
                "start the new cluster",
                exit::USAGE,
            )
        }
        Some(journal::State::Prepared) => {
            return fail_early(
                printer,
                started,
                name,
                Code::AlreadyPrepared,
                format!(
                    "{} holds a prepared upgrade, finished by its cutover",
                    settings.new_datadir().display()
                ),
                &format!(
                    "pg-migrate cutover -D {}",
                    engine::quote(settings.new_datadir())
                ),
                exit::USAGE,
            )
        }
        Some(journal::State::Reverted) => {
            return fail_early(
                printer,
                started,
                name,
                Code::AlreadyReverted,
                format!(
                    "the upgrade into {} was reverted",
                    settings.new_datadir().display()
                ),
                "run the upgrade again to start afresh",
                exit::USAGE,
            )
        }
        _ => {}
    }
    let done = view.done_steps();
    if done.contains("match-relations") {
        if let Err(r) = recovery::refuse_late_resume(settings, view) {
            return refuse(printer, started, name, r, exit::FAILED_OLD_INTACT);
        }
        return run_from_journal(
            settings,
            printer,
            started,
            name,
            view,
            FromJournal::LateResume,
        );
    }
    if let Err(r) = recovery::reset_new_cluster(settings) {
        return refuse(printer, started, name, r, exit::FAILED_OLD_INTACT);
    }
    run_command(settings, printer, started, true, engine::Phase::Full)
}
