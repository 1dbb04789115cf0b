//! Where `netmon top` gets its numbers: one `top` request a second to the agent, or, when no
//! agent runs and we may trace, a probe attached in this process.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;

use super::model::{self, Input, Losses, Model, Query};
use crate::{
    agent::{ReplyHeader, Request},
    attach::{KernelCounters, Probe, ProbeConfig},
    decode,
    filter::{Filter, Services, StateSet},
    netns,
    output::Clock,
    procfs,
    table::Table,
};

/// How long one request to the agent may take before the screen says it is late.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The numbers for `query` from a table, as the agent and the in-process probe both hold it;
/// `netns`: only that namespace (else every one).
pub fn from_table(
    table: &Table,
    counters: &KernelCounters,
    clock: Clock,
    query: &Query,
    filter: &Filter,
    netns: Option<u32>,
) -> Model {
    let in_scope = |ns: u32| netns.is_none_or(|n| n == ns);
    let input = Input {
        now_ns: Clock::mono_now_ns(),
        clock,
        closed_newest_first: table.closed().rev().filter(|c| in_scope(c.netns)),
        live: table.live().map(|(_, s)| s).filter(|s| in_scope(s.netns)),
        time_wait: table.time_wait_count(in_scope) as u64,
        losses: Losses {
            ring_full: counters.ring_full,
            recursion: counters.recursion_lost(table.duplicates),
            hints: counters.hints_ring_full,
            evicted: table.evicted,
        },
        netns,
    };
    model::compute(query, filter, input)
}

/// Parses a query's filter as ss would (every state selected unless it says otherwise).
pub fn parse_filter(query: &Query, services: &Services) -> Result<Filter, String> {
    Filter::parse(&query.filter, services, StateSet::ALL).map_err(|e| e.render())
}

pub enum Feed {
    Agent(PathBuf),
    Local(Box<Local>),
}

impl Feed {
    /// The agent at `path` if one answers there; else a probe of our own if we may attach.
    /// Returns the feed and a one-line description of it.
    pub fn open(path: &Path) -> anyhow::Result<(Self, String)> {
        match UnixStream::connect(path) {
            Ok(_) => Ok((Feed::Agent(path.into()), "agent".into())),
            Err(e) if crate::attach::has_bpf_privileges() => {
                let local = Local::attach().context("attaching the probe")?;
                let note = format!(
                    "no agent at {} ({e}): tracing in this process, history starts now",
                    path.display()
                );
                Ok((Feed::Local(Box::new(local)), note))
            }
            Err(e) => anyhow::bail!(
                "no agent at {} ({e}): start one with `sudo netmon agent`, or run `netmon top` \
                 as root to trace in this process",
                path.display()
            ),
        }
    }

    /// Applies waiting events, for a probe of our own (the agent does that itself).
    pub fn pump(&mut self) {
        if let Feed::Local(l) = self {
            l.pump();
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
    let mut line = serde_json::to_vec(&Request::Top(query.clone()))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .with_context(|| format!("asking the agent at {shown}"))?;
    let mut reader = BufReader::new(stream);
    let mut header = Vec::new();
    reader
        .read_until(b'\n', &mut header)
        .with_context(|| format!("reading the agent's answer from {shown}"))?;
    let header: ReplyHeader = serde_json::from_slice(&header).with_context(|| {
        format!("the agent at {shown} answered something else (an older netmon?)")
    })?;
    if !header.ok {
        anyhow::bail!("the agent refused: {}", header.error.unwrap_or_default());
    }
    let mut body = Vec::new();
    reader
        .read_to_end(&mut body)
        .with_context(|| format!("reading the agent's answer from {shown}"))?;
    serde_json::from_slice(&body).context("the agent's numbers did not decode (an older netmon?)")
}

/// A probe and table of our own, when no agent runs.
pub struct Local {
    probe: Probe,
    table: Table,
    clock: Clock,
    netns: u32,
}

impl Local {
    fn attach() -> anyhow::Result<Self> {
        let probe = Probe::attach(&ProbeConfig::default())?;
        let mut local = Self {
            probe,
            table: Table::new(),
            clock: Clock::now(),
            netns: netns::current_inum().context("reading this process's network namespace")?,
        };
        local.pump();
        netns::resync_all(&mut local.table, Some(&procfs::socket_owners()));
        Ok(local)
    }

    fn pump(&mut self) {
        let table = &mut self.table;
        while self
            .probe
            .drain(|bytes| {
                if let Ok(e) = decode::decode(bytes) {
                    table.event(&e);
                }
            })
            .more
        {}
        self.table.expire(Clock::mono_now_ns());
    }

    fn fetch(&mut self, query: &Query, services: &Services) -> anyhow::Result<Model> {
        self.pump();
        let filter = parse_filter(query, services).map_err(anyhow::Error::msg)?;
        let counters = self.probe.counters()?;
        let netns = (!query.all_netns).then_some(self.netns);
        Ok(from_table(
            &self.table,
            &counters,
            self.clock,
            query,
            &filter,
            netns,
        ))
    }
}
