//! Mutual TLS: only peers signed by our CA, for the right name, with a certificate, of our
//! protocol version, get a session.

use ferry::net::{certs, session, tls};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::thread;

fn ca(dir: &Path, names: &[&str]) {
    certs::init(dir).unwrap();
    for n in names {
        certs::issue(dir, n, 0, 30).unwrap();
    }
}

/// Serves one connection with the server identity in `server_dir`; returns the server's
/// result (Ok: the session was accepted) and the client's.
fn attempt(
    server_dir: &Path,
    client: Arc<rustls::ClientConfig>,
    host: &str,
    version: u16,
) -> (Result<(), String>, Result<(), String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let scfg = tls::server_config(server_dir).unwrap();
    let server = thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        session::accept(s, scfg)
            .map(|c| c.close())
            .map_err(|e| e.to_string())
    });
    let c = session::connect_as(host, port, client, version)
        .map(|c| c.close())
        .map_err(|e| e.to_string());
    (server.join().unwrap(), c)
}

#[test]
fn peers_of_one_ca_talk() {
    let t = tempfile::tempdir().unwrap();
    ca(t.path(), &["localhost", "client"]);
    let cc = tls::client_config(&t.path().join("client")).unwrap();
    let (s, c) = attempt(
        &t.path().join("localhost"),
        cc,
        "localhost",
        ferry::net::msg::VERSION,
    );
    assert_eq!(s, Ok(()));
    assert_eq!(c, Ok(()));
}

#[test]
fn client_of_another_ca_is_refused() {
    let t = tempfile::tempdir().unwrap();
    ca(&t.path().join("a"), &["localhost"]);
    ca(&t.path().join("b"), &["client"]);
    let cc = tls::client_config(&t.path().join("b/client")).unwrap();
    let (s, c) = attempt(
        &t.path().join("a/localhost"),
        cc,
        "localhost",
        ferry::net::msg::VERSION,
    );
    // The client trusts CA b only, so it refuses the server as well: both sides say no.
    let s = s.unwrap_err();
    assert!(s.contains("TLS") && s.contains("UnknownCA"), "{s}");
    let c = c.unwrap_err();
    assert!(c.contains("UnknownIssuer"), "{c}");
}

#[test]
fn client_certificate_of_another_ca_refused_by_the_server() {
    let t = tempfile::tempdir().unwrap();
    ca(&t.path().join("a"), &["localhost"]);
    ca(&t.path().join("b"), &["client"]);
    // Trusts a's server, but presents b's certificate.
    let dir = t.path().join("mixed");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(t.path().join("a/ca.pem"), dir.join("ca.pem")).unwrap();
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(t.path().join("b/client").join(f), dir.join(f)).unwrap();
    }
    let cc = tls::client_config(&dir).unwrap();
    let (s, c) = attempt(
        &t.path().join("a/localhost"),
        cc,
        "localhost",
        ferry::net::msg::VERSION,
    );
    let s = s.unwrap_err();
    assert!(
        s.contains("UnknownIssuer") || s.contains("unknown issuer"),
        "{s}"
    );
    assert!(c.is_err());
}

#[test]
fn server_with_the_wrong_name_is_refused() {
    let t = tempfile::tempdir().unwrap();
    ca(t.path(), &["otherhost", "client"]);
    let cc = tls::client_config(&t.path().join("client")).unwrap();
    let (_, c) = attempt(
        &t.path().join("otherhost"),
        cc,
        "localhost",
        ferry::net::msg::VERSION,
    );
    let c = c.unwrap_err();
    assert!(
        c.contains("NotValidForName") || c.contains("not valid for name"),
        "{c}"
    );
}

#[test]
fn client_without_a_certificate_is_refused() {
    let t = tempfile::tempdir().unwrap();
    ca(t.path(), &["localhost"]);
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(t.path().join("ca.pem")).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let cc = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (s, _) = attempt(
        &t.path().join("localhost"),
        Arc::new(cc),
        "localhost",
        ferry::net::msg::VERSION,
    );
    let s = s.unwrap_err();
    assert!(
        s.contains("NoCertificatesPresented") || s.contains("no certificate"),
        "{s}"
    );
}

#[test]
fn expired_client_certificate_is_refused() {
    let t = tempfile::tempdir().unwrap();
    ca(t.path(), &["localhost"]);
    certs::issue(t.path(), "old", -400, 10).unwrap();
    let cc = tls::client_config(&t.path().join("old")).unwrap();
    let (s, _) = attempt(
        &t.path().join("localhost"),
        cc,
        "localhost",
        ferry::net::msg::VERSION,
    );
    let s = s.unwrap_err();
    assert!(s.contains("Expired") || s.contains("expired"), "{s}");
}

#[test]
fn another_protocol_version_is_refused_clearly() {
    let t = tempfile::tempdir().unwrap();
    ca(t.path(), &["localhost", "client"]);
    let cc = tls::client_config(&t.path().join("client")).unwrap();
    let (s, c) = attempt(&t.path().join("localhost"), cc, "localhost", 7);
    let s = s.unwrap_err();
    assert!(s.contains("version mismatch"), "{s}");
    let c = c.unwrap_err();
    let want = format!(
        "server speaks version {}, this client 7",
        ferry::net::msg::VERSION
    );
    assert!(c.contains(&want), "{c}");
}

#[test]
fn missing_tls_files_are_named() {
    let t = tempfile::tempdir().unwrap();
    let e = tls::client_config(t.path()).unwrap_err().to_string();
    assert!(
        e.contains("ca.pem") && e.contains("ferry certs issue"),
        "{e}"
    );
    certs::init(t.path()).unwrap();
    assert!(certs::init(t.path()).is_err(), "init never overwrites a CA");
}
