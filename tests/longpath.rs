//! Paths far beyond PATH_MAX copy (cp -a and rsync fail here): a 50-level tree of 100-byte
//! names, built and checked with *at() calls only.

mod common;
use common::*;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const LEVELS: usize = 50;

fn name(i: usize) -> CString {
    CString::new(format!("{i:0>100}")).unwrap()
}

fn open_at(dir: &OwnedFd, n: &CString) -> OwnedFd {
    // SAFETY: valid fd and C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            n.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    assert!(fd >= 0, "openat {n:?}: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn open_root(p: &std::path::Path) -> OwnedFd {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    assert!(fd >= 0);
    // SAFETY: fresh fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn read_at(dir: &OwnedFd, n: &str) -> Vec<u8> {
    let c = CString::new(n).unwrap();
    // SAFETY: valid fd and C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    assert!(fd >= 0, "open {n}: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fd.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut v).unwrap();
    v
}

/// Builds the 50-level tree under `src` (a new directory); returns the leaf file's bytes.
fn build_deep(src: &std::path::Path) -> Vec<u8> {
    std::fs::create_dir(src).unwrap();
    let mut dir = open_root(src);
    for i in 0..LEVELS {
        let n = name(i);
        // SAFETY: valid fd and C string.
        assert_eq!(
            unsafe { libc::mkdirat(dir.as_raw_fd(), n.as_ptr(), 0o755) },
            0
        );
        dir = open_at(&dir, &n);
    }
    let content = pattern(300_000, 77);
    let leaf = CString::new("leaf.bin").unwrap();
    // SAFETY: valid fd and C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            leaf.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
            0o640,
        )
    };
    assert!(fd >= 0);
    // SAFETY: fresh fd.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    std::io::Write::write_all(&mut f, &content).unwrap();
    drop(f);
    let (target, lnk) = (
        CString::new("leaf.bin").unwrap(),
        CString::new("lnk").unwrap(),
    );
    // SAFETY: valid fd and C strings.
    assert_eq!(
        unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), lnk.as_ptr()) },
        0
    );
    let total = src.as_os_str().len() + LEVELS * 101 + 9;
    assert!(total > 4096, "the fixture must exceed PATH_MAX ({total})");
    content
}

/// The deepest directory of a `build_deep` tree, opened with *at() calls.
fn open_deepest(root: &std::path::Path) -> OwnedFd {
    let mut d = open_root(root);
    for i in 0..LEVELS {
        d = open_at(&d, &name(i));
    }
    d
}

#[test]
fn trees_deeper_than_path_max_copy_completely() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let content = build_deep(&src);
    let (leaf, lnk) = (
        CString::new("leaf.bin").unwrap(),
        CString::new("lnk").unwrap(),
    );

    for io in backends() {
        let dst = t.path().join(format!("dst-{io}"));
        let out = ferry(&[
            "copy".as_ref(),
            "--io".as_ref(),
            io.as_ref(),
            src.as_os_str(),
            dst.as_os_str(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let d = open_deepest(&dst);
        assert_eq!(read_at(&d, "leaf.bin"), content, "deep file content");
        let mut buf = [0u8; 64];
        // SAFETY: valid fd, C string and buffer.
        let n = unsafe {
            libc::readlinkat(
                d.as_raw_fd(),
                lnk.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(&buf[..n.max(0) as usize], b"leaf.bin");
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, C string and out-pointer.
        assert_eq!(
            unsafe { libc::fstatat(d.as_raw_fd(), leaf.as_ptr(), &mut st, 0) },
            0
        );
        assert_eq!(st.st_mode & 0o7777, 0o640);
    }
    // tempfile's cleanup cannot remove paths this long; rm -rf can.
    let _ = std::process::Command::new("rm")
        .arg("-rf")
        .arg(t.path())
        .status();
}

#[test]
fn verify_and_manifests_check_trees_deeper_than_path_max() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_deep(&src);
    let (dst, m) = (t.path().join("dst"), t.path().join("m.txt"));
    let out = ferry(&[
        "copy".as_ref(),
        "--manifest".as_ref(),
        m.as_os_str(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let out = ferry(&["verify".as_ref(), src.as_os_str(), dst.as_os_str()]);
    assert!(out.status.success(), "{}{}", text(&out), stderr(&out));
    assert!(text(&out).contains("verified 1 files"), "{}", text(&out));
    let args = [
        "verify".as_ref(),
        "--manifest".as_ref(),
        m.as_os_str(),
        dst.as_os_str(),
    ];
    let out = ferry(&args);
    assert!(out.status.success(), "{}{}", text(&out), stderr(&out));
    assert!(text(&out).contains("verified 1 files"), "{}", text(&out));
    // A change at the bottom is found by both, under its full relative path.
    let d = open_deepest(&dst);
    let leaf = CString::new("leaf.bin").unwrap();
    // SAFETY: valid fd and C string.
    let fd = unsafe {
        libc::openat(
            d.as_raw_fd(),
            leaf.as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    assert!(fd >= 0);
    // SAFETY: fresh fd.
    let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    std::os::unix::fs::FileExt::write_all_at(&f, b"X", 1000).unwrap();
    drop(f);
    let deep_name = format!(
        "{}/leaf.bin: content differs",
        name(LEVELS - 1).to_str().unwrap()
    );
    for out in [
        ferry(&["verify".as_ref(), src.as_os_str(), dst.as_os_str()]),
        ferry(&args),
    ] {
        assert_eq!(out.status.code(), Some(1), "{}{}", text(&out), stderr(&out));
        assert!(text(&out).contains(&deep_name), "{}", text(&out));
    }
    let _ = std::process::Command::new("rm")
        .arg("-rf")
        .arg(t.path())
        .status();
}
