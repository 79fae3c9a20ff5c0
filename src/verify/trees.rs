//! `ferry verify`: a tree against a tree, or a tree against a manifest, in parallel. Entries are
//! reached like the copy reaches them: relative to their open parent directory (fstatat,
//! openat, readlinkat), directories by paths of any length (meta::cpath), so every tree ferry
//! can copy, however deep, can be verified.

use super::{reread, reread_fd};
use crate::dirents::{DirStream, Kind, os_name};
use crate::meta;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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

/// Most pairs of directories held open for their queued files; past it a directory's files are
/// compared by the worker that listed it (the fd count stays bounded for any tree).
const MAX_OPEN_PAIRS: usize = 256;

struct Shared {
    /// How the root itself is named in a difference (an empty relative path would print
    /// nothing): the destination as given.
    root: String,
    files: AtomicU64,
    bytes: AtomicU64,
    extra: AtomicU64,
    open_pairs: AtomicUsize,
    out: std::sync::Mutex<Vec<String>>,
}

impl Shared {
    fn new(root: &Path) -> Shared {
        Shared {
            root: crate::error::shown(root),
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            extra: AtomicU64::new(0),
            open_pairs: AtomicUsize::new(0),
            out: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn bad(&self, rel: &Path, what: impl std::fmt::Display) {
        let mut g = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() < MAX_MISMATCHES {
            let shown = if rel.as_os_str().is_empty() {
                self.root.clone()
            } else {
                crate::error::shown(rel)
            };
            g.push(format!("{shown}: {what}"));
        } else {
            self.extra.fetch_add(1, Ordering::Relaxed);
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

fn join(root: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

fn kind_name(st: &libc::stat) -> &'static str {
    match meta::file_type(st) {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "fifo",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFSOCK => "socket",
        _ => "unknown type",
    }
}

/// A source and a destination directory, open for the *at() calls on their common entries.
struct Pair<'a> {
    a: DirStream,
    b: DirStream,
    /// Held in `Shared::open_pairs` while queued files use it.
    counted: Option<&'a AtomicUsize>,
}

impl Drop for Pair<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.counted {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Where one side's entry is: a name in an open directory, or (a root given as a file) a path.
enum At<'a> {
    In(&'a DirStream, &'a CStr),
    Path(&'a Path),
}

impl At<'_> {
    fn reread(&self, shown: &Path) -> Result<(u64, u64), crate::error::Error> {
        match self {
            At::In(d, n) => {
                let fd = d
                    .open_entry(n)
                    .map_err(|e| crate::error::Error::os("open", shown, e))?;
                reread_fd(fd, shown)
            }
            At::Path(p) => reread(p),
        }
    }

    fn read_link(&self) -> Option<Vec<u8>> {
        match self {
            At::In(d, n) => d.read_link(n).ok(),
            At::Path(p) => {
                use std::os::unix::ffi::OsStrExt;
                let c = meta::cpath(p, "readlink").ok()?;
                std::fs::read_link(c.as_path())
                    .ok()
                    .map(|t| t.as_os_str().as_bytes().to_vec())
            }
        }
    }
}

/// Work of `ferry verify SRC DST`: a directory to list, or an entry other than a directory.
enum Item<'a> {
    Dir(PathBuf),
    Leaf {
        rel: PathBuf,
        name: CString,
        st: Box<(libc::stat, libc::stat)>,
        dirs: Arc<Pair<'a>>,
    },
}

/// Compares two entries of the same type that are not directories.
fn compare_leaf(sh: &Shared, rel: &Path, st: (&libc::stat, &libc::stat), at: (At, At)) {
    let (sa, sb) = st;
    match meta::file_type(sa) {
        libc::S_IFLNK if at.0.read_link() != at.1.read_link() => {
            sh.bad(rel, "symlink target differs")
        }
        libc::S_IFLNK => {}
        libc::S_IFREG => {
            sh.files.fetch_add(1, Ordering::Relaxed);
            if sa.st_size != sb.st_size {
                return sh.bad(rel, format!("size {} != {}", sb.st_size, sa.st_size));
            }
            match (at.0.reread(rel), at.1.reread(rel)) {
                (Ok((na, x)), Ok((nb, y))) if x == y && na == nb => {
                    sh.bytes.fetch_add(na, Ordering::Relaxed);
                }
                (Ok(_), Ok(_)) => sh.bad(rel, "content differs"),
                (Err(e), _) | (_, Err(e)) => sh.bad(rel, e),
            }
        }
        libc::S_IFIFO => {}
        _ if (sa.st_rdev, sa.st_mode) != (sb.st_rdev, sb.st_mode) => {
            sh.bad(rel, "device number differs")
        }
        _ => {}
    }
}

fn type_differs(sh: &Shared, rel: &Path, sa: &libc::stat, sb: &libc::stat) {
    sh.bad(
        rel,
        format!(
            "type differs ({} in source, {} in destination)",
            kind_name(sa),
            kind_name(sb)
        ),
    );
}

/// Lists one directory on both sides: names only one side has are differences, common
/// subdirectories and files become items (files inline once too many pairs are open).
fn compare_dir<'a>(sh: &'a Shared, roots: (&Path, &Path), rel: PathBuf, push: &dyn Fn(Item<'a>)) {
    let open = |root: &Path| DirStream::open(&join(root, &rel));
    let (mut da, mut db) = match (open(roots.0), open(roots.1)) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(e), _) => return sh.bad(&rel, format!("cannot list source ({e})")),
        (_, Err(e)) => return sh.bad(&rel, format!("cannot list destination ({e})")),
    };
    let (na, nb) = match (da.entries(), db.entries()) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(e), _) => return sh.bad(&rel, format!("cannot list source ({e})")),
        (_, Err(e)) => return sh.bad(&rel, format!("cannot list destination ({e})")),
    };
    let na: std::collections::BTreeMap<CString, Kind> = na.into_iter().collect();
    let nb: std::collections::BTreeMap<CString, Kind> = nb.into_iter().collect();
    for n in nb.keys().filter(|n| !na.contains_key(*n)) {
        sh.bad(&rel.join(os_name(n)), "not in source");
    }
    let counted = sh.open_pairs.fetch_add(1, Ordering::AcqRel) < MAX_OPEN_PAIRS;
    if !counted {
        sh.open_pairs.fetch_sub(1, Ordering::AcqRel);
    }
    let dirs = Arc::new(Pair {
        a: da,
        b: db,
        counted: counted.then_some(&sh.open_pairs),
    });
    for (name, _) in na {
        let r = rel.join(os_name(&name));
        if !nb.contains_key(&name) {
            sh.bad(&r, "missing in destination");
            continue;
        }
        let (sa, sb) = match (dirs.a.stat(&name), dirs.b.stat(&name)) {
            (Ok(x), Ok(y)) => (x, y),
            (Err(e), _) => {
                sh.bad(&r, format!("source unreadable ({e})"));
                continue;
            }
            (_, Err(e)) => {
                sh.bad(&r, format!("destination unreadable ({e})"));
                continue;
            }
        };
        if meta::file_type(&sa) != meta::file_type(&sb) {
            type_differs(sh, &r, &sa, &sb);
        } else if meta::file_type(&sa) == libc::S_IFDIR {
            push(Item::Dir(r));
        } else if counted {
            let dirs = dirs.clone();
            push(Item::Leaf {
                rel: r,
                name,
                st: Box::new((sa, sb)),
                dirs,
            });
        } else {
            let at = (At::In(&dirs.a, &name), At::In(&dirs.b, &name));
            compare_leaf(sh, &r, (&sa, &sb), at);
        }
    }
}

/// `ferry verify SRC DST`: compares two trees by content (type, size, xxh3 of regular files,
/// symlink targets), in parallel. Every entry of either side that the other lacks is listed.
pub fn verify_trees(a: &Path, b: &Path, threads: usize) -> VerifyReport {
    let t0 = std::time::Instant::now();
    let sh = Shared::new(b);
    let root = Path::new("");
    match (meta::lstat(a), meta::lstat(b)) {
        (Err(e), _) => sh.bad(root, format!("source unreadable ({e})")),
        (_, Err(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
            sh.bad(root, "missing in destination")
        }
        (_, Err(e)) => sh.bad(root, format!("destination unreadable ({e})")),
        (Ok(sa), Ok(sb)) if meta::file_type(&sa) != meta::file_type(&sb) => {
            type_differs(&sh, root, &sa, &sb)
        }
        (Ok(sa), Ok(_)) if meta::file_type(&sa) == libc::S_IFDIR => {
            let sh = &sh;
            pool(
                workers(threads),
                vec![Item::Dir(PathBuf::new())],
                |item: Item, push| match item {
                    Item::Dir(rel) => compare_dir(sh, (a, b), rel, push),
                    Item::Leaf {
                        rel,
                        name,
                        st,
                        dirs,
                    } => {
                        let at = (At::In(&dirs.a, &name), At::In(&dirs.b, &name));
                        compare_leaf(sh, &rel, (&st.0, &st.1), at);
                    }
                },
            );
        }
        (Ok(sa), Ok(sb)) => compare_leaf(&sh, root, (&sa, &sb), (At::Path(a), At::Path(b))),
    }
    sh.into_report(t0)
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
    let sh = Shared::new(dst);
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
        |r: crate::manifest::Record, _| check_record(&sh, dst, &r),
    );
    // Files the manifest does not know (a walk of dst, in parallel too).
    pool(
        workers(threads),
        vec![PathBuf::new()],
        |rel: PathBuf, push| {
            let listing = DirStream::open(&join(dst, &rel)).and_then(|mut d| {
                d.entries()
                    .map_err(|e| crate::error::Error::os("readdir", &join(dst, &rel), e))
            });
            let Ok(entries) = listing else {
                return sh.bad(&rel, "cannot list destination directory");
            };
            for (name, kind) in entries {
                let r = rel.join(os_name(&name));
                match kind {
                    Kind::Dir => push(r),
                    Kind::File if !listed.contains(&r) => sh.bad(&r, "not in manifest"),
                    _ => {}
                }
            }
        },
    );
    sh.into_report(t0)
}

/// One manifest record against the file under `dst` (paths of any length).
fn check_record(sh: &Shared, dst: &Path, r: &crate::manifest::Record) {
    let p = dst.join(&r.path);
    match meta::lstat(&p) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            return sh.bad(&r.path, "missing in destination");
        }
        Err(e) => return sh.bad(&r.path, format!("unreadable ({e})")),
        Ok(st) if meta::file_type(&st) != libc::S_IFREG => {
            return sh.bad(&r.path, "not a regular file");
        }
        Ok(st) if st.st_size as u64 != r.size => {
            return sh.bad(&r.path, format!("size {} != {}", st.st_size, r.size));
        }
        Ok(_) => {}
    }
    sh.files.fetch_add(1, Ordering::Relaxed);
    match reread(&p) {
        Ok((n, h)) if h == r.hash && n == r.size => {
            sh.bytes.fetch_add(n, Ordering::Relaxed);
        }
        Ok(_) => sh.bad(&r.path, "content differs"),
        Err(e) => sh.bad(&r.path, e),
    }
}
