//! Directory tasks: create the destination directory, list the source in batches and turn each
//! entry into work. Directories are tasks like files, so the walk runs on every reactor at once.

use super::task::{Ctx, DirNode, Task, child_done};
use crate::dirents::{self, DirStream, Kind};
use crate::error::Error;
use crate::meta;
use crate::stats::Stats;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most queued-and-unfinished tasks before listings pause to let the copy catch up.
pub const WALK_AHEAD: usize = 32_768;

/// Starts a directory: mkdir at the destination, open the listing, list the first batch.
/// Returns false when it only put the directory back to wait (walk back-pressure): the caller
/// must not count that as progress, or it would spin on the same task.
pub fn start_dir(
    ctx: &Ctx,
    me: usize,
    src: PathBuf,
    dst: PathBuf,
    parent: Option<Arc<DirNode>>,
    buf: &mut [u8],
) -> bool {
    if ctx.queues.outstanding() > WALK_AHEAD && !ctx.steer.stop.aborted() {
        // The walk is far ahead of the copy: this directory waits behind the queued files
        // (nothing is open yet, so any number of directories can wait).
        ctx.queues.requeue_last(Task::Dir { src, dst, parent });
        return false;
    }
    let begun = open_dir(ctx, &src, &dst, &parent);
    match begun {
        Ok((st, dst_dev, new_gid, stream, made)) => {
            Stats::add(&ctx.stats.dirs, 1);
            let rel = match (&parent, src.file_name()) {
                (Some(p), Some(n)) => p.rel.join(n),
                _ => PathBuf::new(),
            };
            let place = match &parent {
                Some(p) => ctx.tables.overlaps.place_below(&p.place, &dst, &ctx.filter),
                None => ctx
                    .tables
                    .overlaps
                    .root_index(&src, &dst)
                    .map(|i| ctx.tables.overlaps.place_of_root(i, &ctx.filter))
                    .unwrap_or_default(),
            };
            let node = Arc::new(DirNode {
                src: src.clone(),
                rel,
                dst,
                dst_dev,
                new_gid,
                st,
                pending: AtomicUsize::new(1),
                parent,
                fds: std::sync::OnceLock::new(),
                made,
                place,
            });
            match stream {
                Some(stream) => {
                    list_more(ctx, me, stream, src, node, false, buf);
                }
                None => {
                    ctx.stats.walking.fetch_sub(1, Ordering::AcqRel);
                    child_done(&Some(node), ctx);
                    ctx.queues.finish();
                }
            }
        }
        Err(e) => {
            ctx.note_failed(&src, true);
            ctx.stats.error(e);
            ctx.stats.walking.fetch_sub(1, Ordering::AcqRel);
            child_done(&parent, ctx);
            ctx.queues.finish();
        }
    }
    true
}

/// What starting a directory found: its source's stat, the destination's filesystem and the
/// group its new files get, the listing (None: a mount point not entered) and whether the
/// destination directory was made now.
type Begun = (libc::stat, u64, u32, Option<DirStream>, bool);

/// Makes the destination directory (not in a dry run) and opens the source's listing.
fn open_dir(
    ctx: &Ctx,
    src: &Path,
    dst: &Path,
    parent: &Option<Arc<DirNode>>,
) -> Result<Begun, Error> {
    let dry = ctx.spec.dry_run;
    let st = meta::lstat(src)?;
    let made = !dry && meta::make_dir(dst)?;
    let (dst_dev, new_gid) = if dry {
        (0, 0)
    } else {
        let d = meta::lstat(dst)?;
        let gid = if d.st_mode & libc::S_ISGID != 0 {
            d.st_gid
        } else {
            // SAFETY: plain getter.
            unsafe { libc::getegid() }
        };
        (d.st_dev, gid)
    };
    // --one-file-system: a mount point is created (as cp -x and rsync -x do) but not entered.
    let other_fs =
        ctx.spec.one_file_system && parent.as_ref().is_some_and(|p| p.st.st_dev != st.st_dev);
    let stream = if other_fs {
        None
    } else {
        Some(DirStream::open(src)?)
    };
    Ok((st, dst_dev, new_gid, stream, made))
}

/// Lists one getdents64 batch at a time; between batches the listing is suspended as a
/// continuation (when allowed) so the files already queued get going on every reactor.
/// Returns false when it listed nothing and only put itself back (walk back-pressure).
pub fn list_more(
    ctx: &Ctx,
    me: usize,
    mut stream: DirStream,
    src: PathBuf,
    node: Arc<DirNode>,
    was_suspended: bool,
    buf: &mut [u8],
) -> bool {
    let mut listed = false;
    if was_suspended {
        ctx.fds.resume_listing();
    }
    let owner = ctx.owner_of(node.st.st_dev);
    // Reused by every batch of this listing (entries in inode order).
    let mut order = Vec::new();
    loop {
        if ctx.steer.stop.aborted() {
            break;
        }
        if ctx.queues.outstanding() > WALK_AHEAD {
            // The walk is far ahead of the copy: let the queued files go first (memory stays
            // flat however many entries the tree has). Bounded by the suspended-listing limit.
            if ctx.fds.suspend_listing() {
                // Behind the queued files (a reactor's own queue may hold only continuations
                // while the files overflowed to the shared queue: requeueing locally would spin).
                ctx.queues.requeue_last(Task::DirMore { stream, src, node });
                return listed;
            }
        }
        listed = true;
        let n = match stream.fill(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                ctx.note_failed(&src, true);
                ctx.stats.error(Error::os("readdir", &src, e));
                break;
            }
        };
        dirents::parse_by_inode(&buf[..n], &mut order, |name, kind| {
            take_entry(ctx, owner, &stream, &src, &node, name, kind)
        });
        if n < buf.len() / 2 {
            // A short batch: the listing is almost surely over; the next getdents64 says so
            // without a trip through the queue.
            continue;
        }
        if ctx.fds.suspend_listing() {
            ctx.queues.requeue(me, Task::DirMore { stream, src, node });
            return true;
        }
    }
    // The listing itself is one of the node's pending units.
    ctx.stats.walking.fetch_sub(1, Ordering::AcqRel);
    child_done(&Some(node), ctx);
    ctx.queues.finish();
    true
}

/// One listed entry: filtered, decided against overlapping sources, counted (dry run) or
/// turned into work.
fn take_entry(
    ctx: &Ctx,
    owner: usize,
    stream: &DirStream,
    src: &Path,
    node: &Arc<DirNode>,
    name: &std::ffi::CStr,
    kind: Kind,
) {
    let os = dirents::os_name(name);
    let kind = match kind {
        Kind::Unknown => match stream.stat(name) {
            Ok(st) => dirents::kind_of_mode(st.st_mode),
            Err(e) => {
                ctx.stats.error(Error::os("stat", &src.join(os), e));
                return;
            }
        },
        k => k,
    };
    if !ctx.filter.is_empty() && !ctx.filter.included(&node.rel.join(os), kind == Kind::Dir) {
        return;
    }
    if ctx
        .tables
        .overlaps
        .replaced(&node.place, &node.dst, os, kind == Kind::Dir, &ctx.filter)
    {
        replaced(ctx, &src.join(os));
        return;
    }
    if ctx.spec.dry_run && kind == Kind::File {
        // Counted with one fstatat on the open directory: no task, no open.
        match stream.stat(name) {
            Ok(st) => count_dry(ctx, &st),
            Err(e) => ctx.stats.error(Error::os("stat", &src.join(os), e)),
        }
        return;
    }
    if kind == Kind::File && !ctx.spec.dry_run {
        // The first file of the directory opens its fds (directories holding only
        // directories never take from the budget). Their syscalls go relative to them
        // when the budget allows; any failure here only means full paths.
        node.fds.get_or_init(|| {
            ctx.fds.dir_pair(|| {
                stream
                    .dup_fd()
                    .ok()
                    .zip(meta::open_dir_path(&node.dst).ok())
            })
        });
    }
    node.add_child();
    dispatch(ctx, owner, kind, child(src, os), child(&node.dst, os), node);
}

/// `dir.join(name)` for a listed name (never empty, never holding '/'), built in one
/// allocation of the right size: it runs twice per file.
fn child(dir: &Path, name: &std::ffi::OsStr) -> PathBuf {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let (d, n) = (dir.as_os_str().as_bytes(), name.as_bytes());
    let sep = !d.is_empty() && !d.ends_with(b"/");
    let mut p = Vec::with_capacity(d.len() + usize::from(sep) + n.len());
    p.extend_from_slice(d);
    if sep {
        p.push(b'/');
    }
    p.extend_from_slice(n);
    PathBuf::from(std::ffi::OsString::from_vec(p))
}

/// A dry run's count of a regular file: a file, or a hard link where the copy would link it
/// to an earlier name of the same inode.
pub fn count_dry(ctx: &Ctx, st: &libc::stat) {
    if ctx.spec.preserve.links
        && st.st_nlink > 1
        && !ctx
            .tables
            .links
            .first_name((st.st_dev, st.st_ino), st.st_nlink)
    {
        Stats::add(&ctx.stats.hardlinks, 1);
        return;
    }
    Stats::add(&ctx.stats.files, 1);
    Stats::add(&ctx.stats.bytes, st.st_size as u64);
}

/// A source entry that a later source's entry replaces at its target: not copied (cp's last
/// wins, decided before either is copied). A move keeps it where it is, as an error: it cannot
/// be moved without losing it or the later one.
pub fn replaced(ctx: &Ctx, src: &Path) {
    if ctx.spec.remove_source {
        ctx.stats.error(Error {
            op: "move",
            target: crate::error::Target::Path(src.to_path_buf()),
            kind: crate::error::ErrorKind::Unsupported(
                "kept: a later source lands at the same target",
            ),
        });
    }
}

/// Turns one entry into a task, or copies it at once when it is only metadata.
fn dispatch(ctx: &Ctx, owner: usize, kind: Kind, src: PathBuf, dst: PathBuf, node: &Arc<DirNode>) {
    let parent = Some(node.clone());
    match kind {
        Kind::Dir => {
            ctx.stats.walking.fetch_add(1, Ordering::AcqRel);
            ctx.queues.push_local(owner, Task::Dir { src, dst, parent })
        }
        Kind::File => {
            Stats::add(&ctx.stats.found_files, 1);
            ctx.queues.push_local(
                owner,
                Task::File {
                    src,
                    dst,
                    parent,
                    attempt: 1,
                },
            )
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
            meta::copy_special(
                src,
                dst,
                &st,
                &ctx.spec.preserve,
                ctx.umask,
                &ctx.record.temp_token,
            )?;
            Stats::add(&ctx.stats.symlinks, 1);
        }
        libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK => {
            meta::copy_special(
                src,
                dst,
                &st,
                &ctx.spec.preserve,
                ctx.umask,
                &ctx.record.temp_token,
            )?;
            Stats::add(&ctx.stats.specials, 1);
        }
        libc::S_IFSOCK => {
            // A socket is a live endpoint, not data: skipped with a warning (like cp and rsync).
            Stats::add(&ctx.stats.skipped, 1);
            eprintln!("ferry: skipping socket '{}'", crate::error::shown(src));
        }
        // The entry changed type between readdir and lstat: queue it as what it is now.
        libc::S_IFREG | libc::S_IFDIR => {
            return Err(Error::errno("copy", src, libc::EAGAIN));
        }
        _ => return Err(Error::errno("copy", src, libc::EINVAL)),
    }
    if ctx.spec.remove_source && meta::file_type(&st) != libc::S_IFSOCK {
        super::remove::remove_entry(ctx, src, dst)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn child_paths_are_what_join_makes() {
        use std::ffi::OsStr;
        use std::path::Path;
        for d in ["", "/", "a", "a/", "/x/y", "./z", "a//"] {
            for n in ["f", ".f", "..f", "f g"] {
                let (dir, name) = (Path::new(d), OsStr::new(n));
                assert_eq!(super::child(dir, name), dir.join(name), "{d} + {n}");
            }
        }
    }
}
