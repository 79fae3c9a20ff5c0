//! Group commit for `--fsync=batch`: reactors hand over finished temp files; one syncfs per
//! destination filesystem makes the whole batch durable, and only then does each file get its
//! final name. Reactors never block on a flush.

use super::remove::{self, Moved};
use super::task::{Ctx, Finished, Naming, child_done};
use crate::meta;
use crate::spec::VerifyMode;
use crate::stats::Stats;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub use super::task::CommitHook;

/// A batch closes at its plan's count of files or age (fskind::BatchPlan: per destination
/// filesystem), or at this many bytes...
pub const BATCH_BYTES: u64 = 1 << 30;
/// ...or when no file arrived for this long.
pub const BATCH_IDLE: Duration = Duration::from_millis(10);
/// Capacity of the hand-over channel, in messages (a reactor sends one per loop turn, at most
/// its queue depth of files): reactors block when the committer is this far behind. Large
/// enough that a syncfs of one batch does not stop the reactors from filling the next (128
/// did: `small` on a fresh ext4, warm, 4.02/4.32/4.47 s -> 3.71/4.17/3.70 s); the files it
/// holds are bounded anyway by the walk's back-pressure (WALK_AHEAD unfinished tasks).
pub const CHANNEL: usize = 4096;

pub fn run(ctx: Arc<Ctx>, rx: Receiver<Vec<Finished>>) {
    let mut lat = crate::latency::Latencies::default();
    std::thread::scope(|s| {
        let (req_tx, req_rx) = std::sync::mpsc::sync_channel::<Vec<u64>>(1);
        let (res_tx, res_rx) = std::sync::mpsc::sync_channel(1);
        let c = &ctx;
        let spawned = std::thread::Builder::new()
            .name("ferry-sync".into())
            .spawn_scoped(s, move || {
                for devs in req_rx {
                    if res_tx.send(c.fds.sync_dst(Some(&devs))).is_err() {
                        return;
                    }
                }
            });
        let syncer = match spawned {
            Ok(_) => Syncer::Thread { req_tx, res_rx },
            Err(e) => {
                // Still correct, only without the overlap.
                eprintln!("ferry: no flush thread ({e}); flushing on the committer");
                Syncer::Inline(None)
            }
        };
        run_loop(&ctx, rx, syncer, &mut lat);
    });
    ctx.stats.merge_latencies(&lat);
}

/// Runs the syncfs calls of the group commit, so the committer names one batch while the
/// next one's data is flushed (`flat`: the committer was flushing half of the time, and the
/// reactors waited for it).
enum Syncer {
    Thread {
        req_tx: std::sync::mpsc::SyncSender<Vec<u64>>,
        res_rx: Receiver<Result<(), crate::error::Error>>,
    },
    /// No thread could be started: flush at once.
    Inline(Option<Result<(), crate::error::Error>>),
}

impl Syncer {
    /// Starts a flush of these destination filesystems (one at a time).
    fn start(&mut self, ctx: &Ctx, devs: Vec<u64>) {
        match self {
            Syncer::Thread { req_tx, .. } => {
                if req_tx.send(devs).is_err() {
                    unreachable!("the flush thread lives as long as the committer");
                }
            }
            Syncer::Inline(r) => *r = Some(ctx.fds.sync_dst(Some(&devs))),
        }
    }

    /// The started flush's result: None while it runs, unless `block`.
    fn done(&mut self, block: bool) -> Option<Result<(), crate::error::Error>> {
        match self {
            Syncer::Thread { res_rx, .. } => {
                if block {
                    Some(
                        res_rx
                            .recv()
                            .expect("the flush thread answers every request"),
                    )
                } else {
                    res_rx.try_recv().ok()
                }
            }
            Syncer::Inline(r) => r.take(),
        }
    }
}

/// One flush in progress: it makes `batch`'s data durable, and the names of `names` (given
/// before it started).
struct Flush {
    batch: Vec<Finished>,
    names: Option<Named>,
}

impl Flush {
    /// Task units it holds.
    fn units(&self) -> usize {
        self.batch.len() + self.names.as_ref().map_or(0, Named::units)
    }
}

/// Starts a flush of everything gathered and of the names given so far.
fn start_flush(
    ctx: &Ctx,
    syncer: &mut Syncer,
    batch: &mut Vec<Finished>,
    named: &mut Option<Named>,
) -> Flush {
    let next = std::mem::take(batch);
    syncer.start(ctx, devs_of(&next, named.as_ref()));
    Flush {
        batch: next,
        names: named.take(),
    }
}

fn devs_of(batch: &[Finished], names: Option<&Named>) -> Vec<u64> {
    let mut devs: Vec<u64> = batch.iter().map(|f| f.dev).collect();
    if let Some(n) = names {
        devs.extend(&n.devs);
    }
    devs.sort_unstable();
    devs.dedup();
    devs
}

/// The same outcome again (one flush decides for the batch and for the names it carried).
fn dup(r: &Result<(), crate::error::Error>) -> Result<(), crate::error::Error> {
    r.as_ref()
        .map(|_| ())
        .map_err(|e| same_failure(e, e.path()))
}

/// A flush's failure, told about `path` (each file of a failed flush fails with its errno).
fn same_failure(e: &crate::error::Error, path: &std::path::Path) -> crate::error::Error {
    crate::error::Error::os(
        e.op,
        path,
        std::io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO)),
    )
}

/// These tasks are completely done.
fn finish_all(ctx: &Ctx, finished: Vec<Option<Arc<super::task::DirNode>>>) {
    for parent in finished {
        child_done(&parent, ctx);
        ctx.queues.finish();
    }
}

fn run_loop(
    ctx: &Arc<Ctx>,
    rx: Receiver<Vec<Finished>>,
    mut syncer: Syncer,
    lat: &mut crate::latency::Latencies,
) {
    let mut batch: Vec<Finished> = Vec::new();
    // Named after the flush in progress started: durable only with the next one.
    let mut named: Option<Named> = None;
    let mut flush: Option<Flush> = None;
    let mut bytes = 0u64;
    let mut oldest = Instant::now();
    let mut last = Instant::now();
    let mut closed = false;
    loop {
        // With anything open, look every millisecond; else wait for files.
        let wait = if batch.is_empty() && named.is_none() && flush.is_none() {
            BATCH_IDLE
        } else {
            Duration::from_millis(1)
        };
        let got = if closed {
            Err(RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(wait)
        };
        closed = matches!(got, Err(RecvTimeoutError::Disconnected));
        let timed_out = got.is_err();
        if let Ok(files) = got {
            if batch.is_empty() {
                oldest = Instant::now();
            }
            last = Instant::now();
            for f in files {
                bytes += f.bytes;
                batch.push(f);
            }
        }
        // Every unfinished task is here: nothing else will come, flush now instead of waiting
        // for the idle timer (the end of every job, and small jobs).
        let held = batch.len()
            + named.as_ref().map_or(0, Named::units)
            + flush.as_ref().map_or(0, Flush::units);
        let everything = ctx.queues.outstanding() <= held;
        // Closed: every reactor is gone (the end, or a cancel that abandoned some tasks, so
        // `everything` may never hold): what was gathered is flushed now, there is no later.
        let idle = timed_out && (closed || last.elapsed() >= BATCH_IDLE || everything);
        let plan = ctx.batch_plan();
        let due = batch.len() >= plan.files
            || bytes >= BATCH_BYTES
            || oldest.elapsed() >= plan.age
            || idle;
        if flush.is_some() {
            // Once every reactor is gone nothing else can happen meanwhile: wait.
            if let Some(res) = syncer.done(closed) {
                let done = flush.take().expect("checked");
                if let Some(n) = done.names {
                    settle(ctx, n, dup(&res));
                }
                // The next flush starts before this batch is named, so the two overlap, when
                // enough gathered meanwhile (a flush per handful of files would cost more
                // than the overlap gains: on tmpfs flushes end at once and batches shrank to
                // a few files, 1.30 -> 1.65 s for `small`).
                if !batch.is_empty() && (due || batch.len() >= plan.overlap) {
                    flush = Some(start_flush(ctx, &mut syncer, &mut batch, &mut named));
                    bytes = 0;
                }
                // Names not carried by a flush yet wait on with these.
                named = Named::merge(named.take(), name_batch(ctx, done.batch, res, lat));
            }
        } else if (due && !batch.is_empty()) || ((idle || closed) && named.is_some()) {
            flush = Some(start_flush(ctx, &mut syncer, &mut batch, &mut named));
            bytes = 0;
        }
        if closed && flush.is_none() && named.is_none() {
            assert!(batch.is_empty());
            return;
        }
    }
}

/// Files of the last commit that have their final names, waiting for those names to be
/// durable: the next syncfs (the one that makes the next batch's data durable) does it, and
/// then they are journaled and, for a move, their sources removed. One syncfs per batch
/// instead of two (data, then names): on `flat` the committer spent 2.0 of 4.1 s in syncfs.
struct Named {
    devs: Vec<u64>,
    journal: Vec<(std::path::PathBuf, crate::coord::checkpoint::Done)>,
    moved: Vec<Moved>,
    finished: Vec<Option<Arc<super::task::DirNode>>>,
}

impl Named {
    /// Task units it still holds.
    fn units(&self) -> usize {
        self.finished.len() + self.moved.len()
    }

    /// Both sets of names, waiting for the same flush.
    fn merge(a: Option<Named>, b: Option<Named>) -> Option<Named> {
        match (a, b) {
            (Some(mut a), Some(b)) => {
                a.absorb(b);
                Some(a)
            }
            (a, b) => a.or(b),
        }
    }

    fn absorb(&mut self, o: Named) {
        self.devs.extend(o.devs);
        self.devs.sort_unstable();
        self.devs.dedup();
        self.journal.extend(o.journal);
        self.moved.extend(o.moved);
        self.finished.extend(o.finished);
    }
}

/// The names of `n` are durable when `synced` is Ok: journal them, remove moved sources, and
/// finish their tasks.
fn settle(ctx: &Ctx, n: Named, synced: Result<(), crate::error::Error>) {
    let Named {
        journal,
        moved,
        mut finished,
        ..
    } = n;
    match synced {
        Ok(()) => {
            ctx.journal(&journal);
            finished.extend(remove::remove_files(ctx, moved));
        }
        Err(e) => {
            // The sources stay: their copies' names may not be durable.
            ctx.stats.error(e);
            finished.extend(moved.into_iter().map(|m| m.parent));
        }
    }
    finish_all(ctx, finished);
}

/// Names one batch whose flush ended with `synced`; returns its named files whose names
/// still wait for a flush.
fn name_batch(
    ctx: &Ctx,
    mut batch: Vec<Finished>,
    synced: Result<(), crate::error::Error>,
    lat: &mut crate::latency::Latencies,
) -> Option<Named> {
    let devs = devs_of(&batch, None);
    let checked = check_and_name(ctx, &batch, synced.is_ok());
    let mut named = Named {
        devs,
        journal: Vec::new(),
        moved: Vec::new(),
        finished: Vec::with_capacity(batch.len()),
    };
    let mut hooked = Vec::new();
    for (mut f, bad) in batch.drain(..).zip(checked) {
        if let (Some(_), Ok(()), None) = (&ctx.out.hook, &synced, &bad) {
            hooked.push(f);
            continue;
        }
        let naming = f.naming;
        match outcome(&mut f, &synced, bad) {
            Ok(()) => named_durably(ctx, f, lat, &mut named),
            Err(e) => {
                if naming.has_path() {
                    let _ = ctx.tree.unlink(&f.tmp); // best effort: the failure is reported below
                }
                ctx.note_failed(&f.src, false);
                ctx.stats.error(e);
                if let Some(key) = f.link_key {
                    ctx.link_failed(key);
                }
                named.finished.push(f.parent);
            }
        }
    }
    if let Some(h) = &ctx.out.hook
        && !hooked.is_empty()
    {
        h.commit(ctx, hooked);
    }
    if named.journal.is_empty() && named.moved.is_empty() {
        finish_all(ctx, named.finished);
        return None;
    }
    // The names must be durable before the journal says so (and before a move deletes a
    // source): the next syncfs orders them.
    Some(named)
}

/// After a good flush: [--verify=full re-reads,] then the final names (linkat or rename),
/// given in parallel. Returns each file's failure, in batch order. A hooked job (rebalance)
/// names its files its own way.
fn check_and_name(ctx: &Ctx, batch: &[Finished], synced: bool) -> Vec<Option<crate::error::Error>> {
    // --verify=full: read the durable temp files back before they get their names, so a copy
    // that does not match never carries a final name.
    let mut checked: Vec<Option<crate::error::Error>> = (0..batch.len()).map(|_| None).collect();
    if synced && ctx.spec.verify == VerifyMode::Full {
        verify_batch(ctx, batch, &mut checked);
    }
    // A hidden tree's files are already at their names: no worker threads for nothing.
    if !synced || ctx.out.hook.is_some() || batch.iter().all(|f| f.naming == Naming::InPlace) {
        return checked;
    }
    // One thread renaming 100,000 small files was the job's bottleneck on ext4 (renameat ~15
    // us each), the reactors waiting on the walk's back-pressure behind it. One worker per
    // reactor: naming is CPU work in the kernel, as the reactors' is.
    let workers = ctx.queues.reactors();
    let renamed = par_each(batch, workers, Spread::ByDir, |i, f| {
        if checked[i].is_some() {
            return None; // failed its check: it never gets a final name
        }
        let dir = f.parent.as_ref().and_then(|p| p.child_fds(None, &f.dst));
        let dir = dir.map(|d| d.1);
        match (f.naming, &f.anon) {
            (Naming::Unnamed, Some((fd, _))) => {
                meta::link_anon(fd.as_raw_fd(), dir, &f.tmp, &f.dst).err()
            }
            (Naming::Unnamed, None) => unreachable!("an unnamed temp without its fd"),
            // Written at its name in a hidden tree: the tree is renamed at the end.
            (Naming::InPlace, _) => None,
            (Naming::Temp, _) => meta::rename_in(dir, &f.tmp, &f.dst).err(),
        }
    });
    for (c, r) in checked.iter_mut().zip(renamed) {
        if c.is_none() {
            *c = r;
        }
    }
    checked
}

/// A file's outcome once its batch is flushed and named: its unnamed temp's fd is closed
/// (explicitly, so an error is seen: the copy is not kept then).
fn outcome(
    f: &mut Finished,
    synced: &Result<(), crate::error::Error>,
    mut bad: Option<crate::error::Error>,
) -> Result<(), crate::error::Error> {
    if let Some((fd, _slot)) = f.anon.take()
        && let Err(e) = meta::close(fd, &f.dst)
        && synced.is_ok()
        && bad.is_none()
    {
        let _ = meta::unlink(&f.dst); // best effort: `e` is what gets reported
        bad = Some(e);
    }
    match (synced, bad) {
        (Err(e), _) => Err(same_failure(e, &f.dst)),
        (Ok(()), Some(e)) => Err(e),
        (Ok(()), None) => Ok(()),
    }
}

/// A file whose data is durable and which has its final name: counted, and queued for the
/// journal (and a move's source removal) once its name is durable too.
fn named_durably(ctx: &Ctx, f: Finished, lat: &mut crate::latency::Latencies, named: &mut Named) {
    count_durable(ctx, lat, &f.dst, &f.done, f.opened, f.link_key);
    if ctx.state.is_some() {
        named.journal.push((f.src.clone(), f.done));
    }
    if ctx.spec.remove_source {
        named.moved.push(Moved {
            src: f.src,
            dst: f.dst,
            done: f.done,
            parent: f.parent,
            attempt: f.attempt,
        });
        return;
    }
    named.finished.push(f.parent);
}

/// Counts a durable file under its final name (both commit paths: the group commit's and
/// `--fsync=file`'s): files, bytes, its latency, the manifest, the names waiting to be linked
/// to it.
pub(super) fn count_durable(
    ctx: &Ctx,
    lat: &mut crate::latency::Latencies,
    dst: &std::path::Path,
    done: &crate::coord::checkpoint::Done,
    opened: Instant,
    link_key: Option<(u64, u64)>,
) {
    Stats::add(&ctx.stats.files, 1);
    Stats::add(&ctx.stats.bytes, done.size);
    crate::latency::record(&mut lat.file, opened.elapsed().as_micros() as u64);
    ctx.out.committed(dst, done);
    if let Some(key) = link_key {
        ctx.link_done(key, dst, done.hash);
    }
}

/// Re-reads a batch's temp files in parallel (reads are latency-bound on small files).
fn verify_batch(ctx: &Ctx, batch: &[Finished], out: &mut [Option<crate::error::Error>]) {
    let got = par_each(batch, 2 * ctx.queues.reactors(), Spread::Runs, |_, f| {
        verify_durable(&f.tmp, f.bytes, f.done.hash).err()
    });
    for (o, r) in out.iter_mut().zip(got) {
        *o = r;
    }
}

/// How a batch is spread over parallel workers.
#[derive(Clone, Copy)]
enum Spread {
    /// Any file to any worker, in runs of PAR_CHUNK neighbours (reads: no shared lock).
    Runs,
    /// All files of one destination directory to one worker: creating names takes the
    /// directory's lock, and two workers on one directory only spin on it (`flat`: 17 % of
    /// all CPU in rwsem_spin_on_owner under linkat when every worker could take any file).
    ByDir,
}

/// Runs `op(index, file)` on every file of a batch on up to `workers` scoped threads and
/// returns each file's error, in batch order.
fn par_each<F>(
    batch: &[Finished],
    workers: usize,
    spread: Spread,
    op: F,
) -> Vec<Option<crate::error::Error>>
where
    F: Fn(usize, &Finished) -> Option<crate::error::Error> + Sync,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Units of work: index ranges into `order`.
    let mut order: Vec<usize> = (0..batch.len()).collect();
    let mut units: Vec<(usize, usize)> = Vec::new();
    match spread {
        Spread::Runs => {
            let mut a = 0;
            while a < order.len() {
                let b = (a + PAR_CHUNK).min(order.len());
                units.push((a, b));
                a = b;
            }
        }
        Spread::ByDir => {
            let dir = |i: usize| {
                batch[i]
                    .parent
                    .as_ref()
                    .map_or(0, |p| Arc::as_ptr(p) as usize)
            };
            order.sort_by_key(|&i| dir(i));
            let mut a = 0;
            for b in 1..=order.len() {
                if b == order.len() || dir(order[b]) != dir(order[a]) {
                    units.push((a, b));
                    a = b;
                }
            }
        }
    }
    let workers = workers.clamp(1, MAX_BATCH_WORKERS).min(units.len());
    if workers <= 1 {
        return batch.iter().enumerate().map(|(i, f)| op(i, f)).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<crate::error::Error>>> = (0..batch.len())
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while let Some(&(a, b)) = units.get(next.fetch_add(1, Ordering::Relaxed)) {
                    for &i in &order[a..b] {
                        if let Some(e) = op(i, &batch[i]) {
                            *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        }
                    }
                }
            });
        }
    });
    results
        .into_iter()
        .map(|r| r.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect()
}

/// Files one parallel worker claims at a time (Spread::Runs).
const PAR_CHUNK: usize = 32;

/// Threads that work on one batch at most (re-reads, names).
pub const MAX_BATCH_WORKERS: usize = 8;

/// `--verify=full` for one durable file: its bytes read back past the page cache must hash to
/// what was streamed while copying.
pub fn verify_durable(
    path: &std::path::Path,
    size: u64,
    hash: Option<u64>,
) -> Result<(), crate::error::Error> {
    let expected = hash.expect("--verify=full streams a hash for every file");
    let (n, got) = crate::verify::reread(path)?;
    if n != size || got != expected {
        return Err(crate::error::Error {
            op: "verify",
            target: crate::error::Target::Path(path.to_path_buf()),
            kind: crate::error::ErrorKind::Mismatch { expected, got },
        });
    }
    Ok(())
}
