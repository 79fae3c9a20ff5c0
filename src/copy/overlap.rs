//! Sources whose targets overlap (`ferry copy A/. B/. D`, `x/sub B/. D`): as with cp, the last
//! source wins per entry, and always the same one. An earlier source's entry is not copied at
//! all where a later source has an entry at the same target (both trees walk at once, so
//! copying both would leave a random winner), unless both are directories: those merge, and
//! the merged directory gets the last one's metadata once every tree is done with it.

use crate::filter::Filter;
use crate::meta;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The job's roots when some targets overlap; empty otherwise (then nothing is checked).
#[derive(Default)]
pub struct Overlaps {
    /// (source, target as the walk spells it, target made absolute) of every root, in order.
    roots: Vec<(PathBuf, PathBuf, PathBuf)>,
    /// Merged directories (absolute target) -> trees not yet done with them.
    open: Mutex<HashMap<PathBuf, usize>>,
}

/// Where a directory of the walk stands: its root, and the other roots that meet it.
#[derive(Clone, Debug, Default)]
pub struct Place {
    pub root: usize,
    /// Roots whose tree has a directory at this target, or whose target lies below it.
    pub others: Vec<usize>,
}

/// Whose metadata a finished directory gets.
pub enum MetaFrom {
    /// Its own source's.
    Own,
    /// Another tree still fills the merged directory: the last one to finish applies it.
    Later,
    /// The merged directory's winner (the last source with a directory there).
    Winner(PathBuf, libc::stat),
}

impl Overlaps {
    /// `roots`: (source, target) in command-line order.
    pub fn new(roots: &[(PathBuf, PathBuf)]) -> Overlaps {
        let abs: Vec<PathBuf> = roots
            .iter()
            .map(|(_, t)| crate::coord::checkpoint::absolute(t))
            .collect();
        let meet = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
        let any = (0..abs.len()).any(|i| (0..i).any(|j| meet(&abs[i], &abs[j])));
        if !any {
            return Overlaps::default();
        }
        Overlaps {
            roots: roots
                .iter()
                .zip(abs)
                .map(|((s, t), a)| (s.clone(), t.clone(), a))
                .collect(),
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// Whether root `i` shares its target with any other root (a move must not rename it
    /// whole: a later tree's entries would then be looked for where they no longer are).
    pub fn involves(&self, i: usize, filter: &Filter) -> bool {
        !self.is_empty() && !self.place_of_root(i, filter).others.is_empty()
    }

    /// Whether a later source's entry replaces root `i` itself (unless both are directories).
    pub fn root_replaced(&self, i: usize, is_dir: bool, filter: &Filter) -> bool {
        !self.is_empty()
            && (i + 1..self.roots.len())
                .filter_map(|j| self.entry_at(j, &self.roots[i].2, filter))
                .any(|(_, dir)| !(dir && is_dir))
    }

    /// `dst` (below root `i`'s target) as an absolute path.
    fn abs(&self, i: usize, dst: &Path) -> PathBuf {
        let (_, t, a) = &self.roots[i];
        match dst.strip_prefix(t) {
            Ok(rel) if !rel.as_os_str().is_empty() => a.join(rel),
            _ => a.clone(),
        }
    }

    /// Root `j`'s source entry that lands at `abs` (and its path below root j), if `abs` lies
    /// at or below j's target.
    fn source_at(&self, j: usize, abs: &Path) -> Option<(PathBuf, PathBuf)> {
        let (s, _, a) = &self.roots[j];
        let rel = abs.strip_prefix(a).ok()?;
        Some(if rel.as_os_str().is_empty() {
            (s.clone(), PathBuf::new())
        } else {
            (s.join(rel), rel.to_path_buf())
        })
    }

    /// Root `j`'s entry at `abs`, if it has one the filter keeps: (its path, is it a dir).
    fn entry_at(&self, j: usize, abs: &Path, filter: &Filter) -> Option<(PathBuf, bool)> {
        let (src, rel) = self.source_at(j, abs)?;
        let st = meta::lstat(&src).ok()?;
        let is_dir = meta::file_type(&st) == libc::S_IFDIR;
        (rel.as_os_str().is_empty() || filter.included(&rel, is_dir)).then_some((src, is_dir))
    }

    /// Of `candidates`, the roots that still meet the directory at `abs`.
    fn meeting(&self, candidates: &[usize], abs: &Path, filter: &Filter) -> Vec<usize> {
        candidates
            .iter()
            .copied()
            .filter(|&j| {
                let a = &self.roots[j].2;
                if a != abs && a.starts_with(abs) {
                    return true;
                }
                self.entry_at(j, abs, filter).is_some_and(|(_, dir)| dir)
            })
            .collect()
    }

    /// The place of root `i`'s own directory (or file).
    pub fn place_of_root(&self, i: usize, filter: &Filter) -> Place {
        if self.is_empty() {
            return Place::default();
        }
        let all: Vec<usize> = (0..self.roots.len()).filter(|&j| j != i).collect();
        Place {
            root: i,
            others: self.meeting(&all, &self.roots[i].2, filter),
        }
    }

    /// The root whose source and target these are (a directory task without a parent).
    pub fn root_index(&self, src: &Path, dst: &Path) -> Option<usize> {
        self.roots.iter().position(|(s, t, _)| s == src && t == dst)
    }

    /// The place of a subdirectory `dst` of a directory at `parent`.
    pub fn place_below(&self, parent: &Place, dst: &Path, filter: &Filter) -> Place {
        if parent.others.is_empty() {
            return Place {
                root: parent.root,
                others: Vec::new(),
            };
        }
        let abs = self.abs(parent.root, dst);
        Place {
            root: parent.root,
            others: self.meeting(&parent.others, &abs, filter),
        }
    }

    /// Whether a later source's entry replaces this tree's entry at `dst` (in a directory at
    /// `place`); not when both are directories: they merge.
    /// `name` in the destination directory `dir`: the path is only built when another
    /// source shares the place (the common case of one source pays no allocation per entry).
    pub fn replaced(
        &self,
        place: &Place,
        dir: &Path,
        name: &std::ffi::OsStr,
        is_dir: bool,
        filter: &Filter,
    ) -> bool {
        if place.others.is_empty() {
            return false;
        }
        let abs = self.abs(place.root, &dir.join(name));
        place
            .others
            .iter()
            .filter(|&&j| j > place.root)
            .filter_map(|&j| self.entry_at(j, &abs, filter))
            .any(|(_, dir)| !(dir && is_dir))
    }

    /// A directory at `place` is done: whose metadata it gets (a merged directory gets its
    /// winner's, applied by whichever tree finishes it last).
    pub fn meta_for(&self, place: &Place, dst: &Path) -> MetaFrom {
        if place.others.is_empty() {
            return MetaFrom::Own;
        }
        let abs = self.abs(place.root, dst);
        let mut members: Vec<usize> = place
            .others
            .iter()
            .copied()
            .filter(|&j| abs.starts_with(&self.roots[j].2))
            .collect();
        if members.is_empty() {
            return MetaFrom::Own;
        }
        members.push(place.root);
        {
            let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let left = g.entry(abs.clone()).or_insert(members.len());
            *left -= 1;
            if *left > 0 {
                return MetaFrom::Later;
            }
            g.remove(&abs);
        }
        let winner = members.iter().copied().max().expect("not empty");
        if winner == place.root {
            return MetaFrom::Own;
        }
        match self.source_at(winner, &abs) {
            Some((src, _)) => match meta::lstat(&src) {
                Ok(st) => MetaFrom::Winner(src, st),
                Err(_) => MetaFrom::Own,
            },
            None => MetaFrom::Own,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_overlapping_targets_are_checked() {
        let p = |s: &str| PathBuf::from(s);
        let apart = Overlaps::new(&[(p("/a"), p("/d/a")), (p("/b"), p("/d/b"))]);
        assert!(apart.is_empty());
        let merged = Overlaps::new(&[(p("/a/."), p("/d")), (p("/b/sub"), p("/d/sub"))]);
        assert!(!merged.is_empty());
        assert_eq!(
            merged.place_of_root(0, &Filter::new(&[]).unwrap()).others,
            vec![1]
        );
    }
}
