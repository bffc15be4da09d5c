//! `pg-migrate cutover`: the online mode's second half, in the window.

use std::time::Instant;

use crate::cli::Settings;
use crate::engine;
use crate::exit;
use crate::failure::Code;
use crate::journal;
use crate::output::Printer;
use crate::recovery;

use super::*;

/// `pg-migrate cutover`: the second half, in the window.
pub(crate) fn run_cutover(
    settings: &Settings,
    printer: &Printer,
    started: Instant,
    view: &journal::JournalView,
) -> i32 {
    let name = "cutover";
    let new = settings.new_datadir();
    let quoted = engine::quote(new);
    let refuse_with = |code: Code, message: String, remedy: String| {
        fail_early(printer, started, name, code, message, &remedy, exit::USAGE)
    };
    if !view.is_online() {
        return refuse_with(
            Code::Usage,
            format!("{} holds no prepared upgrade", new.display()),
            format!("an upgrade made in one go is finished with: pg-migrate resume -D {quoted}"),
        );
    }
    match journal::read_state(new) {
        Some(journal::State::Prepared) => {}
        Some(journal::State::Upgrading) | Some(journal::State::Failed) if view.in_cutover() => {}
        Some(journal::State::Upgrading) | Some(journal::State::Failed) => {
            return refuse_with(
                Code::UnfinishedUpgrade,
                format!("the prepare into {} did not finish", new.display()),
                format!(
                "run pg-migrate prepare again (it starts over), or: pg-migrate discard -D {quoted}"
            ),
            )
        }
        Some(journal::State::Complete) => {
            return refuse_with(
                Code::AlreadyUpgraded,
                format!("the upgrade into {} already finished", new.display()),
                "start the new cluster".into(),
            )
        }
        Some(journal::State::Reverted) | None => {
            return refuse_with(
                Code::AlreadyReverted,
                format!("the upgrade into {} was discarded", new.display()),
                "prepare again".into(),
            )
        }
    }
    // The old server: stopped cleanly by its owner, or by us when asked.
    let old_global = settings.old_datadir().join("global");
    let protected =
        !old_global.join("pg_control").exists() && old_global.join("pg_control.old").exists();
    if !protected {
        match pgm_cluster::DataDir::open(settings.old_datadir(), None).map(|d| d.server_status()) {
            Ok(Ok(pgm_cluster::ServerStatus::Running(pid))) => {
                if !settings.stop_old {
                    return fail_early(
                        printer,
                        started,
                        name,
                        Code::ServerRunning,
                        format!("the old server is running (pid {})", pid.pid),
                        &format!(
                            "stop it cleanly ({} -D {} stop -m fast), or let pg-migrate do it: add --stop-old",
                            settings.old_bindir().join("pg_ctl").display(),
                            engine::quote(settings.old_datadir())
                        ),
                        exit::USAGE,
                    );
                }
                if let Err(failure) = engine::stop_old_server(settings.old_datadir()) {
                    return fail_with(printer, started, name, failure, exit::FAILED_OLD_INTACT);
                }
            }
            Ok(Ok(pgm_cluster::ServerStatus::StalePidFile(_))) => return refuse_with(
                Code::ServerRunning,
                "the old server crashed or was killed (a stale postmaster.pid)".into(),
                "start it once so that it recovers and stop it cleanly, then run the cutover again"
                    .into(),
            ),
            _ => {}
        }
        let clean = pgm_cluster::ControlFile::read(settings.old_datadir())
            .map(|c| c.state == pgm_cluster::ClusterState::ShutDown)
            .unwrap_or(false);
        if !clean {
            return refuse_with(
                Code::Usage,
                format!(
                    "the old cluster {} was not shut down cleanly",
                    settings.old_datadir().display()
                ),
                "start it once so that it recovers and stop it cleanly (pg_ctl stop -m fast), then run the cutover again".into(),
            );
        }
    }
    if let Err(r) = recovery::stop_leftover_servers(settings, Some(view), false) {
        return refuse(printer, started, name, r, exit::FAILED_OLD_INTACT);
    }
    run_from_journal(settings, printer, started, name, view, FromJournal::Cutover)
}
