//! weft-control: the control plane of the Weft service mesh (the role istiod plays).
//!
//! Config sources (a watched directory, the API's in-memory store) and the registry (ServiceEntry,
//! WorkloadEntry, workloads that register over xDS) feed translation (`translate`), whose output
//! is pushed to each connected proxy through the ADS server of `weft-xds`: debounced, and
//! incremental (a type or resource that did not change is not resent).

pub mod api;
pub mod mem;
pub mod model;
pub mod registry;
pub mod store;
pub mod translate;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Any;
use model::ProxyNode;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{DirSource, MemorySource, Source};
use tokio::sync::Notify;
use weft_xds::server::{Cache, NodeHook, Snapshot, TypeResources, types};

/// How the control plane runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory of YAML to watch (local mode).
    pub dir: Option<PathBuf>,
    pub xds_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// Pushes wait this long for more changes (default 100 ms).
    pub debounce: Duration,
    /// After start, wait this long for proxies to reconnect before the first push, so a restart
    /// never pushes a half-empty registry (default 1 s).
    pub warmup: Duration,
    /// A disconnected proxy's workload stays registered this long (reconnect grace).
    pub grace: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dir: None,
            xds_addr: ([127, 0, 0, 1], 15010).into(),
            api_addr: ([127, 0, 0, 1], 15014).into(),
            debounce: Duration::from_millis(100),
            warmup: Duration::from_secs(1),
            grace: Duration::from_secs(5),
        }
    }
}

#[derive(Debug)]
struct Connected {
    node: ProxyNode,
    streams: u32,
    /// Set when the last stream closed.
    gone_since: Option<Instant>,
    /// How long it stays registered once gone.
    grace: Duration,
}

/// An address handed out by the API, waiting for its proxy to connect.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reservation {
    pub name: String,
    pub namespace: String,
    pub address: IpAddr,
    pub ports: Vec<u16>,
}

/// Converted resources by a 128-bit hash of (type URL, JSON text).
type Converted = HashMap<(u64, u64), Any>;

/// Where registrations are kept across restarts, under the watched directory (hidden from it).
const STATE_FILE: &str = ".weft/workloads.json";
/// How long restored registrations wait for their proxies to reconnect.
const RESTORE_GRACE: Duration = Duration::from_secs(20);

struct Sources {
    dir: Option<DirSource>,
    memory: MemorySource,
}

/// The control plane's state, shared by the push loop, the ADS hook and the API.
pub struct ControlPlane {
    pub opts: Options,
    pub cache: Cache,
    sources: Mutex<Sources>,
    nodes: Mutex<BTreeMap<String, Connected>>,
    reservations: Mutex<BTreeMap<(String, String), Reservation>>,
    dirty: Notify,
    started: Instant,
    pool: weft_xds::DescriptorPool,
    /// JSON text → Any, shared across proxies and pushes (most resources are identical).
    /// Converted resources of this push and of the previous one (generations): a resource
    /// unchanged since the last push is not converted again, and memory stays bounded.
    converted: Mutex<(Converted, Converted)>,
    pub push_count: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    pub fn new(opts: Options) -> Arc<Self> {
        let dir = opts.dir.clone().map(DirSource::new);
        // Workloads known before a restart stay registered until their proxies reconnect (or a
        // generous grace runs out), so the first pushes after a restart are never half-empty.
        let mut restored = BTreeMap::new();
        if let Some(path) = opts.dir.as_ref().map(|d| d.join(STATE_FILE))
            && let Ok(text) = std::fs::read_to_string(&path)
        {
            match serde_json::from_str::<Vec<ProxyNode>>(&text) {
                Ok(nodes) => {
                    tracing::info!(workloads = nodes.len(), file = %path.display(), "restored workload registrations");
                    for node in nodes {
                        restored.insert(
                            node.id.clone(),
                            Connected {
                                node,
                                streams: 0,
                                gone_since: Some(Instant::now()),
                                grace: opts.grace.max(RESTORE_GRACE),
                            },
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "ignoring unreadable workload state")
                }
            }
        }
        Arc::new(ControlPlane {
            opts,
            cache: Cache::new(),
            sources: Mutex::new(Sources {
                dir,
                memory: MemorySource::default(),
            }),
            nodes: Mutex::new(restored),
            reservations: Mutex::new(BTreeMap::new()),
            dirty: Notify::new(),
            started: Instant::now(),
            pool: weft_xds::descriptors(),
            converted: Mutex::new((HashMap::new(), HashMap::new())),
            push_count: Default::default(),
        })
    }

    pub fn mark_dirty(&self) {
        self.dirty.notify_one();
    }

    /// All resources in force (directory, then API store on top).
    pub fn resources(&self) -> Vec<store::Stored> {
        let s = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<&dyn Source> = Vec::new();
        if let Some(d) = &s.dir {
            list.push(d);
        }
        list.push(&s.memory);
        store::merged(&list)
    }

    /// Problems in the config sources, then valid config this version does not act on yet.
    pub fn config_errors(&self) -> Vec<String> {
        let mut out = {
            let s = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            s.dir.as_ref().map(|d| d.errors()).unwrap_or_default()
        };
        for r in self.resources() {
            out.extend(
                translate::unimplemented(&r.res())
                    .into_iter()
                    .map(|w| format!("warning: {w}")),
            );
        }
        out
    }

    /// Applies parsed resources to the API store (after validation).
    pub fn apply(&self, resources: Vec<store::Stored>) -> Vec<String> {
        let out = self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .memory
            .apply(resources);
        self.mark_dirty();
        out
    }

    pub fn delete(&self, key: &store::Key) -> bool {
        let r = self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .memory
            .delete(key);
        if r {
            self.mark_dirty();
        }
        r
    }

    /// Workloads registered (connected sidecars and gateways).
    pub fn workloads(&self) -> Vec<ProxyNode> {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|c| c.node.clone())
            .collect()
    }

    pub fn reservations(&self) -> Vec<Reservation> {
        self.reservations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Reserves a loopback address of its own for a new workload (127.0.x.y, skipping addresses
    /// in use — by a registered proxy, a reservation, or anything bound on :15000 there).
    pub fn reserve(
        &self,
        name: &str,
        namespace: &str,
        ports: Vec<u16>,
    ) -> Result<Reservation, String> {
        let mut res = self.reservations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = res.get(&(namespace.to_string(), name.to_string())) {
            // The same workload registering again (e.g. restarted): keep its address if free.
            if probe_free(r.address) {
                let mut r = r.clone();
                r.ports = ports;
                res.insert((namespace.to_string(), name.to_string()), r.clone());
                return Ok(r);
            }
        }
        let used: Vec<IpAddr> = self
            .workloads()
            .iter()
            .map(|w| w.ip)
            .chain(res.values().map(|r| r.address))
            .collect();
        for x in 1..=254u8 {
            for y in 2..=254u8 {
                let ip = IpAddr::from([127, 0, x, y]);
                if used.contains(&ip) || !probe_free(ip) {
                    continue;
                }
                let r = Reservation {
                    name: name.into(),
                    namespace: namespace.into(),
                    address: ip,
                    ports,
                };
                res.insert((namespace.to_string(), name.to_string()), r.clone());
                return Ok(r);
            }
        }
        Err("no free loopback address left in 127.0.1.0–127.0.254.255".into())
    }

    /// Writes the registered workloads next to the config (atomically), for restarts.
    fn save_workloads(&self) {
        let Some(dir) = self.opts.dir.as_ref() else {
            return;
        };
        let path = dir.join(STATE_FILE);
        let nodes: Vec<ProxyNode> = self
            .workloads()
            .into_iter()
            .filter(|n| !n.proxyless)
            .collect();
        let Ok(text) = serde_json::to_vec_pretty(&nodes) else {
            return;
        };
        let tmp = path.with_extension("json.tmp");
        let result = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::warn!(file = %path.display(), error = %e, "cannot save workload registrations");
        }
    }

    /// Forgets a workload now (its `weft run` stopped).
    pub fn deregister(&self, namespace: &str, name: &str) -> bool {
        let had = self
            .reservations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(namespace.into(), name.into()))
            .is_some();
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let before = nodes.len();
        nodes.retain(|_, c| {
            !(c.node.namespace == namespace && c.node.name == name && c.node.role == "sidecar")
        });
        let removed = nodes.len() != before;
        drop(nodes);
        if removed {
            self.save_workloads();
            self.mark_dirty();
        }
        had || removed
    }

    fn to_any(&self, type_url: &str, name: &str, json: &serde_json::Value) -> Option<Any> {
        let text = json.to_string();
        let key = {
            use std::hash::{Hash, Hasher};
            let mut a = std::hash::DefaultHasher::new();
            let mut b = std::hash::DefaultHasher::new();
            (type_url, &text).hash(&mut a);
            (0xA5u8, type_url, &text).hash(&mut b);
            (a.finish(), b.finish())
        };
        {
            let mut c = self.converted.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(a) = c.0.get(&key) {
                return Some(a.clone());
            }
            // Used again this push: move it from the previous generation.
            if let Some(a) = c.1.remove(&key) {
                c.0.insert(key, a.clone());
                return Some(a);
            }
        }
        let full = type_url.rsplit('/').next().unwrap_or_default();
        match weft_xds::json::json_to_any(&self.pool, full, json.clone(), name) {
            Ok(any) => {
                self.converted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .0
                    .insert(key, any.clone());
                Some(any)
            }
            Err(e) => {
                // A translation bug must not reach a proxy: drop the resource and say why.
                tracing::error!(resource = name, error = %e, "generated an invalid Envoy resource; not pushing it");
                None
            }
        }
    }

    fn type_resources(
        &self,
        type_url: &str,
        items: &BTreeMap<String, serde_json::Value>,
    ) -> TypeResources {
        let mut map = BTreeMap::new();
        let mut h = std::hash::DefaultHasher::new();
        for (name, json) in items {
            if let Some(any) = self.to_any(type_url, name, json) {
                std::hash::Hash::hash(&name, &mut h);
                std::hash::Hash::hash(&any.value, &mut h);
                map.insert(name.clone(), any);
            }
        }
        TypeResources::from_items(
            format!("{:016x}", std::hash::Hasher::finish(&h)),
            Arc::new(map),
        )
    }

    /// Recomputes and pushes every connected proxy's configuration.
    pub fn push_all(&self) {
        let t0 = Instant::now();
        let resources: Vec<translate::Res> =
            self.resources().iter().map(store::Stored::res).collect();
        // Drop proxies whose grace period ran out.
        {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<String> = nodes
                .iter()
                .filter(|(_, c)| c.gone_since.is_some_and(|t| t.elapsed() >= c.grace))
                .map(|(k, _)| k.clone())
                .collect();
            let pruned = !gone.is_empty();
            for id in gone {
                nodes.remove(&id);
                self.cache.clear(&id);
            }
            drop(nodes);
            if pruned {
                self.save_workloads();
            }
        }
        let workloads = self.workloads();
        let mut env = registry::build_env(&resources, &workloads);
        // `credentialName` files live under the config directory (see `Env::credential_files`).
        env.config_dir = self
            .opts
            .dir
            .as_deref()
            .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.to_path_buf()));
        // Outbound config is computed once per group of alike proxies and shared (`Arc`).
        let mut groups: HashMap<String, [TypeResources; 4]> = HashMap::new();
        for node in &workloads {
            let key = translate::group_key(node, &env);
            let shared = groups.entry(key).or_insert_with(|| {
                let out = translate::shared(node, &env);
                [
                    self.type_resources(types::LISTENER, &out.listeners),
                    self.type_resources(types::ROUTE, &out.routes),
                    self.type_resources(types::CLUSTER, &out.clusters),
                    self.type_resources(types::ENDPOINT, &out.endpoints),
                ]
            });
            let local = translate::local(node, &env);
            let merge = |tr: &TypeResources,
                         type_url: &str,
                         items: &BTreeMap<String, serde_json::Value>| {
                if items.is_empty() {
                    return tr.clone();
                }
                let own = self.type_resources(type_url, items);
                let mut all = (*tr.items).clone();
                all.extend(own.items.iter().map(|(k, v)| (k.clone(), v.clone())));
                TypeResources::from_items(format!("{}.{}", tr.version, own.version), Arc::new(all))
            };
            let snap = Snapshot::new()
                .with(
                    types::LISTENER,
                    merge(&shared[0], types::LISTENER, &local.listeners),
                )
                .with(types::ROUTE, merge(&shared[1], types::ROUTE, &local.routes))
                .with(
                    types::CLUSTER,
                    merge(&shared[2], types::CLUSTER, &local.clusters),
                )
                .with(
                    types::ENDPOINT,
                    merge(&shared[3], types::ENDPOINT, &local.endpoints),
                );
            // Unchanged config: do not wake the proxy's streams for nothing.
            let same = self.cache.snapshot(&node.id).is_some_and(|old| {
                old.resources.len() == snap.resources.len()
                    && snap
                        .resources
                        .iter()
                        .all(|(t, r)| old.resources.get(t).is_some_and(|o| o.version == r.version))
            });
            if !same {
                self.cache.set_snapshot(&node.id, snap);
            }
        }
        {
            let mut c = self.converted.lock().unwrap_or_else(|p| p.into_inner());
            let current = std::mem::take(&mut c.0);
            c.1 = current;
        }
        mem::trim_heap();
        self.push_count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(proxies = workloads.len(), groups = groups.len(), took = ?t0.elapsed(), "pushed");
    }

    /// Polls sources and pushes (debounced) until `shutdown`.
    pub async fn run_push_loop(self: Arc<Self>) {
        let warm = self.opts.warmup.saturating_sub(self.started.elapsed());
        tokio::time::sleep(warm).await;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        self.push_all();
        // Responses leave on the streams after a push returns; trim the heap again once they
        // have gone out (a second later), or their freed buffers stay resident.
        let mut trim_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = self.dirty.notified() => {}
                _ = tick.tick() => {
                    if trim_at.is_some_and(|t| tokio::time::Instant::now() >= t) {
                        trim_at = None;
                        mem::trim_heap();
                    }
                    let changed = {
                        let mut s = self.sources.lock().unwrap_or_else(|p| p.into_inner());
                        s.dir.as_mut().is_some_and(|d| d.poll())
                    };
                    let expired = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).values().any(|c| c.gone_since.is_some_and(|t| t.elapsed() >= c.grace));
                    if !changed && !expired {
                        continue;
                    }
                }
            }
            // Debounce: coalesce changes arriving within the window.
            while tokio::time::timeout(self.opts.debounce, self.dirty.notified())
                .await
                .is_ok()
            {}
            self.push_all();
            trim_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
        }
    }

    /// Loads the directory once (so errors show at start) and serves xDS and the API until
    /// `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        {
            let mut s = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(d) = s.dir.as_mut() {
                d.poll();
            }
        }
        let xds = tokio::net::TcpListener::bind(self.opts.xds_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind xDS on {}: {e}", self.opts.xds_addr))?;
        let api = tokio::net::TcpListener::bind(self.opts.api_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind the API on {}: {e}", self.opts.api_addr))?;
        tracing::info!(xds = %self.opts.xds_addr, api = %self.opts.api_addr, "control plane listening");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let push = tokio::spawn(self.clone().run_push_loop());
        let api_task = tokio::spawn(api::serve(api, self.clone(), stop_rx.clone()));
        let hook: Arc<dyn NodeHook> = Arc::new(Hook(self.clone()));
        let mut rx = stop_rx.clone();
        let xds_task = tokio::spawn(weft_xds::server::serve(
            xds,
            self.cache.clone(),
            hook,
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ));
        shutdown.await;
        let _ = stop_tx.send(true);
        push.abort();
        let _ = api_task.await;
        let _ = xds_task.await;
        Ok(())
    }
}

fn probe_free(ip: IpAddr) -> bool {
    std::net::TcpListener::bind(SocketAddr::new(ip, 15000)).is_ok()
}

struct Hook(Arc<ControlPlane>);

impl NodeHook for Hook {
    fn connected(&self, node: &Node, _stream_id: u64) {
        let p = ProxyNode::from_node(node);
        tracing::info!(node = %p.id, "proxy connected");
        let mut nodes = self.0.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let entry = nodes.entry(p.id.clone()).or_insert(Connected {
            node: p.clone(),
            streams: 0,
            gone_since: None,
            grace: self.0.opts.grace,
        });
        entry.node = p;
        entry.streams += 1;
        entry.gone_since = None;
        entry.grace = self.0.opts.grace;
        drop(nodes);
        self.0.save_workloads();
        self.0.mark_dirty();
    }

    fn disconnected(&self, node: &Node, _stream_id: u64) {
        let mut nodes = self.0.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = nodes.get_mut(&node.id) {
            c.streams = c.streams.saturating_sub(1);
            if c.streams == 0 {
                tracing::info!(node = %node.id, "proxy disconnected");
                c.gone_since = Some(Instant::now());
            }
        }
    }
}
