//! `ferry serve`: accepts mutual-TLS sessions and serves pushes into, pulls from and
//! verifies of its exported directories. One thread per connection (blocking I/O; see
//! `conn`); a bad client gets a clear error and is closed, the others go on.

use super::beneath::{self, check_rel, show, split};
use super::conn::Conn;
use super::joins::{self, Joins};
use super::live::{self, Live};
use super::msg::{Msg, Op};
use super::quick::QuickCheck;
use super::recv::{self, Receiver};
use super::send;
use super::walk::Walker;
use super::{session, verify};
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Connections served at once; more are refused with a message.
pub const MAX_CONNS: usize = 256;

/// One exported directory.
pub struct Export {
    pub name: String,
    pub dir: PathBuf,
    fd: OwnedFd,
}

impl Export {
    /// `NAME=DIR`; DIR must be an existing directory.
    pub fn parse(spec: &str) -> Result<Export, String> {
        let (name, dir) = spec
            .split_once('=')
            .ok_or_else(|| format!("--export '{spec}': expected NAME=DIR"))?;
        if name.is_empty() || name.contains('/') {
            return Err(format!(
                "--export '{spec}': NAME must be non-empty without '/'"
            ));
        }
        let fd = std::fs::File::open(dir)
            .and_then(|f| {
                if f.metadata()?.is_dir() {
                    Ok(OwnedFd::from(f))
                } else {
                    Err(io::Error::from_raw_os_error(libc::ENOTDIR))
                }
            })
            .map_err(|e| format!("--export '{spec}': {dir}: {e}"))?;
        Ok(Export {
            name: name.to_string(),
            dir: PathBuf::from(dir),
            fd,
        })
    }
}

pub struct Server {
    pub listener: TcpListener,
    pub exports: Arc<Vec<Export>>,
    pub tls: Arc<rustls::ServerConfig>,
    /// The temp-name token of this server for the shared temps of files sent in ranges
    /// (kept in its state dir, so a restarted server's rerun ranges land in the same temp).
    /// Every other temp carries its push session's own token (see `live`).
    pub token: crate::temp::Token,
}

impl Server {
    /// Serves until the process ends.
    pub fn run(self) -> io::Result<()> {
        let active = Arc::new(AtomicUsize::new(0));
        let live = Arc::new(Live::default());
        let joins = Arc::new(Joins::default());
        loop {
            let (sock, addr) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("ferry serve: accept: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            if active.load(Ordering::Relaxed) >= MAX_CONNS {
                eprintln!("ferry serve: {addr}: refused, {MAX_CONNS} connections already");
                continue;
            }
            active.fetch_add(1, Ordering::Relaxed);
            let (exports, tls, active) = (self.exports.clone(), self.tls.clone(), active.clone());
            let tok = self.token.clone();
            let (live, joins) = (live.clone(), joins.clone());
            std::thread::spawn(move || {
                if let Err(e) = handle(sock, &exports, tls, tok, &live, &joins) {
                    eprintln!("ferry serve: {addr}: {e}");
                }
                active.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
}

/// Refuses the session with `msg` (sent to the client, returned for the log).
fn refuse(mut c: Conn, msg: String) -> io::Result<()> {
    let _ = c.send(&Msg::Error { msg: msg.clone() });
    c.close();
    Err(io::Error::new(io::ErrorKind::PermissionDenied, msg))
}

/// The target of a session: (directory holding it, its name there or "." for the export
/// root, whether it exists, whether it is a directory).
struct Target {
    parent: OwnedFd,
    name: Vec<u8>,
    exists: bool,
    is_dir: bool,
}

fn resolve(ex: &Export, path: &[u8]) -> Result<Target, String> {
    check_rel(path).map_err(|e| format!("path refused: {e}"))?;
    let (parent, name) = if path.is_empty() {
        (&[][..], &b"."[..])
    } else {
        split(path)
    };
    let pfd = beneath::open_dir(ex.fd.as_raw_fd(), parent).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::ELOOP) => "a symlink in the path (not followed)".to_string(),
            Some(libc::EXDEV) => "it leads outside the export".to_string(),
            _ => e.to_string(),
        };
        format!("{}/{}: {why}", ex.name, show(parent))
    })?;
    let st = beneath::stat_at(pfd.as_raw_fd(), name)
        .map_err(|e| format!("{}/{}: {e}", ex.name, show(path)))?;
    Ok(Target {
        parent: pfd,
        name: name.to_vec(),
        exists: st.is_some(),
        is_dir: st.is_some_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR),
    })
}

fn handle(
    sock: std::net::TcpStream,
    exports: &[Export],
    tls: Arc<rustls::ServerConfig>,
    tok: crate::temp::Token,
    live: &Arc<Live>,
    joins: &Joins,
) -> io::Result<()> {
    let handle = sock.try_clone()?;
    let mut c = session::accept(sock, tls)?;
    let (op, export, path, stale, streams) = match c.recv()? {
        Msg::Open {
            op,
            export,
            path,
            stale,
            streams,
        } => (op, export, path, stale, streams as usize),
        // One more stream of a pull: its session's thread takes the connection over.
        Msg::Join { token } => return join(c, &token, joins),
        other => return refuse(c, format!("expected Open, got {other:?}")),
    };
    let Some(ex) = exports.iter().find(|e| e.name.as_bytes() == export) else {
        let names: Vec<&str> = exports.iter().map(|e| e.name.as_str()).collect();
        return refuse(
            c,
            format!(
                "unknown export '{}' (exports: {})",
                show(&export),
                names.join(", ")
            ),
        );
    };
    let t = match resolve(ex, &path) {
        Ok(t) => t,
        Err(m) => return refuse(c, m),
    };
    if streams > 1 && !matches!(op, Op::Pull | Op::Move) {
        let m = format!("{op:?} asks for {streams} streams: only a pull or move has several");
        return refuse(c, m);
    }
    match op {
        Op::Push => {
            let sweep = match live.retire(&stale, live::RETIRE_WAIT) {
                Ok(s) => s,
                Err(m) => return refuse(c, m),
            };
            push(c, ex, &t, path, tok, live.start(handle), sweep)
        }
        Op::Pull | Op::Move if streams > 1 => {
            let s = Pulled {
                export: &ex.name,
                path: &path,
                moving: op == Op::Move,
            };
            send_streams(exists(c, ex, t, &path)?, s, streams, joins)
        }
        Op::Pull | Op::Move | Op::Verify | Op::List => {
            read(exists(c, ex, t, &path)?, ex, op, &path)
        }
    }
}

/// A connection joining the pull session of `token` as one more stream: told Ready and
/// handed over (this thread then waits until the session is done with it), or refused.
fn join(c: Conn, token: &crate::temp::Token, joins: &Joins) -> io::Result<()> {
    let ready = |(c, _): &mut joins::Joined| {
        let ok = Msg::Ready {
            is_dir: false,
            exists: true,
            token: None,
        };
        let _ = c.send(&ok).and_then(|()| c.flush());
    };
    let (keep, kept) = std::sync::mpsc::channel();
    match joins.join(token, (c, keep), ready) {
        Ok(()) => {
            let _ = kept.recv(); // Err once the session dropped its end
            Ok(())
        }
        Err(((c, _), m)) => refuse(c, m),
    }
}

/// A session of one stream that reads its target: a pull, move, verify or listing.
fn read((mut c, t): (Conn, Target), ex: &Export, op: Op, path: &[u8]) -> io::Result<()> {
    // A verify lists what is durable here (a move deletes its sources by it).
    if op == Op::Verify
        && let Err(e) = beneath::syncfs(&t.parent)
    {
        return refuse(c, format!("syncfs {}/{}: {e}", ex.name, show(path)));
    }
    c.send(&Msg::Ready {
        is_dir: t.is_dir,
        exists: true,
        token: None,
    })?;
    let walker = Walker::new(vec![(Arc::new(t.parent), t.name, Vec::new())]);
    if op == Op::Pull || op == Op::Move {
        send_pull(&mut c, walker, &ex.name, path, op == Op::Move)?;
    } else {
        verify::list(&mut c, walker, op == Op::Verify)?;
    }
    c.close();
    Ok(())
}

/// The target of a session that reads it must exist (else it is refused: Err).
fn exists(c: Conn, ex: &Export, t: Target, path: &[u8]) -> io::Result<(Conn, Target)> {
    if !t.exists {
        let m = format!("{}/{}: no such file or directory", ex.name, show(path));
        return Err(refuse(c, m).expect_err("a refusal is an error"));
    }
    Ok((c, t))
}

/// What a pull sends from, for its log line.
struct Pulled<'a> {
    export: &'a str,
    path: &'a [u8],
    moving: bool,
}

/// A pull or move of `n` streams: stream 0 (`c`) gets the token the others join by, then
/// the client's listing (a move lists nothing); the tree goes over all of them (see
/// `joins`).
fn send_streams((mut c, t): (Conn, Target), s: Pulled, n: usize, joins: &Joins) -> io::Result<()> {
    let w = match joins.open(n) {
        Ok(w) => w,
        Err(m) => return refuse(c, m),
    };
    c.send(&Msg::Ready {
        is_dir: t.is_dir,
        exists: true,
        token: Some(w.token.clone()),
    })?;
    c.flush()?;
    let (mine, _) = std::sync::mpsc::channel();
    let (mut conns, _keep): (Vec<Conn>, Vec<_>) = match w.collect((c, mine)) {
        Ok(v) => v.into_iter().unzip(),
        Err((got, m)) => {
            for (c, _) in got {
                let _ = refuse(c, m.clone());
            }
            return Err(io::Error::new(io::ErrorKind::TimedOut, m));
        }
    };
    let (have, _) = verify::receive(&mut conns[0])?;
    let peer = conns[0].peer.clone();
    let walker = Walker::new(vec![(Arc::new(t.parent), t.name, Vec::new())]);
    let (out, removed) = if s.moving {
        let m = Mutex::new(super::remove::Mover::default());
        let out = joins::send(conns, walker, &m);
        let m = m.into_inner().unwrap_or_else(|p| p.into_inner());
        (out, (m.removed, m.kept))
    } else {
        let q = Mutex::new(QuickCheck(have));
        (joins::send(conns, walker, &q), (0, 0))
    };
    match out {
        Ok(out) => log_pull(&peer, &s, n, &out, removed),
        Err(f) => eprintln!(
            "ferry serve: {peer}: {} of {}/{} over {n} streams: {}",
            if s.moving { "move" } else { "pull" },
            s.export,
            show(s.path),
            f.msg
        ),
    }
    Ok(())
}

fn log_pull(peer: &str, s: &Pulled, n: usize, out: &send::Outcome, removed: (u64, u64)) {
    let removed = if s.moving {
        format!(", {} sources removed, {} kept", removed.0, removed.1)
    } else {
        String::new()
    };
    eprintln!(
        "ferry serve: {peer}: {} of {}/{}: {} files, {} bytes, {} skipped (quick check), {} failed{removed}{}",
        if s.moving { "move" } else { "pull" },
        s.export,
        show(s.path),
        out.files,
        out.bytes,
        out.skipped,
        out.errors.len(),
        if n > 1 {
            format!(
                " ({n} streams, ranges acknowledged per stream: {:?})",
                out.parts
            )
        } else {
            String::new()
        }
    );
}

/// A push into `path`: received under the session's own temp token (ranges of split files
/// under the server's `parts` token), stopped as soon as the client hangs up or a newer
/// session of it retires this one; the stale tokens' leftover temps are swept on the way.
fn push(
    mut c: Conn,
    ex: &Export,
    t: &Target,
    path: Vec<u8>,
    parts: crate::temp::Token,
    mut s: live::Session,
    sweep: Vec<crate::temp::Token>,
) -> io::Result<()> {
    c.send(&Msg::Ready {
        is_dir: t.is_dir,
        exists: t.exists,
        token: Some(s.token.clone()),
    })?;
    c.flush()?;
    let base = beneath::open_dir(ex.fd.as_raw_fd(), b"").map_err(io::Error::other)?;
    let mut rx = Receiver::new(base, path.clone(), s.token.clone())
        .with_parts(parts)
        .sweeping(sweep)
        .watched(recv::Watch::new(c.raw_fd(), s.stop.clone()));
    let r = recv::drive(&mut c, &mut rx);
    // drive removed this session's temps whichever way it ended.
    s.clean();
    let what = format!("{}: push into {}/{}", c.peer, ex.name, show(&path));
    let n = rx.counts;
    match &r {
        Ok(()) => eprintln!(
            "ferry serve: {what}: {} files, {} bytes, {} failed",
            n.files, n.bytes, n.failed
        ),
        Err(e) => eprintln!(
            "ferry serve: {what}: stopped after {} files ({e}); nothing of it unfinished is named",
            n.files
        ),
    }
    if r.is_ok() {
        c.close();
    }
    Ok(())
}

/// A pull: the client lists what it has first (the quick check skips those), then the tree
/// is sent. A move (`moving`; its client lists nothing) also deletes the sources the client
/// asks for (see `remove`).
fn send_pull(
    c: &mut Conn,
    walker: Walker,
    export: &str,
    path: &[u8],
    moving: bool,
) -> io::Result<()> {
    c.flush()?;
    let (have, _) = verify::receive(c)?;
    let mut mover = super::remove::Mover::default();
    let out = if moving {
        send::send_tree(c, walker, &mut mover)?
    } else {
        send::send_tree(c, walker, &mut QuickCheck(have))?
    };
    let s = Pulled {
        export,
        path,
        moving,
    };
    log_pull(&c.peer, &s, 1, &out, (mover.removed, mover.kept));
    Ok(())
}

/// The server's temp-name token from `dir/serve-token`, made (random, durable) on first use.
pub fn load_token(dir: &std::path::Path) -> Result<crate::temp::Token, String> {
    use std::io::Write;
    let p = dir.join("serve-token");
    match std::fs::read_to_string(&p) {
        Ok(s) => crate::temp::Token::parse(s.trim())
            .ok_or_else(|| format!("{}: not a ferry token (16 hex digits)", p.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let tok = crate::temp::Token::random();
            let w = std::fs::File::create_new(&p)
                .and_then(|mut f| f.write_all(tok.as_str().as_bytes()).and(f.sync_all()))
                .and_then(|()| std::fs::File::open(dir)?.sync_all());
            w.map_err(|e| format!("create {}: {e}", p.display()))?;
            Ok(tok)
        }
        Err(e) => Err(format!("read {}: {e}", p.display())),
    }
}
