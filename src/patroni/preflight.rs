//! The preflight of `pg-migrate patroni`: everything judged before any
//! change, from Patroni's REST API, the store and each member's probe.
//! Pure judgement: it reads what it is given and returns findings.

use std::collections::BTreeSet;

use pgm_verifier::Finding;
use pgm_verifier::ObjectRef;
use serde_json::Value;

use super::config::{json_scalar, known_change, PatroniConfig};
use super::member::Probe;
use super::rest::ClusterView;
use crate::cli::{Mode, WalArchive};

/// What the preflight judges.
pub struct Inputs<'a> {
    pub config: &'a PatroniConfig,
    pub view: &'a ClusterView,
    pub dynamic: &'a Value,
    /// The store's `status` key (Patroni 4: `retain_slots` names members).
    pub status: Option<&'a Value>,
    /// Each member's probe, or why it could not be had.
    pub probes: &'a [(String, Result<Probe, String>)],
    pub mode: Mode,
    pub wal_archive: WalArchive,
    /// The store's `initialize` key: the system identifier Patroni holds
    /// this cluster to be.
    pub initialize: Option<String>,
    /// Settings of the dynamic configuration the new server does not know.
    pub dynamic_unknown: Vec<String>,
    /// The leader's archive settings (archive_mode, archive_command,
    /// archive_library) as its server reads them.
    pub archive: Option<(String, String, String)>,
}

fn member(name: &str) -> ObjectRef {
    ObjectRef {
        database: None,
        kind: "member".into(),
        name: name.to_string(),
        schema: None,
    }
}

fn members(names: &[String]) -> Vec<ObjectRef> {
    names.iter().map(|n| member(n)).collect()
}

/// Patroni's slot name for a member (`slot_name_from_member_name`): lower
/// case; `-` and `.` become `_`, any other character outside [a-z0-9_]
/// `u` and its code point in four digits; at most 63 characters.
fn slot_name(member: &str) -> String {
    let name: String = member
        .to_lowercase()
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c.to_string(),
            '-' | '.' => "_".to_string(),
            other => format!("u{:04}", other as u32),
        })
        .collect();
    name.chars().take(63).collect()
}

pub fn judge(inputs: &Inputs) -> Vec<Finding> {
    let mut findings = Vec::new();
    let view = inputs.view;
    let here = &inputs.config.name;

    // The leader, here.
    let id = "patroni-leader-here";
    let title = "pg-migrate runs on the leader's host";
    let leader = view.members.iter().find(|m| m.role == "leader");
    findings.push(match leader {
        Some(l) if &l.name == here => {
            Finding::pass(id, title, format!("{here} leads {}", view.scope))
        }
        Some(l) => Finding::fail(
            id,
            title,
            "not_leader",
            format!(
                "{} is the leader of {}, not {here} (whose configuration this is)",
                l.name, view.scope
            ),
            format!(
                "run pg-migrate patroni on {}'s host with its configuration",
                l.name
            ),
        )
        .with_objects(vec![member(&l.name)]),
        None => Finding::fail(
            id,
            title,
            "no_leader",
            format!(
                "{} has no leader{}",
                view.scope,
                if view.members.iter().any(|m| m.role == "standby_leader") {
                    " (it is a standby cluster, which pg-migrate patroni does not upgrade)"
                } else {
                    ""
                }
            ),
            "upgrade a cluster that has a leader, when it has one",
        ),
    });

    // Not paused.
    let id = "patroni-not-paused";
    let title = "Patroni is not paused";
    findings.push(
        if view.paused || inputs.dynamic["pause"].as_bool() == Some(true) {
            Finding::fail(
                id,
                title,
                "cluster_paused",
                format!(
                    "{} is paused (maintenance mode): someone else may be working on it",
                    view.scope
                ),
                "finish that work and resume the cluster (patronictl resume), then run again",
            )
        } else {
            Finding::pass(id, title, "not paused")
        },
    );

    // Every member running; every member the cluster knows present.
    let id = "patroni-members";
    let title = "every member runs and streams";
    let down: Vec<String> = view
        .members
        .iter()
        .filter(|m| match m.role.as_str() {
            "leader" => m.state != "running",
            _ => m.state != "streaming",
        })
        .map(|m| format!("{} ({} {})", m.name, m.role, m.state))
        .collect();
    let present: BTreeSet<String> = view.members.iter().map(|m| slot_name(&m.name)).collect();
    let missing: Vec<String> = inputs
        .status
        .and_then(|s| s["retain_slots"].as_array())
        .map(|slots| {
            slots
                .iter()
                .filter_map(|s| s.as_str())
                .filter(|s| !present.contains(*s))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    findings.push(if !down.is_empty() {
        Finding::fail(
            id,
            title,
            "member_down",
            format!("not running or not streaming: {}", down.join(", ")),
            "bring every member back (patronictl list shows them running and streaming), or remove the member for good (patronictl remove is for the whole cluster; stop its Patroni and delete its data), then run again",
        )
        .with_objects(members(&down))
    } else if !missing.is_empty() {
        Finding::fail(
            id,
            title,
            "member_missing",
            format!(
                "the cluster keeps a slot for {} but no such member is running: a member is down",
                missing.join(", ")
            ),
            "start that member's Patroni and wait until it streams (a member left out would find the cluster under a new system identifier and need rebuilding); a member gone for good is forgotten after member_slots_ttl (default 30 min), or at once with patronictl edit-config -s member_slots_ttl=0 (set it back afterwards)",
        )
        .with_objects(members(&missing))
    } else {
        Finding::pass(
            id,
            title,
            format!(
                "{}: {}",
                view.members.len(),
                view.members.iter().map(|m| format!("{} {}", m.name, m.state)).collect::<Vec<_>>().join(", ")
            ),
        )
    });

    // No lag beyond what the cluster itself accepts.
    let id = "patroni-caught-up";
    let title = "every replica is caught up";
    let limit = inputs.dynamic["maximum_lag_on_failover"]
        .as_u64()
        .unwrap_or(1 << 20);
    let lagging: Vec<String> = view
        .members
        .iter()
        .filter(|m| m.role != "leader")
        .filter(|m| m.lag.is_none_or(|lag| lag > limit))
        .map(|m| match m.lag {
            Some(lag) => format!("{} ({lag} bytes behind)", m.name),
            None => format!("{} (lag unknown)", m.name),
        })
        .collect();
    findings.push(if lagging.is_empty() {
        Finding::pass(id, title, format!("each within {limit} bytes (maximum_lag_on_failover)"))
    } else {
        Finding::fail(
            id,
            title,
            "replica_lagging",
            format!("behind the leader by more than maximum_lag_on_failover ({limit} bytes): {}", lagging.join(", ")),
            "let the replicas catch up (is replay paused? is the network slow?), then run again: every replica replays the leader's last WAL before it stops",
        )
        .with_objects(members(&lagging))
    });

    // One timeline.
    let id = "patroni-timeline";
    let title = "every member is on the leader's timeline";
    let timelines: BTreeSet<u64> = view.members.iter().filter_map(|m| m.timeline).collect();
    findings.push(if timelines.len() <= 1 {
        Finding::pass(
            id,
            title,
            match timelines.iter().next() {
                Some(tli) => format!("timeline {tli}"),
                None => "no member reports a timeline".into(),
            },
        )
    } else {
        Finding::fail(
            id,
            title,
            "timeline_differs",
            format!(
                "members are on different timelines: {}",
                view.members.iter().map(|m| format!("{} {:?}", m.name, m.timeline)).collect::<Vec<_>>().join(", ")
            ),
            "wait until every replica follows the leader's timeline (patronictl list), then run again",
        )
    });

    judge_probes(inputs, &mut findings);
    judge_settings(inputs, &mut findings);
    findings.push(judge_archive(inputs));
    findings
}

fn judge_probes(inputs: &Inputs, findings: &mut Vec<Finding>) {
    let leader_probe = inputs
        .probes
        .iter()
        .find(|(name, _)| name == &inputs.config.name)
        .and_then(|(_, p)| p.as_ref().ok());

    let id = "patroni-member-probes";
    let title = "pg-migrate answers on every member";
    let failed: Vec<String> = inputs
        .probes
        .iter()
        .filter_map(|(name, p)| p.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();
    findings.push(if failed.is_empty() {
        Finding::pass(id, title, format!("{} members looked at", inputs.probes.len()))
    } else {
        Finding::fail(
            id,
            title,
            "member_unreachable",
            format!("pg-migrate could not look at: {}", failed.join("; ")),
            "make the remote command work for every member (--remote, e.g. 'ssh {host} --'), pg-migrate installed there (--remote-pg-migrate) and each member's Patroni configuration where --member-config says",
        )
    });
    let probes: Vec<&Probe> = inputs
        .probes
        .iter()
        .filter_map(|(_, p)| p.as_ref().ok())
        .collect();

    let id = "patroni-new-installation";
    let title = "the new installation is on every member";
    let want = leader_probe.and_then(|p| p.new_major);
    let bad: Vec<String> = probes
        .iter()
        .filter_map(|p| match (&p.new_install_problem, p.new_major) {
            (Some(problem), _) => Some(format!("{}: {problem}", p.name)),
            (None, major) if major != want => Some(format!(
                "{}: {} is PostgreSQL {}, the leader's {}",
                p.name,
                p.new_bindir.display(),
                major.unwrap_or(0),
                want.unwrap_or(0)
            )),
            _ => None,
        })
        .collect();
    let old_major = leader_probe.and_then(|p| p.old_major);
    findings.push(if !bad.is_empty() {
        Finding::fail(
            id,
            title,
            "new_installation_missing",
            bad.join("; "),
            "install the same new PostgreSQL major at the same -B path on every member (with the same extensions), then run again",
        )
        .with_objects(members(&bad.iter().map(|b| b.split(':').next().unwrap_or("").to_string()).collect::<Vec<_>>()))
    } else if want.is_some_and(|w| old_major.is_some_and(|o| w <= o)) {
        Finding::fail(
            id,
            title,
            "not_newer",
            format!("-B is PostgreSQL {}, not newer than the cluster's {}", want.unwrap_or(0), old_major.unwrap_or(0)),
            "name the newer major's bin directory with -B",
        )
    } else {
        Finding::pass(
            id,
            title,
            format!("PostgreSQL {} on {} members", leader_probe.and_then(|p| p.new_version.clone()).unwrap_or_default(), probes.len()),
        )
    });

    let id = "patroni-same-cluster";
    let title = "every member's data directory is this cluster's";
    let sysid = leader_probe.and_then(|p| p.system_identifier.clone());
    let strangers: Vec<String> = probes
        .iter()
        .filter(|p| {
            !p.problems.is_empty() || p.system_identifier != sysid || p.old_major != old_major
        })
        .map(|p| {
            if p.problems.is_empty() {
                format!(
                    "{}: {} is system {} PostgreSQL {}",
                    p.name,
                    p.data_dir.display(),
                    p.system_identifier.clone().unwrap_or_default(),
                    p.old_major.unwrap_or(0)
                )
            } else {
                format!("{}: {}", p.name, p.problems.join(", "))
            }
        })
        .collect();
    let replicas_not_standby: Vec<String> = probes
        .iter()
        .filter(|p| p.name != inputs.config.name && !p.standby)
        .map(|p| p.name.clone())
        .collect();
    let store_says = inputs.initialize.clone();
    findings.push(if sysid.is_none() || store_says.as_ref().is_some_and(|i| Some(i) != sysid.as_ref()) {
        Finding::fail(
            id,
            title,
            "store_mismatch",
            format!(
                "the store's initialize key says system {}, the leader's pg_control {}",
                store_says.unwrap_or_default(),
                sysid.clone().unwrap_or_else(|| "nothing readable".into())
            ),
            "point --config at this cluster's leader; a store that names another system identifier must be set right before any upgrade",
        )
    } else if !strangers.is_empty() {
        Finding::fail(
            id,
            title,
            "member_not_in_cluster",
            format!("the leader is system {}; {}", sysid.unwrap_or_default(), strangers.join("; ")),
            "point --member-config at each member's own Patroni configuration; a member of another cluster must leave this one",
        )
    } else if !replicas_not_standby.is_empty() {
        Finding::fail(
            id,
            title,
            "member_not_in_cluster",
            format!("not a standby (no standby.signal): {}", replicas_not_standby.join(", ")),
            "wait until every replica runs as a standby of the leader (patronictl list), then run again",
        )
        .with_objects(members(&replicas_not_standby))
    } else {
        Finding::pass(id, title, format!("system {}", sysid.unwrap_or_default()))
    });

    let id = "patroni-new-datadir";
    let title = "the new data directory can be made on every member";
    let mut bad: Vec<String> = probes
        .iter()
        .filter_map(|p| {
            p.new_datadir_problem
                .as_ref()
                .map(|e| format!("{}: {e}", p.name))
        })
        .collect();
    let link = matches!(inputs.mode, Mode::Link);
    if link {
        bad.extend(
            probes
                .iter()
                .filter(|p| p.same_filesystem == Some(false))
                .map(|p| {
                    format!(
                        "{}: {} is on another filesystem than {} (linking needs one)",
                        p.name,
                        p.new_datadir.display(),
                        p.data_dir.display()
                    )
                }),
        );
    }
    findings.push(if bad.is_empty() {
        Finding::pass(
            id,
            title,
            probes.iter().map(|p| format!("{} {}", p.name, p.new_datadir.display())).collect::<Vec<_>>().join(", "),
        )
    } else {
        Finding::fail(
            id,
            title,
            "new_datadir_unusable",
            bad.join("; "),
            "choose a new data directory beside each old one, empty or absent, writable by the clusters' owner (--new-datadir, e.g. '{data_dir}.{major}')",
        )
    });

    let id = "patroni-room";
    let title = "room for each member's new data directory";
    let short: Vec<String> = probes
        .iter()
        .filter(|p| p.name != inputs.config.name || link)
        .filter_map(|p| {
            let need = 2 * p.catalog_bytes + (64 << 20);
            let free = p.free_bytes?;
            (free < need).then(|| format!("{}: {free} bytes free, about {need} needed", p.name))
        })
        .collect();
    findings.push(if short.is_empty() {
        Finding::pass(id, title, "room enough for the catalogs, the kit and WAL")
    } else {
        Finding::fail(
            id,
            title,
            "no_room",
            short.join("; "),
            "free space where the new data directories go, then run again",
        )
    });
}

fn judge_settings(inputs: &Inputs, findings: &mut Vec<Finding>) {
    let id = "patroni-settings";
    let title = "the settings Patroni manages exist in the new major";
    let probes: Vec<&Probe> = inputs
        .probes
        .iter()
        .filter_map(|(_, p)| p.as_ref().ok())
        .collect();
    let new_major = inputs
        .probes
        .iter()
        .find(|(n, _)| n == &inputs.config.name)
        .and_then(|(_, p)| p.as_ref().ok())
        .and_then(|p| p.new_major);
    let mut unknown: Vec<String> = probes
        .iter()
        .flat_map(|p| {
            p.unknown_settings
                .iter()
                .map(move |s| format!("{s} (in {}'s configuration)", p.name))
        })
        .collect();
    unknown.extend(
        inputs
            .dynamic_unknown
            .iter()
            .map(|s| format!("{s} (in the dynamic configuration)")),
    );
    let mut changed: Vec<String> = probes
        .iter()
        .flat_map(|p| p.changed_settings.clone())
        .collect();
    if let (Some(params), Some(major)) = (
        inputs.dynamic["postgresql"]["parameters"].as_object(),
        new_major,
    ) {
        changed.extend(
            params
                .keys()
                .filter(|name| known_change(name, major).is_some())
                .cloned(),
        );
    }
    changed.sort();
    changed.dedup();
    findings.push(if !unknown.is_empty() {
        Finding::fail(
            id,
            title,
            "setting_unknown_to_new",
            format!(
                "PostgreSQL {} does not know {} (its server would refuse to start)",
                new_major.unwrap_or(0),
                unknown.join(", ")
            ),
            "remove or rename them (patronictl edit-config for the dynamic configuration, each member's file for its own) before the upgrade",
        )
    } else if !changed.is_empty() {
        Finding::warn(
            id,
            title,
            "setting_renamed",
            format!(
                "renamed or removed in PostgreSQL {}: {}; the upgrade carries them (renamed under the new name, removed ones dropped) in each member's file, the dynamic configuration and the carried postgresql.conf",
                new_major.unwrap_or(0),
                changed.join(", ")
            ),
            "nothing to do; each member's Patroni configuration as it was is kept beside the new one",
        )
    } else {
        Finding::pass(id, title, "none renamed or removed")
    });
}

/// A tool recognised in an archive command, and what a new system
/// identifier means for it.
fn archive_tool(command: &str) -> Option<(&'static str, &'static str)> {
    let c = command.to_ascii_lowercase();
    [
        ("pgbackrest", "pgBackRest", "after the upgrade run pgbackrest stanza-upgrade, then a full backup"),
        ("wal-g", "WAL-G", "give the new cluster its own storage prefix (WALG_*_PREFIX), then take a base backup"),
        ("wal-e", "WAL-E", "give the new cluster its own prefix (WALE_*_PREFIX), then take a base backup"),
        ("barman", "Barman", "point the cluster at a new Barman server entry, then take a base backup"),
        ("pg_probackup", "pg_probackup", "add the new cluster as a new instance (pg_probackup add-instance), then take a full backup"),
    ]
    .into_iter()
    .find(|(needle, _, _)| c.contains(needle))
    .map(|(_, name, advice)| (name, advice))
}

fn judge_archive(inputs: &Inputs) -> Finding {
    let id = "patroni-wal-archive";
    let title = "the WAL archive is ready for a new system identifier";
    let from_dynamic = |name: &str| json_scalar(&inputs.dynamic["postgresql"]["parameters"][name]);
    let (mode, command, library) = match &inputs.archive {
        Some((m, c, l)) => (m.clone(), c.clone(), l.clone()),
        None => (
            from_dynamic("archive_mode").unwrap_or_else(|| "off".into()),
            from_dynamic("archive_command").unwrap_or_default(),
            from_dynamic("archive_library").unwrap_or_default(),
        ),
    };
    let archiving = mode != "off" && (!command.trim().is_empty() || !library.trim().is_empty());
    if !archiving {
        return Finding::pass(
            id,
            title,
            format!("archive_mode = {mode}: nothing archives (a new base backup is still needed: the new cluster cannot be restored from the old one's backups)"),
        );
    }
    let what = if command.trim().is_empty() {
        format!("archive_library = '{library}'")
    } else {
        format!("archive_command = '{command}'")
    };
    let (tool, advice) = archive_tool(&format!("{command} {library}")).unwrap_or((
        "the archive",
        "give the new cluster its own archive location, then take a base backup",
    ));
    match inputs.wal_archive {
        WalArchive::Refuse => Finding::fail(
            id,
            title,
            "wal_archive_in_use",
            format!(
                "archive_mode = {mode}, {what}: the upgraded cluster has a new system identifier and would archive into {tool}'s location for the old one unchanged"
            ),
            format!(
                "{advice}; to go on, choose --wal-archive off (the new cluster starts with archive_mode off; turn it on once the archive is ready) or --wal-archive keep (archive unchanged, when {tool} copes with the new identifier)"
            ),
        ),
        WalArchive::Off => Finding::warn(
            id,
            title,
            "wal_archive_off",
            format!("archive_mode = {mode}, {what}: the new cluster starts with archive_mode = off (--wal-archive off: set in the dynamic configuration)"),
            format!("{advice}; then turn archiving on again (patronictl edit-config)"),
        ),
        WalArchive::Keep => Finding::warn(
            id,
            title,
            "wal_archive_kept",
            format!("archive_mode = {mode}, {what}: kept unchanged (--wal-archive keep); the new system identifier archives where the old one did"),
            advice.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_as_patroni_makes_them() {
        assert_eq!(slot_name("Node-1.db"), "node_1_db");
        assert_eq!(slot_name("db@1"), "dbu00641");
        assert_eq!(slot_name(&"x".repeat(70)).len(), 63);
    }

    #[test]
    fn archive_tools_recognised() {
        assert_eq!(
            archive_tool("pgbackrest --stanza=main archive-push %p")
                .unwrap()
                .0,
            "pgBackRest"
        );
        assert_eq!(
            archive_tool("envdir /etc/wal-g wal-g wal-push %p")
                .unwrap()
                .0,
            "WAL-G"
        );
        assert!(archive_tool("cp %p /archive/%f").is_none());
    }
}
