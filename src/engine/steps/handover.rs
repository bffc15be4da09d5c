//! `handover-counters`: the old commit log and multixacts replace the new
//! ones, and pg_resetwal makes the new counters continue the old ones.

use crate::engine::*;

impl<'a> Engine<'a> {
    pub(in crate::engine) fn char_signedness(&self) -> Option<bool> {
        if !self.new_install.version.major.control_has_char_signedness() {
            return None;
        }
        Some(match self.settings.set_char_signedness {
            Some(Signedness::Signed) => true,
            Some(Signedness::Unsigned) => false,
            None => self
                .old_control
                .default_char_signed
                .unwrap_or(pgm_verifier::platform_char_is_signed()),
        })
    }

    /// The old commit log and multixacts replace the new ones; the new
    /// cluster's counters continue the old ones, its OID counter too: OIDs
    /// the restore assigns then never equal one the old cluster used.
    pub(in crate::engine) fn handover_counters(&mut self) -> Result<(), Failure> {
        let (old, new) = (self.old_dir.path.clone(), self.new_dir().path.clone());
        if self.phase == Phase::Prepare {
            // While the old cluster runs its transaction counters and commit
            // log move on: the new cluster keeps its own until the cutover
            // (every catalog row is frozen before then); only the OID counter
            // moves past the old one's, as the restore needs.
            self.note_new_control(Record::NewControlChanging)?;
            return pgm_catalog::set_next_oid(&self.new_install, &new, self.old_control.next_oid)
                .map_err(|e| Failure::new(Code::HandoverFailed, e));
        }
        // The counters come from the old cluster as it is now, stopped for
        // the last time; the journal keeps what proves it is this very
        // cluster, so that a late resume can refuse one that ran since.
        let now = read_control(&old)?;
        if now.state != pgm_cluster::ClusterState::ShutDown {
            return Err(Failure::new(
                Code::HandoverFailed,
                format!(
                    "the old cluster's pg_control says \"{}\", not \"shut down\"",
                    now.state.describe()
                ),
            ));
        }
        if self.phase == Phase::Cutover && now.stamp() != self.old_control.stamp() {
            return Err(self.old_changed_since_verified(&now));
        }
        self.old_control = now;
        if let Some(journal) = self.journal.as_mut() {
            journal
                .record(Record::Handover {
                    old: self.old_control.stamp(),
                })
                .map_err(|e| Failure::new(Code::JournalFailed, e))?;
        }
        self.note_new_control(Record::NewControlChanging)?;
        pgm_catalog::copy_commit_log(&old, &new)
            .map_err(|e| Failure::new(Code::HandoverFailed, e))?;
        pgm_cluster::faults::point(|| "handover-counters:commit-log-copied".into());
        pgm_catalog::copy_multixacts(&old, &new)
            .map_err(|e| Failure::new(Code::HandoverFailed, e))?;
        let wal = pgm_catalog::next_wal_file_name(&old, &self.old_control)
            .map_err(|e| Failure::new(Code::HandoverFailed, e))?;
        pgm_catalog::reset_counters(
            &self.new_install,
            &new,
            &self.old_control,
            Some(&wal),
            self.char_signedness(),
        )
        .map_err(|e| Failure::new(Code::HandoverFailed, e))
    }
}
