//! The end of a file's copy on its reactor: the source checked unchanged, metadata set, then
//! either handed to the group committer (`--fsync=batch`) or fsynced and named here
//! (`--fsync=file`); a failed or changed file is abandoned (its temp removed, maybe retried).

use super::driver::{CopyOp, CopyReactor};
use super::task::{FileJob, Finished, MAX_ATTEMPTS, Naming, child_done, done_record};
use crate::error::{Error, ErrorKind};
use crate::io::Op;
use crate::meta;
use crate::spec::FsyncMode;
use crate::stats::Stats;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl CopyReactor {
    /// All data of the file is written (or it failed). Check the source did not change, set
    /// mode and times, then make it durable and give it its name.
    pub(super) fn finalize(&mut self, job: Arc<FileJob>) -> Result<(), Error> {
        if !job.is_failed() {
            match meta::fstat(job.src_raw(), &job.src) {
                Ok(now)
                    if now.st_size == job.st.st_size
                        && now.st_mtime == job.st.st_mtime
                        && now.st_mtime_nsec == job.st.st_mtime_nsec => {}
                Ok(_) => job.changed.store(true, Ordering::Release),
                Err(e) => job.fail(e),
            }
        }
        if !job.is_failed()
            && let Err(e) = meta::apply_meta(
                meta::At::Fd(job.src_raw()),
                meta::At::Fd(job.dst_raw),
                &job.st,
                &job.tmp,
                &self.ctx.spec.preserve,
                self.ctx.umask,
                job.known,
            )
        {
            job.fail(e);
        }
        if job.is_failed() {
            self.abandon(job);
            return Ok(());
        }
        assert!(
            !self.ctx.spec.verify.hashes() || job.digest().is_some(),
            "a hashed copy finished without its digest"
        );
        match self.ctx.spec.fsync {
            FsyncMode::File => {
                self.fsync_wait.push_back(job);
                self.start_fsyncs()
            }
            FsyncMode::Batch => {
                self.queue_for_commit(job);
                Ok(())
            }
        }
    }

    /// Queues the file for the group committer (sent with this turn's batch).
    fn queue_for_commit(&mut self, job: Arc<FileJob>) {
        let Some(fd) = job.take_dst_fd() else {
            unreachable!("dst fd closed before finalize")
        };
        // An unnamed file's fd is its only handle: it goes to the committer.
        let slot = job
            .anon_slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        debug_assert_eq!(slot.is_some(), job.naming == Naming::Unnamed);
        let anon = match slot {
            Some(slot) => Some((fd, slot)),
            None => {
                if let Err(e) = meta::close(fd, &job.tmp) {
                    job.fail(e);
                    self.abandon(job);
                    return;
                }
                None
            }
        };
        self.outbox.push(finished(job, anon));
    }

    /// Hands the finished files to the committer.
    pub(super) fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        // The next turn's outbox starts at this one's size: no regrowth, file by file.
        let cap = self.outbox.len();
        let files = std::mem::replace(&mut self.outbox, Vec::with_capacity(cap));
        let tx = self.commit_tx.as_ref().expect("batch mode has a committer");
        if let Err(std::sync::mpsc::SendError(files)) = tx.send(files) {
            // The committer is gone (it panicked): nothing more can become durable.
            self.ctx.steer.stop.abort();
            for f in files {
                if f.naming.has_path() {
                    let _ = self.ctx.tree.unlink(&f.tmp); // best effort; the error below is the report
                }
                self.ctx.stats.error(Error::internal(
                    "commit",
                    crate::error::Target::Path(f.dst.clone()),
                    "the committer thread is gone (it panicked): not made durable",
                ));
                if let Some(key) = f.link_key {
                    self.ctx.link_failed(key);
                }
                child_done(&f.parent, &self.ctx);
                self.ctx.queues.finish();
            }
        }
    }

    /// Submits the waiting per-file fsyncs, at most one per buffer in flight.
    pub(super) fn start_fsyncs(&mut self) -> Result<(), Error> {
        while !self.fsync_wait.is_empty() && self.fsyncs < self.slots.len() && self.ring.has_room()
        {
            let job = self.fsync_wait.pop_front().expect("non-empty");
            self.fsyncs += 1;
            let t0 = self.now_ns();
            let op = Op::Fsync { fd: job.dst_raw };
            self.ring.push(op, CopyOp::Fsync { job, t0 })?;
        }
        Ok(())
    }

    /// A per-file fsync completed: the file is named, journaled and counted, or abandoned.
    pub(super) fn fsync_done(&mut self, job: Arc<FileJob>, t0: u64, res: i32) {
        let waited = self.now_ns().saturating_sub(t0);
        crate::latency::record(&mut self.lat.fsync, waited / 1000);
        self.fsyncs -= 1;
        // An fsync error is never retried (`io::errno`): after a failed fsync the kernel may
        // have dropped the dirty pages, so a second fsync could "succeed" over lost data.
        let res = if res < 0 {
            Err(Error::errno("fsync", &job.tmp, -res))
        } else {
            self.name_durably(&job)
        };
        match res {
            Ok(()) => self.file_durable(&job),
            Err(e) => {
                job.fail(e);
                self.abandon(job);
            }
        }
    }

    /// The fsynced temp file: closed, [verified], renamed to its final name, the name made
    /// durable when a journal record or a deleted source will depend on it.
    fn name_durably(&self, job: &FileJob) -> Result<(), Error> {
        let fd = job.take_dst_fd().expect("dst fd open until fsync");
        let size = job.copied_len();
        meta::close(fd, &job.tmp)?;
        if self.ctx.spec.verify == crate::spec::VerifyMode::Full {
            // Blocks this reactor for one re-read: --fsync=file is the slow, careful mode.
            super::commit::verify_durable(&job.tmp, size, job.digest())?;
        }
        if job.naming == Naming::Temp {
            meta::rename(&job.tmp, &job.dst)?;
        }
        if self.ctx.state.is_some() || self.ctx.spec.remove_source {
            meta::fsync_dir(meta::parent_dir(&job.dst))?;
        }
        Ok(())
    }

    /// Counts, journals and reports a file whose final name is durable; a move then removes
    /// its source.
    fn file_durable(&mut self, job: &FileJob) {
        let done = done_record(&job.st, job.copied_len(), job.digest());
        self.ctx.journal(&[(job.src.clone(), done)]);
        super::commit::count_durable(
            &self.ctx,
            &mut self.lat,
            &job.dst,
            &done,
            job.opened,
            job.link_key,
        );
        let parents = if self.ctx.spec.remove_source {
            super::remove::remove_files(
                &self.ctx,
                vec![super::remove::Moved {
                    src: job.src.clone(),
                    dst: job.dst.clone(),
                    done,
                    parent: job.parent.clone(),
                    attempt: job.attempt,
                }],
            )
        } else {
            vec![job.parent.clone()]
        };
        for p in parents {
            child_done(&p, &self.ctx);
            self.ctx.queues.finish();
        }
    }

    /// Removes the temp file; a source that changed is tried again, anything else is reported.
    pub(super) fn abandon(&mut self, job: Arc<FileJob>) {
        if let Some(fd) = job.take_dst_fd() {
            // The file is being discarded, so a close error changes nothing.
            let _ = meta::close(fd, &job.tmp);
        }
        // An unnamed file vanishes with its fd (and its budget slot with the job).
        if job.naming.has_path()
            && let Err(e) = self.ctx.tree.unlink(&job.tmp)
        {
            self.ctx.stats.error(e);
        }
        if let Some(key) = job.link_key {
            self.ctx.link_failed(key);
        }
        if self.ctx.steer.stop.cancelled() {
            // Interrupted by a cancel: not a failure; the temp file is gone, the source stays.
            child_done(&job.parent, &self.ctx);
            self.ctx.queues.finish();
            return;
        }
        let err = job.take_error();
        if err.is_none() && job.deferred.load(Ordering::Acquire) {
            // No room for it: tried again on resume, same attempt (nothing was wrong with it).
            self.ctx.queues.requeue(self.me, job.task(job.attempt));
            return;
        }
        let changed = job.changed.load(Ordering::Acquire);
        if err.is_none() && changed && job.attempt < MAX_ATTEMPTS {
            Stats::add(&self.ctx.stats.retries, 1);
            // The task's outstanding unit carries over to the retry.
            self.ctx.queues.requeue(self.me, job.task(job.attempt + 1));
            return;
        }
        self.ctx.note_failed(&job.src, false);
        let err = err.unwrap_or_else(|| Error {
            op: "copy",
            target: crate::error::Target::Path(job.src.clone()),
            kind: ErrorKind::SourceChanged {
                attempts: job.attempt,
            },
        });
        self.ctx.stats.error(err);
        child_done(&job.parent, &self.ctx);
        self.ctx.queues.finish();
    }
}

/// What the committer needs of a finished file. The job is usually this reactor's alone by
/// now (its segments are over): then its paths move over instead of being copied.
fn finished(job: Arc<FileJob>, anon: Option<(OwnedFd, super::task::AnonSlot)>) -> Finished {
    let mut f = Finished {
        opened: job.opened,
        src: PathBuf::new(),
        done: done_record(&job.st, job.copied_len(), job.digest()),
        tmp: PathBuf::new(),
        dst: PathBuf::new(),
        dev: job.dst_dev,
        bytes: job.copied_len(),
        parent: None,
        link_key: job.link_key,
        attempt: job.attempt,
        naming: job.naming,
        anon,
    };
    match Arc::try_unwrap(job) {
        // The source fd closes here, with the rest of the job.
        Ok(j) => (f.src, f.tmp, f.dst, f.parent) = (j.src, j.tmp, j.dst, j.parent),
        Err(j) => {
            (f.src, f.tmp, f.dst) = (j.src.clone(), j.tmp.clone(), j.dst.clone());
            f.parent = j.parent.clone();
        }
    }
    f
}
