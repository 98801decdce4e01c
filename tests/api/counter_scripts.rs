//! Each of the counters' Lua scripts on its own, against the shared Redis
//! under a prefix of its own: the branches that matter after a crash (a
//! batch applied twice, a list already acknowledged, reconcile's pause, a
//! rebuild's skip list, a swap run again, an epoch lease lost).

use adtrack::counters::scripts::{
    APPLY, EPOCH_CHECK, EPOCH_EXTEND, EPOCH_FINISH, SWAP, WRITE_AD, WRITE_CAMPAIGN,
};
use redis::AsyncCommands;
use uuid::Uuid;

use crate::scripts::Scratch;

const MARKER_TTL: &str = "600";

/// Runs APPLY in `mode` for `batch` with `ops`, as the exactly-once
/// protocol does: KEYS are the processing list, the marker, the pause flag,
/// then `op_keys`, which the ops name by index (the first is "4").
async fn apply(
    s: &mut Scratch,
    mode: &str,
    batch: &Uuid,
    op_keys: &[&str],
    ops: &[&str],
) -> String {
    let mut keys = vec![
        s.processing(),
        s.keys.applied(batch),
        s.keys.counters_paused(),
    ];
    keys.extend(op_keys.iter().map(|k| k.to_string()));
    let mut args = vec![MARKER_TTL.to_string(), mode.into(), batch.to_string()];
    args.extend(ops.iter().map(|a| a.to_string()));
    s.run(&APPLY, &keys, args).await
}

/// The campaign ranking, last-seen and pending keys under `root`.
fn campaign_keys(root: &str) -> (String, String, String) {
    (
        format!("{root}cz"),
        format!("{root}cl"),
        format!("{root}cn"),
    )
}

async fn hget(s: &mut Scratch, key: &str, field: &str) -> Option<i64> {
    s.conn.hget(key, field).await.unwrap()
}

#[tokio::test]
async fn apply_counts_a_batch_once_even_when_run_again() {
    let mut s = Scratch::new().await;
    let batch = Uuid::now_v7();
    let (processing, marker) = (s.processing(), s.keys.applied(&batch));
    let hash = format!("{}am:1:ad", s.keys.counters_root());
    let ops = ["H", "4", "c:1", "2"];
    let op_keys = [hash.as_str()];
    let _: () = s.conn.rpush(&processing, &["e1", "e2"]).await.unwrap();

    assert_eq!(apply(&mut s, "am", &batch, &op_keys, &ops).await, "ok");
    assert_eq!(hget(&mut s, &hash, "c:1").await, Some(2));
    assert!(s.exists(&marker).await, "the marker is set with the counts");
    assert!(!s.exists(&processing).await, "the list is acknowledged");

    // The worker died before its next statement deleted the outbox row:
    // recovery applies the same batch again (without a list), and the
    // marker makes it a no-op.
    assert_eq!(apply(&mut s, "m", &batch, &op_keys, &ops).await, "seen");
    assert_eq!(hget(&mut s, &hash, "c:1").await, Some(2));

    // The worker crashed before it learnt the answer and, its list
    // reserved again, runs the same apply: counted once, list acknowledged.
    let _: () = s.conn.rpush(&processing, &["e1", "e2"]).await.unwrap();
    assert_eq!(apply(&mut s, "am", &batch, &op_keys, &ops).await, "seen");
    assert_eq!(hget(&mut s, &hash, "c:1").await, Some(2));
    assert!(!s.exists(&processing).await);
    s.clean(&[hash, marker]).await;
}

#[tokio::test]
async fn apply_with_the_list_already_acknowledged_still_counts() {
    let mut s = Scratch::new().await;
    let batch = Uuid::now_v7();
    let hash = format!("{}am:1:ad", s.keys.counters_root());
    // No processing list: a crash after an earlier acknowledgement.
    assert!(!s.exists(&s.processing()).await);
    assert_eq!(
        apply(&mut s, "am", &batch, &[&hash], &["H", "4", "i:1", "3"]).await,
        "ok"
    );
    assert_eq!(hget(&mut s, &hash, "i:1").await, Some(3));
    assert!(!s.exists(&s.processing()).await);
    let marker = s.keys.applied(&batch);
    s.clean(&[hash, marker]).await;
}

#[tokio::test]
async fn apply_while_paused_changes_nothing_but_the_list() {
    let mut s = Scratch::new().await;
    let batch = Uuid::now_v7();
    let (processing, marker, paused) = (
        s.processing(),
        s.keys.applied(&batch),
        s.keys.counters_paused(),
    );
    let hash = format!("{}am:1:ad", s.keys.counters_root());
    let _: () = s.conn.rpush(&processing, "e1").await.unwrap();
    let _: () = s.conn.set_ex(&paused, "run", 60).await.unwrap();

    assert_eq!(
        apply(&mut s, "am", &batch, &[&hash], &["H", "4", "c:1", "1"]).await,
        "paused"
    );
    // The update waits in the outbox: no count, and no marker that would
    // make its later application a no-op. The items are committed, so the
    // list goes.
    assert!(!s.exists(&hash).await);
    assert!(!s.exists(&marker).await);
    assert!(!s.exists(&processing).await);

    // Reconcile finished: recovery applies it.
    let _: () = s.conn.del(&paused).await.unwrap();
    assert_eq!(
        apply(&mut s, "m", &batch, &[&hash], &["H", "4", "c:1", "1"]).await,
        "ok"
    );
    assert_eq!(hget(&mut s, &hash, "c:1").await, Some(1));
    s.clean(&[hash, marker, paused]).await;
}

#[tokio::test]
async fn apply_skips_all_time_keys_whose_rebuild_counted_the_batch() {
    let mut s = Scratch::new().await;
    let root = s.keys.counters_root();
    let (counted, other) = (Uuid::now_v7(), Uuid::now_v7());
    let (ad, excluded) = (format!("{root}ad:a"), format!("{root}ax:a"));
    let (ranking, seen, pending) = campaign_keys(&root);
    let (screens, cx) = (format!("{root}cs:camp"), format!("{root}cx:camp"));
    let missing = format!("{root}ad:never-rebuilt");
    // A rebuild wrote the figures with `counted` still in the outbox.
    let _: () = s.conn.hset(&ad, "c", 5).await.unwrap();
    let _: () = s.conn.sadd(&excluded, counted.to_string()).await.unwrap();
    let _: () = s.conn.zadd(&ranking, "camp", 7).await.unwrap();
    let _: () = s.conn.sadd(&cx, counted.to_string()).await.unwrap();
    let op_keys = [
        ad.as_str(),
        excluded.as_str(),
        missing.as_str(),
        ranking.as_str(),
        seen.as_str(),
        pending.as_str(),
        screens.as_str(),
        cx.as_str(),
    ];
    #[rustfmt::skip]
    let args = [
        "A", "4", "5", "c", "1", // the rebuilt ad
        "A", "6", "5", "c", "1", // an ad never rebuilt
        "G", "7", "8", "9", "10", "11", "camp", "scr", "1", "1000", "60",
    ];

    // The batch the snapshot holds skips the rebuilt keys...
    assert_eq!(apply(&mut s, "m", &counted, &op_keys, &args).await, "ok");
    assert_eq!(hget(&mut s, &ad, "c").await, Some(5));
    let plays: f64 = s.conn.zscore(&ranking, "camp").await.unwrap();
    assert_eq!(plays, 7.0);
    // ...and a later batch counts on them; an all-time key nobody rebuilt
    // is never created by a batch.
    assert_eq!(apply(&mut s, "m", &other, &op_keys, &args).await, "ok");
    assert_eq!(hget(&mut s, &ad, "c").await, Some(6));
    let plays: f64 = s.conn.zscore(&ranking, "camp").await.unwrap();
    assert_eq!(plays, 8.0);
    let on_screen: f64 = s.conn.zscore(&screens, "scr").await.unwrap();
    assert_eq!(on_screen, 1.0);
    assert!(!s.exists(&missing).await);
    let markers = [s.keys.applied(&counted), s.keys.applied(&other)];
    let mut keys = vec![ad, excluded, ranking, seen, pending, screens, cx];
    keys.extend(markers);
    s.clean(&keys).await;
}

#[tokio::test]
async fn write_ad_replaces_the_figures_and_sets_the_skip_list() {
    let mut s = Scratch::new().await;
    let root = s.keys.counters_root();
    let (ad, excluded, uniques) = (
        format!("{root}ad:a"),
        format!("{root}ax:a"),
        format!("{root}ua:a"),
    );
    let keys = [ad.clone(), excluded.clone(), uniques.clone()];
    // Stale figures from before, and a skip list from an older rebuild.
    let _: () = s.conn.hset(&ad, "c", 99).await.unwrap();
    let _: () = s.conn.sadd(&excluded, "old-batch").await.unwrap();
    let args = ["60", "30", "2", "c", "4", "i", "9", "b1", "b2"];
    let _: i64 = s.run(&WRITE_AD, &keys, &args[..]).await;
    assert_eq!(hget(&mut s, &ad, "c").await, Some(4));
    assert_eq!(hget(&mut s, &ad, "i").await, Some(9));
    let mut skip: Vec<String> = s.conn.smembers(&excluded).await.unwrap();
    skip.sort();
    assert_eq!(skip, ["b1", "b2"]);
    let ttl: i64 = s.conn.ttl(&excluded).await.unwrap();
    assert!(ttl > 0 && ttl <= 30, "{ttl}");
    assert!(s.exists(&uniques).await);

    // Run again (a second reader rebuilt too): the same figures, not twice
    // them; with nothing pending the skip list is gone.
    let _: i64 = s.run(&WRITE_AD, &keys, &args[..7]).await;
    assert_eq!(hget(&mut s, &ad, "c").await, Some(4));
    assert!(!s.exists(&excluded).await);
    s.clean(&keys).await;
}

#[tokio::test]
async fn write_campaign_ranks_a_pending_campaign_with_its_skip_list() {
    let mut s = Scratch::new().await;
    let root = s.keys.counters_root();
    let keys = [
        format!("{root}cz"),
        format!("{root}cl"),
        format!("{root}cn"),
        format!("{root}cs:camp"),
        format!("{root}cx:camp"),
    ];
    let _: () = s.conn.zadd(&keys[2], "camp", 1).await.unwrap();
    let _: () = s.conn.zadd(&keys[3], "stale-screen", 50).await.unwrap();
    let args = ["camp", "5", "1000", "60", "30", "1", "5", "scr", "b1"];
    let _: i64 = s.run(&WRITE_CAMPAIGN, &keys, &args[..]).await;
    let plays: f64 = s.conn.zscore(&keys[0], "camp").await.unwrap();
    assert_eq!(plays, 5.0);
    let pending: Option<f64> = s.conn.zscore(&keys[2], "camp").await.unwrap();
    assert_eq!(pending, None, "ranked, so no longer pending");
    let screens: Vec<(String, f64)> = s.conn.zrange_withscores(&keys[3], 0, -1).await.unwrap();
    assert_eq!(screens, [("scr".to_string(), 5.0)]);
    let skip: Vec<String> = s.conn.smembers(&keys[4]).await.unwrap();
    assert_eq!(skip, ["b1"]);

    // Run again: the same rank, not doubled.
    let _: i64 = s.run(&WRITE_CAMPAIGN, &keys, &args[..]).await;
    let plays: f64 = s.conn.zscore(&keys[0], "camp").await.unwrap();
    assert_eq!(plays, 5.0);
    s.clean(&keys).await;
}

#[tokio::test]
async fn swap_run_again_after_a_crash_keeps_the_swapped_keys() {
    let mut s = Scratch::new().await;
    let root = s.keys.counters_root();
    let staging = s.keys.staging_root("run");
    let (stale, live, staged) = (
        format!("{root}ad:gone"),
        format!("{root}ad:a"),
        format!("{staging}ad:a"),
    );
    let batch = Uuid::now_v7();
    let marker = s.keys.applied(&batch);
    let _: () = s.conn.set(&stale, "1").await.unwrap();
    let _: () = s.conn.hset(&live, "c", 1).await.unwrap();
    let _: () = s.conn.hset(&staged, "c", 7).await.unwrap();
    let keys = [
        s.keys.counters_paused(),
        stale.clone(),
        staged.clone(),
        live.clone(),
        marker.clone(),
    ];
    let _: i64 = s.run(&SWAP, &keys, ("1", "1", "60")).await;
    assert!(!s.exists(&stale).await);
    assert!(!s.exists(&staged).await);
    assert_eq!(hget(&mut s, &live, "c").await, Some(7));
    assert!(s.exists(&marker).await, "the taken batch reads as applied");

    // Reconcile's commit failed and the swap runs again: the staging key is
    // gone, so the live figure stays; the marker is set again.
    let _: () = s.conn.del(&marker).await.unwrap();
    let _: i64 = s.run(&SWAP, &keys, ("1", "1", "60")).await;
    assert_eq!(hget(&mut s, &live, "c").await, Some(7));
    assert!(s.exists(&marker).await);
    s.clean(&[stale, live, staged, marker]).await;
}

async fn check(s: &mut Scratch, fresh: &str, holder: &str) -> (String, String) {
    let keys = [s.keys.epoch(), s.keys.epoch_rebuild()];
    s.run(
        &EPOCH_CHECK,
        &keys,
        (fresh, "2026-01-01T00:00:00Z", holder, 30),
    )
    .await
}

async fn finish(s: &mut Scratch, id: &str, holder: &str, outcome: &str) {
    let keys = [s.keys.epoch(), s.keys.epoch_rebuild()];
    let _: i64 = s
        .run(
            &EPOCH_FINISH,
            &keys,
            (id, "2026-01-01T00:01:00Z", holder, outcome),
        )
        .await;
}

#[tokio::test]
async fn epoch_check_creates_once_and_takes_a_lease_lost_with_its_holder() {
    let mut s = Scratch::new().await;
    let (epoch, lease) = (s.keys.epoch(), s.keys.epoch_rebuild());

    // Redis came back empty: the first process creates the epoch and holds
    // the lease; the second sees the rebuild under way.
    assert_eq!(
        check(&mut s, "e1", "p1").await,
        ("reset".into(), "e1".into())
    );
    assert_eq!(
        check(&mut s, "e2", "p2").await,
        ("rebuilding".into(), "e1".into())
    );

    // p1 crashed: its lease expires and p2 takes over the same epoch.
    let _: () = s.conn.del(&lease).await.unwrap();
    assert_eq!(
        check(&mut s, "e3", "p2").await,
        ("rebuild".into(), "e1".into())
    );

    // p1 comes back and ends its rebuild: p2's lease is not p1's to free.
    finish(&mut s, "e1", "p1", "free").await;
    let holder: Option<String> = s.conn.get(&lease).await.unwrap();
    assert_eq!(holder.as_deref(), Some("p2"));

    // p2 fails once: it keeps the lease for a while.
    finish(&mut s, "e1", "p2", "keep:5000").await;
    let ttl: i64 = s.conn.pttl(&lease).await.unwrap();
    assert!(ttl > 0 && ttl <= 5000, "{ttl}");

    // A rebuild for an epoch that is no longer current does not settle it.
    finish(&mut s, "old", "p2", "done").await;
    let rebuilt: Option<String> = s.conn.hget(&epoch, "rebuiltAt").await.unwrap();
    assert_eq!(rebuilt, None);
    assert!(!s.exists(&lease).await, "done frees the holder's lease");

    // The current one does.
    let _: () = s.conn.set(&lease, "p2").await.unwrap();
    finish(&mut s, "e1", "p2", "done").await;
    assert_eq!(
        check(&mut s, "e4", "p3").await,
        ("settled".into(), "e1".into())
    );
    assert!(!s.exists(&lease).await);
    s.clean(&[epoch, lease]).await;
}

/// EPOCH_EXTEND of the lease to 30 s on behalf of `holder`.
async fn extend(s: &mut Scratch, holder: &str) -> i64 {
    let lease = s.keys.epoch_rebuild();
    s.run(&EPOCH_EXTEND, &[lease], (holder, 30)).await
}

#[tokio::test]
async fn epoch_extend_extends_only_the_holders_lease() {
    let mut s = Scratch::new().await;
    let lease = s.keys.epoch_rebuild();
    let _: () = s.conn.set_ex(&lease, "p1", 5).await.unwrap();
    let extended = extend(&mut s, "p1").await;
    assert_eq!(extended, 1);
    let ttl: i64 = s.conn.ttl(&lease).await.unwrap();
    assert!(ttl > 5, "{ttl}");

    // The lease expired and another process took it: p1 must not extend it.
    let _: () = s.conn.set_ex(&lease, "p2", 5).await.unwrap();
    let extended = extend(&mut s, "p1").await;
    assert_eq!(extended, 0);
    let ttl: i64 = s.conn.ttl(&lease).await.unwrap();
    assert!(ttl <= 5, "{ttl}");
    s.clean(&[lease]).await;
}

#[tokio::test]
async fn apply_drops_only_campaigns_silent_past_the_cutoff() {
    let mut s = Scratch::new().await;
    let root = s.keys.counters_root();
    let (ranking, seen, pending) = campaign_keys(&root);
    let _: () = s
        .conn
        .zadd_multiple(&ranking, &[(3, "silent"), (4, "playing")])
        .await
        .unwrap();
    let _: () = s
        .conn
        .zadd_multiple(&seen, &[(100, "silent"), (5000, "playing")])
        .await
        .unwrap();
    let _: () = s
        .conn
        .zadd_multiple(&pending, &[(100, "old"), (5000, "new")])
        .await
        .unwrap();
    let op_keys = [ranking.as_str(), seen.as_str(), pending.as_str()];
    let ops = ["C", "4", "5", "6", "1000", "10", "60"];
    let batch = Uuid::now_v7();
    assert_eq!(apply(&mut s, "m", &batch, &op_keys, &ops).await, "ok");
    let ranked: Vec<String> = s.conn.zrange(&ranking, 0, -1).await.unwrap();
    assert_eq!(ranked, ["playing"]);
    let known: Vec<String> = s.conn.zrange(&seen, 0, -1).await.unwrap();
    assert_eq!(known, ["playing"]);
    let waiting: Vec<String> = s.conn.zrange(&pending, 0, -1).await.unwrap();
    assert_eq!(waiting, ["new"]);
    // A second run (the same batch again, or the next one) drops nothing
    // more.
    let again = Uuid::now_v7();
    assert_eq!(apply(&mut s, "m", &again, &op_keys, &ops).await, "ok");
    let ranked: Vec<String> = s.conn.zrange(&ranking, 0, -1).await.unwrap();
    assert_eq!(ranked, ["playing"]);
    let markers = [s.keys.applied(&batch), s.keys.applied(&again)];
    let mut keys = vec![ranking, seen, pending];
    keys.extend(markers);
    s.clean(&keys).await;
}
