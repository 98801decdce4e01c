//! Errors by VAST code for `/ads/analytics`, from `rollup_error_minute`
//! (migration 0010): one index range of the ad's rollup rows in the window,
//! at most one row per minute and code that had errors.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The ad's error events since `since` (all of them for `None`), by code;
/// errors that came without a code are under `"unknown"`.
pub async fn errors_by_code(
    pool: &PgPool,
    tenant: &str,
    ad: &str,
    since: Option<DateTime<Utc>>,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let rows = sqlx::query!(
        r#"SELECT error_code AS "code!", sum(events)::bigint AS "events!"
           FROM rollup_error_minute
           WHERE tenant_id = $1 AND ad_id = $2 AND ($3::timestamptz IS NULL OR bucket >= $3)
           GROUP BY 1"#,
        tenant,
        ad,
        since,
    )
    .fetch_all(pool)
    .await
    .context("reading an ad's errors by code")?;
    Ok(rows
        .into_iter()
        .filter(|r| r.events > 0)
        .map(|r| {
            let code = if r.code == 0 {
                "unknown".to_owned()
            } else {
                r.code.to_string()
            };
            (code, r.events as u64)
        })
        .collect())
}
