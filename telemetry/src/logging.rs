//! Log setup for every exploder binary: `tracing` to stderr, filtered by
//! `RUST_LOG` (else the binary's default), as text or JSON lines.
//!
//! Field values come from outside (repository names in webhook payloads,
//! registry error messages): in the text format a newline in one would
//! start what looks like a log line of its own, and a megabyte of name
//! would be a megabyte of log. So text fields are written with control
//! characters escaped (`\n`, `\u{1b}`) and cut at [`MAX_FIELDS_BYTES`].
//! JSON lines escape by construction; they are not cut.

use std::fmt::Write as _;
use std::io::IsTerminal;

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};

/// The most bytes of fields one log line carries.
pub const MAX_FIELDS_BYTES: usize = 4096;

/// Installs the global subscriber. `json`: one JSON object per line.
pub fn init(json: bool, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colours only for a person at a terminal, and not when NO_COLOR says
    // no (https://no-color.org): log files and collectors get plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(|| LossyStderr);
    if json {
        builder.json().init();
    } else {
        builder.fmt_fields(EscapedFields::default()).init();
    }
}

/// stderr, where a failed write is a lost line and nothing more. When the
/// reader of stderr is gone (`2>&1 | head`), tracing-subscriber's own
/// writer reports the failure with `eprintln!`, which panics: in lapin's
/// I/O thread that left every broker call waiting for ever.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// The default text field format, escaped and cut (see the module).
#[derive(Debug, Default)]
pub struct EscapedFields(DefaultFields);

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut plain = String::new();
        self.0.format_fields(Writer::new(&mut plain), fields)?;
        writer.write_str(&escape(&plain, MAX_FIELDS_BYTES))
    }
}

/// Whether `c` is a control character a terminal could act on (ESC
/// starts colours, titles, screen clears; C1 controls are escapes of
/// their own), besides the line structure `\n` and `\t` give.
pub fn is_terminal_control(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

/// `text` as a terminal may be given it: every control character but
/// `\n` and `\t` written as `\u001b` (the form JSON uses too, so a JSON
/// document stays valid and means the same), the rest as it is. What the
/// `exploder` CLI prints passes through here: untrusted names (an
/// archive's `RepoTags`, a tar header, an image's labels) reach its
/// messages and tables.
pub fn escape_terminal(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_terminal_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_terminal_control(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `text` with control characters escaped, cut to about `max` bytes (on a
/// character boundary, saying how much was left out).
pub fn escape(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 32);
    for (i, c) in text.char_indices() {
        if out.len() >= max {
            let _ = write!(out, "… ({} bytes more)", text.len() - i);
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_and_escapes_cannot_start_a_line_of_their_own() {
        let forged = "team/app\n2026-01-01T00:00:00Z  INFO forged\r\x1b[31m";
        let e = escape(forged, 1000);
        assert!(
            !e.contains('\n') && !e.contains('\r') && !e.contains('\x1b'),
            "{e}"
        );
        assert!(
            e.contains("team/app\\n2026") && e.contains("\\u{1b}[31m"),
            "{e}"
        );
    }

    #[test]
    fn terminal_text_keeps_its_lines_and_loses_its_escapes() {
        let hostile = "tag \x1b]0;owned\x07 \x1b[2J\u{9b}31m\r\x7f\nnext\tcol";
        let e = escape_terminal(hostile);
        assert!(!e.chars().any(is_terminal_control), "{e}");
        assert_eq!(
            e,
            "tag \\u001b]0;owned\\u0007 \\u001b[2J\\u009b31m\\u000d\\u007f\nnext\tcol"
        );
        // Still the same JSON string, read back.
        let json = format!("\"{}\"", escape_terminal("a\u{7f}\u{9b}b"));
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back, "a\u{7f}\u{9b}b");
        assert!(matches!(
            escape_terminal("plain"),
            std::borrow::Cow::Borrowed("plain")
        ));
    }

    #[test]
    fn long_values_are_cut_and_say_so() {
        let e = escape(&"é".repeat(10_000), 100);
        assert!(e.len() < 140, "{}", e.len());
        assert!(e.ends_with("bytes more)"), "{e}");
        assert_eq!(escape("short", 100), "short");
    }
}
