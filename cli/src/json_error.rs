//! `-o json` errors: the one place a command's failure becomes JSON.
//!
//! A command reports what went wrong on stderr (`exploder: ...`, through
//! the macros of `print`) and returns its exit code. With `-o json` a
//! script reads stdout, so a command that fails without having printed
//! its own JSON document there (explode, enqueue and rm print one with a
//! result per reference, `"ok": false` included) leaves it this object:
//!
//! ```json
//! {"ok": false, "error": {"message": "...", "exit_code": 1}}
//! ```
//!
//! `message` is the command's first error line (without `exploder: `),
//! `details` the further ones if any; the exit code is the command's (1 a
//! failure, 2 a usage error, clap's included). Warnings (`exploder:
//! warning: ...`) are not errors and are left out. stderr still says it
//! all for a person.

use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static JSON: AtomicBool = AtomicBool::new(false);
static STDOUT_WRITTEN: AtomicBool = AtomicBool::new(false);
static ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Error lines kept for the document: a long-running command (`status
/// --watch`) may say many; stderr has them all.
const KEPT: usize = 64;

/// The command's output is JSON: its errors are to be too.
pub fn enable() {
    JSON.store(true, Ordering::Relaxed);
}

/// Something was written on stdout (`print::stdout`).
pub fn wrote_stdout() {
    STDOUT_WRITTEN.store(true, Ordering::Relaxed);
}

/// A message written on stderr (`print::stderr`): its error lines are
/// kept for [`finish`].
pub fn said(text: &str) {
    if !JSON.load(Ordering::Relaxed) {
        return;
    }
    let mut errors = ERRORS.lock().unwrap_or_else(|p| p.into_inner());
    for line in text.lines() {
        if let Some(error) = line.strip_prefix("exploder: ")
            && !error.starts_with("warning: ")
            && errors.len() < KEPT
        {
            errors.push(error.to_string());
        }
    }
}

/// The JSON a failed command leaves on stdout.
fn document(messages: &[String], exit_code: u8) -> serde_json::Value {
    let mut error = serde_json::json!({
        "message": messages.first().cloned().unwrap_or_else(|| "failed (see stderr)".into()),
        "exit_code": exit_code,
    });
    if messages.len() > 1 {
        error["details"] = serde_json::json!(messages[1..]);
    }
    serde_json::json!({"ok": false, "error": error})
}

/// The numeric value of `code` (ExitCode hides it).
fn code_value(code: ExitCode) -> u8 {
    (0..=u8::MAX)
        .find(|n| ExitCode::from(*n) == code)
        .unwrap_or(1)
}

/// Ends a command: with `-o json`, a failure that printed nothing on
/// stdout prints its error object there. Returns `code` unchanged.
pub fn finish(code: ExitCode) -> ExitCode {
    if code == ExitCode::SUCCESS
        || !JSON.load(Ordering::Relaxed)
        || STDOUT_WRITTEN.load(Ordering::Relaxed)
    {
        return code;
    }
    let errors = std::mem::take(&mut *ERRORS.lock().unwrap_or_else(|p| p.into_inner()));
    println!(
        "{}",
        serde_json::to_string_pretty(&document(&errors, code_value(code))).expect("serializes")
    );
    code
}

/// Whether the command line asks for JSON output, read from the words
/// themselves: for a command line clap refused, which has no parsed
/// `--output` to look at.
pub fn asked_in(args: &[String]) -> bool {
    let from_env = std::env::var("EXPLODER_OUTPUT").is_ok_and(|v| v == "json");
    let mut words = args.iter().map(String::as_str);
    let mut asked = None;
    while let Some(word) = words.next() {
        match word {
            "-o" | "--output" => asked = words.next().map(|v| v == "json"),
            "-ojson" | "--output=json" => asked = Some(true),
            w if w.starts_with("--output=") || (w.starts_with("-o") && w.len() > 2) => {
                asked = Some(false)
            }
            _ => {}
        }
    }
    asked.unwrap_or(from_env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_object_has_the_first_line_as_message_and_the_rest_as_details() {
        let v = document(&["a".into(), "b".into()], 2);
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"]["message"], "a");
        assert_eq!(v["error"]["details"][0], "b");
        assert_eq!(v["error"]["exit_code"], 2);
    }

    #[test]
    fn json_is_read_from_every_spelling_of_the_flag() {
        let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(asked_in(&words("exploder ls -o json --bogus")));
        assert!(asked_in(&words("exploder ls --output=json")));
        assert!(asked_in(&words("exploder ls -ojson")));
        assert!(!asked_in(&words("exploder ls -o text --bogus")));
    }
}
