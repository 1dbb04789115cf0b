//! The live connection table: per-socket state, timing and history built from transitions,
//! reconciled against sock_diag dumps, and a bounded history of closed connections.
//!
//! Sockets are keyed by cookie, the identity both the eBPF events and sock_diag report (a
//! TIME-WAIT socket keeps the cookie of the full socket it replaces: `inet_twsk_alloc()`).
//!
//! Owners. The kernel runs most transitions outside the owning process (softirq: on loopback
//! the peer's task; timers: pid 0), so the task of an event is trusted only for the
//! transitions a process makes itself: connect (CLOSE -> SYN-SENT), listen (CLOSE -> LISTEN),
//! close or shutdown (ESTAB -> FIN-WAIT-1, CLOSE-WAIT -> LAST-ACK). An accepted socket takes
//! its listener's owner until its own process does I/O on it (the `Io` hint from
//! `sock_send_length`/`sock_recv_length`, which run in the process). Sockets that predate
//! netmon get their owner, with the fd, from one /proc scan at start. The owner is unknown for
//! a socket netmon saw neither created nor used, and found by no scan.

use std::{collections::VecDeque, net::SocketAddr};

use netmon_common::{CgroupSource, TcpState};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::{
    decode::{Event, Hint, HintKind, Task, Transition},
    procfs::SocketOwners,
    records::{Glance, PackedAddr, PushClosed, Records, SlotMarks, shrink_map},
    sock_diag::DiagSock,
};

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
    /// When the first state was entered; the others as microseconds after it (u32: 71
    /// minutes, saturating), which keeps an entry small: the agent holds 100k+ of them.
    first_ns: u64,
    entered_us: [u32; Self::CAP],
}

impl Path {
    pub(crate) const CAP: usize = 8;

    pub(crate) fn push(&mut self, state: TcpState, ts_ns: u64) {
        if self.len == 0 {
            self.first_ns = ts_ns;
        }
        let offset = u32::try_from(ts_ns.saturating_sub(self.first_ns) / 1_000).unwrap_or(u32::MAX);
        let len = usize::from(self.len);
        if len == Self::CAP {
            self.states.copy_within(1.., 0);
            self.entered_us.copy_within(1.., 0);
            self.states[Self::CAP - 1] = state.to_kernel();
            self.entered_us[Self::CAP - 1] = offset;
        } else {
            self.states[len] = state.to_kernel();
            self.entered_us[len] = offset;
            self.len += 1;
        }
    }

    fn entered_ns(&self, i: usize) -> u64 {
        self.first_ns + u64::from(self.entered_us[i]) * 1_000
    }

    /// (state, time spent in it) for each state, the last one ending at `end_ns`; to the
    /// microsecond.
    pub fn durations(&self, end_ns: u64) -> impl Iterator<Item = (TcpState, u64)> + '_ {
        let len = usize::from(self.len);
        (0..len).map(move |i| {
            let until = if i + 1 < len {
                self.entered_ns(i + 1)
            } else {
                end_ns
            };
            (
                TcpState::from_kernel(self.states[i]),
                until.saturating_sub(self.entered_ns(i)),
            )
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The process that owns a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub task: Task,
    /// The descriptor, when a /proc scan found it.
    pub fd: Option<u32>,
}

impl Owner {
    pub fn new(task: Task) -> Self {
        Self { task, fd: None }
    }
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum End {
    /// FIN handshake, or a listener closed.
    Normal,
    /// This side sent a RST (e.g. closed with unread data, or SO_LINGER 0).
    ResetSent,
    /// The peer reset an established connection.
    ResetReceived,
    /// A connect answered with RST: nothing listened there.
    Refused,
    /// A connect that gave up: no answer before the SYN retries ran out.
    ConnectTimeout,
    /// The owner closed a socket whose connect was still under way.
    ConnectAborted,
}

impl End {
    /// Every end, in declaration order (`End::X as usize` is its index here).
    pub const ALL: [End; 6] = [
        End::Normal,
        End::ResetSent,
        End::ResetReceived,
        End::Refused,
        End::ConnectTimeout,
        End::ConnectAborted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            End::Normal => "normal",
            End::ResetSent => "reset-sent",
            End::ResetReceived => "reset-received",
            End::Refused => "refused",
            End::ConnectTimeout => "connect-timeout",
            End::ConnectAborted => "connect-aborted",
        }
    }
}

/// Whether the kernel makes this transition in the process that owns the socket (a syscall).
fn in_owner_context(old: TcpState, new: TcpState) -> bool {
    use TcpState::*;
    matches!(
        (old, new),
        (Close, SynSent) | (Close, Listen) | (Established, FinWait1) | (CloseWait, LastAck)
    )
}

/// What the table knows of one live socket.
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
    pub owner: Option<Owner>,
    pub reset_sent: bool,
    pub reset_received: bool,
    /// The socket's cgroup v2 id (0: unknown) and where it came from.
    pub cgroup_id: u64,
    pub cgroup_source: CgroupSource,
}

impl Sock {
    fn new(netns: u32, state: TcpState, local: SocketAddr, remote: SocketAddr, ts: u64) -> Self {
        Self {
            netns,
            state,
            local,
            remote,
            born_ns: None,
            since_ns: ts,
            since_exact: false,
            path: Path::default(),
            owner: None,
            reset_sent: false,
            reset_received: false,
            cgroup_id: 0,
            cgroup_source: CgroupSource::None,
        }
    }
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
    pub owner: Option<Owner>,
    pub end: End,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub cgroup_id: u64,
    pub cgroup_source: CgroupSource,
}

impl Closed {
    pub fn lifespan_ns(&self) -> Option<u64> {
        self.born_ns.map(|b| self.closed_ns.saturating_sub(b))
    }

    /// A reset reported after the socket reached CLOSE (see [`Table::hint`]).
    pub fn late_hint(&mut self, kind: HintKind) {
        if self.end == End::Normal {
            match kind {
                HintKind::ResetSent => self.end = End::ResetSent,
                HintKind::ResetReceived => self.end = End::ResetReceived,
                HintKind::Io => {}
            }
        }
    }
}

/// A TIME-WAIT socket: only what a snapshot row needs, since the full socket's history is
/// already a closed record. Kept apart from live sockets because there are as many of them as
/// connections closed in the last minute (100k after a storm).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TimeWait {
    /// `u64::MAX`: netmon did not see the socket created (40 bytes, not 56 with `Option`).
    born_ns: u64,
    since_ns: u64,
    /// Its addresses, for the rows the table serves (`--max-age`); references into the
    /// records' pools, given back where the entry goes ([`Table::drop_time_wait`]).
    local: PackedAddr,
    remote: PackedAddr,
    netns: u32,
    since_exact: bool,
    /// IPv6 (v4-mapped included), for the metrics' per-family counts.
    v6: bool,
}

impl TimeWait {
    fn new(
        records: &mut Records,
        netns: u32,
        (local, remote): (SocketAddr, SocketAddr),
        born_ns: Option<u64>,
        (since_ns, since_exact): (u64, bool),
    ) -> Self {
        Self {
            born_ns: born_ns.unwrap_or(u64::MAX),
            since_ns,
            local: records.pack(local),
            remote: records.pack(remote),
            netns,
            since_exact,
            v6: local.is_ipv6(),
        }
    }

    fn born_ns(&self) -> Option<u64> {
        (self.born_ns != u64::MAX).then_some(self.born_ns)
    }
}

/// What a walk of the kernel reports of a socket and no event carries: a row served from the
/// table (`snapshot --max-age`) shows it as of the last full walk that saw the socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walked {
    pub recv_q: u32,
    pub send_q: u32,
    pub uid: u32,
    pub inode: u32,
    pub v6only: bool,
}

impl Walked {
    pub fn of(d: &DiagSock) -> Self {
        Self {
            recv_q: d.recv_q,
            send_q: d.send_q,
            uid: d.uid,
            inode: d.inode,
            v6only: d.v6only,
        }
    }
}

/// A TIME-WAIT socket as the table serves it: the kernel reports no queues, uid or inode for
/// one (`inet_twsk_diag_fill()` sets them 0), so nothing of it is stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWaitView {
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub since_ns: u64,
}

/// Why the table cannot answer for a namespace within a freshness bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    #[error("the agent has not walked this namespace's sockets")]
    NeverWalked,
    #[error("the agent's last walk of this namespace is {:.1} s old", *age_ns as f64 / 1e9)]
    TooOld { age_ns: u64 },
    #[error("events were lost since the agent's last walk of this namespace")]
    LossSince,
    #[error("the agent is behind on its events")]
    Behind,
    #[error("no agent's table")]
    NoTable,
}

/// When a socket was created and entered its state, as far as the table saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ages {
    pub born_ns: Option<u64>,
    /// Only when the table saw the transition itself (not a dump finding the state).
    pub since_ns: Option<u64>,
}

/// What applying a transition found out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Time spent in the state the socket left, when the table saw it enter that state.
    pub prev_state_ns: Option<u64>,
    /// The record of the connection, when this transition ended it.
    pub closed: Option<Closed>,
    /// The kernel delivered this transition twice (see netmon-ebpf): it was ignored.
    pub duplicate: bool,
}

/// A reconcile of one namespace with a dump merged a part at a time ([`Table::reconcile_batch`]):
/// which live sockets were found so far is a bit per slot of the table's records
/// ([`crate::records::SlotMarks`], a bit a socket, where a set of cookies took 19 bytes), kept
/// by the table under this reconcile's id; the TIME-WAIT sockets found, by cookie.
#[derive(Debug)]
pub struct Reconcile {
    netns: u32,
    t0_ns: u64,
    /// `None` while seeding: see [`Reconcile::seeding`].
    found: Option<Found>,
}

#[derive(Debug)]
struct Found {
    /// Names this reconcile's marks in the table (several reconciles may run at once, of
    /// the same namespace too).
    id: u64,
    /// Whether a part was merged, so that the table holds marks under `id`.
    begun: bool,
    /// A part found the marks gone (dropped as stale): what was found is no longer known.
    lost: bool,
    time_wait: FxHashSet<u64>,
}

/// Reconciles' ids, unique in the process.
static RECONCILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A reconcile's marks that merged no part for this long are dropped ([`Table::expire`]):
/// a part of a million-socket dump follows the previous one within milliseconds.
const MARKS_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

impl Reconcile {
    pub fn new(netns: u32, t0_ns: u64) -> Self {
        Self {
            netns,
            t0_ns,
            found: Some(Found {
                id: RECONCILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                begun: false,
                lost: false,
                time_wait: FxHashSet::default(),
            }),
        }
    }

    /// The seed's merge of a namespace into a table that has nothing of it yet (the events
    /// read meanwhile are held, not applied): there is nothing for the end to drop, so what
    /// was found is not kept.
    pub fn seeding(netns: u32, t0_ns: u64) -> Self {
        Self {
            found: None,
            ..Self::new(netns, t0_ns)
        }
    }

    pub fn netns(&self) -> u32 {
        self.netns
    }
}

/// Where a reply's walk of the closed history stands ([`Table::closed_part`]): places count
/// every connection ever kept, so evictions between two parts do not shift them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClosedCursor {
    /// The place of the next connection to look at.
    pub next: u64,
    /// One past the newest connection the reply shows (fixed by its first part).
    pub end: u64,
}

impl ClosedCursor {
    /// A reply that has not looked yet.
    pub const START: Self = Self {
        next: 0,
        end: u64::MAX,
    };

    pub fn done(&self) -> bool {
        self.next >= self.end
    }
}

/// A part of a reply's closed history.
#[derive(Debug)]
pub struct ClosedPart {
    pub closed: Vec<Closed>,
    pub cursor: ClosedCursor,
    /// Closed connections evicted from the history so far.
    pub evicted: u64,
}

#[derive(Debug)]
pub struct Table {
    /// Live sockets (Fx hashing: keys are kernel cookies, not attacker-chosen, and SipHash
    /// was a visible share of the reader's time per event at storm rates) and the closed
    /// history, packed (see `records`).
    records: Records,
    time_wait: FxHashMap<u64, TimeWait>,
    /// (netns, port) of each listener, to give accepted sockets their listener's owner.
    listeners: FxHashMap<(u32, u16), u64>,
    /// Closed records evicted to respect the capacity.
    pub evicted: u64,
    /// Cookies of the sockets that reached CLOSE most recently, oldest first, to recognise a
    /// CLOSE delivered twice (the socket is no longer live then).
    recently_closed: VecDeque<u64>,
    recently_closed_set: FxHashSet<u64>,
    /// Transitions dropped as duplicates.
    pub duplicates: u64,
    /// Dump records ignored because their cookie belongs to another namespace's entry (see
    /// [`Table::reconcile`]).
    pub foreign: u64,
    /// Connections closed since the last [`Table::take_batch`]: a reset reported just after
    /// the CLOSE (see [`Table::hint`]) still amends them before consumers see them.
    batch: Vec<Closed>,
    /// When the last complete walk of each namespace that the table merged started.
    walks: FxHashMap<u32, u64>,
    /// When a loss was last counted (0: never); see [`Table::freshness`].
    lost_ns: u64,
}

/// How many closes `recently_closed` remembers: a duplicate follows its original within
/// microseconds to a millisecond (the copy that took it twice was preempted), i.e. a few
/// hundred transitions at storm rate.
const RECENTLY_CLOSED: usize = 4096;

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
            records: Records::new(closed_capacity),
            time_wait: FxHashMap::default(),
            listeners: FxHashMap::default(),
            evicted: 0,
            recently_closed: VecDeque::with_capacity(RECENTLY_CLOSED),
            recently_closed_set: FxHashSet::with_capacity_and_hasher(
                RECENTLY_CLOSED,
                Default::default(),
            ),
            duplicates: 0,
            foreign: 0,
            batch: Vec::new(),
            walks: FxHashMap::default(),
            lost_ns: 0,
        }
    }

    /// The connections closed since the last call, oldest first, with late resets applied.
    pub fn take_batch(&mut self) -> Vec<Closed> {
        std::mem::take(&mut self.batch)
    }

    /// Applies a transition.
    pub fn apply(&mut self, t: &Transition) -> Applied {
        if t.old == TcpState::Listen
            && t.new == TcpState::SynRecv
            && self.records.state(t.cookie) == Some(TcpState::Listen)
        {
            // A new child reported with its listener's identity (see `clones`): it is not the
            // listener's own transition, and there is no other identity to file it under.
            return Applied::default();
        }
        if self.is_duplicate(t) {
            self.duplicates += 1;
            return Applied {
                duplicate: true,
                ..Applied::default()
            };
        }
        let prev = self.records.get(t.cookie);
        if let Some(p) = prev
            && t.ts_ns < p.since_ns
        {
            // Older than what a dump already showed: the dump wins.
            return Applied::default();
        }
        let prev_state_ns = prev
            .filter(|p| p.state == t.old && p.since_exact)
            .map(|p| t.ts_ns.saturating_sub(p.since_ns));
        let mut sock = prev.unwrap_or_else(|| self.first_sight(t));
        // The connect event fires before the local port is chosen; later events have it.
        if t.local.port() != 0 || sock.local.port() == 0 {
            sock.local = t.local;
        }
        sock.remote = t.remote;
        if t.cgroup_id != 0 {
            sock.cgroup_id = t.cgroup_id;
            sock.cgroup_source = t.cgroup_source;
        }
        if in_owner_context(t.old, t.new) && t.task.pid != 0 {
            sock.owner = Some(match sock.owner {
                Some(o) if o.task.pid == t.task.pid => Owner { task: t.task, ..o },
                _ => Owner::new(t.task),
            });
        }
        self.index_listener(t, t.cookie);
        if t.new == TcpState::Close {
            self.records.remove(t.cookie);
            self.remember_close(t.cookie);
            let closed = (t.old != TcpState::Close).then(|| self.close(t, sock));
            return Applied {
                prev_state_ns,
                closed,
                duplicate: false,
            };
        }
        sock.path.push(t.new, t.ts_ns);
        sock.state = t.new;
        sock.since_ns = t.ts_ns;
        sock.since_exact = true;
        self.records.insert(t.cookie, &sock);
        Applied {
            prev_state_ns,
            closed: None,
            duplicate: false,
        }
    }

    /// A transition delivered twice (see netmon-ebpf): the socket is already in the new state
    /// (a real transition starts from the current one), or already closed.
    fn is_duplicate(&mut self, t: &Transition) -> bool {
        if t.new == TcpState::Close {
            return self.recently_closed_set.contains(&t.cookie);
        }
        if t.old == TcpState::Close {
            // A closed socket used again (connect after disconnect): it may close again.
            self.recently_closed_set.remove(&t.cookie);
        }
        // Only a state a transition set: a dump or a hint may have seen the new state first.
        t.old != t.new
            && self
                .records
                .get(t.cookie)
                .is_some_and(|s| s.state == t.new && s.since_exact)
    }

    fn remember_close(&mut self, cookie: u64) {
        if self.recently_closed.len() == RECENTLY_CLOSED
            && let Some(old) = self.recently_closed.pop_front()
        {
            self.recently_closed_set.remove(&old);
        }
        self.recently_closed.push_back(cookie);
        self.recently_closed_set.insert(cookie);
    }

    /// A socket the table has not seen: is it being created?
    fn first_sight(&self, t: &Transition) -> Sock {
        let mut sock = Sock::new(t.netns, t.old, t.local, t.remote, t.ts_ns);
        if t.old == TcpState::Close {
            sock.born_ns = Some(t.ts_ns);
        }
        // The child socket a LISTEN -> SYN-RECV event carries is new, and belongs to whoever
        // owns the listener (the event itself runs in the client's softirq).
        if t.old == TcpState::Listen && t.new == TcpState::SynRecv {
            sock.born_ns = Some(t.ts_ns);
            let listener = self
                .listeners
                .get(&(t.netns, t.local.port()))
                .and_then(|&l| self.records.get(l));
            sock.owner = listener
                .and_then(|l| l.owner)
                .map(|o| Owner { fd: None, ..o });
            // The kernel copies the listener's cgroup to the child; the task fallback has no
            // id for this softirq event, so it takes the listener's as the kernel does.
            if let Some(l) = listener {
                sock.cgroup_id = l.cgroup_id;
                sock.cgroup_source = l.cgroup_source;
            }
        }
        sock
    }

    fn index_listener(&mut self, t: &Transition, cookie: u64) {
        let key = (t.netns, t.local.port());
        if t.new == TcpState::Listen {
            self.listeners.insert(key, cookie);
        } else if t.old == TcpState::Listen && self.listeners.get(&key) == Some(&cookie) {
            self.listeners.remove(&key);
        }
    }

    /// Applies any decoded event.
    pub fn event(&mut self, e: &Event) -> Applied {
        match e {
            Event::Transition(t) => self.apply(t),
            Event::Hint(h) => {
                self.hint(h);
                Applied::default()
            }
        }
    }

    /// Applies an owner or reset hint.
    pub fn hint(&mut self, h: &Hint) {
        if !self.records.contains(h.cookie) && h.state == TcpState::Close {
            // tcp_close() moves a socket with unread data to CLOSE and then sends its RST, so
            // that hint comes after the connection's record: amend the record, in the batch
            // not yet handed out and in the history. This is the one place of that rule.
            let recent = |c: &&mut Closed| c.cookie == h.cookie;
            if let Some(c) = self.batch.iter_mut().rev().take(64).find(recent) {
                c.late_hint(h.kind);
            }
            self.records
                .amend_closed(h.cookie, 64, |c| c.late_hint(h.kind));
            return;
        }
        let mut sock = self
            .records
            .get(h.cookie)
            .unwrap_or_else(|| Sock::new(h.netns, h.state, h.local, h.remote, h.ts_ns));
        if h.cgroup_id != 0 {
            sock.cgroup_id = h.cgroup_id;
            sock.cgroup_source = h.cgroup_source;
        }
        match h.kind {
            HintKind::Io if h.task.pid != 0 => {
                if sock.owner.is_none_or(|o| o.task.pid != h.task.pid) {
                    sock.owner = Some(Owner::new(h.task));
                }
            }
            HintKind::Io => {}
            HintKind::ResetSent => sock.reset_sent = true,
            HintKind::ResetReceived => sock.reset_received = true,
        }
        self.records.insert(h.cookie, &sock);
    }

    /// Sets owners found by a /proc scan (socket inode -> owner) for the live sockets a walk
    /// saw, by the inode the walk reported: the seed keeps no list of the sockets it merged
    /// (16 MB of (cookie, inode) pairs at a million, held at its peak).
    pub fn set_owners_of_walked(&mut self, owners: &SocketOwners) {
        self.records.set_owners_by_inode(|inode| owners.get(inode));
    }

    fn close(&mut self, t: &Transition, sock: Sock) -> Closed {
        let end = if sock.reset_received {
            if t.old == TcpState::SynSent {
                End::Refused
            } else {
                End::ResetReceived
            }
        } else if sock.reset_sent {
            End::ResetSent
        } else if t.old == TcpState::SynSent {
            // close() runs in the owner; the SYN retry timer runs in whatever task is on the CPU.
            match sock.owner {
                Some(o) if o.task.pid == t.task.pid => End::ConnectAborted,
                _ => End::ConnectTimeout,
            }
        } else {
            End::Normal
        };
        let closed = Closed {
            cookie: t.cookie,
            netns: sock.netns,
            local: sock.local,
            remote: sock.remote,
            born_ns: sock.born_ns,
            closed_ns: t.ts_ns,
            last: t.old,
            path: sock.path,
            owner: sock.owner,
            end,
            bytes_acked: t.bytes_acked,
            bytes_received: t.bytes_received,
            cgroup_id: sock.cgroup_id,
            cgroup_source: sock.cgroup_source,
        };
        self.push_closed(closed);
        self.batch.push(closed);
        // The kernel replaces a full socket that leaves FIN-WAIT-2 or CLOSING with a timewait
        // socket of the same cookie (tcp_time_wait()) and fires no event for it.
        if matches!(t.old, TcpState::FinWait2 | TcpState::Closing) {
            let tw = TimeWait::new(
                &mut self.records,
                sock.netns,
                (sock.local, sock.remote),
                sock.born_ns,
                (t.ts_ns, true),
            );
            if let Some(old) = self.time_wait.insert(t.cookie, tw) {
                self.drop_time_wait(old);
            }
        }
        closed
    }

    fn push_closed(&mut self, c: Closed) {
        if self.records.push_closed(&c) != PushClosed::Kept {
            self.evicted += 1;
        }
    }

    /// Makes the table's view of namespace `netns` equal to a dump of it that started at
    /// `t0_ns`: sockets the dump missed are gone (their CLOSE was lost, or a TIME-WAIT
    /// expired), sockets it found are added. Entries changed by an event after `t0_ns` are
    /// kept; events from during the dump, still in the ring, are applied after it in order
    /// and converge on the newest state.
    pub fn reconcile(&mut self, netns: u32, dump: &[DiagSock], t0_ns: u64) {
        let mut r = Reconcile::new(netns, t0_ns);
        self.reconcile_batch(&mut r, dump);
        self.reconcile_end(r);
    }

    /// [`Table::reconcile`] a part of the dump at a time, so that the whole dump (144 bytes a
    /// socket) is never held: each part adds what it found, and [`Table::reconcile_end`]
    /// then drops what no part found. Events may be applied between two parts.
    pub fn reconcile_batch(&mut self, r: &mut Reconcile, dump: &[DiagSock]) {
        let (netns, t0_ns) = (r.netns, r.t0_ns);
        if let Some(found) = r.found.as_mut() {
            if !found.begun {
                self.records.marks_begin(found.id);
                found.begun = true;
            } else if !self.records.marks_touch(found.id) {
                found.lost = true;
            }
        }
        for d in dump {
            // Cookies are unique on the machine and a socket never changes namespace: a record
            // that names another namespace's socket is not a real one (a forged reply) and
            // must not touch that namespace's entry.
            let live = self.records.get(d.cookie);
            let owner_ns = match live {
                Some(s) => Some(s.netns),
                None => self.time_wait.get(&d.cookie).map(|t| t.netns),
            };
            if owner_ns.is_some_and(|n| n != netns) {
                self.foreign += 1;
                continue;
            }
            if d.state == TcpState::TimeWait {
                if let Some(found) = r.found.as_mut() {
                    found.time_wait.insert(d.cookie);
                }
                self.records.remove(d.cookie);
                if !self.time_wait.contains_key(&d.cookie) {
                    let tw = TimeWait::new(
                        &mut self.records,
                        netns,
                        (d.local, d.remote),
                        None,
                        (t0_ns, false),
                    );
                    self.time_wait.insert(d.cookie, tw);
                }
                continue;
            }
            let mut entry =
                live.unwrap_or_else(|| Sock::new(netns, d.state, d.local, d.remote, t0_ns));
            let before = live;
            if d.state == TcpState::Listen {
                self.listeners.insert((netns, d.local.port()), d.cookie);
            }
            if let Some(id) = d
                .attrs
                .cgroup_id
                .filter(|&id| id != 0 && entry.cgroup_id == 0)
            {
                entry.cgroup_id = id;
                entry.cgroup_source = CgroupSource::Dump;
            }
            // The connect event fires before the local port is chosen: a socket still in
            // SYN-SENT has no other event to tell it, and the table serves rows (--max-age).
            if entry.local.port() == 0 || entry.local.ip().is_unspecified() {
                entry.local = d.local;
            }
            if entry.state != d.state && entry.since_ns <= t0_ns {
                entry.state = d.state;
                entry.since_ns = t0_ns;
                entry.since_exact = false;
            }
            if before != Some(entry) {
                self.records.insert(d.cookie, &entry);
            }
            self.records.set_walked(d.cookie, &Walked::of(d));
            if let Some(found) = r.found.as_mut() {
                found.lost |= !self.records.mark(found.id, d.cookie);
            }
        }
    }

    /// Ends a [`Reconcile`] whose every part was merged: the namespace's entries that no part
    /// found and no event touched since the dump started are dropped.
    pub fn reconcile_end(&mut self, r: Reconcile) {
        let Reconcile {
            netns,
            t0_ns,
            found,
        } = r;
        let marks = match found {
            None => None,
            Some(f) => {
                let marks = if f.begun {
                    self.records.marks_end(f.id)
                } else {
                    Some(SlotMarks::default())
                };
                match marks {
                    Some(m) if !f.lost => Some((m, f.time_wait)),
                    // Marks dropped as stale: nothing is dropped, and the walk does not
                    // count as complete.
                    _ => return,
                }
            }
        };
        // Only a complete walk makes the namespace's rows servable (see `freshness`); an
        // older walk merged late does not move the time back. The seed's counts too.
        let walk = self.walks.entry(netns).or_insert(t0_ns);
        *walk = (*walk).max(t0_ns);
        let Some((marks, time_wait)) = marks else {
            return;
        };
        self.records
            .retain(|_, slot, ns, since_ns| ns != netns || marks.get(slot) || since_ns > t0_ns);
        self.retain_time_wait(|cookie, s| {
            s.netns != netns || time_wait.contains(&cookie) || s.since_ns > t0_ns
        });
    }

    /// Drops a [`Reconcile`] whose dump failed: its marks go at once, not after
    /// [`MARKS_IDLE`] (meanwhile they hold back compaction).
    pub fn reconcile_abort(&mut self, r: Reconcile) {
        if let Some(f) = r.found {
            self.records.marks_end(f.id);
        }
    }

    fn retain_time_wait(&mut self, mut keep: impl FnMut(u64, &TimeWait) -> bool) {
        let records = &mut self.records;
        self.time_wait.retain(|&cookie, s| {
            let k = keep(cookie, s);
            if !k {
                records.release_packed(s.local);
                records.release_packed(s.remote);
            }
            k
        });
    }

    fn drop_time_wait(&mut self, tw: TimeWait) {
        self.records.release_packed(tw.local);
        self.records.release_packed(tw.remote);
    }

    /// A loss was counted at `now_ns`: until the next complete walk, the table's view of a
    /// namespace may miss sockets or states, so it serves no rows.
    pub fn lost_at(&mut self, now_ns: u64) {
        self.lost_ns = self.lost_ns.max(now_ns);
    }

    /// Whether the table may answer for namespace `netns` at `now_ns` within `max_age_ns`:
    /// its last complete walk started no longer ago than that, and no loss was counted since
    /// it started (a loss counted before the walk started is repaired by it). Returns when
    /// that walk started.
    pub fn freshness(&self, netns: u32, now_ns: u64, max_age_ns: u64) -> Result<u64, Stale> {
        let walk_ns = *self.walks.get(&netns).ok_or(Stale::NeverWalked)?;
        let age_ns = now_ns.saturating_sub(walk_ns);
        if age_ns > max_age_ns {
            return Err(Stale::TooOld { age_ns });
        }
        if self.lost_ns >= walk_ns {
            return Err(Stale::LossSince);
        }
        Ok(walk_ns)
    }

    /// What the last full walk that saw a live socket reported of it.
    pub fn walked(&self, cookie: u64) -> Option<Walked> {
        self.records.walked(cookie)
    }

    /// A live socket (without its path) and what the last walk saw of it; `slot` as
    /// [`Table::each_served`] gave it.
    pub fn served(&self, cookie: u64, slot: u32) -> Option<(Sock, Option<Walked>)> {
        self.records.served(cookie, slot)
    }

    /// [`Table::served`] for every live socket of `netns` that `look` keeps (see
    /// [`Records::each_served`]): (cookie, slot, socket, walked).
    pub fn each_served(
        &self,
        netns: u32,
        look: impl FnMut(Glance) -> bool,
        live: impl FnMut(u64, u32, Sock, Option<Walked>),
    ) {
        self.records.each_served(netns, look, live);
    }

    /// The cookies of the TIME-WAIT sockets of `netns`, with their ports.
    pub fn time_wait_cookies(&self, netns: u32) -> impl Iterator<Item = (u64, Glance)> + '_ {
        self.time_wait
            .iter()
            .filter(move |(_, t)| t.netns == netns)
            .map(|(&c, t)| {
                let glance = Glance {
                    state: TcpState::TimeWait.to_kernel(),
                    local_port: t.local.port(),
                    remote_port: t.remote.port(),
                };
                (c, glance)
            })
    }

    /// A TIME-WAIT socket the table holds.
    pub fn time_wait(&self, cookie: u64) -> Option<TimeWaitView> {
        self.time_wait.get(&cookie).map(|t| TimeWaitView {
            netns: t.netns,
            local: self.records.unpack(t.local),
            remote: self.records.unpack(t.remote),
            since_ns: t.since_ns,
        })
    }

    /// Drops TIME-WAIT entries older than the kernel keeps them.
    pub fn expire(&mut self, now_ns: u64) {
        self.retain_time_wait(|_, s| now_ns.saturating_sub(s.since_ns) < TIME_WAIT_NS);
        self.records.drop_stale_marks(MARKS_IDLE);
        self.records.shrink();
        shrink_map(&mut self.time_wait);
        shrink_map(&mut self.listeners);
    }

    /// A live socket (TIME-WAIT sockets are kept apart, see [`Table::ages`]).
    pub fn get(&self, cookie: u64) -> Option<Sock> {
        self.records.get(cookie)
    }

    /// The state the table has for a socket, TIME-WAIT included.
    pub fn state(&self, cookie: u64) -> Option<TcpState> {
        match self.records.state(cookie) {
            Some(s) => Some(s),
            None => self
                .time_wait
                .contains_key(&cookie)
                .then_some(TcpState::TimeWait),
        }
    }

    /// When a socket in `state` was created and entered that state, where the table saw it.
    pub fn ages(&self, cookie: u64, state: TcpState) -> Ages {
        let (born_ns, since, exact) = if state == TcpState::TimeWait {
            match self.time_wait.get(&cookie) {
                Some(t) => (t.born_ns(), t.since_ns, t.since_exact),
                None => return Ages::default(),
            }
        } else {
            match self.records.get(cookie).filter(|s| s.state == state) {
                Some(s) => (s.born_ns, s.since_ns, s.since_exact),
                None => return Ages::default(),
            }
        };
        Ages {
            born_ns,
            since_ns: exact.then_some(since),
        }
    }

    /// TIME-WAIT sockets in the namespaces `netns` accepts.
    pub fn time_wait_count(&self, netns: impl Fn(u32) -> bool) -> usize {
        self.time_wait.values().filter(|t| netns(t.netns)).count()
    }

    /// Live sockets (TIME-WAIT not included), unpacked one at a time.
    pub fn live(&self) -> impl Iterator<Item = (u64, Sock)> + '_ {
        self.records.iter()
    }

    /// Closed connections, oldest first, unpacked one at a time.
    pub fn closed(&self) -> impl DoubleEndedIterator<Item = Closed> + '_ {
        self.records.closed()
    }

    /// Closed connections remembered.
    pub fn closed_len(&self) -> usize {
        self.records.closed_len()
    }

    /// The next part of a reply's closed history: up to `max` of the connections after
    /// `cursor` that ended at or after `since_ns` in the namespaces `netns` names (all with
    /// `None`), oldest first. Connections that close after the reply's first part are not
    /// in it; those evicted between two parts are counted in [`Table::evicted`].
    pub fn closed_part(
        &self,
        netns: Option<&[u32]>,
        since_ns: u64,
        cursor: ClosedCursor,
        max: usize,
    ) -> ClosedPart {
        // A closed connection's place in the history ever since it was kept: the records
        // before the ring's oldest were evicted.
        let len = self.records.closed_len();
        let end = cursor.end.min(self.evicted + len as u64);
        let mut i = cursor.next.saturating_sub(self.evicted) as usize;
        let stop = end.saturating_sub(self.evicted) as usize;
        let mut closed = Vec::new();
        let wanted = |n: u32| netns.is_none_or(|ns| ns.contains(&n));
        while i < stop && closed.len() < max {
            closed.extend(self.records.closed_if(i, since_ns, wanted));
            i += 1;
        }
        ClosedPart {
            closed,
            cursor: ClosedCursor {
                next: self.evicted + i as u64,
                end,
            },
            evicted: self.evicted,
        }
    }

    /// TIME-WAIT sockets that entered the state after `since_ns`: IPv4, IPv6.
    pub fn time_wait_by_family(&self, since_ns: u64) -> [u64; 2] {
        let mut out = [0; 2];
        for tw in self.time_wait.values().filter(|t| t.since_ns >= since_ns) {
            out[usize::from(tw.v6)] += 1;
        }
        out
    }

    /// Sockets the table holds, TIME-WAIT included.
    pub fn len(&self) -> usize {
        self.records.len() + self.time_wait.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    /// A transition of socket `cookie` run by task `pid`.
    fn by(cookie: u64, pid: u32, ts: u64, old: TcpState, new: TcpState) -> Transition {
        let mut t = at(ts, old.to_kernel(), new.to_kernel());
        t.cookie = cookie;
        t.task = Task::new(pid, pid, 1000, &format!("p{pid}"));
        t
    }

    fn hint(cookie: u64, pid: u32, kind: HintKind) -> Hint {
        let t = by(cookie, pid, 0, TcpState::Established, TcpState::Established);
        Hint {
            kind,
            ts_ns: 5,
            cookie,
            netns: t.netns,
            state: TcpState::Established,
            local: t.local,
            remote: t.remote,
            task: t.task,
            cgroup_id: 0,
            cgroup_source: netmon_common::CgroupSource::None,
        }
    }

    fn owner_pid(table: &Table, cookie: u64) -> Option<u32> {
        table.get(cookie).and_then(|s| s.owner).map(|o| o.task.pid)
    }

    #[test]
    fn every_end_is_listed_once_at_its_discriminant() {
        for (i, e) in End::ALL.into_iter().enumerate() {
            assert_eq!(e as usize, i, "{e:?}");
        }
    }

    #[test]
    fn owners_come_from_owner_context_and_accepted_sockets_inherit_the_listener() {
        use TcpState::*;
        let mut table = Table::new();
        // Server 100 listens on :41000 (the fixture's local port).
        table.apply(&by(1, 100, 10, Close, Listen));
        // Client 200 connects; the handshake runs in softirq with the peer's task.
        table.apply(&by(2, 200, 20, Close, SynSent));
        table.apply(&by(3, 200, 21, Listen, SynRecv));
        table.apply(&by(2, 100, 22, SynSent, Established));
        table.apply(&by(3, 200, 23, SynRecv, Established));
        assert_eq!(
            owner_pid(&table, 2),
            Some(200),
            "softirq event did not change it"
        );
        assert_eq!(
            owner_pid(&table, 3),
            Some(100),
            "accepted: the listener's owner"
        );
        // The server hands the connection to worker 300, which reads from it.
        table.hint(&hint(3, 300, HintKind::Io));
        assert_eq!(owner_pid(&table, 3), Some(300));
        // A timer-driven transition (pid 0) changes nothing; the close runs in the owner.
        table.apply(&by(3, 0, 30, Established, CloseWait));
        table.apply(&by(3, 300, 31, CloseWait, LastAck));
        let closed = table.apply(&by(3, 0, 32, LastAck, Close)).closed.unwrap();
        assert_eq!(closed.owner.map(|o| o.task.pid), Some(300));
        assert_eq!(closed.end, End::Normal);
    }

    #[test]
    fn how_connections_end() {
        use TcpState::*;
        // The hints arrive after the connect, before the rest.
        let end = |events: &[Transition], hints: &[Hint]| {
            let mut table = Table::new();
            table.apply(&events[0]);
            for h in hints {
                table.hint(h);
            }
            events[1..]
                .iter()
                .filter_map(|t| table.apply(t).closed)
                .last()
                .map(|c| c.end)
        };
        let connect = by(7, 200, 1, Close, SynSent);
        let refused = [connect, by(7, 0, 2, SynSent, Close)];
        assert_eq!(
            end(&refused, &[hint(7, 0, HintKind::ResetReceived)]),
            Some(End::Refused)
        );
        assert_eq!(end(&refused, &[]), Some(End::ConnectTimeout));
        let aborted = [connect, by(7, 200, 2, SynSent, Close)];
        assert_eq!(end(&aborted, &[]), Some(End::ConnectAborted));
        let reset = [
            connect,
            by(7, 0, 2, SynSent, Established),
            by(7, 0, 3, Established, Close),
        ];
        assert_eq!(
            end(&reset, &[hint(7, 0, HintKind::ResetReceived)]),
            Some(End::ResetReceived)
        );
        assert_eq!(
            end(&reset, &[hint(7, 200, HintKind::ResetSent)]),
            Some(End::ResetSent)
        );
    }

    #[test]
    fn a_transition_delivered_twice_is_applied_once() {
        use TcpState::*;
        let mut table = Table::new();
        table.apply(&by(5, 100, 1_000, Close, SynSent));
        table.apply(&by(5, 0, 2_000, SynSent, Established));
        let again = table.apply(&by(5, 0, 2_500, SynSent, Established));
        assert!(again.duplicate);
        assert_eq!(table.duplicates, 1);
        let closed = table.apply(&by(5, 0, 3_000, Established, Close)).closed;
        assert!(closed.is_some());
        // However late it comes (a preempted copy), a second CLOSE is recognised.
        assert!(
            table
                .apply(&by(5, 0, 900_000_000, Established, Close))
                .duplicate
        );
        assert_eq!(table.closed().count(), 1, "one record for the connection");
        // A different socket making the same transition is no duplicate.
        assert!(!table.apply(&by(6, 0, 3_200, Established, Close)).duplicate);
        // A closed socket that connects again may close again.
        table.apply(&by(5, 100, 4_000, Close, SynSent));
        assert!(!table.apply(&by(5, 0, 5_000, SynSent, Close)).duplicate);
    }

    #[test]
    fn a_reset_sent_after_close_amends_the_record() {
        use TcpState::*;
        let mut table = Table::new();
        table.apply(&by(4, 100, 1, Close, SynSent));
        table.apply(&by(4, 0, 2, SynSent, Established));
        // close() with unread data: CLOSE first, then the RST.
        table.apply(&by(4, 100, 3, Established, Close));
        let mut rst = hint(4, 100, HintKind::ResetSent);
        rst.state = Close;
        table.hint(&rst);
        assert_eq!(table.closed().last().map(|c| c.end), Some(End::ResetSent));
        assert!(
            table.get(4).is_none(),
            "no live entry is made for a closed socket"
        );
    }

    #[test]
    fn a_proc_scan_names_owners_with_their_fd() {
        let mut table = Table::new();
        let mut d = diag(9, TcpState::Listen);
        d.inode = 4242;
        table.reconcile(7, &[d.clone()], 0);
        let owner = Owner {
            task: Task::new(55, 55, 0, "sshd"),
            fd: Some(3),
        };
        let mut other = diag(10, TcpState::Listen);
        other.inode = 4343;
        table.reconcile(8, &[other], 0);
        table.set_owners_of_walked(&[(4242, owner)].into_iter().collect());
        assert_eq!(table.get(9).and_then(|s| s.owner), Some(owner));
        assert_eq!(
            table.get(10).and_then(|s| s.owner),
            None,
            "no owner has its inode"
        );
    }

    fn diag(cookie: u64, state: TcpState) -> DiagSock {
        DiagSock::fixture(cookie, state, "127.0.0.1:1", "127.0.0.1:2")
    }

    #[test]
    fn maps_give_memory_back_after_a_burst_of_sockets_is_gone() {
        let mut table = Table::new();
        let burst: Vec<DiagSock> = (1..=100_000)
            .map(|c| diag(c, TcpState::Established))
            .chain((100_001..=150_000).map(|c| diag(c, TcpState::TimeWait)))
            .collect();
        table.reconcile(7, &burst, 1_000);
        assert_eq!(table.len(), 150_000);
        let peak = (table.records.room(), table.time_wait.capacity());
        // Gone from the namespace: the next dump finds 10 of them left.
        table.reconcile(7, &burst[..10], 2_000);
        table.expire(2_000);
        assert_eq!(table.len(), 10);
        assert!(
            table.records.room() <= 8192,
            "{} of {}",
            table.records.room(),
            peak.0
        );
        assert!(
            table.time_wait.capacity() <= 8192,
            "{}",
            table.time_wait.capacity()
        );
        // A map in use keeps its room.
        table.reconcile(7, &burst[..50_000], 3_000);
        let cap = table.records.room();
        table.expire(3_000);
        assert_eq!(table.records.room(), cap);
    }

    /// Heap bytes of a table holding `live` established sockets seen from their connect, and
    /// `closed` connections that went through their whole life (history capacity `closed`),
    /// on the counting allocator: allocated bytes, a bound on what the table adds to RSS.
    fn table_heap(live: u64, closed: u64) -> (Table, crate::heap::Heap) {
        use TcpState::*;
        crate::heap::measure(|| {
            let mut table = Table::with_capacity(closed as usize);
            for c in 1..=live {
                let pid = 1000 + (c % 64) as u32;
                let mut t = by(c, pid, c * 10, Close, SynSent);
                t.local.set_port((c % 60_000) as u16 + 1);
                table.apply(&t);
                t.old = SynSent;
                t.new = Established;
                t.ts_ns += 5;
                table.apply(&t);
            }
            for c in 1..=closed {
                let cookie = 10_000_000 + c;
                let pid = 2000 + (c % 64) as u32;
                let ts = c * 10;
                for (i, (old, new)) in [
                    (Close, SynSent),
                    (SynSent, Established),
                    (Established, FinWait1),
                    (FinWait1, FinWait2),
                    (FinWait2, Close),
                ]
                .into_iter()
                .enumerate()
                {
                    table.apply(&by(cookie, pid, ts + i as u64, old, new));
                }
                // As the pipeline does after each drain.
                if c % 1024 == 0 {
                    table.take_batch();
                }
            }
            table.take_batch();
            // TIME-WAIT entries are not what is measured here (they expire in 60 s).
            table.time_wait = FxHashMap::default();
            table
        })
    }

    /// The table's records are packed (`records`): before, 100k live sockets and 100k closed
    /// connections took 78 MB of heap (499 bytes per live socket, 278 per closed record).
    #[test]
    fn records_stay_compact() {
        let (_, heap) = table_heap(100_000, 0);
        let per_live = heap.retained / 100_000;
        // 180 before the walked queues, uid and inode that `snapshot --max-age` serves and
        // the cookie kept in the record (24 bytes a record, in a vector that doubles).
        assert!(per_live <= 210, "{per_live} bytes per live socket");
        let (_, heap) = table_heap(0, 100_000);
        let per_closed = heap.retained / 100_000;
        assert!(per_closed <= 150, "{per_closed} bytes per closed record");
        let (mut table, heap) = table_heap(100_000, 100_000);
        assert!(
            heap.retained <= 35 << 20,
            "{} bytes for 100k + 100k",
            heap.retained
        );
        assert!(heap.peak <= heap.retained * 13 / 10, "{heap:?}");
        // A dump that finds 100k more sockets: what they add, and the merge's own peak.
        let dump: Vec<DiagSock> = (1..=100_000)
            .map(|c| diag(20_000_000 + c, TcpState::Established))
            .collect();
        let ns = table.get(1).unwrap().netns;
        let ((), heap) = crate::heap::measure(|| table.reconcile(ns, &dump, 1));
        assert_eq!(table.len(), 200_000);
        assert!(heap.retained / 100_000 <= 110, "{heap:?}");
        assert!(heap.peak / 100_000 <= 120, "{heap:?}");
    }

    #[test]
    fn time_in_previous_state_and_close_into_time_wait() {
        let mut table = Table::new();
        assert_eq!(
            table.apply(&at(100_000, 7, 2)).prev_state_ns,
            None,
            "first sight: unknown"
        );
        assert_eq!(table.apply(&at(250_000, 2, 1)).prev_state_ns, Some(150_000));
        assert_eq!(table.get(42).map(|e| e.state), Some(TcpState::Established));
        assert_eq!(
            table.apply(&at(1_250_000, 1, 4)).prev_state_ns,
            Some(1_000_000)
        );
        assert_eq!(
            table.apply(&at(1_300_000, 4, 5)).prev_state_ns,
            Some(50_000)
        );
        assert_eq!(
            table.apply(&at(1_400_000, 5, 7)).prev_state_ns,
            Some(100_000)
        );
        // The full socket closed; its timewait successor stays for 60 s.
        assert_eq!(table.state(42), Some(TcpState::TimeWait));
        assert_eq!(
            table.ages(42, TcpState::TimeWait),
            Ages {
                born_ns: Some(100_000),
                since_ns: Some(1_400_000)
            }
        );
        table.expire(1_400_000 + TIME_WAIT_NS - 1);
        assert_eq!(table.len(), 1);
        table.expire(1_400_000 + TIME_WAIT_NS);
        assert!(table.is_empty());

        let closed: Vec<_> = table.closed().collect();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].lifespan_ns(), Some(1_300_000));
        assert_eq!(closed[0].local, "127.0.0.1:41000".parse().unwrap());
        let path: Vec<_> = closed[0].path.durations(closed[0].closed_ns).collect();
        assert_eq!(
            path,
            [
                (TcpState::SynSent, 150_000),
                (TcpState::Established, 1_000_000),
                (TcpState::FinWait1, 50_000),
                (TcpState::FinWait2, 100_000),
            ]
        );
    }

    #[test]
    fn a_missed_transition_gives_no_duration() {
        let mut table = Table::new();
        table.apply(&at(100, 7, 2));
        // SYN-SENT -> ESTAB was lost: the table says SYN-SENT, the event says ESTAB -> FIN-WAIT-1.
        assert_eq!(table.apply(&at(900, 1, 4)).prev_state_ns, None);
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
        assert_eq!(table.apply(&old), Applied::default());
        assert_eq!(table.get(3).map(|s| s.state), Some(TcpState::Listen));
    }

    #[test]
    fn a_walk_gives_a_connecting_socket_its_local_port() {
        let mut t = by(5, 42, 100, TcpState::Close, TcpState::SynSent);
        t.local.set_port(0);
        let mut table = Table::new();
        table.apply(&t);
        let remote = t.remote.to_string();
        let found = DiagSock::fixture(5, TcpState::SynSent, "127.0.0.1:5555", &remote);
        table.reconcile(t.netns, &[found], 200);
        let s = table.get(5).unwrap();
        assert_eq!(
            (s.local.port(), s.owner.map(|o| o.task.pid)),
            (5555, Some(42))
        );
    }

    #[test]
    fn reconcile_never_touches_another_namespaces_entry() {
        let mut table = Table::new();
        let mut estab = at(100, 2, 1);
        estab.cookie = 7;
        table.apply(&estab);
        let mut closing = at(100, 4, 5);
        closing.cookie = 8;
        table.apply(&closing);
        table.apply(&{
            let mut t = at(200, 5, 7);
            t.cookie = 8;
            t
        });
        assert_eq!(table.state(8), Some(TcpState::TimeWait));
        let ns = estab.netns;
        let before = table.get(7).unwrap();
        // A forged dump of another namespace naming both sockets, in other states.
        let forged = [diag(7, TcpState::TimeWait), diag(8, TcpState::Established)];
        table.reconcile(ns + 1, &forged, 1_000);
        let after = table.get(7).unwrap();
        assert_eq!(
            (after.netns, after.state, after.born_ns, after.since_ns),
            (before.netns, before.state, before.born_ns, before.since_ns)
        );
        assert_eq!(table.state(8), Some(TcpState::TimeWait));
        assert_eq!(table.foreign, 2);
        // Its own namespace's dump still applies.
        table.reconcile(ns, &[diag(7, TcpState::CloseWait)], 2_000);
        assert_eq!(table.get(7).map(|s| s.state), Some(TcpState::CloseWait));
    }

    #[test]
    fn closed_connections_come_in_parts_and_only_those_of_before_the_reply() {
        let closed = |cookie: u64, netns: u32, closed_ns: u64| Closed {
            cookie,
            netns,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.1:2".parse().unwrap(),
            born_ns: None,
            closed_ns,
            last: TcpState::FinWait2,
            path: Default::default(),
            owner: None,
            end: End::Normal,
            bytes_acked: 0,
            bytes_received: 0,
            cgroup_id: 0,
            cgroup_source: CgroupSource::None,
        };
        let mut table = Table::with_capacity(300);
        // 50 too old, then 200 of namespace 1 and 50 of namespace 2, interleaved.
        for i in 0..300u64 {
            let netns = if i >= 50 && i % 5 == 0 { 2 } else { 1 };
            table.push_closed(closed(i, netns, 1_000 + i));
        }
        let mut cursor = ClosedCursor::START;
        let mut got = Vec::new();
        let mut parts = 0;
        while !cursor.done() {
            let part = table.closed_part(Some(&[1]), 1_050, cursor, 64);
            assert!(part.closed.len() <= 64);
            got.extend(part.closed.iter().map(|c| c.cookie));
            cursor = part.cursor;
            parts += 1;
            // Connections closing after the reply began are not in it, and the history
            // evicting the oldest meanwhile shifts nothing.
            table.push_closed(closed(1_000 + parts, 1, 5_000));
            assert!(parts < 20, "the walk ends");
        }
        let want: Vec<u64> = (50..300).filter(|i| i % 5 != 0).collect();
        assert_eq!(got, want);
        assert_eq!(parts, 4, "parts of at most 64");
        assert_eq!(table.evicted, parts);
    }

    #[test]
    fn a_seed_merges_as_a_reconcile_does_without_keeping_what_it_found() {
        let dump: Vec<DiagSock> = (1..=50_000u64)
            .map(|c| DiagSock::fixture(c, TcpState::Established, "10.0.0.1:1", "10.0.0.2:2"))
            .collect();
        let merge = |r: Reconcile| {
            crate::heap::measure(|| {
                let mut table = Table::new();
                let mut r = r;
                for part in dump.chunks(4096) {
                    table.reconcile_batch(&mut r, part);
                }
                table.reconcile_end(r);
                table
            })
        };
        let (reconciled, kept) = merge(Reconcile::new(7, 1));
        let (seeded, seeding) = merge(Reconcile::seeding(7, 1));
        let cookies = |t: &Table| {
            let mut v: Vec<(u64, TcpState)> = t.live().map(|(c, s)| (c, s.state)).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(cookies(&seeded), cookies(&reconciled));
        assert_eq!(seeded.len(), 50_000);
        // What a reconcile keeps of what it found: a bit a socket, up to twice that as its
        // vector grows with the table (8 KiB here; a set of the cookies took at least 8 bytes
        // a socket, 391 KiB), and a few words of bookkeeping.
        assert!(
            kept.peak - seeding.peak <= 2 * 50_000 / 8 + 1024,
            "peak {} with the marks, {} without",
            kept.peak,
            seeding.peak
        );
    }

    fn established(since_ns: u64) -> Sock {
        Sock::new(
            7,
            TcpState::Established,
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            since_ns,
        )
    }

    #[test]
    fn reconciles_of_one_namespace_at_once_each_keep_what_they_found() {
        let mut table = Table::new();
        for c in 1..=6 {
            table.records.insert(c, &established(10));
        }
        let (mut a, mut b) = (Reconcile::new(7, 100), Reconcile::new(7, 100));
        // Their parts interleave, as two clients' snapshots do: a finds 1-3, b 3-5.
        table.reconcile_batch(&mut a, &[diag(1, TcpState::Established)]);
        table.reconcile_batch(&mut b, &[diag(3, TcpState::Established)]);
        table.reconcile_batch(
            &mut a,
            &[
                diag(2, TcpState::Established),
                diag(3, TcpState::Established),
            ],
        );
        table.reconcile_batch(
            &mut b,
            &[
                diag(4, TcpState::Established),
                diag(5, TcpState::Established),
            ],
        );
        table.reconcile_end(a);
        let mut live: Vec<u64> = table.live().map(|(c, _)| c).collect();
        live.sort_unstable();
        assert_eq!(
            live,
            [1, 2, 3],
            "a drops what it did not find, b's 4 and 5 too"
        );
        table.reconcile_end(b);
        let live: Vec<u64> = table.live().map(|(c, _)| c).collect();
        assert_eq!(live, [3], "b found only 3 of what a left");
    }

    #[test]
    fn a_socket_given_a_found_sockets_slot_is_not_found() {
        let mut table = Table::new();
        table.records.insert(1, &established(10));
        let mut r = Reconcile::new(7, 100);
        table.reconcile_batch(&mut r, &[diag(1, TcpState::Established)]);
        // 1 closes (its slot is freed) and 2, from before the dump, takes the slot: the dump
        // ended without it, so it is gone.
        table.records.remove(1);
        table.records.insert(2, &established(50));
        table.reconcile_end(r);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn the_slab_is_compacted_only_once_no_reconcile_marks() {
        let mut table = Table::new();
        for c in 1..=20_000 {
            table.records.insert(c, &established(10));
        }
        let mut r = Reconcile::new(7, 100);
        let kept: Vec<DiagSock> = (19_991..=20_000)
            .map(|c| diag(c, TcpState::Established))
            .collect();
        // A reconcile that drops most sockets, and another one still marking meanwhile.
        let mut other = Reconcile::new(7, 100);
        table.reconcile_batch(&mut other, &kept[..5]);
        table.reconcile_batch(&mut r, &kept);
        table.reconcile_end(r);
        assert_eq!(table.len(), 10);
        let room = table.records.room();
        table.expire(0);
        assert!(
            table.records.room() >= room,
            "not compacted while other marks"
        );
        table.reconcile_batch(&mut other, &kept[5..]);
        table.reconcile_end(other);
        assert_eq!(
            table.len(),
            10,
            "the slots other marked still held its sockets"
        );
        table.expire(0);
        assert!(table.records.room() <= 8192, "{}", table.records.room());
    }

    #[test]
    fn a_reconcile_whose_marks_went_stale_drops_nothing_and_is_no_walk() {
        let mut table = Table::new();
        table.records.insert(1, &established(10));
        table.records.insert(2, &established(10));
        let mut r = Reconcile::new(7, 100);
        table.reconcile_batch(&mut r, &[diag(1, TcpState::Established)]);
        table.records.drop_stale_marks(std::time::Duration::ZERO);
        table.reconcile_batch(&mut r, &[]);
        table.reconcile_end(r);
        assert_eq!(table.len(), 2, "2 was not found, yet what was is not known");
        assert_eq!(table.freshness(7, 100, 1_000), Err(Stale::NeverWalked));
    }
}
