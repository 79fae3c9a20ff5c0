//! The engine's error type: every failure names the operation, its target (a path, a peer, a
//! reactor, an engine thread or a setting) and the errno, or says in words what went wrong.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// One failure of one operation on one path.
#[derive(Debug)]
pub struct Error {
    /// What ferry was doing: "open", "read", "write", "fsync", "rename", ...
    pub op: &'static str,
    /// What it was doing it to.
    pub target: Target,
    /// The kind of failure.
    pub kind: ErrorKind,
}

/// What an operation was done to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A file or directory (empty: none, as for a bad option).
    Path(PathBuf),
    /// A network peer (host:port).
    Peer(String),
    /// Reactor N (its ring).
    Reactor(usize),
    /// One of the engine's threads (ferry-commit, ferry-feed, ...).
    Thread(&'static str),
    /// A setting, such as `--io=uring`.
    Setting(&'static str),
}

/// Why an operation failed.
#[derive(Debug)]
pub enum ErrorKind {
    /// The kernel said no; the errno is kept so callers can tell ENOSPC from EIO.
    Os(io::Error),
    /// The source changed size or mtime while it was copied (it is retried, then failed).
    SourceChanged { attempts: u32 },
    /// A write completion reported zero bytes: the device accepted nothing.
    ZeroWrite,
    /// The command line asked for something impossible (exit 2, nothing written).
    Usage(String),
    /// An entry ferry does not copy (sockets); reported, not fatal.
    Unsupported(&'static str),
    /// The bytes read back are not the bytes that were copied (`--verify=full`).
    Mismatch { expected: u64, got: u64 },
    /// A failure the kernel gave no errno for, said in words (an unreadable entry of a
    /// rebalance scan, objects left behind). Counted as failed, not as bad input.
    Failed(String),
    /// A bug: a thread that panicked (its message), or one that is gone when it is needed.
    Internal(String),
}

impl Error {
    /// This error's failure for another target of the same batch (`op` on `path`), its errno
    /// kept (else its text).
    pub fn again_at(&self, op: &'static str, path: &Path) -> Self {
        match self.raw_os_error() {
            Some(n) => Self::os(op, path, io::Error::from_raw_os_error(n)),
            None => Self::failed(op, path, self.to_string()),
        }
    }

    pub fn os(op: &'static str, path: &Path, err: io::Error) -> Self {
        Self::at(op, Target::Path(path.to_path_buf()), ErrorKind::Os(err))
    }

    pub fn at(op: &'static str, target: Target, kind: ErrorKind) -> Self {
        Error { op, target, kind }
    }

    /// A failure without an errno, in words (exit 1, not a usage error).
    pub fn failed(op: &'static str, path: &Path, msg: impl Into<String>) -> Self {
        Self::at(
            op,
            Target::Path(path.to_path_buf()),
            ErrorKind::Failed(msg.into()),
        )
    }

    /// A bug reported rather than hidden: `what` panicked or is gone.
    pub fn internal(op: &'static str, target: Target, msg: impl Into<String>) -> Self {
        Self::at(op, target, ErrorKind::Internal(msg.into()))
    }

    /// A thread that panicked, with its panic message.
    pub fn panicked(
        op: &'static str,
        target: Target,
        payload: &(dyn std::any::Any + Send),
    ) -> Self {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        Self::internal(op, target, format!("panicked: {msg}"))
    }

    /// The path this is about; empty when the target is not a path.
    pub fn path(&self) -> &Path {
        match &self.target {
            Target::Path(p) => p,
            _ => Path::new(""),
        }
    }

    /// From a negative io_uring result or a raw errno.
    pub fn errno(op: &'static str, path: &Path, errno: i32) -> Self {
        Self::os(op, path, io::Error::from_raw_os_error(errno))
    }

    /// From the thread's errno after a failed libc call.
    pub fn last(op: &'static str, path: &Path) -> Self {
        Self::os(op, path, io::Error::last_os_error())
    }

    pub fn usage(path: &Path, msg: impl Into<String>) -> Self {
        Self::at(
            "usage",
            Target::Path(path.to_path_buf()),
            ErrorKind::Usage(msg.into()),
        )
    }

    /// The errno, when the kernel gave one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match &self.kind {
            ErrorKind::Os(e) => e.raw_os_error(),
            _ => None,
        }
    }

    pub fn is_usage(&self) -> bool {
        matches!(self.kind, ErrorKind::Usage(_))
    }
}

/// A path for messages and JSON: printable UTF-8 as it is, and, as in the manifest, `\\` for
/// a backslash and `\xHH` for each byte of a control character or of invalid UTF-8 (so a
/// name is never shown as U+FFFD, and a newline in it cannot split a line).
pub fn shown(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let bytes = p.as_os_str().as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let hex = |out: &mut String, b: &[u8]| {
        for x in b {
            out.push_str(&format!("\\x{x:02x}"));
        }
    };
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => hex(&mut out, c.encode_utf8(&mut [0; 4]).as_bytes()),
                c => out.push(c),
            }
        }
        hex(&mut out, chunk.invalid());
    }
    out
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Path(p) => write!(f, "'{}'", shown(p)),
            Target::Peer(p) => write!(f, "peer {p}"),
            Target::Reactor(n) => write!(f, "reactor {n}"),
            Target::Thread(t) => write!(f, "thread {t}"),
            Target::Setting(s) => write!(f, "{s}"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.target;
        match &self.kind {
            ErrorKind::Os(e) => write!(f, "{} {}: {}", self.op, p, e),
            ErrorKind::SourceChanged { attempts } => write!(
                f,
                "{} {}: source changed while it was copied ({} attempts)",
                self.op, p, attempts
            ),
            ErrorKind::ZeroWrite => write!(f, "{} {}: wrote 0 bytes", self.op, p),
            // An option's error has no path.
            ErrorKind::Usage(m) if self.path().as_os_str().is_empty() => write!(f, "{m}"),
            ErrorKind::Usage(m) => write!(f, "{}: {}", p, m),
            ErrorKind::Unsupported(what) => write!(f, "{} {}: {}", self.op, p, what),
            ErrorKind::Mismatch { expected, got } => write!(
                f,
                "{} {}: content differs from what was copied (xxh3 {got:016x}, expected {expected:016x})",
                self.op, p
            ),
            ErrorKind::Failed(m) => write!(f, "{} {}: {}", self.op, p, m),
            ErrorKind::Internal(m) => write!(f, "{} {}: internal error: {}", self.op, p, m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Os(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn shown_escapes_what_a_line_cannot_carry() {
        let p = |b: &[u8]| shown(Path::new(std::ffi::OsStr::from_bytes(b)));
        assert_eq!(p(b"plain/caf\xc3\xa9"), "plain/caf\u{e9}");
        assert_eq!(p(b"bad\xffname"), "bad\\xffname");
        assert_eq!(p(b"new\nline\ttab"), "new\\x0aline\\x09tab");
        assert_eq!(p(b"back\\slash"), "back\\\\slash");
        let e = Error::errno("open", Path::new(std::ffi::OsStr::from_bytes(b"a\nb")), 2);
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn each_target_says_what_it_is() {
        let enter = |t| {
            Error::at(
                "io_uring_enter",
                t,
                ErrorKind::Os(io::Error::from_raw_os_error(libc::EBADF)),
            )
        };
        let e = enter(Target::Reactor(3));
        assert!(
            e.to_string().starts_with("io_uring_enter reactor 3: "),
            "{e}"
        );
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        assert_eq!(e.path(), Path::new(""));
        let e = enter(Target::Peer("10.0.0.1:9000".into()));
        assert!(
            e.to_string()
                .starts_with("io_uring_enter peer 10.0.0.1:9000: "),
            "{e}"
        );
        let e = Error::errno("open", Path::new("/a"), libc::ENOENT);
        assert!(e.to_string().starts_with("open '/a': "), "{e}");
        let payload: Box<dyn std::any::Any + Send> = Box::new("index out of bounds");
        let e = Error::panicked("reactor", Target::Thread("ferry-r1"), payload.as_ref());
        assert_eq!(
            e.to_string(),
            "reactor thread ferry-r1: internal error: panicked: index out of bounds"
        );
        assert!(!e.is_usage() && e.raw_os_error().is_none());
        let e = Error::failed("scan", Path::new("/d"), "unreadable");
        assert_eq!(e.to_string(), "scan '/d': unreadable");
        assert!(!e.is_usage());
    }
}
