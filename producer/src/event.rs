//! What every source produces: a statement about one tag upstream, and what
//! came of it.
//!
//! Sources do not decide anything. A webhook's "push" or "delete", a poll
//! that saw a digest change and an ImageStream tag that moved all become
//! "look at this tag again" ([`Event::Tag`]); the reconciler asks the
//! registry what the tag is *now* and makes the link match. That is what
//! makes unordered, repeated and stale events harmless: the event only says
//! where to look, the registry says what is true.

use exploder_common::digest::Digest;
use exploder_common::fetch::plan::link_tag;
use exploder_common::job::LinkTarget;
use exploder_common::reference::Reference;
use exploder_common::store::{DiskFormat, ImageName};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Tag(TagEvent),
    /// The tag is gone at its source (an ImageStream tag or stream was
    /// deleted): unlink it.
    Gone {
        link: LinkTarget,
    },
    /// A manifest was deleted by digest (the registry names no tag): every
    /// linked tag of `name` is looked at again.
    ManifestDeleted {
        /// Registry and repository (tag and digest unset).
        upstream: Reference,
        name: ImageName,
        digest: Digest,
    },
}

/// Something happened to a tag: make `link` match what `upstream` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagEvent {
    /// What to resolve. By tag, the registry is asked what the tag is now
    /// (gone: unlink). By digest (an ImageStream's current item), the digest
    /// is authoritative.
    pub upstream: Reference,
    pub link: LinkTarget,
    /// The digest the event claims the tag has (a push's digest): a repeat
    /// of an event already handled is dropped without asking the registry.
    pub hint: Option<Digest>,
    /// Disk images the source wants of the image (its `export:` setting,
    /// or the ImageStream's `exploder.io/export` annotation).
    pub exports: Vec<DiskFormat>,
}

/// What handling one event did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Jobs were published for this image.
    Accepted { link: String, manifest: Digest },
    /// The link already points there, or its jobs are already queued.
    Duplicate { link: String },
    /// The tag is gone upstream; its link was removed (or was not there).
    Unlinked { link: String },
    /// Nothing to do for this event (a layer push, a pull, a push by digest
    /// only...).
    Ignored { reason: String },
    /// The image cannot be exploded (not found, unsupported, over quota):
    /// retrying will not help, so the sender is not asked to.
    Rejected { link: String, reason: String },
    /// The image is one the fleet refuses to serve: blocked (`exploder
    /// block`; `digest` is the one blocked, `reason` the administrator's)
    /// or refused by the signature policy (`digest` is the image's,
    /// `reason` the refusal). Nothing is enqueued; retrying will not help.
    Refused {
        link: String,
        digest: Digest,
        reason: String,
    },
    /// Webhooks only: the event is recorded (in the events queue) and its
    /// reconcile goes on behind the answer (it was not settled within
    /// `answer_within_ms`: a registry slow or unavailable, retried).
    Pending { link: String },
}

impl Outcome {
    /// The label in `exploder_producer_events_total{outcome=...}`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Accepted { .. } => "accepted",
            Outcome::Duplicate { .. } => "duplicate",
            Outcome::Unlinked { .. } => "unlinked",
            Outcome::Ignored { .. } => "ignored",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Refused { .. } => "refused",
            Outcome::Pending { .. } => "pending",
        }
    }
}

/// The link a registry reference gets when nothing maps it elsewhere: the
/// repository's last component is the image, the rest the namespace, and
/// the tag as `exploder enqueue` links it.
pub fn default_link(upstream: &Reference) -> LinkTarget {
    LinkTarget::new(
        &ImageName::from_repository(&upstream.repository),
        &link_tag(&upstream.tag, &upstream.digest),
    )
}
