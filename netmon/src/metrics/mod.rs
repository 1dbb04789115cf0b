//! Prometheus metrics of the agent: counters and histograms fed per event through handles
//! resolved once per label set, gauges computed from the table at scrape time, and the
//! OpenMetrics text exposition.
//!
//! Per event the cost is an array index and an atomic add (a histogram also takes its
//! uncontended lock): label sets come from closed vocabularies ([`labels`]) or bounded opt-in
//! dimensions ([`groups`]), so a handle is created once per series and nothing is allocated
//! per event. Never an address, port, pid or cookie as a label by default: those are
//! unbounded.

pub mod groups;
pub mod http;
pub mod labels;

use std::sync::{Arc, Mutex};

use netmon_common::TcpState;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::ConstGauge,
        histogram::Histogram, info::Info,
    },
    registry::{Registry, Unit},
};

use self::{
    groups::{CommSlots, OTHER, PeerGroup, peer_slot},
    labels::{
        BuildInfo, CommDirection, CommEnd, Dimension, Direction, DirectionEnd, DirectionFamily,
        ENDS, FAMILIES, FamilyOnly, FromTo, Kind, PeerDirection, PeerEnd, Reason, STATES, State,
        StateFamily, end_index, family_index, state_index, state_word,
    },
};
use crate::{
    decode::Event,
    table::{Applied, Closed, TIME_WAIT_NS, Table},
};

/// Bucket bounds in seconds: 10 µs to an hour. Loopback connections live ~100 µs and
/// handshakes take tens of µs, which the usual 5 ms first bucket would lump together.
pub const DURATION_BUCKETS: [f64; 24] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// What the operator opted into beyond the default metric set.
#[derive(Clone, Debug, Default)]
pub struct MetricsConfig {
    pub peers: Vec<PeerGroup>,
    /// Count per owner command name for the first N names (0: off).
    pub comms: usize,
}

/// Why the table was reconciled with the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resync {
    /// The kernel counted a loss: the table may be wrong.
    Loss,
    /// The periodic check.
    Periodic,
    /// A snapshot request dumped a namespace.
    Snapshot,
}

const RESYNC_REASONS: [&str; 3] = ["loss", "periodic", "snapshot"];

/// Ring records by kind: transition, hint, malformed.
const EVENT_KINDS: [&str; 3] = ["transition", "hint", "malformed"];

/// Label sets of an opt-in dimension: (name, direction) and (name, end reason).
trait GroupLabels:
    Clone + std::hash::Hash + Eq + EncodeLabelSet + Send + Sync + std::fmt::Debug + 'static
{
}

impl<T> GroupLabels for T where
    T: Clone + std::hash::Hash + Eq + EncodeLabelSet + Send + Sync + std::fmt::Debug + 'static
{
}

/// Metrics in one opt-in dimension (peer group or comm); the slot past the names is `other`.
struct Grouped<O: GroupLabels, C: GroupLabels> {
    opened_family: Family<O, Counter>,
    closed_family: Family<C, Counter>,
    make_opened: fn(String, &'static str) -> O,
    make_closed: fn(String, &'static str) -> C,
    names: Vec<String>,
    opened: Vec<[Option<Counter>; 3]>,
    closed: Vec<[Option<Counter>; ENDS.len()]>,
    folded: Counter,
}

impl<O: GroupLabels, C: GroupLabels> Grouped<O, C> {
    fn new(
        slots: usize,
        folded: Counter,
        make_opened: fn(String, &'static str) -> O,
        make_closed: fn(String, &'static str) -> C,
    ) -> Self {
        Self {
            opened_family: Family::default(),
            closed_family: Family::default(),
            make_opened,
            make_closed,
            names: Vec::with_capacity(slots),
            opened: (0..=slots).map(|_| Default::default()).collect(),
            closed: (0..=slots).map(|_| Default::default()).collect(),
            folded,
        }
    }

    fn opened(&mut self, slot: usize, d: Direction) {
        let Self {
            opened,
            opened_family,
            make_opened,
            names,
            ..
        } = self;
        opened[slot][d.index()]
            .get_or_insert_with(|| {
                opened_family.get_or_create_owned(&make_opened(slot_name(names, slot), d.word()))
            })
            .inc();
    }

    fn closed(&mut self, slot: usize, end: crate::table::End) {
        let Self {
            closed,
            closed_family,
            make_closed,
            names,
            ..
        } = self;
        closed[slot][end_index(end)]
            .get_or_insert_with(|| {
                closed_family.get_or_create_owned(&make_closed(slot_name(names, slot), end.name()))
            })
            .inc();
    }
}

fn slot_name(names: &[String], slot: usize) -> String {
    names.get(slot).cloned().unwrap_or_else(|| OTHER.to_owned())
}

/// What a scrape reads from the table and the kernel, computed on the agent's thread just
/// before encoding.
#[derive(Clone, Debug, Default)]
pub struct TableView {
    /// Sockets by state index and family.
    pub sockets: [[u64; 2]; STATES],
    pub live: u64,
    pub time_wait: u64,
    pub closed_history: u64,
    pub evicted: u64,
    pub duplicates: u64,
    /// Kernel-counted losses: ring full, recursion, hints ring full; `None` if unreadable.
    pub lost: Option<[u64; 3]>,
}

impl TableView {
    /// Counts the table's sockets by state and family; TIME-WAIT entries older than the
    /// kernel keeps them are not counted (the table drops them at the next reconcile).
    pub fn of(table: &Table, now_ns: u64) -> Self {
        let mut view = Self::default();
        for (_, s) in table.live() {
            view.sockets[state_index(s.state)][family_index(&s.local)] += 1;
            view.live += 1;
        }
        let tw = table.time_wait_by_family(now_ns.saturating_sub(TIME_WAIT_NS));
        for (family, n) in tw.into_iter().enumerate() {
            view.sockets[state_index(TcpState::TimeWait)][family] += n;
            view.time_wait += n;
        }
        view.closed_history = table.closed_len() as u64;
        view.evicted = table.evicted;
        view.duplicates = table.duplicates;
        view
    }
}

/// Encodes the [`TableView`] of the current scrape.
#[derive(Debug, Default)]
struct TableCollector {
    view: Arc<Mutex<TableView>>,
}

impl Collector for TableCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = self.view.lock().map_err(|_| std::fmt::Error)?.clone();
        let mut sockets = encoder.encode_descriptor(
            "netmon_tcp_sockets",
            "TCP sockets in each state, in every network namespace (state words as node_exporter's node_tcp_connection_states)",
            None,
            MetricType::Gauge,
        )?;
        for (i, by_family) in view.sockets.iter().enumerate() {
            for (f, n) in by_family.iter().enumerate() {
                if *n == 0 && !matches!(i, 1 | 10) {
                    continue;
                }
                let labels = StateFamily {
                    state: state_word(i),
                    family: FAMILIES[f],
                };
                ConstGauge::new(*n as i64).encode(sockets.encode_family(&labels)?)?;
            }
        }
        let mut entries = encoder.encode_descriptor(
            "netmon_table_entries",
            "Entries in the agent's table: live sockets, TIME-WAIT sockets, closed connections remembered",
            None,
            MetricType::Gauge,
        )?;
        for (kind, n) in [
            ("live", view.live),
            ("time_wait", view.time_wait),
            ("closed_history", view.closed_history),
        ] {
            ConstGauge::new(n as i64).encode(entries.encode_family(&Kind { kind })?)?;
        }
        let evicted = encoder.encode_descriptor(
            "netmon_closed_history_evictions",
            "Closed-connection records dropped from the history to respect its capacity",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(view.evicted).encode(evicted)?;
        let duplicates = encoder.encode_descriptor(
            "netmon_duplicate_transitions",
            "Transitions the kernel delivered twice, counted once",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(view.duplicates).encode(duplicates)?;
        if let Some(lost) = view.lost {
            let mut losses = encoder.encode_descriptor(
                "netmon_lost_events",
                "Events the kernel could not deliver: ring full, recursion (the kernel skipped the program), owner/reset hints on a full ring",
                None,
                MetricType::Counter,
            )?;
            for (kind, n) in ["ring_full", "recursion", "hints_ring_full"]
                .into_iter()
                .zip(lost)
            {
                ConstCounter::new(n).encode(losses.encode_family(&Kind { kind })?)?;
            }
        }
        Ok(())
    }
}

/// Every metric the agent exports, with the per-event handles.
pub struct Metrics {
    registry: Registry,
    view: Arc<Mutex<TableView>>,
    events: [Counter; 3],
    resyncs: [Counter; 3],
    transitions_family: Family<FromTo, Counter>,
    transitions: Box<[[Option<Counter>; STATES]; STATES]>,
    opened: [[Counter; 2]; 3],
    closed: [[Counter; ENDS.len()]; 3],
    lifespan_family: HistogramFamily<DirectionEnd>,
    lifespan: [[Option<Histogram>; ENDS.len()]; 3],
    handshake: [Histogram; 2],
    state_duration_family: HistogramFamily<State>,
    state_duration: [Option<Histogram>; STATES],
    sent: [Counter; 3],
    received: [Counter; 3],
    peers: Option<(Vec<PeerGroup>, Grouped<PeerDirection, PeerEnd>)>,
    comms: Option<(CommSlots, Grouped<CommDirection, CommEnd>)>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(config: &MetricsConfig) -> Self {
        let mut r = Registry::default();
        r.register(
            "netmon_build",
            "netmon's version",
            Info::new(BuildInfo {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let view = Arc::new(Mutex::new(TableView::default()));
        r.register_collector(Box::new(TableCollector { view: view.clone() }));

        let events_family = Family::<Kind, Counter>::default();
        let events = EVENT_KINDS.map(|kind| events_family.get_or_create_owned(&Kind { kind }));
        r.register(
            "netmon_events",
            "Ring-buffer records read: transitions, owner/reset hints, records that did not decode",
            events_family,
        );
        let resync_family = Family::<Reason, Counter>::default();
        let resyncs =
            RESYNC_REASONS.map(|reason| resync_family.get_or_create_owned(&Reason { reason }));
        r.register(
            "netmon_resyncs",
            "Reconciliations of the table with a sock_diag dump, by why: a counted loss, the periodic check, a snapshot request (one per namespace dumped)",
            resync_family,
        );

        let transitions_family = Family::<FromTo, Counter>::default();
        r.register(
            "netmon_tcp_transitions",
            "TCP state transitions the kernel reported",
            transitions_family.clone(),
        );
        let opened_family = Family::<DirectionFamily, Counter>::default();
        let opened = Direction::ALL.map(|d| {
            [0, 1].map(|f| {
                opened_family.get_or_create_owned(&DirectionFamily {
                    direction: d.word(),
                    family: FAMILIES[f],
                })
            })
        });
        r.register(
            "netmon_tcp_connections_opened",
            "Connections begun: connects started (outbound, CLOSE -> SYN-SENT) and connections accepted (inbound, LISTEN -> SYN-RECV)",
            opened_family,
        );
        let closed_family = Family::<DirectionEnd, Counter>::default();
        let closed = Direction::ALL.map(|d| {
            ENDS.map(|e| {
                closed_family.get_or_create_owned(&DirectionEnd {
                    direction: d.word(),
                    end_reason: e.name(),
                })
            })
        });
        r.register(
            "netmon_tcp_connections_closed",
            "Connections ended, by how (listeners not counted)",
            closed_family,
        );
        let lifespan_family: HistogramFamily<DirectionEnd> =
            Family::new_with_constructor(duration_histogram);
        r.register_with_unit(
            "netmon_tcp_connection_duration",
            "Lifespan of ended connections netmon saw begin",
            Unit::Seconds,
            lifespan_family.clone(),
        );
        let handshake_family: HistogramFamily<FamilyOnly> =
            Family::new_with_constructor(duration_histogram);
        let handshake = [0, 1].map(|f| {
            handshake_family.get_or_create_owned(&FamilyOnly {
                family: FAMILIES[f],
            })
        });
        r.register_with_unit(
            "netmon_tcp_handshake_duration",
            "Time from connect to established (SYN-SENT -> ESTAB) of outbound connections",
            Unit::Seconds,
            handshake_family,
        );
        let state_duration_family: HistogramFamily<State> =
            Family::new_with_constructor(duration_histogram);
        r.register_with_unit(
            "netmon_tcp_state_duration",
            "Time sockets spent in a state before leaving it, where netmon saw them enter it",
            Unit::Seconds,
            state_duration_family.clone(),
        );
        let sent_family = Family::<labels::DirectionOnly, Counter>::default();
        let received_family = Family::<labels::DirectionOnly, Counter>::default();
        let by_direction = |family: &Family<labels::DirectionOnly, Counter>| {
            Direction::ALL.map(|d| {
                family.get_or_create_owned(&labels::DirectionOnly {
                    direction: d.word(),
                })
            })
        };
        let sent = by_direction(&sent_family);
        let received = by_direction(&received_family);
        r.register_with_unit(
            "netmon_tcp_sent",
            "Bytes the peer acknowledged, of ended connections",
            Unit::Bytes,
            sent_family,
        );
        r.register_with_unit(
            "netmon_tcp_received",
            "Bytes received, of ended connections",
            Unit::Bytes,
            received_family,
        );

        let folded_family = Family::<Dimension, Counter>::default();
        let peers = (!config.peers.is_empty()).then(|| {
            let folded = folded_family.get_or_create_owned(&Dimension { dimension: "peer" });
            let mut g = Grouped::new(
                config.peers.len(),
                folded,
                |peer, direction| PeerDirection { peer, direction },
                |peer, end_reason| PeerEnd { peer, end_reason },
            );
            g.names = config.peers.iter().map(|p| p.name.clone()).collect();
            r.register(
                "netmon_tcp_peer_connections_opened",
                "Connections begun, by named peer group (--metrics-peer; `other`: no group)",
                g.opened_family.clone(),
            );
            r.register(
                "netmon_tcp_peer_connections_closed",
                "Connections ended, by named peer group (--metrics-peer; `other`: no group)",
                g.closed_family.clone(),
            );
            (config.peers.clone(), g)
        });
        let comms = (config.comms > 0).then(|| {
            let folded = folded_family.get_or_create_owned(&Dimension { dimension: "comm" });
            let g = Grouped::new(
                config.comms,
                folded,
                |comm, direction| CommDirection { comm, direction },
                |comm, end_reason| CommEnd { comm, end_reason },
            );
            r.register(
                "netmon_tcp_owner_connections_opened",
                "Connections begun, by owner command name (--metrics-by-comm: the first N names, then `other`)",
                g.opened_family.clone(),
            );
            r.register(
                "netmon_tcp_owner_connections_closed",
                "Connections ended, by owner command name (--metrics-by-comm: the first N names, then `other`)",
                g.closed_family.clone(),
            );
            (CommSlots::new(config.comms), g)
        });
        if peers.is_some() || comms.is_some() {
            r.register(
                "netmon_metrics_folded",
                "Connections counted under `other` in an opt-in dimension: no peer group matched, or past the command-name cap",
                folded_family,
            );
        }
        Self {
            registry: r,
            view,
            events,
            resyncs,
            transitions_family,
            transitions: Box::new(std::array::from_fn(|_| Default::default())),
            opened,
            closed,
            lifespan_family,
            lifespan: Default::default(),
            handshake,
            state_duration_family,
            state_duration: Default::default(),
            sent,
            received,
            peers,
            comms,
        }
    }

    /// Adds metrics that live elsewhere (the OTLP exporter's counters).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// One decoded event, after the table applied it.
    pub fn event(&mut self, e: &Event, applied: &Applied, table: &Table) {
        let t = match e {
            Event::Hint(_) => {
                self.events[1].inc();
                return;
            }
            Event::Transition(t) => t,
        };
        self.events[0].inc();
        if applied.duplicate {
            return;
        }
        let (from, to) = (state_index(t.old), state_index(t.new));
        let family = &self.transitions_family;
        self.transitions[from][to]
            .get_or_insert_with(|| {
                family.get_or_create_owned(&FromTo {
                    from_state: state_word(from),
                    to_state: state_word(to),
                })
            })
            .inc();
        if let Some(ns) = applied.prev_state_ns {
            let family = &self.state_duration_family;
            self.state_duration[from]
                .get_or_insert_with(|| {
                    family.get_or_create_owned(&State {
                        state: state_word(from),
                    })
                })
                .observe(seconds(ns));
            if t.old == TcpState::SynSent && t.new == TcpState::Established {
                self.handshake[family_index(&t.local)].observe(seconds(ns));
            }
        }
        let direction = match (t.old, t.new) {
            (TcpState::Close, TcpState::SynSent) => Direction::Outbound,
            (TcpState::Listen, TcpState::SynRecv) => Direction::Inbound,
            _ => return,
        };
        self.opened[direction.index()][family_index(&t.local)].inc();
        if let Some((groups, g)) = &mut self.peers {
            let slot = peer_slot(groups, &t.remote);
            if slot == groups.len() {
                g.folded.inc();
            }
            g.opened(slot, direction);
        }
        if let Some((slots, g)) = &mut self.comms {
            let owner = table.get(t.cookie).and_then(|s| s.owner);
            let slot = comm_slot(slots, g, owner.as_ref().map(|o| o.task.comm()));
            g.opened(slot, direction);
        }
    }

    /// A record that did not decode.
    pub fn malformed(&self) {
        self.events[2].inc();
    }

    pub fn resync(&self, why: Resync) {
        self.resyncs[why as usize].inc();
    }

    /// An ended connection (after late resets amended it); listeners are not counted.
    pub fn closed(&mut self, c: &Closed) {
        let Some(direction) = Direction::of(c) else {
            return;
        };
        let (d, e) = (direction.index(), end_index(c.end));
        self.closed[d][e].inc();
        if let Some(ns) = c.lifespan_ns() {
            let family = &self.lifespan_family;
            self.lifespan[d][e]
                .get_or_insert_with(|| {
                    family.get_or_create_owned(&DirectionEnd {
                        direction: direction.word(),
                        end_reason: c.end.name(),
                    })
                })
                .observe(seconds(ns));
        }
        self.sent[d].inc_by(c.bytes_acked);
        self.received[d].inc_by(c.bytes_received);
        if let Some((groups, g)) = &mut self.peers {
            let slot = peer_slot(groups, &c.remote);
            g.closed(slot, c.end);
        }
        if let Some((slots, g)) = &mut self.comms {
            let slot = comm_slot(slots, g, c.owner.as_ref().map(|o| o.task.comm()));
            g.closed(slot, c.end);
        }
    }

    /// The OpenMetrics text exposition, with the table's gauges as of `view`.
    pub fn render(&self, view: TableView, out: &mut String) -> std::fmt::Result {
        if let Ok(mut v) = self.view.lock() {
            *v = view;
        }
        prometheus_client::encoding::text::encode(out, &self.registry)
    }
}

/// The slot of an owner's command name; unknown owners are a name of their own.
fn comm_slot(
    slots: &mut CommSlots,
    g: &mut Grouped<CommDirection, CommEnd>,
    comm: Option<&str>,
) -> usize {
    let (slot, new) = slots.slot(comm.unwrap_or("unknown"));
    if new {
        g.names.push(comm.unwrap_or("unknown").to_owned());
    }
    if slot == slots.other() {
        g.folded.inc();
    }
    slot
}

#[cfg(test)]
mod tests {
    use netmon_common::AF_INET;

    use super::*;
    use crate::{
        decode::{Hint, HintKind, Task, Transition, from_event, tests::event},
        export::Export,
    };

    /// A transition of socket `cookie` run by task `pid`, to `remote`.
    fn by(cookie: u64, pid: u32, ts: u64, old: TcpState, new: TcpState) -> Transition {
        let mut ev = event(
            AF_INET,
            &[127, 0, 0, 1],
            &[10, 1, 2, 3],
            old.to_kernel(),
            new.to_kernel(),
        );
        ev.ts_ns = ts;
        let mut t = from_event(&ev).unwrap();
        t.cookie = cookie;
        t.task = Task::new(pid, pid, 1000, &format!("p{pid}"));
        t
    }

    fn reset_received(cookie: u64, state: TcpState) -> Hint {
        let t = by(cookie, 0, 0, state, state);
        Hint {
            kind: HintKind::ResetReceived,
            ts_ns: 5,
            cookie,
            netns: t.netns,
            state,
            local: t.local,
            remote: t.remote,
            task: t.task,
        }
    }

    /// Feeds events through a table and the export, as the agent does.
    struct Fixture {
        table: Table,
        export: Export,
    }

    impl Fixture {
        fn new(config: &MetricsConfig) -> Self {
            Self {
                table: Table::new(),
                export: Export::new(Some(Metrics::new(config)), None),
            }
        }

        fn feed(&mut self, events: &[Event]) {
            for e in events {
                let applied = self.table.event(e);
                self.export.event(e, &applied, &self.table);
            }
            self.export.end_batch();
        }

        fn exposition(&self) -> String {
            let mut out = String::new();
            let view = TableView::of(&self.table, 1_000_000);
            self.export
                .metrics
                .as_ref()
                .unwrap()
                .render(view, &mut out)
                .unwrap();
            out
        }
    }

    fn value(exposition: &str, series: &str) -> Option<f64> {
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn tr(t: Transition) -> Event {
        Event::Transition(t)
    }

    #[test]
    fn connections_are_counted_by_direction_family_and_end() {
        use TcpState::*;
        let mut f = Fixture::new(&MetricsConfig::default());
        f.feed(&[
            // Refused: the reset hint comes before SYN-SENT -> CLOSE.
            tr(by(1, 200, 1_000, Close, SynSent)),
            Event::Hint(reset_received(1, SynSent)),
            tr(by(1, 0, 41_000, SynSent, Close)),
            // A normal outbound connection: 30 µs handshake, 500 µs life.
            tr(by(2, 200, 100_000, Close, SynSent)),
            tr(by(2, 0, 130_000, SynSent, Established)),
            tr(by(2, 200, 500_000, Established, FinWait1)),
            tr(by(2, 0, 550_000, FinWait1, FinWait2)),
            tr(by(2, 0, 600_000, FinWait2, Close)),
            // The same transition delivered twice is counted once.
            tr(by(2, 0, 600_000, FinWait2, Close)),
        ]);
        let out = f.exposition();
        let v = |s: &str| value(&out, s).unwrap_or_else(|| panic!("no {s} in\n{out}"));
        assert_eq!(
            v(r#"netmon_tcp_connections_closed_total{direction="outbound",end_reason="refused"}"#),
            1.0
        );
        assert_eq!(
            v(r#"netmon_tcp_connections_closed_total{direction="outbound",end_reason="normal"}"#),
            1.0
        );
        assert_eq!(
            v(r#"netmon_tcp_connections_closed_total{direction="inbound",end_reason="normal"}"#),
            0.0,
            "known label sets start at zero, so rate() works from the first scrape"
        );
        assert_eq!(
            v(r#"netmon_tcp_connections_opened_total{direction="outbound",family="ipv4"}"#),
            2.0
        );
        assert_eq!(
            v(r#"netmon_tcp_transitions_total{from_state="close",to_state="syn_sent"}"#),
            2.0
        );
        assert_eq!(
            v(r#"netmon_tcp_transitions_total{from_state="fin_wait2",to_state="close"}"#),
            1.0
        );
        assert_eq!(v("netmon_duplicate_transitions_total"), 1.0);
        assert_eq!(v(r#"netmon_events_total{kind="transition"}"#), 8.0);
        assert_eq!(v(r#"netmon_events_total{kind="hint"}"#), 1.0);
        // Sub-millisecond lifespans land in their own buckets.
        let life = r#"netmon_tcp_connection_duration_seconds_bucket{le="0.0005",direction="outbound",end_reason="normal"}"#;
        assert_eq!(v(life), 1.0);
        let shorter = r#"netmon_tcp_connection_duration_seconds_bucket{le="0.00025",direction="outbound",end_reason="normal"}"#;
        assert_eq!(v(shorter), 0.0);
        let handshake =
            r#"netmon_tcp_handshake_duration_seconds_bucket{le="0.00005",family="ipv4"}"#;
        assert_eq!(v(handshake), 1.0, "30 µs handshake in the 50 µs bucket");
        assert_eq!(
            v(r#"netmon_tcp_state_duration_seconds_count{state="established"}"#),
            1.0
        );
        assert!(
            out.starts_with("# HELP") && out.ends_with("# EOF\n"),
            "{out}"
        );
        assert!(out.contains(r#"netmon_build_info{version=""#), "{out}");
        for default_label in ["pid=", "port=", "cookie=", "address=", "peer=", "comm="] {
            assert!(!out.contains(default_label), "{default_label} in\n{out}");
        }
    }

    #[test]
    fn a_reset_after_close_is_counted_as_the_reset() {
        use TcpState::*;
        let mut f = Fixture::new(&MetricsConfig::default());
        let mut rst = reset_received(3, Close);
        rst.kind = HintKind::ResetSent;
        f.feed(&[
            tr(by(3, 200, 1_000, Close, SynSent)),
            tr(by(3, 0, 2_000, SynSent, Established)),
            tr(by(3, 200, 3_000, Established, Close)),
            Event::Hint(rst),
        ]);
        let out = f.exposition();
        let reset =
            r#"netmon_tcp_connections_closed_total{direction="outbound",end_reason="reset-sent"}"#;
        assert_eq!(value(&out, reset), Some(1.0), "{out}");
        let normal =
            r#"netmon_tcp_connections_closed_total{direction="outbound",end_reason="normal"}"#;
        assert_eq!(value(&out, normal), Some(0.0), "{out}");
    }

    #[test]
    fn sockets_gauge_counts_the_table_by_state_and_family() {
        use TcpState::*;
        let mut f = Fixture::new(&MetricsConfig::default());
        f.feed(&[
            tr(by(1, 100, 10, Close, Listen)),
            tr(by(2, 200, 20, Close, SynSent)),
            tr(by(2, 0, 30, SynSent, Established)),
            tr(by(3, 200, 40, Close, SynSent)),
            tr(by(3, 0, 50, SynSent, Established)),
            tr(by(3, 200, 60, Established, FinWait1)),
            tr(by(3, 0, 70, FinWait1, FinWait2)),
            tr(by(3, 0, 80, FinWait2, Close)),
        ]);
        let out = f.exposition();
        let v = |s: &str| value(&out, s);
        assert_eq!(
            v(r#"netmon_tcp_sockets{state="listen",family="ipv4"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"netmon_tcp_sockets{state="established",family="ipv4"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"netmon_tcp_sockets{state="time_wait",family="ipv4"}"#),
            Some(1.0)
        );
        assert_eq!(v(r#"netmon_table_entries{kind="live"}"#), Some(2.0));
        assert_eq!(
            v(r#"netmon_table_entries{kind="closed_history"}"#),
            Some(1.0)
        );
        // A listener's end is no connection's end.
        f.feed(&[tr(by(1, 100, 90, Listen, Close))]);
        let out = f.exposition();
        let closed: f64 = out
            .lines()
            .filter(|l| l.starts_with("netmon_tcp_connections_closed_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert_eq!(closed, 1.0, "{out}");
    }

    #[test]
    fn peer_groups_and_comms_are_capped_with_other_and_a_folded_count() {
        use TcpState::*;
        let config = MetricsConfig {
            peers: vec![
                "corp=10.0.0.0/8".parse().unwrap(),
                "web=192.0.2.0/24:443".parse().unwrap(),
            ],
            comms: 1,
        };
        let mut f = Fixture::new(&config);
        let mut elsewhere = by(3, 300, 10, Close, SynSent);
        elsewhere.remote = "198.51.100.1:80".parse().unwrap();
        f.feed(&[
            tr(by(1, 200, 10, Close, SynSent)),
            tr(by(2, 201, 10, Close, SynSent)),
            tr(elsewhere),
            tr(by(1, 0, 20, SynSent, Close)),
        ]);
        let out = f.exposition();
        let v = |s: &str| value(&out, s).unwrap_or_else(|| panic!("no {s} in\n{out}"));
        assert_eq!(
            v(r#"netmon_tcp_peer_connections_opened_total{peer="corp",direction="outbound"}"#),
            2.0
        );
        assert_eq!(
            v(r#"netmon_tcp_peer_connections_opened_total{peer="other",direction="outbound"}"#),
            1.0
        );
        assert_eq!(
            v(
                r#"netmon_tcp_peer_connections_closed_total{peer="corp",end_reason="connect-timeout"}"#
            ),
            1.0
        );
        assert_eq!(
            v(r#"netmon_tcp_owner_connections_opened_total{comm="p200",direction="outbound"}"#),
            1.0
        );
        assert_eq!(
            v(r#"netmon_tcp_owner_connections_opened_total{comm="other",direction="outbound"}"#),
            2.0
        );
        assert_eq!(v(r#"netmon_metrics_folded_total{dimension="comm"}"#), 2.0);
        assert_eq!(v(r#"netmon_metrics_folded_total{dimension="peer"}"#), 1.0);
        assert!(!out.contains("p201") && !out.contains("p300"), "{out}");
    }

    #[test]
    fn per_event_handles_are_resolved_once() {
        use TcpState::*;
        let mut f = Fixture::new(&MetricsConfig::default());
        f.feed(&[tr(by(1, 200, 10, Close, SynSent))]);
        let series = |f: &Fixture| f.exposition().lines().count();
        let before = series(&f);
        for i in 0..1000 {
            f.feed(&[tr(by(10 + i, 200, 10, Close, SynSent))]);
        }
        assert_eq!(series(&f), before, "the same label sets, no new series");
        let m = f.export.metrics.as_ref().unwrap();
        assert!(m.transitions[state_index(Close)][state_index(SynSent)].is_some());
    }
}
