//! `ss ARGS` against `netmon snapshot ARGS`, option by option and in combination (-o -e -m -i
//! -O -r -p -s -a -l -4 -6 -H -F -N and filters), over sockets in every state (IPv4, IPv6,
//! v4-mapped), through the agent and in fallback.
//!
//! Rows are compared field by field, whatever the order and column widths. Values that change
//! between two calls (timers, RTTs, rates, the `last*` ages, counters of the sockets whose
//! packets the fixture drops) are compared by format: digits stand for digits. A comparison
//! that differs is tried again (up to 3 times), since a retransmission between the two
//! calls may add or change a field; it fails if it never agrees.

use std::{io::Write, os::fd::AsRawFd, time::Duration};

use netmon_tests::{
    AgentProcess, Stack, TestNetns, hold_every_state, snapshot_without_agent, ss_in,
};

/// Fields whose values change from one call to the next.
const VOLATILE: [&str; 22] = [
    "timer:",
    "rtt:",
    "rto:",
    "ato:",
    "send",
    "pacing_rate",
    "delivery_rate",
    "lastsnd:",
    "lastrcv:",
    "lastack:",
    "busy:",
    "minrtt:",
    "rcv_rtt:",
    "bbr:",
    "skmem:",
    "backoff:",
    "retrans:",
    "lost:",
    "unacked:",
    "segs_out:",
    "bytes_retrans:",
    "rcv_space:",
];

/// One socket's fields: its line and, for -m/-i, the second line ss starts with a tab.
fn records(out: &str, header: bool) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = out.lines();
    let head = if header {
        lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    } else {
        Vec::new()
    };
    let mut recs: Vec<Vec<String>> = Vec::new();
    for line in lines {
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        match recs.last_mut() {
            Some(last) if line.starts_with('\t') || line.starts_with(' ') => last.extend(words),
            _ if words.is_empty() => {}
            _ => recs.push(words),
        }
    }
    let recs = recs.into_iter().map(|r| canonical(&r)).collect::<Vec<_>>();
    let mut recs = recs;
    recs.sort();
    (head, recs)
}

/// Joins `send X`-style pairs, drops netmon's extra `age:`/`in-state:`, and reduces volatile
/// values to their format.
fn canonical(words: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let mut w = words[i].clone();
        if matches!(w.as_str(), "send" | "pacing_rate" | "delivery_rate") && i + 1 < words.len() {
            w = format!("{w}={}", words[i + 1]);
            i += 1;
        }
        i += 1;
        if w.starts_with("age:") || w.starts_with("in-state:") {
            continue;
        }
        if let Some(rest) = w.strip_prefix("timer:(") {
            // The expiry runs down, and reads empty while an overdue timer waits to run: the
            // kind is compared, the rest by format.
            let kind = rest.split(',').next().unwrap_or_default();
            w = format!("timer:({kind},*,#)");
        } else if VOLATILE.iter().any(|v| w.starts_with(v)) {
            w = shape(&w);
        }
        out.push(w);
    }
    out
}

/// Digits (with a decimal point) as `#`, and the unit letters ss scales rates with dropped.
fn shape(w: &str) -> String {
    let mut s = String::new();
    let mut in_num = false;
    for c in w.chars() {
        if c.is_ascii_digit() || (in_num && c == '.') {
            if !in_num {
                s.push('#');
            }
            in_num = true;
        } else {
            in_num = false;
            s.push(c);
        }
    }
    s.replace("#Kbps", "#bps")
        .replace("#Mbps", "#bps")
        .replace("#Gbps", "#bps")
        .replace("#Tbps", "#bps")
}

/// ss's text against netmon's; `None` when they agree.
fn differs(ss: &str, netmon: &str, header: bool) -> Option<String> {
    let (sh, sr) = records(ss, header);
    let (nh, nr) = records(netmon, header);
    if sh != nh {
        return Some(format!(
            "headers differ:\n  ss:     {sh:?}\n  netmon: {nh:?}"
        ));
    }
    if sr != nr {
        let only_ss: Vec<_> = sr.iter().filter(|r| !nr.contains(r)).collect();
        let only_nm: Vec<_> = nr.iter().filter(|r| !sr.contains(r)).collect();
        return Some(format!(
            "rows differ\n  only in ss:     {only_ss:#?}\n  only in netmon: {only_nm:#?}"
        ));
    }
    None
}

/// ss -s against netmon -s: counts of this namespace exactly; the machine-wide ones
/// (`alloc`, `orphan`: the TCP total, closed, orphaned) by format.
fn summary_differs(ss: &str, netmon: &str) -> Option<String> {
    let canon = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| {
                if let Some(rest) = l.strip_prefix("TCP:   ") {
                    // "N (estab E, closed C, orphaned O, timewait T)"
                    let parts: Vec<&str> = rest.split([' ', ',', '(', ')']).collect();
                    let estab = parts
                        .iter()
                        .position(|p| *p == "estab")
                        .map(|i| parts[i + 1]);
                    let tw = parts
                        .iter()
                        .position(|p| *p == "timewait")
                        .map(|i| parts[i + 1]);
                    format!("TCP: {} estab {estab:?} timewait {tw:?}", shape(parts[0]))
                } else {
                    l.split_whitespace().collect::<Vec<_>>().join(" ")
                }
            })
            .collect()
    };
    let (a, b) = (canon(ss), canon(netmon));
    (a != b).then(|| format!("ss -s:\n{ss}\nnetmon -s:\n{netmon}"))
}

/// `ss -s`'s `Total` counts sockets until they are freed, and a netlink socket (the one the
/// previous ss or netmon dumped with) is freed an RCU grace period after it is closed: the
/// next count waits for that.
fn settle() {
    std::thread::sleep(Duration::from_millis(250));
}

/// A client with keep-alive on, so `-o` has a `timer:(keepalive,...)` to show.
fn keepalive_pair(ns: &TestNetns) -> Box<dyn std::any::Any + Send> {
    ns.run(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).expect("connect");
        let one: libc::c_int = 1;
        // SAFETY: valid fd and option value.
        let rc = unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_KEEPALIVE,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_KEEPALIVE");
        let (s, _) = l.accept().expect("accept");
        Box::new((l, c, s)) as Box<dyn std::any::Any + Send>
    })
}

struct Run<'a> {
    ns: &'a TestNetns,
    agent: &'a AgentProcess,
    compared: usize,
}

impl Run<'_> {
    /// Compares ss with netmon (agent, then fallback) for `args`, retrying a disagreement.
    fn compare(&mut self, args: &[&str]) {
        let header = !args
            .iter()
            .any(|a| *a == "-H" || (a.starts_with('-') && !a.starts_with("--") && a.contains('H')));
        let summary = args.contains(&"-s");
        for (how, through_agent) in [("agent", true), ("fallback", false)] {
            let mut last = String::new();
            let agreed = (0..3).any(|attempt| {
                if attempt > 0 {
                    std::thread::sleep(Duration::from_millis(300));
                }
                let ss = ss_in(self.ns, args);
                if summary {
                    settle();
                }
                let netmon = if through_agent {
                    self.agent.snapshot(self.ns, args)
                } else {
                    snapshot_without_agent(self.ns, args)
                };
                let d = if summary {
                    summary_differs(&ss, &netmon)
                } else {
                    differs(&ss, &netmon, header)
                };
                match d {
                    None => true,
                    Some(d) => {
                        last = format!("{d}\n--- ss:\n{ss}\n--- netmon:\n{netmon}");
                        false
                    }
                }
            });
            assert!(agreed, "`ss {}` vs netmon ({how}): {last}", args.join(" "));
            self.compared += 1;
        }
    }
}

#[test]
fn snapshot_prints_what_ss_prints_for_every_tcp_option_and_combination() {
    let ns = TestNetns::new();
    let _v4 = hold_every_state(&ns, Stack::V4);
    let agent = AgentProcess::start();
    let _v6 = hold_every_state(&ns, Stack::V6);
    let fixture = hold_every_state(&ns, Stack::Mapped);
    let _ka = keepalive_pair(&ns);
    let port = fixture.ports[0];
    let mut run = Run {
        ns: &ns,
        agent: &agent,
        compared: 0,
    };

    // The fixture shows what the options print, so the comparisons below are not vacuous.
    let all = ss_in(&ns, &["-tanoeimH"]);
    for needle in [
        "timer:(keepalive,",
        "timer:(timewait,",
        "timer:(on,",
        "skmem:(r",
        "rtt:",
        "cwnd:",
        "bytes_acked:",
        "v6only:0",
        " -->",
        " <--",
        " <->",
        "sk:",
        "[::ffff:127.0.0.1]",
        "[::1]",
    ] {
        assert!(all.contains(needle), "ss shows no {needle:?} here:\n{all}");
    }

    let tables = [
        "-tan", "-tn", "-tln", "-ta", "-tanH", "-tn4", "-tan6", "-tanl", "-tnl -a",
    ];
    let options = [
        "", "-o", "-e", "-m", "-i", "-io", "-eo", "-mi", "-miO", "-emoi", "-eO", "-r",
    ];
    for t in tables {
        for o in options {
            let mut args: Vec<&str> = t.split(' ').collect();
            if !o.is_empty() {
                args.push(o);
            }
            run.compare(&args);
        }
    }
    // Filters, with options; ss's tutorial favourite among them.
    let sport = format!("sport = :{port}");
    let either = format!("( dport = :{port} or sport = :{port} )");
    for (flags, filter) in [
        ("-tno", vec!["state", "established", either.as_str()]),
        ("-tani", vec!["exclude", "time-wait"]),
        ("-tnoe", vec!["state", "listening"]),
        ("-tanm", vec![sport.as_str()]),
        ("-tan", vec!["state", "syn-sent"]),
        ("-tanoH", vec!["state", "fin-wait-1", "state", "closing"]),
        ("-tane", vec!["dst", "[::1]"]),
        (
            "-tan",
            vec!["src", "127.0.0.1", "and", "dport", "gt", ":1024"],
        ),
    ] {
        let mut args = vec![flags];
        args.extend(filter);
        run.compare(&args);
    }
    // -a/-l: the last one wins, in separate words and in one.
    for args in [
        &["-tan", "-l"][..],
        &["-tnl", "-a"],
        &["-tnal"],
        &["-tnla"],
        &["-tn", "-a", "-l", "-a"],
    ] {
        run.compare(args);
    }
    // -p: the fallback walks /proc as ss does (through the agent the owner comes from its
    // table, with no fd for sockets it saw created: compared by presence below).
    for args in [&["-tanp"][..], &["-tanpe"]] {
        let ss = ss_in(&ns, args);
        let nm = snapshot_without_agent(&ns, args);
        assert_eq!(
            differs(&ss, &nm, true),
            None,
            "ss {args:?} vs netmon (fallback)"
        );
        let through = agent.snapshot(&ns, args);
        let users = |t: &str| t.lines().filter(|l| l.contains("users:((")).count();
        assert_eq!(
            users(&through),
            users(&ss),
            "users:(...) rows through the agent:\n{through}"
        );
        run.compared += 2;
    }
    // -s alone, and followed by the table as ss does with -t.
    for args in [&["-s"][..], &["-s", "-a"], &["-s", "-t", "-n"]] {
        if args.len() == 3 {
            // A socket closed just before (by the previous netmon) may still count for a
            // moment (netlink sockets are freed after an RCU grace period): try again.
            let split = |t: &str| {
                t.split_once("\n\n")
                    .map(|(a, _)| a.to_owned())
                    .unwrap_or_default()
            };
            let mut last = None;
            for _ in 0..3 {
                let ss = ss_in(&ns, args);
                settle();
                let nm = agent.snapshot(&ns, args);
                assert!(nm.contains("State") && nm.contains("ESTAB"), "{nm}");
                last = summary_differs(&split(&ss), &split(&nm));
                if last.is_none() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            assert_eq!(last, None);
            run.compared += 1;
        } else {
            run.compare(args);
        }
    }
    // -F: the same filter from a file, and the file's comments ignored.
    let mut file = tempfile_in_tmp();
    writeln!(
        file.1,
        "# the fixture's first port\n{sport}\n# either way\nor dport = :{port}"
    )
    .unwrap();
    let path = file.0.to_str().unwrap().to_owned();
    run.compare(&["-tn", "-F", &path]);
    run.compare(&["-tnoa", "-F", &path]);
    // As in ss, states come from the command line, the expression from the file.
    run.compare(&["-tn", "-F", &path, "state", "listening"]);
    std::fs::remove_file(&file.0).ok();

    assert!(
        run.compared >= 60 * 2,
        "{} comparisons: the brief asks for at least 60 argument combinations, each both ways",
        run.compared
    );
}

fn tempfile_in_tmp() -> (std::path::PathBuf, std::fs::File) {
    let path = std::env::temp_dir().join(format!("netmon-ssopts-{}.filter", std::process::id()));
    let file = std::fs::File::create(&path).expect("create filter file");
    (path, file)
}

#[test]
fn net_names_a_namespace_as_ss_n_does() {
    // A namespace `ip netns` knows by name, with a listener in it.
    let name = format!("netmon-ssopts-{}", std::process::id());
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .expect("run ip netns add");
    assert!(status.success(), "ip netns add {name}");
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _del = Del(name.clone());
    let ns = TestNetns::open(&format!("/run/netns/{name}"));
    let _fx = hold_every_state(&ns, Stack::V4);
    let agent = AgentProcess::start();
    // Asked from another namespace: -N switches, as ss -N.
    let elsewhere = TestNetns::new();
    for args in [&["-tan"][..], &["-tanoe"], &["-s"]] {
        let mut with_n = vec!["-N", name.as_str()];
        with_n.extend(args);
        for through_agent in [true, false] {
            // Sockets of the previous run may still count in `-s` for an RCU grace period:
            // a disagreement is tried again.
            let mut last = None;
            for _ in 0..3 {
                // ss -N remounts /sys in a mount namespace of its own, where it finds no
                // cgroup2 mount and prints `cgroup:unreachable:ID`; netmon prints the path.
                let ss = without_cgroup_paths(&ss_in(&elsewhere, &with_n));
                assert!(
                    ss.lines().count() > 3,
                    "the named namespace's sockets: {ss}"
                );
                settle();
                let netmon = without_cgroup_paths(&if through_agent {
                    agent.snapshot(&elsewhere, &with_n)
                } else {
                    snapshot_without_agent(&elsewhere, &with_n)
                });
                last = if args == ["-s"] {
                    summary_differs(&ss, &netmon)
                } else {
                    differs(&ss, &netmon, true)
                };
                if last.is_none() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            assert_eq!(last, None, "ss {with_n:?} (agent: {through_agent})");
        }
    }
    let mut cmd = std::process::Command::new(netmon_tests::netmon_bin());
    cmd.args(["snapshot", "-N", "no-such-netns-here"]);
    let out = elsewhere.run(move || cmd.output().expect("run netmon"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-netns-here") && err.lines().count() == 1,
        "{err}"
    );
}

fn without_cgroup_paths(t: &str) -> String {
    t.lines()
        .map(|l| {
            l.split(' ')
                .map(|w| {
                    if w.starts_with("cgroup:") {
                        "cgroup:"
                    } else {
                        w
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn unsupported_options_refuse_in_one_line() {
    let ns = TestNetns::new();
    for (args, want) in [
        (&["-K"][..], "-K"),
        (&["-Z"], "SELinux"),
        (&["--count", "end-reason"], "--closed"),
    ] {
        let mut cmd = std::process::Command::new(netmon_tests::netmon_bin());
        cmd.arg("snapshot")
            .args(args)
            .env("NETMON_AGENT_SOCKET", "/nonexistent/netmon.sock");
        let out = ns.run(move || cmd.output().expect("run netmon"));
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(want) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}

/// `awk '{print $1}' | sort | uniq -c | sort -rn` over ss's own rows: the ground truth for
/// `--count`.
fn uniq_c(ss: &str, field: impl Fn(&[&str]) -> String) -> Vec<(u64, String)> {
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for l in ss.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if !w.is_empty() {
            *counts.entry(field(&w)).or_default() += 1;
        }
    }
    let mut v: Vec<(u64, String)> = counts.into_iter().map(|(k, n)| (n, k)).collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    v
}

fn count_rows(out: &str) -> Vec<(u64, String)> {
    out.lines()
        .map(|l| {
            let (n, key) = l.trim_start().split_once(char::is_whitespace).unwrap();
            (
                n.parse().unwrap(),
                key.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

#[test]
fn count_equals_uniq_c_over_ss_and_summarises_closed_connections() {
    let ns = TestNetns::new();
    let agent = AgentProcess::start();
    let _v4 = hold_every_state(&ns, Stack::V4);
    let _v6 = hold_every_state(&ns, Stack::V6);
    let ss = ss_in(&ns, &["-tanH"]);
    let by_state = uniq_c(&ss, |w| w[0].to_owned());
    // A peer is the address half of ss's 5th column.
    let by_peer_port = uniq_c(&ss, |w| {
        let p = w[4].rsplit_once(':').unwrap().1;
        if p == "*" { "0".into() } else { p.to_owned() }
    });
    for out in [
        agent.snapshot(&ns, &["-tanH", "--count", "state"]),
        snapshot_without_agent(&ns, &["-tanH", "--count", "state"]),
    ] {
        assert_eq!(count_rows(&out), by_state, "{out}\nss:\n{ss}");
    }
    let out = agent.snapshot(&ns, &["-tanH", "--count", "peer-port"]);
    assert_eq!(count_rows(&out), by_peer_port, "{out}");

    // Closed connections: every one of a burst, grouped by how it ended and by port.
    let port = netmon_tests::connect_and_close_many(&ns, 200);
    let out = agent.snapshot(
        &ns,
        &[
            "--closed",
            "--count",
            "end-reason,local-port",
            "--format",
            "json",
            &format!("sport = :{port}"),
        ],
    );
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{out}");
    let r = &rows[0];
    assert_eq!(r["type"], "count");
    // The 200 accepted sockets, and the listener, closed when the burst ended.
    assert_eq!(r["count"], 201, "{r}");
    assert_eq!(r["end"], "normal");
    assert_eq!(r["local_port"], port);
    assert_eq!(r["resets"], 0);
    let (p50, p99) = (
        r["lifespan_p50_ns"].as_u64().unwrap(),
        r["lifespan_p99_ns"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= p99 && p99 < 60_000_000_000, "{r}");
    let text = agent.snapshot(&ns, &["--closed", "--count", "end-reason"]);
    assert!(
        text.starts_with("Count End") && text.contains("Lifespan-p50"),
        "{text}"
    );
}

#[test]
fn json_carries_what_the_options_print() {
    let ns = TestNetns::new();
    let _fx = hold_every_state(&ns, Stack::V4);
    let out = snapshot_without_agent(&ns, &["-tanmie", "--format", "json"]);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let estab: Vec<_> = rows.iter().filter(|r| r["state"] == "ESTAB").collect();
    assert!(!estab.is_empty(), "{out}");
    for r in estab {
        assert!(r["tcp_info"]["rtt"].as_u64().is_some_and(|v| v > 0), "{r}");
        assert!(r["tcp_info"]["snd_cwnd"].as_u64().is_some(), "{r}");
        assert!(r["skmem"]["rcvbuf"].as_u64().is_some_and(|v| v > 0), "{r}");
        assert!(r["cong"].is_string(), "{r}");
        assert_eq!(r["shutdown"], "<->", "{r}");
        assert!(r["cgroup"].is_string(), "{r}");
    }
    let tw = rows
        .iter()
        .find(|r| r["state"] == "TIME-WAIT")
        .expect("TIME-WAIT row");
    assert_eq!(tw["timer"]["kind"], "timewait", "{tw}");
    assert!(tw.get("tcp_info").is_none(), "{tw}");
}
