//! What one client may ask of the endpoint. Every limit is checked before the work it bounds
//! (a body over the object limit is refused from its Content-Length, and counted as it
//! streams for bodies without one), so no request can make the endpoint hold unbounded memory,
//! threads or disk.

use std::time::Duration;

/// S3's largest single PUT and part.
pub const S3_MAX_PUT: u64 = 5 << 30;
/// S3's smallest part (all but the last).
pub const S3_MIN_PART: u64 = 5 << 20;
/// S3's most parts of one upload.
pub const S3_MAX_PARTS: i32 = 10_000;
/// Most keys of one list page (S3's cap too).
pub const MAX_KEYS: i32 = 1000;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest object one PUT (or one completed multipart upload) may write.
    pub max_object: u64,
    /// Largest part of a multipart upload.
    pub max_part: u64,
    /// Smallest part but the last.
    pub min_part: u64,
    /// Largest XML request body (CompleteMultipartUpload of 10,000 parts fits in 1 MiB).
    pub max_xml_body: usize,
    /// Requests served at once; one more is answered 503 SlowDown at once.
    pub max_inflight: usize,
    /// Open client connections; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Bytes of one request's head (request line + headers): more is refused with 431.
    pub max_header_bytes: usize,
    /// Header lines of one request.
    pub max_headers: usize,
    /// A client that sends no byte of its head or body for this long is dropped.
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_object: S3_MAX_PUT,
            max_part: S3_MAX_PUT,
            min_part: S3_MIN_PART,
            max_xml_body: 2 << 20,
            max_inflight: 64,
            max_connections: 1024,
            max_header_bytes: 64 << 10,
            max_headers: 100,
            idle: Duration::from_secs(30),
        }
    }
}

impl Limits {
    pub fn check(&self) -> Result<(), String> {
        if self.max_object == 0 || self.max_part == 0 {
            return Err("--max-object-size and --max-part-size must be > 0".into());
        }
        if self.min_part > self.max_part {
            return Err(format!(
                "the smallest part ({}) is larger than --max-part-size ({})",
                self.min_part, self.max_part
            ));
        }
        if !(1..=4096).contains(&self.max_inflight) {
            return Err(format!("--max-inflight {}: use 1..4096", self.max_inflight));
        }
        // hyper reads a request head into one buffer of at least 8 KiB.
        if !(8192..=1 << 20).contains(&self.max_header_bytes) {
            return Err(format!(
                "--max-header-bytes {}: use 8192..1048576",
                self.max_header_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_s3_limits_and_bad_limits_are_refused() {
        let l = Limits::default();
        l.check().unwrap();
        assert_eq!(l.max_object, 5 << 30);
        for bad in [
            Limits {
                max_inflight: 0,
                ..Limits::default()
            },
            Limits {
                max_header_bytes: 100,
                ..Limits::default()
            },
            Limits {
                max_part: 1,
                ..Limits::default()
            },
            Limits {
                max_object: 0,
                ..Limits::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
