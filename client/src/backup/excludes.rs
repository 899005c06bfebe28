//! What to leave out of a backup.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};

/// Exclude rules of one backup.
#[derive(Debug, Clone, Default)]
pub struct Excludes {
    /// Patterns matched against an entry's name (patterns without `/`).
    names: Option<GlobSet>,
    /// Patterns matched against the whole absolute path (patterns with `/`).
    paths: Option<GlobSet>,
    /// A directory containing one of these names is left out entirely.
    pub if_present: Vec<String>,
    /// Do not descend into other filesystems.
    pub one_file_system: bool,
}

impl Excludes {
    /// Builds the rules from `--exclude`, `--exclude-file`, `--exclude-if-present`.
    pub fn new(
        patterns: &[String],
        files: &[PathBuf],
        if_present: &[String],
        one_file_system: bool,
    ) -> Result<Self> {
        let mut all: Vec<String> = patterns.to_vec();
        for f in files {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("exclude file {}", f.display()))?;
            all.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        let (mut n_names, mut n_paths) = (0, 0);
        for p in &all {
            let p = p.trim_end_matches('/');
            if p.contains('/') {
                paths.add(Glob::new(p).with_context(|| format!("exclude pattern {p:?}"))?);
                // `/a/b` also excludes everything below it.
                paths.add(
                    Glob::new(&format!("{p}/**"))
                        .with_context(|| format!("exclude pattern {p:?}"))?,
                );
                n_paths += 1;
            } else {
                names.add(Glob::new(p).with_context(|| format!("exclude pattern {p:?}"))?);
                n_names += 1;
            }
        }
        Ok(Self {
            names: if n_names > 0 {
                Some(names.build()?)
            } else {
                None
            },
            paths: if n_paths > 0 {
                Some(paths.build()?)
            } else {
                None
            },
            if_present: if_present.to_vec(),
            one_file_system,
        })
    }

    /// True if the entry `name` of directory `dir` is excluded. The path is
    /// joined only when a pattern needs it: this runs for every entry.
    pub fn excluded(&self, dir: &Path, name: &std::ffi::OsStr) -> bool {
        self.names.as_ref().is_some_and(|g| g.is_match(name))
            || self
                .paths
                .as_ref()
                .is_some_and(|g| g.is_match(dir.join(name)))
    }

    /// True if directory `dir` holds a marker file named by `--exclude-if-present`.
    pub fn marked(&self, dir: &Path) -> bool {
        self.if_present
            .iter()
            .any(|m| dir.join(m).symlink_metadata().is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn name_and_path_patterns() {
        let ex = Excludes::new(&["*.tmp".into(), "/data/cache".into()], &[], &[], false).unwrap();
        assert!(ex.excluded(Path::new("/x"), OsStr::new("a.tmp")));
        assert!(!ex.excluded(Path::new("/x"), OsStr::new("a.txt")));
        assert!(ex.excluded(Path::new("/data"), OsStr::new("cache")));
        assert!(ex.excluded(Path::new("/data/cache"), OsStr::new("x")));
        assert!(!ex.excluded(Path::new("/data"), OsStr::new("cached")));
        assert!(Excludes::new(&["[".into()], &[], &[], false).is_err());
    }
}
