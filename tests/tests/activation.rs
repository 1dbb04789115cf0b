//! Socket activation: the agent serves the listening socket a service manager passes it.
//!
//! The socket is passed by systemd's own `systemd-socket-activate`, which binds it, sets
//! LISTEN_FDS/LISTEN_PID and execs the daemon with the socket at fd 3, as systemd does for
//! netmon-agent.socket.

use std::{
    io::Read,
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netmon::privileges;
use netmon_tests::{TestNetns, netmon_bin, stderr_of, wait_with_timeout};

#[test]
fn agent_serves_a_socket_passed_by_systemd_socket_activate_and_answers_a_snapshot() {
    let ns = TestNetns::new();
    let listener = ns.run(|| TcpListener::bind("127.0.0.1:0").expect("bind in the test netns"));
    let port = listener.local_addr().expect("local_addr").port();
    std::fs::create_dir_all("/run/netmon-test").expect("create /run/netmon-test");
    let pid = std::process::id();
    let passed = format!("/run/netmon-test/activated-{pid}.sock");
    // The agent's own --socket: it must stay unbound when a socket is passed.
    let own = format!("/run/netmon-test/not-bound-{pid}.sock");
    std::fs::remove_file(&passed).ok();
    std::fs::remove_file(&own).ok();

    let mut manager = Command::new("systemd-socket-activate")
        .args(["--listen", &passed, "--"])
        .arg(netmon_bin())
        .args(["agent", "--config", "/dev/null", "--socket", &own])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn systemd-socket-activate (apt package systemd; cargo xtask setup)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Path::new(&passed).exists() {
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate did not bind {passed} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The first connection may be what starts the agent; it waits in the listen backlog.
    let mut snapshot = Command::new(netmon_bin());
    snapshot
        .args(["snapshot", "-tanl"])
        .env("NETMON_AGENT_SOCKET", &passed)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut client = ns.run(move || snapshot.spawn().expect("spawn netmon snapshot"));
    let status = wait_with_timeout(&mut client, Duration::from_secs(30));
    let mut table = String::new();
    client
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut table)
        .expect("read snapshot");
    let notes = stderr_of(&mut client);
    assert!(status.success(), "snapshot failed ({status}): {notes}");
    assert!(
        !notes.contains("one-shot"),
        "the snapshot fell back instead of reaching the agent: {notes}"
    );
    assert!(
        table.contains(&format!("127.0.0.1:{port}")),
        "the agent's table lacks the test's listener on port {port}:\n{table}"
    );
    // Only the agent keeps closed connections: --closed fails without one.
    let mut closed = Command::new(netmon_bin());
    closed
        .args(["snapshot", "--closed", "1m"])
        .env("NETMON_AGENT_SOCKET", &passed);
    let out = ns.run(move || closed.output().expect("run netmon snapshot --closed"));
    assert!(
        out.status.success(),
        "--closed through the passed socket: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // systemd-socket-activate execs the daemon: the process we started is now the agent.
    let exe = std::fs::read_link(format!("/proc/{}/exe", manager.id())).expect("read exe");
    assert_eq!(exe.file_name(), netmon_bin().file_name(), "{exe:?}");
    assert!(
        !Path::new(&own).exists(),
        "the agent bound its own socket as well"
    );
    // Serving, it keeps only what answering needs (started as root, it had every capability).
    let status = std::fs::read_to_string(format!("/proc/{}/status", manager.id())).unwrap();
    for field in ["CapEff", "CapPrm"] {
        assert_eq!(
            privileges::status_mask(&status, field),
            Some(privileges::mask(privileges::AGENT_KEEPS)),
            "{field} of the agent"
        );
    }
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(manager.id() as i32, libc::SIGTERM) };
    let status = wait_with_timeout(&mut manager, Duration::from_secs(10));
    let log = stderr_of(&mut manager);
    assert!(status.success(), "agent exit {status}: {log}");
    assert!(
        log.contains("serving the socket passed by the service manager"),
        "{log}"
    );
    // The socket file is the manager's to remove, not the agent's.
    assert!(
        Path::new(&passed).exists(),
        "the agent removed the passed socket"
    );
    std::fs::remove_file(&passed).ok();
    drop(listener);
}
