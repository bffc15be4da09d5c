//! The journal: an append-only NDJSON file in the new cluster's
//! `pg_migrate.d/` that records the plan and each finished step, fsynced at
//! every step boundary, so that a later run knows exactly how far an
//! interrupted one got (resume and revert build on it).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub struct Journal {
    file: File,
}

impl Journal {
    /// Opens (creating) `<dir>/journal.ndjson` for appending.
    pub fn open(dir: &Path) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("journal.ndjson");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Journal { file })
    }

    /// Appends one record and makes it durable before returning.
    pub fn record(&mut self, kind: &str, mut fields: Value) -> std::io::Result<()> {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        if let Value::Object(map) = &mut fields {
            map.insert("record".into(), json!(kind));
            map.insert("at_ms".into(), json!(at_ms));
        }
        writeln!(self.file, "{fields}")?;
        self.file.sync_all()
    }
}
