//! What the agent needs from its coordination engine, as one trait: ranges, transactions with
//! revision compares, and leases. etcd implements it (`etcd.rs`); `MemStore` is the in-memory
//! fake the unit tests use (same revision and lease semantics, expiry by wall clock).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One key as stored: revisions are the store's global counter (etcd semantics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_rev: i64,
    pub mod_rev: i64,
    pub lease: i64,
}

/// Keys under a prefix and the store's revision when they were read.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub kvs: Vec<Kv>,
    pub revision: i64,
}

/// A transaction guard; every one must hold for the operations to run.
#[derive(Clone, Debug)]
pub enum Cmp {
    /// The key's create revision equals this (0: the key does not exist).
    CreateRev(String, i64),
    /// The key's last-modification revision equals this (0: the key does not exist).
    ModRev(String, i64),
}

#[derive(Clone, Debug)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete(String),
}

/// Why a store call failed; `unavailable` means "try again, maybe on another member".
#[derive(Clone, Debug)]
pub struct StoreError {
    pub op: &'static str,
    pub target: String,
    pub message: String,
    pub unavailable: bool,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcd {} at {}: {}", self.op, self.target, self.message)
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

pub trait ClusterStore: Send + Sync {
    /// Every key starting with `prefix` (values left empty with `keys_only`).
    fn range(&self, prefix: &str, keys_only: bool) -> StoreResult<Snapshot>;
    /// One key.
    fn get(&self, key: &str) -> StoreResult<Option<Kv>>;
    /// Runs `ops` if every compare holds; Ok((succeeded, revision after)).
    fn txn(&self, cmps: &[Cmp], ops: &[Op]) -> StoreResult<(bool, i64)>;
    /// A new lease of `ttl` seconds; its id.
    fn grant(&self, ttl: i64) -> StoreResult<i64>;
    /// Renews a lease; the TTL it now has (0: the lease is gone).
    fn keepalive(&self, lease: i64) -> StoreResult<i64>;
    /// Seconds a lease has left (-1: gone).
    fn time_left(&self, lease: i64) -> StoreResult<i64>;
    /// Ends a lease now; its keys are deleted.
    fn revoke(&self, lease: i64) -> StoreResult<()>;

    fn put(&self, key: &str, value: &[u8], lease: i64) -> StoreResult<i64> {
        let op = Op::Put {
            key: key.to_string(),
            value: value.to_vec(),
            lease,
        };
        self.txn(&[], &[op]).map(|(_, rev)| rev)
    }
}

/// The end of the key range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

struct Lease {
    ttl: i64,
    deadline: Instant,
}

#[derive(Default)]
struct Mem {
    kvs: BTreeMap<String, Kv>,
    leases: HashMap<i64, Lease>,
    revision: i64,
    next_lease: i64,
}

/// In-memory store with etcd's revision and lease rules, for unit tests.
#[derive(Default)]
pub struct MemStore {
    m: Mutex<Mem>,
    /// Set to make every call fail as unavailable (an etcd outage).
    pub down: std::sync::atomic::AtomicBool,
}

impl Mem {
    fn expire(&mut self, now: Instant) {
        let dead: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: i64) {
        self.leases.remove(&id);
        let before = self.kvs.len();
        self.kvs.retain(|_, kv| kv.lease != id);
        if self.kvs.len() != before {
            self.revision += 1;
        }
    }

    fn holds(&self, c: &Cmp) -> bool {
        let (key, want, create) = match c {
            Cmp::CreateRev(k, r) => (k, *r, true),
            Cmp::ModRev(k, r) => (k, *r, false),
        };
        let have = self
            .kvs
            .get(key)
            .map(|kv| if create { kv.create_rev } else { kv.mod_rev })
            .unwrap_or(0);
        have == want
    }

    fn apply(&mut self, op: &Op, rev: i64) {
        match op {
            Op::Put { key, value, lease } => {
                let create_rev = self.kvs.get(key).map(|k| k.create_rev).unwrap_or(rev);
                let kv = Kv {
                    key: key.clone(),
                    value: value.clone(),
                    create_rev,
                    mod_rev: rev,
                    lease: *lease,
                };
                self.kvs.insert(key.clone(), kv);
            }
            Op::Delete(key) => {
                self.kvs.remove(key);
            }
        }
    }
}

impl MemStore {
    fn lock(&self, op: &'static str) -> StoreResult<std::sync::MutexGuard<'_, Mem>> {
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError {
                op,
                target: "memory".into(),
                message: "store is down".into(),
                unavailable: true,
            });
        }
        let mut m = self.m.lock().unwrap_or_else(|e| e.into_inner());
        m.expire(Instant::now());
        Ok(m)
    }
}

impl ClusterStore for MemStore {
    fn range(&self, prefix: &str, keys_only: bool) -> StoreResult<Snapshot> {
        let m = self.lock("range")?;
        let kvs = m
            .kvs
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| {
                let mut kv = kv.clone();
                if keys_only {
                    kv.value.clear();
                }
                kv
            })
            .collect();
        Ok(Snapshot {
            kvs,
            revision: m.revision,
        })
    }

    fn get(&self, key: &str) -> StoreResult<Option<Kv>> {
        Ok(self.lock("range")?.kvs.get(key).cloned())
    }

    fn txn(&self, cmps: &[Cmp], ops: &[Op]) -> StoreResult<(bool, i64)> {
        let mut m = self.lock("txn")?;
        if !cmps.iter().all(|c| m.holds(c)) {
            return Ok((false, m.revision));
        }
        for op in ops {
            if let Op::Put { lease, key, .. } = op
                && *lease != 0
                && !m.leases.contains_key(lease)
            {
                return Err(StoreError {
                    op: "txn",
                    target: key.clone(),
                    message: "requested lease not found".into(),
                    unavailable: false,
                });
            }
        }
        if !ops.is_empty() {
            m.revision += 1;
            let rev = m.revision;
            ops.iter().for_each(|op| m.apply(op, rev));
        }
        Ok((true, m.revision))
    }

    fn grant(&self, ttl: i64) -> StoreResult<i64> {
        let mut m = self.lock("lease grant")?;
        m.next_lease += 1;
        let id = m.next_lease;
        let deadline = Instant::now() + Duration::from_secs(ttl.max(1) as u64);
        m.leases.insert(id, Lease { ttl, deadline });
        Ok(id)
    }

    fn keepalive(&self, lease: i64) -> StoreResult<i64> {
        let mut m = self.lock("lease keepalive")?;
        match m.leases.get_mut(&lease) {
            Some(l) => {
                l.deadline = Instant::now() + Duration::from_secs(l.ttl.max(1) as u64);
                Ok(l.ttl)
            }
            None => Ok(0),
        }
    }

    fn time_left(&self, lease: i64) -> StoreResult<i64> {
        let m = self.lock("lease timetolive")?;
        Ok(m.leases
            .get(&lease)
            .map(|l| {
                l.deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs() as i64
            })
            .unwrap_or(-1))
    }

    fn revoke(&self, lease: i64) -> StoreResult<()> {
        self.lock("lease revoke")?.drop_lease(lease);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_revision_compare_elects_one_and_leases_expire() {
        let s = MemStore::default();
        let l1 = s.grant(1).unwrap();
        let l2 = s.grant(1).unwrap();
        let put = |l: i64| Op::Put {
            key: "/leader".into(),
            value: b"x".to_vec(),
            lease: l,
        };
        let absent = [Cmp::CreateRev("/leader".into(), 0)];
        let (won, rev) = s.txn(&absent, &[put(l1)]).unwrap();
        assert!(won);
        assert!(
            !s.txn(&absent, &[put(l2)]).unwrap().0,
            "second campaign loses"
        );
        assert_eq!(s.get("/leader").unwrap().unwrap().create_rev, rev);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(
            s.get("/leader").unwrap().is_none(),
            "lease expiry deletes the key"
        );
        assert_eq!(s.keepalive(l1).unwrap(), 0);
        let l3 = s.grant(5).unwrap();
        let (won, rev2) = s.txn(&absent, &[put(l3)]).unwrap();
        assert!(won && rev2 > rev, "a new term has a larger epoch");
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
    }
}
