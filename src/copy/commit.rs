//! Group commit for `--fsync=batch`: reactors hand over finished temp files; one syncfs per
//! destination filesystem makes the whole batch durable, and only then does each file get its
//! final name. Reactors never block on a flush.

use super::remove::{self, Moved};
use super::task::{Ctx, Finished, child_done};
use crate::meta;
use crate::spec::VerifyMode;
use crate::stats::Stats;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Gives a batch of durable, verified temp files their final places, for jobs whose commit is
/// more than a rename (rebalance: under the object's lock, aware of concurrent writers). It
/// owns the items: it counts them, reports their errors, and finishes (or requeues) each
/// item's task unit.
pub trait CommitHook: Send + Sync {
    fn commit(&self, ctx: &Ctx, items: Vec<Finished>);
}

/// A batch closes at this many files...
pub const BATCH_FILES: usize = 4096;
/// ...or this many bytes...
pub const BATCH_BYTES: u64 = 1 << 30;
/// ...or when no file arrived for this long, or the oldest waited this long.
pub const BATCH_IDLE: Duration = Duration::from_millis(10);
pub const BATCH_AGE: Duration = Duration::from_millis(500);
/// Capacity of the hand-over channel, in messages (a reactor sends one per loop turn, at most
/// its queue depth of files): reactors block when the committer is this far behind. Large
/// enough that a syncfs of one batch does not stop the reactors from filling the next (128
/// did: `small` on a fresh ext4, warm, 4.02/4.32/4.47 s -> 3.71/4.17/3.70 s); the files it
/// holds are bounded anyway by the walk's back-pressure (WALK_AHEAD unfinished tasks).
pub const CHANNEL: usize = 4096;

pub fn run(ctx: Arc<Ctx>, rx: Receiver<Vec<Finished>>) {
    let mut lat = crate::latency::Latencies::default();
    run_loop(&ctx, rx, &mut lat);
    ctx.stats.merge_latencies(&lat);
}

fn run_loop(ctx: &Arc<Ctx>, rx: Receiver<Vec<Finished>>, lat: &mut crate::latency::Latencies) {
    let mut batch: Vec<Finished> = Vec::with_capacity(BATCH_FILES);
    let mut bytes = 0u64;
    let mut oldest = Instant::now();
    let mut last = Instant::now();
    loop {
        // With a batch open, look every millisecond whether it is all the job still waits for.
        let wait = if batch.is_empty() {
            BATCH_IDLE
        } else {
            Duration::from_millis(1)
        };
        let got = rx.recv_timeout(wait);
        let closed = matches!(got, Err(RecvTimeoutError::Disconnected));
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
        // Every unfinished task is in this batch: nothing else will come, commit it now
        // instead of waiting for the idle timer (the end of every job, and small jobs).
        let everything = ctx.queues.outstanding() <= batch.len();
        let due = batch.len() >= BATCH_FILES
            || bytes >= BATCH_BYTES
            || oldest.elapsed() >= BATCH_AGE
            || (timed_out && (last.elapsed() >= BATCH_IDLE || everything));
        if due && !batch.is_empty() {
            commit(ctx, &mut batch, lat);
            bytes = 0;
        }
        if closed {
            assert!(batch.is_empty());
            return;
        }
    }
}

fn commit(ctx: &Ctx, batch: &mut Vec<Finished>, lat: &mut crate::latency::Latencies) {
    let mut devs: Vec<u64> = batch.iter().map(|f| f.dev).collect();
    devs.sort_unstable();
    devs.dedup();
    // Durable data first; a failed flush fails the whole batch (we cannot tell whose data was
    // lost), and no file of it gets a final name.
    let synced = ctx.sync_dst(Some(&devs));
    // --verify=full: read the durable temp files back before they get their names, so a copy
    // that does not match never carries a final name.
    let mut checked: Vec<Option<crate::error::Error>> = (0..batch.len()).map(|_| None).collect();
    if synced.is_ok() && ctx.spec.verify == VerifyMode::Full {
        verify_batch(ctx, batch, &mut checked);
    }
    // The final names, given in parallel: one thread renaming 100,000 small files was the
    // job's bottleneck on ext4 (renameat ~15 us each), the reactors waiting on the walk's
    // back-pressure behind it. A hooked job commits its own way, below.
    if synced.is_ok() && ctx.hook.is_none() {
        let renamed = par_each(ctx, batch, |i, f| {
            if checked[i].is_some() {
                // Failed its check: it never gets a final name.
                return None;
            }
            let dir = f.parent.as_ref().and_then(|p| p.child_fds(None, &f.dst));
            meta::rename_in(dir.map(|d| d.1), &f.tmp, &f.dst).err()
        });
        for (c, r) in checked.iter_mut().zip(renamed) {
            if c.is_none() {
                *c = r;
            }
        }
    }
    let mut journal = Vec::new();
    let mut moved = Vec::new();
    let mut finished = Vec::with_capacity(batch.len());
    let mut hooked = Vec::new();
    for (f, bad) in batch.drain(..).zip(checked) {
        if let (Some(_), Ok(()), None) = (&ctx.hook, &synced, &bad) {
            hooked.push(f);
            continue;
        }
        let res = match (&synced, bad) {
            (Err(e), _) => Err(crate::error::Error::os(
                e.op,
                &f.dst,
                std::io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO)),
            )),
            (Ok(()), Some(e)) => Err(e),
            (Ok(()), None) => Ok(()),
        };
        match res {
            Ok(()) => {
                Stats::add(&ctx.stats.files, 1);
                Stats::add(&ctx.stats.bytes, f.bytes);
                crate::latency::record(&mut lat.file, f.opened.elapsed().as_micros() as u64);
                ctx.committed(&f.dst, &f.done);
                if let Some(key) = f.link_key {
                    ctx.link_done(key, &f.dst, f.done.hash);
                }
                if ctx.state.is_some() {
                    journal.push((f.src.clone(), f.done));
                }
                if ctx.spec.remove_source {
                    moved.push(Moved {
                        src: f.src,
                        dst: f.dst,
                        done: f.done,
                        parent: f.parent,
                        attempt: f.attempt,
                    });
                    continue;
                }
            }
            Err(e) => {
                let _ = meta::unlink(&f.tmp); // best effort: the failure is reported below
                ctx.note_failed(&f.src, false);
                ctx.stats.error(e);
                if let Some(key) = f.link_key {
                    ctx.link_failed(key);
                }
            }
        }
        finished.push(f.parent);
    }
    if let Some(h) = &ctx.hook
        && !hooked.is_empty()
    {
        h.commit(ctx, hooked);
    }
    if !journal.is_empty() || !moved.is_empty() {
        // The names must be durable before the journal says so (and before a move deletes a
        // source): a second syncfs (cheap: only the renames are dirty) orders them.
        match ctx.sync_dst(Some(&devs)) {
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
    }
    for parent in finished {
        child_done(&parent, ctx);
        ctx.queues.finish();
    }
}

/// Re-reads a batch's temp files in parallel (reads are latency-bound on small files).
fn verify_batch(ctx: &Ctx, batch: &[Finished], out: &mut [Option<crate::error::Error>]) {
    let got = par_each(ctx, batch, |_, f| {
        verify_durable(&f.tmp, f.bytes, f.done.hash).err()
    });
    for (o, r) in out.iter_mut().zip(got) {
        *o = r;
    }
}

/// Runs `op(index, file)` on every file of a batch on up to VERIFY_WORKERS scoped threads (two per
/// reactor), each claiming runs of PAR_CHUNK neighbours: files of one directory arrive
/// together, so a run mostly stays in one directory and threads seldom queue on the same
/// directory lock. Returns each file's error, in batch order.
fn par_each<F>(ctx: &Ctx, batch: &[Finished], op: F) -> Vec<Option<crate::error::Error>>
where
    F: Fn(usize, &Finished) -> Option<crate::error::Error> + Sync,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    let workers = (2 * ctx.queues.reactors())
        .clamp(1, VERIFY_WORKERS)
        .min(batch.len().div_ceil(PAR_CHUNK));
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
                loop {
                    let at = next.fetch_add(PAR_CHUNK, Ordering::Relaxed);
                    if at >= batch.len() {
                        return;
                    }
                    for i in at..(at + PAR_CHUNK).min(batch.len()) {
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

/// Files one parallel worker claims at a time.
const PAR_CHUNK: usize = 32;

/// Threads that re-read one batch at most.
pub const VERIFY_WORKERS: usize = 8;

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
            path: path.to_path_buf(),
            kind: crate::error::ErrorKind::Mismatch { expected, got },
        });
    }
    Ok(())
}
