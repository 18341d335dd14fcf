//! `exploder ls [PATTERN]`: one line per tag in the store, like `kubectl
//! get`: its digest, where it came from, when it was linked, its size on
//! disk (layers only this image uses, and layers it shares), and a marker
//! for a tag whose request is still in progress or failed, or whose image
//! was blocked (`exploder block`: unlinked, listed until linked again).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::ExitCode;

use clap::Args;
use exploder_common::digest::Digest;
use exploder_common::history::{Change, rfc3339};
use exploder_common::request::{self, Request};
use exploder_common::store::unlinked_by_block;
use exploder_producer::sources::poll::glob_match;
use exploder_worker::gc::{image_layers, layer_bytes};
use serde::Serialize;

use super::{StoreArgs, human_bytes, short};
use crate::Output;
use crate::operator::render_table;

#[derive(Args)]
pub struct LsArgs {
    /// Only tags whose reference (namespace/image:tag) matches this glob
    /// (`*` any run of characters, `?` one), e.g. 'team/*' or '*:latest'.
    pattern: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

/// One line of `ls`.
#[derive(Serialize)]
struct Entry {
    reference: String,
    /// What the tag is linked to (none: requested, not linked yet).
    digest: Option<Digest>,
    /// `registry/repository` the linked image came from.
    source: Option<String>,
    linked_at: Option<String>,
    decided_by: Option<String>,
    /// Bytes of the layers only this image uses, and of those it shares.
    unique_bytes: u64,
    shared_bytes: u64,
    /// `in-progress` (a request for the tag is outstanding), `failed`,
    /// `blocked` (unlinked by `exploder block`).
    status: Option<&'static str>,
    /// Why its request failed, or why its image is blocked.
    failure: Option<String>,
}

pub fn ls(a: LsArgs) -> ExitCode {
    let layout = a.store.layout();
    let (tags, (requests, mut unreadable)) = match (layout.tags(), request::list(&layout)) {
        (Ok(t), Ok(r)) => (t, r),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!(
                "exploder: reading the store {}: {e}",
                layout.root().display()
            );
            return ExitCode::from(1);
        }
    };
    let requested: HashMap<String, &Request> =
        requests.iter().map(|r| (r.link.to_string(), r)).collect();
    // Tag → digest, for every linked tag: sizes count each layer once per
    // image, across the images the store links.
    let mut linked: BTreeMap<String, Digest> = BTreeMap::new();
    // Tags whose files do not read (a FIFO, a torn link): said and skipped.
    let mut damaged: HashSet<String> = HashSet::new();
    for link in &tags {
        match layout.read_link(&link.name(), &link.tag) {
            Ok(Some(d)) => {
                linked.insert(link.to_string(), d);
            }
            Ok(None) => {}
            Err(e) => {
                damaged.insert(link.to_string());
                unreadable.push(std::io::Error::new(e.kind(), format!("{link}: {e}")));
            }
        }
    }
    let mut layers_of: HashMap<Digest, Vec<Digest>> = HashMap::new();
    let mut users: HashMap<Digest, usize> = HashMap::new();
    for d in linked.values() {
        if !layers_of.contains_key(d) {
            let layers = image_layers(&layout, d);
            for l in &layers {
                *users.entry(l.clone()).or_default() += 1;
            }
            layers_of.insert(d.clone(), layers);
        }
    }
    let mut sizes: HashMap<Digest, u64> = HashMap::new();
    let mut size = |l: &Digest| {
        *sizes
            .entry(l.clone())
            .or_insert_with(|| layer_bytes(&layout.layer_dir(l)))
    };
    let mut entries = Vec::new();
    for link in &tags {
        let reference = link.to_string();
        if damaged.contains(&reference) {
            continue;
        }
        if a.pattern
            .as_deref()
            .is_some_and(|p| !glob_match(p, &reference))
        {
            continue;
        }
        let digest = linked.get(&reference).cloned();
        let request = requested.get(&reference);
        // A tag unlinked because its image was blocked stays listed, marked,
        // until it is linked again or removed.
        let blocked = match &digest {
            Some(d) => layout
                .exploded_image_block(d)
                .ok()
                .flatten()
                .map(|b| b.reason),
            None => layout.history(&link.name(), &link.tag).ok().and_then(|h| {
                h.last()
                    .and_then(|r| unlinked_by_block(r).map(String::from))
            }),
        };
        if digest.is_none() && request.is_none() && blocked.is_none() {
            // A deleted tag: its history is all that is left.
            continue;
        }
        let record = digest.as_ref().and_then(|d| {
            layout
                .history(&link.name(), &link.tag)
                .ok()?
                .into_iter()
                .rev()
                .find(|r| r.change == Change::Linked(d.clone()))
        });
        let (mut unique_bytes, mut shared_bytes) = (0, 0);
        for l in digest
            .as_ref()
            .and_then(|d| layers_of.get(d))
            .into_iter()
            .flatten()
        {
            if users.get(l).copied().unwrap_or(0) > 1 {
                shared_bytes += size(l);
            } else {
                unique_bytes += size(l);
            }
        }
        let status = request
            .and_then(|r| match &r.failed {
                Some(_) => Some("failed"),
                None if digest.as_ref() != Some(&r.job.manifest_digest) => Some("in-progress"),
                None => None,
            })
            .or(blocked.as_ref().map(|_| "blocked"));
        entries.push(Entry {
            reference,
            source: record
                .as_ref()
                .filter(|r| r.origin.registry.is_some())
                .map(|r| r.origin.source()),
            linked_at: record.as_ref().map(|r| rfc3339(r.at)),
            decided_by: record.as_ref().and_then(|r| r.origin.by.clone()),
            digest,
            unique_bytes,
            shared_bytes,
            status,
            failure: request.and_then(|r| r.failed.clone()).or(blocked),
        });
    }
    match a.store.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&entries).expect("serializes")
        ),
        Output::Text if entries.is_empty() => {
            eprintln!("no tags in {}", layout.root().display());
        }
        Output::Text => {
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        e.reference.clone(),
                        e.digest.as_ref().map_or("-".into(), short),
                        e.source.clone().unwrap_or_else(|| "-".into()),
                        e.linked_at.clone().unwrap_or_else(|| "-".into()),
                        human_bytes(e.unique_bytes),
                        human_bytes(e.shared_bytes),
                        e.status.unwrap_or("").to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                render_table(
                    &[
                        "REFERENCE",
                        "DIGEST",
                        "SOURCE",
                        "LINKED",
                        "SIZE",
                        "SHARED",
                        "STATUS"
                    ],
                    &rows
                )
            );
        }
    }
    super::skipped(&unreadable)
}
