//! The process's TLS crypto provider.
//!
//! exploder's TLS is rustls built with one crypto provider, ring, for every
//! user of it: reqwest (the registry fetcher and the management API),
//! oci-client's reqwest, lapin (AMQP over TLS) and kube (the ImageStream
//! watch, the leader Lease). Why ring, and not aws-lc-rs: docs/ARCHITECTURE.md,
//! "TLS".
//!
//! reqwest built without a provider of its own (`rustls-no-provider`) takes
//! the process-level default and panics when a client is built before one
//! is installed, even for a plain-HTTP client. lapin's connector and kube's
//! client would install ring themselves, but take an installed default
//! first. So every place that builds a client calls [`install_provider`]
//! first, and the binaries call it at the start of `main`.

use rustls::crypto::CryptoProvider;

/// Installs ring as the process-level rustls provider, unless one is
/// installed already. Cheap and idempotent: call it before building any
/// TLS client.
pub fn install_provider() {
    if CryptoProvider::get_default().is_none() {
        // Err: another thread installed one in the meantime; only ring is
        // built, so that one is ring too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_ring_once_and_lets_reqwest_build_clients() {
        install_provider();
        let installed = CryptoProvider::get_default().expect("a provider is installed");
        let ring = rustls::crypto::ring::default_provider();
        let names = |p: &CryptoProvider| -> Vec<String> {
            p.cipher_suites
                .iter()
                .map(|s| format!("{:?}", s.suite()))
                .collect()
        };
        assert_eq!(names(installed), names(&ring));
        // Idempotent: a second call keeps the same provider.
        install_provider();
        assert!(std::sync::Arc::ptr_eq(
            installed,
            CryptoProvider::get_default().unwrap()
        ));
        // reqwest without a provider of its own builds clients now.
        reqwest::Client::builder()
            .build()
            .expect("reqwest builds a TLS client on ring");
    }
}
