//! File operations confined to a root directory: paths from the wire are resolved with
//! openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS) relative to the root's
//! fd, and every create/rename/stat works on one name relative to a directory fd, so no `..`,
//! absolute name or symlink anywhere in a path can lead outside the root.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Checks a relative wire path: '/'-separated, no empty, "." or ".." component, no NUL, not
/// absolute. "" (the target itself) is valid.
pub fn check_rel(p: &[u8]) -> Result<(), String> {
    if p.is_empty() {
        return Ok(());
    }
    if p[0] == b'/' {
        return Err(format!("'{}' is absolute", show(p)));
    }
    if p.contains(&0) {
        return Err(format!("'{}' contains a NUL byte", show(p)));
    }
    for c in p.split(|&b| b == b'/') {
        if c.is_empty() || c == b"." || c == b".." {
            return Err(format!("'{}' is not a plain relative path", show(p)));
        }
    }
    Ok(())
}

/// A wire path for messages.
pub fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// `a/b` (either may be empty).
pub fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_vec(),
        (_, true) => a.to_vec(),
        _ => [a, b"/", b].concat(),
    }
}

/// (parent, last name) of a non-empty relative path.
pub fn split(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&[], p),
    }
}

pub fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

/// Opens the directory `rel` (checked by [`check_rel`]) beneath `root`; "" is the root itself.
pub fn open_dir(root: RawFd, rel: &[u8]) -> io::Result<OwnedFd> {
    let path = if rel.is_empty() { &b"."[..] } else { rel };
    let c = cstr(path)?;
    // SAFETY: open_how is plain integers; all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid dir fd, C string and open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Paths longer than this are opened a piece at a time (openat2 refuses PATH_MAX and more).
const PIECE: usize = 3072;

/// As [`open_dir`], for a path of any length: a long one is opened piece by piece (each
/// piece beneath the directory the previous one opened, so still beneath `root`).
pub fn open_dir_long(root: RawFd, rel: &[u8]) -> io::Result<OwnedFd> {
    if rel.len() < PIECE {
        return open_dir(root, rel);
    }
    let mut fd: Option<OwnedFd> = None;
    let mut start = 0;
    while start < rel.len() {
        let mut end = rel.len();
        if end - start >= PIECE {
            // The last '/' within the piece (a name is at most 255 bytes, so there is one).
            end = start
                + rel[start..start + PIECE]
                    .iter()
                    .rposition(|&b| b == b'/')
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        }
        let at = fd.as_ref().map_or(root, |f| f.as_raw_fd());
        fd = Some(open_dir(at, &rel[start..end])?);
        start = end + 1;
    }
    fd.map_or_else(|| open_dir(root, b""), Ok)
}

/// lstat of `name` in `dir`; None if it does not exist.
pub fn stat_at(dir: RawFd, name: &[u8]) -> io::Result<Option<libc::stat>> {
    let c = cstr(name)?;
    // SAFETY: zeroed stat is valid; valid fd and C string.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::fstatat(dir, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r == 0 {
        return Ok(Some(st));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOENT) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Opens `name` in `dir` without following a symlink (`flags` added to O_NOFOLLOW|O_CLOEXEC).
pub fn open_at(dir: RawFd, name: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: valid fd and C string.
    let fd = unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn mkdir_at(dir: RawFd, name: &[u8], mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid fd and C string.
    check(unsafe { libc::mkdirat(dir, c.as_ptr(), mode) })
}

pub fn unlink_at(dir: RawFd, name: &[u8]) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid fd and C string.
    check(unsafe { libc::unlinkat(dir, c.as_ptr(), 0) })
}

pub fn rename_at(dir: RawFd, from: &[u8], to: &[u8]) -> io::Result<()> {
    let (a, b) = (cstr(from)?, cstr(to)?);
    // SAFETY: valid fd and C strings.
    check(unsafe { libc::renameat(dir, a.as_ptr(), dir, b.as_ptr()) })
}

pub fn symlink_at(target: &[u8], dir: RawFd, name: &[u8]) -> io::Result<()> {
    let (t, n) = (cstr(target)?, cstr(name)?);
    // SAFETY: valid fd and C strings.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir, n.as_ptr()) })
}

/// A hard link `dir/name` to `from_dir/from` (never following a symlink).
pub fn link_at(from_dir: RawFd, from: &[u8], dir: RawFd, name: &[u8]) -> io::Result<()> {
    let (a, b) = (cstr(from)?, cstr(name)?);
    // SAFETY: valid fds and C strings.
    check(unsafe { libc::linkat(from_dir, a.as_ptr(), dir, b.as_ptr(), 0) })
}

/// A FIFO or device node (`mode` carries its type).
pub fn mknod_at(dir: RawFd, name: &[u8], mode: u32, rdev: u64) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid fd and C string.
    check(unsafe { libc::mknodat(dir, c.as_ptr(), mode, rdev as libc::dev_t) })
}

pub fn readlink_at(dir: RawFd, name: &[u8]) -> io::Result<Vec<u8>> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid fd, C string and buffer of the given length.
    let n = unsafe { libc::readlinkat(dir, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn syncfs(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::syncfs(fd.as_raw_fd()) })
}

/// The temp name a file is written under until it is durable: the local copies' scheme,
/// `.<name>.ferry-<token>.tmp` with the receiving session's random token, so a user's file
/// in the export can never be taken for (or replaced as) one of this session's temps.
pub fn temp_name(name: &[u8], tok: &crate::temp::Token) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::path::Path::new(std::ffi::OsStr::from_bytes(name));
    let t = crate::temp::temp_name(p, tok);
    t.file_name().unwrap_or_default().as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_fit_name_max_and_carry_the_token() {
        let tok = crate::temp::Token::parse("0123456789abcdef").unwrap();
        assert_eq!(temp_name(b"f", &tok), b".f.ferry-0123456789abcdef.tmp");
        assert_ne!(
            temp_name(b"f", &tok),
            temp_name(b"f", &crate::temp::Token::random())
        );
        let (a, b) = (temp_name(&[b'x'; 255], &tok), temp_name(&[b'x'; 250], &tok));
        assert!(a.len() <= 255 && b.len() <= 255 && a != b);
    }

    #[test]
    fn only_plain_relative_paths_pass() {
        for ok in [&b""[..], b"a", b"a/b", b"a\xff/..b", b"...", b".x"] {
            assert!(check_rel(ok).is_ok(), "{ok:?}");
        }
        for bad in [&b"/a"[..], b"a/../b", b"..", b".", b"a//b", b"a/", b"a\0b"] {
            assert!(check_rel(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn symlinks_and_dotdot_do_not_leave_the_root() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("root")).unwrap();
        std::fs::create_dir(t.path().join("root/d")).unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("root/link")).unwrap();
        let root = std::fs::File::open(t.path().join("root")).unwrap();
        let fd = root.as_raw_fd();
        assert!(open_dir(fd, b"d").is_ok());
        assert!(open_dir(fd, b"").is_ok());
        assert!(open_dir(fd, b"link").is_err(), "symlink followed");
        assert!(open_dir(fd, b"d/../..").is_err(), "escaped with ..");
        assert!(open_dir(fd, b"/etc").is_err(), "absolute path");
    }

    #[test]
    fn paths_past_path_max_open_piece_by_piece() {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::File::open(t.path()).unwrap();
        let comp = [b'd'; 200];
        let mut rel = Vec::new();
        let mut fd = root.try_clone().unwrap();
        for _ in 0..30 {
            mkdir_at(fd.as_raw_fd(), &comp, 0o700).unwrap();
            fd = std::fs::File::from(open_dir(fd.as_raw_fd(), &comp).unwrap());
            rel = join(&rel, &comp);
        }
        assert!(rel.len() > libc::PATH_MAX as usize);
        assert!(
            open_dir(root.as_raw_fd(), &rel).is_err(),
            "openat2 takes it whole"
        );
        let d = open_dir_long(root.as_raw_fd(), &rel).unwrap();
        let (a, b) = (fstat_ino(d.as_raw_fd()), fstat_ino(fd.as_raw_fd()));
        assert_eq!(a, b);
        // Each piece stays beneath the directory it starts from: `..` cannot climb out.
        let mut bad = rel.clone();
        for _ in 0..31 {
            bad.extend_from_slice(b"/..");
        }
        let e = open_dir_long(root.as_raw_fd(), &bad).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{e}");
    }

    fn fstat_ino(fd: RawFd) -> u64 {
        // SAFETY: zeroed stat is valid; valid fd.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
        st.st_ino
    }
}
