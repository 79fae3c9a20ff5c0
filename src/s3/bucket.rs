//! Buckets: a bucket is the directory `<disk>/<bucket>` made on every disk of the node when
//! the bucket is created (so any owner disk can take its objects), and it exists while any
//! disk has it. Creation is durable (mkdir, then the disk root fsynced) before the 200.

use crate::cluster::identity::IDENTITY_FILE;
use crate::cluster::store::{Cluster, looks_temp};
use crate::error::Error;
use crate::meta;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The disks to hold buckets: every disk of the cluster that is present (has its identity
/// file; a removed set's disk may be gone).
fn present_disks(c: &Cluster) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = c
        .disks()
        .filter(|(_, p)| p.join(IDENTITY_FILE).is_file())
        .map(|(_, p)| p.to_path_buf())
        .collect();
    v.sort();
    v
}

pub fn exists(c: &Cluster, bucket: &str) -> bool {
    c.disks().any(|(_, p)| p.join(bucket).is_dir())
}

/// Makes the bucket on every present disk; false if it existed already.
pub fn create(c: &Cluster, bucket: &str) -> Result<bool, Error> {
    crate::cluster::store::validate(bucket, b"k")
        .map_err(|m| Error::usage(Path::new(bucket), m))?;
    let existed = exists(c, bucket);
    for disk in present_disks(c) {
        let dir = disk.join(bucket);
        if meta::make_dir(&dir)? {
            meta::fsync_dir(&disk)?;
        }
    }
    Ok(!existed)
}

/// (name, creation time) of every bucket, by name. The time is the oldest of its directories'
/// modification times (the best a directory keeps of its birth).
pub fn list(c: &Cluster) -> Vec<(String, SystemTime)> {
    let mut all: std::collections::BTreeMap<String, SystemTime> = Default::default();
    for (_, disk) in c.disks() {
        let Ok(rd) = std::fs::read_dir(disk) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            all.entry(name)
                .and_modify(|o| *o = (*o).min(t))
                .or_insert(t);
        }
    }
    all.into_iter().collect()
}

/// Why a bucket cannot be deleted.
#[derive(Debug, PartialEq, Eq)]
pub enum DeleteRefused {
    NoSuchBucket,
    NotEmpty,
}

/// Deletes an empty bucket from every disk (the directories that deleted keys left behind go
/// with it). A bucket with any object is refused.
pub fn delete(c: &Cluster, bucket: &str) -> Result<Result<(), DeleteRefused>, Error> {
    if !exists(c, bucket) {
        return Ok(Err(DeleteRefused::NoSuchBucket));
    }
    let dirs: Vec<PathBuf> = c.disks().map(|(_, p)| p.join(bucket)).collect();
    if dirs.iter().any(|d| has_object(d)) {
        return Ok(Err(DeleteRefused::NotEmpty));
    }
    for d in &dirs {
        match remove_empty_tree(d) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                return Ok(Err(DeleteRefused::NotEmpty)); // an object came in meanwhile
            }
            Err(e) => return Err(e),
        }
        if let Some(disk) = d.parent() {
            meta::fsync_dir(disk)?;
        }
    }
    Ok(Ok(()))
}

/// Whether no disk of the node holds an object of `bucket`.
pub fn is_empty(c: &Cluster, bucket: &str) -> bool {
    !c.disks().any(|(_, p)| has_object(&p.join(bucket)))
}

/// Whether a directory tree holds any object (a file that is not a temp).
fn has_object(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| match e.file_type() {
        Ok(t) if t.is_dir() => has_object(&e.path()),
        Ok(_) => !looks_temp(e.file_name().as_bytes()),
        Err(_) => true,
    })
}

/// rmdir bottom-up; stale temps (of killed writers) go too. Absent is fine.
fn remove_empty_tree(dir: &Path) -> Result<(), Error> {
    use std::os::unix::ffi::OsStrExt;
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(Error::os("list", dir, e)),
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => remove_empty_tree(&p)?,
            _ if looks_temp(e.file_name().as_bytes()) => meta::unlink(&p)?,
            _ => return Err(Error::errno("rmdir", dir, libc::ENOTEMPTY)),
        }
    }
    match meta::rmdir(dir) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}
