//! The sender's walk: depth-first, parents before children, every entry opened relative to
//! its directory's fd (no symlink followed, no path length limit, names as raw bytes).

use super::beneath;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

/// What kind of entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// FIFOs and devices (sent as nodes), sockets (not sent).
    Other,
}

/// One entry to send.
#[derive(Clone)]
pub struct Item {
    pub kind: Kind,
    /// The directory it is in, and its name there.
    pub dir: Arc<OwnedFd>,
    pub name: Vec<u8>,
    /// Its path on the wire (relative to the target).
    pub rel: Vec<u8>,
    pub st: libc::stat,
}

pub fn kind(st: &libc::stat) -> Kind {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFREG => Kind::File,
        libc::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// A directory being listed: its fd, wire path and the names left.
struct Open {
    fd: Arc<OwnedFd>,
    rel: Vec<u8>,
    names: std::vec::IntoIter<Vec<u8>>,
}

/// Lists a directory by its fd (through /proc/self/fd, which names exactly that directory).
fn list(fd: RawFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(format!("/proc/self/fd/{fd}"))? {
        names.push(e?.file_name().as_bytes().to_vec());
    }
    names.sort();
    Ok(names)
}

/// Depth-first walk of roots given as (directory fd, name in it, wire path).
pub struct Walker {
    roots: std::vec::IntoIter<(Arc<OwnedFd>, Vec<u8>, Vec<u8>)>,
    stack: Vec<Open>,
}

impl Walker {
    pub fn new(roots: Vec<(Arc<OwnedFd>, Vec<u8>, Vec<u8>)>) -> Walker {
        Walker {
            roots: roots.into_iter(),
            stack: Vec::new(),
        }
    }

    /// Stats `name` in `dir`; a directory is entered (pushed) before it is returned.
    fn visit(&mut self, dir: Arc<OwnedFd>, name: Vec<u8>, rel: Vec<u8>) -> io::Result<Item> {
        let st = beneath::stat_at(dir.as_raw_fd(), &name)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let k = kind(&st);
        if k == Kind::Dir {
            let fd = beneath::open_at(
                dir.as_raw_fd(),
                &name,
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )?;
            let names = list(fd.as_raw_fd())?;
            self.stack.push(Open {
                fd: Arc::new(fd),
                rel: rel.clone(),
                names: names.into_iter(),
            });
        }
        Ok(Item {
            kind: k,
            dir,
            name,
            rel,
            st,
        })
    }
}

impl Iterator for Walker {
    /// An entry, or (its wire path, why it could not be read).
    type Item = Result<Item, (Vec<u8>, io::Error)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(top) = self.stack.last_mut() {
                match top.names.next() {
                    Some(name) => {
                        let rel = beneath::join(&top.rel, &name);
                        let dir = top.fd.clone();
                        return Some(self.visit(dir, name, rel.clone()).map_err(|e| (rel, e)));
                    }
                    None => {
                        self.stack.pop();
                        continue;
                    }
                }
            }
            let (dir, name, rel) = self.roots.next()?;
            return Some(self.visit(dir, name, rel.clone()).map_err(|e| (rel, e)));
        }
    }
}
