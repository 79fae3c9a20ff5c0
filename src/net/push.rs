//! A transfer over several streams (TLS connections, one thread each): a push's client, or
//! the server of a pull or move of several streams. The walk feeds one bounded queue that
//! every stream takes from, so many small files are pipelined across the streams; a big file
//! is split into ranges (Parts) sent on whichever streams are free, and named by a Seal once
//! every range is acknowledged. Directories go on stream 0, which ends (Done: directory
//! metadata) only after every other stream is finished; hard links go last, on stream 0.
//!
//! What the sending side decides is behind [`Control`]: a push's client (`client::Client`) pauses,
//! cancels and reconnects a broken stream with backoff, sending its unacknowledged entries
//! again on the new connection while the other streams go on; a server has no reconnect (a
//! broken stream ends the session, the client runs it again). The far end names nothing
//! partial: a file whose received bytes differ from the sender's xxh3 (or one range of it) is
//! failed, not named.

use super::beneath;
use super::conn::Conn;
use super::fatal::{Fatal, RETRY_FOR, fatal, transient};
use super::frame::MAX_CHUNK;
use super::msg::{Meta, Msg};
use super::send::{
    Hooks, LinkTo, Links, NO_SOCKETS, Outcome, Sent, is_gone, is_node, meta_of, send_range,
    send_xattrs, xattrs_of,
};
use super::walk::{Item, Kind, Walker};
use super::xattr::Pairs;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Files at least this big are split across the streams (when there are several).
pub const SPLIT_MIN: u64 = 32 << 20;
/// No range is smaller than this.
const PART_MIN: u64 = 16 << 20;
/// Unacknowledged entries (or bytes) per stream before it asks for an Ack and waits.
const WINDOW_FILES: usize = 8192;
const WINDOW_BYTES: u64 = 1 << 30;
/// The first pause before a reconnect (doubling from there).
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Entries walked ahead of the streams.
const QUEUE: usize = 4096;

const STOPPED: &str = "stopped: another stream failed";
pub(super) const CANCELLED: &str =
    "cancelled (`ferry ctl JOB cancel`): run the same command again to resume";
/// While paused, a stream says Flush this often (the far end sees a live session).
const KEEPALIVE: Duration = Duration::from_secs(5);

/// What the streams ask of the side that runs them.
pub trait Control: Sync {
    /// Nothing new starts while this says so.
    fn paused(&self) -> bool {
        false
    }
    fn cancelled(&self) -> bool {
        false
    }
    /// The far end is full at `path` (`why`). true: the job pauses and the entry is sent
    /// again after resume; false: the entry failed.
    fn full(&self, path: &str, why: &str) -> bool;
    /// Files and bytes durable at the far end (progress).
    fn progress(&self, _files: u64, _bytes: u64) {}
    /// Whether a broken stream is opened again ([`Control::reconnect`]) or ends the run.
    fn reconnects(&self) -> bool;
    /// A new connection for a broken stream, whose session was `old`, broken since `since`.
    fn reconnect(
        &self,
        old: Option<crate::temp::Token>,
        since: Instant,
        backoff: &mut Duration,
    ) -> Result<Conn, Fatal>;
    /// Whether the receiver is told (Fail, id 0) of entries that could not be read here and
    /// (Skipped) how many the quick check skipped: a pull's client reports them.
    fn tells(&self) -> bool {
        false
    }
    /// A stream failed for good: the others stop now.
    fn stop_all(&self) {}
}

/// A big file being sent in ranges.
struct Split {
    item: Item,
    /// Ranges not yet acknowledged.
    left: AtomicUsize,
    failed: AtomicBool,
}

#[derive(Clone)]
enum Job {
    Dir(Vec<u8>, Meta, Pairs),
    Symlink(Item),
    File(Item),
    /// A FIFO or device node.
    Node(Item),
    /// A later name of a file sent before: sent by stream 0 once every other stream is done.
    Link(LinkTo),
    Part(Arc<Split>, u64, u64),
    Seal(Arc<Split>),
}

/// Sent, waiting for its acknowledgement.
struct Pend {
    id: u64,
    job: Job,
    size: u64,
    hash: u64,
}

/// What the streams share.
struct Shared<'a> {
    queue: Mutex<mpsc::Receiver<Job>>,
    dirs: Mutex<mpsc::Receiver<Job>>,
    hooks: &'a Mutex<dyn Hooks + Send>,
    /// Streams other than 0 that are finished.
    finished: Mutex<usize>,
    finished_cv: Condvar,
    /// A stream failed for good: the others stop.
    abort: AtomicBool,
    /// Hard links, for stream 0 to send last.
    links: Mutex<Vec<Job>>,
    streams: usize,
    ctl: &'a dyn Control,
    /// The walk's errors and skips, for stream 0 to tell (see [`Control::tells`]).
    walk_errors: Mutex<Vec<String>>,
    skipped: AtomicU64,
}

struct Stream<'a> {
    k: usize,
    conn: Conn,
    sh: &'a Shared<'a>,
    next_id: u64,
    pending: VecDeque<Pend>,
    pending_bytes: u64,
    failed: HashMap<u64, String>,
    /// Ids the far end answered Full: sent again once the job is resumed.
    full: std::collections::HashSet<u64>,
    /// To send before anything else: entries of a broken connection, Seals, entries that
    /// did not fit.
    redo: VecDeque<Job>,
    /// Stream 0: every Dir sent (sent again on a new connection: their metadata).
    dirs_sent: Vec<(Vec<u8>, Meta, Pairs)>,
    resend_dirs: bool,
    flushed: bool,
    progress: bool,
    /// The last Flush sent while paused.
    kept: Instant,
    /// Ranges acknowledged.
    parts: u64,
    out: Outcome,
    buf: Vec<u8>,
}

enum Next {
    Job(Box<Job>),
    /// The job is paused (by the user, or a full destination): nothing new starts.
    Paused,
    /// The walk goes on but nothing is queued now.
    Wait,
    /// The walk is over and the queue empty.
    Drained,
}

/// Sends what `walker` yields over `conns` (one stream each; at least one), asking `hooks`
/// which files are wanted and telling it which became durable; `ctl` steers the streams.
pub fn run(
    conns: Vec<Conn>,
    walker: Walker,
    hooks: &Mutex<dyn Hooks + Send>,
    ctl: &dyn Control,
) -> Result<Outcome, Fatal> {
    let (qtx, qrx) = mpsc::sync_channel(QUEUE);
    let (dtx, drx) = mpsc::channel();
    let sh = Shared {
        queue: Mutex::new(qrx),
        dirs: Mutex::new(drx),
        hooks,
        finished: Mutex::new(0),
        finished_cv: Condvar::new(),
        abort: AtomicBool::new(false),
        links: Mutex::new(Vec::new()),
        streams: conns.len(),
        ctl,
        walk_errors: Mutex::new(Vec::new()),
        skipped: AtomicU64::new(0),
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(k, conn)| {
                let sh = &sh;
                s.spawn(move || Stream::new(k, conn, sh).run())
            })
            .collect();
        let mut out = feed(walker, &sh, &qtx, &dtx);
        drop((qtx, dtx));
        let mut fatals = Vec::new();
        for h in handles {
            match h.join().expect("a stream thread panicked") {
                Ok(o) => merge(&mut out, o),
                Err(f) => fatals.push(f),
            }
        }
        // The stream that failed first says why; the others only stopped.
        match fatals.iter().position(|f| !f.msg.contains(STOPPED)) {
            Some(i) => Err(fatals.swap_remove(i)),
            None => fatals.pop().map_or(Ok(out), Err),
        }
    })
}

fn merge(into: &mut Outcome, o: Outcome) {
    into.files += o.files;
    into.bytes += o.bytes;
    into.skipped += o.skipped;
    into.errors.extend(o.errors);
    into.parts.extend(o.parts);
}

/// The walk: queues every wanted entry (big files as ranges); counts skips and walk errors.
fn feed(
    walker: Walker,
    sh: &Shared,
    q: &mpsc::SyncSender<Job>,
    dirs: &mpsc::Sender<Job>,
) -> Outcome {
    let mut out = Outcome::default();
    let mut links = Links::default();
    for item in walker {
        if sh.abort.load(Ordering::Relaxed) {
            break;
        }
        let gone_is_done = sh
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .gone_is_done();
        let item = match item {
            Ok(i) => i,
            Err((_, e)) if is_gone(&e) && gone_is_done => continue,
            Err((rel, e)) => {
                sh.note(&rel, &format!("read: {e}"));
                out.errors.push((rel, format!("read: {e}")));
                continue;
            }
        };
        if item.kind == Kind::Other && !is_node(&item.st) {
            sh.note(&item.rel, NO_SOCKETS);
            out.errors.push((item.rel, NO_SOCKETS.into()));
            continue;
        }
        let later = links.seen(&item);
        let wanted = {
            let mut h = sh.hooks.lock().unwrap_or_else(|p| p.into_inner());
            h.seen(&item);
            item.kind == Kind::Dir || h.wanted(&item)
        };
        if !wanted {
            out.skipped += 1;
            sh.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if let Some(target) = later {
            let l = Job::Link(LinkTo::new(&item, target));
            sh.links.lock().unwrap_or_else(|p| p.into_inner()).push(l);
            continue;
        }
        let sent = match item.kind {
            Kind::Dir => match xattrs_of(&item) {
                Ok(pairs) => {
                    let meta = meta_of(&item.st);
                    let meta = sh
                        .hooks
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .dir_meta(&item.rel, meta);
                    dirs.send(Job::Dir(item.rel, meta, pairs)).is_ok()
                }
                Err(e) => {
                    sh.note(&item.rel, &e);
                    out.errors.push((item.rel, e));
                    true
                }
            },
            _ => queue(item, sh, q),
        };
        if !sent {
            break; // every stream is gone (failed): they report why
        }
    }
    out
}

impl Shared<'_> {
    /// An entry of the walk that is not sent: told to the receiver (see [`Control::tells`]).
    fn note(&self, rel: &[u8], why: &str) {
        if self.ctl.tells() {
            let msg = format!("'{}': {why}", beneath::show(rel));
            self.walk_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(msg);
        }
    }
}

/// Queues a symlink, file (a big one as ranges) or node.
fn queue(item: Item, sh: &Shared, q: &mpsc::SyncSender<Job>) -> bool {
    let size = item.st.st_size as u64;
    match item.kind {
        Kind::Symlink => put(sh, q, Job::Symlink(item)),
        Kind::File if sh.streams > 1 && size >= SPLIT_MIN => split(item, sh, q),
        Kind::File => put(sh, q, Job::File(item)),
        _ => put(sh, q, Job::Node(item)),
    }
}

/// Queues a job, waiting while the queue is full; false: the streams stopped.
fn put(sh: &Shared, q: &mpsc::SyncSender<Job>, mut j: Job) -> bool {
    loop {
        match q.try_send(j) {
            Ok(()) => return true,
            Err(mpsc::TrySendError::Full(back)) if !sh.abort.load(Ordering::Relaxed) => {
                j = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return false,
        }
    }
}

/// Queues a big file as up to one range per stream (whole frames each, at least
/// [`PART_MIN`]).
fn split(item: Item, sh: &Shared, q: &mpsc::SyncSender<Job>) -> bool {
    let size = item.st.st_size as u64;
    let n = (size.div_ceil(PART_MIN)).min(sh.streams as u64).max(1);
    let part = size.div_ceil(n).div_ceil(MAX_CHUNK as u64) * MAX_CHUNK as u64;
    let ranges: Vec<(u64, u64)> = (0..n)
        .map(|i| (i * part, part.min(size.saturating_sub(i * part))))
        .filter(|r| r.1 > 0)
        .collect();
    let s = Arc::new(Split {
        item,
        left: AtomicUsize::new(ranges.len()),
        failed: AtomicBool::new(false),
    });
    ranges
        .into_iter()
        .all(|(off, len)| put(sh, q, Job::Part(s.clone(), off, len)))
}

impl<'a> Stream<'a> {
    fn new(k: usize, conn: Conn, sh: &'a Shared<'a>) -> Stream<'a> {
        Stream {
            k,
            conn,
            sh,
            next_id: 1,
            pending: VecDeque::new(),
            pending_bytes: 0,
            failed: HashMap::new(),
            full: Default::default(),
            redo: VecDeque::new(),
            dirs_sent: Vec::new(),
            resend_dirs: false,
            flushed: false,
            progress: false,
            kept: Instant::now(),
            parts: 0,
            out: Outcome::default(),
            buf: vec![0; MAX_CHUNK],
        }
    }

    /// Runs the stream to its end, reconnecting when the connection breaks.
    fn run(mut self) -> Result<Outcome, Fatal> {
        let mut broken_since: Option<Instant> = None;
        let mut backoff = BACKOFF_MIN;
        loop {
            let e = match self.pump() {
                Ok(()) => {
                    self.done();
                    let mut out = self.out;
                    out.parts = vec![self.parts];
                    return Ok(out);
                }
                Err(e) => e,
            };
            if self.progress {
                (broken_since, backoff) = (None, BACKOFF_MIN);
                self.progress = false;
            }
            let since = *broken_since.get_or_insert_with(Instant::now);
            let ctl = self.sh.ctl;
            if ctl.cancelled() {
                return Err(self.fail(Fatal {
                    code: crate::Exit::Cancelled,
                    msg: CANCELLED.into(),
                }));
            }
            if self.sh.abort.load(Ordering::Relaxed) {
                return Err(fatal(io::Error::other(STOPPED)));
            }
            if !transient(&e) || !ctl.reconnects() || since.elapsed() >= RETRY_FOR {
                return Err(self.fail(fatal(e)));
            }
            let acked = self.out.files;
            eprintln!(
                "ferry: {e}; stream {}: {acked} files durable so far, reconnecting",
                self.k
            );
            let old = self.conn.session.take();
            match ctl.reconnect(old, since, &mut backoff) {
                Ok(c) => self.restart(c),
                Err(f) => return Err(self.fail(f)),
            }
        }
    }

    fn fail(&self, f: Fatal) -> Fatal {
        self.sh.abort.store(true, Ordering::Relaxed);
        self.sh.finished_cv.notify_all();
        self.sh.ctl.stop_all();
        f
    }

    /// A stream other than 0 is finished: stream 0 may end once all are.
    fn done(&self) {
        if self.k > 0 {
            *self.sh.finished.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            self.sh.finished_cv.notify_all();
        }
    }

    /// A new connection: what the old one had in flight is sent again first (new ids).
    fn restart(&mut self, c: Conn) {
        self.conn = c;
        self.next_id = 1;
        self.failed.clear();
        self.full.clear();
        self.pending_bytes = 0;
        let mut redo: VecDeque<Job> = self.pending.drain(..).map(|p| p.job).collect();
        redo.append(&mut self.redo);
        self.redo = redo;
        self.resend_dirs = self.k == 0;
    }

    /// Sends until the walk is over and everything of this stream is acknowledged, then
    /// ends the session (stream 0 last).
    fn pump(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.resend_dirs) {
            for (rel, meta, pairs) in self.dirs_sent.clone() {
                if !pairs.is_empty() {
                    self.conn.send(&Msg::Xattrs { pairs })?;
                }
                self.conn.send(&Msg::Dir { path: rel, meta })?;
            }
        }
        loop {
            self.send_all()?;
            if self.k != 0 {
                break;
            }
            self.wait_others()?;
            // Every file is named at the far end now: the hard links to them can go.
            let links =
                std::mem::take(&mut *self.sh.links.lock().unwrap_or_else(|p| p.into_inner()));
            if links.is_empty() {
                break;
            }
            self.redo.extend(links);
        }
        if self.k == 0 && self.sh.ctl.tells() {
            self.tell_walk()?;
        }
        self.conn.send(&Msg::Done)?;
        self.conn.flush()?;
        while self.take_acks(true)? {}
        Ok(())
    }

    /// Stream 0 of a pull, before its Done: what the walk could not send, and how many
    /// entries the quick check skipped.
    fn tell_walk(&mut self) -> io::Result<()> {
        let notes = std::mem::take(
            &mut *self
                .sh
                .walk_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for msg in notes {
            self.conn.send(&Msg::Fail { id: 0, msg })?;
        }
        let n = self.sh.skipped.load(Ordering::Relaxed);
        if n > 0 {
            self.conn.send(&Msg::Skipped { n })?;
        }
        Ok(())
    }

    /// Sends one entry; a pull's receiver hears of what could not be read of it.
    fn send_told(&mut self, j: Job) -> io::Result<()> {
        let before = self.out.errors.len();
        self.send_job(j)?;
        if self.sh.ctl.tells() {
            for i in before..self.out.errors.len() {
                let (rel, why) = &self.out.errors[i];
                let msg = format!("'{}': {why}", beneath::show(rel));
                self.conn.send(&Msg::Fail { id: 0, msg })?;
            }
        }
        Ok(())
    }

    /// Sends until the walk is over and everything of this stream is acknowledged.
    fn send_all(&mut self) -> io::Result<()> {
        loop {
            self.check_stop()?;
            match self.next_job() {
                Next::Paused => {
                    self.ask_ack()?;
                    if self.kept.elapsed() >= KEEPALIVE {
                        self.conn.send(&Msg::Flush)?;
                        self.conn.flush()?;
                        self.kept = Instant::now();
                    }
                    self.take_acks_for(Duration::from_millis(20))?;
                }
                Next::Job(j) => {
                    self.flushed = false;
                    self.send_told(*j)?;
                    self.take_acks(false)?;
                }
                Next::Wait => {
                    self.ask_ack()?;
                    self.take_acks_for(Duration::from_millis(1))?;
                }
                Next::Drained if self.pending.is_empty() && self.redo.is_empty() => {
                    return Ok(());
                }
                Next::Drained => {
                    self.ask_ack()?;
                    self.take_acks(true)?;
                }
            }
        }
    }

    /// Err: the job was cancelled, or another stream failed for good.
    fn check_stop(&self) -> io::Result<()> {
        if self.sh.ctl.cancelled() {
            return Err(io::Error::other(CANCELLED));
        }
        if self.sh.abort.load(Ordering::Relaxed) {
            return Err(io::Error::other(STOPPED));
        }
        Ok(())
    }

    /// Stream 0: waits until every other stream is finished (its Done applies directory
    /// metadata, so nothing may be written under them after it), keeping its session alive.
    fn wait_others(&mut self) -> io::Result<()> {
        let want = self.sh.streams - 1;
        loop {
            let g = self.sh.finished.lock().unwrap_or_else(|p| p.into_inner());
            if *g >= want {
                return Ok(());
            }
            self.check_stop()?;
            let (g, _) = self
                .sh
                .finished_cv
                .wait_timeout(g, Duration::from_secs(5))
                .unwrap_or_else(|p| p.into_inner());
            let more = *g < want;
            drop(g);
            if more {
                // A Flush is answered with an Ack: the far end sees a live session.
                self.conn.send(&Msg::Flush)?;
                self.conn.flush()?;
                self.take_acks_for(Duration::ZERO)?;
            }
        }
    }

    /// Asks the far end to commit and acknowledge what it has (once per quiet spell).
    fn ask_ack(&mut self) -> io::Result<()> {
        if !self.flushed && !self.pending.is_empty() {
            self.conn.send(&Msg::Flush)?;
            self.flushed = true;
        }
        self.conn.flush()
    }

    fn next_job(&mut self) -> Next {
        if self.sh.ctl.paused() {
            return Next::Paused;
        }
        if let Some(j) = self.redo.pop_front() {
            return Next::Job(Box::new(j));
        }
        let mut dirs_open = false;
        if self.k == 0 {
            match self
                .sh
                .dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .try_recv()
            {
                Ok(j) => return Next::Job(Box::new(j)),
                Err(TryRecvError::Empty) => dirs_open = true,
                Err(TryRecvError::Disconnected) => {}
            }
        }
        match self
            .sh
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_recv()
        {
            Ok(j) => Next::Job(Box::new(j)),
            Err(TryRecvError::Empty) => Next::Wait,
            Err(TryRecvError::Disconnected) if dirs_open => Next::Wait,
            Err(TryRecvError::Disconnected) => Next::Drained,
        }
    }

    fn track(&mut self, job: Job, size: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending_bytes += size;
        self.pending.push_back(Pend {
            id,
            job,
            size,
            hash: 0,
        });
        id
    }

    fn send_job(&mut self, j: Job) -> io::Result<()> {
        match &j {
            Job::Dir(rel, meta, pairs) => {
                if self.k == 0 {
                    self.dirs_sent.push((rel.clone(), *meta, pairs.clone()));
                }
                if !pairs.is_empty() {
                    let pairs = pairs.clone();
                    self.conn.send(&Msg::Xattrs { pairs })?;
                }
                self.conn.send(&Msg::Dir {
                    path: rel.clone(),
                    meta: *meta,
                })
            }
            Job::Symlink(item) => match beneath::readlink_at(item.dir.as_raw_fd(), &item.name) {
                Ok(target) => {
                    if !self.xattrs(item)? {
                        return Ok(());
                    }
                    let (path, meta) = (item.rel.clone(), meta_of(&item.st));
                    let id = self.track(j, 0);
                    self.conn.send(&Msg::Symlink {
                        id,
                        path,
                        target,
                        meta,
                    })
                }
                Err(e) => {
                    let rel = item.rel.clone();
                    self.out.errors.push((rel, format!("readlink: {e}")));
                    Ok(())
                }
            },
            Job::File(item) => self.send_file(item.clone(), j),
            Job::Node(item) => {
                if !self.xattrs(item)? {
                    return Ok(());
                }
                let (path, rdev, meta) = (item.rel.clone(), item.st.st_rdev, meta_of(&item.st));
                let id = self.track(j, 0);
                self.conn.send(&Msg::Node {
                    id,
                    path,
                    rdev,
                    meta,
                })
            }
            Job::Link(l) => {
                let (path, target) = (l.rel.clone(), l.target.clone());
                let id = self.track(j, 0);
                self.conn.send(&Msg::Link { id, path, target })
            }
            Job::Part(s, off, len) => self.send_part(s.clone(), *off, *len, j),
            Job::Seal(s) => self.send_seal(s.clone(), j),
        }
    }

    /// Sends the entry's extended attributes ahead of it; false: they could not be read
    /// (recorded; the entry is not sent).
    fn xattrs(&mut self, item: &Item) -> io::Result<bool> {
        send_xattrs(&mut self.conn, item, &mut self.out.errors)
    }

    /// Opens a source file, or records why not (a move's file gone since the walk is done:
    /// an earlier session removed it once its copy was durable).
    fn open(&mut self, item: &Item) -> Option<std::fs::File> {
        match beneath::open_at(item.dir.as_raw_fd(), &item.name, libc::O_RDONLY, 0) {
            Ok(fd) => Some(std::fs::File::from(fd)),
            Err(e) if is_gone(&e) && self.gone_is_done() => None,
            Err(e) => {
                self.out
                    .errors
                    .push((item.rel.clone(), format!("open: {e}")));
                None
            }
        }
    }

    fn gone_is_done(&self) -> bool {
        self.sh
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .gone_is_done()
    }

    /// File, Data..., End with the xxh3 of exactly the bytes sent.
    fn send_file(&mut self, item: Item, j: Job) -> io::Result<()> {
        let Some(f) = self.open(&item) else {
            return Ok(());
        };
        if !self.xattrs(&item)? {
            return Ok(());
        }
        let size = item.st.st_size as u64;
        let id = self.track(j, size);
        self.conn.send(&Msg::File {
            id,
            path: item.rel.clone(),
            size,
            meta: meta_of(&item.st),
        })?;
        self.body(id, &f, 0, size)
    }

    fn body(&mut self, id: u64, f: &std::fs::File, off: u64, len: u64) -> io::Result<()> {
        let (hash, err) = send_range(&mut self.conn, f, off, len, &mut self.buf)?;
        if let Some(e) = err {
            self.failed.insert(id, e);
        }
        if let Some(p) = self.pending.back_mut() {
            p.hash = hash;
        }
        self.conn.send(&Msg::End { id, hash })
    }

    fn send_part(&mut self, s: Arc<Split>, off: u64, len: u64, j: Job) -> io::Result<()> {
        if s.failed.load(Ordering::Relaxed) {
            return Ok(()); // another range failed: this file is not named anyway
        }
        let Some(f) = self.open(&s.item) else {
            s.failed.store(true, Ordering::Relaxed);
            return Ok(());
        };
        let id = self.track(j, len);
        self.conn.send(&Msg::Part {
            id,
            path: s.item.rel.clone(),
            size: s.item.st.st_size as u64,
            offset: off,
            len,
        })?;
        self.body(id, &f, off, len)
    }

    /// Every range is durable at the far end: name the file, unless the source changed
    /// while its ranges were read.
    fn send_seal(&mut self, s: Arc<Split>, j: Job) -> io::Result<()> {
        let it = &s.item;
        let now = beneath::stat_at(it.dir.as_raw_fd(), &it.name)
            .ok()
            .flatten();
        let unchanged = now.is_some_and(|st| {
            (st.st_size, st.st_mtime, st.st_mtime_nsec)
                == (it.st.st_size, it.st.st_mtime, it.st.st_mtime_nsec)
        });
        if !unchanged {
            let rel = it.rel.clone();
            self.out
                .errors
                .push((rel, "changed while it was sent; not named".into()));
            return Ok(());
        }
        if !self.xattrs(&s.item)? {
            s.failed.store(true, Ordering::Relaxed);
            return Ok(());
        }
        let it = &s.item;
        let (path, size, meta) = (it.rel.clone(), it.st.st_size as u64, meta_of(&it.st));
        let id = self.track(j, 0);
        self.conn.send(&Msg::Seal {
            id,
            path,
            size,
            meta,
        })
    }

    /// Takes the replies that arrived (`wait`: at least one). Asks for an Ack and waits
    /// when the window is full. Ok(false): the far end said Finished.
    fn take_acks(&mut self, wait: bool) -> io::Result<bool> {
        let full = self.pending.len() >= WINDOW_FILES || self.pending_bytes >= WINDOW_BYTES;
        if full {
            self.conn.send(&Msg::Flush)?;
            self.conn.flush()?;
        }
        let mut first = wait || full;
        loop {
            let m = if std::mem::take(&mut first) {
                Some(self.conn.recv()?)
            } else {
                self.conn.try_recv()?
            };
            match m {
                None => return Ok(true),
                Some(m) => {
                    if !self.reply(m)? {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Takes replies for up to `t` (none: what is here already).
    fn take_acks_for(&mut self, t: Duration) -> io::Result<()> {
        if let Some(m) = self.conn.recv_timeout(t)? {
            self.reply(m)?;
            self.take_acks(false)?;
        }
        Ok(())
    }

    /// One reply. Ok(false): Finished.
    fn reply(&mut self, m: Msg) -> io::Result<bool> {
        match m {
            Msg::Ack { upto } => self.acked(upto),
            Msg::Fail { id: 0, msg } => {
                self.out.errors.push((Vec::new(), format!("remote: {msg}")))
            }
            Msg::Fail { id, msg } => {
                self.failed.insert(id, format!("remote: {msg}"));
            }
            Msg::Full { id, path, msg } => {
                let shown = beneath::show(&path).to_string();
                if self.sh.ctl.full(&shown, &msg) {
                    // id 0: a directory, which the far end makes again itself.
                    if id != 0 {
                        self.full.insert(id);
                    }
                } else if id == 0 {
                    self.out.errors.push((path, format!("remote: {msg}")));
                } else {
                    self.failed.insert(id, format!("remote: {msg}"));
                }
            }
            Msg::Finished => {
                for p in self.pending.drain(..) {
                    self.out
                        .errors
                        .push((rel_of(&p.job), "never acknowledged".into()));
                }
                return Ok(false);
            }
            other => self.request(other)?,
        }
        Ok(true)
    }

    /// A request of the receiver's between acknowledgements (a move's Remove), answered.
    fn request(&mut self, m: Msg) -> io::Result<()> {
        let r = self
            .sh
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .request(m);
        match r {
            Ok(replies) => {
                for r in &replies {
                    self.conn.send(r)?;
                }
                self.conn.flush()
            }
            Err(other) => Err(self.conn.refused(other)),
        }
    }

    fn acked(&mut self, upto: u64) {
        let mut durable = Vec::new();
        // Links are journaled with their file's size, but no bytes of them were sent.
        let mut unsent = 0;
        while self.pending.front().is_some_and(|p| p.id <= upto) {
            let p = self.pending.pop_front().expect("front exists");
            self.pending_bytes -= p.size;
            self.progress = true;
            if self.full.remove(&p.id) {
                // Did not fit: nothing of it is named there; it goes again after resume.
                self.failed.remove(&p.id);
                self.redo.push_back(p.job);
                continue;
            }
            let failed = self.failed.remove(&p.id);
            match (p.job, failed) {
                (Job::Part(s, ..), Some(msg)) => {
                    if !s.failed.swap(true, Ordering::Relaxed) {
                        self.lost(&s.item.rel);
                        self.out.errors.push((s.item.rel.clone(), msg));
                    }
                }
                (job, Some(msg)) => {
                    self.lost(&rel_of(&job));
                    self.out.errors.push((rel_of(&job), msg));
                }
                (Job::Part(s, ..), None) => {
                    self.parts += 1;
                    let last = s.left.fetch_sub(1, Ordering::AcqRel) == 1;
                    if last && !s.failed.load(Ordering::Relaxed) {
                        self.redo.push_back(Job::Seal(s));
                    }
                }
                (Job::Seal(s), None) => durable.push(sent(&s.item, None)),
                (Job::Link(l), None) => {
                    unsent += l.size;
                    durable.push(l.sent());
                }
                (job @ (Job::File(_) | Job::Symlink(_) | Job::Node(_)), None) => {
                    if let Job::File(i) | Job::Symlink(i) | Job::Node(i) = &job {
                        durable.push(sent(i, Some(p.hash)));
                    }
                }
                (Job::Dir(..), None) => {}
            }
        }
        let bytes = durable.iter().map(|d| d.size).sum::<u64>() - unsent;
        self.out.files += durable.len() as u64;
        self.out.bytes += bytes;
        self.sh.ctl.progress(durable.len() as u64, bytes);
        if !durable.is_empty() {
            let mut h = self.sh.hooks.lock().unwrap_or_else(|p| p.into_inner());
            h.durable(&durable);
        }
    }
}

impl Stream<'_> {
    fn lost(&self, rel: &[u8]) {
        let mut h = self.sh.hooks.lock().unwrap_or_else(|p| p.into_inner());
        h.lost(rel);
    }
}

fn sent(i: &Item, hash: Option<u64>) -> Sent {
    Sent {
        id: 0,
        rel: i.rel.clone(),
        size: if i.kind == Kind::File {
            i.st.st_size as u64
        } else {
            0
        },
        mtime: (i.st.st_mtime, i.st.st_mtime_nsec as u32),
        hash,
    }
}

fn rel_of(j: &Job) -> Vec<u8> {
    match j {
        Job::Dir(rel, ..) => rel.clone(),
        Job::Link(l) => l.rel.clone(),
        Job::Symlink(i) | Job::File(i) | Job::Node(i) => i.rel.clone(),
        Job::Part(s, ..) | Job::Seal(s) => s.item.rel.clone(),
    }
}
