//! Helpers of `bench/run` that must produce exactly what adtrack produces:
//!
//! - `prefill <redis-url> <prefix> <count> <ad> [<shards> [cluster]]`:
//!   pushes `count` click envelopes (serialised by adtrack's own `Event`)
//!   onto `{prefix}:queue` (or round-robin onto the queues of `shards`
//!   queue shards, on a Redis Cluster with `cluster`) in pipelined
//!   `LPUSH`es, for the drain measurement;
//! - `csv <count> <path>`: writes the same number of rows as CSV for the
//!   raw `COPY` ceiling;
//! - `floor <database-url> <count> <ad> <connections> <batch> keyed|bare`:
//!   the dedup floor. The same envelopes as `prefill`, decoded by adtrack's
//!   `Event` before the clock starts, are written `batch` at a time over
//!   `connections` connections, with the arrays the worker binds
//!   (`store::BatchColumns`). `keyed` claims each eventId in the schema's own
//!   `event_keys` (`ON CONFLICT DO NOTHING`) and inserts the raw rows of the
//!   keys claimed into its partitioned `events`, with every index;
//!   `bare` does the same writes into copies of both tables without any
//!   index (so without the dedup). Prints one JSON line: the events, the
//!   seconds the writes took, the rows stored, and this process's CPU
//!   seconds during them.

use std::io::Write;
use std::net::IpAddr;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use adtrack::domain::{parse_event, Event, Kind, ParseContext};
use adtrack::queue::Keys;
use adtrack::store::BatchColumns;
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
        ["floor", url, count, ad, connections, batch, mode] => {
            let keyed = match *mode {
                "keyed" => true,
                "bare" => false,
                _ => bail!("floor: mode is keyed or bare"),
            };
            floor(
                url,
                count.parse().context("count")?,
                ad,
                connections.parse().context("connections")?,
                batch.parse().context("batch")?,
                keyed,
            )
            .await?;
        }
        _ => bail!(
            "usage: bench_tool prefill <redis-url> <prefix> <count> <ad> | csv <count> <path> \
             | floor <database-url> <count> <ad> <connections> <batch> keyed|bare"
        ),
    }
    Ok(())
}

/// The claim and the raw insert of the drain's statement
/// (`store::insert_batch`) and nothing else: no rollups, no outbox, no
/// counters. `keyed` writes the schema's own tables, claiming each eventId
/// with `ON CONFLICT DO NOTHING`; otherwise the index-free copies, where
/// every key is inserted and nothing is deduplicated.
fn floor_statement(keyed: bool) -> String {
    let (keys, events, conflict) = if keyed {
        (
            "event_keys",
            "events",
            "ON CONFLICT (tenant_id, event_id) DO NOTHING",
        )
    } else {
        ("floor_keys", "floor_events", "")
    };
    format!(
        r#"
    WITH input AS (
        SELECT * FROM UNNEST(
            $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::timestamptz[], $9::timestamptz[], $10::float8[], $11::int8[],
            $12::text[], $13::text[], $14::text[], $15::text[], $16::int2[], $17::text[]
        ) AS t(event_id, kind, ad_id, campaign_id, screen_id, user_id, ip, event_time,
               received_at, playback_time, amount, variant, experiment_id, properties, tenant_id,
               error_code, invalid_reason)
    ),
    claimed AS (
        INSERT INTO {keys} (tenant_id, event_id, event_time)
        SELECT tenant_id, event_id, event_time FROM input
        {conflict}
        RETURNING tenant_id, event_id
    )
    INSERT INTO {events} (tenant_id, event_id, kind, ad_id, campaign_id, screen_id, user_id, ip,
                          event_time, received_at, playback_time, amount, variant,
                          experiment_id, properties, error_code, invalid_reason)
    SELECT tenant_id, event_id, kind, ad_id, campaign_id, screen_id, user_id, ip::inet, event_time,
           received_at, playback_time, amount, variant, experiment_id, properties::jsonb,
           error_code, invalid_reason
    FROM input JOIN claimed USING (tenant_id, event_id)
"#
    )
}

/// Index-free copies of `event_keys` and `events` (partitioned by time like
/// it, with one default partition).
const BARE_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS floor_keys (LIKE event_keys INCLUDING DEFAULTS);
    CREATE TABLE IF NOT EXISTS floor_events (LIKE events INCLUDING DEFAULTS)
        PARTITION BY RANGE (event_time);
    CREATE TABLE IF NOT EXISTS floor_events_all PARTITION OF floor_events DEFAULT;
";

async fn floor(
    url: &str,
    count: usize,
    ad: &str,
    connections: u32,
    batch: usize,
    keyed: bool,
) -> anyhow::Result<()> {
    let pool = adtrack::store::connect(url, connections).await?;
    if !keyed {
        sqlx::raw_sql(BARE_TABLES)
            .execute(&pool)
            .await
            .context("creating the index-free tables")?;
    }
    // The envelopes `prefill` queues, decoded as the worker decodes them.
    let mut events = Vec::with_capacity(count);
    for i in 0..count {
        let envelope = serde_json::to_string(&event(i, ad)?)?;
        events.push(serde_json::from_str::<Event>(&envelope)?);
    }
    let events = Arc::new(events);
    let next = Arc::new(AtomicUsize::new(0));
    let statement: Arc<str> = floor_statement(keyed).into();
    let cpu0 = own_cpu_seconds()?;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (pool, events, next) = (pool.clone(), events.clone(), next.clone());
        let statement = statement.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(batch, Ordering::Relaxed);
                if from >= events.len() {
                    return anyhow::Ok(());
                }
                let part: Vec<&Event> = events[from..(from + batch).min(events.len())]
                    .iter()
                    .collect();
                let c = BatchColumns::of(&part)?;
                sqlx::query(&statement)
                    .bind(&c.ids)
                    .bind(&c.kinds)
                    .bind(&c.ads)
                    .bind(&c.campaigns)
                    .bind(&c.screens)
                    .bind(&c.users)
                    .bind(&c.ips)
                    .bind(&c.times)
                    .bind(&c.received)
                    .bind(&c.playback)
                    .bind(&c.amounts)
                    .bind(&c.variants)
                    .bind(&c.experiments)
                    .bind(&c.properties)
                    .bind(&c.tenants)
                    .bind(&c.error_codes)
                    .bind(&c.invalid)
                    .execute(&pool)
                    .await
                    .context("writing a floor batch")?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = own_cpu_seconds()? - cpu0;
    let table = if keyed { "events" } else { "floor_events" };
    let stored: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&pool)
        .await?;
    println!(
        "{}",
        serde_json::json!({ "events": count, "secs": secs, "stored": stored, "client_cpu_s": cpu })
    );
    Ok(())
}

/// This process's CPU seconds (user + system), from /proc (in clock ticks
/// of 1/100 s, as on every Linux this runs on).
fn own_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat[stat.rfind(')').context("stat")? + 2..]
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}
