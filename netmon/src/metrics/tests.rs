//! The metric set fed through the tracer's real pipeline from synthetic ring records.

use netmon_common::{AF_INET, EventKind, SockEvent};

use super::*;
use crate::{decode::tests::event, export::Export, tracer::Pipeline};

/// A ring record: socket `cookie`, task `pid` (comm `p<pid>`), to 10.1.2.3:8080.
fn rec(cookie: u64, pid: u32, ts: u64, old: TcpState, new: TcpState) -> SockEvent {
    let mut ev = event(
        AF_INET,
        &[127, 0, 0, 1],
        &[10, 1, 2, 3],
        old.to_kernel(),
        new.to_kernel(),
    );
    ev.ts_ns = ts;
    ev.cookie = cookie;
    ev.pid = pid;
    ev.tid = pid;
    ev.comm = [0; 16];
    let comm = format!("p{pid}");
    ev.comm[..comm.len()].copy_from_slice(comm.as_bytes());
    ev
}

fn hint(cookie: u64, kind: EventKind, state: TcpState) -> SockEvent {
    let mut ev = rec(cookie, 0, 5, state, state);
    ev.kind = kind as u8;
    ev
}

fn bytes(ev: &SockEvent) -> Vec<u8> {
    // SAFETY: plain data without padding.
    unsafe { std::slice::from_raw_parts((ev as *const SockEvent).cast::<u8>(), size_of_val(ev)) }
        .to_vec()
}

/// The agent's pipeline with the metrics consumer.
struct Fixture {
    pipeline: Pipeline,
    export: Export,
}

impl Fixture {
    fn new(config: &MetricsConfig) -> Self {
        Self {
            pipeline: Pipeline::new(Table::new()),
            export: Export {
                metrics: Some(Metrics::new(config, None)),
                otlp: None,
            },
        }
    }

    /// One batch of ring records.
    fn feed(&mut self, events: &[SockEvent]) {
        for e in events {
            self.pipeline.record(&bytes(e), &mut self.export).unwrap();
        }
        self.pipeline.end_batch(&mut self.export).unwrap();
    }

    fn exposition(&self) -> String {
        let view = TableView::of(&self.pipeline.table, 1_000_000);
        self.export
            .metrics
            .as_ref()
            .unwrap()
            .exposition()
            .render(view, true)
    }
}

fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn connections_are_counted_by_direction_family_and_end() {
    use TcpState::*;
    let mut f = Fixture::new(&MetricsConfig::default());
    f.feed(&[
        // Refused: the reset hint comes before SYN-SENT -> CLOSE.
        rec(1, 200, 1_000, Close, SynSent),
        hint(1, EventKind::ResetReceived, SynSent),
        rec(1, 0, 41_000, SynSent, Close),
        // A normal outbound connection: 30 µs handshake, 500 µs life.
        rec(2, 200, 100_000, Close, SynSent),
        rec(2, 0, 130_000, SynSent, Established),
        rec(2, 200, 500_000, Established, FinWait1),
        rec(2, 0, 550_000, FinWait1, FinWait2),
        rec(2, 0, 600_000, FinWait2, Close),
        // The same transition delivered twice is counted once.
        rec(2, 0, 600_000, FinWait2, Close),
    ]);
    let out = f.exposition();
    let v = |s: &str| value(&out, s).unwrap_or_else(|| panic!("no {s} in\n{out}"));
    let closed = |d: &str, e: &str| {
        v(&format!(
            r#"netmon_tcp_connections_closed_total{{direction="{d}",end_reason="{e}"}}"#
        ))
    };
    assert_eq!(closed("outbound", "refused"), 1.0);
    assert_eq!(closed("outbound", "normal"), 1.0);
    // Known label sets start at zero, so that rate() works from the first scrape.
    assert_eq!(closed("inbound", "normal"), 0.0);
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
    // This fixture has no perf counter: the count is off, and says so.
    assert_eq!(v("netmon_fire_count_enabled"), 0.0);
    assert_eq!(v(r#"netmon_events_total{kind="transition"}"#), 7.0);
    assert_eq!(v(r#"netmon_events_total{kind="hint"}"#), 1.0);
    // Sub-millisecond lifespans land in buckets of their own.
    let life = |le: &str| {
        v(&format!(
            r#"netmon_tcp_connection_duration_seconds_bucket{{le="{le}",direction="outbound",end_reason="normal"}}"#
        ))
    };
    assert_eq!((life("0.00025"), life("0.0005")), (0.0, 1.0));
    let handshake = r#"netmon_tcp_handshake_duration_seconds_bucket{le="0.00005",family="ipv4"}"#;
    assert_eq!(v(handshake), 1.0, "a 30 µs handshake in the 50 µs bucket");
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
    f.feed(&[
        rec(3, 200, 1_000, Close, SynSent),
        rec(3, 0, 2_000, SynSent, Established),
        rec(3, 200, 3_000, Established, Close),
        hint(3, EventKind::ResetSent, Close),
    ]);
    let out = f.exposition();
    let closed = |e: &str| {
        value(
            &out,
            &format!(
                r#"netmon_tcp_connections_closed_total{{direction="outbound",end_reason="{e}"}}"#
            ),
        )
    };
    assert_eq!(
        (closed("reset-sent"), closed("normal")),
        (Some(1.0), Some(0.0)),
        "{out}"
    );
}

#[test]
fn sockets_gauge_counts_the_table_by_state_and_family() {
    use TcpState::*;
    let mut f = Fixture::new(&MetricsConfig::default());
    f.feed(&[
        rec(1, 100, 10, Close, Listen),
        rec(2, 200, 20, Close, SynSent),
        rec(2, 0, 30, SynSent, Established),
        rec(3, 200, 40, Close, SynSent),
        rec(3, 0, 50, SynSent, Established),
        rec(3, 200, 60, Established, FinWait1),
        rec(3, 0, 70, FinWait1, FinWait2),
        rec(3, 0, 80, FinWait2, Close),
    ]);
    let out = f.exposition();
    let v = |s: &str| value(&out, s);
    let sockets = |state: &str| {
        v(&format!(
            r#"netmon_tcp_sockets{{state="{state}",family="ipv4"}}"#
        ))
    };
    assert_eq!(sockets("listen"), Some(1.0));
    assert_eq!(sockets("established"), Some(1.0));
    assert_eq!(sockets("time_wait"), Some(1.0), "{out}");
    assert_eq!(sockets("syn_sent"), None, "empty states are left out");
    assert_eq!(v(r#"netmon_table_entries{kind="live"}"#), Some(2.0));
    assert_eq!(
        v(r#"netmon_table_entries{kind="closed_history"}"#),
        Some(1.0)
    );
    // A listener's end is no connection's end.
    f.feed(&[rec(1, 100, 90, Listen, Close)]);
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
    let mut elsewhere = rec(3, 300, 10, Close, SynSent);
    elsewhere.daddr[..4].copy_from_slice(&[198, 51, 100, 1]);
    f.feed(&[
        rec(1, 200, 10, Close, SynSent),
        rec(2, 201, 10, Close, SynSent),
        elsewhere,
        rec(1, 0, 20, SynSent, Close),
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
        v(r#"netmon_tcp_peer_connections_closed_total{peer="corp",end_reason="connect-timeout"}"#),
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
    // Two opens past the cap; one open to no group.
    assert_eq!(v(r#"netmon_metrics_folded_total{dimension="comm"}"#), 2.0);
    assert_eq!(v(r#"netmon_metrics_folded_total{dimension="peer"}"#), 1.0);
    assert!(!out.contains("p201") && !out.contains("p300"), "{out}");
}

#[test]
fn the_same_label_sets_make_no_new_series() {
    use TcpState::*;
    let mut f = Fixture::new(&MetricsConfig::default());
    f.feed(&[rec(1, 200, 10, Close, SynSent)]);
    let series = |f: &Fixture| f.exposition().lines().count();
    let before = series(&f);
    let many: Vec<SockEvent> = (0..1000)
        .map(|i| rec(10 + i, 200, 10, Close, SynSent))
        .collect();
    f.feed(&many);
    assert_eq!(series(&f), before);
    let m = f.export.metrics.as_ref().unwrap();
    assert!(m.transitions[state_index(Close)][state_index(SynSent)].is_some());
}
