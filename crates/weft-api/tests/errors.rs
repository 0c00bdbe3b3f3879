//! Error messages users see: `file:line:column: Kind ns/name: field.path: message`.

use weft_api::{ApiError, parse_documents};

fn errors(file: &str, text: &str) -> Vec<ApiError> {
    match parse_documents(file, text) {
        Ok(p) => panic!("{file} should be rejected, parsed {p:?}"),
        Err(e) => e,
    }
}

fn shown(errors: &[ApiError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

#[test]
fn unknown_field_names_the_path_and_suggests() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - rout:
    - destination:
        host: reviews
";
    assert_eq!(
        shown(&errors("reviews.yaml", text)),
        vec![
            "reviews.yaml:9:5: VirtualService default/reviews: spec.http[0].rout: unknown field (did you mean `route`?)"
        ]
    );
}

#[test]
fn every_unknown_field_is_reported() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: prod
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simpel: ROUND_ROBIN
  subsets:
  - name: v1
    lables:
      version: v1
";
    assert_eq!(
        shown(&errors("dr.yaml", text)),
        vec![
            "dr.yaml:10:7: DestinationRule prod/reviews: spec.trafficPolicy.loadBalancer.simpel: unknown field (did you mean `simple`?)",
            "dr.yaml:13:5: DestinationRule prod/reviews: spec.subsets[0].lables: unknown field (did you mean `labels`?)",
        ]
    );
}

#[test]
fn bad_weights() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 150
    - destination:
        host: reviews
        subset: v2
      weight: 20
";
    assert_eq!(
        shown(&errors("reviews.yaml", text)),
        vec![
            "reviews.yaml:13:5: VirtualService default/reviews: spec.http[1].route: weights of the 2 destinations must sum to 100 (they sum to 170)",
            "reviews.yaml:17:7: VirtualService default/reviews: spec.http[1].route[0].weight: must be between 0 and 100",
        ]
    );
}

#[test]
fn bad_regex() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: api
  namespace: shop
spec:
  hosts: [api]
  http:
  - match:
    - uri:
        regex: /v1/(items
    route:
    - destination: {host: api}
";
    let e = errors("api.yaml", text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].line, e[0].column), (11, 9));
    assert_eq!(e[0].path, "spec.http[0].match[0].uri.regex");
    assert!(
        e[0].to_string().starts_with(
            "api.yaml:11:9: VirtualService shop/api: spec.http[0].match[0].uri.regex: invalid regular expression `/v1/(items`: "
        ),
        "{}",
        e[0]
    );
}

#[test]
fn bad_duration() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
    timeout: 10
    retries:
      attempts: 3
      perTryTimeout: 2 seconds
";
    // The first schema error in a document stops its typed reading.
    assert_eq!(
        shown(&errors("reviews.yaml", text)),
        vec![
            "reviews.yaml:10:14: VirtualService default/reviews: spec.http[0].timeout: invalid duration `10`: missing unit after `10` (use s, ms, m, h ...)"
        ]
    );
    let text = text
        .replace("timeout: 10\n", "timeout: 0.0001s\n")
        .replace("2 seconds", "2s");
    assert_eq!(
        shown(&errors("reviews.yaml", &text)),
        vec![
            "reviews.yaml:10:5: VirtualService default/reviews: spec.http[0].timeout: duration 0.000100s must be at least 1ms"
        ]
    );
}

#[test]
fn route_and_redirect_together() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
spec:
  hosts: [web.example.com]
  gateways: [ingress/public]
  http:
  - route:
    - destination: {host: web}
    redirect:
      uri: /new
";
    assert_eq!(
        shown(&errors("web.yaml", text)),
        vec![
            "web.yaml:11:5: VirtualService default/web: spec.http[0].redirect: route, redirect, directResponse and delegate are mutually exclusive (this rule sets route and redirect)"
        ]
    );
}

#[test]
fn envoy_filter_and_wasm_plugin_are_refused_with_a_hint() {
    let text = "\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: lua
  namespace: istio-system
spec:
  configPatches: []
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: auth
spec: {}
";
    let e = errors("filters.yaml", text);
    assert_eq!(e.len(), 2);
    let first = e[0].to_string();
    assert!(
        first.starts_with("filters.yaml:2:7: EnvoyFilter istio-system/lua: kind: not supported: weft does not run Envoy filters / Wasm; express the behaviour with VirtualService"),
        "{first}"
    );
    assert!(
        e[1].to_string()
            .starts_with("filters.yaml:10:7: WasmPlugin default/auth: kind: not supported"),
        "{}",
        e[1]
    );
}

#[test]
fn yaml_syntax_errors_have_positions() {
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: x\nspec:\n  hosts: [a, b\n";
    let e = errors("broken.yaml", text);
    assert_eq!(e.len(), 1);
    assert!(e[0].line >= 6, "{}", e[0]);
    assert!(e[0].message.starts_with("YAML syntax error"), "{}", e[0]);
}

#[test]
fn type_errors_and_bad_enum_values() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    tls:
      mode: ISTIO_MUTAL
";
    assert_eq!(
        shown(&errors("dr.yaml", text)),
        vec![
            "dr.yaml:9:13: DestinationRule default/reviews: spec.trafficPolicy.tls.mode: `ISTIO_MUTAL`: unknown value (did you mean `ISTIO_MUTUAL`?)"
        ]
    );
    let text = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: gw
spec:
  servers:
  - port: {number: http, protocol: HTTP}
    hosts: ['*']
";
    assert_eq!(
        shown(&errors("gw.yaml", text)),
        vec![
            "gw.yaml:7:20: Gateway default/gw: spec.servers[0].port.number: expected an integer, found `http`"
        ]
    );
}
