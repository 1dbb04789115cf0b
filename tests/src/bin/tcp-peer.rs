//! A TCP peer for the owner tests: a process of its own, with a known pid and comm.
//!
//! `tcp-peer server ADDR MODE`: listens on ADDR (port 0), prints the port, serves one
//! connection and exits. MODE `normal` reads to EOF then closes; `reset` closes with the
//! client's bytes unread, so the kernel sends a RST.
//! `tcp-peer client ADDR MODE`: connects, writes, and for `normal` shuts down and reads to EOF;
//! `reset` waits for the server's RST; `refused` expects the connect to be refused; `hold`
//! prints `connected` and keeps the connection open for 60 s at most (the test kills it).
//! With `TCP_PEER_COMM` set, the process first renames itself to it (`PR_SET_NAME`, any bytes).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

fn main() {
    if let Some(name) = std::env::var_os("TCP_PEER_COMM") {
        let name = std::ffi::CString::new(name.into_encoded_bytes()).expect("no NUL in the name");
        // SAFETY: PR_SET_NAME reads a NUL-terminated string (the kernel keeps 15 bytes).
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) }, 0);
    }
    let args: Vec<String> = std::env::args().collect();
    let [_, role, addr, mode] = args.as_slice() else {
        eprintln!("usage: tcp-peer server|client ADDR MODE");
        std::process::exit(2);
    };
    match role.as_str() {
        "server" => server(addr, mode),
        "client" => client(addr, mode),
        _ => std::process::exit(2),
    }
}

fn server(addr: &str, mode: &str) {
    let listener = TcpListener::bind(addr).expect("bind");
    println!("{}", listener.local_addr().expect("addr").port());
    std::io::stdout().flush().expect("flush");
    let (mut conn, _) = listener.accept().expect("accept");
    match mode {
        "normal" => {
            conn.read_to_end(&mut Vec::new()).expect("read");
        }
        "reset" => {
            // Let the client's bytes arrive, then close without reading them.
            std::thread::sleep(Duration::from_millis(100));
        }
        _ => panic!("mode {mode}"),
    }
}

fn client(addr: &str, mode: &str) {
    match mode {
        "refused" => {
            let err = TcpStream::connect(addr).expect_err("connect must be refused");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        "normal" => {
            let mut conn = TcpStream::connect(addr).expect("connect");
            conn.write_all(b"hello").expect("write");
            conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
            conn.read_to_end(&mut Vec::new()).expect("read");
        }
        "reset" => {
            let mut conn = TcpStream::connect(addr).expect("connect");
            conn.write_all(b"unread").expect("write");
            let err = conn
                .read_to_end(&mut Vec::new())
                .expect_err("the server resets");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        }
        "hold" => {
            let _conn = TcpStream::connect(addr).expect("connect");
            println!("connected");
            std::io::stdout().flush().expect("flush");
            std::thread::sleep(Duration::from_secs(60));
        }
        _ => panic!("mode {mode}"),
    }
}
