//! The OpenShift ImageStream source: watch `image.openshift.io/v1`
//! ImageStreams (one namespace or all) and keep `images/<stream
//! namespace>/<stream name>/<tag>/link` on each tag's current image
//! (`status.tags[].items[0]`).
//!
//! As in kube-rs's runtime, the watch is a stream of events and deciding is
//! separate from IO: [`StreamTags`] turns what the API server says into
//! [`Event`]s and remembers what each stream's tags were, so a relist
//! (after a restart, or a `410 Gone`) yields nothing for tags that did not
//! move; the watch loop only feeds it and hands the events to the
//! [`Scheduler`], which reconciles them and owns their retries (a newer
//! event for a link replaces one waiting to be retried). A tag that disappears from a stream, or a deleted stream,
//! becomes an unlink.
//!
//! What the watch saw lives in memory, so after every relist (at start,
//! after a restart, after `410 Gone`) the links the ImageStream source owns
//! in the store (their last change was decided `by=imagestream`, or their
//! outstanding request was) are compared with the streams that exist: a
//! stream or tag deleted while the producer was down is unlinked then.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use exploder_common::digest::Digest;
use exploder_common::history::Change;
use exploder_common::job::LinkTarget;
use exploder_common::reference::Reference;
use exploder_common::request;
use exploder_common::store::{DiskFormat, ImageName, StoreLayout};
use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Deserialize;
use serde_json::Value;

use crate::event::{Event, TagEvent};
use crate::scheduler::Scheduler;

/// The `imagestreams:` section of the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageStreamConfig {
    /// Watch this namespace only [default: all namespaces].
    pub namespace: Option<String>,
    /// A kubeconfig file [default: `KUBECONFIG`, `~/.kube/config`, or the
    /// in-cluster service account].
    pub kubeconfig: Option<PathBuf>,
    /// Pull from this registry host instead of the one in
    /// `dockerImageReference` (the internal registry's service name is
    /// often not reachable from where the fleet runs).
    pub pull_from: Option<String>,
    /// Authenticate to the registry with this service-account token (the
    /// OpenShift registry takes it as the password of any user), e.g.
    /// `/var/run/secrets/kubernetes.io/serviceaccount/token`. Workers need
    /// the same credentials (`EXPLODER_REGISTRY_USERNAME`/`PASSWORD`).
    pub registry_token_file: Option<PathBuf>,
}

impl ImageStreamConfig {
    /// Puts the service-account token, if configured, into `registry` as
    /// basic credentials (unless credentials are set already).
    pub fn apply_token(
        &self,
        registry: &mut exploder_common::fetch::registry::RegistryOptions,
    ) -> Result<(), String> {
        let Some(path) = &self.registry_token_file else {
            return Ok(());
        };
        if registry.username.is_some() || registry.token.is_some() {
            return Ok(());
        }
        let token = std::fs::read_to_string(path)
            .map_err(|e| format!("reading registry_token_file {}: {e}", path.display()))?;
        registry.username = Some("serviceaccount".into());
        registry.password = Some(token.trim().to_string());
        Ok(())
    }
}

/// A stream's tags as last seen: tag → the current image's reference.
type Tags = BTreeMap<String, Reference>;

/// The annotation on an ImageStream that asks for disk images of its
/// tags' images: `exploder.io/export: ext4,erofs`.
pub const EXPORT_ANNOTATION: &str = "exploder.io/export";

/// The disk images an ImageStream's annotations ask for (an unknown
/// format is logged and skipped: the images are still exploded).
fn exports_of(annotations: Option<&BTreeMap<String, String>>) -> Vec<DiskFormat> {
    let Some(text) = annotations.and_then(|a| a.get(EXPORT_ANNOTATION)) else {
        return Vec::new();
    };
    match DiskFormat::parse_list(text) {
        Ok(formats) => formats,
        Err(e) => {
            tracing::warn!(annotation = EXPORT_ANNOTATION, "imagestream: {e}");
            Vec::new()
        }
    }
}

/// What the watch knows about every stream, and the events changes make.
#[derive(Default)]
pub struct StreamTags {
    streams: BTreeMap<(String, String), Tags>,
    /// Streams seen since the current relist began (`None`: not relisting).
    relisting: Option<BTreeSet<(String, String)>>,
    pull_from: Option<String>,
}

impl StreamTags {
    pub fn new(pull_from: Option<String>) -> StreamTags {
        StreamTags {
            pull_from,
            ..Default::default()
        }
    }

    /// The tags an ImageStream object says are current. Tags without an
    /// image (never imported) or with a reference that does not parse are
    /// left out.
    fn current_tags(&self, object: &Value) -> Tags {
        let mut tags = Tags::new();
        let Some(list) = object["status"]["tags"].as_array() else {
            return tags;
        };
        for t in list {
            let (Some(tag), Some(item)) = (t["tag"].as_str(), t["items"].get(0)) else {
                continue;
            };
            let Some(reference) = item["dockerImageReference"].as_str() else {
                continue;
            };
            let Ok(mut r) = Reference::parse(reference) else {
                tracing::warn!(
                    tag,
                    reference,
                    "imagestream: unparsable dockerImageReference"
                );
                continue;
            };
            // The item's `image` is the digest; a reference by tag only
            // (rare) is pinned to it.
            if r.digest.is_none() {
                r.digest = item["image"]
                    .as_str()
                    .and_then(|d| d.parse::<Digest>().ok());
            }
            if let Some(host) = &self.pull_from {
                r.registry = host.clone();
            }
            tags.insert(tag.to_string(), r);
        }
        tags
    }

    fn link(namespace: &str, name: &str, tag: &str) -> LinkTarget {
        LinkTarget::new(
            &ImageName {
                namespace: namespace.to_string(),
                image: name.to_string(),
            },
            tag,
        )
    }

    /// A stream was added or changed (or listed): events for the tags that
    /// are new or moved (asking for the disk images `exports`), and unlinks
    /// for the tags it no longer has.
    pub fn applied(
        &mut self,
        namespace: &str,
        name: &str,
        object: &Value,
        exports: &[DiskFormat],
    ) -> Vec<Event> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(seen) = &mut self.relisting {
            seen.insert(key.clone());
        }
        let now = self.current_tags(object);
        let before = self.streams.remove(&key).unwrap_or_default();
        let mut events = Vec::new();
        for (tag, reference) in &now {
            if before.get(tag) != Some(reference) {
                events.push(Event::Tag(TagEvent {
                    upstream: reference.clone(),
                    link: Self::link(namespace, name, tag),
                    hint: reference.digest.clone(),
                    exports: exports.to_vec(),
                }));
            }
        }
        for tag in before.keys().filter(|t| !now.contains_key(*t)) {
            events.push(Event::Gone {
                link: Self::link(namespace, name, tag),
            });
        }
        self.streams.insert(key, now);
        events
    }

    /// A stream was deleted: every tag it had is unlinked.
    pub fn deleted(&mut self, namespace: &str, name: &str, object: &Value) -> Vec<Event> {
        let key = (namespace.to_string(), name.to_string());
        let mut tags = self.streams.remove(&key).unwrap_or_default();
        // Tags the object still shows but we never saw (deleted before our
        // first look) go too.
        tags.extend(self.current_tags(object));
        tags.keys()
            .map(|tag| Event::Gone {
                link: Self::link(namespace, name, tag),
            })
            .collect()
    }

    /// A relist begins: every stream is about to be listed again.
    pub fn relist_started(&mut self) {
        self.relisting = Some(BTreeSet::new());
    }

    /// The relist is complete: streams known before and not listed again
    /// were deleted while nobody watched; so were the tags of `owned` (the
    /// links this source made in the store, see [`owned_links`]) that no
    /// listed stream has, even those this process never saw (it was down).
    pub fn relist_done(&mut self, owned: &[LinkTarget]) -> Vec<Event> {
        let Some(seen) = self.relisting.take() else {
            return Vec::new();
        };
        let gone: Vec<(String, String)> = self
            .streams
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        let mut events = Vec::new();
        for (ns, name) in gone {
            events.extend(self.deleted(&ns, &name, &Value::Null));
        }
        for link in owned {
            let listed = self
                .streams
                .get(&(link.namespace.clone(), link.image.clone()))
                .is_some_and(|tags| tags.contains_key(&link.tag));
            let event = Event::Gone { link: link.clone() };
            if !listed && !events.contains(&event) {
                events.push(event);
            }
        }
        events
    }
}

/// Who decides ImageStream links, as their history and requests say.
pub const DECIDED_BY: &str = "imagestream";

/// The links this source owns in the store, in `namespace` (or all):
/// linked by an ImageStream decision, or requested by one and not failed.
pub fn owned_links(
    store: &StoreLayout,
    namespace: Option<&str>,
) -> std::io::Result<Vec<LinkTarget>> {
    let in_scope = |l: &LinkTarget| namespace.is_none_or(|ns| l.namespace == ns);
    let mut owned = Vec::new();
    for link in store.tags()? {
        if !in_scope(&link) {
            continue;
        }
        let last = store.history(&link.name(), &link.tag)?.pop();
        if last.is_some_and(|r| {
            matches!(r.change, Change::Linked(_)) && r.origin.by.as_deref() == Some(DECIDED_BY)
        }) {
            owned.push(link);
        }
    }
    let (requests, _) = request::list_heads(store)?;
    for r in requests {
        if r.decided_by == DECIDED_BY && !r.failed && in_scope(&r.link) && !owned.contains(&r.link)
        {
            owned.push(r.link);
        }
    }
    Ok(owned)
}

/// Watches ImageStreams until `stop` resolves, handing what changed to
/// `scheduler`.
pub async fn run(
    scheduler: Scheduler,
    config: ImageStreamConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let client = client(config.kubeconfig.as_deref()).await?;
    let gvk = GroupVersionKind::gvk("image.openshift.io", "v1", "ImageStream");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "imagestreams");
    let api: Api<DynamicObject> = match &config.namespace {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    };
    // The runtime watcher lists, then watches from the list's version,
    // with bookmarks; on 410 Gone or a broken watch it lists again. The
    // default backoff keeps an unreachable API server from being hammered.
    let probe_api = api.clone();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let reconciler = scheduler.reconciler().clone();
    let mut tags = StreamTags::new(config.pull_from.clone());
    // The watcher does not surface bookmarks: a cheap list (one item) now
    // and then tells "quiet" from "stalled" for the watch-stalled alert.
    let mut probe_tick = tokio::time::interval(Duration::from_secs(60));
    tokio::pin!(stop);
    loop {
        let batch = tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = probe_tick.tick() => {
                match probe_api.list(&kube::api::ListParams::default().limit(1)).await {
                    Ok(_) => reconciler
                        .metrics
                        .watch_last_event
                        .set(exploder_common::history::now() as f64),
                    Err(e) => tracing::warn!("imagestream: the API server does not answer: {e}"),
                }
                Vec::new()
            }
            next = events.next() => match next {
                None => return Err("the ImageStream watch ended".into()),
                Some(Err(e)) => {
                    tracing::warn!("imagestream watch: {e}; retrying with backoff");
                    continue;
                }
                Some(Ok(event)) => {
                    let m = &reconciler.metrics;
                    m.watch_last_event.set(exploder_common::history::now() as f64);
                    if matches!(event, watcher::Event::Init) {
                        m.watch_relists.inc();
                    }
                    let owned = if matches!(event, watcher::Event::InitDone) {
                        let (store, ns) = (reconciler.store.clone(), config.namespace.clone());
                        match tokio::task::spawn_blocking(move || owned_links(&store, ns.as_deref())).await {
                            Ok(Ok(owned)) => owned,
                            Ok(Err(e)) => {
                                tracing::warn!("imagestream: reading the links it owns: {e}");
                                Vec::new()
                            }
                            Err(e) => {
                                tracing::warn!("imagestream: reading the links it owns: {e}");
                                Vec::new()
                            }
                        }
                    } else {
                        Vec::new()
                    };
                    decide(&mut tags, event, &owned)
                }
            },
        };
        for event in batch {
            scheduler.submit(DECIDED_BY, event, None);
        }
    }
}

/// One watch event → what to reconcile. `owned`: the links this source
/// owns in the store, for the end of a relist.
fn decide(
    tags: &mut StreamTags,
    event: watcher::Event<DynamicObject>,
    owned: &[LinkTarget],
) -> Vec<Event> {
    let names = |o: &DynamicObject| {
        (
            o.metadata.namespace.clone().unwrap_or_default(),
            o.metadata.name.clone().unwrap_or_default(),
        )
    };
    match event {
        watcher::Event::Init => {
            tags.relist_started();
            Vec::new()
        }
        watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
            let (ns, name) = names(&o);
            let exports = exports_of(o.metadata.annotations.as_ref());
            tags.applied(&ns, &name, &o.data, &exports)
        }
        watcher::Event::Delete(o) => {
            let (ns, name) = names(&o);
            tags.deleted(&ns, &name, &o.data)
        }
        watcher::Event::InitDone => tags.relist_done(owned),
    }
}

/// A client from `kubeconfig`, else the usual places (KUBECONFIG,
/// ~/.kube/config, the in-cluster service account).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, String> {
    // kube would pick ring itself (the only provider built); installing it
    // here keeps the choice in one place.
    exploder_common::tls::install_provider();
    let kube_config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("reading kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration (in-cluster or KUBECONFIG): {e}"))?,
    };
    kube::Client::try_from(kube_config).map_err(|e| format!("Kubernetes client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn stream(tags: &[(&str, &str)]) -> Value {
        serde_json::json!({
            "status": {
                "dockerImageRepository": "image-registry.openshift-image-registry.svc:5000/team/app",
                "tags": tags.iter().map(|(t, d)| serde_json::json!({
                    "tag": t,
                    "items": [{
                        "dockerImageReference": format!("image-registry.openshift-image-registry.svc:5000/team/app@{d}"),
                        "image": d,
                        "generation": 1,
                        "created": "2026-11-24T10:00:00Z"
                    }]
                })).collect::<Vec<_>>()
            }
        })
    }

    fn describe(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Tag(t) => format!("tag {} {}", t.link, t.upstream),
                Event::Gone { link } => format!("gone {link}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn new_and_moved_tags_are_events_unchanged_ones_are_not() {
        let mut s = StreamTags::new(None);
        let first = s.applied("team", "app", &stream(&[("v1", D1), ("v2", D1)]), &[]);
        assert_eq!(first.len(), 2);
        assert!(
            s.applied("team", "app", &stream(&[("v1", D1), ("v2", D1)]), &[])
                .is_empty()
        );
        let moved = describe(&s.applied("team", "app", &stream(&[("v1", D2), ("v2", D1)]), &[]));
        assert_eq!(
            moved,
            [format!(
                "tag team/app:v1 image-registry.openshift-image-registry.svc:5000/team/app@{D2}"
            )]
        );
    }

    #[test]
    fn a_removed_tag_and_a_deleted_stream_are_unlinked() {
        let mut s = StreamTags::new(None);
        s.applied("team", "app", &stream(&[("v1", D1), ("v2", D1)]), &[]);
        let removed = describe(&s.applied("team", "app", &stream(&[("v1", D1)]), &[]));
        assert_eq!(removed, ["gone team/app:v2"]);
        let deleted = describe(&s.deleted("team", "app", &stream(&[("v1", D1)])));
        assert_eq!(deleted, ["gone team/app:v1"]);
    }

    #[test]
    fn a_relist_of_unchanged_streams_does_nothing_and_finds_deleted_ones() {
        let mut s = StreamTags::new(None);
        s.applied("team", "app", &stream(&[("v1", D1)]), &[]);
        s.applied("team", "gone", &stream(&[("v1", D1)]), &[]);
        s.relist_started();
        assert!(
            s.applied("team", "app", &stream(&[("v1", D1)]), &[])
                .is_empty()
        );
        assert_eq!(describe(&s.relist_done(&[])), ["gone team/gone:v1"]);
    }

    #[test]
    fn a_relist_unlinks_owned_links_no_stream_has_even_unseen_ones() {
        let mut s = StreamTags::new(None);
        let link = |ns: &str, name: &str, tag: &str| StreamTags::link(ns, name, tag);
        s.relist_started();
        s.applied("team", "app", &stream(&[("v1", D1)]), &[]);
        let owned = [
            link("team", "app", "v1"),
            link("team", "app", "old"),
            link("team", "deleted", "v1"),
        ];
        assert_eq!(
            describe(&s.relist_done(&owned)),
            ["gone team/app:old", "gone team/deleted:v1"]
        );
    }

    #[test]
    fn a_service_account_token_becomes_registry_credentials_unless_some_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "sa-token\n").unwrap();
        let config = ImageStreamConfig {
            registry_token_file: Some(token),
            ..Default::default()
        };
        let mut registry = Default::default();
        config.apply_token(&mut registry).unwrap();
        assert_eq!(registry.username.as_deref(), Some("serviceaccount"));
        assert_eq!(registry.password.as_deref(), Some("sa-token"));
        let mut given = exploder_common::fetch::registry::RegistryOptions {
            username: Some("bot".into()),
            ..Default::default()
        };
        config.apply_token(&mut given).unwrap();
        assert_eq!(given.username.as_deref(), Some("bot"));
    }

    #[test]
    fn pull_from_replaces_the_internal_registry_host() {
        let mut s = StreamTags::new(Some("registry.example.com".into()));
        let e = s.applied("team", "app", &stream(&[("v1", D1)]), &[]);
        let Event::Tag(t) = &e[0] else { panic!() };
        assert_eq!(t.upstream.registry, "registry.example.com");
        assert_eq!(t.upstream.repository, "team/app");
        assert_eq!(t.hint.as_ref().map(|d| d.to_string()), Some(D1.to_string()));
    }
}
