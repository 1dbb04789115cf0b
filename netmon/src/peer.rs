//! The other end of the agent's Unix socket: its credentials (`SO_PEERCRED`,
//! `SO_PEERGROUPS`) and the network namespace fd a client passes with its request
//! (`SCM_RIGHTS`), so that the agent never has to guess the caller's namespace from a pid.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

/// Who connected, as the kernel recorded it at `connect()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// The credentials of the peer of the connected Unix socket `fd`.
pub fn peer_cred(fd: RawFd) -> io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        groups: peer_groups(fd)?,
    })
}

/// `SO_PEERGROUPS` (Linux 4.13): the peer's supplementary groups at `connect()`.
fn peer_groups(fd: RawFd) -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * size_of::<u32>()) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `groups`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / size_of::<u32>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // ERANGE: the buffer was too small and `len` says how much is needed.
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65536 {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}

/// Sends `data` on the Unix socket `fd` with `pass` attached (`SCM_RIGHTS`); returns the
/// bytes sent, which may be fewer than `data` (the fd goes with the first of them).
pub fn send_with_fd(fd: RawFd, data: &[u8], pass: RawFd) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // u64 alignment for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE is a size computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    assert!(space <= size_of_val(&control));
    // SAFETY: a zeroed msghdr is valid; its pointers are set to live buffers below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control holds `space` bytes, enough for one cmsghdr with one fd.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), pass);
    }
    // SAFETY: a valid msghdr; MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Receives into `buf` from the Unix socket `fd`; an fd passed with these bytes is stored in
/// `passed` if it is still empty, and closed otherwise (as are any beyond the first). Returns
/// the bytes read (0 at EOF).
pub fn recv_with_fd(fd: RawFd, buf: &mut [u8], passed: &mut Option<OwnedFd>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for a few fds; the kernel closes what does not fit (MSG_CTRUNC).
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; its pointers are set to live buffers below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control) as _;
    // SAFETY: a valid msghdr over live buffers; received fds are close-on-exec.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: walking the control messages the kernel wrote, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let bytes = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..bytes / size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    let owned = OwnedFd::from_raw_fd(raw);
                    if passed.is_none() {
                        *passed = Some(owned);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(n as usize)
}

/// `NS_GET_NSTYPE` (include/uapi/linux/nsfs.h): `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// True if `fd` is a network namespace (an nsfs file of type `CLONE_NEWNET`).
pub fn is_netns(fd: &impl AsRawFd) -> bool {
    // SAFETY: an ioctl without argument on an fd we hold.
    let ty = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
    ty == libc::CLONE_NEWNET
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn credentials_of_our_own_peer() {
        let (a, _b) = UnixStream::pair().unwrap();
        let c = peer_cred(a.as_raw_fd()).unwrap();
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!((c.pid, c.uid, c.gid), (std::process::id() as i32, uid, gid));
    }

    #[test]
    fn an_fd_travels_with_the_bytes_and_only_the_first_is_kept() {
        let (a, b) = UnixStream::pair().unwrap();
        let ns = std::fs::File::open("/proc/self/ns/net").unwrap();
        assert!(is_netns(&ns));
        assert!(!is_netns(&a));
        assert_eq!(
            send_with_fd(a.as_raw_fd(), b"req\n", ns.as_raw_fd()).unwrap(),
            4
        );
        let file = std::fs::File::open("/proc/self/ns/uts").unwrap();
        send_with_fd(a.as_raw_fd(), b"more", file.as_raw_fd()).unwrap();
        let mut passed = None;
        let mut buf = [0u8; 4];
        assert_eq!(
            recv_with_fd(b.as_raw_fd(), &mut buf, &mut passed).unwrap(),
            4
        );
        assert_eq!(&buf, b"req\n");
        let got = passed.take().unwrap();
        assert!(is_netns(&got));
        // A second fd while one is kept: not stored (dropped, so closed).
        let mut kept = Some(got);
        assert_eq!(recv_with_fd(b.as_raw_fd(), &mut buf, &mut kept).unwrap(), 4);
        assert!(is_netns(kept.as_ref().unwrap()));
        // Plain bytes, no fd.
        drop(a);
        let mut none = None;
        assert_eq!(recv_with_fd(b.as_raw_fd(), &mut buf, &mut none).unwrap(), 0);
        assert!(none.is_none());
    }
}
