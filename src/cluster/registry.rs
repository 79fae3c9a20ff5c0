//! The location registry: where each object was last put or moved (disk id and topology
//! generation), and read-forwarding entries (old disk -> new disk, with an expiry and a hop
//! count) for objects a rebalance moved. An embedded redb database, so it is durable and
//! crash-safe without a server. It is a hint that makes reads fast and forwards readers of moved
//! objects: every read still falls back to placement, so a lost or stale entry costs a lookup,
//! never an object.
//!
//! Tombstones are not hints: a node's agent records one (durably, before the DELETE is
//! answered) for each key deleted while this node serves its owner disk, with the time of
//! the delete and the generation it was made under. A migrated copy no newer than the
//! tombstone is dropped instead of stored (a delete during a move wins), and reads skip
//! older copies another node may still hold. A write of the key removes its tombstone. They
//! go once the rebalance of their generation (or a newer one) is completed cluster-wide
//! (no copy is left off its owner then), and at most `MAX_TOMBSTONES` are kept.

use crate::error::Error;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use std::path::{Path, PathBuf};

/// key bytes ("bucket/object") -> (disk id, generation)
const LOCATIONS: TableDefinition<&[u8], (&str, u64)> = TableDefinition::new("locations");
/// key bytes -> (from disk, to disk, expires unix secs, hops)
const FORWARDS: TableDefinition<&[u8], (&str, &str, u64, u8)> = TableDefinition::new("forwards");
/// key bytes -> (deleted at: unix secs, nanos; generation)
const TOMBSTONES: TableDefinition<&[u8], (u64, u32, u64)> = TableDefinition::new("tombstones");
/// "current" / "previous" -> topology JSON
const TOPOLOGIES: TableDefinition<&str, &[u8]> = TableDefinition::new("topologies");

/// redb page cache (its write buffer is at most half of it). It fills as the keys an agent
/// reads and writes spread over the file, so at 1M objects (250k locations per agent) all of
/// it is resident: 16 MiB of it was most of an agent's growth from 100k to 1M objects. A
/// lookup it misses is a 4 KiB pread from the OS page cache (`examples/registry_rss`:
/// microseconds, against the milliseconds of the GET or move that asks).
pub const REGISTRY_CACHE: usize = 4 << 20;
/// How long a forwarding entry lives by default.
pub const FORWARD_TTL_SECS: u64 = 24 * 3600;
/// Most forwarding hops a read follows (a key moved by several rebalances in a row).
pub const MAX_HOPS: u8 = 4;
/// Most non-durable commits between two durable ones: past it a commit is made durable.
/// redb keeps what a non-durable commit allocated and freed in memory until the next
/// durable commit (its dirty pages in the write buffer, the pages' numbers in sets), and a
/// rebalance's sender makes one per move and no durable one until the job ends: an agent's
/// memory grew with the objects it sent. One fsync per this many moves bounds it.
pub const MAX_NON_DURABLE: u64 = 1024;
/// Most tombstones kept: past it the oldest sixteenth goes (a copy of one of those keys that
/// still waits on another node could come back; said on stderr).
pub const MAX_TOMBSTONES: u64 = 1 << 20;

/// A deleted key's tombstone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tomb {
    /// When it was deleted: a copy whose mtime is not later is of a deleted version.
    pub at: std::time::SystemTime,
    /// The generation the owner served then.
    pub generation: u64,
}

fn tomb_value(t: &Tomb) -> (u64, u32, u64) {
    let d =
        t.at.duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
    (d.as_secs(), d.subsec_nanos(), t.generation)
}

fn tomb_of((s, n, g): (u64, u32, u64)) -> Tomb {
    let at = std::time::UNIX_EPOCH + std::time::Duration::new(s, n.min(999_999_999));
    Tomb { at, generation: g }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub from: String,
    pub to: String,
    pub expires: u64,
    pub hops: u8,
}

pub struct Registry {
    db: Database,
    path: PathBuf,
    /// Concurrent flushes share a durable commit begun after each asked (group commit).
    flushes: crate::coord::group::Group<Result<(), String>>,
    /// Concurrent `forward_durably` calls share a durable commit of all their entries.
    moved: crate::coord::group::Batch<(Moved, u64, u64), Result<(), String>>,
    /// Non-durable commits since the last durable one (at most `MAX_NON_DURABLE`).
    unflushed: std::sync::atomic::AtomicU64,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Removes the `n` oldest tombstones of `t`; how many went.
fn evict_oldest(t: &mut redb::Table<&[u8], (u64, u32, u64)>, n: u64) -> Result<u64, redb::Error> {
    let mut stamps: Vec<(u64, u32)> = t
        .iter()?
        .filter_map(|e| e.ok())
        .map(|(_, v)| (v.value().0, v.value().1))
        .collect();
    if stamps.is_empty() {
        return Ok(0);
    }
    let k = (n as usize).clamp(1, stamps.len()) - 1;
    let (_, cut, _) = stamps.select_nth_unstable(k);
    let (cut, before) = (*cut, t.len()?);
    t.retain(|_, v| (v.0, v.1) > cut)?;
    Ok(before - t.len()?)
}

/// One move's registry entry: the key, the disk it came from and the one it is on now.
pub type Moved = (Vec<u8>, String, String);

/// Records each moved key at its new disk under its generation with a forwarding entry from
/// the old one until its expiry (one more hop), clearing its tombstone: a moved copy is the
/// live one. Items: (key, from disk, to disk, generation, expires).
fn put_forwards<'a>(
    w: &redb::WriteTransaction,
    items: impl Iterator<Item = (&'a [u8], &'a str, &'a str, u64, u64)>,
) -> Result<(), redb::Error> {
    let mut loc = w.open_table(LOCATIONS)?;
    let mut fwd = w.open_table(FORWARDS)?;
    let mut tombs = w.open_table(TOMBSTONES)?;
    for (key, from, to, generation, expires) in items {
        loc.insert(key, (to, generation))?;
        tombs.remove(key)?;
        let hops = fwd.get(key)?.map(|v| v.value().3).unwrap_or(0);
        let hops = hops.saturating_add(1).min(MAX_HOPS);
        fwd.insert(key, (from, to, expires, hops))?;
    }
    Ok(())
}

impl Registry {
    /// Opens (or creates) the registry. Only one process may hold it: a second one gets an
    /// error that says so.
    pub fn open(path: &Path) -> Result<Registry, Error> {
        Self::open_with_cache(path, REGISTRY_CACHE)
    }

    /// `open` with a page cache of `cache` bytes instead of `REGISTRY_CACHE` (to measure it).
    pub fn open_with_cache(path: &Path, cache: usize) -> Result<Registry, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::os("create registry dir", dir, e))?;
        }
        // A bounded page cache: the registry grows with the objects, ferry's memory must not.
        let db = Database::builder()
            .set_cache_size(cache)
            .create(path)
            .map_err(|e| Self::err("open registry", path, e))?;
        let r = Registry {
            db,
            path: path.to_path_buf(),
            flushes: Default::default(),
            moved: Default::default(),
            unflushed: Default::default(),
        };
        // Create the tables so readers never meet a missing one.
        r.write(Durability::Immediate, |w| {
            w.open_table(LOCATIONS)?;
            w.open_table(FORWARDS)?;
            w.open_table(TOPOLOGIES)?;
            w.open_table(TOMBSTONES)?;
            Ok(())
        })?;
        Ok(r)
    }

    fn err(op: &'static str, path: &Path, e: impl std::fmt::Display) -> Error {
        let msg = e.to_string();
        // redb reports a database held by another process as "already open".
        let errno = if msg.contains("already open") {
            libc::EBUSY
        } else {
            libc::EIO
        };
        Error::os(op, path, std::io::Error::from_raw_os_error(errno))
    }

    fn write(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), Error> {
        use std::sync::atomic::Ordering::AcqRel;
        let durability = match durability {
            Durability::None if self.unflushed.fetch_add(1, AcqRel) + 1 >= MAX_NON_DURABLE => {
                Durability::Immediate
            }
            d => d,
        };
        let durable = matches!(durability, Durability::Immediate);
        let run = || -> Result<(), redb::Error> {
            let mut w = self.db.begin_write()?;
            w.set_durability(durability)?;
            f(&w)?;
            w.commit()?;
            Ok(())
        };
        run().map_err(|e| Self::err("registry write", &self.path, e))?;
        if durable {
            self.unflushed
                .store(0, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }

    /// Non-durable commits since the last durable one.
    pub fn unflushed(&self) -> u64 {
        self.unflushed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records where `key` now lives (it lives again: its tombstone goes). `durable: false`
    /// batches with the next durable commit (a crash may lose it: reads fall back to
    /// placement, and a tombstone left beside a live copy is older than that copy).
    pub fn set_location(
        &self,
        key: &[u8],
        disk: &str,
        generation: u64,
        durable: bool,
    ) -> Result<(), Error> {
        self.write(Self::dur(durable), |w| {
            w.open_table(LOCATIONS)?.insert(key, (disk, generation))?;
            w.open_table(TOMBSTONES)?.remove(key)?;
            Ok(())
        })
    }

    /// `set_location` of many keys (full key, disk id) under `generation`, in one
    /// transaction, not durable until the next `flush` (the demo seeds its disks so).
    pub fn set_locations(
        &self,
        entries: &[(Vec<u8>, String)],
        generation: u64,
    ) -> Result<(), Error> {
        self.write(Durability::None, |w| {
            let mut loc = w.open_table(LOCATIONS)?;
            let mut tombs = w.open_table(TOMBSTONES)?;
            for (key, disk) in entries {
                loc.insert(key.as_slice(), (disk.as_str(), generation))?;
                tombs.remove(key.as_slice())?;
            }
            Ok(())
        })
    }

    /// Moved objects, in one transaction: each key's new location (a tombstone of it goes: a
    /// copy newer than it arrived), and a forwarding entry from the old disk (key, from
    /// disk, to disk). Not durable until the next `flush`.
    pub fn forward_many(
        &self,
        moves: &[(Vec<u8>, String, String)],
        generation: u64,
        ttl: u64,
    ) -> Result<(), Error> {
        if moves.is_empty() {
            return Ok(());
        }
        let expires = now_secs() + ttl;
        self.write(Durability::None, |w| {
            let items = moves
                .iter()
                .map(|(k, f, t)| (k.as_slice(), f.as_str(), t.as_str(), generation, expires));
            put_forwards(w, items)
        })
    }

    /// `forward_many` of one move, durable on return: the moves landing at once share one
    /// durable commit begun after each was handed in (`group::Batch`), where each would
    /// otherwise queue for redb's one writer twice (its commit, then a flush).
    pub fn forward_durably(&self, mv: Moved, generation: u64, ttl: u64) -> Result<(), Error> {
        self.forward_durably_many(vec![mv], generation, ttl)
    }

    /// `forward_durably` of several moves at once (at least one), in one shared commit.
    pub fn forward_durably_many(
        &self,
        moves: Vec<Moved>,
        generation: u64,
        ttl: u64,
    ) -> Result<(), Error> {
        let expires = now_secs() + ttl;
        let items = moves
            .into_iter()
            .map(|m| (m, generation, expires))
            .collect();
        self.moved
            .run_many(items, |items| {
                self.write(Durability::Immediate, |w| {
                    let it = items.iter().map(|((k, f, t), g, exp)| {
                        (k.as_slice(), f.as_str(), t.as_str(), *g, *exp)
                    });
                    put_forwards(w, it)
                })
                .map_err(|e| e.to_string())
            })
            .map_err(|m| Self::err("registry write", &self.path, m))
    }

    /// Forgets `key` (a delete), durably; with `tomb`, records its tombstone in the same
    /// commit (past `MAX_TOMBSTONES` the oldest sixteenth goes first).
    pub fn remove(&self, key: &[u8], tomb: Option<Tomb>) -> Result<(), Error> {
        self.remove_as(key, tomb, true)
    }

    /// `remove`, durable only with the next `flush` unless `durable` (a batch of them
    /// shares one fsync).
    pub fn remove_as(&self, key: &[u8], tomb: Option<Tomb>, durable: bool) -> Result<(), Error> {
        let mut evicted = 0;
        self.write(Self::dur(durable), |w| {
            w.open_table(LOCATIONS)?.remove(key)?;
            w.open_table(FORWARDS)?.remove(key)?;
            if let Some(t) = &tomb {
                let mut tombs = w.open_table(TOMBSTONES)?;
                if tombs.len()? >= MAX_TOMBSTONES {
                    evicted = evict_oldest(&mut tombs, MAX_TOMBSTONES / 16)?;
                }
                tombs.insert(key, tomb_value(t))?;
            }
            Ok(())
        })?;
        if evicted > 0 {
            eprintln!(
                "ferry registry {}: over {MAX_TOMBSTONES} tombstones: the {evicted} oldest dropped",
                self.path.display()
            );
        }
        Ok(())
    }

    /// The tombstone of `key`, if it was deleted here (and not written since).
    pub fn tombstone(&self, key: &[u8]) -> Result<Option<Tomb>, Error> {
        let run = || -> Result<Option<Tomb>, redb::Error> {
            let r = self.db.begin_read()?;
            let t = r.open_table(TOMBSTONES)?;
            Ok(t.get(key)?.map(|v| tomb_of(v.value())))
        };
        run().map_err(|e| Self::err("registry read", &self.path, e))
    }

    /// Drops the tombstones made under generation `upto` or an older one (its rebalance, or
    /// a newer one, is completed everywhere). Returns how many went.
    pub fn collect_tombstones(&self, upto: u64) -> Result<u64, Error> {
        if self.tombstone_count()? == 0 {
            return Ok(0);
        }
        let mut n = 0;
        self.write(Durability::Immediate, |w| {
            let mut t = w.open_table(TOMBSTONES)?;
            let before = t.len()?;
            t.retain(|_, v| v.2 > upto)?;
            n = before - t.len()?;
            Ok(())
        })?;
        Ok(n)
    }

    /// The tombstones of the keys starting with `prefix` (at most `MAX_TOMBSTONES`).
    pub fn tombstones_under(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Tomb)>, Error> {
        let run = || -> Result<Vec<(Vec<u8>, Tomb)>, redb::Error> {
            let r = self.db.begin_read()?;
            let t = r.open_table(TOMBSTONES)?;
            let mut out = Vec::new();
            for e in t.range(prefix..)? {
                let (k, v) = e?;
                if !k.value().starts_with(prefix) {
                    break;
                }
                out.push((k.value().to_vec(), tomb_of(v.value())));
            }
            Ok(out)
        };
        run().map_err(|e| Self::err("registry read", &self.path, e))
    }

    /// Up to `limit` tombstones in key order, from the first key after `after` (None: from
    /// the start): a walk over all of them a page at a time.
    pub fn tombstones_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Tomb)>, Error> {
        let run = || -> Result<Vec<(Vec<u8>, Tomb)>, redb::Error> {
            let r = self.db.begin_read()?;
            let t = r.open_table(TOMBSTONES)?;
            let mut out = Vec::new();
            let range = match after {
                Some(a) => {
                    t.range::<&[u8]>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?
                }
                None => t.range::<&[u8]>(..)?,
            };
            for e in range.take(limit) {
                let (k, v) = e?;
                out.push((k.value().to_vec(), tomb_of(v.value())));
            }
            Ok(out)
        };
        run().map_err(|e| Self::err("registry read", &self.path, e))
    }

    pub fn tombstone_count(&self) -> Result<u64, Error> {
        let run = || -> Result<u64, redb::Error> {
            let r = self.db.begin_read()?;
            Ok(r.open_table(TOMBSTONES)?.len()?)
        };
        run().map_err(|e| Self::err("registry read", &self.path, e))
    }

    /// Makes every earlier non-durable change durable (one fsync, shared by the flushes
    /// asked for while another runs: the next durable commit covers all of them).
    pub fn flush(&self) -> Result<(), Error> {
        self.flushes
            .run(|| {
                self.write(Durability::Immediate, |_| Ok(()))
                    .map_err(|e| e.to_string())
            })
            .map_err(|m| Self::err("registry flush", &self.path, m))
    }

    fn dur(durable: bool) -> Durability {
        if durable {
            Durability::Immediate
        } else {
            Durability::None
        }
    }

    pub fn location(&self, key: &[u8]) -> Result<Option<(String, u64)>, Error> {
        let run = || -> Result<Option<(String, u64)>, redb::Error> {
            let r = self.db.begin_read()?;
            let t = r.open_table(LOCATIONS)?;
            Ok(t.get(key)?.map(|v| {
                let (d, g) = v.value();
                (d.to_string(), g)
            }))
        };
        run().map_err(|e| Self::err("registry read", &self.path, e))
    }

    /// The live (not expired) forwarding entry of `key`.
    pub fn forwarding(&self, key: &[u8]) -> Result<Option<Forward>, Error> {
        let run = || -> Result<Option<Forward>, redb::Error> {
            let r = self.db.begin_read()?;
            let t = r.open_table(FORWARDS)?;
            Ok(t.get(key)?.map(|v| {
                let (from, to, expires, hops) = v.value();
                Forward {
                    from: from.to_string(),
                    to: to.to_string(),
                    expires,
                    hops,
                }
            }))
        };
        let f = run().map_err(|e| Self::err("registry read", &self.path, e))?;
        Ok(f.filter(|f| f.expires > now_secs()))
    }

    /// Drops expired forwarding entries (all of them with `all`: a rebalance completed).
    /// Returns how many went.
    pub fn expire_forwards(&self, all: bool) -> Result<u64, Error> {
        let now = now_secs();
        let mut n = 0;
        self.write(Durability::Immediate, |w| {
            let mut t = w.open_table(FORWARDS)?;
            let gone: Vec<Vec<u8>> = t
                .iter()?
                .filter_map(|e| e.ok())
                .filter(|(_, v)| all || v.value().2 <= now)
                .map(|(k, _)| k.value().to_vec())
                .collect();
            for k in &gone {
                t.remove(k.as_slice())?;
            }
            n = gone.len() as u64;
            Ok(())
        })?;
        Ok(n)
    }

    pub fn forward_count(&self) -> Result<u64, Error> {
        let run = || -> Result<u64, redb::Error> {
            let r = self.db.begin_read()?;
            Ok(r.open_table(FORWARDS)?.len()?)
        };
        run().map_err(|e| Self::err("registry read", &self.path, e))
    }

    /// Remembers the topology a rebalance moves to, and the one it came from (reads fall back
    /// to the previous owner while objects are in flight).
    pub fn set_topologies(&self, current: &[u8], previous: &[u8]) -> Result<(), Error> {
        self.write(Durability::Immediate, |w| {
            let mut t = w.open_table(TOPOLOGIES)?;
            t.insert("current", current)?;
            t.insert("previous", previous)?;
            Ok(())
        })
    }

    pub fn topology(&self, which: &str) -> Result<Option<Vec<u8>>, Error> {
        let run = || -> Result<Option<Vec<u8>>, redb::Error> {
            let r = self.db.begin_read()?;
            let t = r.open_table(TOPOLOGIES)?;
            Ok(t.get(which)?.map(|v| v.value().to_vec()))
        };
        run().map_err(|e| Self::err("registry read", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    fn tomb(secs: u64, generation: u64) -> Tomb {
        let at = UNIX_EPOCH + Duration::new(secs, 7);
        Tomb { at, generation }
    }

    #[test]
    fn non_durable_commits_become_durable_every_max_non_durable() {
        let d = tempfile::tempdir().unwrap();
        let r = Registry::open(&d.path().join("r.redb")).unwrap();
        let mut wrapped = 0;
        for i in 0..(2 * MAX_NON_DURABLE + 7) {
            let k = format!("b/{i}").into_bytes();
            r.forward_many(&[(k, "s1/a".into(), "s2/b".into())], 2, 60)
                .unwrap();
            let n = r.unflushed();
            assert!(n < MAX_NON_DURABLE, "{n} non-durable commits in a row");
            wrapped += u64::from(n == 0);
        }
        assert_eq!(wrapped, 2, "one durable commit per {MAX_NON_DURABLE}");
        assert_eq!(r.unflushed(), 7);
        r.flush().unwrap();
        assert_eq!(r.unflushed(), 0, "a flush is a durable commit");
        assert_eq!(r.forward_count().unwrap(), 2 * MAX_NON_DURABLE + 7);
    }

    #[test]
    fn moves_landing_at_once_share_durable_commits_and_every_one_is_recorded() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("r.redb");
        let r = Arc::new(Registry::open(&path).unwrap());
        r.remove_as(b"b/0", Some(tomb(5, 1)), true).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let k = format!("b/{}", t * 25 + i).into_bytes();
                        r.forward_durably((k, "s1/a".into(), "s2/b".into()), 3, 60)
                            .unwrap();
                        assert_eq!(r.unflushed(), 0, "durable on return");
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(r);
        let r = Registry::open(&path).unwrap();
        assert_eq!(r.forward_count().unwrap(), 200);
        for i in 0..200 {
            let k = format!("b/{i}").into_bytes();
            assert_eq!(r.location(&k).unwrap(), Some(("s2/b".to_string(), 3)));
            assert_eq!(r.forwarding(&k).unwrap().unwrap().hops, 1);
        }
        assert!(
            r.tombstone(b"b/0").unwrap().is_none(),
            "a moved copy is the live one"
        );
    }

    #[test]
    fn every_tombstone_is_walked_a_page_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let r = Registry::open(&d.path().join("r.redb")).unwrap();
        for i in 0..7u64 {
            r.remove(format!("b/{i}").as_bytes(), Some(tomb(i, 1)))
                .unwrap();
        }
        let (mut seen, mut after) = (Vec::new(), None::<Vec<u8>>);
        loop {
            let page = r.tombstones_after(after.as_deref(), 3).unwrap();
            assert!(page.len() <= 3);
            seen.extend(page.iter().map(|(k, t)| (k.clone(), *t)));
            match page.last() {
                Some((k, _)) if page.len() == 3 => after = Some(k.clone()),
                _ => break,
            }
        }
        let want: Vec<(Vec<u8>, Tomb)> = (0..7u64)
            .map(|i| (format!("b/{i}").into_bytes(), tomb(i, 1)))
            .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn tombstones_are_kept_until_written_collected_or_evicted_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        let r = Registry::open(&d.path().join("r.redb")).unwrap();
        r.remove(b"b/1", Some(tomb(100, 2))).unwrap();
        r.remove(b"b/2", Some(tomb(200, 3))).unwrap();
        r.remove(b"b/3", None).unwrap();
        assert_eq!(r.tombstone(b"b/1").unwrap(), Some(tomb(100, 2)));
        assert_eq!(r.tombstone(b"b/3").unwrap(), None);
        assert_eq!(r.tombstone_count().unwrap(), 2);
        // written again: it lives, its tombstone goes
        r.set_location(b"b/1", "s/d", 3, true).unwrap();
        assert_eq!(r.tombstone(b"b/1").unwrap(), None);
        r.remove(b"b/1", Some(tomb(300, 2))).unwrap();
        assert_eq!(r.collect_tombstones(2).unwrap(), 1, "generation 2's only");
        assert_eq!(r.tombstone(b"b/2").unwrap(), Some(tomb(200, 3)));
        r.remove(b"c/2", Some(tomb(5, 3))).unwrap();
        let under = r.tombstones_under(b"b/").unwrap();
        assert_eq!(under, vec![(b"b/2".to_vec(), tomb(200, 3))], "only b's");
        assert_eq!(r.collect_tombstones(3).unwrap(), 2);
        assert_eq!(r.tombstone_count().unwrap(), 0);
        // past the bound the oldest go first
        for (i, s) in [50u64, 10, 40, 20, 30].iter().enumerate() {
            r.remove(format!("b/e{i}").as_bytes(), Some(tomb(*s, 1)))
                .unwrap();
        }
        let mut evicted = 0;
        r.write(Durability::Immediate, |w| {
            evicted = evict_oldest(&mut w.open_table(TOMBSTONES)?, 2)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(evicted, 2);
        assert_eq!(r.tombstone(b"b/e1").unwrap(), None, "10: the oldest");
        assert_eq!(r.tombstone(b"b/e3").unwrap(), None, "20");
        assert!(r.tombstone(b"b/e4").unwrap().is_some(), "30 stays");
        assert_eq!(r.tombstone_count().unwrap(), 3);
    }
}
