//! Opens many connections to a Unix socket and holds them: the misbehaving client of the
//! agent's limits tests.
//!
//! `unix-clients PATH N`: connects N times without sending anything, prints `connected K`
//! (the connects that succeeded), then holds every connection until stdin closes.
//! `unix-clients PATH N REQUEST`: also sends the line REQUEST on each and never reads the
//! reply; once every reply fills its socket's buffer (128 KiB waiting, within 60 s), prints
//! `filled K` (how many did), then holds them until stdin closes.

use std::{
    io::{Read, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (path, n, request) = match args.as_slice() {
        [_, path, n] => (path, n, None),
        [_, path, n, request] => (path, n, Some(request)),
        _ => {
            eprintln!("usage: unix-clients PATH N [REQUEST]");
            std::process::exit(2);
        }
    };
    let n: usize = n.parse().expect("N is a number");
    let mut held: Vec<UnixStream> = (0..n)
        .filter_map(|_| UnixStream::connect(path).ok())
        .collect();
    println!("connected {}", held.len());
    if let Some(request) = request {
        for s in &mut held {
            s.write_all(format!("{request}\n").as_bytes()).ok();
        }
        let waiting = |s: &UnixStream| {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int.
            unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
            n as usize
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while held.iter().any(|s| waiting(s) < 128 << 10) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let filled = held.iter().filter(|s| waiting(s) >= 128 << 10).count();
        println!("filled {filled}");
    }
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest).ok();
}
