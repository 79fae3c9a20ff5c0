//! The job's hard-link table: files with several names, by source (dev, inode). The first
//! name seen is copied; the others wait for its copy's final name, or link to it at once when
//! it has one. The table only decides; the caller makes the links (`Ctx::claim_link`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A source inode: (st_dev, st_ino).
pub type Key = (u64, u64);

enum LinkState<W> {
    /// The first name is being copied; these names (`W`: what the caller needs to link one
    /// later) wait for it.
    Copying { waiters: Vec<W>, nlink: u64 },
    /// Copied to this path; `left` more names may still come (then the entry is dropped).
    Done {
        path: PathBuf,
        left: u64,
        hash: Option<u64>,
    },
}

/// What to do with a name of a multi-link file.
pub enum Claim<W> {
    /// Copy this name; the others will link to it.
    First,
    /// Queued: linked when the first name's copy is final.
    Waiting,
    /// The copy is final: link this name to `path` now.
    LinkTo {
        path: PathBuf,
        hash: Option<u64>,
        waiter: W,
    },
}

pub struct Links<W> {
    map: Mutex<HashMap<Key, LinkState<W>>>,
}

impl<W> Default for Links<W> {
    fn default() -> Self {
        Links {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<W> Links<W> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, LinkState<W>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A name `w` of inode `key` (with `nlink` names) was found.
    pub fn claim(&self, key: Key, nlink: u64, w: W) -> Claim<W> {
        let mut g = self.lock();
        match g.get_mut(&key) {
            None => {
                let waiters = Vec::new();
                g.insert(key, LinkState::Copying { waiters, nlink });
                Claim::First
            }
            Some(LinkState::Copying { waiters, .. }) => {
                waiters.push(w);
                Claim::Waiting
            }
            Some(LinkState::Done { path, left, hash }) => {
                let (path, hash) = (path.clone(), *hash);
                *left = left.saturating_sub(1);
                if *left == 0 {
                    g.remove(&key);
                }
                Claim::LinkTo {
                    path,
                    hash,
                    waiter: w,
                }
            }
        }
    }

    /// A dry run: whether this is the first name of the inode seen (the others would be
    /// linked to its copy).
    pub fn first_name(&self, key: Key, nlink: u64) -> bool {
        let mut g = self.lock();
        if g.contains_key(&key) {
            return false;
        }
        let waiters = Vec::new();
        g.insert(key, LinkState::Copying { waiters, nlink });
        true
    }

    /// Whether the job has seen another name of this inode (and may see more).
    pub fn knows(&self, key: Key) -> bool {
        self.lock().contains_key(&key)
    }

    /// Resume: an inode already copied by an earlier run to `path`; its other names link to it.
    pub fn known(&self, key: Key, path: &Path, nlink: u64) {
        self.lock().entry(key).or_insert_with(|| LinkState::Done {
            path: path.to_path_buf(),
            left: nlink.saturating_sub(1),
            hash: None,
        });
    }

    /// The first name's copy has its final name `path`: returns the names that waited (to be
    /// linked now); later names link at once.
    pub fn done(&self, key: Key, path: &Path, hash: Option<u64>) -> Vec<W> {
        let mut g = self.lock();
        let Some(LinkState::Copying { waiters, nlink }) = g.remove(&key) else {
            return Vec::new();
        };
        // Names not seen yet (beyond the first and the waiters) may still come.
        let left = nlink.saturating_sub(1 + waiters.len() as u64);
        if left > 0 {
            let path = path.to_path_buf();
            g.insert(key, LinkState::Done { path, left, hash });
        }
        waiters
    }

    /// The first name failed: forgotten; returns the names that waited (each copied on its
    /// own now: the first of them becomes the new first).
    pub fn failed(&self, key: Key) -> Vec<W> {
        match self.lock().remove(&key) {
            Some(LinkState::Copying { waiters, .. }) => waiters,
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_wait_for_the_first_then_link_until_all_are_seen() {
        let t: Links<&str> = Links::default();
        let k = (1, 2);
        assert!(matches!(t.claim(k, 4, "a"), Claim::First));
        assert!(matches!(t.claim(k, 4, "b"), Claim::Waiting));
        assert!(t.knows(k));
        assert_eq!(t.done(k, Path::new("/d/a"), Some(7)), vec!["b"]);
        // One name (of four) is still to come: it links to the copy at once.
        match t.claim(k, 4, "c") {
            Claim::LinkTo { path, hash, waiter } => {
                assert_eq!(
                    (path.as_path(), hash, waiter),
                    (Path::new("/d/a"), Some(7), "c")
                )
            }
            _ => panic!("the copy is final"),
        }
        assert!(t.knows(k), "a fourth name may still come");
        assert!(matches!(t.claim(k, 4, "d"), Claim::LinkTo { .. }));
        assert!(!t.knows(k), "every name seen: the entry is dropped");
    }

    #[test]
    fn a_failed_first_name_hands_back_its_waiters() {
        let t: Links<u32> = Links::default();
        assert!(matches!(t.claim((1, 1), 3, 0), Claim::First));
        assert!(matches!(t.claim((1, 1), 3, 1), Claim::Waiting));
        assert!(matches!(t.claim((1, 1), 3, 2), Claim::Waiting));
        assert_eq!(t.failed((1, 1)), vec![1, 2]);
        assert!(!t.knows((1, 1)));
        assert!(t.failed((1, 1)).is_empty());
    }

    #[test]
    fn resumed_and_dry_run_names() {
        let t: Links<()> = Links::default();
        t.known((2, 2), Path::new("/d/x"), 2);
        assert!(matches!(t.claim((2, 2), 2, ()), Claim::LinkTo { .. }));
        assert!(!t.knows((2, 2)));
        assert!(t.first_name((3, 3), 2));
        assert!(!t.first_name((3, 3), 2));
    }
}
