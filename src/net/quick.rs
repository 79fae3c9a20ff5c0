//! The remote quick check: an entry whose copy at the other end has the same type, size and
//! mtime (a symlink: the same target) is not sent again, like a local rerun's size+mtime
//! check. Only final names are listed, and a final name is only ever given to a durable,
//! checked copy, so a match is a copy this or an earlier run finished.

use super::beneath;
use super::send::Hooks;
use super::verify::{Entry, Listing};
use super::walk::{Item, Kind};
use std::os::fd::AsRawFd;

/// Whether the far end's `e` is already the copy of `item`.
pub fn same(item: &Item, e: &Entry) -> bool {
    let mtime = (item.st.st_mtime, item.st.st_mtime_nsec as u32);
    if e.meta.mode & libc::S_IFMT != item.st.st_mode & libc::S_IFMT || e.meta.mtime != mtime {
        return false;
    }
    match item.kind {
        Kind::File => e.size == item.st.st_size as u64,
        Kind::Symlink => {
            beneath::readlink_at(item.dir.as_raw_fd(), &item.name).is_ok_and(|l| l == e.link)
        }
        // A node: the same device number (listed as its size).
        Kind::Other => e.size == item.st.st_rdev,
        Kind::Dir => false,
    }
}

/// What the far end has, by wire path.
pub struct QuickCheck(pub Listing);

impl QuickCheck {
    pub fn skips(&self, item: &Item) -> bool {
        self.0.get(&item.rel).is_some_and(|e| same(item, e))
    }
}

impl Hooks for QuickCheck {
    fn wanted(&mut self, item: &Item) -> bool {
        !self.skips(item)
    }
}
