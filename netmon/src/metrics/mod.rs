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
        BuildInfo, CommDirection, CommEnd, ContainerDirection, ContainerEnd, Dimension, Direction,
        DirectionEnd, DirectionFamily, ENDS, FAMILIES, FamilyOnly, FromTo, Kind, PeerDirection,
        PeerEnd, Reason, STATES, State, StateFamily, UnitDirection, UnitEnd, end_index,
        family_index, state_index, state_word,
    },
};
use crate::{
    cgroup::CgroupNames,
    decode::{Hint, Transition},
    otlp::Stats,
    table::{Closed, Owner, TIME_WAIT_NS, Table},
    tracer::Resyncs,
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
    /// Count per systemd unit / container id of the socket's cgroup, first N of each (0: off).
    pub units: usize,
    pub containers: usize,
    /// The cgroup2 mount (`None`: from /proc/self/mountinfo).
    pub cgroup_mount: Option<std::path::PathBuf>,
}

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

    /// Registers the two families as `netmon_tcp_{stem}_connections_opened` and `_closed`.
    fn register(&self, r: &mut Registry, stem: &str, opened_help: &str, closed_help: &str) {
        r.register(
            format!("netmon_tcp_{stem}_connections_opened"),
            opened_help,
            self.opened_family.clone(),
        );
        r.register(
            format!("netmon_tcp_{stem}_connections_closed"),
            closed_help,
            self.closed_family.clone(),
        );
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

/// What a scrape reads from the table, the pipeline and the kernel, computed on the tracer's
/// thread just before encoding.
#[derive(Clone, Debug, Default)]
pub struct TableView {
    /// Sockets by state index and family.
    pub sockets: [[u64; 2]; STATES],
    pub live: u64,
    pub time_wait: u64,
    pub closed_history: u64,
    pub evicted: u64,
    pub duplicates: u64,
    /// Losses counted so far: ring full, recursion, hints ring full, not run.
    pub lost: [u64; 4],
    /// Ring records that did not decode.
    pub malformed: u64,
    pub resyncs: Resyncs,
    /// Whether perf counts the tracepoint's fires (`not_run` losses can be seen).
    pub fire_count: bool,
    /// Memory holding ring records read ahead of the table while a dump or a merge ran.
    pub held_bytes: u64,
    /// Memory holding snapshot replies that their clients have not read yet (the agent's).
    pub unread_reply_bytes: u64,
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

/// Encodes the [`TableView`] of the current scrape, and the recorder's event counts.
#[derive(Debug, Default)]
struct TableCollector {
    view: Arc<Mutex<TableView>>,
    transitions: Counter,
    hints: Counter,
}

fn counter_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, n) in values {
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
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
        let always = [TcpState::Established, TcpState::Listen].map(state_index);
        for (i, by_family) in view.sockets.iter().enumerate() {
            for (f, n) in by_family.iter().enumerate() {
                // Empty states are left out, but for two that dashboards always plot.
                if *n == 0 && !always.contains(&i) {
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
        counter_family(
            &mut encoder,
            "netmon_events",
            "Ring-buffer records read: transitions (a duplicate counted once), owner/reset hints, records that did not decode",
            [
                ("transition", self.transitions.get()),
                ("hint", self.hints.get()),
                ("malformed", view.malformed),
            ]
            .map(|(kind, n)| (Kind { kind }, n)),
        )?;
        let r = view.resyncs;
        counter_family(
            &mut encoder,
            "netmon_resyncs",
            "Reconciliations of the table with a sock_diag dump, one per namespace dumped, by why: a counted loss, the periodic check, a snapshot request",
            [
                ("loss", r.loss),
                ("periodic", r.periodic),
                ("snapshot", r.snapshot),
            ]
            .map(|(reason, n)| (Reason { reason }, n)),
        )?;
        let merge = encoder.encode_descriptor(
            "netmon_resync_longest_merge",
            "The longest merge of a sock_diag dump into the table (the ring is read into memory meanwhile; records reach the table after it)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        ConstGauge::new(r.longest_merge_ns as f64 / 1e9).encode(merge)?;
        let held = encoder.encode_descriptor(
            "netmon_held_records",
            "Memory holding ring records read while a dump or a merge ran, not yet applied to the table (freed once they all are)",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        ConstGauge::new(view.held_bytes as i64).encode(held)?;
        let unread = encoder.encode_descriptor(
            "netmon_unread_replies",
            "Memory holding snapshot replies not yet read by their clients (frames past a reply's first 256 KiB held deflated), within --max-unread-bytes",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        ConstGauge::new(view.unread_reply_bytes as i64).encode(unread)?;
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
        let fire_count = encoder.encode_descriptor(
            "netmon_fire_count_enabled",
            "1 if perf counts the tracepoint's fires, so that fires no copy of the program ran for are counted (lost_events not_run); 0 if off (--no-fire-count, or tracefs could not be read or mounted: see the agent's stderr)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(view.fire_count)).encode(fire_count)?;
        counter_family(
            &mut encoder,
            "netmon_lost_events",
            "Events lost: transitions on a full ring, transitions the kernel skipped the program for (recursion), owner/reset hints on a full ring, tracepoint fires no copy of the program ran for (not_run, counted by perf, all namespaces)",
            ["ring_full", "recursion", "hints_ring_full", "not_run"]
                .into_iter()
                .zip(view.lost)
                .map(|(kind, n)| (Kind { kind }, n)),
        )?;
        Ok(())
    }
}

/// The registry and what a scrape renders; shared with the `/metrics` server.
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
    view: Arc<Mutex<TableView>>,
    /// One render at a time: the view is set, then encoded.
    rendering: Mutex<()>,
}

impl Exposition {
    /// The exposition, with the table's gauges as of `view`: OpenMetrics text, or the
    /// Prometheus text format (0.0.4) for clients that do not ask for OpenMetrics.
    pub fn render(&self, view: TableView, openmetrics: bool) -> String {
        let _one = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = view;
        let mut out = String::with_capacity(32 * 1024);
        // Writing to a String cannot fail.
        let _ = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        out
    }
}

/// Every metric the agent exports, with the per-event handles; fed on the tracer's thread.
pub struct Metrics {
    exposition: Arc<Exposition>,
    transitions_count: Counter,
    hints_count: Counter,
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
    units: Option<(CommSlots, Grouped<UnitDirection, UnitEnd>)>,
    containers: Option<(CommSlots, Grouped<ContainerDirection, ContainerEnd>)>,
    /// cgroup ids to labels, for `units` and `containers`.
    cgroups: CgroupNames,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metric set; `otlp` adds the exporter's counters.
    pub fn new(config: &MetricsConfig, otlp: Option<&Stats>) -> Self {
        let mut r = Registry::default();
        r.register(
            "netmon_build",
            "netmon's version",
            Info::new(BuildInfo {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let view = Arc::new(Mutex::new(TableView::default()));
        let (transitions_count, hints_count) = (Counter::default(), Counter::default());
        r.register_collector(Box::new(TableCollector {
            view: view.clone(),
            transitions: transitions_count.clone(),
            hints: hints_count.clone(),
        }));

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
            g.register(
                &mut r,
                "peer",
                "Connections begun, by named peer group (--metrics-peer; `other`: no group)",
                "Connections ended, by named peer group (--metrics-peer; `other`: no group)",
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
            g.register(
                &mut r,
                "owner",
                "Connections begun, by owner command name (--metrics-by-comm: the first N names, then `other`)",
                "Connections ended, by owner command name (--metrics-by-comm: the first N names, then `other`)",
            );
            (CommSlots::new(config.comms), g)
        });
        let units = (config.units > 0).then(|| {
            let folded = folded_family.get_or_create_owned(&Dimension { dimension: "unit" });
            let g = Grouped::new(
                config.units,
                folded,
                |unit, direction| UnitDirection { unit, direction },
                |unit, end_reason| UnitEnd { unit, end_reason },
            );
            g.register(
                &mut r,
                "unit",
                "Connections begun, by the systemd unit of the socket's cgroup (--metrics-by-unit: the first N units, then `other`; `none`: no unit, `unknown`: cgroup not found)",
                "Connections ended, by the systemd unit of the socket's cgroup (--metrics-by-unit: the first N units, then `other`)",
            );
            (CommSlots::new(config.units), g)
        });
        let containers = (config.containers > 0).then(|| {
            let folded = folded_family.get_or_create_owned(&Dimension {
                dimension: "container",
            });
            let g = Grouped::new(
                config.containers,
                folded,
                |container_id, direction| ContainerDirection {
                    container_id,
                    direction,
                },
                |container_id, end_reason| ContainerEnd {
                    container_id,
                    end_reason,
                },
            );
            g.register(
                &mut r,
                "container",
                "Connections begun, by the container id of the socket's cgroup (--metrics-by-container: the first N ids, then `other`; `none`: not in a container, `unknown`: cgroup not found)",
                "Connections ended, by the container id of the socket's cgroup (--metrics-by-container: the first N ids, then `other`)",
            );
            (CommSlots::new(config.containers), g)
        });
        let cgroups = if units.is_none() && containers.is_none() {
            CgroupNames::default()
        } else if let Some(mount) = &config.cgroup_mount {
            CgroupNames::at(Some(mount.clone()))
        } else {
            CgroupNames::load()
        };
        if peers.is_some() || comms.is_some() || units.is_some() || containers.is_some() {
            r.register(
                "netmon_metrics_folded",
                "Connections counted under `other` in an opt-in dimension: no peer group matched, or past the cap of names (comm, unit, container)",
                folded_family,
            );
        }
        if let Some(stats) = otlp {
            stats.register(&mut r);
        }
        Self {
            exposition: Arc::new(Exposition {
                registry: r,
                view,
                rendering: Mutex::new(()),
            }),
            transitions_count,
            hints_count,
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
            units,
            containers,
            cgroups,
        }
    }

    /// What the `/metrics` server renders.
    pub fn exposition(&self) -> Arc<Exposition> {
        self.exposition.clone()
    }

    /// A transition (duplicates already dropped), with its socket's owner and the time spent
    /// in the state it left.
    pub fn transition(
        &mut self,
        t: &Transition,
        owner: Option<&Owner>,
        prev_state_ns: Option<u64>,
    ) {
        self.transitions_count.inc();
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
        if let Some(ns) = prev_state_ns {
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
            let slot = comm_slot(slots, g, owner.map(|o| o.task.comm()));
            g.opened(slot, direction);
        }
        self.cgroup_groups(
            t.cgroup_id,
            |g| g.opened(direction),
            |g| g.opened(direction),
        );
    }

    /// The unit and container slots of cgroup `id`, each counted by `unit`/`container`.
    fn cgroup_groups(
        &mut self,
        id: u64,
        unit: impl FnOnce(Slotted<'_, UnitDirection, UnitEnd>),
        container: impl FnOnce(Slotted<'_, ContainerDirection, ContainerEnd>),
    ) {
        if self.units.is_none() && self.containers.is_none() {
            return;
        }
        let labels = self.cgroups.lookup(id, std::time::Instant::now).ok();
        fn name(known: bool, label: Option<&str>) -> &str {
            match (known, label) {
                (_, Some(n)) => n,
                (true, None) => "none",
                (false, _) => "unknown",
            }
        }
        let known = labels.is_some();
        if let Some((slots, g)) = &mut self.units {
            let slot = comm_slot(
                slots,
                g,
                Some(name(known, labels.and_then(|l| l.unit.as_deref()))),
            );
            unit(Slotted { g, slot });
        }
        if let Some((slots, g)) = &mut self.containers {
            let id = name(known, labels.and_then(|l| l.container_id.as_deref()));
            let slot = comm_slot(slots, g, Some(id));
            container(Slotted { g, slot });
        }
    }

    pub fn hint(&mut self, _h: &Hint) {
        self.hints_count.inc();
    }

    /// An ended connection (late resets already applied); listeners are not counted.
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
        self.cgroup_groups(c.cgroup_id, |g| g.closed(c.end), |g| g.closed(c.end));
    }
}

/// One slot of a named dimension, to count in.
struct Slotted<'a, O: GroupLabels, C: GroupLabels> {
    g: &'a mut Grouped<O, C>,
    slot: usize,
}

impl<O: GroupLabels, C: GroupLabels> Slotted<'_, O, C> {
    fn opened(self, d: Direction) {
        self.g.opened(self.slot, d);
    }

    fn closed(self, end: crate::table::End) {
        self.g.closed(self.slot, end);
    }
}

/// The slot of a name (an owner's command name, a unit, a container id) in a capped
/// dimension; unknown owners are a name of their own.
fn comm_slot<O: GroupLabels, C: GroupLabels>(
    slots: &mut CommSlots,
    g: &mut Grouped<O, C>,
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
mod tests;
