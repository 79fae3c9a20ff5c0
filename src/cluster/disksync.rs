//! Group commit of a disk: many moves landing on (or leaving) one disk at once share one
//! `syncfs` of its filesystem instead of an fsync of each file and of each directory (a
//! rebalance spreads its objects over many partition directories, so directory fsyncs
//! rarely share; on a journal-less ext4 each is a flush of the device).
//!
//! Each disk keeps one fd, opened before the first write it is to cover: `syncfs` reports a
//! writeback error that happened since that fd was opened (the superblock's errseq), once.
//! An error is kept: every later sync of that disk fails with it, so a caller whose pages
//! were lost in a run that answered another caller is never told they are durable (a page
//! whose writeback failed is marked clean; trying again would not write it).

use crate::coord::group::Group;
use crate::error::Error;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Disks one process syncs at most (a node serves tens of disks; tests open many clusters).
pub const MAX_DISKS: usize = 4096;

/// One disk's shared syncs.
pub struct DiskSync {
    root: PathBuf,
    fd: OwnedFd,
    group: Group<Result<(), i32>>,
    /// The first writeback error seen on this disk (0: none).
    failed: AtomicI32,
}

static DISKS: OnceLock<Mutex<HashMap<PathBuf, Arc<DiskSync>>>> = OnceLock::new();

/// The shared syncs of the disk at `root`, opened on first use. Take it before the writes a
/// later `sync` is to cover.
pub fn disk(root: &Path) -> Result<Arc<DiskSync>, Error> {
    let mut m = DISKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(d) = m.get(root) {
        return Ok(d.clone());
    }
    if m.len() >= MAX_DISKS {
        let msg = format!("more than {MAX_DISKS} disks synced by one process");
        return Err(Error::failed("syncfs", root, msg));
    }
    let d = Arc::new(DiskSync {
        root: root.to_path_buf(),
        fd: crate::meta::open_dir(root)?,
        group: Group::default(),
        failed: AtomicI32::new(0),
    });
    m.insert(root.to_path_buf(), d.clone());
    Ok(d)
}

/// The disks of one batch of moves synced so far: each is synced once, after every write,
/// rename or unlink of the batch on it (a disk whose sync failed is tried again, and says so
/// again: its error is kept).
#[derive(Default)]
pub struct Synced(Vec<*const DiskSync>);

impl Synced {
    pub fn sync(&mut self, d: &Arc<DiskSync>) -> Result<(), Error> {
        let p = Arc::as_ptr(d);
        if !self.0.contains(&p) {
            d.sync()?;
            self.0.push(p);
        }
        Ok(())
    }
}

impl DiskSync {
    /// Ok once a `syncfs` of the disk's filesystem begun after this call succeeded (shared
    /// with the callers syncing the same disk at once): the data and names this caller
    /// wrote there before it are durable.
    pub fn sync(&self) -> Result<(), Error> {
        let before = self.failed.load(Ordering::Acquire);
        let r = match before {
            0 => self.group.run(|| {
                // SAFETY: the fd is open for the DiskSync's life.
                match unsafe { libc::syncfs(self.fd.as_raw_fd()) } {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EIO)),
                }
            }),
            e => Err(e),
        };
        if let Err(e) = r {
            let _ = self
                .failed
                .compare_exchange(0, e, Ordering::AcqRel, Ordering::Acquire);
            return Err(Error::errno("syncfs", &self.root, e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Concurrent writers on one disk all get Ok from shared syncs, and share one handle;
    /// a kept error fails every later sync of that disk, naming it and the errno.
    #[test]
    fn writers_share_one_disk_and_a_writeback_error_is_kept() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let d = disk(&root).unwrap();
                    for j in 0..20 {
                        std::fs::write(root.join(format!("{i}-{j}")), b"x").unwrap();
                        d.sync().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let d = disk(&root).unwrap();
        assert!(Arc::ptr_eq(&d, &disk(&root).unwrap()));
        d.failed.store(libc::EIO, Ordering::Release);
        let e = d.sync().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert!(e.to_string().contains(&root.display().to_string()), "{e}");
        assert!(disk(&root).unwrap().sync().is_err(), "the error is kept");
        assert!(disk(&t.path().join("gone")).is_err(), "a missing disk");
    }
}
