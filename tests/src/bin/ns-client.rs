//! A raw agent client for the privilege test: `ns-client SOCKET NETNS_PATH` sends a snapshot
//! request with the fd of NETNS_PATH attached (as `netmon snapshot` attaches its own
//! namespace's) and prints the agent's reply header line.

use std::{
    io::{BufRead, BufReader},
    os::{fd::AsRawFd, unix::net::UnixStream},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, netns] = args.as_slice() else {
        eprintln!("usage: ns-client SOCKET NETNS_PATH");
        std::process::exit(2);
    };
    let ns = std::fs::File::open(netns).expect("open the namespace");
    let stream = UnixStream::connect(socket).expect("connect to the agent");
    let request = netmon::wire::Request {
        version: netmon::wire::VERSION,
        snapshot: netmon::wire::SnapshotRequest {
            all: true,
            ..Default::default()
        },
        top: None,
    };
    let mut line = serde_json::to_vec(&request).unwrap();
    line.push(b'\n');
    let sent = netmon::peer::send_with_fd(stream.as_raw_fd(), &line, ns.as_raw_fd()).unwrap();
    assert_eq!(sent, line.len());
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).unwrap();
    print!("{reply}");
}
