//! The server's side of a pull or move of several streams: the first connection's Open asks
//! for N streams and gets a token back in its Ready; N - 1 more connections Join by that
//! token (an unknown token, a session that has all its streams, or one that gave up waiting
//! is refused); the server then runs the streams' shared sender (see `push`) over the N
//! connections. It has no reconnect: a broken stream ends the session (the others' sockets
//! are shut down at once) and the client runs it again, its quick check (or a move's resend)
//! covering what is durable already.

use super::conn::Conn;
use super::fatal::Fatal;
use super::push::{self, Control};
use super::send::{Hooks, Outcome};
use super::walk::Walker;
use crate::temp::Token;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// How long a session waits for its other streams to join.
pub const JOIN_WAIT: Duration = Duration::from_secs(30);
/// Sessions waiting for their streams at once; more are refused.
pub const MAX_WAITING: usize = 64;

/// A joined stream, and what keeps the thread that accepted it waiting until the session
/// is done with it (dropped): that thread must not end before (io_uring cancels the requests
/// of a thread that exits, and a connection's ring has its receives in flight).
pub type Joined = (Conn, mpsc::Sender<()>);

/// The sessions waiting for their streams, by token, each with the streams it still takes.
pub struct Joins<T = Joined>(Mutex<HashMap<Token, (SyncSender<T>, usize)>>);

impl<T> Default for Joins<T> {
    fn default() -> Joins<T> {
        Joins(Mutex::new(HashMap::new()))
    }
}

/// A session waiting for its `n - 1` other streams.
pub struct Waiting<'a, T = Joined> {
    joins: &'a Joins<T>,
    pub token: Token,
    rx: mpsc::Receiver<T>,
    n: usize,
}

impl<T> Joins<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Token, (SyncSender<T>, usize)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session of `n` streams (2 ..= `MAX_STREAMS`) starts waiting for the others.
    pub fn open(&self, n: usize) -> Result<Waiting<'_, T>, String> {
        let mut m = self.lock();
        if m.len() >= MAX_WAITING {
            return Err(format!(
                "{MAX_WAITING} sessions are waiting for their streams already; try again"
            ));
        }
        let token = Token::random();
        let (tx, rx) = mpsc::sync_channel(n - 1);
        m.insert(token.clone(), (tx, n - 1));
        Ok(Waiting {
            joins: self,
            token,
            rx,
            n,
        })
    }

    /// Hands connection `c` to the session it joins, once `greet` told it so; Err(it, why)
    /// when none takes it (nothing was said on it then).
    pub fn join(
        &self,
        token: &Token,
        mut c: T,
        greet: impl FnOnce(&mut T),
    ) -> Result<(), (T, String)> {
        let tx = match self.lock().get_mut(token) {
            Some((_, 0)) => return Err((c, "join: the session has all its streams".into())),
            Some((tx, left)) => {
                *left -= 1;
                Some(tx.clone())
            }
            None => None,
        };
        let Some(tx) = tx else {
            return Err((
                c,
                format!(
                    "join: no session waits for streams by token {}",
                    token.as_str()
                ),
            ));
        };
        greet(&mut c);
        match tx.try_send(c) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(c)) => Err((c, "join: the session has all its streams".into())),
            Err(TrySendError::Disconnected(c)) => {
                Err((c, "join: the session stopped waiting for streams".into()))
            }
        }
    }
}

impl<T> Waiting<'_, T> {
    /// The session's connections, `first` (stream 0) and the others in the order they
    /// joined, once all are here; Err(those that came, why) when they did not all come
    /// within [`JOIN_WAIT`].
    pub fn collect(self, first: T) -> Result<Vec<T>, (Vec<T>, String)> {
        self.collect_within(first, JOIN_WAIT)
    }

    fn collect_within(self, first: T, wait: Duration) -> Result<Vec<T>, (Vec<T>, String)> {
        let deadline = Instant::now() + wait;
        let mut conns = vec![first];
        while conns.len() < self.n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(c) => conns.push(c),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    let why = format!(
                        "{} of {} streams joined within {wait:?}",
                        conns.len(),
                        self.n
                    );
                    return Err((conns, why));
                }
            }
        }
        Ok(conns)
    }
}

impl<T> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        self.joins.lock().remove(&self.token);
    }
}

/// The [`Control`] of a server sending a pull: never paused (the client holds its
/// receivers), a full client disk fails the entry (the client pauses and pulls again), no
/// reconnect; a failed stream shuts every stream's socket down.
struct Server {
    /// Duplicates of the streams' sockets (never a number another connection may reuse).
    socks: Vec<OwnedFd>,
}

impl Control for Server {
    fn full(&self, _path: &str, _why: &str) -> bool {
        false
    }
    fn reconnects(&self) -> bool {
        false
    }
    fn reconnect(
        &self,
        _old: Option<Token>,
        _since: Instant,
        _backoff: &mut Duration,
    ) -> Result<Conn, Fatal> {
        Err(super::fatal::fatal(io::Error::other(
            "a server does not reconnect a stream",
        )))
    }
    fn tells(&self) -> bool {
        true
    }
    fn stop_all(&self) {
        for s in &self.socks {
            // SAFETY: shutdown on an fd we own has no memory effects.
            unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

/// Sends what `walker` yields over `conns` (stream 0 first), asking `hooks` what is wanted
/// (a pull's quick check) and telling it what became durable (a move's records).
pub fn send(
    conns: Vec<Conn>,
    walker: Walker,
    hooks: &Mutex<dyn Hooks + Send>,
) -> Result<Outcome, Fatal> {
    let socks = conns
        .iter()
        .map(|c| {
            // SAFETY: the connection's socket is open while `c` lives; it is only duplicated.
            unsafe { BorrowedFd::borrow_raw(c.raw_fd()) }.try_clone_to_owned()
        })
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| super::fatal::fatal(io::Error::new(e.kind(), format!("dup socket: {e}"))))?;
    let ctl = Server { socks };
    push::run(conns, walker, hooks, &ctl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_join_by_token_only_while_the_session_waits_for_them() {
        let j: Joins<u32> = Joins::default();
        let w = j.open(3).unwrap();
        let greeted = std::cell::Cell::new(0);
        let greet = |c: &mut u32| {
            *c += 10;
            greeted.set(greeted.get() + 1)
        };
        assert_eq!(
            j.join(&Token::random(), 7, greet).unwrap_err().0,
            7,
            "unknown token"
        );
        j.join(&w.token, 1, greet).unwrap();
        j.join(&w.token, 2, greet).unwrap();
        let (back, why) = j.join(&w.token, 3, greet).unwrap_err();
        assert_eq!(back, 3);
        assert!(why.contains("has all its streams"), "{why}");
        assert_eq!(greeted.get(), 2, "only the streams taken are greeted");
        let tok = w.token.clone();
        assert_eq!(
            w.collect_within(0, Duration::ZERO).unwrap(),
            vec![0, 11, 12]
        );
        assert!(j.lock().is_empty(), "its token is forgotten");
        assert!(
            j.join(&tok, 4, greet).is_err(),
            "no joining a session that runs"
        );
    }

    #[test]
    fn a_session_whose_streams_do_not_come_gives_up_and_is_bounded() {
        let j: Joins<u32> = Joins::default();
        let w = j.open(2).unwrap();
        let (got, e) = w.collect_within(0, Duration::from_millis(10)).unwrap_err();
        assert_eq!(got, vec![0]);
        assert!(e.contains("1 of 2 streams joined"), "{e}");
        let ws: Vec<_> = (0..MAX_WAITING).map(|_| j.open(2).unwrap()).collect();
        assert!(j.open(2).is_err(), "more than MAX_WAITING sessions waiting");
        drop(ws);
        assert!(j.open(2).is_ok());
    }
}
