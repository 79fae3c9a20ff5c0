//! The S3 operations (s3s's `S3` trait) on ferry's object layer. Each handler checks its
//! request, then runs the file work on a blocking thread of the endpoint's runtime: the async
//! side only parses, waits and streams.

use super::body::{FileStream, puller};
use super::digest::{Claims, Digests};
use super::errors::{code, no_such_bucket, no_such_key, s3};
use super::limits::{Limits, MAX_KEYS};
use super::object::Want;
use super::remote::{ClusterCell, Fetched, Remote, Stat};
use super::route::{self, Got};
use super::{bucket, list, multipart, object};
use crate::cluster::store::Cluster;
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};
use std::sync::Arc;

pub struct Ferry {
    /// The object layer served now (swapped when the cluster's topology changes).
    pub cell: Arc<ClusterCell>,
    /// Other nodes' objects (None: every disk is local).
    pub remote: Option<Arc<dyn Remote>>,
    pub limits: Limits,
}

/// What one request works with: the object layer as it was when the request came in.
#[derive(Clone)]
struct Backend {
    c: Arc<Cluster>,
    r: Option<Arc<dyn Remote>>,
}

impl Backend {
    fn r(&self) -> Option<&dyn Remote> {
        self.r.as_deref()
    }
}

impl Ferry {
    fn backend(&self) -> S3Result<Backend> {
        let c = self.cell.get().ok_or_else(|| {
            code(
                S3ErrorCode::ServiceUnavailable,
                "no cluster topology yet (ferry cluster apply)",
            )
        })?;
        Ok(Backend {
            c,
            r: self.remote.clone(),
        })
    }
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> S3Result<T> + Send + 'static,
) -> S3Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(code(
            S3ErrorCode::InternalError,
            format!("worker thread: {e}"),
        )),
    }
}

fn need_bucket(c: &Backend, b: &str) -> S3Result<()> {
    if route::bucket_exists(&c.c, c.r(), b).map_err(|e| s3(&e))? {
        Ok(())
    } else {
        Err(no_such_bucket(b))
    }
}

/// A body's announced length, refused at once when over `limit`.
fn announced(len: Option<i64>, limit: u64) -> S3Result<Option<u64>> {
    match len {
        Some(n) if n < 0 => Err(code(
            S3ErrorCode::InvalidArgument,
            "negative Content-Length",
        )),
        Some(n) if n as u64 > limit => Err(super::errors::BodyError::TooLarge { limit }.to_s3()),
        n => Ok(n.map(|n| n as u64)),
    }
}

/// The digests a PUT or UploadPart input claims (the same fields on both).
macro_rules! claims {
    ($i:expr, $trailers:expr) => {
        Digests::new(Claims {
            content_md5: $i.content_md5.take(),
            headers: Checksum {
                checksum_crc32: $i.checksum_crc32.take(),
                checksum_crc32c: $i.checksum_crc32c.take(),
                checksum_sha1: $i.checksum_sha1.take(),
                checksum_sha256: $i.checksum_sha256.take(),
                checksum_crc64nvme: $i.checksum_crc64nvme.take(),
                ..Default::default()
            },
            algorithm: $i.checksum_algorithm.take(),
            trailers: $trailers,
        })
    };
}

fn local_stat(md: &std::fs::Metadata) -> Stat {
    Stat {
        size: md.len(),
        modified: md.modified().unwrap_or(std::time::UNIX_EPOCH),
        etag: object::etag(md),
    }
}

fn strong(tag: String) -> Option<ETag> {
    Some(ETag::Strong(tag))
}

fn ok<T>(output: T) -> S3Result<S3Response<T>> {
    Ok(S3Response::new(output))
}

#[async_trait::async_trait]
impl S3 for Ferry {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let (c, b) = (self.backend()?, req.input.bucket);
        let name = b.clone();
        let created =
            blocking(move || route::bucket_create(&c.c, c.r(), &b).map_err(|e| s3(&e))).await?;
        if !created {
            return Err(code(
                S3ErrorCode::BucketAlreadyOwnedByYou,
                format!("bucket {name} exists"),
            ));
        }
        ok(CreateBucketOutput {
            location: Some(format!("/{name}")),
        })
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let (c, b) = (self.backend()?, req.input.bucket);
        blocking(
            move || match route::bucket_delete(&c.c, c.r(), &b).map_err(|e| s3(&e))? {
                Ok(()) => Ok(()),
                Err(bucket::DeleteRefused::NoSuchBucket) => Err(no_such_bucket(&b)),
                Err(bucket::DeleteRefused::NotEmpty) => Err(code(
                    S3ErrorCode::BucketNotEmpty,
                    format!("The bucket you tried to delete is not empty: {b}"),
                )),
            },
        )
        .await?;
        ok(DeleteBucketOutput::default())
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let (c, b) = (self.backend()?, req.input.bucket);
        blocking(move || need_bucket(&c, &b)).await?;
        ok(HeadBucketOutput::default())
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let (c, b) = (self.backend()?, req.input.bucket);
        blocking(move || need_bucket(&c, &b)).await?;
        ok(GetBucketLocationOutput::default())
    }

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let c = self.backend()?;
        let all = blocking(move || Ok(route::buckets(&c.c, c.r()))).await?;
        let buckets = all
            .into_iter()
            .map(|(name, t)| Bucket {
                name: Some(name),
                creation_date: Some(t.into()),
                ..Default::default()
            })
            .collect();
        ok(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        })
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let mut i = req.input;
        let expected = announced(i.content_length, self.limits.max_object)?;
        let want = Want {
            limit: self.limits.max_object,
            expected,
            digests: Some(claims!(i, req.trailing_headers)),
        };
        let c = self.backend()?;
        let mut pull = puller(tokio::runtime::Handle::current(), i.body, self.limits.idle);
        let (b, k) = (i.bucket, i.key);
        let tag = blocking(move || {
            need_bucket(&c, &b)?;
            route::put(&c.c, c.r(), (&b, &k), &mut pull, want).map_err(|e| s3(&e))
        })
        .await?;
        ok(PutObjectOutput {
            e_tag: strong(tag),
            ..Default::default()
        })
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let i = req.input;
        if i.part_number.is_some() {
            return Err(code(S3ErrorCode::NotImplemented, "GetObject by partNumber"));
        }
        let (c, b, k) = (self.backend()?, i.bucket, i.key);
        let want = i.range;
        let got = blocking(move || {
            need_bucket(&c, &b)?;
            route::get(&c.c, c.r(), (&b, &k), want.as_ref(), true)
                .map_err(|e| s3(&e))?
                .ok_or_else(|| no_such_key(&b, &k))
        })
        .await?;
        let (stat, range, body) = match got {
            Got::Local(f, md) => {
                let range = match &want {
                    None => 0..md.len(),
                    Some(r) => r.check(md.len()).map_err(S3Error::from)?,
                };
                let body = FileStream::spawn(f, range.clone());
                (local_stat(&md), range, body)
            }
            Got::Remote(Fetched::Found { stat, range, body }) => {
                let n = range.end - range.start;
                let chunks = body.ok_or_else(|| code(S3ErrorCode::InternalError, "no body"))?;
                (stat, range, FileStream::from_chunks(chunks, n))
            }
            Got::Remote(Fetched::BadRange { size }) => {
                let r = want.ok_or_else(|| code(S3ErrorCode::InternalError, "range"))?;
                r.check(size).map_err(S3Error::from)?;
                return Err(code(S3ErrorCode::InvalidRange, "range not satisfiable"));
            }
            Got::Remote(Fetched::Missing | Fetched::Deleted { .. }) => {
                return Err(code(S3ErrorCode::NoSuchKey, "missing"));
            }
        };
        let len = stat.size;
        let content_range = want.is_some().then(|| {
            format!(
                "bytes {}-{}/{len}",
                range.start,
                range.end.saturating_sub(1)
            )
        });
        let n = range.end - range.start;
        ok(GetObjectOutput {
            body: Some(StreamingBlob::new(body)),
            content_length: Some(n as i64),
            content_range,
            accept_ranges: Some("bytes".into()),
            e_tag: strong(stat.etag),
            last_modified: Some(Timestamp::from(stat.modified)),
            content_type: Some(
                "application/octet-stream"
                    .parse()
                    .expect("a valid mime type"),
            ),
            ..Default::default()
        })
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let (c, b, k) = (self.backend()?, req.input.bucket, req.input.key);
        let got = blocking(move || {
            need_bucket(&c, &b)?;
            route::get(&c.c, c.r(), (&b, &k), None, false)
                .map_err(|e| s3(&e))?
                .ok_or_else(|| no_such_key(&b, &k))
        })
        .await?;
        let stat = match got {
            Got::Local(_, md) => local_stat(&md),
            Got::Remote(Fetched::Found { stat, .. }) => stat,
            Got::Remote(_) => return Err(code(S3ErrorCode::NoSuchKey, "missing")),
        };
        ok(HeadObjectOutput {
            content_length: Some(stat.size as i64),
            accept_ranges: Some("bytes".into()),
            e_tag: strong(stat.etag),
            last_modified: Some(Timestamp::from(stat.modified)),
            content_type: Some(
                "application/octet-stream"
                    .parse()
                    .expect("a valid mime type"),
            ),
            ..Default::default()
        })
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let (c, b, k) = (self.backend()?, req.input.bucket, req.input.key);
        blocking(move || {
            need_bucket(&c, &b)?;
            route::delete(&c.c, c.r(), &b, &k)
                .map(|_| ())
                .map_err(|e| s3(&e))
        })
        .await?;
        ok(DeleteObjectOutput::default())
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let (c, b) = (self.backend()?, req.input.bucket);
        let quiet = req.input.delete.quiet.unwrap_or(false);
        let keys: Vec<String> = req
            .input
            .delete
            .objects
            .into_iter()
            .map(|o| o.key)
            .collect();
        if keys.len() > 1000 {
            return Err(code(
                S3ErrorCode::MalformedXML,
                "at most 1000 keys per DeleteObjects",
            ));
        }
        let (deleted, errors) = blocking(move || {
            need_bucket(&c, &b)?;
            let (mut deleted, mut errors) = (vec![], vec![]);
            for k in keys {
                match route::delete(&c.c, c.r(), &b, &k) {
                    Ok(_) => deleted.push(DeletedObject {
                        key: Some(k),
                        ..Default::default()
                    }),
                    Err(e) => {
                        let e = s3(&e);
                        errors.push(Error {
                            code: Some(e.code().as_str().to_string()),
                            message: e.message().map(str::to_string),
                            key: Some(k),
                            ..Default::default()
                        });
                    }
                }
            }
            Ok((deleted, errors))
        })
        .await?;
        let deleted = (!quiet).then_some(deleted);
        ok(DeleteObjectsOutput {
            deleted,
            errors: Some(errors),
            ..Default::default()
        })
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let i = req.input;
        let max_keys = match i.max_keys {
            Some(n) if n < 0 => {
                return Err(code(S3ErrorCode::InvalidArgument, "max-keys must be >= 0"));
            }
            Some(n) => n.min(MAX_KEYS),
            None => MAX_KEYS,
        };
        let token = match &i.continuation_token {
            Some(t) => Some(list::decode_token(t).ok_or_else(|| {
                code(
                    S3ErrorCode::InvalidArgument,
                    "The continuation token provided is incorrect",
                )
            })?),
            None => None,
        };
        let after = token.or_else(|| i.start_after.clone());
        let (c, b) = (self.backend()?, i.bucket.clone());
        let (prefix, delim) = (i.prefix.clone().unwrap_or_default(), i.delimiter.clone());
        let page = blocking(move || {
            need_bucket(&c, &b)?;
            let all =
                route::list(&c.c, c.r(), &b, &prefix, after.as_deref()).map_err(|e| s3(&e))?;
            let q = list::Query {
                prefix: &prefix,
                delimiter: delim.as_deref(),
                after: after.as_deref(),
                max_keys: max_keys as usize,
            };
            Ok(list::page(&all, &q))
        })
        .await?;
        ok(super::listing::output(i, page, max_keys))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let (c, b, k) = (self.backend()?, req.input.bucket, req.input.key);
        let (bb, kk) = (b.clone(), k.clone());
        let id = blocking(move || {
            need_bucket(&c, &b)?;
            multipart::create(&c.c, &b, &k)
        })
        .await?;
        ok(CreateMultipartUploadOutput {
            bucket: Some(bb),
            key: Some(kk),
            upload_id: Some(id),
            ..Default::default()
        })
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let mut i = req.input;
        let expected = announced(i.content_length, self.limits.max_part)?;
        let want = Want {
            limit: self.limits.max_part,
            expected,
            digests: Some(claims!(i, req.trailing_headers)),
        };
        let c = self.backend()?;
        let mut pull = puller(tokio::runtime::Handle::current(), i.body, self.limits.idle);
        let (id, b, k, n) = (i.upload_id, i.bucket, i.key, i.part_number);
        let tag = blocking(move || {
            need_bucket(&c, &b)?;
            multipart::put_part(&c.c, (&id, &b, &k), n, &mut pull, want)
        })
        .await?;
        ok(UploadPartOutput {
            e_tag: strong(tag),
            ..Default::default()
        })
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let i = req.input;
        let parts = i.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        let parts = parts
            .into_iter()
            .map(|p| Some((p.part_number?, p.e_tag?.value().to_string())))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(multipart::incomplete_part_list)?;
        let (c, limits) = (self.backend()?, self.limits.clone());
        let (id, b, k) = (i.upload_id, i.bucket, i.key);
        let (bb, kk) = (b.clone(), k.clone());
        let tag = blocking(move || {
            need_bucket(&c, &b)?;
            multipart::complete((&c.c, c.r()), (&id, &b, &k), &parts, &limits)
        })
        .await?;
        ok(CompleteMultipartUploadOutput {
            location: Some(format!("/{bb}/{kk}")),
            bucket: Some(bb),
            key: Some(kk),
            e_tag: strong(tag),
            ..Default::default()
        })
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let (c, i) = (self.backend()?, req.input);
        blocking(move || {
            need_bucket(&c, &i.bucket)?;
            multipart::abort(&c.c, (&i.upload_id, &i.bucket, &i.key))
        })
        .await?;
        ok(AbortMultipartUploadOutput::default())
    }
}
