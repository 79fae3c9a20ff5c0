//! One TLS connection carrying protocol messages, driven by poll(2) on a non-blocking socket
//! from one thread. rustls is user-space TLS working on buffers (read_tls / write_tls), so the
//! same `Connection` can later be fed by an io_uring socket driver instead of these calls.
//!
//! Outgoing messages are gathered into one plaintext buffer and handed to TLS in large
//! pieces (many small files' frames per TLS record and per send). While a send waits for
//! the socket, incoming bytes are still read and decoded, so two peers writing at once can
//! never deadlock.

use super::frame::{MAX_PAYLOAD, ProtoError};
use super::msg::{Msg, MsgDecoder};
use std::collections::VecDeque;
use std::io::{self, BufRead, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Plaintext gathered before it is pushed through TLS.
const OUT_BATCH: usize = 256 * 1024;
/// Bytes read from the socket per call.
const RBUF: usize = 256 * 1024;
/// A Data frame at least this big is handed to TLS from the caller's buffer, not gathered.
const DIRECT_MIN: usize = 64 * 1024;
/// Encrypted records rustls holds before they are written: its default (64 KiB) is a write
/// per four records; 1 MiB no longer fits the cache between encryption and the send (sender
/// CPU 0.91 -> 1.70 s/GB on loopback), 256 KiB measured best (0.86).
const TLS_BUFFER: usize = 256 * 1024;
/// Decoded messages' bytes read ahead of the caller; past this the socket is left unread
/// (backpressure on the peer) instead of buffering without bound.
const READ_AHEAD: usize = 8 << 20;

pub struct Conn {
    /// The socket driven through io_uring (None: poll(2) and read/write). Declared before
    /// `sock`: it drops first, while the socket is still open.
    ring: Option<Box<super::ring::SockRing>>,
    sock: TcpStream,
    tls: rustls::Connection,
    dec: MsgDecoder,
    out: Vec<u8>,
    inbox: VecDeque<Msg>,
    inbox_bytes: usize,
    /// Who is at the other end (for messages).
    pub peer: String,
    /// How long a wait for the peer may take before the connection is declared stalled.
    pub idle: Duration,
    /// A push session's temp-name token (from the server's Ready): named stale on a reconnect.
    pub session: Option<crate::temp::Token>,
    eof: bool,
    /// The peer's stream went bad after the messages in the inbox (reported after them).
    broken: Option<ProtoError>,
    /// Bytes read from the socket; rbuf[rstart..rend] not yet given to TLS.
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// `READ_AHEAD` (tests set less, to reach the limit with little data).
    read_ahead: usize,
}

fn proto(e: ProtoError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn msg_size(m: &Msg) -> usize {
    match m {
        Msg::Data { bytes } => bytes.len() + 16,
        _ => 64,
    }
}

impl Conn {
    /// The error of a peer that took no bytes within the idle limit.
    fn stalled(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{} accepted no data for {:?}", self.peer, self.idle),
        )
    }

    /// The error for a reply this side's protocol state does not take: the peer's own
    /// `Error` says why it stopped; anything else is a protocol violation.
    pub fn refused(&self, m: Msg) -> io::Error {
        match m {
            Msg::Error { msg } => io::Error::other(format!("{} failed: {msg}", self.peer)),
            other => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: unexpected {other:?}", self.peer),
            ),
        }
    }

    pub fn new(sock: TcpStream, mut tls: rustls::Connection, peer: String) -> io::Result<Conn> {
        tls.set_buffer_limit(Some(TLS_BUFFER));
        sock.set_nodelay(true)?;
        keepalive(&sock);
        let ring = ring_for(&sock);
        sock.set_nonblocking(ring.is_none())?;
        Ok(Conn {
            ring,
            sock,
            tls,
            dec: MsgDecoder::new(),
            out: Vec::with_capacity(OUT_BATCH + MAX_PAYLOAD),
            inbox: VecDeque::new(),
            inbox_bytes: 0,
            peer,
            idle: Duration::from_secs(60),
            session: None,
            eof: false,
            broken: None,
            rbuf: vec![0; RBUF],
            rstart: 0,
            rend: 0,
            read_ahead: READ_AHEAD,
        })
    }

    /// Whether this connection's socket is driven through io_uring (else poll(2)).
    pub fn uses_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// The socket (to poll whether the peer hung up).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> io::Error {
        io::Error::other(format!("{what} {}: {e}", self.peer))
    }

    /// A socket error, keeping its kind (a reset or refused connection is worth a retry).
    fn sock_err(&self, what: &str, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("{what} {}: {e}", self.peer))
    }

    /// Queues a message; it is written once enough is gathered or on [`Conn::flush`].
    pub fn send(&mut self, m: &Msg) -> io::Result<()> {
        m.encode(&mut self.out);
        if self.out.len() >= OUT_BATCH {
            self.push_out()?;
        }
        Ok(())
    }

    /// Queues a Data frame of `bytes`. A big one goes to TLS straight from `bytes`, behind
    /// what was gathered before it (no copy into the batch).
    pub fn send_data(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() >= DIRECT_MIN {
            super::msg::encode_data_head(bytes.len(), &mut self.out);
            return self.push_with(bytes);
        }
        super::msg::encode_data(bytes, &mut self.out);
        if self.out.len() >= OUT_BATCH {
            self.push_out()?;
        }
        Ok(())
    }

    /// Writes everything queued to the socket.
    pub fn flush(&mut self) -> io::Result<()> {
        self.push_out()
    }

    fn push_out(&mut self) -> io::Result<()> {
        self.push_with(&[])
    }

    /// Hands the gathered plaintext and then `extra` to TLS and writes TLS records until
    /// none is left (so rustls never buffers more than [`TLS_BUFFER`]), reading meanwhile.
    fn push_with(&mut self, extra: &[u8]) -> io::Result<()> {
        let deadline = Instant::now() + self.idle;
        let (mut off, mut xoff) = (0, 0);
        loop {
            if off < self.out.len() || xoff < extra.len() {
                // rustls takes what fits under its buffer limit; the rest after a drain.
                let bufs = [IoSlice::new(&self.out[off..]), IoSlice::new(&extra[xoff..])];
                let n = self
                    .tls
                    .writer()
                    .write_vectored(&bufs)
                    .map_err(|e| self.err("tls write to", e))?;
                let a = n.min(self.out.len() - off);
                (off, xoff) = (off + a, xoff + n - a);
            }
            if !self.tls.wants_write() {
                if off >= self.out.len() && xoff >= extra.len() {
                    break;
                }
                continue;
            }
            match self.write_tls() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(true, deadline)?;
                    self.read_some()?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.sock_err("send to", e)),
            }
        }
        self.out.clear();
        if let Some(r) = self.ring.as_mut() {
            // What is gathered in the ring's buffer goes out now.
            let sent = io::Write::flush(r.as_mut()).and_then(|()| r.turn(false, Duration::ZERO));
            sent.map_err(|e| self.sock_err("send to", e))?;
        }
        Ok(())
    }

    /// Writes TLS records to the socket (or into the ring's send buffers).
    fn write_tls(&mut self) -> io::Result<usize> {
        match self.ring.as_mut() {
            Some(r) => self.tls.write_tls(r.as_mut()),
            None => self.tls.write_tls(&mut self.sock),
        }
    }

    /// The next message, or Ok(None) if none arrives within `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> io::Result<Option<Msg>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.inbox.pop_front() {
                self.inbox_bytes -= msg_size(&m);
                return Ok(Some(m));
            }
            if let Some(e) = self.broken.take() {
                return Err(proto(e));
            }
            if self.eof {
                return Err(match self.dec.finish() {
                    // Cut inside a frame: the connection broke (worth a reconnect).
                    Err(e) => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("from {}: {e}", self.peer),
                    ),
                    Ok(()) => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("connection closed by {}", self.peer),
                    ),
                });
            }
            if self.tls.wants_write() {
                self.push_out()?;
            }
            if self.read_some()? {
                continue;
            }
            // push_out reads while the socket is full: what it decoded is here to take, and a
            // wait would sleep on an empty socket with it (both ends waiting until the idle
            // limit, the peer's Flush among the messages)
            if !self.inbox.is_empty() || self.broken.is_some() || self.eof {
                continue;
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            if !self.wait(false, deadline)? {
                return Ok(None);
            }
        }
    }

    /// The next message; a peer silent for `idle` is an error (stalled).
    pub fn recv(&mut self) -> io::Result<Msg> {
        match self.recv_timeout(self.idle)? {
            Some(m) => Ok(m),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} sent nothing for {:?}", self.peer, self.idle),
            )),
        }
    }

    /// Hands a received Data message's bytes back once used (their buffer is reused).
    pub fn recycle(&mut self, bytes: Vec<u8>) {
        self.dec.recycle(bytes);
    }

    /// A message if one is already here (no waiting).
    pub fn try_recv(&mut self) -> io::Result<Option<Msg>> {
        if self.inbox.is_empty() && !self.eof {
            self.read_some()?;
        }
        if self.inbox.is_empty() && self.broken.is_none() && !self.eof {
            return Ok(None);
        }
        self.recv_timeout(Duration::ZERO)
    }

    /// Reads what the socket has (into our own buffer, up to [`RBUF`] per call: rustls alone
    /// reads one record per syscall), decrypts, decodes into the inbox. true: progress made.
    fn read_some(&mut self) -> io::Result<bool> {
        if let Some(mut r) = self.ring.take() {
            let res = self.read_ring(&mut r);
            self.ring = Some(r);
            return res;
        }
        let mut progress = false;
        while self.inbox_bytes < self.read_ahead {
            if self.rstart == self.rend {
                match self.sock.read(&mut self.rbuf) {
                    Ok(0) => {
                        self.eof = true;
                        progress = true;
                        break;
                    }
                    Ok(n) => (self.rstart, self.rend, progress) = (0, n, true),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.sock_err("receive from", e)),
                }
            }
            let mut pending = &self.rbuf[self.rstart..self.rend];
            let n = self
                .tls
                .read_tls(&mut pending)
                .map_err(|e| self.err("TLS read from", e))?;
            self.rstart += n;
            // Bytes left from an earlier read (the inbox was full then) decode into messages
            // with no socket read: that is progress too, or the caller would wait on the
            // socket with them in the inbox.
            progress |= n > 0;
            self.process()?;
        }
        Ok(progress)
    }

    /// Decrypts what TLS was given and decodes it into the inbox.
    fn process(&mut self) -> io::Result<()> {
        if let Err(e) = self.tls.process_new_packets() {
            // Tell the peer why (the alert), then give up.
            let mut ring = self.ring.take();
            let _ = last_words(&mut self.tls, &self.sock, ring.as_deref_mut());
            self.ring = ring;
            return Err(self.err("TLS with", e));
        }
        self.drain_plaintext()
    }

    /// [`Conn::read_some`] on the ring: TLS reads straight from the recv'd buffers.
    fn read_ring(&mut self, r: &mut super::ring::SockRing) -> io::Result<bool> {
        let room = self.inbox_bytes < self.read_ahead;
        r.turn(room, Duration::ZERO)
            .map_err(|e| self.sock_err("receive from", e))?;
        let mut progress = false;
        while self.inbox_bytes < self.read_ahead {
            let Some(mut bytes) = r.received() else {
                if r.eof && !self.eof {
                    (self.eof, progress) = (true, true);
                }
                break;
            };
            let n = self
                .tls
                .read_tls(&mut bytes)
                .map_err(|e| self.err("TLS read from", e))?;
            r.consume(n);
            progress = true;
            self.ring_process(r)?;
        }
        Ok(progress)
    }

    /// [`Conn::process`] while the ring is taken out of `self`.
    fn ring_process(&mut self, r: &mut super::ring::SockRing) -> io::Result<()> {
        if let Err(e) = self.tls.process_new_packets() {
            let _ = last_words(&mut self.tls, &self.sock, Some(r));
            return Err(self.err("TLS with", e));
        }
        self.drain_plaintext()
    }

    /// Decodes the plaintext TLS has, straight from its buffers.
    fn drain_plaintext(&mut self) -> io::Result<()> {
        loop {
            let mut r = self.tls.reader();
            let n = match r.fill_buf() {
                Ok([]) => {
                    self.eof = true;
                    break;
                }
                Ok(chunk) => {
                    if self.broken.is_none() {
                        self.dec.push(chunk);
                    }
                    chunk.len()
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.eof = true;
                    break;
                }
                Err(e) => return Err(self.err("TLS read from", e)),
            };
            r.consume(n);
            self.decode()?;
        }
        Ok(())
    }

    /// Moves the decoded messages into the inbox.
    fn decode(&mut self) -> io::Result<()> {
        while self.broken.is_none() {
            match self.dec.next_msg() {
                Ok(Some(m)) => {
                    self.inbox_bytes += msg_size(&m);
                    self.inbox.push_back(m);
                }
                Ok(None) => break,
                Err(e) => self.broken = Some(e),
            }
        }
        Ok(())
    }

    /// poll(2) for readable (and writable if `write`) until `deadline`. false: timed out.
    fn wait(&mut self, write: bool, deadline: Instant) -> io::Result<bool> {
        if let Some(mut r) = self.ring.take() {
            let res = self.wait_ring(&mut r, write, deadline);
            self.ring = Some(r);
            return res;
        }
        if self.rstart < self.rend && self.inbox_bytes < self.read_ahead {
            return Ok(true); // bytes already here: no need to wait for the socket
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            if write {
                return Err(self.stalled());
            }
            return Ok(false);
        }
        // A full inbox is not read until the caller takes from it (no busy loop on POLLIN).
        let mut events = if self.inbox_bytes < self.read_ahead {
            libc::POLLIN
        } else {
            0
        };
        if write {
            events |= libc::POLLOUT;
        }
        let mut p = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms.max(1)) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(true);
            }
            return Err(self.err("poll", e));
        }
        Ok(r > 0)
    }

    /// [`Conn::wait`] on the ring: until an op completes (a send's buffer is free, bytes
    /// arrived) or `deadline`.
    fn wait_ring(
        &mut self,
        r: &mut super::ring::SockRing,
        write: bool,
        deadline: Instant,
    ) -> io::Result<bool> {
        let room = self.inbox_bytes < self.read_ahead;
        if room && r.received().is_some() {
            return Ok(true);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if write {
                    return Err(self.stalled());
                }
                return Ok(false);
            }
            match r.turn(room, left) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => return Err(self.sock_err("socket of", e)),
            }
        }
    }

    /// Completes the TLS handshake (or fails with the reason: unknown CA, no certificate...).
    pub fn handshake(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + self.idle;
        while self.tls.is_handshaking() {
            if self.tls.wants_write() {
                self.push_out()?;
            }
            if !self.tls.is_handshaking() {
                break;
            }
            if self.read_some()? {
                if self.eof && self.tls.is_handshaking() {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("TLS handshake with {}: connection closed", self.peer),
                    ));
                }
                continue;
            }
            if !self.wait(false, deadline)? {
                return Err(self.err("TLS handshake with", "timed out"));
            }
        }
        self.push_out()
    }

    /// Says goodbye (close_notify) and flushes; errors are moot at this point.
    pub fn close(mut self) {
        let _ = self.push_out();
        self.tls.send_close_notify();
        let _ = self.push_out();
        if let Some(r) = self.ring.as_mut() {
            let _ = r.drain(Instant::now() + self.idle);
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }
}

/// How long a connection that failed waits for its last records (the alert saying why) to
/// leave before it is closed.
const LAST_WORDS: Duration = Duration::from_millis(500);

/// Sends every record TLS holds (after a failed handshake: the change_cipher_spec and the
/// alert, which rustls queues as separate pieces) to the socket or the ring, waiting up to
/// [`LAST_WORDS`] for room; a record left unsent would leave the peer with a bare EOF or a
/// reset instead of the reason.
fn last_words(
    tls: &mut rustls::Connection,
    sock: &TcpStream,
    mut ring: Option<&mut super::ring::SockRing>,
) -> io::Result<()> {
    let deadline = Instant::now() + LAST_WORDS;
    while tls.wants_write() {
        let wrote = match ring.as_deref_mut() {
            Some(r) => tls.write_tls(r),
            None => tls.write_tls(&mut &*sock),
        };
        match wrote {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::from(io::ErrorKind::TimedOut));
                }
                match ring.as_deref_mut() {
                    Some(r) => r.turn(false, left).map(|_| ())?,
                    None => writable(sock, left).map(|_| ())?,
                }
            }
            Err(e) => return Err(e),
        }
    }
    match ring {
        Some(r) => r.drain(deadline),
        None => Ok(()),
    }
}

/// poll(2) until `sock` takes bytes or `left` passes. false: timed out.
fn writable(sock: &TcpStream, left: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    match unsafe { libc::poll(&mut p, 1, ms) } {
        r if r < 0 => {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => Ok(true),
                _ => Err(e),
            }
        }
        r => Ok(r > 0),
    }
}

/// Whether connections go through io_uring: `FERRY_NET_IO=uring` (or `poll`, the
/// default until measured otherwise); set by [`set_io`] for the whole process.
static NET_IO: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
const IO_UNSET: u8 = 0;
const IO_POLL: u8 = 1;
const IO_RING: u8 = 2;

/// Chooses the connections' socket path for this process (`uring`: io_uring when the kernel
/// allows it, else poll with a notice).
pub fn set_io(ring: bool) {
    let v = if ring { IO_RING } else { IO_POLL };
    NET_IO.store(v, std::sync::atomic::Ordering::Relaxed);
}

fn wants_ring() -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let mut v = NET_IO.load(Relaxed);
    if v == IO_UNSET {
        v = match std::env::var("FERRY_NET_IO").as_deref() {
            Ok("uring") => IO_RING,
            _ => IO_POLL,
        };
        NET_IO.store(v, Relaxed);
    }
    v == IO_RING
}

/// The socket's ring when the network path is io_uring (None: poll; a ring that cannot be
/// made, e.g. io_uring disabled, falls back to poll and says so once).
fn ring_for(sock: &TcpStream) -> Option<Box<super::ring::SockRing>> {
    if !wants_ring() {
        return None;
    }
    match super::ring::SockRing::new(sock.as_raw_fd()) {
        Ok(r) => Some(Box::new(r)),
        Err(e) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| eprintln!("ferry: io_uring for sockets unavailable ({e}): poll(2)"));
            None
        }
    }
}

/// TCP keepalive so a dead peer is noticed even when we only wait for it.
fn keepalive(sock: &TcpStream) {
    let on: libc::c_int = 1;
    // SAFETY: valid fd and option value.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes left in the read buffer when the inbox reached its limit decode into messages
    /// later without a socket read: the receiver must take them, not wait on the socket
    /// (which is empty: the sender has sent everything and waits for an answer).
    #[test]
    fn messages_left_in_the_read_buffer_are_taken_without_waiting_on_the_socket() {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca");
        crate::net::certs::init(&ca).unwrap();
        for n in ["127.0.0.1", "client"] {
            crate::net::certs::issue(&ca, n, 0, 2).unwrap();
        }
        let server = crate::net::tls::server_config(&ca.join("127.0.0.1")).unwrap();
        let client = crate::net::tls::client_config(&ca.join("client")).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let rx = std::thread::spawn(move || {
            let mut c = crate::net::session::accept(l.accept().unwrap().0, server).unwrap();
            c.read_ahead = 32 << 10;
            // everything is in the socket before the first read
            std::thread::sleep(Duration::from_millis(300));
            let (mut data, start) = (0, Instant::now());
            loop {
                match c.recv_timeout(Duration::from_secs(5)).unwrap() {
                    Some(Msg::Data { bytes }) => data += bytes.len(),
                    Some(Msg::Flush) => break,
                    Some(other) => panic!("unexpected {other:?}"),
                    None => panic!("waited 5 s with {data} bytes taken: the Flush is stuck"),
                }
            }
            (data, start.elapsed(), c)
        });
        let mut c = crate::net::session::connect("127.0.0.1", port, client).unwrap();
        let chunk = vec![7u8; 4096];
        for _ in 0..25 {
            c.send_data(&chunk).unwrap();
        }
        c.send(&Msg::Flush).unwrap();
        c.flush().unwrap();
        let (data, took, _keep) = rx.join().unwrap();
        assert_eq!(data, 25 * 4096);
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
}
