//! `--manifest FILE`: one line per copied regular file, so a copy can be checked later
//! (`ferry verify --manifest FILE DST`) without its source.
//!
//! Format (text, one record per line, fields separated by one TAB):
//!
//! ```text
//! # ferry manifest v1
//! <xxh3_64 as 16 lowercase hex digits> TAB <size in bytes> TAB <mtime, ns since the epoch> TAB <path>
//! ```
//!
//! `path` is relative to the destination given on the command line. Paths are bytes: `\` is
//! written `\\`, and TAB, newline, CR, other control bytes, DEL and every byte >= 0x80 are
//! written `\xHH`, so a record is always one ASCII line and any name round-trips. Lines
//! starting with `#` are comments.

use crate::error::Error;
use std::io::{BufRead, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

pub const HEADER: &str = "# ferry manifest v1";
/// Longest record line accepted when reading (a PATH_MAX-free path is at most this long).
pub const MAX_LINE: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub hash: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub path: PathBuf,
}

pub fn escape(p: &Path) -> String {
    let mut out = String::with_capacity(p.as_os_str().len());
    for &b in p.as_os_str().as_bytes() {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x21..=0x7e | b' ' => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

pub fn unescape(s: &str) -> Result<PathBuf, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') => {
                let hex = s
                    .get(i + 2..i + 4)
                    .ok_or_else(|| format!("truncated escape in '{s}'"))?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad escape \\x{hex}"))?);
                i += 4;
            }
            _ => return Err(format!("bad escape in '{s}'")),
        }
    }
    Ok(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

pub fn format_record(r: &Record) -> String {
    format!(
        "{:016x}\t{}\t{}\t{}\n",
        r.hash,
        r.size,
        r.mtime_ns,
        escape(&r.path)
    )
}

pub fn parse_record(line: &str) -> Result<Record, String> {
    let mut f = line.splitn(4, '\t');
    let (Some(h), Some(sz), Some(mt), Some(p)) = (f.next(), f.next(), f.next(), f.next()) else {
        return Err("expected 4 TAB-separated fields".into());
    };
    if h.len() != 16 {
        return Err(format!("hash '{h}' is not 16 hex digits"));
    }
    let hash = u64::from_str_radix(h, 16).map_err(|_| format!("hash '{h}' is not hex"))?;
    let size = sz
        .parse()
        .map_err(|_| format!("size '{sz}' is not a number"))?;
    let mtime_ns = mt
        .parse()
        .map_err(|_| format!("mtime '{mt}' is not a number"))?;
    let path = unescape(p)?;
    if path.as_os_str().is_empty() || path.is_absolute() {
        return Err(format!("path '{p}' must be relative and non-empty"));
    }
    Ok(Record {
        hash,
        size,
        mtime_ns,
        path,
    })
}

/// Reads a manifest; errors name the line.
pub fn read(path: &Path) -> Result<Vec<Record>, Error> {
    let f = std::fs::File::open(path).map_err(|e| Error::os("open manifest", path, e))?;
    let mut out = Vec::new();
    let mut r = std::io::BufReader::new(f);
    let mut line = String::new();
    let mut no = 0usize;
    loop {
        line.clear();
        let n = r
            .read_line(&mut line)
            .map_err(|e| Error::os("read manifest", path, e))?;
        if n == 0 {
            break;
        }
        no += 1;
        if n > MAX_LINE {
            return Err(Error::usage(
                path,
                format!("line {no}: longer than {MAX_LINE} bytes"),
            ));
        }
        let l = line.trim_end_matches('\n');
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        out.push(parse_record(l).map_err(|m| Error::usage(path, format!("line {no}: {m}")))?);
    }
    Ok(out)
}

/// Appends records as files are committed; `finish` makes them durable.
pub struct Writer {
    out: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    root: PathBuf,
    /// (hidden, final): files written under a hidden tree are recorded at their final paths.
    renames: Vec<(PathBuf, PathBuf)>,
    /// The first write error: reported once at the end (the copy itself is unaffected).
    failed: Option<std::io::Error>,
}

impl Writer {
    pub fn create(path: &Path, root: &Path) -> Result<Self, Error> {
        let f = std::fs::File::create(path).map_err(|e| Error::os("create manifest", path, e))?;
        let mut w = Writer {
            out: std::io::BufWriter::with_capacity(256 << 10, f),
            path: path.to_path_buf(),
            root: root.to_path_buf(),
            renames: Vec::new(),
            failed: None,
        };
        w.put(format!("{HEADER}\n").as_bytes());
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) {
        if self.failed.is_none()
            && let Err(e) = self.out.write_all(b)
        {
            self.failed = Some(e);
        }
    }

    /// Files under `hidden` are recorded as under `target` (the name it gets at the end).
    pub fn rename(&mut self, hidden: &Path, target: &Path) {
        self.renames
            .push((hidden.to_path_buf(), target.to_path_buf()));
    }

    /// Records the file now at `dst` (a path under the destination root).
    pub fn record(&mut self, dst: &Path, size: u64, mtime_ns: i128, hash: u64) {
        let moved = self
            .renames
            .iter()
            .find_map(|(h, t)| dst.strip_prefix(h).ok().map(|r| t.join(r)));
        let dst = moved.as_deref().unwrap_or(dst);
        let rel = dst.strip_prefix(&self.root).unwrap_or(dst);
        let rel = if rel.as_os_str().is_empty() {
            // The destination itself is the file (copying one file to a new name).
            Path::new(dst.file_name().unwrap_or(dst.as_os_str()))
        } else {
            rel
        };
        let line = format_record(&Record {
            hash,
            size,
            mtime_ns,
            path: rel.to_path_buf(),
        });
        self.put(line.as_bytes());
    }

    /// Flushes and fsyncs the manifest.
    pub fn finish(&mut self) -> Result<(), Error> {
        if let Some(e) = self.failed.take() {
            return Err(Error::os("write manifest", &self.path, e));
        }
        self.out
            .flush()
            .and_then(|_| self.out.get_ref().sync_all())
            .map_err(|e| Error::os("write manifest", &self.path, e))
    }
}

pub fn mtime_ns(st: &libc::stat) -> i128 {
    st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_name_round_trips() {
        let names: [&[u8]; 5] = [
            b"plain.txt",
            b"tab\there\nnewline",
            b"back\\slash \\x41",
            b"\xff\xfe not utf8",
            "ünïcødé/日本".as_bytes(),
        ];
        for n in names {
            let p = PathBuf::from(std::ffi::OsString::from_vec(n.to_vec()));
            let r = Record {
                hash: 0xdead_beef,
                size: 42,
                mtime_ns: -5,
                path: p.clone(),
            };
            let line = format_record(&r);
            assert!(line.is_ascii());
            assert_eq!(line.matches('\n').count(), 1);
            assert_eq!(parse_record(line.trim_end_matches('\n')).unwrap(), r);
        }
    }

    #[test]
    fn bad_records_are_rejected() {
        for l in [
            "zz\t1\t1\ta",
            "0000000000000001\tx\t1\ta",
            "0000000000000001\t1\t1",
            "0000000000000001\t1\t1\t/abs",
            "0000000000000001\t1\t1\tbad\\q",
        ] {
            assert!(parse_record(l).is_err(), "{l}");
        }
    }
}
