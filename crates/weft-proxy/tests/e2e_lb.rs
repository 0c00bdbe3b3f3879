//! End-to-end load-balancing tests of `weft-proxy`: weighted clusters (70/30 and three-way)
//! over 10,000 requests each, exact round-robin alternation, and consistent hashing
//! (RING_HASH, MAGLEV) on a header.
//!
//! The proxy runs with `--concurrency 1` so that per-worker balancer state is the whole state.
//! Everything runs on 127.0.0.1 under a deadline; expectations follow Envoy's semantics.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use support::*;

/// Sends `total` GETs to `path` from `workers` keep-alive clients; every answer must be 200.
async fn drive(addr: SocketAddr, path: &str, total: usize, workers: usize) -> Result<()> {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let n = total / workers + usize::from(w < total % workers);
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let http = Http::h1();
            for i in 0..n {
                let r = http
                    .get(addr, &path)
                    .await
                    .with_context(|| format!("worker {w} request {i}"))?;
                ensure!(r.status == 200, "worker {w} request {i}: {}", r.status);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn share(part: usize, total: usize) -> f64 {
    part as f64 / total as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_clusters_70_30_within_3_percent() -> Result<()> {
    within(240, async {
        let a = EchoServer::start("a").await?;
        let b = EchoServer::start("b").await?;
        let port = free_port();
        let vhosts = r#"
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route:
                  weighted_clusters:
                    clusters:
                    - { name: a, weight: 70 }
                    - { name: b, weight: 30 }
        "#;
        let yaml = bootstrap(
            &[http_listener("main", port, vhosts).no_access_log().build()],
            &[cluster("a", &[a.addr], ""), cluster("b", &[b.addr], "")],
        );
        let _proxy = Proxy::start(&yaml).await?;
        const N: usize = 10_000;
        drive(local(port), "/split", N, 8).await?;
        ensure!(
            a.requests() + b.requests() == N,
            "a {} + b {}",
            a.requests(),
            b.requests()
        );
        let sa = share(a.requests(), N);
        ensure!(
            (0.67..=0.73).contains(&sa),
            "a got {:.2} % (target 70 ± 3)",
            sa * 100.0
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_clusters_three_way_within_3_percent() -> Result<()> {
    within(240, async {
        let x = EchoServer::start("wx").await?;
        let y = EchoServer::start("wy").await?;
        let z = EchoServer::start("wz").await?;
        let port = free_port();
        let vhosts = r#"
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route:
                  weighted_clusters:
                    clusters:
                    - { name: wx, weight: 50 }
                    - { name: wy, weight: 30 }
                    - { name: wz, weight: 20 }
        "#;
        let yaml = bootstrap(
            &[http_listener("main", port, vhosts).no_access_log().build()],
            &[
                cluster("wx", &[x.addr], ""),
                cluster("wy", &[y.addr], ""),
                cluster("wz", &[z.addr], ""),
            ],
        );
        let _proxy = Proxy::start(&yaml).await?;
        const N: usize = 10_000;
        drive(local(port), "/split3", N, 8).await?;
        let counts = [x.requests(), y.requests(), z.requests()];
        ensure!(counts.iter().sum::<usize>() == N, "{counts:?}");
        for (got, target, name) in [
            (counts[0], 0.5, "wx"),
            (counts[1], 0.3, "wy"),
            (counts[2], 0.2, "wz"),
        ] {
            let s = share(got, N);
            ensure!(
                (s - target).abs() <= 0.03,
                "{name} got {:.2} % (target {:.0} ± 3)",
                s * 100.0,
                target * 100.0
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_alternates_exactly() -> Result<()> {
    within(60, async {
        let ups = [
            EchoServer::start("r0").await?,
            EchoServer::start("r1").await?,
            EchoServer::start("r2").await?,
        ];
        let port = free_port();
        let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
        let yaml = bootstrap(
            &[http_listener("main", port, &vhost_to("all", "\"*\"", "rr")).build()],
            &[cluster("rr", &addrs, "lb_policy: ROUND_ROBIN")],
        );
        let _proxy = Proxy::start(&yaml).await?;
        let http = Http::h1();
        let mut seq = Vec::new();
        for _ in 0..30 {
            let r = http.get(local(port), "/rr").await?;
            ensure!(r.status == 200, "status {}", r.status);
            seq.push(r.upstream().to_string());
        }
        for i in 1..seq.len() {
            ensure!(seq[i] != seq[i - 1], "not alternating at {i}: {seq:?}");
            if i >= 3 {
                ensure!(
                    seq[i] == seq[i - 3],
                    "not a strict rotation at {i}: {seq:?}"
                );
            }
        }
        for u in &ups {
            ensure!(
                u.requests() == 10,
                "{} got {}: {seq:?}",
                u.name,
                u.requests()
            );
        }
        Ok(())
    })
    .await
}

async fn consistent_hash_case(lb_policy: &str) -> Result<()> {
    let ups = [
        EchoServer::start("h0").await?,
        EchoServer::start("h1").await?,
        EchoServer::start("h2").await?,
    ];
    let port = free_port();
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let vhosts = r#"
        - name: all
          domains: ["*"]
          routes:
          - match: { prefix: "/" }
            route:
              cluster: hashed
              hash_policy:
              - header: { header_name: x-user }
    "#;
    let yaml = bootstrap(
        &[http_listener("main", port, vhosts).no_access_log().build()],
        &[cluster(
            "hashed",
            &addrs,
            &format!("lb_policy: {lb_policy}"),
        )],
    );
    let _proxy = Proxy::start(&yaml).await?;
    let http = Http::h1();
    let mut owner: HashMap<String, String> = HashMap::new();
    for pass in 0..3 {
        for k in 0..60 {
            let key = format!("user-{k}");
            let r = http
                .send(local(port), Req::get("/hash").header("x-user", &key))
                .await?;
            ensure!(r.status == 200, "status {}", r.status);
            let up = r.upstream().to_string();
            match owner.get(&key) {
                Some(prev) => ensure!(
                    *prev == up,
                    "{lb_policy}: key {key} moved from {prev} to {up} on pass {pass}"
                ),
                None => {
                    owner.insert(key, up);
                }
            }
        }
    }
    let used: HashSet<&String> = owner.values().collect();
    ensure!(
        used.len() == 3,
        "{lb_policy}: 60 keys landed on only {used:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_on_header_is_sticky_and_spread() -> Result<()> {
    within(90, consistent_hash_case("RING_HASH")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_on_header_is_sticky_and_spread() -> Result<()> {
    within(90, consistent_hash_case("MAGLEV")).await
}

/// `common_http_protocol_options.max_connection_duration`: no request goes over a connection
/// older than that, over HTTP/1.1 (pooled) and HTTP/2 (multiplexed) alike — one that aged
/// during a slow response and one that aged idle are both replaced by a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_not_used_past_max_connection_duration() -> Result<()> {
    within(60, async {
        for proto in ["http_protocol_options", "http2_protocol_options"] {
            let up = EchoServer::start("up").await?;
            let port = free_port();
            let options = format!(
                "typed_extension_protocol_options:\n  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n    \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n    common_http_protocol_options: {{ max_connection_duration: 0.5s }}\n    explicit_http_config: {{ {proto}: {{}} }}\n"
            );
            let yaml = bootstrap(
                &[http_listener("main", port, &vhost_to("all", "\"*\"", "up")).build()],
                &[cluster("up", &[up.addr], &options)],
            );
            let proxy = Proxy::start(&yaml).await?;
            let get = |path: &'static str| async move {
                let r = Http::h1().get(local(port), path).await?;
                ensure!(r.status == 200, "{proto} {path}: {r:?}");
                Ok(())
            };
            get("/a").await?;
            get("/b").await?;
            ensure!(up.connections() == 1, "{proto}: two quick requests, one connection: {}", up.connections());
            get("/delay/700").await?; // the connection is 0.7 s old when this ends
            if proto == "http_protocol_options" {
                // Closed as its response ends, not kept idle until someone would reuse it.
                proxy
                    .wait_stat(
                        "envoy_cluster_upstream_cx_active",
                        &[("envoy_cluster_name", "up")],
                        "== 0",
                        |v| v == 0.0,
                    )
                    .await?;
            }
            get("/c").await?;
            ensure!(up.connections() == 2, "{proto}: aged during a response: {}", up.connections());
            tokio::time::sleep(Duration::from_millis(600)).await;
            get("/d").await?;
            ensure!(up.connections() == 3, "{proto}: aged idle: {}", up.connections());
        }
        Ok(())
    })
    .await
}

/// An HTTP/2 cluster whose `http2_protocol_options` say `extra` (e.g. `max_concurrent_streams:
/// 2`), with `cluster_extra` at the cluster's level; the proxy and its listener's address.
async fn h2_streams_proxy(
    up: &EchoServer,
    h2_extra: &str,
    cluster_extra: &str,
) -> Result<(Proxy, SocketAddr)> {
    let port = free_port();
    let options = format!(
        "typed_extension_protocol_options:\n  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n    \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n    explicit_http_config: {{ http2_protocol_options: {{ {h2_extra} }} }}\n{cluster_extra}"
    );
    let yaml = bootstrap(
        &[http_listener("main", port, &vhost_to("all", "\"*\"", "up")).build()],
        &[cluster("up", &[up.addr], &options)],
    );
    Ok((Proxy::start(&yaml).await?, local(port)))
}

/// `http2_protocol_options.max_concurrent_streams` on a cluster: a connection carries at most
/// that many streams at once and more open another connection; without it a burst shares one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstream_streams_per_connection_follow_max_concurrent_streams() -> Result<()> {
    within(60, async {
        for (h2_extra, want) in [("max_concurrent_streams: 2", 2), ("", 1)] {
            let up = EchoServer::start("up").await?;
            let (_proxy, addr) = h2_streams_proxy(&up, h2_extra, "").await?;
            let results = concurrent(&Http::h1(), addr, 4, Req::get("/delay/500")).await;
            for r in &results {
                let r = r.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
                ensure!(r.status == 200, "{h2_extra:?}: {r:?}");
            }
            ensure!(up.h2_requests() == 4, "h2 requests: {}", up.h2_requests());
            ensure!(
                up.connections() == want,
                "{h2_extra:?}: 4 concurrent streams went over {} connections, not {want}",
                up.connections()
            );
            // Ended streams free their room: the next request needs no new connection (with
            // the limit, both connections were full).
            let r = Http::h1().get(addr, "/after").await?;
            ensure!(r.status == 200, "{r:?}");
            ensure!(
                up.connections() == want,
                "{h2_extra:?}: a request after the burst opened connection {}",
                up.connections()
            );
        }
        Ok(())
    })
    .await
}

/// With every connection full and `max_connections` reached, a request waits as a pending
/// request for a stream to end (`max_pending_requests` bounds how many wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_full_connections_make_requests_pending() -> Result<()> {
    within(60, async {
        let up = EchoServer::start("up").await?;
        let (proxy, addr) = h2_streams_proxy(
            &up,
            "max_concurrent_streams: 1",
            "circuit_breakers: { thresholds: [{ max_connections: 1, max_pending_requests: 1 }] }\n",
        )
        .await?;
        let results = concurrent(&Http::h1(), addr, 3, Req::get("/delay/400")).await;
        let statuses: Vec<u16> = results
            .iter()
            .map(|r| r.as_ref().map_or(0, |r| r.status))
            .collect();
        let mut sorted = statuses.clone();
        sorted.sort();
        // One streams, one waits for it, the third finds the pending queue full.
        ensure!(sorted == [200, 200, 503], "statuses: {statuses:?}");
        ensure!(up.connections() == 1, "connections: {}", up.connections());
        proxy
            .wait_stat(
                "envoy_cluster_upstream_rq_pending_total",
                &[("envoy_cluster_name", "up")],
                "== 1",
                |v| v == 1.0,
            )
            .await?;
        Ok(())
    })
    .await
}

/// A cluster's max_requests_per_connection applies to its multiplexed HTTP/2 connection too:
/// after that many streams the next request opens a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstream_connection_is_replaced_after_max_requests() -> Result<()> {
    within(60, async {
        let up = EchoServer::start("up").await?;
        let port = free_port();
        let yaml = bootstrap(
            &[http_listener("main", port, &vhost_to("all", "\"*\"", "up")).build()],
            &[h2_cluster(
                "up",
                &[up.addr],
                "max_requests_per_connection: 2",
            )],
        );
        let proxy = Proxy::start(&yaml).await?;
        for i in 0..5 {
            let r = Http::h1().get(local(port), &format!("/r{i}")).await?;
            ensure!(r.status == 200, "request {i}: {r:?}");
        }
        ensure!(up.h2_requests() == 5, "h2 requests: {}", up.h2_requests());
        // 5 requests, 2 per connection: 3 connections.
        proxy
            .wait_stat(
                "envoy_cluster_upstream_cx_total",
                &[("envoy_cluster_name", "up")],
                "== 3",
                |v| v == 3.0,
            )
            .await?;
        Ok(())
    })
    .await
}
