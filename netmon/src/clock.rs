//! Time for every printer: kernel CLOCK_MONOTONIC timestamps to wall-clock time, and the
//! time-of-day text the tables show.

use std::time::{Duration, SystemTime};

/// Converts kernel CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock time at monotonic zero.
    epoch: SystemTime,
}

impl Default for Clock {
    fn default() -> Self {
        Self::now()
    }
}

impl Clock {
    pub fn now() -> Self {
        let mono = Duration::from_nanos(Self::mono_now_ns());
        Self {
            epoch: SystemTime::now() - mono,
        }
    }

    /// CLOCK_MONOTONIC now, in the kernel timestamps' unit (`bpf_ktime_get_ns`).
    pub fn mono_now_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// A clock whose monotonic zero is `epoch`: for tests.
    pub fn fixed(epoch: SystemTime) -> Self {
        Self { epoch }
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        self.epoch + Duration::from_nanos(mono_ns)
    }
}

/// `HH:MM:SS.micros` (UTC) of a kernel timestamp.
pub fn time_of_day(clock: &Clock, mono_ns: u64) -> String {
    let full = humantime::format_rfc3339_micros(clock.wall(mono_ns)).to_string();
    full.get(11..26).map_or_else(|| full.clone(), str::to_owned)
}
