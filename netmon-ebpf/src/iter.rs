//! The `iter/tcp` program: one fixed [`IterSock`] record per TCP socket of the namespace the
//! iterator was created in, for `netmon snapshot` (what sock_diag's `inet_diag_msg` carries
//! for `ss -tan`, without a netlink message per socket), skipping in the kernel the sockets
//! the reader's filter rejects.
//!
//! The kernel calls it from `bpf_iter_tcp_seq_show()` (net/ipv4/tcp_ipv4.c) for every socket
//! of the listening and established hash tables of the seq_file's namespace: full sockets,
//! TIME-WAIT sockets (`struct inet_timewait_sock`) and request sockets (`struct
//! request_sock`), the last two only a `sock_common` plus their own fields, so nothing past
//! `sock_common` is read for them. The context is `struct bpf_iter__tcp { meta; sk_common;
//! uid }`, each member 8-byte aligned; the uid is already the one sock_diag reports.

use core::{ffi::c_void, ptr::read_volatile};

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_socket_cookie, bpf_seq_write},
    },
    macros::map,
    maps::HashMap,
};
use netmon_common::{
    AF_INET, FilterFields, ITER_FILTER_SLOTS, IterOffsets, IterSock, KernelFilter,
};

use crate::{load, read};

const TCP_LISTEN: u8 = 10;
const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;
const TCP_SYN_RECV: u8 = 3;

/// The filter of each reader, by its thread id: an iterator has no parameters of its own,
/// and the program runs in the `read()` of the thread that reads it.
#[map]
static ITER_FILTERS: HashMap<u32, KernelFilter> = HashMap::with_max_entries(ITER_FILTER_SLOTS, 0);

#[unsafe(no_mangle)]
static ITER_OFFSETS: IterOffsets = IterOffsets {
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_family: 0,
    skc_state: 0,
    skc_bound_dev_if: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_ipv6only_byte: 0,
    sk_ack_backlog: 0,
    sk_max_ack_backlog: 0,
    sk_socket: 0,
    socket_ino: 0,
    tw_substate: 0,
    tcp_rcv_nxt: 0,
    tcp_copied_seq: 0,
    tcp_write_seq: 0,
    tcp_snd_una: 0,
};

/// `struct bpf_iter__tcp`.
#[repr(C)]
struct IterTcp {
    meta: *const *mut c_void,
    sk_common: *const u8,
    uid: u32,
}

// aya-ebpf 0.2 has no `#[iter]` macro: the section name is what makes it an iterator program
// (aya-obj maps `iter/` to `BPF_TRACE_ITER`).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn netmon_iter_tcp(ctx: *mut c_void) -> i32 {
    show(ctx.cast());
    0
}

#[inline(always)]
fn show(ctx: *const IterTcp) -> Option<()> {
    // SAFETY: `ctx` is the iterator's context, read at its members' offsets; the verifier
    // types each pointer loaded (meta, sk_common: may be NULL at the end of the walk).
    let (meta, sk, uid) = unsafe {
        (
            read_volatile(&(*ctx).meta),
            read_volatile(&(*ctx).sk_common),
            read_volatile(&(*ctx).uid),
        )
    };
    if sk.is_null() || meta.is_null() {
        return None;
    }
    // SAFETY: plain read of a global userspace fills before load.
    let off = unsafe { read_volatile(&ITER_OFFSETS) };
    // SAFETY: `sk` is a BTF-typed `struct sock_common *` and these offsets are fields of it
    // (resolved from BTF): the verifier checks each load against the type.
    let (family, kstate, sport, dport) = unsafe {
        (
            load::<u16>(sk, off.skc_family) as u8,
            load::<u8>(sk, off.skc_state),
            load::<u16>(sk, off.skc_num),
            u16::from_be(load::<u16>(sk, off.skc_dport)),
        )
    };
    // The state sock_diag, and so ss, report: SYN-RECV for a request socket, the substate of
    // a TIME-WAIT one (`inet_twsk_diag_fill()`), which is FIN-WAIT-2 for an orphan that timed
    // out there; the field lies past `sock_common`, in `inet_timewait_sock`.
    let timewait = kstate == TCP_TIME_WAIT;
    let kstate = if timewait {
        read::<u8>(sk, off.tw_substate).unwrap_or(TCP_TIME_WAIT)
    } else {
        kstate
    };
    let state = if kstate == TCP_NEW_SYN_RECV {
        TCP_SYN_RECV
    } else {
        kstate
    };
    let fields = FilterFields {
        states: Some((state, state)),
        family,
        netns: 0,
        sport,
        dport,
        cgroup_id: 0,
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is a plain struct copied out at once.
    if let Some(filter) = unsafe { ITER_FILTERS.get(&tid) } {
        // The reader zeroes netns and cgroup in its filter: the iterator walks one namespace,
        // and the cgroup is not read here.
        if !filter.passes(&fields) {
            return None;
        }
    }
    let mut rec = IterSock {
        // SAFETY: `sk` is the BTF-typed socket pointer the helper accepts.
        cookie: unsafe { bpf_get_socket_cookie(sk as *mut c_void) },
        uid,
        sport,
        dport,
        family,
        state: kstate,
        // SAFETY: a field of `sock_common`, as above.
        ifindex: unsafe { load::<u32>(sk, off.skc_bound_dev_if) },
        ..IterSock::default()
    };
    // SAFETY: as above; addresses as 32-bit words (`in6_addr` is a union of which the
    // verifier accepts 4-byte loads of `s6_addr32`).
    unsafe {
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
        rec.saddr = core::mem::transmute::<[u32; 4], [u8; 16]>(saddr);
        rec.daddr = core::mem::transmute::<[u32; 4], [u8; 16]>(daddr);
    }
    if !timewait && kstate != TCP_NEW_SYN_RECV {
        full_socket(sk, &off, kstate, &mut rec);
    }
    // SAFETY: `meta` is the BTF-typed `struct bpf_iter_meta *`, whose first member is the
    // `struct seq_file *` the helper takes; `rec` is a live local of the size passed.
    unsafe {
        let seq = read_volatile(meta);
        bpf_seq_write(
            seq.cast(),
            (&raw const rec).cast(),
            size_of::<IterSock>() as u32,
        );
    }
    Some(())
}

/// What only a full socket has: queues as `tcp_diag_get_info()` computes them, the inode, the
/// v6-only bit. Read with `bpf_probe_read_kernel` (`read`): the verifier types the pointer as
/// `sock_common`, and these fields lie past it, in `struct sock` and `struct tcp_sock`.
#[inline(always)]
fn full_socket(sk: *const u8, off: &IterOffsets, state: u8, rec: &mut IterSock) {
    // SAFETY: a field of `sock_common`, as in `show`.
    rec.flags = unsafe { load::<u8>(sk, off.skc_ipv6only_byte) };
    if state == TCP_LISTEN {
        rec.recv_q = read::<u32>(sk, off.sk_ack_backlog).unwrap_or(0);
        rec.send_q = read::<u32>(sk, off.sk_max_ack_backlog).unwrap_or(0);
    } else {
        let u32_at = |o: u32| read::<u32>(sk, o).unwrap_or(0);
        let unread = u32_at(off.tcp_rcv_nxt).wrapping_sub(u32_at(off.tcp_copied_seq)) as i32;
        rec.recv_q = unread.max(0) as u32;
        rec.send_q = u32_at(off.tcp_write_seq).wrapping_sub(u32_at(off.tcp_snd_una));
    }
    if let Some(socket) = read::<*const u8>(sk, off.sk_socket)
        && !socket.is_null()
    {
        rec.inode = read::<u64>(socket, off.socket_ino).unwrap_or(0);
    }
}
