//! The copy job: resolve the command line, start one pinned reactor per CPU and the committer,
//! wait for every task, then make the destination durable.

pub mod commit;
pub mod plan;
pub mod task;
pub mod walk;

use crate::error::Error;
use crate::io::{self, Arena, Backend, Probe};
use crate::reactor::Reactor;
use crate::spec::{CopySpec, FsyncMode, IoMode};
use crate::stats::Report;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use task::{Ctx, Task};

/// Which backend the reactors build, decided once per job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Uring,
    Sync,
}

fn choose_engine(mode: IoMode) -> Result<Engine, Error> {
    match mode {
        IoMode::Sync => Ok(Engine::Sync),
        IoMode::Uring | IoMode::Auto => match io::probe_uring() {
            Probe::Available { .. } => Ok(Engine::Uring),
            Probe::Unavailable(e) if mode == IoMode::Auto => {
                eprintln!("ferry: io_uring unavailable ({e}); using the blocking backend");
                Ok(Engine::Sync)
            }
            Probe::Unavailable(e) => Err(Error::os("io_uring_setup", Path::new("--io=uring"), e)),
        },
    }
}

fn make_backend(engine: Engine, spec: &CopySpec, me: usize) -> Box<dyn Backend> {
    let real = make_real_backend(engine, spec, me);
    match spec.faults {
        Some(cfg) => Box::new(io::faulty::FaultyBackend::new(real, cfg, me)),
        None => real,
    }
}

fn make_real_backend(engine: Engine, spec: &CopySpec, me: usize) -> Box<dyn Backend> {
    if spec.dry_run {
        // Nothing is read or written: no ring, no big arena.
        return Box::new(io::sync::SyncBackend::new(Arena::new(4096, 1), 2));
    }
    let arena = Arena::new(spec.buffer_size, spec.queue_depth);
    let cap = 2 * spec.queue_depth;
    if engine == Engine::Uring {
        match io::uring::UringBackend::new(arena, cap) {
            Ok(b) => return Box::new(b),
            Err(e) => {
                eprintln!(
                    "ferry: reactor {me}: io_uring ring failed ({e}); using the blocking backend"
                );
                let arena = Arena::new(spec.buffer_size, spec.queue_depth);
                return Box::new(io::sync::SyncBackend::new(arena, cap));
            }
        }
    }
    Box::new(io::sync::SyncBackend::new(arena, cap))
}

/// Lets many fds be open at once (files in flight across reactors); the hard limit is the cap.
fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer; failure leaves the limit as it was, which is still correct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Sets this process's thread's panic to abort the job instead of hanging the others.
struct AbortOnPanic(Arc<Ctx>);

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stats.abort.store(true, Ordering::Release);
        }
    }
}

/// Copies `spec.sources` to `spec.dest`. `Err` means the job did not start and nothing was
/// written (bad input); per-file failures are in the report.
pub fn run(spec: CopySpec) -> Result<Report, Error> {
    spec.validate()
        .map_err(|m| Error::usage(Path::new("ferry copy"), m))?;
    let filter = crate::filter::Filter::new(&spec.filters)
        .map_err(|m| Error::usage(Path::new("ferry copy"), m))?;
    let plan = plan::resolve(&spec.sources, &spec.dest)?;
    let engine = choose_engine(spec.io)?;
    raise_fd_limit();
    let started = Instant::now();
    let reactors = spec.reactor_count();
    let ctx = Arc::new(Ctx::new(spec.clone(), filter, reactors));
    let dest_dev = std::fs::metadata(&plan.dest_dir)
        .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
        .map_err(|e| Error::os("stat", &plan.dest_dir, e))?;
    ctx.note_dst_fs(dest_dev, &plan.dest_dir)?;

    for root in plan.roots {
        let owner = ctx.owner_of(root.st.st_dev);
        match crate::meta::file_type(&root.st) {
            libc::S_IFDIR => ctx.queues.push_local(
                owner,
                Task::Dir {
                    src: root.src,
                    dst: root.target,
                    parent: None,
                },
            ),
            libc::S_IFREG => ctx.queues.push_local(
                owner,
                Task::File {
                    src: root.src,
                    dst: root.target,
                    parent: None,
                    attempt: 1,
                },
            ),
            _ => {
                if let Err(e) = walk::copy_inline(&ctx, &root.src, &root.target) {
                    ctx.stats.error(e);
                }
            }
        }
    }

    let (commit_tx, committer) = match spec.fsync {
        FsyncMode::Batch => {
            let (tx, rx) = std::sync::mpsc::sync_channel(commit::CHANNEL);
            let c = ctx.clone();
            let h = std::thread::Builder::new()
                .name("ferry-commit".into())
                .spawn(move || {
                    let _guard = AbortOnPanic(c.clone());
                    commit::run(c, rx)
                })
                .map_err(|e| Error::os("spawn", Path::new("ferry-commit"), e))?;
            (Some(tx), Some(h))
        }
        FsyncMode::File => (None, None),
    };

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::with_capacity(reactors);
    let mut backend_name = "sync";
    for me in 0..reactors {
        let c = ctx.clone();
        let tx = commit_tx.clone();
        let core = (!cores.is_empty()).then(|| cores[me % cores.len()]);
        let h = std::thread::Builder::new()
            .name(format!("ferry-r{me}"))
            .spawn(move || {
                let _guard = AbortOnPanic(c.clone());
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                let spec = c.spec.clone();
                let backend = make_backend(engine, &spec, me);
                let name = backend.name();
                let mut r = Reactor::new(me, c, backend, tx);
                (r.run(), name)
            });
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                ctx.stats.abort.store(true, Ordering::Release);
                ctx.stats
                    .error(Error::os("spawn", Path::new("ferry reactor"), e));
                break;
            }
        }
    }
    drop(commit_tx);
    for h in handles {
        match h.join() {
            Ok((Ok(()), name)) => backend_name = name,
            Ok((Err(e), _)) => ctx.stats.error(e),
            Err(_) => ctx.stats.error(Error::errno(
                "reactor",
                Path::new("ferry reactor"),
                libc::EFAULT, /* a panic: a bug, reported rather than hidden */
            )),
        }
    }
    if let Some(h) = committer
        && h.join().is_err()
    {
        ctx.stats.error(Error::errno(
            "commit",
            Path::new("ferry-commit"),
            libc::EFAULT,
        ));
    }
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
    if let Err(e) = ctx.sync_dst(None) {
        ctx.stats.error(e);
    }
    Ok(ctx.stats.report(started.elapsed(), backend_name, reactors))
}
