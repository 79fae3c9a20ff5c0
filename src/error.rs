//! The engine's error type: every failure names the operation, the path and the errno.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// One failure of one operation on one path.
#[derive(Debug)]
pub struct Error {
    /// What ferry was doing: "open", "read", "write", "fsync", "rename", ...
    pub op: &'static str,
    /// The path it was doing it to.
    pub path: PathBuf,
    /// The kind of failure.
    pub kind: ErrorKind,
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
}

impl Error {
    pub fn os(op: &'static str, path: &Path, err: io::Error) -> Self {
        Error {
            op,
            path: path.to_path_buf(),
            kind: ErrorKind::Os(err),
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
        Error {
            op: "usage",
            path: path.to_path_buf(),
            kind: ErrorKind::Usage(msg.into()),
        }
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

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = shown(&self.path);
        match &self.kind {
            ErrorKind::Os(e) => write!(f, "{} '{}': {}", self.op, p, e),
            ErrorKind::SourceChanged { attempts } => write!(
                f,
                "{} '{}': source changed while it was copied ({} attempts)",
                self.op, p, attempts
            ),
            ErrorKind::ZeroWrite => write!(f, "{} '{}': wrote 0 bytes", self.op, p),
            // An option's error has no path.
            ErrorKind::Usage(m) if self.path.as_os_str().is_empty() => write!(f, "{m}"),
            ErrorKind::Usage(m) => write!(f, "'{}': {}", p, m),
            ErrorKind::Unsupported(what) => write!(f, "{} '{}': {}", self.op, p, what),
            ErrorKind::Mismatch { expected, got } => write!(
                f,
                "{} '{}': content differs from what was copied (xxh3 {got:016x}, expected {expected:016x})",
                self.op, p
            ),
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
}
