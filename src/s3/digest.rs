//! The digests a client sends with a body (Content-MD5, `x-amz-checksum-*` as a header or as an
//! aws-chunked trailer), checked as the body streams: a mismatch fails the write before the
//! object (or part) gets its name, so a corrupted upload never replaces anything (BadDigest).
//! s3s checks signatures and signed payload hashes; these it leaves to the service.

use super::errors::BodyError;
use s3s::TrailingHeaders;
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum as _, Crc32, Crc32c, Crc64Nvme, Md5, Sha1, Sha256};
use s3s::dto::{Checksum, ChecksumAlgorithm};

/// What a client claimed about its body.
pub struct Claims {
    pub content_md5: Option<String>,
    /// Header checksums (the fields a header set).
    pub headers: Checksum,
    /// The algorithm of a checksum that comes as a trailer.
    pub algorithm: Option<ChecksumAlgorithm>,
    pub trailers: Option<TrailingHeaders>,
}

pub struct Digests {
    claims: Claims,
    hasher: ChecksumHasher,
    md5: Option<Md5>,
}

fn b64(x: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(x)
}

impl Digests {
    pub fn new(claims: Claims) -> Digests {
        let h = &claims.headers;
        let alg = claims
            .algorithm
            .as_ref()
            .map(|a| a.as_str().to_ascii_uppercase());
        let on = |header: bool, name: &str| header || alg.as_deref() == Some(name);
        let hasher = ChecksumHasher {
            crc32: on(h.checksum_crc32.is_some(), ChecksumAlgorithm::CRC32).then(Crc32::new),
            crc32c: on(h.checksum_crc32c.is_some(), ChecksumAlgorithm::CRC32C).then(Crc32c::new),
            sha1: on(h.checksum_sha1.is_some(), ChecksumAlgorithm::SHA1).then(Sha1::new),
            sha256: on(h.checksum_sha256.is_some(), ChecksumAlgorithm::SHA256).then(Sha256::new),
            crc64nvme: on(h.checksum_crc64nvme.is_some(), ChecksumAlgorithm::CRC64NVME)
                .then(Crc64Nvme::new),
        };
        let md5 = claims.content_md5.is_some().then(Md5::new);
        Digests {
            claims,
            hasher,
            md5,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        if let Some(m) = &mut self.md5 {
            m.update(data);
        }
    }

    /// After the last byte: every claimed digest must match.
    pub fn check(self) -> Result<(), BodyError> {
        if let (Some(want), Some(m)) = (&self.claims.content_md5, self.md5)
            && b64(&m.finalize()) != *want
        {
            return Err(BodyError::Digest("Content-MD5".into()));
        }
        let got = self.hasher.finalize();
        let h = &self.claims.headers;
        let trailer = |name: &str| -> Option<String> {
            let t = self.claims.trailers.as_ref()?;
            t.read(|m| {
                m.get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
            .flatten()
        };
        let pairs = [
            (
                "x-amz-checksum-crc32",
                &h.checksum_crc32,
                &got.checksum_crc32,
            ),
            (
                "x-amz-checksum-crc32c",
                &h.checksum_crc32c,
                &got.checksum_crc32c,
            ),
            ("x-amz-checksum-sha1", &h.checksum_sha1, &got.checksum_sha1),
            (
                "x-amz-checksum-sha256",
                &h.checksum_sha256,
                &got.checksum_sha256,
            ),
            (
                "x-amz-checksum-crc64nvme",
                &h.checksum_crc64nvme,
                &got.checksum_crc64nvme,
            ),
        ];
        for (name, header, computed) in pairs {
            let Some(computed) = computed else { continue };
            let Some(want) = header.clone().or_else(|| trailer(name)) else {
                continue; // an algorithm named for a trailer that never came: nothing claimed
            };
            if want != *computed {
                return Err(BodyError::Digest(name.into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(md5: Option<&str>, crc32: Option<&str>) -> Claims {
        Claims {
            content_md5: md5.map(str::to_string),
            headers: Checksum {
                checksum_crc32: crc32.map(str::to_string),
                ..Default::default()
            },
            algorithm: None,
            trailers: None,
        }
    }

    #[test]
    fn claimed_digests_must_match_the_body() {
        // md5("hello") and crc32("hello"), base64.
        let (md5, crc) = ("XUFAKrxLKna5cZ2REBfFkg==", "NhCmhg==");
        let run = |c: Claims, body: &[u8]| {
            let mut d = Digests::new(c);
            for part in body.chunks(2) {
                d.update(part);
            }
            d.check()
        };
        run(claims(Some(md5), Some(crc)), b"hello").unwrap();
        run(claims(None, None), b"anything").unwrap();
        let e = run(claims(Some(md5), None), b"hellO").unwrap_err();
        assert!(
            matches!(&e, BodyError::Digest(n) if n == "Content-MD5"),
            "{e}"
        );
        let e = run(claims(None, Some(crc)), b"hellO").unwrap_err();
        assert!(
            matches!(&e, BodyError::Digest(n) if n == "x-amz-checksum-crc32"),
            "{e}"
        );
    }
}
