//! The ss filter language: state words and expressions, their matching, and the kernel pre-filter.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use netmon_common::{KernelFilter, TcpState};

/// Deepest nesting of `(` and `not`: bounds the recursion of the parser and of every walk over
/// the expression, so no input can overflow the stack.
const MAX_DEPTH: usize = 256;
/// `TASK_COMM_LEN - 1`: the kernel keeps at most 15 bytes of a task name.
const COMM_MAX: usize = 15;
/// [`KernelFilter::family_mask`] bits.
const FAMILY_V4: u32 = 1;
const FAMILY_V6: u32 = 2;
const FAMILY_ANY: u32 = FAMILY_V4 | FAMILY_V6;

const fn bit(state: TcpState) -> u32 {
    let k = state.to_kernel();
    if k < 32 { 1 << k } else { 0 }
}

const LISTEN: u32 = bit(TcpState::Listen);
const CLOSE: u32 = bit(TcpState::Close);
const SYN_SENT: u32 = bit(TcpState::SynSent);
const TIME_WAIT: u32 = bit(TcpState::TimeWait);
/// inet_diag reports request sockets (NEW_SYN_RECV) as SYN-RECV, and so does ss: one state here.
const SYN_RECV: u32 = bit(TcpState::SynRecv) | bit(TcpState::NewSynRecv);
/// ss.c `SS_CONN`: what `ss -t` shows without `-a`/`-l` or a state filter.
const SS_CONN: u32 = !(LISTEN | CLOSE | TIME_WAIT | SYN_RECV);

/// A set of TCP states, as bits `1 << kernel state number` (the layout of
/// [`KernelFilter::state_mask`]). Groups are complements of ss's full mask, as in ss.c, so they
/// also hold states this build does not know; states numbered 32 and up are only in [`Self::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateSet(u32);

impl StateSet {
    pub const ALL: Self = Self(u32::MAX);
    const NONE: Self = Self(0);

    /// The states shown without `state`/`exclude` words, as ss picks them for TCP: `SS_CONN`
    /// by default, every state with `-a`, LISTEN with `-l`. ss's `-l` also adds CLOSE (its
    /// `UNCONN`, for datagram sockets); here that would select every connection's final
    /// `-> CLOSE`, so it is left out. With both flags ss keeps the last one given; the order is
    /// unknown here, so the superset wins.
    pub fn default_for(all: bool, listening: bool) -> Self {
        match (all, listening) {
            (true, _) => Self::ALL,
            (false, true) => Self(LISTEN),
            (false, false) => Self(SS_CONN),
        }
    }

    pub fn contains(self, state: TcpState) -> bool {
        match bit(state) {
            0 => self == Self::ALL,
            b => self.0 & b != 0,
        }
    }

    /// ss.c `scan_state`: case-insensitive names and groups (ss 6.8 added `bound-inactive`; it
    /// refuses `new-syn-recv`, a kernel-internal state, and so does this).
    fn by_name(name: &str) -> Option<Self> {
        let mask = match name.to_ascii_lowercase().as_str() {
            "all" => u32::MAX,
            "connected" => !(CLOSE | LISTEN),
            "synchronized" => !(CLOSE | LISTEN | SYN_SENT),
            "bucket" => SYN_RECV | TIME_WAIT,
            "big" => !(SYN_RECV | TIME_WAIT),
            "established" => bit(TcpState::Established),
            "syn-sent" => SYN_SENT,
            "syn-recv" | "syn-rcv" => SYN_RECV,
            "fin-wait-1" => bit(TcpState::FinWait1),
            "fin-wait-2" => bit(TcpState::FinWait2),
            "time-wait" => TIME_WAIT,
            "closed" | "close" | "unconnected" => CLOSE,
            "close-wait" => bit(TcpState::CloseWait),
            "last-ack" => bit(TcpState::LastAck),
            "listening" => LISTEN,
            "closing" => bit(TcpState::Closing),
            "bound-inactive" => bit(TcpState::BoundInactive),
            _ => return None,
        };
        Some(Self(mask))
    }
}

/// TCP service names and aliases to ports, as `getservbyname(name, "tcp")` resolves them for ss.
#[derive(Clone, Debug, Default)]
pub struct Services {
    by_name: HashMap<String, u16>,
    /// Port to its first name, as getservbyport(port, "tcp") gives ss without `-n`.
    by_port: HashMap<u16, String>,
}

impl Services {
    /// Parses services(5) text (`name port/proto [alias...] [# comment]`), keeping tcp entries;
    /// the first entry for a name wins, as with getservbyname.
    pub fn from_text(text: &str) -> Self {
        let mut ports = HashMap::new();
        let mut by_port = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            let (Some(name), Some(port_proto)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some((port, "tcp")) = port_proto.split_once('/') else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            by_port.entry(port).or_insert_with(|| name.to_owned());
            for alias in std::iter::once(name).chain(fields) {
                ports.entry(alias.to_owned()).or_insert(port);
            }
        }
        Self {
            by_name: ports,
            by_port,
        }
    }

    /// The service name of a TCP port, if /etc/services has one.
    pub fn name(&self, port: u16) -> Option<&str> {
        self.by_port.get(&port).map(String::as_str)
    }

    /// Reads /etc/services.
    pub fn system() -> std::io::Result<Self> {
        std::fs::read_to_string("/etc/services").map(|text| Self::from_text(&text))
    }

    fn port(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }
}

/// One socket (or transition) as the filter sees it. `local` and `remote` are in the socket's
/// family: a v4-mapped IPv6 socket must stay `SocketAddr::V6` on both ends (ss counts it as
/// IPv6 for `-4`/`-6`, while IPv4 host filters still match it). `None` owner fields are unknown.
#[derive(Clone, Copy, Debug)]
pub struct FilterInput<'a> {
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub netns: Option<u32>,
    pub pid: Option<u32>,
    pub comm: Option<&'a str>,
    pub uid: Option<u32>,
}

impl FilterInput<'_> {
    fn addr(&self, side: Side) -> SocketAddr {
        match side {
            Side::Local => self.local,
            Side::Remote => self.remote,
        }
    }

    fn owner(&self, field: Owner) -> Option<u32> {
        match field {
            Owner::Pid => self.pid,
            Owner::Uid => self.uid,
            Owner::Netns => self.netns,
        }
    }

    fn family(&self) -> u32 {
        if self.local.is_ipv4() {
            FAMILY_V4
        } else {
            FAMILY_V6
        }
    }
}

/// A parsed filter: `[state NAME | exclude NAME]... [EXPRESSION]`, with iproute2 ss semantics
/// (misc/ss.c, misc/ssfilter.y) except:
/// - `and` binds tighter than `or`, as ss(8) documents. ss's grammar (`exprlist` in
///   ssfilter.y) actually folds `and`/`or` left to right, so ss reads `a or b and c` as
///   `(a or b) and c` (checked with ss 6.1); here it is `a or (b and c)`.
/// - `-l` means LISTEN only (see [`StateSet::default_for`]).
/// - Numbers are decimal (ss uses strtol base 0: `:022` is port 18 there), ports must be
///   0-65535, and `<`/`>`... need a port number rather than `*`.
/// - Host names are not resolved (ss calls gethostbyname2), nor family prefixes (`inet6:`)
///   accepted. Prefixes compare within a family, plus ss's rule that an IPv4 prefix matches a
///   v4-mapped address; ss compares raw bytes across families, so its `src 10.0.0.0/8` also
///   matches the IPv6 address `a00::1`.
/// - Additions: `src`/`dst` take `!=`; `[v6]/len` is accepted next to ss's `[v6/len]`;
///   operators and parentheses need no spaces around them; `pid`, `uid`, `netns` (numbers, any
///   operator) and `comm` (`=`/`!=`; a name cannot hold spaces or any of `=!<>&|()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    states: StateSet,
    /// Whether `state`/`exclude` words chose [`Self::states`] (rather than the default).
    state_words: bool,
    families: u32,
    expr: Option<Expr>,
}

impl Filter {
    /// Parses the words after the command; ss joins them with spaces, so one word may hold a
    /// whole quoted expression. `default_states` applies when no `state`/`exclude` word is given.
    pub fn parse(
        words: &[String],
        services: &Services,
        default_states: StateSet,
    ) -> Result<Self, FilterError> {
        let input = words.join(" ");
        let mut parser = Parser {
            input: &input,
            tokens: lex(&input),
            pos: 0,
            depth: 0,
            services,
        };
        let states = parser.state_words(default_states)?;
        let state_words = parser.pos > 0;
        let expr = parser.expression()?;
        Ok(Self {
            states,
            state_words,
            families: FAMILY_ANY,
            expr,
        })
    }

    /// Applies ss's `-4`/`-6`: each flag adds its family; neither flag keeps both.
    pub fn restrict_families(mut self, v4: bool, v6: bool) -> Self {
        if v4 || v6 {
            self.families = if v4 { FAMILY_V4 } else { 0 } | if v6 { FAMILY_V6 } else { 0 };
        }
        self
    }

    pub fn states(&self) -> StateSet {
        self.states
    }

    /// Whether `state`/`exclude` words left exactly one of ss's states, so that ss drops its
    /// State column (ss.c main: `if (!(states & (states - 1)))`). SYN-RECV counts once, as ss
    /// has one bit for it; the defaults never count (ss's `-l` is LISTEN and CLOSE, two states).
    pub fn one_state_selected(&self) -> bool {
        let mut chosen = TcpState::ALL
            .into_iter()
            .filter(|s| *s != TcpState::NewSynRecv && self.states.contains(*s));
        self.state_words && chosen.next().is_some() && chosen.next().is_none()
    }

    /// Whether a socket in `input.state` passes, as `ss` would list it.
    pub fn matches(&self, input: &FilterInput) -> bool {
        self.states.contains(input.state) && self.matches_socket(input)
    }

    /// Whether a transition from `old` to `input.state` passes: the expression matches and
    /// either state is selected, so `state established` shows both the way in and the way out.
    pub fn matches_transition(&self, old: TcpState, input: &FilterInput) -> bool {
        (self.states.contains(old) || self.states.contains(input.state))
            && self.matches_socket(input)
    }

    /// The part of the filter the eBPF program can apply. It over-approximates: every transition
    /// [`Self::matches_transition`] accepts passes it.
    pub fn kernel_filter(&self) -> KernelFilter {
        let families = self.expr.as_ref().map_or(FAMILY_ANY, |e| e.families(false));
        let (sport_min, sport_max) = self.port_bounds(Side::Local);
        let (dport_min, dport_max) = self.port_bounds(Side::Remote);
        KernelFilter {
            state_mask: self.states.0,
            family_mask: self.families & families,
            netns: self
                .expr
                .as_ref()
                .and_then(|e| e.required_netns(false))
                .unwrap_or(0),
            sport_min,
            sport_max,
            dport_min,
            dport_max,
        }
    }

    /// Whether the expression and the family flags match, whatever the state: for connections
    /// that already closed.
    pub fn matches_socket(&self, input: &FilterInput) -> bool {
        self.families & input.family() != 0 && self.expr.as_ref().is_none_or(|e| e.eval(input))
    }

    /// An empty range (nothing can match) becomes min > max, which no port passes.
    fn port_bounds(&self, side: Side) -> (u16, u16) {
        let range = self
            .expr
            .as_ref()
            .map_or(FULL, |e| e.port_range(side, false));
        range.unwrap_or((u16::MAX, 0))
    }
}

/// A filter that does not parse: `span` is the byte range of the offending part of the words
/// joined with spaces (empty at the end of the input when something is missing).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FilterError {
    pub message: String,
    pub span: Range<usize>,
    input: String,
}

impl FilterError {
    /// `netmon: filter: MESSAGE`, then the filter, then carets under the offending part.
    pub fn render(&self) -> String {
        let shown: String = self
            .input
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let column = self
            .input
            .get(..self.span.start)
            .map_or(0, |s| s.chars().count());
        let width = self
            .input
            .get(self.span.clone())
            .map_or(0, |s| s.chars().count());
        format!(
            "netmon: filter: {}\n  {shown}\n  {}{}",
            self.message,
            " ".repeat(column),
            "^".repeat(width.max(1))
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Local,
    Remote,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Pid,
    Uid,
    Netns,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn holds(self, a: u32, b: u32) -> bool {
        match self {
            Self::Eq => a == b,
            Self::Ne => a != b,
            Self::Lt => a < b,
            Self::Le => a <= b,
            Self::Gt => a > b,
            Self::Ge => a >= b,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prefix {
    V4(Ipv4Addr, u8),
    V6(Ipv6Addr, u8),
}

impl Prefix {
    fn contains(self, ip: IpAddr) -> bool {
        match (self, ip) {
            // ss skips the address test when the prefix length is 0.
            (Self::V4(_, 0) | Self::V6(_, 0), _) => true,
            (Self::V4(net, len), IpAddr::V4(a)) => same_prefix(v4_bits(net), v4_bits(a), len),
            // ss.c inet2_addr_match: "v4 mapped socket matches pure IPv4 rule, but v4-mapped
            // rule selects only v4-mapped sockets".
            (Self::V4(net, len), IpAddr::V6(a)) => a
                .to_ipv4_mapped()
                .is_some_and(|a| same_prefix(v4_bits(net), v4_bits(a), len)),
            (Self::V6(net, len), IpAddr::V6(a)) => same_prefix(net.to_bits(), a.to_bits(), len),
            (Self::V6(..), IpAddr::V4(_)) => false,
        }
    }
}

/// Whether the top `len` bits of `a` and `b` agree.
fn same_prefix(a: u128, b: u128, len: u8) -> bool {
    match 128u32.checked_sub(u32::from(len)) {
        Some(shift) if shift < 128 => (a ^ b) >> shift == 0,
        _ => true,
    }
}

/// An IPv4 address in the top bits, so IPv4 prefixes compare like IPv6 ones.
fn v4_bits(addr: Ipv4Addr) -> u128 {
    u128::from(addr.to_bits()) << 96
}

/// ss's `struct aafilter` for inet hosts: an optional prefix and an optional port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct HostCond {
    prefix: Option<Prefix>,
    port: Option<u16>,
}

impl HostCond {
    /// ss.c run_ssfilter `SSF_SCOND`/`SSF_DCOND`.
    fn matches(&self, addr: SocketAddr) -> bool {
        self.port.is_none_or(|p| p == addr.port())
            && self.prefix.is_none_or(|p| p.contains(addr.ip()))
    }
}

/// `and`/`or` are n-ary so a long chain is wide, not deep: only `(` and `not` nest.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expr {
    All(Vec<Expr>),
    Any(Vec<Expr>),
    Not(Box<Expr>),
    /// ss `SSF_SCOND`/`SSF_DCOND`: `src`/`dst`, and `sport =`/`dport =`.
    Host(Side, HostCond),
    /// ss `SSF_S_GE`/`SSF_D_GE`.
    PortAtLeast(Side, u16),
    /// ss `SSF_S_LE`/`SSF_D_LE`.
    PortAtMost(Side, u16),
    /// `pid`/`uid`/`netns`; `!=` is parsed as `not =`, so an unknown value fails every
    /// comparison and passes its negation.
    Owner(Owner, CmpOp, u32),
    /// `comm = NAME`, NAME cut to the kernel's 15 bytes.
    Comm(Vec<u8>),
}

type PortRange = Option<(u16, u16)>;
const FULL: PortRange = Some((0, u16::MAX));

fn intersect(a: PortRange, b: PortRange) -> PortRange {
    let (a, b) = (a?, b?);
    let (lo, hi) = (a.0.max(b.0), a.1.min(b.1));
    (lo <= hi).then_some((lo, hi))
}

fn hull(a: PortRange, b: PortRange) -> PortRange {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
    }
}

fn not(expr: Expr) -> Expr {
    Expr::Not(Box::new(expr))
}

fn comm_key(name: &str) -> &[u8] {
    let bytes = name.as_bytes();
    bytes.get(..COMM_MAX).unwrap_or(bytes)
}

impl Expr {
    fn eval(&self, input: &FilterInput) -> bool {
        match self {
            Self::All(terms) => terms.iter().all(|e| e.eval(input)),
            Self::Any(terms) => terms.iter().any(|e| e.eval(input)),
            Self::Not(e) => !e.eval(input),
            Self::Host(side, cond) => cond.matches(input.addr(*side)),
            Self::PortAtLeast(side, p) => input.addr(*side).port() >= *p,
            Self::PortAtMost(side, p) => input.addr(*side).port() <= *p,
            Self::Owner(field, op, value) => {
                input.owner(*field).is_some_and(|v| op.holds(v, *value))
            }
            Self::Comm(name) => input.comm.is_some_and(|c| comm_key(c) == name.as_slice()),
        }
    }

    /// Ports on `side` this expression (or its negation) can match, as one range containing them
    /// all. Under negation De Morgan swaps `and` and `or`.
    fn port_range(&self, side: Side, negated: bool) -> PortRange {
        let fold = |terms: &[Expr], meet: bool| {
            let each = terms.iter().map(|e| e.port_range(side, negated));
            if meet {
                each.reduce(intersect)
            } else {
                each.reduce(hull)
            }
            .unwrap_or(FULL)
        };
        match self {
            Self::All(terms) => fold(terms, !negated),
            Self::Any(terms) => fold(terms, negated),
            Self::Not(e) => e.port_range(side, !negated),
            Self::Host(s, HostCond { port: Some(p), .. }) if *s == side && !negated => {
                Some((*p, *p))
            }
            Self::PortAtLeast(s, p) if *s == side && negated => p.checked_sub(1).map(|q| (0, q)),
            Self::PortAtLeast(s, p) if *s == side => Some((*p, u16::MAX)),
            Self::PortAtMost(s, p) if *s == side && negated => {
                p.checked_add(1).map(|q| (q, u16::MAX))
            }
            Self::PortAtMost(s, p) if *s == side => Some((0, *p)),
            _ => FULL,
        }
    }

    /// The namespace every match (of the expression or its negation) must be in, if there is one.
    fn required_netns(&self, negated: bool) -> Option<u32> {
        let all = |terms: &[Expr]| terms.iter().find_map(|e| e.required_netns(negated));
        let any = |terms: &[Expr]| {
            let mut each = terms.iter().map(|e| e.required_netns(negated));
            let first = each.next()??;
            each.all(|n| n == Some(first)).then_some(first)
        };
        match self {
            Self::All(terms) if negated => any(terms),
            Self::All(terms) => all(terms),
            Self::Any(terms) if negated => all(terms),
            Self::Any(terms) => any(terms),
            Self::Not(e) => e.required_netns(!negated),
            Self::Owner(Owner::Netns, CmpOp::Eq, n) if !negated => Some(*n),
            _ => None,
        }
    }

    /// Socket families this expression (or its negation) can match. Only an IPv6 prefix
    /// narrows it: an IPv4 prefix also matches v4-mapped addresses, which are AF_INET6 sockets.
    fn families(&self, negated: bool) -> u32 {
        let fold = |terms: &[Expr], meet: bool| {
            let each = terms.iter().map(|e| e.families(negated));
            if meet {
                each.fold(FAMILY_ANY, |a, b| a & b)
            } else {
                each.fold(0, |a, b| a | b)
            }
        };
        match self {
            Self::All(terms) => fold(terms, !negated),
            Self::Any(terms) => fold(terms, negated),
            Self::Not(e) => e.families(!negated),
            Self::Host(
                _,
                HostCond {
                    prefix: Some(Prefix::V6(_, len)),
                    ..
                },
            ) if *len > 0 && !negated => FAMILY_V6,
            _ => FAMILY_ANY,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok<'a> {
    Open,
    Close,
    Not,
    And,
    Or,
    Cmp(CmpOp),
    Word(&'a str),
}

#[derive(Clone, Debug)]
struct Token<'a> {
    tok: Tok<'a>,
    span: Range<usize>,
}

/// Operator spellings, longest first. ss only knows them as whole words; here they also end a
/// word, so `dport=:22` and `(sport = :ssh)` work too.
const PUNCT: [(&str, Tok<'static>); 14] = [
    ("==", Tok::Cmp(CmpOp::Eq)),
    ("!=", Tok::Cmp(CmpOp::Ne)),
    ("<=", Tok::Cmp(CmpOp::Le)),
    (">=", Tok::Cmp(CmpOp::Ge)),
    ("&&", Tok::And),
    ("||", Tok::Or),
    ("=", Tok::Cmp(CmpOp::Eq)),
    ("!", Tok::Not),
    ("<", Tok::Cmp(CmpOp::Lt)),
    (">", Tok::Cmp(CmpOp::Gt)),
    ("&", Tok::And),
    ("|", Tok::Or),
    ("(", Tok::Open),
    (")", Tok::Close),
];

fn lex(input: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut pos = 0;
    while let Some(rest) = input.get(pos..) {
        let Some(c) = rest.chars().next() else { break };
        if c.is_whitespace() {
            pos += c.len_utf8();
        } else if let Some((text, tok)) = PUNCT.iter().find(|(p, _)| rest.starts_with(p)) {
            tokens.push(Token {
                tok: *tok,
                span: pos..pos + text.len(),
            });
            pos += text.len();
        } else {
            // Never 0: `c` is neither whitespace nor the start of an operator.
            let len = rest
                .find(|c: char| c.is_whitespace() || "=!<>&|()".contains(c))
                .unwrap_or(rest.len());
            let word = rest.get(..len).unwrap_or(rest);
            tokens.push(Token {
                tok: word_token(word),
                span: pos..pos + len,
            });
            pos += len;
        }
    }
    tokens
}

/// ssfilter.y `yylex`: the word spellings of operators (case-sensitive, as there).
fn word_token(word: &str) -> Tok<'_> {
    match word {
        "and" => Tok::And,
        "or" => Tok::Or,
        "not" => Tok::Not,
        "eq" => Tok::Cmp(CmpOp::Eq),
        "ne" | "neq" => Tok::Cmp(CmpOp::Ne),
        "lt" => Tok::Cmp(CmpOp::Lt),
        "le" | "leq" => Tok::Cmp(CmpOp::Le),
        "gt" => Tok::Cmp(CmpOp::Gt),
        "ge" | "geq" => Tok::Cmp(CmpOp::Ge),
        _ => Tok::Word(word),
    }
}

/// Recursive descent over `or_expr := and_expr (or and_expr)*`,
/// `and_expr := unary ([and] unary)*`, `unary := not unary | ( or_expr ) | predicate`.
struct Parser<'a> {
    input: &'a str,
    tokens: Vec<Token<'a>>,
    pos: usize,
    depth: usize,
    services: &'a Services,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<Tok<'a>> {
        self.tokens.get(self.pos).map(|t| t.tok)
    }

    fn text(&self, span: Range<usize>) -> &'a str {
        self.input.get(span).unwrap_or_default()
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> FilterError {
        FilterError {
            message: message.into(),
            span,
            input: self.input.to_owned(),
        }
    }

    /// "expected WHAT, found `TOKEN`" at the next token, or "expected WHAT" at the end.
    fn expected(&self, what: &str) -> FilterError {
        match self.tokens.get(self.pos) {
            Some(t) => self.error(
                t.span.clone(),
                format!("expected {what}, found `{}`", self.text(t.span.clone())),
            ),
            None => {
                let end = self.input.len();
                self.error(end..end, format!("expected {what}"))
            }
        }
    }

    /// The next word, or an error naming what was expected after the text from `from` on.
    fn value(&mut self, from: usize, what: &str) -> Result<(&'a str, Range<usize>), FilterError> {
        if let Some(Token {
            tok: Tok::Word(word),
            span,
        }) = self.tokens.get(self.pos).cloned()
        {
            self.pos += 1;
            return Ok((word, span));
        }
        let end = self
            .pos
            .checked_sub(1)
            .and_then(|i| self.tokens.get(i))
            .map_or(from, |t| t.span.end);
        Err(self.expected(&format!("{what} after `{}`", self.text(from..end))))
    }

    /// ss.c main(): leading `state`/`exclude`/`excl` words. The first `state` starts from no
    /// states and the first `exclude` from all of them, whatever the default was.
    fn state_words(&mut self, default: StateSet) -> Result<StateSet, FilterError> {
        let mut states = None;
        while let Some(Token {
            tok: Tok::Word(key @ ("state" | "exclude" | "excl")),
            span,
        }) = self.tokens.get(self.pos).cloned()
        {
            self.pos += 1;
            let (name, name_span) = self.value(span.start, "a state name")?;
            let set = StateSet::by_name(name).ok_or_else(|| {
                self.error(
                    name_span,
                    format!(
                        "unknown state `{name}`: expected established, syn-sent, syn-recv, \
                         fin-wait-1, fin-wait-2, time-wait, closed, close-wait, last-ack, \
                         listening, closing, bound-inactive, all, connected, synchronized, \
                         bucket or big"
                    ),
                )
            })?;
            let including = key == "state";
            let base = states.unwrap_or(if including {
                StateSet::NONE
            } else {
                StateSet::ALL
            });
            states = Some(StateSet(if including {
                base.0 | set.0
            } else {
                base.0 & !set.0
            }));
        }
        Ok(states.unwrap_or(default))
    }

    fn expression(&mut self) -> Result<Option<Expr>, FilterError> {
        if self.peek().is_none() {
            return Ok(None);
        }
        let expr = self.or_expr()?;
        match self.tokens.get(self.pos) {
            None => Ok(Some(expr)),
            Some(t) if t.tok == Tok::Close => Err(self.error(t.span.clone(), "unmatched `)`")),
            Some(t) => Err(self.error(
                t.span.clone(),
                format!(
                    "unexpected `{}`: expected `and`, `or` or the end of the filter",
                    self.text(t.span.clone())
                ),
            )),
        }
    }

    fn or_expr(&mut self) -> Result<Expr, FilterError> {
        let mut terms = vec![self.and_expr()?];
        while self.peek() == Some(Tok::Or) {
            self.pos += 1;
            terms.push(self.and_expr()?);
        }
        Ok(collapse(terms, Expr::Any))
    }

    fn and_expr(&mut self) -> Result<Expr, FilterError> {
        let mut terms = vec![self.unary()?];
        loop {
            match self.peek() {
                Some(Tok::And) => self.pos += 1,
                // ssfilter.y `exprlist expr`: juxtaposition means `and`.
                Some(Tok::Not | Tok::Open | Tok::Word(_)) => {}
                _ => break,
            }
            terms.push(self.unary()?);
        }
        Ok(collapse(terms, Expr::All))
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        let Some(Token { tok, span }) = self.tokens.get(self.pos).cloned() else {
            return Err(self.expected_expression());
        };
        match tok {
            Tok::Not => {
                self.pos += 1;
                self.nested(span, Self::unary).map(not)
            }
            Tok::Open => {
                self.pos += 1;
                let expr = self.nested(span.clone(), Self::or_expr)?;
                match self.peek() {
                    Some(Tok::Close) => {
                        self.pos += 1;
                        Ok(expr)
                    }
                    None => Err(self.error(span, "this `(` is never closed")),
                    Some(_) => Err(self.expected("`)`")),
                }
            }
            Tok::Word(word) => {
                self.pos += 1;
                self.predicate(word, span)
            }
            _ => Err(self.expected_expression()),
        }
    }

    fn expected_expression(&self) -> FilterError {
        match self.pos.checked_sub(1).and_then(|i| self.tokens.get(i)) {
            Some(prev) => self.expected(&format!(
                "an expression after `{}`",
                self.text(prev.span.clone())
            )),
            None => self.expected("an expression"),
        }
    }

    fn nested(
        &mut self,
        span: Range<usize>,
        parse: fn(&mut Self) -> Result<Expr, FilterError>,
    ) -> Result<Expr, FilterError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(
                span,
                format!("the filter nests `(` and `not` more than {MAX_DEPTH} deep"),
            ));
        }
        self.depth += 1;
        let expr = parse(self);
        self.depth -= 1;
        expr
    }

    fn predicate(&mut self, key: &'a str, span: Range<usize>) -> Result<Expr, FilterError> {
        match key {
            "src" => self.host(Side::Local, span),
            "dst" => self.host(Side::Remote, span),
            "sport" => self.port(Side::Local, span),
            "dport" => self.port(Side::Remote, span),
            "pid" => self.owner(Owner::Pid, span),
            "uid" => self.owner(Owner::Uid, span),
            "netns" => self.owner(Owner::Netns, span),
            "comm" => self.comm(span),
            "state" | "exclude" | "excl" => Err(self.error(
                span,
                format!(
                    "`{key}` must come before the expression, as in `state established dport = :22`"
                ),
            )),
            "dev" | "fwmark" | "cgroup" | "autobound" => Err(self.error(
                span,
                format!("ss's `{key}` filter is not supported by netmon"),
            )),
            _ => Err(self.error(
                span,
                format!(
                    "unknown filter `{key}`: expected src, dst, sport, dport, pid, uid, comm, \
                     netns, `(` or `not`"
                ),
            )),
        }
    }

    /// An optional comparison operator; none means `=` (ssfilter.y `eq: '=' | nothing`).
    fn operator(&mut self) -> (CmpOp, Range<usize>) {
        match self.tokens.get(self.pos).cloned() {
            Some(Token {
                tok: Tok::Cmp(op),
                span,
            }) => {
                self.pos += 1;
                (op, span)
            }
            _ => (CmpOp::Eq, 0..0),
        }
    }

    fn equality(&mut self, key: Range<usize>, values: &str) -> Result<bool, FilterError> {
        match self.operator() {
            (CmpOp::Eq, _) => Ok(true),
            (CmpOp::Ne, _) => Ok(false),
            (_, op) => Err(self.error(
                op.clone(),
                format!(
                    "`{}` cannot order {values}: `{}` takes `=` or `!=`",
                    self.text(op),
                    self.text(key)
                ),
            )),
        }
    }

    fn host(&mut self, side: Side, key: Range<usize>) -> Result<Expr, FilterError> {
        let equal = self.equality(key.clone(), "addresses")?;
        let (text, span) = self.value(
            key.start,
            "an address such as `10.0.0.0/8`, `[::1]:22` or `*:80`",
        )?;
        let cond = parse_host(text, self.services).map_err(|m| self.error(span, m))?;
        let expr = Expr::Host(side, cond);
        Ok(if equal { expr } else { not(expr) })
    }

    fn port(&mut self, side: Side, key: Range<usize>) -> Result<Expr, FilterError> {
        let (op, op_span) = self.operator();
        let (text, span) = self.value(key.start, "a port such as `:22` or `:ssh`")?;
        // ss.c parse_hostcond(is_port): the whole word is the port, after an optional `:`.
        let port = parse_port(text.strip_prefix(':').unwrap_or(text), self.services)
            .map_err(|m| self.error(span.clone(), m))?;
        let host = Expr::Host(side, HostCond { prefix: None, port });
        // ssfilter.y: `!=` is `not =`, `>` is `not <=`, `<` is `not >=`.
        match (op, port) {
            (CmpOp::Eq, _) => Ok(host),
            (CmpOp::Ne, _) => Ok(not(host)),
            (CmpOp::Ge, Some(p)) => Ok(Expr::PortAtLeast(side, p)),
            (CmpOp::Le, Some(p)) => Ok(Expr::PortAtMost(side, p)),
            (CmpOp::Gt, Some(p)) => Ok(not(Expr::PortAtMost(side, p))),
            (CmpOp::Lt, Some(p)) => Ok(not(Expr::PortAtLeast(side, p))),
            (_, None) => Err(self.error(
                span,
                format!(
                    "`{}` needs a port number, not the wildcard `{text}`",
                    self.text(op_span)
                ),
            )),
        }
    }

    fn owner(&mut self, field: Owner, key: Range<usize>) -> Result<Expr, FilterError> {
        let (op, _) = self.operator();
        let (text, span) = self.value(key.start, "a number")?;
        let value = parse_decimal(text).ok_or_else(|| {
            self.error(
                span,
                format!(
                    "`{text}` is not a number: `{}` takes a decimal number",
                    self.text(key)
                ),
            )
        })?;
        Ok(match op {
            CmpOp::Ne => not(Expr::Owner(field, CmpOp::Eq, value)),
            op => Expr::Owner(field, op, value),
        })
    }

    fn comm(&mut self, key: Range<usize>) -> Result<Expr, FilterError> {
        let equal = self.equality(key.clone(), "names")?;
        let (text, _) = self.value(key.start, "a process name")?;
        let expr = Expr::Comm(comm_key(text).to_vec());
        Ok(if equal { expr } else { not(expr) })
    }
}

fn collapse(mut terms: Vec<Expr>, join: fn(Vec<Expr>) -> Expr) -> Expr {
    match (terms.pop(), terms.is_empty()) {
        (Some(only), true) => only,
        (last, _) => {
            terms.extend(last);
            join(terms)
        }
    }
}

fn parse_decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A port, or `None` for any port (`*` or nothing, as ss treats `:*` and a bare `:`).
fn parse_port(text: &str, services: &Services) -> Result<Option<u16>, String> {
    match text {
        "" | "*" => Ok(None),
        t if t.bytes().all(|b| b.is_ascii_digit()) => parse_decimal(t)
            .map(Some)
            .ok_or_else(|| format!("port `{t}` is out of range: ports are 0 to 65535")),
        t => services.port(t).map(Some).ok_or_else(|| {
            format!("`{t}` is neither a port number nor a tcp service name from /etc/services")
        }),
    }
}

/// ss.c parse_hostcond for inet: `*`, `*:PORT`, `:PORT`, `ADDR[/LEN][:PORT]`,
/// `[V6ADDR[/LEN]][:PORT]`, and `[V6ADDR]/LEN[:PORT]`.
fn parse_host(text: &str, services: &Services) -> Result<HostCond, String> {
    let port = |p: Option<&str>| p.map_or(Ok(None), |p| parse_port(p, services));
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{text}` has no closing `]`"))?;
        let (len, port_text) = match after.split_once(':') {
            Some((len, p)) => (len, Some(p)),
            None => (after, None),
        };
        if !len.is_empty() && !len.starts_with('/') {
            return Err(format!("expected `/LEN` or `:PORT` after `]` in `{text}`"));
        }
        let prefix = parse_prefix(&format!("{inside}{len}"))?;
        return Ok(HostCond {
            prefix: Some(prefix),
            port: port(port_text)?,
        });
    }
    if let Some(family) = ["inet:", "inet6:", "unix:", "link:", "netlink:", "vsock:"]
        .iter()
        .find(|f| text.starts_with(*f))
    {
        return Err(format!(
            "family prefixes like `{family}` are not supported; use -4 or -6"
        ));
    }
    if text.matches(':').count() > 1 {
        return Err(format!(
            "IPv6 addresses need brackets, as in `[{text}]` or `[::1]:22`"
        ));
    }
    let (addr, port_text) = match text.split_once(':') {
        Some((addr, p)) => (addr, Some(p)),
        None => (text, None),
    };
    let prefix = match addr {
        "" | "*" => None,
        addr => Some(parse_prefix(addr)?),
    };
    Ok(HostCond {
        prefix,
        port: port(port_text)?,
    })
}

fn parse_prefix(text: &str) -> Result<Prefix, String> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    if let Some(v4) = parse_ipv4(addr) {
        Ok(Prefix::V4(v4, prefix_len(len, 32)?))
    } else if let Ok(v6) = addr.parse::<Ipv6Addr>() {
        Ok(Prefix::V6(v6, prefix_len(len, 128)?))
    } else {
        Err(format!(
            "`{addr}` is not a numeric IP address (host names are not resolved)"
        ))
    }
}

fn prefix_len(len: Option<&str>, max: u8) -> Result<u8, String> {
    match len {
        None => Ok(max),
        Some(text) => parse_decimal(text)
            .filter(|len| *len <= max)
            .ok_or_else(|| format!("prefix length `/{text}` must be 0 to {max}")),
    }
}

/// iproute2 get_addr_ipv4: one to four dotted octets, missing ones zero (`10/8`, `193.233.7/24`).
fn parse_ipv4(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for (octet, part) in octets.iter_mut().zip(parts.by_ref()) {
        *octet = parse_decimal(part)?;
    }
    match parts.next() {
        Some(_) => None,
        None => Some(Ipv4Addr::from(octets)),
    }
}

/// What the eBPF program does with a [`KernelFilter`]; the fuzz check holds
/// [`Filter::kernel_filter`] to it.
fn kernel_passes(k: &KernelFilter, old: TcpState, input: &FilterInput) -> bool {
    let in_mask = |s: TcpState| {
        1u32.checked_shl(u32::from(s.to_kernel()))
            .is_some_and(|b| k.state_mask & b != 0)
    };
    let (sport, dport) = (input.local.port(), input.remote.port());
    (in_mask(old) || in_mask(input.state))
        && k.family_mask & input.family() != 0
        && (k.netns == 0 || input.netns == Some(k.netns))
        && (k.sport_min..=k.sport_max).contains(&sport)
        && (k.dport_min..=k.dport_max).contains(&dport)
}

/// The services table the fuzz run and the tests use.
const FUZZ_SERVICES: &str = "ssh 22/tcp\nhttp 80/tcp www # WorldWideWeb\nhttps 443/tcp\n\
                             https 443/udp\ndomain 53/udp\ndomain 53/tcp\nsyslog 514/udp\n";

/// The grammar's words, some of them broken, for the fuzz soups.
#[rustfmt::skip]
const FUZZ_WORDS: &[&str] = &[
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
const FUZZ_PREDICATES: &[&str] = &[
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
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
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
    fn input(&mut self) -> FilterInput<'static> {
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
        let f = parse_with("exclude listening excl time-wait", listening)
            .unwrap_or_else(|e| panic!("{e}"));
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
                "unknown filter `bogus`: expected src, dst, sport, dport, pid, uid, comm, netns, `(` or `not`",
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
