//! Bookinfo's `reviews` service in its three versions: v1 without ratings,
//! v2 with black stars, v3 with red stars (v2/v3 call `ratings`).
//!
//! The versions are what Istio's traffic-shifting and request-routing tasks
//! tell apart, so each response names its version (`"version"`, `"podname"`).
//! A ratings failure must degrade to the per-review error text, never to an
//! error response.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderMap, Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use thiserror::Error;

use crate::client::Outbound;
use crate::forward::outbound_headers;
use crate::server::{App, Resp, json, method_not_allowed, not_found};
use crate::util::product_id;

/// How long reviews waits for ratings (Bookinfo's reviews uses 10 s).
pub const RATINGS_TIMEOUT: Duration = Duration::from_secs(10);

/// Text of each review's rating when ratings cannot be had.
pub const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";

const REVIEWS: [(&str, &str); 2] = [
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
    ),
];

/// Which reviews version this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// No ratings.
    V1,
    /// Black stars.
    V2,
    /// Red stars.
    V3,
}

/// `--version` was not `v1`, `v2` or `v3`.
#[derive(Debug, Error)]
#[error("unknown reviews version {0:?}: expected v1, v2 or v3")]
pub struct BadVersion(String);

impl FromStr for Version {
    type Err = BadVersion;

    fn from_str(s: &str) -> Result<Self, BadVersion> {
        match s {
            "v1" | "1" => Ok(Version::V1),
            "v2" | "2" => Ok(Version::V2),
            "v3" | "3" => Ok(Version::V3),
            other => Err(BadVersion(other.to_owned())),
        }
    }
}

impl Version {
    /// `v1`, `v2` or `v3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
            Version::V3 => "v3",
        }
    }

    /// The star color, or `None` when this version shows no ratings.
    pub fn star_color(self) -> Option<&'static str> {
        match self {
            Version::V1 => None,
            Version::V2 => Some("black"),
            Version::V3 => Some("red"),
        }
    }
}

/// The reviews service.
#[derive(Debug)]
pub struct Reviews {
    version: Version,
    out: Outbound,
    ratings_base: String,
}

impl Reviews {
    /// A reviews service of `version` that reaches ratings at `ratings_base`
    /// (`http://ratings:9080`) through `out`.
    pub fn new(version: Version, out: Outbound, ratings_base: String) -> Self {
        Reviews {
            version,
            out,
            ratings_base,
        }
    }

    /// Stars per reviewer, `None` for each when ratings failed.
    async fn fetch_ratings(&self, id: i64, headers: HeaderMap) -> [Option<i64>; 2] {
        let url = format!("{}/ratings/{id}", self.ratings_base);
        match self.out.get(&url, headers, RATINGS_TIMEOUT).await {
            Ok(r) if r.status == StatusCode::OK => match serde_json::from_slice::<Value>(&r.body) {
                Ok(v) => REVIEWS.map(|(who, _)| v["ratings"][who].as_i64()),
                Err(_) => [None, None],
            },
            Ok(_) | Err(_) => [None, None],
        }
    }
}

/// The reviews JSON for `id` as served by `version`; `stars` holds each
/// reviewer's rating (`None` = ratings failed) and is ignored for v1.
pub fn body(id: i64, version: Version, stars: [Option<i64>; 2]) -> Value {
    let reviews: Vec<Value> = REVIEWS
        .iter()
        .zip(stars)
        .map(|((reviewer, text), stars)| {
            let mut r = json!({"reviewer": reviewer, "text": text});
            if let Some(color) = version.star_color() {
                r["rating"] = match stars {
                    Some(s) => json!({"stars": s, "color": color}),
                    None => json!({"error": RATINGS_UNAVAILABLE}),
                };
            }
            r
        })
        .collect();
    json!({
        "id": id.to_string(),
        "podname": format!("reviews-{}", version.as_str()),
        "clustername": "null",
        "version": version.as_str(),
        "reviews": reviews,
    })
}

impl App for Reviews {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Resp {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return method_not_allowed();
        }
        let path = req.uri().path();
        if path == "/health" {
            return json(StatusCode::OK, &json!({"status": "Reviews is healthy"}));
        }
        let Some(id) = path.strip_prefix("/reviews/").and_then(product_id) else {
            return not_found();
        };
        let stars = if self.version.star_color().is_some() {
            self.fetch_ratings(id, outbound_headers(req.headers(), None))
                .await
        } else {
            [None, None]
        };
        json(StatusCode::OK, &body(id, self.version, stars))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!("v1".parse::<Version>().ok(), Some(Version::V1));
        assert_eq!("v3".parse::<Version>().ok(), Some(Version::V3));
        assert!("v4".parse::<Version>().is_err());
        assert_eq!(Version::V2.star_color(), Some("black"));
        assert_eq!(Version::V3.star_color(), Some("red"));
        assert_eq!(Version::V1.star_color(), None);
    }

    #[test]
    fn bodies() {
        let v1 = body(0, Version::V1, [Some(5), Some(4)]);
        assert_eq!(v1["version"], "v1");
        assert_eq!(v1["podname"], "reviews-v1");
        assert_eq!(v1["id"], "0");
        assert!(v1["reviews"][0].get("rating").is_none());
        assert_eq!(v1["reviews"][1]["reviewer"], "Reviewer2");

        let v2 = body(3, Version::V2, [Some(5), Some(4)]);
        assert_eq!(
            v2["reviews"][0]["rating"],
            json!({"stars": 5, "color": "black"})
        );
        assert_eq!(
            v2["reviews"][1]["rating"],
            json!({"stars": 4, "color": "black"})
        );

        let v3 = body(0, Version::V3, [None, Some(1)]);
        assert_eq!(
            v3["reviews"][0]["rating"],
            json!({"error": RATINGS_UNAVAILABLE})
        );
        assert_eq!(v3["reviews"][1]["rating"]["color"], "red");
    }
}
