//! The peers a node's rebalance run cannot reach. A move whose receiving node cannot be
//! reached (connection refused or timed out, reset, idle timeout, no address in etcd) does not
//! fail: the peer is marked unreachable (since when, why), the senders holding moves to it
//! wait, and one of them tries its move again after 1, 2, 4, then every 8 s (the probe). The
//! first move that gets through (or an answer of any kind) marks the peer reachable and the
//! waiting senders go on. After `UNREACHABLE_FOR` without one, the moves to it fail with an
//! error naming it, and so does the run.

use crate::error::{Error, ErrorKind, Target};
use std::collections::BTreeMap;
use std::io;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a peer may stay unreachable before the moves to it (and the run) fail.
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(600);
/// The first probe's wait; each next one doubles it, up to `PROBE_MAX`.
pub const PROBE_FIRST: Duration = Duration::from_secs(1);
pub const PROBE_MAX: Duration = Duration::from_secs(8);
/// A waiting sender looks at its job's stop flag at least this often.
const TICK: Duration = Duration::from_millis(100);

/// Whether `e` says the peer could not be reached or broke off (not that it answered no):
/// worth waiting for. A refused handshake or a bad request is an answer, and fails.
pub fn unreachable(e: &Error) -> bool {
    use io::ErrorKind as K;
    let (Target::Peer(_), ErrorKind::Os(io)) = (&e.target, &e.kind) else {
        return false;
    };
    matches!(
        io.kind(),
        K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::TimedOut
            | K::WouldBlock
            | K::UnexpectedEof
            | K::NotFound
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
    )
}

/// One unreachable peer, as status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unreachable {
    pub peer: String,
    /// Since when (ms since the Unix epoch): the first move that could not reach it.
    pub since_ms: u64,
    /// Probes that failed since.
    pub probes: u32,
    /// The last attempt's error.
    pub error: String,
}

#[derive(Debug)]
struct Down {
    since: Instant,
    next: Instant,
    /// A sender is trying its move now (one at a time).
    probing: bool,
    shown: Unreachable,
}

/// What a sender whose move could not reach its peer does next.
#[derive(Debug)]
pub enum Next {
    /// Try the move again (`true`: it is the probe).
    Retry(bool),
    /// The peer stayed unreachable past the bound: the move fails with this.
    GiveUp(Error),
    /// The job was stopped meanwhile.
    Stop,
}

#[derive(Debug)]
pub struct Peers {
    down: Mutex<BTreeMap<String, Down>>,
    wake: Condvar,
    /// The error of a peer given up on (the run fails for good with it).
    gave_up: Mutex<Option<String>>,
    /// `UNREACHABLE_FOR` but in tests.
    bound: Duration,
}

impl Default for Peers {
    fn default() -> Self {
        Peers::with_bound(UNREACHABLE_FOR)
    }
}

fn now_ms() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    t.map_or(0, |d| d.as_millis() as u64)
}

impl Peers {
    /// Peers given up on after `bound` unreachable.
    pub fn with_bound(bound: Duration) -> Peers {
        Peers {
            down: Mutex::default(),
            wake: Condvar::new(),
            gave_up: Mutex::default(),
            bound,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Down>> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A move to `peer` got an answer: the peer is reachable (the waiting senders go on).
    pub fn reached(&self, peer: &str) {
        let mut g = self.lock();
        if g.remove(peer).is_some() {
            self.wake.notify_all();
        }
    }

    /// The peers unreachable now.
    pub fn list(&self) -> Vec<Unreachable> {
        self.lock().values().map(|d| d.shown.clone()).collect()
    }

    /// Why the run must fail for good: a peer unreachable past the bound.
    pub fn gave_up(&self) -> Option<String> {
        self.gave_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A move to `peer` could not reach it (`e`; `probe`: this sender's try was the probe):
    /// waits for the peer to be reached, for this sender's turn to probe, for the bound, or
    /// for `stop`.
    pub fn failed(&self, peer: &str, e: &Error, probe: bool, stop: &dyn Fn() -> bool) -> Next {
        let now = Instant::now();
        let mut g = self.lock();
        let d = g.entry(peer.to_string()).or_insert_with(|| Down {
            since: now,
            next: now + PROBE_FIRST,
            probing: false,
            shown: Unreachable {
                peer: peer.to_string(),
                since_ms: now_ms(),
                ..Default::default()
            },
        });
        d.shown.error = e.to_string();
        if probe {
            d.probing = false;
            d.shown.probes += 1;
            let wait = PROBE_FIRST * (1 << d.shown.probes.min(3));
            d.next = now + wait.min(PROBE_MAX);
        }
        loop {
            if stop() {
                return Next::Stop;
            }
            let now = Instant::now();
            let Some(d) = g.get_mut(peer) else {
                return Next::Retry(false);
            };
            if now.duration_since(d.since) >= self.bound {
                return Next::GiveUp(self.give_up(d));
            }
            if !d.probing && now >= d.next {
                d.probing = true;
                return Next::Retry(true);
            }
            let wait = d.next.saturating_duration_since(now).clamp(TICK / 10, TICK);
            g = self
                .wake
                .wait_timeout(g, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn give_up(&self, d: &Down) -> Error {
        let u = &d.shown;
        let msg = format!(
            "node {} unreachable for {} s (since {} ms after the epoch, {} probes; last: {}): \
             its moves fail, the objects stay at their sources",
            u.peer,
            d.since.elapsed().as_secs(),
            u.since_ms,
            u.probes,
            u.error
        );
        let e = Error::at(
            "migrate",
            Target::Peer(u.peer.clone()),
            ErrorKind::Failed(msg),
        );
        *self.gave_up.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        e
    }
}

/// A node whose hand-over of its tombstones some moves wait for (a move of a key into the
/// newest generation's owner waits until every node that owned the key under a generation in
/// between routes by the newest one: before that it may still keep the key's tombstone), as
/// status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Waiting {
    pub node: String,
    /// Since when (ms since the Unix epoch).
    pub since_ms: u64,
    /// Moves waiting for it now.
    pub moves: u64,
    pub why: String,
}

/// The moves held for a node's hand-over, by node.
#[derive(Debug, Default)]
pub struct Held {
    m: Mutex<BTreeMap<String, Waiting>>,
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Waiting>> {
        self.m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more move waits for `node` (`why`); true if it is the first one now.
    pub fn hold(&self, node: &str, why: &str) -> bool {
        let mut g = self.lock();
        let w = g.entry(node.to_string()).or_insert_with(|| Waiting {
            node: node.to_string(),
            since_ms: now_ms(),
            ..Default::default()
        });
        w.moves += 1;
        w.why = why.to_string();
        w.moves == 1
    }

    /// A move that waited for `node` goes on (or stops).
    pub fn release(&self, node: &str) {
        let mut g = self.lock();
        if let Some(w) = g.get_mut(node) {
            w.moves = w.moves.saturating_sub(1);
            if w.moves == 0 {
                g.remove(node);
            }
        }
    }

    /// The nodes waited for now.
    pub fn list(&self) -> Vec<Waiting> {
        self.lock().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn down(kind: io::ErrorKind) -> Error {
        Error::at(
            "peer migrate",
            Target::Peer("c".into()),
            ErrorKind::Os(io::Error::new(kind, "connect c (10.0.0.3:1): down")),
        )
    }

    #[test]
    fn unreachable_is_no_answer_not_a_refusal() {
        use io::ErrorKind as K;
        for k in [
            K::ConnectionRefused,
            K::TimedOut,
            K::ConnectionReset,
            K::NotFound,
        ] {
            assert!(unreachable(&down(k)), "{k:?}");
        }
        assert!(
            !unreachable(&down(K::PermissionDenied)),
            "a refused handshake"
        );
        let enospc = Error::os("migrate", "x".as_ref(), io::Error::from_raw_os_error(28));
        assert!(!unreachable(&enospc));
        let usage = Error::usage("c".as_ref(), "disk s2/d0 is not a disk of this node");
        assert!(!unreachable(&usage));
    }

    #[test]
    fn one_sender_probes_after_a_second_and_the_others_go_on_once_it_got_through() {
        let p = Arc::new(Peers::default());
        let e = down(io::ErrorKind::TimedOut);
        let t0 = Instant::now();
        // Two senders fail at once; either may be the one that probes (whichever wakes first).
        let (tx, rx) = std::sync::mpsc::channel();
        for kind in [io::ErrorKind::TimedOut, io::ErrorKind::ConnectionReset] {
            let (p, e, tx) = (p.clone(), down(kind), tx.clone());
            std::thread::spawn(move || {
                let r = p.failed("c", &e, false, &|| false);
                let _ = tx.send((r, t0.elapsed()));
            });
        }
        let (first, waited) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(matches!(first, Next::Retry(true)), "{first:?}");
        assert!(waited >= PROBE_FIRST, "probed after {waited:?}");
        let shown = p.list();
        assert_eq!(shown.len(), 1);
        assert_eq!((shown[0].peer.as_str(), shown[0].probes), ("c", 0));
        assert!(shown[0].error.contains("connect c"), "{shown:?}");
        // the probe failed: the next one waits 2 s; the other sender still waits
        let t1 = Instant::now();
        let stop_at = t1 + Duration::from_millis(300);
        let again = p.failed("c", &e, true, &|| Instant::now() >= stop_at);
        assert!(matches!(again, Next::Stop), "{again:?}");
        assert_eq!(p.list()[0].probes, 1);
        assert!(rx.try_recv().is_err(), "no second probe in flight at once");
        p.reached("c");
        let (w, _) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(matches!(w, Next::Retry(false)), "{w:?}");
        assert!(p.list().is_empty());
        assert_eq!(p.gave_up(), None);
    }

    #[test]
    fn held_moves_are_counted_per_node_until_released() {
        let h = Held::default();
        assert!(h.hold("b", "b routes by 2"));
        assert!(!h.hold("b", "b routes by 2"));
        assert!(h.hold("d", "d routes by 1"));
        let l = h.list();
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].node.as_str(), l[0].moves), ("b", 2));
        h.release("b");
        assert_eq!(h.list()[0].moves, 1);
        h.release("b");
        h.release("d");
        assert!(h.list().is_empty());
    }

    #[test]
    fn a_peer_unreachable_past_the_bound_fails_naming_it() {
        let p = Peers::with_bound(Duration::from_millis(300));
        let e = down(io::ErrorKind::ConnectionRefused);
        let t0 = Instant::now();
        let Next::GiveUp(err) = p.failed("c", &e, false, &|| false) else {
            panic!("not given up");
        };
        assert!(
            t0.elapsed() < PROBE_FIRST,
            "gave up at the bound, not a probe"
        );
        assert_eq!(err.target, Target::Peer("c".into()));
        let msg = err.to_string();
        assert!(
            msg.contains("node c unreachable") && msg.contains("down"),
            "{msg}"
        );
        assert_eq!(p.gave_up(), Some(msg));
        // the other senders give up at once too
        assert!(matches!(
            p.failed("c", &e, false, &|| false),
            Next::GiveUp(_)
        ));
    }
}
