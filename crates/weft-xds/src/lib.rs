//! Envoy xDS v3, shared by both sides of Weft: the canonical JSON/YAML mapping of Envoy
//! resources and the reflection helpers a consumer uses to refuse what it does not implement.
//! (The ADS server and client join this crate with the control plane.)

pub mod client;
pub mod json;
pub mod reflect;
pub mod server;

pub use client::{ClientError, Handler, ResubscribeHandle, Update, XdsClient};
pub use json::{JsonError, descriptors, from_json_value, from_yaml, to_json};
pub use prost_reflect::DescriptorPool;
pub use server::{
    AdsServer, AdsService, Cache, NodeHook, NodeStatus, ServeError, Snapshot, SyncState,
    TypeResources, TypeStatus, serve, types,
};

/// Type URL prefix used by `Any` payloads.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";
