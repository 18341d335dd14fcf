//! Docker token authentication, done by exploder itself: reading the
//! registry's challenge (`WWW-Authenticate: Bearer realm=...,service=...`)
//! and exchanging credentials for a bearer token at the realm.
//!
//! oci-client has an exchange of its own, but it cannot use an identity
//! token (an OAuth2 refresh token, which is POSTed with
//! `grant_type=refresh_token`), it reports a refusal without the realm or
//! the status, and it swallows a failed exchange when it renews a token by
//! itself. The token obtained here is handed to oci-client for its blob
//! requests (see `auth`).

use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use serde::Deserialize;

use super::FetchError;
use super::auth::Credentials;
use super::error::network_error;
use super::retry::{Failure, retry_after};
use crate::fetch::TokenRefusal;

/// How long a token lasts when the answer does not say (the token
/// specification's default).
const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(60);
/// A token endpoint's answer is a little JSON.
const MAX_TOKEN_ANSWER_BYTES: usize = 1 << 20;

/// What a registry's `/v2/` answered about authentication.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Challenge {
    /// No authentication asked (the ping succeeded).
    None,
    /// `Basic realm=...` (or a scheme exploder does not know): basic
    /// credentials go with every request.
    Basic,
    /// `Bearer realm=...,service=...`: tokens come from the realm.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// The challenges in a `WWW-Authenticate` value, as (scheme, parameters).
/// Parameters are `key=value` or `key="quoted, value"`; schemes are
/// separated by the commas between parameters.
fn parse_challenges(value: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut challenges: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut rest = value.trim();
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        // A token up to a space, '=' or ',': a scheme, or a parameter's key.
        let end = rest.find([' ', '\t', '=', ',']).unwrap_or(rest.len());
        let (word, after) = rest.split_at(end);
        if word.is_empty() {
            break;
        }
        let after = after.trim_start();
        if let Some(value_part) = after.strip_prefix('=')
            && let Some((_, params)) = challenges.last_mut()
        {
            let value_part = value_part.trim_start();
            let (value, remaining) = if let Some(quoted) = value_part.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end..])
            } else {
                let end = value_part.find(',').unwrap_or(value_part.len());
                (value_part[..end].trim().to_string(), &value_part[end..])
            };
            params.push((word.to_ascii_lowercase(), value));
            rest = remaining;
        } else {
            challenges.push((word.to_string(), Vec::new()));
            rest = after;
        }
    }
    challenges
}

/// What a `/v2/` answer's `WWW-Authenticate` headers ask for: a Bearer
/// challenge with a realm wins over any other.
pub(super) fn challenge(headers: &HeaderMap) -> Challenge {
    let mut found = Challenge::None;
    for value in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(value) = value.to_str() else { continue };
        for (scheme, params) in parse_challenges(value) {
            let param = |key: &str| {
                params
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
            };
            if scheme.eq_ignore_ascii_case("bearer")
                && let Some(realm) = param("realm")
            {
                return Challenge::Bearer {
                    realm,
                    service: param("service"),
                };
            }
            found = Challenge::Basic;
        }
    }
    found
}

/// A token endpoint's answer: `token` (Docker) or `access_token` (OAuth2),
/// and how long it lasts.
#[derive(Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// A bearer token and how long it lasts from when it was received.
pub(super) struct Token {
    pub(super) token: String,
    pub(super) lifetime: Duration,
}

/// A token service's error answer: OAuth2's `error`/`error_description`,
/// or distribution's `errors[].message`.
fn error_detail(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Answer {
        error: Option<String>,
        error_description: Option<String>,
        #[serde(default)]
        errors: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        message: Option<String>,
    }
    let text = || {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
        text.trim().to_string()
    };
    match serde_json::from_slice::<Answer>(body) {
        Ok(a) => {
            let said: Vec<String> = [a.error, a.error_description]
                .into_iter()
                .flatten()
                .chain(a.errors.into_iter().filter_map(|e| e.message))
                .collect();
            if said.is_empty() {
                text()
            } else {
                said.join(": ")
            }
        }
        Err(_) => text(),
    }
}

/// Exchanges `credentials` for a token with `scope` at the realm: an
/// identity token is POSTed as an OAuth2 refresh token
/// (`grant_type=refresh_token`, `client_id=exploder`), other credentials
/// GET the realm with `service` and `scope` (basic credentials, or none).
/// A refusal (4xx) is a [`FetchError::TokenRefused`]; 429, 5xx and network
/// failures are transient [`Failure`]s for the retry policy.
pub(super) async fn exchange(
    http: &reqwest::Client,
    registry: &str,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    credentials: &Credentials,
    who: &str,
) -> Result<Token, Failure> {
    let location = format!("{registry} token service {realm}");
    let mut url = reqwest::Url::parse(realm).map_err(|e| {
        Failure::from(FetchError::Invalid {
            what: format!("token service (realm) {realm:?} of {registry}"),
            message: e.to_string(),
        })
    })?;
    // The parameters, form-encoded (application/x-www-form-urlencoded) by
    // the URL's query serializer, for the query string or the POST body.
    let mut params = vec![("scope", scope)];
    if let Some(service) = service {
        params.push(("service", service));
    }
    let request = match credentials {
        Credentials::IdentityToken(refresh_token) => {
            params.extend([
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.as_str()),
                ("client_id", "exploder"),
            ]);
            let form = reqwest::Url::parse_with_params("form:", &params)
                .ok()
                .and_then(|u| u.query().map(str::to_string))
                .unwrap_or_default();
            http.post(url)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form)
        }
        other => {
            url.query_pairs_mut().extend_pairs(&params);
            let request = http.get(url);
            match other {
                Credentials::Basic { user, password } => request.basic_auth(user, Some(password)),
                _ => request,
            }
        }
    };
    let mut response = request
        .header(ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| Failure::from(network_error(&location, &e)))?;
    let status = response.status().as_u16();
    let wait = retry_after(response.headers());
    let mut body = Vec::new();
    // A little JSON; more than the limit is not read (and is refused).
    while body.len() <= MAX_TOKEN_ANSWER_BYTES
        && let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Failure::from(network_error(&location, &e)))?
    {
        body.extend_from_slice(&chunk);
    }
    if !(200..300).contains(&status) {
        let detail = error_detail(&body);
        let error = if status == 429 || status >= 500 {
            FetchError::Http {
                location,
                status,
                message: detail,
            }
        } else {
            FetchError::TokenRefused(Box::new(TokenRefusal {
                registry: registry.to_string(),
                realm: realm.to_string(),
                who: who.to_string(),
                status,
                detail,
                advice: refusal_advice(registry, credentials),
            }))
        };
        return Err(Failure {
            error,
            retry_after: wait,
        });
    }
    let invalid = |message: String| {
        Failure::from(FetchError::Invalid {
            what: format!("answer of {location}"),
            message,
        })
    };
    if body.len() > MAX_TOKEN_ANSWER_BYTES {
        return Err(invalid(format!("more than {MAX_TOKEN_ANSWER_BYTES} bytes")));
    }
    let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| invalid(e.to_string()))?;
    let token = answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| invalid("no token in it".into()))?;
    Ok(Token {
        token,
        lifetime: answer
            .expires_in
            .map_or(DEFAULT_EXPIRES_IN, Duration::from_secs),
    })
}

/// What to do when the token service refuses these credentials.
fn refusal_advice(registry: &str, credentials: &Credentials) -> String {
    let login = format!("podman login {registry} (or docker login)");
    match credentials {
        Credentials::Anonymous => format!(
            "the registry wants credentials: log in with {login}, or pass --username and \
             --password (or --authfile)"
        ),
        Credentials::Basic { .. } => {
            format!("check the username and password, or log in again with {login}")
        }
        Credentials::IdentityToken(_) => format!(
            "the identity token (an OAuth login) was not accepted, it may have expired or \
             been revoked: log in again with {login}"
        ),
        Credentials::Bearer(_) => "check the token".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(WWW_AUTHENTICATE, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn bearer_challenges_are_read_as_registries_write_them() {
        assert_eq!(
            challenge(&headers(&[
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull""#
            ])),
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            }
        );
        // Unquoted values, spaces, a quoted comma, an escaped quote.
        assert_eq!(
            challenge(&headers(&[
                r#"bearer realm=http://127.0.0.1:1/token , service="a,\"b\"", error="insufficient_scope""#
            ])),
            Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: Some("a,\"b\"".into()),
            }
        );
        // Basic first, Bearer in the same header or in a second one.
        assert_eq!(
            challenge(&headers(&[r#"Basic realm="x", Bearer realm="r""#])),
            Challenge::Bearer {
                realm: "r".into(),
                service: None
            }
        );
        assert_eq!(
            challenge(&headers(&[r#"Basic realm="x""#, r#"Bearer realm="r""#])),
            Challenge::Bearer {
                realm: "r".into(),
                service: None
            }
        );
    }

    #[test]
    fn other_challenges_mean_basic_and_none_means_none() {
        assert_eq!(
            challenge(&headers(&[r#"Basic realm="Registry Realm""#])),
            Challenge::Basic
        );
        assert_eq!(
            challenge(&headers(&["Bearer service=\"no realm\""])),
            Challenge::Basic
        );
        assert_eq!(challenge(&headers(&[])), Challenge::None);
    }

    #[test]
    fn token_service_errors_say_what_they_said() {
        assert_eq!(
            error_detail(br#"{"error":"invalid_grant","error_description":"expired"}"#),
            "invalid_grant: expired"
        );
        assert_eq!(
            error_detail(br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad password"}]}"#),
            "bad password"
        );
        assert_eq!(error_detail(b"  plain text \n"), "plain text");
    }
}
