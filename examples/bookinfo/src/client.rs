//! The one outbound HTTP client of the demo apps: how a Bookinfo service
//! reaches another service by name (`http://details:9080/details/0`).
//!
//! Contract with `weft run`: when `HTTP_PROXY` (or `http_proxy`) is set to
//! `http://IP:PORT`, every call goes to that sidecar as an **absolute-form**
//! HTTP/1.1 request (`GET http://details:9080/details/0 HTTP/1.1`, `Host:
//! details:9080`) and the sidecar does discovery, routing and resilience.
//! Without it the name is resolved and dialed directly, unless
//! `WEFT_SERVICE_<NAME>_ADDR=IP:PORT` pins that service to an address (tests
//! wire services together that way). The override is ignored when a proxy is
//! set: the sidecar must see every call.
//!
//! Connections are pooled and kept alive (keyed by the target service). This
//! module must not retry, follow redirects or add headers of its own: those
//! are the mesh's or the caller's decisions.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use thiserror::Error;
use tokio::net::TcpStream;

/// Largest response body an outbound call accepts.
pub const MAX_BODY: usize = 4 << 20;

/// Why an outbound call (or the client's configuration) failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// `HTTP_PROXY` is not `http://HOST:PORT`.
    #[error("invalid HTTP_PROXY {0:?}: expected http://HOST:PORT")]
    BadProxy(String),
    /// A `WEFT_SERVICE_<NAME>_ADDR` value is not `HOST:PORT`.
    #[error("invalid {var}={value:?}: expected HOST:PORT")]
    BadOverride {
        /// The variable name.
        var: String,
        /// Its value.
        value: String,
    },
    /// The URL is not an absolute `http://host[:port]/path` URL.
    #[error("invalid URL {0:?}: expected http://HOST[:PORT]/PATH")]
    BadUrl(String),
    /// Connecting or exchanging the request failed.
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    /// Reading the response body failed or it exceeded [`MAX_BODY`].
    #[error("reading response body: {0}")]
    Body(String),
    /// No complete response within the deadline.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Where outbound connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Egress {
    /// Every request goes to this sidecar (`HOST:PORT`) in absolute form.
    Proxy(String),
    /// Requests go straight to the named service; `overrides` maps a
    /// normalized service name (`DETAILS`) to the `HOST:PORT` to dial instead.
    Direct {
        /// Normalized name → address.
        overrides: HashMap<String, String>,
    },
}

impl Egress {
    /// Reads `HTTP_PROXY`/`http_proxy` and `WEFT_SERVICE_<NAME>_ADDR` from the
    /// process environment.
    pub fn from_env() -> Result<Self, ClientError> {
        Self::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// Same as [`Egress::from_env`] over an explicit variable list (testable).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ClientError> {
        let mut upper_proxy = None;
        let mut lower_proxy = None;
        let mut overrides = HashMap::new();
        for (k, v) in vars {
            if k == "HTTP_PROXY" {
                upper_proxy = Some(v);
            } else if k == "http_proxy" {
                lower_proxy = Some(v);
            } else if let Some(name) = k
                .strip_prefix("WEFT_SERVICE_")
                .and_then(|rest| rest.strip_suffix("_ADDR"))
                .filter(|n| !n.is_empty())
            {
                if !valid_host_port(&v) {
                    return Err(ClientError::BadOverride { var: k, value: v });
                }
                overrides.insert(normalize(name), v);
            }
        }
        let proxy = upper_proxy
            .filter(|p| !p.trim().is_empty())
            .or(lower_proxy.filter(|p| !p.trim().is_empty()));
        match proxy {
            Some(p) => Ok(Egress::Proxy(parse_proxy(&p)?)),
            None => Ok(Egress::Direct { overrides }),
        }
    }

    /// The address to dial for `host:port`, and whether it is the proxy.
    fn target(&self, host: &str, port: u16) -> (String, bool) {
        match self {
            Egress::Proxy(p) => (p.clone(), true),
            Egress::Direct { overrides } => {
                if !overrides.is_empty() {
                    let full = normalize(host);
                    if let Some(addr) = overrides.get(&full) {
                        return (addr.clone(), false);
                    }
                    // `details.default.svc.cluster.local` → `DETAILS`.
                    if let Some(first) = host.split('.').next().filter(|f| f.len() < host.len())
                        && let Some(addr) = overrides.get(&normalize(first))
                    {
                        return (addr.clone(), false);
                    }
                }
                (format!("{host}:{port}"), false)
            }
        }
    }
}

/// `details-v1.ns` → `DETAILS_V1_NS` (the env-var spelling of a name).
fn normalize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

/// `http://127.0.0.1:15001/` → `127.0.0.1:15001`. A bare `HOST:PORT` is accepted.
fn parse_proxy(raw: &str) -> Result<String, ClientError> {
    let t = raw.trim();
    let rest = match t.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some(_) => return Err(ClientError::BadProxy(raw.to_owned())),
        None => t,
    };
    let authority = rest.split('/').next().unwrap_or_default();
    // Credentials in the proxy URL are not supported by the sidecar contract.
    if authority.contains('@') || !valid_host_port(authority) {
        return Err(ClientError::BadProxy(raw.to_owned()));
    }
    Ok(authority.to_owned())
}

/// A buffered response.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The response status.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
}

impl Fetched {
    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }
}

/// The pooled outbound client. Cheap to share (`Arc` it or clone it).
#[derive(Clone)]
pub struct Outbound {
    client: Client<Connector, Full<Bytes>>,
    egress: Arc<Egress>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("egress", &self.egress)
            .finish()
    }
}

impl Outbound {
    /// A client with the given egress.
    pub fn new(egress: Egress) -> Self {
        let egress = Arc::new(egress);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(Connector {
                egress: egress.clone(),
            });
        Outbound { client, egress }
    }

    /// A client configured from the process environment (see [`Egress::from_env`]).
    pub fn from_env() -> Result<Self, ClientError> {
        Ok(Self::new(Egress::from_env()?))
    }

    /// Where this client sends requests.
    pub fn egress(&self) -> &Egress {
        &self.egress
    }

    /// `GET url` with `headers`, buffering the body; the whole exchange must
    /// finish within `timeout`. Non-2xx statuses are returned, not errors.
    pub async fn get(
        &self,
        url: &str,
        headers: HeaderMap,
        timeout: Duration,
    ) -> Result<Fetched, ClientError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| ClientError::BadUrl(url.to_owned()))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ClientError::BadUrl(url.to_owned()));
        }
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.method_mut() = Method::GET;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        self.send(req, timeout).await
    }

    /// Sends a prepared request (absolute `http://` URI) within `timeout`.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Fetched, ClientError> {
        let exchange = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| ClientError::Body(e.to_string()))?
                .to_bytes();
            Ok(Fetched { status, body })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(res) => res,
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }
}

/// Dials the sidecar or the service for hyper-util's pooled client.
#[derive(Clone, Debug)]
struct Connector {
    egress: Arc<Egress>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let egress = self.egress.clone();
        Box::pin(async move {
            let host = dst
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URL has no host"))?;
            let port = dst.port_u16().unwrap_or(80);
            let (target, proxied) = egress.target(host, port);
            let stream = TcpStream::connect(target.as_str()).await?;
            stream.set_nodelay(true)?;
            Ok(Conn {
                io: TokioIo::new(stream),
                proxied,
            })
        })
    }
}

/// A TCP connection that tells hyper-util whether it leads to a proxy (which
/// makes it send absolute-form request targets).
#[derive(Debug)]
struct Conn {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new().proxy(self.proxied)
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn proxy_env_parsing() {
        let e = Egress::from_vars(vars(&[("HTTP_PROXY", "http://127.0.0.1:15001")])).expect("ok");
        assert_eq!(e, Egress::Proxy("127.0.0.1:15001".into()));
        let e = Egress::from_vars(vars(&[("http_proxy", "http://127.0.1.7:15001/")])).expect("ok");
        assert_eq!(e, Egress::Proxy("127.0.1.7:15001".into()));
        // Upper case wins; an empty upper-case value falls back to lower case.
        let e = Egress::from_vars(vars(&[
            ("http_proxy", "http://a:1"),
            ("HTTP_PROXY", "http://b:2"),
        ]))
        .expect("ok");
        assert_eq!(e, Egress::Proxy("b:2".into()));
        let e = Egress::from_vars(vars(&[("HTTP_PROXY", ""), ("http_proxy", "a:1")])).expect("ok");
        assert_eq!(e, Egress::Proxy("a:1".into()));
        for bad in [
            "https://a:1",
            "http://a",
            "http://u:p@a:1",
            "http://a:0",
            "http://:5",
            "http://a:x",
        ] {
            assert!(
                matches!(
                    Egress::from_vars(vars(&[("HTTP_PROXY", bad)])),
                    Err(ClientError::BadProxy(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn overrides_apply_only_without_proxy() {
        let e = Egress::from_vars(vars(&[("WEFT_SERVICE_REVIEWS_ADDR", "127.0.0.1:1234")]))
            .expect("ok");
        assert_eq!(e.target("reviews", 9080), ("127.0.0.1:1234".into(), false));
        assert_eq!(
            e.target("reviews.default.svc.cluster.local", 9080),
            ("127.0.0.1:1234".into(), false)
        );
        assert_eq!(e.target("details", 9080), ("details:9080".into(), false));
        let e =
            Egress::from_vars(vars(&[("WEFT_SERVICE_MY_SVC_ADDR", "127.0.0.1:9")])).expect("ok");
        assert_eq!(e.target("my-svc", 80), ("127.0.0.1:9".into(), false));
        let e = Egress::from_vars(vars(&[
            ("WEFT_SERVICE_REVIEWS_ADDR", "127.0.0.1:1234"),
            ("HTTP_PROXY", "http://127.0.0.1:15001"),
        ]))
        .expect("ok");
        assert_eq!(e.target("reviews", 9080), ("127.0.0.1:15001".into(), true));
        assert!(matches!(
            Egress::from_vars(vars(&[("WEFT_SERVICE_X_ADDR", "nope")])),
            Err(ClientError::BadOverride { .. })
        ));
    }

    /// Accepts one connection, records the request head, answers `reply`.
    async fn one_shot(reply: &'static [u8]) -> (String, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let task = tokio::spawn(async move {
            let Ok((mut s, _)) = l.accept().await else {
                return String::new();
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = s.write_all(reply).await;
            String::from_utf8_lossy(&buf).into_owned()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn proxy_gets_absolute_form() {
        let (addr, task) = one_shot(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let out = Outbound::new(Egress::Proxy(addr));
        let mut h = HeaderMap::new();
        h.insert("end-user", http::HeaderValue::from_static("jason"));
        let r = out
            .get("http://details:9080/details/0", h, Duration::from_secs(5))
            .await
            .expect("get");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.body[..], b"ok");
        let head = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("timeout")
            .expect("join");
        assert!(
            head.starts_with("GET http://details:9080/details/0 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase().contains("host: details:9080\r\n"),
            "{head}"
        );
        assert!(head.contains("end-user: jason\r\n"), "{head}");
    }

    #[tokio::test]
    async fn direct_override_gets_origin_form() {
        let (addr, task) =
            one_shot(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        let mut overrides = HashMap::new();
        overrides.insert("RATINGS".to_owned(), addr);
        let out = Outbound::new(Egress::Direct { overrides });
        let r = out
            .get(
                "http://ratings:9080/ratings/0",
                HeaderMap::new(),
                Duration::from_secs(5),
            )
            .await
            .expect("get");
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!r.is_success());
        let head = task.await.expect("join");
        assert!(head.starts_with("GET /ratings/0 HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("host: ratings:9080\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn timeout_and_bad_url() {
        // Accepts but never answers.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let hold = tokio::spawn(async move {
            let c = l.accept().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(c);
        });
        let out = Outbound::new(Egress::Proxy(addr));
        let err = out
            .get(
                "http://reviews:9080/reviews/0",
                HeaderMap::new(),
                Duration::from_millis(200),
            )
            .await
            .expect_err("must time out");
        assert!(matches!(err, ClientError::Timeout(_)), "{err}");
        hold.abort();
        for bad in ["/relative", "https://x/y", "not a url"] {
            let err = out
                .get(bad, HeaderMap::new(), Duration::from_millis(200))
                .await
                .expect_err("bad url");
            assert!(matches!(err, ClientError::BadUrl(_)), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn connection_refused_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        drop(l);
        let out = Outbound::new(Egress::Proxy(addr));
        let err = out
            .get(
                "http://details:9080/details/0",
                HeaderMap::new(),
                Duration::from_secs(5),
            )
            .await
            .expect_err("refused");
        assert!(matches!(err, ClientError::Request(_)), "{err}");
    }
}
