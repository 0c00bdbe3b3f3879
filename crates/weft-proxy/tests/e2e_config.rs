//! End-to-end checks of config strictness: values weft-proxy cannot honour are refused by
//! `--mode validate` with the resource and the field named (never silently ignored), what
//! weft's own tooling generates still validates, and the Envoy semantics of a few fields that
//! used to be accepted but ignored (regexes ignoring case options, empty header values, listener
//! `stat_prefix`) are observable on the wire and in `/stats`.
//!
//! Everything runs on 127.0.0.1 under a deadline.

mod support;

use std::time::Duration;

use anyhow::{Result, ensure};
use support::*;

/// The ADS part of the bootstrap `weft` generates (crates/weft-cli/src/bootstrap.rs), with its
/// static `xds-grpc` cluster (a dead address: validate mode never connects).
fn xds_bootstrap(ads_config: &str, extra_dynamic: &str) -> String {
    let xds = dead_addr();
    let mut s = bootstrap(&[], &[cluster("xds-grpc", &[xds], &indent(H2_UPSTREAM, 0))]);
    s.push_str("dynamic_resources:\n");
    s.push_str(&indent(ads_config, 2));
    s.push_str(&indent(extra_dynamic, 2));
    s
}

const WEFT_ADS: &str = r#"
ads_config:
  api_type: DELTA_GRPC
  transport_api_version: V3
  grpc_services: [{envoy_grpc: {cluster_name: xds-grpc}}]
"#;

const WEFT_LDS_CDS: &str = r#"
lds_config: {ads: {}, resource_api_version: V3}
cds_config: {ads: {}, resource_api_version: V3}
"#;

async fn validate(yaml: &str) -> Result<(bool, String)> {
    let (status, out) =
        Proxy::run_to_exit(yaml, &["--mode", "validate"], Duration::from_secs(20)).await?;
    Ok((status.success(), out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_generated_and_sotw_ads_bootstraps_validate() -> Result<()> {
    within(60, async {
        for ads in [WEFT_ADS.to_string(), WEFT_ADS.replace("DELTA_GRPC", "GRPC")] {
            let (ok, out) = validate(&xds_bootstrap(&ads, WEFT_LDS_CDS)).await?;
            ensure!(ok, "refused: {out}");
        }
        // Istio-style `initial_fetch_timeout: 0s` (wait for the first response) is fine.
        let (ok, out) = validate(&xds_bootstrap(
            WEFT_ADS,
            &WEFT_LDS_CDS.replace("resource_api_version: V3", "initial_fetch_timeout: 0s"),
        ))
        .await?;
        ensure!(ok, "refused: {out}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhonourable_values_are_refused_naming_the_field() -> Result<()> {
    within(120, async {
        let up = dead_addr();
        let port = free_port();
        let plain = bootstrap(
            &[http_listener("main", port, &vhost_to("all", "\"*\"", "up")).build()],
            &[cluster("up", &[up], "")],
        );
        let with_route = |route_match: &str| {
            let vhosts = format!(
                "- name: all\n  domains: [\"*\"]\n  routes:\n  - match: {route_match}\n    route: {{ cluster: up }}\n"
            );
            bootstrap(
                &[http_listener("main", port, &vhosts).build()],
                &[cluster("up", &[up], "")],
            )
        };
        let rds_listener = bootstrap(
            &[custom_listener(
                "rds",
                port,
                r#"
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: rds
      rds: {route_config_name: r, config_source: {ads: {}}}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#,
            )],
            &[
                cluster("up", &[up], ""),
                cluster("xds-grpc", &[up], &indent(H2_UPSTREAM, 0)),
            ],
        );
        let cases: Vec<(String, &str)> = vec![
            (
                plain.replace(
                    &format!("port_value: {port} }}"),
                    &format!("port_value: {port}, protocol: UDP }}"),
                ),
                "address.socket_address.protocol",
            ),
            (
                bootstrap(
                    &[],
                    &[cluster("up", &[up], "")
                        .replace("port_value", "protocol: UDP, port_value")],
                ),
                "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.protocol",
            ),
            (
                bootstrap(
                    &[],
                    &[cluster("up", &[up], "").replace(
                        "      - endpoint:",
                        "      - health_status: DEGRADED\n        endpoint:",
                    )],
                ),
                "load_assignment.endpoints[0].lb_endpoints[0].health_status",
            ),
            (
                bootstrap(
                    &[],
                    &[cluster(
                        "up",
                        &[up],
                        "circuit_breakers: {thresholds: [{max_connections: 10, track_remaining: true}]}",
                    )],
                ),
                "circuit_breakers.thresholds[0].track_remaining",
            ),
            (
                bootstrap(&[], &[cluster("up", &[up], "alt_stat_name: other")]),
                "alt_stat_name",
            ),
            (
                plain.replace("admin:\n", "admin:\n  access_log_path: /tmp/admin.log\n"),
                "admin.access_log_path",
            ),
            (
                plain.replace("admin:\n", "admin:\n  profile_path: /tmp/envoy.prof\n"),
                "admin.profile_path",
            ),
            (
                with_route("{ safe_regex: { google_re2: { max_program_size: 100 }, regex: \"/a\" } }"),
                "match.safe_regex.google_re2.max_program_size",
            ),
            (rds_listener.clone(), "rds.config_source.ads"),
            (
                xds_bootstrap(&WEFT_ADS.replace("DELTA_GRPC", "REST"), WEFT_LDS_CDS),
                "dynamic_resources.ads_config.api_type",
            ),
            (
                xds_bootstrap(
                    &WEFT_ADS.replace("cluster_name: xds-grpc}", "cluster_name: xds-grpc}, timeout: 3s"),
                    WEFT_LDS_CDS,
                ),
                "dynamic_resources.ads_config.grpc_services[0].timeout",
            ),
            (
                xds_bootstrap(
                    WEFT_ADS,
                    &WEFT_LDS_CDS.replace("resource_api_version: V3", "initial_fetch_timeout: 5s"),
                ),
                "dynamic_resources.lds_config.initial_fetch_timeout",
            ),
            (
                format!("{plain}dynamic_resources:\n  cds_config: {{ads: {{}}}}\n"),
                "dynamic_resources.cds_config.ads",
            ),
            (
                // TLS to the xDS server is refused rather than dropped into plaintext.
                xds_bootstrap(WEFT_ADS, WEFT_LDS_CDS).replace(
                    "- name: xds-grpc\n",
                    "- name: xds-grpc\n  transport_socket:\n    name: envoy.transport_sockets.tls\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n      sni: xds.example\n",
                ),
                "transport_socket",
            ),
        ];
        for (yaml, field) in &cases {
            let (ok, out) = validate(yaml).await?;
            ensure!(!ok, "accepted (expected a refusal naming `{field}`):\n{yaml}\n{out}");
            ensure!(
                out.contains(field),
                "the refusal does not name `{field}`:\n{out}"
            );
        }
        // The same RDS listener is fine once there is an ADS source to deliver its routes.
        let (ok, out) = validate(&format!(
            "{rds_listener}dynamic_resources:\n{}",
            indent(WEFT_ADS, 2)
        ))
        .await?;
        ensure!(ok, "refused: {out}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_case_empty_headers_and_listener_stat_prefix() -> Result<()> {
    within(60, async {
        let up = EchoServer::start("up").await?;
        let port = free_port();
        let vhosts = r#"
- name: all
  domains: ["*"]
  routes:
  - match: { safe_regex: { regex: "/re/[a-z]+" }, case_sensitive: false }
    direct_response: { status: 201 }
  - match: { prefix: "/" }
    route: { cluster: up }
    request_headers_to_add:
    - header: { key: x-empty, value: "" }
      append_action: OVERWRITE_IF_EXISTS_OR_ADD
    - header: { key: x-kept, value: "" }
      keep_empty_value: true
    - header: { key: x-full, value: "v" }
    response_headers_to_add:
    - header: { key: x-resp-empty, value: "" }
    - header: { key: x-resp-full, value: "w" }
"#;
        let yaml = bootstrap(
            &[http_listener("main", port, vhosts)
                .listener("stat_prefix: edge")
                .build()],
            &[cluster("up", &[up.addr], "")],
        );
        let proxy = Proxy::start(&yaml).await?;
        let h = Http::h1();
        let r = h.get(local(port), "/re/abc").await?;
        ensure!(r.status == 201, "regex route: {r:?}");
        // case_sensitive: false does not apply to safe_regex (Envoy): /RE/abc falls through.
        let r = h.get(local(port), "/RE/abc").await?;
        ensure!(r.status == 404 || r.upstream() == "up", "{r:?}");
        ensure!(
            r.status != 201,
            "the regex matched case-insensitively: {r:?}"
        );

        let r = h
            .send(
                local(port),
                Req::get("/headers").header("x-empty", "client"),
            )
            .await?;
        ensure!(r.status == 200, "{r:?}");
        let doc = r.json()?;
        let hdrs = &doc["headers"];
        // An empty value is skipped entirely (not even its overwrite happens).
        ensure!(hdrs["x-empty"] == "client", "{doc}");
        ensure!(hdrs["x-kept"] == "", "{doc}");
        ensure!(hdrs["x-full"] == "v", "{doc}");
        ensure!(r.header("x-resp-empty").is_none(), "{r:?}");
        ensure!(r.header("x-resp-full") == Some("w"), "{r:?}");

        let stats = proxy.stats().await?;
        let total = stats
            .value(
                "envoy_listener_downstream_cx_total",
                &[("envoy_listener_address", "edge")],
            )
            .unwrap_or(0.0);
        ensure!(
            total >= 1.0,
            "no listener stats under `edge`:\n{}",
            stats.text
        );
        ensure!(
            !stats.text.contains(&format!("127.0.0.1_{port}")),
            "address-named listener stats remain:\n{}",
            stats.text
        );
        Ok(())
    })
    .await
}

/// A STRICT_DNS cluster keeps only the addresses of its `dns_lookup_family`: `localhost`
/// resolves to 127.0.0.1 here (and maybe ::1), so V4_ONLY reaches the IPv4-only upstream and
/// V6_ONLY never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_dns_honours_dns_lookup_family() -> Result<()> {
    within(60, async {
        let up = EchoServer::start("up").await?;
        let dns = |name: &str, family: &str| {
            format!(
                "- name: {name}\n  type: STRICT_DNS\n  connect_timeout: 0.5s\n  dns_lookup_family: {family}\n  load_assignment:\n    cluster_name: {name}\n    endpoints:\n    - lb_endpoints:\n      - endpoint: {{ address: {{ socket_address: {{ address: localhost, port_value: {} }} }} }}\n",
                up.addr.port()
            )
        };
        let port = free_port();
        let vhosts = r#"
- name: all
  domains: ["*"]
  routes:
  - match: { prefix: "/v4" }
    route: { cluster: v4 }
  - match: { prefix: "/v6" }
    route: { cluster: v6 }
"#;
        let yaml = bootstrap(
            &[http_listener("main", port, vhosts).build()],
            &[dns("v4", "V4_ONLY"), dns("v6", "V6_ONLY")],
        );
        let _proxy = Proxy::start(&yaml).await?;
        let h = Http::h1();
        eventually(
            "the V4_ONLY cluster to reach the upstream",
            Duration::from_secs(10),
            async || {
                let r = h.get(local(port), "/v4").await.ok()?;
                (r.status == 200 && r.upstream() == "up").then_some(())
            },
        )
        .await?;
        let before = up.requests();
        for _ in 0..5 {
            let r = h.get(local(port), "/v6").await?;
            ensure!(r.status == 503, "V6_ONLY reached an IPv4 upstream: {r:?}");
        }
        ensure!(up.requests() == before, "V6_ONLY sent requests to the IPv4 upstream");
        Ok(())
    })
    .await
}
