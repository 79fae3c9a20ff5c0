//! Keep-alive HTTP/1.1 connections to one endpoint (etcd's JSON gateway): a few idle
//! `TcpStream`s kept between requests, so a chain of etcd calls does not pay a connect and a
//! close each. A connection goes back to the pool only after a complete reply whose end was
//! known (Content-Length or chunked) and that the server did not close. A request on a reused
//! connection that fails before any reply byte arrives (the server closed the idle one: EOF,
//! ECONNRESET, EPIPE) is sent once more on a fresh connection; a failure after that point is
//! reported, never retried here. Connecting, sending and reading share the call's deadline,
//! the retry included.

use super::http::{Deadline, post_request, read_reply_head};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most idle connections kept per endpoint.
pub const MAX_IDLE: usize = 4;

pub struct Conns {
    addr: String,
    idle: Mutex<Vec<TcpStream>>,
    max_idle: usize,
    connects: AtomicU64,
}

/// How a request on one connection failed.
enum Fail {
    /// Before any reply byte, with the peer gone: the request may be sent again, once.
    Closed(std::io::Error),
    /// Anything else: the server may have acted on the request.
    Final(std::io::Error),
}

/// The peer closed or reset the connection (what a server closing an idle one looks like).
fn peer_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::BrokenPipe
            | ErrorKind::ConnectionAborted
    )
}

/// A failure at `stage` before any reply byte: one that may be retried if the peer is gone.
fn failed(stage: &str, e: std::io::Error) -> Fail {
    let gone = peer_gone(&e);
    let e = at(stage, e);
    if gone {
        Fail::Closed(e)
    } else {
        Fail::Final(e)
    }
}

/// `stage: error`, kind (and errno, in the text) kept.
fn at(stage: &str, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{stage}: {e}"))
}

/// An idle connection still open, with nothing unread on it (a peek that must not block).
fn open_and_quiet(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: a valid socket fd and a 1-byte buffer that outlives the call.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == ErrorKind::WouldBlock
}

impl Conns {
    /// `addr`: `host:port`; at most `max_idle` (≤ MAX_IDLE) connections are kept idle.
    pub fn new(addr: &str, max_idle: usize) -> Conns {
        assert!(max_idle <= MAX_IDLE, "max_idle {max_idle} > {MAX_IDLE}");
        Conns {
            addr: addr.to_string(),
            idle: Mutex::new(Vec::with_capacity(max_idle)),
            max_idle,
            connects: AtomicU64::new(0),
        }
    }

    /// Connections opened so far.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Connections idle in the pool now.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// POSTs `body` to `http://addr{path}`; (status, body), all within `timeout`.
    pub fn post(
        &self,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let until = Instant::now() + timeout;
        let req = post_request(&self.addr, path, body, false);
        let mut closed = None;
        if let Some(s) = self.take() {
            match self.exchange(s, &req, until) {
                Ok(r) => return Ok(r),
                Err(Fail::Final(e)) => return Err(e),
                Err(Fail::Closed(e)) => closed = Some(e),
            }
        }
        let s = self.connect(until)?;
        self.exchange(s, &req, until).map_err(|f| {
            let (Fail::Closed(e) | Fail::Final(e)) = f;
            match closed {
                Some(c) => at(&format!("after a reused connection was closed ({c})"), e),
                None => e,
            }
        })
    }

    fn take(&self) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = idle.pop() {
            if open_and_quiet(&s) {
                return Some(s);
            }
        }
        None
    }

    fn give_back(&self, s: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(s);
        }
        assert!(idle.len() <= self.max_idle);
    }

    fn connect(&self, until: Instant) -> std::io::Result<TcpStream> {
        let sa = self
            .addr
            .to_socket_addrs()
            .map_err(|e| at("resolve", e))?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{}: no address", self.addr)))?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                ErrorKind::TimedOut,
                "connect: deadline passed",
            ));
        }
        let s = TcpStream::connect_timeout(&sa, left).map_err(|e| at("connect", e))?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        s.set_nodelay(true).map_err(|e| at("set TCP_NODELAY", e))?;
        Ok(s)
    }

    /// One request and its reply on `s`; `s` goes back to the pool when it may carry another.
    fn exchange(&self, s: TcpStream, req: &[u8], until: Instant) -> Result<(u16, Vec<u8>), Fail> {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let e = std::io::Error::new(ErrorKind::TimedOut, "send: deadline passed");
            return Err(Fail::Final(e));
        }
        let sent = s
            .set_write_timeout(Some(left.max(Duration::from_millis(1))))
            .and_then(|_| (&s).write_all(req));
        if let Err(e) = sent {
            return Err(failed("send", e));
        }
        let mut r = BufReader::new(Deadline { s: &s, until });
        match r.fill_buf() {
            Ok([]) => {
                let e = std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "reply: connection closed before any reply byte",
                );
                return Err(Fail::Closed(e));
            }
            Ok(_) => {}
            Err(e) => return Err(failed("reply", e)),
        }
        let (head, body) = read_reply_head(&mut r).map_err(|e| Fail::Final(at("reply", e)))?;
        let clean = r.buffer().is_empty();
        drop(r);
        if head.reusable() && clean {
            self.give_back(s);
        }
        Ok((head.status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::http::read_headers;
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    /// What the test server does with one request.
    #[derive(Clone, Copy)]
    enum Act {
        /// Replies (Content-Length), keeps the connection.
        Reply,
        /// Replies, then closes the connection (as a server closing an idle one).
        ReplyThenClose,
        /// Replies with `Connection: close` and closes.
        ReplyClose,
        /// Replies to EOF (no length), closes.
        ReplyToEof,
        /// Reads the request and closes without a byte of reply.
        Drop,
        /// Sends half a reply and closes.
        Half,
    }

    #[derive(Default)]
    struct Seen {
        accepts: AtomicUsize,
        requests: AtomicUsize,
    }

    /// Reads one request; false at EOF.
    fn read_request(r: &mut BufReader<TcpStream>) -> bool {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        let (len, _) = read_headers(r).expect("request headers");
        let mut b = vec![0; len.expect("request length")];
        r.read_exact(&mut b).expect("request body");
        true
    }

    /// Answers one request as `act`; false when the connection is done.
    fn act(c: &mut TcpStream, act: Act, n: usize) -> bool {
        let body = format!("{{\"n\":{n}}}");
        let reply = |extra: &str, len: bool| {
            let l = if len {
                format!("Content-Length: {}\r\n", body.len())
            } else {
                String::new()
            };
            format!("HTTP/1.1 200 OK\r\n{l}{extra}\r\n{body}")
        };
        let out = match act {
            Act::Reply | Act::ReplyThenClose => reply("", true),
            Act::ReplyClose => reply("Connection: close\r\n", true),
            Act::ReplyToEof => reply("", false),
            Act::Drop => return false,
            Act::Half => "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"n\"".to_string(),
        };
        c.write_all(out.as_bytes()).expect("reply");
        matches!(act, Act::Reply)
    }

    /// A server taking connections one at a time, answering request k as `script[k]`.
    fn server(script: Vec<Act>) -> (String, Arc<Seen>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = Arc::new(Seen::default());
        let s2 = seen.clone();
        std::thread::spawn(move || {
            let mut k = 0;
            while let Ok((c, _)) = l.accept() {
                s2.accepts.fetch_add(1, Ordering::SeqCst);
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut c = c;
                while k < script.len() && read_request(&mut r) {
                    s2.requests.fetch_add(1, Ordering::SeqCst);
                    k += 1;
                    if !act(&mut c, script[k - 1], k) {
                        break;
                    }
                }
            }
        });
        (addr, seen)
    }

    const T: Duration = Duration::from_secs(2);

    fn body(n: usize) -> Vec<u8> {
        format!("{{\"n\":{n}}}").into_bytes()
    }

    #[test]
    fn calls_reuse_one_connection() {
        let (addr, seen) = server(vec![Act::Reply; 20]);
        let c = Conns::new(&addr, 2);
        for n in 1..=20 {
            assert_eq!(c.post("/x", b"{}", T).unwrap(), (200, body(n)));
        }
        assert_eq!(seen.accepts.load(Ordering::SeqCst), 1);
        assert_eq!(c.connects(), 1);
        assert_eq!(c.idle(), 1);
    }

    #[test]
    fn replies_that_end_the_connection_are_not_reused() {
        let (addr, seen) = server(vec![Act::ReplyClose, Act::ReplyToEof, Act::Reply]);
        let c = Conns::new(&addr, 2);
        for n in 1..=3 {
            assert_eq!(c.post("/x", b"{}", T).unwrap(), (200, body(n)));
        }
        assert_eq!(seen.accepts.load(Ordering::SeqCst), 3);
        assert_eq!(c.connects(), 3);
    }

    #[test]
    fn an_idle_connection_the_server_closed_is_replaced() {
        let (addr, seen) = server(vec![Act::ReplyThenClose, Act::Reply]);
        let c = Conns::new(&addr, 2);
        assert_eq!(c.post("/x", b"{}", T).unwrap(), (200, body(1)));
        std::thread::sleep(Duration::from_millis(50)); // the server's FIN arrives
        assert_eq!(c.post("/x", b"{}", T).unwrap(), (200, body(2)));
        assert_eq!(seen.accepts.load(Ordering::SeqCst), 2);
        assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_reused_connection_closed_before_replying_is_retried_once() {
        // request 2 meets a close with no reply byte (the idle close racing the request)
        let (addr, seen) = server(vec![Act::Reply, Act::Drop, Act::Reply]);
        let c = Conns::new(&addr, 2);
        assert_eq!(c.post("/x", b"{}", T).unwrap(), (200, body(1)));
        assert_eq!(c.post("/x", b"{}", T).unwrap(), (200, body(3)));
        assert_eq!(seen.accepts.load(Ordering::SeqCst), 2);
        assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
        // the retry, closed too: an error, no third try
        let (addr, seen) = server(vec![Act::Reply, Act::Drop, Act::Drop, Act::Reply]);
        let c = Conns::new(&addr, 2);
        assert_eq!(c.post("/x", b"{}", T).unwrap(), (200, body(1)));
        let e = c.post("/x", b"{}", T).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "{e}");
        assert!(e.to_string().contains("after a reused connection"), "{e}");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
        assert_eq!(seen.accepts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_fresh_connection_closed_after_the_request_is_an_error_not_a_resend() {
        let (addr, seen) = server(vec![Act::Drop, Act::Reply]);
        let c = Conns::new(&addr, 2);
        let e = c.post("/x", b"{}", T).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "{e}");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
        assert_eq!(seen.accepts.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_partly_read_reply_is_an_error_not_a_resend() {
        let (addr, seen) = server(vec![Act::Reply, Act::Half, Act::Reply]);
        let c = Conns::new(&addr, 2);
        assert_eq!(c.post("/x", b"{}", T).unwrap(), (200, body(1)));
        let e = c.post("/x", b"{}", T).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "{e}");
        assert!(e.to_string().starts_with("reply: "), "{e}");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
        assert_eq!(seen.accepts.load(Ordering::SeqCst), 1);
        assert_eq!(c.idle(), 0);
    }

    #[test]
    fn the_pool_keeps_at_most_its_bound() {
        // a server answering each connection on its own thread, slowly, so calls overlap
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            while let Ok((c, _)) = l.accept() {
                std::thread::spawn(move || {
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let mut c = c;
                    while read_request(&mut r) {
                        std::thread::sleep(Duration::from_millis(150));
                        if !act(&mut c, Act::Reply, 0) {
                            break;
                        }
                    }
                });
            }
        });
        let c = Arc::new(Conns::new(&addr, MAX_IDLE));
        let calls: Vec<_> = (0..10)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || c.post("/x", b"{}", T).map(|r| r.0))
            })
            .collect();
        for t in calls {
            assert_eq!(t.join().unwrap().unwrap(), 200);
        }
        assert_eq!(c.connects(), 10);
        assert_eq!(c.idle(), MAX_IDLE);
        // the next calls use the idle ones
        for _ in 0..3 {
            c.post("/x", b"{}", T).unwrap();
        }
        assert_eq!(c.connects(), 10);
    }

    #[test]
    #[should_panic(expected = "max_idle")]
    fn a_bound_over_the_limit_is_refused() {
        Conns::new("127.0.0.1:1", MAX_IDLE + 1);
    }

    #[test]
    fn a_refused_connect_names_the_stage_and_errno() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let e = Conns::new(&addr, 1).post("/x", b"{}", T).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        assert!(e.to_string().starts_with("connect: "), "{e}");
        assert!(e.to_string().contains("os error 111"), "{e}");
    }
}
