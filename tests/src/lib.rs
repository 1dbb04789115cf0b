//! Helpers for the root integration tests: private network namespaces, loopback connections,
//! collecting events from the real program, and finding the netmon binary.
//!
//! Every test runs its traffic in a network namespace of its own and filters the program on
//! that namespace's inode, so it sees only its own transitions and can count them exactly.

use std::{
    ffi::CString,
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStringExt, process::CommandExt},
    },
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

use netmon::{
    attach::{Probe, ProbeConfig},
    decode::{Event, Hint, Transition, decode},
};
use netmon_common::KernelFilter;

pub mod otlp;

/// `d` scaled by `NETMON_TEST_SLOWDOWN` (an integer, default 1): `cargo xtask vm` sets it for
/// guests under emulation (TCG), where code runs 15-30x slower than on the host.
pub fn patience(d: Duration) -> Duration {
    let factor = std::env::var("NETMON_TEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    d * factor
}

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

    /// A namespace made by someone else (`ip netns add` pins it at /run/netns/NAME), with `lo`
    /// brought up.
    pub fn open(path: &str) -> Self {
        require_root();
        let file = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        let inum = netns_inum(&file);
        let ns = Self { file, inum };
        ns.run(set_loopback_up);
        ns
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

    /// A path that names this namespace while the test runs, for `nsenter --net=PATH`.
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd())
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
            hints: true,
            count_fires: true,
        };
        Probe::attach(&config)
            .unwrap_or_else(|e| panic!("attaching the eBPF program: {:#}", anyhow::Error::new(e)))
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

/// Everything a probe delivered: transitions, and the owner/reset hints.
#[derive(Debug, Default)]
pub struct Collected {
    pub transitions: Vec<Transition>,
    pub hints: Vec<Hint>,
}

/// Makes `n` connections (see [`connect_and_close`]) to one listener in `ns`; returns its port.
pub fn connect_and_close_many(ns: &TestNetns, n: usize) -> u16 {
    ns.run(move || {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        for _ in 0..n {
            connect_and_close(&listener);
        }
        listener.local_addr().expect("listener addr").port()
    })
}

/// Drains `probe` until `want` transitions arrived or `timeout` passed.
pub fn collect(probe: &mut Probe, want: usize, timeout: Duration) -> Collected {
    let mut events = Vec::new();
    let drain = |probe: &mut Probe, events: &mut Vec<Event>| {
        probe
            .drain(|bytes| events.push(decode(bytes).expect("decode ring record")))
            .records
    };
    let transitions = |events: &[Event]| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Transition(_)))
            .count()
    };
    let deadline = Instant::now() + timeout;
    while transitions(&events) < want && Instant::now() < deadline {
        if drain(probe, &mut events) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Anything more that was already on its way would be a bug the caller should see.
    std::thread::sleep(Duration::from_millis(50));
    drain(probe, &mut events);
    let mut out = Collected::default();
    for e in events {
        match e {
            Event::Transition(t) => out.transitions.push(t),
            Event::Hint(h) => out.hints.push(h),
        }
    }
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

/// Address families of a fixture: IPv4, IPv6, or an IPv6 dual-stack listener reached over
/// IPv4 (its sockets have v4-mapped addresses).
#[derive(Clone, Copy, Debug)]
pub enum Stack {
    V4,
    V6,
    Mapped,
}

impl Stack {
    fn listen(self) -> TcpListener {
        let addr = match self {
            Stack::V4 => "127.0.0.1:0",
            Stack::V6 => "[::1]:0",
            Stack::Mapped => "[::]:0",
        };
        TcpListener::bind(addr).expect("bind listener")
    }

    fn peer(self, port: u16) -> SocketAddr {
        match self {
            Stack::V4 | Stack::Mapped => SocketAddr::from(([127, 0, 0, 1], port)),
            Stack::V6 => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        }
    }
}

/// Sockets held in every state reachable on loopback; they stay while this lives.
pub struct StateFixture {
    _keep: Vec<Box<dyn std::any::Any + Send>>,
    pub ports: Vec<u16>,
}

/// Puts sockets into LISTEN, ESTAB (with unread bytes), SYN-SENT, SYN-RECV, FIN-WAIT-1,
/// FIN-WAIT-2, TIME-WAIT, CLOSE-WAIT, LAST-ACK and CLOSING inside `ns`. nftables in the
/// namespace drops the one packet that would move each held socket on: a SYN (SYN-SENT), the
/// client's FIN (FIN-WAIT-1, and CLOSING once the server's FIN crosses it), the server's FIN
/// (LAST-ACK); TCP_DEFER_ACCEPT keeps a request socket in SYN-RECV.
pub fn hold_every_state(ns: &TestNetns, stack: Stack) -> StateFixture {
    ns.run(move || {
        let [est, fw1, last_ack, closing, syn_sent] = [(); 5].map(|()| stack.listen());
        let syn_recv = stack.listen();
        // The request lives until its SYN-ACK was retransmitted for this long (1+2+...+64 s
        // for 120): with 30 (31 s) it completed into the accept queue before the last
        // comparisons of ss_options.rs (45 s on a machine shared with two other test runs).
        set_int_opt(&syn_recv, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, 120);
        let port = |l: &TcpListener| l.local_addr().expect("addr").port();
        nft(&format!(
            "add table inet netmon_test
             add chain inet netmon_test out {{ type filter hook output priority 0; policy accept; }}
             add rule inet netmon_test out tcp dport {ss} tcp flags & syn == syn drop
             add rule inet netmon_test out tcp dport {fw1} tcp flags & fin == fin drop
             add rule inet netmon_test out tcp sport {la} tcp flags & fin == fin drop
             add rule inet netmon_test out tcp dport {cl} tcp flags & fin == fin drop",
            ss = port(&syn_sent),
            fw1 = port(&fw1),
            la = port(&last_ack),
            cl = port(&closing),
        ));
        let connect = |l: &TcpListener| {
            let c = TcpStream::connect(stack.peer(port(l))).expect("connect");
            let (s, _) = l.accept().expect("accept");
            (c, s)
        };
        let shut = |s: &TcpStream| s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut keep: Vec<Box<dyn std::any::Any + Send>> = Vec::new();

        // ESTAB both ways, 5 bytes unread at the server (Recv-Q 5).
        let (mut c, s) = connect(&est);
        c.write_all(b"hello").expect("write");
        keep.push(Box::new((c, s)));
        // TIME-WAIT: the client closes first, the server follows.
        let (c, mut s) = connect(&est);
        drop(c);
        s.read_to_end(&mut Vec::new()).expect("read EOF");
        drop(s);
        // FIN-WAIT-2 (client) and CLOSE-WAIT (server).
        let (c, s) = connect(&est);
        shut(&c);
        keep.push(Box::new((c, s)));
        // FIN-WAIT-1: the client's FIN is dropped; the server stays ESTAB.
        let (c, s) = connect(&fw1);
        shut(&c);
        keep.push(Box::new((c, s)));
        // LAST-ACK: the server's FIN is dropped; the client sits in FIN-WAIT-2.
        let (c, mut s) = connect(&last_ack);
        shut(&c);
        s.read_to_end(&mut Vec::new()).expect("read EOF");
        shut(&s);
        keep.push(Box::new((c, s)));
        // CLOSING: the client's FIN is dropped, then the server's FIN reaches the client while
        // its own is unacknowledged; the server goes FIN-WAIT-2.
        let (c, s) = connect(&closing);
        shut(&c);
        std::thread::sleep(Duration::from_millis(20));
        shut(&s);
        keep.push(Box::new((c, s)));
        // SYN-SENT: the SYN is dropped; connect is non-blocking so the socket stays.
        keep.push(Box::new(connect_nonblocking(stack.peer(port(&syn_sent)))));
        // SYN-RECV: the client is ESTAB, the server keeps a request socket until data comes.
        keep.push(Box::new(
            TcpStream::connect(stack.peer(port(&syn_recv))).expect("connect"),
        ));

        let ports = [&est, &fw1, &last_ack, &closing, &syn_sent, &syn_recv]
            .map(port)
            .to_vec();
        keep.push(Box::new((est, fw1, last_ack, closing, syn_sent, syn_recv)));
        std::thread::sleep(Duration::from_millis(200));
        StateFixture { _keep: keep, ports }
    })
}

fn nft(script: &str) {
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run nft (cargo xtask setup installs nftables)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write nft script");
    assert!(
        child.wait().expect("nft").success(),
        "nft rejected:\n{script}"
    );
}

fn set_int_opt(l: &TcpListener, level: i32, name: i32, value: i32) {
    // SAFETY: valid fd, option value and length.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// A socket whose connect is under way (SYN-SENT while its SYN is dropped).
fn connect_nonblocking(to: SocketAddr) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket calls; the sockaddr built below matches `to`'s family and length.
    unsafe {
        let fd = libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let len = match to {
            SocketAddr::V4(a) => {
                let sin = &mut *(&raw mut storage).cast::<libc::sockaddr_in>();
                sin.sin_family = libc::AF_INET as u16;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = &mut *(&raw mut storage).cast::<libc::sockaddr_in6>();
                sin6.sin6_family = libc::AF_INET6 as u16;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                size_of::<libc::sockaddr_in6>()
            }
        };
        let rc = libc::connect(fd, (&raw const storage).cast(), len as libc::socklen_t);
        let err = std::io::Error::last_os_error();
        assert!(
            rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
            "connect: {err}"
        );
        owned
    }
}

/// Runs a command inside `ns` and returns its stdout; panics with its stderr on failure.
pub fn output_in(ns: &TestNetns, cmd: std::process::Command) -> String {
    let mut cmd = cmd;
    let out = ns.run(move || cmd.output().expect("run command"));
    assert!(
        out.status.success(),
        "command failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Table lines with their columns joined by one space, sorted: what two ss-style tables must
/// agree on, whatever their column widths.
pub fn normalise(table: &str, columns: usize) -> Vec<String> {
    let mut lines: Vec<String> = table
        .lines()
        .map(|l| {
            l.split_whitespace()
                .take(columns)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort();
    lines
}

/// A child process a test started, killed (SIGKILL, by its pid) and reaped when dropped, so a
/// test that fails (panics) does not leave its `netmon` or peer processes running. Until it is
/// waited for, its pid cannot be reused: the kill reaches only this child.
pub struct Reaped(Child);

impl Reaped {
    pub fn new(child: Child) -> Self {
        Self(child)
    }

    /// The first line the child prints (`tcp-peer` prints its port, or `ready`), trimmed;
    /// blocks until it comes. The child's stdout must be piped.
    pub fn first_line(&mut self) -> String {
        let out = self.0.stdout.as_mut().expect("the child's stdout is piped");
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .expect("reading the child's first line");
        line.trim().to_owned()
    }
}

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A `netmon agent` started by a test on a socket of its own; stopped (SIGTERM, by pid) on drop.
pub struct AgentProcess {
    child: Reaped,
    pub socket: PathBuf,
    /// The agent's stderr lines, when started with [`AgentProcess::start_reading_stderr`].
    pub stderr: Option<Receiver<String>>,
}

/// A socket path of its own for each agent a test starts.
pub fn agent_socket_path() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    PathBuf::from(format!("/run/netmon-test/{}-{n}.sock", std::process::id()))
}

/// `netmon agent --socket SOCKET ARGS`, stderr piped, not waited for.
pub fn spawn_agent(socket: &std::path::Path) -> Reaped {
    spawn_agent_with(socket, &[], Stdio::piped())
}

fn spawn_agent_with(socket: &std::path::Path, args: &[&str], stderr: Stdio) -> Reaped {
    spawn_agent_wrapped(&[], socket, args, stderr)
}

/// The agent run by `wrapper` (a command line that execs its arguments, e.g. `setpriv ...
/// --`), so that the child's pid is the agent's.
fn spawn_agent_wrapped(
    wrapper: &[&str],
    socket: &std::path::Path,
    args: &[&str],
    stderr: Stdio,
) -> Reaped {
    require_root();
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(netmon_bin());
            c
        }
        None => Command::new(netmon_bin()),
    };
    cmd.args(["agent", "--socket"])
        .arg(socket)
        .args(args)
        .stderr(stderr)
        .spawn()
        .map(Reaped)
        .expect("spawn netmon agent")
}

/// Waits until something answers on `socket`.
pub fn wait_serving(socket: &std::path::Path, child: &mut Child) {
    let wait = patience(Duration::from_secs(20));
    let deadline = Instant::now() + wait;
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let err = match child.stderr {
                Some(_) => stderr_of(child),
                None => "(its stderr is the test's)".into(),
            };
            panic!("the agent exited ({status}): {err}");
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not start serving within {wait:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl AgentProcess {
    pub fn start() -> Self {
        Self::start_at(agent_socket_path())
    }

    pub fn start_at(socket: PathBuf) -> Self {
        Self::start_with(socket, &[])
    }

    /// An agent with more arguments. Its stderr goes to the test's (a pipe nobody reads
    /// would make its messages fail).
    pub fn start_with(socket: PathBuf, args: &[&str]) -> Self {
        let mut child = spawn_agent_with(&socket, args, Stdio::inherit());
        wait_serving(&socket, &mut child);
        Self {
            child,
            socket,
            stderr: None,
        }
    }

    /// Takes over an agent spawned with [`spawn_agent`] and already serving `socket`; its
    /// stderr is read (and dropped) from here on, so that its messages never meet a closed pipe.
    pub fn adopt(mut child: Reaped, socket: PathBuf) -> Self {
        if let Some(mut err) = child.stderr.take() {
            std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        }
        Self {
            child,
            socket,
            stderr: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An agent with more arguments (e.g. `--metrics-listen 0`) whose stderr lines the test
    /// reads with [`AgentProcess::stderr_line`].
    pub fn start_reading_stderr(args: &[&str]) -> Self {
        Self::start_wrapped_reading_stderr(&[], args)
    }

    /// [`AgentProcess::start_reading_stderr`], the agent run by `wrapper` (a command line
    /// that execs its arguments).
    pub fn start_wrapped_reading_stderr(wrapper: &[&str], args: &[&str]) -> Self {
        let socket = agent_socket_path();
        let mut child = spawn_agent_wrapped(wrapper, &socket, args, Stdio::piped());
        let err = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end even when the test stopped listening: the agent never meets a
            // closed pipe.
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        wait_serving(&socket, &mut child);
        Self {
            child,
            socket,
            stderr: Some(rx),
        }
    }

    /// The first stderr line containing `needle` within 20 s (start with
    /// [`AgentProcess::start_reading_stderr`]).
    pub fn stderr_line(&self, needle: &str) -> String {
        let rx = self
            .stderr
            .as_ref()
            .expect("started with start_reading_stderr");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("the agent said nothing with {needle:?} within 20 s: {seen:#?}");
    }

    /// `netmon snapshot ARGS` through this agent, run inside `ns`.
    pub fn snapshot(&self, ns: &TestNetns, args: &[&str]) -> String {
        let mut cmd = std::process::Command::new(netmon_bin());
        cmd.arg("snapshot")
            .args(args)
            .env("NETMON_AGENT_SOCKET", &self.socket);
        output_in(ns, cmd)
    }

    /// SIGTERM, then its exit status; panics if it is still running after `timeout`.
    pub fn stop(mut self, timeout: Duration) -> std::process::ExitStatus {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = wait_with_timeout(&mut self.child, timeout);
        std::mem::forget(self);
        status
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Resident memory of process `pid` (VmRSS), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// `netmon snapshot ARGS` with no agent (a socket path nobody serves), inside `ns`.
pub fn snapshot_without_agent(ns: &TestNetns, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(netmon_bin());
    cmd.arg("snapshot")
        .args(args)
        .env("NETMON_AGENT_SOCKET", "/nonexistent/netmon.sock");
    output_in(ns, cmd)
}

/// `ss ARGS` inside `ns`.
pub fn ss_in(ns: &TestNetns, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new("ss");
    cmd.args(args);
    output_in(ns, cmd)
}

/// `netmon watch ARGS` with stdout and stderr piped.
pub fn spawn_watch(args: &[&str]) -> Reaped {
    require_root();
    Command::new(netmon_bin())
        .arg("watch")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(Reaped)
        .expect("spawn netmon watch")
}

/// Lines of the child's stdout, read on a thread.
pub fn lines(stdout: ChildStdout) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Makes connections on a canary listener until `netmon` shows one: then it is attached.
pub fn wait_attached(ns: &TestNetns, rx: &Receiver<String>, seen: &mut Vec<String>) -> u16 {
    let canary = ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        (port, l)
    });
    let (port, listener) = canary;
    let needle = format!(":{port}");
    let wait = patience(Duration::from_secs(20));
    let deadline = Instant::now() + wait;
    let listener = std::sync::Arc::new(listener);
    while Instant::now() < deadline {
        let l = listener.clone();
        ns.run(move || connect_and_close(&l));
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let hit = line.contains(&needle);
            seen.push(line);
            if hit {
                return port;
            }
        }
    }
    panic!("netmon watch showed no event within {wait:?}; output: {seen:#?}");
}

pub fn interrupt(child: &Child) {
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("netmon did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut s).ok();
    s
}

/// The kernel's own count of a tracepoint's fires (`inet_sock_set_state` unless said), outside
/// any BPF program: one perf
/// counter per online CPU on the tracepoint (what `perf stat -a -e sock:inet_sock_set_state`
/// opens), with a tracepoint filter evaluated by perf.
pub struct PerfFires {
    fds: Vec<std::os::fd::OwnedFd>,
}

impl PerfFires {
    /// Starts counting fires that match `filter` (ftrace filter syntax, e.g.
    /// `sport == 947 || dport == 947`).
    pub fn open(filter: &str) -> Self {
        Self::open_on("sock/inet_sock_set_state", filter)
    }

    /// The same on another tracepoint (`system/name`).
    pub fn open_on(tracepoint: &str, filter: &str) -> Self {
        use std::os::fd::FromRawFd;
        require_root();
        let id = tracepoint_id(tracepoint);
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
        let filter = std::ffi::CString::new(filter).unwrap();
        let fds = cpu_list(&online)
            .into_iter()
            .map(|cpu| {
                // struct perf_event_attr: type PERF_TYPE_TRACEPOINT, size, config = id.
                let mut attr = [0u8; 128];
                attr[0..4].copy_from_slice(&2u32.to_ne_bytes());
                attr[4..8].copy_from_slice(&128u32.to_ne_bytes());
                attr[8..16].copy_from_slice(&id.to_ne_bytes());
                // SAFETY: a zero-extended perf_event_attr of the size it declares.
                let fd = unsafe {
                    libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), -1, cpu, -1, 8)
                };
                assert!(
                    fd >= 0,
                    "perf_event_open on CPU {cpu}: {}",
                    std::io::Error::last_os_error()
                );
                // SAFETY: a new fd owned by nothing else.
                let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
                const PERF_EVENT_IOC_SET_FILTER: libc::c_ulong = 0x4008_2406;
                // SAFETY: a NUL-terminated filter string on a tracepoint perf fd.
                let rc = unsafe {
                    libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_SET_FILTER, filter.as_ptr())
                };
                assert_eq!(
                    rc,
                    0,
                    "setting perf filter {filter:?}: {}",
                    std::io::Error::last_os_error()
                );
                fd
            })
            .collect();
        Self { fds }
    }

    /// Matching fires since [`PerfFires::open`].
    pub fn read(&self) -> u64 {
        self.fds
            .iter()
            .map(|fd| {
                let mut v = 0u64;
                // SAFETY: 8 bytes into a u64 from a counting perf fd.
                let n = unsafe { libc::read(fd.as_raw_fd(), (&raw mut v).cast(), 8) };
                assert_eq!(
                    n,
                    8,
                    "read perf counter: {}",
                    std::io::Error::last_os_error()
                );
                v
            })
            .sum()
    }

    /// Waits until the count stops moving (every transition of a storm has fired), at most
    /// `max`; returns it.
    pub fn settled(&self, max: Duration) -> u64 {
        let deadline = Instant::now() + max;
        let mut last = self.read();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.read();
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }
}

/// A tracepoint's perf id from tracefs, mounted in a private mount namespace by `unshare` if
/// the machine has none mounted.
fn tracepoint_id(name: &str) -> u64 {
    let path = format!("/sys/kernel/tracing/events/{name}/id");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tracefs tracefs /sys/kernel/tracing && cat {path}"
            ))
            .output()
            .expect("run unshare to mount tracefs privately");
        assert!(
            out.status.success(),
            "reading {path} from a private tracefs mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    });
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{path}: {text:?}"))
}

fn cpu_list(text: &str) -> Vec<i32> {
    text.trim()
        .split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => (a.parse::<i32>().unwrap()..=b.parse().unwrap()).collect::<Vec<_>>(),
            None => vec![part.parse().unwrap()],
        })
        .collect()
}

/// The container id of [`Cgroups::scope`].
pub const ID: &str = "4f1c0ffee0000000000000000000000000000000000000000000000000c0ffee";
/// The unit as systemd escapes it in the directory name, and as netmon shows it.
pub const UNIT_DIR: &str = "web\\x2dfront.service";
pub const UNIT: &str = "web-front.service";
/// A Kubernetes pod as the kubelet's systemd driver names it (dashes as `_`), and its UID.
pub const POD_SLICE: &str = "kubepods-besteffort-pod0b1c2d3e_4f50_6172_8394_a5b6c7d8e9f0.slice";
pub const POD_UID: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
/// The container id of [`Cgroups::pod_container`].
pub const POD_CONTAINER: &str = "5e1f0000000000000000000000000000000000000000000000000000000000aa";

/// `<cgroup2 mount>/netmon-test-<pid>.slice/{web\x2dfront.service, docker-ID.scope,
/// kubepods-besteffort-pod<UID>.slice/cri-containerd-ID.scope}`; on drop, any process still in
/// them goes back to the root cgroup and the directories are removed.
pub struct Cgroups {
    mount: PathBuf,
    slice: String,
}

impl Cgroups {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let mount = netmon::cgroup::cgroup2_mount(&info)
            .expect("no cgroup2 mount: this test needs cgroup v2 (unified or hybrid layout)");
        let slice = format!("/netmon-test-{}.slice", std::process::id());
        let me = Self { mount, slice };
        for dir in [me.service(), me.scope(), me.pod_container()] {
            std::fs::create_dir_all(me.dir(&dir))
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", me.dir(&dir).display()));
        }
        me
    }

    pub fn service(&self) -> String {
        format!("{}/{UNIT_DIR}", self.slice)
    }

    pub fn scope(&self) -> String {
        format!("{}/docker-{ID}.scope", self.slice)
    }

    pub fn pod(&self) -> String {
        format!("{}/{POD_SLICE}", self.slice)
    }

    pub fn pod_container(&self) -> String {
        format!("{}/cri-containerd-{POD_CONTAINER}.scope", self.pod())
    }

    pub fn dir(&self, rel: &str) -> PathBuf {
        self.mount.join(rel.trim_start_matches('/'))
    }

    /// `command`, started in cgroup `rel` (the child joins it before exec) inside `ns`.
    pub fn spawn(&self, ns: &TestNetns, rel: &str, mut command: Command) -> Reaped {
        let procs = CString::new(
            self.dir(rel)
                .join("cgroup.procs")
                .into_os_string()
                .into_vec(),
        )
        .expect("path without NUL");
        // SAFETY: the hook runs between fork and exec and makes only async-signal-safe calls
        // (open, write, close) on memory allocated before the fork.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process itself.
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Reaped(ns.run(move || command.spawn().expect("spawn in cgroup")))
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for rel in [
            self.service(),
            self.scope(),
            self.pod_container(),
            self.pod(),
        ] {
            let dir = self.dir(&rel);
            // Processes first (a cgroup with members cannot be removed).
            if let Ok(pids) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in pids.lines() {
                    std::fs::write(self.mount.join("cgroup.procs"), pid).ok();
                }
            }
            std::fs::remove_dir(&dir).ok();
        }
        std::fs::remove_dir(self.dir(&self.slice)).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a failing test leaves behind: a child it started, dropped while unwinding.
    #[test]
    fn a_child_dropped_by_a_panicking_test_is_killed_and_reaped() {
        let child = Reaped::new(
            Command::new("sleep")
                .arg("60")
                .spawn()
                .expect("spawn sleep"),
        );
        let pid = child.id();
        let proc = PathBuf::from(format!("/proc/{pid}"));
        assert!(proc.exists());
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _child = child;
            panic!("the test failed");
        }));
        assert!(unwound.is_err());
        // Reaped, not a zombie: the pid is gone at once (sleep was still running).
        assert!(!proc.exists(), "pid {pid} outlived its test");
    }
}
