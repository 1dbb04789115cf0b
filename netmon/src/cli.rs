//! Command-line interface: argument definitions and dispatch to the commands.

use std::{
    io::{IsTerminal, Write},
    time::Duration,
};

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use netmon_common::DEFAULT_RING_BYTES;

use crate::{
    agent::{self, AgentArgs, ClientError},
    cgroup::CgroupNames,
    clock::Clock,
    config, docs,
    features::Support,
    filter::{Filter, Services, StateSet},
    iter::{Fields, TcpIter},
    netns::{self, Netns},
    offsets,
    output::{Format, Printer},
    procfs,
    snapshot::{Renderer, SnapshotArgs},
    sock_diag::{self, Cancel, Families},
    sockstat::SockStat,
    source::{self, IterSource, LiveSource, ProcOwners, ReplaySource, Scope, SocketSource, What},
    tracer::TracerConfig,
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
    ///
    /// Where the options print only what `ss -tan` prints (plus -p, -r, -O, --count, and any
    /// filter), the sockets come from a BPF iterator (`iter/tcp`) that skips the ones the
    /// filter's states, families and port ranges reject inside the kernel; -o, -e, -m, -i,
    /// --cgroup, JSON and unit/container counts or filters dump over sock_diag, as ss does.
    /// With the agent, a filter on ports dumps over sock_diag with the port ranges as the
    /// kernel's filter program, as ss does (cheaper than the iterator's walk). Without the
    /// agent the iterator is used as root from 100,000 sockets up (loading it costs a few
    /// tenths of a second).
    Snapshot(SnapshotArgs),
    /// Keep the live connection table and serve `netmon snapshot` and `netmon top` (needs
    /// root).
    #[command(args_override_self = true, after_long_help = AGENT_FILES)]
    Agent(AgentArgs),
    /// List the optional kernel hooks netmon uses, whether this kernel has each, and what a
    /// missing one costs (reads the kernel's BTF; no root needed).
    Features,
    /// A live screen of who opens and fails connections, how fast, to whom, how long they
    /// live, and the ones that just ended; from the agent (or, as root without an agent,
    /// from a probe of its own). Keys: q quit, g group, s sort, / filter, t rate/total,
    /// space pause, Tab pane, Enter details.
    Top(crate::top::TopArgs),
    /// Print a completion script: `netmon completions bash > /etc/bash_completion.d/netmon`.
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages under DIR/man1 and DIR/man8, e.g. `netmon man /usr/local/share/man`.
    #[command(hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

/// The agent page's FILES and ENVIRONMENT (also in `netmon agent --help`).
const AGENT_FILES: &str = "\
Files: /etc/netmon/agent.toml holds settings, one key per long flag (`ring-size = 8388608`),
then /etc/netmon/agent.d/*.toml in name order; flags on the command line win.
/run/netmon/agent.sock is the query socket (root and group netmon).

Socket activation: started by netmon-agent.socket (systemd), the agent serves the listening
socket passed as fd 3 (LISTEN_FDS=1, LISTEN_PID=its pid) instead of binding --socket.";

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
    /// Add a CGROUP column: the socket's cgroup v2 path, as `ss --cgroup` prints it (JSON
    /// records always carry the cgroup and its unit, container and pod labels).
    #[arg(long)]
    pub cgroup: bool,
    /// Ring buffer size in bytes (a power of two); raise it if losses are reported.
    #[arg(long, default_value_t = DEFAULT_RING_BYTES, value_name = "BYTES")]
    pub ring_size: u32,
    /// Do not count the tracepoint's fires with perf counters: transitions the kernel ran no
    /// copy of the program for then go unreported (see "Exact or loud" in the README).
    #[arg(long)]
    pub no_fire_count: bool,
    /// How often the table of sockets is reconciled with the kernel's (hidden: for tests).
    #[arg(long, hide = true, default_value = "60s", value_name = "DURATION",
          value_parser = humantime::parse_duration)]
    pub resync_every: Duration,
    /// At exit, say how many sockets the table holds (hidden: for tests).
    #[arg(long, hide = true)]
    pub table_stats: bool,
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

    /// The kernel applies what it can of the filter: families, ports, states, netns, and one
    /// cgroup (`cgroups` resolves its path to the id the kernel compares).
    fn tracer_config(
        &self,
        filter: &Filter,
        cgroups: &CgroupNames,
    ) -> anyhow::Result<TracerConfig> {
        let mut kernel = filter.kernel_filter();
        if let Some(path) = filter.required_cgroup() {
            kernel.cgroup_id = cgroups
                .id_of(path)
                .map_err(|e| Rendered(format!("netmon: {e}")))?;
        }
        Ok(TracerConfig {
            ring_bytes: self.ring_size,
            filter: kernel,
            // Live state, timing and owners only: no closed history.
            closed_capacity: 0,
            count_fires: !self.no_fire_count,
            // Entries whose final `-> CLOSE` the kernel filter hid, or whose CLOSE was lost,
            // leave the table only when a dump no longer finds them.
            resync_every: Some(self.resync_every),
            resync_after_loss: Some(agent::RECONCILE_AFTER_LOSS),
            netns: (kernel.netns != 0).then_some(kernel.netns),
        })
    }
}

/// Parses the command line. For `agent`, the config file's settings go before the flags given
/// here, so these win (the agent's flags override earlier occurrences of themselves).
pub fn parse() -> anyhow::Result<Cli> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = Cli::parse_from(&args);
    let Command::Agent(agent) = &cli.command else {
        return Ok(cli);
    };
    let (config, required) = match &agent.config {
        Some(path) => (path.clone(), true),
        None => (config::DEFAULT_CONFIG.into(), false),
    };
    let files = config::files(&config, required)?;
    let command = Cli::command();
    let flags: Vec<config::Flag> = command
        .find_subcommand("agent")
        .into_iter()
        .flat_map(|a| a.get_arguments())
        .filter_map(|a| {
            Some(config::Flag {
                long: a.get_long().filter(|l| !matches!(*l, "config" | "help"))?,
                takes_value: a.get_action().takes_values(),
            })
        })
        .collect();
    let settings = config::load(&files, &flags)?;
    if settings.is_empty() {
        return Ok(cli);
    }
    let at = args.iter().position(|a| a == "agent").unwrap_or(1);
    let mut merged = args[..=at].to_vec();
    merged.extend(settings.iter().map(Into::into));
    // Checked alone first, so a bad value is reported against the files, not the command line.
    if let Err(e) = Cli::try_parse_from(&merged) {
        let shown: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        anyhow::bail!(
            "in {}: {}",
            shown.join(", "),
            first.trim_start_matches("error: ")
        );
    }
    merged.extend(args[at + 1..].iter().cloned());
    Ok(Cli::parse_from(merged))
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    // ss -N: the whole process moves, before the runtime starts threads, so the agent (which
    // reads the client's namespace) and the fallback dump both see the named namespace.
    if let Command::Snapshot(SnapshotArgs {
        net: Some(name), ..
    }) = &cli.command
    {
        netns::enter_named(name).with_context(|| {
            format!("entering network namespace {name:?} (-N needs root, as ss -N)")
        })?;
    }
    // ss -s reads the namespace's counters before it opens any socket of its own, so its
    // `Total` does not count itself: so does this, before the runtime makes its signal
    // socket pair, and here rather than in the agent.
    let summary = match &cli.command {
        Command::Snapshot(a) if a.summary => Some(
            SockStat::read(std::path::Path::new("/proc/thread-self/net"))
                .context("reading /proc/net/sockstat for -s")?,
        ),
        _ => None,
    };
    if matches!(
        cli.command,
        Command::Watch(_) | Command::Agent(_) | Command::Top(_)
    ) {
        crate::allocator::bound();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = match cli.command {
        Command::Watch(args) => runtime.block_on(watch_command(args)),
        Command::Snapshot(args) => runtime.block_on(snapshot_command(args, summary)),
        Command::Agent(args) => {
            let stop = {
                let _in_runtime = runtime.enter();
                stop_signal()
            };
            runtime.block_on(agent::run(&args, stop))
        }
        Command::Features => {
            let btf = offsets::kernel_btf()?;
            let support = Support::probe(&btf);
            std::io::stdout().write_all(support.render().as_bytes())?;
            if !support.transitions {
                anyhow::bail!(
                    "this kernel has no BTF tracepoint {}: netmon cannot run here",
                    netmon_common::TRACEPOINT
                );
            }
            Ok(())
        }
        Command::Top(args) => crate::top::run(args),
        Command::Completions { shell } => {
            docs::completions(shell, &mut std::io::stdout().lock());
            Ok(())
        }
        Command::Man { dir } => {
            for path in docs::write_man_pages(&dir)
                .with_context(|| format!("writing man pages under {}", dir.display()))?
            {
                println!("{}", path.display());
            }
            Ok(())
        }
    };
    // Done: a reconcile's dump still running on a blocking thread (every namespace of a host
    // with a million sockets takes seconds) must not hold up the exit, as dropping the
    // runtime would; the process ends it.
    runtime.shutdown_background();
    result
}

async fn watch_command(args: WatchArgs) -> anyhow::Result<()> {
    let services = Services::system().unwrap_or_default();
    let filter = args.filter(&services)?;
    let stdout = std::io::stdout();
    let interactive = stdout.is_terminal();
    let out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let printer = Printer::new(out, args.format, Clock::now(), !args.no_header)
        .with_cgroup_column(args.cgroup);
    let cgroups = CgroupNames::load();
    let config = args.tracer_config(&filter, &cgroups)?;
    let mut watcher = Watcher::new(printer, filter.clone(), args.lifecycle, cgroups);
    let ready = || {
        if interactive {
            eprintln!("netmon: watching TCP state transitions; Ctrl-C to stop");
        }
    };
    let tracer = watch::run(&config, &mut watcher, ready, stop_signal())
        .await
        .context("watch")?;
    watcher.flush().ok();
    let duplicates = tracer.pipeline.duplicates();
    if duplicates > 0 {
        eprintln!("netmon: {duplicates} transitions the kernel delivered twice were shown once");
    }
    if args.table_stats {
        eprintln!(
            "netmon: the table holds {} sockets",
            tracer.pipeline.table.len()
        );
    }
    let malformed = tracer.pipeline.losses().malformed;
    if malformed > 0 {
        eprintln!("netmon: {malformed} ring records did not decode (build mismatch?)");
    }
    std::io::stderr().flush().ok();
    Ok(())
}

async fn snapshot_command(mut args: SnapshotArgs, summary: Option<SockStat>) -> anyhow::Result<()> {
    args.check().map_err(Rendered)?;
    if let Some(path) = &args.dump_to {
        return record_dump(&args, path);
    }
    // ss takes `state`/`exclude` words from the command line and the expression from the
    // file: the file's words follow the command line's.
    if let Some(path) = &args.filter_file {
        let words = filter_words_from_file(path)?;
        args.filter.extend(words);
    }
    let services = Services::system().unwrap_or_default();
    // Parse here too, so a bad filter fails the same way with or without an agent.
    let filter = args.filter(&services).map_err(|e| Rendered(e.render()))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    if let Some(s) = summary {
        match args.format {
            Format::Text => s.write_text(&mut out)?,
            Format::Json => s.write_json(&mut out)?,
        }
        if !args.table_after_summary() {
            out.flush()?;
            return Ok(());
        }
        args.summary = false;
    }
    if let Some(path) = &args.from_dump {
        let source = replay_source(path)?;
        let notes = fallback_snapshot(&args, &filter, &services, &source, None, &mut out)?;
        out.flush()?;
        for note in notes {
            eprintln!("netmon: {note}");
        }
        return Ok(());
    }
    let path = agent::socket_path();
    let notes = match agent::request(&path, &args, &mut out).await {
        Ok(answer) => {
            let mut notes = answer.notes;
            notes.extend(loss_notes(&answer.losses));
            notes
        }
        Err(ClientError::Refused(msg)) => return Err(Rendered(msg).into()),
        // Our own output closed (`| head`): not the agent's failure.
        Err(ClientError::Output(e)) => return Err(e.into()),
        Err(e) if !e.may_fall_back() => {
            // Part of the answer is out already: say it is incomplete, add nothing to it.
            out.flush().ok();
            return Err(e.into());
        }
        Err(e) if args.closed.is_some() => {
            let e = anyhow::Error::new(e);
            anyhow::bail!("--closed needs the agent (start it with `sudo netmon agent`): {e:#}")
        }
        Err(e) => {
            let e = anyhow::Error::new(e);
            eprintln!("netmon: {e:#}; showing a one-shot dump (no ages, no history)");
            let iter = fallback_iter(&args);
            fallback_snapshot(
                &args,
                &filter,
                &services,
                &LiveSource::default(),
                iter.as_ref(),
                &mut out,
            )?
        }
    };
    out.flush()?;
    for note in notes {
        eprintln!("netmon: {note}");
    }
    Ok(())
}

/// What the agent's tracer lost, for the user: the table may lack ages, owners or history.
fn loss_notes(l: &crate::tracer::LossTotals) -> Vec<String> {
    let mut notes = Vec::new();
    let lost = l.ring_full + l.recursion + l.not_run;
    if lost > 0 {
        notes.push(format!(
            "the agent lost {lost} transitions since it started ({} ring full, {} recursion, {} \
             not run by the kernel): rows are exact, but some ages, owners or closed records \
             may be missing",
            l.ring_full, l.recursion, l.not_run
        ));
    }
    if l.hints_ring_full > 0 {
        notes.push(format!(
            "the agent dropped {} owner/reset hints (ring full): some owners or endings may be \
             missing",
            l.hints_ring_full
        ));
    }
    if l.malformed > 0 {
        notes.push(format!(
            "the agent could not decode {} ring records (build mismatch?)",
            l.malformed
        ));
    }
    notes
}

/// Below this many TCP sockets in the namespace, a snapshot without the agent dumps over
/// sock_diag: loading the iterator (two parses of the kernel's BTF, the verifier) costs a
/// fixed 0.3-0.5 s on the loaded 2-vCPU development machine, more than sock_diag's extra
/// per-socket time saves below about this count (docs/performance.md, "At scale").
const FALLBACK_ITER_MIN_SOCKETS: i64 = 100_000;

/// The socket iterator for a snapshot without the agent, where it can serve the options, the
/// namespace is big enough for its load to pay, and this process may load it (root); else the
/// dump goes over sock_diag, as ss's does, and only a failure other than missing privileges
/// is worth a line.
fn fallback_iter(args: &SnapshotArgs) -> Option<TcpIter> {
    if !args.iter_serves() || args.all_netns || !crate::attach::has_bpf_privileges() {
        return None;
    }
    let stat = crate::sockstat::SockStat::read(std::path::Path::new("/proc/thread-self/net"))
        .unwrap_or_default();
    if stat.tcp4_inuse + stat.tcp6_inuse + stat.tcp_tw < FALLBACK_ITER_MIN_SOCKETS {
        return None;
    }
    TcpIter::load()
        .map_err(|e| {
            eprintln!(
                "netmon: the socket iterator did not load ({:#}): dumping over sock_diag",
                anyhow::Error::new(e)
            )
        })
        .ok()
}

/// What ss does: dump the sockets now (or replay a recorded dump), with nothing the event
/// stream would add; from `iter` where it is given.
fn fallback_snapshot(
    args: &SnapshotArgs,
    filter: &Filter,
    services: &Services,
    source: &impl SocketSource,
    iter: Option<&TcpIter>,
    out: &mut impl Write,
) -> anyhow::Result<Vec<String>> {
    let scope = if args.all_netns {
        Scope::All
    } else {
        Scope::Caller(Netns::current().context("opening this process's network namespace")?)
    };
    // Like ss -p: walk /proc on every run (the agent does not).
    let mut owners = ProcOwners(args.processes.then(procfs::socket_owners));
    let what = What {
        ext: args.diag_ext(),
        table: args.processes,
        ..What::default()
    };
    // The kernel sent marks only if we may see them.
    let mut renderer = Renderer::new(args, filter, services, Clock::now(), true, out);
    let missing = match iter {
        Some(iter) => {
            let source = IterSource {
                iter,
                filter: filter.kernel_filter(),
                // -p finds owners in /proc by inode, as ss does.
                fields: Fields {
                    inode: args.processes,
                },
                cancel: Cancel::default(),
            };
            source::stream(&source, &scope, &mut owners, what, &mut renderer)?
        }
        None => source::stream(source, &scope, &mut owners, what, &mut renderer)?,
    };
    let mut notes = renderer.finish()?;
    notes.extend(missing);
    Ok(notes)
}

/// --dump-to (ss -D): the caller's namespace's sock_diag replies, raw, to a file or stdout.
fn record_dump(args: &SnapshotArgs, path: &std::path::Path) -> anyhow::Result<()> {
    let families = match (args.ipv4, args.ipv6) {
        (true, false) => Families::V4,
        (false, true) => Families::V6,
        _ => Families::ALL,
    };
    let recording = sock_diag::record_tcp(families, sock_diag::SS_STATES, args.diag_ext())
        .context("dumping this namespace's TCP sockets over sock_diag")?;
    if path.as_os_str() == "-" {
        std::io::stdout()
            .lock()
            .write_all(&recording)
            .context("writing the dump to stdout")?;
    } else {
        std::fs::write(path, &recording)
            .with_context(|| format!("writing the dump to {}", path.display()))?;
    }
    Ok(())
}

/// --from-dump: a recording (`-` is stdin) replayed as the caller's namespace.
fn replay_source(path: &std::path::Path) -> anyhow::Result<ReplaySource> {
    let recording = if path.as_os_str() == "-" {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut v)
            .context("reading the recorded dump from stdin")?;
        v
    } else {
        std::fs::read(path)
            .with_context(|| format!("reading the recorded dump {}", path.display()))?
    };
    let netns = netns::current_inum().context("reading this process's network namespace")?;
    ReplaySource::from_recording(netns, &recording).with_context(|| {
        format!(
            "replaying {} (it must be written by `netmon snapshot --dump-to` or `ss -D`)",
            path.display()
        )
    })
}

/// ss -F: the filter's words from a file (`-` is stdin); `#` starts a comment to the end of
/// its line.
fn filter_words_from_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the filter from stdin")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the filter file {}", path.display()))?
    };
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .flat_map(str::split_whitespace)
        .map(str::to_owned)
        .collect())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM; see [`crate::stop`].
fn stop_signal() -> impl std::future::Future<Output = ()> {
    crate::stop::signal()
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
                let cgroups = CgroupNames::default();
                w.tracer_config(&f, &cgroups).unwrap().filter.family_mask
            }
            _ => unreachable!(),
        };
        assert_eq!(parse(&["netmon", "watch"]), 0b11);
        assert_eq!(parse(&["netmon", "watch", "-4"]), 0b01);
        assert_eq!(parse(&["netmon", "watch", "-6"]), 0b10);
        assert!(Cli::try_parse_from(["netmon", "watch", "-4", "-6"]).is_err());
    }
}
