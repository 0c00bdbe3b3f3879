//! Locality-aware load balancing: a cluster's endpoints grouped by locality
//! (`region/zone/sub_zone`), then — per proxy, from the proxy's own locality — priorities for
//! failover and weights for `distribute`, as Istio computes them
//! (`trafficPolicy.loadBalancer.localityLbSetting`: `enabled`, `distribute`, `failover`,
//! `failoverPriority`).
//!
//! Istio's rules: locality LB is on unless `enabled: false`. `distribute` (weights per
//! destination locality for clients in a source locality) applies on its own; failover needs
//! outlier detection (without it a proxy would never leave priority 0, so Istio does nothing).
//! Default failover: same region/zone/sub-zone priority 0, same region and zone 1, same region
//! 2, other regions 3 (4 when a `failover` rule for the proxy's region names another region),
//! renumbered without gaps — so without sub-zones: same zone 0, same region 1, other 2.
//! `failoverPriority` ranks endpoints by how many of the listed labels (in order) they share
//! with the proxy (`label=value` fixes the value); with it, default failover applies only if
//! `failover` is also set.
//!
//! weft-proxy balances over endpoint weights within a priority (no locality-weighted LB), so
//! `distribute` is also folded into the endpoint weights: each locality's traffic share comes
//! out as configured for both kinds of clients. Must not do I/O.

use super::Res;
use crate::model::{Endpoint, ProxyNode};
use serde_json::Value as Json;
use std::collections::BTreeMap;

/// The endpoints of one locality (or one priority slice of it).
#[derive(Debug, Clone)]
pub struct Group<'a> {
    pub locality: &'a str,
    /// (endpoint, load balancing weight).
    pub endpoints: Vec<(&'a Endpoint, u32)>,
    pub priority: u32,
    /// The locality's load balancing weight.
    pub weight: u32,
}

/// Endpoints grouped by locality, in locality order; weights are the endpoints' (at least 1).
pub fn group<'a>(eps: &[&'a Endpoint]) -> Vec<Group<'a>> {
    let mut by: BTreeMap<&str, Vec<(&Endpoint, u32)>> = BTreeMap::new();
    for ep in eps {
        by.entry(ep.locality.as_str())
            .or_default()
            .push((ep, ep.weight.max(1)));
    }
    by.into_iter()
        .map(|(locality, endpoints)| Group {
            locality,
            weight: endpoints
                .iter()
                .fold(0u32, |a, (_, w)| a.saturating_add(*w)),
            endpoints,
            priority: 0,
        })
        .collect()
}

fn parts(l: &str) -> [&str; 3] {
    let mut it = l.splitn(3, '/');
    [
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
    ]
}

/// Istio's `LocalityMatch`: each part of the rule is equal, `*` or absent.
pub fn locality_match(locality: &str, rule: &str) -> bool {
    let (l, r) = (parts(locality), parts(rule));
    l.iter()
        .zip(r.iter())
        .all(|(a, b)| a == b || *b == "*" || b.is_empty())
}

/// Istio's `LbPriority` between the proxy's and an endpoint's locality.
fn lb_priority(proxy: &str, ep: &str) -> u32 {
    let (p, e) = (parts(proxy), parts(ep));
    match (p[0] == e[0], p[1] == e[1], p[2] == e[2]) {
        (true, true, true) => 0,
        (true, true, false) => 1,
        (true, false, _) => 2,
        (false, _, _) => 3,
    }
}

/// What a DestinationRule's locality settings make per-proxy (for [`super::group_key`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct RuleFacts {
    pub distribute: bool,
    pub failover_priority: bool,
    /// Outlier detection somewhere, with locality LB not disabled there: default failover.
    pub failover: bool,
}

/// Every traffic policy of a DestinationRule: top level, subsets, and their port settings.
fn policies(dr: &Res) -> Vec<&Json> {
    let mut out = Vec::new();
    let tops = std::iter::once(dr.spec.get("trafficPolicy")).chain(
        dr.list("subsets")
            .into_iter()
            .map(|s| s.get("trafficPolicy")),
    );
    for tp in tops.flatten() {
        out.push(tp);
        out.extend(
            tp.get("portLevelSettings")
                .and_then(Json::as_array)
                .into_iter()
                .flatten(),
        );
    }
    out
}

pub fn rule_facts(dr: &Res) -> RuleFacts {
    let mut f = RuleFacts::default();
    for p in policies(dr) {
        let lls = p.pointer("/loadBalancer/localityLbSetting");
        if lls.and_then(|l| l.get("enabled")).and_then(Json::as_bool) == Some(false) {
            continue;
        }
        let nonempty = |k: &str| {
            lls.and_then(|l| l.get(k))
                .and_then(Json::as_array)
                .is_some_and(|a| !a.is_empty())
        };
        f.distribute |= nonempty("distribute");
        f.failover_priority |= nonempty("failoverPriority");
        f.failover |= p.get("outlierDetection").is_some();
    }
    f
}

/// A cluster's locality settings as seen by one proxy.
#[derive(Debug)]
pub struct LocalityLb<'a> {
    proxy: &'a ProxyNode,
    /// (from, [(to, weight)]) in the order written.
    distribute: Vec<(&'a str, Vec<(&'a str, u32)>)>,
    failover: Vec<(&'a str, &'a str)>,
    failover_priority: Vec<&'a str>,
    /// Outlier detection is set: failover may apply.
    outlier: bool,
}

impl<'a> LocalityLb<'a> {
    /// None when the policy asks for nothing locality-specific.
    pub fn new(policy: Option<&'a Json>, proxy: &'a ProxyNode) -> Option<LocalityLb<'a>> {
        let policy = policy?;
        let lls = policy.pointer("/loadBalancer/localityLbSetting");
        if lls.and_then(|l| l.get("enabled")).and_then(Json::as_bool) == Some(false) {
            return None;
        }
        let list = |k: &str| -> Vec<&'a Json> {
            lls.and_then(|l| l.get(k))
                .and_then(Json::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default()
        };
        let distribute = list("distribute")
            .into_iter()
            .filter_map(|d| {
                let from = d.get("from").and_then(Json::as_str)?;
                let mut to: Vec<(&str, u32)> = d
                    .get("to")
                    .and_then(Json::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str(), v.as_u64().unwrap_or(0) as u32))
                    .collect();
                // The most specific destinations claim their endpoints first.
                to.sort_by_key(|(k, _)| (k.matches('*').count(), *k));
                Some((from, to))
            })
            .collect();
        let failover = list("failover")
            .into_iter()
            .filter_map(|f| {
                Some((
                    f.get("from").and_then(Json::as_str)?,
                    f.get("to").and_then(Json::as_str)?,
                ))
            })
            .collect();
        let failover_priority = list("failoverPriority")
            .into_iter()
            .filter_map(Json::as_str)
            .collect();
        let lb = LocalityLb {
            proxy,
            distribute,
            failover,
            failover_priority,
            outlier: policy.get("outlierDetection").is_some(),
        };
        (!lb.distribute.is_empty() || lb.outlier).then_some(lb)
    }

    /// Adjusts priorities and weights of `groups` for the proxy.
    pub fn apply(&self, groups: &mut Vec<Group<'a>>) {
        if !self.distribute.is_empty() {
            self.apply_distribute(groups);
            return;
        }
        if !self.outlier {
            return;
        }
        if !self.failover_priority.is_empty() {
            self.apply_failover_priority(groups);
            if self.failover.is_empty() {
                compact(groups);
                return;
            }
        }
        let region = parts(&self.proxy.locality)[0];
        for g in groups.iter_mut() {
            let mut p = lb_priority(&self.proxy.locality, g.locality);
            if p == 3
                && let Some((_, to)) = self.failover.iter().find(|(from, _)| *from == region)
                && parts(g.locality)[0] != *to
            {
                p = 4;
            }
            g.priority = g.priority.saturating_mul(5).saturating_add(p);
        }
        compact(groups);
    }

    fn apply_distribute(&self, groups: &mut [Group<'a>]) {
        let Some((_, to)) = self
            .distribute
            .iter()
            .find(|(from, _)| locality_match(&self.proxy.locality, from))
        else {
            return;
        };
        let mut claimed = vec![false; groups.len()];
        let mut share = vec![0u64; groups.len()];
        for (pattern, weight) in to {
            let idx: Vec<usize> = (0..groups.len())
                .filter(|i| !claimed[*i] && locality_match(groups[*i].locality, pattern))
                .collect();
            let total: u64 = idx.iter().map(|i| u64::from(groups[*i].weight)).sum();
            for i in idx {
                claimed[i] = true;
                if total > 0 {
                    share[i] = (u64::from(groups[i].weight) * u64::from(*weight)).div_ceil(total);
                }
            }
        }
        for (i, g) in groups.iter_mut().enumerate() {
            if !claimed[i] || share[i] == 0 {
                g.endpoints.clear();
                g.weight = 0;
                continue;
            }
            // Fold the locality's share into endpoint weights (x100 keeps the ratios).
            let sum: u64 = g.endpoints.iter().map(|(_, w)| u64::from(*w)).sum();
            for (_, w) in g.endpoints.iter_mut() {
                let scaled = u64::from(*w)
                    .saturating_mul(share[i])
                    .saturating_mul(100)
                    .div_ceil(sum.max(1));
                *w = u32::try_from(scaled.max(1)).unwrap_or(u32::MAX);
            }
            g.weight = u32::try_from(share[i]).unwrap_or(u32::MAX);
        }
    }

    /// Splits each locality by how many of the failover labels its endpoints share with the
    /// proxy: all → 0, the first one differs → n, the k-th differs → n - k.
    fn apply_failover_priority(&self, groups: &mut Vec<Group<'a>>) {
        let proxy_labels = with_topology(&self.proxy.labels, &self.proxy.locality);
        let rules: Vec<(&str, Option<&str>)> = self
            .failover_priority
            .iter()
            .map(|l| match l.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (*l, None),
            })
            .collect();
        let n = rules.len() as u32;
        let mut out = Vec::new();
        for g in groups.drain(..) {
            let mut by: BTreeMap<u32, Vec<(&Endpoint, u32)>> = BTreeMap::new();
            for (ep, w) in g.endpoints {
                let ep_labels = with_topology(&ep.labels, &ep.locality);
                let mut prio = 0;
                for (j, (k, fixed)) in rules.iter().enumerate() {
                    let want = fixed.or_else(|| proxy_labels.get(*k).map(String::as_str));
                    if want != ep_labels.get(*k).map(String::as_str) {
                        prio = n - j as u32;
                        break;
                    }
                }
                by.entry(prio).or_default().push((ep, w));
            }
            for (priority, endpoints) in by {
                out.push(Group {
                    locality: g.locality,
                    weight: endpoints
                        .iter()
                        .fold(0u32, |a, (_, w)| a.saturating_add(*w)),
                    endpoints,
                    priority,
                });
            }
        }
        *groups = out;
    }
}

/// Labels plus the topology labels of `locality` (unless already set), as Kubernetes puts them
/// on nodes — so `failoverPriority` can name them.
fn with_topology(labels: &BTreeMap<String, String>, locality: &str) -> BTreeMap<String, String> {
    let mut l = labels.clone();
    let [r, z, s] = parts(locality);
    for (k, v) in [
        ("topology.kubernetes.io/region", r),
        ("topology.kubernetes.io/zone", z),
        ("topology.istio.io/subzone", s),
    ] {
        if !v.is_empty() {
            l.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
    }
    l
}

/// Renumbers priorities 0..N without gaps, keeping their order.
fn compact(groups: &mut [Group<'_>]) {
    let mut ps: Vec<u32> = groups.iter().map(|g| g.priority).collect();
    ps.sort_unstable();
    ps.dedup();
    for g in groups.iter_mut() {
        g.priority = ps.iter().position(|p| *p == g.priority).unwrap_or(0) as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use super::*;

    fn ep(ip: &str, loc: &str) -> Endpoint {
        Endpoint {
            address: ip.parse().unwrap(),
            ports: BTreeMap::new(),
            labels: [("app".to_string(), "reviews".to_string())].into(),
            locality: loc.into(),
            weight: 1,
            service_account: "default".into(),
            workload: ip.into(),
            namespace: "default".into(),
        }
    }

    fn priorities(out: &Output, cluster: &str) -> BTreeMap<String, (u64, u64)> {
        out.endpoints[cluster]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let loc = &l["locality"];
                (
                    format!(
                        "{}/{}/{}",
                        loc["region"].as_str().unwrap(),
                        loc["zone"].as_str().unwrap(),
                        loc["sub_zone"].as_str().unwrap()
                    ),
                    (
                        l.get("priority").and_then(Json::as_u64).unwrap_or(0),
                        l["lb_endpoints"][0]["load_balancing_weight"]
                            .as_u64()
                            .unwrap(),
                    ),
                )
            })
            .collect()
    }

    fn env_with(dr: Json) -> Env {
        let mut s = svc("reviews.default.svc.cluster.local", "default", 9080, &[]);
        s.endpoints = vec![
            ep("127.0.2.1", "us-east/a/"),
            ep("127.0.2.2", "us-east/b/"),
            ep("127.0.2.3", "eu-west/c/"),
            ep("127.0.2.4", "ap-south/d/"),
        ];
        let mut env = Env {
            services: vec![s],
            destination_rules: vec![res("DestinationRule", "reviews", dr)],
            ..Default::default()
        };
        env.index();
        env
    }

    fn located(loc: &str) -> ProxyNode {
        let mut p = proxy();
        p.locality = loc.into();
        p
    }

    const C: &str = "outbound|9080||reviews.default.svc.cluster.local";

    #[test]
    fn default_failover_with_outlier_detection_only() {
        let env = env_with(
            json!({"host": "reviews", "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 1}}}),
        );
        assert!(env.derived.locality);
        let out = for_proxy(&located("us-east/a/"), &env);
        assert_valid(&out);
        let p = priorities(&out, C);
        assert_eq!(p["us-east/a/"].0, 0);
        assert_eq!(p["us-east/b/"].0, 1);
        assert_eq!(p["eu-west/c/"].0, 2);
        assert_eq!(p["ap-south/d/"].0, 2);
        // Priorities differ per proxy locality, so the group key must too.
        assert_ne!(
            group_key(&located("us-east/a/"), &env),
            group_key(&located("eu-west/c/"), &env)
        );
        // Without outlier detection: no failover, and the key ignores locality.
        let env = env_with(json!({"host": "reviews"}));
        assert!(!env.derived.locality);
        let p = priorities(&for_proxy(&located("us-east/a/"), &env), C);
        assert!(p.values().all(|(prio, _)| *prio == 0));
        assert_eq!(
            group_key(&located("us-east/a/"), &env),
            group_key(&located("eu-west/c/"), &env)
        );
        // enabled: false turns it off.
        let env = env_with(
            json!({"host": "reviews", "trafficPolicy": {"outlierDetection": {}, "loadBalancer": {"localityLbSetting": {"enabled": false}}}}),
        );
        let p = priorities(&for_proxy(&located("us-east/a/"), &env), C);
        assert!(p.values().all(|(prio, _)| *prio == 0));
    }

    #[test]
    fn failover_rule_prefers_the_named_region() {
        let env = env_with(
            json!({"host": "reviews", "trafficPolicy": {"outlierDetection": {},
            "loadBalancer": {"localityLbSetting": {"failover": [{"from": "us-east", "to": "ap-south"}]}}}}),
        );
        let p = priorities(&for_proxy(&located("us-east/a/"), &env), C);
        assert_eq!(p["ap-south/d/"].0, 2);
        assert_eq!(p["eu-west/c/"].0, 3);
    }

    #[test]
    fn distribute_sets_weights_and_drops_unlisted_localities() {
        let env = env_with(
            json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"localityLbSetting": {"distribute": [
            {"from": "us-east/*", "to": {"us-east/a/*": 80, "eu-west/*": 20}}]}}}}),
        );
        let out = for_proxy(&located("us-east/a/"), &env);
        assert_valid(&out);
        let p = priorities(&out, C);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p["us-east/a/"].1, 8000);
        assert_eq!(p["eu-west/c/"].1, 2000);
        let locs = out.endpoints[C]["endpoints"].as_array().unwrap();
        assert_eq!(locs[0]["load_balancing_weight"], 20);
        // A proxy elsewhere is not affected.
        let p = priorities(&for_proxy(&located("ap-south/d/"), &env), C);
        assert_eq!(p.len(), 4);
    }

    #[test]
    fn failover_priority_ranks_by_shared_labels() {
        let mut env = env_with(
            json!({"host": "reviews", "trafficPolicy": {"outlierDetection": {},
            "loadBalancer": {"localityLbSetting": {"failoverPriority": ["topology.kubernetes.io/region", "topology.kubernetes.io/zone"]}}}}),
        );
        env.index();
        assert!(env.derived.labels);
        let p = priorities(&for_proxy(&located("us-east/a/"), &env), C);
        assert_eq!(p["us-east/a/"].0, 0);
        assert_eq!(p["us-east/b/"].0, 1);
        assert_eq!(p["eu-west/c/"].0, 2);
    }

    #[test]
    fn matching_rules() {
        assert!(locality_match("us-east/a/x", "us-east/*"));
        assert!(locality_match("us-east/a/x", "us-east"));
        assert!(!locality_match("us-east/a/x", "us-west/*"));
        assert!(locality_match("us-east/a/x", "*"));
        assert_eq!(lb_priority("r/z/s", "r/z/t"), 1);
    }
}
