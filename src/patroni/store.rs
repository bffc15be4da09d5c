//! The store Patroni keeps its cluster in, where Patroni's REST API does
//! not reach: the `initialize` key (the cluster's system identifier), read
//! and set in one compare-and-set step, the dynamic configuration while
//! every Patroni is stopped, and the `status` key (the members it keeps
//! slots for). etcd v3 through its JSON gateway.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use super::config::Store;

pub struct Etcd3 {
    endpoints: Vec<String>,
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}

fn unb64(text: &str) -> Result<String, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("etcd answered a value that is not base64: {e}"))?;
    String::from_utf8(bytes).map_err(|e| format!("etcd answered a value that is not UTF-8: {e}"))
}

impl Etcd3 {
    pub fn of(store: &Store) -> Result<Etcd3, String> {
        match store {
            Store::Etcd3 { endpoints } => Ok(Etcd3 {
                endpoints: endpoints.clone(),
            }),
            Store::Unsupported(what) => Err(format!(
                "Patroni keeps this cluster in {what}; pg-migrate patroni reaches only etcd v3 over plain HTTP without authentication so far"
            )),
        }
    }

    /// POST to the first endpoint that answers.
    fn call(&self, path: &str, body: Value) -> Result<Value, String> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build();
        let mut errors = Vec::new();
        for endpoint in &self.endpoints {
            let url = format!("http://{endpoint}/v3/{path}");
            match agent
                .post(&url)
                .set("Content-Type", "application/json")
                .send_string(&body.to_string())
            {
                Ok(r) => return r.into_json().map_err(|e| format!("{url}: {e}")),
                Err(ureq::Error::Status(code, r)) => {
                    return Err(format!(
                        "{url}: {code} {}",
                        r.into_string().unwrap_or_default()
                    ))
                }
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        Err(errors.join("; "))
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Result<Option<String>, String> {
        let answer = self.call("kv/range", json!({ "key": b64(key) }))?;
        match answer["kvs"].as_array().and_then(|kvs| kvs.first()) {
            Some(kv) => unb64(kv["value"].as_str().unwrap_or_default()).map(Some),
            None => Ok(None),
        }
    }

    /// Sets `key` to `value` if it holds `expected` now, in one step.
    /// Ok(false): it held something else, and nothing was written.
    pub fn compare_and_set(&self, key: &str, expected: &str, value: &str) -> Result<bool, String> {
        let answer = self.call(
            "kv/txn",
            json!({
                "compare": [{ "key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(expected) }],
                "success": [{ "request_put": { "key": b64(key), "value": b64(value) } }],
            }),
        )?;
        Ok(answer["succeeded"].as_bool().unwrap_or(false))
    }

    /// Removes `key` (nothing if it is not set).
    pub fn delete(&self, key: &str) -> Result<(), String> {
        self.call("kv/deleterange", json!({ "key": b64(key) }))
            .map(|_| ())
    }
}
