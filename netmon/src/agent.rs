//! `netmon agent`: serves snapshots of the tracer's table on a Unix socket; also the client
//! side of that socket. The protocol is in [`crate::wire`].
//!
//! Threads: the runtime's thread drains the ring ([`Tracer::run`]) and answers the table
//! queries of requests between two drains; everything slow about a request (the sock_diag
//! dump, the filter, rendering) runs on a blocking thread, at most [`Limits::snapshots`] at
//! once; the rendered frames wait for the client within a byte budget (global and per uid,
//! [`crate::budget`]), so a slow client holds neither the ring, nor a thread, nor unbounded
//! memory, nor what other users' replies need.
//!
//! Lifecycle of the table: attach first, then seed every namespace from sock_diag, then apply
//! events. Each snapshot dumps the caller's namespace again and reconciles the table with it,
//! so rows, states and queues are what the kernel has now (as ss shows them) and ages and
//! histories come from the stream. A counted loss (at most every few seconds), or a minute
//! without one, reconciles every namespace.

use std::{
    io::Write,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use bytes::BytesMut;
use tokio::{
    io::Interest,
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    access::{self, Access},
    agent_socket,
    budget::Budget,
    cgroup::CgroupNames,
    clock::Clock,
    export::Export,
    filter::Services,
    iter::{Fields, TcpIter},
    metrics::{self, Metrics, MetricsConfig, groups::PeerGroup},
    netns::Netns,
    otlp::{self, Endpoint},
    peer,
    reply::FrameWriter,
    served,
    slots::Slots,
    snapshot::{Renderer, SnapshotArgs},
    sock_diag::Cancel,
    source::{self, Enrich, IterSource, LiveSource, Scope, SocketSource, What},
    tracer::{Tracer, TracerConfig, TracerHandle},
    wire::{self, FRAME_DATA, FRAME_TRAILER, ReplyHeader, Request, SnapshotRequest, Trailer},
};

pub const DEFAULT_SOCKET: &str = "/run/netmon/agent.sock";
/// Members of this group may query the agent; everyone else needs root.
pub const GROUP: &str = "netmon";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A client that takes this long to accept one line is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const RECONCILE_EVERY: Duration = Duration::from_secs(60);
/// Reconciles triggered by losses: at most one per this interval, so that a reconcile that
/// itself causes a loss cannot chain into the next.
pub const RECONCILE_AFTER_LOSS: Duration = Duration::from_secs(5);

/// What one agent spends on its clients, at most. Connections are cheap but each holds a
/// descriptor; snapshots are not (a dump and a render of every socket of a namespace); unsent
/// replies hold memory until a slow client reads them.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open client connections, in all.
    pub clients: usize,
    /// Open client connections of one non-root user.
    pub clients_per_uid: usize,
    /// Snapshots being collected and rendered at once (each on a blocking thread).
    pub snapshots: usize,
    /// Rendered bytes waiting for slow clients, in all.
    pub bytes_in_flight: usize,
    /// Rendered bytes waiting for the slow clients of one non-root uid: one user's unread
    /// replies leave the rest of [`Limits::bytes_in_flight`] to the others.
    pub bytes_in_flight_per_uid: usize,
    /// A reply must be read by its client within this time.
    pub reply_deadline: Duration,
    /// Filter words, in bytes: the work per row is bounded by the filter's size.
    pub filter_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            clients: 512,
            clients_per_uid: 64,
            snapshots: 4,
            bytes_in_flight: 256 << 20,
            bytes_in_flight_per_uid: 64 << 20,
            reply_deadline: Duration::from_secs(30),
            filter_bytes: 4096,
        }
    }
}

/// Who holds how many connections; a connection's [`Admitted`] gives its place back on drop.
#[derive(Debug, Default)]
struct Admission {
    open: std::sync::Mutex<(usize, std::collections::HashMap<u32, usize>)>,
}

struct Admitted {
    shared: Arc<Shared>,
    uid: u32,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .shared
            .admission
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.uid);
            }
        }
    }
}

/// Admits a connection of `uid` within the limits, or says which limit it hit.
fn admit(shared: &Arc<Shared>, uid: u32) -> Result<Admitted, String> {
    let limits = shared.limits;
    let mut open = shared
        .admission
        .open
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if open.0 >= limits.clients {
        return Err(format!(
            "the agent serves {} clients at most and is full; try again",
            limits.clients
        ));
    }
    let mine = open.1.get(&uid).copied().unwrap_or(0);
    // Root is the administrator: only the global limit holds it back.
    if uid != 0 && mine >= limits.clients_per_uid {
        return Err(format!(
            "uid {uid} has {mine} connections to the agent open, the most one user may; close \
             some and try again"
        ));
    }
    open.0 += 1;
    *open.1.entry(uid).or_insert(0) += 1;
    Ok(Admitted {
        shared: shared.clone(),
        uid,
    })
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
    /// Serve Prometheus metrics (OpenMetrics text) on http://ADDR/metrics; a port alone
    /// listens on 127.0.0.1 (e.g. 9464; [::]:9464 for every address). Default: off.
    #[arg(long, value_name = "ADDR", value_parser = metrics::http::parse_listen)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Also count connections per named peer group: NAME=CIDR[:PORT], e.g. db=10.0.0.0/8:5432
    /// or web=[2001:db8::/32]:443 (repeatable; first match wins; the rest is `other`).
    #[arg(long, value_name = "NAME=CIDR[:PORT]", requires = "metrics_listen")]
    pub metrics_peer: Vec<PeerGroup>,
    /// Also count connections per owner command name, for the first N names seen (later
    /// names count as `other`; at most 1000). Default: off.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        requires = "metrics_listen",
        value_parser = clap::value_parser!(u16).range(0..=metrics::groups::MAX_COMMS as i64)
    )]
    pub metrics_by_comm: u16,
    /// Also count connections per systemd unit of the socket's cgroup, for the first N units
    /// seen (later ones count as `other`; at most 1000). Default: off.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        requires = "metrics_listen",
        value_parser = clap::value_parser!(u16).range(0..=metrics::groups::MAX_COMMS as i64)
    )]
    pub metrics_by_unit: u16,
    /// Also count connections per container id of the socket's cgroup, for the first N ids
    /// seen (later ones count as `other`; at most 1000). Default: off.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        requires = "metrics_listen",
        value_parser = clap::value_parser!(u16).range(0..=metrics::groups::MAX_COMMS as i64)
    )]
    pub metrics_by_container: u16,
    /// Send one OTLP log record per ended connection to this OTLP/HTTP endpoint
    /// (http://HOST:PORT[/PATH]; the path defaults to /v1/logs), e.g. a local OpenTelemetry
    /// Collector.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<Endpoint>,
    /// Do not count the tracepoint's fires with perf counters: transitions the kernel ran no
    /// copy of the program for then go unnoticed (no resync for them).
    #[arg(long)]
    pub no_fire_count: bool,
    /// Bytes of rendered replies the agent holds for clients that read slowly, in all (past
    /// a reply's first 256 KiB, held deflated); a reply that would pass it fails with an error
    /// (try again) rather than wait.
    #[arg(long, default_value_t = Limits::default().bytes_in_flight, value_name = "BYTES")]
    pub max_unread_bytes: usize,
    /// The same for the clients of one user (root: the total only), so that one user's
    /// unread replies cannot take what the others need.
    #[arg(
        long,
        default_value_t = Limits::default().bytes_in_flight_per_uid,
        value_name = "BYTES"
    )]
    pub max_unread_bytes_per_user: usize,
    /// Trace only the network namespace of this inode (hidden: tests that count their own
    /// losses on a machine where others make traffic).
    #[arg(long, hide = true, value_name = "INODE")]
    pub only_netns: Option<u32>,
    /// Members of this group may query the agent: their own network namespace, and the
    /// owners and closed history of their own sockets only.
    #[arg(long, default_value = GROUP, value_name = "NAME")]
    pub group: String,
    /// Members of this group see what root sees: every namespace (--all-netns), every
    /// socket's owner, the whole closed history.
    #[arg(long, default_value = access::ADMIN_GROUP, value_name = "NAME")]
    pub admin_group: String,
}

/// What every request needs, shared by the blocking threads that serve them.
struct Shared {
    table: TracerHandle,
    services: Services,
    clock: Clock,
    limits: Limits,
    admission: Admission,
    /// Snapshots collected and rendered at once, shared fairly between uids.
    snapshots: Arc<Slots>,
    /// Where snapshots' sockets come from, stopped by the given [`Cancel`] (the kernel; a
    /// test's own source in unit tests).
    sources: fn(Cancel) -> Box<dyn SocketSource + Send>,
    /// Unsent reply bytes.
    in_flight: Arc<Budget>,
    /// The admin group's id, if it exists (else only root is an admin).
    admin_gid: Option<u32>,
    /// The socket iterator, for snapshots it can serve; `None` where it could not load.
    iter: Option<Arc<TcpIter>>,
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(
    args: &AgentArgs,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // A socket passed by systemd (netmon-agent.socket) is systemd's: no lock, no bind.
    // Otherwise the lock comes first, so that a second agent says so before the slow start.
    let serving = match crate::activation::listener()? {
        Some(passed) => Serving::Passed(passed),
        None => Serving::Own(agent_socket::Lock::take(&args.socket)?),
    };
    let config = TracerConfig {
        ring_bytes: args.ring_size,
        filter: netmon_common::KernelFilter {
            netns: args.only_netns.unwrap_or(0),
            ..netmon_common::KernelFilter::ALL
        },
        closed_capacity: args.closed_capacity,
        resync_every: Some(RECONCILE_EVERY),
        resync_after_loss: Some(RECONCILE_AFTER_LOSS),
        count_fires: !args.no_fire_count,
        netns: args.only_netns,
    };
    raise_nofile_limit();
    let clock = Clock::now();
    // Bound before attaching, so that a taken port fails at once.
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for metrics scrapes on {addr}"))?,
        ),
        None => None,
    };
    let otlp = match &args.otlp_endpoint {
        Some(e) => Some(
            otlp::Exporter::start(e.clone(), clock, CgroupNames::load())
                .context("starting the OTLP exporter thread")?,
        ),
        None => None,
    };
    let metrics = metrics_listener.is_some().then(|| {
        let config = MetricsConfig {
            peers: args.metrics_peer.clone(),
            comms: usize::from(args.metrics_by_comm),
            units: usize::from(args.metrics_by_unit),
            containers: usize::from(args.metrics_by_container),
            cgroup_mount: None,
        };
        Metrics::new(&config, otlp.as_ref().map(|o| &o.stats))
    });
    // One parse of the kernel's BTF for both programs (see `offsets::Layout`).
    let layout = crate::offsets::Layout::from_kernel().map_err(crate::attach::AttachError::from)?;
    let mut tracer = Tracer::attach_with(
        &config,
        layout.sock.map_err(crate::attach::AttachError::from)?,
        layout.support,
    )?;
    for missing in &tracer.support().missing {
        eprintln!("netmon agent: this kernel lacks {missing}");
    }
    if let Some(e) = tracer.fire_count_off() {
        eprintln!(
            "netmon agent: {} (metric netmon_fire_count_enabled 0)",
            e.off_warning()
        );
    }
    // Loaded while the agent still has the privileges to load programs.
    let iter = match TcpIter::load_with(layout.iter) {
        Ok(iter) => Some(Arc::new(iter)),
        Err(e) => {
            eprintln!(
                "netmon agent: snapshots dump over sock_diag: the socket iterator did not load: \
                 {:#}",
                anyhow::Error::new(e)
            );
            None
        }
    };
    let seeded = tracer.seed();
    // The seed's dumps and /proc scan (tens of MB at 100k sockets) are freed: give them back.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    let (std_listener, socket) = match serving {
        Serving::Passed(passed) => {
            eprintln!("netmon agent: serving the socket passed by the service manager");
            (passed, None)
        }
        Serving::Own(lock) => {
            let socket = lock.bind(group_id(&args.group))?;
            eprintln!("netmon agent: serving {}", socket.path().display());
            let listener = socket.listener.try_clone().context("dup socket")?;
            (listener, Some(socket))
        }
    };
    // Said once serving: a refusal to serve stays the one line it is.
    eprintln!(
        "netmon agent: seeded {} sockets of {} namespaces in {} ms (owners from /proc {} ms \
         beside the dumps {} ms, merged part by part in {} ms)",
        seeded.sockets,
        seeded.namespaces,
        seeded.took.as_millis(),
        seeded.scan.as_millis(),
        seeded.dumps.as_millis(),
        seeded.merge.as_millis()
    );
    std_listener
        .set_nonblocking(true)
        .context("setting the socket non-blocking")?;
    let listener = UnixListener::from_std(std_listener).context("registering the socket")?;
    // Attached and serving: answering needs three capabilities from here on (privileges.rs).
    // Threads started later (requests, namespace dumps) inherit the reduced sets.
    if let Err(e) = crate::privileges::keep_only(crate::privileges::AGENT_KEEPS) {
        eprintln!("netmon agent: could not drop the capabilities it no longer needs: {e}");
    }
    let (table, queries) = TracerHandle::new();
    let limits = Limits {
        bytes_in_flight: args.max_unread_bytes,
        bytes_in_flight_per_uid: args.max_unread_bytes_per_user,
        ..Limits::default()
    };
    let in_flight = Budget::new(limits.bytes_in_flight, limits.bytes_in_flight_per_uid);
    let scraper = match (metrics_listener, &metrics) {
        (Some(listener), Some(m)) => {
            eprintln!(
                "netmon agent: metrics on http://{}/metrics",
                listener.local_addr()?
            );
            let (table, exposition) = (table.clone(), m.exposition());
            let in_flight = in_flight.clone();
            let render = move |openmetrics| {
                let (table, exposition) = (table.clone(), exposition.clone());
                let in_flight = in_flight.clone();
                async move {
                    let mut view = table.metrics_view().await.ok()?;
                    view.unread_reply_bytes = in_flight.held(0).0 as u64;
                    Some(exposition.render(view, openmetrics))
                }
            };
            Some(tokio::spawn(metrics::http::serve(listener, render)))
        }
        _ => None,
    };
    let shared = Arc::new(Shared {
        table,
        services: Services::system().unwrap_or_default(),
        clock,
        limits,
        admission: Admission::default(),
        snapshots: Slots::new(limits.snapshots),
        sources: live_source,
        in_flight,
        admin_gid: group_id(&args.admin_group),
        iter,
    });
    let server = tokio::spawn(accept_loop(listener, shared));
    let mut sink = (LossLog, Export { metrics, otlp });
    let result = tracer.run(&mut sink, Some(queries), stop).await;
    server.abort();
    if let Some(s) = scraper {
        s.abort();
    }
    // Dropping the exporter sends what it holds (one try) and stops its thread.
    drop(sink);
    // Removes the socket file, if it is still ours.
    drop(socket);
    result
}

fn live_source(cancel: Cancel) -> Box<dyn SocketSource + Send> {
    Box::new(LiveSource { cancel })
}

/// Where the agent's socket comes from.
enum Serving {
    /// Passed by a service manager (sd_listen_fds); it stays the manager's to remove.
    Passed(std::os::unix::net::UnixListener),
    /// Bound here once attached, under this lock.
    Own(agent_socket::Lock),
}

/// The agent's only consumer of records besides the table: losses on stderr.
struct LossLog;

impl crate::tracer::Sink for LossLog {
    fn loss(&mut self, loss: &crate::tracer::Loss) -> std::io::Result<()> {
        eprintln!(
            "netmon agent: {} {} losses, {} so far; resyncing",
            loss.count, loss.kind, loss.total
        );
        Ok(())
    }
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            // Admitted here, before a task exists: a flood of connections over the limits
            // costs one descriptor at a time, never one per waiting task.
            Ok((stream, _)) => match peer_of(&stream, shared.admin_gid)
                .map_err(|e| format!("{e:#}"))
                .and_then(|peer| Ok((peer, admit(&shared, peer.uid)?)))
            {
                Ok((peer, admitted)) => {
                    tokio::spawn(handle(shared.clone(), stream, peer, admitted));
                }
                Err(e) => refuse_at_once(stream, &e),
            },
            // Out of descriptors (or another transient failure): the pending connection stays
            // queued and would fail again at once; wait for clients to leave instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Raises the soft limit on open files to the hard one: each client holds a descriptor, and
/// the default soft limit (1024) is a fraction of what the limits above allow.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                eprintln!(
                    "netmon agent: cannot raise the open-files limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

fn group_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam returns NULL or a pointer to a static struct we read at once.
    let group = unsafe { libc::getgrnam(name.as_ptr()) };
    // SAFETY: checked non-null above.
    (!group.is_null()).then(|| unsafe { (*group).gr_gid })
}

/// Who is asking, from the kernel (SO_PEERCRED, SO_PEERGROUPS), not from anything the client
/// says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// What it may see, from its uid and groups.
    pub access: Access,
}

/// A request checked and ready to serve.
#[derive(Debug)]
pub struct Prepared {
    pub request: SnapshotRequest,
    pub scope: Scope,
    /// What of the snapshot the client may see.
    pub access: Access,
    /// Whether the client may see `SO_MARK`s: the kernel sends them to the agent because it
    /// has CAP_NET_ADMIN, so only a root client gets them.
    pub show_mark: bool,
}

/// Checks a request and decides what its client may see. Every check on who may ask for what
/// belongs here: it runs before anything is dumped or rendered.
pub fn prepare(
    request: Request,
    peer: &Peer,
    limits: &Limits,
    services: &Services,
    open_netns: impl FnOnce(i32) -> std::io::Result<Netns>,
) -> anyhow::Result<Prepared> {
    let filter_bytes: usize = request.snapshot.filter.iter().map(|w| w.len() + 1).sum();
    if filter_bytes > limits.filter_bytes {
        anyhow::bail!(
            "the filter is {filter_bytes} bytes long; the agent accepts {} at most",
            limits.filter_bytes
        );
    }
    if request.version != wire::VERSION {
        anyhow::bail!(
            "this agent speaks protocol version {}, the client {}: use the same netmon version \
             for both",
            wire::VERSION,
            request.version
        );
    }
    let request = request.snapshot;
    if let Some(why) = peer.access.refuse(request.all_netns) {
        anyhow::bail!(why);
    }
    let args = request.args();
    args.check().map_err(|e| anyhow::anyhow!(e))?;
    args.filter(services)
        .map_err(|e| anyhow::anyhow!("{}", e.render()))?;
    let scope = if request.all_netns {
        Scope::All
    } else {
        Scope::Caller(open_netns(peer.pid).context("opening the client's network namespace")?)
    };
    Ok(Prepared {
        request,
        scope,
        access: peer.access,
        show_mark: peer.uid == 0,
    })
}

/// The namespace a request is about: the one the client passed with it (SCM_RIGHTS). A
/// non-admin client must pass its own: it must be the namespace its pid is in, so that a
/// recycled pid can only cause a refusal, and holding an fd of another namespace shows nothing
/// of it. An admin's client that passed none (an older netmon) gets its pid's.
pub fn caller_netns(
    access: Access,
    pid: i32,
    passed: Option<Netns>,
    of_pid: impl FnOnce(i32) -> std::io::Result<Netns>,
) -> std::io::Result<Netns> {
    match (passed, access) {
        (Some(ns), Access::Admin) => Ok(ns),
        (Some(ns), Access::User { .. }) => {
            if of_pid(pid)?.inum != ns.inum {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the network namespace passed is not the client's own; without root or the \
                     admin group a client sees only its own",
                ));
            }
            Ok(ns)
        }
        (None, Access::Admin) => of_pid(pid),
        (None, Access::User { .. }) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the client passed no network namespace: use the netmon of the agent's version",
        )),
    }
}

/// Collects and renders a prepared request into `out`; returns the notes for the user.
/// Blocking: the dump and the rendering happen here. The sockets come from `iter` where it
/// can serve the request's options ([`SnapshotArgs::iter_serves`]), else from `source`; the
/// iterator's read stops once its `Cancel` is set (the client left).
pub fn serve(
    prepared: Prepared,
    source: &impl SocketSource,
    iter: Option<(&TcpIter, Cancel)>,
    table: &mut impl Enrich,
    services: &Services,
    clock: Clock,
    out: &mut impl Write,
) -> anyhow::Result<Vec<String>> {
    let args = prepared.request.args();
    let filter = args
        .filter(services)
        .map_err(|e| anyhow::anyhow!("{}", e.render()))?;
    let what = What {
        closed_within_ns: prepared.request.closed_ns,
        ext: args.diag_ext(),
        table: args.wants_table(&filter),
        access: prepared.access,
    };
    // `--max-age`: the table answers if it may; if not, a full walk answers, which also
    // refreshes the table for the next request.
    let mut stale = None;
    if let (Some(max_age), Scope::Caller(ns)) = (args.max_age, &prepared.scope)
        && args.table_serves()
    {
        let max_age_ns = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
        match table.served(ns.inum, max_age_ns, &filter, prepared.access)? {
            Ok(served) => {
                return serve_table(
                    &prepared, &args, &filter, served, table, services, clock, out,
                );
            }
            Err(why) => stale = Some(why.to_string()),
        }
    } else if args.max_age.is_some() {
        stale = Some("the table serves one namespace's live sockets without -o, -e, -m, -i, --cgroup or JSON".to_string());
    }
    // This runs off the thread that drains the ring, so -r may wait on the resolver.
    let mut renderer = Renderer::new(&args, &filter, services, clock, prepared.show_mark, out);
    // A filter on ports: sock_diag with the ranges as the kernel's filter program, as ss does
    // (the kernel copies only the matches; the iterator's walk costs about twice ss's, see
    // `sock_diag::port_bytecode`). Not for a `--max-age` request answered by a walk: that
    // walk must be full, to refresh the table.
    let bytecode = crate::sock_diag::port_bytecode(&filter.kernel_filter());
    if !bytecode.is_empty() && stale.is_none() {
        let narrowed = source::InPorts { source, bytecode };
        let missing = source::stream(&narrowed, &prepared.scope, table, what, &mut renderer)?;
        let mut notes = renderer.finish()?;
        notes.extend(missing);
        return Ok(notes);
    }
    let missing = match iter.filter(|_| args.iter_serves() && stale.is_none()) {
        Some((iter, cancel)) => {
            let source = IterSource {
                iter,
                filter: filter.kernel_filter(),
                // Owners come from the table, by cookie: no inode needed.
                fields: Fields::TABLE,
                cancel,
            };
            source::stream(&source, &prepared.scope, table, what, &mut renderer)?
        }
        None => source::stream(source, &prepared.scope, table, what, &mut renderer)?,
    };
    let mut notes = renderer.finish()?;
    notes.extend(missing);
    notes.extend(stale.map(|why| format!("--max-age: {why}; answered from a walk now (exact)")));
    Ok(notes)
}

/// Renders what the table serves ([`crate::served`]), a part at a time, after the line that
/// says how old its queues are (a note instead with -H or --count).
#[allow(clippy::too_many_arguments)]
fn serve_table(
    prepared: &Prepared,
    args: &SnapshotArgs,
    filter: &crate::filter::Filter,
    served: served::Served,
    table: &mut impl Enrich,
    services: &Services,
    clock: Clock,
    out: &mut impl Write,
) -> anyhow::Result<Vec<String>> {
    let Scope::Caller(ns) = &prepared.scope else {
        anyhow::bail!("the table serves one namespace");
    };
    let header = served::header(&served, args.max_age.unwrap_or_default());
    let mut notes = Vec::new();
    if args.no_header || !args.count.is_empty() {
        notes.push(header.trim_start_matches("# ").to_string());
    } else {
        out.write_all(header.as_bytes())?;
        out.write_all(b"\n")?;
    }
    let mut renderer = Renderer::new(args, filter, services, clock, prepared.show_mark, out);
    // The next part is asked for before this one is rendered: the tracer's thread makes its
    // rows meanwhile (at 100k sockets, ~5 ms of a -tan reply's ~40 that the renderer waited
    // for). Two parts of rows are held at most, as when a dump is rendered.
    let mut parts = served.cookies.chunks(served::PART);
    let mut ask = |part: Option<&[served::Key]>| {
        part.map(|p| table.served_rows_ahead(ns.inum, p.to_vec(), served.now_ns))
            .transpose()
    };
    let mut ahead = ask(parts.next())?;
    while let Some(asked) = ahead.take() {
        let mut rows = asked.rows()?;
        ahead = ask(parts.next())?;
        for row in &mut rows {
            prepared.access.redact(row);
        }
        renderer.rows(rows, served.now_ns)?;
    }
    notes.extend(renderer.finish()?);
    Ok(notes)
}

/// Serves one admitted connection; its place is given back when `_admitted` drops.
async fn handle(shared: Arc<Shared>, mut stream: UnixStream, peer: Peer, _admitted: Admitted) {
    let (request, passed) = match read_request(&mut stream).await {
        Ok((request, passed)) => match passed.map(Netns::from_fd).transpose() {
            Ok(passed) => (request, passed),
            Err(e) => return refuse(stream, &format!("the fd passed with the request: {e}")).await,
        },
        Err(e) => return refuse(stream, &format!("{e:#}")).await,
    };
    let open_netns = |pid| caller_netns(peer.access, pid, passed, Netns::of_pid);
    if request.top.is_some() {
        return handle_top(shared, stream, request, peer, open_netns).await;
    }
    let prepared = prepare(request, &peer, &shared.limits, &shared.services, open_netns);
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => return refuse(stream, &format!("{e:#}")).await,
    };
    if write_line(&mut stream, &ReplyHeader::accepted())
        .await
        .is_err()
    {
        return;
    }
    // The whole reply, trailer included, must be read within the deadline; the wait for a
    // snapshot slot counts in it.
    let deadline = tokio::time::Instant::now() + shared.limits.reply_deadline;
    // A client that hangs up while it waits gives its turn up at once: otherwise a flood of
    // expensive requests (`--all-netns` on a host with a million sockets) from clients long
    // gone queues behind the slots, and each still costs a full dump when its turn comes.
    let fd = stream.as_raw_fd();
    let slot = tokio::select! {
        slot = shared.snapshots.acquire(peer.uid) => slot,
        () = hung_up(fd, WAITING_HANGUP_CHECK) => return,
        () = tokio::time::sleep_until(deadline) => {
            let busy = Trailer {
                ok: false,
                error: Some(format!(
                    "the agent is busy: {} snapshots were being made all along the {} s this \
                     one waited for its turn; try again",
                    shared.limits.snapshots,
                    shared.limits.reply_deadline.as_secs()
                )),
                ..Trailer::default()
            };
            let finish = async {
                stream.write_all(&trailer_frame(&busy)).await?;
                stream.shutdown().await
            };
            let _ = tokio::time::timeout(WRITE_TIMEOUT, finish).await;
            return;
        }
    };
    // Set when the client hangs up (or this task ends): the dump stops at its next datagram
    // and the renderer at its next frame, and the slot is free for the next request.
    let cancel = Cancel::default();
    let _cancel_on_exit = CancelOnDrop(cancel.clone());
    let (mut out, mut rx) = FrameWriter::new(shared.in_flight.clone(), peer.uid, cancel.clone());
    let job = {
        let shared = shared.clone();
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || {
            let mut table = shared.table.clone();
            let result = serve(
                prepared,
                &(shared.sources)(cancel.clone()),
                shared.iter.as_deref().map(|i| (i, cancel)),
                &mut table,
                &shared.services,
                shared.clock,
                &mut out,
            );
            drop(slot);
            // The parts were made and freed in the heap's arenas (each below the mmap
            // threshold): give them back now, not once a client that may never read is gone.
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe { libc::malloc_trim(0) };
            let losses = table.losses().unwrap_or_default();
            (result, losses)
        })
    };
    let send = async {
        // A frame holds its budget until it is written.
        while let Some(frame) = rx.recv().await {
            stream.write_all(&frame.wire()?).await?;
        }
        let Ok((result, losses)) = job.await else {
            return Err(std::io::Error::other("the snapshot job panicked"));
        };
        let trailer = match result {
            Ok(notes) => Trailer {
                ok: true,
                error: None,
                notes,
                losses,
            },
            Err(e) => Trailer {
                ok: false,
                error: Some(format!("{e:#}")),
                notes: Vec::new(),
                losses,
            },
        };
        stream.write_all(&trailer_frame(&trailer)).await?;
        stream.shutdown().await
    };
    // A client too slow for the deadline is dropped; dropping the receiver then ends the
    // renderer at its next frame, and the unsent frames give their budget back. One that
    // hangs up is noticed while its snapshot is still being made (no frame written yet).
    tokio::select! {
        _ = tokio::time::timeout_at(deadline, send) => {}
        () = hung_up(fd, RUNNING_HANGUP_CHECK) => cancel.cancel(),
    }
    // The reply's frames (64 KiB each) were freed in the heap as they were sent: give them
    // back.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
}

/// The trailer frame that ends a reply.
fn trailer_frame(trailer: &Trailer) -> BytesMut {
    let mut frame = BytesMut::new();
    wire::put_frame(
        &mut frame,
        FRAME_TRAILER,
        &serde_json::to_vec(trailer).unwrap_or_default(),
    );
    frame
}

/// How often a client waiting for a slot is checked for a hang-up.
const WAITING_HANGUP_CHECK: Duration = Duration::from_millis(200);
/// ... and one whose snapshot is being made: a cancelled dump frees a slot.
const RUNNING_HANGUP_CHECK: Duration = Duration::from_millis(20);

/// Sets its [`Cancel`] when dropped.
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Resolves when the client of `fd` has closed its socket (POLLHUP), checked every `every`.
/// A client that only shut down its writing side (EOF on read, POLLRDHUP) still waits for
/// its reply. `fd` must stay open while this runs (the caller's stream outlives it).
async fn hung_up(fd: std::os::fd::RawFd, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let mut p = libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        };
        // SAFETY: polls one descriptor we hold, without waiting.
        let n = unsafe { libc::poll(&raw mut p, 1, 0) };
        if n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            return;
        }
    }
}

/// A checked `netmon top` request: what to count, the filter, the namespace (`None`: all).
#[derive(Debug)]
pub struct PreparedTop {
    pub query: crate::top::model::Query,
    pub filter: crate::filter::Filter,
    pub netns: Option<u32>,
}

/// Checks a `top` request through [`prepare`], as the snapshot with the same scope and filter
/// would be: whoever may not see that snapshot may not see these numbers either.
pub fn prepare_top(
    request: Request,
    peer: &Peer,
    limits: &Limits,
    services: &Services,
    open_netns: impl FnOnce(i32) -> std::io::Result<Netns>,
) -> anyhow::Result<PreparedTop> {
    let query = request.top.context("not a top request")?;
    let as_snapshot = Request {
        version: request.version,
        snapshot: SnapshotRequest {
            all: true,
            all_netns: query.all_netns,
            filter: query.filter.clone(),
            ..SnapshotRequest::default()
        },
        top: None,
    };
    let prepared = prepare(as_snapshot, peer, limits, services, open_netns)?;
    let filter = crate::top::feed::parse_filter(&query, services).map_err(anyhow::Error::msg)?;
    let netns = match prepared.scope {
        Scope::Caller(ns) => Some(ns.inum),
        Scope::All => None,
    };
    Ok(PreparedTop {
        query,
        filter,
        netns,
    })
}

/// Serves a `top` request: the tracer counts (see [`crate::tracer::Query::Top`]); the reply
/// is the header, the JSON numbers in data frames, and the trailer.
async fn handle_top(
    shared: Arc<Shared>,
    mut stream: UnixStream,
    request: Request,
    peer: Peer,
    open_netns: impl FnOnce(i32) -> std::io::Result<Netns>,
) {
    let prepared = match prepare_top(request, &peer, &shared.limits, &shared.services, open_netns) {
        Ok(p) => p,
        Err(e) => return refuse(stream, &format!("{e:#}")).await,
    };
    if write_line(&mut stream, &ReplyHeader::accepted())
        .await
        .is_err()
    {
        return;
    }
    let table = shared.table.clone();
    let clock = shared.clock;
    let access = peer.access;
    let answer = tokio::task::spawn_blocking(move || {
        let model = table.top(
            prepared.query,
            prepared.filter,
            prepared.netns,
            clock,
            access,
        )?;
        serde_json::to_vec(&model).map_err(anyhow::Error::from)
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|r| r);
    let mut frames = BytesMut::new();
    let trailer = match answer {
        Ok(json) => {
            for chunk in json.chunks(crate::reply::CHUNK) {
                wire::put_frame(&mut frames, FRAME_DATA, chunk);
            }
            Trailer {
                ok: true,
                ..Trailer::default()
            }
        }
        Err(e) => Trailer {
            ok: false,
            error: Some(format!("{e:#}")),
            ..Trailer::default()
        },
    };
    wire::put_frame(
        &mut frames,
        FRAME_TRAILER,
        &serde_json::to_vec(&trailer).unwrap_or_default(),
    );
    let finish = async {
        stream.write_all(&frames).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, finish).await;
}

fn peer_of(stream: &UnixStream, admin_gid: Option<u32>) -> anyhow::Result<Peer> {
    let cred = peer::peer_cred(stream.as_raw_fd())
        .context("cannot identify the client process (SO_PEERCRED)")?;
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        access: Access::of(cred.uid, cred.gid, &cred.groups, admin_gid),
    })
}

async fn write_line<T: serde::Serialize>(
    stream: &mut UnixStream,
    value: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&line))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Refuses a connection over the limits, without waiting: it is not counted, so it must not
/// linger. The reply goes out if the socket takes it at once (a fresh one always does).
fn refuse_at_once(stream: UnixStream, error: &str) {
    let header = ReplyHeader::refused(error);
    let mut line = serde_json::to_vec(&header).unwrap_or_default();
    line.push(b'\n');
    let _ = stream.try_write(&line);
    // Unread input would turn the close into a reset that hides the reply.
    let mut sink = [0u8; 16 * 1024];
    while matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {}
}

async fn refuse(mut stream: UnixStream, error: &str) {
    let header = ReplyHeader::refused(error);
    if write_line(&mut stream, &header).await.is_ok() {
        let _ = stream.shutdown().await;
    }
    // Closing with unread input resets the connection, and the client would see the reset
    // instead of the error reply: discard what is left of a refused request, briefly.
    let mut sink = [0u8; 16 * 1024];
    let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, drain).await;
}

/// Reads the request line, and the namespace fd that came with it (SCM_RIGHTS), if any.
async fn read_request(stream: &mut UnixStream) -> anyhow::Result<(Request, Option<OwnedFd>)> {
    let mut line = Vec::new();
    let mut passed = None;
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            stream.readable().await?;
            let got = stream.try_io(Interest::READABLE, || {
                peer::recv_with_fd(stream.as_raw_fd(), &mut buf, &mut passed)
            });
            let n = match got {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            line.extend_from_slice(&buf[..n]);
            if let Some(end) = line.iter().position(|&b| b == b'\n') {
                line.truncate(end + 1);
                return Ok(());
            }
            if n == 0 || line.len() > wire::MAX_REQUEST {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read)
        .await
        .map_err(|_| anyhow::anyhow!("request timed out after {REQUEST_TIMEOUT:?}"))?
        .context("reading the request")?;
    if line.len() > wire::MAX_REQUEST {
        anyhow::bail!("request larger than {} bytes", wire::MAX_REQUEST);
    }
    let request = serde_json::from_slice(&line).context("malformed request")?;
    Ok((request, passed))
}

/// Sends the request line with the caller's network namespace attached: the agent shows that
/// namespace (it never guesses it from the pid).
async fn send_request(stream: &UnixStream, line: &[u8]) -> std::io::Result<()> {
    let netns = std::fs::File::open("/proc/thread-self/ns/net")?;
    let mut sent = 0;
    while sent < line.len() {
        stream.writable().await?;
        let wrote = if sent == 0 {
            stream.try_io(Interest::WRITABLE, || {
                peer::send_with_fd(stream.as_raw_fd(), line, netns.as_raw_fd())
            })
        } else {
            stream.try_write(&line[sent..])
        };
        match wrote {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Why a snapshot could not come from the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent at {path}")]
    Unreachable {
        path: String,
        source: std::io::Error,
    },
    /// Failed before any output was written: the caller may show a one-shot dump instead.
    #[error("the agent at {path} failed")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    /// Failed after part of the output was written: nothing may be added to it.
    #[error("the agent's reply is incomplete: {0}")]
    Incomplete(String),
    /// Writing our own output failed (e.g. `| head` closed it).
    #[error(transparent)]
    Output(std::io::Error),
}

impl ClientError {
    /// Whether a one-shot dump may stand in for the agent's answer: nothing was written, and
    /// the agent did not answer (a refusal is the answer).
    pub fn may_fall_back(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Io { .. })
    }
}

/// What a complete reply said besides its output.
#[derive(Debug, Default)]
pub struct Answer {
    pub notes: Vec<String>,
    pub losses: crate::tracer::LossTotals,
}

/// Sends a snapshot request and copies the rendered answer to `out`, checking that it is
/// complete.
pub async fn request(
    path: &Path,
    args: &SnapshotArgs,
    out: &mut impl Write,
) -> Result<Answer, ClientError> {
    let shown = path.display().to_string();
    let io = |source| ClientError::Io {
        path: shown.clone(),
        source,
    };
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Unreachable {
            path: shown.clone(),
            source,
        })?;
    let mut line = serde_json::to_vec(&Request::new(args)).map_err(|e| io(e.into()))?;
    line.push(b'\n');
    send_request(&stream, &line).await.map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut header = Vec::new();
    reader.read_until(b'\n', &mut header).await.map_err(io)?;
    let header: ReplyHeader = serde_json::from_slice(&header)
        .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    if !header.ok {
        return Err(ClientError::Refused(header.error.unwrap_or_default()));
    }
    read_frames(&mut reader, out).await
}

/// Copies data frames to `out` until the trailer; a reply that ends before it is incomplete.
async fn read_frames(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    out: &mut impl Write,
) -> Result<Answer, ClientError> {
    let incomplete = |what: String| ClientError::Incomplete(what);
    let mut buf = BytesMut::with_capacity(256 * 1024);
    loop {
        while let Some((tag, payload)) =
            wire::take_frame(&mut buf).map_err(|e| incomplete(e.to_string()))?
        {
            if tag == FRAME_DATA {
                out.write_all(&payload).map_err(ClientError::Output)?;
                continue;
            }
            let trailer: Trailer = serde_json::from_slice(&payload)
                .map_err(|e| incomplete(format!("malformed trailer: {e}")))?;
            if !trailer.ok {
                return Err(incomplete(trailer.error.unwrap_or_default()));
            }
            return Ok(Answer {
                notes: trailer.notes,
                losses: trailer.losses,
            });
        }
        let n = reader
            .read_buf(&mut buf)
            .await
            .map_err(|e| incomplete(e.to_string()))?;
        if n == 0 {
            return Err(incomplete(
                "the connection closed before the end of the reply".into(),
            ));
        }
    }
}

/// The agent socket to use: `NETMON_AGENT_SOCKET` or the default.
pub fn socket_path() -> PathBuf {
    std::env::var_os("NETMON_AGENT_SOCKET").map_or_else(|| DEFAULT_SOCKET.into(), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use netmon_common::TcpState;

    use super::*;
    use crate::{source::ReplaySource, table::Table};

    fn peer() -> Peer {
        Peer {
            pid: std::process::id() as i32,
            uid: 1000,
            gid: 1000,
            access: Access::User { uid: 1000 },
        }
    }

    fn request(words: &[&str]) -> Request {
        Request {
            top: None,
            version: wire::VERSION,
            snapshot: SnapshotRequest {
                all: true,
                numeric: true,
                filter: words.iter().map(|w| w.to_string()).collect(),
                ..Default::default()
            },
        }
    }

    fn own_netns(_pid: i32) -> std::io::Result<Netns> {
        Netns::current()
    }

    #[test]
    fn requests_of_another_version_or_with_a_bad_filter_are_refused() {
        let services = Services::default();
        let mut old = request(&[]);
        old.version = 0;
        let e = prepare(old, &peer(), &Limits::default(), &services, own_netns).unwrap_err();
        assert!(format!("{e:#}").contains("protocol version"), "{e:#}");
        let e = prepare(
            request(&["dport", "="]),
            &peer(),
            &Limits::default(),
            &services,
            own_netns,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("dport"), "{e:#}");
        let ok = prepare(
            request(&[]),
            &peer(),
            &Limits::default(),
            &services,
            own_netns,
        )
        .unwrap();
        assert!(matches!(ok.scope, Scope::Caller(_)));
    }

    #[test]
    fn top_requests_are_checked_like_the_snapshot_of_the_same_scope() {
        let services = Services::default();
        let top = |filter: &[&str], all_netns: bool| {
            let line = serde_json::to_string(&Request::top(crate::top::model::Query {
                filter: filter.iter().map(|w| w.to_string()).collect(),
                all_netns,
                ..Default::default()
            }))
            .unwrap();
            // As the agent reads it.
            serde_json::from_str::<Request>(&line).unwrap()
        };
        let ok = prepare_top(
            top(&["dport", "=", ":80"], false),
            &peer(),
            &Limits::default(),
            &services,
            own_netns,
        )
        .unwrap();
        assert_eq!(ok.netns, Some(Netns::current().unwrap().inum));
        // Every namespace: for an admin only, as the snapshot.
        let admin = Peer {
            access: Access::Admin,
            ..peer()
        };
        let all = prepare_top(
            top(&[], true),
            &admin,
            &Limits::default(),
            &services,
            own_netns,
        )
        .unwrap();
        assert_eq!(all.netns, None);
        let e = prepare_top(
            top(&[], true),
            &peer(),
            &Limits::default(),
            &services,
            own_netns,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("--all-netns"), "{e:#}");
        let e = prepare_top(
            top(&["dport", "="], false),
            &peer(),
            &Limits::default(),
            &services,
            own_netns,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("dport"), "{e:#}");
        let mut old = top(&[], false);
        old.version = 0;
        let e = prepare_top(old, &peer(), &Limits::default(), &services, own_netns).unwrap_err();
        assert!(format!("{e:#}").contains("protocol version"), "{e:#}");
    }

    #[test]
    fn a_member_sees_the_namespace_it_passes_only_if_it_is_its_own() {
        let user = Access::User { uid: 1000 };
        let own = || Netns::current();
        // Any other nsfs file stands in for another namespace: its inode differs.
        let other = || Netns::open(std::path::Path::new("/proc/self/ns/uts"));
        let me = Netns::current().unwrap().inum;
        assert_eq!(
            caller_netns(user, 1, Some(own().unwrap()), |_| own())
                .unwrap()
                .inum,
            me
        );
        let e = caller_netns(user, 1, Some(own().unwrap()), |_| other()).unwrap_err();
        assert!(e.to_string().contains("not the client's own"), "{e}");
        let e = caller_netns(user, 1, None, |_| own()).unwrap_err();
        assert!(e.to_string().contains("passed no network namespace"), "{e}");
        // An admin may pass any; without one it gets its pid's.
        assert_eq!(
            caller_netns(Access::Admin, 1, Some(own().unwrap()), |_| other())
                .unwrap()
                .inum,
            me
        );
        assert_eq!(
            caller_netns(Access::Admin, 1, None, |_| own())
                .unwrap()
                .inum,
            me
        );
    }

    #[test]
    fn a_request_is_served_from_the_callers_namespace_with_the_tables_ages() {
        let services = Services::default();
        let me = Netns::current().unwrap();
        let sock = |cookie, state, local: &str| {
            crate::sock_diag::DiagSock::fixture(cookie, state, local, "127.0.0.1:9")
        };
        let source = ReplaySource {
            namespaces: BTreeMap::from([
                (
                    me.inum,
                    vec![sock(1, TcpState::Established, "127.0.0.1:8080")],
                ),
                (
                    me.inum.wrapping_add(1),
                    vec![sock(2, TcpState::Established, "127.0.0.1:8081")],
                ),
            ]),
            ..Default::default()
        };
        let mut table = Table::new();
        let prepared = prepare(
            request(&[]),
            &peer(),
            &Limits::default(),
            &services,
            own_netns,
        )
        .unwrap();
        let mut out = Vec::new();
        serve(
            prepared,
            &source,
            None,
            &mut table,
            &services,
            Clock::now(),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(":8080"), "{text}");
        assert!(!text.contains(":8081"), "another namespace: {text}");
    }

    #[tokio::test]
    async fn a_reply_without_its_trailer_is_an_error_and_a_failed_one_adds_nothing() {
        let frames = |parts: &[(u8, &[u8])]| {
            let mut b = BytesMut::new();
            for (tag, p) in parts {
                wire::put_frame(&mut b, *tag, p);
            }
            b.to_vec()
        };
        let ok = serde_json::to_vec(&Trailer {
            ok: true,
            ..Default::default()
        })
        .unwrap();
        let mut out = Vec::new();
        let complete = frames(&[(FRAME_DATA, b"row\n"), (FRAME_TRAILER, &ok)]);
        read_frames(&mut complete.as_slice(), &mut out)
            .await
            .unwrap();
        assert_eq!(out, b"row\n");

        let truncated = frames(&[(FRAME_DATA, b"row\n")]);
        let e = read_frames(&mut truncated.as_slice(), &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Incomplete(_)), "{e}");
        assert!(!e.may_fall_back(), "output was written: no second table");

        let failed = serde_json::to_vec(&Trailer {
            ok: false,
            error: Some("dumping sockets of netns 1".into()),
            ..Default::default()
        })
        .unwrap();
        let failed = frames(&[(FRAME_DATA, b"row\n"), (FRAME_TRAILER, &failed)]);
        let e = read_frames(&mut failed.as_slice(), &mut Vec::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("dumping sockets"), "{e}");
        assert!(!e.may_fall_back());
    }

    #[tokio::test]
    async fn a_waiting_request_notices_its_client_hang_up() {
        let (agent_end, mut client_end) = UnixStream::pair().unwrap();
        // A client that waits for its reply, even one done writing: nothing to notice.
        client_end.shutdown().await.unwrap();
        let fd = agent_end.as_raw_fd();
        let waiting = tokio::time::timeout(
            Duration::from_millis(500),
            hung_up(fd, WAITING_HANGUP_CHECK),
        )
        .await;
        assert!(waiting.is_err(), "a waiting client is not gone");
        drop(client_end);
        tokio::time::timeout(Duration::from_secs(5), hung_up(fd, WAITING_HANGUP_CHECK))
            .await
            .expect("a client that closed its end is gone");
    }

    /// How long [`SlowDump`] ran, in ms, once it stopped.
    static SLOW_DUMP_RAN_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    /// A dump of a million sockets: busy until cancelled, for 20 s at most.
    struct SlowDump(Cancel);

    impl SocketSource for SlowDump {
        fn parts(&self, _: &Scope, _: u8, _: &mut dyn FnMut(source::Part) -> bool) {
            let start = std::time::Instant::now();
            while !self.0.is_cancelled() && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let ms = start.elapsed().as_millis() as u64;
            SLOW_DUMP_RAN_MS.store(ms.max(1), std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_snapshot_whose_client_hangs_up_stops_and_frees_its_slot() {
        let s = Arc::new(Shared {
            sources: |cancel| Box::new(SlowDump(cancel)),
            ..Arc::into_inner(shared(Limits::default())).unwrap()
        });
        let peer = Peer {
            pid: std::process::id() as i32,
            uid: 1000,
            gid: 1000,
            access: Access::Admin,
        };
        let (agent_end, client_end) = UnixStream::pair().unwrap();
        let served = tokio::spawn(handle(s.clone(), agent_end, peer, admit(&s, 1000).unwrap()));
        let mut client = BufReader::new(client_end);
        let mut line = serde_json::to_vec(&request(&[])).unwrap();
        line.push(b'\n');
        client.get_mut().write_all(&line).await.unwrap();
        let mut header = String::new();
        client.read_line(&mut header).await.unwrap();
        assert!(header.contains("true"), "{header}");
        // The dump is running: its slot is taken.
        let taken = std::time::Instant::now();
        while s.snapshots.held(1000) == 0 {
            assert!(
                taken.elapsed() < Duration::from_secs(5),
                "the dump never started"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let left = std::time::Instant::now();
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the request's task outlived its client")
            .unwrap();
        while s.snapshots.held(1000) > 0 {
            assert!(
                left.elapsed() < Duration::from_secs(5),
                "the slot stayed taken after the client left"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let freed = left.elapsed();
        let ran = SLOW_DUMP_RAN_MS.load(std::sync::atomic::Ordering::SeqCst);
        assert!(ran > 0 && ran < 5_000, "the dump ran {ran} ms");
        assert!(
            freed < Duration::from_secs(1),
            "slot freed {freed:?} after the hang-up"
        );
    }

    fn shared(limits: Limits) -> Arc<Shared> {
        Arc::new(Shared {
            table: TracerHandle::new().0,
            services: Services::default(),
            clock: Clock::now(),
            limits,
            admission: Admission::default(),
            snapshots: Slots::new(limits.snapshots),
            sources: live_source,
            in_flight: Budget::new(limits.bytes_in_flight, limits.bytes_in_flight_per_uid),
            admin_gid: None,
            iter: None,
        })
    }

    #[test]
    fn connections_are_limited_per_user_and_in_all_and_given_back() {
        let s = shared(Limits {
            clients: 5,
            clients_per_uid: 2,
            ..Limits::default()
        });
        let a = admit(&s, 1000).unwrap();
        let _b = admit(&s, 1000).unwrap();
        let e = admit(&s, 1000).err().unwrap();
        assert!(e.contains("uid 1000 has 2 connections"), "{e}");
        let _c = admit(&s, 1001).unwrap();
        drop(a);
        let _d = admit(&s, 1000).unwrap();
        let _root: Vec<_> = (0..2).map(|_| admit(&s, 0).unwrap()).collect();
        let e = admit(&s, 0).err().unwrap();
        assert!(e.contains("5 clients at most"), "{e}");
    }

    #[test]
    fn a_filter_larger_than_the_limit_is_refused() {
        let big = vec!["dport = :1 or"; 400].join(" ");
        let mut words: Vec<&str> = big.split(' ').collect();
        words.push("sport = :2");
        let e = prepare(
            request(&words),
            &peer(),
            &Limits::default(),
            &Services::default(),
            own_netns,
        )
        .unwrap_err();
        assert!(format!("{e}").contains("accepts 4096 at most"), "{e}");
    }
}
