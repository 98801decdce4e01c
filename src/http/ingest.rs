//! Ingestion: `POST /ads/click`, `/ads/impression`, `/events`,
//! `/events/batch`. Each request is read, parsed into events and
//! rate-limited here, then queued by [`crate::ingest`] (Redis, or the spool
//! while Redis is down), and answered 202 only once one of them holds it.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderName};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::client::{client_ip, Incoming};
use super::openapi::{self, Accepted, BatchAccepted, EventBody, IngestErrors, Rejected};
use super::{ApiError, AppState};
use crate::domain::{parse_event, Event, EventError, Kind, ParseContext};
use crate::ingest::{Enqueue, EnqueueError};
use crate::queue::LocalPusher;
use crate::ratelimit::Decision;
use crate::spool::FailureCause;

/// Largest single-event body.
pub const MAX_EVENT_BYTES: usize = 16 * 1024;
/// Largest batch body and item count.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Longest `Idempotency-Key` header.
const MAX_IDEMPOTENCY_KEY: usize = 128;
/// Namespace of the UUIDv5 made from a non-UUID `Idempotency-Key`.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6164_7472_6163_6b2d_6964_656d_706f_7465);

/// A click (the body of the tracker adtrack replaces is accepted as is).
#[utoipa::path(
    post,
    path = "/ads/click",
    tag = "ingest",
    request_body(content = EventBody, description = "Usually `{\"adId\",\"timestamp\",\"ipAddress\",\"videoPlaybackTime\"}`; `type` may be left out or be `click`"),
    responses(
        (status = 202, description = "Queued (in Redis, or in the synced spool while Redis is down)", body = Accepted),
        IngestErrors
    )
)]
pub async fn click(req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    ingest_one(&req, ingress(&req)?, body, Some(Kind::Click)).await
}

/// An impression.
#[utoipa::path(
    post,
    path = "/ads/impression",
    tag = "ingest",
    request_body(content = EventBody, description = "`{\"adId\"}` or `{\"ad_id\"}` at least"),
    responses(
        (status = 202, description = "Queued", body = Accepted),
        IngestErrors
    )
)]
pub async fn impression(req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    ingest_one(&req, ingress(&req)?, body, Some(Kind::Impression)).await
}

/// Any event; `type` defaults to `play` (`{\"screen_id\",\"campaign_id\",\"timestamp\"}`).
#[utoipa::path(
    post,
    path = "/events",
    tag = "ingest",
    request_body = EventBody,
    responses(
        (status = 202, description = "Queued", body = Accepted),
        IngestErrors
    )
)]
pub async fn event(req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    ingest_one(&req, ingress(&req)?, body, None).await
}

/// What ingest needs of the HTTP worker a request reached: the shared
/// state and the thread's pusher.
#[derive(Clone, Copy)]
pub(super) struct Ingress<'a> {
    pub state: &'a AppState,
    pub pusher: &'a LocalPusher,
}

/// The [`Ingress`] of a request the app routed (its worker's app data).
pub(super) fn ingress(req: &HttpRequest) -> Result<Ingress<'_>, ApiError> {
    let pusher = req
        .app_data::<LocalPusher>()
        .ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("no pusher on this HTTP worker")))?;
    Ok(Ingress {
        state: super::state_of(req)?,
        pusher,
    })
}

/// One event from one request, on every route that takes one: the app's
/// handlers above and the ingest fast path (`super::front`).
pub(super) async fn ingest_one<R, B>(
    req: &R,
    ingress: Ingress<'_>,
    body: B,
    fixed_kind: Option<Kind>,
) -> Result<HttpResponse, ApiError>
where
    R: Incoming + ?Sized,
    B: Stream<Item = Result<web::Bytes, PayloadError>> + Unpin,
{
    let state = ingress.state;
    if body_kind(req)? == BodyKind::Ndjson {
        return Err(ApiError::UnsupportedMediaType(
            "send one JSON event as application/json; NDJSON goes to /events/batch".into(),
        ));
    }
    let tenant = super::tenant_of(req, state).await?;
    let bytes = read_body(body, req, MAX_EVENT_BYTES, state.settings.body_timeout).await?;
    let mut ctx = parse_context(req, state, fixed_kind, idempotency_key(req)?)?;
    ctx.tenant = tenant;
    let parsed = parse_event(&bytes, &ctx);
    // Every request is charged to its client, a refused one too; an ad only
    // for an event it would take.
    let ad = parsed
        .as_ref()
        .ok()
        .and_then(|e| e.ad_id.as_ref())
        .map(|a| (a.as_str(), 1));
    limit(state, &ctx, 1, ad.as_slice()).await?;
    let mut event = parsed.map_err(|e| rejected(state, e))?;
    enqueue(req, ingress, std::slice::from_mut(&mut event)).await?;
    Ok(accepted(event.event_id))
}

/// The 202 of one event: the JSON of [`Accepted`], written directly (it
/// is the answer of every single-event request).
fn accepted(event_id: Uuid) -> HttpResponse {
    const HEAD: &[u8] = br#"{"status":"accepted","eventId":""#;
    let mut body = Vec::with_capacity(HEAD.len() + uuid::fmt::Hyphenated::LENGTH + 2);
    body.extend_from_slice(HEAD);
    body.extend_from_slice(
        event_id
            .hyphenated()
            .encode_lower(&mut Uuid::encode_buffer())
            .as_bytes(),
    );
    body.extend_from_slice(br#""}"#);
    HttpResponse::Accepted()
        .content_type(header::ContentType::json())
        .body(body)
}

#[derive(Deserialize)]
struct BatchItems<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// Up to 1,000 events in one request; bad items are listed in `rejected`
/// while the good ones are queued (in one `LPUSH`).
#[utoipa::path(
    post,
    path = "/events/batch",
    tag = "ingest",
    request_body(content = openapi::BatchBody, description = "`{\"events\":[…]}`, or NDJSON (`application/x-ndjson`, one event per line)"),
    responses(
        (status = 202, description = "The good items queued; the bad ones with their index and error", body = BatchAccepted),
        IngestErrors
    )
)]
pub async fn batch(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let kind = body_kind(&req)?;
    let tenant = super::tenant_of(&req, &state).await?;
    let bytes = read_body(body, &req, MAX_BATCH_BYTES, state.settings.body_timeout).await?;
    let key = idempotency_key(&req)?;
    let items: Vec<&[u8]> = match kind {
        BodyKind::Json => {
            let parsed: BatchItems = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::bad_request(
                    "invalid_body",
                    format!("a batch is {{\"events\": [ … ]}}: {e}"),
                )
            })?;
            parsed
                .events
                .into_iter()
                .map(|raw| raw.get().as_bytes())
                .collect()
        }
        BodyKind::Ndjson => bytes[..]
            .split(|b| *b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .collect(),
    };
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "a batch needs at least one event",
        ));
    }
    if items.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::PayloadTooLarge(format!(
            "a batch holds at most {MAX_BATCH_ITEMS} events; this one has {}",
            items.len()
        )));
    }

    let mut accepted: Vec<Event> = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    let mut base = parse_context(&req, &state, None, None)?;
    base.tenant = tenant;
    for (index, item) in items.iter().enumerate() {
        let mut ctx = base.clone();
        // A retried batch maps each item to the same eventId as before.
        ctx.default_event_id = key.map(|k| Uuid::new_v5(&k, index.to_string().as_bytes()));
        match parse_event(item, &ctx) {
            Ok(event) => accepted.push(event),
            Err(e) => {
                let e = rejected_item(&state, e);
                rejected.push(Rejected {
                    index,
                    error: e.code,
                    message: e.message,
                });
            }
        }
    }
    let mut per_ad: Vec<(&str, u32)> = Vec::new();
    for ad in accepted.iter().filter_map(|e| e.ad_id.as_ref()) {
        match per_ad.iter_mut().find(|(a, _)| *a == ad.as_str()) {
            Some((_, n)) => *n += 1,
            None => per_ad.push((ad.as_str(), 1)),
        }
    }
    // A limited batch is refused whole: nothing of it is queued. The
    // client pays for every item, a rejected one too.
    let cost = u32::try_from(items.len()).unwrap_or(u32::MAX);
    limit(&state, &base, cost, &per_ad).await?;
    enqueue(&req, ingress(&req)?, &mut accepted).await?;
    Ok(HttpResponse::Accepted().json(BatchAccepted {
        accepted: accepted.len(),
        event_ids: accepted.iter().map(|e| e.event_id).collect(),
        rejected,
    }))
}

/// Flags invalid traffic (`IVT_FILTER=flag`), then queues events through
/// [`crate::ingest`]: answers once Redis or the spool holds them all.
pub(super) async fn enqueue<R: Incoming + ?Sized>(
    req: &R,
    ingress: Ingress<'_>,
    events: &mut [Event],
) -> Result<(), ApiError> {
    let state = ingress.state;
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    state
        .ivt
        .flag(events, user_agent, state.redis_down.is_down())
        .await;
    let queue = Enqueue {
        pusher: ingress.pusher,
        spool: &state.spool,
        redis_down: &state.redis_down,
        metrics: &state.metrics,
    };
    queue.events(events).await.map_err(|e| match e {
        EnqueueError::ShuttingDown => shutting_down(),
        EnqueueError::SpoolFull => ApiError::Unavailable {
            message: "the event queue is unavailable and the spool is full; retry later".into(),
            retry_after_secs: 5,
        },
        EnqueueError::SpoolWrite { cause } => ApiError::Unavailable {
            message:
                "the event queue is unavailable and the spool could not be written; retry later"
                    .into(),
            retry_after_secs: match cause {
                FailureCause::NoSpace => 5,
                _ => 1,
            },
        },
        EnqueueError::Encode(e) => ApiError::Unexpected(e.into()),
    })
}

/// Applies the rate limits (when configured) to a request from
/// `ctx.peer_ip` carrying `events` events, `ads` (adId, events) of them.
pub(super) async fn limit(
    state: &AppState,
    ctx: &ParseContext,
    events: u32,
    ads: &[(&str, u32)],
) -> Result<(), ApiError> {
    let Some(limiter) = &state.rate_limiter else {
        return Ok(());
    };
    let decision = limiter
        .check(
            ctx.peer_ip,
            events,
            &ctx.tenant,
            ads,
            state.redis_down.is_down(),
        )
        .await;
    match decision {
        Decision::Allowed => Ok(()),
        Decision::Limited {
            scope,
            retry_after_secs,
        } => {
            let what = if scope == "ad" {
                "too many events for this adId"
            } else {
                "too many events from this client"
            };
            Err(ApiError::TooManyRequests {
                message: format!("{what}; retry in {retry_after_secs} s"),
                retry_after_secs,
            })
        }
    }
}

fn shutting_down() -> ApiError {
    ApiError::Unavailable {
        message: "the server is shutting down; retry shortly".into(),
        retry_after_secs: 1,
    }
}

pub(super) fn rejected(state: &AppState, e: EventError) -> ApiError {
    rejected_item(state, e).into()
}

fn rejected_item(state: &AppState, e: EventError) -> EventError {
    state
        .metrics
        .events_rejected
        .with_label_values(&[e.code])
        .inc();
    e
}

pub(super) fn parse_context<R: Incoming + ?Sized>(
    req: &R,
    state: &AppState,
    fixed_kind: Option<Kind>,
    default_event_id: Option<Uuid>,
) -> Result<ParseContext, ApiError> {
    let now = Utc::now();
    Ok(ParseContext {
        fixed_kind,
        default_kind: Kind::Play,
        peer_ip: client_ip(req, &state.settings.trusted_proxies),
        now,
        default_event_id,
        allow_simulate_failure: state.settings.simulate_failures,
        oldest: oldest_accepted(&state.settings, now),
        tenant: String::new(),
    })
}

/// The oldest event time ingest accepts at `now`: the later of what
/// `EVENT_RETENTION` still keeps (an older event's idempotency key would be
/// gone, so a retry could count twice) and `MAX_EVENT_AGE`.
fn oldest_accepted(
    settings: &crate::config::Settings,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let kept = settings
        .event_retention
        .map(|keep| crate::store::retention_cutoff(now, keep));
    let young = settings
        .max_event_age
        .and_then(|age| chrono::Duration::from_std(age).ok())
        .and_then(|age| now.checked_sub_signed(age));
    kept.max(young)
}

/// The `Idempotency-Key` header as an eventId: itself when it is a UUID,
/// else a UUIDv5 of it.
fn idempotency_key<R: Incoming + ?Sized>(req: &R) -> Result<Option<Uuid>, ApiError> {
    const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::invalid_field("Idempotency-Key must be printable ASCII"))?
        .trim();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::invalid_field(
            "Idempotency-Key must be 1 to 128 characters",
        ));
    }
    Ok(Some(Uuid::parse_str(key).unwrap_or_else(|_| {
        Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, key.as_bytes())
    })))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Ndjson,
}

/// JSON (also `text/plain`, which browser beacons send, and no header at
/// all) or NDJSON; anything else is 415.
fn body_kind<R: Incoming + ?Sized>(req: &R) -> Result<BodyKind, ApiError> {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(BodyKind::Json);
    };
    let Ok(value) = value.to_str() else {
        return Err(ApiError::UnsupportedMediaType(
            "the Content-Type header is not printable ASCII; send application/json".into(),
        ));
    };
    let mime = value.split(';').next().unwrap_or("").trim();
    let is = |names: &[&str]| names.iter().any(|n| mime.eq_ignore_ascii_case(n));
    let starts = |prefix: &str| {
        mime.get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    let ends = |suffix: &str| {
        mime.len()
            .checked_sub(suffix.len())
            .and_then(|at| mime.get(at..))
            .is_some_and(|s| s.eq_ignore_ascii_case(suffix))
    };
    let suffixed = starts("application/") && ends("+json");
    if is(&["application/json", "text/plain", ""]) || suffixed {
        Ok(BodyKind::Json)
    } else if is(&[
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
    ]) {
        Ok(BodyKind::Ndjson)
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "content type {:?} is not accepted; send application/json",
            mime.to_ascii_lowercase()
        )))
    }
}

/// Reads the body, refusing it as soon as it passes `limit` bytes, or
/// with 408 when it has not all arrived within `deadline`, the caller's
/// `BODY_TIMEOUT` (actix's own client timeout covers only the headers; a
/// body trickled a byte at a time would otherwise hold its connection for
/// as long as the client likes).
async fn read_body<R, B>(
    mut body: B,
    req: &R,
    limit: usize,
    deadline: Duration,
) -> Result<web::Bytes, ApiError>
where
    R: Incoming + ?Sized,
    B: Stream<Item = Result<web::Bytes, PayloadError>> + Unpin,
{
    let too_large = || ApiError::PayloadTooLarge(format!("the body is larger than {limit} bytes"));
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    let read = async {
        // A small body arrives in one chunk: keep it as it is, copy only
        // when a second one follows.
        let mut first: Option<web::Bytes> = None;
        let mut joined = web::BytesMut::new();
        let mut len = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request("invalid_body", format!("the body could not be read: {e}"))
            })?;
            len += chunk.len();
            if len > limit {
                return Err(too_large());
            }
            match first.take() {
                None if joined.is_empty() => first = Some(chunk),
                earlier => {
                    if let Some(earlier) = earlier {
                        joined.extend_from_slice(&earlier);
                    }
                    joined.extend_from_slice(&chunk);
                }
            }
        }
        Ok(first.unwrap_or_else(|| joined.freeze()))
    };
    // A small body has usually arrived with its headers, but actix calls
    // the handler as soon as it has parsed them and feeds it the body
    // after: the first look finds nothing, and the second, in the same
    // pass of the connection's dispatcher, finds it all. So the deadline's
    // timer, a registration with the runtime's timer wheel and a removal,
    // is armed only when the body is still missing at the second look. The
    // first look registers this task's waker with the body, and actix's
    // dispatcher looks again right after feeding the body it read (the
    // test `a_stalled_body_gets_408_within_the_deadline` fails if it ever
    // stops doing so).
    let mut read = std::pin::pin!(read);
    let mut looked = false;
    let early = std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
        Poll::Ready(raw) => Poll::Ready(Some(raw)),
        Poll::Pending if !looked => {
            looked = true;
            Poll::Pending
        }
        Poll::Pending => Poll::Ready(None),
    })
    .await;
    let raw = match early {
        Some(raw) => raw?,
        None => tokio::time::timeout(deadline, read).await.map_err(|_| {
            ApiError::RequestTimeout(format!(
                "the request body did not arrive within {} s",
                deadline.as_secs()
            ))
        })??,
    };
    decode_body(req, raw, limit)
}

/// Undoes `Content-Encoding: gzip` or `deflate` (what PostHog's, Segment's
/// and Snowplow's SDKs send). The size limit applies to the decoded body,
/// and decoding stops as soon as it is passed, so a compression bomb costs
/// at most `limit` bytes of memory and the work to produce them.
fn decode_body<R: Incoming + ?Sized>(
    req: &R,
    raw: web::Bytes,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    use std::io::Read;

    let Some(value) = req.headers().get(header::CONTENT_ENCODING) else {
        return Ok(raw);
    };
    let encoding = value
        .to_str()
        .map(|v| v.trim().to_ascii_lowercase())
        .map_err(|_| ApiError::UnsupportedMediaType("Content-Encoding is not ASCII".into()))?;
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut out = Vec::new();
    let read = match encoding.as_str() {
        "" | "identity" => return Ok(raw),
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(&raw[..])
            .take(cap)
            .read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(&raw[..])
            .take(cap)
            .read_to_end(&mut out),
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Encoding {other:?} is not supported; send gzip, deflate or an uncompressed body"
            )))
        }
    };
    read.map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("the {encoding} body could not be decompressed: {e}"),
        )
    })?;
    if out.len() > limit {
        return Err(ApiError::PayloadTooLarge(format!(
            "the decompressed body is larger than {limit} bytes"
        )));
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody;
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn the_written_answer_is_the_json_of_accepted() {
        let id = Uuid::now_v7();
        let res = accepted(id);
        assert_eq!(res.status(), actix_web::http::StatusCode::ACCEPTED);
        assert_eq!(
            res.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
        let body = res.into_body().try_into_bytes().unwrap();
        let expected = serde_json::to_vec(&Accepted {
            status: "accepted",
            event_id: id,
        })
        .unwrap();
        assert_eq!(body, expected);
    }

    #[test]
    fn content_types_are_read_without_regard_to_case() {
        let kind = |value: &str| {
            body_kind(
                &TestRequest::default()
                    .insert_header((header::CONTENT_TYPE, value))
                    .to_http_request(),
            )
            .ok()
        };
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "text/plain;charset=UTF-8",
            "application/vnd.api+json",
            "APPLICATION/LD+JSON",
            "",
        ] {
            assert_eq!(kind(json), Some(BodyKind::Json), "{json}");
        }
        for ndjson in ["application/x-ndjson", "Application/JSONL"] {
            assert_eq!(kind(ndjson), Some(BodyKind::Ndjson), "{ndjson}");
        }
        for refused in ["text/csv", "application/xml", "application/json5", "+json"] {
            assert_eq!(kind(refused), None, "{refused}");
        }
        assert_eq!(
            body_kind(&TestRequest::default().to_http_request()).ok(),
            Some(BodyKind::Json)
        );
    }
}
