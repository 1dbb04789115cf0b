//! `netmon watch`: streams every transition from the kernel to the printer, with losses.
//!
//! [`Watcher`] is the pure part (records and counters in, lines out) and is tested without a
//! kernel; [`run`] is the thin loop that feeds it from the attached [`Probe`].

use std::{
    io::{self, Write},
    time::{Duration, Instant},
};

use crate::{
    attach::{KernelCounters, Probe, ProbeConfig, RingWaiter},
    decode::{self, Event},
    filter::{Filter, FilterInput},
    netns,
    output::{LossKind, Printer},
    procfs,
    table::{Closed, Table},
};

/// Turns ring records and counter readings into output.
pub struct Watcher<W: Write> {
    printer: Printer<W>,
    filter: Filter,
    /// Print one record per ended connection instead of one per transition.
    lifecycle: bool,
    pub(crate) table: Table,
    /// Losses reported so far: ring full, recursion, hints.
    reported: [u64; 3],
    /// Records that did not decode (a build mismatch): counted, never silently dropped.
    pub malformed: u64,
    /// Records printed.
    pub printed: u64,
    /// Lifecycle records held until the end of the batch: a reset sent on close is reported
    /// just after the socket's CLOSE (see `Table::hint`).
    pending: Vec<Closed>,
}

impl<W: Write> Watcher<W> {
    pub fn new(printer: Printer<W>, filter: Filter, lifecycle: bool) -> Self {
        Self {
            printer,
            filter,
            lifecycle,
            // Live state, timing and owners only: no closed history.
            table: Table::with_capacity(0),
            reported: [0; 3],
            malformed: 0,
            printed: 0,
            pending: Vec::new(),
        }
    }

    pub fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Ok(event) = decode::decode(bytes) else {
            self.malformed += 1;
            return Ok(());
        };
        let applied = self.table.event(&event);
        if applied.duplicate {
            return Ok(());
        }
        let t = match event {
            Event::Transition(t) => t,
            Event::Hint(h) => {
                for c in self.pending.iter_mut().filter(|c| c.cookie == h.cookie) {
                    c.late_hint(h.kind);
                }
                return Ok(());
            }
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
            self.pending.extend(applied.closed);
            return Ok(());
        }
        self.printed += 1;
        self.printer
            .transition(&t, owner.as_ref(), applied.prev_state_ns)
    }

    /// Reports new losses in the stream; returns them (kind, new, total) for stderr.
    pub fn counters(&mut self, now: &KernelCounters) -> io::Result<Vec<(LossKind, u64, u64)>> {
        let mut out = Vec::new();
        let totals = [
            (LossKind::RingFull, now.ring_full),
            (
                LossKind::Recursion,
                now.recursion_lost(self.table.duplicates),
            ),
            (LossKind::HintsRingFull, now.hints_ring_full),
        ];
        for (slot, (kind, total)) in totals.into_iter().enumerate() {
            // Totals only grow; a racy reading that lags is reported later, never twice.
            let before = self.reported[slot];
            if total > before {
                self.printer.loss(kind, total - before, total)?;
                out.push((kind, total - before, total));
                self.reported[slot] = total;
            }
        }
        Ok(out)
    }

    /// Transitions delivered twice by the kernel and shown once (see `Table::apply`).
    pub fn duplicates(&self) -> u64 {
        self.table.duplicates
    }

    /// Prints what was held for the batch, and flushes.
    pub fn flush(&mut self) -> io::Result<()> {
        for c in std::mem::take(&mut self.pending) {
            self.printed += 1;
            self.printer.lifecycle(&c)?;
        }
        self.printer.flush()
    }
}

/// How often the reader drains the ring when the program has not woken it, and how often
/// loss counters are read.
const TICK: Duration = Duration::from_millis(50);
const COUNTERS_EVERY: Duration = Duration::from_millis(250);

/// Attaches and streams until `stop` resolves (Ctrl-C) or the output closes.
pub async fn run<W: Write>(
    config: &ProbeConfig,
    watcher: &mut Watcher<W>,
    ready: impl FnOnce(),
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut probe = Probe::attach(config)?;
    for missing in &probe.support().missing {
        eprintln!("netmon: this kernel lacks {missing}");
    }
    // Sockets that predate us: their state and owners, so that their transitions name them.
    netns::resync_all(&mut watcher.table, Some(&procfs::socket_owners()));
    ready();
    let mut waiter = RingWaiter::new(&probe, TICK)?;
    tokio::pin!(stop);
    let mut more = false;
    let mut counters_read = Instant::now();
    loop {
        let stopping = tokio::select! {
            biased;
            () = &mut stop => true,
            waited = waiter.wait(more) => { waited?; false }
        };
        more = drain(&mut probe, watcher)?;
        if stopping || counters_read.elapsed() >= COUNTERS_EVERY {
            counters_read = Instant::now();
            for (kind, count, total) in watcher.counters(&probe.counters()?)? {
                if kind == LossKind::HintsRingFull {
                    eprintln!(
                        "netmon: dropped {count} owner/reset hints (ring full), {total} since start"
                    );
                } else {
                    eprintln!("netmon: lost {count} transitions ({kind:?}), {total} since start");
                }
            }
            watcher.flush()?;
        }
        if stopping {
            return Ok(());
        }
    }
}

/// One batch from the ring into the watcher; true if more may be waiting.
fn drain<W: Write>(probe: &mut Probe, watcher: &mut Watcher<W>) -> io::Result<bool> {
    let mut result = Ok(());
    let drained = probe.drain(|bytes| {
        if result.is_ok() {
            result = watcher.record(bytes);
        }
    });
    result?;
    watcher.flush()?;
    Ok(drained.more)
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
    fn lifecycle_records_wait_for_the_batch_and_take_late_resets() {
        let mut w = watcher();
        w.lifecycle = true;
        w.record(&raw(1_000, 7, 2)).unwrap();
        w.record(&raw(2_000, 2, 1)).unwrap();
        w.record(&raw(3_000, 1, 7)).unwrap();
        let mut rst = event(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 1], 7, 7);
        rst.kind = netmon_common::EventKind::ResetSent as u8;
        // SAFETY: plain data without padding.
        let rst = unsafe { std::slice::from_raw_parts((&raw const rst).cast::<u8>(), 104) };
        w.record(rst).unwrap();
        assert_eq!(w.printed, 0, "held until the batch ends");
        w.flush().unwrap();
        let recs = lines(w);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0]["type"], "lifecycle");
        assert_eq!(recs[0]["end"], "reset-sent");
        assert_eq!(recs[0]["lifespan_ns"], 2_000);
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
            fired: 0,
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
            hints_ring_full: 3,
            fired: 0,
        };
        assert_eq!(
            w.counters(&c2).unwrap(),
            vec![(LossKind::RingFull, 2, 6), (LossKind::HintsRingFull, 3, 3)]
        );
        let recs = lines(w);
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[3]["kind"], "hints_ring_full");
        assert_eq!(recs[2]["count"], 2);
        assert_eq!(recs[2]["total"], 6);
    }
}
