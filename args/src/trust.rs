//! Which images may be exploded: the signature policy and where signatures
//! are (see `exploder_trust`).

use std::path::PathBuf;

use clap::Args;
use exploder_trust::{Trust, TrustOptions};

/// The signature policy: `explode`, `enqueue`, the producer and the
/// workers (each checks: the fan-out before publishing, the worker again
/// before linking).
#[derive(Args, Clone, Debug, Default)]
pub struct TrustArgs {
    /// Signature policy, containers-policy.json(5) as skopeo and podman read
    /// it (signedBy GPG keys, sigstoreSigned public keys, reject,
    /// insecureAcceptAnything; the most specific docker scope wins). An
    /// image it refuses is never linked. None: every image is accepted.
    #[arg(long, value_name = "FILE", env = "EXPLODER_POLICY")]
    policy: Option<PathBuf>,
    /// Directory of registries.d(5) files saying where each registry's
    /// signatures are (lookaside, use-sigstore-attachments) [default:
    /// /etc/containers/registries.d].
    #[arg(
        long = "registries-d",
        value_name = "DIR",
        env = "EXPLODER_REGISTRIES_D"
    )]
    registries_d: Option<PathBuf>,
    /// Lookaside storage of simple signing (GPG) signatures, file:// or
    /// http(s)://, for the registries registries.d does not configure.
    #[arg(
        long = "signature-lookaside",
        value_name = "URL",
        env = "EXPLODER_SIGNATURE_LOOKASIDE"
    )]
    lookaside: Option<String>,
    /// Read sigstore signatures attached in the registry (the
    /// sha256-<hex>.sig tag cosign and skopeo write) for the registries
    /// registries.d does not configure.
    #[arg(long = "sigstore-attachments", env = "EXPLODER_SIGSTORE_ATTACHMENTS")]
    sigstore_attachments: bool,
}

impl TrustArgs {
    pub fn options(&self) -> TrustOptions {
        TrustOptions {
            policy: self.policy.clone(),
            registries_d: self.registries_d.clone(),
            lookaside: self.lookaside.clone().filter(|s| !s.is_empty()),
            sigstore_attachments: self.sigstore_attachments,
        }
    }

    /// The policy with its keys and registries.d read; an error names the
    /// file and what is wrong with it.
    pub fn load(&self) -> Result<Trust, String> {
        Trust::load(&self.options()).map_err(|e| format!("--policy: {e}"))
    }
}
