//! Process-wide Prometheus statistics with Envoy's metric names and labels, so dashboards and
//! alerts written for Envoy/Istio sidecars (`envoy_cluster_upstream_rq_total`,
//! `envoy_cluster_upstream_rq_xx{envoy_response_code_class="5"}`, ...) keep working.
//!
//! Every series is registered once in a `prometheus-client` registry; per-cluster, per-listener
//! and per-HTTP-connection-manager handle structs are created (or fetched from a cache, so a
//! config reload reuses the same series) at config time. The hot path only bumps atomics through
//! those handles: it must never look a series up by name, take a lock or allocate.
//!
//! Counters are encoded without the OpenMetrics `_total` suffix so names are exactly Envoy's
//! (Envoy's own `..._total` stats already carry it); the text is the Prometheus 0.0.4 format.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

// ---------------------------------------------------------------------------------------------
// Metric primitives (lock-free handles)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct CounterInner {
    value: AtomicU64,
    /// Envoy creates some stats lazily (per response class); hide those until first used.
    hide_zero: bool,
}

/// A monotonically increasing counter. Cloning shares the series.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<CounterInner>);

impl Counter {
    fn sparse() -> Self {
        Self(Arc::new(CounterInner {
            value: AtomicU64::new(0),
            hide_zero: true,
        }))
    }

    /// Add one.
    #[inline]
    pub fn inc(&self) {
        self.0.value.fetch_add(1, Ordering::Relaxed);
    }

    /// Add `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.value.fetch_add(n, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.value.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let v = self.get();
        if v == 0 && self.0.hide_zero {
            return Ok(());
        }
        // Gauge encoding writes the name as registered (no `_total` suffix), which is what
        // Envoy's exposition does; the `# TYPE` line still says `counter`.
        encoder.encode_gauge(&v)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A value that goes up and down. Cloning shares the series.
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Add one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtract one.
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Add `n` (may be negative).
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Set the value.
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Gauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for Gauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// Envoy's default histogram buckets, in milliseconds.
pub const ENVOY_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The same bounds in microseconds, for integer comparison on the hot path.
const BUCKETS_US: [u64; 19] = [
    500,
    1_000,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    600_000_000,
    1_800_000_000,
    3_600_000_000,
];

#[derive(Debug, Default)]
struct HistogramInner {
    /// Per-bucket (non-cumulative) counts; the last slot is `+Inf`.
    buckets: [AtomicU64; 20],
    sum_us: AtomicU64,
}

/// A latency histogram in milliseconds with Envoy's buckets; lock-free (unlike
/// `prometheus_client`'s histogram, which takes a mutex per observation).
#[derive(Clone, Debug, Default)]
pub struct Histogram(Arc<HistogramInner>);

impl Histogram {
    /// Record one duration.
    #[inline]
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let idx = BUCKETS_US.partition_point(|b| *b < us);
        if let Some(b) = self.0.buckets.get(idx) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.0.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Record one value given in whole milliseconds.
    #[inline]
    pub fn record_ms(&self, ms: u64) {
        self.record(Duration::from_millis(ms));
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    /// Sum of observations in milliseconds.
    pub fn sum_ms(&self) -> f64 {
        self.0.sum_us.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let mut buckets = [(0.0f64, 0u64); 20];
        let mut count = 0;
        for (i, slot) in buckets.iter_mut().enumerate() {
            let n = self
                .0
                .buckets
                .get(i)
                .map_or(0, |b| b.load(Ordering::Relaxed));
            count += n;
            *slot = (ENVOY_BUCKETS_MS.get(i).copied().unwrap_or(f64::INFINITY), n);
        }
        if count == 0 {
            // Not used yet: an all-zero histogram is 22 lines of noise per cluster.
            return Ok(());
        }
        encoder.encode_histogram::<NoLabelSet>(self.sum_ms(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

// ---------------------------------------------------------------------------------------------
// Label sets
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    envoy_cluster_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterClassLabels {
    envoy_response_code_class: &'static str,
    envoy_cluster_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    envoy_listener_address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    envoy_http_conn_manager_prefix: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpClassLabels {
    envoy_response_code_class: &'static str,
    envoy_http_conn_manager_prefix: String,
}

/// Envoy's `envoy_response_code_class` tag values ("2" for 2xx), index 0 is 1xx.
const CLASSES: [&str; 5] = ["1", "2", "3", "4", "5"];

type Fam<L, M> = Family<L, M, fn() -> M>;

fn fam<L: Clone + std::hash::Hash + Eq, M: Default>() -> Fam<L, M> {
    Family::new_with_constructor(M::default as fn() -> M)
}

/// Index into a per-class array for an HTTP status (1xx → 0 ... 5xx → 4).
#[inline]
fn class_index(status: u16) -> Option<usize> {
    match status / 100 {
        c @ 1..=5 => Some(usize::from(c - 1)),
        _ => None,
    }
}

/// Declares a scope of stats: a struct of families (registered once) and a struct of handles
/// (one per label value) with the same field names, plus optional per-class counters.
macro_rules! scope {
    (
        $(#[$meta:meta])*
        $handles:ident / $families:ident, labels = $labels:ident { $label_field:ident },
        prefix = $prefix:literal,
        $( classes = $cl:ident as $clname:literal, )?
        counters { $($c:ident : $chelp:literal,)* }
        gauges { $($g:ident : $ghelp:literal,)* }
        histograms { $($h:ident : $hhelp:literal,)* }
    ) => {
        struct $families {
            $($c: Fam<$labels, Counter>,)*
            $($g: Fam<$labels, Gauge>,)*
            $($h: Fam<$labels, Histogram>,)*
            $( rq_class: Fam<$cl, Counter>, )?
        }

        impl $families {
            fn register(reg: &mut Registry) -> Self {
                let s = Self {
                    $($c: fam(),)*
                    $($g: fam(),)*
                    $($h: fam(),)*
                    $( rq_class: Family::<$cl, Counter, fn() -> Counter>::new_with_constructor(
                        Counter::sparse as fn() -> Counter,
                    ), )?
                };
                $(reg.register(concat!($prefix, stringify!($c)), $chelp, s.$c.clone());)*
                $(reg.register(concat!($prefix, stringify!($g)), $ghelp, s.$g.clone());)*
                $(reg.register(concat!($prefix, stringify!($h)), $hhelp, s.$h.clone());)*
                $(reg.register(
                    concat!($prefix, $clname),
                    "Responses by response code class",
                    s.rq_class.clone(),
                );)?
                s
            }
        }

        $(#[$meta])*
        #[derive(Debug)]
        pub struct $handles {
            $(#[doc = $chelp] pub $c: Counter,)*
            $(#[doc = $ghelp] pub $g: Gauge,)*
            $(#[doc = $hhelp] pub $h: Histogram,)*
            $(
                /// Per response-code-class counters (index 0 = 1xx ... 4 = 5xx); prefer
                /// `record_status`.
                pub rq_class: class_array!($cl),
            )?
        }

        impl $handles {
            fn create(fams: &$families, name: &str) -> Self {
                let labels = $labels { $label_field: name.to_owned() };
                Self {
                    $($c: fams.$c.get_or_create_owned(&labels),)*
                    $($g: fams.$g.get_or_create_owned(&labels),)*
                    $($h: fams.$h.get_or_create_owned(&labels),)*
                    $( rq_class: CLASSES.map(|c| {
                        fams.rq_class.get_or_create_owned(&<$cl as ClassLabels>::new(c, name))
                    }), )?
                }
            }

            /// Drops every series of `name` from the families (config time only).
            #[allow(dead_code)]
            fn remove(fams: &$families, name: &str) {
                let labels = $labels { $label_field: name.to_owned() };
                $(fams.$c.remove(&labels);)*
                $(fams.$g.remove(&labels);)*
                $(fams.$h.remove(&labels);)*
                $( for c in CLASSES {
                    fams.rq_class.remove(&<$cl as ClassLabels>::new(c, name));
                } )?
            }
        }
    };
}

macro_rules! class_array {
    ($cl:ident) => {
        [Counter; 5]
    };
}

trait ClassLabels {
    fn new(class: &'static str, name: &str) -> Self;
}

impl ClassLabels for ClusterClassLabels {
    fn new(class: &'static str, name: &str) -> Self {
        Self {
            envoy_response_code_class: class,
            envoy_cluster_name: name.to_owned(),
        }
    }
}

impl ClassLabels for HttpClassLabels {
    fn new(class: &'static str, name: &str) -> Self {
        Self {
            envoy_response_code_class: class,
            envoy_http_conn_manager_prefix: name.to_owned(),
        }
    }
}

scope! {
    /// Stats of one upstream cluster (`envoy_cluster_*{envoy_cluster_name="..."}`).
    ClusterStats / ClusterFamilies, labels = ClusterLabels { envoy_cluster_name },
    prefix = "envoy_cluster_",
    classes = ClusterClassLabels as "upstream_rq_xx",
    counters {
        upstream_rq_total: "Total requests sent upstream",
        upstream_rq_pending_total: "Total requests that waited for a connection",
        upstream_cx_total: "Total upstream connections",
        upstream_cx_connect_fail: "Upstream connection failures",
        upstream_cx_connect_timeout: "Upstream connection attempts that timed out",
        upstream_cx_none_healthy: "Connections not attempted because no host was healthy",
        upstream_cx_overflow: "Times the cluster's connection circuit breaker overflowed",
        upstream_cx_destroy_local: "Upstream connections closed locally",
        upstream_cx_destroy_remote: "Upstream connections closed by the remote end",
        upstream_rq_timeout: "Requests that timed out waiting for a response",
        upstream_rq_per_try_timeout: "Request attempts that hit the per-try timeout",
        upstream_rq_retry: "Request retries",
        upstream_rq_retry_success: "Request retries that succeeded",
        upstream_rq_retry_overflow: "Retries not attempted because of circuit breaking or budgets",
        upstream_rq_retry_limit_exceeded: "Requests not retried because the retry limit was reached",
        upstream_rq_pending_overflow: "Requests that overflowed the pending-request circuit breaker",
        outlier_detection_ejections_total: "Hosts ejected by outlier detection (enforced or not)",
    }
    gauges {
        upstream_cx_active: "Active upstream connections",
        upstream_rq_active: "Active upstream requests",
        upstream_rq_pending_active: "Requests waiting for a connection",
        outlier_detection_ejections_active: "Hosts currently ejected",
    }
    histograms {
        upstream_rq_time: "Upstream request time in milliseconds",
    }
}

impl ClusterStats {
    /// Count a response by its code class (`envoy_cluster_upstream_rq_xx`).
    #[inline]
    pub fn record_status(&self, status: u16) {
        if let Some(c) = class_index(status).and_then(|i| self.rq_class.get(i)) {
            c.inc();
        }
    }
}

scope! {
    /// Stats of one listener (`envoy_listener_*{envoy_listener_address="0.0.0.0_15001"}`).
    ListenerStats / ListenerFamilies, labels = ListenerLabels { envoy_listener_address },
    prefix = "envoy_listener_",
    counters {
        downstream_cx_total: "Total downstream connections accepted",
        downstream_cx_destroy: "Downstream connections closed",
    }
    gauges {
        downstream_cx_active: "Active downstream connections",
    }
    histograms {}
}

scope! {
    /// Stats of one HTTP connection manager (`envoy_http_*{envoy_http_conn_manager_prefix="..."}`).
    HttpStats / HttpFamilies, labels = HttpLabels { envoy_http_conn_manager_prefix },
    prefix = "envoy_http_",
    classes = HttpClassLabels as "downstream_rq_xx",
    counters {
        downstream_rq_total: "Total downstream requests",
        downstream_cx_total: "Total downstream connections",
    }
    gauges {
        downstream_cx_active: "Active downstream connections",
        downstream_rq_active: "Active downstream requests",
    }
    histograms {
        downstream_rq_time: "Downstream request time in milliseconds",
    }
}

impl HttpStats {
    /// Count a response by its code class (`envoy_http_downstream_rq_xx`).
    #[inline]
    pub fn record_status(&self, status: u16) {
        if let Some(c) = class_index(status).and_then(|i| self.rq_class.get(i)) {
            c.inc();
        }
    }
}

/// Process-level gauges (`envoy_server_*`).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// 1 when the server is live (serving), 0 otherwise. Whoever knows sets it.
    pub live: Gauge,
    /// Seconds since start; refreshed on every encode.
    pub uptime: Gauge,
    /// Resident memory in bytes (VmRSS); refreshed on every encode.
    pub memory_allocated: Gauge,
    /// Open downstream connections across all listeners.
    pub total_connections: Gauge,
}

/// `0.0.0.0:15001` → `0.0.0.0_15001`, Envoy's listener stat name for an address.
pub fn listener_stat_name(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}_{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]_{}", a.ip(), a.port()),
    }
}

/// All statistics of the process. Create once, share in an `Arc`.
pub struct Stats {
    registry: Registry,
    start: Instant,
    /// Process-level gauges.
    pub server: ServerStats,
    cluster_fams: ClusterFamilies,
    listener_fams: ListenerFamilies,
    http_fams: HttpFamilies,
    clusters: Mutex<HashMap<String, Arc<ClusterStats>>>,
    listeners: Mutex<HashMap<String, Arc<ListenerStats>>>,
    https: Mutex<HashMap<String, Arc<HttpStats>>>,
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats").finish_non_exhaustive()
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Register every family. Call once per process.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let server = ServerStats::default();
        server.live.set(0);
        registry.register(
            "envoy_server_live",
            "1 if the server is live",
            server.live.clone(),
        );
        registry.register(
            "envoy_server_uptime",
            "Seconds since the server started",
            server.uptime.clone(),
        );
        registry.register(
            "envoy_server_memory_allocated",
            "Resident memory of the process in bytes",
            server.memory_allocated.clone(),
        );
        registry.register(
            "envoy_server_total_connections",
            "Open downstream connections",
            server.total_connections.clone(),
        );
        let cluster_fams = ClusterFamilies::register(&mut registry);
        let listener_fams = ListenerFamilies::register(&mut registry);
        let http_fams = HttpFamilies::register(&mut registry);
        Self {
            registry,
            start: Instant::now(),
            server,
            cluster_fams,
            listener_fams,
            http_fams,
            clusters: Mutex::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
            https: Mutex::new(HashMap::new()),
        }
    }

    /// Time since `Stats::new`.
    pub fn uptime(&self) -> Duration {
        self.start.elapsed()
    }

    /// The stats of cluster `name`, created on first use and cached by name (config time only).
    pub fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        get_or_create(&self.clusters, name, || {
            ClusterStats::create(&self.cluster_fams, name)
        })
    }

    /// The stats of the listener with stat name `addr_name`: the listener's `stat_prefix` when
    /// set (Envoy's `listener.<stat_prefix>.`), else its address (see [`listener_stat_name`]).
    /// Either way the name is the `envoy_listener_address` label.
    pub fn listener(&self, addr_name: &str) -> Arc<ListenerStats> {
        get_or_create(&self.listeners, addr_name, || {
            ListenerStats::create(&self.listener_fams, addr_name)
        })
    }

    /// Gives back the stats of a listener that no longer uses them (its stat name changed, e.g.
    /// a `stat_prefix` replaced its address name): the series leave the exposition unless
    /// something else still holds them (another listener, one still draining).
    pub fn release_listener(&self, handle: Arc<ListenerStats>) {
        let mut map = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let Some(name) = map
            .iter()
            .find(|(_, s)| Arc::ptr_eq(s, &handle))
            .map(|(n, _)| n.clone())
        else {
            return;
        };
        // Held by the cache and by `handle` only.
        if Arc::strong_count(&handle) > 2 {
            return;
        }
        map.remove(&name);
        ListenerStats::remove(&self.listener_fams, &name);
    }

    /// The stats of the HTTP connection manager with `stat_prefix`.
    pub fn http(&self, stat_prefix: &str) -> Arc<HttpStats> {
        get_or_create(&self.https, stat_prefix, || {
            HttpStats::create(&self.http_fams, stat_prefix)
        })
    }

    /// Prometheus text exposition (format 0.0.4) of every series.
    pub fn encode(&self) -> String {
        self.server
            .uptime
            .set(i64::try_from(self.uptime().as_secs()).unwrap_or(i64::MAX));
        if let Some(rss) = read_rss_bytes() {
            self.server.memory_allocated.set(rss);
        }
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail; an error here would only truncate the output.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        out
    }
}

fn get_or_create<T>(
    cache: &Mutex<HashMap<String, Arc<T>>>,
    name: &str,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = map.get(name) {
        return s.clone();
    }
    let s = Arc::new(make());
    map.insert(name.to_owned(), s.clone());
    s
}

/// VmRSS of this process in bytes, from `/proc/self/status`.
fn read_rss_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn cluster_series_have_envoy_names() {
        let stats = Stats::new();
        let c = stats.cluster("outbound|80||reviews.default.svc.cluster.local");
        c.upstream_rq_total.inc();
        c.upstream_rq_total.inc();
        c.upstream_cx_active.inc();
        c.upstream_cx_connect_fail.add(3);
        c.record_status(503);
        c.record_status(200);
        c.record_status(204);
        c.record_status(99); // ignored
        c.upstream_rq_time.record(Duration::from_millis(7));
        let text = stats.encode();
        let n = "envoy_cluster_name=\"outbound|80||reviews.default.svc.cluster.local\"";
        assert!(
            has_line(&text, &format!("envoy_cluster_upstream_rq_total{{{n}}} 2")),
            "{text}"
        );
        assert!(has_line(
            &text,
            "# TYPE envoy_cluster_upstream_rq_total counter"
        ));
        assert!(has_line(
            &text,
            &format!("envoy_cluster_upstream_cx_active{{{n}}} 1")
        ));
        assert!(has_line(
            &text,
            &format!("envoy_cluster_upstream_cx_connect_fail{{{n}}} 3")
        ));
        assert!(has_line(
            &text,
            &format!("envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"2\",{n}}} 2")
        ));
        assert!(has_line(
            &text,
            &format!("envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"5\",{n}}} 1")
        ));
        // Unused classes stay hidden, like Envoy's lazily created stats.
        assert!(!text.contains("envoy_response_code_class=\"4\""));
        assert!(has_line(
            &text,
            &format!("envoy_cluster_upstream_rq_time_bucket{{le=\"5.0\",{n}}} 0")
        ));
        assert!(has_line(
            &text,
            &format!("envoy_cluster_upstream_rq_time_bucket{{le=\"10.0\",{n}}} 1")
        ));
        assert!(has_line(
            &text,
            &format!("envoy_cluster_upstream_rq_time_bucket{{le=\"+Inf\",{n}}} 1")
        ));
        assert!(has_line(
            &text,
            &format!("envoy_cluster_upstream_rq_time_count{{{n}}} 1")
        ));
        assert!(has_line(
            &text,
            &format!("envoy_cluster_upstream_rq_time_sum{{{n}}} 7.0")
        ));
        assert!(!text.contains("_total_total"));
        assert!(!text.contains("# EOF"));
        assert!(has_line(&text, "envoy_server_live 0"));
    }

    #[test]
    fn unused_histogram_is_hidden() {
        let stats = Stats::new();
        let _c = stats.cluster("a");
        let text = stats.encode();
        assert!(
            !text.contains("envoy_cluster_upstream_rq_time_bucket"),
            "{text}"
        );
        assert!(has_line(
            &text,
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"a\"} 0"
        ));
    }

    #[test]
    fn get_or_create_returns_same_handles() {
        let stats = Stats::new();
        let a = stats.cluster("a");
        let a2 = stats.cluster("a");
        let b = stats.cluster("b");
        assert!(Arc::ptr_eq(&a, &a2));
        assert!(!Arc::ptr_eq(&a, &b));
        a.upstream_rq_total.inc();
        assert_eq!(a2.upstream_rq_total.get(), 1);
        assert_eq!(b.upstream_rq_total.get(), 0);
        assert!(Arc::ptr_eq(&stats.listener("x"), &stats.listener("x")));
        assert!(Arc::ptr_eq(&stats.http("p"), &stats.http("p")));
    }

    #[test]
    fn listener_and_http_series() {
        let stats = Stats::new();
        let name = listener_stat_name(&"0.0.0.0:15001".parse().unwrap());
        assert_eq!(name, "0.0.0.0_15001");
        assert_eq!(listener_stat_name(&"[::1]:80".parse().unwrap()), "[::1]_80");
        let l = stats.listener(&name);
        l.downstream_cx_total.inc();
        l.downstream_cx_active.inc();
        l.downstream_cx_active.dec();
        l.downstream_cx_destroy.inc();
        let h = stats.http("inbound_0.0.0.0_8080");
        h.downstream_rq_total.inc();
        h.record_status(404);
        h.downstream_rq_time.record(Duration::from_micros(300));
        stats.server.total_connections.set(4);
        stats.server.live.set(1);
        let text = stats.encode();
        let l = "envoy_listener_address=\"0.0.0.0_15001\"";
        assert!(
            has_line(
                &text,
                &format!("envoy_listener_downstream_cx_total{{{l}}} 1")
            ),
            "{text}"
        );
        assert!(has_line(
            &text,
            &format!("envoy_listener_downstream_cx_active{{{l}}} 0")
        ));
        assert!(has_line(
            &text,
            &format!("envoy_listener_downstream_cx_destroy{{{l}}} 1")
        ));
        assert!(!text.contains("envoy_listener_downstream_rq_xx"));
        let p = "envoy_http_conn_manager_prefix=\"inbound_0.0.0.0_8080\"";
        assert!(has_line(
            &text,
            &format!("envoy_http_downstream_rq_total{{{p}}} 1")
        ));
        assert!(has_line(
            &text,
            &format!("envoy_http_downstream_rq_xx{{envoy_response_code_class=\"4\",{p}}} 1")
        ));
        assert!(
            has_line(
                &text,
                &format!("envoy_http_downstream_rq_time_bucket{{le=\"0.5\",{p}}} 1")
            ),
            "{text}"
        );
        assert!(has_line(&text, "envoy_server_total_connections 4"));
        assert!(has_line(&text, "envoy_server_live 1"));
        assert!(text.contains("envoy_server_uptime "));
    }

    #[test]
    fn released_listener_series_leave_the_exposition() {
        let stats = Stats::new();
        let by_addr = stats.listener("127.0.0.1_8080");
        let named = stats.listener("ingress");
        named.downstream_cx_total.inc();
        let held = stats.listener("127.0.0.1_8080");
        // Still held by someone else: kept.
        stats.release_listener(by_addr);
        assert!(
            stats
                .encode()
                .contains("envoy_listener_address=\"127.0.0.1_8080\"")
        );
        stats.release_listener(held);
        let text = stats.encode();
        assert!(!text.contains("127.0.0.1_8080"), "{text}");
        assert!(has_line(
            &text,
            "envoy_listener_downstream_cx_total{envoy_listener_address=\"ingress\"} 1"
        ));
        // A fresh handle for the released name starts again.
        assert_eq!(
            stats.listener("127.0.0.1_8080").downstream_cx_total.get(),
            0
        );
    }

    #[test]
    fn histogram_bucket_edges() {
        let h = Histogram::default();
        h.record(Duration::from_micros(500)); // le 0.5 (inclusive)
        h.record(Duration::from_micros(501)); // le 1
        h.record(Duration::from_secs(7200)); // +Inf
        assert_eq!(h.0.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(h.0.buckets[1].load(Ordering::Relaxed), 1);
        assert_eq!(h.0.buckets[19].load(Ordering::Relaxed), 1);
        assert_eq!(h.count(), 3);
        h.record(Duration::MAX); // saturates, no panic
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn vm_rss_parsing() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t   1234 kB\nVmHWM: 1 kB\n"),
            Some(1234 * 1024)
        );
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert_eq!(parse_vm_rss("VmRSS: lots kB\n"), None);
    }
}
