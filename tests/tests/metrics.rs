//! `netmon agent --metrics-listen` scraped by a real Prometheus, and `--otlp-endpoint` sending
//! to an OTLP/HTTP receiver that decodes with OpenTelemetry's own protobuf types. Counts are
//! checked against the connections each test made (and saw fail) itself.
//!
//! The agent counts every namespace on the machine, and other tests run traffic too: each
//! test talks to addresses of its own in 127.0.0.0/8 inside its namespace and reads the
//! series of a peer group (`--metrics-peer`) made of those addresses, which no one else uses.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use netmon_tests::{
    AgentProcess, TestNetns, connect_and_close,
    otlp::{attr, int, otlp_receiver, text},
    require_root,
};
use serde_json::Value as Json;

/// `GET path` on `addr`: status and body.
fn http_get(addr: &str, path: &str, accept: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    (status, body.to_owned())
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().port()
}

/// Percent-encodes a PromQL query for a URL.
fn query_param(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server (Debian's package) scraping one target every second, with a config
/// and data directory of its own; killed by pid on drop.
struct Prometheus {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        require_root();
        let dir = std::env::temp_dir().join(format!("netmon-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: netmon\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run prometheus (cargo xtask setup installs Debian's `prometheus`)");
        let p = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&p.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "prometheus did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// An instant query's single value, if the result has exactly one series.
    fn value(&self, query: &str) -> Option<f64> {
        let (status, body) = http_get(
            &self.addr,
            &format!("/api/v1/query?query={}", query_param(query)),
            "application/json",
        );
        if status != 200 {
            return None;
        }
        let json: Json = serde_json::from_str(&body).ok()?;
        let result = json["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// Polls `query` until it equals `want` (30 s at most); the last value seen.
    fn wait_for(&self, query: &str, want: f64) -> Option<f64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.value(query);
            if last == Some(want) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        last
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn metrics_addr(agent: &AgentProcess) -> String {
    let line = agent.stderr_line("metrics on http://");
    line.split("http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned()
}

/// Connects to a port nothing listens on at `ip` in `ns`, `n` times; how many were refused.
fn refused_connects(ns: &TestNetns, ip: &'static str, n: usize) -> usize {
    ns.run(move || {
        let port = TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
        (0..n)
            .filter(|_| {
                matches!(TcpStream::connect((ip, port)), Err(e) if e.kind() == ErrorKind::ConnectionRefused)
            })
            .count()
    })
}

/// `n` connections to a listener at `ip` in `ns` (the client closes first); their client
/// addresses and the server's.
fn connections(ns: &TestNetns, ip: &'static str, n: usize) -> (Vec<SocketAddr>, SocketAddr) {
    ns.run(move || {
        let listener = TcpListener::bind((ip, 0)).expect("bind");
        let clients = (0..n)
            .map(|_| connect_and_close(&listener).client)
            .collect();
        (clients, listener.local_addr().unwrap())
    })
}

#[test]
fn prometheus_scrapes_the_agent_and_counts_equal_the_connections_made() {
    let ns = TestNetns::new();
    let agent = AgentProcess::start_reading_stderr(&[
        "--metrics-listen",
        "0",
        "--metrics-peer",
        "mine=127.13.37.0/24",
    ]);
    let target = metrics_addr(&agent);
    assert!(
        target.starts_with("127.0.0.1:"),
        "a port alone listens on loopback: {target}"
    );
    let prometheus = Prometheus::start(&target);
    assert_eq!(
        prometheus.wait_for(r#"up{job="netmon"}"#, 1.0),
        Some(1.0),
        "Prometheus scrapes and parses the OpenMetrics exposition"
    );

    let refused = refused_connects(&ns, "127.13.37.1", 5);
    assert_eq!(
        refused, 5,
        "every connect to a closed port is refused (ground truth)"
    );
    let (clients, _) = connections(&ns, "127.13.37.2", 7);
    // The server's accepted sockets count too if their peer (the client's address, which the
    // kernel chose) is in the group.
    let clients_in_group = clients
        .iter()
        .filter(|c| c.ip().to_string().starts_with("127.13.37."))
        .count();

    let q = |labels: &str| format!("netmon_tcp_peer_connections_closed_total{{{labels}}}");
    let got = prometheus.wait_for(&q(r#"peer="mine",end_reason="refused""#), refused as f64);
    assert_eq!(got, Some(refused as f64), "refused connects counted");
    let normal = (clients.len() + clients_in_group) as f64;
    let got = prometheus.wait_for(&q(r#"peer="mine",end_reason="normal""#), normal);
    assert_eq!(got, Some(normal), "connections that ended normally");
    let opened = (refused + clients.len()) as f64;
    let got = prometheus.wait_for(
        r#"netmon_tcp_peer_connections_opened_total{peer="mine",direction="outbound"}"#,
        opened,
    );
    assert_eq!(got, Some(opened), "connects started");
    // The unlabelled totals hold everyone's traffic: at least ours.
    let all_refused = prometheus
        .value(r#"netmon_tcp_connections_closed_total{direction="outbound",end_reason="refused"}"#)
        .expect("the refused series");
    assert!(all_refused >= refused as f64, "{all_refused}");
    let listen = prometheus
        .value(r#"sum(netmon_tcp_sockets{state="listen"})"#)
        .expect("listening sockets");
    assert!(listen >= 1.0, "the agent sees listeners: {listen}");
    assert_eq!(
        prometheus.value("netmon_fire_count_enabled"),
        Some(1.0),
        "perf counts the tracepoint's fires"
    );

    // promtool lints the text format (it has no parser for OpenMetrics' info type).
    let (status, text) = http_get(&target, "/metrics", "text/plain");
    assert_eq!(status, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian's `prometheus` package)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _) = http_get(&target, "/nothing", "*/*");
    assert_eq!(status, 404);
}

#[test]
fn otlp_receiver_gets_one_record_per_connection_end_with_its_attributes() {
    let ns = TestNetns::new();
    let (receiver, records) = otlp_receiver();
    let agent =
        AgentProcess::start_reading_stderr(&["--otlp-endpoint", &format!("http://{receiver}")]);
    let before = SystemTime::now();
    let (clients, server) = connections(&ns, "127.13.38.1", 6);
    let after = SystemTime::now();

    // Ours: the ends whose server side is our listener, outbound (client) and inbound.
    let mut outbound = Vec::new();
    let mut inbound = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (outbound.len() < clients.len() || inbound.len() < clients.len())
        && Instant::now() < deadline
    {
        let Ok(r) = records.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let destination = (
            text(attr(&r, "destination.address")).map(str::to_owned),
            int(attr(&r, "destination.port")),
        );
        if destination
            != (
                Some(server.ip().to_string()),
                Some(i64::from(server.port())),
            )
        {
            continue;
        }
        match text(attr(&r, "netmon.direction")) {
            Some("outbound") => outbound.push(r),
            Some("inbound") => inbound.push(r),
            other => panic!("direction {other:?}: {r:?}"),
        }
    }
    // Anything more for our connections would be a duplicate.
    std::thread::sleep(Duration::from_millis(1500));
    while let Ok(r) = records.try_recv() {
        assert_ne!(
            int(attr(&r, "destination.port")),
            Some(i64::from(server.port())),
            "one record per connection end: {r:?}"
        );
    }
    assert_eq!(outbound.len(), clients.len(), "client ends: {outbound:#?}");
    assert_eq!(inbound.len(), clients.len(), "server ends: {inbound:#?}");

    let mut client_ports: Vec<i64> = clients.iter().map(|c| i64::from(c.port())).collect();
    let mut seen_ports: Vec<i64> = outbound
        .iter()
        .map(|r| int(attr(r, "source.port")).expect("source.port"))
        .collect();
    client_ports.sort_unstable();
    seen_ports.sort_unstable();
    assert_eq!(
        seen_ports, client_ports,
        "source.port is each client's port"
    );
    let window =
        |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64;
    for r in outbound.iter().chain(&inbound) {
        assert_eq!(text(attr(r, "network.transport")), Some("tcp"), "{r:?}");
        assert_eq!(text(attr(r, "network.type")), Some("ipv4"), "{r:?}");
        assert_eq!(text(attr(r, "netmon.end_reason")), Some("normal"), "{r:?}");
        assert_eq!(r.event_name, "netmon.tcp.connection.closed");
        assert!(
            (window(before)..=window(after) + 1_000_000).contains(&r.time_unix_nano),
            "the record's time is when the connection ended: {r:?}"
        );
        let lifespan = int(attr(r, "netmon.lifespan_ns")).expect("lifespan");
        assert!(
            lifespan > 0 && (lifespan as u64) < window(after) - window(before),
            "{r:?}"
        );
    }
    for r in &outbound {
        assert_eq!(
            int(attr(r, "process.pid")),
            Some(i64::from(std::process::id())),
            "the client is this test: {r:?}"
        );
    }
    for r in outbound.iter().chain(&inbound) {
        // The client's address is its socket's, whichever end the record is of.
        let client = clients
            .iter()
            .find(|c| int(attr(r, "source.port")) == Some(i64::from(c.port())));
        assert_eq!(
            text(attr(r, "source.address")),
            client.map(|c| c.ip().to_string()).as_deref(),
            "{r:?}"
        );
        // With a known direction, source/destination are the record's addresses: no
        // network.local/peer copies of them, and no body (an event's details are attributes).
        for key in [
            "network.local.address",
            "network.peer.address",
            "network.peer.port",
        ] {
            assert_eq!(attr(r, key), None, "{key}: {r:?}");
        }
        assert_eq!(r.body, None, "{r:?}");
    }
    drop(agent);
}

#[test]
fn otlp_with_the_receiver_down_keeps_serving_and_counts_drops() {
    let ns = TestNetns::new();
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let agent =
        AgentProcess::start_reading_stderr(&["--otlp-endpoint", &nobody, "--metrics-listen", "0"]);
    let target = metrics_addr(&agent);
    let (clients, _) = connections(&ns, "127.13.39.1", 4);
    let dropped = || {
        let (status, text) = http_get(&target, "/metrics", "text/plain");
        assert_eq!(status, 200, "the agent keeps serving /metrics");
        text.lines()
            .find_map(|l| {
                l.strip_prefix(r#"netmon_otlp_dropped_records_total{reason="export_failed"} "#)
            })
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no export_failed series in\n{text}"))
    };
    // The batch goes out within a second, then three retries 0.25, 0.5 and 1 s apart.
    let deadline = Instant::now() + Duration::from_secs(30);
    while dropped() < (2 * clients.len()) as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    let n = dropped();
    assert!(
        n >= (2 * clients.len()) as f64,
        "both ends of our connections at least: {n}"
    );
    let stderr = agent.stderr_line("OTLP export to");
    assert!(stderr.contains("failed"), "{stderr}");
    // Snapshots still work.
    let out = agent.snapshot(&ns, &["-tanH"]);
    assert!(out.contains("TIME-WAIT"), "{out}");
}

/// Where tracefs is not mounted and the agent may not mount it (the unit's sandbox forbids
/// mount namespaces and mount(2); here: no CAP_SYS_ADMIN, tracefs and debugfs unmounted in a
/// mount namespace of the test's), the agent still traces, with the fire count off, and says
/// so on stderr and in its metrics.
#[test]
fn without_tracefs_the_agent_runs_with_the_fire_count_off_and_says_so() {
    let ns = TestNetns::new();
    // Unmounted (lazily, maybe several stacked mounts) in the new mount namespace only.
    let script = "for i in 1 2 3 4; do umount -l /sys/kernel/tracing 2>/dev/null; \
                  umount -l /sys/kernel/debug 2>/dev/null; done; \
                  test ! -e /sys/kernel/tracing/events || exit 3; exec \"$@\"";
    let agent = AgentProcess::start_wrapped_reading_stderr(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            "setpriv",
            "--bounding-set",
            "-sys_admin",
            "--",
        ],
        &[
            "--metrics-listen",
            "0",
            "--metrics-peer",
            "mine=127.13.39.0/24",
        ],
    );
    let warning = agent.stderr_line("fire count off");
    assert!(
        warning.contains("WARNING") && warning.contains("tracing goes on"),
        "{warning}"
    );
    let target = metrics_addr(&agent);
    let (clients, _) = connections(&ns, "127.13.39.1", 3);
    let gauge = |body: &str, name: &str| -> Option<f64> {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let series = r#"netmon_tcp_peer_connections_opened_total{peer="mine",direction="outbound"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(&target, "/metrics", "text/plain");
        assert_eq!(status, 200);
        assert_eq!(
            gauge(&body, "netmon_fire_count_enabled"),
            Some(0.0),
            "{body}"
        );
        if gauge(&body, series) == Some(clients.len() as f64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the connections were not counted: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
