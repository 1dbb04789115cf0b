//! The ss filter language: the parsed [`Filter`], what it matches, and its errors.
//!
//! `lex` and `parse` turn words into an [`expr::Expr`]; `states` and `services` hold ss's state
//! words and port names; `kernel` projects a filter onto what the eBPF program can apply.

mod expr;
#[cfg(test)]
mod fuzz;
mod kernel;
mod lex;
mod parse;
mod services;
mod states;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::ops::Range;

use netmon_common::TcpState;

use crate::cgroup::Labels;

use expr::{Expr, Owner, Side};
use parse::Parser;
pub use services::Services;
pub use states::StateSet;

/// Deepest nesting of `(` and `not`: bounds the recursion of the parser and of every walk over
/// the expression, so no input can overflow the stack.
pub(super) const MAX_DEPTH: usize = 256;
/// `TASK_COMM_LEN - 1`: the kernel keeps at most 15 bytes of a task name.
pub(super) const COMM_MAX: usize = 15;
/// [`KernelFilter::family_mask`] bits.
pub(super) const FAMILY_V4: u32 = 1;
pub(super) const FAMILY_V6: u32 = 2;
pub(super) const FAMILY_ANY: u32 = FAMILY_V4 | FAMILY_V6;

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
    /// The socket's cgroup, when known.
    pub cgroup: Option<&'a Labels>,
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
///   operator) and `comm` (`=`/`!=`; a name cannot hold spaces or any of `=!<>&|()`);
///   `unit`, `container` (a container id or its prefix) and `pod` (`=`/`!=`), from the
///   socket's cgroup path. ss's `cgroup PATH` is supported, with `=`/`!=`: it selects the one
///   cgroup, not its children, as ss does.
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
            tokens: lex::lex(&input),
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

    /// Whether the expression looks at the cgroup (`cgroup`, `unit`, `container`, `pod`):
    /// only then must callers resolve [`FilterInput::cgroup`].
    pub fn uses_cgroup(&self) -> bool {
        self.expr.as_ref().is_some_and(Expr::uses_cgroup)
    }

    /// Whether the expression looks at the owning process (`pid`, `comm`): only then do rows
    /// need owners from the agent's table.
    pub fn uses_owner(&self) -> bool {
        self.expr.as_ref().is_some_and(Expr::uses_owner)
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

    /// Whether the expression and the family flags match, whatever the state: for connections
    /// that already closed.
    pub fn matches_socket(&self, input: &FilterInput) -> bool {
        self.families & input.family() != 0 && self.expr.as_ref().is_none_or(|e| e.eval(input))
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
