//! Thin, errno-keeping wrappers over the metadata syscalls the copy needs: stat, mode and
//! nanosecond times, directory creation, links, renames.

use crate::error::Error;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Paths at least this long are reached through their parent directory's fd (PATH_MAX is
/// 4096 with the NUL; keep a margin for the /proc prefix).
const LONG_PATH: usize = 3800;

/// A path ready for a syscall. Paths longer than PATH_MAX are reached by opening their parent
/// step by step (openat of chunks below PATH_MAX, O_PATH) and naming the entry as
/// `/proc/self/fd/<parent>/<name>`, so trees of any depth copy; the parent fd lives as long as
/// this value.
pub struct CPath {
    c: CString,
    _parent: Option<OwnedFd>,
}

impl std::ops::Deref for CPath {
    type Target = std::ffi::CStr;
    fn deref(&self) -> &std::ffi::CStr {
        &self.c
    }
}

impl CPath {
    pub fn as_path(&self) -> &Path {
        Path::new(std::ffi::OsStr::from_bytes(self.c.as_bytes()))
    }
}

pub fn cpath(p: &Path, op: &'static str) -> Result<CPath, Error> {
    let bytes = p.as_os_str().as_bytes();
    if bytes.len() < LONG_PATH {
        let c =
            CString::new(bytes).map_err(|_| Error::errno(op, p, libc::EINVAL /* NUL */))?;
        return Ok(CPath { c, _parent: None });
    }
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(Error::errno(op, p, libc::ENAMETOOLONG));
    };
    let dir = open_long_dir(parent, op)?;
    let mut short = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    short.extend_from_slice(name.as_bytes());
    let c = CString::new(short).map_err(|_| Error::errno(op, p, libc::EINVAL))?;
    Ok(CPath {
        c,
        _parent: Some(dir),
    })
}

/// Opens a directory of any path length with O_PATH, one chunk of components at a time.
fn open_long_dir(dir: &Path, op: &'static str) -> Result<OwnedFd, Error> {
    use std::path::Component;
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    let mut cur: Option<OwnedFd> = None;
    let mut chunk: Vec<u8> = Vec::new();
    let step = |cur: &Option<OwnedFd>, chunk: &[u8]| -> Result<OwnedFd, Error> {
        let c = CString::new(chunk).map_err(|_| Error::errno(op, dir, libc::EINVAL))?;
        let base = cur.as_ref().map_or(libc::AT_FDCWD, |f| f.as_raw_fd());
        // SAFETY: valid C string; base is AT_FDCWD or an fd we own.
        let fd = unsafe { libc::openat(base, c.as_ptr(), flags) };
        if fd < 0 {
            return Err(Error::last(op, dir));
        }
        // SAFETY: fresh fd.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    for comp in dir.components() {
        let part: &[u8] = match comp {
            Component::RootDir => b"/",
            Component::Normal(n) => n.as_bytes(),
            Component::CurDir => b".",
            Component::ParentDir => b"..",
            Component::Prefix(_) => return Err(Error::errno(op, dir, libc::EINVAL)),
        };
        if !chunk.is_empty() && chunk.len() + 1 + part.len() >= LONG_PATH {
            cur = Some(step(&cur, &chunk)?);
            chunk.clear();
        }
        if !chunk.is_empty() && !chunk.ends_with(b"/") {
            chunk.push(b'/');
        }
        chunk.extend_from_slice(part);
    }
    if !chunk.is_empty() {
        cur = Some(step(&cur, &chunk)?);
    }
    cur.ok_or_else(|| Error::errno(op, dir, libc::EINVAL))
}

/// Removes a stale temp file if there is one (absence is the normal case).
fn remove_stale(p: &Path) -> Result<(), Error> {
    match unlink(p) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

pub fn lstat(p: &Path) -> Result<libc::stat, Error> {
    let c = cpath(p, "stat")?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid out-pointer.
    if unsafe { libc::lstat(c.as_ptr(), &mut st) } < 0 {
        return Err(Error::last("stat", p));
    }
    Ok(st)
}

pub fn fstat(fd: RawFd, p: &Path) -> Result<libc::stat, Error> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(Error::last("stat", p));
    }
    Ok(st)
}

pub fn file_type(st: &libc::stat) -> u32 {
    st.st_mode & libc::S_IFMT
}

/// atime and mtime, in the order utimensat wants them.
pub fn times(st: &libc::stat) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ]
}

/// Opens a regular source file for reading. O_NONBLOCK: if a FIFO was swapped in after the walk
/// saw a regular file, open must not hang (the type is re-checked with fstat).
pub fn open_source(p: &Path) -> Result<OwnedFd, Error> {
    open_source_in(None, p)
}

/// `open_source`, relative to `dir` when given (see `named`).
pub fn open_source_in(dir: Option<RawFd>, p: &Path) -> Result<OwnedFd, Error> {
    let (at, c) = named(dir, p, "open")?;
    let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    // SAFETY: valid C string; `at` is AT_FDCWD or an open directory fd.
    let fd = unsafe { libc::openat(at, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::last("open", p));
    }
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory (any path length) with O_PATH, as the anchor of *at() calls.
pub fn open_dir_path(p: &Path) -> Result<OwnedFd, Error> {
    let c = cpath(p, "open")?;
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::last("open", p));
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// How a syscall names `p`: its last component relative to the open directory `dir` that
/// holds it, or (no `dir`) the whole path from the current directory (any length, see cpath).
fn named(dir: Option<RawFd>, p: &Path, op: &'static str) -> Result<(RawFd, CPath), Error> {
    let Some(dir) = dir else {
        return Ok((libc::AT_FDCWD, cpath(p, op)?));
    };
    let name = p
        .file_name()
        .ok_or_else(|| Error::errno(op, p, libc::EINVAL))?;
    let c = CString::new(name.as_bytes()).map_err(|_| Error::errno(op, p, libc::EINVAL))?;
    Ok((dir, CPath { c, _parent: None }))
}

/// Opens a big file's source and its (already created) temp file again with O_DIRECT; None
/// where the filesystem refuses O_DIRECT (EINVAL), which is not an error: the ordinary fds do.
pub fn open_direct(src: &Path, tmp: &Path) -> Result<Option<(OwnedFd, OwnedFd)>, Error> {
    let open = |p: &Path, flags: i32| -> Result<Option<OwnedFd>, Error> {
        let c = cpath(p, "open")?;
        // SAFETY: valid C string.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                flags | libc::O_DIRECT | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EINVAL) => Ok(None),
                _ => Err(Error::os("open", p, e)),
            };
        }
        // SAFETY: fresh fd.
        Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
    };
    let Some(s) = open(src, libc::O_RDONLY)? else {
        return Ok(None);
    };
    Ok(open(tmp, libc::O_WRONLY)?.map(|d| (s, d)))
}

/// Creates a fresh temp file; a stale one left by a killed run is removed first.
pub fn create_temp(p: &Path) -> Result<OwnedFd, Error> {
    create_temp_mode(p, 0o600)
}

/// `create_temp` with the given permission bits (the umask applies).
pub fn create_temp_mode(p: &Path, mode: u32) -> Result<OwnedFd, Error> {
    create_temp_in(None, p, mode)
}

/// `create_temp_mode`, relative to `dir` when given (see `named`).
pub fn create_temp_in(dir: Option<RawFd>, p: &Path, mode: u32) -> Result<OwnedFd, Error> {
    let (at, c) = named(dir, p, "create")?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    for _ in 0..2 {
        // SAFETY: valid C string; `at` is AT_FDCWD or an open directory fd.
        let fd = unsafe { libc::openat(at, c.as_ptr(), flags, mode) };
        if fd >= 0 {
            // SAFETY: fresh fd.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(Error::os("create", p, err));
        }
        // A stale temp file of a killed run.
        // SAFETY: as above.
        if unsafe { libc::unlinkat(at, c.as_ptr(), 0) } < 0 {
            return Err(Error::last("unlink", p));
        }
    }
    Err(Error::errno("create", p, libc::EEXIST))
}

/// Creates an unnamed temp file (O_TMPFILE, Linux 3.11) in `dst`'s directory: `dir` when
/// given, else `dst`'s parent by path. It has no name until `link_anon`, so a crash leaves
/// nothing behind (the filesystem drops it as an orphan) and the file costs one directory
/// operation (the link) instead of three (create, and rename's remove + add).
pub fn create_anon_in(dir: Option<RawFd>, dst: &Path, mode: u32) -> Result<OwnedFd, Error> {
    let (at, c) = match dir {
        Some(d) => (
            d,
            CPath {
                c: CString::from(c"."),
                _parent: None,
            },
        ),
        None => (libc::AT_FDCWD, cpath(parent_dir(dst), "create")?),
    };
    // SAFETY: valid C string; `at` is AT_FDCWD or an open directory fd. No O_EXCL: with it
    // the file could never be linked.
    let fd = unsafe {
        libc::openat(
            at,
            c.as_ptr(),
            libc::O_WRONLY | libc::O_TMPFILE | libc::O_CLOEXEC,
            mode,
        )
    };
    if fd < 0 {
        return Err(Error::last("create", dst));
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Removes the temp name `tmp` a killed run may have left (relative to `dir` when given);
/// none there is fine. Files copied with unnamed temps never create that name, so without
/// this a resumed copy into an existing directory would leave the old run's litter.
pub fn remove_stale_temp(dir: Option<RawFd>, tmp: &Path) -> Result<(), Error> {
    let (at, c) = named(dir, tmp, "unlink")?;
    // SAFETY: valid C string; `at` is AT_FDCWD or an open directory fd.
    if unsafe { libc::unlinkat(at, c.as_ptr(), 0) } < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(Error::os("unlink", tmp, e));
        }
    }
    Ok(())
}

/// The errors of `create_anon_in` that mean "this filesystem or kernel has no O_TMPFILE":
/// EOPNOTSUPP (filesystem without tmpfile support: NFS, FUSE, vfat...), EISDIR (a kernel older
/// than 3.11 reads O_TMPFILE as O_DIRECTORY and refuses to open a directory for writing),
/// EINVAL (some filesystems and LSMs). A named temp file works on all of them.
pub fn anon_unsupported(e: &Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
    )
}

/// Set once linkat(AT_EMPTY_PATH) said ENOENT: the process lacks CAP_DAC_READ_SEARCH, which
/// that call needs; /proc/self/fd then names the file instead.
static LINK_BY_PROC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Gives the unnamed file `fd` the name `name` in `at`: linkat(AT_EMPTY_PATH) when allowed,
/// else through /proc/self/fd (`by_proc`, or after ENOENT).
pub fn link_fd(fd: RawFd, at: RawFd, name: &std::ffi::CStr, by_proc: bool) -> std::io::Result<()> {
    use std::sync::atomic::Ordering;
    if !by_proc && !LINK_BY_PROC.load(Ordering::Relaxed) {
        // SAFETY: valid fds and C strings.
        if unsafe { libc::linkat(fd, c"".as_ptr(), at, name.as_ptr(), libc::AT_EMPTY_PATH) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
        LINK_BY_PROC.store(true, Ordering::Relaxed);
    }
    let proc = CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number");
    // SAFETY: valid C strings; `at` is AT_FDCWD or an open directory fd.
    if unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc.as_ptr(),
            at,
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    } == 0
    {
        return Ok(());
    }
    Err(std::io::Error::last_os_error())
}

/// Names the durable unnamed file `fd` `dst` (relative to `dir` when given). An existing `dst`
/// is replaced atomically, as rename does: the file is linked as `tmp` first, then renamed.
pub fn link_anon(fd: RawFd, dir: Option<RawFd>, tmp: &Path, dst: &Path) -> Result<(), Error> {
    let (at, name) = named(dir, dst, "link")?;
    match link_fd(fd, at, &name.c, false) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(Error::os("link", dst, e)),
    }
    // A stale temp name of a killed run may hold the spot.
    remove_stale_temp(dir, tmp)?;
    let (tat, tname) = named(dir, tmp, "link")?;
    link_fd(fd, tat, &tname.c, false).map_err(|e| Error::os("link", tmp, e))?;
    rename_in(dir, tmp, dst).inspect_err(|_| {
        let _ = unlink(tmp); // best effort: the rename's error is the one reported
    })
}

/// Closes explicitly so a close error (NFS, FUSE report write-back failures here) is seen.
pub fn close(fd: OwnedFd, p: &Path) -> Result<(), Error> {
    use std::os::fd::IntoRawFd;
    let raw = fd.into_raw_fd();
    // SAFETY: we own raw; it is not used after this.
    if unsafe { libc::close(raw) } < 0 {
        let e = std::io::Error::last_os_error();
        // EINTR on close: the fd is gone on Linux; the data is judged by fsync/syncfs instead.
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(Error::os("close", p, e));
        }
    }
    Ok(())
}

/// Applies the kept metadata of `st` (the source's) to `dst`, in the order that keeps it all:
/// owner first (chown clears setuid/setgid and capabilities), then xattrs and ACLs, then the
/// mode (setuid bits survive; the ACL mask matches the source's group bits), then times.
/// What a file ferry just created already has: owner, group and permission bits (so the
/// calls that would set the same values can be skipped).
#[derive(Clone, Copy, Debug)]
pub struct Known {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

pub fn apply_meta(
    src: At,
    dst: At,
    st: &libc::stat,
    p: &Path,
    keep: &crate::spec::Preserve,
    umask: u32,
    known: Option<Known>,
) -> Result<(), Error> {
    let is_link = file_type(st) == libc::S_IFLNK;
    let mut changed_owner = false;
    if keep.ownership && known.is_none_or(|k| (k.uid, k.gid) != (st.st_uid, st.st_gid)) {
        apply_owner(dst, st, p)?;
        changed_owner = true;
    }
    let mut xattrs = 0;
    if keep.xattr || keep.acl {
        xattrs = copy_xattrs(src, dst, p, keep.xattr, keep.acl)?;
    }
    if !is_link {
        // Not kept: what a new file would get (the source's permission bits less the umask).
        let mode = if keep.mode {
            st.st_mode & 0o7777
        } else {
            st.st_mode & 0o777 & !umask
        };
        // Already right (created with it), unless an ACL or a chown may have changed it.
        let skip = !changed_owner && xattrs == 0 && known.is_some_and(|k| k.mode == mode);
        if skip {
            return apply_times(dst, st, p, keep);
        }
        // SAFETY: valid fd or C string.
        let r = unsafe {
            match dst {
                At::Fd(fd) => libc::fchmod(fd, mode),
                At::Path(c) => libc::fchmodat(libc::AT_FDCWD, c.as_ptr(), mode, 0),
            }
        };
        if r < 0 {
            return Err(Error::last("chmod", p));
        }
    }
    apply_times(dst, st, p, keep)
}

fn apply_times(
    dst: At,
    st: &libc::stat,
    p: &Path,
    keep: &crate::spec::Preserve,
) -> Result<(), Error> {
    if keep.timestamps {
        let t = times(st);
        // SAFETY: valid fd or C string; two timespecs.
        let r = unsafe {
            match dst {
                At::Fd(fd) => libc::futimens(fd, t.as_ptr()),
                At::Path(c) => libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    t.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                ),
            }
        };
        if r < 0 {
            return Err(Error::last("set times", p));
        }
    }
    Ok(())
}

/// Path form of [`apply_meta`] (directories, symlinks, FIFOs, devices).
pub fn apply_path_meta(
    src: &Path,
    dst: &Path,
    st: &libc::stat,
    keep: &crate::spec::Preserve,
    umask: u32,
) -> Result<(), Error> {
    let (cs, cd) = (cpath(src, "stat")?, cpath(dst, "set times")?);
    apply_meta(At::Path(&cs), At::Path(&cd), st, dst, keep, umask, None)
}

/// A hard link to an already copied file, made at the temp name and renamed over `dst`.
pub fn hardlink(existing: &Path, dst: &Path, tok: &crate::temp::Token) -> Result<(), Error> {
    let tmp = crate::temp::temp_name(dst, tok);
    remove_stale(&tmp)?;
    let (a, b) = (cpath(existing, "link")?, cpath(&tmp, "link")?);
    // SAFETY: valid C strings.
    if unsafe { libc::link(a.as_ptr(), b.as_ptr()) } < 0 {
        return Err(Error::last("link", dst));
    }
    rename(&tmp, dst).inspect_err(|_| {
        let _ = unlink(&tmp); // best effort: the rename error is what matters
    })
}

/// The process umask (read once, before threads start: umask() has no read-only form).
pub fn read_umask() -> u32 {
    // SAFETY: umask is always safe; the old value is restored at once.
    unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old
    }
}

/// mkdir that accepts an existing directory (copies merge into it, like cp -r).
/// Makes a destination directory; true when this call created it (false: it was there).
pub fn make_dir(p: &Path) -> Result<bool, Error> {
    let c = cpath(p, "mkdir")?;
    // SAFETY: valid C string. 0700 while we fill it; the source mode is applied at the end.
    if unsafe { libc::mkdir(c.as_ptr(), 0o700) } == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        let st = lstat(p)?;
        if file_type(&st) == libc::S_IFDIR {
            return Ok(false);
        }
        return Err(Error::errno("mkdir", p, libc::ENOTDIR));
    }
    Err(Error::os("mkdir", p, err))
}

pub fn unlink(p: &Path) -> Result<(), Error> {
    let c = cpath(p, "unlink")?;
    // SAFETY: valid C string.
    if unsafe { libc::unlink(c.as_ptr()) } < 0 {
        return Err(Error::last("unlink", p));
    }
    Ok(())
}

pub fn rename(from: &Path, to: &Path) -> Result<(), Error> {
    rename_in(None, from, to)
}

/// `rename`; with `dir`, both names are entries of that open directory (see `named`).
pub fn rename_in(dir: Option<RawFd>, from: &Path, to: &Path) -> Result<(), Error> {
    let ((fa, a), (fb, b)) = (named(dir, from, "rename")?, named(dir, to, "rename")?);
    // SAFETY: valid C strings; the fds are AT_FDCWD or an open directory fd.
    if unsafe { libc::renameat(fa, a.as_ptr(), fb, b.as_ptr()) } < 0 {
        return Err(Error::last("rename", to));
    }
    Ok(())
}

pub fn syncfs(fd: &OwnedFd, p: &Path) -> Result<(), Error> {
    // SAFETY: fd valid. Since 5.8 syncfs reports write-back errors seen on the filesystem since
    // this fd was opened, so one open fd per destination filesystem catches every lost write.
    if unsafe { libc::syncfs(fd.as_raw_fd()) } < 0 {
        return Err(Error::last("syncfs", p));
    }
    Ok(())
}

pub fn open_dir(p: &Path) -> Result<OwnedFd, Error> {
    let c = cpath(p, "open")?;
    // SAFETY: valid C string.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Error::last("open", p));
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Symlinks, FIFOs and device nodes are made at the temp name and renamed over the final one,
/// so a re-run replaces an old entry in one step.
pub fn copy_special(
    src: &Path,
    dst: &Path,
    st: &libc::stat,
    keep: &crate::spec::Preserve,
    umask: u32,
    tok: &crate::temp::Token,
) -> Result<(), Error> {
    let tmp = crate::temp::temp_name(dst, tok);
    let ctmp = cpath(&tmp, "create")?;
    remove_stale(&tmp)?;
    match file_type(st) {
        libc::S_IFLNK => {
            let cs = cpath(src, "readlink")?;
            let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
            // SAFETY: buf is as long as we say.
            let n = unsafe { libc::readlink(cs.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                return Err(Error::last("readlink", src));
            }
            buf.truncate(n as usize);
            // The target is content, copied byte for byte (never shortened).
            let ct = CString::new(buf).map_err(|_| Error::errno("readlink", src, libc::EINVAL))?;
            // SAFETY: valid C strings.
            if unsafe { libc::symlink(ct.as_ptr(), ctmp.as_ptr()) } < 0 {
                return Err(Error::last("symlink", dst));
            }
        }
        libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK => {
            // SAFETY: valid C string. Device nodes need CAP_MKNOD (EPERM otherwise: reported).
            if unsafe { libc::mknod(ctmp.as_ptr(), st.st_mode, st.st_rdev) } < 0 {
                return Err(Error::last("mknod", dst));
            }
        }
        _ => unreachable!("copy_special called on a regular file or directory"),
    }
    let done = apply_path_meta(src, &tmp, st, keep, umask).and_then(|_| rename(&tmp, dst));
    if done.is_err() {
        let _ = unlink(&tmp); // best effort: the error that matters is returned
    }
    done
}

/// Byte ranges holding data. Dense files are one range; for files with fewer blocks than their
/// size, SEEK_DATA/SEEK_HOLE finds the extents so holes stay holes. At most `max` ranges: past
/// that the rest of the file is taken as one range (correct, only less sparse).
pub fn data_ranges(
    fd: RawFd,
    st: &libc::stat,
    p: &Path,
    max: usize,
) -> Result<Vec<(u64, u64)>, Error> {
    let size = st.st_size as u64;
    if size == 0 {
        return Ok(Vec::new());
    }
    if (st.st_blocks as u64) * 512 >= size {
        return Ok(vec![(0, size)]);
    }
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: plain lseek on an fd we own.
        let data = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENXIO) => break, // no data past pos: the rest is a hole
                // Filesystem without SEEK_DATA support: copy densely.
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => return Ok(vec![(0, size)]),
                _ => return Err(Error::os("seek", p, e)),
            }
        }
        let data = data as u64;
        if data >= size {
            break;
        }
        if out.len() + 1 >= max {
            out.push((data, size));
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as i64, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(Error::last("seek", p));
        }
        let hole = (hole as u64).min(size);
        out.push((data, hole));
        pos = hole;
    }
    Ok(out)
}

/// Prepares the destination: a sparse copy is truncated to its size so trailing holes exist;
/// a big dense one reserves its blocks (fewer extents, ENOSPC before any write). Small files
/// need neither: their one write sets the size.
pub fn preallocate(
    fd: RawFd,
    size: u64,
    sparse: bool,
    reserve: bool,
    p: &Path,
) -> Result<(), Error> {
    if size == 0 {
        return Ok(());
    }
    if sparse {
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::ftruncate(fd, size as i64) } < 0 {
            return Err(Error::last("truncate", p));
        }
    } else if reserve {
        // SAFETY: as above.
        if unsafe { libc::fallocate(fd, 0, 0, size as i64) } < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // Not supported here (FUSE, NFSv3, some tmpfs): fine, only less contiguous.
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => {}
                _ => return Err(Error::os("fallocate", p, e)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_all(fd: &OwnedFd, data: &[u8]) {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        assert_eq!(n, data.len() as isize);
    }

    #[test]
    fn a_filesystem_without_unnamed_files_is_told_apart_from_a_failure() {
        // procfs has no O_TMPFILE: that must read as "use a named temp file", not as an error.
        if !Path::new("/proc/self").exists() {
            eprintln!("skipped: /proc is not mounted");
            return;
        }
        let e = create_anon_in(None, Path::new("/proc/ferry-x"), 0o600).unwrap_err();
        assert!(anon_unsupported(&e), "{e}");
        // A missing directory is a real error.
        let e = create_anon_in(None, Path::new("/nonexistent-ferry/x"), 0o600).unwrap_err();
        assert!(!anon_unsupported(&e), "{e}");
    }

    #[test]
    fn unnamed_temp_files_get_their_names_both_ways_and_replace_atomically() {
        let t = tempfile::tempdir().unwrap();
        let dir = open_dir_path(t.path()).unwrap();
        let names = |p: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        let fd = match create_anon_in(Some(dir.as_raw_fd()), &t.path().join("a"), 0o644) {
            Ok(fd) => fd,
            Err(e) if anon_unsupported(&e) => {
                eprintln!("skipped: no O_TMPFILE on the temp dir's filesystem ({e})");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        write_all(&fd, b"one");
        // Nothing is visible before the link.
        assert!(names(t.path()).is_empty());
        let c = CString::new("a").unwrap();
        link_fd(fd.as_raw_fd(), dir.as_raw_fd(), &c, true).expect("link through /proc");
        assert_eq!(std::fs::read(t.path().join("a")).unwrap(), b"one");
        // By full path (no directory fd), then over an existing name.
        let dst = t.path().join("b");
        let fd = create_anon_in(None, &dst, 0o644).unwrap();
        write_all(&fd, b"two");
        link_anon(
            fd.as_raw_fd(),
            None,
            &crate::temp::temp_name(&dst, crate::temp::process_token()),
            &dst,
        )
        .unwrap();
        let fd = create_anon_in(None, &dst, 0o644).unwrap();
        write_all(&fd, b"three");
        link_anon(
            fd.as_raw_fd(),
            Some(dir.as_raw_fd()),
            &crate::temp::temp_name(&dst, crate::temp::process_token()),
            &dst,
        )
        .unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"three");
        // No temp name is left behind, the replaced file is gone.
        assert_eq!(names(t.path()), vec!["a", "b"]);
    }
}

/// Where metadata is applied: an open fd, or a path that is not followed (symlinks).
#[derive(Clone, Copy)]
pub enum At<'a> {
    Fd(RawFd),
    Path(&'a std::ffi::CStr),
}

/// Most bytes read from a file whose stat size is 0 (see [`copy_unsized`]): pseudo files are
/// small (kernel text tables reach a few MiB); one that does not end is not copied.
pub const UNSIZED_MAX: u64 = 64 << 20;

/// Copies a regular file whose stat says 0 bytes by reading it to its end, as cp does:
/// procfs, sysfs and debugfs report 0 for files that read as text, and trusting the size would
/// give an empty copy silently. A real empty file costs one read that returns 0. Blocking
/// reads on the reactor: such files are small and rare. Returns the bytes copied and feeds them
/// to `h`.
pub fn copy_unsized(
    src: RawFd,
    dst: RawFd,
    p: &Path,
    tmp: &Path,
    mut h: Option<&mut xxhash_rust::xxh3::Xxh3>,
) -> Result<u64, Error> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    // SAFETY: both fds stay open (owned by the job) for this call; ManuallyDrop never closes them.
    let (mut from, to) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::mem::ManuallyDrop::new(std::fs::File::from_raw_fd(src)),
            std::mem::ManuallyDrop::new(std::fs::File::from_raw_fd(dst)),
        )
    };
    let mut buf = [0u8; 4096];
    let mut off = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(off),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::os("read", p, e)),
        };
        if off + n as u64 > UNSIZED_MAX {
            return Err(Error::errno("read", p, libc::EFBIG));
        }
        to.write_all_at(&buf[..n], off)
            .map_err(|e| Error::os("write", tmp, e))?;
        if let Some(h) = h.as_mut() {
            h.update(&buf[..n]);
        }
        off += n as u64;
    }
}

/// Largest xattr value and name list Linux allows (XATTR_SIZE_MAX, XATTR_LIST_MAX).
const XATTR_MAX: usize = 64 << 10;

fn am_root() -> bool {
    // SAFETY: trivial getter.
    unsafe { libc::geteuid() == 0 }
}

/// uid/gid. Without root, EPERM is expected (like cp -a, ignored); any other errno is real.
pub fn apply_owner(at: At, st: &libc::stat, p: &Path) -> Result<(), Error> {
    // SAFETY: valid fd or C string.
    let r = unsafe {
        match at {
            At::Fd(fd) => libc::fchown(fd, st.st_uid, st.st_gid),
            At::Path(c) => libc::lchown(c.as_ptr(), st.st_uid, st.st_gid),
        }
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) && !am_root() {
            return Ok(());
        }
        return Err(Error::os("chown", p, e));
    }
    Ok(())
}

fn xattr_list(at: At, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    // Ask for the list's size first: with a buffer the kernel allocates one of the same size
    // (64 KiB, kvmalloc) on every call, which showed in small-file profiles; most files have
    // no xattrs, and then this probe is the only call. A list that grows between the two calls
    // still fits XATTR_MAX (the kernel's own limit).
    // SAFETY: a NULL buffer with size 0 is the documented size query; fd or C string valid.
    let need = unsafe {
        match at {
            At::Fd(fd) => libc::flistxattr(fd, std::ptr::null_mut(), 0),
            At::Path(c) => libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0),
        }
    };
    if need <= 0 {
        return if need < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(0)
        };
    }
    if buf.len() < XATTR_MAX {
        buf.resize(XATTR_MAX, 0);
    }
    // SAFETY: buf is XATTR_MAX bytes long; fd or C string valid.
    let n = unsafe {
        match at {
            At::Fd(fd) => libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()),
            At::Path(c) => libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()),
        }
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn xattr_get(at: At, name: &std::ffi::CStr, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    if buf.len() < XATTR_MAX {
        buf.resize(XATTR_MAX, 0);
    }
    // SAFETY: as above.
    let n = unsafe {
        match at {
            At::Fd(fd) => libc::fgetxattr(fd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()),
            At::Path(c) => libc::lgetxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            ),
        }
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn xattr_set(at: At, name: &std::ffi::CStr, val: &[u8]) -> std::io::Result<()> {
    // SAFETY: as above; val is a valid slice.
    let r = unsafe {
        match at {
            At::Fd(fd) => libc::fsetxattr(fd, name.as_ptr(), val.as_ptr().cast(), val.len(), 0),
            At::Path(c) => {
                libc::lsetxattr(c.as_ptr(), name.as_ptr(), val.as_ptr().cast(), val.len(), 0)
            }
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

thread_local! {
    /// xattr name list and value buffers, XATTR_MAX each, allocated once per thread (zeroing
    /// 64 KiB per file showed up in profiles of small-file copies).
    static XATTR_BUFS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Copies extended attributes: `xattr` selects user.*, trusted.*, security.*; `acl` selects
/// system.posix_acl_* (POSIX ACLs are stored as these xattrs). Without root, EPERM on
/// trusted.*/security.* is expected and ignored (like cp -a); everything else is reported.
/// Returns how many were set.
pub fn copy_xattrs(src: At, dst: At, p: &Path, xattr: bool, acl: bool) -> Result<usize, Error> {
    XATTR_BUFS.with(|b| {
        let (names, val) = &mut *b.borrow_mut();
        copy_xattrs_with(src, dst, p, xattr, acl, names, val)
    })
}

fn copy_xattrs_with(
    src: At,
    dst: At,
    p: &Path,
    xattr: bool,
    acl: bool,
    names: &mut Vec<u8>,
    val: &mut Vec<u8>,
) -> Result<usize, Error> {
    let n = match xattr_list(src, names) {
        Ok(n) => n,
        // The source filesystem has no xattrs at all: nothing to copy.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP)) => return Ok(0),
        Err(e) => return Err(Error::os("listxattr", p, e)),
    };
    let mut set = 0;
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let is_acl = name.starts_with(b"system.posix_acl_");
        if (is_acl && !acl) || (!is_acl && !xattr) {
            continue;
        }
        let cname = std::ffi::CString::new(name).expect("split on NUL");
        let len = match xattr_get(src, &cname, val) {
            Ok(l) => l,
            // Removed between list and get.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(Error::os("getxattr", p, e)),
        };
        if let Err(e) = xattr_set(dst, &cname, &val[..len]) {
            if e.raw_os_error() == Some(libc::EPERM) && !am_root() {
                continue;
            }
            return Err(Error::os("setxattr", p, e));
        }
        set += 1;
    }
    Ok(set)
}

/// fsync of a directory: makes the names created or removed in it durable.
pub fn fsync_dir(p: &Path) -> Result<(), Error> {
    let fd = open_dir(p)?;
    // SAFETY: fd is open.
    if unsafe { libc::fsync(fd.as_raw_fd()) } < 0 {
        return Err(Error::last("fsync", p));
    }
    close(fd, p)
}

/// rmdir; the caller decides what ENOTEMPTY means.
pub fn rmdir(p: &Path) -> Result<(), Error> {
    let c = cpath(p, "rmdir")?;
    // SAFETY: valid C string.
    if unsafe { libc::rmdir(c.as_ptr()) } < 0 {
        return Err(Error::last("rmdir", p));
    }
    Ok(())
}

/// rename that fails with EEXIST instead of replacing (renameat2 RENAME_NOREPLACE, 3.15+;
/// EINVAL on filesystems that lack it, which the caller treats as "take the slow path").
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<(), Error> {
    let (a, b) = (cpath(from, "rename")?, cpath(to, "rename")?);
    // SAFETY: valid C strings.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r < 0 {
        return Err(Error::last("rename", to));
    }
    Ok(())
}

/// The directory holding `p` ("." for a bare name).
pub fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}
