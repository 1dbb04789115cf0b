//! The sock_diag attributes after `inet_diag_msg` that `ss -o -e -m -i` print (timers,
//! shutdown, cgroup, skmem, `tcp_info`, congestion control), decoded, and ss's text for them.
//!
//! The formats follow iproute2 6.1's `misc/ss.c` (Debian 12's `ss`): `tcp_timer_print`,
//! `sock_details_print`, `print_skmeminfo` and `tcp_show_info`/`tcp_stats_print`. Attribute
//! layouts are from include/uapi/linux/inet_diag.h, tcp.h and sock_diag.h.

use std::fmt::Write as _;

use serde::Serialize;

use crate::sock_diag::{Timer, TimerKind};

/// `INET_DIAG_*` attribute types (include/uapi/linux/inet_diag.h).
const MEMINFO: u16 = 1;
const INFO: u16 = 2;
const VEGASINFO: u16 = 3;
const CONG: u16 = 4;
const SKMEMINFO: u16 = 7;
const SHUTDOWN: u16 = 8;
const DCTCPINFO: u16 = 9;
const SKV6ONLY: u16 = 11;
const MARK: u16 = 15;
const BBRINFO: u16 = 16;
const CGROUP_ID: u16 = 21;

/// Bits of `idiag_ext` in a dump request: which optional attributes to send. The kernel sends
/// SHUTDOWN, CGROUP_ID, SKV6ONLY (and MARK to CAP_NET_ADMIN) unasked.
pub mod want {
    /// `INET_DIAG_MEMINFO` and `INET_DIAG_SKMEMINFO` (ss -m).
    pub const MEMORY: u8 = (1 << (super::MEMINFO - 1)) | (1 << (super::SKMEMINFO - 1));
    /// `INET_DIAG_INFO` (`struct tcp_info`), the congestion control's own info (VEGASINFO
    /// asks for whichever of vegas/dctcp/bbr runs) and its name (ss -i).
    pub const INFO: u8 =
        (1 << (super::INFO - 1)) | (1 << (super::VEGASINFO - 1)) | (1 << (super::CONG - 1));
}

/// What a dump reply carried besides `inet_diag_msg`. The small, unasked attributes are always
/// decoded; the rest only when asked for (`ext` holds them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Attrs {
    /// `INET_DIAG_SKV6ONLY`, sent for IPv6 sockets in LISTEN or CLOSE only.
    pub v6only: Option<bool>,
    /// `INET_DIAG_SHUTDOWN`: bit 0 receive side shut, bit 1 send side (`RCV_SHUTDOWN`,
    /// `SEND_SHUTDOWN`); absent for TIME-WAIT and request sockets.
    pub shutdown: Option<u8>,
    /// `INET_DIAG_CGROUP_ID`: the cgroup v2 id of the socket.
    pub cgroup_id: Option<u64>,
    /// `INET_DIAG_MARK` (`SO_MARK`): sent only to a requester with CAP_NET_ADMIN.
    pub mark: Option<u32>,
    pub ext: Option<Box<Ext>>,
}

/// The attributes asked for with [`want`] bits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ext {
    /// `INET_DIAG_SKMEMINFO`: `SK_MEMINFO_*` (rmem_alloc, rcvbuf, wmem_alloc, sndbuf,
    /// fwd_alloc, wmem_queued, optmem, backlog, drops).
    pub skmem: Option<Vec<u32>>,
    /// `INET_DIAG_MEMINFO` (rmem, wmem, fmem, tmem): ss prints it only without SKMEMINFO.
    pub meminfo: Option<[u32; 4]>,
    pub info: Option<TcpInfo>,
    /// `INET_DIAG_CONG`: the congestion control's name.
    pub cong: Option<String>,
    pub cc: Option<CcInfo>,
}

/// The congestion control's own report (`union tcp_cc_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CcInfo {
    /// `struct tcpvegas_info`: enabled, rttcnt, rtt, minrtt.
    Vegas { enabled: u32, rtt: u32 },
    /// `struct tcp_dctcp_info`.
    Dctcp {
        enabled: u16,
        ce_state: u16,
        alpha: u32,
        ab_ecn: u32,
        ab_tot: u32,
    },
    /// `struct tcp_bbr_info`: bandwidth in bytes/s, min RTT in us, gains << 8.
    Bbr {
        bw: u64,
        min_rtt: u32,
        pacing_gain: u32,
        cwnd_gain: u32,
    },
}

/// `struct tcp_info` (include/uapi/linux/tcp.h), the fields ss 6.1 prints. A shorter
/// attribute (older kernel) reads as zeros past its end, as ss does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct TcpInfo {
    pub options: u8,
    pub backoff: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    pub app_limited: bool,
    pub rto: u32,
    pub ato: u32,
    pub snd_mss: u32,
    pub rcv_mss: u32,
    pub unacked: u32,
    pub sacked: u32,
    pub lost: u32,
    pub retrans: u32,
    pub fackets: u32,
    pub last_data_sent: u32,
    pub last_data_recv: u32,
    pub last_ack_recv: u32,
    pub pmtu: u32,
    pub rcv_ssthresh: u32,
    pub rtt: u32,
    pub rttvar: u32,
    pub snd_ssthresh: u32,
    pub snd_cwnd: u32,
    pub advmss: u32,
    pub reordering: u32,
    pub rcv_rtt: u32,
    pub rcv_space: u32,
    pub total_retrans: u32,
    pub pacing_rate: u64,
    pub max_pacing_rate: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub segs_out: u32,
    pub segs_in: u32,
    pub notsent_bytes: u32,
    pub min_rtt: u32,
    pub data_segs_in: u32,
    pub data_segs_out: u32,
    pub delivery_rate: u64,
    pub busy_time: u64,
    pub rwnd_limited: u64,
    pub sndbuf_limited: u64,
    pub delivered: u32,
    pub delivered_ce: u32,
    pub bytes_sent: u64,
    pub bytes_retrans: u64,
    pub dsack_dups: u32,
    pub reord_seen: u32,
    pub rcv_ooopack: u32,
    pub snd_wnd: u32,
}

/// `TCPI_OPT_*`.
const OPT_TIMESTAMPS: u8 = 1;
const OPT_SACK: u8 = 2;
const OPT_WSCALE: u8 = 4;
const OPT_ECN: u8 = 8;
const OPT_ECN_SEEN: u8 = 16;
const OPT_SYN_DATA: u8 = 32;

impl TcpInfo {
    /// Decodes the attribute payload (host-endian fields at their uapi offsets).
    pub fn parse(raw: &[u8]) -> Self {
        let mut b = [0u8; 232];
        let n = raw.len().min(b.len());
        b[..n].copy_from_slice(&raw[..n]);
        let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[o..o + 8]);
            u64::from_ne_bytes(v)
        };
        Self {
            backoff: b[4],
            options: b[5],
            // `__u8 tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4`: the first field in the low bits.
            snd_wscale: b[6] & 0xf,
            rcv_wscale: b[6] >> 4,
            app_limited: b[7] & 1 != 0,
            rto: u32_at(8),
            ato: u32_at(12),
            snd_mss: u32_at(16),
            rcv_mss: u32_at(20),
            unacked: u32_at(24),
            sacked: u32_at(28),
            lost: u32_at(32),
            retrans: u32_at(36),
            fackets: u32_at(40),
            last_data_sent: u32_at(44),
            last_data_recv: u32_at(52),
            last_ack_recv: u32_at(56),
            pmtu: u32_at(60),
            rcv_ssthresh: u32_at(64),
            rtt: u32_at(68),
            rttvar: u32_at(72),
            snd_ssthresh: u32_at(76),
            snd_cwnd: u32_at(80),
            advmss: u32_at(84),
            reordering: u32_at(88),
            rcv_rtt: u32_at(92),
            rcv_space: u32_at(96),
            total_retrans: u32_at(100),
            pacing_rate: u64_at(104),
            max_pacing_rate: u64_at(112),
            bytes_acked: u64_at(120),
            bytes_received: u64_at(128),
            segs_out: u32_at(136),
            segs_in: u32_at(140),
            notsent_bytes: u32_at(144),
            min_rtt: u32_at(148),
            data_segs_in: u32_at(152),
            data_segs_out: u32_at(156),
            delivery_rate: u64_at(160),
            busy_time: u64_at(168),
            rwnd_limited: u64_at(176),
            sndbuf_limited: u64_at(184),
            delivered: u32_at(192),
            delivered_ce: u32_at(196),
            bytes_sent: u64_at(200),
            bytes_retrans: u64_at(208),
            dsack_dups: u32_at(216),
            reord_seen: u32_at(220),
            rcv_ooopack: u32_at(224),
            snd_wnd: u32_at(228),
        }
    }
}

impl Attrs {
    /// Decodes the `struct nlattr` list after `inet_diag_msg`. Malformed tails end the walk
    /// (what was decoded so far is kept); unknown attributes are skipped.
    pub fn parse(mut attrs: &[u8]) -> Self {
        let mut out = Self::default();
        while attrs.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
            let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & netlink_packet_core::NLA_TYPE_MASK;
            if len < 4 || len > attrs.len() {
                break;
            }
            let v = &attrs[4..len];
            let u32_at = |o: usize| {
                v.get(o..o + 4)
                    .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            };
            match ty {
                SKV6ONLY => out.v6only = v.first().map(|&b| b != 0),
                SHUTDOWN => out.shutdown = v.first().copied(),
                MARK => out.mark = u32_at(0),
                CGROUP_ID => {
                    out.cgroup_id = v.get(..8).map(|b| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(b);
                        u64::from_ne_bytes(a)
                    })
                }
                SKMEMINFO => {
                    out.ext_mut().skmem = Some(v.chunks_exact(4).map(u32_at_chunk).collect())
                }
                MEMINFO => {
                    if let (Some(r), Some(w), Some(f), Some(t)) =
                        (u32_at(0), u32_at(4), u32_at(8), u32_at(12))
                    {
                        out.ext_mut().meminfo = Some([r, w, f, t]);
                    }
                }
                INFO => out.ext_mut().info = Some(TcpInfo::parse(v)),
                CONG => {
                    let name = v.split(|&b| b == 0).next().unwrap_or_default();
                    out.ext_mut().cong = Some(String::from_utf8_lossy(name).into_owned());
                }
                VEGASINFO => {
                    if let (Some(enabled), Some(rtt)) = (u32_at(0), u32_at(8)) {
                        out.ext_mut().cc = Some(CcInfo::Vegas { enabled, rtt });
                    }
                }
                DCTCPINFO => {
                    if let (Some(w0), Some(alpha), Some(ab_ecn), Some(ab_tot)) =
                        (u32_at(0), u32_at(4), u32_at(8), u32_at(12))
                    {
                        let h = w0.to_ne_bytes();
                        out.ext_mut().cc = Some(CcInfo::Dctcp {
                            enabled: u16::from_ne_bytes([h[0], h[1]]),
                            ce_state: u16::from_ne_bytes([h[2], h[3]]),
                            alpha,
                            ab_ecn,
                            ab_tot,
                        });
                    }
                }
                BBRINFO => {
                    // ss copies what there is into a zeroed struct.
                    let f = |o| u32_at(o).unwrap_or(0);
                    out.ext_mut().cc = Some(CcInfo::Bbr {
                        bw: u64::from(f(0)) | (u64::from(f(4)) << 32),
                        min_rtt: f(8),
                        pacing_gain: f(12),
                        cwnd_gain: f(16),
                    });
                }
                _ => {}
            }
            attrs = attrs.get((len + 3) & !3..).unwrap_or_default();
        }
        out
    }

    fn ext_mut(&mut self) -> &mut Ext {
        self.ext.get_or_insert_with(Default::default)
    }
}

fn u32_at_chunk(c: &[u8]) -> u32 {
    u32::from_ne_bytes([c[0], c[1], c[2], c[3]])
}

/// ss's `timer:(NAME,EXPIRES,RETRANS)` (with its leading space), or nothing without a timer.
pub fn timer_text(timer: Option<&Timer>, out: &mut String) {
    let Some(t) = timer else { return };
    let name = match t.kind {
        TimerKind::Retransmit => "on",
        TimerKind::KeepAlive => "keepalive",
        TimerKind::TimeWait => "timewait",
        TimerKind::Probe => "persist",
        TimerKind::Unknown(_) => "unknown",
    };
    write!(
        out,
        " timer:({name},{},{})",
        ms_timer(t.expires_ms),
        t.retrans
    )
    .ok();
}

/// ss's `print_ms_timer`: `119min`, `59sec`, `1.200ms`, `12sec`, `345ms`; empty for 0.
pub fn ms_timer(timeout: u32) -> String {
    let mut secs = timeout / 1000;
    let minutes = secs / 60;
    secs %= 60;
    let mut msecs = timeout % 1000;
    let mut s = String::new();
    if minutes > 0 {
        msecs = 0;
        write!(s, "{minutes}min").ok();
        if minutes > 9 {
            secs = 0;
        }
    }
    if secs > 0 {
        if secs > 9 {
            msecs = 0;
        }
        write!(s, "{secs}{}", if msecs > 0 { "." } else { "sec" }).ok();
    }
    if msecs > 0 {
        write!(s, "{msecs:03}ms").ok();
    }
    s
}

/// ss -e's fields after `ino:`/`sk:` that come from attributes: `fwmark:0x..`, `cgroup:PATH`,
/// `v6only:N`, and the shutdown arrows (`<->` open, `-->` receive side shut, `<--` send side
/// shut, `---` both).
/// `show_mark` false leaves the mark out (see `snapshot::Data::show_mark`); `cgroup_path`
/// writes the path of an id.
pub fn details_text(
    a: &Attrs,
    show_mark: bool,
    cgroup_path: &dyn Fn(u64, &mut String),
    out: &mut String,
) {
    if let Some(mark) = a.mark.filter(|&m| m != 0 && show_mark) {
        write!(out, " fwmark:{mark:#x}").ok();
    }
    if let Some(id) = a.cgroup_id.filter(|&id| id != 0) {
        out.push_str(" cgroup:");
        cgroup_path(id, out);
    }
    if let Some(v6only) = a.v6only {
        write!(out, " v6only:{}", u8::from(v6only)).ok();
    }
    if let Some(mask) = a.shutdown {
        let rcv = if mask & 1 != 0 { '-' } else { '<' };
        let snd = if mask & 2 != 0 { '-' } else { '>' };
        write!(out, " {rcv}-{snd}").ok();
    }
}

/// ss's second line for `-m` and `-i` (without its leading `\n\t` or, with -O, space):
/// `skmem:(...)` then the TCP internals. `options` (ss -o) adds the negotiated options
/// (`ts sack ecn ...`); `numeric` (ss -n) prints rates as plain numbers.
pub fn info_text(
    ext: Option<&Ext>,
    listening: bool,
    options: bool,
    numeric: bool,
    out: &mut String,
) {
    let Some(ext) = ext else { return };
    match (&ext.skmem, &ext.meminfo) {
        (Some(m), _) if m.len() >= 7 => {
            write!(
                out,
                " skmem:(r{},rb{},t{},tb{},f{},w{},o{}",
                m[0], m[1], m[2], m[3], m[4], m[5], m[6]
            )
            .ok();
            if let Some(bl) = m.get(7) {
                write!(out, ",bl{bl}").ok();
            }
            if let Some(d) = m.get(8) {
                write!(out, ",d{d}").ok();
            }
            out.push(')');
        }
        (None, Some([r, w, f, t])) => {
            write!(out, " mem:(r{r},w{w},f{f},t{t})").ok();
        }
        _ => {}
    }
    let Some(i) = &ext.info else { return };
    let bw = |v: f64| bandwidth(v, numeric);
    let mut w = |s: std::fmt::Arguments| {
        out.write_fmt(s).ok();
    };
    if options {
        for (bit, name) in [
            (OPT_TIMESTAMPS, " ts"),
            (OPT_SACK, " sack"),
            (OPT_ECN, " ecn"),
            (OPT_ECN_SEEN, " ecnseen"),
            (OPT_SYN_DATA, " fastopen"),
        ] {
            if i.options & bit != 0 {
                w(format_args!("{name}"));
            }
        }
    }
    if let Some(cong) = ext.cong.as_deref().filter(|c| !c.is_empty()) {
        w(format_args!(" {cong}"));
    }
    if i.options & OPT_WSCALE != 0 {
        w(format_args!(" wscale:{},{}", i.snd_wscale, i.rcv_wscale));
    }
    if i.rto != 0 && i.rto != 3_000_000 {
        w(format_args!(" rto:{}", g(f64::from(i.rto) / 1000.0)));
    }
    if i.backoff != 0 {
        w(format_args!(" backoff:{}", i.backoff));
    }
    if i.rtt != 0 {
        w(format_args!(
            " rtt:{}/{}",
            g(f64::from(i.rtt) / 1000.0),
            g(f64::from(i.rttvar) / 1000.0)
        ));
    }
    if i.ato != 0 {
        w(format_args!(" ato:{}", g(f64::from(i.ato) / 1000.0)));
    }
    for (v, name) in [
        (i.snd_mss, "mss"),
        (i.pmtu, "pmtu"),
        (i.rcv_mss, "rcvmss"),
        (i.advmss, "advmss"),
        (i.snd_cwnd, "cwnd"),
    ] {
        if v != 0 {
            w(format_args!(" {name}:{v}"));
        }
    }
    if i.snd_ssthresh != 0 && i.snd_ssthresh < 0xffff {
        w(format_args!(" ssthresh:{}", i.snd_ssthresh));
    }
    for (v, name) in [
        (i.bytes_sent, "bytes_sent"),
        (i.bytes_retrans, "bytes_retrans"),
        (i.bytes_acked, "bytes_acked"),
        (i.bytes_received, "bytes_received"),
        (u64::from(i.segs_out), "segs_out"),
        (u64::from(i.segs_in), "segs_in"),
        (u64::from(i.data_segs_out), "data_segs_out"),
        (u64::from(i.data_segs_in), "data_segs_in"),
    ] {
        if v != 0 {
            w(format_args!(" {name}:{v}"));
        }
    }
    // The RTT for the send rate: vegas's own when it has one.
    let mut rtt = f64::from(i.rtt);
    match ext.cc {
        Some(CcInfo::Vegas { enabled, rtt: v }) if enabled != 0 && v != 0 && v != 0x7fff_ffff => {
            rtt = f64::from(v);
        }
        Some(CcInfo::Dctcp {
            enabled,
            ce_state,
            alpha,
            ab_ecn,
            ab_tot,
        }) => {
            if enabled != 0 {
                w(format_args!(
                    " dctcp:(ce_state:{ce_state},alpha:{alpha},ab_ecn:{ab_ecn},ab_tot:{ab_tot})"
                ));
            } else {
                w(format_args!(" dctcp:fallback_mode"));
            }
        }
        Some(CcInfo::Bbr {
            bw: b,
            min_rtt,
            pacing_gain,
            cwnd_gain,
        }) => {
            w(format_args!(
                " bbr:(bw:{}bps,mrtt:{}",
                bw(b as f64 * 8.0),
                g(f64::from(min_rtt) / 1000.0)
            ));
            if pacing_gain != 0 {
                w(format_args!(
                    ",pacing_gain:{}",
                    g(f64::from(pacing_gain) / 256.0)
                ));
            }
            if cwnd_gain != 0 {
                w(format_args!(
                    ",cwnd_gain:{}",
                    g(f64::from(cwnd_gain) / 256.0)
                ));
            }
            w(format_args!(")"));
        }
        _ => {}
    }
    if rtt > 0.0 && i.snd_mss != 0 && i.snd_cwnd != 0 {
        let send = f64::from(i.snd_cwnd) * f64::from(i.snd_mss) * 8_000_000.0 / rtt;
        w(format_args!(" send {}bps", bw(send)));
    }
    for (v, name) in [
        (i.last_data_sent, "lastsnd"),
        (i.last_data_recv, "lastrcv"),
        (i.last_ack_recv, "lastack"),
    ] {
        if v != 0 {
            w(format_args!(" {name}:{v}"));
        }
    }
    if i.pacing_rate != 0 && i.pacing_rate != u64::MAX {
        w(format_args!(
            " pacing_rate {}bps",
            bw(i.pacing_rate as f64 * 8.0)
        ));
        if i.max_pacing_rate != 0 && i.max_pacing_rate != u64::MAX {
            w(format_args!("/{}bps", bw(i.max_pacing_rate as f64 * 8.0)));
        }
    }
    if i.delivery_rate != 0 {
        w(format_args!(
            " delivery_rate {}bps",
            bw(i.delivery_rate as f64 * 8.0)
        ));
    }
    if i.delivered != 0 {
        w(format_args!(" delivered:{}", i.delivered));
    }
    if i.delivered_ce != 0 {
        w(format_args!(" delivered_ce:{}", i.delivered_ce));
    }
    if i.app_limited {
        w(format_args!(" app_limited"));
    }
    if i.busy_time != 0 {
        w(format_args!(" busy:{}ms", i.busy_time / 1000));
        let busy = i.busy_time as f64;
        if i.rwnd_limited != 0 {
            w(format_args!(
                " rwnd_limited:{}ms({:.1}%)",
                i.rwnd_limited / 1000,
                100.0 * i.rwnd_limited as f64 / busy
            ));
        }
        if i.sndbuf_limited != 0 {
            w(format_args!(
                " sndbuf_limited:{}ms({:.1}%)",
                i.sndbuf_limited / 1000,
                100.0 * i.sndbuf_limited as f64 / busy
            ));
        }
    }
    if i.unacked != 0 {
        w(format_args!(" unacked:{}", i.unacked));
    }
    if i.retrans != 0 || i.total_retrans != 0 {
        w(format_args!(" retrans:{}/{}", i.retrans, i.total_retrans));
    }
    if i.lost != 0 {
        w(format_args!(" lost:{}", i.lost));
    }
    // A listener reports its accept-queue limit in tcpi_sacked.
    if i.sacked != 0 && !listening {
        w(format_args!(" sacked:{}", i.sacked));
    }
    if i.dsack_dups != 0 {
        w(format_args!(" dsack_dups:{}", i.dsack_dups));
    }
    if i.fackets != 0 {
        w(format_args!(" fackets:{}", i.fackets));
    }
    if i.reordering != 3 {
        w(format_args!(" reordering:{}", i.reordering));
    }
    if i.reord_seen != 0 {
        w(format_args!(" reord_seen:{}", i.reord_seen));
    }
    if i.rcv_rtt != 0 {
        w(format_args!(
            " rcv_rtt:{}",
            g(f64::from(i.rcv_rtt) / 1000.0)
        ));
    }
    for (v, name) in [
        (i.rcv_space, "rcv_space"),
        (i.rcv_ssthresh, "rcv_ssthresh"),
        (i.notsent_bytes, "notsent"),
    ] {
        if v != 0 {
            w(format_args!(" {name}:{v}"));
        }
    }
    if i.min_rtt != 0 && i.min_rtt != u32::MAX {
        w(format_args!(" minrtt:{}", g(f64::from(i.min_rtt) / 1000.0)));
    }
    if i.rcv_ooopack != 0 {
        w(format_args!(" rcv_ooopack:{}", i.rcv_ooopack));
    }
    if i.snd_wnd != 0 {
        w(format_args!(" snd_wnd:{}", i.snd_wnd));
    }
}

/// ss's `sprint_bw`: `%.0f` with -n, else three significant digits and K/M/G/T.
pub fn bandwidth(bw: f64, numeric: bool) -> String {
    if numeric {
        return format!("{bw:.0}");
    }
    for (scale, suffix) in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")] {
        if bw >= scale {
            return format!("{}{suffix}", g_prec(bw / scale, 3));
        }
    }
    g(bw)
}

/// C's `%g`: six significant digits, trailing zeros dropped.
pub fn g(v: f64) -> String {
    g_prec(v, 6)
}

/// C's `%.Pg` for the magnitudes ss prints (no exponent form below 1e-4 or at 10^P and above
/// is needed there, but it is handled).
pub fn g_prec(v: f64, precision: usize) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let p = precision.max(1) as i32;
    // The exponent after rounding to P significant digits.
    let sci = format!("{:.*e}", (p - 1) as usize, v);
    let exp: i32 = sci
        .rsplit_once('e')
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    if exp < -4 || exp >= p {
        let (mant, _) = sci.split_once('e').unwrap_or((&sci, ""));
        let mant = trim_zeros(mant);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    let decimals = (p - 1 - exp).max(0) as usize;
    trim_zeros(&format!("{v:.decimals$}")).to_owned()
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_g_formatting() {
        assert_eq!(g(0.021), "0.021");
        assert_eq!(g(204.0), "204");
        assert_eq!(g(2.88671875), "2.88672");
        assert_eq!(g(0.0), "0");
        assert_eq!(g(1234567.0), "1.23457e+06");
        assert_eq!(g_prec(40.374854736, 3), "40.4");
        assert_eq!(g_prec(2.5, 3), "2.5");
        assert_eq!(g_prec(208.0, 3), "208");
        assert_eq!(g_prec(999.9, 3), "1e+03");
    }

    #[test]
    fn bandwidth_as_ss() {
        assert_eq!(bandwidth(40_374_854_736.0, false), "40.4G");
        assert_eq!(bandwidth(2_500_000_000_000.0, false), "2.5T");
        assert_eq!(bandwidth(0.0, false), "0");
        assert_eq!(bandwidth(40_374_854_736.0, true), "40374854736");
        assert_eq!(bandwidth(1500.0, false), "1.5K");
    }

    #[test]
    fn timers_as_ss() {
        assert_eq!(ms_timer(7_140_000), "119min");
        assert_eq!(ms_timer(59_000), "59sec");
        assert_eq!(ms_timer(59_500), "59sec");
        assert_eq!(ms_timer(1_200), "1.200ms");
        assert_eq!(ms_timer(345), "345ms");
        assert_eq!(ms_timer(0), "");
        assert_eq!(ms_timer(61_000), "1min1sec");
        let mut s = String::new();
        let t = Timer {
            kind: TimerKind::KeepAlive,
            expires_ms: 7_140_000,
            retrans: 0,
        };
        timer_text(Some(&t), &mut s);
        assert_eq!(s, " timer:(keepalive,119min,0)");
    }

    fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        v.resize((v.len() + 3) & !3, 0);
        v
    }

    #[test]
    fn attributes_decode_and_print_as_ss() {
        let mut raw = nla(SHUTDOWN, &[2]);
        raw.extend(nla(CGROUP_ID, &1u64.to_ne_bytes()));
        raw.extend(nla(SKV6ONLY, &[0]));
        let skmem: Vec<u8> = [0u32, 131072, 0, 3939840, 0, 0, 0, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        raw.extend(nla(SKMEMINFO, &skmem));
        raw.extend(nla(CONG, b"bbr\0"));
        let mut info = vec![0u8; 232];
        info[5] = OPT_TIMESTAMPS | OPT_SACK | OPT_WSCALE;
        info[6] = 0xaa; // wscale 10,10
        info[7] = 1;
        info[8..12].copy_from_slice(&204_000u32.to_ne_bytes());
        info[16..20].copy_from_slice(&35328u32.to_ne_bytes());
        info[68..72].copy_from_slice(&21u32.to_ne_bytes());
        info[72..76].copy_from_slice(&11u32.to_ne_bytes());
        info[80..84].copy_from_slice(&11u32.to_ne_bytes());
        info[88..92].copy_from_slice(&3u32.to_ne_bytes());
        info[120..128].copy_from_slice(&1001u64.to_ne_bytes());
        raw.extend(nla(INFO, &info));
        raw.extend(nla(99, &[1, 2, 3])); // unknown: skipped
        let a = Attrs::parse(&raw);
        assert_eq!(a.shutdown, Some(2));
        assert_eq!(a.cgroup_id, Some(1));
        let mut s = String::new();
        details_text(&a, true, &|_, out| out.push('/'), &mut s);
        assert_eq!(s, " cgroup:/ v6only:0 <--");
        let mut s = String::new();
        info_text(a.ext.as_deref(), false, true, true, &mut s);
        assert_eq!(
            s,
            " skmem:(r0,rb131072,t0,tb3939840,f0,w0,o0,bl0,d0) ts sack bbr wscale:10,10 rto:204 \
             rtt:0.021/0.011 mss:35328 cwnd:11 bytes_acked:1001 send 148041142857bps app_limited"
        );
        // A truncated attribute list stops the walk without losing what came before.
        let mut cut = nla(SHUTDOWN, &[0]);
        cut.extend_from_slice(&[200, 0, 2, 0, 1]);
        assert_eq!(Attrs::parse(&cut).shutdown, Some(0));
    }
}
