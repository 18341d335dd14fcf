//! How full the fleet's queues are: ready messages and consumers over AMQP
//! (a passive declare per queue), unacked counts from the management API
//! when it answers. `exploder status` and the producer's queue depth
//! metrics both read them here.

use std::collections::HashMap;

use lapin::Connection;

use crate::topology::inspect_queue;

/// One queue, as sampled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub name: String,
    /// False when the broker has no such queue (then nothing else is
    /// known).
    pub exists: bool,
    pub ready: Option<u32>,
    pub consumers: Option<u32>,
    /// From the management API; `None` when it did not answer.
    pub unacked: Option<u64>,
}

/// Where the management API is, to ask it for unacked counts.
#[derive(Clone, Copy, Debug)]
pub struct Management<'a> {
    /// The API's URL (`http://host:15672`).
    pub url: &'a str,
    /// The AMQP URL whose credentials and vhost it is asked with.
    pub amqp_url: &'a str,
}

/// Samples `names`, in order. `Err` only when the connection itself is
/// gone: a missing queue is `exists: false` (the broker closes the channel
/// on a failed passive declare, so the next queue gets a new one).
pub async fn sample(
    conn: &Connection,
    names: &[String],
    management: Option<Management<'_>>,
) -> Result<Vec<QueueStats>, lapin::Error> {
    let mut out: Vec<QueueStats> = names
        .iter()
        .map(|n| QueueStats {
            name: n.clone(),
            ..QueueStats::default()
        })
        .collect();
    let mut channel = conn.create_channel().await?;
    for q in &mut out {
        match inspect_queue(&channel, &q.name).await {
            Ok(info) => {
                q.exists = true;
                q.ready = Some(info.message_count());
                q.consumers = Some(info.consumer_count());
            }
            Err(e) if conn.status().connected() => {
                tracing::debug!(queue = %q.name, "passive declare failed: {e}");
                channel = conn.create_channel().await?;
            }
            Err(e) => return Err(e),
        }
    }
    let _ = channel.close(200, "sampled".into()).await;
    if let Some(m) = management
        && let Some(unacked) = unacked(m, names).await
    {
        for q in &mut out {
            q.unacked = unacked.get(&q.name).copied();
        }
    }
    Ok(out)
}

async fn unacked(m: Management<'_>, names: &[String]) -> Option<HashMap<String, u64>> {
    crate::management::unacked(m.url, m.amqp_url, names).await
}
