//! Temp files a killed agent left on its disks. A PUT and a received move stream into
//! `.<key>.ferry-<token>.tmp` beside the object and rename it when durable; kill -9 in
//! between leaves the temp behind, and nothing else would ever remove it (every writer picks
//! a new random token). No object can have that shape (keys of it are refused), and the
//! node's disks are this agent's alone (their identity checked, the node's member key
//! claimed once), so such a file last written before this process started belongs to no
//! live writer: it goes, once, in the background after the first object layer is built.
//! A temp this process writes is always newer; should the wall clock step back, the worst is
//! one of them removed while written, whose PUT or move then fails and is retried: nothing
//! committed is ever touched.

use crate::cluster::store::{looks_temp, walk_bucket_files};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Removes, on a background thread at a low priority, the temps older than `before` on each
/// disk of `disks` (`set/disk`, path), saying per disk how many went.
pub fn orphans(node: &str, disks: Vec<(String, PathBuf)>, before: SystemTime) {
    let (node, who) = (node.to_string(), node.to_string());
    let spawned = std::thread::Builder::new()
        .name("ferry-sweep".into())
        .spawn(move || {
            crate::coord::background::lower_this_thread();
            for (id, path) in disks {
                let (gone, failed) = sweep_disk(&path, before);
                if gone > 0 || failed > 0 {
                    eprintln!(
                        "ferry agent {node}: disk {id} ({}): removed {gone} temp files a \
                         killed run left ({failed} could not be removed)",
                        path.display()
                    );
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("ferry agent {who}: temp sweep thread: {e} (temps a killed run left stay)");
    }
}

/// (removed, failed) under `disk`: the store's temps below its buckets (`walk_bucket_files`:
/// not ferry's own `.ferry-*` dirs, where multipart uploads in progress keep their parts).
pub fn sweep_disk(disk: &Path, before: SystemTime) -> (u64, u64) {
    let (mut gone, mut failed) = (0, 0);
    let mut errors = Vec::new(); // unreadable or removed meanwhile: the object layer says so itself
    walk_bucket_files(disk, &mut errors, &mut |_, _, e| {
        let old = || {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|m| m < before)
        };
        if !looks_temp(e.file_name().as_bytes()) || !old() {
            return;
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => gone += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => failed += 1,
        }
    });
    (gone, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_temps_older_than_the_start_go_and_never_an_object_or_an_upload() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path().join("bkt/a/b");
        std::fs::create_dir_all(&b).unwrap();
        let tok = crate::temp::Token::random();
        let old_tmp = crate::temp::temp_name(&b.join("k1"), &tok);
        let object = b.join("k1");
        let look_alike = b.join(".k1.ferry-xyz.tmp"); // not 16 hex digits: no temp shape
        let upload = d.path().join(".ferry-s3/uploads/u1");
        std::fs::create_dir_all(&upload).unwrap();
        let part = crate::temp::temp_name(&upload.join("p1"), &tok);
        for p in [&old_tmp, &object, &look_alike, &part] {
            std::fs::write(p, b"x").unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        let start = SystemTime::now();
        std::thread::sleep(Duration::from_millis(20));
        let new_tmp = crate::temp::temp_name(&b.join("k2"), &tok);
        std::fs::write(&new_tmp, b"y").unwrap();
        assert_eq!(sweep_disk(d.path(), start), (1, 0));
        assert!(!old_tmp.exists(), "a temp older than the start stays");
        for p in [&object, &look_alike, &part, &new_tmp] {
            assert!(p.exists(), "{} went", p.display());
        }
        assert_eq!(sweep_disk(d.path(), start), (0, 0));
    }
}
