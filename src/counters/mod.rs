//! Real-time counters in Redis and the analytics read from them.
//!
//! Layout (root `R` = `{P}:c:`; `<h>` = hours since the Unix epoch, `<d>`
//! days, `<m>` minutes; kind codes `i` impression, `c` click, `p` play,
//! `v` conversion, `s` start, `1`/`2`/`3` first quartile, midpoint, third
//! quartile, `f` complete, `k` skip, `e` error: see `code`). Every key that an id sent by a client names expires, so
//! invented ids leave nothing behind for good (invariant 8):
//!
//! | key | type | holds | lives |
//! |---|---|---|---|
//! | `R ad:<adId>` | hash | `<k>` all-time count; `c:h:<h>` clicks in hour `<h>` | [`ALL_TIME_TTL`] after its last update; created only by a rebuild from Postgres |
//! | `R ax:<adId>` | set | batches already counted by the rebuild of `ad:<adId>` | [`MARKER_TTL_SECS`] |
//! | `R ua:<adId>` | HyperLogLog | distinct click IPs, all time | as `ad:<adId>` |
//! | `R ah:<d>:<adId>` | hash | `<k>:<h>` count in hour `<h>` of day `<d>` | 8 days after day `<d>` ends |
//! | `R am:<h>:<adId>` | hash | `<k>:<m>` count in minute `<m>` | 2 h after hour `<h>` starts |
//! | `R uh:<h>:<adId>` | HyperLogLog | distinct click IPs in hour `<h>` | 7 days after the hour |
//! | `R um:<m>:<adId>` | HyperLogLog | distinct click IPs in minute `<m>` | 1 h after the minute |
//! | `R cz` | sorted set | campaignId → plays | members: [`ALL_TIME_TTL`] after their last play; key: as long after any play |
//! | `R cl` | sorted set | campaignId → last play (Unix s), to drop silent campaigns | as `cz` |
//! | `R cs:<campaignId>` | sorted set | screenId → plays | as its campaign |
//!
//! The numeric bucket always comes before the id, so no two (id, bucket)
//! pairs share a key even though ids may contain `:`.
//!
//! In cluster mode (`Keys::with_counter_slots`) every key that names an
//! adId moves from `{P}:c:` to `{P.c<s>}:c:` (`s` from the adId), so an
//! ad's keys share one slot and many ads spread over the primaries; the
//! campaign keys stay under `{P}`. A batch's ops are grouped by slot
//! ([`Ops`]'s tagged chunks) and applied one slot at a time.
//!
//! All-time figures of an ad (`ad:`, `ua:`) are updated only while their
//! keys exist: a worker never creates them, because a key made from the
//! events of one batch would hold a part of the count. When they are missing
//! (never read, or expired), [`ad_analytics`] rebuilds them from a Postgres
//! snapshot taken under the outbox lock, and records in `ax:<adId>` the
//! batches that the snapshot already holds but that have not been applied
//! yet, so their later application skips that key (see `rebuild`).
//!
//! A batch sends a click's IP to the `um:`/`uh:`/`ua:` keys only where it
//! can change them: [`registers`] has what this process knows they hold.
//!
//! One [`Ops`] builder serves both the workers (one unit per inserted event)
//! and `reconcile` (counts from the Postgres rollups), so the two always
//! agree on the layout. [`epoch`] notices a Redis that came back empty and
//! runs that same rebuild.

mod analytics;
pub(crate) mod apply;
pub mod epoch;
mod event;
mod layout;
mod ops;
mod rebuild;
mod reconcile;
pub mod registers;
pub mod scripts;

/// What applying a committed batch did; the protocol lives in
/// [`crate::exactly_once`].
pub use crate::exactly_once::Applied;
pub use analytics::{
    ad_analytics, campaign_screens, campaigns, AdAnalytics, CampaignPlays, Page, ScreenPlays,
    Slice, Source, Timeframe,
};
pub use apply::Counters;
pub use epoch::{last_reset, Epoch};
pub(crate) use event::{code, field_code};
pub use event::{Counted, CountedEvent};
pub use layout::{Layout, ALL_TIME_TTL};
pub(crate) use layout::{DAY, HOUR, MINUTE};
pub use ops::Ops;
pub(crate) use ops::{Chunk, Mode};
pub use rebuild::{settle_campaigns, SETTLE_PER_CALL};
pub use reconcile::{reconcile, reconcile_confirmed, ReconcileReport};
pub use registers::Registers;
