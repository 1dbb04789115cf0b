//! The one event loop: the attached probe and its ring, seeding, decoding, table updates,
//! loss and malformed-record accounting, the wake-up policy and reconciles with the kernel.
//!
//! Consumers ([`Sink`]s: `watch`'s printer, the agent, a future exporter) receive records and
//! never touch the ring. [`Pipeline`] is the pure part (ring records and counter readings in,
//! sink calls out) and is tested without a kernel; [`Tracer`] adds the probe and the loop. Other
//! threads reach the table through [`TracerHandle`], whose queries the loop answers between
//! two drains, so that dumps and rendering never run on the thread that drains the ring.

use std::{
    collections::VecDeque,
    io,
    time::{Duration, Instant},
};

use netmon_common::{DEFAULT_WAKEUP_BYTES, KernelFilter};
use tokio::sync::{mpsc, oneshot};

use crate::{
    attach::{AttachError, Drained, KernelCounters, Probe, ProbeConfig, RingWaiter},
    clock::Clock,
    decode::{self, Event, Hint, Transition},
    netns,
    output::LossKind,
    procfs,
    served::{self, Served},
    snapshot::Row,
    sock_diag::{Cancel, DiagError, DiagSock},
    source::{self, Enrich, RowsAhead, TracerStopped},
    table::{Closed, ClosedCursor, ClosedPart, Owner, Reconcile, Stale, Table},
};

/// How often the reader drains the ring when the program has not woken it.
const TICK: Duration = Duration::from_millis(50);
/// How often the loss counters are read (a few syscalls each).
const COUNTERS_EVERY: Duration = Duration::from_millis(250);
/// At most this many ring batches are drained before a reconcile: what the ring held when the
/// dump ended, without chasing a producer as fast as the reader for ever.
const DRAIN_BEFORE_RECONCILE: usize = 4;
/// How often TIME-WAIT entries older than the kernel keeps them are dropped.
const EXPIRE_EVERY: Duration = Duration::from_secs(5);
/// How often the ring is read while a dump or a merge runs beside (see [`read_ring_while`]):
/// the default ring holds ~0.8 s of a 10k connections/s churn, a small one much less.
const READ_POLL: Duration = Duration::from_millis(1);
/// At most this many drains of held records before a reconcile (each replays
/// [`REPLAY_BATCH`]).
const HELD_ROUNDS_BEFORE_RECONCILE: usize = 256;
/// At most this many bytes of ring records are held (~600k transitions); past it the ring
/// fills and the kernel counts what it drops, which is reported as a loss.
const HELD_MAX_BYTES: usize = 64 << 20;
/// Records replayed from the held ones per drain, after the ring was read into them: more
/// than arrive meanwhile, so the backlog shrinks, yet short enough to answer queries between.
const REPLAY_BATCH: usize = 16_384;

/// Ring records read ahead of the pipeline, oldest first: what the ring delivered while a
/// dump or a merge ran, replayed once the table is free again (length-prefixed, flat). A
/// seed at a million sockets holds seconds of a busy machine's events (~12 MB a second of a
/// 10k connections/s churn): past the first [`HELD_CHUNK`] they are kept deflated a chunk at
/// a time (records of one churn repeat most of their bytes), and a chunk is inflated only
/// when its turn to be replayed comes.
#[derive(Debug, Default)]
struct Held {
    /// Records not packed yet, the newest.
    open: Vec<u8>,
    /// Full chunks, deflated, oldest first, with their inflated length.
    packed: VecDeque<(Vec<u8>, usize)>,
    packed_bytes: usize,
    /// The chunk being replayed (inflated), and where its oldest record not yet replayed
    /// starts.
    replaying: Vec<u8>,
    pos: usize,
}

/// Held records are deflated in chunks of this size (a few ms of miniz's fastest level, on
/// the thread that reads the ring; a short hold, e.g. a `--max-age` request's pass, stays
/// below it and costs nothing).
const HELD_CHUNK: usize = 1 << 20;
/// miniz's fastest level: ~5x on a churn's records.
const HELD_LEVEL: u8 = 1;

impl Held {
    fn push(&mut self, record: &[u8]) {
        let len = u32::try_from(record.len()).unwrap_or(u32::MAX);
        if !self.open.is_empty() && self.open.len() + 4 + len as usize > HELD_CHUNK {
            let chunk = miniz_oxide::deflate::compress_to_vec(&self.open, HELD_LEVEL);
            self.packed_bytes += chunk.len();
            self.packed.push_back((chunk, self.open.len()));
            self.open.clear();
        }
        if self.open.capacity() == 0 {
            // One chunk's worth at once, so that the open chunk never doubles past it.
            self.open.reserve_exact(HELD_CHUNK);
        }
        self.open.extend_from_slice(&len.to_ne_bytes());
        self.open.extend_from_slice(&record[..len as usize]);
    }

    fn is_empty(&self) -> bool {
        self.pos == self.replaying.len() && self.packed.is_empty() && self.open.is_empty()
    }

    /// Bytes held, as held (deflated chunks at their deflated size).
    fn pending_bytes(&self) -> usize {
        self.replaying.len() - self.pos + self.packed_bytes + self.open.len()
    }

    /// Bytes of memory the held records take (capacities included).
    fn resident_bytes(&self) -> usize {
        self.open.capacity() + self.packed_bytes + self.replaying.capacity()
    }

    /// Hands out up to `max` of the oldest records; a chunk's memory goes once all its
    /// records were handed out, and all of it once every record was.
    fn take(&mut self, max: usize, mut f: impl FnMut(&[u8])) {
        let mut given = 0;
        while given < max {
            if self.pos == self.replaying.len() && !self.next_chunk() {
                break;
            }
            let rest = &self.replaying[self.pos..];
            let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                // A torn tail cannot happen (records are pushed whole); drop it.
                self.pos = self.replaying.len();
                continue;
            };
            let len = (u32::from_ne_bytes(*len) as usize).min(tail.len());
            f(&tail[..len]);
            self.pos += 4 + len;
            given += 1;
        }
        if self.is_empty() {
            *self = Self::default();
        }
    }

    /// Moves the oldest chunk not replayed yet into `replaying`; false if none is left.
    fn next_chunk(&mut self) -> bool {
        self.pos = 0;
        if let Some((chunk, len)) = self.packed.pop_front() {
            self.packed_bytes -= chunk.len();
            // Deflated by `push` a moment ago in this process: it inflates, to its length.
            let mut chunk = miniz_oxide::inflate::decompress_to_vec_with_limit(&chunk, len)
                .expect("a chunk deflated by this process inflates to its length");
            // Inflating doubles its buffer as it goes: one chunk's worth is kept.
            chunk.shrink_to_fit();
            self.replaying = chunk;
            return true;
        }
        self.replaying = std::mem::take(&mut self.open);
        !self.replaying.is_empty()
    }
}

/// How to trace.
#[derive(Clone, Copy, Debug)]
pub struct TracerConfig {
    /// Ring buffer size in bytes (a power of two, at least a page).
    pub ring_bytes: u32,
    /// What the program may drop before it reaches the ring.
    pub filter: KernelFilter,
    /// Closed connections the table remembers (0: none, e.g. for `watch`).
    pub closed_capacity: usize,
    /// Reconcile every namespace with a dump this often (`None`: only at start).
    pub resync_every: Option<Duration>,
    /// After a counted loss, reconcile every namespace, at most once per this interval.
    pub resync_after_loss: Option<Duration>,
    /// Count the tracepoint's fires with perf counters, to report those no copy of the
    /// program was run for (`LossKind::NotRun`).
    pub count_fires: bool,
    /// Only this namespace's sockets are of interest (the kernel filter's): seed and reconcile
    /// only it.
    pub netns: Option<u32>,
}

impl TracerConfig {
    /// The probe this config asks for. The program wakes the reader once a quarter of a small
    /// ring is waiting (never later than the default threshold): a ring smaller than four
    /// thresholds would otherwise fill before anyone is woken, and be read only on the tick.
    pub fn probe_config(&self) -> ProbeConfig {
        ProbeConfig {
            ring_bytes: self.ring_bytes,
            wakeup_bytes: DEFAULT_WAKEUP_BYTES.min(u64::from(self.ring_bytes) / 4),
            filter: self.filter,
            hints: true,
            count_fires: self.count_fires,
        }
    }
}

/// A loss the kernel counted: `count` new ones of `kind`, `total` since start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loss {
    pub kind: LossKind,
    pub count: u64,
    pub total: u64,
    /// When netmon noticed it (CLOCK_MONOTONIC ns): the kernel's counters are read every
    /// 250 ms (`not_run` is confirmed by a second reading), so the loss happened within about
    /// half a second before.
    pub seen_ns: u64,
}

/// Everything lost or unreadable since start, as told to clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LossTotals {
    /// Transitions dropped on a full ring.
    pub ring_full: u64,
    /// Transitions no copy of the program saw (the kernel's recursion guard).
    pub recursion: u64,
    /// Owner and reset hints dropped on a full ring.
    pub hints_ring_full: u64,
    /// Fires of the tracepoint the kernel ran no copy of the program for (perf's count), in
    /// any namespace.
    #[serde(default)]
    pub not_run: u64,
    /// Ring records that did not decode (a build mismatch).
    pub malformed: u64,
}

impl LossTotals {
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// What consumes the tracer's records. Every method has a default that ignores the record,
/// so a consumer implements only what it shows.
pub trait Sink {
    /// A transition, after the table applied it: the socket's owner as the table knows it and
    /// the time spent in the state it left (when the table saw it enter that state).
    fn transition(
        &mut self,
        _t: &Transition,
        _owner: Option<&Owner>,
        _prev_state_ns: Option<u64>,
    ) -> io::Result<()> {
        Ok(())
    }

    /// An owner or reset hint, after the table applied it.
    fn hint(&mut self, _h: &Hint) -> io::Result<()> {
        Ok(())
    }

    /// A connection that ended, at the end of the batch its CLOSE came in (so that a reset
    /// reported just after the CLOSE is part of it).
    fn closed(&mut self, _c: &Closed) -> io::Result<()> {
        Ok(())
    }

    /// New losses counted by the kernel.
    fn loss(&mut self, _loss: &Loss) -> io::Result<()> {
        Ok(())
    }

    /// The end of a batch: a good time to flush.
    fn end_batch(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A consumer that needs nothing but the table (the agent).
impl Sink for () {}

/// Two consumers of the same records, in order.
impl<A: Sink, B: Sink> Sink for (A, B) {
    fn transition(&mut self, t: &Transition, o: Option<&Owner>, p: Option<u64>) -> io::Result<()> {
        self.0.transition(t, o, p)?;
        self.1.transition(t, o, p)
    }
    fn hint(&mut self, h: &Hint) -> io::Result<()> {
        self.0.hint(h)?;
        self.1.hint(h)
    }
    fn closed(&mut self, c: &Closed) -> io::Result<()> {
        self.0.closed(c)?;
        self.1.closed(c)
    }
    fn loss(&mut self, loss: &Loss) -> io::Result<()> {
        self.0.loss(loss)?;
        self.1.loss(loss)
    }
    fn end_batch(&mut self) -> io::Result<()> {
        self.0.end_batch()?;
        self.1.end_batch()
    }
}

/// Ring records and counter readings to table updates and sink calls.
pub struct Pipeline {
    pub table: Table,
    /// Losses reported so far: ring full, recursion, hints, not run.
    reported: [u64; 4],
    /// Records that did not decode: counted, never silently dropped.
    malformed: u64,
    /// Reconciles with a dump, by why: a counted loss, the periodic check, a snapshot request.
    pub resyncs: Resyncs,
    /// Whether the last counters read had perf's count of fires (else `not_run` cannot grow).
    pub fire_count: bool,
}

/// Reconciles of the table with sock_diag dumps, counted per namespace dumped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resyncs {
    pub loss: u64,
    pub periodic: u64,
    pub snapshot: u64,
    /// The longest merge of a dump into the table: the ring is read into memory meanwhile,
    /// but records reach consumers (and queries an answer) only after it.
    pub longest_merge_ns: u64,
}

impl Resyncs {
    fn merged(&mut self, started: Instant) {
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.longest_merge_ns = self.longest_merge_ns.max(took);
    }
}

/// What the seed's merging thread counted.
#[derive(Default)]
struct Merged {
    namespaces: usize,
    sockets: usize,
    scan: Duration,
    dumps: Duration,
    merge: Duration,
}

/// What [`Tracer::seed`] found and where its time went, for the agent's start-up line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seeded {
    pub namespaces: usize,
    pub sockets: usize,
    /// All of it: the /proc scan for owners beside the dumps, each part of a dump merged as
    /// it comes, then the owners set.
    pub took: Duration,
    pub scan: Duration,
    pub dumps: Duration,
    pub merge: Duration,
}

impl Pipeline {
    pub fn new(table: Table) -> Self {
        Self {
            table,
            reported: [0; 4],
            malformed: 0,
            resyncs: Resyncs::default(),
            fire_count: false,
        }
    }

    /// One ring record.
    pub fn record(&mut self, bytes: &[u8], sink: &mut impl Sink) -> io::Result<()> {
        let Ok(event) = decode::decode(bytes) else {
            self.malformed += 1;
            return Ok(());
        };
        let applied = self.table.event(&event);
        if applied.duplicate {
            return Ok(());
        }
        let mut t = match event {
            Event::Transition(t) => t,
            Event::Hint(h) => return sink.hint(&h),
        };
        let sock = applied.closed.map_or_else(
            || {
                self.table
                    .get(t.cookie)
                    .map(|s| (s.owner, s.cgroup_id, s.cgroup_source))
            },
            |c| Some((c.owner, c.cgroup_id, c.cgroup_source)),
        );
        let owner = sock.and_then(|s| s.0);
        // The task fallback has no id for transitions outside the owner's process: they take
        // the one the socket got earlier (as owners do).
        if t.cgroup_id == 0
            && let Some((_, id, source)) = sock
        {
            t.cgroup_id = id;
            t.cgroup_source = source;
        }
        sink.transition(&t, owner.as_ref(), applied.prev_state_ns)
    }

    /// Hands out the connections closed in the batch, then ends it.
    pub fn end_batch(&mut self, sink: &mut impl Sink) -> io::Result<()> {
        for c in self.table.take_batch() {
            sink.closed(&c)?;
        }
        sink.end_batch()
    }

    /// Reports new losses in `now` to the sink; returns them.
    pub fn counters(
        &mut self,
        now: &KernelCounters,
        sink: &mut impl Sink,
    ) -> io::Result<Vec<Loss>> {
        let mut out = Vec::new();
        let seen_ns = Clock::mono_now_ns();
        self.fire_count = now.not_run.is_some();
        let totals = [
            (LossKind::RingFull, now.ring_full),
            (
                LossKind::Recursion,
                now.recursion_lost(self.table.duplicates),
            ),
            (LossKind::HintsRingFull, now.hints_ring_full),
            (LossKind::NotRun, now.not_run.unwrap_or(0)),
        ];
        for (slot, (kind, total)) in totals.into_iter().enumerate() {
            // Totals only grow; a racy reading that lags is reported later, never twice.
            let before = self.reported[slot];
            if total > before {
                let loss = Loss {
                    kind,
                    count: total - before,
                    total,
                    seen_ns,
                };
                sink.loss(&loss)?;
                out.push(loss);
                self.reported[slot] = total;
            }
        }
        if !out.is_empty() {
            // The table no longer answers alone (`snapshot --max-age`) until a walk after this.
            self.table.lost_at(seen_ns);
        }
        Ok(out)
    }

    /// Losses reported so far, and records that did not decode.
    pub fn losses(&self) -> LossTotals {
        LossTotals {
            ring_full: self.reported[0],
            recursion: self.reported[1],
            hints_ring_full: self.reported[2],
            not_run: self.reported[3],
            malformed: self.malformed,
        }
    }

    /// Transitions the kernel delivered twice, shown once (see `Table::apply`).
    pub fn duplicates(&self) -> u64 {
        self.table.duplicates
    }
}

/// Runs `work` (a dump, a merge of one into the table) on a thread of its own while this one
/// reads the ring into `held`, in order, for the pipeline's next drains: a million sockets
/// take seconds to dump or merge, and the ring holds a fraction of a second of a busy
/// machine's events. Past [`HELD_MAX_BYTES`] the ring is left to fill, and the kernel counts
/// what it drops.
fn read_ring_while<T: Send>(
    probe: &mut impl Ring,
    held: &mut Held,
    work: impl FnOnce() -> T + Send,
) -> T {
    let reader = std::thread::current();
    std::thread::scope(|s| {
        let work = s.spawn(move || {
            let out = work();
            // The reader wakes as the work ends, not at its next poll: short work (a
            // `--max-age` request's pass over the table) would wait up to a poll for nothing.
            reader.unpark();
            out
        });
        while !work.is_finished() {
            if held.pending_bytes() < HELD_MAX_BYTES && probe.drain(|record| held.push(record)).more
            {
                continue;
            }
            std::thread::park_timeout(READ_POLL);
        }
        joined(work)
    })
}

/// A scoped thread's result; its panic goes on in the caller.
fn joined<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Sockets per part of a periodic reconcile's dump (~0.6 MB of [`DiagSock`]s): the loop merges
/// a part between two drains (a few ms), and never holds a namespace's whole dump.
const RECONCILE_PART: usize = 4096;
/// Parts waiting for the loop, at most, while the dump goes on (then the dump waits).
const RECONCILE_PARTS_QUEUED: usize = 2;

/// A periodic reconcile's dumps, as the dumping thread hands them to the loop.
enum Part {
    /// A namespace's dump starts at `t0_ns`.
    Begin {
        netns: u32,
        t0_ns: u64,
    },
    Sockets(Vec<DiagSock>),
    /// The namespace's dump ended; one that failed drops nothing (what it found is added).
    End(Result<(), DiagError>),
}

/// Dumps every namespace on the machine, or only `netns`, in parts through `tx` (blocking:
/// run it off the draining thread). Stops when the loop is gone.
fn dump_scope_in_parts(netns: Option<u32>, tx: &mpsc::Sender<Part>) {
    let dump = |inum, ns: std::io::Result<netns::Netns>| match ns {
        Ok(ns) => {
            let begin = Part::Begin {
                netns: ns.inum,
                t0_ns: Clock::mono_now_ns(),
            };
            if tx.blocking_send(begin).is_err() {
                return;
            }
            let parts = tx.clone();
            let emit = Box::new(move |sockets| parts.blocking_send(Part::Sockets(sockets)).is_ok());
            let ended = ns.dump_batched(0, &[], &Cancel::default(), RECONCILE_PART, emit);
            let _ = tx.blocking_send(Part::End(ended));
        }
        Err(e) => eprintln!("netmon: cannot open netns {inum} to reconcile it: {e}"),
    };
    match netns {
        Some(only) => {
            if let Some(ns) = netns::find(only) {
                dump(only, ns);
            }
        }
        None => netns::each(dump),
    }
}

/// What other threads may ask of the table; the loop answers between two drains.
pub enum Query {
    /// Merge a part of a dump of every socket of a namespace ([`Table::reconcile_batch`]) and
    /// return its rows with what the table knows (ages, owners).
    MergePart {
        reconcile: Reconcile,
        part: Vec<DiagSock>,
        reply: oneshot::Sender<(Reconcile, Vec<Row>)>,
    },
    /// End a reconcile whose dump was merged whole ([`Table::reconcile_end`]).
    MergeEnd {
        reconcile: Reconcile,
        reply: oneshot::Sender<()>,
    },
    /// The rows of a part of a dump that is not every socket of `netns` (an iterator's,
    /// filtered in the kernel), with what the table knows; the table does not reconcile with
    /// it.
    Lookup {
        netns: u32,
        part: Vec<DiagSock>,
        reply: oneshot::Sender<Vec<Row>>,
    },
    /// The next part of the closed connections of these namespaces that ended at or after
    /// `since_ns` ([`Table::closed_part`]).
    Closed {
        netns: Option<Vec<u32>>,
        since_ns: u64,
        cursor: ClosedCursor,
        reply: oneshot::Sender<ClosedPart>,
    },
    /// Which sockets of `netns` the table serves for a request (`snapshot --max-age`), once
    /// the ring is applied up to now, if its last walk of `netns` is fresh enough.
    Served {
        netns: u32,
        max_age_ns: u64,
        filter: crate::filter::Filter,
        access: crate::access::Access,
        reply: oneshot::Sender<Result<Served, Stale>>,
    },
    /// The table's rows for a part of [`Served::cookies`].
    ServedRows {
        netns: u32,
        cookies: Vec<served::Key>,
        now_ns: u64,
        reply: oneshot::Sender<Vec<Row>>,
    },
    /// What was lost so far.
    Losses { reply: oneshot::Sender<LossTotals> },
    /// What a metrics scrape reads from the table and the kernel, as of now.
    Metrics {
        reply: oneshot::Sender<crate::metrics::TableView>,
    },
    /// The numbers of one `netmon top` screen, counted in place: one pass over the table,
    /// no copy of it. A client asks once a second; a pass over 100k closed connections (a
    /// second of storm) took 7-9 ms of CPU (`counting_a_full_history` in top/model.rs), while
    /// the ring holds well over 100 ms of events.
    Top {
        query: crate::top::model::Query,
        filter: crate::filter::Filter,
        netns: Option<u32>,
        clock: Clock,
        /// Whose owners and closed connections the screen may show.
        access: crate::access::Access,
        reply: oneshot::Sender<crate::top::model::Model>,
    },
}

/// A handle on a running tracer's table, for blocking threads (it implements [`Enrich`]).
#[derive(Clone)]
pub struct TracerHandle {
    queries: mpsc::Sender<Query>,
}

impl TracerHandle {
    /// A handle and the receiver to give [`Tracer::run`].
    pub fn new() -> (Self, mpsc::Receiver<Query>) {
        // Few: each client has at most one query outstanding, and clients are limited.
        let (queries, rx) = mpsc::channel(64);
        (Self { queries }, rx)
    }

    fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Query) -> Result<T, TracerStopped> {
        self.ask_ahead(make)?
            .blocking_recv()
            .map_err(|_| TracerStopped)
    }

    /// Sends a query and returns where its answer will come, without waiting for it.
    fn ask_ahead<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Query,
    ) -> Result<oneshot::Receiver<T>, TracerStopped> {
        let (tx, rx) = oneshot::channel();
        self.queries
            .blocking_send(make(tx))
            .map_err(|_| TracerStopped)?;
        Ok(rx)
    }

    /// The table's view for a metrics scrape (async: from the runtime's tasks).
    pub async fn metrics_view(&self) -> Result<crate::metrics::TableView, TracerStopped> {
        let (tx, rx) = oneshot::channel();
        self.queries
            .send(Query::Metrics { reply: tx })
            .await
            .map_err(|_| TracerStopped)?;
        rx.await.map_err(|_| TracerStopped)
    }

    /// Loss totals so far (blocking).
    pub fn losses(&self) -> Result<LossTotals, TracerStopped> {
        self.ask(|reply| Query::Losses { reply })
    }

    /// A `netmon top` screen for namespace `netns` (every one with `None`), blocking.
    pub fn top(
        &self,
        query: crate::top::model::Query,
        filter: crate::filter::Filter,
        netns: Option<u32>,
        clock: Clock,
        access: crate::access::Access,
    ) -> Result<crate::top::model::Model, TracerStopped> {
        self.ask(|reply| Query::Top {
            query,
            filter,
            netns,
            clock,
            access,
            reply,
        })
    }
}

impl Enrich for TracerHandle {
    fn merge(
        &mut self,
        reconcile: Reconcile,
        part: Vec<DiagSock>,
    ) -> Result<(Reconcile, Vec<Row>), TracerStopped> {
        self.ask(|reply| Query::MergePart {
            reconcile,
            part,
            reply,
        })
    }

    fn merge_end(&mut self, reconcile: Reconcile) -> Result<(), TracerStopped> {
        self.ask(|reply| Query::MergeEnd { reconcile, reply })
    }

    fn lookup(&mut self, netns: u32, part: Vec<DiagSock>) -> Result<Vec<Row>, TracerStopped> {
        self.ask(|reply| Query::Lookup { netns, part, reply })
    }

    fn closed_part(
        &mut self,
        netns: Option<&[u32]>,
        since_ns: u64,
        cursor: ClosedCursor,
    ) -> Result<ClosedPart, TracerStopped> {
        let netns = netns.map(<[u32]>::to_vec);
        self.ask(|reply| Query::Closed {
            netns,
            since_ns,
            cursor,
            reply,
        })
    }

    fn served(
        &mut self,
        netns: u32,
        max_age_ns: u64,
        filter: &crate::filter::Filter,
        access: crate::access::Access,
    ) -> Result<Result<Served, Stale>, TracerStopped> {
        let filter = filter.clone();
        self.ask(|reply| Query::Served {
            netns,
            max_age_ns,
            filter,
            access,
            reply,
        })
    }

    fn served_rows(
        &mut self,
        netns: u32,
        cookies: Vec<served::Key>,
        now_ns: u64,
    ) -> Result<Vec<Row>, TracerStopped> {
        self.ask(|reply| Query::ServedRows {
            netns,
            cookies,
            now_ns,
            reply,
        })
    }

    fn served_rows_ahead(
        &mut self,
        netns: u32,
        cookies: Vec<served::Key>,
        now_ns: u64,
    ) -> Result<RowsAhead, TracerStopped> {
        self.ask_ahead(|reply| Query::ServedRows {
            netns,
            cookies,
            now_ns,
            reply,
        })
        .map(RowsAhead::Asked)
    }
}

/// Where ring records and loss counters come from: the attached [`Probe`], or recorded
/// records in tests.
pub trait Ring {
    /// Calls `f` with each waiting record, oldest first, up to a batch.
    fn drain(&mut self, f: impl FnMut(&[u8])) -> Drained;
    /// `&mut`: the probe keeps state between readings (see `fires::NotRun`).
    fn counters(&mut self) -> Result<KernelCounters, AttachError>;
}

impl Ring for Probe {
    fn drain(&mut self, f: impl FnMut(&[u8])) -> Drained {
        Probe::drain(self, f)
    }

    fn counters(&mut self) -> Result<KernelCounters, AttachError> {
        Probe::counters(self)
    }
}

/// The ring, the pipeline and the loop.
pub struct Tracer<R: Ring = Probe> {
    probe: R,
    pub pipeline: Pipeline,
    config: TracerConfig,
    held: Held,
    /// cgroup names for `top`'s unit and container groups and cgroup filters: walked at the
    /// first such request, then again for unknown ids at most once a second.
    top_cgroups: Option<crate::cgroup::CgroupNames>,
}

impl Tracer<Probe> {
    /// Attaches the program. Events start filling the ring at once; call [`Tracer::seed`]
    /// next, then [`Tracer::run`].
    pub fn attach(config: &TracerConfig) -> Result<Self, AttachError> {
        Self::with_probe(Probe::attach(&config.probe_config())?, config)
    }

    /// [`Tracer::attach`] with the offsets and support already read from BTF.
    pub fn attach_with(
        config: &TracerConfig,
        offsets: netmon_common::SockOffsets,
        support: crate::features::Support,
    ) -> Result<Self, AttachError> {
        Self::with_probe(
            Probe::attach_with(&config.probe_config(), offsets, support)?,
            config,
        )
    }

    fn with_probe(probe: Probe, config: &TracerConfig) -> Result<Self, AttachError> {
        let mut tracer = Self::new(probe, config);
        tracer.pipeline.fire_count = config.count_fires && tracer.fire_count_off().is_none();
        Ok(tracer)
    }

    /// What this kernel lacks (optional hooks not attached, counters not read).
    pub fn support(&self) -> &crate::features::Support {
        self.probe.support()
    }

    /// Why the fire count that was asked for is off, if it is.
    pub fn fire_count_off(&self) -> Option<&crate::fires::FiresError> {
        self.probe.fire_count_off()
    }
}

impl<R: Ring> Tracer<R> {
    pub fn new(ring: R, config: &TracerConfig) -> Self {
        Self {
            probe: ring,
            pipeline: Pipeline::new(Table::with_capacity(config.closed_capacity)),
            config: *config,
            held: Held::default(),
            top_cgroups: None,
        }
    }

    /// Sockets that predate us: every namespace's sockets and, from one /proc scan, their
    /// owners, so that their transitions name them. Attached first, so nothing falls between.
    ///
    /// The /proc scan and the dumps run on a thread of their own while this one reads the ring
    /// into memory (a million sockets take seconds to dump; the ring holds a fraction of a
    /// second of a busy machine's events). What was read goes through the consumer's sink
    /// from the first drains of [`Tracer::run`] on, in order, after every namespace and owner
    /// is known (applying it to the table alone would drop it from the consumer's stream).
    /// The events from before a dump then come after it, and the table converges on the
    /// newest state as it does for events from during a dump (see `Table::reconcile`).
    pub fn seed(&mut self) -> Seeded {
        let started = Instant::now();
        let mut seeded = Seeded::default();
        let scope = self.config.netns;
        let table = &mut self.pipeline.table;
        // The scan walks every process's fds and the dumps wait on the kernel: side by side,
        // and each part of a dump is merged as it comes (never a whole dump held). Owners
        // are set once the scan is done, by the inode each merged socket's walk reported.
        let (owners, merged) = read_ring_while(&mut self.probe, &mut self.held, || {
            std::thread::scope(|s| {
                let scan = s.spawn(|| {
                    let t = Instant::now();
                    (procfs::socket_owners(), t.elapsed())
                });
                let (tx, mut rx) = mpsc::channel(RECONCILE_PARTS_QUEUED);
                let dumps = s.spawn(move || {
                    let t = Instant::now();
                    dump_scope_in_parts(scope, &tx);
                    t.elapsed()
                });
                let mut merged = Merged::default();
                let mut reconciling = None;
                while let Some(part) = rx.blocking_recv() {
                    let t = Instant::now();
                    match part {
                        Part::Begin { netns, t0_ns } => {
                            reconciling = Some(Reconcile::seeding(netns, t0_ns));
                        }
                        Part::Sockets(sockets) => {
                            if let Some(r) = reconciling.as_mut() {
                                table.reconcile_batch(r, &sockets);
                                merged.sockets += sockets.len();
                            }
                        }
                        Part::End(ended) => match (reconciling.take(), ended) {
                            (Some(r), Ok(())) => {
                                merged.namespaces += 1;
                                table.reconcile_end(r);
                            }
                            (Some(r), Err(e)) => eprintln!(
                                "netmon: dumping sockets of netns {}: {:#}",
                                r.netns(),
                                anyhow::Error::new(e)
                            ),
                            (None, _) => {}
                        },
                    }
                    merged.merge += t.elapsed();
                }
                merged.dumps = joined(dumps);
                let (owners, scan) = joined(scan);
                merged.scan = scan;
                (owners, merged)
            })
        });
        let table = &mut self.pipeline.table;
        let owning = Instant::now();
        read_ring_while(&mut self.probe, &mut self.held, move || {
            table.set_owners_of_walked(&owners);
        });
        seeded.namespaces = merged.namespaces;
        seeded.sockets = merged.sockets;
        seeded.scan = merged.scan;
        seeded.dumps = merged.dumps;
        seeded.merge = merged.merge + owning.elapsed();
        seeded.took = started.elapsed();
        seeded
    }

    /// One batch from the ring; true if more may be waiting.
    fn drain(&mut self, sink: &mut impl Sink) -> io::Result<bool> {
        let mut result = Ok(());
        let pipeline = &mut self.pipeline;
        if !self.held.is_empty() {
            // Records held during a dump or a merge come first: newer ones queue up behind
            // them, and the ring is kept empty meanwhile.
            let held = &mut self.held;
            self.probe.drain(|record| held.push(record));
            held.take(REPLAY_BATCH, |record| {
                if result.is_ok() {
                    result = pipeline.record(record, sink);
                }
            });
            result?;
            self.pipeline.end_batch(sink)?;
            return Ok(true);
        }
        let drained = self.probe.drain(|bytes| {
            if result.is_ok() {
                result = pipeline.record(bytes, sink);
            }
        });
        result?;
        self.pipeline.end_batch(sink)?;
        Ok(drained.more)
    }

    /// Applies what the ring holds up to now, so that a reconcile with a dump that ended
    /// before this finds every event from before the dump already applied: the dump then
    /// only settles what the ring lost, and never hides an event still waiting in the ring.
    fn drain_for_reconcile(&mut self, sink: &mut impl Sink) -> io::Result<()> {
        // Held records are older than the dump: all of them first (each round also reads the
        // ring into them, so the bound only stops a backlog that would not shrink).
        for _ in 0..HELD_ROUNDS_BEFORE_RECONCILE {
            if self.held.is_empty() {
                break;
            }
            self.drain(sink)?;
        }
        for _ in 0..DRAIN_BEFORE_RECONCILE {
            if !self.drain(sink)? {
                break;
            }
        }
        Ok(())
    }

    /// Merges one part of a periodic reconcile, after what the ring holds up to now.
    fn apply_part(
        &mut self,
        sink: &mut impl Sink,
        part: Part,
        reconciling: &mut Option<Reconcile>,
    ) -> io::Result<()> {
        match part {
            Part::Begin { netns, t0_ns } => *reconciling = Some(Reconcile::new(netns, t0_ns)),
            Part::Sockets(sockets) => {
                if let Some(r) = reconciling.as_mut() {
                    self.drain_for_reconcile(sink)?;
                    let started = Instant::now();
                    self.pipeline.table.reconcile_batch(r, &sockets);
                    self.pipeline.resyncs.merged(started);
                }
            }
            Part::End(ended) => {
                let Some(r) = reconciling.take() else {
                    return Ok(());
                };
                match ended {
                    Ok(()) => {
                        self.drain_for_reconcile(sink)?;
                        let started = Instant::now();
                        let table = &mut self.pipeline.table;
                        // One pass over the whole table: long at a million entries.
                        read_ring_while(&mut self.probe, &mut self.held, move || {
                            table.reconcile_end(r);
                        });
                        self.pipeline.resyncs.merged(started);
                    }
                    // `{:#}` walks the sources: the failed step, then the errno.
                    Err(e) => {
                        eprintln!(
                            "netmon: dumping sockets of netns {}: {:#}",
                            r.netns(),
                            anyhow::Error::new(e)
                        );
                        self.pipeline.table.reconcile_abort(r);
                    }
                }
            }
        }
        Ok(())
    }

    fn answer(&mut self, q: Query, sink: &mut impl Sink) -> io::Result<()> {
        match q {
            Query::MergePart {
                reconcile,
                part,
                reply,
            } => {
                // What the ring holds is older than the part: applied first, as for a
                // periodic reconcile's parts.
                self.drain_for_reconcile(sink)?;
                let started = Instant::now();
                let table = &mut self.pipeline.table;
                let merged = read_ring_while(&mut self.probe, &mut self.held, move || {
                    table.merge(reconcile, part)
                });
                self.pipeline.resyncs.merged(started);
                if let Ok(merged) = merged {
                    let _ = reply.send(merged);
                }
            }
            Query::MergeEnd { reconcile, reply } => {
                self.drain_for_reconcile(sink)?;
                self.pipeline.resyncs.snapshot += 1;
                let started = Instant::now();
                let table = &mut self.pipeline.table;
                // One pass over the whole table: long at a million entries.
                read_ring_while(&mut self.probe, &mut self.held, move || {
                    table.reconcile_end(reconcile);
                });
                self.pipeline.resyncs.merged(started);
                let _ = reply.send(());
            }
            Query::Lookup { netns, part, reply } => {
                self.drain(sink)?;
                let table = &mut self.pipeline.table;
                let rows = table.lookup(netns, part);
                let _ = reply.send(rows.unwrap_or_default());
            }
            Query::Closed {
                netns,
                since_ns,
                cursor,
                reply,
            } => {
                self.drain(sink)?;
                let part = self.pipeline.table.closed_part(
                    netns.as_deref(),
                    since_ns,
                    cursor,
                    source::CLOSED_PART,
                );
                let _ = reply.send(part);
            }
            Query::Served {
                netns,
                max_age_ns,
                filter,
                access,
                reply,
            } => {
                // Every event up to now applied first: the rows are current, not a batch old.
                self.drain_for_reconcile(sink)?;
                let served = if self.held.is_empty() {
                    let table = &self.pipeline.table;
                    let now_ns = Clock::mono_now_ns();
                    read_ring_while(&mut self.probe, &mut self.held, move || {
                        served::select(table, netns, now_ns, max_age_ns, &filter, access)
                    })
                } else {
                    Err(Stale::Behind)
                };
                let _ = reply.send(served);
            }
            Query::ServedRows {
                netns,
                cookies,
                now_ns,
                reply,
            } => {
                let _ = reply.send(served::rows(&self.pipeline.table, netns, &cookies, now_ns));
            }
            Query::Losses { reply } => {
                let _ = reply.send(self.pipeline.losses());
            }
            Query::Metrics { reply } => {
                self.drain(sink)?;
                let p = &self.pipeline;
                let mut view = crate::metrics::TableView::of(&p.table, Clock::mono_now_ns());
                view.malformed = p.malformed;
                view.resyncs = p.resyncs;
                view.fire_count = p.fire_count;
                view.held_bytes = self.held.resident_bytes() as u64;
                // The totals the loop last read from the kernel (every 250 ms): reading the
                // counters here would take their deltas from the loop.
                let l = p.losses();
                view.lost = [l.ring_full, l.recursion, l.hints_ring_full, l.not_run];
                let _ = reply.send(view);
            }
            Query::Top {
                query,
                filter,
                netns,
                clock,
                access,
                reply,
            } => {
                self.drain(sink)?;
                let now = Clock::mono_now_ns();
                // TIME-WAIT entries are otherwise expired only at the minutely reconcile.
                self.pipeline.table.expire(now);
                let losses = self.pipeline.losses();
                let cgroups = (query.group.uses_cgroup() || filter.uses_cgroup()).then(|| {
                    self.top_cgroups
                        .get_or_insert_with(crate::cgroup::CgroupNames::load)
                        as &mut dyn crate::top::model::CgroupLabels
                });
                let model = crate::top::feed::from_table(
                    &self.pipeline.table,
                    losses,
                    clock,
                    &query,
                    &filter,
                    netns,
                    access,
                    cgroups,
                );
                let _ = reply.send(model);
            }
        }
        Ok(())
    }

    /// Reads the loss counters; true if a loss grew.
    fn read_counters(&mut self, sink: &mut impl Sink) -> anyhow::Result<bool> {
        let now = self.probe.counters()?;
        Ok(!self.pipeline.counters(&now, sink)?.is_empty())
    }
}

impl Tracer<Probe> {
    /// Drains the ring into `sink`, answers `queries`, reconciles as configured, until `stop`
    /// resolves or the sink fails (e.g. its output closed).
    pub async fn run(
        &mut self,
        sink: &mut impl Sink,
        mut queries: Option<mpsc::Receiver<Query>>,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut waiter = RingWaiter::new(&self.probe, TICK)?;
        tokio::pin!(stop);
        let mut more = false;
        let mut counters_read = Instant::now();
        let mut expired = Instant::now();
        let mut policy = Resync::new(&self.config, Instant::now());
        let scope = self.config.netns;
        // A reconcile's dumps run on a blocking thread while the ring keeps draining; their
        // parts are merged here as they come.
        let mut resync: Option<mpsc::Receiver<Part>> = None;
        let mut reconciling: Option<Reconcile> = None;
        let mut after_loss = false;
        loop {
            let loss_pending = policy.loss_pending;
            if resync.is_none() && policy.due(Instant::now()) {
                after_loss = loss_pending;
                let (tx, rx) = mpsc::channel(RECONCILE_PARTS_QUEUED);
                tokio::task::spawn_blocking(move || dump_scope_in_parts(scope, &tx));
                resync = Some(rx);
            }
            tokio::select! {
                biased;
                () = &mut stop => {
                    // A stop right after the start (Ctrl-C while seeding) may find records
                    // still held: they go unshown like the ring's unread ones, since the
                    // consumer may have stopped reading (a pipe nobody empties would block
                    // the exit), and newer ones must not be shown without them.
                    if self.held.is_empty() {
                        self.drain(sink)?;
                    } else {
                        self.held = Held::default();
                    }
                    self.read_counters(sink)?;
                    // A fire the programs never ran for is confirmed by a second reading
                    // (see `fires::NotRun`).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    self.read_counters(sink)?;
                    sink.end_batch()?;
                    return Ok(());
                }
                waited = waiter.wait(more) => {
                    waited?;
                    more = self.drain(sink)?;
                    if counters_read.elapsed() >= COUNTERS_EVERY {
                        counters_read = Instant::now();
                        if self.read_counters(sink)? {
                            policy.lost();
                        }
                        sink.end_batch()?;
                    }
                    if expired.elapsed() >= EXPIRE_EVERY {
                        expired = Instant::now();
                        self.pipeline.table.expire(Clock::mono_now_ns());
                    }
                }
                Some(q) = async { match queries.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                } } => self.answer(q, sink)?,
                part = async { match resync.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                } } => {
                    let Some(part) = part else {
                        // Every namespace done.
                        resync = None;
                        self.pipeline.table.expire(Clock::mono_now_ns());
                        continue;
                    };
                    if matches!(part, Part::End(_)) {
                        let counted = if after_loss {
                            &mut self.pipeline.resyncs.loss
                        } else {
                            &mut self.pipeline.resyncs.periodic
                        };
                        *counted += 1;
                    }
                    self.apply_part(sink, part, &mut reconciling)?;
                }
            }
        }
    }
}

/// When to reconcile every namespace with a dump: on a period, and after a counted loss
/// (the table may be wrong), but never more often than `after_loss` allows, so that a
/// reconcile that itself costs a loss cannot chain into the next.
#[derive(Debug)]
struct Resync {
    every: Option<Duration>,
    after_loss: Option<Duration>,
    last: Instant,
    loss_pending: bool,
}

impl Resync {
    fn new(config: &TracerConfig, now: Instant) -> Self {
        Self {
            every: config.resync_every,
            after_loss: config.resync_after_loss,
            last: now,
            loss_pending: false,
        }
    }

    fn lost(&mut self) {
        self.loss_pending = true;
    }

    /// True if a reconcile should start now (and counts it as started).
    fn due(&mut self, now: Instant) -> bool {
        let since = now.saturating_duration_since(self.last);
        let due = self.every.is_some_and(|every| since >= every)
            || (self.loss_pending && self.after_loss.is_some_and(|gap| since >= gap));
        if due {
            self.last = now;
            self.loss_pending = false;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use netmon_common::AF_INET;

    use super::*;
    use crate::decode::tests::event;

    /// Records every call, for assertions.
    #[derive(Default)]
    struct Log {
        transitions: Vec<(u64, Option<u64>)>,
        cgroups: Vec<(u64, netmon_common::CgroupSource)>,
        closed: Vec<Closed>,
        losses: Vec<Loss>,
        batches: usize,
    }

    impl Sink for Log {
        fn transition(
            &mut self,
            t: &Transition,
            _: Option<&Owner>,
            p: Option<u64>,
        ) -> io::Result<()> {
            self.transitions.push((t.ts_ns, p));
            self.cgroups.push((t.cgroup_id, t.cgroup_source));
            Ok(())
        }
        fn closed(&mut self, c: &Closed) -> io::Result<()> {
            self.closed.push(*c);
            Ok(())
        }
        fn loss(&mut self, loss: &Loss) -> io::Result<()> {
            self.losses.push(*loss);
            Ok(())
        }
        fn end_batch(&mut self) -> io::Result<()> {
            self.batches += 1;
            Ok(())
        }
    }

    pub(crate) fn raw(ts: u64, old: u8, new: u8) -> Vec<u8> {
        let mut ev = event(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 1], old, new);
        ev.ts_ns = ts;
        bytes(&ev)
    }

    fn bytes(ev: &netmon_common::SockEvent) -> Vec<u8> {
        // SAFETY: plain data without padding.
        unsafe {
            std::slice::from_raw_parts(
                (ev as *const netmon_common::SockEvent).cast::<u8>(),
                size_of_val(ev),
            )
        }
        .to_vec()
    }

    /// The task fallback: ids only at the owner's own transitions; the rest, and a listener's
    /// new child, take the socket's (or listener's) id as owners are taken.
    #[test]
    fn transitions_without_a_cgroup_id_take_the_sockets() {
        use netmon_common::CgroupSource::{Socket, Task};
        let mut p = Pipeline::new(Table::with_capacity(16));
        let mut log = Log::default();
        let rec = |cookie: u64, ts: u64, (old, new): (u8, u8), id: u64, local: u16| {
            let mut ev = event(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 1], old, new);
            (ev.ts_ns, ev.cookie, ev.cgroup_id, ev.sport) = (ts, cookie, id, local);
            ev.cgroup_source = if id == 0 { 0 } else { Task as u8 };
            bytes(&ev)
        };
        // A listener on 8080 in cgroup 66, then a client in 55 and the listener's child.
        p.record(&rec(1, 10, (7, 10), 66, 8080), &mut log).unwrap();
        for (ts, states, id) in [(20, (7, 2), 55), (30, (2, 1), 0), (40, (1, 4), 55)] {
            p.record(&rec(2, ts, states, id, 41000), &mut log).unwrap();
        }
        p.record(&rec(3, 25, (10, 3), 0, 8080), &mut log).unwrap();
        p.record(&rec(2, 50, (4, 5), 0, 41000), &mut log).unwrap();
        p.record(&rec(2, 60, (5, 7), 0, 41000), &mut log).unwrap();
        p.end_batch(&mut log).unwrap();
        let ids: Vec<u64> = log.cgroups.iter().map(|c| c.0).collect();
        assert_eq!(ids, [66, 55, 55, 55, 66, 55, 55]);
        assert!(log.cgroups.iter().all(|c| c.1 == Task), "{:?}", log.cgroups);
        assert_eq!(log.closed[0].cgroup_id, 55);
        // A socket id the kernel sends is kept as sent.
        let mut ev = event(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 1], 7, 2);
        (ev.cookie, ev.cgroup_id, ev.cgroup_source) = (9, 77, Socket as u8);
        p.record(&bytes(&ev), &mut log).unwrap();
        assert_eq!(log.cgroups.last(), Some(&(77, Socket)));
    }

    #[test]
    fn small_rings_wake_the_reader_at_a_quarter() {
        let config = |ring_bytes| TracerConfig {
            ring_bytes,
            filter: KernelFilter::ALL,
            closed_capacity: 0,
            resync_every: None,
            resync_after_loss: None,
            count_fires: false,
            netns: None,
        };
        assert_eq!(config(65536).probe_config().wakeup_bytes, 16384);
        assert_eq!(
            config(netmon_common::DEFAULT_RING_BYTES)
                .probe_config()
                .wakeup_bytes,
            DEFAULT_WAKEUP_BYTES
        );
    }

    #[test]
    fn records_reach_the_sink_with_time_in_previous_state_and_bad_ones_are_counted() {
        let mut p = Pipeline::new(Table::with_capacity(0));
        let mut log = Log::default();
        p.record(&raw(1_000, 7, 2), &mut log).unwrap();
        p.record(&raw(3_000, 2, 1), &mut log).unwrap();
        p.record(&raw(3_500, 2, 1), &mut log).unwrap(); // delivered twice
        p.record(&[1, 2, 3], &mut log).unwrap();
        assert_eq!(log.transitions, [(1_000, None), (3_000, Some(2_000))]);
        assert_eq!(p.losses().malformed, 1);
        assert_eq!(p.duplicates(), 1);
    }

    #[test]
    fn closed_connections_wait_for_the_batch_and_take_late_resets() {
        let mut p = Pipeline::new(Table::with_capacity(0));
        let mut log = Log::default();
        p.record(&raw(1_000, 7, 2), &mut log).unwrap();
        p.record(&raw(2_000, 2, 1), &mut log).unwrap();
        p.record(&raw(3_000, 1, 7), &mut log).unwrap();
        let mut rst = event(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 1], 7, 7);
        rst.kind = netmon_common::EventKind::ResetSent as u8;
        p.record(&bytes(&rst), &mut log).unwrap();
        assert!(log.closed.is_empty(), "held until the batch ends");
        p.end_batch(&mut log).unwrap();
        assert_eq!(log.closed.len(), 1);
        assert_eq!(log.closed[0].end, crate::table::End::ResetSent);
        assert_eq!(log.closed[0].lifespan_ns(), Some(2_000));
        assert_eq!(log.batches, 1);
        p.end_batch(&mut log).unwrap();
        assert_eq!(log.closed.len(), 1, "handed out once");
    }

    #[test]
    fn losses_are_reported_once_as_deltas() {
        let mut p = Pipeline::new(Table::with_capacity(0));
        let mut log = Log::default();
        let c1 = KernelCounters {
            ring_full: 4,
            primary_misses: 3,
            recovered: 1,
            seen: 10,
            hints_ring_full: 0,
            fired: 0,
            not_run: None,
        };
        let kinds = |l: &[Loss]| {
            l.iter()
                .map(|l| (l.kind, l.count, l.total))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kinds(&p.counters(&c1, &mut log).unwrap()),
            [(LossKind::RingFull, 4, 4), (LossKind::Recursion, 2, 2)]
        );
        assert!(p.counters(&c1, &mut log).unwrap().is_empty(), "nothing new");
        let c2 = KernelCounters {
            ring_full: 6,
            primary_misses: 5,
            recovered: 3,
            seen: 20,
            hints_ring_full: 3,
            fired: 0,
            not_run: Some(7),
        };
        assert_eq!(
            kinds(&p.counters(&c2, &mut log).unwrap()),
            [
                (LossKind::RingFull, 2, 6),
                (LossKind::HintsRingFull, 3, 3),
                (LossKind::NotRun, 7, 7)
            ]
        );
        assert_eq!(log.losses.len(), 5);
        assert_eq!(
            p.losses(),
            LossTotals {
                ring_full: 6,
                recursion: 2,
                hints_ring_full: 3,
                not_run: 7,
                malformed: 0
            }
        );
    }

    /// Records waiting in a ring, as the kernel left them.
    #[derive(Default)]
    struct FakeRing(std::collections::VecDeque<Vec<u8>>);

    impl Ring for FakeRing {
        fn drain(&mut self, mut f: impl FnMut(&[u8])) -> Drained {
            let records = self.0.len();
            for r in self.0.drain(..) {
                f(&r);
            }
            Drained {
                records,
                more: false,
            }
        }

        fn counters(&mut self) -> Result<KernelCounters, AttachError> {
            Ok(KernelCounters::default())
        }
    }

    fn config() -> TracerConfig {
        TracerConfig {
            ring_bytes: 1 << 16,
            filter: KernelFilter::ALL,
            closed_capacity: 100,
            resync_every: None,
            resync_after_loss: None,
            count_fires: false,
            netns: None,
        }
    }

    fn of(cookie: u64, ts: u64, old: u8, new: u8) -> Vec<u8> {
        let mut ev = event(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 1], old, new);
        ev.ts_ns = ts;
        ev.cookie = cookie;
        bytes(&ev)
    }

    #[test]
    fn events_from_before_a_dump_still_in_the_ring_are_not_lost_to_the_reconcile() {
        let mut tracer = Tracer::new(FakeRing::default(), &config());
        // Socket 1 connected, and socket 2 connected and closed, before the dump started at
        // 1_000; their events were still in the ring when the dump's answer came back.
        tracer.probe.0.extend([
            of(1, 100, 7, 2),
            of(1, 200, 2, 1),
            of(2, 300, 7, 2),
            of(2, 400, 2, 7),
        ]);
        let netns = 4026531840;
        let mut found = crate::sock_diag::DiagSock::fixture(
            1,
            netmon_common::TcpState::Established,
            "127.0.0.1:41000",
            "127.0.0.1:8080",
        );
        found.cookie = 1;
        let (tx, mut rx) = oneshot::channel();
        tracer
            .answer(
                Query::MergePart {
                    reconcile: Reconcile::new(netns, 1_000),
                    part: vec![found],
                    reply: tx,
                },
                &mut (),
            )
            .unwrap();
        let (reconcile, rows) = rx.try_recv().unwrap();
        let (tx, mut rx) = oneshot::channel();
        tracer
            .answer(
                Query::MergeEnd {
                    reconcile,
                    reply: tx,
                },
                &mut (),
            )
            .unwrap();
        rx.try_recv().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].born_ns, Some(100), "the socket's age survived");
        assert_eq!(rows[0].since_ns, Some(200), "and its time in state");
        assert_eq!(rows[0].owner.map(|o| o.task.pid), Some(7), "and its owner");
        let closed: Vec<_> = tracer.pipeline.table.closed().collect();
        assert_eq!(closed.len(), 1, "the connection that ended before the dump");
        assert_eq!(closed[0].born_ns, Some(300));
        assert_eq!(closed[0].owner.map(|o| o.task.pid), Some(7));
    }

    #[test]
    fn a_reconcile_in_parts_drops_only_what_no_part_found_and_no_event_renewed() {
        let mut tracer = Tracer::new(FakeRing::default(), &config());
        let netns = 4026531840;
        // Sockets 1, 2 and 3 connected long before the dump.
        tracer
            .probe
            .0
            .extend([of(1, 100, 7, 2), of(2, 110, 7, 2), of(3, 120, 7, 2)]);
        tracer.drain(&mut ()).unwrap();
        let found = |cookie| {
            crate::sock_diag::DiagSock::fixture(
                cookie,
                netmon_common::TcpState::Established,
                "127.0.0.1:41000",
                "127.0.0.1:8080",
            )
        };
        let mut reconciling = None;
        let mut apply = |tracer: &mut Tracer<FakeRing>, part| {
            tracer.apply_part(&mut (), part, &mut reconciling).unwrap();
        };
        apply(
            &mut tracer,
            Part::Begin {
                netns,
                t0_ns: 1_000,
            },
        );
        apply(&mut tracer, Part::Sockets(vec![found(1)]));
        // Between two parts: socket 4 connects after the dump started (no part has it).
        tracer.probe.0.push_back(of(4, 1_500, 7, 2));
        apply(&mut tracer, Part::Sockets(vec![found(2)]));
        let table = &tracer.pipeline.table;
        assert!(table.get(3).is_some(), "nothing is dropped before the end");
        assert_eq!(
            table.get(2).unwrap().state,
            netmon_common::TcpState::Established
        );
        apply(&mut tracer, Part::End(Ok(())));
        let table = &tracer.pipeline.table;
        let mut live: Vec<u64> = table.live().map(|(c, _)| c).collect();
        live.sort_unstable();
        assert_eq!(
            live,
            [1, 2, 4],
            "3's close was lost; 4 is newer than the dump"
        );

        // A dump that fails part way adds what it found and drops nothing.
        tracer.probe.0.push_back(of(5, 2_000, 7, 2));
        apply(
            &mut tracer,
            Part::Begin {
                netns,
                t0_ns: 3_000,
            },
        );
        apply(&mut tracer, Part::Sockets(vec![found(6)]));
        apply(&mut tracer, Part::End(Err(DiagError::Cancelled)));
        let mut live: Vec<u64> = tracer.pipeline.table.live().map(|(c, _)| c).collect();
        live.sort_unstable();
        assert_eq!(live, [1, 2, 4, 5, 6]);
    }

    #[test]
    fn records_held_while_seeding_come_out_in_order_before_newer_ones() {
        let mut tracer = Tracer::new(FakeRing::default(), &config());
        for cookie in 1..=3 {
            tracer.held.push(&of(cookie, cookie * 100, 7, 2));
        }
        tracer.probe.0.push_back(of(4, 400, 7, 2));
        let mut log = Log::default();
        // The ring's record queues up behind the held ones.
        assert!(tracer.drain(&mut log).unwrap(), "more may follow");
        assert!(tracer.held.is_empty());
        assert!(!tracer.drain(&mut log).unwrap());
        let order: Vec<u64> = log.transitions.iter().map(|t| t.0).collect();
        assert_eq!(order, [100, 200, 300, 400]);
    }

    #[test]
    fn held_records_are_replayed_a_batch_at_a_time_and_then_freed() {
        let mut held = Held::default();
        for n in 0..5u8 {
            held.push(&[n; 3]);
        }
        let mut seen = Vec::new();
        held.take(2, |r| seen.push(r.to_vec()));
        assert_eq!(seen, [vec![0; 3], vec![1; 3]]);
        assert_eq!(held.pending_bytes(), 3 * 7);
        held.take(10, |r| seen.push(r.to_vec()));
        assert_eq!(seen.len(), 5);
        assert!(held.is_empty());
        assert_eq!(held.resident_bytes(), 0, "the memory is given back");
    }

    /// The records of a loopback churn as the program writes them: 10 transitions a
    /// connection, ~10 µs apart, a new cookie and client port per connection, two tasks.
    fn churn_records(n: u64) -> Vec<Vec<u8>> {
        let states = [
            (7, 2),
            (2, 1),
            (1, 4),
            (4, 5),
            (5, 7),
            (10, 3),
            (3, 1),
            (1, 8),
            (8, 9),
            (9, 7),
        ];
        let mut jitter = 0x9e37_79b9_7f4a_7c15_u64;
        (0..n)
            .map(|i| {
                let conn = i / 10;
                let (old, new) = states[(i % 10) as usize];
                let mut ev = event(AF_INET, &[127, 0, 0, 1], &[127, 1, 0, 1], old, new);
                jitter = jitter
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                ev.ts_ns = 5_000_000_000 + i * 10_000 + (jitter >> 50);
                ev.cookie = 1 << 20 | conn;
                ev.sport = 30_000 + (conn % 28_000) as u16;
                ev.dport = 971;
                (ev.pid, ev.tid) = if i % 2 == 0 {
                    (4242, 4243)
                } else {
                    (4250, 4251)
                };
                bytes(&ev)
            })
            .collect()
    }

    #[test]
    fn held_records_past_a_chunk_are_deflated_and_come_out_in_order() {
        let records = churn_records(60_000);
        let raw: usize = records.iter().map(|r| r.len() + 4).sum();
        let mut held = Held::default();
        let mut seen = Vec::new();
        // Pushes and replays interleave, as a seed's hold is replayed while the ring still
        // delivers: the order is the push order across chunks, inflated or not.
        for (i, r) in records.iter().enumerate() {
            held.push(r);
            if i == 30_000 {
                held.take(1_000, |r| seen.push(r.to_vec()));
            }
        }
        let packed: usize = held.packed.iter().map(|(_, len)| len).sum();
        assert!(packed > 3 * HELD_CHUNK, "{raw} bytes make deflated chunks");
        assert!(
            held.packed_bytes < packed / 4,
            "a churn's records deflate to {} bytes of {packed}",
            held.packed_bytes
        );
        assert!(held.resident_bytes() < held.packed_bytes + 2 * HELD_CHUNK + 64 * 1024);
        while !held.is_empty() {
            held.take(REPLAY_BATCH, |r| seen.push(r.to_vec()));
        }
        assert_eq!(seen.len(), records.len());
        assert!(seen == records, "every record, byte for byte, in order");
        assert_eq!(held.resident_bytes(), 0, "the memory is given back");
    }

    #[test]
    fn reconciles_after_losses_are_rate_limited() {
        let t0 = Instant::now();
        let mut policy = Resync::new(
            &TracerConfig {
                resync_every: Some(Duration::from_secs(60)),
                resync_after_loss: Some(Duration::from_secs(5)),
                ..config()
            },
            t0,
        );
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!policy.due(at(1)), "nothing lost, not yet a minute");
        policy.lost();
        assert!(!policy.due(at(2)), "too soon after the last one");
        assert!(policy.due(at(5)));
        policy.lost();
        assert!(!policy.due(at(6)), "a loss right after a reconcile waits");
        assert!(policy.due(at(10)));
        assert!(!policy.due(at(11)), "nothing pending");
        assert!(policy.due(at(70)), "the period");
    }
}
