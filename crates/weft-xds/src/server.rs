//! The xDS v3 ADS server: a per-node snapshot [`Cache`] and the gRPC
//! `AggregatedDiscoveryService` in both variants, state of the world (SotW) and delta.
//!
//! It exists so the control plane only has to compute *what* each proxy should see (a
//! [`Snapshot`] per node id) and never deals with the wire: nonces, versions, ACK/NACK,
//! subscriptions, wildcards, reconnects and "only push what changed" all live here, with the
//! semantics Envoy and gRPC's proxyless xDS client expect.
//!
//! Each stream is one task that owns its subscription state; a snapshot change wakes the node's
//! streams through a `tokio::sync::watch`, and every stream diffs its own view. No lock is held
//! across an `.await`; the per-node status is a short `std::sync::Mutex` section.
//!
//! It must not: translate configuration (that is the control plane's job), block in
//! [`NodeHook`] callbacks for long (they run on the stream's task), or panic on bad requests
//! (those get a gRPC error or are ignored with a log line).

mod cache;
mod delta;
mod sotw;
mod status;

pub use cache::{Cache, Snapshot, TypeResources};
pub use status::{NodeStatus, SyncState, TypeStatus};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::Status;

/// Type URLs of the resources the mesh exchanges (`Any.type_url` and `DiscoveryRequest.type_url`).
pub mod types {
    /// `envoy.config.listener.v3.Listener` (LDS).
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS).
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    /// Types whose SotW responses carry the complete set (so absence means deletion) and whose
    /// empty first request means "everything": LDS and CDS.
    pub fn is_full_state(type_url: &str) -> bool {
        type_url == LISTENER || type_url == CLUSTER
    }

    /// Push order when several types change at once: secrets and clusters (with their
    /// endpoints) before the listeners and routes that reference them (make before break).
    pub(crate) fn push_rank(type_url: &str) -> u8 {
        match type_url {
            SECRET => 0,
            CLUSTER => 1,
            ENDPOINT => 2,
            LISTENER => 3,
            ROUTE => 4,
            _ => 5,
        }
    }
}

/// Called by the server when a proxy's stream is identified (first request carrying a `node`)
/// and when that stream ends. `connected` may call [`Cache::set_snapshot`] directly; the stream
/// waits for a snapshot before answering. Both run on the stream's task: keep them short.
pub trait NodeHook: Send + Sync + 'static {
    /// A stream from `node` opened (`stream_id` is unique for the server's lifetime).
    fn connected(&self, node: &Node, stream_id: u64);
    /// The stream `stream_id` of `node` ended (client gone, error, or server shutdown).
    fn disconnected(&self, node: &Node, stream_id: u64);
}

/// A [`NodeHook`] that does nothing (snapshots are set by other means).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHook;

impl NodeHook for NoHook {
    fn connected(&self, _node: &Node, _stream_id: u64) {}
    fn disconnected(&self, _node: &Node, _stream_id: u64) {}
}

/// Encoded gRPC messages (or the final status) a stream task queues for its response body.
pub(crate) type Tx = mpsc::Sender<Result<Bytes, Status>>;

/// Responses queued per stream before the stream task waits for the client to read.
const STREAM_QUEUE: usize = 16;
/// Largest request accepted (a reconnecting delta client lists every version it holds).
const MAX_REQUEST_BYTES: usize = 64 << 20;
/// gRPC paths of the two ADS methods.
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The ADS gRPC service over a [`Cache`]. Cheap to clone; every clone serves the same streams.
#[derive(Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) cache: Cache,
    pub(crate) hook: Arc<dyn NodeHook>,
    next_stream_id: AtomicU64,
    close: watch::Sender<bool>,
}

impl AdsServer {
    /// A server answering from `cache`, telling `hook` about streams.
    pub fn new(cache: Cache, hook: Arc<dyn NodeHook>) -> Self {
        let (close, _) = watch::channel(false);
        Self {
            shared: Arc::new(Shared {
                cache,
                hook,
                next_stream_id: AtomicU64::new(1),
                close,
            }),
        }
    }

    /// The cache this server answers from.
    pub fn cache(&self) -> &Cache {
        &self.shared.cache
    }

    /// The gRPC service, to mount next to other gRPC services on one tonic `Server`
    /// (`add_service`). Keep a clone of `self` to call [`AdsServer::close_streams`] on shutdown:
    /// tonic's graceful shutdown waits for open streams, and ADS streams never end by themselves.
    pub fn into_service(self) -> AdsService {
        AdsService { server: self }
    }

    /// Ends every open stream (and every stream opened from now on) with an OK status, so
    /// clients reconnect elsewhere and a graceful server shutdown can complete.
    pub fn close_streams(&self) {
        self.shared.close.send_replace(true);
    }

    fn open(&self) -> (u64, watch::Receiver<bool>) {
        let id = self.shared.next_stream_id.fetch_add(1, Ordering::Relaxed);
        (id, self.shared.close.subscribe())
    }

    /// Starts one ADS stream of variant `V`: a task that reads the requests and queues encoded
    /// responses for the returned body.
    fn start<V: Variant, B>(&self, req: http::Request<B>) -> http::Response<tonic::body::Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<tonic::codegen::StdError> + Send + 'static,
    {
        if let Some(enc) = req.headers().get("grpc-encoding")
            && enc.as_bytes() != b"identity"
        {
            return Status::unimplemented("compressed requests are not supported").into_http();
        }
        let peer = req
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|i| i.remote_addr());
        let (stream_id, close) = self.open();
        tracing::debug!(stream_id, ?peer, "{} stream opened", V::NAME);
        let requests = tonic::Streaming::new_request(
            ProstDecoder::<V::Req>::default(),
            req.into_body(),
            None,
            Some(MAX_REQUEST_BYTES),
        );
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let ctx = StreamCtx {
            shared: self.shared.clone(),
            stream_id,
            close,
        };
        tokio::spawn(run_stream::<V>(ctx, requests, tx));
        let mut response =
            http::Response::new(tonic::body::Body::new(ResponseBody { rx, done: false }));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        response
    }
}

/// The ADS gRPC service (`envoy.service.discovery.v3.AggregatedDiscoveryService`, both
/// methods), as [`AdsServer::into_service`] returns it.
///
/// It is hand-written rather than tonic's generated server so that each response is encoded
/// once, into an allocation of exactly its size that is freed as soon as it is written: tonic's
/// encoder keeps, per stream and for the stream's life, a buffer as large as the largest
/// response it ever sent (megabytes per connected proxy in a big mesh).
#[derive(Clone)]
pub struct AdsService {
    server: AdsServer,
}

impl tonic::server::NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<B> tonic::codegen::Service<http::Request<B>> for AdsService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let response = match req.uri().path() {
            SOTW_PATH => self.server.start::<sotw::SotwStream, B>(req),
            DELTA_PATH => self.server.start::<delta::DeltaStream, B>(req),
            path => Status::unimplemented(format!("unknown method {path}")).into_http(),
        };
        std::future::ready(Ok(response))
    }
}

/// Decodes one request message (tonic's codec interface, without a codec crate).
struct ProstDecoder<T>(PhantomData<fn() -> T>);

impl<T> Default for ProstDecoder<T> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T: prost::Message + Default> tonic::codec::Decoder for ProstDecoder<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<T>, Status> {
        T::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode the request: {e}")))
    }
}

/// The response body of an ADS stream: each queued message is one DATA frame; the stream ends
/// with trailers carrying the final status (OK when the stream task simply ends).
struct ResponseBody {
    rx: mpsc::Receiver<Result<Bytes, Status>>,
    done: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let status = match this.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(message))) => {
                return Poll::Ready(Some(Ok(http_body::Frame::data(message))));
            }
            Poll::Ready(Some(Err(status))) => status,
            Poll::Ready(None) => Status::ok(""),
        };
        this.done = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(status) = status.add_header(&mut trailers) {
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// One gRPC message frame (uncompressed flag, big-endian length, message), in an allocation of
/// exactly its size.
pub(crate) fn grpc_frame<M: prost::Message>(message: &M) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    let header = u32::try_from(len)
        .map_err(|_| Status::resource_exhausted(format!("a {len}-byte response is too large")))?;
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&header.to_be_bytes());
    message
        .encode(&mut buf)
        .map_err(|e| Status::internal(format!("cannot encode a response: {e}")))?;
    Ok(Bytes::from(buf))
}

/// What a stream task gets from the server.
pub(crate) struct StreamCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) stream_id: u64,
    pub(crate) close: watch::Receiver<bool>,
}

/// Resolves when the server asked its streams to close.
pub(crate) async fn closed(close: &mut watch::Receiver<bool>) {
    // An Err means the server is gone: close as well.
    let _ = close.wait_for(|closing| *closing).await;
}

/// The node's registration for the life of one stream: unregisters and tells the hook on drop,
/// whatever way the stream task ends.
pub(crate) struct Session {
    shared: Arc<Shared>,
    node: Node,
    stream_id: u64,
    pub(crate) snapshots: watch::Receiver<Option<Arc<cache::Prepared>>>,
    pub(crate) status: status::StatusHandle,
}

impl Session {
    /// Validates the node of a stream's first request and registers the stream.
    pub(crate) fn open(ctx: &StreamCtx, node: Option<&Node>) -> Result<Self, Status> {
        let node = match node {
            Some(node) if !node.id.is_empty() => node.clone(),
            Some(_) => return Err(Status::invalid_argument("node.id is empty")),
            None => {
                return Err(Status::invalid_argument(
                    "the first request of an ADS stream must carry `node`",
                ));
            }
        };
        let (snapshots, status) = ctx.shared.cache.register(&node);
        let session = Session {
            shared: ctx.shared.clone(),
            node,
            stream_id: ctx.stream_id,
            snapshots,
            status,
        };
        tracing::info!(node = %session.node.id, stream_id = ctx.stream_id, "xDS client connected");
        // After registration, so a snapshot set from the hook wakes this stream.
        session.shared.hook.connected(&session.node, ctx.stream_id);
        Ok(session)
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.node.id
    }

    /// The current snapshot, if any (clones an `Arc`, releases the watch lock at once).
    pub(crate) fn current(&mut self, mark_seen: bool) -> Option<Arc<cache::Prepared>> {
        if mark_seen {
            self.snapshots.borrow_and_update().clone()
        } else {
            self.snapshots.borrow().clone()
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        tracing::info!(node = %self.node.id, stream_id = self.stream_id, "xDS client disconnected");
        self.shared.cache.unregister(&self.node.id);
        self.shared.hook.disconnected(&self.node, self.stream_id);
    }
}

/// Per-stream nonce source: nonces only need to differ within a stream.
#[derive(Debug, Default)]
pub(crate) struct Nonces(u64);

/// The receiving side of a closed response channel: the client is gone.
#[derive(Debug)]
pub(crate) struct Gone;

/// What distinguishes the two ADS variants (state of the world, delta); the stream loop is
/// shared.
pub(crate) trait Variant: Default + Send + 'static {
    type Req: prost::Message + Default + Send + 'static;
    type Resp: prost::Message + Send + 'static;
    /// `ADS` / `delta ADS`, for logs.
    const NAME: &'static str;
    fn node(req: &Self::Req) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>;
    /// (type URL, version, resources, removed) of a response, for status and logs.
    fn describe(resp: &Self::Resp) -> (&str, &str, usize, usize);
    fn on_request(
        &mut self,
        session: &mut Session,
        req: Self::Req,
        tx: &Tx,
    ) -> impl Future<Output = Result<(), Gone>> + Send;
    fn push_all(
        &mut self,
        session: &mut Session,
        tx: &Tx,
    ) -> impl Future<Output = Result<(), Gone>> + Send;
}

/// Queues a response on the stream (none: nothing to send) and records it as sent. The
/// response is encoded here and dropped: only its wire form waits in the queue.
pub(crate) async fn send<V: Variant>(
    session: &Session,
    response: Option<V::Resp>,
    tx: &Tx,
) -> Result<(), Gone> {
    let Some(response) = response else {
        return Ok(());
    };
    let frame = grpc_frame(&response);
    let (type_url, version, resources, removed) = V::describe(&response);
    tracing::debug!(node = session.node_id(), %type_url, %version, resources, removed, "{} push", V::NAME);
    if frame.is_ok() {
        session.status.sent(type_url, version);
    }
    drop(response);
    tx.send(frame).await.map_err(|_| Gone)
}

/// One ADS stream: waits for the first request (which names the node), then serves requests
/// and snapshot changes until the client, the server or the stream goes away.
pub(crate) async fn run_stream<V: Variant>(
    mut ctx: StreamCtx,
    mut requests: tonic::Streaming<V::Req>,
    tx: Tx,
) {
    let first = tokio::select! {
        biased;
        _ = closed(&mut ctx.close) => return,
        _ = tx.closed() => return,
        msg = requests.message() => match msg {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(status) => {
                tracing::debug!(stream_id = ctx.stream_id, %status, "{} stream failed before its first request", V::NAME);
                return;
            }
        },
    };
    let mut session = match Session::open(&ctx, V::node(&first)) {
        Ok(session) => session,
        Err(status) => {
            tracing::warn!(stream_id = ctx.stream_id, %status, "{} stream refused", V::NAME);
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let mut stream = V::default();
    if stream.on_request(&mut session, first, &tx).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            biased;
            _ = closed(&mut ctx.close) => break,
            msg = requests.message() => match msg {
                Ok(Some(req)) => {
                    if stream.on_request(&mut session, req, &tx).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(node = session.node_id(), %status, "{} stream ended with an error", V::NAME);
                    break;
                }
            },
            changed = session.snapshots.changed() => {
                if changed.is_err() || stream.push_all(&mut session, &tx).await.is_err() {
                    break;
                }
            }
        }
    }
}

impl Nonces {
    pub(crate) fn next(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}

/// A failure of [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("xDS gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves ADS on `listener` until `shutdown` resolves, then closes the open streams and
/// returns once connections have drained. To serve other gRPC services on the same port, build
/// the `tonic::transport::Server` yourself (tonic's `router` feature) with
/// [`AdsServer::into_service`].
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    cache: Cache,
    hook: Arc<dyn NodeHook>,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future,
{
    let ads = AdsServer::new(cache, hook);
    let closer = ads.clone();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let signal = async move {
        shutdown.await;
        closer.close_streams();
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .serve_with_incoming_shutdown(ads.into_service(), incoming, signal)
        .await?;
    Ok(())
}

/// FNV-1a, 64 bit: a stable, dependency-free hash for resource versions and response keys.
pub(crate) fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = seed;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable_and_order_sensitive() {
        // Known FNV-1a 64 test vector.
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(FNV_OFFSET, b"ab"), fnv1a(FNV_OFFSET, b"ba"));
    }

    #[test]
    fn full_state_and_rank() {
        assert!(types::is_full_state(types::LISTENER));
        assert!(types::is_full_state(types::CLUSTER));
        assert!(!types::is_full_state(types::ROUTE));
        assert!(types::push_rank(types::CLUSTER) < types::push_rank(types::LISTENER));
        assert!(types::push_rank(types::ENDPOINT) < types::push_rank(types::ROUTE));
    }

    #[test]
    fn nonces_differ() {
        let mut n = Nonces::default();
        assert_ne!(n.next(), n.next());
    }

    #[test]
    fn grpc_frame_is_exact_and_decodes() {
        use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
        use prost::Message;
        let msg = DeltaDiscoveryResponse {
            type_url: types::CLUSTER.into(),
            nonce: "7".into(),
            removed_resources: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        let frame = grpc_frame(&msg).unwrap();
        let len = msg.encoded_len();
        assert_eq!(frame.len(), 5 + len);
        assert_eq!(frame[0], 0, "uncompressed");
        assert_eq!(
            u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize,
            len
        );
        assert_eq!(DeltaDiscoveryResponse::decode(&frame[5..]).unwrap(), msg);
    }

    fn poll_body(body: &mut ResponseBody) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        http_body::Body::poll_frame(Pin::new(body), &mut cx)
    }

    #[test]
    fn response_body_sends_messages_then_the_status() {
        use http_body::Body;
        let (tx, rx) = mpsc::channel(4);
        let mut body = ResponseBody { rx, done: false };
        assert!(poll_body(&mut body).is_pending());
        tx.try_send(Ok(Bytes::from_static(b"m1"))).unwrap();
        let Poll::Ready(Some(Ok(frame))) = poll_body(&mut body) else {
            panic!("a data frame");
        };
        assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"m1"));
        drop(tx);
        let Poll::Ready(Some(Ok(frame))) = poll_body(&mut body) else {
            panic!("trailers");
        };
        let trailers = frame.into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert!(body.is_end_stream());
        assert!(matches!(poll_body(&mut body), Poll::Ready(None)));

        let (tx, rx) = mpsc::channel(4);
        let mut body = ResponseBody { rx, done: false };
        tx.try_send(Err(Status::invalid_argument("no node")))
            .unwrap();
        let Poll::Ready(Some(Ok(frame))) = poll_body(&mut body) else {
            panic!("trailers");
        };
        let trailers = frame.into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "3");
        assert_eq!(trailers["grpc-message"], "no%20node");
    }

    #[test]
    fn unknown_methods_and_compressed_requests_are_refused() {
        use tonic::codegen::Service;
        let mut svc = AdsServer::new(Cache::default(), Arc::new(NoHook)).into_service();
        let req = http::Request::builder()
            .uri("/envoy.service.discovery.v3.AggregatedDiscoveryService/Nope")
            .body(tonic::body::Body::empty())
            .unwrap();
        let resp = futures_util::FutureExt::now_or_never(svc.call(req))
            .unwrap()
            .unwrap();
        assert_eq!(resp.headers()["grpc-status"], "12", "UNIMPLEMENTED");
        let req = http::Request::builder()
            .uri(DELTA_PATH)
            .header("grpc-encoding", "gzip")
            .body(tonic::body::Body::empty())
            .unwrap();
        let resp = futures_util::FutureExt::now_or_never(svc.call(req))
            .unwrap()
            .unwrap();
        assert_eq!(resp.headers()["grpc-status"], "12");
    }

    #[test]
    fn session_rejects_missing_or_empty_node() {
        let ads = AdsServer::new(Cache::default(), Arc::new(NoHook));
        let (stream_id, close) = ads.open();
        let ctx = StreamCtx {
            shared: ads.shared.clone(),
            stream_id,
            close,
        };
        assert!(Session::open(&ctx, None).is_err());
        assert!(Session::open(&ctx, Some(&Node::default())).is_err());
        let node = Node {
            id: "n1".into(),
            ..Default::default()
        };
        let session = Session::open(&ctx, Some(&node));
        assert!(session.is_ok());
        assert_eq!(ads.cache().status().len(), 1);
        drop(session);
        assert!(ads.cache().status().is_empty());
    }
}
