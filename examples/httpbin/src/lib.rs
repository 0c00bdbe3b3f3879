//! An httpbin-style test service: echoes requests back as JSON and answers
//! with any status or delay asked for, so mesh features (retries, timeouts,
//! fault injection, header manipulation) can be observed from the outside.
//!
//! It makes no outbound calls. Everything it returns is derived from the
//! request; it must never panic on what a client sends and never sleep longer
//! than [`MAX_DELAY`].

pub mod cli;
use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

/// Longest `/delay/{secs}` honored.
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// Largest request body `/anything` reads.
pub const MAX_BODY: usize = 1 << 20;
/// How long open connections get after SIGTERM/SIGINT.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The response type.
pub type Resp = Response<Full<Bytes>>;

/// Handles one request from `peer`.
pub async fn handle(req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let path = req.uri().path();
    if path == "/anything" || path.starts_with("/anything/") {
        return anything(req, peer).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    }
    let (parts, _body) = req.into_parts();
    let path = parts.uri.path();
    match path {
        "/health" => text(StatusCode::OK, "OK\n"),
        "/" => text(
            StatusCode::OK,
            "httpbin: /status/{code} /delay/{secs} /headers /ip /get /anything /user-agent /health\n",
        ),
        "/headers" => pretty(
            StatusCode::OK,
            &json!({"headers": headers_json(&parts.headers)}),
        ),
        "/ip" => pretty(StatusCode::OK, &json!({"origin": peer.ip().to_string()})),
        "/user-agent" => pretty(
            StatusCode::OK,
            &json!({"user-agent": header_str(&parts.headers, "user-agent")}),
        ),
        "/get" => pretty(
            StatusCode::OK,
            &json!({
                "args": args(parts.uri.query()),
                "headers": headers_json(&parts.headers),
                "origin": peer.ip().to_string(),
                "url": url(&parts),
            }),
        ),
        p if p.starts_with("/status/") => status(&p["/status/".len()..]),
        p if p.starts_with("/delay/") => match parse_delay(&p["/delay/".len()..]) {
            Some(d) => {
                tokio::time::sleep(d).await;
                pretty(
                    StatusCode::OK,
                    &json!({
                        "args": args(parts.uri.query()),
                        "data": "",
                        "files": {},
                        "form": {},
                        "headers": headers_json(&parts.headers),
                        "origin": peer.ip().to_string(),
                        "url": url(&parts),
                    }),
                )
            }
            None => text(StatusCode::BAD_REQUEST, "Invalid delay\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "Not Found\n"),
    }
}

async fn anything(req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large\n"),
    };
    let data = String::from_utf8_lossy(&body);
    let is_form = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    let form = if is_form {
        args(Some(&data))
    } else {
        Value::Object(Map::new())
    };
    let json_body = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    pretty(
        StatusCode::OK,
        &json!({
            "args": args(parts.uri.query()),
            "data": data,
            "files": {},
            "form": form,
            "headers": headers_json(&parts.headers),
            "json": json_body,
            "method": parts.method.as_str(),
            "origin": peer.ip().to_string(),
            "url": url(&parts),
        }),
    )
}

/// `/status/{code}`: that status with an empty body (200–599 only).
fn status(code: &str) -> Resp {
    match code
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .map(StatusCode::from_u16)
    {
        Some(Ok(s)) => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = s;
            r
        }
        _ => text(StatusCode::BAD_REQUEST, "Invalid status code\n"),
    }
}

/// Seconds (integer or decimal, ≥ 0) capped at [`MAX_DELAY`].
fn parse_delay(s: &str) -> Option<Duration> {
    let secs: f64 = s.parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(secs.min(MAX_DELAY.as_secs_f64())))
}

/// `x-request-id` → `X-Request-Id` (httpbin's display form).
pub fn canonical(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        if upper {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c);
        }
        upper = c == '-';
    }
    out
}

/// Headers as `{"Canonical-Name": "v1,v2"}`.
pub fn headers_json(headers: &HeaderMap) -> Value {
    let mut m = Map::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        m.insert(canonical(name.as_str()), Value::String(joined));
    }
    Value::Object(m)
}

fn header_str(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
}

/// A query string (or form body) as httpbin's `args`: repeated keys become arrays.
pub fn args(query: Option<&str>) -> Value {
    let mut m = Map::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k), Value::String(decode(v)));
        match m.get_mut(&k) {
            None => {
                m.insert(k, v);
            }
            Some(Value::Array(a)) => a.push(v),
            Some(prev) => {
                let first = prev.take();
                *prev = Value::Array(vec![first, v]);
            }
        }
    }
    Value::Object(m)
}

/// Decodes `+` and `%XX`; bad escapes stay literal, bad UTF-8 is replaced.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                    // Two hex digits: always < 256.
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The request URL as the client addressed it.
fn url(parts: &http::request::Parts) -> String {
    let host = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let scheme = match parts
        .headers
        .get("x-forwarded-proto")
        .map(HeaderValue::as_bytes)
    {
        Some(b"https") => "https",
        _ => "http",
    };
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{scheme}://{host}{pq}")
}

fn text(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn pretty(status: StatusCode, v: &Value) -> Resp {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Serves httpbin on `listener` until `shutdown`, then drains for up to
/// [`DRAIN_TIMEOUT`]. Logs one line per request to stdout as `name`.
pub async fn serve(listener: TcpListener, name: &str, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let name: std::sync::Arc<str> = name.into();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            res = listener.accept() => match res {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{name}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let name = name.clone();
            async move {
                let start = Instant::now();
                let line = format!("{} {} {:?}", req.method(), req.uri(), req.version());
                let resp = handle(req, peer).await;
                let _ = writeln!(
                    std::io::stdout().lock(),
                    "{name} {peer} \"{line}\" {} {}us",
                    resp.status().as_u16(),
                    start.elapsed().as_micros()
                );
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = graceful.watch(
            builder
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned(),
        );
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
}

/// Registers SIGTERM/SIGINT handlers now (so a signal that arrives before
/// the returned future is first polled is not lost, nor fatal) and returns a
/// future that completes on the first of them.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut t), Ok(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {}
                        _ = i.recv() => {}
                    }
                }
                (Ok(mut t), Err(_)) => {
                    t.recv().await;
                }
                (Err(_), Ok(mut i)) => {
                    i.recv().await;
                }
                // No signal handling possible: run until killed.
                (Err(_), Err(_)) => std::future::pending::<()>().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(canonical("x-request-id"), "X-Request-Id");
        assert_eq!(canonical("host"), "Host");
        assert_eq!(canonical("x--a"), "X--A");
        assert_eq!(canonical(""), "");
    }

    #[test]
    fn args_and_decoding() {
        assert_eq!(
            args(Some("a=1&b=x+y&a=2&a=3&c")),
            json!({"a": ["1", "2", "3"], "b": "x y", "c": ""})
        );
        assert_eq!(args(None), json!({}));
        assert_eq!(args(Some("k=%41%zz%")), json!({"k": "A%zz%"}));
        assert_eq!(decode("%E2%98%85"), "★");
    }

    #[test]
    fn status_and_delay_parsing() {
        assert_eq!(status("503").status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status("200").status(), StatusCode::OK);
        assert_eq!(status("100").status(), StatusCode::BAD_REQUEST);
        assert_eq!(status("600").status(), StatusCode::BAD_REQUEST);
        assert_eq!(status("x").status(), StatusCode::BAD_REQUEST);
        assert_eq!(parse_delay("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_delay("99"), Some(MAX_DELAY));
        assert_eq!(parse_delay("-1"), None);
        assert_eq!(parse_delay("NaN"), None);
        assert_eq!(parse_delay("inf"), None);
    }

    #[test]
    fn headers_join_values() {
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        h.insert("user-agent", HeaderValue::from_static("t"));
        assert_eq!(headers_json(&h), json!({"X-A": "1,2", "User-Agent": "t"}));
    }
}
