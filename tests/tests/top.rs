//! `netmon top` in a real terminal (tmux) against a running agent, while the test makes
//! refused, reset and normal connections in its own namespace.

use std::{
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use netmon_tests::{
    AgentProcess, Cgroups, TestNetns, UNIT, connect_and_close, netmon_bin, wait_with_timeout,
};

const PEER: &str = env!("CARGO_BIN_EXE_tcp-peer");

/// A tmux server of the test's own (its own socket), killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn start(width: u16, height: u16, command: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = PathBuf::from(format!("/tmp/netmon-test-tmux-{}-{n}", std::process::id()));
        let tmux = Self { socket };
        let status = Command::new("tmux")
            .arg("-S")
            .arg(&tmux.socket)
            .args(["new-session", "-d", "-x", &width.to_string(), "-y"])
            .arg(height.to_string())
            .arg(command)
            .status()
            .expect("run tmux (cargo xtask setup installs it)");
        assert!(status.success(), "tmux new-session failed: {status}");
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p"])
    }

    /// Sends keys one at a time: a burst would reach the program as one read, and an Esc
    /// followed at once by a letter reads as Alt+letter.
    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.run(&["send-keys", k]);
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// Types `text` literally (no key names).
    fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-l", text]);
        std::thread::sleep(Duration::from_millis(150));
    }

    /// Waits until `check` accepts the screen; panics with the last screen after `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if check(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not on screen within {timeout:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .status();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The numbers of the table row whose key is `key`: NEW FAIL REFUSED TIMEOUT RST ...
fn row(screen: &str, key: &str) -> Option<Vec<String>> {
    screen.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(key)).then(|| words.map(str::to_owned).collect())
    })
}

/// Closes with SO_LINGER 0: the kernel sends a RST instead of a FIN.
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

#[test]
fn top_in_a_terminal_shows_refused_reset_and_normal_connections() {
    let ns = TestNetns::new();
    let agent = AgentProcess::start();
    let command = format!(
        "NETMON_AGENT_SOCKET={socket} nsenter --net={ns} {bin} top --total --group peer-port \
         --sort key; echo EXIT=$?; stty -a; sleep 60",
        socket = agent.socket.display(),
        ns = ns.path(),
        bin = netmon_bin().display(),
    );
    let tmux = Tmux::start(160, 48, &command);
    tmux.wait_for("the first screen", Duration::from_secs(20), |s| {
        s.contains("via agent") && s.contains("PPORT")
    });

    let (refused_port, server_port, _listener) = ns.run(|| {
        // A port nobody listens on.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let refused_port = closed.local_addr().unwrap().port();
        drop(closed);
        for _ in 0..3 {
            let err = TcpStream::connect(("127.0.0.1", refused_port)).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server_port = listener.local_addr().unwrap().port();
        for _ in 0..2 {
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (child, _) = listener.accept().unwrap();
            reset(client);
            std::thread::sleep(Duration::from_millis(20));
            drop(child);
        }
        for _ in 0..4 {
            connect_and_close(&listener);
        }
        // Kept open: its close would be one more ended connection.
        (refused_port, server_port, listener)
    });

    let refused_key = refused_port.to_string();
    let server_key = server_port.to_string();
    // Columns: NEW FAIL REFUSED TIMEOUT RST ... Listeners (peer 0.0.0.0:0) end too: the one
    // that made the refused port free; they are not counted in the ended list below.
    let ended = |s: &str, what: &str| {
        s.lines()
            .skip_while(|l| !l.contains("recently ended"))
            .filter(|l| !l.contains("-> 0.0.0.0:0") && l.contains(what))
            .count()
    };
    // The whole screen must agree: a capture can catch a frame half redrawn.
    let screen = tmux.wait_for("the failure counters", Duration::from_secs(15), |s| {
        let refused = row(s, &refused_key);
        let server = row(s, &server_key);
        refused.is_some_and(|r| r[0] == "3" && r[1] == "3" && r[2] == "3")
            && server.is_some_and(|r| r[0] == "6" && r[1] == "2" && r[4] == "2")
            && ended(s, "refused") == 3
            && ended(s, "reset-sent") == 2
            && ended(s, "reset-received") == 2
            && ended(s, " normal ") == 8
    });
    assert!(
        screen.contains("failed 7"),
        "3 refused + 4 reset ends:\n{screen}"
    );

    // `/`: a filter that does not parse is shown under the input, and not applied.
    tmux.keys(&["/"]);
    tmux.type_text("dport =");
    tmux.keys(&["Enter"]);
    tmux.wait_for("the filter error", Duration::from_secs(5), |s| {
        s.lines().any(|l| l.trim() == "^") && s.contains("filter> dport =")
    });
    // One that parses narrows everything to the refused port.
    tmux.type_text(&format!(" :{refused_port}"));
    tmux.keys(&["Enter"]);
    let filtered = tmux.wait_for("the filtered screen", Duration::from_secs(5), |s| {
        s.contains(&format!("filter: dport = :{refused_port}"))
            && row(s, &refused_key).is_some()
            && row(s, &server_key).is_none()
    });
    assert!(!filtered.contains(" normal "), "{filtered}");
    // Enter on the ended list: the details of one connection.
    tmux.keys(&["Tab", "Enter"]);
    tmux.wait_for("the details", Duration::from_secs(5), |s| {
        s.contains("details (Enter/Esc: close)") && s.contains("cookie")
    });
    tmux.keys(&["Escape"]);
    tmux.wait_for("the details closed", Duration::from_secs(5), |s| {
        !s.contains("details (Enter/Esc: close)")
    });
    // A smaller terminal: redrawn at its size, with the narrow column names.
    tmux.run(&["resize-window", "-x", "80", "-y", "24"]);
    let small = tmux.wait_for("the 80x24 screen", Duration::from_secs(5), |s| {
        s.contains("REF ") && s.lines().count() <= 24
    });
    assert!(small.lines().all(|l| l.chars().count() <= 80), "{small}");

    // Refused connects from a process in a systemd-style service's cgroup: a filter on the
    // unit selects them, and grouping by unit and by container names their group.
    let cg = Cgroups::new();
    for _ in 0..3 {
        let mut cmd = Command::new(PEER);
        cmd.args(["client", &format!("127.0.0.1:{refused_port}"), "refused"]);
        let mut c = cg.spawn(&ns, &cg.service(), cmd);
        assert!(wait_with_timeout(&mut c, Duration::from_secs(10)).success());
    }
    tmux.keys(&["/", "C-u"]);
    tmux.type_text(&format!("unit = {UNIT}"));
    tmux.keys(&["Enter"]);
    // The header is cut at 80 columns: its start is enough.
    tmux.wait_for("the unit filter", Duration::from_secs(5), |s| {
        s.contains("filter: unit = web")
    });
    // Keys: the next groupings (by unit, by container, by owner), then quit; wide again, so
    // that the unit's name fits its column.
    tmux.run(&["resize-window", "-x", "160", "-y", "48"]);
    tmux.keys(&["g"]);
    let by_unit = tmux.wait_for("grouping by unit", Duration::from_secs(10), |s| {
        s.contains("by unit (g)")
            && row(s, UNIT).is_some_and(|r| r[0] == "3" && r[1] == "3" && r[2] == "3")
    });
    assert!(
        by_unit.contains("1 groups"),
        "the unit's connections only:\n{by_unit}"
    );
    tmux.keys(&["g"]);
    tmux.wait_for("grouping by container", Duration::from_secs(10), |s| {
        s.contains("by container (g)") && row(s, "-").is_some_and(|r| r[0] == "3")
    });
    tmux.keys(&["g"]);
    tmux.wait_for("grouping by owner", Duration::from_secs(5), |s| {
        s.contains("by owner (g)")
    });
    drop(cg);
    tmux.keys(&["q"]);
    let after = tmux.wait_for("the exit", Duration::from_secs(10), |s| s.contains("EXIT="));
    assert!(after.contains("EXIT=0"), "{after}");
    // Restored: the main screen, a visible cursor, and a cooked tty.
    let state = tmux.run(&["display", "-p", "#{alternate_on} #{cursor_flag}"]);
    assert_eq!(state.trim(), "0 1", "alternate screen off, cursor on");
    let words: Vec<&str> = after.split_whitespace().collect();
    for flag in ["icanon", "echo", "isig", "icrnl", "opost"] {
        assert!(
            words.contains(&flag),
            "tty flag {flag} not restored:\n{after}"
        );
    }
}

#[test]
fn top_once_prints_one_plain_screen_and_sigterm_restores_the_terminal() {
    let ns = TestNetns::new();
    let agent = AgentProcess::start();
    // --once, piped: plain text, no escape sequences.
    let out = ns.run({
        let socket = agent.socket.clone();
        move || {
            Command::new(netmon_bin())
                .args(["top", "--once", "--size", "80x24"])
                .env("NETMON_AGENT_SOCKET", socket)
                .output()
                .expect("run netmon top --once")
        }
    });
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 24, "{text}");
    assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
    assert!(!text.contains('\x1b'), "no escape sequences:\n{text}");
    assert!(text.starts_with("netmon top"), "{text}");
    assert!(text.contains(&format!("netns {}", ns.inum)), "{text}");

    // A bad filter: one clear error, exit 1.
    let out = Command::new(netmon_bin())
        .args(["top", "--once", "dport", "="])
        .env("NETMON_AGENT_SOCKET", &agent.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("netmon: filter:"), "{err}");

    // SIGTERM while the screen is up: the terminal comes back.
    let command = format!(
        "NETMON_AGENT_SOCKET={} {} top; echo EXIT=$?; stty -a; sleep 60",
        agent.socket.display(),
        netmon_bin().display(),
    );
    let tmux = Tmux::start(80, 24, &command);
    tmux.wait_for("the screen", Duration::from_secs(20), |s| {
        s.contains("via agent")
    });
    // The pane runs `sh -c COMMAND`; netmon is its child.
    let shell = tmux.run(&["display", "-p", "#{pane_pid}"]);
    let shell: i32 = shell.trim().parse().expect("pane pid");
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
        .expect("the shell's children");
    let pid: i32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no child of the pane's shell: {children:?}"));
    // SAFETY: signalling the netmon this test started, by pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let after = tmux.wait_for("the exit", Duration::from_secs(10), |s| s.contains("EXIT="));
    assert!(after.contains("EXIT=0"), "{after}");
    let state = tmux.run(&["display", "-p", "#{alternate_on} #{cursor_flag}"]);
    assert_eq!(state.trim(), "0 1", "alternate screen off, cursor on");
    let words: Vec<&str> = after.split_whitespace().collect();
    assert!(
        words.contains(&"icanon") && words.contains(&"echo"),
        "{after}"
    );
}

#[test]
fn without_an_agent_top_as_root_traces_itself_and_says_so() {
    let ns = TestNetns::new();
    let mut cmd = Command::new(netmon_bin());
    cmd.args(["top", "--once", "--total", "--group", "peer-port"])
        .env("NETMON_AGENT_SOCKET", "/nonexistent/netmon.sock")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = ns.run(move || cmd.spawn().expect("spawn netmon top"));
    // Refused connects until it prints: it attaches, waits an interval, then counts.
    let port = ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    let child = std::sync::Arc::new(std::sync::Mutex::new(child));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = child
            .lock()
            .unwrap()
            .try_wait()
            .expect("try_wait")
            .is_some();
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "netmon top --once did not finish"
        );
        ns.run(move || {
            let _ = TcpStream::connect(("127.0.0.1", port));
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    let child = std::sync::Arc::try_unwrap(child)
        .unwrap()
        .into_inner()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("tracing in this process"),
        "it says so: {stderr}"
    );
    assert!(stdout.contains("via own probe"), "{stdout}");
    let refused = row(&stdout, &port.to_string()).unwrap_or_else(|| panic!("{stdout}"));
    let refused: u64 = refused[2].parse().unwrap();
    assert!(refused > 0, "the refused connects are counted:\n{stdout}");
    assert!(stdout.contains("refused"), "{stdout}");
}
