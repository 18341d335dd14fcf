//! Crash points for tests: `EXPLODER_FAILPOINT=<name>` makes the process
//! SIGKILL itself when it reaches the point named `<name>`, so crash tests
//! can die at exactly the instruction they mean to test ("during ingest",
//! "between publish and link") instead of hoping a timer lands there.
//!
//! `EXPLODER_FAILPOINT=<name>@<n>` dies at the n-th time the process
//! reaches `<name>`: with a point hit once per tar entry or per finalize
//! step, a seeded n is a random kill that still always lands mid-work.
//!
//! `EXPLODER_FAILPOINT=<name>=<subject>` arms a point reached with a
//! subject ([`hit_for`]) for that subject alone, every time (say, the
//! reconcile of one chosen event: a poison payload).
//!
//! Unset (the normal case) costs one cached environment lookup.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    name: String,
    /// Die at this hit (1 = the first).
    at: u64,
    hits: AtomicU64,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

fn parse(spec: &str) -> Armed {
    let (name, at) = match spec.rsplit_once('@') {
        Some((name, n)) => (name, n.parse().unwrap_or(1)),
        None => (spec, 1),
    };
    Armed {
        name: name.to_string(),
        at,
        hits: AtomicU64::new(0),
    }
}

/// Dies here if `EXPLODER_FAILPOINT` names this point (and, with `@n`, this
/// is its n-th hit).
pub fn hit(name: &str) {
    let armed = ARMED.get_or_init(|| std::env::var("EXPLODER_FAILPOINT").ok().map(|s| parse(&s)));
    let Some(armed) = armed else { return };
    if armed.name != name || armed.hits.fetch_add(1, Ordering::Relaxed) + 1 != armed.at {
        return;
    }
    eprintln!("exploder: failpoint {name} reached: killing the process");
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::process::abort();
}

/// [`hit`] for one subject only: dies here if `EXPLODER_FAILPOINT` is
/// `<name>=<subject>` (a point reached for many things, such as a
/// reconcile per event, armed for the one a test chose: a payload that
/// kills every process that takes it).
pub fn hit_for(name: &str, subject: &str) {
    let armed = ARMED.get_or_init(|| std::env::var("EXPLODER_FAILPOINT").ok().map(|s| parse(&s)));
    if armed.as_ref().is_some_and(|a| {
        a.name
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
            == Some(subject)
    }) {
        hit(&format!("{name}={subject}"));
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn a_count_suffix_picks_the_nth_hit() {
        let a = parse("ingest.entry@17");
        assert_eq!((a.name.as_str(), a.at), ("ingest.entry", 17));
        let b = parse("finalize.before-link");
        assert_eq!((b.name.as_str(), b.at), ("finalize.before-link", 1));
    }
}
