//! `ferry://HOST[:PORT]/NAME/PATH` (HOST may be `[v6 address]`; PATH may be empty).

use super::beneath::check_rel;
use super::session::DEFAULT_PORT;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub host: String,
    pub port: u16,
    pub export: String,
    /// Relative path inside the export ("" = its root).
    pub path: Vec<u8>,
}

pub const SCHEME: &str = "ferry://";

pub fn is_remote(s: &std::ffi::OsStr) -> bool {
    s.as_encoded_bytes().starts_with(SCHEME.as_bytes())
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "{SCHEME}{host}:{}/{}/{}",
            self.port,
            self.export,
            String::from_utf8_lossy(&self.path)
        )
    }
}

/// Parses a URL; a trailing '/' is ignored, `..`, `.` and empty components are refused.
pub fn parse(url: &std::ffi::OsStr) -> Result<Remote, String> {
    let raw = url.as_encoded_bytes();
    let bad = |why: &str| {
        format!(
            "'{}': {why} (expected ferry://HOST[:PORT]/NAME/PATH)",
            url.to_string_lossy()
        )
    };
    let rest = raw
        .strip_prefix(SCHEME.as_bytes())
        .ok_or_else(|| bad("not a ferry:// URL"))?;
    let (authority, path) = match rest.iter().position(|&b| b == b'/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => return Err(bad("no export name")),
    };
    let authority = std::str::from_utf8(authority).map_err(|_| bad("host is not UTF-8"))?;
    if authority.contains('@') {
        return Err(bad(
            "credentials do not belong in a URL (ferry authenticates with certificates)",
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        None => DEFAULT_PORT,
    };
    let path = path.strip_suffix(b"/").unwrap_or(path);
    let (export, path) = match path.iter().position(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (path, &[][..]),
    };
    if export.is_empty() {
        return Err(bad("no export name"));
    }
    let export = std::str::from_utf8(export).map_err(|_| bad("export name is not UTF-8"))?;
    check_rel(path).map_err(|e| bad(&e))?;
    Ok(Remote {
        host: host.to_string(),
        port,
        export: export.to_string(),
        path: path.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn urls() {
        let r = parse(OsStr::new("ferry://h:99/data/a/b")).unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.export.as_str()),
            ("h", 99, "data")
        );
        assert_eq!(r.path, b"a/b");
        let r = parse(OsStr::new("ferry://[::1]/data/")).unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.path.len()),
            ("::1", DEFAULT_PORT, 0)
        );
        for bad in [
            "ferry://h",
            "ferry://h/",
            "ferry://h/d/../x",
            "ferry://u:p@h/d",
            "ferry://h:x/d",
            "http://h/d",
            "ferry://h/d//x",
        ] {
            assert!(parse(OsStr::new(bad)).is_err(), "{bad}");
        }
    }
}
