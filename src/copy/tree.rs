//! `--temp tree`: a new directory tree is built under a hidden name beside its target
//! (`.<name>.ferry-<token>.tree`), every file written at its own name there, and the tree is
//! renamed to its target once all of it is durable. A partial file never carries a final name
//! (nothing in a hidden tree does), and no file pays for a temp name and a rename of its own:
//! on XFS the per-file O_TMPFILE + linkat (or create + rename) was most of a small file's cost.
//!
//! A killed run leaves the hidden tree; the next run of the job resumes into it when its
//! journal says what is durable there, after removing every file the journal does not vouch
//! for (a copy cut short has its final size and may have its mtime, so no quick check).

use super::plan::Plan;
use super::task::Ctx;
use crate::error::Error;
use crate::meta;
use crate::spec::TempMode;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// A root being built under a hidden name.
pub struct Staged {
    pub hidden: PathBuf,
    pub target: PathBuf,
}

/// The job's hidden trees (none: per-file temps).
#[derive(Default)]
pub struct Tree {
    pub staged: Vec<Staged>,
    /// A failed file's copy could not be removed from a hidden tree: the tree must not get
    /// its final name.
    dirty: AtomicBool,
}

impl Tree {
    /// Whether `p` is inside one of the hidden trees (by bytes: the walk builds every path
    /// below a root by joining names to it).
    pub fn holds(&self, p: &Path) -> bool {
        let p = p.as_os_str().as_bytes();
        self.staged.iter().any(|s| {
            let h = s.hidden.as_os_str().as_bytes();
            p.len() > h.len() && p.starts_with(h) && p[h.len()] == b'/'
        })
    }

    /// Removes a discarded copy (a failed or cancelled file). Inside a hidden tree a copy
    /// that cannot be removed would become visible with the tree: the tree stays hidden.
    pub fn unlink(&self, p: &Path) -> Result<(), Error> {
        let r = meta::unlink(p);
        if let Err(e) = &r
            && e.raw_os_error() != Some(libc::ENOENT)
            && self.holds(p)
        {
            self.dirty.store(true, Ordering::Release);
        }
        r
    }
}

/// Builds the job's directory roots under hidden names when it can (`--temp auto|tree`).
/// After `resume_or_start`: it needs the job's state (the journal) to resume a hidden tree.
pub fn stage(ctx: &mut Ctx, plan: &mut Plan) -> Result<(), Error> {
    let mode = ctx.spec.temp;
    if !matches!(mode, TempMode::Auto | TempMode::Tree) {
        return Ok(());
    }
    if let Some(why) = why_not(ctx, plan) {
        if mode == TempMode::Tree {
            return Err(Error::usage(
                Path::new(""),
                format!("--temp tree: {why}; use --temp auto, file or named"),
            ));
        }
        return Ok(());
    }
    let mut staged = Vec::with_capacity(plan.roots.len());
    for root in &mut plan.roots {
        let hidden = crate::temp::tree_name(&root.target, &ctx.record.temp_token);
        reuse_or_clear(ctx, &hidden, &root.src)?;
        let target = std::mem::replace(&mut root.target, hidden.clone());
        staged.push(Staged { hidden, target });
    }
    ctx.tree.staged = staged;
    Ok(())
}

/// Why this job's roots cannot be built as hidden trees (None: they can).
fn why_not(ctx: &Ctx, plan: &Plan) -> Option<&'static str> {
    let spec = &ctx.spec;
    if ctx.state.is_none() {
        return Some("a hidden tree needs the job's state dir to be resumed");
    }
    if spec.dry_run || spec.remove_source || spec.rebalance.is_some() || ctx.out.hook.is_some() {
        return Some("only for copies (not a move, a dry run or a rebalance)");
    }
    if spec.fail_fast {
        return Some("--fail-fast stops with the files that fit at their names");
    }
    if plan.roots.is_empty() {
        return Some("there is no source directory to build");
    }
    if !ctx.tables.overlaps.is_empty() {
        return Some("the sources' targets overlap");
    }
    for r in &plan.roots {
        if meta::file_type(&r.st) != libc::S_IFDIR {
            return Some("every source must be a directory");
        }
        if meta::lstat(&r.target).is_ok() {
            return Some("a target exists already (a hidden tree only makes new trees)");
        }
    }
    None
}

/// An earlier run's hidden tree is resumed when this run has its journal (an unfinished job);
/// otherwise (a fresh start, or no journal) it is removed: only the journal says what in it
/// is durable.
fn reuse_or_clear(ctx: &Ctx, hidden: &Path, src: &Path) -> Result<(), Error> {
    let Ok(st) = meta::lstat(hidden) else {
        return Ok(());
    };
    let is_dir = meta::file_type(&st) == libc::S_IFDIR;
    if !(ctx.resumed_journal && is_dir) {
        eprintln!(
            "ferry: removing an earlier run's unfinished tree '{}'",
            hidden.display()
        );
    } else {
        match prune(ctx, hidden, src) {
            Ok(n) => {
                eprintln!(
                    "ferry: resuming into '{}' ({n} unfinished files removed)",
                    hidden.display()
                );
                return Ok(());
            }
            Err(e) => eprintln!(
                "ferry: cannot check the earlier run's tree '{}' ({e}); copying it again",
                hidden.display()
            ),
        }
    }
    let gone = match is_dir {
        true => std::fs::remove_dir_all(hidden),
        false => std::fs::remove_file(hidden),
    };
    gone.map_err(|e| Error::os("remove", hidden, e))
}

/// Removes every regular file under `hidden` the journal does not record as copied from the
/// same place under `src` with that size; returns how many went.
fn prune(ctx: &Ctx, hidden: &Path, src: &Path) -> std::io::Result<u64> {
    let mut removed = 0;
    let mut dirs = vec![(hidden.to_path_buf(), src.to_path_buf())];
    while let Some((dir, from)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let source = from.join(entry.file_name());
            if kind.is_dir() {
                dirs.push((entry.path(), source));
            } else if kind.is_file() {
                let size = entry.metadata()?.len();
                let vouched = ctx.tables.done.get(&source).is_some_and(|d| d.size == size);
                if !vouched {
                    std::fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

/// At the job's end, after the destination's sync: each hidden tree gets its final name (and
/// the rename is made durable) when everything in it is durable; otherwise it stays hidden for
/// the next run, and the user is told where it is.
pub fn unveil(ctx: &Ctx, synced: bool) {
    let tree = &ctx.tree;
    if tree.staged.is_empty() {
        return;
    }
    let stop = &ctx.steer.stop;
    let whole =
        synced && !stop.cancelled() && !stop.aborted() && !tree.dirty.load(Ordering::Acquire);
    for s in &tree.staged {
        if !whole {
            eprintln!(
                "ferry: the unfinished copy of '{}' is in '{}'; run the same command again to finish it",
                s.target.display(),
                s.hidden.display()
            );
            continue;
        }
        let named = meta::rename_noreplace(&s.hidden, &s.target)
            .and_then(|()| meta::fsync_dir(meta::parent_dir(&s.target)));
        if let Err(e) = named {
            ctx.stats.error(e);
            eprintln!(
                "ferry: the copy of '{}' stays in '{}'",
                s.target.display(),
                s.hidden.display()
            );
        }
    }
}
