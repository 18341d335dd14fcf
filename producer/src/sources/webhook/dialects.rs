//! The payloads each kind of sender posts, turned into [`Event`]s.
//!
//! Every repository, tag and digest goes through [`Reference::parse`]
//! before it becomes an event: they end up as store paths
//! (`images/<namespace>/<image>/<tag>`), and a name like `../../etc` must
//! be refused here, as in any reference.

use exploder_common::digest::Digest;
use exploder_common::reference::{Reference, is_valid_tag};
use exploder_common::store::ImageName;
use serde::Deserialize;
use serde_json::Value;

use crate::event::{Event, TagEvent, default_link};

/// One item of a payload: an event to reconcile, or why there is none.
// An item lives for one request and is moved into the reconciler: boxing
// the (larger) event would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    Event(Event),
    Ignored(String),
}

/// A payload that is not what the endpoint takes; the message is the
/// one-line reason of the 400 answer.
pub type Malformed = String;

/// Media types of what a tag can name; other pushes (layers, configs) are
/// ignored.
const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Malformed> {
    serde_json::from_slice(body).map_err(|e| format!("malformed payload: {e}"))
}

/// `host/repository[:tag][@digest]`, validated as a reference.
fn reference(
    host: &str,
    repository: &str,
    tag: Option<&str>,
    digest: Option<&str>,
) -> Result<Reference, Malformed> {
    let mut s = format!("{host}/{repository}");
    // A tag field holds a tag and nothing else: `v2@sha256:…` would
    // become a digest reference, and the payload, not the registry, would
    // choose what the tag is linked to.
    if let Some(t) = tag
        && !is_valid_tag(t)
    {
        return Err(format!(
            "tag {t:?} is not a tag: expected 1 to 128 characters of [A-Za-z0-9_.-], not \
             starting with '.' or '-' (what a tag is linked to comes from the registry, never \
             from the payload)"
        ));
    }
    if let Some(t) = tag {
        s.push(':');
        s.push_str(t);
    }
    if let Some(d) = digest {
        s.push('@');
        s.push_str(d);
    }
    let r = Reference::parse(&s).map_err(|e| e.to_string())?;
    registry_host(&r.registry)?;
    // Docker's normalisation must not move the repository elsewhere
    // (`host/x` with a host that is not one would).
    if r.repository != repository && r.repository != format!("library/{repository}") {
        return Err(format!("repository {repository:?} does not name one image"));
    }
    Ok(r)
}

/// Checks that `host` (`name[:port]`, `ip[:port]`, `[ipv6][:port]`) could
/// name a registry at all: a port in 1..=65535 and a host that is an IP
/// address or a DNS name. An event naming one that cannot be is malformed
/// (400), not a network error to retry: no connection would ever succeed.
/// A name whose last label is numeric (`1K7.0.0.1`) must be an IPv4
/// address, as URL parsers read it.
pub fn registry_host(host: &str) -> Result<(), Malformed> {
    let bad = |why: &str| Err(format!("registry host {host:?}: {why}"));
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return bad("an IPv6 address without its closing bracket");
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("not an IPv6 address");
        }
        match after {
            "" => (None, None),
            p => match p.strip_prefix(':') {
                Some(p) => (None, Some(p)),
                None => return bad("junk after the IPv6 address"),
            },
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return bad("the port must be a number from 1 to 65535"),
        }
    }
    let Some(name) = name else { return Ok(()) };
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if name.is_empty() || name.len() > 253 {
        return bad("not a host name");
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return bad("not a host name (letters, digits and '-' in dot-separated labels)");
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("ends in a number but is not an IPv4 address");
    }
    Ok(())
}

/// "a tag changed": the link follows the reference's repository and tag.
fn tag_event(upstream: Reference, hint: Option<Digest>) -> Item {
    let link = default_link(&upstream);
    Item::Event(Event::Tag(TagEvent {
        upstream,
        link,
        hint,
        exports: Vec::new(),
    }))
}

fn digest(s: Option<&str>) -> Result<Option<Digest>, Malformed> {
    s.map(|d| d.parse().map_err(|e| format!("digest {d:?}: {e}")))
        .transpose()
}

/// The host of `http(s)://host[:port]/...` or `host[:port]/...`.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().filter(|h| !h.is_empty())
}

// ---- distribution (docker registry) notifications ----------------------

#[derive(Deserialize)]
struct Envelope {
    events: Vec<Value>,
}

#[derive(Deserialize)]
struct RegistryEvent {
    action: String,
    target: RegistryTarget,
    #[serde(default)]
    request: Option<RegistryRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegistryTarget {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    digest: Option<String>,
    repository: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Deserialize)]
struct RegistryRequest {
    #[serde(default)]
    host: Option<String>,
}

/// The distribution envelope (`events.v1+json`: `{"events": [...]}`), or a
/// single event (`events.v2+json` sends one per envelope). `pull_from`
/// overrides the host the registry reports (it reports the one the pusher
/// used, which may not be reachable from here).
pub fn registry(body: &[u8], pull_from: Option<&str>) -> Result<Vec<Item>, Malformed> {
    let value: Value = parse(body)?;
    if value.get("events").is_none() {
        // One event per envelope (`events.v2+json`): the body is the event.
        let e: RegistryEvent =
            serde_json::from_value(value).map_err(|e| format!("malformed event: {e}"))?;
        return Ok(vec![registry_event(e, pull_from)?]);
    }
    let envelope: Envelope =
        serde_json::from_value(value).map_err(|e| format!("malformed envelope: {e}"))?;
    // Within an envelope, a bad event is answered on its own (ignored, with
    // the reason): a 400 for the whole envelope would make the registry
    // retry it forever, holding back every event queued behind it.
    Ok(envelope
        .events
        .into_iter()
        .map(|v| {
            serde_json::from_value::<RegistryEvent>(v)
                .map_err(|e| format!("malformed event: {e}"))
                .and_then(|e| registry_event(e, pull_from))
                .unwrap_or_else(|reason| Item::Ignored(format!("refused: {reason}")))
        })
        .collect())
}

fn registry_event(e: RegistryEvent, pull_from: Option<&str>) -> Result<Item, Malformed> {
    let t = &e.target;
    let host = pull_from
        .or_else(|| t.url.as_deref().and_then(url_host))
        .or_else(|| e.request.as_ref().and_then(|r| r.host.as_deref()))
        .ok_or_else(|| format!("event for {} names no registry host", t.repository))?;
    match e.action.as_str() {
        "push" => {
            let is_manifest = t
                .media_type
                .as_deref()
                .is_some_and(|m| MANIFEST_TYPES.contains(&m));
            if !is_manifest {
                return Ok(Item::Ignored(format!(
                    "push of {} (not a manifest)",
                    t.media_type.as_deref().unwrap_or("an unknown media type")
                )));
            }
            let Some(tag) = &t.tag else {
                // A multi-platform push sends each platform's manifest by
                // digest, then the index by tag: the tag's push does the
                // work, once.
                return Ok(Item::Ignored(format!(
                    "push of {} by digest only: nothing to link (the tag's push explodes it)",
                    t.repository
                )));
            };
            let upstream = reference(host, &t.repository, Some(tag), None)?;
            Ok(tag_event(upstream, digest(t.digest.as_deref())?))
        }
        "delete" => match (&t.tag, &t.digest) {
            // The registry is asked about the tag: gone → unlink.
            (Some(tag), _) => Ok(tag_event(
                reference(host, &t.repository, Some(tag), None)?,
                None,
            )),
            (None, Some(d)) => {
                let upstream = reference(host, &t.repository, None, None)?;
                let name = ImageName::from_repository(&upstream.repository);
                Ok(Item::Event(Event::ManifestDeleted {
                    upstream: Reference {
                        tag: None,
                        ..upstream
                    },
                    name,
                    digest: digest(Some(d))?.expect("given"),
                }))
            }
            (None, None) => Err(format!("delete event for {} names nothing", t.repository)),
        },
        other => Ok(Item::Ignored(format!("{other} event"))),
    }
}

// ---- Docker Hub ----------------------------------------------------------

#[derive(Deserialize)]
struct HubPayload {
    push_data: HubPush,
    repository: HubRepository,
}

#[derive(Deserialize)]
struct HubPush {
    tag: String,
}

#[derive(Deserialize)]
struct HubRepository {
    repo_name: String,
}

/// Docker Hub's webhook: no digest, so the tag is looked up (a `HEAD`,
/// which does not count against pull limits).
pub fn dockerhub(body: &[u8], pull_from: Option<&str>) -> Result<Vec<Item>, Malformed> {
    let p: HubPayload = parse(body)?;
    let host = pull_from.unwrap_or("docker.io");
    let upstream = reference(host, &p.repository.repo_name, Some(&p.push_data.tag), None)?;
    Ok(vec![tag_event(upstream, None)])
}

// ---- Harbor --------------------------------------------------------------

#[derive(Deserialize)]
struct HarborPayload {
    #[serde(rename = "type")]
    kind: String,
    event_data: HarborData,
}

#[derive(Deserialize)]
struct HarborData {
    #[serde(default)]
    resources: Vec<HarborResource>,
    repository: HarborRepository,
}

#[derive(Deserialize)]
struct HarborResource {
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    resource_url: Option<String>,
}

#[derive(Deserialize)]
struct HarborRepository {
    repo_full_name: String,
}

/// Harbor's `PUSH_ARTIFACT` and `DELETE_ARTIFACT`; other types are ignored.
pub fn harbor(body: &[u8], pull_from: Option<&str>) -> Result<Vec<Item>, Malformed> {
    let p: HarborPayload = parse(body)?;
    let repository = &p.event_data.repository.repo_full_name;
    let push = match p.kind.as_str() {
        "PUSH_ARTIFACT" => true,
        "DELETE_ARTIFACT" => false,
        other => return Ok(vec![Item::Ignored(format!("{other} event"))]),
    };
    // A bad resource is refused on its own; the others still count.
    let resource = |r: &HarborResource| -> Result<Item, Malformed> {
        let host = pull_from
            .or_else(|| r.resource_url.as_deref().and_then(url_host))
            .ok_or_else(|| format!("resource of {repository} has no resource_url"))?;
        Ok(match (&r.tag, push) {
            (Some(tag), true) => tag_event(
                reference(host, repository, Some(tag), None)?,
                digest(r.digest.as_deref())?,
            ),
            (Some(tag), false) => tag_event(reference(host, repository, Some(tag), None)?, None),
            (None, true) => Item::Ignored(format!("push of {repository} by digest only")),
            (None, false) => {
                let d = digest(r.digest.as_deref())?.ok_or_else(|| {
                    format!("delete of {repository} names neither tag nor digest")
                })?;
                let upstream = reference(host, repository, None, None)?;
                Item::Event(Event::ManifestDeleted {
                    name: ImageName::from_repository(&upstream.repository),
                    upstream: Reference {
                        tag: None,
                        ..upstream
                    },
                    digest: d,
                })
            }
        })
    };
    Ok(p.event_data
        .resources
        .iter()
        .map(|r| resource(r).unwrap_or_else(|reason| Item::Ignored(format!("refused: {reason}"))))
        .collect())
}

// ---- Quay ----------------------------------------------------------------

#[derive(Deserialize)]
struct QuayPayload {
    repository: String,
    docker_url: String,
    #[serde(default)]
    updated_tags: Vec<String>,
}

/// Quay's repository push notification: one event per updated tag.
pub fn quay(body: &[u8], pull_from: Option<&str>) -> Result<Vec<Item>, Malformed> {
    let p: QuayPayload = parse(body)?;
    let host = pull_from
        .or_else(|| url_host(&p.docker_url))
        .ok_or_else(|| format!("docker_url {:?} names no host", p.docker_url))?;
    // A bad tag is refused on its own; the others still count.
    Ok(p.updated_tags
        .iter()
        .map(
            |tag| match reference(host, &p.repository, Some(tag), None) {
                Ok(r) => tag_event(r, None),
                Err(reason) => Item::Ignored(format!("refused: {reason}")),
            },
        )
        .collect())
}

// ---- generic ------------------------------------------------------------

#[derive(Deserialize)]
struct GenericPayload {
    reference: String,
}

/// `{"reference": "host/repo:tag"}` (or `@digest`), for any sender that can
/// sign a body.
pub fn generic(body: &[u8]) -> Result<Vec<Item>, Malformed> {
    let p: GenericPayload = parse(body)?;
    let upstream = Reference::parse(&p.reference).map_err(|e| e.to_string())?;
    registry_host(&upstream.registry)?;
    let hint = upstream.digest.clone();
    Ok(vec![tag_event(upstream, hint)])
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn tag_of(item: &Item) -> (&str, &str, Option<&str>, String) {
        match item {
            Item::Event(Event::Tag(t)) => (
                t.upstream.registry.as_str(),
                t.upstream.repository.as_str(),
                t.upstream.tag.as_deref(),
                t.link.to_string(),
            ),
            other => panic!("not a tag event: {other:?}"),
        }
    }

    #[test]
    fn a_registry_manifest_push_by_tag_is_a_tag_event_with_its_digest() {
        let body = format!(
            r#"{{"events":[{{"id":"1","action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","repository":"team/app","url":"http://127.0.0.1:5000/v2/team/app/manifests/{D}","tag":"v1"}},"request":{{"host":"127.0.0.1:5000"}}}}]}}"#
        );
        let items = registry(body.as_bytes(), None).unwrap();
        assert_eq!(
            tag_of(&items[0]),
            (
                "127.0.0.1:5000",
                "team/app",
                Some("v1"),
                "team/app:v1".into()
            )
        );
        let Item::Event(Event::Tag(t)) = &items[0] else {
            unreachable!()
        };
        assert_eq!(t.hint.as_ref().map(|d| d.to_string()), Some(D.to_string()));
    }

    #[test]
    fn a_single_event_envelope_is_accepted_too() {
        let body = format!(
            r#"{{"action":"push","target":{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{D}","repository":"team/app","tag":"v2"}}}}"#
        );
        let items = registry(body.as_bytes(), Some("reg.internal:5000")).unwrap();
        assert_eq!(tag_of(&items[0]).0, "reg.internal:5000");
    }

    #[test]
    fn layer_pushes_pulls_and_digest_only_pushes_are_ignored() {
        let body = format!(
            r#"{{"events":[
              {{"action":"push","target":{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{D}","repository":"team/app","url":"http://r:5000/v2/team/app/blobs/{D}"}}}},
              {{"action":"pull","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","repository":"team/app","url":"http://r:5000/x","tag":"v1"}}}},
              {{"action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","repository":"team/app","url":"http://r:5000/x"}}}}
            ]}}"#
        );
        let items = registry(body.as_bytes(), None).unwrap();
        assert_eq!(items.len(), 3);
        assert!(
            items.iter().all(|i| matches!(i, Item::Ignored(_))),
            "{items:?}"
        );
    }

    #[test]
    fn a_registry_delete_by_digest_asks_about_every_linked_tag() {
        let body = format!(
            r#"{{"events":[{{"action":"delete","target":{{"digest":"{D}","repository":"team/app"}},"request":{{"host":"127.0.0.1:5000"}}}}]}}"#
        );
        let items = registry(body.as_bytes(), None).unwrap();
        let Item::Event(Event::ManifestDeleted { upstream, name, .. }) = &items[0] else {
            panic!("{items:?}")
        };
        assert_eq!(upstream.registry, "127.0.0.1:5000");
        assert_eq!(
            (name.namespace.as_str(), name.image.as_str()),
            ("team", "app")
        );
    }

    #[test]
    fn a_registry_host_no_connection_could_reach_is_malformed() {
        for ok in [
            "registry:5000",
            "127.0.0.1:5000",
            "quay.io",
            "docker.io",
            "[::1]:5000",
            "localhost",
            "a-b.example.com:443",
        ] {
            assert_eq!(registry_host(ok), Ok(()), "{ok}");
        }
        for bad in [
            "127.0.0.1:99999",
            "127.0.0.1:0",
            "127.0.0.1:+80",
            "1K7.0.0.1",
            "1K7.0.0.1:5000",
            "256.1.1.1",
            "-x.example",
            "[::1",
            "[zz]:5000",
            "a..b",
        ] {
            assert!(registry_host(bad).is_err(), "{bad}");
        }
        let body = br#"{"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"a/b","tag":"t","url":"http://127.0.0.1:99999/v2/a/b/manifests/t"}}"#;
        let e = registry(body, None).unwrap_err();
        assert!(e.contains("port"), "{e}");
    }

    fn refused(items: &[Item]) -> bool {
        matches!(items, [Item::Ignored(r)] if r.starts_with("refused"))
    }

    #[test]
    fn a_repository_or_tag_that_climbs_out_of_the_store_is_refused() {
        for repo in ["../../etc", "team/../../x", "/abs", "team//app", "Team/App"] {
            let body = format!(
                r#"{{"events":[{{"action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","repository":"{repo}","url":"http://r:5000/x","tag":"v1"}}}}]}}"#
            );
            assert!(
                refused(&registry(body.as_bytes(), None).unwrap()),
                "{repo} accepted"
            );
        }
        let body = format!(
            r#"{{"events":[{{"action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","repository":"team/app","url":"http://r:5000/x","tag":".."}}}}]}}"#
        );
        assert!(
            refused(&registry(body.as_bytes(), None).unwrap()),
            "tag .. accepted"
        );
    }

    #[test]
    fn garbage_is_malformed_with_a_reason_and_a_bad_event_only_refused() {
        let e = registry(b"{not json", None).unwrap_err();
        assert!(e.starts_with("malformed payload"), "{e}");
        assert!(registry(br#"{"action":"push"}"#, None).is_err());
        assert!(registry(br#"{"something":"else"}"#, None).is_err());
        let items = registry(br#"{"events":[{"action":"push"}]}"#, None).unwrap();
        assert!(refused(&items), "{items:?}");
    }

    #[test]
    fn a_docker_hub_push_is_looked_up_by_tag() {
        let body = br#"{"callback_url":"https://registry.hub.docker.com/u/x/cb","push_data":{"pushed_at":1,"pusher":"x","tag":"latest"},"repository":{"repo_name":"team/app","namespace":"team","name":"app"}}"#;
        let items = dockerhub(body, None).unwrap();
        assert_eq!(
            tag_of(&items[0]),
            (
                "docker.io",
                "team/app",
                Some("latest"),
                "team/app:latest".into()
            )
        );
    }

    #[test]
    fn harbor_pushes_and_deletes_become_tag_events() {
        let body = format!(
            r#"{{"type":"PUSH_ARTIFACT","occur_at":1,"operator":"admin","event_data":{{"resources":[{{"digest":"{D}","tag":"v1","resource_url":"harbor.example.com/library/app:v1"}}],"repository":{{"name":"app","namespace":"library","repo_full_name":"library/app"}}}}}}"#
        );
        let items = harbor(body.as_bytes(), None).unwrap();
        assert_eq!(
            tag_of(&items[0]),
            (
                "harbor.example.com",
                "library/app",
                Some("v1"),
                "library/app:v1".into()
            )
        );
        let delete = body.replace("PUSH_ARTIFACT", "DELETE_ARTIFACT");
        assert_eq!(
            tag_of(&harbor(delete.as_bytes(), None).unwrap()[0]).2,
            Some("v1")
        );
        let scan = body.replace("PUSH_ARTIFACT", "SCANNING_COMPLETED");
        assert!(matches!(
            harbor(scan.as_bytes(), None).unwrap()[0],
            Item::Ignored(_)
        ));
    }

    #[test]
    fn quay_sends_one_event_per_updated_tag() {
        let body = br#"{"repository":"team/app","namespace":"team","name":"app","docker_url":"quay.io/team/app","homepage":"https://quay.io/repository/team/app","updated_tags":["v1","latest"]}"#;
        let items = quay(body, None).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            tag_of(&items[1]),
            (
                "quay.io",
                "team/app",
                Some("latest"),
                "team/app:latest".into()
            )
        );
    }

    #[test]
    fn a_bad_quay_or_harbor_tag_is_refused_alone() {
        let body = br#"{"repository":"team/app","docker_url":"quay.io/team/app","updated_tags":["v1","bad tag!","v2"]}"#;
        let items = quay(body, None).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(tag_of(&items[2]).2, Some("v2"));
        assert!(matches!(&items[1], Item::Ignored(r) if r.starts_with("refused:")));
        let body = br#"{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"tag":"../x","resource_url":"h.io/team/app:../x"},{"tag":"v1","resource_url":"h.io/team/app:v1"}],"repository":{"repo_full_name":"team/app"}}}"#;
        let items = harbor(body, None).unwrap();
        assert!(matches!(&items[0], Item::Ignored(r) if r.starts_with("refused:")));
        assert_eq!(tag_of(&items[1]).2, Some("v1"));
    }

    #[test]
    fn a_tag_field_carrying_a_digest_is_refused_in_every_dialect() {
        let forged = format!("v2@{D}");
        // distribution: push and delete.
        for action in ["push", "delete"] {
            let body = format!(
                r#"{{"events":[{{"action":"{action}","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","repository":"team/app","url":"http://r:5000/x","tag":"{forged}"}}}}]}}"#
            );
            let items = registry(body.as_bytes(), None).unwrap();
            assert!(refused(&items), "{action} of {forged} accepted: {items:?}");
        }
        // Harbor: push and delete.
        for kind in ["PUSH_ARTIFACT", "DELETE_ARTIFACT"] {
            let body = format!(
                r#"{{"type":"{kind}","event_data":{{"resources":[{{"digest":"{D}","tag":"{forged}","resource_url":"h.io/team/app:v2"}}],"repository":{{"repo_full_name":"team/app"}}}}}}"#
            );
            let items = harbor(body.as_bytes(), None).unwrap();
            assert!(
                refused(&items),
                "Harbor {kind} of {forged} accepted: {items:?}"
            );
        }
        // Quay: refused alone.
        let body = format!(
            r#"{{"repository":"team/app","docker_url":"quay.io/team/app","updated_tags":["{forged}","v3"]}}"#
        );
        let items = quay(body.as_bytes(), None).unwrap();
        assert!(matches!(&items[0], Item::Ignored(r) if r.starts_with("refused:")));
        assert_eq!(tag_of(&items[1]).2, Some("v3"));
        // Docker Hub: the whole payload is malformed.
        let body = format!(
            r#"{{"push_data":{{"tag":"{forged}"}},"repository":{{"repo_name":"team/app"}}}}"#
        );
        let e = dockerhub(body.as_bytes(), None).unwrap_err();
        assert!(e.contains("is not a tag"), "{e}");
        // Nor a second tag smuggled in after a colon.
        let body = br#"{"push_data":{"tag":"v2:v1"},"repository":{"repo_name":"team/app"}}"#;
        assert!(dockerhub(body, None).is_err());
    }

    #[test]
    fn a_generic_reference_is_parsed_like_any_reference() {
        let items = generic(br#"{"reference":"127.0.0.1:5000/team/app:v3"}"#).unwrap();
        assert_eq!(tag_of(&items[0]).3, "team/app:v3");
        assert!(generic(br#"{"reference":"not a reference"}"#).is_err());
        assert!(generic(br#"{"ref":"x"}"#).is_err());
    }
}
