//! The control plane's HTTP API on :15014 (JSON), used by the `weft` commands:
//! resources (`apply`, `get`, `delete`), workload registration (`weft run`), proxy status,
//! analysis and config errors.

use crate::ControlPlane;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value as Json, json};
use std::sync::Arc;

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, v: Json) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(&v).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: impl Into<String>) -> Resp {
    reply(status, json!({"error": msg.into()}))
}

/// Serves the API until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cp: Arc<ControlPlane>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = stop.wait_for(|s| *s) => return,
        };
        let cp = cp.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let cp = cp.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(cp, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn body(req: Request<Incoming>) -> Result<Bytes, Resp> {
    match Limited::new(req.into_body(), 16 << 20).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
    }
}

fn kind_name(k: &str) -> String {
    // Accept `virtualservice`, `VirtualService`, `virtualservices`, `vs`.
    let exact = k.to_ascii_lowercase();
    let lower = exact.trim_end_matches('s');
    let known = [
        ("vs", "VirtualService"),
        ("dr", "DestinationRule"),
        ("gw", "Gateway"),
        ("se", "ServiceEntry"),
        ("we", "WorkloadEntry"),
        ("pa", "PeerAuthentication"),
        ("ap", "AuthorizationPolicy"),
        ("ra", "RequestAuthentication"),
    ];
    for (short, full) in known {
        // `vs` itself ends in `s`: match the short name before the plural is trimmed.
        if exact == short || lower == short || lower == full.to_ascii_lowercase() {
            return full.to_string();
        }
    }
    for full in ["Sidecar", "Telemetry", "HTTPRoute", "GRPCRoute"] {
        if lower == full.to_ascii_lowercase() || format!("{lower}s") == full.to_ascii_lowercase() {
            return full.to_string();
        }
    }
    k.to_string()
}

async fn handle(cp: Arc<ControlPlane>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = req.method().clone();
    match (method, segs.as_slice()) {
        (Method::GET, ["healthz", "ready"]) | (Method::GET, ["ready"]) => {
            reply(StatusCode::OK, json!({"status": "ready"}))
        }
        (Method::POST, ["api", "v1", "resources"]) => {
            let source = query.strip_prefix("source=").unwrap_or("apply").to_string();
            let b = match body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let text = String::from_utf8_lossy(&b);
            match crate::store::parse(&source, &text) {
                Ok(list) if list.is_empty() => {
                    error(StatusCode::BAD_REQUEST, "no resources in the input")
                }
                Ok(list) => {
                    let warnings: Vec<String> = list
                        .iter()
                        .flat_map(|r| crate::translate::unimplemented(&r.res()))
                        .collect();
                    reply(
                        StatusCode::OK,
                        json!({"applied": cp.apply(list), "warnings": warnings}),
                    )
                }
                Err(errs) => reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "invalid configuration; nothing was applied", "errors": errs}),
                ),
            }
        }
        (Method::GET, ["api", "v1", "resources", rest @ ..]) => {
            let kind = rest.first().map(|k| kind_name(k));
            let all = cp.resources();
            let list: Vec<&crate::store::Stored> = all
                .iter()
                .filter(|r| kind.as_ref().is_none_or(|k| &r.kind == k))
                .filter(|r| rest.get(1).is_none_or(|ns| r.namespace == *ns))
                .filter(|r| rest.get(2).is_none_or(|n| r.name == *n))
                .collect();
            if rest.len() == 3 && list.is_empty() {
                return error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "{} {}/{} not found",
                        kind.unwrap_or_default(),
                        rest[1],
                        rest[2]
                    ),
                );
            }
            reply(StatusCode::OK, json!({"items": list}))
        }
        (Method::DELETE, ["api", "v1", "resources", kind, ns, name]) => {
            let key = (kind_name(kind), ns.to_string(), name.to_string());
            if cp.delete(&key) {
                reply(
                    StatusCode::OK,
                    json!({"deleted": format!("{} {}/{}", key.0, key.1, key.2)}),
                )
            } else {
                error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "{} {}/{} not found in the API store (resources from the watched directory are removed by editing it)",
                        key.0, key.1, key.2
                    ),
                )
            }
        }
        (Method::POST, ["api", "v1", "workloads"]) => {
            let b = match body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let v: Json = match serde_json::from_slice(&b) {
                Ok(v) => v,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
            };
            let Some(name) = v.get("name").and_then(Json::as_str) else {
                return error(StatusCode::BAD_REQUEST, "`name` is required");
            };
            let ns = v
                .get("namespace")
                .and_then(Json::as_str)
                .unwrap_or("default");
            let ports: Vec<u16> = v
                .get("ports")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_u64().and_then(|p| u16::try_from(p).ok()))
                .collect();
            if ports
                .iter()
                .any(|p| matches!(*p, 15000 | 15001 | 15006 | 15020 | 15021 | 15090))
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "ports 15000, 15001, 15006, 15020, 15021 and 15090 are the sidecar's own",
                );
            }
            match cp.reserve(name, ns, ports.clone()) {
                Ok(r) => {
                    let inbound: Vec<Json> = ports
                        .iter()
                        .map(|p| json!({"port": p, "app_port": app_port(*p)}))
                        .collect();
                    reply(
                        StatusCode::OK,
                        json!({"address": r.address, "xds": cp.opts.xds_addr, "inbound": inbound}),
                    )
                }
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
            }
        }
        (Method::DELETE, ["api", "v1", "workloads", ns, name]) => {
            if cp.deregister(ns, name) {
                reply(StatusCode::OK, json!({"deleted": format!("{ns}/{name}")}))
            } else {
                error(
                    StatusCode::NOT_FOUND,
                    format!("workload {ns}/{name} is not registered"),
                )
            }
        }
        (Method::GET, ["api", "v1", "workloads"]) => reply(
            StatusCode::OK,
            json!({"workloads": cp.workloads(), "reservations": cp.reservations()}),
        ),
        (Method::GET, ["debug", "syncz"]) => reply(
            StatusCode::OK,
            serde_json::to_value(cp.cache.status()).unwrap_or(Json::Null),
        ),
        (Method::GET, ["api", "v1", "errors"]) => {
            reply(StatusCode::OK, json!({"errors": cp.config_errors()}))
        }
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

/// The port the application binds for a service port (the sidecar takes the service port on the
/// workload's address): +10000, or −10000 for high ports.
pub fn app_port(port: u16) -> u16 {
    if port < 55536 {
        port + 10000
    } else {
        port - 10000
    }
}

#[cfg(test)]
mod tests {
    use super::kind_name;

    #[test]
    fn kind_names_accept_short_plural_and_full_forms() {
        for k in ["vs", "VS", "virtualservice", "VirtualServices"] {
            assert_eq!(kind_name(k), "VirtualService", "{k}");
        }
        assert_eq!(kind_name("dr"), "DestinationRule");
        assert_eq!(kind_name("gateways"), "Gateway");
        assert_eq!(kind_name("se"), "ServiceEntry");
    }
}
