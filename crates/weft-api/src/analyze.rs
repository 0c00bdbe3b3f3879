//! Cross-resource analysis in the spirit of `istioctl analyze`: config that is individually
//! valid but wrong together (a route to a subset nobody defined, a rule that can never match,
//! two gateways fighting over a port). Codes and names follow Istio's numbering, so users
//! can search for them.
//!
//! Must not reject anything (findings are advice; validation rejects), must not do I/O, and
//! must produce the same findings in the same order for the same input.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::gateway_api::{HttpBackendRef, ParentReference};
use crate::host::{fqdn, host_matches, hosts_intersect};
use crate::networking::{
    Destination, GatewaySpec, HttpMatchRequest, ServiceEntrySpec, StringMatch, VirtualServiceSpec,
};
use crate::parse::Parsed;
use crate::types::{Kind, Object, Resource};

/// A workload known from outside the resources (Kubernetes pods, `weft run` processes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadInfo {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Hosts of the services this workload backs (short names resolve in `namespace`).
    pub service_hosts: Vec<String>,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "Error",
            Severity::Warning => "Warning",
            Severity::Info => "Info",
        })
    }
}

/// The analyzers, with Istio's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FindingCode {
    /// IST0101: a gateway, host or subset that is referenced does not exist.
    ReferencedResourceNotFound,
    /// IST0130: a rule after a catch-all (or fully duplicated) rule is never reached.
    VirtualServiceUnreachableRule,
    /// IST0131: a match that duplicates an earlier rule's match never takes effect.
    VirtualServiceIneffectiveMatch,
    /// IST0132: a VirtualService host that its gateway does not serve.
    VirtualServiceHostNotFoundInGateway,
    /// IST0145: two gateways with the same selector, port and host.
    ConflictingGateways,
    /// IST0173: a DestinationRule subset whose labels select no workload.
    DestinationRuleSubsetNotSelectPods,
    /// IST0174: a DestinationRule for a host no registry knows.
    UnknownDestinationRuleHost,
}

impl FindingCode {
    /// Istio's code, e.g. `IST0101`.
    pub fn code(self) -> &'static str {
        match self {
            FindingCode::ReferencedResourceNotFound => "IST0101",
            FindingCode::VirtualServiceUnreachableRule => "IST0130",
            FindingCode::VirtualServiceIneffectiveMatch => "IST0131",
            FindingCode::VirtualServiceHostNotFoundInGateway => "IST0132",
            FindingCode::ConflictingGateways => "IST0145",
            FindingCode::DestinationRuleSubsetNotSelectPods => "IST0173",
            FindingCode::UnknownDestinationRuleHost => "IST0174",
        }
    }

    /// Istio's name, e.g. `ReferencedResourceNotFound`.
    pub fn name(self) -> &'static str {
        match self {
            FindingCode::ReferencedResourceNotFound => "ReferencedResourceNotFound",
            FindingCode::VirtualServiceUnreachableRule => "VirtualServiceUnreachableRule",
            FindingCode::VirtualServiceIneffectiveMatch => "VirtualServiceIneffectiveMatch",
            FindingCode::VirtualServiceHostNotFoundInGateway => {
                "VirtualServiceHostNotFoundInGateway"
            }
            FindingCode::ConflictingGateways => "ConflictingGateways",
            FindingCode::DestinationRuleSubsetNotSelectPods => "DestinationRuleSubsetNotSelectPods",
            FindingCode::UnknownDestinationRuleHost => "UnknownDestinationRuleHost",
        }
    }

    /// Istio's severity for the code.
    pub fn severity(self) -> Severity {
        match self {
            FindingCode::ReferencedResourceNotFound | FindingCode::ConflictingGateways => {
                Severity::Error
            }
            FindingCode::VirtualServiceIneffectiveMatch => Severity::Info,
            _ => Severity::Warning,
        }
    }
}

/// One analysis result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingCode,
    /// `IST0101` ...
    pub code: &'static str,
    /// `ReferencedResourceNotFound` ...
    pub name: &'static str,
    pub severity: Severity,
    /// `VirtualService default/reviews`.
    pub resource: String,
    /// Field path within the resource.
    pub path: String,
    pub message: String,
    /// A one-line fix.
    pub hint: String,
    /// Where the resource came from, and the 1-based position of `path` (0 when unknown).
    pub source: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Finding {
    /// `Error [IST0101] (VirtualService default/reviews) vs.yaml:12:9 spec.http[0]...: message (hint)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] ({})", self.severity, self.code, self.resource)?;
        if !self.source.is_empty() {
            write!(f, " {}", self.source)?;
            if self.line > 0 {
                write!(f, ":{}:{}", self.line, self.column)?;
            }
        }
        if !self.path.is_empty() {
            write!(f, " {}", self.path)?;
        }
        write!(f, ": {}", self.message)?;
        if !self.hint.is_empty() {
            write!(f, " (hint: {})", self.hint)?;
        }
        Ok(())
    }
}

struct Out<'a> {
    findings: Vec<Finding>,
    current: &'a Parsed,
}

impl Out<'_> {
    fn add(&mut self, code: FindingCode, path: String, message: String, hint: String) {
        let (line, column) = self.current.locate(&path);
        self.findings.push(Finding {
            kind: code,
            code: code.code(),
            name: code.name(),
            severity: code.severity(),
            resource: self.current.resource.label(),
            path,
            message,
            hint,
            source: self.current.source.clone(),
            line,
            column,
        });
    }
}

/// A workload (pod, WorkloadEntry or ServiceEntry endpoint) and the hosts it serves.
struct Pod<'a> {
    labels: &'a BTreeMap<String, String>,
    hosts: Vec<String>,
}

/// What the mesh knows about: service hosts and the workloads behind them.
struct Registry<'a> {
    /// Host patterns (as written, and fully qualified).
    hosts: BTreeSet<String>,
    pods: Vec<Pod<'a>>,
}

impl Registry<'_> {
    fn knows(&self, host: &str, namespace: &str) -> bool {
        let full = fqdn(host, namespace);
        self.hosts
            .iter()
            .any(|h| host_matches(h, &full) || host_matches(h, host))
    }

    /// Workloads serving `host` (a DestinationRule host).
    fn pods_for(&self, host: &str, namespace: &str) -> Vec<&Pod<'_>> {
        let full = fqdn(host, namespace);
        self.pods
            .iter()
            .filter(|p| {
                p.hosts
                    .iter()
                    .any(|h| hosts_intersect(h, &full) || hosts_intersect(h, host))
            })
            .collect()
    }
}

fn labels_select(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn registry<'a>(resources: &'a [Parsed], workloads: &'a [WorkloadInfo]) -> Registry<'a> {
    let mut hosts = BTreeSet::new();
    let mut pods = Vec::new();
    for w in workloads {
        let mut served = Vec::new();
        for h in &w.service_hosts {
            hosts.insert(h.clone());
            hosts.insert(fqdn(h, &w.namespace));
            served.push(h.clone());
            served.push(fqdn(h, &w.namespace));
        }
        pods.push(Pod {
            labels: &w.labels,
            hosts: served,
        });
    }
    let entries: Vec<(&str, &ServiceEntrySpec)> = resources
        .iter()
        .filter_map(|p| match &p.resource {
            Resource::ServiceEntry(o) => Some((o.metadata.namespace.as_str(), &o.spec)),
            _ => None,
        })
        .collect();
    for (_, se) in &entries {
        hosts.extend(se.hosts.iter().cloned());
        for e in &se.endpoints {
            pods.push(Pod {
                labels: &e.labels,
                hosts: se.hosts.clone(),
            });
        }
    }
    for p in resources {
        let Resource::WorkloadEntry(we) = &p.resource else {
            continue;
        };
        let ns = we.metadata.namespace.as_str();
        let served: Vec<String> = entries
            .iter()
            .filter(|(se_ns, se)| {
                *se_ns == ns
                    && se
                        .workload_selector
                        .as_ref()
                        .is_some_and(|s| labels_select(&s.labels, &we.spec.labels))
            })
            .flat_map(|(_, se)| se.hosts.iter().cloned())
            .collect();
        pods.push(Pod {
            labels: &we.spec.labels,
            hosts: served,
        });
    }
    Registry { hosts, pods }
}

/// Analyze a set of resources (and extra registered workloads) for cross-resource mistakes.
///
/// Findings are sorted by resource, path and code.
pub fn analyze(resources: &[Parsed], workloads: &[WorkloadInfo]) -> Vec<Finding> {
    let reg = registry(resources, workloads);
    let gateways: BTreeMap<(&str, &str), &Object<GatewaySpec>> = resources
        .iter()
        .filter_map(|p| match &p.resource {
            Resource::Gateway(g) => {
                Some(((g.metadata.namespace.as_str(), g.metadata.name.as_str()), g))
            }
            _ => None,
        })
        .collect();
    let virtual_services: BTreeSet<(&str, &str)> = resources
        .iter()
        .filter(|p| p.resource.kind() == Kind::VirtualService)
        .map(|p| (p.resource.namespace(), p.resource.name()))
        .collect();
    let kube_gateways: BTreeSet<(&str, &str)> = resources
        .iter()
        .filter(|p| p.resource.kind() == Kind::KubernetesGateway)
        .map(|p| (p.resource.namespace(), p.resource.name()))
        .collect();
    // (fqdn host pattern, namespace) → subset names, per DestinationRule.
    let subsets: Vec<(String, BTreeSet<&str>)> = resources
        .iter()
        .filter_map(|p| match &p.resource {
            Resource::DestinationRule(dr) => Some((
                fqdn(&dr.spec.host, &dr.metadata.namespace),
                dr.spec.subsets.iter().map(|s| s.name.as_str()).collect(),
            )),
            _ => None,
        })
        .collect();

    let mut findings = Vec::new();
    for parsed in resources {
        let mut out = Out {
            findings: Vec::new(),
            current: parsed,
        };
        match &parsed.resource {
            Resource::VirtualService(vs) => {
                let ns = vs.metadata.namespace.as_str();
                vs_references(&mut out, &vs.spec, ns, &reg, &gateways, &subsets);
                for (i, r) in vs.spec.http.iter().enumerate() {
                    let Some(d) = &r.delegate else { continue };
                    let dns = if d.namespace.is_empty() {
                        ns
                    } else {
                        d.namespace.as_str()
                    };
                    if !virtual_services.contains(&(dns, d.name.as_str())) {
                        out.add(
                            FindingCode::ReferencedResourceNotFound,
                            format!("spec.http[{i}].delegate"),
                            format!("delegate VirtualService `{dns}/{}` does not exist", d.name),
                            "create the delegate VirtualService (without hosts) or fix the reference".to_owned(),
                        );
                    }
                }
                vs_unreachable(&mut out, &vs.spec);
                vs_gateway_hosts(&mut out, &vs.spec, ns, &gateways);
            }
            Resource::DestinationRule(dr) => {
                let ns = dr.metadata.namespace.as_str();
                let host = dr.spec.host.as_str();
                if host.is_empty() || host.contains('*') {
                    // Wildcard rules apply to whatever matches; nothing to look up.
                } else if !reg.knows(host, ns) {
                    out.add(
                        FindingCode::UnknownDestinationRuleHost,
                        "spec.host".to_owned(),
                        format!("no service registry entry for host `{}`", fqdn(host, ns)),
                        "declare the service (ServiceEntry or a registered workload) or fix the host name".to_owned(),
                    );
                } else {
                    let pods = reg.pods_for(host, ns);
                    if !pods.is_empty() {
                        for (i, s) in dr.spec.subsets.iter().enumerate() {
                            if !s.labels.is_empty()
                                && !pods.iter().any(|p| labels_select(&s.labels, p.labels))
                            {
                                out.add(
                                    FindingCode::DestinationRuleSubsetNotSelectPods,
                                    format!("spec.subsets[{i}]"),
                                    format!(
                                        "subset `{}` selects no workload of `{}` (labels {})",
                                        s.name,
                                        fqdn(host, ns),
                                        fmt_labels(&s.labels)
                                    ),
                                    "fix the subset labels to match the workloads' labels (e.g. `version: v1`)".to_owned(),
                                );
                            }
                        }
                    }
                }
            }
            Resource::Gateway(g) => {
                conflicting_gateways(&mut out, g, &gateways);
            }
            Resource::HttpRoute(r) => {
                route_refs(
                    &mut out,
                    &r.spec.parent_refs,
                    r.spec.rules.iter().map(|x| x.backend_refs.as_slice()),
                    &r.metadata.namespace,
                    &reg,
                    &kube_gateways,
                );
            }
            Resource::GrpcRoute(r) => {
                route_refs(
                    &mut out,
                    &r.spec.parent_refs,
                    r.spec.rules.iter().map(|x| x.backend_refs.as_slice()),
                    &r.metadata.namespace,
                    &reg,
                    &kube_gateways,
                );
            }
            _ => {}
        }
        findings.append(&mut out.findings);
    }
    findings.sort_by(|a, b| {
        (&a.resource, &a.path, a.code, &a.message).cmp(&(&b.resource, &b.path, b.code, &b.message))
    });
    findings
}

fn fmt_labels(labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.join(",")
}

/// `name` / `ns/name` → (ns, name); `mesh` → None.
fn gateway_ref<'a>(g: &'a str, namespace: &'a str) -> Option<(&'a str, &'a str)> {
    if g == "mesh" {
        return None;
    }
    Some(g.split_once('/').unwrap_or((namespace, g)))
}

fn vs_references(
    out: &mut Out<'_>,
    vs: &VirtualServiceSpec,
    ns: &str,
    reg: &Registry<'_>,
    gateways: &BTreeMap<(&str, &str), &Object<GatewaySpec>>,
    subsets: &[(String, BTreeSet<&str>)],
) {
    let check_gateway = |out: &mut Out<'_>, path: String, g: &str| {
        if let Some(key) = gateway_ref(g, ns)
            && !gateways.contains_key(&key)
        {
            out.add(
                FindingCode::ReferencedResourceNotFound,
                path,
                format!("gateway `{}/{}` does not exist", key.0, key.1),
                "create the Gateway, or reference it as `namespace/name` if it lives in another namespace".to_owned(),
            );
        }
    };
    for (i, g) in vs.gateways.iter().enumerate() {
        check_gateway(out, format!("spec.gateways[{i}]"), g);
    }
    for (i, r) in vs.http.iter().enumerate() {
        for (j, m) in r.matches.iter().enumerate() {
            for (k, g) in m.gateways.iter().enumerate() {
                check_gateway(out, format!("spec.http[{i}].match[{j}].gateways[{k}]"), g);
            }
        }
    }
    let check_destination = |out: &mut Out<'_>, path: String, d: &Destination| {
        if d.host.is_empty() {
            return;
        }
        if !reg.knows(&d.host, ns) {
            out.add(
                FindingCode::ReferencedResourceNotFound,
                format!("{path}.host"),
                format!(
                    "host `{}` is not in the service registry",
                    fqdn(&d.host, ns)
                ),
                "declare the service (ServiceEntry or a registered workload) or fix the host name"
                    .to_owned(),
            );
            return;
        }
        if d.subset.is_empty() {
            return;
        }
        let full = fqdn(&d.host, ns);
        let found = subsets
            .iter()
            .any(|(h, names)| host_matches(h, &full) && names.contains(d.subset.as_str()));
        if !found {
            out.add(
                FindingCode::ReferencedResourceNotFound,
                format!("{path}.subset"),
                format!(
                    "subset `{}` of host `{full}` is not defined by any DestinationRule",
                    d.subset
                ),
                format!(
                    "add subset `{}` to the DestinationRule for `{}`, or remove `subset`",
                    d.subset, d.host
                ),
            );
        }
    };
    for (i, r) in vs.http.iter().enumerate() {
        for (k, d) in r.route.iter().enumerate() {
            check_destination(
                out,
                format!("spec.http[{i}].route[{k}].destination"),
                &d.destination,
            );
        }
        if let Some(m) = &r.mirror {
            check_destination(out, format!("spec.http[{i}].mirror"), m);
        }
        for (k, m) in r.mirrors.iter().enumerate() {
            check_destination(
                out,
                format!("spec.http[{i}].mirrors[{k}].destination"),
                &m.destination,
            );
        }
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        for (k, d) in r.route.iter().enumerate() {
            check_destination(
                out,
                format!("spec.tcp[{i}].route[{k}].destination"),
                &d.destination,
            );
        }
    }
    for (i, r) in vs.tls.iter().enumerate() {
        for (k, d) in r.route.iter().enumerate() {
            check_destination(
                out,
                format!("spec.tls[{i}].route[{k}].destination"),
                &d.destination,
            );
        }
    }
}

/// A match entry with no effective condition matches every request.
fn is_catch_all(m: &HttpMatchRequest) -> bool {
    let uri_all = match &m.uri {
        None => true,
        Some(StringMatch {
            exact: None,
            prefix: Some(p),
            regex: None,
        }) => p == "/" || p.is_empty(),
        Some(StringMatch {
            exact: None,
            prefix: None,
            regex: Some(r),
        }) => r == ".*",
        _ => false,
    };
    uri_all
        && m.scheme.is_none()
        && m.method.is_none()
        && m.authority.is_none()
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
        && m.port.is_none()
        && m.source_labels.is_empty()
        && m.gateways.is_empty()
        && m.source_namespace.is_empty()
}

/// Equal conditions (names and stat prefixes do not affect matching).
fn same_conditions(a: &HttpMatchRequest, b: &HttpMatchRequest) -> bool {
    let strip = |m: &HttpMatchRequest| HttpMatchRequest {
        name: String::new(),
        stat_prefix: String::new(),
        ..m.clone()
    };
    strip(a) == strip(b)
}

fn vs_unreachable(out: &mut Out<'_>, vs: &VirtualServiceSpec) {
    let mut catch_all: Option<usize> = None;
    for (i, r) in vs.http.iter().enumerate() {
        if let Some(c) = catch_all {
            out.add(
                FindingCode::VirtualServiceUnreachableRule,
                format!("spec.http[{i}]"),
                format!("rule is never used: spec.http[{c}] before it matches every request"),
                format!("move this rule above spec.http[{c}], or give spec.http[{c}] a match"),
            );
            continue;
        }
        if r.matches.is_empty() || r.matches.iter().any(is_catch_all) {
            catch_all = Some(i);
            continue;
        }
        let dups: Vec<(usize, usize, usize)> = r
            .matches
            .iter()
            .enumerate()
            .filter_map(|(j, m)| {
                vs.http[..i].iter().enumerate().find_map(|(pi, prev)| {
                    prev.matches
                        .iter()
                        .position(|pm| same_conditions(pm, m))
                        .map(|pj| (j, pi, pj))
                })
            })
            .collect();
        if !dups.is_empty() && dups.len() == r.matches.len() {
            out.add(
                FindingCode::VirtualServiceUnreachableRule,
                format!("spec.http[{i}]"),
                "rule is never used: every one of its matches is already taken by an earlier rule"
                    .to_owned(),
                "remove the rule, or make its matches more specific than the earlier ones"
                    .to_owned(),
            );
        } else {
            for (j, pi, pj) in dups {
                out.add(
                    FindingCode::VirtualServiceIneffectiveMatch,
                    format!("spec.http[{i}].match[{j}]"),
                    format!("match never takes effect: it duplicates spec.http[{pi}].match[{pj}]"),
                    "remove the duplicate match".to_owned(),
                );
            }
        }
    }
    let mut catch_all: Option<usize> = None;
    for (i, r) in vs.tcp.iter().enumerate() {
        if let Some(c) = catch_all {
            out.add(
                FindingCode::VirtualServiceUnreachableRule,
                format!("spec.tcp[{i}]"),
                format!("rule is never used: spec.tcp[{c}] before it matches every connection"),
                format!("move this rule above spec.tcp[{c}], or give spec.tcp[{c}] a match"),
            );
        } else if r.matches.is_empty() || r.matches.iter().any(|m| *m == Default::default()) {
            catch_all = Some(i);
        }
    }
}

/// The hosts a gateway server exposes to VirtualServices of `vs_ns`.
fn server_hosts_for<'a>(
    hosts: &'a [String],
    gw_ns: &str,
    vs_ns: &str,
) -> impl Iterator<Item = &'a str> {
    let (gw_ns, vs_ns) = (gw_ns.to_owned(), vs_ns.to_owned());
    hosts.iter().filter_map(move |h| match h.split_once('/') {
        None => Some(h.as_str()),
        Some(("*", host)) => Some(host),
        Some((".", host)) => (gw_ns == vs_ns).then_some(host),
        Some((ns, host)) => (ns == vs_ns).then_some(host),
    })
}

fn vs_gateway_hosts(
    out: &mut Out<'_>,
    vs: &VirtualServiceSpec,
    ns: &str,
    gateways: &BTreeMap<(&str, &str), &Object<GatewaySpec>>,
) {
    for g in &vs.gateways {
        let Some(key) = gateway_ref(g, ns) else {
            continue;
        };
        let Some(gw) = gateways.get(&key) else {
            continue;
        };
        let exposed: Vec<&str> = gw
            .spec
            .servers
            .iter()
            .flat_map(|s| server_hosts_for(&s.hosts, &gw.metadata.namespace, ns))
            .collect();
        for (i, h) in vs.hosts.iter().enumerate() {
            let full = fqdn(h, ns);
            if !exposed
                .iter()
                .any(|e| hosts_intersect(e, h) || hosts_intersect(e, &full))
            {
                out.add(
                    FindingCode::VirtualServiceHostNotFoundInGateway,
                    format!("spec.hosts[{i}]"),
                    format!(
                        "host `{h}` is not served by Gateway {}/{} (its hosts for this namespace: {})",
                        key.0,
                        key.1,
                        if exposed.is_empty() { "none".to_owned() } else { exposed.join(", ") }
                    ),
                    format!("add `{h}` to a server of Gateway {}/{}, or fix the VirtualService host", key.0, key.1),
                );
            }
        }
    }
}

fn conflicting_gateways(
    out: &mut Out<'_>,
    g: &Object<GatewaySpec>,
    gateways: &BTreeMap<(&str, &str), &Object<GatewaySpec>>,
) {
    let me = (g.metadata.namespace.as_str(), g.metadata.name.as_str());
    // Report on the later gateway of each pair (by namespace/name) only.
    for (key, other) in gateways.range(..me) {
        if other.spec.selector != g.spec.selector {
            continue;
        }
        for (i, s) in g.spec.servers.iter().enumerate() {
            let Some(port) = &s.port else { continue };
            let clash: BTreeSet<&str> = other
                .spec
                .servers
                .iter()
                .filter(|o| o.port.as_ref().is_some_and(|p| p.number == port.number))
                .flat_map(|o| o.hosts.iter())
                .filter(|oh| {
                    let oh = oh.split_once('/').map_or(oh.as_str(), |(_, h)| h);
                    s.hosts.iter().any(|h| {
                        let h = h.split_once('/').map_or(h.as_str(), |(_, h)| h);
                        hosts_intersect(h, oh)
                    })
                })
                .map(String::as_str)
                .collect();
            if !clash.is_empty() {
                let hosts: Vec<&str> = clash.into_iter().collect();
                out.add(
                    FindingCode::ConflictingGateways,
                    format!("spec.servers[{i}]"),
                    format!(
                        "conflicts with Gateway {}/{} (selector {}, port {}, hosts {})",
                        key.0,
                        key.1,
                        if g.spec.selector.is_empty() {
                            "<all>".to_owned()
                        } else {
                            fmt_labels(&g.spec.selector)
                        },
                        port.number,
                        hosts.join(", ")
                    ),
                    "merge the two Gateways, or give them different ports, hosts or selectors"
                        .to_owned(),
                );
            }
        }
    }
}

fn route_refs<'a>(
    out: &mut Out<'_>,
    parents: &[ParentReference],
    rules: impl Iterator<Item = &'a [HttpBackendRef]>,
    ns: &str,
    reg: &Registry<'_>,
    kube_gateways: &BTreeSet<(&str, &str)>,
) {
    for (i, p) in parents.iter().enumerate() {
        let is_gateway = p.kind.as_deref().is_none_or(|k| k == "Gateway")
            && p.group
                .as_deref()
                .is_none_or(|g| g == "gateway.networking.k8s.io");
        let pns = p.namespace.as_deref().unwrap_or(ns);
        if is_gateway && !kube_gateways.contains(&(pns, p.name.as_str())) {
            out.add(
                FindingCode::ReferencedResourceNotFound,
                format!("spec.parentRefs[{i}]"),
                format!("Gateway `{pns}/{}` does not exist", p.name),
                "create the Gateway (gateway.networking.k8s.io) or fix parentRefs".to_owned(),
            );
        }
    }
    for (i, refs) in rules.enumerate() {
        for (k, b) in refs.iter().enumerate() {
            let is_service = b.kind.as_deref().is_none_or(|k| k == "Service")
                && b.group.as_deref().is_none_or(str::is_empty);
            if !is_service || b.name.is_empty() {
                continue;
            }
            let bns = b.namespace.as_deref().unwrap_or(ns);
            if !reg.knows(&b.name, bns) {
                out.add(
                    FindingCode::ReferencedResourceNotFound,
                    format!("spec.rules[{i}].backendRefs[{k}]"),
                    format!("service `{}` is not in the service registry", fqdn(&b.name, bns)),
                    "declare the service (ServiceEntry or a registered workload) or fix the backend name".to_owned(),
                );
            }
        }
    }
}
