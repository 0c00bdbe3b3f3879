//! TLS origination towards upstreams: a DestinationRule's `trafficPolicy.tls` (or a subset's,
//! or `portLevelSettings[].tls`, already merged into the policy) with mode SIMPLE or MUTUAL
//! becomes the cluster's `transport_socket` (an UpstreamTlsContext). DISABLE and no `tls` mean
//! plain text. ISTIO_MUTUAL is the mesh's own mTLS and is not decided here.
//!
//! Istio's semantics: `sni` defaults to the service host; the server is verified against
//! `caCertificates`, else the system's CA bundle, unless `insecureSkipVerify`; MUTUAL presents
//! `clientCertificate` + `privateKey`. `credentialName` names files in the config directory
//! (see [`Env::credential_files`]). Must not do I/O: paths are passed to the proxy as they are.

use super::Env;
use crate::model::Service;
use serde_json::{Map, Value as Json, json};

pub const UPSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// The cluster `transport_socket` for `policy`'s `tls`, or None for plain text.
pub fn transport_socket(policy: Option<&Json>, svc: &Service, env: &Env) -> Option<Json> {
    let tls = policy?.get("tls")?;
    let mode = tls.get("mode").and_then(Json::as_str).unwrap_or("DISABLE");
    if !matches!(mode, "SIMPLE" | "MUTUAL") {
        return None;
    }
    let s = |k: &str| {
        tls.get(k)
            .and_then(Json::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let cred = s("credentialName").and_then(|n| env.credential_files(&n));
    let (cert, key, ca) = match &cred {
        Some([c, k, a]) => (Some(c.clone()), Some(k.clone()), Some(a.clone())),
        None => (s("clientCertificate"), s("privateKey"), s("caCertificates")),
    };
    let mut common = Map::new();
    let skip_verify = tls.get("insecureSkipVerify").and_then(Json::as_bool) == Some(true);
    if !skip_verify && let Some(ca) = ca.or_else(|| env.system_ca.clone()) {
        common.insert(
            "validation_context".into(),
            json!({"trusted_ca": {"filename": ca}}),
        );
    }
    if mode == "MUTUAL"
        && let (Some(c), Some(k)) = (cert, key)
    {
        common.insert(
            "tls_certificates".into(),
            json!([{"certificate_chain": {"filename": c}, "private_key": {"filename": k}}]),
        );
    }
    let mut ctx = json!({"@type": UPSTREAM_TLS, "common_tls_context": common});
    let sni = s("sni").or_else(|| (!svc.hostname.starts_with('*')).then(|| svc.hostname.clone()));
    if let Some(sni) = sni {
        ctx["sni"] = json!(sni);
    }
    Some(json!({"name": "envoy.transport_sockets.tls", "typed_config": ctx}))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use super::*;
    use crate::model::{Port, Protocol};

    fn external() -> Service {
        let mut s = svc("api.example.com", "default", 80, &[]);
        s.mesh_external = true;
        s.resolution = Resolution::Dns;
        s.ports = vec![Port {
            number: 80,
            name: "http".into(),
            protocol: Protocol::Http,
            target: Some(443),
        }];
        s
    }

    #[test]
    fn simple_and_mutual_origination_from_a_destination_rule() {
        let env = Env {
            services: vec![external()],
            destination_rules: vec![res(
                "DestinationRule",
                "api",
                json!({"host": "api.example.com", "trafficPolicy": {"portLevelSettings": [
                    {"port": {"number": 80}, "tls": {"mode": "SIMPLE", "caCertificates": "/etc/ca.pem"}}
                ]}, "subsets": [{"name": "mtls", "trafficPolicy": {"tls": {"mode": "MUTUAL", "sni": "mtls.example.com",
                    "clientCertificate": "/c.pem", "privateKey": "/k.pem", "caCertificates": "/ca.pem"}}},
                    {"name": "plain", "trafficPolicy": {"tls": {"mode": "DISABLE"}}},
                    {"name": "insecure", "trafficPolicy": {"tls": {"mode": "SIMPLE", "insecureSkipVerify": true}}}]}),
            )],
            system_ca: Some("/etc/ssl/certs/ca-certificates.crt".into()),
            ..Default::default()
        };
        let out = for_proxy(&proxy(), &env);
        assert_valid(&out);
        let c = &out.clusters["outbound|80||api.example.com"];
        assert_eq!(c["type"], "STRICT_DNS");
        let ts = &c["transport_socket"];
        assert_eq!(ts["name"], "envoy.transport_sockets.tls");
        assert_eq!(ts["typed_config"]["@type"], UPSTREAM_TLS);
        assert_eq!(ts["typed_config"]["sni"], "api.example.com");
        assert_eq!(
            ts["typed_config"]["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
            "/etc/ca.pem"
        );
        let m =
            &out.clusters["outbound|80|mtls|api.example.com"]["transport_socket"]["typed_config"];
        assert_eq!(m["sni"], "mtls.example.com");
        assert_eq!(
            m["common_tls_context"]["tls_certificates"][0]["certificate_chain"]["filename"],
            "/c.pem"
        );
        // Istio's merge: the rule's port-level settings first, then the subset's own policy.
        let i = &out.clusters["outbound|80|insecure|api.example.com"]["transport_socket"]["typed_config"];
        assert_eq!(i["common_tls_context"], json!({}));
        assert!(
            out.clusters["outbound|80|plain|api.example.com"]
                .get("transport_socket")
                .is_none()
        );
        // Without port-level settings, DISABLE means plain text and insecureSkipVerify no CA.
        let env2 = Env {
            services: vec![external()],
            destination_rules: vec![res(
                "DestinationRule",
                "api",
                json!({"host": "api.example.com", "trafficPolicy": {"tls": {"mode": "SIMPLE"}},
                    "subsets": [{"name": "plain", "trafficPolicy": {"tls": {"mode": "DISABLE"}}},
                                {"name": "insecure", "trafficPolicy": {"tls": {"mode": "SIMPLE", "insecureSkipVerify": true}}}]}),
            )],
            system_ca: Some("/sys/ca.crt".into()),
            ..Default::default()
        };
        let out = for_proxy(&proxy(), &env2);
        assert_valid(&out);
        assert_eq!(
            out.clusters["outbound|80||api.example.com"]["transport_socket"]["typed_config"]["common_tls_context"]
                ["validation_context"]["trusted_ca"]["filename"],
            "/sys/ca.crt",
            "no caCertificates: the system roots"
        );
        assert!(
            out.clusters["outbound|80|plain|api.example.com"]
                .get("transport_socket")
                .is_none()
        );
        assert_eq!(
            out.clusters["outbound|80|insecure|api.example.com"]["transport_socket"]["typed_config"]
                ["common_tls_context"],
            json!({})
        );
    }

    #[test]
    fn credential_name_resolves_under_the_config_dir() {
        let env = Env {
            config_dir: Some("/cfg".into()),
            ..Default::default()
        };
        let ts = transport_socket(
            Some(&json!({"tls": {"mode": "MUTUAL", "credentialName": "client"}})),
            &external(),
            &env,
        )
        .unwrap();
        let c = &ts["typed_config"]["common_tls_context"];
        assert_eq!(
            c["tls_certificates"][0]["private_key"]["filename"],
            "/cfg/credentials/client/tls.key"
        );
        assert_eq!(
            c["validation_context"]["trusted_ca"]["filename"],
            "/cfg/credentials/client/ca.crt"
        );
        assert!(env.credential_files("../x").is_none());
        assert!(Env::default().credential_files("client").is_none());
    }
}
