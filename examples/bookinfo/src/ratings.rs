//! Bookinfo's `ratings` service: fixed star ratings per reviewer as JSON.
//!
//! The leaf of the productpage → reviews → ratings chain (the target of
//! Istio's fault-injection tasks). It makes no outbound calls and keeps no
//! state.

use std::net::SocketAddr;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::server::{App, Resp, json, method_not_allowed, not_found};
use crate::util::product_id;

/// The ratings service.
#[derive(Debug, Default, Clone)]
pub struct Ratings;

/// The JSON Bookinfo's ratings service returns for product `id`.
pub fn ratings(id: i64) -> serde_json::Value {
    json!({"id": id, "ratings": {"Reviewer1": 5, "Reviewer2": 4}})
}

impl App for Ratings {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Resp {
        route(req.method(), req.uri().path())
    }
}

fn route(method: &Method, path: &str) -> Resp {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed();
    }
    if path == "/health" {
        return json(StatusCode::OK, &json!({"status": "Ratings is healthy"}));
    }
    match path.strip_prefix("/ratings/") {
        Some(id) => match product_id(id) {
            Some(id) => json(StatusCode::OK, &ratings(id)),
            None => json(
                StatusCode::BAD_REQUEST,
                &json!({"error": "please provide numeric product ID"}),
            ),
        },
        None => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn routes() {
        let r = route(&Method::GET, "/ratings/0");
        assert_eq!(r.status(), StatusCode::OK);
        let b = r.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(
            v,
            json!({"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}})
        );
        assert_eq!(
            route(&Method::GET, "/ratings/abc").status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            route(&Method::GET, "/rating/0").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            route(&Method::DELETE, "/ratings/0").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(route(&Method::GET, "/health").status(), StatusCode::OK);
    }
}
