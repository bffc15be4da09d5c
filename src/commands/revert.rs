//! `pg-migrate revert` (and `discard`): the old cluster as before the
//! upgrade, the new one as initdb made it.

use std::time::Instant;

use crate::cli::Settings;
use crate::exit;
use crate::journal;
use crate::output::{Event, Printer};
use crate::recovery;

use super::*;

/// `pg-migrate revert`: the old cluster as before the upgrade, the new one as
/// initdb made it.
pub(crate) fn run_revert(
    settings: &Settings,
    printer: &Printer,
    started: Instant,
    view: &journal::JournalView,
    name: &'static str,
) -> i32 {
    // Before the point of no return the old cluster was never disabled:
    // the revert removes only the new cluster (and its directories in the
    // tablespaces), so an old server the operator started meanwhile serves on.
    let old_may_serve = !view.passed_point_of_no_return();
    if let Err(r) = recovery::stop_leftover_servers(settings, Some(view), old_may_serve) {
        return refuse(printer, started, name, r, exit::FAILED_OLD_INTACT);
    }
    match recovery::revert(settings, view) {
        Ok(reverted) => {
            let mut next_steps = Vec::new();
            if reverted.renamed_control_back {
                next_steps.push(format!(
                    "the old cluster's global/pg_control is back in place; start it as before: {} -D {} start",
                    settings.old_bindir().join("pg_ctl").display(),
                    settings.old_datadir().display()
                ));
            } else {
                next_steps.push(format!(
                    "the old cluster was never disabled; start it as before: {} -D {} start",
                    settings.old_bindir().join("pg_ctl").display(),
                    settings.old_datadir().display()
                ));
            }
            next_steps.push(format!(
                "the new cluster {} is back as initdb made it; run the upgrade again when ready, or remove it",
                settings.new_datadir().display()
            ));
            printer.emit(&Event::bare_summary(
                name,
                crate::output::RunResult::Reverted,
                exit::SUCCESS,
                started,
                next_steps,
            ));
            exit::SUCCESS
        }
        Err(r) => {
            // Refusals that change nothing are usage-class; the others leave
            // an upgrade that still needs resolving.
            let code = match r.code {
                Code::AlreadyReverted => exit::USAGE,
                Code::ResetFailed => exit::FAILED_OLD_INTACT,
                _ => exit::FAILED_NEEDS_RECOVERY,
            };
            refuse(printer, started, name, r, code)
        }
    }
}
