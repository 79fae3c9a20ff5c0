//! The metadata fixture (hard link groups, xattrs, a POSIX ACL, owners, setuid bits, a device
//! node, a 0000 file) and its comparer, shared by the local and the network metadata tests.

use super::*;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

pub fn set_xattr(p: &Path, name: &str, val: &[u8]) -> bool {
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and slice.
    unsafe { libc::lsetxattr(c(p).as_ptr(), n.as_ptr(), val.as_ptr().cast(), val.len(), 0) == 0 }
}

/// All xattrs of a path (not following links), sorted.
pub fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 65536];
    // SAFETY: buffer as large as its length says.
    let n = unsafe { libc::llistxattr(c(p).as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out: Vec<(String, Vec<u8>)> = names[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let cn = CString::new(name).unwrap();
            let mut v = vec![0u8; 65536];
            // SAFETY: as above.
            let k = unsafe {
                libc::lgetxattr(c(p).as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len())
            };
            v.truncate(k.max(0) as usize);
            (String::from_utf8_lossy(name).into_owned(), v)
        })
        .collect();
    out.sort();
    out
}

/// An access ACL in the kernel's xattr form: user::rw-, user:1234:r--, group::r--, mask::r--,
/// other::---.
pub fn acl_bytes() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 4, 1234),
        (0x04, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// Builds the fixture; returns whether user xattrs work on this filesystem.
pub fn build(root: &Path) -> bool {
    fs::create_dir_all(root.join("a/b")).unwrap();
    // Hard link groups: 3 names across directories, and a pair.
    write_file(&root.join("a/one"), 70_000, 1);
    fs::hard_link(root.join("a/one"), root.join("a/b/one-again")).unwrap();
    fs::hard_link(root.join("a/one"), root.join("third-name")).unwrap();
    write_file(&root.join("pair1"), 10, 2);
    fs::hard_link(root.join("pair1"), root.join("a/pair2")).unwrap();
    write_file(&root.join("single"), 1000, 3);
    let xattr_ok = set_xattr(&root.join("single"), "user.color", b"blue");
    if xattr_ok {
        set_xattr(&root.join("a"), "user.dir-note", b"a directory attribute");
        set_xattr(&root.join("a/one"), "user.big", &pattern(4000, 9));
    }
    write_file(&root.join("acl-file"), 5, 4);
    fs::set_permissions(root.join("acl-file"), fs::Permissions::from_mode(0o640)).unwrap();
    set_xattr(
        &root.join("acl-file"),
        "system.posix_acl_access",
        &acl_bytes(),
    );
    write_file(&root.join("suid"), 5, 5);
    if is_root() {
        // SAFETY: valid C string.
        unsafe { libc::chown(c(&root.join("suid")).as_ptr(), 1234, 5678) };
        set_xattr(&root.join("single"), "trusted.secret", b"root only");
        let dev = root.join("null-like");
        // SAFETY: valid C string; char device 1,3.
        assert_eq!(
            unsafe { libc::mknod(c(&dev).as_ptr(), libc::S_IFCHR | 0o640, libc::makedev(1, 3)) },
            0
        );
        write_file(&root.join("zero-mode"), 300, 6);
        fs::set_permissions(root.join("zero-mode"), fs::Permissions::from_mode(0o000)).unwrap();
        // SAFETY: valid C string.
        unsafe { libc::lchown(c(&root.join("a/b")).as_ptr(), 4321, 8765) };
    }
    fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    set_mtime(&root.join("a"), 1_500_000_000, 5);
    xattr_ok
}

pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(r.clone());
            }
            out.push(r);
        }
    }
    out.sort();
    out
}

/// Owner, type, mode, device numbers, xattrs, and hard link groups, on top of
/// assert_same_tree's content, mode and ns times.
pub fn assert_metadata_equal(a: &Path, b: &Path) {
    assert_same_tree(a, b);
    let mut groups_a: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    let mut groups_b: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    for rel in walk(a) {
        let (ma, mb) = (
            fs::symlink_metadata(a.join(&rel)).unwrap(),
            fs::symlink_metadata(b.join(&rel)).unwrap(),
        );
        assert_eq!(
            (ma.uid(), ma.gid()),
            (mb.uid(), mb.gid()),
            "owner of {rel:?}"
        );
        assert_eq!(ma.rdev(), mb.rdev(), "device numbers of {rel:?}");
        assert_eq!(
            xattrs(&a.join(&rel)),
            xattrs(&b.join(&rel)),
            "xattrs of {rel:?}"
        );
        if ma.is_file() && ma.nlink() > 1 {
            groups_a.entry(ma.ino()).or_default().push(rel.clone());
            groups_b.entry(mb.ino()).or_default().push(rel.clone());
        }
        if ma.is_file() {
            assert_eq!(ma.nlink(), mb.nlink(), "link count of {rel:?}");
        }
    }
    let mut ga: Vec<_> = groups_a.into_values().collect();
    let mut gb: Vec<_> = groups_b.into_values().collect();
    ga.iter_mut().for_each(|g| g.sort());
    gb.iter_mut().for_each(|g| g.sort());
    ga.sort();
    gb.sort();
    assert_eq!(ga, gb, "hard link groups");
}
