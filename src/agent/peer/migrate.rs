//! The receiving side of a migration: a copy of an object another node sends (the rebalance
//! across nodes) stored on one of this node's disks, unless a client wrote the key there
//! since, or deleted it (a client's write or delete during a move wins: the key's tombstone
//! here is at least as new as the copy).

use super::msg::Migrate;
use crate::cluster::disksync;
use crate::cluster::registry::FORWARD_TTL_SECS;
use crate::cluster::store::{Cluster, full_key, object_path, validate};
use crate::error::Error;
use crate::meta;
use std::fs::{File, FileTimes};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// What became of a migrated copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Migrated {
    /// The copy is under its name on the disk, durable, with its location and forwarding
    /// entry recorded.
    Stored,
    /// The disk holds the key with an mtime at least as new (a client's write since, or an
    /// earlier migration of the same object), or its tombstone is at least as new (a
    /// client's delete since): the copy was dropped.
    Superseded,
}

fn stamp(t: SystemTime) -> (i64, i64) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos() as i64)
}

/// Stores `m.bucket/m.key` on the local disk `m.disk` (`set/disk`) from `fill`, with the
/// source's mtime: temp → syncfs; then under the key's lock: the newer mtime wins (a tie
/// keeps what is there; a tombstone at least as new as the copy drops it), rename,
/// syncfs (one begun after the rename; both shared: `cluster::disksync`), registry
/// (location + forwarding entry from `m.from`, made durable in a commit shared with the
/// copies landing at the same time). `fill` fails (and nothing is
/// named) on a short body or an xxh3 mismatch.
pub fn store(
    c: &Cluster,
    m: &Migrate,
    fill: &mut dyn FnMut(&mut File) -> std::io::Result<()>,
) -> Result<Migrated, Error> {
    let t = land(c, m, fill)?;
    t.sync_or_drop()?;
    let _g = c.lock(&m.bucket, m.key.as_bytes());
    if name(c, m, &t)? == Migrated::Superseded {
        return Ok(Migrated::Superseded);
    }
    t.sync.sync()?; // begun after the rename: the name is durable
    record(c, vec![m])?;
    Ok(Migrated::Stored)
}

/// `store` of several copies (`MigrateMany`), each body from `fill(i, file)` in turn: every
/// temp written, one syncfs per disk, then under all their keys' locks each named (or
/// dropped), one syncfs per disk, one registry commit. A failing body names none of them
/// (Err); a copy that cannot be named gets its own error.
pub fn store_many(
    c: &Cluster,
    v: &[Migrate],
    fill: &mut dyn FnMut(usize, &mut File) -> std::io::Result<()>,
) -> Result<Vec<Result<Migrated, Error>>, Error> {
    let mut temps: Vec<Temp> = Vec::with_capacity(v.len());
    for (i, m) in v.iter().enumerate() {
        match land(c, m, &mut |f| fill(i, f)) {
            Ok(t) => temps.push(t),
            Err(e) => {
                temps.iter().for_each(Temp::drop_temp);
                return Err(e);
            }
        }
    }
    if let Err(e) = sync_each(temps.iter()) {
        temps.iter().for_each(Temp::drop_temp);
        return Err(e);
    }
    let keys = v.iter().map(|m| (m.bucket.as_str(), m.key.as_bytes()));
    let Some(_g) = c.try_lock_many(keys, LOCK_WAIT) else {
        temps.iter().for_each(Temp::drop_temp);
        let m = "keys held here for over 2 s (moves both ways at once?): send them one by one";
        return Err(Error::failed("migrate", &temps[0].dst, m));
    };
    let mut out: Vec<_> = v.iter().zip(&temps).map(|(m, t)| name(c, m, t)).collect();
    let named: Vec<usize> = (0..v.len())
        .filter(|&i| matches!(out[i], Ok(Migrated::Stored)))
        .collect();
    if named.is_empty() {
        return Ok(out);
    }
    let durable = sync_each(named.iter().map(|&i| &temps[i]))
        .and_then(|_| record(c, named.iter().map(|&i| &v[i]).collect()));
    if let Err(e) = durable {
        // named, but not known durable (or not recorded): the sender keeps its sources
        for &i in &named {
            out[i] = Err(e.again_at("migrate", &temps[i].dst));
        }
    }
    Ok(out)
}

/// How long a batch waits for its keys' locks at most. Past it the sender sends the batch's
/// objects one by one: a sender of this node may hold one of them while it waits for the
/// batch's own sender's node, which holds the batch's sources (moves both ways at once).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A copy written under its temp name, not yet durable or named.
struct Temp {
    tmp: std::path::PathBuf,
    dst: std::path::PathBuf,
    sync: std::sync::Arc<disksync::DiskSync>,
}

impl Temp {
    fn drop_temp(&self) {
        let _ = meta::unlink(&self.tmp); // best effort: the caller's error is what counts
    }

    /// The data durable before the name: one syncfs shared with the copies landing on this
    /// disk at once. On an error the temp goes.
    fn sync_or_drop(&self) -> Result<(), Error> {
        self.sync.sync().inspect_err(|_| self.drop_temp())
    }
}

/// One syncfs of each disk `temps` are on (each begun after every write before it).
fn sync_each<'a>(mut temps: impl Iterator<Item = &'a Temp>) -> Result<(), Error> {
    let mut done = disksync::Synced::default();
    temps.try_for_each(|t| done.sync(&t.sync))
}

/// Writes `m`'s copy under a temp name beside its final one, with the source's mtime.
fn land(
    c: &Cluster,
    m: &Migrate,
    fill: &mut dyn FnMut(&mut File) -> std::io::Result<()>,
) -> Result<Temp, Error> {
    let (disk, bucket, key, mtime) = (&*m.disk, &*m.bucket, &*m.key, m.mtime);
    validate(bucket, key.as_bytes()).map_err(|m| Error::usage(Path::new(key), m))?;
    let root = match c.disk_path(disk) {
        Some(r) if disk.contains('/') => r.to_path_buf(),
        _ => {
            let m = format!("disk {disk} is not a disk of this node");
            return Err(Error::usage(Path::new(disk), m));
        }
    };
    let dst = object_path(&root, bucket, key.as_bytes());
    let dir = meta::parent_dir(&dst).to_path_buf();
    crate::cluster::identity::make_dirs_below(&root, &dir)?;
    let sync = disksync::disk(&root)?; // taken before the writes it covers
    let tmp = crate::temp::temp_name(&dst, &crate::temp::Token::random());
    let mut f = File::from(meta::create_temp(&tmp)?);
    let written = fill(&mut f)
        .and_then(|_| f.set_times(FileTimes::new().set_modified(mtime)))
        .map_err(|e| Error::os("migrate", &tmp, e));
    drop(f);
    let t = Temp { tmp, dst, sync };
    written.inspect_err(|_| t.drop_temp())?;
    Ok(t)
}

/// Under the key's lock: names the durable temp `t` of `m`, unless the disk holds the key
/// with an mtime at least as new or its tombstone is at least as new (then the temp goes).
fn name(c: &Cluster, m: &Migrate, t: &Temp) -> Result<Migrated, Error> {
    let newer_there = match meta::lstat(&t.dst) {
        Ok(st) => Ok((st.st_mtime, st.st_mtime_nsec) >= stamp(m.mtime)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT)) => Ok(false),
        Err(e) => Err(e),
    };
    // A delete here since (or while the copy was on its way) wins too.
    let superseded = newer_there.and_then(|newer| match newer {
        true => Ok(true),
        false => Ok(c
            .deleted_at(&m.bucket, m.key.as_bytes())?
            .is_some_and(|at| at >= m.mtime)),
    });
    let superseded = superseded.inspect_err(|_| t.drop_temp())?;
    if superseded {
        meta::unlink(&t.tmp)?;
        return Ok(Migrated::Superseded);
    }
    meta::rename(&t.tmp, &t.dst).inspect_err(|_| t.drop_temp())?;
    Ok(Migrated::Stored)
}

/// The registry's location and forwarding entry of each stored copy, durable in one
/// commit shared with the copies landing at the same time.
fn record(c: &Cluster, v: Vec<&Migrate>) -> Result<(), Error> {
    let Some(r) = &c.registry else {
        return Ok(());
    };
    let moves = v
        .into_iter()
        .map(|m| {
            (
                full_key(&m.bucket, m.key.as_bytes()),
                m.from.clone(),
                m.disk.clone(),
            )
        })
        .collect();
    r.forward_durably_many(moves, c.current.topo.generation, FORWARD_TTL_SECS)
}
