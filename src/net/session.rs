//! Opening a session: TCP, the TLS handshake, then the version handshake (Hello/Welcome).

use super::conn::Conn;
use super::frame::ProtoError;
use super::msg::{Msg, VERSION};
use rustls::pki_types::ServerName;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// The port ferry listens on when none is given.
pub const DEFAULT_PORT: u16 = 7733;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An error the peer told us about (or that we told it): fatal for the session.
fn refused(peer: &str, msg: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{peer} refused: {msg}"),
    )
}

/// Dials `host:port`, checks the server's certificate against the CA for `host`, presents
/// ours, and agrees on the protocol version.
pub fn connect(host: &str, port: u16, cfg: Arc<rustls::ClientConfig>) -> io::Result<Conn> {
    connect_as(host, port, cfg, VERSION)
}

/// [`connect`] announcing protocol `version` (tests: how an older or newer build is refused).
#[doc(hidden)]
pub fn connect_as(
    host: &str,
    port: u16,
    cfg: Arc<rustls::ClientConfig>,
    version: u16,
) -> io::Result<Conn> {
    let peer = format!("ferry://{host}:{port}");
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("resolve {peer}: {e}")))?;
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("resolve {peer}: no address"),
    );
    let mut sock = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                sock = Some(s);
                break;
            }
            Err(e) => last = io::Error::new(e.kind(), format!("connect {peer} ({a}): {e}")),
        }
    }
    let sock = sock.ok_or(last)?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{peer}: {e}")))?;
    let tls = rustls::ClientConnection::new(cfg, name)
        .map_err(|e| io::Error::other(format!("TLS {peer}: {e}")))?;
    let mut c = Conn::new(sock, tls.into(), peer)?;
    c.handshake()?;
    c.send(&Msg::Hello { version })?;
    c.flush()?;
    match c.recv()? {
        Msg::Welcome { .. } => Ok(c),
        Msg::Error { msg } => Err(refused(&c.peer, &msg)),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: expected Welcome, got {other:?}", c.peer),
        )),
    }
}

/// The server side of [`connect`]: TLS (client certificate required), then the client's
/// Hello; a client of another version is told so (in a Welcome-free Error) and refused.
pub fn accept(sock: TcpStream, cfg: Arc<rustls::ServerConfig>) -> io::Result<Conn> {
    let peer = sock
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "peer".into());
    let tls = rustls::ServerConnection::new(cfg)
        .map_err(|e| io::Error::other(format!("TLS {peer}: {e}")))?;
    let mut c = Conn::new(sock, tls.into(), peer)?;
    c.idle = Duration::from_secs(30);
    c.handshake()?;
    match c.recv() {
        Ok(Msg::Hello { .. }) => {}
        Ok(other) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: expected Hello, got {other:?}", c.peer),
            ));
        }
        Err(e) => {
            // Tell a peer of another version why, in words it can decode (Error never changes).
            let msg = match e.get_ref().and_then(|x| x.downcast_ref::<ProtoError>()) {
                Some(ProtoError::Version { ours, theirs }) => format!(
                    "protocol version mismatch: the server speaks version {ours}, this client \
                     {theirs} (run the same ferry release on both ends)"
                ),
                _ => e.to_string(),
            };
            let _ = c.send(&Msg::Error { msg });
            let _ = c.flush();
            return Err(e);
        }
    }
    c.send(&Msg::Welcome { version: VERSION })?;
    c.flush()?;
    c.idle = Duration::from_secs(120);
    Ok(c)
}
