//! Who may post to a webhook: a shared bearer token (what distribution's
//! `notifications.endpoints[].headers` and Harbor's "auth header" send),
//! an HMAC-SHA256 signature of the body (`X-Signature: sha256=<hex>`), or
//! both. Secrets are compared in constant time.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The secrets one endpoint checks; at least one is set (see
/// [`crate::config`]).
#[derive(Clone, Default)]
pub struct Auth {
    pub token: Option<String>,
    pub hmac_secret: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("hmac_secret", &self.hmac_secret.as_ref().map(|_| "***"))
            .finish()
    }
}

pub const SIGNATURE_HEADER: &str = "x-signature";

impl Auth {
    pub fn is_configured(&self) -> bool {
        self.token.is_some() || self.hmac_secret.is_some()
    }

    /// `Ok` if every configured check passes; otherwise the one-line reason
    /// of the 401 answer (never a secret). [`Self::check_headers`], then
    /// [`Self::check_signature`].
    pub fn check(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
        body: &[u8],
    ) -> Result<(), &'static str> {
        self.check_headers(headers, query_token)?;
        self.check_signature(headers, body)
    }

    /// What can be checked before the body is read: the bearer token, and
    /// that a signature is there and well formed.
    ///
    /// `query_token` is the `token=` of the URL's query, for senders that
    /// cannot set headers (Docker Hub, Quay): used only when there is no
    /// `Authorization` header at all. Prefer headers where the sender allows.
    pub fn check_headers(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<(), &'static str> {
        if !self.is_configured() {
            return Err("this endpoint has no credentials configured");
        }
        if let Some(token) = &self.token {
            let sent = match headers.get(http::header::AUTHORIZATION) {
                Some(v) => v
                    .to_str()
                    .map_err(|_| "the Authorization header is not ASCII")?,
                None => query_token.ok_or("missing Authorization header (or ?token=)")?,
            };
            // "Bearer <token>", or the bare value (Harbor sends its "auth
            // header" setting as is).
            let sent = sent.strip_prefix("Bearer ").unwrap_or(sent).trim();
            if !bool::from(sent.as_bytes().ct_eq(token.as_bytes())) {
                return Err("wrong bearer token");
            }
        }
        if self.hmac_secret.is_some() {
            signature(headers)?;
        }
        Ok(())
    }

    /// The HMAC signature of `body`, when the endpoint has a secret.
    pub fn check_signature(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        if let Some(secret) = &self.hmac_secret {
            let sig = signature(headers)?;
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                .expect("HMAC takes keys of any length");
            mac.update(body);
            // `verify_slice` compares in constant time.
            mac.verify_slice(&sig)
                .map_err(|_| "X-Signature does not match the body")?;
        }
        Ok(())
    }
}

/// The `X-Signature: sha256=<hex>` header's bytes.
fn signature(headers: &HeaderMap) -> Result<Vec<u8>, &'static str> {
    let sent = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or("missing X-Signature header")?;
    let hex_sig = sent
        .strip_prefix("sha256=")
        .ok_or("X-Signature must be sha256=<hex>")?;
    hex::decode(hex_sig).map_err(|_| "X-Signature must be sha256=<hex>")
}

/// `sha256=<hex>` of `body` under `secret`: what a sender puts in
/// `X-Signature` (used by tests and documented for senders).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    impl Auth {
        fn check_h(&self, h: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
            self.check(h, None, body)
        }
    }

    #[test]
    fn a_token_in_the_query_stands_in_for_a_missing_header() {
        let auth = Auth {
            token: Some("s3cret".into()),
            ..Default::default()
        };
        assert!(auth.check(&HeaderMap::new(), Some("s3cret"), b"").is_ok());
        assert!(auth.check(&HeaderMap::new(), Some("nope"), b"").is_err());
    }

    #[test]
    fn an_unreadable_authorization_header_is_refused_not_replaced_by_the_query() {
        let auth = Auth {
            token: Some("s3cret".into()),
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert_eq!(
            auth.check_headers(&h, Some("s3cret")),
            Err("the Authorization header is not ASCII")
        );
    }

    #[test]
    fn a_signature_is_required_before_the_body_is_read() {
        let auth = Auth {
            hmac_secret: Some("k".into()),
            ..Default::default()
        };
        assert!(auth.check_headers(&HeaderMap::new(), None).is_err());
        let h = headers(&[("x-signature", &sign("k", b"body"))]);
        assert!(auth.check_headers(&h, None).is_ok());
        assert!(auth.check_signature(&h, b"body").is_ok());
        assert!(auth.check_signature(&h, b"other").is_err());
    }

    #[test]
    fn a_bearer_token_must_match() {
        let auth = Auth {
            token: Some("s3cret".into()),
            ..Default::default()
        };
        assert!(
            auth.check_h(&headers(&[("authorization", "Bearer s3cret")]), b"")
                .is_ok()
        );
        assert!(
            auth.check_h(&headers(&[("authorization", "s3cret")]), b"")
                .is_ok()
        );
        assert!(
            auth.check_h(&headers(&[("authorization", "Bearer s3cre")]), b"")
                .is_err()
        );
        assert!(auth.check_h(&headers(&[]), b"").is_err());
    }

    #[test]
    fn an_hmac_signature_must_match_the_body() {
        let auth = Auth {
            hmac_secret: Some("k".into()),
            ..Default::default()
        };
        let sig = sign("k", b"body");
        assert!(
            auth.check_h(&headers(&[("x-signature", &sig)]), b"body")
                .is_ok()
        );
        assert!(
            auth.check_h(&headers(&[("x-signature", &sig)]), b"bodY")
                .is_err()
        );
        assert!(
            auth.check_h(&headers(&[("x-signature", "sha256=zz")]), b"body")
                .is_err()
        );
    }

    #[test]
    fn an_endpoint_without_secrets_refuses_everyone() {
        assert!(Auth::default().check_h(&headers(&[]), b"").is_err());
    }
}
