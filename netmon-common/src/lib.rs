//! Types shared by the eBPF program and the userspace agent: the ring-buffer event, the struct
//! offsets userspace resolves from BTF for the program, counter slots, and TCP states.
#![no_std]

/// The copies of the transition program, in attach order: the first handles every
/// `inet_sock_set_state` transition; each next one only those every earlier copy was skipped
/// for by the kernel's per-program recursion guard (see the eBPF crate's docs).
pub const TRANSITION_PROGRAMS: [&str; TRANSITION_COPIES as usize] = [
    "netmon_set_state",
    "netmon_set_state_fallback",
    "netmon_set_state_fallback2",
];
pub const TRANSITION_COPIES: u32 = 3;
/// The BTF tracepoint both programs attach to.
pub const TRACEPOINT: &str = "inet_sock_set_state";
/// Owner and ending hints: (program, BTF tracepoint). `sock_send_length`/`sock_recv_length`
/// fire in the process doing the I/O; the reset tracepoints tell how a connection ended.
pub const HINT_PROGRAMS: [(&str, &str); 4] = [
    ("netmon_send", "sock_send_length"),
    ("netmon_recv", "sock_recv_length"),
    ("netmon_reset_sent", "tcp_send_reset"),
    ("netmon_reset_received", "tcp_receive_reset"),
];

/// Ring buffer map name.
pub const MAP_EVENTS: &str = "EVENTS";
/// Per-CPU counter array name; see [`PROGRAM_SLOTS`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Global holding [`SockOffsets`].
pub const GLOBAL_OFFSETS: &str = "SOCK_OFFSETS";
/// Global holding [`KernelFilter`].
pub const GLOBAL_FILTER: &str = "FILTER";
/// Global: wake the reader only once this many bytes wait in the ring (0: every event).
pub const GLOBAL_WAKEUP_BYTES: &str = "WAKEUP_BYTES";
/// LRU map: socket address -> tgid of the last process seen doing I/O on it.
pub const MAP_IO_OWNERS: &str = "IO_OWNERS";

/// Default ring buffer size. Measured here: 1 MiB dropped nothing at ~450k transitions/s with
/// a reader woken per event; a reader woken in batches, and stalled now and then by its own
/// output, lost up to 2 % with 4 MiB in `cargo xtask bench`: 8 MiB (~75 ms at storm rate).
pub const DEFAULT_RING_BYTES: u32 = 1 << 23;
/// Default wake-up threshold (see the eBPF program's `wakeup_flags`): ~600 wake-ups/s at storm
/// rate, each draining ~580 transitions.
pub const DEFAULT_WAKEUP_BYTES: u64 = 1 << 16;

/// Slots of the per-CPU counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A ring-buffer reservation for a transition failed: the transition was dropped.
    RingFull = 0,
    /// A fallback copy handled a transition the first copy was skipped for.
    Recovered = 1,
    /// Transitions that passed the in-kernel filter (reserve attempted).
    Seen = 2,
    /// A hint (owner or reset) was dropped because the ring was full.
    HintRingFull = 3,
    /// Runs of the first transition copy: with its `recursion_misses`, every transition the
    /// kernel fired (all namespaces and inet protocols), to check captured against fired.
    Fired = 4,
}
/// Number of [`Counter`]s.
pub const COUNTER_SLOTS: u32 = 5;
/// Each counter has a slot per program (the transition copies, then the hint programs), so
/// that programs interrupting each other never share an increment: [`MAP_COUNTERS`] holds
/// `COUNTER_SLOTS * PROGRAM_SLOTS` values, counter `c` of program `p` at `c * PROGRAM_SLOTS + p`.
pub const PROGRAM_SLOTS: u32 = 8;

/// What a [`SockEvent`] reports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A TCP state transition (`oldstate` -> `newstate`).
    State = 0,
    /// A process other than the last one seen did I/O on the socket: it owns it now.
    Io = 1,
    /// The kernel sent a RST on this socket.
    ResetSent = 2,
    /// The socket received a RST.
    ResetReceived = 3,
}

impl EventKind {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::State),
            1 => Some(Self::Io),
            2 => Some(Self::ResetSent),
            3 => Some(Self::ResetReceived),
            _ => None,
        }
    }
}

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_TCP: u8 = 6;

/// One event on a socket, as the eBPF programs write it into the ring buffer: mostly TCP state
/// transitions ([`EventKind`]).
///
/// Ports are in host byte order; addresses are in network byte order, IPv4 in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Socket cookie, the same value sock_diag reports as `idiag_cookie`.
    pub cookie: u64,
    /// `tcp_sock.bytes_acked` / `bytes_received`, read when the socket moves to CLOSE (else 0).
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    /// Task on the CPU when the event happened (tgid, tid, uid): not always the owner.
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub sport: u16,
    pub dport: u16,
    /// AF_INET or AF_INET6 (both fit a byte).
    pub family: u8,
    /// An [`EventKind`].
    pub kind: u8,
    /// For a transition, the states; for other kinds, both are the socket's current state.
    pub oldstate: u8,
    pub newstate: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; 16],
    /// The cgroup v2 id (kernfs inode number) the event is attributed to, 0 if none; see
    /// [`CgroupSource`] for where it came from.
    pub cgroup_id: u64,
    /// A [`CgroupSource`].
    pub cgroup_source: u8,
    pub _pad: [u8; 7],
}

const _: () = assert!(core::mem::size_of::<SockEvent>() == 120);

/// Where a [`SockEvent`]'s `cgroup_id` came from.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CgroupSource {
    /// No id: the fallback could not attribute this event (not in the owner's process).
    None = 0,
    /// The socket's own cgroup (`sk->sk_cgrp_data.cgroup`), set when it was created and copied
    /// to accepted children: right in softirq too.
    Socket = 1,
    /// `bpf_get_current_cgroup_id()` of the task on the CPU, taken only where that task owns
    /// the socket (connect, listen, close, I/O): kernels whose BTF lacks the socket's cgroup.
    Task = 2,
    /// From a sock_diag dump (`INET_DIAG_CGROUP_ID`): sockets that predate netmon.
    Dump = 3,
}

impl CgroupSource {
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Socket,
            2 => Self::Task,
            3 => Self::Dump,
            _ => Self::None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Socket => "socket",
            Self::Task => "task",
            Self::Dump => "dump",
        }
    }
}

/// [`SockOffsets::cgroup_mode`]: read the socket's cgroup.
pub const CGROUP_MODE_SOCKET: u32 = 1;
/// [`SockOffsets::cgroup_mode`]: the task's cgroup at owner-context transitions.
pub const CGROUP_MODE_TASK: u32 = 2;

/// Byte offsets of the kernel struct fields the program reads, resolved from
/// /sys/kernel/btf/vmlinux by userspace at load time: Rust eBPF has no CO-RE relocations.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `struct sock_common`, at offset 0 of `struct sock`.
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_family: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `sock_common.skc_net` (a `possible_net_t` holding `struct net *`).
    pub skc_net: u32,
    /// `struct net` -> `ns.inum`.
    pub net_ns_inum: u32,
    /// `struct sock.sk_protocol` (u16 since Linux 5.6).
    pub sk_protocol: u32,
    /// `struct inet_sock.inet_sport`: `skc_num` is already 0 by the CLOSE event.
    pub inet_sport: u32,
    /// `struct sock_common.skc_state`, for events that are not transitions.
    pub skc_state: u32,
    /// `struct tcp_sock.bytes_acked` and `.bytes_received` (u64 each).
    pub tcp_bytes_acked: u32,
    pub tcp_bytes_received: u32,
    /// `struct sock.sk_cgrp_data.cgroup` (`struct cgroup *`, Linux 5.15+), `struct
    /// cgroup.kn` and `struct kernfs_node.id`: the socket's cgroup v2 id.
    pub sk_cgrp_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    /// [`CGROUP_MODE_SOCKET`] or [`CGROUP_MODE_TASK`] (0: no cgroup at all).
    pub cgroup_mode: u32,
}

/// The part of a user's filter the eBPF program can decide cheaply; everything passes by default.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelFilter {
    /// Bit `1 << state` set: a transition passes if its old or new state is in the mask.
    pub state_mask: u32,
    /// Bit 0: IPv4, bit 1: IPv6.
    pub family_mask: u32,
    /// Network namespace inode to keep; 0 keeps every namespace.
    pub netns: u32,
    /// Inclusive host-order port ranges; a transition passes if its port is in range.
    pub sport_min: u16,
    pub sport_max: u16,
    pub dport_min: u16,
    pub dport_max: u16,
    pub _pad: u32,
    /// cgroup v2 id to keep; 0 keeps every cgroup (and events without one).
    pub cgroup_id: u64,
}

/// What [`KernelFilter::passes`] decides on: read from the socket by the eBPF program, from a
/// transition by the userspace oracle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterFields {
    /// `(old, new)` kernel states of a transition; `None` for a hint, which has no states to
    /// select on.
    pub states: Option<(u8, u8)>,
    /// AF_INET or AF_INET6; anything else never passes.
    pub family: u8,
    pub netns: u32,
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// The event's cgroup id (0: none).
    pub cgroup_id: u64,
}

impl KernelFilter {
    /// The in-kernel filter: the eBPF program applies exactly this, and the userspace tests
    /// check it against the full filter (it may pass more, never less).
    #[inline(always)]
    pub fn passes(&self, f: &FilterFields) -> bool {
        let in_mask = |s: u8| s < 32 && self.state_mask & (1u32 << s) != 0;
        let states = match f.states {
            Some((old, new)) => in_mask(old) || in_mask(new),
            None => true,
        };
        let family_bit = match f.family {
            AF_INET => 1,
            AF_INET6 => 2,
            _ => 0,
        };
        // On 6.1 and 6.12 (not 6.18) a new child's LISTEN -> SYN-RECV fires before the child
        // has its own ports (its peer port is still 0): its ports cannot be judged here;
        // userspace gives it its identity and filters it (netmon/src/clones.rs).
        let unaddressed_child = f.states == Some((10, 3)) && f.dport == 0;
        let ports = unaddressed_child
            || (self.sport_min <= f.sport
                && f.sport <= self.sport_max
                && self.dport_min <= f.dport
                && f.dport <= self.dport_max);
        states
            && self.family_mask & family_bit != 0
            && (self.netns == 0 || self.netns == f.netns)
            && (self.cgroup_id == 0 || self.cgroup_id == f.cgroup_id)
            && ports
    }

    pub const ALL: Self = Self {
        state_mask: u32::MAX,
        family_mask: 0b11,
        netns: 0,
        sport_min: 0,
        sport_max: u16::MAX,
        dport_min: 0,
        dport_max: u16::MAX,
        _pad: 0,
        cgroup_id: 0,
    };
}

impl Default for KernelFilter {
    fn default() -> Self {
        Self::ALL
    }
}

/// The `iter/tcp` program (a BPF iterator over the TCP sockets of the namespace its iterator
/// was created in), and its per-reader filter map.
pub const ITER_PROGRAM: &str = "netmon_iter_tcp";
/// Global holding [`IterOffsets`].
pub const GLOBAL_ITER_OFFSETS: &str = "ITER_OFFSETS";
/// Hash map: thread id of the reader -> the [`IterRequest`] its iterator applies.
pub const MAP_ITER_FILTERS: &str = "ITER_FILTERS";
/// Readers that may each hold a request at once ([`MAP_ITER_FILTERS`]); a reader that finds
/// the map full reads every socket with every field (the userspace filter stays
/// authoritative).
pub const ITER_FILTER_SLOTS: u32 = 256;
/// [`IterRequest::fields`] bit: read the socket's inode number. It is three dependent loads
/// (`sk_socket`, `file`, `f_inode`), each a cache miss at scale, and only the one-shot `-p`
/// (owners by inode from /proc) needs it.
pub const ITER_WANT_INODE: u32 = 1;

/// What one reader of the iterator asks for: which sockets ([`KernelFilter`]; netns and
/// cgroup ignored) and which optional fields (`ITER_WANT_*` bits; a field not asked for is 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IterRequest {
    pub filter: KernelFilter,
    pub fields: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<IterRequest>() == 40);

/// One TCP socket as the `iter/tcp` program writes it (`bpf_seq_write`): the fields of
/// sock_diag's `inet_diag_msg` that `ss -tan` prints or filters on, and nothing it would have
/// to compute (no timers, no attributes).
///
/// Ports in host byte order; addresses in network byte order, IPv4 in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IterSock {
    /// `bpf_get_socket_cookie()`, the value sock_diag reports as `idiag_cookie`.
    pub cookie: u64,
    /// The socket's inode number (`sock_i_ino()`); 0 for TIME-WAIT and request sockets and
    /// sockets without a file (orphans, children still in the accept queue).
    pub inode: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// As sock_diag's `idiag_rqueue`/`idiag_wqueue` (`tcp_diag_get_info()`): accept queue
    /// and its limit for a listener, unread and unacknowledged bytes otherwise, 0 for
    /// TIME-WAIT and request sockets.
    pub recv_q: u32,
    pub send_q: u32,
    /// The iterator's uid (the listener's for a request socket, 0 for TIME-WAIT).
    pub uid: u32,
    /// `skc_bound_dev_if`.
    pub ifindex: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    /// The state sock_diag reports: `skc_state`, kernel numbering (12 for a request socket),
    /// or a TIME-WAIT socket's `tw_substate`.
    pub state: u8,
    /// The byte of `sock_common` that holds the `skc_ipv6only` bit (userspace knows which
    /// bit, from BTF); 0 for TIME-WAIT and request sockets.
    pub flags: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<IterSock>() == 72);

/// Byte offsets the `iter/tcp` program reads, resolved from BTF like [`SockOffsets`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IterOffsets {
    /// `struct sock_common`.
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_bound_dev_if: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// The byte holding the `skc_ipv6only` bitfield.
    pub skc_ipv6only_byte: u32,
    /// `struct sock`, read through the `struct tcp_sock *` that `bpf_skc_to_tcp_sock()`
    /// gives (`sock` is at its offset 0).
    pub sk_ack_backlog: u32,
    pub sk_max_ack_backlog: u32,
    pub sk_socket: u32,
    /// `struct socket.file`, `struct file.f_inode`, `struct inode.i_ino`: the socket's inode
    /// number, which is `SOCK_INODE(sk_socket)->i_ino` (the file of a socket is made on its
    /// own inode, `sock_alloc_file()`).
    pub socket_file: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    /// `socket_alloc.vfs_inode` + `inode.i_ino`: the same number for a socket without a file
    /// (a kernel socket), read with `bpf_probe_read_kernel` (`SOCK_INODE()` is pointer
    /// arithmetic the verifier does not follow).
    pub socket_ino: u32,
    /// `struct inet_timewait_sock.tw_substate` (at offset 0 of `struct tcp_timewait_sock`):
    /// sock_diag reports a TIME-WAIT socket in this state (FIN-WAIT-2 for an orphan that
    /// timed out in it, `tcp_time_wait()`).
    pub tw_substate: u32,
    /// `struct tcp_sock`.
    pub tcp_rcv_nxt: u32,
    pub tcp_copied_seq: u32,
    pub tcp_write_seq: u32,
    pub tcp_snd_una: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain integers and byte arrays, no padding (asserted by size above).
    unsafe impl aya::Pod for super::SockEvent {}
    // SAFETY: u32 fields only.
    unsafe impl aya::Pod for super::SockOffsets {}
    // SAFETY: u32/u16/u64 fields, explicit padding.
    unsafe impl aya::Pod for super::KernelFilter {}
    // SAFETY: a KernelFilter and u32 fields, explicit padding (size asserted).
    unsafe impl aya::Pod for super::IterRequest {}
    // SAFETY: u32 fields only.
    unsafe impl aya::Pod for super::IterOffsets {}
}

/// TCP states with the kernel's numbering (include/net/tcp_states.h) and ss's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    BoundInactive,
    /// A value this build does not know: shown as a number, never guessed.
    Unknown(u8),
}

impl TcpState {
    /// Every known state, in kernel order.
    pub const ALL: [TcpState; 13] = [
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait1,
        Self::FinWait2,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::Closing,
        Self::NewSynRecv,
        Self::BoundInactive,
    ];

    pub const fn from_kernel(v: u8) -> Self {
        match v {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            12 => Self::NewSynRecv,
            13 => Self::BoundInactive,
            n => Self::Unknown(n),
        }
    }

    pub const fn to_kernel(self) -> u8 {
        match self {
            Self::Established => 1,
            Self::SynSent => 2,
            Self::SynRecv => 3,
            Self::FinWait1 => 4,
            Self::FinWait2 => 5,
            Self::TimeWait => 6,
            Self::Close => 7,
            Self::CloseWait => 8,
            Self::LastAck => 9,
            Self::Listen => 10,
            Self::Closing => 11,
            Self::NewSynRecv => 12,
            Self::BoundInactive => 13,
            Self::Unknown(n) => n,
        }
    }

    /// The name ss prints in its State column (misc/ss.c `sstate_name`), except that a closed
    /// socket is `CLOSE` here (ss says `UNCONN`, which reads oddly in a transition).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTAB",
            Self::SynSent => "SYN-SENT",
            Self::SynRecv => "SYN-RECV",
            Self::FinWait1 => "FIN-WAIT-1",
            Self::FinWait2 => "FIN-WAIT-2",
            Self::TimeWait => "TIME-WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE-WAIT",
            Self::LastAck => "LAST-ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW-SYN-RECV",
            Self::BoundInactive => "BOUND-INACTIVE",
            Self::Unknown(_) => "UNKNOWN",
        }
    }

    /// The name ss prints in a table (`UNCONN` for a closed socket; a request socket is
    /// `SYN-RECV`, as ss shows it).
    pub const fn ss_name(self) -> &'static str {
        match self {
            Self::Close => "UNCONN",
            Self::NewSynRecv => "SYN-RECV",
            s => s.name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_filter_decides_on_states_family_netns_and_ports() {
        let f = FilterFields {
            states: Some((1, 4)),
            family: AF_INET,
            netns: 7,
            sport: 80,
            dport: 5000,
            cgroup_id: 99,
        };
        assert!(KernelFilter::ALL.passes(&f));
        let only = |k: KernelFilter, f: FilterFields| k.passes(&f);
        let cg = KernelFilter {
            cgroup_id: 99,
            ..KernelFilter::ALL
        };
        assert!(only(cg, f));
        assert!(!only(cg, FilterFields { cgroup_id: 98, ..f }));
        assert!(
            !only(cg, FilterFields { cgroup_id: 0, ..f }),
            "no id never matches an id"
        );
        let estab = KernelFilter {
            state_mask: 1 << 1,
            ..KernelFilter::ALL
        };
        assert!(only(estab, f), "old state selected");
        assert!(!only(
            estab,
            FilterFields {
                states: Some((2, 3)),
                ..f
            }
        ));
        assert!(
            only(estab, FilterFields { states: None, ..f }),
            "hints have no states"
        );
        assert!(
            !only(
                KernelFilter::ALL,
                FilterFields {
                    states: Some((40, 40)),
                    ..f
                }
            ),
            "states past the mask never pass"
        );
        let v6 = KernelFilter {
            family_mask: 2,
            ..KernelFilter::ALL
        };
        assert!(!only(v6, f));
        assert!(!only(KernelFilter::ALL, FilterFields { family: 1, ..f }));
        let ns = KernelFilter {
            netns: 8,
            ..KernelFilter::ALL
        };
        assert!(!only(ns, f));
        let ports = KernelFilter {
            sport_min: 80,
            sport_max: 80,
            dport_min: 1024,
            dport_max: u16::MAX,
            ..KernelFilter::ALL
        };
        assert!(only(ports, f));
        assert!(!only(ports, FilterFields { sport: 81, ..f }));
        assert!(!only(ports, FilterFields { dport: 1023, ..f }));
        let empty = KernelFilter {
            sport_min: u16::MAX,
            sport_max: 0,
            ..KernelFilter::ALL
        };
        assert!(!only(empty, f), "an empty range passes nothing");
    }

    #[test]
    fn a_child_reported_before_it_has_ports_passes_port_ranges_only() {
        let ports = KernelFilter {
            dport_min: 1024,
            ..KernelFilter::ALL
        };
        // 6.1/6.12: LISTEN -> SYN-RECV of a new child, peer port still 0.
        let early = FilterFields {
            states: Some((10, 3)),
            family: AF_INET,
            netns: 7,
            sport: 8080,
            dport: 0,
            cgroup_id: 0,
        };
        assert!(ports.passes(&early));
        let other_ns = KernelFilter { netns: 8, ..ports };
        assert!(!other_ns.passes(&early), "only the port ranges are waived");
        let listener_close = FilterFields {
            states: Some((10, 7)),
            ..early
        };
        assert!(!ports.passes(&listener_close));
    }

    #[test]
    fn kernel_numbering_round_trips_and_unknown_is_kept() {
        for v in 0..=255u8 {
            assert_eq!(TcpState::from_kernel(v).to_kernel(), v);
        }
        assert_eq!(TcpState::from_kernel(1), TcpState::Established);
        assert_eq!(TcpState::from_kernel(10).name(), "LISTEN");
        assert_eq!(TcpState::from_kernel(99), TcpState::Unknown(99));
        assert_eq!(TcpState::Close.ss_name(), "UNCONN");
    }
}
