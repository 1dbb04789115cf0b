//! Command-line interface: argument definitions and dispatch to the commands.

use std::io::{IsTerminal, Write};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use netmon_common::{DEFAULT_RING_BYTES, DEFAULT_WAKEUP_BYTES, KernelFilter};

use crate::{
    attach::ProbeConfig,
    output::{Clock, Format, Printer},
    watch::{self, Watcher},
};

/// Trace TCP connections with eBPF: every state transition as it happens, like `ss -E` for
/// every change, plus live socket tables like `ss -tan`.
#[derive(Debug, Parser)]
#[command(name = "netmon", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream TCP state transitions as they happen (needs root, or CAP_BPF + CAP_PERFMON).
    Watch(WatchArgs),
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
    /// Ring buffer size in bytes (a power of two); raise it if losses are reported.
    #[arg(long, default_value_t = DEFAULT_RING_BYTES, value_name = "BYTES")]
    pub ring_size: u32,
}

impl WatchArgs {
    fn probe_config(&self) -> ProbeConfig {
        let family_mask = match (self.ipv4, self.ipv6) {
            (true, false) => 0b01,
            (false, true) => 0b10,
            _ => 0b11,
        };
        ProbeConfig {
            ring_bytes: self.ring_size,
            wakeup_bytes: DEFAULT_WAKEUP_BYTES.min(u64::from(self.ring_size) / 4),
            filter: KernelFilter {
                family_mask,
                ..KernelFilter::ALL
            },
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
    }
}

async fn watch_command(args: WatchArgs) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let interactive = stdout.is_terminal();
    let out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let printer = Printer::new(out, args.format, Clock::now(), !args.no_header);
    let mut watcher = Watcher::new(printer);
    let ready = || {
        if interactive {
            eprintln!("netmon: watching TCP state transitions; Ctrl-C to stop");
        }
    };
    watch::run(&args.probe_config(), &mut watcher, ready, stop_signal())
        .await
        .context("watch")?;
    watcher.flush().ok();
    if watcher.malformed > 0 {
        eprintln!(
            "netmon: {} ring records did not decode (build mismatch?)",
            watcher.malformed
        );
    }
    std::io::stderr().flush().ok();
    Ok(())
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
            Command::Watch(w) => w.probe_config().filter.family_mask,
        };
        assert_eq!(parse(&["netmon", "watch"]), 0b11);
        assert_eq!(parse(&["netmon", "watch", "-4"]), 0b01);
        assert_eq!(parse(&["netmon", "watch", "-6"]), 0b10);
        assert!(Cli::try_parse_from(["netmon", "watch", "-4", "-6"]).is_err());
    }
}
