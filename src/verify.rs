//! Tree comparison by content (xxh3), type, mode, mtime and link target. Used by the demo; the
//! integrity issue grows it into `ferry verify`.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use xxhash_rust::xxh3::Xxh3;

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
