//! Reconciling: an [`Event`] → what the registry says now → jobs or an
//! unlink. Every source feeds this one place, so all of them are
//! idempotent the same way:
//!
//! 1. a cheap check first: if the event's digest is what this link was last
//!    enqueued for (Redis) and the link points there (or its jobs are still
//!    queued), nothing else happens;
//! 2. otherwise the registry is asked what the tag names now (`HEAD`):
//!    gone → unlink; the same as last time → done;
//! 3. otherwise the image is resolved and fanned out (the same fan-out as
//!    `exploder enqueue`), and the link's state recorded.
//!
//! Requests about the same link are taken one at a time, fleet-wide (a
//! Redis lease per link; in one producer the scheduler already runs one
//! per link): of 50 identical pushes sent at once (a registry's retry
//! storm), one enqueues and the others then find it settled.
//!
//! Errors that retrying can fix (broker, Redis, a registry 5xx or 429, or
//! one that does not answer) are [`ReconcileError::Unavailable`]: the
//! [`crate::scheduler::Scheduler`] tries again with backoff. Answers that
//! will not change (not found by digest, unsupported manifest) are an
//! [`Outcome::Rejected`], not an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use exploder_common::digest::Digest;
use exploder_common::fetch::plan::{PlanOptions, plan};
use exploder_common::fetch::{FetchError, ManifestTarget, resolve};
use exploder_common::history::{self, Origin};
use exploder_common::image::Platform;
use exploder_common::job::LinkTarget;
use exploder_common::reference::{ImageRef, Reference};
use exploder_common::request;
use exploder_common::store::{Block, StoreLayout, Unlinked};
use exploder_queue::connect::AmqpOptions;
use exploder_queue::index::Index;
use exploder_queue::publish::PublishError;

use crate::broker::Broker;
use crate::event::{Event, Outcome, TagEvent, default_link};
use crate::metrics::Metrics;
use exploder_common::store::quota::Quotas;
use exploder_queue::fanout::{FanOut, FanOutError};
use exploder_trust::Trust;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Try again later: the broker, Redis or the registry is unavailable.
    #[error("{0}")]
    Unavailable(String),
}

/// Everything reconciling needs; shared by every source.
pub struct Reconciler {
    pub broker: Broker,
    pub index: Index,
    pub store: StoreLayout,
    pub plan_options: PlanOptions,
    pub platform: Platform,
    pub quotas: Quotas,
    pub metrics: Arc<Metrics>,
    /// The signature policy, checked before anything is enqueued.
    pub trust: Arc<Trust>,
}

/// Where the fleet is: what every producer-side command is given.
pub struct FleetSettings {
    pub amqp_url: String,
    pub redis_url: String,
    pub prefix: String,
    /// The heartbeat and the deadline of every wait on the broker.
    pub amqp: AmqpOptions,
    /// The deadline of every Redis command.
    pub redis_timeout: Duration,
    pub store: std::path::PathBuf,
    pub platform: Platform,
    pub plan_options: PlanOptions,
    pub quotas: Quotas,
    pub trust: Arc<Trust>,
}

impl Reconciler {
    /// Connects to Redis (required: an error says how to fix it) and
    /// prepares the broker link (connected on first use, so a broker that
    /// is down only delays events).
    pub async fn connect(s: FleetSettings, metrics: Arc<Metrics>) -> Result<Reconciler, String> {
        let index = Index::connect_with(&s.redis_url, &s.prefix, s.redis_timeout)
            .await
            .map_err(|e| {
                format!(
                    "cannot reach Redis at {} ({e}); check EXPLODER_REDIS_URL",
                    exploder_queue::connect::redact(&s.redis_url)
                )
            })?;
        Ok(Reconciler {
            broker: Broker::new(&s.amqp_url, &s.prefix, s.amqp),
            index,
            store: StoreLayout::new(s.store),
            plan_options: s.plan_options,
            platform: s.platform,
            quotas: s.quotas,
            metrics,
            trust: s.trust,
        })
    }
}

/// How long a link's reconcile lease lasts (it is advisory: one outliving
/// it only lets a concurrent request do the same work).
const LINK_LEASE: Duration = Duration::from_secs(30);
/// How long a request waits for another one reconciling the same link.
const LINK_WAIT: Duration = Duration::from_secs(10);

fn unavailable(e: impl std::fmt::Display) -> ReconcileError {
    ReconcileError::Unavailable(e.to_string())
}

impl Reconciler {
    /// Handles one event from `source` (a metrics label: `registry`,
    /// `poll`, `imagestream`, ...) and counts its outcome.
    pub async fn handle(&self, source: &str, event: Event) -> Result<Vec<Outcome>, ReconcileError> {
        // For the tests of an event that kills the producer reconciling it
        // (`EXPLODER_FAILPOINT=reconcile.event=<link>`).
        exploder_common::failpoint::hit_for(
            "reconcile.event",
            &crate::scheduler::subject_of(&event),
        );
        let event = self.with_registry_path(source, event);
        let result = match event {
            Event::Tag(t) => self.tag(t, source).await.map(|o| vec![o]),
            Event::Gone { link } => {
                let origin = Origin::by(&decided_by(source));
                self.unlink(&link, &origin).await.map(|o| vec![o])
            }
            Event::ManifestDeleted {
                upstream,
                name,
                digest,
            } => {
                // The registry names no tag: look again at every tag of the
                // image that is linked here, or requested and maybe not
                // linked yet (a push deleted within seconds), a HEAD each.
                let mut tags = self.store.linked_tags(&name).map_err(unavailable)?;
                tags.extend(request::requested_tags(&self.store, &name).map_err(unavailable)?);
                tags.sort();
                tags.dedup();
                tracing::info!(%upstream, %digest, tags = tags.len(), "manifest deleted upstream");
                let mut outcomes = Vec::new();
                for tag in tags {
                    let upstream = Reference {
                        tag: Some(tag.clone()),
                        digest: None,
                        ..upstream.clone()
                    };
                    let link = LinkTarget::new(&name, &tag);
                    outcomes.push(
                        self.tag(
                            TagEvent {
                                upstream,
                                link,
                                hint: None,
                                exports: Vec::new(),
                            },
                            source,
                        )
                        .await?,
                    );
                }
                Ok(outcomes)
            }
        };
        match &result {
            Ok(outcomes) => {
                for o in outcomes {
                    self.metrics.event(source, o.label());
                }
            }
            Err(_) => self.metrics.event(source, "unavailable"),
        }
        result
    }

    /// A webhook event links where its repository says (`default_link`);
    /// a registry with a path of its own (`registry_paths`) links under it.
    /// Poll and ImageStream sources name their links themselves.
    fn with_registry_path(&self, source_label: &str, event: Event) -> Event {
        let paths = &self.plan_options.registry_paths;
        if paths.is_empty() || matches!(source_label, "poll" | "imagestream") {
            return event;
        }
        match event {
            Event::Tag(mut t) if t.link == default_link(&t.upstream) => {
                let name = paths.name(&t.upstream.registry, &t.upstream.repository);
                t.link = LinkTarget::new(&name, &t.link.tag);
                Event::Tag(t)
            }
            Event::ManifestDeleted {
                upstream,
                name: _,
                digest,
            } => Event::ManifestDeleted {
                name: paths.name(&upstream.registry, &upstream.repository),
                upstream,
                digest,
            },
            other => other,
        }
    }

    /// Whether `link` is settled at `top`: last enqueued for that digest,
    /// and either linked to its manifest or with its jobs still queued
    /// (not dead-lettered).
    async fn settled(
        &self,
        link: &LinkTarget,
        state: &Option<(Digest, Digest)>,
        top: &Digest,
    ) -> Result<bool, ReconcileError> {
        let Some((last_top, manifest)) = state else {
            return Ok(false);
        };
        if last_top != top {
            return Ok(false);
        }
        let linked = self.store.read_link(&link.name(), &link.tag).ok().flatten();
        if linked.as_ref() == Some(manifest) {
            return Ok(true);
        }
        let queued = self
            .index
            .image_job(manifest)
            .await
            .map_err(unavailable)?
            .is_some();
        let failed = self.index.failure(manifest).await.map_err(unavailable)?;
        Ok(queued && failed.is_none())
    }

    /// [`Self::reconcile_tag`] under the link's lease: waits (at most
    /// [`LINK_WAIT`]) while another request reconciles the same link, so
    /// concurrent identical events enqueue once.
    async fn tag(&self, event: TagEvent, source_label: &str) -> Result<Outcome, ReconcileError> {
        static TOKENS: AtomicU64 = AtomicU64::new(0);
        let lease = format!("reconcile:{}", event.link);
        let token = format!(
            "{}-{}",
            std::process::id(),
            TOKENS.fetch_add(1, Ordering::Relaxed)
        );
        let start = Instant::now();
        while !self
            .index
            .hold_lease(&lease, &token, LINK_LEASE)
            .await
            .map_err(unavailable)?
        {
            if start.elapsed() > LINK_WAIT {
                return Err(unavailable(format!(
                    "{} is being reconciled by another request for over {LINK_WAIT:?}",
                    event.link
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let outcome = self.reconcile_tag(event, source_label).await;
        // An error here only leaves the lease to expire.
        let _ = self.index.release_lease(&lease, &token).await;
        outcome
    }

    async fn reconcile_tag(
        &self,
        event: TagEvent,
        source_label: &str,
    ) -> Result<Outcome, ReconcileError> {
        let TagEvent {
            upstream,
            link,
            hint,
            exports,
        } = event;
        let key = link.to_string();
        let state = self.index.tag_state(&key).await.map_err(unavailable)?;
        if let Some(h) = &hint
            && self.settled(&link, &state, h).await?
        {
            return Ok(Outcome::Duplicate { link: key });
        }
        let reference = ImageRef::Registry(upstream.clone());
        let plan = match plan(&reference, &self.plan_options) {
            Ok(p) => p,
            Err(e) => return rejected(&key, e),
        };
        let Some(source) = plan.source.clone() else {
            return rejected(&key, "not a registry reference");
        };
        // The decision time is taken before the registry is asked: a delete
        // seen after this moment wins over what this look finds.
        let decided = history::now_millis();
        let top = match upstream.target() {
            ManifestTarget::Digest(d) => d,
            target @ ManifestTarget::Tag(_) => match plan.fetcher.manifest_digest(&target).await {
                Ok(d) => d,
                // The tag is gone upstream (deleted, or this is a stale
                // push of a tag deleted since). Only its own registry's
                // word unlinks a link.
                Err(FetchError::NotFound { .. }) => {
                    let origin = Origin::of(&source, &decided_by(source_label));
                    return self.unlink(&link, &origin).await;
                }
                Err(e) if retry_later(&e) => return Err(unavailable(e)),
                Err(e) => return rejected(&key, e),
            },
        };
        // A blocked image is refused before anything else: a push of it is
        // what the alert on refusals is for.
        if let Some(refused) = self.refuse_blocked(&key, &top, None)? {
            return Ok(refused);
        }
        if self.settled(&link, &state, &top).await? {
            return Ok(Outcome::Duplicate { link: key });
        }
        let image = match resolve(
            &plan.fetcher,
            &ManifestTarget::Digest(top.clone()),
            &self.platform,
        )
        .await
        {
            Ok(i) => i,
            Err(e) if retry_later(&e) => return Err(unavailable(e)),
            Err(e) => return rejected(&key, e),
        };
        if let Some(refused) =
            self.refuse_blocked(&key, &image.manifest_digest, image.index_digest.as_ref())?
        {
            return Ok(refused);
        }
        let linked = self.store.read_link(&link.name(), &link.tag).ok().flatten();
        let moved_back = state.as_ref().is_some_and(|(last, _)| last != &top);
        if linked.as_ref() == Some(&image.manifest_digest) && moved_back {
            // Back where it was linked, after something else was enqueued
            // for it: record the decision so that job, if still in flight,
            // does not move the tag when it finishes.
            self.store
                .reaffirm(
                    &link.name(),
                    &link.tag,
                    &image.manifest_digest,
                    decided,
                    &Origin::of(&source, &decided_by(source_label)),
                )
                .map_err(|e| unavailable(format!("recording {key}: {e}")))?;
        }
        if linked.as_ref() != Some(&image.manifest_digest) {
            match self
                .quotas
                .check_links(&self.store, std::slice::from_ref(&link), &image)
            {
                Ok(Ok(())) => {}
                Ok(Err(over)) => return rejected(&key, over),
                Err(e) => return Err(unavailable(format!("reading the store for a quota: {e}"))),
            }
            // The signature policy: a refusal is final for this digest (a
            // new push of the tag is a new reconcile).
            let accepted = match self
                .trust
                .verify_image(&reference, &upstream.to_string(), &plan.fetcher, &image)
                .await
            {
                Ok(a) => a,
                Err(e) if e.is_transient() => return Err(unavailable(e)),
                Err(e) if e.refusal().is_some() => {
                    // Refused for what the image is, like a blocked one.
                    tracing::warn!(link = key, manifest = %image.manifest_digest, reason = %e, "image refused by the signature policy");
                    self.metrics
                        .images_refused
                        .with_label_values(&["signature"])
                        .inc();
                    return Ok(Outcome::Refused {
                        link: key,
                        digest: image.manifest_digest.clone(),
                        reason: e.to_string(),
                    });
                }
                Err(e) => return rejected(&key, e),
            };
            let open = self.broker.get().await.map_err(unavailable)?;
            let fanout = FanOut {
                publisher: &open.publisher,
                index: &self.index,
                store: &self.store,
            };
            let recorded = fanout
                .record(
                    &image,
                    &accepted,
                    source,
                    vec![link.clone()],
                    &decided_by(source_label),
                    exports,
                )
                .await;
            let started = std::time::Instant::now();
            let enqueued = match recorded {
                Ok(recorded) => fanout.publish_recorded(recorded).await,
                Err(e) => Err(e),
            };
            match enqueued {
                Ok(enqueued) => {
                    let m = &self.metrics;
                    let layers = enqueued.layer_jobs.len() as u64;
                    m.jobs_published
                        .with_label_values(&["layer"])
                        .inc_by(layers);
                    m.jobs_published.with_label_values(&["image"]).inc();
                    // The jobs are sent together and their confirms awaited
                    // together: each waited about as long as the batch.
                    let each = started.elapsed().as_secs_f64();
                    for _ in 0..=layers {
                        m.publish_confirm.observe(each);
                    }
                }
                Err(FanOutError::Blocked(block)) => {
                    return Ok(self.refused(&key, *block));
                }
                Err(e @ FanOutError::Refused(_)) => return rejected(&key, e),
                Err(e) => {
                    if let FanOutError::Publish(p) = &e {
                        if matches!(
                            p,
                            PublishError::Nacked { .. } | PublishError::Unroutable { .. }
                        ) {
                            self.metrics.publish_nacks.inc();
                        }
                        self.broker.reset().await;
                    }
                    return Err(unavailable(e));
                }
            }
        }
        self.index
            .set_tag_state(&key, &top, &image.manifest_digest)
            .await
            .map_err(unavailable)?;
        if linked.as_ref() == Some(&image.manifest_digest) {
            return Ok(Outcome::Duplicate { link: key });
        }
        tracing::info!(link = %key, %upstream, manifest = %image.manifest_digest, "enqueued");
        Ok(Outcome::Accepted {
            link: key,
            manifest: image.manifest_digest,
        })
    }

    /// [`Outcome::Refused`] if the image (its manifest digest, or the
    /// index it was resolved from) is blocked.
    fn refuse_blocked(
        &self,
        key: &str,
        manifest: &Digest,
        index: Option<&Digest>,
    ) -> Result<Option<Outcome>, ReconcileError> {
        let block = self
            .store
            .image_block(manifest, index)
            .map_err(|e| unavailable(format!("reading the block list: {e}")))?;
        Ok(block.map(|b| self.refused(key, b)))
    }

    fn refused(&self, key: &str, block: Block) -> Outcome {
        tracing::warn!(link = key, digest = %block.digest, reason = %block.reason, "blocked image refused");
        self.metrics
            .images_refused
            .with_label_values(&["blocked"])
            .inc();
        Outcome::Refused {
            link: key.to_string(),
            digest: block.digest,
            reason: block.reason,
        }
    }

    async fn unlink(&self, link: &LinkTarget, origin: &Origin) -> Result<Outcome, ReconcileError> {
        let key = link.to_string();
        let removed = self
            .store
            .unlink(&link.name(), &link.tag, history::now_millis(), origin)
            .map_err(|e| unavailable(format!("unlinking {key}: {e}")))?;
        match removed {
            Unlinked::Removed(d) => tracing::info!(link = %key, digest = %d, "unlinked"),
            Unlinked::NotLinked => {}
            // Nothing written, nothing to forget: an event naming a tag
            // neither the registry nor the store has does nothing.
            Unlinked::Unknown => {
                return Ok(Outcome::Ignored {
                    reason: format!(
                        "{key}: the registry does not have the tag, and it was never linked"
                    ),
                });
            }
            Unlinked::Superseded(newer) => {
                tracing::info!(link = %key, newer = %newer.line(), "not unlinked: linked since");
            }
            Unlinked::OtherRegistry { linked } => {
                return rejected(
                    &key,
                    format!(
                        "linked to an image from {linked}; {} does not have the tag, but it is \
                         not the registry the link came from",
                        origin.source()
                    ),
                );
            }
            Unlinked::RequestedFromOtherRegistry { requested } => {
                return rejected(
                    &key,
                    format!(
                        "requested from {requested} and not linked yet; {} does not have the \
                         tag, but it is not the registry the request came from",
                        origin.source()
                    ),
                );
            }
        }
        // Forget what was enqueued: pushing the same digest again later
        // must link it again.
        self.index
            .clear_tag_state(&key)
            .await
            .map_err(unavailable)?;
        Ok(Outcome::Unlinked { link: key })
    }
}

/// Who decided a link, as its request and history say: the poll, the
/// ImageStream watch, or the webhook endpoint whose event it was (every
/// other source label is an endpoint's name).
fn decided_by(source_label: &str) -> String {
    match source_label {
        "poll" | "imagestream" => source_label.to_string(),
        endpoint => format!("webhook/{endpoint}"),
    }
}

/// Failures a later try may not meet: the usual transient ones, and
/// refused credentials (a token being rotated must not drop events).
fn retry_later(e: &FetchError) -> bool {
    e.is_transient()
        || matches!(
            e,
            FetchError::Unauthorized { .. } | FetchError::TokenRefused(_)
        )
}

fn rejected(link: &str, reason: impl std::fmt::Display) -> Result<Outcome, ReconcileError> {
    tracing::warn!(link, %reason, "event rejected");
    Ok(Outcome::Rejected {
        link: link.to_string(),
        reason: reason.to_string(),
    })
}
