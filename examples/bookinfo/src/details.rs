//! Bookinfo's `details` service: static book metadata as JSON.
//!
//! Exists so productpage has a second upstream that is independent of the
//! reviews → ratings chain. It makes no outbound calls and keeps no state.

use std::net::SocketAddr;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::server::{App, Resp, json, method_not_allowed, not_found};
use crate::util::product_id;

/// The details service.
#[derive(Debug, Default, Clone)]
pub struct Details;

/// The JSON Bookinfo's details service returns for product `id`.
pub fn book(id: i64) -> serde_json::Value {
    json!({
        "id": id,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890"
    })
}

impl App for Details {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Resp {
        route(req.method(), req.uri().path())
    }
}

fn route(method: &Method, path: &str) -> Resp {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed();
    }
    if path == "/health" {
        return json(StatusCode::OK, &json!({"status": "Details is healthy"}));
    }
    match path.strip_prefix("/details/") {
        Some(id) => match product_id(id) {
            Some(id) => json(StatusCode::OK, &book(id)),
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

    async fn body(r: Resp) -> serde_json::Value {
        let b = r.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice(&b).expect("json")
    }

    #[tokio::test]
    async fn routes() {
        let r = route(&Method::GET, "/details/7");
        assert_eq!(r.status(), StatusCode::OK);
        let v = body(r).await;
        assert_eq!(v["id"], 7);
        assert_eq!(v["ISBN-13"], "123-1234567890");
        assert_eq!(v["type"], "paperback");
        assert_eq!(
            route(&Method::GET, "/details/x").status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            route(&Method::GET, "/details/").status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            route(&Method::GET, "/other").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            route(&Method::POST, "/details/0").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(route(&Method::GET, "/health").status(), StatusCode::OK);
    }
}
