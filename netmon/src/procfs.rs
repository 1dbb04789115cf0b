//! Finds which process holds each socket, from one walk of /proc/*/fd (what `ss -p` does on
//! every run; netmon does it once, at start).

use std::{fs, path::Path};

use crate::{decode::Task, table::Owner};

/// Socket inode -> owner (the first process found holding it, with that fd), packed: an
/// entry is (inode, index of its process, fd), whose task is kept once, in a vector sorted
/// by inode. A machine with a million sockets has a million entries and a few hundred
/// processes, held through a seed: 12 bytes an entry, where a hash map of the same entries
/// took 27 MB at a million (its table doubles to 2^21 buckets of 13 bytes past 917k entries).
/// Lookups go through a table of where each range of inodes starts (socket inodes come from
/// one counter, so they are dense): a short binary search, not one over the million.
#[derive(Debug, Default)]
pub struct SocketOwners {
    /// (inode, task, fd), sorted by inode once [`SocketOwners::sealed`].
    by_inode: Vec<(u32, u32, u32)>,
    tasks: Vec<Task>,
    /// The first inode and the shift that maps an inode to its range.
    lo: u32,
    shift: u32,
    /// `starts[r]`: the first entry of range `r`; one more than the ranges.
    starts: Vec<u32>,
}

/// The fd of an owner found without one.
const NO_FD: u32 = u32::MAX;

/// At most this many ranges (256 KiB of starts): ~16 entries a range at a million.
const RANGES: u64 = 1 << 16;

impl SocketOwners {
    pub fn get(&self, inode: u32) -> Option<Owner> {
        let r = (inode.checked_sub(self.lo)? >> self.shift) as usize;
        let (&from, &to) = (self.starts.get(r)?, self.starts.get(r + 1)?);
        let range = &self.by_inode[from as usize..to as usize];
        let at = range.binary_search_by_key(&inode, |e| e.0).ok()?;
        let (_, task, fd) = range[at];
        Some(Owner {
            task: self.tasks[task as usize],
            fd: (fd != NO_FD).then_some(fd),
        })
    }

    pub fn len(&self) -> usize {
        self.by_inode.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_inode.is_empty()
    }

    fn add_task(&mut self, task: Task) -> u32 {
        self.tasks.push(task);
        u32::try_from(self.tasks.len() - 1).unwrap_or(u32::MAX)
    }

    /// Sorts what was found and indexes it: an inode held by several processes (a socket
    /// passed or inherited) keeps the first process found, with its lowest fd.
    fn sealed(mut self) -> Self {
        self.by_inode.sort_unstable();
        self.by_inode.dedup_by_key(|e| e.0);
        self.by_inode.shrink_to_fit();
        let (Some(first), Some(last)) = (self.by_inode.first(), self.by_inode.last()) else {
            return self;
        };
        self.lo = first.0;
        let span = u64::from(last.0 - first.0) + 1;
        while (span >> self.shift) >= RANGES {
            self.shift += 1;
        }
        let ranges = ((span - 1) >> self.shift) as usize + 1;
        self.starts = Vec::with_capacity(ranges + 1);
        for (i, e) in self.by_inode.iter().enumerate() {
            let r = ((e.0 - self.lo) >> self.shift) as usize;
            while self.starts.len() <= r {
                self.starts.push(i as u32);
            }
        }
        self.starts.push(self.by_inode.len() as u32);
        self
    }
}

impl FromIterator<(u32, Owner)> for SocketOwners {
    fn from_iter<I: IntoIterator<Item = (u32, Owner)>>(iter: I) -> Self {
        let mut owners = Self::default();
        for (inode, o) in iter {
            let task = owners.add_task(o.task);
            owners.by_inode.push((inode, task, o.fd.unwrap_or(NO_FD)));
        }
        owners.sealed()
    }
}

/// Socket inode -> owner (the first process found holding it, with that fd).
pub fn socket_owners() -> SocketOwners {
    socket_owners_in(Path::new("/proc"))
}

fn socket_owners_in(proc: &Path) -> SocketOwners {
    let mut owners = SocketOwners::default();
    let Ok(entries) = fs::read_dir(proc) else {
        return owners;
    };
    scan(&mut owners, entries);
    owners.sealed()
}

fn scan(owners: &mut SocketOwners, entries: fs::ReadDir) {
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let mut task = None;
        // Processes come and go during the walk: one that vanishes yields nothing.
        each_socket_fd(&dir.join("fd"), |fd_num, inode| {
            let task = match task {
                Some(t) => t,
                None => *task.insert(owners.add_task(read_task(&dir, pid))),
            };
            owners.by_inode.push((inode, task, fd_num));
        });
    }
}

/// Calls `f(fd, inode)` for each socket among the fds listed in `fd_dir` (a /proc/PID/fd).
///
/// Why not `fs::read_dir` + `fs::read_link`: the scan reads one link per socket on the machine
/// (a million at scale, the seed's longest part), and `read_link` of a full path makes the
/// kernel walk /proc/PID/fd/N from the root each time, with two path buffers allocated per
/// fd; `readlinkat` on the directory's own descriptor resolves one component into a stack
/// buffer.
fn each_socket_fd(fd_dir: &Path, mut f: impl FnMut(u32, u32)) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(fd_dir.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return;
    }
    // SAFETY: `fd` is an open directory descriptor; on success the stream owns it (closedir
    // closes it), on failure it is still ours to close.
    let dir = unsafe { libc::fdopendir(fd) };
    if dir.is_null() {
        // SAFETY: `fd` is open and owned here.
        unsafe { libc::close(fd) };
        return;
    }
    let mut link = [0u8; 64];
    loop {
        // SAFETY: `dir` is an open stream; the entry stays valid until the next readdir.
        let entry = unsafe { libc::readdir64(dir) };
        if entry.is_null() {
            break;
        }
        // SAFETY: `d_name` of a returned entry is a NUL-terminated name inside it.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
        let Some(fd_num) = std::str::from_utf8(name.to_bytes())
            .ok()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue; // "." and ".."
        };
        // SAFETY: `fd` stays open while `dir` is; `name` is NUL-terminated; `link` has the
        // room given.
        let n =
            unsafe { libc::readlinkat(fd, name.as_ptr(), link.as_mut_ptr().cast(), link.len()) };
        let Ok(n) = usize::try_from(n) else {
            continue; // closed meanwhile
        };
        // A target as long as the buffer may be cut: no socket link is ("socket:[4294967295]").
        if n < link.len()
            && let Some(inode) = socket_inode(&link[..n])
        {
            f(fd_num, inode);
        }
    }
    // SAFETY: `dir` is open and closed once.
    unsafe { libc::closedir(dir) };
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &[u8]) -> Option<u32> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn read_task(dir: &Path, pid: u32) -> Task {
    let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
    let uid = fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2)?.parse().ok() // effective uid
        })
        .unwrap_or(u32::MAX);
    Task::new(pid, pid, uid, comm.trim_end())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn parses_socket_links_only() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"pipe:[12345]"), None);
        assert_eq!(socket_inode(b"socket:[x]"), None);
    }

    /// The scan's map at a million sockets is held through a seed: an entry per socket, the
    /// task once per process.
    #[test]
    fn owners_take_12_bytes_a_socket_and_half_a_hash_map_of_the_same_entries() {
        let owner = |i: u32| Owner {
            task: Task::new(1000 + i % 200, 1000 + i % 200, 0, "holder"),
            fd: Some(3 + i),
        };
        // Inodes as a machine hands them out: from one counter, other files' in between.
        let inode = |i: u32| 40_000 + i * 3 + i % 7;
        let n = 1_000_000;
        let (packed, heap) = crate::heap::measure(|| {
            let mut o = SocketOwners::default();
            let tasks: Vec<u32> = (0..200).map(|i| o.add_task(owner(i).task)).collect();
            // The scan finds them process by process, not in inode order.
            for i in (0..n).map(|i| (i % 200) * (n / 200) + i / 200) {
                o.by_inode
                    .push((inode(i), tasks[(i % 200) as usize], 3 + i));
            }
            o.sealed()
        });
        let (_, map) = crate::heap::measure(|| {
            (0..n)
                .map(|i| (inode(i), (i % 200, 3 + i)))
                .collect::<rustc_hash::FxHashMap<u32, (u32, u32)>>()
        });
        for i in [0, 1, 777, 65_536, n - 1] {
            assert_eq!(packed.get(inode(i)), Some(owner(i)), "{i}");
            assert_eq!(packed.get(inode(i) + 1), None);
        }
        assert_eq!(packed.get(0), None);
        assert_eq!(packed.get(u32::MAX), None);
        assert!(heap.retained * 2 <= map.retained, "{heap:?} vs {map:?}");
        assert!(
            heap.retained <= 12 * 1_000_000 + (1 << 18) + 200 * 64,
            "{heap:?}"
        );
    }

    #[test]
    fn a_socket_held_twice_is_the_first_process_s_with_its_lowest_fd() {
        let task = |pid| Task::new(pid, pid, 0, "p");
        let o: SocketOwners = [
            (9, Owner::new(task(1))),
            (
                5,
                Owner {
                    task: task(1),
                    fd: Some(7),
                },
            ),
            (
                5,
                Owner {
                    task: task(2),
                    fd: Some(3),
                },
            ),
            (
                5,
                Owner {
                    task: task(1),
                    fd: Some(4),
                },
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(o.len(), 2);
        assert_eq!(o.get(9), Some(Owner::new(task(1))));
        // FromIterator adds a task per entry: the first, task(1) with fd 7, comes first.
        assert_eq!(o.get(5).map(|w| (w.task.pid, w.fd)), Some((1, Some(7))));
        assert_eq!(o.get(6), None);
        assert!(SocketOwners::default().get(5).is_none());
    }

    #[test]
    fn finds_a_socket_of_this_process_with_its_fd() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd() as u32;
        let inode = fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino() as u32;
        let owner = socket_owners().get(inode).unwrap();
        assert_eq!(owner.task.pid, std::process::id());
        assert_eq!(owner.fd, Some(fd));
        assert!(!owner.task.comm().is_empty());
    }
}
