//! The TCP sockets of a namespace from the `iter/tcp` BPF iterator (netmon-ebpf's `iter.rs`):
//! loading it, reading it with a request's in-kernel filter, and its records as [`DiagSock`]s.
//!
//! Why: a snapshot that dumps over sock_diag pays for a netlink message per socket and
//! filters in userspace; the iterator writes a 72-byte record per socket, and only for the
//! sockets the request's filter may select ([`netmon_common::KernelFilter::passes`], the
//! predicate the tracepoint program applies too). It carries what `ss -tan` prints; options
//! that need more (timers, tcp_info, memory, cgroups, shutdown, marks) keep sock_diag
//! ([`crate::snapshot::SnapshotArgs::iter_serves`]).
//!
//! The iterator walks the namespace of the thread that creates its fd (`bpf_iter_init_seq_net`
//! takes `current`'s), so a dump of another namespace creates it on a thread that entered
//! that namespace, as [`crate::sock_diag::dump_tcp_in_netns`] does for its socket.

use std::{
    fs::File,
    io::{self, Read},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    sync::Mutex,
};

use aya::{
    Btf, EbpfLoader,
    maps::{HashMap, MapData},
    programs::Iter,
};
use netmon_common::{
    AF_INET, AF_INET6, GLOBAL_ITER_OFFSETS, ITER_PROGRAM, ITER_WANT_INODE, IterRequest, IterSock,
    KernelFilter, MAP_ITER_FILTERS, TcpState,
};

use crate::{
    attach::{self, AttachError},
    netns::{self, Netns},
    offsets,
    sock_diag::{Cancel, DiagSock},
};

/// How much of the iterator one `read()` asks for: the records are converted chunk by chunk,
/// so a dump of a million sockets never holds its 72 MB of records at once, and a reader
/// whose client left stops between two chunks.
const CHUNK_RECORDS: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum IterError {
    #[error("loading the iter/tcp program")]
    Attach(#[from] AttachError),
    #[error("the iter/tcp program: {call} failed")]
    Bpf {
        call: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("reading the iter/tcp iterator")]
    Read(#[source] io::Error),
    #[error("entering the network namespace for the iterator")]
    Setns(#[source] io::Error),
    #[error("the iterator thread panicked")]
    ThreadPanicked,
    #[error("the iterator gave {len} bytes, not a whole number of {size}-byte records")]
    Torn { len: usize, size: usize },
    #[error("the client left: the iterator's read stopped")]
    Cancelled,
}

/// What a reader asks the iterator for besides its filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fields {
    /// The socket's inode (three dependent loads per socket in the kernel): only needed to
    /// find owners in /proc by inode.
    pub inode: bool,
}

impl Fields {
    pub const ALL: Self = Self { inode: true };
    /// What `ss -tan`'s columns and the agent's rows need (owners come from its table).
    pub const TABLE: Self = Self { inode: false };

    fn bits(self) -> u32 {
        if self.inode { ITER_WANT_INODE } else { 0 }
    }
}

/// The loaded and attached iterator: each [`TcpIter::dump`] creates one iterator from its
/// link. Shared by the agent's snapshot threads.
pub struct TcpIter {
    link: OwnedFd,
    filters: Mutex<HashMap<MapData, u32, IterRequest>>,
    /// Which bit of [`IterSock::flags`] is `skc_ipv6only`.
    v6only_bit: u8,
}

impl std::fmt::Debug for TcpIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpIter").field("link", &self.link).finish()
    }
}

impl TcpIter {
    /// Loads only the iterator program of netmon's eBPF object (the tracepoint programs stay
    /// unloaded, their maps minimal) and attaches it. Needs the privileges of the tracer.
    pub fn load() -> Result<Self, IterError> {
        let object = attach::object()?;
        if !attach::has_bpf_privileges() {
            return Err(AttachError::Privileges.into());
        }
        let kernel_btf = offsets::kernel_btf().map_err(AttachError::from)?;
        let (offsets, v6only_bit) =
            offsets::resolve_iter(&kernel_btf).map_err(AttachError::from)?;
        drop(kernel_btf);
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_ITER_OFFSETS, &offsets, true)
            // The tracer's maps are created with the object: keep them small.
            .map_max_entries(netmon_common::MAP_EVENTS, 4096)
            .map_max_entries(netmon_common::MAP_IO_OWNERS, 1)
            .load(object)
            .map_err(|e| attach::permission_or(AttachError::Load)(e))?;
        let btf = Btf::from_sys_fs().map_err(AttachError::from)?;
        let program_error = |source| AttachError::Program {
            name: ITER_PROGRAM,
            source,
        };
        let prog: &mut Iter = ebpf
            .program_mut(ITER_PROGRAM)
            .ok_or(AttachError::Missing {
                what: "program",
                name: ITER_PROGRAM,
            })?
            .try_into()
            .map_err(program_error)?;
        prog.load("tcp", &btf).map_err(program_error)?;
        let prog_fd = prog.fd().map_err(program_error)?;
        let link = link_create(prog_fd.as_fd().as_raw_fd())?;
        let filters = ebpf
            .take_map(MAP_ITER_FILTERS)
            .ok_or(AttachError::Missing {
                what: "map",
                name: MAP_ITER_FILTERS,
            })?;
        let filters = HashMap::try_from(filters).map_err(|source| AttachError::Map {
            name: MAP_ITER_FILTERS,
            source,
        })?;
        // The link holds the program, the program its maps: the object can go.
        drop(ebpf);
        // SAFETY: malloc_trim only releases free heap memory (BTF parsing peaks at tens of MB).
        unsafe { libc::malloc_trim(0) };
        Ok(Self {
            link,
            filters: Mutex::new(filters),
            v6only_bit,
        })
    }

    /// The TCP sockets of `ns` that `filter` may select (all with `None`), in the kernel's
    /// hash-table order, with every field. `filter`'s netns and cgroup are ignored: the
    /// iterator walks one namespace and does not read cgroups.
    pub fn dump(
        &self,
        ns: &Netns,
        filter: Option<KernelFilter>,
    ) -> Result<Vec<DiagSock>, IterError> {
        self.dump_with(ns, filter, Fields::ALL, &Cancel::default())
    }

    /// As [`TcpIter::dump`], reading only the optional `fields` asked for (the others are
    /// 0), and stopping with [`IterError::Cancelled`] between two reads once `cancel` is set.
    pub fn dump_with(
        &self,
        ns: &Netns,
        filter: Option<KernelFilter>,
        fields: Fields,
        cancel: &Cancel,
    ) -> Result<Vec<DiagSock>, IterError> {
        let mut out = Vec::new();
        self.dump_parts(ns, filter, fields, cancel, CHUNK_RECORDS, &mut |part| {
            out.extend(part);
            true
        })?;
        Ok(out)
    }

    /// As [`TcpIter::dump_with`], handing the sockets to `emit` in parts of `part` or more (the
    /// last with what is left) as they are read: the dump is never held whole. `emit`
    /// returning false stops the read ([`IterError::Cancelled`]). It runs on a thread that
    /// entered `ns` when that is not the caller's namespace.
    pub fn dump_parts(
        &self,
        ns: &Netns,
        filter: Option<KernelFilter>,
        fields: Fields,
        cancel: &Cancel,
        part: usize,
        emit: &mut (dyn FnMut(Vec<DiagSock>) -> bool + Send),
    ) -> Result<(), IterError> {
        let request = IterRequest {
            filter: KernelFilter {
                netns: 0,
                cgroup_id: 0,
                ..filter.unwrap_or(KernelFilter::ALL)
            },
            fields: fields.bits(),
            _pad: 0,
        };
        if netns::current_inum().ok() == Some(ns.inum) {
            return self.dump_here(request, cancel, part, emit);
        }
        let fd = ns.file().as_raw_fd();
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("netmon-iter".into())
                .spawn_scoped(scope, move || {
                    // SAFETY: `fd` is borrowed from `ns`, which outlives this scoped thread;
                    // setns changes only this thread's namespace, and the thread ends here.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        return Err(IterError::Setns(io::Error::last_os_error()));
                    }
                    self.dump_here(request, cancel, part, emit)
                })
                .map_err(IterError::Setns)?;
            worker.join().map_err(|_| IterError::ThreadPanicked)?
        })
    }

    /// Reads an iterator created on this thread, so in this thread's namespace, with
    /// `request` keyed by this thread's id for the program to find.
    fn dump_here(
        &self,
        request: IterRequest,
        cancel: &Cancel,
        part: usize,
        emit: &mut dyn FnMut(Vec<DiagSock>) -> bool,
    ) -> Result<(), IterError> {
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() } as u32;
        let _filtered = {
            let mut map = self.filters.lock().ok();
            // A full map (more readers than slots) only costs this read its kernel filter and
            // the fields it could skip: the program then reads everything.
            map.as_mut()
                .and_then(|m| m.insert(tid, request, 0).ok())
                .map(|()| FilterGuard { iter: self, tid })
        };
        let file = iter_create(self.link.as_raw_fd())?;
        read_parts(
            file,
            CHUNK_RECORDS * size_of::<IterSock>(),
            cancel,
            |chunk| parse(chunk, self.v6only_bit),
            part,
            emit,
        )
    }
}

/// Removes a reader's filter when its read ends, however it ends.
struct FilterGuard<'a> {
    iter: &'a TcpIter,
    tid: u32,
}

impl Drop for FilterGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.iter.filters.lock() {
            let _ = map.remove(&self.tid);
        }
    }
}

/// Reads `from` to its end `chunk` bytes at a time (a record split between two reads is
/// carried over), handing each run of whole records to `convert`; stops with
/// [`IterError::Cancelled`] before a read once `cancel` is set.
#[cfg(test)]
fn read_chunked(
    from: impl Read,
    chunk: usize,
    cancel: &Cancel,
    convert: impl FnMut(&[u8]) -> Result<Vec<DiagSock>, IterError>,
) -> Result<Vec<DiagSock>, IterError> {
    let mut out = Vec::new();
    read_parts(from, chunk, cancel, convert, 1, &mut |part| {
        out.extend(part);
        true
    })?;
    Ok(out)
}

/// As [`read_chunked`], handing the sockets to `emit` once `part` or more were converted (and
/// what is left at the end); `emit` returning false stops the read.
fn read_parts(
    mut from: impl Read,
    chunk: usize,
    cancel: &Cancel,
    mut convert: impl FnMut(&[u8]) -> Result<Vec<DiagSock>, IterError>,
    part: usize,
    emit: &mut dyn FnMut(Vec<DiagSock>) -> bool,
) -> Result<(), IterError> {
    const SIZE: usize = size_of::<IterSock>();
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk.max(SIZE)];
    let mut held = 0;
    loop {
        if cancel.is_cancelled() {
            return Err(IterError::Cancelled);
        }
        let n = match from.read(&mut buf[held..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(IterError::Read(e)),
        };
        if n == 0 {
            if held != 0 {
                return Err(IterError::Torn {
                    len: held,
                    size: SIZE,
                });
            }
            if !out.is_empty() && !emit(out) {
                return Err(IterError::Cancelled);
            }
            return Ok(());
        }
        held += n;
        let whole = held - held % SIZE;
        if whole == 0 {
            continue;
        }
        out.extend(convert(&buf[..whole])?);
        buf.copy_within(whole..held, 0);
        held -= whole;
        if out.len() >= part && !emit(std::mem::take(&mut out)) {
            return Err(IterError::Cancelled);
        }
    }
}

/// The iterator's records as sock_diag would report the same sockets.
pub fn parse(bytes: &[u8], v6only_bit: u8) -> Result<Vec<DiagSock>, IterError> {
    const SIZE: usize = size_of::<IterSock>();
    if !bytes.len().is_multiple_of(SIZE) {
        return Err(IterError::Torn {
            len: bytes.len(),
            size: SIZE,
        });
    }
    Ok(bytes
        .chunks_exact(SIZE)
        .filter_map(|r| {
            // SAFETY: `r` is SIZE bytes and IterSock is plain integers (any bit pattern).
            let rec: IterSock = unsafe { std::ptr::read_unaligned(r.as_ptr().cast()) };
            to_diag(&rec, v6only_bit)
        })
        .collect())
}

/// One record as a [`DiagSock`]: the fields `inet_diag_msg` has, no timer, no attributes but
/// the v6-only flag, which sock_diag sends for IPv6 sockets in LISTEN or CLOSE only.
fn to_diag(rec: &IterSock, v6only_bit: u8) -> Option<DiagSock> {
    let (local, remote) = match rec.family {
        AF_INET => {
            let ip = |a: &[u8; 16]| Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            (
                SocketAddr::V4(SocketAddrV4::new(ip(&rec.saddr), rec.sport)),
                SocketAddr::V4(SocketAddrV4::new(ip(&rec.daddr), rec.dport)),
            )
        }
        AF_INET6 => (
            SocketAddr::V6(SocketAddrV6::new(rec.saddr.into(), rec.sport, 0, 0)),
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(rec.daddr),
                rec.dport,
                0,
                0,
            )),
        ),
        _ => return None,
    };
    let state = match TcpState::from_kernel(rec.state) {
        TcpState::NewSynRecv => TcpState::SynRecv,
        s => s,
    };
    let v6only = (rec.family == AF_INET6 && matches!(state, TcpState::Listen | TcpState::Close))
        .then_some(rec.flags & (1 << v6only_bit) != 0);
    Some(DiagSock {
        cookie: rec.cookie,
        state,
        local,
        remote,
        recv_q: rec.recv_q,
        send_q: rec.send_q,
        uid: rec.uid,
        // sock_diag's idiag_inode is a u32 too.
        inode: rec.inode as u32,
        ifindex: rec.ifindex,
        v6only: v6only == Some(true),
        timer: None,
        attrs: crate::diag_ext::Attrs {
            v6only,
            ..Default::default()
        },
    })
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// `BPF_LINK_CREATE` for an iterator program: aya 0.14 gives its link's fd only by turning
/// it into one iterator (`IterLink::into_file`), and a snapshot needs one per request.
fn link_create(prog_fd: i32) -> Result<OwnedFd, IterError> {
    #[repr(C)]
    #[derive(Default)]
    struct LinkCreate {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        iter_info: u64,
        iter_info_len: u32,
        _pad: u32,
    }
    let attr = LinkCreate {
        prog_fd: prog_fd as u32,
        attach_type: BPF_TRACE_ITER,
        ..Default::default()
    };
    bpf(BPF_LINK_CREATE, &attr, "bpf(BPF_LINK_CREATE)")
}

/// `BPF_ITER_CREATE`: a new iterator (a seq_file) over the namespace of the calling thread.
fn iter_create(link_fd: i32) -> Result<File, IterError> {
    #[repr(C)]
    struct IterCreate {
        link_fd: u32,
        flags: u32,
    }
    let attr = IterCreate {
        link_fd: link_fd as u32,
        flags: 0,
    };
    bpf(BPF_ITER_CREATE, &attr, "bpf(BPF_ITER_CREATE)").map(File::from)
}

fn bpf<T>(cmd: libc::c_long, attr: &T, call: &'static str) -> Result<OwnedFd, IterError> {
    // SAFETY: `attr` is a live, fully initialised attribute struct of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>() as u32) };
    if fd < 0 {
        return Err(IterError::Bpf {
            call,
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(family: u8, state: u8, flags: u8) -> IterSock {
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        if family == AF_INET {
            saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
            daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        } else {
            saddr[15] = 1;
        }
        IterSock {
            cookie: 42,
            inode: (7u64 << 32) | 1234,
            saddr,
            daddr,
            recv_q: 3,
            send_q: 128,
            uid: 1000,
            ifindex: 0,
            sport: 8080,
            dport: 0,
            family,
            state,
            flags,
            _pad: 0,
        }
    }

    fn bytes(recs: &[IterSock]) -> Vec<u8> {
        recs.iter()
            .flat_map(|r| {
                // SAFETY: IterSock is plain integers without padding (size asserted).
                unsafe {
                    std::slice::from_raw_parts(
                        (r as *const IterSock).cast::<u8>(),
                        size_of::<IterSock>(),
                    )
                }
                .to_vec()
            })
            .collect()
    }

    #[test]
    fn records_read_as_sock_diag_reports_the_same_sockets() {
        let socks = parse(
            &bytes(&[
                record(AF_INET, 1, 0),
                record(AF_INET6, 10, 1 << 5),
                record(AF_INET6, 10, 0),
                record(AF_INET6, 1, 1 << 5),
                record(AF_INET, 12, 0),
            ]),
            5,
        )
        .unwrap();
        assert_eq!(socks.len(), 5);
        assert_eq!(socks[0].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(socks[0].remote, "127.0.0.2:0".parse().unwrap());
        assert_eq!((socks[0].recv_q, socks[0].send_q), (3, 128));
        assert_eq!(socks[0].inode, 1234, "sock_diag's inode is 32 bits");
        assert_eq!(socks[0].state, TcpState::Established);
        assert_eq!(socks[1].local, "[::1]:8080".parse().unwrap());
        assert!(socks[1].v6only);
        assert_eq!(socks[1].attrs.v6only, Some(true));
        assert!(!socks[2].v6only);
        assert_eq!(socks[2].attrs.v6only, Some(false), "a dual-stack listener");
        assert_eq!(
            socks[3].attrs.v6only, None,
            "sock_diag reports v6only for LISTEN and CLOSE only"
        );
        assert_eq!(socks[4].state, TcpState::SynRecv, "a request socket");
    }

    /// Hands out its bytes `step` at a time, as a seq_file may end a read mid-record.
    struct Dribble<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn records_split_between_reads_are_carried_to_the_next_chunk() {
        let recs: Vec<IterSock> = (0..50u64)
            .map(|i| IterSock {
                cookie: i,
                ..record(AF_INET, 1, 0)
            })
            .collect();
        let b = bytes(&recs);
        for (step, chunk) in [(1, 72), (50, 144), (100, 72 * 7), (7200, 100), (4000, 7200)] {
            let mut chunks = 0;
            let socks = read_chunked(
                Dribble { bytes: &b, step },
                chunk,
                &Cancel::default(),
                |c| {
                    chunks += 1;
                    parse(c, 0)
                },
            )
            .unwrap();
            let cookies: Vec<u64> = socks.iter().map(|s| s.cookie).collect();
            assert_eq!(
                cookies,
                (0..50).collect::<Vec<_>>(),
                "step {step}, chunk {chunk}"
            );
            assert!(chunks > 1 || b.len() <= chunk, "converted as it reads");
        }
        let torn = read_chunked(
            Dribble {
                bytes: &b[..b.len() - 5],
                step: 100,
            },
            144,
            &Cancel::default(),
            |c| parse(c, 0),
        );
        assert!(matches!(torn, Err(IterError::Torn { len: 67, .. })));
    }

    #[test]
    fn a_cancelled_read_stops_before_the_next_chunk() {
        let b = bytes(&vec![record(AF_INET, 1, 0); 100]);
        let cancel = Cancel::default();
        let mut converted = 0;
        let result = read_chunked(
            Dribble {
                bytes: &b,
                step: 720,
            },
            720,
            &cancel,
            |c| {
                converted += 1;
                cancel.cancel();
                parse(c, 0)
            },
        );
        assert!(matches!(result, Err(IterError::Cancelled)));
        assert_eq!(converted, 1, "nothing read after the cancel");
    }

    #[test]
    fn a_torn_read_and_unknown_families_are_not_rows() {
        let mut b = bytes(&[record(AF_INET, 1, 0)]);
        b.pop();
        assert!(matches!(parse(&b, 0), Err(IterError::Torn { len: 71, .. })));
        assert!(parse(&bytes(&[record(1, 1, 0)]), 0).unwrap().is_empty());
    }
}
