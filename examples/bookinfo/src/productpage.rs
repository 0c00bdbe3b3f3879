//! Bookinfo's `productpage`: the HTML front end that calls `details` and
//! `reviews`, plus its JSON API and the toy login that sets the `end-user`
//! Istio routes on.
//!
//! Like the original it always answers 200 for the page and shows a "Sorry,
//! … unavailable" text for a failed upstream, so fault-injection tasks see
//! the same page. It must never let user-controlled text reach HTML
//! unescaped or reach a header unvalidated.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{COOKIE, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::client::Outbound;
use crate::forward::{END_USER, outbound_headers};
use crate::server::{App, Resp, json, method_not_allowed, not_found, respond};
use crate::util::{
    cookie, escape, escape_into, form_value, product_id, push_fmt, repeat_into, valid_user,
};

/// Per-attempt timeout of every upstream call (Bookinfo's productpage: 3 s).
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Bookinfo's productpage tries reviews twice before giving up.
pub const REVIEWS_ATTEMPTS: usize = 2;

/// Shown instead of the details when `details` fails.
pub const DETAILS_UNAVAILABLE: &str =
    "Sorry, product details are currently unavailable for this book.";
/// Shown instead of the reviews when `reviews` fails.
pub const REVIEWS_UNAVAILABLE: &str =
    "Sorry, product reviews are currently unavailable for this book.";
/// Returned by the ratings API when `ratings` fails.
pub const RATINGS_UNAVAILABLE: &str =
    "Sorry, product ratings are currently unavailable for this book.";

const TITLE: &str = "The Comedy of Errors";
const DESCRIPTION_HTML: &str = "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest and one of his most farcical comedies, with a major part of the humour coming from slapstick and mistaken identity, in addition to puns and word play.";
const MAX_FORM: usize = 16 * 1024;

/// The productpage service.
#[derive(Debug)]
pub struct ProductPage {
    out: Outbound,
    details: String,
    reviews: String,
    ratings: String,
}

/// An upstream's JSON on success, its status (or 500 when it never answered) otherwise.
type Upstream = Result<Value, StatusCode>;

impl ProductPage {
    /// A productpage calling the given service bases (`http://details:9080`, …).
    pub fn new(out: Outbound, details: String, reviews: String, ratings: String) -> Self {
        ProductPage {
            out,
            details,
            reviews,
            ratings,
        }
    }

    async fn fetch(&self, url: &str, headers: HeaderMap) -> Upstream {
        match self.out.get(url, headers, UPSTREAM_TIMEOUT).await {
            Ok(r) if r.status == StatusCode::OK => {
                serde_json::from_slice(&r.body).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
            }
            Ok(r) => Err(r.status),
            Err(_) => Err(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    async fn details(&self, id: i64, headers: HeaderMap) -> Upstream {
        self.fetch(&format!("{}/details/{id}", self.details), headers)
            .await
    }

    async fn reviews(&self, id: i64, headers: HeaderMap) -> Upstream {
        let url = format!("{}/reviews/{id}", self.reviews);
        let mut last = Err(StatusCode::INTERNAL_SERVER_ERROR);
        for _ in 0..REVIEWS_ATTEMPTS {
            last = self.fetch(&url, headers.clone()).await;
            if last.is_ok() {
                break;
            }
        }
        last
    }

    async fn ratings(&self, id: i64, headers: HeaderMap) -> Upstream {
        self.fetch(&format!("{}/ratings/{id}", self.ratings), headers)
            .await
    }

    async fn page(&self, headers: &HeaderMap) -> Resp {
        let user = user(headers);
        let out = outbound_headers(headers, user.as_ref());
        let (details, reviews) = tokio::join!(self.details(0, out.clone()), self.reviews(0, out));
        let user = user.as_ref().and_then(|u| u.to_str().ok());
        respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            render_page(user, details.as_ref().ok(), reviews.as_ref().ok()),
        )
    }

    /// `/api/v1/products/{id}[/reviews|/ratings]`.
    async fn api(&self, rest: &str, headers: &HeaderMap) -> Resp {
        let (id, what) = rest.split_once('/').unwrap_or((rest, ""));
        let Some(id) = product_id(id) else {
            return json(
                StatusCode::BAD_REQUEST,
                &json!({"error": "please provide numeric product ID"}),
            );
        };
        let out = outbound_headers(headers, user(headers).as_ref());
        let (res, sorry) = match what {
            "" => (self.details(id, out).await, DETAILS_UNAVAILABLE),
            "reviews" => (self.reviews(id, out).await, REVIEWS_UNAVAILABLE),
            "ratings" => (self.ratings(id, out).await, RATINGS_UNAVAILABLE),
            _ => return not_found(),
        };
        match res {
            Ok(v) => json(StatusCode::OK, &v),
            Err(status) => json(status, &json!({"error": sorry})),
        }
    }
}

impl App for ProductPage {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Resp {
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        match req.uri().path() {
            "/" | "/index.html" if get => {
                respond(StatusCode::OK, "text/html; charset=utf-8", INDEX)
            }
            "/health" if get => respond(StatusCode::OK, "text/plain", "Product page is healthy"),
            "/productpage" if get => self.page(req.headers()).await,
            "/login" if req.method() == Method::POST => login(req).await,
            "/logout" if get => redirect_with_cookie("session=; Path=/; Max-Age=0; HttpOnly"),
            "/api/v1/products" if get => json(
                StatusCode::OK,
                &json!([{"id": 0, "title": TITLE, "descriptionHtml": DESCRIPTION_HTML}]),
            ),
            p if p.starts_with("/api/v1/products/") => {
                if get {
                    self.api(&p["/api/v1/products/".len()..], req.headers())
                        .await
                } else {
                    method_not_allowed()
                }
            }
            "/" | "/index.html" | "/health" | "/productpage" | "/login" | "/logout"
            | "/api/v1/products" => method_not_allowed(),
            _ => not_found(),
        }
    }
}

/// The signed-in user: the `session` cookie, else an incoming `end-user` header.
fn user(headers: &HeaderMap) -> Option<HeaderValue> {
    if let Some(u) = cookie(headers.get_all(COOKIE), "session").filter(|u| valid_user(u)) {
        return HeaderValue::from_str(u).ok();
    }
    headers
        .get(END_USER)
        .filter(|v| v.to_str().is_ok_and(valid_user))
        .cloned()
}

async fn login(req: Request<Incoming>) -> Resp {
    let body = match Limited::new(req.into_body(), MAX_FORM).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                "form too large\n",
            );
        }
    };
    let form = String::from_utf8_lossy(&body);
    match form_value(&form, "username").filter(|u| valid_user(u)) {
        Some(u) => redirect_with_cookie(&format!("session={u}; Path=/; HttpOnly; SameSite=Lax")),
        None => redirect_with_cookie(""),
    }
}

/// 302 to `/productpage`, setting `cookie` when non-empty.
fn redirect_with_cookie(cookie: &str) -> Resp {
    let mut r = respond(StatusCode::FOUND, "text/plain", Bytes::new());
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_static("/productpage"));
    if !cookie.is_empty()
        && let Ok(v) = HeaderValue::from_str(cookie)
    {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

const INDEX: &str = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Simple Bookstore App</title></head>\n<body><h3>Hello! This is a simple bookstore application consisting of three services as shown below</h3>\n<p>productpage &rarr; details, reviews (v1, v2, v3) &rarr; ratings</p>\n<p><a href=\"/productpage\">Go to the product page</a> &middot; <a href=\"/api/v1/products\">API</a></p>\n</body></html>\n";

const STYLE: &str = "body{font-family:sans-serif;margin:0}nav{background:#222;color:#ddd;padding:8px 24px;display:flex;justify-content:space-between;align-items:center}nav a{color:#fff}main{padding:16px 32px}.row{display:flex;gap:48px;flex-wrap:wrap}.col{flex:1;min-width:280px}blockquote{border-left:4px solid #ddd;margin:12px 0;padding:4px 12px}.glyphicon{font-size:20px}dt{font-weight:bold}";

/// Renders the product page. `details`/`reviews` are `None` when that
/// upstream failed.
pub fn render_page(user: Option<&str>, details: Option<&Value>, reviews: Option<&Value>) -> String {
    let mut h = String::with_capacity(4096);
    h.push_str("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Simple Bookstore App</title><style>");
    h.push_str(STYLE);
    h.push_str("</style></head>\n<body>\n<nav><a href=\"/\">BookInfo Sample</a>");
    match user {
        Some(u) => {
            h.push_str("<span>Signed in as <b id=\"user\">");
            escape_into(&mut h, u);
            h.push_str("</b> <a href=\"/logout\">sign out</a></span>");
        }
        None => h.push_str(
            "<form method=\"post\" action=\"/login\"><input name=\"username\" placeholder=\"User Name\"> \
             <input type=\"password\" name=\"passwd\" placeholder=\"Password\"> <button type=\"submit\">Sign in</button></form>",
        ),
    }
    h.push_str("</nav>\n<main>\n<h3>");
    h.push_str(TITLE);
    h.push_str("</h3>\n<p>Summary: ");
    h.push_str(DESCRIPTION_HTML);
    h.push_str("</p>\n<div class=\"row\">\n<div class=\"col\" id=\"details\">\n");
    render_details(&mut h, details);
    h.push_str("</div>\n<div class=\"col\" id=\"reviews\">\n");
    render_reviews(&mut h, reviews);
    h.push_str("</div>\n</div>\n</main>\n</body></html>\n");
    h
}

/// A JSON scalar as page text (strings unquoted, escaped).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => escape(s),
        Value::Null => String::new(),
        other => escape(&other.to_string()),
    }
}

fn render_details(h: &mut String, details: Option<&Value>) {
    let Some(d) = details else {
        h.push_str("<h4>Error fetching product details!</h4>\n<p>");
        h.push_str(DETAILS_UNAVAILABLE);
        h.push_str("</p>\n");
        return;
    };
    h.push_str("<h4>Book Details</h4>\n<dl>\n");
    for (label, key) in [
        ("Type", "type"),
        ("Pages", "pages"),
        ("Publisher", "publisher"),
        ("Language", "language"),
        ("ISBN-10", "ISBN-10"),
        ("ISBN-13", "ISBN-13"),
    ] {
        push_fmt(
            h,
            format_args!("<dt>{label}:</dt><dd>{}</dd>\n", text(&d[key])),
        );
    }
    h.push_str("</dl>\n");
}

fn render_reviews(h: &mut String, reviews: Option<&Value>) {
    let Some(r) = reviews else {
        h.push_str("<h4>Error fetching product reviews!</h4>\n<p>");
        h.push_str(REVIEWS_UNAVAILABLE);
        h.push_str("</p>\n");
        return;
    };
    h.push_str("<h4>Book Reviews</h4>\n");
    for review in r["reviews"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        push_fmt(
            h,
            format_args!(
                "<blockquote>\n<p>{}</p>\n<small>{}</small>\n",
                text(&review["text"]),
                text(&review["reviewer"])
            ),
        );
        let rating = &review["rating"];
        if let Some(stars) = rating["stars"].as_i64() {
            let stars = usize::try_from(stars.clamp(0, 5)).unwrap_or(0);
            push_fmt(
                h,
                format_args!("<font color=\"{}\">", text(&rating["color"])),
            );
            repeat_into(
                h,
                "<span class=\"glyphicon glyphicon-star\">&#9733;</span>",
                stars,
            );
            repeat_into(
                h,
                "<span class=\"glyphicon glyphicon-star-empty\">&#9734;</span>",
                5 - stars,
            );
            h.push_str("</font>\n");
        } else if !rating["error"].is_null() {
            push_fmt(
                h,
                format_args!("<p><i>{}</i></p>\n", text(&rating["error"])),
            );
        }
        h.push_str("</blockquote>\n");
    }
    let served_by = match r["version"].as_str() {
        Some(v) => escape(&format!("reviews-{v}")),
        None => text(&r["podname"]),
    };
    push_fmt(
        h,
        format_args!(
            "<dl>\n<dt>Reviews served by:</dt>\n<dd><u id=\"served-by\">{served_by}</u></dd>\n</dl>\n"
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reviews::{self, Version};

    #[test]
    fn renders_v2_black_stars_and_user() {
        let d = crate::details::book(0);
        let r = reviews::body(0, Version::V2, [Some(5), Some(4)]);
        let page = render_page(Some("jason"), Some(&d), Some(&r));
        assert!(page.contains("reviews-v2"), "{page}");
        assert!(page.contains("<font color=\"black\">"));
        assert_eq!(page.matches("glyphicon-star\"").count(), 9);
        assert_eq!(page.matches("glyphicon-star-empty\"").count(), 1);
        assert!(page.contains("<b id=\"user\">jason</b>"));
        assert!(page.contains("<dd>paperback</dd>"));
        assert!(page.contains("<dd>123-1234567890</dd>"));
        assert!(page.contains("An extremely entertaining play by Shakespeare."));
        assert!(!page.contains("Sorry"));
    }

    #[test]
    fn renders_v3_red_v1_none_and_errors() {
        let r3 = reviews::body(0, Version::V3, [Some(1), None]);
        let page = render_page(None, None, Some(&r3));
        assert!(page.contains("reviews-v3"));
        assert!(page.contains("<font color=\"red\">"));
        assert!(page.contains("<p><i>Ratings service is currently unavailable</i></p>"));
        assert!(page.contains(DETAILS_UNAVAILABLE));
        assert!(page.contains("action=\"/login\""));

        let r1 = reviews::body(0, Version::V1, [Some(5), Some(4)]);
        let page = render_page(None, None, Some(&r1));
        assert!(page.contains("reviews-v1"));
        assert!(!page.contains("<font"));

        let page = render_page(None, None, None);
        assert!(page.contains(REVIEWS_UNAVAILABLE));
    }

    #[test]
    fn escapes_upstream_text() {
        let r = json!({"podname": "<script>", "reviews": [{"reviewer": "<b>x</b>", "text": "a&b",
            "rating": {"stars": 99, "color": "\"><script>"}}]});
        let page = render_page(Some("x"), None, Some(&r));
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;b&gt;x&lt;/b&gt;"));
        assert_eq!(page.matches("glyphicon-star\"").count(), 5);
        // Garbage shapes do not panic.
        let _ = render_page(None, Some(&json!(42)), Some(&json!({"reviews": "nope"})));
    }

    #[test]
    fn user_from_cookie_or_header() {
        let mut h = HeaderMap::new();
        assert!(user(&h).is_none());
        h.insert(END_USER, HeaderValue::from_static("bob"));
        assert_eq!(user(&h), Some(HeaderValue::from_static("bob")));
        h.insert(COOKIE, HeaderValue::from_static("x=1; session=jason"));
        assert_eq!(user(&h), Some(HeaderValue::from_static("jason")));
        h.insert(COOKIE, HeaderValue::from_static("session=<bad>"));
        assert_eq!(user(&h), Some(HeaderValue::from_static("bob")));
    }

    #[test]
    fn redirects() {
        let r = redirect_with_cookie("session=jason; Path=/");
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()[LOCATION], "/productpage");
        assert_eq!(r.headers()[SET_COOKIE], "session=jason; Path=/");
        assert!(redirect_with_cookie("").headers().get(SET_COOKIE).is_none());
    }
}
