//! What went wrong, in one shape for every command: a stable [`Code`]
//! (its string is the documented JSON error code, docs/json-status.md), a
//! message that names the problem, the remedy, and what the clusters are
//! left as when that is known here. The library crates have their own
//! error enums; this is where they become codes, messages and exit statuses.

use serde::Serialize;

use crate::exit;

/// Every error code pg-migrate reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    AfterStepFailed,
    AlreadyPrepared,
    AlreadyReverted,
    AlreadyUpgraded,
    BackupFailed,
    BackupTooNew,
    BackupUnusable,
    ChecksFailed,
    DumpFailed,
    FreezeFailed,
    HandoverFailed,
    InitdbFailed,
    Internal,
    Interrupted,
    JournalFailed,
    KitNotPossible,
    KitUnusable,
    LinkNotPossible,
    NotFromThisMajor,
    LockTableTooSmall,
    Locked,
    NewCatalogFailed,
    NewClusterHasRun,
    NewClusterMismatch,
    NewTablespaceDirExists,
    NoJournal,
    NotPatroniConfig,
    OldCatalogFailed,
    OldClusterChanged,
    OutputDirFailed,
    PatroniFailed,
    PostUpgradeScriptFailed,
    PrepareNotPossible,
    ProtectFailed,
    RelationMapMismatch,
    ResetFailed,
    RestoreFailed,
    RestoreTargetNotFresh,
    ResumeFailed,
    RevertFailed,
    RunDirFailed,
    RunningAsRoot,
    ScriptFailed,
    ServerRunning,
    ServerStartFailed,
    ServerStopFailed,
    SlotsFailed,
    StandbyFailed,
    SwapNotPossible,
    SyncFailed,
    TransferFailed,
    UnfinishedRevert,
    UnfinishedUpgrade,
    Usage,
    VacuumFailed,
    VerifyFailed,
    VerifyFoundDifferences,
    VerifyNotPossible,
}

impl Code {
    pub const ALL: [Code; 58] = [
        Code::AfterStepFailed,
        Code::AlreadyPrepared,
        Code::AlreadyReverted,
        Code::AlreadyUpgraded,
        Code::BackupFailed,
        Code::BackupTooNew,
        Code::BackupUnusable,
        Code::ChecksFailed,
        Code::DumpFailed,
        Code::FreezeFailed,
        Code::HandoverFailed,
        Code::InitdbFailed,
        Code::Internal,
        Code::Interrupted,
        Code::JournalFailed,
        Code::KitNotPossible,
        Code::KitUnusable,
        Code::LinkNotPossible,
        Code::NotFromThisMajor,
        Code::LockTableTooSmall,
        Code::Locked,
        Code::NewCatalogFailed,
        Code::NewClusterHasRun,
        Code::NewClusterMismatch,
        Code::NewTablespaceDirExists,
        Code::NoJournal,
        Code::NotPatroniConfig,
        Code::OldCatalogFailed,
        Code::OldClusterChanged,
        Code::OutputDirFailed,
        Code::PatroniFailed,
        Code::PostUpgradeScriptFailed,
        Code::PrepareNotPossible,
        Code::ProtectFailed,
        Code::RelationMapMismatch,
        Code::ResetFailed,
        Code::RestoreFailed,
        Code::RestoreTargetNotFresh,
        Code::ResumeFailed,
        Code::RevertFailed,
        Code::RunDirFailed,
        Code::RunningAsRoot,
        Code::ScriptFailed,
        Code::ServerRunning,
        Code::ServerStartFailed,
        Code::ServerStopFailed,
        Code::SlotsFailed,
        Code::StandbyFailed,
        Code::SwapNotPossible,
        Code::SyncFailed,
        Code::TransferFailed,
        Code::UnfinishedRevert,
        Code::UnfinishedUpgrade,
        Code::Usage,
        Code::VacuumFailed,
        Code::VerifyFailed,
        Code::VerifyFoundDifferences,
        Code::VerifyNotPossible,
    ];

    /// The code as the JSON events and the docs spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::AfterStepFailed => "after_step_failed",
            Code::AlreadyPrepared => "already_prepared",
            Code::AlreadyReverted => "already_reverted",
            Code::AlreadyUpgraded => "already_upgraded",
            Code::BackupFailed => "backup_failed",
            Code::BackupTooNew => "backup_too_new",
            Code::BackupUnusable => "backup_unusable",
            Code::ChecksFailed => "checks_failed",
            Code::DumpFailed => "dump_failed",
            Code::FreezeFailed => "freeze_failed",
            Code::HandoverFailed => "handover_failed",
            Code::InitdbFailed => "initdb_failed",
            Code::Internal => "internal",
            Code::Interrupted => "interrupted",
            Code::JournalFailed => "journal_failed",
            Code::KitNotPossible => "kit_not_possible",
            Code::KitUnusable => "kit_unusable",
            Code::NotFromThisMajor => "not_from_this_major",
            Code::NotPatroniConfig => "not_patroni_config",
            Code::PatroniFailed => "patroni_failed",
            Code::LinkNotPossible => "link_not_possible",
            Code::LockTableTooSmall => "lock_table_too_small",
            Code::Locked => "locked",
            Code::NewCatalogFailed => "new_catalog_failed",
            Code::NewClusterHasRun => "new_cluster_has_run",
            Code::NewClusterMismatch => "new_cluster_mismatch",
            Code::NewTablespaceDirExists => "new_tablespace_dir_exists",
            Code::NoJournal => "no_journal",
            Code::OldCatalogFailed => "old_catalog_failed",
            Code::OldClusterChanged => "old_cluster_changed",
            Code::OutputDirFailed => "output_dir_failed",
            Code::PostUpgradeScriptFailed => "post_upgrade_script_failed",
            Code::PrepareNotPossible => "prepare_not_possible",
            Code::ProtectFailed => "protect_failed",
            Code::RelationMapMismatch => "relation_map_mismatch",
            Code::ResetFailed => "reset_failed",
            Code::RestoreFailed => "restore_failed",
            Code::RestoreTargetNotFresh => "restore_target_not_fresh",
            Code::ResumeFailed => "resume_failed",
            Code::RevertFailed => "revert_failed",
            Code::RunDirFailed => "run_dir_failed",
            Code::RunningAsRoot => "running_as_root",
            Code::ScriptFailed => "script_failed",
            Code::ServerRunning => "server_running",
            Code::ServerStartFailed => "server_start_failed",
            Code::ServerStopFailed => "server_stop_failed",
            Code::SlotsFailed => "slots_failed",
            Code::StandbyFailed => "standby_failed",
            Code::SwapNotPossible => "swap_not_possible",
            Code::SyncFailed => "sync_failed",
            Code::TransferFailed => "transfer_failed",
            Code::UnfinishedRevert => "unfinished_revert",
            Code::UnfinishedUpgrade => "unfinished_upgrade",
            Code::Usage => "usage",
            Code::VacuumFailed => "vacuum_failed",
            Code::VerifyFailed => "verify_failed",
            Code::VerifyFoundDifferences => "verify_found_differences",
            Code::VerifyNotPossible => "verify_not_possible",
        }
    }

    /// The exit status this code always ends a run with, where it does not
    /// depend on how far the run got (those return `None`: 3 while the old
    /// cluster is intact, 4 once it needs resume or revert).
    pub const fn fixed_exit_status(self) -> Option<i32> {
        Some(match self {
            Code::ChecksFailed => exit::CHECKS_FAILED,
            Code::Usage
            | Code::RunningAsRoot
            | Code::RunDirFailed
            | Code::Locked
            | Code::UnfinishedUpgrade
            | Code::AlreadyUpgraded
            | Code::AlreadyPrepared
            | Code::AlreadyReverted
            | Code::NoJournal
            | Code::BackupUnusable
            | Code::BackupTooNew
            | Code::RestoreTargetNotFresh
            | Code::KitNotPossible
            | Code::KitUnusable
            | Code::NotFromThisMajor
            | Code::NotPatroniConfig => exit::USAGE,
            Code::NewClusterHasRun | Code::UnfinishedRevert => exit::FAILED_NEEDS_RECOVERY,
            Code::AfterStepFailed | Code::PostUpgradeScriptFailed | Code::VerifyNotPossible => {
                exit::AFTER_STEP_FAILED
            }
            Code::VerifyFoundDifferences => exit::VERIFY_FAILED,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The schema of a code: one of the documented strings.
impl schemars::JsonSchema for Code {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Code".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let codes: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        schemars::json_schema!({ "type": "string", "enum": codes })
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What a run did to each cluster: `unchanged` (not touched at all),
/// `started_and_stopped` (a server was started privately and stopped
/// cleanly; only the files any clean start and stop rewrites changed),
/// `running_untouched` (a running server was only queried).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ClusterStates {
    pub old: ClusterCondition,
    pub new: ClusterCondition,
}

impl ClusterStates {
    /// Neither cluster touched.
    pub fn unchanged() -> ClusterStates {
        ClusterStates {
            old: ClusterCondition::Unchanged,
            new: ClusterCondition::Unchanged,
        }
    }

    /// Neither cluster touched, each `not_named` where the command line
    /// (and environment) named none.
    pub fn untouched(old_named: bool, new_named: bool) -> ClusterStates {
        let state = |named| {
            if named {
                ClusterCondition::Unchanged
            } else {
                ClusterCondition::NotNamed
            }
        };
        ClusterStates {
            old: state(old_named),
            new: state(new_named),
        }
    }
}

/// One cluster's state after a run (docs/json-status.md, "Cluster states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterCondition {
    /// Not touched: byte for byte as before.
    Unchanged,
    /// No such cluster was named: the run stopped before it knew of one.
    NotNamed,
    /// Its server was started privately and stopped cleanly.
    StartedAndStopped,
    /// A running server was only queried.
    RunningUntouched,
    /// Link or swap mode past the point of no return: disabled.
    Protected,
    /// Made by pg-migrate and still as initdb made it.
    Created,
    /// Partly upgraded (or restored).
    Incomplete,
    /// The upgrade finished; a step after it failed.
    Upgraded,
}

/// Why a run (or a step of it) failed, or why it refused to start.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub message: String,
    pub remedy: Option<String>,
    /// What the clusters are left as, when the failing part knows it (a
    /// refusal before anything changed leaves both `unchanged`).
    pub clusters: Option<ClusterStates>,
}

impl Failure {
    pub fn new(code: Code, error: impl std::fmt::Display) -> Failure {
        Failure {
            code,
            message: error.to_string(),
            remedy: None,
            clusters: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes and the documented table are the same set, both ways.
    #[test]
    fn every_code_is_documented_and_every_documented_code_exists() {
        let documented = crate::output::documented_codes("Error codes:");
        let ours: std::collections::BTreeSet<String> =
            Code::ALL.iter().map(|c| c.as_str().to_string()).collect();
        assert_eq!(ours, documented);
    }
}
