//! Test backend: wraps a real one and, by seed, shortens reads and writes (the kernel then
//! really does a short op), answers EAGAIN without running the op, or fails ops with EIO or
//! ENOSPC, or flips one byte of the data a write carries (the destination then silently differs
//! from what was read: only verification can catch it). Deterministic per reactor for a seed.

use super::{Arena, Backend, Completion, Op, OpKind};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io;

/// Probabilities in parts per thousand.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct FaultConfig {
    pub seed: u64,
    /// Reads/writes cut to a random shorter length.
    pub short_permille: u32,
    /// Ops answered with EAGAIN (must be resubmitted).
    pub eagain_permille: u32,
    /// Reads failed with EIO.
    pub read_eio_permille: u32,
    /// Writes failed with ENOSPC.
    pub write_enospc_permille: u32,
    /// fsyncs failed with EIO.
    pub fsync_eio_permille: u32,
    /// Writes failed with EIO.
    #[serde(default)]
    pub write_eio_permille: u32,
    /// Writes that carry one flipped byte to the destination.
    #[serde(default)]
    pub flip_permille: u32,
}

pub struct FaultyBackend {
    inner: Box<dyn Backend>,
    cfg: FaultConfig,
    rng: u64,
    injected: VecDeque<Completion>,
}

/// A factory that wraps every reactor's backend in a `FaultyBackend` seeded per reactor.
pub fn factory(cfg: FaultConfig) -> super::BackendFactory {
    super::BackendFactory::new(move |real, me| Box::new(FaultyBackend::new(real, cfg, me)))
}

impl FaultyBackend {
    pub fn new(inner: Box<dyn Backend>, cfg: FaultConfig, reactor: usize) -> Self {
        FaultyBackend {
            inner,
            cfg,
            rng: (cfg.seed ^ (reactor as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
            injected: VecDeque::new(),
        }
    }

    fn roll(&mut self, permille: u32) -> bool {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        permille > 0 && (self.rng % 1000) < permille as u64
    }

    fn inject(&mut self, user_data: u64, errno: i32) {
        self.injected.push_back(Completion {
            user_data,
            result: -errno,
        });
    }
}

const B: u32 = super::DIRECT_ALIGN as u32;

/// Block-sized ops are cut at a block boundary, as the kernel does for O_DIRECT (an unaligned
/// O_DIRECT length would be EINVAL, not a short op); a single block stays whole.
fn cuttable(len: u32) -> bool {
    if len.is_multiple_of(B) {
        len > B
    } else {
        len > 1
    }
}

impl FaultyBackend {
    /// A random shorter length for a cuttable op (the last roll picks it).
    fn shorter(&self, len: u32) -> u32 {
        if len.is_multiple_of(B) {
            B * (1 + (self.rng % (len / B - 1) as u64) as u32)
        } else {
            1 + (self.rng % (len as u64 - 1)) as u32
        }
    }
}

impl Backend for FaultyBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.injected.len()
    }

    fn arena(&mut self) -> &mut Arena {
        self.inner.arena()
    }

    fn push(&mut self, mut op: Op, user_data: u64) -> io::Result<()> {
        assert!(self.in_flight() < self.capacity());
        let c = self.cfg;
        let kind = op.kind();
        let fault = match kind {
            OpKind::Read if self.roll(c.read_eio_permille) => Some(libc::EIO),
            OpKind::Write if self.roll(c.write_enospc_permille) => Some(libc::ENOSPC),
            OpKind::Write if self.roll(c.write_eio_permille) => Some(libc::EIO),
            OpKind::Fsync if self.roll(c.fsync_eio_permille) => Some(libc::EIO),
            OpKind::Read | OpKind::Write if self.roll(c.eagain_permille) => Some(libc::EAGAIN),
            _ => None,
        };
        if let Some(errno) = fault {
            self.inject(user_data, errno);
            return Ok(());
        }
        if let Op::Write(d) = op
            && d.len > 0
            && self.roll(c.flip_permille)
        {
            let at = (self.rng % d.len as u64) as u32;
            let p = self.inner.arena().ptr(d.buf, d.buf_off + at);
            // SAFETY: `at` < d.len, so p is inside the op's part of its registered buffer,
            // which this reactor owns and nothing else touches while the op is being queued.
            unsafe { *p ^= 0x01 };
        }
        if let Some(d) = op.data_mut() {
            let cuttable = cuttable(d.len);
            if cuttable && self.roll(c.short_permille) {
                d.len = self.shorter(d.len);
            }
        }
        self.inner.push(op, user_data)
    }

    fn submit(&mut self, wait: bool) -> io::Result<()> {
        // With injected completions ready, never block in the kernel for more.
        self.inner
            .submit(wait && self.injected.is_empty() && self.inner.in_flight() > 0)
    }

    fn submit_within(&mut self, timeout: std::time::Duration) -> io::Result<()> {
        if self.injected.is_empty() {
            self.inner.submit_within(timeout)
        } else {
            self.inner.submit(false)
        }
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.injected.drain(..));
        self.inner.reap(out);
    }
}
