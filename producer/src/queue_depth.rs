//! Exports the fleet's queue depths (`exploder_queue_*`) every few seconds:
//! ready messages and consumers over AMQP (a passive declare), unacked
//! counts from the management API when it answers. Dashboards and the
//! autoscaler (KEDA's prometheus trigger on OpenShift) read these without
//! RabbitMQ's Prometheus plugin. Also keeps `exploder_broker_up` and
//! `exploder_redis_up` current.

use std::sync::Arc;
use std::time::Duration;

use exploder_queue::topology::{Topology, inspect_queue};

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
        let channel = match open.conn.create_channel().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("queue depth: {e}");
                m.broker_up.set(0);
                reconciler.broker.reset().await;
                continue;
            }
        };
        m.broker_up.set(1);
        for name in &names {
            // A missing queue closes the channel: fall back to a new one.
            if let Ok(q) = inspect_queue(&channel, name).await {
                m.queue_ready
                    .with_label_values(&[name])
                    .set(i64::from(q.message_count()));
                m.queue_consumers
                    .with_label_values(&[name])
                    .set(i64::from(q.consumer_count()));
                if *name == topology.dead_letters() {
                    m.dead_letters.set(i64::from(q.message_count()));
                }
            }
        }
        let _ = channel.close(200, "sampled".into()).await;
        if let Some(url) = &management_url
            && let Some(unacked) = exploder_queue::management::unacked(url, &amqp_url, &names).await
        {
            for (name, n) in unacked {
                m.queue_unacked.with_label_values(&[&name]).set(n as i64);
            }
        }
    }
}
