//! The worker's fetchers, one per source, in a cache bounded by size and
//! idle time.
//!
//! A fetcher is cheap to keep but not free: it holds a repository's token
//! and what its authentication found, and it keeps the registry's shared
//! client (see `exploder_common::fetch::registry::client`) alive. A worker
//! that follows a registry for months sees every repository of it, so the
//! cache keeps the [`CAPACITY`] most recently used fetchers and drops one
//! unused for [`IDLE`]; jobs of a repository that arrive together (the
//! layers and the image of one push) still share one authentication.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exploder_common::fetch::plan::fetcher_for;
use exploder_common::fetch::registry::RegistryOptions;
use exploder_common::fetch::{FetchError, Fetcher};
use exploder_common::job::JobSource;

/// Fetchers kept at most.
pub const CAPACITY: usize = 64;
/// A fetcher unused for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(300);

struct Entry {
    fetcher: Arc<Fetcher>,
    last_used: Instant,
}

/// The cache (see the module documentation).
pub struct Fetchers {
    registry: RegistryOptions,
    capacity: usize,
    idle: Duration,
    entries: Mutex<HashMap<JobSource, Entry>>,
}

impl Fetchers {
    pub fn new(registry: RegistryOptions) -> Fetchers {
        Fetchers::bounded(registry, CAPACITY, IDLE)
    }

    fn bounded(registry: RegistryOptions, capacity: usize, idle: Duration) -> Fetchers {
        Fetchers {
            registry,
            capacity: capacity.max(1),
            idle,
            entries: Mutex::default(),
        }
    }

    /// The fetcher of `source`: the cached one, or a new one that takes the
    /// place of the least recently used when the cache is full.
    pub fn get(&self, source: &JobSource) -> Result<Arc<Fetcher>, FetchError> {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("fetcher cache lock");
        if let Some(entry) = entries.get_mut(source) {
            entry.last_used = now;
            return Ok(entry.fetcher.clone());
        }
        // Built under the lock: two jobs of a new repository arriving
        // together then authenticate once, not twice.
        let fetcher = Arc::new(fetcher_for(source, &self.registry)?);
        entries.retain(|_, e| now.duration_since(e.last_used) < self.idle);
        if entries.len() >= self.capacity
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert(
            source.clone(),
            Entry {
                fetcher: fetcher.clone(),
                last_used: now,
            },
        );
        Ok(fetcher)
    }

    /// How many fetchers are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().expect("fetcher cache lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(repository: &str) -> JobSource {
        JobSource::Registry {
            registry: "127.0.0.1:5000".into(),
            repository: repository.into(),
        }
    }

    #[test]
    fn a_source_asked_for_again_gets_the_same_fetcher() {
        let cache = Fetchers::new(RegistryOptions::default());
        let a = cache.get(&source("team/app")).unwrap();
        let b = cache.get(&source("team/app")).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let cache = Fetchers::bounded(RegistryOptions::default(), 4, IDLE);
        for i in 0..100 {
            cache.get(&source(&format!("team/app{i}"))).unwrap();
        }
        assert_eq!(cache.len(), 4);
    }

    #[test]
    fn the_least_recently_used_fetcher_makes_room() {
        let cache = Fetchers::bounded(RegistryOptions::default(), 2, IDLE);
        let a = cache.get(&source("a")).unwrap();
        cache.get(&source("b")).unwrap();
        cache.get(&source("a")).unwrap();
        cache.get(&source("c")).unwrap();
        assert!(Arc::ptr_eq(&a, &cache.get(&source("a")).unwrap()));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn an_idle_fetcher_is_dropped() {
        let cache = Fetchers::bounded(RegistryOptions::default(), 8, Duration::ZERO);
        let a = cache.get(&source("a")).unwrap();
        cache.get(&source("b")).unwrap();
        assert_eq!(cache.len(), 1);
        assert!(!Arc::ptr_eq(&a, &cache.get(&source("a")).unwrap()));
    }
}
