//! The one way state files (checkpoints, failure lists, targets, reports, ids) are replaced:
//! write a temp beside the file, fsync it, rename it over the file, fsync the directory. A
//! reader (or a crash) sees the old file or the new one, never half of one, and once this
//! returns the new one survives a power cut.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// `dir/.<name>.tmp`: the temp that becomes `path`.
fn temp_of(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{}': not a file name", path.display()),
        )
    })?;
    let mut t = std::ffi::OsString::from(".");
    t.push(name);
    t.push(".tmp");
    Ok(path.with_file_name(t))
}

/// The directory holding `path` ("." for a bare name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().as_bytes().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Replaces `path` with `bytes` durably (new files get `mode`). The error names the step
/// (write, fsync, rename) and the file.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_of(path)?;
    let step = |op: &str, p: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{op} '{}': {e}", p.display()))
    };
    let written = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).map(|()| f))
        .map_err(|e| step("write", &tmp, e))
        .and_then(|f| f.sync_all().map_err(|e| step("fsync", &tmp, e)));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(step("rename", path, e));
    }
    let dir = dir_of(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| step("fsync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_and_leaves_no_temp() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("state.json");
        replace(&p, b"one", 0o600).unwrap();
        replace(&p, b"two, longer", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two, longer");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_says_where() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        replace(&p, b"old", 0o644).unwrap();
        // The temp's name taken by a directory: the write fails, the old file stays.
        std::fs::create_dir(t.path().join(".f.tmp")).unwrap();
        let e = replace(&p, b"new", 0o644).unwrap_err();
        assert!(e.to_string().contains(".f.tmp"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        let e = replace(Path::new("/"), b"x", 0o644).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
