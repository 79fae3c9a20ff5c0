//! Filters, --dry-run, --fail-fast and --one-file-system.

mod common;
use common::*;
use std::fs;
use std::path::Path;

fn tree(root: &Path) {
    for d in ["src/a", "src/b", "build/x", "logs"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for (i, f) in [
        "src/a/m.c",
        "src/a/m.o",
        "src/b/n.o",
        "build/x/out.bin",
        "logs/keep.log",
        "logs/old.log",
        "top.log",
        "README",
    ]
    .iter()
    .enumerate()
    {
        write_file(&root.join(f), 1000 + i, i as u64);
    }
}

fn exists(root: &Path, rel: &str) -> bool {
    fs::symlink_metadata(root.join(rel)).is_ok()
}

#[test]
fn include_exclude_first_match_wins() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("s");
    tree(&src);
    let dst = t.path().join("d");
    let out = ferry(&[
        "copy".as_ref(),
        "--include".as_ref(),
        "keep.log".as_ref(),
        "--exclude".as_ref(),
        "*.log".as_ref(),
        "--exclude".as_ref(),
        "/build/".as_ref(),
        "--exclude".as_ref(),
        "src/**/*.o".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (rel, want) in [
        ("src/a/m.c", true),
        ("src/a/m.o", false),
        ("src/b/n.o", false),
        ("build", false),
        ("logs/keep.log", true),
        ("logs/old.log", false),
        ("top.log", false),
        ("README", true),
    ] {
        assert_eq!(exists(&dst, rel), want, "{rel}");
    }
    assert!(files_equal(&src.join("src/a/m.c"), &dst.join("src/a/m.c")));
    // Reversed order: the exclude comes first and wins.
    let dst2 = t.path().join("d2");
    let out = ferry(&[
        "copy".as_ref(),
        "--exclude".as_ref(),
        "*.log".as_ref(),
        "--include".as_ref(),
        "keep.log".as_ref(),
        src.as_os_str(),
        dst2.as_os_str(),
    ]);
    assert!(out.status.success());
    assert!(!exists(&dst2, "logs/keep.log"));
    let bad = ferry(&["copy", "--exclude", "[", "a", "b"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

#[test]
fn dry_run_counts_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("s");
    tree(&src);
    let dst = t.path().join("d");
    let out = ferry(&[
        "copy".as_ref(),
        "--dry-run".as_ref(),
        "--json".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = report_line(&out);
    assert_eq!(v["files"], 8);
    assert_eq!(v["bytes"], (0..8).map(|i| 1000 + i).sum::<u64>());
    assert!(!dst.exists(), "dry run wrote something");
    let out = ferry(&[
        "copy".as_ref(),
        "--dry-run".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("would copy 8 files"));
}

#[test]
fn fail_fast_stops_at_the_first_error() {
    let t = tempfile::tempdir().unwrap();
    let uid = is_root().then_some(65534u32);
    let src = t.path().join("s");
    fs::create_dir(&src).unwrap();
    for i in 0..3000 {
        write_file(&src.join(format!("f{i:04}")), 100, i);
    }
    use std::os::unix::fs::PermissionsExt;
    // Every tenth file is unreadable, so in any listing order an error comes early.
    for i in (0..3000).step_by(10) {
        fs::set_permissions(
            src.join(format!("f{i:04}")),
            fs::Permissions::from_mode(0o000),
        )
        .unwrap();
    }
    let out_dir = t.path().join("o");
    fs::create_dir(&out_dir).unwrap();
    give_to_nobody(t.path(), &[&out_dir]);
    let dst = out_dir.join("d");
    let a = [
        "copy".as_ref(),
        "--fail-fast".as_ref(),
        "--threads".as_ref(),
        "1".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ];
    let out = ferry_with(&a, std::time::Duration::from_secs(60), uid);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    let copied = fs::read_dir(&dst).map(|r| r.count()).unwrap_or(0);
    assert!(
        copied < 1000,
        "fail-fast went on: {copied} of 2700 readable files copied"
    );
    assert!(
        temp_files(&out_dir).is_empty(),
        "{:?}",
        temp_files(&out_dir)
    );
}

#[test]
fn one_file_system_does_not_enter_mount_points() {
    if !is_root() {
        eprintln!("SKIP: mounting a tmpfs needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("s");
    tree(&src);
    let mnt = src.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let Some(guard) = mount_tmpfs(&mnt, "8m") else {
        eprintln!("SKIP: cannot mount tmpfs here");
        return;
    };
    write_file(&mnt.join("other-fs-file"), 100, 1);
    let dst = t.path().join("d");
    let out = ferry(&[
        "copy".as_ref(),
        "-x".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    let dst_all = t.path().join("d-all");
    let out_all = ferry(&["copy".as_ref(), src.as_os_str(), dst_all.as_os_str()]);
    drop(guard);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out_all.status.success(), "{}", stderr(&out_all));
    assert!(
        dst.join("mnt").is_dir(),
        "the mount point itself is created"
    );
    assert!(!dst.join("mnt/other-fs-file").exists());
    assert!(dst.join("README").exists());
    assert!(dst_all.join("mnt/other-fs-file").exists());
}

/// Directory fds are budgeted from RLIMIT_NOFILE: under a low limit a wide tree (more
/// directories alive at once than the budget) still copies whole, without EMFILE.
#[test]
fn wide_tree_under_a_low_fd_limit() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("s");
    for d in 0..400 {
        for f in 0..3 {
            let p = src.join(format!("d{d:03}/sub/f{f}"));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            write_file(&p, 100 + d * 3 + f, (d * 3 + f) as u64);
        }
    }
    // And one flat directory: more files than the unnamed-temp budget (half the limit), so
    // reactors wait for the committer to give slots back.
    for f in 0..1500 {
        let p = src.join(format!("flat/f{f}"));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        write_file(&p, 64 + f, 5000 + f as u64);
    }
    let dst = t.path().join("d");
    let state = t.path().join("state");
    let cmd = format!(
        "ulimit -S -n 1024 && ulimit -H -n 1024 && exec '{BIN}' copy -q --state-dir '{}' '{}' '{}'",
        state.display(),
        src.display(),
        dst.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &cmd])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&src, &dst);
}

#[test]
fn dry_run_counts_hard_links_as_links_and_says_where_each_source_lands() {
    use std::os::unix::ffi::OsStrExt;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("s");
    fs::create_dir_all(src.join("sub")).unwrap();
    write_file(&src.join("f"), 1000, 1);
    fs::hard_link(src.join("f"), src.join("sub/g")).unwrap();
    write_file(&src.join("h"), 2000, 2);
    let odd = t.path().join(std::ffi::OsStr::from_bytes(b"odd\nna\xffme"));
    write_file(&odd, 10, 3);
    let dst = t.path().join("d");
    fs::create_dir(&dst).unwrap();
    let dry = |json: bool| {
        let mut a: Vec<&std::ffi::OsStr> = vec!["copy".as_ref(), "--dry-run".as_ref()];
        if json {
            a.push("--json".as_ref());
        }
        a.extend([src.as_os_str(), odd.as_os_str(), dst.as_os_str()]);
        let out = ferry(&a);
        assert!(out.status.success(), "{}", stderr(&out));
        out
    };
    let v = report_line(&dry(true));
    assert_eq!(
        fs::read_dir(&dst).unwrap().count(),
        0,
        "dry run wrote something"
    );
    // What the real copy reports.
    let real = t.path().join("r");
    fs::create_dir(&real).unwrap();
    let out = ferry(&[
        "copy".as_ref(),
        "--json".as_ref(),
        src.as_os_str(),
        odd.as_os_str(),
        real.as_os_str(),
    ]);
    let r = report_line(&out);
    for k in ["files", "hardlinks", "bytes", "dirs"] {
        assert_eq!(v[k], r[k], "{k}: dry {v} real {r}");
    }
    assert_eq!(v["files"], 3);
    assert_eq!(v["hardlinks"], 1);
    let shown = |p: &std::path::Path| ferry::error::shown(p);
    let targets = v["targets"].as_array().expect("targets in the JSON report");
    assert_eq!(targets.len(), 2, "{v}");
    assert_eq!(targets[0]["source"], shown(&src));
    assert_eq!(targets[0]["target"], shown(&dst.join("s")));
    assert_eq!(
        targets[1]["target"],
        shown(&dst.join(odd.file_name().unwrap()))
    );
    let text = String::from_utf8_lossy(&dry(false).stdout).into_owned();
    assert!(
        text.contains("would copy 3 files (3010 bytes), 1 hard links"),
        "{text}"
    );
    let line = format!(
        "dry run: '{}' -> '{}'",
        shown(&odd),
        shown(&dst.join(odd.file_name().unwrap()))
    );
    assert!(text.lines().any(|l| l == line), "{line} in {text}");
    assert!(text.contains("odd\\x0ana\\xffme"), "{text}");
}
