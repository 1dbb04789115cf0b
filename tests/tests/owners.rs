//! Owner attribution and connection endings, with client and server in processes of their own.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netmon_tests::{
    AgentProcess, Reaped, TestNetns, interrupt, lines, spawn_watch, wait_attached,
    wait_with_timeout,
};
use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_tcp-peer");

/// Starts `tcp-peer server` in `ns`; returns it and its port.
fn server(ns: &TestNetns, bind: &'static str, mode: &'static str) -> (Reaped, u16) {
    let mut child = Reaped::new(ns.run(move || {
        Command::new(PEER)
            .args(["server", bind, mode])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tcp-peer server")
    }));
    let port = child.first_line().parse().expect("server port");
    (child, port)
}

fn client(ns: &TestNetns, addr: String, mode: &'static str) -> Reaped {
    Reaped::new(ns.run(move || {
        Command::new(PEER)
            .args(["client", &addr, mode])
            .spawn()
            .expect("spawn tcp-peer client")
    }))
}

fn finish(mut child: Reaped) -> u32 {
    let pid = child.id();
    let status = wait_with_timeout(&mut child, Duration::from_secs(10));
    assert!(status.success(), "tcp-peer {pid} failed: {status}");
    pid
}

fn host(bind: &str) -> &str {
    if bind.starts_with('[') {
        "[::1]"
    } else {
        "127.0.0.1"
    }
}

/// Every event of both sockets names its owner, including the ones the kernel runs in the
/// peer's softirq; the server's listener predates netmon (found by the /proc scan).
fn owners_of_every_event(bind: &'static str) {
    let ns = TestNetns::new();
    let (server, port) = server(&ns, bind, "normal");
    let only_ours = format!("netns = {}", ns.inum);
    let mut watch = spawn_watch(&["--format", "json", &only_ours]);
    let rx = lines(watch.stdout.take().unwrap());
    let mut seen = Vec::new();
    wait_attached(&ns, &rx, &mut seen);

    let client = client(&ns, format!("{}:{port}", host(bind)), "normal");
    let client_pid = finish(client);
    let server_pid = finish(server);

    let ours = |v: &Value| {
        v["type"] == "transition"
            && v["netns"] == ns.inum
            && (v["local_port"] == port || v["peer_port"] == port)
    };
    let mut events: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Client 5, server child 5, listener 1 (its LISTEN happened before netmon).
    while events.len() < 11 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let v: Value = serde_json::from_str(&line).unwrap();
            if ours(&v) {
                events.push(v);
            }
        }
    }
    interrupt(&watch);
    wait_with_timeout(&mut watch, Duration::from_secs(10));
    assert_eq!(events.len(), 11, "{events:#?}");

    let mut softirq_seen = 0;
    for e in &events {
        let is_client = e["peer_port"] == port;
        let want = if is_client { client_pid } else { server_pid };
        assert_eq!(e["owner"]["pid"], want, "owner of {e}");
        assert_eq!(e["owner"]["comm"], "tcp-peer", "{e}");
        if e["task"]["pid"] != want {
            softirq_seen += 1;
        }
    }
    // On loopback the handshake and FIN processing run in the peer's task: the events whose
    // task is not the owner must still name the owner.
    assert!(
        softirq_seen >= 4,
        "expected transitions run outside the owner: {events:#?}"
    );
}

#[test]
fn owners_of_every_event_ipv4() {
    owners_of_every_event("127.0.0.1:0");
}

#[test]
fn owners_of_every_event_ipv6() {
    owners_of_every_event("[::1]:0");
}

/// Normal close, reset and refused connect, for v4 and v6, as `snapshot --closed` shows them.
#[test]
fn endings_are_classified_with_their_owner() {
    let ns = TestNetns::new();
    let agent = AgentProcess::start();
    let mut expected = Vec::new();
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        for mode in ["normal", "reset"] {
            let (server, port) = server(&ns, bind, mode);
            let client_pid = finish(client(&ns, format!("{}:{port}", host(bind)), mode));
            let server_pid = finish(server);
            let (client_end, server_end) = match mode {
                "normal" => ("normal", "normal"),
                _ => ("reset-received", "reset-sent"),
            };
            expected.push((port, true, client_pid, client_end));
            expected.push((port, false, server_pid, server_end));
        }
        // A port nobody listens on: take one from a listener that is gone.
        let (server, port) = server(&ns, bind, "normal");
        let mut server = server;
        server.kill().unwrap();
        server.wait().unwrap();
        let client_pid = finish(client(&ns, format!("{}:{port}", host(bind)), "refused"));
        expected.push((port, true, client_pid, "refused"));
    }
    std::thread::sleep(Duration::from_millis(200));
    let out = agent.snapshot(&ns, &["--closed", "--format", "json"]);
    let closed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (port, is_client, pid, end) in expected {
        let side = |c: &&Value| {
            if is_client {
                c["peer_port"] == port
            } else {
                c["local_port"] == port && c["peer_port"] != 0
            }
        };
        let found: Vec<&Value> = closed.iter().filter(side).collect();
        assert_eq!(found.len(), 1, "port {port} client={is_client}: {found:#?}");
        assert_eq!(found[0]["end"], end, "{}", found[0]);
        assert_eq!(found[0]["owner"]["pid"], pid, "{}", found[0]);
    }
}
