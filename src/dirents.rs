//! Directory listing with getdents64 into a caller's reused buffer, trusting d_type (a stat
//! only for DT_UNKNOWN), and fstatat relative to the open directory.

use crate::error::Error;
use crate::meta;
use std::ffi::{CStr, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bytes per getdents64 call: about 2,000 entries with short names. Allocated once per reactor.
pub const DIRENT_BUF: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// FIFO, socket, char or block device.
    Special,
    Unknown,
}

pub struct DirStream {
    fd: OwnedFd,
}

impl DirStream {
    pub fn open(p: &Path) -> Result<DirStream, Error> {
        let c = meta::cpath(p, "opendir")?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
        // SAFETY: valid C string.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd < 0 {
            return Err(Error::last("opendir", p));
        }
        // SAFETY: fresh fd.
        Ok(DirStream {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// A second fd on the same directory (F_DUPFD_CLOEXEC), for *at() calls on its entries.
    pub fn dup_fd(&self) -> std::io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// Reads the next batch of entries into `buf`; `Ok(0)` at the end.
    pub fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            // SAFETY: buf is writable for its length; the fd is an open directory.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }

    /// Size of an entry (not following links), relative to this directory: statx asking for
    /// the size only.
    pub fn size(&self, name: &CStr) -> std::io::Result<u64> {
        let mut sx: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, C string and out-pointer.
        let r = unsafe {
            libc::statx(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC,
                libc::STATX_SIZE,
                &mut sx,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(sx.stx_size)
    }

    /// Opens an entry for reading, relative to this directory (not following a symlink; a
    /// FIFO swapped in does not block the open).
    pub fn open_entry(&self, name: &CStr) -> std::io::Result<OwnedFd> {
        let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK;
        // SAFETY: valid fd and C string.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), name.as_ptr(), flags) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh fd.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// A symlink entry's target, relative to this directory.
    pub fn read_link(&self, name: &CStr) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: valid fd, C string, and a buffer as long as we say.
        let n = unsafe {
            libc::readlinkat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// Every entry's name and kind (DT_UNKNOWN resolved with a stat), read to the end.
    pub fn entries(&mut self) -> std::io::Result<Vec<(std::ffi::CString, Kind)>> {
        let mut buf = vec![0u8; DIRENT_BUF];
        let mut out = Vec::new();
        loop {
            let n = self.fill(&mut buf)?;
            if n == 0 {
                break;
            }
            let mut err = None;
            parse(&buf[..n], |name, kind| {
                let kind = match kind {
                    Kind::Unknown => match self.stat(name) {
                        Ok(st) => kind_of_mode(st.st_mode),
                        Err(e) => return err = Some(e),
                    },
                    k => k,
                };
                out.push((name.to_owned(), kind));
            });
            if let Some(e) = err {
                return Err(e);
            }
        }
        Ok(out)
    }

    /// lstat of an entry, relative to this directory (no path walk).
    pub fn stat(&self, name: &CStr) -> std::io::Result<libc::stat> {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, C string and out-pointer.
        let r = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(st)
    }
}

pub fn kind_of_mode(mode: u32) -> Kind {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFREG => Kind::File,
        libc::S_IFLNK => Kind::Symlink,
        _ => Kind::Special,
    }
}

/// Calls `f(name with its NUL, kind)` for each entry of a getdents64 batch, skipping . and ..
pub fn parse(buf: &[u8], mut f: impl FnMut(&CStr, Kind)) {
    for (off, len) in records(buf) {
        if let Some((name, kind)) = entry(&buf[off..off + len]) {
            f(name, kind);
        }
    }
}

/// `parse`, but in inode-number order instead of the directory's (hash) order. Files written
/// one after another get rising inode numbers and, mostly, rising block addresses: copying
/// them in this order turns a cold copy's scattered reads into mostly ascending ones.
pub fn parse_by_inode(
    buf: &[u8],
    order: &mut Vec<(u64, usize, usize)>,
    mut f: impl FnMut(&CStr, Kind),
) {
    order.clear();
    order.extend(records(buf).map(|(off, len)| {
        let ino = u64::from_ne_bytes(buf[off..off + 8].try_into().expect("8 bytes"));
        (ino, off, len)
    }));
    order.sort_unstable();
    for &(_, off, len) in order.iter() {
        if let Some((name, kind)) = entry(&buf[off..off + len]) {
            f(name, kind);
        }
    }
}

/// The (offset, length) of every record of a getdents64 buffer.
// struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
fn records(buf: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off + 19 > buf.len() {
            return None;
        }
        let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
        assert!(
            reclen >= 19 && off + reclen <= buf.len(),
            "malformed dirent"
        );
        let rec = (off, reclen);
        off += reclen;
        Some(rec)
    })
}

/// One record's name and kind; None for "." and "..".
fn entry(rec: &[u8]) -> Option<(&CStr, Kind)> {
    let kind = match rec[18] {
        libc::DT_DIR => Kind::Dir,
        libc::DT_REG => Kind::File,
        libc::DT_LNK => Kind::Symlink,
        libc::DT_UNKNOWN => Kind::Unknown,
        _ => Kind::Special,
    };
    let name = CStr::from_bytes_until_nul(&rec[19..]).expect("dirent names are NUL-terminated");
    let b = name.to_bytes();
    (b != b"." && b != b"..").then_some((name, kind))
}

/// The name as an OsStr (bytes, any encoding).
pub fn os_name(name: &CStr) -> &OsStr {
    OsStr::from_bytes(name.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_order_lists_the_same_entries_by_rising_inode() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        for i in 0..500 {
            std::fs::write(t.path().join(format!("f{i}")), b"x").unwrap();
        }
        let mut stream = DirStream::open(t.path()).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let (mut plain, mut sorted, mut order) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let n = stream.fill(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            parse(&buf[..n], |name, _| plain.push(name.to_owned()));
            parse_by_inode(&buf[..n], &mut order, |name, _| {
                sorted.push(name.to_owned())
            });
        }
        let inos: Vec<u64> = sorted
            .iter()
            .map(|n| {
                let p = t.path().join(os_name(n));
                std::fs::symlink_metadata(p).unwrap().ino()
            })
            .collect();
        assert!(inos.windows(2).all(|w| w[0] < w[1]), "not in inode order");
        plain.sort();
        sorted.sort();
        assert_eq!(plain, sorted);
        assert_eq!(plain.len(), 500);
    }

    #[test]
    fn lists_every_entry_with_its_type() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..3000 {
            std::fs::write(t.path().join(format!("file-{i}")), b"x").unwrap();
        }
        std::fs::create_dir(t.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("x", t.path().join("lnk")).unwrap();
        let mut d = DirStream::open(t.path()).unwrap();
        let mut buf = vec![0u8; 4096]; // small, so several batches are needed
        let (mut files, mut dirs, mut links, mut batches) = (0, 0, 0, 0);
        loop {
            let n = d.fill(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            batches += 1;
            parse(&buf[..n], |name, k| {
                let k = if k == Kind::Unknown {
                    kind_of_mode(d.stat(name).unwrap().st_mode)
                } else {
                    k
                };
                match k {
                    Kind::File => files += 1,
                    Kind::Dir => dirs += 1,
                    Kind::Symlink => links += 1,
                    _ => {}
                }
            });
        }
        assert_eq!((files, dirs, links), (3000, 1, 1));
        assert!(batches > 1);
    }
}
