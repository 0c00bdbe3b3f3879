//! End-to-end traffic-management tests of `weft-proxy`: fault injection (header-matched delay,
//! abort percentage, gRPC abort, `max_active_faults`), CORS (preflight allowed / passed through,
//! actual-request headers), request mirroring (`-shadow` host, body copies, a slow mirror never
//! delaying the primary, sampling), local reply mapping (no route → 502), the dynamic forward
//! proxy cluster (Host-based, absolute-form and CONNECT, connection reuse), and config errors
//! that name the unsupported field.
//!
//! The HTTP connection managers here carry Istio's filter chain (fault, CORS, router) and
//! per-route configs exactly as the control plane generates them. Everything runs on 127.0.0.1
//! under a deadline; timing checks have generous bounds.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------------
// Config helpers
// ---------------------------------------------------------------------------------------------

/// A listener whose connection manager runs `fault → cors → router` (Istio's chain), with a
/// file access log. `fault_cfg` holds HTTPFault fields for the filter-level config (column-0
/// YAML, may be empty); `hcm_extra` more HttpConnectionManager fields.
fn traffic_listener(
    name: &str,
    port: u16,
    vhosts: &str,
    fault_cfg: &str,
    hcm_extra: &str,
) -> String {
    let mut hcm = format!(
        "- name: envoy.filters.network.http_connection_manager\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n    stat_prefix: {name}\n    codec_type: AUTO\n"
    );
    hcm.push_str(&indent(FILE_ACCESS_LOG, 4));
    hcm.push_str(&indent(hcm_extra, 4));
    hcm.push_str(&format!(
        "    route_config:\n      name: {name}_routes\n      virtual_hosts:\n"
    ));
    hcm.push_str(&indent(vhosts, 6));
    hcm.push_str("    http_filters:\n");
    hcm.push_str("    - name: envoy.filters.http.fault\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\n");
    hcm.push_str(&indent(fault_cfg, 8));
    hcm.push_str("    - name: envoy.filters.http.cors\n      typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }\n");
    hcm.push_str(&indent(ROUTER_FILTER, 4));
    let body = format!("filter_chains:\n- filters:\n{}", indent(&hcm, 2));
    custom_listener(name, port, &body)
}

/// One virtual host `*` with one route `prefix: /` carrying `per_filter` (column-0 YAML map
/// for `typed_per_filter_config`, may be empty) and `route` fields (column-0 YAML).
fn one_route(per_filter: &str, route: &str) -> String {
    let mut s =
        String::from("- name: all\n  domains: [\"*\"]\n  routes:\n  - match: { prefix: \"/\" }\n");
    if !per_filter.trim().is_empty() {
        s.push_str("    typed_per_filter_config:\n");
        s.push_str(&indent(per_filter, 6));
    }
    s.push_str("    route:\n");
    s.push_str(&indent(route, 6));
    s
}

fn per_route_fault(fields: &str) -> String {
    format!(
        "envoy.filters.http.fault:\n  \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\n{}",
        indent(fields, 2)
    )
}

async fn start(listener: String, clusters: &[String]) -> Result<Proxy> {
    Proxy::start(&bootstrap(&[listener], clusters)).await
}

async fn timed(http: &Http, addr: SocketAddr, req: Req) -> Result<(Resp, Duration)> {
    let t = Instant::now();
    let r = http.send(addr, req).await?;
    Ok((r, t.elapsed()))
}

// ---------------------------------------------------------------------------------------------
// A recording upstream (for mirrors): remembers method, Host/authority, path and body.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    host: String,
    path: String,
    body: Bytes,
}

struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _stop: watch::Sender<()>,
}

impl Recorder {
    /// Answers 200 `mirror` to everything, `delay` after recording the request.
    async fn start(delay: Duration) -> Result<Recorder> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind")?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, stop_rx) = watch::channel(());
        let all = seen.clone();
        tokio::spawn(async move {
            let mut stop_accept = stop_rx.clone();
            loop {
                tokio::select! {
                    r = listener.accept() => {
                        let Ok((stream, _)) = r else { continue };
                        let all = all.clone();
                        let mut stop = stop_rx.clone();
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                                let all = all.clone();
                                async move {
                                    let (parts, body) = req.into_parts();
                                    let host = parts
                                        .headers
                                        .get(http::header::HOST)
                                        .and_then(|h| h.to_str().ok())
                                        .map(str::to_string)
                                        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
                                        .unwrap_or_default();
                                    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                                    all.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
                                        method: parts.method.to_string(),
                                        host,
                                        path: parts.uri.path().to_string(),
                                        body,
                                    });
                                    tokio::time::sleep(delay).await;
                                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"mirror"))))
                                }
                            });
                            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = stop.changed() => {}
                            }
                        });
                    }
                    _ = stop_accept.changed() => break,
                }
            }
        });
        Ok(Recorder {
            addr,
            seen,
            _stop: stop_tx,
        })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn wait_count(&self, n: usize) -> Result<Vec<Seen>> {
        eventually(&format!("{n} mirrored requests"), WAIT, async || {
            let s = self.seen();
            (s.len() >= n).then_some(s)
        })
        .await
    }

    /// Waits until the count has not changed for `quiet`, then returns it.
    async fn settled_count(&self, quiet: Duration) -> usize {
        let deadline = Instant::now() + WAIT;
        let mut last = self.seen().len();
        let mut since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
            let n = self.seen().len();
            if n != last {
                last = n;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        last
    }
}

// ---------------------------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_delay_only_for_matching_header_and_outside_route_timeout() -> Result<()> {
    within(60, async {
        let up = EchoServer::start("up").await?;
        let port = free_port();
        let vhosts = one_route(
            &per_route_fault(
                r#"
delay: { fixed_delay: 1s, percentage: { numerator: 100, denominator: HUNDRED } }
headers: [{ name: x-fault, string_match: { exact: "delay" } }]
"#,
            ),
            "cluster: up\ntimeout: 0.3s",
        );
        let proxy = start(
            traffic_listener("main", port, &vhosts, "", ""),
            &[cluster("up", &[up.addr], "")],
        )
        .await?;
        let http = Http::h1();
        let addr = local(port);

        let (r, fast) = timed(&http, addr, Req::get("/plain")).await?;
        ensure!(
            r.status == 200 && r.upstream() == "up",
            "{} {}",
            r.status,
            r.text()
        );
        ensure!(
            fast < Duration::from_millis(800),
            "an unmatched request took {fast:?}"
        );

        let (r, slow) = timed(&http, addr, Req::get("/delayed").header("x-fault", "delay")).await?;
        ensure!(
            r.status == 200 && r.upstream() == "up",
            "the delay must not count against the 0.3 s route timeout: {} {}",
            r.status,
            r.text()
        );
        ensure!(
            slow >= Duration::from_millis(950) && slow < Duration::from_secs(5),
            "a matched request took {slow:?}, expected about 1 s"
        );
        let (r, _) = timed(&http, addr, Req::get("/other").header("x-fault", "nope")).await?;
        ensure!(r.status == 200);
        let l = proxy
            .wait_access("DI for /delayed", |l| l.path == "/delayed")
            .await?;
        ensure!(l.code == 200 && l.has_flag("DI"), "{}", l.raw);
        let l = proxy.wait_access("/plain", |l| l.path == "/plain").await?;
        ensure!(!l.has_flag("DI"), "{}", l.raw);
        let l = proxy.wait_access("/other", |l| l.path == "/other").await?;
        ensure!(!l.has_flag("DI"), "{}", l.raw);
        ensure!(up.requests() == 3);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_abort_half_of_400_requests() -> Result<()> {
    within(120, async {
        let up = EchoServer::start("up").await?;
        let port = free_port();
        // Filter-level config this time (no per-route override).
        let proxy = start(
            traffic_listener(
                "main",
                port,
                &vhost_to("all", "\"*\"", "up"),
                "abort: { http_status: 503, percentage: { numerator: 5000, denominator: TEN_THOUSAND } }",
                "",
            ),
            &[cluster("up", &[up.addr], "")],
        )
        .await?;
        let http = Http::h1();
        let (mut aborted, mut passed) = (0usize, 0usize);
        for _ in 0..20 {
            for r in concurrent(&http, local(port), 20, Req::get("/maybe")).await {
                let r = r?;
                match r.status {
                    503 => {
                        ensure!(r.text() == "fault filter abort", "abort body: {:?}", r.text());
                        aborted += 1;
                    }
                    200 => passed += 1,
                    other => bail!("unexpected status {other}: {}", r.text()),
                }
            }
        }
        ensure!(
            (160..=240).contains(&aborted),
            "{aborted} of 400 aborted, expected 200 ± 40"
        );
        ensure!(
            up.requests() == passed,
            "aborted requests must not reach the upstream: {} upstream, {passed} passed",
            up.requests()
        );
        proxy
            .wait_access("503 FI", |l| l.code == 503 && l.has_flag("FI"))
            .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_grpc_abort_answers_trailers_only_status() -> Result<()> {
    within(60, async {
        let grpc = GrpcServer::start().await?;
        let port = free_port();
        let vhosts = one_route(
            &per_route_fault("abort: { grpc_status: 14, percentage: { numerator: 100 } }"),
            "cluster: grpc",
        );
        let proxy = start(
            traffic_listener("main", port, &vhosts, "", ""),
            &[h2_cluster("grpc", &[grpc.addr], "")],
        )
        .await?;
        let mut client = AuthorizationClient::new(grpc_channel(local(port)).await?);
        let err = client
            .check(CheckRequest::default())
            .await
            .err()
            .context("the call must fail with the injected status")?;
        ensure!(err.code() == tonic::Code::Unavailable, "{err:?}");
        ensure!(err.message() == "fault filter abort", "{err:?}");
        ensure!(
            grpc.checks() == 0,
            "an aborted call must not reach the server"
        );
        let l = proxy
            .wait_access("gRPC abort", |l| l.path.ends_with("/Check"))
            .await?;
        ensure!(l.code == 200 && l.has_flag("FI"), "{}", l.raw);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_max_active_faults_limits_concurrent_faults() -> Result<()> {
    within(60, async {
        let up = EchoServer::start("up").await?;
        let port = free_port();
        let vhosts = one_route(
            &per_route_fault(
                "delay: { fixed_delay: 1s, percentage: { numerator: 100 } }\nmax_active_faults: 1",
            ),
            "cluster: up",
        );
        let _proxy = start(
            traffic_listener("main", port, &vhosts, "", ""),
            &[cluster("up", &[up.addr], "")],
        )
        .await?;
        let addr = local(port);
        let first =
            tokio::spawn(async move { timed(&Http::h1_fresh(), addr, Req::get("/first")).await });
        // Let the first request reach its delay (it cannot be observed from outside).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (r, t2) = timed(&Http::h1_fresh(), addr, Req::get("/second")).await?;
        ensure!(r.status == 200, "{}", r.status);
        ensure!(
            t2 < Duration::from_millis(700),
            "with one fault active, the second request must not be delayed: {t2:?}"
        );
        let (r, t1) = first.await??;
        ensure!(
            r.status == 200 && t1 >= Duration::from_millis(950),
            "first: {} after {t1:?}",
            r.status
        );
        let (_, t3) = timed(&Http::h1_fresh(), addr, Req::get("/third")).await?;
        ensure!(
            t3 >= Duration::from_millis(950),
            "the fault slot must be free again once the first request ended: {t3:?}"
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// CORS
// ---------------------------------------------------------------------------------------------

const CORS_POLICY: &str = r#"
envoy.filters.http.cors:
  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
  allow_origin_string_match: [{ exact: "https://app.example" }, { suffix: ".trusted.example" }]
  allow_methods: "GET,POST"
  allow_headers: "x-custom,content-type"
  expose_headers: "x-upstream"
  max_age: "86400"
  allow_credentials: true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_allowed_denied_and_actual_headers() -> Result<()> {
    within(60, async {
        let up = EchoServer::start("up").await?;
        let port = free_port();
        let proxy = start(
            traffic_listener("main", port, &one_route(CORS_POLICY, "cluster: up"), "", ""),
            &[cluster("up", &[up.addr], "")],
        )
        .await?;
        let http = Http::h1();
        let addr = local(port);
        let preflight = |origin: &str| {
            Req::get("/api")
                .method("OPTIONS")
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "x-custom")
        };

        let r = http.send(addr, preflight("https://app.example")).await?;
        ensure!(
            r.status == 200,
            "allowed preflight: {} {}",
            r.status,
            r.text()
        );
        for (k, v) in [
            ("access-control-allow-origin", "https://app.example"),
            ("access-control-allow-methods", "GET,POST"),
            ("access-control-allow-headers", "x-custom,content-type"),
            ("access-control-max-age", "86400"),
            ("access-control-allow-credentials", "true"),
        ] {
            ensure!(
                r.header(k) == Some(v),
                "{k}: {:?} in {:?}",
                r.header(k),
                r.headers
            );
        }
        ensure!(
            r.upstream().is_empty() && up.requests() == 0,
            "the proxy answers preflights itself"
        );
        proxy
            .wait_access("preflight", |l| l.method == "OPTIONS" && l.code == 200)
            .await?;

        let r = http.send(addr, preflight("https://evil.example")).await?;
        ensure!(
            r.upstream() == "up" && up.requests() == 1,
            "a preflight from another origin goes upstream: {:?}",
            r.headers
        );
        ensure!(
            r.header("access-control-allow-origin").is_none(),
            "{:?}",
            r.headers
        );

        let r = http
            .send(
                addr,
                Req::get("/api").header("origin", "https://x.trusted.example"),
            )
            .await?;
        ensure!(r.status == 200 && r.upstream() == "up");
        ensure!(
            r.header("access-control-allow-origin") == Some("https://x.trusted.example"),
            "{:?}",
            r.headers
        );
        ensure!(
            r.header("access-control-expose-headers") == Some("x-upstream"),
            "{:?}",
            r.headers
        );
        ensure!(
            r.header("access-control-allow-credentials") == Some("true"),
            "{:?}",
            r.headers
        );
        ensure!(
            r.header("access-control-allow-methods").is_none(),
            "only preflights get allow-methods"
        );

        let r = http
            .send(
                addr,
                Req::get("/api").header("origin", "https://evil.example"),
            )
            .await?;
        ensure!(
            r.status == 200 && r.header("access-control-allow-origin").is_none(),
            "{:?}",
            r.headers
        );
        let r = http.send(addr, Req::get("/api")).await?;
        ensure!(r.header("access-control-allow-origin").is_none());
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Mirroring
// ---------------------------------------------------------------------------------------------

async fn mirror_proxy(
    mirror: &Recorder,
    fraction: &str,
) -> Result<(EchoServer, Proxy, SocketAddr)> {
    let up = EchoServer::start("primary").await?;
    let port = free_port();
    let route =
        format!("cluster: primary\nrequest_mirror_policies: [{{ cluster: mirror{fraction} }}]");
    let proxy = start(
        traffic_listener("main", port, &one_route("", &route), "", ""),
        &[
            cluster("primary", &[up.addr], ""),
            cluster("mirror", &[mirror.addr], ""),
        ],
    )
    .await?;
    Ok((up, proxy, local(port)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_receives_copies_with_shadow_host_and_body() -> Result<()> {
    within(60, async {
        let mirror = Recorder::start(Duration::ZERO).await?;
        let (up, _proxy, addr) = mirror_proxy(&mirror, "").await?;
        let http = Http::h1();
        let r = http
            .send(addr, Req::get("/headers").host("reviews:9080"))
            .await?;
        ensure!(r.status == 200 && r.upstream() == "primary");
        let doc = r.json()?;
        ensure!(
            doc["headers"]["host"] == "reviews:9080",
            "the primary keeps its host: {doc}"
        );
        let r = http
            .send(addr, Req::post("/echo", "mirror me").host("reviews:9080"))
            .await?;
        ensure!(r.text() == "mirror me", "primary body: {:?}", r.text());
        let seen = mirror.wait_count(2).await?;
        ensure!(seen.len() == 2, "{seen:?}");
        let get = seen
            .iter()
            .find(|s| s.path == "/headers")
            .context("GET copy")?;
        ensure!(
            get.method == "GET" && get.host == "reviews-shadow:9080",
            "{get:?}"
        );
        let post = seen
            .iter()
            .find(|s| s.path == "/echo")
            .context("POST copy")?;
        ensure!(
            post.method == "POST" && post.host == "reviews-shadow:9080" && post.body == "mirror me",
            "{post:?}"
        );
        ensure!(up.requests() == 2);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_mirror_never_delays_the_primary() -> Result<()> {
    within(60, async {
        let mirror = Recorder::start(Duration::from_secs(2)).await?;
        let (_up, _proxy, addr) = mirror_proxy(&mirror, "").await?;
        let http = Http::h1();
        for i in 0..3 {
            let (r, t) = timed(&http, addr, Req::post(&format!("/slow/{i}"), "body")).await?;
            ensure!(r.status == 200 && r.upstream() == "primary", "{}", r.status);
            ensure!(
                t < Duration::from_millis(500),
                "request {i} took {t:?} with a 2 s mirror"
            );
        }
        mirror.wait_count(3).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_fraction_is_roughly_honoured() -> Result<()> {
    within(120, async {
        let mirror = Recorder::start(Duration::ZERO).await?;
        let (up, _proxy, addr) = mirror_proxy(
            &mirror,
            ", runtime_fraction: { default_value: { numerator: 50, denominator: HUNDRED } }",
        )
        .await?;
        let http = Http::h1();
        for _ in 0..10 {
            for r in concurrent(&http, addr, 20, Req::get("/sampled")).await {
                ensure!(r?.status == 200);
            }
        }
        ensure!(up.requests() == 200);
        let n = mirror.settled_count(Duration::from_millis(500)).await;
        ensure!(
            (70..=130).contains(&n),
            "{n} of 200 mirrored, expected 100 ± 30"
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Local reply mapping
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_reply_maps_no_route_to_502_with_body() -> Result<()> {
    within(60, async {
        let up = EchoServer::start("up").await?;
        let port = free_port();
        let local_reply = r#"
local_reply_config:
  mappers:
  - filter: { response_flag_filter: { flags: ["NR"] } }
    status_code: 502
    body: { inline_string: "weft: destination not in the service registry (REGISTRY_ONLY)" }
"#;
        let proxy = start(
            traffic_listener(
                "main",
                port,
                &vhost_to("known", "\"known.test\"", "up"),
                "",
                local_reply,
            ),
            &[cluster("up", &[up.addr], "")],
        )
        .await?;
        let http = Http::h1();
        let r = http
            .send(local(port), Req::get("/x").host("elsewhere.test"))
            .await?;
        ensure!(r.status == 502, "{} {}", r.status, r.text());
        ensure!(
            r.text() == "weft: destination not in the service registry (REGISTRY_ONLY)",
            "{:?}",
            r.text()
        );
        let l = proxy.wait_access("NR", |l| l.path == "/x").await?;
        ensure!(l.code == 502 && l.has_flag("NR"), "{}", l.raw);
        let r = http
            .send(local(port), Req::get("/y").host("known.test"))
            .await?;
        ensure!(
            r.status == 200 && r.upstream() == "up",
            "routed requests are untouched"
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Dynamic forward proxy
// ---------------------------------------------------------------------------------------------

const PASSTHROUGH: &str = r#"
- name: PassthroughCluster
  connect_timeout: 10s
  lb_policy: CLUSTER_PROVIDED
  cluster_type:
    name: envoy.clusters.dynamic_forward_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig
      dns_cache_config: { name: weft_dns, dns_lookup_family: V4_PREFERRED }
"#;

const PASSTHROUGH_VHOSTS: &str = r#"
- name: allow_any
  domains: ["*"]
  routes:
  - match: { connect_matcher: {} }
    route:
      cluster: PassthroughCluster
      upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }]
  - match: { prefix: "/" }
    route: { cluster: PassthroughCluster }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_forward_proxy_host_absolute_form_and_connect() -> Result<()> {
    within(60, async {
        let web = EchoServer::start("web").await?;
        let echo = TcpEcho::start().await?;
        let port = free_port();
        let proxy = start(
            traffic_listener(
                "egress",
                port,
                PASSTHROUGH_VHOSTS,
                "",
                "upgrade_configs: [{ upgrade_type: CONNECT }]",
            ),
            &[indent(PASSTHROUGH, 0)],
        )
        .await?;
        let proxy_url = format!("http://127.0.0.1:{port}");
        let target = format!("localhost:{}", web.port());

        // Absolute-form, as an HTTP client configured with a proxy sends it.
        let out = curl(&["-x", &proxy_url, &format!("http://{target}/headers")]).await?;
        ensure!(out.ok(), "curl -x failed: {out}");
        let doc: serde_json::Value =
            serde_json::from_str(&out.stdout).with_context(|| format!("not JSON: {out}"))?;
        ensure!(
            doc["upstream"] == "web" && doc["headers"]["host"] == target.as_str(),
            "{doc}"
        );

        // Host-based, twice: one resolved address, one pooled upstream connection.
        let http = Http::h1();
        for _ in 0..2 {
            let r = http
                .send(local(port), Req::get("/again").host(&target))
                .await?;
            ensure!(
                r.status == 200 && r.upstream() == "web",
                "{} {}",
                r.status,
                r.text()
            );
        }
        ensure!(web.requests() == 3);
        ensure!(
            web.connections() == 1,
            "requests to one destination must reuse the connection, got {}",
            web.connections()
        );

        // CONNECT through the same cluster, to a raw TCP server.
        let mut s = connect(local(port)).await?;
        let connect_req = format!(
            "CONNECT localhost:{p} HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n",
            p = echo.addr.port()
        );
        s.write_all(connect_req.as_bytes()).await?;
        let head = read_until(&mut s, b"\r\n\r\n", Duration::from_secs(5)).await?;
        let head = String::from_utf8_lossy(&head).into_owned();
        ensure!(status_of(&head) == Some(200), "CONNECT answered {head:?}");
        s.write_all(b"through the tunnel\n").await?;
        let back = read_n(&mut s, 19, Duration::from_secs(5)).await?;
        ensure!(
            back == b"through the tunnel\n",
            "{:?}",
            String::from_utf8_lossy(&back)
        );
        ensure!(echo.connections() == 1);

        // curl's own CONNECT tunnel (proxytunnel) to the HTTP server.
        let out = curl(&[
            "-p",
            "-x",
            &proxy_url,
            &format!("http://{target}/tunnelled"),
        ])
        .await?;
        ensure!(out.ok() && out.stdout == "web", "curl -p failed: {out}");

        // A destination that cannot be resolved is answered 503 DF, naming it.
        let r = http
            .send(local(port), Req::get("/bad").host("bad!host:80"))
            .await?;
        ensure!(
            r.status == 503 && r.text().contains("bad!host"),
            "{} {}",
            r.status,
            r.text()
        );
        let l = proxy.wait_access("DF", |l| l.path == "/bad").await?;
        ensure!(l.has_flag("DF"), "{}", l.raw);
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Config errors
// ---------------------------------------------------------------------------------------------

async fn expect_refused(yaml: String, field: &str) -> Result<()> {
    let (st, out) = Proxy::run_to_exit(&yaml, &[], WAIT).await?;
    ensure!(!st.success(), "the config must be refused; output:\n{out}");
    ensure!(
        out.contains(field),
        "the error must name `{field}`; output:\n{out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_fields_of_these_features_are_named() -> Result<()> {
    within(60, async {
        let up = cluster("up", &[local(1)], "");
        let port = free_port();
        expect_refused(
            bootstrap(
                &[traffic_listener(
                    "main",
                    port,
                    &vhost_to("all", "\"*\"", "up"),
                    "response_rate_limit: { fixed_limit: { limit_kbps: 1 }, percentage: { numerator: 100 } }",
                    "",
                )],
                std::slice::from_ref(&up),
            ),
            "http_filters[0].typed_config.response_rate_limit",
        )
        .await?;
        expect_refused(
            bootstrap(
                &[traffic_listener(
                    "main",
                    port,
                    &one_route(
                        &format!("{CORS_POLICY}  shadow_enabled: {{ default_value: {{ numerator: 1 }} }}\n"),
                        "cluster: up",
                    ),
                    "",
                    "",
                )],
                std::slice::from_ref(&up),
            ),
            "shadow_enabled",
        )
        .await?;
        expect_refused(
            bootstrap(
                &[traffic_listener(
                    "main",
                    port,
                    &one_route("", "cluster: up\nrequest_mirror_policies: [{ cluster_header: x-mirror }]"),
                    "",
                    "",
                )],
                std::slice::from_ref(&up),
            ),
            "request_mirror_policies[0].cluster_header",
        )
        .await?;
        expect_refused(
            bootstrap(
                &[traffic_listener(
                    "main",
                    port,
                    &vhost_to("all", "\"*\"", "up"),
                    "",
                    "local_reply_config: { mappers: [{ filter: { response_flag_filter: {} }, headers_to_add: [{ header: { key: a, value: b } }] }] }",
                )],
                std::slice::from_ref(&up),
            ),
            "mappers[0].headers_to_add",
        )
        .await?;
        expect_refused(
            bootstrap(
                &[traffic_listener("main", port, PASSTHROUGH_VHOSTS, "", "")],
                &[PASSTHROUGH.replace(
                    "dns_lookup_family: V4_PREFERRED",
                    "dns_lookup_family: V4_PREFERRED, dns_query_timeout: 1s",
                )],
            ),
            "dns_cache_config.dns_query_timeout",
        )
        .await?;
        let vhosts = one_route(
            "envoy.filters.http.ratelimit:\n  \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy\n",
            "cluster: up",
        );
        expect_refused(
            bootstrap(&[traffic_listener("main", port, &vhosts, "", "")], &[up]),
            "typed_per_filter_config[\"envoy.filters.http.ratelimit\"]",
        )
        .await?;
        Ok(())
    })
    .await
}
