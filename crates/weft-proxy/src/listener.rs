//! Listeners: accept connections, sniff what they carry (TLS ClientHello, HTTP/1, HTTP/2
//! preface) only when a listener filter asks for it, choose a filter chain the way Envoy does
//! (most specific match per criterion), terminate TLS, and hand the connection to the HTTP
//! connection manager or the TCP proxy.
//!
//! A listener without inspectors never waits for client bytes, so server-first protocols work.
//! Each connection holds the listener config it was accepted with; a reload swaps the config
//! for new connections only, and a drain signal makes HTTP connections close gracefully.

use crate::config::{ConfigError, Ctx, decode_any, socket_addr, timeout};
use crate::http::proxy::Conn;
use crate::http::{Codec, Hcm};
use crate::io::{MaybeTls, Rewind};
use crate::runtime::Shared;
use crate::stats::{ListenerStats, Stats};
use crate::tcp::TcpProxy;
use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Room for the first read on a new connection, the one the protocol is sniffed from: a whole
/// request head or TLS ClientHello in one `recv`. From an empty buffer tokio reads 64 bytes,
/// so a first request took two reads or more (64 bytes, then the rest). The buffer lives only
/// until the codec has taken its bytes.
const FIRST_READ: usize = 4096;

#[derive(Debug)]
pub enum NetworkFilter {
    Http(Arc<Hcm>),
    Tcp(Arc<TcpProxy>),
}

#[derive(Debug, Default)]
pub struct ChainMatch {
    pub port: Option<u16>,
    pub server_names: Vec<String>,
    pub transport: Option<String>,
    pub alpn: Vec<String>,
}

#[derive(Debug)]
pub struct FilterChain {
    pub name: String,
    pub m: ChainMatch,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `transport_socket_connect_timeout`: how long the TLS handshake may take (none when
    /// unset or zero, as in Envoy).
    pub handshake_timeout: Option<Duration>,
    pub filter: NetworkFilter,
}

/// A compiled Listener.
#[derive(Debug)]
pub struct ListenerConfig {
    pub name: String,
    pub addr: SocketAddr,
    pub chains: Vec<FilterChain>,
    pub default_chain: Option<FilterChain>,
    pub tls_inspector: bool,
    pub http_inspector: bool,
    pub filters_timeout: Option<Duration>,
    pub continue_on_timeout: bool,
    pub stats: Arc<ListenerStats>,
    /// Encoded resource, to tell unchanged listeners on reload.
    pub source: Vec<u8>,
}

pub fn build(l: &lpb::Listener, stats: &Stats) -> Result<ListenerConfig, ConfigError> {
    let ctx = Ctx::new("listener", &l.name);
    if l.name.is_empty() {
        return Err(ctx.err("name", "a listener needs a name"));
    }
    let addr = socket_addr(&ctx, "address", l.address.as_ref())?;
    let (mut tls_inspector, mut http_inspector) = (false, false);
    for (i, lf) in l.listener_filters.iter().enumerate() {
        let tn = match &lf.config_type {
            Some(lpb::listener_filter::ConfigType::TypedConfig(a)) => {
                a.type_url.rsplit('/').next().unwrap_or("").to_string()
            }
            _ => String::new(),
        };
        match (lf.name.as_str(), tn.as_str()) {
            (_, "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector")
            | ("envoy.filters.listener.tls_inspector", "") => tls_inspector = true,
            (_, "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector")
            | ("envoy.filters.listener.http_inspector", "") => http_inspector = true,
            _ => return Err(ctx.err(
                format!("listener_filters[{i}]"),
                format!(
                    "listener filter `{}` is not supported (tls_inspector and http_inspector are)",
                    lf.name
                ),
            )),
        }
    }
    let mut chains = Vec::with_capacity(l.filter_chains.len());
    for (i, fc) in l.filter_chains.iter().enumerate() {
        chains.push(chain(&ctx, &format!("filter_chains[{i}]"), fc, stats)?);
    }
    let default_chain = l
        .default_filter_chain
        .as_ref()
        .map(|fc| chain(&ctx, "default_filter_chain", fc, stats))
        .transpose()?;
    if chains.is_empty() && default_chain.is_none() {
        return Err(ctx.err("filter_chains", "at least one filter chain is required"));
    }
    let filters_timeout = timeout(
        &ctx,
        "listener_filters_timeout",
        l.listener_filters_timeout.as_ref(),
        Some(Duration::from_secs(15)),
    )?;
    Ok(ListenerConfig {
        name: l.name.clone(),
        addr,
        chains,
        default_chain,
        tls_inspector,
        http_inspector,
        filters_timeout,
        continue_on_timeout: l.continue_on_listener_filters_timeout,
        stats: stats.listener(&crate::stats::listener_stat_name(&addr)),
        source: prost::Message::encode_to_vec(l),
    })
}

fn chain(
    ctx: &Ctx,
    f: &str,
    fc: &lpb::FilterChain,
    stats: &Stats,
) -> Result<FilterChain, ConfigError> {
    let mut m = ChainMatch::default();
    if let Some(cm) = &fc.filter_chain_match {
        let mf = format!("{f}.filter_chain_match");
        m.port = cm
            .destination_port
            .as_ref()
            .map(|p| {
                u16::try_from(p.value)
                    .map_err(|_| ctx.err(format!("{mf}.destination_port"), "out of range"))
            })
            .transpose()?;
        m.server_names = cm
            .server_names
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        m.transport = Some(cm.transport_protocol.clone()).filter(|s| !s.is_empty());
        m.alpn = cm.application_protocols.clone();
    }
    let tls = match &fc.transport_socket {
        None => None,
        Some(ts) => {
            use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
            match &ts.config_type {
                Some(ConfigType::TypedConfig(any)) if any.type_url.ends_with("RawBuffer") => None,
                Some(ConfigType::TypedConfig(any)) => {
                    let d: envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext =
                        decode_any(ctx, &format!("{f}.transport_socket.typed_config"), any)?;
                    Some(crate::tls::server_config(
                        ctx,
                        &format!("{f}.transport_socket.typed_config"),
                        &d,
                    )?)
                }
                None => {
                    return Err(ctx.err(
                        format!("{f}.transport_socket"),
                        "a typed_config is required",
                    ));
                }
            }
        }
    };
    let filter = match fc.filters.as_slice() {
        [one] => {
            let ff = format!("{f}.filters[0]");
            let Some(lpb::filter::ConfigType::TypedConfig(any)) = &one.config_type else {
                return Err(ctx.err(ff, "a typed_config is required"));
            };
            let tn = any.type_url.rsplit('/').next().unwrap_or("");
            match tn {
                "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => {
                    let h = decode_any(ctx, &format!("{ff}.typed_config"), any)?;
                    NetworkFilter::Http(Arc::new(crate::http::hcm(ctx, &format!("{ff}.typed_config"), &h, stats)?))
                }
                "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" => {
                    let t = decode_any(ctx, &format!("{ff}.typed_config"), any)?;
                    NetworkFilter::Tcp(Arc::new(crate::tcp::build(ctx, &format!("{ff}.typed_config"), &t)?))
                }
                other => return Err(ctx.err(format!("{ff}.typed_config"), format!("network filter `{other}` is not supported (http_connection_manager and tcp_proxy are)"))),
            }
        }
        [] => {
            return Err(ctx.err(
                format!("{f}.filters"),
                "one network filter (http_connection_manager or tcp_proxy) is required",
            ));
        }
        _ => {
            return Err(ctx.err(
                format!("{f}.filters"),
                "exactly one network filter is supported per chain",
            ));
        }
    };
    let handshake_timeout = timeout(
        ctx,
        &format!("{f}.transport_socket_connect_timeout"),
        fc.transport_socket_connect_timeout.as_ref(),
        None,
    )?;
    Ok(FilterChain {
        name: fc.name.clone(),
        m,
        tls,
        handshake_timeout,
        filter,
    })
}

/// What is known about a connection when its filter chain is chosen.
#[derive(Debug, Default)]
struct Facts {
    port: u16,
    sni: Option<String>,
    transport: &'static str,
    alpn: Vec<String>,
}

fn server_name_rank(names: &[String], sni: Option<&str>) -> Option<usize> {
    // 0 = no criterion; larger = more specific (exact beats longer wildcard beats shorter).
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?;
    let mut best = None;
    for n in names {
        let rank = if n == sni {
            Some(usize::MAX)
        } else if let Some(suffix) = n.strip_prefix('*') {
            sni.ends_with(suffix).then_some(suffix.len() + 1)
        } else {
            None
        };
        best = best.max(rank);
    }
    best
}

impl ListenerConfig {
    /// Route configuration names this listener's connection managers take from RDS.
    pub fn rds_names(&self) -> Vec<&str> {
        self.chains
            .iter()
            .chain(self.default_chain.iter())
            .filter_map(|c| match &c.filter {
                NetworkFilter::Http(h) => match &h.routes {
                    crate::http::Routes::Rds(n) => Some(n.as_str()),
                    crate::http::Routes::Static(_) => None,
                },
                NetworkFilter::Tcp(_) => None,
            })
            .collect()
    }

    /// Envoy's filter-chain selection: per criterion in order (destination port, server name,
    /// transport protocol, application protocols), chains that name a matching value beat
    /// chains that leave it empty; chains that name a non-matching value drop out.
    fn select(&self, facts: &Facts) -> Option<&FilterChain> {
        let mut cands: Vec<&FilterChain> = self.chains.iter().collect();
        fn narrow<'a>(
            cands: Vec<&'a FilterChain>,
            score: &dyn Fn(&FilterChain) -> Option<usize>,
        ) -> Vec<&'a FilterChain> {
            let best = cands.iter().filter_map(|c| score(c)).max();
            match best {
                None => Vec::new(),
                Some(b) => cands.into_iter().filter(|c| score(c) == Some(b)).collect(),
            }
        }
        cands = narrow(cands, &|c| match c.m.port {
            None => Some(0),
            Some(p) => (p == facts.port).then_some(1),
        });
        cands = narrow(cands, &|c| {
            server_name_rank(&c.m.server_names, facts.sni.as_deref())
        });
        cands = narrow(cands, &|c| match &c.m.transport {
            None => Some(0),
            Some(t) => (t == facts.transport).then_some(1),
        });
        cands = narrow(cands, &|c| {
            if c.m.alpn.is_empty() {
                Some(0)
            } else {
                c.m.alpn.iter().any(|a| facts.alpn.contains(a)).then_some(1)
            }
        });
        cands.into_iter().next().or(self.default_chain.as_ref())
    }
}

/// Decision of the HTTP inspector on the bytes so far.
enum HttpSniff {
    NeedMore,
    Http1,
    Http2,
    NotHttp,
}

fn sniff_http(b: &[u8]) -> HttpSniff {
    let n = b.len().min(H2_PREFACE.len());
    if b[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            HttpSniff::Http2
        } else {
            HttpSniff::NeedMore
        };
    }
    // An HTTP/1 request line starts with a method token followed by a space.
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"HEAD ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
    ];
    for m in METHODS {
        let k = b.len().min(m.len());
        if b[..k] == m[..k] {
            return if k == m.len() {
                HttpSniff::Http1
            } else {
                HttpSniff::NeedMore
            };
        }
    }
    if b.len() < 16 && b.iter().all(|c| c.is_ascii_uppercase()) {
        return HttpSniff::NeedMore;
    }
    // Other token methods (WebDAV etc.): accept `TOKEN SP` with a short uppercase token.
    match b.iter().position(|c| *c == b' ') {
        Some(i) if i > 0 && i < 16 && b[..i].iter().all(|c| c.is_ascii_uppercase()) => {
            HttpSniff::Http1
        }
        _ => HttpSniff::NotHttp,
    }
}

/// Runs the accept loop of one listener until `stop` flips to true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<arc_swap::ArcSwap<ListenerConfig>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => {
                if *stop.borrow() { return; }
                continue;
            }
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let cfg = config.load_full();
        let shared = shared.clone();
        let drain = stop.clone();
        tokio::spawn(async move {
            cfg.stats.downstream_cx_total.inc();
            cfg.stats.downstream_cx_active.inc();
            shared.stats.server.total_connections.inc();
            if let Err(e) = connection(stream, remote, &cfg, &shared, drain).await {
                tracing::debug!(listener = %cfg.name, %remote, error = %e, "connection closed with error");
            }
            cfg.stats.downstream_cx_active.dec();
            cfg.stats.downstream_cx_destroy.inc();
            shared.stats.server.total_connections.dec();
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    remote: SocketAddr,
    cfg: &ListenerConfig,
    shared: &Arc<Shared>,
    drain: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr()?;
    let mut facts = Facts {
        port: local.port(),
        transport: "raw_buffer",
        ..Default::default()
    };
    let mut buf = BytesMut::new();
    let mut http_kind = None;
    if cfg.tls_inspector || cfg.http_inspector {
        buf.reserve(FIRST_READ);
        let sniff = async {
            loop {
                if buf.len() >= 16 * 1024 {
                    break;
                }
                let n = stream.read_buf(&mut buf).await?;
                let eof = n == 0;
                let mut undecided = false;
                if cfg.tls_inspector {
                    match crate::tls::parse_client_hello(&buf) {
                        crate::tls::Sniff::Hello(h) => {
                            facts.transport = "tls";
                            facts.sni = h.sni;
                            facts.alpn = h.alpn;
                        }
                        crate::tls::Sniff::NeedMore => undecided = true,
                        crate::tls::Sniff::NotTls => {}
                    }
                }
                if cfg.http_inspector && facts.transport == "raw_buffer" && !undecided {
                    match sniff_http(&buf) {
                        HttpSniff::Http1 => {
                            facts.alpn = vec!["http/1.1".into()];
                            http_kind = Some(false);
                        }
                        HttpSniff::Http2 => {
                            facts.alpn = vec!["h2c".into()];
                            http_kind = Some(true);
                        }
                        HttpSniff::NeedMore => undecided = true,
                        HttpSniff::NotHttp => {}
                    }
                }
                if !undecided || eof {
                    break;
                }
            }
            Ok::<_, std::io::Error>(())
        };
        match cfg.filters_timeout {
            Some(t) => match tokio::time::timeout(t, sniff).await {
                Ok(r) => r?,
                Err(_) if cfg.continue_on_timeout => {}
                Err(_) => return Ok(()),
            },
            None => sniff.await?,
        }
    }
    let Some(chain) = cfg.select(&facts) else {
        tracing::debug!(listener = %cfg.name, %remote, "no filter chain matches; closing");
        return Ok(());
    };
    let io = Rewind::new(buf.freeze(), stream);
    match &chain.filter {
        NetworkFilter::Tcp(t) => {
            let down = match &chain.tls {
                Some(tls) => MaybeTls::Tls(Box::new(tls_accept(tls, chain, io).await?)),
                None => MaybeTls::Plain(io),
            };
            crate::tcp::proxy(t, down, remote, local, facts.sni.as_deref(), shared).await;
            Ok(())
        }
        NetworkFilter::Http(hcm) => {
            let (down, h2, sni) = match &chain.tls {
                Some(tls) => {
                    let s = tls_accept(tls, chain, io).await?;
                    let (_, c) = s.get_ref();
                    let h2 = c.alpn_protocol() == Some(b"h2");
                    let sni = c.server_name().map(Arc::<str>::from);
                    (MaybeTls::Tls(Box::new(s)), h2, sni)
                }
                None => match (hcm.codec, http_kind) {
                    (Codec::Auto, None) => {
                        // No inspector ran: read the preface ourselves.
                        return serve_http_auto(
                            io,
                            remote,
                            local,
                            hcm.clone(),
                            shared.clone(),
                            drain,
                        )
                        .await;
                    }
                    (_, Some(k)) => (MaybeTls::Plain(io), k, None),
                    (_, None) => (MaybeTls::Plain(io), false, None),
                },
            };
            let h2 = match hcm.codec {
                Codec::Http1 => false,
                Codec::Http2 => true,
                Codec::Auto => h2,
            };
            let conn = Arc::new(Conn {
                hcm: hcm.clone(),
                shared: shared.clone(),
                local,
                remote,
                sni,
                tls: chain.tls.is_some(),
                head_timer: Default::default(),
            });
            serve_http(down, h2, conn, drain).await;
            Ok(())
        }
    }
}

/// Terminates TLS, within the chain's `transport_socket_connect_timeout` when it has one.
async fn tls_accept(
    tls: &Arc<rustls::ServerConfig>,
    chain: &FilterChain,
    io: Rewind<TcpStream>,
) -> std::io::Result<tokio_rustls::server::TlsStream<Rewind<TcpStream>>> {
    let accept = tokio_rustls::TlsAcceptor::from(tls.clone()).accept(io);
    match chain.handshake_timeout {
        None => accept.await,
        Some(t) => tokio::time::timeout(t, accept).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake did not finish within transport_socket_connect_timeout",
            )
        })?,
    }
}

/// Plain-text AUTO codec without an inspector: peek at the first bytes to pick the codec.
async fn serve_http_auto(
    rw: Rewind<TcpStream>,
    remote: SocketAddr,
    local: SocketAddr,
    hcm: Arc<Hcm>,
    shared: Arc<Shared>,
    drain: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (prefix, mut stream) = rw.into_parts();
    let mut buf = sniff_buffer(prefix);
    let h2 = loop {
        match sniff_http(&buf) {
            HttpSniff::NeedMore if buf.len() < H2_PREFACE.len() => {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
            }
            HttpSniff::Http2 => break true,
            _ => break false,
        }
    };
    let io = MaybeTls::Plain(Rewind::new(buf.freeze(), stream));
    let conn = Arc::new(Conn {
        hcm,
        shared,
        local,
        remote,
        sni: None,
        tls: false,
        head_timer: Default::default(),
    });
    serve_http(io, h2, conn, drain).await;
    Ok(())
}

/// The buffer the AUTO codec sniffs into: the bytes an inspector already read, in its own buffer
/// when nothing else holds it (no copy), or [`FIRST_READ`] of room when no inspector ran.
fn sniff_buffer(prefix: Bytes) -> BytesMut {
    let mut buf = BytesMut::from(prefix);
    if buf.is_empty() {
        buf.reserve(FIRST_READ);
    }
    buf
}

/// Serves HTTP/1.1 or HTTP/2 on a connection until it ends; a drain signal closes it
/// gracefully (GOAWAY / `Connection: close` after the in-flight request).
pub async fn serve_http(
    io: crate::io::Downstream,
    h2: bool,
    conn: Arc<Conn>,
    mut drain: watch::Receiver<bool>,
) {
    let hcm = conn.hcm.clone();
    hcm.stats.downstream_cx_total.inc();
    hcm.stats.downstream_cx_active.inc();
    let svc_conn = conn.clone();
    let io = TokioIo::new(io);
    if h2 {
        // Each stream's future runs in a task of its own; boxed, the task stays small and
        // hyper's and tokio's moves of it copy a pointer instead of the whole future.
        let svc = hyper::service::service_fn(move |req| {
            crate::http::proxy::handle_boxed(svc_conn.clone(), req)
        });
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_header_list_size(hcm.max_request_headers_kb * 1024)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_concurrent_streams(1024)
            .enable_connect_protocol();
        let c = b.serve_connection(io, svc);
        tokio::pin!(c);
        if until_drained(c.as_mut(), &mut drain).await {
            c.as_mut().graceful_shutdown();
            let _ = c.await;
        }
    } else {
        // hyper keeps a connection's request future in place, in memory last touched a request
        // of that connection ago: with many kept-alive connections taking turns, cold. Boxed per
        // request it lands in blocks the allocator recycles within a few requests: 0.5–0.7 µs
        // less time in the proxy per request at 1k rps over 64 connections (bench/RESULTS.md,
        // 2026-12-08 00:05), and built in place, without the copy a plain `Box::pin` makes.
        let svc = hyper::service::service_fn(move |req| {
            crate::http::proxy::handle_boxed(svc_conn.clone(), req)
        });
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .keep_alive(true)
            // Head and body in one writev, the body straight from the upstream read buffer
            // (warm, just read) rather than copied into hyper's per-connection write buffer,
            // which with many kept-alive connections taking turns is cold: ~0.6 µs less time in
            // the proxy per request at 1k rps over 64 connections, though a single send of a
            // gathered buffer runs ~1.3k fewer instructions (bench/RESULTS.md, 2026-12-08).
            .writev(true)
            .max_buf_size((hcm.max_request_headers_kb as usize * 1024).max(8192))
            // None unless configured: hyper would otherwise arm a timer for every request.
            .header_read_timeout(hcm.request_headers_timeout);
        let c = b.serve_connection(io, svc).with_upgrades();
        tokio::pin!(c);
        if until_drained(c.as_mut(), &mut drain).await {
            c.as_mut().graceful_shutdown();
            let _ = c.await;
        }
    }
    hcm.stats.downstream_cx_active.dec();
}

/// Drives `conn` until it ends (false) or the listener drains (true). The drain signal is
/// looked at only when its version moved (an atomic load), not on every wake-up of the
/// connection: its waiter, registered on the first poll, stays registered and wakes this task.
async fn until_drained<F: std::future::Future>(
    mut conn: std::pin::Pin<&mut F>,
    drain: &mut watch::Receiver<bool>,
) -> bool {
    let probe = drain.clone();
    let mut drained = std::pin::pin!(wait_drain(drain));
    let mut first = true;
    std::future::poll_fn(|cx| {
        if conn.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(false);
        }
        if (std::mem::take(&mut first) || probe.has_changed().unwrap_or(true))
            && drained.as_mut().poll(cx).is_ready()
        {
            return std::task::Poll::Ready(true);
        }
        std::task::Poll::Pending
    })
    .await
}

async fn wait_drain(drain: &mut watch::Receiver<bool>) {
    if drain.wait_for(|d| *d).await.is_err() {
        // The listener is gone without a drain: keep serving this connection to its end.
        std::future::pending::<()>().await;
    }
}

/// Binds a listener socket with the options a proxy wants. An IPv6 socket accepts IPv6 only,
/// as Envoy's default (`ipv4_compat: false`) does; see [`bind_compat`].
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    bind_compat(addr, false)
}

/// [`bind`] honouring `SocketAddress.ipv4_compat`: on an IPv6 address, `true` also accepts
/// IPv4 (as `::ffff:a.b.c.d`; `[::]` then serves both families), `false` sets `IPV6_V6ONLY`
/// whatever the system default. No effect on an IPv4 address.
pub fn bind_compat(
    addr: SocketAddr,
    ipv4_compat: bool,
) -> std::io::Result<tokio::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if let Some(only) = v6_only(addr, ipv4_compat) {
        sock.set_only_v6(only)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_tcp_nodelay(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    tokio::net::TcpListener::from_std(sock.into())
}

/// The `IPV6_V6ONLY` value a listener socket on `addr` gets (None: not an IPv6 socket).
fn v6_only(addr: SocketAddr, ipv4_compat: bool) -> Option<bool> {
    addr.is_ipv6().then_some(!ipv4_compat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sniff_buffer_has_room_for_a_whole_first_request_and_keeps_inspected_bytes_in_place() {
        // no inspector ran: room for a request head in one read (tokio would start at 64 bytes)
        assert!(sniff_buffer(Bytes::new()).capacity() >= FIRST_READ);
        // an inspector's bytes stay in the inspector's buffer: no copy
        let mut inspected = BytesMut::with_capacity(FIRST_READ);
        inspected.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let at = inspected.as_ptr();
        let buf = sniff_buffer(inspected.freeze());
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
        assert_eq!(buf.as_ptr(), at);
    }

    #[test]
    fn ipv4_compat_decides_v6_only() {
        let any6: SocketAddr = "[::]:15001".parse().unwrap();
        assert_eq!(v6_only(any6, false), Some(true));
        assert_eq!(v6_only(any6, true), Some(false));
        assert_eq!(v6_only("0.0.0.0:15001".parse().unwrap(), true), None);
        // IPv4 binds are unaffected either way.
        for compat in [false, true] {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let l = rt
                .block_on(async { bind_compat("127.0.0.1:0".parse().unwrap(), compat) })
                .unwrap();
            assert!(l.local_addr().unwrap().is_ipv4());
        }
    }

    #[test]
    fn http_sniffing() {
        assert!(matches!(sniff_http(b"GE"), HttpSniff::NeedMore));
        assert!(matches!(
            sniff_http(b"GET / HTTP/1.1\r\n"),
            HttpSniff::Http1
        ));
        assert!(matches!(
            sniff_http(b"PRI * HTTP/2.0\r\n"),
            HttpSniff::NeedMore
        ));
        assert!(matches!(sniff_http(H2_PREFACE), HttpSniff::Http2));
        assert!(matches!(sniff_http(b"\x00\x01hello"), HttpSniff::NotHttp));
        assert!(matches!(
            sniff_http(b"PROPFIND / HTTP/1.1"),
            HttpSniff::Http1
        ));
        assert!(matches!(
            sniff_http(b"SSH-2.0-OpenSSH\r\n"),
            HttpSniff::NotHttp
        ));
    }

    #[test]
    fn server_name_ranking() {
        let names = vec!["*.example.com".to_string(), "a.example.com".to_string()];
        assert_eq!(
            server_name_rank(&names, Some("a.example.com")),
            Some(usize::MAX)
        );
        assert_eq!(server_name_rank(&names, Some("b.example.com")), Some(13));
        assert_eq!(server_name_rank(&names, Some("other.org")), None);
        assert_eq!(server_name_rank(&[], None), Some(0));
    }
}
