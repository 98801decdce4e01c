//! adtrack on a real Redis Cluster (`REDIS_CLUSTER=on`): six nodes, three
//! primaries with a replica each, made by `redis-cli --cluster create`.
//! Ingest and drain over six queue shards, reconcile, `NOSCRIPT` after a
//! script flush, a slot moved under load, and the `kill -9` of a primary
//! under load with and without `REDIS_MIN_REPLICAS`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adtrack::queue::{Keys, Queues};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{spawn_app_with, stored, wait_until, TestApp, TestCluster};

const SHARDS: usize = 6;

/// What a load generator saw: the eventIds answered 202, and how many
/// answers of each status (0: no answer at all).
#[derive(Default)]
struct Load {
    accepted: Mutex<HashSet<Uuid>>,
    sent: Mutex<Vec<(Instant, Uuid)>>,
    statuses: Mutex<HashMap<u16, usize>>,
    stop: AtomicBool,
    answered: AtomicUsize,
}

impl Load {
    /// Sends clicks on `ads` (in turn) from `concurrency` tasks until
    /// `stop` (or `limit` events in all).
    fn start(
        self: &Arc<Self>,
        base: &str,
        ads: &[&str],
        concurrency: usize,
        limit: usize,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        (0..concurrency)
            .map(|t| {
                let (load, client) = (self.clone(), client.clone());
                let url = format!("{base}/ads/click");
                let ads: Vec<String> = ads.iter().map(|a| (*a).to_owned()).collect();
                tokio::spawn(async move {
                    let mut i = 0usize;
                    while !load.stop.load(Ordering::Relaxed)
                        && load.answered.load(Ordering::Relaxed) < limit
                    {
                        i += 1;
                        let id = Uuid::now_v7();
                        load.sent.lock().unwrap().push((Instant::now(), id));
                        let ad = &ads[i % ads.len()];
                        let body = json!({"adId": ad, "eventId": id,
                            "ipAddress": format!("10.{}.{}.{}", t % 250, i / 250 % 250, i % 250)});
                        let status = match client.post(&url).json(&body).send().await {
                            Ok(r) => r.status().as_u16(),
                            Err(_) => 0,
                        };
                        if status == StatusCode::ACCEPTED.as_u16() {
                            load.accepted.lock().unwrap().insert(id);
                        }
                        *load.statuses.lock().unwrap().entry(status).or_default() += 1;
                        load.answered.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect()
    }

    fn accepted(&self) -> HashSet<Uuid> {
        self.accepted.lock().unwrap().clone()
    }

    fn statuses(&self) -> HashMap<u16, usize> {
        self.statuses.lock().unwrap().clone()
    }

    fn sent_between(&self, from: Instant, to: Instant) -> usize {
        let sent = self.sent.lock().unwrap();
        sent.iter().filter(|(t, _)| *t >= from && *t <= to).count()
    }
}

async fn cluster_app(cluster: &TestCluster, min_replicas: u32) -> TestApp {
    let prefix = cluster.spread_prefix(SHARDS).await;
    let url = cluster.url();
    spawn_app_with(move |s| {
        s.redis_cluster = true;
        s.redis_url = url;
        s.redis_prefix = prefix;
        s.queue_shards = SHARDS;
        s.worker_count = SHARDS;
        s.redis_min_replicas = min_replicas;
        s.admin_token = Some("cluster-admin-token-0123".into());
    })
    .await
}

/// Every queue shard, processing list, retry set, the spool and the outbox
/// are empty, three times in a row.
async fn wait_drained(app: &TestApp, timeout: Duration) {
    let queues = Queues::new(&app.settings.redis_prefix, SHARDS);
    let mut calm = 0;
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while calm < 3 {
        assert!(
            Instant::now() < deadline,
            "not drained within {timeout:?}: {last}"
        );
        let mut conn = app.redis.clone();
        let overview = queues.overview(&mut conn).await;
        let idle = match &overview {
            Ok(o) => o.queued + o.processing + o.retrying == 0,
            Err(_) => false,
        };
        let spooled = std::fs::read_dir(&app.settings.spool_dir)
            .map(|d| d.count())
            .unwrap_or(0);
        let outbox = crate::helpers::outbox_len(&app.pool).await;
        last = format!(
            "queue {:?}, spool files {spooled}, outbox {outbox}",
            overview.map(|o| (o.queued, o.processing, o.retrying))
        );
        if idle && spooled == 0 && outbox == 0 {
            calm += 1;
        } else {
            calm = 0;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stored_ids(app: &TestApp) -> HashSet<Uuid> {
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM events")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    ids.into_iter().collect()
}

/// The ad's clicks as the Redis counters have them: the 24-hour window
/// (hour hashes, incremented by every batch's counter update). The
/// all-time figure must agree with it; a read rebuilds that one from
/// Postgres when Redis has none, so it alone would not show a lost update.
async fn clicks_counted(app: &TestApp, ad: &str) -> i64 {
    let (day, all) = clicks_windowed_and_all_time(app, ad).await;
    assert_eq!(day, all, "the 24h and all-time counters of {ad} differ");
    day
}

async fn clicks_windowed_and_all_time(app: &TestApp, ad: &str) -> (i64, i64) {
    let day = app.analytics(ad, "24h").await["totalClicks"]
        .as_i64()
        .unwrap_or(-1);
    let all = app.analytics(ad, "all").await["totalClicks"]
        .as_i64()
        .unwrap_or(-2);
    (day, all)
}

async fn dead_letters(app: &TestApp) -> u64 {
    let queues = Queues::new(&app.settings.redis_prefix, SHARDS);
    let mut conn = app.redis.clone();
    queues.overview(&mut conn).await.unwrap().dead_lettered
}

/// Ingest and drain over six queue shards spread over the three primaries:
/// exact counts, adtrack's keys on every primary, a `SCRIPT FLUSH` of every
/// node mid-way (the next calls answer `NOSCRIPT` and are sent again), and
/// `reconcile` on the cluster.
#[tokio::test]
async fn ingest_and_drain_over_six_shards_on_a_three_primary_cluster() {
    let cluster = TestCluster::start().await;
    let app = cluster_app(&cluster, 1).await;
    // Ads whose counter slots reach every primary.
    let primaries = cluster.primaries().await;
    let mut ads: Vec<String> = Vec::new();
    let mut reached = HashSet::new();
    for i in 0.. {
        let ad = format!("ad-cluster-{i}");
        let owner = cluster.owner_of(&app.keys.counter_tag(&ad)).await;
        if reached.insert(owner) || ads.len() < 4 {
            ads.push(ad);
        }
        if reached.len() == primaries.len() && ads.len() >= 4 {
            break;
        }
    }
    let ad_refs: Vec<&str> = ads.iter().map(String::as_str).collect();
    let ad = ad_refs[0];
    let load = Arc::new(Load::default());
    for t in load.start(&app.address, &ad_refs, 8, 600) {
        t.await.unwrap();
    }
    for node in cluster.alive() {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut cluster.node(node.port).await)
            .await
            .unwrap();
    }
    for t in load.start(&app.address, &ad_refs, 8, 1200) {
        t.await.unwrap();
    }
    let accepted = load.accepted();
    let n = accepted.len() as i64;
    assert!(n >= 1200);
    assert_eq!(
        accepted.len(),
        load.answered.load(Ordering::Relaxed),
        "statuses: {:?}",
        load.statuses()
    );
    wait_drained(&app, Duration::from_secs(90)).await;
    assert_eq!(stored_ids(&app).await, accepted);
    let mut counted = 0;
    let mut per_ad = HashMap::new();
    for a in &ad_refs {
        let c = clicks_counted(&app, a).await;
        per_ad.insert(*a, c);
        counted += c;
    }
    assert_eq!(counted, n, "per ad: {per_ad:?}");
    assert_eq!(dead_letters(&app).await, 0);

    let prefix = &app.settings.redis_prefix;
    for primary in &primaries {
        let keys = cluster.keys_on(*primary, prefix).await;
        assert!(
            keys.iter().any(|k| k.contains(":workers")),
            "no queue shard of {prefix} on the primary {primary}: {keys:?}"
        );
        let counter_slot = format!("{{{prefix}.c");
        assert!(
            keys.iter()
                .any(|k| k.starts_with(&counter_slot) && k.contains("}:c:ah:")),
            "no counters of {prefix} on the primary {primary}: {keys:?}"
        );
    }

    // Reconcile rebuilds the counters from Postgres on the cluster.
    let mut conn = app.redis.clone();
    let layout = adtrack::counters::Counters::new(app.keys.clone()).layout();
    let stale = layout.ad("ad-cluster-stale");
    let _: () = redis::cmd("HSET")
        .arg(&stale)
        .arg("c")
        .arg(5)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HINCRBY")
        .arg(layout.ad(ad))
        .arg("c")
        .arg(7)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        clicks_windowed_and_all_time(&app, ad).await.1,
        per_ad[ad] + 7
    );
    adtrack::counters::reconcile(&app.pool, &mut conn, &app.keys, chrono::Utc::now())
        .await
        .expect("reconcile runs on the cluster");
    for a in &ad_refs {
        assert_eq!(
            clicks_counted(&app, a).await,
            per_ad[a],
            "{a} after reconcile"
        );
    }
    let exists: bool = redis::cmd("EXISTS")
        .arg(&stale)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !exists,
        "reconcile removes the counters Postgres does not have"
    );
    app.stop().await;
}

/// What one failover run measured.
struct Failover {
    in_flight: usize,
    acknowledged: usize,
    lost: usize,
    counted_twice: i64,
    counted_missing: i64,
    dead_lettered: u64,
    recovered: Duration,
    statuses: HashMap<u16, usize>,
}

/// `kill -9` of the primary that owns queue shard 0 (and the ad's counters),
/// mid-load, after its replica link has been cut for three seconds
/// (`CLIENT KILL TYPE replica`, with the replica's `masteruser` pointing at
/// a user that does not exist so that it cannot reconnect): on loopback the
/// replica would otherwise hold every write within a millisecond. Commits are held back
/// for the first two seconds, go on for one, and are held back again until
/// the kill, so the queue is full when the primary dies. The killed node
/// then comes back as the new primary's replica.
async fn failover_under_load(min_replicas: u32) -> Failover {
    let mut cluster = TestCluster::start().await;
    let app = cluster_app(&cluster, min_replicas).await;
    let primary = cluster.owner_of(&app.keys.queue()).await;
    let replica = cluster.replica_of(primary).await;
    // An ad whose counter slot is on that primary too, so its counter
    // updates are in harm's way.
    let mut ad = String::new();
    for i in 0.. {
        ad = format!("ad-failover-{i}");
        if cluster.owner_of(&app.keys.counter_tag(&ad)).await == primary {
            break;
        }
    }
    let ad = ad.as_str();

    let load = Arc::new(Load::default());
    let tasks = load.start(&app.address, &[ad], 8, usize::MAX);
    wait_until("the load is under way", Duration::from_secs(30), || {
        let n = load.accepted.lock().unwrap().len();
        async move { n >= 300 }
    })
    .await;

    // Commits wait for the first two seconds of the cut, so the queue on
    // the primary holds what ingest takes meanwhile (otherwise the workers
    // would move it to Postgres within milliseconds and a kill would find
    // it empty); in the last second they commit and count on the primary.
    let stalled = crate::helpers::block_commits(&app.pool).await;
    // The replica is told to log in with a user that does not exist, so
    // once its link is killed it cannot come back until the primary is gone.
    let mut standby = cluster.node(replica).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("masteruser")
        .arg("adtrack-cut-link")
        .arg("masterauth")
        .arg("no-such-password")
        .query_async(&mut standby)
        .await
        .unwrap();
    let cut = Instant::now();
    let mut node = cluster.node(primary).await;
    let killed_links: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(&mut node)
        .await
        .unwrap();
    assert_eq!(killed_links, 1, "the primary had one replica link");
    let accepted_at_cut = load.accepted.lock().unwrap().len();
    wait_until(
        "the link has been cut for 2 s",
        Duration::from_secs(30),
        || {
            let (load, elapsed) = (load.clone(), cut.elapsed());
            async move {
                elapsed >= Duration::from_secs(2)
                    && load.accepted.lock().unwrap().len() > accepted_at_cut + 300
            }
        },
    )
    .await;
    // Commits go on for the last second: batches are committed and their
    // counter updates applied on the primary alone.
    stalled.rollback().await.unwrap();
    let released = Instant::now();
    let committed_before = stored(&app.pool).await;
    wait_until(
        "batches were committed with the link cut",
        Duration::from_secs(30),
        || {
            let (pool, elapsed) = (app.pool.clone(), released.elapsed());
            async move {
                elapsed >= Duration::from_secs(1) && stored(&pool).await > committed_before + 300
            }
        },
    )
    .await;
    // Commits are held back again until the kill: what ingest takes from
    // here on stays in the queues, and on the doomed primary nothing of it
    // reaches the replica, so with REDIS_MIN_REPLICAS=0 a loss is certain.
    let stalled = crate::helpers::block_commits(&app.pool).await;
    let accepted_at_stall = load.accepted.lock().unwrap().len();
    wait_until(
        "events were acknowledged with commits held back",
        Duration::from_secs(30),
        || {
            let n = load.accepted.lock().unwrap().len();
            async move { n > accepted_at_stall + 300 }
        },
    )
    .await;
    let links: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut node)
        .await
        .unwrap();
    assert!(
        links.contains("connected_slaves:0"),
        "the replica link is still cut: {links}"
    );
    cluster.kill(primary);
    let killed = Instant::now();
    stalled.rollback().await.unwrap();

    wait_ready_again(&app).await;
    let recovered = killed.elapsed();
    wait_promoted(&cluster, &app, replica, Duration::from_secs(30)).await;
    // The killed node comes back as the new primary's replica, so writes
    // there can be confirmed again (with REDIS_MIN_REPLICAS=1, until then
    // they wait in the spool and the outbox).
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("masteruser")
        .arg("")
        .arg("masterauth")
        .arg("")
        .query_async(&mut standby)
        .await
        .unwrap();
    cluster.restart(primary).await;
    cluster.wait_healthy(3, true).await;
    // Some more load on the promoted node, then stop.
    let more = load.answered.load(Ordering::Relaxed) + 500;
    wait_until(
        "load ran on after the failover",
        Duration::from_secs(60),
        || {
            let n = load.answered.load(Ordering::Relaxed);
            async move { n >= more }
        },
    )
    .await;
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let in_flight = load.sent_between(cut, killed + recovered);

    wait_drained(&app, Duration::from_secs(120)).await;
    let accepted = load.accepted();
    let stored_now = stored_ids(&app).await;
    let rows = stored_now.len() as i64;
    let (counted, all_time) = clicks_windowed_and_all_time(&app, ad).await;
    assert_eq!(all_time, rows, "the all-time figure differs from Postgres");
    let figures = Failover {
        in_flight,
        acknowledged: accepted.len(),
        lost: accepted.difference(&stored_now).count(),
        counted_twice: (counted - rows).max(0),
        counted_missing: (rows - counted).max(0),
        dead_lettered: dead_letters(&app).await
            + app.metric("adtrack_dead_lettered_total").await as u64,
        recovered,
        statuses: load.statuses(),
    };
    assert_eq!(stored(&app.pool).await, rows);
    println!(
        "FAILOVER REDIS_MIN_REPLICAS={min_replicas} in_flight={} acknowledged={} lost={} \
         counted_twice={} counter_short={} dead_lettered={} recovered_ms={} statuses={:?}",
        figures.in_flight,
        figures.acknowledged,
        figures.lost,
        figures.counted_twice,
        figures.counted_missing,
        figures.dead_lettered,
        figures.recovered.as_millis(),
        figures.statuses
    );
    app.stop().await;
    figures
}

fn assert_only_503_refusals(statuses: &HashMap<u16, usize>) {
    for (status, n) in statuses {
        assert!(
            *status == 202 || *status == 503,
            "{n} answer(s) with status {status} (0 = no answer): {statuses:?}"
        );
    }
}

/// With `REDIS_MIN_REPLICAS=1`, a 202 means a replica has the event (or the
/// synced spool does): the failover loses nothing acknowledged, counts
/// nothing twice and dead-letters nothing.
#[tokio::test]
async fn a_primary_killed_mid_load_with_one_replica_confirming_loses_nothing() {
    let f = failover_under_load(1).await;
    assert_only_503_refusals(&f.statuses);
    assert_eq!(f.lost, 0, "acknowledged events lost");
    assert_eq!(f.counted_twice, 0, "events counted twice");
    assert_eq!(
        f.counted_missing, 0,
        "committed events missing from the counters"
    );
    assert_eq!(f.dead_lettered, 0);
    assert!(f.acknowledged > 0 && f.in_flight > 0);
}

/// With `REDIS_MIN_REPLICAS=0` a 202 means only "the primary has it": the
/// events acknowledged while the link was cut and commits were held back
/// are on the killed primary alone, so the failover loses some of them
/// (more than none: that is the risk this setting takes, and the test
/// shows it is exercised; the FAILOVER line gives the figure), but it
/// still counts nothing twice, dead-letters nothing and answers no 5xx
/// but 503.
#[tokio::test]
async fn a_primary_killed_mid_load_without_replica_confirmation_loses_acknowledged_events() {
    let f = failover_under_load(0).await;
    assert_only_503_refusals(&f.statuses);
    assert!(
        f.lost > 0 && f.lost <= f.acknowledged,
        "acknowledged events on the killed primary alone must be lost: lost {} of {}",
        f.lost,
        f.acknowledged
    );
    assert_eq!(f.counted_twice, 0, "events counted twice");
    assert_eq!(f.dead_lettered, 0);
}

/// Moves `slot` from the primary on `source` to the one on `target`
/// (`CLUSTER SETSLOT … IMPORTING/MIGRATING`, `MIGRATE` of its keys,
/// `SETSLOT … NODE` on every primary). Between the last `MIGRATE` and
/// `SETSLOT … NODE`, `while_migrating` is awaited: writes to the slot's
/// keys are answered ASK by the source meanwhile.
async fn move_slot<F, Fut>(
    cluster: &TestCluster,
    slot: u16,
    source: u16,
    target: u16,
    while_migrating: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut src = cluster.node(source).await;
    let mut dst = cluster.node(target).await;
    let id_of = |c: redis::aio::MultiplexedConnection| async move {
        let mut c = c;
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async::<String>(&mut c)
            .await
            .unwrap()
    };
    let (src_id, dst_id) = (id_of(src.clone()).await, id_of(dst.clone()).await);
    let setslot = |state: &str, id: &str| {
        let mut c = redis::cmd("CLUSTER");
        c.arg("SETSLOT").arg(slot).arg(state).arg(id);
        c
    };
    let _: () = setslot("IMPORTING", &src_id)
        .query_async(&mut dst)
        .await
        .unwrap();
    let _: () = setslot("MIGRATING", &dst_id)
        .query_async(&mut src)
        .await
        .unwrap();
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query_async(&mut src)
            .await
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let _: () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(target)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query_async(&mut src)
            .await
            .unwrap();
    }
    while_migrating().await;
    for port in cluster.primaries().await {
        let _: () = setslot("NODE", &dst_id)
            .query_async(&mut cluster.node(port).await)
            .await
            .unwrap();
    }
}

/// The eventIds of every envelope in the queues of `shards` shards.
async fn queued_ids(app: &TestApp, shards: usize) -> Vec<Uuid> {
    let mut conn = app.redis.clone();
    let mut ids = Vec::new();
    for i in 0..shards {
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(Keys::shard(&app.settings.redis_prefix, i).queue())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        for r in raw {
            let v: serde_json::Value = serde_json::from_str(&r).unwrap();
            ids.push(v["eventId"].as_str().unwrap().parse().unwrap());
        }
    }
    ids
}

/// The slots of queue shards 1 and 0 move to other primaries under load
/// (shard 0's slot is the home slot: the running ingest total, the epoch
/// and the rest of the prefix's own keys move with it). Ingest runs with
/// no worker, so the queues show every push: each event was pushed once
/// (a push re-sent after a redirection would queue it twice), none
/// acknowledged is missing. Then workers drain: counts exact.
#[tokio::test]
async fn queue_shard_slots_moved_under_load_keep_counts_exact() {
    let cluster = TestCluster::start().await;
    let prefix = cluster.spread_prefix(SHARDS).await;
    let mut settings = crate::helpers::test_settings();
    settings.redis_cluster = true;
    settings.redis_url = cluster.url();
    settings.redis_prefix = prefix;
    settings.queue_shards = SHARDS;
    settings.worker_count = SHARDS;
    settings.admin_token = Some("cluster-admin-token-0123".into());
    let app = crate::helpers::start(settings.clone(), adtrack::app::Role::Api).await;
    let ad = "ad-reshard";

    let load = Arc::new(Load::default());
    let tasks = load.start(&app.address, &[ad], 8, usize::MAX);
    wait_until("the load is under way", Duration::from_secs(30), || {
        let n = load.accepted.lock().unwrap().len();
        async move { n >= 300 }
    })
    .await;

    for index in [1, 0] {
        let shard = Keys::shard(&app.settings.redis_prefix, index);
        let slot = adtrack::redis_client::key_slot(shard.queue().as_bytes());
        let source = cluster.owner_of(&shard.queue()).await;
        let target = *cluster
            .primaries()
            .await
            .iter()
            .find(|p| **p != source)
            .unwrap();
        // The slot stays half moved until 300 more events are answered.
        let answered = load.answered.load(Ordering::Relaxed);
        move_slot(&cluster, slot, source, target, || {
            wait_until(
                "events were sent while the slot migrates",
                Duration::from_secs(60),
                || {
                    let n = load.answered.load(Ordering::Relaxed);
                    async move { n > answered + 300 }
                },
            )
        })
        .await;
        assert_eq!(cluster.owner_of(&shard.queue()).await, target);
        let moved = cluster.keys_on(target, &app.settings.redis_prefix).await;
        let tag = shard.queue().replace(":queue", "");
        assert!(
            moved.iter().any(|k| k.starts_with(&tag)),
            "shard {index}'s keys are on the new owner: {moved:?}"
        );
    }
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_only_503_refusals(&load.statuses());
    let accepted = load.accepted();
    // Whatever went to the spool is back in the queues.
    wait_until("the spool is replayed", Duration::from_secs(60), || {
        let dir = app.settings.spool_dir.clone();
        async move {
            std::fs::read_dir(&dir)
                .map(|d| d.count() == 0)
                .unwrap_or(true)
        }
    })
    .await;
    let queued = queued_ids(&app, SHARDS).await;
    let distinct: HashSet<Uuid> = queued.iter().copied().collect();
    assert_eq!(
        queued.len(),
        distinct.len(),
        "events pushed more than once while a slot moved"
    );
    assert!(accepted.is_subset(&distinct), "acknowledged events lost");

    // The workers' process has a spool of its own (one process per
    // SPOOL_DIR).
    settings.spool_dir = settings.spool_dir.with_extension("workers");
    let mut workers = crate::helpers::start(settings, adtrack::app::Role::Worker).await;
    wait_drained(&app, Duration::from_secs(90)).await;
    let stored = stored_ids(&app).await;
    assert_eq!(stored, distinct, "every queued event is stored, once");
    assert_eq!(clicks_counted(&app, ad).await, stored.len() as i64);
    assert_eq!(dead_letters(&app).await, 0);
    workers.shut_down().await;
    let _ = std::fs::remove_dir_all(&workers.settings.spool_dir);
    app.stop().await;
}

/// `NOSCRIPT` after a failover, the dead primary still down
/// (`REDIS_MIN_REPLICAS=0`, so ingest goes on without its replica): every
/// node's script cache is flushed, and each script is sent again (`EVAL`)
/// to the node that owns its keys. A `SCRIPT LOAD` sent to every node in
/// the client's map fails while one of them cannot take it (a dead node
/// not yet dropped from the map; here a replica refused it by ACL), and
/// then nothing would drain.
#[tokio::test]
async fn noscript_after_a_failover_is_answered_with_the_dead_node_still_down() {
    let mut cluster = TestCluster::start().await;
    let app = cluster_app(&cluster, 0).await;
    let ad = "ad-noscript";
    let load = Arc::new(Load::default());
    for t in load.start(&app.address, &[ad], 4, 200) {
        t.await.unwrap();
    }
    wait_drained(&app, Duration::from_secs(60)).await;

    let primary = cluster.owner_of(&app.keys.queue()).await;
    let replica = cluster.replica_of(primary).await;
    cluster.kill(primary);
    wait_promoted(&cluster, &app, replica, Duration::from_secs(60)).await;
    cluster.wait_healthy(3, false).await;
    wait_ready_again(&app).await;
    // A node that cannot take `SCRIPT LOAD` (as a dead one still in a
    // client's map cannot): a replica, which runs none of adtrack's
    // scripts. Only a reload sent to every node would need it.
    let other = cluster
        .primaries()
        .await
        .into_iter()
        .find(|p| *p != replica)
        .unwrap();
    let bystander = cluster.replica_of(other).await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-script|load")
        .query_async(&mut cluster.node(bystander).await)
        .await
        .unwrap();
    for node in cluster.alive() {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut cluster.node(node.port).await)
            .await
            .unwrap();
    }
    let more = Arc::new(Load::default());
    for t in more.start(&app.address, &[ad], 4, 400) {
        t.await.unwrap();
    }
    assert_only_503_refusals(&more.statuses());
    wait_drained(&app, Duration::from_secs(90)).await;
    let mut accepted = load.accepted();
    accepted.extend(more.accepted());
    let stored = stored_ids(&app).await;
    assert!(accepted.is_subset(&stored), "acknowledged events lost");
    assert_eq!(clicks_counted(&app, ad).await, stored.len() as i64);
    assert_eq!(dead_letters(&app).await, 0);
    app.stop().await;
}

/// A batch touching two counter slots whose application stops after the
/// first (the second slot is paused, as if the process died between the
/// two calls): the outbox row stays, and recovery
/// applies the batch again: the first slot answers `seen` through its own
/// marker, the second applies. Each event is counted once, and a second
/// recovery changes nothing.
#[tokio::test]
async fn a_crash_between_two_counter_slots_neither_loses_nor_doubles() {
    let app = crate::helpers::start(crate::helpers::test_settings(), adtrack::app::Role::Api).await;
    let keys = Keys::new(&app.settings.redis_prefix).with_counter_slots(16);
    let counters = adtrack::counters::Counters::new(keys.clone());
    let layout = counters.layout();
    let first = "ad-slot-a";
    let second = (0..)
        .map(|i| format!("ad-slot-b{i}"))
        .find(|b| keys.counter_tag(b) != keys.counter_tag(first))
        .unwrap();
    let now = chrono::Utc::now();
    let events: Vec<adtrack::domain::Event> = [(first, 3), (second.as_str(), 5)]
        .iter()
        .flat_map(|(ad, n)| (0..*n).map(move |_| json!({ "type": "click", "adId": ad })))
        .map(|body| {
            adtrack::domain::parse_value(body, &adtrack::domain::ParseContext::new(now)).unwrap()
        })
        .collect();
    let refs: Vec<&_> = events.iter().collect();
    adtrack::exactly_once::commit(&app.pool, &refs, Uuid::now_v7(), &[])
        .await
        .unwrap();

    let hour = now.timestamp().div_euclid(3600);
    let day = now.timestamp().div_euclid(86_400);
    let clicks = |ad: String| {
        let (mut conn, key) = (app.redis.clone(), layout.ad_hours(day, &ad));
        async move {
            redis::cmd("HGET")
                .arg(key)
                .arg(format!("c:{hour}"))
                .query_async::<Option<i64>>(&mut conn)
                .await
                .unwrap()
                .unwrap_or(0)
        }
    };

    let mut conn = app.redis.clone();
    let paused = keys.paused_in(&keys.counter_tag(&second));
    let _: () = redis::cmd("SET")
        .arg(&paused)
        .arg("crash")
        .query_async(&mut conn)
        .await
        .unwrap();
    let applied = adtrack::exactly_once::recover(&app.pool, &mut conn, &counters, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(applied, 0, "a batch half applied is not done");
    assert_eq!(crate::helpers::outbox_len(&app.pool).await, 1);
    assert_eq!(clicks(first.to_owned()).await, 3, "the first slot applied");
    assert_eq!(clicks(second.clone()).await, 0, "the second slot did not");

    let _: () = redis::cmd("DEL")
        .arg(&paused)
        .query_async(&mut conn)
        .await
        .unwrap();
    for _ in 0..2 {
        adtrack::exactly_once::recover(&app.pool, &mut conn, &counters, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(crate::helpers::outbox_len(&app.pool).await, 0);
        assert_eq!(clicks(first.to_owned()).await, 3, "counted once");
        assert_eq!(clicks(second.clone()).await, 5, "counted once");
    }
    app.stop().await;
}

/// Waits until `/ready` answers 200 again after a failover.
async fn wait_ready_again(app: &TestApp) {
    wait_until(
        "adtrack is ready again",
        Duration::from_secs(60),
        || async { app.get("/ready").await.0 == StatusCode::OK },
    )
    .await;
}

/// Waits until `replica` owns queue shard 0 of `app`. Every node learns of
/// a promotion by gossip, the one asked here perhaps after adtrack did.
async fn wait_promoted(cluster: &TestCluster, app: &TestApp, replica: u16, within: Duration) {
    let queue = app.keys.queue();
    wait_until("the replica took over queue shard 0", within, || {
        let queue = queue.clone();
        async move { cluster.owner_of(&queue).await == replica }
    })
    .await;
}
