//! Each analyzer fires on a minimal broken config and stays quiet on the corrected one.

use std::collections::BTreeMap;

use weft_api::{Finding, Severity, WorkloadInfo, analyze, parse_documents};

fn run(text: &str, workloads: &[WorkloadInfo]) -> Vec<Finding> {
    let parsed = match parse_documents("mesh.yaml", text) {
        Ok(p) => p,
        Err(e) => panic!("test config must be valid: {e:?}"),
    };
    analyze(&parsed, workloads)
}

fn codes(findings: &[Finding]) -> Vec<(&'static str, String)> {
    findings.iter().map(|f| (f.code, f.path.clone())).collect()
}

fn workload(app: &str, version: &str) -> WorkloadInfo {
    WorkloadInfo {
        namespace: "default".into(),
        labels: BTreeMap::from([
            ("app".into(), app.into()),
            ("version".into(), version.into()),
        ]),
        service_hosts: vec![app.into()],
    }
}

const REVIEWS_DR: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
";

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}

#[test]
fn ist0101_missing_subset_host_and_gateway() {
    let wl = [workload("reviews", "v1")];
    let bad = vs("  - route:\n    - destination: {host: reviews, subset: v2}\n");
    let f = run(&format!("{REVIEWS_DR}---\n{bad}"), &wl);
    assert_eq!(
        codes(&f),
        vec![("IST0101", "spec.http[0].route[0].destination.subset".into())]
    );
    assert_eq!(f[0].name, "ReferencedResourceNotFound");
    assert_eq!(f[0].severity, Severity::Error);
    assert_eq!(f[0].resource, "VirtualService default/reviews");
    assert_eq!((f[0].line, f[0].column), (17, 36));
    assert!(
        f[0].message
            .contains("subset `v2` of host `reviews.default.svc.cluster.local`"),
        "{}",
        f[0]
    );
    assert!(!f[0].hint.is_empty());

    let bad_host = vs("  - route:\n    - destination: {host: reveiws}\n");
    let f = run(&format!("{REVIEWS_DR}---\n{bad_host}"), &wl);
    assert_eq!(
        codes(&f),
        vec![("IST0101", "spec.http[0].route[0].destination.host".into())]
    );

    let bad_gw = vs("  - route:\n    - destination: {host: reviews}\n")
        .replace("  http:", "  gateways: [ingress]\n  http:");
    let f = run(&format!("{REVIEWS_DR}---\n{bad_gw}"), &wl);
    assert_eq!(codes(&f), vec![("IST0101", "spec.gateways[0]".into())]);
    assert!(
        f[0].message
            .contains("gateway `default/ingress` does not exist")
    );

    let good = vs("  - route:\n    - destination: {host: reviews, subset: v1}\n");
    assert!(run(&format!("{REVIEWS_DR}---\n{good}"), &wl).is_empty());
}

#[test]
fn ist0101_for_gateway_api_routes() {
    let route = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{name: public}]
  rules:
  - backendRefs: [{name: reviews, port: 9080}]
";
    let f = run(route, &[workload("reviews", "v1")]);
    assert_eq!(codes(&f), vec![("IST0101", "spec.parentRefs[0]".into())]);
    let gw = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: public}
spec:
  gatewayClassName: weft
  listeners: [{name: http, port: 80, protocol: HTTP}]
";
    assert!(run(&format!("{gw}---\n{route}"), &[workload("reviews", "v1")]).is_empty());
    let f = run(&format!("{gw}---\n{route}"), &[]);
    assert_eq!(
        codes(&f),
        vec![("IST0101", "spec.rules[0].backendRefs[0]".into())]
    );
}

#[test]
fn ist0130_rule_after_catch_all() {
    let wl = [workload("reviews", "v1")];
    let bad = vs(
        "  - route:\n    - destination: {host: reviews}\n  - match:\n    - headers: {end-user: {exact: jason}}\n    route:\n    - destination: {host: reviews}\n",
    );
    let f = run(&bad, &wl);
    assert_eq!(codes(&f), vec![("IST0130", "spec.http[1]".into())]);
    assert_eq!(f[0].name, "VirtualServiceUnreachableRule");
    assert_eq!(f[0].severity, Severity::Warning);

    // A rule whose only match repeats an earlier one is unreachable too.
    let dup = vs(
        "  - match:\n    - uri: {prefix: /a}\n    route:\n    - destination: {host: reviews}\n  - match:\n    - uri: {prefix: /a}\n      name: again\n    route:\n    - destination: {host: reviews}\n",
    );
    assert_eq!(
        codes(&run(&dup, &wl)),
        vec![("IST0130", "spec.http[1]".into())]
    );

    let good = vs(
        "  - match:\n    - headers: {end-user: {exact: jason}}\n    route:\n    - destination: {host: reviews}\n  - route:\n    - destination: {host: reviews}\n",
    );
    assert!(run(&good, &wl).is_empty());
}

#[test]
fn ist0131_duplicate_match() {
    let wl = [workload("reviews", "v1")];
    let bad = vs(
        "  - match:\n    - uri: {prefix: /a}\n    route:\n    - destination: {host: reviews}\n  - match:\n    - uri: {prefix: /b}\n    - uri: {prefix: /a}\n    route:\n    - destination: {host: reviews}\n",
    );
    let f = run(&bad, &wl);
    assert_eq!(codes(&f), vec![("IST0131", "spec.http[1].match[1]".into())]);
    assert_eq!(f[0].severity, Severity::Info);
    assert!(f[0].message.contains("duplicates spec.http[0].match[0]"));
    let good = bad.replace("    - uri: {prefix: /a}\n    route:\n    - destination: {host: reviews}\n  - match:\n    - uri: {prefix: /b}\n    - uri: {prefix: /a}\n", "    - uri: {prefix: /a}\n    route:\n    - destination: {host: reviews}\n  - match:\n    - uri: {prefix: /b}\n");
    assert!(run(&good, &wl).is_empty());
}

const GATEWAY: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [shop.example.com]
";

fn gateway_vs(host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web}}\nspec:\n  hosts: [{host}]\n  gateways: [public]\n  http:\n  - route:\n    - destination: {{host: web}}\n"
    )
}

#[test]
fn ist0132_host_not_in_gateway() {
    let wl = [workload("web", "v1")];
    let f = run(
        &format!("{GATEWAY}---\n{}", gateway_vs("blog.example.com")),
        &wl,
    );
    assert_eq!(codes(&f), vec![("IST0132", "spec.hosts[0]".into())]);
    assert_eq!(f[0].name, "VirtualServiceHostNotFoundInGateway");
    assert!(f[0].message.contains("shop.example.com"), "{}", f[0]);
    assert!(
        run(
            &format!("{GATEWAY}---\n{}", gateway_vs("shop.example.com")),
            &wl
        )
        .is_empty()
    );
    // Namespace-scoped gateway hosts only serve their namespace.
    let scoped = GATEWAY.replace("[shop.example.com]", "[other/shop.example.com]");
    let f = run(
        &format!("{scoped}---\n{}", gateway_vs("shop.example.com")),
        &wl,
    );
    assert_eq!(codes(&f), vec![("IST0132", "spec.hosts[0]".into())]);
}

#[test]
fn ist0145_conflicting_gateways() {
    let second = GATEWAY.replace("name: public", "name: public-two");
    let f = run(&format!("{GATEWAY}---\n{second}"), &[]);
    assert_eq!(codes(&f), vec![("IST0145", "spec.servers[0]".into())]);
    assert_eq!(f[0].resource, "Gateway default/public-two");
    assert!(f[0].message.contains("Gateway default/public"), "{}", f[0]);
    assert!(f[0].message.contains("port 80"));
    // Different port, different host or different selector: no conflict.
    for fixed in [
        second.replace("number: 80", "number: 8080"),
        second.replace("[shop.example.com]", "[blog.example.com]"),
        second.replace("ingressgateway", "internal-gateway"),
    ] {
        assert!(
            run(&format!("{GATEWAY}---\n{fixed}"), &[]).is_empty(),
            "{fixed}"
        );
    }
}

#[test]
fn ist0173_subset_selects_no_pods() {
    let dr = REVIEWS_DR.to_owned() + "  - name: v9\n    labels: {version: v9}\n";
    let f = run(&dr, &[workload("reviews", "v1")]);
    assert_eq!(codes(&f), vec![("IST0173", "spec.subsets[1]".into())]);
    assert_eq!(f[0].name, "DestinationRuleSubsetNotSelectPods");
    assert!(run(&dr, &[workload("reviews", "v1"), workload("reviews", "v9")]).is_empty());
}

#[test]
fn ist0173_with_workload_entries() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-vm}
spec:
  address: 10.0.0.7
  labels: {app: ratings, version: v1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
";
    let f = run(text, &[]);
    assert_eq!(codes(&f), vec![("IST0173", "spec.subsets[1]".into())]);
    assert!(
        run(
            &text.replace("  - name: v2\n    labels: {version: v2}\n", ""),
            &[]
        )
        .is_empty()
    );
}

#[test]
fn ist0174_unknown_destination_rule_host() {
    let f = run(REVIEWS_DR, &[workload("ratings", "v1")]);
    assert_eq!(codes(&f), vec![("IST0174", "spec.host".into())]);
    assert_eq!(f[0].name, "UnknownDestinationRuleHost");
    assert!(f[0].message.contains("reviews.default.svc.cluster.local"));
    assert!(run(REVIEWS_DR, &[workload("reviews", "v1")]).is_empty());
}

#[test]
fn findings_are_deterministic_and_displayable() {
    let wl = [workload("reviews", "v1")];
    let text = format!(
        "{}---\n{}",
        vs(
            "  - route:\n    - destination: {host: nope}\n  - route:\n    - destination: {host: reviews, subset: v7}\n"
        ),
        GATEWAY
    );
    let a = run(&text, &wl);
    let b = run(&text, &wl);
    assert_eq!(a, b);
    assert_eq!(
        codes(&a),
        vec![
            ("IST0101", "spec.http[0].route[0].destination.host".into()),
            ("IST0130", "spec.http[1]".into()),
            ("IST0101", "spec.http[1].route[0].destination.subset".into()),
        ]
    );
    let line = a[0].to_string();
    assert!(
        line.starts_with("Error [IST0101] (VirtualService default/reviews) mesh.yaml:8:21 "),
        "{line}"
    );
    assert!(line.contains("(hint: "));
}

#[test]
fn ist0101_missing_delegate() {
    let root = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: root}\nspec:\n  hosts: [web.example.com]\n  gateways: [public]\n  http:\n  - delegate: {name: web-routes}\n";
    let gw = GATEWAY.replace("shop.example.com", "web.example.com");
    let f = run(&format!("{gw}---\n{root}"), &[]);
    assert_eq!(codes(&f), vec![("IST0101", "spec.http[0].delegate".into())]);
    let child = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web-routes}\nspec:\n  http:\n  - route:\n    - destination: {host: web}\n";
    assert!(
        run(
            &format!("{gw}---\n{root}---\n{child}"),
            &[workload("web", "v1")]
        )
        .is_empty()
    );
}
