//! Running a prepared copy job: queue its roots, start the feeder, the committer and one
//! pinned reactor per CPU, checkpoint while they work, then join them, make the destination
//! durable and decide the job's end state.

use super::commit;
use super::driver::CopyReactor;
use super::task::{Ctx, Finished, Task};
use super::{AbortOnPanic, Engine, Prepared, make_backend, plan, rename_root, walk};
use crate::coord::state::JobState;
use crate::error::{Error, Target};
use crate::spec::FsyncMode;
use crate::stats::Report;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a reactor thread gives back: how it ended and the backend it ran on.
type ReactorEnd = (Result<(), Error>, &'static str);

/// Runs a prepared job to its end (or its cancel/abort) and reports.
pub fn execute(p: Prepared) -> Report {
    let Prepared {
        ctx,
        plan,
        engine,
        feeder,
        finisher,
    } = p;
    let started = Instant::now();
    let feeding = feeder.and_then(|f| {
        ctx.queues.hold();
        spawn(&ctx, "ferry-feed", move |c| {
            f(&c);
            c.queues.finish();
        })
    });
    crate::stats::Stats::add(&ctx.stats.moved_before, plan.moved_before);
    let landings = queue_roots(&ctx, plan);
    let (commit_tx, committer) = match ctx.spec.fsync {
        FsyncMode::Batch => start_committer(&ctx),
        FsyncMode::File => (None, None),
    };
    // Each reactor says when it is done, so the coordinator wakes at once, not on its next tick.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let handles = start_reactors(&ctx, engine, commit_tx, done_tx);
    coordinate(&ctx, &done_rx);
    let mut backend_name = "sync";
    for (me, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok((Ok(()), name)) => backend_name = name,
            Ok((Err(e), _)) => ctx.stats.error(e),
            Err(p) => ctx
                .stats
                .error(Error::panicked("reactor", Target::Reactor(me), p.as_ref())),
        }
    }
    for (h, name) in [(committer, "ferry-commit"), (feeding, "ferry-feed")] {
        if let Some(Err(p)) = h.map(JoinHandle::join) {
            ctx.stats
                .error(Error::panicked("join", Target::Thread(name), p.as_ref()));
        }
    }
    wrap_up(&ctx, finisher);
    let mut report = ctx
        .stats
        .report(started.elapsed(), backend_name, ctx.queues.reactors());
    report.targets = landings;
    report
}

/// Starts an engine thread whose panic aborts the job; a thread that cannot start aborts it
/// too (reported).
fn spawn<T: Send + 'static>(
    ctx: &Arc<Ctx>,
    name: &'static str,
    f: impl FnOnce(Arc<Ctx>) -> T + Send + 'static,
) -> Option<JoinHandle<T>> {
    let c = ctx.clone();
    let h = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _guard = AbortOnPanic(c.clone());
            f(c)
        });
    match h {
        Ok(h) => Some(h),
        Err(e) => {
            ctx.stats.error(Error::at(
                "spawn",
                Target::Thread(name),
                crate::error::ErrorKind::Os(e),
            ));
            ctx.steer.stop.abort();
            None
        }
    }
}

/// Each root to its reactor: a directory to walk, a file to copy, anything else copied here
/// (a root replaced by a later source is skipped; a move within one filesystem is a rename).
/// A dry run's answer to where each source lands.
fn queue_roots(ctx: &Ctx, plan: plan::Plan) -> Vec<crate::stats::Landing> {
    let mut landings = Vec::new();
    for (i, root) in plan.roots.into_iter().enumerate() {
        let is_dir = crate::meta::file_type(&root.st) == libc::S_IFDIR;
        if ctx.tables.overlaps.root_replaced(i, is_dir, &ctx.filter) {
            walk::replaced(ctx, &root.src);
            continue;
        }
        if ctx.spec.dry_run {
            landings.push(crate::stats::Landing {
                source: crate::error::shown(&root.src),
                target: crate::error::shown(&root.target),
            });
        }
        if ctx.spec.remove_source
            && !ctx.spec.no_rename
            && !ctx.tables.overlaps.involves(i, &ctx.filter)
            && rename_root(ctx, &root)
        {
            continue;
        }
        let owner = ctx.owner_of(root.st.st_dev);
        match crate::meta::file_type(&root.st) {
            libc::S_IFDIR => {
                ctx.stats.walking.fetch_add(1, Ordering::AcqRel);
                let t = Task::Dir {
                    src: root.src,
                    dst: root.target,
                    parent: None,
                };
                ctx.queues.push_local(owner, t)
            }
            libc::S_IFREG => {
                crate::stats::Stats::add(&ctx.stats.found_files, 1);
                ctx.queues
                    .push_local(owner, Task::new_file(root.src, root.target, None, 1))
            }
            _ => {
                if let Err(e) = walk::copy_inline(ctx, &root.src, &root.target) {
                    ctx.stats.error(e);
                }
            }
        }
    }
    landings
}

/// The group committer (`--fsync=batch`) and the channel the reactors hand it files on.
fn start_committer(ctx: &Arc<Ctx>) -> (Option<SyncSender<Vec<Finished>>>, Option<JoinHandle<()>>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(commit::CHANNEL);
    match spawn(ctx, "ferry-commit", move |c| commit::run(c, rx)) {
        Some(h) => (Some(tx), Some(h)),
        None => (None, None),
    }
}

/// One reactor per queue, each pinned to its CPU with its own backend. A reactor drops its
/// `done` sender when it ends (also by a panic): the coordinator's wake-up.
fn start_reactors(
    ctx: &Arc<Ctx>,
    engine: Engine,
    commit_tx: Option<SyncSender<Vec<Finished>>>,
    done_tx: std::sync::mpsc::Sender<()>,
) -> Vec<JoinHandle<ReactorEnd>> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let reactors = ctx.queues.reactors();
    let mut handles = Vec::with_capacity(reactors);
    for me in 0..reactors {
        let c = ctx.clone();
        let tx = commit_tx.clone();
        let core = (!cores.is_empty()).then(|| cores[me % cores.len()]);
        let done = done_tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("ferry-r{me}"))
            .spawn(move || {
                let _guard = AbortOnPanic(c.clone());
                let _done = done;
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                let backend = make_backend(engine, &c.spec, me);
                let mut r = CopyReactor::new(me, c, backend, tx);
                (r.run(), r.backend())
            });
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                ctx.steer.stop.abort();
                ctx.stats.error(Error::at(
                    "spawn",
                    Target::Reactor(me),
                    crate::error::ErrorKind::Os(e),
                ));
                break;
            }
        }
    }
    handles
}

/// The coordinator's loop: checkpoint every 1000 files or 5 s (and on pause) until the
/// reactors are done. It never touches a ring.
fn coordinate(ctx: &Ctx, done_rx: &Receiver<()>) {
    let (mut last_cp, mut last_files, mut was_paused) = (Instant::now(), 0u64, false);
    loop {
        // Every reactor dropped its sender: all are done.
        if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) =
            done_rx.recv_timeout(Duration::from_millis(50))
        {
            return;
        }
        let files = ctx.stats.files.load(Ordering::Relaxed);
        let paused = ctx.steer.is_paused();
        if files >= last_files + 1000 || last_cp.elapsed().as_secs() >= 5 || paused != was_paused {
            ctx.checkpoint(if paused {
                JobState::Paused
            } else {
                JobState::Running
            });
            (last_cp, last_files, was_paused) = (Instant::now(), files, paused);
        }
    }
}

/// After the threads: temps of half-copied big files go, the destination is made durable,
/// the manifest finished, the finisher run (a clean job only), and the end state decided and
/// checkpointed.
fn wrap_up(ctx: &Arc<Ctx>, finisher: Option<super::Finisher>) {
    // An aborted job leaves tasks behind: remove the temp files of half-copied big files.
    while let Some(t) = ctx.queues.pop(0) {
        if let Task::Segment { job, .. } = t
            && job.segment_done()
        {
            drop(job.take_dst_fd());
            let _ = crate::meta::unlink(&job.tmp); // best effort on an already failed job
        }
    }
    // Renames and directory metadata become durable here; exit 0 promises it.
    let synced = ctx.fds.sync_dst(None);
    let whole = synced.is_ok();
    if let Err(e) = synced {
        ctx.stats.error(e);
    }
    super::tree::unveil(ctx, whole);
    if let Some(m) = &ctx.out.manifest
        && let Err(e) = m.lock().unwrap_or_else(|p| p.into_inner()).finish()
    {
        ctx.stats.error(e);
    }
    if let Some(f) = finisher
        && !ctx.steer.stop.cancelled()
        && !ctx.steer.stop.aborted()
    {
        f(ctx);
    }
    let end = if ctx.steer.stop.cancelled() {
        JobState::Cancelled
    } else if ctx.stats.failed.load(Ordering::Acquire) == 0 {
        JobState::Completed
    } else {
        JobState::Failed
    };
    ctx.save_failed();
    ctx.checkpoint(end);
    if end == JobState::Completed
        && let Some(sd) = &ctx.state
        && let Err(e) = sd.truncate_journal()
    {
        ctx.stats.error(Error::os("journal", &sd.dir, e));
    }
}
