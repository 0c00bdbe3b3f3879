//! The snapshot cache: the one place the control plane writes what each node should see.
//!
//! A [`Snapshot`] is immutable once set and shared behind an `Arc`; setting one replaces the
//! node's previous snapshot atomically and wakes the node's streams (a `tokio::sync::watch`
//! per node). Per-resource delta versions are hashed once per snapshot, lazily, only if a delta
//! stream asks. The cache must not know about streams beyond that wake-up and a stream count.

use super::status::{NodeConn, NodeStatus, StatusHandle};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use tokio::sync::watch;

/// Everything one node should see, by type URL (see [`super::types`]).
///
/// A type absent from the map is "not known yet": subscribers to it get no response until a
/// snapshot has it. Include every type the node uses, even empty, once it is known.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub resources: HashMap<String, TypeResources>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the resources of one type.
    pub fn with(mut self, type_url: impl Into<String>, resources: TypeResources) -> Self {
        self.resources.insert(type_url.into(), resources);
        self
    }
}

/// The resources of one type. `version` must change whenever `items` change: it is the SotW
/// `version_info` and what streams compare to decide whether to push.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeResources {
    pub version: String,
    /// Keyed by the resource's own name (`Listener.name`, `ClusterLoadAssignment.cluster_name`…).
    /// Shared (`Arc`) so that proxies with the same resources of a type hold one copy.
    pub items: Arc<BTreeMap<String, Any>>,
    /// Per-resource versions for delta streams, computed on first use and shared by every
    /// clone of these resources (so 200 proxies with the same clusters hash them once).
    delta_versions: Arc<OnceLock<Versions>>,
}

/// Name → delta version of a set of resources. The names are shared: delta streams key what
/// each client holds by these same `Arc`s, so a name costs one allocation however many
/// proxies hold the resource.
pub(crate) type Versions = HashMap<Arc<str>, u64>;

impl TypeResources {
    /// No resources, at `version`.
    pub fn new(version: impl Into<String>) -> Self {
        Self {
            version: version.into(),
            items: Arc::new(BTreeMap::new()),
            delta_versions: Arc::default(),
        }
    }

    /// Adds (or replaces) one resource.
    pub fn with(mut self, name: impl Into<String>, resource: Any) -> Self {
        Arc::make_mut(&mut self.items).insert(name.into(), resource);
        self.delta_versions = Arc::default();
        self
    }
}

impl TypeResources {
    /// Resources with their shared, lazily computed per-resource versions.
    pub fn from_items(version: impl Into<String>, items: Arc<BTreeMap<String, Any>>) -> Self {
        Self {
            version: version.into(),
            items,
            delta_versions: Arc::default(),
        }
    }

    /// Name → delta version, computed once per set of resources.
    pub(crate) fn versions(&self) -> &Versions {
        self.delta_versions.get_or_init(|| {
            self.items
                .iter()
                .map(|(name, any)| (Arc::from(name.as_str()), resource_version(any)))
                .collect()
        })
    }
}

/// A snapshot as streams see it.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) snapshot: Arc<Snapshot>,
}

impl Prepared {
    pub(crate) fn new(snapshot: Arc<Snapshot>) -> Self {
        Self { snapshot }
    }

    /// The per-resource versions of `type_url`, if the snapshot has that type.
    pub(crate) fn delta_versions(&self, type_url: &str) -> Option<&Versions> {
        self.snapshot
            .resources
            .get(type_url)
            .map(TypeResources::versions)
    }
}

/// The delta version of a resource: a hash of its encoded `Any` (type URL and bytes), with the
/// top bit set (see [`version_text`]), so values below 2^63 are free for a stream's own marks.
pub(crate) fn resource_version(any: &Any) -> u64 {
    let h = fast_hash(
        fast_hash(0x9E37_79B9_7F4A_7C15, any.type_url.as_bytes()),
        &any.value,
    );
    h | 1 << 63
}

/// A delta version as clients see it: 16 hex digits.
pub(crate) fn version_text(version: u64) -> String {
    format!("{version:016x}")
}

/// A version a client reports (`initial_resource_versions`): ours if it reads as one of ours,
/// else `None` (another server's version, or garbage: it matches nothing).
pub(crate) fn parse_version(text: &str) -> Option<u64> {
    if text.len() != 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok().filter(|v| v >> 63 == 1)
}

/// A fast, stable 64-bit hash (8 bytes per step); only used to tell resource versions apart.
fn fast_hash(seed: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ v).wrapping_mul(K).rotate_left(31);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(tail))
        .wrapping_mul(K)
        .rotate_left(31);
    h ^ (h >> 29)
}

struct NodeEntry {
    snapshots: watch::Sender<Option<Arc<Prepared>>>,
    /// Present while the node has at least one open stream.
    conn: Option<StatusHandle>,
}

impl NodeEntry {
    fn new() -> Self {
        Self {
            snapshots: watch::Sender::new(None),
            conn: None,
        }
    }
}

/// Snapshots and status per node id. Cheap to clone; all clones share the same state.
#[derive(Clone, Default)]
pub struct Cache {
    nodes: Arc<Mutex<HashMap<String, NodeEntry>>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("nodes", &self.lock().len())
            .finish()
    }
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeEntry>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the snapshot of `node_id` and wakes its streams, which push what changed.
    pub fn set_snapshot(&self, node_id: &str, snapshot: Snapshot) {
        self.set_shared_snapshot(node_id, Arc::new(snapshot));
    }

    /// [`Cache::set_snapshot`] for a snapshot shared with other nodes (no copy).
    pub fn set_shared_snapshot(&self, node_id: &str, snapshot: Arc<Snapshot>) {
        let prepared = Arc::new(Prepared::new(snapshot));
        let mut nodes = self.lock();
        let entry = match nodes.get_mut(node_id) {
            Some(entry) => entry,
            None => nodes
                .entry(node_id.to_owned())
                .or_insert_with(NodeEntry::new),
        };
        entry.snapshots.send_replace(Some(prepared));
    }

    /// Forgets the snapshot of `node_id`. Open streams keep what they have and wait for the
    /// next snapshot.
    pub fn clear(&self, node_id: &str) {
        let mut nodes = self.lock();
        if let Some(entry) = nodes.get_mut(node_id) {
            entry.snapshots.send_replace(None);
            if entry.conn.is_none() {
                nodes.remove(node_id);
            }
        }
    }

    /// The current snapshot of `node_id`.
    pub fn snapshot(&self, node_id: &str) -> Option<Arc<Snapshot>> {
        let nodes = self.lock();
        let entry = nodes.get(node_id)?;
        let current = entry.snapshots.borrow();
        current.as_ref().map(|p| p.snapshot.clone())
    }

    /// Connected nodes and their per-type sync state, sorted by node id.
    pub fn status(&self) -> Vec<NodeStatus> {
        let nodes = self.lock();
        let mut out: Vec<NodeStatus> = nodes
            .iter()
            .filter_map(|(id, entry)| {
                let conn = entry.conn.as_ref()?;
                let conn = conn.0.lock().unwrap_or_else(PoisonError::into_inner);
                Some(conn.to_status(id))
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }

    /// Registers one more stream of `node`.
    pub(crate) fn register(
        &self,
        node: &Node,
    ) -> (watch::Receiver<Option<Arc<Prepared>>>, StatusHandle) {
        let mut nodes = self.lock();
        let entry = match nodes.get_mut(&node.id) {
            Some(entry) => entry,
            None => nodes.entry(node.id.clone()).or_insert_with(NodeEntry::new),
        };
        let conn = entry
            .conn
            .get_or_insert_with(|| StatusHandle(Arc::new(Mutex::new(NodeConn::new(node)))))
            .clone();
        conn.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .streams += 1;
        (entry.snapshots.subscribe(), conn)
    }

    /// One stream of `node_id` ended.
    pub(crate) fn unregister(&self, node_id: &str) {
        let mut nodes = self.lock();
        let Some(entry) = nodes.get_mut(node_id) else {
            return;
        };
        if let Some(conn) = &entry.conn {
            let mut c = conn.0.lock().unwrap_or_else(PoisonError::into_inner);
            c.streams = c.streams.saturating_sub(1);
            let last = c.streams == 0;
            drop(c);
            if last {
                entry.conn = None;
            }
        }
        if entry.conn.is_none() && entry.snapshots.borrow().is_none() {
            nodes.remove(node_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(v: &[u8]) -> Any {
        Any {
            type_url: "t".into(),
            value: v.to_vec(),
        }
    }

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            cluster: "c".into(),
            ..Default::default()
        }
    }

    #[test]
    fn set_wakes_and_clear_keeps_connected_nodes() {
        let cache = Cache::new();
        let (mut rx, _h) = cache.register(&node("a"));
        assert!(rx.borrow_and_update().is_none());
        cache.set_snapshot(
            "a",
            Snapshot::new().with("t", TypeResources::new("1").with("x", any(b"x"))),
        );
        assert!(rx.has_changed().unwrap());
        assert_eq!(cache.snapshot("a").unwrap().resources["t"].version, "1");
        cache.clear("a");
        assert!(cache.snapshot("a").is_none());
        assert_eq!(cache.status().len(), 1, "still connected");
        cache.unregister("a");
        assert!(cache.status().is_empty());
        assert!(cache.lock().is_empty(), "nothing left for a gone node");
    }

    #[test]
    fn snapshot_survives_disconnect_and_streams_are_counted() {
        let cache = Cache::new();
        cache.set_snapshot("a", Snapshot::new());
        let _s1 = cache.register(&node("a"));
        let _s2 = cache.register(&node("a"));
        let st = cache.status();
        assert_eq!(st[0].streams, 2);
        assert_eq!(st[0].cluster, "c");
        cache.unregister("a");
        assert_eq!(cache.status()[0].streams, 1);
        cache.unregister("a");
        assert!(cache.status().is_empty());
        assert!(cache.snapshot("a").is_some());
    }

    #[test]
    fn delta_versions_follow_content() {
        let p1 = Prepared::new(Arc::new(
            Snapshot::new().with(
                "t",
                TypeResources::new("1")
                    .with("x", any(b"x"))
                    .with("y", any(b"y")),
            ),
        ));
        let p2 = Prepared::new(Arc::new(
            Snapshot::new().with(
                "t",
                TypeResources::new("2")
                    .with("x", any(b"x"))
                    .with("y", any(b"y2")),
            ),
        ));
        let v1 = p1.delta_versions("t").unwrap();
        let v2 = p2.delta_versions("t").unwrap();
        assert_eq!(v1["x"], v2["x"]);
        assert_ne!(v1["y"], v2["y"]);
        assert!(p1.delta_versions("other").is_none());
        // Versions round-trip through their text; foreign versions match none of ours.
        let x = v1["x"];
        assert_eq!(parse_version(&version_text(x)), Some(x));
        assert_eq!(parse_version("0000000000000001"), None);
        assert_eq!(parse_version("v1"), None);
        assert_eq!(parse_version("zzzzzzzzzzzzzzzz"), None);
    }
}
