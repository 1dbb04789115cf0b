//! Man pages and shell completions, generated from the clap definitions of [`crate::cli`].
//!
//! clap gives each page its NAME, SYNOPSIS, DESCRIPTION and OPTIONS; the sections a reader of a
//! man page looks for after the options (examples, the filter language, exit status, files,
//! environment, see also) are written here, per page, so that `man netmon-snapshot` answers
//! what `--help` has no room for.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// One man page: where it goes under a man directory (`man1/netmon.1`) and how to render it.
pub struct Page {
    pub path: PathBuf,
    name: String,
    man: clap_mangen::Man,
}

impl Page {
    /// The page as roff: clap's sections, then this page's own ([`extra_sections`]) before
    /// VERSION.
    pub fn render(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut clap = Vec::new();
        self.man.render(&mut clap)?;
        let mut clap = String::from_utf8(clap).map_err(io::Error::other)?;
        if self.name == "netmon" {
            // clap_mangen gives every subcommand its parent's section; the agent's is 8.
            clap = clap.replace("netmon\\-agent(1)", "netmon\\-agent(8)");
        }
        let at = clap.find(".SH VERSION").unwrap_or(clap.len());
        out.write_all(&clap.as_bytes()[..at])?;
        for (heading, body) in extra_sections(&self.name) {
            out.write_all(section(heading, body).as_bytes())?;
        }
        out.write_all(&clap.as_bytes()[at..])
    }
}

/// netmon(1) and one page per visible subcommand: netmon-watch(1), netmon-snapshot(1),
/// netmon-top(1), netmon-features(1), and netmon-agent(8), in section 8 because it is a daemon
/// an administrator runs.
pub fn man_pages() -> Vec<Page> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = vec![page(cmd.clone(), "1")];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let section = if sub.get_name() == "agent" { "8" } else { "1" };
        pages.push(page(sub.clone(), section));
    }
    pages
}

fn page(cmd: clap::Command, section: &str) -> Page {
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_owned();
    // The agent's `--help` epilogue (files, socket activation) is in its FILES and
    // ENVIRONMENT sections here, not under clap_mangen's heading "EXTRA".
    let cmd = cmd.after_help(None::<&str>).after_long_help(None::<&str>);
    let man = clap_mangen::Man::new(cmd)
        .title(name.to_uppercase())
        .section(section)
        .manual("netmon");
    let path = PathBuf::from(format!("man{section}")).join(format!("{name}.{section}"));
    Page { path, name, man }
}

/// Writes every page under `dir` (`dir/man1/netmon.1`, ..., `dir/man8/netmon-agent.8`) and
/// returns the paths written.
pub fn write_man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for page in man_pages() {
        let path = dir.join(&page.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = io::BufWriter::new(std::fs::File::create(&path)?);
        page.render(&mut file)?;
        file.flush()?;
        written.push(path);
    }
    Ok(written)
}

/// A section in roff from plain text: paragraphs split by blank lines; a paragraph whose lines
/// start with two spaces is shown as written (commands, sample output), any other is filled.
fn section(heading: &str, body: &str) -> String {
    let mut out = format!(".SH {heading}\n");
    for (i, para) in body.trim_matches('\n').split("\n\n").enumerate() {
        if i > 0 {
            out.push_str(".PP\n");
        }
        let literal = para.lines().all(|l| l.starts_with("  "));
        if literal {
            out.push_str(".nf\n.RS 4\n");
        }
        for line in para.lines() {
            out.push_str(&escape(if literal { &line[2..] } else { line }));
            out.push('\n');
        }
        if literal {
            out.push_str(".RE\n.fi\n");
        }
    }
    out
}

/// Text as roff input: a backslash is `\e`, a minus `\-` (so that options and commands copy
/// as typed, not as hyphens), and a line that would start with a control character (`.` or
/// `'`) starts with the zero-width `\&` instead.
fn escape(line: &str) -> String {
    let line = line.replace('\\', "\\e").replace('-', "\\-");
    if line.starts_with('.') || line.starts_with('\'') {
        format!("\\&{line}")
    } else {
        line
    }
}

const FILTERS: &str = "
The filter is ss's language, given after the options (or with -F FILE). Leading `state NAME` and `exclude NAME` words choose states: established, syn-sent, syn-recv, fin-wait-1, fin-wait-2, time-wait, closed, close-wait, last-ack, listening, closing, and the groups all, connected, synchronized, bucket, big.

`src ADDR` and `dst ADDR` take an address, a prefix or a port (`10.0.0.0/8`, `[::1]:22`, `*:80`) with `=` or `!=`; `sport` and `dport` take a port or a service name (`:22`, `:ssh`) with =, !=, <, <=, >, >= or eq, ne, lt, le, gt, ge. netmon adds `pid`, `uid` and `netns` (a namespace inode) with the same comparisons, `comm = NAME`, and the socket's cgroup: `unit = NAME`, `container = ID` (or a prefix of one), `pod = UID`, and ss's `cgroup PATH`.

Terms combine with and (&&, or nothing between them), or (||), not (!) and parentheses. Unlike ss, `and` binds tighter than `or`: use parentheses when mixing them. A filter that does not parse gets one error line with the spot marked.

  state established '( dport = :ssh or sport = :ssh )'
  dst 127.0.0.0/8 and dport ge :1024
  exclude time-wait 'comm = nginx and not dst 10.0.0.0/8'
";

const EXIT_STATUS: &str = "
0 on success, also when SIGINT or SIGTERM ends watch or the agent, or when the reader of the output goes away (`netmon watch | head`). 1 on any error, said in one line on stderr. 130 or 143 when watch or the agent, stopped by SIGINT or SIGTERM, could not stop by itself within 10 s (its loop stuck writing to a reader that stopped reading): the watchdog ends it as a shell reports a death by that signal.
";

const SEE_ALSO: &str = "
netmon(1), netmon-watch(1), netmon-snapshot(1), netmon-top(1), netmon-features(1), netmon-agent(8), ss(8), tcpstates(8), tcplife(8). The README and json.md (the JSON Lines schema) are in /usr/share/doc/netmon/.
";

/// The sections of `page` (a page name: `netmon`, `netmon-watch`, ...) after OPTIONS.
fn extra_sections(page: &str) -> Vec<(&'static str, &'static str)> {
    match page {
        "netmon" => vec![
            ("EXAMPLES", "
  netmon watch                          # every TCP state transition, as root
  netmon watch --lifecycle dport = :443 # one record per ended connection to port 443
  netmon agent &                        # the live table; serves snapshot and top
  netmon snapshot -tanp                 # like ss -tanp
  netmon snapshot --closed 5m           # connections that ended in the last 5 minutes
  netmon top                            # who opens and fails connections
  netmon features                       # which optional hooks this kernel has
"),
            ("FILTERS", FILTERS),
            ("EXIT STATUS", EXIT_STATUS),
            ("SEE ALSO", SEE_ALSO),
        ],
        "netmon-watch" => vec![
            ("OUTPUT", "
One line per transition: time (UTC), the owner's pid and command, local and peer address, the transition in ss's state names, and PREV_MS, the time the socket spent in the state it leaves (`-` when netmon did not see it enter it). PID and COMM name the socket's owner, also for the transitions the kernel runs in softirq on another task's time. With --lifecycle, one record per ended connection: owner, lifespan, time in each state, how it ended (normal, reset-sent, reset-received, refused, connect-timeout, connect-aborted) and bytes sent and received. --format json writes JSON Lines (schema: /usr/share/doc/netmon/json.md).

Losses are never silent: if the ring buffer overflows, the kernel skips the program, or perf counts fires that no copy of it ran for, a loss record says how many and why, in the stream and on stderr.
"),
            ("EXAMPLES", "
  netmon watch
  netmon watch dst 127.0.0.0/8 and dport ge :1024
  netmon watch state established
  netmon watch --lifecycle --format json > connections.jsonl
  netmon watch unit = web-front.service
"),
            ("FILTERS", FILTERS),
            ("EXIT STATUS", EXIT_STATUS),
            ("SEE ALSO", SEE_ALSO),
        ],
        "netmon-snapshot" => vec![
            ("EXAMPLES", "
  netmon snapshot -tan                  # like ss -tan
  netmon snapshot -tnp state established '( dport = :ssh or sport = :ssh )'
  netmon snapshot -tnoie                # timers, TCP internals, ss -e details, age, time in state
  netmon snapshot -s                    # ss -s
  netmon snapshot -tan --max-age 5s     # from the agent's table; queues up to 5 s old
  netmon snapshot --closed 10m --count owner,end-reason
  netmon snapshot -tn --count peer 'sport = :443'
  netmon snapshot -tan --count unit,container
  netmon snapshot --dump-to now.dump    # record; replay with --from-dump now.dump
"),
            ("THE AGENT", "
With `netmon agent` running, a snapshot is served by it: rows read from the kernel on each request, merged with what the agent's event stream adds (ages, owners, the closed history). Members of the agent's group see their own network namespace, and the owners and closed connections of their own sockets only; root and members of the admin group see everything. Without an agent, snapshot says so on stderr and makes a one-shot dump, like ss (no ages, no --closed; -p walks /proc). Every answer says on stderr what it may lack (events the agent lost, namespaces it could not dump).
"),
            ("DIFFERENCES FROM SS", "
Rows come in one kernel walk for both families; no trailing blanks; -p through the agent names one owner per socket. -F also accepts `#` after an expression. -K is refused (use ss -K as root); -Z and -z are refused where SELinux is on. -i prints what ss 6.1 prints. In the filter, `and` binds tighter than `or`.
"),
            ("FILTERS", FILTERS),
            ("EXIT STATUS", "
0 on success, also when the reader of the output goes away. 1 on any error, said in one line on stderr; a reply from the agent cut short is an error (\"the agent's reply is incomplete\"), never followed by a second table.
"),
            ("ENVIRONMENT", "
NETMON_AGENT_SOCKET: the agent's socket, for an agent started with --socket PATH (default /run/netmon/agent.sock).
"),
            ("SEE ALSO", SEE_ALSO),
        ],
        "netmon-top" => vec![
            ("KEYS", "
q or Ctrl-C quit; g group by owner, peer, local port, peer port, unit, container; s sort column; / filter (ss syntax; Ctrl-U clears the input; an error is shown under the input and the old filter stays); t rates or totals since start; space pause; Tab switch pane; Enter details of the selected row or connection.
"),
            ("EXAMPLES", "
  netmon top
  netmon top --group peer-port 'dport = :5432'
  netmon top --once --size 160x48 > screen.txt
"),
            ("FILTERS", FILTERS),
            ("ENVIRONMENT", "
NO_COLOR: no colour when set (nor when the output is not a terminal). NETMON_AGENT_SOCKET: the agent's socket (default /run/netmon/agent.sock).
"),
            ("SEE ALSO", SEE_ALSO),
        ],
        "netmon-agent" => vec![
            ("FILES", "
/etc/netmon/agent.toml holds settings, one key per long flag (`ring-size = 8388608`), then /etc/netmon/agent.d/*.toml in name order; flags on the command line win, and a key that is not a flag is an error naming the file.

/run/netmon/agent.sock is the query socket (root:netmon, mode 0660; 0600 without a netmon group). Its directory must be root's and not writable by others; a symlink or a file that is not a socket there makes the agent refuse to start. agent.sock.lock beside it keeps a second agent out.
"),
            ("ENVIRONMENT", "
Socket activation: started by netmon-agent.socket (systemd), the agent serves the listening socket passed as fd 3 (LISTEN_FDS=1, LISTEN_PID=its pid) instead of binding --socket.
"),
            ("ACCESS", "
Root and members of the admin group (--admin-group, default netmon-admin) see every namespace (--all-netns), every socket's owner and the whole closed history. Members of the group (--group, default netmon) see their own network namespace, the owners of their own sockets and their own closed connections. The agent trusts what the kernel says about a client (SO_PEERCRED, SO_PEERGROUPS), never what the client claims.
"),
            ("METRICS", "
--metrics-listen serves Prometheus metrics on http://ADDR/metrics (OpenMetrics text to Prometheus, the 0.0.4 text format to others): sockets by state, transitions, connections opened and closed by how they ended, histograms of lifespans, handshakes and time in each state, bytes, and netmon's own losses. Labels have closed sets of values; peers, command names, units and containers are labels only when asked for (--metrics-peer, --metrics-by-comm, --metrics-by-unit, --metrics-by-container). --otlp-endpoint sends one OTLP log record per ended connection over OTLP/HTTP protobuf, e.g. to a local OpenTelemetry Collector.
"),
            ("EXAMPLES", "
  systemctl enable --now netmon-agent.socket
  netmon agent --metrics-listen 9464
  netmon agent --otlp-endpoint http://127.0.0.1:4318
  netmon agent --metrics-listen [::]:9464 --metrics-peer db=10.0.0.0/8:5432 --metrics-by-comm 20
"),
            ("EXIT STATUS", EXIT_STATUS),
            ("SEE ALSO", SEE_ALSO),
        ],
        "netmon-features" => vec![
            ("EXAMPLES", "
  $ netmon features        # on Debian's 6.1
  transitions       yes  inet_sock_set_state (required)
  io-owners         no   sock_send_length, sock_recv_length: ...
  reset-endings     yes  tcp_send_reset, tcp_receive_reset: ...
  recursion-losses  yes  bpf_prog_info.recursion_misses: ...
"),
            ("SEE ALSO", SEE_ALSO),
        ],
        _ => Vec::new(),
    }
}

/// The completion script for `shell`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "netmon", out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(page: &Page) -> String {
        let mut out = Vec::new();
        page.render(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn one_page_per_command_the_agent_in_section_8() {
        let names: Vec<String> = man_pages()
            .iter()
            .map(|p| p.path.display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "man1/netmon.1",
                "man1/netmon-watch.1",
                "man1/netmon-snapshot.1",
                "man8/netmon-agent.8",
                "man1/netmon-features.1",
                "man1/netmon-top.1"
            ]
        );
    }

    #[test]
    fn pages_are_roff_with_title_synopsis_options_and_their_own_sections_before_version() {
        for page in man_pages() {
            let text = rendered(&page);
            let path = &page.path;
            let name = path.file_stem().unwrap().to_str().unwrap().to_uppercase();
            assert!(text.starts_with(".ie \\n(.g .ds Aq"), "{path:?}");
            assert!(text.contains(&format!(".TH {name} ")), "{path:?}: {text}");
            assert!(text.contains(".SH SYNOPSIS"), "{path:?}");
            assert!(!text.contains(".SH EXTRA"), "{path:?}");
            let see_also = text
                .find(".SH \"SEE ALSO\"")
                .or_else(|| text.find(".SH SEE ALSO"));
            let version = text.find(".SH VERSION").unwrap();
            assert!(see_also.is_some_and(|at| at < version), "{path:?}: {text}");
            assert!(text.contains(".SH EXAMPLES"), "{path:?}");
        }
    }

    #[test]
    fn the_top_page_refers_to_the_agent_in_section_8() {
        let text = rendered(&man_pages()[0]);
        assert!(text.contains("netmon\\-agent(8)"), "{text}");
        assert!(!text.contains("netmon\\-agent(1)"), "{text}");
    }

    #[test]
    fn the_pages_that_take_a_filter_explain_the_language() {
        for page in man_pages() {
            let text = rendered(&page);
            let takes_filter = ["netmon", "netmon-watch", "netmon-snapshot", "netmon-top"]
                .contains(&page.name.as_str());
            assert_eq!(
                text.contains(".SH FILTERS"),
                takes_filter,
                "{:?}",
                page.path
            );
        }
    }

    #[test]
    fn hidden_commands_get_no_page_and_the_agent_page_names_its_files() {
        let pages = man_pages();
        assert!(
            pages
                .iter()
                .all(|p| !p.path.to_string_lossy().contains("completions"))
        );
        let agent = pages
            .iter()
            .find(|p| p.path.ends_with("netmon-agent.8"))
            .unwrap();
        let text = rendered(agent);
        assert!(text.contains(".SH FILES\n/etc/netmon/agent.toml"), "{text}");
        assert!(text.contains("LISTEN_FDS"), "{text}");
    }

    #[test]
    fn sections_fill_prose_keep_indented_lines_as_written_and_escape_roff() {
        let text = section(
            "EXAMPLES",
            "\nSome prose.\n.starts with a dot\n\n  netmon watch -f json 'a\\b'\n  'quoted\n",
        );
        assert_eq!(
            text,
            ".SH EXAMPLES\nSome prose.\n\\&.starts with a dot\n.PP\n.nf\n.RS 4\n\
             netmon watch \\-f json 'a\\eb'\n\\&'quoted\n.RE\n.fi\n"
        );
    }

    #[test]
    fn completions_name_the_subcommands_in_every_shell() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            for word in ["watch", "snapshot", "agent", "top"] {
                assert!(text.contains(word), "{shell:?} completion lacks {word}");
            }
        }
    }
}
