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

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures_util::Stream;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

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

/// The response half of an ADS stream: what the stream task queues, in order.
#[derive(Debug)]
pub struct ResponseStream<T> {
    rx: mpsc::Receiver<Result<T, Status>>,
}

impl<T> Stream for ResponseStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

/// Responses queued per stream before the stream task waits for the client to read.
const STREAM_QUEUE: usize = 16;
/// Largest request accepted (a reconnecting delta client lists every version it holds).
const MAX_REQUEST_BYTES: usize = 64 << 20;

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

    /// The tonic service, to mount next to other gRPC services on one `Server`. Keep a clone
    /// of `self` to call [`AdsServer::close_streams`] on shutdown: tonic's graceful shutdown
    /// waits for open streams, and ADS streams never end by themselves.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(usize::MAX)
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
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (stream_id, close) = self.open();
        tracing::debug!(stream_id, peer = ?request.remote_addr(), "ADS (SotW) stream opened");
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let stream = StreamCtx {
            shared: self.shared.clone(),
            stream_id,
            close,
        };
        tokio::spawn(run_stream::<sotw::SotwStream>(
            stream,
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(ResponseStream { rx }))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (stream_id, close) = self.open();
        tracing::debug!(stream_id, peer = ?request.remote_addr(), "ADS (delta) stream opened");
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let stream = StreamCtx {
            shared: self.shared.clone(),
            stream_id,
            close,
        };
        tokio::spawn(run_stream::<delta::DeltaStream>(
            stream,
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(ResponseStream { rx }))
    }
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
    type Req: Send + 'static;
    type Resp: Send + 'static;
    /// `ADS` / `delta ADS`, for logs.
    const NAME: &'static str;
    fn node(req: &Self::Req) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>;
    /// (type URL, version, resources, removed) of a response, for status and logs.
    fn describe(resp: &Self::Resp) -> (&str, &str, usize, usize);
    fn on_request(
        &mut self,
        session: &mut Session,
        req: Self::Req,
        tx: &mpsc::Sender<Result<Self::Resp, Status>>,
    ) -> impl Future<Output = Result<(), Gone>> + Send;
    fn push_all(
        &mut self,
        session: &mut Session,
        tx: &mpsc::Sender<Result<Self::Resp, Status>>,
    ) -> impl Future<Output = Result<(), Gone>> + Send;
}

/// Queues a response on the stream (none: nothing to send) and records it as sent.
pub(crate) async fn send<V: Variant>(
    session: &Session,
    response: Option<V::Resp>,
    tx: &mpsc::Sender<Result<V::Resp, Status>>,
) -> Result<(), Gone> {
    let Some(response) = response else {
        return Ok(());
    };
    let (type_url, version, resources, removed) = V::describe(&response);
    tracing::debug!(node = session.node_id(), %type_url, %version, resources, removed, "{} push", V::NAME);
    session.status.sent(type_url, version);
    tx.send(Ok(response)).await.map_err(|_| Gone)
}

/// One ADS stream: waits for the first request (which names the node), then serves requests
/// and snapshot changes until the client, the server or the stream goes away.
pub(crate) async fn run_stream<V: Variant>(
    mut ctx: StreamCtx,
    mut requests: tonic::Streaming<V::Req>,
    tx: mpsc::Sender<Result<V::Resp, Status>>,
) where
    V::Req: prost::Message + Default,
{
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
