//! Finds the fields of an Envoy resource that a consumer does not implement.
//!
//! A proxy that silently ignores a field it does not understand does something other than what
//! the operator asked for. Instead, consumers declare the fields they implement and this walk
//! lists every *set* field outside that list — through nested messages, lists, maps and `Any`
//! payloads — by its path, so the resource can be refused with a precise reason.

use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage, Value};

/// Lists the paths (`static_resources.clusters[0].health_checks`) of set fields that `allowed`
/// rejects. `allowed(message_full_name, field_name)` decides per field; nested messages of
/// allowed fields are walked too. Undecodable `Any` payloads are reported as such.
pub fn unsupported_fields(
    pool: &DescriptorPool,
    full_name: &str,
    bytes: &[u8],
    allowed: &dyn Fn(&str, &str) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    match pool.get_message_by_name(full_name) {
        Some(desc) => match DynamicMessage::decode(desc, bytes) {
            Ok(msg) => walk(pool, &msg, String::new(), allowed, &mut out),
            Err(e) => out.push(format!("<root>: undecodable {full_name}: {e}")),
        },
        None => out.push(format!("<root>: unknown type {full_name}")),
    }
    out
}

fn join(path: &str, seg: &str) -> String {
    if path.is_empty() {
        seg.to_string()
    } else {
        format!("{path}.{seg}")
    }
}

fn walk(
    pool: &DescriptorPool,
    msg: &DynamicMessage,
    path: String,
    allowed: &dyn Fn(&str, &str) -> bool,
    out: &mut Vec<String>,
) {
    let desc = msg.descriptor();
    if desc.full_name() == "google.protobuf.Any" {
        let type_url = msg.get_field_by_name("type_url");
        let value = msg.get_field_by_name("value");
        let (Some(Value::String(url)), Some(Value::Bytes(bytes))) =
            (type_url.as_deref(), value.as_deref())
        else {
            return;
        };
        let name = url.rsplit('/').next().unwrap_or_default();
        match pool.get_message_by_name(name) {
            Some(inner) => match DynamicMessage::decode(inner, bytes.as_ref()) {
                Ok(m) => walk(pool, &m, path, allowed, out),
                Err(e) => out.push(format!("{path}: undecodable {name}: {e}")),
            },
            None => out.push(format!("{path}: type `{url}` is not supported")),
        }
        return;
    }
    if desc.full_name().starts_with("google.protobuf.") {
        return;
    }
    for (field, value) in msg.fields() {
        let p = join(&path, field.name());
        if !allowed(desc.full_name(), field.name()) {
            out.push(p);
            continue;
        }
        match value {
            Value::Message(m) => walk(pool, m, p, allowed, out),
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(m) = item {
                        walk(pool, m, format!("{p}[{i}]"), allowed, out);
                    }
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    if let Value::Message(m) = v {
                        let key = match k {
                            prost_reflect::MapKey::String(s) => format!("{s:?}"),
                            other => format!("{other:?}"),
                        };
                        walk(pool, m, format!("{p}[{key}]"), allowed, out);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::{descriptors, from_yaml};
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Message;

    #[test]
    fn reports_disallowed_set_fields_with_paths() {
        let c: Cluster = from_yaml(
            "name: c\ntype: STATIC\nhealth_checks: [{timeout: 1s, interval: 1s}]\nload_assignment: {cluster_name: c, endpoints: [{lb_endpoints: [{endpoint: {hostname: x}}]}]}",
            "t",
        )
        .unwrap();
        let pool = descriptors();
        let allowed = |m: &str, f: &str| match m {
            "envoy.config.cluster.v3.Cluster" => ["name", "type", "load_assignment"].contains(&f),
            "envoy.config.endpoint.v3.ClusterLoadAssignment" => true,
            "envoy.config.endpoint.v3.LocalityLbEndpoints" => true,
            "envoy.config.endpoint.v3.LbEndpoint" => true,
            "envoy.config.endpoint.v3.Endpoint" => f == "address",
            _ => false,
        };
        let bad = unsupported_fields(
            &pool,
            "envoy.config.cluster.v3.Cluster",
            &c.encode_to_vec(),
            &allowed,
        );
        assert_eq!(
            bad,
            vec![
                "health_checks".to_string(),
                "load_assignment.endpoints[0].lb_endpoints[0].endpoint.hostname".to_string()
            ]
        );
    }
}
