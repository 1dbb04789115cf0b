//! The agent's exports beyond snapshots, as a consumer of the tracer's records: Prometheus
//! metrics per transition and per ended connection, and one OTLP log record per ended
//! connection. Both are optional; with neither, this consumer does nothing.

use std::io;

use crate::{
    decode::{Hint, Transition},
    metrics::Metrics,
    otlp::Exporter,
    table::{Closed, Owner},
    tracer::Sink,
};

#[derive(Default)]
pub struct Export {
    pub metrics: Option<Metrics>,
    pub otlp: Option<Exporter>,
}

impl Sink for Export {
    fn transition(
        &mut self,
        t: &Transition,
        owner: Option<&Owner>,
        prev_state_ns: Option<u64>,
    ) -> io::Result<()> {
        if let Some(m) = &mut self.metrics {
            m.transition(t, owner, prev_state_ns);
        }
        Ok(())
    }

    fn hint(&mut self, h: &Hint) -> io::Result<()> {
        if let Some(m) = &mut self.metrics {
            m.hint(h);
        }
        Ok(())
    }

    fn closed(&mut self, c: &Closed) -> io::Result<()> {
        if let Some(m) = &mut self.metrics {
            m.closed(c);
        }
        if let Some(o) = &mut self.otlp {
            o.push(c);
        }
        Ok(())
    }

    fn end_batch(&mut self) -> io::Result<()> {
        if let Some(o) = &mut self.otlp {
            o.end_batch();
        }
        Ok(())
    }
}
