//! cgroup v2 ids to the paths `ss -e` prints (`cgroup:/system.slice/x.service`).
//!
//! A cgroup v2 directory's inode number is its id (kernfs), so one walk of the cgroup2 mount
//! maps every id to its path below the mount. ss resolves ids the same way (by file handles);
//! an id the walk did not find prints as ss prints it, `unreachable:ID` in hex.

use std::{collections::HashMap, fs, os::unix::fs::MetadataExt, path::Path};

#[derive(Debug, Default)]
pub struct CgroupNames {
    paths: HashMap<u64, String>,
}

impl CgroupNames {
    /// Walks the first cgroup2 mount in /proc/self/mounts; empty if there is none.
    pub fn load() -> Self {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&"cgroup2"))
            .and_then(|f| f.get(1).map(|p| p.replace("\\040", " ")));
        let mut names = Self::default();
        if let Some(root) = root {
            names.walk(Path::new(&root), "/".into(), 0);
        }
        names
    }

    fn walk(&mut self, dir: &Path, rel: String, depth: usize) {
        // Deeper than any real hierarchy: a guard against a loop, not a limit anyone meets.
        if depth > 64 {
            return;
        }
        let Ok(meta) = fs::metadata(dir) else { return };
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        self.paths.insert(meta.ino(), rel.clone());
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let name = e.file_name().to_string_lossy().into_owned();
                let child = if rel == "/" {
                    format!("/{name}")
                } else {
                    format!("{rel}/{name}")
                };
                self.walk(&e.path(), child, depth + 1);
            }
        }
    }

    pub fn path(&self, id: u64) -> String {
        let mut s = String::new();
        self.write_path(id, &mut s);
        s
    }

    /// [`CgroupNames::path`], appended to `out` (no allocation per row).
    pub fn write_path(&self, id: u64, out: &mut String) {
        match self.paths.get(&id) {
            Some(p) => out.push_str(p),
            None => {
                use std::fmt::Write as _;
                write!(out, "unreachable:{id:x}").ok();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_ids_print_as_ss() {
        let names = CgroupNames::default();
        assert_eq!(names.path(0x2a), "unreachable:2a");
    }
}
