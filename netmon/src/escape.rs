//! Text that other users choose (process names) made safe to print on a terminal.
//!
//! A comm is any 15 bytes a process sets with `prctl(PR_SET_NAME)`: printed raw, an escape
//! sequence can hide or recolour an operator's screen and a newline can forge a whole line.
//! Like `ps`/`top` (which print `?`), but reversibly, every character a terminal acts on
//! becomes `\xHH` (one per byte of its UTF-8), and the escape character itself `\\`.

use std::borrow::Cow;

/// True for characters a terminal interprets or that reorder/hide text: C0 controls, DEL, C1
/// controls (U+0080-U+009F, e.g. the 8-bit CSI U+009B), and Unicode's zero-width and
/// bidirectional format characters.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Appends `s` to `out`, escaped; `quote` (say `"`) is escaped too when given, for a field
/// printed between quotes.
pub fn push_escaped(out: &mut Vec<u8>, s: &str, quote: Option<u8>) {
    // Almost every name is plain ASCII: copy it as it is.
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'\\' && Some(b) != quote)
    {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for c in s.chars() {
        if c == '\\' || (c.is_ascii() && Some(c as u8) == quote) {
            out.push(b'\\');
            out.push(c as u8);
        } else if needs_escape(c) {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
            }
        } else {
            let mut utf8 = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    }
}

/// `s` escaped as [`push_escaped`] does, borrowed when nothing needed escaping.
pub fn escaped(s: &str, quote: Option<u8>) -> Cow<'_, str> {
    let mut out = Vec::new();
    push_escaped(&mut out, s, quote);
    if out == s.as_bytes() {
        return Cow::Borrowed(s);
    }
    // Only whole characters or ASCII escapes were pushed.
    Cow::Owned(String::from_utf8(out).expect("escaped text is UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_unchanged() {
        for name in ["curl", "python3", "kworker/0:1", "a b", "Ωmega", "ss-local"] {
            assert!(matches!(escaped(name, None), Cow::Borrowed(n) if n == name));
        }
    }

    #[test]
    fn controls_and_escape_sequences_are_escaped() {
        assert_eq!(escaped("\x1b[8mEVIL\nFAKE", None), "\\x1b[8mEVIL\\x0aFAKE");
        assert_eq!(escaped("a\tb\rc\x7f", None), "a\\x09b\\x0dc\\x7f");
        // The 8-bit CSI and a right-to-left override are escaped byte by byte.
        assert_eq!(escaped("x\u{9b}31m", None), "x\\xc2\\x9b31m");
        assert_eq!(escaped("gpj.\u{202e}exe", None), "gpj.\\xe2\\x80\\xaeexe");
        // The escape character itself, so that an escaped name cannot be forged.
        assert_eq!(escaped("a\\x1b", None), "a\\\\x1b");
    }

    #[test]
    fn the_quote_of_a_quoted_field_is_escaped() {
        assert_eq!(
            escaped("a\",pid=1))", Some(b'"')),
            "a\\\",pid=1))",
            "no forged pid in ss's users:((...)) column"
        );
        assert_eq!(escaped("a\"b", None), "a\"b");
    }

    #[test]
    fn output_is_printable_for_every_byte() {
        // Every single byte and every pair: no control character survives.
        for a in 0..=255u8 {
            for b in [b'a', 0x1b, 0x9b, 0xc2, a] {
                let raw = [a, b];
                let s = String::from_utf8_lossy(&raw);
                let e = escaped(&s, Some(b'"'));
                assert!(!e.chars().any(needs_escape), "{raw:?} -> {e:?}");
            }
        }
    }
}
