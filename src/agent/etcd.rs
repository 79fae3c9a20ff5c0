//! `ClusterStore` on etcd v3 through its JSON gateway (`/v3/kv/range`, `/v3/kv/txn`,
//! `/v3/lease/*`, served on the client port since etcd 3.3). Plain HTTP/1.1 and serde_json: it
//! builds with cargo alone (no protoc, no generated gRPC code, no async runtime). Every call has
//! a deadline; with several endpoints a member that times out or answers Unavailable is skipped
//! and the call is retried on the next one. Connections to each member are kept open between
//! calls (`super::conns`, a few idle per member).

use super::conns::{Conns, MAX_IDLE};
use super::http::{b64_decode, b64_encode, host_port};
use super::store::{ClusterStore, Cmp, Kv, Op, Snapshot, StoreError, StoreResult, prefix_end};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// gRPC status codes that mean "this member cannot answer now": Unavailable, DeadlineExceeded.
const RETRY_CODES: [i64; 2] = [14, 4];

pub struct EtcdStore {
    endpoints: Vec<String>,
    /// Idle connections, one pool per endpoint (same index).
    conns: Vec<Conns>,
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
        let conns = endpoints.iter().map(|e| Conns::new(e, MAX_IDLE)).collect();
        Ok(EtcdStore {
            endpoints,
            conns,
            current: AtomicUsize::new(0),
            timeout,
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// TCP connections opened to the members so far.
    pub fn connects(&self) -> u64 {
        self.conns.iter().map(Conns::connects).sum()
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
                match self.call_one(op, idx, path, body.as_bytes()) {
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

    fn call_one(
        &self,
        op: &'static str,
        idx: usize,
        path: &str,
        body: &[u8],
    ) -> StoreResult<Value> {
        let ep = &self.endpoints[idx];
        let err = |message: String, unavailable: bool| StoreError {
            op,
            target: ep.to_string(),
            message,
            unavailable,
        };
        let (status, reply) = self.conns[idx]
            .post(path, body, self.timeout)
            .map_err(|e| err(e.to_string(), true))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    /// A gateway stand-in: every request answered with `reply`, connections kept open.
    fn gateway(reply: &'static str) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (accepts, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, q) = (accepts.clone(), requests.clone());
        std::thread::spawn(move || {
            while let Ok((c, _)) = l.accept() {
                a.fetch_add(1, Ordering::SeqCst);
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut c = c;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let (len, _) = crate::agent::http::read_headers(&mut r).unwrap();
                    let mut b = vec![0; len.unwrap()];
                    r.read_exact(&mut b).unwrap();
                    q.fetch_add(1, Ordering::SeqCst);
                    let out = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
                        reply.len()
                    );
                    if c.write_all(out.as_bytes()).is_err() {
                        break;
                    }
                }
            }
        });
        (addr, accepts, requests)
    }

    #[test]
    fn calls_share_one_connection_per_member() {
        let (addr, accepts, requests) = gateway(r#"{"header":{"revision":"7"},"succeeded":true}"#);
        let s = EtcdStore::new(&format!("http://{addr}"), Duration::from_secs(2)).unwrap();
        for _ in 0..25 {
            assert_eq!(s.txn(&[], &[]).unwrap(), (true, 7));
            assert_eq!(s.range("a/", true).unwrap().revision, 7);
        }
        assert_eq!(requests.load(Ordering::SeqCst), 50);
        assert_eq!(accepts.load(Ordering::SeqCst), 1);
        assert_eq!(s.connects(), 1);
    }
}
