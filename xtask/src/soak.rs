//! `cargo xtask soak --minutes N` (root, not in CI): `netmon agent` and `netmon watch` under a
//! mixed, bounded load for N minutes, sampled over time: RSS and fds of both, transitions seen
//! against the load's own count, losses reported, snapshot latency. The agent's RSS is also
//! read every 20 ms for its floor between samples and its profile over the clients' round:
//! a sample alone lands in or between requests, and swings by what one holds.
//!
//! The load, all on loopback in namespaces the soak creates:
//! - churn: connect+close at a fixed rate ([`churn`], a hidden subcommand run in the churn
//!   namespace), which counts what it made: the ground truth for "nothing lost", 10
//!   transitions per connection and 2 for the listener, that `watch` (filtered on that
//!   namespace) must show or report lost;
//! - long-lived: `bench-hold` keeps established connections open all along in another one;
//! - snapshot clients: `netmon snapshot -tan` in the long-lived namespace every second, timed,
//!   and `--closed` in the churn namespace every 10 s;
//! - a misbehaving client: half requests that stall, garbage, idle connections held open,
//!   replies never read.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::bench::sys::{self, Netns, Proc};

const NETNS_PREFIX: &str = "netmon-soak-";
/// How often the agent's RSS is read between two samples, for its floor: well under the
/// shortest gap between two requests (the clients each ask once a second).
const FLOOR_EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long to run.
    #[arg(long, default_value_t = 10.0, value_name = "N")]
    pub minutes: f64,
    /// Seconds between two samples.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub interval: u64,
    /// Connections per second of the churn.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub rate: u32,
    /// Connections held open all along (two sockets each).
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub long_lived: u32,
}

/// One sample of the soak.
#[derive(Debug, Clone, Default)]
struct Sample {
    at_s: f64,
    agent_rss_kib: u64,
    /// The agent's lowest RSS since the previous sample (read every [`FLOOR_EVERY`]): what it
    /// holds between requests, where a sample of RSS alone falls anywhere between this and the
    /// peak, depending on where it lands in the clients' one-second cycle.
    agent_floor_kib: u64,
    /// Where the sample of RSS fell: ms since the misbehaving client's latest round began.
    round_ms: f64,
    /// The agent's peak RSS since the previous sample (VmHWM, reset at each sample): what a
    /// sample of RSS alone can miss, or catch, by its timing.
    agent_peak_kib: u64,
    /// Memory holding replies not read yet (the agent's `netmon_unread_replies_bytes`).
    unread_bytes: u64,
    agent_fds: usize,
    watch_rss_kib: u64,
    watch_fds: usize,
    connections: u64,
    transitions: u64,
    lost_reported: u64,
    snapshots: usize,
    snapshot_p99_ms: f64,
    snapshot_failures: u64,
    /// The agent's table (its metrics): live, TIME-WAIT and closed-history entries of every
    /// namespace, the soak's and everyone else's: what the agent's RSS has to hold.
    table: [u64; 3],
}

/// What the soak reads from the agent's metrics.
#[derive(Debug, Clone, Copy, Default)]
struct Scraped {
    table: [u64; 3],
    unread_bytes: u64,
}

/// When a loop's latest round began, in ns since [`Round::t0`].
#[derive(Debug)]
struct Round {
    t0: Instant,
    at_ns: AtomicU64,
}

impl Default for Round {
    fn default() -> Self {
        Self {
            t0: Instant::now(),
            at_ns: AtomicU64::new(u64::MAX),
        }
    }
}

impl Round {
    fn mark(&self) {
        let now = u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.at_ns.store(now, Ordering::Relaxed);
    }

    /// Milliseconds since the latest round began (0 before the first).
    fn since_ms(&self) -> f64 {
        let at = self.at_ns.load(Ordering::Relaxed);
        if at == u64::MAX {
            return 0.0;
        }
        let now = u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        now.saturating_sub(at) as f64 / 1e6
    }
}

/// The agent's RSS by where its readings fell in the misbehaving client's round (bins of
/// [`Profile::BIN_MS`]): how much a sample of RSS depends on when it is taken.
#[derive(Debug, Default)]
struct Profile {
    /// (sum KiB, readings, min KiB, max KiB) per bin; the last bin takes the rest.
    bins: [(u64, u64, u64, u64); Profile::BINS],
}

impl Profile {
    const BIN_MS: f64 = 100.0;
    const BINS: usize = 11;

    fn add(&mut self, since_ms: f64, kib: u64) {
        let i = ((since_ms / Self::BIN_MS) as usize).min(Self::BINS - 1);
        let b = &mut self.bins[i];
        b.2 = if b.1 == 0 { kib } else { b.2.min(kib) };
        b.3 = b.3.max(kib);
        b.0 += kib;
        b.1 += 1;
    }

    fn render(&self) -> String {
        let mut out = format!(
            "agent RSS by ms since the misbehaving client's round began (read every {} ms \
             after minute 2): mean (min-max) MB\n",
            FLOOR_EVERY.as_millis()
        );
        for (i, &(sum, n, lo, hi)) in self.bins.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let from = i as f64 * Self::BIN_MS;
            let range = if i + 1 == Self::BINS {
                format!("{from:.0}+")
            } else {
                format!("{from:.0}-{:.0}", from + Self::BIN_MS - 1.0)
            };
            out.push_str(&format!(
                "  {range:>9} ms: {:.1} ({:.1}-{:.1}), {n} readings\n",
                sum as f64 / n as f64 / 1024.0,
                lo as f64 / 1024.0,
                hi as f64 / 1024.0
            ));
        }
        out
    }
}

/// What the reader of `watch`'s output counted.
#[derive(Debug, Default)]
struct WatchCounts {
    transitions: AtomicU64,
    lost: AtomicU64,
}

pub fn soak(args: &SoakArgs, netmon: &Path, target: &Path) -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the soak loads eBPF programs and creates network namespaces: run it as root");
    }
    if !(0.5..=24.0 * 60.0).contains(&args.minutes) {
        bail!("--minutes must be between 0.5 and 1440");
    }
    if !(1..=20_000).contains(&args.rate) || args.long_lived > 9000 || args.interval == 0 {
        bail!("--rate must be 1..=20000, --long-lived at most 9000, --interval at least 1");
    }
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    let dir = target.join("soak");
    std::fs::create_dir_all(&dir)?;
    sys::remove_stale_netns(NETNS_PREFIX);
    let me = std::process::id();
    let churn_ns = Netns::create(format!("{NETNS_PREFIX}{me}-churn"))?;
    let held_ns = Netns::create(format!("{NETNS_PREFIX}{me}-held"))?;
    let secs = args.minutes * 60.0;

    let socket = dir.join("agent.sock");
    let metrics = {
        let l = TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let mut agent = Proc::spawn(
        Command::new(netmon)
            .args(["agent", "--socket"])
            .arg(&socket)
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .stderr(std::fs::File::create(dir.join("agent.err"))?),
        "netmon agent",
    )?;
    wait_serving(&mut agent, &socket)?;
    let mut watch = Proc::spawn(
        Command::new(netmon)
            .args(["watch", "--format", "json"])
            .arg(format!("netns = {}", churn_ns.inum))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("watch.err"))?),
        "netmon watch",
    )?;
    let counts = Arc::new(WatchCounts::default());
    let reader = {
        let out = watch.child().stdout.take().context("watch stdout")?;
        let counts = counts.clone();
        std::thread::spawn(move || read_watch(out, &counts))
    };
    // watch prints nothing until there is traffic: give it the time to attach.
    std::thread::sleep(Duration::from_secs(3));

    let mut held = Proc::spawn(
        held_ns
            .command(&xtask)
            .args(["bench-hold", "--conns", &args.long_lived.to_string()])
            .args(["--id", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
        "the long-lived connections",
    )?;
    let mut ready = String::new();
    BufReader::new(held.child().stdout.take().context("hold stdout")?).read_line(&mut ready)?;
    if !ready.starts_with("ready") {
        bail!("bench-hold did not get ready: {ready:?}");
    }
    let connections = Arc::new(AtomicU64::new(0));
    let mut churn = Proc::spawn(
        churn_ns
            .command(&xtask)
            .args(["soak-churn", "--rate", &args.rate.to_string()])
            .args(["--secs", &secs.to_string()])
            .stdout(Stdio::piped()),
        "the churn",
    )?;
    let churn_reader = {
        let out = churn.child().stdout.take().context("churn stdout")?;
        let connections = connections.clone();
        std::thread::spawn(move || read_churn(out, &connections))
    };

    let stop = Arc::new(AtomicBool::new(false));
    // When the misbehaving client's latest round began: each round asks for a whole
    // `--all-netns` snapshot, so where a sample falls in the round tells what is in flight.
    let round = Arc::new(Round::default());
    let floor = Arc::new(AtomicU64::new(u64::MAX));
    let profile = Arc::new(Mutex::new(Profile::default()));
    let floors = {
        let (stop, floor, pid) = (stop.clone(), floor.clone(), agent.pid());
        let (round, profile) = (round.clone(), profile.clone());
        let from = Instant::now() + Duration::from_secs(120);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(kib) = sys::vm_kib(pid, "VmRSS") {
                    floor.fetch_min(kib, Ordering::Relaxed);
                    if Instant::now() >= from {
                        profile.lock().unwrap().add(round.since_ms(), kib);
                    }
                }
                std::thread::sleep(FLOOR_EVERY);
            }
        })
    };
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let failures = Arc::new(AtomicU64::new(0));
    let (held_ns, churn_ns) = (Arc::new(held_ns), Arc::new(churn_ns));
    let clients = {
        let (stop, latencies, failures) = (stop.clone(), latencies.clone(), failures.clone());
        let (netmon, socket) = (netmon.to_owned(), socket.clone());
        let (held_ns, churn_ns) = (held_ns.clone(), churn_ns.clone());
        std::thread::spawn(move || {
            let clients = Clients {
                netmon: &netmon,
                socket: &socket,
                held_ns: &held_ns,
                churn_ns: &churn_ns,
            };
            clients.run(&stop, &latencies, &failures);
        })
    };
    let misbehaving = {
        let (stop, socket, netmon) = (stop.clone(), socket.clone(), netmon.to_owned());
        let round = round.clone();
        std::thread::spawn(move || misbehave(&netmon, &socket, &stop, &round))
    };

    println!(
        "soak: {:.1} min, churn {} conn/s, {} long-lived connections, sample every {} s",
        args.minutes, args.rate, args.long_lived, args.interval
    );
    println!("{}", header());
    let started = Instant::now();
    sys::reset_hwm(agent.pid())?;
    let mut samples = Vec::new();
    let end = started + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        let next = (Instant::now() + Duration::from_secs(args.interval)).min(end);
        while Instant::now() < next {
            std::thread::sleep(Duration::from_millis(200));
            if let Some(status) = agent.exited()? {
                bail!("the agent exited during the soak ({status})");
            }
            if let Some(status) = watch.exited()? {
                bail!("watch exited during the soak ({status})");
            }
        }
        let lat = std::mem::take(&mut *latencies.lock().unwrap());
        let scraped = scrape(metrics);
        let agent_peak_kib = sys::vm_kib(agent.pid(), "VmHWM")?;
        sys::reset_hwm(agent.pid())?;
        let agent_rss_kib = sys::vm_kib(agent.pid(), "VmRSS")?;
        let round_ms = round.since_ms();
        let s = Sample {
            at_s: started.elapsed().as_secs_f64(),
            agent_rss_kib,
            round_ms,
            agent_floor_kib: floor.swap(u64::MAX, Ordering::Relaxed).min(agent_rss_kib),
            agent_peak_kib,
            unread_bytes: scraped.unread_bytes,
            agent_fds: fds(agent.pid()),
            watch_rss_kib: sys::vm_kib(watch.pid(), "VmRSS")?,
            watch_fds: fds(watch.pid()),
            connections: connections.load(Ordering::Relaxed),
            transitions: counts.transitions.load(Ordering::Relaxed),
            lost_reported: counts.lost.load(Ordering::Relaxed),
            snapshots: lat.len(),
            snapshot_p99_ms: p99(&lat),
            snapshot_failures: failures.swap(0, Ordering::Relaxed),
            table: scraped.table,
        };
        println!("{}", row(&s));
        samples.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    let churn_status = churn.wait(Duration::from_secs(60))?;
    let made = churn_reader
        .join()
        .map_err(|_| anyhow::anyhow!("churn reader panicked"))??;
    if !churn_status.success() {
        bail!("the churn failed ({churn_status})");
    }
    let _ = clients.join();
    let _ = misbehaving.join();
    let _ = floors.join();
    // Every churn connection ends within a few ms; then watch has drained (it reads at least
    // every 50 ms) and flushes on SIGINT.
    std::thread::sleep(Duration::from_secs(2));
    let watch_status = watch.stop(libc::SIGINT, Duration::from_secs(30))?;
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("watch reader panicked"))??;
    let agent_status = agent.stop(libc::SIGTERM, Duration::from_secs(30))?;
    drop(held);
    drop(churn_ns);

    let expected = made.connections * 10 + made.listeners * 2;
    let seen = counts.transitions.load(Ordering::Relaxed);
    let lost = counts.lost.load(Ordering::Relaxed);
    let mut report = verdict(&samples, expected, seen, lost);
    report.push_str(&profile.lock().unwrap().render());
    println!("\n{report}");
    println!(
        "exits: watch {watch_status}, agent {agent_status}; churn made {} connections ({} errors)",
        made.connections, made.errors
    );
    let path = dir.join("report.md");
    let mut text = format!("{}\n", header());
    for s in &samples {
        text.push_str(&row(s));
        text.push('\n');
    }
    text.push_str(&format!("\n{report}\n"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("soak: report written to {}", path.display());
    Ok(())
}

fn header() -> String {
    format!(
        "{:>6} {:>10} {:>8} {:>8} {:>8} {:>9} {:>6} {:>8} {:>8} {:>8} {:>10} {:>6} {:>10} {:>11} {:>8} {:>6} {:>8} {:>6}",
        "min",
        "agent_MB",
        "round_ms",
        "floor_MB",
        "peak_MB",
        "unread_MB",
        "fds",
        "live",
        "tw",
        "closed",
        "watch_MB",
        "fds",
        "conns",
        "transitions",
        "lost",
        "snaps",
        "p99_ms",
        "failed"
    )
}

fn row(s: &Sample) -> String {
    format!(
        "{:>6.1} {:>10.1} {:>8.0} {:>8.1} {:>8.1} {:>9.1} {:>6} {:>8} {:>8} {:>8} {:>10.1} {:>6} {:>10} {:>11} {:>8} {:>6} {:>8.1} {:>6}",
        s.at_s / 60.0,
        s.agent_rss_kib as f64 / 1024.0,
        s.round_ms,
        s.agent_floor_kib as f64 / 1024.0,
        s.agent_peak_kib as f64 / 1024.0,
        s.unread_bytes as f64 / (1 << 20) as f64,
        s.agent_fds,
        s.table[0],
        s.table[1],
        s.table[2],
        s.watch_rss_kib as f64 / 1024.0,
        s.watch_fds,
        s.connections,
        s.transitions,
        s.lost_reported,
        s.snapshots,
        s.snapshot_p99_ms,
        s.snapshot_failures
    )
}

/// The targets of issue 10: RSS of both flat within 10 % after minute 2, no unaccounted loss.
fn verdict(samples: &[Sample], expected: u64, seen: u64, lost: u64) -> String {
    let mut out = String::new();
    let after2: Vec<&Sample> = samples.iter().filter(|s| s.at_s >= 120.0).collect();
    // A sample of RSS lands anywhere in the clients' one-second cycle of requests, so the
    // samples alone swing by what a request holds while it runs; the floor (between
    // requests) and the peak (with them) show whether memory is held over time.
    type Field = fn(&Sample) -> u64;
    let bands: [(&str, Field); 4] = [
        ("agent RSS", |s| s.agent_rss_kib),
        ("agent RSS floor between samples", |s| s.agent_floor_kib),
        ("agent peak RSS between samples", |s| s.agent_peak_kib),
        ("watch RSS", |s| s.watch_rss_kib),
    ];
    for (name, rss) in bands {
        match spread(&after2.iter().map(|s| rss(s)).collect::<Vec<_>>()) {
            Some((lo, hi)) => {
                let growth = (hi as f64 / lo as f64 - 1.0) * 100.0;
                out.push_str(&format!(
                    "{name} after minute 2: {:.1}-{:.1} MB, spread {growth:.1} % ({})\n",
                    lo as f64 / 1024.0,
                    hi as f64 / 1024.0,
                    if growth <= 10.0 {
                        "flat: met"
                    } else {
                        "NOT met"
                    }
                ));
            }
            None => out.push_str(&format!(
                "{name} after minute 2: no samples (run longer than 2 minutes)\n"
            )),
        }
    }
    // Exact or loud: every transition the load made is shown or counted as lost. The lost
    // count may exceed what this namespace missed: a fire the kernel ran no program for
    // (`not_run`) cannot be attributed to a namespace, so watch reports every one of them.
    let unaccounted = expected.saturating_sub(seen.saturating_add(lost));
    let verdict = if seen > expected {
        "NOT met: watch showed more than the load made"
    } else if unaccounted == 0 {
        "met"
    } else {
        "NOT met"
    };
    out.push_str(&format!(
        "transitions in the churn namespace: {expected} made (10 per connection + 2 per \
         listener, counted by the load), {seen} shown by watch, {lost} reported lost (of any \
         namespace): {unaccounted} unaccounted ({verdict})\n"
    ));
    let p99s: Vec<f64> = samples
        .iter()
        .filter(|s| s.snapshots > 0)
        .map(|s| s.snapshot_p99_ms)
        .collect();
    if let (Some(lo), Some(hi)) = (
        p99s.iter().copied().reduce(f64::min),
        p99s.iter().copied().reduce(f64::max),
    ) {
        out.push_str(&format!(
            "snapshot latency p99 per sample: {lo:.1}-{hi:.1} ms; failed snapshots: {}\n",
            samples.iter().map(|s| s.snapshot_failures).sum::<u64>()
        ));
    }
    out
}

/// The agent's `netmon_table_entries` (live, time_wait, closed_history) and
/// `netmon_unread_replies_bytes` from its metrics; zeros if the scrape fails (the row then
/// shows it).
fn scrape(addr: SocketAddr) -> Scraped {
    let get = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
        )?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    };
    let Ok(body) = get() else {
        return Scraped::default();
    };
    let value = |series: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    };
    Scraped {
        table: ["live", "time_wait", "closed_history"]
            .map(|kind| value(&format!("netmon_table_entries{{kind=\"{kind}\"}} "))),
        unread_bytes: value("netmon_unread_replies_bytes "),
    }
}

fn spread(xs: &[u64]) -> Option<(u64, u64)> {
    Some((*xs.iter().min()?, *xs.iter().max()?))
}

fn p99(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn wait_serving(agent: &mut Proc, socket: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while UnixStream::connect(socket).is_err() {
        if agent.exited()?.is_some() || Instant::now() > deadline {
            bail!("the agent did not start serving {}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Counts transitions and reported losses in watch's JSON Lines (docs/json.md).
fn read_watch(out: impl Read, counts: &WatchCounts) -> Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, out);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 {
        if line.starts_with("{\"type\":\"transition\"") {
            counts.transitions.fetch_add(1, Ordering::Relaxed);
        } else if line.starts_with("{\"type\":\"loss\"") {
            let count = line
                .split("\"count\":")
                .nth(1)
                .and_then(|r| r.split([',', '}']).next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            counts.lost.fetch_add(count, Ordering::Relaxed);
        }
        line.clear();
    }
    Ok(())
}

/// The churn's final count.
#[derive(Debug, Default)]
struct Made {
    connections: u64,
    listeners: u64,
    errors: u64,
}

/// Follows the churn's progress lines (`connections=N`) and parses its last one.
fn read_churn(out: impl Read, connections: &AtomicU64) -> Result<Made> {
    let mut made = Made::default();
    for line in BufReader::new(out).lines() {
        let line = line?;
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let Some(n) = field("connections") {
            connections.store(n, Ordering::Relaxed);
            made.connections = n;
        }
        if let (Some(l), Some(e)) = (field("listeners"), field("errors")) {
            made.listeners = l;
            made.errors = e;
        }
    }
    Ok(made)
}

/// The well-behaved snapshot clients.
struct Clients<'a> {
    netmon: &'a Path,
    socket: &'a Path,
    held_ns: &'a Netns,
    churn_ns: &'a Netns,
}

impl Clients<'_> {
    /// `netmon snapshot -tan` in the long-lived namespace every second, timed, and
    /// `--closed` in the churn namespace every 10 s; failures counted.
    fn run(&self, stop: &AtomicBool, latencies: &Mutex<Vec<f64>>, failures: &AtomicU64) {
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            round += 1;
            let t0 = Instant::now();
            let closed = round.is_multiple_of(10);
            let (ns, args): (&Netns, &[&str]) = if closed {
                (self.churn_ns, &["--closed", "10s"])
            } else {
                (self.held_ns, &["-tan"])
            };
            let status = ns
                .command(self.netmon)
                .arg("snapshot")
                .args(args)
                .env("NETMON_AGENT_SOCKET", self.socket)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            match status {
                Ok(s) if s.success() => {
                    if !closed {
                        let ms = t0.elapsed().as_secs_f64() * 1e3;
                        latencies.lock().unwrap().push(ms);
                    }
                }
                _ => {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            std::thread::sleep(Duration::from_secs(1).saturating_sub(t0.elapsed()));
        }
    }
}

/// A client that does everything wrong, a little every second: a request cut in the middle
/// and left hanging, garbage, a `snapshot --all-netns` whose output nobody reads (so it stops
/// reading its reply) stopped after 10 s, and 20 idle connections held for 10 s every 10 s.
/// Bounded: about 60 connections and 10 processes at once at most.
fn misbehave(netmon: &Path, socket: &Path, stop: &AtomicBool, began: &Round) {
    let mut idle: Vec<(Instant, UnixStream)> = Vec::new();
    let mut stuck: Vec<(Instant, Proc)> = Vec::new();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        began.mark();
        idle.retain(|(since, _)| since.elapsed() < Duration::from_secs(10));
        // Dropping a Proc stops it (SIGTERM, by pid).
        stuck.retain(|(since, _)| since.elapsed() < Duration::from_secs(10));
        if let Ok(mut s) = UnixStream::connect(socket) {
            let _ = s.write_all(br#"{"snapshot":{"tcp":tr"#);
            idle.push((Instant::now(), s));
        }
        if let Ok(mut s) = UnixStream::connect(socket) {
            let _ = s.write_all(b"\x00\xff garbage\n");
        }
        let slow = Command::new(netmon)
            .args(["snapshot", "-tan", "--all-netns"])
            .env("NETMON_AGENT_SOCKET", socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(child) = slow {
            stuck.push((
                Instant::now(),
                Proc::adopt(child, "a stuck snapshot client"),
            ));
        }
        if round.is_multiple_of(10) {
            for _ in 0..20 {
                if let Ok(s) = UnixStream::connect(socket) {
                    idle.push((Instant::now(), s));
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `xtask soak-churn`: one client and one accepting thread, connect + close at `rate` per
/// second for `secs` (count bounded by rate x secs), to loopback addresses spread over
/// 127.1.0.0/16 so that ephemeral ports never run out under TIME-WAIT. Prints
/// `connections=N` every second and, at the end, `connections=N listeners=1 errors=E`.
pub fn churn(rate: u32, secs: f64) -> Result<()> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
    let port = listener.local_addr()?.port();
    let max = (f64::from(rate) * secs) as u64;
    // Detached: it ends with the process.
    std::thread::spawn(move || {
        // Read to EOF, then close: the client closes first, as in the bench's storm. An
        // accept error (EMFILE...) ends it, and the count then shows the loss of connections.
        for mut s in listener.incoming().map_while(Result::ok) {
            let _ = s.read_to_end(&mut Vec::new());
        }
    });
    let t0 = Instant::now();
    let (mut n, mut errors) = (0u64, 0u64);
    let mut last_print = Instant::now();
    let mut out = std::io::stdout().lock();
    while n < max && t0.elapsed().as_secs_f64() < secs {
        let k = n + errors;
        let ip = Ipv4Addr::new(127, 1, (k % 1000 / 250) as u8, (k % 250) as u8 + 1);
        match TcpStream::connect(SocketAddr::V4(SocketAddrV4::new(ip, port))) {
            Ok(s) => {
                drop(s);
                n += 1;
            }
            Err(_) => errors += 1,
        }
        // Paced: connection n is due at n / rate.
        let due = Duration::from_secs_f64(n as f64 / f64::from(rate));
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            writeln!(out, "connections={n}")?;
            out.flush()?;
            last_print = Instant::now();
        }
    }
    // Let the last connections finish their handshakes and closes.
    std::thread::sleep(Duration::from_millis(500));
    writeln!(out, "connections={n} listeners=1 errors={errors}")?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: f64, agent_mb: u64, watch_mb: u64) -> Sample {
        Sample {
            at_s,
            agent_rss_kib: agent_mb * 1024,
            watch_rss_kib: watch_mb * 1024,
            ..Sample::default()
        }
    }

    #[test]
    fn losses_reported_beyond_the_namespace_still_account_for_everything() {
        let samples = [
            sample(60.0, 500, 500),
            sample(180.0, 100, 50),
            sample(240.0, 105, 52),
        ];
        let v = verdict(&samples, 1000, 990, 25);
        assert!(v.contains("0 unaccounted (met)"), "{v}");
        assert!(
            v.contains("agent RSS after minute 2: 100.0-105.0 MB, spread 5.0 % (flat: met)"),
            "{v}"
        );
    }

    #[test]
    fn samples_that_swing_with_requests_are_told_apart_from_memory_held() {
        // The samples land in or between requests; floor and peak stay where they were.
        let samples: Vec<Sample> = [72, 81, 72, 80, 72]
            .iter()
            .enumerate()
            .map(|(i, &mb)| Sample {
                agent_floor_kib: 71 * 1024,
                agent_peak_kib: 84 * 1024,
                ..sample(180.0 + 60.0 * i as f64, mb, 36)
            })
            .collect();
        let v = verdict(&samples, 0, 0, 0);
        assert!(
            v.contains("agent RSS after minute 2: 72.0-81.0 MB, spread 12.5 % (NOT met)"),
            "{v}"
        );
        assert!(
            v.contains(
                "agent RSS floor between samples after minute 2: 71.0-71.0 MB, spread 0.0 % \
                 (flat: met)"
            ),
            "{v}"
        );
        assert!(
            v.contains(
                "agent peak RSS between samples after minute 2: 84.0-84.0 MB, spread 0.0 % \
                 (flat: met)"
            ),
            "{v}"
        );
    }

    #[test]
    fn readings_are_profiled_by_where_they_fall_in_the_round() {
        let mut p = Profile::default();
        p.add(10.0, 70 * 1024);
        p.add(50.0, 72 * 1024);
        p.add(450.0, 80 * 1024);
        p.add(2500.0, 71 * 1024);
        let r = p.render();
        assert!(
            r.contains("      0-99 ms: 71.0 (70.0-72.0), 2 readings"),
            "{r}"
        );
        assert!(
            r.contains("   400-499 ms: 80.0 (80.0-80.0), 1 readings"),
            "{r}"
        );
        assert!(
            r.contains("     1000+ ms: 71.0 (71.0-71.0), 1 readings"),
            "{r}"
        );
        assert!(!r.contains("100-199"), "empty bins are left out: {r}");
    }

    #[test]
    fn a_transition_neither_shown_nor_reported_is_unaccounted() {
        let v = verdict(&[], 1000, 990, 4);
        assert!(v.contains("6 unaccounted (NOT met)"), "{v}");
        let v = verdict(&[], 1000, 1001, 0);
        assert!(
            v.contains("NOT met: watch showed more than the load made"),
            "{v}"
        );
    }
}
