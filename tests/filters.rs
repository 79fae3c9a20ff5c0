//! Include/exclude rules and -x as a user sees them: the same as rsync's, and honoured by
//! `ferry move` on its one-rename fast path too.

mod common;
use common::*;
use std::fs;
use std::path::Path;

fn out_text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tree(root: &Path) {
    for d in [
        "keep",
        "logs",
        "dir/deeper",
        "build",
        "x/build",
        "y/cache",
        "src/a/b",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for (i, f) in [
        "a.txt",
        "keep/b.log",
        "logs/c.log",
        "dir/deeper/d.log",
        "dir/deeper/e.txt",
        "dir/f.log",
        "build/o",
        "x/build/o",
        "cache",
        "y/cache/z",
        "src/a/b/m.o",
        "src/m.o",
        "m.o",
    ]
    .iter()
    .enumerate()
    {
        write_file(&root.join(f), 100 + i, i as u64);
    }
}

#[test]
fn move_on_one_filesystem_honours_exclude_and_include() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src);
    let dst = t.path().join("dst");
    let out = ferry(&[
        "move".as_ref(),
        "--include".as_ref(),
        "b.log".as_ref(),
        "--exclude".as_ref(),
        "*.log".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !out_text(&out).contains("moved by rename"),
        "{}",
        out_text(&out)
    );
    for kept in ["logs/c.log", "dir/deeper/d.log", "dir/f.log"] {
        assert!(
            src.join(kept).exists(),
            "{kept}: excluded, stays in the source"
        );
        assert!(!dst.join(kept).exists(), "{kept}: excluded, not moved");
    }
    for moved in ["a.txt", "keep/b.log", "dir/deeper/e.txt", "x/build/o"] {
        assert!(dst.join(moved).exists(), "{moved}: moved");
        assert!(!src.join(moved).exists(), "{moved}: gone from the source");
    }
    // Include rules alone keep nothing back: the whole tree still moves by one rename.
    let src2 = t.path().join("src2");
    tree(&src2);
    let dst2 = t.path().join("dst2");
    let out = ferry(&[
        "move".as_ref(),
        "--include".as_ref(),
        "*.log".as_ref(),
        src2.as_os_str(),
        dst2.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        out_text(&out).contains("1 moved by rename"),
        "{}",
        out_text(&out)
    );
    assert!(!src2.exists() && dst2.join("dir/deeper/d.log").exists());
}

#[test]
fn move_one_file_system_leaves_a_mounted_filesystem_where_it_is() {
    if !is_root() {
        eprintln!("SKIP move -x: needs root to mount a tmpfs");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src);
    let mnt = src.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let Some(_guard) = mount_tmpfs(&mnt, "4m") else {
        eprintln!("SKIP move -x: mount -t tmpfs failed here");
        return;
    };
    write_file(&mnt.join("other-fs"), 1000, 9);
    let dst = t.path().join("dst");
    let out = ferry(&[
        "move".as_ref(),
        "-x".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    // The mount point stays with its filesystem (not an error); everything else moved.
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        mnt.join("other-fs").exists(),
        "the other filesystem's file stays"
    );
    assert!(
        !dst.join("mnt/other-fs").exists(),
        "-x does not enter the mount"
    );
    assert!(dst.join("mnt").is_dir(), "the mount point is created empty");
    assert!(dst.join("dir/deeper/d.log").exists(), "{}", stderr(&out));
    assert!(!src.join("dir/deeper/d.log").exists());
    assert!(
        !out_text(&out).contains("moved by rename"),
        "{}",
        out_text(&out)
    );
}

/// Copies `tree` with `rules` and returns which of its files arrived.
fn copied_with(t: &Path, name: &str, rules: &[&str]) -> Vec<String> {
    let src = t.join(format!("{name}-src"));
    tree(&src);
    let dst = t.join(format!("{name}-dst"));
    let mut args: Vec<&std::ffi::OsStr> = vec!["copy".as_ref()];
    args.extend(rules.iter().map(std::ffi::OsStr::new));
    args.extend([src.as_os_str(), dst.as_os_str()]);
    let out = ferry(&args);
    assert!(out.status.success(), "{rules:?}: {}", stderr(&out));
    let mut got = Vec::new();
    let mut stack = vec![dst.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(&dst).unwrap().to_owned();
                got.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    got.sort();
    got
}

#[test]
fn exclude_rules_match_like_rsync() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let has = |got: &[String], f: &str| got.iter().any(|g| g == f);
    // Unanchored with a slash: matches the end of the path, at any depth.
    let got = copied_with(t, "tail", &["--exclude", "deeper/*.log"]);
    assert!(!has(&got, "dir/deeper/d.log"), "{got:?}");
    assert!(
        has(&got, "dir/deeper/e.txt") && has(&got, "dir/f.log"),
        "{got:?}"
    );
    // '*' stays within one name: "dir/*.log" is not "dir/deeper/d.log".
    let got = copied_with(t, "star", &["--exclude", "dir/*.log"]);
    assert!(
        !has(&got, "dir/f.log") && has(&got, "dir/deeper/d.log"),
        "{got:?}"
    );
    // A leading '/' anchors at the source root.
    let got = copied_with(t, "anchor", &["--exclude", "/build/"]);
    assert!(!has(&got, "build/o") && has(&got, "x/build/o"), "{got:?}");
    let got = copied_with(t, "anchor2", &["--exclude", "/m.o"]);
    assert!(!has(&got, "m.o") && has(&got, "src/m.o"), "{got:?}");
    // A trailing '/' matches directories only.
    let got = copied_with(t, "dironly", &["--exclude", "cache/"]);
    assert!(has(&got, "cache") && !has(&got, "y/cache/z"), "{got:?}");
    // No slash: the name at any depth; '**' crosses directories.
    let got = copied_with(t, "name", &["--exclude", "*.log"]);
    assert!(!got.iter().any(|g| g.ends_with(".log")), "{got:?}");
    let got = copied_with(t, "dstar", &["--exclude", "src/**/*.o"]);
    assert!(!has(&got, "src/a/b/m.o") && has(&got, "m.o"), "{got:?}");
    // First match wins, in command-line order.
    let got = copied_with(t, "order", &["--include", "b.log", "--exclude", "*.log"]);
    assert!(
        has(&got, "keep/b.log") && !has(&got, "logs/c.log"),
        "{got:?}"
    );
}
