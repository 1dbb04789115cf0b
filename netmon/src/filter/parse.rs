//! Recursive descent from tokens to an expression, with errors that point at the offending part.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use super::expr::{CmpOp, Expr, HostCond, Owner, Prefix, Side, comm_key, not};
use super::lex::{Tok, Token};
use super::{FilterError, MAX_DEPTH, Services, StateSet};

/// Recursive descent over `or_expr := and_expr (or and_expr)*`,
/// `and_expr := unary ([and] unary)*`, `unary := not unary | ( or_expr ) | predicate`.
pub(super) struct Parser<'a> {
    pub(super) input: &'a str,
    pub(super) tokens: Vec<Token<'a>>,
    pub(super) pos: usize,
    pub(super) depth: usize,
    pub(super) services: &'a Services,
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
    pub(super) fn state_words(&mut self, default: StateSet) -> Result<StateSet, FilterError> {
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

    pub(super) fn expression(&mut self) -> Result<Option<Expr>, FilterError> {
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
            "cgroup" => self.cgroup(span),
            "unit" => self.label(span, "a systemd unit such as `nginx.service`", Expr::Unit),
            "container" => self.container(span),
            "pod" => self.label(span, "a pod UID", Expr::Pod),
            "state" | "exclude" | "excl" => Err(self.error(
                span,
                format!(
                    "`{key}` must come before the expression, as in `state established dport = :22`"
                ),
            )),
            "dev" | "fwmark" | "autobound" => Err(self.error(
                span,
                format!("ss's `{key}` filter is not supported by netmon"),
            )),
            _ => Err(self.error(
                span,
                format!(
                    "unknown filter `{key}`: expected src, dst, sport, dport, pid, uid, comm, \
                     netns, cgroup, unit, container, pod, `(` or `not`"
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

    fn cgroup(&mut self, key: Range<usize>) -> Result<Expr, FilterError> {
        let equal = self.equality(key.clone(), "cgroups")?;
        let (text, span) = self.value(key.start, "a cgroup path such as `/system.slice`")?;
        if !text.starts_with('/') {
            return Err(self.error(
                span,
                format!(
                    "`{text}` is not a cgroup path: give it from the cgroup2 mount's root, \
                     as `ss --cgroup` prints it (`/system.slice/x.service`)"
                ),
            ));
        }
        let path = match text.trim_end_matches('/') {
            "" => "/",
            p => p,
        };
        let expr = Expr::Cgroup(path.to_owned());
        Ok(if equal { expr } else { not(expr) })
    }

    fn label(
        &mut self,
        key: Range<usize>,
        what: &str,
        make: fn(String) -> Expr,
    ) -> Result<Expr, FilterError> {
        let equal = self.equality(key.clone(), "names")?;
        let (text, _) = self.value(key.start, what)?;
        let expr = make(text.to_owned());
        Ok(if equal { expr } else { not(expr) })
    }

    fn container(&mut self, key: Range<usize>) -> Result<Expr, FilterError> {
        let equal = self.equality(key.clone(), "container ids")?;
        let (text, span) = self.value(key.start, "a container id or a prefix of one")?;
        if text.len() > 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.error(
                span,
                format!("`{text}` is not a container id: ids are up to 64 hex digits"),
            ));
        }
        let expr = Expr::Container(text.to_ascii_lowercase());
        Ok(if equal { expr } else { not(expr) })
    }

    fn comm(&mut self, key: Range<usize>) -> Result<Expr, FilterError> {
        let equal = self.equality(key.clone(), "names")?;
        let (text, _) = self.value(key.start, "a process name")?;
        let expr = Expr::Comm(comm_key(text).to_vec());
        Ok(if equal { expr } else { not(expr) })
    }
}

pub(super) fn collapse(mut terms: Vec<Expr>, join: fn(Vec<Expr>) -> Expr) -> Expr {
    match (terms.pop(), terms.is_empty()) {
        (Some(only), true) => only,
        (last, _) => {
            terms.extend(last);
            join(terms)
        }
    }
}

pub(super) fn parse_decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A port, or `None` for any port (`*` or nothing, as ss treats `:*` and a bare `:`).
pub(super) fn parse_port(text: &str, services: &Services) -> Result<Option<u16>, String> {
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
pub(super) fn parse_host(text: &str, services: &Services) -> Result<HostCond, String> {
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

pub(super) fn parse_prefix(text: &str) -> Result<Prefix, String> {
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

pub(super) fn prefix_len(len: Option<&str>, max: u8) -> Result<u8, String> {
    match len {
        None => Ok(max),
        Some(text) => parse_decimal(text)
            .filter(|len| *len <= max)
            .ok_or_else(|| format!("prefix length `/{text}` must be 0 to {max}")),
    }
}

/// iproute2 get_addr_ipv4: one to four dotted octets, missing ones zero (`10/8`, `193.233.7/24`).
pub(super) fn parse_ipv4(text: &str) -> Option<Ipv4Addr> {
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
