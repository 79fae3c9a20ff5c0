//! `ferry verify SRC ferry://HOST/NAME/PATH`: the far end walks and hashes its side (xxh3 of
//! every file's content), this end does the same with SRC, and the two lists are compared.

use super::beneath::{self, show};
use super::conn::Conn;
use super::msg::{Meta, Msg};
use super::send::meta_of;
use super::walk::{Kind, Walker};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::fd::AsRawFd;

/// What one side says about an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub meta: Meta,
    pub size: u64,
    pub hash: u64,
    pub link: Vec<u8>,
}

pub fn hash_fd(fd: std::os::fd::OwnedFd) -> io::Result<u64> {
    let mut f = std::fs::File::from(fd);
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(h.digest()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Walks and describes every entry (`hash`: with the xxh3 of every file's content, else
/// 0); errors come back as (path, why).
pub fn entries(
    walker: Walker,
    hash: bool,
    mut each: impl FnMut(Vec<u8>, io::Result<Entry>) -> io::Result<()>,
) -> io::Result<()> {
    for item in walker {
        let item = match item {
            Ok(i) => i,
            Err((rel, e)) => {
                each(rel, Err(e))?;
                continue;
            }
        };
        let dirfd = item.dir.as_raw_fd();
        let mut e = Entry {
            meta: meta_of(&item.st),
            size: 0,
            hash: 0,
            link: Vec::new(),
        };
        let r = match item.kind {
            Kind::File if !hash => {
                e.size = item.st.st_size as u64;
                Ok(())
            }
            Kind::File => {
                e.size = item.st.st_size as u64;
                beneath::open_at(dirfd, &item.name, libc::O_RDONLY, 0)
                    .and_then(hash_fd)
                    .map(|h| e.hash = h)
            }
            Kind::Symlink => beneath::readlink_at(dirfd, &item.name).map(|l| e.link = l),
            Kind::Other => {
                e.size = item.st.st_rdev;
                Ok(())
            }
            Kind::Dir => Ok(()),
        };
        each(item.rel, r.map(|()| e))?;
    }
    Ok(())
}

/// Lists a tree to the peer (with hashes for a verify; without for the quick check), then
/// Finished.
pub fn list(c: &mut Conn, walker: Walker, hash: bool) -> io::Result<()> {
    entries(walker, hash, |path, r| match r {
        Ok(e) => c.send(&Msg::Entry {
            path,
            meta: e.meta,
            size: e.size,
            hash: e.hash,
            link: e.link,
        }),
        Err(err) => c.send(&Msg::Fail {
            id: 0,
            msg: format!("'{}': {err}", show(&path)),
        }),
    })?;
    c.send(&Msg::Finished)?;
    c.flush()
}

/// Entries by wire path.
pub type Listing = BTreeMap<Vec<u8>, Entry>;

/// Client side: the server's entries, and the errors it met listing them.
pub fn receive(c: &mut Conn) -> io::Result<(Listing, Vec<String>)> {
    let mut map = BTreeMap::new();
    let mut errors = Vec::new();
    loop {
        match c.recv()? {
            Msg::Entry {
                path,
                meta,
                size,
                hash,
                link,
            } => {
                map.insert(
                    path,
                    Entry {
                        meta,
                        size,
                        hash,
                        link,
                    },
                );
            }
            Msg::Fail { msg, .. } => errors.push(format!("remote: {msg}")),
            Msg::Finished => return Ok((map, errors)),
            other => return Err(c.refused(other)),
        }
    }
}

/// Every difference between the two sides, one line each ("" is the root itself).
pub fn compare(a: &Listing, b: &Listing) -> Vec<String> {
    let mut out = Vec::new();
    let name = |p: &[u8]| {
        if p.is_empty() {
            ".".to_string()
        } else {
            show(p)
        }
    };
    for (p, x) in a {
        let Some(y) = b.get(p) else {
            out.push(format!("missing at the far end: {}", name(p)));
            continue;
        };
        let (tx, ty) = (x.meta.mode & libc::S_IFMT, y.meta.mode & libc::S_IFMT);
        if tx != ty {
            out.push(format!("type differs: {}", name(p)));
        } else if x.size != y.size {
            out.push(format!(
                "size differs: {} ({} vs {})",
                name(p),
                x.size,
                y.size
            ));
        } else if x.hash != y.hash {
            out.push(format!("content differs: {}", name(p)));
        } else if x.link != y.link {
            out.push(format!("symlink target differs: {}", name(p)));
        } else if tx != libc::S_IFLNK && x.meta.mode != y.meta.mode {
            out.push(format!(
                "mode differs: {} ({:o} vs {:o})",
                name(p),
                x.meta.mode & 0o7777,
                y.meta.mode & 0o7777
            ));
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) {
            out.push(format!("only at the far end: {}", name(p)));
        }
    }
    out
}
