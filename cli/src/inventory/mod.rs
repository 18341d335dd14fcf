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
    #[arg(long, env = "EXPLODER_STORE")]
    store: PathBuf,
    #[command(flatten)]
    registry_paths: RegistryPathArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
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
