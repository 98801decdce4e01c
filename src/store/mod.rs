//! PostgreSQL, the source of truth: connection and migrations, the batched
//! insert with dedup and rollups, the counter outbox and the reads.
//!
//! Invariant: raw rows and the rollups derived from them (per minute, per
//! hour, and per experiment variant) are written by one statement, and
//! rollups count only the rows that statement inserted, so a duplicate
//! eventId can never be counted twice.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use uuid::Uuid;

use crate::counters::CountedEvent;
use crate::domain::{key_text, Event, Ident, Kind};

pub mod counters;
pub mod health;
pub mod outbox;
mod partitions;
pub mod reports;
pub mod tenants;

pub use partitions::{
    count_partitions, ensure_partitions, list_partitions, prune, retention_cutoff, Pruned,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Creates the database if it is missing, connects and runs migrations.
pub async fn connect(database_url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    ensure_database(database_url).await?;
    let options = PgConnectOptions::from_str(database_url)
        .context("DATABASE_URL is not a valid postgres URL")?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("connecting to Postgres")?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Connects without creating or migrating anything.
pub fn connect_lazy(database_url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(database_url)
        .context("DATABASE_URL is not a valid postgres URL")?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

pub async fn ensure_database(database_url: &str) -> anyhow::Result<()> {
    let exists = Postgres::database_exists(database_url)
        .await
        .context("checking whether the database exists")?;
    if !exists {
        if let Err(e) = Postgres::create_database(database_url).await {
            // Another process may have created it in the meantime.
            let exists_now = Postgres::database_exists(database_url)
                .await
                .unwrap_or(false);
            if !exists_now {
                return Err(e).context("creating the database");
            }
        } else {
            tracing::info!("created the database");
        }
    }
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("running migrations")
}

/// A batch's columns as the arrays the batch statement unnests: one entry
/// per event, in the order of the events. The floor measurement of
/// `bench/run` binds the same arrays, so both pay the same client path.
pub struct BatchColumns<'a> {
    pub ids: Vec<Uuid>,
    pub kinds: Vec<&'a str>,
    pub ads: Vec<Option<&'a str>>,
    pub campaigns: Vec<Option<&'a str>>,
    pub screens: Vec<Option<&'a str>>,
    pub users: Vec<Option<&'a str>>,
    pub ips: Vec<Option<String>>,
    pub times: Vec<chrono::DateTime<chrono::Utc>>,
    pub received: Vec<chrono::DateTime<chrono::Utc>>,
    pub playback: Vec<Option<f64>>,
    pub amounts: Vec<Option<i64>>,
    pub variants: Vec<Option<&'a str>>,
    pub experiments: Vec<Option<&'a str>>,
    pub properties: Vec<Option<String>>,
    pub tenants: Vec<&'a str>,
    pub error_codes: Vec<Option<i16>>,
    pub invalid: Vec<Option<&'a str>>,
}

impl<'a> BatchColumns<'a> {
    pub fn of(events: &[&'a Event]) -> anyhow::Result<Self> {
        let n = events.len();
        let mut c = Self {
            ids: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            ads: Vec::with_capacity(n),
            campaigns: Vec::with_capacity(n),
            screens: Vec::with_capacity(n),
            users: Vec::with_capacity(n),
            ips: Vec::with_capacity(n),
            times: Vec::with_capacity(n),
            received: Vec::with_capacity(n),
            playback: Vec::with_capacity(n),
            amounts: Vec::with_capacity(n),
            variants: Vec::with_capacity(n),
            experiments: Vec::with_capacity(n),
            properties: Vec::with_capacity(n),
            tenants: Vec::with_capacity(n),
            error_codes: Vec::with_capacity(n),
            invalid: Vec::with_capacity(n),
        };
        for e in events {
            c.invalid.push(e.invalid.map(|r| r.as_str()));
            c.error_codes
                .push(e.error_code.and_then(|code| i16::try_from(code).ok()));
            c.tenants.push(e.tenant_id.as_str());
            c.ids.push(e.event_id);
            c.kinds.push(e.kind.as_str());
            c.ads.push(e.ad_id.as_ref().map(|v| v.as_str()));
            c.campaigns.push(e.campaign_id.as_ref().map(|v| v.as_str()));
            c.screens.push(e.screen_id.as_ref().map(|v| v.as_str()));
            c.users.push(e.user_id.as_deref());
            c.ips.push(e.ip_text());
            c.times.push(e.timestamp);
            c.received.push(e.received_at);
            c.playback.push(e.video_playback_time);
            c.amounts.push(e.amount);
            c.variants.push(e.variant.as_deref());
            c.experiments.push(e.experiment_id.as_deref());
            c.properties.push(
                e.properties
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()
                    .context("encoding properties")?,
            );
        }
        Ok(c)
    }
}

/// A batch's minute rollup rows, grouped by the worker: `rollup_minute`'s
/// key and its two sums over the batch's valid events (invalid traffic is in
/// no rollup). The statement writes them only when it stored every event of
/// the batch, which is the usual case; otherwise it groups the rows it did
/// store. `usable` is false when an amount sum overflows, so that the
/// statement's own sum fails the batch as it always did.
struct MinuteGroups<'a> {
    tenants: Vec<&'a str>,
    minutes: Vec<chrono::DateTime<chrono::Utc>>,
    kinds: Vec<&'a str>,
    ads: Vec<&'a str>,
    campaigns: Vec<&'a str>,
    screens: Vec<&'a str>,
    events: Vec<i64>,
    amounts: Vec<i64>,
    usable: bool,
}

impl<'a> MinuteGroups<'a> {
    fn of(events: &[&'a Event]) -> Self {
        type Key<'a> = (&'a str, i64, Kind, &'a str, &'a str, &'a str);
        // foldhash: see `Ops::add_events`.
        let mut groups: std::collections::HashMap<
            Key<'a>,
            (i64, Option<i64>),
            foldhash::fast::RandomState,
        > = Default::default();
        // An absent dimension groups as `""` (the rollups' key columns).
        fn dimension(v: &Option<Ident>) -> &str {
            key_text(v.as_ref().map_or("", Ident::as_str))
        }
        for e in events.iter().filter(|e| e.invalid.is_none()) {
            let key = (
                key_text(&e.tenant_id),
                e.timestamp.timestamp().div_euclid(60),
                e.kind,
                dimension(&e.ad_id),
                dimension(&e.campaign_id),
                dimension(&e.screen_id),
            );
            let (n, amount) = groups.entry(key).or_insert((0, Some(0)));
            *n += 1;
            *amount = amount.and_then(|a| a.checked_add(e.amount.unwrap_or(0)));
        }
        let mut g = Self {
            tenants: Vec::with_capacity(groups.len()),
            minutes: Vec::with_capacity(groups.len()),
            kinds: Vec::with_capacity(groups.len()),
            ads: Vec::with_capacity(groups.len()),
            campaigns: Vec::with_capacity(groups.len()),
            screens: Vec::with_capacity(groups.len()),
            events: Vec::with_capacity(groups.len()),
            amounts: Vec::with_capacity(groups.len()),
            usable: true,
        };
        for ((tenant, minute, kind, ad, campaign, screen), (n, amount)) in groups {
            let Some(at) = chrono::DateTime::from_timestamp(minute * 60, 0) else {
                g.usable = false;
                continue;
            };
            g.usable &= amount.is_some();
            g.tenants.push(tenant);
            g.minutes.push(at);
            g.kinds.push(kind.as_str());
            g.ads.push(ad);
            g.campaigns.push(campaign);
            g.screens.push(screen);
            g.events.push(n);
            g.amounts.push(amount.unwrap_or(0));
        }
        g
    }
}

/// Inserts a batch in one statement: new raw rows, their rollups, and an
/// outbox row (`batch_id`) naming them; it also deletes the outbox rows of
/// `settled`, batches whose counters this worker has applied (see
/// [`crate::exactly_once`]). Returns the events that were new.
pub async fn insert_batch<'e>(
    pool: &PgPool,
    events: &[&'e Event],
    batch_id: Uuid,
    settled: &[Uuid],
) -> anyhow::Result<Vec<&'e Event>> {
    let n = events.len();
    let c = BatchColumns::of(events)?;
    let g = MinuteGroups::of(events);
    // Which of the rare rollups can have rows at all. A batch that feeds
    // none (the usual case) runs the statement without them: their plan
    // nodes, locks and relations cost Postgres about half a microsecond per
    // event even when they write nothing.
    let valid = || events.iter().filter(|e| e.invalid.is_none());
    let errors = valid().any(|e| e.kind == Kind::Error && e.ad_id.is_some());
    let experiments = valid().any(|e| e.experiment_id.is_some());
    // Every time has a partition: its day's, or the default one (see
    // `partitions`), so no insert ever creates a table.
    //
    // One statement in two texts: `$rare` holds the rare rollups' CTEs (or
    // nothing), and their flags follow the common binds ($1..$28) as $29
    // and $30. sqlx's check knows text[] only as `&[String]`, so the arrays
    // of borrowed or optional values name their Rust type with `as`; each
    // text, its arity and the columns it returns are checked against the
    // schema.
    macro_rules! batch_statement {
        ($rare:tt $(, $flag:expr)*) => {
            sqlx::query!(
                r#"
                WITH input AS (
                    SELECT * FROM UNNEST(
                        $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                        $7::text[], $8::timestamptz[], $9::timestamptz[], $10::float8[], $11::int8[],
                        $12::text[], $13::text[], $14::text[], $15::text[], $17::int2[], $18::text[]
                    ) AS t(event_id, kind, ad_id, campaign_id, screen_id, user_id, ip, event_time,
                           received_at, playback_time, amount, variant, experiment_id, properties, tenant_id,
                           error_code, invalid_reason)
                ),
                claimed AS (
                    INSERT INTO event_keys (tenant_id, event_id, event_time)
                    SELECT tenant_id, event_id, event_time FROM input
                    ON CONFLICT (tenant_id, event_id) DO NOTHING
                    RETURNING tenant_id, event_id
                ),
                ins AS (
                    INSERT INTO events (tenant_id, event_id, kind, ad_id, campaign_id, screen_id, user_id, ip,
                                        event_time, received_at, playback_time, amount, variant,
                                        experiment_id, properties, error_code, invalid_reason)
                    SELECT tenant_id, event_id, kind, ad_id, campaign_id, screen_id, user_id, ip::inet, event_time,
                           received_at, playback_time, amount, variant, experiment_id, properties::jsonb,
                           error_code, invalid_reason
                    FROM input JOIN claimed USING (tenant_id, event_id)
                    RETURNING 1
                ),
                -- Whether every event of the batch is new. Reading `ins` here makes
                -- the final SELECT run the raw inserts first; the data-modifying
                -- CTEs it does not read run after it, the last-listed first (see
                -- `rolled` and `outbox`).
                all_new AS (
                    SELECT count(*) = cardinality($1::uuid[]) AS yes FROM ins
                ),
                -- The stored rows that rollups count: invalid traffic (IVT_FILTER=flag)
                -- is stored and counted by the outbox, but no rollup or experiment
                -- figure includes it. Read only where the worker's grouping cannot
                -- serve (a batch with known events) and by the rare rollups, when spliced in.
                valid AS (
                    SELECT i.*, coalesce(i.user_id, host(i.ip::inet)) AS user_key
                    FROM input i JOIN claimed USING (tenant_id, event_id)
                    WHERE i.invalid_reason IS NULL
                ),
                -- One aggregation feeds both rollups: the worker's ($20..$27) when
                -- every event is new and its sums fit ($28), else the stored rows'.
                -- Rollups are written last, in key order (so concurrent workers lock
                -- shared rollup rows in the same order): a hot rollup row is locked
                -- only from here to the commit.
                grouped AS (
                    SELECT * FROM UNNEST($20::text[], $21::timestamptz[], $22::text[], $23::text[],
                                         $24::text[], $25::text[], $26::int8[], $27::int8[])
                        AS g(tenant_id, minute, kind, ad_id, campaign_id, screen_id, events, amount)
                    WHERE $28 AND (SELECT yes FROM all_new)
                    UNION ALL
                    SELECT tenant_id, date_trunc('minute', event_time, 'UTC') AS minute, kind,
                           coalesce(ad_id, '') AS ad_id, coalesce(campaign_id, '') AS campaign_id,
                           coalesce(screen_id, '') AS screen_id, count(*) AS events,
                           coalesce(sum(amount), 0)::int8 AS amount
                    FROM valid
                    WHERE NOT ($28 AND (SELECT yes FROM all_new))
                    GROUP BY 1, 2, 3, 4, 5, 6
                ),
                rolled AS (
                    INSERT INTO rollup_minute AS r (tenant_id, bucket, kind, ad_id, campaign_id, screen_id, events, amount)
                    SELECT * FROM grouped
                    ORDER BY 1, 2, 3, 4, 5, 6
                    ON CONFLICT (tenant_id, bucket, kind, ad_id, campaign_id, screen_id)
                    DO UPDATE SET events = r.events + EXCLUDED.events, amount = r.amount + EXCLUDED.amount
                ),
                rolled_hour AS (
                    INSERT INTO rollup_hour AS r (tenant_id, bucket, kind, ad_id, campaign_id, events, amount)
                    SELECT tenant_id, date_trunc('hour', minute, 'UTC'), kind, ad_id, campaign_id,
                           sum(events), sum(amount)
                    FROM grouped
                    GROUP BY 1, 2, 3, 4, 5
                    ORDER BY 1, 2, 3, 4, 5
                    ON CONFLICT (tenant_id, bucket, kind, ad_id, campaign_id)
                    DO UPDATE SET events = r.events + EXCLUDED.events, amount = r.amount + EXCLUDED.amount
                ),
                "# + $rare + r#"
                -- Listed after the rollups, so that they run before them: Postgres
                -- finishes the CTEs the final SELECT does not read in reverse order.
                outbox AS (
                    INSERT INTO counter_outbox (batch_id, event_ids, tenant_ids)
                    SELECT $16, array_agg(event_id), array_agg(tenant_id)
                    FROM claimed HAVING count(*) > 0
                ),
                -- Step 4 of the exactly-once protocol for batches counted earlier.
                settled AS (
                    DELETE FROM counter_outbox WHERE batch_id = ANY($19::uuid[])
                )
                -- The keys it did not store (already known): none when every event
                -- is new, so the answer is usually empty.
                SELECT tenant_id AS "tenant_id!", event_id AS "event_id!" FROM input i
                WHERE NOT (SELECT yes FROM all_new)
                  AND NOT EXISTS (SELECT 1 FROM claimed c
                                  WHERE c.tenant_id = i.tenant_id AND c.event_id = i.event_id)
                "#,
                &c.ids,
                &c.kinds as &[&str],
                &c.ads as &[Option<&str>],
                &c.campaigns as &[Option<&str>],
                &c.screens as &[Option<&str>],
                &c.users as &[Option<&str>],
                &c.ips as &[Option<String>],
                &c.times,
                &c.received,
                &c.playback as &[Option<f64>],
                &c.amounts as &[Option<i64>],
                &c.variants as &[Option<&str>],
                &c.experiments as &[Option<&str>],
                &c.properties as &[Option<String>],
                &c.tenants as &[&str],
                batch_id,
                &c.error_codes as &[Option<i16>],
                &c.invalid as &[Option<&str>],
                settled,
                &g.tenants as &[&str],
                &g.minutes,
                &g.kinds as &[&str],
                &g.ads as &[&str],
                &g.campaigns as &[&str],
                &g.screens as &[&str],
                &g.events,
                &g.amounts,
                g.usable,
                $($flag,)*
            )
            .fetch_all(pool)
            .await
            .map(|rows| {
                rows.into_iter()
                    .map(|r| (r.tenant_id, r.event_id))
                    .collect::<Vec<(String, Uuid)>>()
            })
        };
    }
    let rows = if errors || experiments {
        batch_statement!(
            r#"
                -- Error events by VAST code (migration 0010; 0 when none was given),
                -- when the batch has any ($29).
                rolled_error AS (
                    INSERT INTO rollup_error_minute AS r (tenant_id, ad_id, bucket, error_code, events)
                    SELECT tenant_id, ad_id, date_trunc('minute', event_time), coalesce(error_code, 0),
                           count(*)
                    FROM valid
                    WHERE $29 AND kind = 'error' AND ad_id IS NOT NULL
                    GROUP BY 1, 2, 3, 4
                    ORDER BY 1, 2, 3, 4
                    ON CONFLICT (tenant_id, ad_id, bucket, error_code)
                    DO UPDATE SET events = r.events + EXCLUDED.events
                ),
                -- Experiment rollups (migration 0009), when the batch has experiment
                -- events ($30). A user row is inserted (a new user) or turned
                -- converted at most once, whatever races it; RETURNING yields only
                -- those changes, and `batch_id = $16` tells an insert from an update.
                experiment_batch AS (
                    SELECT tenant_id, experiment_id, coalesce(variant, '') AS variant, user_key,
                           bool_or(kind = 'conversion') AS converted
                    FROM valid
                    WHERE $30 AND experiment_id IS NOT NULL AND user_key IS NOT NULL
                    GROUP BY 1, 2, 3, 4
                ),
                users_changed AS (
                    INSERT INTO experiment_users AS u (tenant_id, experiment_id, variant, user_key, converted, batch_id)
                    SELECT tenant_id, experiment_id, variant, user_key, converted, $16 FROM experiment_batch
                    ORDER BY 1, 2, 3, 4
                    ON CONFLICT (tenant_id, experiment_id, variant, user_key)
                    DO UPDATE SET converted = true WHERE NOT u.converted AND EXCLUDED.converted
                    RETURNING tenant_id, experiment_id, variant, batch_id = $16 AS is_new, converted
                ),
                rolled_experiment AS (
                    INSERT INTO rollup_experiment AS r (tenant_id, experiment_id, variant, events, conversions,
                                                        users, converted_users)
                    SELECT e.tenant_id, e.experiment_id, e.variant, e.events, e.conversions,
                           coalesce(c.users, 0), coalesce(c.converted_users, 0)
                    FROM (SELECT tenant_id, experiment_id, coalesce(variant, '') AS variant, count(*) AS events,
                                 count(*) FILTER (WHERE kind = 'conversion') AS conversions
                          FROM valid WHERE $30 AND experiment_id IS NOT NULL GROUP BY 1, 2, 3) e
                    LEFT JOIN (SELECT tenant_id, experiment_id, variant, count(*) FILTER (WHERE is_new) AS users,
                                      count(*) FILTER (WHERE converted) AS converted_users
                               FROM users_changed GROUP BY 1, 2, 3) c
                           USING (tenant_id, experiment_id, variant)
                    ORDER BY 1, 2, 3
                    ON CONFLICT (tenant_id, experiment_id, variant)
                    DO UPDATE SET events = r.events + EXCLUDED.events,
                                  conversions = r.conversions + EXCLUDED.conversions,
                                  users = r.users + EXCLUDED.users,
                                  converted_users = r.converted_users + EXCLUDED.converted_users
                ),
            "#,
            errors,
            experiments
        )
    } else {
        batch_statement!("")
    }
    .with_context(|| format!("inserting a batch of {n} events"))?;
    let known: HashSet<(&str, Uuid)> = rows.iter().map(|(t, id)| (t.as_str(), *id)).collect();
    Ok(events
        .iter()
        .filter(|e| known.is_empty() || !known.contains(&(e.tenant_id.as_str(), e.event_id)))
        .copied()
        .collect())
}

/// The fields the counters need, for stored events: `ids[i]` of tenant
/// `tenants[i]` (an outbox row written before tenants existed has none:
/// the tenant `""`).
pub async fn counted_events<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    ids: &[Uuid],
    tenants: Option<&[String]>,
) -> anyhow::Result<Vec<CountedEvent>> {
    let tenants: Vec<&str> = match tenants {
        Some(t) if t.len() == ids.len() => t.iter().map(String::as_str).collect(),
        _ => vec![""; ids.len()],
    };
    // event_keys gives each event's time, which leads to its row through
    // the partitions' time index.
    let rows = sqlx::query!(
        r#"
        SELECT e.tenant_id, e.kind, e.ad_id, e.campaign_id, e.screen_id, host(e.ip) AS ip,
               e.event_time, e.invalid_reason IS NOT NULL AS "invalid!"
        FROM unnest($1::text[], $2::uuid[]) AS w(tenant_id, event_id)
        JOIN event_keys k ON k.tenant_id = w.tenant_id AND k.event_id = w.event_id
        JOIN events e ON e.event_time = k.event_time AND e.event_id = k.event_id
                     AND e.tenant_id = k.tenant_id
        "#,
        &tenants as &[&str],
        ids,
    )
    .fetch_all(executor)
    .await
    .context("reading stored events for their counters")?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(CountedEvent {
                tenant: r.tenant_id,
                kind: Kind::parse(&r.kind)?,
                ad_id: r.ad_id,
                campaign_id: r.campaign_id,
                screen_id: r.screen_id,
                ip: r.ip,
                time: r.event_time,
                invalid: r.invalid,
            })
        })
        .collect())
}

/// One ad of the catalogue.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ad {
    pub id: String,
    pub title: String,
    pub video_url: String,
    pub target_url: String,
    pub campaign_id: String,
}

/// A catalogue ad with what its VAST document says about the video.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VideoAd {
    pub id: String,
    pub title: String,
    pub video_url: String,
    pub target_url: String,
    pub duration_ms: i32,
    pub width: i32,
    pub height: i32,
    pub mime_type: String,
}

/// Every catalogue ad with its video, for the in-memory catalogue of the
/// VAST routes.
pub async fn video_ads(pool: &PgPool) -> anyhow::Result<Vec<VideoAd>> {
    sqlx::query_as!(
        VideoAd,
        "SELECT id, title, video_url, target_url, duration_ms, width, height, mime_type
         FROM ads",
    )
    .fetch_all(pool)
    .await
    .context("reading the catalogue's videos")
}

/// The VAST signing key stored in Postgres (migration 0012): `fresh` when
/// no process has stored one yet, else the one stored first.
pub async fn vast_signing_key(pool: &PgPool, fresh: &[u8]) -> anyhow::Result<Vec<u8>> {
    // Two statements: the SELECT sees the row of a concurrent first start
    // that the INSERT waited for and skipped.
    sqlx::query!(
        "INSERT INTO vast_signing_key (key) VALUES ($1) ON CONFLICT (id) DO NOTHING",
        fresh,
    )
    .execute(pool)
    .await
    .context("storing a VAST signing key")?;
    sqlx::query_scalar!("SELECT key FROM vast_signing_key")
        .fetch_one(pool)
        .await
        .context("reading the VAST signing key")
}

pub async fn catalogue(pool: &PgPool) -> anyhow::Result<Vec<Ad>> {
    sqlx::query_as!(
        Ad,
        "SELECT id, title, video_url, target_url, campaign_id FROM ads ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await
    .context("reading the ad catalogue")
}

/// Fills an empty catalogue with demo ads; does nothing otherwise.
pub async fn seed_catalogue(pool: &PgPool) -> anyhow::Result<u64> {
    const DEMO: &[(&str, &str, &str, &str, &str)] = &[
        (
            "11111111-1111-1111-1111-111111111111",
            "Aurora Sparkling Water",
            "/assets/ads/aurora.mp4",
            "https://example.com/aurora",
            "summer-refresh",
        ),
        (
            "22222222-2222-2222-2222-222222222222",
            "Summit Trail Shoes",
            "/assets/ads/summit.mp4",
            "https://example.com/summit",
            "outdoor-2026",
        ),
        (
            "33333333-3333-3333-3333-333333333333",
            "Nimbus Cloud Storage",
            "/assets/ads/nimbus.mp4",
            "https://example.com/nimbus",
            "b2b-launch",
        ),
        (
            "44444444-4444-4444-4444-444444444444",
            "Harbor Coffee Roasters",
            "/assets/ads/harbor.mp4",
            "https://example.com/harbor",
            "summer-refresh",
        ),
    ];
    let mut tx = pool.begin().await.context("starting the catalogue seed")?;
    // Serialise concurrent starters so the emptiness check holds.
    sqlx::query!("LOCK TABLE ads IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .context("locking the catalogue")?;
    let count = sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM ads"#)
        .fetch_one(&mut *tx)
        .await
        .context("counting the catalogue")?;
    if count > 0 {
        return Ok(0);
    }
    for (id, title, video, target, campaign) in DEMO {
        sqlx::query!(
            "INSERT INTO ads (id, title, video_url, target_url, campaign_id)
             VALUES ($1, $2, $3, $4, $5)",
            id,
            title,
            video,
            target,
            campaign,
        )
        .execute(&mut *tx)
        .await
        .context("seeding the catalogue")?;
    }
    tx.commit().await.context("committing the catalogue seed")?;
    Ok(DEMO.len() as u64)
}
