//! End-to-end resilience tests of `weft-proxy`: retries (5xx, gateway-error, reset,
//! connect-failure, retriable-status-codes, gRPC codes, per-try timeout, the body-size limit on
//! retries), circuit breakers (connections, pending requests, requests on an h2 upstream,
//! retries), outlier detection (ejection and return), route timeouts, and the local replies
//! and response flags that go with them (URX, UO, UF, UT, UH).
//!
//! Upstream request counts are read from the test servers, so "retried N times" is measured,
//! not inferred. The proxy runs with `--concurrency 1`; everything runs on 127.0.0.1 under a
//! deadline; expectations follow Envoy's semantics.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use http_body_util::BodyExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One listener sending every request to cluster `up` with the given route fields
/// (column-0 YAML under `route:`), plus the given clusters.
fn route_bootstrap(port: u16, route_fields: &str, clusters: &[String]) -> String {
    let vhosts = format!(
        "- name: all\n  domains: [\"*\"]\n  routes:\n  - match: {{ prefix: \"/\" }}\n    route:\n{}",
        indent(route_fields, 6)
    );
    bootstrap(&[http_listener("main", port, &vhosts).build()], clusters)
}

/// An echo upstream `up` behind a proxy whose one route has `route_fields`; the proxy's address.
async fn echo_proxy(route_fields: &str) -> Result<(EchoServer, Proxy, SocketAddr)> {
    let up = EchoServer::start("up").await?;
    let port = free_port();
    let yaml = route_bootstrap(port, route_fields, &[cluster("up", &[up.addr], "")]);
    let proxy = Proxy::start(&yaml).await?;
    Ok((up, proxy, local(port)))
}

async fn retry_proxy(retry_policy: &str) -> Result<(EchoServer, Proxy, SocketAddr)> {
    echo_proxy(&format!(
        "cluster: up\ntimeout: 10s\nretry_policy: {retry_policy}"
    ))
    .await
}

/// A proxy sending every request to cluster `od` of `endpoints`, the cluster's other fields
/// (load balancing, outlier detection) given as YAML; the proxy's address.
async fn cluster_proxy(
    endpoints: &[SocketAddr],
    cluster_fields: &str,
) -> Result<(Proxy, SocketAddr)> {
    let port = free_port();
    let yaml = bootstrap(
        &[http_listener("main", port, &vhost_to("all", "\"*\"", "od")).build()],
        &[cluster("od", endpoints, cluster_fields)],
    );
    Ok((Proxy::start(&yaml).await?, local(port)))
}

/// Waits until cluster `od` (see [`cluster_proxy`]) has exactly one host ejected.
async fn one_ejected(proxy: &Proxy) -> Result<f64> {
    proxy
        .wait_stat(
            "envoy_cluster_outlier_detection_ejections_active",
            &[("envoy_cluster_name", "od")],
            "== 1",
            |v| v == 1.0,
        )
        .await
}

/// Sends one request and checks status and the upstream request count it caused.
async fn expect_attempts(
    up: &EchoServer,
    addr: SocketAddr,
    req: Req,
    status: u16,
    attempts: usize,
) -> Result<Resp> {
    let before = up.requests();
    let what = format!("{} {}", req.method, req.path);
    let r = Http::h1().send(addr, req).await?;
    let seen = up.requests() - before;
    ensure!(
        r.status == status && seen == attempts,
        "{what}: expected {status} after {attempts} upstream attempts, got {} after {seen} ({:?})",
        r.status,
        r.text()
    );
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_5xx_until_success() -> Result<()> {
    within(60, async {
        let (up, proxy, addr) = retry_proxy(r#"{ retry_on: "5xx", num_retries: 2 }"#).await?;
        up.fail_first(2, 503);
        let r = expect_attempts(&up, addr, Req::get("/ok"), 200, 3).await?;
        ensure!(r.upstream() == "up");
        let l = proxy
            .wait_access("200 for /ok", |l| l.path == "/ok")
            .await?;
        ensure!(l.code == 200 && !l.has_flag("URX"), "{}", l.raw);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_5xx_exhausted_returns_last_response_with_urx() -> Result<()> {
    within(60, async {
        let (up, proxy, addr) = retry_proxy(r#"{ retry_on: "5xx", num_retries: 2 }"#).await?;
        up.fail_first(usize::MAX, 500);
        let r = expect_attempts(&up, addr, Req::get("/always-500"), 500, 3).await?;
        ensure!(
            r.upstream() == "up",
            "the upstream's own 500 must come back"
        );
        proxy
            .wait_access("500 URX", |l| {
                l.path == "/always-500" && l.code == 500 && l.has_flag("URX")
            })
            .await?;
        proxy
            .wait_stat(
                "envoy_cluster_upstream_rq_retry",
                &[("envoy_cluster_name", "up")],
                "== 2",
                |v| v == 2.0,
            )
            .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_gateway_error_only_502_503_504() -> Result<()> {
    within(60, async {
        let (up, _proxy, addr) =
            retry_proxy(r#"{ retry_on: "gateway-error", num_retries: 3 }"#).await?;
        for code in [502, 503, 504] {
            up.fail_first(1, code);
            expect_attempts(&up, addr, Req::get(&format!("/gw/{code}")), 200, 2).await?;
        }
        up.fail_first(1, 500);
        expect_attempts(&up, addr, Req::get("/gw/500"), 500, 1).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_reset() -> Result<()> {
    within(60, async {
        let (up, proxy, addr) = retry_proxy(r#"{ retry_on: "reset", num_retries: 2 }"#).await?;
        up.reset_first(1);
        expect_attempts(&up, addr, Req::get("/once"), 200, 2).await?;
        let r = expect_attempts(&up, addr, Req::get("/reset"), 503, 3).await?;
        ensure!(
            r.text().contains("reset"),
            "the local reply must name the cause: {:?}",
            r.text()
        );
        proxy
            .wait_access("503 URX after resets", |l| {
                l.path == "/reset" && l.code == 503 && l.has_flag("URX")
            })
            .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_connect_failure() -> Result<()> {
    within(60, async {
        let live = EchoServer::start("live").await?;
        let port = free_port();
        let vhosts = r#"
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/mixed" }
                route:
                  cluster: mixed
                  retry_policy: { retry_on: "connect-failure", num_retries: 3 }
              - match: { prefix: "/dead-retry" }
                route:
                  cluster: dead
                  retry_policy: { retry_on: "connect-failure", num_retries: 2 }
              - match: { prefix: "/dead" }
                route: { cluster: dead }
        "#;
        let yaml = bootstrap(
            &[http_listener("main", port, vhosts).build()],
            &[
                cluster("mixed", &[dead_addr(), live.addr], "lb_policy: ROUND_ROBIN"),
                cluster("dead", &[dead_addr()], ""),
            ],
        );
        let proxy = Proxy::start(&yaml).await?;
        let http = Http::h1();
        for i in 0..10 {
            let r = http.get(local(port), "/mixed").await?;
            ensure!(
                r.status == 200 && r.upstream() == "live",
                "request {i}: {} {:?}",
                r.status,
                r.text()
            );
        }
        ensure!(live.requests() == 10);

        let r = http.get(local(port), "/dead").await?;
        ensure!(r.status == 503, "status {}", r.status);
        let body = r.text();
        ensure!(
            body.contains("connection failure") && body.contains("dead"),
            "the local reply must name the cause and the cluster: {body:?}"
        );
        proxy
            .wait_access("503 UF", |l| {
                l.path == "/dead" && l.code == 503 && l.has_flag("UF")
            })
            .await?;

        let r = http.get(local(port), "/dead-retry").await?;
        ensure!(r.status == 503, "status {}", r.status);
        proxy
            .wait_access("503 UF,URX", |l| {
                l.path == "/dead-retry" && l.code == 503 && l.has_flag("UF") && l.has_flag("URX")
            })
            .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_retriable_status_codes() -> Result<()> {
    within(60, async {
        let (up, _proxy, addr) = retry_proxy(
            r#"{ retry_on: "retriable-status-codes", retriable_status_codes: [418, 409], num_retries: 2 }"#,
        )
        .await?;
        up.fail_first(1, 418);
        expect_attempts(&up, addr, Req::get("/a"), 200, 2).await?;
        up.fail_first(2, 409);
        expect_attempts(&up, addr, Req::get("/b"), 200, 3).await?;
        up.fail_first(1, 503);
        expect_attempts(&up, addr, Req::get("/c"), 503, 1).await?;
        up.fail_first(usize::MAX, 418);
        expect_attempts(&up, addr, Req::get("/d"), 418, 3).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_per_try_timeout() -> Result<()> {
    within(60, async {
        let (up, proxy, addr) =
            retry_proxy(r#"{ retry_on: "5xx", num_retries: 2, per_try_timeout: 0.3s }"#).await?;
        up.delay_first(1, 3000);
        let start = Instant::now();
        expect_attempts(&up, addr, Req::get("/slow-once"), 200, 2).await?;
        ensure!(
            start.elapsed() < Duration::from_secs(2),
            "the slow first try was not cut at 300 ms: {:?}",
            start.elapsed()
        );
        up.delay_first(usize::MAX, 3000);
        let start = Instant::now();
        expect_attempts(&up, addr, Req::get("/slow-always"), 504, 3).await?;
        let took = start.elapsed();
        ensure!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2900),
            "three 300 ms tries took {took:?}"
        );
        proxy
            .wait_access("504 UT", |l| {
                l.path == "/slow-always" && l.code == 504 && l.has_flag("UT")
            })
            .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_replays_small_body_but_not_one_over_the_buffer_limit() -> Result<()> {
    within(60, async {
        let (up, _proxy, addr) = retry_proxy(r#"{ retry_on: "5xx", num_retries: 2 }"#).await?;
        let small: Vec<u8> = (0..1024u32).map(|i| b'a' + (i % 26) as u8).collect();
        up.fail_first(1, 503);
        let r = expect_attempts(&up, addr, Req::post("/echo", small.clone()), 200, 2).await?;
        ensure!(
            r.body.as_ref() == small.as_slice(),
            "the retried body differs"
        );

        // 2 MiB is over the default 1 MiB buffer limit: Envoy stops buffering and gives up
        // on retrying, so the upstream's 503 comes back after a single attempt.
        let big = vec![b'z'; 2 * 1024 * 1024];
        up.fail_first(usize::MAX, 503);
        expect_attempts(&up, addr, Req::post("/echo", big), 503, 1).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_grpc_status_codes() -> Result<()> {
    within(60, async {
        let grpc = GrpcServer::start().await?;
        let port = free_port();
        let yaml = route_bootstrap(
            port,
            r#"
            cluster: grpc
            retry_policy:
              retry_on: "unavailable,cancelled,deadline-exceeded,resource-exhausted"
              num_retries: 2
            "#,
            &[h2_cluster("grpc", &[grpc.addr], "")],
        );
        let _proxy = Proxy::start(&yaml).await?;
        let mut client = AuthorizationClient::new(grpc_channel(local(port)).await?);
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::Cancelled,
            tonic::Code::DeadlineExceeded,
            tonic::Code::ResourceExhausted,
        ] {
            grpc.fail_first(1, code);
            let before = grpc.checks();
            client
                .check(CheckRequest::default())
                .await
                .with_context(|| format!("{code:?} once must be retried into OK"))?;
            ensure!(
                grpc.checks() - before == 2,
                "{code:?}: {} calls",
                grpc.checks() - before
            );
        }
        grpc.fail_first(usize::MAX, tonic::Code::Unavailable);
        let before = grpc.checks();
        match client.check(CheckRequest::default()).await {
            Err(e) => ensure!(e.code() == tonic::Code::Unavailable, "{e:?}"),
            Ok(r) => bail!("expected UNAVAILABLE after retries, got {r:?}"),
        }
        ensure!(
            grpc.checks() - before == 3,
            "num_retries 2: {} calls",
            grpc.checks() - before
        );
        grpc.fail_first(1, tonic::Code::PermissionDenied);
        let before = grpc.checks();
        match client.check(CheckRequest::default()).await {
            Err(e) => ensure!(e.code() == tonic::Code::PermissionDenied, "{e:?}"),
            Ok(r) => bail!("expected PERMISSION_DENIED, got {r:?}"),
        }
        ensure!(
            grpc.checks() - before == 1,
            "PERMISSION_DENIED is not retriable"
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Circuit breakers
// ---------------------------------------------------------------------------------------------

/// Splits results into (200s, 503s with x-envoy-overloaded); anything else fails.
fn tally(results: &[Result<Resp>]) -> Result<(usize, usize)> {
    let (mut ok, mut overflow) = (0, 0);
    for r in results {
        let r = r
            .as_ref()
            .map_err(|e| anyhow::anyhow!("request failed: {e:#}"))?;
        match r.status {
            200 => ok += 1,
            503 => {
                ensure!(
                    r.header("x-envoy-overloaded") == Some("true"),
                    "503 without x-envoy-overloaded: {:?} {:?}",
                    r.headers,
                    r.text()
                );
                overflow += 1;
            }
            s => bail!("unexpected status {s}: {:?}", r.text()),
        }
    }
    Ok((ok, overflow))
}

async fn breaker_proxy(thresholds: &str, h2: bool) -> Result<(EchoServer, Proxy, SocketAddr)> {
    let up = EchoServer::start("slow").await?;
    let port = free_port();
    let extra = format!("circuit_breakers:\n  thresholds:\n  - {thresholds}");
    let c = if h2 {
        h2_cluster("slow", &[up.addr], &extra)
    } else {
        cluster("slow", &[up.addr], &extra)
    };
    let yaml = bootstrap(
        &[http_listener("main", port, &vhost_to("all", "\"*\"", "slow")).build()],
        &[c],
    );
    let proxy = Proxy::start(&yaml).await?;
    Ok((up, proxy, local(port)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_max_connections_with_one_pending() -> Result<()> {
    within(60, async {
        let (up, proxy, addr) =
            breaker_proxy("{ max_connections: 1, max_pending_requests: 1 }", false).await?;
        let results = concurrent(&Http::h1(), addr, 10, Req::get("/delay/1000")).await;
        let (ok, overflow) = tally(&results)?;
        ensure!(
            (1..=2).contains(&ok) && ok + overflow == 10,
            "1 connection + 1 pending: {ok} ok, {overflow} overflowed"
        );
        ensure!(
            up.max_active() <= 1,
            "upstream saw {} at once",
            up.max_active()
        );
        proxy
            .wait_access_count("503 UO", overflow, |l| l.code == 503 && l.has_flag("UO"))
            .await?;
        proxy
            .wait_stat(
                "envoy_cluster_upstream_rq_pending_overflow",
                &[("envoy_cluster_name", "slow")],
                ">= overflowed",
                |v| v >= overflow as f64,
            )
            .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_max_pending_requests() -> Result<()> {
    within(60, async {
        let (up, proxy, addr) =
            breaker_proxy("{ max_connections: 1, max_pending_requests: 3 }", false).await?;
        let results = concurrent(&Http::h1(), addr, 10, Req::get("/delay/800")).await;
        let (ok, overflow) = tally(&results)?;
        ensure!(
            (3..=4).contains(&ok) && ok + overflow == 10,
            "1 connection + 3 pending: {ok} ok, {overflow} overflowed"
        );
        ensure!(up.max_active() <= 1 && up.requests() == ok);
        proxy
            .wait_access_count("503 UO", overflow, |l| l.code == 503 && l.has_flag("UO"))
            .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_max_requests_on_h2_upstream() -> Result<()> {
    within(60, async {
        let (up, proxy, addr) = breaker_proxy("{ max_requests: 2 }", true).await?;
        let results = concurrent(&Http::h1(), addr, 10, Req::get("/delay/800")).await;
        let (ok, overflow) = tally(&results)?;
        ensure!(
            (1..=2).contains(&ok) && ok + overflow == 10,
            "max_requests 2: {ok} ok, {overflow} overflowed"
        );
        ensure!(
            up.max_active() <= 2,
            "upstream saw {} at once",
            up.max_active()
        );
        ensure!(
            up.h2_requests() == up.requests(),
            "the cluster must speak h2"
        );
        proxy
            .wait_access_count("503 UO", overflow, |l| l.code == 503 && l.has_flag("UO"))
            .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_max_retries() -> Result<()> {
    within(60, async {
        let up = EchoServer::start("up").await?;
        let port = free_port();
        let yaml = route_bootstrap(
            port,
            r#"
            cluster: up
            retry_policy: { retry_on: "5xx", num_retries: 3 }
            "#,
            &[cluster(
                "up",
                &[up.addr],
                "circuit_breakers: { thresholds: [{ max_retries: 1 }] }",
            )],
        );
        let proxy = Proxy::start(&yaml).await?;
        let results = concurrent(
            &Http::h1(),
            local(port),
            5,
            Req::get("/status/503/delay/500"),
        )
        .await;
        for r in &results {
            let r = r.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            ensure!(r.status == 503, "status {}", r.status);
        }
        // Without the breaker: 5 × (1 + 3) = 20 attempts. All five first attempts fail at the
        // same moment and only one retry may be outstanding: four requests overflow (UO) after
        // one attempt; the fifth holds the single retry slot, which it gets back each time its
        // retry completes, and so uses all three retries (URX): 5 + 3 attempts.
        ensure!(
            up.requests() == 5 + 3,
            "max_retries 1: expected 8 upstream attempts, got {}",
            up.requests()
        );
        proxy
            .wait_stat(
                "envoy_cluster_upstream_rq_retry_overflow",
                &[("envoy_cluster_name", "up")],
                ">= 4",
                |v| v >= 4.0,
            )
            .await?;
        proxy
            .wait_access_count("retry overflow flagged UO", 4, |l| {
                l.code == 503 && l.has_flag("UO")
            })
            .await?;
        proxy
            .wait_access("the request holding the retry slot ends URX", |l| {
                l.code == 503 && l.has_flag("URX")
            })
            .await?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Outlier detection
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_and_returns() -> Result<()> {
    within(60, async {
        let good = EchoServer::start("good").await?;
        let bad = EchoServer::start("bad").await?;
        bad.fail_first(usize::MAX, 500);
        let (proxy, addr) = cluster_proxy(
            &[good.addr, bad.addr],
            r#"
                lb_policy: ROUND_ROBIN
                outlier_detection:
                  consecutive_5xx: 3
                  interval: 0.2s
                  base_ejection_time: 1s
                  max_ejection_percent: 100
                "#,
        )
        .await?;
        let http = Http::h1();
        let mut sent = 0;
        while bad.requests() < 3 {
            ensure!(
                sent < 20,
                "bad got only {} of {sent} requests",
                bad.requests()
            );
            http.get(addr, "/").await?;
            sent += 1;
        }
        let ejected_at = Instant::now();
        for i in 0..10 {
            let r = http.get(addr, "/").await?;
            ensure!(
                r.status == 200 && r.upstream() == "good",
                "request {i} after 3 consecutive 5xx: {} from {:?}",
                r.status,
                r.upstream()
            );
        }
        ensure!(
            ejected_at.elapsed() < Duration::from_millis(900),
            "too slow to tell ejection from return"
        );
        ensure!(bad.requests() == 3, "the ejected host still got traffic");
        one_ejected(&proxy).await?;
        // After base_ejection_time (checked every interval), the host takes traffic again.
        let back = eventually(
            "the ejected host to return",
            Duration::from_secs(5),
            async || {
                let r = http.get(addr, "/").await.ok()?;
                (r.upstream() == "bad").then(Instant::now)
            },
        )
        .await?;
        let out_for = back.duration_since(ejected_at);
        ensure!(
            out_for >= Duration::from_millis(900),
            "returned after {out_for:?}, base_ejection_time is 1 s"
        );
        Ok(())
    })
    .await
}

/// Success-rate ejection (on by default in Envoy's `OutlierDetection`): an endpoint failing
/// every other request never makes a run of 5xx, but its success rate sits far below its
/// peers'. With one outlier among five hosts it is exactly 2 standard deviations below the
/// mean, so the factor is set to 1 (1000) to judge it whatever its failure ratio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_rate_ejects_an_endpoint_failing_half_its_requests() -> Result<()> {
    within(60, async {
        let mut ups = Vec::new();
        for i in 0..4 {
            ups.push(EchoServer::start(&format!("good{i}")).await?);
        }
        let bad = EchoServer::start("bad").await?;
        let mut addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
        addrs.push(bad.addr);
        let (proxy, addr) = cluster_proxy(
            &addrs,
            r#"
                lb_policy: ROUND_ROBIN
                outlier_detection:
                  interval: 0.5s
                  base_ejection_time: 30s
                  success_rate_request_volume: 10
                  success_rate_stdev_factor: 1000
                "#,
        )
        .await?;
        let http = Http::h1();
        // Every second request to `bad` fails: 50%, never two 5xx in a row.
        let mut armed = usize::MAX;
        let mut failed = 0;
        for i in 0..200 {
            let n = bad.requests();
            if n % 2 == 1 && armed != n {
                bad.fail_first(1, 500);
                armed = n;
            }
            let r = http.get(addr, &format!("/{i}")).await?;
            if r.status == 500 {
                failed += 1;
            }
        }
        ensure!(failed > 10, "only {failed} requests failed");
        one_ejected(&proxy).await?;
        let before = bad.requests();
        for i in 0..20 {
            let r = http.get(addr, &format!("/after/{i}")).await?;
            ensure!(
                r.status == 200 && r.upstream().starts_with("good"),
                "after the ejection: {} from {:?}",
                r.status,
                r.upstream()
            );
        }
        ensure!(
            bad.requests() == before,
            "the ejected endpoint still got traffic"
        );
        Ok(())
    })
    .await
}

/// `split_external_local_origin_errors`: connect failures count towards
/// `consecutive_local_origin_failure` only. With `consecutive_5xx: 1` the unsplit detector
/// would eject the dead endpoint at its first connect failure; split, it takes three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_local_origin_errors_eject_on_their_own_count() -> Result<()> {
    within(60, async {
        let good = EchoServer::start("good").await?;
        let (proxy, addr) = cluster_proxy(
            &[good.addr, dead_addr()],
            r#"
                lb_policy: ROUND_ROBIN
                outlier_detection:
                  consecutive_5xx: 1
                  split_external_local_origin_errors: true
                  consecutive_local_origin_failure: 3
                  interval: 0.2s
                  base_ejection_time: 30s
                  max_ejection_percent: 100
                "#,
        )
        .await?;
        let http = Http::h1();
        let mut failed = 0;
        for i in 0..20 {
            let r = http.get(addr, &format!("/{i}")).await?;
            match r.status {
                200 => ensure!(r.upstream() == "good", "200 from {:?}", r.upstream()),
                503 => failed += 1,
                s => bail!("request {i}: status {s}"),
            }
        }
        ensure!(
            failed == 3,
            "{failed} connect failures reached the client; the dead endpoint should be ejected \
             after exactly 3"
        );
        proxy
            .wait_access("503 UF", |l| l.code == 503 && l.has_flag("UF"))
            .await?;
        one_ejected(&proxy).await?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Timeouts and local replies
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_is_504_ut() -> Result<()> {
    within(60, async {
        let (_up, proxy, addr) = echo_proxy("cluster: up\ntimeout: 0.3s").await?;
        let start = Instant::now();
        let r = Http::h1().get(addr, "/delay/3000").await?;
        let took = start.elapsed();
        ensure!(r.status == 504, "status {}", r.status);
        ensure!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "timeout 300 ms fired after {took:?}"
        );
        ensure!(
            r.text().contains("upstream request timeout"),
            "body {:?}",
            r.text()
        );
        proxy
            .wait_access("504 UT", |l| {
                l.path == "/delay/3000" && l.code == 504 && l.has_flag("UT")
            })
            .await?;
        // A fast request on the same route is unaffected.
        let r = Http::h1().get(addr, "/fast").await?;
        ensure!(r.status == 200);
        Ok(())
    })
    .await
}

/// The head-wait timer is kept on the downstream connection between its requests and moved to
/// each new deadline: every request on one kept-alive connection still gets its own full route
/// timeout, whether the request before it finished in time or timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_holds_for_each_request_of_a_kept_alive_connection() -> Result<()> {
    /// One request on `s`; the status and how long the whole response took.
    async fn exchange(s: &mut tokio::net::TcpStream, path: &str) -> Result<(u16, Duration)> {
        let start = Instant::now();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await?;
        let got = read_until(s, b"\r\n\r\n", Duration::from_secs(10)).await?;
        let end = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no head")?
            + 4;
        let head = String::from_utf8_lossy(&got[..end]).into_owned();
        let len: usize = head
            .to_ascii_lowercase()
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .context("no content-length")?
            .trim()
            .parse()?;
        read_n(s, len - (got.len() - end), Duration::from_secs(10)).await?;
        Ok((status_of(&head).context("no status")?, start.elapsed()))
    }
    within(60, async {
        let (_up, _proxy, addr) = echo_proxy("cluster: up\ntimeout: 0.4s").await?;
        let mut s = connect(addr).await?;
        for round in 0..2 {
            // A fast request first leaves the timer armed for a deadline the next one passes.
            let (status, _) = exchange(&mut s, "/fast").await?;
            ensure!(status == 200, "round {round}: fast request {status}");
            tokio::time::sleep(Duration::from_millis(150)).await;
            let (status, took) = exchange(&mut s, "/delay/3000").await?;
            ensure!(status == 504, "round {round}: slow request {status}");
            ensure!(
                took >= Duration::from_millis(350) && took < Duration::from_secs(2),
                "round {round}: timeout 400 ms fired after {took:?}"
            );
            // Slower than the deadline before it, within its own: not cut.
            let (status, _) = exchange(&mut s, "/delay/250").await?;
            ensure!(status == 200, "round {round}: 250 ms request {status}");
        }
        Ok(())
    })
    .await
}

/// The connection manager's `stream_idle_timeout`: a stream with no activity for that long is
/// answered 408 with flag SI before response headers, and reset (logged with SI) once they were
/// sent; a stream that keeps making progress is never cut, however long it lasts in total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout_is_408_si_and_resets_idle_bodies() -> Result<()> {
    within(60, async {
        let up = EchoServer::start("up").await?;
        let start_proxy = |idle: &'static str| {
            let port = free_port();
            let vhosts = "- name: all\n  domains: [\"*\"]\n  routes:\n  - match: { prefix: \"/\" }\n    route: { cluster: up, timeout: 10s }\n";
            let yaml = bootstrap(
                &[http_listener("main", port, vhosts)
                    .hcm(&format!("stream_idle_timeout: {idle}"))
                    .build()],
                &[cluster("up", &[up.addr], "")],
            );
            async move { Ok::<_, anyhow::Error>((Proxy::start(&yaml).await?, local(port))) }
        };

        let (proxy, addr) = start_proxy("0.15s").await?;
        // Waiting for response headers longer than the idle timeout: 408 SI.
        let t = Instant::now();
        let r = Http::h1().get(addr, "/delay/3000").await?;
        ensure!(r.status == 408, "status {} {:?}", r.status, r.text());
        ensure!(r.text().contains("stream timeout"), "body {:?}", r.text());
        ensure!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
        proxy
            .wait_access("408 SI", |l| l.path == "/delay/3000" && l.code == 408 && l.has_flag("SI"))
            .await?;
        // A body whose chunks come further apart than the idle timeout is reset after the
        // first chunk; the access log has the 200 with SI.
        let resp = Http::h1().raw(addr, Req::get("/stream")).await?;
        ensure!(resp.status() == 200, "status {}", resp.status());
        let got = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .context("body stalled")?;
        ensure!(got.is_err(), "an idle body must be reset, got {got:?}");
        proxy
            .wait_access("200 SI and not DC", |l| {
                l.path == "/stream" && l.code == 200 && l.has_flag("SI") && !l.has_flag("DC")
            })
            .await?;

        // Chunks every 200 ms stay within a 1 s idle timeout for the whole 800 ms body.
        let (proxy, addr) = start_proxy("1s").await?;
        let r = Http::h1().get(addr, "/stream").await?;
        let expected: String = (0..STREAM_CHUNKS).map(|i| format!("chunk-{i}\n")).collect();
        ensure!(r.status == 200 && r.text() == expected, "{} {:?}", r.status, r.text());
        proxy
            .wait_access("200 without SI", |l| l.path == "/stream" && l.code == 200 && !l.has_flag("SI"))
            .await?;
        Ok(())
    })
    .await
}

/// A route's `idle_timeout` takes the place of the connection manager's
/// `stream_idle_timeout`: `0s` turns it off for the route, a duration applies even where the
/// connection manager has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_idle_timeout_overrides_the_stream_idle_timeout() -> Result<()> {
    within(60, async {
        let up = EchoServer::start("up").await?;
        let port = free_port();
        let vhosts = r#"
- name: all
  domains: ["*"]
  routes:
  - match: { prefix: "/patient/" }
    route: { cluster: up, timeout: 10s, idle_timeout: 0s, prefix_rewrite: "/" }
  - match: { prefix: "/hasty/" }
    route: { cluster: up, timeout: 10s, idle_timeout: 0.15s, prefix_rewrite: "/" }
  - match: { prefix: "/" }
    route: { cluster: up, timeout: 10s }
"#;
        let yaml = bootstrap(
            &[http_listener("main", port, vhosts)
                .hcm("stream_idle_timeout: 1s")
                .build()],
            &[cluster("up", &[up.addr], "")],
        );
        let proxy = Proxy::start(&yaml).await?;
        let addr = local(port);
        // The connection manager's 1 s applies where the route says nothing.
        let r = Http::h1().get(addr, "/delay/3000").await?;
        ensure!(
            r.status == 408,
            "default route: status {} {:?}",
            r.status,
            r.text()
        );
        // `0s`: no idle timeout on this route; a 1.5 s wait is answered.
        let r = Http::h1().get(addr, "/patient/delay/1500").await?;
        ensure!(
            r.status == 200,
            "idle_timeout 0s: status {} {:?}",
            r.status,
            r.text()
        );
        // 150 ms on the route: a wait the manager's 1 s would allow is cut, 408 SI.
        let r = Http::h1().get(addr, "/hasty/delay/900").await?;
        ensure!(
            r.status == 408,
            "idle_timeout 0.15s: status {} {:?}",
            r.status,
            r.text()
        );
        proxy
            .wait_access("408 SI", |l| {
                l.path == "/hasty/delay/900" && l.has_flag("SI")
            })
            .await?;
        Ok(())
    })
    .await
}

/// `request_headers_timeout` is applied; `request_timeout`, which Weft does not enforce, is
/// refused unless disabled, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeouts_are_applied_or_refused() -> Result<()> {
    within(60, async {
        let up = EchoServer::start("up").await?;
        let port = free_port();
        let vhosts = vhost_to("all", "\"*\"", "up");
        let yaml = bootstrap(
            &[http_listener("main", port, &vhosts)
                .hcm("request_headers_timeout: 0.3s\nrequest_timeout: 0s")
                .build()],
            &[cluster("up", &[up.addr], "")],
        );
        let _proxy = Proxy::start(&yaml).await?;
        // Headers that never finish: the connection is closed after ~300 ms.
        let mut s = connect(local(port)).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await?;
        let t = Instant::now();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .context("the connection was not closed")?;
        ensure!(
            t.elapsed() < Duration::from_secs(3),
            "closed after {:?}",
            t.elapsed()
        );

        let bad = bootstrap(
            &[http_listener("main", free_port(), &vhosts)
                .hcm("request_timeout: 5s")
                .build()],
            &[cluster("up", &[up.addr], "")],
        );
        let (status, out) =
            Proxy::run_to_exit(&bad, &["--mode", "validate"], Duration::from_secs(20)).await?;
        ensure!(!status.success(), "request_timeout was accepted: {out}");
        ensure!(
            out.contains("request_timeout"),
            "error does not name the field: {out}"
        );
        Ok(())
    })
    .await
}

/// As in Envoy, the route timeout bounds the whole upstream response: a body still streaming
/// when it passes is reset (logged 200 UT), while a body that ends in time is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_cuts_a_response_body_still_streaming() -> Result<()> {
    within(60, async {
        let up = EchoServer::start("up").await?;
        let port = free_port();
        let vhosts = "- name: all\n  domains: [\"*\"]\n  routes:\n  - match: { prefix: \"/short/\" }\n    route: { cluster: up, timeout: 0.5s, prefix_rewrite: \"/\" }\n  - match: { prefix: \"/\" }\n    route: { cluster: up, timeout: 3s }\n";
        let yaml = bootstrap(
            &[http_listener("main", port, vhosts).build()],
            &[cluster("up", &[up.addr], "")],
        );
        let proxy = Proxy::start(&yaml).await?;
        // /stream sends 5 chunks 200 ms apart: 800 ms in all.
        let t = Instant::now();
        let resp = Http::h1().raw(local(port), Req::get("/short/stream")).await?;
        ensure!(resp.status() == 200, "status {}", resp.status());
        let got = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .context("body stalled")?;
        ensure!(got.is_err(), "a body past the route timeout must be reset, got {got:?}");
        ensure!(t.elapsed() < Duration::from_millis(780), "cut after {:?}", t.elapsed());
        proxy
            .wait_access("200 UT", |l| l.path == "/short/stream" && l.code == 200 && l.has_flag("UT"))
            .await?;
        let r = Http::h1().get(local(port), "/stream").await?;
        let expected: String = (0..STREAM_CHUNKS).map(|i| format!("chunk-{i}\n")).collect();
        ensure!(r.status == 200 && r.text() == expected, "{} {:?}", r.status, r.text());
        Ok(())
    })
    .await
}

/// As in Envoy, the route timeout counts from when the request has been completely received:
/// an upload that takes longer than the timeout, answered at once, is not a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_counts_from_the_end_of_the_request_body() -> Result<()> {
    within(60, async {
        let (_up, _proxy, addr) = echo_proxy("cluster: up\ntimeout: 0.5s").await?;
        let mut s = connect(addr).await?;
        s.write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .await?;
        // Six chunks 250 ms apart: the body takes 1.25 s, more than twice the timeout.
        for i in 0..6 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            s.write_all(format!("2\r\nc{i}\r\n").as_bytes()).await?;
        }
        s.write_all(b"0\r\n\r\n").await?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .context("no response")??;
        let text = String::from_utf8_lossy(&out);
        ensure!(text.starts_with("HTTP/1.1 200"), "response: {text}");
        ensure!(text.contains("c0c1c2c3c4c5"), "echoed body missing: {text}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_is_503_uh() -> Result<()> {
    within(60, async {
        let port = free_port();
        let yaml = route_bootstrap(port, "cluster: empty", &[cluster("empty", &[], "")]);
        let proxy = Proxy::start(&yaml).await?;
        let r = Http::h1().get(local(port), "/x").await?;
        ensure!(r.status == 503, "status {}", r.status);
        ensure!(
            r.text().contains("no healthy upstream"),
            "body {:?}",
            r.text()
        );
        proxy
            .wait_access("503 UH", |l| {
                l.path == "/x" && l.code == 503 && l.has_flag("UH")
            })
            .await?;
        Ok(())
    })
    .await
}
