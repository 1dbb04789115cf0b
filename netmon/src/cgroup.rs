//! cgroup v2 ids to paths and to the labels read from a path (unit, container, pod), and the
//! `cgroup:PATH` text ss prints.
//!
//! A cgroup v2 directory's inode number is its id (kernfs), so a walk of the cgroup2 mount maps
//! every id to its path below the mount; ss resolves ids the same way. An id the walk does not
//! know triggers a new walk, at most once per [`REFRESH`]: a storm of unknown ids (cgroups
//! created and removed faster than that) costs one walk a second, not one per event. Labels come
//! from the path alone, with no container runtime calls.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Least time between two walks of the tree triggered by unknown ids.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Most directories one walk records: far above real hierarchies, a bound on memory and time.
const MAX_DIRS: usize = 1 << 17;
/// Deeper than any real hierarchy: a guard against a loop, not a limit anyone meets.
const MAX_DEPTH: usize = 64;

/// What a cgroup path says about who runs in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    /// The path below the cgroup2 mount, as ss prints it (`/system.slice/nginx.service`).
    pub path: String,
    /// The innermost systemd unit (`*.service`, `*.scope`), `\xNN` escapes decoded.
    pub unit: Option<String>,
    /// A container id (64 hex digits) of docker, containerd (CRI), CRI-O or podman.
    pub container_id: Option<String>,
    /// A Kubernetes pod's UID, from its kubepods cgroup.
    pub pod_uid: Option<String>,
}

impl Labels {
    /// Labels of `path` (a path below the cgroup2 mount, `/` first).
    pub fn parse(path: &str) -> Self {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let unit = parts
            .iter()
            .rev()
            .find(|p| p.ends_with(".service") || p.ends_with(".scope"))
            .map(|p| unescape(p));
        let container_id = parts.iter().rev().find_map(|p| container_id(p));
        let kube = parts.iter().any(|p| p.starts_with("kubepods"));
        let pod_uid = kube
            .then(|| parts.iter().rev().find_map(|p| pod_uid(p)))
            .flatten();
        Self {
            path: path.to_owned(),
            unit,
            container_id,
            pod_uid,
        }
    }
}

/// systemd's unit name escaping: `\x2d` is `-` in a name whose dashes mean `/`.
fn unescape(s: &str) -> String {
    decode_escapes(s, "\\x", 2, 16)
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// `docker-ID.scope`, `cri-containerd-ID.scope`, `crio-ID.scope`, `libpod-ID.scope` (systemd
/// driver) or a bare `ID` (cgroupfs driver: `/docker/ID`, `/kubepods/burstable/podUID/ID`).
/// `crio-conmon-ID.scope` is CRI-O's monitor, not the container.
fn container_id(part: &str) -> Option<String> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    is_id(id).then(|| id.to_ascii_lowercase())
}

/// `kubepods-burstable-pod<UID with _>.slice` (systemd driver) or `pod<UID>` (cgroupfs).
fn pod_uid(part: &str) -> Option<String> {
    let name = part.strip_suffix(".slice").unwrap_or(part);
    let at = name.rfind("pod")?;
    if at > 0 && !name[..at].ends_with('-') {
        return None;
    }
    let uid = name[at + 3..].replace('_', "-");
    let ok = uid.len() == 36 && uid.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-');
    ok.then_some(uid)
}

/// Why an id has no labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unknown {
    /// The event carries no id (the task fallback attributes only the owner's own transitions).
    NoId,
    /// No cgroup2 file system is mounted here.
    NoMount,
    /// The id is not below the mount: the cgroup was removed, or is outside this cgroup
    /// namespace.
    NotFound,
}

impl Unknown {
    pub fn reason(self) -> &'static str {
        match self {
            Self::NoId => "no cgroup id: not in the owner's process",
            Self::NoMount => "no cgroup2 mount",
            Self::NotFound => "not below the cgroup2 mount (removed, or another cgroup namespace)",
        }
    }
}

/// The cgroup2 mount point in a /proc/self/mountinfo text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (mount, after) = l.split_once(" - ")?;
        if after.split_whitespace().next() != Some("cgroup2") {
            return None;
        }
        mount
            .split_whitespace()
            .nth(4)
            .map(|p| PathBuf::from(unoctal(p)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\NNN` octal.
fn unoctal(s: &str) -> String {
    decode_escapes(s, "\\", 3, 8)
}

/// Replaces each `marker` followed by `digits` digits in `radix` with that byte; anything
/// else, a marker without valid digits included, stays as it is.
fn decode_escapes(s: &str, marker: &str, digits: usize, radix: u32) -> String {
    let (b, m) = (s.as_bytes(), marker.as_bytes());
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let end = i + m.len() + digits;
        if b[i..].starts_with(m)
            && let Some(v) = b
                .get(i + m.len()..end)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u8::from_str_radix(d, radix).ok())
        {
            out.push(v);
            i = end;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The ids of one cgroup2 tree and their labels.
#[derive(Debug, Default)]
pub struct CgroupNames {
    root: Option<PathBuf>,
    known: HashMap<u64, Labels>,
    last_walk: Option<Instant>,
    /// Walks done (the first included).
    pub walks: u64,
}

impl CgroupNames {
    /// The cgroup2 mount from /proc/self/mountinfo (unified `/sys/fs/cgroup` or hybrid
    /// `/sys/fs/cgroup/unified` alike), walked once; empty if there is none.
    pub fn load() -> Self {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Self::at(cgroup2_mount(&info))
    }

    /// The tree under `root`, walked once now.
    pub fn at(root: Option<PathBuf>) -> Self {
        let mut names = Self {
            root,
            ..Self::default()
        };
        names.walk(Instant::now());
        names
    }

    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    fn walk(&mut self, now: Instant) {
        self.last_walk = Some(now);
        let Some(root) = self.root.clone() else {
            return;
        };
        self.walks += 1;
        self.known.clear();
        let mut stack = vec![(root, "/".to_owned(), 0usize)];
        while let Some((dir, rel, depth)) = stack.pop() {
            if self.known.len() >= MAX_DIRS {
                return;
            }
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            if depth < MAX_DEPTH {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let child = if rel == "/" {
                            format!("/{name}")
                        } else {
                            format!("{rel}/{name}")
                        };
                        stack.push((e.path(), child, depth + 1));
                    }
                }
            }
            let labels = Labels::parse(&rel);
            self.known.insert(meta.ino(), labels);
        }
    }

    /// The labels of cgroup `id`; an unknown id walks the tree again if the last walk is older
    /// than [`REFRESH`] at `now`.
    pub fn lookup(&mut self, id: u64, now: impl FnOnce() -> Instant) -> Result<&Labels, Unknown> {
        if id == 0 {
            return Err(Unknown::NoId);
        }
        if self.root.is_none() {
            return Err(Unknown::NoMount);
        }
        if !self.known.contains_key(&id) {
            let now = now();
            if self
                .last_walk
                .is_none_or(|t| now.saturating_duration_since(t) >= REFRESH)
            {
                self.walk(now);
            }
        }
        self.known.get(&id).ok_or(Unknown::NotFound)
    }

    /// The id of the cgroup at `path` below the mount (`/system.slice/x.service`).
    pub fn id_of(&self, path: &str) -> Result<u64, String> {
        let Some(root) = &self.root else {
            return Err(format!(
                "cgroup {path}: no cgroup2 file system is mounted (see /proc/self/mountinfo)"
            ));
        };
        let full = root.join(path.trim_start_matches('/'));
        fs::metadata(&full)
            .ok()
            .filter(|m| m.is_dir())
            .map(|m| m.ino())
            .ok_or_else(|| {
                format!(
                    "cgroup {path}: no such cgroup ({} does not exist); give a path below the \
                     cgroup2 mount, as `ss --cgroup` prints it",
                    full.display()
                )
            })
    }

    pub fn path(&self, id: u64) -> String {
        let mut s = String::new();
        self.write_path(id, &mut s);
        s
    }

    /// The path ss prints for `id`, appended to `out` (no allocation per row); an id the walk
    /// did not find prints as ss prints it, `unreachable:ID` in hex.
    pub fn write_path(&self, id: u64, out: &mut String) {
        match self.known.get(&id) {
            Some(l) => out.push_str(&l.path),
            None => {
                use std::fmt::Write as _;
                write!(out, "unreachable:{id:x}").ok();
            }
        }
    }

    /// Labels of `id` as the last walk found them (no new walk).
    pub fn get(&self, id: u64) -> Option<&Labels> {
        self.known.get(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn unknown_ids_print_as_ss() {
        let names = CgroupNames::default();
        assert_eq!(names.path(0x2a), "unreachable:2a");
    }

    #[test]
    fn units_are_the_innermost_service_or_scope_unescaped() {
        let l = Labels::parse("/system.slice/nginx.service");
        assert_eq!(l.unit.as_deref(), Some("nginx.service"));
        let l = Labels::parse("/netmon-test.slice/a\\x2db.service/worker");
        assert_eq!(l.unit.as_deref(), Some("a-b.service"));
        let l = Labels::parse("/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope");
        assert_eq!(l.unit.as_deref(), Some("x.scope"));
        let l = Labels::parse("/");
        assert_eq!((l.unit, l.container_id, l.pod_uid), (None, None, None));
        // A broken escape is kept as it is.
        assert_eq!(unescape("a\\xZZ\\x2"), "a\\xZZ\\x2");
    }

    #[test]
    fn container_ids_of_each_runtime_and_driver() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/kubepods.slice/crio-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/kubepods/burstable/pod0a1b/{}", ID.to_uppercase()),
        ] {
            assert_eq!(
                Labels::parse(&path).container_id.as_deref(),
                Some(ID),
                "{path}"
            );
        }
        for path in [
            format!("/system.slice/crio-conmon-{ID}.scope"),
            format!("/system.slice/docker-{}.scope", &ID[1..]),
            "/system.slice/docker.service".to_owned(),
        ] {
            assert_eq!(Labels::parse(&path).container_id, None, "{path}");
        }
    }

    #[test]
    fn pod_uids_from_both_cgroup_drivers() {
        let uid = "5e0b2b0c-8d3a-4a4e-9b1a-0c7c3f2d1e00";
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/\
             cri-containerd-{ID}.scope",
            uid.replace('-', "_")
        );
        let l = Labels::parse(&systemd);
        assert_eq!(l.pod_uid.as_deref(), Some(uid));
        assert_eq!(l.container_id.as_deref(), Some(ID));
        assert_eq!(l.unit, Some(format!("cri-containerd-{ID}.scope")));
        let cgroupfs = format!("/kubepods/besteffort/pod{uid}/{ID}");
        assert_eq!(Labels::parse(&cgroupfs).pod_uid.as_deref(), Some(uid));
        // Outside kubepods a `pod...` directory is not a pod.
        assert_eq!(Labels::parse(&format!("/x/pod{uid}")).pod_uid, None);
        assert_eq!(
            Labels::parse("/kubepods/burstable/podnotauid").pod_uid,
            None
        );
    }

    #[test]
    fn the_cgroup2_mount_comes_from_mountinfo_in_either_layout() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let spaced = "29 23 0:26 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(spaced), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }

    /// Any directory tree stands in for a cgroup2 mount: ids are directory inodes.
    #[test]
    fn unknown_ids_walk_again_at_most_once_per_refresh() {
        let dir = std::env::temp_dir().join(format!("netmon-cgroup-unit-{}", std::process::id()));
        let a = dir.join("a.slice/b.service");
        fs::create_dir_all(&a).unwrap();
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        let t0 = Instant::now();
        let mut names = CgroupNames::at(Some(dir.clone()));
        assert_eq!(names.walks, 1);
        let b = names.lookup(ino(&a), || t0).unwrap();
        assert_eq!(b.path, "/a.slice/b.service");
        assert_eq!(b.unit.as_deref(), Some("b.service"));
        assert_eq!(names.id_of("/a.slice/b.service"), Ok(ino(&a)));
        assert!(names.id_of("/nope").unwrap_err().contains("no such cgroup"));

        let late = dir.join(format!("docker-{ID}.scope"));
        fs::create_dir(&late).unwrap();
        // A storm of misses within REFRESH of the last walk: no new walk.
        for id in 1..1000 {
            assert_eq!(names.lookup(id, || t0), Err(Unknown::NotFound));
        }
        assert_eq!(names.walks, 1);
        // Once REFRESH passed, a miss walks again and finds the new cgroup.
        let later = t0 + 2 * REFRESH;
        let c = names.lookup(ino(&late), || later).unwrap();
        assert_eq!(c.container_id.as_deref(), Some(ID));
        assert_eq!(names.walks, 2);
        assert_eq!(names.lookup(0, || later), Err(Unknown::NoId));
        fs::remove_dir_all(&dir).unwrap();

        let mut none = CgroupNames::at(None);
        assert_eq!(none.lookup(5, || later), Err(Unknown::NoMount));
        assert!(none.id_of("/").unwrap_err().contains("no cgroup2"));
    }
}
