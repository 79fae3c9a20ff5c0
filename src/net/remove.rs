//! The server's side of a pull that moves (`ferry move ferry://HOST/NAME/PATH DST`): it sends
//! the tree as a pull does, remembers what it sent (by the walk's own directory fds, so
//! nothing is ever looked up by path again: no `..`, no symlink, nothing outside the export),
//! and deletes a source only when the puller asks (Remove: durable at its end, its xxh3
//! matched), only after the puller acknowledged it, and only if the source still is what was
//! sent (type, device and inode, size, mtime; a file also by the xxh3 it was sent with).
//! A source changed since is kept and reported. Emptied directories go last, deepest first.
//! Every Remove is answered once its deletions are durable (syncfs per filesystem).

use super::beneath::{self, show};
use super::msg::Msg;
use super::send::{Hooks, Sent};
use super::walk::{Item, Kind};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

/// Entries a move session remembers at most (sent and not yet asked for: the sender's window
/// of unacknowledged entries, the directories, entries that failed); past it the session
/// fails rather than grow without bound (about 150 bytes plus the path each).
pub const MAX_TRACKED: usize = 2 << 20;

/// What identifies a source as the one sent.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Ident {
    kind: u32,
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
}

impl Ident {
    fn of(st: &libc::stat) -> Ident {
        Ident {
            kind: st.st_mode & libc::S_IFMT,
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
        }
    }
}

/// What was sent of one entry.
struct Record {
    kind: Kind,
    dir: Arc<OwnedFd>,
    name: Vec<u8>,
    id: Ident,
    /// Acknowledged by the puller (durable there), with the hash it was sent with.
    acked: bool,
    hash: Option<u64>,
}

/// The Hooks of a move session.
#[derive(Default)]
pub struct Mover {
    sent: HashMap<Vec<u8>, Record>,
    pub removed: u64,
    pub kept: u64,
    /// Too many entries to track: the session fails at the next request.
    overflow: bool,
}

/// Whether `now` is still the entry `r` sent (a directory: the same one; its times and size
/// change as its entries go).
fn same(r: &Record, now: &libc::stat) -> bool {
    let (a, b) = (r.id, Ident::of(now));
    (a.kind, a.dev, a.ino) == (b.kind, b.dev, b.ino)
        && (r.kind == Kind::Dir || (a.size, a.mtime) == (b.size, b.mtime))
}

fn kept(path: &[u8], why: impl std::fmt::Display) -> Msg {
    Msg::Fail {
        id: 0,
        msg: format!("'{}': source kept: {why}", show(path)),
    }
}

impl Hooks for Mover {
    fn seen(&mut self, item: &Item) {
        if self.sent.len() >= MAX_TRACKED {
            self.overflow = true;
            return;
        }
        self.sent.insert(
            item.rel.clone(),
            Record {
                kind: item.kind,
                dir: item.dir.clone(),
                name: item.name.clone(),
                id: Ident::of(&item.st),
                acked: false,
                hash: None,
            },
        );
    }

    fn durable(&mut self, files: &[Sent]) {
        for f in files {
            if let Some(r) = self.sent.get_mut(&f.rel) {
                r.acked = true;
                r.hash = f.hash;
            }
        }
    }

    fn lost(&mut self, rel: &[u8]) {
        self.sent.remove(rel);
    }

    fn gone_is_done(&self) -> bool {
        true
    }

    fn request(&mut self, m: Msg) -> Result<Vec<Msg>, Msg> {
        let Msg::Remove { files, dirs } = m else {
            return Err(m);
        };
        if self.overflow {
            return Err(Msg::Error {
                msg: format!("move: more than {MAX_TRACKED} entries in one session"),
            });
        }
        let mut out = Vec::new();
        let mut devs: Vec<(u64, Arc<OwnedFd>)> = Vec::new();
        let mut n = 0;
        for (path, hash) in files {
            match self.remove_file(&path, hash) {
                Ok(Some(d)) => {
                    n += 1;
                    note_dev(&mut devs, d);
                }
                Ok(None) => {}
                Err(msg) => out.push(msg),
            }
        }
        n += self.remove_dirs(dirs, &mut devs, &mut out);
        for (_, d) in &devs {
            // The deletions may not be durable: a crash could bring sources back (never
            // lose one), but the puller must not report the move complete.
            if let Err(e) = beneath::syncfs(d) {
                out.push(Msg::Fail {
                    id: 0,
                    msg: format!("move: syncfs after removing sources: {e}"),
                });
            }
        }
        self.kept += out.len() as u64;
        self.removed += n;
        out.push(Msg::Removed { n });
        Ok(out)
    }
}

fn note_dev(devs: &mut Vec<(u64, Arc<OwnedFd>)>, (dev, dir): (u64, Arc<OwnedFd>)) {
    if !devs.iter().any(|(d, _)| *d == dev) {
        devs.push((dev, dir));
    }
}

impl Mover {
    /// Deletes the source of `path` if it was sent and acknowledged, its hash is the one it
    /// was sent with, and it is unchanged. Ok(Some): removed (its filesystem); Ok(None): it
    /// was gone already; Err: kept (why).
    fn remove_file(
        &mut self,
        path: &[u8],
        hash: Option<u64>,
    ) -> Result<Option<(u64, Arc<OwnedFd>)>, Msg> {
        beneath::check_rel(path).map_err(|e| kept(path, e))?;
        let Some(r) = self.sent.remove(path) else {
            return Err(kept(path, "not sent by this session"));
        };
        if r.kind == Kind::Dir {
            return Err(kept(path, "a directory is removed only once emptied"));
        }
        if !r.acked {
            return Err(kept(path, "not acknowledged as durable"));
        }
        if r.kind == Kind::File && hash != r.hash {
            return Err(kept(
                path,
                "the puller's xxh3 is not the one it was sent with",
            ));
        }
        let dirfd = r.dir.as_raw_fd();
        match beneath::stat_at(dirfd, &r.name) {
            Ok(None) => return Ok(None),
            Ok(Some(now)) if same(&r, &now) => {}
            Ok(Some(_)) => return Err(kept(path, "changed since it was sent")),
            Err(e) => return Err(kept(path, format!("stat: {e}"))),
        }
        match beneath::unlink_at(dirfd, &r.name) {
            Ok(()) => Ok(Some((r.id.dev, r.dir))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(kept(path, format!("unlink: {e}"))),
        }
    }

    /// Removes the directories named, deepest first, each only if it was sent, is the same
    /// directory and is empty now (one that still holds a kept or unsent entry stays, and
    /// that is not an error). The export's root stays. How many went.
    fn remove_dirs(
        &mut self,
        mut dirs: Vec<Vec<u8>>,
        devs: &mut Vec<(u64, Arc<OwnedFd>)>,
        out: &mut Vec<Msg>,
    ) -> u64 {
        // A child's path is longer than its parent's.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
        let mut n = 0;
        for path in dirs {
            let Some(r) = self.sent.remove(&path) else {
                out.push(kept(&path, "directory not sent by this session"));
                continue;
            };
            if r.kind != Kind::Dir || r.name == b"." {
                continue;
            }
            let dirfd = r.dir.as_raw_fd();
            match beneath::stat_at(dirfd, &r.name) {
                Ok(Some(now)) if same(&r, &now) => {}
                Ok(None) => continue,
                Ok(Some(_)) => {
                    out.push(kept(&path, "directory replaced since it was sent"));
                    continue;
                }
                Err(e) => {
                    out.push(kept(&path, format!("stat: {e}")));
                    continue;
                }
            }
            match rmdir_at(dirfd, &r.name) {
                Ok(()) => {
                    n += 1;
                    note_dev(devs, (r.id.dev, r.dir));
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {}
                Err(e) => out.push(kept(&path, format!("rmdir: {e}"))),
            }
        }
        n
    }
}

fn rmdir_at(dir: std::os::fd::RawFd, name: &[u8]) -> io::Result<()> {
    let c = beneath::cstr(name)?;
    // SAFETY: valid dir fd and C string.
    if unsafe { libc::unlinkat(dir, c.as_ptr(), libc::AT_REMOVEDIR) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
