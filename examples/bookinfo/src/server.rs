//! Inbound HTTP plumbing shared by the Bookinfo services: accept loop (HTTP/1.1
//! and h2c), one access-log line per request on stdout, and graceful exit on
//! SIGTERM/SIGINT.
//!
//! It knows nothing about Bookinfo itself: a service is an [`App`] that turns a
//! request into a fully buffered response. It must never panic on what a peer
//! sends, and must never block the runtime.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// The response type every service produces (bodies are small and buffered).
pub type Resp = Response<Full<Bytes>>;

/// How long in-flight connections get to finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP service: a request handler that cannot fail (errors are responses).
pub trait App: Send + Sync + 'static {
    /// Handles one request from `peer`.
    fn handle(&self, req: Request<Incoming>, peer: SocketAddr)
    -> impl Future<Output = Resp> + Send;
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting
/// and waits up to [`DRAIN_TIMEOUT`] for open connections to finish.
///
/// `name` prefixes every access-log line (e.g. `productpage`).
pub async fn serve<A: App>(
    listener: TcpListener,
    app: Arc<A>,
    name: Arc<str>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            res = listener.accept() => match res {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    eprintln!("{name}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let name = name.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let app = app.clone();
            let name = name.clone();
            async move {
                let start = Instant::now();
                let method = req.method().clone();
                let uri = req.uri().clone();
                let version = req.version();
                let resp = app.handle(req, peer).await;
                log_line(&name, peer, &method, &uri, version, resp.status(), start);
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
}

/// Writes one access-log line to stdout. A closed stdout is ignored (never panics).
fn log_line(
    name: &str,
    peer: SocketAddr,
    method: &http::Method,
    uri: &http::Uri,
    version: http::Version,
    status: http::StatusCode,
    start: Instant,
) {
    let micros = start.elapsed().as_micros();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{name} {peer} \"{method} {uri} {version:?}\" {} {micros}us",
        status.as_u16()
    );
}

/// Registers SIGTERM/SIGINT handlers now (so a signal that arrives before
/// the returned future is first polled is not lost, nor fatal) and returns a
/// future that completes on the first of them.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut t), Ok(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {}
                        _ = i.recv() => {}
                    }
                }
                (Ok(mut t), Err(_)) => {
                    t.recv().await;
                }
                (Err(_), Ok(mut i)) => {
                    i.recv().await;
                }
                // No signal handling possible: run until killed.
                (Err(_), Err(_)) => std::future::pending::<()>().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Builds a response with a status, content type and body.
pub fn respond(
    status: http::StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// A JSON response.
pub fn json(status: http::StatusCode, value: &serde_json::Value) -> Resp {
    respond(status, "application/json", value.to_string())
}

/// A plain-text 404.
pub fn not_found() -> Resp {
    respond(http::StatusCode::NOT_FOUND, "text/plain", "Not Found\n")
}

/// A plain-text 405.
pub fn method_not_allowed() -> Resp {
    respond(
        http::StatusCode::METHOD_NOT_ALLOWED,
        "text/plain",
        "Method Not Allowed\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl App for Echo {
        async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Resp {
            respond(
                http::StatusCode::IM_A_TEAPOT,
                "text/plain",
                req.uri().path().to_owned(),
            )
        }
    }

    #[tokio::test]
    async fn serves_and_drains_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, Arc::new(Echo), Arc::from("t"), async {
            let _ = rx.await;
        }));
        let mut s =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await
                .expect("connect timeout")
                .expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("read timeout")
            .expect("read");
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 418"), "{text}");
        assert!(text.ends_with("/x"), "{text}");
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("serve did not stop")
            .expect("join");
    }
}
