//! The server's live push sessions, by temp-name token. Every push session writes its temps
//! under a token of its own, so two sessions never touch each other's temps. A client that
//! gives up on a session (its stream reconnects, or its rerun starts after it was killed)
//! names that session's token as stale in its next Open: a session of it still running (a
//! killed client's session working through input it had read ahead) is stopped, and waited
//! for, before the new one starts; a token of no live session whose end was not clean (the
//! server was killed) is swept: its temps are removed where the new session writes.

use crate::temp::Token;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a new session waits for the stale sessions it names to stop.
pub const RETIRE_WAIT: Duration = Duration::from_secs(30);
/// Tokens of sessions that ended cleanly (their temps removed), remembered so a client's
/// stale list of them costs nothing.
const CLEAN_KEPT: usize = 4096;

struct Entry {
    /// A handle on the session's socket: shut down to wake a session blocked on it.
    sock: TcpStream,
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    live: HashMap<Token, Entry>,
    clean: VecDeque<Token>,
    clean_set: HashSet<Token>,
}

#[derive(Default)]
pub struct Live {
    st: Mutex<State>,
    ended: Condvar,
}

/// A registered session; unregisters on drop (as not cleanly ended unless [`Session::clean`]).
pub struct Session {
    live: Arc<Live>,
    pub token: Token,
    /// Set when a newer session of the same client retires this one.
    pub stop: Arc<AtomicBool>,
    clean: bool,
}

impl Session {
    /// The session removed every temp it made (ended, or aborted and cleaned up).
    pub fn clean(&mut self) {
        self.clean = true;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut st = self.live.lock();
        st.live.remove(&self.token);
        if self.clean && st.clean_set.insert(self.token.clone()) {
            st.clean.push_back(self.token.clone());
            if st.clean.len() > CLEAN_KEPT
                && let Some(old) = st.clean.pop_front()
            {
                st.clean_set.remove(&old);
            }
        }
        drop(st);
        self.live.ended.notify_all();
    }
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new session on `sock` under a fresh token.
    pub fn start(self: &Arc<Self>, sock: TcpStream) -> Session {
        let mut st = self.lock();
        let token = loop {
            let t = Token::random();
            if !st.live.contains_key(&t) && !st.clean_set.contains(&t) {
                break t;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let e = Entry {
            sock,
            stop: stop.clone(),
        };
        st.live.insert(token.clone(), e);
        Session {
            live: self.clone(),
            token,
            stop,
            clean: false,
        }
    }

    /// Stops the live sessions among `stale` and waits (up to `wait`) until they ended.
    /// Ok: the stale tokens whose temps may remain (no clean end known), to sweep.
    pub fn retire(&self, stale: &[Token], wait: Duration) -> Result<Vec<Token>, String> {
        let deadline = Instant::now() + wait;
        let mut st = self.lock();
        for t in stale {
            if let Some(e) = st.live.get(t) {
                e.stop.store(true, Ordering::Release);
                let _ = e.sock.shutdown(Shutdown::Both);
            }
        }
        while let Some(t) = stale.iter().find(|t| st.live.contains_key(*t)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "an earlier session of this job (temp token {}) is still ending after \
                     {wait:?}; try again",
                    t.as_str()
                ));
            }
            st = self
                .ended
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(stale
            .iter()
            .filter(|t| !st.clean_set.contains(*t))
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pair() -> (TcpStream, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (a, l.accept().unwrap().0)
    }

    #[test]
    fn retiring_stops_a_live_session_and_waits_for_its_end() {
        let live = Arc::new(Live::default());
        let (_client, server) = pair();
        let mut blocked = server.try_clone().unwrap();
        let mut s = live.start(server);
        let (tok, stop) = (s.token.clone(), s.stop.clone());
        let t0 = Instant::now();
        let h = std::thread::spawn(move || {
            // Blocked on a peer that says nothing: the shutdown wakes it.
            let mut b = [0u8; 1];
            let n = blocked.read(&mut b).unwrap_or(0);
            std::thread::sleep(Duration::from_millis(200)); // its cleanup
            s.clean();
            (n, t0.elapsed())
        });
        let sweep = live
            .retire(std::slice::from_ref(&tok), RETIRE_WAIT)
            .unwrap();
        let waited = t0.elapsed();
        let (n, ended_at) = h.join().unwrap();
        assert_eq!(n, 0, "the session's socket was shut down");
        assert!(stop.load(Ordering::Acquire));
        assert!(
            waited >= ended_at,
            "retire returned before the session ended"
        );
        assert!(sweep.is_empty(), "a clean end leaves nothing to sweep");
        assert!(!live.lock().live.contains_key(&tok));
    }

    #[test]
    fn unknown_or_unclean_tokens_are_swept_and_a_stuck_session_is_refused() {
        let live = Arc::new(Live::default());
        let (_c, server) = pair();
        let s = live.start(server);
        let gone = s.token.clone();
        drop(s); // ended without cleaning up (a panic)
        let other = Token::random();
        let sweep = live.retire(&[gone.clone(), other.clone()], RETIRE_WAIT);
        assert_eq!(sweep.unwrap(), vec![gone, other]);
        let (_c2, server2) = pair();
        let stuck = live.start(server2);
        let e = live
            .retire(
                std::slice::from_ref(&stuck.token),
                Duration::from_millis(100),
            )
            .unwrap_err();
        assert!(e.contains("still ending"), "{e}");
    }
}
