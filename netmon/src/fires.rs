//! An independent count of `inet_sock_set_state` fires: per-CPU perf counters on the
//! tracepoint, outside netmon's eBPF programs, and the check of that count against the fires
//! the programs were run for (see the "not run" notes in netmon-ebpf).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    process::Command,
};

/// Where the tracepoint's perf id is, under a tracefs mount.
const ID_IN_TRACEFS: &str = "events/sock/inet_sock_set_state/id";
/// The usual tracefs mounts; the last one is where a private mount goes.
const TRACEFS: [&str; 2] = ["/sys/kernel/debug/tracing", "/sys/kernel/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum FiresError {
    #[error(
        "finding the perf id of tracepoint sock/inet_sock_set_state: {detail}; mount tracefs \
         (`mount -t tracefs tracefs /sys/kernel/tracing`) or pass --no-fire-count"
    )]
    TracepointId { detail: String },
    // The io::Error is the `source`: `{:#}` prints it after the message, so the message does
    // not repeat it.
    #[error("opening a perf counter on the tracepoint for CPU {cpu}")]
    Open { cpu: u32, source: io::Error },
    #[error("reading the online CPUs ({path})")]
    Cpus {
        path: &'static str,
        source: io::Error,
    },
}

impl FiresError {
    /// The warning when fire counting was asked for and could not start: tracing goes on.
    pub fn off_warning(&self) -> String {
        format!(
            "WARNING: fire count off: {self}; tracing goes on, but fires of the tracepoint \
             that no copy of the program ran for cannot be counted"
        )
    }
}

/// One perf counter per online CPU, counting every fire of the tracepoint from the moment it
/// is opened, whoever runs on that CPU and whatever BPF does.
pub struct FireCounter {
    fds: Vec<OwnedFd>,
}

impl FireCounter {
    pub fn open() -> Result<Self, FiresError> {
        let id = tracepoint_id()?;
        const ONLINE: &str = "/sys/devices/system/cpu/online";
        let cpus = std::fs::read_to_string(ONLINE)
            .map_err(|source| FiresError::Cpus {
                path: ONLINE,
                source,
            })
            .and_then(|s| {
                parse_cpu_list(&s).ok_or(FiresError::Cpus {
                    path: ONLINE,
                    source: io::Error::new(io::ErrorKind::InvalidData, format!("{s:?}")),
                })
            })?;
        let fds = cpus
            .into_iter()
            .map(|cpu| open_counter(id, cpu).map_err(|source| FiresError::Open { cpu, source }))
            .collect::<Result<_, _>>()?;
        Ok(Self { fds })
    }

    /// Fires counted since [`FireCounter::open`], summed over CPUs.
    pub fn read(&self) -> io::Result<u64> {
        let mut total = 0;
        for fd in &self.fds {
            let mut value = 0u64;
            // SAFETY: reads 8 bytes into a u64 from a counting perf event fd.
            let n = unsafe { libc::read(fd.as_raw_fd(), (&raw mut value).cast(), 8) };
            if n != 8 {
                return Err(io::Error::last_os_error());
            }
            total += value;
        }
        Ok(total)
    }
}

/// `struct perf_event_attr` up to `config` (and zeros after): a counting event, enabled at once,
/// no sampling.
fn open_counter(tracepoint_id: u64, cpu: u32) -> io::Result<OwnedFd> {
    const PERF_TYPE_TRACEPOINT: u32 = 2;
    const ATTR_SIZE: u32 = 128;
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
    let mut attr = [0u8; ATTR_SIZE as usize];
    attr[0..4].copy_from_slice(&PERF_TYPE_TRACEPOINT.to_ne_bytes());
    attr[4..8].copy_from_slice(&ATTR_SIZE.to_ne_bytes());
    attr[8..16].copy_from_slice(&tracepoint_id.to_ne_bytes());
    // SAFETY: attr is a zero-extended perf_event_attr of the size it declares; pid -1 with a
    // CPU counts every task on that CPU.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1 as libc::pid_t,
            cpu as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The tracepoint's perf id from tracefs. If no tracefs is mounted, a child mounts one in a
/// mount namespace of its own (nothing changes for the rest of the machine) and reads it there.
fn tracepoint_id() -> Result<u64, FiresError> {
    for root in TRACEFS {
        if let Ok(text) = std::fs::read_to_string(Path::new(root).join(ID_IN_TRACEFS)) {
            return parse_id(&text);
        }
    }
    let mount_point = TRACEFS[1];
    let mut cmd = Command::new("cat");
    cmd.arg(Path::new(mount_point).join(ID_IN_TRACEFS));
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Keep the mount from propagating back to the machine's namespace.
            let root = c"/";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            let fs = c"tracefs";
            let target = c"/sys/kernel/tracing";
            if libc::mount(
                fs.as_ptr(),
                target.as_ptr(),
                fs.as_ptr(),
                0,
                std::ptr::null(),
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let out = cmd.output().map_err(|e| FiresError::TracepointId {
        detail: format!("mounting tracefs privately: {e}"),
    })?;
    if !out.status.success() {
        return Err(FiresError::TracepointId {
            detail: format!(
                "reading it from a private tracefs mount: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    parse_id(&String::from_utf8_lossy(&out.stdout))
}

fn parse_id(text: &str) -> Result<u64, FiresError> {
    text.trim().parse().map_err(|_| FiresError::TracepointId {
        detail: format!("not a number: {:?}", text.trim()),
    })
}

/// `0-3,5,7-8` (the kernel's cpu list format) to CPU numbers.
fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if a > b || b - a > 4096 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// Fires the perf counters saw that no copy of the program was run for, from successive
/// readings of both counts (both cumulative, from the same start).
///
/// The two counts are read one after the other, not at once, and the kernel runs perf's probe
/// and netmon's at different places of the tracepoint's probe list: a fire under way when the
/// counters are read (or whose CPU the hypervisor stopped in between) can be in one count and
/// not yet in the other. Such a difference is gone at the next reading, while a fire the
/// programs never ran for stays missing for good: a shortfall counts once two readings in a
/// row show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotRun {
    /// The shortfall at the previous reading.
    last: u64,
    /// Confirmed so far (never decreases).
    confirmed: u64,
}

impl NotRun {
    /// One reading: `fired` by perf, `run` = runs of the first copy plus its recursion
    /// misses (every time the kernel reached it). Returns the confirmed total so far.
    pub fn update(&mut self, fired: u64, run: u64) -> u64 {
        let short = fired.saturating_sub(run);
        self.confirmed = self.confirmed.max(short.min(self.last));
        self.last = short;
        self.confirmed
    }

    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_printed_once() {
        let denied = || io::Error::from_raw_os_error(libc::EACCES);
        let errors = [
            FiresError::Open {
                cpu: 1,
                source: denied(),
            },
            FiresError::Cpus {
                path: "/sys/devices/system/cpu/online",
                source: denied(),
            },
        ];
        for e in errors {
            let text = format!("{:#}", anyhow::Error::new(e));
            assert_eq!(text.matches(&denied().to_string()).count(), 1, "{text}");
        }
        let text = format!(
            "{:#}",
            anyhow::Error::new(crate::attach::AttachError::Fires(FiresError::Open {
                cpu: 0,
                source: denied(),
            }))
        );
        assert_eq!(
            text,
            format!(
                "opening a perf counter on the tracepoint for CPU 0: {}",
                denied()
            )
        );
    }

    #[test]
    fn cpu_lists_in_the_kernel_format() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0,2-3,7"), Some(vec![0, 2, 3, 7]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list(""), None);
    }

    #[test]
    fn tracepoint_ids_are_numbers() {
        assert_eq!(parse_id("1742\n").unwrap(), 1742);
        assert!(parse_id("nope").is_err());
    }

    #[test]
    fn a_shortfall_counts_once_two_readings_show_it() {
        let mut n = NotRun::default();
        assert_eq!(n.update(100, 100), 0);
        // A fire under way: perf has it, the program not yet.
        assert_eq!(n.update(201, 200), 0);
        assert_eq!(
            n.update(300, 300),
            0,
            "gone at the next reading: nothing lost"
        );
        // 5 fires the program never ran for.
        assert_eq!(n.update(405, 400), 0, "not yet confirmed");
        assert_eq!(n.update(505, 500), 5);
        // The program ahead of perf for a moment hides nothing already confirmed.
        assert_eq!(n.update(600, 602), 5);
        assert_eq!(n.update(707, 700), 5);
        assert_eq!(n.update(807, 800), 7);
        assert_eq!(n.confirmed(), 7);
    }
}
