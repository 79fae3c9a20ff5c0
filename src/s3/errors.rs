//! ferry's errors as S3 errors. A request's own mistake gets the S3 code a client expects
//! (NoSuchKey, InvalidArgument, EntityTooLarge...); another node that cannot be reached is a
//! 503 (SlowDown when it said it is busy, else ServiceUnavailable: retry later); a server
//! failure is InternalError whose message names the operation and the errno, while the full
//! error (with the disk path) goes to the endpoint's log only.

use crate::error::{Error, ErrorKind, Target};
use s3s::{S3Error, S3ErrorCode};

/// Why a streamed body was refused. Carried inside the `io::Error` the object layer returns
/// from a failed fill, and turned back into its S3 code here.
#[derive(Debug)]
pub enum BodyError {
    TooLarge {
        limit: u64,
    },
    /// The client sent fewer bytes than its Content-Length.
    Short {
        expected: u64,
        got: u64,
    },
    /// The client stopped sending for longer than the idle limit.
    Idle,
    /// The body could not be read (connection lost, a bad aws-chunked frame or checksum).
    Read(String),
    /// The body does not match the digest the client sent (the header named).
    Digest(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge { limit } => write!(f, "the body is larger than {limit} bytes"),
            BodyError::Short { expected, got } => {
                write!(f, "the body ended after {got} of {expected} bytes")
            }
            BodyError::Idle => write!(f, "the client sent nothing for too long"),
            BodyError::Read(m) => write!(f, "reading the body: {m}"),
            BodyError::Digest(h) => write!(f, "the body does not match its {h}"),
        }
    }
}

impl std::error::Error for BodyError {}

impl BodyError {
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::other(self)
    }

    pub fn to_s3(&self) -> S3Error {
        let code = match self {
            BodyError::TooLarge { .. } => S3ErrorCode::EntityTooLarge,
            BodyError::Short { .. } => S3ErrorCode::IncompleteBody,
            BodyError::Idle => S3ErrorCode::RequestTimeout,
            BodyError::Read(_) => S3ErrorCode::IncompleteBody,
            BodyError::Digest(_) => S3ErrorCode::BadDigest,
        };
        S3Error::with_message(code, self.to_string())
    }
}

/// The S3 error for a failure of the object layer.
pub fn s3(e: &Error) -> S3Error {
    if let ErrorKind::Os(io) = &e.kind
        && let Some(b) = io.get_ref().and_then(|x| x.downcast_ref::<BodyError>())
    {
        return b.to_s3();
    }
    if let Some(u) = unavailable(e) {
        return u;
    }
    if let ErrorKind::Usage(m) = &e.kind {
        let code = if m.contains("object keys are 1-") {
            S3ErrorCode::KeyTooLongError
        } else {
            S3ErrorCode::InvalidArgument
        };
        return S3Error::with_message(code, m.clone());
    }
    match e.raw_os_error() {
        // A key whose parent is an object, or a key that is another key's prefix directory.
        Some(libc::ENOTDIR | libc::EISDIR | libc::EEXIST) => S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            "the key conflicts with an existing key: here one key cannot be both an object \
             and a prefix of other keys followed by '/'",
        ),
        Some(libc::ENAMETOOLONG) => S3Error::with_message(
            S3ErrorCode::KeyTooLongError,
            "a part of the key is too long",
        ),
        _ => internal(e),
    }
}

/// A node that could not be reached (or is busy): 503, with the operation, the node and the
/// reason, so a client retries later. None for any other error.
fn unavailable(e: &Error) -> Option<S3Error> {
    let (Target::Peer(node), ErrorKind::Os(io)) = (&e.target, &e.kind) else {
        return None;
    };
    eprintln!("ferry s3: {e}");
    let code = if io.kind() == std::io::ErrorKind::WouldBlock {
        S3ErrorCode::SlowDown
    } else {
        S3ErrorCode::ServiceUnavailable
    };
    let m = format!("{}: node {node} unavailable ({io}); retry later", e.op);
    Some(S3Error::with_message(code, m))
}

/// InternalError: the operation and errno for the client, everything in the log.
pub fn internal(e: &Error) -> S3Error {
    eprintln!("ferry s3: {e}");
    let why = match e.raw_os_error() {
        Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
        None => "failed".into(),
    };
    S3Error::with_message(S3ErrorCode::InternalError, format!("{}: {why}", e.op))
}

pub fn no_such_bucket(bucket: &str) -> S3Error {
    S3Error::with_message(
        S3ErrorCode::NoSuchBucket,
        format!("The specified bucket does not exist: {bucket}"),
    )
}

pub fn no_such_key(bucket: &str, key: &str) -> S3Error {
    S3Error::with_message(
        S3ErrorCode::NoSuchKey,
        format!("The specified key does not exist: {bucket}/{key}"),
    )
}

pub fn no_such_upload(id: &str) -> S3Error {
    S3Error::with_message(
        S3ErrorCode::NoSuchUpload,
        format!("The specified multipart upload does not exist: {id}"),
    )
}

pub fn code(code: S3ErrorCode, msg: impl Into<String>) -> S3Error {
    S3Error::with_message(code, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn object_layer_errors_map_to_s3_codes() {
        let p = Path::new("/d/b/k");
        let body = Error::os("write", p, BodyError::TooLarge { limit: 9 }.into_io());
        assert_eq!(*s3(&body).code(), S3ErrorCode::EntityTooLarge);
        let short = BodyError::Short {
            expected: 9,
            got: 3,
        };
        assert_eq!(
            *s3(&Error::os("write", p, short.into_io())).code(),
            S3ErrorCode::IncompleteBody
        );
        let idle = Error::os("write", p, BodyError::Idle.into_io());
        assert_eq!(*s3(&idle).code(), S3ErrorCode::RequestTimeout);
        let usage = Error::usage(p, "bad object key 'a//b'");
        assert_eq!(*s3(&usage).code(), S3ErrorCode::InvalidArgument);
        let long = Error::usage(p, "object keys are 1-1024 bytes");
        assert_eq!(*s3(&long).code(), S3ErrorCode::KeyTooLongError);
        let conflict = Error::errno("mkdir", p, libc::ENOTDIR);
        assert_eq!(*s3(&conflict).code(), S3ErrorCode::InvalidArgument);
        let full = s3(&Error::errno("write", p, libc::ENOSPC));
        assert_eq!(*full.code(), S3ErrorCode::InternalError);
        // The client learns the operation and the errno, not the server's disk paths.
        let m = full.message().unwrap();
        assert!(m.contains("write") && m.contains("No space left"), "{m}");
        assert!(!m.contains("/d/b"), "{m}");
    }

    #[test]
    fn an_unreachable_or_busy_node_is_503_not_500() {
        let peer = |k: std::io::ErrorKind| {
            let io = std::io::Error::new(k, "connect 127.0.0.1:9: refused");
            Error::at("peer get", Target::Peer("n2".into()), ErrorKind::Os(io))
        };
        let down = s3(&peer(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(*down.code(), S3ErrorCode::ServiceUnavailable);
        let m = down.message().unwrap();
        assert!(m.contains("peer get") && m.contains("n2"), "{m}");
        let busy = s3(&peer(std::io::ErrorKind::WouldBlock));
        assert_eq!(*busy.code(), S3ErrorCode::SlowDown);
        for e in [down, busy] {
            assert_eq!(
                e.status_code(),
                Some(hyper::StatusCode::SERVICE_UNAVAILABLE)
            );
        }
        // a node that answered with a failure of its own stays a 500
        let failed = Error::at(
            "peer put",
            Target::Peer("n2".into()),
            ErrorKind::Failed("node n2: disk full".into()),
        );
        assert_eq!(*s3(&failed).code(), S3ErrorCode::InternalError);
    }
}
