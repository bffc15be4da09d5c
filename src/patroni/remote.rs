//! Running pg-migrate's member work on another member's host: the remote
//! command template (ssh with BatchMode by default) with the member's host and
//! name filled in, and pg-migrate's own command line appended as one shell
//! command line (what ssh runs; a local template uses `sh -c`).

use std::io::Write;
use std::process::{Command, Stdio};

use super::rest::MemberView;

#[derive(Debug, Clone)]
pub struct Remote {
    /// The template's words, before `{host}` and `{name}` are filled in.
    template: Vec<String>,
    /// pg-migrate's path on the members.
    pub pg_migrate: String,
    /// The member's Patroni configuration's path on its host (template).
    member_config: String,
}

impl Remote {
    pub fn new(template: &str, pg_migrate: &str, member_config: &str) -> Result<Remote, String> {
        let words = shlex::split(template)
            .filter(|w| !w.is_empty())
            .ok_or_else(|| {
                format!("--remote {template:?} is not a command (quotes unbalanced?)")
            })?;
        Ok(Remote {
            template: words,
            pg_migrate: pg_migrate.to_string(),
            member_config: member_config.to_string(),
        })
    }

    pub fn member_config(&self, member: &MemberView) -> String {
        fill(&self.member_config, member)
    }

    /// The command that runs `shell_line` on `member`'s host.
    fn command(&self, member: &MemberView, shell_line: &str) -> Command {
        let words: Vec<String> = self.template.iter().map(|w| fill(w, member)).collect();
        let mut command = Command::new(&words[0]);
        command.args(&words[1..]).arg(shell_line);
        command
    }

    /// Runs pg-migrate with `args` on `member`'s host, `input` on its stdin;
    /// its stdout, or why it failed.
    pub fn pg_migrate(
        &self,
        member: &MemberView,
        args: &[String],
        input: Option<&[u8]>,
    ) -> Result<String, String> {
        let mut words = Vec::new();
        for word in std::iter::once(&self.pg_migrate).chain(args) {
            words.push(
                shlex::try_quote(word)
                    .map_err(|e| format!("{word:?} cannot be passed to a shell: {e}"))?
                    .into_owned(),
            );
        }
        let line = words.join(" ");
        let mut command = self.command(member, &line);
        command
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = format!("{:?} {}", self.template.join(" "), line);
        let mut child = command.spawn().map_err(|e| format!("{shown}: {e}"))?;
        if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(bytes)
                .map_err(|e| format!("{shown}: writing its input: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{shown}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "on {} ({}): {shown} failed ({}): {}",
                member.name,
                member.host,
                out.status,
                stderr.trim().lines().last().unwrap_or("no message")
            ))
        }
    }
}

/// The template word with the member's host and name in it; each word is
/// one argument of the local command, never parsed by a shell here.
impl Remote {
    /// Runs one shell command line on `member`'s host (an operator's
    /// template, already filled in).
    pub fn run_shell(&self, member: &MemberView, line: &str) -> Result<(), String> {
        checked(self.command(member, line), line, Some(&member.name))
    }
}

/// Runs one shell command line on this host (the leader's).
pub fn run_local_shell(line: &str) -> Result<(), String> {
    let mut command = Command::new("sh");
    command.arg("-c").arg(line);
    checked(command, line, None)
}

fn checked(mut command: Command, line: &str, on: Option<&str>) -> Result<(), String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{line}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}{line} failed ({}): {}",
        on.map(|n| format!("on {n}: ")).unwrap_or_default(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// The JSON events of a pg-migrate run's output (`--json`), in order.
fn events(stdout: &[u8]) -> impl Iterator<Item = serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect::<Vec<_>>()
        .into_iter()
}

/// The `notice` events of a pg-migrate run's JSON output, in order (those
/// of a code this pg-migrate does not know are left out).
pub fn notice_events(stdout: &[u8]) -> Vec<(crate::output::NoticeCode, String)> {
    events(stdout)
        .filter(|e| e["event"] == "notice")
        .filter_map(|e| {
            let code = crate::output::NoticeCode::parse(e["code"].as_str()?)?;
            Some((code, e["message"].as_str().unwrap_or("").to_string()))
        })
        .collect()
}

/// The `error` event of a pg-migrate run's JSON output, as "(code): message".
pub fn error_event(stdout: &[u8]) -> Option<String> {
    events(stdout).find(|e| e["event"] == "error").map(|e| {
        format!(
            "({}): {}",
            e["code"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or("")
        )
    })
}

fn fill(template: &str, member: &MemberView) -> String {
    template
        .replace("{host}", &member.host)
        .replace("{name}", &member.name)
}
