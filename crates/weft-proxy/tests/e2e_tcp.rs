//! End-to-end tests of `weft-proxy`'s connection-level features with real clients: WebSocket
//! upgrades, CONNECT tunnels (raw and `curl -p`), protocol detection with `http_inspector`
//! (HTTP/1.1, h2c and raw TCP on one port), server-first protocols on a tcp_proxy listener,
//! and tcp_proxy byte fidelity with half-close.
//!
//! Everything runs on 127.0.0.1 under a deadline; expectations follow Envoy's semantics.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_proxy() -> Result<()> {
    within(60, async {
        let ws = WsEcho::start().await?;
        let web = EchoServer::start("web").await?;
        let port = free_port();
        let vhosts = r#"
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/ws" }
                route: { cluster: ws }
              - match: { prefix: "/" }
                route: { cluster: web }
        "#;
        let yaml = bootstrap(
            &[http_listener("main", port, vhosts)
                .hcm("upgrade_configs: [{ upgrade_type: websocket }]")
                .build()],
            &[
                cluster("ws", &[ws.addr], ""),
                cluster("web", &[web.addr], ""),
            ],
        );
        let proxy = Proxy::start(&yaml).await?;
        let (mut c, head) = ws_handshake(local(port), "ws.test", "/ws/chat").await?;
        // The router's header is on the 101 as on any proxied response.
        ensure!(
            head.contains_key("x-envoy-upstream-service-time"),
            "101 without x-envoy-upstream-service-time: {head:?}"
        );
        for i in 0..5 {
            let text = format!("message {i}");
            c.send(Message::text(text.clone())).await?;
            let m = tokio::time::timeout(Duration::from_secs(5), c.next())
                .await
                .with_context(|| format!("no echo for message {i}"))?
                .context("WebSocket closed")??;
            ensure!(m.to_text()? == text, "echo {i}: {m:?}");
        }
        let blob: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
        c.send(Message::binary(blob.clone())).await?;
        let m = tokio::time::timeout(Duration::from_secs(5), c.next())
            .await
            .context("no binary echo")?
            .context("WebSocket closed")??;
        ensure!(
            m.into_data().as_ref() == blob.as_slice(),
            "binary echo differs"
        );
        c.close(None).await?;
        // Plain HTTP on the same listener still works.
        let r = Http::h1().get(local(port), "/plain").await?;
        ensure!(r.status == 200 && r.upstream() == "web");
        proxy
            .wait_access("the upgrade was logged as 101", |l| {
                l.path == "/ws/chat" && l.code == 101
            })
            .await?;
        Ok(())
    })
    .await
}

/// A WebSocket is a stream: the connection manager's stream_idle_timeout closes it once no
/// frame has moved for that long, and not while messages keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_ends_after_stream_idle_timeout() -> Result<()> {
    within(60, async {
        let ws = WsEcho::start().await?;
        let port = free_port();
        let yaml = bootstrap(
            &[http_listener("main", port, &vhost_to("all", "\"*\"", "ws"))
                .hcm("upgrade_configs: [{ upgrade_type: websocket }]\nstream_idle_timeout: 0.4s")
                .build()],
            &[cluster("ws", &[ws.addr], "")],
        );
        let _proxy = Proxy::start(&yaml).await?;
        let mut c = ws_connect(local(port), "ws.test", "/ws/chat").await?;
        // Busy for 1.2 s, three times the idle timeout: never cut.
        for i in 0..8 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            c.send(Message::text(format!("m{i}"))).await?;
            let m = tokio::time::timeout(Duration::from_secs(5), c.next())
                .await
                .with_context(|| format!("no echo for message {i}"))?
                .context("WebSocket closed while busy")??;
            ensure!(m.to_text()? == format!("m{i}"), "echo {i}: {m:?}");
        }
        // Then silent: the proxy closes it after about 400 ms.
        let t = Instant::now();
        let end = tokio::time::timeout(Duration::from_secs(5), c.next())
            .await
            .context("an idle WebSocket was not closed")?;
        ensure!(
            !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
            "unexpected message {end:?}"
        );
        ensure!(
            t.elapsed() < Duration::from_secs(3),
            "closed after {:?}",
            t.elapsed()
        );
        Ok(())
    })
    .await
}

/// A route's `idle_timeout` governs a CONNECT tunnel in place of the connection manager's
/// (here turned off): a tunnel moving bytes is never cut, a silent one is closed (how weft
/// control applies a DestinationRule's `connectionPool.tcp.idleTimeout` to TCP services).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnel_ends_after_the_route_idle_timeout() -> Result<()> {
    within(60, async {
        let echo = TcpEcho::start().await?;
        let port = free_port();
        let vhosts = r#"
- name: tcp-echo
  domains: ["*"]
  routes:
  - match: { connect_matcher: {} }
    route:
      cluster: tcp_echo
      idle_timeout: 0.4s
      upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }]
"#;
        let yaml = bootstrap(
            &[http_listener("main", port, vhosts)
                .hcm("upgrade_configs: [{ upgrade_type: CONNECT }]\nstream_idle_timeout: 0s")
                .build()],
            &[cluster("tcp_echo", &[echo.addr], "")],
        );
        let _proxy = Proxy::start(&yaml).await?;
        let mut s = connect(local(port)).await?;
        s.write_all(b"CONNECT tcpecho.test:7 HTTP/1.1\r\nHost: tcpecho.test:7\r\n\r\n")
            .await?;
        let head = read_until(&mut s, b"\r\n\r\n", Duration::from_secs(5)).await?;
        ensure!(
            status_of(&String::from_utf8_lossy(&head)) == Some(200),
            "CONNECT answered {head:?}"
        );
        // Busy for 1.2 s, three times the idle timeout: never cut.
        for i in 0..8 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let msg = format!("m{i}\n");
            s.write_all(msg.as_bytes()).await?;
            let back = read_n(&mut s, msg.len(), Duration::from_secs(5))
                .await
                .with_context(|| format!("no echo for message {i}"))?;
            ensure!(back == msg.as_bytes(), "echo {i}: {back:?}");
        }
        // Then silent: closed after about 400 ms.
        let t = Instant::now();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .context("an idle tunnel was not closed")??;
        ensure!(rest.is_empty(), "unexpected bytes {rest:?}");
        ensure!(
            t.elapsed() < Duration::from_secs(3),
            "closed after {:?}",
            t.elapsed()
        );
        Ok(())
    })
    .await
}

const CONNECT_VHOSTS: &str = r#"
- name: tcp-echo
  domains: ["tcpecho.test:7"]
  routes:
  - match: { connect_matcher: {} }
    route:
      cluster: tcp_echo
      upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }]
- name: any
  domains: ["*"]
  routes:
  - match: { connect_matcher: {} }
    route:
      cluster: web
      upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }]
  - match: { prefix: "/" }
    route: { cluster: web }
"#;

async fn connect_proxy() -> Result<(TcpEcho, EchoServer, Proxy, u16)> {
    let echo = TcpEcho::start().await?;
    let web = EchoServer::start("web").await?;
    let port = free_port();
    let yaml = bootstrap(
        &[http_listener("main", port, CONNECT_VHOSTS)
            .hcm("upgrade_configs: [{ upgrade_type: websocket }, { upgrade_type: CONNECT }]")
            .build()],
        &[
            cluster("tcp_echo", &[echo.addr], ""),
            cluster("web", &[web.addr], ""),
        ],
    );
    let proxy = Proxy::start(&yaml).await?;
    Ok((echo, web, proxy, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnel_raw_carries_tcp_bytes() -> Result<()> {
    within(60, async {
        let (echo, _web, _proxy, port) = connect_proxy().await?;
        let mut s = connect(local(port)).await?;
        s.write_all(b"CONNECT tcpecho.test:7 HTTP/1.1\r\nHost: tcpecho.test:7\r\n\r\n")
            .await?;
        let head = read_until(&mut s, b"\r\n\r\n", Duration::from_secs(5)).await?;
        let head = String::from_utf8_lossy(&head).into_owned();
        ensure!(status_of(&head) == Some(200), "CONNECT answered {head:?}");
        let end = head.find("\r\n\r\n").map_or(head.len(), |i| i + 4);
        ensure!(
            end == head.len(),
            "unexpected bytes after the 200: {head:?}"
        );
        for i in 0..3 {
            let msg = format!("tunnel payload {i}\n");
            s.write_all(msg.as_bytes()).await?;
            let back = read_n(&mut s, msg.len(), Duration::from_secs(5)).await?;
            ensure!(
                back == msg.as_bytes(),
                "echo {i}: {:?}",
                String::from_utf8_lossy(&back)
            );
        }
        ensure!(echo.connections() == 1);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnel_with_curl_proxytunnel() -> Result<()> {
    within(60, async {
        let (_echo, web, _proxy, port) = connect_proxy().await?;
        let out = curl(&[
            "-p",
            "-x",
            &format!("http://127.0.0.1:{port}"),
            "http://web.test:80/headers",
        ])
        .await?;
        ensure!(out.ok(), "curl -p failed: {out}");
        let doc: serde_json::Value =
            serde_json::from_str(&out.stdout).with_context(|| format!("not JSON: {out}"))?;
        ensure!(doc["upstream"] == "web", "{doc}");
        ensure!(
            doc["headers"]["host"] == "web.test" || doc["headers"]["host"] == "web.test:80",
            "the tunnelled request must arrive unchanged: {doc}"
        );
        ensure!(web.requests() == 1);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_detection_serves_http1_h2c_and_raw_tcp_on_one_port() -> Result<()> {
    within(60, async {
        let web = EchoServer::start("web").await?;
        let echo = TcpEcho::start().await?;
        let port = free_port();
        let body = format!(
            r#"
            listener_filters:
            - name: envoy.filters.listener.http_inspector
              typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector }}
            filter_chains:
            - filter_chain_match: {{ application_protocols: [http/1.1, h2c] }}
              filters:
{}
            default_filter_chain:
              filters:
{}
            "#,
            indent(
                &hcm_filter("detect_http", &vhost_to("all", "\"*\"", "web"), FILE_ACCESS_LOG),
                14
            ),
            indent(&tcp_proxy_filter("detect_tcp", "tcp_echo"), 14),
        );
        let yaml = bootstrap(
            &[custom_listener("detect", port, &body)],
            &[
                cluster("web", &[web.addr], ""),
                cluster("tcp_echo", &[echo.addr], ""),
            ],
        );
        let _proxy = Proxy::start(&yaml).await?;
        let addr = local(port);

        let r = Http::h1().get(addr, "/h1").await?;
        ensure!(r.status == 200 && r.upstream() == "web" && r.version == http::Version::HTTP_11);
        let r = Http::h2c().get(addr, "/h2c").await?;
        ensure!(r.status == 200 && r.upstream() == "web" && r.version == http::Version::HTTP_2);
        let out = curl(&[
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version} %{http_code}",
            &format!("http://{addr}/curl-h2c"),
        ])
        .await?;
        ensure!(out.stdout == "web\n2 200", "{out}");
        ensure!(web.requests() == 3);

        let mut s = connect(addr).await?;
        let msg = b"hello, raw tcp \x00\x01\x02\n";
        s.write_all(msg).await?;
        let back = read_n(&mut s, msg.len(), Duration::from_secs(5))
            .await
            .context("raw bytes were not sent to the tcp_proxy chain")?;
        ensure!(back == msg);
        ensure!(echo.connections() == 1 && web.requests() == 3);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_first_protocol_gets_banner_immediately() -> Result<()> {
    within(60, async {
        let banner = BannerServer::start().await?;
        let port = free_port();
        let yaml = bootstrap(
            &[tcp_listener("banner", port, "banner")],
            &[cluster("banner", &[banner.addr()], "")],
        );
        let _proxy = Proxy::start(&yaml).await?;
        let start = Instant::now();
        let mut s = connect(local(port)).await?;
        let got = read_n(&mut s, BANNER.len(), Duration::from_secs(1))
            .await
            .context("no banner within 1 s: the listener waited for client bytes")?;
        ensure!(got == BANNER);
        ensure!(
            start.elapsed() < Duration::from_secs(1),
            "banner after {:?}",
            start.elapsed()
        );
        s.write_all(b"HELO\r\n").await?;
        ensure!(read_n(&mut s, 6, Duration::from_secs(5)).await? == b"HELO\r\n");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_large_payload_and_half_close() -> Result<()> {
    within(60, async {
        let echo = TcpEcho::start().await?;
        let port = free_port();
        let yaml = bootstrap(
            &[tcp_listener("tcp", port, "tcp_echo")],
            &[cluster("tcp_echo", &[echo.addr], "")],
        );
        let _proxy = Proxy::start(&yaml).await?;
        let data: Vec<u8> = (0..(4 * 1024 * 1024u32))
            .map(|i| (i * 7 % 256) as u8)
            .collect();
        let s = connect(local(port)).await?;
        let (mut r, mut w) = s.into_split();
        let to_send = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&to_send).await?;
            // Half-close: the echo server sees EOF, finishes, and closes its side.
            w.shutdown().await?;
            Ok::<_, std::io::Error>(w)
        });
        let mut back = Vec::with_capacity(data.len());
        tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut back))
            .await
            .context("the echo did not end after half-close")??;
        let _w = writer.await??;
        ensure!(
            back.len() == data.len(),
            "got {} of {} bytes",
            back.len(),
            data.len()
        );
        ensure!(back == data, "bytes differ");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_closes_downstream_when_upstream_refuses() -> Result<()> {
    within(60, async {
        let dead = dead_addr();
        let port = free_port();
        let yaml = bootstrap(
            &[tcp_listener("tcp", port, "dead")],
            &[cluster("dead", &[dead], "")],
        );
        let proxy = Proxy::start(&yaml).await?;
        let mut s = connect(local(port)).await?;
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .context("downstream connection left open although the upstream refused")?;
        ensure!(matches!(n, Ok(0) | Err(_)), "unexpected bytes: {n:?}");
        ensure!(proxy.exit_status().is_none());
        Ok(())
    })
    .await
}
