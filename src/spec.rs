//! One description of a copy job, shared by the CLI and the library.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which I/O backend the reactors use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// io_uring when the kernel allows it, else the blocking backend (with a notice).
    Auto,
    /// io_uring or fail.
    Uring,
    /// pread/pwrite on the reactor threads.
    Sync,
}

/// How copied files are made durable before they get their final names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Group commit: finished temp files are collected, one syncfs per destination filesystem
    /// makes the whole batch durable, then the batch is renamed.
    Batch,
    /// fsync each file (through the ring) before its rename.
    File,
}

/// How big a group commit's batches are (`--commit-batch`; see copy::fskind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BatchMode {
    /// Chosen per destination filesystem (copy::fskind: standard on every kind measured).
    #[default]
    Auto,
    /// Up to 4,096 files or 500 ms per syncfs.
    Standard,
    /// Up to 16,384 files or 2 s per syncfs (fewer, larger flushes).
    Wide,
}

/// Which temp files a copy is written to (`--temp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TempMode {
    /// A hidden tree where the job allows it (see `Tree`), else per-file temps as `File`.
    #[default]
    Auto,
    /// A new directory tree is built under a hidden name, `.<name>.ferry-<token>.tree`, its
    /// files written at their names there, and renamed to its target once all of it is
    /// durable: no temp name and no rename per file. Only for a resumable copy (a state dir)
    /// whose sources are directories with targets that do not exist yet (not a move, a dry
    /// run or `--fail-fast`); `tree` refuses other jobs, `auto` falls back to `file`.
    Tree,
    /// Per-file temps: unnamed (O_TMPFILE) wherever the job and the filesystem allow it,
    /// else named.
    File,
    /// Always `.<name>.ferry-<token>.tmp`, renamed at commit.
    Named,
}

/// Which metadata is kept. Default: everything, like cp -a.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preserve {
    pub mode: bool,
    pub ownership: bool,
    pub timestamps: bool,
    /// Hard links inside the job are recreated as links.
    pub links: bool,
    pub xattr: bool,
    pub acl: bool,
}

impl Preserve {
    pub const ALL: Preserve = Preserve {
        mode: true,
        ownership: true,
        timestamps: true,
        links: true,
        xattr: true,
        acl: true,
    };
    pub const NONE: Preserve = Preserve {
        mode: false,
        ownership: false,
        timestamps: false,
        links: false,
        xattr: false,
        acl: false,
    };

    /// Turns on (or off) the attributes named in a comma list: mode, ownership, timestamps,
    /// links, xattr, acl, all.
    pub fn set(&mut self, list: &str, on: bool) -> Result<(), String> {
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "mode" => self.mode = on,
                "ownership" | "owner" => self.ownership = on,
                "timestamps" | "times" => self.timestamps = on,
                "links" => self.links = on,
                "xattr" => self.xattr = on,
                "acl" => self.acl = on,
                "all" => {
                    *self = if on { Preserve::ALL } else { Preserve::NONE };
                }
                other => {
                    return Err(format!(
                        "unknown attribute '{other}' (use mode, ownership, timestamps, links, xattr, acl, all)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Limits that keep every queue, buffer and fd count bounded.
/// What ferry proves about the bytes it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// No checksums (the only mode that may split one file across reactors).
    None,
    /// xxh3 of every file, computed on the buffer between its read and its write.
    Stream,
    /// `stream`, then once the data is durable, re-read it past the page cache and compare.
    Full,
}

impl VerifyMode {
    pub fn hashes(self) -> bool {
        self != VerifyMode::None
    }
}

fn default_verify() -> VerifyMode {
    VerifyMode::Stream
}

pub const MAX_THREADS: usize = 256;
pub const MIN_BUFFER: usize = 4096;
pub const MAX_BUFFER: usize = 64 << 20;
pub const MAX_QUEUE_DEPTH: usize = 4096;
/// Registered arena per reactor may not exceed this (buffer_size * queue_depth).
pub const MAX_ARENA: usize = 1 << 30;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CopySpec {
    #[serde(with = "crate::pathser::many")]
    pub sources: Vec<PathBuf>,
    #[serde(with = "crate::pathser")]
    pub dest: PathBuf,
    /// Reactor threads; 0 means one per online CPU.
    pub threads: usize,
    /// Bytes per registered buffer (one chunk of one file; a chunk read through the page
    /// cache is at most `copy::chunk::CACHED_CHUNK` of it).
    pub buffer_size: usize,
    /// Buffers per reactor, which is also its in-flight data operations.
    pub queue_depth: usize,
    /// Files larger than this are split into segments that any reactor can take.
    pub segment_size: u64,
    pub io: IoMode,
    pub fsync: FsyncMode,
    /// Group-commit batch sizes (`--fsync=batch`).
    #[serde(default)]
    pub commit_batch: BatchMode,
    #[serde(default)]
    pub temp: TempMode,
    pub preserve: Preserve,
    /// Include/exclude rules in command-line order (first match wins).
    #[serde(default)]
    pub filters: Vec<crate::filter::Rule>,
    /// Walk and count what would be copied; write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Do not descend into directories on other filesystems than their parent's.
    #[serde(default)]
    pub one_file_system: bool,
    /// Stop at the first error.
    #[serde(default)]
    pub fail_fast: bool,
    /// Where checkpoints and journals live (None: the job is not resumable).
    #[serde(default, with = "crate::pathser::maybe")]
    pub state_dir: Option<PathBuf>,
    /// The state dir is a default, not a request: if it cannot be created, warn and run
    /// without resume instead of refusing the job.
    #[serde(default)]
    pub state_dir_optional: bool,
    /// Copy only what failed in the job's last run.
    #[serde(default)]
    pub retry_failed: bool,
    /// Forget an earlier unfinished run of the same job instead of resuming it.
    #[serde(default)]
    pub fresh: bool,
    /// Bytes per second (0 = unlimited).
    #[serde(default)]
    pub bwlimit: u64,
    /// File operations per second (0 = unlimited).
    #[serde(default)]
    pub ops_limit: u64,
    /// Wraps every reactor's backend (tests inject faults with `io::faulty::factory`); never
    /// set by the CLI, never part of a checkpoint or of the job's id.
    #[serde(skip)]
    pub backend: Option<crate::io::BackendFactory>,
    #[serde(default = "default_verify")]
    pub verify: VerifyMode,
    /// Write one record per copied file (see `manifest`).
    #[serde(default, with = "crate::pathser::maybe")]
    pub manifest: Option<PathBuf>,
    /// `ferry move`: delete each source once its copy is durable and verified.
    #[serde(default)]
    pub remove_source: bool,
    /// `ferry move --no-rename`: copy and delete even within one filesystem.
    #[serde(default)]
    pub no_rename: bool,
    /// Set for `ferry rebalance` jobs (sources/dest then name the two topology files).
    #[serde(default)]
    pub rebalance: Option<RebalanceSpec>,
    /// Background work on a node that serves clients (an agent's migration): the job's
    /// threads run at a lower CPU priority (`coord::background`).
    #[serde(default)]
    pub background: bool,
    /// Files of at least DIRECT_MIN bytes are read and written with O_DIRECT (past the page
    /// cache) where the filesystem allows it.
    #[serde(default = "yes")]
    pub direct: bool,
    /// `ferry copy --cluster`: only the files whose path partition is in this set.
    #[serde(default)]
    pub partitions: Option<crate::partset::PartSet>,
}

fn yes() -> bool {
    true
}

/// Smallest file copied with O_DIRECT.
pub const DIRECT_MIN: u64 = 64 << 20;
pub use crate::io::DIRECT_ALIGN;

/// What a rebalance checkpoint must agree on to be resumed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceSpec {
    pub from_generation: u64,
    pub to_generation: u64,
    /// "size" (small objects first) or "partition".
    pub order: String,
}

impl CopySpec {
    pub fn new(sources: Vec<PathBuf>, dest: PathBuf) -> Self {
        CopySpec {
            sources,
            dest,
            threads: 0,
            buffer_size: 512 << 10,
            queue_depth: 64,
            segment_size: 1 << 30,
            io: IoMode::Auto,
            fsync: FsyncMode::Batch,
            commit_batch: BatchMode::Auto,
            temp: TempMode::Auto,
            preserve: Preserve::ALL,
            filters: Vec::new(),
            dry_run: false,
            one_file_system: false,
            fail_fast: false,
            state_dir: None,
            state_dir_optional: false,
            retry_failed: false,
            fresh: false,
            bwlimit: 0,
            ops_limit: 0,
            backend: None,
            verify: VerifyMode::Stream,
            manifest: None,
            remove_source: false,
            no_rename: false,
            rebalance: None,
            background: false,
            direct: true,
            partitions: None,
        }
    }

    /// Checks the numbers; the error text is for the user.
    pub fn validate(&self) -> Result<(), String> {
        if self.sources.is_empty() {
            return Err("no source given".into());
        }
        if self.threads > MAX_THREADS {
            return Err(format!("--threads must be at most {MAX_THREADS}"));
        }
        if !(MIN_BUFFER..=MAX_BUFFER).contains(&self.buffer_size)
            || !self.buffer_size.is_multiple_of(MIN_BUFFER)
        {
            return Err(format!(
                "--buffer-size must be a multiple of 4K between 4K and 64M (got {})",
                self.buffer_size
            ));
        }
        if !(1..=MAX_QUEUE_DEPTH).contains(&self.queue_depth) {
            return Err(format!(
                "--queue-depth must be between 1 and {MAX_QUEUE_DEPTH}"
            ));
        }
        if self.buffer_size * self.queue_depth > MAX_ARENA {
            return Err("--buffer-size x --queue-depth must stay within 1 GiB per reactor".into());
        }
        if self.remove_source && self.verify == VerifyMode::None {
            return Err(
                "ferry move deletes sources only after verifying their copies: \
                        --verify=none is not allowed (use stream or full)"
                    .into(),
            );
        }
        if self.remove_source && self.dry_run {
            return Err("--dry-run is not supported by ferry move".into());
        }
        if self.segment_size < self.buffer_size as u64 {
            return Err("segment size must be at least one buffer".into());
        }
        Ok(())
    }

    /// Reactor count after resolving 0 to the online CPUs.
    pub fn reactor_count(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(MAX_THREADS)
        }
    }
}

/// Parses sizes like `512K`, `1M`, `4096` (binary multiples).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: usize = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown size suffix in '{s}' (use K, M or G)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 512K, 1M)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_binary_multiples() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_size("1m").unwrap(), 1 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("K").is_err());
    }

    #[test]
    fn validate_rejects_bad_numbers() {
        let mut s = CopySpec::new(vec!["a".into()], "b".into());
        assert!(s.validate().is_ok());
        s.buffer_size = 1000;
        assert!(s.validate().is_err());
        s.buffer_size = 4096;
        s.queue_depth = 0;
        assert!(s.validate().is_err());
        s.queue_depth = 8;
        s.sources.clear();
        assert!(s.validate().is_err());
    }
}
