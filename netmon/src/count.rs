//! `snapshot --count BY[,BY]`: sockets (or closed connections) grouped by keys and counted,
//! most frequent first, what people get today from `ss -tan | awk ... | sort | uniq -c |
//! sort -rn`; for closed connections also lifespan p50/p99 and resets per group.

use std::{
    collections::HashMap,
    io::{self, Write},
    net::SocketAddr,
};

use serde::Serialize;

use crate::{
    cgroup::{CgroupNames, Labels},
    columns::{Column, Grid},
    output::{Format, duration, state_name},
    snapshot::{Row, SnapshotArgs},
    table::{Closed, End, Owner},
};

/// What to group by.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum CountBy {
    /// ss's state name (for --closed: the state it left for CLOSE).
    State,
    /// The peer's address.
    Peer,
    PeerPort,
    LocalPort,
    /// The owning process, `comm(pid)`, `-` when unknown.
    Owner,
    /// How a closed connection ended (--closed only).
    EndReason,
    /// The systemd unit of the socket's cgroup, `-` when it has none.
    Unit,
    /// The container id of the socket's cgroup, `-` when it has none.
    Container,
}

impl CountBy {
    fn header(self) -> &'static str {
        match self {
            Self::State => "State",
            Self::Peer => "Peer",
            Self::PeerPort => "Peer-Port",
            Self::LocalPort => "Local-Port",
            Self::Owner => "Owner",
            Self::EndReason => "End",
            Self::Unit => "Unit",
            Self::Container => "Container",
        }
    }

    fn json_name(self) -> &'static str {
        match self {
            Self::State => "state",
            Self::Peer => "peer",
            Self::PeerPort => "peer_port",
            Self::LocalPort => "local_port",
            Self::Owner => "owner",
            Self::EndReason => "end",
            Self::Unit => "unit",
            Self::Container => "container_id",
        }
    }
}

/// The fields a key is made of, from a live row or a closed connection.
struct Item<'a> {
    state: &'a str,
    local: SocketAddr,
    remote: SocketAddr,
    owner: Option<&'a Owner>,
    end: Option<End>,
    cgroup: Option<&'a Labels>,
}

fn key(by: CountBy, i: &Item) -> String {
    match by {
        CountBy::State => i.state.to_owned(),
        // v4-mapped addresses stay as the kernel reports them, as ss prints them.
        CountBy::Peer => i.remote.ip().to_string(),
        CountBy::PeerPort => i.remote.port().to_string(),
        CountBy::LocalPort => i.local.port().to_string(),
        CountBy::Owner => i.owner.map_or_else(
            || "-".into(),
            |o| format!("{}({})", o.task.comm(), o.task.pid),
        ),
        CountBy::EndReason => i.end.map_or("-", End::name).to_owned(),
        CountBy::Unit => i
            .cgroup
            .and_then(|l| l.unit.clone())
            .unwrap_or_else(|| "-".into()),
        CountBy::Container => i
            .cgroup
            .and_then(|l| l.container_id.clone())
            .unwrap_or_else(|| "-".into()),
    }
}

/// One group: its key values, its size, and for closed connections what it adds.
struct Group {
    keys: Vec<String>,
    count: u64,
    lifespans: Vec<u64>,
    resets: u64,
}

/// Groups being counted, a part of the rows (or closed connections) at a time: only the
/// groups are held, never the rows.
pub struct Counts {
    by: Vec<CountBy>,
    /// Counting closed connections (lifespans and resets printed too).
    closed: bool,
    groups: HashMap<Vec<String>, Group>,
}

impl Counts {
    pub fn new(by: &[CountBy], closed: bool) -> Self {
        Self {
            by: by.to_vec(),
            closed,
            groups: HashMap::new(),
        }
    }

    fn add(&mut self, item: &Item, lifespan: Option<u64>) {
        let keys: Vec<String> = self.by.iter().map(|&b| key(b, item)).collect();
        let g = self.groups.entry(keys).or_insert_with_key(|keys| Group {
            keys: keys.clone(),
            count: 0,
            lifespans: Vec::new(),
            resets: 0,
        });
        g.count += 1;
        g.lifespans.extend(lifespan);
        if matches!(
            item.end,
            Some(End::ResetSent | End::ResetReceived | End::Refused)
        ) {
            g.resets += 1;
        }
    }

    /// Counts a live socket (already filtered).
    pub fn live(&mut self, r: &Row, cgroups: Option<&CgroupNames>) {
        let item = Item {
            state: r.sock.state.ss_name(),
            local: r.sock.local,
            remote: r.sock.remote,
            owner: r.owner.as_ref(),
            end: None,
            cgroup: labels(cgroups, r.sock.attrs.cgroup_id.unwrap_or(0)),
        };
        self.add(&item, None);
    }

    /// Counts a closed connection (already filtered).
    pub fn closed(&mut self, c: &Closed, cgroups: Option<&CgroupNames>) {
        let state = state_name(c.last);
        let item = Item {
            state: &state,
            local: c.local,
            remote: c.remote,
            owner: c.owner.as_ref(),
            end: Some(c.end),
            cgroup: labels(cgroups, c.cgroup_id),
        };
        self.add(&item, c.lifespan_ns());
    }

    /// Prints the groups, most frequent first.
    pub fn print(&mut self, args: &SnapshotArgs, out: &mut impl Write) -> io::Result<()> {
        let mut groups: Vec<Group> = std::mem::take(&mut self.groups).into_values().collect();
        // Most frequent first; ties in key order, so the output is stable.
        groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.keys.cmp(&b.keys)));
        for g in &mut groups {
            g.lifespans.sort_unstable();
        }
        print(args, &groups, self.closed, out)
    }
}

/// The nearest-rank percentile `p` (0-100] of sorted `v`.
fn percentile(v: &[u64], p: u64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let rank = (v.len() as u64 * p).div_ceil(100).max(1) as usize;
    v.get(rank - 1).copied()
}

/// The labels of cgroup `id`, as the snapshot's walk found them.
pub fn labels(cgroups: Option<&CgroupNames>, id: u64) -> Option<&Labels> {
    cgroups.and_then(|c| c.get(id))
}

fn print(
    args: &SnapshotArgs,
    groups: &[Group],
    closed: bool,
    out: &mut impl Write,
) -> io::Result<()> {
    if args.format == Format::Json {
        for g in groups {
            let mut obj = serde_json::Map::new();
            obj.insert("type".into(), "count".into());
            obj.insert("count".into(), g.count.into());
            for (by, k) in args.count.iter().zip(&g.keys) {
                let v = match by {
                    CountBy::PeerPort | CountBy::LocalPort => k
                        .parse::<u16>()
                        .map_or_else(|_| k.clone().into(), Into::into),
                    _ => k.clone().into(),
                };
                obj.insert(by.json_name().into(), v);
            }
            if closed {
                obj.insert(
                    "lifespan_p50_ns".into(),
                    percentile(&g.lifespans, 50).into(),
                );
                obj.insert(
                    "lifespan_p99_ns".into(),
                    percentile(&g.lifespans, 99).into(),
                );
                obj.insert("resets".into(), g.resets.into());
            }
            serde_json::to_writer(&mut *out, &obj)?;
            out.write_all(b"\n")?;
        }
        return Ok(());
    }
    let mut columns = vec![Column::right("Count")];
    columns.extend(args.count.iter().map(|b| Column::left(b.header())));
    if closed {
        columns.extend([
            Column::right("Lifespan-p50"),
            Column::right("Lifespan-p99"),
            Column::right("Resets"),
        ]);
    }
    let mut grid = Grid::with_capacity(columns, groups.len());
    for g in groups {
        grid.cell(&g.count.to_string());
        for k in &g.keys {
            grid.cell(k);
        }
        if closed {
            for p in [50, 99] {
                grid.cell(&percentile(&g.lifespans, p).map_or_else(|| "-".into(), duration));
            }
            grid.cell(&g.resets.to_string());
        }
    }
    grid.print(out, !args.no_header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 99), Some(99));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[1, 2, 3], 50), Some(2));
    }
}
