//! `ferry demo`: builds a sample tree, copies it with the default engine, checks the copy and
//! prints the speed. Everything happens in a temporary directory that is removed at the end.

use crate::spec::CopySpec;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Deterministic generator so every run builds the same tree.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// What the sample tree holds.
pub struct Shape {
    pub small_files: usize,
    pub dirs: usize,
    pub medium_files: usize,
    pub large_files: usize,
}

pub const DEFAULT_SHAPE: Shape = Shape {
    small_files: 4000,
    dirs: 40,
    medium_files: 16,
    large_files: 2,
};

/// Writes the sample tree under `root`; returns (files, bytes).
pub fn generate(root: &Path, shape: &Shape, seed: u64) -> std::io::Result<(u64, u64)> {
    let mut rng = XorShift(seed | 1);
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 8 << 20];
    let mut write = |p: PathBuf, len: usize, rng: &mut XorShift| -> std::io::Result<()> {
        let mut f = fs::File::create(p)?;
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n])?;
            left -= n;
        }
        files += 1;
        bytes += len as u64;
        Ok(())
    };
    for d in 0..shape.dirs {
        fs::create_dir_all(root.join(format!("small/d{d:03}")))?;
    }
    for i in 0..shape.small_files {
        // 0 B to 64 KiB, skewed small like real trees.
        let len = (rng.next_u64() % 65536) as usize >> (rng.next_u64() % 4);
        let d = i % shape.dirs.max(1);
        write(root.join(format!("small/d{d:03}/f{i:05}")), len, &mut rng)?;
    }
    fs::create_dir_all(root.join("medium"))?;
    for i in 0..shape.medium_files {
        let len = (1 << 20) + (rng.next_u64() % (7 << 20)) as usize;
        write(root.join(format!("medium/m{i:03}.bin")), len, &mut rng)?;
    }
    fs::create_dir_all(root.join("large"))?;
    for i in 0..shape.large_files {
        write(root.join(format!("large/big{i}.bin")), 96 << 20, &mut rng)?;
    }
    std::os::unix::fs::symlink("medium/m000.bin", root.join("link-to-medium"))?;
    std::os::unix::fs::symlink("../large", root.join("small/link-to-large"))?;
    Ok((files, bytes))
}

/// Runs the demo; returns false when the copy was not identical.
pub fn run(spec_template: &CopySpec) -> Result<bool, String> {
    let base = std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id()));
    let result = run_in(&base, spec_template);
    if let Err(e) = fs::remove_dir_all(&base) {
        eprintln!("ferry demo: could not remove {}: {e}", base.display());
    }
    result
}

fn run_in(base: &Path, spec_template: &CopySpec) -> Result<bool, String> {
    let src = base.join("src");
    let dst = base.join("dst");
    fs::create_dir_all(&src).map_err(|e| format!("create {}: {e}", src.display()))?;
    println!(
        "ferry demo: generating a sample tree in {} ...",
        src.display()
    );
    let (files, bytes) =
        generate(&src, &DEFAULT_SHAPE, 42).map_err(|e| format!("generate sample tree: {e}"))?;
    println!(
        "ferry demo: {} files, {:.1} MB; copying to {} ...",
        files,
        bytes as f64 / 1e6,
        dst.display()
    );
    let mut spec = spec_template.clone();
    spec.sources = vec![src.clone()];
    spec.dest = dst.clone();
    let report = crate::copy(spec).map_err(|e| e.to_string())?;
    for e in &report.errors {
        eprintln!("ferry: {e}");
    }
    println!("ferry demo: copied {}", report.summary());
    let diffs = crate::verify::compare_trees(&src, &dst);
    for d in diffs.iter().take(20) {
        eprintln!("ferry demo: MISMATCH {d}");
    }
    if diffs.is_empty() && report.ok() {
        println!("ferry demo: verified: the copy is identical (content, modes, mtimes, links)");
        Ok(true)
    } else {
        println!("ferry demo: {} differences found", diffs.len());
        Ok(false)
    }
}
