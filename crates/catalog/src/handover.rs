//! The transaction-counter hand-over: the new cluster takes the old one's
//! commit log and multixacts and continues its XID, epoch, multixact, OID
//! and WAL counters, so that every tuple header in the transferred files
//! means in the new cluster what it meant in the old one.

use std::path::Path;

use pgm_cluster::{ControlFile, Installation, PgMajor, Tool};

use crate::Error;

/// Replaces `new/<sub>` by a copy of `old/<sub>` (flat SLRU directories).
/// The copy is made beside the target and renamed into place, so that an
/// interrupted copy never leaves a half-filled directory under the real name.
fn replace_dir_with_copy(old: &Path, new: &Path, sub: &str) -> Result<(), Error> {
    let source = old.join(sub);
    let target = new.join(sub);
    let staging = new.join(format!("{sub}.pg-migrate-copy"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    }
    std::fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
    let mode = std::fs::metadata(&target)
        .map_err(|e| Error::io(&target, e))?
        .permissions();
    for entry in std::fs::read_dir(&source).map_err(|e| Error::io(&source, e))? {
        let entry = entry.map_err(|e| Error::io(&source, e))?;
        if entry
            .file_type()
            .map_err(|e| Error::io(entry.path(), e))?
            .is_file()
        {
            let to = staging.join(entry.file_name());
            pgm_cluster::datadir::copy_file(&entry.path(), &to).map_err(|e| Error::io(&to, e))?;
        }
    }
    std::fs::set_permissions(&staging, mode).map_err(|e| Error::io(&staging, e))?;
    std::fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))?;
    std::fs::rename(&staging, &target).map_err(|e| Error::io(&target, e))?;
    Ok(())
}

/// The old commit log replaces the new one.
pub fn copy_commit_log(old: &Path, new: &Path) -> Result<(), Error> {
    replace_dir_with_copy(old, new, "pg_xact")
}

/// The old multixact offsets and members replace the new ones.
pub fn copy_multixacts(old: &Path, new: &Path) -> Result<(), Error> {
    replace_dir_with_copy(old, new, "pg_multixact/offsets")?;
    replace_dir_with_copy(old, new, "pg_multixact/members")
}

/// The name of the first WAL segment the new cluster must write so that no
/// LSN it hands out is below one the old cluster used: past the old
/// checkpoint's redo point and past every segment present in old pg_wal (the
/// rule pg_resetwal applies). The timeline is 1: no history file is carried.
pub fn next_wal_file_name(old_datadir: &Path, control: &ControlFile) -> Result<String, Error> {
    let segment_size = u64::from(control.wal_segment_size);
    if segment_size == 0 {
        return Err(Error::Inconsistent(
            "the old pg_control records a WAL segment size of 0".into(),
        ));
    }
    let segments_per_id = 0x1_0000_0000u64 / segment_size;
    let mut last = control.redo_lsn / segment_size;
    let wal = old_datadir.join("pg_wal");
    for entry in std::fs::read_dir(&wal).map_err(|e| Error::io(&wal, e))? {
        let entry = entry.map_err(|e| Error::io(&wal, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stem = name.strip_suffix(".partial").unwrap_or(&name);
        if stem.len() != 24 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let log = u64::from_str_radix(&stem[8..16], 16).unwrap_or(0);
        let seg = u64::from_str_radix(&stem[16..24], 16).unwrap_or(0);
        last = last.max(log * segments_per_id + seg);
    }
    let next = last + 1;
    Ok(format!(
        "{:08X}{:08X}{:08X}",
        1,
        next / segments_per_id,
        next % segments_per_id
    ))
}

/// Sets the new cluster's counters to the old cluster's in one pg_resetwal
/// run: oldest XID, next XID and epoch, commit-timestamp range (commit
/// timestamps are not carried), next multixact and offset, next OID, the
/// next WAL segment, and (18 and later) the default char signedness.
pub fn reset_counters(
    install: &Installation,
    new_datadir: &Path,
    old: &ControlFile,
    wal_file: Option<&str>,
    char_signed: Option<bool>,
) -> Result<(), Error> {
    let mut command = install
        .command(Tool::PgResetwal)?
        .arg("-f")
        .args(["-u", &old.oldest_xid.to_string()])
        .args(["-x", &old.next_xid.to_string()])
        .args(["-e", &old.next_xid_epoch.to_string()])
        .args(["-c", &format!("{0},{0}", old.next_xid)])
        .args(["-O", &old.next_multi_offset.to_string()])
        .args(["-o", &old.next_oid.to_string()])
        .args([
            "-m",
            &format!("{},{}", old.next_multixact, old.oldest_multixact),
        ]);
    if let Some(wal_file) = wal_file {
        command = command.args(["-l", wal_file]);
    }
    if let Some(signed) = char_signed {
        command = command.args([
            "--char-signedness",
            if signed { "signed" } else { "unsigned" },
        ]);
    }
    command.arg(new_datadir).run()?;
    Ok(())
}

/// Moves the new cluster's OID counter (alone) to `next_oid`.
pub fn set_next_oid(
    install: &Installation,
    new_datadir: &Path,
    next_oid: u32,
) -> Result<(), Error> {
    install
        .command(Tool::PgResetwal)?
        .args(["-o", &next_oid.to_string()])
        .arg(new_datadir)
        .run()?;
    Ok(())
}

/// 18 and later: records the default char signedness (alone, for callers
/// that do not reset anything else).
pub fn set_char_signedness(
    install: &Installation,
    new_datadir: &Path,
    signed: bool,
) -> Result<(), Error> {
    install
        .command(Tool::PgResetwal)?
        .args([
            "--char-signedness",
            if signed { "signed" } else { "unsigned" },
        ])
        .arg(new_datadir)
        .run()?;
    Ok(())
}

/// Gives the new template0 the old one's encoding and locale (template1 and
/// postgres get theirs from their own restore).
pub fn set_template0_locale(
    client: &mut postgres::Client,
    new_major: PgMajor,
    encoding: &str,
    provider: &str,
    collate: &str,
    ctype: &str,
    locale: Option<&str>,
) -> Result<(), Error> {
    let provider_code = match provider {
        "icu" => "i",
        "builtin" => "b",
        _ => "c",
    };
    let mut sets = vec![
        "encoding = pg_catalog.pg_char_to_encoding($1)".to_string(),
        "datcollate = $2".to_string(),
        "datctype = $3".to_string(),
    ];
    if new_major.has_locale_provider() {
        sets.push(format!("datlocprovider = '{provider_code}'"));
    }
    let column = new_major.datlocale_column();
    if let Some(column) = column {
        sets.push(format!("{column} = $4"));
    }
    let sql = format!(
        "UPDATE pg_catalog.pg_database SET {} WHERE datname = 'template0'",
        sets.join(", ")
    );
    let result = match column {
        Some(_) => client.execute(sql.as_str(), &[&encoding, &collate, &ctype, &locale]),
        None => client.execute(sql.as_str(), &[&encoding, &collate, &ctype]),
    };
    let rows = result.map_err(|e| Error::query("template1", "setting template0's locale", &e))?;
    if rows != 1 {
        return Err(Error::Inconsistent(format!(
            "template0 not found in the new cluster ({rows} rows)"
        )));
    }
    Ok(())
}

/// Every catalog row of the new cluster was frozen before the counters
/// moved; now the horizons are set to the old cluster's next XID and
/// multixact, in every database including template0 (opened briefly).
pub fn set_frozen_xids<F>(connect: F, next_xid: u32, next_multi: u32) -> Result<(), Error>
where
    F: Fn(&str) -> Result<postgres::Client, pgm_cluster::Error>,
{
    let mut template1 = connect("template1")?;
    let q = |what: &'static str| move |e: postgres::Error| Error::query("template1", what, &e);
    template1
        .execute(
            "UPDATE pg_catalog.pg_database SET datfrozenxid = $1::text::xid, datminmxid = $2::text::xid",
            &[&next_xid.to_string(), &next_multi.to_string()],
        )
        .map_err(q("setting datfrozenxid"))?;
    let databases: Vec<(String, bool)> = template1
        .query(
            "SELECT datname::text, datallowconn FROM pg_catalog.pg_database ORDER BY oid",
            &[],
        )
        .map_err(q("listing databases"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (name, allows) in databases {
        let quoted = pgm_cluster::sql::quote_ident(&name);
        if !allows {
            template1
                .batch_execute(&format!("ALTER DATABASE {quoted} ALLOW_CONNECTIONS = true"))
                .map_err(q("opening a database for the update"))?;
        }
        let result = connect(&name).map_err(Error::from).and_then(|mut client| {
            client
                .execute(
                    "UPDATE pg_catalog.pg_class SET relfrozenxid = $1::text::xid, relminmxid = $2::text::xid
                      WHERE relkind IN ('r', 'm', 't')",
                    &[&next_xid.to_string(), &next_multi.to_string()],
                )
                .map_err(|e| Error::query(&name, "setting relfrozenxid", &e))
        });
        if !allows {
            template1
                .batch_execute(&format!(
                    "ALTER DATABASE {quoted} ALLOW_CONNECTIONS = false"
                ))
                .map_err(q("closing a database again"))?;
        }
        result?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control_with(redo: u64, segment_size: u32) -> ControlFile {
        let golden =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/pg_control/15/pg_control");
        let mut control =
            ControlFile::decode(&std::fs::read(golden).unwrap(), Path::new("x")).unwrap();
        control.redo_lsn = redo;
        control.wal_segment_size = segment_size;
        control
    }

    #[test]
    fn next_wal_file_follows_redo_and_existing_segments() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pg_wal")).unwrap();
        let mb16 = 16 * 1024 * 1024;
        // Redo in segment 1, nothing else present: next is segment 2.
        let control = control_with(0x0100_0028, mb16);
        assert_eq!(
            next_wal_file_name(dir.path(), &control).unwrap(),
            "000000010000000000000002"
        );
        // A later segment on another timeline counts too; timeline is reset to 1.
        std::fs::write(dir.path().join("pg_wal/0000000300000001000000FF"), b"").unwrap();
        std::fs::write(dir.path().join("pg_wal/00000003.history"), b"").unwrap();
        assert_eq!(
            next_wal_file_name(dir.path(), &control).unwrap(),
            "000000010000000200000000"
        );
        // A .partial segment counts as used.
        std::fs::write(
            dir.path().join("pg_wal/000000030000000200000005.partial"),
            b"",
        )
        .unwrap();
        assert_eq!(
            next_wal_file_name(dir.path(), &control).unwrap(),
            "000000010000000200000006"
        );
    }
}
