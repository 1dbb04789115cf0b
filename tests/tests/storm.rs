//! Exact or loud under load: short max-rate connect/close storms, each counted by the kernel's
//! own perf counter on the tracepoint, against what `netmon watch` wrote and what it reported
//! lost. Root: loads the real program and makes real connections in a test namespace.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::mpsc::Receiver,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use netmon_tests::{
    PerfFires, TestNetns, interrupt, lines, spawn_watch, stderr_of, wait_attached,
    wait_with_timeout,
};
use serde_json::Value;

/// Storm length and bound: a few seconds of the machine's top rate, never more connections
/// than this.
const STORM: Duration = Duration::from_millis(1500);
const MAX_CONNECTIONS: u64 = 150_000;
/// IPv6 has one loopback address, so 28k ephemeral ports towards it.
const MAX_CONNECTIONS_V6: u64 = 25_000;
const CLIENTS: usize = 2;

/// One storm: `CLIENTS` threads connect and close at once to `port` on a v4 or v6 loopback
/// address, as fast as they can, while as many threads accept and close. Returns the
/// connections made. Every connection is 10 transitions, the listener 2.
fn storm(ns: &TestNetns, v6: bool, port: u16) -> u64 {
    ns.run(move || {
        let any: IpAddr = if v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let listener = TcpListener::bind(SocketAddr::new(any, port)).expect("bind");
        // The kernel's largest backlog: a full accept queue drops SYNs, and a client would
        // then wait a second for its retransmission. A receive timeout makes accept() return
        // now and then to see whether the clients are done.
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: listen() again only raises the backlog; valid option value and length.
        unsafe {
            assert_eq!(libc::listen(listener.as_raw_fd(), 4096), 0);
            assert_eq!(
                libc::setsockopt(
                    listener.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const timeout).cast(),
                    size_of::<libc::timeval>() as libc::socklen_t,
                ),
                0
            );
        }
        let listener = Arc::new(listener);
        let made = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let acceptors: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (l, done, accepted, made) = (
                    listener.clone(),
                    done.clone(),
                    accepted.clone(),
                    made.clone(),
                );
                std::thread::spawn(move || {
                    let deadline = Instant::now() + STORM + Duration::from_secs(10);
                    while Instant::now() < deadline {
                        match l.accept() {
                            Ok((s, _)) => {
                                drop(s);
                                accepted.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                if done.load(Ordering::Acquire)
                                    && accepted.load(Ordering::Relaxed)
                                        >= made.load(Ordering::Relaxed)
                                {
                                    return;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let made = made.clone();
                let max = if v6 {
                    MAX_CONNECTIONS_V6
                } else {
                    MAX_CONNECTIONS
                };
                std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let mut k = 0u32;
                    while t0.elapsed() < STORM && made.load(Ordering::Relaxed) < max {
                        // Many destinations: clients close first and sit in TIME-WAIT, and each
                        // destination has its own ephemeral ports.
                        let dst: IpAddr = if v6 {
                            Ipv6Addr::LOCALHOST.into()
                        } else {
                            Ipv4Addr::new(
                                127,
                                1 + i as u8,
                                (k / 250 % 250) as u8,
                                (k % 250) as u8 + 1,
                            )
                            .into()
                        };
                        k += 1;
                        if let Ok(s) = TcpStream::connect(SocketAddr::new(dst, port)) {
                            drop(s);
                            made.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        done.store(true, Ordering::Release);
        for a in acceptors {
            a.join().unwrap();
        }
        let made = made.load(Ordering::Relaxed);
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            made,
            "every connection was accepted"
        );
        made
    })
}

/// Reads netmon's output into `w` until it has been quiet for a second and a half (it caught
/// up with the ring and reported the losses), two minutes at most.
fn tally(rx: &Receiver<String>, w: &mut Window) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(1500)) {
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        match v["type"].as_str() {
            Some("transition") => {
                let port = Some(u64::from(w.port));
                if v["local_port"].as_u64() == port || v["peer_port"].as_u64() == port {
                    w.written += 1;
                }
            }
            Some("loss") => w.lost += v["count"].as_u64().unwrap(),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "netmon did not catch up within 2 minutes"
        );
    }
}

#[derive(Debug, Default)]
struct Window {
    port: u16,
    connections: u64,
    fired: u64,
    written: u64,
    lost: u64,
}

#[test]
fn storms_written_plus_reported_lost_equals_fired_by_perf() {
    let ns = TestNetns::new();
    let only_ours = format!("netns = {}", ns.inum);
    let mut child = spawn_watch(&["--format", "json", &only_ours]);
    let rx = lines(child.stdout.take().unwrap());
    let mut out = Vec::new();
    wait_attached(&ns, &rx, &mut out);
    // Ports no test picks (below the ephemeral range), one per storm: perf's filter and the
    // stream are cut by port, so other tests' traffic on the machine counts on neither side.
    // Losses counted before the first storm (the canary's) are not the storms'.
    tally(&rx, &mut Window::default());
    let mut windows = Vec::new();
    for (i, v6) in [false, true, false, true].into_iter().enumerate() {
        let port = 941 + i as u16;
        let perf = PerfFires::open(&format!("sport == {port} || dport == {port}"));
        let mut w = Window {
            port,
            connections: storm(&ns, v6, port),
            ..Window::default()
        };
        w.fired = perf.settled(Duration::from_secs(10));
        // Everything netmon prints until it has caught up is this storm's: its transitions
        // and the losses it counted (read every 250 ms).
        tally(&rx, &mut w);
        windows.push(w);
    }
    interrupt(&child);
    let status = wait_with_timeout(&mut child, Duration::from_secs(60));
    assert!(status.success(), "netmon watch exited with {status}");
    let err = stderr_of(&mut child);
    for w in &windows {
        eprintln!("storm {w:?}");
        assert!(
            w.connections > 1000,
            "the storm made too few connections: {w:?}"
        );
        assert!(
            w.fired >= w.connections * 10 + 2,
            "perf counted fewer fires than the storm made transitions: {w:?}"
        );
        assert!(w.written <= w.fired, "more written than fired: {w:?}");
        // Loss counts cover every transition the kernel filter let through (ring full) or
        // every fire (recursion, not run), not only this port's: they bound the gap.
        assert!(
            w.fired - w.written <= w.lost,
            "{} transitions fired and neither written nor reported lost: {w:?}; stderr: {err}",
            w.fired - w.written - w.lost
        );
        if w.lost == 0 {
            assert_eq!(w.written, w.fired, "{w:?}");
        }
    }
}
