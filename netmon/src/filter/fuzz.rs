//! Test-only fuzzing: random token soups through the parser, and every parsed filter held to
//! its kernel projection on random transitions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netmon_common::TcpState;

use super::kernel::kernel_passes;
use super::{Filter, FilterInput, MAX_DEPTH, Services, StateSet};

/// The services table the fuzz run and the tests use.
pub(super) const FUZZ_SERVICES: &str = "ssh 22/tcp\nhttp 80/tcp www # WorldWideWeb\nhttps 443/tcp\n\
                             https 443/udp\ndomain 53/udp\ndomain 53/tcp\nsyslog 514/udp\n";

/// The grammar's words, some of them broken, for the fuzz soups.
#[rustfmt::skip]
pub(super) const FUZZ_WORDS: &[&str] = &[
    "src", "dst", "sport", "dport", "pid", "uid", "comm", "netns", "state", "exclude", "excl",
    "and", "or", "not", "&&", "||", "&", "|", "!", "(", ")", "=", "==", "!=", "<", "<=", ">", ">=",
    "eq", "ne", "neq", "lt", "le", "leq", "gt", "ge", "geq", ":22", ":ssh", ":www", ":http",
    ":nope", "*", "*:80", ":*", ":", "127.0.0.1", "10.0.0.0/8", "127/8", "10.1.2.3:22", "[::1]",
    "[::1]:22", "[2001:db8::/32]", "[2001:db8::]/32:80", "[::ffff:127.0.0.1]", "[::]/0",
    "0.0.0.0/0", "::1", "[::1", "1.2.3.4/33", "established", "listening", "all", "connected",
    "bucket", "big", "synchronized", "syn-recv", "time-wait", "closed", "fin-wait-1", "0", "22",
    "80", "1024", "65535", "99999", "nginx", "sshd", "1000", "4026531840",
];

/// Well-formed predicates, so that half the fuzz inputs parse and get evaluated.
pub(super) const FUZZ_PREDICATES: &[&str] = &[
    "src 127.0.0.1",
    "src 10.0.0.0/8",
    "dst [::1]:22",
    "src [2001:db8::]/32",
    "dst *:80",
    "src [::ffff:127.0.0.0/104]",
    "src 0.0.0.0/0",
    "dst 1.2.3.4",
    "sport = :22",
    "dport != :http",
    "sport > 1023",
    "dport <= 80",
    "sport geq 79",
    "dport lt 443",
    "pid = 22",
    "uid < 1000",
    "netns = 4026531840",
    "netns != 0",
    "comm = nginx",
    "comm != sshd",
];

/// splitmix64: a tiny deterministic generator, so fuzz runs are reproducible from their seed.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub(super) fn below(&mut self, n: usize) -> usize {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        usize::try_from(self.next().checked_rem(n).unwrap_or(0)).unwrap_or(0)
    }

    fn pick<T: Copy>(&mut self, items: &[T], fallback: T) -> T {
        items
            .get(self.below(items.len()))
            .copied()
            .unwrap_or(fallback)
    }

    fn flip(&mut self) -> bool {
        self.next() & 1 == 1
    }

    fn chars(&mut self) -> String {
        (0..self.below(8))
            .map(|_| match self.below(4) {
                0 => char::from_u32(u32::try_from(self.below(0x11_0000)).unwrap_or(0))
                    .unwrap_or('\u{fffd}'),
                _ => char::from(b' ' + u8::try_from(self.below(95)).unwrap_or(0)),
            })
            .collect()
    }

    fn expression(&mut self, depth: usize) -> String {
        match if depth == 0 { 0 } else { self.below(6) } {
            0 | 1 => self.pick(FUZZ_PREDICATES, "").to_owned(),
            2 => format!("not {}", self.expression(depth - 1)),
            3 => format!("( {} )", self.expression(depth - 1)),
            _ => {
                let join = self.pick(&["and", "or", "&&", "||", ""], "");
                format!(
                    "{} {join} {}",
                    self.expression(depth - 1),
                    self.expression(depth - 1)
                )
            }
        }
    }

    fn words(&mut self) -> Vec<String> {
        if self.flip() {
            let states = [
                "",
                "state established",
                "exclude listening",
                "state bucket state closed",
            ];
            return vec![self.pick(&states, "").to_owned(), self.expression(4)];
        }
        let mut words = Vec::new();
        if self.below(50) == 0 {
            words.push("( not ".repeat(self.below(2 * MAX_DEPTH)));
        }
        for _ in 0..self.below(12) {
            let word = match self.below(10) {
                0 => self.chars(),
                1 => format!("{}{}", self.pick(FUZZ_WORDS, ""), self.chars()),
                2 => format!(
                    "{} {}",
                    self.pick(FUZZ_WORDS, ""),
                    self.pick(FUZZ_WORDS, "")
                ),
                _ => self.pick(FUZZ_WORDS, "").to_owned(),
            };
            words.push(word);
        }
        words
    }

    fn socket(&mut self, ips: &[IpAddr]) -> SocketAddr {
        const PORTS: [u16; 11] = [0, 21, 22, 23, 53, 79, 80, 81, 443, 1024, u16::MAX];
        let port = match self.below(4) {
            0 => u16::try_from(self.below(65536)).unwrap_or(0),
            _ => self.pick(&PORTS, 0),
        };
        SocketAddr::new(self.pick(ips, IpAddr::V4(Ipv4Addr::LOCALHOST)), port)
    }

    /// A socket with both ends in one family, as every kernel event has.
    pub(super) fn input(&mut self) -> FilterInput<'static> {
        let v4 = [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)),
        ];
        let v6 = [
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5)),
            IpAddr::V6(Ipv6Addr::new(0xa00, 0, 0, 0, 0, 0, 0, 1)),
        ];
        let ips: &[IpAddr] = if self.flip() { &v4 } else { &v6 };
        let ids = [None, Some(0), Some(22), Some(1000), Some(4_026_531_840)];
        FilterInput {
            state: TcpState::from_kernel(u8::try_from(self.below(16)).unwrap_or(0)),
            local: self.socket(ips),
            remote: self.socket(ips),
            netns: self.pick(&ids, None),
            pid: self.pick(&ids, None),
            comm: self.pick(
                &[None, Some("nginx"), Some("sshd"), Some("systemd-resolved")],
                None,
            ),
            uid: self.pick(&ids, None),
            cgroup: None,
        }
    }
}

/// Parses `iterations` random token soups (the grammar's words mixed with random characters),
/// renders every error, and evaluates every parsed filter on random transitions, panicking if
/// one matches a transition its kernel filter would drop. Returns how many inputs parsed (and
/// were evaluated).
pub fn fuzz(iterations: u64, seed: u64) -> u64 {
    let services = Services::from_text(FUZZ_SERVICES);
    let mut rng = Rng(seed);
    let mut evaluated = 0;
    for _ in 0..iterations {
        let words = rng.words();
        let defaults = StateSet::default_for(rng.flip(), rng.flip());
        match Filter::parse(&words, &services, defaults) {
            Ok(filter) => {
                let filter = filter.restrict_families(rng.flip(), rng.flip());
                let kernel = filter.kernel_filter();
                for _ in 0..8 {
                    let input = rng.input();
                    let old = TcpState::from_kernel(u8::try_from(rng.below(16)).unwrap_or(0));
                    let transition_kept = !filter.matches_transition(old, &input)
                        || kernel_passes(&kernel, old, &input);
                    let socket_kept =
                        !filter.matches(&input) || kernel_passes(&kernel, input.state, &input);
                    assert!(
                        transition_kept && socket_kept,
                        "kernel filter {kernel:?} drops {old:?} -> {input:?}, which {words:?} accepts"
                    );
                }
                evaluated += 1;
            }
            Err(e) => {
                std::hint::black_box(e.render());
            }
        }
    }
    evaluated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_token_soups_never_panic() {
        let evaluated = fuzz(20_000, 1);
        assert!(evaluated > 10_000, "only {evaluated} of 20000 parsed");
    }

    /// The long run: `cargo xtask fuzz [N]` (N inputs, default 1,000,000).
    #[test]
    #[ignore = "long; run by cargo xtask fuzz"]
    fn fuzz_from_env() {
        let n: u64 = std::env::var("NETMON_FUZZ_ITERATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let seed: u64 = std::env::var("NETMON_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x5eed);
        let start = std::time::Instant::now();
        let evaluated = fuzz(n, seed);
        println!(
            "fuzz: {n} inputs (seed {seed:#x}), {evaluated} parsed and evaluated, no panic, \
             no kernel-filter violation, in {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
}
