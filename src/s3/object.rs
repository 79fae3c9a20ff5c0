//! Objects through the object layer (`cluster::store::Cluster`): a PUT streams its body into
//! the owner disk's temp (fsynced and renamed before the 200, the project's durability order);
//! a GET opens the object where the read chain finds it (owner, previous owner, forwarding
//! entry), so an object in the middle of a move is read from wherever it is now.

use super::digest::Digests;
use super::errors::BodyError;
use crate::cluster::store::Cluster;
use crate::error::Error;
use bytes::Bytes;
use std::fs::{File, Metadata};
use std::io::Write;

/// A source of body chunks: `Ok(None)` at the end.
pub type Pull<'a> = dyn FnMut() -> Result<Option<Bytes>, BodyError> + 'a;

/// The object's ETag: a hash of its size, inode and times. A validator, not an MD5 of the
/// content: it changes when the object is rewritten (and when a rebalance moves it), and
/// costs a stat instead of a read of the whole object.
pub fn etag(md: &Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut b = Vec::with_capacity(40);
    for v in [
        md.len(),
        md.ino(),
        md.mtime() as u64,
        md.mtime_nsec() as u64,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&md.ctime_nsec().to_le_bytes());
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&b))
}

/// What a body must be: at most `limit` bytes, exactly `expected` when announced, matching
/// the digests the client sent.
pub struct Want {
    pub limit: u64,
    pub expected: Option<u64>,
    pub digests: Option<Digests>,
}

/// Copies a body into `f` through `intake`: more than the limit, fewer bytes than announced
/// or a digest that does not match fails (so a client cutting its upload short or a
/// corrupted body never leaves an object).
pub fn fill(f: &mut File, pull: &mut Pull, want: &mut Want) -> std::io::Result<u64> {
    let mut n = 0u64;
    let mut src = intake(pull, want);
    while let Some(chunk) = src()? {
        n += chunk.len() as u64;
        f.write_all(&chunk)?;
    }
    Ok(n)
}

/// A body as a source of checked chunks (for a local write through `fill`, and for a put
/// proxied to another node): more than `want.limit` (or than announced) fails at once; a
/// short body or a digest that does not match is an error at its end, so neither the local
/// writer nor the proxy (which never sends the End that would let the owner name the
/// object) keeps it.
pub fn intake<'a>(
    pull: &'a mut Pull,
    want: &'a mut Want,
) -> impl FnMut() -> std::io::Result<Option<Bytes>> + 'a {
    let mut n = 0u64;
    move || {
        let (limit, expected) = (want.limit, want.expected);
        match pull().map_err(BodyError::into_io)? {
            Some(chunk) => {
                n += chunk.len() as u64;
                if n > limit || expected.is_some_and(|e| n > e) {
                    let limit = expected.map_or(limit, |e| e.min(limit));
                    return Err(BodyError::TooLarge { limit }.into_io());
                }
                if let Some(d) = &mut want.digests {
                    d.update(&chunk);
                }
                Ok(Some(chunk))
            }
            None => {
                if let Some(e) = expected
                    && n != e
                {
                    return Err(BodyError::Short {
                        expected: e,
                        got: n,
                    }
                    .into_io());
                }
                if let Some(d) = want.digests.take() {
                    d.check().map_err(BodyError::into_io)?;
                }
                Ok(None)
            }
        }
    }
}

/// Writes an object from a body; its ETag.
pub fn put(
    c: &Cluster,
    bucket: &str,
    key: &str,
    pull: &mut Pull,
    mut want: Want,
) -> Result<String, Error> {
    c.put_with(bucket, key.as_bytes(), &mut |f| {
        fill(f, pull, &mut want).map(|_| ())
    })?;
    // The object as it is now (a later writer may have replaced it already: its ETag then).
    Ok(open(c, bucket, key)?
        .map(|(_, m)| etag(&m))
        .unwrap_or_default())
}

/// The object opened for reading, with its metadata; None if there is none.
pub fn open(c: &Cluster, bucket: &str, key: &str) -> Result<Option<(File, Metadata)>, Error> {
    let Some((f, path)) = c.open_object(bucket, key.as_bytes())? else {
        return Ok(None);
    };
    let md = f.metadata().map_err(|e| Error::os("stat", &path, e))?;
    Ok(Some((f, md)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull_of(chunks: Vec<&'static [u8]>) -> impl FnMut() -> Result<Option<Bytes>, BodyError> {
        let mut it = chunks.into_iter();
        move || Ok(it.next().map(Bytes::from_static))
    }

    #[test]
    fn fill_counts_the_body_against_the_limit_and_the_content_length() {
        let d = tempfile::tempdir().unwrap();
        let mut f = File::create(d.path().join("f")).unwrap();
        let w = |limit, expected| Want {
            limit,
            expected,
            digests: None,
        };
        let ok = fill(
            &mut f,
            &mut pull_of(vec![b"abc", b"de"]),
            &mut w(5, Some(5)),
        )
        .unwrap();
        assert_eq!(ok, 5);
        let big = fill(&mut f, &mut pull_of(vec![b"abc", b"def"]), &mut w(5, None)).unwrap_err();
        let b = big.get_ref().unwrap().downcast_ref::<BodyError>().unwrap();
        assert!(matches!(b, BodyError::TooLarge { limit: 5 }), "{b:?}");
        let over = fill(&mut f, &mut pull_of(vec![b"abcd"]), &mut w(100, Some(3))).unwrap_err();
        assert!(over.to_string().contains("larger than 3"), "{over}");
        let short = fill(&mut f, &mut pull_of(vec![b"ab"]), &mut w(100, Some(3))).unwrap_err();
        assert!(short.to_string().contains("after 2 of 3"), "{short}");
    }

    #[test]
    fn the_etag_changes_when_an_object_is_rewritten() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let a = etag(&std::fs::metadata(&p).unwrap());
        assert_eq!(a, etag(&std::fs::metadata(&p).unwrap()));
        let t = d.path().join("t");
        std::fs::write(&t, b"two").unwrap();
        std::fs::rename(&t, &p).unwrap();
        assert_ne!(a, etag(&std::fs::metadata(&p).unwrap()));
    }

    use crate::cluster::topology::one_disk_sets as topo;

    #[test]
    fn an_object_still_at_its_previous_owner_is_read_listed_and_deleted() {
        use crate::cluster::store::Cluster;
        let d = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        for s in &all {
            std::fs::create_dir(d.path().join(s)).unwrap();
        }
        let (old, new) = (topo(d.path(), 1, &all[..1]), topo(d.path(), 2, &all));
        crate::cluster::identity::init(&new, std::path::Path::new("t.json")).unwrap();
        // Written under the old topology: every key is on s0.
        let before = Cluster::new(old.clone(), None, None);
        let keys: Vec<String> = (0..20).map(|i| format!("k/{i}")).collect();
        for k in &keys {
            before.put("b", k.as_bytes(), k.as_bytes()).unwrap();
        }
        // Now most keys belong elsewhere and have not moved yet.
        let mid = Cluster::new(new, Some(old), None);
        let moved = keys
            .iter()
            .filter(|k| {
                mid.current
                    .owner_key(crate::cluster::partition_of(b"b", k.as_bytes()))
                    != "s0/d0"
            })
            .count();
        assert!(moved > 10, "the new topology moves most keys ({moved})");
        for k in &keys {
            let (mut f, md) = open(&mid, "b", k)
                .unwrap()
                .expect("found at the previous owner");
            let mut v = String::new();
            std::io::Read::read_to_string(&mut f, &mut v).unwrap();
            assert_eq!((v.as_str(), md.len()), (k.as_str(), k.len() as u64));
        }
        let listed = crate::s3::list::gather(&mid, "b", "k/");
        assert_eq!(listed.len(), keys.len());
        assert!(mid.rm("b", b"k/3").unwrap());
        assert!(
            open(&mid, "b", "k/3").unwrap().is_none(),
            "a deleted key stays deleted"
        );
        // An overwrite goes to the new owner and wins over the old copy.
        let mut pull = pull_of(vec![b"new"]);
        let want = Want {
            limit: 100,
            expected: Some(3),
            digests: None,
        };
        put(&mid, "b", "k/4", &mut pull, want).unwrap();
        let (mut f, _) = open(&mid, "b", "k/4").unwrap().unwrap();
        let mut v = String::new();
        std::io::Read::read_to_string(&mut f, &mut v).unwrap();
        assert_eq!(v, "new");
        assert_eq!(mid.locate("b", b"k/4").unwrap().found_on.len(), 1);
    }
}
