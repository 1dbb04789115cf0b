//! `netmon watch`: prints the tracer's records (transitions, ended connections, losses) as
//! they come; a pure consumer of [`crate::tracer`], tested without a kernel.

use std::{
    io::{self, Write},
    time::Instant,
};

use crate::{
    cgroup::{CgroupNames, Labels, Unknown},
    decode::Transition,
    filter::{Filter, FilterInput},
    output::{LossKind, Printer},
    table::{Closed, Owner},
    tracer::{Loss, Sink, Tracer, TracerConfig},
};

/// Turns the tracer's records into output.
pub struct Watcher<W: Write> {
    printer: Printer<W>,
    filter: Filter,
    /// Print one record per ended connection instead of one per transition.
    lifecycle: bool,
    /// Records printed.
    pub printed: u64,
    /// Whether the filter or the output needs cgroup labels; when neither does, no record
    /// looks its cgroup up.
    wants_cgroups: bool,
    cgroups: CgroupNames,
}

impl<W: Write> Watcher<W> {
    /// `cgroups` resolves the records' cgroup ids (refreshed on a miss).
    pub fn new(printer: Printer<W>, filter: Filter, lifecycle: bool, cgroups: CgroupNames) -> Self {
        Self {
            wants_cgroups: printer.shows_cgroup() || filter.uses_cgroup(),
            printer,
            filter,
            lifecycle,
            printed: 0,
            cgroups,
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.printer.flush()
    }
}

/// The filter's view of a transition. The kernel already dropped what it could decide; this
/// decides the rest. Owner predicates (pid, comm, uid) are about the owner, not the task on
/// the CPU.
fn input<'a>(
    t_new: netmon_common::TcpState,
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
    netns: u32,
    owner: Option<&'a Owner>,
    cgroup: Option<&'a Labels>,
) -> FilterInput<'a> {
    FilterInput {
        cgroup,
        state: t_new,
        local,
        remote,
        netns: Some(netns),
        pid: owner.map(|o| o.task.pid),
        comm: owner.map(|o| o.task.comm()),
        uid: owner.map(|o| o.task.uid),
    }
}

fn lookup(cgroups: &mut CgroupNames, wanted: bool, id: u64) -> Result<&Labels, Unknown> {
    if !wanted {
        return Err(Unknown::NoId);
    }
    cgroups.lookup(id, Instant::now)
}

impl<W: Write> Sink for Watcher<W> {
    fn transition(
        &mut self,
        t: &Transition,
        owner: Option<&Owner>,
        prev_state_ns: Option<u64>,
    ) -> io::Result<()> {
        if self.lifecycle {
            return Ok(());
        }
        let cgroup = lookup(&mut self.cgroups, self.wants_cgroups, t.cgroup_id);
        let input = input(t.new, t.local, t.remote, t.netns, owner, cgroup.ok());
        if !self.filter.matches_transition(t.old, &input) {
            return Ok(());
        }
        self.printed += 1;
        self.printer.transition(t, owner, prev_state_ns, cgroup)
    }

    fn closed(&mut self, c: &Closed) -> io::Result<()> {
        if !self.lifecycle {
            return Ok(());
        }
        // The record stands for the connection's final `-> CLOSE` transition.
        let cgroup = lookup(&mut self.cgroups, self.wants_cgroups, c.cgroup_id);
        let input = input(
            netmon_common::TcpState::Close,
            c.local,
            c.remote,
            c.netns,
            c.owner.as_ref(),
            cgroup.ok(),
        );
        if !self.filter.matches_transition(c.last, &input) {
            return Ok(());
        }
        self.printed += 1;
        self.printer.lifecycle(c, cgroup)
    }

    fn loss(&mut self, loss: &Loss) -> io::Result<()> {
        let Loss {
            kind,
            count,
            total,
            seen_ns,
        } = loss;
        self.printer.loss(*kind, *count, *total, *seen_ns)?;
        if *kind == LossKind::HintsRingFull {
            eprintln!("netmon: dropped {count} owner/reset hints (ring full), {total} since start");
        } else {
            eprintln!("netmon: lost {count} transitions ({kind}), {total} since start");
        }
        Ok(())
    }

    fn end_batch(&mut self) -> io::Result<()> {
        self.printer.flush()
    }
}

/// Attaches, seeds and streams until `stop` resolves (Ctrl-C) or the output closes; returns
/// the tracer for its final counts.
pub async fn run<W: Write>(
    config: &TracerConfig,
    watcher: &mut Watcher<W>,
    ready: impl FnOnce(),
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Tracer> {
    let mut tracer = Tracer::attach(config)?;
    for missing in &tracer.support().missing {
        eprintln!("netmon: this kernel lacks {missing}");
    }
    if let Some(e) = tracer.fire_count_off() {
        eprintln!("netmon: {}", e.off_warning());
    }
    tracer.seed();
    ready();
    tracer.run(watcher, None, stop).await?;
    Ok(tracer)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use netmon_common::AF_INET;

    use super::*;
    use crate::{
        attach::KernelCounters, clock::Clock, decode::tests::event, filter::StateSet,
        output::Format, table::Table, tracer::Pipeline,
    };

    /// A watcher fed by a pipeline, as the tracer feeds it.
    struct Fed {
        pipeline: Pipeline,
        w: Watcher<Vec<u8>>,
    }

    impl Fed {
        fn new(filter: &[&str], lifecycle: bool) -> Self {
            let words: Vec<String> = filter.iter().map(|w| w.to_string()).collect();
            let filter = Filter::parse(&words, &Default::default(), StateSet::ALL).unwrap();
            let printer = Printer::new(Vec::new(), Format::Json, Clock::fixed(UNIX_EPOCH), false);
            Self {
                pipeline: Pipeline::new(Table::with_capacity(0)),
                w: Watcher::new(printer, filter, lifecycle, Default::default()),
            }
        }

        fn record(&mut self, bytes: &[u8]) {
            self.pipeline.record(bytes, &mut self.w).unwrap();
        }

        fn lines(mut self) -> Vec<serde_json::Value> {
            self.pipeline.end_batch(&mut self.w).unwrap();
            let out = String::from_utf8(self.w.printer.into_inner()).unwrap();
            out.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    fn raw(ts: u64, old: u8, new: u8) -> Vec<u8> {
        let mut ev = event(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 1], old, new);
        ev.ts_ns = ts;
        // SAFETY: plain data without padding.
        unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of_val(&ev)) }
            .to_vec()
    }

    #[test]
    fn records_carry_time_in_previous_state() {
        let mut f = Fed::new(&[], false);
        f.record(&raw(1_000, 7, 2));
        f.record(&raw(3_000, 2, 1));
        f.record(&[1, 2, 3]);
        assert_eq!((f.w.printed, f.pipeline.losses().malformed), (2, 1));
        let recs = f.lines();
        assert_eq!(recs[0]["prev_state_ns"], serde_json::Value::Null);
        assert_eq!(recs[1]["prev_state_ns"], 2_000);
        assert_eq!(recs[1]["new_state"], "ESTAB");
    }

    #[test]
    fn the_filter_selects_transitions_by_either_state_and_endpoints() {
        let mut f = Fed::new(&["state", "established", "dport = :8080"], false);
        f.record(&raw(1_000, 7, 2)); // CLOSE -> SYN-SENT: neither state selected
        f.record(&raw(2_000, 2, 1)); // into ESTAB
        f.record(&raw(3_000, 1, 4)); // out of ESTAB
        assert_eq!(f.w.printed, 2);
        let mut f = Fed::new(&["dport = :80"], false);
        f.record(&raw(1_000, 7, 2));
        assert_eq!(f.w.printed, 0);
    }

    #[test]
    fn lifecycle_records_wait_for_the_batch_and_take_late_resets() {
        let mut f = Fed::new(&[], true);
        f.record(&raw(1_000, 7, 2));
        f.record(&raw(2_000, 2, 1));
        f.record(&raw(3_000, 1, 7));
        let mut rst = event(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 1], 7, 7);
        rst.kind = netmon_common::EventKind::ResetSent as u8;
        // SAFETY: plain data without padding.
        let rst = unsafe { std::slice::from_raw_parts((&raw const rst).cast::<u8>(), 120) };
        f.record(rst);
        assert_eq!(f.w.printed, 0, "held until the batch ends");
        let recs = f.lines();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0]["type"], "lifecycle");
        assert_eq!(recs[0]["end"], "reset-sent");
        assert_eq!(recs[0]["lifespan_ns"], 2_000);
    }

    #[test]
    fn lifecycle_records_follow_the_filter_of_their_close() {
        let mut f = Fed::new(&["dport = :80"], true);
        f.record(&raw(1_000, 7, 2));
        f.record(&raw(3_000, 2, 7));
        assert!(f.lines().is_empty(), "dport 8080 is not :80");
        let mut f = Fed::new(&["dport = :8080"], true);
        f.record(&raw(1_000, 7, 2));
        f.record(&raw(3_000, 2, 7));
        assert_eq!(f.lines().len(), 1);
    }

    #[test]
    fn losses_are_printed_in_the_stream() {
        let mut f = Fed::new(&[], false);
        let c = KernelCounters {
            ring_full: 6,
            hints_ring_full: 3,
            ..Default::default()
        };
        f.pipeline.counters(&c, &mut f.w).unwrap();
        let recs = f.lines();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0]["kind"], "ring_full");
        assert_eq!(recs[0]["count"], 6);
        assert_eq!(recs[1]["kind"], "hints_ring_full");
    }
}
