//! Directory tasks: create the destination directory, list the source in batches and turn each
//! entry into work. Directories are tasks like files, so the walk runs on every reactor at once.

use super::task::{Ctx, DIR_BATCH, DirNode, MAX_DIR_CONTINUATIONS, Task, child_done};
use crate::error::{Error, ErrorKind};
use crate::meta;
use crate::stats::Stats;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Starts a directory: mkdir at the destination, open the listing, list the first batch.
pub fn start_dir(ctx: &Ctx, me: usize, src: PathBuf, dst: PathBuf, parent: Option<Arc<DirNode>>) {
    let dry = ctx.spec.dry_run;
    let begun = meta::lstat(&src).and_then(|st| {
        if !dry {
            meta::make_dir(&dst)?;
        }
        let dst_dev = if dry { 0 } else { meta::lstat(&dst)?.st_dev };
        // --one-file-system: a mount point is created (as cp -x and rsync -x do) but not entered.
        let other_fs =
            ctx.spec.one_file_system && parent.as_ref().is_some_and(|p| p.st.st_dev != st.st_dev);
        let iter = if other_fs {
            None
        } else {
            let short = meta::cpath(&src, "opendir")?;
            Some(std::fs::read_dir(short.as_path()).map_err(|e| Error::os("opendir", &src, e))?)
        };
        Ok((st, dst_dev, iter))
    });
    match begun {
        Ok((st, dst_dev, iter)) => {
            Stats::add(&ctx.stats.dirs, 1);
            let rel = match (&parent, src.file_name()) {
                (Some(p), Some(n)) => p.rel.join(n),
                _ => PathBuf::new(),
            };
            let node = Arc::new(DirNode {
                src: src.clone(),
                rel,
                dst,
                dst_dev,
                st,
                pending: AtomicUsize::new(1),
                parent,
            });
            match iter {
                Some(iter) => list_more(ctx, me, iter, src, node, false),
                None => {
                    child_done(&Some(node), ctx);
                    ctx.queues.finish();
                }
            }
        }
        Err(e) => {
            ctx.stats.error(e);
            child_done(&parent, ctx);
            ctx.queues.finish();
        }
    }
}

/// Lists up to one batch; suspends the rest as a continuation when allowed.
pub fn list_more(
    ctx: &Ctx,
    me: usize,
    mut iter: std::fs::ReadDir,
    src: PathBuf,
    node: Arc<DirNode>,
    was_suspended: bool,
) {
    if was_suspended {
        ctx.dir_continuations.fetch_sub(1, Ordering::AcqRel);
    }
    let owner = ctx.owner_of(node.st.st_dev);
    let mut n = 0usize;
    loop {
        if ctx.stats.abort.load(Ordering::Acquire) {
            break;
        }
        let Some(entry) = iter.next() else { break };
        match entry {
            Ok(entry) => {
                let name = entry.file_name();
                let ft = entry.file_type().ok();
                if !ctx.filter.is_empty()
                    && !ctx
                        .filter
                        .included(&node.rel.join(&name), ft.is_some_and(|t| t.is_dir()))
                {
                    n += 1;
                    continue;
                }
                let (s, d) = (src.join(&name), node.dst.join(&name));
                node.add_child();
                dispatch(ctx, owner, ft, s, d, &node);
            }
            Err(e) => ctx.stats.error(Error::os("readdir", &src, e)),
        }
        n += 1;
        if n >= DIR_BATCH {
            // Leave the rest for later so files already queued get going (other reactors steal
            // them); bounded, because each suspended listing holds an open fd.
            let suspended = ctx.dir_continuations.fetch_add(1, Ordering::AcqRel);
            if suspended < MAX_DIR_CONTINUATIONS {
                ctx.queues.requeue(me, Task::DirMore { iter, src, node });
                return;
            }
            ctx.dir_continuations.fetch_sub(1, Ordering::AcqRel);
            n = 0;
        }
    }
    // The listing itself is one of the node's pending units.
    child_done(&Some(node), ctx);
    ctx.queues.finish();
}

/// Turns one entry into a task, or copies it at once when it is only metadata.
fn dispatch(
    ctx: &Ctx,
    owner: usize,
    ft: Option<std::fs::FileType>,
    src: PathBuf,
    dst: PathBuf,
    node: &Arc<DirNode>,
) {
    use std::os::unix::fs::FileTypeExt;
    let parent = Some(node.clone());
    match ft {
        Some(t) if t.is_dir() => ctx.queues.push_local(owner, Task::Dir { src, dst, parent }),
        Some(t) if t.is_file() => ctx.queues.push_local(
            owner,
            Task::File {
                src,
                dst,
                parent,
                attempt: 1,
            },
        ),
        Some(t) if t.is_socket() => {
            ctx.stats.skipped.fetch_add(1, Ordering::Relaxed);
            eprintln!("ferry: skipping socket '{}'", src.display());
            child_done(&parent, ctx);
        }
        _ => {
            if let Err(e) = copy_inline(ctx, &src, &dst) {
                ctx.stats.error(e);
            }
            child_done(&parent, ctx);
        }
    }
}

/// Symlinks (as links), FIFOs and device nodes: made directly, never opened.
pub fn copy_inline(ctx: &Ctx, src: &Path, dst: &Path) -> Result<(), Error> {
    let st = meta::lstat(src)?;
    if ctx.spec.dry_run && meta::file_type(&st) != libc::S_IFSOCK {
        let c = if meta::file_type(&st) == libc::S_IFLNK {
            &ctx.stats.symlinks
        } else {
            &ctx.stats.specials
        };
        Stats::add(c, 1);
        return Ok(());
    }
    match meta::file_type(&st) {
        libc::S_IFLNK => {
            meta::copy_special(src, dst, &st, &ctx.spec.preserve, ctx.umask)?;
            Stats::add(&ctx.stats.symlinks, 1);
        }
        libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK => {
            meta::copy_special(src, dst, &st, &ctx.spec.preserve, ctx.umask)?;
            Stats::add(&ctx.stats.specials, 1);
        }
        libc::S_IFSOCK => {
            return Err(Error {
                op: "copy",
                path: src.to_path_buf(),
                kind: ErrorKind::Unsupported("sockets are not copied"),
            });
        }
        // The entry changed type between readdir and lstat: queue it as what it is now.
        libc::S_IFREG | libc::S_IFDIR => {
            return Err(Error::errno("copy", src, libc::EAGAIN));
        }
        _ => return Err(Error::errno("copy", src, libc::EINVAL)),
    }
    Ok(())
}
