//! Words to tokens: operators (also glued to words, as in `dport=:22`) and ss's word spellings.

use std::ops::Range;

use super::expr::CmpOp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tok<'a> {
    Open,
    Close,
    Not,
    And,
    Or,
    Cmp(CmpOp),
    Word(&'a str),
}

#[derive(Clone, Debug)]
pub(super) struct Token<'a> {
    pub(super) tok: Tok<'a>,
    pub(super) span: Range<usize>,
}

/// Operator spellings, longest first. ss only knows them as whole words; here they also end a
/// word, so `dport=:22` and `(sport = :ssh)` work too.
pub(super) const PUNCT: [(&str, Tok<'static>); 14] = [
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

pub(super) fn lex(input: &str) -> Vec<Token<'_>> {
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
pub(super) fn word_token(word: &str) -> Tok<'_> {
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
