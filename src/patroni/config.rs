//! A member's Patroni configuration file: what pg-migrate needs from it
//! (scope, name, REST address, the store, data and bin directories, the
//! PostgreSQL settings Patroni manages), and which of those settings a
//! new major renamed or removed. Reads files only; talks to nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

/// The store Patroni keeps the cluster's state in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// etcd through its v3 API over plain HTTP: the client addresses
    /// (`host:port`).
    Etcd3 { endpoints: Vec<String> },
    /// A store, or a way of reaching one, pg-migrate cannot use yet (what).
    Unsupported(String),
}

/// What pg-migrate reads from one member's Patroni configuration.
#[derive(Debug, Clone)]
pub struct PatroniConfig {
    pub path: PathBuf,
    pub scope: String,
    pub name: String,
    /// The store's key prefix (Patroni's `namespace`, `/service` by default).
    pub namespace: String,
    /// The REST API's base address (`http://host:port`).
    pub rest_url: String,
    pub store: Store,
    pub data_dir: PathBuf,
    /// Where Patroni runs PostgreSQL's programs from (None: from PATH).
    pub bin_dir: Option<PathBuf>,
    /// `postgresql.parameters` of this file.
    pub parameters: BTreeMap<String, String>,
    /// `bootstrap.dcs.postgresql.parameters` of this file.
    pub bootstrap_parameters: BTreeMap<String, String>,
    raw: Value,
}

/// The stores Patroni knows; pg-migrate reads (and will write) only etcd3.
const STORES: [&str; 7] = [
    "etcd3",
    "etcd",
    "consul",
    "zookeeper",
    "exhibitor",
    "kubernetes",
    "raft",
];

impl PatroniConfig {
    /// Reads and understands `path`; Err names what makes it not a Patroni
    /// configuration pg-migrate can use.
    pub fn read(path: &Path) -> Result<PatroniConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<PatroniConfig, String> {
        let raw: Value = serde_yaml_ng::from_str(text)
            .map_err(|e| format!("{} is not YAML: {e}", path.display()))?;
        if !raw.is_mapping() {
            return Err(format!("{} is not a mapping of settings", path.display()));
        }
        let missing = |what: &str| {
            format!(
                "{} has no {what}: it is not a Patroni configuration",
                path.display()
            )
        };
        let scope = string_at(&raw, &["scope"]).ok_or_else(|| missing("scope"))?;
        let name = string_at(&raw, &["name"]).ok_or_else(|| missing("name"))?;
        let data_dir = string_at(&raw, &["postgresql", "data_dir"])
            .ok_or_else(|| missing("postgresql.data_dir"))?;
        let rest = string_at(&raw, &["restapi", "connect_address"])
            .or_else(|| string_at(&raw, &["restapi", "listen"]))
            .ok_or_else(|| missing("restapi.connect_address or restapi.listen"))?;
        let rest_https = raw.get("restapi").and_then(|r| r.get("certfile")).is_some();
        let rest_url = format!(
            "{}://{}",
            if rest_https { "https" } else { "http" },
            local_if_wildcard(&rest)
        );
        let store_name = STORES
            .iter()
            .find(|s| raw.get(**s).is_some())
            .ok_or_else(|| missing(&format!("store section (one of {})", STORES.join(", "))))?;
        let store = if *store_name == "etcd3" {
            etcd3_store(&raw)
        } else {
            Store::Unsupported(format!("{store_name} (the {store_name} section)"))
        };
        let namespace = string_at(&raw, &["namespace"]).unwrap_or_else(|| "/service".into());
        Ok(PatroniConfig {
            path: path.to_path_buf(),
            scope,
            name,
            namespace: collapse_slashes(&format!("/{namespace}"))
                .trim_end_matches('/')
                .to_string(),
            rest_url,
            store,
            data_dir: PathBuf::from(data_dir),
            bin_dir: string_at(&raw, &["postgresql", "bin_dir"])
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            parameters: parameters_at(&raw, &["postgresql", "parameters"]),
            bootstrap_parameters: parameters_at(
                &raw,
                &["bootstrap", "dcs", "postgresql", "parameters"],
            ),
            raw,
        })
    }

    /// The store's key of this cluster: `<namespace>/<scope>/<key>` (with
    /// repeated slashes collapsed, as Patroni does).
    pub fn key(&self, key: &str) -> String {
        collapse_slashes(&format!("{}/{}/{key}", self.namespace, self.scope))
    }

    /// The renamed and removed settings this file sets, for `new_major`.
    pub fn changes(&self, new_major: u32) -> Vec<SettingChange> {
        let mut changes: Vec<SettingChange> = self
            .parameters
            .keys()
            .chain(self.bootstrap_parameters.keys())
            .filter_map(|n| known_change(n, new_major))
            .collect();
        changes.dedup();
        changes
    }

    /// This file for the new major: `bin_dir` and `data_dir` replaced, each
    /// renamed setting under its new name, each removed one dropped. The
    /// rest is kept; comments are not (the old file is kept beside it).
    pub fn rewritten(
        &self,
        new_bindir: &Path,
        new_datadir: &Path,
        changes: &[SettingChange],
        overrides: &[(&str, &str)],
    ) -> Result<String, String> {
        let mut raw = self.raw.clone();
        let postgresql = raw
            .get_mut("postgresql")
            .and_then(Value::as_mapping_mut)
            .ok_or("no postgresql section")?;
        postgresql.insert("bin_dir".into(), new_bindir.display().to_string().into());
        postgresql.insert("data_dir".into(), new_datadir.display().to_string().into());
        for path in [
            &["postgresql", "parameters"][..],
            &["bootstrap", "dcs", "postgresql", "parameters"][..],
        ] {
            if let Some(map) = mapping_at_mut(&mut raw, path) {
                apply_changes(map, changes);
                // Settings the upgrade decides (archive_mode with
                // --wal-archive off), where the file sets them.
                for (name, value) in overrides {
                    if map.contains_key(*name) {
                        map.insert((*name).into(), (*value).into());
                    }
                }
            }
        }
        let text = serde_yaml_ng::to_string(&raw).map_err(|e| e.to_string())?;
        Ok(format!(
            "# Rewritten by pg-migrate for PostgreSQL {}: bin_dir, data_dir and renamed\n# settings; the file as it was is kept beside this one (.pg-migrate-<old major>).\n{text}",
            new_bindir.display()
        ))
    }
}

fn mapping_at_mut<'a>(raw: &'a mut Value, path: &[&str]) -> Option<&'a mut Mapping> {
    let mut at = raw;
    for key in path {
        at = at.get_mut(*key)?;
    }
    at.as_mapping_mut()
}

/// Applies `changes` to a parameters mapping of a configuration file.
fn apply_changes(map: &mut Mapping, changes: &[SettingChange]) {
    for change in changes {
        let Some(value) = map.remove(change.name()) else {
            continue;
        };
        if let SettingChange::Renamed { new, convert, .. } = change {
            let value = match convert {
                Convert::Same => value,
                Convert::SegmentsToMegabytes => scalar(&value)
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(|n| Value::from(format!("{}MB", n * 16)))
                    .unwrap_or(value),
            };
            map.insert(new.as_str().into(), value);
        }
    }
}

/// The renamed and removed settings of a dynamic configuration (JSON).
pub fn dynamic_changes(config: &serde_json::Value, new_major: u32) -> Vec<SettingChange> {
    config["postgresql"]["parameters"]
        .as_object()
        .map(|params| {
            params
                .keys()
                .filter_map(|n| known_change(n, new_major))
                .collect()
        })
        .unwrap_or_default()
}

/// The same changes to a dynamic configuration (JSON): its
/// `postgresql.parameters`.
pub fn apply_changes_json(config: &mut serde_json::Value, changes: &[SettingChange]) {
    let Some(params) = config
        .get_mut("postgresql")
        .and_then(|p| p.get_mut("parameters"))
        .and_then(|p| p.as_object_mut())
    else {
        return;
    };
    for change in changes {
        let Some(value) = params.remove(change.name()) else {
            continue;
        };
        if let SettingChange::Renamed { new, convert, .. } = change {
            let value = match convert {
                Convert::Same => value,
                Convert::SegmentsToMegabytes => json_scalar(&value)
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(|n| serde_json::Value::from(format!("{}MB", n * 16)))
                    .unwrap_or(value),
            };
            params.insert(new.clone(), value);
        }
    }
}

/// What the new major makes of one setting Patroni sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingChange {
    /// Renamed: the value carried under the new name (converted if needed).
    Renamed {
        old: String,
        new: String,
        convert: Convert,
    },
    /// Gone with nothing in its place: dropped.
    Removed { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convert {
    Same,
    /// `wal_keep_segments` (a count of 16 MB segments) into `wal_keep_size`.
    SegmentsToMegabytes,
}

impl SettingChange {
    /// The old name.
    pub fn name(&self) -> &str {
        match self {
            SettingChange::Renamed { old, .. } => old,
            SettingChange::Removed { name } => name,
        }
    }
}

/// The settings renamed or removed between majors that Patroni
/// configurations are known to carry (release notes of 13 to 18).
pub fn known_change(name: &str, new_major: u32) -> Option<SettingChange> {
    let renamed = |new: &str, convert| SettingChange::Renamed {
        old: name.to_string(),
        new: new.to_string(),
        convert,
    };
    let removed = || SettingChange::Removed {
        name: name.to_string(),
    };
    Some(match name.to_ascii_lowercase().as_str() {
        "wal_keep_segments" if new_major >= 13 => {
            renamed("wal_keep_size", Convert::SegmentsToMegabytes)
        }
        "operator_precedence_warning" if new_major >= 14 => removed(),
        "vacuum_cleanup_index_scale_factor" if new_major >= 14 => removed(),
        "stats_temp_directory" if new_major >= 15 => removed(),
        "force_parallel_mode" if new_major >= 16 => renamed("debug_parallel_query", Convert::Same),
        "promote_trigger_file" if new_major >= 16 => removed(),
        "vacuum_defer_cleanup_age" if new_major >= 16 => removed(),
        "old_snapshot_threshold" if new_major >= 17 => removed(),
        "db_user_namespace" if new_major >= 17 => removed(),
        "trace_recovery_messages" if new_major >= 17 => removed(),
        _ => return None,
    })
}

pub fn json_scalar(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(if *b { "on" } else { "off" }.into()),
        _ => None,
    }
}

fn collapse_slashes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// A listen address on every interface (`0.0.0.0:8008`, `[::]:8008`,
/// `:8008`) is reached on this host at 127.0.0.1.
fn local_if_wildcard(address: &str) -> String {
    for wildcard in ["0.0.0.0:", "[::]:", "::", ":"] {
        if let Some(port) = address.strip_prefix(wildcard) {
            if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) {
                return format!("127.0.0.1:{port}");
            }
        }
    }
    address.to_string()
}

/// The etcd3 section as pg-migrate can use it: the client endpoints of
/// `hosts` (a comma-separated string or a list), `host`, `url` or `proxy`,
/// each with etcd's port 2379 (or `port`) when it names none.
fn etcd3_store(raw: &Value) -> Store {
    let section = &raw["etcd3"];
    if section.get("srv").is_some() || section.get("srv_suffix").is_some() {
        return Store::Unsupported("etcd3 found through DNS SRV records (srv)".into());
    }
    let https = string_at(raw, &["etcd3", "protocol"]).as_deref() == Some("https")
        || section.get("cacert").is_some()
        || section.get("cert").is_some();
    if https {
        return Store::Unsupported("etcd3 over https".into());
    }
    if section.get("username").is_some() || section.get("password").is_some() {
        return Store::Unsupported("etcd3 with authentication (username/password)".into());
    }
    let port = string_at(raw, &["etcd3", "port"]).unwrap_or_else(|| "2379".into());
    let mut names: Vec<String> = match section.get("hosts") {
        Some(Value::String(s)) => s.split(',').map(str::to_string).collect(),
        Some(Value::Sequence(items)) => items.iter().filter_map(scalar).collect(),
        _ => Vec::new(),
    };
    for key in ["host", "url", "proxy"] {
        if let Some(value) = string_at(raw, &["etcd3", key]) {
            names.push(value);
        }
    }
    let endpoints: Vec<String> = names
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .map(|h| {
            let h = h.trim_start_matches("http://").trim_end_matches('/');
            if h.rsplit_once(':')
                .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            {
                h.to_string()
            } else {
                format!("{h}:{port}")
            }
        })
        .collect();
    if endpoints.is_empty() {
        return Store::Unsupported("etcd3 with no host, hosts, url or proxy".into());
    }
    if names.iter().any(|h| h.trim().starts_with("https://")) {
        return Store::Unsupported("etcd3 over https".into());
    }
    Store::Etcd3 { endpoints }
}

fn string_at(raw: &Value, path: &[&str]) -> Option<String> {
    let mut at = raw;
    for key in path {
        at = at.get(*key)?;
    }
    scalar(at)
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "on" } else { "off" }.into()),
        _ => None,
    }
}

fn parameters_at(raw: &Value, path: &[&str]) -> BTreeMap<String, String> {
    let mut at = raw;
    for key in path {
        match at.get(*key) {
            Some(next) => at = next,
            None => return BTreeMap::new(),
        }
    }
    at.as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar(v).unwrap_or_default())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "scope: demo
name: m1
restapi:
  listen: 0.0.0.0:8008
etcd3:
  hosts: 127.0.0.1:2379,127.0.0.2:2379
postgresql:
  data_dir: /var/lib/pg/data
  bin_dir: /usr/lib/postgresql/12/bin
  parameters:
    wal_keep_segments: 8
    stats_temp_directory: /run/pg
    work_mem: 4MB
";

    #[test]
    fn reads_what_pg_migrate_needs() {
        let c = PatroniConfig::parse(Path::new("p.yml"), SAMPLE).unwrap();
        assert_eq!(c.scope, "demo");
        assert_eq!(c.rest_url, "http://127.0.0.1:8008");
        assert_eq!(
            c.store,
            Store::Etcd3 {
                endpoints: vec!["127.0.0.1:2379".into(), "127.0.0.2:2379".into()],
            }
        );
        assert_eq!(c.key("initialize"), "/service/demo/initialize");
        assert_eq!(c.parameters["wal_keep_segments"], "8");
    }

    #[test]
    fn etcd3_forms_and_namespaces() {
        let parse = |extra: &str| {
            PatroniConfig::parse(
                Path::new("p.yml"),
                &format!("scope: s\nname: n\nrestapi:\n  listen: '[::]:8008'\npostgresql:\n  data_dir: /d\n{extra}"),
            )
            .unwrap()
        };
        let c = parse("etcd3:\n  hosts: [e1, 'e2:2380', '']\n  port: 2400\nnamespace: /\n");
        assert_eq!(
            c.store,
            Store::Etcd3 {
                endpoints: vec!["e1:2400".into(), "e2:2380".into()]
            }
        );
        assert_eq!(c.key("initialize"), "/s/initialize");
        assert_eq!(c.rest_url, "http://127.0.0.1:8008");
        let c = parse("etcd3:\n  url: http://e1:2379/\nnamespace: /x/\n");
        assert_eq!(
            c.store,
            Store::Etcd3 {
                endpoints: vec!["e1:2379".into()]
            }
        );
        assert_eq!(c.key("config"), "/x/s/config");
        assert!(matches!(
            parse("etcd3:\n  srv: example.com\n").store,
            Store::Unsupported(_)
        ));
        assert!(matches!(
            parse("etcd3:\n  hosts: e1\n  protocol: https\n").store,
            Store::Unsupported(_)
        ));
        assert!(matches!(
            parse("etcd3:\n  hosts: e1\n  username: u\n").store,
            Store::Unsupported(_)
        ));
        assert!(matches!(
            parse("consul:\n  host: c\n").store,
            Store::Unsupported(_)
        ));
    }

    #[test]
    fn rewrites_dirs_and_settings() {
        let c = PatroniConfig::parse(Path::new("p.yml"), SAMPLE).unwrap();
        let text = c
            .rewritten(
                Path::new("/usr/lib/postgresql/17/bin"),
                Path::new("/d17"),
                &c.changes(17),
                &[("work_mem", "8MB"), ("not_in_the_file", "x")],
            )
            .unwrap();
        let again = PatroniConfig::parse(Path::new("p.yml"), &text).unwrap();
        assert_eq!(again.data_dir, Path::new("/d17"));
        assert_eq!(
            again.bin_dir.as_deref(),
            Some(Path::new("/usr/lib/postgresql/17/bin"))
        );
        assert_eq!(
            again.parameters.get("wal_keep_size").map(String::as_str),
            Some("128MB")
        );
        assert!(!again.parameters.contains_key("wal_keep_segments"));
        assert!(!again.parameters.contains_key("stats_temp_directory"));
        assert_eq!(again.parameters["work_mem"], "8MB");
        assert!(!again.parameters.contains_key("not_in_the_file"));
        assert_eq!((again.scope.as_str(), again.name.as_str()), ("demo", "m1"));
        let mut dynamic = serde_json::json!({"ttl": 30, "postgresql": {"parameters": {"wal_keep_segments": 4, "work_mem": "1MB"}}});
        let changes = dynamic_changes(&dynamic, 17);
        apply_changes_json(&mut dynamic, &changes);
        assert_eq!(
            dynamic["postgresql"]["parameters"],
            serde_json::json!({"wal_keep_size": "64MB", "work_mem": "1MB"})
        );
        assert_eq!(dynamic["ttl"], 30);
    }

    #[test]
    fn not_patroni() {
        let e = PatroniConfig::parse(Path::new("x.yml"), "listen_addresses: '*'\n").unwrap_err();
        assert!(e.contains("no scope"), "{e}");
        let e = PatroniConfig::parse(Path::new("x.conf"), "shared_buffers = 1GB\n").unwrap_err();
        assert!(e.contains("not a mapping"), "{e}");
    }

    #[test]
    fn renamed_and_removed_settings_by_major() {
        assert!(matches!(
            known_change("wal_keep_segments", 13),
            Some(SettingChange::Renamed { ref new, convert: Convert::SegmentsToMegabytes, .. }) if new == "wal_keep_size"
        ));
        assert_eq!(known_change("wal_keep_segments", 12), None);
        assert!(matches!(
            known_change("stats_temp_directory", 17),
            Some(SettingChange::Removed { .. })
        ));
        assert_eq!(known_change("work_mem", 17), None);
    }
}
