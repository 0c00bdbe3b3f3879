//! End-to-end tests of the `bookinfo` binary: each service started as a real
//! process on 127.0.0.1, wired together with `WEFT_SERVICE_<NAME>_ADDR` (or
//! through a fake sidecar via `HTTP_PROXY`).

mod support;

use support::{Fake, Svc, dead_addr, get, request};

#[test]
fn details_and_ratings_json() {
    let details = Svc::start(&["details"], &[]);
    let r = get(details.addr, "/details/0", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["id"], 0);
    assert_eq!(v["author"], "William Shakespeare");
    assert_eq!(v["year"], 1595);
    assert_eq!(v["type"], "paperback");
    assert_eq!(v["pages"], 200);
    assert_eq!(v["publisher"], "PublisherA");
    assert_eq!(v["language"], "English");
    assert_eq!(v["ISBN-10"], "1234567890");
    assert_eq!(v["ISBN-13"], "123-1234567890");
    assert_eq!(get(details.addr, "/details/abc", &[]).status, 400);
    assert_eq!(get(details.addr, "/health", &[]).status, 200);

    let ratings = Svc::start(&["ratings"], &[]);
    let r = get(ratings.addr, "/ratings/0", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}})
    );
    assert_eq!(get(ratings.addr, "/health", &[]).status, 200);
    assert!(ratings.logged("\"GET /ratings/0 HTTP/1.1\" 200"));
}

#[test]
fn reviews_versions() {
    let ratings = Svc::start(&["ratings"], &[]);
    let ratings_url = ratings.url();
    let wire: &[(&str, &str)] = &[("WEFT_SERVICE_RATINGS_ADDR", &ratings_url)];

    let v1 = Svc::start(&["reviews", "--version", "v1"], wire);
    let r = get(v1.addr, "/reviews/0", &[]).json();
    assert_eq!(r["version"], "v1");
    assert_eq!(r["podname"], "reviews-v1");
    assert_eq!(r["reviews"][0]["reviewer"], "Reviewer1");
    assert_eq!(
        r["reviews"][0]["text"],
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"
    );
    assert!(r["reviews"][0].get("rating").is_none());

    let v2 = Svc::start(&["reviews", "--version", "v2"], wire);
    let r = get(v2.addr, "/reviews/0", &[]).json();
    assert_eq!(r["version"], "v2");
    assert_eq!(
        r["reviews"][0]["rating"],
        serde_json::json!({"stars": 5, "color": "black"})
    );
    assert_eq!(
        r["reviews"][1]["rating"],
        serde_json::json!({"stars": 4, "color": "black"})
    );

    let v3 = Svc::start(&["reviews", "--version", "v3"], wire);
    let r = get(v3.addr, "/reviews/0", &[]).json();
    assert_eq!(r["podname"], "reviews-v3");
    assert_eq!(r["reviews"][1]["rating"]["color"], "red");

    // Ratings down: each review carries the error, the response is still 200.
    let lonely = Svc::start(
        &["reviews", "--version", "v2"],
        &[("WEFT_SERVICE_RATINGS_ADDR", &dead_addr())],
    );
    let r = get(lonely.addr, "/reviews/0", &[]);
    assert_eq!(r.status, 200);
    let r = r.json();
    for i in 0..2 {
        assert_eq!(
            r["reviews"][i]["rating"],
            serde_json::json!({"error": "Ratings service is currently unavailable"})
        );
    }
    assert_eq!(get(lonely.addr, "/reviews/x", &[]).status, 404);
}

#[test]
fn productpage_against_real_services() {
    let details = Svc::start(&["details"], &[]);
    let ratings = Svc::start(&["ratings"], &[]);
    let reviews = Svc::start(
        &["reviews", "--version", "v2"],
        &[("WEFT_SERVICE_RATINGS_ADDR", &ratings.url())],
    );
    let pp = Svc::start(
        &["productpage"],
        &[
            ("WEFT_SERVICE_DETAILS_ADDR", &details.url()),
            ("WEFT_SERVICE_REVIEWS_ADDR", &reviews.url()),
            ("WEFT_SERVICE_RATINGS_ADDR", &ratings.url()),
        ],
    );
    let r = get(pp.addr, "/productpage", &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
    );
    let page = &r.body;
    assert!(page.contains("The Comedy of Errors"));
    assert!(page.contains("reviews-v2"), "{page}");
    assert!(page.contains("<font color=\"black\">"), "{page}");
    assert_eq!(
        page.matches("glyphicon glyphicon-star\"").count(),
        9,
        "{page}"
    );
    assert!(page.contains("<dd>paperback</dd>"));
    assert!(page.contains("<dd>1234567890</dd>"));
    assert!(!page.contains("Sorry"));
    assert!(
        page.contains("action=\"/login\""),
        "anonymous page offers a sign-in form"
    );

    let idx = get(pp.addr, "/", &[]);
    assert_eq!(idx.status, 200);
    assert!(idx.body.contains("href=\"/productpage\""));
    assert_eq!(get(pp.addr, "/health", &[]).status, 200);
    let products = get(pp.addr, "/api/v1/products", &[]).json();
    assert_eq!(products[0]["title"], "The Comedy of Errors");
    assert_eq!(
        get(pp.addr, "/api/v1/products/0", &[]).json()["ISBN-10"],
        "1234567890"
    );
    assert_eq!(
        get(pp.addr, "/api/v1/products/0/reviews", &[]).json()["version"],
        "v2"
    );
    assert_eq!(
        get(pp.addr, "/api/v1/products/0/ratings", &[]).json()["ratings"]["Reviewer2"],
        4
    );
    assert_eq!(get(pp.addr, "/api/v1/products/x", &[]).status, 400);
    assert_eq!(get(pp.addr, "/nope", &[]).status, 404);
    assert!(pp.logged("\"GET /productpage HTTP/1.1\" 200"));
}

fn reviews_v2_json(_head: &str) -> (u16, String) {
    (
        200,
        r#"{"id":"0","podname":"reviews-v2","clustername":"null","version":"v2","reviews":[{"reviewer":"Reviewer1","text":"t1","rating":{"stars":5,"color":"black"}},{"reviewer":"Reviewer2","text":"t2","rating":{"stars":4,"color":"black"}}]}"#
            .to_owned(),
    )
}

#[test]
fn login_forwards_end_user_and_trace_headers() {
    let reviews = Fake::start(reviews_v2_json);
    let pp = Svc::start(
        &["productpage"],
        &[
            ("WEFT_SERVICE_REVIEWS_ADDR", &reviews.addr.to_string()),
            ("WEFT_SERVICE_DETAILS_ADDR", &dead_addr()),
        ],
    );
    let login = request(
        pp.addr,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "username=jason&passwd=x",
    );
    assert_eq!(login.status, 302, "{login:?}");
    assert_eq!(login.header("location").as_deref(), Some("/productpage"));
    let cookie = login.header("set-cookie").expect("set-cookie");
    assert!(cookie.starts_with("session=jason"), "{cookie}");
    let session = cookie.split(';').next().unwrap_or_default().to_owned();

    let r = get(
        pp.addr,
        "/productpage",
        &[
            ("Cookie", &session),
            ("x-request-id", "req-42"),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            (
                "traceparent",
                "00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01",
            ),
            ("User-Agent", "bookinfo-test"),
            ("authorization", "Bearer secret"),
        ],
    );
    assert_eq!(r.status, 200);
    assert!(r.body.contains("jason"), "{}", r.body);
    assert!(r.body.contains("reviews-v2"));
    assert!(
        r.body
            .contains("Sorry, product details are currently unavailable for this book.")
    );
    let heads = reviews.heads();
    let head = heads
        .last()
        .expect("reviews was called")
        .to_ascii_lowercase();
    assert!(head.starts_with("get /reviews/0 http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nend-user: jason\r\n"), "{head}");
    assert!(head.contains("\r\nx-request-id: req-42\r\n"), "{head}");
    assert!(
        head.contains("\r\nx-b3-traceid: 80f198ee56343ba864fe8b2a57d3eff7\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\ntraceparent: 00-80f198ee"), "{head}");
    assert!(head.contains("\r\nuser-agent: bookinfo-test\r\n"), "{head}");
    assert!(!head.contains("\r\ncookie:"), "{head}");
    assert!(!head.contains("\r\nauthorization:"), "{head}");

    // An incoming end-user header (no session) is forwarded as well.
    let before = reviews.heads().len();
    get(pp.addr, "/productpage", &[("end-user", "bob")]);
    let heads = reviews.heads();
    assert!(heads.len() > before);
    assert!(
        heads[before..]
            .iter()
            .all(|h| h.to_ascii_lowercase().contains("\r\nend-user: bob\r\n"))
    );

    let out = get(pp.addr, "/logout", &[("Cookie", &session)]);
    assert_eq!(out.status, 302);
    assert!(
        out.header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0"))
    );
    let anon = get(pp.addr, "/productpage", &[]);
    assert!(!anon.body.contains("Signed in as"));
}

#[test]
fn upstream_failures_show_unavailable_texts() {
    let details = Svc::start(&["details"], &[]);
    let pp = Svc::start(
        &["productpage"],
        &[
            ("WEFT_SERVICE_DETAILS_ADDR", &details.url()),
            ("WEFT_SERVICE_REVIEWS_ADDR", &dead_addr()),
        ],
    );
    let r = get(pp.addr, "/productpage", &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.body
            .contains("Sorry, product reviews are currently unavailable for this book.")
    );
    assert!(r.body.contains("<dd>paperback</dd>"));
    assert_eq!(get(pp.addr, "/api/v1/products/0/reviews", &[]).status, 500);

    // Non-2xx from reviews counts as a failure too.
    let broken = Fake::start(|_| (503, "{}".to_owned()));
    let pp = Svc::start(
        &["productpage"],
        &[
            ("WEFT_SERVICE_DETAILS_ADDR", &broken.addr.to_string()),
            ("WEFT_SERVICE_REVIEWS_ADDR", &broken.addr.to_string()),
        ],
    );
    let r = get(pp.addr, "/productpage", &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.body
            .contains("Sorry, product reviews are currently unavailable for this book.")
    );
    assert!(
        r.body
            .contains("Sorry, product details are currently unavailable for this book.")
    );
    assert_eq!(get(pp.addr, "/api/v1/products/0", &[]).status, 503);
    // Bookinfo tries reviews twice.
    let reviews_calls = broken
        .heads()
        .iter()
        .filter(|h| h.contains("/reviews/0"))
        .count();
    assert!(reviews_calls >= 2, "{reviews_calls}");
}

fn sidecar(head: &str) -> (u16, String) {
    if head.contains("/reviews/") {
        reviews_v2_json(head)
    } else if head.contains("/ratings/") {
        (
            200,
            r#"{"id":0,"ratings":{"Reviewer1":2,"Reviewer2":3}}"#.to_owned(),
        )
    } else {
        (200, r#"{"id":0,"type":"hardcover","pages":1}"#.to_owned())
    }
}

#[test]
fn outbound_calls_go_through_http_proxy_in_absolute_form() {
    let proxy = Fake::start(sidecar);
    // The override must be ignored when a proxy is configured.
    let pp = Svc::start(
        &["productpage"],
        &[
            ("HTTP_PROXY", &format!("http://{}", proxy.addr)),
            ("WEFT_SERVICE_DETAILS_ADDR", &dead_addr()),
            ("WEFT_WORKLOAD_NAME", "productpage-v1"),
            ("WEFT_NAMESPACE", "default"),
        ],
    );
    let r = get(pp.addr, "/productpage", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("<dd>hardcover</dd>"), "{}", r.body);
    assert!(r.body.contains("reviews-v2"));
    let heads = proxy.heads();
    let details = heads
        .iter()
        .find(|h| h.contains("/details/"))
        .expect("details went through the proxy");
    assert!(
        details.starts_with("GET http://details:9080/details/0 HTTP/1.1\r\n"),
        "{details}"
    );
    assert!(
        details
            .to_ascii_lowercase()
            .contains("\r\nhost: details:9080\r\n"),
        "{details}"
    );
    let reviews = heads
        .iter()
        .find(|h| h.contains("/reviews/"))
        .expect("reviews");
    assert!(
        reviews.starts_with("GET http://reviews:9080/reviews/0 HTTP/1.1\r\n"),
        "{reviews}"
    );
    assert!(pp.logged("productpage-v1 "));

    // reviews v2 reaches ratings through the (lower-case) proxy variable too.
    let rv = Svc::start(
        &["reviews", "--version", "v2"],
        &[("http_proxy", &format!("http://{}", proxy.addr))],
    );
    let r = get(rv.addr, "/reviews/0", &[("x-request-id", "abc")]).json();
    assert_eq!(r["reviews"][0]["rating"]["stars"], 2);
    let heads = proxy.heads();
    let ratings = heads
        .iter()
        .find(|h| h.contains("/ratings/"))
        .expect("ratings");
    assert!(
        ratings.starts_with("GET http://ratings:9080/ratings/0 HTTP/1.1\r\n"),
        "{ratings}"
    );
    assert!(ratings.contains("x-request-id: abc\r\n"), "{ratings}");
}

#[test]
fn sigterm_exits_cleanly_and_bad_input_is_survived() {
    let mut ratings = Svc::start(&["ratings"], &[]);
    // Garbage on the wire must not kill the process.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(ratings.addr).expect("connect");
        let _ = s.write_all(b"\x00\x01 garbage \r\n\r\n\xff\xfe");
    }
    assert_eq!(get(ratings.addr, "/ratings/0", &[]).status, 200);
    let st = ratings.terminate();
    assert!(st.success(), "{st:?}");
    assert!(ratings.logged("stopped"));
}

#[test]
fn bad_arguments_are_rejected() {
    for args in [
        &["reviews", "--version", "v9"][..],
        &["unknown"][..],
        &["details", "--listen", "nonsense"][..],
    ] {
        let st = std::process::Command::new(env!("CARGO_BIN_EXE_bookinfo"))
            .args(args)
            .env_clear()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run");
        assert_eq!(st.code(), Some(2), "{args:?}");
    }
    // A bad proxy URL is a configuration error (exit 1), not a panic.
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_bookinfo"))
        .args(["productpage", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("HTTP_PROXY", "https://127.0.0.1:1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run");
    assert_eq!(st.code(), Some(1));
}
