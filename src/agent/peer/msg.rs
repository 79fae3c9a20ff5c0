//! The messages of the peer protocol, one per frame (`net::frame`: type byte, u32 length,
//! payload of at most `frame::MAX_PAYLOAD`), little-endian integers and u32-prefixed strings.
//!
//! A connection starts with Hello (client: its version and node name) and Welcome (server:
//! the same); then the client sends requests one at a time, each answered before the next:
//! - `Get` → `Missing` | `Deleted` (a tombstone there: the key was deleted then; older copies
//!   elsewhere are stale) | `BadRange` | `Found` (+ `Data`… + `End` when the body is asked for)
//! - `Put` + `Data`… + `End` → `Done` (durable) | `Error`
//! - `Migrate` + `Data`… + `End` → `Done` (stored, durable) | `Superseded` | `Error`
//! - `MigrateMany` (at most `MAX_MANY` headers) + for each in turn `Data`… + `End` →
//!   `Landed` (per object: stored, superseded or its error; all made durable together) |
//!   `Error` (none named)
//! - `Delete` → `Done` (flag: a copy existed); with `tombstone` (a client's delete, sent to
//!   the owner's node) the node records the key's tombstone too, and hands it (`Bury`) to
//!   the key's owner under the layer it routes by when that is another node (the sender
//!   routed by an older one) before it answers
//! - `Bury` → `Kept` (a flag per tombstone: kept, or a newer copy won): at most `MAX_BURY`
//!   tombstones another node forwards (the keys' owner now), each with the delete's time and
//!   generation; copies no newer than it go
//! - `List`, `Buckets` → `Entries`… + `Done`; `Bucket` → `Done` (flag); a List's entries
//!   include the node's tombstones under the prefix (`deleted`: mtime is the delete's time)
//!
//! `End` carries the byte count and xxh3 of the data frames before it, checked by the side
//! that receives them (the hash comes last, so a proxy streams a body it has not seen yet).

use crate::net::frame::{self, Cursor, Frame, ProtoError, put_bytes};
use crate::s3::remote::Burial;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bumped on any change to these messages; Hello and Welcome keep their layout.
/// 2: `Delete.tombstone`, `Deleted` (a Get of a key with a tombstone), `Entry.deleted`;
/// Migrate honours tombstones (a version 1 node would bring a deleted key back).
/// 3: `Bury` (tombstones follow their key's owner across generations).
/// 4: `Bury` carries up to `MAX_BURY` tombstones, answered by `Kept`.
/// 5: `MigrateMany`, answered by `Landed`.
pub const VERSION: u16 = 5;
pub const MAGIC: &[u8; 8] = b"FERRYPER";

/// Why a request failed, as the far side classed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The handshake was refused (version, name, certificate); the connection closes.
    Refused = 1,
    /// Too many requests in flight there: try again later.
    Busy = 2,
    /// The request itself is wrong (bad name, a disk that node does not serve).
    Usage = 3,
    /// The operation failed there (errno when the kernel gave one).
    Failed = 4,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Range {
    Int { first: u64, last: Option<u64> },
    Suffix { length: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub mtime: SystemTime,
    pub etag: String,
    /// A tombstone, not an object: deleted at `mtime`.
    pub deleted: bool,
}

/// A migrated copy on its way: `bucket/key` for the receiver's disk `disk` (`set/disk`),
/// from the sender's disk `from`, `size` bytes with the source's `mtime`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migrate {
    pub disk: String,
    pub from: String,
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub mtime: SystemTime,
}

impl Migrate {
    fn put(&self, p: &mut Vec<u8>) {
        for s in [&self.disk, &self.from, &self.bucket, &self.key] {
            put_str(p, s);
        }
        p.extend_from_slice(&self.size.to_le_bytes());
        put_time(p, self.mtime);
    }

    fn get(c: &mut Cursor) -> Result<Migrate, ProtoError> {
        Ok(Migrate {
            disk: get_str(c, "disk")?,
            from: get_str(c, "from")?,
            bucket: get_str(c, "bucket")?,
            key: get_str(c, "key")?,
            size: c.u64("size")?,
            mtime: get_time(c, "mtime")?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Req {
    Get {
        bucket: String,
        key: String,
        range: Option<Range>,
        body: bool,
    },
    Put {
        disk: String,
        bucket: String,
        key: String,
        size: Option<u64>,
    },
    Migrate(Migrate),
    /// Several small migrated copies in one request: their bodies follow in this order.
    MigrateMany(Vec<Migrate>),
    Delete {
        bucket: String,
        key: String,
        tombstone: bool,
    },
    Bury(Vec<Burial>),
    List {
        bucket: String,
        prefix: String,
        after: Option<String>,
    },
    Bucket {
        op: u8,
        bucket: String,
    },
    Buckets,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    Hello {
        version: u16,
        node: String,
    },
    Welcome {
        version: u16,
        node: String,
    },
    Error {
        code: Code,
        errno: i32,
        msg: String,
    },
    Req(Req),
    Missing,
    Deleted {
        at: SystemTime,
    },
    BadRange {
        size: u64,
    },
    Found {
        size: u64,
        mtime: SystemTime,
        etag: String,
        start: u64,
        end: u64,
    },
    Data(Vec<u8>),
    End {
        len: u64,
        hash: u64,
    },
    Done {
        flag: bool,
        mtime: SystemTime,
        etag: String,
    },
    Superseded,
    Entries(Vec<Entry>),
    /// The answer to a Bury: per tombstone, whether it was kept.
    Kept(Vec<bool>),
    /// The answer to a MigrateMany: what became of each copy, in its order.
    Landed(Vec<Landed>),
}

/// What became of one copy of a MigrateMany.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Landed {
    /// Durable under its name, location and forwarding entry recorded.
    Stored,
    /// A newer write or a delete of the key is there: the copy was dropped.
    Superseded,
    /// Not stored, for this reason (the other copies are not affected).
    Failed { code: Code, errno: i32, msg: String },
}

/// Copies in one MigrateMany at most (a node refuses more).
pub const MAX_MANY: usize = 64;

const T_HELLO: u8 = 1;
const T_WELCOME: u8 = 2;
const T_ERROR: u8 = 3;
const T_GET: u8 = 10;
const T_PUT: u8 = 11;
const T_MIGRATE: u8 = 12;
const T_DELETE: u8 = 13;
const T_LIST: u8 = 14;
const T_BUCKET: u8 = 15;
const T_BUCKETS: u8 = 16;
const T_BURY: u8 = 17;
const T_MIGRATE_MANY: u8 = 18;
const T_MISSING: u8 = 20;
const T_BADRANGE: u8 = 21;
const T_FOUND: u8 = 22;
pub const T_DATA: u8 = 23;
const T_END: u8 = 24;
const T_DONE: u8 = 25;
const T_SUPERSEDED: u8 = 26;
const T_ENTRIES: u8 = 27;
const T_DELETED: u8 = 28;
const T_KEPT: u8 = 29;
const T_LANDED: u8 = 30;

/// Frame types this version knows.
pub fn known(t: u8) -> bool {
    matches!(t, 1..=3 | 10..=18 | 20..=30)
}

/// Tombstones in one Bury at most (a node refuses more).
pub const MAX_BURY: usize = 4096;
/// Encoded bytes of the tombstones a sender puts in one Bury at most (well under the frame
/// limit, also with `MAX_BURY` of the longest keys).
pub const BURY_BYTES: usize = 512 * 1024;

/// The encoded size of one tombstone in a Bury.
pub fn burial_len(b: &Burial) -> usize {
    4 + b.bucket.len() + 4 + b.key.len() + 12 + 8
}

/// Bytes of entries put in one Entries frame (well under the frame limit).
pub const ENTRIES_BATCH: usize = 256 * 1024;

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_time(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    out.extend_from_slice(&d.as_secs().to_le_bytes());
    out.extend_from_slice(&d.subsec_nanos().to_le_bytes());
}

fn get_str(c: &mut Cursor, what: &'static str) -> Result<String, ProtoError> {
    String::from_utf8(c.bytes(what)?.to_vec()).map_err(|_| ProtoError::Malformed { what })
}

fn get_time(c: &mut Cursor, what: &'static str) -> Result<SystemTime, ProtoError> {
    let (s, n) = (c.u64(what)?, c.u32(what)?);
    if n >= 1_000_000_000 {
        return Err(ProtoError::Malformed { what });
    }
    Ok(UNIX_EPOCH + Duration::new(s, n))
}

fn put_opt(out: &mut Vec<u8>, v: Option<u64>) {
    out.push(v.is_some() as u8);
    out.extend_from_slice(&v.unwrap_or(0).to_le_bytes());
}

fn get_opt(c: &mut Cursor, what: &'static str) -> Result<Option<u64>, ProtoError> {
    let (some, v) = (c.u8(what)?, c.u64(what)?);
    Ok((some != 0).then_some(v))
}

fn hello(out: &mut Vec<u8>, version: u16, node: &str) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    put_str(out, node);
}

impl Msg {
    /// Appends this message as one frame.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut p = Vec::new();
        let kind = self.payload(&mut p);
        frame::encode(kind, &p, out);
    }

    fn payload(&self, p: &mut Vec<u8>) -> u8 {
        match self {
            Msg::Hello { version, node } => {
                hello(p, *version, node);
                T_HELLO
            }
            Msg::Welcome { version, node } => {
                hello(p, *version, node);
                T_WELCOME
            }
            Msg::Error { code, errno, msg } => {
                put_error(p, *code, *errno, msg);
                T_ERROR
            }
            Msg::Req(r) => r.payload(p),
            Msg::Missing => T_MISSING,
            Msg::Deleted { at } => {
                put_time(p, *at);
                T_DELETED
            }
            Msg::BadRange { size } => {
                p.extend_from_slice(&size.to_le_bytes());
                T_BADRANGE
            }
            Msg::Found {
                size,
                mtime,
                etag,
                start,
                end,
            } => {
                p.extend_from_slice(&size.to_le_bytes());
                put_time(p, *mtime);
                put_str(p, etag);
                p.extend_from_slice(&start.to_le_bytes());
                p.extend_from_slice(&end.to_le_bytes());
                T_FOUND
            }
            Msg::Data(b) => {
                p.extend_from_slice(b);
                T_DATA
            }
            Msg::End { len, hash } => {
                p.extend_from_slice(&len.to_le_bytes());
                p.extend_from_slice(&hash.to_le_bytes());
                T_END
            }
            Msg::Done { flag, mtime, etag } => {
                p.push(*flag as u8);
                put_time(p, *mtime);
                put_str(p, etag);
                T_DONE
            }
            Msg::Superseded => T_SUPERSEDED,
            Msg::Kept(v) => {
                p.extend_from_slice(&(v.len() as u32).to_le_bytes());
                p.extend(v.iter().map(|k| *k as u8));
                T_KEPT
            }
            Msg::Landed(v) => {
                put_landed(p, v);
                T_LANDED
            }
            Msg::Entries(v) => {
                p.extend_from_slice(&(v.len() as u32).to_le_bytes());
                for e in v {
                    put_str(p, &e.name);
                    p.extend_from_slice(&e.size.to_le_bytes());
                    put_time(p, e.mtime);
                    put_str(p, &e.etag);
                    p.push(e.deleted as u8);
                }
                T_ENTRIES
            }
        }
    }

    /// Decodes one frame (of a type `known` accepted).
    pub fn decode(f: &Frame) -> Result<Msg, ProtoError> {
        let mut c = Cursor::new(&f.payload);
        let m = match f.kind {
            T_HELLO | T_WELCOME => {
                if c.take(8, "magic").ok() != Some(&MAGIC[..]) {
                    return Err(ProtoError::NotFerry);
                }
                let version = c.u16("version")?;
                let node = get_str(&mut c, "node")?;
                if f.kind == T_HELLO {
                    Msg::Hello { version, node }
                } else {
                    Msg::Welcome { version, node }
                }
            }
            T_ERROR => {
                let (code, errno, msg) = get_error(&mut c)?;
                Msg::Error { code, errno, msg }
            }
            T_GET..=T_MIGRATE_MANY => Msg::Req(Req::decode(f.kind, &mut c)?),
            T_MISSING => Msg::Missing,
            T_DELETED => Msg::Deleted {
                at: get_time(&mut c, "deleted at")?,
            },
            T_BADRANGE => Msg::BadRange {
                size: c.u64("size")?,
            },
            T_FOUND => Msg::Found {
                size: c.u64("size")?,
                mtime: get_time(&mut c, "mtime")?,
                etag: get_str(&mut c, "etag")?,
                start: c.u64("start")?,
                end: c.u64("end")?,
            },
            T_DATA => Msg::Data(c.rest().to_vec()),
            T_END => Msg::End {
                len: c.u64("length")?,
                hash: c.u64("hash")?,
            },
            T_DONE => Msg::Done {
                flag: c.u8("flag")? != 0,
                mtime: get_time(&mut c, "mtime")?,
                etag: get_str(&mut c, "etag")?,
            },
            T_SUPERSEDED => Msg::Superseded,
            T_ENTRIES => Msg::Entries(entries(&mut c)?),
            T_KEPT => {
                let n = c.u32("count")? as usize;
                Msg::Kept(c.take(n, "kept")?.iter().map(|b| *b != 0).collect())
            }
            T_LANDED => Msg::Landed(landed(&mut c)?),
            t => return Err(ProtoError::UnknownType(t)),
        };
        c.end("trailing bytes")?;
        Ok(m)
    }
}

fn put_landed(p: &mut Vec<u8>, v: &[Landed]) {
    p.extend_from_slice(&(v.len() as u32).to_le_bytes());
    for l in v {
        match l {
            Landed::Stored => p.push(0),
            Landed::Superseded => p.push(1),
            Landed::Failed { code, errno, msg } => {
                p.push(2);
                put_error(p, *code, *errno, msg);
            }
        }
    }
}

fn put_error(p: &mut Vec<u8>, code: Code, errno: i32, msg: &str) {
    p.push(code as u8);
    p.extend_from_slice(&errno.to_le_bytes());
    put_str(p, msg);
}

fn get_error(c: &mut Cursor) -> Result<(Code, i32, String), ProtoError> {
    let code = match c.u8("code")? {
        1 => Code::Refused,
        2 => Code::Busy,
        3 => Code::Usage,
        _ => Code::Failed,
    };
    let errno = c.u32("errno")? as i32;
    Ok((code, errno, get_str(c, "message")?))
}

/// The outcomes of a Landed (at most `MAX_MANY`: the client checks the count).
fn landed(c: &mut Cursor) -> Result<Vec<Landed>, ProtoError> {
    let n = c.u32("count")? as usize;
    if n > MAX_MANY {
        return Err(ProtoError::Malformed {
            what: "landed count",
        });
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(match c.u8("landed")? {
            0 => Landed::Stored,
            1 => Landed::Superseded,
            2 => {
                let (code, errno, msg) = get_error(c)?;
                Landed::Failed { code, errno, msg }
            }
            _ => return Err(ProtoError::Malformed { what: "landed" }),
        });
    }
    Ok(v)
}

fn entries(c: &mut Cursor) -> Result<Vec<Entry>, ProtoError> {
    let n = c.u32("count")? as usize;
    let mut v = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        v.push(Entry {
            name: get_str(c, "name")?,
            size: c.u64("size")?,
            mtime: get_time(c, "mtime")?,
            etag: get_str(c, "etag")?,
            deleted: c.u8("deleted")? != 0,
        });
    }
    Ok(v)
}

fn put_burials(p: &mut Vec<u8>, v: &[Burial]) {
    p.extend_from_slice(&(v.len() as u32).to_le_bytes());
    for b in v {
        put_str(p, &b.bucket);
        put_str(p, &b.key);
        put_time(p, b.at);
        p.extend_from_slice(&b.generation.to_le_bytes());
    }
}

/// The tombstones of a Bury (as many as the frame holds: the server bounds the count).
fn burials(c: &mut Cursor) -> Result<Vec<Burial>, ProtoError> {
    let n = c.u32("count")? as usize;
    let mut v = Vec::with_capacity(n.min(MAX_BURY));
    for _ in 0..n {
        v.push(Burial {
            bucket: get_str(c, "bucket")?,
            key: get_str(c, "key")?,
            at: get_time(c, "deleted at")?,
            generation: c.u64("generation")?,
        });
    }
    Ok(v)
}

impl Req {
    fn payload(&self, p: &mut Vec<u8>) -> u8 {
        match self {
            Req::Get {
                bucket,
                key,
                range,
                body,
            } => {
                put_str(p, bucket);
                put_str(p, key);
                let (k, a, b) = match range {
                    None => (0, 0, None),
                    Some(Range::Int { first, last }) => (1, *first, *last),
                    Some(Range::Suffix { length }) => (2, *length, None),
                };
                p.push(k);
                p.extend_from_slice(&a.to_le_bytes());
                put_opt(p, b);
                p.push(*body as u8);
                T_GET
            }
            Req::Put {
                disk,
                bucket,
                key,
                size,
            } => {
                put_str(p, disk);
                put_str(p, bucket);
                put_str(p, key);
                put_opt(p, *size);
                T_PUT
            }
            Req::Migrate(m) => {
                m.put(p);
                T_MIGRATE
            }
            Req::MigrateMany(v) => {
                p.extend_from_slice(&(v.len() as u32).to_le_bytes());
                v.iter().for_each(|m| m.put(p));
                T_MIGRATE_MANY
            }
            Req::Delete {
                bucket,
                key,
                tombstone,
            } => {
                put_str(p, bucket);
                put_str(p, key);
                p.push(*tombstone as u8);
                T_DELETE
            }
            Req::Bury(v) => {
                put_burials(p, v);
                T_BURY
            }
            Req::List {
                bucket,
                prefix,
                after,
            } => {
                put_str(p, bucket);
                put_str(p, prefix);
                p.push(after.is_some() as u8);
                put_str(p, after.as_deref().unwrap_or(""));
                T_LIST
            }
            Req::Bucket { op, bucket } => {
                p.push(*op);
                put_str(p, bucket);
                T_BUCKET
            }
            Req::Buckets => T_BUCKETS,
        }
    }

    fn decode(kind: u8, c: &mut Cursor) -> Result<Req, ProtoError> {
        Ok(match kind {
            T_GET => {
                let (bucket, key) = (get_str(c, "bucket")?, get_str(c, "key")?);
                let (k, a, b) = (c.u8("range")?, c.u64("range")?, get_opt(c, "range")?);
                let range = match k {
                    0 => None,
                    1 => Some(Range::Int { first: a, last: b }),
                    2 => Some(Range::Suffix { length: a }),
                    _ => return Err(ProtoError::Malformed { what: "range" }),
                };
                let body = c.u8("body")? != 0;
                Req::Get {
                    bucket,
                    key,
                    range,
                    body,
                }
            }
            T_PUT => Req::Put {
                disk: get_str(c, "disk")?,
                bucket: get_str(c, "bucket")?,
                key: get_str(c, "key")?,
                size: get_opt(c, "size")?,
            },
            T_MIGRATE => Req::Migrate(Migrate::get(c)?),
            T_MIGRATE_MANY => {
                let n = c.u32("count")? as usize;
                if n == 0 || n > MAX_MANY {
                    return Err(ProtoError::Malformed {
                        what: "migrate count",
                    });
                }
                Req::MigrateMany((0..n).map(|_| Migrate::get(c)).collect::<Result<_, _>>()?)
            }
            T_DELETE => Req::Delete {
                bucket: get_str(c, "bucket")?,
                key: get_str(c, "key")?,
                tombstone: c.u8("tombstone")? != 0,
            },
            T_BURY => Req::Bury(burials(c)?),
            T_LIST => {
                let (bucket, prefix) = (get_str(c, "bucket")?, get_str(c, "prefix")?);
                let some = c.u8("after")? != 0;
                let after = get_str(c, "after")?;
                Req::List {
                    bucket,
                    prefix,
                    after: some.then_some(after),
                }
            }
            T_BUCKET => Req::Bucket {
                op: c.u8("op")?,
                bucket: get_str(c, "bucket")?,
            },
            _ => Req::Buckets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::frame::Decoder;

    /// One message of each kind (Entries with an object and a tombstone).
    fn samples() -> Vec<Msg> {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let e = Entry {
            name: "a/b".into(),
            size: 3,
            mtime: t,
            etag: "x".into(),
            deleted: false,
        };
        let tomb = Entry {
            deleted: true,
            ..e.clone()
        };
        vec![
            Msg::Hello {
                version: VERSION,
                node: "n1".into(),
            },
            Msg::Error {
                code: Code::Busy,
                errno: 28,
                msg: "full".into(),
            },
            Msg::Req(Req::Get {
                bucket: "b".into(),
                key: "k".into(),
                range: Some(Range::Int {
                    first: 3,
                    last: None,
                }),
                body: true,
            }),
            Msg::Req(Req::Migrate(head("s/d", "k", 9, t))),
            Msg::Req(Req::Delete {
                bucket: "b".into(),
                key: "k".into(),
                tombstone: true,
            }),
            Msg::Req(Req::Bury(vec![
                Burial {
                    bucket: "b".into(),
                    key: "k".into(),
                    at: t,
                    generation: 7,
                },
                Burial {
                    bucket: "c".into(),
                    key: "l/m".into(),
                    at: t + Duration::from_secs(1),
                    generation: 8,
                },
            ])),
            Msg::Kept(vec![true, false, true]),
            Msg::Req(Req::List {
                bucket: "b".into(),
                prefix: "p/".into(),
                after: Some("p/a".into()),
            }),
            Msg::Found {
                size: 10,
                mtime: t,
                etag: "e".into(),
                start: 2,
                end: 5,
            },
            Msg::Data(vec![1, 2, 3]),
            Msg::End { len: 3, hash: 7 },
            Msg::Entries(vec![e.clone(), tomb, e]),
            Msg::Superseded,
            Msg::Deleted { at: t },
        ]
        .into_iter()
        .chain(batch_samples(t))
        .collect()
    }

    /// A migration's header to `disk` of bucket b's `key`, from s/e.
    fn head(disk: &str, key: &str, size: u64, t: SystemTime) -> Migrate {
        Migrate {
            disk: disk.into(),
            from: "s/e".into(),
            bucket: "b".into(),
            key: key.into(),
            size,
            mtime: t,
        }
    }

    /// A MigrateMany and a Landed of each outcome.
    fn batch_samples(t: SystemTime) -> Vec<Msg> {
        vec![
            Msg::Req(Req::MigrateMany(vec![
                head("s/d", "k", 9, t),
                head("s/f", "l/m", 0, t),
            ])),
            Msg::Landed(vec![
                Landed::Stored,
                Landed::Failed {
                    code: Code::Failed,
                    errno: 28,
                    msg: "full".into(),
                },
                Landed::Superseded,
            ]),
        ]
    }

    #[test]
    fn every_message_round_trips_and_garbage_is_an_error() {
        let all = samples();
        let mut wire = Vec::new();
        all.iter().for_each(|m| m.encode(&mut wire));
        let mut d = Decoder::new();
        d.push(&wire);
        for m in &all {
            let f = d.next_frame(known).unwrap().unwrap();
            assert_eq!(&Msg::decode(&f).unwrap(), m);
        }
        let bad = Frame {
            kind: T_FOUND,
            payload: vec![1, 2],
        };
        assert!(Msg::decode(&bad).is_err());
        let not_ferry = Frame {
            kind: T_HELLO,
            payload: b"HTTP/1.1 200".to_vec(),
        };
        assert_eq!(Msg::decode(&not_ferry), Err(ProtoError::NotFerry));
        assert!(!known(9) && !known(19) && !known(31) && !known(200));
        let empty = Frame {
            kind: T_MIGRATE_MANY,
            payload: 0u32.to_le_bytes().to_vec(),
        };
        assert!(Msg::decode(&empty).is_err(), "a MigrateMany of nothing");
    }

    /// A MigrateMany of `MAX_MANY` headers of the longest buckets and keys fits a frame, and
    /// the rebalance's batches are within `MAX_MANY`.
    #[test]
    fn a_full_migrate_many_fits_a_frame() {
        let long = Migrate {
            disk: "d".repeat(128),
            from: "f".repeat(128),
            bucket: "b".repeat(255),
            key: "k".repeat(crate::cluster::store::MAX_KEY_LEN),
            size: u64::MAX,
            mtime: UNIX_EPOCH,
        };
        let mut out = Vec::new();
        Msg::Req(Req::MigrateMany(vec![long; MAX_MANY])).encode(&mut out);
        assert!(
            out.len() - frame::HEADER <= frame::MAX_PAYLOAD,
            "{}",
            out.len()
        );
        const { assert!(crate::cluster::rebalance::MANY <= MAX_MANY) };
    }

    /// A Bury of `MAX_BURY` tombstones of the longest keys, cut at `BURY_BYTES`, fits a
    /// frame; `burial_len` is what each one takes.
    #[test]
    fn a_full_bury_fits_a_frame() {
        let long = Burial {
            bucket: "b".repeat(63),
            key: "k".repeat(crate::cluster::store::MAX_KEY_LEN),
            at: UNIX_EPOCH,
            generation: 1,
        };
        let mut one = Vec::new();
        Msg::Req(Req::Bury(vec![long.clone()])).encode(&mut one);
        let empty_len = {
            let mut e = Vec::new();
            Msg::Req(Req::Bury(vec![])).encode(&mut e);
            e.len()
        };
        assert_eq!(one.len() - empty_len, burial_len(&long));
        assert!(burial_len(&long) <= BURY_BYTES);
        assert!(empty_len - frame::HEADER + BURY_BYTES <= frame::MAX_PAYLOAD);
    }
}
