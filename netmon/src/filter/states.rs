//! TCP state sets: ss's state names and groups, and the default states of `-a`/`-l`.

use netmon_common::TcpState;

pub(super) const fn bit(state: TcpState) -> u32 {
    let k = state.to_kernel();
    if k < 32 { 1 << k } else { 0 }
}

pub(super) const LISTEN: u32 = bit(TcpState::Listen);
pub(super) const CLOSE: u32 = bit(TcpState::Close);
pub(super) const SYN_SENT: u32 = bit(TcpState::SynSent);
pub(super) const TIME_WAIT: u32 = bit(TcpState::TimeWait);
/// inet_diag reports request sockets (NEW_SYN_RECV) as SYN-RECV, and so does ss: one state here.
pub(super) const SYN_RECV: u32 = bit(TcpState::SynRecv) | bit(TcpState::NewSynRecv);
/// ss.c `SS_CONN`: what `ss -t` shows without `-a`/`-l` or a state filter.
pub(super) const SS_CONN: u32 = !(LISTEN | CLOSE | TIME_WAIT | SYN_RECV);

/// A set of TCP states, as bits `1 << kernel state number` (the layout of
/// [`KernelFilter::state_mask`]). Groups are complements of ss's full mask, as in ss.c, so they
/// also hold states this build does not know; states numbered 32 and up are only in [`Self::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateSet(pub(super) u32);

impl StateSet {
    pub const ALL: Self = Self(u32::MAX);
    pub(super) const NONE: Self = Self(0);

    /// The states shown without `state`/`exclude` words, as ss picks them for TCP: `SS_CONN`
    /// by default, every state with `-a`, LISTEN with `-l`. ss's `-l` also adds CLOSE (its
    /// `UNCONN`, for datagram sockets); here that would select every connection's final
    /// `-> CLOSE`, so it is left out. With both flags ss keeps the last one given; the order is
    /// unknown here, so the superset wins.
    pub fn default_for(all: bool, listening: bool) -> Self {
        match (all, listening) {
            (true, _) => Self::ALL,
            (false, true) => Self(LISTEN),
            (false, false) => Self(SS_CONN),
        }
    }

    pub fn contains(self, state: TcpState) -> bool {
        match bit(state) {
            0 => self == Self::ALL,
            b => self.0 & b != 0,
        }
    }

    /// ss.c `scan_state`: case-insensitive names and groups (ss 6.8 added `bound-inactive`; it
    /// refuses `new-syn-recv`, a kernel-internal state, and so does this).
    pub(super) fn by_name(name: &str) -> Option<Self> {
        let mask = match name.to_ascii_lowercase().as_str() {
            "all" => u32::MAX,
            "connected" => !(CLOSE | LISTEN),
            "synchronized" => !(CLOSE | LISTEN | SYN_SENT),
            "bucket" => SYN_RECV | TIME_WAIT,
            "big" => !(SYN_RECV | TIME_WAIT),
            "established" => bit(TcpState::Established),
            "syn-sent" => SYN_SENT,
            "syn-recv" | "syn-rcv" => SYN_RECV,
            "fin-wait-1" => bit(TcpState::FinWait1),
            "fin-wait-2" => bit(TcpState::FinWait2),
            "time-wait" => TIME_WAIT,
            "closed" | "close" | "unconnected" => CLOSE,
            "close-wait" => bit(TcpState::CloseWait),
            "last-ack" => bit(TcpState::LastAck),
            "listening" => LISTEN,
            "closing" => bit(TcpState::Closing),
            "bound-inactive" => bit(TcpState::BoundInactive),
            _ => return None,
        };
        Some(Self(mask))
    }
}
