//! Opt-in label dimensions with a bounded number of values: named peer groups
//! (`--metrics-peer NAME=CIDR[:PORT]`) and owner command names capped at N, each folding what
//! it cannot name into `other`.

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

/// The label value for what no group names.
pub const OTHER: &str = "other";
/// More groups than this would defeat the point of a bounded label.
pub const MAX_PEER_GROUPS: usize = 64;
/// Bound on `--metrics-by-comm`.
pub const MAX_COMMS: usize = 1000;

/// A named set of peers: an address prefix and, optionally, one port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerGroup {
    pub name: String,
    net: IpAddr,
    prefix: u8,
    port: Option<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerGroupError {
    #[error("`{0}`: expected NAME=CIDR[:PORT], e.g. db=10.0.0.0/8:5432 or web=[2001:db8::/32]:443")]
    Shape(String),
    #[error("`{0}`: the name may use letters, digits, `_`, `-` and `.` only, and not be `other`")]
    Name(String),
    #[error("`{0}`: not an IP address or prefix")]
    Address(String),
    #[error("`{0}`: the prefix length is longer than the address")]
    Prefix(String),
    #[error("`{0}`: not a port number (1-65535)")]
    Port(String),
}

impl FromStr for PeerGroup {
    type Err = PeerGroupError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let shape = || PeerGroupError::Shape(spec.to_owned());
        let (name, target) = spec.split_once('=').ok_or_else(shape)?;
        let name_ok = !name.is_empty()
            && name != OTHER
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            return Err(PeerGroupError::Name(name.to_owned()));
        }
        // `[v6/len]:port`, `v4/len:port`, or a bare prefix of either family.
        let (cidr, port) = if let Some(rest) = target.strip_prefix('[') {
            let (cidr, after) = rest.split_once(']').ok_or_else(shape)?;
            match after {
                "" => (cidr, None),
                p => (cidr, Some(p.strip_prefix(':').ok_or_else(shape)?)),
            }
        } else if target.matches(':').count() == 1 {
            let (cidr, p) = target.split_once(':').ok_or_else(shape)?;
            (cidr, Some(p))
        } else {
            (target, None)
        };
        let port = port
            .map(|p| match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(PeerGroupError::Port(p.to_owned())),
            })
            .transpose()?;
        let (addr, len) = match cidr.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (cidr, None),
        };
        let net = addr
            .parse::<IpAddr>()
            .map_err(|_| PeerGroupError::Address(cidr.to_owned()))?
            .to_canonical();
        let bits = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            None => bits,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= bits => n,
                _ => return Err(PeerGroupError::Prefix(cidr.to_owned())),
            },
        };
        Ok(Self {
            name: name.to_owned(),
            net,
            prefix,
            port,
        })
    }
}

impl PeerGroup {
    /// Whether `peer` is in this group; an IPv4-mapped IPv6 peer matches IPv4 prefixes.
    pub fn contains(&self, peer: &SocketAddr) -> bool {
        if self.port.is_some_and(|p| p != peer.port()) {
            return false;
        }
        match (self.net, peer.ip().to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(net.to_bits()),
                u128::from(ip.to_bits()),
                self.prefix,
                32,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(net.to_bits(), ip.to_bits(), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8, bits: u32) -> bool {
    let shift = bits - u32::from(prefix);
    shift >= bits || (a >> shift) == (b >> shift)
}

/// Index of the first group containing `peer`; `groups.len()` (the `other` slot) if none.
pub fn peer_slot(groups: &[PeerGroup], peer: &SocketAddr) -> usize {
    groups
        .iter()
        .position(|g| g.contains(peer))
        .unwrap_or(groups.len())
}

/// Gives the first `cap` command names a slot of their own and every later one the `other`
/// slot (`cap`); a name keeps its slot for the agent's lifetime, so series never move.
#[derive(Debug)]
pub struct CommSlots {
    cap: usize,
    slots: std::collections::HashMap<Box<str>, usize>,
}

impl CommSlots {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            slots: std::collections::HashMap::with_capacity(cap),
        }
    }

    /// The slot of `comm`, and whether it was newly given one (its series must be created).
    /// Looking up a known name allocates nothing.
    pub fn slot(&mut self, comm: &str) -> (usize, bool) {
        if let Some(&slot) = self.slots.get(comm) {
            return (slot, false);
        }
        if self.slots.len() < self.cap {
            let slot = self.slots.len();
            self.slots.insert(comm.into(), slot);
            (slot, true)
        } else {
            (self.cap, false)
        }
    }

    pub fn other(&self) -> usize {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(s: &str) -> PeerGroup {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn peer_groups_parse_both_families_with_and_without_ports() {
        let db = group("db=10.0.0.0/8:5432");
        assert!(db.contains(&sa("10.1.2.3:5432")));
        assert!(!db.contains(&sa("10.1.2.3:5433")));
        assert!(!db.contains(&sa("11.0.0.1:5432")));
        assert!(
            db.contains(&sa("[::ffff:10.9.9.9]:5432")),
            "v4-mapped peers are IPv4"
        );
        let web = group("web=[2001:db8::/32]:443");
        assert!(web.contains(&sa("[2001:db8:1::5]:443")));
        assert!(!web.contains(&sa("[2001:db9::5]:443")));
        let any6 = group("v6=2001:db8::/32");
        assert!(any6.contains(&sa("[2001:db8::1]:1")));
        let host = group("lo=127.0.0.1");
        assert!(host.contains(&sa("127.0.0.1:9")));
        assert!(!host.contains(&sa("127.0.0.2:9")));
        let all = group("all=0.0.0.0/0");
        assert!(all.contains(&sa("192.0.2.1:80")));
        assert!(!all.contains(&sa("[2001:db8::1]:80")));
    }

    #[test]
    fn bad_peer_groups_say_what_is_wrong() {
        let err = |s: &str| s.parse::<PeerGroup>().unwrap_err();
        assert!(matches!(err("10.0.0.0/8"), PeerGroupError::Shape(_)));
        assert!(matches!(err("other=10.0.0.0/8"), PeerGroupError::Name(_)));
        assert!(matches!(err("a b=10.0.0.0/8"), PeerGroupError::Name(_)));
        assert!(matches!(err("db=10.0.0/8"), PeerGroupError::Address(_)));
        assert!(matches!(err("db=10.0.0.0/33"), PeerGroupError::Prefix(_)));
        assert!(matches!(err("db=10.0.0.0/8:0"), PeerGroupError::Port(_)));
        assert!(matches!(err("db=10.0.0.0/8:http"), PeerGroupError::Port(_)));
        assert!(matches!(err("db=[::1"), PeerGroupError::Shape(_)));
        assert!(err("db=10.0.0/8").to_string().contains("10.0.0/8"));
    }

    #[test]
    fn first_matching_group_wins_and_the_rest_is_other() {
        let groups = [group("a=10.0.0.0/16"), group("b=10.0.0.0/8")];
        assert_eq!(peer_slot(&groups, &sa("10.0.1.1:1")), 0);
        assert_eq!(peer_slot(&groups, &sa("10.9.1.1:1")), 1);
        assert_eq!(peer_slot(&groups, &sa("192.0.2.1:1")), 2);
    }

    #[test]
    fn comm_slots_are_capped_and_stable() {
        let mut slots = CommSlots::new(2);
        assert_eq!(slots.slot("curl"), (0, true));
        assert_eq!(slots.slot("nginx"), (1, true));
        assert_eq!(slots.slot("curl"), (0, false));
        assert_eq!(slots.slot("sshd"), (2, false));
        assert_eq!(slots.other(), 2);
        assert_eq!(slots.slot("nginx"), (1, false));
    }
}
