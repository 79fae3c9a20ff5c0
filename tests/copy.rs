//! ferry copy, end to end through the real binary, on both backends.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn copy_args<'a>(
    io: &'a str,
    extra: &[&'a str],
    src: &'a Path,
    dst: &'a Path,
) -> Vec<&'a std::ffi::OsStr> {
    let mut v: Vec<&std::ffi::OsStr> = vec!["copy".as_ref(), "--io".as_ref(), io.as_ref()];
    v.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
    v.push(src.as_os_str());
    v.push(dst.as_os_str());
    v
}

fn run_copy(io: &str, extra: &[&str], src: &Path, dst: &Path) -> std::process::Output {
    ferry(&copy_args(io, extra, src, dst))
}

#[test]
fn every_shape_copies_identically_on_both_backends() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_tree(&src);
    // Default chunking, then tiny buffers and segments so every size crosses boundaries, with
    // both durability modes.
    let variants: &[&[&str]] = &[
        &[],
        &[
            "--buffer-size",
            "64K",
            "--queue-depth",
            "3",
            "--segment-size",
            "256K",
        ],
        &[
            "--buffer-size",
            "4K",
            "--queue-depth",
            "1",
            "--threads",
            "1",
            "--fsync",
            "file",
        ],
        &[
            "--threads",
            "3",
            "--fsync",
            "file",
            "--segment-size",
            "256K",
            "--buffer-size",
            "64K",
        ],
    ];
    for io in backends() {
        for (i, extra) in variants.iter().enumerate() {
            let dst = t.path().join(format!("dst-{io}-{i}"));
            let out = run_copy(io, extra, &src, &dst);
            assert!(out.status.success(), "{io} {extra:?}: {}", stderr(&out));
            assert_same_tree(&src, &dst);
            assert!(
                temp_files(&dst).is_empty(),
                "temp files left: {:?}",
                temp_files(&dst)
            );
        }
    }
    chmod_tree_writable(t.path());
}

#[test]
fn big_sparse_file_keeps_its_holes_and_bytes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("sparse.img");
    let f = fs::File::create(&src).unwrap();
    f.set_len((2 << 30) + 12345).unwrap(); // over 2 GiB
    use std::os::unix::fs::FileExt;
    for (i, off) in [0u64, 700 << 20, (2 << 30) + 100].iter().enumerate() {
        f.write_all_at(&pattern(100_000, i as u64), *off).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let size = fs::metadata(&src).unwrap().len();
    assert!(size > 2 << 30);
    for io in backends() {
        let dst = t.path().join(format!("copy-{io}.img"));
        // Unhashed, so the data ranges are split into segments over both reactors.
        let out = run_copy(
            io,
            &["--segment-size", "8M", "--verify", "none"],
            &src,
            &dst,
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let (ms, md) = (fs::metadata(&src).unwrap(), fs::metadata(&dst).unwrap());
        assert_eq!(md.len(), size);
        assert!(files_equal(&src, &dst), "sparse content differs");
        // Holes stay holes: allocation stays near the source's (a few MiB, not 2 GiB).
        assert!(
            md.blocks() * 512 <= ms.blocks() * 512 + (8 << 20),
            "copy allocates {} bytes, source {}",
            md.blocks() * 512,
            ms.blocks() * 512
        );
        fs::remove_file(&dst).unwrap();
    }
}

#[test]
fn cp_semantics_for_destinations() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("tree");
    fs::create_dir(&src).unwrap();
    write_file(&src.join("a"), 5000, 1);
    let file = t.path().join("one.txt");
    write_file(&file, 777, 2);
    for io in backends() {
        let base = t.path().join(io);
        fs::create_dir(&base).unwrap();
        // DST missing, one SRC dir: DST becomes the copy.
        let out = run_copy(io, &[], &src, &base.join("new"));
        assert!(out.status.success(), "{}", stderr(&out));
        assert_same_tree(&src, &base.join("new"));
        // The same command again lands where the first run did (tests/rerun.rs)...
        let out = run_copy(io, &[], &src, &base.join("new"));
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!base.join("new/tree").exists());
        // ...while a new job whose DST is an existing dir puts SRC inside it under its name.
        let exists = base.join("exists");
        fs::create_dir(&exists).unwrap();
        let out = run_copy(io, &[], &src, &exists);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_same_tree(&src, &exists.join("tree"));
        // Several sources into a dir.
        let multi = base.join("multi");
        fs::create_dir(&multi).unwrap();
        let mut args = vec!["copy", "--io", io];
        let (s1, s2, m) = (
            src.to_str().unwrap(),
            file.to_str().unwrap(),
            multi.to_str().unwrap(),
        );
        args.extend([s1, s2, m]);
        let out = ferry(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_same_tree(&src, &multi.join("tree"));
        assert_same_tree(&file, &multi.join("one.txt"));
        // File onto an existing file: replaced.
        let target = base.join("existing.txt");
        write_file(&target, 10, 99);
        let out = run_copy(io, &[], &file, &target);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_same_tree(&file, &target);
        // SRC/. names the contents (cp's idiom): into an existing dir they land in it, not
        // under SRC's name; to a new name the dir is the copy.
        let into = base.join("into");
        fs::create_dir(&into).unwrap();
        let dot = src.join(".");
        let out = run_copy(io, &[], &dot, &into);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_same_tree(&src, &into);
        let out = run_copy(io, &[], &dot, &base.join("fresh"));
        assert!(out.status.success(), "{}", stderr(&out));
        assert_same_tree(&src, &base.join("fresh"));
        // A file to "NEW/": refused before anything is written, as cp does.
        let slash = std::path::PathBuf::from(format!("{}/", base.join("nodir").display()));
        let out = run_copy(io, &[], &file, &slash);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("Not a directory"), "{}", stderr(&out));
        assert!(!base.join("nodir").exists());
    }
}

#[test]
fn copy_over_an_existing_tree_replaces_its_files_and_clears_stale_temps() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("tree");
    fs::create_dir_all(src.join("d")).unwrap();
    write_file(&src.join("d/a"), 5000, 1);
    write_file(&src.join("d/b"), 300, 2);
    write_file(&src.join("c"), 70_000, 3);
    for io in backends() {
        let base = t.path().join(io);
        fs::create_dir_all(&base).unwrap();
        // An earlier run of the job (its temps carry the job's token, kept in its state)...
        let out = run_copy(io, &[], &src, &base);
        assert!(out.status.success(), "{}", stderr(&out));
        let tok = job_temp_token(&base).expect("the job's temp token");
        // ...then other contents, and the temp names a killed run of it left.
        let old = base.join("tree");
        write_file(&old.join("d/a"), 10, 90);
        write_file(&old.join("c"), 123_456, 91);
        write_file(&old.join(format!("d/.a.ferry-{tok}.tmp")), 77, 92);
        write_file(&old.join(format!("d/.b.ferry-{tok}.tmp")), 77, 93);
        assert_eq!(temp_files(&base).len(), 2);
        let out = run_copy(io, &[], &src, &base);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_same_tree(&src, &old);
        assert!(temp_files(&base).is_empty(), "{:?}", temp_files(&base));
    }
}

#[test]
fn missing_source_is_a_usage_error_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("good");
    write_file(&good, 10, 1);
    let dst = t.path().join("dst");
    fs::create_dir(&dst).unwrap();
    let missing = t.path().join("does-not-exist");
    let out = ferry(&[
        "copy".as_ref(),
        good.as_os_str(),
        missing.as_os_str(),
        dst.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("does-not-exist") && err.contains("No such file or directory"),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(&dst).unwrap().count(),
        0,
        "nothing may be written"
    );
}

#[test]
fn destination_inside_source_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    write_file(&src.join("f"), 10, 1);
    for dst in [src.join("sub"), src.clone()] {
        let out = run_copy("sync", &[], &src, &dst);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("into itself"), "{}", stderr(&out));
    }
    assert_eq!(
        fs::read_dir(&src).unwrap().count(),
        1,
        "nothing may be written"
    );
}

#[test]
fn directory_onto_a_file_and_many_onto_a_file_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let file = t.path().join("file");
    write_file(&file, 10, 1);
    let out = run_copy("sync", &[], &src, &file);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("non-directory"), "{}", stderr(&out));
    assert_eq!(
        fs::read(&file).unwrap(),
        pattern(10, 1),
        "the file is untouched"
    );

    let out = ferry(&[
        "copy".as_ref(),
        file.as_os_str(),
        file.as_os_str(),
        t.path().join("nope").as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!t.path().join("nope").exists());

    // Same file onto itself.
    let out = run_copy("sync", &[], &file, &file);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("same file"), "{}", stderr(&out));
    assert_eq!(fs::read(&file).unwrap(), pattern(10, 1));
}

#[test]
fn bad_numbers_are_usage_errors() {
    let t = tempfile::tempdir().unwrap();
    for args in [
        vec!["copy", "--buffer-size", "1000", "a", "b"],
        vec!["copy", "--buffer-size", "12Q", "a", "b"],
        vec!["copy", "--queue-depth", "0", "a", "b"],
        vec!["copy", "--io", "bogus", "a", "b"],
        vec!["copy", "onlyone"],
    ] {
        let out = ferry(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
}

#[test]
fn unreadable_file_fails_alone_and_the_rest_is_copied() {
    let t = tempfile::tempdir().unwrap();
    // Root reads everything, so as root the copy runs as nobody over a world-readable tree.
    let uid = is_root().then_some(65534u32);
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..20 {
        write_file(&src.join(format!("ok{i}")), 3000 + i, i as u64);
    }
    let secret = src.join("secret");
    write_file(&secret, 100, 50);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    let out_dir = t.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    give_to_nobody(t.path(), &[&out_dir]);
    for io in backends() {
        let dst = out_dir.join(io);
        let a = copy_args(io, &[], &src, &dst);
        let out = ferry_with(&a, std::time::Duration::from_secs(60), uid);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("secret") && err.contains("Permission denied"),
            "{err}"
        );
        for i in 0..20 {
            assert!(files_equal(
                &src.join(format!("ok{i}")),
                &dst.join(format!("ok{i}"))
            ));
        }
        assert!(!dst.join("secret").exists());
        assert!(temp_files(&dst).is_empty());
    }
}

#[test]
fn json_report_counts_what_was_copied() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..10 {
        write_file(&src.join(format!("f{i}")), 1000, i);
    }
    std::os::unix::fs::symlink("f0", src.join("l")).unwrap();
    let dst = t.path().join("dst");
    let out = run_copy("auto", &["--json"], &src, &dst);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = report_line(&out);
    assert_eq!(v["files"], 10);
    assert_eq!(v["bytes"], 10_000);
    assert_eq!(v["symlinks"], 1);
    assert_eq!(v["dirs"], 1);
    assert_eq!(v["failed"], 0);
}

/// procfs reports size 0 for files that read as text: the copy reads them to their end, like
/// cp, instead of trusting the size and leaving an empty file. With --verify=full too.
#[test]
fn a_pseudo_file_whose_size_says_zero_is_copied_to_its_end() {
    let p = Path::new("/proc/version");
    let Ok(want) = fs::read(p) else {
        eprintln!("skipped: /proc/version is not readable here");
        return;
    };
    assert_eq!(fs::metadata(p).unwrap().len(), 0, "procfs reports 0 bytes");
    assert!(!want.is_empty());
    let t = tempfile::tempdir().unwrap();
    for io in backends() {
        for (i, extra) in [&[][..], &["--verify=full"][..], &["--fsync=file"][..]]
            .iter()
            .enumerate()
        {
            let dst = t.path().join(format!("{io}-{i}"));
            let out = run_copy(io, extra, p, &dst);
            assert!(out.status.success(), "{io} {extra:?}: {}", stderr(&out));
            assert_eq!(fs::read(&dst).unwrap(), want, "{io} {extra:?}");
        }
    }
    // A real empty file stays empty.
    let empty = t.path().join("empty");
    fs::write(&empty, b"").unwrap();
    let out = run_copy(backends()[0], &[], &empty, &t.path().join("empty2"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::metadata(t.path().join("empty2")).unwrap().len(), 0);
}

/// Every message of `ferry move` (option errors, bad input, per-file errors) carries the
/// command's own name, never `'ferry copy':` (the engine's name for its option checks).
#[test]
fn messages_name_the_command_that_was_run() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let dst = t.path().join("dst");
    let run = |args: &[&std::ffi::OsStr]| {
        let o = ferry(args);
        (o.status.code(), stderr(&o))
    };
    let bad: [Vec<&std::ffi::OsStr>; 4] = [
        vec!["move".as_ref(), "--verify".as_ref(), "none".as_ref()],
        vec!["move".as_ref(), "--preserve".as_ref(), "bogus".as_ref()],
        vec!["move".as_ref(), "--exclude".as_ref(), "a[".as_ref()],
        vec!["copy".as_ref(), "--exclude".as_ref(), "a[".as_ref()],
    ];
    for mut a in bad {
        let cmd = a[0].to_str().unwrap().to_string();
        a.extend([src.as_os_str(), dst.as_os_str()]);
        let (code, err) = run(&a);
        assert_eq!(code, Some(2), "{a:?}: {err}");
        assert!(err.starts_with(&format!("ferry {cmd}: ")), "{a:?}: {err}");
        assert!(!err.contains("'ferry"), "{a:?}: {err}");
    }
    let (code, err) = run(&[
        "move".as_ref(),
        t.path().join("none").as_os_str(),
        dst.as_os_str(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.starts_with("ferry move: stat '"), "{err}");
    assert!(err.contains("nothing was moved"), "{err}");
}

/// Names that are not UTF-8 or hold a newline are escaped in messages and JSON as in the
/// manifest (`\xHH`, `\\`), not shown as U+FFFD, and each error stays on one line.
#[test]
fn odd_names_are_escaped_in_messages_and_json() {
    use std::os::unix::ffi::OsStrExt;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    fs::create_dir(&src).unwrap();
    let names: [&[u8]; 2] = [b"bad\xffname", b"new\nline"];
    for n in names {
        let n = std::ffi::OsStr::from_bytes(n);
        fs::write(src.join(n), b"x").unwrap();
        // A non-empty directory where the file must go: the file fails, by name.
        fs::create_dir_all(dst.join(n).join("keep")).unwrap();
    }
    let mut into = src.clone().into_os_string();
    into.push("/.");
    let st = t.path().join("st");
    for json in [false, true] {
        let mut args: Vec<&std::ffi::OsStr> = vec!["copy".as_ref()];
        if json {
            args.push("--json".as_ref());
        }
        args.extend(["--state-dir".as_ref(), st.as_os_str()]);
        args.extend([into.as_os_str(), dst.as_os_str()]);
        let out = ferry(&args);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(!err.contains('\u{fffd}'), "{err}");
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("Is a directory"))
            .collect();
        assert_eq!(lines.len(), 2, "one line per error: {err}");
        assert!(lines.iter().any(|l| l.contains("bad\\xffname")), "{err}");
        assert!(lines.iter().any(|l| l.contains("new\\x0aline")), "{err}");
        if json {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let msgs: Vec<String> = stdout
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|v| v["event"] == "error")
                .map(|v| v["message"].as_str().unwrap().to_string())
                .collect();
            assert!(msgs.iter().any(|m| m.contains("bad\\xffname")), "{msgs:?}");
            assert!(!stdout.contains('\u{fffd}'), "{stdout}");
        }
    }
}
