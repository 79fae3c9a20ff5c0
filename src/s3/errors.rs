//! ferry's errors as S3 errors. A request's own mistake gets the S3 code a client expects
//! (NoSuchKey, InvalidArgument, EntityTooLarge...); a server failure is InternalError whose
//! message names the operation and the errno, while the full error (with the disk path) goes
//! to the endpoint's log only.

use crate::error::Error;
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
    if let crate::error::ErrorKind::Os(io) = &e.kind
        && let Some(b) = io.get_ref().and_then(|x| x.downcast_ref::<BodyError>())
    {
        return b.to_s3();
    }
    if let crate::error::ErrorKind::Usage(m) = &e.kind {
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
}
