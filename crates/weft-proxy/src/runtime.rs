//! The proxy's life cycle: load a bootstrap, compile it into a snapshot, bind and serve
//! listeners, swap snapshots atomically on reload (SIGHUP or a change of the file), drain
//! removed listeners, and drain everything on SIGTERM or `/quitquitquit`.
//!
//! Nothing here is on the per-request path except `Shared::snapshot`, one atomic load.

use crate::listener::{self, ListenerConfig};
use crate::router::RouteTable;
use crate::stats::Stats;
use crate::upstream::{self, Cluster};
use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, watch};

/// One compiled config generation.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub clusters: HashMap<String, Arc<Cluster>>,
    pub routes: HashMap<String, Arc<RouteTable>>,
    pub listeners: Vec<Arc<ListenerConfig>>,
    pub bootstrap: Bootstrap,
    pub loaded_at: SystemTime,
}

/// State shared by every connection and the admin server.
#[derive(Debug)]
pub struct Shared {
    current: ArcSwap<Snapshot>,
    pub stats: Arc<Stats>,
    pub healthy: AtomicBool,
    pub draining: AtomicBool,
    pub quit: Notify,
    pub log_reload: Option<LogReload>,
    /// The last reload error, shown by the admin server.
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

/// Why a bootstrap could not be loaded.
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
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot bind listener {name:?} on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
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
    let bad = weft_xds::reflect::unsupported_fields(
        &pool,
        "envoy.config.bootstrap.v3.Bootstrap",
        &prost::Message::encode_to_vec(&b),
        &crate::supported::allowed,
    );
    if !bad.is_empty() {
        return Err(LoadError::Unsupported(
            format!(
                "not supported by weft-proxy (refusing rather than ignoring): {}",
                bad.iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            name,
        ));
    }
    Ok((b, text))
}

/// Compiles a bootstrap into a snapshot, reusing clusters whose resource did not change.
pub fn compile(
    b: &Bootstrap,
    prev: Option<&Snapshot>,
    stats: &Stats,
    version: u64,
) -> Result<Snapshot, LoadError> {
    let sr = b.static_resources.clone().unwrap_or_default();
    let mut clusters = HashMap::new();
    for c in &sr.clusters {
        let reuse = prev
            .and_then(|p| p.clusters.get(&c.name))
            .filter(|old| old.source == prost::Message::encode_to_vec(c));
        let cluster = match reuse {
            Some(old) => old.clone(),
            None => upstream::build(c, stats)?,
        };
        if clusters.insert(c.name.clone(), cluster).is_some() {
            return Err(crate::config::ConfigError::new(
                format!("cluster {:?}", c.name),
                "name",
                "duplicate cluster name",
            )
            .into());
        }
    }
    let mut listeners = Vec::new();
    let mut names = std::collections::HashSet::new();
    for l in &sr.listeners {
        if !names.insert(l.name.clone()) {
            return Err(crate::config::ConfigError::new(
                format!("listener {:?}", l.name),
                "name",
                "duplicate listener name",
            )
            .into());
        }
        let built = listener::build(l, stats)?;
        validate_clusters(&built, &clusters)?;
        listeners.push(Arc::new(built));
    }
    Ok(Snapshot {
        version,
        clusters,
        routes: HashMap::new(),
        listeners,
        bootstrap: b.clone(),
        loaded_at: SystemTime::now(),
    })
}

/// Refuses inline route tables that name clusters the config does not define (Envoy's
/// `validate_clusters`), so a typo fails at load instead of as 503s at run time.
fn validate_clusters(
    l: &ListenerConfig,
    clusters: &HashMap<String, Arc<Cluster>>,
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
        for (field, name) in table.referenced_clusters() {
            if !clusters.contains_key(name) {
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
    }
    Ok(())
}

struct Running {
    addr: SocketAddr,
    config: Arc<ArcSwap<ListenerConfig>>,
    stop: watch::Sender<bool>,
}

/// Owns the running listeners and applies new snapshots.
pub struct Proxy {
    pub shared: Arc<Shared>,
    running: HashMap<String, Running>,
    path: PathBuf,
    last_text: String,
}

impl Proxy {
    /// Loads the bootstrap, binds every listener, and starts serving.
    pub fn start(
        path: PathBuf,
        stats: Arc<Stats>,
        log_reload: Option<LogReload>,
    ) -> Result<Proxy, LoadError> {
        let (b, text) = read_bootstrap(&path)?;
        let snap = compile(&b, None, &stats, 1)?;
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(snap),
            stats,
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            quit: Notify::new(),
            log_reload,
            last_error: Mutex::new(None),
        });
        let mut p = Proxy {
            shared,
            running: HashMap::new(),
            path,
            last_text: text,
        };
        let snap = p.shared.snapshot();
        p.sync_listeners(&snap)?;
        p.shared.stats.server.live.set(1);
        crate::mem::release_after_load();
        Ok(p)
    }

    /// Binds new listeners first (so a bind failure leaves everything as it was), then updates
    /// kept ones and drains removed ones.
    fn sync_listeners(&mut self, snap: &Snapshot) -> Result<(), LoadError> {
        let mut fresh = Vec::new();
        for l in &snap.listeners {
            let keep = self.running.get(&l.name).is_some_and(|r| r.addr == l.addr);
            if !keep {
                // A listener moving address under the same name: free the old socket first.
                if let Some(old) = self.running.get(&l.name)
                    && old.addr != l.addr
                {
                    let _ = old.stop.send(true);
                }
                let sock = listener::bind(l.addr).map_err(|e| LoadError::Bind {
                    name: l.name.clone(),
                    addr: l.addr,
                    source: e,
                })?;
                fresh.push((l.clone(), sock));
            }
        }
        let wanted: std::collections::HashSet<&str> =
            snap.listeners.iter().map(|l| l.name.as_str()).collect();
        let removed: Vec<String> = self
            .running
            .keys()
            .filter(|k| !wanted.contains(k.as_str()))
            .cloned()
            .collect();
        for name in removed {
            if let Some(r) = self.running.remove(&name) {
                tracing::info!(listener = %name, "listener removed; draining");
                let _ = r.stop.send(true);
            }
        }
        for l in &snap.listeners {
            if let Some(r) = self.running.get(&l.name)
                && r.addr == l.addr
            {
                r.config.store(l.clone());
            }
        }
        for (l, sock) in fresh {
            let config = Arc::new(ArcSwap::new(l.clone()));
            let (stop, stop_rx) = watch::channel(false);
            tokio::spawn(listener::serve(
                sock,
                config.clone(),
                self.shared.clone(),
                stop_rx,
            ));
            tracing::info!(listener = %l.name, addr = %l.addr, "listening");
            self.running.insert(
                l.name.clone(),
                Running {
                    addr: l.addr,
                    config,
                    stop,
                },
            );
        }
        Ok(())
    }

    /// Re-reads the bootstrap; on any error the running config stays in force.
    pub fn reload(&mut self, force: bool) {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        if !force && text == self.last_text {
            return;
        }
        let old = self.shared.snapshot();
        let result = read_bootstrap(&self.path).and_then(|(b, text)| {
            let snap = compile(&b, Some(&old), &self.shared.stats, old.version + 1)?;
            Ok((snap, text))
        });
        match result {
            Ok((snap, text)) => {
                let snap = Arc::new(snap);
                // Swap config before listeners move, so new connections see the new routes.
                self.shared.current.store(snap.clone());
                if let Err(e) = self.sync_listeners(&snap) {
                    tracing::error!(error = %e, "reload: listener change failed; previous config restored");
                    self.shared.current.store(old);
                    *self
                        .shared
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    return;
                }
                self.last_text = text;
                *self
                    .shared
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                tracing::info!(version = snap.version, "config reloaded");
                crate::mem::release_after_load();
            }
            Err(e) => {
                self.last_text = text;
                tracing::error!(error = %e, "reload rejected; the previous config keeps serving");
                *self
                    .shared
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }
    }

    /// Serves until SIGTERM/SIGINT or `/quitquitquit`, reloading on SIGHUP and file changes;
    /// then stops accepting, drains open connections for at most `drain_time`, and returns.
    pub async fn run(mut self, drain_time: Duration) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut poll = tokio::time::interval(Duration::from_millis(250));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let shared = self.shared.clone();
        let mut last_meta = file_stamp(&self.path);
        loop {
            tokio::select! {
                _ = hup.recv() => { tracing::info!("SIGHUP: reloading"); self.reload(true); }
                _ = poll.tick() => {
                    let stamp = file_stamp(&self.path);
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
        for r in self.running.values() {
            let _ = r.stop.send(true);
        }
        let deadline = tokio::time::Instant::now() + drain_time;
        while shared.stats.server.total_connections.get() > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
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
        !self.0.draining.load(Ordering::Relaxed)
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
    json!({
        "configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": bootstrap, "last_updated": ts},
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "version_info": snap.version.to_string(), "static_listeners": listeners},
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "version_info": snap.version.to_string(), "static_clusters": clusters},
        ],
        "weft": {
            "version": snap.version,
            "last_reload_error": shared.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    })
}
