//! Prometheus metrics, one registry per application instance so tests that
//! run several apps in one process do not collide.

use std::sync::{Arc, Mutex, PoisonError};

use crate::domain::Kind;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Metric, MetricFamily, MetricType};
use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    /// Updated on every request: each HTTP thread has its own copy.
    pub http_requests: PerThread<HistogramVec>,
    /// Updated for every event queued: each HTTP thread has its own copy.
    pub events_enqueued: PerThread<IntCounterVec>,
    pub events_rejected: IntCounterVec,
    pub events_processed: IntCounterVec,
    pub events_duplicate: IntCounter,
    pub unique_ips_skipped: IntCounter,
    pub queue_depth: IntGauge,
    pub processing_depth: IntGauge,
    pub outbox_depth: IntGauge,
    pub batch_size: Histogram,
    pub batch_duration: Histogram,
    pub ingest_to_commit: Histogram,
    pub push_group_size: Histogram,
    pub push_duration: Histogram,
    pub push_failures: IntCounter,
    pub outages: IntCounterVec,
    pub requeued_items: IntCounter,
    pub outbox_recovered: IntCounter,
    pub dependency_up: IntGaugeVec,
    pub events_spooled: IntCounter,
    pub spool_bytes: IntGauge,
    pub spool_events: IntGauge,
    pub spool_replayed: IntCounter,
    pub spool_skipped_lines: IntCounterVec,
    pub spool_full: IntCounter,
    pub spool_append_failures: IntCounterVec,
    pub dead_lettered: IntCounter,
    pub retried: IntCounter,
    pub event_partitions: IntGauge,
    pub event_partitions_dropped: IntCounter,
    pub event_keys_purged: IntCounter,
    pub events_purged: IntCounter,
    pub partition_maintenance_errors: IntCounter,
    pub rate_limited: IntCounterVec,
    pub rate_limit_fail_open: IntCounter,
    pub redis_resets: IntCounter,
    pub ivt_flagged: IntCounterVec,
    pub ivt_checks_skipped: IntCounter,
    pub vast_documents: IntCounter,
    pub vast_pixels: IntCounterVec,
    pub vast_player_events: IntCounterVec,
    pub vast_views_refused: IntCounterVec,
    pub vast_clicks_unrecorded: IntCounter,
    pub catalogue_reload_failures: IntCounter,
    pub analytics_parts_missing: IntCounterVec,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new_custom(Some("adtrack".into()), None)?;
        let latency = exponential_buckets(0.0005, 2.0, 16)?;
        let request_latency = latency.clone();
        let m = Self {
            http_requests: PerThread::new(move || {
                HistogramVec::new(
                    HistogramOpts::new("http_request_duration_seconds", "HTTP request latency")
                        .buckets(request_latency.clone()),
                    &["route", "method", "status"],
                )
            })?,
            events_enqueued: PerThread::new(|| {
                let vec = IntCounterVec::new(
                    Opts::new(
                        "events_enqueued_total",
                        "Events accepted and queued, by type",
                    ),
                    &["type"],
                )?;
                // Every kind's series exists from 0.
                for kind in Kind::ALL {
                    vec.with_label_values(&[kind.as_str()]);
                }
                Ok(vec)
            })?,
            events_rejected: IntCounterVec::new(
                Opts::new(
                    "events_rejected_total",
                    "Events refused at ingest, by error code",
                ),
                &["error"],
            )?,
            events_processed: IntCounterVec::new(
                Opts::new(
                    "events_processed_total",
                    "Events newly written to Postgres, by type",
                ),
                &["type"],
            )?,
            events_duplicate: IntCounter::new(
                "events_duplicate_total",
                "Events skipped because their eventId was already stored",
            )?,
            unique_ips_skipped: IntCounter::new(
                "unique_click_ips_skipped_total",
                "Clicks whose IP a worker did not send to Redis because it could not change a unique-click HyperLogLog",
            )?,
            queue_depth: IntGauge::new("queue_depth", "Envelopes waiting on the Redis queue")?,
            processing_depth: IntGauge::new(
                "processing_depth",
                "Envelopes held in worker processing lists",
            )?,
            outbox_depth: IntGauge::new(
                "counter_outbox_depth",
                "Committed batches whose Redis counter update is still pending",
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new("batch_size", "Events per worker batch")
                    .buckets(exponential_buckets(1.0, 2.0, 14)?),
            )?,
            batch_duration: Histogram::with_opts(
                HistogramOpts::new("batch_duration_seconds", "Time to commit one worker batch")
                    .buckets(latency.clone()),
            )?,
            ingest_to_commit: Histogram::with_opts(
                HistogramOpts::new(
                    "ingest_to_commit_seconds",
                    "From an event's receipt to its Postgres commit",
                )
                .buckets(exponential_buckets(0.001, 2.0, 18)?),
            )?,
            push_group_size: Histogram::with_opts(
                HistogramOpts::new("push_group_size", "Envelopes per group-committed LPUSH")
                    .buckets(exponential_buckets(1.0, 2.0, 14)?),
            )?,
            push_duration: Histogram::with_opts(
                HistogramOpts::new("push_duration_seconds", "Round trip of one group LPUSH")
                    .buckets(latency),
            )?,
            push_failures: IntCounter::new(
                "push_failures_total",
                "Group LPUSHes Redis did not take",
            )?,
            outages: IntCounterVec::new(
                Opts::new(
                    "outages_total",
                    "Rounds a dependency failed (worker rounds, replay rounds, push groups), by cause",
                ),
                &["component", "dependency", "cause"],
            )?,
            requeued_items: IntCounter::new(
                "requeued_items_total",
                "Items returned to the queue from dead workers",
            )?,
            outbox_recovered: IntCounter::new(
                "counter_outbox_recovered_total",
                "Counter updates applied by recovery instead of their worker",
            )?,
            dependency_up: IntGaugeVec::new(
                Opts::new(
                    "dependency_up",
                    "1 when a dependency answered its last check",
                ),
                &["dependency"],
            )?,
            events_spooled: IntCounter::new(
                "events_spooled_total",
                "Events accepted into the disk spool because Redis could not take them",
            )?,
            spool_bytes: IntGauge::new("spool_bytes", "Bytes waiting in the disk spool")?,
            spool_events: IntGauge::new("spool_events", "Events waiting in the disk spool")?,
            spool_replayed: IntCounter::new(
                "spool_replayed_total",
                "Spooled events replayed into Redis",
            )?,
            spool_skipped_lines: IntCounterVec::new(
                Opts::new(
                    "spool_skipped_lines_total",
                    "Spool lines skipped on replay, by kind",
                ),
                &["kind"],
            )?,
            spool_full: IntCounter::new(
                "spool_full_total",
                "Requests refused with 503 because the spool was full",
            )?,
            spool_append_failures: IntCounterVec::new(
                Opts::new(
                    "spool_append_failures_total",
                    "Spool appends refused with 503 because the write failed and was rolled back, by cause",
                ),
                &["cause"],
            )?,
            dead_lettered: IntCounter::new(
                "dead_lettered_total",
                "Events moved to the dead-letter list",
            )?,
            retried: IntCounter::new(
                "retried_total",
                "Failed events scheduled for another attempt",
            )?,
            event_partitions: IntGauge::new(
                "event_partitions",
                "Day partitions of the raw events table",
            )?,
            event_partitions_dropped: IntCounter::new(
                "event_partitions_dropped_total",
                "Day partitions dropped by EVENT_RETENTION",
            )?,
            event_keys_purged: IntCounter::new(
                "event_keys_purged_total",
                "Idempotency keys of dropped days deleted",
            )?,
            events_purged: IntCounter::new(
                "events_purged_total",
                "Expired raw events deleted from the default partition by retention",
            )?,
            partition_maintenance_errors: IntCounter::new(
                "partition_maintenance_errors_total",
                "Failed partition creation or retention passes",
            )?,
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "rate_limited_total",
                    "Ingest requests refused with 429, by the limit that refused them (ip, ad)",
                ),
                &["scope"],
            )?,
            rate_limit_fail_open: IntCounter::new(
                "rate_limit_fail_open_total",
                "Requests let through unchecked because Redis could not answer the limiter",
            )?,
            redis_resets: IntCounter::new(
                "redis_resets_total",
                "Times this process found Redis without its epoch (restarted empty, or first used) and took on rebuilding the counters",
            )?,
            ivt_flagged: IntCounterVec::new(
                Opts::new(
                    "ivt_flagged_total",
                    "Events flagged as invalid traffic at ingest (IVT_FILTER=flag), by reason",
                ),
                &["reason"],
            )?,
            ivt_checks_skipped: IntCounter::new(
                "ivt_checks_skipped_total",
                "Clicks let through without the repeated-click check because Redis could not answer it",
            )?,
            vast_documents: IntCounter::new(
                "vast_documents_total",
                "VAST documents served (each one a new view)",
            )?,
            vast_pixels: IntCounterVec::new(
                Opts::new(
                    "vast_pixels_total",
                    "Tracking pixels and clicks answered after their event was queued, by event",
                ),
                &["event"],
            )?,
            vast_player_events: IntCounterVec::new(
                Opts::new(
                    "vast_player_events_total",
                    "Player pixels counted here only, not stored (pause, resume, mute, unmute, closeLinear)",
                ),
                &["event"],
            )?,
            vast_views_refused: IntCounterVec::new(
                Opts::new(
                    "vast_views_refused_total",
                    "Pixels and clicks whose view token was malformed, forged or expired, or whose tenant has no valid key (revoked) (404)",
                ),
                &["reason"],
            )?,
            vast_clicks_unrecorded: IntCounter::new(
                "vast_clicks_unrecorded_total",
                "Click redirects answered without their click being queued (queue and spool unavailable)",
            )?,
            catalogue_reload_failures: IntCounter::new(
                "catalogue_reload_failures_total",
                "Reloads of the in-memory ad catalogue of the VAST routes that Postgres failed (the catalogue held is served)",
            )?,
            analytics_parts_missing: IntCounterVec::new(
                Opts::new(
                    "analytics_parts_missing_total",
                    "Ad analytics answered without a part that could not be read (part=errorsByCode: Postgres)",
                ),
                &["part"],
            )?,
            registry,
        };
        m.registry.register(m.http_requests.collector())?;
        m.registry.register(m.events_enqueued.collector())?;
        m.registry.register(Box::new(m.events_rejected.clone()))?;
        m.registry.register(Box::new(m.events_processed.clone()))?;
        m.registry.register(Box::new(m.events_duplicate.clone()))?;
        m.registry
            .register(Box::new(m.unique_ips_skipped.clone()))?;
        m.registry.register(Box::new(m.queue_depth.clone()))?;
        m.registry.register(Box::new(m.processing_depth.clone()))?;
        m.registry.register(Box::new(m.outbox_depth.clone()))?;
        m.registry.register(Box::new(m.batch_size.clone()))?;
        m.registry.register(Box::new(m.batch_duration.clone()))?;
        m.registry.register(Box::new(m.ingest_to_commit.clone()))?;
        m.registry.register(Box::new(m.push_group_size.clone()))?;
        m.registry.register(Box::new(m.push_duration.clone()))?;
        m.registry.register(Box::new(m.push_failures.clone()))?;
        m.registry.register(Box::new(m.outages.clone()))?;
        m.registry.register(Box::new(m.requeued_items.clone()))?;
        m.registry.register(Box::new(m.outbox_recovered.clone()))?;
        m.registry.register(Box::new(m.dependency_up.clone()))?;
        m.registry.register(Box::new(m.events_spooled.clone()))?;
        m.registry.register(Box::new(m.spool_bytes.clone()))?;
        m.registry.register(Box::new(m.spool_events.clone()))?;
        m.registry.register(Box::new(m.spool_replayed.clone()))?;
        m.registry
            .register(Box::new(m.spool_skipped_lines.clone()))?;
        m.registry.register(Box::new(m.spool_full.clone()))?;
        m.registry
            .register(Box::new(m.spool_append_failures.clone()))?;
        // Every cause is exported from the start, so an alert sees 0, not
        // an absent series.
        for cause in crate::spool::FailureCause::ALL {
            m.spool_append_failures.with_label_values(&[cause.as_str()]);
        }
        m.registry.register(Box::new(m.dead_lettered.clone()))?;
        m.registry.register(Box::new(m.retried.clone()))?;
        m.registry.register(Box::new(m.event_partitions.clone()))?;
        m.registry
            .register(Box::new(m.event_partitions_dropped.clone()))?;
        m.registry.register(Box::new(m.event_keys_purged.clone()))?;
        m.registry.register(Box::new(m.events_purged.clone()))?;
        m.registry
            .register(Box::new(m.partition_maintenance_errors.clone()))?;
        m.registry.register(Box::new(m.rate_limited.clone()))?;
        m.registry
            .register(Box::new(m.rate_limit_fail_open.clone()))?;
        m.registry.register(Box::new(m.redis_resets.clone()))?;
        m.registry.register(Box::new(m.ivt_flagged.clone()))?;
        m.registry
            .register(Box::new(m.ivt_checks_skipped.clone()))?;
        m.registry.register(Box::new(m.vast_documents.clone()))?;
        m.registry.register(Box::new(m.vast_pixels.clone()))?;
        m.registry
            .register(Box::new(m.vast_player_events.clone()))?;
        m.registry
            .register(Box::new(m.vast_views_refused.clone()))?;
        m.registry
            .register(Box::new(m.vast_clicks_unrecorded.clone()))?;
        m.registry
            .register(Box::new(m.catalogue_reload_failures.clone()))?;
        m.registry
            .register(Box::new(m.analytics_parts_missing.clone()))?;
        Ok(m)
    }

    /// Counts one round of `component` that an outage failed.
    pub fn outage(&self, component: &str, outage: crate::fault::Outage) {
        self.outages
            .with_label_values(&[component, outage.dependency.as_str(), outage.cause.as_str()])
            .inc();
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A metric that each thread updates in a copy of its own (a shard), summed
/// when it is scraped. The metrics that every request updates are kept so:
/// a shared one is a few atomic writes to memory that both HTTP threads
/// write, and the cache lines moving between the cores cost the ingest path
/// more than a microsecond per request under `wrk` (`bench/run`). A shard
/// is made by the thread's long-lived state (the edge, the pusher) when the
/// thread starts, so their number is bounded by the threads.
pub struct PerThread<V> {
    inner: Arc<Shards<V>>,
}

struct Shards<V> {
    make: Box<dyn Fn() -> prometheus::Result<V> + Send + Sync>,
    /// Never updated directly unless a shard could not be made; it
    /// describes the metric and is summed with the others.
    first: V,
    all: Mutex<Vec<V>>,
}

impl<V> PerThread<V>
where
    V: Collector + Clone + 'static,
{
    fn new(
        make: impl Fn() -> prometheus::Result<V> + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let first = make()?;
        Ok(Self {
            inner: Arc::new(Shards {
                make: Box::new(make),
                all: Mutex::new(vec![first.clone()]),
                first,
            }),
        })
    }

    /// A new shard, for the calling thread to update (and keep).
    pub fn shard(&self) -> V {
        // `make` worked once with the same options, so it cannot fail; if
        // it did, the shared first copy still counts.
        let shard = (self.inner.make)().unwrap_or_else(|_| self.inner.first.clone());
        self.inner
            .all
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(shard.clone());
        shard
    }

    /// What registers the metric: it describes it and, when scraped, sums
    /// the shards.
    fn collector(&self) -> Box<dyn Collector> {
        Box::new(Summed {
            inner: self.inner.clone(),
        })
    }
}

struct Summed<V> {
    inner: Arc<Shards<V>>,
}

impl<V> Collector for Summed<V>
where
    V: Collector + Clone + 'static,
{
    fn desc(&self) -> Vec<&Desc> {
        self.inner.first.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let shards = self
            .inner
            .all
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut families: Vec<MetricFamily> = Vec::new();
        for family in shards.iter().flat_map(Collector::collect) {
            match families.iter_mut().find(|f| f.name() == family.name()) {
                Some(sum) => add_family(sum, family),
                None => families.push(family),
            }
        }
        families
    }
}

/// Adds `family`'s series to `sum`'s: a counter's values, a histogram's
/// counts, sums and buckets (the shards share their bucket bounds).
fn add_family(sum: &mut MetricFamily, mut family: MetricFamily) {
    let kind = sum.get_field_type();
    for metric in family.take_metric() {
        let same = sum
            .mut_metric()
            .iter_mut()
            .find(|m| m.get_label() == metric.get_label());
        match same {
            Some(total) => add_metric(kind, total, &metric),
            None => sum.mut_metric().push(metric),
        }
    }
}

fn add_metric(kind: MetricType, total: &mut Metric, more: &Metric) {
    match kind {
        MetricType::COUNTER => {
            let mut counter = total.get_counter().clone();
            counter.set_value(counter.get_value() + more.get_counter().get_value());
            total.set_counter(counter);
        }
        MetricType::HISTOGRAM => {
            let mut histogram = total.get_histogram().clone();
            let add = more.get_histogram();
            histogram.set_sample_count(histogram.get_sample_count() + add.get_sample_count());
            histogram.set_sample_sum(histogram.get_sample_sum() + add.get_sample_sum());
            let buckets = histogram
                .get_bucket()
                .iter()
                .zip(add.get_bucket())
                .map(|(a, b)| {
                    let mut bucket = a.clone();
                    bucket.set_cumulative_count(a.cumulative_count() + b.cumulative_count());
                    bucket
                })
                .collect();
            histogram.set_bucket(buckets);
            total.set_histogram(histogram);
        }
        // Only counters and histograms are kept per thread.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scraped(m: &Metrics, prefix: &str) -> Vec<String> {
        m.render()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_shards_of_a_metric_are_scraped_as_their_sum() {
        let m = Metrics::new().unwrap();
        let (a, b) = (m.events_enqueued.shard(), m.events_enqueued.shard());
        a.with_label_values(&["click"]).inc_by(3);
        b.with_label_values(&["click"]).inc_by(4);
        b.with_label_values(&["play"]).inc();
        let lines = scraped(&m, "adtrack_events_enqueued_total{");
        assert!(
            lines.contains(&r#"adtrack_events_enqueued_total{type="click"} 7"#.to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&r#"adtrack_events_enqueued_total{type="play"} 1"#.to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&r#"adtrack_events_enqueued_total{type="skip"} 0"#.to_owned()),
            "{lines:?}"
        );
        // One series per label set, however many shards have it.
        assert_eq!(lines.len(), Kind::ALL.len(), "{lines:?}");

        let (a, b) = (m.http_requests.shard(), m.http_requests.shard());
        a.with_label_values(&["/ads/click", "POST", "202"])
            .observe(0.0001);
        b.with_label_values(&["/ads/click", "POST", "202"])
            .observe(0.002);
        b.with_label_values(&["/ads/click", "POST", "202"])
            .observe(100.0);
        a.with_label_values(&["/health", "GET", "200"])
            .observe(0.0001);
        let click = r#"{method="POST",route="/ads/click",status="202"}"#;
        let lines = scraped(&m, "adtrack_http_request_duration_seconds");
        let value = |name: &str, le: Option<&str>| -> f64 {
            let series = match le {
                Some(le) => format!(
                    "adtrack_http_request_duration_seconds_bucket{{method=\"POST\",route=\"/ads/click\",status=\"202\",le=\"{le}\"}} "
                ),
                None => format!("adtrack_http_request_duration_seconds_{name}{click} "),
            };
            let line = lines.iter().find(|l| l.starts_with(&series));
            line.unwrap_or_else(|| panic!("no {series} in {lines:?}"))[series.len()..]
                .parse()
                .unwrap()
        };
        assert_eq!(value("count", None), 3.0);
        assert!((value("sum", None) - 100.0021).abs() < 1e-9);
        assert_eq!(value("bucket", Some("0.0005")), 1.0);
        assert_eq!(value("bucket", Some("0.002")), 2.0);
        assert_eq!(value("bucket", Some("+Inf")), 3.0);
        let health = lines
            .iter()
            .filter(|l| l.starts_with("adtrack_http_request_duration_seconds_count{method=\"GET\""))
            .collect::<Vec<_>>();
        assert_eq!(health.len(), 1, "{lines:?}");
        assert!(health[0].ends_with(" 1"), "{health:?}");
    }
}
