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
//! {p}exploder:imagejobs             ZSET manifest -> when its imagejob record expires (ms)
//! {p}exploder:finalize:<manifest>   fan-in guard: exactly one caller publishes
//! {p}exploder:claim:<diff_id>       lease of the worker ingesting the layer
//! {p}exploder:claims                ZSET diff_id -> when its claim's lease runs out (ms)
//! {p}exploder:redriven:<diff_id>    the resync published the layer's job again lately
//! {p}exploder:lease:<name>          a fleet-wide singleton task's holder (the resync)
//! {p}exploder:failed:<digest>       why a layer (diff_id) or image (manifest) job was dead-lettered
//! {p}exploder:tag:<ns/image:tag>    "<digest> <manifest>": what the producer last enqueued for a link
//! {p}exploder:event:<id>            a webhook event's outcomes (5 minutes)
//! {p}exploder:delivery:<ep>:<mac>   a signed webhook delivery seen lately (replays are refused)
//! ```
//!
//! Nothing here is found by listing the database (SCAN matches after
//! walking every key, and the database may be shared): what is counted or
//! listed has a structure of its own under the prefix, kept by whoever
//! writes the keys it tracks. Leases and records expire by themselves, so
//! those structures are sorted sets scored by when each member expires,
//! on Redis' clock (`TIME` in the scripts, never a worker's): readers
//! count only members not yet expired, writers drop the expired ones.
//!
//! Every key that exists per image or per layer goes with its work: an
//! image's `imagejob`, `finalize` guard and `pending` set (and its entries
//! in `waiting` sets) when its image job is done
//! ([`Index::finish_image_job`]); a layer's `waiting` set at its fan-in, its
//! `claim` at release or when its lease runs out. What is left by work that
//! never finishes expires ([`PENDING_TTL`], [`FINALIZE_GUARD_TTL`]).

use std::time::Duration;

use exploder_common::digest::Digest;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo};

/// The Redis a fleet's index lives in when none is configured.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// Why the index could not answer: Redis is down, slow or refused the
/// request. Always worth retrying later (the index can be rebuilt from the
/// store, never the only record of work).
#[derive(Debug, thiserror::Error)]
#[error("Redis: {0}")]
pub struct IndexError(#[from] redis::RedisError);

/// What `exploder status` shows of the index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexCounts {
    /// Layers the index knows as ingested.
    pub layers: u64,
    /// Layers some worker is ingesting now (live claims).
    pub claims: u64,
}

/// How long an image's pending record lives: long enough for any fan-in,
/// short enough that an abandoned one goes away by itself. A record whose
/// image job is done goes at once ([`Index::finish_image_job`]); this
/// bounds only what abandoned work leaves (an image job dead-lettered and
/// never replayed keeps its record, and gc its image, this long).
pub const PENDING_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long the fan-in's guard on an image lives if its image job never
/// says it is done (dead-lettered, or lost with Redis' data). It only
/// spares a duplicate image job, which is harmless (the job is idempotent:
/// a done image is only linked), so it need not outlive a job waiting in
/// the queues for long; the job deletes it when done.
pub const FINALIZE_GUARD_TTL: Duration = Duration::from_secs(3600);

/// Redis' clock, in Unix milliseconds, as the scripts read it.
const LUA_NOW_MS: &str =
    "local t = redis.call('TIME')\nlocal now = t[1] * 1000 + math.floor(t[2] / 1000)\n";

#[derive(Clone)]
pub struct Index {
    conn: ConnectionManager,
    prefix: String,
}

/// The deadline of a Redis command or connection attempt when none is
/// configured.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(10);

impl Index {
    /// Connects with the default deadline ([`DEFAULT_REDIS_TIMEOUT`]).
    pub async fn connect(url: &str, prefix: &str) -> Result<Index, IndexError> {
        Self::connect_with(url, prefix, DEFAULT_REDIS_TIMEOUT).await
    }

    /// Connects (the manager reconnects by itself afterwards). Every
    /// command, and every connection attempt, is cut at `timeout`
    /// (redis-rs's own default of 500 ms is too short for the Lua scripts
    /// and large replies). A connection whose sent bytes go unacknowledged
    /// for as long is dropped by the kernel (`TCP_USER_TIMEOUT`), so the
    /// next command reconnects instead of queueing behind a peer that a
    /// partition took away. Connecting itself gives up after twice the
    /// deadline (the manager's own retries included).
    pub async fn connect_with(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Index, IndexError> {
        let info = url.into_connection_info()?;
        let tcp = info.tcp_settings().clone().set_user_timeout(timeout);
        let client = redis::Client::open(info.set_tcp_settings(tcp))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(6);
        let conn = tokio::time::timeout(
            timeout * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {:?}", timeout * 2),
            ))
        })??;
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
    pub async fn is_ingested(&self, diff_id: &Digest) -> Result<bool, IndexError> {
        self.conn
            .clone()
            .sismember(self.layers_key(), diff_id.to_string())
            .await
            .map_err(IndexError::from)
    }

    pub async fn mark_ingested(&self, diff_id: &Digest) -> Result<(), IndexError> {
        self.conn
            .clone()
            .sadd(self.layers_key(), diff_id.to_string())
            .await
            .map_err(IndexError::from)
    }

    /// Records that `manifest` waits for `layers` (and each layer that the
    /// image waits for it), atomically, before any layer job is published:
    /// a layer finishing at once must find the image waiting.
    pub async fn record_pending(
        &self,
        manifest: &Digest,
        layers: &[Digest],
    ) -> Result<(), IndexError> {
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
        pipe.query_async(&mut self.conn.clone())
            .await
            .map_err(IndexError::from)
    }

    fn image_job_key(&self, manifest: &Digest) -> String {
        format!("{}exploder:imagejob:{manifest}", self.prefix)
    }

    fn image_jobs_key(&self) -> String {
        format!("{}exploder:imagejobs", self.prefix)
    }

    /// Keeps the encoded image job for the fan-in to publish when the
    /// image's last layer lands, and lists it among the images in progress
    /// (dropping the entries whose record expired).
    pub async fn put_image_job(&self, manifest: &Digest, encoded: &[u8]) -> Result<(), IndexError> {
        let script = redis::Script::new(&format!(
            "{LUA_NOW_MS}
            redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
            redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
            redis.call('ZADD', KEYS[2], now + ARGV[2], ARGV[3])
            return 1"
        ));
        let _: i64 = script
            .key(self.image_job_key(manifest))
            .key(self.image_jobs_key())
            .arg(encoded)
            .arg(PENDING_TTL.as_millis() as u64)
            .arg(manifest.to_string())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    pub async fn image_job(&self, manifest: &Digest) -> Result<Option<Vec<u8>>, IndexError> {
        self.conn
            .clone()
            .get(self.image_job_key(manifest))
            .await
            .map_err(IndexError::from)
    }

    /// The fan-in, after `diff_id` landed in the store: removes it from
    /// every waiting image's pending set and returns the images whose set
    /// became empty *and* whose finalize guard this caller won (`SET NX`),
    /// all in one script, so exactly one caller triggers each finalize.
    /// Running it again (a redelivered layer job) finds nothing to do.
    pub async fn fan_in(&self, diff_id: &Digest) -> Result<Vec<Digest>, IndexError> {
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
        let ready: Vec<String> = script
            .arg(&self.prefix)
            .arg(diff_id.to_string())
            .arg(FINALIZE_GUARD_TTL.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(digests(ready))
    }

    fn claim_key(&self, diff_id: &Digest) -> String {
        format!("{}exploder:claim:{diff_id}", self.prefix)
    }

    /// `SET key value NX PX ttl`: whether this caller set it.
    async fn set_nx(&self, key: String, value: &str, ttl: Duration) -> Result<bool, IndexError> {
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

    fn claims_key(&self) -> String {
        format!("{}exploder:claims", self.prefix)
    }

    /// Takes the lease on ingesting a layer (`SET NX PX`), and lists it
    /// among the claims (dropping the entries whose lease ran out). A lease
    /// is advisory: correctness comes from atomic store writes, the lease
    /// only saves duplicate downloads.
    pub async fn claim(
        &self,
        diff_id: &Digest,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, IndexError> {
        let script = redis::Script::new(&format!(
            "{LUA_NOW_MS}
            if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
              return 0
            end
            redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
            redis.call('ZADD', KEYS[2], now + ARGV[2], ARGV[3])
            return 1"
        ));
        let claimed: i64 = script
            .key(self.claim_key(diff_id))
            .key(self.claims_key())
            .arg(token)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(diff_id.to_string())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(claimed == 1)
    }

    /// Whether this caller may publish a lost-looking layer's job again:
    /// true at most once per `interval` per layer, fleet-wide.
    pub async fn guard_redrive(
        &self,
        diff_id: &Digest,
        interval: Duration,
    ) -> Result<bool, IndexError> {
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
    ) -> Result<bool, IndexError> {
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
    pub async fn release_lease(&self, name: &str, token: &str) -> Result<(), IndexError> {
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
    ) -> Result<bool, IndexError> {
        let script = redis::Script::new(&format!(
            "{LUA_NOW_MS}
            if redis.call('GET', KEYS[1]) ~= ARGV[1] then
              return 0
            end
            redis.call('PEXPIRE', KEYS[1], ARGV[2])
            redis.call('ZADD', KEYS[2], now + ARGV[2], ARGV[3])
            return 1"
        ));
        let extended: i64 = script
            .key(self.claim_key(diff_id))
            .key(self.claims_key())
            .arg(token)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(diff_id.to_string())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(extended == 1)
    }

    /// Releases our lease (compare-and-delete: never someone else's).
    pub async fn release_claim(&self, diff_id: &Digest, token: &str) -> Result<(), IndexError> {
        let script = redis::Script::new(
            r"
            if redis.call('GET', KEYS[1]) ~= ARGV[1] then
              return 0
            end
            redis.call('ZREM', KEYS[2], ARGV[2])
            return redis.call('DEL', KEYS[1])",
        );
        let _: i64 = script
            .key(self.claim_key(diff_id))
            .key(self.claims_key())
            .arg(token)
            .arg(diff_id.to_string())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Whether anyone holds the lease.
    pub async fn is_claimed(&self, diff_id: &Digest) -> Result<bool, IndexError> {
        self.conn
            .clone()
            .exists(self.claim_key(diff_id))
            .await
            .map_err(IndexError::from)
    }

    /// Records why a job for `digest` (a layer's diff_id or an image's
    /// manifest) was dead-lettered, for `exploder enqueue --wait`.
    pub async fn mark_failed(&self, digest: &Digest, reason: &str) -> Result<(), IndexError> {
        let key = format!("{}exploder:failed:{digest}", self.prefix);
        self.conn
            .clone()
            .set_ex(key, reason, PENDING_TTL.as_secs())
            .await
            .map_err(IndexError::from)
    }

    /// Why a job for `digest` failed, if one did; cleared by a replay that
    /// succeeds (the worker clears it when the job completes).
    pub async fn failure(&self, digest: &Digest) -> Result<Option<String>, IndexError> {
        let key = format!("{}exploder:failed:{digest}", self.prefix);
        self.conn.clone().get(key).await.map_err(IndexError::from)
    }

    pub async fn clear_failed(&self, digest: &Digest) -> Result<(), IndexError> {
        let key = format!("{}exploder:failed:{digest}", self.prefix);
        self.conn.clone().del(key).await.map_err(IndexError::from)
    }

    /// Records why the export job making `format` (ext4, ...) of the image
    /// `manifest` was dead-lettered, for `exploder enqueue --wait`.
    pub async fn mark_export_failed(
        &self,
        manifest: &Digest,
        format: &str,
        reason: &str,
    ) -> Result<(), IndexError> {
        self.conn
            .clone()
            .set_ex(
                self.export_failed_key(manifest, format),
                reason,
                PENDING_TTL.as_secs(),
            )
            .await
            .map_err(IndexError::from)
    }

    /// Why the export of `format` of `manifest` failed, if it did; cleared
    /// when a replay of it succeeds.
    pub async fn export_failure(
        &self,
        manifest: &Digest,
        format: &str,
    ) -> Result<Option<String>, IndexError> {
        self.conn
            .clone()
            .get(self.export_failed_key(manifest, format))
            .await
            .map_err(IndexError::from)
    }

    pub async fn clear_export_failed(
        &self,
        manifest: &Digest,
        format: &str,
    ) -> Result<(), IndexError> {
        self.conn
            .clone()
            .del(self.export_failed_key(manifest, format))
            .await
            .map_err(IndexError::from)
    }

    fn export_failed_key(&self, manifest: &Digest, format: &str) -> String {
        format!("{}exploder:failed-export:{manifest}:{format}", self.prefix)
    }

    /// The layers an image still waits for.
    pub async fn pending(&self, manifest: &Digest) -> Result<Vec<Digest>, IndexError> {
        let members: Vec<String> = self
            .conn
            .clone()
            .smembers(self.pending_key(manifest))
            .await?;
        let mut v = digests(members);
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
    pub async fn tag_state(&self, link: &str) -> Result<Option<(Digest, Digest)>, IndexError> {
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
    ) -> Result<(), IndexError> {
        self.conn
            .clone()
            .set(self.tag_key(link), format!("{top} {manifest}"))
            .await
            .map_err(IndexError::from)
    }

    pub async fn clear_tag_state(&self, link: &str) -> Result<(), IndexError> {
        self.conn
            .clone()
            .del(self.tag_key(link))
            .await
            .map_err(IndexError::from)
    }

    fn event_key(&self, id: &str) -> String {
        format!("{}exploder:event:{id}", self.prefix)
    }

    /// Records what came of a webhook event recorded in the events queue
    /// (its outcomes as JSON), for the request that recorded it to answer
    /// with; forgotten after `ttl`.
    pub async fn put_event_outcome(
        &self,
        id: &str,
        outcome: &[u8],
        ttl: Duration,
    ) -> Result<(), IndexError> {
        self.conn
            .clone()
            .set_ex(self.event_key(id), outcome, ttl.as_secs().max(1))
            .await
            .map_err(IndexError::from)
    }

    /// What [`Self::put_event_outcome`] recorded for the event `id`, if
    /// anything yet.
    pub async fn event_outcome(&self, id: &str) -> Result<Option<Vec<u8>>, IndexError> {
        self.conn
            .clone()
            .get(self.event_key(id))
            .await
            .map_err(IndexError::from)
    }

    /// Whether this is the first time a signed webhook delivery (`id`: its
    /// endpoint and signature) is seen within `ttl`: remembered fleet-wide,
    /// so a replay to another producer replica is caught as well.
    pub async fn first_delivery(&self, id: &str, ttl: Duration) -> Result<bool, IndexError> {
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}exploder:delivery:{id}", self.prefix))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(set.is_some())
    }

    /// Forgets a delivery [`Self::first_delivery`] took, when it could not
    /// be acted on, so the sender's retry of it is not taken for a replay.
    /// Best effort: if Redis is gone too, the retry is answered as a replay
    /// until the record expires.
    pub async fn forget_delivery(&self, id: &str) {
        let key = format!("{}exploder:delivery:{id}", self.prefix);
        let _: Result<(), _> = self.conn.clone().del(key).await;
    }

    /// Forgets what the index kept for an image whose job is done: its
    /// `pending` set and its entries in the layers' `waiting` sets (a layer
    /// ingested some other way never fanned in), its fan-in guard, and its
    /// recorded job if the record is this job: a newer job for the same
    /// image (other links) keeps its record until it is done too. While
    /// recorded, an image counts as in progress (gc keeps its digest and
    /// layers).
    pub async fn finish_image_job(
        &self,
        manifest: &Digest,
        encoded: &[u8],
    ) -> Result<(), IndexError> {
        let script = redis::Script::new(
            r"
            if redis.call('GET', KEYS[1]) == ARGV[1] then
              redis.call('DEL', KEYS[1])
              redis.call('ZREM', KEYS[2], ARGV[3])
            end
            redis.call('DEL', KEYS[3])
            for _, l in ipairs(redis.call('SMEMBERS', KEYS[4])) do
              redis.call('SREM', ARGV[2] .. 'exploder:waiting:' .. l, ARGV[3])
            end
            redis.call('DEL', KEYS[4])
            return 1",
        );
        let _: i64 = script
            .key(self.image_job_key(manifest))
            .key(self.image_jobs_key())
            .key(format!("{}exploder:finalize:{manifest}", self.prefix))
            .key(self.pending_key(manifest))
            .arg(encoded)
            .arg(&self.prefix)
            .arg(manifest.to_string())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// The members of the sorted set `key` that have not expired (scored
    /// by when they expire, on Redis' clock).
    async fn live_members(&self, key: String) -> Result<Vec<String>, IndexError> {
        let script = redis::Script::new(&format!(
            "{LUA_NOW_MS}
            return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')"
        ));
        Ok(script.key(key).invoke_async(&mut self.conn.clone()).await?)
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), IndexError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// How many layers are ingested and how many are being ingested now.
    ///
    /// `claims` counts the `claims` set, not the claim keys: the layers
    /// whose last claim (or renewal) was for a lease that has not run out,
    /// minus those released. It never goes negative and never grows past
    /// the claims taken within one lease's length (each claim drops the
    /// expired entries, and they are not counted meanwhile). It can be
    /// higher than the live leases only if a claim key went without its
    /// entry (evicted, or deleted by hand): by at most those, for at most
    /// the rest of their lease. After Redis loses its data it counts the
    /// claims taken since: 0 at first.
    pub async fn counts(&self) -> Result<IndexCounts, IndexError> {
        let layers: u64 = self.conn.clone().scard(self.layers_key()).await?;
        let script = redis::Script::new(&format!(
            "{LUA_NOW_MS}
            return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')"
        ));
        let claims: u64 = script
            .key(self.claims_key())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(IndexCounts { layers, claims })
    }

    /// Every recorded image job: the images the fleet is working on, as
    /// far as Redis knows (the store's requests are the record). Read from
    /// the `imagejobs` set, so records written by a fan-out from before
    /// that set existed are not seen; their requests still are.
    pub async fn recorded_image_jobs(&self) -> Result<Vec<Vec<u8>>, IndexError> {
        let manifests = self.live_members(self.image_jobs_key()).await?;
        let keys: Vec<String> = digests(manifests)
            .iter()
            .map(|m| self.image_job_key(m))
            .collect();
        let mut conn = self.conn.clone();
        let mut jobs = Vec::new();
        for chunk in keys.chunks(500) {
            let values: Vec<Option<Vec<u8>>> =
                redis::cmd("MGET").arg(chunk).query_async(&mut conn).await?;
            jobs.extend(values.into_iter().flatten());
        }
        Ok(jobs)
    }

    /// Drops a layer from the set of ingested layers (gc deleted it).
    pub async fn forget_layer(&self, diff_id: &Digest) -> Result<(), IndexError> {
        self.forget_layers(std::slice::from_ref(diff_id)).await
    }

    /// Drops layers from the set of ingested layers, in commands of at most
    /// a thousand (gc deleted them).
    pub async fn forget_layers(&self, diff_ids: &[Digest]) -> Result<(), IndexError> {
        let mut conn = self.conn.clone();
        for chunk in diff_ids.chunks(1000) {
            let members: Vec<String> = chunk.iter().map(Digest::to_string).collect();
            let _: i64 = conn.srem(self.layers_key(), members).await?;
        }
        Ok(())
    }
}

/// Members that are digests (the index writes nothing else there).
fn digests(members: Vec<String>) -> Vec<Digest> {
    members.into_iter().filter_map(|m| m.parse().ok()).collect()
}
