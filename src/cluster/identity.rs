//! A disk proves it is the disk: `<disk>/.ferry-disk` names the cluster, set and disk it
//! belongs to, written once (`ferry disk init`, or `ferry rebalance --init-disks`). Commands
//! that read or write objects refuse a disk whose root is missing or whose identity is absent
//! or another's: an unmounted mount point is an empty directory of the root filesystem, and
//! a swapped drive is somebody else's data. A disk root is never created.

use super::topology::{Disk, DiskSet, SetState, Topology, disk_key};
use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The identity file in every disk's root (a dot name: never a bucket, never an object).
pub const IDENTITY_FILE: &str = ".ferry-disk";
const FORMAT: &str = "ferry-disk";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub format: String,
    pub version: u32,
    pub cluster: String,
    pub set: String,
    pub disk: String,
}

impl Identity {
    /// What the disk `d` of set `s` in topology `t` must say.
    pub fn of(t: &Topology, s: &DiskSet, d: &Disk) -> Identity {
        Identity {
            format: FORMAT.into(),
            version: 1,
            cluster: t.cluster.clone(),
            set: s.id.clone(),
            disk: d.id.clone(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "disk {}/{} of cluster '{}'",
            self.set, self.disk, self.cluster
        )
    }
}

/// The identity in `root`; None when there is none. Unreadable or malformed: an error.
pub fn read(root: &Path) -> Result<Option<Identity>, String> {
    let p = root.join(IDENTITY_FILE);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("'{}': not a ferry disk identity ({e})", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("read '{}': {e}", p.display())),
    }
}

/// Why disk `d` cannot be used, if so. `may_be_gone`: a missing root is expected (a removed
/// set's dead disk: its objects are reported lost), a present one must still prove itself.
fn problem(t: &Topology, s: &DiskSet, d: &Disk, may_be_gone: bool) -> Option<String> {
    let name = format!("disk {} ('{}')", disk_key(s, d), d.path.display());
    match std::fs::metadata(&d.path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_be_gone => return None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!(
                "{name}: its root is missing (not mounted?); ferry never creates a disk root"
            ));
        }
        Err(e) => return Some(format!("{name}: stat: {e}")),
        Ok(m) if !m.is_dir() => return Some(format!("{name}: not a directory")),
        Ok(_) => {}
    }
    let want = Identity::of(t, s, d);
    match read(&d.path) {
        Err(m) => Some(format!("{name}: {m}")),
        Ok(None) => Some(format!(
            "{name} has no identity file ({IDENTITY_FILE}): an unmounted mount point, or a disk \
             never initialized (run `ferry disk init --topology FILE` once for new disks)"
        )),
        Ok(Some(have)) if have != want => Some(format!(
            "{name} is {} (its {IDENTITY_FILE}), not {}: a swapped or wrong drive",
            have.describe(),
            want.describe()
        )),
        Ok(Some(_)) => None,
    }
}

/// Checks every disk of `t`; disks of removed sets, and those `may_be_gone` says, may be
/// missing. Err (a usage error naming `file`) lists what is wrong.
pub fn check(
    t: &Topology,
    file: &Path,
    may_be_gone: &dyn Fn(&DiskSet, &Disk) -> bool,
) -> Result<(), Error> {
    let mut bad = Vec::new();
    for (_, s, d) in t.disk_fields() {
        let gone_ok = s.state == SetState::Removed || may_be_gone(s, d);
        if let Some(m) = problem(t, s, d, gone_ok) {
            bad.push(m);
        }
    }
    refuse(file, bad)
}

fn refuse(file: &Path, bad: Vec<String>) -> Result<(), Error> {
    match bad.len() {
        0 => Ok(()),
        1 => Err(Error::usage(file, bad.concat())),
        n => Err(Error::usage(
            file,
            format!("{n} disks cannot be used:\n  {}", bad.join("\n  ")),
        )),
    }
}

/// Writes the identity of every disk of `t` that has none (`ferry disk init`). Nothing is
/// written unless every root exists and no disk holds another identity. Returns, per disk,
/// its name and whether this call wrote it.
pub fn init(t: &Topology, file: &Path) -> Result<Vec<(String, bool)>, Error> {
    let mut bad = Vec::new();
    let mut todo = Vec::new();
    for (_, s, d) in t.disk_fields() {
        if s.state == SetState::Removed && !d.path.exists() {
            continue; // a dead disk of a removed set: nothing to prove
        }
        match problem(t, s, d, false) {
            None => todo.push((disk_key(s, d), None)),
            Some(_) if matches!(read(&d.path), Ok(None)) && d.path.is_dir() => {
                todo.push((disk_key(s, d), Some((Identity::of(t, s, d), &d.path))));
            }
            Some(m) => bad.push(m),
        }
    }
    refuse(file, bad)?;
    let mut out = Vec::new();
    for (key, w) in todo {
        let wrote = match w {
            Some((id, root)) => write(&id, root).map_err(|e| Error::usage(file, e))?,
            None => false,
        };
        out.push((key, wrote));
    }
    Ok(out)
}

/// Writes `id` into `root` durably and only once (a link that fails if the name exists; a
/// racing writer of the same identity is fine, of another is refused). True when written.
fn write(id: &Identity, root: &Path) -> Result<bool, String> {
    let fin = root.join(IDENTITY_FILE);
    let tmp: PathBuf = root.join(format!(
        "{IDENTITY_FILE}.{}.tmp",
        crate::temp::Token::random().as_str()
    ));
    let body = serde_json::to_vec_pretty(id).expect("plain data serializes");
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&body).and_then(|_| f.sync_all()))
        .map_err(|e| format!("write '{}': {e}", tmp.display()));
    let linked = made.and_then(|_| match std::fs::hard_link(&tmp, &fin) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(format!("link '{}': {e}", fin.display())),
    });
    let _ = std::fs::remove_file(&tmp); // only ours: its name carries a fresh token
    let wrote = linked?;
    if !wrote && read(root)?.as_ref() != Some(id) {
        return Err(format!(
            "'{}' appeared meanwhile with another identity",
            fin.display()
        ));
    }
    crate::meta::fsync_dir(root).map_err(|e| e.to_string())?;
    Ok(wrote)
}

/// Creates the directories of `dir` below the disk root `root`, never the root itself (a
/// missing root is an unmounted disk: writing there would fill the root filesystem).
pub fn make_dirs_below(root: &Path, dir: &Path) -> Result<(), Error> {
    if !root.join(IDENTITY_FILE).is_file() {
        return Err(Error::usage(
            root,
            format!("the disk root has no {IDENTITY_FILE} (unmounted?): nothing is written there"),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::os("mkdir", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(root: &Path) -> Topology {
        let text = format!(
            r#"{{"generation":1,"cluster":"c1","pools":[{{"id":"p","sets":[{{"id":"s0",
            "state":"active","weight":1,"disks":[{{"id":"d0","path":"{0}/a"}},
            {{"id":"d1","path":"{0}/b"}}]}}]}}]}}"#,
            root.display()
        );
        Topology::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn init_writes_once_and_check_tells_missing_absent_and_foreign_disks() {
        let t = tempfile::tempdir().unwrap();
        let tp = topo(t.path());
        let f = Path::new("t.json");
        std::fs::create_dir(t.path().join("a")).unwrap();
        // A missing root: init writes nothing at all and names it.
        let e = init(&tp, f).unwrap_err().to_string();
        assert!(e.contains("s0/d1") && e.contains("missing"), "{e}");
        assert!(read(&t.path().join("a")).unwrap().is_none());
        std::fs::create_dir(t.path().join("b")).unwrap();
        let e = check(&tp, f, &|_, _| false).unwrap_err().to_string();
        assert!(e.contains("no identity file"), "{e}");
        let w = init(&tp, f).unwrap();
        assert_eq!(w, vec![("s0/d0".into(), true), ("s0/d1".into(), true)]);
        check(&tp, f, &|_, _| false).unwrap();
        assert!(!init(&tp, f).unwrap()[0].1, "written once");
        // Swapped drives: each holds the other's identity.
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::rename(&a, t.path().join("x")).unwrap();
        std::fs::rename(&b, &a).unwrap();
        std::fs::rename(t.path().join("x"), &b).unwrap();
        let e = check(&tp, f, &|_, _| false).unwrap_err().to_string();
        assert!(e.contains("2 disks") && e.contains("swapped"), "{e}");
        assert!(init(&tp, f).is_err(), "init never overwrites an identity");
        assert!(make_dirs_below(&t.path().join("gone"), &t.path().join("gone/bkt")).is_err());
        assert!(!t.path().join("gone").exists());
    }
}
