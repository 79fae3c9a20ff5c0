//! The messages of protocol version [`VERSION`], one per frame, and their payload encoding
//! (little-endian integers, u32-length-prefixed byte strings; paths are raw bytes, relative,
//! '/'-separated).

use super::frame::{self, Cursor, Frame, ProtoError, put_bytes};
use crate::temp::{TOKEN_LEN, Token};

/// Bumped on any change to the messages; Hello and Welcome themselves never change.
pub const VERSION: u16 = 7;
/// The start of every Hello/Welcome payload (anything else is not a ferry peer).
pub const MAGIC: &[u8; 8] = b"FERRYNET";
/// Stale session tokens an Open may name.
pub const MAX_STALE: usize = 256;
/// Streams (TLS connections) one pull or move may use at once: an Open asking for more is
/// refused.
pub const MAX_STREAMS: u16 = 64;

/// What a client opens a session for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Client sends a tree, server receives.
    Push = 1,
    /// Server sends a tree, client receives.
    Pull = 2,
    /// Server lists its side with hashes.
    Verify = 3,
    /// Server lists its side without hashes (size and times: the remote quick check).
    List = 4,
    /// A pull that moves: server sends a tree, client receives it and asks (Remove) for the
    /// sources of what is durable at its end to be deleted.
    Move = 5,
}

/// Entries one Remove names at most (and the payload bytes it takes at most: see
/// [`remove_chunks`]).
pub const MAX_REMOVE: usize = 4096;
const REMOVE_BYTES: usize = 512 << 10;

/// The metadata a file, directory or symlink carries over the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    /// st_mode: type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Client → server, first frame.
    Hello { version: u16 },
    /// Server → client, answer to a Hello of the same version.
    Welcome { version: u16 },
    /// Client → server: the session's export, path inside it and operation. A push names
    /// the temp tokens of its job's earlier sessions it gave up on (`stale`, at most
    /// [`MAX_STALE`]): the server stops those that still run before this one starts. A pull
    /// or move asks for `streams` connections (1 ..= [`MAX_STREAMS`]; a push opens each of
    /// its streams as a session of its own and says 1): the other connections [`Msg::Join`]
    /// the session by the token its Ready carries.
    Open {
        op: Op,
        export: Vec<u8>,
        path: Vec<u8>,
        stale: Vec<Token>,
        streams: u16,
    },
    /// Client → server, instead of an Open: this connection is one more stream of the pull
    /// or move session whose Ready carried `token`.
    Join { token: Token },
    /// Server → client: the session is open; `is_dir`: the path is an existing directory;
    /// `token`: a push session's own temp-name token, or the token a pull of several streams
    /// is joined by.
    Ready {
        is_dir: bool,
        exists: bool,
        token: Option<Token>,
    },
    /// Either way: fatal, the connection closes after it.
    Error { msg: String },
    /// Sender → receiver: a directory (created now, its metadata applied at the end).
    Dir { path: Vec<u8>, meta: Meta },
    /// Sender → receiver: a symlink, named with the next batch.
    Symlink {
        id: u64,
        path: Vec<u8>,
        target: Vec<u8>,
        meta: Meta,
    },
    /// Sender → receiver: a regular file of `size` bytes starts; Data frames follow.
    File {
        id: u64,
        path: Vec<u8>,
        size: u64,
        meta: Meta,
    },
    /// Sender → receiver: bytes `offset..offset + len` of a file of `size` bytes, sent on
    /// one of several streams; Data frames follow, then End with the range's xxh3. Written
    /// into the file's temp, made durable and acknowledged, but never named: a Seal does that.
    Part {
        id: u64,
        path: Vec<u8>,
        size: u64,
        offset: u64,
        len: u64,
    },
    /// Sender → receiver: every Part of this file was acknowledged; check its size, apply
    /// `meta` and name it with the next batch.
    Seal {
        id: u64,
        path: Vec<u8>,
        size: u64,
        meta: Meta,
    },
    /// Sender → receiver: files skipped (already at the far end by the quick check).
    Skipped { n: u64 },
    /// A chunk of the current file, in order.
    Data { bytes: Vec<u8> },
    /// The current file's end and its xxh3 on the sender's side.
    End { id: u64, hash: u64 },
    /// Sender → receiver: commit what you have and acknowledge it now.
    Flush,
    /// Sender → receiver: nothing more; finish (directory metadata) and answer Finished.
    Done,
    /// Receiver → sender: every id up to `upto` that was not failed is durable.
    Ack { upto: u64 },
    /// Receiver → sender: one entry failed (not named; the rest go on).
    Fail { id: u64, msg: String },
    /// Receiver → sender: everything is durable, directories included.
    Finished,
    /// Receiver → sender: entry `id` (0: the directory `path`) could not be written because
    /// the destination is full (ENOSPC, EDQUOT): nothing of it is named, its temp is removed
    /// (a split file's shared temp stays, its other ranges in it); send it again once there
    /// is room. The sender pauses its job (`destination_full`).
    Full { id: u64, path: Vec<u8>, msg: String },
    /// Sender → receiver: the extended attributes (POSIX ACLs included) of the next Dir,
    /// File, Seal, Symlink or Node, as (name, value) pairs.
    Xattrs { pairs: Vec<(Vec<u8>, Vec<u8>)> },
    /// Sender → receiver: `path` is another name of the file `target` (a hard link), sent
    /// only once `target` has its final name there; named with the next batch.
    Link {
        id: u64,
        path: Vec<u8>,
        target: Vec<u8>,
    },
    /// Sender → receiver: a FIFO or a device node (`rdev`), named with the next batch.
    Node {
        id: u64,
        path: Vec<u8>,
        rdev: u64,
        meta: Meta,
    },
    /// Inside a file or range: `len` zero bytes that are not sent (a hole of a sparse file;
    /// the receiver leaves a hole and hashes them as zeros).
    Hole { len: u64 },
    /// Puller → server (a Move session): these entries are durable at the puller's end under
    /// their final names, each file with the xxh3 (`Some`) its receiver computed and matched
    /// with the sender's; delete their sources if unchanged since they were sent. `dirs`:
    /// directories whose metadata is durable there, removed (deepest first) if emptied.
    Remove {
        files: Vec<(Vec<u8>, Option<u64>)>,
        dirs: Vec<Vec<u8>>,
    },
    /// Server → puller: one Remove was handled, `n` sources deleted (durably); those kept
    /// were each reported in a Fail before it.
    Removed { n: u64 },
    /// Verify: one entry of the server's side (`hash` 0 for non-files; a device's `size` is
    /// its device number).
    Entry {
        path: Vec<u8>,
        meta: Meta,
        size: u64,
        hash: u64,
        link: Vec<u8>,
    },
}

pub const T_HELLO: u8 = 1;
pub const T_WELCOME: u8 = 2;
const T_OPEN: u8 = 3;
const T_READY: u8 = 4;
/// Error keeps its number and layout across versions too (it explains a refused Hello).
pub const T_ERROR: u8 = 5;
const T_DIR: u8 = 6;
const T_SYMLINK: u8 = 7;
const T_FILE: u8 = 8;
const T_DATA: u8 = 9;
const T_END: u8 = 10;
const T_FLUSH: u8 = 11;
const T_DONE: u8 = 12;
const T_ACK: u8 = 13;
const T_FAIL: u8 = 14;
const T_FINISHED: u8 = 15;
const T_ENTRY: u8 = 16;
const T_PART: u8 = 17;
const T_SEAL: u8 = 18;
const T_SKIPPED: u8 = 19;
const T_XATTRS: u8 = 20;
const T_LINK: u8 = 21;
const T_NODE: u8 = 22;
const T_HOLE: u8 = 23;
const T_FULL: u8 = 24;
const T_REMOVE: u8 = 25;
const T_REMOVED: u8 = 26;
const T_JOIN: u8 = 27;

/// Whether a frame type exists in this version.
pub fn known(kind: u8) -> bool {
    (T_HELLO..=T_JOIN).contains(&kind)
}

/// Splits what a Remove names into messages that each fit a frame (at most [`MAX_REMOVE`]
/// entries and [`REMOVE_BYTES`] of paths; a path is at most a frame's worth itself: paths
/// past PATH_MAX are still far below it).
pub fn remove_chunks(files: Vec<(Vec<u8>, Option<u64>)>, dirs: Vec<Vec<u8>>) -> Vec<Msg> {
    let mut out = Vec::new();
    let (mut f, mut d, mut bytes) = (Vec::new(), Vec::new(), 0usize);
    let full = |n: usize, bytes: usize, len: usize| n >= MAX_REMOVE || bytes + len > REMOVE_BYTES;
    for e in files {
        if !f.is_empty() && full(f.len(), bytes, e.0.len()) {
            out.push(Msg::Remove {
                files: std::mem::take(&mut f),
                dirs: Vec::new(),
            });
            bytes = 0;
        }
        bytes += e.0.len() + 16;
        f.push(e);
    }
    for p in dirs {
        if !(f.is_empty() && d.is_empty()) && full(f.len() + d.len(), bytes, p.len()) {
            out.push(Msg::Remove {
                files: std::mem::take(&mut f),
                dirs: std::mem::take(&mut d),
            });
            bytes = 0;
        }
        bytes += p.len() + 8;
        d.push(p);
    }
    if !(f.is_empty() && d.is_empty()) {
        out.push(Msg::Remove { files: f, dirs: d });
    }
    out
}

fn put_meta(out: &mut Vec<u8>, m: &Meta) {
    for v in [m.mode, m.uid, m.gid] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (s, ns) in [m.atime, m.mtime] {
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&ns.to_le_bytes());
    }
}

fn get_meta(c: &mut Cursor) -> Result<Meta, ProtoError> {
    let (mode, uid, gid) = (c.u32("mode")?, c.u32("uid")?, c.u32("gid")?);
    let mut t = [(0i64, 0u32); 2];
    for x in &mut t {
        *x = (c.i64("time")?, c.u32("time")?);
        if x.1 >= 1_000_000_000 {
            return Err(ProtoError::Malformed {
                what: "nanoseconds",
            });
        }
    }
    Ok(Meta {
        mode,
        uid,
        gid,
        atime: t[0],
        mtime: t[1],
    })
}

/// The head File and Seal share: id, path, size, metadata.
fn put_head(p: &mut Vec<u8>, id: u64, path: &[u8], size: u64, meta: &Meta) {
    p.extend_from_slice(&id.to_le_bytes());
    put_bytes(p, path);
    p.extend_from_slice(&size.to_le_bytes());
    put_meta(p, meta);
}

fn get_head(c: &mut Cursor) -> Result<(u64, Vec<u8>, u64, Meta), ProtoError> {
    Ok((
        c.u64("id")?,
        c.bytes("path")?.to_vec(),
        c.u64("size")?,
        get_meta(c)?,
    ))
}

fn hello_payload(version: u16) -> Vec<u8> {
    let mut p = MAGIC.to_vec();
    p.extend_from_slice(&version.to_le_bytes());
    p
}

/// Appends a Data frame straight from `bytes` (no intermediate message).
pub fn encode_data(bytes: &[u8], out: &mut Vec<u8>) {
    frame::encode(T_DATA, bytes, out);
}

/// Appends only the header of a Data frame of `len` bytes (the caller sends them next).
pub fn encode_data_head(len: usize, out: &mut Vec<u8>) {
    frame::encode_head(T_DATA, len, out);
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
            Msg::Hello { version } => {
                *p = hello_payload(*version);
                T_HELLO
            }
            Msg::Welcome { version } => {
                *p = hello_payload(*version);
                T_WELCOME
            }
            Msg::Open {
                op,
                export,
                path,
                stale,
                streams,
            } => {
                p.push(*op as u8);
                put_bytes(p, export);
                put_bytes(p, path);
                let toks: Vec<u8> = stale.iter().flat_map(|t| t.as_str().bytes()).collect();
                put_bytes(p, &toks);
                p.extend_from_slice(&streams.to_le_bytes());
                T_OPEN
            }
            Msg::Join { token } => {
                put_bytes(p, token.as_str().as_bytes());
                T_JOIN
            }
            Msg::Ready {
                is_dir,
                exists,
                token,
            } => {
                p.extend_from_slice(&[*is_dir as u8, *exists as u8]);
                put_bytes(
                    p,
                    token.as_ref().map_or(&b""[..], |t| t.as_str().as_bytes()),
                );
                T_READY
            }
            Msg::Error { msg } => {
                p.extend_from_slice(msg.as_bytes());
                T_ERROR
            }
            _ => self.payload_data(p),
        }
    }

    fn payload_data(&self, p: &mut Vec<u8>) -> u8 {
        match self {
            Msg::Dir { path, meta } => {
                put_bytes(p, path);
                put_meta(p, meta);
                T_DIR
            }
            Msg::Symlink {
                id,
                path,
                target,
                meta,
            } => {
                p.extend_from_slice(&id.to_le_bytes());
                put_bytes(p, path);
                put_bytes(p, target);
                put_meta(p, meta);
                T_SYMLINK
            }
            Msg::File {
                id,
                path,
                size,
                meta,
            } => {
                put_head(p, *id, path, *size, meta);
                T_FILE
            }
            Msg::Data { bytes } => {
                p.extend_from_slice(bytes);
                T_DATA
            }
            Msg::End { id, hash } => {
                p.extend_from_slice(&id.to_le_bytes());
                p.extend_from_slice(&hash.to_le_bytes());
                T_END
            }
            Msg::Flush => T_FLUSH,
            Msg::Done => T_DONE,
            Msg::Ack { upto } => {
                p.extend_from_slice(&upto.to_le_bytes());
                T_ACK
            }
            Msg::Fail { id, msg } => {
                p.extend_from_slice(&id.to_le_bytes());
                p.extend_from_slice(msg.as_bytes());
                T_FAIL
            }
            Msg::Finished => T_FINISHED,
            Msg::Entry {
                path,
                meta,
                size,
                hash,
                link,
            } => {
                put_bytes(p, path);
                put_meta(p, meta);
                p.extend_from_slice(&size.to_le_bytes());
                p.extend_from_slice(&hash.to_le_bytes());
                put_bytes(p, link);
                T_ENTRY
            }
            _ => self.payload_parts(p),
        }
    }

    fn payload_parts(&self, p: &mut Vec<u8>) -> u8 {
        match self {
            Msg::Part {
                id,
                path,
                size,
                offset,
                len,
            } => {
                p.extend_from_slice(&id.to_le_bytes());
                put_bytes(p, path);
                for v in [size, offset, len] {
                    p.extend_from_slice(&v.to_le_bytes());
                }
                T_PART
            }
            Msg::Seal {
                id,
                path,
                size,
                meta,
            } => {
                put_head(p, *id, path, *size, meta);
                T_SEAL
            }
            Msg::Skipped { n } => {
                p.extend_from_slice(&n.to_le_bytes());
                T_SKIPPED
            }
            _ => self.payload_meta(p),
        }
    }

    fn payload_meta(&self, p: &mut Vec<u8>) -> u8 {
        match self {
            Msg::Xattrs { pairs } => {
                p.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
                for (n, v) in pairs {
                    put_bytes(p, n);
                    put_bytes(p, v);
                }
                T_XATTRS
            }
            Msg::Link { id, path, target } => {
                p.extend_from_slice(&id.to_le_bytes());
                put_bytes(p, path);
                put_bytes(p, target);
                T_LINK
            }
            Msg::Node {
                id,
                path,
                rdev,
                meta,
            } => {
                p.extend_from_slice(&id.to_le_bytes());
                put_bytes(p, path);
                p.extend_from_slice(&rdev.to_le_bytes());
                put_meta(p, meta);
                T_NODE
            }
            Msg::Hole { len } => {
                p.extend_from_slice(&len.to_le_bytes());
                T_HOLE
            }
            Msg::Full { id, path, msg } => {
                p.extend_from_slice(&id.to_le_bytes());
                put_bytes(p, path);
                p.extend_from_slice(msg.as_bytes());
                T_FULL
            }
            _ => self.payload_move(p),
        }
    }

    fn payload_move(&self, p: &mut Vec<u8>) -> u8 {
        match self {
            Msg::Remove { files, dirs } => {
                p.extend_from_slice(&(files.len() as u32).to_le_bytes());
                for (path, hash) in files {
                    put_bytes(p, path);
                    p.push(hash.is_some() as u8);
                    p.extend_from_slice(&hash.unwrap_or(0).to_le_bytes());
                }
                p.extend_from_slice(&(dirs.len() as u32).to_le_bytes());
                for d in dirs {
                    put_bytes(p, d);
                }
                T_REMOVE
            }
            Msg::Removed { n } => {
                p.extend_from_slice(&n.to_le_bytes());
                T_REMOVED
            }
            _ => unreachable!("control messages are encoded by payload()"),
        }
    }

    /// Decodes one frame of this version. Hello/Welcome of another version answer
    /// [`ProtoError::Version`]; a Hello without the magic answers [`ProtoError::NotFerry`].
    pub fn decode(f: &Frame) -> Result<Msg, ProtoError> {
        let mut c = Cursor::new(&f.payload);
        let m = match f.kind {
            T_HELLO | T_WELCOME => {
                if c.take(MAGIC.len(), "magic").ok() != Some(&MAGIC[..]) {
                    return Err(ProtoError::NotFerry);
                }
                let version = c.u16("version").map_err(|_| ProtoError::NotFerry)?;
                if version != VERSION {
                    return Err(ProtoError::Version {
                        ours: VERSION,
                        theirs: version,
                    });
                }
                if f.kind == T_HELLO {
                    Msg::Hello { version }
                } else {
                    Msg::Welcome { version }
                }
            }
            T_OPEN => {
                let op = match c.u8("op")? {
                    1 => Op::Push,
                    2 => Op::Pull,
                    3 => Op::Verify,
                    4 => Op::List,
                    5 => Op::Move,
                    _ => return Err(ProtoError::Malformed { what: "operation" }),
                };
                Msg::Open {
                    op,
                    export: c.bytes("export")?.to_vec(),
                    path: c.bytes("path")?.to_vec(),
                    stale: tokens(c.bytes("stale tokens")?)?,
                    streams: match c.u16("streams")? {
                        n @ 1..=MAX_STREAMS => n,
                        _ => {
                            return Err(ProtoError::Malformed {
                                what: "stream count",
                            });
                        }
                    },
                }
            }
            T_JOIN => match c.bytes("token")? {
                t if t.len() == TOKEN_LEN => Msg::Join {
                    token: tokens(t)?.pop().expect("one token"),
                },
                _ => return Err(ProtoError::Malformed { what: "token" }),
            },
            T_READY => Msg::Ready {
                is_dir: c.u8("ready")? != 0,
                exists: c.u8("ready")? != 0,
                token: match c.bytes("token")? {
                    b"" => None,
                    t if t.len() == TOKEN_LEN => tokens(t)?.pop(),
                    _ => return Err(ProtoError::Malformed { what: "token" }),
                },
            },
            T_ERROR => Msg::Error {
                msg: String::from_utf8_lossy(c.rest()).into_owned(),
            },
            _ => return Self::decode_data(f.kind, &mut c),
        };
        c.end("trailing bytes")?;
        Ok(m)
    }

    fn decode_data(kind: u8, c: &mut Cursor) -> Result<Msg, ProtoError> {
        let m = match kind {
            T_DIR => Msg::Dir {
                path: c.bytes("path")?.to_vec(),
                meta: get_meta(c)?,
            },
            T_SYMLINK => Msg::Symlink {
                id: c.u64("id")?,
                path: c.bytes("path")?.to_vec(),
                target: c.bytes("target")?.to_vec(),
                meta: get_meta(c)?,
            },
            T_FILE => {
                let (id, path, size, meta) = get_head(c)?;
                Msg::File {
                    id,
                    path,
                    size,
                    meta,
                }
            }
            T_DATA => Msg::Data {
                bytes: c.rest().to_vec(),
            },
            T_END => Msg::End {
                id: c.u64("id")?,
                hash: c.u64("hash")?,
            },
            T_FLUSH => Msg::Flush,
            T_DONE => Msg::Done,
            T_ACK => Msg::Ack {
                upto: c.u64("ack")?,
            },
            T_FAIL => Msg::Fail {
                id: c.u64("id")?,
                msg: String::from_utf8_lossy(c.rest()).into_owned(),
            },
            T_FINISHED => Msg::Finished,
            T_PART => Msg::Part {
                id: c.u64("id")?,
                path: c.bytes("path")?.to_vec(),
                size: c.u64("size")?,
                offset: c.u64("offset")?,
                len: c.u64("length")?,
            },
            T_SEAL => {
                let (id, path, size, meta) = get_head(c)?;
                Msg::Seal {
                    id,
                    path,
                    size,
                    meta,
                }
            }
            T_SKIPPED => Msg::Skipped {
                n: c.u64("skipped")?,
            },
            T_ENTRY => Msg::Entry {
                path: c.bytes("path")?.to_vec(),
                meta: get_meta(c)?,
                size: c.u64("size")?,
                hash: c.u64("hash")?,
                link: c.bytes("link")?.to_vec(),
            },
            other => return Self::decode_meta(other, c),
        };
        c.end("trailing bytes")?;
        Ok(m)
    }

    fn decode_meta(kind: u8, c: &mut Cursor) -> Result<Msg, ProtoError> {
        let m = match kind {
            T_XATTRS => {
                let n = c.u32("xattr count")?;
                let mut pairs = Vec::new();
                for _ in 0..n {
                    // Each pair takes at least 8 bytes of the (bounded) payload: no
                    // allocation beyond what arrived.
                    let name = c.bytes("xattr name")?.to_vec();
                    pairs.push((name, c.bytes("xattr value")?.to_vec()));
                }
                Msg::Xattrs { pairs }
            }
            T_LINK => Msg::Link {
                id: c.u64("id")?,
                path: c.bytes("path")?.to_vec(),
                target: c.bytes("link target")?.to_vec(),
            },
            T_NODE => Msg::Node {
                id: c.u64("id")?,
                path: c.bytes("path")?.to_vec(),
                rdev: c.u64("device")?,
                meta: get_meta(c)?,
            },
            T_HOLE => Msg::Hole {
                len: c.u64("hole")?,
            },
            T_FULL => Msg::Full {
                id: c.u64("id")?,
                path: c.bytes("path")?.to_vec(),
                msg: String::from_utf8_lossy(c.rest()).into_owned(),
            },
            T_REMOVE => decode_remove(c)?,
            T_REMOVED => Msg::Removed {
                n: c.u64("removed")?,
            },
            other => return Err(ProtoError::UnknownType(other)),
        };
        c.end("trailing bytes")?;
        Ok(m)
    }
}

/// A Remove: counts are checked against [`MAX_REMOVE`] before anything is taken (and each
/// entry takes bytes of the bounded payload).
fn decode_remove(c: &mut Cursor) -> Result<Msg, ProtoError> {
    let too_many = ProtoError::Malformed {
        what: "remove count",
    };
    let n = c.u32("remove count")? as usize;
    if n > MAX_REMOVE {
        return Err(too_many);
    }
    let mut files = Vec::new();
    for _ in 0..n {
        let path = c.bytes("remove path")?.to_vec();
        let has = c.u8("remove hash")?;
        let hash = c.u64("remove hash")?;
        files.push((path, (has != 0).then_some(hash)));
    }
    let k = c.u32("remove dir count")? as usize;
    if n + k > MAX_REMOVE {
        return Err(too_many);
    }
    let mut dirs = Vec::new();
    for _ in 0..k {
        dirs.push(c.bytes("remove dir")?.to_vec());
    }
    Ok(Msg::Remove { files, dirs })
}

/// Concatenated tokens (16 hex digits each), at most [`MAX_STALE`].
fn tokens(b: &[u8]) -> Result<Vec<Token>, ProtoError> {
    let bad = ProtoError::Malformed { what: "token" };
    if !b.len().is_multiple_of(TOKEN_LEN) || b.len() / TOKEN_LEN > MAX_STALE {
        return Err(bad);
    }
    b.chunks(TOKEN_LEN)
        .map(|t| {
            std::str::from_utf8(t)
                .ok()
                .and_then(Token::parse)
                .ok_or_else(|| bad.clone())
        })
        .collect()
}

/// A decoder of messages: frames plus the rule that the first frame must be a Hello/Welcome
/// (anything else is not a ferry peer).
pub struct MsgDecoder {
    frames: frame::Decoder,
    greeted: bool,
}

impl Default for MsgDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl MsgDecoder {
    pub fn new() -> Self {
        MsgDecoder {
            frames: frame::Decoder::new(),
            greeted: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.frames.push(bytes);
    }

    /// A Data message's bytes, used: their buffer fills a later Data frame.
    pub fn recycle(&mut self, bytes: Vec<u8>) {
        self.frames.recycle(bytes);
    }

    pub fn next_msg(&mut self) -> Result<Option<Msg>, ProtoError> {
        let greeted = self.greeted;
        let ok = |k: u8| {
            if greeted {
                known(k)
            } else {
                k == T_HELLO || k == T_WELCOME || k == T_ERROR
            }
        };
        let f = match self.frames.next_frame(ok) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(ProtoError::UnknownType(_) | ProtoError::Oversize { .. }) if !greeted => {
                return Err(ProtoError::NotFerry);
            }
            Err(e) => return Err(e),
        };
        if f.kind == T_DATA {
            // The frame's payload is the data: moved, not copied (T_DATA is only known once
            // greeted).
            return Ok(Some(Msg::Data { bytes: f.payload }));
        }
        let m = Msg::decode(&f)?;
        self.greeted = true;
        Ok(Some(m))
    }

    /// At end of stream: Ok if no partial frame is left.
    pub fn finish(&self) -> Result<(), ProtoError> {
        self.frames.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: Msg) {
        let mut wire = Vec::new();
        Msg::Hello { version: VERSION }.encode(&mut wire);
        m.encode(&mut wire);
        let mut d = MsgDecoder::new();
        d.push(&wire);
        assert_eq!(d.next_msg().unwrap(), Some(Msg::Hello { version: VERSION }));
        assert_eq!(d.next_msg().unwrap(), Some(m));
        assert_eq!(d.next_msg().unwrap(), None);
    }

    #[test]
    fn session_setup_messages_round_trip() {
        for m in [
            Msg::Open {
                op: Op::Pull,
                export: b"data".to_vec(),
                path: b"a/b\xff".to_vec(),
                stale: Vec::new(),
                streams: 1,
            },
            Msg::Open {
                op: Op::Push,
                export: b"data".to_vec(),
                path: Vec::new(),
                stale: vec![Token::random(), Token::random()],
                streams: 1,
            },
            Msg::Ready {
                is_dir: true,
                exists: true,
                token: None,
            },
            Msg::Ready {
                is_dir: false,
                exists: false,
                token: Some(Token::random()),
            },
            Msg::Open {
                op: Op::Move,
                export: b"data".to_vec(),
                path: Vec::new(),
                stale: Vec::new(),
                streams: MAX_STREAMS,
            },
            Msg::Join {
                token: Token::random(),
            },
            Msg::Error { msg: "no".into() },
        ] {
            roundtrip(m);
        }
    }

    #[test]
    fn stream_counts_and_join_tokens_are_bounded_and_checked() {
        let decode = |m: &Msg| {
            let mut payload = Vec::new();
            let kind = m.payload(&mut payload);
            Msg::decode(&Frame { kind, payload })
        };
        let open = |streams| Msg::Open {
            op: Op::Pull,
            export: b"x".to_vec(),
            path: Vec::new(),
            stale: Vec::new(),
            streams,
        };
        assert!(decode(&open(1)).is_ok());
        assert!(decode(&open(MAX_STREAMS)).is_ok());
        for n in [0, MAX_STREAMS + 1, u16::MAX] {
            assert_eq!(
                decode(&open(n)),
                Err(ProtoError::Malformed {
                    what: "stream count"
                })
            );
        }
        let join = |t: &[u8]| {
            let mut payload = Vec::new();
            put_bytes(&mut payload, t);
            Msg::decode(&Frame {
                kind: T_JOIN,
                payload,
            })
        };
        let tok = Token::random();
        assert_eq!(
            join(tok.as_str().as_bytes()),
            Ok(Msg::Join { token: tok.clone() })
        );
        for bad in [
            &b""[..],
            b"0123456789abcde",
            b"0123456789ABCDEF",
            b"0123456789abcdef0",
        ] {
            assert!(join(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_message_round_trips() {
        let meta = Meta {
            mode: 0o100644,
            uid: 1,
            gid: 2,
            atime: (-5, 999_999_999),
            mtime: (1_700_000_000, 1),
        };
        for m in [
            Msg::Dir {
                path: b"d".to_vec(),
                meta,
            },
            Msg::Symlink {
                id: 3,
                path: b"l".to_vec(),
                target: b"../x".to_vec(),
                meta,
            },
            Msg::File {
                id: 9,
                path: b"f".to_vec(),
                size: 1 << 40,
                meta,
            },
            Msg::Data {
                bytes: vec![1; 4096],
            },
            Msg::End { id: 9, hash: 42 },
            Msg::Part {
                id: 10,
                path: b"big".to_vec(),
                size: 1 << 33,
                offset: 1 << 32,
                len: 1 << 20,
            },
            Msg::Seal {
                id: 11,
                path: b"big".to_vec(),
                size: 1 << 33,
                meta,
            },
            Msg::Skipped { n: 3 },
            Msg::Flush,
            Msg::Done,
            Msg::Ack { upto: 77 },
            Msg::Fail {
                id: 4,
                msg: "disk".into(),
            },
            Msg::Finished,
            Msg::Entry {
                path: b"e".to_vec(),
                meta,
                size: 5,
                hash: 6,
                link: vec![],
            },
        ] {
            roundtrip(m);
        }
    }

    #[test]
    fn metadata_messages_round_trip() {
        let meta = Meta {
            mode: 0o020640,
            uid: 3,
            gid: 4,
            atime: (0, 0),
            mtime: (1_700_000_000, 5),
        };
        for m in [
            Msg::Xattrs {
                pairs: vec![
                    (b"user.a".to_vec(), b"x\0y".to_vec()),
                    (b"system.posix_acl_access".to_vec(), vec![]),
                ],
            },
            Msg::Xattrs { pairs: vec![] },
            Msg::Link {
                id: 12,
                path: b"a/two".to_vec(),
                target: b"one".to_vec(),
            },
            Msg::Node {
                id: 13,
                path: b"fifo".to_vec(),
                rdev: 0x0103,
                meta,
            },
            Msg::Hole { len: 1 << 30 },
            Msg::Full {
                id: 14,
                path: b"a/big".to_vec(),
                msg: "write: No space left on device (os error 28)".into(),
            },
            Msg::Full {
                id: 0,
                path: b"a/dir".to_vec(),
                msg: String::new(),
            },
            Msg::Remove {
                files: vec![(b"a/f".to_vec(), Some(7)), (b"a/l".to_vec(), None)],
                dirs: vec![b"a".to_vec(), Vec::new()],
            },
            Msg::Remove {
                files: vec![],
                dirs: vec![],
            },
            Msg::Removed { n: 3 },
        ] {
            roundtrip(m);
        }
    }

    #[test]
    fn removes_are_split_to_fit_and_bounded() {
        let files: Vec<_> = (0..10_000u64)
            .map(|i| (vec![b'x'; 300 + (i % 7) as usize], Some(i)))
            .collect();
        let dirs: Vec<_> = (0..5000).map(|i| format!("d{i}").into_bytes()).collect();
        let msgs = remove_chunks(files.clone(), dirs.clone());
        let (mut f, mut d) = (Vec::new(), Vec::new());
        for m in &msgs {
            let mut wire = Vec::new();
            m.encode(&mut wire);
            assert!(wire.len() <= frame::MAX_PAYLOAD, "{} bytes", wire.len());
            let Msg::Remove { files, dirs } = m else {
                panic!("{m:?}")
            };
            assert!(files.len() + dirs.len() <= MAX_REMOVE);
            f.extend(files.iter().cloned());
            d.extend(dirs.iter().cloned());
        }
        assert_eq!((f, d), (files, dirs), "every entry once, in order");
        assert!(remove_chunks(Vec::new(), Vec::new()).is_empty());
        // A count past the bound is refused before anything is taken.
        let mut p = ((MAX_REMOVE + 1) as u32).to_le_bytes().to_vec();
        p.extend_from_slice(&0u32.to_le_bytes());
        let f = Frame {
            kind: T_REMOVE,
            payload: p,
        };
        assert_eq!(
            Msg::decode(&f),
            Err(ProtoError::Malformed {
                what: "remove count"
            })
        );
    }

    #[test]
    fn stale_tokens_are_bounded_and_checked() {
        let open = |stale: Vec<Token>| Msg::Open {
            op: Op::Push,
            export: b"x".to_vec(),
            path: Vec::new(),
            stale,
            streams: 1,
        };
        let decode = |m: &Msg| {
            let mut payload = Vec::new();
            let kind = m.payload(&mut payload);
            Msg::decode(&Frame { kind, payload })
        };
        let most: Vec<Token> = (0..MAX_STALE).map(|_| Token::random()).collect();
        assert!(decode(&open(most.clone())).is_ok());
        let mut over = most;
        over.push(Token::random());
        assert_eq!(
            decode(&open(over)),
            Err(ProtoError::Malformed { what: "token" })
        );
        // Not 16 hex digits: refused, not taken as a token.
        let mut p = vec![Op::Push as u8];
        put_bytes(&mut p, b"x");
        put_bytes(&mut p, b"");
        put_bytes(&mut p, b"0123456789ABCDEF");
        let f = Frame {
            kind: T_OPEN,
            payload: p,
        };
        assert!(Msg::decode(&f).is_err());
    }

    #[test]
    fn another_version_is_refused_by_number() {
        let mut wire = Vec::new();
        Msg::Hello { version: 1 }.encode(&mut wire);
        let mut d = MsgDecoder::new();
        d.push(&wire);
        let e = d.next_msg().unwrap_err();
        assert_eq!(
            e,
            ProtoError::Version {
                ours: VERSION,
                theirs: 1
            }
        );
        assert!(e.to_string().contains("version mismatch"), "{e}");
    }

    #[test]
    fn a_stream_not_starting_with_hello_is_not_ferry() {
        let mut d = MsgDecoder::new();
        d.push(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(d.next_msg(), Err(ProtoError::NotFerry));
    }
}
