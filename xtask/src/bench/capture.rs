//! Part 2 of the bench, counted outside netmon: max-rate storms under `watch --format json`,
//! IPv4 and IPv6 in turn, each run inside `perf stat` counting the tracepoint's fires on the
//! storm's ports. Per run: fired (perf) / written / reported lost / unaccounted.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::Path,
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{Ctx, Mode, Plan, Proc, Row, json_str, json_u64, start_tracer, sys, wait_closed};

/// The storm's listeners take ports from here (below the ephemeral range, so that no client
/// socket elsewhere on the machine has them): perf's filter selects them, and only them.
const FIRST_PORT: u16 = 961;

#[derive(Clone, Debug, Default)]
pub struct Counted {
    v6: bool,
    connections: u64,
    /// Fires perf counted on the storm's ports.
    fired: u64,
    /// Those of them that fired while a thread of PID 1 was current ([`fire_events`]).
    fired_on_pid1: Option<u64>,
    /// Transitions on those ports in netmon's output.
    written: u64,
    /// Losses netmon reported, by kind (these cover every transition its filter let through,
    /// or every fire for `recursion` and `not_run`: other traffic on the machine too).
    lost: Vec<(String, u64)>,
}

impl Counted {
    fn lost_total(&self) -> u64 {
        self.lost.iter().map(|(_, n)| n).sum()
    }

    /// Fires neither written nor covered by a reported loss.
    fn unaccounted(&self) -> u64 {
        self.fired
            .saturating_sub(self.written)
            .saturating_sub(self.lost_total())
    }
}

pub fn runs(ctx: &Ctx, plan: &Plan) -> Result<Vec<Counted>> {
    let mut out = Vec::new();
    for i in 0..plan.capture_runs {
        let v6 = i % 2 == 1;
        let run = once(ctx, plan, v6)
            .with_context(|| format!("capture run {} (IPv{})", i + 1, if v6 { 6 } else { 4 }))?;
        eprintln!(
            "bench: capture {}/{} IPv{}: fired {} ({} on PID 1) written {} reported lost {} \
             unaccounted {}",
            i + 1,
            plan.capture_runs,
            if v6 { 6 } else { 4 },
            run.fired,
            on_pid1(run.fired_on_pid1),
            run.written,
            run.lost_total(),
            run.unaccounted()
        );
        out.push(run);
    }
    Ok(out)
}

fn once(ctx: &Ctx, plan: &Plan, v6: bool) -> Result<Counted> {
    let ns = ctx.netns("capture")?;
    let json = ctx.dir.join("capture.json");
    let errors = ctx.dir.join("capture.err");
    let perf_out = ctx.dir.join("capture.perf");
    let mut tracer = start_tracer(ctx, Mode::Json, &json, &errors)?.context("no tracer")?;
    let last = FIRST_PORT + plan.threads as u16 - 1;
    let filter = format!(
        "(sport >= {FIRST_PORT} && sport <= {last}) || (dport >= {FIRST_PORT} && dport <= {last})"
    );
    let mut cmd = ns.command("perf");
    cmd.args(["stat", "-a", "-x", ",", "-o"])
        .arg(&perf_out)
        .args(fire_events(&filter))
        .arg("--")
        .arg(&ctx.xtask)
        .args(["bench-storm", "--threads", &plan.threads.to_string()])
        .args(["--secs", &plan.storm_secs.to_string()])
        .args(["--max", &plan.storm_max().to_string()])
        .args(["--port", &FIRST_PORT.to_string(), "--linger", "1"])
        .args(v6.then_some("--v6"))
        .stdout(Stdio::piped());
    private_tracefs(&mut cmd);
    let mut proc = Proc::spawn(&mut cmd, "perf stat around the storm")?;
    let mut stdout = proc.child().stdout.take().context("storm stdout")?;
    let status = proc.wait(Duration::from_secs_f64(plan.storm_secs + 60.0))?;
    let mut line = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut line)?;
    if !status.success() {
        bail!(
            "perf stat around the storm failed ({status}): {}",
            std::fs::read_to_string(&perf_out).unwrap_or_default()
        );
    }
    let connections = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("connections="))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no connections in the storm's output {line:?}"))?;
    let (fired, fired_on_pid1) = perf_fires(&std::fs::read_to_string(&perf_out)?)
        .with_context(|| format!("no count in {}", perf_out.display()))?;
    let (first, now) = wait_closed(&ns, Duration::from_secs(10))?;
    if now > 0 {
        bail!("{now} of {first} storm sockets did not close within 10 s");
    }
    // The tracer reads the ring at least every 50 ms; give it time to write the rest.
    std::thread::sleep(Duration::from_millis(500));
    let stop = tracer.stop(libc::SIGINT, Duration::from_secs(60))?;
    if !stop.success() {
        bail!(
            "netmon exited with {stop}: {}",
            std::fs::read_to_string(&errors).unwrap_or_default()
        );
    }
    let (written, lost) = read_output(&json, ns.inum, FIRST_PORT..=last)?;
    std::fs::remove_file(&json).ok();
    drop(ns);
    sys::wait_idle(Duration::from_secs(3));
    Ok(Counted {
        v6,
        connections,
        fired,
        fired_on_pid1,
        written,
        lost,
    })
}

/// perf needs tracefs to find the tracepoint: the child mounts one in a mount namespace of
/// its own, so the machine's mounts stay as they are.
pub(super) fn private_tracefs(cmd: &mut std::process::Command) {
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let none = std::ptr::null();
            if libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                none.cast(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // Fails harmlessly (EBUSY) where one is mounted already.
            libc::mount(
                c"tracefs".as_ptr(),
                c"/sys/kernel/tracing".as_ptr(),
                c"tracefs".as_ptr(),
                0,
                none.cast(),
            );
            Ok(())
        });
    }
}

/// Every count of the tracepoint in `perf stat -x ,` output (`COUNT,,EVENT,...`), in the order
/// of the `-e`s.
fn perf_counts(text: &str) -> Vec<Option<u64>> {
    text.lines()
        .filter(|l| l.contains("sock:inet_sock_set_state"))
        .map(|l| l.split(',').next()?.trim().parse().ok())
        .collect()
}

/// `perf stat` arguments counting the tracepoint's fires that pass `filter` twice: all of
/// them, and those that fired while a thread of PID 1 was the CPU's current task. On this
/// machine kind PID 1 is the sandbox's `process_api`, and the kernel runs no tracing program
/// (and records no perf sample) for a fire that lands on one of its threads, say in a softirq
/// on top of it, while perf's counters still count it: netmon reports those as `not_run`
/// (docs/kernel-notes.md). The second count tells how many of a run's fires were such.
pub(super) fn fire_events(filter: &str) -> Vec<String> {
    let mut args = vec![
        "-e".to_string(),
        TRACEPOINT.to_string(),
        "--filter".to_string(),
        filter.to_string(),
    ];
    if let Some(init) = pid1_threads_filter() {
        args.extend([
            "-e".to_string(),
            TRACEPOINT.to_string(),
            "--filter".to_string(),
            format!("({filter}) && ({init})"),
        ]);
    }
    args
}

const TRACEPOINT: &str = "sock:inet_sock_set_state";

/// A [`Counted::fired_on_pid1`] for the report.
pub(super) fn on_pid1(n: Option<u64>) -> String {
    n.map_or_else(|| "not counted".to_string(), |n| n.to_string())
}

/// `common_pid == T || ...` over PID 1's threads now, or None if they cannot be listed.
fn pid1_threads_filter() -> Option<String> {
    let threads: Vec<String> = std::fs::read_dir("/proc/1/task")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|t| t.parse::<u32>().is_ok())
        .map(|t| format!("common_pid == {t}"))
        .collect();
    (!threads.is_empty()).then(|| threads.join(" || "))
}

/// The counts of [`fire_events`]: (all fires, those on PID 1's threads if counted).
pub(super) fn perf_fires(text: &str) -> Option<(u64, Option<u64>)> {
    let counts = perf_counts(text);
    Some(((*counts.first()?)?, counts.get(1).copied().flatten()))
}

/// Transitions on the storm's ports in the storm's namespace, and the loss records by kind.
fn read_output(
    json: &Path,
    netns: u64,
    ports: std::ops::RangeInclusive<u16>,
) -> Result<(u64, Vec<(String, u64)>)> {
    let needle = format!("\"netns\":{netns},");
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(json)?);
    let mut line = String::new();
    let mut written = 0;
    let mut lost: Vec<(String, u64)> = Vec::new();
    while reader.read_line(&mut line)? > 0 {
        if line.starts_with("{\"type\":\"transition\"") && line.contains(&needle) {
            let on = |key| json_u64(&line, key).is_some_and(|p| ports.contains(&(p as u16)));
            if on("local_port") || on("peer_port") {
                written += 1;
            }
        } else if line.starts_with("{\"type\":\"loss\"") {
            let kind = json_str(&line, "kind").unwrap_or("?").to_string();
            let count = json_u64(&line, "count").unwrap_or(0);
            match lost.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += count,
                None => lost.push((kind, count)),
            }
        }
        line.clear();
    }
    Ok((written, lost))
}

pub fn rows(runs: &[Counted]) -> Vec<Row> {
    if runs.is_empty() {
        return Vec::new();
    }
    let exact = runs.iter().filter(|r| r.unaccounted() == 0).count();
    let (v4, v6) = (
        runs.iter().filter(|r| !r.v6).count(),
        runs.iter().filter(|r| r.v6).count(),
    );
    let fired: u64 = runs.iter().map(|r| r.fired).sum();
    let written: u64 = runs.iter().map(|r| r.written).sum();
    let lost: u64 = runs.iter().map(Counted::lost_total).sum();
    let pid1: Option<u64> = runs.iter().map(|r| r.fired_on_pid1).sum();
    vec![Row::new(
        format!(
            "fired (perf) = written + reported lost, max-rate runs ({v4} IPv4, {v6} IPv6; per run \
             below)"
        ),
        format!(
            "{exact} of {} runs; fired {fired} ({} on PID 1's threads), written {written}, \
             reported lost {lost}",
            runs.len(),
            on_pid1(pid1)
        ),
        "every run",
        Some(exact == runs.len()),
    )]
}

pub fn details(runs: &[Counted]) -> String {
    let mut s = String::from(
        "\n## Capture runs counted by perf\n\nFired: `perf stat -a -e sock:inet_sock_set_state` \
         filtered on the storm's ports. Written: transitions on those ports in netmon's JSON. \
         Reported lost: netmon's loss records (they cover all traffic netmon saw, not only the \
         storm's). Unaccounted: fired - written - reported lost, if positive. On PID 1: the \
         fired that a second perf counter, filtered on PID 1's threads as the current task, \
         counted (this machine kind's kernel runs no tracing program for those: `not_run`).\n\n\
         | run | family | connections | fired | on PID 1 | written | reported lost | \
         unaccounted |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (i, r) in runs.iter().enumerate() {
        let lost = if r.lost.is_empty() {
            "0".to_string()
        } else {
            r.lost
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "| {} | IPv{} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            if r.v6 { 6 } else { 4 },
            r.connections,
            r.fired,
            on_pid1(r.fired_on_pid1),
            r.written,
            lost,
            r.unaccounted()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_csv_counts_are_read() {
        let text = "# started on Tue\n\n1234567,,sock:inet_sock_set_state,3001,100.00,,\n";
        assert_eq!(perf_fires(text), Some((1_234_567, None)));
    }

    #[test]
    fn both_counts_of_fire_events_are_read_in_order() {
        let text = "100,,sock:inet_sock_set_state,3001,100.00,,\n\
                    7,,sock:inet_sock_set_state,3001,100.00,,\n";
        assert_eq!(perf_fires(text), Some((100, Some(7))));
        let one = "100,,sock:inet_sock_set_state,3001,100.00,,\n";
        assert_eq!(perf_fires(one), Some((100, None)));
        assert_eq!(
            perf_fires("<not counted>,,sock:inet_sock_set_state,0,0,,"),
            None
        );
    }

    #[test]
    fn the_pid1_count_filters_the_same_fires_on_pid1s_threads() {
        let args = fire_events("sport == 1");
        assert_eq!(args[..4], ["-e", TRACEPOINT, "--filter", "sport == 1"]);
        // PID 1 always exists where the tests run; its main thread is task 1.
        assert_eq!(args[4..7], ["-e", TRACEPOINT, "--filter"]);
        assert!(
            args[7].starts_with("(sport == 1) && (common_pid == "),
            "{}",
            args[7]
        );
        assert!(args[7].contains("common_pid == 1)") || args[7].contains("common_pid == 1 "));
    }

    #[test]
    fn unaccounted_is_what_no_loss_covers() {
        let r = Counted {
            fired: 100,
            written: 90,
            lost: vec![("ring_full".into(), 4), ("not_run".into(), 2)],
            ..Counted::default()
        };
        assert_eq!(r.unaccounted(), 4);
        let r = Counted {
            fired: 100,
            written: 100,
            ..Counted::default()
        };
        assert_eq!(r.unaccounted(), 0);
    }
}
