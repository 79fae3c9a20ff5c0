//! The cluster map: pools of disk sets, each set active, draining or removed. Loaded from JSON
//! and validated with errors that name the bad field (`pools[0].sets[2].weight: ...`).

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SetState {
    /// Owns data.
    Active,
    /// Owns nothing; its data leaves.
    Draining,
    /// Gone; whatever it held is lost unless its disks are still readable.
    Removed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub id: String,
    pub path: PathBuf,
    /// Topology v2: the node (agent) that serves this disk; placement ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSet {
    pub id: String,
    pub state: SetState,
    pub weight: f64,
    pub disks: Vec<Disk>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub id: String,
    pub sets: Vec<DiskSet>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The cluster's name, written into every disk's identity (a disk of another cluster is
    /// refused).
    #[serde(default = "default_cluster")]
    pub cluster: String,
    pub generation: u64,
    #[serde(default = "one")]
    pub replicas: u32,
    pub pools: Vec<Pool>,
}

fn one() -> u32 {
    1
}

fn default_cluster() -> String {
    "default".into()
}

/// Most sets and disks a topology may hold (placement builds tables over them).
pub const MAX_SETS: usize = 4096;
pub const MAX_DISKS_PER_SET: usize = 1024;
pub const MAX_ID_LEN: usize = 255;

/// A topology file that cannot be used, with the field and the reason.
#[derive(Debug)]
pub struct TopologyError {
    pub file: PathBuf,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for TopologyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "topology '{}': {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "topology '{}': {}: {}",
                self.file.display(),
                self.field,
                self.message
            )
        }
    }
}

impl std::error::Error for TopologyError {}

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let err = |field: String, message: String| TopologyError {
            file: path.to_path_buf(),
            field,
            message,
        };
        let text = std::fs::read(path).map_err(|e| err(String::new(), format!("read: {e}")))?;
        let t = Self::parse(&text).map_err(|(f, m)| err(f, m))?;
        // Disk paths as the filesystem sees them (symlinks, bind-like aliases) now.
        check_places(&t.disk_fields(), true).map_err(|(f, m)| err(f, m))?;
        Ok(t)
    }

    /// Parses and validates; the error is (field path, message).
    pub fn parse(text: &[u8]) -> Result<Topology, (String, String)> {
        let de = &mut serde_json::Deserializer::from_slice(text);
        let t: Topology = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            (path, e.into_inner().to_string())
        })?;
        t.validate()?;
        Ok(t)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: String, m: &str| Err((f, m.to_string()));
        check_id(&self.cluster, "cluster")?;
        if self.pools.is_empty() {
            return bad("pools".into(), "at least one pool is required");
        }
        let mut pool_ids = HashSet::new();
        let mut set_ids = HashSet::new();
        let mut sets = 0usize;
        for (pi, pool) in self.pools.iter().enumerate() {
            let pf = format!("pools[{pi}]");
            check_id(&pool.id, &format!("{pf}.id"))?;
            if !pool_ids.insert(pool.id.as_str()) {
                return bad(format!("{pf}.id"), "duplicate pool id");
            }
            for (si, set) in pool.sets.iter().enumerate() {
                let sf = format!("{pf}.sets[{si}]");
                check_id(&set.id, &format!("{sf}.id"))?;
                if !set_ids.insert(set.id.as_str()) {
                    return Err((format!("{sf}.id"), format!("duplicate set id '{}'", set.id)));
                }
                if !(set.weight.is_finite() && set.weight > 0.0) {
                    return Err((
                        format!("{sf}.weight"),
                        format!("must be a number > 0 (got {})", set.weight),
                    ));
                }
                if set.state == SetState::Active && set.disks.is_empty() {
                    return bad(
                        format!("{sf}.disks"),
                        "an active set needs at least one disk",
                    );
                }
                if set.disks.len() > MAX_DISKS_PER_SET {
                    return bad(format!("{sf}.disks"), "too many disks (at most 1024)");
                }
                check_disks(set, &sf)?;
                sets += 1;
            }
        }
        if sets > MAX_SETS {
            return bad("pools".into(), "too many sets (at most 4096)");
        }
        let active = self.active_sets().count();
        if active == 0 {
            return bad("pools".into(), "no active set: nothing could own data");
        }
        if self.replicas == 0 || self.replicas as usize > active {
            return Err((
                "replicas".into(),
                format!("must be between 1 and the number of active sets ({active})"),
            ));
        }
        check_places(&self.disk_fields(), false)
    }

    /// Every disk with its field (`pools[0].sets[1].disks[2]`), set and disk.
    pub fn disk_fields(&self) -> Vec<(String, &DiskSet, &Disk)> {
        let mut out = Vec::new();
        for (pi, pool) in self.pools.iter().enumerate() {
            for (si, set) in pool.sets.iter().enumerate() {
                for (di, d) in set.disks.iter().enumerate() {
                    out.push((format!("pools[{pi}].sets[{si}].disks[{di}]"), set, d));
                }
            }
        }
        out
    }

    pub fn sets(&self) -> impl Iterator<Item = &DiskSet> {
        self.pools.iter().flat_map(|p| p.sets.iter())
    }

    pub fn active_sets(&self) -> impl Iterator<Item = &DiskSet> {
        self.sets().filter(|s| s.state == SetState::Active)
    }

    pub fn set(&self, id: &str) -> Option<&DiskSet> {
        self.sets().find(|s| s.id == id)
    }
}

/// One pool `p` of active sets of weight 1, each `(set id, [(disk id, path)])`, validated like
/// a parsed file: the topology the unit and integration tests build by the dozen.
#[doc(hidden)]
pub fn uniform(
    generation: u64,
    sets: Vec<(String, Vec<(String, PathBuf)>)>,
) -> Result<Topology, (String, String)> {
    let sets = sets
        .into_iter()
        .map(|(id, disks)| DiskSet {
            id,
            state: SetState::Active,
            weight: 1.0,
            disks: disks
                .into_iter()
                .map(|(id, path)| Disk {
                    id,
                    path,
                    node: None,
                })
                .collect(),
        })
        .collect();
    let t = Topology {
        cluster: default_cluster(),
        generation,
        replicas: 1,
        pools: vec![Pool {
            id: "p".into(),
            sets,
        }],
    };
    t.validate()?;
    Ok(t)
}

/// Sets `names`, each of one disk `d0` at `root/<name>`.
#[cfg(test)]
pub(crate) fn one_disk_sets(root: &Path, generation: u64, names: &[&str]) -> Topology {
    let sets = names
        .iter()
        .map(|s| (s.to_string(), vec![("d0".into(), root.join(s))]))
        .collect();
    uniform(generation, sets).unwrap()
}

/// A disk's name across the cluster: disk ids are unique only within their set.
pub fn disk_key(set: &DiskSet, d: &Disk) -> String {
    format!("{}/{}", set.id, d.id)
}

/// Disk ids unique within the set; paths absolute and not empty.
fn check_disks(set: &DiskSet, sf: &str) -> Result<(), (String, String)> {
    let mut ids = HashSet::new();
    for (di, d) in set.disks.iter().enumerate() {
        let df = format!("{sf}.disks[{di}]");
        check_id(&d.id, &format!("{df}.id"))?;
        if !ids.insert(d.id.as_str()) {
            return Err((
                format!("{df}.id"),
                format!("duplicate disk id '{}' in set '{}'", d.id, set.id),
            ));
        }
        if d.path.as_os_str().is_empty() {
            return Err((format!("{df}.path"), "must not be empty".into()));
        }
        if !d.path.is_absolute() {
            return Err((
                format!("{df}.path"),
                format!(
                    "must be an absolute path (got '{}': a relative one would mean another \
                     directory from every working directory)",
                    d.path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Where a disk path points: resolved through symlinks where it exists (`resolve`), else
/// cleaned of `.`, `..` and repeated slashes.
fn place_of(p: &Path, resolve: bool) -> PathBuf {
    if resolve && let Ok(c) = p.canonicalize() {
        return c;
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// No two disks at one place, and none inside another (its objects would be read as the
/// outer disk's): each such pair loses objects (a move onto itself, then the source deleted).
/// `resolve`: follow symlinks of paths that exist (else by the text of the paths only).
pub fn check_places(
    disks: &[(String, &DiskSet, &Disk)],
    resolve: bool,
) -> Result<(), (String, String)> {
    let places: Vec<PathBuf> = disks
        .iter()
        .map(|(_, _, d)| place_of(&d.path, resolve))
        .collect();
    // Sorted by components, a path's descendants follow it at once: neighbours suffice.
    let mut order: Vec<usize> = (0..places.len()).collect();
    order.sort_by(|&a, &b| places[a].cmp(&places[b]).then(a.cmp(&b)));
    for w in order.windows(2) {
        let (i, j) = (w[0].min(w[1]), w[0].max(w[1]));
        let (pi, pj) = (&places[i], &places[j]);
        let how = if pi == pj {
            "the same directory as"
        } else if pj.starts_with(pi) {
            "inside"
        } else if pi.starts_with(pj) {
            "the parent directory of"
        } else {
            continue;
        };
        let (fi, fj) = (&disks[i].0, &disks[j].0);
        let resolved = if pi == pj && disks[i].2.path != disks[j].2.path {
            format!(", both are '{}'", pi.display())
        } else {
            String::new()
        };
        return Err((
            format!("{fj}.path"),
            format!(
                "'{}' is {how} {fi}.path ('{}'{resolved}): two disks must be two directories",
                disks[j].2.path.display(),
                disks[i].2.path.display(),
            ),
        ));
    }
    Ok(())
}

/// Two topologies of one cluster (a rebalance's OLD and NEW): a directory that is a disk in
/// both must be the same disk (set and disk id), and no disk may lie inside another.
pub fn check_across(old: (&Topology, &Path), new: (&Topology, &Path)) -> Result<(), String> {
    if old.0.cluster != new.0.cluster {
        return Err(format!(
            "cluster: '{}' in '{}' but '{}' in '{}': two topologies of one cluster",
            old.0.cluster,
            old.1.display(),
            new.0.cluster,
            new.1.display()
        ));
    }
    let mut all = Vec::new();
    for (t, file) in [old, new] {
        for (f, s, d) in t.disk_fields() {
            all.push((place_of(&d.path, true), disk_key(s, d), f, file, &d.path));
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    for w in all.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let how = if a.0 == b.0 && a.1 != b.1 {
            "the same directory as"
        } else if b.0 != a.0 && b.0.starts_with(&a.0) {
            "inside"
        } else {
            continue;
        };
        return Err(format!(
            "{}.path in '{}' ('{}', disk {}) is {how} {}.path in '{}' ('{}', disk {}): \
             one directory cannot be two disks",
            b.2,
            b.3.display(),
            b.4.display(),
            b.1,
            a.2,
            a.3.display(),
            a.4.display(),
            a.1
        ));
    }
    Ok(())
}

fn check_id(id: &str, field: &str) -> Result<(), (String, String)> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err((field.into(), "must be 1 to 255 bytes".into()));
    }
    if id.contains('/') {
        return Err((field.into(), "must not contain '/'".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{ "generation": 7, "replicas": 1, "pools": [ { "id": "pool0", "sets": [
        { "id": "set0", "state": "active", "weight": 1.0,
          "disks": [ { "id": "d0", "path": "/srv/d0" }, { "id": "d1", "path": "/srv/d1" } ] } ] } ] }"#;

    fn err_of(s: &str) -> (String, String) {
        Topology::parse(s.as_bytes()).unwrap_err()
    }

    #[test]
    fn uniform_builds_what_the_same_file_parses_to() {
        let text = r#"{"generation":3,"pools":[{"id":"p","sets":[
            {"id":"a","state":"active","weight":1,"disks":[{"id":"d0","path":"/r/a"}]},
            {"id":"b","state":"active","weight":1,"disks":[{"id":"d0","path":"/r/b"}]}]}]}"#;
        let parsed = Topology::parse(text.as_bytes()).unwrap();
        let built = one_disk_sets(Path::new("/r"), 3, &["a", "b"]);
        let json = |t: &Topology| serde_json::to_value(t).unwrap();
        assert_eq!(json(&built), json(&parsed));
        let set = |p: &str| ("a".to_string(), vec![("d0".to_string(), PathBuf::from(p))]);
        let dup = vec![set("/r/a"), set("/r/b")];
        assert_eq!(uniform(1, dup).unwrap_err().0, "pools[0].sets[1].id");
    }

    #[test]
    fn the_documented_example_parses() {
        let t = Topology::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(t.generation, 7);
        assert_eq!(t.active_sets().count(), 1);
    }

    #[test]
    fn errors_name_the_bad_field() {
        let (f, m) = err_of(&GOOD.replace("\"weight\": 1.0", "\"weight\": 0"));
        assert_eq!(f, "pools[0].sets[0].weight", "{m}");
        let (f, _) = err_of(&GOOD.replace("\"generation\": 7", "\"generation\": -1"));
        assert_eq!(f, "generation");
        let (f, _) = err_of(&GOOD.replace("\"active\"", "\"sleeping\""));
        assert_eq!(f, "pools[0].sets[0].state");
        let (f, m) = err_of(&GOOD.replace("\"d1\"", "\"d0\""));
        assert_eq!(f, "pools[0].sets[0].disks[1].id");
        assert!(m.contains("duplicate"));
        let (f, _) = err_of(&GOOD.replace("\"replicas\": 1", "\"replicas\": 2"));
        assert_eq!(f, "replicas");
        let (f, _) = err_of(&GOOD.replace("\"active\"", "\"draining\""));
        assert_eq!(f, "pools");
        let (f, _) =
            err_of(&GOOD.replace("\"path\": \"/srv/d0\"", "\"path\": \"/srv/d0\", \"x\": 1"));
        assert_eq!(f, "pools[0].sets[0].disks[0].x");
        assert!(Topology::parse(b"{").is_err());
    }

    #[test]
    fn disk_ids_are_per_set_and_paths_must_be_absolute_and_distinct() {
        let two = GOOD.replace(
            "] } ] } ] }",
            r#"] }, { "id": "set1", "state": "active", "weight": 1.0,
            "disks": [ { "id": "d0", "path": "/srv/e0" } ] } ] } ] }"#,
        );
        let t = Topology::parse(two.as_bytes()).expect("d0 in two sets");
        let keys: Vec<String> = t
            .disk_fields()
            .iter()
            .map(|(_, s, d)| disk_key(s, d))
            .collect();
        assert_eq!(keys, ["set0/d0", "set0/d1", "set1/d0"]);
        let (f, m) = err_of(&GOOD.replace("\"/srv/d1\"", "\"srv/d1\""));
        assert_eq!(f, "pools[0].sets[0].disks[1].path");
        assert!(m.contains("absolute"), "{m}");
        let (f, m) = err_of(&two.replace("/srv/e0", "/srv/./d0/"));
        assert_eq!(f, "pools[0].sets[1].disks[0].path", "{m}");
        assert!(m.contains("pools[0].sets[0].disks[0].path"), "{m}");
        let (f, m) = err_of(&two.replace("/srv/e0", "/srv/d1/sub"));
        assert_eq!(f, "pools[0].sets[1].disks[0].path", "{m}");
        assert!(m.contains("inside pools[0].sets[0].disks[1].path"), "{m}");
    }

    #[test]
    fn one_directory_must_be_one_disk_across_old_and_new() {
        let old = Topology::parse(GOOD.as_bytes()).unwrap();
        let same = Topology::parse(
            GOOD.replace("\"generation\": 7", "\"generation\": 8")
                .as_bytes(),
        )
        .unwrap();
        let (a, b) = (Path::new("old.json"), Path::new("new.json"));
        check_across((&old, a), (&same, b)).expect("the same disks");
        let renamed = Topology::parse(GOOD.replace("\"d1\"", "\"d9\"").as_bytes()).unwrap();
        let m = check_across((&old, a), (&renamed, b)).unwrap_err();
        assert!(m.contains("set0/d9") && m.contains("set0/d1"), "{m}");
    }
}
