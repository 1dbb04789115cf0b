//! The load the bench measures under, run as hidden xtask subcommands inside the bench's
//! namespaces: a loopback connect+close storm, and processes that hold connections open.

use std::{
    io::{BufRead, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc, Barrier,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Loopback destinations per client thread: every (destination, port) pair has its own 28k
/// ephemeral ports, so a storm of a few hundred thousand connections, whose clients all sit in
/// TIME-WAIT afterwards, never runs out of them.
const DESTINATIONS: u32 = 1000;

/// A listener on every local address (all of 127/8 is local once `lo` is up) with the
/// kernel's largest backlog: a full accept queue drops SYNs, and the client would then wait a
/// second for its retransmission.
fn listener(port: u16, v6: bool) -> Result<TcpListener> {
    let l = if v6 {
        TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))?
    } else {
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?
    };
    // SAFETY: listen() again on a listening socket only raises its backlog (std uses 128).
    if unsafe { libc::listen(l.as_raw_fd(), 4096) } != 0 {
        return Err(std::io::Error::last_os_error()).context("listen");
    }
    Ok(l)
}

fn destination(thread: usize, k: u64, port: u16, v6: bool) -> SocketAddr {
    if v6 {
        // One loopback address: ports of TIME-WAIT sockets are reused on loopback
        // (net.ipv4.tcp_tw_reuse = 2, the default), which keeps the storm going.
        return SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port);
    }
    let k = (k % u64::from(DESTINATIONS)) as u32;
    let ip = Ipv4Addr::new(127, 1 + thread as u8, (k / 250) as u8, (k % 250) as u8 + 1);
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// The connect+close storm: `threads` clients, each with an accepting thread of its own, for
/// `secs` seconds or `max` connections in all, whichever comes first. Each connection is 10
/// transitions (5 per side, whoever closes first, no RST: nothing is left unread) and each
/// listener 2 (CLOSE -> LISTEN, LISTEN -> CLOSE). Listeners take ports `port`, `port + 1`, ...
/// (any free ones if 0) on IPv4 or IPv6; `linger` seconds after the last connection closed,
/// the storm prints one line of `key=value`. `rate` > 0 paces it to that many connections a
/// second in all (a churn beside other work); 0 runs it as fast as it goes.
pub fn storm(
    threads: usize,
    secs: f64,
    max: u64,
    port: u16,
    v6: bool,
    linger: f64,
    rate: f64,
) -> Result<()> {
    if threads == 0 || threads > 100 {
        bail!("--threads must be 1..=100");
    }
    if !(0.0..=10.0).contains(&linger) {
        bail!("--linger must be 0..=10 seconds");
    }
    let listeners = (0..threads)
        .map(|i| listener(if port == 0 { 0 } else { port + i as u16 }, v6))
        .collect::<Result<Vec<_>>>()?;
    let per_thread = max.div_ceil(threads as u64);
    let start = Arc::new(Barrier::new(threads + 1));
    let deadline = Duration::from_secs_f64(secs);
    let per_thread_rate = rate / threads as f64;
    let mut clients = Vec::new();
    let mut acceptors = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let port = l.local_addr()?.port();
        // The client's final count; the acceptor stops once it accepted that many.
        let made = Arc::new(AtomicU64::new(u64::MAX));
        let made_by_client = made.clone();
        let start = start.clone();
        clients.push(std::thread::spawn(move || {
            start.wait();
            let t0 = Instant::now();
            let (mut n, mut errors) = (0u64, 0u64);
            while n < per_thread && t0.elapsed() < deadline {
                // Connect, then close at once: the server side is closed by the acceptor.
                match TcpStream::connect(destination(i, n + errors, port, v6)) {
                    Ok(s) => {
                        drop(s);
                        n += 1;
                    }
                    Err(_) => errors += 1,
                }
                if per_thread_rate > 0.0 {
                    // Connection n is due at n / rate: a slow moment is caught up, not lost.
                    let due = Duration::from_secs_f64(n as f64 / per_thread_rate);
                    if let Some(wait) = due.checked_sub(t0.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            made_by_client.store(n, Ordering::Release);
            (n, errors, t0.elapsed())
        }));
        acceptors.push(std::thread::spawn(move || accept_until(l, &made)));
    }
    start.wait();
    let mut total = 0;
    let mut errors = 0;
    let mut elapsed = Duration::ZERO;
    for c in clients {
        let (n, e, t) = c
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        total += n;
        errors += e;
        elapsed = elapsed.max(t);
    }
    let mut unaccepted = 0;
    for a in acceptors {
        unaccepted += a
            .join()
            .map_err(|_| anyhow::anyhow!("acceptor thread panicked"))??;
    }
    std::thread::sleep(Duration::from_secs_f64(linger));
    println!(
        "connections={total} listeners={threads} secs={:.6} errors={errors} unaccepted={unaccepted}",
        elapsed.as_secs_f64()
    );
    Ok(())
}

/// Accepts and closes until the client's count is reached; returns how many it never got
/// (after waiting 10 s once the client stopped), which would make the expected transition
/// count wrong: the caller reports it.
fn accept_until(l: TcpListener, made: &AtomicU64) -> Result<u64> {
    // A receive timeout makes accept() return now and then to look at the client's count.
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: valid fd, option value and length.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_RCVTIMEO");
    }
    let mut accepted = 0u64;
    let mut client_done_at = None;
    loop {
        let target = made.load(Ordering::Acquire);
        if accepted >= target {
            return Ok(0);
        }
        if target != u64::MAX {
            let since = *client_done_at.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(10) {
                return Ok(target - accepted);
            }
        }
        if let Ok((s, _)) = l.accept() {
            drop(s);
            accepted += 1;
        }
    }
}

/// Holds `conns` established loopback connections (both ends, so 2 sockets each) and one
/// listener, i.e. 2 * conns + 1 sockets and as many fds; prints `ready SOCKETS PORT` (the
/// listener's port) and keeps
/// them until stdin closes. Several of these make up socket counts beyond the 20000-fd limit.
pub fn hold(conns: u32, id: u8) -> Result<()> {
    if conns > 60_000 || id > 100 {
        bail!("--conns must be at most 60000 and --id at most 100");
    }
    let l = listener(0, false)?;
    let port = l.local_addr()?.port();
    let mut keep = Vec::with_capacity(2 * conns as usize);
    for k in 0..conns {
        // A /16 of its own per holder, 250 connections per address: ports never run short.
        let ip = Ipv4Addr::new(127, 100 + id, (k / 250) as u8, (k % 250) as u8 + 1);
        let c = TcpStream::connect(SocketAddrV4::new(ip, port))
            .with_context(|| format!("connection {k} to {ip}:{port}"))?;
        let (s, _) = l.accept()?;
        keep.push(c);
        keep.push(s);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {} {port}", keep.len() + 1)?;
    out.flush()?;
    // Until the bench closes our stdin (or dies, which closes it too).
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line)? > 0 {
        line.clear();
    }
    drop(keep);
    Ok(())
}
