//! The one errno policy: what the engine does with each errno an op or a file step can
//! return, and why. Callers act on the [`Verdict`]; the reasons live here, next to the errnos.

use super::OpKind;

/// What to do after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Try the same thing again (an op at once, bounded; a file later, with backoff).
    Retry,
    /// Wait: the destination is full (the job rests until resume), or the kernel wants
    /// completions reaped before it takes more.
    Park,
    /// This file (or op) fails; the job goes on.
    Fail,
    /// The reactor cannot go on (its ring failed): the job stops.
    Fatal,
}

/// A failed read, write or fsync completion.
pub fn on_completion(kind: OpKind, errno: i32) -> Verdict {
    match (kind, errno) {
        // Never retried: after a failed fsync the kernel may have dropped the dirty pages, so
        // a second fsync could "succeed" over lost data.
        (OpKind::Fsync, _) => Verdict::Fail,
        // EAGAIN: no resources right now (io-wq busy, a nonblocking punt failed). EINTR: a
        // signal interrupted a blocking call in the sync backend.
        (_, libc::EAGAIN | libc::EINTR) => Verdict::Retry,
        // No room for the blocks: the file waits for space (resume) or is redone.
        (_, libc::ENOSPC | libc::EDQUOT) => Verdict::Park,
        // EIO, EFBIG, EBADF, EROFS, ...: retrying an EIO can make the kernel forget it.
        _ => Verdict::Fail,
    }
}

/// A failed file step (open, stat, create the temp file, preallocate).
pub fn on_file_step(errno: i32) -> Verdict {
    match errno {
        // Resource shortages and timeouts that pass: the whole file is tried again later.
        libc::EAGAIN
        | libc::EINTR
        | libc::EBUSY
        | libc::ENOMEM
        | libc::ENFILE
        | libc::EMFILE
        | libc::ETIMEDOUT
        | libc::ESTALE => Verdict::Retry,
        // No room for the temp file or its blocks: paused, the file tried again on resume.
        libc::ENOSPC | libc::EDQUOT => Verdict::Park,
        // EIO never is retried; anything else is about the file itself.
        _ => Verdict::Fail,
    }
}

/// A failed io_uring_enter.
pub fn on_enter(errno: i32) -> Verdict {
    match errno {
        // A signal: just enter again.
        libc::EINTR => Verdict::Retry,
        // EBUSY/EAGAIN: the kernel wants completions reaped first (backpressure).
        libc::EBUSY | libc::EAGAIN => Verdict::Park,
        _ => Verdict::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_errors_are_never_retried() {
        for e in [libc::EAGAIN, libc::EINTR, libc::EIO, libc::ENOSPC] {
            assert_eq!(on_completion(OpKind::Fsync, e), Verdict::Fail);
        }
    }

    #[test]
    fn data_ops() {
        for k in [OpKind::Read, OpKind::Write] {
            assert_eq!(on_completion(k, libc::EAGAIN), Verdict::Retry);
            assert_eq!(on_completion(k, libc::EINTR), Verdict::Retry);
            assert_eq!(on_completion(k, libc::ENOSPC), Verdict::Park);
            assert_eq!(on_completion(k, libc::EDQUOT), Verdict::Park);
            assert_eq!(on_completion(k, libc::EIO), Verdict::Fail);
        }
    }

    #[test]
    fn file_steps_and_enter() {
        assert_eq!(on_file_step(libc::EMFILE), Verdict::Retry);
        assert_eq!(on_file_step(libc::ENOSPC), Verdict::Park);
        assert_eq!(on_file_step(libc::EIO), Verdict::Fail);
        assert_eq!(on_file_step(libc::ENOENT), Verdict::Fail);
        assert_eq!(on_enter(libc::EINTR), Verdict::Retry);
        assert_eq!(on_enter(libc::EBUSY), Verdict::Park);
        assert_eq!(on_enter(libc::EBADF), Verdict::Fatal);
    }
}
