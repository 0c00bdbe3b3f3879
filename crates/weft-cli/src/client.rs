//! A small JSON-over-HTTP client for the control plane's API on :15014 (`--control URL` or
//! `WEFT_CONTROL`), and for proxies' admin endpoints. HTTP/1.1 over loopback; one connection
//! per call is plenty for a CLI.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Sends one request and returns (status, body).
pub async fn call(
    method: http::Method,
    url: &str,
    body: Option<(Bytes, &str)>,
) -> Result<(u16, Bytes)> {
    let uri: http::Uri = url.parse().with_context(|| format!("invalid URL {url}"))?;
    let authority = uri.authority().context("URL needs host:port")?.clone();
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(authority.as_str()),
    )
    .await
    .with_context(|| format!("timed out connecting to {authority}"))?
    .with_context(|| {
        format!("cannot reach {authority} (is the control plane running? see `weft up`)")
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority.as_str());
    let body = match body {
        Some((b, ct)) => {
            req = req.header(http::header::CONTENT_TYPE, ct);
            b
        }
        None => Bytes::new(),
    };
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        sender.send_request(req.body(Full::new(body))?),
    )
    .await
    .context("request timed out")??;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

pub async fn get_json(url: &str) -> Result<serde_json::Value> {
    let (status, body) = call(http::Method::GET, url, None).await?;
    if status != 200 {
        bail!("{url}: HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    serde_json::from_slice(&body).with_context(|| format!("{url}: invalid JSON"))
}

pub async fn post_json(url: &str, v: &serde_json::Value) -> Result<serde_json::Value> {
    let (status, body) = call(
        http::Method::POST,
        url,
        Some((Bytes::from(v.to_string()), "application/json")),
    )
    .await?;
    if !(200..300).contains(&status) {
        bail!("{}", error_text(status, &body));
    }
    serde_json::from_slice(&body).with_context(|| format!("{url}: invalid JSON"))
}

/// The control plane answers errors as `{"error": "...", "errors": [...]}`; print them plainly.
pub fn error_text(status: u16, body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => {
            let mut out = Vec::new();
            if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                out.push(e.to_string());
            }
            if let Some(list) = v.get("errors").and_then(|e| e.as_array()) {
                out.extend(
                    list.iter()
                        .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string)),
                );
            }
            if out.is_empty() {
                format!("HTTP {status}: {v}")
            } else {
                out.join("\n")
            }
        }
        Err(_) => format!("HTTP {status}: {}", String::from_utf8_lossy(body)),
    }
}
