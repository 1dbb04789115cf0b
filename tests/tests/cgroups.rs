//! cgroup attribution: client and server in cgroup v2 directories the test makes (a systemd-style
//! service and a docker-style scope), checked on every transition, in snapshots against ss, and
//! through the `unit`/`cgroup`/`container` filters.

use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netmon_tests::{
    AgentProcess, Cgroups, ID, POD_CONTAINER, POD_UID, Reaped, TestNetns, UNIT, interrupt, lines,
    normalise,
    otlp::{attr, int, otlp_receiver, text},
    snapshot_without_agent, spawn_watch, ss_in, wait_attached, wait_with_timeout,
};
use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_tcp-peer");

fn first_line(child: &mut Reaped) -> u16 {
    child.first_line().parse().expect("a port")
}

fn server(cg: &Cgroups, ns: &TestNetns) -> (Reaped, u16) {
    server_in(cg, ns, &cg.scope())
}

fn server_in(cg: &Cgroups, ns: &TestNetns, rel: &str) -> (Reaped, u16) {
    let mut cmd = Command::new(PEER);
    cmd.args(["server", "127.0.0.1:0", "normal"])
        .stdout(Stdio::piped());
    let mut child = cg.spawn(ns, rel, cmd);
    let port = first_line(&mut child);
    (child, port)
}

/// A client that holds its connection until its stdin closes; returns it and its local port.
fn holding_client(cg: &Cgroups, ns: &TestNetns, port: u16) -> (Reaped, u16) {
    let mut cmd = Command::new(PEER);
    cmd.args(["client", &format!("127.0.0.1:{port}"), "hold-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cg.spawn(ns, &cg.service(), cmd);
    let local = first_line(&mut child);
    (child, local)
}

fn finish(mut child: Reaped) -> u32 {
    drop(child.stdin.take());
    let pid = child.id();
    let status = wait_with_timeout(&mut child, Duration::from_secs(10));
    assert!(status.success(), "tcp-peer {pid} failed: {status}");
    pid
}

/// JSON transitions on `port` from `rx` until `want` arrived or 10 s passed.
fn transitions(rx: &std::sync::mpsc::Receiver<String>, port: u16, want: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.len() < want && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["type"] == "transition" && (v["local_port"] == port || v["peer_port"] == port) {
                events.push(v);
            }
        }
    }
    // Anything more that would arrive.
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["type"] == "transition" && (v["local_port"] == port || v["peer_port"] == port) {
            events.push(v);
        }
    }
    events
}

/// All 10 transitions of the connection and the pre-existing listener's close carry their own
/// process's cgroup: the softirq ones (run in the peer's task) and the accepted socket's before
/// `accept()` too, since the kernel reads the socket's cgroup, not the task's.
#[test]
fn every_transition_names_its_sockets_unit_and_container() {
    let ns = TestNetns::new();
    let cg = Cgroups::new();
    // The listener exists before netmon starts.
    let (server, port) = server(&cg, &ns);
    let only_ours = format!("netns = {}", ns.inum);
    let mut watch = spawn_watch(&["--format", "json", &only_ours]);
    let rx = lines(watch.stdout.take().unwrap());
    wait_attached(&ns, &rx, &mut Vec::new());

    let (client, _) = holding_client(&cg, &ns, port);
    let client_pid = finish(client);
    let server_pid = finish(server);
    let events = transitions(&rx, port, 11);
    interrupt(&watch);
    wait_with_timeout(&mut watch, Duration::from_secs(10));
    assert_eq!(events.len(), 11, "{events:#?}");

    let mut softirq = 0;
    for e in &events {
        let is_client = e["peer_port"] == port;
        let (owner, path) = if is_client {
            (client_pid, cg.service())
        } else {
            (server_pid, cg.scope())
        };
        assert_eq!(e["cgroup"], path.as_str(), "{e}");
        assert_eq!(e["cgroup_source"], "socket", "{e}");
        assert!(e["cgroup_id"].as_u64().is_some_and(|id| id > 1), "{e}");
        assert_eq!(e["cgroup_unknown"], Value::Null, "{e}");
        if is_client {
            assert_eq!(e["unit"], UNIT, "{e}");
            assert_eq!(e["container_id"], Value::Null, "{e}");
        } else {
            assert_eq!(e["unit"], format!("docker-{ID}.scope"), "{e}");
            assert_eq!(e["container_id"], ID, "{e}");
        }
        if e["task"]["pid"] != owner {
            softirq += 1;
        }
    }
    assert!(
        softirq >= 4,
        "expected transitions run outside the owner: {events:#?}"
    );
    let child_early: Vec<&Value> = events
        .iter()
        .filter(|e| e["old_state"] == "LISTEN" && e["new_state"] == "SYN-RECV")
        .collect();
    assert_eq!(child_early.len(), 1, "{events:#?}");
    assert_eq!(child_early[0]["container_id"], ID, "before accept()");
    let listener_close = events
        .iter()
        .find(|e| e["old_state"] == "LISTEN" && e["new_state"] == "CLOSE")
        .expect("the listener that predates netmon closes");
    assert_eq!(listener_close["container_id"], ID);
}

/// `unit =` (decided in userspace) and `cgroup PATH` (one compare in the kernel) select the
/// client's transitions only, in `watch`.
#[test]
fn watch_filters_by_unit_and_cgroup() {
    let ns = TestNetns::new();
    let cg = Cgroups::new();
    let unit = format!("netns = {} and unit = {UNIT}", ns.inum);
    let path = format!("netns = {} and cgroup {}", ns.inum, cg.service());
    let mut watches: Vec<(Reaped, std::sync::mpsc::Receiver<String>)> = [unit, path]
        .iter()
        .map(|f| {
            let mut w = spawn_watch(&["--format", "json", f]);
            let rx = lines(w.stdout.take().unwrap());
            (w, rx)
        })
        .collect();
    // Attached once a connection in the unit shows up in both.
    let (server, port) = server(&cg, &ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attached = [false, false];
    while attached.contains(&false) {
        assert!(
            Instant::now() < deadline,
            "watch never showed the unit's connections"
        );
        let mut cmd = Command::new(PEER);
        cmd.args(["client", "127.0.0.1:1", "refused"]);
        let mut c = cg.spawn(&ns, &cg.service(), cmd);
        wait_with_timeout(&mut c, Duration::from_secs(10));
        for (i, (_, rx)) in watches.iter().enumerate() {
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                attached[i] |= line.contains("\"peer_port\":1,");
            }
        }
    }

    let (client, _) = holding_client(&cg, &ns, port);
    finish(client);
    finish(server);
    for (mut w, rx) in watches.drain(..) {
        let events = transitions(&rx, port, 5);
        interrupt(&w);
        wait_with_timeout(&mut w, Duration::from_secs(10));
        assert_eq!(
            events.len(),
            5,
            "the client's 5 transitions only: {events:#?}"
        );
        for e in &events {
            assert_eq!(e["unit"], UNIT, "{e}");
            assert_eq!(e["peer_port"], port, "{e}");
        }
    }
    // A cgroup that does not exist is an error that says so, before anything is attached.
    let mut bad = spawn_watch(&["cgroup", "/no/such.slice"]);
    let status = wait_with_timeout(&mut bad, Duration::from_secs(20));
    let mut err = String::new();
    std::io::Read::read_to_string(bad.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("no such cgroup"), "{err}");
}

/// `netmon snapshot --cgroup` prints what `ss --cgroup` prints, and the unit and container
/// filters and JSON labels select and name the right sockets.
#[test]
fn snapshot_matches_ss_cgroup_and_filters_by_unit() {
    let ns = TestNetns::new();
    let cg = Cgroups::new();
    let (server, port) = server(&cg, &ns);
    let (mut client, client_port) = holding_client(&cg, &ns, port);
    // Let the server accept, so every socket is in its final state.
    std::thread::sleep(Duration::from_millis(200));

    let ss = ss_in(&ns, &["-tanH", "--cgroup"]);
    let netmon = snapshot_without_agent(&ns, &["-tanH", "--cgroup"]);
    assert!(ss.contains(&cg.scope()), "{ss}");
    assert_eq!(
        normalise(&netmon, 8),
        normalise(&ss, 8),
        "ss:\n{ss}\nnetmon:\n{netmon}"
    );

    let by_unit = snapshot_without_agent(&ns, &["-tanH", &format!("unit = {UNIT}")]);
    let rows = normalise(&by_unit, 5);
    assert_eq!(rows.len(), 1, "{by_unit}");
    assert!(rows[0].contains(&format!(":{client_port} ")), "{by_unit}");
    let by_container = snapshot_without_agent(&ns, &["-tanH", "container", &ID[..12]]);
    assert_eq!(
        normalise(&by_container, 5).len(),
        2,
        "listener and accepted: {by_container}"
    );

    let json = snapshot_without_agent(&ns, &["-tan", "-f", "json"]);
    let recs: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for r in &recs {
        let client = r["local_port"] == client_port;
        assert_eq!(
            r["unit"],
            if client {
                UNIT.into()
            } else {
                format!("docker-{ID}.scope")
            }
        );
        let want_container = if client { Value::Null } else { ID.into() };
        assert_eq!(r["container_id"], want_container, "{r}");
    }
    assert_eq!(recs.len(), 3, "{json}");

    let count = snapshot_without_agent(&ns, &["-tanH", "--count", "container"]);
    assert_eq!(
        normalise(&count, 2),
        vec![format!("1 -"), format!("2 {ID}")]
    );

    // ss's own `cgroup` filter and netmon's (the kernel-side compare is watch's; here the
    // same predicate on the dump) agree. ss's filter lexer drops a `\`, so the scope's path.
    let path = cg.scope();
    let ss = ss_in(&ns, &["-tanH", "cgroup", &path]);
    let netmon = snapshot_without_agent(&ns, &["-tanH", "cgroup", &path]);
    assert_eq!(
        normalise(&netmon, 5),
        normalise(&ss, 5),
        "ss:\n{ss}\nnetmon:\n{netmon}"
    );
    assert_eq!(normalise(&netmon, 5).len(), 2, "{netmon}");

    client.stdin.as_mut().unwrap().flush().ok();
    finish(client);
    finish(server);
}

/// OTLP records carry the cgroup labels of their own end: the client's record its systemd
/// unit, the server's (in a pod's container) `container.id` and `k8s.pod.uid`.
#[test]
fn otlp_records_carry_each_ends_unit_container_and_pod() {
    let ns = TestNetns::new();
    let cg = Cgroups::new();
    let (receiver, records) = otlp_receiver();
    // Only this namespace's connections: a storm elsewhere on the machine would fill the
    // exporter's bounded queue, whose drops are counted, not waited for.
    let only_ours = ns.inum.to_string();
    let agent = AgentProcess::start_reading_stderr(&[
        "--otlp-endpoint",
        &format!("http://{receiver}"),
        "--only-netns",
        &only_ours,
    ]);
    let (server, port) = server_in(&cg, &ns, &cg.pod_container());
    let (client, client_port) = holding_client(&cg, &ns, port);
    let client_pid = finish(client);
    finish(server);

    // Ours: the two ends of the connection from client_port to port, in our namespace.
    let mut ends = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ends.len() < 2 && Instant::now() < deadline {
        let Ok(r) = records.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let ours = int(attr(&r, "netmon.netns")) == Some(i64::from(ns.inum))
            && int(attr(&r, "source.port")) == Some(i64::from(client_port))
            && int(attr(&r, "destination.port")) == Some(i64::from(port));
        if ours {
            ends.push(r);
        }
    }
    drop(agent);
    assert_eq!(ends.len(), 2, "both ends of the connection: {ends:#?}");
    let end = |direction: &str| {
        ends.iter()
            .find(|r| text(attr(r, "netmon.direction")) == Some(direction))
            .unwrap_or_else(|| panic!("no {direction} record: {ends:#?}"))
    };
    let client = end("outbound");
    assert_eq!(
        int(attr(client, "process.pid")),
        Some(i64::from(client_pid)),
        "{client:?}"
    );
    assert_eq!(
        text(attr(client, "netmon.systemd.unit")),
        Some(UNIT),
        "{client:?}"
    );
    assert_eq!(attr(client, "container.id"), None, "{client:?}");
    assert_eq!(attr(client, "k8s.pod.uid"), None, "{client:?}");
    let server = end("inbound");
    assert_eq!(
        text(attr(server, "container.id")),
        Some(POD_CONTAINER),
        "{server:?}"
    );
    assert_eq!(
        text(attr(server, "k8s.pod.uid")),
        Some(POD_UID),
        "{server:?}"
    );
    assert_eq!(
        text(attr(server, "netmon.systemd.unit")),
        Some(format!("cri-containerd-{POD_CONTAINER}.scope").as_str()),
        "{server:?}"
    );
}
