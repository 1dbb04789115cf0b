//! `netmon snapshot`: its options, and rendering socket rows and closed connections as ss-style
//! tables, ss's summary, counts, or JSON Lines. The same code renders in the agent and in
//! fallback mode.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::Args;
use netmon_common::TcpState;
use serde::Serialize;

use crate::{
    cgroup::{CgroupNames, Unknown},
    clock::{Clock, time_of_day},
    columns::{Column, Grid, SS_BATCH_BYTES},
    count::{self, CountBy},
    diag_ext::{self, TcpInfo},
    filter::{Filter, FilterInput, Services, StateSet},
    output::{Format, JsonClosed, JsonOwner, display, duration, states_text},
    sock_diag::{DiagSock, TimerKind},
    table::{Closed, Owner, Table},
};

/// Options of `netmon snapshot` (the agent receives them as a `wire::SnapshotRequest`).
/// Flags combine as in ss: the last of `-a`/`-l` wins, `-e` implies `-o`.
#[derive(Clone, Debug, Default, Args)]
pub struct SnapshotArgs {
    /// TCP sockets (accepted for ss compatibility: netmon shows only TCP).
    #[arg(short = 't', long)]
    pub tcp: bool,
    /// Show listening and non-listening sockets (ss -a).
    #[arg(short = 'a', long, overrides_with = "listening")]
    pub all: bool,
    /// Show only listening sockets (ss -l).
    #[arg(short = 'l', long, overrides_with = "all")]
    pub listening: bool,
    /// Numeric ports: do not show service names (ss -n).
    #[arg(short = 'n', long)]
    pub numeric: bool,
    /// Resolve host names (ss -r), through the C library's resolver.
    #[arg(short = 'r', long)]
    pub resolve: bool,
    /// Only IPv4 sockets.
    #[arg(short = '4', long = "ipv4")]
    pub ipv4: bool,
    /// Only IPv6 sockets (IPv4-mapped ones included, as in ss).
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Do not print the header line (ss -H).
    #[arg(short = 'H', long = "no-header")]
    pub no_header: bool,
    /// Print ss's summary of the namespace's socket counters (ss -s); with -t or a filter,
    /// the table follows.
    #[arg(short = 's', long)]
    pub summary: bool,
    /// Show the process owning each socket (ss -p), from the agent's table; without the
    /// agent, from a walk of /proc like ss.
    #[arg(short = 'p', long)]
    pub processes: bool,
    /// Timers (ss -o): `timer:(keepalive,119min,0)`; with -i, the negotiated TCP options.
    #[arg(short = 'o', long)]
    pub options: bool,
    /// Socket details as ss -e (uid, ino, sk cookie, cgroup, v6only, shutdown), then netmon's
    /// `age:` and `in-state:` (from the agent).
    #[arg(short = 'e', long)]
    pub extended: bool,
    /// The socket's cgroup v2 path (ss --cgroup): `cgroup:/system.slice/x.service`.
    #[arg(long)]
    pub cgroup: bool,
    /// Socket memory (ss -m): `skmem:(r0,rb131072,...)`.
    #[arg(short = 'm', long)]
    pub memory: bool,
    /// TCP internals (ss -i): rtt, cwnd, retransmissions, bytes acked...
    #[arg(short = 'i', long)]
    pub info: bool,
    /// Each socket on one line (ss -O): -m and -i do not start a second line.
    #[arg(short = 'O', long)]
    pub oneline: bool,
    /// SELinux contexts (ss -Z): refused where SELinux is not enabled, as ss does.
    #[arg(short = 'Z', long)]
    pub context: bool,
    /// SELinux process and socket contexts (ss -z): as -Z.
    #[arg(short = 'z', long)]
    pub contexts: bool,
    /// Refused: netmon does not destroy sockets (use `ss -K` as root); see the README.
    #[arg(short = 'K', long)]
    pub kill: bool,
    /// Show the sockets of the named network namespace (`ip netns` names; needs root, as ss -N).
    #[arg(short = 'N', long = "net", value_name = "NAME")]
    pub net: Option<String>,
    /// Read the filter from FILE (`-` for stdin), as ss -F; `#` starts a comment.
    #[arg(short = 'F', long = "filter", value_name = "FILE")]
    pub filter_file: Option<PathBuf>,
    /// Sockets of every network namespace, with a netns column (needs the agent or root).
    #[arg(long)]
    pub all_netns: bool,
    /// Connections that closed within DURATION (default 60s), however short they lived;
    /// needs the agent.
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "60s",
          value_parser = humantime::parse_duration)]
    pub closed: Option<Duration>,
    /// Count sockets by BY[,BY] (state, peer, peer-port, local-port, owner, unit, container;
    /// end-reason with --closed), most frequent first, like `| sort | uniq -c | sort -rn`.
    #[arg(long, value_name = "BY", value_delimiter = ',', value_enum)]
    pub count: Vec<CountBy>,
    /// Write the kernel's raw sock_diag replies for this namespace's TCP sockets to FILE (`-`
    /// for stdout) instead of printing them, as ss -D does; -4, -6, -m and -i choose what is
    /// recorded. Replay with --from-dump FILE, or `TCPDIAG_FILE=FILE ss -tan`.
    #[arg(short = 'D', long, visible_alias = "diag", value_name = "FILE",
          conflicts_with_all = ["filter", "filter_file", "all_netns", "closed", "summary", "count"])]
    pub dump_to: Option<PathBuf>,
    /// Show the sockets recorded in FILE (by --dump-to, or by `ss -D`; `-` for stdin) instead
    /// of the live ones: no agent, no root, the same output for the same recording.
    #[arg(long, value_name = "FILE",
          conflicts_with_all = ["net", "all_netns", "closed", "summary", "processes", "dump_to"])]
    pub from_dump: Option<PathBuf>,
    /// Let the agent answer from its table, without walking the kernel, when its last full
    /// walk of the namespace is at most DURATION old and no event was lost since: sockets,
    /// states, addresses and owners are current (from the event stream); Recv-Q and Send-Q
    /// are from that walk (`-` for a socket opened since). A line before the header (a note
    /// with -H or --count) says how old. Otherwise the agent walks, exactly as without it.
    /// Served for the options the socket iterator serves (no -o, -e, -m, -i, --cgroup, JSON,
    /// unit or container) and one namespace (not --all-netns).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          conflicts_with_all = ["closed", "dump_to", "from_dump"])]
    pub max_age: Option<Duration>,
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

    /// Whether the output or the filter needs cgroup paths: one walk of the cgroup2 tree.
    /// The filter is looked at word by word (a word naming a cgroup predicate anywhere
    /// counts), since parsing it needs the services table; an extra walk is harmless.
    pub fn wants_cgroups(&self) -> bool {
        let predicate = |w: &str| matches!(w, "cgroup" | "unit" | "container" | "pod");
        self.extended
            || self.cgroup
            || self.format == Format::Json
            || self
                .count
                .iter()
                .any(|c| matches!(c, CountBy::Unit | CountBy::Container))
            || self.filter.iter().any(|w| {
                w.split(|c: char| c.is_whitespace() || "()=!<>".contains(c))
                    .any(predicate)
            })
    }

    /// Whether the `iter/tcp` iterator ([`crate::iter`]) has every field these options print
    /// and filter on (state, queues, addresses, ports, uid, inode, owners through the table).
    /// Timers (-o, -e), -e's details, -m, -i and cgroups (--cgroup, JSON, unit, container)
    /// come from sock_diag.
    pub fn iter_serves(&self) -> bool {
        !self.timers() && self.diag_ext() == 0 && !self.wants_cgroups()
    }

    /// Whether the agent's table may serve these options (`--max-age`): what the iterator
    /// serves, for one namespace, live sockets.
    pub fn table_serves(&self) -> bool {
        self.max_age.is_some() && self.iter_serves() && !self.all_netns && self.closed.is_none()
    }

    /// Whether the rows need what the table knows of each socket: owners (-p, --count owner,
    /// `pid`/`comm` in `filter`) or ages (-e).
    pub fn wants_table(&self, filter: &Filter) -> bool {
        self.processes
            || self.extended
            || self.count.contains(&CountBy::Owner)
            || filter.uses_owner()
    }

    /// ss -o (also implied by -e).
    pub fn timers(&self) -> bool {
        self.options || self.extended
    }

    /// The sock_diag attributes the options need (`idiag_ext`).
    pub fn diag_ext(&self) -> u8 {
        let mut ext = 0;
        if self.memory {
            ext |= diag_ext::want::MEMORY;
        }
        if self.info {
            ext |= diag_ext::want::INFO;
        }
        ext
    }

    /// Whether the table follows the summary: ss prints only the summary for `ss -s` alone
    /// (ss.c: `if (do_default && argc == 0) exit(0)`).
    pub fn table_after_summary(&self) -> bool {
        self.tcp || !self.filter.is_empty()
    }

    /// Combinations that cannot be served, as one line for the user.
    pub fn check(&self) -> Result<(), String> {
        if self.kill {
            return Err(
                "-K: netmon does not destroy sockets; use `ss -K` as root (see README)".into(),
            );
        }
        if self.context || self.contexts {
            if !std::path::Path::new("/sys/fs/selinux/enforce").exists() {
                return Err("SELinux is not enabled.".into());
            }
            return Err("-Z/-z: netmon does not show SELinux contexts yet; use `ss -Z`".into());
        }
        if self.summary && self.all_netns {
            return Err(
                "-s summarises one namespace, as ss; drop --all-netns (or use -N NAME)".into(),
            );
        }
        if self.count.contains(&CountBy::EndReason) && self.closed.is_none() {
            return Err(
                "--count end-reason needs --closed (only closed connections have one)".into(),
            );
        }
        Ok(())
    }
}

/// One live socket: what sock_diag reported, plus what only the event stream knows.
#[derive(Clone, Debug)]
pub struct Row {
    pub sock: DiagSock,
    pub netns: u32,
    /// When the socket was created, if netmon saw it happen (CLOCK_MONOTONIC ns).
    pub born_ns: Option<u64>,
    /// When it entered its current state, if netmon saw it happen.
    pub since_ns: Option<u64>,
    pub owner: Option<Owner>,
    /// Served from the agent's table for a socket no walk saw (opened since the last one):
    /// its queues are unknown and printed `-`, its uid is its owner's or unknown.
    pub unwalked: bool,
}

impl Row {
    /// A row from a dump, with what `table` knows of the socket.
    pub fn new(sock: DiagSock, netns: u32, table: Option<&Table>) -> Self {
        let ages = table
            .map(|t| t.ages(sock.cookie, sock.state))
            .unwrap_or_default();
        let owner = table.and_then(|t| t.get(sock.cookie)).and_then(|s| s.owner);
        Self {
            sock,
            netns,
            born_ns: ages.born_ns,
            since_ns: ages.since_ns,
            owner,
            unwalked: false,
        }
    }

    pub(crate) fn input<'a>(&'a self, cgroups: Option<&'a CgroupNames>) -> FilterInput<'a> {
        FilterInput {
            cgroup: count::labels(cgroups, self.sock.attrs.cgroup_id.unwrap_or(0)),
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

/// What rendering needs beyond the rows: clocks, names, and whether marks may be shown.
#[derive(Default)]
pub struct Context {
    /// CLOCK_MONOTONIC now, for ages.
    pub now_ns: u64,
    pub clock: Clock,
    /// cgroup paths and labels, for -e, --cgroup, JSON, cgroup filters and counts.
    pub cgroups: Option<CgroupNames>,
    /// Host names, for -r: those found so far.
    pub names: HashMap<IpAddr, String>,
    /// Addresses -r looked up already, named or not.
    looked_up: HashSet<IpAddr>,
    /// Whether `SO_MARK` may be shown: the kernel reports it only to CAP_NET_ADMIN, and the
    /// agent shows it only to root.
    pub show_mark: bool,
}

impl Context {
    /// Names the addresses of `rows` not looked up before (-r, blocking on the resolver:
    /// not on a thread that drains the ring).
    fn resolve(&mut self, rows: &[Row]) {
        let mut new: Vec<IpAddr> = rows
            .iter()
            .flat_map(|r| [r.sock.local.ip(), r.sock.remote.ip()])
            .filter(|ip| !self.looked_up.contains(ip))
            .collect();
        new.sort_unstable();
        new.dedup();
        self.looked_up.extend(new.iter().copied());
        self.names.extend(crate::hosts::resolve(new));
    }
}

/// How the rows are being printed.
enum Form {
    /// ss's table, printed in ss-sized batches.
    Table(Grid),
    Json,
    Count(count::Counts),
    ClosedTable(Grid),
    ClosedJson,
}

/// Renders a snapshot a part at a time, as `args` asks: rows (or closed connections) go in
/// by parts, are filtered, written to the output or counted, and let go; nothing but the
/// table's current batch of text (ss's ~4 MiB, [`SS_BATCH_BYTES`]) and the counts is held
/// from one part to the next. The output is the same whatever the parts are.
pub struct Renderer<'a, W: Write> {
    args: &'a SnapshotArgs,
    filter: &'a Filter,
    services: &'a Services,
    out: W,
    pub context: Context,
    /// Closed connections evicted from the bounded history, as of the last part.
    evicted: u64,
    form: Form,
}

impl<'a, W: Write> Renderer<'a, W> {
    /// Loads the cgroup paths if the options print or filter on them. `show_mark`: see
    /// [`Context::show_mark`].
    pub fn new(
        args: &'a SnapshotArgs,
        filter: &'a Filter,
        services: &'a Services,
        clock: Clock,
        show_mark: bool,
        out: W,
    ) -> Self {
        let form = match (args.closed.is_some(), args.count.is_empty(), args.format) {
            (closed, false, _) => Form::Count(count::Counts::new(&args.count, closed)),
            (true, true, Format::Json) => Form::ClosedJson,
            (true, true, Format::Text) => Form::ClosedTable(closed_grid()),
            (false, true, Format::Json) => Form::Json,
            (false, true, Format::Text) => {
                Form::Table(table_grid(args, !filter.one_state_selected()))
            }
        };
        Self {
            args,
            filter,
            services,
            out,
            context: Context {
                clock,
                cgroups: args.wants_cgroups().then(CgroupNames::load),
                show_mark,
                ..Context::default()
            },
            evicted: 0,
            form,
        }
    }

    /// Renders a part of the live sockets; `now_ns` (CLOCK_MONOTONIC) dates their ages.
    pub fn rows(&mut self, mut rows: Vec<Row>, now_ns: u64) -> io::Result<()> {
        let Self {
            args,
            filter,
            services,
            context,
            form,
            out,
            ..
        } = self;
        context.now_ns = now_ns;
        rows.retain(|r| filter.matches(&r.input(context.cgroups.as_ref())));
        if args.resolve {
            context.resolve(&rows);
        }
        match form {
            Form::Table(grid) => {
                for r in &rows {
                    table_row(args, services, r, context, grid);
                    grid.print_batch_if_over(out, !args.no_header, SS_BATCH_BYTES)?;
                }
            }
            Form::Json => {
                for r in &rows {
                    json_row(args, r, context, out)?;
                }
            }
            Form::Count(counts) => {
                for r in &rows {
                    counts.live(r, context.cgroups.as_ref());
                }
            }
            Form::ClosedTable(_) | Form::ClosedJson => {}
        }
        Ok(())
    }

    /// Renders a part of the closed connections; `evicted`: how many the history has
    /// evicted so far.
    pub fn closed(&mut self, closed: Vec<Closed>, evicted: u64) -> io::Result<()> {
        let Self {
            args,
            filter,
            context,
            form,
            out,
            ..
        } = self;
        self.evicted = evicted;
        let cgroups = context.cgroups.as_ref();
        let shown = closed
            .iter()
            .filter(|c| filter.matches_socket(&closed_input(c, cgroups)));
        match form {
            Form::ClosedTable(grid) => {
                for c in shown {
                    closed_row(c, context, grid);
                    grid.print_batch_if_over(out, !args.no_header, SS_BATCH_BYTES)?;
                }
            }
            Form::ClosedJson => {
                for c in shown {
                    closed_json(c, context, out)?;
                }
            }
            Form::Count(counts) => {
                for c in shown {
                    counts.closed(c, cgroups);
                }
            }
            Form::Table(_) | Form::Json => {}
        }
        Ok(())
    }

    /// Prints what is still held (the last batch of the table, the counts); returns notes
    /// for stderr.
    pub fn finish(mut self) -> io::Result<Vec<String>> {
        let header = !self.args.no_header;
        match &mut self.form {
            Form::Table(grid) | Form::ClosedTable(grid) => grid.print(&mut self.out, header)?,
            Form::Json => {}
            Form::ClosedJson => {
                if self.evicted > 0 {
                    writeln!(self.out, r#"{{"type":"evicted","count":{}}}"#, self.evicted)?;
                }
            }
            Form::Count(counts) => counts.print(self.args, &mut self.out)?,
        }
        self.out.flush()?;
        let mut notes = Vec::new();
        if self.args.closed.is_some() && self.evicted > 0 {
            notes.push(format!(
                "{} older closed connections were evicted from the history (raise the agent's \
                 --closed-capacity)",
                self.evicted
            ));
        }
        Ok(notes)
    }
}

fn closed_input<'a>(c: &'a Closed, cgroups: Option<&'a CgroupNames>) -> FilterInput<'a> {
    FilterInput {
        cgroup: count::labels(cgroups, c.cgroup_id),
        state: TcpState::Close,
        local: c.local,
        remote: c.remote,
        netns: Some(c.netns),
        pid: c.owner.map(|o| o.task.pid),
        comm: c.owner.as_ref().map(|o| o.task.comm()),
        uid: c.owner.map(|o| o.task.uid),
    }
}

/// How ss writes an address half: IPv4 as it is, IPv6 in brackets, the `[::]` of an IPv6
/// socket that is not v6-only (it also takes IPv4) as `*`; with -r, a host name.
fn write_host(
    a: &SocketAddr,
    v6only: bool,
    names: Option<&HashMap<IpAddr, String>>,
    buf: &mut String,
) {
    if let Some(name) = names.and_then(|n| n.get(&a.ip())) {
        buf.push_str(name);
        return;
    }
    match a {
        SocketAddr::V4(v) => {
            push_ipv4(buf, v.ip().octets());
            Ok(())
        }
        SocketAddr::V6(v) if v.ip().is_unspecified() && !v6only => buf.write_str("*"),
        SocketAddr::V6(v) => write!(buf, "[{}]", v.ip()),
    }
    .ok();
}

/// ss's `:port` half: `*` for 0, a service name unless numeric.
fn write_port(port: u16, numeric: bool, services: &Services, buf: &mut String) {
    buf.push(':');
    match (port, numeric) {
        (0, _) => buf.push('*'),
        (p, false) if services.name(p).is_some() => {
            buf.push_str(services.name(p).unwrap_or_default())
        }
        (p, _) => push_decimal(buf, p.into()),
    }
}

/// An IPv4 address in dotted decimal, put together on the stack and pushed at once: a
/// snapshot of 100k sockets prints 200k addresses, and four decimal conversions and seven
/// pushes each were a tenth of its rendering.
fn push_ipv4(buf: &mut String, octets: [u8; 4]) {
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in octets.into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let (digits, n) = OCTETS[usize::from(octet)];
        text[len..len + 3].copy_from_slice(&digits);
        len += usize::from(n);
    }
    // Digits and dots: ASCII.
    buf.push_str(std::str::from_utf8(&text[..len]).unwrap_or_default());
}

/// Each byte's decimal digits (left-aligned in three bytes) and how many there are.
const OCTETS: [([u8; 3], u8); 256] = {
    let mut table = [([0; 3], 0); 256];
    let mut n = 0;
    while n < 256 {
        let (h, t, u) = ((n / 100) as u8, (n / 10 % 10) as u8, (n % 10) as u8);
        table[n] = match n {
            0..=9 => ([b'0' + u, 0, 0], 1),
            10..=99 => ([b'0' + t, b'0' + u, 0], 2),
            _ => ([b'0' + h, b'0' + t, b'0' + u], 3),
        };
        n += 1;
    }
    table
};

/// `n` in decimal without the formatting machinery: a snapshot of a million sockets prints
/// ten numbers a row, and `write!` was a tenth of its rendering.
fn push_decimal(buf: &mut String, n: u64) {
    buf.push_str(itoa::Buffer::new().format(n));
}

/// ss's socket table; `show_state` false drops the State column, as ss does when one state
/// is selected.
fn table_grid(args: &SnapshotArgs, show_state: bool) -> Grid {
    // ss's columns (ss.c `columns[]`), plus netmon's netns before Process.
    Grid::batched(vec![
        Column::left("State").hidden_if(!show_state),
        Column::left("Recv-Q").min_width(6),
        Column::left("Send-Q").min_width(6),
        Column::right("Local Address"),
        Column::left(":Port").glued(),
        Column::right("Peer Address"),
        Column::left(":Port").glued(),
        Column::left("Netns").hidden_if(!args.all_netns),
        Column::left("Process").glued(),
        Column::free(),
    ])
}

/// One socket's row of ss's table.
fn table_row(args: &SnapshotArgs, services: &Services, r: &Row, data: &Context, grid: &mut Grid) {
    let names = args.resolve.then_some(&data.names);
    let s = &r.sock;
    grid.cell(s.state.ss_name());
    for q in [s.recv_q, s.send_q] {
        if r.unwalked {
            grid.buf().push('-');
        } else {
            push_decimal(grid.buf(), q.into());
        }
        grid.end_cell();
    }
    for a in [&s.local, &s.remote] {
        write_host(a, s.v6only, names, grid.buf());
        grid.end_cell();
        write_port(a.port(), args.numeric, services, grid.buf());
        grid.end_cell();
    }
    if args.all_netns {
        push_decimal(grid.buf(), r.netns.into());
    }
    grid.end_cell();
    process_cell(args, r, data, grid.buf());
    grid.end_cell();
    if args.memory || args.info {
        let buf = grid.buf();
        buf.push_str(if args.oneline { "" } else { "\n\t" });
        let ext = s.attrs.ext.as_deref();
        let listening = s.state == TcpState::Listen;
        diag_ext::info_text(ext, listening, args.timers(), args.numeric, buf);
    }
    grid.end_cell();
}

/// What ss prints after the addresses, each with its leading space: `users:(...)` (-p), the
/// timer (-o), the details (-e), then netmon's ages (-e).
fn process_cell(args: &SnapshotArgs, r: &Row, data: &Context, buf: &mut String) {
    if args.processes
        && let Some(o) = &r.owner
    {
        buf.push(' ');
        buf.push_str(&users(o));
    }
    if args.timers() {
        diag_ext::timer_text(r.sock.timer.as_ref(), buf);
    }
    if args.extended {
        extended_details(r, data, buf);
    } else if args.cgroup
        && let Some(id) = r.sock.attrs.cgroup_id.filter(|&id| id != 0)
    {
        // As ss --cgroup: the path alone, in the Process column.
        buf.push_str(" cgroup:");
        match &data.cgroups {
            Some(c) => c.write_path(id, buf),
            None => {
                write!(buf, "unreachable:{id:x}").ok();
            }
        }
    }
}

/// ss -e: `uid:N` (when not 0), `ino:N sk:COOKIE`, the attribute details, then netmon's
/// `age:` and `in-state:` times (`-` when the agent did not see the moment).
fn extended_details(r: &Row, data: &Context, buf: &mut String) {
    let s = &r.sock;
    if s.uid != 0 {
        write!(buf, " uid:{}", s.uid).ok();
    }
    write!(buf, " ino:{} sk:{:x}", s.inode, s.cookie).ok();
    let cgroup = |id: u64, out: &mut String| match &data.cgroups {
        Some(c) => c.write_path(id, out),
        None => {
            write!(out, "unreachable:{id:x}").ok();
        }
    };
    diag_ext::details_text(&s.attrs, data.show_mark, &cgroup, buf);
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
    local_addr: IpAddr,
    local_port: u16,
    peer_addr: IpAddr,
    peer_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    local_host: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_host: Option<&'a str>,
    netns: u32,
    cookie: u64,
    uid: u32,
    inode: u32,
    timer: Option<JsonTimer>,
    shutdown: Option<&'static str>,
    v6only: Option<bool>,
    cgroup_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<String>,
    unit: Option<&'a str>,
    container_id: Option<&'a str>,
    pod_uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mark: Option<u32>,
    age_ns: Option<u64>,
    state_ns: Option<u64>,
    owner: Option<JsonOwner<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skmem: Option<JsonSkmem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_info: Option<&'a TcpInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cong: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonTimer {
    kind: &'static str,
    expires_ms: u32,
    retrans: u8,
}

/// `SK_MEMINFO_*`, named.
#[derive(Serialize)]
struct JsonSkmem {
    rmem_alloc: u32,
    rcvbuf: u32,
    wmem_alloc: u32,
    sndbuf: u32,
    fwd_alloc: u32,
    wmem_queued: u32,
    optmem: u32,
    backlog: Option<u32>,
    drops: Option<u32>,
}

/// One socket as a JSON line.
fn json_row(args: &SnapshotArgs, r: &Row, data: &Context, out: &mut impl Write) -> io::Result<()> {
    {
        let s = &r.sock;
        let ago = |t: Option<u64>| t.map(|t| data.now_ns.saturating_sub(t));
        let ext = s.attrs.ext.as_deref();
        let host = |ip: IpAddr| {
            args.resolve
                .then(|| data.names.get(&ip).map(String::as_str))
                .flatten()
        };
        let labels = count::labels(data.cgroups.as_ref(), s.attrs.cgroup_id.unwrap_or(0));
        let rec = JsonSocket {
            r#type: "socket",
            state: s.state.ss_name(),
            recv_q: s.recv_q,
            send_q: s.send_q,
            local: s.local,
            peer: s.remote,
            local_addr: s.local.ip(),
            local_port: s.local.port(),
            peer_addr: s.remote.ip(),
            peer_port: s.remote.port(),
            local_host: host(s.local.ip()),
            peer_host: host(s.remote.ip()),
            netns: r.netns,
            cookie: s.cookie,
            uid: s.uid,
            inode: s.inode,
            timer: s.timer.map(|t| JsonTimer {
                kind: match t.kind {
                    TimerKind::Retransmit => "on",
                    TimerKind::KeepAlive => "keepalive",
                    TimerKind::TimeWait => "timewait",
                    TimerKind::Probe => "persist",
                    TimerKind::Unknown(_) => "unknown",
                },
                expires_ms: t.expires_ms,
                retrans: t.retrans,
            }),
            shutdown: s.attrs.shutdown.map(|m| match m & 3 {
                0 => "<->",
                1 => "-->",
                2 => "<--",
                _ => "---",
            }),
            v6only: s.attrs.v6only,
            cgroup_id: s.attrs.cgroup_id,
            cgroup: s
                .attrs
                .cgroup_id
                .and_then(|id| data.cgroups.as_ref().map(|c| c.path(id))),
            unit: labels.and_then(|l| l.unit.as_deref()),
            container_id: labels.and_then(|l| l.container_id.as_deref()),
            pod_uid: labels.and_then(|l| l.pod_uid.as_deref()),
            mark: s.attrs.mark.filter(|_| data.show_mark),
            age_ns: ago(r.born_ns),
            state_ns: ago(r.since_ns),
            owner: r.owner.as_ref().map(JsonOwner::new),
            skmem: ext
                .and_then(|e| e.skmem.as_ref())
                .filter(|m| m.len() >= 7)
                .map(|m| JsonSkmem {
                    rmem_alloc: m[0],
                    rcvbuf: m[1],
                    wmem_alloc: m[2],
                    sndbuf: m[3],
                    fwd_alloc: m[4],
                    wmem_queued: m[5],
                    optmem: m[6],
                    backlog: m.get(7).copied(),
                    drops: m.get(8).copied(),
                }),
            tcp_info: ext.and_then(|e| e.info.as_ref()),
            cong: ext.and_then(|e| e.cong.as_deref()),
        };
        serde_json::to_writer(&mut *out, &rec)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// One closed connection as a JSON line.
fn closed_json(c: &Closed, data: &Context, out: &mut impl Write) -> io::Result<()> {
    let labels = data.cgroups.as_ref().map_or(Err(Unknown::NoMount), |g| {
        g.get(c.cgroup_id).ok_or(Unknown::NotFound)
    });
    let labels = if c.cgroup_id == 0 {
        Err(Unknown::NoId)
    } else {
        labels
    };
    let rec = JsonClosed::new(c, &data.clock, "closed", labels);
    serde_json::to_writer(&mut *out, &rec)?;
    out.write_all(b"\n")
}

/// The table of closed connections.
fn closed_grid() -> Grid {
    Grid::batched(vec![
        Column::left("Closed(UTC)"),
        Column::right("Lifespan"),
        Column::right("Local Address"),
        Column::left(":Port").glued(),
        Column::right("Peer Address"),
        Column::left(":Port").glued(),
        Column::left("End"),
        Column::left("Process"),
        Column::left("States"),
    ])
}

/// One closed connection's row.
fn closed_row(c: &Closed, data: &Context, grid: &mut Grid) {
    grid.cell(&time_of_day(&data.clock, c.closed_ns));
    grid.cell(&c.lifespan_ns().map_or_else(|| "-".into(), duration));
    for a in [&c.local, &c.remote] {
        write_host(a, true, None, grid.buf());
        grid.end_cell();
        // Numeric: no services table.
        write_port(a.port(), true, &Services::default(), grid.buf());
        grid.end_cell();
    }
    grid.cell(c.end.name());
    grid.cell(&c.owner.map_or_else(|| "-".into(), |o| users(&o)));
    grid.cell(&states_text(c));
}

/// ss -p's process column: `users:(("comm",pid=N,fd=F))`, the fd only when known.
/// The name is escaped (controls, and the quote): it is whatever the process chose.
pub fn users(o: &Owner) -> String {
    let comm = crate::escape::escaped(o.task.comm(), Some(b'"'));
    match o.fd {
        Some(fd) => format!("users:((\"{comm}\",pid={},fd={fd}))", o.task.pid),
        None => format!("users:((\"{comm}\",pid={}))", o.task.pid),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn ipv4_addresses_print_as_display_does() {
        // Every byte value in every position, and the widest and narrowest addresses.
        for n in 0..=255u8 {
            for octets in [
                [n, 0, 0, 0],
                [0, n, 0, 0],
                [0, 0, n, 0],
                [0, 0, 0, n],
                [n, n, n, n],
                [255, 255, 255, n],
            ] {
                let mut buf = String::from("x");
                push_ipv4(&mut buf, octets);
                assert_eq!(buf, format!("x{}", std::net::Ipv4Addr::from(octets)));
            }
        }
    }

    #[test]
    fn decimals_print_as_display_does() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            255,
            4096,
            65535,
            u32::MAX.into(),
            u64::MAX,
        ] {
            let mut buf = String::from("x");
            push_decimal(&mut buf, n);
            assert_eq!(buf, format!("x{n}"));
        }
    }

    fn sock(state: TcpState, local: &str, remote: &str, rq: u32, sq: u32) -> DiagSock {
        DiagSock {
            recv_q: rq,
            send_q: sq,
            inode: 11352,
            ..DiagSock::fixture(0x1011, state, local, remote)
        }
    }

    /// `netmon snapshot WORDS` parsed as the CLI parses it.
    pub(crate) fn args(words: &[&str]) -> SnapshotArgs {
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
        let mut out = Vec::new();
        let clock = Clock::fixed(UNIX_EPOCH);
        let mut renderer = Renderer::new(&a, &filter, &services, clock, false, &mut out);
        renderer.rows(rows, 5_000_000_000).unwrap();
        renderer.finish().unwrap();
        String::from_utf8(out).unwrap()
    }

    fn fixture() -> Vec<Row> {
        let row = |s| Row {
            sock: s,
            netns: 7,
            born_ns: None,
            since_ns: None,
            owner: None,
            unwalked: false,
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
State     Recv-Q Send-Q      Local Address:Port        Peer Address:Port Process
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
Recv-Q Send-Q Local Address:Port Peer Address:PortProcess
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
            out.ends_with(":41000 ino:11352 sk:1011 age:4.00s in-state:500.0ms\n"),
            "{out}"
        );
    }

    #[test]
    fn summary_alone_unless_tcp_or_a_filter_asks_for_the_table_as_ss() {
        assert!(!args(&["-s"]).table_after_summary());
        assert!(!args(&["-s", "-a", "-n"]).table_after_summary());
        assert!(args(&["-s", "-t"]).table_after_summary());
        assert!(args(&["-s", "state", "established"]).table_after_summary());
    }

    #[test]
    fn last_of_all_and_listening_wins_as_in_ss() {
        let listeners = |words: &[&str]| {
            show(words, fixture())
                .lines()
                .filter(|l| !l.starts_with("LISTEN"))
                .count()
        };
        assert_eq!(listeners(&["-H", "-n", "-a", "-l"]), 0);
        assert_eq!(listeners(&["-H", "-n", "-al"]), 0);
        assert_eq!(listeners(&["-H", "-n", "-la"]), 3);
        assert_eq!(listeners(&["-H", "-n", "-l", "-a"]), 3);
    }

    #[test]
    fn timers_and_one_line_info() {
        let mut rows = fixture();
        rows[2].sock.timer = Some(crate::sock_diag::Timer {
            kind: TimerKind::TimeWait,
            expires_ms: 59_000,
            retrans: 0,
        });
        let out = show(&["-H", "-n", "-o", "state", "time-wait"], rows.clone());
        assert!(out.ends_with(":8080 timer:(timewait,59sec,0)\n"), "{out}");
        // -e implies -o, as in ss.
        let out = show(&["-H", "-n", "-e", "state", "time-wait"], rows.clone());
        assert!(
            out.contains(":8080 timer:(timewait,59sec,0) ino:11352 sk:1011"),
            "{out}"
        );
        // -m starts a second line; -O keeps it on the first.
        let out = show(&["-H", "-n", "-m", "state", "time-wait"], rows.clone());
        assert!(out.ends_with(":8080\n\t\n"), "{out:?}");
        let out = show(&["-H", "-n", "-m", "-O", "state", "time-wait"], rows);
        assert!(out.ends_with(":8080\n"), "{out:?}");
    }

    #[test]
    fn counts_sorted_like_uniq_c_sort_rn() {
        let out = show(&["-a", "-n", "--count", "state"], fixture());
        assert_eq!(
            out,
            "Count State\n    2 ESTAB\n    2 LISTEN\n    1 TIME-WAIT\n"
        );
        let out = show(
            &["-a", "--count", "state,local-port", "-f", "json"],
            fixture(),
        );
        let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(first["count"], 1);
        assert_eq!(first["type"], "count");
        assert!(first["local_port"].is_u64(), "{first}");
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
