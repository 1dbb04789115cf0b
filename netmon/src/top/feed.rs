//! Where `netmon top` gets its numbers: one `top` request a second to the agent, or, when no
//! agent runs and we may trace, a tracer of our own on a thread of this process, asked the
//! same way.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use bytes::BytesMut;

use super::model::{self, Input, Losses, Model, Query};
use crate::{
    access::Access,
    clock::Clock,
    filter::{Filter, Services, StateSet},
    netns,
    table::Table,
    tracer::{LossTotals, Tracer, TracerConfig, TracerHandle},
    wire::{self, FRAME_DATA, ReplyHeader, Request, Trailer},
};

/// How long one request to the agent may take before the screen says it is late.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The numbers for `query` from a table, as the agent's tracer and our own both hold it;
/// `netns`: only that namespace (else every one); `access`: what the asker may see of other
/// users (the snapshot's rules, [`Access`]); `cgroups`: names of cgroup ids, for unit and
/// container groups and cgroup filters.
#[allow(clippy::too_many_arguments)]
pub fn from_table<'a>(
    table: &'a Table,
    losses: LossTotals,
    clock: Clock,
    query: &Query,
    filter: &Filter,
    netns: Option<u32>,
    access: Access,
    cgroups: Option<&'a mut dyn model::CgroupLabels>,
) -> Model {
    let in_scope = |ns: u32| netns.is_none_or(|n| n == ns);
    let input = Input {
        now_ns: Clock::mono_now_ns(),
        clock,
        closed_newest_first: table.closed().rev().filter(|c| in_scope(c.netns)),
        live: table.live().map(|(_, s)| s).filter(|s| in_scope(s.netns)),
        time_wait: table.time_wait_count(in_scope) as u64,
        losses: Losses {
            ring_full: losses.ring_full,
            recursion: losses.recursion,
            hints: losses.hints_ring_full,
            not_run: losses.not_run,
            malformed: losses.malformed,
            evicted: table.evicted,
        },
        netns,
        access,
        cgroups,
    };
    model::compute(query, filter, input)
}

/// Parses a query's filter as ss would (every state selected unless it says otherwise).
pub fn parse_filter(query: &Query, services: &Services) -> Result<Filter, String> {
    Filter::parse(&query.filter, services, StateSet::ALL).map_err(|e| e.render())
}

pub enum Feed {
    Agent(PathBuf),
    Local(Local),
}

impl Feed {
    /// The agent at `path` if one answers there; else a tracer of our own if we may attach.
    /// Returns the feed and a one-line description of it.
    pub fn open(path: &Path) -> anyhow::Result<(Self, String)> {
        match UnixStream::connect(path) {
            Ok(_) => Ok((Feed::Agent(path.into()), "agent".into())),
            Err(e) if crate::attach::has_bpf_privileges() => {
                let local = Local::start().context("attaching the probe")?;
                let note = format!(
                    "no agent at {} ({e}): tracing in this process, history starts now",
                    path.display()
                );
                Ok((Feed::Local(local), note))
            }
            Err(e) => anyhow::bail!(
                "no agent at {} ({e}): start one with `sudo netmon agent`, or run `netmon top` \
                 as root to trace in this process",
                path.display()
            ),
        }
    }

    pub fn fetch(&mut self, query: &Query, services: &Services) -> anyhow::Result<Model> {
        match self {
            Feed::Agent(path) => ask_agent(path, query),
            Feed::Local(l) => l.fetch(query, services),
        }
    }
}

fn ask_agent(path: &Path, query: &Query) -> anyhow::Result<Model> {
    let shown = path.display();
    let mut stream = UnixStream::connect(path)
        .with_context(|| format!("the agent at {shown} went away; restart it"))?;
    stream.set_read_timeout(Some(AGENT_TIMEOUT))?;
    stream.set_write_timeout(Some(AGENT_TIMEOUT))?;
    let mut line = serde_json::to_vec(&Request::top(query.clone()))?;
    line.push(b'\n');
    // Our network namespace goes with the request: the agent shows that one.
    let netns = std::fs::File::open("/proc/thread-self/ns/net")?;
    let sent = crate::peer::send_with_fd(
        std::os::fd::AsRawFd::as_raw_fd(&stream),
        &line,
        std::os::fd::AsRawFd::as_raw_fd(&netns),
    )
    .with_context(|| format!("asking the agent at {shown}"))?;
    stream
        .write_all(&line[sent..])
        .with_context(|| format!("asking the agent at {shown}"))?;
    let mut reader = BufReader::new(stream);
    let mut header = Vec::new();
    reader
        .read_until(b'\n', &mut header)
        .with_context(|| format!("reading the agent's answer from {shown}"))?;
    let header: ReplyHeader = serde_json::from_slice(&header)
        .with_context(|| format!("the agent at {shown} answered something else"))?;
    if !header.ok {
        anyhow::bail!("the agent refused: {}", header.error.unwrap_or_default());
    }
    let body = read_frames(&mut reader)
        .with_context(|| format!("reading the agent's answer from {shown}"))?;
    serde_json::from_slice(&body).context("the agent's numbers did not decode (another version?)")
}

/// The data frames of a reply, joined, once its trailer says they are complete.
fn read_frames(reader: &mut impl Read) -> anyhow::Result<Vec<u8>> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut data = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some((tag, payload)) = wire::take_frame(&mut buf)? {
            if tag == FRAME_DATA {
                data.extend_from_slice(&payload);
                continue;
            }
            let trailer: Trailer = serde_json::from_slice(&payload).context("malformed trailer")?;
            if !trailer.ok {
                anyhow::bail!("{}", trailer.error.unwrap_or_default());
            }
            return Ok(data);
        }
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            anyhow::bail!("the connection closed before the end of the reply");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A tracer of our own on its own thread (what the agent runs), for when no agent runs.
pub struct Local {
    handle: TracerHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    clock: Clock,
    netns: u32,
}

impl Local {
    fn start() -> anyhow::Result<Self> {
        let netns = netns::current_inum().context("reading this process's network namespace")?;
        let (handle, queries) = TracerHandle::new();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tracer".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => return drop(ready_tx.send(Err(anyhow::Error::from(e)))),
                };
                let config = TracerConfig {
                    ring_bytes: netmon_common::DEFAULT_RING_BYTES,
                    filter: netmon_common::KernelFilter::ALL,
                    closed_capacity: crate::table::DEFAULT_CLOSED_CAPACITY,
                    resync_every: Some(Duration::from_secs(60)),
                    resync_after_loss: Some(Duration::from_secs(5)),
                    count_fires: true,
                    // Every namespace: `--all-netns` may ask for them.
                    netns: None,
                };
                let mut tracer = match Tracer::attach(&config) {
                    Ok(t) => t,
                    Err(e) => return drop(ready_tx.send(Err(e.into()))),
                };
                tracer.seed();
                let _ = ready_tx.send(Ok(()));
                let stop = async {
                    let _ = stopped.await;
                };
                if let Err(e) = runtime.block_on(tracer.run(&mut (), Some(queries), stop)) {
                    eprintln!("netmon: the tracer stopped: {e:#}");
                }
                // `q` must not wait for a reconcile's dump still running (see cli::run).
                runtime.shutdown_background();
            })
            .context("starting the tracer thread")?;
        ready
            .recv()
            .context("the tracer thread ended while starting")??;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
            clock: Clock::now(),
            netns,
        })
    }

    fn fetch(&mut self, query: &Query, services: &Services) -> anyhow::Result<Model> {
        let filter = parse_filter(query, services).map_err(anyhow::Error::msg)?;
        let netns = (!query.all_netns).then_some(self.netns);
        // Tracing here needs root: whoever runs it may see everything.
        Ok(self
            .handle
            .top(query.clone(), filter, netns, self.clock, Access::Admin)?)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
