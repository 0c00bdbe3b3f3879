//! The xDS client weft-proxy runs: one delta ADS stream to the control plane, so a proxy
//! receives only what changed.
//!
//! It subscribes wildcard to LDS and CDS and by name to the RDS/EDS/SDS resources its
//! [`Handler`] wants, hands every response to the handler, and ACKs or NACKs with the
//! handler's verdict. After each response it asks the handler again what it wants and sends
//! subscribe/unsubscribe diffs. When the connection or stream fails it reconnects with jittered
//! exponential backoff and resubscribes with `initial_resource_versions`, so the server can skip
//! what the proxy already has.
//!
//! It must not interpret resources (the handler translates them and keeps serving its last good
//! config on NACK) nor hold any lock: the handler is called synchronously on the client's task.

use crate::server::types;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures_util::Stream;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tonic::transport::{Channel, Endpoint};

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of every NACK.
const INVALID_ARGUMENT: i32 = 3;
/// Largest response accepted (a full CDS/EDS push of a big mesh).
const MAX_RESPONSE_BYTES: usize = 256 << 20;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One delta response, as the handler sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Update {
    /// `(name, version, resource)` of added or changed resources.
    pub added: Vec<(String, String, Any)>,
    /// Names of resources that no longer exist (or never did, when asked by name).
    pub removed: Vec<String>,
}

/// The proxy side of the client: applies updates and says what it needs.
pub trait Handler: Send + Sync + 'static {
    /// Applies one response for `type_url`. `Err(message)` NACKs it (the message goes to the
    /// control plane); the handler keeps its previous config for what it rejected.
    fn apply(&self, type_url: &str, update: &Update) -> Result<(), String>;
    /// The resource names of a by-name type (RDS, EDS, SDS) the handler needs now; `None` or an
    /// empty list subscribes to nothing of that type.
    fn wanted(&self, type_url: &str) -> Option<Vec<String>>;
    /// Name → version of the resources of `type_url` the handler holds (sent on reconnect).
    fn known_versions(&self, type_url: &str) -> HashMap<String, String>;
}

/// Asks a running [`XdsClient`] to consult [`Handler::wanted`] now (e.g. after a static config
/// change), instead of waiting for the next response.
#[derive(Debug, Clone)]
pub struct ResubscribeHandle(Arc<Notify>);

impl ResubscribeHandle {
    pub fn resubscribe(&self) {
        self.0.notify_one();
    }
}

/// A failure that stops [`XdsClient::run`] (transient failures are retried, never returned).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "invalid xDS server address `{uri}`: {message} (expected e.g. `http://127.0.0.1:15010`)"
    )]
    InvalidEndpoint { uri: String, message: String },
}

/// Why one stream ended; the client retries after it.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(#[source] tonic::transport::Error),
    #[error("stream failed: {0}")]
    Rpc(#[source] tonic::Status),
    #[error("the server closed the stream")]
    Closed,
    #[error("the request stream is gone")]
    RequestsGone,
}

/// The delta ADS client. Build with [`XdsClient::new`], drive with [`XdsClient::run`].
pub struct XdsClient {
    endpoint: String,
    node: Node,
    handler: Arc<dyn Handler>,
    wake: Arc<Notify>,
    wildcard_types: Vec<String>,
    named_types: Vec<String>,
}

impl std::fmt::Debug for XdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsClient")
            .field("endpoint", &self.endpoint)
            .field("node", &self.node.id)
            .field("wildcard_types", &self.wildcard_types)
            .field("named_types", &self.named_types)
            .finish()
    }
}

impl XdsClient {
    /// A client of the ADS server at `endpoint_uri` (`http://host:port`; a bare `host:port`
    /// gets `http://`), identifying as `node`. Subscribes wildcard to LDS and CDS, by name to
    /// RDS, EDS and SDS.
    pub fn new(endpoint_uri: String, node: Node, handler: Arc<dyn Handler>) -> Self {
        Self {
            endpoint: endpoint_uri,
            node,
            handler,
            wake: Arc::new(Notify::new()),
            wildcard_types: vec![types::LISTENER.to_owned(), types::CLUSTER.to_owned()],
            named_types: vec![
                types::ROUTE.to_owned(),
                types::ENDPOINT.to_owned(),
                types::SECRET.to_owned(),
            ],
        }
    }

    /// Replaces the subscribed types: `wildcard` ones get everything, `named` ones what
    /// [`Handler::wanted`] lists.
    pub fn with_types(mut self, wildcard: &[&str], named: &[&str]) -> Self {
        self.wildcard_types = wildcard.iter().map(|t| (*t).to_owned()).collect();
        self.named_types = named.iter().map(|t| (*t).to_owned()).collect();
        self
    }

    /// A handle to trigger a [`Handler::wanted`] check.
    pub fn resubscribe_handle(&self) -> ResubscribeHandle {
        ResubscribeHandle(self.wake.clone())
    }

    /// Connects, streams and reconnects until `shutdown` resolves. Returns an error only for a
    /// configuration that can never work (an invalid address).
    pub async fn run<F: Future>(self, shutdown: F) -> Result<(), ClientError> {
        let uri = if self.endpoint.contains("://") {
            self.endpoint.clone()
        } else {
            format!("http://{}", self.endpoint)
        };
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| ClientError::InvalidEndpoint {
                uri: self.endpoint.clone(),
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
        let mut failures_in_a_row = 0u32;
        loop {
            let mut progressed = false;
            let result = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                r = self.session(&endpoint, &uri, &mut progressed) => r,
            };
            if progressed {
                backoff.reset();
                failures_in_a_row = 0;
            }
            let delay = backoff.next_delay();
            let error = match result {
                Ok(()) => SessionError::Closed,
                Err(e) => e,
            };
            failures_in_a_row = failures_in_a_row.saturating_add(1);
            if failures_in_a_row == 1 {
                tracing::warn!(server = %uri, node = %self.node.id, %error, retry_in = ?delay, "xDS stream down");
            } else {
                tracing::debug!(server = %uri, node = %self.node.id, %error, retry_in = ?delay, "xDS reconnect failed");
            }
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection and stream, until it fails. Sets `progressed` once a response arrived.
    async fn session(
        &self,
        endpoint: &Endpoint,
        uri: &str,
        progressed: &mut bool,
    ) -> Result<(), SessionError> {
        let channel: Channel = endpoint.connect().await.map_err(SessionError::Connect)?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .max_encoding_message_size(usize::MAX);
        // Filled before the call starts: room for every initial request.
        let capacity = 64.max(self.wildcard_types.len() + self.named_types.len() + 1);
        let (tx, rx) = mpsc::channel(capacity);
        let mut subs = Subscriptions::new(self.node.clone());
        for type_url in &self.wildcard_types {
            let req = subs.wildcard(type_url, self.handler.known_versions(type_url));
            tx.send(req).await.map_err(|_| SessionError::RequestsGone)?;
        }
        for req in subs.sync(&self.named_types, self.handler.as_ref()) {
            tx.send(req).await.map_err(|_| SessionError::RequestsGone)?;
        }
        let response = client
            .delta_aggregated_resources(RequestStream { rx })
            .await
            .map_err(SessionError::Rpc)?;
        tracing::info!(server = %uri, node = %self.node.id, "xDS stream established");
        let mut inbound = response.into_inner();
        loop {
            let requests = tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(resp)) => {
                        *progressed = true;
                        let mut out = vec![self.ack(resp)];
                        out.extend(subs.sync(&self.named_types, self.handler.as_ref()));
                        out
                    }
                    Ok(None) => return Err(SessionError::Closed),
                    Err(status) => return Err(SessionError::Rpc(status)),
                },
                _ = self.wake.notified() => subs.sync(&self.named_types, self.handler.as_ref()),
            };
            for req in requests {
                tx.send(req).await.map_err(|_| SessionError::RequestsGone)?;
            }
        }
    }

    /// Applies a response and builds its ACK or NACK.
    fn ack(&self, resp: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let mut update = Update {
            added: Vec::with_capacity(resp.resources.len()),
            removed: resp.removed_resources,
        };
        for r in resp.resources {
            match r.resource {
                Some(any) => update.added.push((r.name, r.version, any)),
                // A resource without a body is a "does not exist" marker.
                None => update.removed.push(r.name),
            }
        }
        let error_detail = match self.handler.apply(&resp.type_url, &update) {
            Ok(()) => {
                tracing::debug!(
                    type_url = %resp.type_url,
                    version = %resp.system_version_info,
                    added = update.added.len(),
                    removed = update.removed.len(),
                    "xDS update applied"
                );
                None
            }
            Err(message) => {
                tracing::warn!(
                    type_url = %resp.type_url,
                    version = %resp.system_version_info,
                    %message,
                    "xDS update rejected (NACK)"
                );
                Some(RpcStatus {
                    code: INVALID_ARGUMENT,
                    message,
                    details: Vec::new(),
                })
            }
        };
        DeltaDiscoveryRequest {
            type_url: resp.type_url,
            response_nonce: resp.nonce,
            error_detail,
            ..Default::default()
        }
    }
}

/// What this stream subscribed to, by name, per type.
struct Subscriptions {
    /// Sent with the first request only.
    node: Option<Node>,
    named: HashMap<String, BTreeSet<String>>,
    /// Types with a request on this stream (the first one decides legacy wildcard).
    opened: HashSet<String>,
}

impl Subscriptions {
    fn new(node: Node) -> Self {
        Self {
            node: Some(node),
            named: HashMap::new(),
            opened: HashSet::new(),
        }
    }

    fn wildcard(
        &mut self,
        type_url: &str,
        known: HashMap<String, String>,
    ) -> DeltaDiscoveryRequest {
        self.opened.insert(type_url.to_owned());
        DeltaDiscoveryRequest {
            node: self.node.take(),
            type_url: type_url.to_owned(),
            resource_names_subscribe: vec!["*".to_owned()],
            initial_resource_versions: known,
            ..Default::default()
        }
    }

    /// Requests bringing the named subscriptions in line with what the handler wants.
    fn sync(
        &mut self,
        named_types: &[String],
        handler: &dyn Handler,
    ) -> Vec<DeltaDiscoveryRequest> {
        let mut out = Vec::new();
        for type_url in named_types {
            let want: BTreeSet<String> = handler
                .wanted(type_url)
                .unwrap_or_default()
                .into_iter()
                .filter(|n| !n.is_empty() && n != "*")
                .collect();
            let current = self.named.entry(type_url.clone()).or_default();
            if *current == want {
                continue;
            }
            let opened = self.opened.contains(type_url);
            if !opened && want.is_empty() {
                // Never open a type with an empty subscribe list: it would mean wildcard.
                continue;
            }
            let mut req = DeltaDiscoveryRequest {
                node: self.node.take(),
                type_url: type_url.clone(),
                resource_names_subscribe: want.difference(current).cloned().collect(),
                resource_names_unsubscribe: current.difference(&want).cloned().collect(),
                ..Default::default()
            };
            if !opened {
                req.initial_resource_versions = handler
                    .known_versions(type_url)
                    .into_iter()
                    .filter(|(name, _)| want.contains(name))
                    .collect();
                self.opened.insert(type_url.clone());
            }
            *current = want;
            out.push(req);
        }
        out
    }
}

/// The request half of the stream.
struct RequestStream {
    rx: mpsc::Receiver<DeltaDiscoveryRequest>,
}

impl Stream for RequestStream {
    type Item = DeltaDiscoveryRequest;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

/// Exponential backoff with jitter: each delay is uniform in `[d/2, d]`, `d` doubling from
/// `base` up to `max`.
#[derive(Debug)]
struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            current: base,
        }
    }

    fn reset(&mut self) {
        self.current = self.base;
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = d / 2;
        let span = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_micros(random_u64() % (span + 1))
    }
}

/// Randomness for jitter only (not for anything secret): std's randomly keyed hasher.
fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::collections::hash_map::RandomState::new().hash_one(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn backoff_doubles_caps_jitters_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let d1 = b.next_delay();
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
        let d2 = b.next_delay();
        assert!(d2 >= Duration::from_millis(100) && d2 <= Duration::from_millis(200));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(5));
        }
        assert!(b.next_delay() >= Duration::from_millis(2500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    struct Wants(Mutex<Vec<String>>);

    impl Handler for Wants {
        fn apply(&self, _: &str, _: &Update) -> Result<(), String> {
            Ok(())
        }
        fn wanted(&self, type_url: &str) -> Option<Vec<String>> {
            (type_url == types::ENDPOINT).then(|| self.0.lock().unwrap().clone())
        }
        fn known_versions(&self, _: &str) -> HashMap<String, String> {
            HashMap::from([
                ("a".to_owned(), "va".to_owned()),
                ("z".to_owned(), "vz".to_owned()),
            ])
        }
    }

    #[test]
    fn subscriptions_diff_and_node_only_once() {
        let h = Wants(Mutex::new(vec![]));
        let named = vec![types::ROUTE.to_owned(), types::ENDPOINT.to_owned()];
        let mut s = Subscriptions::new(Node {
            id: "n".into(),
            ..Default::default()
        });
        let first = s.wildcard(types::CLUSTER, HashMap::new());
        assert_eq!(first.node.map(|n| n.id).as_deref(), Some("n"));
        assert!(s.sync(&named, &h).is_empty(), "nothing wanted: no request");
        *h.0.lock().unwrap() = vec!["a".into(), "b".into()];
        let reqs = s.sync(&named, &h);
        assert_eq!(reqs.len(), 1);
        assert!(reqs[0].node.is_none());
        assert_eq!(reqs[0].resource_names_subscribe, ["a", "b"]);
        assert_eq!(
            reqs[0].initial_resource_versions,
            HashMap::from([("a".to_owned(), "va".to_owned())])
        );
        assert!(s.sync(&named, &h).is_empty(), "unchanged");
        *h.0.lock().unwrap() = vec!["b".into(), "c".into()];
        let reqs = s.sync(&named, &h);
        assert_eq!(reqs[0].resource_names_subscribe, ["c"]);
        assert_eq!(reqs[0].resource_names_unsubscribe, ["a"]);
        assert!(reqs[0].initial_resource_versions.is_empty());
        *h.0.lock().unwrap() = vec![];
        let reqs = s.sync(&named, &h);
        assert_eq!(reqs[0].resource_names_unsubscribe, ["b", "c"]);
        assert!(reqs[0].resource_names_subscribe.is_empty());
    }

    #[tokio::test]
    async fn invalid_endpoint_is_an_error() {
        let h = Arc::new(Wants(Mutex::new(vec![])));
        let c = XdsClient::new("http://[::1".into(), Node::default(), h);
        let r = tokio::time::timeout(Duration::from_secs(5), c.run(std::future::pending::<()>()))
            .await
            .expect("returns at once");
        assert!(matches!(r, Err(ClientError::InvalidEndpoint { .. })));
    }
}
