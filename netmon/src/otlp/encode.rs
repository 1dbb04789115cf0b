//! The OTLP/HTTP request body written by hand for netmon's one record shape: each ended
//! connection is encoded straight into one reused buffer, with no message structs and no
//! allocation per record. [`super::record`] builds the same records as prost messages; the
//! tests hold the two byte-for-byte equal.
//!
//! Why by hand: building ~25 `KeyValue`/`AnyValue` structs with their `String`s per record and
//! letting prost size and encode them took most of the exporter's time under a connection
//! storm (malloc/free and `encoded_len` led the profile; README, "OTLP").

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
};

use crate::{
    cgroup::Labels,
    metrics::labels::{Direction, FAMILIES, family_index},
    output::state_name,
    table::{Closed, End},
};

use netmon_common::TcpState;

use super::record::{EVENT_NAME, SEVERITY_INFO, SEVERITY_WARN};

// Field keys (field number << 3 | wire type) of the messages written here.
/// `ExportLogsServiceRequest.resource_logs`, `ResourceLogs.resource`, `Resource.attributes`,
/// `ScopeLogs.scope`, `InstrumentationScope.name`, `KeyValue.key`, `AnyValue.string_value`,
/// `ArrayValue.values`: field 1, length-delimited.
const F1_LEN: u8 = 1 << 3 | 2;
/// `ResourceLogs.scope_logs`, `ScopeLogs.log_records`, `InstrumentationScope.version`,
/// `KeyValue.value`: field 2, length-delimited.
const F2_LEN: u8 = 2 << 3 | 2;
const ANY_INT: u8 = 3 << 3;
const ANY_ARRAY: u8 = 5 << 3 | 2;
const LOG_TIME: u8 = 1 << 3 | 1;
const LOG_SEVERITY_NUMBER: u8 = 2 << 3;
const LOG_SEVERITY_TEXT: u8 = 3 << 3 | 2;
const LOG_ATTRIBUTE: u8 = 6 << 3 | 2;
const LOG_OBSERVED_TIME: u8 = 11 << 3 | 1;
const LOG_EVENT_NAME: u8 = 12 << 3 | 2;

/// Bytes a record's length is given before its fields are written: records are 300-2,000
/// bytes, whose length takes two varint bytes; any other length moves the record once.
const RECORD_LEN_GUESS: usize = 2;

/// Bytes a record takes at most besides its variable texts (its labels, addresses, comm) and its path: 31 attributes of at most 40 bytes of key and 34 of framing, 10-byte
/// ints, times and severity, with room to spare.
const RECORD_FIXED_MAX: usize = 3 * 1024;
/// Bytes a path entry takes at most in the two arrays (a state name is at most 12 bytes).
const PATH_ENTRY_MAX: usize = 64;

/// Writes into a slice known to be large enough: unlike `Vec::push`, whose length lives in
/// memory that every byte written might alias, the position stays in a register.
struct W<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl W<'_> {
    #[inline(always)]
    fn push(&mut self, b: u8) {
        self.out[self.pos] = b;
        self.pos += 1;
    }

    #[inline(always)]
    fn extend_from_slice(&mut self, b: &[u8]) {
        self.out[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }

    /// The same for the short texts of a record (addresses, names): up to 16 bytes as two
    /// overlapping fixed-size moves instead of a call to `memmove`, which the profile showed
    /// once per attribute value.
    #[inline(always)]
    fn extend_short(&mut self, b: &[u8]) {
        let n = b.len();
        let at = self.pos;
        match n {
            0..=3 => {
                for (i, &byte) in b.iter().enumerate() {
                    self.out[at + i] = byte;
                }
            }
            4..=7 => {
                self.out[at..at + 4].copy_from_slice(&b[..4]);
                self.out[at + n - 4..at + n].copy_from_slice(&b[n - 4..]);
            }
            8..=16 => {
                self.out[at..at + 8].copy_from_slice(&b[..8]);
                self.out[at + n - 8..at + n].copy_from_slice(&b[n - 8..]);
            }
            _ => self.out[at..at + n].copy_from_slice(b),
        }
        self.pos = at + n;
    }
}

#[inline(always)]
fn varint_len(v: u64) -> usize {
    // 7 bits a byte; 0 still takes one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline(always)]
fn put_varint(buf: &mut W, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// A length-delimited field of `len` bytes starts: its key and length.
#[inline(always)]
fn put_len(buf: &mut W, key: u8, len: usize) {
    buf.push(key);
    put_varint(buf, len as u64);
}

/// Bytes of a length-delimited field holding `len` bytes (key included).
#[inline(always)]
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// OTLP's int values are int64: larger counts are clamped, as `record::int` does.
#[inline(always)]
fn clamp(v: u64) -> u64 {
    v.min(i64::MAX as u64)
}

/// `KeyValue.key` as encoded (key, length, the name), built at compile time: a fixed-size
/// copy per attribute instead of three writes.
const fn key_field<const N: usize>(key: &str) -> [u8; N] {
    let name = key.as_bytes();
    assert!(name.len() < 128 && N == name.len() + 2);
    let mut out = [0; N];
    put_key(&mut out, 0, name);
    out
}

/// Writes `KeyValue.key` (its tag, one-byte length and bytes) into `out` at `at`.
const fn put_key(out: &mut [u8], at: usize, name: &[u8]) {
    out[at] = F1_LEN;
    out[at + 1] = name.len() as u8;
    let mut i = 0;
    while i < name.len() {
        out[at + 2 + i] = name[i];
        i += 1;
    }
}

/// The encoded key of an attribute name, as a `&'static [u8; N]`.
macro_rules! key {
    ($name:literal) => {{
        const KEY: [u8; $name.len() + 2] = key_field($name);
        &KEY
    }};
}

/// An int attribute's bytes before its value, built at compile time: `LogRecord.attributes`'
/// key and length, the `KeyValue.key` field, `KeyValue.value`'s key and length, and
/// `AnyValue.int_value`'s key. The two lengths depend only on the value's varint length and
/// are patched in; one fixed-size copy instead of six writes.
const fn int_prefix<const N: usize>(key: &str) -> [u8; N] {
    let name = key.as_bytes();
    // Both lengths stay below 128 (one byte) for any 10-byte value.
    assert!(N == name.len() + 7 && name.len() + 5 + 10 < 128);
    let mut out = key_head::<N>(name);
    out[N - 3] = F2_LEN;
    out[N - 1] = ANY_INT;
    out
}

/// The same for a string attribute: ... `KeyValue.value`'s key and length, then
/// `AnyValue.string_value`'s key and length, the three lengths patched in.
const fn str_prefix<const N: usize>(key: &str) -> [u8; N] {
    let name = key.as_bytes();
    assert!(N == name.len() + 8 && name.len() < 100);
    let mut out = key_head::<N>(name);
    out[N - 4] = F2_LEN;
    out[N - 2] = F1_LEN;
    out
}

/// What both prefixes start with: the attribute's tag (its length patched in later), then
/// `KeyValue.key` with its length and bytes.
const fn key_head<const N: usize>(name: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out[0] = LOG_ATTRIBUTE;
    put_key(&mut out, 2, name);
    out
}

/// The encoded prefix of an int attribute, as a `&'static [u8; N]`.
macro_rules! int_key {
    ($name:literal) => {{
        const PREFIX: [u8; $name.len() + 7] = int_prefix($name);
        &PREFIX
    }};
}

/// The encoded prefix of a string attribute, as a `&'static [u8; N]`.
macro_rules! str_key {
    ($name:literal) => {{
        const PREFIX: [u8; $name.len() + 8] = str_prefix($name);
        &PREFIX
    }};
}

/// An int attribute from its [`int_prefix`].
#[inline(always)]
fn put_int<const N: usize>(buf: &mut W, prefix: &[u8; N], value: u64) {
    let value = clamp(value);
    let n = varint_len(value);
    let at = buf.pos;
    buf.extend_from_slice(prefix);
    // KeyValue: the key field (N - 5 bytes) and the value field (3 + n); AnyValue: 1 + n.
    buf.out[at + 1] = (N - 2 + n) as u8;
    buf.out[at + N - 2] = (1 + n) as u8;
    put_varint(buf, value);
}

/// A string attribute whose lengths take more than a byte: `key` is the encoded key field.
#[cold]
#[inline(never)]
fn put_long_str(buf: &mut W, key: &[u8], value: &[u8]) {
    let any = field_len(value.len());
    put_len(buf, LOG_ATTRIBUTE, key.len() + field_len(any));
    buf.extend_from_slice(key);
    put_len(buf, F2_LEN, any);
    put_len(buf, F1_LEN, value.len());
    buf.extend_from_slice(value);
}

/// A string attribute from its [`str_prefix`].
#[inline(always)]
fn put_str<const N: usize>(buf: &mut W, prefix: &[u8; N], value: &[u8]) {
    let n = value.len();
    // All three lengths in one byte each; longer texts (labels) take the general path.
    if N - 2 + n >= 128 {
        put_long_str(buf, &prefix[2..N - 4], value);
        return;
    }
    let at = buf.pos;
    buf.extend_from_slice(prefix);
    buf.out[at + 1] = (N - 2 + n) as u8;
    buf.out[at + N - 3] = (2 + n) as u8;
    buf.out[at + N - 1] = n as u8;
    buf.extend_short(value);
}

/// An array attribute whose values take `lens` bytes each as `AnyValue`s, written by `put`.
#[inline(always)]
fn kv_array<const N: usize>(
    buf: &mut W,
    key: &[u8; N],
    lens: impl Iterator<Item = usize>,
    put: impl FnOnce(&mut W),
) {
    let array: usize = lens.map(field_len).sum();
    let any = field_len(array);
    put_len(buf, LOG_ATTRIBUTE, N + field_len(any));
    buf.extend_from_slice(key);
    put_len(buf, F2_LEN, any);
    put_len(buf, ANY_ARRAY, array);
    put(buf);
}

/// Each octet's decimal text (up to 3 bytes) and its length in the last byte: a storm's
/// records keep bringing new addresses, and formatting them octet by octet through `itoa`
/// was ~7 % of the exporter thread's samples.
const OCTETS: [[u8; 4]; 256] = {
    let mut table = [[0; 4]; 256];
    let mut i = 0;
    while i < 256 {
        let (h, t, u) = ((i / 100) as u8, (i / 10 % 10) as u8, (i % 10) as u8);
        table[i] = match i {
            0..=9 => [b'0' + u, 0, 0, 1],
            10..=99 => [b'0' + t, b'0' + u, 0, 2],
            _ => [b'0' + h, b'0' + t, b'0' + u, 3],
        };
        i += 1;
    }
    table
};

#[inline(always)]
fn put_ipv4(out: &mut Vec<u8>, ip: Ipv4Addr) {
    // 3 bytes written per octet whatever its length, the position moved by the length: the
    // last octet starts at 12 at most.
    let mut text = [0u8; 15];
    let mut n = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            text[n] = b'.';
            n += 1;
        }
        let digits = &OCTETS[usize::from(octet)];
        text[n..n + 3].copy_from_slice(&digits[..3]);
        n += usize::from(digits[3]);
    }
    out.extend_from_slice(&text[..n]);
}

fn put_ip(out: &mut Vec<u8>, ip: IpAddr, text: &mut String) {
    match ip {
        IpAddr::V4(ip) => put_ipv4(out, ip),
        IpAddr::V6(ip) => {
            text.clear();
            write!(text, "{ip}").ok();
            out.extend_from_slice(text.as_bytes());
        }
    }
}

/// Texts of the last few addresses seen, each formatted once: the records of a host repeat a
/// few addresses, and formatting them led what was left of the encoding's profile. Four,
/// not one per end: the two records of a loopback connection swap the same two addresses
/// between local and peer, and a storm brings a new peer address with each connection, so
/// one text per end was formatted twice a record and four are formatted once a connection.
#[derive(Debug, Default)]
struct IpTexts {
    entries: [(Option<IpAddr>, Vec<u8>); 4],
    /// The entry the next new address replaces.
    next: usize,
}

impl IpTexts {
    /// The index of `ip`'s text, formatted into an entry other than `keep` if it is new.
    #[inline(always)]
    fn find(&mut self, ip: IpAddr, keep: usize, scratch: &mut String) -> usize {
        if let Some(i) = self.entries.iter().position(|(of, _)| *of == Some(ip)) {
            return i;
        }
        let mut i = self.next;
        if i == keep {
            i = (i + 1) % self.entries.len();
        }
        self.next = (i + 1) % self.entries.len();
        let (of, text) = &mut self.entries[i];
        text.clear();
        put_ip(text, ip, scratch);
        *of = Some(ip);
        i
    }

    /// The texts of `local` and `peer`.
    fn pair(&mut self, local: IpAddr, peer: IpAddr, scratch: &mut String) -> (&[u8], &[u8]) {
        let l = self.find(local, usize::MAX, scratch);
        let p = self.find(peer, l, scratch);
        (&self.entries[l].1, &self.entries[p].1)
    }
}

/// A run of attributes as encoded for the last `K` it was asked for, written again only when
/// that changes: a storm's records repeat their family, owner, direction, end and path
/// states, and writing those ~10 attributes field by field (a few varint lengths each) was a
/// third of a record's encoding.
#[derive(Debug)]
struct Segment<K> {
    of: Option<K>,
    bytes: Vec<u8>,
}

impl<K> Default for Segment<K> {
    fn default() -> Self {
        Self {
            of: None,
            bytes: Vec::new(),
        }
    }
}

impl<K: PartialEq> Segment<K> {
    /// The attributes for `key`, written by `write` into at most `max` bytes when `key` is
    /// not the last one.
    #[inline(always)]
    fn get(&mut self, key: K, max: usize, write: impl FnOnce(&mut W)) -> &[u8] {
        if self.of.as_ref() != Some(&key) {
            self.bytes.clear();
            self.bytes.resize(max, 0);
            let mut w = W {
                out: &mut self.bytes,
                pos: 0,
            };
            write(&mut w);
            let end = w.pos;
            self.bytes.truncate(end);
            self.of = Some(key);
        }
        &self.bytes
    }
}

/// What `f` writes into a scratch buffer of `max` bytes, for the parts encoded once.
fn encoded(max: usize, f: impl FnOnce(&mut W)) -> Vec<u8> {
    let mut out = vec![0; max];
    let mut w = W {
        out: &mut out,
        pos: 0,
    };
    f(&mut w);
    let end = w.pos;
    out.truncate(end);
    out
}

/// The request being filled: records as they come, the resource and scope around them when
/// it is sent.
#[derive(Debug)]
pub struct Body {
    /// `headroom` bytes for the request's head, then the records as `ScopeLogs.log_records`
    /// fields up to `end`; always initialised past `end`, so that a record is written into
    /// a slice without growing the vector byte by byte.
    buf: Vec<u8>,
    end: usize,
    headroom: usize,
    /// `ResourceLogs.resource` and `ScopeLogs.scope`, encoded once.
    resource: Vec<u8>,
    scope: Vec<u8>,
    records: usize,
    /// The local and peer addresses' texts; reused text for IPv6 formatting.
    ips: IpTexts,
    text: String,
    /// `network.transport` and `network.type`, by family index.
    network: Segment<usize>,
    /// The segments below are kept one for each direction (outbound, inbound, unknown): the
    /// two ends of a loopback connection take turns, with different owners, ends and paths,
    /// and a single segment was written anew for every record of a storm.
    ///
    /// `process.*`, by what they say of the owner (pid, uid, comm as the kernel gave it; not
    /// the thread).
    owner: [Segment<Option<OwnerKey>>; 3],
    /// `netmon.direction`, `netmon.end_reason`, `netmon.last_state`.
    ending: [Segment<(End, TcpState)>; 3],
    /// `netmon.states`, by the path's states (their count first).
    states: [Segment<[u8; PATH_CAP + 1]>; 3],
}

const PATH_CAP: usize = crate::table::Path::CAP;

/// What `process.*` say of an owner: pid, uid and comm as the kernel gave it.
type OwnerKey = (u32, u32, [u8; 16]);

impl Body {
    /// An empty request from this `host`, with room for `records` records of the usual size.
    pub fn new(host: &str, records: usize) -> Self {
        let version = env!("CARGO_PKG_VERSION");
        let attr = |key: &str, value: &str| {
            encoded(64 + key.len() + value.len(), |w| {
                let any = field_len(value.len());
                // `Resource.attributes` is field 1.
                put_len(w, F1_LEN, field_len(key.len()) + field_len(any));
                put_len(w, F1_LEN, key.len());
                w.extend_from_slice(key.as_bytes());
                put_len(w, F2_LEN, any);
                put_len(w, F1_LEN, value.len());
                w.extend_from_slice(value.as_bytes());
            })
        };
        let attrs = [
            attr("service.name", "netmon"),
            attr("service.version", version),
            attr("host.name", host),
        ]
        .concat();
        let resource = encoded(16 + attrs.len(), |w| {
            put_len(w, F1_LEN, attrs.len());
            w.extend_from_slice(&attrs);
        });
        let scope_fields = encoded(64 + version.len(), |w| {
            put_len(w, F1_LEN, "netmon".len());
            w.extend_from_slice(b"netmon");
            put_len(w, F2_LEN, version.len());
            w.extend_from_slice(version.as_bytes());
        });
        let scope = encoded(16 + scope_fields.len(), |w| {
            put_len(w, F1_LEN, scope_fields.len());
            w.extend_from_slice(&scope_fields);
        });
        // The head: request -> resource_logs -> (resource, scope_logs -> (scope, records)),
        // two lengths of at most 10 bytes each.
        let headroom = 2 * (1 + 10) + resource.len() + scope.len();
        Self {
            buf: vec![0; headroom + records * 1024],
            end: headroom,
            headroom,
            resource,
            scope,
            records: 0,
            ips: IpTexts::default(),
            text: String::with_capacity(64),
            network: Segment::default(),
            owner: Default::default(),
            ending: Default::default(),
            states: Default::default(),
        }
    }

    pub fn records(&self) -> usize {
        self.records
    }

    /// Empties it for the next request (keeping its memory).
    pub fn clear(&mut self) {
        self.end = self.headroom;
        self.records = 0;
    }

    /// Appends the log record of an ended connection; `time_ns` is when it ended and
    /// `observed_ns` when netmon handled it, both since the Unix epoch.
    pub fn push(
        &mut self,
        c: &Closed,
        direction: Direction,
        labels: Option<&Labels>,
        time_ns: u64,
        observed_ns: u64,
    ) {
        let (local_ip, peer_ip) = self.ips.pair(c.local.ip(), c.remote.ip(), &mut self.text);
        let slot = match direction {
            Direction::Outbound => 0,
            Direction::Inbound => 1,
            Direction::Unknown => 2,
        };

        // The path once: its iterator works each entry's time out again, and was walked
        // five times a record.
        let mut steps = [(TcpState::Unknown(0), 0u64); PATH_CAP];
        let mut n_steps = 0;
        for step in c.path.durations(c.closed_ns).take(PATH_CAP) {
            steps[n_steps] = step;
            n_steps += 1;
        }
        let steps = &steps[..n_steps];

        let labels_len: usize = labels.map_or(0, |l| {
            [&l.container_id, &l.pod_uid, &l.unit]
                .iter()
                .map(|v| v.as_ref().map_or(0, String::len))
                .sum()
        });
        let max = RECORD_FIXED_MAX
            + labels_len
            + 2 * (local_ip.len() + peer_ip.len())
            + PATH_ENTRY_MAX * steps.len();
        if self.buf.len() < self.end + max {
            self.buf.resize((self.end + max).max(2 * self.buf.len()), 0);
        }
        let mut w = W {
            out: &mut self.buf,
            pos: self.end,
        };
        let buf = &mut w;
        buf.push(F2_LEN);
        let len_at = buf.pos;
        buf.extend_from_slice(&[0; RECORD_LEN_GUESS]);
        let start = buf.pos;

        // Fields in field-number order, zero values left out: as prost writes them.
        if time_ns != 0 {
            buf.push(LOG_TIME);
            buf.extend_from_slice(&time_ns.to_le_bytes());
        }
        let (severity, severity_text) = match c.end {
            End::Normal => (SEVERITY_INFO, "INFO"),
            _ => (SEVERITY_WARN, "WARN"),
        };
        buf.push(LOG_SEVERITY_NUMBER);
        put_varint(buf, severity as u64);
        put_len(buf, LOG_SEVERITY_TEXT, severity_text.len());
        buf.extend_from_slice(severity_text.as_bytes());
        // No body: events carry their details in attributes (semantic conventions, "Events
        // SHOULD NOT use body"); a text line of the same addresses was ~9 % of a record.

        let family = family_index(&c.local);
        buf.extend_from_slice(self.network.get(family, 128, |buf| {
            put_str(buf, str_key!("network.transport"), b"tcp");
            put_str(buf, str_key!("network.type"), FAMILIES[family].as_bytes());
        }));
        let local_port = u64::from(c.local.port());
        let peer_port = u64::from(c.remote.port());
        // source = the side that connected, destination = the side that accepted. With them
        // and `netmon.direction`, `network.local.*`/`network.peer.*` would say the same
        // addresses again (~15 % of a record): they are written only when the direction is
        // unknown, as the record's only addresses.
        let ends = match direction {
            Direction::Outbound => Some(((local_ip, local_port), (peer_ip, peer_port))),
            Direction::Inbound => Some(((peer_ip, peer_port), (local_ip, local_port))),
            Direction::Unknown => None,
        };
        if let Some(((s_ip, s_port), (d_ip, d_port))) = ends {
            put_str(buf, str_key!("source.address"), s_ip);
            put_int(buf, int_key!("source.port"), s_port);
            put_str(buf, str_key!("destination.address"), d_ip);
            put_int(buf, int_key!("destination.port"), d_port);
        } else {
            put_str(buf, str_key!("network.local.address"), local_ip);
            put_int(buf, int_key!("network.local.port"), local_port);
            put_str(buf, str_key!("network.peer.address"), peer_ip);
            put_int(buf, int_key!("network.peer.port"), peer_port);
        }
        let owner = c
            .owner
            .map(|o| (o.task.pid, o.task.uid, *o.task.comm_bytes()));
        buf.extend_from_slice(self.owner[slot].get(owner, 256, |buf| {
            if let Some(o) = &c.owner {
                put_int(buf, int_key!("process.pid"), u64::from(o.task.pid));
                put_str(
                    buf,
                    str_key!("process.executable.name"),
                    o.task.comm().as_bytes(),
                );
                put_int(buf, int_key!("process.user.id"), u64::from(o.task.uid));
            }
        }));
        if let Some(l) = labels {
            if let Some(id) = &l.container_id {
                put_str(buf, str_key!("container.id"), id.as_bytes());
            }
            if let Some(uid) = &l.pod_uid {
                put_str(buf, str_key!("k8s.pod.uid"), uid.as_bytes());
            }
            if let Some(unit) = &l.unit {
                put_str(buf, str_key!("netmon.systemd.unit"), unit.as_bytes());
            }
        }
        buf.extend_from_slice(self.ending[slot].get((c.end, c.last), 256, |buf| {
            put_str(
                buf,
                str_key!("netmon.direction"),
                direction.word().as_bytes(),
            );
            put_str(buf, str_key!("netmon.end_reason"), c.end.name().as_bytes());
            put_str(
                buf,
                str_key!("netmon.last_state"),
                state_name(c.last).as_bytes(),
            );
        }));
        if let Some(ns) = c.lifespan_ns() {
            put_int(buf, int_key!("netmon.lifespan_ns"), ns);
        }
        let path = || steps.iter().copied();
        let mut states = [0u8; PATH_CAP + 1];
        for (i, (s, _)) in path().enumerate() {
            states[0] = i as u8 + 1;
            states[i + 1] = s.to_kernel();
        }
        let array_max = 64 + PATH_ENTRY_MAX * usize::from(states[0]);
        buf.extend_from_slice(self.states[slot].get(states, array_max, |buf| {
            kv_array(
                buf,
                key!("netmon.states"),
                path().map(|(s, _)| field_len(state_name(s).len())),
                |buf| {
                    for (s, _) in path() {
                        let name = state_name(s);
                        put_len(buf, F1_LEN, field_len(name.len()));
                        put_len(buf, F1_LEN, name.len());
                        buf.extend_short(name.as_bytes());
                    }
                },
            );
        }));
        kv_array(
            buf,
            key!("netmon.state_durations_ns"),
            path().map(|(_, ns)| 1 + varint_len(clamp(ns))),
            |buf| {
                for (_, ns) in path() {
                    let ns = clamp(ns);
                    put_len(buf, F1_LEN, 1 + varint_len(ns));
                    buf.push(ANY_INT);
                    put_varint(buf, ns);
                }
            },
        );
        put_int(buf, int_key!("netmon.bytes_sent"), c.bytes_acked);
        put_int(buf, int_key!("netmon.bytes_received"), c.bytes_received);
        put_int(buf, int_key!("netmon.netns"), u64::from(c.netns));
        put_int(buf, int_key!("netmon.socket.cookie"), c.cookie);
        if observed_ns != 0 {
            buf.push(LOG_OBSERVED_TIME);
            buf.extend_from_slice(&observed_ns.to_le_bytes());
        }
        put_len(buf, LOG_EVENT_NAME, EVENT_NAME.len());
        buf.extend_from_slice(EVENT_NAME.as_bytes());

        let end = buf.pos;
        debug_assert!(end - start <= max, "a record past its bound");
        let len = (end - start) as u64;
        if varint_len(len) == RECORD_LEN_GUESS {
            self.buf[len_at] = (len as u8 & 0x7f) | 0x80;
            self.buf[len_at + 1] = (len >> 7) as u8;
            self.end = end;
        } else {
            let prefix = encoded(10, |w| put_varint(w, len));
            let moved = len_at + prefix.len();
            if self.buf.len() < moved + len as usize {
                self.buf.resize(moved + len as usize, 0);
            }
            self.buf.copy_within(start..end, moved);
            self.buf[len_at..moved].copy_from_slice(&prefix);
            self.end = moved + len as usize;
        }
        self.records += 1;
    }

    /// The encoded `ExportLogsServiceRequest` holding the records pushed since the last
    /// [`Body::clear`].
    pub fn finish(&mut self) -> &[u8] {
        let records = self.end - self.headroom;
        let scope_logs = self.scope.len() + records;
        let resource_logs = self.resource.len() + field_len(scope_logs);
        let head = encoded(self.headroom, |w| {
            put_len(w, F1_LEN, resource_logs);
            w.extend_from_slice(&self.resource);
            put_len(w, F2_LEN, scope_logs);
            w.extend_from_slice(&self.scope);
        });
        let start = self.headroom - head.len();
        self.buf[start..self.headroom].copy_from_slice(&head);
        &self.buf[start..self.end]
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use prost::Message;

    use netmon_common::{AF_INET, SockEvent};

    use super::{super::record, *};
    use crate::{
        clock::Clock,
        decode::{Task, tests::event},
        table::{Owner, Path, Table},
        tracer::{Pipeline, Sink},
    };

    struct Collect(Vec<Closed>);

    impl Sink for Collect {
        fn closed(&mut self, c: &Closed) -> std::io::Result<()> {
            self.0.push(*c);
            Ok(())
        }
    }

    /// SYN-SENT, ESTAB, FIN-WAIT-1, FIN-WAIT-2 as the table records them from ring records.
    fn path() -> Path {
        use TcpState::*;
        let mut pipeline = Pipeline::new(Table::new());
        let mut sink = Collect(Vec::new());
        for (ts, old, new) in [
            (1_000, Close, SynSent),
            (60_000, SynSent, Established),
            (8_000_000, Established, FinWait1),
            (8_500_000, FinWait1, FinWait2),
            (9_000_000, FinWait2, Close),
        ] {
            let mut ev = event(
                AF_INET,
                &[127, 0, 0, 1],
                &[127, 0, 0, 2],
                old.to_kernel(),
                new.to_kernel(),
            );
            ev.ts_ns = ts;
            // SAFETY: SockEvent is plain data without padding.
            let bytes = unsafe {
                std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<SockEvent>())
            };
            pipeline.record(bytes, &mut sink).unwrap();
        }
        pipeline.end_batch(&mut sink).unwrap();
        assert_eq!(sink.0.len(), 1);
        assert!(!sink.0[0].path.is_empty());
        sink.0[0].path
    }

    #[test]
    fn varint_lengths() {
        for (v, n) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(v), n, "{v}");
            let buf = encoded(10, |w| put_varint(w, v));
            assert_eq!(buf.len(), n, "{v}");
        }
    }

    fn closed(local: &str, remote: &str) -> Closed {
        let addr = |s: &str| s.parse().unwrap();
        Closed {
            cookie: u64::MAX,
            netns: 4026531840,
            local: addr(local),
            remote: addr(remote),
            born_ns: Some(1_000),
            closed_ns: 9_000_000,
            last: TcpState::FinWait2,
            path: path(),
            owner: Some(Owner::new(Task::new(4242, 4243, 1000, "curl"))),
            end: End::Normal,
            bytes_acked: 1 << 40,
            bytes_received: 0,
            cgroup_id: 7,
            cgroup_source: netmon_common::CgroupSource::Socket,
        }
    }

    /// The same records through prost's structs and through `Body`.
    fn both(records: &[(Closed, Direction, Option<Labels>)]) -> (Vec<u8>, Vec<u8>) {
        let clock = Clock::now();
        let observed = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_800_000_000_123_456_789);
        let unix =
            |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64;
        let reference = record::request(
            records
                .iter()
                .map(|(c, d, l)| record::log_record(c, *d, l.as_ref(), &clock, observed))
                .collect(),
            "host-1.example",
        )
        .encode_to_vec();
        let mut body = Body::new("host-1.example", 4);
        for (c, d, l) in records {
            body.push(
                c,
                *d,
                l.as_ref(),
                unix(clock.wall(c.closed_ns)),
                unix(observed),
            );
        }
        assert_eq!(body.records(), records.len());
        (reference, body.finish().to_vec())
    }

    #[test]
    fn records_are_byte_for_byte_what_prost_writes() {
        let labels = Labels::parse(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b1c2d3e_4f50_6172_8394_a5b6c7d8e9f0.slice/cri-containerd-4f1c0ffee0000000000000000000000000000000000000000000000000c0ffee.scope",
        );
        assert!(labels.pod_uid.is_some() && labels.container_id.is_some());
        let unit = Labels::parse("/system.slice/web\\x2dfront.service");
        let mut reset = closed("[::1]:443", "[fe80::1%2]:51000");
        reset.end = End::ResetReceived;
        reset.owner = None;
        reset.born_ns = None;
        let mut bare = closed("10.0.0.1:1", "255.255.255.255:65535");
        bare.path = Default::default();
        bare.last = TcpState::Unknown(77);
        let cases = [
            (
                closed("127.0.0.1:40000", "127.0.0.1:80"),
                Direction::Outbound,
                None,
            ),
            (
                closed("127.0.0.1:80", "127.0.0.1:40000"),
                Direction::Inbound,
                Some(labels),
            ),
            (reset, Direction::Unknown, Some(unit)),
            (bare, Direction::Outbound, Some(Labels::parse("/"))),
        ];
        for case in &cases {
            let (reference, ours) = both(std::slice::from_ref(case));
            assert_eq!(ours, reference, "{:?}", case.0);
        }
        let (reference, ours) = both(&cases);
        assert_eq!(ours, reference);
        let (reference, ours) = both(&[]);
        assert_eq!(ours, reference);
    }

    #[test]
    fn ipv4_text_is_what_display_writes() {
        for octet in 0..=255u8 {
            for ip in [
                Ipv4Addr::new(octet, 0, 9, 10),
                Ipv4Addr::new(99, octet, 100, 255),
                Ipv4Addr::new(1, 200, octet, 7),
                Ipv4Addr::new(255, 255, 255, octet),
            ] {
                let mut out = Vec::new();
                put_ipv4(&mut out, ip);
                assert_eq!(out, ip.to_string().as_bytes());
            }
        }
    }

    #[test]
    fn records_name_their_ends_once_and_carry_no_body() {
        // source/destination when the direction is known, network.local/peer only when it is
        // not: the wire bytes decoded, not the reference they are compared with.
        let c = closed("127.0.0.1:40000", "127.0.0.2:80");
        let (_, ours) = both(&[
            (c, Direction::Outbound, None),
            (c, Direction::Inbound, None),
            (c, Direction::Unknown, None),
        ]);
        let request = super::super::proto::ExportLogsServiceRequest::decode(ours.as_slice())
            .expect("decodes");
        let records = &request.resource_logs[0].scope_logs[0].log_records;
        let value = |r: &super::super::proto::LogRecord, key: &str| {
            r.attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone())
        };
        let text = |s: &str| Some(super::super::proto::AnyValue::string(s));
        let port = |p: i64| Some(super::super::proto::AnyValue::int(p));
        let ends = [
            "source.address",
            "source.port",
            "destination.address",
            "destination.port",
            "network.local.address",
            "network.local.port",
            "network.peer.address",
            "network.peer.port",
        ];
        let expected = [
            [
                text("127.0.0.1"),
                port(40000),
                text("127.0.0.2"),
                port(80),
                None,
                None,
                None,
                None,
            ],
            [
                text("127.0.0.2"),
                port(80),
                text("127.0.0.1"),
                port(40000),
                None,
                None,
                None,
                None,
            ],
            [
                None,
                None,
                None,
                None,
                text("127.0.0.1"),
                port(40000),
                text("127.0.0.2"),
                port(80),
            ],
        ];
        assert_eq!(records.len(), 3);
        for (r, want) in records.iter().zip(expected) {
            let got: Vec<_> = ends.iter().map(|k| value(r, k)).collect();
            assert_eq!(got, want, "{r:?}");
            assert_eq!(r.body, None);
        }
    }

    #[test]
    fn parts_kept_from_the_last_record_are_rewritten_when_they_change() {
        // Family, owner, direction/end/last state and path states are kept encoded from the
        // last record: a change, also back to an earlier value, must show in the bytes.
        let a = closed("127.0.0.1:40000", "127.0.0.1:80");
        let mut b = closed("[::1]:443", "[::1]:51000");
        b.owner = None;
        b.end = End::Refused;
        b.last = TcpState::SynSent;
        b.path = Default::default();
        let mut c = a;
        c.owner = Some(Owner::new(Task::new(7, 7, 0, "nginx")));
        c.end = End::ResetSent;
        let mut d = c;
        d.owner = Some(Owner::new(Task::new(7, 7, 0, "nginy")));
        d.last = TcpState::Unknown(77);
        use Direction::{Inbound, Outbound, Unknown};
        let records = [
            (a, Outbound, None),
            (a, Outbound, None),
            (b, Inbound, None),
            (a, Outbound, None),
            (c, Unknown, None),
            (d, Unknown, None),
            (b, Outbound, None),
            (a, Inbound, None),
        ];
        let (reference, ours) = both(&records);
        assert_eq!(ours, reference);
    }

    #[test]
    fn address_texts_follow_more_addresses_than_are_kept() {
        // Four texts are kept, replaced in turn but never the one the same record uses for
        // its other end: six addresses in turn, each record swapping its ends with the last,
        // some records with both ends the same, must still be prost's bytes.
        let ips = [
            "127.0.0.1",
            "127.1.0.9",
            "10.20.30.40",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ];
        let at = |ip: &str, port: u16| match ip.contains(':') {
            true => format!("[{ip}]:{port}"),
            false => format!("{ip}:{port}"),
        };
        let mut records = Vec::new();
        // Four texts taken by two records, then a third whose local address is the one the
        // next new text would replace.
        for (local, peer) in [(0, 1), (2, 3), (0, 4), (0, 4)] {
            let c = closed(&at(ips[local], 1), &at(ips[peer], 2));
            records.push((c, Direction::Outbound, None));
        }
        for i in 0..40 {
            let (a, b) = (ips[i % 6], ips[(i * 5 + 1) % 6]);
            let out = closed(&at(a, 40_000 + i as u16), &at(b, 80));
            let back = closed(&at(b, 80), &at(a, 40_000 + i as u16));
            records.push((out, Direction::Outbound, None));
            records.push((back, Direction::Inbound, None));
            let same = closed(&at(a, 1), &at(a, 2));
            records.push((same, Direction::Unknown, None));
        }
        let (reference, ours) = both(&records);
        assert_eq!(ours, reference);
    }

    #[test]
    fn a_cleared_body_starts_over_and_odd_lengths_move_the_record() {
        let mut body = Body::new("h", 1);
        let c = closed("127.0.0.1:1", "127.0.0.1:2");
        body.push(&c, Direction::Outbound, None, 1, 2);
        let one = body.finish().to_vec();
        body.push(&c, Direction::Outbound, None, 1, 2);
        body.clear();
        body.push(&c, Direction::Outbound, None, 1, 2);
        assert_eq!(body.finish(), one.as_slice());
        // A record past 16,383 bytes needs a third length byte: still prost's bytes.
        let long = Labels {
            unit: Some("u".repeat(20_000)),
            ..Labels::default()
        };
        let (reference, ours) = both(&[(c, Direction::Outbound, Some(long))]);
        assert_eq!(ours, reference);
    }
}
