//! Extended attributes (POSIX ACLs included: they are the system.posix_acl_* attributes) of
//! an entry named relative to a directory fd. They are read and set through
//! `/proc/self/fd/DIR/NAME` with the l*xattr calls, so a symlink, FIFO or device node is
//! never followed or opened.

use super::beneath;
use super::frame::MAX_PAYLOAD;
use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

/// (name, value) pairs, as they travel in an Xattrs message.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The kernel's limit for one value and for the list of names.
const XATTR_MAX: usize = 64 << 10;

fn at(dir: RawFd, name: &[u8]) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{dir}/").into_bytes();
    p.extend_from_slice(name);
    beneath::cstr(&p)
}

fn no_xattrs(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENODATA))
}

/// The extended attributes of `name` in `dir`, sorted by name (none where its filesystem
/// has none).
pub fn read(dir: RawFd, name: &[u8]) -> io::Result<Pairs> {
    let c = at(dir, name)?;
    // SAFETY: a NULL buffer of size 0 is the documented size query; valid C string.
    let need = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if need <= 0 {
        let e = io::Error::last_os_error();
        return if need == 0 || no_xattrs(&e) {
            Ok(Vec::new())
        } else {
            Err(e)
        };
    }
    let mut names = vec![0u8; XATTR_MAX];
    // SAFETY: the buffer is as long as we say.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut val = vec![0u8; XATTR_MAX];
    for x in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
    {
        let cx = CString::new(x).expect("split on NUL");
        // SAFETY: as above.
        let k =
            unsafe { libc::lgetxattr(c.as_ptr(), cx.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if k < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENODATA) {
                continue; // removed between the list and the read
            }
            return Err(io::Error::new(
                e.kind(),
                format!("getxattr {}: {e}", String::from_utf8_lossy(x)),
            ));
        }
        out.push((x.to_vec(), val[..k as usize].to_vec()));
    }
    out.sort();
    Ok(out)
}

/// Whether `pairs` fit one Xattrs frame.
pub fn fits(pairs: &Pairs) -> bool {
    4 + pairs
        .iter()
        .map(|(n, v)| 8 + n.len() + v.len())
        .sum::<usize>()
        <= MAX_PAYLOAD
}

/// Sets `pairs` on `name` in `dir`. Without root, EPERM (trusted.*, security.*) is expected
/// and skipped, as local copies do; anything else is an error naming the attribute.
pub fn apply(dir: RawFd, name: &[u8], pairs: &Pairs, root: bool) -> io::Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    let c = at(dir, name)?;
    for (x, v) in pairs {
        let cx = beneath::cstr(x)?;
        // SAFETY: valid C strings and slice.
        let r = unsafe { libc::lsetxattr(c.as_ptr(), cx.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) && !root {
                continue;
            }
            return Err(io::Error::new(
                e.kind(),
                format!("setxattr {}: {e}", String::from_utf8_lossy(x)),
            ));
        }
    }
    Ok(())
}
