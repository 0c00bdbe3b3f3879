//! Istio's Bookinfo demo application, rewritten in Rust so Weft can run a
//! realistic multi-service mesh locally (`weft run`) without containers.
//!
//! Four services share one binary (`bookinfo productpage|details|reviews|ratings`)
//! and behave like the upstream Bookinfo ones: same paths, same JSON, same
//! failure texts, same header propagation. That fidelity is the point: Istio
//! tasks (request routing by `end-user`, fault injection, traffic shifting
//! between reviews v1/v2/v3) must show the same observable results.
//!
//! [`client`] is the one outbound HTTP helper every service uses; it is the
//! only place that knows about the sidecar (`HTTP_PROXY`). Services must not
//! open sockets to other services any other way.

pub mod cli;
pub mod client;
pub mod details;
pub mod forward;
pub mod productpage;
pub mod ratings;
pub mod reviews;
pub mod server;
mod util;

/// The base URL (`http://ratings:9080`) of Bookinfo service `name`, honoring
/// Bookinfo's own overrides `<NAME>_HOSTNAME` and `<NAME>_SERVICE_PORT`.
pub fn service_base(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    let host = std::env::var(format!("{upper}_HOSTNAME"))
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| name.to_owned());
    let port = std::env::var(format!("{upper}_SERVICE_PORT"))
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(9080);
    format!("http://{host}:{port}")
}
