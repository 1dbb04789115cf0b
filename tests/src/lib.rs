//! Helpers for the root integration tests: private network namespaces, loopback connections,
//! collecting events from the real program, and finding the netmon binary.
//!
//! Every test runs its traffic in a network namespace of its own and filters the program on
//! that namespace's inode, so it sees only its own transitions and can count them exactly.

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use netmon::{
    attach::{Probe, ProbeConfig},
    decode::{Transition, decode},
};
use netmon_common::KernelFilter;

/// Panics with a clear message unless the tests run as root: they must never skip.
pub fn require_root() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this test loads eBPF programs and creates network namespaces: run it as root (cargo xtask test)"
        );
    }
}

/// A network namespace owned by the test, with `lo` up. Dropping it releases the namespace
/// once no socket in it is left.
pub struct TestNetns {
    file: File,
    pub inum: u32,
}

impl TestNetns {
    pub fn new() -> Self {
        require_root();
        std::thread::spawn(|| {
            // SAFETY: unshare affects only this short-lived thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            }
            set_loopback_up();
            let file = File::open("/proc/thread-self/ns/net").expect("open own netns");
            let inum = netns_inum(&file);
            Self { file, inum }
        })
        .join()
        .expect("netns thread")
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let fd = self.file.try_clone().expect("dup netns fd");
        std::thread::spawn(move || {
            // SAFETY: setns affects only this thread; fd is a valid netns file.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!("setns: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .expect("thread in test netns panicked")
    }

    /// A program filtered on this namespace.
    pub fn probe(&self, ring_bytes: u32) -> Probe {
        let config = ProbeConfig {
            ring_bytes,
            // Wake the reader for every event: the tests poll and want no delay.
            wakeup_bytes: 0,
            filter: KernelFilter {
                netns: self.inum,
                ..KernelFilter::ALL
            },
        };
        Probe::attach(&config).unwrap_or_else(|e| panic!("attaching the eBPF program: {e}"))
    }
}

impl Default for TestNetns {
    fn default() -> Self {
        Self::new()
    }
}

pub fn netns_inum(file: &File) -> u32 {
    use std::os::unix::fs::MetadataExt;
    file.metadata().expect("stat netns").ino() as u32
}

fn set_loopback_up() {
    // SAFETY: plain ioctls on a datagram socket with a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        assert_eq!(
            libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req),
            0,
            "SIOCGIFFLAGS lo"
        );
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req),
            0,
            "SIOCSIFFLAGS lo"
        );
        libc::close(fd);
    }
}

/// Ports of one loopback connection: what the events must show.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    pub server: SocketAddr,
    pub client: SocketAddr,
}

/// One connection to `listener`, with a byte each way; the client closes first, then the
/// server's child, so the client passes FIN-WAIT-1/2 and the child CLOSE-WAIT/LAST-ACK.
pub fn connect_and_close(listener: &TcpListener) -> Conn {
    let server = listener.local_addr().expect("listener addr");
    let mut client = TcpStream::connect(server).expect("connect");
    let (mut child, _) = listener.accept().expect("accept");
    let conn = Conn {
        server,
        client: client.local_addr().expect("client addr"),
    };
    client.write_all(b"x").expect("client write");
    let mut byte = [0u8; 1];
    child.read_exact(&mut byte).expect("child read");
    drop(client);
    // Wait for the client's FIN so the child closes from CLOSE-WAIT, not ESTAB.
    assert_eq!(child.read(&mut byte).expect("child read EOF"), 0);
    drop(child);
    conn
}

/// Drains `probe` until `want` transitions arrived or `timeout` passed.
pub fn collect(probe: &mut Probe, want: usize, timeout: Duration) -> Vec<Transition> {
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while out.len() < want && Instant::now() < deadline {
        let n = probe.drain(|bytes| out.push(decode(bytes).expect("decode ring record")));
        if n == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Anything more that was already on its way would be a bug the caller should see.
    std::thread::sleep(Duration::from_millis(50));
    probe.drain(|bytes| out.push(decode(bytes).expect("decode ring record")));
    out
}

/// The netmon binary that `cargo xtask test` built (`NETMON_BIN`), or the one next to this
/// test executable's target directory.
pub fn netmon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NETMON_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let bin = profile_dir.join("netmon");
    assert!(
        bin.exists(),
        "{} not built: run `cargo xtask test`",
        bin.display()
    );
    bin
}
