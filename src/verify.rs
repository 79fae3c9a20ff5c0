//! Checking copies: xxh3 helpers for the streamed hash, the past-the-cache re-read behind
//! `--verify=full`, `ferry verify` (tree against tree, or tree against a manifest, in parallel),
//! and the demo's full metadata comparison.

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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
        (Err(e), _) => return out.push(format!("{}: {e}", a.display())),
        (_, Err(e)) => return out.push(format!("{}: {e}", b.display())),
    };
    if ma.file_type() != mb.file_type() {
        return out.push(format!("{}: type differs", b.display()));
    }
    if !ma.file_type().is_symlink() && ma.mode() != mb.mode() {
        out.push(format!(
            "{}: mode {:o} != {:o}",
            b.display(),
            mb.mode(),
            ma.mode()
        ));
    }
    if !ma.is_dir() && (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
        out.push(format!("{}: mtime differs", b.display()));
    }
    if ma.file_type().is_symlink() {
        if fs::read_link(a).ok() != fs::read_link(b).ok() {
            out.push(format!("{}: link target differs", b.display()));
        }
    } else if ma.is_file() {
        if ma.len() != mb.len() {
            out.push(format!(
                "{}: size {} != {}",
                b.display(),
                mb.len(),
                ma.len()
            ));
        } else {
            match (hash_file(a), hash_file(b)) {
                (Ok(x), Ok(y)) if x == y => {}
                (Ok(_), Ok(_)) => out.push(format!("{}: content differs", b.display())),
                (Err(e), _) | (_, Err(e)) => out.push(format!("{}: {e}", b.display())),
            }
        }
    } else if ma.is_dir() {
        if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
            out.push(format!("{}: directory mtime differs", b.display()));
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
            out.push(format!("{}: entries differ", b.display()));
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
    use crate::error::Error;
    use std::os::fd::AsRawFd;
    let fd = crate::meta::open_source(path)?;
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

/// What `ferry verify` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub files: u64,
    pub bytes: u64,
    /// One line per difference, sorted.
    pub mismatches: Vec<String>,
    pub secs: f64,
}

/// Most mismatches kept (the count goes on).
pub const MAX_MISMATCHES: usize = 100_000;

#[derive(Default)]
struct Shared {
    files: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
    extra: std::sync::atomic::AtomicU64,
    out: std::sync::Mutex<Vec<String>>,
}

impl Shared {
    fn bad(&self, rel: &Path, what: impl std::fmt::Display) {
        let mut g = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() < MAX_MISMATCHES {
            g.push(format!("{}: {what}", crate::manifest::escape(rel)));
        } else {
            self.extra
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn into_report(self, t0: std::time::Instant) -> VerifyReport {
        let mut m = self.out.into_inner().unwrap_or_else(|p| p.into_inner());
        m.sort();
        let extra = self.extra.into_inner();
        if extra > 0 {
            m.push(format!("... and {extra} more differences"));
        }
        VerifyReport {
            files: self.files.into_inner(),
            bytes: self.bytes.into_inner(),
            mismatches: m,
            secs: t0.elapsed().as_secs_f64(),
        }
    }
}

/// Runs `work` on `threads` workers over a shared queue that the work may grow; returns when
/// the queue is empty and no worker holds an item.
fn pool<T: Send>(threads: usize, first: Vec<T>, work: impl Fn(T, &dyn Fn(T)) + Sync) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let q = crossbeam_queue::SegQueue::new();
    let pending = AtomicUsize::new(first.len());
    for t in first {
        q.push(t);
    }
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let push = |t: T| {
                    pending.fetch_add(1, Ordering::AcqRel);
                    q.push(t);
                };
                loop {
                    match q.pop() {
                        Some(t) => {
                            work(t, &push);
                            pending.fetch_sub(1, Ordering::AcqRel);
                        }
                        None if pending.load(Ordering::Acquire) == 0 => return,
                        None => std::thread::sleep(std::time::Duration::from_micros(200)),
                    }
                }
            });
        }
    });
}

/// Workers for verify: I/O bound, so more than the CPUs (small files wait on the disk).
fn workers(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        2 * std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

/// `ferry verify SRC DST`: compares two trees by content (type, size, xxh3 of regular files,
/// symlink targets), in parallel. Every entry of either side that the other lacks is listed.
pub fn verify_trees(a: &Path, b: &Path, threads: usize) -> VerifyReport {
    let t0 = std::time::Instant::now();
    let sh = Shared::default();
    pool(
        workers(threads),
        vec![PathBuf::new()],
        |rel: PathBuf, push| {
            let (pa, pb) = (join(a, &rel), join(b, &rel));
            let (ma, mb) = match (fs::symlink_metadata(&pa), fs::symlink_metadata(&pb)) {
                (Ok(x), Ok(y)) => (x, y),
                (Err(e), _) => return sh.bad(&rel, format!("source unreadable ({e})")),
                (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    return sh.bad(&rel, "missing in destination");
                }
                (_, Err(e)) => return sh.bad(&rel, format!("destination unreadable ({e})")),
            };
            let (ta, tb) = (ma.file_type(), mb.file_type());
            if ta != tb {
                return sh.bad(&rel, "type differs");
            }
            if ta.is_symlink() {
                if fs::read_link(&pa).ok() != fs::read_link(&pb).ok() {
                    sh.bad(&rel, "symlink target differs");
                }
            } else if ta.is_file() {
                sh.files.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if ma.len() != mb.len() {
                    return sh.bad(&rel, format!("size {} != {}", mb.len(), ma.len()));
                }
                match (reread(&pa), reread(&pb)) {
                    (Ok((na, x)), Ok((nb, y))) if x == y && na == nb => {
                        sh.bytes.fetch_add(na, std::sync::atomic::Ordering::Relaxed);
                    }
                    (Ok(_), Ok(_)) => sh.bad(&rel, "content differs"),
                    (Err(e), _) | (_, Err(e)) => sh.bad(&rel, e),
                }
            } else if ta.is_dir() {
                let names = |p: &Path| -> Result<
                    std::collections::BTreeSet<std::ffi::OsString>,
                    std::io::Error,
                > {
                    fs::read_dir(p)?.map(|e| e.map(|e| e.file_name())).collect()
                };
                let (na, nb) = match (names(&pa), names(&pb)) {
                    (Ok(x), Ok(y)) => (x, y),
                    (Err(e), _) => return sh.bad(&rel, format!("cannot list source ({e})")),
                    (_, Err(e)) => return sh.bad(&rel, format!("cannot list destination ({e})")),
                };
                for n in nb.difference(&na) {
                    sh.bad(&rel.join(n), "not in source");
                }
                for n in na {
                    if nb.contains(&n) {
                        push(rel.join(n));
                    } else {
                        sh.bad(&rel.join(n), "missing in destination");
                    }
                }
            } else if (ma.rdev(), ma.mode()) != (mb.rdev(), mb.mode()) && !ta.is_fifo() {
                sh.bad(&rel, "device number differs");
            }
        },
    );
    sh.into_report(t0)
}

fn join(root: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

/// `ferry verify --manifest FILE DST`: every record's file must exist under `dst` with its size
/// and xxh3; regular files under `dst` that the manifest does not list are reported too.
pub fn verify_manifest(
    records: Vec<crate::manifest::Record>,
    dst: &Path,
    threads: usize,
) -> VerifyReport {
    use std::collections::HashSet;
    let t0 = std::time::Instant::now();
    let sh = Shared::default();
    let listed: HashSet<PathBuf> = records.iter().map(|r| r.path.clone()).collect();
    let dup = records.len() - listed.len();
    if dup > 0 {
        sh.bad(
            Path::new("(manifest)"),
            format!("{dup} paths are listed twice"),
        );
    }
    pool(
        workers(threads),
        records,
        |r: crate::manifest::Record, _| {
            let p = dst.join(&r.path);
            match fs::symlink_metadata(&p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return sh.bad(&r.path, "missing in destination");
                }
                Err(e) => return sh.bad(&r.path, format!("unreadable ({e})")),
                Ok(m) if !m.file_type().is_file() => return sh.bad(&r.path, "not a regular file"),
                Ok(m) if m.len() != r.size => {
                    return sh.bad(&r.path, format!("size {} != {}", m.len(), r.size));
                }
                Ok(_) => {}
            }
            sh.files.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match reread(&p) {
                Ok((n, h)) if h == r.hash && n == r.size => {
                    sh.bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(_) => sh.bad(&r.path, "content differs"),
                Err(e) => sh.bad(&r.path, e),
            }
        },
    );
    // Files the manifest does not know (a walk of dst, in parallel too).
    pool(
        workers(threads),
        vec![PathBuf::new()],
        |rel: PathBuf, push| {
            let Ok(it) = fs::read_dir(join(dst, &rel)) else {
                return sh.bad(&rel, "cannot list destination directory");
            };
            for e in it.flatten() {
                let r = rel.join(e.file_name());
                match e.file_type() {
                    Ok(t) if t.is_dir() => push(r),
                    Ok(t) if t.is_file() && !listed.contains(&r) => sh.bad(&r, "not in manifest"),
                    _ => {}
                }
            }
        },
    );
    sh.into_report(t0)
}
