//! Flags that every command which enqueues, explodes or reads the store
//! shares with the producer (`exploder explode`, `enqueue`, `poll`, `ls`,
//! `rm`, ..., `exploder-producer`), declared once here. The rules they
//! feed are the store's (`exploder_common::store`).

use exploder_common::store::RegistryPaths;
use exploder_common::store::quota::Quotas;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct QuotaArgs {
    /// Storage quota of a namespace: NAMESPACE=SIZE (e.g. team=50GiB); an
    /// image that would take it over (counting the layers of what the
    /// namespace links and has in flight, once each) is refused.
    /// Repeatable, or comma-separated in EXPLODER_QUOTA.
    #[arg(
        long = "quota",
        value_name = "NAMESPACE=SIZE",
        env = "EXPLODER_QUOTA",
        value_delimiter = ','
    )]
    quotas: Vec<String>,
}

impl QuotaArgs {
    pub fn to_quotas(&self) -> Result<Quotas, String> {
        Quotas::parse(&self.quotas)
    }
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct RegistryPathArgs {
    /// Link the images of registry HOST under images/PREFIX/... instead of
    /// images/... (repeatable, or comma-separated in
    /// EXPLODER_REGISTRY_PATHS). Needed when two registries hold the same
    /// repository names: the store refuses to move a tag from one
    /// registry's image to another's.
    #[arg(
        long = "registry-path",
        value_name = "HOST=PREFIX",
        env = "EXPLODER_REGISTRY_PATHS",
        value_delimiter = ','
    )]
    registry_paths: Vec<String>,
}

impl RegistryPathArgs {
    /// The mapping, with `more` (from a config file) under the flags'.
    pub fn to_paths(&self, more: &[String]) -> Result<RegistryPaths, String> {
        let mut items = more.to_vec();
        items.extend(self.registry_paths.iter().cloned());
        RegistryPaths::parse(&items).map_err(|e| format!("--registry-path: {e}"))
    }
}
