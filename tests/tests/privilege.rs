//! The privilege model (README, "Who may see what"): what root, members of the admin group
//! and other members of the agent's group see through the agent, checked by running
//! `netmon snapshot` as an unprivileged user (`setpriv`) in a namespace of the test's.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use netmon::wire::{Request, SnapshotRequest, VERSION};
use netmon_tests::{
    AgentProcess, Reaped, TestNetns, agent_socket_path, netmon_bin, wait_with_timeout,
};
use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_tcp-peer");
const CLIENTS: &str = env!("CARGO_BIN_EXE_unix-clients");
const NOBODY: &str = "65534";

fn gid(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: getgrnam returns NULL or a static struct read at once.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    assert!(!g.is_null(), "group {name} must exist on this machine");
    // SAFETY: checked non-null.
    unsafe { (*g).gr_gid }
}

/// Who runs the client: root, `nobody` or another uid, with the given supplementary groups.
#[derive(Clone)]
enum As {
    Root,
    Nobody(Vec<u32>),
    Uid(u32, Vec<u32>),
}

fn command(who: &As, program: &str) -> Command {
    match who {
        As::Root => Command::new(program),
        As::Nobody(groups) | As::Uid(_, groups) => {
            let mut c = Command::new("setpriv");
            let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
            let uid = match who {
                As::Uid(uid, _) => uid.to_string(),
                _ => NOBODY.to_string(),
            };
            c.args(["--reuid", &uid, "--regid", &uid]);
            if groups.is_empty() {
                c.arg("--clear-groups");
            } else {
                c.arg("--groups").arg(groups.join(","));
            }
            c.arg(program);
            c
        }
    }
}

fn snapshot(agent: &AgentProcess, ns: &TestNetns, who: &As, args: &[&str]) -> Output {
    let mut cmd = command(who, netmon_bin().to_str().unwrap());
    cmd.arg("snapshot")
        .args(args)
        .env("NETMON_AGENT_SOCKET", &agent.socket);
    ns.run(move || cmd.output().expect("run netmon snapshot"))
}

fn ok_json(out: Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A `tcp-peer server` in `ns`, run by `who`; its port.
fn server(ns: &TestNetns, who: As) -> (Reaped, u16) {
    let mut child = Reaped::new(ns.run(move || {
        command(&who, PEER)
            .args(["server", "127.0.0.1:0", "normal"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tcp-peer server")
    }));
    let port = child.first_line().parse().expect("server port");
    (child, port)
}

/// A `tcp-peer client` connection to `port` and back; the client's pid.
fn client(ns: &TestNetns, who: As, port: u16) -> u32 {
    let mut c = ns.run(move || {
        command(&who, PEER)
            .args(["client", &format!("127.0.0.1:{port}"), "normal"])
            .spawn()
            .expect("spawn tcp-peer client")
    });
    assert!(wait_with_timeout(&mut c, Duration::from_secs(10)).success());
    c.id()
}

/// Owners by local port of the listeners a client sees.
fn listener_owners(rows: &[Value]) -> Vec<(u64, Option<u64>)> {
    rows.iter()
        .filter(|r| r["state"] == "LISTEN")
        .map(|r| {
            (
                r["local_port"].as_u64().unwrap(),
                r["owner"]["pid"].as_u64(),
            )
        })
        .collect()
}

#[test]
fn group_members_see_their_own_namespace_owners_and_history_only() {
    // The agent's group and admin group are existing system groups, so the test changes
    // nothing on the machine: `users` may query, `staff` sees everything.
    let (users, staff) = (gid("users"), gid("staff"));
    let ns = TestNetns::new();
    let other = TestNetns::new();
    let agent = AgentProcess::start_with(
        agent_socket_path(),
        &["--group", "users", "--admin-group", "staff"],
    );
    let (mut root_srv, root_port) = server(&ns, As::Root);
    let (mut user_srv, user_port) = server(&ns, As::Nobody(vec![]));
    let _other_srv = server(&other, As::Root).0;
    let member = As::Nobody(vec![users]);
    let admin = As::Nobody(vec![users, staff]);

    // Every socket of its namespace, like ss, but only its own sockets' owners.
    let seen = listener_owners(&ok_json(snapshot(
        &agent,
        &ns,
        &member,
        &["-tlnp", "-f", "json"],
    )));
    let ports: BTreeSet<u64> = seen.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        ports,
        BTreeSet::from([u64::from(root_port), u64::from(user_port)]),
        "{seen:?}"
    );
    for (port, pid) in &seen {
        if *port == u64::from(user_port) {
            assert_eq!(
                *pid,
                Some(u64::from(user_srv.id())),
                "its own listener's owner"
            );
        } else {
            assert_eq!(*pid, None, "root's listener's owner is not shown: {seen:?}");
        }
    }
    // A filter on the hidden owner finds nothing.
    let probe = format!("pid = {}", root_srv.id());
    let found = ok_json(snapshot(
        &agent,
        &ns,
        &member,
        &["-tln", "-f", "json", &probe],
    ));
    assert!(found.is_empty(), "{found:?}");
    // The text table hides it too.
    let out = snapshot(&agent, &ns, &member, &["-tlnpH"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(&format!("pid={}", root_srv.id())), "{text}");

    // Not every namespace.
    let out = snapshot(&agent, &ns, &member, &["-tan", "--all-netns"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--all-netns") && err.contains("admin group"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    // Its own closed connections only.
    client(&ns, As::Root, root_port);
    client(&ns, member.clone(), user_port);
    assert!(wait_with_timeout(&mut root_srv, Duration::from_secs(10)).success());
    assert!(wait_with_timeout(&mut user_srv, Duration::from_secs(10)).success());
    let ports_of = |rows: &[Value]| -> BTreeSet<u64> {
        rows.iter()
            .flat_map(|r| [r["local_port"].as_u64(), r["peer_port"].as_u64()])
            .flatten()
            .filter(|p| [root_port, user_port].map(u64::from).contains(p))
            .collect()
    };
    let closed = ok_json(snapshot(&agent, &ns, &member, &["--closed", "-f", "json"]));
    assert_eq!(
        ports_of(&closed),
        BTreeSet::from([u64::from(user_port)]),
        "{closed:?}"
    );

    // The admin group and root see all of it.
    for who in [admin, As::Root] {
        let closed = ok_json(snapshot(&agent, &ns, &who, &["--closed", "-f", "json"]));
        assert_eq!(
            ports_of(&closed),
            BTreeSet::from([u64::from(root_port), u64::from(user_port)])
        );
        let all = ok_json(snapshot(
            &agent,
            &ns,
            &who,
            &["-tln", "--all-netns", "-f", "json"],
        ));
        let namespaces: BTreeSet<u64> = all.iter().filter_map(|r| r["netns"].as_u64()).collect();
        assert!(
            namespaces.contains(&u64::from(other.inum)),
            "{namespaces:?}"
        );
    }
}

/// The namespace shown is the one the client passes with its request, and a member of the
/// group may pass only its own: holding an fd of another namespace shows nothing of it.
#[test]
fn a_member_cannot_see_another_namespace_by_passing_its_fd() {
    let users = gid("users");
    let ns = TestNetns::new();
    let other = TestNetns::new();
    let agent = AgentProcess::start_with(
        agent_socket_path(),
        &["--group", "users", "--admin-group", "staff"],
    );
    // A process of nobody's in `other`: nobody may open its /proc/PID/ns/net.
    let holder = server(&other, As::Nobody(vec![])).0;
    let path = format!("/proc/{}/ns/net", holder.id());
    let mut cmd = command(&As::Nobody(vec![users]), env!("CARGO_BIN_EXE_ns-client"));
    cmd.arg(&agent.socket).arg(&path);
    let out = ns.run(move || cmd.output().expect("run ns-client"));
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.contains("\"ok\":false") && reply.contains("not the client's own"),
        "{reply} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `netmon top` by a member of the group: the owners (comm[pid]) of its own connections; the
/// other users' live connections without owners, and none of their closed ones, as in a
/// snapshot. Root sees them all.
#[test]
fn top_shows_a_member_its_own_owners_only() {
    let users = gid("users");
    let ns = TestNetns::new();
    let agent = AgentProcess::start_with(
        agent_socket_path(),
        &["--group", "users", "--admin-group", "staff"],
    );
    let member = As::Nobody(vec![users]);
    let (mut root_srv, root_port) = server(&ns, As::Root);
    let (mut user_srv, user_port) = server(&ns, As::Nobody(vec![]));
    let root_client = client(&ns, As::Root, root_port);
    let user_client = client(&ns, member.clone(), user_port);
    assert!(wait_with_timeout(&mut root_srv, Duration::from_secs(10)).success());
    assert!(wait_with_timeout(&mut user_srv, Duration::from_secs(10)).success());
    // Still open while the screens are taken: a live connection of root's, one of nobody's.
    let (root_live, root_live_port) = server(&ns, As::Root);
    let _root_live = root_live;
    let root_holder = hold(&ns, As::Root, root_live_port);

    let screen = |who: &As| {
        let mut cmd = command(who, netmon_bin().to_str().unwrap());
        cmd.args(["top", "--once", "--total", "--size", "200x60"])
            .env("NETMON_AGENT_SOCKET", &agent.socket);
        let out = ns.run(move || cmd.output().expect("run netmon top --once"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let mine = |pid: u32| format!("tcp-peer[{pid}]");
    let seen = screen(&member);
    assert!(seen.contains(&mine(user_client)), "{seen}");
    assert!(seen.contains(&mine(user_srv.id())), "{seen}");
    for hidden in [root_client, root_srv.id(), root_holder.id()] {
        assert!(
            !seen.contains(&format!("[{hidden}]")),
            "pid {hidden}:\n{seen}"
        );
    }
    // Root's live connection is counted, under no owner.
    assert!(
        seen.lines().any(|l| l.trim_start().starts_with('?')),
        "{seen}"
    );

    let all = screen(&As::Root);
    for pid in [root_client, root_srv.id(), user_client, root_holder.id()] {
        assert!(all.contains(&mine(pid)), "pid {pid}:\n{all}");
    }
}

/// `n` listeners on 127.0.0.1 in `ns`, held until dropped.
fn listeners(ns: &TestNetns, n: usize) -> Vec<std::net::TcpListener> {
    ns.run(move || {
        (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a listener"))
            .collect()
    })
}

/// A `tcp-peer client` of `who` that connects to `port` and holds the connection.
fn hold(ns: &TestNetns, who: As, port: u16) -> Reaped {
    let mut c = Reaped::new(ns.run(move || {
        command(&who, PEER)
            .args(["client", &format!("127.0.0.1:{port}"), "hold"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tcp-peer client hold")
    }));
    // It prints a line once connected.
    c.first_line();
    c
}

/// One user's replies left unread (`netmon snapshot` piped into nobody) fill that user's share
/// of the agent's unread-bytes budget, not the whole of it: its next reply fails with a
/// one-line error naming the limit, while another user's is served in full.
#[test]
fn one_users_unread_replies_leave_another_user_its_share() {
    let users = gid("users");
    let ns = TestNetns::new();
    raise_nofile();
    // A JSON reply of about 1 MB.
    let _listeners = listeners(&ns, 3000);
    const MIB: usize = 1 << 20;
    let agent = AgentProcess::start_with(
        agent_socket_path(),
        &[
            "--group",
            "users",
            "--admin-group",
            "staff",
            "--max-unread-bytes",
            &(2 * MIB).to_string(),
            "--max-unread-bytes-per-user",
            &MIB.to_string(),
        ],
    );
    let (a, b) = (As::Nobody(vec![users]), As::Uid(1, vec![users]));
    let args = ["-tln", "-f", "json"];
    let reply = snapshot(&agent, &ns, &b, &args);
    let size = ok_json(reply).len();
    assert!(size >= 3000, "{size} rows");

    // A's clients that never read: each holds what the agent rendered beyond the socket's
    // buffers: at most a 256 KiB window of plain frames, the rest deflated. Eight of them
    // would hold more than the 2 MiB of the whole agent.
    let mut stuck = Vec::new();
    let mut refused = None;
    for _ in 0..8 {
        let mut cmd = command(&a, netmon_bin().to_str().unwrap());
        cmd.arg("snapshot")
            .args(args)
            .env("NETMON_AGENT_SOCKET", &agent.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        stuck.push(Reaped::new(
            ns.run(move || cmd.spawn().expect("spawn a stuck snapshot")),
        ));
        std::thread::sleep(Duration::from_millis(300));
        let out = snapshot(&agent, &ns, &a, &args);
        if !out.status.success() {
            refused = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
    }
    let refused = refused.expect("user A was never refused: its unread replies are unbounded");
    assert!(
        refused.contains(&format!("uid {NOBODY} has")) && refused.contains("try again"),
        "{refused}"
    );
    // B is served in full while A's replies are stuck.
    let rows = ok_json(snapshot(&agent, &ns, &b, &args));
    assert_eq!(rows.len(), size);
    drop(stuck);
}

/// Root floods the agent with 100 snapshot requests at once (never read) while a member asks
/// for one: the member's is answered before root's flood is, and within a few times what it
/// takes alone, because one uid never holds the last snapshot slot.
#[test]
fn one_users_flood_of_snapshots_leaves_another_user_a_slot() {
    let users = gid("users");
    let ns = TestNetns::new();
    raise_nofile();
    // Every snapshot dumps and renders all of them.
    let _listeners = listeners(&ns, 3000);
    let agent = AgentProcess::start_with(
        agent_socket_path(),
        &["--group", "users", "--admin-group", "staff"],
    );
    let b = As::Uid(1, vec![users]);
    let args = ["-tln"];
    let timed = |who: &As| {
        let start = Instant::now();
        let out = snapshot(&agent, &ns, who, &args);
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).lines().count() > 3000);
        took
    };
    let alone = (0..3).map(|_| timed(&b)).min().unwrap();

    let request = Request {
        version: VERSION,
        snapshot: SnapshotRequest {
            all: true,
            ..Default::default()
        },
        top: None,
    };
    let request = serde_json::to_string(&request).unwrap();
    let mut cmd = Command::new(CLIENTS);
    cmd.arg(&agent.socket)
        .arg("100")
        .arg(&request)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut flood = Reaped::new(ns.run(move || cmd.spawn().expect("spawn unix-clients")));
    let mut out = BufReader::new(flood.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected 100");
    // The requests are sent right after the connects; the agent reads them within ms.
    std::thread::sleep(Duration::from_millis(200));
    let flood_start = Instant::now();
    let during = timed(&b);
    // When every reply of root's flood has been made.
    line.clear();
    out.read_line(&mut line).unwrap();
    let flood_took = flood_start.elapsed();
    assert_eq!(line.trim(), "filled 100", "root's replies never came");
    eprintln!(
        "a member's snapshot: {alone:?} alone, {during:?} during root's flood of 100 (served \
         in {flood_took:?})"
    );
    assert!(
        during < flood_took,
        "the member waited {during:?}, behind root's whole flood ({flood_took:?})"
    );
    assert!(
        during < alone * 6 + Duration::from_millis(500),
        "the member waited {during:?} during root's flood, {alone:?} alone"
    );
}

/// Raises this process's soft limit of open files to its hard limit.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}
