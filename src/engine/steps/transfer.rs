//! `transfer`: every file linked, copied or cloned (or, swap mode, whole
//! database directories moved).

use crate::engine::*;

impl<'a> Engine<'a> {
    pub(in crate::engine) fn transfer(&mut self) -> Result<(), Failure> {
        if self.settings.mode == Mode::Swap {
            return self.swap();
        }
        let mode = self.settings.mode.file_mode();
        let total_bytes = self.moves.iter().map(|m| m.bytes).sum();
        // The copying ahead may still be busy with one file: the transfer
        // takes everything else first (and that file last, once copied).
        let staging = self.staging.take();
        let no_copies = pgm_transfer::StagedCopies::default();
        let staged = staging.as_ref().map_or(&no_copies, |s| s.copies.as_ref());
        let meter = self
            .printer
            .meter_bytes("transfer", self.moves.len() as u64, total_bytes);
        let done = pgm_transfer::transfer(&self.moves, mode, self.settings.jobs, staged, &|p| {
            meter.set(p.files_done, p.bytes_done);
            pgm_cluster::faults::point(|| format!("transfer:file:{}", p.files_done));
        });
        if let Some(staging) = staging {
            // Copies not used (a relation the plan does not move) go.
            staging.abandon();
        }
        let done = done.map_err(|e| Failure::new(Code::TransferFailed, e))?;
        meter.finish();
        self.transferred = (done.files_done, done.bytes_done);
        self.files_copied_ahead = done.files_ahead;
        Ok(())
    }

    /// Swap mode: whole database directories move into the new cluster.
    pub(in crate::engine) fn swap(&mut self) -> Result<(), Failure> {
        let dirs = pgm_transfer::swap_dirs(&self.moves).map_err(|file| {
            Failure::new(
                Code::SwapNotPossible,
                format!("{} would change its name", file.display()),
            )
        })?;
        let total_bytes = self.moves.iter().map(|m| m.bytes).sum();
        // A directory moves whole, however large: directories are the measure.
        let meter = self
            .printer
            .meter("transfer", dirs.len() as u64, "directories");
        let markers = crate::journal::dir(&self.new_dir().path).join("swap");
        pgm_transfer::swap(&dirs, &markers, &|done| {
            meter.set(done as u64, 0);
            pgm_cluster::faults::point(|| format!("transfer:directory:{done}"));
        })
        .map_err(|e| Failure::new(Code::TransferFailed, e))?;
        meter.finish();
        self.transferred = (self.moves.len() as u64, total_bytes);
        Ok(())
    }
}
