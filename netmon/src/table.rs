//! The live connection table: per-socket state and timing, built from transitions.

use std::collections::HashMap;

use netmon_common::TcpState;

use crate::decode::Transition;

/// What the table knows of one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub state: TcpState,
    /// When the socket entered `state` (CLOCK_MONOTONIC ns).
    pub since_ns: u64,
}

/// Sockets keyed by cookie.
#[derive(Debug, Default)]
pub struct Table {
    live: HashMap<u64, Entry>,
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a transition; returns how long the socket spent in its previous state, when the
    /// table saw it enter that state.
    pub fn apply(&mut self, t: &Transition) -> Option<u64> {
        let prev = if t.new == TcpState::Close {
            self.live.remove(&t.cookie)
        } else {
            self.live.insert(
                t.cookie,
                Entry {
                    state: t.new,
                    since_ns: t.ts_ns,
                },
            )
        };
        prev.filter(|e| e.state == t.old)
            .map(|e| t.ts_ns.saturating_sub(e.since_ns))
    }

    pub fn get(&self, cookie: u64) -> Option<&Entry> {
        self.live.get(&cookie)
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use netmon_common::AF_INET;

    use super::*;
    use crate::decode::{from_event, tests::event};

    fn at(ts: u64, old: u8, new: u8) -> Transition {
        let mut ev = event(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 1], old, new);
        ev.ts_ns = ts;
        from_event(&ev).unwrap()
    }

    #[test]
    fn time_in_previous_state_and_removal_on_close() {
        let mut table = Table::new();
        assert_eq!(table.apply(&at(100, 7, 2)), None, "first sight: unknown");
        assert_eq!(table.apply(&at(250, 2, 1)), Some(150));
        assert_eq!(table.get(42).map(|e| e.state), Some(TcpState::Established));
        assert_eq!(table.apply(&at(1250, 1, 4)), Some(1000));
        assert_eq!(table.apply(&at(1300, 4, 5)), Some(50));
        assert_eq!(table.apply(&at(1400, 5, 7)), Some(100));
        assert!(table.is_empty());
    }

    #[test]
    fn a_missed_transition_gives_no_duration() {
        let mut table = Table::new();
        table.apply(&at(100, 7, 2));
        // SYN-SENT -> ESTAB was lost: the table says SYN-SENT, the event says ESTAB -> FIN-WAIT-1.
        assert_eq!(table.apply(&at(900, 1, 4)), None);
        assert_eq!(table.len(), 1);
    }
}
