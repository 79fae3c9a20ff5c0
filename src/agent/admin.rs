//! The agent's admin API on `--listen`: GET /status (JSON), /health, /metrics (Prometheus
//! text). Nothing is served without the bearer token (`Authorization: Bearer TOKEN`), which
//! lives in a file readable by its owner only (`<state-dir>/admin.token`, made on first start,
//! or the config's `token_file`); it is never taken from the command line.

use super::node::Shared;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Random hex from the kernel.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Reads the token file, making it (mode 0600) when it does not exist yet.
pub fn load_token(path: &Path) -> Result<String, String> {
    let what = |e: std::io::Error, op: &str| format!("admin token '{}': {op}: {e}", path.display());
    if !path.exists() {
        let t = random_hex(24).map_err(|e| what(e, "read /dev/urandom"))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| what(e, "create"))?;
        f.write_all(t.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| what(e, "write"))?;
    }
    let meta = std::fs::metadata(path).map_err(|e| what(e, "stat"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "admin token '{}' is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    let t = std::fs::read_to_string(path).map_err(|e| what(e, "read"))?;
    let t = t.trim().to_string();
    if t.len() < 16 {
        return Err(format!(
            "admin token '{}': shorter than 16 characters",
            path.display()
        ));
    }
    Ok(t)
}

/// Serves until `stop` is set.
pub fn serve(
    listener: TcpListener,
    token: String,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("ferry-admin".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = answer(s, &token, &shared);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
}

/// Compares without stopping at the first differing byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn answer(s: TcpStream, token: &str, shared: &Mutex<Shared>) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut r = BufReader::new(s.try_clone()?.take(16 << 10));
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut authorized = false;
    for _ in 0..100 {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("authorization")
            && let Some(t) = v.trim().strip_prefix("Bearer ")
        {
            authorized = same(t.trim(), token);
        }
    }
    let (code, ctype, body) = if !authorized {
        (
            401,
            "text/plain",
            "unauthorized: send Authorization: Bearer <token from the agent's token file>\n"
                .to_string(),
        )
    } else {
        route(&path, shared)
    };
    let reason = match code {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let mut w = s;
    write!(
        w,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn route(path: &str, shared: &Mutex<Shared>) -> (u16, &'static str, String) {
    let s = shared.lock().unwrap_or_else(|e| e.into_inner());
    let doc = &s.doc;
    match path {
        "/status" => {
            let mut d = doc.clone();
            d["events"] = Value::Array(s.events.iter().cloned().collect());
            (200, "application/json", d.to_string())
        }
        "/health" => {
            let ok = doc["etcd_ok"] == json!(true) && doc["state"] != json!("shutdown");
            let body = json!({"ok": ok, "state": doc["state"], "etcd_ok": doc["etcd_ok"]});
            (
                if ok { 200 } else { 503 },
                "application/json",
                body.to_string(),
            )
        }
        "/metrics" => (200, "text/plain; version=0.0.4", metrics(doc)),
        _ => (
            404,
            "text/plain",
            "try /status, /health or /metrics\n".into(),
        ),
    }
}

fn metrics(doc: &Value) -> String {
    let mut m = String::new();
    let num = |v: &Value| v.as_f64().unwrap_or(0.0);
    for s in super::state::AgentState::ALL {
        let on = doc["state"] == json!(s.name());
        m += &format!("ferry_agent_state{{state=\"{}\"}} {}\n", s.name(), on as u8);
    }
    m += &format!(
        "ferry_agent_leader {}\n",
        (doc["leader"] == json!(true)) as u8
    );
    m += &format!(
        "ferry_agent_etcd_up {}\n",
        (doc["etcd_ok"] == json!(true)) as u8
    );
    m += &format!("ferry_agent_owned_partitions {}\n", num(&doc["owned"]));
    m += &format!(
        "ferry_agent_transitions_total {}\n",
        num(&doc["transitions"])
    );
    m += &format!(
        "ferry_agent_assignment_epoch {}\n",
        num(&doc["assignment_epoch"])
    );
    let rb = &doc["work"]["rebalance"];
    if !rb.is_null() {
        m += &format!(
            "ferry_agent_rebalance_generation {}\n",
            num(&rb["generation"])
        );
        let r = &rb["record"];
        for (name, field) in [
            ("moved_objects", "moved"),
            ("moved_bytes", "moved_bytes"),
            ("total_objects", "total"),
            ("total_bytes", "total_bytes"),
            ("superseded_objects", "superseded"),
            ("failed_objects", "failed"),
            ("rate_bytes_per_second", "rate_bytes_s"),
        ] {
            m += &format!("ferry_agent_rebalance_{name} {}\n", num(&r[field]));
        }
    }
    let p = &doc["work"]["pace"];
    if !p.is_null() {
        m += &format!(
            "ferry_agent_pace_limit_bytes_per_second {}\n",
            num(&p["limit_bytes_s"])
        );
        m += &format!(
            "ferry_agent_pace_limit_ops_per_second {}\n",
            num(&p["limit_ops_s"])
        );
        for (name, field) in [
            ("user_p99", "user_p99_us"),
            ("user_p99_target", "user_target_us"),
            ("disk_await", "disk_await_us"),
            ("disk_await_target", "disk_target_us"),
        ] {
            m += &format!("ferry_agent_pace_{name}_seconds {}\n", num(&p[field]) / 1e6);
        }
        m += &format!("ferry_agent_pace_requests {}\n", num(&p["requests"]));
    }
    m
}
