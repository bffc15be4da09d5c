//! What the upgrade of a Patroni cluster does on one node, the leader's
//! (in-process) or a replica's (through `patroni-member`): stop and start
//! its server with the command line Patroni gave it, wait for a replica to
//! replay the leader's last WAL, carry Patroni's files into the new data
//! directory, rewrite the member's Patroni configuration. Knows nothing of
//! the other members.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgm_cluster::command::PgCommand;

use super::config::PatroniConfig;
use crate::support::quote;

/// The server options Patroni started this data directory's server with
/// (its `postmaster.opts`: port, listen_addresses, wal_level, max_* …, which
/// Patroni passes on the command line, not in postgresql.conf), without the
/// program, `-D` and `--config-file`.
pub fn server_options(datadir: &Path) -> Result<Vec<String>, String> {
    let path = datadir.join("postmaster.opts");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let words = shlex::split(text.trim())
        .ok_or_else(|| format!("{}: not a command line", path.display()))?;
    let mut options = Vec::new();
    let mut rest = words.into_iter().skip(1);
    while let Some(word) = rest.next() {
        if word == "-D" {
            rest.next();
        } else if !word.starts_with("--config-file=") {
            options.push(word);
        }
    }
    Ok(options)
}

/// Starts the server of `datadir` with `options` (and its own
/// postgresql.conf), waiting until it accepts connections.
pub fn start_server(
    bindir: &Path,
    datadir: &Path,
    options: &[String],
    log: &Path,
) -> Result<(), String> {
    let mut line: Vec<String> = options
        .iter()
        .map(|o| {
            shlex::try_quote(o)
                .map(|q| q.into_owned())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    line.push(
        shlex::try_quote(&format!(
            "--config-file={}",
            datadir.join("postgresql.conf").display()
        ))
        .map_err(|e| e.to_string())?
        .into_owned(),
    );
    PgCommand::new(bindir.join("pg_ctl"))
        .args(["start", "-w", "-t", "600", "-D"])
        .arg(datadir)
        .arg("-l")
        .arg(log)
        .arg("-o")
        .arg(line.join(" "))
        .run()
        .map(|_| ())
        .map_err(|e| {
            format!(
                "starting {}: {e} (its log: {})",
                datadir.display(),
                log.display()
            )
        })
}

/// Stops the server of `datadir` cleanly (`-m fast`: a shutdown checkpoint).
pub fn stop_server(bindir: &Path, datadir: &Path) -> Result<(), String> {
    PgCommand::new(bindir.join("pg_ctl"))
        .args(["stop", "-w", "-t", "600", "-m", "fast", "-D"])
        .arg(datadir)
        .run()
        .map(|_| ())
        .map_err(|e| format!("stopping {}: {e}", datadir.display()))
}

/// Whether a server runs on `datadir` (its postmaster.pid names a live process).
pub fn running(datadir: &Path) -> bool {
    std::fs::read_to_string(datadir.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        .is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}

/// A client of the running server of `datadir`, over the unix socket its
/// postmaster.pid names, as this OS user.
fn client(datadir: &Path) -> Result<postgres::Client, String> {
    let text = std::fs::read_to_string(datadir.join("postmaster.pid"))
        .map_err(|e| format!("{}: {e}", datadir.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let port: u16 = lines
        .get(3)
        .and_then(|l| l.trim().parse().ok())
        .ok_or("postmaster.pid names no port")?;
    let socket = lines.get(4).map(|l| l.trim()).unwrap_or("");
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "postgres".into());
    let mut config = postgres::Config::new();
    if socket.is_empty() {
        config.host("127.0.0.1");
    } else {
        config.host_path(socket);
    }
    config
        .port(port)
        .user(&user)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(10))
        .connect(postgres::NoTls)
        .map_err(|e| format!("connecting to the server of {}: {e}", datadir.display()))
}

/// Waits until the standby of `datadir` has replayed WAL past `lsn` (the
/// leader's shutdown checkpoint).
pub fn wait_replayed(datadir: &Path, lsn: u64, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut client = client(datadir)?;
    loop {
        let row = client
            .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
            .map_err(|e| e.to_string())?;
        let replayed = row.get::<_, Option<String>>(0).and_then(|t| parse_lsn(&t));
        if replayed.is_some_and(|r| r > lsn) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the standby has replayed up to {} but not the leader's shutdown checkpoint at {} within {} s (is its replay paused?)",
                replayed.map(pgm_cluster::control::format_lsn).unwrap_or_else(|| "nothing".into()),
                pgm_cluster::control::format_lsn(lsn),
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Patroni's files carried from the old data directory into the new one:
/// postgresql.conf (Patroni's, which it rewrites on start; carried so that
/// pg-migrate can start the server as Patroni would), postgresql.base.conf,
/// pg_hba.conf, pg_ident.conf, and patroni.dynamic.json (Patroni's copy of
/// the dynamic configuration). Settings renamed by the new major get their
/// new names, files of the old directory the new one's, and whatever the
/// new server still rejects is commented out with its reason.
pub fn carry_patroni_files(
    old: &Path,
    new: &Path,
    old_major: u32,
    new_bindir: &Path,
    new_major: u32,
    archive_off: bool,
) -> Result<(), String> {
    let wal_mb = pgm_cluster::ControlFile::read(new)
        .map(|c| u64::from(c.wal_segment_size) / (1024 * 1024))
        .unwrap_or(16);
    let own_files = [
        (
            "hba_file".to_string(),
            new.join("pg_hba.conf").display().to_string(),
        ),
        (
            "ident_file".to_string(),
            new.join("pg_ident.conf").display().to_string(),
        ),
    ];
    for (name, own) in [
        ("postgresql.conf", &own_files[..]),
        ("postgresql.base.conf", &[][..]),
    ] {
        let from = old.join(name);
        let Ok(text) = std::fs::read_to_string(&from) else {
            continue;
        };
        let (carried, _) = crate::config::carry(&text, old_major, new_major, wal_mb, own);
        // Patroni's postgresql.conf includes the base file, which is carried.
        let mut carried = carried.replace(
            "#include 'postgresql.base.conf'\t# pg-migrate: included files are not carried",
            "include 'postgresql.base.conf'",
        );
        if archive_off {
            // --wal-archive off: the new system identifier archives nothing
            // until its own archive is set up.
            let (text, _) =
                crate::config::comment_out(&carried, "archive_mode", "--wal-archive off");
            carried = text;
            if name == "postgresql.conf" {
                carried.push_str("archive_mode = 'off'\t# pg-migrate: --wal-archive off\n");
            }
        }
        write(&new.join(name), carried.as_bytes())?;
    }
    for name in ["pg_hba.conf", "pg_ident.conf", "patroni.dynamic.json"] {
        let from = old.join(name);
        if from.is_file() {
            let bytes = std::fs::read(&from).map_err(|e| format!("{}: {e}", from.display()))?;
            let bytes = if name == "patroni.dynamic.json" {
                let mut doc: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: {e}", from.display()))?;
                let changes = super::config::dynamic_changes(&doc, new_major);
                super::config::apply_changes_json(&mut doc, &changes);
                serde_json::to_vec(&doc).map_err(|e| e.to_string())?
            } else {
                bytes
            };
            write(&new.join(name), &bytes)?;
        }
    }
    accepted_by_new_server(new_bindir, new)
}

/// The new server reads the carried configuration (`postgres -C`); each
/// setting it rejects is commented out with its reason.
fn accepted_by_new_server(bindir: &Path, datadir: &Path) -> Result<(), String> {
    for _ in 0..50 {
        let (status, captured) = PgCommand::new(bindir.join("postgres"))
            .arg("-D")
            .arg(datadir)
            .args(["-C", "data_directory"])
            .run_unchecked()
            .map_err(|e| e.to_string())?;
        if status.success() {
            return Ok(());
        }
        let rejected = crate::config::rejected_settings(&captured.stderr);
        if rejected.is_empty() {
            return Err(format!(
                "the new server does not accept the configuration carried into {}: {}",
                datadir.display(),
                captured.stderr.trim()
            ));
        }
        let mut changed = false;
        for (setting, reason) in rejected {
            for file in [
                "postgresql.conf",
                "postgresql.base.conf",
                "postgresql.auto.conf",
            ] {
                let path = datadir.join(file);
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue;
                };
                let (text, found) = crate::config::comment_out(&text, &setting, &reason);
                if found {
                    write(&path, text.as_bytes())?;
                    changed = true;
                }
            }
        }
        if !changed {
            return Err(format!(
                "the new server rejects the configuration carried into {}: {}",
                datadir.display(),
                captured.stderr.trim()
            ));
        }
    }
    Err("the new server keeps rejecting the carried configuration".into())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    crate::journal::write_atomically(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The member's Patroni configuration for the new major, the old one kept
/// beside it (`<file>.pg-migrate-<old major>`); returns where it was kept.
/// Written atomically; already rewritten (bin_dir and data_dir the new
/// ones), it is left alone.
pub fn rewrite_member_config(
    config: &PatroniConfig,
    new_bindir: &Path,
    new_datadir: &Path,
    old_major: u32,
    new_major: u32,
    archive_off: bool,
) -> Result<PathBuf, String> {
    let kept = PathBuf::from(format!("{}.pg-migrate-{old_major}", config.path.display()));
    if config.data_dir == new_datadir && config.bin_dir.as_deref() == Some(new_bindir) {
        return Ok(kept);
    }
    let changes = config.changes(new_major);
    let overrides: &[(&str, &str)] = if archive_off {
        &[("archive_mode", "off")]
    } else {
        &[]
    };
    let text = config.rewritten(new_bindir, new_datadir, &changes, overrides)?;
    if !kept.exists() {
        std::fs::copy(&config.path, &kept)
            .map_err(|e| format!("keeping {}: {e}", quote(&config.path)))?;
    }
    write(&config.path, text.as_bytes())?;
    Ok(kept)
}

/// Where Patroni runs the old PostgreSQL from: `bin_dir`, else PATH's.
pub fn old_bindir(config: &PatroniConfig) -> Option<PathBuf> {
    if let Some(dir) = &config.bin_dir {
        return Some(dir.clone());
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("postgres").is_file()))
}
