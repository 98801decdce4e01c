//! The client address of a request: what the rate limits charge and what an
//! event's `ipAddress` defaults to. Only the HTTP edge reads requests; below
//! it the client is an `IpAddr`.

use std::net::{IpAddr, SocketAddr};

use actix_web::http::header::HeaderMap;
use actix_web::HttpRequest;

/// What the helpers that read a request see of it: actix-web's
/// `HttpRequest` in the app's handlers, actix-http's `Request` on the
/// ingest fast path (`super::front`), so both read a request the same way.
pub(crate) trait Incoming {
    fn headers(&self) -> &HeaderMap;
    fn peer_addr(&self) -> Option<SocketAddr>;
    fn path(&self) -> &str;
    fn query_string(&self) -> &str;
}

impl Incoming for HttpRequest {
    fn headers(&self) -> &HeaderMap {
        HttpRequest::headers(self)
    }
    fn peer_addr(&self) -> Option<SocketAddr> {
        HttpRequest::peer_addr(self)
    }
    fn path(&self) -> &str {
        HttpRequest::path(self)
    }
    fn query_string(&self) -> &str {
        HttpRequest::query_string(self)
    }
}

impl Incoming for actix_http::Request {
    fn headers(&self) -> &HeaderMap {
        &self.head().headers
    }
    fn peer_addr(&self) -> Option<SocketAddr> {
        actix_http::Request::peer_addr(self)
    }
    fn path(&self) -> &str {
        actix_http::Request::path(self)
    }
    fn query_string(&self) -> &str {
        self.uri().query().unwrap_or_default()
    }
}

/// The client of a request: the TCP peer, or, when the peer is one of
/// `trusted` proxies, the nearest address in `X-Forwarded-For` that is not
/// (read right to left, as each proxy appends the address it saw).
pub fn client_ip<R: Incoming + ?Sized>(req: &R, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr().map(|a| a.ip())?;
    if !is_trusted(peer, trusted) {
        return Some(peer);
    }
    let mut client = peer;
    // Several headers are one list, in order; an unreadable or malformed
    // list is not believed at all.
    let hops: Vec<IpAddr> = req
        .headers()
        .get_all("x-forwarded-for")
        .map(|v| v.to_str().map_err(|_| ()))
        .collect::<Result<Vec<&str>, ()>>()
        .and_then(|values| {
            values
                .iter()
                .flat_map(|v| v.split(','))
                .map(|hop| hop.trim().parse::<IpAddr>().map_err(|_| ()))
                .collect()
        })
        .unwrap_or_default();
    for hop in hops.into_iter().rev() {
        client = hop;
        if !is_trusted(hop, trusted) {
            break;
        }
    }
    Some(client)
}

pub(super) fn is_trusted(ip: IpAddr, trusted: &[ipnet::IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    trusted.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn request(peer: &str, forwarded: &[&str]) -> HttpRequest {
        let mut req = TestRequest::default().peer_addr(peer.parse().unwrap());
        for f in forwarded {
            req = req.append_header(("X-Forwarded-For", *f));
        }
        req.to_http_request()
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // Not behind a trusted proxy: the header is the client's own claim.
        assert_eq!(
            client_ip(&request("198.51.100.7:5000", &["203.0.113.5"]), &trusted),
            ip("198.51.100.7")
        );
        // Behind one: the nearest untrusted hop, read from the right.
        assert_eq!(
            client_ip(
                &request("10.1.1.1:5000", &["1.1.1.1, 203.0.113.5, 10.2.2.2"]),
                &trusted
            ),
            ip("203.0.113.5")
        );
        // Several headers are one list.
        assert_eq!(
            client_ip(
                &request("10.1.1.1:5000", &["1.1.1.1", "203.0.113.6"]),
                &trusted
            ),
            ip("203.0.113.6")
        );
        // Only trusted hops: the farthest one.
        assert_eq!(
            client_ip(&request("10.1.1.1:5000", &["10.3.3.3"]), &trusted),
            ip("10.3.3.3")
        );
        // A malformed list is not believed.
        assert_eq!(
            client_ip(&request("10.1.1.1:5000", &["203.0.113.5, bogus"]), &trusted),
            ip("10.1.1.1")
        );
        // No trusted proxies configured: the peer, always.
        assert_eq!(
            client_ip(&request("10.1.1.1:5000", &["203.0.113.5"]), &[]),
            ip("10.1.1.1")
        );
    }
}
