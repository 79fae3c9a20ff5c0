//! The sending side of a transfer: walks the tree, streams entries (many small files back to
//! back, big ones in chunks of [`MAX_CHUNK`]) and never waits for a file's acknowledgement
//! before sending the next: the receiver acknowledges in batches, and a file counts as done
//! (journaled, deletable by a move) only once an Ack covers it.

use super::beneath;
use super::conn::Conn;
use super::frame::MAX_CHUNK;
use super::msg::{Meta, Msg};
use super::walk::{Item, Kind, Walker};
use super::xattr;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::AsRawFd;
use xxhash_rust::xxh3::Xxh3;

/// Unacknowledged files (or bytes) in flight before the sender asks for an Ack and waits.
const WINDOW_FILES: usize = 8192;
const WINDOW_BYTES: u64 = 1 << 30;

/// A file or symlink sent and not yet acknowledged.
pub struct Sent {
    pub id: u64,
    pub rel: Vec<u8>,
    pub size: u64,
    pub mtime: (i64, u32),
    /// The xxh3 of the bytes sent (None: sent in ranges, no whole-file hash).
    pub hash: Option<u64>,
}

/// What the caller decides about each entry, and learns about each durable one.
pub trait Hooks {
    /// false: skip this file (already durable at the far end).
    fn wanted(&mut self, _item: &Item) -> bool {
        true
    }
    /// These were acknowledged: durable and checked at the far end.
    fn durable(&mut self, _files: &[Sent]) {}
    /// The metadata the directory `rel` is sent with (read now: `meta`). A move's rerun sends
    /// the times its killed run saw: removing sources changed them since.
    fn dir_meta(&mut self, _rel: &[u8], meta: Meta) -> Meta {
        meta
    }
    /// Every entry the walk yields, before anything of it is sent.
    fn seen(&mut self, _item: &Item) {}
    /// Whether an entry that vanished between the walk's listing and its reading is simply
    /// gone (a move: an earlier session of it removed the source once its copy was durable)
    /// rather than an error.
    fn gone_is_done(&self) -> bool {
        false
    }
    /// The receiver failed this entry (it was not named there).
    fn lost(&mut self, _rel: &[u8]) {}
    /// A request of the receiver's between acknowledgements (a move's Remove): the replies,
    /// or Err(it) when this transfer takes no such request.
    fn request(&mut self, m: Msg) -> Result<Vec<Msg>, Msg> {
        Err(m)
    }
}

/// The outcome of one transfer.
#[derive(Debug, Default)]
pub struct Outcome {
    pub files: u64,
    pub bytes: u64,
    pub skipped: u64,
    /// Sources deleted once their copies were durable at the far end (a move).
    pub removed: u64,
    /// (wire path, why), local and remote failures.
    pub errors: Vec<(Vec<u8>, String)>,
    /// Ranges of split files acknowledged on each stream (a transfer of several streams).
    pub parts: Vec<u64>,
}

pub fn meta_of(st: &libc::stat) -> Meta {
    Meta {
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        atime: (st.st_atime, st.st_atime_nsec as u32),
        mtime: (st.st_mtime, st.st_mtime_nsec as u32),
    }
}

/// Another name of a file sent before it (a hard link): sent once that file is named.
#[derive(Clone)]
pub struct LinkTo {
    pub rel: Vec<u8>,
    pub target: Vec<u8>,
    pub size: u64,
    pub mtime: (i64, u32),
}

/// The names of files with several links seen so far: a later name of one becomes a link.
#[derive(Default)]
pub struct Links(HashMap<(u64, u64), Vec<u8>>);

impl Links {
    /// For a file's second and later names, the first name (the link's target).
    pub fn seen(&mut self, item: &Item) -> Option<Vec<u8>> {
        if item.kind != Kind::File || item.st.st_nlink < 2 {
            return None;
        }
        let key = (item.st.st_dev, item.st.st_ino);
        match self.0.get(&key) {
            Some(first) => Some(first.clone()),
            None => {
                self.0.insert(key, item.rel.clone());
                None
            }
        }
    }
}

impl LinkTo {
    pub fn new(item: &Item, target: Vec<u8>) -> LinkTo {
        LinkTo {
            rel: item.rel.clone(),
            target,
            size: item.st.st_size as u64,
            mtime: (item.st.st_mtime, item.st.st_mtime_nsec as u32),
        }
    }

    pub fn sent(&self) -> Sent {
        Sent {
            id: 0,
            rel: self.rel.clone(),
            size: self.size,
            mtime: self.mtime,
            hash: None,
        }
    }
}

/// The extended attributes that go before `item` (in an Xattrs message, when there are
/// any). Err: they cannot be read or do not fit a frame (the entry is then not sent).
pub fn xattrs_of(item: &Item) -> Result<xattr::Pairs, String> {
    let pairs =
        xattr::read(item.dir.as_raw_fd(), &item.name).map_err(|e| format!("listxattr: {e}"))?;
    if !xattr::fits(&pairs) {
        return Err("extended attributes too large for one frame; not sent".into());
    }
    Ok(pairs)
}

/// Sends `item`'s extended attributes on `conn` ahead of it; false: they could not be read
/// (recorded in `errors`; the entry is not sent).
pub fn send_xattrs(
    conn: &mut Conn,
    item: &Item,
    errors: &mut Vec<(Vec<u8>, String)>,
) -> io::Result<bool> {
    match xattrs_of(item) {
        Ok(p) if p.is_empty() => Ok(true),
        Ok(pairs) => conn.send(&Msg::Xattrs { pairs }).map(|()| true),
        Err(e) => {
            errors.push((item.rel.clone(), e));
            Ok(false)
        }
    }
}

/// ENOENT: the entry is gone.
pub fn is_gone(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

/// Whether an entry of another kind is sent as a node (sockets are not).
pub fn is_node(st: &libc::stat) -> bool {
    matches!(
        st.st_mode & libc::S_IFMT,
        libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK
    )
}

pub const NO_SOCKETS: &str = "not sent: sockets are not copied";

struct Sender<'a> {
    conn: &'a mut Conn,
    next_id: u64,
    pending: VecDeque<Sent>,
    pending_bytes: u64,
    failed: HashMap<u64, String>,
    out: Outcome,
    buf: Vec<u8>,
    links: Links,
    /// Later names of hard-linked files, sent at the end (once their targets are named).
    later: Vec<LinkTo>,
}

/// Holes smaller than this are sent as data (not worth a message).
const HOLE_MIN: u64 = 64 << 10;

/// The next piece of `fd` from `pos` (before `end`): (where data starts, where it ends).
/// Only called for sparse files; a filesystem without SEEK_DATA answers all data.
fn next_data(f: &std::fs::File, pos: u64, end: u64) -> (u64, u64) {
    let fd = f.as_raw_fd();
    // SAFETY: lseek on a valid fd has no memory effects.
    let data = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
    if data < 0 {
        let e = io::Error::last_os_error().raw_os_error();
        // ENXIO: only a hole is left, if the file still reaches `end` (a file that shrank
        // is read, and found short, never padded with zeros).
        let whole = f.metadata().is_ok_and(|m| m.len() >= end);
        return if e == Some(libc::ENXIO) && whole {
            (end, end)
        } else {
            (pos, end)
        };
    }
    let data = (data as u64).clamp(pos, end);
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data as i64, libc::SEEK_HOLE) };
    let hole = if hole < 0 {
        end
    } else {
        (hole as u64).clamp(data, end)
    };
    (data, hole)
}

/// Streams bytes `offset..offset + len` of `f` as Data frames; their xxh3, and a read error
/// if the file could not be read to the end (the receiver then sees a short count and fails
/// it; a file that shrank does the same without an error here).
pub fn send_range(
    conn: &mut Conn,
    f: &std::fs::File,
    offset: u64,
    len: u64,
    buf: &mut [u8],
) -> io::Result<(u64, Option<String>)> {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let mut h = Xxh3::new();
    let sparse = f.metadata().is_ok_and(|m| m.blocks() * 512 < m.size());
    let (mut pos, end) = (offset, offset + len);
    while pos < end {
        let (data, mut to) = if sparse {
            next_data(f, pos, end)
        } else {
            (pos, end)
        };
        // A sparse file's holes are not sent (the receiver leaves them holes); a small one
        // goes as the zeros it reads as, with the data after it.
        if data > pos && (data - pos >= HOLE_MIN || data == end) {
            conn.send(&Msg::Hole { len: data - pos })?;
            super::recv::hash_zeros(&mut h, data - pos);
            pos = data;
        }
        if to <= pos {
            to = end;
        }
        while pos < to {
            let want = ((to - pos) as usize).min(buf.len());
            let n = match f.read_at(&mut buf[..want], pos) {
                // It shrank: the receiver sees fewer bytes than announced and fails it.
                Ok(0) => return Ok((h.digest(), None)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Ok((h.digest(), Some(format!("read: {e}")))),
            };
            h.update(&buf[..n]);
            conn.send_data(&buf[..n])?;
            pos += n as u64;
        }
    }
    Ok((h.digest(), None))
}

/// Sends everything `walker` yields and waits until it is all durable (Finished).
pub fn send_tree(conn: &mut Conn, walker: Walker, hooks: &mut dyn Hooks) -> io::Result<Outcome> {
    let mut s = Sender {
        conn,
        next_id: 1,
        pending: VecDeque::new(),
        pending_bytes: 0,
        failed: HashMap::new(),
        out: Outcome::default(),
        buf: vec![0; MAX_CHUNK],
        links: Links::default(),
        later: Vec::new(),
    };
    for item in walker {
        let before = s.out.errors.len();
        match item {
            Ok(item) => s.item(item, hooks)?,
            Err((_, e)) if is_gone(&e) && hooks.gone_is_done() => {}
            Err((rel, e)) => s.out.errors.push((rel, format!("read: {e}"))),
        }
        // The receiver hears of what could not be sent (a pull's client reports it).
        for i in before..s.out.errors.len() {
            let (rel, why) = &s.out.errors[i];
            let msg = format!("'{}': {why}", beneath::show(rel));
            s.conn.send(&Msg::Fail { id: 0, msg })?;
        }
        s.take_acks(hooks, false)?;
    }
    s.send_links(hooks)?;
    if s.out.skipped > 0 {
        s.conn.send(&Msg::Skipped { n: s.out.skipped })?;
    }
    s.conn.send(&Msg::Done)?;
    s.conn.flush()?;
    while s.take_acks(hooks, true)? {}
    Ok(s.out)
}

impl Sender<'_> {
    /// The later names of hard-linked files, once everything before is acknowledged (their
    /// targets have their final names at the far end).
    fn send_links(&mut self, hooks: &mut dyn Hooks) -> io::Result<()> {
        if self.later.is_empty() {
            return Ok(());
        }
        self.conn.send(&Msg::Flush)?;
        self.conn.flush()?;
        while !self.pending.is_empty() {
            self.take_acks(hooks, true)?;
        }
        for l in std::mem::take(&mut self.later) {
            let mut sent = l.sent();
            sent.size = 0; // no bytes are sent for a link (a pull's hooks journal nothing)
            sent.id = self.next_id;
            self.next_id += 1;
            self.pending.push_back(sent);
            self.conn.send(&Msg::Link {
                id: self.next_id - 1,
                path: l.rel,
                target: l.target,
            })?;
        }
        Ok(())
    }

    /// Sends the entry's extended attributes ahead of it; false: they could not be read
    /// (recorded; the entry is not sent).
    fn xattrs(&mut self, item: &Item) -> io::Result<bool> {
        send_xattrs(self.conn, item, &mut self.out.errors)
    }

    /// One entry. Its Xattrs go right before its own message, after every local step that
    /// can fail (the far end gives them to the next entry it gets).
    fn item(&mut self, item: Item, hooks: &mut dyn Hooks) -> io::Result<()> {
        hooks.seen(&item);
        let meta = meta_of(&item.st);
        if item.kind == Kind::Other && !is_node(&item.st) {
            self.out.errors.push((item.rel, NO_SOCKETS.into()));
            return Ok(());
        }
        let later = self.links.seen(&item);
        if item.kind != Kind::Dir && !hooks.wanted(&item) {
            self.out.skipped += 1;
            return Ok(());
        }
        if let Some(target) = later {
            self.later.push(LinkTo::new(&item, target));
            return Ok(());
        }
        match item.kind {
            Kind::Dir => {
                if self.xattrs(&item)? {
                    let meta = hooks.dir_meta(&item.rel, meta);
                    let path = item.rel;
                    self.conn.send(&Msg::Dir { path, meta })?;
                }
                Ok(())
            }
            Kind::Symlink => match beneath::readlink_at(item.dir.as_raw_fd(), &item.name) {
                Ok(target) if self.xattrs(&item)? => {
                    let id = self.track(&item, 0, 0);
                    let path = item.rel;
                    self.conn.send(&Msg::Symlink {
                        id,
                        path,
                        target,
                        meta,
                    })
                }
                Ok(_) => Ok(()),
                Err(e) => {
                    self.out.errors.push((item.rel, format!("readlink: {e}")));
                    Ok(())
                }
            },
            Kind::File => self.file(item, meta, hooks.gone_is_done()),
            Kind::Other => {
                if self.xattrs(&item)? {
                    let id = self.track(&item, 0, 0);
                    self.conn.send(&Msg::Node {
                        id,
                        path: item.rel,
                        rdev: item.st.st_rdev,
                        meta,
                    })?;
                }
                Ok(())
            }
        }
    }

    fn track(&mut self, item: &Item, size: u64, hash: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending_bytes += size;
        self.pending.push_back(Sent {
            id,
            rel: item.rel.clone(),
            size,
            mtime: (item.st.st_mtime, item.st.st_mtime_nsec as u32),
            hash: Some(hash),
        });
        id
    }

    /// Streams one file: File, Data..., End with the xxh3 of exactly the bytes sent.
    /// `gone_is_done`: a file that vanished since the walk listed it is skipped.
    fn file(&mut self, item: Item, meta: Meta, gone_is_done: bool) -> io::Result<()> {
        let f = match beneath::open_at(item.dir.as_raw_fd(), &item.name, libc::O_RDONLY, 0) {
            Ok(fd) => std::fs::File::from(fd),
            Err(e) if gone_is_done && is_gone(&e) => return Ok(()),
            Err(e) => {
                self.out.errors.push((item.rel, format!("open: {e}")));
                return Ok(());
            }
        };
        if !self.xattrs(&item)? {
            return Ok(());
        }
        let size = item.st.st_size as u64;
        let id = self.track(&item, size, 0);
        self.conn.send(&Msg::File {
            id,
            path: item.rel.clone(),
            size,
            meta,
        })?;
        let (hash, err) = send_range(self.conn, &f, 0, size, &mut self.buf)?;
        if let Some(e) = err {
            self.failed.insert(id, e);
        }
        if let Some(p) = self.pending.back_mut() {
            p.hash = Some(hash);
        }
        self.conn.send(&Msg::End { id, hash })
    }

    /// Takes the acknowledgements that arrived (`wait`: waits for at least one message).
    /// Asks for an Ack when the window is full. Ok(false): the receiver said Finished.
    fn take_acks(&mut self, hooks: &mut dyn Hooks, wait: bool) -> io::Result<bool> {
        let full = self.pending.len() >= WINDOW_FILES || self.pending_bytes >= WINDOW_BYTES;
        if full {
            self.conn.send(&Msg::Flush)?;
            self.conn.flush()?;
        }
        let mut first = wait || full;
        loop {
            let m = if first {
                first = false;
                Some(self.conn.recv()?)
            } else {
                self.conn.try_recv()?
            };
            let Some(m) = m else { return Ok(true) };
            match m {
                Msg::Ack { upto } => self.acked(upto, hooks),
                // A pull into a full disk: no resume there (yet), the entry failed.
                Msg::Full { id, msg, .. } | Msg::Fail { id, msg } => {
                    if id == 0 {
                        self.out.errors.push((Vec::new(), format!("remote: {msg}")));
                    } else {
                        self.failed.insert(id, format!("remote: {msg}"));
                    }
                }
                Msg::Finished => {
                    for p in self.pending.drain(..) {
                        self.out.errors.push((p.rel, "never acknowledged".into()));
                    }
                    return Ok(false);
                }
                other => match hooks.request(other) {
                    Ok(replies) => {
                        for r in &replies {
                            self.conn.send(r)?;
                        }
                        self.conn.flush()?;
                    }
                    Err(other) => return Err(self.conn.refused(other)),
                },
            }
        }
    }

    fn acked(&mut self, upto: u64, hooks: &mut dyn Hooks) {
        let mut done = Vec::new();
        while self.pending.front().is_some_and(|p| p.id <= upto) {
            let p = self.pending.pop_front().expect("front exists");
            self.pending_bytes -= p.size;
            match self.failed.remove(&p.id) {
                Some(msg) => {
                    hooks.lost(&p.rel);
                    self.out.errors.push((p.rel, msg));
                }
                None => {
                    self.out.files += 1;
                    self.out.bytes += p.size;
                    done.push(p);
                }
            }
        }
        if !done.is_empty() {
            hooks.durable(&done);
        }
    }
}
