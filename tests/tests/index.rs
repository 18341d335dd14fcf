//! The fleet's index in Redis (`queue::index`): what it keeps for each
//! image and layer goes with the work, and what `exploder status` counts
//! comes from structures under the fleet's prefix.

use std::time::Duration;

use exploder_common::digest::Digest;
use exploder_queue::index::{FINALIZE_GUARD_TTL, Index};
use exploder_tests::fleet::Fleet;

fn digest(s: &str) -> Digest {
    Digest::sha256_of(s.as_bytes())
}

/// Every key under the fleet's prefix, sorted, without the prefix.
fn keys(fleet: &Fleet) -> Vec<String> {
    let mut keys: Vec<String> = fleet.rt.block_on(async {
        let client = redis::Client::open(fleet.redis.as_str()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("KEYS")
            .arg(format!("{}*", fleet.prefix))
            .query_async(&mut con)
            .await
            .unwrap()
    });
    keys.sort();
    keys.iter()
        .map(|k| k[fleet.prefix.len()..].to_string())
        .collect()
}

fn claims(fleet: &Fleet, index: &Index) -> u64 {
    fleet.rt.block_on(index.counts()).unwrap().claims
}

#[test]
fn a_claim_is_counted_while_held_and_no_longer_once_released() {
    let fleet = Fleet::new("index-claim");
    let index = fleet.index();
    let (a, b) = (digest("a"), digest("b"));
    let ttl = Duration::from_secs(60);
    fleet.rt.block_on(async {
        assert!(index.claim(&a, "w1", ttl).await.unwrap());
        assert!(index.claim(&b, "w2", ttl).await.unwrap());
        // Taken already: not a second claim.
        assert!(!index.claim(&a, "w3", ttl).await.unwrap());
    });
    assert_eq!(claims(&fleet, &index), 2);
    fleet.rt.block_on(async {
        // Only its holder releases a claim.
        index.release_claim(&a, "w3").await.unwrap();
        assert_eq!(index.counts().await.unwrap().claims, 2);
        index.release_claim(&a, "w1").await.unwrap();
    });
    assert_eq!(claims(&fleet, &index), 1);
}

/// A worker killed while ingesting never releases its claim: the count
/// drops it when the lease runs out, and the next claim forgets it.
#[test]
fn a_claim_whose_lease_ran_out_is_not_counted_and_the_next_claim_drops_it() {
    let fleet = Fleet::new("index-lapsed");
    let index = fleet.index();
    fleet.rt.block_on(async {
        assert!(
            index
                .claim(&digest("a"), "killed", Duration::from_millis(20))
                .await
                .unwrap()
        );
        // Renewed once, as the ingest progressed, then never again.
        assert!(
            index
                .extend_claim(&digest("a"), "killed", Duration::from_millis(50))
                .await
                .unwrap()
        );
    });
    // Past the lease, on Redis' clock as well as ours.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(claims(&fleet, &index), 0);
    fleet.rt.block_on(async {
        assert!(
            index
                .claim(&digest("b"), "w", Duration::from_secs(60))
                .await
                .unwrap()
        );
    });
    assert_eq!(claims(&fleet, &index), 1);
    let listed: u64 = fleet.rt.block_on(async {
        let client = redis::Client::open(fleet.redis.as_str()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("ZCARD")
            .arg(format!("{}exploder:claims", fleet.prefix))
            .query_async(&mut con)
            .await
            .unwrap()
    });
    assert_eq!(listed, 1, "the lapsed claim is gone from the set");
}

/// An image whose layers all landed through the fan-in, then done.
#[test]
fn an_image_job_done_leaves_no_key_of_its_image() {
    let fleet = Fleet::new("index-done");
    let index = fleet.index();
    let (m, l1, l2) = (digest("m"), digest("l1"), digest("l2"));
    fleet.rt.block_on(async {
        index
            .record_pending(&m, &[l1.clone(), l2.clone()])
            .await
            .unwrap();
        index.put_image_job(&m, b"job").await.unwrap();
        assert!(index.fan_in(&l1).await.unwrap().is_empty());
        // The last layer: this caller publishes the image job, once.
        assert_eq!(index.fan_in(&l2).await.unwrap(), vec![m.clone()]);
        assert_eq!(
            index.recorded_image_jobs().await.unwrap(),
            vec![b"job".to_vec()]
        );
        index.finish_image_job(&m, b"job").await.unwrap();
        assert!(index.recorded_image_jobs().await.unwrap().is_empty());
    });
    assert!(keys(&fleet).is_empty(), "{:?}", keys(&fleet));
}

/// A layer ingested some other way (an explode, a job lost with Redis'
/// data) never fans in: the image job, done, takes what waited for it.
#[test]
fn an_image_done_before_its_layers_fanned_in_leaves_no_pending_or_waiting_set() {
    let fleet = Fleet::new("index-nofanin");
    let index = fleet.index();
    let (m, l1, l2) = (digest("m"), digest("l1"), digest("l2"));
    let other = digest("other image");
    fleet.rt.block_on(async {
        index
            .record_pending(&m, &[l1.clone(), l2.clone()])
            .await
            .unwrap();
        // Another image waits for l1 too: its wait stays.
        index
            .record_pending(&other, std::slice::from_ref(&l1))
            .await
            .unwrap();
        index.put_image_job(&m, b"job").await.unwrap();
        index.finish_image_job(&m, b"job").await.unwrap();
    });
    assert_eq!(
        keys(&fleet),
        [
            format!("exploder:pending:{other}"),
            format!("exploder:waiting:{l1}"),
        ]
    );
}

/// Another job for the same image (other links) was recorded since: its
/// record stays until it is done too.
#[test]
fn a_done_image_job_keeps_the_record_of_a_newer_job_for_the_image() {
    let fleet = Fleet::new("index-newer");
    let index = fleet.index();
    let m = digest("m");
    fleet.rt.block_on(async {
        index.put_image_job(&m, b"first").await.unwrap();
        index.put_image_job(&m, b"second").await.unwrap();
        index.finish_image_job(&m, b"first").await.unwrap();
        assert_eq!(
            index.recorded_image_jobs().await.unwrap(),
            vec![b"second".to_vec()]
        );
    });
}

/// The fan-in's guard on an image lives as long as a job waits in the
/// queues, not a week, if its job never says it is done.
#[test]
fn the_fan_in_guard_of_an_image_whose_job_never_finishes_expires_within_the_hour() {
    let fleet = Fleet::new("index-guard");
    let index = fleet.index();
    let (m, l) = (digest("m"), digest("l"));
    let pttl: i64 = fleet.rt.block_on(async {
        index
            .record_pending(&m, std::slice::from_ref(&l))
            .await
            .unwrap();
        assert_eq!(index.fan_in(&l).await.unwrap(), vec![m.clone()]);
        let client = redis::Client::open(fleet.redis.as_str()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("PTTL")
            .arg(format!("{}exploder:finalize:{m}", fleet.prefix))
            .query_async(&mut con)
            .await
            .unwrap()
    });
    assert!(
        pttl > 0 && pttl as u128 <= FINALIZE_GUARD_TTL.as_millis(),
        "{pttl}"
    );
    assert!(FINALIZE_GUARD_TTL <= Duration::from_secs(3600));
}
