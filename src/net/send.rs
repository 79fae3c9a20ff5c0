//! The sending side of a transfer: walks the tree, streams entries (many small files back to
//! back, big ones in chunks of [`MAX_CHUNK`]) and never waits for a file's acknowledgement
//! before sending the next: the receiver acknowledges in batches, and a file counts as done
//! (journaled, deletable by a move) only once an Ack covers it.

use super::beneath;
use super::conn::Conn;
use super::frame::MAX_CHUNK;
use super::msg::{Meta, Msg};
use super::walk::{Item, Kind, Walker};
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
}

/// The outcome of one transfer.
#[derive(Debug, Default)]
pub struct Outcome {
    pub files: u64,
    pub bytes: u64,
    pub skipped: u64,
    /// (wire path, why), local and remote failures.
    pub errors: Vec<(Vec<u8>, String)>,
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

struct Sender<'a> {
    conn: &'a mut Conn,
    next_id: u64,
    pending: VecDeque<Sent>,
    pending_bytes: u64,
    failed: HashMap<u64, String>,
    out: Outcome,
    buf: Vec<u8>,
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
    use std::os::unix::fs::FileExt;
    let mut h = Xxh3::new();
    let mut done = 0u64;
    while done < len {
        let want = ((len - done) as usize).min(buf.len());
        let n = match f.read_at(&mut buf[..want], offset + done) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Ok((h.digest(), Some(format!("read: {e}")))),
        };
        h.update(&buf[..n]);
        conn.send_data(&buf[..n])?;
        done += n as u64;
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
    };
    for item in walker {
        let before = s.out.errors.len();
        match item {
            Ok(item) => s.item(item, hooks)?,
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
    if s.out.skipped > 0 {
        s.conn.send(&Msg::Skipped { n: s.out.skipped })?;
    }
    s.conn.send(&Msg::Done)?;
    s.conn.flush()?;
    while s.take_acks(hooks, true)? {}
    Ok(s.out)
}

impl Sender<'_> {
    fn item(&mut self, item: Item, hooks: &mut dyn Hooks) -> io::Result<()> {
        let meta = meta_of(&item.st);
        match item.kind {
            Kind::Dir => self.conn.send(&Msg::Dir {
                path: item.rel,
                meta,
            }),
            Kind::Symlink if !hooks.wanted(&item) => {
                self.out.skipped += 1;
                Ok(())
            }
            Kind::Symlink => match beneath::readlink_at(item.dir.as_raw_fd(), &item.name) {
                Ok(target) => {
                    let id = self.track(&item, 0, 0);
                    self.conn.send(&Msg::Symlink {
                        id,
                        path: item.rel,
                        target,
                        meta,
                    })
                }
                Err(e) => {
                    self.out.errors.push((item.rel, format!("readlink: {e}")));
                    Ok(())
                }
            },
            Kind::File if !hooks.wanted(&item) => {
                self.out.skipped += 1;
                Ok(())
            }
            Kind::File => self.file(item, meta),
            Kind::Other => {
                self.out.errors.push((
                    item.rel,
                    "not sent: FIFOs, devices and sockets are not supported over the network yet"
                        .into(),
                ));
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
    fn file(&mut self, item: Item, meta: Meta) -> io::Result<()> {
        let f = match beneath::open_at(item.dir.as_raw_fd(), &item.name, libc::O_RDONLY, 0) {
            Ok(fd) => std::fs::File::from(fd),
            Err(e) => {
                self.out.errors.push((item.rel, format!("open: {e}")));
                return Ok(());
            }
        };
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
                Msg::Fail { id, msg } => {
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
                other => return Err(self.conn.refused(other)),
            }
        }
    }

    fn acked(&mut self, upto: u64, hooks: &mut dyn Hooks) {
        let mut done = Vec::new();
        while self.pending.front().is_some_and(|p| p.id <= upto) {
            let p = self.pending.pop_front().expect("front exists");
            self.pending_bytes -= p.size;
            match self.failed.remove(&p.id) {
                Some(msg) => self.out.errors.push((p.rel, msg)),
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
