//! The part of a filter the eBPF program applies: states, families, port ranges, one netns.

use netmon_common::KernelFilter;
#[cfg(test)]
use netmon_common::TcpState;

#[cfg(test)]
use super::FilterInput;
use super::expr::{CmpOp, Expr, HostCond, Owner, Prefix, Side};
use super::{FAMILY_ANY, FAMILY_V6, Filter};

pub(super) type PortRange = Option<(u16, u16)>;
pub(super) const FULL: PortRange = Some((0, u16::MAX));

pub(super) fn intersect(a: PortRange, b: PortRange) -> PortRange {
    let (a, b) = (a?, b?);
    let (lo, hi) = (a.0.max(b.0), a.1.min(b.1));
    (lo <= hi).then_some((lo, hi))
}

pub(super) fn hull(a: PortRange, b: PortRange) -> PortRange {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
    }
}

impl Filter {
    /// The part of the filter the eBPF program can apply. It over-approximates: every transition
    /// [`Self::matches_transition`] accepts passes it.
    pub fn kernel_filter(&self) -> KernelFilter {
        let families = self.expr.as_ref().map_or(FAMILY_ANY, |e| e.families(false));
        let (sport_min, sport_max) = self.port_bounds(Side::Local);
        let (dport_min, dport_max) = self.port_bounds(Side::Remote);
        KernelFilter {
            state_mask: self.states.0,
            family_mask: self.families & families,
            netns: self
                .expr
                .as_ref()
                .and_then(|e| e.required_netns(false))
                .unwrap_or(0),
            sport_min,
            sport_max,
            dport_min,
            dport_max,
            _pad: 0,
            // Set by the caller from `required_cgroup`, which needs the file system.
            cgroup_id: 0,
        }
    }

    /// The cgroup path every match must be in, if there is one: the caller resolves it to an
    /// id for [`KernelFilter::cgroup_id`] (the filter itself touches no file system).
    pub fn required_cgroup(&self) -> Option<&str> {
        self.expr.as_ref().and_then(|e| e.required_cgroup(false))
    }

    /// An empty range (nothing can match) becomes min > max, which no port passes.
    fn port_bounds(&self, side: Side) -> (u16, u16) {
        let range = self
            .expr
            .as_ref()
            .map_or(FULL, |e| e.port_range(side, false));
        range.unwrap_or((u16::MAX, 0))
    }
}

impl Expr {
    /// Ports on `side` this expression (or its negation) can match, as one range containing them
    /// all. Under negation De Morgan swaps `and` and `or`.
    fn port_range(&self, side: Side, negated: bool) -> PortRange {
        let fold = |terms: &[Expr], meet: bool| {
            let each = terms.iter().map(|e| e.port_range(side, negated));
            if meet {
                each.reduce(intersect)
            } else {
                each.reduce(hull)
            }
            .unwrap_or(FULL)
        };
        match self {
            Self::All(terms) => fold(terms, !negated),
            Self::Any(terms) => fold(terms, negated),
            Self::Not(e) => e.port_range(side, !negated),
            Self::Host(s, HostCond { port: Some(p), .. }) if *s == side && !negated => {
                Some((*p, *p))
            }
            Self::PortAtLeast(s, p) if *s == side && negated => p.checked_sub(1).map(|q| (0, q)),
            Self::PortAtLeast(s, p) if *s == side => Some((*p, u16::MAX)),
            Self::PortAtMost(s, p) if *s == side && negated => {
                p.checked_add(1).map(|q| (q, u16::MAX))
            }
            Self::PortAtMost(s, p) if *s == side => Some((0, *p)),
            _ => FULL,
        }
    }

    /// The namespace every match (of the expression or its negation) must be in, if there is one.
    fn required_netns(&self, negated: bool) -> Option<u32> {
        let all = |terms: &[Expr]| terms.iter().find_map(|e| e.required_netns(negated));
        let any = |terms: &[Expr]| {
            let mut each = terms.iter().map(|e| e.required_netns(negated));
            let first = each.next()??;
            each.all(|n| n == Some(first)).then_some(first)
        };
        match self {
            Self::All(terms) if negated => any(terms),
            Self::All(terms) => all(terms),
            Self::Any(terms) if negated => all(terms),
            Self::Any(terms) => any(terms),
            Self::Not(e) => e.required_netns(!negated),
            Self::Owner(Owner::Netns, CmpOp::Eq, n) if !negated => Some(*n),
            _ => None,
        }
    }

    /// The cgroup path every match (of the expression or its negation) must be in.
    fn required_cgroup(&self, negated: bool) -> Option<&str> {
        fn all(terms: &[Expr], negated: bool) -> Option<&str> {
            terms.iter().find_map(|e| e.required_cgroup(negated))
        }
        fn any(terms: &[Expr], negated: bool) -> Option<&str> {
            let mut each = terms.iter().map(|e| e.required_cgroup(negated));
            let first = each.next()??;
            each.all(|n| n == Some(first)).then_some(first)
        }
        match self {
            Self::All(terms) if negated => any(terms, negated),
            Self::All(terms) => all(terms, negated),
            Self::Any(terms) if negated => all(terms, negated),
            Self::Any(terms) => any(terms, negated),
            Self::Not(e) => e.required_cgroup(!negated),
            Self::Cgroup(p) if !negated => Some(p),
            _ => None,
        }
    }

    /// Socket families this expression (or its negation) can match. Only an IPv6 prefix
    /// narrows it: an IPv4 prefix also matches v4-mapped addresses, which are AF_INET6 sockets.
    fn families(&self, negated: bool) -> u32 {
        let fold = |terms: &[Expr], meet: bool| {
            let each = terms.iter().map(|e| e.families(negated));
            if meet {
                each.fold(FAMILY_ANY, |a, b| a & b)
            } else {
                each.fold(0, |a, b| a | b)
            }
        };
        match self {
            Self::All(terms) => fold(terms, !negated),
            Self::Any(terms) => fold(terms, negated),
            Self::Not(e) => e.families(!negated),
            Self::Host(
                _,
                HostCond {
                    prefix: Some(Prefix::V6(_, len)),
                    ..
                },
            ) if *len > 0 && !negated => FAMILY_V6,
            _ => FAMILY_ANY,
        }
    }
}

#[cfg(test)]
/// What the eBPF program does with a [`KernelFilter`]; the fuzz check holds
/// [`Filter::kernel_filter`] to it.
pub(super) fn kernel_passes(k: &KernelFilter, old: TcpState, input: &FilterInput) -> bool {
    // The predicate the eBPF program runs, on what it would read from the socket.
    k.passes(&netmon_common::FilterFields {
        states: Some((old.to_kernel(), input.state.to_kernel())),
        family: if input.family() == FAMILY_V6 {
            netmon_common::AF_INET6
        } else {
            netmon_common::AF_INET
        },
        netns: input.netns.unwrap_or(0),
        sport: input.local.port(),
        dport: input.remote.port(),
        cgroup_id: 0,
    })
}
