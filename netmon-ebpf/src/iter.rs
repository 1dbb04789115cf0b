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
        generated::{
            bpf_get_socket_cookie, bpf_seq_write, bpf_skc_to_tcp_sock, bpf_skc_to_tcp_timewait_sock,
        },
    },
    macros::map,
    maps::HashMap,
};
use netmon_common::{
    AF_INET, FilterFields, ITER_FILTER_SLOTS, ITER_WANT_INODE, IterOffsets, IterRequest, IterSock,
};

use crate::{load, read};

const TCP_LISTEN: u8 = 10;
const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;
const TCP_SYN_RECV: u8 = 3;

/// The request of each reader (its filter and the optional fields it wants), by its thread
/// id: an iterator has no parameters of its own, and the program runs in the `read()` of the
/// thread that reads it. A reader without one gets every socket with every field.
#[map]
static ITER_FILTERS: HashMap<u32, IterRequest> = HashMap::with_max_entries(ITER_FILTER_SLOTS, 0);

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
    socket_file: 0,
    file_inode: 0,
    inode_ino: 0,
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
    // out there. The helpers give typed pointers (NULL for another kind of socket), so the
    // fields past `sock_common` are direct loads the verifier checks against BTF.
    // SAFETY: `sk` is the BTF-typed `sock_common` pointer the helpers accept.
    let (tcp, tw) = unsafe {
        (
            bpf_skc_to_tcp_sock(sk as *mut c_void) as *const u8,
            if kstate == TCP_TIME_WAIT {
                bpf_skc_to_tcp_timewait_sock(sk as *mut c_void) as *const u8
            } else {
                core::ptr::null()
            },
        )
    };
    let kstate = if tw.is_null() {
        kstate
    } else {
        // SAFETY: a `struct tcp_timewait_sock *`, whose `inet_timewait_sock` is at offset 0.
        unsafe { load::<u8>(tw, off.tw_substate) }
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
    let want = match unsafe { ITER_FILTERS.get(tid) } {
        Some(request) => {
            // The reader zeroes netns and cgroup in its filter: the iterator walks one
            // namespace, and the cgroup is not read here.
            if !request.filter.passes(&fields) {
                return None;
            }
            request.fields
        }
        None => ITER_WANT_INODE,
    };
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
    if !tcp.is_null() {
        full_socket(tcp, &off, kstate, want, &mut rec);
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

/// What only a full socket has: queues as `tcp_diag_get_info()` computes them, the v6-only
/// bit, and the inode if `want` has [`ITER_WANT_INODE`]. `tp` is the `struct tcp_sock *` of
/// `bpf_skc_to_tcp_sock()`: every load but the last resort for the inode is a direct one the
/// verifier checks against BTF (measured: the same fields through `bpf_probe_read_kernel` were
/// 15 % of a snapshot's time at 10k sockets).
#[inline(always)]
fn full_socket(tp: *const u8, off: &IterOffsets, state: u8, want: u32, rec: &mut IterSock) {
    // SAFETY: `tp` is a BTF-typed `struct tcp_sock *` (non-NULL), which starts with `struct
    // sock` and so `sock_common`: each offset is a field of it of the type loaded (offsets
    // resolved from BTF).
    unsafe {
        rec.flags = load::<u8>(tp, off.skc_ipv6only_byte);
        if state == TCP_LISTEN {
            rec.recv_q = load::<u32>(tp, off.sk_ack_backlog);
            rec.send_q = load::<u32>(tp, off.sk_max_ack_backlog);
        } else {
            let unread =
                load::<u32>(tp, off.tcp_rcv_nxt).wrapping_sub(load::<u32>(tp, off.tcp_copied_seq));
            rec.recv_q = (unread as i32).max(0) as u32;
            rec.send_q =
                load::<u32>(tp, off.tcp_write_seq).wrapping_sub(load::<u32>(tp, off.tcp_snd_una));
        }
    }
    if want & ITER_WANT_INODE == 0 {
        return;
    }
    // SAFETY: as above; `sk_socket` is a `struct socket *`, its `file` a `struct file *`, whose
    // `f_inode` is a `struct inode *` (each BTF-typed, checked for NULL before use).
    unsafe {
        let socket: *const u8 = load(tp, off.sk_socket);
        if socket.is_null() {
            return;
        }
        let file: *const u8 = load(socket, off.socket_file);
        rec.inode = if file.is_null() {
            read::<u64>(socket, off.socket_ino).unwrap_or(0)
        } else {
            let inode: *const u8 = load(file, off.file_inode);
            if inode.is_null() {
                0
            } else {
                load::<u64>(inode, off.inode_ino)
            }
        };
    }
}
