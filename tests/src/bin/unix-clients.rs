//! Opens many idle connections to a Unix socket and holds them: the misbehaving client of the
//! agent's limits test.
//!
//! `unix-clients PATH N`: connects N times without sending anything, prints `connected K`
//! (the connects that succeeded), then holds every connection until stdin closes.

use std::{io::Read, os::unix::net::UnixStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, n] = args.as_slice() else {
        eprintln!("usage: unix-clients PATH N");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N is a number");
    let held: Vec<UnixStream> = (0..n)
        .filter_map(|_| UnixStream::connect(path).ok())
        .collect();
    println!("connected {}", held.len());
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest).ok();
}
