//! `cargo xtask bench`: what netmon costs and what it catches, measured on this machine, in one
//! table (also written to target/bench/report.md).
//!
//! 1. Storm rate: a loopback connect+close storm ([`load::storm`]) in a fresh namespace, without
//!    netmon and under `watch --format json > file`, `watch > file` and `agent`. Baseline and
//!    traced runs alternate (B T B T ... B) so drift on a shared machine hits both; each traced
//!    run is divided by the mean of its two neighbouring baselines and the median is reported.
//! 2. Capture: the JSON runs' transitions in the storm's namespace against 10 per connection
//!    plus 2 per listener, with the losses netmon reported and the kernel's own counters.
//! 3. Snapshot wall times at growing socket counts, netmon against ss and netstat.
//! 4. Agent memory with the largest socket count live and a full closed history, and agent CPU
//!    during the storm.
//!
//! Everything runs on loopback in namespaces the bench creates and deletes (also on error:
//! [`sys::Netns`] and [`sys::Proc`] clean up on drop), and every loop is bounded in count and
//! time.

mod capture;
mod load;
mod scale;
pub(crate) mod sys;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub use load::{hold, storm};
use sys::{Netns, Proc};

const NETNS_PREFIX: &str = "netmon-bench-";
/// Most connections a holder process keeps: both ends are fds, and the limit is 20000.
const CONNS_PER_HOLDER: u32 = 9000;
/// The agent's closed history holds 100k sockets (netmon/src/table.rs); each connection closes
/// two, so this many connections fill it with room to spare.
const HISTORY_FILL_CONNS: u64 = 60_000;
/// Count bound of a storm run, per second of it: well above what 2 cores reach (~45k/s).
const STORM_MAX_PER_SEC: f64 = 150_000.0;

/// Enough rounds for a paired difference to narrow to ±0.006 on this machine, whose paired
/// rounds differ by ~0.05 (sd) because its vCPUs' speed drifts by 3-5 % over seconds even
/// with nothing running (docs/performance.md): 300 rounds of 4 s storms are ~90 minutes.
const MAX_ROUNDS: usize = 300;

/// A paired round is left out of the verdict when other work took more than this share of
/// the CPUs during either of its two runs: on a shared machine a neighbour's build moved
/// single storm ratios by 0.3 and more, in either direction. The sandbox's own PID 1 takes
/// ~2 % of a quiet machine.
const FOREIGN_MAX: f64 = 0.10;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A short run (about a minute): 1 s storms, one round, up to 10k sockets, 3 runs each.
    #[arg(long)]
    pub quick: bool,
    /// Seconds per storm run [default: 3, --quick: 1].
    #[arg(long, value_name = "SECS")]
    pub storm_secs: Option<f64>,
    /// Traced runs per mode, each round between two baseline runs [default: 3, --quick: 1;
    /// at most 300]. Whether an export stays within 0.02 of the agent (issue 13) takes many
    /// paired rounds: `--no-snapshot --modes agent,agent-otlp --rounds 260 --storm-secs 4
    /// --capture-runs 0` (75 minutes on a quiet machine, 17.3 s a round; 2026-12-03 its
    /// rounds differed by 0.052 (sd), for ±0.006; 4 s storms give the narrowest interval a
    /// minute, against 1, 2 and 8 s); a `cannot tell` row says about how many rounds its mean
    /// and spread would need.
    #[arg(long, value_name = "N")]
    pub rounds: Option<usize>,
    /// Client threads of the storm, each with an accepting thread of its own.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub storm_threads: usize,
    /// Socket counts for the snapshot timings [default: 1000,10000,100000, --quick: 1000,10000].
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    pub sizes: Option<Vec<u32>>,
    /// Timed runs per command and size, median reported [default: 5, --quick: 3].
    #[arg(long, value_name = "N")]
    pub runs: Option<usize>,
    /// Traced modes of the storm, each run `--rounds` times.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "json,json-no-fire-count,text,agent,agent-metrics,agent-otlp,agent-top"
    )]
    pub modes: Vec<Mode>,
    /// Also time netmon's BPF programs during the storm (BPF_ENABLE_STATS): a diagnostic, it
    /// adds two clock reads per program run to the traced runs.
    #[arg(long)]
    pub bpf_stats: bool,
    /// Keep the last JSON run's output as target/bench/watch.json (hundreds of MB) to look
    /// into missing transitions.
    #[arg(long)]
    pub keep_json: bool,
    /// Skip the storm (parts 1 and 2 and the agent CPU).
    #[arg(long)]
    pub no_storm: bool,
    /// Capture runs counted by perf (part 2), alternately IPv4 and IPv6 [default: 6,
    /// --quick: 2].
    #[arg(long, value_name = "N")]
    pub capture_runs: Option<usize>,
    /// Skip the snapshot timings and the agent memory (parts 3 and 4).
    #[arg(long)]
    pub no_snapshot: bool,
    /// Only the scale run (scale.rs): agents on 100k and 1M held sockets, seed, loss under
    /// churn, snapshot against ss, memory. 1M is skipped if the machine lacks the memory.
    #[arg(long)]
    pub scale: bool,
    /// Socket counts of the scale run.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "N,N,...",
        default_value = "100000,1000000"
    )]
    pub scale_sizes: Vec<u32>,
    /// Connections a second of the scale run's churn (during the seed and the reconciles).
    #[arg(long, default_value_t = 10_000.0, value_name = "N")]
    pub churn_rate: f64,
    /// Seconds of the scale run's churn.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub churn_secs: f64,
}

/// The bench's parameters once the defaults and `--quick` are applied.
struct Plan {
    modes: Vec<Mode>,
    keep_json: bool,
    storm_secs: f64,
    rounds: usize,
    threads: usize,
    sizes: Vec<u32>,
    runs: usize,
    capture_runs: usize,
}

impl Plan {
    fn new(a: &BenchArgs) -> Result<Self> {
        let plan = Self {
            modes: a.modes.clone(),
            keep_json: a.keep_json,
            storm_secs: a.storm_secs.unwrap_or(if a.quick { 1.0 } else { 3.0 }),
            rounds: a.rounds.unwrap_or(if a.quick { 1 } else { 3 }),
            threads: a.storm_threads,
            sizes: a.sizes.clone().unwrap_or_else(|| {
                if a.quick {
                    vec![1_000, 10_000]
                } else {
                    vec![1_000, 10_000, 100_000]
                }
            }),
            runs: a.runs.unwrap_or(if a.quick { 3 } else { 5 }),
            capture_runs: a.capture_runs.unwrap_or(if a.quick { 2 } else { 6 }),
        };
        if !(0.1..=60.0).contains(&plan.storm_secs) {
            bail!("--storm-secs must be between 0.1 and 60");
        }
        if !(1..=MAX_ROUNDS).contains(&plan.rounds)
            || !(1..=50).contains(&plan.runs)
            || plan.capture_runs > 50
        {
            bail!("--rounds must be 1..={MAX_ROUNDS}, --runs 1..=50 and --capture-runs 0..=50");
        }
        if plan.sizes.iter().any(|&s| !(1..=500_000).contains(&s)) {
            bail!("--sizes must be between 1 and 500000");
        }
        Ok(plan)
    }

    fn storm_max(&self) -> u64 {
        (STORM_MAX_PER_SEC * self.storm_secs) as u64
    }
}

/// What every measurement needs: the binaries, the output directory, unique names.
struct Ctx {
    netmon: PathBuf,
    /// This xtask binary: runs the load generators inside the namespaces.
    xtask: PathBuf,
    dir: PathBuf,
    netns_seq: AtomicU32,
}

impl Ctx {
    fn netns(&self, what: &str) -> Result<Netns> {
        let n = self.netns_seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}{}-{what}{n}", std::process::id());
        Netns::create(name)
    }
}

pub fn bench(args: &BenchArgs, netmon: &Path, target: &Path) -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench loads eBPF programs and creates network namespaces: run it as root");
    }
    let plan = Plan::new(args)?;
    let started = Instant::now();
    let ctx = Ctx {
        netmon: netmon.into(),
        xtask: std::env::current_exe().context("locating the xtask binary")?,
        dir: target.join("bench"),
        netns_seq: AtomicU32::new(0),
    };
    std::fs::create_dir_all(&ctx.dir)?;
    sys::remove_stale_netns(NETNS_PREFIX);

    let mut rows = Vec::new();
    let mut details = String::new();
    if args.scale {
        if args
            .scale_sizes
            .iter()
            .any(|&s| !(1_000..=2_000_000).contains(&s))
            || !(1.0..=50_000.0).contains(&args.churn_rate)
            || !(1.0..=60.0).contains(&args.churn_secs)
        {
            bail!(
                "--scale-sizes must be 1000..=2000000, --churn-rate 1..=50000, --churn-secs \
                 1..=60"
            );
        }
        let (r, d) = scale::run(
            &ctx,
            &scale::Plan {
                sizes: args.scale_sizes.clone(),
                churn_rate: args.churn_rate,
                churn_secs: args.churn_secs,
                runs: args.runs.unwrap_or(3),
            },
        )?;
        rows.extend(r);
        details.push_str(&d);
    } else if !args.no_storm {
        let _stats = args.bpf_stats.then(sys::BpfStats::enable).transpose()?;
        let runs = storm_rates(&ctx, &plan)?;
        rows.extend(storm_rows(&runs, &plan.modes));
        rows.extend(paired_rows(&runs, &plan.modes));
        rows.extend(capture_rows(&runs));
        details.push_str(&storm_details(&runs));
        let counted = capture::runs(&ctx, &plan)?;
        rows.extend(capture::rows(&counted));
        details.push_str(&capture::details(&counted));
    }
    if !args.no_snapshot && !args.scale {
        let snap = snapshot_times(&ctx, &plan)?;
        rows.extend(snapshot_rows(&snap));
        details.push_str(&snapshot_details(&snap));
    }

    let elapsed = started.elapsed().as_secs_f64();
    let header = format!(
        "# netmon bench\n\nMachine: {}. Storm: {} client + {} accepting threads, {} s per run, {} \
         round(s). Snapshots: median of {} runs. Bench time: {:.0} s.\n",
        sys::machine(),
        plan.threads,
        plan.threads,
        plan.storm_secs,
        plan.rounds,
        plan.runs,
        elapsed,
    );
    let table = render_table(&rows);
    println!("\n{header}\n{table}");
    let report = ctx.dir.join("report.md");
    std::fs::write(&report, format!("{header}\n{table}\n{details}"))
        .with_context(|| format!("writing {}", report.display()))?;
    eprintln!("bench: report written to {}", report.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1 and 2: the storm, with and without netmon

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    #[value(skip)]
    Baseline,
    Json,
    /// `watch --format json --no-fire-count`: what netmon's own perf count of the tracepoint
    /// costs is the difference to `json`.
    JsonNoFireCount,
    Text,
    Agent,
    /// The agent serving /metrics, scraped once a second during the storm.
    AgentMetrics,
    /// The agent sending an OTLP record per ended connection to a local sink.
    AgentOtlp,
    /// The agent with `netmon top` on a 160x48 terminal (tmux), looking at the storm's
    /// namespace and redrawing every second.
    AgentTop,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Baseline => "no tracer",
            Mode::Json => "`netmon watch --format json > file`",
            Mode::JsonNoFireCount => "`netmon watch --format json --no-fire-count > file`",
            Mode::Text => "`netmon watch > file`",
            Mode::Agent => "`netmon agent`",
            Mode::AgentMetrics => "`netmon agent --metrics-listen`, scraped every second",
            Mode::AgentOtlp => "`netmon agent --otlp-endpoint` (local sink)",
            Mode::AgentTop => "`netmon agent` + `netmon top` on a terminal",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Mode::Baseline => "none",
            Mode::Json => "watch json",
            Mode::JsonNoFireCount => "json, no fire count",
            Mode::Text => "watch text",
            Mode::Agent => "agent",
            Mode::AgentMetrics => "agent+metrics",
            Mode::AgentOtlp => "agent+otlp",
            Mode::AgentTop => "agent+top",
        }
    }

    /// The goal from issue 9, as a ratio to the baseline.
    fn target(self) -> f64 {
        match self {
            Mode::Baseline => 1.0,
            Mode::Json | Mode::JsonNoFireCount | Mode::Text => 0.90,
            Mode::Agent => 0.95,
            // Issue 13: within 0.02 of the agent without them.
            Mode::AgentMetrics | Mode::AgentOtlp => 0.93,
            // Issue 15: within 0.01 of the agent alone.
            Mode::AgentTop => 0.94,
        }
    }

    /// How far below the plain agent's ratio the issues allow an export's (13: metrics and
    /// OTLP within 0.02; 15: top within 0.01).
    fn within_agent(self) -> Option<f64> {
        match self {
            Mode::AgentMetrics | Mode::AgentOtlp => Some(0.02),
            Mode::AgentTop => Some(0.01),
            _ => None,
        }
    }

    fn is_agent(self) -> bool {
        matches!(
            self,
            Mode::Agent | Mode::AgentMetrics | Mode::AgentOtlp | Mode::AgentTop
        )
    }
}

/// What the storm generator printed.
#[derive(Clone, Debug, Default)]
struct StormOut {
    connections: u64,
    listeners: u64,
    secs: f64,
    errors: u64,
    unaccepted: u64,
}

impl StormOut {
    fn rate(&self) -> f64 {
        self.connections as f64 / self.secs.max(1e-9)
    }

    /// 10 transitions per connection, 2 per listener (see [`load::storm`]).
    fn expected_transitions(&self) -> u64 {
        10 * self.connections + 2 * self.listeners
    }
}

/// Transitions and losses found in one `watch --format json` output.
#[derive(Clone, Debug, Default)]
struct Capture {
    /// Transitions in the storm's namespace, by `old -> new`.
    by_kind: BTreeMap<String, u64>,
    /// Transitions of every namespace in the file.
    all_transitions: u64,
    transitions: u64,
    /// Loss totals from the stream's `loss` records and from stderr, by kind.
    stream_ring_full: u64,
    stream_recursion: u64,
    stderr_ring_full: u64,
    stderr_recursion: u64,
}

#[derive(Clone, Debug)]
struct StormRun {
    mode: Mode,
    out: StormOut,
    /// CPU the tracer used from the storm's start until it had drained.
    tracer_cpu: Option<sys::CpuTime>,
    /// IRQ-work interrupts (ring buffer wake-ups) during the storm, all CPUs.
    irq_work: u64,
    /// Sockets other than TIME-WAIT in the namespace right after the storm, and after waiting
    /// for them to close.
    unfinished: (usize, usize),
    capture: Option<Capture>,
    /// The kernel's counters of netmon's two programs, primary first.
    progs: Vec<sys::ProgInfo>,
    /// netmon's own in-kernel count of transitions that reached the ring reservation (its
    /// COUNTERS map, slot `Seen`), all namespaces.
    seen: Option<u64>,
    /// Its `Recovered` slot: events the fallback program took because the primary was busy.
    recovered: Option<u64>,
    /// Its `Fired` slot plus the first copy's recursion misses: every transition the kernel
    /// fired while netmon was attached, all namespaces.
    fired: Option<u64>,
    /// How busy the CPUs were (0..1, over 200 ms) when the run started, and how long the
    /// bench waited for them to calm down first: a neighbour's load or the purge of the last
    /// run's namespace shows here.
    busy_before: f64,
    idle_wait: Duration,
    /// The share of the CPUs other work used while the storm ran
    /// ([`sys::foreign_cpu_since`]).
    foreign_cpu: f64,
    /// CPU the OTLP sink (threads of this process) spent on the run's posts.
    sink_cpu: Option<Duration>,
}

/// Runs B T B T ... B with the traced modes in turn, `rounds` times each.
fn storm_rates(ctx: &Ctx, plan: &Plan) -> Result<Vec<StormRun>> {
    let sequence = storm_sequence(&plan.modes, plan.rounds);
    let mut runs = Vec::new();
    for (i, &mode) in sequence.iter().enumerate() {
        let run = storm_once(ctx, plan, mode)
            .with_context(|| format!("storm run {} ({})", i + 1, mode.label()))?;
        eprintln!(
            "bench: storm {:>2}/{}: {:<38} {:>8.0} conn/s{}, others {:.1} %",
            i + 1,
            sequence.len(),
            mode.label(),
            run.out.rate(),
            run.tracer_cpu
                .map(|c| format!(", tracer CPU {:.0} %", 100.0 * c.total() / run.out.secs))
                .unwrap_or_default(),
            100.0 * run.foreign_cpu
        );
        runs.push(run);
    }
    Ok(runs)
}

/// B T B T ... B, the traced modes in turn, `rounds` times, every other round in reverse
/// order; the agent's modes run back to back between two baselines (B A O B O A B ...). A
/// paired comparison of two agent modes (agent + OTLP against the agent) then compares
/// neighbouring runs, each mode first as often as second, so that a drift of the machine
/// during a round adds to one as much as to the other; and a round costs one baseline run
/// less than with a baseline between them, which the difference does not need
/// ([`paired_runs`]).
fn storm_sequence(modes: &[Mode], rounds: usize) -> Vec<Mode> {
    let mut sequence = vec![Mode::Baseline];
    for round in 0..rounds {
        let mut order = modes.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        let (agents, others): (Vec<Mode>, Vec<Mode>) = order.iter().partition(|m| m.is_agent());
        for mode in others {
            sequence.extend([mode, Mode::Baseline]);
        }
        if !agents.is_empty() {
            sequence.extend(agents);
            sequence.push(Mode::Baseline);
        }
    }
    sequence
}

fn storm_once(ctx: &Ctx, plan: &Plan, mode: Mode) -> Result<StormRun> {
    // Deleting the last run's namespace purges its TIME-WAIT sockets in a kernel worker: let
    // that (and a neighbour's burst) finish before this run measures, and say how long it
    // took and what was left.
    let waited = Instant::now();
    let busy_before = sys::wait_idle(Duration::from_secs(3));
    let idle_wait = waited.elapsed();
    let ns = ctx.netns("storm")?;
    let json = ctx.dir.join("watch.json");
    let errors = ctx.dir.join("tracer.err");
    let mut tracer = start_tracer(ctx, mode, &json, &errors)?;
    let exports = Exports::start(ctx, mode, &errors, &ns)?;
    let cpu0 = match &tracer {
        Some(t) => sys::cpu_time(t.pid())?,
        None => sys::CpuTime::default(),
    };
    let iwi0 = sys::irq_work_interrupts();
    let others0 = sys::process_cpu();
    let started = Instant::now();
    let out = run_storm(ctx, &ns, plan.threads, plan.storm_secs, plan.storm_max())?;
    let helpers = exports.as_ref().map(Exports::helpers).unwrap_or_default();
    let foreign_cpu = sys::foreign_cpu_since(&others0, started.elapsed().as_secs_f64(), &helpers);
    let irq_work = sys::irq_work_interrupts() - iwi0;
    // Every connection must have finished its 10 transitions before the capture stops, or
    // the count would miss them for a reason that is not netmon's.
    let unfinished = wait_closed(&ns, Duration::from_secs(10))?;
    let mut tracer_cpu = None;
    let mut progs = Vec::new();
    let mut seen = None;
    let mut recovered = None;
    let mut fired = None;
    let mut capture = None;
    if let Some(t) = &mut tracer {
        // The tracer reads the ring at least every 50 ms; give it time to write the rest.
        std::thread::sleep(Duration::from_millis(500));
        tracer_cpu = Some(sys::cpu_time(t.pid())?.since(cpu0));
        progs = netmon_progs(t.pid());
        // Counter 2 is `Counter::Seen` in netmon-common, 1 `Counter::Recovered`.
        let maps = sys::bpf_fds(t.pid()).map_ids;
        // netmon-common: counter `c` of program `p` is at `c * PROGRAM_SLOTS + p`.
        const PROGRAM_SLOTS: u32 = 8;
        let counter = |c: u32| -> Option<u64> {
            (0..PROGRAM_SLOTS)
                .map(|p| sys::percpu_map_sum(&maps, "COUNTERS", c * PROGRAM_SLOTS + p).ok())
                .sum()
        };
        seen = counter(2);
        recovered = counter(1);
        fired = counter(4).map(|f| f + progs.first().map_or(0, |p| p.recursion_misses));
        // SIGINT is Ctrl-C for watch: it drains, reports losses and flushes; the agent stops
        // on SIGTERM.
        let signal = if mode.is_agent() {
            libc::SIGTERM
        } else {
            libc::SIGINT
        };
        let status = t.stop(signal, Duration::from_secs(60))?;
        if !status.success() {
            bail!(
                "netmon exited with {status}: {}",
                std::fs::read_to_string(&errors).unwrap_or_default()
            );
        }
        if mode == Mode::Json {
            capture = Some(read_capture(&json, &errors, ns.inum)?);
        }
    }
    let mut sink_cpu = None;
    if let Some(e) = exports {
        let (what, n) = e.stop();
        eprintln!("bench: {}: {n} {what}", mode.short());
        if mode == Mode::AgentOtlp {
            sink_cpu = Some(Duration::from_nanos(
                OTLP_SINK_CPU_NS.swap(0, Ordering::Relaxed),
            ));
        }
    }
    // Hundreds of MB per run: keep none of it unless asked to.
    let keep = mode == Mode::Baseline || (plan.keep_json && mode == Mode::Json);
    if !keep {
        std::fs::remove_file(&json).ok();
    }
    drop(ns);
    Ok(StormRun {
        mode,
        out,
        tracer_cpu,
        irq_work,
        unfinished,
        capture,
        progs,
        seen,
        recovered,
        fired,
        busy_before,
        idle_wait,
        foreign_cpu,
        sink_cpu,
    })
}

/// Waits until the namespace holds nothing but TIME-WAIT sockets (which fire no transition);
/// returns how many others there were at first and at the end.
fn wait_closed(ns: &Netns, max: Duration) -> Result<(usize, usize)> {
    let deadline = Instant::now() + max;
    let count = || count_rows(ns.command("ss").args(["-Htan", "exclude", "time-wait"]));
    let first = count()?;
    let mut now = first;
    while now > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        now = count()?;
    }
    Ok((first, now))
}

/// Starts netmon for `mode` and waits until both programs are attached (agent: serving).
fn start_tracer(ctx: &Ctx, mode: Mode, json: &Path, errors: &Path) -> Result<Option<Proc>> {
    let mut cmd = Command::new(&ctx.netmon);
    let socket = ctx.dir.join("agent-storm.sock");
    match mode {
        Mode::Baseline => return Ok(None),
        Mode::Json => {
            cmd.args(["watch", "--format", "json"])
                .stdout(std::fs::File::create(json)?);
        }
        Mode::JsonNoFireCount => {
            cmd.args(["watch", "--format", "json", "--no-fire-count"])
                .stdout(std::fs::File::create(json)?);
        }
        Mode::Text => {
            // Text output is not parsed: /dev/null would skip the file writes, so a real file.
            cmd.arg("watch").stdout(std::fs::File::create(json)?);
        }
        Mode::Agent | Mode::AgentMetrics | Mode::AgentOtlp | Mode::AgentTop => {
            cmd.args(["agent", "--socket"])
                .arg(&socket)
                .stdout(Stdio::null());
        }
    }
    match mode {
        Mode::AgentMetrics => {
            cmd.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        Mode::AgentOtlp => {
            cmd.arg("--otlp-endpoint")
                .arg(format!("http://127.0.0.1:{}", otlp_sink_port()?));
        }
        _ => {}
    }
    cmd.stderr(std::fs::File::create(errors)?);
    let mut proc = Proc::spawn(&mut cmd, format!("netmon ({})", mode.label()))?;
    wait_attached(&mut proc, errors)?;
    if mode.is_agent() {
        wait_serving(&mut proc, &socket)?;
    }
    Ok(Some(proc))
}

/// What a storm run with metrics, OTLP export or top runs beside the agent: a scraper that
/// GETs /metrics once a second, the OTLP sink's post count, or `netmon top` in tmux with a
/// reader that counts the seconds its screen showed the agent's data.
struct Exports {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
    what: &'static str,
    /// The tmux server running `netmon top` (its socket), killed when the run ends.
    tmux: Option<PathBuf>,
}

impl Exports {
    /// Processes of this mode that are not the bench's children: the tmux server (it
    /// detaches) and with it `netmon top`.
    fn helpers(&self) -> Vec<u32> {
        let Some(tmux) = &self.tmux else {
            return Vec::new();
        };
        Command::new("tmux")
            .arg("-S")
            .arg(tmux)
            .args(["display-message", "-p", "#{pid}"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .into_iter()
            .collect()
    }
}

impl Exports {
    fn start(ctx: &Ctx, mode: Mode, errors: &Path, ns: &Netns) -> Result<Option<Self>> {
        let stop = Arc::new(AtomicBool::new(false));
        match mode {
            Mode::AgentTop => {
                let tmux = ctx.dir.join("top.tmux");
                let command = format!(
                    "NETMON_AGENT_SOCKET={} nsenter --net=/run/netns/{} {} top",
                    ctx.dir.join("agent-storm.sock").display(),
                    ns.name,
                    ctx.netmon.display(),
                );
                let status = Command::new("tmux")
                    .arg("-S")
                    .arg(&tmux)
                    .args(["new-session", "-d", "-x", "160", "-y", "48", &command])
                    .status()
                    .context("running tmux (`cargo xtask setup` installs it)")?;
                if !status.success() {
                    bail!("tmux new-session for `netmon top` failed ({status})");
                }
                let flag = stop.clone();
                let socket = tmux.clone();
                let thread = std::thread::spawn(move || {
                    let mut shown = 0;
                    while !flag.load(Ordering::Relaxed) {
                        let screen = Command::new("tmux")
                            .arg("-S")
                            .arg(&socket)
                            .args(["capture-pane", "-p"])
                            .output()
                            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                            .unwrap_or_default();
                        // top's header names its source once it has the agent's first answer.
                        if screen.contains("via agent") {
                            shown += 1;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    shown
                });
                Ok(Some(Self {
                    stop,
                    thread: Some(thread),
                    what: "seconds `netmon top` showed the agent's data",
                    tmux: Some(tmux),
                }))
            }
            Mode::AgentMetrics => {
                let addr = metrics_addr(errors)?;
                let flag = stop.clone();
                let thread = std::thread::spawn(move || {
                    let mut scrapes = 0;
                    while !flag.load(Ordering::Relaxed) {
                        if scrape(&addr).is_ok() {
                            scrapes += 1;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    scrapes
                });
                Ok(Some(Self {
                    stop,
                    thread: Some(thread),
                    what: "scrapes of /metrics",
                    tmux: None,
                }))
            }
            Mode::AgentOtlp => Ok(Some(Self {
                stop,
                thread: None,
                what: "OTLP posts received",
                tmux: None,
            })),
            _ => Ok(None),
        }
    }

    fn stop(mut self) -> (&'static str, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let n = match self.thread.take() {
            Some(t) => t.join().unwrap_or(0),
            None => OTLP_POSTS.swap(0, Ordering::Relaxed),
        };
        if let Some(tmux) = self.tmux.take() {
            // Ends the tmux server this run started (its own socket), and top with it.
            let _ = Command::new("tmux")
                .arg("-S")
                .arg(&tmux)
                .arg("kill-server")
                .status();
            std::fs::remove_file(&tmux).ok();
        }
        (self.what, n)
    }
}

/// The address the agent said it serves metrics on (in its stderr file).
fn metrics_addr(errors: &Path) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(errors).unwrap_or_default();
        if let Some(addr) = text
            .lines()
            .find_map(|l| l.split("metrics on http://").nth(1))
            .and_then(|rest| rest.strip_suffix("/metrics"))
        {
            return Ok(addr.to_owned());
        }
        if Instant::now() > deadline {
            bail!("the agent did not say where it serves metrics: {text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One scrape, the way Prometheus asks; the body is read and dropped.
fn scrape(addr: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: application/openmetrics-text;version=1.0.0\r\nConnection: close\r\n\r\n"
    )?;
    std::io::copy(
        &mut Read::by_ref(&mut s).take(16 << 20),
        &mut std::io::sink(),
    )?;
    Ok(())
}

static OTLP_POSTS: AtomicU64 = AtomicU64::new(0);
/// CPU the sink's threads spent reading and answering posts, in ns (per run: taken and
/// zeroed when the run ends).
static OTLP_SINK_CPU_NS: AtomicU64 = AtomicU64::new(0);

/// This thread's CPU time so far, in ns.
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write; the clock id is a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// A local OTLP/HTTP sink for the bench (started once): reads each post and answers 200.
///
/// It stands in for a collector that would normally run on another host, yet shares the
/// storm's 2 cores, so it is made as cheap as a reader can be: it never decodes the protobuf
/// (the integration tests' receiver, tests/src/otlp.rs, does) and discards each body in the
/// kernel (`recv` with `MSG_TRUNC`, which TCP takes as "drop this many bytes" without
/// copying them out), a few calls a post. What it still costs is measured (its threads' CPU
/// time) and reported beside the agent's.
fn otlp_sink_port() -> Result<u16> {
    static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    if let Some(p) = PORT.get() {
        return Ok(*p);
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the OTLP sink")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                use std::{
                    io::{BufRead, Write},
                    os::fd::AsRawFd,
                };
                // Small: the head is read through it, the body mostly not.
                let mut reader = std::io::BufReader::with_capacity(8 << 10, &stream);
                // Never written to (MSG_TRUNC), so its pages are never touched either.
                let mut discard = vec![0u8; 1 << 20];
                let mut line = String::new();
                loop {
                    // Thread CPU time: the wait for the next post counts nothing.
                    let cpu0 = thread_cpu_ns();
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0u64;
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let header = line.trim_end().to_ascii_lowercase();
                        if header.is_empty() {
                            break;
                        }
                        if let Some(v) = header.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    // The start of the body came with the head; the rest is dropped unread.
                    let buffered = reader
                        .buffer()
                        .len()
                        .min(usize::try_from(length).unwrap_or(usize::MAX));
                    reader.consume(buffered);
                    length -= buffered as u64;
                    while length > 0 {
                        let want = usize::try_from(length)
                            .unwrap_or(usize::MAX)
                            .min(discard.len());
                        // SAFETY: `discard` is valid for `want` bytes (with MSG_TRUNC a TCP
                        // socket does not even write them).
                        let n = unsafe {
                            libc::recv(
                                stream.as_raw_fd(),
                                discard.as_mut_ptr().cast(),
                                want,
                                libc::MSG_TRUNC,
                            )
                        };
                        if n < 0
                            && std::io::Error::last_os_error().kind()
                                == std::io::ErrorKind::Interrupted
                        {
                            continue;
                        }
                        if n <= 0 {
                            return;
                        }
                        length -= n as u64;
                    }
                    OTLP_POSTS.fetch_add(1, Ordering::Relaxed);
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                    if (&stream).write_all(ok).is_err() {
                        return;
                    }
                    OTLP_SINK_CPU_NS.fetch_add(thread_cpu_ns() - cpu0, Ordering::Relaxed);
                }
            });
        }
    });
    Ok(*PORT.get_or_init(|| port))
}

/// Until the process holds two BPF links (netmon attaches two programs).
fn wait_attached(proc: &mut Proc, errors: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sys::bpf_fds(proc.pid()).links < 2 {
        if let Some(status) = proc.exited()? {
            bail!(
                "netmon exited ({status}) before attaching: {}",
                std::fs::read_to_string(errors).unwrap_or_default().trim()
            );
        }
        if Instant::now() > deadline {
            bail!("netmon did not attach within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Until the agent accepts connections on its socket (it binds after its first full dump).
fn wait_serving(proc: &mut Proc, socket: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if proc.exited()?.is_some() || Instant::now() > deadline {
            bail!("the agent did not start serving {}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// netmon's two programs as the kernel counts them; the primary is attached first, so it has
/// the lower id (their names are both cut to 15 bytes: `netmon_set_stat`).
fn netmon_progs(pid: u32) -> Vec<sys::ProgInfo> {
    sys::bpf_fds(pid)
        .prog_ids
        .into_iter()
        .filter_map(|id| sys::prog_info(id).ok())
        .filter(|p| p.name.starts_with("netmon_set_stat"))
        .collect()
}

/// Runs the storm generator inside `ns` and parses its one line.
fn run_storm(ctx: &Ctx, ns: &Netns, threads: usize, secs: f64, max: u64) -> Result<StormOut> {
    let mut cmd = ns.command(&ctx.xtask);
    cmd.args(["bench-storm", "--threads", &threads.to_string()])
        .args(["--secs", &secs.to_string(), "--max", &max.to_string()])
        .stdout(Stdio::piped());
    let mut proc = Proc::spawn(&mut cmd, "the storm generator")?;
    let mut stdout = proc.child().stdout.take().context("storm stdout")?;
    // Bounded: the generator stops after `secs`, its acceptors 10 s after that at most.
    let status = proc.wait(Duration::from_secs_f64(secs + 60.0))?;
    let mut line = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut line)?;
    if !status.success() {
        bail!("the storm generator failed ({status})");
    }
    let field = |key: &str| -> Result<&str> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .with_context(|| format!("no {key} in the storm's output {line:?}"))
    };
    Ok(StormOut {
        connections: field("connections")?.parse()?,
        listeners: field("listeners")?.parse()?,
        secs: field("secs")?.parse()?,
        errors: field("errors")?.parse()?,
        unaccepted: field("unaccepted")?.parse()?,
    })
}

/// Counts the storm namespace's transitions in a JSON Lines file (docs/json.md) and the
/// losses reported in it and on stderr. Plain string matching: serde would take longer than
/// the storm for a million lines.
fn read_capture(json: &Path, errors: &Path, netns: u64) -> Result<Capture> {
    let mut cap = Capture::default();
    let needle = format!("\"netns\":{netns},");
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(json)?);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 {
        if line.starts_with("{\"type\":\"transition\"") {
            cap.all_transitions += 1;
            if line.contains(&needle) {
                cap.transitions += 1;
                let kind = format!(
                    "{} -> {}",
                    json_str(&line, "old_state").unwrap_or("?"),
                    json_str(&line, "new_state").unwrap_or("?")
                );
                *cap.by_kind.entry(kind).or_default() += 1;
            }
        } else if line.starts_with("{\"type\":\"loss\"") {
            let total = json_u64(&line, "total").unwrap_or(0);
            match json_str(&line, "kind") {
                Some("ring_full") => cap.stream_ring_full = cap.stream_ring_full.max(total),
                Some(_) => cap.stream_recursion = cap.stream_recursion.max(total),
                None => {}
            }
        }
        line.clear();
    }
    // "netmon: lost 5 transitions (ring_full), 9 since start": the kind is `LossKind`'s
    // Display text, the same name as in the JSON `loss` records.
    for l in std::fs::read_to_string(errors)?.lines() {
        let Some(rest) = l.strip_prefix("netmon: lost ") else {
            continue;
        };
        let total = rest
            .split(", ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        match rest.split_once('(').and_then(|(_, k)| k.split_once(')')) {
            Some(("ring_full", _)) => cap.stderr_ring_full = cap.stderr_ring_full.max(total),
            Some(("recursion", _)) => cap.stderr_recursion = cap.stderr_recursion.max(total),
            // Hints are not transitions.
            _ => {}
        }
    }
    Ok(cap)
}

pub(super) fn json_str<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

pub(super) fn json_u64(line: &str, key: &str) -> Option<u64> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits = line[start..].bytes().take_while(u8::is_ascii_digit).count();
    line[start..start + digits].parse().ok()
}

/// The mean rate of the nearest baseline runs before and after run `i`, if it has both.
fn local_baseline(runs: &[StormRun], i: usize) -> Option<f64> {
    let before = runs[..i].iter().rev().find(|r| r.mode == Mode::Baseline)?;
    let after = runs[i + 1..].iter().find(|r| r.mode == Mode::Baseline)?;
    Some((before.out.rate() + after.out.rate()) / 2.0)
}

/// Each traced run's rate over the mean of the nearest baseline runs on either side of it.
fn ratios(runs: &[StormRun], mode: Mode) -> Vec<f64> {
    (0..runs.len())
        .filter(|&i| runs[i].mode == mode)
        .filter_map(|i| Some(runs[i].out.rate() / local_baseline(runs, i)?))
        .collect()
}

/// The runs of `mode` and of the plain agent made between the same two baseline runs (one
/// round), with the mean rate of those two baselines.
fn paired_runs(runs: &[StormRun], mode: Mode) -> Vec<(&StormRun, &StormRun, f64)> {
    let mut pairs = Vec::new();
    let mut start: Option<usize> = None;
    for (i, r) in runs.iter().enumerate() {
        if r.mode != Mode::Baseline {
            continue;
        }
        if let Some(s) = start {
            let between = &runs[s + 1..i];
            let of = |m: Mode| between.iter().find(|r| r.mode == m);
            if let (Some(x), Some(a)) = (of(mode), of(Mode::Agent)) {
                let base = (runs[s].out.rate() + r.out.rate()) / 2.0;
                pairs.push((x, a, base));
            }
        }
        start = Some(i);
    }
    pairs
}

fn storm_rows(runs: &[StormRun], modes: &[Mode]) -> Vec<Row> {
    let base: Vec<f64> = runs
        .iter()
        .filter(|r| r.mode == Mode::Baseline)
        .map(|r| r.out.rate())
        .collect();
    let mut rows = vec![Row::new(
        "storm, no tracer (baseline)",
        format!(
            "{} conn/s (median of {}, {}..{})",
            thousands(median(&base)),
            base.len(),
            thousands(base.iter().copied().fold(f64::INFINITY, f64::min)),
            thousands(base.iter().copied().fold(0.0, f64::max)),
        ),
        "",
        None,
    )];
    for &mode in modes {
        let r = ratios(runs, mode);
        let rates: Vec<f64> = runs
            .iter()
            .filter(|x| x.mode == mode)
            .map(|x| x.out.rate())
            .collect();
        let m = median(&r);
        rows.push(Row::new(
            format!("storm under {}", mode.label()),
            format!(
                "{m:.3}x ({} conn/s; ratios {})",
                thousands(median(&rates)),
                r.iter()
                    .map(|x| format!("{x:.3}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            format!(">= {:.2}x", mode.target()),
            Some(m >= mode.target()),
        ));
    }
    // CPU of the tracer while the storm ran (until it had drained), and the wake-up interrupts
    // the programs raised: where the cost goes.
    let per = |mode: Mode, f: &dyn Fn(&StormRun) -> Option<f64>| -> f64 {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.mode == mode)
            .filter_map(f)
            .collect();
        median(&v)
    };
    let cpu_text: Vec<String> = modes
        .iter()
        .map(|&m| {
            let pct = |f: fn(sys::CpuTime) -> f64| {
                per(m, &|r| Some(100.0 * f(r.tracer_cpu?) / r.out.secs))
            };
            let us = per(m, &|r| {
                Some(1e6 * r.tracer_cpu?.total() / r.out.connections.max(1) as f64)
            });
            format!(
                "{}: {:.0} % (user {:.0}, sys {:.0}; {us:.2} µs/conn)",
                m.short(),
                pct(sys::CpuTime::total),
                pct(|c| c.user),
                pct(|c| c.system),
            )
        })
        .collect();
    rows.push(Row::new(
        "tracer CPU (utime+stime) during the storm, % of one core",
        cpu_text.join("; "),
        "",
        None,
    ));
    let iwi: Vec<String> = std::iter::once(Mode::Baseline)
        .chain(modes.iter().copied())
        .map(|m| {
            let n = per(m, &|r| {
                Some(r.irq_work as f64 / r.out.connections.max(1) as f64)
            });
            format!("{}: {n:.2}", m.short())
        })
        .collect();
    rows.push(Row::new(
        "IRQ-work interrupts (ring wake-ups) per connection",
        iwi.join("; "),
        "",
        None,
    ));
    let timed: Vec<String> = modes
        .iter()
        .filter_map(|&m| {
            let ns = |i: usize| {
                per(m, &|r| {
                    let p = r.progs.get(i)?;
                    (p.run_cnt > 0).then(|| p.run_time_ns as f64 / p.run_cnt as f64)
                })
            };
            let (primary, fallback) = (ns(0), ns(1));
            primary
                .is_finite()
                .then(|| format!("{}: {primary:.0} / {fallback:.0}", m.short()))
        })
        .collect();
    if !timed.is_empty() {
        rows.push(Row::new(
            "BPF ns per program run, primary / fallback (--bpf-stats)",
            timed.join("; "),
            "",
            None,
        ));
    }
    let odd: Vec<String> = runs
        .iter()
        .filter(|r| r.out.errors > 0 || r.out.unaccepted > 0 || r.unfinished.1 > 0)
        .map(|r| {
            format!(
                "{}: {} errors, {} unaccepted, {} never closed",
                r.mode.short(),
                r.out.errors,
                r.out.unaccepted,
                r.unfinished.1
            )
        })
        .collect();
    if !odd.is_empty() {
        rows.push(Row::new(
            "storm connect errors / connections never accepted / sockets never closed",
            odd.join("; "),
            "none",
            odd_verdict(
                &runs
                    .iter()
                    .map(|r| (r.mode, r.out.errors + r.out.unaccepted, r.unfinished.1))
                    .collect::<Vec<_>>(),
            ),
        ));
    }
    rows
}

/// Whether the storm's odd runs ((mode, connect errors + unaccepted, sockets never closed))
/// fail the bench: errors always do; a socket left open 10 s after the storm only when no run
/// without a tracer left one too. Without any tracer such a socket is the storm's own TCP
/// (2026-12-03: 6 of 136 runs of a quiet bench still had one 10 s after the storm, 3 of
/// them without a tracer; right after a storm such sockets were server ends in LAST-ACK
/// retransmitting their FIN to a peer already a FIN-WAIT-2 timewait socket), not something
/// netmon did; the row still shows every one.
fn odd_verdict(runs: &[(Mode, u64, usize)]) -> Option<bool> {
    if runs.iter().any(|&(_, errors, _)| errors > 0) {
        return Some(false);
    }
    let baseline_too = runs
        .iter()
        .any(|&(mode, _, unclosed)| mode == Mode::Baseline && unclosed > 0);
    if baseline_too { None } else { Some(false) }
}

/// Mean, median and the half-width of a 95 % confidence interval of the mean (Student's t)
/// of a few paired differences.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spread {
    n: usize,
    mean: f64,
    median: f64,
    /// Standard deviation of one difference.
    sd: f64,
    half_width: f64,
}

impl Spread {
    fn of(xs: &[f64]) -> Self {
        // Two-sided 95 % quantiles of Student's t for 1..=20 degrees of freedom.
        const T95: [f64; 20] = [
            12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
            2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        ];
        let n = xs.len();
        let mean = xs.iter().sum::<f64>() / n.max(1) as f64;
        let sd = if n < 2 {
            f64::INFINITY
        } else {
            (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        };
        let half_width = if n < 2 {
            f64::INFINITY
        } else {
            // Past the table: 1.96 + 2.5 / df is at or above the quantile (21: 2.079 against
            // 2.080 rounded, 30: 2.043 against 2.042, 60: 2.002 against 2.000).
            let t = T95
                .get(n - 2)
                .copied()
                .unwrap_or(1.96 + 2.5 / (n - 1) as f64);
            t * sd / (n as f64).sqrt()
        };
        Self {
            n,
            mean,
            median: median(xs),
            sd,
            half_width,
        }
    }

    /// About how many rounds would put the interval on one side of `-tolerance`, if the
    /// differences kept this mean and spread (t taken as 2).
    fn rounds_to_tell(&self, tolerance: f64) -> Option<usize> {
        let n = (2.0 * self.sd / (self.mean + tolerance).abs())
            .powi(2)
            .ceil();
        (n.is_finite() && n < 1e6).then_some(n as usize)
    }

    /// Whether the whole interval lies above `-tolerance` (met), wholly below it (not met),
    /// or straddles it (cannot tell from these rounds).
    fn within(&self, tolerance: f64) -> Option<bool> {
        if self.mean - self.half_width >= -tolerance {
            Some(true)
        } else if self.mean + self.half_width < -tolerance {
            Some(false)
        } else {
            None
        }
    }
}

/// Each agent + export mode against the plain agent, round by round: the difference of the
/// two storm ratios of a round (both over the round's two baselines), and of the agent's
/// CPU per connection. A round's two runs are neighbours and take turns going first
/// ([`storm_sequence`]), so these differences carry less of the machine's drift than the
/// ratios themselves do; rounds that other people's work disturbed ([`FOREIGN_MAX`]) are
/// left out, and said.
fn paired_rows(runs: &[StormRun], modes: &[Mode]) -> Vec<Row> {
    if !modes.contains(&Mode::Agent) {
        return Vec::new();
    }
    let cpu_per_conn =
        |r: &StormRun| Some(1e6 * r.tracer_cpu?.total() / r.out.connections.max(1) as f64);
    let mut rows = Vec::new();
    for &mode in modes {
        let Some(tolerance) = mode.within_agent() else {
            continue;
        };
        let all = paired_runs(runs, mode);
        if all.is_empty() {
            continue;
        }
        // Both over the same baseline: the baselines' own spread does not enter the
        // difference.
        let diff =
            |(x, a, base): &(&StormRun, &StormRun, f64)| (x.out.rate() - a.out.rate()) / base;
        let pairs: Vec<_> = all
            .iter()
            .filter(|(x, a, _)| x.foreign_cpu <= FOREIGN_MAX && a.foreign_cpu <= FOREIGN_MAX)
            .copied()
            .collect();
        let d: Vec<f64> = pairs.iter().map(diff).collect();
        let s = Spread::of(&d);
        let mut disturbed = String::new();
        if pairs.len() < all.len() {
            let everything = Spread::of(&all.iter().map(diff).collect::<Vec<_>>());
            let _ = write!(
                disturbed,
                "; {} of {} rounds left out: other work took more than {:.0} % of the CPUs \
                 during one of their runs (all rounds: {:+.3} ± {:.3})",
                all.len() - pairs.len(),
                all.len(),
                100.0 * FOREIGN_MAX,
                everything.mean,
                everything.half_width
            );
        }
        let cpu_d: Vec<f64> = pairs
            .iter()
            .filter_map(|(x, a, _)| Some(cpu_per_conn(x)? - cpu_per_conn(a)?))
            .collect();
        let c = Spread::of(&cpu_d);
        let verdict = match s.within(tolerance) {
            Some(true) => "within".to_owned(),
            Some(false) => "not within".to_owned(),
            None => match s.rounds_to_tell(tolerance) {
                Some(n) => format!(
                    "cannot tell: the interval spans the bound; at this mean and spread about \
                     {n} rounds would tell"
                ),
                None => "cannot tell: the interval spans the bound".to_owned(),
            },
        };
        let mut sink = String::new();
        if mode == Mode::AgentOtlp {
            let per: Vec<f64> = runs
                .iter()
                .filter(|r| r.mode == mode)
                .filter_map(|r| {
                    Some(1e6 * r.sink_cpu?.as_secs_f64() / r.out.connections.max(1) as f64)
                })
                .collect();
            let _ = write!(
                sink,
                "; the sink's own CPU {:.2} µs/conn (median)",
                median(&per)
            );
        }
        rows.push(Row::new(
            format!("storm ratio of {} minus the agent's, paired by round", mode.short()),
            format!(
                "{:+.3} ± {:.3} (mean, 95 % CI over {} rounds; median {:+.3}; rounds {}{disturbed}): \
                 {verdict}. Agent CPU {:+.2} ± {:.2} µs/conn{sink}",
                s.mean,
                s.half_width,
                s.n,
                s.median,
                d.iter()
                    .map(|x| format!("{x:+.3}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                c.mean,
                c.half_width,
            ),
            format!(">= -{tolerance:.2}"),
            s.within(tolerance),
        ));
        if mode == Mode::AgentOtlp {
            rows.extend(cpu_estimate_row(&pairs, mode, tolerance));
        }
    }
    rows
}

/// The ratio difference the CPU figures predict, round by round: on CPUs the storm keeps
/// saturated, each µs of extra CPU per connection comes out of the storm, so at the traced
/// run's rate R on N CPUs the ratio drops by the agent's ratio times extra × R / N. The extra
/// is the agent's CPU above the plain agent's plus the sink's (for OTLP; the other modes'
/// helpers, tmux or the scraper, are not measured). Cache effects are not in it; it is an
/// estimate whose spread is that of the CPU figures, far steadier than the rates' (README,
/// "Performance"; the runs that showed it in docs/performance.md).
fn cpu_estimate_row(
    pairs: &[(&StormRun, &StormRun, f64)],
    mode: Mode,
    tolerance: f64,
) -> Option<Row> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let per_conn = |r: &StormRun, cpu: Option<Duration>| {
        Some(cpu?.as_secs_f64() / r.out.connections.max(1) as f64)
    };
    let est: Vec<f64> = pairs
        .iter()
        .filter_map(|&(m, a, base)| {
            let ratio_a = a.out.rate() / base;
            let cpu = |r: &StormRun| {
                per_conn(r, r.tracer_cpu.map(|c| Duration::from_secs_f64(c.total())))
            };
            let extra = cpu(m)? - cpu(a)? + per_conn(m, m.sink_cpu).unwrap_or(0.0);
            Some(-ratio_a * extra * m.out.rate() / cpus)
        })
        .collect();
    if est.is_empty() {
        return None;
    }
    let e = Spread::of(&est);
    let verdict = match e.within(tolerance) {
        Some(true) => "within",
        Some(false) => "not within",
        None => "cannot tell",
    };
    Some(Row::new(
        format!(
            "the same predicted from CPU ({} and its sink)",
            mode.short()
        ),
        format!(
            "{:+.3} ± {:.3} (mean, 95 % CI over {} rounds; rounds {}): {verdict}; an estimate \
             (extra CPU per connection × rate / {cpus} CPUs × the agent's ratio), not a rate \
             measured",
            e.mean,
            e.half_width,
            e.n,
            est.iter()
                .map(|x| format!("{x:+.3}"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        format!(">= -{tolerance:.2}"),
        None,
    ))
}

fn capture_rows(runs: &[StormRun]) -> Vec<Row> {
    let json: Vec<&StormRun> = runs.iter().filter(|r| r.mode == Mode::Json).collect();
    if json.is_empty() {
        return Vec::new();
    }
    let (mut got, mut want) = (0u64, 0u64);
    let (mut ring, mut recursion) = (0u64, 0u64);
    let (mut primary, mut fallback) = (0u64, 0u64);
    let (mut written, mut fired) = (0u64, 0u64);
    for r in &json {
        let cap = r.capture.clone().unwrap_or_default();
        got += cap.transitions;
        want += r.out.expected_transitions();
        written += cap.all_transitions;
        fired += r.fired.unwrap_or(0);
        ring += cap.stream_ring_full.max(cap.stderr_ring_full);
        recursion += cap.stream_recursion.max(cap.stderr_recursion);
        primary += r.progs.first().map_or(0, |p| p.recursion_misses);
        fallback += r.progs.get(1).map_or(0, |p| p.recursion_misses);
    }
    let ratio = got as f64 / want.max(1) as f64;
    let fired_ratio = written as f64 / fired.max(1) as f64;
    vec![
        Row::new(
            "transitions written / fired by the kernel (JSON runs, all namespaces)",
            format!("{fired_ratio:.4} ({written} / {fired})"),
            "1.0000",
            Some(written == fired),
        ),
        Row::new(
            "storm transitions written / 10 per connection (JSON runs, storm netns)",
            format!(
                "{ratio:.4} ({got} / {want}; under orphan pressure the kernel may close a \
                 connection in fewer transitions)"
            ),
            "",
            None,
        ),
        Row::new(
            "losses netmon reported: ring full / recursion (stream and stderr)",
            format!("{ring} / {recursion}"),
            "0 / 0",
            Some(ring == 0 && recursion == 0),
        ),
        Row::new(
            "kernel `recursion_misses`: netmon_set_state / _fallback (JSON runs, all netns)",
            format!("{primary} / {fallback} (the fallback takes the primary's misses)"),
            "",
            None,
        ),
    ]
}

fn storm_details(runs: &[StormRun]) -> String {
    let mut s = String::from("\n## Storm runs, in order\n\n");
    for (i, r) in runs.iter().enumerate() {
        let _ = write!(
            s,
            "{:>2}. {:<38} {:>8.0} conn/s, {} connections in {:.2} s",
            i + 1,
            r.mode.label(),
            r.out.rate(),
            r.out.connections,
            r.out.secs
        );
        if let Some(c) = r.tracer_cpu {
            let _ = write!(
                s,
                ", tracer CPU {:.2} s (user {:.2}, sys {:.2})",
                c.total(),
                c.user,
                c.system
            );
        }
        let _ = write!(s, ", {} IRQ-work interrupts", r.irq_work);
        let _ = write!(
            s,
            "; CPUs {:.0} % busy at the start, after waiting {:.1} s; other work took {:.1} % \
             of them during the storm",
            100.0 * r.busy_before,
            r.idle_wait.as_secs_f64(),
            100.0 * r.foreign_cpu
        );
        if let Some(c) = r.sink_cpu {
            let _ = write!(s, ", OTLP sink CPU {:.3} s", c.as_secs_f64());
        }
        if r.unfinished != (0, 0) {
            let _ = write!(
                s,
                ", {} sockets still open after the storm ({} after waiting)",
                r.unfinished.0, r.unfinished.1
            );
        }
        if let Some(cap) = &r.capture {
            let _ = write!(
                s,
                ", captured {} of {}, netmon reported {} ring-full and {} recursion losses",
                cap.transitions,
                r.out.expected_transitions(),
                cap.stream_ring_full.max(cap.stderr_ring_full),
                cap.stream_recursion.max(cap.stderr_recursion),
            );
            if let Some(seen) = r.seen {
                let _ = write!(
                    s,
                    "; all namespaces: {} transitions in the file, {seen} counted `Seen` in \
                     the kernel",
                    cap.all_transitions
                );
            }
        }
        if !r.progs.is_empty() {
            let misses: Vec<String> = r
                .progs
                .iter()
                .map(|p| p.recursion_misses.to_string())
                .collect();
            let _ = write!(s, ", recursion_misses {}", misses.join("/"));
            if let Some(n) = r.recovered {
                let _ = write!(s, ", recovered by the fallback {n}");
            }
        }
        s.push('\n');
    }
    for (i, r) in runs.iter().enumerate() {
        let Some(cap) = &r.capture else { continue };
        let _ = writeln!(
            s,
            "\nTransitions of run {} in the storm's namespace, by kind:\n",
            i + 1
        );
        for (kind, n) in &cap.by_kind {
            let _ = writeln!(s, "    {kind:<28} {n}");
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// 3 and 4: snapshots and agent memory

/// Tools timed at each socket count: (label, program, args, agent socket to use).
fn snapshot_tools(ctx: &Ctx, agent_socket: &Path) -> Vec<Tool> {
    let netmon = ctx.netmon.to_string_lossy().into_owned();
    let agent = Some(agent_socket.to_path_buf());
    // A path nobody serves: `netmon snapshot` falls back to its own one-shot dump.
    let none = Some(PathBuf::from("/nonexistent/netmon-bench.sock"));
    let tool = |label: &str, program: &str, args: &[&str], socket: &Option<PathBuf>| Tool {
        label: label.into(),
        program: program.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        socket: socket.clone(),
    };
    vec![
        tool(
            "`netmon snapshot -tan` (agent)",
            &netmon,
            &["snapshot", "-tan"],
            &agent,
        ),
        tool(
            "`netmon snapshot -tan` (no agent)",
            &netmon,
            &["snapshot", "-tan"],
            &none,
        ),
        tool(
            "`netmon snapshot -tanp` (agent)",
            &netmon,
            &["snapshot", "-tanp"],
            &agent,
        ),
        tool("`ss -tan`", "ss", &["-tan"], &None),
        tool("`ss -tanp`", "ss", &["-tanp"], &None),
        tool("`netstat -tan`", "netstat", &["-tan"], &None),
        tool("`netstat -tanp`", "netstat", &["-tanp"], &None),
    ]
}

struct Tool {
    label: String,
    program: String,
    args: Vec<String>,
    socket: Option<PathBuf>,
}

struct SizeResult {
    /// Sockets `ss -tan` lists in the namespace.
    sockets: usize,
    /// Rows `netmon snapshot -tan` printed through the agent (should equal `sockets`).
    netmon_rows: usize,
    /// Median wall time per tool, `None` when the tool failed (e.g. an option it lacks).
    times: Vec<Option<Duration>>,
    /// Agent CPU per request while its snapshots were timed (it dumps, reconciles, renders).
    agent_cpu_per_request: Option<Duration>,
    /// Agent VmRSS once the sockets were there, before any snapshot at this count.
    agent_rss_before_kib: u64,
}

struct AgentMemory {
    live_sockets: usize,
    closed_rows: usize,
    rss_kib: u64,
    hwm_kib: u64,
    /// Where the resident memory is: heap and stacks, file mappings, shared memory (the ring).
    anon_kib: u64,
    file_kib: u64,
    shmem_kib: u64,
}

struct SnapshotResults {
    labels: Vec<String>,
    sizes: Vec<SizeResult>,
    memory: Option<AgentMemory>,
    /// Why a tool had no time, the first time it failed.
    failures: Vec<String>,
}

/// One namespace, an agent, and holder processes added until each socket count is reached;
/// then a storm fills the agent's closed history and its memory is read.
fn snapshot_times(ctx: &Ctx, plan: &Plan) -> Result<SnapshotResults> {
    let ns = ctx.netns("snap")?;
    let socket = ctx.dir.join("agent-snap.sock");
    let errors = ctx.dir.join("agent-snap.err");
    let mut cmd = Command::new(&ctx.netmon);
    cmd.args(["agent", "--socket"])
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errors)?);
    let mut agent = Proc::spawn(&mut cmd, "netmon agent")?;
    wait_attached(&mut agent, &errors)?;
    wait_serving(&mut agent, &socket)?;

    let tools = snapshot_tools(ctx, &socket);
    let mut results = SnapshotResults {
        labels: tools.iter().map(|t| t.label.clone()).collect(),
        sizes: Vec::new(),
        memory: None,
        failures: Vec::new(),
    };
    let mut holders: Vec<Holder> = Vec::new();
    let mut held: u32 = 0;
    let mut sizes = plan.sizes.clone();
    sizes.sort_unstable();
    for &size in &sizes {
        while held < size {
            let conns = ((size - held).saturating_sub(1) / 2).min(CONNS_PER_HOLDER);
            let h = Holder::start(ctx, &ns, conns, holders.len())?;
            held += h.sockets;
            holders.push(h);
        }
        // Let the agent apply the events of the new connections.
        std::thread::sleep(Duration::from_millis(500));
        let sockets = count_rows(ns.command("ss").args(["-tanH"]))?;
        let netmon_rows = count_rows(
            ns.command(&ctx.netmon)
                .args(["snapshot", "-tanH"])
                .env("NETMON_AGENT_SOCKET", &socket),
        )?;
        let agent_rss_before_kib = sys::vm_kib(agent.pid(), "VmRSS")?;
        let mut agent_cpu_per_request = None;
        let mut times = Vec::new();
        for tool in &tools {
            let cpu0 = sys::cpu_time(agent.pid())?;
            let t = time_tool(&ns, tool, plan.runs)?;
            if tool.socket.as_deref() == Some(socket.as_path()) && t.is_ok() {
                // The warm-up run asked the agent too.
                let cpu = sys::cpu_time(agent.pid())?.since(cpu0).total();
                agent_cpu_per_request
                    .get_or_insert(Duration::from_secs_f64(cpu / (plan.runs + 1) as f64));
            }
            if let Err(why) = &t
                && !results.failures.iter().any(|f| f.starts_with(&tool.label))
            {
                results.failures.push(format!("{}: {why}", tool.label));
            }
            eprintln!(
                "bench: {sockets:>6} sockets: {:<36} {}",
                tool.label,
                t.as_ref()
                    .map_or_else(|_| "n/a".into(), |d| format!("{:.1} ms", ms(*d)))
            );
            times.push(t.ok());
        }
        results.sizes.push(SizeResult {
            sockets,
            netmon_rows,
            times,
            agent_cpu_per_request,
            agent_rss_before_kib,
        });
    }
    results.memory = Some(agent_memory(ctx, plan, &ns, &agent, &socket)?);
    drop(holders);
    drop(agent);
    drop(ns);
    Ok(results)
}

/// How long one run of a tool may take: past it the tool is stopped and its figure is n/a
/// (`ss -tanp` walks every process's fds: minutes at a million sockets).
pub(crate) const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Median wall time of `runs` runs (after one warm-up run) of a tool inside `ns`, output to
/// /dev/null; the inner error is the tool's own complaint when it fails.
fn time_tool(
    ns: &Netns,
    tool: &Tool,
    runs: usize,
) -> Result<std::result::Result<Duration, String>> {
    let run = || -> Result<std::result::Result<Duration, String>> {
        let mut cmd = ns.command(&tool.program);
        cmd.args(&tool.args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(s) = &tool.socket {
            cmd.env("NETMON_AGENT_SOCKET", s);
        }
        let t0 = Instant::now();
        let mut proc = Proc::spawn(&mut cmd, tool.label.clone())?;
        let status = match proc.wait(TOOL_TIMEOUT) {
            Ok(status) => status,
            // Stopped by PID when `proc` drops.
            Err(_) if proc.exited()?.is_none() => {
                return Ok(Err(format!("timed out after {} s", TOOL_TIMEOUT.as_secs())));
            }
            Err(e) => return Err(e),
        };
        let elapsed = t0.elapsed();
        if status.success() {
            return Ok(Ok(elapsed));
        }
        let mut err = String::new();
        if let Some(mut e) = proc.child().stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err).ok();
        }
        Ok(Err(err
            .lines()
            .next()
            .unwrap_or("failed")
            .trim()
            .to_owned()))
    };
    // The warm-up also tells whether the tool can do it at all (`-p` may not exist); with
    // no timed runs asked for, its time is the figure.
    let warm = run()?;
    if warm.is_err() || runs == 0 {
        return Ok(warm);
    }
    let mut times = Vec::new();
    for _ in 0..runs {
        match run()? {
            Ok(d) => times.push(d.as_secs_f64()),
            Err(why) => bail!("{} failed after succeeding once: {why}", tool.label),
        }
    }
    Ok(Ok(Duration::from_secs_f64(median(&times))))
}

/// Lines a command prints (run inside a namespace, without a header).
fn count_rows(cmd: &mut Command) -> Result<usize> {
    let out = cmd.stderr(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(out.stdout.iter().filter(|&&b| b == b'\n').count())
}

/// A process holding connections open in the namespace (see [`load::hold`]).
struct Holder {
    _proc: Proc,
    sockets: u32,
    /// Its listener's: `dport = :PORT` selects its client sockets.
    port: u16,
}

impl Holder {
    fn start(ctx: &Ctx, ns: &Netns, conns: u32, id: usize) -> Result<Self> {
        let mut cmd = ns.command(&ctx.xtask);
        cmd.args(["bench-hold", "--conns", &conns.to_string()])
            .args(["--id", &id.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn(&mut cmd, "a socket holder")?;
        let stdout = proc.child().stdout.take().context("holder stdout")?;
        // Read "ready N" on a thread so a stuck holder cannot hang the bench.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .context("a socket holder did not get ready within 60 s")?;
        let mut said = line.strip_prefix("ready ").unwrap_or("").split_whitespace();
        let (Some(sockets), Some(port)) = (
            said.next().and_then(|n| n.parse().ok()),
            said.next().and_then(|n| n.parse().ok()),
        ) else {
            bail!("a socket holder failed (said {line:?})");
        };
        Ok(Self {
            _proc: proc,
            sockets,
            port,
        })
    }
}

/// Fills the agent's closed history with a storm in the snapshot namespace (its live sockets
/// stay), then reads the agent's resident memory.
fn agent_memory(
    ctx: &Ctx,
    plan: &Plan,
    ns: &Netns,
    agent: &Proc,
    socket: &Path,
) -> Result<AgentMemory> {
    let live_sockets = count_rows(ns.command("ss").args(["-tanH"]))?;
    run_storm(ctx, ns, plan.threads, 30.0, HISTORY_FILL_CONNS)?;
    // Let the agent drain the ring and settle.
    std::thread::sleep(Duration::from_secs(1));
    let closed_rows = count_rows(
        ns.command(&ctx.netmon)
            .args(["snapshot", "--closed", "-H"])
            .env("NETMON_AGENT_SOCKET", socket),
    )?;
    Ok(AgentMemory {
        live_sockets,
        closed_rows,
        rss_kib: sys::vm_kib(agent.pid(), "VmRSS")?,
        hwm_kib: sys::vm_kib(agent.pid(), "VmHWM")?,
        anon_kib: sys::vm_kib(agent.pid(), "RssAnon")?,
        file_kib: sys::vm_kib(agent.pid(), "RssFile")?,
        shmem_kib: sys::vm_kib(agent.pid(), "RssShmem")?,
    })
}

fn snapshot_rows(s: &SnapshotResults) -> Vec<Row> {
    let per_size = |f: &dyn Fn(&SizeResult) -> String| -> String {
        s.sizes
            .iter()
            .map(|z| format!("{}: {}", short_count(z.sockets), f(z)))
            .collect::<Vec<_>>()
            .join(" · ")
    };
    let mut rows = Vec::new();
    for (i, label) in s.labels.iter().enumerate() {
        rows.push(Row::new(
            format!("snapshot {label}"),
            per_size(&|z| z.times[i].map_or("n/a".into(), |d| format!("{:.1} ms", ms(d)))),
            "",
            None,
        ));
    }
    let index = |label: &str| s.labels.iter().position(|l| l.contains(label));
    let ratio = |num: &str, den: &str| {
        let (n, d) = (index(num), index(den));
        move |z: &SizeResult| -> Option<f64> { Some(ms(z.times[n?]?) / ms(z.times[d?]?).max(1e-9)) }
    };
    let agent_vs_ss = ratio("-tan` (agent)", "`ss -tan`");
    let largest_ok = s.sizes.last().and_then(&agent_vs_ss).map(|r| r <= 0.25);
    rows.push(Row::new(
        "ratio netmon snapshot (agent) / `ss -tan`",
        per_size(&|z| agent_vs_ss(z).map_or("n/a".into(), |r| format!("{r:.2}x"))),
        "<= 0.25x at 100k",
        largest_ok,
    ));
    let p = ratio("-tanp` (agent)", "`ss -tanp`");
    rows.push(Row::new(
        "ratio netmon snapshot -p (agent) / `ss -tanp`",
        per_size(&|z| p(z).map_or("n/a".into(), |r| format!("{r:.2}x"))),
        "",
        None,
    ));
    let mismatched: Vec<String> = s
        .sizes
        .iter()
        .filter(|z| z.netmon_rows != z.sockets)
        .map(|z| format!("{} rows for {} sockets", z.netmon_rows, z.sockets))
        .collect();
    if !mismatched.is_empty() {
        rows.push(Row::new(
            "netmon snapshot rows = ss rows",
            mismatched.join("; "),
            "equal",
            Some(false),
        ));
    }
    if let Some(m) = &s.memory {
        let mb = m.rss_kib as f64 * 1024.0 / 1e6;
        rows.push(Row::new(
            "agent VmRSS, live sockets + closed history",
            format!(
                "{mb:.1} MB (peak {:.1}; anon {:.1}, file {:.1}, shmem {:.1}) with {} live \
                 sockets in the namespace and {} closed-history rows",
                m.hwm_kib as f64 * 1024.0 / 1e6,
                m.anon_kib as f64 * 1024.0 / 1e6,
                m.file_kib as f64 * 1024.0 / 1e6,
                m.shmem_kib as f64 * 1024.0 / 1e6,
                m.live_sockets,
                m.closed_rows
            ),
            "<= 100 MB",
            Some(mb <= 100.0),
        ));
    }
    rows
}

fn snapshot_details(s: &SnapshotResults) -> String {
    let mut out = String::from("\n## Agent during the snapshot timings\n\n");
    for z in &s.sizes {
        let _ = writeln!(
            out,
            "- {} sockets: agent VmRSS {:.1} MB before its first snapshot; agent CPU per \
             `snapshot -tan` request {}",
            z.sockets,
            z.agent_rss_before_kib as f64 * 1024.0 / 1e6,
            z.agent_cpu_per_request
                .map_or("n/a".into(), |d| format!("{:.1} ms", ms(d)))
        );
    }
    if !s.failures.is_empty() {
        out.push_str("\n## Tools that could not run (n/a)\n\n");
        for f in &s.failures {
            let _ = writeln!(out, "- {f}");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The table

struct Row {
    what: String,
    result: String,
    target: String,
    met: Option<bool>,
}

impl Row {
    fn new(
        what: impl Into<String>,
        result: impl Into<String>,
        target: impl Into<String>,
        met: Option<bool>,
    ) -> Self {
        Self {
            what: what.into(),
            result: result.into(),
            target: target.into(),
            met,
        }
    }
}

/// A Markdown table, padded so it also reads well in a terminal.
fn render_table(rows: &[Row]) -> String {
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                r.what.clone(),
                r.result.clone(),
                r.target.clone(),
                match r.met {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => String::new(),
                },
            ]
        })
        .collect();
    let head = ["measurement", "result", "target", "met"].map(String::from);
    let mut widths = head.clone().map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String; 4]| {
        let padded: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(&head);
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
    let _ = writeln!(out, "| {} |", rule.join(" | "));
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// 41234.5 -> "41,235".
fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 99_999 -> "100k", 999 -> "999".
fn short_count(n: usize) -> String {
    if n >= 1000 {
        format!("{}k", (n as f64 / 1000.0).round())
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_are_found_by_plain_matching() {
        let line = r#"{"type":"transition","netns":4026532,"old_state":"FIN-WAIT-1","new_state":"FIN-WAIT-2","total":17}"#;
        assert_eq!(json_str(line, "old_state"), Some("FIN-WAIT-1"));
        assert_eq!(json_str(line, "new_state"), Some("FIN-WAIT-2"));
        assert_eq!(json_u64(line, "total"), Some(17));
        assert_eq!(json_u64(line, "missing"), None);
    }

    fn run(mode: Mode, conns: u64) -> StormRun {
        StormRun {
            mode,
            out: StormOut {
                connections: conns,
                secs: 1.0,
                ..Default::default()
            },
            tracer_cpu: None,
            irq_work: 0,
            unfinished: (0, 0),
            capture: None,
            progs: Vec::new(),
            seen: None,
            recovered: None,
            fired: None,
            busy_before: 0.0,
            idle_wait: Duration::ZERO,
            foreign_cpu: 0.0,
            sink_cpu: None,
        }
    }

    #[test]
    fn traced_runs_are_divided_by_their_neighbours() {
        let runs = [
            run(Mode::Baseline, 100),
            run(Mode::Json, 90),
            run(Mode::Baseline, 80),
            run(Mode::Agent, 76),
            run(Mode::Baseline, 80),
        ];
        assert_eq!(ratios(&runs, Mode::Json), vec![1.0]);
        assert_eq!(ratios(&runs, Mode::Agent), vec![0.95]);
    }

    #[test]
    fn runs_back_to_back_share_their_rounds_baselines() {
        use Mode::{Agent as A, AgentOtlp as O, Baseline as B};
        let runs = [
            run(B, 100),
            run(A, 80),
            run(O, 76),
            run(B, 60),
            run(O, 50),
            run(A, 56),
            run(B, 100),
        ];
        assert_eq!(ratios(&runs, A), vec![1.0, 0.7]);
        assert_eq!(ratios(&runs, O), vec![0.95, 0.625]);
        let pairs: Vec<(u64, u64, f64)> = paired_runs(&runs, O)
            .iter()
            .map(|(x, a, base)| (x.out.connections, a.out.connections, *base))
            .collect();
        assert_eq!(pairs, vec![(76, 80, 80.0), (50, 56, 80.0)]);
        // A round without the agent pairs nothing.
        let lone = [run(B, 100), run(O, 90), run(B, 100)];
        assert!(paired_runs(&lone, O).is_empty());
    }

    #[test]
    fn rounds_other_work_disturbed_are_left_out_of_the_verdict_and_said() {
        use Mode::{Agent as A, AgentOtlp as O, Baseline as B};
        let busy = |mode, conns| StormRun {
            foreign_cpu: 0.3,
            ..run(mode, conns)
        };
        // Three quiet rounds 0.01 apart, one where a neighbour's build took 30 % of the CPUs.
        let runs = [
            run(B, 100),
            run(A, 80),
            run(O, 79),
            run(B, 100),
            run(O, 80),
            run(A, 81),
            run(B, 100),
            busy(A, 40),
            run(O, 79),
            run(B, 100),
            run(O, 78),
            run(A, 79),
            run(B, 100),
        ];
        let rows = paired_rows(&runs, &[A, O]);
        let row = &rows[0];
        assert!(
            row.result
                .starts_with("-0.010 ± 0.000 (mean, 95 % CI over 3 rounds"),
            "{}",
            row.result
        );
        assert!(
            row.result.contains("1 of 4 rounds left out"),
            "{}",
            row.result
        );
        assert!(row.result.contains("): within."), "{}", row.result);
        assert_eq!(row.met, Some(true));
    }

    #[test]
    fn rounds_alternate_their_order_between_baselines() {
        use Mode::{Agent as A, AgentOtlp as O, Baseline as B};
        assert_eq!(
            storm_sequence(&[A, O], 3),
            vec![B, A, O, B, O, A, B, A, O, B]
        );
        // Other modes keep a baseline on either side; the agent's run back to back.
        use Mode::{Json as J, Text as T};
        assert_eq!(
            storm_sequence(&[J, T, A, O], 2),
            vec![B, J, B, T, B, A, O, B, T, B, J, B, O, A, B]
        );
    }

    #[test]
    fn paired_differences_are_judged_by_their_interval() {
        let s = Spread::of(&[-0.01, 0.0, 0.01, 0.0]);
        assert_eq!((s.n, s.mean, s.median), (4, 0.0, 0.0));
        // sd 0.00816, t(3) 3.182: 3.182 * 0.00816 / 2.
        assert!((s.half_width - 0.01299).abs() < 1e-4, "{s:?}");
        assert_eq!(s.within(0.02), Some(true));
        let wide = Spread::of(&[-0.1, 0.05, -0.03, 0.02]);
        assert_eq!(wide.within(0.02), None);
        // Mean -0.015, sd 0.0656: (2 * 0.0656 / 0.005)^2 = 688 rounds.
        assert_eq!(wide.rounds_to_tell(0.02), Some(688));
        // Past the table's 21 degrees of freedom: t(29) = 2.045, taken as 1.96 + 2.5 / 29.
        let many: Vec<f64> = (0..30)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let m = Spread::of(&many);
        let sd = (30.0f64 / 29.0).sqrt();
        assert!((m.sd - sd).abs() < 1e-12, "{m:?}");
        assert!((m.half_width - (1.96 + 2.5 / 29.0) * sd / 30f64.sqrt()).abs() < 1e-12);
        assert!(m.half_width / (sd / 30f64.sqrt()) >= 2.045);
        let below = Spread::of(&[-0.05, -0.06, -0.055, -0.045]);
        assert_eq!(below.within(0.02), Some(false));
        assert_eq!(Spread::of(&[0.0]).within(0.02), None);
    }

    #[test]
    fn the_sink_answers_each_post_of_a_kept_alive_connection() {
        use std::io::{Read, Write};
        let port = otlp_sink_port().unwrap();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Bodies past the sink's 8 KiB head buffer and its 1 MiB discard size, then a small one:
        // each answer must come only once its whole body was taken.
        for len in [3 << 20, 100, 9000] {
            let body = vec![0x5a; len];
            write!(
                s,
                "POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n"
            )
            .unwrap();
            s.write_all(&body).unwrap();
            let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
            let mut answer = vec![0; ok.len()];
            s.read_exact(&mut answer).unwrap();
            assert_eq!(answer, ok);
        }
        assert_eq!(OTLP_POSTS.swap(0, Ordering::Relaxed), 3);
        assert!(OTLP_SINK_CPU_NS.swap(0, Ordering::Relaxed) > 0);
    }

    #[test]
    fn the_cpu_estimate_charges_extra_cpu_at_the_traced_rate() {
        let run = |mode, conns, cpu: f64, sink: Option<f64>| StormRun {
            mode,
            out: StormOut {
                connections: conns,
                secs: 1.0,
                ..Default::default()
            },
            tracer_cpu: Some(sys::CpuTime {
                user: cpu,
                system: 0.0,
            }),
            irq_work: 0,
            unfinished: (0, 0),
            capture: None,
            progs: Vec::new(),
            seen: None,
            recovered: None,
            fired: None,
            busy_before: 0.0,
            idle_wait: Duration::ZERO,
            foreign_cpu: 0.0,
            sink_cpu: sink.map(Duration::from_secs_f64),
        };
        // Agent at 0.5 of the baseline with 2 µs a connection; with OTLP 50k conn/s at 2.5 µs
        // plus 0.1 µs in the sink: 0.6 µs extra.
        let runs = [
            run(Mode::Baseline, 100_000, 0.0, None),
            run(Mode::Agent, 50_000, 0.1, None),
            run(Mode::AgentOtlp, 50_000, 0.125, Some(0.005)),
            run(Mode::Baseline, 100_000, 0.0, None),
        ];
        let row =
            cpu_estimate_row(&paired_runs(&runs, Mode::AgentOtlp), Mode::AgentOtlp, 0.02).unwrap();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let want = -0.5 * 0.6e-6 * 50_000.0 / cpus;
        let got: f64 = row.result.split(' ').next().unwrap().parse().unwrap();
        assert!(
            (got - want).abs() < 0.001,
            "{} (want {want:+.4})",
            row.result
        );
    }

    #[test]
    fn numbers_print_for_people() {
        assert_eq!(thousands(41234.6), "41,235");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(short_count(99_999), "100k");
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
    }

    #[test]
    fn sockets_left_open_fail_the_bench_only_when_no_baseline_left_one_too() {
        let tracer = Mode::Agent;
        assert_eq!(odd_verdict(&[(tracer, 1, 0)]), Some(false));
        assert_eq!(odd_verdict(&[(tracer, 0, 1)]), Some(false));
        assert_eq!(odd_verdict(&[(tracer, 0, 1), (Mode::Baseline, 0, 1)]), None);
        assert_eq!(
            odd_verdict(&[(tracer, 2, 1), (Mode::Baseline, 0, 1)]),
            Some(false)
        );
    }
}
