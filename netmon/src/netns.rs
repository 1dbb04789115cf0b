//! Finds network namespaces (the caller's, a process's, every one on the machine) and dumps
//! the TCP sockets of one.

use std::{
    collections::BTreeSet,
    fs::File,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::sock_diag::{self, Cancel, DiagError, DiagSock, Families};

/// An open network namespace: the file keeps it alive while we use it.
#[derive(Debug)]
pub struct Netns {
    pub inum: u32,
    file: File,
}

impl Netns {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let inum = file.metadata()?.ino() as u32;
        Ok(Self { inum, file })
    }

    /// The calling thread's namespace.
    pub fn current() -> io::Result<Self> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// A namespace fd received from elsewhere (a client's SCM_RIGHTS); refused unless it is a
    /// network namespace.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> io::Result<Self> {
        if !crate::peer::is_netns(&fd) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a network namespace",
            ));
        }
        let file = File::from(fd);
        let inum = file.metadata()?.ino() as u32;
        Ok(Self { inum, file })
    }

    /// The open namespace file (for `setns`).
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn of_pid(pid: i32) -> io::Result<Self> {
        Self::open(&Path::new("/proc").join(pid.to_string()).join("ns/net"))
    }

    /// Every TCP socket in this namespace, in the states ss lists, with the optional
    /// attributes in `ext` (bits of [`crate::diag_ext::want`]).
    pub fn dump(&self, ext: u8) -> Result<Vec<DiagSock>, DiagError> {
        self.dump_cancellable(ext, &Cancel::default())
    }

    /// [`Netns::dump`], stopped between two datagrams once `cancel` is set.
    pub fn dump_cancellable(&self, ext: u8, cancel: &Cancel) -> Result<Vec<DiagSock>, DiagError> {
        let (families, states) = (Families::ALL, sock_diag::SS_STATES);
        if current_inum().ok() == Some(self.inum) {
            sock_diag::dump_tcp_cancellable(families, states, ext, cancel)
        } else {
            sock_diag::dump_tcp_in_netns(&self.file, families, states, ext, cancel)
        }
    }

    /// Every TCP socket of the namespace, with the optional attributes in `ext`, in batches
    /// of `size` to `emit` ([`sock_diag::dump_tcp_batched`]).
    pub fn dump_batched(
        &self,
        ext: u8,
        bytecode: &[u8],
        cancel: &Cancel,
        size: usize,
        emit: sock_diag::Emit,
    ) -> Result<(), DiagError> {
        let (families, states) = (Families::ALL, sock_diag::SS_STATES);
        let dump =
            || sock_diag::dump_tcp_batched(families, states, ext, bytecode, cancel, size, emit);
        if current_inum().ok() == Some(self.inum) {
            dump()
        } else {
            sock_diag::in_netns(&self.file, dump)
        }
    }
}

/// Moves the calling thread into the namespace `ip netns` calls `name` (/run/netns/NAME; a
/// name with a `/` is taken as a path). Needs CAP_SYS_ADMIN. Call it before other threads
/// start: they keep the namespace they had.
pub fn enter_named(name: &str) -> io::Result<()> {
    let path = if name.contains('/') {
        PathBuf::from(name)
    } else {
        Path::new("/run/netns").join(name)
    };
    let ns = Netns::open(&path)?;
    // SAFETY: a valid namespace fd; setns changes only this thread's namespace.
    if unsafe {
        libc::setns(
            std::os::fd::AsRawFd::as_raw_fd(&ns.file),
            libc::CLONE_NEWNET,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn current_inum() -> io::Result<u32> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino() as u32)
}

/// Every namespace on the machine that can be reached: those processes live in, those
/// `ip netns` pins (/run/netns), and those held open by a process's fd (`net:[inode]`), once
/// each, held open together. Prefer [`each`], which holds one at a time.
pub fn all() -> Vec<Netns> {
    let mut found = Vec::new();
    each(|_, ns| found.extend(ns.ok()));
    found
}

/// Calls `f` with every reachable namespace (see [`all`]) in turn, or with why it could not
/// be opened; each is closed before the next is opened, so that their number is not bounded
/// by the open-files limit. Processes that exit while we look are skipped.
pub fn each(mut f: impl FnMut(u32, io::Result<Netns>)) {
    let mut seen = BTreeSet::new();
    for path in candidates() {
        // Stat first: cheaper than opening, and most processes share a namespace.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let inum = meta.ino() as u32;
        if !seen.insert(inum) {
            continue;
        }
        match Netns::open(&path) {
            // Its process exited meanwhile: nothing to report.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                seen.remove(&inum);
            }
            opened => f(inum, opened),
        }
    }
}

/// Namespace `inum`, opened from the first place it is found, or `None` if it is not
/// reachable. It stops there: a namespace a process lives in or `ip netns` pins is found
/// without reading a single fd, where [`each`] reads every fd of every process (a million on
/// a host with a million sockets, seconds of work).
pub fn find(inum: u32) -> Option<io::Result<Netns>> {
    for path in candidates() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.ino() as u32 != inum {
            continue;
        }
        match Netns::open(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            opened => return Some(opened),
        }
    }
    None
}

/// Where namespaces can be opened, cheapest first: every process's own, those `ip netns`
/// pins, then those held by an fd (`net:[inode]`), read lazily.
fn candidates() -> impl Iterator<Item = PathBuf> {
    let pids: Vec<PathBuf> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    let pinned = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let own: Vec<PathBuf> = pids.iter().map(|p| p.join("ns/net")).collect();
    let held = pids.into_iter().flat_map(|p| {
        std::fs::read_dir(p.join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|l| l.as_os_str().as_encoded_bytes().starts_with(b"net:["))
            })
            .map(|fd| fd.path())
    });
    own.into_iter().chain(pinned).chain(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_is_among_all() {
        let me = current_inum().unwrap();
        assert!(all().iter().any(|ns| ns.inum == me));
        assert_eq!(Netns::current().unwrap().inum, me);
        assert_eq!(Netns::of_pid(std::process::id() as i32).unwrap().inum, me);
        assert_eq!(find(me).unwrap().unwrap().inum, me);
        // No namespace has inode 1.
        assert!(find(1).is_none());
    }
}
