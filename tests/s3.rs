//! `ferry s3 serve` against real S3 clients (boto3 and the AWS CLI from a venv: .ci/run makes
//! it at target/s3-venv, FERRY_S3_VENV names another) and raw HTTP: anonymous and unsigned
//! requests refused, oversized heads refused, bad key files refused, limits enforced.

mod agent_harness;
mod common;
mod etcd_harness;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const AK: &str = "FERRYTESTKEY0001";
const SK: &str = "s3cr3t/Test+Key-0123456789";

/// A `ferry s3 serve` process, killed (and reaped) on drop, whatever the test's outcome.
struct Server {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two sets of two disks, initialised; the key file (mode 600).
fn layout(t: &Path) -> (PathBuf, PathBuf) {
    let disk = |s: &str, d: &str| {
        let p = t.join(format!("{s}{d}"));
        std::fs::create_dir_all(&p).unwrap();
        serde_json::json!({"id": d, "path": p})
    };
    let sets: Vec<serde_json::Value> = ["s0", "s1"]
        .iter()
        .map(|s| {
            serde_json::json!({"id": s, "state": "active", "weight": 1.0,
                "disks": [disk(s, "d0"), disk(s, "d1")]})
        })
        .collect();
    let v = serde_json::json!({"generation": 1, "pools": [{"id": "p", "sets": sets}]});
    let topo = t.join("topology.json");
    std::fs::write(&topo, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let out = ferry(&[
        "disk".as_ref(),
        "init".as_ref(),
        "--topology".as_ref(),
        topo.as_os_str(),
    ]);
    assert!(out.status.success(), "disk init: {}", stderr(&out));
    let keys = t.join("keys");
    std::fs::write(&keys, format!("# test key\n{AK} {SK}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    (topo, keys)
}

fn serve(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (topo, keys) = layout(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["s3", "serve", "--listen", "127.0.0.1:0"])
        .arg("--topology")
        .arg(&topo)
        .arg("--keys")
        .arg(&keys)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ferry s3 serve");
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    let read = BufReader::new(stdout).read_line(&mut line);
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string);
    let server = |endpoint| Server {
        child,
        endpoint,
        _dir: dir,
    };
    match (read, addr) {
        (Ok(_), Some(a)) => server(format!("http://{a}")),
        _ => {
            drop(server(String::new()));
            panic!("ferry s3 serve printed no address: {line:?}");
        }
    }
}

/// One raw HTTP/1.1 exchange; the reply's status line and text.
fn raw(endpoint: &str, request: &[u8]) -> String {
    let addr = endpoint.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply); // the server closes (Connection: close) or resets
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn anonymous_and_unsigned_requests_are_refused_with_access_denied() {
    let s = serve(&[]);
    for req in [
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
        "GET /bkt/k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
        "PUT /bkt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .to_string(),
    ] {
        let r = raw(&s.endpoint, req.as_bytes());
        assert!(r.starts_with("HTTP/1.1 403"), "{req}: {r}");
        assert!(r.contains("<Code>AccessDenied</Code>"), "{req}: {r}");
    }
    // A forged signature (a header that looks right, signed with nothing).
    let forged = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-amz-date: 20261201T000000Z\r\n\
        x-amz-content-sha256: UNSIGNED-PAYLOAD\r\nAuthorization: AWS4-HMAC-SHA256 \
        Credential=FERRYTESTKEY0001/20261201/us-east-1/s3/aws4_request, SignedHeaders=host;\
        x-amz-content-sha256;x-amz-date, Signature=00000000000000000000000000000000000000000000\
        00000000000000000000\r\n\r\n";
    let r = raw(&s.endpoint, forged.as_bytes());
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(
        r.contains("SignatureDoesNotMatch") || r.contains("RequestTimeTooSkewed"),
        "{r}"
    );
}

#[test]
fn a_request_head_over_the_limit_is_refused_with_431() {
    let s = serve(&["--max-header-bytes", "16K"]);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(32 << 10)
    );
    let r = raw(&s.endpoint, big.as_bytes());
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    // The server lives on and answers the next client.
    let ok = raw(
        &s.endpoint,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(ok.starts_with("HTTP/1.1 403"), "{ok}");
}

#[test]
fn bad_key_files_and_limits_fail_with_a_message_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (topo, keys) = layout(dir.path());
    let run = |keys: &Path, extra: &[&str]| {
        let mut a: Vec<std::ffi::OsString> = ["s3", "serve", "--listen", "127.0.0.1:0"]
            .iter()
            .map(|s| s.into())
            .collect();
        a.extend(["--topology".into(), topo.clone().into_os_string()]);
        a.extend(["--keys".into(), keys.as_os_str().to_owned()]);
        a.extend(extra.iter().map(|s| s.into()));
        let a: Vec<&std::ffi::OsStr> = a.iter().map(|s| s.as_os_str()).collect();
        ferry_with(&a, Duration::from_secs(60), None)
    };
    use std::os::unix::fs::PermissionsExt;
    let open = dir.path().join("open-keys");
    std::fs::write(&open, format!("{AK} {SK}\n")).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let empty = dir.path().join("empty-keys");
    std::fs::write(&empty, "# nothing\n").unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (k, extra, want) in [
        (open.as_path(), &[][..], "chmod 600"),
        (
            empty.as_path(),
            &[][..],
            "anonymous access is never allowed",
        ),
        (dir.path().join("none").as_path(), &[][..], "No such file"),
        (
            keys.as_path(),
            &["--max-inflight", "0"][..],
            "--max-inflight 0",
        ),
        (
            keys.as_path(),
            &["--max-header-bytes", "100"][..],
            "--max-header-bytes 100",
        ),
    ] {
        let out = run(k, extra);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{k:?} {extra:?}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(want),
            "{k:?} {extra:?}: {}",
            stderr(&out)
        );
    }
}

/// The venv's python (with boto3) and aws, or why not.
fn clients() -> Result<(PathBuf, PathBuf), String> {
    let venv = std::env::var_os("FERRY_S3_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/s3-venv"));
    let (py, aws) = (venv.join("bin/python"), venv.join("bin/aws"));
    if !py.is_file() || !aws.is_file() {
        return Err(format!(
            "no venv with boto3 and awscli at {} (python3 -m venv DIR; DIR/bin/pip install boto3 awscli)",
            venv.display()
        ));
    }
    let ok = Command::new(&py).args(["-c", "import boto3"]).output();
    match ok {
        Ok(o) if o.status.success() => Ok((py, aws)),
        _ => Err(format!("{}: boto3 does not import", py.display())),
    }
}

fn run_clients(mode: &str, s: &Server) {
    run_clients_at(mode, &s.endpoint);
}

fn run_clients_at(mode: &str, endpoint: &str) {
    let (py, aws) = match clients() {
        Ok(c) => c,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/clients.py");
    let out = Command::new(py)
        .arg(script)
        .arg(mode)
        .env("FERRY_S3_ENDPOINT", endpoint)
        .env("FERRY_S3_AK", AK)
        .env("FERRY_S3_SK", SK)
        .env("AWS_CLI", aws)
        .output()
        .expect("run python");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "S3 client checks failed:\n{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
}

#[test]
fn boto3_and_the_aws_cli_work_against_the_endpoint() {
    let s = serve(&[]);
    run_clients("main", &s);
}

#[test]
fn object_size_and_in_flight_limits_hold_for_real_clients() {
    let s = serve(&["--max-inflight", "1", "--max-object-size", "1M"]);
    run_clients("limits", &s);
}

#[test]
fn the_agent_serves_s3_on_s3_listen_and_stops_it_on_sigterm() {
    let Some(mut c) = agent_harness::Cluster::new(1, &agent_harness::config(100, 100)) else {
        return; // etcd not installed: said by the harness
    };
    let disks = tempfile::tempdir().unwrap();
    let (topo, keys) = layout(disks.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let child = c
        .command("n1", &c.state_dir("n1"))
        .args(["--s3-listen", &format!("127.0.0.1:{port}")])
        .arg("--s3-keys")
        .arg(&keys)
        .arg("--s3-topology")
        .arg(&topo)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    c.agents.insert("n1".into(), child); // killed by the harness whatever happens
    let start = std::time::Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the agent's S3 endpoint never came up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = raw(
        &endpoint,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(r.contains("<Code>AccessDenied</Code>"), "{r}");
    run_clients_at("agent", &endpoint);
    let status = c
        .term("n1", Duration::from_secs(20))
        .expect("the agent exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the endpoint stopped"
    );
}
