//! The receiver's rarer entries: hard links, FIFOs and device nodes, and holes of sparse
//! files. Links and nodes are made at their temp name and named with the batch, like files.

use super::{Placed, Receiver, apply_at};
use crate::net::beneath::{self, show};
use crate::net::frame::ProtoError;
use crate::net::msg::{Meta, Msg};
use std::io;
use std::os::fd::AsRawFd;

/// Zeros hashed in place of a hole's bytes.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Feeds `n` zero bytes to a hash (a hole hashes as the zeros a read of it returns).
pub fn hash_zeros(h: &mut xxhash_rust::xxh3::Xxh3, mut n: u64) {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

impl Receiver {
    /// `rel` becomes another name of the already named file `target`.
    pub(super) fn link(
        &mut self,
        id: u64,
        rel: Vec<u8>,
        target: Vec<u8>,
        out: &mut Vec<Msg>,
    ) -> Result<(), String> {
        let tfull = self.full(&target)?;
        if tfull.is_empty() {
            return Err("a link cannot name the export's root".into());
        }
        let (full, _) = self.begin_entry(id, &rel, "link")?;
        // None: that name is that file already (a move still asks its source removed).
        match self.link_tmp(&full, &tfull).transpose() {
            Some(r) => self.finish_entry(out, id, rel, "link", r, false),
            None => self.named_already(rel),
        }
        Ok(())
    }

    /// The link at its temp name; None when the final name is that file already (a rename
    /// of one name of a file onto another does nothing, and would leave the temp).
    fn link_tmp(&mut self, full: &[u8], tfull: &[u8]) -> io::Result<Option<Placed>> {
        let (tdir, tname) = self.parent(tfull)?;
        let (dir, name) = self.parent(full)?;
        let t = beneath::stat_at(tdir.fd.as_raw_fd(), &tname)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if t.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::other(format!(
                "'{}' is not a regular file",
                show(tfull)
            )));
        }
        let now = beneath::stat_at(dir.fd.as_raw_fd(), &name)?;
        if now.is_some_and(|s| (s.st_dev, s.st_ino) == (t.st_dev, t.st_ino)) {
            return Ok(None);
        }
        let tmp = self.temp_at(dir.fd.as_raw_fd(), &name);
        let _ = beneath::unlink_at(dir.fd.as_raw_fd(), &tmp); // a killed run's (our token)
        beneath::link_at(tdir.fd.as_raw_fd(), &tname, dir.fd.as_raw_fd(), &tmp)?;
        Ok(Some((dir, name, tmp)))
    }

    /// A FIFO or device node at its temp name, with its metadata; named with the batch.
    pub(super) fn node(
        &mut self,
        id: u64,
        rel: Vec<u8>,
        rdev: u64,
        meta: Meta,
        out: &mut Vec<Msg>,
    ) -> Result<(), String> {
        let (full, x) = self.begin_entry(id, &rel, "node")?;
        let kind = meta.mode & libc::S_IFMT;
        if ![libc::S_IFIFO, libc::S_IFCHR, libc::S_IFBLK].contains(&kind) {
            self.refuse(out, id, format!("'{}': not a FIFO or device", show(&rel)));
            return Ok(());
        }
        let root = self.root;
        let r = self.parent(&full).and_then(|(dir, name)| {
            let fd = dir.fd.as_raw_fd();
            let tmp = self.temp_at(fd, &name);
            let _ = beneath::unlink_at(fd, &tmp); // a killed run's (our token)
            beneath::mknod_at(fd, &tmp, kind | 0o600, rdev)?;
            let done = apply_at(fd, &tmp, &meta, &x, root).and_then(|()| chmod_at(fd, &tmp, &meta));
            if let Err(e) = done {
                let _ = beneath::unlink_at(fd, &tmp);
                return Err(e);
            }
            Ok((dir, name, tmp))
        });
        self.finish_entry(out, id, rel, "mknod", r, false);
        Ok(())
    }

    /// A hole: the file's offset moves on, and the hash takes the zeros.
    pub(super) fn hole(&mut self, len: u64) -> Result<(), String> {
        use std::io::{Seek, SeekFrom};
        let Some(inc) = self.cur.as_mut() else {
            return Err(ProtoError::Unexpected {
                what: "a hole outside a file",
            }
            .to_string());
        };
        if inc.failed.is_some() {
            return Ok(());
        }
        inc.written = inc.written.saturating_add(len);
        if inc.written > inc.size {
            inc.failed = Some(format!("'{}': more data than its size", show(&inc.rel)));
            return Ok(());
        }
        hash_zeros(&mut inc.hash, len);
        inc.sparse = true;
        if let Some(f) = inc.file.as_mut()
            && let Err(e) = f.seek(SeekFrom::Current(len as i64))
        {
            inc.fail_io("seek", e);
        }
        Ok(())
    }
}

/// The permission bits of a node (by name: a FIFO or device is never opened).
fn chmod_at(dir: i32, name: &[u8], m: &Meta) -> io::Result<()> {
    let c = beneath::cstr(name)?;
    // SAFETY: valid fd and C string.
    if unsafe { libc::fchmodat(dir, c.as_ptr(), m.mode & 0o7777, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
