//! The codes of `notice` events: what pg-migrate tells an operator that is
//! neither progress nor a failure. A wrapper may match on them, so each is
//! stable and documented (docs/json-status.md, "Notice codes:"). This module
//! only names them; the messages are made where the notice is given.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeCode {
    /// The new cluster pg-migrate made trusts local connections.
    NewClusterTrustsLocal,
    /// The old server restarted with a larger lock table for the dump.
    OldLockTableRaised,
    /// A database restored over one connection although -j allowed more.
    RestoredOverOneConnection,
    LogicalSlotsRecreated,
    PhysicalSlotsRecreated,
    /// `standby`: the standby's postgresql.conf lives elsewhere.
    StandbyConfigElsewhere,
    /// `standby` of a 10 or 11 standby without a recovery.conf.
    StandbyWithoutRecoveryConf,
    /// `patroni` resumed an upgrade that was put back.
    PatroniPutBack,
}

impl NoticeCode {
    pub const ALL: [NoticeCode; 8] = [
        NoticeCode::NewClusterTrustsLocal,
        NoticeCode::OldLockTableRaised,
        NoticeCode::RestoredOverOneConnection,
        NoticeCode::LogicalSlotsRecreated,
        NoticeCode::PhysicalSlotsRecreated,
        NoticeCode::StandbyConfigElsewhere,
        NoticeCode::StandbyWithoutRecoveryConf,
        NoticeCode::PatroniPutBack,
    ];

    /// The code a `notice` event names (as another pg-migrate's output
    /// gives it), if it is one of these.
    pub fn parse(code: &str) -> Option<NoticeCode> {
        NoticeCode::ALL.into_iter().find(|c| c.as_str() == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NoticeCode::NewClusterTrustsLocal => "new_cluster_trusts_local",
            NoticeCode::OldLockTableRaised => "old_lock_table_raised",
            NoticeCode::RestoredOverOneConnection => "restored_over_one_connection",
            NoticeCode::LogicalSlotsRecreated => "logical_slots_recreated",
            NoticeCode::PhysicalSlotsRecreated => "physical_slots_recreated",
            NoticeCode::StandbyConfigElsewhere => "standby_config_elsewhere",
            NoticeCode::StandbyWithoutRecoveryConf => "standby_without_recovery_conf",
            NoticeCode::PatroniPutBack => "patroni_put_back",
        }
    }
}

impl Serialize for NoticeCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The schema of a code: one of the documented strings.
impl schemars::JsonSchema for NoticeCode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NoticeCode".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let codes: Vec<&str> = NoticeCode::ALL.iter().map(|c| c.as_str()).collect();
        schemars::json_schema!({ "type": "string", "enum": codes })
    }
}

#[cfg(test)]
mod tests {
    use super::NoticeCode;

    /// The codes and the documented table are the same set, both ways.
    #[test]
    fn every_notice_code_is_documented_and_every_documented_code_exists() {
        let ours: std::collections::BTreeSet<String> = NoticeCode::ALL
            .iter()
            .map(|c| c.as_str().to_string())
            .collect();
        assert_eq!(ours, crate::output::documented_codes("Notice codes:"));
    }

    /// Another pg-migrate's notice (the leader's upgrade under `patroni`)
    /// is read back as the code it names, and only a known one.
    #[test]
    fn a_notice_read_from_another_run_keeps_its_code() {
        for code in NoticeCode::ALL {
            assert_eq!(NoticeCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(NoticeCode::parse("no_such_notice"), None);
        let stdout = br#"{"event":"step_start","step":"x"}
{"event":"notice","code":"physical_slots_recreated","message":"2 slots"}
not json
{"event":"notice","code":"from_a_newer_pg_migrate","message":"?"}
"#;
        assert_eq!(
            crate::patroni::remote::notice_events(stdout),
            vec![(NoticeCode::PhysicalSlotsRecreated, "2 slots".to_string())]
        );
    }
}
