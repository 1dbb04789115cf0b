//! Command-line interface: argument definitions and dispatch to the commands.

use std::io::{IsTerminal, Write};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use netmon_common::{DEFAULT_RING_BYTES, DEFAULT_WAKEUP_BYTES};

use crate::{
    agent::{self, AgentArgs, ClientError},
    attach::ProbeConfig,
    filter::{Filter, Services, StateSet},
    netns::{self, Netns},
    output::{Clock, Format, Printer},
    procfs,
    snapshot::{self, Data, Row, SnapshotArgs},
    watch::{self, Watcher},
};

/// An error whose text is complete as it is (e.g. a filter error with its caret line): main
/// prints it without a `netmon:` prefix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Rendered(pub String);

/// `--version`; a build without the eBPF program says so, and `cargo xtask package` checks.
#[cfg(not(netmon_ebpf_stub))]
const VERSION: &str = env!("CARGO_PKG_VERSION");
#[cfg(netmon_ebpf_stub)]
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (built without its eBPF program)"
);

/// Trace TCP connections with eBPF: every state transition as it happens, like `ss -E` for
/// every change, plus live socket tables like `ss -tan`.
#[derive(Debug, Parser)]
#[command(name = "netmon", version = VERSION, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream TCP state transitions as they happen (needs root, or CAP_BPF + CAP_PERFMON).
    Watch(WatchArgs),
    /// Print the TCP sockets that exist now, like `ss -tan`, or the ones that just closed
    /// (`--closed`). Served by `netmon agent` when it runs; otherwise a one-shot dump.
    Snapshot(SnapshotArgs),
    /// Keep the live connection table and serve `netmon snapshot` (needs root).
    Agent(AgentArgs),
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Output format.
    #[arg(short = 'f', long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Only IPv4 sockets (IPv4-mapped IPv6 sockets are IPv6, as in ss).
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Only IPv6 sockets.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Do not print the header line.
    #[arg(short = 'H', long = "no-header")]
    pub no_header: bool,
    /// One record per connection when it ends (like tcplife): owner, lifespan, time in each
    /// state, how it ended, bytes; instead of one line per transition.
    #[arg(long)]
    pub lifecycle: bool,
    /// Ring buffer size in bytes (a power of two); raise it if losses are reported.
    #[arg(long, default_value_t = DEFAULT_RING_BYTES, value_name = "BYTES")]
    pub ring_size: u32,
    /// An ss filter, e.g. `dst 127.0.0.0/8 and dport ge :1024` or `state established`; a
    /// transition passes if its old or new state is selected (default: every state).
    #[arg(value_name = "FILTER")]
    pub filter: Vec<String>,
}

impl WatchArgs {
    fn filter(&self, services: &Services) -> Result<Filter, Rendered> {
        Filter::parse(&self.filter, services, StateSet::ALL)
            .map(|f| f.restrict_families(self.ipv4, self.ipv6))
            .map_err(|e| Rendered(e.render()))
    }

    /// The kernel applies what it can of the filter: families, ports, states, netns.
    fn probe_config(&self, filter: &Filter) -> ProbeConfig {
        ProbeConfig {
            ring_bytes: self.ring_size,
            wakeup_bytes: DEFAULT_WAKEUP_BYTES.min(u64::from(self.ring_size) / 4),
            filter: filter.kernel_filter(),
            hints: true,
        }
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Watch(args) => runtime.block_on(watch_command(args)),
        Command::Snapshot(args) => runtime.block_on(snapshot_command(args)),
        Command::Agent(args) => runtime.block_on(agent::run(&args, stop_signal())),
    }
}

async fn watch_command(args: WatchArgs) -> anyhow::Result<()> {
    let services = Services::system().unwrap_or_default();
    let filter = args.filter(&services)?;
    let stdout = std::io::stdout();
    let interactive = stdout.is_terminal();
    let out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let printer = Printer::new(out, args.format, Clock::now(), !args.no_header);
    let mut watcher = Watcher::new(printer, filter.clone(), args.lifecycle);
    let ready = || {
        if interactive {
            eprintln!("netmon: watching TCP state transitions; Ctrl-C to stop");
        }
    };
    watch::run(
        &args.probe_config(&filter),
        &mut watcher,
        ready,
        stop_signal(),
    )
    .await
    .context("watch")?;
    watcher.flush().ok();
    let duplicates = watcher.duplicates();
    if duplicates > 0 {
        eprintln!("netmon: {duplicates} transitions the kernel delivered twice were shown once");
    }
    if watcher.malformed > 0 {
        eprintln!(
            "netmon: {} ring records did not decode (build mismatch?)",
            watcher.malformed
        );
    }
    std::io::stderr().flush().ok();
    Ok(())
}

async fn snapshot_command(args: SnapshotArgs) -> anyhow::Result<()> {
    let services = Services::system().unwrap_or_default();
    // Parse here too, so a bad filter fails the same way with or without an agent.
    let filter = args.filter(&services).map_err(|e| Rendered(e.render()))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let path = agent::socket_path();
    let notes = match agent::request(&path, &args, &mut out).await {
        Ok(notes) => notes,
        Err(ClientError::Refused(msg)) => return Err(Rendered(msg).into()),
        Err(e) if args.closed.is_some() => {
            let e = anyhow::Error::new(e);
            anyhow::bail!("--closed needs the agent (start it with `sudo netmon agent`): {e:#}")
        }
        Err(e) => {
            let e = anyhow::Error::new(e);
            eprintln!("netmon: {e:#}; showing a one-shot sock_diag dump (no ages, no history)");
            fallback_snapshot(&args, &filter, &services, &mut out)?
        }
    };
    out.flush()?;
    for note in notes {
        eprintln!("netmon: {note}");
    }
    Ok(())
}

/// What ss does: dump the sockets now, with nothing the event stream would add.
fn fallback_snapshot(
    args: &SnapshotArgs,
    filter: &Filter,
    services: &Services,
    out: &mut impl Write,
) -> anyhow::Result<Vec<String>> {
    let namespaces = if args.all_netns {
        netns::all()
    } else {
        vec![Netns::current().context("opening this process's network namespace")?]
    };
    // Like ss -p: walk /proc on every run (the agent does not).
    let owners = args.processes.then(procfs::socket_owners);
    let mut rows = Vec::new();
    for ns in &namespaces {
        let dump = ns
            .dump()
            .with_context(|| format!("dumping sockets of netns {}", ns.inum))?;
        rows.extend(dump.into_iter().map(|s| Row {
            owner: owners.as_ref().and_then(|o| o.get(&s.inode)).copied(),
            ..Row::new(s, ns.inum, None)
        }));
    }
    let data = Data {
        rows,
        closed: Vec::new(),
        evicted: 0,
        now_ns: Clock::mono_now_ns(),
        clock: Clock::now(),
    };
    Ok(snapshot::render(args, filter, services, &data, out)?)
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn family_flags_set_the_kernel_filter() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Watch(w) => {
                let f = w.filter(&Services::default()).unwrap();
                w.probe_config(&f).filter.family_mask
            }
            _ => unreachable!(),
        };
        assert_eq!(parse(&["netmon", "watch"]), 0b11);
        assert_eq!(parse(&["netmon", "watch", "-4"]), 0b01);
        assert_eq!(parse(&["netmon", "watch", "-6"]), 0b10);
        assert!(Cli::try_parse_from(["netmon", "watch", "-4", "-6"]).is_err());
    }
}
