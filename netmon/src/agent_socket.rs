//! The agent's Unix socket on disk: a directory checked before use, a lock that keeps a second
//! agent out, the socket created with its mode, and removed on exit only if it is still ours.
//!
//! Root creates files here in a directory other users may try to prepare for it, so nothing is
//! followed: the directory is opened with `O_NOFOLLOW` and must be root's and not writable by
//! others (unless sticky, like /tmp); a symlink or any other file at the socket path is
//! refused, not removed; the socket gets its mode from the umask at `bind()` and its group with
//! `lchown`, so no `chmod`/`chown` ever goes through a path an attacker could swap.

use std::{
    ffi::CString,
    fs::File,
    io::{Read, Seek, Write},
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::{
            ffi::OsStrExt,
            fs::{DirBuilderExt, FileTypeExt, MetadataExt},
            net::UnixListener,
        },
    },
    path::{Path, PathBuf},
};

/// Mode of a directory netmon creates for its socket (`/run/netmon`).
pub const DIR_MODE: u32 = 0o755;

/// Why the socket could not be set up. Each message names the path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path} is a symlink; netmon does not follow symlinks here: remove it")]
    Symlink { path: PathBuf },
    #[error("{path} exists and is not a {what}: remove it or choose another --socket")]
    NotWhatExpected { path: PathBuf, what: &'static str },
    #[error(
        "{path} is owned by uid {uid}, not by the agent's user ({me}): remove it or choose another --socket"
    )]
    Owner { path: PathBuf, uid: u32, me: u32 },
    #[error(
        "{path} is writable by other users (mode {mode:o}): make it `chmod go-w` or choose another --socket"
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("another agent{} is already serving {path}: stop it first", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Busy { path: PathBuf, pid: Option<u32> },
    #[error("{call} {path}")]
    Io {
        call: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(call: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SocketError {
    let path = path.to_owned();
    move |source| SocketError::Io { call, path, source }
}

/// The lock on a socket path, held for the agent's life: taken first, before the slow start,
/// so that a second agent says so at once.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    _file: File,
}

impl Lock {
    /// Checks (or creates) the socket's directory and takes `PATH.lock` in it.
    pub fn take(socket: &Path) -> Result<Self, SocketError> {
        let dir = socket.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        let dir_fd = open_dir(dir)?;
        let name = socket
            .file_name()
            .ok_or_else(|| SocketError::NotWhatExpected {
                path: socket.to_owned(),
                what: "socket file name",
            })?;
        let mut lock_name = name.to_owned();
        lock_name.push(".lock");
        let lock_path = dir.join(&lock_name);
        let c_name =
            CString::new(lock_name.as_bytes()).map_err(|_| SocketError::NotWhatExpected {
                path: lock_path.clone(),
                what: "path without NUL",
            })?;
        // SAFETY: openat on a directory fd we own, with a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                dir_fd.as_raw_fd(),
                c_name.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ELOOP) {
                return Err(SocketError::Symlink { path: lock_path });
            }
            return Err(io_err("open", &lock_path)(e));
        }
        // SAFETY: a new fd we own.
        let mut file = unsafe { File::from_raw_fd(fd) };
        let meta = file.metadata().map_err(io_err("stat", &lock_path))?;
        if !meta.file_type().is_file() {
            return Err(SocketError::NotWhatExpected {
                path: lock_path,
                what: "regular file",
            });
        }
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                // The holder writes its pid just after taking the lock: two agents started
                // together get here before it has, so give it a moment.
                let mut pid = None;
                for _ in 0..20 {
                    let mut text = String::new();
                    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
                    pid = text.trim().parse().ok();
                    if pid.is_some() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                return Err(SocketError::Busy {
                    path: socket.to_owned(),
                    pid,
                });
            }
            return Err(io_err("flock", &lock_path)(e));
        }
        // Who holds it, for the next agent's message.
        file.set_len(0).map_err(io_err("truncate", &lock_path))?;
        file.rewind().map_err(io_err("seek", &lock_path))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err("write", &lock_path))?;
        Ok(Self {
            path: socket.to_owned(),
            _file: file,
        })
    }

    /// Creates the socket, mode 0660 and group `gid` if given (else 0600), replacing a socket
    /// file an agent that died left behind.
    pub fn bind(self, gid: Option<u32>) -> Result<AgentSocket, SocketError> {
        let path = &self.path;
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(SocketError::Symlink { path: path.clone() });
            }
            Ok(m) if m.file_type().is_socket() => {
                // We hold the lock, so no agent of this version serves it; an older one
                // (without the lock) might.
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(SocketError::Busy {
                        path: path.clone(),
                        pid: None,
                    });
                }
                std::fs::remove_file(path).map_err(io_err("remove", path))?;
            }
            Ok(_) => {
                return Err(SocketError::NotWhatExpected {
                    path: path.clone(),
                    what: "socket",
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("stat", path)(e)),
        }
        let mode = if gid.is_some() { 0o660 } else { 0o600 };
        // The socket file takes its mode from the umask: set it for the bind, so that there
        // is never a moment with a wider mode and no chmod by path afterwards. (The umask is
        // the process's; nothing else creates files while the agent starts.)
        // SAFETY: umask cannot fail.
        let old = unsafe { libc::umask(!mode & 0o777) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(io_err("bind", path))?;
        if let Some(gid) = gid {
            std::os::unix::fs::lchown(path, None, Some(gid)).map_err(io_err("lchown", path))?;
        }
        let meta = std::fs::symlink_metadata(path).map_err(io_err("stat", path))?;
        let me = euid();
        if !meta.file_type().is_socket() || meta.uid() != me || meta.mode() & 0o777 != mode {
            return Err(SocketError::NotWhatExpected {
                path: path.clone(),
                what: "socket of the agent's with the mode it set (was it replaced?)",
            });
        }
        Ok(AgentSocket {
            listener,
            id: (meta.dev(), meta.ino()),
            lock: self,
        })
    }
}

/// The bound socket. Dropping it removes the socket file if it is still the one it bound.
#[derive(Debug)]
pub struct AgentSocket {
    pub listener: UnixListener,
    /// (device, inode) of the socket file.
    id: (u64, u64),
    lock: Lock,
}

impl AgentSocket {
    pub fn path(&self) -> &Path {
        &self.lock.path
    }
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        // Still holding the lock, so no other agent can have bound since; the inode check
        // covers a file put there by hand.
        let path = &self.lock.path;
        if let Ok(m) = std::fs::symlink_metadata(path)
            && (m.dev(), m.ino()) == self.id
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Opens `dir` without following a symlink, creating it (mode [`DIR_MODE`]) if missing, and
/// checks it is a directory of ours that others cannot write to.
fn open_dir(dir: &Path) -> Result<File, SocketError> {
    let c_dir =
        CString::new(dir.as_os_str().as_bytes()).map_err(|_| SocketError::NotWhatExpected {
            path: dir.to_owned(),
            what: "path without NUL",
        })?;
    let open = || {
        // SAFETY: open with a NUL-terminated path; the fd is owned by the File below.
        let fd = unsafe {
            libc::open(
                c_dir.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            // SAFETY: a new fd we own.
            Ok(unsafe { File::from_raw_fd(fd) })
        }
    };
    let (file, created) = match open() {
        Ok(f) => (f, false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(io_err("mkdir", dir))?;
            (open().map_err(|e| classify_open_error(dir, e))?, true)
        }
        Err(e) => return Err(classify_open_error(dir, e)),
    };
    if created {
        // The umask may have taken bits off: group members must reach the socket.
        // SAFETY: fchmod on a directory fd we own.
        if unsafe { libc::fchmod(file.as_raw_fd(), DIR_MODE) } != 0 {
            return Err(io_err("chmod", dir)(std::io::Error::last_os_error()));
        }
    }
    let meta = file.metadata().map_err(io_err("stat", dir))?;
    check_dir(dir, meta.uid(), meta.mode(), euid())?;
    Ok(file)
}

fn classify_open_error(dir: &Path, e: std::io::Error) -> SocketError {
    match e.raw_os_error() {
        // O_NOFOLLOW on a symlink.
        Some(libc::ELOOP) => SocketError::Symlink {
            path: dir.to_owned(),
        },
        Some(libc::ENOTDIR) => match std::fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_symlink() => SocketError::Symlink {
                path: dir.to_owned(),
            },
            _ => SocketError::NotWhatExpected {
                path: dir.to_owned(),
                what: "directory",
            },
        },
        _ => io_err("open", dir)(e),
    }
}

/// A socket directory must be the agent user's (or root's) and not writable by others, or
/// sticky (then others cannot remove or rename what we create).
fn check_dir(dir: &Path, uid: u32, mode: u32, me: u32) -> Result<(), SocketError> {
    if uid != me && uid != 0 {
        return Err(SocketError::Owner {
            path: dir.to_owned(),
            uid,
            me,
        });
    }
    let sticky = mode & libc::S_ISVTX != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(SocketError::Writable {
            path: dir.to_owned(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_rules() {
        let d = Path::new("/run/netmon");
        check_dir(d, 0, 0o40755, 0).unwrap();
        check_dir(d, 0, 0o40700, 0).unwrap();
        // /tmp: world-writable but sticky.
        check_dir(d, 0, 0o41777, 0).unwrap();
        let e = check_dir(d, 0, 0o40775, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/run/netmon is writable by other users (mode 775): make it `chmod go-w` or choose another --socket"
        );
        assert!(matches!(
            check_dir(d, 1000, 0o40755, 0),
            Err(SocketError::Owner { uid: 1000, .. })
        ));
        // An unprivileged agent may use its own directory.
        check_dir(d, 1000, 0o40700, 1000).unwrap();
    }

    #[test]
    fn busy_names_the_other_agent() {
        let e = SocketError::Busy {
            path: "/run/netmon/agent.sock".into(),
            pid: Some(42),
        };
        assert_eq!(
            e.to_string(),
            "another agent (pid 42) is already serving /run/netmon/agent.sock: stop it first"
        );
    }
}
