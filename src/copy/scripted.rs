//! The chunk state machine and the per-file commit path against a scripted backend: the n-th
//! read, write or fsync can be cut short, answered with an errno, or report a byte count,
//! and the copy must still be whole (or the file fail cleanly: no final name, no temp left).

use super::driver::CopyReactor;
use super::task::{Ctx, Task};
use crate::io::{Arena, Backend, Completion, Op, OpKind};
use crate::spec::{CopySpec, FsyncMode};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug)]
enum Step {
    /// The op is run with at most this many bytes (a short read or write).
    Short(u32),
    /// The op is not run; it completes with this result (a negative errno, or a count).
    Answer(i32),
    /// A write carries its first byte flipped (after the chunk was hashed): only a re-read
    /// of the durable copy can tell.
    Flip,
}

/// Runs ops with blocking syscalls unless the script says otherwise for the n-th op of a kind.
struct Scripted {
    arena: Arena,
    cap: usize,
    done: VecDeque<Completion>,
    script: HashMap<(OpKind, usize), Step>,
    seen: HashMap<OpKind, usize>,
    /// The lengths of the reads pushed between two submits (one entry per reactor turn).
    turns: Arc<Mutex<Vec<Vec<u32>>>>,
}

impl Backend for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn capacity(&self) -> usize {
        self.cap
    }
    fn in_flight(&self) -> usize {
        self.done.len()
    }
    fn arena(&mut self) -> &mut Arena {
        &mut self.arena
    }
    fn push(&mut self, mut op: Op, user_data: u64) -> std::io::Result<()> {
        assert!(self.done.len() < self.cap, "pushed over capacity");
        if let Op::Read(d) = &op {
            let mut turns = self.turns.lock().unwrap();
            turns.last_mut().expect("a turn is open").push(d.len);
        }
        let n = self.seen.entry(op.kind()).or_default();
        *n += 1;
        let c = match self.script.get(&(op.kind(), *n)) {
            Some(Step::Answer(result)) => Completion {
                user_data,
                result: *result,
            },
            Some(Step::Short(most)) => {
                let d = op.data_mut().expect("a short op moves data");
                d.len = d.len.min(*most);
                crate::io::run_blocking(&self.arena, &op, user_data)
            }
            Some(Step::Flip) => {
                let d = op.data_mut().expect("a flipped op moves data");
                let p = self.arena.ptr(d.buf, d.buf_off);
                // SAFETY: inside the op's part of its buffer, which only this reactor touches.
                unsafe { *p ^= 0x01 };
                crate::io::run_blocking(&self.arena, &op, user_data)
            }
            None => crate::io::run_blocking(&self.arena, &op, user_data),
        };
        self.done.push_back(c);
        Ok(())
    }
    fn submit(&mut self, _wait: bool) -> std::io::Result<()> {
        self.turns.lock().unwrap().push(Vec::new());
        Ok(())
    }
    fn reap(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.done.drain(..));
    }
}

const BUF: usize = 4096;

/// 3.5 buffers of data that differ in every chunk.
fn data() -> Vec<u8> {
    data_of(BUF * 7 / 2)
}

fn data_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

struct Run {
    dir: tempfile::TempDir,
    report: crate::stats::Report,
}

impl Run {
    fn dst(&self) -> PathBuf {
        self.dir.path().join("out/f")
    }
    /// Names in the destination directory (a temp left behind shows here).
    fn names(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
    fn assert_whole(&self) {
        assert_eq!(self.report.failed, 0, "{:?}", self.report.errors);
        assert_eq!(self.report.files, 1);
        assert_eq!(std::fs::read(self.dst()).unwrap(), data());
        assert_eq!(self.names(), vec!["f".to_string()], "no temp left");
    }
    /// The file failed with `what` in its error; nothing under the final name, no temp left.
    fn assert_failed(&self, what: &str) {
        assert_eq!(self.report.failed, 1);
        assert_eq!(self.report.files, 0);
        assert!(
            self.report.errors.iter().any(|e| e.contains(what)),
            "{what} not in {:?}",
            self.report.errors
        );
        assert!(!self.dst().exists(), "a failed file got its final name");
        assert!(self.names().is_empty(), "temp left: {:?}", self.names());
        let src = self.dir.path().join("src");
        assert_eq!(std::fs::read(src).unwrap(), data(), "source intact");
    }
}

/// Copies one file on one reactor (4 KiB buffers, per-file fsync) over the scripted backend.
fn copy(script: &[(OpKind, usize, Step)]) -> Run {
    copy_with(FsyncMode::File, |_| {}, script)
}

/// The same in fsync mode `fsync` (batch: with a group committer on its own thread), the
/// spec adjusted by `adjust`.
fn copy_with(
    fsync: FsyncMode,
    adjust: impl FnOnce(&mut CopySpec),
    script: &[(OpKind, usize, Step)],
) -> Run {
    let turns = Arc::new(Mutex::new(vec![Vec::new()]));
    copy_data(fsync, adjust, script, &data(), turns)
}

/// `copy_with` of `data`, over an arena of the spec's buffer size and queue depth (4 KiB x 4
/// unless `adjust` says otherwise), recording every turn's reads in `turns`.
fn copy_data(
    fsync: FsyncMode,
    adjust: impl FnOnce(&mut CopySpec),
    script: &[(OpKind, usize, Step)],
    data: &[u8],
    turns: Arc<Mutex<Vec<Vec<u32>>>>,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::write(&src, data).unwrap();
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let dst = dir.path().join("out/f");
    let mut spec = CopySpec::new(vec![src.clone()], dst.clone());
    spec.buffer_size = BUF;
    spec.queue_depth = 4;
    spec.fsync = fsync;
    adjust(&mut spec);
    let mut ctx = Ctx::new(spec, crate::filter::Filter::new(&[]).unwrap(), 1);
    if let Some(root) = ctx.spec.state_dir.clone() {
        ctx.state = Some(crate::coord::checkpoint::StateDir::open(&root, "job").unwrap());
    }
    let ctx = Arc::new(ctx);
    let out = dir.path().join("out");
    ctx.note_dst_fs(crate::meta::lstat(&out).unwrap().st_dev, &out)
        .unwrap();
    ctx.queues.push_local(0, Task::file(&src, &dst, &None, 1));
    let io = Scripted {
        arena: Arena::new(ctx.spec.buffer_size, ctx.spec.queue_depth),
        cap: 2 * ctx.spec.queue_depth,
        done: VecDeque::new(),
        script: script.iter().map(|&(k, n, s)| ((k, n), s)).collect(),
        seen: HashMap::new(),
        turns,
    };
    let (tx, committer) = match fsync {
        FsyncMode::File => (None, None),
        FsyncMode::Batch => {
            let (tx, rx) = std::sync::mpsc::sync_channel(super::commit::CHANNEL);
            let c = ctx.clone();
            let h = std::thread::spawn(move || super::commit::run(c, rx));
            (Some(tx), Some(h))
        }
    };
    let mut r = CopyReactor::new(0, ctx.clone(), Box::new(io), tx);
    r.run().expect("the scripted ring never fails");
    drop(r); // the committer's channel closes: it names what it holds and ends
    if let Some(h) = committer {
        h.join().expect("the committer ends cleanly");
    }
    let report = ctx.stats.report(std::time::Duration::ZERO, "scripted", 1);
    Run { dir, report }
}

fn path_in(e: &[String], p: &Path) -> bool {
    e.iter().any(|e| e.contains(&*p.to_string_lossy()))
}

#[test]
fn a_clean_copy_is_whole() {
    copy(&[]).assert_whole();
}

#[test]
fn short_reads_and_writes_continue_where_they_stopped() {
    use OpKind::*;
    copy(&[(Read, 1, Step::Short(100)), (Read, 2, Step::Short(1))]).assert_whole();
    copy(&[(Write, 1, Step::Short(4095)), (Write, 3, Step::Short(7))]).assert_whole();
    // The tail chunk (half a buffer) cut twice in a row.
    copy(&[(Read, 4, Step::Short(10)), (Read, 5, Step::Short(10))]).assert_whole();
}

#[test]
fn eagain_and_eintr_are_resubmitted_at_every_step() {
    use OpKind::*;
    for k in [Read, Write] {
        for n in 1..=5 {
            copy(&[(k, n, Step::Answer(-libc::EAGAIN))]).assert_whole();
        }
        copy(&[(k, 2, Step::Answer(-libc::EINTR))]).assert_whole();
    }
}

#[test]
fn endless_eagain_fails_the_file() {
    // Every read answered EAGAIN, more often than an op is resubmitted.
    let script: Vec<_> = (1..=100)
        .map(|n| (OpKind::Read, n, Step::Answer(-libc::EAGAIN)))
        .collect();
    copy(&script).assert_failed("read");
}

#[test]
fn eio_at_each_step_fails_the_file_cleanly() {
    use OpKind::*;
    for n in 1..=4 {
        let r = copy(&[(Read, n, Step::Answer(-libc::EIO))]);
        r.assert_failed("read");
        assert!(path_in(&r.report.errors, &r.dir.path().join("src")));
        copy(&[(Write, n, Step::Answer(-libc::EIO))]).assert_failed("write");
    }
    // After a short write, the rest fails.
    copy(&[
        (Write, 1, Step::Short(5)),
        (Write, 2, Step::Answer(-libc::EIO)),
    ])
    .assert_failed("write");
}

#[test]
fn a_failed_fsync_is_never_retried_and_names_nothing() {
    let r = copy(&[(OpKind::Fsync, 1, Step::Answer(-libc::EIO))]);
    r.assert_failed("fsync");
    assert_eq!(r.report.retries, 0);
}

#[test]
fn enospc_with_nobody_to_resume_fails_the_file() {
    // No job around it (so no pause and resume): the file fails with the errno.
    let r = copy(&[(OpKind::Write, 2, Step::Answer(-libc::ENOSPC))]);
    r.assert_failed("write");
    assert!(r.report.errors.iter().any(|e| e.contains("space")));
}

#[test]
fn a_zero_byte_write_is_an_error() {
    copy(&[(OpKind::Write, 1, Step::Answer(0))]).assert_failed("wrote 0 bytes");
}

#[test]
fn early_eof_is_a_changed_source_retried_whole() {
    // The first read sees EOF (as if the file had shrunk): the copy is redone from scratch,
    // and the retry (the source did not really change) is whole.
    let r = copy(&[(OpKind::Read, 1, Step::Answer(0))]);
    r.assert_whole();
    assert_eq!(r.report.retries, 1);
}

#[test]
fn enospc_at_each_write_step_fails_the_file_in_both_modes() {
    for fsync in [FsyncMode::File, FsyncMode::Batch] {
        for n in 1..=4 {
            let r = copy_with(
                fsync,
                |_| {},
                &[(OpKind::Write, n, Step::Answer(-libc::ENOSPC))],
            );
            r.assert_failed("write");
            assert!(r.report.errors.iter().any(|e| e.contains("space")));
        }
    }
}

#[test]
fn an_fsync_is_never_resubmitted_whatever_its_errno() {
    for errno in [libc::EAGAIN, libc::EINTR, libc::ENOSPC, libc::EIO] {
        let r = copy(&[(OpKind::Fsync, 1, Step::Answer(-errno))]);
        r.assert_failed("fsync");
        assert_eq!(r.report.retries, 0, "errno {errno}");
    }
}

#[test]
fn the_group_commit_names_whole_copies_named_or_unnamed() {
    use crate::spec::TempMode;
    for temp in [TempMode::Auto, TempMode::Named] {
        let r = copy_with(FsyncMode::Batch, |s| s.temp = temp, &[]);
        r.assert_whole();
        let r = copy_with(
            FsyncMode::Batch,
            |s| s.temp = temp,
            &[
                (OpKind::Read, 1, Step::Short(100)),
                (OpKind::Write, 2, Step::Short(9)),
                (OpKind::Write, 3, Step::Answer(-libc::EAGAIN)),
            ],
        );
        r.assert_whole();
    }
}

#[test]
fn eio_in_batch_mode_fails_the_file_cleanly() {
    for n in 1..=4 {
        let script = [(OpKind::Read, n, Step::Answer(-libc::EIO))];
        copy_with(FsyncMode::Batch, |_| {}, &script).assert_failed("read");
        let script = [(OpKind::Write, n, Step::Answer(-libc::EIO))];
        copy_with(FsyncMode::Batch, |_| {}, &script).assert_failed("write");
    }
}

#[test]
fn a_copy_that_reads_back_wrong_never_gets_its_final_name() {
    // --verify=full re-reads the durable temp file before naming it, in both commit paths.
    for fsync in [FsyncMode::File, FsyncMode::Batch] {
        for n in [1, 4] {
            let full = |s: &mut CopySpec| s.verify = crate::spec::VerifyMode::Full;
            let r = copy_with(fsync, full, &[(OpKind::Write, n, Step::Flip)]);
            r.assert_failed("verify");
        }
        // Unflipped, the same check passes.
        copy_with(fsync, |s| s.verify = crate::spec::VerifyMode::Full, &[]).assert_whole();
    }
}

#[test]
fn both_commit_paths_journal_and_move_only_durable_names() {
    for fsync in [FsyncMode::File, FsyncMode::Batch] {
        let state = tempfile::tempdir().unwrap();
        let root = state.path().to_path_buf();
        let r = copy_with(
            fsync,
            |s| {
                s.state_dir = Some(root.clone());
                s.remove_source = true;
            },
            &[],
        );
        assert_eq!(r.report.failed, 0, "{:?}", r.report.errors);
        assert_eq!(std::fs::read(r.dst()).unwrap(), data());
        assert!(
            !r.dir.path().join("src").exists(),
            "a move removes the source"
        );
        let sd = crate::coord::checkpoint::StateDir::open(&root, "job").unwrap();
        let journal = sd.load_journal().unwrap();
        let rec = journal
            .get(&r.dir.path().join("src"))
            .expect("the file is journaled once its name is durable");
        assert_eq!(rec.size, data().len() as u64);
    }
}

#[test]
fn cached_reads_are_small_chunks_and_few_per_turn() {
    use super::chunk::{CACHED_CHUNK, TURN_READ};
    // 1 MiB buffers, 8 of them: 3 MiB and a bit, read through the page cache (far below the
    // O_DIRECT size) in chunks of CACHED_CHUNK, at most TURN_READ bytes of them a turn.
    let data = data_of((3 << 20) + 12_345);
    let turns = Arc::new(Mutex::new(vec![Vec::new()]));
    let big = |s: &mut CopySpec| {
        s.buffer_size = 1 << 20;
        s.queue_depth = 8;
    };
    let r = copy_data(FsyncMode::File, big, &[], &data, turns.clone());
    assert_eq!(r.report.failed, 0, "{:?}", r.report.errors);
    assert_eq!(std::fs::read(r.dst()).unwrap(), data);
    let turns = turns.lock().unwrap();
    let reads: Vec<u64> = turns.iter().flatten().map(|&n| n as u64).collect();
    assert_eq!(reads.iter().sum::<u64>(), data.len() as u64, "{reads:?}");
    assert!(reads.iter().all(|&n| n <= CACHED_CHUNK), "{reads:?}");
    assert_eq!(reads.iter().filter(|&&n| n == CACHED_CHUNK).count(), 12);
    for t in turns.iter().filter(|t| t.len() > 1) {
        let bytes: u64 = t.iter().map(|&n| n as u64).sum();
        assert!(bytes <= TURN_READ, "a turn started {t:?}");
    }
}
