//! `netmon agent`: keeps the connection table from the event stream and serves snapshots on a
//! Unix socket; also the client side of that socket and its wire protocol.
//!
//! Protocol: the client sends one JSON line, a [`Request`] of at most [`MAX_REQUEST`] bytes;
//! the agent answers with one JSON line, a [`ReplyHeader`], then the rendered output until EOF.
//! The agent renders (it holds the table), so the client only copies bytes to its stdout.
//!
//! Lifecycle of the table: attach first, then seed every namespace from sock_diag, then apply
//! events. Each snapshot dumps the caller's namespace again and reconciles the table with it,
//! so rows, states and queues are what the kernel has now (as ss shows them) and ages and
//! histories come from the stream. A counted loss, or a minute without one, reconciles every
//! namespace.

use std::{
    cell::RefCell,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    rc::Rc,
    time::Duration,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    attach::{Probe, ProbeConfig, RingWaiter},
    decode,
    filter::Services,
    netns::{self, Netns},
    output::Clock,
    procfs,
    snapshot::{self, Data, Row, SnapshotArgs},
    table::Table,
};

pub const DEFAULT_SOCKET: &str = "/run/netmon/agent.sock";
/// Members of this group may query the agent; everyone else needs root.
pub const GROUP: &str = "netmon";
pub const MAX_REQUEST: usize = 64 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const RECONCILE_EVERY: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(50);
const COUNTERS_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub snapshot: SnapshotArgs,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ReplyHeader {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// Unix socket to serve snapshots on.
    #[arg(long, default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    /// Closed connections to remember (oldest evicted first, and counted).
    #[arg(long, default_value_t = crate::table::DEFAULT_CLOSED_CAPACITY, value_name = "N")]
    pub closed_capacity: usize,
    /// Ring buffer size in bytes (a power of two).
    #[arg(long, default_value_t = netmon_common::DEFAULT_RING_BYTES, value_name = "BYTES")]
    pub ring_size: u32,
    /// Settings file, read before the flags (flags win); then `*.toml` in the drop-in
    /// directory beside it (agent.d/). [default: /etc/netmon/agent.toml, if it exists]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// What the agent's tasks share (one thread: `Rc<RefCell>`, never borrowed across an await).
struct Agent {
    probe: Probe,
    table: Table,
    services: Services,
    clock: Clock,
    /// Losses seen so far: ring full, recursion.
    reported: [u64; 2],
}

impl Agent {
    /// Applies waiting events to the table, a ring's worth at most; true if more may wait.
    fn drain(&mut self) -> bool {
        let table = &mut self.table;
        self.probe
            .drain(|bytes| {
                if let Ok(e) = decode::decode(bytes) {
                    table.event(&e);
                }
            })
            .more
    }

    fn reconcile_all(&mut self) {
        self.drain();
        netns::resync_all(&mut self.table, None);
    }

    /// True when the kernel counted a loss since the last look: the table may be wrong.
    fn losses_grew(&mut self) -> anyhow::Result<bool> {
        let now = self.probe.counters()?;
        let lost = [now.ring_full, now.recursion_lost(self.table.duplicates)];
        let grew = lost
            .iter()
            .zip(self.reported)
            .any(|(now, before)| *now > before);
        if grew {
            eprintln!(
                "netmon agent: {} events lost to a full ring, {} to recursion so far; resyncing",
                lost[0], lost[1]
            );
            self.reported = lost;
        }
        Ok(grew)
    }
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(
    args: &AgentArgs,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let config = ProbeConfig {
        ring_bytes: args.ring_size,
        ..ProbeConfig::default()
    };
    let probe = Probe::attach(&config)?;
    let agent = Rc::new(RefCell::new(Agent {
        probe,
        table: Table::with_capacity(args.closed_capacity),
        services: Services::system().unwrap_or_default(),
        clock: Clock::now(),
        reported: [0; 2],
    }));
    {
        // Seed: every namespace, and the owners of sockets that predate us, once.
        let mut a = agent.borrow_mut();
        a.drain();
        netns::resync_all(&mut a.table, Some(&procfs::socket_owners()));
    }
    let (listener, bound) = listen(&args.socket)?;
    // Attached and serving: answering needs three capabilities from here on (privileges.rs).
    if let Err(e) = crate::privileges::keep_only(crate::privileges::AGENT_KEEPS) {
        eprintln!("netmon agent: could not drop the capabilities it no longer needs: {e}");
    }
    let local = tokio::task::LocalSet::new();
    let result = local.run_until(serve(agent, listener, stop)).await;
    if bound {
        std::fs::remove_file(&args.socket).ok();
    }
    result
}

/// The socket to serve: the one a service manager passed (netmon-agent.socket), which stays
/// its to remove, or else one bound here (true).
fn listen(path: &Path) -> anyhow::Result<(UnixListener, bool)> {
    if let Some(passed) = crate::activation::listener()? {
        passed.set_nonblocking(true)?;
        let listener = UnixListener::from_std(passed).context("serving the passed socket")?;
        eprintln!("netmon agent: serving the socket passed by the service manager");
        return Ok((listener, false));
    }
    let listener = bind(path)?;
    eprintln!("netmon agent: serving {}", path.display());
    Ok((listener, true))
}

async fn serve(
    agent: Rc<RefCell<Agent>>,
    listener: UnixListener,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut waiter = RingWaiter::new(&agent.borrow().probe, TICK)?;
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    reconcile.tick().await;
    tokio::pin!(stop);
    let mut more = false;
    let mut counters_read = std::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            () = &mut stop => return Ok(()),
            waited = waiter.wait(more) => {
                waited?;
                let mut a = agent.borrow_mut();
                more = a.drain();
                if counters_read.elapsed() >= COUNTERS_EVERY {
                    counters_read = std::time::Instant::now();
                    if a.losses_grew()? {
                        a.reconcile_all();
                    }
                }
            }
            _ = reconcile.tick() => agent.borrow_mut().reconcile_all(),
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                tokio::task::spawn_local(handle(agent.clone(), stream));
            }
        }
    }
}

/// Creates the socket, readable by root and the `netmon` group only.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!("another agent is already serving {}", path.display());
    }
    // A socket file left by an agent that died: nobody answers on it.
    std::fs::remove_file(path).ok();
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let mode = match group_id(GROUP) {
        Some(gid) => {
            std::os::unix::fs::chown(path, Some(0), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

fn group_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam returns NULL or a pointer to a static struct we read at once.
    let group = unsafe { libc::getgrnam(name.as_ptr()) };
    // SAFETY: checked non-null above.
    (!group.is_null()).then(|| unsafe { (*group).gr_gid })
}

async fn handle(agent: Rc<RefCell<Agent>>, mut stream: UnixStream) {
    let (header, body) = match answer(&agent, &mut stream).await {
        Ok((notes, body)) => (
            ReplyHeader {
                ok: true,
                error: None,
                notes,
            },
            body,
        ),
        Err(e) => (
            ReplyHeader {
                ok: false,
                error: Some(format!("{e:#}")),
                notes: vec![],
            },
            vec![],
        ),
    };
    let mut line = serde_json::to_vec(&header).unwrap_or_default();
    line.push(b'\n');
    // A client that stops reading must not hold the agent: bound the write.
    let write = async {
        stream.write_all(&line).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), write).await;
    // Closing with unread input resets the connection, and the client would see the reset
    // instead of the error reply: discard what is left of a refused request, briefly.
    let mut sink = [0u8; 16 * 1024];
    let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, drain).await;
    // A snapshot of 100k sockets allocates tens of MB for one request (dump, rows, rendered
    // text); glibc keeps freed memory of that size in the heap: give it back.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
}

async fn answer(
    agent: &RefCell<Agent>,
    stream: &mut UnixStream,
) -> anyhow::Result<(Vec<String>, Vec<u8>)> {
    let request = read_request(stream).await?;
    let peer_pid = stream
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .context("cannot identify the client process (SO_PEERCRED)")?;
    let args = request.snapshot;
    let filter = {
        let a = agent.borrow();
        args.filter(&a.services)
            .map_err(|e| anyhow::anyhow!("{}", e.render()))?
    };
    let mut a = agent.borrow_mut();
    a.drain();
    let namespaces = if args.all_netns {
        netns::all()
    } else {
        vec![Netns::of_pid(peer_pid).context("opening the client's network namespace")?]
    };
    let mut rows = Vec::new();
    if args.closed.is_none() {
        for ns in &namespaces {
            let dump = netns::resync(&mut a.table, ns)
                .with_context(|| format!("dumping sockets of netns {}", ns.inum))?;
            rows.extend(
                dump.into_iter()
                    .map(|s| Row::new(s, ns.inum, Some(&a.table))),
            );
        }
    }
    let now_ns = Clock::mono_now_ns();
    let window = args.closed.unwrap_or_default().as_nanos() as u64;
    let closed_ns: Vec<u32> = namespaces.iter().map(|n| n.inum).collect();
    let data = Data {
        rows,
        closed: a
            .table
            .closed()
            .filter(|c| now_ns.saturating_sub(c.closed_ns) <= window)
            .filter(|c| closed_ns.contains(&c.netns))
            .collect(),
        evicted: a.table.evicted,
        now_ns,
        clock: a.clock,
    };
    let mut body = Vec::with_capacity(data.rows.len() * 100 + data.closed.len() * 160);
    let notes = snapshot::render(&args, &filter, &a.services, &data, &mut body)?;
    Ok((notes, body))
}

async fn read_request(stream: &mut UnixStream) -> anyhow::Result<Request> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream).take(MAX_REQUEST as u64 + 1);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line));
    read.await
        .map_err(|_| anyhow::anyhow!("request timed out after {REQUEST_TIMEOUT:?}"))?
        .context("reading the request")?;
    if line.len() > MAX_REQUEST {
        anyhow::bail!("request larger than {MAX_REQUEST} bytes");
    }
    serde_json::from_slice(&line).context("malformed request")
}

/// Why a snapshot could not come from the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent at {path}")]
    Unreachable {
        path: String,
        source: std::io::Error,
    },
    #[error("the agent at {path} failed")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

/// Sends a snapshot request and copies the rendered answer to `out`; returns the notes.
pub async fn request(
    path: &Path,
    args: &SnapshotArgs,
    out: &mut impl Write,
) -> Result<Vec<String>, ClientError> {
    let shown = path.display().to_string();
    let io = |source| ClientError::Io {
        path: shown.clone(),
        source,
    };
    let mut stream =
        UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Unreachable {
                path: shown.clone(),
                source,
            })?;
    let mut line = serde_json::to_vec(&Request {
        snapshot: args.clone(),
    })
    .map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    stream.write_all(&line).await.map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut header = Vec::new();
    reader.read_until(b'\n', &mut header).await.map_err(io)?;
    let header: ReplyHeader = serde_json::from_slice(&header)
        .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    if !header.ok {
        return Err(ClientError::Refused(header.error.unwrap_or_default()));
    }
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(io)?;
    }
    Ok(header.notes)
}

/// The agent socket to use: `NETMON_AGENT_SOCKET` or the default.
pub fn socket_path() -> PathBuf {
    std::env::var_os("NETMON_AGENT_SOCKET").map_or_else(|| DEFAULT_SOCKET.into(), PathBuf::from)
}
