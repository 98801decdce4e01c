//! The query strings of the read handlers, parsed into each handler's own
//! `#[derive(Deserialize)]` struct.
//!
//! actix's `web::Query` does the decoding. It is called from here rather
//! than used as an extractor because adtrack's answers differ from its
//! defaults: a parameter given twice (`?adId=a&adId=b`) is ambiguous and
//! refused even when the handler does not read it, a malformed query string
//! is adtrack's `invalid_query` JSON, and admin routes check the token
//! before they look at the query. Fields stay strings: each handler checks
//! its values and answers `invalid_field` naming the parameter, as the SPEC
//! words it.

use std::collections::HashSet;

use actix_web::web;
use serde::de::DeserializeOwned;

use super::client::Incoming;
use super::ApiError;

/// The query string of `req` as `T`; 400 `invalid_query` when it cannot be
/// decoded or names a parameter more than once. Unknown parameters are
/// ignored.
pub(crate) fn parse<T: DeserializeOwned, R: Incoming + ?Sized>(req: &R) -> Result<T, ApiError> {
    let invalid = |e: actix_web::error::QueryPayloadError| {
        ApiError::bad_request("invalid_query", format!("the query string is invalid: {e}"))
    };
    let query = req.query_string();
    let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
        .map_err(invalid)?
        .into_inner();
    let mut seen = HashSet::with_capacity(pairs.len());
    for (name, _) in &pairs {
        if !seen.insert(name.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("the query parameter {name:?} is given more than once"),
            ));
        }
    }
    web::Query::<T>::from_query(query)
        .map(web::Query::into_inner)
        .map_err(invalid)
}

/// A parameter the SPEC accepts in camelCase and snake_case: the camelCase
/// one when both are given.
pub(crate) fn either<'q>(camel: &'q Option<String>, snake: &'q Option<String>) -> Option<&'q str> {
    camel.as_deref().or(snake.as_deref())
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Inner {
        #[serde(rename = "adId")]
        ad_id: Option<String>,
        #[serde(rename = "ad_id")]
        ad_id_snake: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    struct Q {
        #[serde(flatten)]
        inner: Inner,
        limit: Option<String>,
    }

    fn parse_uri(uri: &str) -> Result<Q, ApiError> {
        parse(&TestRequest::with_uri(uri).to_http_request())
    }

    fn code(r: Result<Q, ApiError>) -> &'static str {
        match r {
            Err(ApiError::BadRequest { code, .. }) => code,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn repeats_are_refused_even_of_unknown_parameters() {
        assert_eq!(code(parse_uri("/x?adId=a&adId=b")), "invalid_query");
        assert_eq!(code(parse_uri("/x?limit=1&limit=1")), "invalid_query");
        assert_eq!(code(parse_uri("/x?other=1&other=2")), "invalid_query");
    }

    #[test]
    fn camel_case_wins_over_snake_case_and_unknowns_are_ignored() {
        let q = parse_uri("/x?ad_id=s&adId=c&limit=&other=1").unwrap();
        assert_eq!(either(&q.inner.ad_id, &q.inner.ad_id_snake), Some("c"));
        assert_eq!(q.limit.as_deref(), Some(""));
        let q = parse_uri("/x?ad_id=s").unwrap();
        assert_eq!(either(&q.inner.ad_id, &q.inner.ad_id_snake), Some("s"));
        let q = parse_uri("/x").unwrap();
        assert_eq!(either(&q.inner.ad_id, &q.inner.ad_id_snake), None);
    }
}
