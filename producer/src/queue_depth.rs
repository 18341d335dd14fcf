//! Exports the fleet's queue depths (`exploder_queue_*`) every few seconds:
//! ready messages and consumers over AMQP (a passive declare), unacked
//! counts from the management API when it answers. Dashboards and the
//! autoscaler (KEDA's prometheus trigger on OpenShift) read these without
//! RabbitMQ's Prometheus plugin. Also keeps `exploder_broker_up` and
//! `exploder_redis_up` current.

use std::sync::Arc;
use std::time::Duration;

use exploder_queue::stats::{self, Management};
use exploder_queue::topology::Topology;

use crate::reconcile::Reconciler;

/// Samples until the task is dropped.
pub async fn run(
    reconciler: Arc<Reconciler>,
    amqp_url: String,
    management_url: Option<String>,
    every: Duration,
) {
    let m = &reconciler.metrics;
    let topology = Topology::new(reconciler.broker.prefix());
    let names = topology.queues();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        m.redis_up
            .set(i64::from(reconciler.index.ping().await.is_ok()));
        let open = match reconciler.broker.get().await {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!("queue depth: {e}");
                m.broker_up.set(0);
                continue;
            }
        };
        let management = management_url.as_deref().map(|url| Management {
            url,
            amqp_url: &amqp_url,
        });
        let within = reconciler.broker.options().timeout;
        let sample = stats::sample(&open.conn, &names, management);
        let sampled = match tokio::time::timeout(within, sample).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!("queue depth: {e}");
                m.broker_up.set(0);
                reconciler.broker.reset().await;
                continue;
            }
            Err(_) => {
                let e = format!("RabbitMQ did not answer within {within:?}");
                tracing::debug!("queue depth: {e}");
                m.broker_up.set(0);
                reconciler.broker.reset().await;
                continue;
            }
        };
        m.broker_up.set(1);
        for q in sampled.iter().filter(|q| q.exists) {
            let ready = i64::from(q.ready.unwrap_or(0));
            m.queue_ready.with_label_values(&[&q.name]).set(ready);
            m.queue_consumers
                .with_label_values(&[&q.name])
                .set(i64::from(q.consumers.unwrap_or(0)));
            if q.name == topology.dead_letters() {
                m.dead_letters.set(ready);
            }
            if let Some(n) = q.unacked {
                m.queue_unacked.with_label_values(&[&q.name]).set(n as i64);
            }
        }
    }
}
