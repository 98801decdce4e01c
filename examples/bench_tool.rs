//! Helpers of `bench/run` that must produce exactly what adtrack produces:
//!
//! - `prefill <redis-url> <prefix> <count> <ad> [<shards> [cluster]]`:
//!   pushes `count` click envelopes (serialised by adtrack's own `Event`)
//!   onto `{prefix}:queue` (or round-robin onto the queues of `shards`
//!   queue shards, on a Redis Cluster with `cluster`) in pipelined
//!   `LPUSH`es, for the drain measurement;
//! - `csv <count> <path>`: writes the same number of rows as CSV for the
//!   raw `COPY` ceiling.

use std::io::Write;
use std::net::IpAddr;

use adtrack::domain::{parse_event, Kind, ParseContext};
use adtrack::queue::Keys;
use anyhow::{bail, Context};

fn event(i: usize, ad: &str) -> anyhow::Result<adtrack::domain::Event> {
    let mut ctx = ParseContext::new(chrono::Utc::now());
    ctx.fixed_kind = Some(Kind::Click);
    let ip = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    let body = serde_json::json!({ "adId": ad, "ipAddress": ip, "videoPlaybackTime": 12.5 });
    parse_event(body.to_string().as_bytes(), &ctx).map_err(|e| anyhow::anyhow!(e.message))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["prefill", url, prefix, count, ad, rest @ ..] => {
            let count: usize = count.parse().context("count")?;
            // Optional: the number of queue shards to spread over, and
            // `cluster` for a Redis Cluster (`url` then lists seed nodes).
            let shards: usize = rest
                .first()
                .map_or(Ok(1), |s| s.parse())
                .context("shards")?;
            let cluster = rest.get(1) == Some(&"cluster");
            let mut conn = adtrack::redis_client::RedisTarget::new(url, cluster)?
                .connect(std::time::Duration::from_secs(30))
                .await?;
            let queues: Vec<String> = (0..shards.max(1))
                .map(|s| Keys::shard(prefix, s).queue())
                .collect();
            let mut i = 0;
            let mut round = 0;
            while i < count {
                // One pipeline per shard queue: in a cluster each goes to
                // the node that owns that shard.
                let queue = &queues[round % queues.len()];
                round += 1;
                let mut pipe = redis::pipe();
                for _ in 0..10 {
                    let n = 1000.min(count - i);
                    if n == 0 {
                        break;
                    }
                    let mut items = Vec::with_capacity(n);
                    for j in i..i + n {
                        items.push(serde_json::to_string(&event(j, ad)?)?);
                    }
                    pipe.cmd("LPUSH").arg(queue).arg(items).ignore();
                    i += n;
                }
                pipe.query_async::<()>(&mut conn).await?;
            }
            println!("{count}");
        }
        ["csv", count, path] => {
            let count: usize = count.parse().context("count")?;
            let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
            for i in 0..count {
                let e = event(i, "ad-copy")?;
                writeln!(
                    out,
                    "{},click,{},,,,{},{},{},12.5",
                    e.event_id,
                    e.ad_id.as_ref().map(|a| a.as_str()).unwrap_or_default(),
                    e.ip_address.map(|ip| ip.to_string()).unwrap_or_default(),
                    e.timestamp.to_rfc3339(),
                    e.received_at.to_rfc3339(),
                )?;
            }
            out.flush()?;
        }
        _ => bail!(
            "usage: bench_tool prefill <redis-url> <prefix> <count> <ad> | csv <count> <path>"
        ),
    }
    Ok(())
}
