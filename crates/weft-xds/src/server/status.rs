//! Per-node xDS sync status (what `weft proxy-status` shows): for every connected node and
//! resource type, the version last sent, the version last ACKed and the last NACK.
//!
//! Streams write here on every response / ACK / NACK through a per-node handle, so the global
//! cache lock is never taken on that path. Nothing here decides what to send.

use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// Where a node stands for one resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncState {
    /// The last version sent was ACKed.
    Synced,
    /// A version was sent and is not ACKed (or NACKed) yet.
    Stale,
    /// The last version sent was rejected; the node keeps its previous config.
    Nacked,
    /// The node subscribed but nothing was sent yet (no snapshot, or nothing it asked for).
    NotSent,
}

/// One resource type of one node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TypeStatus {
    pub sent_version: Option<String>,
    pub acked_version: Option<String>,
    /// `(version, error message)` of the last NACK, until a later version is ACKed.
    pub nacked: Option<(String, String)>,
    pub state: SyncState,
}

impl TypeStatus {
    fn new() -> Self {
        Self {
            sent_version: None,
            acked_version: None,
            nacked: None,
            state: SyncState::NotSent,
        }
    }

    fn recompute(&mut self) {
        self.state = match (&self.sent_version, &self.nacked) {
            (None, _) => SyncState::NotSent,
            (Some(sent), Some((nacked, _))) if sent == nacked => SyncState::Nacked,
            (sent, _) if *sent == self.acked_version => SyncState::Synced,
            _ => SyncState::Stale,
        };
    }
}

/// A connected node.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub cluster: String,
    /// `node.metadata` as JSON (`null` when absent).
    pub metadata: serde_json::Value,
    /// When the node's oldest open stream was opened.
    pub connected_since: SystemTime,
    /// Open ADS streams of this node.
    pub streams: u32,
    /// Keyed by type URL.
    pub per_type: BTreeMap<String, TypeStatus>,
}

/// The mutable status of one connected node, shared by its streams.
#[derive(Debug)]
pub(crate) struct NodeConn {
    pub(crate) cluster: String,
    pub(crate) metadata: serde_json::Value,
    pub(crate) connected_since: SystemTime,
    pub(crate) streams: u32,
    pub(crate) per_type: BTreeMap<String, TypeStatus>,
}

impl NodeConn {
    pub(crate) fn new(node: &envoy_types::pb::envoy::config::core::v3::Node) -> Self {
        Self {
            cluster: node.cluster.clone(),
            metadata: node
                .metadata
                .as_ref()
                .map_or(serde_json::Value::Null, struct_to_json),
            connected_since: SystemTime::now(),
            streams: 0,
            per_type: BTreeMap::new(),
        }
    }

    pub(crate) fn to_status(&self, node_id: &str) -> NodeStatus {
        NodeStatus {
            node_id: node_id.to_owned(),
            cluster: self.cluster.clone(),
            metadata: self.metadata.clone(),
            connected_since: self.connected_since,
            streams: self.streams,
            per_type: self.per_type.clone(),
        }
    }
}

/// A stream's handle on its node's status.
#[derive(Debug, Clone)]
pub(crate) struct StatusHandle(pub(crate) Arc<Mutex<NodeConn>>);

impl StatusHandle {
    fn with_type(&self, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        let mut conn = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = match conn.per_type.get_mut(type_url) {
            Some(entry) => entry,
            None => conn
                .per_type
                .entry(type_url.to_owned())
                .or_insert_with(TypeStatus::new),
        };
        f(entry);
        entry.recompute();
    }

    /// The node asked for this type.
    pub(crate) fn subscribed(&self, type_url: &str) {
        self.with_type(type_url, |_| {});
    }

    pub(crate) fn sent(&self, type_url: &str, version: &str) {
        self.with_type(type_url, |t| t.sent_version = Some(version.to_owned()));
    }

    pub(crate) fn acked(&self, type_url: &str, version: &str) {
        self.with_type(type_url, |t| {
            t.acked_version = Some(version.to_owned());
            t.nacked = None;
        });
    }

    pub(crate) fn nacked(&self, type_url: &str, version: &str, message: &str) {
        self.with_type(type_url, |t| {
            t.nacked = Some((version.to_owned(), message.to_owned()));
        });
    }
}

/// `google.protobuf.Struct` → JSON (NaN/infinite numbers become `null`).
pub(crate) fn struct_to_json(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::ListValue;

    fn handle() -> StatusHandle {
        StatusHandle(Arc::new(Mutex::new(NodeConn::new(&Default::default()))))
    }

    fn state(h: &StatusHandle, t: &str) -> TypeStatus {
        h.0.lock().unwrap().per_type.get(t).cloned().unwrap()
    }

    #[test]
    fn state_machine() {
        let h = handle();
        h.subscribed("t");
        assert_eq!(state(&h, "t").state, SyncState::NotSent);
        h.sent("t", "v1");
        assert_eq!(state(&h, "t").state, SyncState::Stale);
        h.acked("t", "v1");
        assert_eq!(state(&h, "t").state, SyncState::Synced);
        h.sent("t", "v2");
        assert_eq!(state(&h, "t").state, SyncState::Stale);
        h.nacked("t", "v2", "bad");
        let s = state(&h, "t");
        assert_eq!(s.state, SyncState::Nacked);
        assert_eq!(s.nacked, Some(("v2".into(), "bad".into())));
        assert_eq!(s.acked_version.as_deref(), Some("v1"));
        h.sent("t", "v3");
        let s = state(&h, "t");
        assert_eq!(s.state, SyncState::Stale);
        assert!(
            s.nacked.is_some(),
            "the NACK stays visible until a later ACK"
        );
        h.acked("t", "v3");
        let s = state(&h, "t");
        assert_eq!(s.state, SyncState::Synced);
        assert_eq!(s.nacked, None);
    }

    #[test]
    fn metadata_to_json() {
        let mut inner = Struct::default();
        inner.fields.insert(
            "n".into(),
            Value {
                kind: Some(Kind::NumberValue(2.5)),
            },
        );
        inner.fields.insert(
            "nan".into(),
            Value {
                kind: Some(Kind::NumberValue(f64::NAN)),
            },
        );
        let mut s = Struct::default();
        s.fields.insert(
            "s".into(),
            Value {
                kind: Some(Kind::StringValue("x".into())),
            },
        );
        s.fields.insert(
            "l".into(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![
                        Value {
                            kind: Some(Kind::BoolValue(true)),
                        },
                        Value { kind: None },
                    ],
                })),
            },
        );
        s.fields.insert(
            "o".into(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        );
        assert_eq!(
            struct_to_json(&s),
            serde_json::json!({"s": "x", "l": [true, null], "o": {"n": 2.5, "nan": null}})
        );
    }
}
