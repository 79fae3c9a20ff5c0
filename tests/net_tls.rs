//! Mutual TLS: only peers signed by our CA, for the right name, with a certificate, of our
//! protocol version, get a session; a refused peer is told why (the alert reaches it), on
//! both socket paths (poll(2) and io_uring).

mod common;
mod netkit;
use ferry::net::{certs, session, tls};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;

fn ca(dir: &Path, names: &[&str]) {
    certs::init(dir).unwrap();
    for n in names {
        certs::issue(dir, n, 0, 30).unwrap();
    }
}

/// Runs `case` on every socket path in turn. The path is one setting of this process (both
/// ends of a session live here), so the cases of this file take turns.
fn on_each_path(case: impl Fn(&'static str)) {
    static TURN: Mutex<()> = Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    for io in netkit::net_paths() {
        ferry::net::conn::set_io(io == "uring");
        case(io);
    }
}

/// Closes a session, which must be on socket path `io` (not fallen back to poll).
fn close_on(c: ferry::net::conn::Conn, io: &str) {
    assert_eq!(c.uses_ring(), io == "uring", "{io}: {}", c.peer);
    c.close()
}

/// Serves one connection with the server identity in `server_dir` on socket path `io`;
/// returns the server's result (Ok: the session was accepted) and the client's.
fn attempt(
    io: &'static str,
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
            .map(|c| close_on(c, io))
            .map_err(|e| e.to_string())
    });
    let c = session::connect_as(host, port, client, version)
        .map(|c| close_on(c, io))
        .map_err(|e| e.to_string());
    (server.join().unwrap(), c)
}

/// `attempt` with the name the certificates are issued for and this build's protocol version.
fn attempt_localhost(
    io: &'static str,
    server_dir: &Path,
    client: Arc<rustls::ClientConfig>,
) -> (Result<(), String>, Result<(), String>) {
    attempt(
        io,
        server_dir,
        client,
        "localhost",
        ferry::net::msg::VERSION,
    )
}

/// Both refusals of a session: the side that refused names the reason (one of `s`), and so
/// does the other one (one of `c`), from the alert it was sent. Returns both errors.
fn assert_both_say(
    io: &str,
    got: (Result<(), String>, Result<(), String>),
    s: &[&str],
    c: &[&str],
) -> (String, String) {
    let (se, ce) = (got.0.unwrap_err(), got.1.unwrap_err());
    assert!(s.iter().any(|w| se.contains(w)), "{io}: server: {se}");
    assert!(c.iter().any(|w| ce.contains(w)), "{io}: client: {ce}");
    (se, ce)
}

#[test]
fn peers_of_one_ca_talk() {
    on_each_path(|io| {
        let t = tempfile::tempdir().unwrap();
        ca(t.path(), &["localhost", "client"]);
        let cc = tls::client_config(&t.path().join("client")).unwrap();
        let (s, c) = attempt_localhost(io, &t.path().join("localhost"), cc);
        assert_eq!(s, Ok(()), "{io}");
        assert_eq!(c, Ok(()), "{io}");
    });
}

#[test]
fn client_of_another_ca_is_refused() {
    on_each_path(|io| {
        let t = tempfile::tempdir().unwrap();
        ca(&t.path().join("a"), &["localhost"]);
        ca(&t.path().join("b"), &["client"]);
        let cc = tls::client_config(&t.path().join("b/client")).unwrap();
        let got = attempt_localhost(io, &t.path().join("a/localhost"), cc);
        // The client trusts CA b only, so it refuses the server: the server hears why.
        let (s, _) = assert_both_say(
            io,
            got,
            &["received fatal alert: UnknownCA"],
            &["UnknownIssuer"],
        );
        assert!(s.contains("TLS"), "{io}: {s}");
    });
}

#[test]
fn client_certificate_of_another_ca_refused_by_the_server() {
    on_each_path(|io| {
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
        let got = attempt_localhost(io, &t.path().join("a/localhost"), cc);
        assert_both_say(
            io,
            got,
            &["UnknownIssuer", "unknown issuer"],
            &["received fatal alert: UnknownCA"],
        );
    });
}

#[test]
fn server_with_the_wrong_name_is_refused() {
    on_each_path(|io| {
        let t = tempfile::tempdir().unwrap();
        ca(t.path(), &["otherhost", "client"]);
        let cc = tls::client_config(&t.path().join("client")).unwrap();
        let got = attempt_localhost(io, &t.path().join("otherhost"), cc);
        assert_both_say(
            io,
            got,
            &["received fatal alert: BadCertificate"],
            &["NotValidForName", "not valid for name"],
        );
    });
}

#[test]
fn client_without_a_certificate_is_refused() {
    on_each_path(|io| {
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
        let got = attempt_localhost(io, &t.path().join("localhost"), Arc::new(cc));
        assert_both_say(
            io,
            got,
            &["NoCertificatesPresented", "no certificate"],
            &["received fatal alert: CertificateRequired"],
        );
    });
}

#[test]
fn expired_client_certificate_is_refused() {
    on_each_path(|io| {
        let t = tempfile::tempdir().unwrap();
        ca(t.path(), &["localhost"]);
        certs::issue(t.path(), "old", -400, 10).unwrap();
        let cc = tls::client_config(&t.path().join("old")).unwrap();
        let got = attempt_localhost(io, &t.path().join("localhost"), cc);
        assert_both_say(
            io,
            got,
            &["Expired", "expired"],
            &["received fatal alert: CertificateExpired"],
        );
    });
}

#[test]
fn another_protocol_version_is_refused_clearly() {
    on_each_path(|io| {
        let t = tempfile::tempdir().unwrap();
        ca(t.path(), &["localhost", "client"]);
        let cc = tls::client_config(&t.path().join("client")).unwrap();
        // Any version but this build's (a fixed number would become this build's one day).
        let other = ferry::net::msg::VERSION + 1;
        let want = format!(
            "server speaks version {}, this client {other}",
            ferry::net::msg::VERSION
        );
        let got = attempt(io, &t.path().join("localhost"), cc, "localhost", other);
        assert_both_say(io, got, &["version mismatch"], &[&want]);
    });
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
