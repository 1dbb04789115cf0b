//! The shape of the OTLP log record of an ended connection, as prost messages: OpenTelemetry
//! semantic-convention attribute names where one exists (`network.*`, `source.*`,
//! `destination.*`, `process.*`, `container.id`, `k8s.pod.uid`), `netmon.*` for the rest.
//! The exporter writes the same bytes by hand ([`super::encode`]); this is the reference its
//! tests compare with.

use std::{net::SocketAddr, time::SystemTime};

use super::proto::{
    AnyValue, ArrayValue, ExportLogsServiceRequest, InstrumentationScope, KeyValue, LogRecord,
    Resource, ResourceLogs, ScopeLogs, Value,
};
use crate::{
    cgroup::Labels,
    clock::Clock,
    metrics::labels::{Direction, FAMILIES, family_index},
    output::state_name,
    table::{Closed, End},
};

/// The `event.name` of every record netmon sends.
pub const EVENT_NAME: &str = "netmon.tcp.connection.closed";
pub const SEVERITY_INFO: i32 = 9;
pub const SEVERITY_WARN: i32 = 13;

pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn int(v: u64) -> AnyValue {
    AnyValue::int(i64::try_from(v).unwrap_or(i64::MAX))
}

fn endpoint(attrs: &mut Vec<KeyValue>, prefix: &str, addr: &SocketAddr) {
    attrs.push(KeyValue::new(
        &format!("{prefix}.address"),
        AnyValue::string(addr.ip().to_string()),
    ));
    attrs.push(KeyValue::new(
        &format!("{prefix}.port"),
        int(u64::from(addr.port())),
    ));
}

/// The log record of an ended connection, with the labels of its socket's cgroup; `observed`
/// is when netmon handled it.
pub fn log_record(
    c: &Closed,
    direction: Direction,
    labels: Option<&Labels>,
    clock: &Clock,
    observed: SystemTime,
) -> LogRecord {
    let mut attrs = Vec::with_capacity(24);
    attrs.push(KeyValue::new("network.transport", AnyValue::string("tcp")));
    attrs.push(KeyValue::new(
        "network.type",
        AnyValue::string(FAMILIES[family_index(&c.local)]),
    ));
    // source = the side that connected, destination = the side that accepted; both ends of
    // a connection on one host then agree, and a collector can join them. The local and peer
    // ends follow from them and `netmon.direction`, so `network.local.*`/`network.peer.*`
    // are only written when the direction is unknown.
    match direction {
        Direction::Outbound => {
            endpoint(&mut attrs, "source", &c.local);
            endpoint(&mut attrs, "destination", &c.remote);
        }
        Direction::Inbound => {
            endpoint(&mut attrs, "source", &c.remote);
            endpoint(&mut attrs, "destination", &c.local);
        }
        Direction::Unknown => {
            endpoint(&mut attrs, "network.local", &c.local);
            endpoint(&mut attrs, "network.peer", &c.remote);
        }
    }
    if let Some(o) = &c.owner {
        attrs.push(KeyValue::new("process.pid", int(u64::from(o.task.pid))));
        attrs.push(KeyValue::new(
            "process.executable.name",
            AnyValue::string(o.task.comm()),
        ));
        attrs.push(KeyValue::new("process.user.id", int(u64::from(o.task.uid))));
    }
    if let Some(l) = labels {
        for (key, value) in [
            ("container.id", &l.container_id),
            ("k8s.pod.uid", &l.pod_uid),
            ("netmon.systemd.unit", &l.unit),
        ] {
            if let Some(v) = value {
                attrs.push(KeyValue::new(key, AnyValue::string(v.as_str())));
            }
        }
    }
    attrs.push(KeyValue::new(
        "netmon.direction",
        AnyValue::string(direction.word()),
    ));
    attrs.push(KeyValue::new(
        "netmon.end_reason",
        AnyValue::string(c.end.name()),
    ));
    attrs.push(KeyValue::new(
        "netmon.last_state",
        AnyValue::string(state_name(c.last)),
    ));
    if let Some(ns) = c.lifespan_ns() {
        attrs.push(KeyValue::new("netmon.lifespan_ns", int(ns)));
    }
    let (mut states, mut durations) = (Vec::new(), Vec::new());
    for (state, ns) in c.path.durations(c.closed_ns) {
        states.push(AnyValue::string(state_name(state)));
        durations.push(int(ns));
    }
    let array = |values| AnyValue {
        value: Some(Value::Array(ArrayValue { values })),
    };
    attrs.push(KeyValue::new("netmon.states", array(states)));
    attrs.push(KeyValue::new("netmon.state_durations_ns", array(durations)));
    attrs.push(KeyValue::new("netmon.bytes_sent", int(c.bytes_acked)));
    attrs.push(KeyValue::new(
        "netmon.bytes_received",
        int(c.bytes_received),
    ));
    attrs.push(KeyValue::new("netmon.netns", int(u64::from(c.netns))));
    attrs.push(KeyValue::new("netmon.socket.cookie", int(c.cookie)));
    let (severity_number, severity_text) = match c.end {
        End::Normal => (SEVERITY_INFO, "INFO"),
        _ => (SEVERITY_WARN, "WARN"),
    };
    LogRecord {
        time_unix_nano: unix_ns(clock.wall(c.closed_ns)),
        observed_time_unix_nano: unix_ns(observed),
        severity_number,
        severity_text: severity_text.to_owned(),
        // Events carry their details in attributes, not a body (semantic conventions).
        body: None,
        attributes: attrs,
        dropped_attributes_count: 0,
        flags: 0,
        event_name: EVENT_NAME.to_owned(),
    }
}

/// One export request around `records`, with the resource that names this host and netmon.
pub fn request(records: Vec<LogRecord>, host: &str) -> ExportLogsServiceRequest {
    let version = env!("CARGO_PKG_VERSION");
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    KeyValue::new("service.name", AnyValue::string("netmon")),
                    KeyValue::new("service.version", AnyValue::string(version)),
                    KeyValue::new("host.name", AnyValue::string(host)),
                ],
                dropped_attributes_count: 0,
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "netmon".to_owned(),
                    version: version.to_owned(),
                    attributes: Vec::new(),
                    dropped_attributes_count: 0,
                }),
                log_records: records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}
