//! End-to-end HTTP tests of the real `weft-proxy` binary with real clients: HTTP/1.1
//! (keep-alive, chunked upload, `Expect: 100-continue`, absolute-form), h2c, TLS with ALPN,
//! h2load, streaming and trailers, gRPC (h2c listener → h2 cluster), routing (virtual hosts,
//! path/header/method/query matching, direct responses, redirects, header mutation, no route)
//! and malformed requests.
//!
//! Each test starts its own upstreams and proxy on 127.0.0.1 and runs under a deadline; the
//! expectations are Envoy's semantics for the same bootstrap, never the current state of the
//! implementation.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use http_body_util::BodyExt;
use support::*;

/// Upstream `web` behind one HTTP listener that sends everything to it.
async fn web_proxy() -> Result<(EchoServer, Proxy, std::net::SocketAddr)> {
    let web = EchoServer::start("web").await?;
    let port = free_port();
    let proxy = Proxy::start(&simple_http_bootstrap(port, &[web.addr])).await?;
    Ok((web, proxy, local(port)))
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1, HTTP/2, TLS with curl
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keepalive_two_urls_share_one_connection() -> Result<()> {
    within(60, async {
        let (web, proxy, addr) = web_proxy().await?;
        let a = format!("http://{addr}/a");
        let b = format!("http://{addr}/b");
        let out = curl(&["-v", &a, &b]).await?;
        ensure!(out.ok(), "curl failed: {out}");
        ensure!(out.stdout == "webweb", "unexpected bodies: {out}");
        ensure!(
            out.stderr.contains("Re-using existing connection"),
            "the second request did not reuse the downstream connection: {out}"
        );
        ensure!(
            out.stderr.contains("x-envoy-upstream-service-time"),
            "proxied responses must carry x-envoy-upstream-service-time: {out}"
        );
        ensure!(
            web.requests() == 2,
            "upstream saw {} requests",
            web.requests()
        );
        proxy
            .wait_access_count("200 for /a and /b", 2, |l| {
                l.code == 200 && (l.path == "/a" || l.path == "/b") && l.flags.is_empty()
            })
            .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_chunked_upload_reaches_upstream_intact() -> Result<()> {
    within(60, async {
        let (web, proxy, addr) = web_proxy().await?;
        let data: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let file = proxy.dir().join("upload.bin");
        std::fs::write(&file, &data)?;
        let out = curl(&[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("http://{addr}/echo"),
        ])
        .await?;
        ensure!(out.ok(), "curl failed: {out}");
        ensure!(
            out.stdout.as_bytes() == data.as_slice(),
            "echoed body differs: {} bytes back, {} sent",
            out.stdout.len(),
            data.len()
        );
        ensure!(
            web.requests() == 1,
            "upstream saw {} requests",
            web.requests()
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_expect_100_continue_is_answered() -> Result<()> {
    within(60, async {
        let (_web, _proxy, addr) = web_proxy().await?;
        let body = "x".repeat(4096);
        // With a 10 s expect timeout, curl only sends the body early if it gets 100 Continue.
        let out = curl(&[
            "-v",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "10",
            "--data-binary",
            &body,
            &format!("http://{addr}/echo"),
        ])
        .await?;
        ensure!(out.ok(), "curl failed: {out}");
        ensure!(out.stdout == body, "echoed body differs: {out}");
        ensure!(
            out.stderr.contains("HTTP/1.1 100 Continue"),
            "no 100 Continue came back: {out}"
        );
        ensure!(
            out.elapsed < Duration::from_secs(5),
            "took {:?}: the body waited for the expect timeout",
            out.elapsed
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_absolute_form_request_via_curl_proxy() -> Result<()> {
    within(60, async {
        let web = EchoServer::start("web").await?;
        let port = free_port();
        let vhosts = r#"
            - name: svc
              domains: ["svc.test"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: web }
            - name: other
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                direct_response: { status: 404, body: { inline_string: "wrong vhost" } }
        "#;
        let yaml = bootstrap(
            &[http_listener("main", port, vhosts).build()],
            &[cluster("web", &[web.addr], "")],
        );
        let _proxy = Proxy::start(&yaml).await?;
        let out = curl(&[
            "-x",
            &format!("http://127.0.0.1:{port}"),
            "http://svc.test/headers?k=v",
        ])
        .await?;
        ensure!(out.ok(), "curl failed: {out}");
        let doc: serde_json::Value =
            serde_json::from_str(&out.stdout).with_context(|| format!("not JSON: {out}"))?;
        ensure!(doc["upstream"] == "web", "wrong upstream: {doc}");
        ensure!(doc["headers"]["host"] == "svc.test", "Host upstream: {doc}");
        ensure!(
            doc["path"] == "/headers?k=v",
            "upstream must get origin-form: {doc}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_with_curl() -> Result<()> {
    within(60, async {
        let (web, _proxy, addr) = web_proxy().await?;
        let out = curl(&[
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version} %{http_code}",
            &format!("http://{addr}/h2"),
        ])
        .await?;
        ensure!(out.ok(), "curl failed: {out}");
        ensure!(out.stdout == "web\n2 200", "unexpected: {out}");
        ensure!(web.requests() == 1);
        Ok(())
    })
    .await
}

/// A TLS listener (self-signed `cert.pem`/`key.pem` of the harness, ALPN h2 and http/1.1)
/// whose connection manager serves `vhosts` and logs to the access log file.
fn tls_listener_body(vhosts: &str) -> String {
    format!(
        r#"
            listener_filters:
            - name: envoy.filters.listener.tls_inspector
              typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }}
            filter_chains:
            - filter_chain_match: {{ transport_protocol: tls }}
              transport_socket:
                name: envoy.transport_sockets.tls
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
                  common_tls_context:
                    alpn_protocols: [h2, http/1.1]
                    tls_certificates:
                    - certificate_chain: {{ filename: "{{{{DIR}}}}/cert.pem" }}
                      private_key: {{ filename: "{{{{DIR}}}}/key.pem" }}
              filters:
{}
            "#,
        indent(&hcm_filter("tls", vhosts, FILE_ACCESS_LOG), 14)
    )
}

/// A cluster that follows the downstream protocol over TLS offers ALPN `h2` on the connections
/// that carry HTTP/2 and `http/1.1` on the others: the next hop (a weft TLS listener, which
/// picks its codec from ALPN) sees each request in the protocol the client used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_protocol_tls_cluster_negotiates_each_protocol() -> Result<()> {
    within(60, async {
        let web = EchoServer::start("web").await?;
        let back_port = free_port();
        let back = Proxy::start(&bootstrap(
            &[custom_listener(
                "tls",
                back_port,
                &tls_listener_body(&vhost_to("all", "\"*\"", "web")),
            )],
            &[cluster("web", &[web.addr], "")],
        ))
        .await?;
        let front_port = free_port();
        let tls_upstream = r#"
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    use_downstream_protocol_config: { http_protocol_options: {}, http2_protocol_options: {} }
transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
"#;
        let _front = Proxy::start(&bootstrap(
            &[http_listener("front", front_port, &vhost_to("all", "\"*\"", "back")).build()],
            &[cluster("back", &[local(back_port)], tls_upstream)],
        ))
        .await?;
        let r = Http::h2c().get(local(front_port), "/via-h2").await?;
        ensure!(
            r.status == 200 && r.upstream() == "web",
            "h2 through the TLS hop: {r:?}"
        );
        let r = Http::h1().get(local(front_port), "/via-h1").await?;
        ensure!(
            r.status == 200 && r.upstream() == "web",
            "h1 through the TLS hop: {r:?}"
        );
        back.wait_access("the h2 request arrived as HTTP/2", |l| {
            l.path == "/via-h2" && l.protocol == "HTTP/2"
        })
        .await?;
        back.wait_access("the h1 request arrived as HTTP/1.1", |l| {
            l.path == "/via-h1" && l.protocol == "HTTP/1.1"
        })
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_negotiates_h2_and_http11() -> Result<()> {
    within(60, async {
        let web = EchoServer::start("web").await?;
        let port = free_port();
        let body = tls_listener_body(&vhost_to("all", "\"*\"", "web"));
        let yaml = bootstrap(
            &[custom_listener("tls", port, &body)],
            &[cluster("web", &[web.addr], "")],
        );
        let _proxy = Proxy::start(&yaml).await?;
        let url = format!("https://127.0.0.1:{port}/tls");
        let h2 = curl(&[
            "-k",
            "--http2",
            "-w",
            "\n%{http_version} %{http_code}",
            &url,
        ])
        .await?;
        ensure!(h2.ok(), "curl --http2 failed: {h2}");
        ensure!(h2.stdout == "web\n2 200", "ALPN h2 expected: {h2}");
        let h1 = curl(&[
            "-k",
            "--http1.1",
            "-w",
            "\n%{http_version} %{http_code}",
            &url,
        ])
        .await?;
        ensure!(h1.ok(), "curl --http1.1 failed: {h1}");
        ensure!(h1.stdout == "web\n1.1 200", "ALPN http/1.1 expected: {h1}");
        ensure!(web.requests() == 2);
        Ok(())
    })
    .await
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) end at the proxy in both directions: the fixed ones
/// and those the `Connection` header names; end-to-end headers pass. The upstream is raw TCP so
/// that it can send exactly the header block under test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_both_ways() -> Result<()> {
    within(60, async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let up = l.local_addr()?;
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut c, _)) = l.accept().await {
                let seen_tx = seen_tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut b = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            let _ = seen_tx.send(String::from_utf8_lossy(&head).to_lowercase());
                            let answer = "HTTP/1.1 200 OK\r\n\
                                Connection: keep-alive, X-Hop-Resp\r\n\
                                X-Hop-Resp: secret\r\n\
                                Keep-Alive: timeout=5\r\n\
                                Proxy-Connection: keep-alive\r\n\
                                X-End-Resp: kept\r\n\
                                Content-Length: 2\r\n\r\nok";
                            if c.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match c.read(&mut b).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&b[..n]),
                            _ => return,
                        }
                    }
                });
            }
        });
        let port = free_port();
        let proxy = Proxy::start(&simple_http_bootstrap(port, &[up])).await?;
        let url = format!("http://{}/hop", local(port));
        for _ in 0..2 {
            // Twice: the second exchange rides the pooled upstream connection.
            let out = curl(&[
                "-si",
                "-H",
                "Connection: keep-alive, X-Hop-Req",
                "-H",
                "X-Hop-Req: secret",
                "-H",
                "Keep-Alive: 300",
                "-H",
                "Proxy-Connection: keep-alive",
                "-H",
                "X-End-Req: kept",
                &url,
            ])
            .await?;
            ensure!(out.ok(), "curl failed: {out}");
            let resp = out.stdout.to_lowercase();
            ensure!(resp.starts_with("http/1.1 200"), "{out}");
            ensure!(
                resp.contains("x-end-resp: kept"),
                "end-to-end header lost: {out}"
            );
            ensure!(resp.ends_with("ok"), "{out}");
            for hop in ["x-hop-resp", "keep-alive:", "proxy-connection"] {
                ensure!(
                    !resp.contains(hop),
                    "response hop-by-hop `{hop}` passed: {out}"
                );
            }
            let req = seen_rx
                .recv()
                .await
                .context("the upstream saw no request")?;
            ensure!(
                req.contains("x-end-req: kept"),
                "end-to-end header lost: {req}"
            );
            for hop in [
                "x-hop-req",
                "keep-alive:",
                "proxy-connection",
                "connection:",
            ] {
                ensure!(
                    !req.contains(hop),
                    "request hop-by-hop `{hop}` passed: {req}"
                );
            }
        }
        proxy
            .wait_access_count("two 200s", 2, |l| l.code == 200 && l.path == "/hop")
            .await?;
        Ok(())
    })
    .await
}

/// An upstream that fails after its response headers: the client's body is cut, and the
/// access log says the upstream did it (`UC` for a close mid-body, `UPE` for broken chunked
/// framing), never `DC` (the client did nothing wrong).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failing_mid_body_is_logged_as_the_upstreams_fault() -> Result<()> {
    within(60, async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let up = l.local_addr()?;
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut b = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match c.read(&mut b).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&b[..n]),
                            _ => return,
                        }
                    }
                    let answer: &[u8] = if buf.starts_with(b"GET /short") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this"
                    } else {
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"
                    };
                    let _ = c.write_all(answer).await;
                    // Then the connection closes.
                });
            }
        });
        let port = free_port();
        let proxy = Proxy::start(&simple_http_bootstrap(port, &[up])).await?;
        for (path, flag) in [("/short", "UC"), ("/badchunk", "UPE")] {
            let out = curl(&[&format!("http://{}{path}", local(port))]).await?;
            ensure!(!out.ok(), "{path}: a cut body must fail the client: {out}");
            proxy
                .wait_access(&format!("{path} 200 {flag}"), |l| {
                    l.path == path && l.code == 200 && l.has_flag(flag) && !l.has_flag("DC")
                })
                .await?;
        }
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Load with h2load
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_h2c_and_h1_all_succeed() -> Result<()> {
    within(120, async {
        let (web, _proxy, addr) = web_proxy().await?;
        let url = format!("http://{addr}/");
        let out = run_tool("h2load", &["-n", "2000", "-c", "4", "-m", "10", &url]).await?;
        let s = H2loadSummary::parse(&out.stdout).with_context(|| format!("no summary: {out}"))?;
        ensure!(
            s.total == 2000 && s.succeeded == 2000 && s.failed == 0 && s.errored == 0,
            "h2c: {s:?}\n{out}"
        );
        ensure!(s.status_2xx == 2000, "h2c: not all 2xx: {s:?}\n{out}");
        let out = run_tool("h2load", &["--h1", "-n", "1000", "-c", "4", &url]).await?;
        let s = H2loadSummary::parse(&out.stdout).with_context(|| format!("no summary: {out}"))?;
        ensure!(
            s.succeeded == 1000 && s.status_2xx == 1000,
            "h1: {s:?}\n{out}"
        );
        ensure!(web.requests() == 3000, "upstream saw {}", web.requests());
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Streaming, trailers, protocol translation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_response_is_not_buffered() -> Result<()> {
    within(60, async {
        let (_web, _proxy, addr) = web_proxy().await?;
        let start = Instant::now();
        let resp = Http::h1().raw(addr, Req::get("/stream")).await?;
        ensure!(resp.status() == 200, "status {}", resp.status());
        let mut body = resp.into_body();
        let mut got = Vec::new();
        let mut first_at = None;
        while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .context("body stalled")?
        {
            let frame = frame?;
            if let Some(d) = frame.data_ref() {
                if !d.is_empty() && first_at.is_none() {
                    first_at = Some(start.elapsed());
                }
                got.extend_from_slice(d);
            }
        }
        let total = start.elapsed();
        let expected: String = (0..STREAM_CHUNKS).map(|i| format!("chunk-{i}\n")).collect();
        ensure!(
            got == expected.as_bytes(),
            "body: {:?}",
            String::from_utf8_lossy(&got)
        );
        let first_at = first_at.context("no data")?;
        let span = STREAM_INTERVAL * (STREAM_CHUNKS as u32 - 1);
        ensure!(
            total >= span,
            "whole body after {total:?}, upstream needs {span:?}"
        );
        ensure!(
            first_at < span * 3 / 4,
            "first chunk only after {first_at:?}: the proxy buffered the response"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstream_trailers_and_protocol_translation() -> Result<()> {
    within(60, async {
        let web = EchoServer::start("web2").await?;
        let port = free_port();
        let yaml = bootstrap(
            &[http_listener("main", port, &vhost_to("all", "\"*\"", "web2")).build()],
            &[h2_cluster("web2", &[web.addr], "")],
        );
        let _proxy = Proxy::start(&yaml).await?;
        let addr = local(port);
        let r = Http::h2c().get(addr, "/trailers").await?;
        ensure!(r.status == 200, "status {}", r.status);
        ensure!(r.body.as_ref() == b"trailers-body", "body {:?}", r.text());
        let trailers = r
            .trailers
            .clone()
            .context("no trailers reached the h2 client")?;
        ensure!(
            trailers.get("x-trailer").and_then(|v| v.to_str().ok()) == Some("done"),
            "trailers: {trailers:?}"
        );
        // HTTP/1.1 downstream, HTTP/2 upstream.
        let r = Http::h1().get(addr, "/headers").await?;
        let doc = r.json()?;
        ensure!(doc["version"] == "HTTP/2.0", "upstream protocol: {doc}");
        ensure!(web.h2_requests() == web.requests() && web.requests() == 2);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_forwarding_headers() -> Result<()> {
    within(60, async {
        let (_web, _proxy, addr) = web_proxy().await?;
        let r = Http::h1()
            .send(addr, Req::get("/headers").host("any.test"))
            .await?;
        ensure!(r.status == 200, "status {}", r.status);
        ensure!(
            r.header("x-envoy-upstream-service-time")
                .is_some_and(|v| v.parse::<u64>().is_ok()),
            "x-envoy-upstream-service-time: {:?}",
            r.headers
        );
        let doc = r.json()?;
        ensure!(doc["headers"]["host"] == "any.test", "{doc}");
        ensure!(doc["headers"]["x-forwarded-proto"] == "http", "{doc}");
        ensure!(
            doc["headers"]["x-request-id"]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "x-request-id must be generated: {doc}"
        );
        Ok(())
    })
    .await
}

/// The router's `suppress_envoy_headers` and `dynamic_stats: false` (Envoy's advice for
/// benchmarks): no `x-envoy-*` header of the router's own — on a proxied response, on an
/// overflow reply, on a rewritten request — and no per-response cluster stats, where the
/// defaults add them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_suppresses_envoy_headers_and_dynamic_stats() -> Result<()> {
    within(60, async {
        for quiet in [false, true] {
            let up = EchoServer::start("up").await?;
            let port = free_port();
            let vhosts = "- name: all\n  domains: [\"*\"]\n  routes:\n  - match: { prefix: \"/old/\" }\n    route: { cluster: up, prefix_rewrite: \"/headers/\" }\n  - match: { prefix: \"/\" }\n    route: { cluster: up }\n";
            let mut listener = http_listener("main", port, vhosts).build();
            if quiet {
                let router = "envoy.extensions.filters.http.router.v3.Router";
                listener = listener.replace(
                    &format!("{router} }}"),
                    &format!("{router}, suppress_envoy_headers: true, dynamic_stats: false }}"),
                );
                ensure!(listener.contains("suppress_envoy_headers"), "{listener}");
            }
            let yaml = bootstrap(
                &[listener],
                &[cluster(
                    "up",
                    &[up.addr],
                    "circuit_breakers: { thresholds: [{ max_requests: 1 }] }\n",
                )],
            );
            let proxy = Proxy::start(&yaml).await?;
            let addr = local(port);

            let r = Http::h1().get(addr, "/old/x").await?;
            ensure!(r.status == 200, "{quiet}: {r:?}");
            let service_time = r.header("x-envoy-upstream-service-time").is_some();
            let doc = r.json()?;
            let original_path = doc["headers"]["x-envoy-original-path"] == "/old/x";
            // Two at once against max_requests 1: one is refused with 503 UO.
            let results = concurrent(&Http::h1(), addr, 2, Req::get("/delay/300")).await;
            let refused = results
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .find(|r| r.status == 503)
                .with_context(|| format!("{quiet}: no overflow among {results:?}"))?;
            let overloaded = refused.header("x-envoy-overloaded") == Some("true");
            ensure!(
                [service_time, original_path, overloaded] == [!quiet; 3],
                "{quiet}: x-envoy-upstream-service-time {service_time}, \
                 x-envoy-original-path {original_path}, x-envoy-overloaded {overloaded}"
            );

            // Per-response cluster stats (upstream_rq_xx) count the two 200s only by default;
            // upstream_rq_total counts them either way.
            let cl = [("envoy_cluster_name", "up")];
            proxy
                .wait_stat("envoy_cluster_upstream_rq_total", &cl, "== 2", |v| v == 2.0)
                .await?;
            let stats = proxy.stats().await?;
            let ok = [("envoy_response_code_class", "2"), ("envoy_cluster_name", "up")];
            let counted = stats.value("envoy_cluster_upstream_rq_xx", &ok).unwrap_or(0.0);
            ensure!(
                counted == if quiet { 0.0 } else { 2.0 },
                "{quiet}: upstream_rq_xx 2xx = {counted}"
            );
        }
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------------------------

async fn grpc_proxy() -> Result<(GrpcServer, Proxy, std::net::SocketAddr)> {
    let grpc = GrpcServer::start().await?;
    let port = free_port();
    let yaml = bootstrap(
        &[http_listener("grpc", port, &vhost_to("all", "\"*\"", "grpc")).build()],
        &[h2_cluster("grpc", &[grpc.addr], "")],
    );
    let proxy = Proxy::start(&yaml).await?;
    Ok((grpc, proxy, local(port)))
}

fn discovery(i: usize) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: format!("type.weft.test/{i}"),
        version_info: format!("v{i}"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bidi_streaming_through_proxy() -> Result<()> {
    within(60, async {
        let (grpc, _proxy, addr) = grpc_proxy().await?;
        let mut client = AggregatedDiscoveryServiceClient::new(grpc_channel(addr).await?);
        let (tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(4);
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        tx.send(discovery(0)).await?;
        let mut inbound = client
            .stream_aggregated_resources(outbound)
            .await
            .context("opening the stream")?
            .into_inner();
        // Strict ping-pong: each response must arrive before the next request is sent.
        for i in 0..5 {
            if i > 0 {
                tx.send(discovery(i)).await?;
            }
            let m = tokio::time::timeout(Duration::from_secs(5), inbound.message())
                .await
                .with_context(|| format!("no response {i} within 5 s"))??
                .with_context(|| format!("stream ended before response {i}"))?;
            ensure!(
                m.type_url == format!("type.weft.test/{i}")
                    && m.version_info == format!("v{i}")
                    && m.nonce == (i + 1).to_string(),
                "response {i}: {m:?}"
            );
        }
        drop(tx);
        let end = tokio::time::timeout(Duration::from_secs(5), inbound.message())
            .await
            .context("stream did not end after the client half-closed")??;
        ensure!(end.is_none(), "unexpected extra message {end:?}");
        ensure!(grpc.streams() == 1 && grpc.messages() == 5);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_stream_status_in_trailers_after_messages() -> Result<()> {
    within(60, async {
        let (_grpc, _proxy, addr) = grpc_proxy().await?;
        let mut client = AggregatedDiscoveryServiceClient::new(grpc_channel(addr).await?);
        let reqs = vec![
            discovery(0),
            discovery(1),
            DiscoveryRequest {
                type_url: ABORT_TYPE_URL.to_string(),
                ..Default::default()
            },
        ];
        let mut inbound = client
            .stream_aggregated_resources(futures_util::stream::iter(reqs))
            .await?
            .into_inner();
        for i in 0..2 {
            let m = tokio::time::timeout(Duration::from_secs(5), inbound.message())
                .await
                .context("timeout")??
                .context("ended early")?;
            ensure!(m.type_url == format!("type.weft.test/{i}"), "{m:?}");
        }
        let err = match tokio::time::timeout(Duration::from_secs(5), inbound.message())
            .await
            .context("timeout waiting for the final status")?
        {
            Err(status) => status,
            Ok(m) => bail!("expected ABORTED, got {m:?}"),
        };
        ensure!(err.code() == tonic::Code::Aborted, "{err:?}");
        ensure!(err.message() == "aborted by request", "{err:?}");
        ensure!(
            err.metadata()
                .get("x-test-detail")
                .and_then(|v| v.to_str().ok())
                == Some("injected"),
            "trailer metadata lost: {err:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_status_codes_and_trailers_preserved() -> Result<()> {
    within(60, async {
        let (grpc, _proxy, addr) = grpc_proxy().await?;
        let mut client = AuthorizationClient::new(grpc_channel(addr).await?);
        client
            .check(CheckRequest::default())
            .await
            .context("OK call")?;
        for code in [
            tonic::Code::NotFound,
            tonic::Code::PermissionDenied,
            tonic::Code::Unauthenticated,
            tonic::Code::FailedPrecondition,
            tonic::Code::Internal,
            tonic::Code::Unavailable,
        ] {
            grpc.fail_first(1, code);
            let before = grpc.checks();
            let err = match client.check(CheckRequest::default()).await {
                Err(e) => e,
                Ok(r) => bail!("{code:?}: expected an error, got {r:?}"),
            };
            ensure!(err.code() == code, "sent {code:?}, client got {err:?}");
            ensure!(err.message() == format!("injected {code:?}"), "{err:?}");
            ensure!(
                err.metadata()
                    .get("x-test-detail")
                    .and_then(|v| v.to_str().ok())
                    == Some("injected"),
                "{code:?}: metadata lost: {err:?}"
            );
            ensure!(
                grpc.checks() == before + 1,
                "{code:?}: no retry policy, yet upstream saw {} calls",
                grpc.checks() - before
            );
        }
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

const ROUTING_VHOSTS: &str = r#"
- name: exact
  domains: ["exact.test"]
  routes:
  - match: { prefix: "/" }
    direct_response: { status: 200, body: { inline_string: "vh-exact" } }
- name: wildcard
  domains: ["*.wild.test"]
  routes:
  - match: { prefix: "/" }
    direct_response: { status: 200, body: { inline_string: "vh-wild" } }
- name: with-port
  domains: ["port.test:8080"]
  routes:
  - match: { prefix: "/" }
    direct_response: { status: 200, body: { inline_string: "vh-port" } }
- name: main
  domains: ["route.test"]
  routes:
  - match: { path: "/exact" }
    direct_response: { status: 200, body: { inline_string: "r-path-exact" } }
  - match: { prefix: "/prefix/" }
    direct_response: { status: 200, body: { inline_string: "r-prefix" } }
  - match: { safe_regex: { regex: "^/regex/[0-9]+$" } }
    direct_response: { status: 200, body: { inline_string: "r-regex" } }
  - match:
      prefix: "/hdr/exact"
      headers: [{ name: x-t, string_match: { exact: "v1" } }]
    direct_response: { status: 200, body: { inline_string: "r-hdr-exact" } }
  - match:
      prefix: "/hdr/prefix"
      headers: [{ name: x-t, string_match: { prefix: "ab" } }]
    direct_response: { status: 200, body: { inline_string: "r-hdr-prefix" } }
  - match:
      prefix: "/hdr/suffix"
      headers: [{ name: x-t, string_match: { suffix: "yz" } }]
    direct_response: { status: 200, body: { inline_string: "r-hdr-suffix" } }
  - match:
      prefix: "/hdr/regex"
      headers: [{ name: x-t, string_match: { safe_regex: { regex: "^[0-9]{3}$" } } }]
    direct_response: { status: 200, body: { inline_string: "r-hdr-regex" } }
  - match:
      prefix: "/hdr/present"
      headers: [{ name: x-t, present_match: true }]
    direct_response: { status: 200, body: { inline_string: "r-hdr-present" } }
  - match:
      prefix: "/hdr/absent"
      headers: [{ name: x-t, present_match: true, invert_match: true }]
    direct_response: { status: 200, body: { inline_string: "r-hdr-absent" } }
  - match: { prefix: "/hdr/" }
    direct_response: { status: 200, body: { inline_string: "r-hdr-fallback" } }
  - match:
      prefix: "/method"
      headers: [{ name: ":method", string_match: { exact: "POST" } }]
    direct_response: { status: 200, body: { inline_string: "r-method-post" } }
  - match: { prefix: "/method" }
    direct_response: { status: 200, body: { inline_string: "r-method-other" } }
  - match:
      prefix: "/query"
      query_parameters: [{ name: q, string_match: { exact: "1" } }]
    direct_response: { status: 200, body: { inline_string: "r-query-exact" } }
  - match:
      prefix: "/query"
      query_parameters: [{ name: flag, present_match: true }]
    direct_response: { status: 200, body: { inline_string: "r-query-present" } }
  - match: { prefix: "/query" }
    direct_response: { status: 200, body: { inline_string: "r-query-fallback" } }
  - match: { prefix: "/direct" }
    direct_response: { status: 418, body: { inline_string: "teapot" } }
  - match: { prefix: "/redirect" }
    redirect: { host_redirect: "new.test", path_redirect: "/moved", response_code: MOVED_PERMANENTLY }
  - match: { path: "/exact-old" }
    route: { cluster: web, prefix_rewrite: "/headers" }
  - match: { prefix: "/up/" }
    route: { cluster: web, prefix_rewrite: "/" }
    request_headers_to_add:
    - header: { key: x-added, value: "req-added" }
    request_headers_to_remove: [x-remove-me]
    response_headers_to_add:
    - header: { key: x-resp-added, value: "resp-added" }
    response_headers_to_remove: [x-echo-extra]
"#;

async fn routing_proxy() -> Result<(EchoServer, Proxy, std::net::SocketAddr)> {
    let web = EchoServer::start("web").await?;
    let port = free_port();
    let yaml = bootstrap(
        &[http_listener("main", port, ROUTING_VHOSTS).build()],
        &[cluster("web", &[web.addr], "")],
    );
    let proxy = Proxy::start(&yaml).await?;
    Ok((web, proxy, local(port)))
}

/// Sends `req` and checks status and body.
async fn expect(
    http: &Http,
    addr: std::net::SocketAddr,
    req: Req,
    status: u16,
    body: &str,
) -> Result<Resp> {
    let what = format!(
        "{} {} host={:?} headers={:?}",
        req.method, req.path, req.host, req.headers
    );
    let r = http.send(addr, req).await.with_context(|| what.clone())?;
    ensure!(
        r.status == status && r.text() == body,
        "{what}: expected {status} {body:?}, got {} {:?}",
        r.status,
        r.text()
    );
    Ok(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_virtual_host_by_authority() -> Result<()> {
    within(60, async {
        let (_web, _proxy, addr) = routing_proxy().await?;
        let h = Http::h1();
        for (host, body) in [
            ("exact.test", "vh-exact"),
            ("EXACT.test", "vh-exact"),
            ("a.wild.test", "vh-wild"),
            ("x.y.wild.test", "vh-wild"),
            ("port.test:8080", "vh-port"),
            ("route.test", "r-path-exact"),
        ] {
            expect(&h, addr, Req::get("/exact").host(host), 200, body).await?;
        }
        for host in ["wild.test", "port.test:9090", "nowhere.test"] {
            let r = h.send(addr, Req::get("/exact").host(host)).await?;
            ensure!(
                r.status == 404,
                "host {host}: expected 404 NR, got {}",
                r.status
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_path_exact_prefix_regex() -> Result<()> {
    within(60, async {
        let (_web, _proxy, addr) = routing_proxy().await?;
        let h = Http::h1();
        let host = "route.test";
        expect(&h, addr, Req::get("/exact").host(host), 200, "r-path-exact").await?;
        expect(
            &h,
            addr,
            Req::get("/exact?x=1").host(host),
            200,
            "r-path-exact",
        )
        .await?;
        expect(
            &h,
            addr,
            Req::get("/prefix/a/b").host(host),
            200,
            "r-prefix",
        )
        .await?;
        expect(&h, addr, Req::get("/regex/123").host(host), 200, "r-regex").await?;
        for path in ["/exact/more", "/prefix", "/regex/12a", "/regex/"] {
            let r = h.send(addr, Req::get(path).host(host)).await?;
            ensure!(
                r.status == 404,
                "{path}: expected 404, got {} {}",
                r.status,
                r.text()
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_header_matchers() -> Result<()> {
    within(60, async {
        let (_web, _proxy, addr) = routing_proxy().await?;
        let h = Http::h1();
        let g = |p: &str| Req::get(p).host("route.test");
        let cases: Vec<(Req, &str)> = vec![
            (g("/hdr/exact").header("x-t", "v1"), "r-hdr-exact"),
            (g("/hdr/exact").header("x-t", "v10"), "r-hdr-fallback"),
            (g("/hdr/prefix").header("x-t", "abc"), "r-hdr-prefix"),
            (g("/hdr/prefix").header("x-t", "xab"), "r-hdr-fallback"),
            (g("/hdr/suffix").header("x-t", "xyz"), "r-hdr-suffix"),
            (g("/hdr/suffix").header("x-t", "yzx"), "r-hdr-fallback"),
            (g("/hdr/regex").header("x-t", "123"), "r-hdr-regex"),
            (g("/hdr/regex").header("x-t", "1234"), "r-hdr-fallback"),
            (g("/hdr/present").header("x-t", ""), "r-hdr-present"),
            (g("/hdr/present").header("x-t", "anything"), "r-hdr-present"),
            (g("/hdr/present"), "r-hdr-fallback"),
            (g("/hdr/absent"), "r-hdr-absent"),
            (g("/hdr/absent").header("x-t", "1"), "r-hdr-fallback"),
        ];
        for (req, body) in cases {
            expect(&h, addr, req, 200, body).await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_method_and_query_parameters() -> Result<()> {
    within(60, async {
        let (_web, _proxy, addr) = routing_proxy().await?;
        let h = Http::h1();
        let host = "route.test";
        expect(
            &h,
            addr,
            Req::post("/method", "x").host(host),
            200,
            "r-method-post",
        )
        .await?;
        expect(
            &h,
            addr,
            Req::get("/method").host(host),
            200,
            "r-method-other",
        )
        .await?;
        expect(
            &h,
            addr,
            Req::get("/method").method("PUT").host(host),
            200,
            "r-method-other",
        )
        .await?;
        expect(
            &h,
            addr,
            Req::get("/query?q=1").host(host),
            200,
            "r-query-exact",
        )
        .await?;
        expect(
            &h,
            addr,
            Req::get("/query?a=b&q=1").host(host),
            200,
            "r-query-exact",
        )
        .await?;
        expect(
            &h,
            addr,
            Req::get("/query?q=2").host(host),
            200,
            "r-query-fallback",
        )
        .await?;
        expect(
            &h,
            addr,
            Req::get("/query?flag").host(host),
            200,
            "r-query-present",
        )
        .await?;
        expect(
            &h,
            addr,
            Req::get("/query?flag=0").host(host),
            200,
            "r-query-present",
        )
        .await?;
        expect(
            &h,
            addr,
            Req::get("/query").host(host),
            200,
            "r-query-fallback",
        )
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_direct_response_and_redirect() -> Result<()> {
    within(60, async {
        let (web, _proxy, addr) = routing_proxy().await?;
        let h = Http::h1();
        expect(
            &h,
            addr,
            Req::get("/direct").host("route.test"),
            418,
            "teapot",
        )
        .await?;
        let r = h
            .send(addr, Req::get("/redirect/x").host("route.test"))
            .await?;
        ensure!(r.status == 301, "redirect status {}", r.status);
        ensure!(
            r.header("location") == Some("http://new.test/moved"),
            "location: {:?}",
            r.header("location")
        );
        ensure!(
            web.requests() == 0,
            "local replies must not reach the upstream"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_header_mutation_and_prefix_rewrite() -> Result<()> {
    within(60, async {
        let (web, _proxy, addr) = routing_proxy().await?;
        let r = Http::h1()
            .send(
                addr,
                Req::get("/up/headers")
                    .host("route.test")
                    .header("x-remove-me", "please")
                    .header("x-keep-me", "yes"),
            )
            .await?;
        ensure!(r.status == 200, "status {} {}", r.status, r.text());
        ensure!(r.upstream() == "web");
        let doc = r.json()?;
        ensure!(doc["path"] == "/headers", "prefix_rewrite: {doc}");
        ensure!(
            doc["headers"]["x-added"] == "req-added",
            "request_headers_to_add: {doc}"
        );
        ensure!(
            doc["headers"].get("x-remove-me").is_none(),
            "request_headers_to_remove: {doc}"
        );
        ensure!(doc["headers"]["x-keep-me"] == "yes", "{doc}");
        ensure!(
            r.header("x-resp-added") == Some("resp-added"),
            "{:?}",
            r.headers
        );
        ensure!(
            r.header("x-echo-extra").is_none(),
            "response_headers_to_remove: {:?}",
            r.headers
        );
        ensure!(web.requests() == 1);
        // On an exact path match, prefix_rewrite swaps the whole path; the query stays.
        let r = Http::h1()
            .send(addr, Req::get("/exact-old?x=1").host("route.test"))
            .await?;
        ensure!(r.status == 200, "status {} {}", r.status, r.text());
        let doc = r.json()?;
        ensure!(
            doc["path"] == "/headers?x=1",
            "prefix_rewrite on a path match: {doc}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_no_route_is_404_with_nr_flag() -> Result<()> {
    within(60, async {
        let (web, proxy, addr) = routing_proxy().await?;
        let h = Http::h1();
        let r = h
            .send(addr, Req::get("/nothing-here").host("route.test"))
            .await?;
        ensure!(r.status == 404, "status {}", r.status);
        let r = h
            .send(addr, Req::get("/nr-unknown-host").host("unknown.test"))
            .await?;
        ensure!(r.status == 404, "status {}", r.status);
        for path in ["/nothing-here", "/nr-unknown-host"] {
            proxy
                .wait_access(&format!("404 NR for {path}"), |l| {
                    l.path == path && l.code == 404 && l.has_flag("NR")
                })
                .await?;
        }
        ensure!(web.requests() == 0);
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Malformed HTTP/1.1
// ---------------------------------------------------------------------------------------------

/// Both framings at once: handled as RFC 9112 §6.1 allows — Transfer-Encoding wins and the
/// connection is closed after the response — so bytes hidden behind the chunked body can never
/// be read as a second (smuggled) request. See docs/ARCHITECTURE.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_chunked_cannot_smuggle_a_request() -> Result<()> {
    within(60, async {
        let (web, proxy, addr) = web_proxy().await?;
        let before = web.requests();
        let attack = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut s = connect(addr).await?;
        tokio::io::AsyncWriteExt::write_all(&mut s, attack).await?;
        let mut all = Vec::new();
        // The proxy must answer once and close; reading to EOF proves the close.
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut all),
        )
        .await
        .context("connection was not closed after a request with both framings")??;
        let text = String::from_utf8_lossy(&all);
        ensure!(text.matches("HTTP/1.1 ").count() == 1, "exactly one response expected: {text}");
        ensure!(web.requests() == before + 1, "the upstream saw {} requests", web.requests() - before);
        ensure!(proxy.exit_status().is_none(), "proxy died");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http1_is_rejected_and_proxy_keeps_serving() -> Result<()> {
    within(90, async {
        let (web, proxy, addr) = web_proxy().await?;
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(70 * 1024)
        );
        // (what, bytes, allowed statuses, whether the request head is valid: a streaming proxy
        // may already have forwarded a valid head when the body turns out to be bad).
        let cases: Vec<(&str, Vec<u8>, &[u16], bool)> = vec![
            ("headers over 60 KiB", big.into_bytes(), &[431, 400], false),
            (
                "bad chunk size",
                b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n"
                    .to_vec(),
                &[400],
                true,
            ),
            (
                "garbage request line",
                b"GARBAGE\x01\x02 / HTTP/1.1\r\n\r\n".to_vec(),
                &[400],
                false,
            ),
            (
                "invalid header name",
                b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n".to_vec(),
                &[400],
                false,
            ),
        ];
        let mut problems = Vec::new();
        for (what, bytes, allowed, head_ok) in cases {
            let before = web.requests();
            let head = raw_http(addr, &bytes)
                .await
                .with_context(|| what.to_string())?;
            let status = status_of(&head);
            if !status.is_some_and(|s| allowed.contains(&s)) {
                problems.push(format!(
                    "{what}: expected one of {allowed:?}, got {:?}",
                    head.lines().next()
                ));
            }
            if !head_ok && web.requests() != before {
                problems.push(format!(
                    "{what}: a malformed request head must not reach the upstream"
                ));
            }
            ensure!(
                proxy.exit_status().is_none(),
                "proxy died after {what}: {:?}; before that: {problems:?}",
                proxy.exit_status()
            );
        }
        ensure!(problems.is_empty(), "{problems:#?}");
        let r = Http::h1().get(addr, "/after").await?;
        ensure!(r.status == 200 && r.upstream() == "web", "proxy no longer serves: {r:?}");
        Ok(())
    })
    .await
}
