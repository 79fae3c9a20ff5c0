//! The engine options every job command shares (threads, buffers, I/O, durability).

use clap::Args;
use ferry::spec::{self, BatchMode, CopySpec, FsyncMode, IoMode, Preserve, TempMode};
use std::path::PathBuf;

#[derive(Args, Clone)]
pub struct EngineArgs {
    /// Reactor threads, each pinned to its own CPU (default: online CPUs).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Bytes per registered buffer, e.g. 512K, 1M (reads through the page cache use at most
    /// 256K of it).
    #[arg(long, value_parser = spec::parse_size, default_value = "512K")]
    buffer_size: usize,
    /// Buffers (= in-flight chunks) per reactor.
    #[arg(long, default_value_t = 64)]
    queue_depth: usize,
    /// Files larger than this are split so every reactor can work on them, e.g. 64M.
    #[arg(long, value_parser = spec::parse_size, default_value = "1G")]
    segment_size: usize,
    /// I/O backend.
    #[arg(long, value_enum, default_value_t = IoMode::Auto)]
    io: IoMode,
    /// Durability: group commit with syncfs (batch) or fsync per file.
    #[arg(long, value_enum, default_value_t = FsyncMode::Batch)]
    fsync: FsyncMode,
    /// Group-commit batches: auto (per destination filesystem; standard on every kind
    /// measured), standard (4,096 files or 500 ms per syncfs), wide (16,384 files or 2 s).
    #[arg(long, value_enum, default_value_t = BatchMode::Auto)]
    commit_batch: BatchMode,
    /// Temp files: auto (a hidden tree for a new tree, else per-file), tree, file or named.
    #[arg(long, value_enum, default_value_t = TempMode::Auto)]
    temp: TempMode,
    /// Keep only these attributes (comma list of mode, ownership, timestamps, links, xattr,
    /// acl, all). Default: all, like cp -a.
    #[arg(long, value_name = "LIST")]
    preserve: Option<String>,
    /// Do not keep these attributes (same names as --preserve).
    #[arg(long, value_name = "LIST")]
    no_preserve: Option<String>,
    /// Never use O_DIRECT (by default files of 64 MiB and more bypass the page cache).
    #[arg(long)]
    no_direct: bool,
}

impl EngineArgs {
    fn preserve(&self) -> Result<Preserve, String> {
        let mut p = Preserve::ALL;
        if let Some(list) = &self.preserve {
            p = Preserve::NONE;
            p.set(list, true).map_err(|e| format!("--preserve: {e}"))?;
        }
        if let Some(list) = &self.no_preserve {
            p.set(list, false)
                .map_err(|e| format!("--no-preserve: {e}"))?;
        }
        Ok(p)
    }

    /// The engine part of a spec; Err: a bad --preserve/--no-preserve list.
    pub fn spec(&self, sources: Vec<PathBuf>, dest: PathBuf) -> Result<CopySpec, String> {
        let mut s = CopySpec::new(sources, dest);
        s.preserve = self.preserve()?;
        s.threads = self.threads;
        s.buffer_size = self.buffer_size;
        s.queue_depth = self.queue_depth;
        s.segment_size = self.segment_size as u64;
        s.io = self.io;
        s.fsync = self.fsync;
        s.commit_batch = self.commit_batch;
        s.temp = self.temp;
        s.direct = !self.no_direct;
        Ok(s)
    }
}

/// `--bwlimit` and friends: binary multiples, 0 = unlimited.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    ferry::job::ctl::parse_rate(s)
}
