//! Who may post to a webhook: a shared bearer token (what distribution's
//! `notifications.endpoints[].headers` and Harbor's "auth header" send),
//! an HMAC-SHA256 signature of a timestamp and the body (`X-Signature:
//! t=<unix seconds>,v1=<hex>`), or both.
//!
//! A signature of the body alone could be replayed for ever (an old push
//! moving a tag back), so the signed string is `"<t>.<body>"` (Stripe's
//! scheme): a signature more than [`TOLERANCE`] away from the producer's
//! clock is refused, and [`super`] remembers the signatures it took within
//! that window so an exact replay inside it is refused too. The old
//! `sha256=<hex>` of the body alone is refused, naming the new format: it
//! cannot be made safe.
//!
//! Tokens are compared as SHA-256 digests of each, in constant time: a
//! constant-time compare of the raw values would still leak their length.

use std::time::Duration;

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// How far a signature's timestamp may be from the producer's clock, either
/// way (clock skew and the sender's retries included).
pub const TOLERANCE: Duration = Duration::from_secs(300);

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
        now: u64,
    ) -> Result<Option<Verified>, &'static str> {
        self.check_headers(headers, query_token, now)?;
        self.check_signature(headers, body, now)
    }

    /// What can be checked before the body is read: the bearer token, and
    /// that a signature is there, well formed and signed within
    /// [`TOLERANCE`] of `now` (unix seconds).
    ///
    /// `query_token` is the `token=` of the URL's query, for senders that
    /// cannot set headers (Docker Hub, Quay): used only when there is no
    /// `Authorization` header at all. Prefer headers where the sender allows.
    pub fn check_headers(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
        now: u64,
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
            if !bool::from(Sha256::digest(sent).ct_eq(&Sha256::digest(token))) {
                return Err("wrong bearer token");
            }
        }
        if self.hmac_secret.is_some() {
            signature(headers)?.fresh(now)?;
        }
        Ok(())
    }

    /// Whether a request is authenticated before its body is read: only
    /// with a token (a signature needs the body).
    pub fn verified_before_body(&self) -> bool {
        self.token.is_some()
    }

    /// The HMAC signature of `"<t>.<body>"`, when the endpoint has a
    /// secret: what was verified, for the replay check.
    pub fn check_signature(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: u64,
    ) -> Result<Option<Verified>, &'static str> {
        let Some(secret) = &self.hmac_secret else {
            return Ok(None);
        };
        let sig = signature(headers)?;
        sig.fresh(now)?;
        let mac = mac(secret, sig.at, body);
        // `ct_eq` compares in constant time; any `v1` may match (a sender
        // rotating its secret sends one per secret).
        let matched = sig
            .v1
            .iter()
            .find(|v1| bool::from(v1.as_slice().ct_eq(mac.as_slice())))
            .ok_or("X-Signature does not match the timestamp and body")?;
        Ok(Some(Verified {
            at: sig.at,
            mac: hex::encode(matched),
        }))
    }
}

/// A signature that matched: its timestamp, and the MAC (hex) that
/// identifies the delivery for the replay check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub at: u64,
    pub mac: String,
}

/// `X-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`.
struct Signature {
    at: u64,
    v1: Vec<Vec<u8>>,
}

impl Signature {
    /// Refused outside [`TOLERANCE`] of `now`, either way.
    fn fresh(&self, now: u64) -> Result<(), &'static str> {
        if self.at.abs_diff(now) > TOLERANCE.as_secs() {
            return Err(
                "X-Signature's timestamp t= is more than 5 minutes from the producer's clock",
            );
        }
        Ok(())
    }
}

const FORMAT: &str = "X-Signature must be t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">";

fn signature(headers: &HeaderMap) -> Result<Signature, &'static str> {
    let sent = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or("missing X-Signature header")?;
    if sent.starts_with("sha256=") {
        return Err(
            "X-Signature sha256=<hex> signs the body alone and could be replayed: send \
             t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">",
        );
    }
    let mut at = None;
    let mut v1 = Vec::new();
    for part in sent.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) if t.bytes().all(|b| b.is_ascii_digit()) => {
                at = Some(t.parse::<u64>().map_err(|_| FORMAT)?);
            }
            Some(("v1", hex_sig)) if v1.len() < 4 => {
                v1.push(hex::decode(hex_sig).map_err(|_| FORMAT)?);
            }
            // Other schemes (v0, ...) are skipped, as Stripe's are.
            Some((k, _)) if k != "t" && k != "v1" => {}
            _ => return Err(FORMAT),
        }
    }
    match at {
        Some(at) if !v1.is_empty() => Ok(Signature { at, v1 }),
        _ => Err(FORMAT),
    }
}

fn mac(secret: &str, at: u64, body: &[u8]) -> Vec<u8> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(at.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// `t=<at>,v1=<hex>`: what a sender puts in `X-Signature` for `body` sent
/// at `at` (unix seconds); documented for senders, used by tests.
pub fn sign(secret: &str, at: u64, body: &[u8]) -> String {
    format!("t={at},v1={}", hex::encode(mac(secret, at, body)))
}

/// [`sign`] at the current time.
pub fn sign_now(secret: &str, body: &[u8]) -> String {
    sign(secret, unix_now(), body)
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    impl Auth {
        fn check_h(&self, h: &HeaderMap, body: &[u8]) -> Result<Option<Verified>, &'static str> {
            self.check(h, None, body, NOW)
        }
    }

    fn hmac_only() -> Auth {
        Auth {
            hmac_secret: Some("k".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_token_in_the_query_stands_in_for_a_missing_header() {
        let auth = Auth {
            token: Some("s3cret".into()),
            ..Default::default()
        };
        assert!(
            auth.check(&HeaderMap::new(), Some("s3cret"), b"", NOW)
                .is_ok()
        );
        assert!(
            auth.check(&HeaderMap::new(), Some("nope"), b"", NOW)
                .is_err()
        );
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
            auth.check_headers(&h, Some("s3cret"), NOW),
            Err("the Authorization header is not ASCII")
        );
    }

    #[test]
    fn a_signature_is_required_and_its_time_checked_before_the_body_is_read() {
        let auth = hmac_only();
        assert!(auth.check_headers(&HeaderMap::new(), None, NOW).is_err());
        let h = headers(&[("x-signature", &sign("k", NOW, b"body"))]);
        assert!(auth.check_headers(&h, None, NOW).is_ok());
        assert!(auth.check_headers(&h, None, NOW + 301).is_err());
        assert!(auth.check_signature(&h, b"body", NOW).is_ok());
        assert!(auth.check_signature(&h, b"other", NOW).is_err());
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
        assert!(
            auth.check_h(&headers(&[("authorization", "Bearer s3cretX")]), b"")
                .is_err()
        );
        assert!(auth.check_h(&headers(&[]), b"").is_err());
    }

    #[test]
    fn an_hmac_signature_must_match_the_timestamp_and_the_body() {
        let auth = hmac_only();
        let sig = sign("k", NOW, b"body");
        let verified = auth
            .check_h(&headers(&[("x-signature", &sig)]), b"body")
            .unwrap()
            .unwrap();
        assert_eq!(verified.at, NOW);
        assert!(
            auth.check_h(&headers(&[("x-signature", &sig)]), b"bodY")
                .is_err()
        );
        // The same MAC under another timestamp: the time is signed too.
        let moved = sig.replace(&format!("t={NOW}"), &format!("t={}", NOW + 1));
        assert!(
            auth.check_h(&headers(&[("x-signature", &moved)]), b"body")
                .is_err()
        );
        for junk in ["sha256=zz", "t=1,v1=zz", "v1=00", "t=x,v1=00", ""] {
            assert!(
                auth.check_h(&headers(&[("x-signature", junk)]), b"body")
                    .is_err(),
                "{junk}"
            );
        }
    }

    #[test]
    fn a_signature_outside_five_minutes_is_refused_either_way() {
        let auth = hmac_only();
        for (at, ok) in [
            (NOW - 300, true),
            (NOW + 300, true),
            (NOW - 301, false),
            (NOW + 301, false),
        ] {
            let h = headers(&[("x-signature", &sign("k", at, b"b"))]);
            assert_eq!(auth.check_h(&h, b"b").is_ok(), ok, "signed at {at}");
        }
    }

    #[test]
    fn the_body_only_signature_is_refused_naming_the_new_format() {
        let auth = hmac_only();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k").unwrap();
        mac.update(b"body");
        let old = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let err = auth
            .check_h(&headers(&[("x-signature", &old)]), b"body")
            .unwrap_err();
        assert!(err.contains("t=<unix seconds>,v1="), "{err}");
    }

    #[test]
    fn any_of_several_v1_may_match_and_other_schemes_are_skipped() {
        let auth = hmac_only();
        let good = sign("k", NOW, b"b");
        let v1 = good.split_once(",v1=").unwrap().1;
        let h = headers(&[(
            "x-signature",
            &format!("t={NOW},v0=abc,v1={},v1={v1}", "00".repeat(32)),
        )]);
        assert!(auth.check_h(&h, b"b").is_ok());
    }

    #[test]
    fn an_endpoint_without_secrets_refuses_everyone() {
        assert!(Auth::default().check_h(&headers(&[]), b"").is_err());
    }
}
