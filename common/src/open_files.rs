//! The process's open-files limit (`RLIMIT_NOFILE`).
//!
//! Many distributions start services with a soft limit of 1,024 and a far
//! higher hard one; 1,100 idle connections to the producer's listeners then
//! took every descriptor, and the broker, Redis and the store could not be
//! reached. So the daemons raise the soft limit to the hard one at start,
//! and keep [`RESERVE`] descriptors out of their listeners' connection caps
//! for the broker, Redis, registries and store files.

/// Descriptors the listeners' connection caps leave for everything else.
pub const RESERVE: u64 = 256;

/// Raises the soft limit to the hard one; the soft limit now (`None`:
/// unlimited).
pub fn raise_to_hard() -> std::io::Result<Option<u64>> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(soft_limit())
}

/// The soft limit now (`None`: unlimited).
pub fn soft_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// How many connections the listeners may hold between them under
/// `soft` (the soft limit): all but [`RESERVE`], and at least 1.
pub fn for_connections(soft: Option<u64>) -> usize {
    soft.map_or(usize::MAX, |s| {
        usize::try_from(s.saturating_sub(RESERVE).max(1)).unwrap_or(usize::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        // nextest runs each test in its own process: lowering the limit
        // here touches no other test.
        let hard = getrlimit(Resource::Nofile).maximum;
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(512),
                maximum: hard,
            },
        )
        .unwrap();
        assert_eq!(soft_limit(), Some(512));
        assert_eq!(raise_to_hard().unwrap(), hard);
    }

    #[test]
    fn connections_leave_the_reserve() {
        assert_eq!(for_connections(Some(1024)), 768);
        assert_eq!(for_connections(Some(100)), 1);
        assert_eq!(for_connections(None), usize::MAX);
    }
}
