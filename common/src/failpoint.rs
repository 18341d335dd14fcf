//! Crash points for tests: `EXPLODER_FAILPOINT=<name>` makes the process
//! SIGKILL itself when it reaches the point named `<name>`, so crash tests
//! can die at exactly the instruction they mean to test ("during ingest",
//! "between publish and link") instead of hoping a timer lands there.
//!
//! Unset (the normal case) costs one cached environment lookup.

use std::sync::OnceLock;

static ARMED: OnceLock<Option<String>> = OnceLock::new();

/// Dies here if `EXPLODER_FAILPOINT` names this point.
pub fn hit(name: &str) {
    let armed = ARMED.get_or_init(|| std::env::var("EXPLODER_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        eprintln!("exploder: failpoint {name} reached: killing the process");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}
