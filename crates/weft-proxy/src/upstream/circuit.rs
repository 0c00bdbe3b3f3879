//! Circuit breakers (Envoy's cluster `circuit_breakers`, DEFAULT routing priority): caps on
//! concurrent upstream connections, pending requests, requests and retries, so one slow
//! upstream cannot take all of the proxy's resources.
//!
//! Each cap is an atomic counter; a successful `try_*` returns an RAII [`Guard`] that gives the
//! slot back when dropped, so a request path that errors or is cancelled cannot leak a slot.
//! A failed `try_*` is the overflow (`UO` response flag). This module must not block or queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers as CircuitBreakersPb;
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;

use super::lb::UnsupportedField;

/// The configured caps (Envoy's defaults: 1024, 1024, 1024, 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakerLimits {
    /// Concurrent upstream connections.
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Concurrent requests.
    pub max_requests: u32,
    /// Concurrent retries.
    pub max_retries: u32,
}

impl Default for CircuitBreakerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU32,
    pending: AtomicU32,
    requests: AtomicU32,
    retries: AtomicU32,
}

#[derive(Debug)]
struct Inner {
    limits: CircuitBreakerLimits,
    live: Counters,
}

/// The circuit breakers of one cluster. Cheap to clone (shared counters).
#[derive(Debug, Clone)]
pub struct CircuitBreakers {
    inner: Arc<Inner>,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        Self::new(CircuitBreakerLimits::default())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Connection,
    Pending,
    Request,
    Retry,
}

/// A held slot of one resource; released on drop. `Send + 'static`.
#[derive(Debug)]
#[must_use = "the slot is released as soon as the guard is dropped"]
pub struct Guard {
    inner: Arc<Inner>,
    resource: Resource,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.inner
            .counter(self.resource)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Inner {
    #[inline]
    fn counter(&self, r: Resource) -> &AtomicU32 {
        match r {
            Resource::Connection => &self.live.connections,
            Resource::Pending => &self.live.pending,
            Resource::Request => &self.live.requests,
            Resource::Retry => &self.live.retries,
        }
    }

    #[inline]
    fn limit(&self, r: Resource) -> u32 {
        match r {
            Resource::Connection => self.limits.max_connections,
            Resource::Pending => self.limits.max_pending_requests,
            Resource::Request => self.limits.max_requests,
            Resource::Retry => self.limits.max_retries,
        }
    }
}

impl CircuitBreakers {
    /// Breakers with `limits` and no slot in use.
    pub fn new(limits: CircuitBreakerLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits,
                live: Counters::default(),
            }),
        }
    }

    /// Translates Envoy's `circuit_breakers` (absent → Envoy's defaults); error fields are
    /// relative to the `circuit_breakers` message. Only DEFAULT
    /// priority thresholds are supported; HIGH priority, `retry_budget`,
    /// `max_connection_pools` and `per_host_thresholds` are refused.
    pub fn from_proto(p: Option<&CircuitBreakersPb>) -> Result<CircuitBreakers, UnsupportedField> {
        let mut limits = CircuitBreakerLimits::default();
        let Some(p) = p else {
            return Ok(Self::new(limits));
        };
        if !p.per_host_thresholds.is_empty() {
            return Err(UnsupportedField::new(
                "per_host_thresholds",
                "per-host circuit breakers are not supported",
            ));
        }
        let mut seen_default = false;
        for (i, t) in p.thresholds.iter().enumerate() {
            let field = |sub: &str| format!("thresholds[{i}].{sub}");
            match RoutingPriority::try_from(t.priority) {
                Ok(RoutingPriority::Default) => {}
                Ok(RoutingPriority::High) => {
                    return Err(UnsupportedField::new(
                        field("priority"),
                        "HIGH routing priority thresholds are not supported; use DEFAULT",
                    ));
                }
                Err(_) => {
                    return Err(UnsupportedField::new(
                        field("priority"),
                        format!("unknown routing priority {}", t.priority),
                    ));
                }
            }
            if t.retry_budget.is_some() {
                return Err(UnsupportedField::new(
                    field("retry_budget"),
                    "retry budgets are not supported; use max_retries",
                ));
            }
            if t.max_connection_pools.is_some() {
                return Err(UnsupportedField::new(
                    field("max_connection_pools"),
                    "limiting connection pools is not supported",
                ));
            }
            // Like Envoy, the first DEFAULT entry wins.
            if seen_default {
                continue;
            }
            seen_default = true;
            let d = CircuitBreakerLimits::default();
            limits = CircuitBreakerLimits {
                max_connections: t.max_connections.map_or(d.max_connections, |v| v.value),
                max_pending_requests: t
                    .max_pending_requests
                    .map_or(d.max_pending_requests, |v| v.value),
                max_requests: t.max_requests.map_or(d.max_requests, |v| v.value),
                max_retries: t.max_retries.map_or(d.max_retries, |v| v.value),
            };
        }
        Ok(Self::new(limits))
    }

    #[inline]
    fn try_acquire(&self, r: Resource) -> Option<Guard> {
        let counter = self.inner.counter(r);
        let prev = counter.fetch_add(1, Ordering::Relaxed);
        if prev >= self.inner.limit(r) {
            counter.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Guard {
            inner: Arc::clone(&self.inner),
            resource: r,
        })
    }

    /// A connection slot, or `None` when `max_connections` are open.
    #[inline]
    pub fn try_connection(&self) -> Option<Guard> {
        self.try_acquire(Resource::Connection)
    }

    /// A pending-request slot, or `None` when `max_pending_requests` are waiting.
    #[inline]
    pub fn try_pending(&self) -> Option<Guard> {
        self.try_acquire(Resource::Pending)
    }

    /// A request slot, or `None` when `max_requests` are in flight.
    #[inline]
    pub fn try_request(&self) -> Option<Guard> {
        self.try_acquire(Resource::Request)
    }

    /// A retry slot, or `None` when `max_retries` retries are in flight.
    #[inline]
    pub fn try_retry(&self) -> Option<Guard> {
        self.try_acquire(Resource::Retry)
    }

    /// The configured caps.
    pub fn limits(&self) -> CircuitBreakerLimits {
        self.inner.limits
    }

    /// Open connections counted.
    pub fn connections(&self) -> u32 {
        self.inner.live.connections.load(Ordering::Relaxed)
    }

    /// Pending requests counted.
    pub fn pending_requests(&self) -> u32 {
        self.inner.live.pending.load(Ordering::Relaxed)
    }

    /// In-flight requests counted.
    pub fn requests(&self) -> u32 {
        self.inner.live.requests.load(Ordering::Relaxed)
    }

    /// In-flight retries counted.
    pub fn retries(&self) -> u32 {
        self.inner.live.retries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
    use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn assert_send_static<T: Send + 'static>(_: &T) {}

    #[test]
    fn guards_count_and_release() {
        let cb = CircuitBreakers::new(CircuitBreakerLimits {
            max_connections: 1,
            max_pending_requests: 2,
            max_requests: 2,
            max_retries: 0,
        });
        let r1 = cb.try_request().expect("first");
        assert_send_static(&r1);
        let r2 = cb.try_request().expect("second");
        assert_eq!(cb.requests(), 2);
        assert!(cb.try_request().is_none(), "over the cap");
        assert_eq!(cb.requests(), 2, "a refusal must not leak a slot");
        drop(r1);
        assert_eq!(cb.requests(), 1);
        let r3 = cb.try_request().expect("slot given back");
        assert!(cb.try_retry().is_none(), "max_retries 0");
        let c = cb.try_connection().unwrap();
        assert!(cb.try_connection().is_none());
        let p = cb.try_pending().unwrap();
        assert_eq!(
            (cb.connections(), cb.pending_requests(), cb.retries()),
            (1, 1, 0)
        );
        // Guards outlive a clone of the breakers and work across threads.
        let clone = cb.clone();
        std::thread::spawn(move || drop((r2, r3, c, p)))
            .join()
            .unwrap();
        assert_eq!(
            (
                clone.requests(),
                clone.connections(),
                clone.pending_requests()
            ),
            (0, 0, 0)
        );
    }

    #[test]
    fn from_proto_reads_default_priority() {
        let cb = CircuitBreakers::from_proto(None).unwrap();
        assert_eq!(cb.limits(), CircuitBreakerLimits::default());
        let p = CircuitBreakersPb {
            thresholds: vec![Thresholds {
                max_connections: Some(UInt32Value { value: 10 }),
                max_retries: Some(UInt32Value { value: 7 }),
                track_remaining: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let cb = CircuitBreakers::from_proto(Some(&p)).unwrap();
        assert_eq!(
            cb.limits(),
            CircuitBreakerLimits {
                max_connections: 10,
                max_pending_requests: 1024,
                max_requests: 1024,
                max_retries: 7
            }
        );
        let high = CircuitBreakersPb {
            thresholds: vec![Thresholds {
                priority: RoutingPriority::High as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = CircuitBreakers::from_proto(Some(&high)).unwrap_err();
        assert_eq!(e.field, "thresholds[0].priority");
        let budget = CircuitBreakersPb {
            thresholds: vec![Thresholds {
                retry_budget: Some(RetryBudget::default()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = CircuitBreakers::from_proto(Some(&budget)).unwrap_err();
        assert_eq!(e.field, "thresholds[0].retry_budget");
        let per_host = CircuitBreakersPb {
            per_host_thresholds: vec![Thresholds::default()],
            ..Default::default()
        };
        assert!(CircuitBreakers::from_proto(Some(&per_host)).is_err());
    }
}
