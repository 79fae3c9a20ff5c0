//! Group commit for `--fsync=batch`: reactors hand over finished temp files; one syncfs per
//! destination filesystem makes the whole batch durable, and only then does each file get its
//! final name. Reactors never block on a flush.

use super::task::{Ctx, Finished, child_done};
use crate::meta;
use crate::stats::Stats;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A batch closes at this many files...
pub const BATCH_FILES: usize = 4096;
/// ...or this many bytes...
pub const BATCH_BYTES: u64 = 1 << 30;
/// ...or when no file arrived for this long, or the oldest waited this long.
pub const BATCH_IDLE: Duration = Duration::from_millis(10);
pub const BATCH_AGE: Duration = Duration::from_millis(500);
/// Capacity of the hand-over channel (reactors block when the committer is this far behind).
pub const CHANNEL: usize = 2 * BATCH_FILES;

pub fn run(ctx: Arc<Ctx>, rx: Receiver<Finished>) {
    let mut lat = crate::latency::Latencies::default();
    run_loop(&ctx, rx, &mut lat);
    ctx.stats.merge_latencies(&lat);
}

fn run_loop(ctx: &Arc<Ctx>, rx: Receiver<Finished>, lat: &mut crate::latency::Latencies) {
    let mut batch: Vec<Finished> = Vec::with_capacity(BATCH_FILES);
    let mut bytes = 0u64;
    let mut oldest = Instant::now();
    loop {
        let got = rx.recv_timeout(BATCH_IDLE);
        let closed = matches!(got, Err(RecvTimeoutError::Disconnected));
        let timed_out = got.is_err();
        if let Ok(f) = got {
            if batch.is_empty() {
                oldest = Instant::now();
            }
            bytes += f.bytes;
            batch.push(f);
        }
        let due = batch.len() >= BATCH_FILES
            || bytes >= BATCH_BYTES
            || oldest.elapsed() >= BATCH_AGE
            || timed_out;
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
    let mut journal = Vec::new();
    let mut finished = Vec::with_capacity(batch.len());
    for f in batch.drain(..) {
        let res = match &synced {
            Ok(()) => meta::rename(&f.tmp, &f.dst),
            Err(e) => Err(crate::error::Error::os(
                e.op,
                &f.dst,
                std::io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO)),
            )),
        };
        match res {
            Ok(()) => {
                Stats::add(&ctx.stats.files, 1);
                Stats::add(&ctx.stats.bytes, f.bytes);
                crate::latency::record(&mut lat.file, f.opened.elapsed().as_micros() as u64);
                if let Some(key) = f.link_key {
                    ctx.link_done(key, &f.dst);
                }
                if ctx.state.is_some() {
                    journal.push((f.src.clone(), f.done));
                }
            }
            Err(e) => {
                let _ = meta::unlink(&f.tmp); // best effort: the failure is reported below
                ctx.stats.error(e);
                if let Some(key) = f.link_key {
                    ctx.link_failed(key);
                }
            }
        }
        finished.push(f.parent);
    }
    if !journal.is_empty() {
        // The names must be durable before the journal says so: a second syncfs (cheap: only
        // the renames are dirty) orders them before the journal record.
        match ctx.sync_dst(Some(&devs)) {
            Ok(()) => ctx.journal(&journal),
            Err(e) => ctx.stats.error(e),
        }
    }
    for parent in finished {
        child_done(&parent, ctx);
        ctx.queues.finish();
    }
}
