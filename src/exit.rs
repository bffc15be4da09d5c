//! Exit statuses, documented in docs/exit-codes.md. Each class is distinct so
//! that a wrapper can decide what to do without reading any text.

/// Everything went as asked.
pub const SUCCESS: i32 = 0;
/// One or more checks failed; nothing was changed.
pub const CHECKS_FAILED: i32 = 1;
/// The command line (or the way pg-migrate was started) is wrong; nothing was done.
pub const USAGE: i32 = 2;
/// The run failed, and the old cluster is intact and can be started as before.
pub const FAILED_OLD_INTACT: i32 = 3;
/// The run failed after link mode's point of no return (the old cluster is
/// disabled until `pg-migrate resume` or `revert`), or `revert` refused.
pub const FAILED_NEEDS_RECOVERY: i32 = 4;
/// The upgrade finished, but a step after it (`--analyze`, `--post-upgrade`
/// …) failed: the new cluster is complete; fix and re-run that step with
/// `pg-migrate post-upgrade`.
pub const AFTER_STEP_FAILED: i32 = 5;
/// The upgrade finished, but `--verify` (or `pg-migrate verify`) found
/// differences between the old and the new cluster that no rule explains.
pub const VERIFY_FAILED: i32 = 6;
