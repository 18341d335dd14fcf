//! Event sources. Each one hears about changes its own way and hands
//! [`crate::event::Event`]s to the [`crate::reconcile::Reconciler`].
//!
//! - [`webhook`]: registries post to `/webhook/<endpoint>`;
//! - [`poll`]: a watch list of repositories, scanned every interval;
//! - [`imagestream`]: OpenShift ImageStreams, watched through the API server.

pub mod imagestream;
pub mod poll;
pub mod webhook;
