//! Seeded fault injection through the library: short I/O and EAGAIN are absorbed; EIO, ENOSPC
//! and fsync errors fail exactly the files they hit, which never get a final name.

mod common;
use common::*;
use ferry::io::faulty::FaultConfig;
use ferry::{CopySpec, FsyncMode, IoMode};
use std::fs;
use std::path::Path;

fn tree(root: &Path) -> Vec<String> {
    fs::create_dir_all(root.join("sub")).unwrap();
    let mut names = Vec::new();
    for i in 0..150usize {
        let name = if i % 3 == 0 {
            format!("sub/f{i}")
        } else {
            format!("f{i}")
        };
        // Sizes from 0 to ~600 KiB, so many files span several 64 KiB buffers.
        write_file(&root.join(&name), (i * 4099) % 600_000, i as u64);
        names.push(name);
    }
    names
}

fn copy_within(s: CopySpec) -> ferry::Report {
    within(std::time::Duration::from_secs(120), move || {
        ferry::copy(s).unwrap()
    })
}

fn spec(src: &Path, dst: &Path, io: &str, faults: FaultConfig) -> CopySpec {
    let mut s = CopySpec::new(vec![src.to_path_buf()], dst.to_path_buf());
    s.io = if io == "uring" {
        IoMode::Uring
    } else {
        IoMode::Sync
    };
    s.buffer_size = 64 << 10;
    s.queue_depth = 8;
    s.segment_size = 256 << 10;
    s.threads = 2;
    // Odd seeds without checksums: big files are then split into segments across reactors.
    s.verify = if faults.seed % 2 == 1 {
        ferry::spec::VerifyMode::None
    } else {
        ferry::spec::VerifyMode::Stream
    };
    s.backend = Some(ferry::io::faulty::factory(faults));
    s
}

#[test]
fn short_io_and_eagain_are_completed_correctly() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src);
    for io in backends() {
        for seed in [1u64, 2, 3] {
            let dst = t.path().join(format!("dst-{io}-{seed}"));
            let f = FaultConfig {
                seed,
                short_permille: 400,
                eagain_permille: 100,
                ..Default::default()
            };
            let r = copy_within(spec(&src, &dst, io, f));
            assert!(r.ok(), "{:?}", r.errors);
            assert_eq!(r.files, 150);
            assert_same_tree(&src, &dst.clone());
        }
    }
}

/// Wide batches and named temp files (the other commit strategies) under the same faults.
#[test]
fn every_commit_strategy_completes_short_io_and_eagain_correctly() {
    use ferry::spec::{BatchMode, TempMode};
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src);
    for io in backends() {
        for (batch, temp) in [
            (BatchMode::Wide, TempMode::Auto),
            (BatchMode::Standard, TempMode::Named),
        ] {
            let dst = t.path().join(format!("dst-{io}-{batch:?}-{temp:?}"));
            let f = FaultConfig {
                seed: 2,
                short_permille: 400,
                eagain_permille: 100,
                ..Default::default()
            };
            let mut s = spec(&src, &dst, io, f);
            s.commit_batch = batch;
            s.temp = temp;
            let r = copy_within(s);
            assert!(r.ok(), "{:?}", r.errors);
            assert_eq!(r.files, 150);
            assert_same_tree(&src, &dst.clone());
            assert!(temp_files(&dst).is_empty());
        }
    }
}

/// Every source file is either copied intact under its final name or absent (and counted as
/// failed); no temp file survives.
fn check_all_or_nothing(src: &Path, dst: &Path, names: &[String], failed: u64) -> u64 {
    let mut missing = 0;
    for n in names {
        let d = dst.join(n);
        if d.exists() {
            assert!(
                files_equal(&src.join(n), &d),
                "{n} is under its final name but differs"
            );
        } else {
            missing += 1;
        }
    }
    assert_eq!(missing, failed, "every missing file is a reported failure");
    assert!(
        temp_files(dst).is_empty(),
        "temp files left: {:?}",
        temp_files(dst)
    );
    missing
}

#[test]
fn eio_and_enospc_fail_only_the_files_they_hit() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let names = tree(&src);
    for io in backends() {
        for (k, (f, needle)) in [
            (
                FaultConfig {
                    seed: 11,
                    read_eio_permille: 30,
                    ..Default::default()
                },
                "Input/output error",
            ),
            (
                FaultConfig {
                    seed: 12,
                    write_enospc_permille: 30,
                    short_permille: 200,
                    ..Default::default()
                },
                "No space left on device",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let dst = t.path().join(format!("dst-{io}-{k}"));
            let r = copy_within(spec(&src, &dst, io, f));
            assert!(!r.ok(), "faults at 3% over ~1000 ops must hit something");
            assert!(
                r.errors.iter().all(|e| e.contains(needle)),
                "{:?}",
                r.errors
            );
            let missing = check_all_or_nothing(&src, &dst, &names, r.failed);
            assert!(missing > 0 && missing < names.len() as u64);
            assert_eq!(r.files + r.failed, names.len() as u64);
        }
    }
}

#[test]
fn fsync_errors_are_not_retried_and_fail_the_file() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let names = tree(&src);
    for io in backends() {
        let dst = t.path().join(format!("dst-{io}"));
        let mut s = spec(
            &src,
            &dst,
            io,
            FaultConfig {
                seed: 5,
                fsync_eio_permille: 100,
                ..Default::default()
            },
        );
        s.fsync = FsyncMode::File;
        let r = copy_within(s);
        assert!(!r.ok());
        assert!(
            r.errors
                .iter()
                .all(|e| e.starts_with("fsync") && e.contains("Input/output error")),
            "{:?}",
            r.errors
        );
        check_all_or_nothing(&src, &dst, &names, r.failed);
    }
}

/// Files of 64 MiB and more go through O_DIRECT fds for their aligned chunks; short ops leave
/// unaligned remainders and the odd tail, which go through the ordinary fds. Either way the copy
/// is exact.
#[test]
fn big_files_through_o_direct_survive_short_io_and_odd_tails() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    write_file(&src.join("odd.bin"), (64 << 20) + 12_345, 77);
    for io in backends() {
        for (seed, short) in [(2u64, 0u32), (4, 300)] {
            let dst = t.path().join(format!("dst-{io}-{seed}"));
            let mut s = spec(
                &src,
                &dst,
                io,
                FaultConfig {
                    seed,
                    short_permille: short,
                    ..Default::default()
                },
            );
            s.buffer_size = 1 << 20;
            s.segment_size = 1 << 30;
            let r = copy_within(s);
            assert!(r.ok(), "{:?}", r.errors);
            assert!(
                files_equal(&src.join("odd.bin"), &dst.join("odd.bin")),
                "{io} seed {seed}"
            );
        }
    }
}
