//! `/experiments/{id}/summary`: per-variant users and conversions from
//! `rollup_experiment`, each variant tested against the control.

use anyhow::Context;
use serde::Serialize;
use sqlx::PgPool;

use super::stats::two_proportion_z_test;

/// One variant of an experiment.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantSummary {
    pub variant: String,
    /// Events of every type carrying this variant.
    pub events: i64,
    /// Distinct users (userId, else the client IP) with any event.
    pub unique_users: i64,
    /// Conversion events.
    pub conversions: i64,
    /// Distinct users with at least one conversion.
    pub converted_users: i64,
    /// converted_users / unique_users (0 when there are no users).
    pub conversion_rate: f64,
    /// Two-sided p-value of a two-proportion z-test of this variant's
    /// conversion rate against the control's; absent for the control.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub z_score: Option<f64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentSummary {
    pub experiment_id: String,
    /// The variant the others are compared with: `control` when present,
    /// else the first in name order.
    pub control: Option<String>,
    pub variants: Vec<VariantSummary>,
}

/// The summary's statement: one row per variant of experiment `$1` of
/// tenant `$2`, from `rollup_experiment` (a primary-key range), so its cost
/// grows with the variants, never with the events.
pub const EXPERIMENT_SUMMARY_SQL: &str = include_str!("sql/experiment_summary.sql");

pub async fn experiment_summary(
    pool: &PgPool,
    tenant: &str,
    experiment: &str,
) -> anyhow::Result<ExperimentSummary> {
    let rows = sqlx::query_file!(
        "src/store/reports/sql/experiment_summary.sql",
        experiment,
        tenant
    )
    .fetch_all(pool)
    .await
    .context("summarising the experiment")?;
    let mut variants: Vec<VariantSummary> = rows
        .into_iter()
        .map(|row| VariantSummary {
            conversion_rate: if row.users > 0 {
                row.converted_users as f64 / row.users as f64
            } else {
                0.0
            },
            variant: row.variant,
            events: row.events,
            unique_users: row.users,
            conversions: row.conversions,
            converted_users: row.converted_users,
            p_value: None,
            z_score: None,
        })
        .collect();
    let control = variants
        .iter()
        .position(|v| v.variant == "control")
        .or(if variants.is_empty() { None } else { Some(0) });
    if let Some(c) = control {
        let (cx, cn) = (variants[c].converted_users, variants[c].unique_users);
        for (i, v) in variants.iter_mut().enumerate() {
            if i != c {
                if let Some((z, p)) =
                    two_proportion_z_test(v.converted_users, v.unique_users, cx, cn)
                {
                    v.z_score = Some(z);
                    v.p_value = Some(p);
                }
            }
        }
    }
    Ok(ExperimentSummary {
        experiment_id: experiment.to_owned(),
        control: control.map(|c| variants[c].variant.clone()),
        variants,
    })
}
