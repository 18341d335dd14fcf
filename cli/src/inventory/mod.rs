//! What is in the store, and taking a tag out of it: `exploder ls`,
//! `inspect`, `history`, `rm`, and the block list (`block`, `unblock`). They read the store (and its requests);
//! none needs the broker or Redis.
//!
//! A reference names a tag as everywhere else (`registry/repo:tag`,
//! `repo:tag`, `oci:PATH`): it is turned into `images/<ns>/<image>/<tag>`
//! by the same rule `explode` links with (`fetch::plan::link_for`, with
//! `--registry-path`).

mod block;
mod history;
mod inspect;
mod ls;
mod rm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use exploder_args::RegistryPathArgs;
use exploder_common::digest::Digest;
use exploder_common::fetch::plan::{PlanOptions, link_for};
use exploder_common::job::LinkTarget;
use exploder_common::reference::ImageRef;
use exploder_common::store::StoreLayout;

use crate::Output;

pub use block::{BlockArgs, UnblockArgs, block, unblock};
pub use history::{HistoryArgs, history};
pub use inspect::{InspectArgs, inspect};
pub use ls::{LsArgs, ls};
pub use rm::{RmArgs, rm};

/// The store, how references map into it, and the output format.
#[derive(Args, Clone)]
pub struct StoreArgs {
    /// The store.
    #[arg(long, env = "EXPLODER_STORE", value_parser = exploder_args::existing_store)]
    store: PathBuf,
    #[command(flatten)]
    registry_paths: RegistryPathArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t, env = "EXPLODER_OUTPUT")]
    output: Output,
}

impl StoreArgs {
    fn layout(&self) -> StoreLayout {
        StoreLayout::new(&self.store)
    }

    /// The tag `reference` names in the store; a usage error (exit 2) if it
    /// does not parse.
    fn link(&self, reference: &str) -> Result<LinkTarget, ExitCode> {
        let parsed = ImageRef::parse(reference).map_err(|e| {
            eprintln!("exploder: {reference}: {e}");
            ExitCode::from(2)
        })?;
        let opts = PlanOptions {
            registry_paths: self.registry_paths.paths(&[]).map_err(|e| {
                eprintln!("exploder: {e}");
                ExitCode::from(2)
            })?,
            ..PlanOptions::default()
        };
        let (name, tag, _) = link_for(&parsed, &opts);
        StoreLayout::check_tag(&name, &tag).map_err(|e| {
            eprintln!("exploder: {reference}: {e}");
            ExitCode::from(2)
        })?;
        Ok(LinkTarget::new(&name, &tag))
    }
}

pub use exploder_common::store::quota::human_bytes;

/// The image in the store whose manifest digest starts with `prefix`
/// (`sha256:5ee84f47330b`, as `ls` prints it): `None` when `prefix` is
/// not the start of a sha256 digest, else the one image or a failure
/// (exit 1) saying there is none or which ones it could mean.
fn image_by_prefix(layout: &StoreLayout, prefix: &str) -> Option<Result<Digest, ExitCode>> {
    let hex = prefix.strip_prefix("sha256:")?;
    if hex.is_empty() || hex.len() >= 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    let mut found: Vec<Digest> = std::fs::read_dir(layout.root().join("digest/sha256"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&hex))
        .filter_map(|name| format!("sha256:{name}").parse().ok())
        .collect();
    found.sort_by_key(|d| d.to_string());
    Some(match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => {
            eprintln!(
                "exploder: no image in the store has a digest starting with {prefix}: see `exploder ls`"
            );
            Err(ExitCode::from(1))
        }
        many => {
            let list: Vec<String> = many.iter().map(|d| d.to_string()).collect();
            eprintln!(
                "exploder: {prefix} could be any of {}: give more of the digest",
                list.join(", ")
            );
            Err(ExitCode::from(1))
        }
    })
}

/// The end of a listing that skipped `unreadable` entries of the store
/// (damaged files, each naming its path): each is said on stderr, and the
/// command fails (exit 1) after printing the rest, so that a script sees
/// the store needs a look.
fn skipped(unreadable: &[std::io::Error]) -> ExitCode {
    for e in unreadable {
        eprintln!("exploder: skipped a damaged entry of the store: {e}");
    }
    if unreadable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `sha256:0123456789ab`: a digest at a glance, as `docker images` shows.
pub fn short(digest: &impl std::fmt::Display) -> String {
    let full = digest.to_string();
    full.chars().take("sha256:".len() + 12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_at_a_glance() {
        assert_eq!(human_bytes(812), "812 B");
        assert_eq!(human_bytes(4 << 20), "4.0 MiB");
        assert_eq!(human_bytes(1_400_000_000), "1.3 GiB");
    }
}
