//! What every request meets first and every answer gets on its way out, in
//! one middleware: CORS for the requests that carry an `Origin`, a JSON
//! body for the errors actix answered by itself, the security headers, and
//! the request metrics.
//!
//! One layer instead of four because every layer costs every request a
//! boxed future and a poll of its own, and at ingest rates that cost shows:
//! `bench/run` compares the ingest path with a bare actix server. For the
//! same reason compression is not here but on the routes whose answers are
//! worth compressing (`super::configure`), and a request without an
//! `Origin` header does not pass through actix-cors at all: no browser sent
//! it as a cross-origin request, so CORS has nothing to check or grant, and
//! actix-cors would only add `Access-Control-Expose-Headers`, which no
//! client reads outside CORS, and `Vary`. The edge adds `Vary: Origin`
//! itself to such an answer to a `GET` or `HEAD`, the answers a cache may
//! keep; the ingest `POST`s' answers are not cacheable.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use actix_cors::{Cors, CorsMiddleware};
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::Error;
use futures_util::future::LocalBoxFuture;
use pin_project_lite::pin_project;
use prometheus::{Histogram, HistogramVec};

use super::error;
use crate::metrics::Metrics;

/// Most (route, method, status) histograms a thread keeps at hand; past it,
/// each request looks its histogram up in the thread's shard.
const MAX_TIMERS: usize = 256;

/// The Content-Security-Policy of every answer that is not an HTML page:
/// JSON, the VAST XML, the pixel's GIF, scripts, styles and images. Such
/// an answer loads nothing and runs nothing when a browser opens it on its
/// own (an SVG or a JSON body opened as a document), and no page may frame
/// it. It is the policy OWASP's REST guidance gives API answers, and a
/// fifth of the size of the pages' one, which every ingest answer would
/// otherwise carry.
const NOT_A_PAGE_POLICY: &str = "default-src 'none'; frame-ancestors 'none'";

/// The `Content-Type` of an answer a browser renders as a page with
/// subresources: HTML (the UI, `/docs`).
fn is_html(content_type: &HeaderValue) -> bool {
    content_type.as_bytes().starts_with(b"text/html")
}

/// Which of the headers the edge adds an answer already has (a handler's
/// own, or actix-cors's `Vary`), found in one pass over the answer's few
/// headers: a lookup for each name hashed it and probed the map, up to
/// six times an answer.
struct Set {
    policy: bool,
    /// An HTML page ([`is_html`]), which gets the pages' policy.
    page: bool,
    vary: bool,
    /// Each of [`Edge`]'s fixed headers, in its order.
    fixed: [bool; 3],
}

impl Set {
    fn of(headers: &HeaderMap, fixed: &[(HeaderName, HeaderValue); 3]) -> Self {
        let mut set = Self {
            policy: false,
            page: false,
            vary: false,
            fixed: [false; 3],
        };
        let mut typed = false;
        // Each value of a name in turn, the first one first.
        for (name, value) in headers.iter() {
            if *name == header::CONTENT_SECURITY_POLICY {
                set.policy = true;
            } else if *name == header::CONTENT_TYPE {
                // The first value, the one `HeaderMap::get` gives.
                if !typed {
                    typed = true;
                    set.page = is_html(value);
                }
            } else if *name == header::VARY {
                set.vary = true;
            } else if let Some(at) = fixed.iter().position(|(n, _)| n == name) {
                set.fixed[at] = true;
            }
        }
        set
    }
}

/// The per-thread state of the middleware (the app factory, and so this,
/// runs once on each HTTP worker thread).
pub(super) struct Edge {
    /// The policy of HTML pages (`super::content_security_policy`).
    page_policy: HeaderValue,
    /// Every other header, the same on every answer.
    headers: [(HeaderName, HeaderValue); 3],
    /// This thread's shard of the request histograms.
    requests: HistogramVec,
    /// The request histograms this thread has used, so that a request does
    /// not hash its three labels and lock the shard's map to find its
    /// own. The hot routes come first, as they are the first ones used.
    timers: RefCell<Vec<Timer>>,
}

struct Timer {
    route: Box<str>,
    method: &'static str,
    status: u16,
    histogram: Histogram,
}

impl Edge {
    /// `csp` is the Content-Security-Policy of HTML pages
    /// (`super::content_security_policy`); every other answer gets
    /// [`NOT_A_PAGE_POLICY`].
    pub(super) fn new(csp: String, metrics: &Metrics) -> Self {
        // The policy is ASCII built from a checked `PUBLIC_URL`; should it
        // not be a valid header value, the policy without that origin is.
        let csp = HeaderValue::try_from(csp).unwrap_or_else(|_| {
            HeaderValue::try_from(super::content_security_policy(None))
                .unwrap_or(HeaderValue::from_static("default-src 'self'"))
        });
        Self {
            page_policy: csp,
            headers: [
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
                (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
                (
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("strict-origin-when-cross-origin"),
                ),
            ],
            requests: metrics.http_requests.shard(),
            timers: RefCell::new(Vec::new()),
        }
    }

    /// The answer as it leaves: errors in JSON, the security headers where
    /// a handler did not set its own, and its latency observed.
    pub(super) fn finish<B>(
        &self,
        res: ServiceResponse<B>,
        asked: Asked,
        took: Duration,
    ) -> ServiceResponse<EitherBody<B>> {
        let mut res = error::json_errors(res);
        self.dress(res.headers_mut(), asked.cacheable);
        let route = res.request().match_name().unwrap_or("unmatched");
        self.observe(route, asked.method, res.status().as_u16(), took);
        res
    }

    /// Adds the security headers an answer does not set itself, and `Vary:
    /// Origin` to a `cacheable` one that has no `Vary`.
    pub(super) fn dress(&self, headers: &mut HeaderMap, cacheable: bool) {
        let set = Set::of(headers, &self.headers);
        if !set.policy {
            let policy = if set.page {
                self.page_policy.clone()
            } else {
                HeaderValue::from_static(NOT_A_PAGE_POLICY)
            };
            headers.insert(header::CONTENT_SECURITY_POLICY, policy);
        }
        for ((name, value), present) in self.headers.iter().zip(set.fixed) {
            if !present {
                headers.insert(name.clone(), value.clone());
            }
        }
        // actix-cors set its own on the requests it saw.
        if cacheable && !set.vary {
            headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
    }

    /// Observes an answer's latency in the request histogram of its
    /// (route, method, status).
    pub(super) fn observe(&self, route: &str, method: &'static str, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let mut timers = self.timers.borrow_mut();
        let known = timers
            .iter()
            .find(|t| t.status == status && t.method == method && *t.route == *route);
        if let Some(t) = known {
            t.histogram.observe(secs);
            return;
        }
        let status_text = status.to_string();
        let histogram = self
            .requests
            .with_label_values(&[route, method, status_text.as_str()]);
        histogram.observe(secs);
        if timers.len() < MAX_TIMERS {
            timers.push(Timer {
                route: route.into(),
                method,
                status,
                histogram,
            });
        }
    }
}

/// The edge as actix middleware: the outermost layer of the app.
pub(super) struct Layer {
    edge: Rc<Edge>,
    cors: Cors,
}

impl Layer {
    pub(super) fn new(edge: Rc<Edge>, cors: Cors) -> Self {
        Self { edge, cors }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Layer
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<EitherBody<B>>>;
    type Error = Error;
    type InitError = ();
    type Transform = EdgeService<S>;
    type Future = LocalBoxFuture<'static, Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        let routes = Rc::new(service);
        let cors = self.cors.new_transform(routes.clone());
        let edge = self.edge.clone();
        Box::pin(async move {
            Ok(EdgeService {
                cors: cors.await?,
                routes,
                edge,
            })
        })
    }
}

/// The routes, reached through actix-cors when a request has an `Origin`
/// and directly when it has none.
pub(super) struct EdgeService<S> {
    cors: CorsMiddleware<Rc<S>>,
    routes: Rc<S>,
    edge: Rc<Edge>,
}

impl<S, B> Service<ServiceRequest> for EdgeService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<EitherBody<B>>>;
    type Error = Error;
    type Future = Answer<S::Future, B>;

    actix_web::dev::forward_ready!(routes);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let asked = Asked::of(req.method());
        let pending = if req.headers().contains_key(header::ORIGIN) {
            Pending::Cors {
                answer: self.cors.call(req),
            }
        } else {
            Pending::Direct {
                answer: self.routes.call(req),
            }
        };
        Answer {
            pending,
            edge: self.edge.clone(),
            asked,
            started,
        }
    }
}

pin_project! {
    /// An answer on its way out through the edge.
    pub(super) struct Answer<F, B> {
        #[pin]
        pending: Pending<F, B>,
        edge: Rc<Edge>,
        asked: Asked,
        started: Instant,
    }
}

/// What the edge needs to know of a request's method once it is answered,
/// worked out before the request moves on.
#[derive(Clone, Copy)]
pub(super) struct Asked {
    /// The `method` label of the request metrics.
    method: &'static str,
    /// A GET or HEAD, whose answer a cache may keep.
    cacheable: bool,
}

impl Asked {
    fn of(method: &Method) -> Self {
        Self {
            method: method_label(method),
            cacheable: matches!(*method, Method::GET | Method::HEAD),
        }
    }
}

type CorsAnswer<B> = LocalBoxFuture<'static, Result<ServiceResponse<EitherBody<B>>, Error>>;

pin_project! {
    #[project = PendingProj]
    enum Pending<F, B> {
        Direct { #[pin] answer: F },
        Cors { answer: CorsAnswer<B> },
    }
}

impl<F, B> Future for Answer<F, B>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
    B: MessageBody,
{
    type Output = Result<ServiceResponse<EitherBody<EitherBody<B>>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match this.pending.project() {
            PendingProj::Direct { answer } => ready!(answer.poll(cx))?.map_into_left_body(),
            PendingProj::Cors { answer } => ready!(answer.as_mut().poll(cx))?,
        };
        Poll::Ready(Ok(this.edge.finish(
            res,
            *this.asked,
            this.started.elapsed(),
        )))
    }
}

/// The `method` label: the standard methods by name, any other as `other`,
/// so a client inventing methods cannot add series without end.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headers_an_answer_brings_are_found_in_one_pass() {
        let metrics = Metrics::new().unwrap();
        let edge = Edge::new("default-src 'self'".into(), &metrics);
        let set = |pairs: &[(HeaderName, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(name.clone(), HeaderValue::from_static(value));
            }
            Set::of(&headers, &edge.headers)
        };

        let bare = set(&[(header::CONTENT_TYPE, "application/json")]);
        assert!(!bare.policy && !bare.page && !bare.vary);
        assert_eq!(bare.fixed, [false; 3]);

        let own = set(&[
            (header::CONTENT_SECURITY_POLICY, "sandbox"),
            (header::VARY, "Accept-Encoding"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ]);
        assert!(own.policy && own.vary && !own.page);
        assert_eq!(own.fixed, [true, false, true]);
        let frame = set(&[(header::X_FRAME_OPTIONS, "SAMEORIGIN")]);
        assert_eq!(frame.fixed, [false, true, false]);

        // A page by its first Content-Type, as `HeaderMap::get` reads it.
        assert!(set(&[(header::CONTENT_TYPE, "text/html; charset=utf-8")]).page);
        assert!(
            set(&[
                (header::CONTENT_TYPE, "text/html"),
                (header::CONTENT_TYPE, "application/json"),
            ])
            .page
        );
        assert!(
            !set(&[
                (header::CONTENT_TYPE, "application/json"),
                (header::CONTENT_TYPE, "text/html"),
            ])
            .page
        );
    }

    #[test]
    fn standard_methods_keep_their_name_and_others_are_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::TRACE), "TRACE");
        for invented in ["FOO", "GETS", "get"] {
            let m = Method::from_bytes(invented.as_bytes()).unwrap();
            assert_eq!(method_label(&m), "other", "{invented}");
        }
    }
}
