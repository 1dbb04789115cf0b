//! netmon as a user runs it: the real binary, its output, its exit codes.

use std::{
    net::TcpListener,
    process::Command,
    time::{Duration, Instant},
};

use netmon::clock::Clock;
use netmon_tests::{
    TestNetns, agent_socket_path, connect_and_close, connect_and_close_many, interrupt, lines,
    netmon_bin, require_root, spawn_agent, spawn_watch, stderr_of, wait_attached,
    wait_with_timeout,
};
use serde_json::Value;

#[test]
fn watch_json_shows_all_10000_transitions_of_1000_connections() {
    let ns = TestNetns::new();
    // Only this test's namespace (decided in the kernel): a storm elsewhere on the machine must
    // not fill the ring this test checks for losses.
    let only_ours = format!("netns = {}", ns.inum);
    let mut child = spawn_watch(&["--format", "json", &only_ours]);
    let rx = lines(child.stdout.take().unwrap());
    let mut out = Vec::new();
    wait_attached(&ns, &rx, &mut out);

    const CONNS: usize = 1000;
    let port = connect_and_close_many(&ns, CONNS);
    // Listener close is the last transition; wait for it, then stop.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ours = |v: &Value| {
        v["type"] == "transition"
            && v["netns"] == ns.inum
            && (v["local_port"] == port || v["peer_port"] == port)
    };
    let mut count = 0usize;
    let mut losses = Vec::new();
    let mut records = |line: &str, count: &mut usize| {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["type"] == "loss" {
            losses.push(v.clone());
        }
        if ours(&v) {
            *count += 1;
        }
        v
    };
    for line in &out {
        records(line, &mut count);
    }
    while count < CONNS * 10 + 2 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            records(&line, &mut count);
        }
    }
    interrupt(&child);
    let status = wait_with_timeout(&mut child, Duration::from_secs(10));
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        records(&line, &mut count);
    }
    assert!(losses.is_empty(), "losses reported: {losses:?}");
    assert_eq!(
        count,
        CONNS * 10 + 2,
        "1000 connections x 10 transitions + the listener's 2"
    );
    assert!(status.success(), "Ctrl-C must exit 0, got {status}");
    let err = stderr_of(&mut child);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn watch_exits_quietly_when_the_reader_goes_away() {
    let ns = TestNetns::new();
    // Only this test's namespace: other activity on the machine must not write to the pipe.
    let only_ours = format!("netns = {}", ns.inum);
    let mut child = spawn_watch(&[&only_ours]);
    let rx = lines(child.stdout.take().unwrap());
    let mut out = Vec::new();
    wait_attached(&ns, &rx, &mut out);
    assert!(out[0].starts_with("TIME(UTC)"), "header first: {out:?}");
    // Like `| head`: the reader closes the pipe; the next writes fail with EPIPE.
    drop(rx);
    let listener = ns.run(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let listener = std::sync::Arc::new(listener);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "netmon kept running after its reader left"
        );
        let l = listener.clone();
        ns.run(move || connect_and_close(&l));
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit {status}");
    let err = stderr_of(&mut child);
    assert!(err.is_empty(), "nothing on stderr, got: {err}");
}

#[test]
fn watch_reports_losses_in_the_stream_and_on_stderr() {
    let ns = TestNetns::new();
    let only_ours = format!("netns = {}", ns.inum);
    let mut child = spawn_watch(&["--format", "json", "--ring-size", "4096", &only_ours]);
    let rx = lines(child.stdout.take().unwrap());
    let mut out = Vec::new();
    wait_attached(&ns, &rx, &mut out);
    // Pause the reader so the one-page ring overflows.
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
    ns.run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            connect_and_close(&listener);
        }
    });
    let resumed_ns = Clock::mono_now_ns();
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lost = 0u64;
    while lost == 0 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["type"] == "loss" {
                assert_eq!(v["kind"], "ring_full", "{v}");
                lost += v["count"].as_u64().unwrap();
                // Noticed at the first counter reading after the reader resumed.
                let seen = v["mono_ns"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no mono_ns: {v}"));
                assert!(resumed_ns <= seen && seen <= Clock::mono_now_ns(), "{v}");
                let time = v["time"].as_str().unwrap_or_else(|| panic!("no time: {v}"));
                assert!(time.len() == 27 && time.ends_with('Z'), "{v}");
            }
        }
    }
    interrupt(&child);
    let status = wait_with_timeout(&mut child, Duration::from_secs(10));
    assert!(lost > 0, "no loss record in the stream");
    assert!(status.success());
    let err = stderr_of(&mut child);
    assert!(
        err.contains("lost") && err.contains("transitions"),
        "stderr: {err}"
    );
}

#[test]
fn watch_without_privileges_prints_one_line_and_fails() {
    require_root();
    // As nobody, with no capabilities.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(netmon_bin())
        .arg("watch")
        .output()
        .expect("run setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("root") && err.contains("CAP_BPF") && err.contains("CAP_PERFMON"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn snapshot_with_a_broken_filter_points_at_its_end_and_fails() {
    // Parsing comes before anything else: no agent, no root, no namespace needed.
    let filter = "dport = :ssh or";
    let out = Command::new(netmon_bin())
        .args(["snapshot", filter])
        .env("NETMON_AGENT_SOCKET", "/nonexistent/netmon.sock")
        .output()
        .expect("run netmon snapshot");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "message, filter, carets: {err}");
    assert!(lines[0].starts_with("netmon: filter: "), "{err}");
    assert!(lines[0].contains("after `or`"), "{err}");
    let column = lines[1].find(filter).expect("the filter is echoed");
    // One caret, just past the last character: something is missing there.
    assert_eq!(
        lines[2],
        format!("{}^", " ".repeat(column + filter.len())),
        "{err}"
    );
}

/// Whether `pid` has a handler for SIGINT (bit 1 of `SigCgt` in /proc/PID/status).
fn catches_sigint(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGINT - 1)) != 0)
}

/// BPF links `pid` holds (each fd whose fdinfo has a `link_id`).
fn bpf_links(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|info| info.contains("link_id:")))
        .count()
}

/// Ctrl-C during the slow start (attach, then the first dump of every namespace) stops
/// `watch` and the agent cleanly: their handler is in place before the first program is
/// attached, so the signal never kills them half-way (the bench once saw `signal: 2`).
#[test]
fn ctrl_c_while_starting_exits_cleanly() {
    require_root();
    let socket = agent_socket_path();
    for (what, mut child) in [
        ("watch", spawn_watch(&["--format", "json"])),
        ("agent", spawn_agent(&socket)),
    ] {
        // Drained, so that other traffic on the machine (watch shows every namespace) never
        // fills the pipe and blocks watch in a write, where it cannot see the signal.
        if let Some(mut out) = child.stdout.take() {
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        }
        let pid = child.id();
        // Read what it prints: a reader that stops reading is another test's case.
        let _out = child.stdout.take().map(lines);
        let deadline = Instant::now() + Duration::from_secs(30);
        while bpf_links(pid) == 0 {
            assert!(
                child.try_wait().unwrap().is_none(),
                "{what} exited before attaching: {}",
                stderr_of(&mut child)
            );
            assert!(Instant::now() < deadline, "{what} did not attach in 30 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            catches_sigint(pid),
            "{what} attached a program before it could catch Ctrl-C"
        );
        interrupt(&child);
        let status = wait_with_timeout(&mut child, Duration::from_secs(60));
        let err = stderr_of(&mut child);
        assert!(
            status.success(),
            "{what}: Ctrl-C while starting gave {status}: {err}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
}

/// Ctrl-C ends `watch` even when its loop is stuck in a write nobody reads (`netmon watch |
/// less`, scrolled back, then Ctrl-C): the signal is caught, so only the stop watchdog can end
/// it, with 128 + SIGINT after its grace (netmon/src/stop.rs).
#[test]
fn ctrl_c_ends_watch_whose_reader_stopped_reading() {
    let ns = TestNetns::new();
    let only_ours = format!("netns = {}", ns.inum);
    let mut child = spawn_watch(&[&only_ours]);
    // Held open, never read.
    let _stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while bpf_links(pid) < 2 || !catches_sigint(pid) {
        assert!(Instant::now() < deadline, "watch did not attach in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // 3,000 connections print ~3 MB: far past the pipe and the writer's buffer.
    connect_and_close_many(&ns, 3000);
    let wchan =
        |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !wchan(pid).contains("pipe_write") {
        assert!(
            Instant::now() < deadline,
            "watch never blocked writing to its unread pipe (wchan {})",
            wchan(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = Instant::now();
    interrupt(&child);
    let status = wait_with_timeout(&mut child, Duration::from_secs(40));
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGINT),
        "after its grace the watchdog ends it as a shell reports a death by SIGINT"
    );
    assert!(
        stopped.elapsed() >= Duration::from_secs(9),
        "the loop gets its grace first ({:?})",
        stopped.elapsed()
    );
}
