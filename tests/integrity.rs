//! Integrity: streamed xxh3, manifests, `ferry verify`, `--verify=full` against a flipped
//! byte, and `ferry move` (rename fast path, copy path, faults that must never cost a source).

mod common;
use common::*;
use ferry::io::faulty::FaultConfig;
use ferry::{CopySpec, IoMode};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `ferry verify --manifest M DST` finds nothing wrong.
fn assert_manifest_verifies(m: &Path, dst: &Path) {
    let v = ferry(&[
        "verify".as_ref(),
        "--manifest".as_ref(),
        m.as_os_str(),
        dst.as_os_str(),
    ]);
    assert!(v.status.success(), "{}{}", out_text(&v), stderr(&v));
}

fn small_tree(root: &Path, n: usize) -> Vec<PathBuf> {
    fs::create_dir_all(root.join("a/b")).unwrap();
    let mut v = Vec::new();
    for i in 0..n {
        let rel = PathBuf::from(match i % 3 {
            0 => format!("f{i}"),
            1 => format!("a/f{i}"),
            _ => format!("a/b/f{i}"),
        });
        write_file(&root.join(&rel), (i * 7907) % 300_000, i as u64);
        v.push(rel);
    }
    v
}

fn out_text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A 64 MiB sparse file with 5000 bytes at 30 MiB: its holes hash as zeros.
fn add_sparse(src: &Path) {
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &pattern(5000, 3), 30 << 20).unwrap();
}

/// Every record of manifest `m` matches its file under `dst` (size, xxh3, mtime), and every
/// regular file of `dst` is listed once (odd names included).
fn assert_manifest_lists_every_file(m: &Path, dst: &Path) {
    let recs = ferry::manifest::read(m).unwrap();
    let mut regular = 0;
    for r in &recs {
        let p = dst.join(&r.path);
        let data = fs::read(&p).unwrap();
        assert_eq!(r.size, data.len() as u64, "{}", p.display());
        assert_eq!(r.hash, xxhash_rust::xxh3::xxh3_64(&data), "{}", p.display());
        let md = fs::metadata(&p).unwrap();
        assert_eq!(
            r.mtime_ns,
            md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128
        );
        regular += 1;
    }
    let mut stack = vec![dst.to_path_buf()];
    let mut on_disk = 0;
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                on_disk += 1;
            }
        }
    }
    assert_eq!(regular, on_disk);
}

/// One flipped byte of `dst`'s sizes/s65536 (same size, same mtime) is found by both kinds
/// of verify: against manifest `m` and against `src`.
fn assert_a_flipped_byte_is_found(src: &Path, dst: &Path, m: &Path) {
    let victim = dst.join("sizes/s65536");
    let mut data = fs::read(&victim).unwrap();
    data[40_000] ^= 0x80;
    let mt = fs::metadata(&victim).unwrap();
    fs::write(&victim, &data).unwrap();
    set_mtime(&victim, mt.mtime(), mt.mtime_nsec());
    for args in [
        vec![
            "verify".as_ref(),
            "--manifest".as_ref(),
            m.as_os_str(),
            dst.as_os_str(),
        ],
        vec!["verify".as_ref(), src.as_os_str(), dst.as_os_str()],
    ] {
        let bad = ferry(&args);
        assert_eq!(bad.status.code(), Some(1), "{}", out_text(&bad));
        let text = out_text(&bad);
        assert!(text.contains("sizes/s65536: content differs"), "{text}");
        assert_eq!(text.matches("differs:").count(), 1, "{text}");
    }
}

#[test]
fn manifest_records_the_xxh3_of_every_file_and_verify_checks_it() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_tree(&src);
    add_sparse(&src);
    let dst = t.path().join("dst");
    let m = t.path().join("m.txt");
    for io in backends() {
        let _ = fs::remove_dir_all(&dst);
        chmod_tree_writable(t.path());
        let out = ferry(&[
            "copy".as_ref(),
            "--io".as_ref(),
            io.as_ref(),
            "--fresh".as_ref(),
            "--verify=full".as_ref(),
            "--manifest".as_ref(),
            m.as_os_str(),
            src.as_os_str(),
            dst.as_os_str(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_manifest_lists_every_file(&m, &dst);
        assert_manifest_verifies(&m, &dst);
        let ok = ferry(&["verify".as_ref(), src.as_os_str(), dst.as_os_str()]);
        assert!(ok.status.success(), "{}{}", out_text(&ok), stderr(&ok));
    }
    assert_a_flipped_byte_is_found(&src, &dst, &m);
}

#[test]
fn verify_lists_every_kind_of_difference() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    small_tree(&a, 30);
    small_tree(&b, 30);
    fs::remove_file(b.join("a/f1")).unwrap(); // missing
    write_file(&b.join("a/extra"), 10, 1); // extra
    write_file(&b.join("f3"), 3 * 7907, 99); // same size, other bytes
    write_file(&b.join("a/b/f5"), 7, 5); // other size
    fs::remove_file(b.join("f6")).unwrap();
    fs::create_dir(b.join("f6")).unwrap(); // other type
    std::os::unix::fs::symlink("x", a.join("l")).unwrap();
    std::os::unix::fs::symlink("y", b.join("l")).unwrap(); // other target
    let o = ferry(&["verify".as_ref(), a.as_os_str(), b.as_os_str()]);
    assert_eq!(o.status.code(), Some(1));
    let text = out_text(&o);
    for want in [
        "a/f1: missing in destination",
        "a/extra: not in source",
        "f3: content differs",
        "a/b/f5: size",
        "f6: type differs",
        "l: symlink target differs",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
    assert_eq!(text.matches("differs:").count(), 6, "{text}");
    // Bad input: exit 2 with a message.
    let o = ferry(&[
        "verify".as_ref(),
        a.as_os_str(),
        t.path().join("nope").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    fs::write(
        t.path().join("bad.txt"),
        "# ferry manifest v1\nnot a record\n",
    )
    .unwrap();
    let o = ferry(&[
        "verify".as_ref(),
        "--manifest".as_ref(),
        t.path().join("bad.txt").as_os_str(),
        b.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("line 2"), "{}", stderr(&o));
}

fn fault_spec(src: &Path, dst: &Path, io: &str, f: FaultConfig) -> CopySpec {
    let mut s = CopySpec::new(vec![src.to_path_buf()], dst.to_path_buf());
    s.io = if io == "uring" {
        IoMode::Uring
    } else {
        IoMode::Sync
    };
    s.buffer_size = 64 << 10;
    s.queue_depth = 8;
    s.threads = 2;
    s.backend = Some(ferry::io::faulty::factory(f));
    s
}

/// A copy whose writes sometimes carry a flipped byte.
fn flip_copy(src: &Path, dst: &Path, io: &str, v: ferry::spec::VerifyMode) -> ferry::Report {
    let mut s = fault_spec(
        src,
        dst,
        io,
        FaultConfig {
            seed: 11,
            // Which reactor writes which file depends on scheduling, so each reactor's seeded
            // stream sees a varying number of writes: 10 % makes "nothing flipped" (0.9^120)
            // practically impossible.
            flip_permille: 100,
            ..Default::default()
        },
    );
    s.verify = v;
    within(std::time::Duration::from_secs(120), move || {
        ferry::copy(s).unwrap()
    })
}

#[test]
fn a_flipped_byte_is_caught_by_full_verify_and_by_ferry_verify() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let files = small_tree(&src, 120);
    for io in backends() {
        // --verify=full: a corrupted copy never gets a final name; the file is failed.
        let dst = t.path().join(format!("full-{io}"));
        let r = flip_copy(&src, &dst, io, ferry::spec::VerifyMode::Full);
        assert!(r.failed > 0, "no flip was injected: {:?}", r.errors);
        assert!(
            r.errors.iter().all(|e| e.contains("content differs")),
            "{:?}",
            r.errors
        );
        let mut present = 0;
        for rel in &files {
            let d = dst.join(rel);
            if d.exists() {
                assert!(
                    files_equal(&src.join(rel), &d),
                    "corrupt copy under {}",
                    d.display()
                );
                present += 1;
            }
        }
        assert_eq!(present as u64, r.files);
        assert_eq!(present + r.failed as usize, files.len());
        assert!(temp_files(&dst).is_empty());
        // --verify=stream cannot see it; `ferry verify` does.
        let dst = t.path().join(format!("stream-{io}"));
        let r = flip_copy(&src, &dst, io, ferry::spec::VerifyMode::Stream);
        assert!(r.ok(), "{:?}", r.errors);
        let corrupt = files
            .iter()
            .filter(|rel| !files_equal(&src.join(rel), &dst.join(rel)))
            .count();
        assert!(corrupt > 0);
        let v = ferry::verify::verify_trees(&src, &dst, 0);
        assert_eq!(v.mismatches.len(), corrupt, "{:?}", v.mismatches);
        assert!(v.mismatches.iter().all(|m| m.ends_with("content differs")));
    }
}

/// Every file is intact at its source or at its destination (or both); no final name holds
/// a bad copy.
fn assert_nothing_lost(src: &Path, dst: &Path, expected: &[(PathBuf, Vec<u8>)]) {
    for (rel, data) in expected {
        let (s, d) = (src.join(rel), dst.join(rel));
        let in_src = s.exists();
        let in_dst = d.exists();
        assert!(in_src || in_dst, "{} is in neither place", rel.display());
        if in_src {
            assert_eq!(
                &fs::read(&s).unwrap(),
                data,
                "source {} changed",
                s.display()
            );
        }
        if in_dst {
            assert_eq!(
                &fs::read(&d).unwrap(),
                data,
                "bad copy under {}",
                d.display()
            );
        }
    }
}

fn expected(root: &Path, files: &[PathBuf]) -> Vec<(PathBuf, Vec<u8>)> {
    files
        .iter()
        .map(|r| (r.clone(), fs::read(root.join(r)).unwrap()))
        .collect()
}

#[test]
fn failed_io_never_costs_a_moved_source() {
    let t = tempfile::tempdir().unwrap();
    for io in backends() {
        for (seed, f) in [
            (
                1u64,
                FaultConfig {
                    read_eio_permille: 20,
                    ..Default::default()
                },
            ),
            (
                2,
                FaultConfig {
                    write_eio_permille: 20,
                    ..Default::default()
                },
            ),
            (
                3,
                FaultConfig {
                    fsync_eio_permille: 100,
                    ..Default::default()
                },
            ),
            (
                4,
                FaultConfig {
                    // 10 %: see the flipped-byte test (0.98^90 left 16 % of runs unflipped).
                    flip_permille: 100,
                    short_permille: 200,
                    ..Default::default()
                },
            ),
        ] {
            let src = t.path().join(format!("src-{io}-{seed}"));
            let files = small_tree(&src, 90);
            let want = expected(&src, &files);
            let dst = t.path().join(format!("dst-{io}-{seed}"));
            let mut s = fault_spec(&src, &dst, io, FaultConfig { seed, ..f });
            s.remove_source = true;
            s.no_rename = true;
            s.verify = ferry::spec::VerifyMode::Full;
            if seed == 3 {
                s.fsync = ferry::FsyncMode::File;
            }
            let r = within(std::time::Duration::from_secs(120), move || {
                ferry::copy(s).unwrap()
            });
            assert!(r.failed > 0, "seed {seed}: nothing injected");
            assert_nothing_lost(&src, &dst, &want);
            // A failed file keeps its source; a moved one is gone from the source.
            let kept = files.iter().filter(|r| src.join(r).exists()).count();
            assert_eq!(kept as u64, r.failed, "seed {seed}: {:?}", r.errors);
            assert_eq!(r.files as usize + kept, files.len());
            assert!(temp_files(&dst).is_empty());
        }
    }
}

/// `ferry move EXTRA... --manifest M SRC DST` of a built tree with a hard link (case `i`:
/// 0 by the copy path, 1 by rename): the source is gone, the destination is the tree, links
/// stay links, and the summary says how it moved.
fn move_whole_tree(t: &Path, i: usize, extra: &[&str]) {
    let src = t.join(format!("src{i}"));
    build_tree(&src);
    fs::hard_link(src.join("sizes/s4096"), src.join("hard")).unwrap();
    let reference = t.join(format!("ref{i}"));
    let out = ferry(&["copy".as_ref(), src.as_os_str(), reference.as_os_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dst = t.join(format!("dst{i}"));
    let m = t.join(format!("m{i}.txt"));
    let mut args: Vec<&std::ffi::OsStr> = vec!["move".as_ref()];
    args.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
    args.extend([
        "--manifest".as_ref(),
        m.as_os_str(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    let out = ferry(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!src.exists(), "the source tree is gone after a move");
    assert_same_tree(&reference, &dst);
    let (h1, h2) = (
        fs::metadata(dst.join("hard")).unwrap(),
        fs::metadata(dst.join("sizes/s4096")).unwrap(),
    );
    assert_eq!(h1.ino(), h2.ino(), "hard links stay links");
    let text = out_text(&out);
    if i == 0 {
        assert!(!text.contains("moved by rename"), "{text}");
        assert_manifest_verifies(&m, &dst);
    } else {
        assert!(text.contains("1 moved by rename"), "{text}");
    }
}

/// A move into an existing directory merges file by file, leaving what it could not move
/// (an excluded file); then --verify=none is refused for a move.
fn move_into_an_existing_dir_merges(t: &Path) {
    let src = t.join("msrc");
    let files = small_tree(&src, 12);
    let dst = t.join("mdst");
    fs::create_dir_all(dst.join("msrc/a")).unwrap();
    write_file(&dst.join("msrc/a/old"), 10, 1);
    let out = ferry(&[
        "move".as_ref(),
        "--exclude".as_ref(),
        "f0".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(src.join("f0").exists(), "an excluded file stays");
    assert_eq!(
        fs::read_dir(&src).unwrap().count(),
        1,
        "only the excluded file is left"
    );
    for rel in files.iter().filter(|r| r.as_os_str() != "f0") {
        assert!(dst.join("msrc").join(rel).exists(), "{}", rel.display());
    }
    assert!(dst.join("msrc/a/old").exists());
    let out = ferry(&[
        "move".as_ref(),
        "--verify=none".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("verify"), "{}", stderr(&out));
    assert!(src.join("f0").exists());
}

/// SRC/. moves the contents into the destination and leaves SRC itself, emptied.
fn move_contents_leaves_the_source_dir(t: &Path) {
    let src = t.join("dsrc");
    let files = small_tree(&src, 12);
    let dst = t.join("ddst");
    fs::create_dir(&dst).unwrap();
    let out = ferry(&["move".as_ref(), src.join(".").as_os_str(), dst.as_os_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_dir(&src).unwrap().count(),
        0,
        "the source dir stays, empty"
    );
    for rel in &files {
        assert!(dst.join(rel).exists(), "{}", rel.display());
    }
}

#[test]
fn move_across_the_copy_path_and_by_rename() {
    let t = tempfile::tempdir().unwrap();
    for (i, extra) in [&["--no-rename"][..], &[][..]].iter().enumerate() {
        move_whole_tree(t.path(), i, extra);
    }
    move_into_an_existing_dir_merges(t.path());
    move_contents_leaves_the_source_dir(t.path());
}

#[test]
fn a_resumed_copy_still_writes_a_complete_manifest() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let files = small_tree(&src, 150);
    let (dst, m, state) = (
        t.path().join("dst"),
        t.path().join("m.txt"),
        t.path().join("st"),
    );
    let args = |limit: &str| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = ["copy", "--bwlimit", limit, "--manifest"]
            .iter()
            .map(|s| s.into())
            .collect();
        v.extend([m.clone().into(), "--state-dir".into(), state.clone().into()]);
        v.extend([src.clone().into(), dst.clone().into()]);
        v
    };
    // Throttled to ~4 s, killed after 1 s.
    let mut child = std::process::Command::new(BIN)
        .args(args("5M"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(Spawned::new)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert!(child.try_wait().unwrap().is_none(), "finished too early");
    child.kill().unwrap();
    child.wait().unwrap();
    let out = ferry(&args("0"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming job"), "{}", stderr(&out));
    let recs = ferry::manifest::read(&m).unwrap();
    assert_eq!(recs.len(), files.len());
    assert_manifest_verifies(&m, &dst);
}

#[test]
fn verify_names_the_root_when_a_directory_meets_a_file() {
    let t = tempfile::tempdir().unwrap();
    let (d, f) = (t.path().join("d"), t.path().join("f"));
    fs::create_dir(&d).unwrap();
    write_file(&f, 10, 1);
    for (a, b, want) in [
        (
            &d,
            &f,
            "type differs (directory in source, regular file in destination)",
        ),
        (
            &f,
            &d,
            "type differs (regular file in source, directory in destination)",
        ),
    ] {
        let out = ferry(&["verify".as_ref(), a.as_os_str(), b.as_os_str()]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let text = out_text(&out);
        let line = format!("differs: {}: {want}", b.display());
        assert!(text.lines().any(|l| l == line), "want '{line}' in: {text}");
    }
}
