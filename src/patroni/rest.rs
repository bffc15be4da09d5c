//! Patroni's REST API, as pg-migrate reads and steers it: the cluster's
//! members (`/cluster`), one member's own view (`/patroni`), the dynamic
//! configuration (`/config`) and the pause. Plain HTTP; no state here.

use std::time::Duration;

use serde_json::Value;

/// One member as `/cluster` lists it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MemberView {
    pub name: String,
    pub role: String,
    pub state: String,
    pub host: String,
    /// The member's own REST address (`…/patroni`).
    pub api_url: String,
    pub timeline: Option<u64>,
    /// Replication lag in bytes (replicas): the largest of what Patroni
    /// reports as received and replayed.
    pub lag: Option<u64>,
}

/// The cluster as the REST API describes it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClusterView {
    pub scope: String,
    pub members: Vec<MemberView>,
    pub paused: bool,
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .build()
}

/// GET a JSON document. Patroni answers some questions with 503 and a JSON
/// body (a member that is not running): that body is the answer.
pub fn get(url: &str) -> Result<Value, String> {
    let response = match agent().get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(format!("{url}: {e}")),
    };
    response
        .into_json()
        .map_err(|e| format!("{url}: the answer is not JSON: {e}"))
}

pub fn cluster(rest_url: &str) -> Result<ClusterView, String> {
    let url = format!("{rest_url}/cluster");
    let doc = get(&url)?;
    let members = doc["members"]
        .as_array()
        .ok_or_else(|| format!("{url}: no members in the answer"))?
        .iter()
        .map(|m| MemberView {
            name: m["name"].as_str().unwrap_or_default().to_string(),
            role: m["role"].as_str().unwrap_or_default().to_string(),
            state: m["state"].as_str().unwrap_or_default().to_string(),
            host: m["host"].as_str().unwrap_or_default().to_string(),
            api_url: m["api_url"].as_str().unwrap_or_default().to_string(),
            timeline: m["timeline"].as_u64(),
            // What a replica has yet to replay is what the upgrade waits
            // for: the largest of Patroni's measures; unknown when any of
            // those it reports is not a number ("unknown").
            lag: lag_of(m),
        })
        .collect();
    Ok(ClusterView {
        scope: doc["scope"].as_str().unwrap_or_default().to_string(),
        members,
        paused: doc["pause"].as_bool().unwrap_or(false),
    })
}

fn lag_of(member: &Value) -> Option<u64> {
    let reported: Vec<&Value> = ["lag", "receive_lag", "replay_lag"]
        .iter()
        .map(|k| &member[*k])
        .filter(|v| !v.is_null())
        .collect();
    if reported.is_empty() || reported.iter().any(|v| v.as_u64().is_none()) {
        return None;
    }
    reported.iter().filter_map(|v| v.as_u64()).max()
}

/// The dynamic configuration (the store's `config` key).
pub fn dynamic_config(rest_url: &str) -> Result<Value, String> {
    get(&format!("{rest_url}/config"))
}

/// Pauses or resumes the cluster (Patroni's maintenance mode).
pub fn set_pause(rest_url: &str, pause: bool) -> Result<(), String> {
    let url = format!("{rest_url}/config");
    let body = serde_json::json!({ "pause": pause }).to_string();
    match agent()
        .request("PATCH", &url)
        .set("Content-Type", "application/json")
        .send_string(&body)
    {
        Ok(_) => Ok(()),
        Err(ureq::Error::Status(code, r)) => Err(format!(
            "{url}: {code} {}",
            r.into_string().unwrap_or_default()
        )),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

/// One member's own view (`/patroni` at its api_url), if it answers.
pub fn member_status(api_url: &str) -> Option<Value> {
    get(api_url).ok()
}
