//! Resolves `SRC... DST` into (source, target) pairs with cp -r semantics, and rejects bad input
//! before anything is written.

use crate::error::Error;
use crate::meta;
use std::path::{Path, PathBuf};

pub struct Root {
    pub src: PathBuf,
    pub target: PathBuf,
    pub st: libc::stat,
}

/// The directory whose filesystem receives the copies.
pub struct Plan {
    pub roots: Vec<Root>,
    /// Every source's target in command-line order (sources an earlier run already moved
    /// too): what the checkpoint records for the next run.
    pub targets: Vec<PathBuf>,
    /// `ferry move` sources that are gone because an earlier run of the job moved them.
    pub moved_before: u64,
    pub dest_dir: PathBuf,
    /// What manifest paths are relative to: the destination directory, or the directory that
    /// receives a single file copied to a new name.
    pub dest_root: PathBuf,
}

/// What an earlier run of the same job recorded (its checkpoint).
pub struct Earlier {
    /// Where each source landed, in command-line order (absolute).
    pub targets: Vec<PathBuf>,
    /// The job is a move: a source that is gone while its target exists was moved.
    pub moving: bool,
}

fn exists_follow(p: &Path) -> Option<std::fs::Metadata> {
    std::fs::metadata(p).ok()
}

/// Canonical form of a path that may not exist yet (its parent must).
fn canonical_target(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let parent = match p.parent() {
        Some(x) if !x.as_os_str().is_empty() => x,
        _ => Path::new("."),
    };
    Some(parent.canonicalize().ok()?.join(p.file_name()?))
}

fn base_name(src: &Path) -> Result<PathBuf, Error> {
    if let Some(n) = src.file_name() {
        return Ok(PathBuf::from(n));
    }
    // "." or ".." or "dir/..": use the real name.
    src.canonicalize()
        .map_err(|e| Error::os("stat", src, e))?
        .file_name()
        .map(PathBuf::from)
        .ok_or_else(|| Error::usage(src, "cannot copy the root directory by name"))
}

/// `SRC/.` (or `.`): cp's idiom for a directory's contents, which land in DST itself even when
/// DST exists (Path::file_name would drop the dot and name the directory).
pub fn names_contents(src: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let b = src.as_os_str().as_bytes();
    b == b"." || b.ends_with(b"/.")
}

/// The directory that receives DST's entry, checked before anything is written.
fn dest_dir_of(dest: &Path, dest_is_dir: bool) -> Result<PathBuf, Error> {
    if dest_is_dir {
        return Ok(dest.to_path_buf());
    }
    let parent = match dest.parent() {
        Some(x) if !x.as_os_str().is_empty() => x.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match exists_follow(&parent) {
        Some(m) if m.is_dir() => Ok(parent),
        Some(_) => Err(Error::errno("create", dest, libc::ENOTDIR)),
        None => Err(Error::errno("create", dest, libc::ENOENT)),
    }
}

/// The cp -r checks of one source against its target: nothing is written when one fails.
fn check_root(src: &Path, st: &libc::stat, target: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let target_meta = std::fs::symlink_metadata(target).ok();
    if meta::file_type(st) == libc::S_IFDIR {
        if target_meta.as_ref().is_some_and(|m| !m.is_dir()) {
            let why = format!(
                "cannot overwrite non-directory with directory '{}'",
                src.display()
            );
            return Err(Error::usage(target, why));
        }
        let s = src.canonicalize().map_err(|e| Error::os("stat", src, e))?;
        if canonical_target(target).is_some_and(|t| t.starts_with(&s)) {
            let why = format!("cannot copy directory '{}' into itself", src.display());
            return Err(Error::usage(target, why));
        }
    } else if let Some(m) = &target_meta {
        if m.is_dir() {
            let why = format!(
                "cannot overwrite directory with non-directory '{}'",
                src.display()
            );
            return Err(Error::usage(target, why));
        }
        if m.dev() == st.st_dev && m.ino() == st.st_ino {
            let why = format!("'{}' and the target are the same file", src.display());
            return Err(Error::usage(target, why));
        }
    }
    Ok(())
}

/// The earlier run's target of source `i`, while the directory it lands in still exists (a
/// destination removed since is resolved anew).
fn recorded(earlier: Option<&Earlier>, n: usize, i: usize) -> Option<&Path> {
    let e = earlier.filter(|e| e.targets.len() == n)?;
    let t = e.targets[i].as_path();
    exists_follow(meta::parent_dir(t))
        .is_some_and(|m| m.is_dir())
        .then_some(t)
}

/// Sources with one target: the same file twice is refused like cp ("specified more than
/// once": two copies of one file racing for one name); otherwise the last one wins, as with cp,
/// and the earlier ones are not copied at all (two directories merge).
fn last_source_wins(roots: Vec<Root>) -> Result<Vec<Root>, Error> {
    let is_dir = |r: &Root| meta::file_type(&r.st) == libc::S_IFDIR;
    let mut keep = vec![true; roots.len()];
    for (j, later) in roots.iter().enumerate() {
        for (i, earlier) in roots[..j].iter().enumerate() {
            if earlier.target != later.target {
                continue;
            }
            if (earlier.st.st_dev, earlier.st.st_ino) == (later.st.st_dev, later.st.st_ino) {
                return Err(Error::usage(&later.src, "specified more than once"));
            }
            if !(is_dir(earlier) && is_dir(later)) {
                keep[i] = false;
            }
        }
    }
    let mut k = keep.into_iter();
    Ok(roots
        .into_iter()
        .filter(|_| k.next().unwrap_or(true))
        .collect())
}

/// Resolves SRC... DST like cp -r, except that a job run before lands where its first run did
/// (`earlier`): a rerun must not nest into the directory its first run created.
pub fn resolve(sources: &[PathBuf], dest: &Path, earlier: Option<&Earlier>) -> Result<Plan, Error> {
    if sources.is_empty() {
        return Err(Error::usage(dest, "no source given"));
    }
    let dest_meta = exists_follow(dest);
    let dest_is_dir = dest_meta.as_ref().is_some_and(|m| m.is_dir());
    if sources.len() > 1 && !dest_is_dir {
        let why = if dest_meta.is_some() {
            "target is not a directory (several sources need an existing directory)"
        } else {
            "target directory does not exist (several sources need an existing directory)"
        };
        return Err(Error::usage(dest, why));
    }
    let dest_dir = dest_dir_of(dest, dest_is_dir)?;
    let (mut roots, mut targets) = (Vec::with_capacity(sources.len()), Vec::new());
    let mut moved_before = 0;
    for (i, src) in sources.iter().enumerate() {
        let was = recorded(earlier, sources.len(), i);
        // Missing or unreadable sources are caught here, before anything is written; a move's
        // source that is gone while its recorded target exists was moved by that run.
        let st = match meta::lstat(src) {
            Ok(st) => st,
            Err(e)
                if e.raw_os_error() == Some(libc::ENOENT)
                    && earlier.is_some_and(|e| e.moving)
                    && was.is_some_and(|t| std::fs::symlink_metadata(t).is_ok()) =>
            {
                targets.push(was.expect("checked").to_path_buf());
                moved_before += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let is_dir = meta::file_type(&st) == libc::S_IFDIR;
        // "DST/" that does not exist promises a directory: a file cannot be given that name
        // (cp: "Not a directory"), and saying so now beats failing after the data is written.
        if was.is_none()
            && !dest_is_dir
            && !is_dir
            && dest.as_os_str().as_encoded_bytes().ends_with(b"/")
        {
            return Err(Error::errno("create", dest, libc::ENOTDIR));
        }
        let target = match was {
            Some(t) => t.to_path_buf(),
            None if dest_is_dir && !names_contents(src) => dest.join(base_name(src)?),
            None => dest.to_path_buf(),
        };
        check_root(src, &st, &target)?;
        targets.push(target.clone());
        roots.push(Root {
            src: src.clone(),
            target,
            st,
        });
    }
    let roots = last_source_wins(roots)?;
    let dest_root = if dest_is_dir
        || roots
            .iter()
            .any(|r| meta::file_type(&r.st) == libc::S_IFDIR)
    {
        dest.to_path_buf()
    } else {
        dest_dir.clone()
    };
    Ok(Plan {
        roots,
        targets,
        moved_before,
        dest_dir,
        dest_root,
    })
}
