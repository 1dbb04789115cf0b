//! The kernel path, end to end: the real program on the real tracepoint, loopback connections
//! in a namespace of the test's own, exact transition sequences and exact loss accounting.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use netmon::{
    attach::KernelCounters,
    decode::{HintKind, Transition},
};
use netmon_common::TcpState::{self, *};
use netmon_tests::{Conn, PerfFires, TestNetns, collect, connect_and_close};

/// What this kernel reports for one connection (see shared notes: TIME-WAIT gets no event,
/// the full socket goes FIN-WAIT-2 -> CLOSE).
const CLIENT: [(TcpState, TcpState); 5] = [
    (Close, SynSent),
    (SynSent, Established),
    (Established, FinWait1),
    (FinWait1, FinWait2),
    (FinWait2, Close),
];
const SERVER_CHILD: [(TcpState, TcpState); 5] = [
    (Listen, SynRecv),
    (SynRecv, Established),
    (Established, CloseWait),
    (CloseWait, LastAck),
    (LastAck, Close),
];
const LISTENER: [(TcpState, TcpState); 2] = [(Close, Listen), (Listen, Close)];

fn by_socket(events: &[Transition]) -> BTreeMap<u64, Vec<&Transition>> {
    let mut map: BTreeMap<u64, Vec<&Transition>> = BTreeMap::new();
    for t in events {
        map.entry(t.cookie).or_default().push(t);
    }
    map
}

fn states(events: &[&Transition]) -> Vec<(TcpState, TcpState)> {
    events.iter().map(|t| (t.old, t.new)).collect()
}

fn exact_sequences(bind: &'static str) {
    let ns = TestNetns::new();
    let mut probe = ns.probe(1 << 16);
    let conn: Conn = ns.run(move || {
        let listener = TcpListener::bind(bind).expect("bind");
        connect_and_close(&listener)
    });
    let events = collect(&mut probe, 12, Duration::from_secs(5)).transitions;
    assert_eq!(events.len(), 12, "expected 12 transitions, got {events:#?}");
    assert!(events.iter().all(|t| t.netns == ns.inum));

    let sockets = by_socket(&events);
    assert_eq!(
        sockets.len(),
        3,
        "listener, client and server child: {sockets:#?}"
    );
    let find = |first: (TcpState, TcpState)| {
        sockets
            .values()
            .find(|evs| (evs[0].old, evs[0].new) == first)
            .unwrap_or_else(|| panic!("no socket starting with {first:?}: {sockets:#?}"))
    };

    let client = find(CLIENT[0]);
    assert_eq!(states(client), CLIENT);
    // The connect event fires before the kernel picks the source port.
    assert_eq!(client[0].remote, conn.server);
    for t in &client[1..] {
        assert_eq!((t.local, t.remote), (conn.client, conn.server), "{t:?}");
    }

    let child = find(SERVER_CHILD[0]);
    assert_eq!(states(child), SERVER_CHILD);
    for t in child {
        assert_eq!((t.local, t.remote), (conn.server, conn.client), "{t:?}");
    }

    let listener = find(LISTENER[0]);
    assert_eq!(states(listener), LISTENER);
    assert_eq!(listener[0].local, conn.server);

    // Timestamps are ordered per socket.
    for evs in sockets.values() {
        assert!(evs.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
    }
}

#[test]
fn ipv4_connection_has_exact_transition_sequences() {
    exact_sequences("127.0.0.1:0");
}

#[test]
fn ipv6_connection_has_exact_transition_sequences() {
    exact_sequences("[::1]:0");
}

#[test]
fn forced_loss_is_counted_exactly() {
    let ns = TestNetns::new();
    // One page of ring: about 40 records fit; the reader does not read while traffic runs.
    let mut probe = ns.probe(4096);
    const CONNS: usize = 200;
    ns.run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        for _ in 0..CONNS {
            connect_and_close(&listener);
        }
    });
    let generated = (CONNS * 10 + LISTENER.len()) as u64;
    let received = collect(&mut probe, 0, Duration::from_millis(10))
        .transitions
        .len() as u64;
    let c = probe.counters().expect("read counters");
    let c = KernelCounters {
        // A second reading confirms any fire no copy ran for (see `fires::NotRun`).
        not_run: probe.counters().expect("read counters").not_run,
        ..c
    };
    assert!(c.ring_full > 0, "a one-page ring must overflow: {c:?}");
    // Fires the kernel ran no copy for are counted over every namespace, so they bound the
    // difference rather than close it; without any, the count is exact.
    let accounted = received + c.ring_full + c.recursion_lost(0);
    let not_run = c.not_run.expect("fire counting is on");
    assert!(
        accounted <= generated && generated <= accounted + not_run,
        "received {received} + lost {c:?} must account for generated {generated}"
    );
    assert_eq!(c.seen, received + c.ring_full, "{c:?}");
}

/// `tcp_send_reset` also fires for a TIME-WAIT socket (new data reaching a client that closed
/// first: `tcp_timewait_state_process` answers with a reset), which is an
/// `inet_timewait_sock`, only a `sock_common`: the program must not read `struct sock` fields
/// past it. The reset the peer receives is a full socket's and is reported.
#[test]
fn a_reset_sent_by_a_timewait_socket_is_not_read_as_a_full_socket() {
    let ns = TestNetns::new();
    let mut probe = ns.probe(1 << 20);
    let listener = ns.run(|| TcpListener::bind("127.0.0.1:0").unwrap());
    // Counted outside BPF, to know the kernel did fire the tracepoint with a timewait socket
    // (state TIME-WAIT, reason SK_RST_REASON_TCP_TIMEWAIT_SOCKET).
    let resets = PerfFires::open_on("tcp/tcp_send_reset", "state == 6 && reason == 9");
    let (client, server) = ns.run(move || {
        let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
        let (mut child, _) = listener.accept().expect("accept");
        let addrs = (client.local_addr().unwrap(), child.local_addr().unwrap());
        // The client closes first; once its FIN is acked the kernel hands it to a timewait
        // socket (FIN-WAIT-2 substate).
        drop(client);
        let mut byte = [0u8; 1];
        assert_eq!(child.read(&mut byte).expect("child reads EOF"), 0);
        std::thread::sleep(Duration::from_millis(50));
        // New data after the half-duplex close: the timewait socket answers with a reset.
        child.write_all(b"late").expect("child writes");
        std::thread::sleep(Duration::from_millis(100));
        addrs
    });
    let got = collect(&mut probe, 10, Duration::from_secs(5));
    assert!(resets.read() >= 1, "the timewait socket sent a reset");
    let ours =
        |a: SocketAddr, b: SocketAddr| (a == client && b == server) || (a == server && b == client);
    assert!(
        got.hints.iter().all(|h| ours(h.local, h.remote)),
        "every hint names one of the connection's sockets: {:#?}",
        got.hints
    );
    assert!(
        got.hints
            .iter()
            .any(|h| h.kind == HintKind::ResetReceived && h.local == server),
        "the child's received reset is reported: {:#?}",
        got.hints
    );
    assert!(
        !got.hints
            .iter()
            .any(|h| h.kind == HintKind::ResetSent && h.state == TcpState::TimeWait),
        "the timewait socket's reset is not read as a full socket's: {:#?}",
        got.hints
    );
}
