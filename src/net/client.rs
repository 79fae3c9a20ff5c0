//! The client side of `ferry copy|verify` with a `ferry://` end: push (local → remote), pull
//! (remote → local, reconnecting when the connection breaks) and verify.

use super::beneath;
use super::conn::Conn;
use super::fatal::{BACKOFF_MAX, Fatal, RETRY_FOR, fatal, transient};
use super::msg::{MAX_STALE, MAX_STREAMS, Meta, Msg, Op};
use super::quick::QuickCheck;
use super::recv::{self, Receiver};
use super::send::{Hooks, Outcome, Sent};
use super::url::Remote;
use super::verify::Listing;
use super::walk::{Item, Kind, Walker};
use super::{session, tls, verify};
use crate::coord::checkpoint::{Done, StateDir, absolute};
use crate::temp::Token;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn usage(msg: impl Into<String>) -> Fatal {
    Fatal {
        code: crate::Exit::Usage,
        msg: msg.into(),
    }
}

pub struct Options {
    pub tls_dir: PathBuf,
    pub state_dir: PathBuf,
    pub fresh: bool,
    /// TLS connections a push uses at once (at least 1).
    pub streams: usize,
    /// A push's sessions (filled by [`push`]).
    pub sessions: Sessions,
    /// The push's job state, events and control socket.
    pub steer: Arc<super::steer::Steer>,
}

/// The temp tokens of a push job's sessions, kept in its state dir (`sessions`, one a line,
/// each durable before its session carries anything): a reconnect or a rerun names the
/// earlier ones stale, so the server stops those still running and sweeps what they left.
#[derive(Default)]
pub struct Sessions(std::sync::Mutex<Known>, std::sync::atomic::AtomicBool);

#[derive(Default)]
struct Known {
    file: Option<PathBuf>,
    /// Sessions given up on: an earlier run's, and this run's broken connections'.
    stale: Vec<Token>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job's earlier runs' sessions become stale (the newest [`MAX_STALE`]).
    fn attach(&self, sd: &StateDir) {
        let file = sd.dir.join("sessions");
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let mut k = self.lock();
        k.stale = text.lines().filter_map(Token::parse).collect();
        let over = k.stale.len().saturating_sub(MAX_STALE);
        k.stale.drain(..over);
        k.file = Some(file);
    }

    /// A session was opened: the server is there (a later refusal is a restart).
    fn reach(&self) {
        self.1.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn reached(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn stale(&self) -> Vec<Token> {
        self.lock().stale.clone()
    }

    /// Keeps a new session's token, durably, before the session is used.
    fn record(&self, t: &Token) -> io::Result<()> {
        use std::io::Write;
        let k = self.lock();
        let Some(p) = &k.file else { return Ok(()) };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", p.display())))?;
        f.write_all(format!("{}\n", t.as_str()).as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", p.display())))
    }

    /// A session this run gave up on (its connection broke).
    fn dead(&self, t: Token) {
        let mut k = self.lock();
        if !k.stale.contains(&t) {
            k.stale.push(t);
        }
        let over = k.stale.len().saturating_sub(MAX_STALE);
        k.stale.drain(..over);
    }

    /// The push completed: no session of it left anything.
    fn clear(&self) {
        let mut k = self.lock();
        k.stale.clear();
        if let Some(p) = &k.file {
            let _ = crate::coord::durable::replace(p, b"", 0o600);
        }
    }
}

/// Sends Open and reads the server's answer; a push session's token is recorded first.
fn open_on(
    mut c: Conn,
    r: &Remote,
    op: Op,
    o: &Options,
) -> io::Result<Result<(Conn, bool, bool), Fatal>> {
    let stale = if op == Op::Push {
        o.sessions.stale()
    } else {
        Vec::new()
    };
    let streams = if matches!(op, Op::Pull | Op::Move) {
        o.streams.clamp(1, MAX_STREAMS as usize) as u16
    } else {
        1
    };
    let open = Msg::Open {
        op,
        export: r.export.as_bytes().to_vec(),
        path: r.path.clone(),
        stale,
        streams,
    };
    c.send(&open)?;
    c.flush()?;
    Ok(match c.recv()? {
        Msg::Ready {
            is_dir,
            exists,
            token,
        } => {
            if let Some(t) = &token
                && op == Op::Push
            {
                o.sessions.record(t)?;
            }
            o.sessions.reach();
            c.session = token;
            Ok((c, is_dir, exists))
        }
        Msg::Error { msg } => Err(usage(format!("{r}: {msg}"))),
        other => Err(Fatal {
            code: crate::Exit::Failed,
            msg: format!("{r}: unexpected {other:?}"),
        }),
    })
}

type Opened = (Conn, bool, bool);

/// Connects one more stream of the pull session `token` opened.
fn join(r: &Remote, o: &Options, token: &Token) -> io::Result<Result<Conn, Fatal>> {
    let cfg = tls::client_config(&o.tls_dir)?;
    let mut c = session::connect(&r.host, r.port, cfg)?;
    c.send(&Msg::Join {
        token: token.clone(),
    })?;
    c.flush()?;
    Ok(match c.recv()? {
        Msg::Ready { .. } => Ok(c),
        Msg::Error { msg } => Err(usage(format!("{r}: {msg}"))),
        other => Err(Fatal {
            code: crate::Exit::Failed,
            msg: format!("{r}: a joined stream got {other:?}"),
        }),
    })
}

/// Connects and opens a session; the server's Ready (is_dir, exists). Err: the connection
/// (worth a retry if transient); Ok(Err): the server refused.
fn try_open(r: &Remote, op: Op, o: &Options) -> io::Result<Result<Opened, Fatal>> {
    let cfg = tls::client_config(&o.tls_dir)?;
    let c = session::connect(&r.host, r.port, cfg)?;
    open_on(c, r, op, o)
}

/// [`try_open`] with no retry (verify).
fn open(r: &Remote, op: Op, o: &Options) -> Result<Opened, Fatal> {
    try_open(r, op, o).map_err(fatal)?
}

/// A step of a push or move outside its streams (opening one, listing the far end, the
/// move's verify), tried again with backoff while the connection breaks or the server is away
/// (killed, restarting), for [`RETRY_FOR`]. A server that refused the very first connection
/// is not waited for (nothing listens there).
fn retrying<T>(
    o: &Options,
    mut step: impl FnMut() -> io::Result<Result<T, Fatal>>,
) -> Result<T, Fatal> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(500);
    loop {
        match step() {
            Ok(r) => return r,
            Err(e)
                if transient(&e)
                    && started.elapsed() < RETRY_FOR
                    && (o.sessions.reached() || e.kind() != io::ErrorKind::ConnectionRefused) =>
            {
                eprintln!("ferry: {e}; retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Err(e) => return Err(fatal(e)),
        }
    }
}

/// `SRC/.` or `.`: the directory's contents, not the directory.
fn is_contents(p: &Path) -> bool {
    let b = p.as_os_str().as_bytes();
    b == b"." || b.ends_with(b"/.")
}

/// (directory holding `p`, its name there); `SRC/.` is (SRC, ".").
fn local_root(p: &Path) -> io::Result<(Arc<OwnedFd>, Vec<u8>)> {
    let open = |d: &Path| {
        std::fs::File::open(if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        })
        .map(|f| Arc::new(OwnedFd::from(f)))
    };
    if is_contents(p) {
        return Ok((open(p)?, b".".to_vec()));
    }
    let name = p
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    Ok((
        open(p.parent().unwrap_or(Path::new(".")))?,
        name.as_bytes().to_vec(),
    ))
}

/// Where each source lands under the remote path (cp -r rules), fixed by the first run.
fn targets(sources: &[PathBuf], is_dir: bool, exists: bool) -> Result<Vec<Vec<u8>>, Fatal> {
    let mut out = Vec::new();
    for s in sources {
        let st =
            std::fs::symlink_metadata(s).map_err(|e| usage(format!("'{}': {e}", s.display())))?;
        let t = if is_contents(s) {
            if exists && !is_dir {
                return Err(usage("destination is not a directory"));
            }
            Vec::new()
        } else if is_dir {
            s.file_name()
                .map(|n| n.as_bytes().to_vec())
                .unwrap_or_default()
        } else if sources.len() == 1 && (!exists || !st.is_dir()) {
            Vec::new()
        } else if !exists {
            return Err(usage(
                "several sources need an existing destination directory",
            ));
        } else {
            return Err(usage("destination is not a directory"));
        };
        out.push(t);
    }
    Ok(out)
}

/// The journal of a push: what became durable at the far end, and the fixed targets.
struct Journal {
    sd: StateDir,
    /// Durable at the far end by an earlier run or attempt (skipped when unchanged).
    done: HashMap<PathBuf, Done>,
    /// What the far end has already (the remote quick check).
    quick: QuickCheck,
    /// Directory times a killed move saw before it removed sources (`dirs.json`).
    kept_dirs: HashMap<Vec<u8>, Meta>,
    /// Every directory as sent by this run.
    sent_dirs: Vec<(Vec<u8>, Meta)>,
}

fn rel_key(rel: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(rel))
}

impl Hooks for Journal {
    fn wanted(&mut self, item: &Item) -> bool {
        let journaled = self.done.get(&rel_key(&item.rel)).is_some_and(|d| {
            item.kind == Kind::File
                && d.size == item.st.st_size as u64
                && d.mtime == (item.st.st_mtime, item.st.st_mtime_nsec)
        });
        !journaled && !self.quick.skips(item)
    }

    fn durable(&mut self, files: &[Sent]) {
        let recs: Vec<(PathBuf, Done)> = files
            .iter()
            .map(|f| {
                let d = Done {
                    size: f.size,
                    mtime: (f.mtime.0, f.mtime.1 as i64),
                    hash: f.hash,
                };
                (rel_key(&f.rel), d)
            })
            .collect();
        if let Err(e) = self.sd.append(&recs) {
            // Not fatal: those files are durable remotely, a rerun merely sends them again.
            eprintln!("ferry: journal: {e}");
        }
        self.done.extend(recs);
    }

    fn dir_meta(&mut self, rel: &[u8], meta: Meta) -> Meta {
        let m = match self.kept_dirs.get(rel) {
            Some(k) => Meta {
                atime: k.atime,
                mtime: k.mtime,
                ..meta
            },
            None => meta,
        };
        self.sent_dirs.push((rel.to_vec(), m));
        m
    }
}

/// The directories' metadata a move sent, kept in its state dir before it removes anything
/// from them (removing entries changes a directory's times): a rerun after a kill sends these.
const KEPT_DIRS: &str = "dirs.json";

fn load_kept_dirs(sd: &StateDir) -> HashMap<Vec<u8>, Meta> {
    let body = std::fs::read(sd.dir.join(KEPT_DIRS)).unwrap_or_default();
    serde_json::from_slice::<Vec<(Vec<u8>, Meta)>>(&body)
        .map(|v| v.into_iter().collect())
        .unwrap_or_default()
}

fn job_id(sources: &[PathBuf], r: &Remote) -> String {
    let mut key = format!("push {r}");
    for s in sources {
        key.push('\0');
        key.push_str(&absolute(s).to_string_lossy());
    }
    format!("net-{:016x}", xxhash_rust::xxh3::xxh3_64(key.as_bytes()))
}

fn load_targets(sd: &StateDir) -> Option<Vec<Vec<u8>>> {
    serde_json::from_slice(&std::fs::read(sd.dir.join("targets.json")).ok()?).ok()
}

fn save_targets(sd: &StateDir, t: &[Vec<u8>]) -> io::Result<()> {
    save_json(sd, "targets.json", t)
}

/// `name` in the job's state dir, durably (temp, fsync, rename, directory fsync).
fn save_json<T: serde::Serialize + ?Sized>(sd: &StateDir, name: &str, v: &T) -> io::Result<()> {
    let body = serde_json::to_vec(v).map_err(io::Error::other)?;
    crate::coord::durable::replace(&sd.dir.join(name), &body, 0o666)
}

fn local_roots(sources: &[PathBuf], t: Vec<Vec<u8>>) -> Result<Vec<Root>, Fatal> {
    let mut roots = Vec::new();
    for (s, rel) in sources.iter().zip(t) {
        let (dir, name) = local_root(s).map_err(|e| usage(format!("'{}': {e}", s.display())))?;
        roots.push((dir, name, rel));
    }
    Ok(roots)
}

type Root = (Arc<OwnedFd>, Vec<u8>, Vec<u8>);

/// Push: sends `sources` into the remote path over `o.streams` connections; resumable
/// through the journal and the remote quick check. A broken connection is reopened with
/// backoff (for [`RETRY_FOR`]) and its stream goes on: what was acknowledged is done, files
/// in flight are sent again (the receiver named none of them).
pub fn push(sources: &[PathBuf], r: &Remote, o: &Options) -> Result<Pushed, Fatal> {
    for s in sources {
        std::fs::symlink_metadata(s).map_err(|e| usage(format!("'{}': {e}", s.display())))?;
    }
    let id = job_id(sources, r);
    let sd = StateDir::open(&o.state_dir, &id)
        .map_err(|e| usage(format!("state dir {}: {e}", o.state_dir.display())))?;
    o.steer.attach(&id, &sd.dir);
    if o.fresh {
        let _ = sd.reset();
        let _ = std::fs::remove_file(sd.dir.join("targets.json"));
        let _ = std::fs::remove_file(sd.dir.join(KEPT_DIRS));
    }
    o.sessions.attach(&sd);
    let (c, is_dir, exists) = retrying(o, || try_open(r, Op::Push, o))?;
    let t = match load_targets(&sd) {
        Some(t) if t.len() == sources.len() => t,
        _ => {
            let t = targets(sources, is_dir, exists)?;
            save_targets(&sd, &t).map_err(|e| usage(format!("state dir: {e}")))?;
            t
        }
    };
    let quick = if exists && !o.fresh {
        remote_listing(r, o, &t)?
    } else {
        Listing::new()
    };
    let done = sd.load_journal().unwrap_or_default();
    let j = std::sync::Mutex::new(Journal {
        kept_dirs: load_kept_dirs(&sd),
        sd,
        done,
        quick: QuickCheck(quick),
        sent_dirs: Vec::new(),
    });
    let mut conns = vec![c];
    for _ in 1..o.streams.max(1) {
        conns.push(retrying(o, || try_open(r, Op::Push, o))?.0);
    }
    let walker = Walker::new(local_roots(sources, t.clone())?);
    o.steer.running();
    let ctl = Client { remote: r, opts: o };
    let out = super::push::run(conns, walker, &j, &ctl)?;
    let j = j.into_inner().unwrap_or_else(|p| p.into_inner());
    if out.errors.is_empty() {
        let _ = j.sd.truncate_journal();
        o.sessions.clear();
    }
    Ok(Pushed {
        out,
        // An interrupted run's journaled files count too: a rerun of a move skips them
        // (durable there already) and must still remove their sources.
        durable: j.done,
        roots: local_roots(sources, t)?,
        sd: j.sd,
        dirs: j.sent_dirs,
    })
}

/// The far end's entries under each target (size, type, times: no hashes), keyed by wire
/// path; a target that does not exist there lists nothing.
fn remote_listing(r: &Remote, o: &Options, targets: &[Vec<u8>]) -> Result<Listing, Fatal> {
    let mut all = Listing::new();
    for t in targets {
        let mut at = r.clone();
        at.path = beneath::join(&r.path, t);
        let list = retrying(o, || {
            let mut c = match try_open(&at, Op::List, o)? {
                Ok((c, _, _)) => c,
                Err(f) if f.code == crate::Exit::Usage && f.msg.contains("no such file") => {
                    return Ok(Ok(Listing::new()));
                }
                Err(f) => return Ok(Err(f)),
            };
            let (list, _) = verify::receive(&mut c)?;
            c.close();
            Ok(Ok(list))
        })?;
        all.extend(list.into_iter().map(|(p, e)| (beneath::join(t, &p), e)));
    }
    Ok(all)
}

/// Opens the session again, waiting with doubling pauses while the peer is away; `old`, the
/// broken session, is named stale (the server stops it if it still runs).
pub(super) fn reconnect(
    r: &Remote,
    o: &Options,
    old: Option<Token>,
    started: Instant,
    backoff: &mut Duration,
) -> Result<Conn, Fatal> {
    if let Some(t) = old {
        o.sessions.dead(t);
    }
    loop {
        std::thread::sleep(*backoff);
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        let cfg = tls::client_config(&o.tls_dir).map_err(fatal)?;
        let attempt =
            session::connect(&r.host, r.port, cfg).and_then(|c| open_on(c, r, Op::Push, o));
        match attempt {
            Ok(Ok((c, _, _))) => return Ok(c),
            Ok(Err(f)) => return Err(f),
            Err(e) if transient(&e) && started.elapsed() < RETRY_FOR => {
                eprintln!("ferry: {e}; retrying in {backoff:?}");
            }
            Err(e) => return Err(fatal(e)),
        }
    }
}

/// A finished push: the outcome, what is durable at the far end (this run's acknowledged
/// files and those journaled by an interrupted earlier run), and the local roots.
pub struct Pushed {
    pub out: Outcome,
    pub durable: HashMap<PathBuf, Done>,
    roots: Vec<Root>,
    /// The job's state dir, still locked: no other run starts while sources are removed.
    sd: StateDir,
    /// The directories as sent.
    dirs: Vec<(Vec<u8>, Meta)>,
}

/// Move: push, then delete each source whose copy the far end holds with the same xxh3
/// (listed by a verify session after the push: durable, and read back there) and that is
/// unchanged since it was sent; then the emptied source directories, bottom-up, each
/// parent fsynced.
pub fn move_push(sources: &[PathBuf], r: &Remote, o: &Options) -> Result<Outcome, Fatal> {
    let p = push(sources, r, o)?;
    let mut out = p.out;
    let (theirs, errs) = retrying(o, || {
        let mut c = match try_open(r, Op::Verify, o)? {
            Ok((c, _, _)) => c,
            Err(f) => return Ok(Err(f)),
        };
        let listed = verify::receive(&mut c)?;
        c.close();
        Ok(Ok(listed))
    })?;
    out.errors.extend(errs.into_iter().map(|e| (Vec::new(), e)));
    save_json(&p.sd, KEPT_DIRS, &p.dirs).map_err(|e| usage(format!("state dir: {e}")))?;
    let mut dirs = Vec::new();
    let mut removed = 0u64;
    for item in Walker::new(p.roots) {
        let Ok(item) = item else { continue };
        if item.kind == Kind::Dir {
            dirs.push(item);
            continue;
        }
        if !removable(&item, &p.durable, theirs.get(&item.rel)) {
            continue;
        }
        match beneath::unlink_at(item.dir.as_raw_fd(), &item.name) {
            Ok(()) => removed += 1,
            Err(e) => out.errors.push((item.rel, format!("remove source: {e}"))),
        }
    }
    remove_dirs(dirs, &mut out);
    if out.errors.is_empty() {
        let _ = std::fs::remove_file(p.sd.dir.join(KEPT_DIRS));
    }
    out.removed = removed;
    Ok(out)
}

/// Whether a source may go: the far end lists it (after a syncfs there: durably) the same,
/// and it is unchanged since it was sent. A file journaled as sent is compared by the hash it
/// was sent with; one this run skipped because the far end had it already (its killed run
/// named it there, unacknowledged) by the hash of the source read now.
fn removable(
    item: &Item,
    durable: &HashMap<PathBuf, Done>,
    remote: Option<&verify::Entry>,
) -> bool {
    let Some(e) = remote else { return false };
    match item.kind {
        Kind::File => {
            let (size, mtime) = (
                item.st.st_size as u64,
                (item.st.st_mtime, item.st.st_mtime_nsec),
            );
            match durable.get(&rel_key(&item.rel)) {
                Some(d) if d.size == size && d.mtime == mtime => {
                    e.size == d.size && Some(e.hash) == sent_hash(item, d)
                }
                _ => {
                    let there = (e.meta.mtime.0, e.meta.mtime.1 as i64);
                    e.size == size && there == mtime && Some(e.hash) == source_hash(item)
                }
            }
        }
        Kind::Symlink => {
            beneath::readlink_at(item.dir.as_raw_fd(), &item.name)
                .ok()
                .as_ref()
                == Some(&e.link)
        }
        Kind::Other => {
            e.meta.mode & libc::S_IFMT == item.st.st_mode & libc::S_IFMT
                && e.size == item.st.st_rdev
        }
        Kind::Dir => false,
    }
}

fn source_hash(item: &Item) -> Option<u64> {
    let fd = beneath::open_at(item.dir.as_raw_fd(), &item.name, libc::O_RDONLY, 0).ok()?;
    verify::hash_fd(fd).ok()
}

/// The xxh3 a file was sent with; a file sent in ranges has none, so its source (unchanged
/// since: size and mtime were checked) is read again.
fn sent_hash(item: &Item, d: &Done) -> Option<u64> {
    d.hash.or_else(|| source_hash(item))
}

/// Removes emptied source directories, deepest first; a non-empty one stays (its failed or
/// skipped entries are in it). `SRC/.` itself stays, emptied.
fn remove_dirs(dirs: Vec<Item>, out: &mut Outcome) {
    for d in dirs.into_iter().rev() {
        if d.name == b"." {
            continue;
        }
        let c = match beneath::cstr(&d.name) {
            Ok(c) => c,
            Err(_) => continue,
        };
        // SAFETY: valid dir fd and C string.
        let r = unsafe { libc::unlinkat(d.dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOTEMPTY) && e.raw_os_error() != Some(libc::EEXIST) {
                out.errors
                    .push((d.rel, format!("remove source directory: {e}")));
            }
            continue;
        }
        // SAFETY: valid fd.
        if unsafe { libc::fsync(d.dir.as_raw_fd()) } < 0 {
            let e = io::Error::last_os_error();
            out.errors
                .push((d.rel, format!("fsync source directory: {e}")));
        }
    }
}

/// Pull: receives the remote path into `dst` (cp -r rules). What is already here under a
/// final name with the far end's size and mtime is listed to the server first and not sent
/// again (the quick check), so a rerun of an interrupted or a completed pull resumes. A full
/// local disk pauses the job (`destination_full`), as `ferry ctl JOB pause` does: the session
/// ends once what was written is named, and `ferry ctl JOB resume` pulls the rest in a new one.
pub fn pull(r: &Remote, dst: &Path, o: &Options) -> Result<Outcome, Fatal> {
    pull_job(r, dst, o, false)
}

/// Move from the far end: a pull whose every batch, once durable here under final names
/// (each file's received xxh3 matched the sender's), is named back to the server, which
/// deletes those sources if unchanged since it sent them, and at the end the emptied source
/// directories (see `net::remove`). Nothing is listed first: whatever is still at the source
/// is sent (again) and then removed, so a rerun of a killed move finishes it; the directory
/// times first received are kept in the job's state for such a rerun.
pub fn move_pull(r: &Remote, dst: &Path, o: &Options) -> Result<Outcome, Fatal> {
    pull_job(r, dst, o, true)
}

/// The state of a pull job across its sessions.
struct PullJob<'a> {
    r: &'a Remote,
    o: &'a Options,
    sd: StateDir,
    base: OwnedFd,
    prefix: Vec<u8>,
    tok: Token,
    moving: bool,
}

fn pull_job(r: &Remote, dst: &Path, o: &Options, moving: bool) -> Result<Outcome, Fatal> {
    let verb = if moving { "move" } else { "pull" };
    if o.streams > MAX_STREAMS as usize {
        return Err(usage(format!(
            "--streams {}: a {verb} from a server uses at most {MAX_STREAMS}",
            o.streams
        )));
    }
    let key = format!("{verb} {r}\0{}", absolute(dst).to_string_lossy());
    let id = format!("net-{:016x}", xxhash_rust::xxh3::xxh3_64(key.as_bytes()));
    let sd = StateDir::open(&o.state_dir, &id)
        .map_err(|e| usage(format!("state dir {}: {e}", o.state_dir.display())))?;
    o.steer.attach(&id, &sd.dir);
    if o.fresh {
        let _ = std::fs::remove_file(sd.dir.join(PULLED_DIRS));
    }
    // Where the first run landed, so a rerun does not nest a second copy in it (cp -r rules
    // would, now that the destination exists).
    let (base, prefix) = match load_pull_target(&sd) {
        Some(t) if !o.fresh => t,
        _ => {
            let (base, prefix) = pull_target(r, dst)?;
            let t = (absolute(&base), prefix);
            let wire = (t.0.as_os_str().as_bytes(), &t.1);
            save_json(&sd, "pull-target.json", &wire)
                .map_err(|e| usage(format!("state dir: {e}")))?;
            t
        }
    };
    let fd = std::fs::File::open(&base).map_err(|e| usage(format!("'{}': {e}", base.display())))?;
    // The job's own temp token: a rerun replaces the temps a killed run left, nothing else.
    let tok = super::serve::load_token(&sd.dir).map_err(usage)?;
    let job = PullJob {
        r,
        o,
        sd,
        base: OwnedFd::from(fd),
        prefix,
        tok,
        moving,
    };
    let (mut out, removed) = job.run()?;
    if moving && out.errors.is_empty() {
        let _ = std::fs::remove_file(job.sd.dir.join(PULLED_DIRS));
    }
    out.removed = removed;
    Ok(out)
}

impl PullJob<'_> {
    fn receiver(&self) -> Result<Receiver, Fatal> {
        let st = self.o.steer.clone();
        let rx = Receiver::new(
            self.base.try_clone().map_err(fatal)?,
            self.prefix.clone(),
            self.tok.clone(),
        )
        .stopping_when_full()
        .held_by(Arc::new(move || st.is_paused() || st.is_cancelled()));
        Ok(if self.moving {
            rx.moving(load_pulled_dirs(&self.sd), pulled_dirs_saver(&self.sd))
        } else {
            rx
        })
    }

    /// Sessions until the pull is done (reconnecting while the connection breaks, pulling
    /// again after a pause); the outcome and the sources the server removed (a move).
    fn run(&self) -> Result<(Outcome, u64), Fatal> {
        let o = self.o;
        let mut total = Outcome::default();
        let mut removed = 0;
        let mut fresh = o.fresh;
        let mut reached = false;
        let (mut broken_since, mut backoff) = (None, Duration::from_millis(500));
        loop {
            let mut got = Got::default();
            let res = self.once(fresh || self.moving, &mut got, &mut reached);
            total.files += got.files;
            total.bytes += got.bytes;
            removed += got.removed;
            if got.files > 0 {
                (broken_since, backoff) = (None, Duration::from_millis(500));
            }
            match res {
                Ok(Ok(())) => fresh = false,
                Ok(Err(f)) => return Err(f),
                Err(e)
                    if transient(&e)
                        && broken_since.get_or_insert_with(Instant::now).elapsed() < RETRY_FOR
                        && (reached || e.kind() != io::ErrorKind::ConnectionRefused) =>
                {
                    // Named files stay (the quick check skips them); the rest come again.
                    eprintln!(
                        "ferry: {e}; pull: {} files durable so far, reconnecting in {backoff:?}",
                        total.files
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    fresh = false;
                    continue;
                }
                Err(e) => return Err(fatal(e)),
            }
            if let Some((path, why)) = &got.first_full {
                o.steer.pause_for_room(&beneath::show(path), why);
            }
            if !got.stopped_early {
                // What this run received earlier is skipped now: not counted twice.
                total.skipped = got.skipped.saturating_sub(total.files - got.files);
                total.errors = got.errors.into_iter().map(|e| (Vec::new(), e)).collect();
                return Ok((total, removed));
            }
            wait_for_resume(o)?;
        }
    }

    /// The session's connections: stream 0 opened for `op`, the others joined to it (as many
    /// as `--streams` asks; the server's Ready carries the token they join by).
    fn connect(&self, op: Op, reached: &mut bool) -> io::Result<Result<Vec<Conn>, Fatal>> {
        let (r, o) = (self.r, self.o);
        let c = match try_open(r, op, o)? {
            Ok((c, _, _)) => c,
            Err(f) => return Ok(Err(f)),
        };
        *reached = true;
        let token = c.session.clone();
        let mut conns = vec![c];
        if let Some(t) = token {
            for _ in 1..o.streams.clamp(1, MAX_STREAMS as usize) {
                match join(r, o, &t)? {
                    Ok(j) => conns.push(j),
                    Err(f) => return Ok(Err(f)),
                }
            }
        }
        Ok(Ok(conns))
    }

    /// One session (`fresh`: what is here is not listed, so everything is sent), received
    /// by one receiver per stream into `got`; it ends early when the local disk is full or
    /// the job is paused. `reached`: set once the server answered. Err: a connection (worth
    /// a reconnect if transient: a broken stream ends the session, the next one runs all of
    /// them again); Ok(Err): the server refused.
    fn once(
        &self,
        fresh: bool,
        got: &mut Got,
        reached: &mut bool,
    ) -> io::Result<Result<(), Fatal>> {
        let op = if self.moving { Op::Move } else { Op::Pull };
        let mut conns = match self.connect(op, reached)? {
            Ok(c) => c,
            Err(f) => return Ok(Err(f)),
        };
        self.o.steer.running();
        let name = if self.prefix.is_empty() {
            b".".to_vec()
        } else {
            self.prefix.clone()
        };
        let roots = if fresh {
            Vec::new()
        } else {
            vec![(Arc::new(self.base.try_clone()?), name, Vec::new())]
        };
        verify::list(&mut conns[0], Walker::new(roots), false)?;
        let mut rxs = Vec::new();
        for _ in &conns {
            match self.receiver() {
                Ok(rx) => rxs.push(rx),
                Err(f) => return Ok(Err(f)),
            }
        }
        let ends: Vec<(Receiver, io::Result<()>)> = std::thread::scope(|s| {
            let hs: Vec<_> = conns
                .into_iter()
                .zip(rxs)
                .map(|(c, mut rx)| {
                    s.spawn(move || {
                        let r = receive(c, &mut rx);
                        (rx, r)
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("a receiving stream panicked"))
                .collect()
        });
        let mut first_err = None;
        for (rx, r) in ends {
            got.add(rx);
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        // A stream that ended early (full, paused) ends the session: the others' breaks follow
        // from it.
        match first_err {
            Some(e) if !got.stopped_early => Err(e),
            _ => Ok(Ok(())),
        }
    }
}

/// One stream of a pull session: received until the sender is done, then (a move) the
/// answers to its last Removes.
fn receive(mut c: Conn, rx: &mut Receiver) -> io::Result<()> {
    recv::drive(&mut c, rx)?;
    if !rx.stopped_early {
        // The answers to the last Removes (a move ending early leaves them: what they
        // named is sent again, and asked again, by its next session).
        recv::await_removed(&mut c, rx)?;
    }
    c.close();
    Ok(())
}

/// What the receivers of one pull session got, together.
#[derive(Default)]
struct Got {
    files: u64,
    bytes: u64,
    skipped: u64,
    removed: u64,
    errors: Vec<String>,
    first_full: Option<(Vec<u8>, String)>,
    stopped_early: bool,
}

impl Got {
    fn add(&mut self, rx: Receiver) {
        self.files += rx.counts.files;
        self.bytes += rx.counts.bytes;
        self.skipped += rx.counts.skipped;
        self.removed += rx.removed();
        self.stopped_early |= rx.stopped_early;
        if self.first_full.is_none() {
            self.first_full = rx.first_full;
        }
        self.errors.extend(rx.errors);
    }
}

/// A move's directory times as first received, one JSON line each (the first line of a path
/// wins), in its state dir.
const PULLED_DIRS: &str = "pulled-dirs.jsonl";

fn load_pulled_dirs(sd: &StateDir) -> HashMap<Vec<u8>, Meta> {
    let text = std::fs::read(sd.dir.join(PULLED_DIRS)).unwrap_or_default();
    let mut m = HashMap::new();
    for line in text.split(|&b| b == b'\n') {
        if let Ok((p, meta)) = serde_json::from_slice::<(Vec<u8>, Meta)>(line) {
            m.entry(p).or_insert(meta);
        }
    }
    m
}

/// Appends directories' times to the job's [`PULLED_DIRS`], durably (the file, and its name
/// when it is new).
fn pulled_dirs_saver(sd: &StateDir) -> recv::SaveDirs {
    let (dir, path) = (sd.dir.clone(), sd.dir.join(PULLED_DIRS));
    Box::new(move |dirs| {
        use std::io::Write;
        let new = !path.exists();
        let mut body = Vec::new();
        for d in dirs {
            serde_json::to_writer(&mut body, d).map_err(io::Error::other)?;
            body.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        f.write_all(&body)
            .and_then(|()| f.sync_data())
            .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", path.display())))?;
        if new {
            std::fs::File::open(&dir)?.sync_all()?;
        }
        Ok(())
    })
}

/// Waits while the job is paused; Err once it is cancelled.
fn wait_for_resume(o: &Options) -> Result<(), Fatal> {
    while o.steer.is_paused() && !o.steer.is_cancelled() {
        std::thread::sleep(Duration::from_millis(50));
    }
    if o.steer.is_cancelled() {
        return Err(Fatal {
            code: crate::Exit::Cancelled,
            msg: super::push::CANCELLED.into(),
        });
    }
    Ok(())
}

fn load_pull_target(sd: &StateDir) -> Option<(PathBuf, Vec<u8>)> {
    let (base, prefix): (Vec<u8>, Vec<u8>) =
        serde_json::from_slice(&std::fs::read(sd.dir.join("pull-target.json")).ok()?).ok()?;
    Some((PathBuf::from(OsStr::from_bytes(&base)), prefix))
}

/// Where a pull lands: (local directory, path beneath it), by cp -r rules.
fn pull_target(r: &Remote, dst: &Path) -> Result<(PathBuf, Vec<u8>), Fatal> {
    let remote_name = beneath::split(&r.path).1.to_vec();
    let remote_name = if remote_name.is_empty() {
        r.export.as_bytes().to_vec()
    } else {
        remote_name
    };
    let (base, prefix) = match std::fs::metadata(dst) {
        Ok(m) if m.is_dir() && !is_contents(dst) => (dst.to_path_buf(), remote_name),
        Ok(m) if m.is_dir() => (dst.to_path_buf(), Vec::new()),
        _ => {
            let (_, name) =
                local_root(dst).map_err(|e| usage(format!("'{}': {e}", dst.display())))?;
            (dst.parent().unwrap_or(Path::new(".")).to_path_buf(), name)
        }
    };
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    Ok((base, prefix))
}

/// Verify: the differences between local `src` and the remote path (empty: identical).
pub fn verify(src: &Path, r: &Remote, o: &Options) -> Result<Vec<String>, Fatal> {
    let (dir, name) = local_root(src).map_err(|e| usage(format!("'{}': {e}", src.display())))?;
    let (mut c, _, _) = open(r, Op::Verify, o)?;
    let (theirs, mut diffs) = verify::receive(&mut c).map_err(fatal)?;
    c.close();
    let mut ours = std::collections::BTreeMap::new();
    verify::entries(Walker::new(vec![(dir, name, Vec::new())]), true, |p, e| {
        match e {
            Ok(e) => {
                ours.insert(p, e);
            }
            Err(e) => diffs.push(format!("local '{}': {e}", beneath::show(&p))),
        }
        Ok(())
    })
    .map_err(fatal)?;
    diffs.extend(verify::compare(&ours, &theirs));
    Ok(diffs)
}

/// The [`Control`] of a push's client: its job control, and reconnects with backoff.
pub struct Client<'a> {
    pub remote: &'a Remote,
    pub opts: &'a Options,
}

impl super::push::Control for Client<'_> {
    fn paused(&self) -> bool {
        self.opts.steer.is_paused()
    }
    fn cancelled(&self) -> bool {
        self.opts.steer.is_cancelled()
    }
    fn full(&self, path: &str, why: &str) -> bool {
        self.opts.steer.pause_for_room(path, why);
        true
    }
    fn progress(&self, files: u64, bytes: u64) {
        let st = &self.opts.steer;
        st.files
            .fetch_add(files, std::sync::atomic::Ordering::Relaxed);
        st.bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
    fn reconnects(&self) -> bool {
        true
    }
    fn reconnect(
        &self,
        old: Option<crate::temp::Token>,
        since: Instant,
        backoff: &mut Duration,
    ) -> Result<Conn, Fatal> {
        reconnect(self.remote, self.opts, old, since, backoff)
    }
}
