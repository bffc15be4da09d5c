//! `protect-old`: link and swap mode's point of no return (the old
//! pg_control renamed, durably, after the journal says so).

use crate::engine::*;

impl<'a> Engine<'a> {
    /// Link mode's point of no return: the old cluster is made unstartable
    /// (its pg_control renamed) so that nobody starts it while it shares
    /// files with the new one. A link is tried first so that a cross-device
    /// setup fails here, with the old cluster still intact.
    pub(in crate::engine) fn protect_old(&mut self) -> Result<(), Failure> {
        let control = self.old_dir.path.join("global/pg_control");
        let renamed = self.old_dir.path.join("global/pg_control.old");
        if !control.exists() && renamed.exists() {
            // An interrupted run got this far already.
            self.old_protected = true;
            return Ok(());
        }
        if self.phase == Phase::Cutover {
            // Nobody (a service manager, say) may have started the old
            // server again since it was verified.
            self.old_still_as_verified()?;
        }
        pgm_transfer::probe(pgm_transfer::Mode::Link, &self.old_dir.path.join("PG_VERSION"), &self.new_dir().path).map_err(|e| Failure {
            code: Code::LinkNotPossible,
            message: e.to_string(),
            remedy: Some("hard links need the old and new data directories (and tablespaces) on one filesystem: use --copy, or put the new cluster on the old one's filesystem".into()),
            clusters: None,
        })?;
        let new_control = self.new_control_stamp();
        if let Some(journal) = self.journal.as_mut() {
            journal
                .record(Record::PointOfNoReturn {
                    renamed: control.clone(),
                    to: renamed.clone(),
                    new_control,
                })
                .map_err(|e| Failure::new(Code::JournalFailed, e))?;
        }
        // Said before it happens: an interruption now must not report an
        // old cluster that might already be disabled as untouched.
        self.old_protected = true;
        self.publish_interrupt_status();
        crate::output::park_if_interrupted();
        if let Err(e) = std::fs::rename(&control, &renamed) {
            self.old_protected = false;
            self.publish_interrupt_status();
            return Err(Failure::new(
                Code::ProtectFailed,
                format!("{}: {e}", control.display()),
            ));
        }
        // Durable before the step is journalled as done.
        sync_dir(&self.old_dir.path.join("global"))
            .map_err(|e| Failure::new(Code::ProtectFailed, e))
    }
}
