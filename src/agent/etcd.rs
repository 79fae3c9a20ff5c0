//! `ClusterStore` on etcd v3 through its JSON gateway (`/v3/kv/range`, `/v3/kv/txn`,
//! `/v3/lease/*`, served on the client port since etcd 3.3). Plain HTTP/1.1 and serde_json: it
//! builds with cargo alone (no protoc, no generated gRPC code, no async runtime). Every call has
//! a deadline; with several endpoints a member that times out or answers Unavailable is skipped
//! and the call is retried on the next one.

use super::http::{b64_decode, b64_encode, host_port, post};
use super::store::{ClusterStore, Cmp, Kv, Op, Snapshot, StoreError, StoreResult, prefix_end};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// gRPC status codes that mean "this member cannot answer now": Unavailable, DeadlineExceeded.
const RETRY_CODES: [i64; 2] = [14, 4];

pub struct EtcdStore {
    endpoints: Vec<String>,
    /// The member that answered last (tried first).
    current: AtomicUsize,
    timeout: Duration,
}

impl EtcdStore {
    /// `urls`: `http://HOST:PORT[,http://HOST:PORT...]`.
    pub fn new(urls: &str, timeout: Duration) -> Result<EtcdStore, String> {
        let endpoints = urls
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|u| host_port(u.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err("--etcd: no endpoint given".into());
        }
        Ok(EtcdStore {
            endpoints,
            current: AtomicUsize::new(0),
            timeout,
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The longest one call can take: passes over the members go on for twice the request
    /// deadline, and the last pass may cost one deadline per member.
    pub fn call_limit(&self) -> Duration {
        self.timeout * (2 + self.endpoints.len() as u32)
    }

    /// One gateway call, tried on each member in turn until one answers; a cluster that is
    /// electing a leader (every member Unavailable) gets a few more passes within twice the
    /// request deadline.
    fn call(&self, op: &'static str, path: &str, body: &Value) -> StoreResult<Value> {
        let body = body.to_string();
        let deadline = std::time::Instant::now() + 2 * self.timeout;
        loop {
            let start = self.current.load(Ordering::Relaxed);
            let mut last = None;
            for i in 0..self.endpoints.len() {
                let idx = (start + i) % self.endpoints.len();
                match self.call_one(op, &self.endpoints[idx], path, body.as_bytes()) {
                    Ok(v) => {
                        self.current.store(idx, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Err(e) if e.unavailable => last = Some(e),
                    Err(e) => return Err(e),
                }
            }
            if std::time::Instant::now() + Duration::from_millis(100) >= deadline {
                return Err(last.expect("at least one endpoint"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn call_one(&self, op: &'static str, ep: &str, path: &str, body: &[u8]) -> StoreResult<Value> {
        let err = |message: String, unavailable: bool| StoreError {
            op,
            target: ep.to_string(),
            message,
            unavailable,
        };
        let (status, reply) =
            post(ep, path, body, self.timeout).map_err(|e| err(e.to_string(), true))?;
        let v: Value = serde_json::from_slice(&reply)
            .map_err(|e| err(format!("HTTP {status}: bad JSON reply: {e}"), status >= 500))?;
        if let Some(code) = v.get("code").and_then(Value::as_i64)
            && (v.get("error").is_some() || v.get("message").is_some())
        {
            let msg = v
                .get("message")
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("error");
            return Err(err(
                format!("{msg} (code {code})"),
                RETRY_CODES.contains(&code),
            ));
        }
        if status != 200 {
            return Err(err(format!("HTTP {status}"), status >= 500));
        }
        Ok(v)
    }
}

fn num(v: &Value, field: &str) -> i64 {
    match v.get(field) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn bytes(v: &Value, field: &str) -> Vec<u8> {
    v.get(field)
        .and_then(Value::as_str)
        .and_then(|s| b64_decode(s).ok())
        .unwrap_or_default()
}

fn kv_of(v: &Value) -> Kv {
    Kv {
        key: String::from_utf8_lossy(&bytes(v, "key")).into_owned(),
        value: bytes(v, "value"),
        create_rev: num(v, "create_revision"),
        mod_rev: num(v, "mod_revision"),
        lease: num(v, "lease"),
    }
}

fn snapshot(v: &Value) -> Snapshot {
    let kvs = v
        .get("kvs")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(kv_of).collect())
        .unwrap_or_default();
    Snapshot {
        kvs,
        revision: v.get("header").map(|h| num(h, "revision")).unwrap_or(0),
    }
}

fn cmp_json(c: &Cmp) -> Value {
    let (key, target, field, rev) = match c {
        Cmp::CreateRev(k, r) => (k, "CREATE", "create_revision", r),
        Cmp::ModRev(k, r) => (k, "MOD", "mod_revision", r),
    };
    json!({"key": b64_encode(key.as_bytes()), "target": target, "result": "EQUAL", field: rev.to_string()})
}

fn op_json(o: &Op) -> Value {
    match o {
        Op::Put { key, value, lease } => json!({"request_put": {
            "key": b64_encode(key.as_bytes()), "value": b64_encode(value), "lease": lease.to_string()}}),
        Op::Delete(key) => json!({"request_delete_range": {"key": b64_encode(key.as_bytes())}}),
    }
}

impl ClusterStore for EtcdStore {
    fn range(&self, prefix: &str, keys_only: bool) -> StoreResult<Snapshot> {
        let body = json!({"key": b64_encode(prefix.as_bytes()),
            "range_end": b64_encode(&prefix_end(prefix)), "keys_only": keys_only});
        Ok(snapshot(&self.call("range", "/v3/kv/range", &body)?))
    }

    fn get(&self, key: &str) -> StoreResult<Option<Kv>> {
        let body = json!({"key": b64_encode(key.as_bytes())});
        let s = snapshot(&self.call("range", "/v3/kv/range", &body)?);
        Ok(s.kvs.into_iter().find(|kv| kv.key == key))
    }

    fn txn(&self, cmps: &[Cmp], ops: &[Op]) -> StoreResult<(bool, i64)> {
        let body = json!({"compare": cmps.iter().map(cmp_json).collect::<Vec<_>>(),
            "success": ops.iter().map(op_json).collect::<Vec<_>>()});
        let v = self.call("txn", "/v3/kv/txn", &body)?;
        let ok = v.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
        Ok((ok, v.get("header").map(|h| num(h, "revision")).unwrap_or(0)))
    }

    fn grant(&self, ttl: i64) -> StoreResult<i64> {
        let v = self.call(
            "lease grant",
            "/v3/lease/grant",
            &json!({"TTL": ttl.to_string()}),
        )?;
        Ok(num(&v, "ID"))
    }

    fn keepalive(&self, lease: i64) -> StoreResult<i64> {
        let v = self.call(
            "lease keepalive",
            "/v3/lease/keepalive",
            &json!({"ID": lease.to_string()}),
        )?;
        // The gateway streams: one {"result": {...}} per renewal (one here).
        Ok(v.get("result").map(|r| num(r, "TTL")).unwrap_or(0))
    }

    fn time_left(&self, lease: i64) -> StoreResult<i64> {
        let v = self.call(
            "lease timetolive",
            "/v3/lease/timetolive",
            &json!({"ID": lease.to_string()}),
        )?;
        Ok(num(&v, "TTL"))
    }

    fn revoke(&self, lease: i64) -> StoreResult<()> {
        match self.call(
            "lease revoke",
            "/v3/lease/revoke",
            &json!({"ID": lease.to_string()}),
        ) {
            Err(e) if e.message.contains("lease not found") => Ok(()),
            r => r.map(|_| ()),
        }
    }
}
