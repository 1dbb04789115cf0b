//! Gives a newly accepted socket its own identity at its first transition, on kernels that
//! report that transition before the socket has one.
//!
//! The kernel fires LISTEN -> SYN-RECV from `inet_csk_clone_lock()` just after copying the
//! listener into the new child socket, before it sets the child's ports, addresses and cookie.
//! On such kernels (measured on Debian's 6.1 and 6.12; 6.18 sets them first) that record carries
//! the listener's addresses, a peer port of 0, and either the listener's cookie (copied with the
//! rest, once the listener has one: a sock_diag dump gives it one) or a cookie the kernel
//! replaces right after. Taken as it is, the record would move the listener to SYN-RECV and the
//! child's later transitions would start from nowhere.
//!
//! A real child always has a peer port, so a LISTEN -> SYN-RECV record without one is held
//! until the child's next transition (SYN-RECV -> ESTAB, or -> CLOSE if it fails), which the
//! kernel makes in the same softirq right after; the held record then takes that transition's
//! cookie, addresses and ports, and both go on in order. Children of one listener are told
//! apart by the task on the CPU (both records come from the same softirq), else the oldest is
//! taken: all of them have the same listener, so at worst two children swap the time of their
//! first transition. A held record whose follower never comes (filtered out in the kernel, or
//! lost) goes on unchanged once the ring is empty and it is [`HOLD_NS`] old, and is counted.

use std::collections::VecDeque;

use netmon_common::{EventKind, SockEvent, TcpState};

/// How long a record waits for its socket's next transition, by event time, once the ring is
/// empty: the follower comes within microseconds; a lagging reader is not a reason to give up.
pub const HOLD_NS: u64 = 200_000_000;
/// Most records held at once (a burst of handshakes): beyond it the oldest goes on unchanged.
const MAX_HELD: usize = 4096;

const LISTEN: u8 = TcpState::Listen.to_kernel();
const SYN_RECV: u8 = TcpState::SynRecv.to_kernel();

/// Holds and repairs early LISTEN -> SYN-RECV records; see the module docs.
#[derive(Debug, Default)]
pub struct Clones {
    held: VecDeque<SockEvent>,
    /// Held records passed on unchanged, their follower never seen.
    pub unpaired: u64,
    /// Held records given their socket's identity.
    pub repaired: u64,
}

impl Clones {
    /// Passes one ring record to `out`, with any held record it completes first; holds it
    /// instead if it is an early LISTEN -> SYN-RECV.
    pub fn push(&mut self, record: &[u8], out: &mut impl FnMut(&[u8])) {
        let Some(ev) = read(record) else {
            out(record);
            return;
        };
        if ev.kind != EventKind::State as u8 {
            out(record);
            return;
        }
        if ev.oldstate == LISTEN && ev.newstate == SYN_RECV && ev.dport == 0 {
            if self.held.len() == MAX_HELD
                && let Some(oldest) = self.held.pop_front()
            {
                self.unpaired += 1;
                out(bytes(&oldest));
            }
            self.held.push_back(ev);
            return;
        }
        if ev.oldstate == SYN_RECV
            && let Some(i) = self.follower_of(&ev)
            && let Some(mut first) = self.held.remove(i)
        {
            first.cookie = ev.cookie;
            first.saddr = ev.saddr;
            first.daddr = ev.daddr;
            first.sport = ev.sport;
            first.dport = ev.dport;
            first.family = ev.family;
            self.repaired += 1;
            out(bytes(&first));
        }
        out(record);
    }

    /// The held record that `next` (a transition out of SYN-RECV) follows: same namespace and
    /// local port, preferably made by the same task.
    fn follower_of(&self, next: &SockEvent) -> Option<usize> {
        let candidates = || {
            self.held
                .iter()
                .enumerate()
                .filter(|(_, h)| h.netns == next.netns && h.sport == next.sport)
        };
        candidates()
            .find(|(_, h)| h.tid == next.tid)
            .or_else(|| candidates().next())
            .map(|(i, _)| i)
    }

    /// Passes on, unchanged, the held records that waited [`HOLD_NS`] by `now_ns` (the
    /// events' clock, CLOCK_MONOTONIC). Call it only once the ring is empty.
    pub fn expire(&mut self, now_ns: u64, out: &mut impl FnMut(&[u8])) {
        while let Some(first) = self.held.front()
            && first.ts_ns.saturating_add(HOLD_NS) <= now_ns
        {
            let first = self.held.pop_front().expect("front exists");
            self.unpaired += 1;
            out(bytes(&first));
        }
    }

    /// Records waiting for their follower.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

fn read(record: &[u8]) -> Option<SockEvent> {
    (record.len() >= size_of::<SockEvent>()).then(|| {
        // SAFETY: the length is checked; SockEvent is plain integers and byte arrays, and
        // read_unaligned makes no alignment assumption.
        unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<SockEvent>()) }
    })
}

fn bytes(ev: &SockEvent) -> &[u8] {
    // SAFETY: SockEvent is plain integers and byte arrays without padding (size asserted in
    // netmon-common); the slice borrows `ev`.
    unsafe {
        std::slice::from_raw_parts(
            (ev as *const SockEvent).cast::<u8>(),
            size_of::<SockEvent>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    use TcpState::*;
    use netmon_common::{AF_INET, AF_INET6};

    use super::*;
    use crate::{
        decode::{Event, Transition, decode},
        table::Table,
    };

    const NETNS: u32 = 4026532300;
    const LISTENER: u64 = 0x1000;
    const PORT: u16 = 8080;

    /// A transition record as the eBPF program writes it.
    fn rec(
        ts_ns: u64,
        cookie: u64,
        (old, new): (TcpState, TcpState),
        local: SocketAddr,
        remote: SocketAddr,
        tid: u32,
    ) -> SockEvent {
        let v6 = |a: SocketAddr| match a {
            SocketAddr::V4(a) => a.ip().to_ipv6_mapped().octets(),
            SocketAddr::V6(a) => a.ip().octets(),
        };
        SockEvent {
            ts_ns,
            cookie,
            bytes_acked: 0,
            bytes_received: 0,
            netns: NETNS,
            pid: tid,
            tid,
            uid: 0,
            sport: local.port(),
            dport: remote.port(),
            family: AF_INET6,
            kind: EventKind::State as u8,
            oldstate: old.to_kernel(),
            newstate: new.to_kernel(),
            saddr: v6(local),
            daddr: v6(remote),
            comm: [0; 16],
            cgroup_id: 0,
            cgroup_source: 0,
            _pad: [0; 7],
        }
    }

    fn any() -> SocketAddr {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, PORT))
    }
    fn nowhere() -> SocketAddr {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    }
    fn server() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST.to_ipv6_mapped(), PORT))
    }
    fn client(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST.to_ipv6_mapped(), port))
    }

    /// What Debian's 6.12 reported for three accepted connections to a dual-stack listener
    /// on [::]:8080 after a sock_diag dump gave the listener its cookie: each child's
    /// LISTEN -> SYN-RECV carries the listener's cookie, its addresses and no peer port; the
    /// child's own cookie and addresses appear at SYN-RECV -> ESTAB. `first_cookie` makes the
    /// other shape: a cookie of the moment, replaced right after.
    fn linux_6_12(first_cookie: impl Fn(u64) -> u64) -> Vec<SockEvent> {
        let mut evs = vec![rec(100, LISTENER, (Close, Listen), any(), nowhere(), 1)];
        for i in 0..3u64 {
            let ts = 1_000 * (i + 1);
            let tid = 50 + i as u32;
            let child = 0x2000 + i;
            let port = 40000 + i as u16;
            let (s, c) = (server(), client(port));
            evs.extend([
                rec(ts, 0x3000 + i, (Close, SynSent), client(0), s, tid),
                rec(ts + 1, 0x3000 + i, (SynSent, Established), c, s, tid),
                rec(
                    ts + 2,
                    first_cookie(i),
                    (Listen, SynRecv),
                    any(),
                    nowhere(),
                    tid,
                ),
                rec(ts + 3, child, (SynRecv, Established), s, c, tid),
                rec(ts + 4, 0x3000 + i, (Established, FinWait1), c, s, tid),
                rec(ts + 5, child, (Established, CloseWait), s, c, tid),
                rec(ts + 6, 0x3000 + i, (FinWait1, FinWait2), c, s, tid),
                rec(ts + 7, child, (CloseWait, LastAck), s, c, 1),
                rec(ts + 8, child, (LastAck, Close), s, c, tid),
                rec(ts + 9, 0x3000 + i, (FinWait2, Close), c, s, 1),
            ]);
        }
        evs
    }

    fn run(clones: &mut Clones, evs: &[SockEvent]) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut sink = |b: &[u8]| match decode(b) {
            Ok(Event::Transition(t)) => out.push(t),
            other => panic!("not a transition: {other:?}"),
        };
        for ev in evs {
            clones.push(bytes(ev), &mut sink);
        }
        out
    }

    fn children(out: &[Transition]) -> Vec<Vec<&Transition>> {
        let mut cookies: Vec<u64> = out
            .iter()
            .filter(|t| t.local.port() == PORT && t.old != Close && t.new != Listen)
            .map(|t| t.cookie)
            .collect();
        cookies.dedup();
        cookies.sort();
        cookies.dedup();
        cookies
            .iter()
            .map(|c| out.iter().filter(|t| t.cookie == *c).collect())
            .collect()
    }

    fn check_repaired(evs: Vec<SockEvent>) {
        let mut clones = Clones::default();
        let out = run(&mut clones, &evs);
        assert_eq!(out.len(), evs.len(), "nothing dropped, nothing added");
        assert_eq!((clones.repaired, clones.unpaired, clones.held()), (3, 0, 0));
        let kids = children(&out);
        assert_eq!(kids.len(), 3, "three children, each its own: {kids:#?}");
        for (i, kid) in kids.iter().enumerate() {
            let states: Vec<_> = kid.iter().map(|t| (t.old, t.new)).collect();
            assert_eq!(
                states,
                [
                    (Listen, SynRecv),
                    (SynRecv, Established),
                    (Established, CloseWait),
                    (CloseWait, LastAck),
                    (LastAck, Close)
                ],
                "child {i}"
            );
            for t in kid {
                assert_eq!((t.local, t.remote), (server(), client(40000 + i as u16)));
            }
            assert_eq!(
                kid[0].ts_ns,
                1_000 * (i as u64 + 1) + 2,
                "its own first time"
            );
        }
        // The table: the listener stays a listener, and nothing is taken for a duplicate.
        let mut table = Table::new();
        for t in &out {
            assert!(!table.apply(t).duplicate, "{t:?}");
        }
        assert_eq!(table.duplicates, 0);
        assert_eq!(table.get(LISTENER).map(|s| s.state), Some(Listen));
    }

    #[test]
    fn children_carrying_the_listeners_cookie_get_their_own_identity() {
        check_repaired(linux_6_12(|_| LISTENER));
    }

    #[test]
    fn children_carrying_a_passing_cookie_get_their_lasting_one() {
        check_repaired(linux_6_12(|i| 0x9000 + i));
    }

    #[test]
    fn interleaved_handshakes_pair_by_task() {
        let (s, c1, c2) = (server(), client(40001), client(40002));
        let evs = [
            rec(10, LISTENER, (Listen, SynRecv), any(), nowhere(), 71),
            rec(11, LISTENER, (Listen, SynRecv), any(), nowhere(), 72),
            rec(12, 0x22, (SynRecv, Established), s, c2, 72),
            rec(13, 0x11, (SynRecv, Established), s, c1, 71),
        ];
        let out = run(&mut Clones::default(), &evs);
        let firsts: Vec<_> = out
            .iter()
            .filter(|t| t.old == Listen)
            .map(|t| (t.ts_ns, t.cookie, t.remote))
            .collect();
        assert_eq!(firsts, [(11, 0x22, c2), (10, 0x11, c1)]);
    }

    #[test]
    fn kernels_that_report_the_child_complete_pass_unchanged() {
        // 6.18: the child's own cookie and addresses at LISTEN -> SYN-RECV.
        let (s, c) = (server(), client(40000));
        let evs = [
            rec(10, 0x11, (Listen, SynRecv), s, c, 7),
            rec(11, 0x11, (SynRecv, Established), s, c, 7),
        ];
        let mut clones = Clones::default();
        let out = run(&mut clones, &evs);
        assert_eq!(out[0].cookie, 0x11);
        assert_eq!((out[0].local, out[0].remote), (s, c));
        assert_eq!((clones.repaired, clones.held()), (0, 0));
    }

    #[test]
    fn a_record_whose_follower_never_comes_goes_on_unchanged_and_counted() {
        let mut clones = Clones::default();
        let held = [rec(1_000, LISTENER, (Listen, SynRecv), any(), nowhere(), 7)];
        assert!(run(&mut clones, &held).is_empty());
        let mut out = Vec::new();
        clones.expire(1_000 + HOLD_NS - 1, &mut |b| out.push(b.to_vec()));
        assert!(out.is_empty(), "not yet");
        clones.expire(1_000 + HOLD_NS, &mut |b| out.push(b.to_vec()));
        assert_eq!(out, [bytes(&held[0]).to_vec()]);
        assert_eq!((clones.unpaired, clones.held()), (1, 0));
        // Fed to the table, it does not turn the listener into a child.
        let mut table = Table::new();
        table.apply(&decode_t(bytes(&rec(
            10,
            LISTENER,
            (Close, Listen),
            any(),
            nowhere(),
            1,
        ))));
        table.apply(&decode_t(&out[0]));
        assert_eq!(table.get(LISTENER).map(|s| s.state), Some(Listen));
    }

    #[test]
    fn other_records_pass_through_untouched() {
        let mut clones = Clones::default();
        let mut hint = rec(5, 0x11, (Established, Established), server(), client(1), 7);
        hint.kind = EventKind::Io as u8;
        let mut out = Vec::new();
        clones.push(bytes(&hint), &mut |b| out.push(b.to_vec()));
        clones.push(&[1, 2, 3], &mut |b| out.push(b.to_vec()));
        let mut v4 = rec(6, 0x12, (SynRecv, Established), server(), client(2), 7);
        v4.family = AF_INET;
        clones.push(bytes(&v4), &mut |b| out.push(b.to_vec()));
        assert_eq!(
            out,
            [bytes(&hint).to_vec(), vec![1, 2, 3], bytes(&v4).to_vec()]
        );
    }

    fn decode_t(b: &[u8]) -> Transition {
        match decode(b) {
            Ok(Event::Transition(t)) => t,
            other => panic!("{other:?}"),
        }
    }
}
