//! Whether an image may be exploded: the signature policy.
//!
//! One owner for everything about trusting an image, used by `exploder
//! explode`, the fan-out (`exploder enqueue`, the producer) and the fleet's
//! image handler:
//!
//! - [`policy`]: `containers-policy.json(5)`, its scopes and requirements;
//! - [`identity`]: `signedIdentity`, a signature's claimed reference against
//!   the one asked for;
//! - [`registries`]: `containers-registries.d(5)` and plain flags, where
//!   signatures are;
//! - [`lookup`]: fetching them (lookaside storage, sigstore attachments);
//! - [`simple`], [`sigstore`], [`payload`]: verifying them.
//!
//! [`Trust::verify`] checks the image's manifest digest (and the index's,
//! when the reference named an index: a signature on either counts) and
//! answers [`Accepted`] — which `exploder_queue::fanout::FanOut`'s enqueue takes, so nothing is
//! enqueued unchecked — or a [`TrustError`]: refused for good, with a
//! [`Refusal`] reason, or a failure to read signatures that may pass.
//! Without a policy every image is accepted, as before.
//!
//! A crate of its own rather than `common::trust`: it brings OpenPGP and
//! ECDSA (rPGP, RustCrypto) that only the three places that decide need,
//! and it is where a newcomer looks for "why was this image refused".
//!

pub mod identity;
pub mod lookup;
pub mod payload;
pub mod policy;
pub mod registries;
pub mod sigstore;
pub mod simple;

use std::fmt;
use std::path::PathBuf;

use exploder_common::digest::Digest;
use exploder_common::fetch::{FetchError, Fetcher};
use exploder_common::image::ResolvedImage;
use exploder_common::reference::{ImageRef, Reference};

use identity::SignedIdentity;
use policy::{Policy, Requirement};
use registries::SignatureSources;

/// Where `registries.d` is read from when no directory is given.
pub const DEFAULT_REGISTRIES_D: &str = "/etc/containers/registries.d";

/// What the flags say (see `exploder_args::TrustArgs`).
#[derive(Clone, Debug, Default)]
pub struct TrustOptions {
    /// `containers-policy.json`; none: accept every image.
    pub policy: Option<PathBuf>,
    /// `registries.d`; none: [`DEFAULT_REGISTRIES_D`] if it exists.
    pub registries_d: Option<PathBuf>,
    /// Lookaside base URL for registries `registries.d` says nothing of.
    pub lookaside: Option<String>,
    /// Look for sigstore attachments where `registries.d` says nothing.
    pub sigstore_attachments: bool,
}

/// Why an image is refused. The text is what operators see (and what a
/// dead-lettered job's `x-exploder-error` says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A signature was required and none was found.
    NoSignature,
    /// Signatures were found, none by a key the policy trusts.
    UnknownKey,
    /// A trusted key signed, but it has expired (see [`simple`]).
    KeyExpired,
    /// A trusted key signed, but its owner revoked it.
    KeyRevoked,
    /// A trusted key signed another digest or another identity.
    OtherImage,
    /// Signed by a trusted key, but the payload is not one we read.
    Invalid,
    /// The scope's requirement is `reject`.
    Rejected,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::NoSignature => "no signature",
            Refusal::UnknownKey => "signed by an unknown key",
            Refusal::KeyExpired => "signed by an expired key",
            Refusal::KeyRevoked => "signed by a revoked key",
            Refusal::OtherImage => "signature for another image",
            Refusal::Invalid => "invalid signature",
            Refusal::Rejected => "policy rejects this repository",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// Refused for good: trying again does not change the answer. The
    /// text leaves `image` out: every caller says which image it was
    /// checking (`exploder: REF: refused ...`, a job's reference, an
    /// event's), and saying it twice buries the reason.
    #[error("refused by the signature policy: {reason} ({detail})")]
    Refused {
        image: String,
        reason: Refusal,
        detail: String,
    },
    /// Signatures could not be read (a registry or lookaside failure).
    #[error("reading signatures: {0}")]
    Fetch(FetchError),
    /// The policy or the signature configuration is broken.
    #[error("{what}: {message}")]
    Config { what: String, message: String },
}

impl TrustError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            TrustError::Fetch(e) => e.is_transient(),
            TrustError::Refused { .. } | TrustError::Config { .. } => false,
        }
    }

    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            TrustError::Refused { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

/// An image the policy accepts: proof of a check, for the fan-out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub manifest_digest: Digest,
    /// What satisfied the policy, for logs (empty without a policy).
    pub by: Vec<String>,
    /// The registry of the reference checked (`None` for a local source):
    /// a job read from a registry's storage directory carries it, so its
    /// worker checks the same scope.
    pub registry: Option<String>,
}

impl Accepted {
    /// For an image no policy applies to: only callers that check nothing
    /// by design (tests, the resync re-driving a recorded request).
    pub fn unchecked(manifest_digest: &Digest) -> Accepted {
        Accepted {
            manifest_digest: manifest_digest.clone(),
            by: Vec::new(),
            registry: None,
        }
    }
}

/// What is being checked: a registry reference (the `docker` transport)
/// or a local source, which has no signatures.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    Docker(&'a Reference),
    /// `oci`, `oci-archive`, `docker-archive`, `file` (a registry's
    /// storage directory named directly), with the text to show.
    Local {
        transport: &'static str,
        shown: &'a str,
    },
}

impl Subject<'_> {
    fn shown(&self) -> String {
        match self {
            Subject::Docker(r) => r.to_string(),
            Subject::Local { shown, .. } => shown.to_string(),
        }
    }
}

/// The loaded policy and where signatures are.
pub struct Trust {
    policy: Option<Policy>,
    sources: SignatureSources,
    http: std::sync::OnceLock<reqwest::Client>,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trust")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Default for Trust {
    fn default() -> Self {
        Trust::accept_all()
    }
}

/// The signatures of one image, read once and shared by its requirements.
#[derive(Default)]
struct Found {
    /// (digest it was stored under, the signature).
    simple: Option<Vec<(Digest, Vec<u8>)>>,
    sigstore: Option<Vec<(Digest, lookup::Attached)>>,
}

impl Trust {
    /// No policy: every image is accepted, nothing is fetched.
    pub fn accept_all() -> Trust {
        Trust {
            policy: None,
            sources: SignatureSources::default(),
            http: std::sync::OnceLock::new(),
        }
    }

    /// Reads the policy, its keys and `registries.d` (errors now, not at the
    /// first image).
    pub fn load(opts: &TrustOptions) -> Result<Trust, TrustError> {
        let Some(path) = &opts.policy else {
            return Ok(Trust::accept_all());
        };
        let policy = Policy::load(path)?;
        let dir = opts
            .registries_d
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_REGISTRIES_D));
        let sources = SignatureSources::load(
            Some(&dir),
            opts.lookaside.clone(),
            opts.sigstore_attachments,
        )?;
        Ok(Trust {
            policy: Some(policy),
            sources,
            http: std::sync::OnceLock::new(),
        })
    }

    /// Whether a policy is configured (else everything is accepted).
    pub fn is_enforcing(&self) -> bool {
        self.policy.is_some()
    }

    /// [`Trust::verify`] for a resolved image asked for as `reference`.
    pub async fn verify_image(
        &self,
        reference: &ImageRef,
        shown: &str,
        fetcher: &Fetcher,
        image: &ResolvedImage,
    ) -> Result<Accepted, TrustError> {
        let subject = match reference {
            ImageRef::Registry(r) => Subject::Docker(r),
            ImageRef::OciLayout { .. } => Subject::Local {
                transport: "oci",
                shown,
            },
            ImageRef::OciArchive { .. } => Subject::Local {
                transport: "oci-archive",
                shown,
            },
            ImageRef::DockerArchive { .. } => Subject::Local {
                transport: "docker-archive",
                shown,
            },
            ImageRef::StorageDir { .. } => Subject::Local {
                transport: "file",
                shown,
            },
        };
        self.verify(
            subject,
            fetcher,
            &image.manifest_digest,
            image.index_digest.as_ref(),
        )
        .await
    }

    /// Checks the image whose platform manifest is `manifest` (reached
    /// through the index `index`, if any) against the policy for
    /// `subject`. Every requirement of the most specific scope must hold.
    pub async fn verify(
        &self,
        subject: Subject<'_>,
        fetcher: &Fetcher,
        manifest: &Digest,
        index: Option<&Digest>,
    ) -> Result<Accepted, TrustError> {
        let registry = match subject {
            Subject::Docker(r) => Some(r.registry.clone()),
            Subject::Local { .. } => None,
        };
        let Some(policy) = &self.policy else {
            return Ok(Accepted {
                registry,
                ..Accepted::unchecked(manifest)
            });
        };
        let scope = match subject {
            Subject::Docker(r) => policy.for_docker(r),
            Subject::Local { transport, .. } => policy.for_transport(transport),
        };
        let refused = |reason: Refusal, detail: String| TrustError::Refused {
            image: subject.shown(),
            reason,
            detail,
        };
        // The signed digests: the index a reference names is what signers
        // sign; a per-platform signature counts too.
        let digests: Vec<&Digest> = index.into_iter().chain([manifest]).collect();
        let mut found = Found::default();
        let mut by = Vec::new();
        for requirement in &scope.requirements {
            let what = format!("{} of {}", requirement.kind(), scope.name);
            match requirement {
                Requirement::InsecureAcceptAnything => by.push(what),
                Requirement::Reject => return Err(refused(Refusal::Rejected, what)),
                Requirement::SignedBy { .. } | Requirement::SigstoreSigned { .. } => {
                    let Subject::Docker(reference) = subject else {
                        return Err(refused(
                            Refusal::NoSignature,
                            format!("{what}: signatures are read for registry images only"),
                        ));
                    };
                    let outcome = self
                        .check_signed(requirement, reference, fetcher, &digests, &mut found)
                        .await?;
                    match outcome {
                        Ok(ok) => by.push(format!("{what}: {ok}")),
                        Err((reason, why)) => {
                            return Err(refused(reason, format!("{what}: {why}")));
                        }
                    }
                }
            }
        }
        Ok(Accepted {
            manifest_digest: manifest.clone(),
            by,
            registry,
        })
    }

    fn http(&self) -> &reqwest::Client {
        self.http.get_or_init(|| {
            exploder_common::tls::install_provider();
            reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(30))
                .read_timeout(std::time::Duration::from_secs(60))
                .build()
                .unwrap_or_default()
        })
    }

    /// One signature requirement: `Ok(Ok(description))` when a signature
    /// satisfies it, `Ok(Err(reason))` when none does.
    async fn check_signed(
        &self,
        requirement: &Requirement,
        reference: &Reference,
        fetcher: &Fetcher,
        digests: &[&Digest],
        found: &mut Found,
    ) -> Result<Result<String, (Refusal, String)>, TrustError> {
        let lookup = self.sources.lookup(reference);
        // Each candidate's verdict: the best failure is reported.
        let mut worst = (Refusal::NoSignature, String::new());
        let mut note = |reason: Refusal, why: String| {
            let rank = |r: Refusal| match r {
                Refusal::NoSignature => 0,
                Refusal::UnknownKey => 1,
                Refusal::KeyExpired => 2,
                Refusal::KeyRevoked => 3,
                Refusal::Invalid => 4,
                Refusal::OtherImage => 5,
                Refusal::Rejected => 6,
            };
            if rank(reason) > rank(worst.0) || worst.1.is_empty() {
                worst = (reason, why);
            }
        };
        let shown: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
        match requirement {
            Requirement::SignedBy { keys, identity } => {
                let Some(base) = &lookup.lookaside else {
                    return Ok(Err((
                        Refusal::NoSignature,
                        format!(
                            "no lookaside storage configured for {} (registries.d or \
                             --signature-lookaside)",
                            policy::repository_name(reference)
                        ),
                    )));
                };
                if found.simple.is_none() {
                    let mut all = Vec::new();
                    for d in digests {
                        for s in
                            lookup::lookaside(self.http(), base, &reference.repository, d).await?
                        {
                            all.push(((*d).clone(), s));
                        }
                    }
                    found.simple = Some(all);
                }
                let sigs = found.simple.as_ref().expect("just read");
                note(
                    Refusal::NoSignature,
                    format!("none in {base} for {}", shown.join(" or ")),
                );
                for (digest, sig) in sigs {
                    match keys.verify(sig) {
                        Err(simple::Failure::UnknownKey) => note(
                            Refusal::UnknownKey,
                            format!(
                                "a signature of {digest} is by none of {}",
                                keys.fingerprints().join(", ")
                            ),
                        ),
                        Err(simple::Failure::Unusable(u)) => note(
                            if u.is_revoked() {
                                Refusal::KeyRevoked
                            } else {
                                Refusal::KeyExpired
                            },
                            format!("a signature of {digest} is by a trusted key, but {u}"),
                        ),
                        Err(simple::Failure::Malformed(m)) => note(
                            Refusal::UnknownKey,
                            format!("a signature of {digest} is not an OpenPGP signature: {m}"),
                        ),
                        Ok((payload, fingerprint)) => {
                            match judge(
                                &payload,
                                payload::SIMPLE_SIGNING_TYPE,
                                digest,
                                reference,
                                identity,
                            ) {
                                Ok(()) => return Ok(Ok(format!("signed by {fingerprint}"))),
                                Err((r, why)) => note(r, why),
                            }
                        }
                    }
                }
            }
            Requirement::SigstoreSigned { keys, identity } => {
                if !lookup.sigstore_attachments {
                    return Ok(Err((
                        Refusal::NoSignature,
                        format!(
                            "sigstore attachments are not enabled for {} (registries.d \
                             use-sigstore-attachments or --sigstore-attachments)",
                            policy::repository_name(reference)
                        ),
                    )));
                }
                if found.sigstore.is_none() {
                    let mut all = Vec::new();
                    for d in digests {
                        for a in lookup::attachments(fetcher, d).await? {
                            all.push(((*d).clone(), a));
                        }
                    }
                    found.sigstore = Some(all);
                }
                let sigs = found.sigstore.as_ref().expect("just read");
                note(
                    Refusal::NoSignature,
                    format!("no sigstore attachment for {}", shown.join(" or ")),
                );
                for (digest, a) in sigs {
                    if !keys.verify(&a.payload, &a.signature) {
                        note(
                            Refusal::UnknownKey,
                            format!(
                                "a sigstore signature of {digest} is by none of the policy's keys"
                            ),
                        );
                        continue;
                    }
                    match judge(
                        &a.payload,
                        payload::SIGSTORE_TYPE,
                        digest,
                        reference,
                        identity,
                    ) {
                        Ok(()) => return Ok(Ok("a sigstore signature".into())),
                        Err((r, why)) => note(r, why),
                    }
                }
            }
            _ => unreachable!("only signature requirements are checked here"),
        }
        Ok(Err(worst))
    }
}

/// A payload whose signature holds: does it vouch for this digest and
/// this reference?
fn judge(
    payload: &[u8],
    kind: &str,
    digest: &Digest,
    reference: &Reference,
    identity: &SignedIdentity,
) -> Result<(), (Refusal, String)> {
    let claim = payload::parse(payload, kind).map_err(|e| (Refusal::Invalid, e))?;
    if &claim.manifest_digest != digest {
        return Err((
            Refusal::OtherImage,
            format!(
                "a signature stored for {digest} signs {}",
                claim.manifest_digest
            ),
        ));
    }
    if !identity.matches(reference, &claim.docker_reference) {
        return Err((
            Refusal::OtherImage,
            format!(
                "signed as {}, which {identity:?} does not accept for {reference}",
                claim.docker_reference
            ),
        ));
    }
    Ok(())
}
