//! Delta (incremental) ADS streams (`DeltaAggregatedResources`).
//!
//! Per type, a stream keeps the client's subscriptions (explicit names, wildcard) and what the
//! client holds (name → version, seeded from `initial_resource_versions` on reconnect). On a
//! request or a snapshot change it sends only the resources whose version (a hash of the encoded
//! `Any`) differs from what the client holds, and `removed_resources` for names that went away
//! or that were explicitly asked for and do not exist.
//!
//! Subscription changes are honoured whatever the nonce (dropping them would lose them for good);
//! only ACK/NACK accounting requires the latest nonce. A NACKed resource is not resent until it
//! changes. It must not send a type the client never subscribed to.

use super::cache::{Prepared, Versions, parse_version, version_text};
use super::{Gone, Nonces, Session, Tx, types};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Default)]
pub(super) struct DeltaStream {
    watches: HashMap<String, Watch>,
    nonces: Nonces,
}

impl super::Variant for DeltaStream {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta ADS";

    fn node(
        req: &DeltaDiscoveryRequest,
    ) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.as_ref()
    }

    fn describe(r: &Self::Resp) -> (&str, &str, usize, usize) {
        (
            &r.type_url,
            &r.system_version_info,
            r.resources.len(),
            r.removed_resources.len(),
        )
    }

    async fn on_request(
        &mut self,
        session: &mut Session,
        req: DeltaDiscoveryRequest,
        tx: &Tx,
    ) -> Result<(), Gone> {
        if req.type_url.is_empty() {
            tracing::warn!(
                node = session.node_id(),
                "delta ADS request without type_url ignored"
            );
            return Ok(());
        }
        let (watch, initial) = match self.watches.get_mut(&req.type_url) {
            Some(watch) => (watch, false),
            None => {
                session.status.subscribed(&req.type_url);
                (self.watches.entry(req.type_url.clone()).or_default(), true)
            }
        };
        let current = session.current(false);
        let versions = current
            .as_ref()
            .and_then(|p| p.delta_versions(&req.type_url));
        match watch.update(&req, initial, versions) {
            Verdict::Stale => tracing::debug!(
                node = session.node_id(),
                type_url = %req.type_url,
                nonce = %req.response_nonce,
                "stale delta ADS nonce (subscriptions applied, ACK ignored)"
            ),
            Verdict::Ack(version) => session.status.acked(&req.type_url, &version),
            Verdict::Nack(version, message) => {
                tracing::warn!(
                    node = session.node_id(),
                    type_url = %req.type_url,
                    %version,
                    %message,
                    "xDS NACK"
                );
                session.status.nacked(&req.type_url, &version, &message);
            }
            Verdict::Request => {}
        }
        let was_truncated = watch.truncated;
        let Some(prepared) = current else {
            return Ok(());
        };
        let response = watch.respond(&req.type_url, &prepared, &mut self.nonces);
        super::send::<Self>(session, response, tx).await?;
        if was_truncated {
            // The chunked type may be complete now: let the types that wait on it follow.
            return self.push_all(session, tx).await;
        }
        Ok(())
    }

    async fn push_all(&mut self, session: &mut Session, tx: &Tx) -> Result<(), Gone> {
        let Some(prepared) = session.current(true) else {
            return Ok(());
        };
        let mut order: Vec<&String> = self.watches.keys().collect();
        order.sort_by(|a, b| (types::push_rank(a), a).cmp(&(types::push_rank(b), b)));
        let order: Vec<String> = order.into_iter().cloned().collect();
        for type_url in order {
            let Some(w) = self.watches.get_mut(&type_url) else {
                continue;
            };
            let response = w.respond(&type_url, &prepared, &mut self.nonces);
            let truncated = w.truncated;
            super::send::<Self>(session, response, tx).await?;
            if truncated {
                // Make before break: later types (that may reference these resources) wait
                // until this one is complete.
                break;
            }
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Request,
    Ack(String),
    /// `(version rejected, message)`.
    Nack(String, String),
    Stale,
}

/// What a client holds of one resource: one of our versions (top bit set, see
/// [`super::cache::resource_version`]) or one of these marks.
type Held = u64;
/// The client was told the resource does not exist.
const ABSENT: Held = 0;
/// The client holds a version that is not one of ours (another server's): it matches nothing.
const FOREIGN: Held = 1;

/// One type on one stream.
///
/// Names are `Arc<str>`s shared with the snapshot's [`Versions`] whenever the resource exists,
/// so what 200 proxies hold of 1,200 clusters costs 200 small maps of pointers and versions,
/// not 240,000 strings.
#[derive(Debug, Default)]
struct Watch {
    wildcard: bool,
    /// Explicitly subscribed names.
    names: HashSet<Arc<str>>,
    /// What the client holds: name → version or mark.
    known: HashMap<Arc<str>, Held>,
    nonce: Option<String>,
    sent_version: Option<String>,
    /// A first response went out (sent even when empty, so the client knows it is in sync).
    responded: bool,
    /// Subscriptions changed since the last diff.
    dirty: bool,
    /// Type version at the last diff: an unchanged version with clean subscriptions skips it.
    diffed_version: Option<String>,
    /// The last response was cut at [`CHUNK_BYTES`]; the rest follows the client's ACK.
    truncated: bool,
    /// A cut response is out and not yet answered: send nothing more of this type until the
    /// client ACKs or NACKs it (one chunk in flight, so a slow client never piles up chunks).
    awaiting: bool,
}

/// Largest payload of one delta response. Bigger updates (a proxy's first full config in a big
/// mesh) go out in chunks, one in flight per type, so a full push to many proxies at once never
/// holds more than a chunk per stream in memory, and a slow client never piles them up.
const CHUNK_BYTES: usize = 64 * 1024;

/// `name` as the snapshot's shared `Arc` if the resource exists, else a copy of its own.
fn intern(name: &str, versions: Option<&Versions>) -> Arc<str> {
    match versions.and_then(|v| v.get_key_value(name)) {
        Some((shared, _)) => shared.clone(),
        None => Arc::from(name),
    }
}

impl Watch {
    /// Applies a request; `versions` (the current snapshot's, if any) only serves to share
    /// the names it mentions.
    fn update(
        &mut self,
        req: &DeltaDiscoveryRequest,
        initial: bool,
        versions: Option<&Versions>,
    ) -> Verdict {
        if !req.response_nonce.is_empty()
            && self.nonce.as_deref() == Some(req.response_nonce.as_str())
        {
            self.awaiting = false;
        }
        let verdict = if req.response_nonce.is_empty() {
            Verdict::Request
        } else if self.nonce.as_deref() == Some(req.response_nonce.as_str()) {
            let version = self.sent_version.clone().unwrap_or_default();
            match &req.error_detail {
                Some(err) => Verdict::Nack(version, err.message.clone()),
                None => Verdict::Ack(version),
            }
        } else {
            Verdict::Stale
        };
        if initial {
            self.dirty = true;
            // Legacy wildcard: a first request that names nothing.
            self.wildcard = req.resource_names_subscribe.is_empty();
            for (name, version) in &req.initial_resource_versions {
                if name != "*" && !version.is_empty() {
                    let held = parse_version(version).unwrap_or(FOREIGN);
                    self.known.insert(intern(name, versions), held);
                }
            }
        }
        for name in &req.resource_names_subscribe {
            self.dirty = true;
            if name == "*" {
                self.wildcard = true;
            } else {
                if !self.names.contains(name.as_str()) {
                    self.names.insert(intern(name, versions));
                }
                if !initial {
                    // A (re)subscription asks for the resource again.
                    self.known.remove(name.as_str());
                }
            }
        }
        for name in &req.resource_names_unsubscribe {
            self.dirty = true;
            if name == "*" {
                self.wildcard = false;
                let names = &self.names;
                self.known.retain(|k, _| names.contains(k));
            } else {
                self.names.remove(name.as_str());
                // Under wildcard the resource is still in scope and will be sent again.
                self.known.remove(name.as_str());
            }
        }
        if initial && !self.wildcard {
            let names = &self.names;
            self.known.retain(|k, _| names.contains(k));
        }
        if self.known.capacity() > 2 * self.known.len() + 16 {
            self.known.shrink_to_fit();
        }
        verdict
    }

    fn respond(
        &mut self,
        type_url: &str,
        prepared: &Arc<Prepared>,
        nonces: &mut Nonces,
    ) -> Option<DeltaDiscoveryResponse> {
        if self.awaiting {
            return None;
        }
        let res = prepared.snapshot.resources.get(type_url)?;
        let versions = prepared.delta_versions(type_url)?;
        if !self.dirty && self.diffed_version.as_deref() == Some(res.version.as_str()) {
            return None;
        }
        let mut resources = Vec::new();
        let mut bytes = 0usize;
        let mut truncated = false;
        let all = self.wildcard.then(|| res.items.iter());
        let named = (!self.wildcard).then(|| {
            self.names
                .iter()
                .filter_map(|name| res.items.get_key_value(&**name))
        });
        for (name, any) in all.into_iter().flatten().chain(named.into_iter().flatten()) {
            let Some((shared, &version)) = versions.get_key_value(name.as_str()) else {
                continue;
            };
            match self.known.get_key_value(name.as_str()) {
                Some((held_name, &held)) if held == version => {
                    // Held under a copy of its own (a version reported before the snapshot
                    // existed): switch to the shared name.
                    if Arc::strong_count(held_name) == 1 && !Arc::ptr_eq(held_name, shared) {
                        self.known.remove(name.as_str());
                        self.known.insert(shared.clone(), version);
                    }
                    continue;
                }
                _ => {}
            }
            if bytes >= CHUNK_BYTES {
                truncated = true;
                continue;
            }
            bytes += any.value.len() + name.len();
            resources.push(Resource {
                name: name.clone(),
                version: version_text(version),
                resource: Some(any.clone()),
                ..Default::default()
            });
            // `insert` keeps an existing key: drop one that is not the shared name first.
            if self
                .known
                .get_key_value(name.as_str())
                .is_some_and(|(held_name, _)| !Arc::ptr_eq(held_name, shared))
            {
                self.known.remove(name.as_str());
            }
            self.known.insert(shared.clone(), version);
        }
        let mut removed = Vec::new();
        let names = &self.names;
        self.known.retain(|name, held| {
            if res.items.contains_key(&**name) {
                return true;
            }
            if *held != ABSENT {
                removed.push(name.to_string());
            }
            if names.contains(name) {
                *held = ABSENT;
                true
            } else {
                false
            }
        });
        for name in &self.names {
            if !res.items.contains_key(&**name) && !self.known.contains_key(name) {
                removed.push(name.to_string());
                self.known.insert(name.clone(), ABSENT);
            }
        }
        // A cut response leaves the diff open so the next call continues it.
        self.dirty = truncated;
        self.truncated = truncated;
        self.awaiting = truncated;
        self.diffed_version = Some(res.version.clone());
        if resources.is_empty() && removed.is_empty() && self.responded {
            return None;
        }
        self.responded = true;
        removed.sort_unstable();
        let nonce = nonces.next();
        self.nonce = Some(nonce.clone());
        self.sent_version = Some(res.version.clone());
        Some(DeltaDiscoveryResponse {
            system_version_info: res.version.clone(),
            resources,
            type_url: type_url.to_owned(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{Snapshot, TypeResources};
    use envoy_types::pb::google::protobuf::Any;
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    fn any(s: &str) -> Any {
        Any {
            type_url: "t".into(),
            value: s.as_bytes().to_vec(),
        }
    }

    fn prepared(type_url: &str, version: &str, items: &[(&str, &str)]) -> Arc<Prepared> {
        let mut res = TypeResources::new(version);
        for (n, v) in items {
            res = res.with(*n, any(v));
        }
        Arc::new(Prepared::new(Arc::new(Snapshot::new().with(type_url, res))))
    }

    fn req(type_url: &str, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
        r.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn wildcard_sends_only_changes_and_removals() {
        let mut w = Watch::default();
        let mut n = Nonces::default();
        w.update(&req(types::CLUSTER, &[], &[], ""), true, None);
        let p1 = prepared(types::CLUSTER, "1", &[("a", "a"), ("b", "b")]);
        let r = w.respond(types::CLUSTER, &p1, &mut n).unwrap();
        assert_eq!(names(&r), ["a", "b"]);
        assert_eq!(
            w.update(&req(types::CLUSTER, &[], &[], &r.nonce), false, None),
            Verdict::Ack("1".into())
        );
        assert!(w.respond(types::CLUSTER, &p1, &mut n).is_none());
        let p2 = prepared(types::CLUSTER, "2", &[("a", "a2"), ("c", "c")]);
        let r2 = w.respond(types::CLUSTER, &p2, &mut n).unwrap();
        assert_eq!(names(&r2), ["a", "c"]);
        assert_eq!(r2.removed_resources, ["b"]);
        assert_eq!(r2.system_version_info, "2");
    }

    #[test]
    fn explicit_subscribe_unsubscribe_and_absent_names() {
        let mut w = Watch::default();
        let mut n = Nonces::default();
        let p = prepared(types::ENDPOINT, "1", &[("a", "a"), ("b", "b")]);
        w.update(&req(types::ENDPOINT, &["a", "zz"], &[], ""), true, None);
        let r = w.respond(types::ENDPOINT, &p, &mut n).unwrap();
        assert_eq!(names(&r), ["a"]);
        assert_eq!(r.removed_resources, ["zz"], "asked for but absent");
        w.update(&req(types::ENDPOINT, &["b"], &["a"], ""), false, None);
        let r = w.respond(types::ENDPOINT, &p, &mut n).unwrap();
        assert_eq!(names(&r), ["b"]);
        assert!(r.removed_resources.is_empty(), "zz was already reported");
        // zz appears: sent.
        let p2 = prepared(types::ENDPOINT, "2", &[("b", "b"), ("zz", "zz")]);
        let r = w.respond(types::ENDPOINT, &p2, &mut n).unwrap();
        assert_eq!(names(&r), ["zz"]);
        // a changed but is no longer subscribed: nothing.
        let p3 = prepared(
            types::ENDPOINT,
            "3",
            &[("a", "a3"), ("b", "b"), ("zz", "zz")],
        );
        assert!(w.respond(types::ENDPOINT, &p3, &mut n).is_none());
    }

    #[test]
    fn initial_versions_skip_what_the_client_has() {
        let p = prepared(types::LISTENER, "1", &[("a", "a"), ("b", "b")]);
        let have = version_text(p.delta_versions(types::LISTENER).unwrap()["a"]);
        let mut first = req(types::LISTENER, &["*"], &[], "");
        first.initial_resource_versions.insert("a".into(), have);
        first
            .initial_resource_versions
            .insert("gone".into(), "x".into());
        let mut w = Watch::default();
        let mut n = Nonces::default();
        w.update(&first, true, None);
        let r = w.respond(types::LISTENER, &p, &mut n).unwrap();
        assert_eq!(names(&r), ["b"]);
        assert_eq!(r.removed_resources, ["gone"]);
    }

    #[test]
    fn foreign_versions_are_resent_and_names_are_shared_with_the_snapshot() {
        let p = prepared(types::CLUSTER, "1", &[("a", "a"), ("b", "b")]);
        let versions = p.delta_versions(types::CLUSTER).unwrap();
        // Reported before any snapshot existed: names of its own, one version not ours.
        let mut first = req(types::CLUSTER, &[], &[], "");
        first
            .initial_resource_versions
            .insert("a".into(), version_text(versions["a"]));
        first
            .initial_resource_versions
            .insert("b".into(), "istiod-v7".into());
        let mut w = Watch::default();
        let mut n = Nonces::default();
        w.update(&first, true, None);
        let r = w.respond(types::CLUSTER, &p, &mut n).unwrap();
        assert_eq!(names(&r), ["b"], "a foreign version matches nothing");
        assert_eq!(r.resources[0].version, version_text(versions["b"]));
        for (name, held) in &w.known {
            let (shared, version) = versions.get_key_value(&**name).unwrap();
            assert!(Arc::ptr_eq(name, shared), "{name} is the snapshot's Arc");
            assert_eq!(held, version);
        }
        // Explicit subscriptions made while a snapshot exists share its names too.
        let mut e = Watch::default();
        e.update(
            &req(types::CLUSTER, &["a", "nope"], &[], ""),
            true,
            Some(versions),
        );
        let a = e.names.get("a").unwrap();
        assert!(Arc::ptr_eq(a, versions.get_key_value("a").unwrap().0));
        let r = e.respond(types::CLUSTER, &p, &mut n).unwrap();
        assert_eq!(names(&r), ["a"]);
        assert_eq!(r.removed_resources, ["nope"]);
        assert_eq!(e.known.get("nope"), Some(&ABSENT));
    }

    #[test]
    fn first_response_is_sent_even_when_empty() {
        let p = prepared(types::LISTENER, "1", &[]);
        let mut w = Watch::default();
        let mut n = Nonces::default();
        w.update(&req(types::LISTENER, &["*"], &[], ""), true, None);
        let r = w.respond(types::LISTENER, &p, &mut n).unwrap();
        assert!(r.resources.is_empty() && r.removed_resources.is_empty());
        let p2 = prepared(types::LISTENER, "2", &[]);
        assert!(w.respond(types::LISTENER, &p2, &mut n).is_none());
    }

    #[test]
    fn nack_not_resent_and_stale_still_subscribes() {
        let mut w = Watch::default();
        let mut n = Nonces::default();
        w.update(&req(types::ROUTE, &["r"], &[], ""), true, None);
        let p = prepared(types::ROUTE, "1", &[("r", "r"), ("s", "s")]);
        let r = w.respond(types::ROUTE, &p, &mut n).unwrap();
        let mut nack = req(types::ROUTE, &[], &[], &r.nonce);
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: "no".into(),
            details: vec![],
        });
        assert_eq!(
            w.update(&nack, false, None),
            Verdict::Nack("1".into(), "no".into())
        );
        assert!(w.respond(types::ROUTE, &p, &mut n).is_none());
        assert_eq!(
            w.update(&req(types::ROUTE, &["s"], &[], "old"), false, None),
            Verdict::Stale
        );
        let r = w.respond(types::ROUTE, &p, &mut n).unwrap();
        assert_eq!(names(&r), ["s"]);
    }

    #[test]
    fn wildcard_unsubscribe_keeps_explicit_names() {
        let mut w = Watch::default();
        let mut n = Nonces::default();
        w.update(&req(types::CLUSTER, &["*", "a"], &[], ""), true, None);
        let p = prepared(types::CLUSTER, "1", &[("a", "a"), ("b", "b")]);
        w.respond(types::CLUSTER, &p, &mut n).unwrap();
        w.update(&req(types::CLUSTER, &[], &["*"], ""), false, None);
        let p2 = prepared(types::CLUSTER, "2", &[("a", "a2"), ("b", "b2")]);
        let r = w.respond(types::CLUSTER, &p2, &mut n).unwrap();
        assert_eq!(names(&r), ["a"]);
    }

    #[test]
    fn big_updates_go_out_in_chunks_one_per_ack() {
        let big = "x".repeat(100 * 1024);
        let items: Vec<(String, String)> = (0..10)
            .map(|i| (format!("r{i}"), format!("{big}{i}")))
            .collect();
        let refs: Vec<(&str, &str)> = items
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let p = prepared(types::CLUSTER, "1", &refs);
        let mut w = Watch::default();
        let mut n = Nonces::default();
        w.update(&req(types::CLUSTER, &[], &[], ""), true, None);
        let mut seen = Vec::new();
        let mut r = w.respond(types::CLUSTER, &p, &mut n).unwrap();
        loop {
            let bytes: usize = r
                .resources
                .iter()
                .map(|x| x.resource.as_ref().unwrap().value.len())
                .sum();
            assert!(bytes <= CHUNK_BYTES + 110 * 1024, "chunk of {bytes} bytes");
            seen.extend(r.resources.iter().map(|x| x.name.clone()));
            w.update(&req(types::CLUSTER, &[], &[], &r.nonce), false, None);
            match w.respond(types::CLUSTER, &p, &mut n) {
                Some(next) => r = next,
                None => break,
            }
        }
        seen.sort();
        assert_eq!(seen.len(), 10, "every resource is sent exactly once");
        seen.dedup();
        assert_eq!(seen.len(), 10);
        assert!(!w.truncated);
    }
}
