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

use super::cache::Prepared;
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
        match watch.update(&req, initial) {
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
        let Some(prepared) = session.current(false) else {
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

/// Marks a name the client was told does not exist.
const ABSENT: &str = "";

/// One type on one stream.
#[derive(Debug, Default)]
struct Watch {
    wildcard: bool,
    /// Explicitly subscribed names.
    names: HashSet<String>,
    /// What the client holds: name → version ([`ABSENT`]: told it does not exist).
    known: HashMap<String, String>,
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

impl Watch {
    fn update(&mut self, req: &DeltaDiscoveryRequest, initial: bool) -> Verdict {
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
                if name != "*" && version != ABSENT {
                    self.known.insert(name.clone(), version.clone());
                }
            }
        }
        for name in &req.resource_names_subscribe {
            self.dirty = true;
            if name == "*" {
                self.wildcard = true;
            } else {
                self.names.insert(name.clone());
                if !initial {
                    // A (re)subscription asks for the resource again.
                    self.known.remove(name);
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
                self.names.remove(name);
                // Under wildcard the resource is still in scope and will be sent again.
                self.known.remove(name);
            }
        }
        if initial && !self.wildcard {
            let names = &self.names;
            self.known.retain(|k, _| names.contains(k));
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
                .filter_map(|name| res.items.get_key_value(name))
        });
        for (name, any) in all.into_iter().flatten().chain(named.into_iter().flatten()) {
            let Some(version) = versions.get(name) else {
                continue;
            };
            if self.known.get(name) != Some(version) {
                if bytes >= CHUNK_BYTES {
                    truncated = true;
                    continue;
                }
                bytes += any.value.len() + name.len();
                resources.push(Resource {
                    name: name.clone(),
                    version: version.clone(),
                    resource: Some(any.clone()),
                    ..Default::default()
                });
                self.known.insert(name.clone(), version.clone());
            }
        }
        let mut removed = Vec::new();
        let names = &self.names;
        self.known.retain(|name, version| {
            if res.items.contains_key(name) {
                return true;
            }
            if version != ABSENT {
                removed.push(name.clone());
            }
            if names.contains(name) {
                ABSENT.clone_into(version);
                true
            } else {
                false
            }
        });
        for name in &self.names {
            if !res.items.contains_key(name) && !self.known.contains_key(name) {
                removed.push(name.clone());
                self.known.insert(name.clone(), ABSENT.to_owned());
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
        w.update(&req(types::CLUSTER, &[], &[], ""), true);
        let p1 = prepared(types::CLUSTER, "1", &[("a", "a"), ("b", "b")]);
        let r = w.respond(types::CLUSTER, &p1, &mut n).unwrap();
        assert_eq!(names(&r), ["a", "b"]);
        assert_eq!(
            w.update(&req(types::CLUSTER, &[], &[], &r.nonce), false),
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
        w.update(&req(types::ENDPOINT, &["a", "zz"], &[], ""), true);
        let r = w.respond(types::ENDPOINT, &p, &mut n).unwrap();
        assert_eq!(names(&r), ["a"]);
        assert_eq!(r.removed_resources, ["zz"], "asked for but absent");
        w.update(&req(types::ENDPOINT, &["b"], &["a"], ""), false);
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
        let have = p.delta_versions(types::LISTENER).unwrap()["a"].clone();
        let mut first = req(types::LISTENER, &["*"], &[], "");
        first.initial_resource_versions.insert("a".into(), have);
        first
            .initial_resource_versions
            .insert("gone".into(), "x".into());
        let mut w = Watch::default();
        let mut n = Nonces::default();
        w.update(&first, true);
        let r = w.respond(types::LISTENER, &p, &mut n).unwrap();
        assert_eq!(names(&r), ["b"]);
        assert_eq!(r.removed_resources, ["gone"]);
    }

    #[test]
    fn first_response_is_sent_even_when_empty() {
        let p = prepared(types::LISTENER, "1", &[]);
        let mut w = Watch::default();
        let mut n = Nonces::default();
        w.update(&req(types::LISTENER, &["*"], &[], ""), true);
        let r = w.respond(types::LISTENER, &p, &mut n).unwrap();
        assert!(r.resources.is_empty() && r.removed_resources.is_empty());
        let p2 = prepared(types::LISTENER, "2", &[]);
        assert!(w.respond(types::LISTENER, &p2, &mut n).is_none());
    }

    #[test]
    fn nack_not_resent_and_stale_still_subscribes() {
        let mut w = Watch::default();
        let mut n = Nonces::default();
        w.update(&req(types::ROUTE, &["r"], &[], ""), true);
        let p = prepared(types::ROUTE, "1", &[("r", "r"), ("s", "s")]);
        let r = w.respond(types::ROUTE, &p, &mut n).unwrap();
        let mut nack = req(types::ROUTE, &[], &[], &r.nonce);
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: "no".into(),
            details: vec![],
        });
        assert_eq!(
            w.update(&nack, false),
            Verdict::Nack("1".into(), "no".into())
        );
        assert!(w.respond(types::ROUTE, &p, &mut n).is_none());
        assert_eq!(
            w.update(&req(types::ROUTE, &["s"], &[], "old"), false),
            Verdict::Stale
        );
        let r = w.respond(types::ROUTE, &p, &mut n).unwrap();
        assert_eq!(names(&r), ["s"]);
    }

    #[test]
    fn wildcard_unsubscribe_keeps_explicit_names() {
        let mut w = Watch::default();
        let mut n = Nonces::default();
        w.update(&req(types::CLUSTER, &["*", "a"], &[], ""), true);
        let p = prepared(types::CLUSTER, "1", &[("a", "a"), ("b", "b")]);
        w.respond(types::CLUSTER, &p, &mut n).unwrap();
        w.update(&req(types::CLUSTER, &[], &["*"], ""), false);
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
        w.update(&req(types::CLUSTER, &[], &[], ""), true);
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
            w.update(&req(types::CLUSTER, &[], &[], &r.nonce), false);
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
