//! The ad catalogue of the VAST routes, held in memory so that documents
//! and click redirects need no Postgres read per request (and redirect
//! while Postgres is unreachable).
//!
//! The whole catalogue is loaded at start and reloaded every [`REFRESH`]
//! by a background task; a request never waits for that reload. An id not
//! in memory (an ad added since the last reload, or one that does not
//! exist) waits for a reload: the requests that miss at once share one,
//! reloads start at most once per [`MISS_RELOAD`] per process, and one
//! waits at most [`MISS_WAIT`], so a flood of unknown ids costs Postgres
//! one read a second at most (and is charged to the rate limits first). The catalogue is the operator's
//! table (rows an operator inserts), so what is held is bounded by it,
//! never by clients. An ad deleted or changed in Postgres is served as it
//! was for up to `REFRESH`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{self, VideoAd};

/// How often the background task reloads the catalogue: the longest an
/// ad deleted or edited in Postgres is still served as it was.
pub const REFRESH: Duration = Duration::from_secs(5);
/// The least time between two reloads caused by unknown ids.
pub const MISS_RELOAD: Duration = Duration::from_secs(1);
/// The longest a request for an unknown id waits for the reload.
pub const MISS_WAIT: Duration = Duration::from_secs(2);

/// The catalogue ads by id.
struct Snapshot {
    ads: HashMap<String, Arc<VideoAd>>,
}

/// What `get` answers.
pub enum Lookup {
    Found(Arc<VideoAd>),
    /// Not in the catalogue as just (re)loaded.
    Unknown,
    /// Not in memory, and the catalogue could not be reloaded now.
    Unavailable(anyhow::Error),
}

pub struct Catalogue {
    pool: PgPool,
    metrics: Arc<Metrics>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// When the last reload started (load at start included), and whether
    /// it succeeded; a miss reloads only `MISS_RELOAD` after it.
    last: Mutex<(Instant, bool)>,
    reloading: tokio::sync::Mutex<()>,
    /// Bumped at the end of every reload attempt.
    generation: AtomicU64,
}

impl Catalogue {
    /// Loads the catalogue; errs when Postgres cannot give it.
    pub async fn load(pool: PgPool, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        let started = Instant::now();
        let ads = Self::read(&pool).await?;
        Ok(Arc::new(Self {
            pool,
            metrics,
            snapshot: RwLock::new(Arc::new(ads)),
            last: Mutex::new((started, true)),
            reloading: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        }))
    }

    async fn read(pool: &PgPool) -> anyhow::Result<Snapshot> {
        let ads = store::video_ads(pool).await?;
        Ok(Snapshot {
            ads: ads
                .into_iter()
                .map(|ad| (ad.id.clone(), Arc::new(ad)))
                .collect(),
        })
    }

    fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.read().ok().map(|s| s.clone())
    }

    fn find(&self, id: &str) -> Option<Arc<VideoAd>> {
        self.current()?.ads.get(id).cloned()
    }

    /// Reloads now; the previous catalogue stays when this fails.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let result = Self::read(&self.pool).await;
        if let Ok(fresh) = &result {
            if let Ok(mut slot) = self.snapshot.write() {
                *slot = Arc::new(Snapshot {
                    ads: fresh.ads.clone(),
                });
            }
        }
        self.settle(started, result.is_ok());
        result.map(|_| ())
    }

    /// The catalogue ad `id`: from memory; for an id not there, from a
    /// reload. Requests that miss share one reload: each waits for the
    /// first reload that starts after it arrived, and reloads start no
    /// sooner than `MISS_RELOAD` after the previous one.
    pub async fn get(&self, id: &str) -> Lookup {
        if let Some(ad) = self.find(id) {
            return Lookup::Found(ad);
        }
        let arrived = self.generation.load(Ordering::SeqCst);
        let guard = self.reloading.lock().await;
        if self.generation.load(Ordering::SeqCst) == arrived {
            let since = self.last().0.elapsed();
            if let Some(wait) = MISS_RELOAD.checked_sub(since) {
                tokio::time::sleep(wait).await;
            }
            if tokio::time::timeout(MISS_WAIT, self.reload())
                .await
                .is_err()
            {
                self.settle(Instant::now(), false);
            }
        }
        drop(guard);
        match (self.find(id), self.last().1) {
            (Some(ad), _) => Lookup::Found(ad),
            (None, true) => Lookup::Unknown,
            (None, false) => Lookup::Unavailable(anyhow::anyhow!(
                "the ad catalogue could not be reloaded from Postgres"
            )),
        }
    }

    fn last(&self) -> (Instant, bool) {
        self.last.lock().map_or((Instant::now(), false), |l| *l)
    }

    /// Records the end of a reload attempt that started at `started`.
    fn settle(&self, started: Instant, ok: bool) {
        if let Ok(mut last) = self.last.lock() {
            *last = (started, ok);
        }
        if !ok {
            self.metrics.catalogue_reload_failures.inc();
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Reloads every `REFRESH` until `shutdown`; a failed reload keeps the
    /// catalogue held and is logged.
    pub async fn refresh(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(REFRESH) => {}
            }
            if let Err(e) = self.reload().await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "reloading the ad catalogue failed; serving the one held"
                );
            }
        }
    }
}
