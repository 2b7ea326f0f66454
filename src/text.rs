//! Text that came from a peer or a file (certificate names, tensor names, abort
//! reasons), made safe to print: control characters and ANSI escape sequences never
//! reach a terminal or a log line as themselves.
//!
//! A leaf module: the CLI, file mode and rounds all print words they did not write.

use std::borrow::Cow;
use std::fmt::Write;

/// The longest text [`sanitize`] keeps, in characters; the rest is cut with `…`.
pub const MAX_CHARS: usize = 1024;

/// `s` with every control character (C0, DEL, C1, which includes the ANSI escape
/// `\x1b`), every bidirectional override and every line or paragraph separator written
/// as a visible `\u{..}` escape (`\n`, `\r` and `\t` as `\n`, `\r`, `\t`), and cut
/// to [`MAX_CHARS`] characters. A backslash is doubled, so an escape in the output is
/// never ambiguous. Borrowed when nothing needed changing.
pub fn sanitize(s: &str) -> Cow<'_, str> {
    if s.chars().count() <= MAX_CHARS && !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().min(4 * MAX_CHARS) + 8);
    for (i, c) in s.chars().enumerate() {
        if i == MAX_CHARS {
            out.push('…');
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`sanitize`] of bytes that may not be UTF-8 (invalid sequences become U+FFFD).
pub fn sanitize_bytes(b: &[u8]) -> String {
    sanitize(&String::from_utf8_lossy(b)).into_owned()
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(
            sanitize("hospital-a"),
            Cow::Borrowed("hospital-a")
        ));
        assert_eq!(sanitize("Zürich node 1"), "Zürich node 1");
    }

    #[test]
    fn ansi_escapes_and_controls_are_made_visible() {
        assert_eq!(sanitize("\x1b[31mred\x1b[0m"), "\\u{1b}[31mred\\u{1b}[0m");
        assert_eq!(sanitize("a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(
            sanitize("bell\x07 del\x7f nul\0"),
            "bell\\u{7} del\\u{7f} nul\\u{0}"
        );
        // C1 control CSI (U+009B) starts an escape sequence on some terminals.
        assert_eq!(sanitize("\u{9b}31m"), "\\u{9b}31m");
        // OSC 8 hyperlinks and title changes.
        assert_eq!(sanitize("\x1b]0;owned\x07"), "\\u{1b}]0;owned\\u{7}");
        // Bidi overrides that reorder what is displayed.
        assert_eq!(sanitize("abc\u{202e}fed"), "abc\\u{202e}fed");
    }

    #[test]
    fn escapes_are_unambiguous_and_output_has_no_controls() {
        // A literal backslash-u in the input cannot pass for an escape.
        assert_eq!(sanitize("\\u{1b}"), "\\\\u{1b}");
        let nasty: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let out = sanitize(&nasty);
        assert!(!out.chars().any(|c| c.is_control()), "{out:?}");
    }

    #[test]
    fn long_text_is_cut() {
        let long = "x".repeat(MAX_CHARS + 10);
        let out = sanitize(&long);
        assert_eq!(out.chars().count(), MAX_CHARS + 1);
        assert!(out.ends_with('…'));
        assert_eq!(sanitize_bytes(b"ok\xff\x1b"), "ok\u{fffd}\\u{1b}");
    }
}
