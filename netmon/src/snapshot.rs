//! `netmon snapshot`: its options, and rendering socket rows and closed connections as ss-style
//! tables, a summary, or JSON Lines. The same code renders in the agent and in fallback mode.

use std::{
    fmt::Write as _,
    io::{self, Write},
    net::SocketAddr,
    time::Duration,
};

use clap::Args;
use netmon_common::TcpState;
use serde::Serialize;

use crate::{
    filter::{Filter, FilterInput, Services, StateSet},
    output::{Clock, Format, JsonClosed, JsonOwner, duration, states_text, time_of_day},
    sock_diag::DiagSock,
    table::{Closed, Owner, Table},
};

/// Options of `netmon snapshot` (the agent receives them as a `wire::SnapshotRequest`).
#[derive(Clone, Debug, Args)]
pub struct SnapshotArgs {
    /// TCP sockets (accepted for ss compatibility: netmon shows only TCP).
    #[arg(short = 't', long)]
    pub tcp: bool,
    /// Show listening and non-listening sockets (ss -a).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Show only listening sockets (ss -l).
    #[arg(short = 'l', long)]
    pub listening: bool,
    /// Numeric ports: do not show service names (ss -n).
    #[arg(short = 'n', long)]
    pub numeric: bool,
    /// Only IPv4 sockets.
    #[arg(short = '4', long = "ipv4")]
    pub ipv4: bool,
    /// Only IPv6 sockets (IPv4-mapped ones included, as in ss).
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Do not print the header line (ss -H).
    #[arg(short = 'H', long = "no-header")]
    pub no_header: bool,
    /// Print a summary: totals and per-state counts (ss -s).
    #[arg(short = 's', long)]
    pub summary: bool,
    /// Show the process owning each socket (ss -p), from the agent's table; without the
    /// agent, from a walk of /proc like ss.
    #[arg(short = 'p', long)]
    pub processes: bool,
    /// Beyond ss: socket details, age and time in the current state (from the agent).
    #[arg(short = 'e', long)]
    pub extended: bool,
    /// Sockets of every network namespace, with a netns column (needs the agent or root).
    #[arg(long)]
    pub all_netns: bool,
    /// Connections that closed within DURATION (default 60s), however short they lived;
    /// needs the agent.
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "60s",
          value_parser = humantime::parse_duration)]
    pub closed: Option<Duration>,
    /// Output format.
    #[arg(short = 'f', long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// An ss filter: `state established '( dport = :ssh or sport = :ssh )'`,
    /// `dst 127.0.0.0/8 and dport ge :1024`, `exclude time-wait`...
    #[arg(value_name = "FILTER")]
    pub filter: Vec<String>,
}

impl SnapshotArgs {
    /// Parses the filter words with the options that change it (-a, -l, -4, -6).
    pub fn filter(&self, services: &Services) -> Result<Filter, crate::filter::FilterError> {
        let defaults = StateSet::default_for(self.all, self.listening);
        Ok(
            Filter::parse(&self.filter, services, defaults)?
                .restrict_families(self.ipv4, self.ipv6),
        )
    }
}

/// One live socket: what sock_diag reported, plus what only the event stream knows.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub sock: DiagSock,
    pub netns: u32,
    /// When the socket was created, if netmon saw it happen (CLOCK_MONOTONIC ns).
    pub born_ns: Option<u64>,
    /// When it entered its current state, if netmon saw it happen.
    pub since_ns: Option<u64>,
    pub owner: Option<Owner>,
}

impl Row {
    /// A row from a dump, with what `table` knows of the socket.
    pub fn new(sock: DiagSock, netns: u32, table: Option<&Table>) -> Self {
        let ages = table
            .map(|t| t.ages(sock.cookie, sock.state))
            .unwrap_or_default();
        Self {
            sock,
            netns,
            born_ns: ages.born_ns,
            since_ns: ages.since_ns,
            owner: table.and_then(|t| t.get(sock.cookie)).and_then(|s| s.owner),
        }
    }

    fn input(&self) -> FilterInput<'_> {
        FilterInput {
            state: self.sock.state,
            local: self.sock.local,
            remote: self.sock.remote,
            netns: Some(self.netns),
            pid: self.owner.map(|o| o.task.pid),
            comm: self.owner.as_ref().map(|o| o.task.comm()),
            uid: Some(self.sock.uid),
        }
    }
}

/// Everything a snapshot shows.
pub struct Data<'a> {
    pub rows: Vec<Row>,
    pub closed: Vec<&'a Closed>,
    /// Closed records evicted from the bounded history.
    pub evicted: u64,
    /// CLOCK_MONOTONIC now, for ages.
    pub now_ns: u64,
    pub clock: Clock,
}

/// Renders `data` as `args` asks; returns notes for stderr.
pub fn render(
    args: &SnapshotArgs,
    filter: &Filter,
    services: &Services,
    data: &Data<'_>,
    out: &mut impl Write,
) -> io::Result<Vec<String>> {
    let mut notes = Vec::new();
    if args.closed.is_some() {
        let closed: Vec<&Closed> = data
            .closed
            .iter()
            .copied()
            .filter(|c| filter.matches_socket(&closed_input(c)))
            .collect();
        render_closed(args, &closed, data, out)?;
        if data.evicted > 0 {
            notes.push(format!(
                "{} older closed connections were evicted from the history (raise the agent's \
                 --closed-capacity)",
                data.evicted
            ));
        }
        return Ok(notes);
    }
    let rows: Vec<&Row> = data
        .rows
        .iter()
        .filter(|r| filter.matches(&r.input()))
        .collect();
    if args.summary {
        return render_summary(&rows, out).map(|()| notes);
    }
    match args.format {
        Format::Json => render_json(&rows, data, out)?,
        Format::Text => {
            let show_state = !filter.one_state_selected();
            render_table(args, services, show_state, &rows, data, out)?
        }
    }
    Ok(notes)
}

fn closed_input(c: &Closed) -> FilterInput<'_> {
    FilterInput {
        state: TcpState::Close,
        local: c.local,
        remote: c.remote,
        netns: Some(c.netns),
        pid: c.owner.map(|o| o.task.pid),
        comm: c.owner.as_ref().map(|o| o.task.comm()),
        uid: c.owner.map(|o| o.task.uid),
    }
}

/// ss's address column halves: `addr` (right-aligned) and `port` (left-aligned). A port 0 is
/// `*`, and so is the `[::]` of an IPv6 socket that is not v6-only (it also takes IPv4).
fn addr_parts(
    a: &SocketAddr,
    v6only: bool,
    numeric: bool,
    services: &Services,
    buf: &mut String,
) -> usize {
    match a {
        SocketAddr::V4(v) => write!(buf, "{}", v.ip()),
        SocketAddr::V6(v) if v.ip().is_unspecified() && !v6only => buf.write_str("*"),
        SocketAddr::V6(v) => write!(buf, "[{}]", v.ip()),
    }
    .ok();
    let split = buf.len();
    buf.push(':');
    match (a.port(), numeric) {
        (0, _) => buf.push('*'),
        (p, false) if services.name(p).is_some() => {
            buf.push_str(services.name(p).unwrap_or_default())
        }
        (p, _) => {
            write!(buf, "{p}").ok();
        }
    }
    split
}

/// Cells of one row, formatted once into a shared buffer; widths are measured over all rows
/// before anything is printed, as ss does.
struct Cells {
    /// End offsets of each cell in the row's slice of the arena.
    ends: [u32; COLS],
    /// Where the local and peer address cells split into address and `:port`.
    local_split: u32,
    peer_split: u32,
}

const COLS: usize = 7;
const HEADERS: [&str; COLS] = [
    "State",
    "Recv-Q",
    "Send-Q",
    "Local Address:Port",
    "Peer Address:Port",
    "Netns",
    "Details",
];

/// `show_state` false drops the State column, as ss does when one state is selected.
fn render_table(
    args: &SnapshotArgs,
    services: &Services,
    show_state: bool,
    rows: &[&Row],
    data: &Data<'_>,
    out: &mut impl Write,
) -> io::Result<()> {
    let mut arena = String::with_capacity(rows.len() * 64);
    let mut cells = Vec::with_capacity(rows.len());
    for r in rows {
        let start = arena.len();
        let mut ends = [0u32; COLS];
        let mut end = |arena: &String, i: usize| ends[i] = (arena.len() - start) as u32;
        arena.push_str(r.sock.state.ss_name());
        end(&arena, 0);
        write!(arena, "{}", r.sock.recv_q).ok();
        end(&arena, 1);
        write!(arena, "{}", r.sock.send_q).ok();
        end(&arena, 2);
        // Returns where the `:port` half starts, relative to the row.
        let addr = |arena: &mut String, a: &SocketAddr| {
            (addr_parts(a, r.sock.v6only, args.numeric, services, arena) - start) as u32
        };
        let local_split = addr(&mut arena, &r.sock.local);
        end(&arena, 3);
        let peer_split = addr(&mut arena, &r.sock.remote);
        end(&arena, 4);
        if args.all_netns {
            write!(arena, "{}", r.netns).ok();
        }
        end(&arena, 5);
        if args.processes
            && let Some(o) = &r.owner
        {
            arena.push_str(&users(o));
        }
        if args.extended {
            if args.processes {
                arena.push(' ');
            }
            extended_details(r, data, &mut arena);
        }
        end(&arena, 6);
        cells.push((
            start,
            Cells {
                ends,
                local_split,
                peer_split,
            },
        ));
    }

    // Widths: simple columns, and the address halves (before and after the colon).
    let mut width = [0usize; COLS];
    let (mut laddr_w, mut lport_w, mut paddr_w, mut pport_w) = (0, 0, 0, 0);
    let cell = |c: &Cells, i: usize| {
        let from = if i == 0 { 0 } else { c.ends[i - 1] as usize };
        (from, c.ends[i] as usize)
    };
    for (_, c) in &cells {
        for (i, w) in width.iter_mut().enumerate() {
            let (from, to) = cell(c, i);
            *w = (*w).max(to - from);
        }
        let (from3, to3) = cell(c, 3);
        laddr_w = laddr_w.max(c.local_split as usize - from3);
        lport_w = lport_w.max(to3 - c.local_split as usize);
        let (from4, to4) = cell(c, 4);
        paddr_w = paddr_w.max(c.peer_split as usize - from4);
        pport_w = pport_w.max(to4 - c.peer_split as usize);
    }
    // The address headers split at their colon like the cells.
    laddr_w = laddr_w.max("Local Address".len());
    lport_w = lport_w.max(":Port".len());
    paddr_w = paddr_w.max("Peer Address".len());
    pport_w = pport_w.max(":Port".len());
    for (i, h) in HEADERS.iter().enumerate().take(3) {
        width[i] = width[i].max(h.len());
    }
    let show_netns = args.all_netns;
    let show_details = args.extended || args.processes;
    if !show_netns && !show_details {
        // Last column: no trailing padding.
        pport_w = 0;
    }

    let netns_w = width[5].max(HEADERS[5].len());
    // One line: State (unless one state is selected, as ss), queues, the address halves
    // aligned on their colons, then netns and details when shown.
    let line = |out: &mut dyn Write, f: [&str; 9]| -> io::Result<()> {
        if show_state {
            write!(out, "{:<w0$} ", f[0], w0 = width[0])?;
        }
        write!(
            out,
            "{:<w1$} {:<w2$} {:>la$}{:<lp$} {:>pa$}{:<pp$}",
            f[1],
            f[2],
            f[3],
            f[4],
            f[5],
            f[6],
            w1 = width[1],
            w2 = width[2],
            la = laddr_w,
            lp = lport_w,
            pa = paddr_w,
            pp = pport_w,
        )?;
        if show_netns {
            write!(out, " {:<netns_w$}", f[7])?;
        }
        if show_details {
            write!(out, " {}", f[8])?;
        }
        out.write_all(b"\n")
    };
    if !args.no_header {
        let details = if args.processes {
            "Process"
        } else {
            HEADERS[6]
        };
        let header = [
            HEADERS[0],
            HEADERS[1],
            HEADERS[2],
            "Local Address",
            ":Port",
            "Peer Address",
            ":Port",
            HEADERS[5],
            details,
        ];
        line(out, header)?;
    }
    for (start, c) in &cells {
        let row = &arena[*start..*start + c.ends[COLS - 1] as usize];
        let text = |i: usize| {
            let (from, to) = cell(c, i);
            &row[from..to]
        };
        let (from3, to3) = cell(c, 3);
        let (from4, to4) = cell(c, 4);
        let (ls, ps) = (c.local_split as usize, c.peer_split as usize);
        let fields = [
            text(0),
            text(1),
            text(2),
            &row[from3..ls],
            &row[ls..to3],
            &row[from4..ps],
            &row[ps..to4],
            text(5),
            text(6),
        ];
        line(out, fields)?;
    }
    Ok(())
}

/// `ss -e`'s `uid:N ino:N sk:COOKIE`, then netmon's `age:` and `state:` times.
fn extended_details(r: &Row, data: &Data<'_>, buf: &mut String) {
    write!(
        buf,
        "uid:{} ino:{} sk:{:x}",
        r.sock.uid, r.sock.inode, r.sock.cookie
    )
    .ok();
    let ago = |ns: Option<u64>| ns.map(|t| Duration::from_nanos(data.now_ns.saturating_sub(t)));
    match ago(r.born_ns) {
        Some(d) => write!(buf, " age:{}", duration(d.as_nanos() as u64)),
        None => buf.write_str(" age:-"),
    }
    .ok();
    match ago(r.since_ns) {
        Some(d) => write!(buf, " in-state:{}", duration(d.as_nanos() as u64)),
        None => buf.write_str(" in-state:-"),
    }
    .ok();
}

fn render_summary(rows: &[&Row], out: &mut impl Write) -> io::Result<()> {
    let count = |f: &dyn Fn(&Row) -> bool| rows.iter().filter(|r| f(r)).count();
    let estab = count(&|r| r.sock.state == TcpState::Established);
    let closed = count(&|r| r.sock.state == TcpState::Close);
    let timewait = count(&|r| r.sock.state == TcpState::TimeWait);
    // An orphan: a full socket no file refers to any more (closed by its process, still in a
    // closing state); TIME-WAIT and request sockets have no inode either and are not orphans.
    let orphaned = count(&|r| {
        r.sock.inode == 0
            && !matches!(
                r.sock.state,
                TcpState::TimeWait | TcpState::SynRecv | TcpState::Listen
            )
    });
    writeln!(
        out,
        "TCP:   {} (estab {estab}, closed {closed}, orphaned {orphaned}, timewait {timewait})\n",
        rows.len()
    )?;
    writeln!(
        out,
        "{:<14} {:>8} {:>8} {:>8}",
        "State", "Total", "IP", "IPv6"
    )?;
    let v4 = |r: &Row| r.sock.local.is_ipv4();
    let line = |out: &mut dyn Write, name: &str, pick: &dyn Fn(&Row) -> bool| {
        let total = count(pick);
        let ip = count(&|r| pick(r) && v4(r));
        writeln!(out, "{name:<14} {total:>8} {ip:>8} {:>8}", total - ip)
    };
    line(out, "TCP", &|_| true)?;
    for state in TcpState::ALL {
        if state == TcpState::NewSynRecv || state == TcpState::BoundInactive {
            continue;
        }
        line(out, state.ss_name(), &|r| r.sock.state == state)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct JsonSocket<'a> {
    r#type: &'static str,
    state: &'a str,
    recv_q: u32,
    send_q: u32,
    #[serde(serialize_with = "display")]
    local: SocketAddr,
    #[serde(serialize_with = "display")]
    peer: SocketAddr,
    local_addr: std::net::IpAddr,
    local_port: u16,
    peer_addr: std::net::IpAddr,
    peer_port: u16,
    netns: u32,
    cookie: u64,
    uid: u32,
    inode: u32,
    age_ns: Option<u64>,
    state_ns: Option<u64>,
    owner: Option<JsonOwner<'a>>,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn render_json(rows: &[&Row], data: &Data<'_>, out: &mut impl Write) -> io::Result<()> {
    for r in rows {
        let ago = |t: Option<u64>| t.map(|t| data.now_ns.saturating_sub(t));
        let rec = JsonSocket {
            r#type: "socket",
            state: r.sock.state.ss_name(),
            recv_q: r.sock.recv_q,
            send_q: r.sock.send_q,
            local: r.sock.local,
            peer: r.sock.remote,
            local_addr: r.sock.local.ip(),
            local_port: r.sock.local.port(),
            peer_addr: r.sock.remote.ip(),
            peer_port: r.sock.remote.port(),
            netns: r.netns,
            cookie: r.sock.cookie,
            uid: r.sock.uid,
            inode: r.sock.inode,
            age_ns: ago(r.born_ns),
            state_ns: ago(r.since_ns),
            owner: r.owner.as_ref().map(JsonOwner::new),
        };
        serde_json::to_writer(&mut *out, &rec)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn render_closed(
    args: &SnapshotArgs,
    closed: &[&Closed],
    data: &Data<'_>,
    out: &mut impl Write,
) -> io::Result<()> {
    if args.format == Format::Json {
        for c in closed {
            serde_json::to_writer(&mut *out, &JsonClosed::new(c, &data.clock, "closed"))?;
            out.write_all(b"\n")?;
        }
        if data.evicted > 0 {
            writeln!(out, r#"{{"type":"evicted","count":{}}}"#, data.evicted)?;
        }
        return Ok(());
    }
    let addr = |a: &SocketAddr| {
        let mut s = String::new();
        addr_parts(a, true, true, &Services::default(), &mut s);
        s
    };
    let lines: Vec<[String; 7]> = closed
        .iter()
        .map(|c| {
            [
                time_of_day(&data.clock, c.closed_ns),
                c.lifespan_ns().map_or_else(|| "-".into(), duration),
                addr(&c.local),
                addr(&c.remote),
                c.end.name().to_owned(),
                c.owner.map_or_else(|| "-".into(), |o| users(&o)),
                states_text(c),
            ]
        })
        .collect();
    let headers = [
        "Closed(UTC)",
        "Lifespan",
        "Local Address:Port",
        "Peer Address:Port",
        "End",
        "Process",
        "States",
    ];
    let mut w = headers.map(str::len);
    for l in &lines {
        for (i, cell) in l.iter().enumerate() {
            w[i] = w[i].max(cell.len());
        }
    }
    let mut row = |cells: [&str; 7]| {
        writeln!(
            out,
            "{:<a$} {:>b$} {:>c$} {:<d$} {:<e$} {:<f$} {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            a = w[0],
            b = w[1],
            c = w[2],
            d = w[3],
            e = w[4],
            f = w[5],
        )
    };
    if !args.no_header {
        row(headers)?;
    }
    for l in &lines {
        row(l.each_ref().map(String::as_str))?;
    }
    Ok(())
}

/// ss -p's process column: `users:(("comm",pid=N,fd=F))`, the fd only when known.
/// The name is escaped (controls, and the quote): it is whatever the process chose.
fn users(o: &Owner) -> String {
    let comm = crate::escape::escaped(o.task.comm(), Some(b'"'));
    match o.fd {
        Some(fd) => format!("users:((\"{comm}\",pid={},fd={fd}))", o.task.pid),
        None => format!("users:((\"{comm}\",pid={}))", o.task.pid),
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn sock(state: TcpState, local: &str, remote: &str, rq: u32, sq: u32) -> DiagSock {
        DiagSock {
            cookie: 0x1011,
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            recv_q: rq,
            send_q: sq,
            uid: 0,
            inode: 11352,
            ifindex: 0,
            v6only: false,
            timer: None,
        }
    }

    fn args(words: &[&str]) -> SnapshotArgs {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: SnapshotArgs,
        }
        let argv = std::iter::once("snapshot").chain(words.iter().copied());
        <P as clap::Parser>::try_parse_from(argv).unwrap().a
    }

    fn show(words: &[&str], rows: Vec<Row>) -> String {
        let a = args(words);
        let services = Services::from_text("ssh 22/tcp\nhttp 80/tcp www\n");
        let filter = a.filter(&services).unwrap();
        let data = Data {
            rows,
            closed: vec![],
            evicted: 0,
            now_ns: 5_000_000_000,
            clock: Clock::fixed(UNIX_EPOCH),
        };
        let mut out = Vec::new();
        render(&a, &filter, &services, &data, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn fixture() -> Vec<Row> {
        let row = |s| Row {
            sock: s,
            netns: 7,
            born_ns: None,
            since_ns: None,
            owner: None,
        };
        vec![
            row(sock(TcpState::Listen, "127.0.0.1:22", "0.0.0.0:0", 1, 128)),
            row(sock(
                TcpState::Established,
                "127.0.0.1:22",
                "127.0.0.1:50264",
                5,
                0,
            )),
            row(sock(TcpState::TimeWait, "[::1]:50278", "[::1]:8080", 0, 0)),
            row(sock(TcpState::Listen, "[::]:8080", "[::]:0", 0, 4096)),
            Row {
                born_ns: Some(1_000_000_000),
                since_ns: Some(4_500_000_000),
                ..row(sock(
                    TcpState::Established,
                    "[::ffff:127.0.0.1]:8080",
                    "[::ffff:127.0.0.1]:41000",
                    0,
                    0,
                ))
            },
        ]
    }

    #[test]
    fn ss_tan_layout_with_aligned_colons() {
        let out = show(&["-a", "-n"], fixture());
        let expected = "\
State     Recv-Q Send-Q      Local Address:Port        Peer Address:Port
LISTEN    1      128             127.0.0.1:22               0.0.0.0:*
ESTAB     5      0               127.0.0.1:22             127.0.0.1:50264
TIME-WAIT 0      0                   [::1]:50278              [::1]:8080
LISTEN    0      4096                    *:8080                   *:*
ESTAB     0      0      [::ffff:127.0.0.1]:8080  [::ffff:127.0.0.1]:41000
";
        assert_eq!(out, expected);
    }

    #[test]
    fn default_states_service_names_filters_and_no_header() {
        // No -a: ss's connected states only (no LISTEN, no TIME-WAIT); without -n, names.
        let out = show(&["-H"], fixture());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].contains("127.0.0.1:ssh"), "{out}");
        let out = show(
            &["-H", "-n", "state", "listening", "sport = :8080"],
            fixture(),
        );
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("*:8080"), "{out}");
        // v4-mapped sockets match IPv4 host filters, as in ss.
        let out = show(&["-H", "-n", "dst 127.0.0.1 and sport = :8080"], fixture());
        assert_eq!(out.lines().count(), 1, "{out}");
        let out = show(&["-H", "-n", "-4"], fixture());
        assert_eq!(out.lines().count(), 1, "-4 excludes mapped sockets: {out}");
    }

    #[test]
    fn one_selected_state_drops_the_state_column_as_in_ss() {
        let out = show(&["-n", "state", "listening"], fixture());
        let expected = "\
Recv-Q Send-Q Local Address:Port Peer Address:Port
1      128        127.0.0.1:22        0.0.0.0:*
0      4096               *:8080            *:*
";
        assert_eq!(out, expected);
        // Two states, or -l (LISTEN and CLOSE in ss): the column stays.
        for words in [
            &["-n", "-H", "state", "listening", "state", "time-wait"][..],
            &["-n", "-H", "-l"],
        ] {
            let out = show(words, fixture());
            assert!(
                out.lines()
                    .all(|l| l.starts_with("LISTEN") || l.starts_with("TIME-WAIT")),
                "{words:?}: {out}"
            );
        }
    }

    #[test]
    fn extended_shows_age_and_time_in_state_when_known() {
        let out = show(&["-H", "-n", "-e", "sport = :8080"], fixture());
        assert!(
            out.contains("uid:0 ino:11352 sk:1011 age:4.00s in-state:500.0ms"),
            "{out}"
        );
    }

    #[test]
    fn summary_counts_states_and_families() {
        let out = show(&["-s", "-a"], fixture());
        assert!(
            out.starts_with("TCP:   5 (estab 2, closed 0, orphaned 0, timewait 1)"),
            "{out}"
        );
        let listen = out.lines().find(|l| l.starts_with("LISTEN")).unwrap();
        assert_eq!(
            listen.split_whitespace().collect::<Vec<_>>(),
            ["LISTEN", "2", "1", "1"]
        );
    }

    #[test]
    fn json_rows_carry_ages() {
        let out = show(&["-a", "--format", "json", "sport = :8080"], fixture());
        let recs: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0]["state"], "LISTEN");
        assert_eq!(recs[0]["age_ns"], serde_json::Value::Null);
        assert_eq!(recs[1]["local"], "[::ffff:127.0.0.1]:8080");
        assert_eq!(recs[1]["age_ns"], 4_000_000_000u64);
        assert_eq!(recs[1]["state_ns"], 500_000_000u64);
    }
}
