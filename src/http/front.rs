//! The ingest fast path: what each HTTP worker runs first for every request.
//!
//! A `POST` of one event (`/ads/click`, `/ads/impression`, `/events`)
//! without an `Origin` header goes straight to [`ingest::ingest_one`], the
//! function the app's own handlers for those routes call, and its answer
//! gets the edge's security headers and request metrics
//! ([`Edge::dress`], [`Edge::observe`]). Every other request goes to the
//! actix-web `App` unchanged: its router, the edge middleware with CORS,
//! the other routes, the UI.
//!
//! Why: the `App`'s machinery for one request (its `HttpRequest`, the
//! router, the route's guard, the extractors, the responder, the
//! middleware's boxed future) is several per cent of an ingest request's
//! CPU (docs/PERFORMANCE.md, "What each change bought"), and ingest is
//! the hot path. What the fast path skips only dispatches a request: what it
//! does (the body's limits and deadline, tenants, rate limits, the
//! invalid-traffic flag, the push, the spool) is the same code.
//! A request with an `Origin` is a browser's cross-origin request, which
//! actix-cors checks, so it takes the app's way.

use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_http::{Request, Response};
use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{AppConfig, Service, ServiceFactory, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::{web, Error, ResponseError};
use futures_util::future::{Either, LocalBoxFuture, MapOk, TryFutureExt};

use super::edge::Edge;
use super::ingest::{self, Ingress};
use super::AppState;
use crate::domain::Kind;
use crate::queue::LocalPusher;

/// The routes the fast path serves: (path, the kind it fixes). Each is
/// also in the app's route table, with the same handler code behind it.
const FAST_ROUTES: [(&str, Option<Kind>); 3] = [
    ("/ads/click", Some(Kind::Click)),
    ("/ads/impression", Some(Kind::Impression)),
    ("/events", None),
];

/// The route of the fast path that serves `req`, if one does.
fn fast_route(req: &Request) -> Option<(&'static str, Option<Kind>)> {
    if req.method() != Method::POST || req.head().headers.contains_key(header::ORIGIN) {
        return None;
    }
    let path = req.path();
    FAST_ROUTES.into_iter().find(|(route, _)| *route == path)
}

/// What the fast path needs on one HTTP worker thread: the app's state,
/// and the same pusher and edge as the thread's `App`.
pub(super) struct Fast {
    pub state: web::Data<AppState>,
    pub pusher: LocalPusher,
    pub edge: Rc<Edge>,
}

/// One HTTP worker's service factory: the fast path in front of `app` (an
/// `App`), or `app` alone when `fast` is `None` (a server without the
/// ingest routes).
pub struct Front<T> {
    app: T,
    fast: Option<Rc<Fast>>,
}

impl<T> Front<T> {
    pub(super) fn new(app: T, fast: Option<Fast>) -> Self {
        Self {
            app,
            fast: fast.map(Rc::new),
        }
    }
}

impl<T, B> ServiceFactory<Request> for Front<T>
where
    T: ServiceFactory<
        Request,
        Config = AppConfig,
        Response = ServiceResponse<B>,
        Error = Error,
        InitError = (),
    >,
    T::Future: 'static,
    B: MessageBody + 'static,
{
    type Response = Response<EitherBody<B>>;
    type Error = Error;
    type Config = AppConfig;
    type Service = FrontService<T::Service>;
    type InitError = ();
    type Future = LocalBoxFuture<'static, Result<Self::Service, ()>>;

    fn new_service(&self, config: AppConfig) -> Self::Future {
        let app = self.app.new_service(config);
        let fast = self.fast.clone();
        Box::pin(async move {
            Ok(FrontService {
                app: app.await?,
                fast,
            })
        })
    }
}

pub struct FrontService<S> {
    app: S,
    fast: Option<Rc<Fast>>,
}

type AppAnswer<F, B> = MapOk<F, fn(ServiceResponse<B>) -> Response<EitherBody<B>>>;

fn from_app<B>(res: ServiceResponse<B>) -> Response<EitherBody<B>> {
    Response::from(res.into_parts().1).map_body(|_, body| EitherBody::left(body))
}

impl<S, B> Service<Request> for FrontService<S>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody + 'static,
{
    type Response = Response<EitherBody<B>>;
    type Error = Error;
    type Future =
        Either<LocalBoxFuture<'static, Result<Self::Response, Error>>, AppAnswer<S::Future, B>>;

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.app.poll_ready(cx)
    }

    fn call(&self, req: Request) -> Self::Future {
        if let Some(fast) = &self.fast {
            if let Some((route, kind)) = fast_route(&req) {
                return Either::Left(Box::pin(serve(fast.clone(), req, route, kind)));
            }
        }
        Either::Right(self.app.call(req).map_ok(from_app as fn(_) -> _))
    }
}

/// One event's request on the fast path, answered as the app would.
async fn serve<B>(
    fast: Rc<Fast>,
    mut req: Request,
    route: &'static str,
    kind: Option<Kind>,
) -> Result<Response<EitherBody<B>>, Error> {
    let started = Instant::now();
    let body = req.take_payload();
    let ingress = Ingress {
        state: &fast.state,
        pusher: &fast.pusher,
    };
    let answer = match ingest::ingest_one(&req, ingress, body, kind).await {
        Ok(answer) => answer,
        Err(e) => e.error_response(),
    };
    let mut res: Response<BoxBody> = answer.into();
    // A POST's answer is not one a cache keeps: no `Vary`.
    fast.edge.dress(res.headers_mut(), false);
    let status = res.status().as_u16();
    fast.edge.observe(route, "POST", status, started.elapsed());
    Ok(res.map_body(|_, body| EitherBody::right(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::test::TestRequest;

    #[test]
    fn only_origin_less_posts_of_one_event_take_the_fast_path() {
        let route = |method: Method, uri: &str, origin: bool| {
            let mut req = TestRequest::default();
            req.method(method).uri(uri);
            if origin {
                req.insert_header((header::ORIGIN, "https://publisher.example"));
            }
            fast_route(&req.finish()).map(|(route, _)| route)
        };
        assert_eq!(route(Method::POST, "/ads/click", false), Some("/ads/click"));
        assert_eq!(
            route(Method::POST, "/ads/impression?x=1", false),
            Some("/ads/impression")
        );
        assert_eq!(route(Method::POST, "/events", false), Some("/events"));
        // Browsers' cross-origin requests go through actix-cors.
        assert_eq!(route(Method::POST, "/ads/click", true), None);
        // Other methods and routes, and batches, are the app's.
        assert_eq!(route(Method::GET, "/events", false), None);
        assert_eq!(route(Method::OPTIONS, "/ads/click", false), None);
        assert_eq!(route(Method::POST, "/events/batch", false), None);
        assert_eq!(route(Method::POST, "/ads/click/", false), None);
    }

    #[test]
    fn every_fast_route_is_a_post_route_of_the_app() {
        let routes = super::super::routes(super::super::Surface::Full);
        for (path, _) in FAST_ROUTES {
            assert!(routes.contains(&(Method::POST, path)), "{path}");
        }
    }
}
