//! The optional kernel hooks netmon uses beyond `inet_sock_set_state`: which ones this kernel
//! has, what each gives, and what its absence costs.
//!
//! Only the transition tracepoint is required. Everything else is probed (BTF types for the
//! tracepoints, struct members for the counters) and attached when present, so that netmon runs
//! on older kernels with less detail instead of refusing to start.

use std::fmt;

use btf_rs::Btf;

use crate::offsets;

/// An optional capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// Owners from I/O: `sock:sock_send_length` / `sock:sock_recv_length`.
    IoOwners,
    /// How connections ended: `tcp:tcp_send_reset` / `tcp:tcp_receive_reset`.
    ResetEndings,
    /// Transitions the kernel skipped the program for: `bpf_prog_info.recursion_misses`.
    RecursionCounts,
}

impl Feature {
    pub const ALL: [Feature; 3] = [
        Feature::IoOwners,
        Feature::ResetEndings,
        Feature::RecursionCounts,
    ];

    /// Short name, as `netmon features` lists it.
    pub fn name(self) -> &'static str {
        match self {
            Feature::IoOwners => "io-owners",
            Feature::ResetEndings => "reset-endings",
            Feature::RecursionCounts => "recursion-losses",
        }
    }

    /// The kernel hooks it needs (BTF tracepoints, or a struct member).
    pub fn hooks(self) -> &'static [&'static str] {
        match self {
            Feature::IoOwners => &["sock_send_length", "sock_recv_length"],
            Feature::ResetEndings => &["tcp_send_reset", "tcp_receive_reset"],
            Feature::RecursionCounts => &["bpf_prog_info.recursion_misses"],
        }
    }

    /// First mainline kernel that has the hooks.
    pub fn since(self) -> &'static str {
        match self {
            Feature::IoOwners => "Linux 6.3",
            Feature::ResetEndings => "Linux 4.16",
            Feature::RecursionCounts => "Linux 5.12",
        }
    }

    /// What it gives.
    pub fn gives(self) -> &'static str {
        match self {
            Feature::IoOwners => "an accepted socket is owned by the process doing I/O on it",
            Feature::ResetEndings => {
                "endings by reset: reset-sent, reset-received, refused (--lifecycle, --closed)"
            }
            Feature::RecursionCounts => {
                "transitions the kernel skipped the program for are counted as losses"
            }
        }
    }

    /// What its absence costs.
    pub fn without(self) -> &'static str {
        match self {
            Feature::IoOwners => {
                "owners of accepted sockets are their listener's only (no I/O hints)"
            }
            Feature::ResetEndings => {
                "connections ended by a reset show as normal, a refused connect as a timeout"
            }
            Feature::RecursionCounts => {
                "transitions lost to the kernel's recursion guard cannot be counted; loss \
                 records cover a full ring only"
            }
        }
    }

    /// The feature an optional eBPF program serves.
    pub fn of_program(program: &str) -> Option<Feature> {
        match program {
            "netmon_send" | "netmon_recv" => Some(Feature::IoOwners),
            "netmon_reset_sent" | "netmon_reset_received" => Some(Feature::ResetEndings),
            _ => None,
        }
    }
}

/// One feature this kernel lacks, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    pub feature: Feature,
    /// e.g. "no tracepoint sock_send_length", or the error loading its program.
    pub why: String,
}

impl fmt::Display for Missing {
    /// One line, for stderr at start-up.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let feature = self.feature;
        write!(
            f,
            "{}: {} (needs {}): {}",
            feature.name(),
            self.why,
            feature.since(),
            feature.without()
        )
    }
}

/// What a probe of the kernel found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Support {
    /// The transition tracepoint itself (without it netmon cannot run).
    pub transitions: bool,
    pub missing: Vec<Missing>,
}

impl Support {
    pub fn has(&self, feature: Feature) -> bool {
        !self.missing.iter().any(|m| m.feature == feature)
    }

    /// Records that `feature` is missing (once; the first reason is kept).
    pub fn lack(&mut self, feature: Feature, why: String) {
        if self.has(feature) {
            self.missing.push(Missing { feature, why });
            self.missing.sort_by_key(|m| m.feature);
        }
    }

    /// Checks the kernel's BTF for every hook (no privileges needed).
    pub fn probe(btf: &Btf) -> Self {
        Self::from_lookup(
            |tp| has_tracepoint(btf, tp),
            || offsets::has_field(btf, "bpf_prog_info", &["recursion_misses"]),
        )
    }

    /// The probe's logic, over any way of asking "does this tracepoint exist".
    pub fn from_lookup(
        tracepoint: impl Fn(&str) -> bool,
        recursion_misses: impl Fn() -> bool,
    ) -> Self {
        let mut support = Support {
            transitions: tracepoint(netmon_common::TRACEPOINT),
            missing: Vec::new(),
        };
        for feature in [Feature::IoOwners, Feature::ResetEndings] {
            let absent: Vec<&str> = feature
                .hooks()
                .iter()
                .copied()
                .filter(|tp| !tracepoint(tp))
                .collect();
            if !absent.is_empty() {
                let plural = if absent.len() > 1 { "s" } else { "" };
                support.lack(
                    feature,
                    format!("no tracepoint{plural} {}", absent.join(", ")),
                );
            }
        }
        if !recursion_misses() {
            support.lack(
                Feature::RecursionCounts,
                "no bpf_prog_info.recursion_misses".into(),
            );
        }
        support
    }

    /// The `netmon features` listing: one line per feature.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let status = |ok: bool| if ok { "yes" } else { "no" };
        out.push_str(&format!(
            "{:<17} {:<3}  {} (required)\n",
            "transitions",
            status(self.transitions),
            netmon_common::TRACEPOINT
        ));
        for feature in Feature::ALL {
            let missing = self.missing.iter().find(|m| m.feature == feature);
            let what = match missing {
                None => feature.gives().to_string(),
                Some(m) => format!(
                    "{}; needs {}: {}",
                    m.why,
                    feature.since(),
                    feature.without()
                ),
            };
            out.push_str(&format!(
                "{:<17} {:<3}  {}: {}\n",
                feature.name(),
                status(missing.is_none()),
                feature.hooks().join(", "),
                what
            ));
        }
        out
    }
}

/// A BTF tracepoint `tp` exists when the kernel has the `btf_trace_<tp>` typedef.
pub fn has_tracepoint(btf: &Btf, tp: &str) -> bool {
    btf.resolve_ids_by_name(&format!("btf_trace_{tp}"))
        .is_ok_and(|ids| !ids.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Debian's 6.1 kernel has: no sock_send_length/sock_recv_length (added in 6.3).
    fn linux_6_1() -> Support {
        Support::from_lookup(
            |tp| !matches!(tp, "sock_send_length" | "sock_recv_length"),
            || true,
        )
    }

    #[test]
    fn a_kernel_without_io_tracepoints_lacks_io_owners_only() {
        let s = linux_6_1();
        assert!(s.transitions);
        assert!(!s.has(Feature::IoOwners));
        assert!(s.has(Feature::ResetEndings) && s.has(Feature::RecursionCounts));
        assert_eq!(s.missing.len(), 1);
        let line = s.missing[0].to_string();
        assert_eq!(
            line,
            "io-owners: no tracepoints sock_send_length, sock_recv_length (needs Linux 6.3): \
             owners of accepted sockets are their listener's only (no I/O hints)"
        );
    }

    #[test]
    fn a_missing_feature_is_recorded_once_with_its_first_reason() {
        let mut s = Support {
            transitions: true,
            ..Default::default()
        };
        s.lack(Feature::ResetEndings, "first".into());
        s.lack(Feature::ResetEndings, "second".into());
        s.lack(Feature::IoOwners, "io".into());
        assert_eq!(s.missing.len(), 2);
        assert_eq!(
            s.missing[0].feature,
            Feature::IoOwners,
            "kept in a stable order"
        );
        assert_eq!(s.missing[1].why, "first");
    }

    #[test]
    fn the_listing_names_every_feature_and_what_is_missing() {
        let text = linux_6_1().render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + Feature::ALL.len(), "{text}");
        assert!(lines[0].starts_with("transitions       yes"), "{text}");
        assert!(lines[1].starts_with("io-owners         no "), "{text}");
        assert!(lines[1].contains("needs Linux 6.3"), "{text}");
        assert!(lines[2].starts_with("reset-endings     yes"), "{text}");
        let none = Support::from_lookup(|_| false, || false);
        assert!(!none.transitions);
        assert_eq!(none.missing.len(), 3);
        assert!(none.render().contains("recursion-losses  no "));
    }

    #[test]
    fn every_optional_program_serves_a_feature() {
        for (program, tracepoint) in netmon_common::HINT_PROGRAMS {
            let feature = Feature::of_program(program)
                .unwrap_or_else(|| panic!("{program} serves no feature"));
            assert!(feature.hooks().contains(&tracepoint), "{program}");
        }
    }

    // Reading BTF needs no privileges; the development kernel (6.18) has every hook.
    #[test]
    fn this_kernel_is_probed_from_its_btf() {
        let btf = Btf::from_file(offsets::VMLINUX_BTF).expect("read kernel BTF");
        assert!(has_tracepoint(&btf, "inet_sock_set_state"));
        assert!(!has_tracepoint(&btf, "no_such_tracepoint_netmon"));
        let s = Support::probe(&btf);
        assert!(s.transitions);
    }
}
