//! The agent's exports beyond snapshots, fed from its event loop: Prometheus metrics per event
//! and, per ended connection, metrics and an OTLP log record. Ended connections wait until the
//! batch of ring records ends, so that a reset reported just after CLOSE (see `Table::hint`)
//! amends them before they are counted or sent.

use netmon_common::TcpState;

use crate::{
    decode::Event,
    metrics::{Metrics, Resync},
    otlp::Exporter,
    table::{Applied, Closed, Table},
};

#[derive(Default)]
pub struct Export {
    pub metrics: Option<Metrics>,
    pub otlp: Option<Exporter>,
    /// Reused across batches: no allocation per event once it has grown.
    pending: Vec<Closed>,
}

impl Export {
    pub fn new(metrics: Option<Metrics>, otlp: Option<Exporter>) -> Self {
        Self {
            metrics,
            otlp,
            pending: Vec::with_capacity(1024),
        }
    }

    pub fn is_active(&self) -> bool {
        self.metrics.is_some() || self.otlp.is_some()
    }

    /// One decoded event, after the table applied it.
    pub fn event(&mut self, e: &Event, applied: &Applied, table: &Table) {
        if let Some(m) = &mut self.metrics {
            m.event(e, applied, table);
        }
        if let Some(c) = applied.closed {
            self.pending.push(c);
        }
        if let Event::Hint(h) = e
            && h.state == TcpState::Close
        {
            for c in self
                .pending
                .iter_mut()
                .rev()
                .filter(|c| c.cookie == h.cookie)
            {
                c.late_hint(h.kind);
            }
        }
    }

    /// A ring record that did not decode.
    pub fn malformed(&self) {
        if let Some(m) = &self.metrics {
            m.malformed();
        }
    }

    pub fn resync(&self, why: Resync) {
        if let Some(m) = &self.metrics {
            m.resync(why);
        }
    }

    /// The batch of ring records ended: count and send the connections that ended in it.
    pub fn end_batch(&mut self) {
        for c in self.pending.drain(..) {
            if let Some(m) = &mut self.metrics {
                m.closed(&c);
            }
            if let Some(o) = &self.otlp {
                o.push(&c);
            }
        }
    }
}
