//! Capabilities: after attaching, the agent keeps only those its requests still need.
//!
//! Measured (README "Install"): answering a snapshot needs CAP_SYS_ADMIN (setns into the
//! client's network namespace), CAP_SYS_PTRACE (open the client's /proc/PID/ns/net) and
//! CAP_DAC_READ_SEARCH (list other users' /proc/PID/fd for owners). Loading and attaching
//! (CAP_BPF, CAP_PERFMON) is over by then, and nothing else was ever needed.

use std::io;

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SETPCAP: u32 = 8;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;

/// What the agent keeps once it serves.
pub const AGENT_KEEPS: &[u32] = &[CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH];

/// linux/capability.h `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;
/// Capability numbers run below 64 (41 on 6.18).
const LAST_CAP_BOUND: u32 = 64;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The bit mask of `caps`.
pub fn mask(caps: &[u32]) -> u64 {
    caps.iter()
        .filter(|&&c| c < 64)
        .fold(0, |m, &c| m | (1u64 << c))
}

/// Reduces this thread's capabilities to `keep` (those of them it has): effective, permitted
/// and, when it may (CAP_SETPCAP), the bounding set; the inheritable set is emptied. Threads
/// started afterwards inherit the result; threads already running keep theirs, so call it
/// before starting any.
pub fn keep_only(keep: &[u32]) -> io::Result<()> {
    let keep = mask(keep);
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two `Data` for version 3, and `data` holds two.
    if unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let effective = u64::from(data[0].effective) | (u64::from(data[1].effective) << 32);
    if effective & mask(&[CAP_SETPCAP]) != 0 {
        for cap in (0..LAST_CAP_BOUND).filter(|c| keep & (1u64 << c) == 0) {
            // SAFETY: prctl with integer arguments only. EINVAL past the kernel's last
            // capability is expected and ignored.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        }
    }
    for (word, d) in data.iter_mut().enumerate() {
        let keep = (keep >> (32 * word)) as u32;
        d.permitted &= keep;
        d.effective &= d.permitted;
        d.inheritable = 0;
    }
    // SAFETY: capset reads the header and two `Data` for version 3.
    if unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A capability mask from /proc status text (`CapEff:\t0000000000200000`), for `field`.
pub fn status_mask(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_status_lines() {
        assert_eq!(mask(AGENT_KEEPS), (1 << 21) | (1 << 19) | (1 << 2));
        let status = "Name:\tnetmon\nCapInh:\t0000000000000000\nCapEff:\t0000000000280004\n";
        assert_eq!(status_mask(status, "CapEff"), Some(mask(AGENT_KEEPS)));
        assert_eq!(status_mask(status, "CapBnd"), None);
    }

    /// Runs on a thread of its own: capabilities are per thread, and it drops them for good.
    #[test]
    fn keep_only_leaves_at_most_what_was_asked() {
        let keep = [CAP_SYS_PTRACE];
        let (eff, prm, inh) = std::thread::spawn(move || {
            keep_only(&keep).expect("capset");
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let get = |f| status_mask(&status, f).unwrap();
            (get("CapEff"), get("CapPrm"), get("CapInh"))
        })
        .join()
        .unwrap();
        assert_eq!(eff & !mask(&keep), 0, "effective {eff:#x}");
        assert_eq!(prm & !mask(&keep), 0, "permitted {prm:#x}");
        assert_eq!(inh, 0);
    }
}
