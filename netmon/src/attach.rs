//! Loads the eBPF program into the kernel, attaches it to `inet_sock_set_state`, and reads the
//! kernel-side loss counters. The only module that talks to the BPF syscall.
//!
//! Only the transition programs are required; the hint programs attach where the kernel has
//! their tracepoints (see [`crate::features`]), and what is missing is reported, not fatal.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
};
use netmon_common::{
    Counter, DEFAULT_RING_BYTES, DEFAULT_WAKEUP_BYTES, GLOBAL_FILTER, GLOBAL_OFFSETS,
    GLOBAL_WAKEUP_BYTES, HINT_PROGRAMS, KernelFilter, MAP_COUNTERS, MAP_EVENTS, PROGRAM_SLOTS,
    SockOffsets, TRACEPOINT, TRANSITION_PROGRAMS,
};

use crate::{
    clones::Clones,
    features::{Feature, Support},
    fires::{FireCounter, FiresError, NotRun},
    offsets,
};

/// The compiled eBPF object, built by build.rs from the netmon-ebpf crate.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netmon"));

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "this netmon was built without its eBPF program (AYA_BUILD_SKIP, or no bpf-linker): \
         run `cargo xtask setup`, then build again"
    )]
    NoProgram,
    #[error(
        "loading eBPF programs needs privileges: run as root (sudo), or grant CAP_BPF and \
         CAP_PERFMON (CAP_SYS_ADMIN on older kernels)"
    )]
    Privileges,
    #[error(transparent)]
    Offsets(#[from] offsets::OffsetError),
    #[error("reading kernel BTF for the tracepoint")]
    Btf(#[from] aya::BtfError),
    #[error("loading the eBPF object")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("the eBPF object has no {what} named {name} (build mismatch)")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error("reading info of eBPF program {name}")]
    ProgInfo {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("ring buffer size {bytes} is not a power of two of at least 4096 bytes (a page)")]
    RingSize { bytes: u32 },
    #[error(
        "this kernel has no BTF tracepoint {name}: netmon needs Linux 5.12 or later built with \
         CONFIG_DEBUG_INFO_BTF (`netmon features` lists what it found)"
    )]
    NoTracepoint { name: &'static str },
    #[error(transparent)]
    Fires(#[from] FiresError),
    #[error("reading the tracepoint's perf counters: {0}")]
    FiresRead(std::io::Error),
}

/// How to load the program.
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    /// Ring buffer size in bytes: a power of two, at least a page.
    pub ring_bytes: u32,
    /// Wake the reader once this many bytes wait; 0 wakes it for every event.
    pub wakeup_bytes: u64,
    /// What the program may drop before it reaches the ring.
    pub filter: KernelFilter,
    /// Also attach the owner and reset hint programs (see netmon-ebpf), where the kernel has
    /// their tracepoints.
    pub hints: bool,
    /// Count the tracepoint's fires with perf counters too, to report those no copy of the
    /// program was run for ([`KernelCounters::not_run`]).
    pub count_fires: bool,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            ring_bytes: DEFAULT_RING_BYTES,
            wakeup_bytes: DEFAULT_WAKEUP_BYTES,
            filter: KernelFilter::ALL,
            hints: true,
            count_fires: true,
        }
    }
}

/// Cumulative kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Transitions that passed the in-kernel filter.
    pub seen: u64,
    /// Events dropped because the ring buffer was full.
    pub ring_full: u64,
    /// Transitions the primary program was skipped for (nested on its CPU).
    pub primary_misses: u64,
    /// Of those, the ones a fallback copy handled.
    pub recovered: u64,
    /// Owner and reset hints dropped because the ring was full.
    pub hints_ring_full: u64,
    /// Times the kernel reached the first copy of the program: its runs plus its recursion
    /// misses (all namespaces and inet protocols).
    pub fired: u64,
    /// Fires the perf counters on the tracepoint saw that the kernel ran no copy of the
    /// program for, not even to count a recursion miss (all namespaces and inet protocols);
    /// `None` without fire counting.
    pub not_run: Option<u64>,
}

impl KernelCounters {
    /// Transitions no copy of the program handled: skipped by the kernel's recursion guard
    /// each time. `duplicates` (transitions userspace received twice, see `Table::apply`) were
    /// counted as recovered although the first copy had handled them.
    pub fn recursion_lost(&self, duplicates: u64) -> u64 {
        self.primary_misses
            .saturating_sub(self.recovered.saturating_sub(duplicates))
    }
}

/// The loaded and attached program; detaches when dropped.
pub struct Probe {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    /// Most records one [`Probe::drain`] takes: a full ring's worth, so that a reader facing a
    /// producer as fast as itself still returns to check for Ctrl-C.
    batch: usize,
    /// What this kernel lacks, and so was not attached or is not counted.
    support: Support,
    /// Gives new accepted sockets their own identity on kernels that report them early.
    clones: Clones,
    /// The independent count of fires, what the first copy had counted when it was opened,
    /// and the check of one against the other.
    fires: Option<(FireCounter, u64, NotRun)>,
    /// Why fire counting was asked for and is off.
    fire_count_off: Option<FiresError>,
}

impl Probe {
    /// What can fail before anything is read or loaded.
    fn check(config: &ProbeConfig) -> Result<(), AttachError> {
        if EBPF_OBJECT.is_empty() {
            return Err(AttachError::NoProgram);
        }
        if !has_bpf_privileges() {
            return Err(AttachError::Privileges);
        }
        let bytes = config.ring_bytes;
        if bytes < 4096 || !bytes.is_power_of_two() {
            return Err(AttachError::RingSize { bytes });
        }
        Ok(())
    }

    /// Checks privileges, resolves offsets from BTF, loads and attaches the programs.
    pub fn attach(config: &ProbeConfig) -> Result<Self, AttachError> {
        Self::check(config)?;
        let layout = offsets::Layout::from_kernel()?;
        Self::attach_with(config, layout.sock?, layout.support)
    }

    /// [`Probe::attach`] with the offsets and support already read from BTF
    /// ([`offsets::Layout`]).
    pub fn attach_with(
        config: &ProbeConfig,
        offsets: SockOffsets,
        mut support: Support,
    ) -> Result<Self, AttachError> {
        Self::check(config)?;
        let bytes = config.ring_bytes;
        if !support.transitions {
            return Err(AttachError::NoTracepoint { name: TRACEPOINT });
        }
        let mut filter = config.filter;
        if offsets.cgroup_mode != netmon_common::CGROUP_MODE_SOCKET {
            // The task fallback has no id for softirq transitions: userspace gives them the
            // socket's (see `Pipeline::record`) and filters them there.
            filter.cgroup_id = 0;
        }
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_OFFSETS, &offsets, true)
            .override_global(GLOBAL_FILTER, &filter, true)
            .override_global(GLOBAL_WAKEUP_BYTES, &config.wakeup_bytes, true)
            .map_max_entries(MAP_EVENTS, bytes)
            .load(EBPF_OBJECT)
            .map_err(permission_or(AttachError::Load))?;
        let btf = Btf::from_sys_fs()?;
        // Order matters: the kernel runs a tracepoint's probes in attach order, and the
        // fallbacks must run after the first copy (see netmon-ebpf).
        for name in TRANSITION_PROGRAMS {
            attach_program(&mut ebpf, &btf, name, TRACEPOINT)?;
        }
        if config.hints {
            for (name, tracepoint) in HINT_PROGRAMS {
                let Some(feature) = Feature::of_program(name) else {
                    attach_program(&mut ebpf, &btf, name, tracepoint)?;
                    continue;
                };
                if !support.has(feature) {
                    continue;
                }
                match attach_program(&mut ebpf, &btf, name, tracepoint) {
                    Ok(()) => {}
                    // The program is a build mismatch, not the kernel's doing.
                    Err(e @ AttachError::Missing { .. }) => return Err(e),
                    Err(e) => support.lack(feature, e.to_string()),
                }
            }
        }
        let ring = take_map(&mut ebpf, MAP_EVENTS)?;
        let ring = RingBuf::try_from(ring).map_err(|source| AttachError::Map {
            name: MAP_EVENTS,
            source,
        })?;
        let counters = take_map(&mut ebpf, MAP_COUNTERS)?;
        let counters = PerCpuArray::try_from(counters).map_err(|source| AttachError::Map {
            name: MAP_COUNTERS,
            source,
        })?;
        let mut probe = Self {
            ebpf,
            ring,
            counters,
            batch: bytes as usize / (size_of::<netmon_common::SockEvent>() + 8),
            support,
            clones: Clones::default(),
            fires: None,
            fire_count_off: None,
        };
        if config.count_fires {
            // Opened after the programs are attached, so every fire it counts could reach them;
            // the baseline is read before it, so a fire in between counts as run, never as
            // lost.
            let base = probe.read_counters()?.fired;
            // Without tracefs, and in a sandbox that forbids the private mount (the unit's
            // RestrictNamespaces and system-call filter), there is no perf id: trace on
            // without the independent count, and say so (`fire_count_off`).
            match FireCounter::open() {
                Ok(counter) => probe.fires = Some((counter, base, NotRun::default())),
                Err(e) => probe.fire_count_off = Some(e),
            }
        }
        // Parsing the kernel's BTF (twice: for offsets and for attaching) peaks at tens of MB
        // that are free again now; hand them back so a long-running agent does not keep them.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
        Ok(probe)
    }

    /// Why the fire count that was asked for is off (no perf id of the tracepoint).
    pub fn fire_count_off(&self) -> Option<&FiresError> {
        self.fire_count_off.as_ref()
    }

    /// What this kernel lacks: each missing feature was left out, not fatal.
    pub fn support(&self) -> &Support {
        &self.support
    }

    /// LISTEN -> SYN-RECV records that never met their socket's next transition and were
    /// passed on with the identity the kernel gave them (see [`crate::clones`]).
    pub fn unpaired_clones(&self) -> u64 {
        self.clones.unpaired
    }

    /// Calls `f` with each waiting record, oldest first, up to a ring's worth; returns how
    /// many there were and whether more may be waiting.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> Drained {
        let mut n = 0;
        let mut more = true;
        while n < self.batch {
            let Some(item) = self.ring.next() else {
                more = false;
                break;
            };
            self.clones.push(&item, &mut f);
            n += 1;
        }
        // Records held for their socket's next transition go out once it is overdue; not
        // while the ring still holds records, among which the next transition may wait.
        if !more {
            self.clones
                .expire(crate::clock::Clock::mono_now_ns(), &mut f);
        }
        Drained { records: n, more }
    }

    /// Reads the cumulative counters (a few syscalls: call it on a timer, not per event). A
    /// fire no copy ran for shows in `not_run` from the second reading that sees it on.
    pub fn counters(&mut self) -> Result<KernelCounters, AttachError> {
        // perf first: a fire it counts has reached, or is about to reach, the programs.
        let perf = match &self.fires {
            Some((counter, _, _)) => Some(counter.read().map_err(AttachError::FiresRead)?),
            None => None,
        };
        let mut now = self.read_counters()?;
        if let (Some(perf), Some((_, base, not_run))) = (perf, &mut self.fires) {
            now.not_run = Some(not_run.update(perf, now.fired.saturating_sub(*base)));
        }
        Ok(now)
    }

    fn read_counters(&self) -> Result<KernelCounters, AttachError> {
        let sum = |c: Counter| -> Result<u64, AttachError> {
            let mut total = 0;
            for prog in 0..PROGRAM_SLOTS {
                let values = self
                    .counters
                    .get(&(c as u32 * PROGRAM_SLOTS + prog), 0)
                    .map_err(|source| AttachError::Map {
                        name: MAP_COUNTERS,
                        source,
                    })?;
                total += values.iter().sum::<u64>();
            }
            Ok(total)
        };
        // Misses before recoveries: the kernel counts a miss before the fallback copy runs
        // and counts its recovery, so in this order `recursion_lost()` can lag, never exceed.
        let primary_misses = if self.support.has(Feature::RecursionCounts) {
            self.recursion_misses(TRANSITION_PROGRAMS[0])?
        } else {
            0
        };
        Ok(KernelCounters {
            seen: sum(Counter::Seen)?,
            ring_full: sum(Counter::RingFull)?,
            recovered: sum(Counter::Recovered)?,
            hints_ring_full: sum(Counter::HintRingFull)?,
            fired: sum(Counter::Fired)? + primary_misses,
            primary_misses,
            not_run: None,
        })
    }

    fn recursion_misses(&self, name: &'static str) -> Result<u64, AttachError> {
        let prog = self.ebpf.program(name).ok_or(AttachError::Missing {
            what: "program",
            name,
        })?;
        let fd = prog
            .fd()
            .map_err(|source| AttachError::Program { name, source })?;
        prog_recursion_misses(fd.as_fd()).map_err(|source| AttachError::ProgInfo { name, source })
    }
}

/// What one [`Probe::drain`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    pub records: usize,
    /// The batch limit was reached: drain again without waiting.
    pub more: bool,
}

/// Waits until the ring has something to read: the program woke us, or the tick passed (the
/// program wakes the reader only once `wakeup_bytes` wait), or at once after a cut-short drain.
pub struct RingWaiter {
    fd: tokio::io::unix::AsyncFd<RawRingFd>,
    tick: tokio::time::Interval,
}

struct RawRingFd(std::os::fd::RawFd);

impl AsRawFd for RawRingFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

impl RingWaiter {
    /// `probe` must outlive the waiter (it owns the fd).
    pub fn new(probe: &Probe, tick: std::time::Duration) -> std::io::Result<Self> {
        let fd = RawRingFd(probe.ring.as_raw_fd());
        // SAFETY: the fd is owned by the probe, which the caller keeps alive and unchanged
        // while the waiter is registered.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)?
        };
        let mut tick = tokio::time::interval(tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self { fd, tick })
    }

    pub async fn wait(&mut self, more: bool) -> std::io::Result<()> {
        if more {
            // Yield rather than loop: the runtime then polls its drivers (signals, sockets).
            tokio::task::yield_now().await;
            return Ok(());
        }
        tokio::select! {
            guard = self.fd.readable() => guard?.clear_ready(),
            _ = self.tick.tick() => {}
        }
        Ok(())
    }
}

/// Loads program `name` and attaches it to BTF tracepoint `tracepoint`.
fn attach_program(
    ebpf: &mut Ebpf,
    btf: &Btf,
    name: &'static str,
    tracepoint: &str,
) -> Result<(), AttachError> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or(AttachError::Missing {
            what: "program",
            name,
        })?
        .try_into()
        .map_err(|source| AttachError::Program { name, source })?;
    prog.load(tracepoint, btf)
        .and_then(|()| prog.attach().map(drop))
        .map_err(|source| AttachError::Program { name, source })
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, AttachError> {
    ebpf.take_map(name)
        .ok_or(AttachError::Missing { what: "map", name })
}

/// The embedded eBPF object, or why this build has none.
pub(crate) fn object() -> Result<&'static [u8], AttachError> {
    if EBPF_OBJECT.is_empty() {
        return Err(AttachError::NoProgram);
    }
    Ok(EBPF_OBJECT)
}

/// EPERM/EACCES while loading means missing capabilities whatever the capability check said
/// (e.g. a LSM or a user namespace): report it the same way.
pub(crate) fn permission_or(
    wrap: fn(aya::EbpfError) -> AttachError,
) -> impl Fn(aya::EbpfError) -> AttachError {
    move |e| {
        // The errno sits somewhere down the chain of sources, worded by each layer.
        let mut cause: Option<&dyn std::error::Error> = Some(&e);
        let mut denied = false;
        while let Some(c) = cause {
            let text = c.to_string();
            denied |=
                text.contains("Operation not permitted") || text.contains("Permission denied");
            cause = c.source();
        }
        if denied {
            AttachError::Privileges
        } else {
            wrap(e)
        }
    }
}

/// `bpf_prog_info.recursion_misses` (Linux 5.12+): aya 0.14's `ProgramInfo` does not expose it.
fn prog_recursion_misses(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    // SAFETY: an all-integer C struct; zero is a valid value.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: &raw mut info as u64,
    };
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: attr points at a live InfoAttr whose `info` points at a buffer of `info_len` bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            size_of::<InfoAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}

/// Root, or CAP_BPF + CAP_PERFMON (Linux 5.8+), or CAP_SYS_ADMIN, in the effective set.
pub fn has_bpf_privileges() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    caps_allow_bpf(cap_eff)
}

fn caps_allow_bpf(cap_eff: u64) -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let has = |cap: u32| cap_eff & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets_that_allow_loading() {
        assert!(!caps_allow_bpf(0));
        assert!(caps_allow_bpf(1 << 21));
        assert!(caps_allow_bpf((1 << 38) | (1 << 39)));
        assert!(
            !caps_allow_bpf(1 << 39),
            "CAP_BPF alone cannot attach tracing programs"
        );
    }

    #[test]
    fn recursion_lost_never_underflows() {
        let c = KernelCounters {
            primary_misses: 3,
            recovered: 5,
            ..Default::default()
        };
        assert_eq!(c.recursion_lost(0), 0);
        let c = KernelCounters {
            primary_misses: 7,
            recovered: 5,
            ..Default::default()
        };
        assert_eq!(c.recursion_lost(0), 2);
        assert_eq!(c.recursion_lost(1), 3, "a duplicate was no recovery");
    }
}
