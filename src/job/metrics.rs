//! `--metrics ADDR`: Prometheus text exposition of a running job (bytes, files, failures,
//! state, rate limits) over plain HTTP/1.0. Bounded: one request at a time, 4 KiB read.

use crate::error::{Error, ErrorKind, Target};
use crate::job::Control;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Binds ADDR (before the job starts, so a busy address is bad input, not a warning).
pub fn bind(addr: &str) -> Result<TcpListener, Error> {
    let where_ = std::path::Path::new(addr);
    let listener = TcpListener::bind(addr).map_err(|e| Error::os("bind", where_, e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::os("listen", where_, e))?;
    Ok(listener)
}

pub fn serve(addr: &str, control: Arc<Control>) -> Result<JoinHandle<()>, Error> {
    serve_on(bind(addr)?, control)
}

/// Serves the job's metrics on a listener from [`bind`] until the job ends.
pub fn serve_on(listener: TcpListener, control: Arc<Control>) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name("ferry-metrics".into())
        .spawn(move || {
            while !control.is_over() {
                match listener.accept() {
                    Ok((s, _)) => answer(s, &control),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
        .map_err(|e| Error::at("spawn", Target::Thread("ferry-metrics"), ErrorKind::Os(e)))
}

fn answer(mut s: TcpStream, c: &Control) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut req = [0u8; 4096];
    let _ = s.read(&mut req); // the request line does not matter: there is one page
    let body = render(c);
    let _ = write!(
        s,
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        body
    );
}

pub fn render(c: &Control) -> String {
    let p = c.status();
    let (bw, ops) = c.rates();
    let mut out = String::new();
    let gauges: [(&str, &str, &str, String); 6] = [
        (
            "ferry_bytes_total",
            "counter",
            "Bytes durably copied.",
            p.bytes.to_string(),
        ),
        (
            "ferry_files_total",
            "counter",
            "Files durably copied.",
            p.files.to_string(),
        ),
        (
            "ferry_failures_total",
            "counter",
            "Failed items.",
            p.failed.to_string(),
        ),
        (
            "ferry_elapsed_seconds",
            "gauge",
            "Time since the job started.",
            format!("{:.3}", p.elapsed_secs),
        ),
        (
            "ferry_bwlimit_bytes_per_second",
            "gauge",
            "Bandwidth limit (0 = none).",
            bw.to_string(),
        ),
        (
            "ferry_ops_limit_per_second",
            "gauge",
            "File operation limit (0 = none).",
            ops.to_string(),
        ),
    ];
    for (name, kind, help, value) in gauges {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    latencies(&mut out, &c.latencies());
    out.push_str(
        "# HELP ferry_state The job's state (1 for the current one).\n# TYPE ferry_state gauge\n",
    );
    for s in [
        "scanning",
        "running",
        "paused",
        "completed",
        "failed",
        "cancelled",
    ] {
        out.push_str(&format!(
            "ferry_state{{state=\"{s}\"}} {}\n",
            u8::from(p.state.name() == s)
        ));
    }
    out
}

/// The latency summary: quantiles and a count per kind of operation.
fn latencies(out: &mut String, lat: &crate::latency::LatencyReport) {
    out.push_str(
        "# HELP ferry_latency_us Operation latency quantiles (microseconds).\n\
         # TYPE ferry_latency_us summary\n",
    );
    for (kind, q) in [
        ("open", &lat.open),
        ("read", &lat.read),
        ("write", &lat.write),
        ("fsync", &lat.fsync),
        ("file", &lat.file),
    ] {
        for (quantile, v) in [
            ("0.5", q.p50),
            ("0.9", q.p90),
            ("0.99", q.p99),
            ("0.999", q.p999),
            ("1", q.max),
        ] {
            out.push_str(&format!(
                "ferry_latency_us{{kind=\"{kind}\",quantile=\"{quantile}\"}} {v}\n"
            ));
        }
        out.push_str(&format!(
            "ferry_latency_us_count{{kind=\"{kind}\"}} {}\n",
            q.count
        ));
    }
}
