//! exploder's handlers and the in-process pipeline.
//!
//! - [`inroot`]: path resolution inside a rootfs (`RESOLVE_IN_ROOT`
//!   semantics); every write below goes through it;
//! - [`layer`]: the layer store: ingest one layer blob (verify, decompress,
//!   extract) into `layers/sha256/<diff_id>/`, published atomically;
//! - [`finalize`]: apply an image's layers into `digest/sha256/<manifest>/`
//!   and link the tag;
//! - [`explode`]: the whole pipeline in one process (`exploder explode`);
//! - [`export`]: disk images (ext4, erofs, squashfs) of an exploded image;
//! - [`fleet`]: the same handlers behind the job queue (`exploder-worker`);
//! - [`gc`]: retention and garbage collection of the store;
//! - [`metrics`]: the worker's Prometheus metrics;
//! - [`space`]: whether the store has room for work (a full store waits,
//!   and says so).

pub mod explode;
pub mod export;
pub mod finalize;
pub mod fleet;
pub mod gc;
pub mod inroot;
pub mod layer;
pub mod meta;
pub mod metrics;
pub mod space;
