//! What the bench needs from the system, small and without the `netmon` crate (building that
//! needs the eBPF toolchain xtask installs): named network namespaces and child processes that
//! clean up after themselves, /proc readings, and the kernel's own counters of a BPF program.

use std::{
    fs::File,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{fs::MetadataExt, process::CommandExt},
    },
    path::Path,
    process::{Child, Command, ExitStatus},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A network namespace made with `ip netns add` (so it can be inspected while the bench runs),
/// with `lo` up; `ip netns del` on drop, also when the bench fails.
pub struct Netns {
    pub name: String,
    pub inum: u64,
    file: File,
}

impl Netns {
    pub fn create(name: String) -> Result<Self> {
        run_quiet("ip", &["netns", "add", &name])?;
        // From here on the guard owns it: any error below still deletes it.
        let open = File::open(format!("/run/netns/{name}"));
        let guard = |file: File| Netns {
            inum: file.metadata().map(|m| m.ino()).unwrap_or(0),
            name: name.clone(),
            file,
        };
        let ns = match open {
            Ok(file) => guard(file),
            Err(e) => {
                let _ = run_quiet("ip", &["netns", "del", &name]);
                return Err(e).with_context(|| format!("opening /run/netns/{name}"));
            }
        };
        run_quiet("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs inside this namespace: the child joins it between fork and exec,
    /// which costs nothing measurable (unlike `ip netns exec`, which also remounts /sys).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.file.as_raw_fd();
        // SAFETY: setns is async-signal-safe and `fd` stays open in the parent (the child's
        // copy is closed at exec by O_CLOEXEC, after setns).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_quiet("ip", &["netns", "del", &self.name]) {
            eprintln!("bench: could not delete netns {}: {e:#}", self.name);
        }
    }
}

/// Namespaces named `<prefix><pid>-...` whose bench process no longer exists: what an
/// interrupted run (Ctrl-C skips destructors) left behind.
pub fn remove_stale_netns(prefix: &str) {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("bench: removing netns {name} left by an interrupted run");
            let _ = run_quiet("ip", &["netns", "del", &name]);
        }
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL, by pid) and reaped on drop.
pub struct Proc {
    child: Child,
    what: String,
    done: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, what: impl Into<String>) -> Result<Self> {
        let what = what.into();
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        Ok(Self {
            child,
            what,
            done: None,
        })
    }

    /// Takes charge of a child spawned elsewhere.
    pub fn adopt(child: Child, what: impl Into<String>) -> Self {
        Self {
            child,
            what: what.into(),
            done: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Exit status if it has exited (reaping it).
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.done.is_none() {
            self.done = self.child.try_wait()?;
        }
        Ok(self.done)
    }

    /// Waits up to `timeout` for the process to exit on its own. Sleeps in poll() on a pidfd,
    /// which wakes at the exit: the snapshot timings need sub-millisecond precision.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        // SAFETY: pidfd_open on our own unreaped child; the fd is owned below.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, self.child.id(), 0) };
        // SAFETY: a fresh fd from the kernel, or none.
        let pidfd = (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw as i32) });
        loop {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{} did not exit within {timeout:?}", self.what);
            }
            match &pidfd {
                Some(fd) => {
                    let mut pfd = libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    let ms = left.as_millis().clamp(1, 1000) as i32;
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut pfd, 1, ms) };
                }
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Sends `signal` and waits up to `timeout` for the exit.
    pub fn stop(&mut self, signal: i32, timeout: Duration) -> Result<ExitStatus> {
        if self.exited()?.is_none() {
            // SAFETY: signalling our own, not yet reaped child by pid.
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
        self.wait(timeout)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.stop(libc::SIGTERM, Duration::from_secs(5)).is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn run_quiet(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// CPU time a process has used, user and system, in seconds (/proc/PID/stat fields 14, 15).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTime {
    pub user: f64,
    pub system: f64,
}

impl CpuTime {
    pub fn total(self) -> f64 {
        self.user + self.system
    }

    pub fn since(self, before: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - before.user,
            system: self.system - before.system,
        }
    }
}

pub fn cpu_time(pid: u32) -> Result<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; it ends at the last ')'.
    let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let secs = |i: usize| -> Result<f64> {
        let ticks: u64 = fields.get(i).context("short /proc/PID/stat")?.parse()?;
        Ok(ticks as f64 / hz)
    };
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    Ok(CpuTime {
        user: secs(11)?,
        system: secs(12)?,
    })
}

/// IRQ-work interrupts on all CPUs so far (the `IWI` line of /proc/interrupts). A BPF ring
/// buffer wakes its reader through irq_work, one self-interrupt per wake-up: this counts them.
pub fn irq_work_interrupts() -> u64 {
    std::fs::read_to_string("/proc/interrupts")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("IWI:"))
        .map(|l| {
            l.split_whitespace()
                .map_while(|n| n.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// A `Vm*:` line of /proc/PID/status, in KiB.
pub fn vm_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Resets a process's peak resident size (VmHWM) to its current one (`clear_refs` 5), so that
/// the next reading is the peak of what ran since.
pub fn reset_hwm(pid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid}"))
}

/// BPF programs and links a process holds, from the `prog_id:`/`link_id:` lines of its fdinfo.
#[derive(Debug, Default)]
pub struct BpfFds {
    pub prog_ids: Vec<u32>,
    pub map_ids: Vec<u32>,
    pub links: usize,
}

pub fn bpf_fds(pid: u32) -> BpfFds {
    let mut found = BpfFds::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in info.lines() {
            if line.starts_with("link_id:") {
                found.links += 1;
            } else if let Some(id) = line.strip_prefix("prog_id:")
                && let Ok(id) = id.trim().parse()
                && !found.prog_ids.contains(&id)
            {
                found.prog_ids.push(id);
            } else if let Some(id) = line.strip_prefix("map_id:")
                && let Ok(id) = id.trim().parse()
                && !found.map_ids.contains(&id)
            {
                found.map_ids.push(id);
            }
        }
    }
    found.prog_ids.sort_unstable();
    found
}

/// The part of `struct bpf_prog_info` (include/uapi/linux/bpf.h) the bench reads.
#[derive(Clone, Debug, Default)]
pub struct ProgInfo {
    pub name: String,
    /// Times the kernel skipped the program because it was already running on that CPU.
    pub recursion_misses: u64,
    /// Time in the program and runs, counted only while statistics are on ([`BpfStats`]).
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// `BPF_PROG_GET_FD_BY_ID` then `BPF_OBJ_GET_INFO_BY_FD` (what bpftool does; it is not
/// installed here).
pub fn prog_info(id: u32) -> Result<ProgInfo> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // Offsets in struct bpf_prog_info on 6.18 (checked with offsetof against the uapi header).
    const NAME: usize = 64;
    const NAME_LEN: usize = 16;
    const RUN_TIME_NS: usize = 192;
    const RUN_CNT: usize = 200;
    const RECURSION_MISSES: usize = 208;
    const INFO_LEN: usize = 232;

    #[repr(C)]
    struct GetFdAttr {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = GetFdAttr {
        prog_id: id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: attr is a live, correctly sized bpf_attr prefix.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            &attr as *const GetFdAttr,
            size_of::<GetFdAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_PROG_GET_FD_BY_ID");
    }
    // SAFETY: the kernel just returned this fd to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // u64 elements: the kernel writes __aligned_u64 fields.
    let mut info = [0u64; INFO_LEN / 8];
    let attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: INFO_LEN as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `info` is a writable buffer of `info_len` bytes that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            size_of::<InfoAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_OBJ_GET_INFO_BY_FD");
    }
    let bytes: Vec<u8> = info.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let name = &bytes[NAME..NAME + NAME_LEN];
    let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN)];
    let u64_at = |off: usize| u64::from_ne_bytes(bytes[off..off + 8].try_into().expect("8 bytes"));
    Ok(ProgInfo {
        name: String::from_utf8_lossy(name).into_owned(),
        recursion_misses: u64_at(RECURSION_MISSES),
        run_time_ns: u64_at(RUN_TIME_NS),
        run_cnt: u64_at(RUN_CNT),
    })
}

fn bpf(cmd: libc::c_long, attr: &[u64]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a live bpf_attr prefix whose pointers the caller made valid.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), size_of_val(attr) as u32) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The per-CPU values, summed, of `key` in the map called `name` among `map_ids` (a
/// `BPF_MAP_TYPE_PERCPU_ARRAY` of u64, like netmon's COUNTERS).
pub fn percpu_map_sum(map_ids: &[u32], name: &str, key: u32) -> Result<u64> {
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // struct bpf_map_info: name at byte 24, 16 bytes.
    const INFO_LEN: usize = 88;
    for &id in map_ids {
        let fd = bpf(BPF_MAP_GET_FD_BY_ID, &[u64::from(id), 0])?;
        // SAFETY: a fresh fd from the kernel.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut info = [0u64; INFO_LEN / 8];
        let attr = [
            fd.as_raw_fd() as u64 | ((INFO_LEN as u64) << 32),
            info.as_mut_ptr() as u64,
        ];
        bpf(BPF_OBJ_GET_INFO_BY_FD, &attr)?;
        let bytes: Vec<u8> = info.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let raw = &bytes[24..40];
        let found = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(16)];
        if found != name.as_bytes() {
            continue;
        }
        // One u64 per possible CPU.
        let cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible")
            .ok()
            .and_then(|p| p.trim().rsplit(['-', ',']).next()?.parse::<usize>().ok())
            .map_or(256, |last| last + 1);
        let mut values = vec![0u64; cpus];
        let attr = [
            fd.as_raw_fd() as u64,
            (&raw const key) as u64,
            values.as_mut_ptr() as u64,
            0,
        ];
        bpf(BPF_MAP_LOOKUP_ELEM, &attr)?;
        return Ok(values.iter().sum());
    }
    bail!("no map named {name}")
}

/// While this lives, the kernel times every BPF program run (`BPF_ENABLE_STATS`, the fd-scoped
/// form of the kernel.bpf_stats_enabled sysctl): two clock reads per run, so off by default.
pub struct BpfStats {
    _fd: OwnedFd,
}

impl BpfStats {
    pub fn enable() -> Result<Self> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        let attr = [BPF_STATS_RUN_TIME, 0];
        // SAFETY: attr is a live, correctly sized bpf_attr prefix (enable_stats.type).
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                size_of_val(&attr) as u32,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("BPF_ENABLE_STATS");
        }
        Ok(Self {
            // SAFETY: a fresh fd from the kernel, owned by nothing else.
            _fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }
}

/// Waits (up to `max`) until the CPUs are mostly idle over a 200 ms window: the kernel worker
/// that purges a deleted namespace's sockets, or a neighbour's burst, should not land in the
/// next measurement. Returns the busy fraction last seen.
pub fn wait_idle(max: Duration) -> f64 {
    // (busy, total) jiffies from the first line of /proc/stat.
    let sample = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().take(8).sum();
        // idle and iowait are fields 4 and 5.
        let idle = v.get(3)? + v.get(4)?;
        Some((total - idle, total))
    };
    let deadline = Instant::now() + max;
    let mut busy = 1.0;
    while let Some((b0, t0)) = sample() {
        std::thread::sleep(Duration::from_millis(200));
        let Some((b1, t1)) = sample() else { break };
        busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
        if busy < 0.2 || Instant::now() >= deadline {
            break;
        }
    }
    busy
}

/// CPU time of every user process but this one and its descendants, by pid, in clock ticks
/// (/proc/PID/stat utime + stime; kernel threads, children of kthreadd, left out: they also do
/// the storm's own softirq and socket work). Two of these around a storm tell how much of the
/// machine other people's work took from it ([`foreign_cpu_since`]).
pub struct ProcessCpu(std::collections::HashMap<u32, (u32, u64)>);

pub fn process_cpu() -> ProcessCpu {
    let mut all = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return ProcessCpu(all);
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // fields[1] is field 4 (ppid); utime and stime are fields 14 and 15.
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
        if let (Some(ppid), Some(user), Some(system)) = (num(1), num(11), num(12)) {
            all.insert(pid, (ppid as u32, user + system));
        }
    }
    ProcessCpu(all)
}

/// The share of the CPUs (0..1) that processes other than this one, its descendants,
/// `helpers` and theirs, and the kernel's threads used since `before`, over `secs` of wall
/// time. Processes that started and ended in between are not seen.
pub fn foreign_cpu_since(before: &ProcessCpu, secs: f64, helpers: &[u32]) -> f64 {
    let ticks = foreign_ticks(before, &process_cpu(), std::process::id(), helpers);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    ticks as f64 / hz / (secs.max(1e-3) * cpus)
}

/// Ticks used between `before` and `now` by processes that are neither `me`, `helpers`, a
/// descendant of one of them, nor a kernel thread (pid 2 and its children).
fn foreign_ticks(before: &ProcessCpu, now: &ProcessCpu, me: u32, helpers: &[u32]) -> u64 {
    let ours = |mut pid: u32| {
        // Bounded: a parent chain is short, and a cycle cannot happen in /proc.
        for _ in 0..64 {
            if pid == me || helpers.contains(&pid) {
                return true;
            }
            if pid <= 2 {
                return pid == 2;
            }
            match now.0.get(&pid).or_else(|| before.0.get(&pid)) {
                Some(&(ppid, _)) => pid = ppid,
                None => return false,
            }
        }
        false
    };
    now.0
        .iter()
        .filter(|&(&pid, _)| !ours(pid))
        .map(|(pid, &(_, t))| t.saturating_sub(before.0.get(pid).map_or(0, |&(_, t0)| t0)))
        .sum()
}

/// Kernel, CPU count and CPU model, for the report's header.
pub fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            Some(
                l.strip_prefix("model name")?
                    .split_once(':')?
                    .1
                    .trim()
                    .to_owned(),
            )
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("Linux {}, nproc {cpus}, {model}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_other_peoples_processes_count_as_foreign() {
        // pid -> (ppid, ticks): 1 init; 2 kthreadd and its worker 3; 10 the bench, its
        // storm 11 and the storm's child 12; 20 a tmux server (a helper, detached under
        // init) with its child 21; 30 someone's build and its child 31; 40 started during
        // the run.
        let before = ProcessCpu(
            [
                (1, (0, 5)),
                (2, (0, 0)),
                (3, (2, 100)),
                (10, (1, 7)),
                (11, (10, 0)),
                (12, (11, 0)),
                (20, (1, 3)),
                (21, (20, 3)),
                (30, (1, 50)),
                (31, (30, 10)),
            ]
            .into(),
        );
        let now = ProcessCpu(
            [
                (1, (0, 6)),
                (2, (0, 0)),
                (3, (2, 400)),
                (10, (1, 9)),
                (11, (10, 300)),
                (12, (11, 50)),
                (20, (1, 13)),
                (21, (20, 33)),
                (30, (1, 70)),
                (31, (30, 15)),
                (40, (30, 4)),
            ]
            .into(),
        );
        // init 1 + build 20 + its child 5 + the new one 4.
        assert_eq!(foreign_ticks(&before, &now, 10, &[20]), 1 + 20 + 5 + 4);
        // Without the helper, tmux and its child count too.
        assert_eq!(foreign_ticks(&before, &now, 10, &[]), 30 + 10 + 30);
    }
}
