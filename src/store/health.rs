//! `/ready`'s question to Postgres: could a worker write now?

use anyhow::Context;
use sqlx::PgPool;

/// The tables a worker round writes.
const WRITTEN_TABLES: &[&str] = &[
    "events",
    "event_keys",
    "counter_outbox",
    "rollup_minute",
    "rollup_hour",
];

/// What the server says about taking a worker round's writes.
#[derive(Debug, Clone, Copy)]
pub struct WriteProbe {
    /// A read-only standby (or `default_transaction_read_only`).
    pub read_only: bool,
    /// Every table a round writes exists.
    pub tables_present: bool,
    /// adtrack's role may insert into each of them.
    pub can_insert: bool,
}

/// Asks Postgres, in one statement, whether a worker round could write.
pub async fn probe_writes(pool: &PgPool) -> anyhow::Result<WriteProbe> {
    sqlx::query_as!(
        WriteProbe,
        r#"SELECT current_setting('transaction_read_only') = 'on' AS "read_only!",
                  count(t.oid) = cardinality($1::text[]) AS "tables_present!",
                  coalesce(bool_and(has_table_privilege(t.oid, 'INSERT')), false)
                      AS "can_insert!"
           FROM unnest($1::text[]) AS n(name)
           CROSS JOIN LATERAL (SELECT to_regclass(n.name) AS oid) AS t"#,
        WRITTEN_TABLES as &[&str],
    )
    .fetch_one(pool)
    .await
    .context("asking Postgres whether it takes writes")
}
