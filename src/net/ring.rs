//! A TLS connection's socket driven through io_uring: rustls's records are written into
//! registered buffers and sent from them (one send in flight per socket, so bytes stay in
//! order, while the next buffer fills), and the socket is read by recv ops into buffers that
//! rustls reads from. [`super::conn::Conn`] uses it instead of poll(2) and read/write calls
//! when io_uring is on for the network (`FERRY_NET_IO=uring`); the poll path is the fallback.

use crate::io::uring::UringBackend;
use crate::io::{Arena, Backend, Completion, Op};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Bytes per buffer: one send or one recv.
const BUF: usize = 256 * 1024;
/// Send buffers (one in flight, one filling) and recv buffers after them.
const SENDS: u32 = 2;
const RECVS: u32 = 2;
const SEND: u64 = 0;
const RECV: u64 = 1;

pub struct SockRing {
    io: UringBackend,
    fd: RawFd,
    /// The send in flight: (buffer, sent so far, end).
    sending: Option<(u32, usize, usize)>,
    /// The buffer being filled and its length.
    filling: (u32, usize),
    /// A recv in flight into this buffer.
    receiving: Option<u32>,
    /// Received bytes not yet taken: (buffer, start, end), in order.
    ready: VecDeque<(u32, usize, usize)>,
    pub eof: bool,
    /// A failed send or recv: (what, errno); reported by the next call.
    failed: Option<(&'static str, i32)>,
    cq: Vec<Completion>,
    /// The start of every arena buffer (stable for the arena's life).
    ptrs: Vec<*mut u8>,
}

// SAFETY: the ring, its arena and the pointers into it belong to one connection, used by one
// thread at a time (a connection moves to its stream's thread whole).
unsafe impl Send for SockRing {}

impl SockRing {
    /// A ring for socket `fd` (which must stay open while this lives, and be blocking: the
    /// ring waits for it).
    pub fn new(fd: RawFd) -> io::Result<SockRing> {
        UringBackend::probe_sockets()?;
        let mut io =
            UringBackend::movable(Arena::new(BUF, (SENDS + RECVS) as usize), 4)?.for_sockets();
        let ptrs = (0..SENDS + RECVS).map(|b| io.arena().ptr(b, 0)).collect();
        Ok(SockRing {
            ptrs,
            io,
            fd,
            sending: None,
            filling: (0, 0),
            receiving: None,
            ready: VecDeque::new(),
            eof: false,
            failed: None,
            cq: Vec::with_capacity(4),
        })
    }

    fn check(&mut self) -> io::Result<()> {
        match self.failed.take() {
            Some((what, errno)) => {
                let e = io::Error::from_raw_os_error(errno);
                Err(io::Error::new(e.kind(), format!("{what}: {e}")))
            }
            None => Ok(()),
        }
    }

    /// Sends the filled buffer if no send is in flight (and switches to the other one).
    fn kick(&mut self) -> io::Result<()> {
        let (buf, len) = self.filling;
        if self.sending.is_some() || len == 0 {
            return Ok(());
        }
        self.push_send(buf, 0, len)?;
        self.filling = ((buf + 1) % SENDS, 0);
        Ok(())
    }

    fn push_send(&mut self, buf: u32, from: usize, end: usize) -> io::Result<()> {
        let d = Op::sock(self.fd, buf, from as u32, (end - from) as u32);
        self.io.push(Op::Send(d), SEND)?;
        self.sending = Some((buf, from, end));
        Ok(())
    }

    /// Starts a recv when a recv buffer is free.
    fn arm(&mut self) -> io::Result<()> {
        if self.receiving.is_some() || self.eof || self.failed.is_some() {
            return Ok(());
        }
        let Some(buf) = (SENDS..SENDS + RECVS).find(|b| !self.ready.iter().any(|r| r.0 == *b))
        else {
            return Ok(());
        };
        self.io
            .push(Op::Recv(Op::sock(self.fd, buf, 0, BUF as u32)), RECV)?;
        self.receiving = Some(buf);
        Ok(())
    }

    /// Hands queued ops to the kernel and takes what completed, waiting up to `wait` for
    /// one (`recv`: keep a recv in flight). true: something completed.
    pub fn turn(&mut self, recv: bool, wait: Duration) -> io::Result<bool> {
        self.check()?;
        if recv {
            self.arm()?;
        }
        if wait.is_zero() || self.io.in_flight() == 0 {
            self.io.submit(false)?;
        } else {
            self.io.submit_within(wait)?;
        }
        self.cq.clear();
        self.io.reap(&mut self.cq);
        let done = !self.cq.is_empty();
        for i in 0..self.cq.len() {
            let c = self.cq[i];
            self.complete(c)?;
        }
        self.check()?;
        Ok(done)
    }

    fn complete(&mut self, c: Completion) -> io::Result<()> {
        if c.user_data == SEND {
            let (buf, from, end) = self.sending.take().expect("a send in flight");
            if c.result < 0 {
                self.failed = Some(("send", -c.result));
            } else if from + (c.result as usize) < end {
                self.push_send(buf, from + c.result as usize, end)?;
            } else {
                self.kick()?;
            }
        } else {
            let buf = self.receiving.take().expect("a recv in flight");
            match c.result {
                0 => self.eof = true,
                n if n < 0 && -n == libc::EINTR => {}
                n if n < 0 => self.failed = Some(("recv", -n)),
                n => self.ready.push_back((buf, 0, n as usize)),
            }
        }
        Ok(())
    }

    /// The oldest received bytes not yet taken.
    pub fn received(&self) -> Option<&[u8]> {
        let &(buf, start, end) = self.ready.front()?;
        // SAFETY: start..end lies in buffer `buf` (end <= BUF), which no op writes into while
        // it is in `ready`.
        Some(unsafe { std::slice::from_raw_parts(self.ptrs[buf as usize].add(start), end - start) })
    }

    /// `n` of the received bytes were taken.
    pub fn consume(&mut self, n: usize) {
        let front = self.ready.front_mut().expect("bytes were received");
        front.1 += n;
        assert!(front.1 <= front.2);
        if front.1 == front.2 {
            self.ready.pop_front();
        }
    }

    /// Whether everything written has been sent.
    pub fn sent_all(&self) -> bool {
        self.sending.is_none() && self.filling.1 == 0
    }

    /// Sends what is written and waits (up to `deadline`) until it is all sent.
    pub fn drain(&mut self, deadline: Instant) -> io::Result<()> {
        self.kick()?;
        while !self.sent_all() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::from(io::ErrorKind::TimedOut));
            }
            self.turn(false, left)?;
        }
        Ok(())
    }
}

/// rustls writes its records here: into the filling buffer; a full one is sent (or, with a
/// send in flight, the write would block).
impl io::Write for SockRing {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.check()?;
        if self.filling.1 == BUF {
            self.kick()?;
            if self.filling.1 == BUF {
                return Err(io::Error::from(io::ErrorKind::WouldBlock));
            }
        }
        let (buf, len) = self.filling;
        let n = data.len().min(BUF - len);
        // SAFETY: len + n <= BUF: inside the filling buffer, which no op uses until it is
        // sent (the send in flight is always the other one).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptrs[buf as usize].add(len), n)
        };
        self.filling.1 = len + n;
        Ok(n)
    }

    /// All the pieces that fit, in one call (rustls hands over its queued records at once;
    /// the default would take only the first).
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut n = 0;
        for b in bufs.iter().filter(|b| !b.is_empty()) {
            match self.write(b) {
                // A piece taken in part: the rest of it comes first in the next call.
                Ok(k) if k < b.len() => return Ok(n + k),
                Ok(k) => n += k,
                // Both buffers busy: what was taken is reported now.
                Err(e) if n > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.kick()
    }
}

impl Drop for SockRing {
    /// No op may outlive the buffers it uses: a recv waiting for the peer is ended by
    /// shutting the socket's reading side, a send by waiting (bounded); ops still in flight
    /// after that keep the memory (leaked) rather than let the kernel write into freed pages.
    fn drop(&mut self) {
        if self.io.in_flight() == 0 {
            return;
        }
        // SAFETY: shutdown on the socket this ring serves (still open: the Conn drops its
        // ring before its socket).
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.io.in_flight() > 0 && Instant::now() < deadline {
            if self.io.submit_within(Duration::from_millis(100)).is_err() {
                break;
            }
            self.cq.clear();
            self.io.reap(&mut self.cq);
        }
        if self.io.in_flight() > 0 {
            let io = std::mem::replace(
                &mut self.io,
                UringBackend::movable(Arena::new(4096, 1), 1).expect("a tiny ring"),
            );
            std::mem::forget(io);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        (a, l.accept().expect("accept").0)
    }

    /// Writes `data` through the ring (as rustls does: WouldBlock while both buffers are
    /// busy, then a turn) and waits until it is all sent.
    fn send_all(r: &mut SockRing, data: &[u8]) {
        let mut off = 0;
        while off < data.len() {
            match r.write(&data[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    r.turn(false, Duration::from_secs(5)).expect("turn");
                }
                Err(e) => panic!("write: {e}"),
            }
        }
        r.drain(Instant::now() + Duration::from_secs(10))
            .expect("drain");
    }

    #[test]
    fn bytes_go_out_and_come_in_whole_and_in_order() {
        if let Err(e) = UringBackend::probe_sockets() {
            eprintln!("skipped: {e}");
            return;
        }
        let (a, mut b) = pair();
        let mut r = SockRing::new(a.as_raw_fd()).expect("ring");
        let data: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0; (3 << 20) + 17];
            b.read_exact(&mut got).expect("read");
            b.write_all(&got).expect("echo");
            b
        });
        send_all(&mut r, &data);
        let mut back = Vec::new();
        while back.len() < data.len() {
            r.turn(true, Duration::from_secs(5)).expect("turn");
            while let Some(bytes) = r.received() {
                let n = bytes.len().min(1000);
                back.extend_from_slice(&bytes[..n]);
                r.consume(n);
            }
        }
        assert!(back == data, "the echo differs");
        drop(reader.join().expect("reader"));
        while !r.eof {
            r.turn(true, Duration::from_secs(5)).expect("turn");
        }
        assert!(r.received().is_none());
    }

    #[test]
    fn vectored_writes_take_every_piece_in_order_and_stop_at_a_partial_one() {
        if UringBackend::probe_sockets().is_err() {
            return;
        }
        let (a, mut b) = pair();
        let mut r = SockRing::new(a.as_raw_fd()).expect("ring");
        // rustls hands its queued records over at once (change_cipher_spec, then an alert).
        let pieces = [&b"change"[..], b"", b"-cipher", b"-alert"];
        let n = r
            .write_vectored(&pieces.map(io::IoSlice::new))
            .expect("write");
        assert_eq!(n, 19, "every piece taken");
        // A piece that does not fit is taken in part and nothing behind it.
        let big = vec![9u8; BUF];
        let n = r
            .write_vectored(&[io::IoSlice::new(&big), io::IoSlice::new(b"behind")])
            .expect("write");
        assert_eq!(n, BUF - 19);
        r.drain(Instant::now() + Duration::from_secs(10))
            .expect("drain");
        let mut got = vec![0; BUF];
        b.read_exact(&mut got).expect("read");
        assert_eq!(&got[..19], b"change-cipher-alert");
        assert!(got[19..].iter().all(|&x| x == 9));
    }

    #[test]
    fn a_reset_peer_fails_the_next_turn_with_its_errno() {
        if UringBackend::probe_sockets().is_err() {
            return;
        }
        let (a, b) = pair();
        let mut r = SockRing::new(a.as_raw_fd()).expect("ring");
        // Closing with unread bytes sends a reset.
        (&a).write_all(b"x").expect("write");
        std::thread::sleep(Duration::from_millis(20));
        let mut sink = [0u8; 0];
        let _ = (&b).read(&mut sink);
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid option value for the fd.
        unsafe {
            libc::setsockopt(
                b.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&l as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            )
        };
        drop(b);
        let mut err = None;
        for _ in 0..50 {
            if let Err(e) = r
                .write(&[7; 4096])
                .and_then(|_| r.turn(true, Duration::from_millis(100)))
            {
                err = Some(e);
                break;
            }
        }
        let e = err.expect("an error after the reset");
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{e}"
        );
    }
}
