//! `netmon snapshot --max-age`: the agent answers from its table, checked against `ss` on the
//! same sockets, and walks the kernel instead when its table is too old.

use std::net::{TcpListener, TcpStream};

use netmon_tests::{
    AgentProcess, Stack, TestNetns, hold_every_state, netmon_bin, normalise, ss_in,
};

/// What `netmon snapshot ARGS` printed through `agent`, inside `ns`: stdout and stderr.
fn snapshot(agent: &AgentProcess, ns: &TestNetns, args: &[&str]) -> (String, String) {
    let mut cmd = std::process::Command::new(netmon_bin());
    cmd.arg("snapshot")
        .args(args)
        .env("NETMON_AGENT_SOCKET", &agent.socket);
    let out = ns.run(move || cmd.output().expect("run netmon snapshot"));
    assert!(out.status.success(), "{args:?}: {out:?}");
    (
        String::from_utf8(out.stdout).expect("utf-8"),
        String::from_utf8(out.stderr).expect("utf-8"),
    )
}

/// A `--max-age` answer the table served: its line saying how old the queues are, and the
/// rows without it and the column header.
fn served(stdout: &str) -> Option<(&str, String)> {
    let (first, rest) = stdout.split_once('\n')?;
    first.starts_with("# Recv-Q/Send-Q").then(|| {
        let rows = rest.split_once('\n').map_or("", |(_, rows)| rows);
        (first, rows.to_string())
    })
}

/// Makes the agent walk the namespace now (a bound no walk meets), then asks with `bound`
/// until the table serves it: a loss counted meanwhile (other tests' storms on a shared
/// machine) makes it walk again, which is what the rule says.
fn served_after_a_walk(agent: &AgentProcess, ns: &TestNetns, args: &[&str]) -> (String, String) {
    let mut seen = Vec::new();
    for _ in 0..5 {
        let (walked, note) = snapshot(agent, ns, &[args, &["--max-age", "1ns"]].concat());
        assert!(served(&walked).is_none(), "{walked}");
        assert!(
            note.contains("--max-age: the agent's last walk of this namespace is"),
            "a walk, and the note says why: {note}"
        );
        let (out, err) = snapshot(agent, ns, &[args, &["--max-age", "60s"]].concat());
        if let Some((header, rows)) = served(&out) {
            return (header.to_string(), rows);
        }
        seen.push(err);
    }
    panic!("the table never served a --max-age 60s request: {seen:#?}");
}

#[test]
fn max_age_snapshot_is_served_from_the_table_equal_to_ss_and_walks_when_stale() {
    let ns = TestNetns::new();
    let _v4 = hold_every_state(&ns, Stack::V4);
    let agent = AgentProcess::start();
    let _v6 = hold_every_state(&ns, Stack::V6);
    let _mapped = hold_every_state(&ns, Stack::Mapped);

    // Every socket the fixture holds is idle: ss's queues are the walk's.
    let (header, rows) = served_after_a_walk(&agent, &ns, &["-tan"]);
    assert!(
        header.contains("(netmon agent table, --max-age 1m)"),
        "{header}"
    );
    let ss = normalise(&ss_in(&ns, &["-tanH"]), 5);
    assert_eq!(normalise(&rows, 5), ss, "--max-age 60s (table) vs ss -tan");

    // Sockets opened after that walk: current in the table (events), queues unknown.
    let (listener, client, accepted) = ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (a, _) = l.accept().expect("accept");
        (l, c, a)
    });
    let port = listener.local_addr().expect("addr").port();
    let (out, err) = snapshot(&agent, &ns, &["-tan", "--max-age", "60s"]);
    let (_, rows) = served(&out).unwrap_or_else(|| panic!("not served: {out}{err}"));
    let new = |line: &&String| line.split(' ').any(|w| w.ends_with(&format!(":{port}")));
    let (fresh, older): (Vec<String>, Vec<String>) =
        normalise(&rows, 5).into_iter().partition(|l| new(&l));
    let ss = normalise(&ss_in(&ns, &["-tanH"]), 5);
    let (ss_fresh, ss_older): (Vec<String>, Vec<String>) = ss.into_iter().partition(|l| new(&l));
    assert_eq!(older, ss_older, "the sockets the walk saw");
    // LISTEN, and both ends of the connection: ss's states and addresses, `-` for queues.
    assert_eq!(fresh.len(), 3, "{fresh:#?}");
    let unknown_queues: Vec<String> = ss_fresh
        .iter()
        .map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            format!("{} - - {} {}", w[0], w[3], w[4])
        })
        .collect();
    let mut unknown_queues = unknown_queues;
    unknown_queues.sort();
    assert_eq!(fresh, unknown_queues);

    // With -H the age goes to stderr.
    let (out, err) = snapshot(&agent, &ns, &["-tanH", "--max-age", "60s"]);
    assert!(
        err.contains("Recv-Q/Send-Q and SYN-RECV as of"),
        "{err}\n{out}"
    );
    assert_eq!(normalise(&out, 5).len(), older.len() + 3);

    // Too old for the bound: the agent walks, exactly as without --max-age, and the walk
    // refreshes the table: the new sockets have their queues now.
    let (_, rows) = served_after_a_walk(&agent, &ns, &["-tan"]);
    let ss = normalise(&ss_in(&ns, &["-tanH"]), 5);
    assert_eq!(normalise(&rows, 5), ss, "after the walk");
    // A filter, on the table's rows.
    let filter = format!("sport = :{port}");
    let (out, _) = snapshot(&agent, &ns, &["-tan", "--max-age", "60s", &filter]);
    let (_, rows) = served(&out).unwrap_or_else(|| panic!("not served: {out}"));
    assert_eq!(
        normalise(&rows, 5),
        normalise(&ss_in(&ns, &["-tanH", &filter]), 5)
    );
    drop((client, accepted));
}
