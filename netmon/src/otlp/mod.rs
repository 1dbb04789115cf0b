//! OTLP/HTTP export of ended connections as log records: a bounded queue filled from the
//! agent's event loop without ever waiting, and a thread of its own that batches, encodes,
//! posts and retries with backoff. What cannot be queued or delivered is counted, never
//! silently lost.
//!
//! The HTTP side is a plain HTTP/1.1 POST over a kept-alive TCP connection: OTLP/HTTP needs
//! nothing more, and the recommended deployment sends to a local OpenTelemetry Collector,
//! which then speaks TLS, Kafka, Loki or remote write onwards.

pub mod encode;
pub mod proto;
pub mod record;

use std::{
    io::{BufRead, BufReader, IoSlice, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use prometheus_client::{encoding::EncodeMetric, metrics::counter::Counter, registry::Registry};
use prost::Message;

use crate::{
    cgroup::{CgroupNames, Labels},
    clock::Clock,
    metrics::labels::{Direction, Reason},
    table::Closed,
};

/// Records waiting for the exporter; past this they are dropped and counted.
pub const QUEUE: usize = 16 * 1024;
/// Records the event loop hands over at once: one wake-up of the exporter thread each.
pub const CHUNK: usize = 1024;
/// A smaller chunk goes at the end of a ring batch once its first record is this old.
pub const CHUNK_AGE: Duration = Duration::from_millis(100);
/// Records per request.
pub const BATCH: usize = 1024;
/// A batch goes out at the latest this long after its first record.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Emptied chunks kept for reuse (the rest are freed).
const SPARE_CHUNKS: usize = 4;
/// Tries per batch: the first and three retries, 0.25 s, 0.5 s, 1 s apart.
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Where to post: `http://HOST:PORT[/PATH]`; the path defaults to OTLP's `/v1/logs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` as given, for connecting and the Host header.
    pub authority: String,
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error(
        "`{0}`: https is not supported; send to a local OpenTelemetry Collector over http (e.g. http://127.0.0.1:4318) and let it forward over TLS"
    )]
    Https(String),
    #[error("`{0}`: expected an http:// URL, e.g. http://127.0.0.1:4318")]
    Scheme(String),
    #[error("`{0}`: no host in the URL")]
    Host(String),
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        if url.starts_with("https://") {
            return Err(EndpointError::Https(url.to_owned()));
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| EndpointError::Scheme(url.to_owned()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.starts_with(':') {
            return Err(EndpointError::Host(url.to_owned()));
        }
        // OTLP/HTTP's default port when none is given.
        let has_port = match authority.rsplit_once(':') {
            Some((host, port)) => !host.ends_with(':') && port.parse::<u16>().is_ok(),
            None => false,
        };
        let authority = if has_port && !authority.ends_with(']') {
            authority.to_owned()
        } else {
            format!("{authority}:4318")
        };
        let path = match path {
            "" | "/" => "/v1/logs".to_owned(),
            p => p.to_owned(),
        };
        Ok(Self { authority, path })
    }
}

/// The exporter's counters, shared with the metrics.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub exported: Counter,
    pub queue_full: Counter,
    pub failed: Counter,
    pub rejected: Counter,
    pub retries: Counter,
}

impl Stats {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "netmon_otlp_exported_records",
            "Log records the OTLP endpoint accepted",
            self.exported.clone(),
        );
        r.register(
            "netmon_otlp_dropped_records",
            "Log records not delivered: the queue was full, the endpoint failed after retries, or it rejected them",
            DroppedFamily(self.clone()),
        );
        r.register(
            "netmon_otlp_export_retries",
            "Export requests retried after a failure",
            self.retries.clone(),
        );
    }
}

/// `netmon_otlp_dropped_records_total{reason}` from the three counters.
#[derive(Debug)]
struct DroppedFamily(Stats);

impl prometheus_client::metrics::TypedMetric for DroppedFamily {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Counter;
}

impl EncodeMetric for DroppedFamily {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        for (reason, c) in [
            ("queue_full", &self.0.queue_full),
            ("export_failed", &self.0.failed),
            ("rejected", &self.0.rejected),
        ] {
            c.encode(encoder.encode_family(&Reason { reason })?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Counter
    }
}

/// The agent's handle: queue records; dropping it flushes what is queued (one try) and stops
/// the thread.
///
/// Records are gathered into a chunk on the event loop's side and handed over a chunk at a
/// time (at [`CHUNK`] records, or at the end of a ring batch once the chunk is
/// [`CHUNK_AGE`] old), so that the exporter thread wakes a few times a second, not once per
/// record; the queue bound is counted in records across the chunks in flight.
pub struct Exporter {
    tx: Option<Sender<Vec<Closed>>>,
    /// Emptied chunks coming back from the thread.
    spare: Receiver<Vec<Closed>>,
    chunk: Vec<Closed>,
    chunk_since: Option<Instant>,
    /// Records handed over and not yet taken by the thread.
    queued: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub stats: Stats,
}

impl Exporter {
    /// Starts the thread; `cgroups` names the sockets' cgroups in the records.
    pub fn start(endpoint: Endpoint, clock: Clock, cgroups: CgroupNames) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let (spare_tx, spare) = mpsc::sync_channel(SPARE_CHUNKS);
        let stats = Stats::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(AtomicUsize::new(0));
        let host = hostname();
        let worker = Worker {
            endpoint,
            clock,
            cgroups: LabelCache {
                names: cgroups,
                last: None,
            },
            body: encode::Body::new(&host, BATCH),
            batch_since: None,
            stats: stats.clone(),
            stopping: stopping.clone(),
            queued: queued.clone(),
            spare: spare_tx,
            conn: None,
            failing: false,
        };
        let thread = std::thread::Builder::new()
            .name("netmon-otlp".into())
            .spawn(move || worker.run(&rx))?;
        Ok(Self {
            tx: Some(tx),
            spare,
            chunk: Vec::with_capacity(CHUNK),
            chunk_since: None,
            queued,
            stopping,
            thread: Some(thread),
            stats,
        })
    }

    /// Queues an ended connection; never waits. Listeners are not connections: not sent.
    pub fn push(&mut self, c: &Closed) {
        if Direction::of(c).is_none() {
            return;
        }
        if self.chunk.is_empty() {
            self.chunk_since = Some(Instant::now());
        }
        self.chunk.push(*c);
        if self.chunk.len() >= CHUNK {
            self.hand_over();
        }
    }

    /// The end of a ring batch: hands the chunk over if it waited long enough.
    pub fn end_batch(&mut self) {
        if self.chunk_since.is_some_and(|t| t.elapsed() >= CHUNK_AGE) {
            self.hand_over();
        }
    }

    fn hand_over(&mut self) {
        self.chunk_since = None;
        let n = self.chunk.len();
        if n == 0 {
            return;
        }
        let Some(tx) = &self.tx else { return };
        if self.queued.load(Ordering::Relaxed) + n > QUEUE {
            self.stats.queue_full.inc_by(n as u64);
            self.chunk.clear();
            return;
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        if tx.send(std::mem::replace(&mut self.chunk, next)).is_err() {
            // The thread is gone (it only ends when told to): nothing will send them.
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.stats.queue_full.inc_by(n as u64);
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.hand_over();
        self.stopping.store(true, Ordering::Relaxed);
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    endpoint: Endpoint,
    clock: Clock,
    cgroups: LabelCache,
    /// The request being filled, encoded as records arrive.
    body: encode::Body,
    batch_since: Option<Instant>,
    stats: Stats,
    stopping: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    spare: SyncSender<Vec<Closed>>,
    conn: Option<BufReader<TcpStream>>,
    /// Whether the last batch failed: failures and recoveries are said once on stderr.
    failing: bool,
}

/// The cgroup names with the last one found kept aside: a storm's sockets mostly share one
/// cgroup, and two SipHash lookups a record showed in the exporter's profile. Kernfs ids are
/// not reused (64-bit, with a generation), and `CgroupNames` never renames a known id either.
struct LabelCache {
    names: CgroupNames,
    last: Option<(u64, Labels)>,
}

impl LabelCache {
    fn get(&mut self, id: u64) -> Option<&Labels> {
        if self.last.as_ref().is_none_or(|(last, _)| *last != id) {
            let found = self.names.lookup(id, Instant::now).ok()?.clone();
            self.last = Some((id, found));
        }
        self.last.as_ref().map(|(_, labels)| labels)
    }
}

/// Why a post failed, and whether trying again may help.
#[derive(Debug)]
enum PostError {
    Retry(String),
    Permanent(String),
}

impl Worker {
    fn run(mut self, rx: &Receiver<Vec<Closed>>) {
        loop {
            let wait = self.batch_since.map_or(FLUSH_EVERY, |t| {
                (t + FLUSH_EVERY).saturating_duration_since(Instant::now())
            });
            match rx.recv_timeout(wait) {
                Ok(mut chunk) => {
                    self.queued.fetch_sub(chunk.len(), Ordering::Relaxed);
                    self.encode(&chunk);
                    chunk.clear();
                    // A full spare list frees it.
                    let _ = self.spare.try_send(chunk);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.body.records() > 0 {
                        self.send();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if self.body.records() > 0 {
                        self.send();
                    }
                    return;
                }
            }
        }
    }

    /// Adds a chunk's records to the request, sending it each time it is full.
    fn encode(&mut self, chunk: &[Closed]) {
        let observed = record::unix_ns(SystemTime::now());
        // The wall clock of monotonic 0, once a chunk: `SystemTime` arithmetic per record
        // showed in the exporter's profile; the sum is the same integer nanoseconds.
        let epoch_ns = record::unix_ns(self.clock.wall(0));
        for c in chunk {
            let Some(direction) = Direction::of(c) else {
                continue;
            };
            let labels = self.cgroups.get(c.cgroup_id);
            let time = if epoch_ns == 0 {
                record::unix_ns(self.clock.wall(c.closed_ns))
            } else {
                epoch_ns.saturating_add(c.closed_ns)
            };
            self.body.push(c, direction, labels, time, observed);
            self.batch_since.get_or_insert_with(Instant::now);
            if self.body.records() >= BATCH {
                self.send();
            }
        }
    }

    /// Posts the request (retrying), counts the outcome and empties it.
    fn send(&mut self) {
        self.batch_since = None;
        let n = self.body.records() as u64;
        let mut backoff = FIRST_BACKOFF;
        let attempts = if self.stopping.load(Ordering::Relaxed) {
            1
        } else {
            ATTEMPTS
        };
        let mut last = String::new();
        let mut delivered = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                self.stats.retries.inc();
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            match post(&self.endpoint, &mut self.conn, self.body.finish()) {
                Ok(rejected) => {
                    delivered = Some(rejected);
                    break;
                }
                Err(PostError::Retry(e)) => last = e,
                Err(PostError::Permanent(e)) => {
                    last = e;
                    break;
                }
            }
        }
        self.body.clear();
        if let Some(rejected) = delivered {
            self.stats.exported.inc_by(n.saturating_sub(rejected));
            self.stats.rejected.inc_by(rejected.min(n));
            if self.failing {
                eprintln!("netmon agent: OTLP export to {} works again", self.url());
                self.failing = false;
            }
            return;
        }
        self.stats.failed.inc_by(n);
        if !self.failing {
            eprintln!(
                "netmon agent: OTLP export to {} failed ({last}); dropping records and counting them in netmon_otlp_dropped_records_total",
                self.url()
            );
            self.failing = true;
        }
    }

    fn url(&self) -> String {
        format!("http://{}{}", self.endpoint.authority, self.endpoint.path)
    }
}

/// One POST on the kept-alive connection `conn` (made if there is none, dropped on an
/// error); the number of records the endpoint said it rejected.
fn post(
    endpoint: &Endpoint,
    conn: &mut Option<BufReader<TcpStream>>,
    body: &[u8],
) -> Result<u64, PostError> {
    let result = post_on_connection(endpoint, conn, body);
    if result.is_err() {
        *conn = None;
    }
    result
}

fn post_on_connection(
    endpoint: &Endpoint,
    conn: &mut Option<BufReader<TcpStream>>,
    body: &[u8],
) -> Result<u64, PostError> {
    let retry = |what: &str, e: std::io::Error| PostError::Retry(format!("{what}: {e}"));
    if conn.is_none() {
        *conn = Some(BufReader::new(connect(&endpoint.authority)?));
    }
    let reader = conn.as_mut().expect("connected above");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nUser-Agent: netmon/{}\r\n\r\n",
        endpoint.path,
        endpoint.authority,
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    write_both(reader.get_mut(), head.as_bytes(), body).map_err(|e| retry("sending", e))?;
    let response = read_response(reader).map_err(|e| retry("reading the response", e))?;
    if !response.keep_alive {
        *conn = None;
    }
    match response.status {
        200..=299 => Ok(rejected(&response.body)),
        // OTLP/HTTP: these may succeed later; everything else will not.
        429 | 502 | 503 | 504 => Err(PostError::Retry(format!("HTTP {}", response.status))),
        s => Err(PostError::Permanent(format!("HTTP {s}"))),
    }
}

/// `head` then `body` in one `writev` (more only when the socket takes part of them): two
/// writes on a no-delay socket sent the head as a segment of its own, with its own trip
/// through loopback and a wake-up of the receiver for each post.
fn write_both(out: &mut impl Write, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    let mut parts = [IoSlice::new(head), IoSlice::new(body)];
    let mut parts = &mut parts[..];
    while !parts.is_empty() {
        match out.write_vectored(parts) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut parts, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn connect(authority: &str) -> Result<TcpStream, PostError> {
    let addrs = authority
        .to_socket_addrs()
        .map_err(|e| PostError::Retry(format!("resolving {authority}: {e}")))?;
    let mut last = PostError::Retry(format!("{authority} resolved to no address"));
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(s) => {
                s.set_read_timeout(Some(IO_TIMEOUT)).ok();
                s.set_write_timeout(Some(IO_TIMEOUT)).ok();
                s.set_nodelay(true).ok();
                return Ok(s);
            }
            Err(e) => last = PostError::Retry(format!("connecting to {addr}: {e}")),
        }
    }
    Err(last)
}

struct Response {
    status: u16,
    keep_alive: bool,
    body: Vec<u8>,
}

/// Bound on a response body: an OTLP response is a few bytes.
const MAX_RESPONSE: u64 = 1 << 20;

fn read_response(r: &mut impl BufRead) -> std::io::Result<Response> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| bad("not an HTTP/1.x response"))?;
    let mut keep_alive = version == "HTTP/1.1";
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("response ended in its head"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<u64>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailers end with a blank line.
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            if body.len() as u64 + size > MAX_RESPONSE {
                return Err(bad("response too large"));
            }
            r.by_ref().take(size).read_to_end(&mut body)?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(n) = length {
        if n > MAX_RESPONSE {
            return Err(bad("response too large"));
        }
        r.by_ref().take(n).read_to_end(&mut body)?;
        if (body.len() as u64) < n {
            return Err(bad("response body cut short"));
        }
    } else {
        r.by_ref().take(MAX_RESPONSE).read_to_end(&mut body)?;
        keep_alive = false;
    }
    Ok(Response {
        status,
        keep_alive,
        body,
    })
}

/// Records a 2xx response says it rejected (OTLP partial success); 0 if it says nothing.
fn rejected(body: &[u8]) -> u64 {
    proto::ExportLogsServiceResponse::decode(body)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| u64::try_from(p.rejected_log_records).unwrap_or(0))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_default_to_otlp_port_and_path() {
        let e: Endpoint = "http://127.0.0.1:4318".parse().unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("127.0.0.1:4318", "/v1/logs")
        );
        let e: Endpoint = "http://collector/".parse().unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("collector:4318", "/v1/logs")
        );
        let e: Endpoint = "http://[::1]:9000/custom/logs".parse().unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("[::1]:9000", "/custom/logs")
        );
        let e: Endpoint = "http://[::1]".parse().unwrap();
        assert_eq!(e.authority, "[::1]:4318");
        assert!(matches!(
            "https://x:4318".parse::<Endpoint>(),
            Err(EndpointError::Https(_))
        ));
        assert!(matches!(
            "127.0.0.1:4318".parse::<Endpoint>(),
            Err(EndpointError::Scheme(_))
        ));
        assert!(matches!(
            "http://:4318".parse::<Endpoint>(),
            Err(EndpointError::Host(_))
        ));
    }

    #[test]
    fn responses_with_length_chunks_or_close() {
        let read = |s: &str| read_response(&mut BufReader::new(s.as_bytes())).unwrap();
        let r = read("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcNEXT");
        assert_eq!(
            (r.status, r.keep_alive, r.body.as_slice()),
            (200, true, &b"abc"[..])
        );
        let r = read(
            "HTTP/1.1 503 Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n",
        );
        assert_eq!((r.status, r.body.as_slice()), (503, &b"abc"[..]));
        let r = read("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nrest");
        assert_eq!((r.keep_alive, r.body.as_slice()), (false, &b"rest"[..]));
        let bad = |s: &str| read_response(&mut BufReader::new(s.as_bytes())).is_err();
        assert!(bad("SSH-2.0-OpenSSH\r\n"));
        assert!(bad("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"));
    }

    #[test]
    fn record_times_from_the_chunks_epoch_equal_the_clocks_own() {
        // `Worker::encode` adds a record's monotonic time to the wall clock of monotonic 0.
        let clock = Clock::now();
        let epoch_ns = record::unix_ns(clock.wall(0));
        assert_ne!(epoch_ns, 0);
        for mono in [0, 1, 999_999_999, 1 << 40, 9_000_000_123] {
            assert_eq!(epoch_ns + mono, record::unix_ns(clock.wall(mono)));
        }
    }

    /// Takes at most 3 bytes a call, from one part at a time, as a socket with little room may.
    struct Trickle(Vec<u8>);

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = b.len().min(3);
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn head_and_body_written_whole_when_the_socket_takes_them_in_pieces() {
        let mut out = Trickle(Vec::new());
        write_both(&mut out, b"POST / HTTP/1.1\r\n\r\n", b"0123456789").unwrap();
        assert_eq!(out.0, b"POST / HTTP/1.1\r\n\r\n0123456789");
        let mut out = Trickle(Vec::new());
        write_both(&mut out, b"h", b"").unwrap();
        assert_eq!(out.0, b"h");
    }

    #[test]
    fn partial_success_counts_rejections() {
        let body = proto::ExportLogsServiceResponse {
            partial_success: Some(proto::ExportLogsPartialSuccess {
                rejected_log_records: 3,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(rejected(&body), 3);
        assert_eq!(rejected(&[]), 0);
    }

    fn closed(cookie: u64) -> Closed {
        let addr = |s: &str| s.parse().unwrap();
        Closed {
            cookie,
            netns: 1,
            local: addr("127.0.0.1:40000"),
            remote: addr("127.0.0.1:80"),
            born_ns: Some(1_000),
            closed_ns: 2_000,
            last: netmon_common::TcpState::SynSent,
            path: Default::default(),
            owner: None,
            end: crate::table::End::Refused,
            bytes_acked: 0,
            bytes_received: 0,
            cgroup_id: 0,
            cgroup_source: netmon_common::CgroupSource::None,
        }
    }

    /// Answers every post with 200 and passes on how many records each held.
    fn receiver() -> (String, mpsc::Receiver<usize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut out = stream;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let mut length = 0;
                loop {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    match line.trim_end().split_once(':') {
                        Some((name, v)) if name.eq_ignore_ascii_case("content-length") => {
                            length = v.trim().parse().unwrap();
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let request = proto::ExportLogsServiceRequest::decode(body.as_slice()).unwrap();
                let n = request.resource_logs[0].scope_logs[0].log_records.len();
                out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .unwrap();
                let _ = tx.send(n);
            }
        });
        (addr, rx)
    }

    #[test]
    fn queued_records_reach_the_receiver_and_listeners_are_not_sent() {
        let (addr, posts) = receiver();
        let mut exporter = Exporter::start(
            format!("http://{addr}").parse().unwrap(),
            Clock::now(),
            CgroupNames::default(),
        )
        .unwrap();
        let stats = exporter.stats.clone();
        for cookie in 0..3 {
            exporter.push(&closed(cookie));
        }
        let mut listener = closed(9);
        listener.last = netmon_common::TcpState::Listen;
        exporter.push(&listener);
        // Dropping it sends what it holds.
        drop(exporter);
        assert_eq!(posts.recv_timeout(Duration::from_secs(10)), Ok(3));
        assert_eq!(stats.exported.get(), 3);
        assert_eq!(stats.failed.get() + stats.queue_full.get(), 0);
    }

    #[test]
    fn a_batch_nobody_takes_is_counted_as_failed() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut exporter = Exporter::start(
            format!("http://127.0.0.1:{port}").parse().unwrap(),
            Clock::now(),
            CgroupNames::default(),
        )
        .unwrap();
        let stats = exporter.stats.clone();
        exporter.push(&closed(1));
        exporter.push(&closed(2));
        drop(exporter);
        assert_eq!((stats.exported.get(), stats.failed.get()), (0, 2));
    }
}
