//! Multipart uploads, staged on the disk that owns the final key:
//! `<disk>/.ferry-s3/uploads/<id>/{upload.json, part.NNNNN}` (a directory no bucket can be
//! named like, skipped by every object walk). Each part is written temp → fsync → rename;
//! CompleteMultipartUpload concatenates the parts into the object through the object layer
//! (the same durable put as a single PUT), then removes the staging directory.

use super::errors::{BodyError, code, no_such_upload, s3};
use super::limits::Limits;
use super::object::{Pull, Want, etag, fill};
use crate::cluster::partition_of;
use crate::cluster::store::Cluster;
use crate::error::Error;
use crate::meta;
use s3s::{S3Error, S3ErrorCode, S3Result};
use std::path::{Path, PathBuf};

pub const STAGING: &str = ".ferry-s3/uploads";
const UPLOAD_FILE: &str = "upload.json";

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq, Debug)]
struct Upload {
    bucket: String,
    key: String,
}

fn new_id() -> String {
    let t = || crate::temp::Token::random();
    format!("{}{}", t().as_str(), t().as_str())
}

fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Writes `data` (or a body) to `dir/name` durably: temp, fsync, rename, fsync dir.
fn write_durable(
    dir: &Path,
    name: &str,
    body: &mut dyn FnMut(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<PathBuf, Error> {
    let dst = dir.join(name);
    let tmp = crate::temp::temp_name(&dst, &crate::temp::Token::random());
    let mut f = std::fs::File::from(meta::create_temp(&tmp)?);
    let r = body(&mut f)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::os("write", &tmp, e));
    drop(f);
    if let Err(e) = r.and_then(|_| meta::rename(&tmp, &dst)) {
        let _ = meta::unlink(&tmp); // best effort; `e` is what the caller sees
        return Err(e);
    }
    meta::fsync_dir(dir)?;
    Ok(dst)
}

/// Starts an upload of `bucket/key`; its id.
pub fn create(c: &Cluster, bucket: &str, key: &str) -> S3Result<String> {
    crate::cluster::store::validate(bucket, key.as_bytes())
        .map_err(|m| s3(&Error::usage(Path::new(key), m)))?;
    let owner = c
        .current
        .owner_key(partition_of(bucket.as_bytes(), key.as_bytes()));
    // Staged on the owner disk when it is this node's, else on one of this node's disks.
    let mut local: Vec<PathBuf> = c.disks().map(|(_, p)| p.to_path_buf()).collect();
    local.sort();
    let disk = match c.disk_path(&owner) {
        Some(p) => p.to_path_buf(),
        None => local
            .into_iter()
            .next()
            .ok_or_else(|| s3(&Error::usage(Path::new(key), "this node serves no disk")))?,
    };
    let id = new_id();
    let dir = disk.join(STAGING).join(&id);
    let json = serde_json::to_vec(&Upload {
        bucket: bucket.into(),
        key: key.into(),
    })
    .expect("two strings serialize");
    let made = crate::cluster::identity::make_dirs_below(&disk, &dir)
        .and_then(|_| meta::fsync_dir(meta::parent_dir(&dir)))
        .and_then(|_| {
            write_durable(&dir, UPLOAD_FILE, &mut |f| {
                std::io::Write::write_all(f, &json)
            })
        });
    made.map_err(|e| s3(&e))?;
    Ok(id)
}

/// The staging directory of upload `id` of `bucket/key`.
fn find(c: &Cluster, id: &str, bucket: &str, key: &str) -> S3Result<PathBuf> {
    if !valid_id(id) {
        return Err(no_such_upload(id));
    }
    for (_, disk) in c.disks() {
        let dir = disk.join(STAGING).join(id);
        let Ok(text) = std::fs::read(dir.join(UPLOAD_FILE)) else {
            continue;
        };
        let up: Option<Upload> = serde_json::from_slice(&text).ok();
        if up.is_some_and(|u| u.bucket == bucket && u.key == key) {
            return Ok(dir);
        }
    }
    Err(no_such_upload(id))
}

fn part_name(n: i32) -> String {
    format!("part.{n:05}")
}

fn check_part_number(n: i32) -> S3Result<()> {
    if !(1..=super::limits::S3_MAX_PARTS).contains(&n) {
        return Err(code(
            S3ErrorCode::InvalidArgument,
            format!("Part number must be an integer between 1 and 10000, inclusive (got {n})"),
        ));
    }
    Ok(())
}

/// Stores one part (a retry of a part number replaces it); its ETag.
pub fn put_part(
    c: &Cluster,
    (id, bucket, key): (&str, &str, &str),
    n: i32,
    pull: &mut Pull,
    mut want: Want,
) -> S3Result<String> {
    check_part_number(n)?;
    let dir = find(c, id, bucket, key)?;
    let p = write_durable(&dir, &part_name(n), &mut |f| {
        fill(f, pull, &mut want).map(|_| ())
    })
    .map_err(|e| s3(&e))?;
    let md = std::fs::metadata(&p).map_err(|e| s3(&Error::os("stat", &p, e)))?;
    Ok(etag(&md))
}

/// Checks the client's part list against the staged parts: their files, in order.
fn chosen_parts(dir: &Path, parts: &[(i32, String)], limits: &Limits) -> S3Result<Vec<PathBuf>> {
    if parts.is_empty() {
        return Err(code(S3ErrorCode::MalformedXML, "the upload names no part"));
    }
    for (i, (n, _)) in parts.iter().enumerate() {
        check_part_number(*n)?;
        if i > 0 && *n <= parts[i - 1].0 {
            return Err(code(
                S3ErrorCode::InvalidPartOrder,
                "parts must be in ascending order",
            ));
        }
    }
    let mut files = Vec::with_capacity(parts.len());
    let mut total = 0u64;
    for (i, (n, tag)) in parts.iter().enumerate() {
        let p = dir.join(part_name(*n));
        let md = std::fs::metadata(&p)
            .ok()
            .filter(|m| etag(m) == tag.trim_matches('"'));
        let Some(md) = md else {
            return Err(code(
                S3ErrorCode::InvalidPart,
                format!("part {n} was not uploaded with ETag {tag}"),
            ));
        };
        if i + 1 < parts.len() && md.len() < limits.min_part {
            return Err(code(
                S3ErrorCode::EntityTooSmall,
                format!(
                    "part {n} is {} bytes; all but the last must be at least {}",
                    md.len(),
                    limits.min_part
                ),
            ));
        }
        total += md.len();
        files.push(p);
    }
    if total > limits.max_object {
        return Err(BodyError::TooLarge {
            limit: limits.max_object,
        }
        .to_s3());
    }
    Ok(files)
}

/// Completes an upload: the object is the chosen parts, in order; its ETag.
pub fn complete(
    (c, r): (&Cluster, Option<&dyn super::remote::Remote>),
    (id, bucket, key): (&str, &str, &str),
    parts: &[(i32, String)],
    limits: &Limits,
) -> S3Result<String> {
    let dir = find(c, id, bucket, key)?;
    let files = chosen_parts(&dir, parts, limits)?;
    let owner = c
        .current
        .owner_key(partition_of(bucket.as_bytes(), key.as_bytes()));
    let tag = if c.disk_path(&owner).is_some() {
        c.put_with(bucket, key.as_bytes(), &mut |f| {
            for p in &files {
                // std's copy uses copy_file_range: in the kernel, a reflink where the fs can.
                std::io::copy(&mut std::fs::File::open(p)?, f)?;
            }
            Ok(())
        })
        .map_err(|e| s3(&e))?;
        let tag = super::object::open(c, bucket, key).map_err(|e| s3(&e))?;
        tag.map(|(_, m)| etag(&m)).unwrap_or_default()
    } else {
        // The owner is another node: the parts stream to it like one PUT's body.
        let mut pull = parts_reader(files);
        let want = Want {
            limit: u64::MAX,
            expected: None,
            digests: None,
        };
        super::route::put(c, r, (bucket, key), &mut pull, want).map_err(|e| s3(&e))?
    };
    remove(&dir).map_err(|e| s3(&e))?;
    Ok(tag)
}

/// The parts' bytes in order, 1 MiB at a time.
fn parts_reader(files: Vec<PathBuf>) -> impl FnMut() -> Result<Option<bytes::Bytes>, BodyError> {
    let mut files = files.into_iter();
    let mut cur: Option<std::fs::File> = None;
    move || {
        loop {
            if cur.is_none() {
                let Some(p) = files.next() else {
                    return Ok(None);
                };
                let f = std::fs::File::open(&p)
                    .map_err(|e| BodyError::Read(format!("{}: {e}", p.display())))?;
                cur = Some(f);
            }
            let mut buf = vec![0u8; 1 << 20];
            let f = cur.as_mut().expect("opened above");
            match std::io::Read::read(f, &mut buf) {
                Ok(0) => cur = None,
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(Some(bytes::Bytes::from(buf)));
                }
                Err(e) => return Err(BodyError::Read(e.to_string())),
            }
        }
    }
}

pub fn abort(c: &Cluster, (id, bucket, key): (&str, &str, &str)) -> S3Result<()> {
    let dir = find(c, id, bucket, key)?;
    remove(&dir).map_err(|e| s3(&e))
}

/// Removes a staging directory (durably: a crash cannot bring the upload back).
fn remove(dir: &Path) -> Result<(), Error> {
    std::fs::remove_dir_all(dir).map_err(|e| Error::os("remove upload", dir, e))?;
    meta::fsync_dir(meta::parent_dir(dir))
}

/// S3Error for a part list that s3s parsed but that misses numbers or ETags.
pub fn incomplete_part_list() -> S3Error {
    code(
        S3ErrorCode::MalformedXML,
        "every part needs a PartNumber and an ETag",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids_are_checked_before_any_path_is_made_of_them() {
        assert!(valid_id(&new_id()));
        assert_ne!(new_id(), new_id());
        for bad in ["", "../../etc", "0123456789abcdef0123456789abcdeF", "x"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn part_lists_are_checked_for_order_etags_and_sizes() {
        let d = tempfile::tempdir().unwrap();
        let lim = Limits {
            min_part: 4,
            max_object: 10,
            ..Limits::default()
        };
        let mut tags = vec![];
        for (n, data) in [(1, &b"aaaa"[..]), (2, b"bb"), (3, b"cccc")] {
            let p = write_durable(d.path(), &part_name(n), &mut |f| {
                std::io::Write::write_all(f, data)
            })
            .unwrap();
            tags.push((n, format!("\"{}\"", etag(&std::fs::metadata(p).unwrap()))));
        }
        let ok = chosen_parts(d.path(), &[tags[0].clone(), tags[1].clone()], &lim).unwrap();
        assert_eq!(ok.len(), 2);
        let err = |parts: &[(i32, String)], lim: &Limits| {
            chosen_parts(d.path(), parts, lim)
                .unwrap_err()
                .code()
                .clone()
        };
        assert_eq!(
            err(&[tags[1].clone(), tags[0].clone()], &lim),
            S3ErrorCode::InvalidPartOrder
        );
        assert_eq!(
            err(&[tags[1].clone(), tags[2].clone()], &lim),
            S3ErrorCode::EntityTooSmall
        );
        assert_eq!(
            err(&[(1, "\"nope\"".into())], &lim),
            S3ErrorCode::InvalidPart
        );
        assert_eq!(
            err(&[(4, tags[0].1.clone())], &lim),
            S3ErrorCode::InvalidPart
        );
        assert_eq!(err(&[], &lim), S3ErrorCode::MalformedXML);
        assert_eq!(
            err(&[(0, tags[0].1.clone())], &lim),
            S3ErrorCode::InvalidArgument
        );
        let small = Limits {
            max_object: 5,
            ..lim.clone()
        };
        assert_eq!(
            err(&[tags[0].clone(), tags[1].clone()], &small),
            S3ErrorCode::EntityTooLarge
        );
    }
}
