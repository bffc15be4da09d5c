//! Named fault points for tests, compiled in only with the `test-hooks`
//! feature (which the tests turn on through a dev-dependency: a release
//! build has none of them, not even their variables' names). With the
//! feature and none of these variables set, a point does nothing:
//!
//! - `PG_MIGRATE_TEST_KILL_AT=<point>`: the process kills itself with SIGKILL
//!   at that point (crash tests).
//! - `PG_MIGRATE_TEST_PAUSE_AT=<point>` with `PG_MIGRATE_TEST_PAUSE_FILE=<path>`:
//!   at that point the process creates the file and waits (up to 120 s) until
//!   the test removes it, so that the test can act at a known moment (send a
//!   signal, fill a disk, probe a running server).
//! - `PG_MIGRATE_TEST_NO_COPY_AHEAD=1`: copy modes copy nothing while the
//!   catalog is restored, so that a test can make the transfer itself copy.
//! - `PG_MIGRATE_TEST_SKIP_FREEZE=1`: prepare skips the VACUUM FREEZE of the
//!   new catalog (but not its proof), so that a test can show the proof
//!   stops a prepare whose freeze did not happen. `=all` skips the proof
//!   too, so that a test can show the damage is found after the cutover.
//! - `PG_MIGRATE_TEST_PROGRESS_EVERY_MS=<ms>`: the progress line written to
//!   a log without a terminal comes this often instead of every 10 s.

#[cfg(feature = "test-hooks")]
mod hooks {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    struct Hooks {
        kill_at: Option<String>,
        pause_at: Option<String>,
        pause_file: Option<std::path::PathBuf>,
    }

    fn hooks() -> &'static Hooks {
        static HOOKS: OnceLock<Hooks> = OnceLock::new();
        HOOKS.get_or_init(|| Hooks {
            kill_at: std::env::var("PG_MIGRATE_TEST_KILL_AT").ok(),
            pause_at: std::env::var("PG_MIGRATE_TEST_PAUSE_AT").ok(),
            pause_file: std::env::var_os("PG_MIGRATE_TEST_PAUSE_FILE").map(Into::into),
        })
    }

    /// Whether a test asked that nothing be copied ahead of the transfer.
    pub fn copy_ahead_disabled() -> bool {
        std::env::var_os("PG_MIGRATE_TEST_NO_COPY_AHEAD").is_some()
    }

    /// Whether a test asked prepare to skip its freeze.
    pub fn freeze_skipped() -> bool {
        std::env::var_os("PG_MIGRATE_TEST_SKIP_FREEZE").is_some()
    }

    /// Whether a test asked prepare to skip the freeze's proof as well.
    pub fn freeze_proof_skipped() -> bool {
        std::env::var_os("PG_MIGRATE_TEST_SKIP_FREEZE").is_some_and(|v| v == "all")
    }

    /// How often a test wants the progress line of a log without a terminal.
    pub fn progress_interval() -> Option<Duration> {
        std::env::var("PG_MIGRATE_TEST_PROGRESS_EVERY_MS")
            .ok()?
            .parse()
            .ok()
            .map(Duration::from_millis)
    }

    /// A fault point; `name` is only computed when a hook is set.
    pub fn point(name: impl FnOnce() -> String) {
        let hooks = hooks();
        if hooks.kill_at.is_none() && hooks.pause_at.is_none() {
            return;
        }
        let name = name();
        if hooks.kill_at.as_deref() == Some(name.as_str()) {
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::SIGKILL);
        }
        if hooks.pause_at.as_deref() == Some(name.as_str()) {
            let Some(file) = &hooks.pause_file else {
                std::thread::sleep(Duration::from_secs(60));
                return;
            };
            let _ = std::fs::write(file, name.as_bytes());
            let started = Instant::now();
            while file.exists() && started.elapsed() < Duration::from_secs(120) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[cfg(feature = "test-hooks")]
pub use hooks::*;

/// Without the `test-hooks` feature: every hook is inert.
#[cfg(not(feature = "test-hooks"))]
mod inert {
    pub fn copy_ahead_disabled() -> bool {
        false
    }

    pub fn freeze_skipped() -> bool {
        false
    }

    pub fn freeze_proof_skipped() -> bool {
        false
    }

    pub fn progress_interval() -> Option<std::time::Duration> {
        None
    }

    #[inline(always)]
    pub fn point(_name: impl FnOnce() -> String) {}
}

#[cfg(not(feature = "test-hooks"))]
pub use inert::*;
