//! `cargo xtask bench --scale`: netmon at 100k and 1M sockets. Established loopback pairs held
//! by processes (20,000 fds each at most) in a namespace of the bench's own; per size an agent
//! is started on them and measured: seed time, events lost while it seeds and reconciles
//! under a paced churn (fires counted by perf, outside netmon), snapshot times against ss
//! with the same arguments, and its resident memory.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    CONNS_PER_HOLDER, Ctx, Holder, Proc, Row, Tool, capture, count_rows, metrics_addr, ms, sys,
    time_tool, wait_attached,
};
use sys::Netns;

/// The churn's listeners take ports from here (below the ephemeral range): perf's filter
/// counts their fires and no others.
const CHURN_PORT: u16 = 971;
const CHURN_THREADS: usize = 2;
/// Memory the machine must keep available after a larger fixture is built: the machine is
/// shared, and a fixture that pushes it into reclaim measures the reclaim.
const KEEP_AVAILABLE_KIB: u64 = 8 << 20;

/// What `--scale` runs.
pub struct Plan {
    pub sizes: Vec<u32>,
    pub churn_rate: f64,
    pub churn_secs: f64,
    pub runs: usize,
}

/// The kernel's limits that a fixture of this size meets, read before it is built.
struct Limits {
    mem_total_kib: u64,
    mem_available_kib: u64,
    tcp_mem: String,
    file_max: String,
    nofile: String,
    somaxconn: String,
    port_range: String,
}

impl Limits {
    fn read(ns: &Netns) -> Result<Self> {
        let in_ns = |path: &str| -> Result<String> {
            let out = ns.command("cat").arg(path).output()?;
            Ok(String::from_utf8_lossy(&out.stdout)
                .trim()
                .replace('\t', " "))
        };
        let mut nofile = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) };
        Ok(Self {
            mem_total_kib: meminfo("MemTotal")?,
            mem_available_kib: meminfo("MemAvailable")?,
            tcp_mem: read_trim("/proc/sys/net/ipv4/tcp_mem")?,
            file_max: read_trim("/proc/sys/fs/file-max")?,
            nofile: format!("{} soft, {} hard", nofile.rlim_cur, nofile.rlim_max),
            somaxconn: in_ns("/proc/sys/net/core/somaxconn")?,
            port_range: in_ns("/proc/sys/net/ipv4/ip_local_port_range")?,
        })
    }
}

fn read_trim(path: &str) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .replace('\t', " "))
}

/// A line of /proc/meminfo, in KiB.
fn meminfo(field: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/meminfo"))
}

/// One socket count's figures.
struct SizeRun {
    sockets: usize,
    holders: usize,
    build: Duration,
    /// MemAvailable and Slab drop while the fixture grew, per socket added.
    kernel_bytes_per_socket: f64,
    slab_bytes_per_socket: f64,
    seed: Seed,
    churn: Churn,
    /// (label, netmon time, ss time), or why a tool has none (it failed, or timed out).
    snapshots: Vec<(String, Timed, Timed)>,
    netmon_rows: Result<usize, String>,
    rss_seeded_kib: u64,
    /// How long the records held while seeding took to be replayed and freed, or why that
    /// was not seen.
    held_freed: Result<Duration, String>,
    rss_after_churn_kib: u64,
    rss_end_kib: u64,
    /// Peak RSS while seeding (replay of the held records included), during the churn and its
    /// reconciling snapshots, and during the timed snapshots (reset between).
    hwm_seed_kib: u64,
    hwm_churn_kib: u64,
    hwm_kib: u64,
    closed_rows: Result<usize, String>,
}

struct Seed {
    /// The agent's own figure: /proc scan, dumps and merges.
    agent_ms: u64,
    sockets: u64,
    /// From spawning the agent to its socket answering (attach included).
    to_serving: Duration,
    /// The agent's own account of where the time went.
    breakdown: String,
}

struct Churn {
    connections: u64,
    fired: u64,
    /// Those fires that landed on a thread of PID 1 ([`capture::fire_events`]).
    fired_on_pid1: Option<u64>,
    transitions: u64,
    lost: Vec<(String, u64)>,
    reconciles: usize,
    /// Why snapshots during the churn failed, one line each.
    failed: Vec<String>,
    longest_merge_ms: f64,
}

impl Churn {
    fn lost_total(&self) -> u64 {
        self.lost.iter().map(|(_, n)| n).sum()
    }

    /// Fires neither received nor covered by a reported loss of transitions (hints are
    /// another ring's records: they cover none).
    fn unaccounted(&self) -> u64 {
        let covered: u64 = self
            .lost
            .iter()
            .filter(|(k, _)| k != "hints_ring_full")
            .map(|(_, n)| n)
            .sum();
        self.fired
            .saturating_sub(self.transitions)
            .saturating_sub(covered)
    }

    /// Fires that landed off PID 1's threads and did not reach the agent: what seeding and
    /// reconciling could have cost. The fires on PID 1's threads run no BPF program on this
    /// machine kind (README, "Exact or loud"), so no tracer could have received them.
    fn missed_off_pid1(&self) -> Option<u64> {
        let on_pid1 = self.fired_on_pid1?;
        Some(
            self.fired
                .saturating_sub(on_pid1)
                .saturating_sub(self.transitions),
        )
    }
}

pub fn run(ctx: &Ctx, plan: &Plan) -> Result<(Vec<Row>, String)> {
    let ns = ctx.netns("scale")?;
    // The churn leaves no TIME-WAIT behind: the fixture keeps the size it was built to.
    let set = ns
        .command("sysctl")
        .args(["-qw", "net.ipv4.tcp_max_tw_buckets=0"])
        .status()?;
    if !set.success() {
        bail!("sysctl net.ipv4.tcp_max_tw_buckets=0 in the bench's namespace failed ({set})");
    }
    let limits = Limits::read(&ns)?;
    let mut details = format!(
        "\n## Scale: limits read before the fixtures\n\n- MemTotal {} MiB, MemAvailable {} MiB\n\
         - tcp_mem (pages) {}; fs.file-max {}; open files {}\n\
         - in the bench's namespace: somaxconn {}, ip_local_port_range {}\n\
         - set: net.ipv4.tcp_max_tw_buckets=0 in the bench's namespace (the churn leaves no \
         TIME-WAIT); nothing else needed: idle established sockets hold no buffer memory, so \
         tcp_mem is not approached; each holder keeps {} connections ({} fds) under the \
         open-files limit; connections go to 250 addresses per /16 so no 4-tuple space runs \
         short.\n",
        limits.mem_total_kib >> 10,
        limits.mem_available_kib >> 10,
        limits.tcp_mem,
        limits.file_max,
        limits.nofile,
        limits.somaxconn,
        limits.port_range,
        CONNS_PER_HOLDER,
        2 * CONNS_PER_HOLDER + 1,
    );
    let mut holders: Vec<Holder> = Vec::new();
    let mut held: u32 = 0;
    let mut runs = Vec::new();
    let mut sizes = plan.sizes.clone();
    sizes.sort_unstable();
    for &size in &sizes {
        let avail0 = meminfo("MemAvailable")?;
        let slab0 = meminfo("Slab")?;
        if let Some(last) = runs.last() {
            let last: &SizeRun = last;
            // Slab grows by more than MemAvailable drops (part of it counts as reclaimable):
            // the larger of the two, with a margin.
            let per_socket = last.kernel_bytes_per_socket.max(last.slab_bytes_per_socket);
            let need = (per_socket * 1.2 * f64::from(size - held)) as u64 >> 10;
            if avail0.saturating_sub(need) < KEEP_AVAILABLE_KIB {
                let why = format!(
                    "- {size} sockets skipped: at {per_socket:.0} bytes of kernel memory per \
                     socket (measured at {}), they need ~{} MiB more and would leave less than \
                     {} MiB of the {} MiB available on this shared machine.\n",
                    last.sockets,
                    need >> 10,
                    KEEP_AVAILABLE_KIB >> 10,
                    avail0 >> 10
                );
                eprint!("bench: {why}");
                details.push_str(&why);
                break;
            }
        }
        let t0 = Instant::now();
        grow(ctx, &ns, &mut holders, &mut held, size)?;
        let build = t0.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        let added = f64::from(held) - runs.last().map_or(0.0, |r: &SizeRun| r.sockets as f64);
        let kernel = avail0.saturating_sub(meminfo("MemAvailable")?) as f64 * 1024.0 / added;
        let slab = meminfo("Slab")?.saturating_sub(slab0) as f64 * 1024.0 / added;
        let sockets = count_rows(ns.command("ss").args(["-tanH"]))?;
        eprintln!(
            "bench: scale: {sockets} sockets in {} holders, built in {:.1} s; {kernel:.0} B \
             kernel memory per socket ({slab:.0} B slab)",
            holders.len(),
            build.as_secs_f64()
        );
        let port = holders.first().map_or(0, |h| h.port);
        let run = measure(ctx, plan, &ns, sockets, port)?;
        runs.push(SizeRun {
            holders: holders.len(),
            build,
            kernel_bytes_per_socket: kernel,
            slab_bytes_per_socket: slab,
            ..run
        });
    }
    drop(holders);
    drop(ns);
    let rows = runs.iter().flat_map(rows).collect();
    for r in &runs {
        details.push_str(&size_details(r));
    }
    Ok((rows, details))
}

/// Adds holders until `size` sockets are held, two starting at a time (one per core).
fn grow(ctx: &Ctx, ns: &Netns, holders: &mut Vec<Holder>, held: &mut u32, size: u32) -> Result<()> {
    let mut wanted = Vec::new();
    let mut planned = *held;
    while planned < size {
        let conns = ((size - planned).saturating_sub(1) / 2).clamp(1, CONNS_PER_HOLDER);
        wanted.push(conns);
        planned += 2 * conns + 1;
    }
    for pair in wanted.chunks(2) {
        let first_id = holders.len();
        let started: Vec<Result<Holder>> = std::thread::scope(|s| {
            let handles: Vec<_> = pair
                .iter()
                .enumerate()
                .map(|(i, &conns)| s.spawn(move || Holder::start(ctx, ns, conns, first_id + i)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("holder thread panicked")))
                })
                .collect()
        });
        for h in started {
            let h = h?;
            *held += h.sockets;
            holders.push(h);
        }
    }
    Ok(())
}

/// Starts an agent on the fixture and measures it; the agent is stopped before returning.
fn measure(ctx: &Ctx, plan: &Plan, ns: &Netns, sockets: usize, port: u16) -> Result<SizeRun> {
    let socket = ctx.dir.join("agent-scale.sock");
    let errors = ctx.dir.join("agent-scale.err");
    let mut cmd = Command::new(&ctx.netmon);
    cmd.args(["agent", "--socket"])
        .arg(&socket)
        // Only the fixture's namespace: the counts compared with perf's are its own, whatever
        // else runs on the machine.
        .args(["--only-netns", &ns.inum.to_string()])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errors)?);
    let t0 = Instant::now();
    let mut agent = Proc::spawn(&mut cmd, "netmon agent")?;
    wait_attached(&mut agent, &errors)?;
    // The churn starts once the programs are attached, so every fire it causes is one the
    // agent must account for; the agent is seeding now.
    let mut churn = Churning::start(ctx, ns, plan, "seed")?;
    wait_serving(&mut agent, &socket, Duration::from_secs(600))?;
    let to_serving = t0.elapsed();
    let seed = seed_line(&errors, to_serving)?;
    // The records read while seeding are replayed after it and their memory freed: the
    // seeded figure is the table's, without them.
    let held_freed = wait_held_freed(&metrics_addr(&errors)?, Duration::from_secs(120));
    let rss_seeded_kib = sys::vm_kib(agent.pid(), "VmRSS")?;
    let hwm_seed_kib = sys::vm_kib(agent.pid(), "VmHWM")?;
    sys::reset_hwm(agent.pid())?;
    let mut counted = Vec::new();
    if churn.proc.exited()?.is_some() {
        // The seed outlasted the churn (1M sockets): a second one for the reconciles.
        counted.push(churn.finish()?);
        churn = Churning::start(ctx, ns, plan, "reconcile")?;
    }
    // Snapshots during the churn: each dumps the namespace and merges it into the table
    // beside the thread that drains the ring. `-o`: timers come only from sock_diag, whose
    // full dump the table reconciles with (a plain -tan is served by the socket iterator and
    // reconciles nothing).
    let mut reconciles = 0;
    let mut failed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(plan.churn_secs + 120.0);
    while churn.proc.exited()?.is_none() && Instant::now() < deadline {
        match rows_of(
            ns.command(&ctx.netmon).args(["snapshot", "-tanoH"]),
            &socket,
        ) {
            Ok(_) => reconciles += 1,
            Err(why) => failed.push(why),
        }
    }
    counted.push(churn.finish()?);
    let connections = counted.iter().map(|c| c.0).sum();
    let fired = counted.iter().map(|c| c.1).sum();
    let fired_on_pid1 = counted.iter().map(|c| c.2).sum();
    // Drained at least every 50 ms; counters read every 250 ms.
    std::thread::sleep(Duration::from_secs(1));
    let metrics = fetch_metrics(&metrics_addr(&errors)?)?;
    let metric = |name: &str, label: &str| metric_value(&metrics, name, label);
    let lost: Vec<(String, u64)> = ["ring_full", "recursion", "hints_ring_full", "not_run"]
        .iter()
        .map(|k| {
            let n = metric("netmon_lost_events_total", &format!("kind=\"{k}\"")).unwrap_or(0.0);
            (k.to_string(), n as u64)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let churn = Churn {
        connections,
        fired,
        fired_on_pid1,
        transitions: metric("netmon_events_total", "kind=\"transition\"").unwrap_or(0.0) as u64,
        lost,
        reconciles,
        failed,
        longest_merge_ms: metric("netmon_resync_longest_merge_seconds", "").unwrap_or(f64::NAN)
            * 1e3,
    };
    eprintln!(
        "bench: scale: churn {} connections: fired {} (perf), agent transitions {}, lost {}; {} \
         snapshots meanwhile ({} failed{}), longest merge {:.1} ms",
        churn.connections,
        churn.fired,
        churn.transitions,
        churn.lost_total(),
        churn.reconciles,
        churn.failed.len(),
        churn
            .failed
            .first()
            .map_or(String::new(), |f| format!(": {f}")),
        churn.longest_merge_ms
    );
    let rss_after_churn_kib = sys::vm_kib(agent.pid(), "VmRSS")?;
    let hwm_churn_kib = sys::vm_kib(agent.pid(), "VmHWM")?;
    sys::reset_hwm(agent.pid())?;
    let closed_rows = rows_of(
        ns.command(&ctx.netmon)
            .args(["snapshot", "--closed", "1h", "-H"]),
        &socket,
    );
    let netmon_rows = rows_of(ns.command(&ctx.netmon).args(["snapshot", "-tanH"]), &socket);
    eprintln!(
        "bench: scale: agent VmRSS {:.1} MB seeded, {:.1} MB after the churn; closed rows {}, \
         -tan rows {}",
        mb(rss_seeded_kib),
        mb(rss_after_churn_kib),
        shown(&closed_rows),
        shown(&netmon_rows)
    );
    let dport = format!("dport = :{port}");
    // Each pair: netmon's arguments, then ss's. With `--max-age` the agent answers from its
    // table (the warm-up run walks if the table's walk is too old or a loss came since, which
    // refreshes it); whether the timed runs were served from the table is checked after.
    let max_age = ["--max-age", MAX_AGE];
    let pairs: [(&str, Vec<&str>, Vec<&str>); 7] = [
        ("-tan", vec!["-tan"], vec!["-tan"]),
        (
            "-tan --max-age 30s",
            [&["-tan"][..], &max_age].concat(),
            vec!["-tan"],
        ),
        (
            "-tan 'dport = :P'",
            vec!["-tan", &dport],
            vec!["-tan", &dport],
        ),
        (
            "-tan --max-age 30s 'dport = :P'",
            [&["-tan"][..], &max_age, &[&dport]].concat(),
            vec!["-tan", &dport],
        ),
        ("-tanp", vec!["-tanp"], vec!["-tanp"]),
        (
            "-tanp --max-age 30s",
            [&["-tanp"][..], &max_age].concat(),
            vec!["-tanp"],
        ),
        ("-s", vec!["-s"], vec!["-s"]),
    ];
    let mut snapshots = Vec::new();
    let mut ss_times: Vec<(Vec<&str>, Timed)> = Vec::new();
    for (label, args, ss_args) in &pairs {
        let tool = |program: &Path, mut words: Vec<String>, socket: Option<PathBuf>| Tool {
            label: format!("{} {label}", program.display()),
            program: program.to_string_lossy().into_owned(),
            args: {
                if socket.is_some() {
                    words.insert(0, "snapshot".into());
                }
                words
            },
            socket,
        };
        let words: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let netmon = tool(&ctx.netmon, words.clone(), Some(socket.clone()));
        let ss_words: Vec<String> = ss_args.iter().map(|a| a.to_string()).collect();
        let ss = tool(Path::new("ss"), ss_words, None);
        // `ss -tanp` walks every process's fds: minutes at 1M sockets, so only the first run
        // (which may time out: n/a) there. Not for `--max-age`: its first run walks (the
        // table's last walk is older than the bound after ss's minutes), the timed ones after
        // it are what the table serves.
        let runs = |label: &str| {
            if label.starts_with("-tanp") && !label.contains("--max-age") && sockets > 200_000 {
                0
            } else {
                plan.runs
            }
        };
        if args.contains(&"--max-age") {
            refresh_walk(ns, &ctx.netmon, &socket, args);
        }
        let n = time_tool(ns, &netmon, runs(label))?;
        let mut label = label.to_string();
        if args.contains(&"--max-age") {
            label = format!("{label} ({})", table_served(ns, &ctx.netmon, &socket, args));
        }
        // ss with the same arguments is timed once, beside netmon's first figure for them.
        let s = match ss_times.iter().find(|(a, _)| a == ss_args) {
            Some((_, t)) => t.clone(),
            None => {
                let t = time_tool(ns, &ss, runs(&label))?;
                ss_times.push((ss_args.clone(), t.clone()));
                t
            }
        };
        eprintln!(
            "bench: scale: {sockets} sockets: {label:<20} netmon {} ss {}",
            fmt_timed(&n),
            fmt_timed(&s)
        );
        snapshots.push((label, n, s));
    }
    let rss_end_kib = sys::vm_kib(agent.pid(), "VmRSS")?;
    let hwm_kib = sys::vm_kib(agent.pid(), "VmHWM")?;
    let stop = agent.stop(libc::SIGTERM, Duration::from_secs(30))?;
    if !stop.success() {
        bail!(
            "the agent exited with {stop}: {}",
            std::fs::read_to_string(&errors).unwrap_or_default()
        );
    }
    Ok(SizeRun {
        sockets,
        holders: 0,
        build: Duration::ZERO,
        kernel_bytes_per_socket: 0.0,
        slab_bytes_per_socket: 0.0,
        seed,
        churn,
        snapshots,
        netmon_rows,
        rss_seeded_kib,
        held_freed,
        rss_after_churn_kib,
        rss_end_kib,
        hwm_seed_kib,
        hwm_churn_kib,
        hwm_kib,
        closed_rows,
    })
}

/// The paced churn inside `perf stat`, which counts the tracepoint's fires on its ports.
struct Churning {
    proc: Proc,
    perf_out: PathBuf,
}

impl Churning {
    fn start(ctx: &Ctx, ns: &Netns, plan: &Plan, what: &str) -> Result<Self> {
        let perf_out = ctx.dir.join(format!("scale-churn-{what}.perf"));
        let last = CHURN_PORT + CHURN_THREADS as u16 - 1;
        let filter = format!(
            "(sport >= {CHURN_PORT} && sport <= {last}) || (dport >= {CHURN_PORT} && dport <= \
             {last})"
        );
        let max = (plan.churn_rate * plan.churn_secs).ceil() as u64;
        let mut cmd = ns.command("perf");
        cmd.args(["stat", "-a", "-x", ",", "-o"])
            .arg(&perf_out)
            .args(capture::fire_events(&filter))
            .arg("--")
            .arg(&ctx.xtask)
            .args(["bench-storm", "--threads", &CHURN_THREADS.to_string()])
            .args(["--secs", &plan.churn_secs.to_string()])
            .args(["--max", &max.to_string()])
            .args(["--rate", &plan.churn_rate.to_string()])
            .args(["--port", &CHURN_PORT.to_string(), "--linger", "1"])
            .stdout(Stdio::piped());
        capture::private_tracefs(&mut cmd);
        let proc = Proc::spawn(&mut cmd, format!("perf stat around the {what} churn"))?;
        Ok(Self { proc, perf_out })
    }

    /// Waits for the end; (connections made, fires perf counted, those on PID 1's threads).
    fn finish(mut self) -> Result<(u64, u64, Option<u64>)> {
        let status = self.proc.wait(Duration::from_secs(180))?;
        let mut line = String::new();
        if let Some(mut out) = self.proc.child().stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut line)?;
        }
        if !status.success() {
            bail!(
                "perf stat around the churn failed ({status}): {}",
                std::fs::read_to_string(&self.perf_out).unwrap_or_default()
            );
        }
        let connections = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("connections="))
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no connections in the churn's output {line:?}"))?;
        let (fired, on_pid1) = capture::perf_fires(&std::fs::read_to_string(&self.perf_out)?)
            .with_context(|| format!("no count in {}", self.perf_out.display()))?;
        Ok((connections, fired, on_pid1))
    }
}

/// A tool's time, or why there is none.
type Timed = std::result::Result<Duration, String>;

/// Until the agent reports no held records (`netmon_held_records_bytes` 0): how long that
/// took, or why it was not seen.
fn wait_held_freed(addr: &str, max: Duration) -> Result<Duration, String> {
    let t0 = Instant::now();
    loop {
        let text = fetch_metrics(addr).map_err(|e| format!("metrics: {e}"))?;
        match metric_value(&text, "netmon_held_records_bytes", "") {
            Some(0.0) => return Ok(t0.elapsed()),
            Some(v) if t0.elapsed() > max => {
                return Err(format!("{v} bytes still held after {} s", max.as_secs()));
            }
            Some(_) => std::thread::sleep(Duration::from_millis(100)),
            None => return Err("the agent has no netmon_held_records_bytes".into()),
        }
    }
}

/// Until the agent accepts connections on its socket (it binds once seeded).
fn wait_serving(proc: &mut Proc, socket: &Path, max: Duration) -> Result<()> {
    let deadline = Instant::now() + max;
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if proc.exited()?.is_some() || Instant::now() > deadline {
            bail!("the agent did not start serving {}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The agent's "seeded N sockets of M namespaces in X ms" line.
fn seed_line(errors: &Path, to_serving: Duration) -> Result<Seed> {
    // Said just after the socket is bound: it may lag behind the first connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(errors)?;
        if text.contains("netmon agent: seeded ") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("netmon agent: seeded "))
        .with_context(|| format!("the agent did not say how it seeded: {text}"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| words.get(i).and_then(|w| w.parse().ok());
    let after = |word: &str| {
        words
            .iter()
            .position(|w| *w == word)
            .and_then(|i| num(i + 1))
    };
    Ok(Seed {
        sockets: num(0).context("seed line")?,
        agent_ms: after("in").context("seed line")?,
        breakdown: line
            .split_once('(')
            .map_or(String::new(), |(_, b)| b.trim_end_matches(')').to_owned()),
        to_serving,
    })
}

/// The 0.0.4 text exposition.
fn fetch_metrics(addr: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.take(16 << 20).read_to_string(&mut body)?;
    Ok(body)
}

/// The value of the sample `name{...label...}` (or `name` without labels when `label` is
/// empty).
fn metric_value(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        if (label.is_empty() && labels.is_empty()) || (!label.is_empty() && labels.contains(label))
        {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

/// The freshness bound the bench's table-served snapshots ask for: the timed runs of one
/// command (at most ~10 s at 1M sockets) fit in it after the warm-up run's walk.
const MAX_AGE: &str = "30s";

/// Makes the agent walk now (the same request with a bound of 1 ms), so that a `--max-age`
/// command's warm-up and timed runs all fall within [`MAX_AGE`] of one walk: otherwise a walk
/// made ~29 s earlier (before `ss -tanp`'s seconds) lets the warm-up be served and a timed run
/// walk once the bound passes. Its output and failures do not matter: the timed runs and
/// [`table_served`] say what happened.
fn refresh_walk(ns: &Netns, netmon: &Path, socket: &Path, args: &[&str]) {
    let args: Vec<&str> = args
        .iter()
        .map(|&a| if a == MAX_AGE { "1ms" } else { a })
        .collect();
    let _ = ns
        .command(netmon)
        .arg("snapshot")
        .args(&args)
        .env("NETMON_AGENT_SOCKET", socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether a `--max-age` snapshot is served from the agent's table now (its first line says
/// how old the queues are) or walked (the agent's note says why).
fn table_served(ns: &Netns, netmon: &Path, socket: &Path, args: &[&str]) -> String {
    let out = ns
        .command(netmon)
        .arg("snapshot")
        .args(args)
        .env("NETMON_AGENT_SOCKET", socket)
        .stdin(Stdio::null())
        .output();
    let Ok(out) = out else {
        return "not run".into();
    };
    let first = out.stdout.split(|&b| b == b'\n').next().unwrap_or_default();
    if first.starts_with(b"# ") {
        return "served from the table".into();
    }
    let err = String::from_utf8_lossy(&out.stderr);
    match err.lines().find(|l| l.contains("--max-age")) {
        Some(why) => format!("walked: {}", why.trim()),
        None => "walked".into(),
    }
}

/// Rows a snapshot through the agent at `socket` prints, or the first line of its complaint.
fn rows_of(cmd: &mut Command, socket: &Path) -> Result<usize, String> {
    let out = cmd
        .env("NETMON_AGENT_SOCKET", socket)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(out.stdout.iter().filter(|&&b| b == b'\n').count());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(format!(
        "{} ({})",
        err.lines().last().unwrap_or("no message").trim(),
        out.status
    ))
}

fn shown(rows: &Result<usize, String>) -> String {
    match rows {
        Ok(n) => n.to_string(),
        Err(why) => format!("failed: {why}"),
    }
}

fn fmt_timed(t: &Timed) -> String {
    match t {
        Ok(d) => format!("{:.1} ms", ms(*d)),
        Err(why) => format!("n/a ({why})"),
    }
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn rows(r: &SizeRun) -> Vec<Row> {
    let n = super::short_count(r.sockets);
    let mut rows = vec![Row::new(
        format!("scale {n}: fixture"),
        format!(
            "{} sockets (netmon -tan rows {}), {} holders, built in {:.1} s; kernel memory {:.0} \
             B/socket ({:.0} B slab)",
            r.sockets,
            shown(&r.netmon_rows),
            r.holders,
            r.build.as_secs_f64(),
            r.kernel_bytes_per_socket,
            r.slab_bytes_per_socket
        ),
        "",
        None,
    )];
    rows.push(Row::new(
        format!("scale {n}: seed"),
        format!(
            "{} sockets in {} ms ({}); spawn to serving {:.0} ms",
            r.seed.sockets,
            r.seed.agent_ms,
            r.seed.breakdown,
            ms(r.seed.to_serving)
        ),
        "",
        None,
    ));
    let c = &r.churn;
    let unaccounted = c.unaccounted();
    rows.push(Row::new(
        format!(
            "scale {n}: lost during seed + {} reconciling snapshots under churn",
            c.reconciles
        ),
        format!(
            "{} conns; fired {} (perf; {} on PID 1's threads) vs agent {}; reported lost {}{}; \
             unaccounted {}; longest merge {:.1} ms",
            c.connections,
            c.fired,
            capture::on_pid1(c.fired_on_pid1),
            c.transitions,
            c.lost_total(),
            if c.lost.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    c.lost
                        .iter()
                        .map(|(k, v)| format!("{v} {k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            unaccounted,
            c.longest_merge_ms
        ),
        "0",
        Some(c.lost_total() == 0 && unaccounted == 0 && c.fired > 0),
    ));
    if let (Some(missed), Some(on_pid1)) = (c.missed_off_pid1(), c.fired_on_pid1) {
        rows.push(Row::new(
            format!("scale {n}: of those, fires off PID 1's threads the agent did not get"),
            format!(
                "{missed} of {} (the {on_pid1} on PID 1's threads run no BPF program here)",
                c.fired.saturating_sub(on_pid1)
            ),
            "0",
            Some(missed == 0 && unaccounted == 0 && c.fired > 0),
        ));
    }
    if let Some(first) = c.failed.first() {
        rows.push(Row::new(
            format!("scale {n}: snapshots that failed during the churn"),
            format!("{} (first: {first})", c.failed.len()),
            "0",
            Some(false),
        ));
    }
    for (label, netmon, ss) in &r.snapshots {
        let target = match label.as_str() {
            l if l.starts_with("-tanp") => Some(0.05),
            "-s" => None,
            _ => Some(0.25),
        };
        let (ratio, text) = ratio(netmon, ss);
        // ss's arguments: netmon's without `--max-age` and the note on how it was served.
        let ss_label = label
            .split(" (")
            .next()
            .unwrap_or_default()
            .replace(&format!(" --max-age {MAX_AGE}"), "");
        rows.push(Row::new(
            format!("scale {n}: `snapshot {label}` / `ss {ss_label}`"),
            format!("{} / {} = {text}", fmt_timed(netmon), fmt_timed(ss)),
            target.map_or(String::new(), |t| format!("<= {t}x")),
            target.zip(ratio).map(|(t, x)| x <= t),
        ));
    }
    let limit = if r.sockets > 500_000 { 300.0 } else { 60.0 };
    rows.push(Row::new(
        format!(
            "scale {n}: agent RSS, live + {} closed",
            shown(&r.closed_rows)
        ),
        format!(
            "{:.1} MB seeded (held records freed {}), {:.1} MB after churn, {:.1} MB at the end",
            mb(r.rss_seeded_kib),
            match &r.held_freed {
                Ok(d) => format!("{:.0} ms after serving", ms(*d)),
                Err(why) => format!("not seen: {why}"),
            },
            mb(r.rss_after_churn_kib),
            mb(r.rss_end_kib)
        ),
        format!("<= {limit:.0} MB"),
        Some(mb(r.rss_end_kib) <= limit),
    ));
    let steady = r.rss_after_churn_kib.max(1) as f64;
    let peak = r.hwm_seed_kib.max(r.hwm_churn_kib).max(r.hwm_kib) as f64 / steady;
    rows.push(Row::new(
        format!("scale {n}: agent peak RSS (VmHWM) / steady (after churn)"),
        format!(
            "seeding {:.1} MB, churn + reconciling snapshots {:.1} MB, timed snapshots {:.1} MB; \
             highest = {peak:.2}x",
            mb(r.hwm_seed_kib),
            mb(r.hwm_churn_kib),
            mb(r.hwm_kib)
        ),
        "<= 1.3x",
        Some(peak <= 1.3),
    ));
    rows
}

/// netmon's time over ss's, and how to print it. When ss timed out, its time is at least the
/// limit, so the ratio is at most netmon's time over it: an upper bound, printed as such.
fn ratio(netmon: &Timed, ss: &Timed) -> (Option<f64>, String) {
    match (netmon, ss) {
        (Ok(a), Ok(b)) => {
            let x = a.as_secs_f64() / b.as_secs_f64();
            (Some(x), format!("{x:.2}x"))
        }
        (Ok(a), Err(why)) if why.starts_with("timed out") => {
            let x = a.as_secs_f64() / super::TOOL_TIMEOUT.as_secs_f64();
            (
                Some(x),
                format!("< {x:.3}x (ss took longer than the limit)"),
            )
        }
        _ => (None, "n/a".into()),
    }
}

fn size_details(r: &SizeRun) -> String {
    let mut s = format!("\n## Scale: {} sockets\n\n", r.sockets);
    let _ = writeln!(
        s,
        "- Churn: {} connections paced over the seed and the snapshots (a second churn for \
         the snapshots when the seed outlasted the first); fired = `perf stat -a \
         -e sock:inet_sock_set_state` filtered on the churn's ports (a second counter: \
         those that fired while a thread of PID 1 was current, which this machine kind's \
         kernel runs no tracing program for); agent = \
         `netmon_events_total{{kind=\"transition\"}}` of an agent tracing only the bench's \
         namespace (whose other sockets sit idle). {} `snapshot -tano` requests (sock_diag: \
         timers) ran during the churn, each merging a dump of all {} sockets into the table.",
        r.churn.connections, r.churn.reconciles, r.sockets
    );
    let _ = writeln!(
        s,
        "- Agent RSS: {:.1} MB once seeded and the records held meanwhile were replayed \
         (live sockets only), {:.1} MB after the churn filled the closed history ({} rows), \
         {:.1} MB after the timed snapshots; peaks (VmHWM, reset between phases with \
         `clear_refs`): {:.1} MB seeding, {:.1} MB churn with reconciling snapshots, {:.1} MB \
         timed snapshots.",
        mb(r.rss_seeded_kib),
        mb(r.rss_after_churn_kib),
        shown(&r.closed_rows),
        mb(r.rss_end_kib),
        mb(r.hwm_seed_kib),
        mb(r.hwm_churn_kib),
        mb(r.hwm_kib)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_label() {
        let text = "# HELP x\nnetmon_events_total{kind=\"hint\"} 5\n\
                    netmon_events_total{kind=\"transition\"} 1234\n\
                    netmon_resync_longest_merge_seconds 0.0125\n";
        assert_eq!(
            metric_value(text, "netmon_events_total", "kind=\"transition\""),
            Some(1234.0)
        );
        assert_eq!(
            metric_value(text, "netmon_resync_longest_merge_seconds", ""),
            Some(0.0125)
        );
        assert_eq!(metric_value(text, "netmon_events", ""), None);
    }

    #[test]
    fn a_tool_that_timed_out_bounds_the_ratio_and_a_failed_one_leaves_it_unknown() {
        let secs = |s: f64| Ok(Duration::from_secs_f64(s));
        assert_eq!(ratio(&secs(1.0), &secs(4.0)).0, Some(0.25));
        let limit = super::super::TOOL_TIMEOUT.as_secs_f64();
        let (bound, text) = ratio(&secs(2.4), &Err("timed out after 120 s".into()));
        assert_eq!(bound, Some(2.4 / limit));
        assert!(text.starts_with("< "), "{text}");
        assert_eq!(ratio(&secs(1.0), &Err("no -p here".into())).0, None);
        assert_eq!(ratio(&Err("agent busy".into()), &secs(1.0)).0, None);
    }

    #[test]
    fn unaccounted_fires_are_those_no_transition_loss_covers() {
        let churn = |transitions, lost: &[(&str, u64)]| Churn {
            connections: 10,
            fired: 100,
            fired_on_pid1: None,
            transitions,
            lost: lost.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            reconciles: 0,
            failed: Vec::new(),
            longest_merge_ms: 0.0,
        };
        assert_eq!(churn(100, &[]).unaccounted(), 0);
        assert_eq!(churn(60, &[("ring_full", 40)]).unaccounted(), 0);
        assert_eq!(churn(60, &[("hints_ring_full", 40)]).unaccounted(), 40);
        assert_eq!(
            churn(60, &[("ring_full", 30), ("not_run", 5)]).unaccounted(),
            5
        );
    }

    #[test]
    fn fires_on_pid_1s_threads_are_told_apart_from_what_seeding_missed() {
        let churn = |transitions, on_pid1| Churn {
            connections: 10,
            fired: 100,
            fired_on_pid1: on_pid1,
            transitions,
            lost: vec![("not_run".into(), 100 - transitions)],
            reconciles: 0,
            failed: Vec::new(),
            longest_merge_ms: 0.0,
        };
        assert_eq!(churn(95, Some(5)).missed_off_pid1(), Some(0));
        assert_eq!(churn(93, Some(5)).missed_off_pid1(), Some(2));
        assert_eq!(churn(100, Some(0)).missed_off_pid1(), Some(0));
        assert_eq!(churn(95, None).missed_off_pid1(), None);
    }
}
