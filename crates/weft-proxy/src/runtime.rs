//! The proxy's life cycle: load a bootstrap, compile it (plus whatever xDS delivered) into a
//! snapshot, bind and serve listeners, swap snapshots atomically on change (SIGHUP, a change of
//! the file, an xDS update), drain removed listeners, and drain everything on SIGTERM or
//! `/quitquitquit`.
//!
//! Every change goes through `Control`, which compiles the complete new config first and only
//! then swaps it in: a bad change is refused (reload error, or xDS NACK) and the last good config
//! keeps serving. Nothing here is on the per-request path except `Shared::snapshot`.

use crate::fastmap::FastMap;
use crate::listener::{self, ListenerConfig};
use crate::router::RouteTable;
use crate::stats::Stats;
use crate::upstream::{self, Cluster};
use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterPb;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as ListenerPb;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, watch};

/// A resource received over xDS, with its version.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub version: String,
    pub value: T,
    pub last_updated: SystemTime,
}

/// Everything received over xDS, by type and name.
#[derive(Debug, Clone, Default)]
pub struct Dynamic {
    pub listeners: BTreeMap<String, Versioned<ListenerPb>>,
    pub clusters: BTreeMap<String, Versioned<ClusterPb>>,
    pub routes: BTreeMap<String, Versioned<RouteConfiguration>>,
    pub endpoints: BTreeMap<String, Versioned<ClusterLoadAssignment>>,
    /// Types for which at least one response arrived (readiness).
    pub received: std::collections::BTreeSet<String>,
}

/// One compiled config generation.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub clusters: FastMap<String, Arc<Cluster>>,
    pub routes: FastMap<String, Arc<RouteTable>>,
    /// Listeners ready to serve.
    pub listeners: Vec<Arc<ListenerConfig>>,
    /// Listeners waiting for their route configuration (Envoy's listener warming).
    pub warming: Vec<String>,
    pub bootstrap: Bootstrap,
    pub dynamic: Arc<Dynamic>,
    pub loaded_at: SystemTime,
}

/// State shared by every connection and the admin server.
#[derive(Debug)]
pub struct Shared {
    current: ArcSwap<Snapshot>,
    pub stats: Arc<Stats>,
    pub draining: AtomicBool,
    /// False until the first complete config is in force (xDS: LDS, CDS and what they name).
    pub initialized: AtomicBool,
    pub quit: Notify,
    pub log_reload: Option<LogReload>,
    /// The last reload/xDS error, shown by the admin server.
    pub last_error: Mutex<Option<String>>,
}

type ReloadHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Changes the log filter at run time (`/logging?level=`).
#[derive(Clone)]
pub struct LogReload(pub ReloadHandle);

impl std::fmt::Debug for LogReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogReload")
    }
}

impl Shared {
    /// The config in force; a request keeps the one it started with.
    #[inline]
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }
}

/// Why a config could not be loaded or applied.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] weft_xds::JsonError),
    #[error("{path}: {0}", path = .1)]
    Unsupported(String, String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A resource of the bootstrap file refused when compiled: the file named before it.
    #[error("{path}: {error}")]
    InFile {
        path: String,
        error: crate::config::ConfigError,
    },
    #[error("cannot bind listener {name:?} on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl LoadError {
    /// Names the bootstrap file in front of a refused resource (read, parse and unsupported-field
    /// errors name it already): `FILE: cluster "x": field: why`.
    fn in_file(self, path: &Path) -> Self {
        match self {
            LoadError::Config(error) => LoadError::InFile {
                path: path.display().to_string(),
                error,
            },
            other => other,
        }
    }
}

fn unsupported(pool: &weft_xds::DescriptorPool, full_name: &str, bytes: &[u8]) -> Vec<String> {
    weft_xds::reflect::unsupported_fields(pool, full_name, bytes, &crate::supported::allowed)
}

fn refusal(bad: &[String]) -> String {
    format!(
        "not supported by weft-proxy (refusing rather than ignoring): {}",
        bad.iter()
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Reads and parses a bootstrap file (YAML or JSON) and refuses any field the proxy does not
/// implement, naming it.
pub fn read_bootstrap(path: &Path) -> Result<(Bootstrap, String), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::Read {
        path: path.display().to_string(),
        source: e,
    })?;
    let name = path.display().to_string();
    let b: Bootstrap = weft_xds::from_yaml(&text, &name)?;
    let pool = weft_xds::descriptors();
    let bad = unsupported(
        &pool,
        "envoy.config.bootstrap.v3.Bootstrap",
        &prost::Message::encode_to_vec(&b),
    );
    if !bad.is_empty() {
        return Err(LoadError::Unsupported(refusal(&bad), name));
    }
    crate::config::check_admin(&b).map_err(|e| LoadError::from(e).in_file(path))?;
    crate::xds::check(&b).map_err(|e| LoadError::from(e).in_file(path))?;
    Ok((b, text))
}

/// Whether the bootstrap asks for an ADS connection.
pub fn uses_xds(b: &Bootstrap) -> bool {
    b.dynamic_resources
        .as_ref()
        .is_some_and(|d| d.ads_config.is_some())
}

/// Compiles bootstrap + xDS resources into a snapshot, reusing unchanged clusters, route tables
/// and listeners from `prev`.
pub fn compile(
    b: &Bootstrap,
    dynamic: &Arc<Dynamic>,
    prev: Option<&Snapshot>,
    stats: &Stats,
    version: u64,
) -> Result<Snapshot, LoadError> {
    let xds = uses_xds(b);
    let sr = b.static_resources.clone().unwrap_or_default();
    let mut clusters = FastMap::default();
    let all_clusters = sr
        .clusters
        .iter()
        .chain(dynamic.clusters.values().map(|v| &v.value));
    for c in all_clusters {
        let bytes = prost::Message::encode_to_vec(c);
        let reuse = prev
            .and_then(|p| p.clusters.get(&c.name))
            .filter(|old| old.source == bytes);
        let cluster = match reuse {
            Some(old) => old.clone(),
            None => {
                crate::config::check_cluster(c, xds)?;
                upstream::build(c, stats, xds)?
            }
        };
        if let Some(svc) = &cluster.eds_service
            && let Some(cla) = dynamic.endpoints.get(svc)
        {
            cluster.apply_cla(&cla.version, &cla.value)?;
        }
        if clusters.insert(c.name.clone(), cluster).is_some() {
            return Err(crate::config::ConfigError::new(
                format!("cluster {:?}", c.name),
                "name",
                "duplicate cluster name",
            )
            .into());
        }
    }
    let mut routes = FastMap::default();
    for (name, rc) in &dynamic.routes {
        let table = crate::router::route_table(&rc.value)?;
        // RDS tables are checked only when they say `validate_clusters: true` (Envoy's default
        // is false for them), and only when they change: as in Envoy, a later CDS update that
        // removes a cluster does not invalidate a table already accepted.
        let changed = prev
            .and_then(|p| p.dynamic.routes.get(name))
            .is_none_or(|old| old.value != rc.value);
        if changed
            && rc.value.validate_clusters.as_ref().is_some_and(|b| b.value)
            && let Some((field, missing)) = missing_cluster(&table, &clusters)
        {
            return Err(crate::config::ConfigError::new(
                format!("route_config {name:?}"),
                field,
                format!("cluster `{missing}` is not defined (validate_clusters is true)"),
            )
            .into());
        }
        routes.insert(name.clone(), Arc::new(table));
    }
    let mut listeners = Vec::new();
    let mut warming = Vec::new();
    let mut names = std::collections::HashSet::new();
    let all_listeners = sr
        .listeners
        .iter()
        .chain(dynamic.listeners.values().map(|v| &v.value));
    for l in all_listeners {
        if !names.insert(l.name.clone()) {
            return Err(crate::config::ConfigError::new(
                format!("listener {:?}", l.name),
                "name",
                "duplicate listener name",
            )
            .into());
        }
        let bytes = prost::Message::encode_to_vec(l);
        let built = match prev.and_then(|p| {
            p.listeners
                .iter()
                .find(|x| x.name == l.name && x.source == bytes)
        }) {
            Some(old) => old.clone(),
            None => {
                crate::config::check_listener(l, xds)?;
                let mut built = listener::build(l, stats)?;
                if !l.stat_prefix.is_empty() {
                    // Envoy names the listener's stats `listener.<stat_prefix>.` when set.
                    let by_addr =
                        std::mem::replace(&mut built.stats, stats.listener(&l.stat_prefix));
                    stats.release_listener(by_addr);
                }
                validate_clusters(&built, &clusters)?;
                Arc::new(built)
            }
        };
        if built.rds_names().iter().any(|n| !routes.contains_key(*n)) {
            warming.push(built.name.clone());
            continue;
        }
        listeners.push(built);
    }
    Ok(Snapshot {
        version,
        clusters,
        routes,
        listeners,
        warming,
        bootstrap: b.clone(),
        dynamic: dynamic.clone(),
        loaded_at: SystemTime::now(),
    })
}

/// Refuses inline route tables that name clusters the config does not define (Envoy's
/// `validate_clusters`), so a typo fails at load instead of as 503s at run time.
fn validate_clusters(
    l: &ListenerConfig,
    clusters: &FastMap<String, Arc<Cluster>>,
) -> Result<(), LoadError> {
    let chains = l.chains.iter().chain(l.default_chain.iter());
    for chain in chains {
        let listener::NetworkFilter::Http(hcm) = &chain.filter else {
            continue;
        };
        let crate::http::Routes::Static(table) = &hcm.routes else {
            continue;
        };
        if !table.validate_clusters {
            continue;
        }
        if let Some((field, name)) = missing_cluster(table, clusters) {
            return Err(crate::config::ConfigError::new(
                format!("listener {:?}", l.name),
                format!("route_config {:?} {field}", table.name),
                format!(
                    "cluster `{name}` is not defined (set validate_clusters: false to allow it)"
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// The first cluster `table` names that `clusters` does not define, with its field path.
fn missing_cluster<'t>(
    table: &'t RouteTable,
    clusters: &FastMap<String, Arc<Cluster>>,
) -> Option<(String, &'t str)> {
    table
        .referenced_clusters()
        .into_iter()
        .find(|(_, name)| !clusters.contains_key(*name))
}

/// The resource a listener of `snap` was compiled from (names are unique across static and
/// dynamic listeners).
fn listener_source<'s>(snap: &'s Snapshot, name: &str) -> Option<&'s ListenerPb> {
    snap.dynamic
        .listeners
        .get(name)
        .map(|v| &v.value)
        .or_else(|| {
            snap.bootstrap
                .static_resources
                .as_ref()?
                .listeners
                .iter()
                .find(|l| l.name == name)
        })
}

struct Running {
    addr: SocketAddr,
    /// `SocketAddress.ipv4_compat` the socket was bound with (a change rebinds).
    ipv4_compat: bool,
    config: Arc<ArcSwap<ListenerConfig>>,
    stop: watch::Sender<bool>,
}

struct State {
    path: PathBuf,
    last_text: String,
    bootstrap: Bootstrap,
    dynamic: Arc<Dynamic>,
    running: HashMap<String, Running>,
}

/// Owns the running listeners and applies every config change.
pub struct Control {
    pub shared: Arc<Shared>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Control {
    /// Loads the bootstrap, binds every listener, and starts serving.
    pub fn start(
        path: PathBuf,
        stats: Arc<Stats>,
        log_reload: Option<LogReload>,
    ) -> Result<Arc<Control>, LoadError> {
        let (b, text) = read_bootstrap(&path)?;
        let dynamic = Arc::new(Dynamic::default());
        let snap = compile(&b, &dynamic, None, &stats, 1).map_err(|e| e.in_file(&path))?;
        let xds = uses_xds(&b);
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(snap),
            stats,
            draining: AtomicBool::new(false),
            initialized: AtomicBool::new(!xds),
            quit: Notify::new(),
            log_reload,
            last_error: Mutex::new(None),
        });
        let control = Arc::new(Control {
            shared: shared.clone(),
            state: Mutex::new(State {
                path,
                last_text: text,
                bootstrap: b,
                dynamic,
                running: HashMap::new(),
            }),
        });
        {
            let mut st = control.lock();
            let snap = shared.snapshot();
            sync_listeners(&mut st.running, &snap, &shared)?;
        }
        shared.stats.server.live.set(1);
        crate::mem::release_after_load();
        Ok(control)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn bootstrap(&self) -> Bootstrap {
        self.lock().bootstrap.clone()
    }

    /// Compiles and swaps in a new config; on error nothing changes.
    fn commit(
        &self,
        st: &mut State,
        b: Bootstrap,
        dynamic: Arc<Dynamic>,
    ) -> Result<u64, LoadError> {
        let old = self.shared.snapshot();
        let snap = Arc::new(compile(
            &b,
            &dynamic,
            Some(&old),
            &self.shared.stats,
            old.version + 1,
        )?);
        // Bind new listeners before anything changes; then swap, then move listeners over.
        self.shared.current.store(snap.clone());
        if let Err(e) = sync_listeners(&mut st.running, &snap, &self.shared) {
            self.shared.current.store(old);
            return Err(e);
        }
        st.bootstrap = b;
        st.dynamic = dynamic;
        Ok(snap.version)
    }

    /// Re-reads the bootstrap; on any error the running config stays in force.
    pub fn reload(&self, force: bool) {
        let mut st = self.lock();
        let text = std::fs::read_to_string(&st.path).unwrap_or_default();
        if !force && text == st.last_text {
            return;
        }
        st.last_text = text;
        let path = st.path.clone();
        let result = read_bootstrap(&path).and_then(|(b, _)| {
            let dynamic = st.dynamic.clone();
            self.commit(&mut st, b, dynamic)
                .map_err(|e| e.in_file(&path))
        });
        match result {
            Ok(version) => {
                *self
                    .shared
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                tracing::info!(version, "config reloaded");
                crate::mem::release_after_load();
            }
            Err(e) => {
                tracing::error!(error = %e, "reload rejected; the previous config keeps serving");
                *self
                    .shared
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }
    }

    /// Applies one xDS update (Envoy type URL, added/changed and removed resources). An error is
    /// a NACK: nothing changes and the message names the resource and field.
    pub fn apply_xds(
        &self,
        type_url: &str,
        added: &[(String, String, envoy_types::pb::google::protobuf::Any)],
        removed: &[String],
    ) -> Result<(), String> {
        let mut st = self.lock();
        let mut dynamic = (*st.dynamic).clone();
        let pool = weft_xds::descriptors();
        let full = type_url.rsplit('/').next().unwrap_or("");
        let now = SystemTime::now();
        macro_rules! merge {
            ($map:ident, $ty:ty) => {
                merge!(
                    $map,
                    $ty,
                    |_: &$ty| Ok::<(), crate::config::ConfigError>(())
                )
            };
            ($map:ident, $ty:ty, $check:expr) => {{
                for (name, version, any) in added {
                    let bad = unsupported(&pool, full, &any.value);
                    if !bad.is_empty() {
                        return Err(format!("{full} {name:?}: {}", refusal(&bad)));
                    }
                    let value = <$ty as prost::Message>::decode(any.value.as_slice())
                        .map_err(|e| format!("{full} {name:?}: undecodable: {e}"))?;
                    ($check)(&value).map_err(|e| e.to_string())?;
                    dynamic.$map.insert(
                        name.clone(),
                        Versioned {
                            version: version.clone(),
                            value,
                            last_updated: now,
                        },
                    );
                }
                for name in removed {
                    dynamic.$map.remove(name);
                }
            }};
        }
        match full {
            "envoy.config.listener.v3.Listener" => merge!(listeners, ListenerPb),
            "envoy.config.cluster.v3.Cluster" => merge!(clusters, ClusterPb),
            "envoy.config.route.v3.RouteConfiguration" => merge!(routes, RouteConfiguration),
            "envoy.config.endpoint.v3.ClusterLoadAssignment" => {
                merge!(endpoints, ClusterLoadAssignment, crate::config::check_cla)
            }
            other => {
                return Err(format!(
                    "resource type `{other}` is not supported by weft-proxy"
                ));
            }
        }
        dynamic.received.insert(full.to_string());
        let dynamic = Arc::new(dynamic);
        // Endpoint-only changes touch the clusters in place: no recompilation.
        if full == "envoy.config.endpoint.v3.ClusterLoadAssignment" {
            let snap = self.shared.snapshot();
            for c in snap.clusters.values() {
                if let Some(cla) = c
                    .eds_service
                    .as_ref()
                    .and_then(|s| dynamic.endpoints.get(s))
                {
                    c.apply_cla(&cla.version, &cla.value)
                        .map_err(|e| e.to_string())?;
                }
            }
            st.dynamic = dynamic;
            self.update_initialized(&st);
            return Ok(());
        }
        let b = st.bootstrap.clone();
        match self.commit(&mut st, b, dynamic) {
            Ok(version) => {
                tracing::debug!(version, type_url, "xDS update applied");
                crate::mem::trim_heap();
                self.update_initialized(&st);
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                *self
                    .shared
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(msg.clone());
                Err(msg)
            }
        }
    }

    /// Ready once LDS and CDS (those the bootstrap subscribes to) arrived and every
    /// route/endpoint set they name is known.
    fn update_initialized(&self, st: &State) {
        if self.shared.initialized.load(Ordering::Relaxed) {
            return;
        }
        let d = &st.dynamic;
        let snap = self.shared.snapshot();
        let src = crate::xds::sources(&st.bootstrap);
        let have_types = (!src.lds || d.received.contains("envoy.config.listener.v3.Listener"))
            && (!src.cds || d.received.contains("envoy.config.cluster.v3.Cluster"));
        let eds_done = snap.clusters.values().all(|c| {
            c.eds_service
                .as_ref()
                .is_none_or(|s| d.endpoints.contains_key(s))
        });
        if have_types && eds_done && snap.warming.is_empty() {
            self.shared.initialized.store(true, Ordering::SeqCst);
            tracing::info!("initial xDS configuration complete");
        }
    }

    /// Names this proxy wants for a type (RDS: route configs its listeners use; EDS: its EDS
    /// clusters' service names); None for wildcard types.
    pub fn wanted(&self, type_url: &str) -> Option<Vec<String>> {
        let st = self.lock();
        let snap = self.shared.snapshot();
        match type_url.rsplit('/').next().unwrap_or("") {
            "envoy.config.route.v3.RouteConfiguration" => {
                let sr = st.bootstrap.static_resources.clone().unwrap_or_default();
                let mut names = std::collections::BTreeSet::new();
                let stats = Stats::new();
                for l in sr
                    .listeners
                    .iter()
                    .chain(st.dynamic.listeners.values().map(|v| &v.value))
                {
                    if let Some(built) = snap.listeners.iter().find(|x| x.name == l.name) {
                        names.extend(built.rds_names().into_iter().map(str::to_string));
                    } else if let Ok(built) = listener::build(l, &stats) {
                        names.extend(built.rds_names().into_iter().map(str::to_string));
                    }
                }
                Some(names.into_iter().collect())
            }
            "envoy.config.endpoint.v3.ClusterLoadAssignment" => {
                let mut names: Vec<String> = snap
                    .clusters
                    .values()
                    .filter_map(|c| c.eds_service.clone())
                    .collect();
                names.sort();
                names.dedup();
                Some(names)
            }
            _ => None,
        }
    }

    /// Versions of what this proxy has, per type (sent on reconnect).
    pub fn known_versions(&self, type_url: &str) -> HashMap<String, String> {
        let st = self.lock();
        let d = &st.dynamic;
        fn versions<T>(m: &BTreeMap<String, Versioned<T>>) -> HashMap<String, String> {
            m.iter()
                .map(|(k, v)| (k.clone(), v.version.clone()))
                .collect()
        }
        match type_url.rsplit('/').next().unwrap_or("") {
            "envoy.config.listener.v3.Listener" => versions(&d.listeners),
            "envoy.config.cluster.v3.Cluster" => versions(&d.clusters),
            "envoy.config.route.v3.RouteConfiguration" => versions(&d.routes),
            "envoy.config.endpoint.v3.ClusterLoadAssignment" => versions(&d.endpoints),
            _ => HashMap::new(),
        }
    }

    fn stop_all(&self) {
        for r in self.lock().running.values() {
            let _ = r.stop.send(true);
        }
    }

    /// Serves until SIGTERM/SIGINT or `/quitquitquit`, reloading on SIGHUP and file changes;
    /// then stops accepting, drains open connections for at most `drain_time`, and returns.
    pub async fn run(self: Arc<Self>, drain_time: Duration) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut poll = tokio::time::interval(Duration::from_millis(250));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let shared = self.shared.clone();
        let path = self.lock().path.clone();
        let mut last_meta = file_stamp(&path);
        loop {
            tokio::select! {
                _ = hup.recv() => { tracing::info!("SIGHUP: reloading"); self.reload(true); }
                _ = poll.tick() => {
                    let stamp = file_stamp(&path);
                    if stamp != last_meta {
                        last_meta = stamp;
                        self.reload(false);
                    }
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = shared.quit.notified() => break,
            }
        }
        tracing::info!(drain_time = ?drain_time, "draining");
        shared.draining.store(true, Ordering::SeqCst);
        shared.stats.server.live.set(0);
        self.stop_all();
        let deadline = tokio::time::Instant::now() + drain_time;
        while shared.stats.server.total_connections.get() > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Binds new listeners first (so a bind failure leaves everything as it was), then updates kept
/// ones and drains removed ones. Warming listeners keep any running predecessor untouched.
fn sync_listeners(
    running: &mut HashMap<String, Running>,
    snap: &Snapshot,
    shared: &Arc<Shared>,
) -> Result<(), LoadError> {
    let mut fresh = Vec::new();
    for l in &snap.listeners {
        let compat = crate::config::ipv4_compat(
            listener_source(snap, &l.name).and_then(|pb| pb.address.as_ref()),
        );
        let keep = running
            .get(&l.name)
            .is_some_and(|r| r.addr == l.addr && r.ipv4_compat == compat);
        if !keep {
            let moving_same_addr = running.values().any(|r| r.addr == l.addr);
            if let Some(old) = running.get(&l.name) {
                let _ = old.stop.send(true);
            }
            let sock = match listener::bind_compat(l.addr, compat) {
                Ok(s) => s,
                Err(e) if moving_same_addr => {
                    return Err(LoadError::Bind {
                        name: l.name.clone(),
                        addr: l.addr,
                        source: e,
                    });
                }
                Err(e) => {
                    return Err(LoadError::Bind {
                        name: l.name.clone(),
                        addr: l.addr,
                        source: e,
                    });
                }
            };
            fresh.push((l.clone(), sock, compat));
        }
    }
    let wanted: std::collections::HashSet<&str> = snap
        .listeners
        .iter()
        .map(|l| l.name.as_str())
        .chain(snap.warming.iter().map(String::as_str))
        .collect();
    let removed: Vec<String> = running
        .keys()
        .filter(|k| !wanted.contains(k.as_str()))
        .cloned()
        .collect();
    for name in removed {
        if let Some(r) = running.remove(&name) {
            tracing::info!(listener = %name, "listener removed; draining");
            let _ = r.stop.send(true);
        }
    }
    for l in &snap.listeners {
        if let Some(r) = running.get(&l.name)
            && r.addr == l.addr
        {
            r.config.store(l.clone());
        }
    }
    for (l, sock, ipv4_compat) in fresh {
        let config = Arc::new(ArcSwap::new(l.clone()));
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(listener::serve(
            sock,
            config.clone(),
            shared.clone(),
            stop_rx,
        ));
        tracing::info!(listener = %l.name, addr = %l.addr, "listening");
        running.insert(
            l.name.clone(),
            Running {
                addr: l.addr,
                ipv4_compat,
                config,
                stop,
            },
        );
    }
    Ok(())
}

fn file_stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The admin server's view of the proxy.
#[derive(Debug)]
pub struct Admin(pub Arc<Shared>);

impl crate::admin::AdminHandler for Admin {
    fn is_ready(&self) -> bool {
        self.0.initialized.load(Ordering::Relaxed) && !self.0.draining.load(Ordering::Relaxed)
    }
    fn config_dump(&self) -> serde_json::Value {
        config_dump(&self.0)
    }
    fn clusters(&self) -> String {
        let snap = self.0.snapshot();
        let mut out = String::new();
        let mut names: Vec<_> = snap.clusters.keys().collect();
        names.sort();
        for n in names {
            let c = &snap.clusters[n];
            for h in c.endpoints.load().set.hosts() {
                out.push_str(&format!(
                    "{n}::{}::weight::{}\n{n}::{}::priority::{}\n{n}::{}::rq_active::{}\n{n}::{}::health_flags::{}\n",
                    h.addr,
                    h.weight,
                    h.addr,
                    h.priority,
                    h.addr,
                    h.active_requests(),
                    h.addr,
                    if h.is_ejected() { "/failed_outlier_check" } else { "healthy" }
                ));
            }
        }
        out
    }
    fn set_log_level(&self, spec: &str) -> Result<(), String> {
        let Some(r) = &self.0.log_reload else {
            return Err("logging is not reloadable in this process".into());
        };
        const LEVELS: [&str; 8] = [
            "trace", "debug", "info", "warn", "warning", "error", "critical", "off",
        ];
        for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
            if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "unknown log level `{level}` (use trace, debug, info, warn, error or off)"
                ));
            }
        }
        let spec = spec.replace("warning", "warn").replace("critical", "error");
        let filter = tracing_subscriber::EnvFilter::try_new(&spec).map_err(|e| e.to_string())?;
        r.0.reload(filter).map_err(|e| e.to_string())
    }
    fn quit(&self) {
        self.0.quit.notify_one();
    }
    fn stats(&self) -> &Stats {
        for c in self.0.snapshot().clusters.values() {
            c.sync_outlier_stats();
        }
        &self.0.stats
    }
}

/// Envoy-shaped `/config_dump`: the bootstrap, then listeners and clusters in force with the
/// version of the config generation that carries them.
pub fn config_dump(shared: &Shared) -> serde_json::Value {
    use serde_json::json;
    let snap = shared.snapshot();
    let pool = weft_xds::descriptors();
    let ts = httpdate::fmt_http_date(snap.loaded_at);
    let dump = |name: &str, bytes: &[u8]| weft_xds::json::to_json_with(&pool, name, bytes);
    let sr = snap.bootstrap.static_resources.clone().unwrap_or_default();
    let listeners: Vec<_> = sr
        .listeners
        .iter()
        .map(|l| json!({"listener": dump("envoy.config.listener.v3.Listener", &prost::Message::encode_to_vec(l)), "last_updated": ts}))
        .collect();
    let clusters: Vec<_> = sr
        .clusters
        .iter()
        .map(|c| json!({"cluster": dump("envoy.config.cluster.v3.Cluster", &prost::Message::encode_to_vec(c)), "last_updated": ts}))
        .collect();
    let mut bootstrap = dump(
        "envoy.config.bootstrap.v3.Bootstrap",
        &prost::Message::encode_to_vec(&snap.bootstrap),
    );
    if let Some(o) = bootstrap.as_object_mut() {
        o.remove("static_resources");
    }
    let d = &snap.dynamic;
    let stamp = |t: SystemTime| httpdate::fmt_http_date(t);
    let dyn_listeners: Vec<_> = d.listeners.iter().map(|(n, v)| {
        let state = if snap.warming.contains(n) { "warming_state" } else { "active_state" };
        json!({"name": n, state: {"version_info": v.version, "listener": dump("envoy.config.listener.v3.Listener", &prost::Message::encode_to_vec(&v.value)), "last_updated": stamp(v.last_updated)}})
    }).collect();
    let dyn_clusters: Vec<_> = d.clusters.values().map(|v| json!({"version_info": v.version, "cluster": dump("envoy.config.cluster.v3.Cluster", &prost::Message::encode_to_vec(&v.value)), "last_updated": stamp(v.last_updated)})).collect();
    let dyn_routes: Vec<_> = d.routes.values().map(|v| json!({"version_info": v.version, "route_config": dump("envoy.config.route.v3.RouteConfiguration", &prost::Message::encode_to_vec(&v.value)), "last_updated": stamp(v.last_updated)})).collect();
    let dyn_eps: Vec<_> = d.endpoints.values().map(|v| json!({"version_info": v.version, "endpoint_config": dump("envoy.config.endpoint.v3.ClusterLoadAssignment", &prost::Message::encode_to_vec(&v.value)), "last_updated": stamp(v.last_updated)})).collect();
    json!({
        "configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": bootstrap, "last_updated": ts},
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "version_info": snap.version.to_string(), "static_listeners": listeners, "dynamic_listeners": dyn_listeners},
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "version_info": snap.version.to_string(), "static_clusters": clusters, "dynamic_active_clusters": dyn_clusters},
            {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamic_route_configs": dyn_routes},
            {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump", "dynamic_endpoint_configs": dyn_eps},
        ],
        "weft": {
            "version": snap.version,
            "last_reload_error": shared.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic_with_route(rc: &str) -> Arc<Dynamic> {
        let value: RouteConfiguration = weft_xds::from_yaml(rc, "test").unwrap();
        let mut d = Dynamic::default();
        d.routes.insert(
            value.name.clone(),
            Versioned {
                version: "1".into(),
                value,
                last_updated: SystemTime::now(),
            },
        );
        Arc::new(d)
    }

    const RC: &str = "name: r\nvirtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: nope}}]}]\n";

    #[test]
    fn rds_tables_validate_clusters_only_when_asked() {
        let b = Bootstrap::default();
        let stats = Stats::new();
        // Unset (Envoy's RDS default): an unknown cluster is accepted (503 NC at run time).
        let d = dynamic_with_route(RC);
        assert!(compile(&b, &d, None, &stats, 1).is_ok());
        let strict = dynamic_with_route(&format!("{RC}validate_clusters: true\n"));
        let e = compile(&b, &strict, None, &stats, 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("route_config \"r\"")
                && e.contains("virtual_hosts[0].routes[0].route.cluster")
                && e.contains("nope"),
            "{e}"
        );
        // A table in force before is not re-checked when it did not change (a CDS update
        // that removed its cluster is not refused).
        let prev = Snapshot {
            dynamic: strict.clone(),
            ..compile(&b, &d, None, &stats, 1).unwrap()
        };
        assert!(compile(&b, &strict, Some(&prev), &stats, 2).is_ok());
    }

    #[test]
    fn slow_start_fields_pass_the_supported_walk_and_others_are_named() {
        let pool = weft_xds::descriptors();
        let check = |yaml: &str| {
            let c: envoy_types::pb::envoy::config::cluster::v3::Cluster =
                weft_xds::from_yaml(yaml, "test").unwrap();
            unsupported(
                &pool,
                "envoy.config.cluster.v3.Cluster",
                &prost::Message::encode_to_vec(&c),
            )
        };
        let ss = "slow_start_config: {slow_start_window: 30s, aggression: {default_value: 2, \
                  runtime_key: k}, min_weight_percent: {value: 5}}";
        assert!(check(&format!("name: c\nround_robin_lb_config: {{{ss}}}\n")).is_empty());
        assert!(
            check(&format!(
                "name: c\nlb_policy: LEAST_REQUEST\nleast_request_lb_config: {{choice_count: 3, {ss}}}\n"
            ))
            .is_empty()
        );
        assert_eq!(
            check(
                "name: c\nlb_policy: LEAST_REQUEST\nleast_request_lb_config: {active_request_bias: \
                 {default_value: 2, runtime_key: k}}\n"
            ),
            ["least_request_lb_config.active_request_bias"]
        );
    }

    #[test]
    fn listener_stat_prefix_names_its_stats() {
        let b: Bootstrap = weft_xds::from_yaml(
            r#"
static_resources:
  listeners:
  - name: l
    stat_prefix: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: 18080}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: c
  clusters:
  - {name: c, type: STATIC, load_assignment: {cluster_name: c}}
"#,
            "test",
        )
        .unwrap();
        let stats = Stats::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let snap = rt
            .block_on(async { compile(&b, &Default::default(), None, &stats, 1) })
            .unwrap();
        let l = &snap.listeners[0];
        l.stats.downstream_cx_total.inc();
        let text = stats.encode();
        assert!(
            text.contains(
                "envoy_listener_downstream_cx_total{envoy_listener_address=\"ingress\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("127.0.0.1_18080"), "{text}");
    }
}
