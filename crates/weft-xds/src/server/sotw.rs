//! State-of-the-world ADS streams (`StreamAggregatedResources`), as Envoy and gRPC's proxyless
//! xDS client speak them.
//!
//! Per type, a stream remembers what the client asked for (names, wildcard) and the last
//! response it sent (nonce, version, which names). It answers a request or a snapshot change
//! only when that response would differ from the last one, so an ACK, a NACK or a stale request
//! never triggers a resend of the same version. Requests whose `response_nonce` is not the
//! latest nonce of their type are stale and ignored entirely.
//!
//! Selection rules: LDS/CDS send every item on a wildcard request (empty first request or `*`)
//! and otherwise the requested names that exist, even none (absence means "does not exist" for
//! those types). Other types send the requested names that exist, and nothing when none do.
//! It must not send anything for a type the client has not subscribed to.

use super::cache::{Prepared, TypeResources};
use super::{FNV_OFFSET, Gone, Nonces, Session, Tx, fnv1a, types};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

#[derive(Default)]
pub(super) struct SotwStream {
    watches: HashMap<String, Watch>,
    nonces: Nonces,
}

impl super::Variant for SotwStream {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    const NAME: &'static str = "ADS";

    fn node(req: &DiscoveryRequest) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.as_ref()
    }

    fn describe(r: &Self::Resp) -> (&str, &str, usize, usize) {
        (&r.type_url, &r.version_info, r.resources.len(), 0)
    }

    async fn on_request(
        &mut self,
        session: &mut Session,
        req: DiscoveryRequest,
        tx: &Tx,
    ) -> Result<(), Gone> {
        if req.type_url.is_empty() {
            tracing::warn!(
                node = session.node_id(),
                "ADS request without type_url ignored"
            );
            return Ok(());
        }
        let watch = match self.watches.get_mut(&req.type_url) {
            Some(watch) => watch,
            None => {
                session.status.subscribed(&req.type_url);
                self.watches.entry(req.type_url.clone()).or_default()
            }
        };
        match watch.update(&req) {
            Verdict::Stale => {
                tracing::debug!(
                    node = session.node_id(),
                    type_url = %req.type_url,
                    nonce = %req.response_nonce,
                    "stale ADS request ignored"
                );
                return Ok(());
            }
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
        let Some(prepared) = session.current(false) else {
            return Ok(());
        };
        let response = watch.respond(&req.type_url, &prepared, &mut self.nonces);
        super::send::<Self>(session, response, tx).await
    }

    /// A new snapshot: every subscribed type whose response would change, in push order.
    async fn push_all(&mut self, session: &mut Session, tx: &Tx) -> Result<(), Gone> {
        let Some(prepared) = session.current(true) else {
            return Ok(());
        };
        let mut order: Vec<&String> = self.watches.keys().collect();
        order.sort_by(|a, b| (types::push_rank(a), a).cmp(&(types::push_rank(b), b)));
        let order: Vec<String> = order.into_iter().cloned().collect();
        for type_url in order {
            let response = self
                .watches
                .get_mut(&type_url)
                .and_then(|w| w.respond(&type_url, &prepared, &mut self.nonces));
            super::send::<Self>(session, response, tx).await?;
        }
        Ok(())
    }
}

/// What a request means for the last response of its type.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// No response outstanding: a new or changed subscription.
    Request,
    Ack(String),
    /// `(version rejected, message)`.
    Nack(String, String),
    /// Answers an older response: ignore.
    Stale,
}

/// One type on one stream.
#[derive(Debug, Default)]
struct Watch {
    /// At least one request seen (legacy wildcard is decided by the first one).
    seen: bool,
    legacy_wildcard: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// Nonce and `(version, key of the names sent)` of the last response.
    nonce: Option<String>,
    sent: Option<(String, u64)>,
}

impl Watch {
    fn update(&mut self, req: &DiscoveryRequest) -> Verdict {
        let verdict = match (&self.nonce, &self.sent) {
            (Some(nonce), Some((version, _))) => {
                if req.response_nonce != *nonce {
                    return Verdict::Stale;
                }
                match &req.error_detail {
                    Some(err) => Verdict::Nack(version.clone(), err.message.clone()),
                    None => Verdict::Ack(version.clone()),
                }
            }
            _ => Verdict::Request,
        };
        let names = &req.resource_names;
        if !self.seen {
            self.seen = true;
            self.legacy_wildcard = types::is_full_state(&req.type_url) && names.is_empty();
        } else if !names.is_empty() {
            // Once a client names resources, only an explicit `*` means wildcard again.
            self.legacy_wildcard = false;
        }
        self.wildcard = self.legacy_wildcard || names.iter().any(|n| n == "*");
        let explicit = names.iter().filter(|n| *n != "*");
        let same = explicit.clone().count() == self.names.len()
            && explicit.clone().all(|n| self.names.contains(n));
        if !same {
            self.names = explicit.cloned().collect();
        }
        verdict
    }

    /// The items this watch selects from `res`, in name order.
    fn select<'a>(&'a self, res: &'a TypeResources) -> impl Iterator<Item = (&'a String, &'a Any)> {
        let all = self.wildcard.then(|| res.items.iter());
        let named = (!self.wildcard).then(|| {
            self.names
                .iter()
                .filter_map(|name| res.items.get_key_value(name))
        });
        all.into_iter().flatten().chain(named.into_iter().flatten())
    }

    /// The response to send now, if it differs from the last one sent.
    fn respond(
        &mut self,
        type_url: &str,
        prepared: &Arc<Prepared>,
        nonces: &mut Nonces,
    ) -> Option<DiscoveryResponse> {
        let res = prepared.snapshot.resources.get(type_url)?;
        if !self.wildcard && self.names.is_empty() {
            return None;
        }
        let mut key = FNV_OFFSET;
        let mut count = 0usize;
        for (name, _) in self.select(res) {
            key = fnv1a(fnv1a(key, name.as_bytes()), &[0xff]);
            count += 1;
        }
        if count == 0 && !types::is_full_state(type_url) {
            return None;
        }
        if self
            .sent
            .as_ref()
            .is_some_and(|(version, k)| *version == res.version && *k == key)
        {
            return None;
        }
        let resources = self.select(res).map(|(_, any)| any.clone()).collect();
        let nonce = nonces.next();
        self.nonce = Some(nonce.clone());
        self.sent = Some((res.version.clone(), key));
        Some(DiscoveryResponse {
            version_info: res.version.clone(),
            resources,
            type_url: type_url.to_owned(),
            nonce,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{Snapshot, TypeResources};
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    fn any(s: &str) -> Any {
        Any {
            type_url: "t".into(),
            value: s.as_bytes().to_vec(),
        }
    }

    fn prepared(type_url: &str, version: &str, names: &[&str]) -> Arc<Prepared> {
        let mut res = TypeResources::new(version);
        for n in names {
            res = res.with(*n, any(n));
        }
        Arc::new(Prepared::new(Arc::new(Snapshot::new().with(type_url, res))))
    }

    fn req(type_url: &str, names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    #[test]
    fn lds_wildcard_then_ack_then_change() {
        let mut w = Watch::default();
        let mut n = Nonces::default();
        assert_eq!(w.update(&req(types::LISTENER, &[], "")), Verdict::Request);
        let p1 = prepared(types::LISTENER, "1", &["a", "b"]);
        let r = w.respond(types::LISTENER, &p1, &mut n).unwrap();
        assert_eq!(r.resources.len(), 2);
        assert_eq!(
            w.update(&req(types::LISTENER, &[], &r.nonce)),
            Verdict::Ack("1".into())
        );
        assert!(
            w.wildcard,
            "empty names after an empty first request stay wildcard"
        );
        assert!(w.respond(types::LISTENER, &p1, &mut n).is_none());
        let p2 = prepared(types::LISTENER, "2", &["a"]);
        let r2 = w.respond(types::LISTENER, &p2, &mut n).unwrap();
        assert_eq!(r2.version_info, "2");
        assert_eq!(r2.resources.len(), 1);
        assert_ne!(r2.nonce, r.nonce);
    }

    #[test]
    fn named_lds_does_not_become_wildcard_and_reports_absence() {
        let mut w = Watch::default();
        let mut n = Nonces::default();
        w.update(&req(types::LISTENER, &["x:80"], ""));
        let p = prepared(types::LISTENER, "1", &["a"]);
        let r = w.respond(types::LISTENER, &p, &mut n).unwrap();
        assert!(
            r.resources.is_empty(),
            "LDS by name: empty means does-not-exist"
        );
        w.update(&req(types::LISTENER, &[], &r.nonce));
        assert!(!w.wildcard);
        assert!(
            w.respond(types::LISTENER, &p, &mut n).is_none(),
            "unsubscribed"
        );
        w.update(&req(types::LISTENER, &["*"], &r.nonce));
        assert!(w.wildcard);
    }

    #[test]
    fn eds_by_name_only_existing_and_nothing_when_none() {
        let mut w = Watch::default();
        let mut n = Nonces::default();
        w.update(&req(types::ENDPOINT, &["zz"], ""));
        let p = prepared(types::ENDPOINT, "1", &["a", "b"]);
        assert!(w.respond(types::ENDPOINT, &p, &mut n).is_none());
        w.update(&req(types::ENDPOINT, &["zz", "b"], ""));
        let r = w.respond(types::ENDPOINT, &p, &mut n).unwrap();
        assert_eq!(r.resources, vec![any("b")]);
        // Empty first request for a non-full-state type is not a wildcard.
        let mut w2 = Watch::default();
        w2.update(&req(types::ROUTE, &[], ""));
        assert!(
            w2.respond(types::ROUTE, &prepared(types::ROUTE, "1", &["r"]), &mut n)
                .is_none()
        );
    }

    #[test]
    fn nack_does_not_resend_and_stale_is_ignored() {
        let mut w = Watch::default();
        let mut n = Nonces::default();
        w.update(&req(types::CLUSTER, &[], ""));
        let p = prepared(types::CLUSTER, "1", &["c"]);
        let r = w.respond(types::CLUSTER, &p, &mut n).unwrap();
        let mut nack = req(types::CLUSTER, &[], &r.nonce);
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: "bad".into(),
            details: vec![],
        });
        assert_eq!(w.update(&nack), Verdict::Nack("1".into(), "bad".into()));
        assert!(w.respond(types::CLUSTER, &p, &mut n).is_none());
        assert_eq!(
            w.update(&req(types::CLUSTER, &["other"], "old")),
            Verdict::Stale
        );
        assert!(w.wildcard, "a stale request changes nothing");
        assert!(w.names.is_empty());
    }

    #[test]
    fn name_change_with_same_version_resends() {
        let mut w = Watch::default();
        let mut n = Nonces::default();
        w.update(&req(types::ENDPOINT, &["a"], ""));
        let p = prepared(types::ENDPOINT, "1", &["a", "b"]);
        let r = w.respond(types::ENDPOINT, &p, &mut n).unwrap();
        w.update(&req(types::ENDPOINT, &["a", "b"], &r.nonce));
        let r2 = w.respond(types::ENDPOINT, &p, &mut n).unwrap();
        assert_eq!(r2.resources.len(), 2);
        assert!(w.respond(types::ENDPOINT, &p, &mut n).is_none());
        // A snapshot without the type: nothing (not known yet).
        let other = prepared(types::LISTENER, "1", &[]);
        assert!(w.respond(types::ENDPOINT, &other, &mut n).is_none());
    }
}
