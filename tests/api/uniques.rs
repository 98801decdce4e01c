//! Unique clicks: a batch sends only the IPs that can change a unique-click
//! HyperLogLog, and the keys end up exactly as if every IP had been sent.
//! The test keys live under the app's prefix, which `stop` clears.

use adtrack::counters::registers::{member, REGISTERS};
use adtrack::counters::{Applied, CountedEvent, Counters};
use adtrack::domain::{parse_event, ParseContext};
use adtrack::exactly_once;
use adtrack::redis_client::RedisConn;
use chrono::{DurationRound, TimeDelta, Utc};
use serde_json::json;

use crate::helpers::spawn_app;

/// The 16,384 registers of a dense HyperLogLog as Redis stores it: a
/// 16-byte header, then 6-bit registers, least significant bits first.
async fn registers(conn: &mut RedisConn, key: &str) -> Vec<u8> {
    // Redis turns a sparse key dense from a few thousand members on; this
    // keeps the comparison to one encoding.
    let raw: Vec<u8> = redis::cmd("GET").arg(key).query_async(conn).await.unwrap();
    assert_eq!(&raw[..4], b"HYLL", "{key} is not a HyperLogLog");
    assert_eq!(raw[4], 0, "{key} is not dense");
    let regs = &raw[16..];
    (0..REGISTERS)
        .map(|i| {
            let (byte, bit) = (i * 6 / 8, i * 6 % 8);
            let low = u16::from(regs[byte]) >> bit;
            let high = regs.get(byte + 1).map_or(0, |b| u16::from(*b) << (8 - bit));
            ((low | high) & 63) as u8
        })
        .collect()
}

async fn pfadd(conn: &mut RedisConn, key: &str, members: &[String]) {
    let _: i64 = redis::cmd("PFADD")
        .arg(key)
        .arg(members)
        .query_async(conn)
        .await
        .unwrap();
}

fn ips(from: u32, n: u32) -> Vec<String> {
    (from..from + n)
        .map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string())
        .collect()
}

#[tokio::test]
async fn adtrack_puts_a_member_in_the_register_and_rank_that_redis_does() {
    let app = spawn_app().await;
    let mut conn = app.redis.clone();
    let key = format!("{{{}}}:test-hll", app.keys.prefix());
    // IPv4 text is 7 to 15 bytes; members of every length up to 40 and
    // IPv6 text cover every tail of the hash.
    let mut members = ips(0, 20_000);
    members.extend((0..=40).map(|n| "abcdefghij".repeat(4)[..n].to_owned()));
    members.extend((0..500u32).map(|i| format!("2001:db8:{i:x}::{:x}", i * 7919)));
    pfadd(&mut conn, &key, &members).await;
    let mut expected = vec![0u8; REGISTERS];
    for m in &members {
        let (index, rank) = member(m.as_bytes());
        expected[index] = expected[index].max(rank);
    }
    assert_eq!(registers(&mut conn, &key).await, expected);
    app.stop().await;
}

/// Five batches of 2,000 new IPs on one ad and minute: the later ones skip
/// most IPs, and the minute and hour keys hold exactly the registers of a
/// key given every IP.
#[tokio::test]
async fn batches_skip_the_ips_that_cannot_change_a_key_and_lose_nothing() {
    let app = spawn_app().await;
    let mut conn = app.redis.clone();
    let metrics = adtrack::metrics::Metrics::new().unwrap();
    let counters =
        Counters::new(app.keys.clone()).counting_skips(metrics.unique_ips_skipped.clone());
    let ad = "ad-uniques";
    let at = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap() - TimeDelta::minutes(5);
    let ctx = ParseContext::new(Utc::now());
    let reference = format!("{{{}}}:test-reference", app.keys.prefix());
    let mut batch_max = vec![0u8; REGISTERS];
    for round in 0..5u32 {
        let batch_ips = ips(round * 2_000, 2_000);
        let events: Vec<_> = batch_ips
            .iter()
            .map(|ip| {
                let body = json!({"type": "click", "adId": ad, "ipAddress": ip,
                                  "timestamp": at.to_rfc3339()});
                parse_event(body.to_string().as_bytes(), &ctx).unwrap()
            })
            .collect();
        let views: Vec<CountedEvent> = events.iter().map(CountedEvent::from).collect();
        let counted: Vec<_> = views.iter().map(|c| c.view()).collect();
        let batch = uuid::Uuid::now_v7();
        let applied = exactly_once::apply_committed(&mut conn, &counters, &batch, &counted, None)
            .await
            .unwrap();
        assert_eq!(applied, Applied::Applied);
        pfadd(&mut conn, &reference, &batch_ips).await;
    }
    // What a batch can skip: the IPs whose rank is not above what the
    // batches before it put in their register (the same for the minute,
    // hour and all-time keys, which all got every batch).
    let mut known = vec![0u8; REGISTERS];
    let mut expected = 0;
    for (i, ip) in ips(0, 10_000).iter().enumerate() {
        if i % 2_000 == 0 {
            known = (0..REGISTERS).map(|r| known[r].max(batch_max[r])).collect();
            batch_max = vec![0u8; REGISTERS];
        }
        let (index, rank) = member(ip.as_bytes());
        if i >= 2_000 && rank <= known[index] {
            expected += 1;
        }
        batch_max[index] = batch_max[index].max(rank);
    }
    let skipped = metrics.unique_ips_skipped.get();
    assert!(expected > 1_000, "{expected}");
    assert_eq!(skipped, expected);
    assert!(!counters.registers().is_empty());
    let root = app.keys.counters_root();
    let minute = at.timestamp().div_euclid(60);
    let hour = at.timestamp().div_euclid(3600);
    let want = registers(&mut conn, &reference).await;
    for key in [
        format!("{root}um:{minute}:{ad}"),
        format!("{root}uh:{hour}:{ad}"),
    ] {
        assert_eq!(registers(&mut conn, &key).await, want, "{key}");
    }
    let estimate = app.analytics(ad, "1h").await["uniqueClicks"]
        .as_f64()
        .unwrap();
    assert!((estimate - 10_000.0).abs() < 200.0, "{estimate}");
    app.stop().await;
}
