//! `exploder-producer --config exploder.yaml`: which sources run and how.
//!
//! Every setting can also come from a flag or an `EXPLODER_*` variable,
//! which win over the file. Secrets may be written in the file, or named
//! (`token_env: VAR`) so the file can live in a ConfigMap and the secret in
//! a Secret; `EXPLODER_WEBHOOK_TOKEN` sets the registry endpoint's token
//! and `EXPLODER_WEBHOOK_<ENDPOINT>_TOKEN` / `..._HMAC_SECRET` any
//! endpoint's.
//!
//! ```yaml
//! store: /var/lib/exploder
//! amqp_url: amqp://guest:guest@rabbitmq:5672/%2f
//! redis_url: redis://redis:6379/0
//! prefix: ""
//! listen: 0.0.0.0:8088
//! platform: linux/amd64
//! registry_paths:                # images of these registries link under a prefix
//!   mirror.example.com: mirror   # mirror.example.com/team/app -> images/mirror/team/app
//! webhooks:
//!   max_body_bytes: 1048576      # larger: 413, unread when declared
//!   max_events: 100              # events (tags) per request
//!   header_timeout_seconds: 2    # a connection sending no request that long is closed
//!   body_timeout_seconds: 10
//!   max_connections: 256        # a quarter per client address; at the cap the oldest idle is closed
//!   answer_within_ms: 500        # then 202 `pending`; reconciling goes on
//!   registry:  { token_env: REGISTRY_WEBHOOK_TOKEN, registries: [registry:5000], export: [ext4] }
//!   quay:      { token_env: QUAY_TOKEN, registries: [quay.io], rate_limit: { per_second: 5, burst: 20 } }
//!   harbor:    { token: "..." }
//!   generic:   { hmac_secret_env: GENERIC_SECRET }
//! poll:
//!   interval_seconds: 300
//!   watch:
//!     - registry: quay.io
//!       repositories: [team/app]
//!       include: ["v*"]          # exclude defaults to *.sig, *.att
//!       namespace: mirror        # link as images/mirror/app/<tag>
//!       export: [erofs]          # disk images of each image (ext4, erofs, squashfs)
//! imagestreams:
//!   namespace: team              # omit: every namespace
//!   pull_from: registry.example.com   # instead of the internal service name
//!   registry_token_file: /var/run/secrets/kubernetes.io/serviceaccount/token
//! ```

use std::path::{Path, PathBuf};

use exploder_common::store::DiskFormat;
use serde::Deserialize;

use crate::sources::imagestream::ImageStreamConfig;
use crate::sources::poll::PollConfig;
use crate::sources::webhook::auth::Auth;
use crate::sources::webhook::rate::RateLimit;
use crate::sources::webhook::server::ConnectionLimits;
use crate::sources::webhook::{Dialect, Endpoint, RequestLimits, Webhooks};

/// 1 MiB: a distribution envelope of a few hundred events.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub store: Option<PathBuf>,
    pub amqp_url: Option<String>,
    pub redis_url: Option<String>,
    pub prefix: Option<String>,
    pub listen: Option<String>,
    pub platform: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub webhooks: WebhooksConfig,
    /// The poll source; absent: not polling.
    pub poll: Option<PollConfig>,
    /// The OpenShift ImageStream watch; absent: not watching (unless
    /// `--imagestreams`).
    pub imagestreams: Option<ImageStreamConfig>,
    /// Read blobs from this registry storage directory
    /// (`file:///var/lib/registry`) instead of the registry's API.
    pub blob_source: Option<String>,
    /// Registry host → path prefix its webhook events link under
    /// (`--registry-path`); other registries link at the bare repository.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub registry_paths: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Larger bodies: 413 [default: 1 MiB].
    pub max_body_bytes: Option<usize>,
    /// Events (tags) in one request; more: 413 [default: 100].
    pub max_events: Option<usize>,
    /// A request's headers must arrive within this; an idle keep-alive
    /// connection is closed after it [default: 10].
    pub header_timeout_seconds: Option<u64>,
    /// A request's body must arrive within this (else 408) [default: 10].
    pub body_timeout_seconds: Option<u64>,
    /// Connections served at once; more wait to be accepted [default: 256].
    pub max_connections: Option<usize>,
    /// How long a request waits for its events' reconciles before it is
    /// answered 202 with them `pending` [default: 500; also
    /// `EXPLODER_WEBHOOK_ANSWER_WITHIN_MS`].
    pub answer_within_ms: Option<u64>,
    pub registry: Option<EndpointConfig>,
    pub dockerhub: Option<EndpointConfig>,
    pub harbor: Option<EndpointConfig>,
    pub quay: Option<EndpointConfig>,
    pub generic: Option<EndpointConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub token: Option<String>,
    pub token_env: Option<String>,
    pub hmac_secret: Option<String>,
    pub hmac_secret_env: Option<String>,
    /// Pull from this registry host whatever the payload names [also
    /// `EXPLODER_WEBHOOK_<ENDPOINT>_PULL_FROM`].
    pub pull_from: Option<String>,
    /// Registry hosts a payload may name, and so the only ones the
    /// producer contacts for this endpoint [also
    /// `EXPLODER_WEBHOOK_<ENDPOINT>_REGISTRIES`, comma-separated]. Every
    /// endpoint but dockerhub needs this or `pull_from` (generic: this).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub registries: Vec<String>,
    /// Disk images to make of every image this endpoint's events name
    /// (`[ext4, erofs, squashfs]`).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub export: Vec<DiskFormat>,
    /// Requests per second this endpoint takes, with a burst; more are
    /// answered 429 with `Retry-After` [default: no limit].
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        // Option: a document that is only `---` (YAML null) is the empty
        // config, as serde-saphyr 1 read it.
        serde_saphyr::from_str::<Option<Config>>(text)
            .map(Option::unwrap_or_default)
            .map_err(|e| e.to_string())
    }
}

/// A section or list written with no value (`webhooks:`, `include:`, `~`)
/// is empty, as serde-saphyr 1 read it; serde-saphyr 2 rejects YAML null for
/// collections and structs, which would refuse config files that load today.
pub(crate) fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl WebhooksConfig {
    fn endpoint(&self, d: Dialect) -> Option<&EndpointConfig> {
        match d {
            Dialect::Registry => self.registry.as_ref(),
            Dialect::DockerHub => self.dockerhub.as_ref(),
            Dialect::Harbor => self.harbor.as_ref(),
            Dialect::Quay => self.quay.as_ref(),
            Dialect::Generic => self.generic.as_ref(),
        }
    }

    /// The enabled endpoints: those in the file, and those whose secret an
    /// `EXPLODER_WEBHOOK_*` variable sets. Reads the environment through
    /// `env` (tests pass a map). An endpoint with no secret at all is an
    /// error: an open endpoint would let anyone fill the store.
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> Result<Webhooks, ConfigError> {
        let mut endpoints = Vec::new();
        for d in Dialect::ALL {
            let upper = d.name().to_ascii_uppercase();
            let file = self.endpoint(d);
            let named = |n: &Option<String>| n.as_deref().and_then(&env);
            let mut token = env(&format!("EXPLODER_WEBHOOK_{upper}_TOKEN"))
                .or_else(|| file.and_then(|f| named(&f.token_env).or(f.token.clone())));
            if d == Dialect::Registry {
                token = env("EXPLODER_WEBHOOK_TOKEN").or(token);
            }
            let hmac_secret = env(&format!("EXPLODER_WEBHOOK_{upper}_HMAC_SECRET"))
                .or_else(|| file.and_then(|f| named(&f.hmac_secret_env).or(f.hmac_secret.clone())));
            // An empty secret would let an empty header in.
            let token = token.filter(|t| !t.trim().is_empty());
            let hmac_secret = hmac_secret.filter(|t| !t.trim().is_empty());
            let auth = Auth { token, hmac_secret };
            let allowed_registries = env(&format!("EXPLODER_WEBHOOK_{upper}_REGISTRIES"))
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .or_else(|| file.map(|f| f.registries.clone()))
                .unwrap_or_default();
            if file.is_none() && !auth.is_configured() {
                continue;
            }
            if !auth.is_configured() {
                return Err(ConfigError::Invalid(format!(
                    "webhook endpoint {:?} has no token or hmac_secret (or its *_env variable is \
                     unset): refusing to serve it unauthenticated",
                    d.name()
                )));
            }
            let pull_from = env(&format!("EXPLODER_WEBHOOK_{upper}_PULL_FROM"))
                .or_else(|| file.and_then(|f| f.pull_from.clone()));
            // A payload must never choose which host the producer connects
            // to (it gets the registry's credentials, and can reach what
            // the producer can). Docker Hub's payload names no host;
            // `pull_from` replaces the host every dialect but the generic
            // one names (its reference is the whole point of the payload).
            let host_fixed =
                d == Dialect::DockerHub || (pull_from.is_some() && d != Dialect::Generic);
            if allowed_registries.is_empty() && !host_fixed {
                return Err(ConfigError::Invalid(format!(
                    "webhook endpoint {name:?} names no registry: its payloads would choose which \
                     host the producer connects to. List the registries its events may name \
                     (`registries: [registry.example.com:5000]` under webhooks.{name}, or \
                     EXPLODER_WEBHOOK_{upper}_REGISTRIES=host:port,...), or the one to pull from \
                     (`pull_from: host:port`, or EXPLODER_WEBHOOK_{upper}_PULL_FROM)",
                    name = d.name()
                )));
            }
            let rate_limit = file.and_then(|f| f.rate_limit);
            if let Some(r) = &rate_limit {
                r.check()
                    .map_err(|e| ConfigError::Invalid(format!("webhooks.{}.{e}", d.name())))?;
            }
            endpoints.push(Endpoint {
                dialect: d,
                auth,
                pull_from,
                allowed_registries,
                exports: file.map(|f| f.export.clone()).unwrap_or_default(),
                rate_limit,
            });
        }
        let secs = std::time::Duration::from_secs;
        let requests = RequestLimits::default();
        let connections = ConnectionLimits::default();
        Ok(Webhooks {
            endpoints,
            // The flag's (`--delivery-limit`), set by the binary.
            delivery_limit: exploder_queue::topology::DEFAULT_DELIVERY_LIMIT,
            limits: RequestLimits {
                max_body_bytes: self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
                body_timeout: self
                    .body_timeout_seconds
                    .map_or(requests.body_timeout, secs),
                max_events: self.max_events.unwrap_or(requests.max_events),
                answer_within: env("EXPLODER_WEBHOOK_ANSWER_WITHIN_MS")
                    .map(|v| {
                        v.trim().parse::<u64>().map_err(|_| {
                            ConfigError::Invalid(format!(
                                "EXPLODER_WEBHOOK_ANSWER_WITHIN_MS={v:?}: expected milliseconds"
                            ))
                        })
                    })
                    .transpose()?
                    .or(self.answer_within_ms)
                    .map_or(requests.answer_within, std::time::Duration::from_millis),
            },
            connections: ConnectionLimits {
                header_timeout: self
                    .header_timeout_seconds
                    .map_or(connections.header_timeout, secs),
                max_connections: self.max_connections.unwrap_or(connections.max_connections),
            },
        })
    }

    /// [`Self::resolve`] with the process environment.
    pub fn resolve_from_env(&self) -> Result<Webhooks, ConfigError> {
        self.resolve(env_var)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn a_key_with_no_value_is_an_empty_section_or_list() {
        // As serde-saphyr 1 read them; 2 rejects YAML null for collections.
        for text in [
            "---\n",
            "webhooks:\n",
            "webhooks: ~\n",
            "registry_paths:\n",
            "webhooks:\n  registry:\n    token: t\n    registries:\n    export:\n",
            "poll:\n  watch:\n",
            "poll:\n  watch:\n    - registry: r\n      repositories:\n      include:\n      exclude:\n      export:\n",
        ] {
            let c = Config::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(c.registry_paths.is_empty() && c.webhooks.max_body_bytes.is_none());
            if let Some(r) = &c.webhooks.registry {
                assert!(r.registries.is_empty() && r.export.is_empty());
            }
            for w in c.poll.iter().flat_map(|p| &p.watch) {
                assert!(w.repositories.is_empty() && w.include.is_empty());
                // Written and empty, not the default (*.sig, *.att).
                assert!(w.exclude.is_empty() && w.export.is_empty());
            }
        }
        // Still required when absent.
        assert!(
            Config::parse("poll: {}\n")
                .unwrap_err()
                .contains("missing field `watch`")
        );
        assert!(
            Config::parse("poll:\n  watch:\n    - registry: r\n")
                .unwrap_err()
                .contains("missing field `repositories`")
        );
    }

    #[test]
    fn a_config_file_enables_the_endpoints_it_names() {
        let c = Config::parse(
            "store: /s\nwebhooks:\n  max_body_bytes: 10\n  harbor: { token: t, registries: [h] }\n  generic:\n    hmac_secret_env: SECRET\n    registries: [g]\n",
        )
        .unwrap();
        let w = c.webhooks.resolve(env(&[("SECRET", "k")])).unwrap();
        let names: Vec<_> = w.endpoints.iter().map(|e| e.dialect.name()).collect();
        assert_eq!(names, ["harbor", "generic"]);
        assert_eq!(w.endpoints[1].auth.hmac_secret.as_deref(), Some("k"));
        assert_eq!(w.limits.max_body_bytes, 10);
        assert_eq!(w.limits.max_events, 100);
    }

    #[test]
    fn endpoints_and_poll_entries_say_which_disk_images_they_want() {
        let c = Config::parse(
            "webhooks:\n  registry: { token: t, pull_from: r, export: [ext4, squashfs] }\npoll:\n  watch:\n    - registry: r\n      repositories: [a/b]\n      export: [erofs]\n",
        )
        .unwrap();
        let w = c.webhooks.resolve(env(&[])).unwrap();
        assert_eq!(
            w.endpoints[0].exports,
            [DiskFormat::Ext4, DiskFormat::Squashfs]
        );
        assert_eq!(c.poll.unwrap().watch[0].export, [DiskFormat::Erofs]);
        assert!(Config::parse("webhooks:\n  registry: { token: t, export: [zip] }\n").is_err());
    }

    #[test]
    fn variables_alone_enable_the_registry_endpoint() {
        let w = WebhooksConfig::default()
            .resolve(env(&[
                ("EXPLODER_WEBHOOK_TOKEN", "t"),
                ("EXPLODER_WEBHOOK_REGISTRY_PULL_FROM", "registry:5000"),
            ]))
            .unwrap();
        assert_eq!(w.endpoints.len(), 1);
        assert_eq!(w.endpoints[0].dialect, Dialect::Registry);
        assert_eq!(w.endpoints[0].auth.token.as_deref(), Some("t"));
        assert_eq!(w.endpoints[0].pull_from.as_deref(), Some("registry:5000"));
    }

    #[test]
    fn an_endpoint_whose_payloads_would_choose_the_host_is_refused() {
        let e = WebhooksConfig::default()
            .resolve(env(&[("EXPLODER_WEBHOOK_TOKEN", "t")]))
            .err()
            .expect("refused");
        let msg = e.to_string();
        assert!(
            msg.contains("\"registry\"")
                && msg.contains("EXPLODER_WEBHOOK_REGISTRY_REGISTRIES")
                && msg.contains("pull_from"),
            "{msg}"
        );
        // Docker Hub's payloads name no host: its endpoint needs no list.
        let w = WebhooksConfig::default()
            .resolve(env(&[("EXPLODER_WEBHOOK_DOCKERHUB_TOKEN", "t")]))
            .unwrap();
        assert_eq!(w.endpoints[0].dialect, Dialect::DockerHub);
    }

    #[test]
    fn an_endpoint_without_a_secret_is_refused() {
        let c =
            Config::parse("webhooks:\n  quay: { token_env: UNSET, registries: [q] }\n").unwrap();
        let e = c.webhooks.resolve(env(&[])).err().expect("refused");
        assert!(e.to_string().contains("quay"), "{e}");
    }

    #[test]
    fn empty_secrets_do_not_enable_an_endpoint() {
        let c = Config::parse("webhooks:\n  harbor: { token: \"\", registries: [h] }\n").unwrap();
        assert!(c.webhooks.resolve(env(&[])).is_err());
    }

    #[test]
    fn an_endpoint_can_be_held_to_its_registries() {
        let c =
            Config::parse("webhooks:\n  registry: { token: t, registries: [r1:5000] }\n").unwrap();
        let w = c
            .webhooks
            .resolve(env(&[
                ("EXPLODER_WEBHOOK_QUAY_TOKEN", "q"),
                ("EXPLODER_WEBHOOK_QUAY_REGISTRIES", "quay.io, q2"),
            ]))
            .unwrap();
        assert_eq!(w.endpoints[0].allowed_registries, ["r1:5000"]);
        assert_eq!(w.endpoints[1].allowed_registries, ["quay.io", "q2"]);
    }

    #[test]
    fn an_endpoint_may_have_a_rate_limit_that_lets_something_through() {
        let c = Config::parse(
            "webhooks:\n  answer_within_ms: 250\n  quay: { token: t, registries: [q], rate_limit: { per_second: 0.5, burst: 3 } }\n",
        )
        .unwrap();
        let w = c.webhooks.resolve(env(&[])).unwrap();
        assert_eq!(
            w.endpoints[0].rate_limit,
            Some(RateLimit {
                per_second: 0.5,
                burst: 3
            })
        );
        assert_eq!(w.limits.answer_within.as_millis(), 250);
        let c = Config::parse(
            "webhooks:\n  quay: { token: t, registries: [q], rate_limit: { per_second: 0, burst: 3 } }\n",
        )
        .unwrap();
        let e = c.webhooks.resolve(env(&[])).err().expect("refused");
        assert!(e.to_string().contains("webhooks.quay.rate_limit"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors_not_silently_ignored() {
        assert!(Config::parse("stor: /typo\n").is_err());
    }
}
