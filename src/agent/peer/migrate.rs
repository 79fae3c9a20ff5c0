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
    let (disk, from, bucket, key, mtime) = (&*m.disk, &*m.from, &*m.bucket, &*m.key, m.mtime);
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
    let disk_sync = disksync::disk(&root)?; // taken before the writes it covers
    let tmp = crate::temp::temp_name(&dst, &crate::temp::Token::random());
    let mut f = File::from(meta::create_temp(&tmp)?);
    let written = fill(&mut f)
        .and_then(|_| f.set_times(FileTimes::new().set_modified(mtime)))
        .map_err(|e| Error::os("migrate", &tmp, e));
    drop(f);
    // The data is durable before the name: one syncfs shared with the copies landing on
    // this disk at once.
    if let Err(e) = written.and_then(|_| disk_sync.sync()) {
        let _ = meta::unlink(&tmp); // best effort; `e` is what the sender sees
        return Err(e);
    }
    let _g = c.lock(bucket, key.as_bytes());
    let newer_there = match meta::lstat(&dst) {
        Ok(st) => Ok((st.st_mtime, st.st_mtime_nsec) >= stamp(mtime)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT)) => Ok(false),
        Err(e) => Err(e),
    };
    // A delete here since (or while the copy was on its way) wins too.
    let superseded = newer_there.and_then(|newer| match newer {
        true => Ok(true),
        false => Ok(c
            .deleted_at(bucket, key.as_bytes())?
            .is_some_and(|t| t >= mtime)),
    });
    let superseded = match superseded {
        Ok(s) => s,
        Err(e) => {
            let _ = meta::unlink(&tmp);
            return Err(e);
        }
    };
    if superseded {
        meta::unlink(&tmp)?;
        return Ok(Migrated::Superseded);
    }
    if let Err(e) = meta::rename(&tmp, &dst) {
        let _ = meta::unlink(&tmp);
        return Err(e);
    }
    disk_sync.sync()?; // begun after the rename: the name is durable
    if let Some(r) = &c.registry {
        let mv = (
            full_key(bucket, key.as_bytes()),
            from.to_string(),
            disk.to_string(),
        );
        r.forward_durably(mv, c.current.topo.generation, FORWARD_TTL_SECS)?;
    }
    Ok(Migrated::Stored)
}
