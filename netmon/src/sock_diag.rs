//! The sock_diag (`NETLINK_SOCK_DIAG`) snapshot of TCP sockets: what `ss -tan` lists.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU32, Ordering},
};
use std::time::{Duration, Instant};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};
use netmon_common::{KernelFilter, TcpState};

use crate::diag_ext::Attrs;

// The few sock_diag constants needed are defined here rather than taken from
// netlink-packet-sock-diag: its message types allocate per attribute (parsing 84k replies took
// 44 ms with it against 1.1 ms here) and it would bring zerocopy and its derive macro along.
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;
const IPPROTO_TCP: u8 = libc::IPPROTO_TCP as u8;
/// include/uapi/linux/sock_diag.h; replies to it have this type too.
const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// Every TCP state, including request sockets (`NEW_SYN_RECV`, 12) and, since Linux 6.8,
/// sockets bound but neither listening nor connected (`BOUND_INACTIVE`, 13: the kernel reports
/// them with state `CLOSE`).
pub const ALL_STATES: u32 = (1 << 14) - 2;

/// What `ss -tan` lists: [`ALL_STATES`] less `BOUND_INACTIVE` (which ss shows only when asked).
pub const SS_STATES: u32 = ALL_STATES & !(1 << 13);

/// Which address families to dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

impl Families {
    pub const V4: Self = Self {
        v4: true,
        v6: false,
    };
    pub const V6: Self = Self {
        v4: false,
        v6: true,
    };
    pub const ALL: Self = Self { v4: true, v6: true };
}

impl Default for Families {
    fn default() -> Self {
        Self::ALL
    }
}

/// Which TCP timer was pending (`idiag_timer`; ss prints it with `-o`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// 1: retransmit, loss probe or reordering timer; also a request socket's SYN-ACK timer.
    Retransmit,
    /// 2: keepalive (or the FIN-WAIT-2 timer, which shares `sk_timer`).
    KeepAlive,
    /// 3: a TIME-WAIT socket's timer.
    TimeWait,
    /// 4: zero-window probe (ss: `persist`).
    Probe,
    /// A code this build does not know.
    Unknown(u8),
}

/// A pending timer, as `inet_diag_msg` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timer {
    pub kind: TimerKind,
    /// Milliseconds until it fires (`idiag_expires`).
    pub expires_ms: u32,
    /// Retransmissions so far (`idiag_retrans`; for a request socket, SYN-ACKs resent).
    pub retrans: u8,
}

/// One TCP socket of a dump, with the columns of `ss -tan` and the attributes ss's options
/// print.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DiagSock {
    /// Socket cookie (`idiag_cookie`), the value `bpf_get_socket_cookie()` returns for it.
    pub cookie: u64,
    /// The kernel's `idiag_state`. A request socket (a connection whose handshake the listener
    /// has not completed, `NEW_SYN_RECV` inside the kernel) is reported as `SynRecv` (3):
    /// `inet_req_diag_fill` says so, and ss prints `SYN-RECV` for both.
    pub state: TcpState,
    /// Local address and port. An IPv6 socket keeps `V6` even for a v4-mapped address, as ss
    /// prints it (`[::ffff:127.0.0.1]:80`). Scope ids are left 0: see [`DiagSock::ifindex`].
    pub local: SocketAddr,
    /// Peer address and port: the unspecified address, port 0, for a listener (ss prints
    /// `0.0.0.0:*` / `[::]:*`).
    pub remote: SocketAddr,
    /// ss's Recv-Q: `idiag_rqueue` verbatim. LISTEN: connections waiting in the accept queue
    /// (`sk_ack_backlog`); other full sockets: bytes received but not read
    /// (`rcv_nxt - copied_seq`, at least 0); TIME-WAIT and request sockets: 0.
    pub recv_q: u32,
    /// ss's Send-Q: `idiag_wqueue` verbatim. LISTEN: the accept-queue limit
    /// (`sk_max_ack_backlog`, the `listen()` backlog capped at `net.core.somaxconn`); other full
    /// sockets: bytes sent but not acknowledged (`write_seq - snd_una`); TIME-WAIT and request
    /// sockets: 0.
    pub send_q: u32,
    /// Owner uid (for a request socket, its listener's).
    pub uid: u32,
    /// Socket inode: 0 for TIME-WAIT and request sockets, connections still in a listener's
    /// accept queue, and orphans.
    pub inode: u32,
    /// Interface the socket is bound to (`SO_BINDTODEVICE` or a link-local scope), 0 for none.
    pub ifindex: u32,
    /// `IPV6_V6ONLY`, which the kernel reports (`INET_DIAG_SKV6ONLY`) only for IPv6 sockets in
    /// LISTEN or CLOSE: false otherwise. ss prints the `[::]` of a socket without it (a
    /// dual-stack wildcard) as `*`, e.g. `*:80` and peer `*:*`.
    pub v6only: bool,
    pub timer: Option<Timer>,
    /// The attributes after the header (see [`crate::diag_ext`]).
    pub attrs: Attrs,
}

/// Length of `struct inet_diag_msg`, the fixed header of every dump reply.
pub const INET_DIAG_MSG_LEN: usize = 72;

impl DiagSock {
    /// A socket with empty queues and no uid, inode, timer or extras: what a dump reports of a
    /// TIME-WAIT socket, and the base every other record is built on.
    pub fn new(cookie: u64, state: TcpState, local: SocketAddr, remote: SocketAddr) -> Self {
        Self {
            cookie,
            state,
            local,
            remote,
            recv_q: 0,
            send_q: 0,
            uid: 0,
            inode: 0,
            ifindex: 0,
            v6only: false,
            timer: None,
            attrs: Default::default(),
        }
    }

    /// A socket as a dump reports it, with empty queues and no owner, timer or extras: the
    /// fixture of the tests that feed dumps to the table, the tracer and the agent.
    #[cfg(test)]
    pub fn fixture(cookie: u64, state: TcpState, local: &str, remote: &str) -> Self {
        Self::new(
            cookie,
            state,
            local.parse().unwrap(),
            remote.parse().unwrap(),
        )
    }
}

impl DiagSock {
    /// Decodes the fixed `struct inet_diag_msg` at the start of a `SOCK_DIAG_BY_FAMILY` reply
    /// payload. `None` if `payload` is shorter than [`INET_DIAG_MSG_LEN`] or the family is
    /// neither `AF_INET` nor `AF_INET6`. The attributes after the header go to
    /// [`Attrs::parse`].
    ///
    /// Layout, from [include/uapi/linux/inet_diag.h](https://github.com/torvalds/linux/blob/master/include/uapi/linux/inet_diag.h)
    /// (`__be` fields are big-endian, the rest host-endian):
    ///
    /// ```text
    ///  0 u8      idiag_family       AF_INET / AF_INET6
    ///  1 u8      idiag_state        TCP_* state
    ///  2 u8      idiag_timer        0 none, 1 retransmit, 2 keepalive, 3 TIME-WAIT, 4 probe
    ///  3 u8      idiag_retrans
    ///  4 struct inet_diag_sockid id:
    ///    4 __be16  idiag_sport
    ///    6 __be16  idiag_dport
    ///    8 __be32  idiag_src[4]     IPv4 uses the first 4 bytes
    ///   24 __be32  idiag_dst[4]
    ///   40 u32     idiag_if
    ///   44 u32     idiag_cookie[2]  cookie = [0] | [1] << 32
    /// 52 u32     idiag_expires      ms
    /// 56 u32     idiag_rqueue
    /// 60 u32     idiag_wqueue
    /// 64 u32     idiag_uid
    /// 68 u32     idiag_inode
    /// 72
    /// ```
    pub fn from_inet_diag_msg(payload: &[u8]) -> Option<Self> {
        let m: &[u8; INET_DIAG_MSG_LEN] = payload.get(..INET_DIAG_MSG_LEN)?.try_into().ok()?;
        let ne32 = |at: usize| u32::from_ne_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]]);
        let sport = u16::from_be_bytes([m[4], m[5]]);
        let dport = u16::from_be_bytes([m[6], m[7]]);
        let (local, remote) = match m[0] {
            AF_INET => {
                let ip = |at: usize| Ipv4Addr::new(m[at], m[at + 1], m[at + 2], m[at + 3]);
                (
                    SocketAddr::V4(SocketAddrV4::new(ip(8), sport)),
                    SocketAddr::V4(SocketAddrV4::new(ip(24), dport)),
                )
            }
            AF_INET6 => {
                let ip = |at: usize| {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&m[at..at + 16]);
                    Ipv6Addr::from(b)
                };
                (
                    SocketAddr::V6(SocketAddrV6::new(ip(8), sport, 0, 0)),
                    SocketAddr::V6(SocketAddrV6::new(ip(24), dport, 0, 0)),
                )
            }
            _ => return None,
        };
        let timer = match m[2] {
            0 => None,
            code => Some(Timer {
                kind: match code {
                    1 => TimerKind::Retransmit,
                    2 => TimerKind::KeepAlive,
                    3 => TimerKind::TimeWait,
                    4 => TimerKind::Probe,
                    n => TimerKind::Unknown(n),
                },
                expires_ms: ne32(52),
                retrans: m[3],
            }),
        };
        let attrs = Attrs::parse(&payload[INET_DIAG_MSG_LEN..]);
        Some(Self {
            cookie: u64::from(ne32(44)) | (u64::from(ne32(48)) << 32),
            state: TcpState::from_kernel(m[1]),
            local,
            remote,
            recv_q: ne32(56),
            send_q: ne32(60),
            uid: ne32(64),
            inode: ne32(68),
            ifindex: ne32(40),
            v6only: m[0] == AF_INET6 && attrs.v6only == Some(true),
            timer,
            attrs,
        })
    }
}

/// What went wrong in a dump. `Display` names the failing step.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    /// A system call failed (`call` is e.g. `"socket"`, `"recv"`, `"setns"`).
    #[error("sock_diag {call} failed")]
    Io {
        call: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel answered the dump request with an `NLMSG_ERROR` (or an error in
    /// `NLMSG_DONE`); [`DiagError::errno`] gives the errno.
    #[error("sock_diag dump of {family} sockets failed")]
    Kernel {
        family: &'static str,
        #[source]
        source: io::Error,
    },
    /// A datagram was larger than the receive buffer: its tail was lost.
    #[error("sock_diag reply truncated: {len}-byte datagram, {cap}-byte buffer")]
    Truncated { len: usize, cap: usize },
    /// A reply did not parse.
    #[error("sock_diag reply malformed at byte {offset}: {what}")]
    Malformed { what: &'static str, offset: usize },
    /// The thread that entered the other network namespace panicked.
    #[error("sock_diag netns thread panicked")]
    ThreadPanicked,
    /// The dump went past [`MAX_RECORDS`] messages or [`MAX_DUMP_TIME`]: it was abandoned.
    #[error("sock_diag dump abandoned: {what}")]
    OverLimit { what: String },
    /// Whoever wanted the dump went away ([`Cancel`]): it was stopped between two datagrams.
    #[error("sock_diag dump cancelled: its client went away")]
    Cancelled,
}

/// Stops a dump between two netlink datagrams once set: a snapshot whose client hung up
/// must not keep its slot for the seconds a dump of a million sockets takes.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl DiagError {
    /// The errno the kernel or a system call returned, if that is what failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } | Self::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn io_err(call: &'static str) -> impl FnOnce(io::Error) -> DiagError {
    move |source| DiagError::Io { call, source }
}

/// A dump stops with [`DiagError::OverLimit`] past this many messages (each socket is one;
/// ~110 bytes a socket in memory, so ~220 MB at most), so that no namespace can grow the
/// caller's memory without bound.
pub const MAX_RECORDS: usize = 2_000_000;
/// ... or after this long, plus [`PER_MESSAGE_TIME`] for each message received. A dump of
/// 100k sockets takes ~50 ms here on a quiet machine; one of 1M took more than 10 s on a
/// loaded one, still delivering: a dump that progresses is not a hung one.
pub const MAX_DUMP_TIME: Duration = Duration::from_secs(10);
/// What each message received adds to [`MAX_DUMP_TIME`]: at [`MAX_RECORDS`], 100 s more.
pub const PER_MESSAGE_TIME: Duration = Duration::from_micros(50);
/// A blocked `recv` wakes up this often to look at the deadline.
const RECV_TIMEOUT: Duration = Duration::from_millis(500);

/// Receive buffer size. The kernel sizes each dump datagram by the largest `recvmsg()` buffer
/// seen, capped near 32 KiB (`netlink_recvmsg`), so twice that never truncates.
const RECV_BUF: usize = 64 << 10;
/// `SO_RCVBUF` asked for (the kernel caps it at `net.core.rmem_max`).
const SO_RCVBUF_BYTES: i32 = 1 << 20;
const NLMSG_HDR_LEN: usize = 16;
/// Legacy request type (include/uapi/linux/inet_diag.h) that dumps TCP sockets of every
/// family at once; its replies have this type too.
const TCPDIAG_GETSOCK: u16 = 18;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, `inet_diag_sockid` (48).
const INET_DIAG_REQ_V2_LEN: usize = 56;
/// Legacy `struct inet_diag_req`: family, src_len, dst_len, ext, `inet_diag_sockid` (48),
/// states, dbs.
const INET_DIAG_REQ_LEN: usize = 60;

/// `INET_DIAG_REQ_BYTECODE`: a request's attribute holding a filter program the kernel runs
/// on each socket of the dump, sending only those it accepts (what `ss` does with a filter).
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// `inet_diag_bc_op` codes: local (`S`) and remote (`D`) port at least / at most the port in
/// the next op's `no`.
const INET_DIAG_BC_S_GE: u8 = 2;
const INET_DIAG_BC_S_LE: u8 = 3;
const INET_DIAG_BC_D_GE: u8 = 4;
const INET_DIAG_BC_D_LE: u8 = 5;

/// The port ranges of `k` as an inet_diag filter program; empty when they accept every port.
///
/// Why: the kernel walks every socket of the namespace whatever the filter, but a dump with
/// this program copies only the matches to us, where the socket iterator pays its own
/// per-socket work for each (at 108k sockets, `ss` with its program took 67-77 ms of system
/// time, the iterator 152-157 ms). Each comparison is two 4-byte ops (`code, yes, no` then
/// the port in `no`); a comparison that holds goes on to the next (`yes` = 8), one that fails
/// jumps 4 bytes past the end, which rejects the socket; reaching the end accepts it.
pub fn port_bytecode(k: &KernelFilter) -> Vec<u8> {
    let mut tests = Vec::new();
    for (code, port, trivial) in [
        (INET_DIAG_BC_S_GE, k.sport_min, 0),
        (INET_DIAG_BC_S_LE, k.sport_max, u16::MAX),
        (INET_DIAG_BC_D_GE, k.dport_min, 0),
        (INET_DIAG_BC_D_LE, k.dport_max, u16::MAX),
    ] {
        if port != trivial {
            tests.push((code, port));
        }
    }
    let len = tests.len() * 8;
    let mut bc = Vec::with_capacity(len);
    for (i, (code, port)) in tests.into_iter().enumerate() {
        let reject = u16::try_from(len - i * 8 + 4).unwrap_or(u16::MAX);
        bc.extend_from_slice(&[code, 8]);
        bc.extend_from_slice(&reject.to_ne_bytes());
        bc.extend_from_slice(&[0, 0]);
        bc.extend_from_slice(&port.to_ne_bytes());
    }
    bc
}

/// One dump request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dump {
    /// `SOCK_DIAG_BY_FAMILY` for one family (`AF_INET` or `AF_INET6`).
    Family(u8),
    /// `TCPDIAG_GETSOCK`: the kernel dumps with `AF_UNSPEC`, so both families come from one
    /// walk of the hash tables. A second, per-family dump walks every socket again: measured
    /// among 84k IPv4 sockets, the IPv4 dump took 33 ms and an IPv6 dump that found nothing
    /// 13 ms more, while this took 37 ms for both.
    Both,
}

impl Dump {
    fn name(self) -> &'static str {
        match self {
            Self::Family(AF_INET) => "IPv4",
            Self::Family(_) => "IPv6",
            Self::Both => "IPv4 and IPv6",
        }
    }
}

/// Lists the TCP sockets of the caller's network namespace in the given families whose state
/// bit (`1 << state`, kernel numbering, see [`TcpState::to_kernel`]) is set in `states`:
/// [`SS_STATES`] for what `ss -tan` shows. Request sockets (`NEW_SYN_RECV`) are included if
/// bit 3 (`SYN_RECV`) or 12 is set, and are reported as `SynRecv`. Order is the kernel's
/// hash-table order (listeners first).
///
/// Both families are read with one legacy `TCPDIAG_GETSOCK` dump (one walk of the kernel's
/// hash tables instead of two), or with one `SOCK_DIAG_BY_FAMILY` dump per family if the
/// kernel refuses it; a single family always uses `SOCK_DIAG_BY_FAMILY`. Replies are read
/// into one 64 KiB buffer and only their fixed `inet_diag_msg` header is decoded, by hand
/// ([`DiagSock::from_inet_diag_msg`]); no extension is asked for. The time is the kernel's
/// (about 0.45 µs a socket here; parsing is 1-2% of it): 84k sockets take about 40 ms,
/// against 140 ms for `ss -tan`.
pub fn dump_tcp(families: Families, states: u32) -> Result<Vec<DiagSock>, DiagError> {
    dump_tcp_ext(families, states, 0)
}

/// [`dump_tcp`], asking the kernel for the optional attributes in `ext` (`idiag_ext`, bits of
/// [`crate::diag_ext::want`]).
pub fn dump_tcp_ext(families: Families, states: u32, ext: u8) -> Result<Vec<DiagSock>, DiagError> {
    dump_tcp_cancellable(families, states, ext, &Cancel::default())
}

/// [`dump_tcp_ext`], stopped with [`DiagError::Cancelled`] once `cancel` is set.
pub fn dump_tcp_cancellable(
    families: Families,
    states: u32,
    ext: u8,
    cancel: &Cancel,
) -> Result<Vec<DiagSock>, DiagError> {
    let mut d = Dumper::new()?;
    d.ext = ext;
    d.cancel = cancel.clone();
    d.run(families, states)?;
    Ok(d.out)
}

/// Takes a batch of a dump; false stops the dump ([`DiagError::Cancelled`]).
pub type Emit = Box<dyn FnMut(Vec<DiagSock>) -> bool + Send>;

/// [`dump_tcp_cancellable`] handed to `emit` in batches as the kernel's datagrams come: a
/// batch goes once it holds `size` sockets or more (whole datagrams), the last one with what
/// is left (none if nothing is). A caller merging them never holds the whole dump, and `emit`
/// may wait: the kernel keeps the rest.
///
/// `bytecode` ([`port_bytecode`], empty for none): the kernel sends only the sockets it accepts.
pub fn dump_tcp_batched(
    families: Families,
    states: u32,
    ext: u8,
    bytecode: &[u8],
    cancel: &Cancel,
    size: usize,
    emit: Emit,
) -> Result<(), DiagError> {
    let mut d = Dumper::new()?;
    d.ext = ext;
    d.bytecode = bytecode.to_vec();
    d.cancel = cancel.clone();
    d.batches = Some((size.max(1), emit));
    d.run(families, states)?;
    let rest = std::mem::take(&mut d.out);
    if let Some((_, emit)) = d.batches.as_mut()
        && !rest.is_empty()
        && !emit(rest)
    {
        return Err(DiagError::Cancelled);
    }
    Ok(())
}

/// [`dump_tcp_ext`] of the caller's namespace, returning the kernel's reply messages as they
/// came, without the per-family `NLMSG_DONE`s, and ending with one `NLMSG_DONE`: the format
/// `ss -D FILE` writes and `TCPDIAG_FILE=FILE ss` reads, which [`parse_recording`] replays.
pub fn record_tcp(families: Families, states: u32, ext: u8) -> Result<Vec<u8>, DiagError> {
    let mut d = Dumper::new()?;
    d.ext = ext;
    d.record = Some(Vec::new());
    d.run(families, states)?;
    let mut recording = d.record.take().unwrap_or_default();
    const DONE_LEN: usize = NLMSG_HDR_LEN + 4;
    let mut done = [0u8; DONE_LEN];
    done[0..4].copy_from_slice(&(DONE_LEN as u32).to_ne_bytes());
    done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
    done[6..8].copy_from_slice(&NLM_F_MULTIPART.to_ne_bytes());
    recording.extend_from_slice(&done);
    Ok(recording)
}

/// The sockets of a recording ([`record_tcp`], or `ss -D FILE`): every socket message, of
/// whatever sequence number, up to the end; `ss -D` ends each family's dump with its own
/// `NLMSG_DONE`, so one ends no replay, but the last message must be one (else the recording
/// was cut short). A recorded `NLMSG_ERROR` fails the replay as it failed the dump.
pub fn parse_recording(recording: &[u8]) -> Result<Vec<DiagSock>, DiagError> {
    let mut out = Vec::new();
    let mut off = 0;
    let mut done = false;
    while off < recording.len() {
        let rest = &recording[off..];
        let len = rest
            .get(..4)
            .map(|l| u32::from_ne_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .filter(|&l| l >= NLMSG_HDR_LEN && l <= rest.len())
            .ok_or(DiagError::Malformed {
                what: "netlink message length out of bounds",
                offset: off,
            })?;
        let end = off + len.next_multiple_of(4).min(rest.len());
        let at = off;
        done = parse_datagram(&recording[off..end], Dump::Both, None, &mut out, None).map_err(
            |e| match e {
                DiagError::Malformed { what, offset } => DiagError::Malformed {
                    what,
                    offset: at + offset,
                },
                e => e,
            },
        )? == Progress::Done;
        off = end;
    }
    if !done {
        return Err(DiagError::Malformed {
            what: "the recording does not end with NLMSG_DONE (cut short?)",
            offset: off,
        });
    }
    Ok(out)
}

/// [`dump_tcp`] inside another network namespace, given an open handle on it
/// (`/run/netns/NAME`, `/proc/PID/ns/net`). The netlink socket is created on a short-lived
/// thread that has `setns(CLONE_NEWNET)` into it, so the caller's namespace never changes.
/// Needs `CAP_SYS_ADMIN` (`EPERM` otherwise).
pub fn dump_tcp_in_netns(
    netns: &File,
    families: Families,
    states: u32,
    ext: u8,
    cancel: &Cancel,
) -> Result<Vec<DiagSock>, DiagError> {
    in_netns(netns, || {
        dump_tcp_cancellable(families, states, ext, cancel)
    })
}

/// Runs `work` on a thread of its own that has entered `netns` (the caller's namespace stays).
pub fn in_netns<T: Send>(
    netns: &File,
    work: impl FnOnce() -> Result<T, DiagError> + Send,
) -> Result<T, DiagError> {
    let fd = netns.as_raw_fd();
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("netmon-sockdiag".into())
            .spawn_scoped(scope, move || {
                // SAFETY: `fd` is borrowed from `netns`, which outlives this scoped thread;
                // setns only changes this thread's namespace, and the thread ends after the dump.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io_err("setns")(io::Error::last_os_error()));
                }
                work()
            })
            .map_err(io_err("thread spawn"))?;
        worker.join().map_err(|_| DiagError::ThreadPanicked)?
    })
}

/// Sequence numbers of dumps: unique within the process (every dump takes the next one), and
/// starting at a random value.
static NEXT_SEQ: AtomicU32 = AtomicU32::new(0);

fn next_seq() -> u32 {
    if NEXT_SEQ.load(Ordering::Relaxed) == 0 {
        let mut seed = [0u8; 4];
        // SAFETY: getrandom writes at most 4 bytes into `seed`.
        let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let seed = if got == 4 {
            u32::from_ne_bytes(seed)
        } else {
            std::process::id().wrapping_mul(2_654_435_761)
        };
        let _ = NEXT_SEQ.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    }
    match NEXT_SEQ.fetch_add(1, Ordering::Relaxed) {
        0 => NEXT_SEQ.fetch_add(1, Ordering::Relaxed),
        seq => seq,
    }
}

/// How much of its limits a dump has used: messages read (of every kind, whoever sent them)
/// and time.
#[derive(Debug)]
struct Budget {
    messages: usize,
    max_messages: usize,
    started: Instant,
    max_time: Duration,
}

impl Budget {
    fn new(max_messages: usize, max_time: Duration) -> Self {
        Self {
            messages: 0,
            max_messages,
            started: Instant::now(),
            max_time,
        }
    }

    /// The time allowed so far: the base plus the allowance of the messages received.
    fn allowed(&self) -> Duration {
        let per_message = u32::try_from(self.messages).unwrap_or(u32::MAX);
        self.max_time + PER_MESSAGE_TIME.saturating_mul(per_message)
    }

    /// Charges `messages` more; an error once either limit is passed.
    fn charge(&mut self, messages: usize, now: Instant) -> Result<(), DiagError> {
        self.messages += messages;
        if self.messages > self.max_messages {
            return Err(DiagError::OverLimit {
                what: format!("more than {} messages", self.max_messages),
            });
        }
        if now.saturating_duration_since(self.started) > self.allowed() {
            return Err(DiagError::OverLimit {
                what: format!(
                    "not finished after {:?} ({} messages)",
                    self.allowed(),
                    self.messages
                ),
            });
        }
        Ok(())
    }
}

/// A `NETLINK_SOCK_DIAG` socket, its receive buffer and the sockets dumped so far.
///
/// The socket is `connect()`ed to the kernel (port 0): the kernel then refuses unicasts from
/// any other netlink socket (`netlink_getsockbyportid()`), which the owner of a user namespace
/// could otherwise send to our port id with fake replies. Every datagram's sender is checked
/// again anyway, every message's sequence number must be the dump's own, and a dump is bounded
/// in messages and time ([`MAX_RECORDS`], [`MAX_DUMP_TIME`]).
struct Dumper {
    sock: Socket,
    buf: Vec<u8>,
    /// `idiag_ext` of the requests.
    ext: u8,
    /// The requests' filter program ([`port_bytecode`]); empty for none.
    bytecode: Vec<u8>,
    out: Vec<DiagSock>,
    /// The socket messages received, as they came ([`record_tcp`]).
    record: Option<Vec<u8>>,
    budget: Budget,
    cancel: Cancel,
    /// Where `out` goes each time it holds this many sockets ([`dump_tcp_batched`]).
    batches: Option<(usize, Emit)>,
    /// Whether any socket message came (some may already have gone in a batch).
    received: bool,
}

impl Dumper {
    fn new() -> Result<Self, DiagError> {
        let sock = Socket::new(NETLINK_SOCK_DIAG).map_err(io_err("socket"))?;
        sock.set_rx_buf_sz(SO_RCVBUF_BYTES)
            .map_err(io_err("setsockopt(SO_RCVBUF)"))?;
        // connect() binds (autobind) and connects in one call: the socket has a port id
        // that others could send to for only the instant between the two inside the kernel.
        sock.connect(&netlink_sys::SocketAddr::new(0, 0))
            .map_err(io_err("connect"))?;
        // Whatever arrived in that instant is not a reply to us: drop it.
        let mut scratch = [0u8; 64];
        while sock
            .recv(&mut &mut scratch[..], libc::MSG_DONTWAIT | libc::MSG_TRUNC)
            .is_ok()
        {}
        set_recv_timeout(&sock, RECV_TIMEOUT)?;
        Ok(Self {
            sock,
            buf: vec![0u8; RECV_BUF],
            ext: 0,
            bytecode: Vec::new(),
            out: Vec::new(),
            record: None,
            budget: Budget::new(MAX_RECORDS, MAX_DUMP_TIME),
            cancel: Cancel::default(),
            batches: None,
            received: false,
        })
    }

    /// Dumps `families`: both with one legacy dump where the kernel takes it, else one
    /// dump per family.
    fn run(&mut self, families: Families, states: u32) -> Result<(), DiagError> {
        if families == Families::ALL {
            match self.dump(Dump::Both, states) {
                // Refused before anything was sent: this kernel lacks the legacy interface.
                Err(DiagError::Kernel { .. }) if !self.received => {}
                r => return r,
            }
        }
        self.dump_per_family(families, states)
    }

    fn dump_per_family(&mut self, families: Families, states: u32) -> Result<(), DiagError> {
        for (on, family) in [(families.v4, AF_INET), (families.v6, AF_INET6)] {
            if on {
                self.dump(Dump::Family(family), states)?;
            }
        }
        Ok(())
    }

    /// Sends one dump request and appends its replies to `out`, up to `NLMSG_DONE`.
    fn dump(&mut self, what: Dump, states: u32) -> Result<(), DiagError> {
        let seq = next_seq();
        let mut req = [0u8; NLMSG_HDR_LEN + INET_DIAG_REQ_LEN];
        let req = request(&mut req, what, states, self.ext, seq);
        let with_bytecode;
        let req = if self.bytecode.is_empty() {
            req
        } else {
            with_bytecode = with_attr(req, INET_DIAG_REQ_BYTECODE, &self.bytecode);
            &with_bytecode[..]
        };
        loop {
            match self.sock.send(req, 0) {
                Ok(n) if n == req.len() => break,
                Ok(_) => {
                    return Err(DiagError::Io {
                        call: "send",
                        source: io::Error::new(io::ErrorKind::WriteZero, "short netlink send"),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("send")(e)),
            }
        }
        loop {
            if self.cancel.is_cancelled() {
                return Err(DiagError::Cancelled);
            }
            let cap = self.buf.len();
            // MSG_TRUNC: the return value is the datagram's real length, to detect truncation.
            let received = self.sock.recv_from(&mut &mut self.buf[..], libc::MSG_TRUNC);
            let (len, from) = match received {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.budget.charge(0, Instant::now())?;
                    continue;
                }
                Err(e) => return Err(io_err("recv")(e)),
            };
            // At least one message per datagram, whoever sent it.
            self.budget.charge(
                (len / (NLMSG_HDR_LEN + INET_DIAG_MSG_LEN)).max(1),
                Instant::now(),
            )?;
            if from.port_number() != 0 {
                // Not the kernel (a connected socket should never see one): not ours.
                continue;
            }
            if len > cap {
                return Err(DiagError::Truncated { len, cap });
            }
            if len == 0 {
                return Err(DiagError::Malformed {
                    what: "empty datagram before NLMSG_DONE",
                    offset: 0,
                });
            }
            let record = self.record.as_mut();
            let before = self.out.len();
            let progress =
                parse_datagram(&self.buf[..len], what, Some(seq), &mut self.out, record)?;
            self.received |= self.out.len() > before;
            if let Some((size, emit)) = self.batches.as_mut()
                && self.out.len() >= *size
            {
                let batch = std::mem::replace(&mut self.out, Vec::with_capacity(*size));
                if !emit(batch) {
                    return Err(DiagError::Cancelled);
                }
            }
            if progress == Progress::Done {
                return Ok(());
            }
        }
    }
}

fn set_recv_timeout(sock: &Socket, timeout: Duration) -> Result<(), DiagError> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket fd and a timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io_err("setsockopt(SO_RCVTIMEO)")(io::Error::last_os_error()));
    }
    Ok(())
}

/// Writes the request for `what` into `buf` and returns it.
fn request(
    buf: &mut [u8; NLMSG_HDR_LEN + INET_DIAG_REQ_LEN],
    what: Dump,
    states: u32,
    ext: u8,
    seq: u32,
) -> &[u8] {
    let (ty, len) = match what {
        Dump::Family(_) => (SOCK_DIAG_BY_FAMILY, NLMSG_HDR_LEN + INET_DIAG_REQ_V2_LEN),
        Dump::Both => (TCPDIAG_GETSOCK, NLMSG_HDR_LEN + INET_DIAG_REQ_LEN),
    };
    buf.fill(0);
    buf[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    buf[4..6].copy_from_slice(&ty.to_ne_bytes());
    buf[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel fills in our port id. inet_diag_sockid all zero: ignored by a
    // dump.
    let r = &mut buf[NLMSG_HDR_LEN..];
    match what {
        Dump::Family(family) => {
            r[0] = family;
            r[1] = IPPROTO_TCP;
            r[2] = ext;
            r[4..8].copy_from_slice(&states.to_ne_bytes());
        }
        // The protocol comes from the message type, the family is ignored (AF_UNSPEC).
        Dump::Both => {
            r[3] = ext;
            r[52..56].copy_from_slice(&states.to_ne_bytes());
        }
    }
    &buf[..len]
}

/// `req` (a whole netlink message) with an attribute appended, its length updated.
fn with_attr(req: &[u8], ty: u16, payload: &[u8]) -> Vec<u8> {
    let attr_len = 4 + payload.len();
    let mut out = Vec::with_capacity(req.len() + attr_len.next_multiple_of(4));
    out.extend_from_slice(req);
    out.extend_from_slice(&u16::try_from(attr_len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(req.len() + attr_len.next_multiple_of(4), 0);
    let len = u32::try_from(out.len()).unwrap_or(u32::MAX);
    out[0..4].copy_from_slice(&len.to_ne_bytes());
    out
}

#[derive(Debug, PartialEq, Eq)]
enum Progress {
    More,
    Done,
}

/// Parses one received datagram (one or more netlink messages) of the dump `seq`, appending
/// its sockets to `out`, and their messages to `record` if given. Messages of other sequence
/// numbers are skipped (`None`: a recording's, where any is taken).
fn parse_datagram(
    dgram: &[u8],
    what: Dump,
    seq: Option<u32>,
    out: &mut Vec<DiagSock>,
    mut record: Option<&mut Vec<u8>>,
) -> Result<Progress, DiagError> {
    let mut off = 0;
    // Each reply is at least 16 + 72 bytes: reserve for a full datagram at once.
    out.reserve(dgram.len() / (NLMSG_HDR_LEN + INET_DIAG_MSG_LEN));
    while dgram.len() - off >= NLMSG_HDR_LEN {
        let h = &dgram[off..off + NLMSG_HDR_LEN];
        let msg_len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let msg_type = u16::from_ne_bytes([h[4], h[5]]);
        let msg_seq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
        if msg_len < NLMSG_HDR_LEN || msg_len > dgram.len() - off {
            return Err(DiagError::Malformed {
                what: "netlink message length out of bounds",
                offset: off,
            });
        }
        let payload = &dgram[off + NLMSG_HDR_LEN..off + msg_len];
        let at = off;
        // NLMSG_ALIGN: messages start on 4-byte boundaries.
        off = ((off + msg_len + 3) & !3).min(dgram.len());
        if seq.is_some_and(|seq| msg_seq != seq) {
            continue;
        }
        // NLM_F_DUMP_INTR (tables changed mid-dump) is never set by inet_diag, and a dump is
        // a best-effort snapshot anyway: the flags are not looked at.
        match msg_type {
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => match DiagSock::from_inet_diag_msg(payload) {
                Some(s) => {
                    out.push(s);
                    if let Some(r) = record.as_deref_mut() {
                        r.extend_from_slice(&dgram[at..off]);
                    }
                }
                None => {
                    return Err(DiagError::Malformed {
                        what: "short inet_diag_msg or unknown family",
                        offset: at,
                    });
                }
            },
            NLMSG_DONE => {
                // The payload is an int: 0, or a negative errno if the dump failed midway.
                if let Some(code) = payload.get(..4) {
                    let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
                    if code < 0 {
                        return Err(kernel_error(what, code));
                    }
                }
                return Ok(Progress::Done);
            }
            NLMSG_ERROR => {
                // struct nlmsgerr: int error, then the request's header.
                let Some(code) = payload.get(..4) else {
                    return Err(DiagError::Malformed {
                        what: "short NLMSG_ERROR",
                        offset: at,
                    });
                };
                let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
                if code != 0 {
                    return Err(kernel_error(what, code));
                }
                // Error 0 is an ACK, which a dump without NLM_F_ACK does not get: ignored.
            }
            // NLMSG_NOOP, NLMSG_OVERRUN and anything else: ignored.
            _ => {}
        }
    }
    if off != dgram.len() {
        return Err(DiagError::Malformed {
            what: "trailing bytes shorter than a netlink header",
            offset: off,
        });
    }
    Ok(Progress::More)
}

fn kernel_error(what: Dump, code: i32) -> DiagError {
    DiagError::Kernel {
        family: what.name(),
        source: io::Error::from_raw_os_error(code.saturating_neg()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: Dump = Dump::Family(AF_INET);
    const V6: Dump = Dump::Family(AF_INET6);

    /// One netlink message of type `ty` with `payload`, padded to 4 bytes.
    fn nlmsg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDR_LEN + payload.len();
        let mut v = Vec::with_capacity((len + 3) & !3);
        v.extend_from_slice(&(len as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&4242u32.to_ne_bytes());
        v.extend_from_slice(payload);
        v.resize((len + 3) & !3, 0);
        v
    }

    #[test]
    fn requests_are_inet_diag_req_v2_or_legacy_inet_diag_req() {
        let mut buf = [0xff; NLMSG_HDR_LEN + INET_DIAG_REQ_LEN];
        let r = request(&mut buf, V6, SS_STATES, 0, 7);
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(r[6..8].try_into().unwrap()), 0x301);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 7);
        assert_eq!(&r[16..20], &[10, 6, 0, 0]);
        assert_eq!(u32::from_ne_bytes(r[20..24].try_into().unwrap()), 0x1ffe);
        assert!(r[24..].iter().all(|&b| b == 0));
        let r = request(&mut buf, Dump::Both, ALL_STATES, 0, 8);
        assert_eq!(r.len(), 76);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 76);
        assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 18);
        assert_eq!(u16::from_ne_bytes(r[6..8].try_into().unwrap()), 0x301);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 8);
        assert!(r[12..68].iter().all(|&b| b == 0));
        assert_eq!(u32::from_ne_bytes(r[68..72].try_into().unwrap()), 0x3ffe);
        assert_eq!(&r[72..76], &[0; 4]);
    }

    /// ss's first five columns for `s`, as `ss -tanH` prints them: a port 0 is `*`, and so is
    /// the `[::]` of an IPv6 socket that is not v6-only.
    pub(super) fn ss_line(s: &DiagSock) -> String {
        let addr = |a: &SocketAddr| {
            let port = match a.port() {
                0 => "*".to_string(),
                p => p.to_string(),
            };
            match a {
                SocketAddr::V4(v) => format!("{}:{port}", v.ip()),
                SocketAddr::V6(v) if v.ip().is_unspecified() && !s.v6only => format!("*:{port}"),
                SocketAddr::V6(v) => format!("[{}]:{port}", v.ip()),
            }
        };
        format!(
            "{} {} {} {} {}",
            s.state.ss_name(),
            s.recv_q,
            s.send_q,
            addr(&s.local),
            addr(&s.remote)
        )
    }

    /// Captured from a real dump (x86-64, Linux 6.18; the messages of other sockets dropped) of
    /// a listener on 127.0.0.1:32775 (backlog 128) with one connection waiting in its accept
    /// queue, an accepted pair with 5 unread bytes at the server, and a TIME-WAIT socket. The
    /// kernel adds attributes nobody asked for (SHUTDOWN, CLASS_ID, CGROUP_ID, SOCKOPT), so
    /// each message is 124 bytes, not 16 + 72. `ss -tanoe` printed, at the same time:
    ///
    /// ```text
    /// LISTEN    1 128 127.0.0.1:32775 0.0.0.0:*       ino:11352 sk:1011
    /// ESTAB     0 0   127.0.0.1:32775 127.0.0.1:50288 ino:0 sk:1012
    /// ESTAB     0 0   127.0.0.1:50264 127.0.0.1:32775 ino:11353 sk:1014
    /// TIME-WAIT 0 0   127.0.0.1:50278 127.0.0.1:32775 timer:(timewait,59sec,0) ino:0 sk:1015
    /// ESTAB     0 0   127.0.0.1:50288 127.0.0.1:32775 ino:11357 sk:1016
    /// ESTAB     5 0   127.0.0.1:32775 127.0.0.1:50264 ino:11354 sk:1017
    /// ```
    #[rustfmt::skip]
    const RECORDED_V4: &[u8] = &[
        124, 0, 0, 0, 20, 0, 2, 0, 1, 0, 0, 0, 27, 22, 0, 0,
        2, 10, 0, 0, 128, 7, 0, 0, 127, 0, 0, 1, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 17, 16, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 128, 0, 0, 0,
        0, 0, 0, 0, 88, 44, 0, 0, 5, 0, 8, 0, 0, 0, 0, 0,
        8, 0, 15, 0, 0, 0, 0, 0, 12, 0, 21, 0, 1, 0, 0, 0,
        0, 0, 0, 0, 6, 0, 22, 0, 82, 0, 0, 0, 124, 0, 0, 0,
        20, 0, 2, 0, 1, 0, 0, 0, 27, 22, 0, 0, 2, 1, 0, 0,
        128, 7, 196, 112, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 18, 16, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 5, 0, 8, 0, 0, 0, 0, 0, 8, 0, 15, 0,
        0, 0, 0, 0, 12, 0, 21, 0, 1, 0, 0, 0, 0, 0, 0, 0,
        6, 0, 22, 0, 82, 0, 0, 0, 124, 0, 0, 0, 20, 0, 2, 0,
        1, 0, 0, 0, 27, 22, 0, 0, 2, 1, 0, 0, 196, 88, 128, 7,
        127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 20, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 89, 44, 0, 0,
        5, 0, 8, 0, 0, 0, 0, 0, 8, 0, 15, 0, 0, 0, 0, 0,
        12, 0, 21, 0, 1, 0, 0, 0, 0, 0, 0, 0, 6, 0, 22, 0,
        82, 0, 0, 0, 96, 0, 0, 0, 20, 0, 2, 0, 1, 0, 0, 0,
        27, 22, 0, 0, 2, 6, 3, 0, 196, 102, 128, 7, 127, 0, 0, 1,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 127, 0, 0, 1,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        21, 16, 0, 0, 0, 0, 0, 0, 244, 233, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 15, 0,
        0, 0, 0, 0, 124, 0, 0, 0, 20, 0, 2, 0, 1, 0, 0, 0,
        27, 22, 0, 0, 2, 1, 0, 0, 196, 112, 128, 7, 127, 0, 0, 1,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 127, 0, 0, 1,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        22, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 93, 44, 0, 0, 5, 0, 8, 0,
        0, 0, 0, 0, 8, 0, 15, 0, 0, 0, 0, 0, 12, 0, 21, 0,
        1, 0, 0, 0, 0, 0, 0, 0, 6, 0, 22, 0, 82, 0, 0, 0,
        124, 0, 0, 0, 20, 0, 2, 0, 1, 0, 0, 0, 27, 22, 0, 0,
        2, 1, 0, 0, 128, 7, 196, 88, 127, 0, 0, 1, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 127, 0, 0, 1, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 16, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 90, 44, 0, 0, 5, 0, 8, 0, 0, 0, 0, 0,
        8, 0, 15, 0, 0, 0, 0, 0, 12, 0, 21, 0, 1, 0, 0, 0,
        0, 0, 0, 0, 6, 0, 22, 0, 82, 0, 0, 0, 20, 0, 0, 0,
        3, 0, 2, 0, 1, 0, 0, 0, 27, 22, 0, 0, 0, 0, 0, 0,
    ];

    /// The same dump for IPv6, with the IPv4 connection to a dual-stack `[::]:32885` listener:
    ///
    /// ```text
    /// LISTEN 0 128 *:32885                  *:*                      ino:11358 sk:1018 v6only:0
    /// ESTAB  0 0   [::ffff:127.0.0.1]:32885 [::ffff:127.0.0.1]:38326 ino:11360 sk:1019
    /// ```
    #[rustfmt::skip]
    const RECORDED_V6: &[u8] = &[
        132, 0, 0, 0, 20, 0, 2, 0, 1, 0, 0, 0, 27, 22, 0, 0,
        10, 10, 0, 0, 128, 117, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 24, 16, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 128, 0, 0, 0,
        0, 0, 0, 0, 94, 44, 0, 0, 5, 0, 8, 0, 0, 0, 0, 0,
        5, 0, 11, 0, 0, 0, 0, 0, 8, 0, 15, 0, 0, 0, 0, 0,
        12, 0, 21, 0, 1, 0, 0, 0, 0, 0, 0, 0, 6, 0, 22, 0,
        18, 0, 0, 0, 124, 0, 0, 0, 20, 0, 2, 0, 1, 0, 0, 0,
        27, 22, 0, 0, 10, 1, 0, 0, 128, 117, 149, 182, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 255, 255, 127, 0, 0, 1, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 255, 255, 127, 0, 0, 1, 0, 0, 0, 0,
        25, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 96, 44, 0, 0, 5, 0, 8, 0,
        0, 0, 0, 0, 8, 0, 15, 0, 0, 0, 0, 0, 12, 0, 21, 0,
        1, 0, 0, 0, 0, 0, 0, 0, 6, 0, 22, 0, 18, 0, 0, 0,
        20, 0, 0, 0, 3, 0, 2, 0, 1, 0, 0, 0, 27, 22, 0, 0,
        0, 0, 0, 0,
    ];

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_recorded_dumps_like_ss() {
        let mut out = Vec::new();
        let p = parse_datagram(RECORDED_V4, V4, Some(1), &mut out, None).unwrap();
        assert_eq!(p, Progress::Done);
        let got: Vec<_> = out
            .iter()
            .map(|s| format!("{} ino:{} sk:{:x}", ss_line(s), s.inode, s.cookie))
            .collect();
        assert_eq!(
            got,
            [
                "LISTEN 1 128 127.0.0.1:32775 0.0.0.0:* ino:11352 sk:1011",
                "ESTAB 0 0 127.0.0.1:32775 127.0.0.1:50288 ino:0 sk:1012",
                "ESTAB 0 0 127.0.0.1:50264 127.0.0.1:32775 ino:11353 sk:1014",
                "TIME-WAIT 0 0 127.0.0.1:50278 127.0.0.1:32775 ino:0 sk:1015",
                "ESTAB 0 0 127.0.0.1:50288 127.0.0.1:32775 ino:11357 sk:1016",
                "ESTAB 5 0 127.0.0.1:32775 127.0.0.1:50264 ino:11354 sk:1017",
            ]
        );
        let tw = out[3].clone();
        assert_eq!(tw.state, TcpState::TimeWait);
        assert_eq!(
            tw.timer,
            Some(Timer {
                kind: TimerKind::TimeWait,
                expires_ms: 59892,
                retrans: 0
            })
        );
        assert!(
            out.iter()
                .all(|s| s.uid == 0 && s.ifindex == 0 && !s.v6only)
        );
        assert_eq!(out[0].timer, None);

        out.clear();
        let p = parse_datagram(RECORDED_V6, V6, Some(1), &mut out, None).unwrap();
        assert_eq!(p, Progress::Done);
        let got: Vec<_> = out.iter().map(ss_line).collect();
        assert_eq!(
            got,
            [
                "LISTEN 0 128 *:32885 *:*",
                "ESTAB 0 0 [::ffff:127.0.0.1]:32885 [::ffff:127.0.0.1]:38326",
            ]
        );
        assert!(out.iter().all(|s| s.local.is_ipv6() && !s.v6only));
        assert_eq!(out[0].local.to_string(), "[::]:32885");
        assert_eq!((out[1].inode, out[1].cookie), (11360, 0x1019));
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn reads_skv6only_attribute() {
        // Flip the recorded listener's INET_DIAG_SKV6ONLY (the attribute at payload byte 80,
        // after SHUTDOWN) to 1.
        let mut v6 = RECORDED_V6.to_vec();
        assert_eq!(&v6[16 + 80..16 + 85], &[5, 0, 11, 0, 0]);
        v6[16 + 84] = 1;
        let s = DiagSock::from_inet_diag_msg(&v6[16..132]).unwrap();
        assert!(s.v6only);
        assert_eq!(ss_line(&s), "LISTEN 0 128 [::]:32885 [::]:*");
        // A malformed attribute list is ignored, not read past.
        v6[16 + 72] = 200;
        assert!(!DiagSock::from_inet_diag_msg(&v6[16..132]).unwrap().v6only);
    }

    fn v6_msg() -> [u8; INET_DIAG_MSG_LEN] {
        let mut m = [0u8; INET_DIAG_MSG_LEN];
        m[0] = AF_INET6;
        m[1] = 10; // LISTEN
        m[4..6].copy_from_slice(&8080u16.to_be_bytes());
        m[8..24].copy_from_slice(&"::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap().octets());
        m[40..44].copy_from_slice(&3u32.to_ne_bytes());
        m[44..48].copy_from_slice(&0xdead_beefu32.to_ne_bytes());
        m[48..52].copy_from_slice(&0x1234u32.to_ne_bytes());
        m[56..60].copy_from_slice(&2u32.to_ne_bytes());
        m[60..64].copy_from_slice(&4096u32.to_ne_bytes());
        m[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        m[68..72].copy_from_slice(&98765u32.to_ne_bytes());
        m
    }

    #[test]
    fn parses_hand_built_v6_listener_keeping_v4_mapped_as_v6() {
        let s = DiagSock::from_inet_diag_msg(&v6_msg()).unwrap();
        assert_eq!(s.state, TcpState::Listen);
        assert_eq!(s.local.to_string(), "[::ffff:127.0.0.1]:8080");
        assert_eq!(s.remote.to_string(), "[::]:0");
        assert_eq!(s.cookie, 0x1234_dead_beef);
        assert_eq!((s.recv_q, s.send_q, s.uid, s.inode), (2, 4096, 1000, 98765));
        assert_eq!(s.ifindex, 3);
        assert_eq!(s.timer, None);
        assert!(DiagSock::from_inet_diag_msg(&v6_msg()[..71]).is_none());
        let mut bad = v6_msg();
        bad[0] = 1;
        assert!(DiagSock::from_inet_diag_msg(&bad).is_none());
    }

    #[test]
    fn multipart_datagrams_other_seqs_and_done() {
        let mut d = nlmsg(SOCK_DIAG_BY_FAMILY, 2, 5, &v6_msg());
        d.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 2, 99, &v6_msg())); // other seq: skipped
        let mut with_attr = v6_msg().to_vec();
        with_attr.extend_from_slice(&[5, 0, 8, 0, 1]); // an attribute (odd length): ignored
        d.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 2, 5, &with_attr));
        let mut out = Vec::new();
        assert_eq!(
            parse_datagram(&d, V6, Some(5), &mut out, None).unwrap(),
            Progress::More
        );
        assert_eq!(out.len(), 2);
        let done = nlmsg(NLMSG_DONE, 2, 5, &0i32.to_ne_bytes());
        assert_eq!(
            parse_datagram(&done, V6, Some(5), &mut out, None).unwrap(),
            Progress::Done
        );
        assert_eq!(out.len(), 2);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn legacy_replies_mix_families() {
        // What TCPDIAG_GETSOCK answers: the same messages, typed 18, both families.
        let retype = |rec: &[u8], keep_done: bool| {
            let mut v = Vec::new();
            let mut off = 0;
            while off < rec.len() {
                let len = u32::from_ne_bytes(rec[off..off + 4].try_into().unwrap()) as usize;
                let mut m = rec[off..off + len.next_multiple_of(4)].to_vec();
                if m[4] == 20 {
                    m[4] = 18;
                }
                if m[4] != 3 || keep_done {
                    v.extend(m);
                }
                off += len.next_multiple_of(4);
            }
            v
        };
        let mut d = retype(RECORDED_V6, false);
        d.extend(retype(RECORDED_V4, true));
        let mut out = Vec::new();
        let p = parse_datagram(&d, Dump::Both, Some(1), &mut out, None).unwrap();
        assert_eq!(p, Progress::Done);
        assert_eq!(out.len(), 8);
        assert_eq!(out.iter().filter(|s| s.local.is_ipv6()).count(), 2);
        let err = kernel_error(Dump::Both, -libc::EOPNOTSUPP);
        assert!(err.to_string() == "sock_diag dump of IPv4 and IPv6 sockets failed");
    }

    #[test]
    fn errors_carry_the_errno() {
        let mut out = Vec::new();
        let mut e = (-libc::EINVAL).to_ne_bytes().to_vec();
        e.extend_from_slice(&request(&mut [0; 76], V4, 1, 0, 5)[..16]);
        let err =
            parse_datagram(&nlmsg(NLMSG_ERROR, 0, 5, &e), V4, Some(5), &mut out, None).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL));
        assert!(err.to_string() == "sock_diag dump of IPv4 sockets failed");
        // `{:#}` walks the sources: the errno is printed once, after the step that failed.
        assert_eq!(
            format!("{:#}", anyhow::Error::new(err)),
            format!(
                "sock_diag dump of IPv4 sockets failed: {}",
                io::Error::from_raw_os_error(libc::EINVAL)
            )
        );
        let done = nlmsg(NLMSG_DONE, 2, 5, &(-libc::ENOBUFS).to_ne_bytes());
        let err = parse_datagram(&done, V4, Some(5), &mut out, None).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENOBUFS));
        // An ACK (error 0) is not an error.
        let ack = nlmsg(NLMSG_ERROR, 0, 5, &[0; 20]);
        assert_eq!(
            parse_datagram(&ack, V4, Some(5), &mut out, None).unwrap(),
            Progress::More
        );
    }

    #[test]
    fn truncated_and_malformed_input_is_rejected() {
        let mut out = Vec::new();
        let full = nlmsg(SOCK_DIAG_BY_FAMILY, 2, 5, &v6_msg());
        // Cut inside the message: length out of bounds.
        let err = parse_datagram(&full[..50], V6, Some(5), &mut out, None).unwrap_err();
        assert!(
            matches!(err, DiagError::Malformed { offset: 0, .. }),
            "{err}"
        );
        // Cut inside the header.
        let mut two = full.clone();
        two.extend_from_slice(&full[..8]);
        let err = parse_datagram(&two, V6, Some(5), &mut out, None).unwrap_err();
        assert!(
            matches!(err, DiagError::Malformed { offset: 88, .. }),
            "{err}"
        );
        // A message too short for inet_diag_msg.
        let short = nlmsg(SOCK_DIAG_BY_FAMILY, 2, 5, &v6_msg()[..40]);
        assert!(parse_datagram(&short, V6, Some(5), &mut out, None).is_err());
        // nlmsg_len smaller than the header.
        let mut tiny = full.clone();
        tiny[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(parse_datagram(&tiny, V6, Some(5), &mut out, None).is_err());
        assert_eq!(out.len(), 1); // only the first, complete message of `two`
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn recordings_replay_to_end_of_file_across_the_done_of_each_family() {
        // What `ss -D FILE -tan` writes: the IPv4 dump with its NLMSG_DONE, then the IPv6 one.
        let mut ss = RECORDED_V4.to_vec();
        ss.extend_from_slice(RECORDED_V6);
        let socks = parse_recording(&ss).unwrap();
        assert_eq!(socks.len(), 8);
        assert_eq!(socks.iter().filter(|s| s.local.is_ipv6()).count(), 2);
        // Cut short: no final NLMSG_DONE (the length check names the cut).
        let cut = ss.len() - 20;
        let err = parse_recording(&ss[..cut]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "sock_diag reply malformed at byte {cut}: the recording does not end with \
                 NLMSG_DONE (cut short?)"
            )
        );
        let err = parse_recording(&ss[..ss.len() - 3]).unwrap_err();
        assert!(
            matches!(err, DiagError::Malformed { offset, .. } if offset == cut),
            "{err}"
        );
        // Not a recording at all.
        let err = parse_recording(b"root:x:0:0:root:/root:/bin/bash\n").unwrap_err();
        assert!(
            matches!(err, DiagError::Malformed { offset: 0, .. }),
            "{err}"
        );
        assert!(
            parse_recording(&[]).is_err(),
            "an empty file is no recording"
        );
        // A recorded error fails the replay as it failed the dump.
        let mut e = (-libc::EPERM).to_ne_bytes().to_vec();
        e.extend_from_slice(&[0; 16]);
        let err = parse_recording(&nlmsg(NLMSG_ERROR, 0, 1, &e)).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EPERM));
    }

    #[test]
    fn a_recording_of_this_namespace_holds_a_listener_and_ends_with_done() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let recording = record_tcp(Families::ALL, SS_STATES, 0).unwrap();
        let done = &recording[recording.len() - 20..];
        assert_eq!(u16::from_ne_bytes([done[4], done[5]]), NLMSG_DONE);
        let socks = parse_recording(&recording).unwrap();
        assert!(
            socks
                .iter()
                .any(|s| s.state == TcpState::Listen && s.local.port() == port),
            "{socks:?}"
        );
        // Only socket messages and the one NLMSG_DONE: `TCPDIAG_FILE` replays stop at the first.
        let mut off = 0;
        let mut types = Vec::new();
        while off < recording.len() {
            let len = u32::from_ne_bytes(recording[off..off + 4].try_into().unwrap()) as usize;
            types.push(u16::from_ne_bytes([recording[off + 4], recording[off + 5]]));
            off += len.next_multiple_of(4);
        }
        assert_eq!(types.pop(), Some(NLMSG_DONE));
        assert!(
            types
                .iter()
                .all(|&t| t == TCPDIAG_GETSOCK || t == SOCK_DIAG_BY_FAMILY)
        );
        assert_eq!(types.len(), socks.len());
    }

    #[test]
    fn a_cancelled_dump_stops_with_cancelled_and_an_uncancelled_one_completes() {
        let _listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cancel = Cancel::default();
        let socks = dump_tcp_cancellable(Families::ALL, SS_STATES, 0, &cancel).unwrap();
        assert!(!socks.is_empty());
        cancel.cancel();
        let e = dump_tcp_cancellable(Families::ALL, SS_STATES, 0, &cancel).unwrap_err();
        assert!(matches!(e, DiagError::Cancelled), "{e}");
        assert!(e.to_string().contains("client went away"), "{e}");
    }

    #[test]
    fn a_dump_in_batches_finds_what_a_whole_one_finds() {
        // Listeners of this test (other tests' sockets come and go meanwhile).
        let listeners: Vec<_> = (0..40)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: std::collections::HashSet<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let mine = |socks: &[DiagSock]| -> std::collections::BTreeSet<u64> {
            socks
                .iter()
                .filter(|s| s.state == TcpState::Listen && ports.contains(&s.local.port()))
                .map(|s| s.cookie)
                .collect()
        };
        let whole = dump_tcp(Families::ALL, SS_STATES).unwrap();
        let batches = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let emit: Emit = {
            let batches = batches.clone();
            Box::new(move |b| {
                batches.lock().unwrap().push(b);
                true
            })
        };
        dump_tcp_batched(
            Families::ALL,
            SS_STATES,
            0,
            &[],
            &Cancel::default(),
            7,
            emit,
        )
        .unwrap();
        let batches = std::mem::take(&mut *batches.lock().unwrap());
        assert!(batches.iter().all(|b| !b.is_empty()));
        let all: Vec<DiagSock> = batches.into_iter().flatten().collect();
        assert_eq!(mine(&all), mine(&whole));
        assert_eq!(mine(&all).len(), 40);
        // A receiver that stops taking batches stops the dump.
        let e = dump_tcp_batched(
            Families::ALL,
            SS_STATES,
            0,
            &[],
            &Cancel::default(),
            1,
            Box::new(|_| false),
        )
        .unwrap_err();
        assert!(matches!(e, DiagError::Cancelled), "{e}");
    }

    #[test]
    fn port_ranges_become_comparisons_that_jump_past_the_end_when_they_fail() {
        assert!(port_bytecode(&KernelFilter::ALL).is_empty());
        let k = KernelFilter {
            dport_min: 80,
            dport_max: 80,
            ..KernelFilter::ALL
        };
        let mut want = vec![INET_DIAG_BC_D_GE, 8];
        want.extend_from_slice(&20u16.to_ne_bytes());
        want.extend_from_slice(&[0, 0]);
        want.extend_from_slice(&80u16.to_ne_bytes());
        want.extend_from_slice(&[INET_DIAG_BC_D_LE, 8]);
        want.extend_from_slice(&12u16.to_ne_bytes());
        want.extend_from_slice(&[0, 0]);
        want.extend_from_slice(&80u16.to_ne_bytes());
        assert_eq!(port_bytecode(&k), want);
        let k = KernelFilter {
            sport_min: 1024,
            sport_max: 2000,
            dport_max: 7,
            ..KernelFilter::ALL
        };
        let bc = port_bytecode(&k);
        let codes: Vec<(u8, u8, u16)> = bc
            .chunks(8)
            .map(|op| (op[0], op[1], u16::from_ne_bytes([op[2], op[3]])))
            .collect();
        assert_eq!(
            codes,
            [
                (INET_DIAG_BC_S_GE, 8, 28),
                (INET_DIAG_BC_S_LE, 8, 20),
                (INET_DIAG_BC_D_LE, 8, 12)
            ]
        );
    }

    #[test]
    fn the_kernel_sends_only_the_sockets_a_port_program_accepts() {
        let listeners: Vec<std::net::TcpListener> = (0..6)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        ports.sort_unstable();
        // A client of the second listener: its remote port is that listener's.
        let _client = std::net::TcpStream::connect(("127.0.0.1", ports[1])).unwrap();
        let dump = |k: KernelFilter| {
            let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let emit: Emit = {
                let out = out.clone();
                Box::new(move |b| {
                    out.lock().unwrap().extend(b);
                    true
                })
            };
            let bc = port_bytecode(&k);
            dump_tcp_batched(
                Families::ALL,
                SS_STATES,
                0,
                &bc,
                &Cancel::default(),
                64,
                emit,
            )
            .unwrap();
            let mut got: Vec<(TcpState, u16, u16)> = std::mem::take(&mut *out.lock().unwrap())
                .into_iter()
                .map(|s| (s.state, s.local.port(), s.remote.port()))
                .collect();
            got.sort_unstable();
            got
        };
        let local = dump(KernelFilter {
            sport_min: ports[2],
            sport_max: ports[4],
            ..KernelFilter::ALL
        });
        // Other processes' sockets may fall in the range too: only ours are known.
        assert!(
            local.iter().all(|s| (ports[2]..=ports[4]).contains(&s.1)),
            "{local:?}"
        );
        for (i, port) in ports.iter().enumerate() {
            let listed = local.contains(&(TcpState::Listen, *port, 0));
            assert_eq!(
                listed,
                (2..=4).contains(&i),
                "listener {i} on {port}: {local:?}"
            );
        }
        let remote = dump(KernelFilter {
            dport_min: ports[1],
            dport_max: ports[1],
            ..KernelFilter::ALL
        });
        assert!(remote.iter().all(|s| s.2 == ports[1]), "{remote:?}");
        assert!(
            remote.iter().any(|s| s.0 == TcpState::Established),
            "the client: {remote:?}"
        );
        let none = dump(KernelFilter {
            sport_min: 2,
            sport_max: 1,
            ..KernelFilter::ALL
        });
        assert!(none.is_empty(), "an empty range passes nothing: {none:?}");
    }

    #[test]
    fn every_dump_gets_its_own_sequence_number() {
        let seqs: std::collections::HashSet<u32> = (0..1000).map(|_| next_seq()).collect();
        assert_eq!(seqs.len(), 1000);
        assert!(!seqs.contains(&0));
    }

    #[test]
    fn a_dump_is_bounded_in_messages_and_time() {
        let start = Instant::now();
        let mut b = Budget::new(10, Duration::from_secs(1));
        b.charge(10, start).unwrap();
        let err = b.charge(1, start).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sock_diag dump abandoned: more than 10 messages"
        );
        let mut b = Budget::new(10, Duration::from_secs(1));
        let start = b.started;
        b.charge(0, start + Duration::from_millis(900)).unwrap();
        let err = b.charge(0, start + Duration::from_secs(2)).unwrap_err();
        assert!(
            matches!(err, DiagError::OverLimit { .. }),
            "{err}: over time"
        );
    }

    #[test]
    fn a_dump_that_keeps_delivering_gets_more_time_up_to_a_bound() {
        let mut b = Budget::new(MAX_RECORDS, Duration::from_secs(10));
        let start = b.started;
        // A million sockets on a loaded machine: 12 s, still arriving.
        b.charge(1_000_000, start + Duration::from_secs(12))
            .unwrap();
        let err = b
            .charge(0, start + Duration::from_secs(61))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "sock_diag dump abandoned: not finished after 60s (1000000 messages)"
        );
    }

    #[test]
    fn messages_of_another_dump_are_not_taken() {
        // A whole datagram under the wrong sequence number, its DONE included: nothing taken,
        // and the dump is not over.
        let mut d = nlmsg(SOCK_DIAG_BY_FAMILY, 2, 6, &v6_msg());
        d.extend(nlmsg(NLMSG_DONE, 2, 6, &0i32.to_ne_bytes()));
        let mut out = Vec::new();
        assert_eq!(
            parse_datagram(&d, V6, Some(5), &mut out, None).unwrap(),
            Progress::More
        );
        assert!(out.is_empty());
    }
}
