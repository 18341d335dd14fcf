//! The `--quota` flag, declared once for every command that enqueues or
//! explodes (`exploder explode`, `enqueue`, `poll`, `exploder-producer`);
//! the rules themselves are the store's (`exploder_common::store::quota`).

pub use exploder_common::store::quota::{OverQuota, Quotas, parse_size};

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
