//! Test support for HA: a real etcd and a real Patroni cluster of several
//! members on this machine, on loopback ports picked here and unix sockets
//! in the sandbox, run as the test user. Every process is stopped when its
//! owner drops (a failing test unwinds through the drop too). Tests only.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::{as_test_user, bindir, chown_to_test_user, run_ok, test_user, Sandbox};

/// Where scripts/install-ha.sh put Patroni's virtual environment.
pub fn ha_prefix() -> PathBuf {
    match std::env::var_os("PG_MIGRATE_HA_PREFIX") {
        Some(prefix) => PathBuf::from(prefix),
        None => crate::pg_prefix().join("../ha"),
    }
}

/// The `patroni` and `etcd` programs, or (like [`crate::require`]) a
/// failure, or with `PG_MIGRATE_SKIP_MISSING=1` a counted skip.
pub fn require_ha() -> Option<(PathBuf, PathBuf)> {
    let patroni = ha_prefix().join("patroni/bin/patroni");
    let etcd = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    match (patroni.exists(), etcd) {
        (true, Some(etcd)) => Some((patroni, etcd)),
        _ => crate::skip_or_fail(
            &format!(
                "Patroni ({}) or etcd is not installed: run scripts/install-ha.sh",
                patroni.display()
            ),
            "Patroni or etcd missing",
        ),
    }
}

/// `count` TCP ports on 127.0.0.1 that nothing holds now, from just below
/// the kernel's ephemeral range. A port the kernel picks (bind to port 0)
/// is closed again before the server binds it, and in between another
/// test's pick or an outgoing connection's local port can take it (most
/// likely how a CI run lost a Patroni member); ports below the range are
/// never handed out by the kernel, and a process-wide cursor gives each
/// out once.
pub fn free_ports(count: usize) -> Vec<u16> {
    (0..count).map(|_| next_free_port()).collect()
}

fn next_free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CURSOR: AtomicU32 = AtomicU32::new(0);
    let (low, span) = ports_below_ephemeral_range();
    if span == 0 {
        return kernel_pick();
    }
    // Start each test process at its own place in the span so that two
    // processes on one machine seldom try the same ports.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let offset = (start + CURSOR.fetch_add(1, Ordering::SeqCst)) % span;
        let port = (low + offset) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    kernel_pick()
}

/// The ports from 10,000 below the ephemeral range's start up to it (never
/// under 1024); a span of 0 when that leaves too few.
fn ports_below_ephemeral_range() -> (u32, u32) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let low = ephemeral_low.saturating_sub(10_000).max(1024);
    let span = ephemeral_low.saturating_sub(low);
    if span < 1000 {
        (0, 0)
    } else {
        (low, span)
    }
}

fn kernel_pick() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// One etcd member on 127.0.0.1, its data in the sandbox.
pub struct Etcd {
    child: Child,
    pub client_port: u16,
}

impl Etcd {
    pub fn start(sandbox: &Sandbox, etcd: &Path) -> Etcd {
        let dir = sandbox.mkdir("etcd");
        let ports = free_ports(2);
        let (client_port, peer_port) = (ports[0], ports[1]);
        let log = std::fs::File::create(sandbox.path().join("etcd.log")).unwrap();
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = as_test_user(etcd)
            .args(["--name", "e1", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("e1={peer}")])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        let etcd = Etcd { child, client_port };
        wait_for(Duration::from_secs(30), "etcd to answer", || {
            http_get(&format!("{client}/version")).is_some()
        });
        etcd
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The value of `key` (v3 API, through its JSON gateway), if set.
    pub fn get(&self, key: &str) -> Option<String> {
        let body = serde_json::json!({ "key": b64(key.as_bytes()) });
        let answer = http_post(
            &format!("http://{}/v3/kv/range", self.endpoint()),
            &body.to_string(),
        )?;
        let kv = answer["kvs"].as_array()?.first()?.clone();
        let bytes = unb64(kv["value"].as_str().unwrap_or(""));
        Some(String::from_utf8(bytes).unwrap())
    }

    /// Deletes `key` (as Patroni's documentation has an operator do with
    /// `initialize` after pg_upgrade).
    pub fn delete(&self, key: &str) {
        let body = serde_json::json!({ "key": b64(key.as_bytes()) });
        http_post(
            &format!("http://{}/v3/kv/deleterange", self.endpoint()),
            &body.to_string(),
        )
        .expect("etcd deleterange");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Patroni member: its configuration, its Patroni process (started by
/// a script that pg-migrate's templates can run too) and its PostgreSQL.
pub struct Member {
    pub name: String,
    pub config: PathBuf,
    pub datadir: PathBuf,
    pub sockdir: PathBuf,
    pub pg_port: u16,
    pub rest_port: u16,
    /// `sh` scripts that start (in the background) and stop this member's
    /// Patroni, as a service manager would.
    pub start_script: PathBuf,
    pub stop_script: PathBuf,
    pub pidfile: PathBuf,
    pub log: PathBuf,
}

impl Member {
    pub fn rest_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.rest_port)
    }

    /// Starts this member's Patroni (returns at once).
    pub fn start_patroni(&self) {
        run_ok(as_test_user("sh").arg(&self.start_script));
    }

    /// Stops this member's Patroni as its service manager would (SIGTERM,
    /// waiting for it to exit).
    pub fn stop_patroni(&self) {
        run_ok(as_test_user("sh").arg(&self.stop_script));
    }

    /// A client of this member's PostgreSQL over its unix socket.
    pub fn client(&self, database: &str) -> postgres::Client {
        self.try_client(database)
            .unwrap_or_else(|e| panic!("connect to {} ({database}): {e}", self.name))
    }

    pub fn try_client(&self, database: &str) -> Result<postgres::Client, postgres::Error> {
        postgres::Config::new()
            .host_path(&self.sockdir)
            .port(self.pg_port)
            .user(&test_user().name)
            .dbname(database)
            .connect_timeout(Duration::from_secs(5))
            .connect(postgres::NoTls)
    }

    pub fn sql(&self, database: &str, sql: &str) {
        self.client(database)
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{} on {}: {e}", sql, self.name));
    }

    /// This member as Patroni's REST API describes it (`/patroni`).
    pub fn status(&self) -> Option<Value> {
        http_get(&self.rest_url("/patroni"))
    }
}

/// A Patroni cluster: etcd plus members `m1` (bootstrapped first, the
/// leader) and replicas streaming from it.
pub struct PatroniCluster {
    pub scope: String,
    pub major: u32,
    pub bindir: PathBuf,
    pub patroni: PathBuf,
    pub etcd: Etcd,
    pub members: Vec<Member>,
    dir: PathBuf,
}

impl PatroniCluster {
    /// Starts etcd and `count` members of PostgreSQL `major` and waits until
    /// m1 leads and every other member streams from it. None: skipped.
    pub fn start(sandbox: &Sandbox, major: u32, count: usize) -> Option<PatroniCluster> {
        Self::start_with(sandbox, major, count, |_, _| {})
    }

    /// As [`start`](Self::start), with `load` run on the leader before any
    /// replica is made (so replicas are cloned with what it made). `load`
    /// gets the leader's tablespace directory: each replica's basebackup
    /// maps it to a directory of its own, as on another host.
    pub fn start_with(
        sandbox: &Sandbox,
        major: u32,
        count: usize,
        load: impl FnOnce(&Member, &Path),
    ) -> Option<PatroniCluster> {
        let (patroni, etcd_program) = require_ha()?;
        let bindir = crate::require(major)?;
        let etcd = Etcd::start(sandbox, &etcd_program);
        let dir = sandbox.mkdir("patroni");
        let scope = "pgm".to_string();
        let mut cluster = PatroniCluster {
            scope,
            major,
            bindir,
            patroni,
            etcd,
            members: Vec::new(),
            dir,
        };
        for i in 1..=count {
            let member = cluster.write_member(&format!("m{i}"));
            cluster.members.push(member);
        }
        cluster.members[0].start_patroni();
        cluster.wait_until(Duration::from_secs(90), "m1 to lead", |c| {
            c.leader().as_deref() == Some("m1")
        });
        let leader = &cluster.members[0];
        cluster.wait_until(Duration::from_secs(30), "m1 to accept writes", |_| {
            leader
                .try_client("postgres")
                .and_then(|mut c| c.query_one("SELECT NOT pg_is_in_recovery()", &[]))
                .is_ok_and(|row| row.get::<_, bool>(0))
        });
        load(leader, &cluster.tablespace_of("m1"));
        for member in &cluster.members[1..] {
            member.start_patroni();
        }
        cluster.wait_healthy(Duration::from_secs(120));
        Some(cluster)
    }

    /// A member's tablespace directory (made, empty, owned by the test user).
    pub fn tablespace_of(&self, name: &str) -> PathBuf {
        let dir = self.dir.join(format!("tblspc_{name}"));
        if !dir.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            chown_to_test_user(&dir);
        }
        dir
    }

    fn write_member(&self, name: &str) -> Member {
        let home = self.dir.join(name);
        std::fs::create_dir_all(&home).unwrap();
        chown_to_test_user(&home);
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let ports = free_ports(2);
        let (pg_port, rest_port) = (ports[0], ports[1]);
        let datadir = home.join("data");
        let config = self.dir.join(format!("{name}.yml"));
        let user = &test_user().name;
        let text = format!(
            "scope: {scope}
name: {name}
restapi:
  listen: 127.0.0.1:{rest_port}
  connect_address: 127.0.0.1:{rest_port}
etcd3:
  hosts: {etcd}
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 2
    retry_timeout: 5
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: false
      use_slots: true
      parameters:
        wal_keep_size: 256MB
        max_wal_senders: 10
        hot_standby_feedback: 'on'
        max_standby_streaming_delay: 120s
  initdb:
  - encoding: UTF8
  - locale: C.UTF-8
  - data-checksums
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {datadir}
  bin_dir: {bindir}
  pgpass: {home}/pgpass
  use_unix_socket: true
  authentication:
    replication:
      username: replicator
      password: rep-pass
    superuser:
      username: {user}
      password: su-pass
  parameters:
    unix_socket_directories: {home}
    shared_buffers: 16MB
    fsync: 'off'
  basebackup:
  - checkpoint: fast
  - tablespace-mapping: {leader_tblspc}={own_tblspc}
  pg_hba:
  - local all all trust
  - host replication replicator 127.0.0.1/32 md5
  - host all all 127.0.0.1/32 md5
tags:
  nofailover: false
  member_tag: {name}
",
            scope = self.scope,
            etcd = self.etcd.endpoint(),
            datadir = datadir.display(),
            bindir = self.bindir.display(),
            home = home.display(),
            leader_tblspc = self.tablespace_of("m1").display(),
            own_tblspc = self.tablespace_of(name).display(),
        );
        std::fs::write(&config, text).unwrap();
        chown_to_test_user(&config);
        let pidfile = self.dir.join(format!("{name}.pid"));
        let log = self.dir.join(format!("{name}.log"));
        let start_script = self.dir.join(format!("{name}.start"));
        let stop_script = self.dir.join(format!("{name}.stop"));
        std::fs::write(
            &start_script,
            format!(
                "# Starts {name}'s Patroni in the background (a service manager's start).\n\
                 cd {home}\n\
                 setsid {patroni} {config} >> {log} 2>&1 < /dev/null &\n\
                 echo $! > {pidfile}\n",
                home = home.display(),
                patroni = self.patroni.display(),
                config = config.display(),
                log = log.display(),
                pidfile = pidfile.display(),
            ),
        )
        .unwrap();
        std::fs::write(
            &stop_script,
            format!(
                "# Stops {name}'s Patroni (a service manager's stop): SIGTERM, then wait.\n\
                 pid=$(cat {pidfile} 2>/dev/null) || exit 0\n\
                 kill -TERM \"$pid\" 2>/dev/null || exit 0\n\
                 i=0\n\
                 while kill -0 \"$pid\" 2>/dev/null; do\n\
                 \x20 i=$((i + 1)); [ $i -lt 600 ] || {{ kill -KILL \"$pid\"; exit 1; }}\n\
                 \x20 sleep 0.1\n\
                 done\n\
                 rm -f {pidfile}\n",
                pidfile = pidfile.display(),
            ),
        )
        .unwrap();
        for path in [&start_script, &stop_script] {
            chown_to_test_user(path);
        }
        Member {
            name: name.to_string(),
            config,
            datadir,
            sockdir: home,
            pg_port,
            rest_port,
            start_script,
            stop_script,
            pidfile,
            log,
        }
    }

    pub fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// `/cluster` of the first member that answers.
    pub fn cluster_view(&self) -> Option<Value> {
        self.members
            .iter()
            .find_map(|m| http_get(&m.rest_url("/cluster")))
    }

    /// The leader's name, if the cluster has one.
    pub fn leader(&self) -> Option<String> {
        let view = self.cluster_view()?;
        view["members"]
            .as_array()?
            .iter()
            .find(|m| m["role"] == "leader")
            .and_then(|m| m["name"].as_str().map(str::to_string))
    }

    /// Every member running, the leader m1's PostgreSQL answering and every
    /// replica streaming with no lag.
    pub fn healthy(&self) -> bool {
        let Some(view) = self.cluster_view() else {
            return false;
        };
        let Some(members) = view["members"].as_array() else {
            return false;
        };
        members.len() == self.members.len()
            && members.iter().all(|m| match m["role"].as_str() {
                Some("leader") => m["state"] == "running",
                Some("replica") => m["state"] == "streaming" && m["lag"] == 0,
                _ => false,
            })
    }

    pub fn wait_healthy(&self, timeout: Duration) {
        self.wait_until(timeout, "every member healthy", |c| c.healthy());
    }

    pub fn wait_until(&self, timeout: Duration, what: &str, f: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !f(self) {
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; cluster: {}\n{}",
                    self.cluster_view().unwrap_or(Value::Null),
                    self.logs_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The last lines of every member's Patroni log, for failure messages:
    /// first, and longer, those of members missing from the cluster's view
    /// or whose Patroni is not running (a CI log may keep only the start).
    pub fn logs_tail(&self) -> String {
        let listed: Vec<String> = self
            .cluster_view()
            .and_then(|view| {
                Some(
                    view["members"]
                        .as_array()?
                        .iter()
                        .filter_map(|m| m["name"].as_str().map(str::to_string))
                        .collect(),
                )
            })
            .unwrap_or_default();
        let mut suspects = String::new();
        let mut others = String::new();
        for m in &self.members {
            let running = patroni_pid(&m.pidfile).is_some_and(alive);
            let missing = !listed.contains(&m.name);
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let (out, keep) = if missing || !running {
                (&mut suspects, 40)
            } else {
                (&mut others, 8)
            };
            let from = lines.len().saturating_sub(keep);
            out.push_str(&format!(
                "--- {} (Patroni {}, {} the cluster's view) ---\n{}\n",
                m.name,
                if running { "running" } else { "not running" },
                if missing { "missing from" } else { "in" },
                lines[from..].join("\n")
            ));
        }
        suspects + &others
    }

    /// `patronictl` with the first member's configuration.
    pub fn patronictl(&self, args: &[&str]) -> std::process::Output {
        let program = self.patroni.with_file_name("patronictl");
        as_test_user(program)
            .arg("-c")
            .arg(&self.members[0].config)
            .args(args)
            .output()
            .expect("run patronictl")
    }

    /// A switchover from `from` to `to` with patronictl; returns once `to`
    /// leads and every member is healthy again.
    pub fn switchover(&self, from: &str, to: &str) {
        let switched = self.patronictl(&[
            "switchover",
            "--leader",
            from,
            "--candidate",
            to,
            "--force",
            &self.scope,
        ]);
        assert!(
            switched.status.success(),
            "switchover {from} → {to}: {}",
            String::from_utf8_lossy(&switched.stderr)
        );
        self.wait_until(Duration::from_secs(90), "the switchover", |c| {
            c.leader().as_deref() == Some(to)
        });
        self.wait_healthy(Duration::from_secs(120));
    }

    /// Pauses (or resumes) the cluster through Patroni's REST API.
    pub fn set_pause(&self, pause: bool) {
        let url = self.members[0].rest_url("/config");
        http_patch(&url, &serde_json::json!({ "pause": pause }).to_string())
            .expect("PATCH /config");
        self.wait_until(Duration::from_secs(30), "the pause to be seen", |c| {
            c.members.iter().all(|m| {
                m.status()
                    .is_some_and(|s| s["pause"].as_bool().unwrap_or(false) == pause)
            })
        });
    }

    /// A bindir of `major` (for the new installation).
    pub fn bindir_of(major: u32) -> PathBuf {
        bindir(major).unwrap_or_else(|| panic!("PostgreSQL {major} not installed"))
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        // Patroni first (paused, it leaves PostgreSQL running), waiting until
        // each is gone so that none starts a postmaster after the scan; then
        // every postmaster under the members' homes, whatever major runs it.
        for member in &self.members {
            if let Some(pid) = patroni_pid(&member.pidfile) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(10);
                while alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        for member in &self.members {
            let home = member.datadir.parent().unwrap();
            for entry in walkdir::WalkDir::new(home)
                .max_depth(2)
                .into_iter()
                .flatten()
            {
                if entry.file_name() == "postmaster.pid" {
                    stop_postmaster(entry.path());
                }
            }
        }
    }
}

/// Whether a process runs (a zombie, dead but not yet reaped by whoever
/// adopted it, does not).
fn alive(pid: nix::unistd::Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// The pid in a member's Patroni pid file, if that process is still a
/// Patroni (a stale file's pid may be anyone's by now).
fn patroni_pid(pidfile: &Path) -> Option<nix::unistd::Pid> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("patroni")
        .then(|| nix::unistd::Pid::from_raw(pid))
}

/// SIGQUIT (immediate shutdown) to the postmaster of a pid file, waiting
/// briefly for it to go.
fn stop_postmaster(pidfile: &Path) {
    let Ok(text) = std::fs::read_to_string(pidfile) else {
        return;
    };
    let Some(Ok(pid)) = text.lines().next().map(|l| l.trim().parse::<i32>()) else {
        return;
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for(timeout: Duration, what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build()
}

/// GET a JSON document; None when it cannot be had (any status but 2xx
/// still yields its body when it is JSON: Patroni answers 503 with one).
pub fn http_get(url: &str) -> Option<Value> {
    match agent().get(url).call() {
        Ok(response) => response.into_json().ok(),
        Err(ureq::Error::Status(_, response)) => response.into_json().ok(),
        Err(_) => None,
    }
}

pub fn http_post(url: &str, body: &str) -> Option<Value> {
    agent()
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(body)
        .ok()?
        .into_json()
        .ok()
}

/// POST whose answer need not be JSON (Patroni's `/restart` answers with
/// text): its status, or None when nothing answered.
pub fn http_post_status(url: &str, body: &str) -> Option<u16> {
    match agent()
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(body)
    {
        Ok(response) => Some(response.status()),
        Err(ureq::Error::Status(status, _)) => Some(status),
        Err(_) => None,
    }
}

pub fn http_patch(url: &str, body: &str) -> Option<Value> {
    agent()
        .request("PATCH", url)
        .set("Content-Type", "application/json")
        .send_string(body)
        .ok()?
        .into_json()
        .ok()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64 from etcd")
}
