//! ADS server and client over real gRPC on 127.0.0.1: SotW with a raw tonic client (as Envoy
//! and proxyless gRPC speak it), delta with a raw client, and our `XdsClient` against our
//! server (ACK/NACK, dynamic EDS subscriptions, reconnect after a server restart).

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::Streaming;
use weft_xds::server::NoHook;
use weft_xds::{
    Cache, Handler, NodeHook, NodeStatus, ServeError, Snapshot, SyncState, TypeResources,
    TypeStatus, Update, XdsClient, serve, types,
};

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

// ---------- resources ----------

fn listener(name: &str, tag: &str) -> Any {
    Any {
        type_url: types::LISTENER.into(),
        value: Listener {
            name: name.into(),
            stat_prefix: tag.into(),
            ..Default::default()
        }
        .encode_to_vec(),
    }
}

fn cluster(name: &str, tag: &str) -> Any {
    Any {
        type_url: types::CLUSTER.into(),
        value: Cluster {
            name: name.into(),
            alt_stat_name: tag.into(),
            ..Default::default()
        }
        .encode_to_vec(),
    }
}

fn cla(name: &str, tag: &str) -> Any {
    Any {
        type_url: types::ENDPOINT.into(),
        value: ClusterLoadAssignment {
            cluster_name: format!("{name}{tag}"),
            ..Default::default()
        }
        .encode_to_vec(),
    }
}

fn route(name: &str) -> Any {
    Any {
        type_url: types::ROUTE.into(),
        value: RouteConfiguration {
            name: name.into(),
            ..Default::default()
        }
        .encode_to_vec(),
    }
}

fn res(version: &str, items: &[(&str, Any)]) -> TypeResources {
    let mut r = TypeResources::new(version);
    for (name, any) in items {
        r = r.with(*name, any.clone());
    }
    r
}

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        cluster: "test-cluster".into(),
        ..Default::default()
    }
}

// ---------- server ----------

struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

async fn start_on(addr: SocketAddr, cache: Cache, hook: Arc<dyn NodeHook>) -> TestServer {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, cache, hook, async move {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        stop: Some(stop),
        task,
    }
}

async fn start(cache: Cache) -> TestServer {
    start_on("127.0.0.1:0".parse().unwrap(), cache, Arc::new(NoHook)).await
}

impl TestServer {
    fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server; open ADS streams must not keep it alive.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("server stops despite open streams")
            .expect("server task");
        result.expect("serve returns Ok");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn client(uri: String) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    tokio::time::timeout(WAIT, AggregatedDiscoveryServiceClient::connect(uri))
        .await
        .expect("connect in time")
        .expect("connect")
}

// ---------- raw SotW stream ----------

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    node: Option<Node>,
}

impl Sotw {
    async fn open(uri: String, node_id: &str) -> Sotw {
        let mut c = client(uri).await;
        let (tx, rx) = mpsc::channel(16);
        let stream = tokio_stream(rx);
        let rx = tokio::time::timeout(WAIT, c.stream_aggregated_resources(stream))
            .await
            .expect("open in time")
            .expect("open")
            .into_inner();
        Sotw {
            tx,
            rx,
            node: Some(node(node_id)),
        }
    }

    async fn request(&mut self, type_url: &str, names: &[&str], version: &str, nonce: &str) {
        let req = DiscoveryRequest {
            node: self.node.take(),
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
        self.send(req).await;
    }

    async fn ack(&mut self, r: &DiscoveryResponse, names: &[&str]) {
        let (t, v, n) = (r.type_url.clone(), r.version_info.clone(), r.nonce.clone());
        self.request(&t, names, &v, &n).await;
    }

    async fn send(&mut self, req: DiscoveryRequest) {
        self.tx.send(req).await.expect("request stream open");
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("no stream error")
            .expect("stream open")
    }

    async fn quiet(&mut self) {
        if let Ok(msg) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("unexpected message: {msg:?}");
        }
    }
}

/// An mpsc receiver as a request stream.
fn tokio_stream<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

fn decode_names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| match a.type_url.as_str() {
            types::LISTENER => Listener::decode(a.value.as_slice()).unwrap().name,
            types::CLUSTER => Cluster::decode(a.value.as_slice()).unwrap().name,
            types::ENDPOINT => {
                ClusterLoadAssignment::decode(a.value.as_slice())
                    .unwrap()
                    .cluster_name
            }
            types::ROUTE => RouteConfiguration::decode(a.value.as_slice()).unwrap().name,
            other => panic!("unexpected type {other}"),
        })
        .collect()
}

fn type_status(cache: &Cache, node_id: &str, type_url: &str) -> Option<TypeStatus> {
    let all: Vec<NodeStatus> = cache.status();
    all.into_iter()
        .find(|n| n.node_id == node_id)?
        .per_type
        .get(type_url)
        .cloned()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_state(cache: &Cache, node_id: &str, type_url: &str, state: SyncState) {
    wait_until(&format!("{type_url} {state:?}"), || {
        type_status(cache, node_id, type_url).is_some_and(|t| t.state == state)
    })
    .await;
}

fn base_snapshot(v: &str) -> Snapshot {
    Snapshot::new()
        .with(types::LISTENER, res("l1", &[("l1", listener("l1", "a"))]))
        .with(
            types::CLUSTER,
            res(
                "c1",
                &[("c1", cluster("c1", "a")), ("c2", cluster("c2", "a"))],
            ),
        )
        .with(
            types::ENDPOINT,
            res(v, &[("c1", cla("c1", "")), ("c2", cla("c2", ""))]),
        )
        .with(types::ROUTE, res("r1", &[("r1", route("r1"))]))
}

// ---------- SotW ----------

#[tokio::test]
async fn sotw_subscribe_ack_push_nack_and_stale_nonce() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let cache = Cache::new();
        cache.set_snapshot("n1", base_snapshot("e1"));
        let server = start(cache.clone()).await;
        let mut s = Sotw::open(server.uri(), "n1").await;

        s.request(types::LISTENER, &[], "", "").await;
        let lds = s.recv().await;
        assert_eq!(lds.type_url, types::LISTENER);
        assert_eq!(lds.version_info, "l1");
        assert_eq!(decode_names(&lds), ["l1"]);
        s.ack(&lds, &[]).await;

        s.request(types::CLUSTER, &[], "", "").await;
        let cds = s.recv().await;
        assert_eq!(decode_names(&cds), ["c1", "c2"]);
        s.ack(&cds, &[]).await;

        s.request(types::ENDPOINT, &["c1"], "", "").await;
        let eds = s.recv().await;
        assert_eq!(decode_names(&eds), ["c1"]);
        s.ack(&eds, &["c1"]).await;
        s.quiet().await;
        for t in [types::LISTENER, types::CLUSTER, types::ENDPOINT] {
            wait_state(&cache, "n1", t, SyncState::Synced).await;
        }
        assert!(
            type_status(&cache, "n1", types::ROUTE).is_none(),
            "RDS never subscribed"
        );

        // Only EDS changed: only EDS is pushed.
        cache.set_snapshot("n1", base_snapshot("e2"));
        let eds2 = s.recv().await;
        assert_eq!(eds2.type_url, types::ENDPOINT);
        assert_eq!(eds2.version_info, "e2");
        assert_eq!(decode_names(&eds2), ["c1"]);
        s.quiet().await;
        assert_eq!(
            type_status(&cache, "n1", types::ENDPOINT).unwrap().state,
            SyncState::Stale
        );
        s.ack(&eds2, &["c1"]).await;
        wait_state(&cache, "n1", types::ENDPOINT, SyncState::Synced).await;

        // A CDS change, NACKed: recorded, not resent.
        let bad = base_snapshot("e2").with(
            types::CLUSTER,
            res("c-bad", &[("c1", cluster("c1", "bad"))]),
        );
        cache.set_snapshot("n1", bad);
        let cds_bad = s.recv().await;
        assert_eq!(cds_bad.version_info, "c-bad");
        s.send(DiscoveryRequest {
            type_url: types::CLUSTER.into(),
            version_info: "c1".into(),
            response_nonce: cds_bad.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "cluster c1: unsupported field".into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
        wait_state(&cache, "n1", types::CLUSTER, SyncState::Nacked).await;
        let st = type_status(&cache, "n1", types::CLUSTER).unwrap();
        assert_eq!(
            st.nacked,
            Some(("c-bad".into(), "cluster c1: unsupported field".into()))
        );
        assert_eq!(st.acked_version.as_deref(), Some("c1"));
        s.quiet().await;

        // The next good snapshot is delivered.
        let good = base_snapshot("e2").with(
            types::CLUSTER,
            res("c-good", &[("c1", cluster("c1", "good"))]),
        );
        cache.set_snapshot("n1", good.clone());
        let cds_good = s.recv().await;
        assert_eq!(cds_good.version_info, "c-good");
        s.ack(&cds_good, &[]).await;
        wait_state(&cache, "n1", types::CLUSTER, SyncState::Synced).await;
        assert_eq!(
            type_status(&cache, "n1", types::CLUSTER).unwrap().nacked,
            None
        );

        // A stale nonce is ignored: neither its names nor its ACK count.
        cache.set_snapshot(
            "n1",
            good.with(
                types::ENDPOINT,
                res("e3", &[("c1", cla("c1", "x")), ("c2", cla("c2", "x"))]),
            ),
        );
        let eds3 = s.recv().await;
        assert_eq!(eds3.version_info, "e3");
        s.request(types::ENDPOINT, &["c1", "c2"], "e3", &eds2.nonce)
            .await;
        s.quiet().await;
        assert_eq!(
            type_status(&cache, "n1", types::ENDPOINT).unwrap().state,
            SyncState::Stale
        );
        // The current nonce with more names: ACK plus a response with both.
        s.ack(&eds3, &["c1", "c2"]).await;
        let eds4 = s.recv().await;
        assert_eq!(decode_names(&eds4), ["c1x", "c2x"]);
        assert_eq!(eds4.version_info, "e3");
        s.ack(&eds4, &["c1", "c2"]).await;
        wait_state(&cache, "n1", types::ENDPOINT, SyncState::Synced).await;

        let status = cache.status();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].cluster, "test-cluster");
        assert_eq!(status[0].streams, 1);
        drop(s);
        wait_until("node disconnected", || cache.status().is_empty()).await;
        server.stop().await;
    })
    .await
    .expect("test timed out");
}

/// gRPC proxyless: LDS/RDS/CDS/EDS by name, only what was asked, and a full resend on reconnect.
#[tokio::test]
async fn sotw_proxyless_grpc_by_name_and_reconnect() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let target = "greeter.default.svc.cluster.local:50051";
        let cache = Cache::new();
        cache.set_snapshot(
            "grpc1",
            Snapshot::new()
                .with(
                    types::LISTENER,
                    res(
                        "1",
                        &[
                            (target, listener(target, "")),
                            ("other:80", listener("other:80", "")),
                        ],
                    ),
                )
                .with(
                    types::ROUTE,
                    res("1", &[("greeter-route", route("greeter-route"))]),
                )
                .with(
                    types::CLUSTER,
                    res(
                        "1",
                        &[
                            (
                                "outbound|50051||greeter",
                                cluster("outbound|50051||greeter", ""),
                            ),
                            ("other", cluster("other", "")),
                        ],
                    ),
                )
                .with(
                    types::ENDPOINT,
                    res(
                        "1",
                        &[(
                            "outbound|50051||greeter",
                            cla("outbound|50051||greeter", ""),
                        )],
                    ),
                ),
        );
        let server = start(cache.clone()).await;
        for round in 0..2 {
            let mut s = Sotw::open(server.uri(), "grpc1").await;
            // After a reconnect gRPC presents the versions it has: it still gets everything.
            let version = if round == 0 { "" } else { "1" };
            s.request(types::LISTENER, &[target], version, "").await;
            let lds = s.recv().await;
            assert_eq!(decode_names(&lds), [target]);
            s.ack(&lds, &[target]).await;
            s.request(types::ROUTE, &["greeter-route"], version, "")
                .await;
            let rds = s.recv().await;
            assert_eq!(decode_names(&rds), ["greeter-route"]);
            s.ack(&rds, &["greeter-route"]).await;
            s.request(types::CLUSTER, &["outbound|50051||greeter"], version, "")
                .await;
            let cds = s.recv().await;
            assert_eq!(decode_names(&cds), ["outbound|50051||greeter"]);
            s.ack(&cds, &["outbound|50051||greeter"]).await;
            s.request(types::ENDPOINT, &["outbound|50051||greeter"], version, "")
                .await;
            let eds = s.recv().await;
            assert_eq!(decode_names(&eds), ["outbound|50051||greeter"]);
            s.ack(&eds, &["outbound|50051||greeter"]).await;
            s.quiet().await;
        }
        server.stop().await;
    })
    .await
    .expect("test timed out");
}

/// A hook that sets the snapshot when the node connects, and records disconnects.
struct SnapshotOnConnect {
    cache: Cache,
    disconnected: AtomicUsize,
}

impl NodeHook for SnapshotOnConnect {
    fn connected(&self, node: &Node, _stream_id: u64) {
        if node.id == "from-hook" {
            self.cache.set_snapshot(&node.id, base_snapshot("e1"));
        }
    }
    fn disconnected(&self, _node: &Node, _stream_id: u64) {
        self.disconnected.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn sotw_waits_for_a_snapshot_and_hook_can_set_it() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let cache = Cache::new();
        let hook = Arc::new(SnapshotOnConnect {
            cache: cache.clone(),
            disconnected: AtomicUsize::new(0),
        });
        let server = start_on("127.0.0.1:0".parse().unwrap(), cache.clone(), hook.clone()).await;

        let mut a = Sotw::open(server.uri(), "from-hook").await;
        a.request(types::CLUSTER, &[], "", "").await;
        assert_eq!(decode_names(&a.recv().await), ["c1", "c2"]);

        let mut b = Sotw::open(server.uri(), "later").await;
        b.request(types::CLUSTER, &[], "", "").await;
        b.request(types::ENDPOINT, &["c2"], "", "").await;
        b.quiet().await;
        wait_state(&cache, "later", types::CLUSTER, SyncState::NotSent).await;
        cache.set_snapshot("later", base_snapshot("e9"));
        let first = b.recv().await;
        let second = b.recv().await;
        assert_eq!(first.type_url, types::CLUSTER, "clusters before endpoints");
        assert_eq!(second.type_url, types::ENDPOINT);
        assert_eq!(decode_names(&second), ["c2"]);

        drop(a);
        drop(b);
        wait_until("hook told of disconnects", || {
            hook.disconnected.load(Ordering::SeqCst) == 2
        })
        .await;
        server.stop().await;
    })
    .await
    .expect("test timed out");
}

// ---------- delta, raw ----------

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
    node: Option<Node>,
}

impl Delta {
    async fn open(uri: String, node_id: &str) -> Delta {
        let mut c = client(uri).await;
        let (tx, rx) = mpsc::channel(16);
        let rx = tokio::time::timeout(WAIT, c.delta_aggregated_resources(tokio_stream(rx)))
            .await
            .expect("open in time")
            .expect("open")
            .into_inner();
        Delta {
            tx,
            rx,
            node: Some(node(node_id)),
        }
    }

    async fn sub(&mut self, type_url: &str, sub: &[&str], unsub: &[&str]) {
        let req = DeltaDiscoveryRequest {
            node: self.node.take(),
            type_url: type_url.into(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        self.tx.send(req).await.expect("request stream open");
    }

    async fn ack(&mut self, r: &DeltaDiscoveryResponse) {
        let req = DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        };
        self.tx.send(req).await.expect("request stream open");
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("no stream error")
            .expect("stream open")
    }

    async fn quiet(&mut self) {
        if let Ok(msg) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("unexpected message: {msg:?}");
        }
    }
}

fn delta_names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

#[tokio::test]
async fn delta_subscriptions_changes_and_removals() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let cache = Cache::new();
        cache.set_snapshot("d1", base_snapshot("e1"));
        let server = start(cache.clone()).await;
        let mut d = Delta::open(server.uri(), "d1").await;

        // Legacy wildcard (empty first subscribe).
        d.sub(types::CLUSTER, &[], &[]).await;
        let cds = d.recv().await;
        assert_eq!(delta_names(&cds), ["c1", "c2"]);
        assert!(cds.resources.iter().all(|r| !r.version.is_empty()));
        d.ack(&cds).await;

        // Explicit `*`.
        d.sub(types::LISTENER, &["*"], &[]).await;
        let lds = d.recv().await;
        assert_eq!(delta_names(&lds), ["l1"]);
        d.ack(&lds).await;

        d.sub(types::ENDPOINT, &["c1"], &[]).await;
        let eds = d.recv().await;
        assert_eq!(delta_names(&eds), ["c1"]);
        d.ack(&eds).await;
        d.sub(types::ENDPOINT, &["c2"], &["c1"]).await;
        let eds = d.recv().await;
        assert_eq!(delta_names(&eds), ["c2"]);
        assert!(eds.removed_resources.is_empty());
        d.ack(&eds).await;
        d.quiet().await;
        wait_state(&cache, "d1", types::ENDPOINT, SyncState::Synced).await;

        // c1 (unsubscribed) and c2 endpoints change, cluster c1 goes away, c2 is unchanged.
        cache.set_snapshot(
            "d1",
            base_snapshot("e2")
                .with(types::CLUSTER, res("c2", &[("c2", cluster("c2", "a"))]))
                .with(
                    types::ENDPOINT,
                    res("e2", &[("c1", cla("c1", "x")), ("c2", cla("c2", "x"))]),
                ),
        );
        let mut got = HashMap::new();
        for _ in 0..2 {
            let r = d.recv().await;
            got.insert(r.type_url.clone(), r);
        }
        d.quiet().await;
        let cds = &got[types::CLUSTER];
        assert!(cds.resources.is_empty(), "c2 unchanged is not resent");
        assert_eq!(cds.removed_resources, ["c1"]);
        let eds = &got[types::ENDPOINT];
        assert_eq!(delta_names(eds), ["c2"]);
        assert_eq!(eds.system_version_info, "e2");
        assert!(!got.contains_key(types::LISTENER));
        d.ack(cds).await;
        d.ack(eds).await;

        // Asking by name for something absent: told so in removed_resources.
        d.sub(types::ROUTE, &["nope"], &[]).await;
        let rds = d.recv().await;
        assert!(rds.resources.is_empty());
        assert_eq!(rds.removed_resources, ["nope"]);
        d.ack(&rds).await;

        // NACK in delta is recorded against the type's system version.
        cache.set_snapshot(
            "d1",
            base_snapshot("e2")
                .with(types::CLUSTER, res("c3", &[("c2", cluster("c2", "b"))]))
                .with(
                    types::ENDPOINT,
                    res("e2", &[("c1", cla("c1", "x")), ("c2", cla("c2", "x"))]),
                ),
        );
        let cds = d.recv().await;
        d.tx.send(DeltaDiscoveryRequest {
            type_url: types::CLUSTER.into(),
            response_nonce: cds.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "nope".into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        wait_state(&cache, "d1", types::CLUSTER, SyncState::Nacked).await;
        d.quiet().await;
        server.stop().await;
    })
    .await
    .expect("test timed out");
}

// ---------- our client against our server ----------

/// Resources of one type a handler holds: name → (version, resource).
type Held = BTreeMap<String, (String, Any)>;

/// A proxy-like handler: keeps resources per type, rejects anything named `bad*`, wants the
/// EDS of the clusters it holds.
#[derive(Default)]
struct Proxy {
    state: Mutex<HashMap<String, Held>>,
    applies: AtomicUsize,
}

impl Proxy {
    fn names(&self, type_url: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .get(type_url)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn payload(&self, type_url: &str, name: &str) -> Option<Any> {
        let state = self.state.lock().unwrap();
        state.get(type_url)?.get(name).map(|(_, any)| any.clone())
    }
}

impl Handler for Proxy {
    fn apply(&self, type_url: &str, update: &Update) -> Result<(), String> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        if let Some((name, _, _)) = update.added.iter().find(|(n, _, _)| n.starts_with("bad")) {
            return Err(format!("cluster {name}: unsupported field `lb_policy`"));
        }
        let mut state = self.state.lock().unwrap();
        let m = state.entry(type_url.to_owned()).or_default();
        for (name, version, any) in &update.added {
            m.insert(name.clone(), (version.clone(), any.clone()));
        }
        for name in &update.removed {
            m.remove(name);
        }
        Ok(())
    }

    fn wanted(&self, type_url: &str) -> Option<Vec<String>> {
        match type_url {
            types::ENDPOINT => Some(self.names(types::CLUSTER)),
            types::ROUTE => Some(vec!["r1".into()]),
            _ => None,
        }
    }

    fn known_versions(&self, type_url: &str) -> HashMap<String, String> {
        let state = self.state.lock().unwrap();
        state
            .get(type_url)
            .map(|m| m.iter().map(|(n, (v, _))| (n.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}

fn client_snapshot(clusters: &[(&str, &str)], cver: &str, listeners: &[&str]) -> Snapshot {
    let c: Vec<(&str, Any)> = clusters.iter().map(|(n, t)| (*n, cluster(n, t))).collect();
    let l: Vec<(&str, Any)> = listeners.iter().map(|n| (*n, listener(n, ""))).collect();
    Snapshot::new()
        .with(types::LISTENER, res(&listeners.join(","), &l))
        .with(types::CLUSTER, res(cver, &c))
        .with(
            types::ENDPOINT,
            res(
                "e1",
                &[
                    ("c1", cla("c1", "")),
                    ("c2", cla("c2", "")),
                    ("c3", cla("c3", "")),
                ],
            ),
        )
        .with(types::ROUTE, res("r1", &[("r1", route("r1"))]))
}

#[tokio::test]
async fn xds_client_ack_nack_dynamic_eds_and_reconnect() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let cache = Cache::new();
        cache.set_snapshot("proxy-1", client_snapshot(&[("c1", "a")], "v1", &["l1"]));
        let server = start(cache.clone()).await;
        let addr = server.addr;

        let proxy = Arc::new(Proxy::default());
        let client = XdsClient::new(server.uri(), node("proxy-1"), proxy.clone());
        let resub = client.resubscribe_handle();
        let (stop_client, client_stopped) = oneshot::channel::<()>();
        let client_task = tokio::spawn(client.run(async move {
            let _ = client_stopped.await;
        }));

        wait_until("initial state", || {
            proxy.names(types::LISTENER) == ["l1"]
                && proxy.names(types::CLUSTER) == ["c1"]
                && proxy.names(types::ENDPOINT) == ["c1"]
                && proxy.names(types::ROUTE) == ["r1"]
        })
        .await;
        for t in [
            types::LISTENER,
            types::CLUSTER,
            types::ENDPOINT,
            types::ROUTE,
        ] {
            wait_state(&cache, "proxy-1", t, SyncState::Synced).await;
        }
        assert!(
            type_status(&cache, "proxy-1", types::SECRET).is_none(),
            "nothing wanted, nothing subscribed"
        );

        // A new cluster: its EDS is subscribed because the handler now wants it.
        cache.set_snapshot(
            "proxy-1",
            client_snapshot(&[("c1", "a"), ("c2", "a")], "v2", &["l1"]),
        );
        wait_until("EDS follows wanted()", || {
            proxy.names(types::ENDPOINT) == ["c1", "c2"]
        })
        .await;

        // A bad cluster: NACKed with the handler's message, last good config kept.
        cache.set_snapshot(
            "proxy-1",
            client_snapshot(&[("c1", "a"), ("c2", "a"), ("bad1", "a")], "v3", &["l1"]),
        );
        wait_state(&cache, "proxy-1", types::CLUSTER, SyncState::Nacked).await;
        let st = type_status(&cache, "proxy-1", types::CLUSTER).unwrap();
        assert_eq!(
            st.nacked,
            Some((
                "v3".into(),
                "cluster bad1: unsupported field `lb_policy`".into()
            ))
        );
        assert_eq!(proxy.names(types::CLUSTER), ["c1", "c2"]);

        // The next good snapshot goes through.
        cache.set_snapshot(
            "proxy-1",
            client_snapshot(&[("c1", "b"), ("c2", "a")], "v4", &["l1"]),
        );
        wait_until("good CDS after NACK", || {
            proxy.payload(types::CLUSTER, "c1") == Some(cluster("c1", "b"))
        })
        .await;
        wait_state(&cache, "proxy-1", types::CLUSTER, SyncState::Synced).await;
        assert_eq!(proxy.names(types::CLUSTER), ["c1", "c2"]);

        // Dropping a cluster unsubscribes its EDS (the server stops sending it).
        cache.set_snapshot("proxy-1", client_snapshot(&[("c1", "b")], "v5", &["l1"]));
        wait_until("cluster removed", || proxy.names(types::CLUSTER) == ["c1"]).await;
        resub.resubscribe();

        // Server restart: the client reconnects and receives the new state.
        server.stop().await;
        let applies_before = proxy.applies.load(Ordering::SeqCst);
        let cache2 = Cache::new();
        cache2.set_snapshot(
            "proxy-1",
            client_snapshot(&[("c1", "b"), ("c3", "a")], "w1", &["l1", "l2"]),
        );
        let server2 = start_on(addr, cache2.clone(), Arc::new(NoHook)).await;
        wait_until("state after reconnect", || {
            proxy.names(types::LISTENER) == ["l1", "l2"]
                && proxy.names(types::CLUSTER) == ["c1", "c3"]
                && proxy.names(types::ENDPOINT).contains(&"c3".to_owned())
        })
        .await;
        assert!(proxy.applies.load(Ordering::SeqCst) > applies_before);
        for t in [types::LISTENER, types::CLUSTER, types::ENDPOINT] {
            wait_state(&cache2, "proxy-1", t, SyncState::Synced).await;
        }

        let _ = stop_client.send(());
        let r = tokio::time::timeout(WAIT, client_task)
            .await
            .expect("client stops")
            .expect("client task");
        assert!(r.is_ok());
        wait_until("client gone", || cache2.status().is_empty()).await;
        server2.stop().await;
    })
    .await
    .expect("test timed out");
}
