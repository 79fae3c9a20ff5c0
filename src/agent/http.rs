//! A minimal blocking HTTP/1.1 client for etcd's JSON gateway, and the reply reader the admin
//! server shares. Every call has a connect and a read/write deadline, so a frozen etcd member
//! costs a timeout, never a hang. `post` is one TCP connection per request (`Connection:
//! close`); `super::conns` keeps connections open between requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Most bytes of one reply accepted (etcd caps a request at 1.5 MiB; JSON + base64 grows it).
pub const MAX_BODY: usize = 16 << 20;

/// `http://host:port` (or `host:port`) → `host:port`.
pub fn host_port(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if url.starts_with("https://") {
        return Err(format!(
            "'{url}': https endpoints are not supported (use http://)"
        ));
    }
    let hp = rest.trim_end_matches('/');
    if hp.is_empty() || hp.contains('/') || !hp.contains(':') {
        return Err(format!("'{url}': expected http://HOST:PORT"));
    }
    Ok(hp.to_string())
}

/// A stream whose reads share one deadline: a peer that dribbles its reply a byte at a time
/// still costs at most the call's timeout, not a timeout per read.
pub(super) struct Deadline<'a> {
    pub s: &'a TcpStream,
    pub until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "reply not complete within the request deadline",
            ));
        }
        self.s.set_read_timeout(Some(left))?;
        let mut s = self.s;
        s.read(buf)
    }
}

/// POSTs `body` to `http://addr{path}`; (status, body). Connecting, sending and reading the
/// whole reply share one deadline, `timeout`.
pub fn post(
    addr: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let sa = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr}: no address")))?;
    let until = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&sa, timeout)?;
    let left = until.saturating_duration_since(Instant::now());
    s.set_write_timeout(Some(left.max(Duration::from_millis(1))))?;
    s.set_nodelay(true)?;
    s.write_all(&post_request(addr, path, body, true))?;
    read_reply(&mut BufReader::new(Deadline { s: &s, until }))
}

/// A JSON POST of `body` to `path` on `addr`, with `Connection: close` if `close`.
pub(super) fn post_request(addr: &str, path: &str, body: &[u8], close: bool) -> Vec<u8> {
    let close = if close { "Connection: close\r\n" } else { "" };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{close}\r\n",
        body.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    req
}

fn bad(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string())
}

/// A reply's status line and the headers that say how its body ends.
#[derive(Debug, PartialEq)]
pub struct Head {
    pub status: u16,
    pub len: Option<usize>,
    pub chunked: bool,
    /// HTTP/1.0, or `Connection: close`: the server ends the connection after this reply.
    pub close: bool,
}

impl Head {
    /// The connection may carry another request once this reply's body is read: its end is
    /// known (a length or chunks, not EOF) and the server keeps it open.
    pub fn reusable(&self) -> bool {
        !self.close && (self.chunked || self.len.is_some())
    }
}

/// Reads a status line, headers and a body (Content-Length, chunked, or to EOF).
pub fn read_reply<R: BufRead>(r: &mut R) -> std::io::Result<(u16, Vec<u8>)> {
    read_reply_head(r).map(|(head, body)| (head.status, body))
}

/// A whole reply, its head kept (whether the connection may carry another request).
pub fn read_reply_head<R: BufRead>(r: &mut R) -> std::io::Result<(Head, Vec<u8>)> {
    let head = read_head(r)?;
    let body = read_body(r, &head)?;
    Ok((head, body))
}

/// The status line and the header block.
pub fn read_head<R: BufRead>(r: &mut R) -> std::io::Result<Head> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let version = words.next().unwrap_or("");
    let status: u16 = words
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad HTTP status line"))?;
    let (len, chunked, close) = headers(r)?;
    Ok(Head {
        status,
        len,
        chunked,
        close: close || version != "HTTP/1.1",
    })
}

/// The body `head` announces.
pub fn read_body<R: BufRead>(r: &mut R, head: &Head) -> std::io::Result<Vec<u8>> {
    if head.chunked {
        return read_chunked(r);
    }
    if let Some(n) = head.len {
        if n > MAX_BODY {
            return Err(bad("HTTP body too large"));
        }
        let mut b = vec![0; n];
        r.read_exact(&mut b)?;
        return Ok(b);
    }
    let mut b = Vec::new();
    r.take(MAX_BODY as u64 + 1).read_to_end(&mut b)?;
    Ok(b)
}

/// (Content-Length, chunked?) from the header block.
pub fn read_headers<R: BufRead>(r: &mut R) -> std::io::Result<(Option<usize>, bool)> {
    headers(r).map(|(len, chunked, _)| (len, chunked))
}

/// (Content-Length, chunked?, `Connection: close`?) from the header block.
fn headers<R: BufRead>(r: &mut R) -> std::io::Result<(Option<usize>, bool, bool)> {
    let (mut len, mut chunked, mut close) = (None, false, false);
    for _ in 0..100 {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(bad("HTTP headers cut short"));
        }
        let h = h.trim_end();
        if h.is_empty() {
            return Ok((len, chunked, close));
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                len = Some(v.parse().map_err(|_| bad("bad Content-Length"))?);
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                close = true;
            }
        }
    }
    Err(bad("too many HTTP headers"))
}

fn read_chunked<R: BufRead>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l)?;
        let n = usize::from_str_radix(l.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| bad("bad chunk size"))?;
        if out.len() + n > MAX_BODY {
            return Err(bad("HTTP body too large"));
        }
        let start = out.len();
        out.resize(start + n, 0);
        r.read_exact(&mut out[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
        if n == 0 {
            return Ok(out);
        }
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (what etcd's gateway uses for keys and values).
pub fn b64_encode(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

pub fn b64_decode(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for ch in s.bytes().filter(|&c| c != b'=') {
        let v = match ch {
            b'A'..=b'Z' => ch - b'A',
            b'a'..=b'z' => ch - b'a' + 26,
            b'0'..=b'9' => ch - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return Err(format!("bad base64 byte {ch:#x}")),
        } as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_matches_known_text() {
        assert_eq!(b64_encode(b"foo"), "Zm9v");
        assert_eq!(b64_encode(b"fo"), "Zm8=");
        assert_eq!(b64_encode(b"f"), "Zg==");
        assert_eq!(b64_decode("YmFy").unwrap(), b"bar");
        for n in 0..300usize {
            let d: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
            assert_eq!(b64_decode(&b64_encode(&d)).unwrap(), d);
        }
        assert!(b64_decode("a*b").is_err());
    }

    #[test]
    fn a_reply_dribbled_byte_by_byte_costs_one_deadline() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            // each byte well within the deadline, the whole reply far past it
            for b in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi".iter() {
                if c.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let t = Duration::from_millis(400);
        let start = Instant::now();
        let r = post(&addr, "/x", b"{}", t);
        let took = start.elapsed();
        assert!(r.is_err(), "{r:?}");
        assert!(took < t + Duration::from_millis(300), "{took:?}");
        server.join().unwrap();
    }

    #[test]
    fn replies_with_length_and_chunks() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        assert_eq!(read_reply(&mut &r[..]).unwrap(), (200, b"hi".to_vec()));
        let r = b"HTTP/1.1 404 NF\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(read_reply(&mut &r[..]).unwrap(), (404, b"abcde".to_vec()));
        assert!(host_port("https://x:1").is_err());
        let head = |r: &[u8]| read_head(&mut &r[..]).unwrap();
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n").reusable());
        assert!(head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").reusable());
        assert!(!head(b"HTTP/1.1 200 OK\r\n\r\n").reusable(), "to EOF");
        assert!(!head(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n").reusable());
        let close = head(b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 2\r\n\r\n");
        assert!(close.close && !close.reusable());
        assert_eq!(
            host_port("http://127.0.0.1:2379/").unwrap(),
            "127.0.0.1:2379"
        );
    }
}
