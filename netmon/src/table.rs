//! The live connection table: per-socket state, timing and history built from transitions,
//! reconciled against sock_diag dumps, and a bounded history of closed connections.
//!
//! Sockets are keyed by cookie, the identity both the eBPF events and sock_diag report (a
//! TIME-WAIT socket keeps the cookie of the full socket it replaces: `inet_twsk_alloc()`).

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use netmon_common::TcpState;

use crate::{decode::Transition, sock_diag::DiagSock};

/// TIME-WAIT lasts TCP_TIMEWAIT_LEN (60 s, include/net/tcp.h); the kernel reports nothing when
/// the timewait socket is created or expires.
pub const TIME_WAIT_NS: u64 = 60_000_000_000;
/// Default bound on the closed-connection history.
pub const DEFAULT_CLOSED_CAPACITY: usize = 100_000;

/// The states a socket passed through, with when it entered each (CLOSE not included).
/// Fixed size: a connection has at most 6 states on its way; longer paths keep the latest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Path {
    len: u8,
    states: [u8; Self::CAP],
    entered_ns: [u64; Self::CAP],
}

impl Path {
    const CAP: usize = 8;

    fn push(&mut self, state: TcpState, ts_ns: u64) {
        let len = usize::from(self.len);
        if len == Self::CAP {
            self.states.copy_within(1.., 0);
            self.entered_ns.copy_within(1.., 0);
            self.states[Self::CAP - 1] = state.to_kernel();
            self.entered_ns[Self::CAP - 1] = ts_ns;
        } else {
            self.states[len] = state.to_kernel();
            self.entered_ns[len] = ts_ns;
            self.len += 1;
        }
    }

    /// (state, time spent in it) for each state, the last one ending at `end_ns`.
    pub fn durations(&self, end_ns: u64) -> impl Iterator<Item = (TcpState, u64)> + '_ {
        let len = usize::from(self.len);
        (0..len).map(move |i| {
            let until = if i + 1 < len {
                self.entered_ns[i + 1]
            } else {
                end_ns
            };
            (
                TcpState::from_kernel(self.states[i]),
                until.saturating_sub(self.entered_ns[i]),
            )
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Where a socket's knowledge came from: seen from its start, or found by a dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sock {
    pub netns: u32,
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// When the socket was created (its first transition); `None` if it predates netmon.
    pub born_ns: Option<u64>,
    /// When it entered `state`; for a socket found by a dump, when the dump saw it.
    pub since_ns: u64,
    /// Whether `since_ns` is the real time of the transition (not a dump's).
    pub since_exact: bool,
    pub path: Path,
}

/// A connection that ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    pub cookie: u64,
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub born_ns: Option<u64>,
    pub closed_ns: u64,
    /// The state it left for CLOSE.
    pub last: TcpState,
    pub path: Path,
}

impl Closed {
    pub fn lifespan_ns(&self) -> Option<u64> {
        self.born_ns.map(|b| self.closed_ns.saturating_sub(b))
    }
}

#[derive(Debug)]
pub struct Table {
    live: HashMap<u64, Sock>,
    closed: VecDeque<Closed>,
    closed_capacity: usize,
    /// Closed records evicted to respect the capacity.
    pub evicted: u64,
}

impl Default for Table {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CLOSED_CAPACITY)
    }
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(closed_capacity: usize) -> Self {
        Self {
            live: HashMap::new(),
            closed: VecDeque::new(),
            closed_capacity,
            evicted: 0,
        }
    }

    /// Applies a transition; returns how long the socket spent in its previous state, when the
    /// table saw it enter that state.
    pub fn apply(&mut self, t: &Transition) -> Option<u64> {
        let prev = self.live.get(&t.cookie).copied();
        if let Some(p) = prev
            && t.ts_ns < p.since_ns
        {
            // Older than what a dump already showed: the dump wins.
            return None;
        }
        let prev_ns = prev
            .filter(|p| p.state == t.old && p.since_exact)
            .map(|p| t.ts_ns.saturating_sub(p.since_ns));
        let mut sock = prev.unwrap_or(Sock {
            netns: t.netns,
            state: t.old,
            local: t.local,
            remote: t.remote,
            // A socket first seen leaving CLOSE is being created now, and so is the child
            // socket a LISTEN -> SYN-RECV event carries.
            born_ns: (t.old == TcpState::Close
                || (t.old == TcpState::Listen && t.new == TcpState::SynRecv))
                .then_some(t.ts_ns),
            since_ns: t.ts_ns,
            since_exact: false,
            path: Path::default(),
        });
        // The connect event fires before the local port is chosen; later events have it.
        if t.local.port() != 0 || sock.local.port() == 0 {
            sock.local = t.local;
        }
        sock.remote = t.remote;
        if t.new == TcpState::Close {
            self.live.remove(&t.cookie);
            if t.old != TcpState::Close {
                self.close(t, sock);
            }
            return prev_ns;
        }
        sock.path.push(t.new, t.ts_ns);
        sock.state = t.new;
        sock.since_ns = t.ts_ns;
        sock.since_exact = true;
        self.live.insert(t.cookie, sock);
        prev_ns
    }

    fn close(&mut self, t: &Transition, sock: Sock) {
        self.push_closed(Closed {
            cookie: t.cookie,
            netns: sock.netns,
            local: sock.local,
            remote: sock.remote,
            born_ns: sock.born_ns,
            closed_ns: t.ts_ns,
            last: t.old,
            path: sock.path,
        });
        // The kernel replaces a full socket that leaves FIN-WAIT-2 or CLOSING with a timewait
        // socket of the same cookie (tcp_time_wait()) and fires no event for it.
        if matches!(t.old, TcpState::FinWait2 | TcpState::Closing) {
            let mut path = Path::default();
            path.push(TcpState::TimeWait, t.ts_ns);
            self.live.insert(
                t.cookie,
                Sock {
                    state: TcpState::TimeWait,
                    since_ns: t.ts_ns,
                    since_exact: true,
                    path,
                    ..sock
                },
            );
        }
    }

    fn push_closed(&mut self, c: Closed) {
        if self.closed_capacity == 0 {
            self.evicted += 1;
            return;
        }
        if self.closed.len() == self.closed_capacity {
            self.closed.pop_front();
            self.evicted += 1;
        }
        self.closed.push_back(c);
    }

    /// Makes the table's view of namespace `netns` equal to a dump of it that started at
    /// `t0_ns`: sockets the dump missed are gone (their CLOSE was lost, or a TIME-WAIT
    /// expired), sockets it found are added. Entries changed by an event after `t0_ns` are
    /// kept; events from during the dump, still in the ring, are applied after it in order
    /// and converge on the newest state.
    pub fn reconcile(&mut self, netns: u32, dump: &[DiagSock], t0_ns: u64) {
        let found: std::collections::HashSet<u64> = dump.iter().map(|d| d.cookie).collect();
        self.live
            .retain(|cookie, s| s.netns != netns || found.contains(cookie) || s.since_ns > t0_ns);
        for d in dump {
            let entry = self.live.entry(d.cookie).or_insert_with(|| Sock {
                netns,
                state: d.state,
                local: d.local,
                remote: d.remote,
                born_ns: None,
                since_ns: t0_ns,
                since_exact: false,
                path: Path::default(),
            });
            if entry.state != d.state && entry.since_ns <= t0_ns {
                entry.state = d.state;
                entry.since_ns = t0_ns;
                entry.since_exact = false;
            }
        }
    }

    /// Drops TIME-WAIT entries older than the kernel keeps them.
    pub fn expire(&mut self, now_ns: u64) {
        self.live.retain(|_, s| {
            s.state != TcpState::TimeWait || now_ns.saturating_sub(s.since_ns) < TIME_WAIT_NS
        });
    }

    pub fn get(&self, cookie: u64) -> Option<&Sock> {
        self.live.get(&cookie)
    }

    pub fn live(&self) -> impl Iterator<Item = (u64, &Sock)> {
        self.live.iter().map(|(c, s)| (*c, s))
    }

    /// Closed connections, oldest first.
    pub fn closed(&self) -> impl DoubleEndedIterator<Item = &Closed> {
        self.closed.iter()
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use netmon_common::AF_INET;

    use super::*;
    use crate::decode::{from_event, tests::event};

    fn at(ts: u64, old: u8, new: u8) -> Transition {
        let mut ev = event(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 1], old, new);
        ev.ts_ns = ts;
        from_event(&ev).unwrap()
    }

    fn diag(cookie: u64, state: TcpState) -> DiagSock {
        DiagSock {
            cookie,
            state,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.1:2".parse().unwrap(),
            recv_q: 0,
            send_q: 0,
            uid: 0,
            inode: 0,
            ifindex: 0,
            v6only: false,
            timer: None,
        }
    }

    #[test]
    fn time_in_previous_state_and_close_into_time_wait() {
        let mut table = Table::new();
        assert_eq!(table.apply(&at(100, 7, 2)), None, "first sight: unknown");
        assert_eq!(table.apply(&at(250, 2, 1)), Some(150));
        assert_eq!(table.get(42).map(|e| e.state), Some(TcpState::Established));
        assert_eq!(table.apply(&at(1250, 1, 4)), Some(1000));
        assert_eq!(table.apply(&at(1300, 4, 5)), Some(50));
        assert_eq!(table.apply(&at(1400, 5, 7)), Some(100));
        // The full socket closed; its timewait successor stays for 60 s.
        assert_eq!(table.get(42).map(|e| e.state), Some(TcpState::TimeWait));
        table.expire(1400 + TIME_WAIT_NS - 1);
        assert_eq!(table.len(), 1);
        table.expire(1400 + TIME_WAIT_NS);
        assert!(table.is_empty());

        let closed: Vec<_> = table.closed().collect();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].lifespan_ns(), Some(1300));
        assert_eq!(closed[0].local, "127.0.0.1:41000".parse().unwrap());
        let path: Vec<_> = closed[0].path.durations(closed[0].closed_ns).collect();
        assert_eq!(
            path,
            [
                (TcpState::SynSent, 150),
                (TcpState::Established, 1000),
                (TcpState::FinWait1, 50),
                (TcpState::FinWait2, 100),
            ]
        );
    }

    #[test]
    fn a_missed_transition_gives_no_duration() {
        let mut table = Table::new();
        table.apply(&at(100, 7, 2));
        // SYN-SENT -> ESTAB was lost: the table says SYN-SENT, the event says ESTAB -> FIN-WAIT-1.
        assert_eq!(table.apply(&at(900, 1, 4)), None);
        assert_eq!(table.get(42).map(|e| e.state), Some(TcpState::FinWait1));
    }

    #[test]
    fn closed_history_is_bounded_and_counts_evictions() {
        let mut table = Table::with_capacity(2);
        for i in 0..5u64 {
            let mut t = at(10 * i, 1, 7);
            t.cookie = i;
            table.apply(&t);
        }
        assert_eq!(table.evicted, 3);
        let kept: Vec<u64> = table.closed().map(|c| c.cookie).collect();
        assert_eq!(kept, [3, 4]);
    }

    #[test]
    fn reconcile_adds_missing_drops_stale_and_keeps_newer_events() {
        let mut table = Table::new();
        let mut stale = at(100, 7, 2);
        stale.cookie = 1; // its CLOSE was lost
        table.apply(&stale);
        let mut newer = at(600, 7, 2);
        newer.cookie = 2; // created while the dump ran
        table.apply(&newer);
        let ns = stale.netns;
        table.reconcile(ns, &[diag(3, TcpState::Listen)], 500);
        assert!(table.get(1).is_none());
        assert_eq!(table.get(2).map(|s| s.state), Some(TcpState::SynSent));
        let found = table.get(3).unwrap();
        assert_eq!(
            (found.state, found.born_ns, found.since_exact),
            (TcpState::Listen, None, false)
        );
        // Other namespaces are untouched.
        table.reconcile(ns + 1, &[], 10_000);
        assert_eq!(table.len(), 2);
        // An event older than the dump does not override it.
        let mut old = at(400, 10, 7);
        old.cookie = 3;
        assert_eq!(table.apply(&old), None);
        assert_eq!(table.get(3).map(|s| s.state), Some(TcpState::Listen));
    }
}
