//! Types and layout shared by every exploder crate.
//!
//! The data path is `sources → plan/fan-out → queue → handlers → store`;
//! this crate holds what more than one stage needs to agree on:
//!
//! - [`reference`]: parsing image references the way Docker does;
//! - [`digest`]: content digests (`sha256:<hex>`) and streaming verification;
//! - [`image`]: a resolved image (manifest, config, ordered layers);
//! - [`io`]: byte streams handed from async code to a blocking reader;
//! - [`fetch`]: the places image content comes from (registry API, a
//!   registry's storage directory, an OCI layout) and resolving a
//!   reference to an [`image::ResolvedImage`];
//! - [`job`]: the layer and image jobs of the fleet and their versioned
//!   wire format;
//! - [`store`]: the on-disk layout of the store and its atomic writes;
//! - [`history`]: a tag's history of links (and the RFC 3339 times in it);
//! - [`request`]: the links the fleet was asked for and has not made yet,
//!   recorded in the store so that no lost message can lose one;
//! - [`limits`]: the resource limits applied to untrusted layers;
//! - [`tls`]: the process's TLS crypto provider (ring), installed before
//!   any TLS client is built.

pub mod digest;
pub mod failpoint;
pub mod fetch;
pub mod history;
pub mod image;
pub mod io;
pub mod job;
pub mod limits;
pub mod open_files;
pub mod reference;
pub mod request;
pub mod store;
pub mod tls;
