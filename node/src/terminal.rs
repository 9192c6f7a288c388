//! What the CLI prints to a terminal: text from other users made harmless, and whether to use
//! colour.
//!
//! Message text, names and error sentences can come from other users. Printed raw, an escape
//! sequence could recolour or clear the terminal, a newline could forge a line that looks like
//! another user's message, and a bidi override could reorder what is shown. Human output goes
//! through [`escape`]; `--json` output stays exact (JSON escapes control characters itself).

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::Write as _;

/// Whether `c` must not reach a terminal as is: C0 controls, DEL, C1 controls, the bidi
/// embedding/override and isolate characters, and the Unicode line and paragraph separators.
fn is_unsafe(c: char) -> bool {
    c.is_control() // C0, DEL and C1
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// `text` with every unsafe character written as an escape: `\n`, `\r` and `\t` as such, the
/// others as `\u{..}` (hex). Text without one is returned as is, without copying.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether to colour output: only on a terminal, and never when `NO_COLOR` is set to a
/// non-empty value (<https://no-color.org>).
pub fn color_enabled(no_color: Option<&OsStr>, is_terminal: bool) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// [`color_enabled`] for standard error, from the environment.
pub fn stderr_color() -> bool {
    use std::io::IsTerminal as _;
    color_enabled(
        std::env::var_os("NO_COLOR").as_deref(),
        std::io::stderr().is_terminal(),
    )
}

/// Writes `args` and a newline to standard output, for a command's output. When the reader
/// has gone (`natter inbox | head`), it has what it wanted: the program ends quietly with
/// status 0, where `println!` would panic. Any other write error ends it with status 1.
/// Long-running programs do not use it (a daemon's progress lines ignore a closed stdout).
pub fn print_line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}

/// `println!` for command output, through [`print_line`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::terminal::print_line(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched_and_not_copied() {
        for s in ["hello bob", "héllo 🎉 — ok", "back\\slash", ""] {
            assert!(matches!(escape(s), Cow::Borrowed(b) if b == s), "{s:?}");
        }
    }

    #[test]
    fn controls_and_bidi_overrides_are_escaped() {
        assert_eq!(escape("a\nb"), "a\\nb");
        assert_eq!(escape("a\r\tb"), "a\\r\\tb");
        // A colour change and a line that would look like another user's message.
        assert_eq!(
            escape("\u{1b}[31mred\n[2024-01-01T00:00:00Z] alice: hi"),
            "\\u{1b}[31mred\\n[2024-01-01T00:00:00Z] alice: hi"
        );
        assert_eq!(escape("\0\u{7}\u{7f}"), "\\u{0}\\u{7}\\u{7f}");
        // C1, including the 8-bit CSI.
        assert_eq!(escape("x\u{9b}31m"), "x\\u{9b}31m");
        assert_eq!(escape("\u{85}"), "\\u{85}");
        // Bidi embeddings, overrides and isolates; line separators.
        for c in [
            '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}', '\u{2028}', '\u{2029}',
        ] {
            let escaped = escape(&format!("a{c}b")).into_owned();
            assert_eq!(escaped, format!("a\\u{{{:x}}}b", u32::from(c)));
        }
        // Neighbours of the ranges stay.
        for s in [
            "a\u{a0}b",
            "a\u{2027}b",
            "a\u{202f}b",
            "a\u{2065}b",
            "a\u{206a}b",
        ] {
            assert_eq!(escape(s), s);
        }
    }

    #[test]
    fn escaped_text_has_no_unsafe_character_left() {
        let nasty: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let escaped = escape(&nasty);
        assert!(!escaped.chars().any(is_unsafe));
        assert!(!escaped.contains('\n'));
    }

    #[test]
    fn colour_only_on_a_terminal_and_without_no_color() {
        assert!(color_enabled(None, true));
        assert!(!color_enabled(None, false));
        assert!(!color_enabled(Some(OsStr::new("1")), true));
        assert!(!color_enabled(Some(OsStr::new("1")), false));
        // An empty NO_COLOR does not count (no-color.org).
        assert!(color_enabled(Some(OsStr::new("")), true));
    }
}
