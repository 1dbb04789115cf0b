//! Compact storage of the table's records: live sockets in a slab behind a cookie -> slot
//! index, closed connections in a ring of fixed size, owners and IPv6 addresses interned.
//!
//! Why: an agent holds a record per socket of the machine (a million on a busy host). Kept as
//! `FxHashMap<u64, Sock>`, each entry cost its 200-byte `Sock` in a table of power-of-two
//! buckets that the churn of inserts and removals grows to twice the entries (499 bytes per
//! live socket, measured in `records_stay_compact`). Here a hash bucket holds only a 4-byte
//! slot number, a record packs its addresses (IPv4 in place, IPv6 as an interned id), its
//! owner (an interned task plus the fd) and its optional times (sentinels, not `Option`), and
//! the history of states lives in a side slab only for the sockets that have one (a socket
//! found by a dump has none).

use std::{
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use netmon_common::{CgroupSource, TcpState};
use rustc_hash::FxHashMap;

use crate::{
    decode::Task,
    table::{Closed, End, Owner, Path, Sock, Walked},
};

/// The state of a free slot of the slab (no TCP state has it).
const FREE: u8 = u8::MAX;

/// "None" of an optional time or id.
const NONE64: u64 = u64::MAX;
const NONE32: u32 = u32::MAX;

/// Maps and slabs below this many slots are never shrunk: not worth the rehash.
const SMALL: usize = 4096;

/// Values kept once however many records refer to them, with a reference count.
#[derive(Debug)]
struct Interner<T> {
    ids: FxHashMap<T, u32>,
    /// (value, references); a slot with 0 references is free.
    items: Vec<(T, u32)>,
    free: Vec<u32>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Self {
            ids: FxHashMap::default(),
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T: Copy + Eq + Hash> Interner<T> {
    fn intern(&mut self, v: T) -> u32 {
        if let Some(&id) = self.ids.get(&v) {
            self.items[id as usize].1 += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.items[id as usize] = (v, 1);
                id
            }
            None => {
                self.items.push((v, 1));
                u32::try_from(self.items.len() - 1).expect("fewer than 2^32 distinct values")
            }
        };
        self.ids.insert(v, id);
        id
    }

    fn get(&self, id: u32) -> T {
        self.items[id as usize].0
    }

    fn release(&mut self, id: u32) {
        let item = &mut self.items[id as usize];
        item.1 -= 1;
        if item.1 == 0 {
            self.ids.remove(&item.0);
            self.free.push(id);
        }
    }

    /// Gives memory back once every value is gone (ids are handed out again from 0).
    fn shrink(&mut self) {
        if self.ids.is_empty() && self.items.capacity() > SMALL {
            *self = Self::default();
        }
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// Records in a vector, addressed by slot; freed slots are reused.
#[derive(Debug)]
struct Slab<T> {
    items: Vec<T>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T: Copy> Slab<T> {
    fn insert(&mut self, v: T) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.items[i as usize] = v;
                i
            }
            None => {
                self.items.push(v);
                u32::try_from(self.items.len() - 1).expect("fewer than 2^32 records")
            }
        }
    }

    fn remove(&mut self, i: u32) -> T {
        self.free.push(i);
        self.items[i as usize]
    }

    fn len(&self) -> usize {
        self.items.len() - self.free.len()
    }

    /// Whether holes take most of the room: then [`Slab::compact`] gives it back.
    fn sparse(&self) -> bool {
        self.items.capacity() > SMALL && self.items.capacity() / 4 > self.len()
    }

    /// Moves the records above slot `len()` into the holes below it and frees the rest.
    /// `refs` calls its argument on every reference to a record in use, which is updated
    /// where its record moves. Room for twice the records is kept, as for the maps.
    fn compact(&mut self, refs: impl FnOnce(&mut dyn FnMut(&mut u32))) {
        let n = self.len();
        let mut holes: Vec<u32> = self
            .free
            .iter()
            .copied()
            .filter(|&i| (i as usize) < n)
            .collect();
        let items = &mut self.items;
        refs(&mut |slot: &mut u32| {
            if *slot as usize >= n {
                let hole = holes.pop().expect("a hole below len() per record above it");
                items[hole as usize] = items[*slot as usize];
                *slot = hole;
            }
        });
        self.items.truncate(n);
        self.items.shrink_to((n * 2).max(SMALL));
        self.free = Vec::new();
    }
}

/// The slots of the slab an open reconcile found, a bit a slot: 128 KiB at a million
/// sockets where a set of their cookies took ~19 MB, held while the reconcile's dump streams
/// (the agent's highest moment under churn with reconciling snapshots). A bit is only
/// meaningful while its slot keeps its record, so [`Records`] clears it when the slot is
/// freed and does not compact the slab while any reconcile is marking.
#[derive(Debug, Default)]
pub struct SlotMarks {
    bits: Vec<u64>,
}

impl SlotMarks {
    fn set(&mut self, slot: u32) {
        let (word, bit) = (slot as usize / 64, slot % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << bit;
    }

    fn clear(&mut self, slot: u32) {
        if let Some(w) = self.bits.get_mut(slot as usize / 64) {
            *w &= !(1 << (slot % 64));
        }
    }

    pub fn get(&self, slot: u32) -> bool {
        self.bits
            .get(slot as usize / 64)
            .is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bits.capacity() * 8
    }
}

/// The marks of one reconcile, named by the reconcile's id.
#[derive(Debug)]
struct Marking {
    id: u64,
    marks: SlotMarks,
    /// When a part last marked: a reconcile whose client went away never ends, and its marks
    /// must not hold back compaction for good (see [`Records::drop_stale_marks`]).
    touched: Instant,
}

/// Flag bits of a packed record.
const SINCE_EXACT: u8 = 1;
const RESET_SENT: u8 = 2;
const RESET_RECEIVED: u8 = 4;
const LOCAL_V6: u8 = 8;
const REMOTE_V6: u8 = 16;
/// The record holds what the last full walk that saw the socket reported ([`Walked`]).
const WALKED: u8 = 32;
const V6ONLY: u8 = 64;

/// A live socket, packed (88 bytes; [`Sock`] is what callers see).
#[derive(Clone, Copy, Debug)]
struct SockRec {
    /// Its key, so that a pass over a namespace's sockets reads the slab in order instead of
    /// following the index to a slot at random (a cache miss per socket at 100k).
    cookie: u64,
    /// [`Walked`] without its flag: Recv-Q, Send-Q, uid, inode (valid with `WALKED`).
    walked: [u32; 4],
    since_ns: u64,
    born_ns: u64,
    cgroup_id: u64,
    netns: u32,
    /// Interned task, or NONE32.
    owner: u32,
    fd: u32,
    /// Slot in the path slab, or NONE32 for an empty path.
    path: u32,
    /// IPv4 address bits, or the interned IPv6 address (see the V6 flags).
    local_ip: u32,
    remote_ip: u32,
    local_port: u16,
    remote_port: u16,
    state: u8,
    flags: u8,
    cgroup_source: u8,
}

/// What a pass over the records can judge a socket by before decoding it: decoding (owner,
/// addresses) is most of a pass's cost, and a filtered request keeps few sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Glance {
    /// The kernel's number for the state.
    pub state: u8,
    pub local_port: u16,
    pub remote_port: u16,
}

/// A closed connection, packed (136 bytes against 224 for [`Closed`]).
#[derive(Clone, Copy, Debug)]
struct ClosedRec {
    cookie: u64,
    born_ns: u64,
    closed_ns: u64,
    bytes_acked: u64,
    bytes_received: u64,
    cgroup_id: u64,
    path: Path,
    netns: u32,
    owner: u32,
    fd: u32,
    local_ip: u32,
    remote_ip: u32,
    local_port: u16,
    remote_port: u16,
    last: u8,
    end: u8,
    cgroup_source: u8,
    flags: u8,
}

fn end_to_u8(e: End) -> u8 {
    e as u8
}

fn end_from_u8(v: u8) -> End {
    End::ALL.get(usize::from(v)).copied().unwrap_or(End::Normal)
}

fn opt64(v: u64) -> Option<u64> {
    (v != NONE64).then_some(v)
}

/// What records share: owners' tasks and IPv6 addresses.
#[derive(Debug, Default)]
struct Pools {
    tasks: Interner<Task>,
    v6: Interner<[u8; 16]>,
}

impl Pools {
    /// (address bits or id, whether it is IPv6).
    fn addr(&mut self, a: IpAddr) -> (u32, bool) {
        match a {
            IpAddr::V4(v4) => (u32::from(v4), false),
            IpAddr::V6(v6) => (self.v6.intern(v6.octets()), true),
        }
    }

    fn ip(&self, bits: u32, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(self.v6.get(bits)))
        } else {
            IpAddr::V4(Ipv4Addr::from(bits))
        }
    }

    fn release_addr(&mut self, bits: u32, v6: bool) {
        if v6 {
            self.v6.release(bits);
        }
    }

    /// (task id, fd) of an owner.
    fn owner(&mut self, o: Option<Owner>) -> (u32, u32) {
        match o {
            Some(o) => (self.tasks.intern(o.task), o.fd.unwrap_or(NONE32)),
            None => (NONE32, NONE32),
        }
    }

    fn get_owner(&self, id: u32, fd: u32) -> Option<Owner> {
        (id != NONE32).then(|| Owner {
            task: self.tasks.get(id),
            fd: (fd != NONE32).then_some(fd),
        })
    }

    fn release_owner(&mut self, id: u32) {
        if id != NONE32 {
            self.tasks.release(id);
        }
    }
}

/// The live sockets and closed connections of a table.
#[derive(Debug)]
pub struct Records {
    index: FxHashMap<u64, u32>,
    socks: Slab<SockRec>,
    paths: Slab<Path>,
    pools: Pools,
    /// The ring: `closed_cap` slots once full, `head` the oldest.
    closed: Vec<ClosedRec>,
    closed_cap: usize,
    head: usize,
    /// Open reconciles' marks: as many as reconciles run at once (one or two).
    marking: Vec<Marking>,
}

impl Records {
    pub fn new(closed_capacity: usize) -> Self {
        Self {
            index: FxHashMap::default(),
            socks: Slab::default(),
            paths: Slab::default(),
            pools: Pools::default(),
            // Reserved, not touched: pages count only once written, and the ring never
            // grows past its capacity (no doubling, no shrinking).
            closed: Vec::with_capacity(closed_capacity),
            closed_cap: closed_capacity,
            head: 0,
            marking: Vec::new(),
        }
    }

    fn decode(&self, r: &SockRec) -> Sock {
        Sock {
            path: if r.path == NONE32 {
                Path::default()
            } else {
                self.paths.items[r.path as usize]
            },
            ..self.decode_pathless(r)
        }
    }

    /// A record without its path (a second lookup, and 48 bytes to copy).
    fn decode_pathless(&self, r: &SockRec) -> Sock {
        Sock {
            netns: r.netns,
            state: TcpState::from_kernel(r.state),
            local: SocketAddr::new(
                self.pools.ip(r.local_ip, r.flags & LOCAL_V6 != 0),
                r.local_port,
            ),
            remote: SocketAddr::new(
                self.pools.ip(r.remote_ip, r.flags & REMOTE_V6 != 0),
                r.remote_port,
            ),
            born_ns: opt64(r.born_ns),
            since_ns: r.since_ns,
            since_exact: r.flags & SINCE_EXACT != 0,
            path: Path::default(),
            owner: self.pools.get_owner(r.owner, r.fd),
            reset_sent: r.flags & RESET_SENT != 0,
            reset_received: r.flags & RESET_RECEIVED != 0,
            cgroup_id: r.cgroup_id,
            cgroup_source: r.cgroup_source_value(),
        }
    }

    /// A packed record of `s`, taking references in the pools (released by `release`).
    /// Values `old` already holds are reused, so that rewriting a record costs no lookup.
    fn encode(&mut self, s: &Sock, old: Option<&SockRec>) -> SockRec {
        let (local_ip, lv6) = match old {
            Some(o) if self.same_ip(o.local_ip, o.flags & LOCAL_V6 != 0, s.local.ip()) => {
                self.retain_ip(o.local_ip, o.flags & LOCAL_V6 != 0)
            }
            _ => self.pools.addr(s.local.ip()),
        };
        let (remote_ip, rv6) = match old {
            Some(o) if self.same_ip(o.remote_ip, o.flags & REMOTE_V6 != 0, s.remote.ip()) => {
                self.retain_ip(o.remote_ip, o.flags & REMOTE_V6 != 0)
            }
            _ => self.pools.addr(s.remote.ip()),
        };
        let (owner, fd) = match (old, s.owner) {
            (Some(o), Some(new))
                if o.owner != NONE32 && self.pools.tasks.get(o.owner) == new.task =>
            {
                self.pools.tasks.items[o.owner as usize].1 += 1;
                (o.owner, new.fd.unwrap_or(NONE32))
            }
            _ => self.pools.owner(s.owner),
        };
        let mut flags = 0;
        for (on, bit) in [
            (s.since_exact, SINCE_EXACT),
            (s.reset_sent, RESET_SENT),
            (s.reset_received, RESET_RECEIVED),
            (lv6, LOCAL_V6),
            (rv6, REMOTE_V6),
        ] {
            if on {
                flags |= bit;
            }
        }
        // What a walk saw stays until the next walk: events do not carry it.
        let walked = match old {
            Some(o) => {
                flags |= o.flags & (WALKED | V6ONLY);
                o.walked
            }
            None => [0; 4],
        };
        let path = match old.map(|o| o.path).filter(|&p| p != NONE32) {
            _ if s.path.is_empty() => NONE32,
            Some(p) => {
                self.paths.items[p as usize] = s.path;
                p
            }
            None => self.paths.insert(s.path),
        };
        SockRec {
            cookie: old.map_or(0, |o| o.cookie),
            walked,
            since_ns: s.since_ns,
            born_ns: s.born_ns.unwrap_or(NONE64),
            cgroup_id: s.cgroup_id,
            netns: s.netns,
            owner,
            fd,
            path,
            local_ip,
            remote_ip,
            local_port: s.local.port(),
            remote_port: s.remote.port(),
            state: s.state.to_kernel(),
            flags,
            cgroup_source: s.cgroup_source as u8,
        }
    }

    fn same_ip(&self, bits: u32, v6: bool, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => !v6 && bits == u32::from(a),
            IpAddr::V6(a) => v6 && self.pools.v6.get(bits) == a.octets(),
        }
    }

    fn retain_ip(&mut self, bits: u32, v6: bool) -> (u32, bool) {
        if v6 {
            self.pools.v6.items[bits as usize].1 += 1;
        }
        (bits, v6)
    }

    /// Drops the pool references of a record; `keep_path` when its path slot lives on.
    fn release(&mut self, r: &SockRec, keep_path: bool) {
        self.pools.release_addr(r.local_ip, r.flags & LOCAL_V6 != 0);
        self.pools
            .release_addr(r.remote_ip, r.flags & REMOTE_V6 != 0);
        self.pools.release_owner(r.owner);
        if !keep_path && r.path != NONE32 {
            self.paths.remove(r.path);
        }
    }

    pub fn get(&self, cookie: u64) -> Option<Sock> {
        self.index
            .get(&cookie)
            .map(|&i| self.decode(&self.socks.items[i as usize]))
    }

    /// The state of a live socket, without decoding the rest.
    pub fn state(&self, cookie: u64) -> Option<TcpState> {
        self.index
            .get(&cookie)
            .map(|&i| TcpState::from_kernel(self.socks.items[i as usize].state))
    }

    /// Stores what a full walk reported of a live socket (nothing if it is not live).
    pub fn set_walked(&mut self, cookie: u64, w: &Walked) {
        if let Some(&i) = self.index.get(&cookie) {
            let r = &mut self.socks.items[i as usize];
            r.walked = [w.recv_q, w.send_q, w.uid, w.inode];
            r.flags |= WALKED;
            if w.v6only {
                r.flags |= V6ONLY;
            } else {
                r.flags &= !V6ONLY;
            }
        }
    }

    /// What the last full walk that saw a live socket reported; `None` if no walk saw it.
    pub fn walked(&self, cookie: u64) -> Option<Walked> {
        Self::walked_of(&self.socks.items[*self.index.get(&cookie)? as usize])
    }

    fn walked_of(r: &SockRec) -> Option<Walked> {
        (r.flags & WALKED != 0).then(|| Walked {
            recv_q: r.walked[0],
            send_q: r.walked[1],
            uid: r.walked[2],
            inode: r.walked[3],
            v6only: r.flags & V6ONLY != 0,
        })
    }

    /// Sets the owner `owner_of` gives for the inode of each live socket a walk saw, in one
    /// pass over the slab.
    pub fn set_owners_by_inode(&mut self, mut owner_of: impl FnMut(u32) -> Option<Owner>) {
        for i in 0..self.socks.items.len() {
            let r = self.socks.items[i];
            if r.state == FREE || r.flags & WALKED == 0 || r.walked[3] == 0 {
                continue;
            }
            if let Some(owner) = owner_of(r.walked[3]) {
                let mut sock = self.decode(&r);
                sock.owner = Some(owner);
                self.insert(r.cookie, &sock);
            }
        }
    }

    /// A live socket without its path, and what a walk saw of it: what a served row needs.
    /// `slot` is where [`Records::each_served`] found it: still there unless the slab was
    /// compacted since, else it is looked up.
    pub fn served(&self, cookie: u64, slot: u32) -> Option<(Sock, Option<Walked>)> {
        let r = match self.socks.items.get(slot as usize) {
            Some(r) if r.cookie == cookie && r.state != FREE => r,
            _ => &self.socks.items[*self.index.get(&cookie)? as usize],
        };
        Some((self.decode_pathless(r), Self::walked_of(r)))
    }

    /// [`Records::served`] for each live socket of `netns` (cookie, slot, ...) that `look`
    /// keeps, in one pass over the slab in order; `look` sees the packed record's state and
    /// ports before anything is decoded.
    pub fn each_served(
        &self,
        netns: u32,
        mut look: impl FnMut(Glance) -> bool,
        mut f: impl FnMut(u64, u32, Sock, Option<Walked>),
    ) {
        for (i, r) in self.socks.items.iter().enumerate() {
            if r.netns == netns
                && r.state != FREE
                && look(Glance {
                    state: r.state,
                    local_port: r.local_port,
                    remote_port: r.remote_port,
                })
            {
                f(
                    r.cookie,
                    i as u32,
                    self.decode_pathless(r),
                    Self::walked_of(r),
                );
            }
        }
    }

    /// An address packed as a record packs it, taking a reference on an IPv6 address (give
    /// it back with [`Records::release_packed`]).
    pub fn pack(&mut self, a: SocketAddr) -> PackedAddr {
        let (ip, v6) = self.pools.addr(a.ip());
        PackedAddr {
            ip,
            port: a.port(),
            v6,
        }
    }

    pub fn unpack(&self, p: PackedAddr) -> SocketAddr {
        SocketAddr::new(self.pools.ip(p.ip, p.v6), p.port)
    }

    pub fn release_packed(&mut self, p: PackedAddr) {
        self.pools.release_addr(p.ip, p.v6);
    }

    pub fn contains(&self, cookie: u64) -> bool {
        self.index.contains_key(&cookie)
    }

    pub fn insert(&mut self, cookie: u64, s: &Sock) {
        match self.index.get(&cookie).copied() {
            Some(i) => {
                let old = self.socks.items[i as usize];
                let new = self.encode(s, Some(&old));
                // The path slot was rewritten in place or freed below.
                self.release(&old, new.path == old.path);
                self.socks.items[i as usize] = new;
            }
            None => {
                let new = SockRec {
                    cookie,
                    ..self.encode(s, None)
                };
                let i = self.socks.insert(new);
                self.index.insert(cookie, i);
            }
        }
    }

    pub fn remove(&mut self, cookie: u64) -> Option<Sock> {
        let i = self.index.remove(&cookie)?;
        let r = self.free_slot(i);
        let s = self.decode(&r);
        self.release(&r, false);
        Some(s)
    }

    /// Frees slot `i` and returns its record: no open reconcile's mark stays on it, or the
    /// next socket given the slot would count as found.
    fn free_slot(&mut self, i: u32) -> SockRec {
        let r = self.socks.remove(i);
        self.socks.items[i as usize].state = FREE;
        for m in &mut self.marking {
            m.marks.clear(i);
        }
        r
    }

    /// Keeps the live sockets for which `keep(cookie, slot, netns, since_ns)` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(u64, u32, u32, u64) -> bool) {
        let mut gone = Vec::new();
        self.index.retain(|&cookie, &mut i| {
            let r = &self.socks.items[i as usize];
            let k = keep(cookie, i, r.netns, r.since_ns);
            if !k {
                gone.push(i);
            }
            k
        });
        for i in gone {
            let r = self.free_slot(i);
            self.release(&r, false);
        }
    }

    /// Opens the marks of reconcile `id` (see [`SlotMarks`]).
    pub fn marks_begin(&mut self, id: u64) {
        self.marking.push(Marking {
            id,
            marks: SlotMarks::default(),
            touched: Instant::now(),
        });
    }

    /// Marks the live socket `cookie` as found by reconcile `id`; false if that reconcile's
    /// marks are gone (dropped as stale), so that what it found is no longer known.
    pub fn mark(&mut self, id: u64, cookie: u64) -> bool {
        let Some(m) = self.marking.iter_mut().find(|m| m.id == id) else {
            return false;
        };
        if let Some(&i) = self.index.get(&cookie) {
            m.marks.set(i);
        }
        true
    }

    /// Notes that reconcile `id` merged a part now (a part may find no live socket).
    pub fn marks_touch(&mut self, id: u64) -> bool {
        match self.marking.iter_mut().find(|m| m.id == id) {
            Some(m) => {
                m.touched = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Closes the marks of reconcile `id` and hands them over (`None` if dropped as stale).
    pub fn marks_end(&mut self, id: u64) -> Option<SlotMarks> {
        let at = self.marking.iter().position(|m| m.id == id)?;
        Some(self.marking.swap_remove(at).marks)
    }

    /// Drops the marks of reconciles that merged no part for `idle` (their client went away,
    /// or their dump failed where nobody ends them), so that the slab can be compacted again.
    pub fn drop_stale_marks(&mut self, idle: Duration) {
        self.marking.retain(|m| m.touched.elapsed() < idle);
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, Sock)> + '_ {
        self.index
            .iter()
            .map(|(&c, &i)| (c, self.decode(&self.socks.items[i as usize])))
    }

    /// Gives back most of the memory of a burst of sockets that is gone: a hash map and a
    /// vector never shrink by themselves (see `Table::expire`).
    pub fn shrink(&mut self) {
        shrink_map(&mut self.index);
        // Compaction moves records to other slots, which would void open reconciles' marks:
        // it waits for the next shrink once they are closed.
        if self.socks.sparse() && self.marking.is_empty() {
            let index = &mut self.index;
            self.socks.compact(|f| index.values_mut().for_each(f));
        }
        if self.paths.sparse() {
            let (index, socks) = (&self.index, &mut self.socks.items);
            // A socket's path slot is the one reference into the path slab.
            self.paths.compact(|f| {
                for &i in index.values() {
                    let path = &mut socks[i as usize].path;
                    if *path != NONE32 {
                        f(path);
                    }
                }
            });
        }
        self.pools.tasks.shrink();
        self.pools.v6.shrink();
    }

    /// Room in the index and the slab, in records.
    #[cfg(test)]
    pub fn room(&self) -> usize {
        self.index.capacity().max(self.socks.items.capacity())
    }

    /// Distinct owners' tasks and IPv6 addresses held.
    pub fn interned(&self) -> (usize, usize) {
        (self.pools.tasks.len(), self.pools.v6.len())
    }

    /// Keeps a closed connection; false when the history's capacity is 0, so nothing is kept.
    /// Once full, each new record replaces the oldest (the caller counts the eviction).
    pub fn push_closed(&mut self, c: &Closed) -> PushClosed {
        if self.closed_cap == 0 {
            return PushClosed::Dropped;
        }
        let (local_ip, lv6) = self.pools.addr(c.local.ip());
        let (remote_ip, rv6) = self.pools.addr(c.remote.ip());
        let (owner, fd) = self.pools.owner(c.owner);
        let rec = ClosedRec {
            cookie: c.cookie,
            born_ns: c.born_ns.unwrap_or(NONE64),
            closed_ns: c.closed_ns,
            bytes_acked: c.bytes_acked,
            bytes_received: c.bytes_received,
            cgroup_id: c.cgroup_id,
            path: c.path,
            netns: c.netns,
            owner,
            fd,
            local_ip,
            remote_ip,
            local_port: c.local.port(),
            remote_port: c.remote.port(),
            last: c.last.to_kernel(),
            end: end_to_u8(c.end),
            cgroup_source: c.cgroup_source as u8,
            flags: if lv6 { LOCAL_V6 } else { 0 } | if rv6 { REMOTE_V6 } else { 0 },
        };
        if self.closed.len() < self.closed_cap {
            self.closed.push(rec);
            return PushClosed::Kept;
        }
        let old = std::mem::replace(&mut self.closed[self.head], rec);
        self.head = (self.head + 1) % self.closed_cap;
        self.pools
            .release_addr(old.local_ip, old.flags & LOCAL_V6 != 0);
        self.pools
            .release_addr(old.remote_ip, old.flags & REMOTE_V6 != 0);
        self.pools.release_owner(old.owner);
        PushClosed::Evicted
    }

    fn closed_at(&self, i: usize) -> &ClosedRec {
        &self.closed[(self.head + i) % self.closed.len()]
    }

    fn decode_closed(&self, r: &ClosedRec) -> Closed {
        Closed {
            cookie: r.cookie,
            netns: r.netns,
            local: SocketAddr::new(
                self.pools.ip(r.local_ip, r.flags & LOCAL_V6 != 0),
                r.local_port,
            ),
            remote: SocketAddr::new(
                self.pools.ip(r.remote_ip, r.flags & REMOTE_V6 != 0),
                r.remote_port,
            ),
            born_ns: opt64(r.born_ns),
            closed_ns: r.closed_ns,
            last: TcpState::from_kernel(r.last),
            path: r.path,
            owner: self.pools.get_owner(r.owner, r.fd),
            end: end_from_u8(r.end),
            bytes_acked: r.bytes_acked,
            bytes_received: r.bytes_received,
            cgroup_id: r.cgroup_id,
            cgroup_source: CgroupSource::from_u8(r.cgroup_source),
        }
    }

    /// Closed connections, oldest first.
    pub fn closed(&self) -> impl DoubleEndedIterator<Item = Closed> + ExactSizeIterator + '_ {
        (0..self.closed.len()).map(|i| self.decode_closed(self.closed_at(i)))
    }

    pub fn closed_len(&self) -> usize {
        self.closed.len()
    }

    /// The `i`th closed connection, oldest first, if it ended at or after `since_ns` in one of
    /// the namespaces `netns` accepts: the two are read before the record is unpacked.
    pub fn closed_if(
        &self,
        i: usize,
        since_ns: u64,
        netns: impl Fn(u32) -> bool,
    ) -> Option<Closed> {
        let r = self.closed_at(i);
        (r.closed_ns >= since_ns && netns(r.netns)).then(|| self.decode_closed(r))
    }

    /// Applies `f` to the end of the newest record of `cookie` among the last `within`.
    pub fn amend_closed(&mut self, cookie: u64, within: usize, f: impl FnOnce(&mut Closed)) {
        let n = self.closed.len();
        let Some(i) = (0..n)
            .rev()
            .take(within)
            .find(|&i| self.closed_at(i).cookie == cookie)
        else {
            return;
        };
        let slot = (self.head + i) % n;
        let mut c = self.decode_closed(&self.closed[slot]);
        f(&mut c);
        self.closed[slot].end = end_to_u8(c.end);
    }
}

/// An address outside a record (a TIME-WAIT entry's): IPv4 bits or an interned IPv6 id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedAddr {
    ip: u32,
    port: u16,
    v6: bool,
}

impl PackedAddr {
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// What [`Records::push_closed`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushClosed {
    Kept,
    /// Kept in place of the oldest.
    Evicted,
    /// The capacity is 0.
    Dropped,
}

impl SockRec {
    fn cgroup_source_value(&self) -> CgroupSource {
        CgroupSource::from_u8(self.cgroup_source)
    }
}

/// Gives back most of a map's memory once it holds less than a quarter of what it has room
/// for: a hash map never shrinks by itself, so one burst of sockets (another namespace's
/// 100k connections, a storm's TIME-WAIT) would otherwise stay in a long-running agent's RSS
/// for good. Room for twice the entries is kept, so that a map that grows again does not
/// rehash at once, and small maps are left alone.
pub fn shrink_map<K: Hash + Eq, V>(map: &mut FxHashMap<K, V>) {
    if map.capacity() > SMALL && map.capacity() / 4 > map.len() {
        map.shrink_to((map.len() * 2).max(SMALL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Task;

    fn sock(i: u32, v6: bool, owner: Option<u32>) -> Sock {
        let ip = |n: u32| -> IpAddr {
            if v6 {
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n as u16))
            } else {
                IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + n))
            }
        };
        let mut path = Path::default();
        if i.is_multiple_of(2) {
            path.push(TcpState::SynSent, 10_000);
            path.push(TcpState::Established, 20_000 + u64::from(i));
        }
        Sock {
            netns: 7,
            state: TcpState::Established,
            local: SocketAddr::new(ip(i), 1000 + i as u16),
            remote: SocketAddr::new(ip(i + 1), 80),
            born_ns: (!i.is_multiple_of(3)).then_some(u64::from(i) * 10),
            since_ns: u64::from(i) * 20,
            since_exact: i.is_multiple_of(2),
            path,
            owner: owner.map(|pid| Owner {
                task: Task::new(pid, pid, 1000, "worker"),
                fd: (pid % 2 == 0).then_some(pid + 3),
            }),
            reset_sent: i.is_multiple_of(5),
            reset_received: i.is_multiple_of(7),
            cgroup_id: u64::from(i),
            cgroup_source: CgroupSource::Socket,
        }
    }

    #[test]
    fn a_pass_over_a_namespace_finds_each_socket_once_and_a_moved_one_by_its_cookie() {
        let mut r = Records::new(0);
        for i in 0..10_000u32 {
            r.insert(
                u64::from(i),
                &Sock {
                    netns: 7 + i % 2,
                    ..sock(i, false, None)
                },
            );
        }
        // Most go (the slab is compacted), a few come back into freed slots.
        r.retain(|cookie, _, _, _| cookie % 100 == 0);
        for i in 0..10u32 {
            r.remove(u64::from(i) * 100);
        }
        let before: Vec<(u64, u32)> = {
            let mut v = Vec::new();
            r.each_served(7, |_| true, |c, slot, _, _| v.push((c, slot)));
            v
        };
        r.shrink();
        r.insert(
            1,
            &Sock {
                netns: 7,
                ..sock(1, false, None)
            },
        );
        let mut after = Vec::new();
        r.each_served(7, |_| true, |c, _, s, _| after.push((c, s.netns)));
        after.sort_unstable();
        let want: Vec<(u64, u32)> = (1..100)
            .map(|i| i * 100)
            .filter(|c| *c >= 1000)
            .map(|c| (c, 7))
            .chain([(1, 7)])
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(after, want);
        // Slots taken before the compaction still find their socket, by cookie.
        for (cookie, slot) in before {
            assert_eq!(r.served(cookie, slot).map(|(s, _)| s.netns), Some(7));
        }
    }

    #[test]
    fn a_record_decodes_to_what_was_stored() {
        let mut r = Records::new(4);
        for i in 0..20 {
            let s = sock(i, i % 4 < 2, (!i.is_multiple_of(3)).then_some(100 + i % 2));
            r.insert(u64::from(i), &s);
            assert_eq!(r.get(u64::from(i)), Some(s), "record {i}");
        }
        // Rewritten with other values: owner, addresses, path change or go.
        for i in 0..20 {
            let s = sock(i + 1, i % 4 >= 2, (i % 2 == 0).then_some(200));
            r.insert(u64::from(i), &s);
            assert_eq!(r.get(u64::from(i)), Some(s), "rewritten {i}");
        }
        for i in 0..20u64 {
            assert!(r.remove(i).is_some());
        }
        assert_eq!(r.interned(), (0, 0), "references all released");
        assert_eq!(r.paths.len(), 0);
    }

    #[test]
    fn the_closed_ring_keeps_the_newest_and_releases_what_it_evicts() {
        let mut r = Records::new(3);
        let closed = |i: u32| Closed {
            cookie: u64::from(i),
            netns: 1,
            local: SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 1),
            remote: SocketAddr::new(IpAddr::V6(Ipv6Addr::new(1, 0, 0, 0, 0, 0, 0, i as u16)), 2),
            born_ns: None,
            closed_ns: u64::from(i),
            last: TcpState::FinWait2,
            path: Path::default(),
            owner: Some(Owner::new(Task::new(i, i, 0, "c"))),
            end: End::Refused,
            bytes_acked: 5,
            bytes_received: 6,
            cgroup_id: 9,
            cgroup_source: CgroupSource::Task,
        };
        let pushed: Vec<_> = (0..5).map(|i| r.push_closed(&closed(i))).collect();
        assert_eq!(pushed[2], PushClosed::Kept);
        assert_eq!(pushed[3], PushClosed::Evicted);
        let kept: Vec<Closed> = r.closed().collect();
        assert_eq!(kept, [closed(2), closed(3), closed(4)]);
        assert_eq!(r.closed().next_back(), Some(closed(4)));
        // ::1 once, three peers; three owners.
        assert_eq!(r.interned(), (3, 4));
        r.amend_closed(3, 64, |c| c.end = End::ResetSent);
        assert_eq!(r.closed().nth(1).map(|c| c.end), Some(End::ResetSent));
        assert_eq!(Records::new(0).push_closed(&closed(1)), PushClosed::Dropped);
    }

    #[test]
    fn slot_marks_hold_a_bit_a_slot() {
        let mut m = SlotMarks::default();
        for slot in [0, 63, 64, 1000, 999_999] {
            m.set(slot);
        }
        m.clear(1000);
        m.clear(5_000_000); // past the end: nothing to clear
        let set: Vec<u32> = (0..1_000_000).filter(|&s| m.get(s)).collect();
        assert_eq!(set, [0, 63, 64, 999_999]);
        assert!(!m.get(u32::MAX));
        // A million slots in 122 KiB (a set of cookies: ~19 MB).
        assert!(m.bytes() <= 1_000_000 / 8 + 64, "{}", m.bytes());
    }

    #[test]
    fn a_freed_slot_loses_its_marks() {
        let mut r = Records::new(0);
        r.insert(1, &sock(1, false, None));
        r.marks_begin(5);
        assert!(r.mark(5, 1));
        let slot = r.index[&1];
        r.remove(1);
        r.insert(2, &sock(2, false, None));
        assert_eq!(r.index[&2], slot, "the freed slot is reused");
        let marks = r.marks_end(5).unwrap();
        assert!(!marks.get(slot));
        assert!(!r.mark(5, 2), "ended marks are gone");
    }

    #[test]
    fn shrinking_moves_records_and_keeps_every_one() {
        let mut r = Records::new(0);
        for i in 0..40_000 {
            r.insert(u64::from(i), &sock(i, false, Some(i % 8)));
        }
        let kept: Vec<u32> = (0..40_000).filter(|i| i % 97 == 0).collect();
        r.retain(|c, _, _, _| c % 97 == 0);
        r.shrink();
        assert!(
            r.socks.items.capacity() <= 8192,
            "{}",
            r.socks.items.capacity()
        );
        assert!(
            r.paths.items.capacity() <= 8192,
            "{}",
            r.paths.items.capacity()
        );
        assert_eq!(r.len(), kept.len());
        for i in kept {
            assert_eq!(r.get(u64::from(i)), Some(sock(i, false, Some(i % 8))));
        }
    }
}
