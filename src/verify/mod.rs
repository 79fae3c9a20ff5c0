//! Checking copies: xxh3 helpers for the streamed hash, the past-the-cache re-read behind
//! `--verify=full`, `ferry verify` (tree against tree, or tree against a manifest, in parallel),
//! and the demo's full metadata comparison.

mod trees;
pub use trees::{MAX_MISMATCHES, VerifyReport, verify_manifest, verify_trees};

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use xxhash_rust::xxh3::Xxh3;

/// Feeds `n` zero bytes (a hole) to a hash.
pub fn hash_zeros(h: &mut Xxh3, mut n: u64) {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// Streaming xxh3-64 of a file's bytes.
pub fn hash_file(p: &Path) -> std::io::Result<u64> {
    let mut f = fs::File::open(p)?;
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.digest());
        }
        h.update(&buf[..n]);
    }
}

/// Every difference between `a` and its copy `b`, one line each (empty: identical). Entries
/// in `b` that are not in `a` are differences too.
pub fn compare_trees(a: &Path, b: &Path) -> Vec<String> {
    let mut out = Vec::new();
    compare(a, b, &mut out);
    out
}

fn compare(a: &Path, b: &Path, out: &mut Vec<String>) {
    let (ma, mb) = match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(e), _) => return out.push(format!("{}: {e}", crate::error::shown(a))),
        (_, Err(e)) => return out.push(format!("{}: {e}", crate::error::shown(b))),
    };
    if ma.file_type() != mb.file_type() {
        return out.push(format!("{}: type differs", crate::error::shown(b)));
    }
    if !ma.file_type().is_symlink() && ma.mode() != mb.mode() {
        out.push(format!(
            "{}: mode {:o} != {:o}",
            crate::error::shown(b),
            mb.mode(),
            ma.mode()
        ));
    }
    if !ma.is_dir() && (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
        out.push(format!("{}: mtime differs", crate::error::shown(b)));
    }
    if ma.file_type().is_symlink() {
        if fs::read_link(a).ok() != fs::read_link(b).ok() {
            out.push(format!("{}: link target differs", crate::error::shown(b)));
        }
    } else if ma.is_file() {
        if ma.len() != mb.len() {
            out.push(format!(
                "{}: size {} != {}",
                crate::error::shown(b),
                mb.len(),
                ma.len()
            ));
        } else {
            match (hash_file(a), hash_file(b)) {
                (Ok(x), Ok(y)) if x == y => {}
                (Ok(_), Ok(_)) => out.push(format!("{}: content differs", crate::error::shown(b))),
                (Err(e), _) | (_, Err(e)) => out.push(format!("{}: {e}", crate::error::shown(b))),
            }
        }
    } else if ma.is_dir() {
        if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
            out.push(format!(
                "{}: directory mtime differs",
                crate::error::shown(b)
            ));
        }
        let names = |p: &Path| -> Vec<std::ffi::OsString> {
            let mut v: Vec<_> = fs::read_dir(p)
                .map(|it| it.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
                .unwrap_or_default();
            v.sort();
            v
        };
        let (na, nb) = (names(a), names(b));
        if na != nb {
            out.push(format!("{}: entries differ", crate::error::shown(b)));
        }
        for n in &na {
            if nb.contains(n) {
                compare(&a.join(n), &b.join(n), out);
            }
        }
    }
}

/// Read buffer per thread for re-reads (1 MiB: large enough for full disk speed).
const REREAD_BUF: usize = 1 << 20;

thread_local! {
    static REREAD: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn fadvise_dontneed(fd: i32) {
    // SAFETY: plain syscall on an fd we own. Advice only: if the kernel keeps the pages, the
    // read is served from memory, which is the best this can do without O_DIRECT.
    unsafe {
        libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// Reads a file back past the page cache (its clean pages are dropped first, and again after,
/// so verifying does not evict the user's working set) and returns (bytes read, xxh3).
/// Used on durable files only: dirty pages cannot be dropped.
pub fn reread(path: &std::path::Path) -> Result<(u64, u64), crate::error::Error> {
    reread_fd(crate::meta::open_source(path)?, path)
}

/// `reread` of a file already open (`path` names it in errors).
pub fn reread_fd(
    fd: std::os::fd::OwnedFd,
    path: &std::path::Path,
) -> Result<(u64, u64), crate::error::Error> {
    use crate::error::Error;
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    fadvise_dontneed(raw);
    let mut h = Xxh3::new();
    let mut total = 0u64;
    let r = REREAD.with(|b| {
        let mut buf = b.borrow_mut();
        if buf.len() < REREAD_BUF {
            buf.resize(REREAD_BUF, 0);
        }
        loop {
            // SAFETY: buf is valid for REREAD_BUF bytes; fd is open.
            let n = unsafe {
                libc::pread(
                    raw,
                    buf.as_mut_ptr().cast(),
                    REREAD_BUF,
                    total as libc::off_t,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(Error::os("verify read", path, e));
            }
            if n == 0 {
                return Ok(());
            }
            h.update(&buf[..n as usize]);
            total += n as u64;
        }
    });
    fadvise_dontneed(raw);
    r.map(|_| (total, h.digest()))
}
