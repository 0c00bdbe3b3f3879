//! Istio's own Bookinfo sample configuration parses unchanged, and analyzes clean against the
//! Bookinfo workloads.

use std::collections::BTreeMap;
use std::time::Duration;

use weft_api::{Kind, Parsed, Resource, WorkloadInfo, analyze, parse_documents};

fn load(name: &str) -> Vec<Parsed> {
    let path = format!(
        "{}/tests/testdata/bookinfo/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("testdata readable");
    match parse_documents(name, &text) {
        Ok(p) => p,
        Err(errors) => {
            let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!("{name} must parse:\n{}", shown.join("\n"))
        }
    }
}

fn keys(parsed: &[Parsed]) -> Vec<(Kind, String, String)> {
    parsed
        .iter()
        .map(|p| {
            let (k, ns, n) = p.resource.key();
            (k, ns.to_owned(), n.to_owned())
        })
        .collect()
}

fn vs(p: &Parsed) -> &weft_api::networking::VirtualServiceSpec {
    match &p.resource {
        Resource::VirtualService(o) => &o.spec,
        other => panic!("expected a VirtualService, got {other:?}"),
    }
}

#[test]
fn every_sample_parses() {
    for (file, count) in [
        ("bookinfo-gateway.yaml", 2),
        ("destination-rule-all.yaml", 4),
        ("virtual-service-all-v1.yaml", 4),
        ("virtual-service-reviews-50-v3.yaml", 1),
        ("virtual-service-reviews-test-v2.yaml", 1),
        ("virtual-service-reviews-v3.yaml", 1),
        ("virtual-service-ratings-test-delay.yaml", 1),
        ("virtual-service-ratings-test-abort.yaml", 1),
    ] {
        assert_eq!(load(file).len(), count, "{file}");
    }
}

#[test]
fn gateway_and_its_virtual_service() {
    let parsed = load("bookinfo-gateway.yaml");
    assert_eq!(
        keys(&parsed),
        vec![
            (Kind::Gateway, "default".into(), "bookinfo-gateway".into()),
            (Kind::VirtualService, "default".into(), "bookinfo".into()),
        ]
    );
    let Resource::Gateway(gw) = &parsed[0].resource else {
        panic!("gateway")
    };
    assert_eq!(gw.api_version, "networking.istio.io/v1alpha3");
    assert_eq!(
        gw.spec.selector.get("istio").map(String::as_str),
        Some("ingressgateway")
    );
    let port = gw.spec.servers[0].port.as_ref().expect("port");
    assert_eq!(
        (port.number, port.name.as_str(), port.protocol.as_str()),
        (80, "http", "HTTP")
    );
    assert_eq!(gw.spec.servers[0].hosts, vec!["*"]);
    let v = vs(&parsed[1]);
    assert_eq!(v.gateways, vec!["bookinfo-gateway"]);
    assert_eq!(v.http[0].matches.len(), 5);
    assert_eq!(
        v.http[0].matches[1]
            .uri
            .as_ref()
            .and_then(|u| u.prefix.as_deref()),
        Some("/static")
    );
    let dest = &v.http[0].route[0].destination;
    assert_eq!(dest.host, "productpage");
    assert_eq!(dest.port.as_ref().map(|p| p.number), Some(9080));
    // Positions point into the file.
    assert_eq!(parsed[1].line, 18);
    assert_eq!(
        parsed[1].locate("spec.http[0].route[0].destination.host"),
        (41, 9)
    );
}

#[test]
fn weighted_split_and_header_match() {
    let split = load("virtual-service-reviews-50-v3.yaml");
    let route = &vs(&split[0]).http[0].route;
    assert_eq!(
        route.iter().map(|d| d.weight).collect::<Vec<_>>(),
        vec![Some(50), Some(50)]
    );
    assert_eq!(route[1].destination.subset, "v3");

    let test_v2 = load("virtual-service-reviews-test-v2.yaml");
    let http = &vs(&test_v2[0]).http;
    let m = &http[0].matches[0].headers["end-user"];
    assert_eq!(m.exact.as_deref(), Some("jason"));
    assert!(http[1].matches.is_empty());
}

#[test]
fn fault_injection_samples() {
    let delay = load("virtual-service-ratings-test-delay.yaml");
    let d = vs(&delay[0]).http[0]
        .fault
        .as_ref()
        .and_then(|f| f.delay.as_ref())
        .expect("delay");
    assert_eq!(d.percent, Some(100));
    assert_eq!(d.fixed_delay.map(|x| x.get()), Some(Duration::from_secs(7)));

    let abort = load("virtual-service-ratings-test-abort.yaml");
    let a = vs(&abort[0]).http[0]
        .fault
        .as_ref()
        .and_then(|f| f.abort.as_ref())
        .expect("abort");
    assert_eq!((a.percent, a.http_status), (Some(100), Some(500)));
}

#[test]
fn destination_rules_define_the_subsets() {
    let parsed = load("destination-rule-all.yaml");
    let Resource::DestinationRule(ratings) = &parsed[2].resource else {
        panic!("dr")
    };
    let names: Vec<&str> = ratings
        .spec
        .subsets
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, vec!["v1", "v2", "v2-mysql", "v2-mysql-vm"]);
}

fn bookinfo_workloads() -> Vec<WorkloadInfo> {
    let wl = |app: &str, version: &str| WorkloadInfo {
        namespace: "default".into(),
        labels: BTreeMap::from([
            ("app".into(), app.into()),
            ("version".into(), version.into()),
        ]),
        service_hosts: vec![app.into()],
    };
    vec![
        wl("productpage", "v1"),
        wl("details", "v1"),
        wl("details", "v2"),
        wl("reviews", "v1"),
        wl("reviews", "v2"),
        wl("reviews", "v3"),
        wl("ratings", "v1"),
        wl("ratings", "v2"),
        wl("ratings", "v2-mysql"),
        wl("ratings", "v2-mysql-vm"),
    ]
}

#[test]
fn bookinfo_analyzes_clean() {
    let mut all = load("bookinfo-gateway.yaml");
    all.extend(load("destination-rule-all.yaml"));
    all.extend(load("virtual-service-all-v1.yaml"));
    let findings = analyze(&all, &bookinfo_workloads());
    assert!(findings.is_empty(), "{findings:#?}");

    // Swap in the test-v2 and delay variants: still clean.
    let mut variant: Vec<Parsed> = all
        .into_iter()
        .filter(|p| {
            !(p.resource.kind() == Kind::VirtualService
                && matches!(p.resource.name(), "reviews" | "ratings"))
        })
        .collect();
    variant.extend(load("virtual-service-reviews-test-v2.yaml"));
    variant.extend(load("virtual-service-ratings-test-delay.yaml"));
    let findings = analyze(&variant, &bookinfo_workloads());
    assert!(findings.is_empty(), "{findings:#?}");
}

#[test]
fn bookinfo_without_destination_rules_reports_missing_subsets() {
    let parsed = load("virtual-service-all-v1.yaml");
    let findings = analyze(&parsed, &bookinfo_workloads());
    assert_eq!(findings.len(), 4, "{findings:#?}");
    assert!(
        findings
            .iter()
            .all(|f| f.code == "IST0101" && f.path.ends_with(".subset"))
    );
    let first = &findings[0];
    assert_eq!(first.resource, "VirtualService default/details");
    assert_eq!(
        (first.source.as_str(), first.line),
        ("virtual-service-all-v1.yaml", 51)
    );
}

#[test]
fn truncated_and_mangled_input_never_panics() {
    let dir = format!("{}/tests/testdata/bookinfo", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 8);
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        for cut in (0..text.len()).filter(|i| text.is_char_boundary(*i)) {
            let _ = parse_documents("cut.yaml", &text[..cut]);
            let mut mangled = text.clone();
            mangled.insert_str(cut, "\t: [{\"é*\": -]\n");
            let _ = parse_documents("mangled.yaml", &mangled);
        }
    }
}

#[test]
fn resources_serialize_back_to_equivalent_yaml_json() {
    for file in [
        "bookinfo-gateway.yaml",
        "destination-rule-all.yaml",
        "virtual-service-ratings-test-delay.yaml",
    ] {
        for p in load(file) {
            let json = serde_json::to_string(&p.resource).expect("serializable");
            let again = parse_documents("again.json", &json).expect("reparses");
            assert_eq!(again[0].resource, p.resource, "{json}");
        }
    }
    let p = &load("virtual-service-ratings-test-delay.yaml")[0];
    let json = serde_json::to_string(&p.resource).expect("serializable");
    assert!(json.contains("\"fixedDelay\":\"7s\""), "{json}");
    assert!(!json.contains("null"), "defaults are left out: {json}");
}
