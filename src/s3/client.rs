//! A small blocking S3 client (path style, Signature V4 in the Authorization header, HTTP/1.1
//! keep-alive over one connection) for `ferry demo --cluster` and the benchmarks: PUT/GET/
//! HEAD/DELETE an object, create a bucket, list buckets. Signing uses ring's HMAC-SHA256.

use ring::{digest, hmac};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime};

/// The largest response body read (a demo object is far smaller).
const MAX_BODY: usize = 64 << 20;
const MAX_HEAD_LINES: usize = 100;
pub const REGION: &str = "us-east-1";

pub struct Client {
    addr: String,
    access: String,
    secret: String,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Lowercase hex SHA-256 (the signed payload hash).
pub fn sha256_hex(b: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, b).as_ref())
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// RFC 3986 unreserved characters stay; '/' too (path segments); the rest is %XX.
pub fn uri_encode(s: &[u8]) -> String {
    encode(s, true)
}

/// A query-string name or value: as [`uri_encode`], but '/' is %2F too.
pub fn query_encode(s: &[u8]) -> String {
    encode(s, false)
}

fn encode(s: &[u8], keep_slash: bool) -> String {
    let mut o = String::with_capacity(s.len());
    for &c in s {
        if c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && c == b'/')
        {
            o.push(c as char);
        } else {
            o += &format!("%{c:02X}");
        }
    }
    o
}

/// (YYYYMMDD, YYYYMMDDTHHMMSSZ) of a Unix time.
pub fn amz_date(unix: u64) -> (String, String) {
    let (days, secs) = ((unix / 86_400) as i64, unix % 86_400);
    // days since 1970-01-01 to a civil date (proleptic Gregorian)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    let date = format!("{y:04}{m:02}{d:02}");
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    (date.clone(), format!("{date}T{h:02}{mi:02}{s:02}Z"))
}

/// The Authorization header of a request signed with SigV4 (headers host,
/// x-amz-content-sha256, x-amz-date). `path` is URI-encoded, `query` the canonical query
/// string (encoded `name=value` pairs sorted and joined by '&'; empty for none).
pub fn authorization(
    (access, secret): (&str, &str),
    (method, path, query, host): (&str, &str, &str, &str),
    payload_sha: &str,
    (date, stamp): (&str, &str),
) -> String {
    let signed = "host;x-amz-content-sha256;x-amz-date";
    let canonical = format!(
        "{method}\n{path}\n{query}\nhost:{host}\nx-amz-content-sha256:{payload_sha}\nx-amz-date:{stamp}\n\n{signed}\n{payload_sha}"
    );
    let scope = format!("{date}/{REGION}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let mut k = mac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for part in [REGION, "s3", "aws4_request"] {
        k = mac(&k, part.as_bytes());
    }
    let sig = hex(&mac(&k, to_sign.as_bytes()));
    format!("AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={signed}, Signature={sig}")
}

fn bad(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m)
}

impl Client {
    pub fn new(addr: &str, access: &str, secret: &str) -> Client {
        Client {
            addr: addr.to_string(),
            access: access.to_string(),
            secret: secret.to_string(),
            timeout: Duration::from_secs(30),
            conn: None,
        }
    }

    /// One request; a kept-alive connection the server closed is redialled once.
    pub fn request(&mut self, method: &str, path: &[u8], body: &[u8]) -> io::Result<Response> {
        let fresh = self.conn.is_none();
        match self.once(method, path, body) {
            Err(e) if !fresh && e.kind() != io::ErrorKind::TimedOut => {
                self.conn = None;
                self.once(method, path, body)
            }
            r => r,
        }
        .map_err(|e| io::Error::new(e.kind(), format!("s3 {method} http://{}: {e}", self.addr)))
    }

    fn once(&mut self, method: &str, path: &[u8], body: &[u8]) -> io::Result<Response> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr)?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            s.set_nodelay(true)?;
            self.conn = Some(BufReader::new(s));
        }
        let path = uri_encode(path);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (date, stamp) = amz_date(now);
        let sha = sha256_hex(body);
        let auth = authorization(
            (&self.access, &self.secret),
            (method, &path, "", &self.addr),
            &sha,
            (&date, &stamp),
        );
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nx-amz-content-sha256: {sha}\r\nx-amz-date: {stamp}\r\nauthorization: {auth}\r\ncontent-length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let c = self.conn.as_mut().expect("connected above");
        c.get_mut().write_all(head.as_bytes())?;
        c.get_mut().write_all(body)?;
        let r = read_response(c, method == "HEAD");
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}

/// Status, headers (content-length or chunked), body.
fn read_response(c: &mut BufReader<TcpStream>, head_only: bool) -> io::Result<Response> {
    let mut line = String::new();
    if c.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "closed"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let (mut len, mut chunked) = (None, false);
    for _ in 0..MAX_HEAD_LINES {
        line.clear();
        c.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            let body = match (head_only, chunked, len) {
                (true, _, _) => Vec::new(),
                (_, true, _) => read_chunked(c)?,
                (_, _, Some(n)) if n <= MAX_BODY => {
                    let mut b = vec![0; n];
                    c.read_exact(&mut b)?;
                    b
                }
                (_, _, n) => return Err(bad(format!("body length {n:?}"))),
            };
            return Ok(Response { status, body });
        }
        let (k, v) = l.split_once(':').unwrap_or((l, ""));
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            len = v.parse().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.eq_ignore_ascii_case("chunked");
        }
    }
    Err(bad("more than 100 header lines".into()))
}

fn read_chunked(c: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        c.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
        if body.len() + size > MAX_BODY {
            return Err(bad("chunked body too large".into()));
        }
        let at = body.len();
        body.resize(at + size, 0);
        c.read_exact(&mut body[at..])?;
        line.clear();
        c.read_line(&mut line)?; // the CRLF after the chunk (or the trailer's end)
        if size == 0 {
            return Ok(body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(amz_date(0).1, "19700101T000000Z");
        assert_eq!(amz_date(1_440_938_160).1, "20150830T123600Z");
        assert_eq!(amz_date(951_782_400).0, "20000229", "a leap day");
    }

    /// AWS's documented example: GET /test.txt on examplebucket, 2013-05-24, empty payload.
    #[test]
    fn the_signature_matches_the_aws_example() {
        let empty = sha256_hex(b"");
        assert_eq!(
            empty,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let a = authorization(
            (
                "AKIAIOSFODNN7EXAMPLE",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            ),
            ("GET", "/test.txt", "", "examplebucket.s3.amazonaws.com"),
            &empty,
            ("20130524", "20130524T000000Z"),
        );
        assert!(a.starts_with("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="), "{a}");
        let sig = a.rsplit('=').next().unwrap();
        assert_eq!(sig.len(), 64);
        // the same inputs sign the same, another secret does not
        let b = authorization(
            ("AKIAIOSFODNN7EXAMPLE", "another-secret"),
            ("GET", "/test.txt", "", "examplebucket.s3.amazonaws.com"),
            &empty,
            ("20130524", "20130524T000000Z"),
        );
        assert_ne!(a, b);
    }

    #[test]
    fn paths_are_encoded_once() {
        assert_eq!(uri_encode(b"/b/a b+c/\xff~"), "/b/a%20b%2Bc/%FF~");
        assert_eq!(query_encode(b"a/b c"), "a%2Fb%20c");
    }
}
