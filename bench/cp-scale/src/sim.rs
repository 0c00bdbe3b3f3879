//! Simulated proxies: a [`weft_xds::client::XdsClient`] (delta ADS, exactly what weft-proxy
//! runs) per simulated sidecar, with a [`Handler`] that accepts every update, keeps only names
//! and versions, and logs when each update arrived.
//!
//! It exists so one process can stand in for hundreds of proxies while the figures still come
//! from the real client and the real wire protocol. The handler's `apply` runs right before
//! the client sends its ACK, so an event's time is the ACK time. It must stay cheap (the
//! control plane shares the machine's two cores with it): no resource is kept, and only one
//! client (the *inspector*) decodes clusters and keeps the last outbound route for checks.
//! It must never NACK — the benchmark measures pushes, not validation.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use prost::Message;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;
use weft_xds::client::{Handler, Update};
use weft_xds::server::types;

/// The four types a sidecar uses, in the order of [`Ty`].
pub const TYPES: [&str; 4] = [
    types::LISTENER,
    types::CLUSTER,
    types::ROUTE,
    types::ENDPOINT,
];
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// The route configuration sidecars get from weft (`translate::sidecar_routes`).
pub const OUTBOUND_ROUTE: &str = "outbound";
/// Added names are kept in an event only for small updates (to name what an edit pushed).
const NAMES_KEPT: usize = 16;

/// Index into [`TYPES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Lds = 0,
    Cds = 1,
    Rds = 2,
    Eds = 3,
}

impl Ty {
    pub const ALL: [Ty; 4] = [Ty::Lds, Ty::Cds, Ty::Rds, Ty::Eds];

    fn of(type_url: &str) -> Option<Ty> {
        Ty::ALL.into_iter().find(|t| TYPES[*t as usize] == type_url)
    }
}

/// One applied update (≈ one ACK).
#[derive(Debug, Clone)]
pub struct Event {
    pub at: Instant,
    pub ty: Ty,
    pub added: usize,
    /// Encoded size of the added resources.
    pub bytes: usize,
    /// Version of the `outbound` route, when this update carried it.
    pub route_version: Option<String>,
    /// Added names, when there were at most [`NAMES_KEPT`].
    pub names: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    /// Per type: name → version held.
    held: [HashMap<String, String>; 4],
    /// Listener name → RDS names its HTTP connection managers use.
    routes_of: HashMap<String, Vec<String>>,
    events: Vec<Event>,
    /// Inspector only: the last `outbound` RouteConfiguration, encoded.
    last_route: Option<Vec<u8>>,
    /// Inspector only: clusters seen that are not EDS.
    non_eds: usize,
    /// Resources that did not decode (listeners; clusters on the inspector).
    undecodable: usize,
}

/// One simulated sidecar's handler and what it recorded.
#[derive(Debug)]
pub struct SimProxy {
    pub index: usize,
    /// Shared by all: when set, `known_versions` reports nothing (a reconnect gets everything).
    forget: Arc<AtomicBool>,
    inspector: bool,
    state: Mutex<State>,
}

/// Istio's sidecar node id for simulated proxy `n`: `sidecar~127.2.x.y~bench-n.bench~bench.svc.cluster.local`.
pub fn node(n: usize) -> Node {
    let x = n / 250;
    let y = n % 250 + 1;
    let ns = crate::mesh::NAMESPACE;
    let mut metadata = Struct::default();
    metadata.fields.insert(
        "NAMESPACE".into(),
        Value {
            kind: Some(Kind::StringValue(ns.into())),
        },
    );
    Node {
        id: format!("sidecar~127.2.{x}.{y}~bench-{n}.{ns}~{ns}.svc.cluster.local"),
        cluster: format!("bench-{n}.{ns}"),
        metadata: Some(metadata),
        user_agent_name: "weft-cp-scale".into(),
        ..Default::default()
    }
}

/// RDS names referenced by a listener's HTTP connection managers.
fn rds_names(listener: &Listener) -> Vec<String> {
    let mut out = Vec::new();
    for chain in listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.iter())
    {
        for f in &chain.filters {
            let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            if any.type_url != HCM_TYPE {
                continue;
            }
            if let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice())
                && let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier
                && !rds.route_config_name.is_empty()
            {
                out.push(rds.route_config_name);
            }
        }
    }
    out
}

impl SimProxy {
    pub fn new(index: usize, forget: Arc<AtomicBool>, inspector: bool) -> Self {
        Self {
            index,
            forget,
            inspector,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resources held of type `ty`.
    pub fn held(&self, ty: Ty) -> usize {
        self.lock().held[ty as usize].len()
    }

    /// Events at or after `since` (copied, so the lock is short).
    pub fn events_since(&self, since: Instant) -> Vec<Event> {
        let s = self.lock();
        let start = s.events.partition_point(|e| e.at < since);
        s.events[start..].to_vec()
    }

    /// Inspector only: the last `outbound` route received, encoded.
    pub fn last_route(&self) -> Option<Vec<u8>> {
        self.lock().last_route.clone()
    }

    /// (non-EDS clusters seen by the inspector, resources that did not decode).
    pub fn oddities(&self) -> (usize, usize) {
        let s = self.lock();
        (s.non_eds, s.undecodable)
    }
}

impl Handler for SimProxy {
    fn apply(&self, type_url: &str, update: &Update) -> Result<(), String> {
        let at = Instant::now();
        let Some(ty) = Ty::of(type_url) else {
            return Ok(());
        };
        let mut s = self.lock();
        let s = &mut *s;
        let mut bytes = 0;
        let mut route_version = None;
        for (name, version, any) in &update.added {
            bytes += any.value.len();
            match ty {
                Ty::Lds => match Listener::decode(any.value.as_slice()) {
                    Ok(l) => {
                        s.routes_of.insert(name.clone(), rds_names(&l));
                    }
                    Err(_) => s.undecodable += 1,
                },
                Ty::Cds if self.inspector => match Cluster::decode(any.value.as_slice()) {
                    Ok(c) => {
                        let eds = matches!(
                            c.cluster_discovery_type,
                            Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
                        );
                        if !eds {
                            s.non_eds += 1;
                        }
                    }
                    Err(_) => s.undecodable += 1,
                },
                Ty::Rds if name == OUTBOUND_ROUTE => {
                    route_version = Some(version.clone());
                    if self.inspector {
                        s.last_route = Some(any.value.clone());
                    }
                }
                _ => {}
            }
            s.held[ty as usize].insert(name.clone(), version.clone());
        }
        for name in &update.removed {
            s.held[ty as usize].remove(name);
            if ty == Ty::Lds {
                s.routes_of.remove(name);
            }
        }
        let names = if update.added.len() <= NAMES_KEPT {
            update.added.iter().map(|(n, _, _)| n.clone()).collect()
        } else {
            Vec::new()
        };
        s.events.push(Event {
            at,
            ty,
            added: update.added.len(),
            bytes,
            route_version,
            names,
        });
        Ok(())
    }

    /// RDS: the names the listeners reference. EDS: every cluster held (all outbound clusters of
    /// a STATIC ServiceEntry are EDS; the inspector checks that).
    fn wanted(&self, type_url: &str) -> Option<Vec<String>> {
        let s = self.lock();
        match Ty::of(type_url)? {
            Ty::Rds => {
                let names: BTreeSet<&String> = s.routes_of.values().flatten().collect();
                Some(names.into_iter().cloned().collect())
            }
            Ty::Eds => Some(s.held[Ty::Cds as usize].keys().cloned().collect()),
            _ => None,
        }
    }

    fn known_versions(&self, type_url: &str) -> HashMap<String, String> {
        if self.forget.load(Ordering::Relaxed) {
            return HashMap::new();
        }
        Ty::of(type_url)
            .map(|t| self.lock().held[t as usize].clone())
            .unwrap_or_default()
    }
}

/// When `events` (one client's, since some instant, in order) first added up to a full
/// sidecar config: a listener, the outbound route, `clusters` clusters and as many endpoint
/// assignments.
pub fn complete_at(events: &[Event], clusters: usize) -> Option<Instant> {
    let mut added = [0usize; 4];
    events.iter().find_map(|e| {
        added[e.ty as usize] += e.added;
        let done = added[Ty::Lds as usize] >= 1
            && added[Ty::Rds as usize] >= 1
            && added[Ty::Cds as usize] >= clusters
            && added[Ty::Eds as usize] >= clusters;
        done.then_some(e.at)
    })
}

/// When `events` first included a response of every type (a resynced stream, even if empty).
pub fn every_type_at(events: &[Event]) -> Option<Instant> {
    let mut seen = [false; 4];
    events.iter().find_map(|e| {
        seen[e.ty as usize] = true;
        seen.iter().all(|s| *s).then_some(e.at)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds;
    use envoy_types::pb::google::protobuf::Any;

    fn listener_any(route: &str) -> Any {
        let hcm = HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: route.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let l = Listener {
            name: "outbound".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(ConfigType::TypedConfig(Any {
                        type_url: HCM_TYPE.into(),
                        value: hcm.encode_to_vec(),
                    })),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        Any {
            type_url: types::LISTENER.into(),
            value: l.encode_to_vec(),
        }
    }

    fn cluster_any(name: &str, t: DiscoveryType) -> Any {
        let c = Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(t as i32)),
            ..Default::default()
        };
        Any {
            type_url: types::CLUSTER.into(),
            value: c.encode_to_vec(),
        }
    }

    fn update(items: Vec<(&str, &str, Any)>, removed: &[&str]) -> Update {
        Update {
            added: items
                .into_iter()
                .map(|(n, v, a)| (n.to_owned(), v.to_owned(), a))
                .collect(),
            removed: removed.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn wanted_follows_listeners_and_clusters() {
        let forget = Arc::new(AtomicBool::new(false));
        let p = SimProxy::new(0, forget.clone(), true);
        assert_eq!(p.wanted(types::ROUTE), Some(vec![]));
        p.apply(
            types::LISTENER,
            &update(vec![("outbound", "1", listener_any("outbound"))], &[]),
        )
        .expect("accepts");
        assert_eq!(p.wanted(types::ROUTE), Some(vec!["outbound".to_owned()]));
        p.apply(
            types::CLUSTER,
            &update(
                vec![
                    ("a", "1", cluster_any("a", DiscoveryType::Eds)),
                    ("b", "1", cluster_any("b", DiscoveryType::Static)),
                ],
                &[],
            ),
        )
        .expect("accepts");
        let mut eds = p.wanted(types::ENDPOINT).expect("some");
        eds.sort();
        assert_eq!(eds, ["a", "b"]);
        assert_eq!(p.oddities(), (1, 0), "the inspector saw one STATIC cluster");
        p.apply(types::CLUSTER, &update(vec![], &["b"]))
            .expect("accepts");
        assert_eq!(p.wanted(types::ENDPOINT), Some(vec!["a".to_owned()]));
        p.apply(types::LISTENER, &update(vec![], &["outbound"]))
            .expect("accepts");
        assert_eq!(p.wanted(types::ROUTE), Some(vec![]));
        assert_eq!(p.wanted(types::SECRET), None);
    }

    #[test]
    fn known_versions_unless_forgetting() {
        let forget = Arc::new(AtomicBool::new(false));
        let p = SimProxy::new(1, forget.clone(), false);
        p.apply(
            types::CLUSTER,
            &update(vec![("a", "v7", cluster_any("a", DiscoveryType::Eds))], &[]),
        )
        .expect("accepts");
        assert_eq!(
            p.known_versions(types::CLUSTER),
            HashMap::from([("a".to_owned(), "v7".to_owned())])
        );
        forget.store(true, Ordering::Relaxed);
        assert!(p.known_versions(types::CLUSTER).is_empty());
    }

    #[test]
    fn events_record_route_versions_and_completion() {
        let forget = Arc::new(AtomicBool::new(false));
        let p = SimProxy::new(2, forget, true);
        let t0 = Instant::now();
        let route = Any {
            type_url: types::ROUTE.into(),
            value: vec![1, 2, 3],
        };
        p.apply(
            types::ROUTE,
            &update(vec![("outbound", "r1", route.clone())], &[]),
        )
        .expect("accepts");
        p.apply("type.googleapis.com/some.Other", &update(vec![], &[]))
            .expect("ignored");
        let ev = p.events_since(t0);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].route_version.as_deref(), Some("r1"));
        assert_eq!(ev[0].names, ["outbound"]);
        assert_eq!(p.last_route(), Some(vec![1, 2, 3]));
        assert_eq!(complete_at(&ev, 1), None);
        assert_eq!(every_type_at(&ev), None);
        let mk = |ty, added| Event {
            at: Instant::now(),
            ty,
            added,
            bytes: 0,
            route_version: None,
            names: vec![],
        };
        let full = vec![
            mk(Ty::Lds, 1),
            mk(Ty::Cds, 3),
            mk(Ty::Rds, 1),
            mk(Ty::Eds, 2),
            mk(Ty::Eds, 1),
            mk(Ty::Eds, 1),
        ];
        assert_eq!(
            complete_at(&full, 3),
            Some(full[4].at),
            "when it became complete"
        );
        assert_eq!(complete_at(&full, 4), None);
        let empty = vec![
            mk(Ty::Lds, 0),
            mk(Ty::Cds, 0),
            mk(Ty::Rds, 0),
            mk(Ty::Eds, 0),
        ];
        assert_eq!(every_type_at(&empty), Some(empty[3].at));
        assert_eq!(complete_at(&empty, 1), None);
        assert!(p.events_since(Instant::now()).is_empty());
    }

    #[test]
    fn node_ids_are_istio_sidecar_ids() {
        let n = node(7);
        assert_eq!(
            n.id,
            "sidecar~127.2.0.8~bench-7.bench~bench.svc.cluster.local"
        );
        assert_eq!(node(250).id.split('~').nth(1), Some("127.2.1.1"));
        let ns = n
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("NAMESPACE"))
            .and_then(|v| v.kind.clone());
        assert_eq!(ns, Some(Kind::StringValue("bench".into())));
    }
}
