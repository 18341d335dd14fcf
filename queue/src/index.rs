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
//! {p}exploder:imagejob:<manifest>   the encoded image job, for the fan-in to publish
//! {p}exploder:finalize:<manifest>   fan-in guard: exactly one caller publishes
//! {p}exploder:claim:<diff_id>       lease of the worker ingesting the layer
//! {p}exploder:redriven:<diff_id>    the resync published the layer's job again lately
//! {p}exploder:lease:<name>          a fleet-wide singleton task's holder (the resync)
//! {p}exploder:failed:<digest>       why a layer (diff_id) or image (manifest) job was dead-lettered
//! {p}exploder:tag:<ns/image:tag>    "<digest> <manifest>": what the producer last enqueued for a link
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

    /// Keeps the encoded image job for the fan-in to publish when the
    /// image's last layer lands.
    pub async fn put_image_job(&self, manifest: &Digest, encoded: &[u8]) -> redis::RedisResult<()> {
        let key = format!("{}exploder:imagejob:{manifest}", self.prefix);
        self.conn
            .clone()
            .set_ex(key, encoded, PENDING_TTL.as_secs())
            .await
    }

    pub async fn image_job(&self, manifest: &str) -> redis::RedisResult<Option<Vec<u8>>> {
        let key = format!("{}exploder:imagejob:{manifest}", self.prefix);
        self.conn.clone().get(key).await
    }

    /// The fan-in, after `diff_id` landed in the store: removes it from
    /// every waiting image's pending set and returns the images whose set
    /// became empty *and* whose finalize guard this caller won (`SET NX`),
    /// all in one script, so exactly one caller triggers each finalize.
    /// Running it again (a redelivered layer job) finds nothing to do.
    pub async fn fan_in(&self, diff_id: &Digest) -> redis::RedisResult<Vec<String>> {
        let script = redis::Script::new(
            r"
            local waiting = ARGV[1] .. 'exploder:waiting:' .. ARGV[2]
            local ready = {}
            for _, m in ipairs(redis.call('SMEMBERS', waiting)) do
              local pending = ARGV[1] .. 'exploder:pending:' .. m
              redis.call('SREM', pending, ARGV[2])
              if redis.call('SCARD', pending) == 0 then
                if redis.call('SET', ARGV[1] .. 'exploder:finalize:' .. m, '1', 'NX', 'PX', ARGV[3]) then
                  table.insert(ready, m)
                end
              end
            end
            redis.call('DEL', waiting)
            return ready
            ",
        );
        script
            .arg(&self.prefix)
            .arg(diff_id.to_string())
            .arg(PENDING_TTL.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await
    }

    fn claim_key(&self, diff_id: &Digest) -> String {
        format!("{}exploder:claim:{diff_id}", self.prefix)
    }

    /// `SET key value NX PX ttl`: whether this caller set it.
    async fn set_nx(&self, key: String, value: &str, ttl: Duration) -> redis::RedisResult<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(set.is_some())
    }

    /// Takes the lease on ingesting a layer (`SET NX PX`). A lease is
    /// advisory: correctness comes from atomic store writes, the lease only
    /// saves duplicate downloads.
    pub async fn claim(
        &self,
        diff_id: &Digest,
        token: &str,
        ttl: Duration,
    ) -> redis::RedisResult<bool> {
        self.set_nx(self.claim_key(diff_id), token, ttl).await
    }

    /// Whether this caller may publish a lost-looking layer's job again:
    /// true at most once per `interval` per layer, fleet-wide.
    pub async fn guard_redrive(
        &self,
        diff_id: &Digest,
        interval: Duration,
    ) -> redis::RedisResult<bool> {
        let key = format!("{}exploder:redriven:{diff_id}", self.prefix);
        self.set_nx(key, "1", interval).await
    }

    /// Takes, or keeps, the fleet-wide lease `name` for `ttl`: true if
    /// `token` holds it now. Holders call it again before `ttl` runs out to
    /// keep it. Advisory like every lease here: two holders at once (Redis
    /// flushed) must be harmless to what the lease guards.
    pub async fn hold_lease(
        &self,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> redis::RedisResult<bool> {
        let script = redis::Script::new(
            r"
            if redis.call('GET', KEYS[1]) == ARGV[1] then
              redis.call('PEXPIRE', KEYS[1], ARGV[2])
              return 1
            end
            if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
              return 1
            end
            return 0",
        );
        let held: i64 = script
            .key(format!("{}exploder:lease:{name}", self.prefix))
            .arg(token)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(held == 1)
    }

    /// Gives up the lease `name` if `token` holds it (compare-and-delete:
    /// never someone else's).
    pub async fn release_lease(&self, name: &str, token: &str) -> redis::RedisResult<()> {
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        );
        let _: i64 = script
            .key(format!("{}exploder:lease:{name}", self.prefix))
            .arg(token)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Extends our lease; false if it is no longer ours.
    pub async fn extend_claim(
        &self,
        diff_id: &Digest,
        token: &str,
        ttl: Duration,
    ) -> redis::RedisResult<bool> {
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
        );
        let extended: i64 = script
            .key(self.claim_key(diff_id))
            .arg(token)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(extended == 1)
    }

    /// Releases our lease (compare-and-delete: never someone else's).
    pub async fn release_claim(&self, diff_id: &Digest, token: &str) -> redis::RedisResult<()> {
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        );
        let _: i64 = script
            .key(self.claim_key(diff_id))
            .arg(token)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Whether anyone holds the lease.
    pub async fn is_claimed(&self, diff_id: &Digest) -> redis::RedisResult<bool> {
        self.conn.clone().exists(self.claim_key(diff_id)).await
    }

    /// Records why a job for `digest` (a layer's diff_id or an image's
    /// manifest) was dead-lettered, for `exploder enqueue --wait`.
    pub async fn mark_failed(&self, digest: &Digest, reason: &str) -> redis::RedisResult<()> {
        let key = format!("{}exploder:failed:{digest}", self.prefix);
        self.conn
            .clone()
            .set_ex(key, reason, PENDING_TTL.as_secs())
            .await
    }

    /// Why a job for `digest` failed, if one did; cleared by a replay that
    /// succeeds (the worker clears it when the job completes).
    pub async fn failure(&self, digest: &Digest) -> redis::RedisResult<Option<String>> {
        let key = format!("{}exploder:failed:{digest}", self.prefix);
        self.conn.clone().get(key).await
    }

    pub async fn clear_failed(&self, digest: &Digest) -> redis::RedisResult<()> {
        let key = format!("{}exploder:failed:{digest}", self.prefix);
        self.conn.clone().del(key).await
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

    fn tag_key(&self, link: &str) -> String {
        format!("{}exploder:tag:{link}", self.prefix)
    }

    /// What the producer last enqueued for a link (`ns/image:tag`): the
    /// digest the tag named upstream (an index or a manifest) and the
    /// platform manifest it resolved to. Lets a repeated event, or a poll
    /// that sees no change, stop before resolving anything.
    pub async fn tag_state(&self, link: &str) -> redis::RedisResult<Option<(Digest, Digest)>> {
        let v: Option<String> = self.conn.clone().get(self.tag_key(link)).await?;
        Ok(v.and_then(|v| {
            let (top, manifest) = v.split_once(' ')?;
            Some((top.parse().ok()?, manifest.parse().ok()?))
        }))
    }

    pub async fn set_tag_state(
        &self,
        link: &str,
        top: &Digest,
        manifest: &Digest,
    ) -> redis::RedisResult<()> {
        self.conn
            .clone()
            .set(self.tag_key(link), format!("{top} {manifest}"))
            .await
    }

    pub async fn clear_tag_state(&self, link: &str) -> redis::RedisResult<()> {
        self.conn.clone().del(self.tag_key(link)).await
    }

    /// Forgets an image's recorded job once it is done, if the record is
    /// this job: a newer job for the same image (other links) keeps its
    /// record until it is done too. While recorded, an image counts as in
    /// progress (gc keeps its digest and layers).
    pub async fn finish_image_job(
        &self,
        manifest: &Digest,
        encoded: &[u8],
    ) -> redis::RedisResult<()> {
        let script = redis::Script::new(
            r"
            if redis.call('GET', KEYS[1]) == ARGV[1] then
              return redis.call('DEL', KEYS[1])
            end
            return 0",
        );
        let key = format!("{}exploder:imagejob:{manifest}", self.prefix);
        let _: i64 = script
            .key(key)
            .arg(encoded)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Every recorded image job: the images the fleet is working on.
    pub async fn recorded_image_jobs(&self) -> redis::RedisResult<Vec<Vec<u8>>> {
        let pattern = format!("{}exploder:imagejob:*", self.prefix);
        let mut conn = self.conn.clone();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut jobs = Vec::new();
        for chunk in keys.chunks(500) {
            let values: Vec<Option<Vec<u8>>> =
                redis::cmd("MGET").arg(chunk).query_async(&mut conn).await?;
            jobs.extend(values.into_iter().flatten());
        }
        Ok(jobs)
    }

    /// Drops a layer from the set of ingested layers (gc deleted it).
    pub async fn forget_layer(&self, diff_id: &Digest) -> redis::RedisResult<()> {
        self.conn
            .clone()
            .srem(self.layers_key(), diff_id.to_string())
            .await
    }
}
