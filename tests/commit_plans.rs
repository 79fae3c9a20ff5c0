//! Each destination filesystem is recognised (ext4 with and without a journal, XFS) and gets
//! its batches (standard on every kind measured), `--commit-batch` overrides the choice, and every choice (and `--temp named`) still copies everything exactly. Needs root,
//! losetup and mkfs.ext4 (mkfs.xfs for the XFS case); skips with a reason otherwise.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A filesystem made on a loop device over a file, mounted; unmounted and detached on drop.
struct LoopFs {
    mnt: PathBuf,
    dev: String,
}

impl LoopFs {
    fn make(dir: &Path, name: &str, mkfs: &[&str]) -> Option<LoopFs> {
        let img = dir.join(format!("{name}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(320 << 20)
            .unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&img)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("skipped: losetup: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut fs = LoopFs {
            mnt: dir.join(name),
            dev,
        };
        let made = Command::new(mkfs[0])
            .args(&mkfs[1..])
            .arg(&fs.dev)
            .output()
            .unwrap();
        assert!(made.status.success(), "{mkfs:?}: {}", stderr(&made));
        std::fs::create_dir_all(&fs.mnt).unwrap();
        let m = Command::new("mount")
            .arg(&fs.dev)
            .arg(&fs.mnt)
            .output()
            .unwrap();
        if !m.status.success() {
            eprintln!("skipped {name}: mount: {}", stderr(&m));
            fs.mnt = PathBuf::new(); // nothing to unmount
            return None;
        }
        Some(fs)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if !self.mnt.as_os_str().is_empty() {
            let _ = Command::new("umount").arg(&self.mnt).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// `ferry copy --json ARGS src dst`: the report's commit lines, after checking the copy.
fn copy_and_plans(src: &Path, dst: &Path, args: &[&str]) -> Vec<String> {
    let mut all: Vec<&std::ffi::OsStr> = vec!["copy".as_ref(), "--json".as_ref()];
    all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
    all.push(src.as_os_str());
    all.push(dst.as_os_str());
    let out = ferry(&all);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    assert_same_tree(src, dst);
    assert!(temp_files(dst).is_empty());
    let r = report_line(&out);
    r["commit"]
        .as_array()
        .expect("the report lists the commit plans")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn batches_are_chosen_per_filesystem_and_the_override_wins() {
    if !is_root() || !have("losetup") || !have("mkfs.ext4") {
        eprintln!("skipped: needs root, losetup and mkfs.ext4");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_tree(&src);
    let mut cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("ext4j", vec!["mkfs.ext4", "-q", "-F"], "ext4, standard"),
        (
            "ext4nj",
            vec!["mkfs.ext4", "-q", "-F", "-O", "^has_journal"],
            "ext4 without a journal, standard",
        ),
    ];
    if have("mkfs.xfs") {
        cases.push(("xfs", vec!["mkfs.xfs", "-q", "-f"], "xfs, standard"));
    } else {
        eprintln!("xfs case skipped: no mkfs.xfs");
    }
    for (name, mkfs, expected) in cases {
        let Some(fs) = LoopFs::make(t.path(), name, &mkfs) else {
            return;
        };
        let plans = copy_and_plans(&src, &fs.mnt.join("auto"), &[]);
        assert_eq!(plans.len(), 1, "{plans:?}");
        assert!(
            plans[0].ends_with(&format!("{expected} batches")),
            "{name}: {plans:?}"
        );
        // The override, both ways, and named temp files: still exact copies.
        let flip = if expected.ends_with("wide") {
            "standard"
        } else {
            "wide"
        };
        let plans = copy_and_plans(&src, &fs.mnt.join("over"), &["--commit-batch", flip]);
        assert!(
            plans[0].ends_with(&format!(", {flip} batches")),
            "{name}: {plans:?}"
        );
        let plans = copy_and_plans(&src, &fs.mnt.join("named"), &["--temp", "named"]);
        assert!(
            plans[0].ends_with(&format!("{expected} batches")),
            "{name}: {plans:?}"
        );
    }
}
