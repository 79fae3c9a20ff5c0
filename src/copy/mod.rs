//! The copy job: resolve the command line, start one pinned reactor per CPU and the committer,
//! wait for every task, then make the destination durable.

mod chunk;
pub mod commit;
pub mod driver;
mod execute;
pub mod fds;
mod finish;
pub mod fskind;
pub mod links;
mod open;
pub mod overlap;
pub mod plan;
pub mod remove;
#[cfg(test)]
mod scripted;
mod slotset;
pub mod steer;
pub mod task;
mod tree;
pub mod walk;

use crate::error::Error;
use crate::io::{self, Arena, Backend, Probe};
use crate::spec::{CopySpec, IoMode};
use crate::stats::Report;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use task::Ctx;

pub use execute::execute;

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
            Probe::Unavailable(e) => Err(Error::at(
                "io_uring_setup",
                crate::error::Target::Setting("--io=uring"),
                crate::error::ErrorKind::Os(e),
            )),
        },
    }
}

fn make_backend(engine: Engine, spec: &CopySpec, me: usize) -> Box<dyn Backend> {
    let real = make_real_backend(engine, spec, me);
    match &spec.backend {
        Some(wrap) => wrap.wrap(real, me),
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
            self.0.steer.stop.abort();
        }
    }
}

/// Copies `spec.sources` to `spec.dest`. `Err` means the job did not start and nothing was
/// written (bad input); per-file failures are in the report.
pub fn run(spec: CopySpec) -> Result<Report, Error> {
    let p = prepare(spec)?;
    Ok(execute(p))
}

/// Produces a job's tasks while it runs (rebalance: the scanner); the job cannot end before
/// it returns.
pub type Feeder = Box<dyn FnOnce(&Arc<Ctx>) + Send>;
/// Runs once every task is done and durable, before the job's end state is decided (not after
/// a cancel); errors it reports fail the job.
pub type Finisher = Box<dyn FnOnce(&Ctx) + Send>;

/// A checked job, ready to run: nothing has been written yet.
pub struct Prepared {
    pub ctx: Arc<Ctx>,
    plan: plan::Plan,
    engine: Engine,
    pub feeder: Option<Feeder>,
    pub finisher: Option<Finisher>,
}

/// Validates the spec and the command line's paths, probes io_uring. `Err`: bad input.
pub fn prepare(spec: CopySpec) -> Result<Prepared, Error> {
    spec.validate()
        .map_err(|m| Error::usage(Path::new(""), m))?;
    let filter = crate::filter::Filter::new(&spec.filters)
        .map_err(|m| Error::usage(Path::new(""), m))?
        .with_partitions(spec.partitions.clone());
    let earlier = earlier_run(&spec);
    let mut plan = plan::resolve(&spec.sources, &spec.dest, earlier.as_ref())?;
    let engine = choose_engine(spec.io)?;
    raise_fd_limit();
    let reactors = spec.reactor_count();
    let mut ctx = Ctx::new(spec, filter, reactors);
    let roots: Vec<_> = plan
        .roots
        .iter()
        .map(|r| (r.src.clone(), r.target.clone()))
        .collect();
    ctx.tables.overlaps = overlap::Overlaps::new(&roots);
    if let Some(root) = ctx.spec.state_dir.clone()
        && !ctx.spec.dry_run
    {
        resume_or_start(&mut ctx, &root, &plan)?;
    }
    tree::stage(&mut ctx, &mut plan)?;
    if let Some(m) = ctx.spec.manifest.clone() {
        // Written anew by every run: a resumed run records the files it skips too.
        let mut w = crate::manifest::Writer::create(&m, &plan.dest_root)?;
        for s in &ctx.tree.staged {
            w.rename(&s.hidden, &s.target);
        }
        ctx.out.manifest = Some(std::sync::Mutex::new(w));
    }
    let ctx = Arc::new(ctx);
    let dest_dev = std::fs::metadata(&plan.dest_dir)
        .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
        .map_err(|e| Error::os("stat", &plan.dest_dir, e))?;
    ctx.note_dst_fs(dest_dev, &plan.dest_dir)?;
    Ok(Prepared {
        ctx,
        plan,
        engine,
        feeder: None,
        finisher: None,
    })
}

/// Where an earlier run of this job put each source (its checkpoint, read without the lock: a
/// run still going is refused when the state dir is opened). `--fresh` keeps them too: starting
/// over means copying again, not into a new place.
fn earlier_run(spec: &CopySpec) -> Option<plan::Earlier> {
    use crate::coord::checkpoint::{Checkpoint, job_id};
    let id = job_id(spec);
    let path = spec.state_dir.as_ref()?.join(&id).join("checkpoint.json");
    let cp: Checkpoint = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    (job_id(&cp.spec) == id && cp.spec.rebalance.is_none()).then_some(plan::Earlier {
        targets: cp.targets,
        moving: spec.remove_source,
    })
}

/// A job without command-line sources: `feeder` produces its tasks, `hook` commits them.
/// Resumable through the state dir like a copy (its spec's sources/dest name the job).
pub fn prepare_fed(
    spec: CopySpec,
    hook: Arc<dyn commit::CommitHook>,
    feeder: Feeder,
    finisher: Finisher,
) -> Result<Prepared, Error> {
    spec.validate()
        .map_err(|m| Error::usage(Path::new(""), m))?;
    let engine = choose_engine(spec.io)?;
    raise_fd_limit();
    let reactors = spec.reactor_count();
    let mut ctx = Ctx::new(
        spec,
        crate::filter::Filter::new(&[]).expect("no rules"),
        reactors,
    );
    ctx.out.hook = Some(hook);
    let plan = plan::Plan {
        roots: Vec::new(),
        targets: Vec::new(),
        moved_before: 0,
        dest_dir: PathBuf::new(),
        dest_root: PathBuf::new(),
    };
    if let Some(root) = ctx.spec.state_dir.clone() {
        resume_or_start(&mut ctx, &root, &plan)?;
    }
    Ok(Prepared {
        ctx: Arc::new(ctx),
        plan,
        engine,
        feeder: Some(feeder),
        finisher: Some(finisher),
    })
}

/// Temps any earlier run of this job left carry its token: keep it, so they are known (and
/// replaced or removed) as this job's.
fn adopt_temp_token(
    ctx: &mut Ctx,
    earlier: Option<&crate::coord::checkpoint::Checkpoint>,
    dir: &Path,
) {
    if let Some(t) = earlier.and_then(|cp| cp.temp_token.as_deref()) {
        match crate::temp::Token::parse(t) {
            Some(t) => ctx.record.temp_token = t,
            None => eprintln!(
                "ferry: ignoring a malformed temp token in {}",
                dir.display()
            ),
        }
    }
}

/// Opens the job's state; resumes an unfinished earlier run (its journal says what is done,
/// its checkpoint where each source lands) unless `--fresh`.
fn resume_or_start(ctx: &mut Ctx, root: &Path, plan: &plan::Plan) -> Result<(), Error> {
    use crate::coord::checkpoint::{StateDir, job_id};
    let id = job_id(&ctx.spec);
    let sd = match StateDir::open(root, &id) {
        Ok(sd) => sd,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            return Err(Error::usage(&root.join(&id), e.to_string()));
        }
        Err(e) if ctx.spec.state_dir_optional => {
            eprintln!(
                "ferry: cannot keep job state in '{}' ({e}); this run cannot be resumed",
                root.display()
            );
            return Ok(());
        }
        Err(e) => return Err(Error::os("state dir", &root.join(&id), e)),
    };
    let earlier = sd.load_checkpoint();
    adopt_temp_token(ctx, earlier.as_ref(), &sd.dir);
    if let Some(cp) = &earlier {
        refuse_another_job(ctx, cp, &sd.dir, &id)?;
    }
    take_over(ctx, &sd, earlier, &id)?;
    if ctx.spec.retry_failed {
        only_the_failed(ctx, &sd)?;
    }
    ctx.record.job_id = Some(id);
    ctx.record.targets = plan.targets.clone();
    ctx.state = Some(sd);
    ctx.checkpoint(crate::coord::state::JobState::Running);
    Ok(())
}

/// Unless `--fresh`: a checkpoint of another spec, or an unfinished rebalance between other
/// generations, is refused (bad input).
fn refuse_another_job(
    ctx: &Ctx,
    cp: &crate::coord::checkpoint::Checkpoint,
    dir: &Path,
    id: &str,
) -> Result<(), Error> {
    use crate::coord::checkpoint::job_id;
    if ctx.spec.fresh {
        return Ok(());
    }
    if job_id(&cp.spec) != id {
        return Err(Error::usage(
            dir,
            "the checkpoint there was written for a different job spec; \
             run with --fresh to start over",
        ));
    }
    if cp.state != crate::coord::state::JobState::Completed
        && let (Some(was), Some(now)) = (&cp.spec.rebalance, &ctx.spec.rebalance)
        && (was.from_generation, was.to_generation) != (now.from_generation, now.to_generation)
    {
        return Err(Error::usage(
            dir,
            format!(
                "the unfinished rebalance there moves generation {} -> {}, not {} -> {}; \
                 run with --fresh to plan again from the disks",
                was.from_generation, was.to_generation, now.from_generation, now.to_generation
            ),
        ));
    }
    Ok(())
}

/// What this run takes over from the earlier one: its journal (unfinished), the targets'
/// quick check (a rerun of a copy or move), or nothing (the state is reset).
fn take_over(
    ctx: &mut Ctx,
    sd: &crate::coord::checkpoint::StateDir,
    earlier: Option<crate::coord::checkpoint::Checkpoint>,
    id: &str,
) -> Result<(), Error> {
    use crate::coord::checkpoint::job_id;
    use crate::coord::state::JobState::Completed;
    // A copy or move run before (not a rebalance, which plans anew) lands where it did (see
    // plan::resolve) and skips what is up to date there.
    let rerun = earlier.as_ref().is_some_and(|cp| {
        cp.spec.rebalance.is_none() && ctx.spec.rebalance.is_none() && job_id(&cp.spec) == id
    });
    match earlier {
        Some(cp) if !ctx.spec.fresh && cp.state != Completed => {
            ctx.tables.done = sd
                .load_journal()
                .map_err(|e| Error::os("read journal", &sd.dir, e))?;
            ctx.resuming = true;
            ctx.resumed_journal = true;
            let bytes: u64 = ctx.tables.done.values().map(|d| d.size).sum();
            eprintln!(
                "ferry: resuming job {id}: {} files, {} bytes already done",
                ctx.tables.done.len(),
                bytes
            );
        }
        _ if ctx.spec.retry_failed => {
            return Err(Error::usage(
                &sd.dir,
                "--retry-failed: the last run of this job finished without failures",
            ));
        }
        Some(cp) if rerun => {
            // Completed (or --fresh): the journal is forgotten; a target file with its
            // source's size and mtime is up to date (only this job's finished copies carry
            // final names there), the rest is copied again.
            sd.reset()
                .map_err(|e| Error::os("reset state", &sd.dir, e))?;
            ctx.resuming = true;
            let complete = cp.state == Completed && !ctx.spec.fresh;
            ctx.stats.was_complete.store(complete, Ordering::Relaxed);
        }
        _ => sd
            .reset()
            .map_err(|e| Error::os("reset state", &sd.dir, e))?,
    }
    Ok(())
}

/// `--retry-failed`: only what the last run recorded as failed is copied.
fn only_the_failed(ctx: &mut Ctx, sd: &crate::coord::checkpoint::StateDir) -> Result<(), Error> {
    let set = sd
        .load_failed()
        .map_err(|e| Error::os("read failures", &sd.dir, e))?;
    if set.is_empty() {
        return Err(Error::usage(
            &sd.dir,
            "--retry-failed: the last run of this job recorded no failures",
        ));
    }
    eprintln!(
        "ferry: retrying {} failed files and {} failed directories",
        set.files.len(),
        set.dirs.len()
    );
    ctx.tables.only = Some(set);
    Ok(())
}

/// `ferry move` within one filesystem: one rename(2) moves the whole root (metadata only, atomic).
/// Only when the target does not exist yet (RENAME_NOREPLACE) and nothing below a directory
/// could be kept back (an exclude rule, `-x` at a mount point); otherwise, or on any error,
/// false: the root is copied and deleted file by file instead.
fn rename_root(ctx: &Ctx, root: &plan::Root) -> bool {
    use crate::meta;
    if meta::file_type(&root.st) == libc::S_IFDIR
        && (ctx.filter.excludes_any() || ctx.spec.one_file_system)
    {
        return false;
    }
    let parent = meta::parent_dir(&root.target);
    let same_fs = meta::lstat(parent).is_ok_and(|p| p.st_dev == root.st.st_dev);
    if !same_fs || meta::rename_noreplace(&root.src, &root.target).is_err() {
        return false;
    }
    // Both directories' entries changed: make the move durable before reporting it.
    for d in [parent, meta::parent_dir(&root.src)] {
        if let Err(e) = meta::fsync_dir(d) {
            ctx.stats.error(e);
        }
    }
    crate::stats::Stats::add(&ctx.stats.renamed, 1);
    true
}
