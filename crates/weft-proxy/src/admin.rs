//! The admin HTTP server (Envoy's admin API subset, port 15000 by convention): readiness,
//! server info, config dump, Prometheus stats, clusters, log levels, health-check toggling and
//! quit. Tools and people that know Envoy's admin endpoints find the same paths here.
//!
//! The server is plain HTTP/1 on a listener the caller binds (loopback only, by convention). It
//! reads nothing from the request but the method, path and query, and must never panic on odd
//! input. It is not on the data path; it must not hold locks the data path takes.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::stats::Stats;

/// What the admin server needs from the running proxy.
pub trait AdminHandler: Send + Sync + 'static {
    /// Whether the proxy has its initial config and serves traffic.
    fn is_ready(&self) -> bool;
    /// The current config as JSON (Envoy's `ConfigDump` shape where possible).
    fn config_dump(&self) -> serde_json::Value;
    /// Envoy-style `/clusters` text.
    fn clusters(&self) -> String;
    /// Change log levels. `spec` is an `EnvFilter`-style directive list: `debug`, or
    /// `weft_proxy::upstream=trace,h2=info`.
    fn set_log_level(&self, spec: &str) -> Result<(), String>;
    /// Begin shutting the process down.
    fn quit(&self);
    /// The process statistics.
    fn stats(&self) -> &Stats;
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Grace period for open admin connections after shutdown is signalled.
const DRAIN: Duration = Duration::from_secs(5);

const ENDPOINTS: &str = "\
admin commands are:
  /: this list
  /ready (GET): LIVE (200) when serving, otherwise the server state (503)
  /server_info (GET): server state, version and uptime as JSON
  /config_dump (GET): the current configuration as JSON
  /clusters (GET): upstream clusters and their hosts
  /stats (GET): all statistics as `name: value` lines (?format=json|prometheus)
  /stats/prometheus (GET): all statistics in Prometheus text format
  /logging (POST): change log levels: ?level=debug, ?paths=name:level,..., or ?name=level
  /healthcheck/fail (POST): make /ready fail (start draining)
  /healthcheck/ok (POST): undo /healthcheck/fail
  /quitquitquit (POST): exit the server
";

/// Server-side state beyond the handler.
struct State {
    handler: Arc<dyn AdminHandler>,
    health_failed: AtomicBool,
}

impl State {
    /// Envoy's server state name and whether it counts as ready.
    fn server_state(&self) -> (&'static str, bool) {
        if !self.handler.is_ready() {
            ("PRE_INITIALIZING", false)
        } else if self.health_failed.load(Ordering::Relaxed) {
            ("DRAINING", false)
        } else {
            ("LIVE", true)
        }
    }
}

/// Serve the admin API on `listener` until `shutdown` completes; then stop accepting, let open
/// connections finish for a few seconds, and return.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn AdminHandler>,
    shutdown: impl Future<Output = ()>,
) {
    let state = Arc::new(State {
        handler,
        health_failed: AtomicBool::new(false),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Typically EMFILE; back off instead of spinning.
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let mut stop = stop_rx.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(route(&state, &req)) }
                    });
                    let conn = http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(30))
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        () = async { let _ = stop.wait_for(|s| *s).await; } => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        conns.abort_all();
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache, max-age=0"),
    );
    resp.headers_mut().insert(
        "x-content-type-options",
        header::HeaderValue::from_static("nosniff"),
    );
    resp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    respond(status, TEXT, body)
}

fn method_not_allowed(allow: &'static str, path: &str) -> Response<Full<Bytes>> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{path} requires {allow}, e.g. curl -X {allow} http://127.0.0.1:15000{path}\n"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    resp
}

fn route<B>(state: &State, req: &Request<B>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let method = req.method();
    let read = method == Method::GET || method == Method::HEAD || method == Method::POST;
    let write = method == Method::POST;
    match path {
        "/" if read => text(StatusCode::OK, ENDPOINTS),
        "/ready" | "/healthz/ready" if read => {
            let (name, ready) = state.server_state();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, format!("{name}\n"))
        }
        "/server_info" if read => server_info(state),
        "/config_dump" if read => match serde_json::to_vec_pretty(&state.handler.config_dump()) {
            Ok(mut body) => {
                body.push(b'\n');
                respond(StatusCode::OK, JSON, body)
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot serialize config dump: {e}\n"),
            ),
        },
        "/clusters" if read => text(StatusCode::OK, state.handler.clusters()),
        "/stats/prometheus" if read => prometheus(state),
        "/stats" if read => match query_param(query, "format").as_deref() {
            Some("prometheus") => prometheus(state),
            Some("json") => respond(StatusCode::OK, JSON, stats_json(&encode_stats(state))),
            None | Some("text") => text(StatusCode::OK, stats_plain(&encode_stats(state))),
            Some(other) => text(
                StatusCode::BAD_REQUEST,
                format!("unsupported stats format {other:?}; use json, prometheus or text\n"),
            ),
        },
        "/logging" if write => logging(state, query),
        "/healthcheck/fail" if write => {
            state.health_failed.store(true, Ordering::Relaxed);
            text(StatusCode::OK, "OK\n")
        }
        "/healthcheck/ok" if write => {
            state.health_failed.store(false, Ordering::Relaxed);
            text(StatusCode::OK, "OK\n")
        }
        "/quitquitquit" if write => {
            state.handler.quit();
            text(StatusCode::OK, "OK\n")
        }
        "/logging" | "/healthcheck/fail" | "/healthcheck/ok" | "/quitquitquit" => {
            method_not_allowed("POST", path)
        }
        "/" | "/ready" | "/healthz/ready" | "/server_info" | "/config_dump" | "/clusters"
        | "/stats" | "/stats/prometheus" => method_not_allowed("GET", path),
        _ => text(
            StatusCode::NOT_FOUND,
            format!("invalid path: {path}\n{ENDPOINTS}"),
        ),
    }
}

fn encode_stats(state: &State) -> String {
    let stats = state.handler.stats();
    let (_, live) = state.server_state();
    stats.server.live.set(i64::from(live));
    stats.encode()
}

fn prometheus(state: &State) -> Response<Full<Bytes>> {
    respond(StatusCode::OK, PROMETHEUS, encode_stats(state))
}

fn server_info(state: &State) -> Response<Full<Bytes>> {
    let (name, _) = state.server_state();
    let uptime = state.handler.stats().uptime().as_secs();
    let body = serde_json::json!({
        "version": concat!("weft-proxy/", env!("CARGO_PKG_VERSION")),
        "state": name,
        "hot_restart_version": "disabled",
        "uptime_current_epoch": format!("{uptime}s"),
        "uptime_all_epochs": format!("{uptime}s"),
        "command_line_options": {},
    });
    match serde_json::to_vec_pretty(&body) {
        Ok(mut b) => {
            b.push(b'\n');
            respond(StatusCode::OK, JSON, b)
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// Sample lines of the Prometheus text (`name{labels} value`).
fn samples(prom: &str) -> impl Iterator<Item = (&str, &str)> {
    prom.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
}

fn stats_plain(prom: &str) -> String {
    let mut out = String::with_capacity(prom.len());
    for (name, value) in samples(prom) {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push('\n');
    }
    out
}

fn stats_json(prom: &str) -> Vec<u8> {
    let stats: Vec<serde_json::Value> = samples(prom)
        .map(|(name, value)| {
            let value = value
                .parse::<i64>()
                .map(serde_json::Value::from)
                .or_else(|_| value.parse::<f64>().map(serde_json::Value::from))
                .unwrap_or_else(|_| serde_json::Value::from(value));
            serde_json::json!({ "name": name, "value": value })
        })
        .collect();
    let mut body = serde_json::to_vec(&serde_json::json!({ "stats": stats })).unwrap_or_default();
    body.push(b'\n');
    body
}

fn logging(state: &State, query: &str) -> Response<Full<Bytes>> {
    let params: Vec<(String, String)> = query_pairs(query).collect();
    if params.is_empty() {
        return text(
            StatusCode::OK,
            "usage: POST /logging?level=<trace|debug|info|warn|error|off>\n       \
             POST /logging?paths=<target>:<level>,...\n       POST /logging?<target>=<level>\n",
        );
    }
    let mut directives = Vec::new();
    for (k, v) in &params {
        match k.as_str() {
            "level" => directives.push(v.clone()),
            "paths" => {
                for part in v.split(',').filter(|p| !p.is_empty()) {
                    match part.rsplit_once(':') {
                        Some((target, level)) if !target.is_empty() => {
                            directives.push(format!("{target}={level}"));
                        }
                        _ => {
                            return text(
                                StatusCode::BAD_REQUEST,
                                format!("bad paths entry {part:?}; expected <target>:<level>\n"),
                            );
                        }
                    }
                }
            }
            target if !v.is_empty() => directives.push(format!("{target}={v}")),
            target => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("missing level for {target:?}; expected ?{target}=<level>\n"),
                );
            }
        }
    }
    let spec = directives.join(",");
    match state.handler.set_log_level(&spec) {
        Ok(()) => text(StatusCode::OK, format!("log level set: {spec}\n")),
        Err(e) => text(
            StatusCode::BAD_REQUEST,
            format!("cannot set log level {spec:?}: {e}\n"),
        ),
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query_pairs(query).find(|(k, _)| k == name).map(|(_, v)| v)
}

fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    struct Fake {
        ready: AtomicBool,
        quit: AtomicBool,
        levels: Mutex<Vec<String>>,
        stats: Stats,
    }

    impl AdminHandler for Fake {
        fn is_ready(&self) -> bool {
            self.ready.load(Ordering::Relaxed)
        }
        fn config_dump(&self) -> serde_json::Value {
            serde_json::json!({"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"}]})
        }
        fn clusters(&self) -> String {
            "outbound|80||web::10.0.0.2:8080::health_flags::healthy\n".to_owned()
        }
        fn set_log_level(&self, spec: &str) -> Result<(), String> {
            if spec.contains("bogus") {
                return Err("unknown level bogus".to_owned());
            }
            self.levels.lock().unwrap().push(spec.to_owned());
            Ok(())
        }
        fn quit(&self) {
            self.quit.store(true, Ordering::Relaxed);
        }
        fn stats(&self) -> &Stats {
            &self.stats
        }
    }

    struct Resp {
        status: u16,
        content_type: String,
        body: String,
    }

    async fn call(addr: std::net::SocketAddr, method: &str, target: &str) -> Resp {
        let fut = async {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!(
                "{method} {target} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            String::from_utf8(buf).unwrap()
        };
        let raw = tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .expect("admin request timed out");
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let content_type = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default();
        Resp {
            status,
            content_type,
            body: body.to_owned(),
        }
    }

    #[tokio::test]
    async fn endpoints() {
        let fake = Arc::new(Fake {
            ready: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            levels: Mutex::new(Vec::new()),
            stats: Stats::new(),
        });
        fake.stats.cluster("web").upstream_rq_total.inc();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, fake.clone(), async {
            let _ = stop_rx.await;
        }));

        let r = call(addr, "GET", "/ready").await;
        assert_eq!((r.status, r.body.as_str()), (503, "PRE_INITIALIZING\n"));
        fake.ready.store(true, Ordering::Relaxed);
        let r = call(addr, "GET", "/ready").await;
        assert_eq!((r.status, r.body.as_str()), (200, "LIVE\n"));
        assert!(r.content_type.starts_with("text/plain"));

        let r = call(addr, "GET", "/server_info").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, JSON);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["state"], "LIVE");

        let r = call(addr, "GET", "/config_dump").await;
        assert_eq!((r.status, r.content_type.as_str()), (200, JSON));
        assert!(
            r.body.contains("\n  \"configs\""),
            "pretty JSON: {}",
            r.body
        );

        let r = call(addr, "GET", "/stats/prometheus").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, PROMETHEUS);
        assert!(
            r.body
                .contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"web\"} 1")
        );
        assert!(r.body.contains("envoy_server_live 1"));

        let r = call(addr, "GET", "/stats").await;
        assert_eq!(r.status, 200);
        assert!(
            r.body
                .contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"web\"}: 1\n")
        );
        assert!(!r.body.contains('#'));
        let r = call(addr, "GET", "/stats?format=json").await;
        assert_eq!(r.content_type, JSON);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert!(
            v["stats"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["value"] == 1)
        );
        assert_eq!(call(addr, "GET", "/stats?format=xml").await.status, 400);

        let r = call(addr, "GET", "/clusters").await;
        assert_eq!(r.status, 200);
        assert!(r.body.contains("health_flags"));

        // Mutations need POST.
        let r = call(addr, "GET", "/logging?level=debug").await;
        assert_eq!(r.status, 405);
        assert!(r.body.contains("POST"));
        let r = call(addr, "POST", "/logging?level=debug").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = call(
            addr,
            "POST",
            "/logging?paths=weft_proxy::upstream:trace,h2:info",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = call(addr, "POST", "/logging?hyper=warn").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(call(addr, "POST", "/logging?level=bogus").await.status, 400);
        assert_eq!(
            call(addr, "POST", "/logging?paths=nocolon").await.status,
            400
        );
        assert_eq!(call(addr, "POST", "/logging").await.status, 200);
        assert_eq!(
            *fake.levels.lock().unwrap(),
            vec!["debug", "weft_proxy::upstream=trace,h2=info", "hyper=warn"]
        );

        assert_eq!(call(addr, "POST", "/healthcheck/fail").await.status, 200);
        let r = call(addr, "GET", "/ready").await;
        assert_eq!((r.status, r.body.as_str()), (503, "DRAINING\n"));
        assert!(
            call(addr, "GET", "/stats/prometheus")
                .await
                .body
                .contains("envoy_server_live 0")
        );
        assert_eq!(call(addr, "POST", "/healthcheck/ok").await.status, 200);
        assert_eq!(call(addr, "GET", "/ready").await.status, 200);

        let r = call(addr, "GET", "/nope").await;
        assert_eq!(r.status, 404);
        assert!(r.body.contains("/quitquitquit"));
        let r = call(addr, "GET", "/").await;
        assert_eq!(r.status, 200);
        assert!(r.body.contains("/stats/prometheus"));
        assert_eq!(call(addr, "DELETE", "/ready").await.status, 405);
        assert_eq!(call(addr, "GET", "/%zz?%=%&&=").await.status, 404);

        assert_eq!(call(addr, "GET", "/quitquitquit").await.status, 405);
        assert!(!fake.quit.load(Ordering::Relaxed));
        assert_eq!(call(addr, "POST", "/quitquitquit").await.status, 200);
        assert!(fake.quit.load(Ordering::Relaxed));

        // Shutdown stops the server promptly.
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve did not return after shutdown")
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn shutdown_with_idle_keepalive_connection() {
        let fake = Arc::new(Fake {
            ready: AtomicBool::new(true),
            quit: AtomicBool::new(false),
            levels: Mutex::new(Vec::new()),
            stats: Stats::new(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, fake, async {
            let _ = stop_rx.await;
        }));
        // A keep-alive connection that stays open and idle.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            std::str::from_utf8(&buf[..n])
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .expect("idle keep-alive connection held up shutdown")
            .unwrap();
    }

    #[test]
    fn query_decoding() {
        assert_eq!(percent_decode("a%3Ab+c%2"), "a:b c%2");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
        assert_eq!(
            query_param("x=1&format=json", "format").as_deref(),
            Some("json")
        );
        assert_eq!(query_param("format", "format").as_deref(), Some(""));
        assert_eq!(query_param("", "format"), None);
    }
}
