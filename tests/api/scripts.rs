//! Each Lua script on its own, against the shared Redis under a prefix of
//! its own: the branches that matter when a process crashed half-way
//! (a script run twice, a heartbeat back, a letter already gone).

use std::time::Duration;

use adtrack::queue::scripts::{DIVERT, PROMOTE_DUE, REPLAY_DEAD, REQUEUE_DEAD, RESERVE};
use adtrack::queue::Keys;
use adtrack::ratelimit::TAKE;
use adtrack::redis_client::RedisConn;
use redis::{AsyncCommands, FromRedisValue, Script, ToRedisArgs};
use uuid::Uuid;

use crate::helpers::redis_url;

/// A connection and a prefix no other test uses; its keys are deleted on
/// [`Scratch::clean`].
pub(crate) struct Scratch {
    pub(crate) conn: RedisConn,
    pub(crate) keys: Keys,
    worker: String,
}

impl Scratch {
    pub(crate) async fn new() -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let conn = adtrack::app::redis_connection(&redis_url(), Duration::from_secs(5))
            .await
            .unwrap();
        Self {
            conn,
            keys: Keys::new(&format!("scripts-{}", &id[..12])),
            worker: "w1".into(),
        }
    }

    /// Runs `script` with `keys` and `args`, as its caller in `src/` does.
    pub(crate) async fn run<T: FromRedisValue>(
        &mut self,
        script: &Script,
        keys: &[String],
        args: impl ToRedisArgs,
    ) -> T {
        let mut call = script.prepare_invoke();
        for key in keys {
            call.key(key);
        }
        call.arg(args).invoke_async(&mut self.conn).await.unwrap()
    }

    pub(crate) fn processing(&self) -> String {
        self.keys.processing(&self.worker)
    }

    pub(crate) async fn list(&mut self, key: &str) -> Vec<String> {
        self.conn.lrange(key, 0, -1).await.unwrap()
    }

    pub(crate) async fn exists(&mut self, key: &str) -> bool {
        self.conn.exists(key).await.unwrap()
    }

    pub(crate) async fn clean(mut self, extra: &[String]) {
        let mut keys = vec![
            self.keys.queue(),
            self.processing(),
            self.keys.heartbeat(&self.worker),
            self.keys.workers(),
            self.keys.retry(),
            self.keys.dlq(),
        ];
        keys.extend_from_slice(extra);
        let _: () = self.conn.del(keys).await.unwrap();
    }
}

async fn reserve(s: &mut Scratch, max: usize) -> i64 {
    let keys = [s.keys.queue(), s.processing()];
    s.run(&RESERVE, &keys, max).await
}

#[tokio::test]
async fn reserve_moves_the_oldest_items_and_nothing_from_an_empty_queue() {
    let mut s = Scratch::new().await;
    let (queue, processing) = (s.keys.queue(), s.processing());

    // Empty queue: nothing moved, no processing list created.
    assert_eq!(reserve(&mut s, 10).await, 0);
    assert!(!s.exists(&processing).await);

    // LPUSH puts the newest on the left; the oldest three move, in order,
    // and are on exactly one of the two lists.
    let _: () = s
        .conn
        .lpush(&queue, &["a", "b", "c", "d", "e"])
        .await
        .unwrap();
    assert_eq!(reserve(&mut s, 3).await, 3);
    assert_eq!(s.list(&queue).await, ["e", "d"]);
    assert_eq!(s.list(&processing).await, ["c", "b", "a"]);

    // A second call before the list was acknowledged (a call resent after
    // its answer was lost) moves nothing and answers the list's length: the
    // worker reads the first call's items, which are not left behind unseen.
    assert_eq!(reserve(&mut s, 10).await, 3);
    assert_eq!(s.list(&queue).await, ["e", "d"]);
    assert_eq!(s.list(&processing).await, ["c", "b", "a"]);

    // Once acknowledged, asking for more than is left takes what is left,
    // and an emptied queue is gone.
    let _: () = s.conn.del(&processing).await.unwrap();
    assert_eq!(reserve(&mut s, 10).await, 2);
    assert!(!s.exists(&queue).await);
    assert_eq!(s.list(&processing).await, ["e", "d"]);
    s.clean(&[]).await;
}

/// The worker's reservation over the script: a list left over answers
/// itself whole, and an empty queue is waited on without being changed.
#[tokio::test]
async fn a_reservation_answers_a_held_list_whole_and_waits_for_an_empty_queue() {
    let mut s = Scratch::new().await;
    let queue = adtrack::queue::Queue::new(s.keys.clone());
    let wait = Duration::from_secs(5);
    let _: () = s
        .conn
        .lpush(s.keys.queue(), &["a", "b", "c", "d", "e"])
        .await
        .unwrap();
    // Not acknowledged after the first: the second answers the same items
    // only; acknowledged, the third takes what is left.
    for (expected, acknowledge) in [
        (&["c", "b", "a"][..], false),
        (&["c", "b", "a"][..], true),
        (&["e", "d"][..], true),
    ] {
        let got = queue
            .reserve(&mut s.conn, &s.worker, 3, wait)
            .await
            .unwrap();
        assert_eq!(got, expected);
        if acknowledge {
            let _: () = s.conn.del(s.processing()).await.unwrap();
        }
    }

    // An empty queue: the reservation blocks on it, and an item pushed
    // meanwhile is the one it answers, moved exactly once.
    let mut pusher = adtrack::app::redis_connection(&redis_url(), Duration::from_secs(5))
        .await
        .unwrap();
    let queue_key = s.keys.queue();
    let push = tokio::spawn(async move {
        let _: () = pusher.lpush(queue_key, "f").await.unwrap();
    });
    assert_eq!(
        queue
            .reserve(&mut s.conn, &s.worker, 3, wait)
            .await
            .unwrap(),
        ["f"]
    );
    push.await.unwrap();
    assert!(!s.exists(&s.keys.queue()).await);
    assert_eq!(s.list(&s.processing()).await, ["f"]);

    // Nothing comes: the wait ends with nothing held.
    let _: () = s.conn.del(s.processing()).await.unwrap();
    assert!(queue
        .reserve(&mut s.conn, &s.worker, 3, Duration::from_millis(100))
        .await
        .unwrap()
        .is_empty());
    assert!(!s.exists(&s.processing()).await);
    s.clean(&[]).await;
}

async fn requeue_dead(s: &mut Scratch) -> i64 {
    let keys = [
        s.keys.heartbeat(&s.worker),
        s.processing(),
        s.keys.queue(),
        s.keys.workers(),
    ];
    let worker = s.worker.clone();
    s.run(&REQUEUE_DEAD, &keys, worker).await
}

#[tokio::test]
async fn requeue_dead_leaves_a_worker_whose_heartbeat_came_back() {
    let mut s = Scratch::new().await;
    let (queue, processing, workers) = (s.keys.queue(), s.processing(), s.keys.workers());
    let _: () = s.conn.sadd(&workers, &s.worker).await.unwrap();
    let _: () = s.conn.rpush(&processing, &["a", "b"]).await.unwrap();
    let _: () = s.conn.lpush(&queue, "z").await.unwrap();

    // The reaper saw the worker silent, but it beat again before the script.
    let _: () = s
        .conn
        .set_ex(s.keys.heartbeat(&s.worker), "alive", 30)
        .await
        .unwrap();
    assert_eq!(requeue_dead(&mut s).await, -1);
    assert_eq!(s.list(&processing).await, ["a", "b"]);
    assert_eq!(s.list(&queue).await, ["z"]);
    let registered: bool = s.conn.sismember(&workers, &s.worker).await.unwrap();
    assert!(registered, "a live worker stays registered");

    // Now it is gone: its items go to the consuming end of the queue, it
    // is forgotten, and a second run finds nothing more to move.
    let _: () = s.conn.del(s.keys.heartbeat(&s.worker)).await.unwrap();
    assert_eq!(requeue_dead(&mut s).await, 2);
    assert!(!s.exists(&processing).await);
    assert_eq!(s.list(&queue).await, ["z", "b", "a"]);
    let registered: bool = s.conn.sismember(&workers, &s.worker).await.unwrap();
    assert!(!registered);
    assert_eq!(requeue_dead(&mut s).await, 0);
    assert_eq!(s.list(&queue).await, ["z", "b", "a"]);
    s.clean(&[]).await;
}

async fn divert(s: &mut Scratch, args: &[&str]) -> i64 {
    let keys = [s.processing(), s.keys.retry(), s.keys.dlq()];
    s.run(&DIVERT, &keys, args).await
}

#[tokio::test]
async fn divert_moves_each_item_once_even_when_run_again() {
    let mut s = Scratch::new().await;
    let (processing, retry, dlq) = (s.processing(), s.keys.retry(), s.keys.dlq());
    let _: () = s
        .conn
        .rpush(&processing, &["ok", "bad", "poison"])
        .await
        .unwrap();
    let args = [
        "bad", "R", "1000", "bad+1", // retry at 1000 ms
        "poison", "D", "", "letter", // dead letter
    ];
    assert_eq!(divert(&mut s, &args).await, 2);
    assert_eq!(s.list(&processing).await, ["ok"]);
    let retries: Vec<(String, i64)> = s.conn.zrange_withscores(&retry, 0, -1).await.unwrap();
    assert_eq!(retries, [("bad+1".to_string(), 1000)]);
    assert_eq!(s.list(&dlq).await, ["letter"]);

    // The worker crashed before it learnt the answer and runs the same
    // divert again: the items are no longer in its processing list, so
    // nothing is added twice.
    assert_eq!(divert(&mut s, &args).await, 0);
    let retrying: i64 = s.conn.zcard(&retry).await.unwrap();
    assert_eq!(retrying, 1);
    assert_eq!(s.list(&dlq).await, ["letter"]);
    assert_eq!(s.list(&processing).await, ["ok"]);
    s.clean(&[]).await;
}

async fn promote_due(s: &mut Scratch, now_ms: i64, max: usize) -> i64 {
    let keys = [s.keys.retry(), s.keys.queue()];
    s.run(&PROMOTE_DUE, &keys, (now_ms, max)).await
}

#[tokio::test]
async fn promote_due_moves_only_due_retries_and_each_once() {
    let mut s = Scratch::new().await;
    let (queue, retry) = (s.keys.queue(), s.keys.retry());
    let _: () = s
        .conn
        .zadd_multiple(
            &retry,
            &[(100, "a"), (200, "b"), (300, "c"), (5000, "later")],
        )
        .await
        .unwrap();
    // At most two per run, the earliest first.
    assert_eq!(promote_due(&mut s, 1000, 2).await, 2);
    assert_eq!(s.list(&queue).await, ["b", "a"]);
    assert_eq!(promote_due(&mut s, 1000, 2).await, 1);
    assert_eq!(s.list(&queue).await, ["c", "b", "a"]);
    // A run after that (or a second process at the same moment) moves
    // nothing: each retry went to the queue once, the future one stays.
    assert_eq!(promote_due(&mut s, 1000, 2).await, 0);
    assert_eq!(s.list(&queue).await, ["c", "b", "a"]);
    let left: Vec<String> = s.conn.zrange(&retry, 0, -1).await.unwrap();
    assert_eq!(left, ["later"]);
    s.clean(&[]).await;
}

async fn replay_dead(s: &mut Scratch, args: &[&str]) -> i64 {
    let keys = [s.keys.dlq(), s.keys.queue()];
    s.run(&REPLAY_DEAD, &keys, args).await
}

#[tokio::test]
async fn replay_dead_queues_a_letter_only_while_it_is_still_dead() {
    let mut s = Scratch::new().await;
    let (queue, dlq) = (s.keys.queue(), s.keys.dlq());
    let _: () = s.conn.lpush(&dlq, &["l1", "l2"]).await.unwrap();
    let args = ["l1", "e1", "l2", "e2"];
    assert_eq!(replay_dead(&mut s, &args).await, 2);
    assert_eq!(s.list(&queue).await, ["e2", "e1"]);
    assert!(!s.exists(&dlq).await);

    // The same replay again (its caller crashed, or another operator read
    // the same letters): they are gone from the list, nothing is queued.
    assert_eq!(replay_dead(&mut s, &args).await, 0);
    assert_eq!(s.list(&queue).await, ["e2", "e1"]);

    // A letter purged between the read and the replay is not queued either.
    let _: () = s.conn.lpush(&dlq, "l3").await.unwrap();
    assert_eq!(replay_dead(&mut s, &["gone", "e0", "l3", "e3"]).await, 1);
    assert_eq!(s.list(&queue).await, ["e3", "e2", "e1"]);
    s.clean(&[]).await;
}

/// Calls TAKE on `buckets` of (key, rate, burst, cost).
async fn take(conn: &mut RedisConn, buckets: &[(&str, f64, u32, u32)]) -> (i64, i64, i64) {
    let mut call = TAKE.prepare_invoke();
    for (key, rate, burst, cost) in buckets {
        call.key(*key).arg(*rate).arg(*burst).arg(*cost);
    }
    call.invoke_async(conn).await.unwrap()
}

async fn tokens(conn: &mut RedisConn, bucket: &str) -> f64 {
    conn.hget(bucket, "tokens").await.unwrap()
}

#[tokio::test]
async fn take_charges_every_bucket_or_none() {
    let s = Scratch::new().await;
    let mut conn = s.conn.clone();
    let (ip, ad) = (
        s.keys.rate_limit_client("192.0.2.1"),
        s.keys.rate_limit_ad("", "ad-1"),
    );
    // A slow refill, so the test's own duration adds no visible token.
    let rate = 0.001;
    assert_eq!(
        take(&mut conn, &[(&ip, rate, 10, 4), (&ad, rate, 3, 2)]).await,
        (1, 0, 0)
    );
    let ip_left = tokens(&mut conn, &ip).await;
    let ad_left = tokens(&mut conn, &ad).await;
    assert!((ip_left - 6.0).abs() < 0.01, "{ip_left}");
    assert!((ad_left - 1.0).abs() < 0.01, "{ad_left}");

    // The ad's bucket is short: refused, and the client's bucket, which
    // could pay, is not charged either.
    let (ok, wait, short) = take(&mut conn, &[(&ip, rate, 10, 4), (&ad, rate, 3, 2)]).await;
    assert_eq!((ok, short), (0, 2));
    assert!(wait > 0);
    let ip_after = tokens(&mut conn, &ip).await;
    let ad_after = tokens(&mut conn, &ad).await;
    assert!((ip_after - ip_left).abs() < 0.01, "{ip_after}");
    assert!((ad_after - ad_left).abs() < 0.01, "{ad_after}");
    let _: () = conn.del(&[ip, ad]).await.unwrap();
    s.clean(&[]).await;
}
