//! One peer connection: mutual TLS 1.3 (rustls) over a blocking TCP socket with read and
//! write timeouts, carrying `msg` frames. A frame announcing more than `frame::MAX_PAYLOAD`
//! bytes, an unknown type or a malformed payload is an error before anything is allocated
//! for it; the connection is then dropped.

use super::msg::{self, Msg, VERSION};
use crate::net::frame::{Frame, HEADER, MAX_CHUNK, MAX_PAYLOAD, ProtoError};
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Plaintext gathered before it goes through TLS (small messages share one write; a Data
/// chunk that does not fit goes straight from the caller's buffer, not copied here).
const OUT_BATCH: usize = 256 * 1024;
/// What a connection keeps of its send buffer between writes: a pooled or idle connection
/// holds at most this much (a bigger batch's buffer is given back after its write). Every
/// connection once held OUT_BATCH + MAX_PAYLOAD (1.3 MiB) for its life, dozens of them per
/// agent: the agents' memory grew during a rebalance (BENCHMARKS session 16).
const OUT_KEEP: usize = 16 * 1024;

trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

pub struct Wire {
    io: Box<dyn Io>,
    out: Vec<u8>,
    /// Who is at the other end: its node name once known, else its address.
    pub peer: String,
    /// How long one read or write may wait.
    pub timeout: Duration,
}

fn proto(peer: &str, e: ProtoError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("peer {peer}: {e}"))
}

fn timeouts(s: &TcpStream, t: Duration) -> io::Result<()> {
    s.set_read_timeout(Some(t))?;
    s.set_write_timeout(Some(t))?;
    s.set_nodelay(true)
}

/// How long sent bytes may go unacknowledged (and an idle connection unanswered by
/// keepalive probes) before the kernel breaks the connection off: a peer whose link went down
/// fails the call in seconds instead of at the 30 s I/O timeout (a rebalance move waits for
/// it, a read tries the next node of its chain). A live but slow peer still acks at once.
pub const DEAD_LINK: Duration = Duration::from_secs(6);

/// `DEAD_LINK` on a connection to a peer (TCP_USER_TIMEOUT; keepalive after 2 s idle, then
/// every second).
fn dead_link(s: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = s.as_raw_fd();
    let set = |level: i32, opt: i32, v: i32, name: &str| {
        // SAFETY: a valid socket and a plain int option.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                opt,
                (&v as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            let e = io::Error::last_os_error();
            Err(io::Error::new(e.kind(), format!("setsockopt {name}: {e}")))
        }
    };
    let ms = DEAD_LINK.as_millis() as i32;
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1, "SO_KEEPALIVE")?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 2, "TCP_KEEPIDLE")?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1, "TCP_KEEPINTVL")?;
    set(
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        ms,
        "TCP_USER_TIMEOUT",
    )
}

/// Drives a TLS handshake to its end (an unknown CA, a wrong name, no certificate: the
/// error says so).
fn handshake<C, S>(conn: &mut C, sock: &mut TcpStream, peer: &str) -> io::Result<()>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    while conn.is_handshaking() {
        conn.complete_io(sock)
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake with {peer}: {e}")))?;
    }
    Ok(())
}

impl Wire {
    /// Dials `addr`, checks the server's certificate against the CA for the name `node`,
    /// presents ours, and agrees on the version (Hello/Welcome naming both nodes).
    pub fn connect(
        addr: &str,
        node: &str,
        me: &str,
        cfg: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> io::Result<Wire> {
        let peer = format!("{node} ({addr})");
        let a: SocketAddr = addr.parse().map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{peer}: address: {e}"))
        })?;
        let mut sock = TcpStream::connect_timeout(&a, connect_timeout)
            .map_err(|e| io::Error::new(e.kind(), format!("connect {peer}: {e}")))?;
        timeouts(&sock, connect_timeout.max(timeout))?;
        dead_link(&sock).map_err(|e| io::Error::new(e.kind(), format!("{peer}: {e}")))?;
        let name = ServerName::try_from(node.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{peer}: {e}")))?;
        let mut tls = rustls::ClientConnection::new(cfg, name)
            .map_err(|e| io::Error::other(format!("TLS {peer}: {e}")))?;
        handshake(&mut tls, &mut sock, &peer)?;
        timeouts(&sock, timeout)?;
        let mut w = Wire::new(Box::new(rustls::StreamOwned::new(tls, sock)), peer, timeout);
        w.send(&Msg::Hello {
            version: VERSION,
            node: me.to_string(),
        })?;
        match w.recv()? {
            Msg::Welcome { node: n, .. } if n == node => Ok(w),
            Msg::Welcome { node: n, .. } => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: answered as node '{n}'", w.peer),
            )),
            Msg::Error { msg, .. } => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} refused: {msg}", w.peer),
            )),
            other => Err(w.unexpected(&other)),
        }
    }

    /// The server side: TLS with a client certificate the CA signed, then the client's
    /// Hello: its version must be ours and its certificate must name the node it claims.
    pub fn accept(
        mut sock: TcpStream,
        cfg: Arc<rustls::ServerConfig>,
        me: &str,
        timeout: Duration,
    ) -> io::Result<Wire> {
        let addr = sock
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        timeouts(&sock, timeout)?;
        let mut tls = rustls::ServerConnection::new(cfg)
            .map_err(|e| io::Error::other(format!("TLS {addr}: {e}")))?;
        handshake(&mut tls, &mut sock, &addr)?;
        let cert: Option<CertificateDer<'static>> = tls
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        let mut w = Wire::new(Box::new(rustls::StreamOwned::new(tls, sock)), addr, timeout);
        let refuse = |w: &mut Wire, msg: String| {
            let _ = w.send(&Msg::Error {
                code: msg::Code::Refused,
                errno: 0,
                msg: msg.clone(),
            });
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: {msg}", w.peer),
            )
        };
        let (version, node) = match w.recv() {
            Ok(Msg::Hello { version, node }) => (version, node),
            Ok(other) => return Err(w.unexpected(&other)),
            Err(e) => return Err(e),
        };
        if version != VERSION {
            let m = format!(
                "peer protocol version mismatch: node {me} speaks version {VERSION}, node {node} {version} (run the same ferry release on every node)"
            );
            return Err(refuse(&mut w, m));
        }
        if let Err(m) = names(cert.as_ref(), &node) {
            return Err(refuse(&mut w, m));
        }
        w.peer = format!("{node} ({})", w.peer);
        w.send(&Msg::Welcome {
            version: VERSION,
            node: me.to_string(),
        })?;
        Ok(w)
    }

    fn new(io: Box<dyn Io>, peer: String, timeout: Duration) -> Wire {
        Wire {
            io,
            out: Vec::with_capacity(OUT_KEEP),
            peer,
            timeout,
        }
    }

    pub fn unexpected(&self, m: &Msg) -> io::Error {
        let what = match m {
            Msg::Data(b) => format!("Data of {} bytes", b.len()),
            other => format!("{other:?}"),
        };
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("peer {}: unexpected {what}", self.peer),
        )
    }

    fn io_err(&self, what: &str, e: io::Error) -> io::Error {
        let kind = e.kind();
        let e = if matches!(kind, io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
            format!("nothing for {:?}", self.timeout)
        } else {
            e.to_string()
        };
        let kind = if kind == io::ErrorKind::WouldBlock {
            io::ErrorKind::TimedOut
        } else {
            kind
        };
        io::Error::new(kind, format!("{what} peer {}: {e}", self.peer))
    }

    /// Queues a message (written once enough is gathered, or before the next receive).
    pub fn queue(&mut self, m: &Msg) -> io::Result<()> {
        m.encode(&mut self.out);
        if self.out.len() >= OUT_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Queues bytes as Data frames of at most `MAX_CHUNK` each. A chunk that would take the
    /// batch past `OUT_BATCH` is written at once after what is queued, from `b` itself.
    pub fn queue_data(&mut self, mut b: &[u8]) -> io::Result<()> {
        while !b.is_empty() {
            let n = b.len().min(MAX_CHUNK);
            if self.out.len() + HEADER + n <= OUT_BATCH {
                crate::net::frame::encode(msg::T_DATA, &b[..n], &mut self.out);
            } else {
                crate::net::frame::encode_head(msg::T_DATA, n, &mut self.out);
                let r = self.io.write_all(&self.out).and_then(|_| {
                    self.io.write_all(&b[..n])?;
                    self.io.flush()
                });
                self.clear_out();
                r.map_err(|e| self.io_err("send to", e))?;
            }
            b = &b[n..];
            if self.out.len() >= OUT_BATCH {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Empties the send buffer, giving back what it holds beyond `OUT_KEEP`.
    fn clear_out(&mut self) {
        self.out.clear();
        self.out.shrink_to(OUT_KEEP);
    }

    /// Queues a message and writes everything queued.
    pub fn send(&mut self, m: &Msg) -> io::Result<()> {
        self.queue(m)?;
        self.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self.io.write_all(&self.out).and_then(|_| self.io.flush());
        self.clear_out();
        r.map_err(|e| self.io_err("send to", e))
    }

    /// The next message (what was queued is written first).
    pub fn recv(&mut self) -> io::Result<Msg> {
        self.flush()?;
        let mut h = [0u8; HEADER];
        if let Err(e) = self.io.read_exact(&mut h) {
            return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed by peer {}", self.peer),
                )
            } else {
                self.io_err("receive from", e)
            });
        }
        if !msg::known(h[0]) {
            return Err(proto(&self.peer, ProtoError::UnknownType(h[0])));
        }
        let len = u32::from_le_bytes(h[1..5].try_into().expect("4 bytes")) as usize;
        if len > MAX_PAYLOAD {
            let e = ProtoError::Oversize { len: len as u64 };
            return Err(proto(&self.peer, e));
        }
        let mut payload = vec![0u8; len];
        self.io.read_exact(&mut payload).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                let e = ProtoError::Truncated {
                    have: HEADER,
                    need: HEADER + len,
                };
                proto(&self.peer, e)
            } else {
                self.io_err("receive from", e)
            }
        })?;
        Msg::decode(&Frame {
            kind: h[0],
            payload,
        })
        .map_err(|e| proto(&self.peer, e))
    }
}

/// Whether the client's certificate (already checked against the CA) names `node`.
fn names(cert: Option<&CertificateDer<'static>>, node: &str) -> Result<(), String> {
    let Some(der) = cert else {
        return Err("no client certificate".into());
    };
    let name = ServerName::try_from(node.to_string())
        .map_err(|e| format!("node name '{node}' is not a certificate name: {e}"))?;
    let ee = webpki::EndEntityCert::try_from(der).map_err(|e| format!("certificate: {e}"))?;
    ee.verify_is_valid_for_subject_name(&name).map_err(|_| {
        format!(
            "the client's certificate does not name node '{node}' (ferry certs issue DIR {node})"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Keeps what is written, and the largest single write.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Read for Sink {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
    }

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let mut g = self.0.lock().unwrap();
            g.0.extend_from_slice(b);
            g.1 = g.1.max(b.len());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The frames in `b`: (type, payload).
    fn frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let len = u32::from_le_bytes(b[1..5].try_into().unwrap()) as usize;
            out.push((b[0], b[HEADER..HEADER + len].to_vec()));
            b = &b[HEADER + len..];
        }
        out
    }

    #[test]
    fn the_send_buffer_stays_small_whatever_is_sent_and_the_frames_are_the_same() {
        let sink = Sink::default();
        let mut w = Wire::new(Box::new(sink.clone()), "p".into(), Duration::from_secs(1));
        let body: Vec<u8> = (0..3 * MAX_CHUNK + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut sent = Vec::new();
        // small objects (kept together), then big chunks (straight through), then a big batch
        // of small messages
        for part in [&body[..4096], &body[4096..9000], &body[9000..]] {
            w.queue_data(part).unwrap();
            assert!(w.out.capacity() <= OUT_BATCH, "{}", w.out.capacity());
            sent.push(part.to_vec());
        }
        w.send(&Msg::End { len: 1, hash: 2 }).unwrap();
        assert!(w.out.capacity() <= OUT_KEEP, "kept {}", w.out.capacity());
        for i in 0..20_000u64 {
            w.queue(&Msg::End { len: i, hash: i }).unwrap();
            assert!(w.out.capacity() <= 2 * OUT_BATCH, "{}", w.out.capacity());
        }
        w.flush().unwrap();
        assert!(w.out.capacity() <= OUT_KEEP, "kept {}", w.out.capacity());
        let (bytes, widest) = sink.0.lock().unwrap().clone();
        assert!(
            widest >= MAX_CHUNK,
            "a big chunk is one write, not copied in pieces"
        );
        let fs = frames(&bytes);
        let data: Vec<u8> = fs
            .iter()
            .take_while(|(k, _)| *k == msg::T_DATA)
            .flat_map(|(_, p)| p.clone())
            .collect();
        assert_eq!(data, body, "the bytes, in order");
        assert!(
            fs.iter()
                .filter(|(k, _)| *k == msg::T_DATA)
                .all(|(_, p)| !p.is_empty() && p.len() <= MAX_CHUNK)
        );
        let ends = fs.iter().filter(|(k, _)| *k != msg::T_DATA).count();
        assert_eq!(ends, 20_001);
        assert_eq!(
            fs.len(),
            ends + fs.iter().filter(|(k, _)| *k == msg::T_DATA).count()
        );
    }
}
