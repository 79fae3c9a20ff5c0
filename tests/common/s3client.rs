//! A small S3 client for the tests: path-style requests over HTTP/1.1, signed with AWS
//! Signature V4 by ferry's own signer (`ferry::s3::client`; the payload's SHA-256 signed too),
//! one connection per request, with query strings and every reply header. Enough for
//! GET/PUT/HEAD/DELETE of objects, CreateBucket and ListObjectsV2 against ferry's endpoint,
//! from many threads at once, with a short time limit on every read.

use ferry::s3::client::{amz_date, authorization, query_encode, sha256_hex, uri_encode};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone)]
pub struct S3 {
    /// HOST:PORT of the endpoint.
    pub addr: String,
    pub ak: String,
    pub sk: String,
    pub timeout: Duration,
    /// How long a connect may take (an endpoint whose link is down never answers it).
    pub connect_timeout: Duration,
}

#[derive(Debug)]
pub struct Resp {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `<Code>` of an S3 error body.
    pub fn error_code(&self) -> Option<String> {
        tag(&String::from_utf8_lossy(&self.body), "Code")
            .into_iter()
            .next()
    }

    /// The status and the start of the body, for messages.
    pub fn text(&self) -> String {
        let b = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned();
        format!("{} {b}", self.code)
    }
}

/// The texts of every `<name>...</name>` in `xml` (entities decoded).
pub fn tag(xml: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut out = vec![];
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        let v = after[..j]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&");
        out.push(v);
        rest = &after[j + close.len()..];
    }
    out
}

impl S3 {
    pub fn new(addr: &str, ak: &str, sk: &str) -> S3 {
        S3 {
            addr: addr.trim_start_matches("http://").to_string(),
            ak: ak.into(),
            sk: sk.into(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
        }
    }

    /// One signed request; `path` is `/bucket[/key]` (unencoded), `query` its parameters.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Resp> {
        let path = uri_encode(path.as_bytes());
        let mut q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (query_encode(k.as_bytes()), query_encode(v.as_bytes())))
            .collect();
        q.sort();
        let q: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let query = q.join("&");
        let payload = sha256_hex(body);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let (date, stamp) = amz_date(now.as_secs());
        let auth = authorization(
            (&self.ak, &self.sk),
            (method, &path, &query, &self.addr),
            &payload,
            (&date, &stamp),
        );
        let target = if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        };
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nx-amz-date: {stamp}\r\n\
             x-amz-content-sha256: {payload}\r\nAuthorization: {auth}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        let to = self.addr.to_socket_addrs()?.next();
        let to = to.ok_or_else(|| io::Error::other(format!("no address in {}", self.addr)))?;
        let mut s = TcpStream::connect_timeout(&to, self.connect_timeout)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        s.set_nodelay(true)?;
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        parse(&raw, method == "HEAD")
    }

    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) -> io::Result<Resp> {
        self.request("PUT", &format!("/{bucket}/{key}"), &[], body)
    }

    pub fn get(&self, bucket: &str, key: &str) -> io::Result<Resp> {
        self.request("GET", &format!("/{bucket}/{key}"), &[], b"")
    }

    pub fn head(&self, bucket: &str, key: &str) -> io::Result<Resp> {
        self.request("HEAD", &format!("/{bucket}/{key}"), &[], b"")
    }

    pub fn delete(&self, bucket: &str, key: &str) -> io::Result<Resp> {
        self.request("DELETE", &format!("/{bucket}/{key}"), &[], b"")
    }

    pub fn create_bucket(&self, bucket: &str) -> io::Result<Resp> {
        self.request("PUT", &format!("/{bucket}"), &[], b"")
    }

    /// Every key of `bucket` under `prefix` (ListObjectsV2, page by page).
    pub fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, String> {
        let mut keys = vec![];
        let mut token: Option<String> = None;
        for _ in 0..10_000 {
            let mut q = vec![("list-type", "2"), ("prefix", prefix)];
            if let Some(t) = &token {
                q.push(("continuation-token", t));
            }
            let r = self
                .request("GET", &format!("/{bucket}"), &q, b"")
                .map_err(|e| format!("list {bucket} at {}: {e}", self.addr))?;
            if r.code != 200 {
                return Err(format!("list {bucket} at {}: {}", self.addr, r.text()));
            }
            let xml = String::from_utf8_lossy(&r.body).into_owned();
            keys.extend(tag(&xml, "Key"));
            match tag(&xml, "NextContinuationToken").pop() {
                Some(t) if tag(&xml, "IsTruncated").first().map(String::as_str) == Some("true") => {
                    token = Some(t)
                }
                _ => return Ok(keys),
            }
        }
        Err(format!("list {bucket}: more than 10000 pages"))
    }
}

/// Status, headers and body of a raw HTTP/1.1 reply (Content-Length or chunked).
fn parse(raw: &[u8], head_only: bool) -> io::Result<Resp> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of the reply head"))?;
    let text = String::from_utf8_lossy(&raw[..end]);
    let mut lines = text.split("\r\n");
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if head_only {
        vec![]
    } else if chunked {
        dechunk(rest).ok_or_else(|| bad("a broken chunked body"))?
    } else {
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        match len {
            Some(n) if rest.len() < n => return Err(bad("the body ended early")),
            Some(n) => rest[..n].to_vec(),
            None => rest.to_vec(),
        }
    };
    Ok(Resp {
        code,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![];
    loop {
        let i = b.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&b[..i]).ok()?.split(';').next()?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        b = &b[i + 2..];
        if n == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..n)?);
        b = b.get(n + 2..)?;
    }
}
