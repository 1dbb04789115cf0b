//! The ss filter language, differentially: `netmon snapshot -tnH WORDS...` must select exactly
//! the sockets `ss -tnH WORDS...` selects, on one namespace holding every TCP state for IPv4,
//! IPv6 and v4-mapped sockets, through the agent and (for some) without it.
//!
//! Expressions steer clear of the differences filter.rs documents as deliberate: `and` and `or`
//! are never mixed without parentheses (ss folds them left to right, netmon binds `and`
//! tighter), numbers are plain decimal, IPv6 prefixes use ss's `[addr/len]` spelling, no host
//! names or family prefixes, and no `-l` expression could meet a CLOSE socket (the namespace
//! holds none, so ss's `-l` = LISTEN + CLOSE and netmon's LISTEN agree).

use netmon_tests::{
    AgentProcess, Stack, TestNetns, hold_every_state, normalise, snapshot_without_agent, ss_in,
};

/// `ss ARGV` in `ns`; a failure names the expression.
fn ss_checked(ns: &TestNetns, argv: &[&str]) -> String {
    let words: Vec<String> = argv.iter().map(|w| (*w).to_owned()).collect();
    let out = ns.run(move || {
        std::process::Command::new("ss")
            .args(&words)
            .output()
            .expect("run ss")
    });
    assert!(
        out.status.success(),
        "`ss {}` failed: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The ss-style columns compared: State, Recv-Q, Send-Q, Local, Peer (ss drops State when
/// one state is selected; the fifth column is then ss's empty Process).
const COLUMNS: usize = 5;

/// One expression: leading `-x` words are options, the rest the filter; ss and netmon get the
/// same argv after `-tnH`. `must_show` is text some selected line must contain.
struct Case {
    words: String,
    must_show: Option<&'static str>,
}

fn case(words: String) -> Case {
    Case {
        words,
        must_show: None,
    }
}

fn showing(words: String, text: &'static str) -> Case {
    Case {
        words,
        must_show: Some(text),
    }
}

#[test]
fn snapshot_filters_select_what_ss_selects() {
    let ns = TestNetns::new();
    // As in snapshot.rs: some sockets predate the agent (its seed dump), others it sees made.
    let v4 = hold_every_state(&ns, Stack::V4);
    let agent = AgentProcess::start();
    let v6 = hold_every_state(&ns, Stack::V6);
    let mapped = hold_every_state(&ns, Stack::Mapped);
    // Listener ports: [est, fw1, last_ack, closing, syn_sent, syn_recv]; each has connected
    // sockets on both sides (held in some state) except syn_sent, whose only socket is the
    // client's.
    let (p4, p6, pm) = (&v4.ports, &v6.ports, &mapped.ports);
    let mut sorted: Vec<u16> = p4.iter().chain(p6).chain(pm).copied().collect();
    sorted.sort_unstable();
    // Order comparisons against listener ports chosen so that listeners fall on both sides:
    // the selection is never empty nor everything, whatever the ephemeral ports turned out.
    let (min, lo, med, hi, max) = (sorted[0], sorted[3], sorted[9], sorted[12], sorted[17]);
    let mapped_addr = "[::ffff:127.0.0.1]";

    let cases = vec![
        // Every comparison operator and its word form, on sport (with -a, so listeners and
        // their children count) and dport (ss's default connected states).
        case(format!("-a sport = :{}", p4[0])),
        case(format!("-a sport == :{}", p6[0])),
        showing(format!("-a sport eq :{}", pm[0]), mapped_addr),
        case(format!("dport != :{}", p4[0])),
        case(format!("dport neq :{}", p6[1])),
        case(format!("dport ne :{}", pm[2])),
        case(format!("-a sport < :{med}")),
        case(format!("dport lt :{med}")),
        case(format!("-a sport <= :{min}")),
        case(format!("dport le :{med}")),
        case(format!("-a sport > :{med}")),
        case(format!("dport gt :{med}")),
        case(format!("-a sport >= :{max}")),
        case(format!("dport ge :{med}")),
        // and / or / not in every spelling, parentheses, juxtaposition.
        case(format!("dport = :{} or dport = :{}", p4[0], p6[0])),
        case(format!("dport = :{} || dport = :{}", p4[1], pm[1])),
        case(format!("-a sport = :{} | sport = :{}", p4[2], p6[2])),
        case(format!("-a sport >= :{lo} and sport <= :{hi}")),
        case(format!("dport > :{min} && dport < :{max}")),
        // A v4-mapped socket matches an IPv4 host filter.
        showing(
            format!("-a src 127.0.0.1 & sport = :{}", pm[0]),
            mapped_addr,
        ),
        case(format!("not dport = :{}", p4[4])),
        case(format!("-a ! sport >= :{med}")),
        case(format!(
            "( dport = :{} or dport = :{} ) and src 127.0.0.1",
            p4[0], pm[0]
        )),
        case(format!(
            "-a not ( sport = :{} or dport = :{} )",
            p4[0], p4[0]
        )),
        case(format!(
            "-a ( sport = :{} or sport = :{} ) ( dport > :{med} || src [::1] )",
            p4[1], p6[1]
        )),
        case(format!("-a src 127.0.0.1 sport = :{}", p4[1])),
        // Hosts: IPv4 prefixes, IPv6 /128, [::1]:port, *, :port.
        showing("src 127.0.0.0/8".into(), mapped_addr),
        showing("-a dst 127.0.0.1/32".into(), mapped_addr),
        case("-a src [::1/128]".into()),
        case(format!("dst [::1]:{}", p6[0])),
        case(format!("-a src *:{}", p6[1])),
        case(format!("-a dst :{}", p4[5])),
        showing(format!("-a src :{}", pm[5]), mapped_addr),
        case(format!("-a src * sport = :{}", pm[3])),
        case(format!("-a dst * and not dst [::1]:{}", p6[4])),
        // Families: -4 leaves v4-mapped sockets out, -6 keeps them (they are AF_INET6).
        case("-4".into()),
        case(format!("-4 dport = :{}", pm[0])),
        case("-6 -a".into()),
        // (ss parses hosts as IPv6 under -6: `-6 src 127.0.0.1` is an error there.)
        showing(format!("-6 -a sport = :{}", pm[0]), mapped_addr),
        // -a, -l.
        case(format!("-a dport >= :{med}")),
        case("-l".into()),
        case(format!("-l sport < :{med}")),
        // State groups, single states, several states, exclusions.
        case(format!("state all sport = :{}", p4[0])),
        case("state connected".into()),
        case("state synchronized".into()),
        case("state bucket".into()),
        case("state big".into()),
        case("state established".into()),
        case("state syn-sent".into()),
        case("state syn-recv".into()),
        case("state fin-wait-1".into()),
        case("state fin-wait-2".into()),
        case("state time-wait".into()),
        case("state close-wait".into()),
        case("state last-ack".into()),
        case("state closing".into()),
        case("state listening".into()),
        case("state time-wait state closing".into()),
        case(format!("state listening state syn-recv sport = :{}", p6[5])),
        case("exclude established".into()),
        case(format!("exclude listening dport >= :{med}")),
        case(format!(
            "-a excl time-wait ( sport = :{} or dport = :{} )",
            p4[0], p4[0]
        )),
    ];

    let everything = normalise(&ss_in(&ns, &["-tanH"]), COLUMNS);
    assert!(everything.len() > 50, "the fixture: {everything:#?}");
    let mut failures = Vec::new();
    let mut fallbacks = 0;
    for (i, c) in cases.iter().enumerate() {
        let mut argv = vec!["-tnH"];
        argv.extend(c.words.split_whitespace());
        let ss = normalise(&ss_checked(&ns, &argv), COLUMNS);
        // Non-trivial: something selected, and not every socket there is.
        assert!(!ss.is_empty(), "`ss {}` selects nothing", argv.join(" "));
        assert!(
            ss.len() < everything.len(),
            "`ss {}` selects every socket",
            argv.join(" ")
        );
        if let Some(text) = c.must_show {
            assert!(
                ss.iter().any(|l| l.contains(text)),
                "`ss {}` shows no {text}: {ss:#?}",
                argv.join(" ")
            );
        }
        let through_agent = normalise(&agent.snapshot(&ns, &argv), COLUMNS);
        if through_agent != ss {
            failures.push(format!(
                "`{}` through the agent:\n  ss:     {ss:?}\n  netmon: {through_agent:?}",
                c.words
            ));
        }
        // A spread of the expressions through the no-agent fallback, too.
        if i % 6 == 0 {
            fallbacks += 1;
            let fallback = normalise(&snapshot_without_agent(&ns, &argv), COLUMNS);
            if fallback != ss {
                failures.push(format!(
                    "`{}` without the agent:\n  ss:     {ss:?}\n  netmon: {fallback:?}",
                    c.words
                ));
            }
        }
    }
    eprintln!(
        "filter: {} expressions compared with ss through the agent, {fallbacks} also without it",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} expressions differ from ss:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
