//! The receiving side of a transfer, as a state machine: messages in (`on_msg`), replies out
//! (Ack / Fail / Finished pushed to `out`). It does its file I/O itself (blocking calls), all
//! of it beneath its base directory (see `beneath`).
//!
//! Durability order, as for local copies: data into `.<name>.ferry-<token>.tmp` (the session's random token) → hash and size
//! checked against the sender's → metadata → group commit (one syncfs per filesystem for the
//! batch) → final name (rename) → syncfs again (the names durable) → Ack for the batch. A file
//! whose hash or size differs never gets its final name.

use super::beneath::{self, check_rel, join, show, split};
use super::conn::Conn;
use super::frame::ProtoError;
use super::msg::{Meta, Msg};
use super::xattr::{self, Pairs};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::Xxh3;

mod moving;
mod special;
pub use moving::{SaveDirs, await_removed};
pub use special::hash_zeros;

/// A batch is committed at this many files or bytes (or on Flush / Done).
pub const BATCH_FILES: usize = 1024;
pub const BATCH_BYTES: u64 = 256 << 20;
/// Directory fds kept open for the files that follow.
const DIR_CACHE: usize = 256;
/// How often a watched session looks whether its sender is still there.
const WATCH_EVERY: Duration = Duration::from_millis(5);

/// What stops a session before it names anything more: the sender hung up (its input read
/// ahead is not worked through: it will never see the acknowledgement, and its rerun sends
/// those files again), or a newer session of the same client retired this one.
pub struct Watch {
    fd: RawFd,
    stop: Arc<AtomicBool>,
}

impl Watch {
    /// `fd`: the session's socket (outlives the receiver).
    pub fn new(fd: RawFd, stop: Arc<AtomicBool>) -> Watch {
        Watch { fd, stop }
    }

    fn stopped(&self) -> bool {
        if self.stop.load(Ordering::Acquire) {
            return true;
        }
        let mut p = libc::pollfd {
            fd: self.fd,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd; no waiting.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        r > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }
}

/// Where a new entry waits for its batch: its directory, final name and temp name.
type Placed = (Arc<DirFd>, Vec<u8>, Vec<u8>);

/// A directory fd with its filesystem.
struct DirFd {
    fd: OwnedFd,
    dev: u64,
}

/// The file being received.
struct Incoming {
    id: u64,
    rel: Vec<u8>,
    dir: Arc<DirFd>,
    name: Vec<u8>,
    tmp: Vec<u8>,
    file: Option<File>,
    size: u64,
    written: u64,
    hash: Xxh3,
    meta: Meta,
    xattrs: Pairs,
    /// A hole was skipped: the size is set at the end (a file may end in a hole).
    sparse: bool,
    failed: Option<String>,
    /// It failed because the destination is full: answered with Full, sent again later.
    full: bool,
    /// A Part: one range of a file whose temp other streams write too (never removed here,
    /// never named here: a Seal names it).
    part: bool,
}

/// Written and checked, waiting for the group commit.
struct Ready {
    id: u64,
    rel: Vec<u8>,
    dir: Arc<DirFd>,
    name: Vec<u8>,
    tmp: Vec<u8>,
    /// A Part: made durable with the batch, not named.
    part: bool,
    /// A whole file's xxh3, as received and matched with the sender's (a move asks its
    /// source removed by it).
    hash: Option<u64>,
    /// The temp is a split file's (Parts and Seal): other streams' bytes are in it, so a
    /// broken session leaves it (for a Seal sent again) instead of removing it.
    shared: bool,
}

/// What the receiver counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub files: u64,
    pub bytes: u64,
    pub failed: u64,
    /// Files the sender skipped (already here by the quick check).
    pub skipped: u64,
    /// Entries that did not fit (the destination was full): the sender sends them again.
    pub full: u64,
}

/// Says when a receiver should stop between entries.
pub type Hold = Arc<dyn Fn() -> bool + Send + Sync>;

pub struct Receiver {
    base: OwnedFd,
    prefix: Vec<u8>,
    dirs: HashMap<Vec<u8>, Arc<DirFd>>,
    cur: Option<Incoming>,
    batch: Vec<Ready>,
    batch_bytes: u64,
    /// Highest id fully handled (committed, failed, or in the batch).
    last_id: u64,
    dir_metas: Vec<(Vec<u8>, Meta, Pairs)>,
    /// Directories that could not be made (the destination was full), made again with
    /// every batch: the sender pauses and its entries come again once there is room.
    held_dirs: Vec<(Vec<u8>, Meta, Pairs)>,
    /// The extended attributes for the next entry (an Xattrs message comes before it).
    xattrs: Pairs,
    root: bool,
    /// This session's temp-name token: its temps are the only names it ever replaces or removes.
    tok: crate::temp::Token,
    /// The token of split files' temps, which every stream (and session) of a push shares.
    parts: crate::temp::Token,
    /// Tokens of the client's earlier sessions that may have left temps (a killed server's):
    /// removed where this session makes its own.
    sweep: Vec<crate::temp::Token>,
    watch: Option<Watch>,
    /// A full destination ends the session (a pull's client: it pauses, then pulls again).
    stop_when_full: bool,
    /// While it says so, the session ends between entries (a paused or cancelled pull).
    hold: Option<Hold>,
    /// A pull that moves: what it asks the sender to delete (see `moving`).
    moving: Option<moving::Move>,
    /// [`drive`] ended the session before the sender was done (full, or held).
    pub stopped_early: bool,
    /// The first entry that did not fit, and why.
    pub first_full: Option<(Vec<u8>, String)>,
    pub counts: Counts,
    /// Failures of single entries, as reported to the sender (and the sender's own).
    pub errors: Vec<String>,
}

fn os(op: &str, rel: &[u8], e: io::Error) -> String {
    format!("{op} '{}': {e}", show(rel))
}

/// ENOSPC or EDQUOT: the destination is full (the sender pauses and sends it again).
pub fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

impl Incoming {
    /// The file failed at `op` (full: the destination is full).
    fn fail_io(&mut self, op: &str, e: io::Error) {
        self.full |= is_full(&e);
        self.failed = Some(os(op, &self.rel, e));
    }
}

impl Receiver {
    /// Receives into `prefix` (checked) beneath the directory `base`.
    pub fn new(base: OwnedFd, prefix: Vec<u8>, tok: crate::temp::Token) -> Receiver {
        Receiver {
            base,
            prefix,
            dirs: HashMap::new(),
            cur: None,
            batch: Vec::new(),
            batch_bytes: 0,
            last_id: 0,
            dir_metas: Vec::new(),
            held_dirs: Vec::new(),
            xattrs: Vec::new(),
            // SAFETY: geteuid has no preconditions.
            root: unsafe { libc::geteuid() } == 0,
            parts: tok.clone(),
            tok,
            sweep: Vec::new(),
            watch: None,
            stop_when_full: false,
            hold: None,
            moving: None,
            stopped_early: false,
            first_full: None,
            counts: Counts::default(),
            errors: Vec::new(),
        }
    }

    /// Split files' temps under `parts` (the same for every session of a push).
    pub fn with_parts(mut self, parts: crate::temp::Token) -> Receiver {
        self.parts = parts;
        self
    }

    /// Removes the temps of `stale` tokens where this session writes.
    pub fn sweeping(mut self, stale: Vec<crate::temp::Token>) -> Receiver {
        self.sweep = stale;
        self
    }

    /// Stops (nothing more named) when `w` says so.
    pub fn watched(mut self, w: Watch) -> Receiver {
        self.watch = Some(w);
        self
    }

    /// Ends the session at the first entry that does not fit, once what is in the batch is
    /// named: [`drive`] returns Ok with `counts.full` above 0.
    pub fn stopping_when_full(mut self) -> Receiver {
        self.stop_when_full = true;
        self
    }

    /// Ends the session between entries once `hold` says so (what was written is named).
    pub fn held_by(mut self, hold: Hold) -> Receiver {
        self.hold = Some(hold);
        self
    }

    /// Between entries, and full (see [`Receiver::stopping_when_full`]) or held: the session
    /// ends here.
    fn stops_here(&self) -> bool {
        self.cur.is_none()
            && ((self.stop_when_full && self.counts.full > 0)
                || self.hold.as_ref().is_some_and(|h| h()))
    }

    fn stopped(&self) -> bool {
        self.watch.as_ref().is_some_and(Watch::stopped)
    }

    /// This session's temp name for `name` in `dir`, after removing the stale sessions'
    /// temps of that name.
    fn temp_at(&self, dir: RawFd, name: &[u8]) -> Vec<u8> {
        for t in &self.sweep {
            let _ = beneath::unlink_at(dir, &beneath::temp_name(name, t));
        }
        beneath::temp_name(name, &self.tok)
    }

    /// The start of an entry named with the batch: its path beneath the prefix (never the
    /// export's root), its id handled, and the attributes sent before it.
    fn begin_entry(&mut self, id: u64, rel: &[u8], what: &str) -> Result<(Vec<u8>, Pairs), String> {
        let full = self.full(rel)?;
        if full.is_empty() {
            return Err(format!("a {what} cannot replace the export's root"));
        }
        self.last_id = id;
        Ok((full, std::mem::take(&mut self.xattrs)))
    }

    /// The directory holding `full` (a path beneath base), from the cache or opened now.
    fn parent(&mut self, full: &[u8]) -> io::Result<(Arc<DirFd>, Vec<u8>)> {
        let (parent, name) = split(full);
        if let Some(d) = self.dirs.get(parent) {
            return Ok((d.clone(), name.to_vec()));
        }
        let fd = match beneath::open_dir_long(self.base.as_raw_fd(), parent) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.make_dirs(parent)?;
                beneath::open_dir_long(self.base.as_raw_fd(), parent)?
            }
            r => r?,
        };
        let st = fstat(fd.as_raw_fd())?;
        if self.dirs.len() >= DIR_CACHE {
            self.dirs.clear();
        }
        let d = Arc::new(DirFd { fd, dev: st.st_dev });
        self.dirs.insert(parent.to_vec(), d.clone());
        Ok((d, name.to_vec()))
    }

    /// Creates the missing directories of `path` from the prefix down (0700; their
    /// metadata comes with their Dir message): with several streams, a file can arrive on
    /// one before its directory's Dir on another. Nothing above the prefix is created.
    fn make_dirs(&self, path: &[u8]) -> io::Result<()> {
        if path.is_empty() || path.len() < self.prefix.len() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let (pp, name) = split(path);
        let pfd = match beneath::open_dir_long(self.base.as_raw_fd(), pp) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.make_dirs(pp)?;
                beneath::open_dir_long(self.base.as_raw_fd(), pp)?
            }
            r => r?,
        };
        match beneath::mkdir_at(pfd.as_raw_fd(), name, 0o700) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => Err(e),
            _ => Ok(()),
        }
    }

    /// Handles one message. Err: the stream is broken (protocol violation, or the peer's
    /// error); the session ends. Ok(true): the transfer is finished.
    pub fn on_msg(&mut self, m: Msg, out: &mut Vec<Msg>) -> Result<bool, String> {
        match m {
            Msg::Data { bytes } => self.data(&bytes)?,
            Msg::File {
                id,
                path,
                size,
                meta,
            } => {
                self.next_id(id)?;
                self.start_file(id, path, size, meta, None)?;
            }
            Msg::End { id, hash } => self.end_file(id, hash, out)?,
            Msg::Part {
                id,
                path,
                size,
                offset,
                len,
            } => {
                self.next_id(id)?;
                self.start_part(id, path, size, offset, len)?;
            }
            Msg::Seal {
                id,
                path,
                size,
                meta,
            } => {
                self.next_id(id)?;
                self.seal(id, path, size, meta, out)?;
            }
            Msg::Skipped { n } => self.counts.skipped += n,
            Msg::Removed { n } => self.on_removed(n)?,
            Msg::Dir { path, meta } => self.dir(path, meta, out)?,
            Msg::Flush => self.commit(out)?,
            Msg::Done => {
                if self.cur.is_some() {
                    return Err(ProtoError::Unexpected {
                        what: "Done inside a file",
                    }
                    .to_string());
                }
                self.commit(out)?;
                self.retry_dirs(out, true)?;
                let before = out.len();
                self.finish_dirs(out);
                // A move's directories go only once their metadata is durable here.
                if out.len() == before {
                    self.ask_dirs(out);
                }
                out.push(Msg::Finished);
                return Ok(true);
            }
            Msg::Error { msg } => return Err(format!("sender: {msg}")),
            Msg::Fail { msg, .. } => {
                // The sender could not read an entry: nothing of it arrives.
                self.counts.failed += 1;
                self.errors.push(format!("sender: {msg}"));
            }
            other => self.on_entry(other, out)?,
        }
        if self.batch.len() >= BATCH_FILES || self.batch_bytes >= BATCH_BYTES {
            self.commit(out)?;
        }
        Ok(false)
    }

    /// [`Receiver::on_msg`] of a Data message, leaving its bytes with the caller.
    pub fn on_data(&mut self, bytes: &[u8]) -> Result<bool, String> {
        self.data(bytes).map(|()| false)
    }

    /// Symlinks, hard links, nodes, holes and extended attributes.
    fn on_entry(&mut self, m: Msg, out: &mut Vec<Msg>) -> Result<(), String> {
        match m {
            Msg::Symlink {
                id,
                path,
                target,
                meta,
            } => {
                self.next_id(id)?;
                self.symlink(id, path, target, meta, out)
            }
            Msg::Link { id, path, target } => {
                self.next_id(id)?;
                self.link(id, path, target, out)
            }
            Msg::Node {
                id,
                path,
                rdev,
                meta,
            } => {
                self.next_id(id)?;
                self.node(id, path, rdev, meta, out)
            }
            Msg::Hole { len } => self.hole(len),
            Msg::Xattrs { pairs } => {
                if self.cur.is_some() {
                    return Err(ProtoError::Unexpected {
                        what: "attributes inside a file",
                    }
                    .to_string());
                }
                self.xattrs = pairs;
                Ok(())
            }
            other => Err(format!("unexpected message {other:?}")),
        }
    }

    /// Ids rise by one per file or symlink; anything else is a broken sender.
    fn next_id(&mut self, id: u64) -> Result<(), String> {
        if self.cur.is_some() {
            return Err(ProtoError::Unexpected {
                what: "a file inside a file",
            }
            .to_string());
        }
        if id != self.last_id + 1 {
            return Err(format!(
                "entry id {id} out of order (expected {})",
                self.last_id + 1
            ));
        }
        Ok(())
    }

    fn full(&self, rel: &[u8]) -> Result<Vec<u8>, String> {
        check_rel(rel).map_err(|e| format!("refused path: {e}"))?;
        Ok(join(&self.prefix, rel))
    }

    /// A file (or, with `part` = (file size, offset), one range of it) starts.
    fn start_file(
        &mut self,
        id: u64,
        rel: Vec<u8>,
        size: u64,
        meta: Meta,
        part: Option<(u64, u64)>,
    ) -> Result<(), String> {
        let full = self.full(&rel)?;
        if full.is_empty() {
            return Err("a file cannot replace the export's root".into());
        }
        let mut inc = Incoming {
            id,
            rel: rel.clone(),
            dir: Arc::new(DirFd {
                fd: self.base.try_clone().map_err(|e| os("dup", &rel, e))?,
                dev: 0,
            }),
            name: Vec::new(),
            tmp: Vec::new(),
            file: None,
            size,
            written: 0,
            hash: Xxh3::new(),
            meta,
            // A part carries none: the Seal brings them.
            xattrs: if part.is_some() {
                Vec::new()
            } else {
                std::mem::take(&mut self.xattrs)
            },
            sparse: false,
            failed: None,
            full: false,
            part: part.is_some(),
        };
        match self.parent(&full) {
            Ok((dir, name)) => {
                let fd = dir.fd.as_raw_fd();
                inc.tmp = match part {
                    Some(_) => beneath::temp_name(&name, &self.parts),
                    None => self.temp_at(fd, &name),
                };
                inc.name = name;
                let f = match part {
                    Some((size, offset)) => open_part(fd, &inc.tmp, size, offset),
                    None => create_temp(fd, &inc.tmp),
                };
                match f {
                    Ok(f) => inc.file = Some(f),
                    Err(e) => inc.fail_io("create", e),
                }
                inc.dir = dir;
            }
            Err(e) => inc.fail_io("open directory of", e),
        }
        self.cur = Some(inc);
        Ok(())
    }

    /// A range of a big file: written at its offset into the file's temp (created at its
    /// full size by whichever stream comes first), never named here.
    fn start_part(
        &mut self,
        id: u64,
        rel: Vec<u8>,
        size: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), String> {
        let full = self.full(&rel)?;
        if full.is_empty() || offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(format!("'{}': a part outside its file", show(&rel)));
        }
        self.start_file(id, rel, len, Meta::default(), Some((size, offset)))
    }

    /// Every part of a file was acknowledged: check its size, apply its metadata, and name
    /// it with this batch.
    fn seal(
        &mut self,
        id: u64,
        rel: Vec<u8>,
        size: u64,
        meta: Meta,
        out: &mut Vec<Msg>,
    ) -> Result<(), String> {
        let (full, x) = self.begin_entry(id, &rel, "file")?;
        let r = self.parent(&full).and_then(|(dir, name)| {
            let tmp = beneath::temp_name(&name, &self.parts);
            let f = File::from(beneath::open_at(
                dir.fd.as_raw_fd(),
                &tmp,
                libc::O_WRONLY,
                0,
            )?);
            let st = fstat(f.as_raw_fd())?;
            if st.st_size as u64 != size {
                let _ = beneath::unlink_at(dir.fd.as_raw_fd(), &tmp);
                return Err(io::Error::other(format!(
                    "{} bytes in its parts, {size} announced",
                    st.st_size
                )));
            }
            let at = (dir.fd.as_raw_fd(), &tmp[..]);
            apply_fd(f.as_raw_fd(), at, &meta, &x, self.root)?;
            Ok((dir, name, tmp))
        });
        self.finish_entry(out, id, rel, "seal", r, true);
        Ok(())
    }

    /// An entry made at its temp name (`r`) waits for the batch; one that could not be made
    /// is refused, or answered Full when the destination is full (it comes again later).
    /// `shared`: a split file's temp, which a broken session leaves for a Seal sent again.
    fn finish_entry(
        &mut self,
        out: &mut Vec<Msg>,
        id: u64,
        rel: Vec<u8>,
        op: &str,
        r: io::Result<Placed>,
        shared: bool,
    ) {
        match r {
            Ok((dir, name, tmp)) => self.batch.push(Ready {
                id,
                rel,
                dir,
                name,
                tmp,
                part: false,
                hash: None,
                shared,
            }),
            Err(e) if is_full(&e) => {
                let msg = os(op, &rel, e);
                self.no_room(out, id, rel, msg);
            }
            Err(e) => self.refuse(out, id, os(op, &rel, e)),
        }
    }

    /// An entry that will not be named: counted, and the sender told why.
    fn refuse(&mut self, out: &mut Vec<Msg>, id: u64, msg: String) {
        self.counts.failed += 1;
        out.push(Msg::Fail { id, msg });
    }

    /// An entry (0: the directory `rel`) that did not fit: not named, its temp gone; the
    /// sender pauses and sends it again.
    fn no_room(&mut self, out: &mut Vec<Msg>, id: u64, rel: Vec<u8>, msg: String) {
        self.counts.full += 1;
        if self.first_full.is_none() {
            self.first_full = Some((rel.clone(), msg.clone()));
        }
        out.push(Msg::Full { id, path: rel, msg });
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(), String> {
        let Some(inc) = self.cur.as_mut() else {
            return Err(ProtoError::Unexpected {
                what: "data outside a file",
            }
            .to_string());
        };
        if inc.failed.is_some() {
            return Ok(());
        }
        inc.written += bytes.len() as u64;
        if inc.written > inc.size {
            inc.failed = Some(format!("'{}': more data than its size", show(&inc.rel)));
            return Ok(());
        }
        inc.hash.update(bytes);
        if let Some(f) = inc.file.as_mut()
            && let Err(e) = f.write_all(bytes)
        {
            inc.fail_io("write", e);
        }
        Ok(())
    }

    fn end_file(&mut self, id: u64, hash: u64, out: &mut Vec<Msg>) -> Result<(), String> {
        let Some(mut inc) = self.cur.take() else {
            return Err(ProtoError::Unexpected {
                what: "end outside a file",
            }
            .to_string());
        };
        if inc.id != id {
            return Err(format!("end of file {id} inside file {}", inc.id));
        }
        self.last_id = id;
        if inc.failed.is_none() {
            if inc.written != inc.size {
                inc.failed = Some(format!(
                    "'{}': {} bytes arrived, {} announced (source changed?)",
                    show(&inc.rel),
                    inc.written,
                    inc.size
                ));
            } else if inc.hash.digest() != hash {
                inc.failed = Some(format!(
                    "'{}': xxh3 {:016x} of the received bytes differs from the sender's {hash:016x}",
                    show(&inc.rel),
                    inc.hash.digest()
                ));
            }
        }
        if inc.failed.is_none()
            && !inc.part
            && let Some(f) = &inc.file
        {
            let at = (inc.dir.fd.as_raw_fd(), &inc.tmp[..]);
            // A file may end in a hole: its size is set, not written.
            let r = if inc.sparse {
                f.set_len(inc.size)
            } else {
                Ok(())
            };
            let r = r.and_then(|()| apply_fd(f.as_raw_fd(), at, &inc.meta, &inc.xattrs, self.root));
            if let Err(e) = r {
                inc.fail_io("set metadata", e);
            }
        }
        if let Some(msg) = inc.failed {
            if inc.file.is_some() && !inc.part {
                let _ = beneath::unlink_at(inc.dir.fd.as_raw_fd(), &inc.tmp);
            }
            if inc.full {
                self.no_room(out, id, inc.rel, msg);
            } else {
                self.refuse(out, id, msg);
            }
            return Ok(());
        }
        self.batch_bytes += inc.size;
        self.counts.bytes += inc.size;
        self.batch.push(Ready {
            id,
            rel: inc.rel,
            dir: inc.dir,
            name: inc.name,
            tmp: inc.tmp,
            part: inc.part,
            hash: (!inc.part).then_some(hash),
            shared: inc.part,
        });
        Ok(())
    }

    fn dir(&mut self, rel: Vec<u8>, meta: Meta, out: &mut Vec<Msg>) -> Result<(), String> {
        if self.cur.is_some() {
            return Err(ProtoError::Unexpected {
                what: "a directory inside a file",
            }
            .to_string());
        }
        let x = std::mem::take(&mut self.xattrs);
        let meta = self.dir_meta(&rel, meta);
        if let Err((msg, x)) = self.make_dir(&rel, meta, x)? {
            self.held_dirs.push((rel.clone(), meta, x));
            self.no_room(out, 0, rel, msg);
        }
        Ok(())
    }

    /// Makes the directory `rel` (or finds it there) and keeps its metadata for the end.
    /// Ok(Err): the destination is full (why, and the attributes back); Err: the session ends.
    fn make_dir(
        &mut self,
        rel: &[u8],
        meta: Meta,
        x: Pairs,
    ) -> Result<Result<(), (String, Pairs)>, String> {
        let full = self.full(rel)?;
        if full.is_empty() {
            self.dir_made(rel);
            return Ok(Ok(())); // the export's root: exists, and its metadata is the operator's
        }
        let made = self
            .parent(&full)
            .map_err(|e| ("open directory of", e))
            .and_then(
                |(dir, name)| match beneath::mkdir_at(dir.fd.as_raw_fd(), &name, 0o700) {
                    Err(e) if e.raw_os_error() != Some(libc::EEXIST) => Err(("mkdir", e)),
                    r => Ok((dir, name, r)),
                },
            );
        let (dir, name, r) = match made {
            Ok(m) => m,
            Err((op, e)) if is_full(&e) => return Ok(Err((os(op, rel, e), x))),
            Err((op, e)) => return Err(os(op, rel, e)),
        };
        if r.is_err() {
            // EEXIST: a directory is fine (a rerun's, or made for an entry that came first).
            let st = beneath::stat_at(dir.fd.as_raw_fd(), &name).map_err(|e| os("stat", rel, e))?;
            if st.is_none_or(|s| s.st_mode & libc::S_IFMT != libc::S_IFDIR) {
                return Err(format!("'{}' exists and is not a directory", show(rel)));
            }
        }
        self.dir_metas.push((full, meta, x));
        self.dir_made(rel);
        Ok(Ok(()))
    }

    /// The directories a full destination held back, tried again; at the end (`last`), one
    /// still not made is a failure.
    fn retry_dirs(&mut self, out: &mut Vec<Msg>, last: bool) -> Result<(), String> {
        for (rel, meta, x) in std::mem::take(&mut self.held_dirs) {
            match self.make_dir(&rel, meta, x)? {
                Ok(()) => {}
                Err((msg, _)) if last => self.refuse(out, 0, msg),
                Err((_, x)) => self.held_dirs.push((rel, meta, x)),
            }
        }
        Ok(())
    }

    fn symlink(
        &mut self,
        id: u64,
        rel: Vec<u8>,
        target: Vec<u8>,
        meta: Meta,
        out: &mut Vec<Msg>,
    ) -> Result<(), String> {
        let (full, x) = self.begin_entry(id, &rel, "symlink")?;
        let r = self.parent(&full).and_then(|(dir, name)| {
            let fd = dir.fd.as_raw_fd();
            let tmp = self.temp_at(fd, &name);
            // The name carries this receiver's token: only a killed run of it left that name.
            let _ = beneath::unlink_at(fd, &tmp);
            beneath::symlink_at(&target, fd, &tmp)?;
            if let Err(e) = apply_at(fd, &tmp, &meta, &x, self.root) {
                let _ = beneath::unlink_at(fd, &tmp);
                return Err(e);
            }
            Ok((dir, name, tmp))
        });
        self.finish_entry(out, id, rel, "symlink", r, false);
        Ok(())
    }

    /// Group commit of the batch, then its acknowledgement. Err: the session was stopped
    /// (see [`Watch`]) before the batch was named; its temps stay for [`Receiver::abort`].
    fn commit(&mut self, out: &mut Vec<Msg>) -> Result<(), String> {
        if !self.held_dirs.is_empty() {
            self.retry_dirs(out, false)?;
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        // What this batch made durable under final names (None: no syncfs after naming).
        let mut durable = None;
        if !batch.is_empty() {
            let fail = |out: &mut Vec<Msg>, b: &Ready, msg: String| {
                out.push(Msg::Fail { id: b.id, msg });
            };
            let devs = distinct_devs(&batch);
            if let Some(e) = sync_all(&devs) {
                self.unsynced(&batch, e, out);
                out.push(Msg::Ack { upto: self.last_id });
                return Ok(());
            }
            // Last look before names change: a sender gone (or replaced) never learns of
            // them, and its next session may be writing the same names already.
            if self.stopped() {
                self.batch = batch;
                return Err(STOPPED.into());
            }
            let mut named = Vec::new();
            for b in batch.iter().filter(|b| !b.part) {
                match beneath::rename_at(b.dir.fd.as_raw_fd(), &b.tmp, &b.name) {
                    Ok(()) => named.push(b),
                    Err(e) => self.unnamed(b, e, out),
                }
            }
            if let Some(e) = sync_all(&devs) {
                for b in &named {
                    fail(
                        out,
                        b,
                        os(
                            "syncfs after naming",
                            &b.rel,
                            io::Error::from_raw_os_error(e),
                        ),
                    );
                }
                self.counts.failed += named.len() as u64;
            } else {
                self.counts.files += named.len() as u64;
                durable = Some(named.iter().map(|b| (b.rel.clone(), b.hash)).collect());
            }
        }
        out.push(Msg::Ack { upto: self.last_id });
        self.ask_removal(durable, out);
        Ok(())
    }

    /// The batch could not be made durable (syncfs: errno `e`): nothing of it is named, its
    /// temps are removed (a split file's stays: its ranges are durable parts of it). A full
    /// destination answers Full (sent again once there is room), anything else Fail.
    fn unsynced(&mut self, batch: &[Ready], e: i32, out: &mut Vec<Msg>) {
        for b in batch {
            if !b.shared {
                let _ = beneath::unlink_at(b.dir.fd.as_raw_fd(), &b.tmp);
            }
            let err = io::Error::from_raw_os_error(e);
            let full = is_full(&err);
            let msg = os("syncfs before naming", &b.rel, err);
            if full {
                self.no_room(out, b.id, b.rel.clone(), msg);
            } else {
                self.refuse(out, b.id, msg);
            }
        }
    }

    /// The final name could not be given: the temp is removed (a full destination: Full,
    /// and a split file's temp stays for the Seal sent again).
    fn unnamed(&mut self, b: &Ready, e: io::Error, out: &mut Vec<Msg>) {
        let full = is_full(&e);
        if !(full && b.shared) {
            let _ = beneath::unlink_at(b.dir.fd.as_raw_fd(), &b.tmp);
        }
        let msg = os("rename", &b.rel, e);
        if full {
            self.no_room(out, b.id, b.rel.clone(), msg);
        } else {
            self.refuse(out, b.id, msg);
        }
    }

    /// Directory metadata, deepest first (after their contents), then made durable.
    fn finish_dirs(&mut self, out: &mut Vec<Msg>) {
        let metas = std::mem::take(&mut self.dir_metas);
        for (full, meta, x) in metas.iter().rev() {
            let r = beneath::open_dir_long(self.base.as_raw_fd(), full).and_then(|fd| {
                let at = (fd.as_raw_fd(), &b"."[..]);
                apply_fd(fd.as_raw_fd(), at, meta, x, self.root)
            });
            if let Err(e) = r {
                out.push(Msg::Fail {
                    id: 0,
                    msg: os("set directory metadata", full, e),
                });
            }
        }
        if !metas.is_empty()
            && let Err(e) = beneath::syncfs(&self.base)
        {
            out.push(Msg::Fail {
                id: 0,
                msg: os("syncfs", &self.prefix, e),
            });
        }
    }

    /// On a broken session: removes the temp of a file in flight and the batch's temps
    /// (nothing of them was named).
    pub fn abort(&mut self) {
        if let Some(inc) = self.cur.take()
            && inc.file.is_some()
            && !inc.part
        {
            let _ = beneath::unlink_at(inc.dir.fd.as_raw_fd(), &inc.tmp);
        }
        for b in self.batch.drain(..).filter(|b| !b.shared) {
            let _ = beneath::unlink_at(b.dir.fd.as_raw_fd(), &b.tmp);
        }
    }
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is valid; valid fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// A new temp file. A name that exists already carries this receiver's token, so a killed
/// run of it left it (no user file can have it without guessing the token): it is replaced.
fn create_temp(dir: RawFd, tmp: &[u8]) -> io::Result<File> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    let fd = match beneath::open_at(dir, tmp, flags, 0o600) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            beneath::unlink_at(dir, tmp)?;
            beneath::open_at(dir, tmp, flags, 0o600)?
        }
        r => r?,
    };
    Ok(File::from(fd))
}

/// The shared temp of a split file, at its full size, positioned at `offset`. It carries
/// this receiver's token, so an existing one is a sibling part's (or a killed run's: every
/// range is written again before a Seal names it).
fn open_part(dir: RawFd, tmp: &[u8], size: u64, offset: u64) -> io::Result<File> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::from(beneath::open_at(
        dir,
        tmp,
        libc::O_WRONLY | libc::O_CREAT,
        0o600,
    )?);
    if fstat(f.as_raw_fd())?.st_size as u64 != size {
        f.set_len(size)?;
    }
    f.seek(SeekFrom::Start(offset))?;
    Ok(f)
}

/// One directory fd per filesystem in the batch.
fn distinct_devs(batch: &[Ready]) -> Vec<Arc<DirFd>> {
    let mut v: Vec<Arc<DirFd>> = Vec::new();
    for b in batch {
        if !v.iter().any(|d| d.dev == b.dir.dev) {
            v.push(b.dir.clone());
        }
    }
    v
}

/// syncfs of each; the first errno.
fn sync_all(devs: &[Arc<DirFd>]) -> Option<i32> {
    for d in devs {
        if let Err(e) = beneath::syncfs(&d.fd) {
            return Some(e.raw_os_error().unwrap_or(libc::EIO));
        }
    }
    None
}

fn ts(t: (i64, u32)) -> libc::timespec {
    libc::timespec {
        tv_sec: t.0,
        tv_nsec: t.1 as i64,
    }
}

/// Owner (as root), extended attributes (of `at`: the same file by its directory and name),
/// mode and times of an open file or directory, in that order: chown clears setuid bits and
/// security.capability, and an ACL sets the group bits the mode then sets again.
fn apply_fd(fd: RawFd, at: (RawFd, &[u8]), m: &Meta, x: &Pairs, root: bool) -> io::Result<()> {
    // SAFETY: valid fd.
    if root && unsafe { libc::fchown(fd, m.uid, m.gid) } < 0 {
        return Err(io::Error::last_os_error());
    }
    xattr::apply(at.0, at.1, x, root)?;
    // SAFETY: valid fd; two timespecs.
    unsafe {
        if libc::fchmod(fd, m.mode & 0o7777) < 0 {
            return Err(io::Error::last_os_error());
        }
        let t = [ts(m.atime), ts(m.mtime)];
        if libc::futimens(fd, t.as_ptr()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Owner (as root), extended attributes and times of a symlink itself (or of a node, whose
/// mode the caller sets).
fn apply_at(dir: RawFd, name: &[u8], m: &Meta, x: &Pairs, root: bool) -> io::Result<()> {
    let c = beneath::cstr(name)?;
    let t = [ts(m.atime), ts(m.mtime)];
    // SAFETY: valid fd and C string.
    if root
        && unsafe { libc::fchownat(dir, c.as_ptr(), m.uid, m.gid, libc::AT_SYMLINK_NOFOLLOW) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    xattr::apply(dir, name, x, root)?;
    // SAFETY: valid fd and C string; two timespecs.
    unsafe {
        if libc::utimensat(dir, c.as_ptr(), t.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Why a watched session stopped.
const STOPPED: &str = "the sender hung up or started a newer session: nothing more is named";

/// Runs a receiver on a connection until the sender is done (Ok), a full destination or a
/// hold stops it (Ok, `stopped_early`, what was written named and acknowledged), or the
/// session breaks or is stopped (the temps of unfinished files are removed; nothing partial
/// is ever named).
pub fn drive(c: &mut Conn, rx: &mut Receiver) -> io::Result<()> {
    let r = drive_on(c, rx);
    if r.is_err() {
        rx.abort();
    }
    r
}

fn drive_on(c: &mut Conn, rx: &mut Receiver) -> io::Result<()> {
    let mut out = Vec::new();
    let mut looked = Instant::now();
    loop {
        let m = c.recv()?;
        if looked.elapsed() >= WATCH_EVERY {
            if rx.stopped() {
                return Err(io::Error::new(io::ErrorKind::ConnectionAborted, STOPPED));
            }
            looked = Instant::now();
        }
        let r = match m {
            Msg::Data { bytes } => {
                let r = rx.on_data(&bytes);
                c.recycle(bytes);
                r
            }
            m => rx.on_msg(m, &mut out),
        };
        send_out(c, rx, &mut out)?;
        match r {
            Ok(done) => {
                if !done && rx.stops_here() {
                    // What is in the batch was written: named (and acknowledged) now.
                    rx.stopped_early = true;
                    let r = rx.commit(&mut out);
                    send_out(c, rx, &mut out)?;
                    r.map_err(io::Error::other)?;
                    c.flush()?;
                    return Ok(());
                }
                c.flush()?;
                if done {
                    return Ok(());
                }
            }
            Err(msg) if msg == STOPPED => {
                return Err(io::Error::new(io::ErrorKind::ConnectionAborted, msg));
            }
            Err(msg) => {
                let _ = c.send(&Msg::Error { msg: msg.clone() });
                let _ = c.flush();
                return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
            }
        }
    }
}

/// Sends the receiver's replies; its failures are kept in its errors too.
fn send_out(c: &mut Conn, rx: &mut Receiver, out: &mut Vec<Msg>) -> io::Result<()> {
    for o in out.drain(..) {
        if let Msg::Fail { msg, .. } | Msg::Full { msg, .. } = &o {
            rx.errors.push(msg.clone());
        }
        c.send(&o)?;
    }
    Ok(())
}
