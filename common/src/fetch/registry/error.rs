//! Registry answers as [`FetchError`]s: HTTP statuses, network failures,
//! oci-client's errors (whose 4xx statuses are recovered from the error
//! envelope in the body), and a fetch error handed to a blob's reader as an
//! `io::Error`.

use std::io;

use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};
use tracing::warn;

use super::FetchError;

/// An HTTP error status as a [`FetchError`]; `what` is "manifest <tag>" or
/// "blob <digest>".
pub(super) fn status_error(status: u16, what: &str, location: &str, message: String) -> FetchError {
    match status {
        401 | 403 => FetchError::Unauthorized {
            location: location.to_string(),
            status,
            who: String::new(),
        },
        404 => FetchError::NotFound {
            what: what.to_string(),
            location: location.to_string(),
        },
        _ => FetchError::Http {
            location: location.to_string(),
            status,
            message,
        },
    }
}

pub(super) fn network_error(location: &str, e: &(dyn std::error::Error + 'static)) -> FetchError {
    // reqwest's own message is terse ("error sending request"): add the causes.
    let mut message = e.to_string();
    let mut source = e.source();
    let mut certificate = bad_certificate(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        certificate = certificate.or_else(|| bad_certificate(cause));
        source = cause.source();
    }
    // Not a network error: retrying cannot change the certificate.
    if let Some(reason) = certificate {
        return FetchError::Certificate {
            location: location.to_string(),
            message: reason,
        };
    }
    FetchError::Network {
        location: location.to_string(),
        message,
    }
}

/// rustls's refusal of the peer's certificate, if `e` is one (hyper-rustls
/// hands it over inside an `io::Error`).
fn bad_certificate(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
        e.downcast_ref::<io::Error>()?
            .get_ref()?
            .downcast_ref::<rustls::Error>()
    })?;
    matches!(
        tls,
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
    )
    .then(|| tls.to_string())
}

/// oci-client keeps the body of a 4xx answer that carries an error envelope,
/// but not its status: take it back from the first error code.
fn envelope_status(envelope: &OciEnvelope) -> u16 {
    match envelope.errors.first().map(|e| &e.code) {
        Some(
            OciErrorCode::BlobUnknown
            | OciErrorCode::ManifestUnknown
            | OciErrorCode::NameUnknown
            | OciErrorCode::NotFound,
        ) => 404,
        Some(OciErrorCode::Unauthorized) => 401,
        Some(OciErrorCode::Denied) => 403,
        Some(OciErrorCode::Toomanyrequests) => 429,
        _ => 400,
    }
}

pub(super) fn oci_error(e: OciDistributionError, what: &str, location: &str) -> FetchError {
    use OciDistributionError as E;
    match e {
        E::RequestError(e) => network_error(location, &e),
        E::UnauthorizedError { .. } => FetchError::Unauthorized {
            location: location.to_string(),
            status: 401,
            who: String::new(),
        },
        // oci-client's own token exchange, which exploder does not use (it
        // exchanges tokens itself, see `token`): kept as a 401.
        E::AuthenticationFailure(reason) => {
            warn!(%location, %reason, "token exchange refused");
            FetchError::Unauthorized {
                location: location.to_string(),
                status: 401,
                who: String::new(),
            }
        }
        E::ServerError { code, message, .. } => status_error(code, what, location, message),
        E::RegistryError { envelope, .. } => status_error(
            envelope_status(&envelope),
            what,
            location,
            envelope.to_string(),
        ),
        E::IoError(source) => FetchError::Io {
            context: format!("{what} from {location}"),
            source,
        },
        other => FetchError::Invalid {
            what: format!("answer for {what} from {location}"),
            message: other.to_string(),
        },
    }
}

/// A fetch error as an `io::Error` for the blob reader, keeping it as the
/// source and choosing a kind that keeps `is_transient` meaningful.
pub(super) fn into_io(e: FetchError) -> io::Error {
    let kind = match &e {
        FetchError::NotFound { .. } => io::ErrorKind::NotFound,
        FetchError::Unauthorized { .. } => io::ErrorKind::PermissionDenied,
        FetchError::Invalid { .. }
        | FetchError::DigestMismatch { .. }
        | FetchError::ShortBlob { .. } => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_certificate_is_not_a_network_error() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        // As hyper-rustls hands it over: inside an io::Error.
        let e = network_error("registry.lab:5000/team/app", &io::Error::other(tls));
        assert!(matches!(e, FetchError::Certificate { .. }), "{e}");
        assert!(!e.is_transient());
        let text = e.to_string();
        assert!(
            text.contains("registry.lab:5000") && text.contains("SSL_CERT_FILE"),
            "{text}"
        );
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
        assert!(network_error("r", &io::Error::other(reset)).is_transient());
    }

    #[test]
    fn error_statuses_map_to_fetch_errors() {
        assert!(matches!(
            status_error(404, "blob x", "r/a", String::new()),
            FetchError::NotFound { .. }
        ));
        assert!(matches!(
            status_error(403, "blob x", "r/a", String::new()),
            FetchError::Unauthorized { status: 403, .. }
        ));
        assert!(status_error(429, "m", "r/a", String::new()).is_transient());
        assert!(status_error(502, "m", "r/a", String::new()).is_transient());
        assert!(!status_error(400, "m", "r/a", String::new()).is_transient());
        let envelope = |code: &str| -> OciEnvelope {
            serde_json::from_str(&format!(
                r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#
            ))
            .unwrap()
        };
        assert_eq!(envelope_status(&envelope("BLOB_UNKNOWN")), 404);
        assert_eq!(envelope_status(&envelope("NAME_UNKNOWN")), 404);
        assert_eq!(envelope_status(&envelope("DENIED")), 403);
        assert_eq!(envelope_status(&envelope("TOOMANYREQUESTS")), 429);
        assert_eq!(envelope_status(&envelope("SOMETHING_ELSE")), 400);
    }
}
