//! What must hold on every kernel netmon supports; `cargo xtask vm` runs this file (and
//! pipeline.rs) inside a VM of each kernel of the matrix, and the host runs it too.
//!
//! - Each accepted connection is its own socket in `watch` and in the agent's `--closed`, with
//!   its own addresses, even when the listener already has a cookie (on 6.1 and 6.12 the kernel
//!   reports the new child at LISTEN -> SYN-RECV with its listener's identity; see
//!   netmon/src/clones.rs).
//! - A kernel without an optional hook runs netmon anyway and says what is missing; the ground
//!   truth for which hooks exist is tracefs's list of events, not netmon's own probe.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::Path,
    process::Command,
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use netmon_tests::{
    AgentProcess, Conn, TestNetns, connect_and_close, interrupt, lines, netmon_bin, patience,
    snapshot_without_agent, spawn_watch, stderr_of, wait_attached, wait_with_timeout,
};
use serde_json::Value;

const CONNS: usize = 3;

/// A listener in `ns`, given a socket cookie by a sock_diag dump (as `ss` or the agent would)
/// before anything connects: the case where new children carry their listener's cookie.
fn dumped_listener(ns: &TestNetns, bind: &'static str) -> TcpListener {
    let listener = ns.run(move || TcpListener::bind(bind).expect("bind"));
    let port = listener.local_addr().expect("addr").port();
    let dump = snapshot_without_agent(ns, &["-tln"]);
    assert!(dump.contains(&format!(":{port}")), "dump: {dump}");
    listener
}

/// The local and peer address of the server's child of `conn`: on loopback the client
/// reached the listener's port at its own address (`[::]` is reached as `[::1]`).
fn child_endpoints(conn: &Conn) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(conn.client.ip(), conn.server.port()),
        conn.client,
    )
}

fn addr(v: &Value, field: &str) -> SocketAddr {
    v[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{field} is no address: {v}"))
}

/// Reads JSON records until `done` says so or `wait` passes.
fn read_until(
    rx: &Receiver<String>,
    records: &mut Vec<Value>,
    wait: Duration,
    done: impl Fn(&[Value]) -> bool,
) {
    let deadline = Instant::now() + wait;
    while !done(records) && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            records.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
        }
    }
}

/// `port_filter`: also filter on the peer port, which the kernel decides (the child's first
/// transition must pass it on kernels that report it before the child has its ports); the
/// listener, whose peer port is 0, is then filtered out.
fn watch_shows_each_accepted_connection_as_its_own_socket(bind: &'static str, port_filter: bool) {
    let ns = TestNetns::new();
    let mut only_ours = format!("netns = {}", ns.inum);
    if port_filter {
        only_ours.push_str(" and dport ge :1");
    }
    let mut child = spawn_watch(&["--format", "json", &only_ours]);
    let rx = lines(child.stdout.take().expect("stdout"));
    let mut seen = Vec::new();
    wait_attached(&ns, &rx, &mut seen);

    let listener = dumped_listener(&ns, bind);
    let port = listener.local_addr().expect("addr").port();
    let (listener, conns) = ns.run(move || {
        let conns: Vec<_> = (0..CONNS).map(|_| connect_and_close(&listener)).collect();
        (listener, conns)
    });
    drop(listener);

    let ours = |v: &Value| {
        v["type"] == "transition" && (v["local_port"] == port || v["peer_port"] == port)
    };
    let listener_transitions = if port_filter { 0 } else { 2 };
    let want = CONNS * 10 + listener_transitions;
    let mut records = Vec::new();
    read_until(&rx, &mut records, patience(Duration::from_secs(10)), |r| {
        r.iter().filter(|v| ours(v)).count() >= want
    });
    interrupt(&child);
    let status = wait_with_timeout(&mut child, patience(Duration::from_secs(10)));
    read_until(&rx, &mut records, Duration::from_millis(300), |_| false);
    let err = stderr_of(&mut child);
    assert!(status.success(), "exit {status}; stderr: {err}");
    assert!(
        !err.contains("twice"),
        "no transition taken for a duplicate: {err}"
    );
    let losses: Vec<&Value> = records.iter().filter(|v| v["type"] == "loss").collect();
    assert!(losses.is_empty(), "{losses:?}");

    let mine: Vec<&Value> = records.iter().filter(|v| ours(v)).collect();
    assert_eq!(mine.len(), want, "{CONNS} x 10 + the listener's: {mine:#?}");
    // Every socket here was made by this process: each transition, softirq ones included,
    // carries its cgroup v2 path, read from the socket (the BTF offsets of this kernel).
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line in /proc/self/cgroup");
    for v in &mine {
        assert_eq!(v["cgroup_source"], "socket", "{v}");
        assert_eq!(v["cgroup"], own, "{v}");
    }
    let mut sockets: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for v in &mine {
        let cookie = v["cookie"].as_u64().unwrap_or_else(|| panic!("{v}"));
        sockets.entry(cookie).or_default().push(v);
    }
    assert_eq!(
        sockets.len(),
        listener_transitions / 2 + 2 * CONNS,
        "the listener, {CONNS} clients, {CONNS} children, each its own cookie: {sockets:#?}"
    );
    let states = |evs: &[&Value]| -> Vec<(String, String)> {
        let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
        evs.iter()
            .map(|v| (s(&v["old_state"]), s(&v["new_state"])))
            .collect()
    };
    let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    if !port_filter {
        let listener_evs = sockets
            .values()
            .find(|evs| evs[0]["new_state"] == "LISTEN")
            .unwrap_or_else(|| panic!("no listener: {sockets:#?}"));
        assert_eq!(
            states(listener_evs),
            pairs(&[("CLOSE", "LISTEN"), ("LISTEN", "CLOSE")])
        );
    }
    for conn in &conns {
        let client_port = conn.client.port();
        let (local, peer) = child_endpoints(conn);
        let child_evs = sockets
            .values()
            .find(|evs| {
                evs.iter()
                    .any(|v| v["peer_port"] == client_port && v["local_port"] == port)
            })
            .unwrap_or_else(|| panic!("no child for client port {client_port}: {sockets:#?}"));
        assert_eq!(
            states(child_evs),
            pairs(&[
                ("LISTEN", "SYN-RECV"),
                ("SYN-RECV", "ESTAB"),
                ("ESTAB", "CLOSE-WAIT"),
                ("CLOSE-WAIT", "LAST-ACK"),
                ("LAST-ACK", "CLOSE"),
            ]),
            "{child_evs:#?}"
        );
        for v in child_evs {
            assert_eq!((addr(v, "local"), addr(v, "peer")), (local, peer), "{v}");
        }
        let client_evs = sockets
            .values()
            .find(|evs| evs.iter().any(|v| v["local_port"] == client_port))
            .unwrap_or_else(|| panic!("no client {client_port}: {sockets:#?}"));
        assert_eq!(
            states(client_evs),
            pairs(&[
                ("CLOSE", "SYN-SENT"),
                ("SYN-SENT", "ESTAB"),
                ("ESTAB", "FIN-WAIT-1"),
                ("FIN-WAIT-1", "FIN-WAIT-2"),
                ("FIN-WAIT-2", "CLOSE"),
            ]),
            "{client_evs:#?}"
        );
    }
}

#[test]
fn watch_shows_each_accepted_connection_as_its_own_socket_ipv4() {
    watch_shows_each_accepted_connection_as_its_own_socket("127.0.0.1:0", false);
}

#[test]
fn watch_shows_each_accepted_connection_as_its_own_socket_ipv6_port_filtered() {
    watch_shows_each_accepted_connection_as_its_own_socket("[::]:0", true);
}

#[test]
fn agent_closed_lists_each_accepted_connection_with_its_addresses() {
    let ns = TestNetns::new();
    let agent = AgentProcess::start();
    let listener = dumped_listener(&ns, "[::]:0");
    let port = listener.local_addr().expect("addr").port();
    // A request through the agent dumps the namespace too: the listener's cookie, again.
    agent.snapshot(&ns, &["-tln"]);
    let conns = ns.run(move || {
        (0..CONNS)
            .map(|_| connect_and_close(&listener))
            .collect::<Vec<_>>()
    });
    let wait = patience(Duration::from_secs(5));
    let deadline = Instant::now() + wait;
    let closed = loop {
        let out = agent.snapshot(&ns, &["--closed", "--format", "json"]);
        let closed: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .filter(|v: &Value| v["type"] == "closed")
            .collect();
        let children = closed
            .iter()
            .filter(|c| c["local_port"] == port && c["peer_port"] != 0)
            .count();
        if children >= CONNS || Instant::now() > deadline {
            break closed;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let children: Vec<&Value> = closed
        .iter()
        .filter(|c| c["local_port"] == port && c["peer_port"] != 0)
        .collect();
    assert_eq!(children.len(), CONNS, "one record per child: {children:#?}");
    let mut cookies: Vec<u64> = children
        .iter()
        .map(|c| c["cookie"].as_u64().expect("cookie"))
        .collect();
    cookies.sort();
    cookies.dedup();
    assert_eq!(
        cookies.len(),
        CONNS,
        "each child its own cookie: {children:#?}"
    );
    for conn in &conns {
        let (local, peer) = child_endpoints(conn);
        let child = children
            .iter()
            .find(|c| c["peer_port"] == conn.client.port())
            .unwrap_or_else(|| panic!("no record for {}: {children:#?}", conn.client));
        assert_eq!((addr(child, "local"), addr(child, "peer")), (local, peer));
        let path: Vec<&str> = child["states"]
            .as_array()
            .expect("states")
            .iter()
            .map(|s| s["state"].as_str().expect("state"))
            .collect();
        assert_eq!(
            path,
            ["SYN-RECV", "ESTAB", "CLOSE-WAIT", "LAST-ACK"],
            "{child}"
        );
        assert!(child["lifespan_ns"].as_u64().is_some(), "{child}");
        let client = closed
            .iter()
            .find(|c| c["local_port"] == conn.client.port())
            .unwrap_or_else(|| panic!("no client record {}: {closed:#?}", conn.client));
        assert_eq!(addr(client, "peer"), local, "{client}");
    }
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// Whether the kernel has tracepoint `group:name`, from tracefs (mounted here if needed).
fn kernel_has_event(group: &str, name: &str) -> bool {
    let events = Path::new(TRACEFS).join("events");
    if !events.exists() {
        let fs = c"tracefs";
        let target = c"/sys/kernel/tracing";
        // SAFETY: NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                fs.as_ptr(),
                target.as_ptr(),
                fs.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "mount tracefs: {}", std::io::Error::last_os_error());
    }
    assert!(events.join("sock/inet_sock_set_state").exists());
    events.join(group).join(name).exists()
}

#[test]
fn missing_hooks_are_named_and_not_fatal() {
    let hooks = [
        (
            "io-owners",
            [("sock", "sock_send_length"), ("sock", "sock_recv_length")],
        ),
        (
            "reset-endings",
            [("tcp", "tcp_send_reset"), ("tcp", "tcp_receive_reset")],
        ),
    ];
    let out = Command::new(netmon_bin())
        .arg("features")
        .output()
        .expect("run netmon features");
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{listing}");
    assert!(listing.starts_with("transitions       yes"), "{listing}");

    let ns = TestNetns::new();
    let only_ours = format!("netns = {}", ns.inum);
    let mut child = spawn_watch(&[&only_ours]);
    let rx = lines(child.stdout.take().expect("stdout"));
    let mut seen = Vec::new();
    wait_attached(&ns, &rx, &mut seen);
    interrupt(&child);
    let status = wait_with_timeout(&mut child, patience(Duration::from_secs(10)));
    let err = stderr_of(&mut child);
    assert!(
        status.success(),
        "a missing hook is not fatal: {status}; {err}"
    );

    for (feature, events) in hooks {
        let present = events.iter().all(|(g, n)| kernel_has_event(g, n));
        let line = listing
            .lines()
            .find(|l| l.starts_with(feature))
            .unwrap_or_else(|| panic!("{feature} not listed: {listing}"));
        let status_word = line.split_whitespace().nth(1);
        assert_eq!(
            status_word,
            Some(if present { "yes" } else { "no" }),
            "tracefs says {feature} is {}: {line}",
            if present { "there" } else { "missing" }
        );
        let named = err.contains(&format!("this kernel lacks {feature}"));
        assert_eq!(named, !present, "watch's stderr for {feature}: {err}");
    }
}

/// The socket iterator that serves `snapshot -tan` (netmon/src/iter.rs) loads on this kernel
/// and lists what sock_diag lists, field by field (a listener and both ends of a connection,
/// IPv4 and IPv6): where it cannot load, the agent and the fallback dump over sock_diag.
#[test]
fn the_socket_iterator_loads_and_lists_what_sock_diag_lists() {
    use netmon::{
        iter::TcpIter,
        netns::Netns,
        sock_diag::{self, Cancel, DiagSock, Families},
    };

    let ns = TestNetns::new();
    let _held = ns.run(|| {
        let mut held = Vec::new();
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let listener = TcpListener::bind(bind).expect("bind");
            let client = std::net::TcpStream::connect(listener.local_addr().expect("addr"))
                .expect("connect");
            let (server, _) = listener.accept().expect("accept");
            held.push((listener, client, server));
        }
        held
    });
    let iter = TcpIter::load()
        .unwrap_or_else(|e| panic!("loading the socket iterator: {:#}", anyhow::Error::new(e)));
    let netns = Netns::open(Path::new(&ns.path())).expect("open the test netns");
    let file = std::fs::File::open(ns.path()).expect("open the test netns");
    // What the iterator carries: no timers, no attributes but v6only.
    let strip = |socks: Vec<DiagSock>| -> BTreeMap<u64, DiagSock> {
        socks
            .into_iter()
            .map(|mut s| {
                s.timer = None;
                s.attrs = netmon::diag_ext::Attrs {
                    v6only: s.attrs.v6only,
                    ..Default::default()
                };
                (s.cookie, s)
            })
            .collect()
    };
    let diag = || {
        let never = Cancel::default();
        strip(
            sock_diag::dump_tcp_in_netns(&file, Families::ALL, sock_diag::SS_STATES, 0, &never)
                .expect("sock_diag dump"),
        )
    };
    let want = diag();
    assert_eq!(want.len(), 6, "two listeners, two connections: {want:#?}");
    let got = strip(iter.dump(&netns, None).expect("iterator dump"));
    assert_eq!(got, want, "the iterator's sockets vs sock_diag's");
}
