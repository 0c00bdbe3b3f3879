//! Our ADS server against a real third-party client: gRPC's proxyless xDS client (Python
//! `grpcio`, C core). It resolves `xds:///greeter...:50051` through LDS → RDS → CDS → EDS by
//! name on a SotW stream, NACKs a cluster it cannot use, and then calls a backend the test's
//! Python process serves. Skipped (with a note) when `python3 -c 'import grpc'` fails.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, Locality, SocketAddress, address,
    config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use prost::{Message, Name};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use weft_xds::server::NoHook;
use weft_xds::{Cache, Snapshot, SyncState, TypeResources, serve, types};

const TARGET: &str = "greeter.default.svc.cluster.local:50051";
const NODE: &str = "grpc-proxyless-1";

const CLIENT: &str = r#"
import sys, grpc
from concurrent import futures

def say_hello(request, context):
    return b"hello " + request

server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "helloworld.Greeter",
    {"SayHello": grpc.unary_unary_rpc_method_handler(say_hello)}),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print("PORT", port, flush=True)
sys.stdin.readline()
channel = grpc.insecure_channel("xds:///" + sys.argv[1])
call = channel.unary_unary("/helloworld.Greeter/SayHello")
reply = call(b"weft", timeout=30, wait_for_ready=True)
print("REPLY", reply.decode(), flush=True)
channel.close()
server.stop(None)
"#;

fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn snapshot(backend_port: u32, cluster_ok: bool, version: &str) -> Snapshot {
    let hcm = HttpConnectionManager {
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: "greeter-route".into(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..Default::default()
        }],
        ..Default::default()
    };
    let listener = Listener {
        name: TARGET.into(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(&hcm)),
        }),
        ..Default::default()
    };
    let route_config = RouteConfiguration {
        name: "greeter-route".into(),
        virtual_hosts: vec![VirtualHost {
            name: "greeter".into(),
            domains: vec![TARGET.into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        "outbound|50051||greeter".into(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let discovery = if cluster_ok {
        cluster::DiscoveryType::Eds
    } else {
        // gRPC only uses EDS, LOGICAL_DNS and aggregate clusters: it must NACK this.
        cluster::DiscoveryType::Static
    };
    let cluster = Cluster {
        name: "outbound|50051||greeter".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: "greeter-eds".into(),
        }),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        ..Default::default()
    };
    let cla = ClusterLoadAssignment {
        cluster_name: "greeter-eds".into(),
        endpoints: vec![LocalityLbEndpoints {
            locality: Some(Locality {
                region: "local".into(),
                ..Default::default()
            }),
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: "127.0.0.1".into(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(
                                backend_port,
                            )),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    Snapshot::new()
        .with(
            types::LISTENER,
            TypeResources::new("1").with(TARGET, any(&listener)),
        )
        .with(
            types::ROUTE,
            TypeResources::new("1").with("greeter-route", any(&route_config)),
        )
        .with(
            types::CLUSTER,
            TypeResources::new(version).with("outbound|50051||greeter", any(&cluster)),
        )
        .with(
            types::ENDPOINT,
            TypeResources::new("1").with("greeter-eds", any(&cla)),
        )
}

fn python_grpc_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn proxyless_grpc_resolves_through_our_server_and_nacks_what_it_cannot_use() {
    if !python_grpc_available() {
        eprintln!("skipped: python3 with grpcio is not installed");
        return;
    }
    tokio::time::timeout(Duration::from_secs(90), async {
        let cache = Cache::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let xds_addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            cache.clone(),
            Arc::new(NoHook),
            async move {
                let _ = stopped.await;
            },
        ));

        let bootstrap = serde_json::json!({
            "xds_servers": [{
                "server_uri": xds_addr.to_string(),
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {"id": NODE, "cluster": "greeter", "metadata": {"app": "greeter"}},
        });
        let mut child = tokio::process::Command::new("python3")
            .args(["-c", CLIENT, TARGET])
            .env("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap.to_string())
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("grpc_proxy")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn python3");
        let mut stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port_line = lines.next_line().await.unwrap().expect("PORT line");
        let port: u32 = port_line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .expect("backend port");

        // First a cluster gRPC cannot use: it NACKs, and we see why.
        cache.set_snapshot(NODE, snapshot(port, false, "bad"));
        stdin.write_all(b"go\n").await.unwrap();
        stdin.flush().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let nack = loop {
            let st = cache.status();
            if let Some(t) = st
                .iter()
                .find(|n| n.node_id == NODE)
                .and_then(|n| n.per_type.get(types::CLUSTER))
                .filter(|t| t.state == SyncState::Nacked)
            {
                break t.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no CDS NACK: {st:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (version, message) = nack.nacked.expect("NACK recorded");
        assert_eq!(version, "bad");
        assert!(!message.is_empty());
        eprintln!("gRPC's NACK: {message}");

        // Then the good one: the call goes through.
        cache.set_snapshot(NODE, snapshot(port, true, "good"));
        let reply = lines.next_line().await.unwrap().expect("REPLY line");
        assert_eq!(reply, "REPLY hello weft");

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status = cache.status();
            let node = status.iter().find(|n| n.node_id == NODE).expect("node");
            assert_eq!(node.cluster, "greeter");
            assert_eq!(node.metadata["app"], "greeter");
            let synced = [
                types::LISTENER,
                types::ROUTE,
                types::CLUSTER,
                types::ENDPOINT,
            ]
            .iter()
            .all(|t| {
                node.per_type
                    .get(*t)
                    .is_some_and(|s| s.state == SyncState::Synced)
            });
            if synced {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not synced: {node:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let exit = child.wait().await.unwrap();
        assert!(exit.success());
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    })
    .await
    .expect("test timed out");
}
