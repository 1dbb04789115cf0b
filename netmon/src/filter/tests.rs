//! The filter's behaviour through its public API: parsing, matching, errors, kernel projection.

use std::net::SocketAddr;

use netmon_common::{KernelFilter, TcpState};

use super::fuzz::{FUZZ_SERVICES, Rng};
use super::kernel::kernel_passes;
use super::*;

fn services() -> Services {
    Services::from_text(FUZZ_SERVICES)
}

fn parse_with(text: &str, defaults: StateSet) -> Result<Filter, FilterError> {
    Filter::parse(&[text.to_owned()], &services(), defaults)
}

fn parse(text: &str) -> Filter {
    parse_with(text, StateSet::ALL).unwrap_or_else(|e| panic!("{}", e.render()))
}

fn error(text: &str) -> FilterError {
    match parse_with(text, StateSet::ALL) {
        Ok(f) => panic!("{text:?} parsed as {f:?}"),
        Err(e) => e,
    }
}

fn sock(text: &str) -> SocketAddr {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn conn(local: &str, remote: &str) -> FilterInput<'static> {
    FilterInput {
        state: TcpState::Established,
        local: sock(local),
        remote: sock(remote),
        netns: None,
        pid: None,
        comm: None,
        uid: None,
        cgroup: None,
    }
}

fn matches(filter: &str, local: &str, remote: &str) -> bool {
    parse(filter).matches(&conn(local, remote))
}

/// Local port `port`, remote 10.0.0.2:5000.
fn sport_matches(filter: &str, port: u16) -> bool {
    parse(filter).matches(&conn(&format!("10.0.0.1:{port}"), "10.0.0.2:5000"))
}

#[test]
fn precedence_is_or_then_and_then_not() {
    // a or (b and c): ss(8)'s documented order, not ssfilter.y's left-to-right fold.
    assert!(sport_matches("sport = :1 or sport = :2 and sport = :3", 1));
    assert!(sport_matches("sport = :2 and sport = :3 or sport = :1", 1));
    assert!(!sport_matches(
        "( sport = :1 or sport = :2 ) and sport = :3",
        1
    ));
    // not binds to the next predicate only.
    assert!(sport_matches("not sport = :2 and sport = :1", 1));
    assert!(!sport_matches("not ( sport = :2 or sport = :1 )", 1));
    assert!(sport_matches("! sport = :1 or sport = :1", 1));
    assert!(sport_matches("not not sport = :1", 1));
    // Juxtaposition is `and`, with and's precedence.
    assert!(!sport_matches("sport = :1 sport = :2", 1));
    assert!(sport_matches("sport = :1 or sport = :2 sport = :3", 1));
    assert!(sport_matches("sport >= :1 sport <= :1", 1));
}

#[test]
fn every_operator_spelling() {
    let cases: [(&[&str], [bool; 3]); 6] = [
        (&["=", "==", "eq", ""], [false, true, false]),
        (&["!=", "ne", "neq"], [true, false, true]),
        (&["<", "lt"], [true, false, false]),
        (&["<=", "le", "leq"], [true, true, false]),
        (&[">", "gt"], [false, false, true]),
        (&[">=", "ge", "geq"], [false, true, true]),
    ];
    for (spellings, expected) in cases {
        for op in spellings {
            for (port, want) in [79, 80, 81].into_iter().zip(expected) {
                for value in [":80", "80", ":http", ":www"] {
                    let filter = format!("sport {op} {value}");
                    assert_eq!(sport_matches(&filter, port), want, "{filter} on {port}");
                }
            }
        }
    }
    for and in ["and", "&&", "&", ""] {
        assert!(
            sport_matches(&format!("sport > :1 {and} sport < :3"), 2),
            "{and}"
        );
        assert!(
            !sport_matches(&format!("sport > :1 {and} sport < :3"), 3),
            "{and}"
        );
    }
    for or in ["or", "||", "|"] {
        assert!(
            sport_matches(&format!("sport = :1 {or} sport = :3"), 3),
            "{or}"
        );
    }
    for neg in ["not", "!"] {
        assert!(sport_matches(&format!("{neg} sport = :1"), 3), "{neg}");
    }
}

#[test]
fn operators_and_parentheses_need_no_spaces() {
    assert!(sport_matches("(sport=:1||sport==:2)&&!sport!=:2", 2));
    assert!(sport_matches("sport>=1 sport<=2", 2));
    assert!(sport_matches("(((sport=:2)))", 2));
}

#[test]
fn words_are_joined_like_ss_does() {
    let words: Vec<String> = ["state", "established", "( dport = :ssh or sport = :ssh )"]
        .map(String::from)
        .into();
    let filter =
        Filter::parse(&words, &services(), StateSet::ALL).unwrap_or_else(|e| panic!("{e}"));
    assert!(filter.matches(&conn("10.0.0.1:22", "10.0.0.2:5000")));
    assert!(!filter.matches(&conn("10.0.0.1:23", "10.0.0.2:5000")));
    let listen = FilterInput {
        state: TcpState::Listen,
        ..conn("10.0.0.1:22", "0.0.0.0:0")
    };
    assert!(!filter.matches(&listen));
}

#[test]
fn port_predicates_are_host_predicates_without_an_address() {
    // ss: `sport = :80` parses the word as a port only (SSF_SCOND with no address), the
    // same predicate as `src :80` and `src *:80`.
    for filter in [
        "sport = :80",
        "sport 80",
        "src :80",
        "src *:80",
        "src = *:80",
    ] {
        assert_eq!(parse(filter), parse("sport eq :80"), "{filter}");
    }
    assert_eq!(parse("sport = *"), parse("src *"));
    assert_eq!(parse("sport = :"), parse("sport = :*"));
    assert!(sport_matches("sport = *", 7));
    assert!(sport_matches("dport :5000", 1));
    assert!(sport_matches("dst 10.0.0.2:5000", 1));
    assert!(!sport_matches("dst 10.0.0.2:5001", 1));
}

#[test]
fn service_names_come_from_the_services_table() {
    let table = Services::from_text(
        "# comment\nssh 22/tcp\nhttp 80/tcp www\nhttp 8080/tcp\nsyslog 514/udp\nbad x/tcp\n",
    );
    assert_eq!(table.port("ssh"), Some(22));
    assert_eq!(table.port("www"), Some(80));
    assert_eq!(table.port("http"), Some(80), "the first entry wins");
    assert_eq!(table.port("syslog"), None, "udp only");
    assert!(sport_matches("sport = :https", 443));
    let e = error("sport = :syslog");
    assert_eq!(e.span, 8..15);
    assert!(e.message.contains("`syslog`"), "{}", e.message);
    assert!(
        error("sport = :SSH").message.contains("`SSH`"),
        "case-sensitive like getservbyname"
    );
}

#[test]
fn ipv4_hosts_and_prefixes() {
    assert!(matches("src 10.0.0.1", "10.0.0.1:1", "1.1.1.1:2"));
    assert!(!matches("src 10.0.0.1", "10.0.0.2:1", "1.1.1.1:2"));
    assert!(matches("src 10.0.0.0/8", "10.200.0.2:1", "1.1.1.1:2"));
    assert!(!matches("src 10.0.0.0/8", "11.0.0.2:1", "1.1.1.1:2"));
    assert!(matches("src 10/8", "10.1.1.1:1", "1.1.1.1:2"));
    assert!(matches("dst 193.233.7/24", "10.1.1.1:1", "193.233.7.9:2"));
    assert!(!matches("dst 193.233.7/24", "10.1.1.1:1", "193.233.8.9:2"));
    assert!(matches("src 10.0.0.1/8:1", "10.9.9.9:1", "1.1.1.1:2"));
    assert!(!matches("src 10.0.0.1/8:1", "10.9.9.9:3", "1.1.1.1:2"));
    assert!(
        matches("src 0.0.0.0/0", "[2001:db8::1]:1", "[::1]:2"),
        "/0 skips the address"
    );
    assert!(
        matches("dst 1.1.1.1:", "10.1.1.1:1", "1.1.1.1:2"),
        "empty port is any"
    );
    assert!(matches(
        "dst 1.1.1.1 dst != 1.1.1.2",
        "10.1.1.1:1",
        "1.1.1.1:2"
    ));
    for bad in [
        "src 1.2.3.4.5",
        "src 256.1.1.1",
        "src 1.2.3.4/33",
        "src 1.2.3.4/",
        "src localhost",
    ] {
        assert_eq!(error(bad).span, 4..bad.len(), "{bad}");
    }
}

#[test]
fn ipv6_hosts_prefixes_and_ports() {
    assert!(matches("src [::1]", "[::1]:1", "[::1]:2"));
    assert!(matches("src [::1]:1", "[::1]:1", "[::1]:2"));
    assert!(!matches("src [::1]:2", "[::1]:1", "[::1]:2"));
    for prefix in [
        "[2001:db8::/32]",
        "[2001:db8::]/32",
        "[2001:db8::/32]:1",
        "[2001:db8::]/32:1",
    ] {
        let filter = format!("src {prefix}");
        assert!(matches(&filter, "[2001:db8:5::1]:1", "[::1]:2"), "{filter}");
        assert!(!matches(&filter, "[2001:db9::1]:1", "[::1]:2"), "{filter}");
    }
    assert!(
        !matches("src [::1]", "127.0.0.1:1", "[::1]:2"),
        "no IPv6 prefix matches IPv4"
    );
    assert!(matches("dst *", "[::1]:1", "[::1]:2"));
    assert!(matches("dst *:2", "[::1]:1", "[::1]:2"));
    for bad in [
        "src ::1",
        "src [::1",
        "src [::1]x",
        "src [::1]/129",
        "src [::1/64]/64",
        "src inet6:[::1]",
    ] {
        let e = error(bad);
        assert_eq!(e.span, 4..bad.len(), "{bad}: {}", e.message);
    }
    assert!(error("src ::1").message.contains("brackets"));
}

#[test]
fn v4_mapped_sockets_match_ipv4_rules_like_ss() {
    let mapped = "[::ffff:127.0.0.1]:80";
    assert!(matches("src 127.0.0.1", mapped, "[::1]:2"));
    assert!(matches("src 127.0.0.0/8:80", mapped, "[::1]:2"));
    assert!(matches("src [::ffff:127.0.0.1]", mapped, "[::1]:2"));
    assert!(matches("src [::ffff:127.0.0.0/104]", mapped, "[::1]:2"));
    // "v4-mapped rule selects only v4-mapped sockets" (ss.c inet2_addr_match).
    assert!(!matches(
        "src [::ffff:127.0.0.1]",
        "127.0.0.1:80",
        "1.1.1.1:2"
    ));
    // A v4-mapped socket is AF_INET6, so an IPv4 rule must keep IPv6 in the kernel filter.
    assert_eq!(
        parse("src 127.0.0.1").kernel_filter().family_mask,
        FAMILY_ANY
    );
    let v4_only = parse("src 127.0.0.1").restrict_families(true, false);
    assert!(
        !v4_only.matches(&conn(mapped, "[::1]:2")),
        "-4 drops v4-mapped sockets"
    );
}

#[test]
fn state_names_and_groups() {
    use TcpState::*;
    let set = |name: &str| parse(&format!("state {name}")).states();
    let members = |name: &str| -> Vec<TcpState> {
        TcpState::ALL
            .into_iter()
            .filter(|s| set(name).contains(*s))
            .collect()
    };
    assert_eq!(members("established"), [Established]);
    assert_eq!(members("SYN-RECV"), [SynRecv, NewSynRecv]);
    assert_eq!(members("syn-rcv"), [SynRecv, NewSynRecv]);
    for closed in ["closed", "close", "unconnected"] {
        assert_eq!(members(closed), [Close]);
    }
    assert_eq!(members("listening"), [Listen]);
    assert_eq!(members("bound-inactive"), [BoundInactive]);
    assert_eq!(members("all"), TcpState::ALL);
    let all_but = |out: &[TcpState]| -> Vec<TcpState> {
        TcpState::ALL
            .into_iter()
            .filter(|s| !out.contains(s))
            .collect()
    };
    assert_eq!(members("connected"), all_but(&[Close, Listen]));
    assert_eq!(members("synchronized"), all_but(&[Close, Listen, SynSent]));
    assert_eq!(members("bucket"), [SynRecv, TimeWait, NewSynRecv]);
    assert_eq!(members("big"), all_but(&[SynRecv, TimeWait, NewSynRecv]));
    assert!(set("all").contains(Unknown(200)));
    assert!(!set("connected").contains(Unknown(200)));
    for bad in ["listen", "new-syn-recv", "bogus"] {
        let e = error(&format!("state {bad}"));
        assert_eq!(e.span, 6..6 + bad.len());
    }
    assert_eq!(error("state").span, 5..5);
    assert_eq!(
        error("state established dport = :22 state closed").span,
        30..35
    );
}

#[test]
fn one_state_selected_only_by_state_words_naming_one_ss_state() {
    let one = |text: &str, defaults| {
        parse_with(text, defaults)
            .unwrap_or_else(|e| panic!("{e}"))
            .one_state_selected()
    };
    let all = StateSet::ALL;
    for text in [
        "state established",
        "state listening sport = :22",
        // Two kernel states, one ss state.
        "state syn-recv",
        "state bucket exclude time-wait",
        // Down to LISTEN; netmon's `exclude` keeps unnamed high bits, ss has none.
        "exclude connected exclude closed",
        "state time-wait state time-wait",
    ] {
        assert!(one(text, all), "{text}");
    }
    for text in [
        "",
        "sport = :22",
        "state all",
        "state established state time-wait",
        "state bucket",
        "exclude established",
    ] {
        assert!(!one(text, all), "{text}");
    }
    // `-l` (LISTEN here, LISTEN and CLOSE in ss) keeps ss's State column.
    assert!(!one("", StateSet::default_for(false, true)));
}

#[test]
fn state_and_exclude_follow_ss_main() {
    use TcpState::*;
    let states = |text: &str, defaults| parse_with(text, defaults).map(|f| f.states());
    let listening = StateSet::default_for(false, true);
    assert_eq!(states("", listening), Ok(listening));
    assert_eq!(
        states("state established", StateSet::ALL),
        states("state established", listening)
    );
    let f = parse_with("state established state time-wait", listening)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(f.states().contains(Established) && f.states().contains(TimeWait));
    assert!(!f.states().contains(Listen));
    // The first `exclude` starts from every state, not from the default.
    let f =
        parse_with("exclude listening excl time-wait", listening).unwrap_or_else(|e| panic!("{e}"));
    assert!(f.states().contains(Established) && !f.states().contains(Listen));
    assert!(!f.states().contains(TimeWait));
    let f = parse("state all exclude connected");
    assert!(f.states().contains(Close) && f.states().contains(Listen));
    assert!(!f.states().contains(Established));
}

#[test]
fn default_states_follow_ss() {
    use TcpState::*;
    let default = StateSet::default_for(false, false);
    let shown: Vec<TcpState> = TcpState::ALL
        .into_iter()
        .filter(|s| default.contains(*s))
        .collect();
    // SS_CONN: everything but LISTEN, CLOSE, TIME-WAIT and SYN-RECV.
    assert_eq!(
        shown,
        [
            Established,
            SynSent,
            FinWait1,
            FinWait2,
            CloseWait,
            LastAck,
            Closing,
            BoundInactive
        ]
    );
    assert_eq!(StateSet::default_for(true, false), StateSet::ALL);
    assert_eq!(StateSet::default_for(true, true), StateSet::ALL);
    let listening = StateSet::default_for(false, true);
    assert!(listening.contains(Listen) && !listening.contains(Close));
}

#[test]
fn cgroup_unit_container_and_pod_predicates() {
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let web = crate::cgroup::Labels::parse("/web.slice/nginx\\x2d1.service");
    let box_ = crate::cgroup::Labels::parse(&format!("/system.slice/docker-{id}.scope"));
    let on = |l| FilterInput {
        cgroup: Some(l),
        ..conn("10.0.0.1:1", "10.0.0.2:2")
    };
    let unknown = conn("10.0.0.1:1", "10.0.0.2:2");
    let cases = [
        ("unit = nginx-1.service", true, false, false),
        ("unit nginx-1.service", true, false, false),
        ("unit != nginx-1.service", false, true, true),
        ("cgroup /web.slice/nginx\\x2d1.service", true, false, false),
        (
            "cgroup = /web.slice/nginx\\x2d1.service/",
            true,
            false,
            false,
        ),
        ("cgroup /web.slice", false, false, false),
        ("container 0123456789ab", false, true, false),
        ("container = 0123456789AB", false, true, false),
        (&format!("container {id}"), false, true, false),
        ("container != 0123", true, false, true),
        (
            "unit = nginx-1.service or container 0123",
            true,
            true,
            false,
        ),
        (
            "pod 5e0b2b0c-8d3a-4a4e-9b1a-0c7c3f2d1e00",
            false,
            false,
            false,
        ),
    ];
    for (text, on_web, on_box, on_unknown) in cases {
        let f = parse(text);
        assert!(f.uses_cgroup(), "{text}");
        assert_eq!(f.matches(&on(&web)), on_web, "{text} on web");
        assert_eq!(f.matches(&on(&box_)), on_box, "{text} on box");
        assert_eq!(f.matches(&unknown), on_unknown, "{text} unknown");
    }
    assert!(!parse("sport = :22").uses_cgroup());
    assert!(
        error("cgroup web.slice")
            .message
            .contains("not a cgroup path")
    );
    assert!(
        error("container nothex")
            .message
            .contains("not a container id")
    );
    assert!(error("unit < x").message.contains("takes `=` or `!=`"));
}

#[test]
fn one_required_cgroup_goes_to_the_kernel() {
    let required = |text: &str| parse(text).required_cgroup().map(str::to_owned);
    assert_eq!(required("cgroup /a"), Some("/a".into()));
    assert_eq!(required("cgroup /a and sport = :22"), Some("/a".into()));
    assert_eq!(required("cgroup /a or cgroup /a"), Some("/a".into()));
    assert_eq!(required("cgroup /a or cgroup /b"), None);
    assert_eq!(required("cgroup /a or sport = :22"), None);
    assert_eq!(required("not cgroup /a"), None);
    assert_eq!(required("cgroup != /a"), None);
    assert_eq!(
        required("not ( not cgroup /a or sport = :1 )"),
        Some("/a".into())
    );
    assert_eq!(required("unit = a.service"), None);
    assert_eq!(
        parse("cgroup /a").kernel_filter().cgroup_id,
        0,
        "set by the caller"
    );
}

#[test]
fn transitions_match_on_either_state() {
    use TcpState::*;
    let f = parse("state established sport = :22");
    let input = |state| FilterInput {
        state,
        ..conn("10.0.0.1:22", "10.0.0.2:5000")
    };
    assert!(f.matches_transition(SynRecv, &input(Established)));
    assert!(f.matches_transition(Established, &input(CloseWait)));
    assert!(!f.matches_transition(SynRecv, &input(FinWait1)));
    let other_port = FilterInput {
        state: Established,
        ..conn("10.0.0.1:23", "10.0.0.2:5000")
    };
    assert!(!f.matches_transition(SynSent, &other_port));
}

#[test]
fn owner_predicates() {
    let input = FilterInput {
        pid: Some(42),
        uid: Some(1000),
        netns: Some(4_026_531_840),
        comm: Some("systemd-resolve"),
        ..conn("10.0.0.1:1", "10.0.0.2:2")
    };
    let unknown = conn("10.0.0.1:1", "10.0.0.2:2");
    let cases = [
        ("pid = 42", true, false),
        ("pid 42", true, false),
        ("pid != 42", false, true),
        ("pid ne 41", true, true),
        ("pid < 43", true, false),
        ("pid >= 43", false, false),
        ("uid le 1000", true, false),
        ("uid gt 999", true, false),
        ("netns = 4026531840", true, false),
        ("comm = systemd-resolve", true, false),
        ("comm = systemd-resolved", true, false),
        ("comm != nginx", true, true),
        ("not comm = nginx", true, true),
        ("not pid > 1", false, true),
    ];
    for (filter, known, none) in cases {
        assert_eq!(parse(filter).matches(&input), known, "{filter}");
        assert_eq!(
            parse(filter).matches(&unknown),
            none,
            "{filter} on unknown owner"
        );
    }
    assert_eq!(error("pid = -1").span, 6..8);
    assert_eq!(error("uid = 4294967296").span, 6..16);
    assert_eq!(error("comm < x").span, 5..6);
    assert_eq!(error("src < 1.2.3.4").span, 4..5);
}

#[test]
fn errors_point_at_the_problem() {
    let e = error("dport = :ssh or");
    assert_eq!(e.message, "expected an expression after `or`");
    assert_eq!(e.span, 15..15);
    assert_eq!(
        e.render(),
        "netmon: filter: expected an expression after `or`\n  dport = :ssh or\n                 ^"
    );
    let e = error("sport = :99999");
    assert_eq!(
        (e.span.clone(), e.message.as_str()),
        (8..14, "port `99999` is out of range: ports are 0 to 65535")
    );
    assert_eq!(e.render().lines().nth(2), Some("          ^^^^^^"));
    let cases: [(&str, Range<usize>, &str); 13] = [
        ("( sport = :22", 0..1, "this `(` is never closed"),
        ("sport = :22 )", 12..13, "unmatched `)`"),
        ("( )", 2..3, "expected an expression after `(`, found `)`"),
        ("and", 0..3, "expected an expression, found `and`"),
        (
            "sport",
            5..5,
            "expected a port such as `:22` or `:ssh` after `sport`",
        ),
        (
            "sport >=",
            8..8,
            "expected a port such as `:22` or `:ssh` after `sport >=`",
        ),
        (
            "sport = or",
            8..10,
            "expected a port such as `:22` or `:ssh` after `sport =`, found `or`",
        ),
        (
            "sport < *",
            8..9,
            "`<` needs a port number, not the wildcard `*`",
        ),
        (
            "sport = :22 = 5",
            12..13,
            "unexpected `=`: expected `and`, `or` or the end of the filter",
        ),
        (
            "bogus",
            0..5,
            "unknown filter `bogus`: expected src, dst, sport, dport, pid, uid, comm, netns, \
             cgroup, unit, container, pod, `(` or `not`",
        ),
        (
            "dev = eth0",
            0..3,
            "ss's `dev` filter is not supported by netmon",
        ),
        ("( sport = :22 = )", 14..15, "expected `)`, found `=`"),
        ("not", 3..3, "expected an expression after `not`"),
    ];
    for (text, span, message) in cases {
        let e = error(text);
        assert_eq!((e.span, e.message.as_str()), (span, message), "{text}");
    }
}

#[test]
fn error_positions_count_characters_and_blank_control_characters() {
    let e = error("comm = é\tsport");
    assert_eq!(
        e.render(),
        "netmon: filter: expected a port such as `:22` or `:ssh` after `sport`\n  comm = é sport\n                ^"
    );
}

#[test]
fn nesting_is_capped_and_long_chains_are_fine() {
    let deep = format!(
        "{}sport = :1{}",
        "( ".repeat(MAX_DEPTH),
        " )".repeat(MAX_DEPTH)
    );
    assert!(sport_matches(&deep, 1));
    let too_deep = format!(
        "{}sport = :1{}",
        "(".repeat(MAX_DEPTH + 1),
        ")".repeat(MAX_DEPTH + 1)
    );
    assert_eq!(error(&too_deep).span, MAX_DEPTH..MAX_DEPTH + 1);
    let nots = "not ".repeat(100_000);
    assert!(
        error(&format!("{nots}sport = :1"))
            .message
            .contains("256 deep")
    );
    assert!(error(&"(".repeat(1_000_000)).message.contains("256 deep"));
    let chain = vec!["sport = :1"; 100_000].join(" or ");
    assert!(sport_matches(&chain, 1));
    let _ = parse(&chain).kernel_filter();
}

#[test]
fn kernel_filter_narrows_what_it_safely_can() {
    let k = |text: &str| parse(text).kernel_filter();
    assert_eq!(k(""), KernelFilter::ALL);
    let ranges = |text: &str| {
        let f = k(text);
        ((f.sport_min, f.sport_max), (f.dport_min, f.dport_max))
    };
    let full = (0, u16::MAX);
    assert_eq!(ranges("sport = :22"), ((22, 22), full));
    assert_eq!(ranges("dport > 1024"), (full, (1025, u16::MAX)));
    assert_eq!(
        ranges("sport >= 10 and sport <= 20 dport < 3"),
        ((10, 20), (0, 2))
    );
    assert_eq!(ranges("sport = :22 or sport = :80"), ((22, 80), full));
    assert_eq!(ranges("not ( sport < 10 or sport > 20 )"), ((10, 20), full));
    assert_eq!(ranges("sport = :22 or dport = :80"), (full, full));
    assert_eq!(ranges("sport != :22"), (full, full));
    assert_eq!(ranges("src 10.0.0.1:22"), ((22, 22), full));
    assert_eq!(
        ranges("sport > 65535"),
        ((u16::MAX, 0), full),
        "cannot match"
    );
    assert_eq!(k("src [::1]").family_mask, FAMILY_V6);
    assert_eq!(k("src [::1] or src 10.0.0.1").family_mask, FAMILY_ANY);
    assert_eq!(k("not src [::1]").family_mask, FAMILY_ANY);
    assert_eq!(k("src [::]/0").family_mask, FAMILY_ANY);
    assert_eq!(
        parse("src [::1]")
            .restrict_families(true, false)
            .kernel_filter()
            .family_mask,
        0
    );
    assert_eq!(
        parse("")
            .restrict_families(false, true)
            .kernel_filter()
            .family_mask,
        FAMILY_V6
    );
    assert_eq!(
        parse("")
            .restrict_families(true, true)
            .kernel_filter()
            .family_mask,
        FAMILY_ANY
    );
    let netns = |text: &str| k(text).netns;
    assert_eq!(netns("netns = 7 sport = :22"), 7);
    assert_eq!(netns("netns = 7 or netns = 7"), 7);
    assert_eq!(netns("netns = 7 or netns = 8"), 0);
    assert_eq!(netns("netns = 7 or sport = :22"), 0);
    assert_eq!(netns("not ( netns != 7 or sport = :1 )"), 7);
    assert_eq!(netns("netns != 7"), 0);
    assert_eq!(netns("netns >= 7"), 0);
    let state_mask = k("state established").state_mask;
    assert_eq!(state_mask, 1 << TcpState::Established.to_kernel());
}

#[test]
fn kernel_filter_never_drops_what_the_filter_accepts() {
    let filters = [
        "",
        "state established",
        "state listening sport = :22",
        "sport = :22 or dport = :80",
        "sport >= :1000 sport <= :2000 and dport > 1023",
        "not ( sport < 10 or sport > 20 )",
        "not sport = :22",
        "src 127.0.0.1",
        "src [::1] or dport = :22",
        "src [::ffff:127.0.0.0/104] and not dst [2001:db8::/32]",
        "( sport = :80 and src 10.0.0.0/8 ) or ( dport = :443 and not src [::1] )",
        "exclude time-wait uid = 1000 or pid > 20",
        "sport > 65535 or dport < 0",
        "netns = 4026531840 and ( sport = :22 or netns = 1 )",
        "not ( netns != 0 or comm = nginx )",
    ];
    let mut rng = Rng(7);
    for text in filters {
        for (v4, v6) in [(false, false), (true, false), (false, true)] {
            let filter = parse(text).restrict_families(v4, v6);
            let kernel = filter.kernel_filter();
            for _ in 0..2_000 {
                let input = rng.input();
                let old = TcpState::from_kernel(u8::try_from(rng.below(16)).unwrap_or(0));
                if filter.matches_transition(old, &input) {
                    assert!(
                        kernel_passes(&kernel, old, &input),
                        "{text}: {old:?} -> {input:?}"
                    );
                }
            }
        }
    }
}
