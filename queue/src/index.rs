//! The fleet's index in Redis: which layers are ingested, which layers each
//! image still waits for.
//!
//! Redis is an index, the store is the truth: everything here can be lost
//! (FLUSHALL, a restart without persistence) and rebuilt from the store, so
//! nothing here is ever the only record of work. Keys (prefix `p`):
//!
//! ```text
//! {p}exploder:layers                SET of diff_ids present in the store
//! {p}exploder:pending:<manifest>    SET of diff_ids the image still waits for
//! {p}exploder:waiting:<diff_id>     SET of manifests waiting for the layer
//! ```

use std::time::Duration;

use exploder_common::digest::Digest;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long an image's pending record lives: long enough for any fan-in,
/// short enough that an abandoned one goes away by itself.
const PENDING_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone)]
pub struct Index {
    conn: ConnectionManager,
    prefix: String,
}

impl Index {
    /// Connects (the manager reconnects by itself afterwards). Lua scripts
    /// and large replies need more than redis-rs's default 500 ms.
    pub async fn connect(url: &str, prefix: &str) -> redis::RedisResult<Index> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(6);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Index {
            conn,
            prefix: prefix.to_string(),
        })
    }

    pub fn layers_key(&self) -> String {
        format!("{}exploder:layers", self.prefix)
    }

    pub fn pending_key(&self, manifest: &Digest) -> String {
        format!("{}exploder:pending:{manifest}", self.prefix)
    }

    pub fn waiting_key(&self, diff_id: &Digest) -> String {
        format!("{}exploder:waiting:{diff_id}", self.prefix)
    }

    /// Whether the index knows the layer as ingested. A hit is a hint the
    /// caller confirms against the store before skipping work.
    pub async fn is_ingested(&self, diff_id: &Digest) -> redis::RedisResult<bool> {
        self.conn
            .clone()
            .sismember(self.layers_key(), diff_id.to_string())
            .await
    }

    pub async fn mark_ingested(&self, diff_id: &Digest) -> redis::RedisResult<()> {
        self.conn
            .clone()
            .sadd(self.layers_key(), diff_id.to_string())
            .await
    }

    /// Records that `manifest` waits for `layers` (and each layer that the
    /// image waits for it), atomically, before any layer job is published:
    /// a layer finishing at once must find the image waiting.
    pub async fn record_pending(
        &self,
        manifest: &Digest,
        layers: &[Digest],
    ) -> redis::RedisResult<()> {
        if layers.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        let pending = self.pending_key(manifest);
        for l in layers {
            pipe.sadd(&pending, l.to_string()).ignore();
            let waiting = self.waiting_key(l);
            pipe.sadd(&waiting, manifest.to_string()).ignore();
            pipe.expire(&waiting, PENDING_TTL.as_secs() as i64).ignore();
        }
        pipe.expire(&pending, PENDING_TTL.as_secs() as i64).ignore();
        pipe.query_async(&mut self.conn.clone()).await
    }

    /// The layers an image still waits for.
    pub async fn pending(&self, manifest: &Digest) -> redis::RedisResult<Vec<String>> {
        let mut v: Vec<String> = self
            .conn
            .clone()
            .smembers(self.pending_key(manifest))
            .await?;
        v.sort();
        Ok(v)
    }
}
