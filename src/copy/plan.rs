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
    pub dest_dir: PathBuf,
    /// What manifest paths are relative to: the destination directory, or the directory that
    /// receives a single file copied to a new name.
    pub dest_root: PathBuf,
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

pub fn resolve(sources: &[PathBuf], dest: &Path) -> Result<Plan, Error> {
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
    let dest_dir = if dest_is_dir {
        dest.to_path_buf()
    } else {
        let parent = match dest.parent() {
            Some(x) if !x.as_os_str().is_empty() => x.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match exists_follow(&parent) {
            Some(m) if m.is_dir() => parent,
            Some(_) => return Err(Error::errno("create", dest, libc::ENOTDIR)),
            None => return Err(Error::errno("create", dest, libc::ENOENT)),
        }
    };

    let mut roots = Vec::with_capacity(sources.len());
    for src in sources {
        // Missing or unreadable sources are caught here, before anything is written.
        let st = meta::lstat(src)?;
        let is_dir = meta::file_type(&st) == libc::S_IFDIR;
        // "DST/" that does not exist promises a directory: a file cannot be given that name
        // (cp: "Not a directory"), and saying so now beats failing after the data is written.
        if !dest_is_dir && !is_dir && dest.as_os_str().as_encoded_bytes().ends_with(b"/") {
            return Err(Error::errno("create", dest, libc::ENOTDIR));
        }
        let target = if dest_is_dir && !names_contents(src) {
            dest.join(base_name(src)?)
        } else {
            dest.to_path_buf()
        };
        let target_meta = std::fs::symlink_metadata(&target).ok();
        if is_dir {
            if target_meta.as_ref().is_some_and(|m| !m.is_dir()) {
                return Err(Error::usage(
                    &target,
                    format!(
                        "cannot overwrite non-directory with directory '{}'",
                        src.display()
                    ),
                ));
            }
            let s = src.canonicalize().map_err(|e| Error::os("stat", src, e))?;
            if canonical_target(&target).is_some_and(|t| t.starts_with(&s)) {
                return Err(Error::usage(
                    &target,
                    format!("cannot copy directory '{}' into itself", src.display()),
                ));
            }
        } else if let Some(m) = &target_meta {
            use std::os::unix::fs::MetadataExt;
            if m.is_dir() {
                return Err(Error::usage(
                    &target,
                    format!(
                        "cannot overwrite directory with non-directory '{}'",
                        src.display()
                    ),
                ));
            }
            if m.dev() == st.st_dev && m.ino() == st.st_ino {
                return Err(Error::usage(
                    &target,
                    format!("'{}' and the target are the same file", src.display()),
                ));
            }
        }
        roots.push(Root {
            src: src.clone(),
            target,
            st,
        });
    }
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
        dest_dir,
        dest_root,
    })
}
