//! A hostile namespace owner for the spoofing test: floods a netlink port with fake sock_diag
//! replies.
//!
//! `nl-flood PORTID SECS LISTENERS COOKIE...`: run inside a user + network namespace of its own
//! (where its owner holds CAP_NET_ADMIN, so it may unicast to any netlink port). It opens
//! LISTENERS listening sockets, so that a dump of its namespace takes many datagrams (the
//! kernel continues a dump only when the reader's buffer is half empty, which the flood
//! prevents), prints `ready`, then for SECS seconds sends datagrams to port PORTID of
//! NETLINK_SOCK_DIAG, each full of fake TIME-WAIT records for the given socket cookies under
//! every low sequence number a dump might use. Sends the kernel refuses (no such port, or a
//! socket connected to the kernel) are counted, not fatal. Prints `sent N refused M` at the end.

use std::time::{Duration, Instant};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCPDIAG_GETSOCK: u16 = 18;
const MSG_LEN: usize = 16 + 72;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(port), Some(secs), Some(listeners)) = (
        args.get(1).and_then(|a| a.parse::<u32>().ok()),
        args.get(2).and_then(|a| a.parse::<f64>().ok()),
        args.get(3).and_then(|a| a.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: nl-flood PORTID SECS LISTENERS COOKIE...");
        std::process::exit(2);
    };
    let cookies: Vec<u64> = args[4..]
        .iter()
        .map(|c| c.parse().expect("cookie"))
        .collect();
    let dgram = datagram(&cookies);
    let _listeners = listen(listeners);
    println!("ready");
    std::io::Write::flush(&mut std::io::stdout()).expect("flush");
    // SAFETY: plain socket calls on an fd this process owns; the address is a zeroed
    // sockaddr_nl with the family and port set.
    let (sent, refused) = unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut to: libc::sockaddr_nl = std::mem::zeroed();
        to.nl_family = libc::AF_NETLINK as u16;
        to.nl_pid = port;
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let (mut sent, mut refused) = (0u64, 0u64);
        while Instant::now() < deadline {
            let rc = libc::sendto(
                fd,
                dgram.as_ptr().cast(),
                dgram.len(),
                libc::MSG_DONTWAIT,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            );
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    // No such port yet, a connected receiver, or its buffer is full.
                    Some(libc::ECONNREFUSED | libc::EAGAIN | libc::ENOBUFS) => refused += 1,
                    Some(libc::EPERM) => panic!("sendto: EPERM (not the namespace's owner?)"),
                    _ => panic!("sendto: {e}"),
                }
                if refused % 1024 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            } else {
                sent += 1;
            }
        }
        (sent, refused)
    };
    println!("sent {sent} refused {refused}");
}

/// `n` listeners on the wildcard address (the namespace's `lo` is down), within the fd limit.
fn listen(n: usize) -> Vec<std::net::TcpListener> {
    // SAFETY: getrlimit/setrlimit on a local struct.
    let limit = unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        l.rlim_cur as usize
    };
    (0..n.min(limit.saturating_sub(64)))
        .map(|_| std::net::TcpListener::bind("0.0.0.0:0").expect("listen"))
        .collect()
}

/// One datagram of ~30 KiB: fake records under sequence numbers 1..=8 and both reply types.
fn datagram(cookies: &[u64]) -> Vec<u8> {
    let mut d = Vec::new();
    'fill: loop {
        for seq in 1..=8u32 {
            for ty in [TCPDIAG_GETSOCK, SOCK_DIAG_BY_FAMILY] {
                for &cookie in cookies.iter().chain(&[0xdead_0000_0000 + u64::from(seq)]) {
                    if d.len() + MSG_LEN > 30_000 {
                        break 'fill;
                    }
                    d.extend_from_slice(&message(ty, seq, cookie));
                }
            }
        }
    }
    d
}

/// A reply claiming a TIME-WAIT socket 10.6.6.6:6666 -> 10.6.6.7:7777 with `cookie`.
fn message(ty: u16, seq: u32, cookie: u64) -> [u8; MSG_LEN] {
    let mut m = [0u8; MSG_LEN];
    m[0..4].copy_from_slice(&(MSG_LEN as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&ty.to_ne_bytes());
    m[6..8].copy_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    let p = &mut m[16..];
    p[0] = libc::AF_INET as u8;
    p[1] = 6; // TIME_WAIT
    p[4..6].copy_from_slice(&6666u16.to_be_bytes());
    p[6..8].copy_from_slice(&7777u16.to_be_bytes());
    p[8..12].copy_from_slice(&[10, 6, 6, 6]);
    p[24..28].copy_from_slice(&[10, 6, 6, 7]);
    p[44..48].copy_from_slice(&(cookie as u32).to_ne_bytes());
    p[48..52].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    m
}
