//! `netmon snapshot` against `ss` on the same sockets, through the agent and without it.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    os::unix::net::UnixStream,
};

use netmon_tests::{
    AgentProcess, Stack, TestNetns, connect_and_close_many, hold_every_state, normalise,
    snapshot_without_agent, ss_in,
};
use serde_json::Value;

const EVERY_STATE: [&str; 10] = [
    "LISTEN",
    "ESTAB",
    "SYN-SENT",
    "SYN-RECV",
    "FIN-WAIT-1",
    "FIN-WAIT-2",
    "TIME-WAIT",
    "CLOSE-WAIT",
    "LAST-ACK",
    "CLOSING",
];

#[test]
fn snapshot_equals_ss_tan_for_every_state_through_the_agent_and_without_it() {
    let ns = TestNetns::new();
    // Some sockets exist before the agent starts (it finds them by its seed dump), the
    // others are made while it runs (it sees their events).
    let _v4 = hold_every_state(&ns, Stack::V4);
    let agent = AgentProcess::start();
    let _v6 = hold_every_state(&ns, Stack::V6);
    let _mapped = hold_every_state(&ns, Stack::Mapped);

    let ss = normalise(&ss_in(&ns, &["-tanH"]), 5);
    let states: BTreeSet<&str> = ss.iter().filter_map(|l| l.split(' ').next()).collect();
    for state in EVERY_STATE {
        assert!(
            states.contains(state),
            "the fixture holds no {state} socket: {ss:#?}"
        );
    }
    assert!(
        ss.iter().any(|l| l.contains("[::ffff:127.0.0.1]")),
        "v4-mapped: {ss:#?}"
    );
    assert!(ss.iter().any(|l| l.contains("[::1]")), "IPv6: {ss:#?}");

    let through_agent = normalise(&agent.snapshot(&ns, &["-tanH"]), 5);
    assert_eq!(through_agent, ss, "netmon snapshot (agent) vs ss -tan");
    let fallback = normalise(&snapshot_without_agent(&ns, &["-tanH"]), 5);
    assert_eq!(fallback, ss, "netmon snapshot (no agent) vs ss -tan");

    // ss's default (connected states) and -l, too.
    for flags in ["-tnH", "-tlnH"] {
        let ss = normalise(&ss_in(&ns, &[flags]), 5);
        assert_eq!(normalise(&agent.snapshot(&ns, &[flags]), 5), ss, "{flags}");
    }
}

#[test]
fn all_netns_shows_every_namespace_with_its_inode() {
    let a = TestNetns::new();
    let b = TestNetns::new();
    let _fa = hold_every_state(&a, Stack::V4);
    let _fb = hold_every_state(&b, Stack::V6);
    let agent = AgentProcess::start();
    // Asked from namespace `a`, with --all-netns: `b`'s sockets too, each row naming its netns.
    let out = agent.snapshot(&a, &["-tanH", "--all-netns"]);
    let netns_of = |needle: &str| {
        out.lines()
            .filter(|l| l.contains(needle))
            .map(|l| l.split_whitespace().nth(5).unwrap().parse::<u32>().unwrap())
            .collect::<BTreeSet<u32>>()
    };
    assert!(netns_of("127.0.0.1:").contains(&a.inum), "{out}");
    assert!(netns_of("[::1]:").contains(&b.inum), "{out}");
    // Without it, only the caller's namespace, as ss.
    let own = agent.snapshot(&a, &["-tanH"]);
    assert!(!own.contains("[::1]:"), "{own}");
    assert_eq!(normalise(&own, 5), normalise(&ss_in(&a, &["-tanH"]), 5));
}

#[test]
fn agent_socket_is_not_open_to_everyone() {
    use std::os::unix::fs::PermissionsExt;
    let agent = AgentProcess::start();
    let mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o007, 0, "others must not connect: {mode:o}");
}

#[test]
fn agent_knows_ages_of_sockets_it_saw_created() {
    let ns = TestNetns::new();
    let agent = AgentProcess::start();
    let fixture = hold_every_state(&ns, Stack::V4);
    let out = agent.snapshot(&ns, &["-a", "-n", "-e", "--format", "json"]);
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let estab: Vec<&Value> = rows
        .iter()
        .filter(|r| r["state"] == "ESTAB" && r["local_port"] == fixture.ports[0])
        .collect();
    assert!(!estab.is_empty(), "{out}");
    for r in estab {
        let age = r["age_ns"]
            .as_u64()
            .unwrap_or_else(|| panic!("age unknown: {r}"));
        let in_state = r["state_ns"]
            .as_u64()
            .unwrap_or_else(|| panic!("state age: {r}"));
        assert!(in_state <= age && age < 60_000_000_000, "{r}");
    }
}

#[test]
fn closed_lists_all_1000_short_lived_connections() {
    let ns = TestNetns::new();
    let agent = AgentProcess::start();
    const CONNS: usize = 1000;
    let port = connect_and_close_many(&ns, CONNS);
    let out = agent.snapshot(&ns, &["--closed", "--format", "json"]);
    let closed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let clients: Vec<&Value> = closed.iter().filter(|c| c["peer_port"] == port).collect();
    let children: Vec<&Value> = closed
        .iter()
        .filter(|c| c["local_port"] == port && c["peer_port"] != 0)
        .collect();
    assert_eq!(clients.len(), CONNS, "every client socket");
    assert_eq!(children.len(), CONNS, "every server-side socket");
    for c in &clients {
        let states: Vec<&str> = c["states"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap())
            .collect();
        assert_eq!(
            states,
            ["SYN-SENT", "ESTAB", "FIN-WAIT-1", "FIN-WAIT-2"],
            "{c}"
        );
        assert!(c["lifespan_ns"].as_u64().is_some(), "{c}");
    }
    // The text table lists them too, and a filter narrows the list.
    let text = agent.snapshot(&ns, &["--closed", "-H", &format!("dport = :{port}")]);
    assert_eq!(text.lines().count(), CONNS, "{text}");
}

/// Sends `body` and closes the sending side, as a client that sent all it had; returns the
/// reply header and how long it took.
fn raw_request(agent: &AgentProcess, body: &[u8]) -> (Value, std::time::Duration) {
    let start = std::time::Instant::now();
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    // A request too large is answered before it is all read; ignore a reset on write.
    let _ = s.write_all(body);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let header = serde_json::from_str(reply.lines().next().unwrap()).unwrap();
    (header, start.elapsed())
}

#[test]
fn agent_answers_bad_requests_with_an_error_and_stays_up() {
    let ns = TestNetns::new();
    let agent = AgentProcess::start();
    // Each is refused for what it is, at once: none waits for the agent's request timeout (2 s).
    let quick = std::time::Duration::from_secs(1);
    let cases: [(&[u8], &str); 4] = [
        (b"this is not json\n", "malformed request"),
        (&[b'x'; 200 * 1024], "larger than"),
        (
            br#"{"version":1,"snapshot":{"all":"yes"}}"#,
            "expected a boolean",
        ),
        (br#"{"bogus":1}"#, "unknown field `bogus`"),
    ];
    for (body, why) in cases {
        let (reply, took) = raw_request(&agent, body);
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]);
        assert_eq!(reply["ok"], false, "{shown}: {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(why), "{shown}: {reply}");
        assert!(took < quick, "{shown}: answered after {took:?}");
    }
    // Still serving.
    let out = agent.snapshot(&ns, &["-a"]);
    assert!(out.starts_with("State"), "{out}");
}

/// `--dump-to` records what the kernel answered; `--from-dump` replays it as `ss` replays the
/// same file (`TCPDIAG_FILE`) and as `ss` listed the sockets live.
#[test]
fn a_recorded_dump_replays_as_ss_replays_it_and_as_ss_listed_it_live() {
    let ns = TestNetns::new();
    let _v4 = hold_every_state(&ns, Stack::V4);
    let _v6 = hold_every_state(&ns, Stack::V6);
    let _mapped = hold_every_state(&ns, Stack::Mapped);
    let path = std::env::temp_dir().join(format!("netmon-test-{}.dump", std::process::id()));
    let file = path.to_str().expect("utf-8 path").to_owned();
    let live = normalise(&ss_in(&ns, &["-tanH"]), 5);
    snapshot_without_agent(&ns, &["-mi", "--dump-to", &file]);
    let replay = |args: &[&str]| {
        let mut cmd = std::process::Command::new(netmon_tests::netmon_bin());
        cmd.args(["snapshot", "--from-dump", &file]).args(args);
        netmon_tests::output_in(&ns, cmd)
    };
    assert_eq!(
        normalise(&replay(&["-tanH"]), 5),
        live,
        "replay vs live ss -tan"
    );
    // ss pads its lines with blanks; netmon does not, except a lone tab where -m/-i have
    // nothing to say about a socket.
    let trimmed = |text: String| -> String {
        text.lines()
            .map(|l| format!("{}\n", l.trim_end()))
            .collect()
    };
    for flags in ["-tan", "-tano", "-tanmi"] {
        let mut ss = std::process::Command::new("ss");
        ss.arg(flags).env("TCPDIAG_FILE", &file);
        let ss = trimmed(netmon_tests::output_in(&ns, ss));
        assert_eq!(
            trimmed(replay(&[flags])),
            ss,
            "netmon --from-dump vs TCPDIAG_FILE ss {flags}"
        );
    }
    std::fs::remove_file(&path).ok();
}

/// The socket iterator (`iter/tcp`) that serves `snapshot -tan` against sock_diag, the source
/// ss reads, on the same sockets: every field both carry, socket by socket (by cookie); its
/// in-kernel filter only ever drops sockets the userspace filter rejects; and it walks the
/// namespace it is created in, not the others.
#[test]
fn the_socket_iterator_lists_what_sock_diag_lists_field_by_field() {
    use netmon::{
        filter::{Services, StateSet},
        iter::{Fields, TcpIter},
        netns::Netns,
        sock_diag::{self, DiagSock, Families},
    };
    use std::collections::BTreeMap;

    let ns = TestNetns::new();
    let _v4 = hold_every_state(&ns, Stack::V4);
    let _v6 = hold_every_state(&ns, Stack::V6);
    let mapped = hold_every_state(&ns, Stack::Mapped);
    let iter = TcpIter::load()
        .unwrap_or_else(|e| panic!("loading the iterator: {:#}", anyhow::Error::new(e)));
    let netns = Netns::open(std::path::Path::new(&ns.path())).expect("open the test netns");
    let by_cookie = |socks: Vec<DiagSock>| -> BTreeMap<u64, DiagSock> {
        socks.into_iter().map(|s| (s.cookie, s)).collect()
    };
    let file = std::fs::File::open(ns.path()).unwrap();
    let diag = || {
        let never = sock_diag::Cancel::default();
        let socks =
            sock_diag::dump_tcp_in_netns(&file, Families::ALL, sock_diag::SS_STATES, 0, &never)
                .expect("sock_diag dump");
        by_cookie(socks)
    };
    // The iterator has no timers and no attributes but v6only (see netmon::iter).
    let strip = |socks: BTreeMap<u64, DiagSock>| -> BTreeMap<u64, DiagSock> {
        socks
            .into_iter()
            .map(|(c, mut s)| {
                s.timer = None;
                s.attrs = netmon::diag_ext::Attrs {
                    v6only: s.attrs.v6only,
                    ..Default::default()
                };
                (c, s)
            })
            .collect()
    };
    // The fixture's sockets hold still, but a timer may move one on between two dumps (a
    // SYN retransmitted, a keep-alive): compare with sock_diag dumps that agree before and
    // after, a few times at most.
    // What the agent reads (`Fields::TABLE`, its owners come by cookie) is the same but for
    // the inode, left 0.
    let no_inode = |socks: &BTreeMap<u64, DiagSock>| -> BTreeMap<u64, DiagSock> {
        socks
            .iter()
            .map(|(&c, s)| {
                (
                    c,
                    DiagSock {
                        inode: 0,
                        ..s.clone()
                    },
                )
            })
            .collect()
    };
    let never = sock_diag::Cancel::default();
    let mut last = String::new();
    let mut equal = false;
    for _ in 0..5 {
        let before = strip(diag());
        let got = by_cookie(iter.dump(&netns, None).expect("iterator dump"));
        let trimmed = by_cookie(
            iter.dump_with(&netns, None, Fields::TABLE, &never)
                .expect("iterator dump without inodes"),
        );
        let after = strip(diag());
        if before != after {
            last = format!("sock_diag changed between two dumps: {before:#?} {after:#?}");
            continue;
        }
        assert!(before.len() >= 30, "the fixture's sockets: {before:#?}");
        assert!(
            before.values().any(|s| s.inode != 0),
            "the fixture has sockets with an inode"
        );
        if got == before && trimmed == no_inode(&before) {
            equal = true;
            break;
        }
        last =
            format!("iterator:\n{got:#?}\nwithout inodes:\n{trimmed:#?}\nsock_diag:\n{before:#?}");
    }
    assert!(
        equal,
        "the iterator's sockets differ from sock_diag's: {last}"
    );

    // The kernel part of a filter: what it lets through is a superset of what the full
    // filter selects, and it does drop the rest.
    let services = Services::default();
    let port = mapped.ports[0];
    let words = vec![format!("sport = :{port}")];
    let filter = netmon::filter::Filter::parse(&words, &services, StateSet::ALL).unwrap();
    let all = diag();
    let selected: BTreeSet<u64> = all
        .values()
        .filter(|s| {
            filter.matches(&netmon::filter::FilterInput {
                state: s.state,
                local: s.local,
                remote: s.remote,
                netns: Some(ns.inum),
                pid: None,
                comm: None,
                uid: Some(s.uid),
                cgroup: None,
            })
        })
        .map(|s| s.cookie)
        .collect();
    assert!(
        !selected.is_empty(),
        "the filter selects the socket on {port}"
    );
    let passed: BTreeSet<u64> = iter
        .dump(&netns, Some(filter.kernel_filter()))
        .expect("filtered iterator dump")
        .into_iter()
        .map(|s| s.cookie)
        .collect();
    assert!(passed.is_superset(&selected), "{passed:?} ⊉ {selected:?}");
    assert!(passed.len() < all.len(), "the kernel dropped nothing");

    // Created in this process's namespace, it lists none of the test namespace's sockets.
    let here = Netns::current().unwrap();
    let elsewhere: BTreeSet<u64> = iter
        .dump(&here, None)
        .expect("iterator dump here")
        .into_iter()
        .map(|s| s.cookie)
        .collect();
    assert!(
        elsewhere.iter().all(|c| !all.contains_key(c)),
        "the iterator of one namespace listed another's sockets"
    );
}
