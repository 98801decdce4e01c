//! The one error type of the HTTP edge. Every error leaves as JSON
//! `{"error": "<code>", "message": "<sentence>"}` with its status.

use actix_web::body::EitherBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::domain::EventError;
use crate::fault::Fault;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    /// `allow`: the methods the resource takes, for the `Allow` header.
    #[error("method not allowed; this resource takes {allow}")]
    MethodNotAllowed { allow: String },
    /// The request body did not arrive within its deadline.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    /// A dependency cannot serve now; the client should retry.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_field(message: impl Into<String>) -> Self {
        Self::bad_request("invalid_field", message)
    }

    /// A failed read from Redis or Postgres. A dependency that is down or
    /// refuses work is 503 with `Retry-After`; anything else is a bug and
    /// answers 500, so an alert on 503s always means a dependency.
    pub fn dependency(err: anyhow::Error) -> Self {
        match Fault::of(&err) {
            Fault::Outage(outage) if outage.is_known() => {
                tracing::warn!(
                    dependency = outage.dependency.as_str(),
                    cause = outage.cause.as_str(),
                    error = format!("{err:#}"),
                    "dependency unavailable"
                );
                Self::Unavailable {
                    message: format!(
                        "{} is unavailable ({}); retry shortly",
                        outage.dependency.as_str(),
                        outage.cause.as_str()
                    ),
                    retry_after_secs: 1,
                }
            }
            _ => Self::Unexpected(err),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } => code,
            Self::Unauthorized(_) => "unauthorized",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::RequestTimeout(_) => "request_timeout",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::TooManyRequests { .. } => "rate_limited",
            Self::Unavailable { .. } => "unavailable",
            Self::Unexpected(_) => "internal",
        }
    }
}

impl From<EventError> for ApiError {
    fn from(e: EventError) -> Self {
        Self::BadRequest {
            code: e.code,
            message: e.message,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = match self {
            Self::Unexpected(e) => {
                tracing::error!(error = format!("{e:#}"), "unexpected error");
                "an unexpected error occurred".to_string()
            }
            other => other.to_string(),
        };
        let mut res = HttpResponse::build(self.status_code());
        match self {
            Self::TooManyRequests {
                retry_after_secs, ..
            }
            | Self::Unavailable {
                retry_after_secs, ..
            } => {
                res.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            Self::Unauthorized(_) => {
                res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            Self::MethodNotAllowed { allow } => {
                res.insert_header((header::ALLOW, allow.as_str()));
            }
            // The rest of the body is still on the wire: the connection
            // cannot carry another request.
            Self::RequestTimeout(_) => {
                res.force_close();
            }
            _ => {}
        }
        res.json(json!({ "error": self.code(), "message": message }))
    }
}

/// The machine code of an error answer that actix produced by itself.
fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "unauthorized",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        429 => "rate_limited",
        431 => "headers_too_large",
        503 => "unavailable",
        500..=599 => "internal",
        _ => "bad_request",
    }
}

/// An error answer that is not JSON yet (an actix extractor's refusal, say
/// a path segment that is not UTF-8) gets the SPEC's `{"error","message"}`
/// shape; `ApiError` answers and every other answer pass unchanged.
pub(super) fn json_errors<B>(res: ServiceResponse<B>) -> ServiceResponse<EitherBody<B>> {
    let status = res.status();
    // The status first: an answer that is not an error needs no lookup.
    if !(status.is_client_error() || status.is_server_error()) {
        return res.map_into_left_body();
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return res.map_into_left_body();
    }
    let message = match res.response().error() {
        Some(e) if status.is_client_error() && !e.to_string().is_empty() => e.to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let body = json!({ "error": code_for_status(status), "message": message }).to_string();
    let (req, mut res) = res.into_parts();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    ServiceResponse::new(req, res.set_body(body))
        .map_into_boxed_body()
        .map_into_right_body()
}

#[cfg(test)]
mod tests {
    use actix_web::dev::Service;
    use actix_web::{test, web, App, HttpResponse};
    use serde_json::Value;

    use super::*;

    #[derive(serde::Deserialize)]
    struct Body {
        n: u32,
    }

    async fn typed(body: web::Json<Body>, q: web::Query<Body>) -> HttpResponse {
        HttpResponse::Ok().body((body.n + q.n).to_string())
    }

    async fn ours() -> Result<HttpResponse, ApiError> {
        Err(ApiError::bad_request("own_code", "our own message"))
    }

    #[actix_web::test]
    async fn errors_actix_produces_get_the_json_shape() {
        let app = test::init_service(
            App::new()
                .wrap_fn(|req, srv| {
                    let answer = srv.call(req);
                    async move { Ok(json_errors(answer.await?)) }
                })
                .route("/typed", web::post().to(typed))
                .route("/ours", web::get().to(ours)),
        )
        .await;
        let cases = [
            (
                test::TestRequest::post()
                    .uri("/typed?n=1")
                    .insert_header(("content-type", "application/json"))
                    .set_payload("{"),
                400,
                "bad_request",
            ),
            (
                test::TestRequest::post()
                    .uri("/typed?n=x")
                    .insert_header(("content-type", "application/json"))
                    .set_payload(r#"{"n":1}"#),
                400,
                "bad_request",
            ),
            (
                test::TestRequest::post()
                    .uri("/typed?n=1")
                    .insert_header(("content-type", "text/csv"))
                    .set_payload(r#"{"n":1}"#),
                400,
                "bad_request",
            ),
            (test::TestRequest::get().uri("/typed"), 404, "not_found"),
            (test::TestRequest::get().uri("/elsewhere"), 404, "not_found"),
            (test::TestRequest::get().uri("/ours"), 400, "own_code"),
        ];
        for (req, status, code) in cases {
            let res = test::call_service(&app, req.to_request()).await;
            assert_eq!(res.status().as_u16(), status);
            let ct = res.headers().get(header::CONTENT_TYPE).cloned();
            let body: Value = serde_json::from_slice(&test::read_body(res).await).unwrap();
            assert_eq!(body["error"], code, "{body}");
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert_eq!(ct.unwrap(), "application/json");
        }
    }
}
