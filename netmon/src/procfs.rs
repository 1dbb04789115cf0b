//! Finds which process holds each socket, from one walk of /proc/*/fd (what `ss -p` does on
//! every run; netmon does it once, at start).

use std::{collections::HashMap, fs, path::Path};

use crate::{decode::Task, table::Owner};

/// Socket inode -> owner (the first process found holding it, with that fd).
pub fn socket_owners() -> HashMap<u32, Owner> {
    socket_owners_in(Path::new("/proc"))
}

fn socket_owners_in(proc: &Path) -> HashMap<u32, Owner> {
    let mut owners = HashMap::new();
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
            let task = *task.get_or_insert_with(|| read_task(&dir, pid));
            owners.entry(inode).or_insert(Owner {
                task,
                fd: Some(fd_num),
            });
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

    #[test]
    fn finds_a_socket_of_this_process_with_its_fd() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd() as u32;
        let inode = fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino() as u32;
        let owner = socket_owners()[&inode];
        assert_eq!(owner.task.pid, std::process::id());
        assert_eq!(owner.fd, Some(fd));
        assert!(!owner.task.comm().is_empty());
    }
}
