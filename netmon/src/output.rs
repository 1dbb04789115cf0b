//! Formats transitions, connection lifecycles and loss records as ss-like text or JSON Lines.
//!
//! The JSON Lines schema is documented in docs/json.md; `json_lines_follow_the_documented_schema`
//! below keeps the two in step.

use std::{
    io::{self, Write},
    time::Duration,
};

use netmon_common::{CgroupSource, TcpState};
use serde::Serialize;

use crate::{
    cgroup::{Labels, Unknown},
    clock::{Clock, time_of_day},
    decode::{Task, Transition},
    table::{Closed, Owner},
};

/// Output format of `watch`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Columns like ss and tcpstates.
    #[default]
    Text,
    /// JSON Lines, one object per record: transition, connection, socket, count, loss (schema:
    /// docs/json.md, installed as /usr/share/doc/netmon/json.md).
    Json,
}

/// Kinds of loss a loss record reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    RingFull,
    Recursion,
    /// Owner or reset hints (not transitions) dropped on a full ring: owners and endings of
    /// some connections may be unknown.
    HintsRingFull,
    /// Fires of the tracepoint that the kernel ran no copy of the program for, found by
    /// netmon's own perf counters on the tracepoint (all namespaces, not only the filtered).
    NotRun,
}

/// The name `loss` records carry in JSON (`ring_full`, `recursion`, `hints_ring_full`,
/// `not_run`); the stderr lines use it too, so scripts read one spelling.
impl std::fmt::Display for LossKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RingFull => "ring_full",
            Self::Recursion => "recursion",
            Self::HintsRingFull => "hints_ring_full",
            Self::NotRun => "not_run",
        })
    }
}

impl LossKind {
    fn hint(self) -> &'static str {
        match self {
            Self::RingFull => "ring buffer full; raise --ring-size",
            Self::Recursion => "skipped by the kernel's recursion guard",
            Self::HintsRingFull => "owner/reset hints, ring buffer full; raise --ring-size",
            Self::NotRun => {
                "the kernel ran no copy of the program (counted by perf on the tracepoint; \
                 any namespace)"
            }
        }
    }
}

/// Writes records in one format; `W` is stdout in the CLI and a `Vec<u8>` in tests.
pub struct Printer<W: Write> {
    out: W,
    format: Format,
    clock: Clock,
    header: bool,
    /// Per-event scratch, reused: the hot path allocates nothing.
    line: Vec<u8>,
    local: Vec<u8>,
    peer: Vec<u8>,
    stamp: Stamp,
    /// Text: a last column with the cgroup path (`watch --cgroup`).
    cgroup_column: bool,
}

/// What netmon knows of a record's cgroup: its labels, or why there are none.
pub type CgroupLabels<'a> = Result<&'a Labels, Unknown>;

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: Format, clock: Clock, header: bool) -> Self {
        Self {
            out,
            format,
            clock,
            header,
            line: Vec::with_capacity(512),
            local: Vec::with_capacity(64),
            peer: Vec::with_capacity(64),
            stamp: Stamp::default(),
            cgroup_column: false,
        }
    }

    /// Adds the text column CGROUP (the path, as `ss --cgroup` prints it).
    pub fn with_cgroup_column(mut self, on: bool) -> Self {
        self.cgroup_column = on;
        self
    }

    /// Whether records need their cgroup labels (JSON always has them).
    pub fn shows_cgroup(&self) -> bool {
        self.cgroup_column || self.format == Format::Json
    }

    /// One transition; `owner` is who owns the socket, when known (text shows it, falling
    /// back to the task on the CPU; JSON gives both).
    pub fn transition(
        &mut self,
        t: &Transition,
        owner: Option<&Owner>,
        prev_state_ns: Option<u64>,
        cgroup: CgroupLabels,
    ) -> io::Result<()> {
        match self.format {
            Format::Text => self.text(t, owner, prev_state_ns, cgroup),
            Format::Json => self.json(t, owner, prev_state_ns, cgroup),
        }
    }

    /// One record for a connection that ended (`watch --lifecycle`).
    pub fn lifecycle(&mut self, c: &Closed, cgroup: CgroupLabels) -> io::Result<()> {
        match self.format {
            Format::Json => {
                serde_json::to_writer(
                    &mut self.out,
                    &JsonClosed::new(c, &self.clock, "lifecycle", cgroup),
                )?;
                self.out.write_all(b"\n")
            }
            Format::Text => {
                if std::mem::take(&mut self.header) {
                    let column = if self.cgroup_column { " CGROUP" } else { "" };
                    writeln!(
                        self.out,
                        "{:<15} {:>7} {:<15} {:>22} {:<22} {:<15} {:>9} {:>10} {:>10} STATES{column}",
                        "TIME(UTC)",
                        "PID",
                        "COMM",
                        "LOCAL",
                        "PEER",
                        "END",
                        "LIFESPAN",
                        "TX_BYTES",
                        "RX_BYTES"
                    )?;
                }
                let time = time_of_day(&self.clock, c.closed_ns);
                let (pid, comm) = c.owner.as_ref().map_or((0, "?".into()), |o| {
                    (o.task.pid, crate::escape::escaped(o.task.comm(), None))
                });
                let lifespan = c.lifespan_ns().map_or_else(|| "-".into(), duration);
                write!(
                    self.out,
                    "{time:<15} {pid:>7} {comm:<15} {:>22} {:<22} {:<15} {lifespan:>9} {:>10} {:>10} {}",
                    c.local,
                    c.remote,
                    c.end.name(),
                    c.bytes_acked,
                    c.bytes_received,
                    states_text(c),
                )?;
                if self.cgroup_column {
                    self.line.clear();
                    self.line.push(b' ');
                    push_cgroup_text(&mut self.line, c.cgroup_id, cgroup);
                    self.out.write_all(&self.line)?;
                }
                self.out.write_all(b"\n")
            }
        }
    }

    /// A loss record; `seen_ns` is when netmon noticed it (CLOCK_MONOTONIC).
    pub fn loss(&mut self, kind: LossKind, count: u64, total: u64, seen_ns: u64) -> io::Result<()> {
        match self.format {
            Format::Text => writeln!(
                self.out,
                "-- lost {count} transitions ({}), {total} since start",
                kind.hint()
            ),
            Format::Json => {
                let rec = JsonLoss {
                    r#type: "loss",
                    time: humantime::format_rfc3339_micros(self.clock.wall(seen_ns)).to_string(),
                    mono_ns: seen_ns,
                    kind,
                    count,
                    total,
                };
                serde_json::to_writer(&mut self.out, &rec)?;
                self.out.write_all(b"\n")
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    // The per-transition printers are written by hand, without fmt or serde: at storm rates
    // (~450k transitions/s here) they are most of the reader's CPU, which the traced workload
    // shares.
    fn text(
        &mut self,
        t: &Transition,
        owner: Option<&Owner>,
        prev_state_ns: Option<u64>,
        cgroup: CgroupLabels,
    ) -> io::Result<()> {
        if std::mem::take(&mut self.header) {
            writeln!(
                self.out,
                "{:<15} {:>7} {:<15} {:>22} {:<22} {:<26} {:>10}{}",
                "TIME(UTC)",
                "PID",
                "COMM",
                "LOCAL",
                "PEER",
                "TRANSITION",
                "PREV_MS",
                if self.cgroup_column { " CGROUP" } else { "" }
            )?;
        }
        let who = owner.map_or(&t.task, |o| &o.task);
        let line = &mut self.line;
        line.clear();
        self.stamp.push(line, &self.clock, t.ts_ns, false);
        line.push(b' ');
        pad_left(line, itoa::Buffer::new().format(who.pid).as_bytes(), 7);
        line.push(b' ');
        // A comm is chosen by whoever runs the process: never raw on a terminal.
        let start = line.len();
        crate::escape::push_escaped(line, who.comm(), None);
        let used = line.len() - start;
        line.resize(line.len() + 15usize.saturating_sub(used), b' ');
        line.push(b' ');
        self.local.clear();
        push_sockaddr(&mut self.local, &t.local);
        pad_left(line, &self.local, 22);
        line.push(b' ');
        self.peer.clear();
        push_sockaddr(&mut self.peer, &t.remote);
        pad_right(line, &self.peer, 22);
        line.push(b' ');
        let start = line.len();
        line.extend_from_slice(state_name(t.old).as_bytes());
        line.extend_from_slice(b" -> ");
        line.extend_from_slice(state_name(t.new).as_bytes());
        let used = line.len() - start;
        line.resize(line.len() + 26usize.saturating_sub(used), b' ');
        line.push(b' ');
        match prev_state_ns {
            Some(ns) => {
                // Milliseconds with 3 decimals (truncated): the same zero-padding trick.
                self.local.clear();
                push_u64(&mut self.local, ns / 1_000_000);
                self.local.push(b'.');
                let mut frac = itoa::Buffer::new();
                let frac = frac.format((ns / 1_000) % 1_000 + 1_000);
                self.local.extend_from_slice(&frac.as_bytes()[1..]);
                pad_left(line, &self.local, 10);
            }
            None => pad_left(line, b"-", 10),
        }
        if self.cgroup_column {
            line.push(b' ');
            push_cgroup_text(line, t.cgroup_id, cgroup);
        }
        line.push(b'\n');
        self.out.write_all(line)
    }

    fn json(
        &mut self,
        t: &Transition,
        owner: Option<&Owner>,
        prev_state_ns: Option<u64>,
        cgroup: CgroupLabels,
    ) -> io::Result<()> {
        let line = &mut self.line;
        line.clear();
        line.extend_from_slice(br#"{"type":"transition","time":""#);
        self.stamp.push(line, &self.clock, t.ts_ns, true);
        line.extend_from_slice(br#"","mono_ns":"#);
        push_u64(line, t.ts_ns);
        line.extend_from_slice(br#","cookie":"#);
        push_u64(line, t.cookie);
        line.extend_from_slice(br#","netns":"#);
        push_u64(line, t.netns.into());
        line.extend_from_slice(if t.local.is_ipv4() {
            br#","family":"inet","local":""#
        } else {
            br#","family":"inet6","local":""#
        });
        push_sockaddr(line, &t.local);
        line.extend_from_slice(br#"","peer":""#);
        push_sockaddr(line, &t.remote);
        line.extend_from_slice(br#"","local_addr":""#);
        push_ip(line, &t.local.ip());
        line.extend_from_slice(br#"","local_port":"#);
        push_u64(line, t.local.port().into());
        line.extend_from_slice(br#","peer_addr":""#);
        push_ip(line, &t.remote.ip());
        line.extend_from_slice(br#"","peer_port":"#);
        push_u64(line, t.remote.port().into());
        line.extend_from_slice(br#","old_state":""#);
        line.extend_from_slice(state_name(t.old).as_bytes());
        line.extend_from_slice(br#"","new_state":""#);
        line.extend_from_slice(state_name(t.new).as_bytes());
        line.extend_from_slice(br#"","prev_state_ns":"#);
        match prev_state_ns {
            Some(ns) => push_u64(line, ns),
            None => line.extend_from_slice(b"null"),
        }
        line.extend_from_slice(br#","task":"#);
        push_task(line, &t.task);
        line.extend_from_slice(br#","owner":"#);
        match owner {
            Some(o) => push_task(line, &o.task),
            None => line.extend_from_slice(b"null"),
        }
        // The cgroup fields, serialised as an object whose braces become this record's.
        let start = line.len();
        let _ = serde_json::to_writer(
            &mut *line,
            &JsonCgroup::new(t.cgroup_id, t.cgroup_source, cgroup),
        );
        if let Some(open) = line.get_mut(start) {
            *open = b',';
        }
        line.extend_from_slice(b"\n");
        self.out.write_all(line)
    }
}

/// The text column: the path ss prints for the id, `-` without one.
fn push_cgroup_text(line: &mut Vec<u8>, id: u64, cgroup: CgroupLabels) {
    match cgroup {
        // A cgroup's name is chosen by whoever may create it: never raw on a terminal.
        Ok(l) => crate::escape::push_escaped(line, &l.path, None),
        Err(Unknown::NotFound) => {
            let _ = write!(line, "unreachable:{id:x}");
        }
        Err(_) => line.push(b'-'),
    }
}

/// A record's cgroup in JSON: the id and its source, the labels, or why they are unknown.
#[derive(Serialize)]
pub struct JsonCgroup<'a> {
    cgroup_id: Option<u64>,
    cgroup_source: Option<&'static str>,
    cgroup: Option<&'a str>,
    unit: Option<&'a str>,
    container_id: Option<&'a str>,
    pod_uid: Option<&'a str>,
    cgroup_unknown: Option<&'static str>,
}

impl<'a> JsonCgroup<'a> {
    pub fn new(id: u64, source: CgroupSource, labels: CgroupLabels<'a>) -> Self {
        let l = labels.ok();
        Self {
            cgroup_id: (id != 0).then_some(id),
            cgroup_source: (id != 0).then_some(source.name()),
            cgroup: l.map(|l| l.path.as_str()),
            unit: l.and_then(|l| l.unit.as_deref()),
            container_id: l.and_then(|l| l.container_id.as_deref()),
            pod_uid: l.and_then(|l| l.pod_uid.as_deref()),
            cgroup_unknown: labels.err().map(Unknown::reason),
        }
    }
}

/// Timestamps for the hot path: the date and time of day are formatted once a second.
#[derive(Default)]
struct Stamp {
    second: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS` of `second`.
    date_time: String,
}

impl Stamp {
    /// `HH:MM:SS.uuuuuu`, or with `full` `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` (RFC 3339, UTC).
    fn push(&mut self, line: &mut Vec<u8>, clock: &Clock, mono_ns: u64, full: bool) {
        let since_epoch = clock
            .wall(mono_ns)
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let second = since_epoch.as_secs();
        if self.second != Some(second) {
            let at = std::time::UNIX_EPOCH + Duration::from_secs(second);
            self.date_time = humantime::format_rfc3339_seconds(at).to_string();
            self.date_time.truncate(19);
            self.second = Some(second);
        }
        let date_time = self.date_time.as_bytes();
        line.extend_from_slice(if full {
            date_time
        } else {
            date_time.get(11..).unwrap_or(date_time)
        });
        let micros = since_epoch.subsec_micros();
        line.push(b'.');
        // Zero-padded to 6 digits: format 1uuuuuu and drop the 1.
        let mut digits = itoa::Buffer::new();
        line.extend_from_slice(&digits.format(micros + 1_000_000).as_bytes()[1..]);
        if full {
            line.push(b'Z');
        }
    }
}

fn push_u64(line: &mut Vec<u8>, v: u64) {
    line.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn push_ip(line: &mut Vec<u8>, ip: &std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    line.push(b'.');
                }
                push_u64(line, u64::from(*octet));
            }
        }
        // Rarely on a hot path; the standard formatting applies RFC 5952 compression.
        std::net::IpAddr::V6(v6) => {
            let _ = write!(line, "{v6}");
        }
    }
}

/// `a.b.c.d:port` or `[v6]:port`, as SocketAddr's Display writes them.
fn push_sockaddr(line: &mut Vec<u8>, a: &std::net::SocketAddr) {
    if a.is_ipv6() {
        line.push(b'[');
        push_ip(line, &a.ip());
        line.push(b']');
    } else {
        push_ip(line, &a.ip());
    }
    line.push(b':');
    push_u64(line, a.port().into());
}

fn push_task(line: &mut Vec<u8>, t: &Task) {
    line.extend_from_slice(br#"{"pid":"#);
    push_u64(line, t.pid.into());
    line.extend_from_slice(br#","tid":"#);
    push_u64(line, t.tid.into());
    line.extend_from_slice(br#","uid":"#);
    push_u64(line, t.uid.into());
    line.extend_from_slice(br#","comm":"#);
    // A comm is whatever a process set: let serde_json escape it.
    let _ = serde_json::to_writer(&mut *line, t.comm());
    line.push(b'}');
}

fn pad_left(line: &mut Vec<u8>, field: &[u8], width: usize) {
    line.resize(line.len() + width.saturating_sub(field.len()), b' ');
    line.extend_from_slice(field);
}

fn pad_right(line: &mut Vec<u8>, field: &[u8], width: usize) {
    line.extend_from_slice(field);
    line.resize(line.len() + width.saturating_sub(field.len()), b' ');
}

/// The state's ss name; an unknown value shows its number.
pub fn state_name(s: TcpState) -> std::borrow::Cow<'static, str> {
    match s {
        TcpState::Unknown(n) => format!("UNKNOWN({n})").into(),
        s => s.name().into(),
    }
}

struct JsonState(TcpState);

impl Serialize for JsonState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&state_name(self.0))
    }
}

/// A connection that ended: `watch --lifecycle` and `snapshot --closed` records.
#[derive(Serialize)]
pub struct JsonClosed<'a> {
    r#type: &'static str,
    #[serde(serialize_with = "display")]
    closed: humantime::Rfc3339Timestamp,
    closed_mono_ns: u64,
    lifespan_ns: Option<u64>,
    #[serde(serialize_with = "display")]
    local: std::net::SocketAddr,
    #[serde(serialize_with = "display")]
    peer: std::net::SocketAddr,
    local_port: u16,
    peer_port: u16,
    netns: u32,
    cookie: u64,
    owner: Option<JsonOwner<'a>>,
    end: &'static str,
    last_state: JsonState,
    states: Vec<JsonStep>,
    bytes_acked: u64,
    bytes_received: u64,
    #[serde(flatten)]
    cgroup: JsonCgroup<'a>,
}

#[derive(Serialize)]
pub struct JsonOwner<'a> {
    pid: u32,
    uid: u32,
    comm: &'a str,
    fd: Option<u32>,
}

impl<'a> JsonOwner<'a> {
    pub fn new(o: &'a Owner) -> Self {
        Self {
            pid: o.task.pid,
            uid: o.task.uid,
            comm: o.task.comm(),
            fd: o.fd,
        }
    }
}

#[derive(Serialize)]
struct JsonStep {
    state: JsonState,
    ns: u64,
}

impl<'a> JsonClosed<'a> {
    pub fn new(
        c: &'a Closed,
        clock: &Clock,
        r#type: &'static str,
        cgroup: CgroupLabels<'a>,
    ) -> Self {
        Self {
            r#type,
            closed: humantime::format_rfc3339_micros(clock.wall(c.closed_ns)),
            closed_mono_ns: c.closed_ns,
            lifespan_ns: c.lifespan_ns(),
            local: c.local,
            peer: c.remote,
            local_port: c.local.port(),
            peer_port: c.remote.port(),
            netns: c.netns,
            cookie: c.cookie,
            owner: c.owner.as_ref().map(JsonOwner::new),
            end: c.end.name(),
            last_state: JsonState(c.last),
            states: c
                .path
                .durations(c.closed_ns)
                .map(|(s, ns)| JsonStep {
                    state: JsonState(s),
                    ns,
                })
                .collect(),
            bytes_acked: c.bytes_acked,
            bytes_received: c.bytes_received,
            cgroup: JsonCgroup::new(c.cgroup_id, c.cgroup_source, cgroup),
        }
    }
}

/// `SYN-SENT(40us) ESTAB(1.2ms) ...`: the states a closed connection passed, and how long.
pub fn states_text(c: &Closed) -> String {
    let mut out = String::new();
    for (s, ns) in c.path.durations(c.closed_ns) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&format!("{}({})", state_name(s), duration(ns)));
    }
    if out.is_empty() { "-".into() } else { out }
}

/// `850us`, `12.3ms`, `4.52s`, `3m07s`, `2h05m`.
pub fn duration(ns: u64) -> String {
    let us = ns / 1_000;
    match us {
        0..1_000 => format!("{us}us"),
        1_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        1_000_000..60_000_000 => format!("{:.2}s", us as f64 / 1e6),
        60_000_000..3_600_000_000 => format!("{}m{:02}s", us / 60_000_000, us / 1_000_000 % 60),
        _ => format!("{}h{:02}m", us / 3_600_000_000, us / 60_000_000 % 60),
    }
}

#[derive(Serialize)]
struct JsonLoss {
    r#type: &'static str,
    time: String,
    mono_ns: u64,
    kind: LossKind,
    count: u64,
    total: u64,
}

/// Serializes a field with its `Display` text (addresses as `"addr:port"`).
pub fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use netmon_common::{AF_INET, AF_INET6};

    use super::*;
    use crate::decode::{from_event, tests::event};

    fn clock() -> Clock {
        // 2026-11-30T00:00:00Z at monotonic zero.
        Clock::fixed(UNIX_EPOCH + Duration::from_secs(1_795_996_800))
    }

    fn render(format: Format, f: impl FnOnce(&mut Printer<Vec<u8>>)) -> String {
        let mut p = Printer::new(Vec::new(), format, clock(), true);
        f(&mut p);
        String::from_utf8(p.into_inner()).unwrap()
    }

    #[test]
    fn loss_kinds_display_their_json_names() {
        for k in [
            LossKind::RingFull,
            LossKind::Recursion,
            LossKind::HintsRingFull,
            LossKind::NotRun,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.to_string());
        }
    }

    #[test]
    fn text_lines_look_like_tcpstates_with_ss_state_names() {
        let v4 = from_event(&event(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 1], 2, 1)).unwrap();
        let lo6 = std::net::Ipv6Addr::LOCALHOST.octets();
        let v6 = from_event(&event(AF_INET6, &lo6, &lo6, 1, 200)).unwrap();
        let out = render(Format::Text, |p| {
            p.transition(&v4, None, Some(52_000), Err(Unknown::NoId))
                .unwrap();
            p.transition(&v6, None, None, Err(Unknown::NoId)).unwrap();
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("TIME(UTC)"), "{out}");
        assert!(
            lines[1].starts_with("00:00:00.000001       7 curl"),
            "{out}"
        );
        assert!(lines[1].contains("127.0.0.1:41000 127.0.0.1:8080"), "{out}");
        assert!(lines[1].contains("SYN-SENT -> ESTAB"), "{out}");
        assert!(lines[1].ends_with("0.052"), "{out}");
        assert!(lines[2].contains("[::1]:41000 [::1]:8080"), "{out}");
        assert!(lines[2].contains("ESTAB -> UNKNOWN(200)"), "{out}");
        assert!(lines[2].ends_with('-'), "{out}");
    }

    #[test]
    fn json_lines_follow_the_documented_schema() {
        let mut ev = event(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 2], 10, 3);
        ev.cgroup_id = 77;
        ev.cgroup_source = CgroupSource::Socket as u8;
        let t = from_event(&ev).unwrap();
        let labels = Labels::parse("/system.slice/a\\x2db.service");
        let out = render(Format::Json, |p| {
            p.transition(&t, None, None, Ok(&labels)).unwrap();
            p.loss(LossKind::RingFull, 5, 9, 1_500_000).unwrap();
            p.transition(&t, None, None, Err(Unknown::NotFound))
                .unwrap();
        });
        let recs: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let r = &recs[0];
        assert_eq!(r["type"], "transition");
        assert_eq!(r["time"], "2026-11-30T00:00:00.000001Z");
        assert_eq!(r["mono_ns"], 1000);
        assert_eq!(r["family"], "inet");
        assert_eq!(r["local"], "127.0.0.1:41000");
        assert_eq!(r["peer_addr"], "127.0.0.2");
        assert_eq!(r["peer_port"], 8080);
        assert_eq!(r["old_state"], "LISTEN");
        assert_eq!(r["new_state"], "SYN-RECV");
        assert_eq!(r["prev_state_ns"], serde_json::Value::Null);
        assert_eq!(r["task"]["comm"], "curl");
        assert_eq!(r["task"]["pid"], 7);
        assert_eq!(r["cookie"], 42);
        assert_eq!(r["cgroup_id"], 77);
        assert_eq!(r["cgroup_source"], "socket");
        assert_eq!(r["cgroup"], "/system.slice/a\\x2db.service");
        assert_eq!(r["unit"], "a-b.service");
        assert_eq!(r["container_id"], serde_json::Value::Null);
        assert_eq!(r["cgroup_unknown"], serde_json::Value::Null);
        assert_eq!(
            recs[1],
            serde_json::json!({"type":"loss","time":"2026-11-30T00:00:00.001500Z",
                "mono_ns":1_500_000,"kind":"ring_full","count":5,"total":9})
        );
        assert_eq!(recs[2]["cgroup"], serde_json::Value::Null);
        assert_eq!(recs[2]["cgroup_id"], 77);
        assert_eq!(
            recs[2]["cgroup_unknown"],
            "not below the cgroup2 mount (removed, or another cgroup namespace)"
        );
        // Every field docs/json.md lists for a transition is there, and nothing else.
        let doc = include_str!("../../docs/json.md");
        let section = doc
            .split("### `\"type\": \"transition\"`")
            .nth(1)
            .and_then(|s| s.split("###").next())
            .unwrap();
        for key in r.as_object().unwrap().keys().filter(|k| *k != "type") {
            assert!(section.contains(&format!("`{key}`")), "{key} undocumented");
        }
    }

    #[test]
    fn the_cgroup_column_prints_the_path_as_ss() {
        let mut ev = event(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 1], 2, 1);
        ev.cgroup_id = 0x2a;
        let t = from_event(&ev).unwrap();
        let labels = Labels::parse("/a.slice/b.service");
        let mut p = Printer::new(Vec::new(), Format::Text, clock(), true).with_cgroup_column(true);
        p.transition(&t, None, None, Ok(&labels)).unwrap();
        p.transition(&t, None, None, Err(Unknown::NotFound))
            .unwrap();
        let out = String::from_utf8(p.into_inner()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].ends_with("PREV_MS CGROUP"), "{out}");
        assert!(lines[1].ends_with(" - /a.slice/b.service"), "{out}");
        assert!(lines[2].ends_with(" unreachable:2a"), "{out}");
    }

    #[test]
    fn text_loss_record_says_what_to_do() {
        let out = render(Format::Text, |p| {
            p.loss(LossKind::RingFull, 3, 3, 0).unwrap()
        });
        assert_eq!(
            out,
            "-- lost 3 transitions (ring buffer full; raise --ring-size), 3 since start\n"
        );
    }
}
