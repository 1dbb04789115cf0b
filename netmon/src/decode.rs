//! Turns the raw ring-buffer records of the eBPF program into typed transitions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netmon_common::{AF_INET, AF_INET6, CgroupSource, EventKind, SockEvent, TcpState};

/// The task that was on the CPU when the kernel fired the transition. For transitions run from
/// softirq or timers this is not the socket's owner (often the peer, or pid 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    comm: [u8; 16],
}

impl Task {
    pub fn new(pid: u32, tid: u32, uid: u32, comm: &str) -> Self {
        let mut buf = [0u8; 16];
        let n = comm.len().min(15);
        buf[..n].copy_from_slice(&comm.as_bytes()[..n]);
        Self {
            pid,
            tid,
            uid,
            comm: buf,
        }
    }

    /// The command name (at most 15 bytes, as the kernel keeps it).
    pub fn comm(&self) -> &str {
        comm_str(&self.comm)
    }

    /// The comm as the kernel gave it (NUL-padded), for comparing without UTF-8 checks.
    pub fn comm_bytes(&self) -> &[u8; 16] {
        &self.comm
    }
}

fn comm_str(raw: &[u8; 16]) -> &str {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    match std::str::from_utf8(&raw[..end]) {
        Ok(s) => s,
        // A comm is whatever bytes a process set with prctl(PR_SET_NAME); keep the valid prefix.
        Err(e) => std::str::from_utf8(&raw[..e.valid_up_to()]).unwrap_or_default(),
    }
}

/// One TCP state transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Socket cookie: unique per boot, equal to sock_diag's `idiag_cookie`.
    pub cookie: u64,
    pub netns: u32,
    pub old: TcpState,
    pub new: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub task: Task,
    /// Bytes the peer acknowledged and bytes received, read as the socket moves to CLOSE.
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// The cgroup v2 id the kernel attributed the transition to (0: none) and how.
    pub cgroup_id: u64,
    pub cgroup_source: CgroupSource,
}

/// Something the kernel said about a socket that is not a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintKind {
    /// `task` did I/O on the socket, so it belongs to `task`'s process.
    Io,
    ResetSent,
    ResetReceived,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hint {
    pub kind: HintKind,
    pub ts_ns: u64,
    pub cookie: u64,
    pub netns: u32,
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub task: Task,
    pub cgroup_id: u64,
    pub cgroup_source: CgroupSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Transition(Transition),
    Hint(Hint),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring record of {len} bytes, expected {expected}")]
    Size { len: usize, expected: usize },
    #[error("unknown address family {family}")]
    Family { family: u8 },
    #[error("unknown event kind {kind}")]
    Kind { kind: u8 },
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let expected = size_of::<SockEvent>();
    if bytes.len() < expected {
        return Err(DecodeError::Size {
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length is checked, SockEvent is plain integers and byte arrays, and
    // read_unaligned makes no alignment assumption about the ring's memory.
    let ev: SockEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let kind = match EventKind::from_u8(ev.kind) {
        Some(EventKind::State) => return from_event(&ev).map(Event::Transition),
        Some(EventKind::Io) => HintKind::Io,
        Some(EventKind::ResetSent) => HintKind::ResetSent,
        Some(EventKind::ResetReceived) => HintKind::ResetReceived,
        None => return Err(DecodeError::Kind { kind: ev.kind }),
    };
    let t = from_event(&ev)?;
    Ok(Event::Hint(Hint {
        kind,
        ts_ns: t.ts_ns,
        cookie: t.cookie,
        netns: t.netns,
        state: t.new,
        local: t.local,
        remote: t.remote,
        task: t.task,
        cgroup_id: t.cgroup_id,
        cgroup_source: t.cgroup_source,
    }))
}

/// Decodes a record known to be a transition.
pub fn from_event(ev: &SockEvent) -> Result<Transition, DecodeError> {
    let (local, remote) = match ev.family {
        AF_INET => (IpAddr::V4(v4(&ev.saddr)), IpAddr::V4(v4(&ev.daddr))),
        AF_INET6 => (
            IpAddr::V6(Ipv6Addr::from(ev.saddr)),
            IpAddr::V6(Ipv6Addr::from(ev.daddr)),
        ),
        family => return Err(DecodeError::Family { family }),
    };
    Ok(Transition {
        ts_ns: ev.ts_ns,
        cookie: ev.cookie,
        netns: ev.netns,
        old: TcpState::from_kernel(ev.oldstate),
        new: TcpState::from_kernel(ev.newstate),
        local: SocketAddr::new(local, ev.sport),
        remote: SocketAddr::new(remote, ev.dport),
        task: Task {
            pid: ev.pid,
            tid: ev.tid,
            uid: ev.uid,
            comm: ev.comm,
        },
        bytes_acked: ev.bytes_acked,
        bytes_received: ev.bytes_received,
        cgroup_id: ev.cgroup_id,
        cgroup_source: if ev.cgroup_id == 0 {
            CgroupSource::None
        } else {
            CgroupSource::from_u8(ev.cgroup_source)
        },
    })
}

fn v4(raw: &[u8; 16]) -> Ipv4Addr {
    Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record as the eBPF program writes it.
    pub(crate) fn event(family: u8, saddr: &[u8], daddr: &[u8], old: u8, new: u8) -> SockEvent {
        let mut ev = SockEvent {
            ts_ns: 1_000,
            cookie: 42,
            netns: 4026531840,
            pid: 7,
            tid: 8,
            uid: 0,
            sport: 41000,
            dport: 8080,
            family,
            kind: 0,
            bytes_acked: 0,
            bytes_received: 0,
            oldstate: old,
            newstate: new,
            saddr: [0; 16],
            daddr: [0; 16],
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            cgroup_id: 0,
            cgroup_source: 0,
            _pad: [0; 7],
        };
        ev.saddr[..saddr.len()].copy_from_slice(saddr);
        ev.daddr[..daddr.len()].copy_from_slice(daddr);
        ev
    }

    fn bytes(ev: &SockEvent) -> Vec<u8> {
        // SAFETY: SockEvent is plain data without padding.
        unsafe { std::slice::from_raw_parts((ev as *const SockEvent).cast::<u8>(), 120) }.to_vec()
    }

    fn transition(bytes: &[u8]) -> Result<Transition, DecodeError> {
        match decode(bytes)? {
            Event::Transition(t) => Ok(t),
            Event::Hint(h) => panic!("expected a transition, got {h:?}"),
        }
    }

    #[test]
    fn decodes_hints_with_the_current_state() {
        let mut ev = event(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 2], 1, 1);
        ev.kind = EventKind::ResetReceived as u8;
        let Ok(Event::Hint(h)) = decode(&bytes(&ev)) else {
            panic!("not a hint")
        };
        assert_eq!(
            (h.kind, h.state, h.cookie),
            (HintKind::ResetReceived, TcpState::Established, 42)
        );
        ev.kind = 9;
        assert_eq!(decode(&bytes(&ev)), Err(DecodeError::Kind { kind: 9 }));
    }

    #[test]
    fn decodes_ipv4() {
        let ev = event(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 2], 2, 1);
        let t = transition(&bytes(&ev)).unwrap();
        assert_eq!(t.local, "127.0.0.1:41000".parse().unwrap());
        assert_eq!(t.remote, "127.0.0.2:8080".parse().unwrap());
        assert_eq!((t.old, t.new), (TcpState::SynSent, TcpState::Established));
        assert_eq!(t.task.comm(), "curl");
        assert_eq!((t.task.pid, t.task.tid, t.cookie), (7, 8, 42));
    }

    #[test]
    fn decodes_ipv6_and_keeps_v4_mapped_as_v6() {
        let lo6 = Ipv6Addr::LOCALHOST.octets();
        let t = transition(&bytes(&event(AF_INET6, &lo6, &lo6, 10, 3))).unwrap();
        assert_eq!(t.local, "[::1]:41000".parse().unwrap());
        assert_eq!((t.old, t.new), (TcpState::Listen, TcpState::SynRecv));

        let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
        let t = transition(&bytes(&event(AF_INET6, &mapped, &mapped, 1, 4))).unwrap();
        assert_eq!(t.remote, "[::ffff:127.0.0.1]:8080".parse().unwrap());
    }

    #[test]
    fn unknown_states_are_kept_not_guessed() {
        let t = transition(&bytes(&event(
            AF_INET,
            &[1, 2, 3, 4],
            &[4, 3, 2, 1],
            0,
            200,
        )))
        .unwrap();
        assert_eq!(t.old, TcpState::Unknown(0));
        assert_eq!(t.new, TcpState::Unknown(200));
    }

    #[test]
    fn rejects_short_records_and_unknown_families() {
        assert_eq!(
            decode(&[0u8; 10]),
            Err(DecodeError::Size {
                len: 10,
                expected: 120
            })
        );
        let ev = event(1, &[], &[], 1, 2);
        assert_eq!(decode(&bytes(&ev)), Err(DecodeError::Family { family: 1 }));
    }

    #[test]
    fn comm_with_invalid_utf8_keeps_the_valid_prefix() {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(b"ab\xffc");
        assert_eq!(comm_str(&raw), "ab");
        assert_eq!(
            Task::new(1, 1, 0, "a-very-long-command-name").comm(),
            "a-very-long-com"
        );
    }
}
