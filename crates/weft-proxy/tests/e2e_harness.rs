//! Self-checks of the e2e harness (`support/`), without the proxy: the upstream test servers,
//! the clients, the external tools and the parsers must behave as the e2e tests assume, so that
//! an e2e failure always points at the proxy and never at the harness.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_server_paths() -> Result<()> {
    within(30, async {
        let s = EchoServer::start("e1").await?;
        let h = Http::h1();
        let r = h.get(s.addr, "/").await?;
        ensure!(
            r.status == 200 && r.text() == "e1" && r.upstream() == "e1",
            "{r:?}"
        );
        ensure!(r.header("x-echo-extra") == Some("remove-me"));
        let r = h.get(s.addr, "/any/prefix/status/503").await?;
        ensure!(r.status == 503 && r.upstream() == "e1");
        let r = h
            .send(
                s.addr,
                Req::get("/headers?a=b").host("h.test").header("x-k", "v"),
            )
            .await?;
        let doc = r.json()?;
        ensure!(
            doc["headers"]["host"] == "h.test" && doc["headers"]["x-k"] == "v",
            "{doc}"
        );
        ensure!(
            doc["path"] == "/headers?a=b" && doc["version"] == "HTTP/1.1",
            "{doc}"
        );
        let r = h.send(s.addr, Req::post("/echo", "hello body")).await?;
        ensure!(r.text() == "hello body" && r.header("x-body-len") == Some("10"));
        let t = Instant::now();
        let r = h.get(s.addr, "/delay/200/status/201").await?;
        ensure!(r.status == 201 && t.elapsed() >= Duration::from_millis(200));
        ensure!(
            h.get(s.addr, "/reset").await.is_err(),
            "/reset must not answer"
        );
        let r = h.get(s.addr, "/stream").await?;
        ensure!(r.text().lines().count() == STREAM_CHUNKS, "{r:?}");
        ensure!(s.requests() == 7, "requests {}", s.requests());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_server_modes_and_counters() -> Result<()> {
    within(30, async {
        let s = EchoServer::start("e2").await?;
        let h = Http::h1();
        s.fail_first(2, 502);
        for _ in 0..2 {
            ensure!(h.get(s.addr, "/").await?.status == 502);
        }
        ensure!(h.get(s.addr, "/").await?.status == 200);
        s.reset_first(1);
        ensure!(h.get(s.addr, "/").await.is_err());
        ensure!(h.get(s.addr, "/").await?.status == 200);
        s.delay_first(1, 300);
        let t = Instant::now();
        ensure!(h.get(s.addr, "/").await?.status == 200);
        ensure!(t.elapsed() >= Duration::from_millis(300));
        s.reset_counters();
        let results = concurrent(&h, s.addr, 4, Req::get("/delay/300")).await;
        ensure!(
            results
                .iter()
                .all(|r| r.as_ref().is_ok_and(|r| r.status == 200))
        );
        ensure!(
            s.max_active() == 4 && s.requests() == 4,
            "max_active {}",
            s.max_active()
        );
        ensure!(s.active() == 0);
        // h2c prior knowledge, trailers.
        let r = Http::h2c().get(s.addr, "/trailers").await?;
        ensure!(r.version == http::Version::HTTP_2 && r.text() == "trailers-body");
        let t = r.trailers.context("trailers")?;
        ensure!(t.get("x-trailer").is_some_and(|v| v == "done"));
        ensure!(s.h2_requests() == 1);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_banner_and_websocket() -> Result<()> {
    within(30, async {
        let echo = TcpEcho::start().await?;
        let mut c = connect(echo.addr).await?;
        c.write_all(b"ping").await?;
        ensure!(read_n(&mut c, 4, Duration::from_secs(2)).await? == b"ping");
        ensure!(echo.connections() == 1);

        let banner = BannerServer::start().await?;
        let mut c = connect(banner.addr()).await?;
        ensure!(read_n(&mut c, BANNER.len(), Duration::from_secs(2)).await? == BANNER);

        let ws = WsEcho::start().await?;
        let mut c = ws_connect(ws.addr, &ws.addr.to_string(), "/").await?;
        c.send(Message::text("hi")).await?;
        let m = tokio::time::timeout(Duration::from_secs(2), c.next())
            .await?
            .context("closed")??;
        ensure!(m.to_text()? == "hi");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_server_direct() -> Result<()> {
    within(30, async {
        let g = GrpcServer::start().await?;
        let ch = grpc_channel(g.addr).await?;
        let mut auth = AuthorizationClient::new(ch.clone());
        auth.check(CheckRequest::default()).await?;
        g.fail_first(1, tonic::Code::Unavailable);
        let e = match auth.check(CheckRequest::default()).await {
            Err(e) => e,
            Ok(_) => bail!("expected UNAVAILABLE"),
        };
        ensure!(e.code() == tonic::Code::Unavailable && e.message() == "injected Unavailable");
        ensure!(e.metadata().get("x-test-detail").is_some());
        ensure!(g.checks() == 2);

        let mut ads = AggregatedDiscoveryServiceClient::new(ch);
        let reqs = (0..3).map(|i| DiscoveryRequest {
            type_url: format!("t/{i}"),
            ..Default::default()
        });
        let mut s = ads
            .stream_aggregated_resources(futures_util::stream::iter(reqs.collect::<Vec<_>>()))
            .await?
            .into_inner();
        for i in 0..3 {
            let m = s.message().await?.context("ended")?;
            ensure!(m.type_url == format!("t/{i}") && m.nonce == (i + 1).to_string());
        }
        ensure!(s.message().await?.is_none());
        ensure!(g.streams() == 1 && g.messages() == 3);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_h2load_work_against_the_echo_server() -> Result<()> {
    within(60, async {
        let s = EchoServer::start("direct").await?;
        let out = curl(&[
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version} %{http_code}",
            &format!("http://{}/", s.addr),
        ])
        .await?;
        ensure!(out.stdout == "direct\n2 200", "{out}");
        let out = run_tool(
            "h2load",
            &[
                "-n",
                "200",
                "-c",
                "2",
                "-m",
                "5",
                &format!("http://{}/", s.addr),
            ],
        )
        .await?;
        let sum = H2loadSummary::parse(&out.stdout).context("summary")?;
        ensure!(sum.succeeded == 200 && sum.status_2xx == 200, "{sum:?}");
        Ok(())
    })
    .await
}

#[test]
fn parsers() -> Result<()> {
    let stats = Stats::parse(
        "# TYPE envoy_cluster_upstream_rq_total counter\n\
         envoy_cluster_upstream_rq_total{envoy_cluster_name=\"web\"} 12\n\
         envoy_cluster_upstream_rq_total{envoy_cluster_name=\"other\"} 3\n\
         envoy_server_live 1\n\
         envoy_x_bucket{envoy_cluster_name=\"a,b\",le=\"+Inf\"} 4\n",
    );
    ensure!(
        stats.value(
            "envoy_cluster_upstream_rq_total",
            &[("envoy_cluster_name", "web")]
        ) == Some(12.0)
    );
    ensure!(stats.value("envoy_cluster_upstream_rq_total", &[]) == Some(15.0));
    ensure!(stats.value("envoy_server_live", &[]) == Some(1.0));
    ensure!(
        stats.value(
            "envoy_x_bucket",
            &[("envoy_cluster_name", "a,b"), ("le", "+Inf")]
        ) == Some(4.0)
    );
    ensure!(stats.value("missing", &[]).is_none());

    let l = AccessLine::parse(
        "[2024-01-01T00:00:00.000Z] \"GET /a?b HTTP/1.1\" 503 UF,URX 0 91 3 - \"-\" \"curl/7.88.1\" \"id\" \"x\" \"127.0.0.1:1\"",
    )
    .context("parse")?;
    ensure!(l.method == "GET" && l.path == "/a?b" && l.code == 503);
    ensure!(l.has_flag("URX") && l.has_flag("UF") && !l.has_flag("UO"));
    let l = AccessLine::parse("[t] \"GET / HTTP/1.1\" 200 - 0 2 1 1 \"-\"").context("parse")?;
    ensure!(l.flags.is_empty());

    let h = H2loadSummary::parse(
        "finished in 1.00s\nrequests: 2000 total, 2000 started, 2000 done, 1990 succeeded, 10 failed, 0 errored, 0 timeout\nstatus codes: 1990 2xx, 0 3xx, 0 4xx, 10 5xx\n",
    )
    .context("h2load")?;
    ensure!(h.total == 2000 && h.succeeded == 1990 && h.failed == 10 && h.status_2xx == 1990);

    ensure!(indent("\n    a:\n      b: 1\n\n", 2) == "  a:\n    b: 1\n");
    ensure!(status_of("HTTP/1.1 431 Request Header Fields Too Large\r\n") == Some(431));
    ensure!(status_of("garbage").is_none());
    ensure!(render("p: {{X}} {{X}}", &[("X", "1")]) == "p: 1 1");
    Ok(())
}
