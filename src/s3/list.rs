//! ListObjectsV2: the keys of a bucket under a prefix, in byte order, grouped by a delimiter
//! into common prefixes, a page at a time. A page ends after max-keys names (keys and common
//! prefixes both count); its continuation token is the last name given, hex-encoded, and the
//! next page starts after it. Keys come from every disk of the node (an object in the middle
//! of a move may be on two: listed once); only the directory the prefix names is walked.

use super::object::etag;
use crate::cluster::store::{Cluster, looks_temp};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::time::SystemTime;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub size: u64,
    pub modified: SystemTime,
    pub etag: String,
}

pub struct Query<'a> {
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    /// List names after this one (start-after, or a continuation token's name).
    pub after: Option<&'a str>,
    pub max_keys: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub contents: Vec<(String, Item)>,
    pub prefixes: Vec<String>,
    pub truncated: bool,
    /// The name the next page starts after (when truncated).
    pub next: Option<String>,
}

/// One page of `all` (sorted keys) for `q`.
pub fn page(all: &BTreeMap<String, Item>, q: &Query) -> Page {
    let mut p = Page::default();
    let start = match q.after {
        Some(a) => Bound::Excluded(a.to_string()),
        None => Bound::Unbounded,
    };
    let delim = q.delimiter.filter(|d| !d.is_empty());
    let mut last: Option<String> = None;
    for (key, item) in all.range((start, Bound::Unbounded)) {
        let Some(rest) = key.strip_prefix(q.prefix) else {
            continue;
        };
        let cp = delim
            .and_then(|d| rest.find(d).map(|i| &key[..q.prefix.len() + i + d.len()]))
            .map(str::to_string);
        if let Some(cp) = &cp
            && (last.as_ref() == Some(cp) || q.after.is_some_and(|a| a >= cp.as_str()))
        {
            continue; // inside a common prefix already given
        }
        if p.contents.len() + p.prefixes.len() == q.max_keys {
            p.truncated = true;
            p.next = last;
            return p;
        }
        match cp {
            Some(cp) => {
                p.prefixes.push(cp.clone());
                last = Some(cp);
            }
            None => {
                p.contents.push((key.clone(), item.clone()));
                last = Some(key.clone());
            }
        }
    }
    p
}

pub fn encode_token(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn decode_token(t: &str) -> Option<String> {
    if !t.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Every key of `bucket` starting with `prefix`, from every disk.
pub fn gather(c: &Cluster, bucket: &str, prefix: &str) -> BTreeMap<String, Item> {
    let mut all = BTreeMap::new();
    // Walk from the deepest directory the prefix names; a key has no '.', '..' or empty part.
    let dir = prefix.rfind('/').map_or("", |i| &prefix[..=i]);
    if dir
        .split('/')
        .rev()
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return all;
    }
    for (_, disk) in c.disks() {
        walk(&disk.join(bucket).join(dir), dir, prefix, &mut all);
    }
    all
}

fn walk(dir: &Path, base: &str, prefix: &str, all: &mut BTreeMap<String, Item>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return; // absent here (other disks hold the keys), or unreadable: nothing to list
    };
    for e in rd.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue; // not UTF-8: no S3 key can name it
        };
        let key = format!("{base}{name}");
        match e.file_type() {
            Ok(t) if t.is_dir() => {
                let sub = format!("{key}/");
                if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                    walk(&e.path(), &sub, prefix, all);
                }
            }
            Ok(t) if t.is_file() && !looks_temp(name.as_bytes()) && key.starts_with(prefix) => {
                let Ok(md) = e.metadata() else { continue };
                let modified = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                let item = Item {
                    size: md.len(),
                    modified,
                    etag: etag(&md),
                };
                // Two copies (mid-move): the newer is the one a read finds last.
                match all.get(&key) {
                    Some(old) if old.modified >= modified => {}
                    _ => {
                        all.insert(key, item);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> BTreeMap<String, Item> {
        let it = Item {
            size: 1,
            modified: SystemTime::UNIX_EPOCH,
            etag: "e".into(),
        };
        names.iter().map(|n| (n.to_string(), it.clone())).collect()
    }

    fn names(p: &Page) -> (Vec<&str>, Vec<&str>) {
        let c = p.contents.iter().map(|(k, _)| k.as_str()).collect();
        (c, p.prefixes.iter().map(String::as_str).collect())
    }

    fn q<'a>(prefix: &'a str, d: Option<&'a str>, after: Option<&'a str>, max: usize) -> Query<'a> {
        Query {
            prefix,
            delimiter: d,
            after,
            max_keys: max,
        }
    }

    #[test]
    fn pages_follow_each_other_without_gaps_or_repeats() {
        let all = keys(&["a", "b/1", "b/2", "c", "d/x/1", "d/y", "e"]);
        let mut seen = (vec![], vec![]);
        let mut after: Option<String> = None;
        loop {
            let p = page(&all, &q("", Some("/"), after.as_deref(), 2));
            let (c, cp) = names(&p);
            seen.0.extend(c.iter().map(|s| s.to_string()));
            seen.1.extend(cp.iter().map(|s| s.to_string()));
            if !p.truncated {
                break;
            }
            after = p.next;
        }
        assert_eq!(seen.0, ["a", "c", "e"]);
        assert_eq!(seen.1, ["b/", "d/"]);
    }

    #[test]
    fn prefix_delimiter_and_max_keys() {
        let all = keys(&["a-c", "a/b", "a/b/c", "a/d", "ab"]);
        let p = page(&all, &q("a/", Some("/"), None, 1000));
        assert_eq!(names(&p), (vec!["a/b", "a/d"], vec!["a/b/"]));
        assert!(!p.truncated);
        let p = page(&all, &q("a", None, None, 2));
        assert_eq!(names(&p), (vec!["a-c", "a/b"], vec![]));
        assert!(p.truncated);
        assert_eq!(p.next.as_deref(), Some("a/b"));
        let p = page(&all, &q("a", None, Some("a/b"), 1000));
        assert_eq!(names(&p).0, ["a/b/c", "a/d", "ab"]);
        assert_eq!(page(&all, &q("", None, None, 0)).contents.len(), 0);
        assert!(page(&all, &q("", None, None, 0)).truncated);
        assert!(!page(&all, &q("zz", None, None, 0)).truncated);
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        for n in ["", "a/b c", "ünï/☃"] {
            assert_eq!(decode_token(&encode_token(n)).as_deref(), Some(n));
        }
        for bad in ["abc", "zz", "ff"] {
            assert_eq!(decode_token(bad), None, "{bad}");
        }
    }
}
