//! The agent and `watch` against hostile local users: a namespace owner spoofing sock_diag
//! replies, a process whose name is a terminal escape sequence, a symlink at the socket path,
//! two agents on one socket.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netmon_tests::{
    AgentProcess, Stack, TestNetns, agent_socket_path, connect_and_close_many, hold_every_state,
    interrupt, lines, normalise, rss_kib, spawn_agent, spawn_watch, ss_in, stderr_of,
    wait_attached, wait_serving, wait_with_timeout,
};
use serde_json::Value;

const FLOOD: &str = env!("CARGO_BIN_EXE_nl-flood");
const PEER: &str = env!("CARGO_BIN_EXE_tcp-peer");

/// cookie -> (age_ns, state_ns) of the sockets of `ns` the agent knows the age of.
fn ages(agent: &AgentProcess, ns: &TestNetns) -> HashMap<u64, (u64, u64)> {
    agent
        .snapshot(ns, &["-tan", "-e", "--format", "json"])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|r| {
            Some((
                r["cookie"].as_u64()?,
                (r["age_ns"].as_u64()?, r["state_ns"].as_u64()?),
            ))
        })
        .collect()
}

/// `netmon snapshot ARGS` as root in `ns`: its output, or a panic if no answer within `limit`.
fn snapshot_within(agent: &AgentProcess, ns: &TestNetns, args: &[&str], limit: Duration) -> String {
    let mut cmd = Command::new(netmon_tests::netmon_bin());
    cmd.arg("snapshot")
        .args(args)
        .env("NETMON_AGENT_SOCKET", &agent.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ns.run(move || cmd.spawn().expect("spawn snapshot"));
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(out).unwrap());
    let status = wait_with_timeout(&mut child, limit);
    assert!(
        status.success(),
        "snapshot {args:?}: {}",
        stderr_of(&mut child)
    );
    reader.join().unwrap()
}

/// The owner of a user namespace (any user: here `nobody`, via `unshare -Urn`) holds
/// CAP_NET_ADMIN in its network namespace and may unicast to the agent's netlink port there.
/// Its fake replies must neither stall the agent (it keeps draining, answers, stops on SIGTERM,
/// stays small) nor touch the entries of other namespaces.
#[test]
fn spoofed_sock_diag_replies_from_a_user_namespace_change_nothing() {
    let victim = TestNetns::new();
    let agent = AgentProcess::start();
    // Made while the agent runs, so it knows their ages.
    let _fixture = hold_every_state(&victim, Stack::V4);
    let before = ages(&agent, &victim);
    assert!(
        before.len() >= 10,
        "ages known for too few sockets: {before:?}"
    );
    let rss_before = rss_kib(agent.pid());

    let mut flood = Command::new("setpriv");
    flood
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
        .args([
            "unshare",
            "-Urn",
            FLOOD,
            &agent.pid().to_string(),
            "15",
            "3000",
        ])
        .args(before.keys().map(u64::to_string))
        .stdout(Stdio::piped());
    let mut flood = flood.spawn().expect("spawn setpriv unshare nl-flood");
    let mut flood_out = BufReader::new(flood.stdout.take().unwrap());
    let mut line = String::new();
    flood_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "nl-flood did not start");

    // Each --all-netns snapshot dumps the flooder's namespace too.
    let limit = Duration::from_secs(10);
    for _ in 0..3 {
        snapshot_within(&agent, &victim, &["-tanH", "--all-netns"], limit);
    }
    // Still serving the victim's namespace exactly, and still draining the ring.
    let ss = normalise(&ss_in(&victim, &["-tanH"]), 5);
    let got = snapshot_within(&agent, &victim, &["-tanH"], limit);
    assert_eq!(normalise(&got, 5), ss, "snapshot during the flood vs ss");
    let port = connect_and_close_many(&victim, 50);
    let closed = snapshot_within(
        &agent,
        &victim,
        &["--closed", "-H", &format!("dport = :{port}")],
        limit,
    );
    assert_eq!(
        closed.lines().count(),
        50,
        "closed during the flood: {closed}"
    );

    // Nothing of the victim's table was rewritten: ages still known, states not reset.
    let after = ages(&agent, &victim);
    for (cookie, (age, in_state)) in &before {
        let Some((age2, in_state2)) = after.get(cookie) else {
            panic!("socket {cookie:x} lost its age: before {before:?}, after {after:?}");
        };
        assert!(
            age2 >= age && in_state2 >= in_state,
            "socket {cookie:x} was reset: {age}/{in_state} -> {age2}/{in_state2}"
        );
    }
    let all = snapshot_within(&agent, &victim, &["-tanH", "--all-netns"], limit);
    assert!(!all.contains("10.6.6."), "fake records listed: {all}");
    let rss_after = rss_kib(agent.pid());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "agent RSS grew from {rss_before} to {rss_after} KiB"
    );

    // SIGTERM is obeyed while the flood goes on.
    let status = agent.stop(Duration::from_secs(5));
    assert!(status.success(), "agent exit: {status}");
    // The kernel refused the fake replies: the agent's socket takes only the kernel's. (A
    // datagram can slip in during the instant between a dump socket's autobind and its
    // connect inside the kernel; the agent drops those, and checks every sender anyway.)
    assert!(
        wait_with_timeout(&mut flood, Duration::from_secs(30)).success(),
        "nl-flood failed"
    );
    let mut tally = String::new();
    flood_out.read_line(&mut tally).unwrap();
    let counts: Vec<u64> = tally
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        counts.len() == 2 && counts[0] < 100 && counts[1] > 1000,
        "nl-flood: {tally}"
    );
}

/// A comm is any 15 bytes a process chooses: in text it must not reach the terminal raw.
#[test]
fn comm_with_terminal_escapes_is_escaped_in_watch_and_snapshot_text() {
    const EVIL: &str = "\x1b[8mEVIL\nFAKE";
    const SHOWN: &str = "\\x1b[8mEVIL\\x0aFAKE";
    let ns = TestNetns::new();
    let agent = AgentProcess::start();
    let only_ours = format!("netns = {}", ns.inum);
    let mut watch = spawn_watch(&[&only_ours]);
    let rx = lines(watch.stdout.take().unwrap());
    let mut seen = Vec::new();
    wait_attached(&ns, &rx, &mut seen);

    let mut server = ns.run(|| {
        Command::new(PEER)
            .args(["server", "127.0.0.1:0", "normal"])
            .env("TCP_PEER_COMM", EVIL)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tcp-peer server")
    });
    let mut line = String::new();
    BufReader::new(server.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().unwrap();
    assert_eq!(
        std::fs::read(format!("/proc/{}/comm", server.id())).unwrap(),
        format!("{EVIL}\n").as_bytes()
    );

    let listening = agent.snapshot(&ns, &["-tlnpH", &format!("sport = :{port}")]);
    assert_eq!(listening.lines().count(), 1, "{listening:?}");
    assert!(!listening.contains('\x1b'), "{listening:?}");
    assert!(
        listening.contains(&format!("users:((\"{SHOWN}\",pid={}", server.id())),
        "{listening:?}"
    );
    let json = agent.snapshot(&ns, &["-tlnp", "--format", "json"]);
    let row: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(row["owner"]["comm"], EVIL, "JSON keeps the name exact");

    let mut client = ns.run(move || {
        Command::new(PEER)
            .args(["client", &format!("127.0.0.1:{port}"), "normal"])
            .spawn()
            .expect("spawn tcp-peer client")
    });
    assert!(wait_with_timeout(&mut client, Duration::from_secs(10)).success());
    assert!(wait_with_timeout(&mut server, Duration::from_secs(10)).success());
    // The listener's LISTEN -> CLOSE is its last event.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut evil_lines = 0;
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        assert!(!line.contains('\x1b'), "raw escape: {line:?}");
        assert!(!line.starts_with("FAKE"), "a forged line: {line:?}");
        if line.contains(SHOWN) {
            evil_lines += 1;
        }
        if line.contains(&format!(":{port} ")) && line.contains("LISTEN -> CLOSE") {
            assert!(line.contains(SHOWN), "{line:?}");
            break;
        }
    }
    assert!(
        evil_lines >= 2,
        "the listener's events name it: {evil_lines}"
    );
    interrupt(&watch);
    wait_with_timeout(&mut watch, Duration::from_secs(10));
}

fn refused(socket: &Path) -> String {
    let mut child = spawn_agent(socket);
    let status = wait_with_timeout(&mut child, Duration::from_secs(20));
    let err = stderr_of(&mut child);
    assert!(!status.success(), "the agent started: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

/// The agent never follows a symlink it finds at its socket path or directory: it says why it
/// will not start and touches nothing.
#[test]
fn agent_refuses_a_symlink_at_its_socket_path() {
    let socket = agent_socket_path();
    let dir = socket.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let target = dir.join(format!("target-{}", std::process::id()));
    std::fs::write(&target, "not yours").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&target, &socket).unwrap();
    let err = refused(&socket);
    assert!(err.contains("symlink"), "{err}");
    assert!(err.contains(&socket.display().to_string()), "{err}");
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::symlink_metadata(&socket).unwrap().is_symlink());
    std::fs::remove_file(&socket).unwrap();

    // A directory that is a symlink (to one another user could write to) is refused too.
    let real = dir.join(format!("real-{}", std::process::id()));
    std::fs::create_dir_all(&real).unwrap();
    let linked = dir.join(format!("linked-{}", std::process::id()));
    std::os::unix::fs::symlink(&real, &linked).unwrap();
    let err = refused(&linked.join("agent.sock"));
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
    std::fs::remove_file(&linked).unwrap();
    std::fs::remove_dir(&real).unwrap();
    std::fs::remove_file(&target).unwrap();

    // A socket directory others may write to is refused, and one netmon makes is not.
    let open = dir.join(format!("open-{}", std::process::id()));
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = refused(&open.join("agent.sock"));
    assert!(err.contains("writable"), "{err}");
    std::fs::remove_dir(&open).unwrap();
    let fresh = dir.join(format!("fresh-{}", std::process::id()));
    let agent = AgentProcess::start_at(fresh.join("agent.sock"));
    let mode = std::fs::symlink_metadata(&fresh)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "{mode:o}");
    drop(agent);
    std::fs::remove_dir_all(&fresh).unwrap();
}

fn exits_refusing(child: &mut Child) -> String {
    let status = wait_with_timeout(child, Duration::from_secs(20));
    let err = stderr_of(child);
    assert!(!status.success(), "a second agent ran: {err}");
    err
}

/// Two agents started at once on one socket: one serves, the other says so and exits, and
/// its exit leaves the first one's socket in place.
#[test]
fn two_agents_at_once_one_serves() {
    let socket = agent_socket_path();
    let mut a = spawn_agent(&socket);
    let mut b = spawn_agent(&socket);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut winner, mut loser) = loop {
        if a.try_wait().unwrap().is_some() {
            break (b, a);
        }
        if b.try_wait().unwrap().is_some() {
            break (a, b);
        }
        assert!(
            Instant::now() < deadline,
            "both agents still run after 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = exits_refusing(&mut loser);
    assert!(err.contains("another agent"), "{err}");
    assert!(
        err.contains(&winner.id().to_string()),
        "names its pid: {err}"
    );
    wait_serving(&socket, &mut winner);
    let agent = AgentProcess::adopt(winner, socket.clone());
    let ns = TestNetns::new();
    assert!(agent.snapshot(&ns, &["-a"]).starts_with("State"));

    // Someone removes the socket of the running agent: a new agent still refuses (the lock
    // is the running agent's), so the old one can never delete a newer one's socket on exit.
    std::fs::remove_file(&socket).unwrap();
    let mut c = spawn_agent(&socket);
    let err = exits_refusing(&mut c);
    assert!(err.contains("another agent"), "{err}");
    assert!(agent.stop(Duration::from_secs(10)).success());

    // After it stopped, a new one starts on the same path.
    let again = AgentProcess::start_at(socket.clone());
    assert!(again.snapshot(&ns, &["-a"]).starts_with("State"));
    // An agent killed without cleaning up leaves a socket file; the next one replaces it.
    let pid = again.pid();
    // SAFETY: our own child, by pid.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    drop(again);
    assert!(
        std::fs::symlink_metadata(&socket).is_ok(),
        "socket file left"
    );
    let last = AgentProcess::start_at(socket.clone());
    assert!(last.snapshot(&ns, &["-a"]).starts_with("State"));
}
