//! Leader election through a `coordination.k8s.io/v1` Lease, so that of
//! several producer replicas exactly one runs the watch and poll sources
//! (two pollers would double every registry request; two watchers would
//! race). Webhooks are served by every replica: they need no leader.
//!
//! Enabled by `EXPLODER_LEASE_NAME`; the identity is `EXPLODER_POD_NAME`
//! (the pod's name through the downward API) and the Lease lives in
//! `EXPLODER_POD_NAMESPACE`. The holder renews every third of the lease
//! duration; a lease not renewed for a whole duration is taken over, with
//! the API server's resourceVersion check settling races. A leader that
//! cannot renew stops its sources at once rather than risk two leaders.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl Elector {
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration: Duration::from_secs(15),
        }
    }

    /// Takes or renews the lease. `Ok(true)`: this process leads until the
    /// next renewal is due.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let seconds = self.duration.as_secs() as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let renewed = spec.renew_time.as_ref().map_or(0, |t| t.0.as_second());
        let lasts = i64::from(spec.lease_duration_seconds.unwrap_or(seconds));
        let expired = now.0.as_second() > renewed + lasts;
        if !mine && !expired && spec.holder_identity.is_some() {
            return Ok(false);
        }
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(seconds);
        // The resourceVersion in the object makes this a compare-and-swap:
        // of two replicas taking over at once, one gets 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs `start` (which spawns the leader-only sources) whenever this
    /// process leads, and aborts what it spawned as soon as it does not.
    /// Returns when `stop` resolves.
    pub async fn run(
        &self,
        start: impl Fn() -> Vec<tokio::task::JoinHandle<()>>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let every = self.duration / 3;
        let mut running: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        loop {
            let leading = match self.try_lead().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(lease = %self.name, "lease: {e}");
                    false
                }
            };
            match (leading, running.is_empty()) {
                (true, true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "leading: running the watch and poll sources");
                    running = start();
                }
                (false, false) => {
                    tracing::warn!(lease = %self.name, "not leading any more: watch and poll sources stopped");
                    for t in running.drain(..) {
                        t.abort();
                    }
                }
                _ => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = &mut stop => break,
            }
        }
        for t in running {
            t.abort();
        }
    }
}
