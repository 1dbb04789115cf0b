//! systemd socket activation: the listening socket a service manager passed (sd_listen_fds(3)).
//!
//! The protocol: the manager leaves the sockets open from fd 3 on and sets `LISTEN_FDS` to
//! their number and `LISTEN_PID` to the pid of the process they are meant for (so a child that
//! inherits the environment does not take them too).

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;

/// sd-daemon.h `SD_LISTEN_FDS_START`.
pub const LISTEN_FDS_START: RawFd = 3;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActivationError {
    #[error("LISTEN_FDS={0} is not a number of sockets")]
    Count(String),
    #[error(
        "the service manager passed {0} sockets; netmon agent serves one \
         (one ListenStream= in netmon-agent.socket)"
    )]
    TooMany(usize),
    #[error(
        "fd {LISTEN_FDS_START} passed by the service manager is not a listening Unix stream \
         socket (check ListenStream= in netmon-agent.socket)"
    )]
    NotUnixListener,
}

/// How many sockets were passed to the process `pid`, from the values of `LISTEN_PID` and
/// `LISTEN_FDS`. None when nothing was passed, or it was passed to another process.
pub fn passed(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    pid: u32,
) -> Result<Option<usize>, ActivationError> {
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    if listen_pid.trim().parse::<u32>().ok() != Some(pid) {
        return Ok(None);
    }
    match listen_fds.trim().parse::<usize>() {
        Ok(0) => Ok(None),
        Ok(1) => Ok(Some(1)),
        Ok(n) => Err(ActivationError::TooMany(n)),
        Err(_) => Err(ActivationError::Count(listen_fds.to_owned())),
    }
}

/// The listening socket passed to this process, if one was. The environment variables are
/// left as they are: they name this pid, so children ignore them.
pub fn listener() -> Result<Option<UnixListener>, ActivationError> {
    let var = |name| std::env::var(name).ok();
    let pid = std::process::id();
    if passed(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        pid,
    )?
    .is_none()
    {
        return Ok(None);
    }
    let fd = LISTEN_FDS_START;
    if !is_unix_listener(fd) {
        return Err(ActivationError::NotUnixListener);
    }
    // SAFETY: fcntl on an fd number only reads and sets its flags; a bad fd returns -1.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the protocol hands fd 3 to this process, it is checked to be a listening Unix
    // stream socket, and nothing else in netmon takes fd 3 (it is taken here once, at start).
    Ok(Some(unsafe { UnixListener::from_raw_fd(fd) }))
}

fn is_unix_listener(fd: RawFd) -> bool {
    let get = |opt| {
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: value and len are valid for writing one c_int; a bad fd returns -1.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&raw mut value).cast(),
                &raw mut len,
            )
        };
        (rc == 0).then_some(value)
    };
    get(libc::SO_DOMAIN) == Some(libc::AF_UNIX)
        && get(libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && get(libc::SO_ACCEPTCONN) == Some(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_count_only_for_the_named_pid() {
        assert_eq!(passed(None, None, 7), Ok(None));
        assert_eq!(passed(Some("7"), None, 7), Ok(None));
        assert_eq!(passed(Some("7"), Some("1"), 7), Ok(Some(1)));
        assert_eq!(
            passed(Some("8"), Some("1"), 7),
            Ok(None),
            "meant for another process"
        );
        assert_eq!(passed(Some("x"), Some("1"), 7), Ok(None));
        assert_eq!(passed(Some("7"), Some("0"), 7), Ok(None));
        assert_eq!(
            passed(Some("7"), Some("2"), 7),
            Err(ActivationError::TooMany(2))
        );
        assert_eq!(
            passed(Some("7"), Some("one"), 7),
            Err(ActivationError::Count("one".into()))
        );
    }

    #[test]
    fn only_a_listening_unix_stream_socket_qualifies() {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("netmon-activation-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let listener = UnixListener::bind(dir.join("s")).unwrap();
        assert!(is_unix_listener(listener.as_raw_fd()));
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!is_unix_listener(a.as_raw_fd()), "connected, not listening");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!is_unix_listener(tcp.as_raw_fd()), "not AF_UNIX");
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_unix_listener(file.as_raw_fd()), "not a socket");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
