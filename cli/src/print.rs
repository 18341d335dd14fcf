//! Printing for a command whose reader may go away: `exploder ls | head
//! -1` closes stdout after one line, `2>&1 | head` closes stderr too.
//!
//! std's `println!` and `eprintln!` panic when the write fails: exit 101
//! with a backtrace, and a panic inside the runtime can wait for ever on
//! its blocking threads. The macros here replace them for the whole
//! `exploder` binary (declared first in `main.rs`, they shadow std's):
//! a closed stdout ends the command at once, quietly, with the status a
//! shell gives a command killed by SIGPIPE (141), as other Unix tools end;
//! a closed stderr is ignored (what would be said is lost, the work goes
//! on). SIGPIPE itself stays ignored: a credential helper or a disk image
//! tool that exits without reading its input must not kill exploder.
//!
//! What they print passes through one escape: names from outside (an
//! archive's `RepoTags` and `Config`, tar header fields, an image's labels,
//! a registry's error text) reach messages and tables, and a control
//! character in one (ESC `]0;…` retitles the terminal, ESC `[2J` clears
//! it) is written as `\u001b`, the form JSON uses, so `-o json` stays
//! valid. Newlines and tabs stay: they are the output's own layout.

use std::fmt;
use std::io::{self, Write};

/// The exit status of a command whose stdout was closed: 128 + SIGPIPE.
const CLOSED_STDOUT: i32 = 128 + 13;

/// `args`, formatted, with the control characters a terminal acts on
/// escaped (`telemetry::logging::escape_terminal`).
fn escaped(args: fmt::Arguments) -> String {
    let text = args.to_string();
    match exploder_telemetry::logging::escape_terminal(&text) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(e) => e,
    }
}

pub fn stdout(args: fmt::Arguments) {
    let text = escaped(args);
    crate::json_error::wrote_stdout();
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(CLOSED_STDOUT);
        }
        // Another failure (a full disk behind a redirection): say so if
        // stderr still listens, and stop as a failed command.
        stderr(format_args!("exploder: writing to stdout: {e}\n"));
        std::process::exit(1);
    }
}

pub fn stderr(args: fmt::Arguments) {
    let text = escaped(args);
    crate::json_error::said(&text);
    let _ = io::stderr().lock().write_all(text.as_bytes());
}

macro_rules! println {
    () => { $crate::print::stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::print::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

macro_rules! print {
    ($($arg:tt)*) => { $crate::print::stdout(format_args!($($arg)*)) };
}

macro_rules! eprintln {
    () => { $crate::print::stderr(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::print::stderr(format_args!("{}\n", format_args!($($arg)*))) };
}
