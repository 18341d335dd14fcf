//! The poll source: a declarative watch list of repositories, scanned every
//! interval (with jitter). For each repository the tag list is read (with
//! the registry's pagination), filtered, and every tag's digest taken with
//! a manifest `HEAD` (which does not count against Docker Hub's pull
//! limit). A tag whose digest is what the link was last enqueued for stops
//! there: only changed tags are resolved and enqueued. A tag that is linked
//! here but no longer listed is looked at once more and unlinked if gone.
//!
//! Registries are scanned side by side, each with its own bound on
//! concurrent requests, so a slow or rate-limiting registry (429 and
//! `Retry-After` are honoured by the fetcher) never stalls the others.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use exploder_common::fetch::FetchError;
use exploder_common::fetch::ManifestTarget;
use exploder_common::fetch::registry::RegistryFetcher;
use exploder_common::job::LinkTarget;
use exploder_common::reference::Reference;
use exploder_common::store::{DiskFormat, ImageName};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::event::{Event, Outcome, TagEvent};
use crate::reconcile::{ReconcileError, Reconciler};
use crate::scheduler::Scheduler;

/// The `poll:` section of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// Seconds between scans [default: 300].
    #[serde(default = "default_interval")]
    pub interval_seconds: u64,
    /// Up to this fraction of the interval is added or taken at random, so
    /// many producers do not scan in step [default: 0.1].
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// Requests in flight per registry [default: 4].
    #[serde(default = "default_concurrency")]
    pub concurrency_per_registry: usize,
    /// Tags per page of the tag list (`n=`) [default: 100].
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    #[serde(deserialize_with = "crate::config::null_as_empty")]
    pub watch: Vec<Watch>,
}

/// One registry and the repositories watched on it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watch {
    /// `host[:port]`, as in a reference (`docker.io`, `quay.io`,
    /// `127.0.0.1:5000`).
    pub registry: String,
    #[serde(deserialize_with = "crate::config::null_as_empty")]
    pub repositories: Vec<String>,
    /// Tag patterns to take (`*` and `?` wildcards) [default: every tag].
    #[serde(default, deserialize_with = "crate::config::null_as_empty")]
    pub include: Vec<String>,
    /// Tag patterns to skip [default: `*.sig`, `*.att` (cosign signatures
    /// and attestations, which are not images to explode)].
    #[serde(
        default = "default_exclude",
        deserialize_with = "crate::config::null_as_empty"
    )]
    pub exclude: Vec<String>,
    /// Link under `images/<namespace>/<image>/` instead of the
    /// repository's own namespace (e.g. `mirror`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Disk images to make of each image (`[ext4, erofs, squashfs]`).
    #[serde(default, deserialize_with = "crate::config::null_as_empty")]
    pub export: Vec<DiskFormat>,
}

fn default_interval() -> u64 {
    300
}
fn default_jitter() -> f64 {
    0.1
}
fn default_concurrency() -> usize {
    4
}
fn default_page_size() -> usize {
    100
}
fn default_exclude() -> Vec<String> {
    vec!["*.sig".into(), "*.att".into()]
}

/// `*` matches any run of characters, `?` one; everything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

impl Watch {
    pub fn wants(&self, tag: &str) -> bool {
        let included = self.include.is_empty() || self.include.iter().any(|p| glob_match(p, tag));
        included && !self.exclude.iter().any(|p| glob_match(p, tag))
    }

    /// Where a tag of `repository` is linked.
    pub fn link(&self, repository: &str, tag: &str) -> LinkTarget {
        let mut name = ImageName::from_repository(repository);
        if let Some(ns) = &self.namespace {
            name.namespace = ns.clone();
        }
        LinkTarget::new(&name, tag)
    }
}

/// What one scan did, by outcome (`unchanged` counts tags whose digest did
/// not move: no job).
#[derive(Debug, Default, Serialize)]
pub struct ScanReport {
    pub tags_seen: u64,
    pub outcomes: BTreeMap<String, u64>,
    /// Repositories that could not be scanned, with the reason.
    pub errors: Vec<String>,
}

impl ScanReport {
    fn count(&mut self, outcome: &Outcome) {
        let label = match outcome {
            Outcome::Duplicate { .. } => "unchanged",
            o => o.label(),
        };
        *self.outcomes.entry(label.to_string()).or_default() += 1;
    }

    fn merge(&mut self, other: ScanReport) {
        self.tags_seen += other.tags_seen;
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.errors.extend(other.errors);
    }
}

pub struct Poller {
    pub reconciler: Arc<Reconciler>,
    pub config: PollConfig,
    /// Where a tag whose reconcile could not be done now (the broker,
    /// Redis or the registry unavailable) is retried, with backoff, before
    /// the next scan looks at it again; `None` (a one-off scan): it is
    /// only reported.
    pub retries: Option<Scheduler>,
}

impl Poller {
    /// Scans every watched repository once, registries side by side.
    pub async fn scan_once(&self) -> ScanReport {
        let mut scans = Vec::new();
        for w in &self.config.watch {
            scans.push(self.scan_registry(w));
        }
        let mut report = ScanReport::default();
        for r in futures_util::future::join_all(scans).await {
            report.merge(r);
        }
        report
    }

    /// Scans forever, every interval ± jitter, until `stop` resolves.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let report = self.scan_once().await;
            tracing::info!(
                tags = report.tags_seen,
                outcomes = ?report.outcomes,
                errors = report.errors.len(),
                "poll scan done"
            );
            for e in &report.errors {
                tracing::warn!("poll: {e}");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.next_delay()) => {}
                _ = &mut stop => return,
            }
        }
    }

    fn next_delay(&self) -> Duration {
        let base = self.config.interval_seconds as f64;
        let jitter = self.config.jitter.clamp(0.0, 1.0) * base;
        // A random number in [-1, 1) without a rand dependency: the std
        // hasher is randomly keyed per process.
        let r = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            std::time::Instant::now(),
        );
        let unit = (r % 2_000_001) as f64 / 1_000_000.0 - 1.0;
        Duration::from_secs_f64((base + unit * jitter).max(1.0))
    }

    async fn scan_registry(&self, watch: &Watch) -> ScanReport {
        let limit = Semaphore::new(self.config.concurrency_per_registry.max(1));
        let mut report = ScanReport::default();
        for repository in &watch.repositories {
            match self.scan_repository(watch, repository, &limit).await {
                Ok(r) => report.merge(r),
                Err(e) => report
                    .errors
                    .push(format!("{}/{repository}: {e}", watch.registry)),
            }
        }
        report
    }

    async fn scan_repository(
        &self,
        watch: &Watch,
        repository: &str,
        limit: &Semaphore,
    ) -> Result<ScanReport, String> {
        let upstream = Reference::parse(&format!("{}/{repository}", watch.registry))
            .map_err(|e| e.to_string())?;
        let options = &self.reconciler.plan_options.registry;
        let fetcher = RegistryFetcher::new(&upstream.registry, &upstream.repository, options)
            .map_err(|e| e.to_string())?;
        let tags = {
            let _permit = limit.acquire().await.expect("never closed");
            fetcher
                .list_tags(self.config.page_size)
                .await
                .map_err(|e| e.to_string())?
        };
        let wanted: Vec<String> = tags.into_iter().filter(|t| watch.wants(t)).collect();
        // Linked here but no longer listed: look once more (gone → unlink).
        let name = watch.link(&upstream.repository, "x").name();
        let vanished: Vec<String> = self
            .reconciler
            .store
            .linked_tags(&name)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|t| watch.wants(t) && !wanted.contains(t))
            .collect();
        // Only tags this fleet's producer enqueued from a registry (they
        // have a recorded state): a namespace mapping may share the
        // directory with other sources' tags, which are not ours to unlink.
        let mut ours = Vec::new();
        for t in vanished {
            let link = watch.link(&upstream.repository, &t).to_string();
            if matches!(self.reconciler.index.tag_state(&link).await, Ok(Some(_))) {
                ours.push(t);
            }
        }
        let vanished = ours;
        let mut report = ScanReport {
            tags_seen: wanted.len() as u64,
            ..Default::default()
        };
        let mut checks = Vec::new();
        for tag in &wanted {
            checks.push(self.check_tag(watch, &upstream, &fetcher, limit, tag, true));
        }
        for tag in &vanished {
            checks.push(self.check_tag(watch, &upstream, &fetcher, limit, tag, false));
        }
        let mut results = futures_util::stream::iter(checks)
            .buffer_unordered(self.config.concurrency_per_registry.max(1));
        while let Some(result) = results.next().await {
            match result {
                Ok(outcomes) => outcomes.iter().for_each(|o| report.count(o)),
                Err(e) => report.errors.push(e),
            }
        }
        Ok(report)
    }

    /// One tag: a HEAD for its digest (a listed tag) and the reconcile.
    async fn check_tag(
        &self,
        watch: &Watch,
        upstream: &Reference,
        fetcher: &RegistryFetcher,
        limit: &Semaphore,
        tag: &str,
        listed: bool,
    ) -> Result<Vec<Outcome>, String> {
        let _permit = limit.acquire().await.expect("never closed");
        // A tag list is registry input like any other: a "tag" that is not
        // one (`..`, `/etc/x`) must never become a store path.
        let tagged = Reference::parse(&format!(
            "{}/{}:{tag}",
            upstream.registry, upstream.repository
        ))
        .map_err(|e| {
            format!(
                "{}/{}: skipping tag {tag:?}: {e}",
                upstream.registry, upstream.repository
            )
        })?;
        // The cheap look: one HEAD. A listed tag that vanished between the
        // list and the HEAD is unlinked like any other.
        let hint = if listed {
            match fetcher
                .manifest_digest(&ManifestTarget::Tag(tag.to_string()))
                .await
            {
                Ok(d) => Some(d),
                Err(FetchError::NotFound { .. }) => None,
                Err(e) => return Err(format!("{tagged}: {e}")),
            }
        } else {
            None
        };
        let event = Event::Tag(TagEvent {
            link: watch.link(&upstream.repository, tag),
            upstream: tagged.clone(),
            hint,
            exports: watch.export.clone(),
        });
        match self.reconciler.handle("poll", event.clone()).await {
            Ok(outcomes) => Ok(outcomes),
            Err(ReconcileError::Unavailable(e)) => {
                let retried = match &self.retries {
                    Some(scheduler) => {
                        scheduler.submit("poll", event, None);
                        "; retried with backoff"
                    }
                    None => "",
                };
                Err(format!("{tagged}: {e}{retried}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob_match("*.sig", "sha256-abc.sig"));
        assert!(!glob_match("*.sig", "v1"));
        assert!(glob_match("v?.*", "v1.2"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("v1", "v10"));
        assert!(glob_match("*a*b", "xxaxxb"));
    }

    #[test]
    fn signatures_and_attestations_are_skipped_by_default() {
        let w: Watch =
            serde_saphyr::from_str("registry: r:5000\nrepositories: [team/app]\n").unwrap();
        assert!(w.wants("v1"));
        assert!(!w.wants("sha256-0123.sig"));
        assert!(!w.wants("sha256-0123.att"));
        let only_v: Watch = serde_saphyr::from_str(
            "registry: r:5000\nrepositories: [team/app]\ninclude: ['v*']\nnamespace: mirror\n",
        )
        .unwrap();
        assert!(!only_v.wants("latest"));
        assert_eq!(only_v.link("team/app", "v1").to_string(), "mirror/app:v1");
    }
}
