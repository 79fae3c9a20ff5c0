//! `ferry move`: what happens to a source once its copy is safe. A source is deleted only
//! after its destination is durable (synced, renamed, synced again) and verified, and only if
//! it is unchanged since it was read; then its directory is fsynced so the deletion is durable
//! too. Emptied source directories go bottom-up, after their contents.

use super::task::{Ctx, Task};
use crate::coord::checkpoint::Done;
use crate::error::Error;
use crate::meta;
use crate::stats::Stats;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A moved file whose copy is durable and verified.
pub struct Moved {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub done: Done,
    pub parent: Option<Arc<super::task::DirNode>>,
    pub attempt: u32,
}

/// Deletes the sources of durable, verified copies and fsyncs their directories. Returns the
/// items whose source changed since it was read: they are queued again (their task units carry
/// over) or, out of attempts, failed with the source kept. The caller finishes the rest.
pub fn remove_files(ctx: &Ctx, items: Vec<Moved>) -> Vec<Option<Arc<super::task::DirNode>>> {
    let mut devs: Vec<(u64, PathBuf)> = Vec::new();
    let mut finished = Vec::with_capacity(items.len());
    for m in items {
        match meta::lstat(&m.src) {
            Ok(st) if m.done.unchanged(&st) => match meta::unlink(&m.src) {
                Ok(()) => {
                    if !devs.iter().any(|(d, _)| *d == st.st_dev) {
                        devs.push((st.st_dev, meta::parent_dir(&m.src).to_path_buf()));
                    }
                }
                Err(e) => ctx.stats.error(e),
            },
            // Gone already (someone else removed it): the copy is what is left; nothing lost.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => ctx.stats.error(e),
            Ok(_) if m.attempt < super::task::MAX_ATTEMPTS => {
                // Written to after we read it: the copy is stale, so copy it again.
                Stats::add(&ctx.stats.retries, 1);
                ctx.queues
                    .share(Task::new_file(m.src, m.dst, m.parent, m.attempt + 1));
                continue;
            }
            Ok(_) => {
                ctx.note_failed(&m.src, false);
                ctx.stats.error(Error {
                    op: "move",
                    target: crate::error::Target::Path(m.src.clone()),
                    kind: crate::error::ErrorKind::SourceChanged {
                        attempts: m.attempt,
                    },
                });
            }
        }
        finished.push(m.parent);
    }
    // One syncfs per source filesystem makes the batch's deletions durable (a batch can touch
    // thousands of directories; one fsync each would dominate small-file moves).
    for (dev, dir) in devs {
        if let Err(e) = ctx.fds.sync_src(dev, &dir) {
            ctx.stats.error(e);
        }
    }
    finished
}

fn sync_dirs(ctx: &Ctx, mut dirs: Vec<PathBuf>) {
    dirs.sort_unstable();
    dirs.dedup();
    for d in dirs {
        if let Err(e) = meta::fsync_dir(&d) {
            ctx.stats.error(e);
        }
    }
}

/// A symlink, device node, FIFO or extra hard link was made at `dst`: make its name durable,
/// then delete the source name.
pub fn remove_entry(ctx: &Ctx, src: &Path, dst: &Path) -> Result<(), Error> {
    meta::fsync_dir(meta::parent_dir(dst))?;
    meta::unlink(src)?;
    sync_dirs(ctx, vec![meta::parent_dir(src).to_path_buf()]);
    Ok(())
}

/// A source directory whose every entry was handled: remove it if it is empty (entries that
/// were excluded or failed keep it, and that is not an error). A root given as `SRC/.` named
/// only its contents: the directory itself stays (and rmdir of "." is EINVAL anyway).
pub fn remove_dir(ctx: &Ctx, src: &Path, dst: &Path) {
    if let Err(e) = meta::fsync_dir(dst) {
        // Its metadata may not be durable: keep the source directory.
        ctx.stats.error(e);
        return;
    }
    if super::plan::names_contents(src) {
        return;
    }
    match meta::rmdir(src) {
        Ok(()) => sync_dirs(ctx, vec![meta::parent_dir(src).to_path_buf()]),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {}
        // -x: a mount point it did not enter stays with its filesystem (rmdir says EBUSY).
        Err(e) if ctx.spec.one_file_system && e.raw_os_error() == Some(libc::EBUSY) => {}
        Err(e) => ctx.stats.error(e),
    }
}
