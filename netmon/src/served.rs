//! Snapshot rows served from the agent's table (`snapshot --max-age`): sockets, states,
//! addresses and owners from the event stream, Recv-Q/Send-Q/uid/inode from the last full walk
//! of the namespace, and the line that says how old those are.
//!
//! What is stale and what is not. The table applies every transition as it happens, and a
//! full walk (the seed, a reconcile, a sock_diag snapshot) settles what the ring lost; the
//! table answers only when that walk is recent enough and no loss was counted since it
//! started ([`Table::freshness`]), so the socket set and states are current. The queues are
//! the walk's: a socket opened since has none (`-`). A TIME-WAIT socket's are exact (the
//! kernel reports 0). Two kinds of socket end without an event, so they are as of the walk
//! too: request sockets (SYN-RECV, a handshake the listener has not completed: a walk finds
//! them, nothing reports their end) and TIME-WAIT sockets the kernel ends early (reused or
//! reset); other TIME-WAIT sockets are dropped 60 s after netmon saw them enter the state.

use std::time::Duration;

use netmon_common::{AF_INET, FilterFields, KernelFilter, TcpState};

use crate::{
    access::Access,
    filter::Filter,
    records::Glance,
    snapshot::Row,
    sock_diag::DiagSock,
    table::{Sock, Stale, TIME_WAIT_NS, Table, Walked},
};

/// Rows asked of the table at a time, so that a snapshot never holds all of them as rows.
pub const PART: usize = 4096;

/// A socket the table serves: its cookie, and where its record was ([`NO_SLOT`]: TIME-WAIT).
pub type Key = (u64, u32);
pub const NO_SLOT: u32 = u32::MAX;

/// What the table can serve of a namespace: the sockets that pass the request's filter (as
/// the client may see them), and when the walk behind the queues ran.
#[derive(Debug, Default)]
pub struct Served {
    pub walk_ns: u64,
    pub now_ns: u64,
    pub cookies: Vec<Key>,
}

/// The row the table serves for a socket of `netns`, if it has one.
pub fn row(table: &Table, netns: u32, (cookie, slot): Key, now_ns: u64) -> Option<Row> {
    match table.served(cookie, slot) {
        Some((s, walked)) => (s.netns == netns).then(|| live_row(cookie, s, walked)),
        None => time_wait_row(table, netns, cookie, now_ns),
    }
}

fn live_row(cookie: u64, s: Sock, walked: Option<Walked>) -> Row {
    let w = walked.unwrap_or_default();
    Row {
        sock: DiagSock {
            recv_q: w.recv_q,
            send_q: w.send_q,
            // A socket's uid is its creator's: the owner's when no walk saw it, else
            // unknown ((uid_t)-1 is no user's, so it shows no owner to a non-admin).
            uid: match walked {
                Some(w) => w.uid,
                None => s.owner.map_or(u32::MAX, |o| o.task.uid),
            },
            inode: w.inode,
            v6only: w.v6only,
            ..DiagSock::new(cookie, s.state, s.local, s.remote)
        },
        netns: s.netns,
        born_ns: s.born_ns,
        since_ns: s.since_exact.then_some(s.since_ns),
        owner: s.owner,
        unwalked: walked.is_none(),
    }
}

fn time_wait_row(table: &Table, netns: u32, cookie: u64, now_ns: u64) -> Option<Row> {
    let tw = table.time_wait(cookie)?;
    if tw.netns != netns || now_ns.saturating_sub(tw.since_ns) >= TIME_WAIT_NS {
        return None;
    }
    let ages = table.ages(cookie, TcpState::TimeWait);
    Some(Row {
        sock: DiagSock::new(cookie, TcpState::TimeWait, tw.local, tw.remote),
        netns,
        born_ns: ages.born_ns,
        since_ns: ages.since_ns,
        owner: None,
        unwalked: false,
    })
}

/// The sockets of `netns` the table serves for a request, if it may answer within
/// `max_age_ns`: those `filter` keeps once `access` has hidden what the client may not see
/// (as for walked rows, so that a `pid` filter cannot probe hidden owners).
pub fn select(
    table: &Table,
    netns: u32,
    now_ns: u64,
    max_age_ns: u64,
    filter: &Filter,
    access: Access,
) -> Result<Served, Stale> {
    let walk_ns = table.freshness(netns, now_ns, max_age_ns)?;
    let look = glance_filter(filter);
    let mut cookies = Vec::new();
    let mut keep = |key: Key, mut r: Row| {
        r.owner = access.owner(r.sock.uid, r.owner);
        if filter.matches(&r.input(None)) {
            cookies.push(key);
        }
    };
    table.each_served(netns, &look, |cookie, slot, s, walked| {
        keep((cookie, slot), live_row(cookie, s, walked))
    });
    for (cookie, glance) in table.time_wait_cookies(netns) {
        if look(glance)
            && let Some(r) = time_wait_row(table, netns, cookie, now_ns)
        {
            keep((cookie, NO_SLOT), r);
        }
    }
    cookies.shrink_to_fit();
    Ok(Served {
        walk_ns,
        now_ns,
        cookies,
    })
}

/// Whether a socket with a [`Glance`]'s state and ports may pass `filter`: the states and port
/// ranges of its kernel filter, which keeps every socket the filter keeps (the filter fuzz
/// check holds it to that). A request that matches few rows then decodes only those: at 100k
/// sockets, building and filtering every row was most of a `dport = :X` request.
fn glance_filter(filter: &Filter) -> impl Fn(Glance) -> bool {
    // Family, namespace and cgroup are left to the full filter, on the decoded row.
    let k = KernelFilter {
        family_mask: 0b11,
        netns: 0,
        cgroup_id: 0,
        ..filter.kernel_filter()
    };
    move |g: Glance| {
        k.passes(&FilterFields {
            states: Some((g.state, g.state)),
            family: AF_INET,
            netns: 0,
            sport: g.local_port,
            dport: g.remote_port,
            cgroup_id: 0,
        })
    }
}

/// The rows of a part of [`Served::cookies`] (sockets gone since are left out).
pub fn rows(table: &Table, netns: u32, cookies: &[Key], now_ns: u64) -> Vec<Row> {
    cookies
        .iter()
        .filter_map(|&k| row(table, netns, k, now_ns))
        .collect()
}

/// What a table-served answer says of itself: a line before the column header, or a note.
pub fn header(served: &Served, max_age: Duration) -> String {
    let age_s = served.now_ns.saturating_sub(served.walk_ns) as f64 / 1e9;
    format!(
        "# Recv-Q/Send-Q and SYN-RECV as of {age_s:.1} s ago (netmon agent table, --max-age \
         {}); other sockets, states and owners current; '-': opened since",
        humantime::format_duration(max_age)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        decode::{Task, Transition},
        filter::{Services, StateSet},
    };

    fn diag(cookie: u64, state: TcpState, local: &str, remote: &str, q: u32) -> DiagSock {
        DiagSock {
            recv_q: q,
            send_q: q + 1,
            uid: 1000,
            inode: cookie as u32,
            ..DiagSock::fixture(cookie, state, local, remote)
        }
    }

    fn filter(words: &[&str]) -> Filter {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        Filter::parse(
            &words,
            &Services::from_text(""),
            StateSet::default_for(true, false),
        )
        .unwrap()
    }

    fn opened(cookie: u64, ts: u64, pid: u32) -> Transition {
        Transition {
            cookie,
            netns: 7,
            ts_ns: ts,
            old: TcpState::Close,
            new: TcpState::SynSent,
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: "127.0.0.1:80".parse().unwrap(),
            task: Task::new(pid, pid, 1000, "curl"),
            bytes_acked: 0,
            bytes_received: 0,
            cgroup_id: 0,
            cgroup_source: netmon_common::CgroupSource::None,
        }
    }

    #[test]
    fn the_table_answers_only_after_a_fresh_walk_and_no_loss_since() {
        let mut t = Table::new();
        assert_eq!(t.freshness(7, 1_000, 5_000), Err(Stale::NeverWalked));
        t.reconcile(7, &[], 1_000);
        assert_eq!(t.freshness(7, 6_000, 5_000), Ok(1_000));
        assert_eq!(
            t.freshness(7, 6_001, 5_000),
            Err(Stale::TooOld { age_ns: 5_001 })
        );
        assert_eq!(t.freshness(8, 1_000, 5_000), Err(Stale::NeverWalked));
        // A loss counted after the walk started: the walk may not have settled it.
        t.lost_at(1_000);
        assert_eq!(t.freshness(7, 2_000, 5_000), Err(Stale::LossSince));
        // A walk that started after the loss settles it.
        t.reconcile(7, &[], 1_500);
        assert_eq!(t.freshness(7, 2_000, 5_000), Ok(1_500));
        // An older walk merged late does not move the time back.
        t.reconcile(7, &[], 1_200);
        assert_eq!(t.freshness(7, 2_000, 5_000), Ok(1_500));
        // The seed is a walk too.
        t.reconcile_end(crate::table::Reconcile::seeding(9, 3_000));
        assert_eq!(t.freshness(9, 4_000, 5_000), Ok(3_000));
    }

    #[test]
    fn rows_have_the_walks_queues_and_current_states() {
        let mut t = Table::new();
        let walk = [
            diag(1, TcpState::Listen, "0.0.0.0:80", "0.0.0.0:0", 3),
            diag(
                2,
                TcpState::Established,
                "127.0.0.1:80",
                "127.0.0.1:5000",
                7,
            ),
            diag(3, TcpState::TimeWait, "[::1]:80", "[::1]:5001", 0),
            diag(4, TcpState::SynRecv, "127.0.0.1:80", "127.0.0.1:5002", 0),
            diag(9, TcpState::Established, "10.0.0.1:1", "10.0.0.2:2", 0),
        ];
        t.reconcile(7, &walk[..4], 1_000);
        t.reconcile(8, &walk[4..], 1_000);
        // After the walk: socket 2 half-closed by its peer, socket 5 opened.
        let mut ev = opened(2, 2_000, 0);
        (ev.old, ev.new) = (TcpState::Established, TcpState::CloseWait);
        (ev.local, ev.remote) = (walk[1].local, walk[1].remote);
        t.apply(&ev);
        t.apply(&opened(5, 2_500, 42));
        let served = select(&t, 7, 3_000, 5_000, &filter(&[]), Access::Admin).unwrap();
        let mut rows = rows(&t, 7, &served.cookies, served.now_ns);
        rows.sort_by_key(|r| r.sock.cookie);
        let got: Vec<_> = rows
            .iter()
            .map(|r| {
                let s = &r.sock;
                (s.cookie, s.state, s.recv_q, s.send_q, r.unwalked)
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, TcpState::Listen, 3, 4, false),
                (2, TcpState::CloseWait, 7, 8, false),
                (3, TcpState::TimeWait, 0, 0, false),
                (4, TcpState::SynRecv, 0, 1, false),
                (5, TcpState::SynSent, 0, 0, true),
            ],
            "namespace 8 is not 7's"
        );
        assert_eq!(rows[2].sock.local, walk[2].local);
        assert_eq!(rows[2].sock.remote, walk[2].remote);
        assert_eq!(rows[4].sock.uid, 1000, "a new socket's uid is its owner's");
        assert_eq!(served.walk_ns, 1_000);
        // TIME-WAIT ends 60 s after it began, whether or not `expire` ran.
        let late = 1_000 + TIME_WAIT_NS;
        assert!(row(&t, 7, (3, NO_SLOT), late).is_none());
    }

    #[test]
    fn the_filter_sees_what_the_client_may_see() {
        let mut t = Table::new();
        t.reconcile(7, &[], 1_000);
        t.apply(&opened(5, 2_000, 42));
        let by_pid = filter(&["pid", "=", "42"]);
        let admin = select(&t, 7, 3_000, 5_000, &by_pid, Access::Admin).unwrap();
        assert_eq!(admin.cookies.iter().map(|k| k.0).collect::<Vec<_>>(), [5]);
        let other = select(&t, 7, 3_000, 5_000, &by_pid, Access::User { uid: 1001 }).unwrap();
        assert!(other.cookies.is_empty(), "another user's owner is hidden");
        let own = select(&t, 7, 3_000, 5_000, &by_pid, Access::User { uid: 1000 }).unwrap();
        assert_eq!(own.cookies.iter().map(|k| k.0).collect::<Vec<_>>(), [5]);
        let dport = filter(&["dport", "=", ":81"]);
        assert!(
            select(&t, 7, 3_000, 5_000, &dport, Access::Admin)
                .unwrap()
                .cookies
                .is_empty()
        );
    }

    #[test]
    fn the_glance_at_states_and_ports_drops_only_what_the_filter_drops() {
        let mut t = Table::new();
        let walk = [
            diag(1, TcpState::Listen, "0.0.0.0:80", "0.0.0.0:0", 0),
            diag(
                2,
                TcpState::Established,
                "127.0.0.1:80",
                "127.0.0.1:5000",
                0,
            ),
            diag(
                3,
                TcpState::Established,
                "127.0.0.1:5000",
                "127.0.0.1:80",
                0,
            ),
            diag(4, TcpState::TimeWait, "[::1]:5001", "[::1]:80", 0),
            diag(5, TcpState::SynRecv, "127.0.0.1:443", "127.0.0.1:5002", 0),
            diag(
                6,
                TcpState::CloseWait,
                "[::ffff:10.0.0.1]:80",
                "[::ffff:10.0.0.2]:7",
                0,
            ),
        ];
        t.reconcile(7, &walk, 1_000);
        let texts: [&[&str]; 8] = [
            &["dport", "=", ":80"],
            &["sport", "=", ":80"],
            &["sport", "!=", ":80"],
            &["dport", ">", ":1000", "or", "sport", "<", ":100"],
            &["state", "time-wait"],
            &["state", "established", "dport", "=", ":80"],
            &["not", "dport", "=", ":80"],
            &["src", "127.0.0.1", "and", "sport", ">=", ":443"],
        ];
        let mut kept = Vec::new();
        for words in texts {
            let f = filter(words);
            let mut got: Vec<u64> = select(&t, 7, 2_000, 5_000, &f, Access::Admin)
                .unwrap()
                .cookies
                .iter()
                .map(|k| k.0)
                .collect();
            got.sort_unstable();
            // Every row built and filtered, as without the glance.
            let want: Vec<u64> = (1..=6)
                .filter(|&c| {
                    let slot = if c == 4 { NO_SLOT } else { 0 };
                    row(&t, 7, (c, slot), 2_000).is_some_and(|r| f.matches(&r.input(None)))
                })
                .collect();
            assert_eq!(got, want, "{words:?}");
            kept.push(want.len());
        }
        assert!(
            kept.iter().any(|&n| n > 0) && kept.iter().any(|&n| n < walk.len()),
            "the filters keep some sockets and drop others: {kept:?}"
        );
    }

    #[test]
    fn the_header_says_how_old_the_queues_are() {
        let served = Served {
            walk_ns: 1_000_000_000,
            now_ns: 2_400_000_000,
            cookies: vec![],
        };
        assert_eq!(
            header(&served, Duration::from_secs(5)),
            "# Recv-Q/Send-Q and SYN-RECV as of 1.4 s ago (netmon agent table, --max-age 5s); \
             other sockets, states and owners current; '-': opened since"
        );
    }
}
