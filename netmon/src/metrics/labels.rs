//! The closed vocabularies of metric labels: state words, families, directions, end reasons,
//! each with a dense index so that per-event code picks a pre-resolved handle from an array.

use std::net::SocketAddr;

use netmon_common::TcpState;
use prometheus_client::encoding::EncodeLabelSet;

use crate::table::{Closed, End};

/// Kernel state values run 1..=13; slot 0 holds any value this build does not know.
pub const STATES: usize = 14;

pub fn state_index(s: TcpState) -> usize {
    match s {
        TcpState::Unknown(_) => 0,
        s => usize::from(s.to_kernel()).min(STATES - 1),
    }
}

/// node_exporter's words for `node_tcp_connection_states` (collector/tcpstat_linux.go), so a
/// dashboard can put both side by side; the two states it does not know follow its style.
pub fn state_word(index: usize) -> &'static str {
    const WORDS: [&str; STATES] = [
        "unknown",
        "established",
        "syn_sent",
        "syn_recv",
        "fin_wait1",
        "fin_wait2",
        "time_wait",
        "close",
        "close_wait",
        "last_ack",
        "listen",
        "closing",
        "new_syn_recv",
        "bound_inactive",
    ];
    WORDS[index]
}

/// Address family as OpenTelemetry's `network.type` says it. An IPv4-mapped IPv6 socket is
/// IPv6, as in ss.
pub const FAMILIES: [&str; 2] = ["ipv4", "ipv6"];

pub fn family_index(addr: &SocketAddr) -> usize {
    usize::from(addr.is_ipv6())
}

/// Who opened a connection, as far as netmon saw it begin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// This host connected (CLOSE -> SYN-SENT).
    Outbound,
    /// A listener here accepted it (LISTEN -> SYN-RECV).
    Inbound,
    /// It predates netmon, or its first transition was lost.
    Unknown,
}

impl Direction {
    pub const ALL: [Direction; 3] = [Self::Outbound, Self::Inbound, Self::Unknown];

    pub fn word(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
            Self::Unknown => "unknown",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// From the first state the table recorded for the socket; `None` for a listener, which
    /// is no connection.
    pub fn of(c: &Closed) -> Option<Self> {
        let first = c.path.durations(c.closed_ns).next().map(|(s, _)| s);
        match first.unwrap_or(c.last) {
            TcpState::Listen => None,
            TcpState::SynSent => Some(Self::Outbound),
            TcpState::SynRecv | TcpState::NewSynRecv => Some(Self::Inbound),
            _ => Some(Self::Unknown),
        }
    }
}

pub const ENDS: [End; 6] = End::ALL;

pub fn end_index(e: End) -> usize {
    e as usize
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateFamily {
    pub state: &'static str,
    pub family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FromTo {
    pub from_state: &'static str,
    pub to_state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct State {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionFamily {
    pub direction: &'static str,
    pub family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionEnd {
    pub direction: &'static str,
    pub end_reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionOnly {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyOnly {
    pub family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Dimension {
    pub dimension: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerDirection {
    pub peer: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerEnd {
    pub peer: String,
    pub end_reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommDirection {
    pub comm: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommEnd {
    pub comm: String,
    pub end_reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnitDirection {
    pub unit: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnitEnd {
    pub unit: String,
    pub end_reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerDirection {
    pub container_id: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerEnd {
    pub container_id: String,
    pub end_reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfo {
    pub version: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_words_are_node_exporters_for_the_states_it_knows() {
        let word = |s: TcpState| state_word(state_index(s));
        assert_eq!(word(TcpState::Established), "established");
        assert_eq!(word(TcpState::SynRecv), "syn_recv");
        assert_eq!(word(TcpState::FinWait1), "fin_wait1");
        assert_eq!(word(TcpState::TimeWait), "time_wait");
        assert_eq!(word(TcpState::Close), "close");
        assert_eq!(word(TcpState::Closing), "closing");
        assert_eq!(word(TcpState::Unknown(200)), "unknown");
        for s in TcpState::ALL {
            assert!(state_index(s) > 0 && state_index(s) < STATES, "{s:?}");
        }
    }

    #[test]
    fn end_indexes_follow_the_list() {
        for (i, e) in ENDS.iter().enumerate() {
            assert_eq!(end_index(*e), i);
        }
    }
}
