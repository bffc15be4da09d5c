//! SIGINT and SIGTERM: every server pg-migrate started is stopped, the
//! journal records the interruption, and the report says in what state each
//! cluster is and what to run next.

use std::time::Instant;

use crate::engine;
use crate::exit;
use crate::failure::Code;
use crate::journal;
use crate::output::{self, ClusterStates, Event, Printer};

/// On SIGINT/SIGTERM: stop every server we started, record the interruption
/// in the journal, say in what state each cluster is and what to run next,
/// and exit.
pub fn install(json: bool, started: Instant, command: &'static str) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let name = if signal == SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            output::REPORTS_INTERRUPTION.with(|r| r.set(true));
            output::INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
            pgm_cluster::server::stop_all();
            let printer = Printer::new(json);
            let status = engine::INTERRUPT
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let code = match status {
                Some(status) if status.standby => {
                    if crate::standby::is_standby(&status.new_datadir) {
                        let _ = crate::standby::record(
                            &status.new_datadir,
                            &crate::standby::StandbyRecord::Failed {
                                code: Code::Interrupted.as_str().into(),
                                message: format!("interrupted by {name}"),
                            },
                        );
                    }
                    printer.emit(&Event::Error {
                        code: Code::Interrupted,
                        message: format!("interrupted by {name}"),
                        remedy: Some(status.resume.clone()),
                        causes: Vec::new(),
                        clusters: status.clusters.clone(),
                        step: None,
                        log: None,
                    });
                    status.exit_code
                }
                Some(status) => {
                    if let Ok(mut journal) = journal::Journal::open(&status.new_datadir) {
                        let _ = journal.record(journal::Record::Interrupted {
                            signal: name.to_string(),
                        });
                    }
                    let _ = journal::write_state(&status.new_datadir, journal::State::Failed);
                    printer.emit(&Event::Error {
                        code: Code::Interrupted,
                        message: format!(
                            "interrupted by {name}; every server pg-migrate started was stopped"
                        ),
                        remedy: Some(status.resume.clone()),
                        causes: Vec::new(),
                        clusters: status.clusters.clone(),
                        step: None,
                        log: None,
                    });
                    status.exit_code
                }
                None => {
                    printer.emit(&Event::Error {
                        code: Code::Interrupted,
                        message: format!(
                            "interrupted by {name}; every server pg-migrate started was stopped"
                        ),
                        remedy: Some(
                            "run the command again when ready; nothing was changed".into(),
                        ),
                        causes: Vec::new(),
                        clusters: ClusterStates::unchanged(),
                        step: None,
                        log: None,
                    });
                    exit::FAILED_OLD_INTACT
                }
            };
            printer.emit(&Event::bare_summary(
                command,
                crate::output::RunResult::Error,
                code,
                started,
                Vec::new(),
            ));
            std::process::exit(code);
        }
    });
}
