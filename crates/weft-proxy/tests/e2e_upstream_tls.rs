//! End-to-end tests of the connection-level paths that used to bypass the cluster's connect
//! logic or misread Envoy's timeouts: tcp_proxy and CONNECT tunnels through a cluster with an
//! `UpstreamTlsContext` (TLS origination, `max_connections`), Envoy's upstream certificate
//! semantics (SNI only when `sni` is set; `trusted_ca` verifies the chain, not the name),
//! tcp_proxy's `idle_timeout` as a real idle timer, and a filter chain's
//! `transport_socket_connect_timeout` on the downstream TLS handshake.
//!
//! The TLS backends are rustls servers on the test's runtime, with certificates from a CA the
//! test makes. Everything runs on 127.0.0.1 under a deadline.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------------------
// Certificates and a TLS echo backend
// ---------------------------------------------------------------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA: its PEM and the issuer that signs leaves.
struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Result<Ca> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        let k = rcgen::KeyPair::generate()?;
        let cert = p.self_signed(&k)?;
        Ok(Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(p, k),
        })
    }

    /// Writes the CA certificate to `dir/name` (for `trusted_ca.filename`).
    fn write(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem)?;
        Ok(path)
    }

    /// A leaf for `names`: (certificate PEM, key PEM, rustls server config).
    fn leaf(&self, names: &[&str]) -> Result<(String, String, Arc<rustls::ServerConfig>)> {
        let p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        let k = rcgen::KeyPair::generate()?;
        let cert = p.signed_by(&k, &self.issuer)?;
        let key = rustls::pki_types::PrivateKeyDer::try_from(k.serialize_der())
            .map_err(|e| anyhow!("key: {e}"))?;
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)?;
        Ok((cert.pem(), k.serialize_pem(), Arc::new(cfg)))
    }
}

/// A TLS echo server: records the SNI of each handshake and counts failed handshakes.
struct TlsEcho {
    addr: SocketAddr,
    snis: Arc<Mutex<Vec<Option<String>>>>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsEcho {
    async fn start(cfg: Arc<rustls::ServerConfig>) -> Result<TlsEcho> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let snis = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        let (s2, f2) = (snis.clone(), failed.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let (acceptor, snis, failed) = (acceptor.clone(), s2.clone(), f2.clone());
                tokio::spawn(async move {
                    let hs = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
                    let Ok(Ok(tls)) = hs.await else {
                        failed.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_string);
                    snis.lock().unwrap_or_else(|p| p.into_inner()).push(sni);
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Ok(TlsEcho {
            addr,
            snis,
            failed,
            task,
        })
    }

    fn snis(&self) -> Vec<Option<String>> {
        self.snis.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }
}

impl Drop for TlsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Config pieces
// ---------------------------------------------------------------------------------------------

/// Cluster fields (column 0) for TLS origination verified against `ca`, with `sni` if given.
fn upstream_tls(ca: &Path, sni: Option<&str>) -> String {
    let sni = sni.map_or(String::new(), |s| format!("    sni: {s}\n"));
    format!(
        "transport_socket:\n  name: envoy.transport_sockets.tls\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n{sni}    common_tls_context:\n      validation_context:\n        trusted_ca: {{ filename: \"{}\" }}\n",
        ca.display()
    )
}

/// The tcp.log line format: flags, bytes received/sent, transport failure reason.
const TCP_LOG_FORMAT: &str =
    "%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_TRANSPORT_FAILURE_REASON%";

/// A tcp_proxy listener to `cluster` that logs to `{{DIR}}/tcp.log`, with more TcpProxy fields
/// (`extra`, e.g. `idle_timeout: 0.3s`).
fn logged_tcp_listener(name: &str, port: u16, cluster: &str, extra: &str) -> String {
    let mut tp = format!(
        "- name: envoy.filters.network.tcp_proxy\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n    stat_prefix: {name}\n    cluster: {cluster}\n    access_log:\n    - name: envoy.access_loggers.file\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n        path: \"{{{{DIR}}}}/tcp.log\"\n        log_format: {{ text_format_source: {{ inline_string: \"{TCP_LOG_FORMAT}\\n\" }} }}\n"
    );
    tp.push_str(&indent(extra, 4));
    let body = format!("filter_chains:\n- filters:\n{}", indent(&tp, 2));
    custom_listener(name, port, &body)
}

/// Waits for a `{{DIR}}/tcp.log` line matching `pred`.
async fn wait_tcp_log(proxy: &Proxy, what: &str, pred: impl Fn(&str) -> bool) -> Result<String> {
    eventually(what, WAIT, async || {
        proxy.file_lines("tcp.log").into_iter().find(|l| pred(l))
    })
    .await
}

/// Sends `msg` and expects it back within 5 s.
async fn round_trip<S>(s: &mut S, msg: &[u8]) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .context("no echo within 5 s")?
        .context("reading the echo")?;
    ensure!(
        back == msg,
        "echo differs: {:?}",
        String::from_utf8_lossy(&back)
    );
    Ok(())
}

/// Waits for the peer to close (EOF or reset); returns how long that took.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, s.read(&mut buf)).await {
        Err(_) => Err(anyhow!("still open after {limit:?}")),
        Ok(Ok(0)) | Ok(Err(_)) => Ok(start.elapsed()),
        Ok(Ok(n)) => Err(anyhow!(
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        )),
    }
}

/// Sends a CONNECT for `target` and reads the response head.
async fn connect_request(port: u16, target: &str) -> Result<(tokio::net::TcpStream, String)> {
    let mut s = connect(local(port)).await?;
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await?;
    let head = read_until(&mut s, b"\r\n\r\n", Duration::from_secs(10)).await?;
    Ok((s, String::from_utf8_lossy(&head).into_owned()))
}

fn connect_vhosts(cluster: &str) -> String {
    format!(
        r#"
- name: tunnel
  domains: ["*"]
  routes:
  - match: {{ connect_matcher: {{}} }}
    route:
      cluster: {cluster}
      upgrade_configs: [{{ upgrade_type: CONNECT, connect_config: {{}} }}]
  - match: {{ prefix: "/" }}
    route: {{ cluster: {cluster} }}
"#
    )
}

// ---------------------------------------------------------------------------------------------
// A8 + B4: tcp_proxy and CONNECT originate TLS through the cluster
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_and_connect_originate_tls_with_chain_only_verification() -> Result<()> {
    within(60, async {
        let dir = tempfile::tempdir()?;
        let ca = Ca::new("backend CA")?;
        let ca_file = ca.write(dir.path(), "ca.pem")?;
        // The backend's certificate names neither the cluster, nor the SNI, nor its address.
        let (_, _, server) = ca.leaf(&["backend.other.example"])?;
        let backend = TlsEcho::start(server).await?;
        let (tcp_port, http_port) = (free_port(), free_port());
        let yaml = bootstrap(
            &[
                logged_tcp_listener("tcp", tcp_port, "outbound|443||tls.example", ""),
                http_listener("web", http_port, &connect_vhosts("tls_sni"))
                    .hcm("upgrade_configs: [{ upgrade_type: CONNECT }]")
                    .build(),
            ],
            &[
                // Istio-style name, no `sni`: no SNI is sent and the name is not checked.
                cluster(
                    "\"outbound|443||tls.example\"",
                    &[backend.addr],
                    &upstream_tls(&ca_file, None),
                ),
                cluster(
                    "tls_sni",
                    &[backend.addr],
                    &upstream_tls(&ca_file, Some("backend.example")),
                ),
            ],
        );
        let proxy = Proxy::start(&yaml).await?;

        // tcp_proxy: plain text downstream, TLS upstream, bytes end to end both ways.
        let mut s = connect(local(tcp_port)).await?;
        for i in 0..3 {
            round_trip(&mut s, format!("over tls {i}\n").as_bytes()).await?;
        }
        let big: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
        let (mut r, mut w) = s.into_split();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await?;
            w.shutdown().await?;
            Ok::<_, std::io::Error>(w)
        });
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut back))
            .await
            .context("the TLS echo did not end after half-close")??;
        let _w = writer.await??;
        ensure!(
            back == big,
            "got {} of {} bytes back",
            back.len(),
            big.len()
        );
        ensure!(
            backend.snis() == vec![None],
            "the backend saw SNI {:?} (expected none)",
            backend.snis()
        );
        let line = wait_tcp_log(&proxy, "the tcp_proxy session log", |_| true).await?;
        ensure!(line.starts_with("- "), "flags on a good session: {line:?}");
        proxy
            .wait_stat(
                "envoy_cluster_upstream_cx_total",
                &[("envoy_cluster_name", "outbound|443||tls.example")],
                "== 1",
                |v| v == 1.0,
            )
            .await?;

        // CONNECT terminated by the proxy, tunnel carried over TLS with the configured SNI.
        let (mut t, head) = connect_request(http_port, "anything.test:443").await?;
        ensure!(status_of(&head) == Some(200), "CONNECT answered {head:?}");
        for i in 0..3 {
            round_trip(&mut t, format!("tunnel over tls {i}\n").as_bytes()).await?;
        }
        ensure!(
            backend.snis().last() == Some(&Some("backend.example".to_string())),
            "the backend saw SNIs {:?}",
            backend.snis()
        );
        proxy
            .wait_stat(
                "envoy_cluster_upstream_cx_active",
                &[("envoy_cluster_name", "tls_sni")],
                "== 1 while the tunnel is open",
                |v| v == 1.0,
            )
            .await?;
        drop(t);
        proxy
            .wait_stat(
                "envoy_cluster_upstream_cx_active",
                &[("envoy_cluster_name", "tls_sni")],
                "== 0 once the tunnel closed",
                |v| v == 0.0,
            )
            .await?;
        ensure!(backend.failed() == 0, "failed handshakes at the backend");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_signed_by_another_ca_is_refused_with_uf() -> Result<()> {
    within(60, async {
        let dir = tempfile::tempdir()?;
        let trusted = Ca::new("trusted CA")?;
        let other = Ca::new("other CA")?;
        let ca_file = trusted.write(dir.path(), "ca.pem")?;
        let (_, _, server) = other.leaf(&["backend.example", "127.0.0.1"])?;
        let backend = TlsEcho::start(server).await?;
        let (tcp_port, http_port) = (free_port(), free_port());
        let yaml = bootstrap(
            &[
                logged_tcp_listener("tcp", tcp_port, "bad", ""),
                http_listener("web", http_port, &connect_vhosts("bad"))
                    .hcm("upgrade_configs: [{ upgrade_type: CONNECT }]")
                    .build(),
            ],
            &[cluster(
                "bad",
                &[backend.addr],
                &upstream_tls(&ca_file, Some("backend.example")),
            )],
        );
        let proxy = Proxy::start(&yaml).await?;

        // HTTP: 503 UF, and the reason names TLS.
        let r = Http::h1_fresh().get(local(http_port), "/x").await?;
        ensure!(
            r.status == 503,
            "HTTP through a bad-CA cluster: {}",
            r.status
        );
        ensure!(r.text().contains("TLS error"), "body: {:?}", r.text());
        proxy
            .wait_access("503 UF", |l| {
                l.path == "/x" && l.code == 503 && l.has_flag("UF")
            })
            .await?;

        // tcp_proxy: closed, logged UF with the TLS failure reason.
        let mut s = connect(local(tcp_port)).await?;
        closed_within(&mut s, Duration::from_secs(5)).await?;
        let line = wait_tcp_log(&proxy, "the refused session", |l| l.starts_with("UF ")).await?;
        ensure!(line.contains("TLS_error"), "no TLS reason in {line:?}");

        // CONNECT: 503 UF.
        let (_t, head) = connect_request(http_port, "anything.test:443").await?;
        ensure!(status_of(&head) == Some(503), "CONNECT answered {head:?}");
        proxy
            .wait_access("CONNECT 503 UF", |l| {
                l.method == "CONNECT" && l.code == 503 && l.has_flag("UF")
            })
            .await?;
        ensure!(backend.snis().is_empty(), "a handshake succeeded");
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// A8: the cluster's max_connections applies to tcp_proxy and CONNECT
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_overflow_closes_tcp_proxy_and_answers_connect_503_uo() -> Result<()> {
    within(60, async {
        let echo = TcpEcho::start().await?;
        let (tcp_port, http_port) = (free_port(), free_port());
        let yaml = bootstrap(
            &[
                logged_tcp_listener("tcp", tcp_port, "limited", ""),
                http_listener("web", http_port, &connect_vhosts("limited"))
                    .hcm("upgrade_configs: [{ upgrade_type: CONNECT }]")
                    .build(),
            ],
            &[cluster(
                "limited",
                &[echo.addr],
                "circuit_breakers: { thresholds: [{ max_connections: 1 }] }",
            )],
        );
        let proxy = Proxy::start(&yaml).await?;
        let mut first = connect(local(tcp_port)).await?;
        round_trip(&mut first, b"holding the only slot\n").await?;

        let mut second = connect(local(tcp_port)).await?;
        closed_within(&mut second, Duration::from_secs(5)).await?;
        wait_tcp_log(&proxy, "the overflowed session", |l| l.starts_with("UO ")).await?;

        let (_t, head) = connect_request(http_port, "anything.test:7").await?;
        ensure!(status_of(&head) == Some(503), "CONNECT answered {head:?}");
        ensure!(
            head.to_ascii_lowercase()
                .contains("x-envoy-overloaded: true"),
            "no x-envoy-overloaded: {head:?}"
        );
        proxy
            .wait_access("CONNECT 503 UO", |l| {
                l.method == "CONNECT" && l.code == 503 && l.has_flag("UO")
            })
            .await?;
        proxy
            .wait_stat(
                "envoy_cluster_upstream_cx_overflow",
                &[("envoy_cluster_name", "limited")],
                "== 2",
                |v| v == 2.0,
            )
            .await?;

        // The slot comes back when the first session ends.
        drop(first);
        let mut third = None;
        for _ in 0..100 {
            let mut s = connect(local(tcp_port)).await?;
            if round_trip(&mut s, b"again\n").await.is_ok() {
                third = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ensure!(third.is_some(), "the breaker slot was never released");
        ensure!(echo.connections() == 2, "echo saw {}", echo.connections());
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// B2: tcp_proxy idle_timeout is an idle timer, not a session cap
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_idle_timeout_spares_active_sessions_and_closes_silent_ones() -> Result<()> {
    within(60, async {
        let echo = TcpEcho::start().await?;
        let port = free_port();
        let yaml = bootstrap(
            &[logged_tcp_listener(
                "tcp",
                port,
                "echo",
                "idle_timeout: 0.3s",
            )],
            &[cluster("echo", &[echo.addr], "")],
        );
        let proxy = Proxy::start(&yaml).await?;

        // Silent (watched meanwhile): closed after the idle timeout, not before.
        let mut silent = connect(local(port)).await?;
        let silent =
            tokio::spawn(async move { closed_within(&mut silent, Duration::from_secs(5)).await });
        // A byte every 100 ms for 1.5 s: five times the idle timeout, never idle.
        let mut busy = connect(local(port)).await?;
        let start = Instant::now();
        for i in 0..16u8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            round_trip(&mut busy, &[b'a' + i])
                .await
                .with_context(|| format!("byte {i} after {:?}", start.elapsed()))?;
        }
        let took = silent.await??;
        ensure!(
            took >= Duration::from_millis(280) && took < Duration::from_secs(3),
            "a silent session was closed after {took:?}"
        );
        // Once quiet, the busy one goes too, and its bytes are logged.
        let took = closed_within(&mut busy, Duration::from_secs(5)).await?;
        ensure!(took >= Duration::from_millis(280), "closed after {took:?}");
        wait_tcp_log(&proxy, "the busy session with its 16 bytes", |l| {
            l.starts_with("- 16 16 ")
        })
        .await?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// A7: transport_socket_connect_timeout bounds the downstream TLS handshake
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_closes_a_silent_client_after_transport_socket_connect_timeout() -> Result<()>
{
    within(60, async {
        let dir = tempfile::tempdir()?;
        let ca = Ca::new("listener CA")?;
        let (cert, key, _) = ca.leaf(&["localhost"])?;
        let (cert_file, key_file) = (dir.path().join("l.crt"), dir.path().join("l.key"));
        std::fs::write(&cert_file, cert)?;
        std::fs::write(&key_file, key)?;
        let echo = TcpEcho::start().await?;
        let (fast, slow) = (free_port(), free_port());
        let chain = |timeout: &str| {
            format!(
                r#"
filter_chains:
- transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
      common_tls_context:
        tls_certificates:
        - certificate_chain: {{ filename: "{}" }}
          private_key: {{ filename: "{}" }}
  {timeout}
  filters:
{}
"#,
                cert_file.display(),
                key_file.display(),
                indent(&tcp_proxy_filter("tls", "echo"), 2)
            )
        };
        let yaml = bootstrap(
            &[
                custom_listener(
                    "fast",
                    fast,
                    &chain("transport_socket_connect_timeout: 0.3s"),
                ),
                custom_listener("slow", slow, &chain("")),
            ],
            &[cluster("echo", &[echo.addr], "")],
        );
        let _proxy = Proxy::start(&yaml).await?;

        // Connects and never says hello: closed after ~300 ms.
        let mut s = connect(local(fast)).await?;
        let took = closed_within(&mut s, Duration::from_secs(5)).await?;
        ensure!(
            took >= Duration::from_millis(280) && took < Duration::from_secs(3),
            "closed after {took:?}"
        );
        // Without the field there is no handshake deadline (as in Envoy).
        let mut s = connect(local(slow)).await?;
        ensure!(
            closed_within(&mut s, Duration::from_millis(800))
                .await
                .is_err(),
            "a chain without transport_socket_connect_timeout closed a silent client"
        );

        // A client that does handshake gets through, and may then stay quiet longer.
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca.pem.as_bytes()) {
            roots.add(c?)?;
        }
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = connect(local(fast)).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let mut tls = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
        )
        .await
        .context("handshake timed out")??;
        tokio::time::sleep(Duration::from_millis(600)).await;
        round_trip(&mut tls, b"after the handshake\n").await?;
        Ok(())
    })
    .await
}
