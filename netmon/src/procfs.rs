//! Finds which process holds each socket, from one walk of /proc/*/fd (what `ss -p` does on
//! every run; netmon does it once, at start).

use std::{fs, path::Path};

use rustc_hash::FxHashMap;

use crate::{decode::Task, table::Owner};

/// Socket inode -> owner (the first process found holding it, with that fd), packed: an
/// entry is the fd and the index of its process, whose task is kept once. A machine with a
/// million sockets has a million entries and a few hundred processes, held through a seed:
/// this takes under a third of a map with the owner in each entry (measured at 100k in
/// `owners_take_a_third_of_a_map_of_whole_owners`).
#[derive(Debug, Default)]
pub struct SocketOwners {
    by_inode: FxHashMap<u32, (u32, u32)>,
    tasks: Vec<Task>,
}

/// The fd of an owner found without one.
const NO_FD: u32 = u32::MAX;

impl SocketOwners {
    pub fn get(&self, inode: u32) -> Option<Owner> {
        let &(task, fd) = self.by_inode.get(&inode)?;
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
}

impl FromIterator<(u32, Owner)> for SocketOwners {
    fn from_iter<I: IntoIterator<Item = (u32, Owner)>>(iter: I) -> Self {
        let mut owners = Self::default();
        for (inode, o) in iter {
            let task = owners.add_task(o.task);
            owners
                .by_inode
                .entry(inode)
                .or_insert((task, o.fd.unwrap_or(NO_FD)));
        }
        owners
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
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        // Processes come and go during the walk: skip any that vanish.
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let mut task = None;
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = socket_inode(target.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            let Some(fd_num) = fd.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let task = match task {
                Some(t) => t,
                None => *task.insert(owners.add_task(read_task(&dir, pid))),
            };
            owners.by_inode.entry(inode).or_insert((task, fd_num));
        }
    }
    owners
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
    fn owners_take_a_third_of_a_map_of_whole_owners() {
        let owner = |i: u32| Owner {
            task: Task::new(1000 + i % 200, 1000 + i % 200, 0, "holder"),
            fd: Some(3 + i),
        };
        let (packed, heap) = crate::heap::measure(|| {
            let mut o = SocketOwners::default();
            let tasks: Vec<u32> = (0..200).map(|i| o.add_task(owner(i).task)).collect();
            for i in 0..100_000 {
                o.by_inode.insert(i, (tasks[(i % 200) as usize], 3 + i));
            }
            o
        });
        let (_, whole) = crate::heap::measure(|| {
            (0..100_000)
                .map(|i| (i, owner(i)))
                .collect::<std::collections::HashMap<u32, Owner>>()
        });
        assert_eq!(packed.get(777), Some(owner(777)));
        assert!(heap.retained * 3 <= whole.retained, "{heap:?} vs {whole:?}");
        assert!(heap.retained / 100_000 <= 24, "{heap:?}");
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
