//! `netmon watch`: streams every transition from the kernel to the printer, with losses.
//!
//! [`Watcher`] is the pure part (records and counters in, lines out) and is tested without a
//! kernel; [`run`] is the thin loop that feeds it from the attached [`Probe`].

use std::{
    io::{self, Write},
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use tokio::io::unix::AsyncFd;

use crate::{
    attach::{KernelCounters, Probe, ProbeConfig},
    decode::{self, Event},
    filter::{Filter, FilterInput},
    netns,
    output::{LossKind, Printer},
    procfs,
    table::Table,
};

/// Turns ring records and counter readings into output.
pub struct Watcher<W: Write> {
    printer: Printer<W>,
    filter: Filter,
    /// Print one record per ended connection instead of one per transition.
    lifecycle: bool,
    pub(crate) table: Table,
    reported: KernelCounters,
    /// Records that did not decode (a build mismatch): counted, never silently dropped.
    pub malformed: u64,
    /// Records printed.
    pub printed: u64,
}

impl<W: Write> Watcher<W> {
    pub fn new(printer: Printer<W>, filter: Filter, lifecycle: bool) -> Self {
        Self {
            printer,
            filter,
            lifecycle,
            // Live state, timing and owners only: no closed history.
            table: Table::with_capacity(0),
            reported: KernelCounters::default(),
            malformed: 0,
            printed: 0,
        }
    }

    pub fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Ok(event) = decode::decode(bytes) else {
            self.malformed += 1;
            return Ok(());
        };
        let applied = self.table.event(&event);
        let Event::Transition(t) = event else {
            return Ok(());
        };
        let owner = applied
            .closed
            .and_then(|c| c.owner)
            .or_else(|| self.table.get(t.cookie).and_then(|s| s.owner));
        // The kernel already dropped what it could decide; this decides the rest. Owner
        // predicates (pid, comm, uid) are about the owner, not the task on the CPU.
        let input = FilterInput {
            state: t.new,
            local: t.local,
            remote: t.remote,
            netns: Some(t.netns),
            pid: owner.map(|o| o.task.pid),
            comm: owner.as_ref().map(|o| o.task.comm()),
            uid: owner.map(|o| o.task.uid),
        };
        if !self.filter.matches_transition(t.old, &input) {
            return Ok(());
        }
        if self.lifecycle {
            let Some(closed) = applied.closed else {
                return Ok(());
            };
            self.printed += 1;
            return self.printer.lifecycle(&closed);
        }
        self.printed += 1;
        self.printer
            .transition(&t, owner.as_ref(), applied.prev_state_ns)
    }

    /// Reports new losses in the stream; returns them (kind, new, total) for stderr.
    pub fn counters(&mut self, now: &KernelCounters) -> io::Result<Vec<(LossKind, u64, u64)>> {
        let mut out = Vec::new();
        let pairs = [
            (LossKind::RingFull, self.reported.ring_full, now.ring_full),
            (
                LossKind::Recursion,
                self.reported.recursion_lost(),
                now.recursion_lost(),
            ),
        ];
        for (kind, before, total) in pairs {
            if total > before {
                self.printer.loss(kind, total - before, total)?;
                out.push((kind, total - before, total));
            }
        }
        // Counters only grow; keep the larger reading so a racy read never reports twice.
        self.reported.ring_full = self.reported.ring_full.max(now.ring_full);
        if now.recursion_lost() > self.reported.recursion_lost() {
            self.reported.primary_misses = now.primary_misses;
            self.reported.recovered = now.recovered;
        }
        Ok(out)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.printer.flush()
    }
}

/// How often the reader drains the ring when the program has not woken it (the program wakes
/// it only once `wakeup_bytes` wait), and how often loss counters are read.
const TICK: Duration = Duration::from_millis(50);
const COUNTER_EVERY_TICKS: u32 = 5;

struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Attaches and streams until `stop` resolves (Ctrl-C) or the output closes.
pub async fn run<W: Write>(
    config: &ProbeConfig,
    watcher: &mut Watcher<W>,
    ready: impl FnOnce(),
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut probe = Probe::attach(config)?;
    // Sockets that predate us: their state and owners, so that their transitions name them.
    netns::resync_all(&mut watcher.table, Some(&procfs::socket_owners()));
    ready();
    let fd = Fd(probe.ring_fd().as_raw_fd());
    // SAFETY: the fd is owned by `probe`, which is neither closed nor replaced while `ring`
    // (dropped first, at the end of this function) is registered.
    let ring = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)? };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    let mut ticks = 0u32;
    loop {
        let stopping = tokio::select! {
            guard = ring.readable() => { guard?.clear_ready(); false }
            _ = tick.tick() => { ticks += 1; false }
            () = &mut stop => true,
        };
        drain(&mut probe, watcher)?;
        if stopping || ticks >= COUNTER_EVERY_TICKS {
            ticks = 0;
            for (kind, count, total) in watcher.counters(&probe.counters()?)? {
                eprintln!("netmon: lost {count} transitions ({kind:?}), {total} since start");
            }
            watcher.flush()?;
        }
        if stopping {
            return Ok(());
        }
    }
}

fn drain<W: Write>(probe: &mut Probe, watcher: &mut Watcher<W>) -> io::Result<()> {
    let mut result = Ok(());
    probe.drain(|bytes| {
        if result.is_ok() {
            result = watcher.record(bytes);
        }
    });
    result?;
    watcher.flush()
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use netmon_common::AF_INET;

    use super::*;
    use crate::{
        decode::tests::event,
        filter::StateSet,
        output::{Clock, Format},
    };

    fn watcher() -> Watcher<Vec<u8>> {
        watcher_with(&[])
    }

    fn watcher_with(filter: &[&str]) -> Watcher<Vec<u8>> {
        let words: Vec<String> = filter.iter().map(|w| w.to_string()).collect();
        let filter = Filter::parse(&words, &Default::default(), StateSet::ALL).unwrap();
        let printer = Printer::new(Vec::new(), Format::Json, Clock::fixed(UNIX_EPOCH), false);
        Watcher::new(printer, filter, false)
    }

    fn raw(ts: u64, old: u8, new: u8) -> Vec<u8> {
        let mut ev = event(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 1], old, new);
        ev.ts_ns = ts;
        // SAFETY: plain data without padding.
        unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of_val(&ev)) }
            .to_vec()
    }

    fn lines(w: Watcher<Vec<u8>>) -> Vec<serde_json::Value> {
        let out = String::from_utf8(w.printer.into_inner()).unwrap();
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn records_carry_time_in_previous_state() {
        let mut w = watcher();
        w.record(&raw(1_000, 7, 2)).unwrap();
        w.record(&raw(3_000, 2, 1)).unwrap();
        w.record(&[1, 2, 3]).unwrap();
        assert_eq!((w.printed, w.malformed), (2, 1));
        let recs = lines(w);
        assert_eq!(recs[0]["prev_state_ns"], serde_json::Value::Null);
        assert_eq!(recs[1]["prev_state_ns"], 2_000);
        assert_eq!(recs[1]["new_state"], "ESTAB");
    }

    #[test]
    fn the_filter_selects_transitions_by_either_state_and_endpoints() {
        let mut w = watcher_with(&["state", "established", "dport = :8080"]);
        w.record(&raw(1_000, 7, 2)).unwrap(); // CLOSE -> SYN-SENT: neither state selected
        w.record(&raw(2_000, 2, 1)).unwrap(); // into ESTAB
        w.record(&raw(3_000, 1, 4)).unwrap(); // out of ESTAB
        assert_eq!(w.printed, 2);
        let mut w = watcher_with(&["dport = :80"]);
        w.record(&raw(1_000, 7, 2)).unwrap();
        assert_eq!(w.printed, 0);
    }

    #[test]
    fn losses_are_reported_once_as_deltas() {
        let mut w = watcher();
        let c1 = KernelCounters {
            ring_full: 4,
            primary_misses: 3,
            recovered: 1,
            seen: 10,
            hints_ring_full: 0,
        };
        assert_eq!(
            w.counters(&c1).unwrap(),
            vec![(LossKind::RingFull, 4, 4), (LossKind::Recursion, 2, 2)]
        );
        assert_eq!(
            w.counters(&c1).unwrap(),
            vec![],
            "nothing new, nothing reported"
        );
        let c2 = KernelCounters {
            ring_full: 6,
            primary_misses: 5,
            recovered: 3,
            seen: 20,
            hints_ring_full: 0,
        };
        assert_eq!(w.counters(&c2).unwrap(), vec![(LossKind::RingFull, 2, 6)]);
        let recs = lines(w);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[2]["count"], 2);
        assert_eq!(recs[2]["total"], 6);
    }
}
