//! Checks that only read files and run `--version`: no server is started, so
//! a failure here leaves both data directories byte-for-byte as they were.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::Path;

use pgm_cluster::{ClusterState, ControlFile, DataDir, Error, Installation, ServerStatus, Tool};

use crate::initdb::suggested_initdb;
use crate::{CharSignedness, CheckConfig, Finding, Report, SideConfig, TransferKind, Which};

pub(crate) fn run(config: &CheckConfig, report: &mut Report) -> Vec<Finding> {
    let mut out = Vec::new();
    for which in [Which::Old, Which::New] {
        let (side, facts) = side(config, report, which);
        let (finding, install) = check_bindir(which, side);
        facts.install = install;
        out.push(finding);
    }
    out.push(check_version_pair(report));
    for which in [Which::Old, Which::New] {
        if which == Which::New && config.create_new && is_missing(&config.new.datadir) {
            out.push(check_new_parent(config, report));
            continue;
        }
        let (side, facts) = side(config, report, which);
        let postgres = facts
            .install
            .as_ref()
            .and_then(|i| i.path(Tool::Postgres))
            .map(Path::to_path_buf);
        let (finding, datadir) = check_datadir(which, side, postgres.as_deref());
        facts.datadir = datadir;
        out.push(finding);
    }
    out.push(check_distinct(config, report));
    out.extend(side_details(Which::Old, config, report));
    if report.new_to_create {
        for (id, title) in NEW_CLUSTER_CHECKS {
            out.push(Finding::skip(
                id,
                title,
                "the new cluster does not exist yet: checked once pg-migrate has created it",
            ));
        }
    } else {
        out.extend(side_details(Which::New, config, report));
        out.extend(compare_with_old(config, report));
    }
    out.push(check_char_signedness(config, report));
    out.extend(check_filesystems(config, report));
    out
}

/// The checks of the new cluster that wait until it exists when pg-migrate creates it.
const NEW_CLUSTER_CHECKS: [(&str, &str); 13] = [
    (
        "new-datadir-version",
        "new data directory matches the new installation",
    ),
    ("new-control", "new pg_control"),
    ("new-server", "new cluster shut down cleanly"),
    ("control-alignment", "maximum data alignment"),
    ("control-block-size", "database block size"),
    (
        "control-segment-size",
        "blocks per segment of large relation",
    ),
    ("control-wal-block-size", "WAL block size"),
    ("control-wal-segment-size", "WAL segment size"),
    ("control-name-length", "maximum identifier length"),
    ("control-index-columns", "maximum columns in an index"),
    ("control-toast-chunk", "TOAST chunk size"),
    ("control-large-object-chunk", "large-object chunk size"),
    ("control-data-checksums", "data checksums"),
];

/// The on-disk checks of a new cluster pg-migrate has just created.
pub(crate) fn run_created_new(config: &CheckConfig, report: &mut Report) -> Vec<Finding> {
    let mut out = Vec::new();
    let postgres = report
        .new
        .install
        .as_ref()
        .and_then(|i| i.path(Tool::Postgres))
        .map(Path::to_path_buf);
    let (finding, datadir) = check_datadir(Which::New, &config.new, postgres.as_deref());
    report.new.datadir = datadir;
    out.push(finding);
    out.extend(side_details(Which::New, config, report));
    out.extend(compare_with_old(config, report));
    out
}

fn is_missing(path: &Path) -> bool {
    matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == ErrorKind::NotFound)
}

/// A new data directory that does not exist yet will be made by initdb: its
/// parent must exist and be writable.
fn check_new_parent(config: &CheckConfig, report: &mut Report) -> Finding {
    let (id, title) = ("new-datadir", "new data directory");
    let dir = &config.new.datadir;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let usable = parent.is_dir()
        && nix::unistd::access(
            parent,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .is_ok();
    if !usable {
        return Finding::fail(
            id,
            title,
            "datadir_not_found",
            format!(
                "the new data directory {} does not exist, and its parent {} is not a directory this user can write to",
                dir.display(),
                parent.display()
            ),
            "create the parent directory (owned by this user) or pass another path with -D/--new-datadir (PGDATANEW)",
        );
    }
    report.new_to_create = true;
    Finding::pass(
        id,
        title,
        format!(
            "{} does not exist yet: pg-migrate will create it with the new installation's initdb, matching the old cluster (encoding, locale, data checksums, WAL segment size, install user)",
            dir.display()
        ),
    )
}

fn side_details(which: Which, config: &CheckConfig, report: &mut Report) -> Vec<Finding> {
    let mut out = Vec::new();
    let (side, facts) = side(config, report, which);
    if let Some(f) =
        check_datadir_version(which, side, facts.install.as_ref(), facts.datadir.as_ref())
    {
        out.push(f);
    }
    let (findings, control, server) =
        check_control_and_server(which, side, facts.datadir.as_ref(), config);
    facts.control = control;
    facts.server = server;
    out.extend(findings);
    out
}

fn compare_with_old(config: &CheckConfig, report: &Report) -> Vec<Finding> {
    match (&report.old.control, &report.new.control) {
        (Some(old), Some(new)) => compare_control(old, new, &suggested_initdb(config, report)),
        _ => Vec::new(),
    }
}

fn side<'a>(
    config: &'a CheckConfig,
    report: &'a mut Report,
    which: Which,
) -> (&'a SideConfig, &'a mut crate::SideFacts) {
    match which {
        Which::Old => (&config.old, &mut report.old),
        Which::New => (&config.new, &mut report.new),
    }
}

fn flag(which: Which, short_bin: bool) -> &'static str {
    match (which, short_bin) {
        (Which::Old, true) => "-b/--old-bindir (PGBINOLD)",
        (Which::New, true) => "-B/--new-bindir (PGBINNEW)",
        (Which::Old, false) => "-d/--old-datadir (PGDATAOLD)",
        (Which::New, false) => "-D/--new-datadir (PGDATANEW)",
    }
}

fn check_bindir(which: Which, side: &SideConfig) -> (Finding, Option<Installation>) {
    let (id, title) = match which {
        Which::Old => ("old-bindir", "old installation's programs"),
        Which::New => ("new-bindir", "new installation's programs"),
    };
    let dir = side.bindir.display();
    let install = match Installation::discover(&side.bindir) {
        Ok(install) => install,
        Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            let f = Finding::fail(
                id,
                title,
                "bindir_not_found",
                format!("the {} bin directory {dir} does not exist", which.name()),
                format!(
                    "pass the bin directory of the {} PostgreSQL installation with {}",
                    which.name(),
                    flag(which, true)
                ),
            );
            return (f, None);
        }
        Err(Error::Io { source, .. }) => {
            let f = Finding::fail(
                id,
                title,
                "bindir_unreadable",
                format!(
                    "the {} bin directory {dir} cannot be used: {source}",
                    which.name()
                ),
                "make it a directory this user can read and execute, or pass the right one with "
                    .to_string()
                    + flag(which, true),
            );
            return (f, None);
        }
        Err(e) => {
            let f = Finding::fail(
                id,
                title,
                "bindir_incomplete",
                format!("{e}: this is not the bin directory of a PostgreSQL installation"),
                format!(
                    "pass the directory that holds postgres and pg_ctl with {}",
                    flag(which, true)
                ),
            );
            return (f, None);
        }
    };
    let required: &[Tool] = match which {
        Which::Old => &Tool::REQUIRED_OLD,
        Which::New => &Tool::REQUIRED_NEW,
    };
    let missing = install.missing(required);
    if !missing.is_empty() {
        let names: Vec<String> = missing
            .iter()
            .map(|t| match install.broken.get(t) {
                Some(why) => format!("{} ({why})", t.file_name()),
                None => t.file_name().to_string(),
            })
            .collect();
        let remedy = match which {
            Which::Old => "the old side only needs postgres and pg_ctl; install them or pass the right directory with -b".to_string(),
            Which::New => format!(
                "install the full PostgreSQL {} (server and client programs) or pass its bin directory with -B",
                install.version.major
            ),
        };
        let f = Finding::fail(
            id,
            title,
            "bindir_incomplete",
            format!("{dir} lacks {}", names.join(", ")),
            remedy,
        );
        return (f, Some(install));
    }
    // Only what pg-migrate runs counts: another major there is refused,
    // another minor release (packages updated one at a time) only noted.
    let used: &[Tool] = match which {
        Which::Old => &Tool::USED_OLD,
        Which::New => &Tool::REQUIRED_NEW,
    };
    let mixed = install.version_mismatches(used);
    let list = |majors: bool| -> Vec<String> {
        mixed
            .iter()
            .filter(|(_, v)| (v.major != install.version.major) == majors)
            .map(|(t, v)| format!("{} is {v}", t.file_name()))
            .collect()
    };
    let (other_major, other_minor) = (list(true), list(false));
    if !other_major.is_empty() {
        let f = Finding::fail(
            id,
            title,
            "bindir_mixed_versions",
            format!(
                "{dir} mixes majors among the programs pg-migrate runs: postgres is {} but {}",
                install.version,
                other_major.join(", ")
            ),
            "point to a bin directory whose programs all come from one PostgreSQL major",
        );
        return (f, Some(install));
    }
    if !other_minor.is_empty() {
        let f = Finding::warn(
            id,
            title,
            "bindir_mixed_minor",
            format!(
                "{dir} holds programs of other minor releases: postgres is {} but {}; programs of one major work together, so the upgrade goes on",
                install.version,
                other_minor.join(", ")
            ),
            "update the installation's packages to one minor release when convenient",
        );
        return (f, Some(install));
    }
    let f = Finding::pass(
        id,
        title,
        format!(
            "PostgreSQL {} in {dir} ({} programs found)",
            install.version,
            install.tools.len()
        ),
    );
    (f, Some(install))
}

fn check_version_pair(report: &Report) -> Finding {
    let (id, title) = ("version-pair", "upgrade path");
    let (Some(old), Some(new)) = (&report.old.install, &report.new.install) else {
        return Finding::skip(id, title, "both installations must be known first");
    };
    let (old_major, new_major) = (old.version.major, new.version.major);
    if old_major >= new_major {
        return Finding::fail(
            id,
            title,
            "version_not_newer",
            format!(
                "the old installation is PostgreSQL {old_major} and the new one {new_major}: an upgrade must go to a newer major"
            ),
            "check that -b names the old installation and -B the new one (they may be swapped)",
        );
    }
    if !old_major.is_supported() || old_major.number() >= 18 {
        return Finding::fail(
            id,
            title,
            "version_unsupported",
            format!("upgrading from PostgreSQL {old_major} is not supported: pg-migrate upgrades from 12 to 17"),
            "upgrade to PostgreSQL 12 or later first (with that release's pg_upgrade or by dump and restore)",
        );
    }
    if !new_major.is_supported() {
        return Finding::fail(
            id,
            title,
            "version_unsupported",
            format!("upgrading to PostgreSQL {new_major} is not supported: pg-migrate upgrades to 13 up to 18"),
            "use a new installation of PostgreSQL 18 or another supported major",
        );
    }
    Finding::pass(id, title, format!("PostgreSQL {old_major} → {new_major}"))
}

fn check_datadir(
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

fn check_distinct(config: &CheckConfig, report: &Report) -> Finding {
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

fn check_datadir_version(
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

fn check_control_and_server(
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

fn check_server_state(
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

struct Compared {
    id: &'static str,
    title: &'static str,
    old: String,
    new: String,
}

fn compare_control(old: &ControlFile, new: &ControlFile, initdb: &str) -> Vec<Finding> {
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

fn check_char_signedness(config: &CheckConfig, report: &Report) -> Finding {
    let (id, title) = ("char-signedness", "default char signedness");
    let old_major = report.old.install.as_ref().map(|i| i.version.major);
    if let (Some(wanted), Some(major)) = (config.set_char_signedness, old_major) {
        if major.number() >= 18 {
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

/// Bytes in every file under `dir` (what a copy of it needs).
fn tree_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn device(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let existing = path.ancestors().find(|p| p.exists())?;
    std::fs::metadata(existing).ok().map(|m| m.dev())
}

fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let stat = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

fn human_bytes(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

/// The new cluster puts its files for each tablespace in a directory named
/// for its major and catalog version beside the old one's; one that exists
/// already (an earlier attempt, or another cluster sharing the location)
/// would make the restore fail.
fn new_tablespace_dirs(report: &Report, tablespaces: &[std::path::PathBuf]) -> Finding {
    let (id, title) = (
        "new-tablespace-dirs",
        "the tablespaces have room for the new major's directory",
    );
    let Some(new_major) = report.new.install.as_ref().map(|i| i.version.major) else {
        return Finding::skip(id, title, "the new installation is unknown");
    };
    // Without a new cluster yet its catalog version is unknown: any
    // directory of the new major is in the way.
    let exact = report
        .new
        .control
        .as_ref()
        .map(|c| format!("PG_{}_{}", new_major, c.catalog_version));
    // The restore makes the new cluster's directory in each location: one
    // this user cannot write would fail it half-way.
    let unwritable: Vec<String> = tablespaces
        .iter()
        .filter(|location| {
            nix::unistd::access(
                location.as_path(),
                nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            )
            .is_err()
        })
        .map(|p| p.display().to_string())
        .collect();
    if !unwritable.is_empty() {
        return Finding::fail(
            id,
            title,
            "tablespace_not_writable",
            format!(
                "the new cluster's directory for these tablespaces must be made beside the old one's, but this user cannot write to their locations: {}",
                unwritable.join(", ")
            ),
            "give the cluster's owner write access to those directories (as when the tablespaces were created), or run pg-migrate as the user that owns them",
        );
    }
    let prefix = format!("PG_{new_major}_");
    let found: Vec<String> = tablespaces
        .iter()
        .flat_map(|location| {
            std::fs::read_dir(location)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
        })
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            match &exact {
                Some(exact) => name == exact.as_str(),
                None => name.starts_with(&prefix),
            }
        })
        .map(|p| p.display().to_string())
        .collect();
    if found.is_empty() {
        Finding::pass(
            id,
            title,
            format!(
                "{} user tablespaces have room for the new cluster's directory",
                tablespaces.len()
            ),
        )
    } else {
        Finding::fail(
            id,
            title,
            "new_tablespace_dir_exists",
            format!(
                "the new cluster's tablespace directories exist already: {}",
                found.join(", ")
            ),
            "remove them if they hold nothing you need (a leftover of an earlier attempt: pg-migrate revert -D NEW removes its own), or give the other cluster that shares the location its own",
        )
    }
}

/// Link, clone and swap need one filesystem (clone one that can clone);
/// copy_file_range must work between the two. Tried for real with a scratch
/// file in the new directory (the old cluster's PG_VERSION is only read).
fn check_transfer_mode(
    config: &CheckConfig,
    old: &Path,
    new: &Path,
    tablespaces: &[std::path::PathBuf],
    new_major: Option<pgm_cluster::PgMajor>,
) -> Finding {
    let (id, title) = ("transfer-mode", "filesystems allow the transfer mode");
    let mode = config.transfer;
    let flag = mode.flag();
    if mode == TransferKind::Swap && new_major.is_some_and(|m| m.number() < 15) {
        return Finding::fail(
            id,
            title,
            "swap_not_possible",
            "--swap needs a new cluster of PostgreSQL 15 or later, which keeps every relation file's name (relfilenumber)",
            "use --link or --copy",
        );
    }
    let same_device = device(old) == device(new);
    // Clones may cross devices (btrfs subvolumes): the probe decides.
    if matches!(mode, TransferKind::Link | TransferKind::Swap) && !same_device {
        return Finding::fail(
            id,
            title,
            "cross_device_link",
            format!(
                "{flag} needs the old and new data directories on one filesystem; {} and {} are on different ones",
                old.display(),
                new.display()
            ),
            "put the new data directory on the old one's filesystem, or use --copy",
        );
    }
    if mode == TransferKind::Copy {
        return Finding::pass(id, title, "copy mode works across filesystems");
    }
    // The new directory, or the existing directory it will be made in.
    let Some(target) = new.ancestors().find(|p| p.is_dir()) else {
        return Finding::skip(id, title, "no existing directory to try the transfer in");
    };
    // Each tablespace's files go beside the old ones, in the same location:
    // tried there too, from one of the old cluster's files in it.
    let mut trials = vec![(old.join("PG_VERSION"), target.to_path_buf())];
    for location in tablespaces {
        let sample = walkdir::WalkDir::new(location)
            .min_depth(2)
            .into_iter()
            .flatten()
            .find(|e| e.file_type().is_file());
        if let Some(sample) = sample {
            trials.push((sample.into_path(), location.clone()));
        }
    }
    let outcome = trials
        .iter()
        .try_for_each(|(from, into)| pgm_transfer::probe(mode.file_mode(), from, into));
    match outcome {
        Ok(()) => Finding::pass(
            id,
            title,
            match mode {
                TransferKind::Link => "old and new data directories share a filesystem: hard links work".to_string(),
                _ => format!("{flag} works from the old data directory into {}", target.display()),
            },
        ),
        Err(e) => match mode {
            TransferKind::Clone => Finding::fail(
                id,
                title,
                "clone_unsupported",
                format!("the filesystem cannot clone files (reflink): {e}"),
                "use --link or --copy, or put both clusters on a filesystem that clones (XFS made with reflink=1, btrfs)",
            ),
            TransferKind::CopyFileRange => Finding::fail(
                id,
                title,
                "copy_file_range_unsupported",
                format!("copy_file_range does not work here: {e}"),
                "use --copy",
            ),
            _ => Finding::fail(
                id,
                title,
                "cross_device_link",
                format!("{flag} does not work between the data directories: {e}"),
                "put the new data directory on the old one's filesystem, or use --copy",
            ),
        },
    }
}

/// Link mode needs one filesystem; copy mode needs room for the data, the
/// new cluster's own files and the pristine copy pg-migrate keeps of it.
fn check_filesystems(config: &CheckConfig, report: &Report) -> Vec<Finding> {
    let (link_id, link_title) = ("transfer-mode", "filesystems allow the transfer mode");
    let (space_id, space_title) = ("disk-space", "room for the new cluster");
    let Some(old) = report.old.datadir.as_ref() else {
        return vec![
            Finding::skip(
                "old-tablespace-locations",
                "tablespaces outside the old data directory",
                "no old data directory",
            ),
            Finding::skip(
                "new-tablespace-dirs",
                "the tablespaces have room for the new major's directory",
                "no old data directory",
            ),
            Finding::skip(link_id, link_title, "no old data directory"),
            Finding::skip(space_id, space_title, "no old data directory"),
        ];
    };
    let new = &config.new.datadir;
    // Old tablespaces: the new cluster's files go beside them, in the same place.
    let tablespaces: Vec<std::path::PathBuf> = std::fs::read_dir(old.path.join("pg_tblspc"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    let inside: Vec<String> = tablespaces
        .iter()
        .filter(|t| t.starts_with(&old.path))
        .map(|t| t.display().to_string())
        .collect();
    out.push(if inside.is_empty() {
        Finding::pass(
            "old-tablespace-locations",
            "tablespaces outside the old data directory",
            format!("{} user tablespaces, none inside the data directory", tablespaces.len()),
        )
    } else {
        Finding::warn(
            "old-tablespace-locations",
            "tablespaces outside the old data directory",
            "tablespace_in_datadir",
            format!(
                "these tablespaces lie inside the old data directory: {}; the new cluster's files will be put beside them, so deleting the old data directory later would delete them too",
                inside.join(", ")
            ),
            "no delete_old_cluster.sh is written; after the upgrade, move those tablespaces' contents out (ALTER TABLE … SET TABLESPACE to a tablespace elsewhere) before removing the old data directory",
        )
    });
    out.push(new_tablespace_dirs(report, &tablespaces));
    let new_major = report.new.install.as_ref().map(|i| i.version.major);
    out.push(check_transfer_mode(
        config,
        &old.path,
        new,
        &tablespaces,
        new_major,
    ));
    match config.transfer {
        TransferKind::Link | TransferKind::Clone | TransferKind::Swap => {
            out.push(Finding::pass(
                space_id,
                space_title,
                format!("{} copies no data", config.transfer.flag()),
            ));
        }
        TransferKind::Copy | TransferKind::CopyFileRange => {
            // Needs per filesystem: the data directory's share, each tablespace's.
            let mut needs: BTreeMap<u64, (u64, std::path::PathBuf)> = BTreeMap::new();
            let mut add = |path: &Path, bytes: u64| {
                if let Some(dev) = device(path) {
                    let entry = needs.entry(dev).or_insert((0, path.to_path_buf()));
                    entry.0 += bytes;
                }
            };
            let new_cluster = if new.exists() {
                tree_size(new)
            } else {
                64 << 20
            };
            add(new, tree_size(&old.path.join("base")) + 2 * new_cluster);
            for location in &tablespaces {
                let size = std::fs::read_dir(location)
                    .map(|entries| {
                        entries
                            .flatten()
                            .filter(|e| {
                                e.file_name()
                                    .to_string_lossy()
                                    .starts_with(&format!("PG_{}_", old.major))
                            })
                            .map(|e| tree_size(&e.path()))
                            .sum()
                    })
                    .unwrap_or(0);
                add(location, size);
            }
            let mut short = Vec::new();
            let mut total = 0;
            for (need, path) in needs.values() {
                total += need;
                let need = need + need / 20;
                if let Some(free) = free_bytes(path) {
                    if free < need {
                        short.push(format!(
                            "{} needs about {} but has {} free",
                            path.display(),
                            human_bytes(need),
                            human_bytes(free)
                        ));
                    }
                }
            }
            out.push(if short.is_empty() {
                Finding::pass(space_id, space_title, format!("about {} to copy, and room for it", human_bytes(total)))
            } else {
                Finding::fail(
                    space_id,
                    space_title,
                    "insufficient_space",
                    format!("not enough free space for a copy: {}", short.join("; ")),
                    "free space there, put the new cluster on a larger filesystem, or use --link (no copy) if old and new can share a filesystem",
                )
            });
        }
    }
    out
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
