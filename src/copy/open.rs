//! The start of a file's copy on its reactor: open and stat the source, skip what needs no
//! copy (resumed, dry run, --retry-failed, another name of a hard-linked file), create the
//! temp file, and split the data into segments: the first is copied here, the others are
//! offered to every reactor.

use super::driver::CopyReactor;
use super::task::{AnonSlot, Naming, done_record};
use super::task::{DirNode, FileJob, LinkClaim, LinkWaiter, MAX_ATTEMPTS, Task, child_done};
use crate::error::Error;
use crate::io::errno::{self, Verdict};
use crate::meta;
use crate::stats::Stats;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::Xxh3;

/// Longest wait before retrying a file after a transient error.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Data extents tracked per sparse file.
const MAX_RANGES: usize = 4096;

/// A file task being opened.
pub(super) struct Opening {
    src: PathBuf,
    dst: PathBuf,
    parent: Option<Arc<DirNode>>,
    attempt: u32,
    /// (source dir fd, destination dir fd) of the parent, when it has them.
    at: Option<(RawFd, RawFd)>,
    /// `dst` is inside a hidden tree (`--temp tree`): written at its own name there.
    in_tree: bool,
}

/// The temp file, created and prepared: its fd and name, the source's data ranges, and the
/// destination's filesystem.
struct Created {
    fd: OwnedFd,
    tmp: PathBuf,
    naming: Naming,
    ranges: Vec<(u64, u64)>,
    dev: u64,
}

impl CopyReactor {
    /// Opens the source, creates the temp file, and starts copying its data.
    pub(super) fn open_file(
        &mut self,
        src: PathBuf,
        dst: PathBuf,
        parent: Option<Arc<DirNode>>,
        attempt: u32,
    ) -> Result<(), Error> {
        let open_t0 = Instant::now();
        // Relative to the parent's directory fds when it has them (no path walk per call).
        let at = parent.as_ref().and_then(|p| p.child_fds(Some(&src), &dst));
        let in_tree = self.ctx.tree.holds(&dst);
        let o = Opening {
            src,
            dst,
            parent,
            attempt,
            at,
            in_tree,
        };
        let (src_fd, st) = match open_source(&o) {
            Ok(v) => v,
            Err(e) => {
                self.open_failed(&o, e);
                return Ok(());
            }
        };
        if self.needs_no_copy(&o, &st) {
            return Ok(());
        }
        let link_key = match self.link_key(&o, &st) {
            Ok(k) => k,
            Err(()) => return Ok(()), // made (or queued to be made) by the copy of the first name
        };
        let (create_mode, known) = self.create_mode(&o, &st);
        let mut anon = self.anon_slot(st.st_size as u64);
        let created = self.create_temp(&o, &src_fd, &st, create_mode, &mut anon);
        crate::latency::record(&mut self.lat.open, open_t0.elapsed().as_micros() as u64);
        let c = match created {
            Ok(c) => c,
            Err(e) => {
                if let Some(key) = link_key {
                    self.ctx.link_failed(key);
                }
                self.open_failed(&o, e);
                return Ok(());
            }
        };
        self.note_dev(c.dev, &o);
        let hash = self.ctx.spec.verify.hashes();
        // Cut ranges into segments so one big file spreads over every reactor's queue (not
        // when hashing: the hash needs the bytes in order, on one reactor).
        let seg_size = if hash {
            u64::MAX
        } else {
            self.ctx.spec.segment_size
        };
        let segs = segments(c.ranges, seg_size);
        // Hashed: all ranges are one segment, on this reactor.
        let count = if hash { 1 } else { segs.len() };
        let mut job = FileJob::new(
            o.src, o.dst, c.tmp, src_fd, c.fd, st, o.parent, o.attempt, c.dev, link_key, count,
        );
        job.known = known;
        job.naming = c.naming;
        job.anon_slot = std::sync::Mutex::new(anon);
        self.open_direct(&mut job);
        self.start_job(job, segs, hash)
    }

    /// A file step failed: retried later (transient), requeued for resume (destination
    /// full), skipped (the source vanished) or reported.
    fn open_failed(&mut self, o: &Opening, e: Error) {
        let errno = e.raw_os_error().unwrap_or(0);
        match errno::on_file_step(errno) {
            Verdict::Retry if o.attempt < MAX_ATTEMPTS => {
                // Retried after 100 ms, doubling, capped at 5 s; the task's unit carries over.
                let wait = Duration::from_millis(100 << (o.attempt - 1)).min(MAX_BACKOFF);
                Stats::add(&self.ctx.stats.retries, 1);
                let t = Task::file(&o.src, &o.dst, &o.parent, o.attempt + 1);
                self.delayed.push((Instant::now() + wait, t));
                return;
            }
            Verdict::Park if self.ctx.destination_full(e.path()) => {
                // No room for the temp file or its blocks: paused; this file is tried again on
                // resume (same attempt: nothing about the file was wrong).
                let t = Task::file(&o.src, &o.dst, &o.parent, o.attempt);
                self.ctx.queues.requeue(self.me, t);
                return;
            }
            _ => {}
        }
        self.ctx.note_failed(&o.src, false);
        if errno == libc::ENOENT && e.op == "open" {
            // The source vanished between the listing and the open: skipped, not failed.
            Stats::add(&self.ctx.stats.skipped, 1);
            eprintln!(
                "ferry: skipping '{}': it vanished",
                crate::error::shown(e.path())
            );
        } else {
            self.ctx.stats.error(e);
        }
        self.file_over(o);
    }

    /// This file's task is over here (its parent directory may now be finished).
    fn file_over(&self, o: &Opening) {
        child_done(&o.parent, &self.ctx);
        self.ctx.queues.finish();
    }

    /// Whether the file is settled without a copy: --retry-failed leaves it, an earlier run
    /// copied it, or a dry run only counts it.
    fn needs_no_copy(&mut self, o: &Opening, st: &libc::stat) -> bool {
        if let Some(only) = &self.ctx.tables.only
            && !only.contains(&o.src)
        {
            // --retry-failed: this file did not fail last time.
            self.ctx.steer.ops_limit.refund(1);
            Stats::add(&self.ctx.stats.skipped, 1);
        } else if self.already_copied(o, st) {
            self.skip_copied(o, st);
            // A skip touches nothing: it does not count against --ops-limit.
            self.ctx.steer.ops_limit.refund(1);
            Stats::add(&self.ctx.stats.resumed_files, 1);
            Stats::add(&self.ctx.stats.resumed_bytes, st.st_size as u64);
        } else if self.ctx.spec.dry_run {
            // Opened and sized like a real copy, so unreadable files are reported the same way.
            super::walk::count_dry(&self.ctx, st);
        } else {
            return false;
        }
        self.file_over(o);
        true
    }

    /// Copied by an earlier run of this job and unchanged since.
    fn already_copied(&self, o: &Opening, st: &libc::stat) -> bool {
        let journaled = self
            .ctx
            .tables
            .done
            .get(&o.src)
            .is_some_and(|d| d.same_source(st));
        // A final name only ever holds a complete, durable copy (temp + sync + rename), and
        // the copy carries the source's ns mtime: when resuming, a destination with the
        // source's size and mtime is this job's finished copy even if the crash came before
        // its journal record (rsync's quick check, made safe by the rename protocol).
        // Not in a hidden tree: its files are written at their names, so one cut short by a
        // crash can carry its size and mtime (the journal alone vouches for a copy there).
        let quick = self.ctx.resuming && self.ctx.spec.preserve.timestamps && !o.in_tree;
        // A move whose source is still here did not finish it (the crash came before the
        // unlink): it is copied again, which is always safe, instead of trusting the old copy.
        // A directory this run made holds no earlier copy: no stat (a rerun into a new
        // destination would otherwise pay a failing lstat for every file).
        let fresh_dir = o.parent.as_ref().is_some_and(|p| p.made);
        (journaled || quick)
            && !fresh_dir
            && !self.ctx.spec.remove_source
            && meta::lstat(&o.dst).is_ok_and(|t| {
                meta::file_type(&t) == libc::S_IFREG
                    && t.st_size == st.st_size
                    && (journaled
                        || (t.st_mtime, t.st_mtime_nsec) == (st.st_mtime, st.st_mtime_nsec))
            })
    }

    /// A skipped copy still goes in the manifest and the hard-link table.
    fn skip_copied(&self, o: &Opening, st: &libc::stat) {
        // The temp name a killed run of this job may have left beside it goes too (nothing
        // else would replace it).
        if !o.parent.as_ref().is_some_and(|p| p.made) && !o.in_tree {
            let tmp = crate::temp::temp_name(&o.dst, &self.ctx.record.temp_token);
            if let Err(e) = meta::remove_stale_temp(o.at.map(|a| a.1), &tmp) {
                self.ctx.stats.error(e);
            }
        }
        if self.ctx.out.manifest.is_some() {
            // The manifest lists every file of the job, skipped ones too: with the hash the
            // journal kept, or (a copy finished just before a crash) by reading the copy.
            let known = self.ctx.tables.done.get(&o.src).and_then(|d| d.hash);
            let hash = match known {
                Some(h) => Ok(h),
                None => crate::verify::reread(&o.dst).map(|(_, h)| h),
            };
            match hash {
                Ok(h) => self
                    .ctx
                    .out
                    .committed(&o.dst, &done_record(st, st.st_size as u64, Some(h))),
                Err(e) => self.ctx.stats.error(e),
            }
        }
        if self.ctx.spec.preserve.links && st.st_nlink > 1 {
            self.ctx
                .tables
                .links
                .known((st.st_dev, st.st_ino), &o.dst, st.st_nlink);
        }
    }

    /// A file with several names: copied once, the other names linked to the copy. `Err`:
    /// this name is handled by the first one's copy. (A move unlinks names as it goes: a name
    /// whose siblings were already moved has st_nlink 1 now, but the job still knows the
    /// inode.)
    fn link_key(&self, o: &Opening, st: &libc::stat) -> Result<Option<(u64, u64)>, ()> {
        let key = (st.st_dev, st.st_ino);
        let spec = &self.ctx.spec;
        let linked = spec.preserve.links
            && (st.st_nlink > 1 || (spec.remove_source && self.ctx.tables.links.knows(key)));
        if !linked {
            return Ok(None);
        }
        let w = LinkWaiter {
            src: o.src.clone(),
            dst: o.dst.clone(),
            parent: o.parent.clone(),
        };
        match self.ctx.claim_link(key, st.st_nlink, w) {
            LinkClaim::First => Ok(Some(key)),
            LinkClaim::Handled => Err(()),
        }
    }

    /// The temp file's creation mode: its final permission bits when the umask leaves them
    /// intact (then no chmod is needed), else 0600 until the metadata step; and what the
    /// metadata step may then assume.
    fn create_mode(&self, o: &Opening, st: &libc::stat) -> (u32, Option<meta::Known>) {
        let mode = st.st_mode & 0o7777;
        let umask = self.ctx.umask;
        let create_mode = if self.ctx.spec.preserve.mode && mode & 0o7000 == 0 && mode & umask == 0
        {
            mode
        } else {
            0o600
        };
        let known = o.parent.as_ref().map(|p| meta::Known {
            uid: self.ctx.euid,
            gid: p.new_gid,
            mode: create_mode & !umask,
        });
        (create_mode, known)
    }

    /// Creates the temp file (unnamed when `anon` holds a slot and the filesystem has
    /// O_TMPFILE) and reserves its blocks.
    fn create_temp(
        &self,
        o: &Opening,
        src_fd: &OwnedFd,
        st: &libc::stat,
        mode: u32,
        anon: &mut Option<AnonSlot>,
    ) -> Result<Created, Error> {
        let ranges = meta::data_ranges(src_fd.as_raw_fd(), st, &o.src, MAX_RANGES)?;
        // In a hidden tree a file is written at its own name: the tree's is the temp name
        // (and no unnamed slot is handed out there: `anon_eligible`).
        debug_assert!(
            !(o.in_tree && anon.is_some()),
            "an unnamed temp in a hidden tree"
        );
        let tmp = match o.in_tree {
            true => o.dst.clone(),
            false => crate::temp::temp_name(&o.dst, &self.ctx.record.temp_token),
        };
        let dir = o.at.map(|a| a.1);
        if anon.is_some() && !o.parent.as_ref().is_some_and(|p| p.made) {
            // Nothing will create (and so replace) the old temp name.
            meta::remove_stale_temp(dir, &tmp)?;
        }
        let fd = match anon.is_some() {
            true => match meta::create_anon_in(dir, &o.dst, mode) {
                Ok(fd) => fd,
                Err(e) if meta::anon_unsupported(&e) => {
                    // Said once per job; named temp files work everywhere.
                    if !self.ctx.fds.anon_off.swap(true, Ordering::AcqRel) {
                        eprintln!("ferry: {e}; using named temp files");
                    }
                    *anon = None;
                    meta::create_temp_in(dir, &tmp, mode)?
                }
                Err(e) => return Err(e),
            },
            false => meta::create_temp_in(dir, &tmp, mode)?,
        };
        let naming = match (o.in_tree, anon.is_some()) {
            (true, _) => Naming::InPlace,
            (false, true) => Naming::Unnamed,
            (false, false) => Naming::Temp,
        };
        match self.prepare_temp(o, &fd, st, &ranges, &tmp) {
            Ok(dev) => Ok(Created {
                fd,
                tmp,
                naming,
                ranges,
                dev,
            }),
            Err(e) => {
                drop(fd);
                if naming.has_path() {
                    let _ = self.ctx.tree.unlink(&tmp); // best effort; `e` is what gets reported
                }
                Err(e)
            }
        }
    }

    /// Reserves the temp file's blocks; returns the destination's filesystem.
    fn prepare_temp(
        &self,
        o: &Opening,
        fd: &OwnedFd,
        st: &libc::stat,
        ranges: &[(u64, u64)],
        tmp: &std::path::Path,
    ) -> Result<u64, Error> {
        let raw = fd.as_raw_fd();
        let dense = ranges.len() == 1 && ranges[0] == (0, st.st_size as u64);
        // Files that fit one buffer are written by one write: reserving first only costs a
        // syscall. The destination's filesystem is its directory's, known without a stat.
        let big = st.st_size as u64 > self.buf_size;
        meta::preallocate(raw, st.st_size as u64, !dense, big, tmp)?;
        match &o.parent {
            Some(p) => Ok(p.dst_dev),
            None => meta::fstat(raw, tmp).map(|s| s.st_dev),
        }
    }

    /// The first file on a destination filesystem this reactor sees: the job notes it (for
    /// the final sync).
    fn note_dev(&mut self, dev: u64, o: &Opening) {
        if self.known_devs.contains(&dev) {
            return;
        }
        let dir = o.dst.parent().unwrap_or(std::path::Path::new("."));
        if let Err(e) = self.ctx.note_dst_fs(dev, dir) {
            self.ctx.stats.error(e);
        }
        self.known_devs.push(dev);
    }

    /// A big file under --direct also gets O_DIRECT fds (the ordinary ones work without).
    fn open_direct(&self, job: &mut FileJob) {
        if self.ctx.spec.direct && job.st.st_size as u64 >= crate::spec::DIRECT_MIN {
            match meta::open_direct(&job.src, &job.tmp) {
                Ok(d) => job.direct = d,
                Err(e) => {
                    // The ordinary fds work: copy buffered, but say why.
                    eprintln!("ferry: {e}; copying it without O_DIRECT");
                }
            }
        }
    }

    /// Starts the opened file's segments: the first (or, hashed, all) here, the others
    /// shared; a file with no data to read is finished at once.
    fn start_job(
        &mut self,
        mut job: FileJob,
        segs: Vec<(u64, u64)>,
        hash: bool,
    ) -> Result<(), Error> {
        if segs.is_empty() {
            copy_without_segments(&mut job, hash);
            return self.finalize(Arc::new(job));
        }
        let job = Arc::new(job);
        if hash {
            self.activate(job, segs, true);
            return Ok(());
        }
        let mut segs = segs;
        for &(s, e) in &segs[1..] {
            self.ctx.queues.share(Task::Segment {
                job: job.clone(),
                start: s,
                end: e,
            });
        }
        segs.truncate(1); // the first, here (in the same allocation)
        self.activate(job, segs, false);
        Ok(())
    }
}

/// Opens the source and checks it is (still) a regular file.
fn open_source(o: &Opening) -> Result<(OwnedFd, libc::stat), Error> {
    let fd = meta::open_source_in(o.at.map(|a| a.0), &o.src)?;
    let st = meta::fstat(fd.as_raw_fd(), &o.src)?;
    if meta::file_type(&st) != libc::S_IFREG {
        // It changed type after the listing saw it; not a regular file any more.
        return Err(Error::errno("open", &o.src, libc::EINVAL));
    }
    Ok((fd, st))
}

/// Data ranges cut into segments of at most `size` bytes (the same vector when every range
/// fits: the common case, one allocation fewer per file).
fn segments(ranges: Vec<(u64, u64)>, size: u64) -> Vec<(u64, u64)> {
    if ranges.iter().all(|&(a, b)| b - a <= size) {
        return ranges;
    }
    let mut segs = Vec::new();
    for (mut a, b) in ranges {
        while a < b {
            let e = a.saturating_add(size).min(b);
            segs.push((a, e));
            a = e;
        }
    }
    segs
}

/// Empty, or all hole: nothing to read, unless the size is a pseudo file's 0 (then it is
/// read to its end, like cp).
fn copy_without_segments(job: &mut FileJob, hash: bool) {
    let mut h = hash.then(Xxh3::new);
    if job.st.st_size == 0 {
        match meta::copy_unsized(job.src_raw(), job.dst_raw, &job.src, &job.tmp, h.as_mut()) {
            Ok(n) => job.unsized_len = n,
            Err(e) => job.fail(e),
        }
    } else if let Some(h) = h.as_mut() {
        crate::verify::hash_zeros(h, job.st.st_size as u64);
    }
    if let Some(h) = h {
        job.set_digest(h.digest());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn segments_cover_every_range_in_order() {
        let s = super::segments(vec![(0, 10), (20, 25)], 4);
        assert_eq!(s, vec![(0, 4), (4, 8), (8, 10), (20, 24), (24, 25)]);
        assert_eq!(super::segments(vec![(0, 5)], u64::MAX), vec![(0, 5)]);
        assert_eq!(
            super::segments(vec![(0, 4), (8, 9)], 4),
            vec![(0, 4), (8, 9)]
        );
        assert!(super::segments(vec![], 4).is_empty());
    }
}
