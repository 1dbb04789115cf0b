//! The kernel side of netmon: one event per TCP state transition, pushed into a ring buffer.
//!
//! Attached to the BTF tracepoint `inet_sock_set_state` (include/trace/events/sock.h), which the
//! kernel fires from `inet_sk_state_store()`/`inet_sk_set_state()` for every state change of
//! every inet socket in every network namespace. A BTF tracepoint needs no tracefs and gives the
//! `struct sock *` itself, so the program reads the fields at offsets userspace resolved from
//! /sys/kernel/btf/vmlinux (Rust eBPF has no CO-RE relocations) and asks the kernel for the
//! socket cookie, the identity sock_diag reports too.
//!
//! Why three programs: the kernel runs a tracing program at most once per CPU at a time
//! (`__bpf_trace_run()` in kernel/trace/bpf_trace.c checks `prog->active`); a transition that
//! fires from softirq, or in a task that preempted the program, while the program is running on
//! that CPU is skipped and only counted in the program's `recursion_misses`. The guard is per
//! program, so copies attached after the first (the kernel runs a tracepoint's programs in
//! attach order) can take those nested transitions: each copy notes, per CPU, the transition
//! it handled, and copy `k` handles a transition only if no earlier copy noted it. A flag
//! "copy 0 is running" would not do: the kernel marks a program active a little before it
//! starts and after it ends, and transitions nested there were lost (~0.04 % at storm rate).
//! A copy interrupted before it reads the notes can take a transition twice; userspace drops
//! such a duplicate (see `Table::apply`). Measured under a loopback storm: copy 0 misses
//! ~0.1 % of transitions, copy 1 ~0.01 %, copy 2 none or a handful per million.
//!
//! Fires that run no copy at all ("not run"), measured on Linux 6.18.44, 2 vCPUs, while other
//! engineers loaded the machine. A script opened per-CPU perf counters on
//! `sock:inet_sock_set_state` (outside BPF), turned on `BPF_ENABLE_STATS` and read, in one
//! window, perf's count and each copy's `run_cnt` and `recursion_misses` from
//! `BPF_OBJ_GET_INFO_BY_FD` (counts the kernel keeps, not this program), during 3 s max-rate
//! storms under `watch`:
//! - most runs: perf == copy 0's run_cnt + misses == copy 1's run_cnt == copy 2's run_cnt;
//! - some runs: perf exceeded all three by the same amount (436, 11, 84, 530 in 4 of ~20
//!   runs), while perf itself equalled 10 x connections + 2 of the storm: for those fires the
//!   kernel called perf's probe and none of the BPF probes. Sampling both counts every 2 ms
//!   showed each shortfall arriving at once (e.g. 468 within one 2 ms sample: every fire of
//!   a few ms), not spread over the storm;
//! - attaching and detaching another raw tracepoint program on the tracepoint ~10,000 times a
//!   second (replacing the probe array each time) during storms produced no shortfall.
//!
//! Every path of `__bpf_trace_run()` either runs the program (run_cnt) or counts a miss, so
//! these fires never reached it for any of the three links. They are the fires whose current
//! task is a thread of PID 1 (measured 2026-12-03, docs/kernel-notes.md): this machine kind's
//! sandbox runs its `process_api` there, and its kernel runs no tracing program and writes no
//! perf sample while one of those threads is on a CPU (perf's counting events still count).
//! They cannot be recovered here; userspace counts them with its own perf counters
//! (netmon/src/fires.rs) and reports them as the `not_run` loss kind.
//!
//! Hints (not transitions): the owner of a socket is known only from events that run in its
//! process. `sock_send_length`/`sock_recv_length` fire in the process doing I/O; an LRU map
//! remembers the last tgid per socket so that an event is sent only when it changes, not per
//! send. `tcp_send_reset`/`tcp_receive_reset` tell how a connection ended.
#![no_std]
#![no_main]

mod iter;

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    },
    macros::{btf_tracepoint, map},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use netmon_common::{
    AF_INET, CGROUP_MODE_SOCKET, CGROUP_MODE_TASK, COUNTER_SLOTS, CgroupSource, Counter,
    DEFAULT_RING_BYTES, EventKind, FilterFields, IPPROTO_TCP, KernelFilter, PROGRAM_SLOTS,
    SockEvent, SockOffsets, TRANSITION_COPIES,
};

/// Counter slots of the hint programs come after the transition copies'.
const HINT_SLOT: u32 = TRANSITION_COPIES;

/// TCP states (include/net/tcp_states.h).
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;
const TCP_LISTEN: i32 = 10;
const TCP_CLOSE: i32 = 7;
const TCP_TIME_WAIT: i32 = 6;
const TCP_NEW_SYN_RECV: i32 = 12;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS * PROGRAM_SLOTS, 0);

/// Per CPU and per copy of the transition program: the last transition that copy handled, as
/// `cookie << 16 | old << 8 | new` (one u64, so a nested reader never sees half of it).
#[map]
static HANDLED: PerCpuArray<u64> = PerCpuArray::with_max_entries(TRANSITION_COPIES, 0);

/// Socket cookie -> tgid of the last process seen doing I/O on it. Keyed by cookie, not by
/// address (addresses are reused), so closed sockets need no delete on the hot path: the LRU
/// ages them out, and a live socket evicted here only costs one more hint event.
#[map]
static IO_OWNERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(1 << 18, 0);

// Set by userspace at load time (`EbpfLoader::override_global`); read with `read_volatile` so
// the compiler does not fold the zero initialisers into the code.
#[unsafe(no_mangle)]
static SOCK_OFFSETS: SockOffsets = SockOffsets {
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_family: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_net: 0,
    net_ns_inum: 0,
    sk_protocol: 0,
    inet_sport: 0,
    skc_state: 0,
    tcp_bytes_acked: 0,
    tcp_bytes_received: 0,
    sk_cgrp_cgroup: 0,
    cgroup_kn: 0,
    kn_id: 0,
    cgroup_mode: 0,
};

#[unsafe(no_mangle)]
static FILTER: KernelFilter = KernelFilter::ALL;

#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn netmon_set_state(ctx: BtfTracePointContext) -> i32 {
    copy(&ctx, 0);
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn netmon_set_state_fallback(ctx: BtfTracePointContext) -> i32 {
    copy(&ctx, 1);
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn netmon_set_state_fallback2(ctx: BtfTracePointContext) -> i32 {
    copy(&ctx, 2);
    0
}

/// Copy `level` of the transition program: handles the transition unless an earlier copy
/// already did on this CPU.
#[inline(always)]
fn copy(ctx: &BtfTracePointContext, level: u32) {
    if level == 0 {
        count(Counter::Fired, 0);
    }
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let sk: *const u8 = ctx.arg(0);
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    // SAFETY: `sk` is the tracepoint's BTF-typed socket pointer, which the helper accepts.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut _) };
    let id = cookie << 16 | (oldstate as u64 & 0xff) << 8 | (newstate as u64 & 0xff);
    for earlier in 0..level {
        if HANDLED.get(earlier).copied() == Some(id) {
            return;
        }
    }
    if let Some(note) = HANDLED.get_ptr_mut(level) {
        // SAFETY: per-CPU slot written only by this copy, which does not nest on a CPU.
        unsafe { *note = id };
    }
    if level > 0 {
        count(Counter::Recovered, level);
    }
    emit(sk, cookie, EventKind::State, oldstate, newstate, level);
}

// TP_PROTO(struct sock *sk, int ret, int flags), in the process doing the I/O.
#[btf_tracepoint(function = "sock_send_length")]
pub fn netmon_send(ctx: BtfTracePointContext) -> i32 {
    io(&ctx, HINT_SLOT);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn netmon_recv(ctx: BtfTracePointContext) -> i32 {
    io(&ctx, HINT_SLOT + 1);
    0
}

// TP_PROTO(const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason reason); `sk`
// is NULL for a reset answering a packet no socket owns.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn netmon_reset_sent(ctx: BtfTracePointContext) -> i32 {
    hint(&ctx, EventKind::ResetSent, HINT_SLOT + 2);
    0
}

// TP_PROTO(struct sock *sk)
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn netmon_reset_received(ctx: BtfTracePointContext) -> i32 {
    hint(&ctx, EventKind::ResetReceived, HINT_SLOT + 3);
    0
}

fn io(ctx: &BtfTracePointContext, prog: u32) -> Option<()> {
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: `sk` is the tracepoint's BTF-typed socket pointer, which the helper accepts.
    let key = unsafe { bpf_get_socket_cookie(sk as *mut _) };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // The common case, a socket doing I/O in the process already seen, costs one lookup.
    // SAFETY: the value is a plain u32 copied out at once.
    if unsafe { IO_OWNERS.get(key) }.copied() == Some(tgid) {
        return None;
    }
    IO_OWNERS.insert(key, tgid, 0).ok()?;
    hint(ctx, EventKind::Io, prog)
}

fn hint(ctx: &BtfTracePointContext, kind: EventKind, prog: u32) -> Option<()> {
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() {
        return None;
    }
    // SAFETY: plain read of a global userspace fills before load.
    let off = unsafe { read_volatile(&SOCK_OFFSETS) };
    // SAFETY: `sk` is the tracepoint's socket and `skc_state` a u8 field of it (offsets).
    let state = i32::from(unsafe { load::<u8>(sk, off.skc_state) });
    // The reset tracepoints also get timewait sockets (`tcp_v4_send_reset()` answering for a
    // TIME-WAIT socket) and could get request sockets: both are only a `sock_common`, and
    // `emit` reads `struct sock` fields past it. Their connection has already reached CLOSE
    // (or not yet ESTAB), so the hint has nothing to add.
    if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV {
        return None;
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed socket pointer, which the helper accepts.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut _) };
    emit(sk, cookie, kind, state, state, prog)
}

/// Counts in this program's own slot: a program never nests with itself on a CPU, so a plain
/// increment is safe there, while another program sharing the slot could interrupt it between
/// load and store (and the bpf target has no atomic add in `core`).
fn count(counter: Counter, prog: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32 * PROGRAM_SLOTS + prog) {
        // SAFETY: per-CPU slot of this program only.
        unsafe { *slot += 1 };
    }
}

/// Loads a `T` at `base + off` directly: the offsets are globals in a frozen read-only map,
/// which the verifier reads as constants, so it checks each access against the kernel's BTF
/// and the JIT emits a plain, fault-safe load. About 30x cheaper than
/// `bpf_probe_read_kernel`, which was most of the program's ~600 ns per transition.
///
/// # Safety
///
/// `base` must be a BTF-typed pointer (a tracepoint argument, or a pointer loaded from one
/// with this function) and `off` the offset of a field of type `T` in its struct, as
/// userspace resolved it from the kernel's BTF. The verifier rejects a program that breaks
/// this rather than run it, but Rust cannot see that: for any other pointer this is a plain
/// dereference.
#[inline(always)]
unsafe fn load<T: Copy>(base: *const u8, off: u32) -> T {
    // SAFETY: the caller's contract above.
    unsafe { read_volatile(base.wrapping_add(off as usize).cast::<T>()) }
}

/// Reads a `T` at `base + off` from kernel memory, for fields the verifier cannot check
/// against `struct sock` (those of the larger `inet_sock`/`tcp_sock` it is embedded in).
#[inline(always)]
fn read<T>(base: *const u8, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize).cast::<T>()) }.ok()
}

/// Filters on the states and on what the socket says (protocol, then the user's filter:
/// `KernelFilter::passes`, the same function userspace tests), then fills and submits one
/// event; every transition that gets this far is counted, and so is a full ring. Inlined: a
/// BPF call takes at most five arguments.
#[inline(always)]
fn emit(
    sk: *const u8,
    cookie: u64,
    kind: EventKind,
    oldstate: i32,
    newstate: i32,
    prog: u32,
) -> Option<()> {
    let is_transition = kind as u8 == EventKind::State as u8;
    // SAFETY: plain reads of globals that userspace fills before load.
    let off = unsafe { read_volatile(&SOCK_OFFSETS) };
    // SAFETY: as above.
    let filter = unsafe { read_volatile(&FILTER) };

    // Cheapest tests first: the tracepoint also fires for other inet protocols (MPTCP's
    // subflows are TCP, so they pass).
    // SAFETY: `sk` is the tracepoint's socket and `sk_protocol` a u16 field of it (offsets
    // resolved from BTF, as every field below).
    if unsafe { load::<u16>(sk, off.sk_protocol) } != u16::from(IPPROTO_TCP) {
        return None;
    }
    // SAFETY: `skc_family` and `skc_dport` are u16 fields of `sk`, `skc_net` a pointer field
    // (a BTF-typed `struct net *`), and `net_ns_inum` a u32 field of that `struct net`.
    let (family, netns, dport) = unsafe {
        let net: *const u8 = load(sk, off.skc_net);
        (
            load::<u16>(sk, off.skc_family) as u8,
            load::<u32>(net, off.net_ns_inum),
            u16::from_be(load::<u16>(sk, off.skc_dport)),
        )
    };
    let sport = u16::from_be(read::<u16>(sk, off.inet_sport)?);
    let (cgroup_id, cgroup_source) = cgroup(sk, &off, kind, oldstate, newstate);
    let fields = FilterFields {
        states: is_transition.then_some((oldstate as u8, newstate as u8)),
        family,
        netns,
        sport,
        dport,
        cgroup_id,
    };
    if !filter.passes(&fields) {
        return None;
    }

    if is_transition {
        count(Counter::Seen, prog);
    }
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        let full = if is_transition {
            Counter::RingFull
        } else {
            Counter::HintRingFull
        };
        count(full, prog);
        return None;
    };
    let ev = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `ev` points at a reserved, exclusively owned record of the right size; `sk` is the
    // tracepoint's BTF-typed socket pointer, and the address fields `load` reads are `u32` words
    // of its `skc_rcv_saddr`/`skc_daddr` or `skc_v6_rcv_saddr`/`skc_v6_daddr` (offsets).
    unsafe {
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).cookie = cookie;
        (*ev).netns = netns;
        (*ev).pid = (pid_tgid >> 32) as u32;
        (*ev).tid = pid_tgid as u32;
        (*ev).uid = bpf_get_current_uid_gid() as u32;
        (*ev).sport = sport;
        (*ev).dport = dport;
        (*ev).family = family;
        (*ev).kind = kind as u8;
        (*ev).oldstate = oldstate as u8;
        (*ev).newstate = newstate as u8;
        // Addresses as 32-bit words: `in6_addr` is a union whose `s6_addr32[4]` the verifier
        // accepts 4-byte loads of.
        let (saddr, daddr) = if family == AF_INET {
            (
                [load::<u32>(sk, off.skc_rcv_saddr), 0, 0, 0],
                [load::<u32>(sk, off.skc_daddr), 0, 0, 0],
            )
        } else {
            let word = |base: u32, i: u32| load::<u32>(sk, base + 4 * i);
            (
                [0, 1, 2, 3].map(|i| word(off.skc_v6_rcv_saddr, i)),
                [0, 1, 2, 3].map(|i| word(off.skc_v6_daddr, i)),
            )
        };
        (*ev).saddr = core::mem::transmute::<[u32; 4], [u8; 16]>(saddr);
        (*ev).daddr = core::mem::transmute::<[u32; 4], [u8; 16]>(daddr);
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let (acked, received) = if newstate == TCP_CLOSE && is_transition {
            (
                read(sk, off.tcp_bytes_acked).unwrap_or(0),
                read(sk, off.tcp_bytes_received).unwrap_or(0),
            )
        } else {
            (0, 0)
        };
        (*ev).bytes_acked = acked;
        (*ev).bytes_received = received;
        (*ev).cgroup_id = cgroup_id;
        (*ev).cgroup_source = cgroup_source as u8;
        (*ev)._pad = [0; 7];
    }
    entry.submit(wakeup_flags());
    Some(())
}

/// The cgroup v2 id of the event and where it came from. Mode socket: the socket's own cgroup,
/// three loads (`sk->sk_cgrp_data.cgroup->kn->id`, each checked by the verifier against BTF
/// like `load`), right for every event including softirq ones. Mode task (a kernel without
/// the socket's cgroup pointer): the current task's cgroup, but only where the kernel runs in
/// the owner's process (the rule the table uses for owners: connect, listen, the two closes,
/// and I/O), since elsewhere it is the peer's or an idle task's.
#[inline(always)]
fn cgroup(
    sk: *const u8,
    off: &SockOffsets,
    kind: EventKind,
    old: i32,
    new: i32,
) -> (u64, CgroupSource) {
    if off.cgroup_mode == CGROUP_MODE_SOCKET {
        // SAFETY: `sk_cgrp_data.cgroup` is a pointer field of `sk` (a BTF-typed `struct
        // cgroup *`), `kn` a pointer field of that cgroup, `id` a u64 field of the kernfs node.
        let id: u64 = unsafe {
            let cgrp: *const u8 = load(sk, off.sk_cgrp_cgroup);
            let kn: *const u8 = load(cgrp, off.cgroup_kn);
            load(kn, off.kn_id)
        };
        return if id == 0 {
            (0, CgroupSource::None)
        } else {
            (id, CgroupSource::Socket)
        };
    }
    let owner_context = match kind {
        EventKind::State => {
            (old == TCP_CLOSE && (new == TCP_SYN_SENT || new == TCP_LISTEN))
                || (old == TCP_ESTABLISHED && new == TCP_FIN_WAIT1)
                || (old == TCP_CLOSE_WAIT && new == TCP_LAST_ACK)
        }
        EventKind::Io => true,
        _ => false,
    };
    if off.cgroup_mode == CGROUP_MODE_TASK && owner_context {
        // SAFETY: a helper without arguments.
        (unsafe { bpf_get_current_cgroup_id() }, CgroupSource::Task)
    } else {
        (0, CgroupSource::None)
    }
}

/// Batches wake-ups: the reader is woken each time the waiting data crosses a multiple of
/// `WAKEUP_BYTES` (it also polls on a short timer), instead of once per event, which is what
/// made per-event tracers cut the traced workload to 0.3x here. Waking on every event above
/// the threshold instead would queue an irq_work per event while the reader catches up.
/// 0 keeps the kernel's default (wake when the reader has caught up).
#[inline(always)]
fn wakeup_flags() -> u64 {
    // SAFETY: plain read of a global userspace fills before load.
    let threshold = unsafe { read_volatile(&WAKEUP_BYTES) };
    if threshold == 0 {
        return 0;
    }
    // Includes this record, already reserved.
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let before = waiting.saturating_sub(RECORD_BYTES);
    if waiting / threshold != before / threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// A record's footprint in the ring: the event and the ring's 8-byte header.
const RECORD_BYTES: u64 = core::mem::size_of::<SockEvent>() as u64 + 8;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
