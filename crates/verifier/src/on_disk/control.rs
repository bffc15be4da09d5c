//! The data directories and their pg_control: the layout, the version, the
//! server's state (running, crashed, stopped cleanly), and what both clusters
//! must share (block and segment sizes, checksums, char signedness).

use crate::{CharSignedness, CheckConfig, Finding, Report, SideConfig, Which};
use pgm_cluster::{ClusterState, ControlFile, DataDir, Error, Installation, ServerStatus};
use std::io::ErrorKind;
use std::path::Path;

#[allow(unused_imports)]
use super::*;

pub(crate) fn check_datadir(
    which: Which,
    side: &SideConfig,
    postgres: Option<&Path>,
) -> (Finding, Option<DataDir>) {
    let (id, title) = match which {
        Which::Old => ("old-datadir", "old data directory"),
        Which::New => ("new-datadir", "new data directory"),
    };
    let dir = side.datadir.display();
    match DataDir::open(&side.datadir, postgres) {
        Ok(datadir) => {
            let f = Finding::pass(
                id,
                title,
                format!("{} (PostgreSQL {})", datadir.path.display(), datadir.major),
            );
            (f, Some(datadir))
        }
        Err(Error::Io { source, path }) => {
            let (code, message) = match source.kind() {
                ErrorKind::NotFound => (
                    "datadir_not_found",
                    format!("the {} data directory {dir} does not exist", which.name()),
                ),
                _ => (
                    "datadir_unreadable",
                    format!(
                        "the {} data directory {dir} cannot be read: {} ({source})",
                        which.name(),
                        path.display()
                    ),
                ),
            };
            let remedy = match (which, code) {
                (Which::New, "datadir_not_found") => format!(
                    "create the new cluster with the new installation's initdb (matching the old cluster's settings), or pass the right path with {}",
                    flag(which, false)
                ),
                (_, "datadir_not_found") => format!("pass the {} cluster's data directory with {}", which.name(), flag(which, false)),
                _ => "run pg-migrate as the operating-system user that owns the cluster (the one that runs its server)".to_string(),
            };
            (Finding::fail(id, title, code, message, remedy), None)
        }
        Err(e) => {
            let f = Finding::fail(
                id,
                title,
                "not_a_cluster",
                e.to_string(),
                format!(
                    "pass the {} cluster's data directory (the one holding PG_VERSION) with {}",
                    which.name(),
                    flag(which, false)
                ),
            );
            (f, None)
        }
    }
}

pub(crate) fn check_distinct(config: &CheckConfig, report: &Report) -> Finding {
    let (id, title) = ("distinct-datadirs", "old and new are different clusters");
    let old = report
        .old
        .datadir
        .as_ref()
        .map(|d| d.path.clone())
        .unwrap_or_else(|| config.old.datadir.clone());
    let new = report
        .new
        .datadir
        .as_ref()
        .map(|d| d.path.clone())
        .unwrap_or_else(|| config.new.datadir.clone());
    if old == new {
        return Finding::fail(
            id,
            title,
            "same_datadir",
            format!(
                "the old and the new data directory are the same: {}",
                old.display()
            ),
            "-d names the existing cluster, -D a new one made by the new installation's initdb",
        );
    }
    Finding::pass(id, title, "the data directories differ")
}

pub(crate) fn check_datadir_version(
    which: Which,
    side: &SideConfig,
    install: Option<&Installation>,
    datadir: Option<&DataDir>,
) -> Option<Finding> {
    let (id, title) = match which {
        Which::Old => (
            "old-datadir-version",
            "old data directory matches the old installation",
        ),
        Which::New => (
            "new-datadir-version",
            "new data directory matches the new installation",
        ),
    };
    let (install, datadir) = (install?, datadir?);
    if install.version.major != datadir.major {
        return Some(Finding::fail(
            id,
            title,
            "datadir_version_mismatch",
            format!(
                "{} is a PostgreSQL {} cluster but {} holds PostgreSQL {}",
                datadir.path.display(),
                datadir.major,
                side.bindir.display(),
                install.version.major
            ),
            format!(
                "pass the bin directory of PostgreSQL {} with {}, or the matching data directory with {}",
                datadir.major,
                flag(which, true),
                flag(which, false)
            ),
        ));
    }
    Some(Finding::pass(
        id,
        title,
        format!("both are PostgreSQL {}", datadir.major),
    ))
}

pub(crate) fn check_control_and_server(
    which: Which,
    side: &SideConfig,
    datadir: Option<&DataDir>,
    config: &CheckConfig,
) -> (Vec<Finding>, Option<ControlFile>, Option<ServerStatus>) {
    let (control_id, control_title, server_id, server_title) = match which {
        Which::Old => (
            "old-control",
            "old pg_control",
            "old-server",
            "old cluster shut down cleanly",
        ),
        Which::New => (
            "new-control",
            "new pg_control",
            "new-server",
            "new cluster shut down cleanly",
        ),
    };
    let Some(datadir) = datadir else {
        return (
            vec![
                Finding::skip(control_id, control_title, "no data directory to read"),
                Finding::skip(server_id, server_title, "no data directory to read"),
            ],
            None,
            None,
        );
    };
    let mut out = Vec::new();
    let server = match datadir.server_status() {
        Ok(status) => Some(status),
        Err(e) => {
            out.push(Finding::fail(
                server_id,
                server_title,
                "datadir_unreadable",
                e.to_string(),
                "run pg-migrate as the operating-system user that owns the cluster",
            ));
            None
        }
    };
    // A running server rewrites pg_control at any moment; read it twice if the
    // first copy is torn.
    let mut control = datadir.control();
    if matches!(control, Err(Error::ControlBadCrc { .. }))
        && matches!(server, Some(ServerStatus::Running(_)))
    {
        std::thread::sleep(std::time::Duration::from_millis(200));
        control = datadir.control();
    }
    let control = match control {
        Ok(control) if !control.matches_major(datadir.major) => {
            out.push(Finding::fail(
                control_id,
                control_title,
                "control_version_mismatch",
                format!(
                    "{}/global/pg_control has format {} but PG_VERSION says PostgreSQL {}, which writes format {}",
                    datadir.path.display(),
                    control.pg_control_version,
                    datadir.major,
                    datadir.major.pg_control_version().map_or("unknown".into(), |v| v.to_string())
                ),
                "the data directory is inconsistent (files from different clusters?); restore it from a backup",
            ));
            None
        }
        Ok(control) => {
            out.push(Finding::pass(
                control_id,
                control_title,
                format!(
                    "format {}, catalog {}, system identifier {}",
                    control.pg_control_version, control.catalog_version, control.system_identifier
                ),
            ));
            Some(control)
        }
        Err(Error::Io { .. })
            if !datadir.path.join("global/pg_control").exists()
                && datadir.path.join("global/pg_control.old").exists() =>
        {
            // pg-migrate (or pg_upgrade) --link/--swap renamed it: this
            // cluster's files went into the new cluster it was upgraded into.
            out.push(Finding::fail(
                control_id,
                control_title,
                "cluster_already_upgraded",
                format!(
                    "{}/global/pg_control was renamed pg_control.old by an upgrade in link or swap mode: its files now belong to the cluster it was upgraded into, and it must not start on its own",
                    datadir.path.display()
                ),
                "use the new cluster it was upgraded into; to go back instead, and only while that new cluster has never been started: pg-migrate revert -D NEW_DATADIR (after pg_upgrade --link: rename pg_control.old back to pg_control; after pg_upgrade --swap only a backup brings the old cluster back)",
            ));
            None
        }
        Err(Error::Io { .. })
            if !datadir.path.join("global/pg_control").exists()
                && datadir.path.join("global/pg_control.prepared").exists() =>
        {
            out.push(Finding::fail(
                control_id,
                control_title,
                "cluster_prepared",
                format!(
                    "{} is a cluster pg-migrate prepare made (its pg_control is set aside as pg_control.prepared until the cutover)",
                    datadir.path.display()
                ),
                "finish it with pg-migrate cutover -D DIR, or throw it away with pg-migrate discard -D DIR",
            ));
            None
        }
        Err(e) => {
            let code = match e {
                Error::Io { .. } => "control_unreadable",
                _ => "control_damaged",
            };
            out.push(Finding::fail(
                control_id,
                control_title,
                code,
                e.to_string(),
                "pg_control must be intact before an upgrade: restore the data directory from a backup (pg_resetwal can rebuild pg_control, but only as a last resort and with possible data loss)",
            ));
            None
        }
    };
    out.push(check_server_state(
        which,
        side,
        datadir,
        server.as_ref(),
        control.as_ref(),
        config,
    ));
    (out, control, server)
}

pub(crate) fn check_server_state(
    which: Which,
    side: &SideConfig,
    datadir: &DataDir,
    server: Option<&ServerStatus>,
    control: Option<&ControlFile>,
    config: &CheckConfig,
) -> Finding {
    let (id, title) = match which {
        Which::Old => ("old-server", "old cluster shut down cleanly"),
        Which::New => ("new-server", "new cluster shut down cleanly"),
    };
    let dir = datadir.pg_ctl_dir().display();
    let pg_ctl = side.bindir.join("pg_ctl");
    let restart = format!(
        "start it once and stop it cleanly so that it finishes recovery: {} -D {dir} start && {} -D {dir} stop",
        pg_ctl.display(),
        pg_ctl.display()
    );
    match server {
        None => return Finding::skip(id, title, "postmaster.pid could not be read"),
        Some(ServerStatus::Running(pid)) => {
            return match which {
                Which::Old if config.allow_live_old => Finding::warn(
                    id,
                    title,
                    "old_server_running",
                    format!(
                        "the old server is running (pid {}); the checks inspect it as it runs (live check)",
                        pid.pid
                    ),
                    format!("the upgrade itself needs it stopped: {} -D {dir} stop", pg_ctl.display()),
                ),
                _ => Finding::fail(
                    id,
                    title,
                    if which == Which::Old { "old_server_running" } else { "new_server_running" },
                    format!("a server is running on the {} cluster (pid {})", which.name(), pid.pid),
                    format!("stop it first: {} -D {dir} stop", pg_ctl.display()),
                ),
            };
        }
        Some(ServerStatus::StalePidFile(pid))
            if control.is_some_and(|c| c.state == ClusterState::ShutDown) =>
        {
            // pg_control says the last server stopped cleanly: the file is
            // a leftover (a pid recycled by a restart, a container's); the
            // server pg-migrate starts removes it first.
            return Finding::warn(
                id,
                title,
                "stale_pid_file",
                format!(
                    "{}/postmaster.pid names process {}, which is not a server of this cluster, but pg_control says \"shut down\": a leftover (from a container restart, say)",
                    datadir.path.display(),
                    pid.pid
                ),
                "nothing to do: pg-migrate removes it before it starts a server on the cluster (or remove it yourself)",
            );
        }
        Some(ServerStatus::StalePidFile(pid)) => {
            return Finding::fail(
                id,
                title,
                "server_crashed",
                format!(
                    "{}/postmaster.pid names process {}, which no longer runs: the {} server crashed or was killed",
                    datadir.path.display(),
                    pid.pid,
                    which.name()
                ),
                restart,
            );
        }
        Some(ServerStatus::Stopped) => {}
    }
    let Some(control) = control else {
        return Finding::skip(id, title, "pg_control could not be read");
    };
    match control.state {
        ClusterState::ShutDown => Finding::pass(id, title, "pg_control says \"shut down\""),
        ClusterState::ShutDownInRecovery => Finding::fail(
            id,
            title,
            "shut_down_in_recovery",
            format!("the {} cluster was shut down while in recovery: it is a standby", which.name()),
            "upgrade the primary and rebuild standbys afterwards, or promote this standby and shut it down cleanly first",
        ),
        state => Finding::fail(
            id,
            title,
            "server_not_shut_down_cleanly",
            format!(
                "pg_control of the {} cluster says \"{}\": it was not shut down cleanly",
                which.name(),
                state.describe()
            ),
            restart,
        ),
    }
}

pub(crate) struct Compared {
    pub(crate) id: &'static str,
    pub(crate) title: &'static str,
    pub(crate) old: String,
    pub(crate) new: String,
}

pub(crate) fn compare_control(old: &ControlFile, new: &ControlFile, initdb: &str) -> Vec<Finding> {
    let field = |id, title, o: u32, n: u32| Compared {
        id,
        title,
        old: o.to_string(),
        new: n.to_string(),
    };
    let checksums = |c: &ControlFile| {
        if c.data_checksum_version == 0 {
            "off".to_string()
        } else {
            format!("on (version {})", c.data_checksum_version)
        }
    };
    let fields = [
        field(
            "control-alignment",
            "maximum data alignment",
            old.max_align,
            new.max_align,
        ),
        field(
            "control-block-size",
            "database block size",
            old.block_size,
            new.block_size,
        ),
        field(
            "control-segment-size",
            "blocks per segment of large relation",
            old.relseg_size,
            new.relseg_size,
        ),
        field(
            "control-wal-block-size",
            "WAL block size",
            old.wal_block_size,
            new.wal_block_size,
        ),
        field(
            "control-wal-segment-size",
            "WAL segment size",
            old.wal_segment_size,
            new.wal_segment_size,
        ),
        field(
            "control-name-length",
            "maximum identifier length",
            old.name_data_len,
            new.name_data_len,
        ),
        field(
            "control-index-columns",
            "maximum columns in an index",
            old.index_max_keys,
            new.index_max_keys,
        ),
        field(
            "control-toast-chunk",
            "TOAST chunk size",
            old.toast_max_chunk_size,
            new.toast_max_chunk_size,
        ),
        field(
            "control-large-object-chunk",
            "large-object chunk size",
            old.large_object_chunk_size,
            new.large_object_chunk_size,
        ),
        Compared {
            id: "control-data-checksums",
            title: "data checksums",
            old: checksums(old),
            new: checksums(new),
        },
    ];
    let mut out = Vec::new();
    for c in fields {
        if c.old == c.new {
            out.push(Finding::pass(c.id, c.title, format!("{} on both", c.old)));
            continue;
        }
        let remedy = match c.id {
            // Compile-time constants: only a different build of PostgreSQL helps.
            "control-alignment" | "control-block-size" | "control-segment-size" | "control-wal-block-size"
            | "control-name-length" | "control-index-columns" | "control-toast-chunk"
            | "control-large-object-chunk" => format!(
                "the two installations were built with different settings; use a new installation built like the old one (configure option or platform), or move the data by dump and restore. Old: {}, new: {}",
                c.old, c.new
            ),
            _ => format!("re-create the new cluster so that it matches the old one (it must be empty): {initdb}"),
        };
        out.push(Finding::fail(
            c.id,
            c.title,
            "control_mismatch",
            format!("{}: old cluster {}, new cluster {}", c.title, c.old, c.new),
            remedy,
        ));
    }
    out
}

pub(crate) fn check_char_signedness(config: &CheckConfig, report: &Report) -> Finding {
    let (id, title) = ("char-signedness", "default char signedness");
    let old_major = report.old.install.as_ref().map(|i| i.version.major);
    if let (Some(wanted), Some(major)) = (config.set_char_signedness, old_major) {
        if major.control_has_char_signedness() {
            return Finding::fail(
                id,
                title,
                "set_char_signedness_not_allowed",
                format!(
                    "--set-char-signedness is only for old clusters before 18, which do not record it; this one is PostgreSQL {major}"
                ),
                "drop --set-char-signedness",
            );
        }
        let word = if wanted == CharSignedness::Signed {
            "signed"
        } else {
            "unsigned"
        };
        return Finding::pass(
            id,
            title,
            format!("the new cluster will record \"{word}\" as asked"),
        );
    }
    match report.old.control.as_ref().and_then(|c| c.default_char_signed) {
        Some(signed) => Finding::pass(
            id,
            title,
            format!("the old cluster records {}; the new one will too", if signed { "signed" } else { "unsigned" }),
        ),
        None => Finding::pass(
            id,
            title,
            format!(
                "the old cluster predates the setting; the new one will record this platform's default ({})",
                if platform_char_is_signed() { "signed" } else { "unsigned" }
            ),
        ),
    }
}

/// Pre-18 clusters stored `char` with the signedness of the platform they ran on.
pub fn platform_char_is_signed() -> bool {
    // The compiler knows the platform's C `char` (signed on x86, unsigned
    // on ARM, POWER, s390x, RISC-V …): no list of architectures to keep.
    std::ffi::c_char::MIN != 0
}

#[cfg(test)]
mod tests {
    /// The platform's C compiler defines `__CHAR_UNSIGNED__` where plain
    /// `char` is unsigned; what pg-migrate assumes must agree with it.
    #[test]
    fn char_signedness_is_the_c_compilers() {
        let output = std::process::Command::new("cc")
            .args(["-dM", "-E", "-x", "c", "/dev/null"])
            .output()
            .expect("a C compiler (cc) is needed to build pg-migrate's dependencies");
        assert!(output.status.success());
        let macros = String::from_utf8_lossy(&output.stdout);
        let unsigned = macros.contains("#define __CHAR_UNSIGNED__ 1");
        assert_eq!(super::platform_char_is_signed(), !unsigned);
    }
}
