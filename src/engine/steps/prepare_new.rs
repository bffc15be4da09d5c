//! `prepare-new`: the new server up; template0 given the old locale;
//! every row analyzed and frozen.

use crate::engine::*;

impl<'a> Engine<'a> {
    /// New server up: template0 gets the old locale; every row analyzed and
    /// frozen, so nothing in the new catalogs depends on the new cluster's
    /// commit log, which is about to be replaced.
    pub(in crate::engine) fn prepare_new(&mut self) -> Result<(), Failure> {
        self.new_touched = true;
        let server = self.start_new()?;
        let locale = self
            .old_catalog
            .as_ref()
            .map(|c| c.template0.clone())
            .ok_or_else(|| Failure::new(Code::Internal, "the old catalog was not read"))?;
        let mut client = server
            .connect("template1")
            .map_err(|e| Failure::new(Code::NewCatalogFailed, e))?;
        pgm_catalog::set_template0_locale(
            &mut client,
            self.new_install.version.major,
            &locale.encoding,
            &locale.provider,
            &locale.collate,
            &locale.ctype,
            locale.locale.as_deref(),
        )
        .map_err(|e| Failure::new(Code::NewCatalogFailed, e))?;
        drop(client);
        let conn = self.client_conn(false);
        for option in ["--analyze", "--freeze"] {
            pgm_catalog::vacuum_all(
                &self.new_install,
                &conn,
                option,
                self.settings.jobs,
                &self.log("vacuum.log"),
            )
            .map_err(|e| Failure::new(Code::VacuumFailed, e))?;
        }
        server
            .stop()
            .map_err(|e| Failure::new(Code::ServerStopFailed, e))
    }
}
