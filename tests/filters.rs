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
    for d in ["keep", "logs", "dir/deeper", "build", "x/build"] {
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
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP move -x: mount -t tmpfs failed here");
        return;
    }
    struct Umount<'a>(&'a Path);
    impl Drop for Umount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Umount(&mnt);
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
