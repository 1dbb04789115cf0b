//! The kernel's socket counters `ss -s` prints (/proc/net/sockstat, sockstat6, snmp), read for
//! one network namespace, and ss's summary text for them.
//!
//! As in iproute2 6.1's `print_summary`: `TCP: N` is `alloc + tw`, `closed` is
//! `alloc - (inuse4 + inuse6 - tw)`, `estab` is the SNMP `CurrEstab` (ESTABLISHED and
//! CLOSE-WAIT). `alloc` and `orphan` are machine-wide kernel counters (`tcp_sockets_allocated`,
//! `tcp_orphan_count`), so inside a namespace they count other namespaces' sockets too, as
//! `ss -s` shows them there; `inuse`, `tw`, `sockets: used` and `CurrEstab` are per namespace.

use std::{
    io::{self, Write},
    path::Path,
};

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SockStat {
    /// `sockets: used`.
    pub sockets: i64,
    pub tcp4_inuse: i64,
    pub tcp6_inuse: i64,
    pub tcp_orphan: i64,
    pub tcp_tw: i64,
    pub tcp_alloc: i64,
    pub udp4: i64,
    pub udp6: i64,
    pub raw4: i64,
    pub raw6: i64,
    pub frag4: i64,
    pub frag6: i64,
    /// `Tcp: CurrEstab` of /proc/net/snmp.
    pub tcp_estab: i64,
}

impl SockStat {
    /// Reads `DIR/sockstat`, `DIR/sockstat6` and `DIR/snmp`, where DIR is a `/proc/PID/net`
    /// (the namespace of PID) or `/proc/thread-self/net`.
    pub fn read(net_dir: &Path) -> io::Result<Self> {
        let read = |name: &str| std::fs::read_to_string(net_dir.join(name));
        let sockstat = read("sockstat")?;
        // No IPv6 in this kernel: ss reads on without it.
        let sockstat6 = read("sockstat6").unwrap_or_default();
        let snmp = read("snmp")?;
        Ok(Self::parse(&sockstat, &sockstat6, &snmp))
    }

    /// Parses the three files' text; lines and fields it does not know are ignored, missing
    /// ones read as 0 (as ss's sscanf leaves them).
    pub fn parse(sockstat: &str, sockstat6: &str, snmp: &str) -> Self {
        let mut s = Self::default();
        for line in sockstat.lines().chain(sockstat6.lines()) {
            let mut words = line.split_whitespace();
            let Some(id) = words.next() else { continue };
            // "TCP: inuse 2 orphan 0 tw 1 alloc 26 mem 251": values at the odd positions.
            let v: Vec<i64> = words
                .skip(1)
                .step_by(2)
                .map(|w| w.parse().unwrap_or(0))
                .collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            match id {
                "sockets:" => s.sockets = at(0),
                "TCP:" => {
                    s.tcp4_inuse = at(0);
                    s.tcp_orphan = at(1);
                    s.tcp_tw = at(2);
                    s.tcp_alloc = at(3);
                }
                "TCP6:" => s.tcp6_inuse = at(0),
                "UDP:" => s.udp4 = at(0),
                "UDP6:" => s.udp6 = at(0),
                "RAW:" => s.raw4 = at(0),
                "RAW6:" => s.raw6 = at(0),
                "FRAG:" => s.frag4 = at(0),
                "FRAG6:" => s.frag6 = at(0),
                _ => {}
            }
        }
        // "Tcp: RtoAlgorithm ... CurrEstab ..." then "Tcp: 1 200 ... 3 ...".
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        if let (Some(names), Some(values)) = (tcp.next(), tcp.next())
            && let Some(i) = names.split_whitespace().position(|n| n == "CurrEstab")
        {
            s.tcp_estab = values
                .split_whitespace()
                .nth(i)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        s
    }

    /// ss -s's text.
    pub fn write_text(&self, out: &mut impl Write) -> io::Result<()> {
        let s = self;
        writeln!(out, "Total: {}", s.sockets)?;
        writeln!(
            out,
            "TCP:   {} (estab {}, closed {}, orphaned {}, timewait {})",
            s.tcp_alloc + s.tcp_tw,
            s.tcp_estab,
            s.tcp_alloc - (s.tcp4_inuse + s.tcp6_inuse - s.tcp_tw),
            s.tcp_orphan,
            s.tcp_tw
        )?;
        writeln!(out)?;
        writeln!(out, "Transport Total     IP        IPv6")?;
        let row = |out: &mut dyn Write, name: &str, v4: i64, v6: i64| {
            writeln!(out, "{name}\t  {:<9} {v4:<9} {v6:<9}", v4 + v6)
        };
        row(out, "RAW", s.raw4, s.raw6)?;
        row(out, "UDP", s.udp4, s.udp6)?;
        row(out, "TCP", s.tcp4_inuse, s.tcp6_inuse)?;
        row(
            out,
            "INET",
            s.raw4 + s.udp4 + s.tcp4_inuse,
            s.raw6 + s.udp6 + s.tcp6_inuse,
        )?;
        row(out, "FRAG", s.frag4, s.frag6)?;
        writeln!(out)
    }

    /// One JSON object, `"type": "summary"`.
    pub fn write_json(&self, out: &mut impl Write) -> io::Result<()> {
        #[derive(Serialize)]
        struct J<'a> {
            r#type: &'static str,
            tcp_total: i64,
            tcp_closed: i64,
            #[serde(flatten)]
            s: &'a SockStat,
        }
        let j = J {
            r#type: "summary",
            tcp_total: self.tcp_alloc + self.tcp_tw,
            tcp_closed: self.tcp_alloc - (self.tcp4_inuse + self.tcp6_inuse - self.tcp_tw),
            s: self,
        };
        serde_json::to_writer(&mut *out, &j)?;
        out.write_all(b"\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_as_ss_prints_it() {
        // Captured in a namespace with a listener, 2 ESTAB, FIN-WAIT-2/CLOSE-WAIT and a
        // TIME-WAIT socket, with `ss -s` at the same moment (tabs and trailing blanks as ss).
        let s = SockStat::parse(
            "sockets: used 5\nTCP: inuse 2 orphan 20 tw 1 alloc 26 mem 251\nUDP: inuse 0 mem 0\n\
             UDPLITE: inuse 0\nRAW: inuse 0\nFRAG: inuse 0 memory 0\n",
            "TCP6: inuse 3\nUDP6: inuse 0\nUDPLITE6: inuse 0\nRAW6: inuse 0\nFRAG6: inuse 0 memory 0\n",
            "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens \
             PassiveOpens AttemptFails EstabResets CurrEstab InSegs\nTcp: 1 200 120000 -1 26 2 0 11 3 6470\n",
        );
        let mut out = Vec::new();
        s.write_text(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Total: 5\nTCP:   27 (estab 3, closed 22, orphaned 20, timewait 1)\n\n\
             Transport Total     IP        IPv6\n\
             RAW\t  0         0         0        \n\
             UDP\t  0         0         0        \n\
             TCP\t  5         2         3        \n\
             INET\t  5         2         3        \n\
             FRAG\t  0         0         0        \n\n"
        );
        assert_eq!(SockStat::parse("", "", ""), SockStat::default());
    }
}
