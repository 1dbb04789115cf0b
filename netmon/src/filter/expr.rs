//! The parsed expression tree and its evaluation on one socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{COMM_MAX, FilterInput};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Local,
    Remote,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Owner {
    Pid,
    Uid,
    Netns,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub(super) fn holds(self, a: u32, b: u32) -> bool {
        match self {
            Self::Eq => a == b,
            Self::Ne => a != b,
            Self::Lt => a < b,
            Self::Le => a <= b,
            Self::Gt => a > b,
            Self::Ge => a >= b,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Prefix {
    V4(Ipv4Addr, u8),
    V6(Ipv6Addr, u8),
}

impl Prefix {
    fn contains(self, ip: IpAddr) -> bool {
        match (self, ip) {
            // ss skips the address test when the prefix length is 0.
            (Self::V4(_, 0) | Self::V6(_, 0), _) => true,
            (Self::V4(net, len), IpAddr::V4(a)) => same_prefix(v4_bits(net), v4_bits(a), len),
            // ss.c inet2_addr_match: "v4 mapped socket matches pure IPv4 rule, but v4-mapped
            // rule selects only v4-mapped sockets".
            (Self::V4(net, len), IpAddr::V6(a)) => a
                .to_ipv4_mapped()
                .is_some_and(|a| same_prefix(v4_bits(net), v4_bits(a), len)),
            (Self::V6(net, len), IpAddr::V6(a)) => same_prefix(net.to_bits(), a.to_bits(), len),
            (Self::V6(..), IpAddr::V4(_)) => false,
        }
    }
}

/// Whether the top `len` bits of `a` and `b` agree.
pub(super) fn same_prefix(a: u128, b: u128, len: u8) -> bool {
    match 128u32.checked_sub(u32::from(len)) {
        Some(shift) if shift < 128 => (a ^ b) >> shift == 0,
        _ => true,
    }
}

/// An IPv4 address in the top bits, so IPv4 prefixes compare like IPv6 ones.
pub(super) fn v4_bits(addr: Ipv4Addr) -> u128 {
    u128::from(addr.to_bits()) << 96
}

/// ss's `struct aafilter` for inet hosts: an optional prefix and an optional port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct HostCond {
    pub(super) prefix: Option<Prefix>,
    pub(super) port: Option<u16>,
}

impl HostCond {
    /// ss.c run_ssfilter `SSF_SCOND`/`SSF_DCOND`.
    fn matches(&self, addr: SocketAddr) -> bool {
        self.port.is_none_or(|p| p == addr.port())
            && self.prefix.is_none_or(|p| p.contains(addr.ip()))
    }
}

/// `and`/`or` are n-ary so a long chain is wide, not deep: only `(` and `not` nest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Expr {
    All(Vec<Expr>),
    Any(Vec<Expr>),
    Not(Box<Expr>),
    /// ss `SSF_SCOND`/`SSF_DCOND`: `src`/`dst`, and `sport =`/`dport =`.
    Host(Side, HostCond),
    /// ss `SSF_S_GE`/`SSF_D_GE`.
    PortAtLeast(Side, u16),
    /// ss `SSF_S_LE`/`SSF_D_LE`.
    PortAtMost(Side, u16),
    /// `pid`/`uid`/`netns`; `!=` is parsed as `not =`, so an unknown value fails every
    /// comparison and passes its negation.
    Owner(Owner, CmpOp, u32),
    /// `comm = NAME`, NAME cut to the kernel's 15 bytes.
    Comm(Vec<u8>),
    /// `cgroup = PATH`: exactly that cgroup, as ss's `cgroup` filter.
    Cgroup(String),
    /// `unit = NAME`: the innermost systemd unit of the socket's cgroup.
    Unit(String),
    /// `container = ID`: a container id, or a prefix of one (as `docker ps` shortens them).
    Container(String),
    /// `pod = UID`.
    Pod(String),
}

pub(super) fn not(expr: Expr) -> Expr {
    Expr::Not(Box::new(expr))
}

pub(super) fn comm_key(name: &str) -> &[u8] {
    let bytes = name.as_bytes();
    bytes.get(..COMM_MAX).unwrap_or(bytes)
}

impl Expr {
    pub(super) fn uses_cgroup(&self) -> bool {
        match self {
            Self::All(terms) | Self::Any(terms) => terms.iter().any(Self::uses_cgroup),
            Self::Not(e) => e.uses_cgroup(),
            Self::Cgroup(_) | Self::Unit(_) | Self::Container(_) | Self::Pod(_) => true,
            _ => false,
        }
    }

    /// Whether the expression looks at the owning process (`pid`, `comm`).
    pub(super) fn uses_owner(&self) -> bool {
        match self {
            Self::All(terms) | Self::Any(terms) => terms.iter().any(Self::uses_owner),
            Self::Not(e) => e.uses_owner(),
            Self::Owner(Owner::Pid, ..) | Self::Comm(_) => true,
            _ => false,
        }
    }

    pub(super) fn eval(&self, input: &FilterInput) -> bool {
        match self {
            Self::All(terms) => terms.iter().all(|e| e.eval(input)),
            Self::Any(terms) => terms.iter().any(|e| e.eval(input)),
            Self::Not(e) => !e.eval(input),
            Self::Host(side, cond) => cond.matches(input.addr(*side)),
            Self::PortAtLeast(side, p) => input.addr(*side).port() >= *p,
            Self::PortAtMost(side, p) => input.addr(*side).port() <= *p,
            Self::Owner(field, op, value) => {
                input.owner(*field).is_some_and(|v| op.holds(v, *value))
            }
            Self::Comm(name) => input.comm.is_some_and(|c| comm_key(c) == name.as_slice()),
            Self::Cgroup(path) => input.cgroup.is_some_and(|l| l.path == *path),
            Self::Unit(unit) => input
                .cgroup
                .and_then(|l| l.unit.as_deref())
                .is_some_and(|u| u == unit),
            Self::Container(id) => input
                .cgroup
                .and_then(|l| l.container_id.as_deref())
                .is_some_and(|c| c.starts_with(id.as_str())),
            Self::Pod(uid) => input
                .cgroup
                .and_then(|l| l.pod_uid.as_deref())
                .is_some_and(|p| p == uid),
        }
    }
}
