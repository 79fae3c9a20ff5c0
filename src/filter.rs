//! rsync-style include/exclude rules: tried in command-line order, the first that matches
//! decides; nothing matching means included. A pattern without '/' (or `**`) matches the name at
//! any depth; with one it matches the end of the path relative to the source root, at a
//! directory boundary (a '/' at the start anchors it at the root instead); a trailing '/'
//! matches directories only. `*` stays within one name, `**` crosses '/'.

use globset::{GlobBuilder, GlobMatcher};
use std::path::Path;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub enum Rule {
    Include(String),
    Exclude(String),
}

struct Compiled {
    include: bool,
    glob: GlobMatcher,
    dir_only: bool,
    whole_path: bool,
}

pub struct Filter {
    rules: Vec<Compiled>,
    /// Cluster copy: only files whose path partition is in the set.
    partitions: Option<crate::partset::PartSet>,
}

/// Most rules accepted (each is tried per entry).
pub const MAX_RULES: usize = 1024;

impl Filter {
    pub fn new(rules: &[Rule]) -> Result<Filter, String> {
        if rules.len() > MAX_RULES {
            return Err(format!("at most {MAX_RULES} --include/--exclude rules"));
        }
        let mut out = Vec::with_capacity(rules.len());
        for r in rules {
            let (include, pat) = match r {
                Rule::Include(p) => (true, p.as_str()),
                Rule::Exclude(p) => (false, p.as_str()),
            };
            if pat.is_empty() {
                return Err("empty --include/--exclude pattern".into());
            }
            let dir_only = pat.ends_with('/');
            let p = pat.trim_end_matches('/');
            let whole_path = p.contains('/') || p.contains("**");
            let anchored = p.starts_with('/');
            let p = p.trim_start_matches('/');
            // Unanchored: the pattern may match at any directory boundary, i.e. the end of
            // the path ("**/" also matches no leading directory at all).
            let p = if whole_path && !anchored && !p.starts_with("**") {
                format!("**/{p}")
            } else {
                p.to_string()
            };
            let glob = GlobBuilder::new(&p)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("bad pattern '{pat}': {e}"))?
                .compile_matcher();
            out.push(Compiled {
                include,
                glob,
                dir_only,
                whole_path,
            });
        }
        Ok(Filter {
            rules: out,
            partitions: None,
        })
    }

    /// Keeps only files whose path partition is in `set` (directories are all kept).
    pub fn with_partitions(mut self, set: Option<crate::partset::PartSet>) -> Filter {
        self.partitions = set;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.partitions.is_none()
    }

    /// Whether any rule could leave an entry out (include rules alone never do).
    pub fn excludes_any(&self) -> bool {
        self.rules.iter().any(|r| !r.include)
    }

    /// Whether the entry at `rel` (relative to its source root) is copied.
    pub fn included(&self, rel: &Path, is_dir: bool) -> bool {
        if !is_dir
            && let Some(set) = &self.partitions
            && !set.contains(crate::partset::path_partition(rel))
        {
            return false;
        }
        let name = Path::new(rel.file_name().unwrap_or(rel.as_os_str()));
        for r in &self.rules {
            if r.dir_only && !is_dir {
                continue;
            }
            let subject = if r.whole_path { rel } else { name };
            if r.glob.is_match(subject) {
                return r.include;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(rules: &[(&str, bool)]) -> Filter {
        let r: Vec<Rule> = rules
            .iter()
            .map(|(p, inc)| {
                if *inc {
                    Rule::Include(p.to_string())
                } else {
                    Rule::Exclude(p.to_string())
                }
            })
            .collect();
        Filter::new(&r).unwrap()
    }

    #[test]
    fn first_match_wins_like_rsync() {
        let x = f(&[("keep.log", true), ("*.log", false)]);
        assert!(x.included(Path::new("a/keep.log"), false));
        assert!(!x.included(Path::new("a/b/other.log"), false));
        assert!(x.included(Path::new("a/b/other.txt"), false));
    }

    #[test]
    fn anchored_dir_only_and_double_star() {
        let x = f(&[("/build/", false), ("cache/", false), ("src/**/*.o", false)]);
        assert!(!x.included(Path::new("build"), true));
        assert!(
            x.included(Path::new("x/build"), true),
            "anchored at the root only"
        );
        assert!(
            x.included(Path::new("cache"), false),
            "dir-only pattern skips files"
        );
        assert!(!x.included(Path::new("deep/cache"), true));
        assert!(!x.included(Path::new("src/a/b/m.o"), false));
        assert!(x.included(Path::new("m.o"), false));
        assert!(Filter::new(&[Rule::Exclude("[".into())]).is_err());
    }

    #[test]
    fn unanchored_patterns_with_a_slash_match_the_end_of_the_path() {
        let x = f(&[("deeper/*.log", false), ("a/**/z", false)]);
        assert!(!x.included(Path::new("deeper/d.log"), false));
        assert!(!x.included(Path::new("dir/deeper/d.log"), false));
        assert!(!x.included(Path::new("p/q/deeper/d.log"), false));
        assert!(
            x.included(Path::new("dir/undeeper/d.log"), false),
            "whole names only"
        );
        assert!(
            x.included(Path::new("deeper/sub/d.log"), false),
            "'*' stays in one name"
        );
        assert!(!x.included(Path::new("top/a/b/c/z"), false));
        let y = f(&[("/dir/deeper/", false)]);
        assert!(!y.included(Path::new("dir/deeper"), true));
        assert!(y.included(Path::new("x/dir/deeper"), true), "anchored");
    }
}
