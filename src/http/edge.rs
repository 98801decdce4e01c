//! What every answer gets on its way out, in one middleware: a JSON body
//! for the errors actix answered by itself, the security headers, and the
//! request metrics.
//!
//! One layer instead of three because every layer costs every request a
//! boxed future and a poll of its own, and at ingest rates that cost shows:
//! `bench/run` compares the ingest path with a bare actix server. For the
//! same reason compression is not here but on the routes whose answers are
//! worth compressing (`super::configure`).

use std::cell::RefCell;
use std::time::Duration;

use actix_web::body::EitherBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::Method;
use prometheus::{Histogram, HistogramVec};

use super::error;
use crate::metrics::Metrics;

/// Most (route, method, status) histograms a thread keeps at hand; past it,
/// each request looks its histogram up in the thread's shard.
const MAX_TIMERS: usize = 256;

/// The per-thread state of the middleware (the app factory, and so this,
/// runs once on each HTTP worker thread).
pub(super) struct Edge {
    headers: [(HeaderName, HeaderValue); 4],
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
    /// `csp` is the Content-Security-Policy of every answer
    /// (`super::content_security_policy`).
    pub(super) fn new(csp: String, metrics: &Metrics) -> Self {
        // The policy is ASCII built from a checked `PUBLIC_URL`; should it
        // not be a valid header value, the policy without that origin is.
        let csp = HeaderValue::try_from(csp).unwrap_or_else(|_| {
            HeaderValue::try_from(super::content_security_policy(None))
                .unwrap_or(HeaderValue::from_static("default-src 'self'"))
        });
        Self {
            headers: [
                (header::CONTENT_SECURITY_POLICY, csp),
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
        method: &Method,
        took: Duration,
    ) -> ServiceResponse<EitherBody<B>> {
        let mut res = error::json_errors(res);
        let headers = res.headers_mut();
        for (name, value) in &self.headers {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
        let route = res.request().match_name().unwrap_or("unmatched");
        self.observe(route, method_label(method), res.status().as_u16(), took);
        res
    }

    fn observe(&self, route: &str, method: &'static str, status: u16, took: Duration) {
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
    fn standard_methods_keep_their_name_and_others_are_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::TRACE), "TRACE");
        for invented in ["FOO", "GETS", "get"] {
            let m = Method::from_bytes(invented.as_bytes()).unwrap();
            assert_eq!(method_label(&m), "other", "{invented}");
        }
    }
}
