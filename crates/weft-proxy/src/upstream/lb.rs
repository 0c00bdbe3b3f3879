//! Load-balancing policies: the configuration translated once from an Envoy `Cluster`, and the
//! per-priority pick structures (round-robin schedule, weighted table, hash ring, maglev table)
//! that [`EndpointSet`](super::host::EndpointSet) precomputes when an endpoint update arrives.
//!
//! Everything expensive (schedules, rings, tables) is built here at config time; a pick is a
//! few loads, an atomic increment or a binary search. This module must not allocate, lock or
//! touch protobuf types on the pick path, and it knows nothing about priorities, panic mode or
//! retries: `host.rs` drives it per priority level. The one exception is slow start
//! ([`Ramp`]): while a host of a level is new, weights change with time and picks go through a
//! small locked schedule, for clusters that configure it and only until the window has passed.

use std::cell::RefCell;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    self as cluster_pb, LbConfig as LbConfigPb,
};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use super::hash::KeyHasher;
use super::host::Host;

/// Envoy's default minimum ring size for `RING_HASH`.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// Envoy's default (and absolute) maximum ring size for `RING_HASH`.
pub const DEFAULT_MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Envoy's default maglev table size.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
/// Largest maglev table Envoy accepts.
pub const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;
/// Envoy's default number of random choices for `LEAST_REQUEST`.
pub const DEFAULT_CHOICE_COUNT: u32 = 2;
/// Envoy's default healthy panic threshold (percent).
pub const DEFAULT_HEALTHY_PANIC_THRESHOLD: f64 = 50.0;
/// Envoy's default `slow_start_config.min_weight_percent`.
pub const DEFAULT_SLOW_START_MIN_WEIGHT_PERCENT: f64 = 10.0;

/// Upper bound on a weighted round-robin schedule; weights are scaled down beyond it.
const MAX_RR_SCHEDULE: u64 = 1 << 16;
/// Random samples tried before a linear scan when skipping ejected hosts.
const RANDOM_SKIP_TRIES: u32 = 8;

/// A field of an Envoy resource that Weft cannot honour. The caller adds the resource name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct UnsupportedField {
    /// Field path inside the resource, e.g. `ring_hash_lb_config.hash_function`.
    pub field: String,
    /// Why the value is refused, phrased so an operator knows what to change.
    pub reason: String,
}

impl UnsupportedField {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The load-balancing algorithm of a cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum LbPolicy {
    /// Weighted round robin (EDF-interleaved schedule when weights differ).
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of `choice_count` random choices on active requests.
    LeastRequest {
        /// Number of random candidates compared (>= 2).
        choice_count: u32,
    },
    /// Consistent hashing on a ring (Ketama-like).
    RingHash {
        /// Minimum number of ring points.
        min_ring_size: u64,
        /// Maximum number of ring points.
        max_ring_size: u64,
    },
    /// Google's maglev consistent hashing.
    Maglev {
        /// Lookup table size; must be prime.
        table_size: u64,
    },
}

impl Default for LbPolicy {
    /// Envoy's default, `ROUND_ROBIN`.
    fn default() -> Self {
        Self::RoundRobin
    }
}

impl LbPolicy {
    /// Whether the policy uses the request hash (ring hash, maglev).
    pub fn is_hash_based(&self) -> bool {
        matches!(self, Self::RingHash { .. } | Self::Maglev { .. })
    }
}

/// Slow start (Envoy's `slow_start_config` of a round-robin or least-request cluster): a host
/// that joined less than `window` ago has its weight scaled by
/// `max(min_weight, (age / window) ^ (1 / aggression))`, so traffic to it ramps up.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowStart {
    /// How long a new host ramps up.
    pub window: Duration,
    /// Shape of the ramp: 1 is linear, larger values ramp up faster early on.
    pub aggression: f64,
    /// Floor of the scale factor, as a fraction (Envoy's `min_weight_percent` / 100).
    pub min_weight: f64,
}

impl SlowStart {
    /// The factor a host's weight is scaled by `age` after it joined (1 once past the window);
    /// ages under a millisecond count as one, as in Envoy.
    pub fn factor(&self, age: Duration) -> f64 {
        if age >= self.window {
            return 1.0;
        }
        let t = age.max(Duration::from_millis(1)).as_secs_f64() / self.window.as_secs_f64();
        let f = if self.aggression == 1.0 {
            t
        } else {
            t.powf(1.0 / self.aggression)
        };
        f.max(self.min_weight)
    }
}

/// Load-balancing configuration of one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct LbConfig {
    /// The algorithm.
    pub policy: LbPolicy,
    /// Percent of healthy hosts in a priority below which that priority ignores health
    /// (panic mode); `0.0` disables panic mode.
    pub healthy_panic_threshold: f64,
    /// Slow start of new hosts (round robin and least request only).
    pub slow_start: Option<SlowStart>,
}

impl Default for LbConfig {
    fn default() -> Self {
        Self {
            policy: LbPolicy::default(),
            healthy_panic_threshold: DEFAULT_HEALTHY_PANIC_THRESHOLD,
            slow_start: None,
        }
    }
}

/// Translates the load-balancing part of an Envoy `Cluster`.
///
/// Reads `lb_policy`, `round_robin_lb_config` and `least_request_lb_config` (slow start),
/// `ring_hash_lb_config`, `maglev_lb_config` and `common_lb_config.healthy_panic_threshold`.
/// Policies Weft does not implement, typed `load_balancing_policy`, subset load balancing and
/// non-xxHash rings are refused. Locality-weighted and zone-aware settings and
/// `active_request_bias` are refused before this runs: they are not in `supported.rs`, so the
/// unsupported-field walk names them.
pub fn lb_config_from_cluster(c: &Cluster) -> Result<LbConfig, UnsupportedField> {
    if c.load_balancing_policy.is_some() {
        return Err(UnsupportedField::new(
            "load_balancing_policy",
            "typed load-balancing policies are not supported; use `lb_policy`",
        ));
    }
    if c.lb_subset_config
        .as_ref()
        .is_some_and(|s| !s.subset_selectors.is_empty())
    {
        return Err(UnsupportedField::new(
            "lb_subset_config",
            "subset load balancing is not supported; use one cluster per subset",
        ));
    }

    let mut slow_start = None;
    let policy = match cluster_pb::LbPolicy::try_from(c.lb_policy) {
        Ok(cluster_pb::LbPolicy::RoundRobin) => {
            if let Some(LbConfigPb::RoundRobinLbConfig(rr)) = &c.lb_config {
                slow_start = slow_start_from(
                    "round_robin_lb_config.slow_start_config",
                    rr.slow_start_config.as_ref(),
                )?;
            }
            LbPolicy::RoundRobin
        }
        Ok(cluster_pb::LbPolicy::Random) => LbPolicy::Random,
        Ok(cluster_pb::LbPolicy::LeastRequest) => {
            let choice_count = match &c.lb_config {
                Some(LbConfigPb::LeastRequestLbConfig(lr)) => {
                    slow_start = slow_start_from(
                        "least_request_lb_config.slow_start_config",
                        lr.slow_start_config.as_ref(),
                    )?;
                    lr.choice_count.map_or(DEFAULT_CHOICE_COUNT, |v| v.value)
                }
                _ => DEFAULT_CHOICE_COUNT,
            };
            if choice_count < 2 {
                return Err(UnsupportedField::new(
                    "least_request_lb_config.choice_count",
                    format!("must be at least 2, got {choice_count}"),
                ));
            }
            LbPolicy::LeastRequest { choice_count }
        }
        Ok(cluster_pb::LbPolicy::RingHash) => {
            let (min, max) = match &c.lb_config {
                Some(LbConfigPb::RingHashLbConfig(rh)) => {
                    if rh.hash_function
                        != cluster_pb::ring_hash_lb_config::HashFunction::XxHash as i32
                    {
                        return Err(UnsupportedField::new(
                            "ring_hash_lb_config.hash_function",
                            "only XX_HASH is supported",
                        ));
                    }
                    (
                        rh.minimum_ring_size
                            .map_or(DEFAULT_MIN_RING_SIZE, |v| v.value),
                        rh.maximum_ring_size
                            .map_or(DEFAULT_MAX_RING_SIZE, |v| v.value),
                    )
                }
                _ => (DEFAULT_MIN_RING_SIZE, DEFAULT_MAX_RING_SIZE),
            };
            if min == 0 || min > DEFAULT_MAX_RING_SIZE {
                return Err(UnsupportedField::new(
                    "ring_hash_lb_config.minimum_ring_size",
                    format!("must be between 1 and {DEFAULT_MAX_RING_SIZE}, got {min}"),
                ));
            }
            if max > DEFAULT_MAX_RING_SIZE {
                return Err(UnsupportedField::new(
                    "ring_hash_lb_config.maximum_ring_size",
                    format!("must be at most {DEFAULT_MAX_RING_SIZE}, got {max}"),
                ));
            }
            if min > max {
                return Err(UnsupportedField::new(
                    "ring_hash_lb_config.minimum_ring_size",
                    format!("{min} is larger than maximum_ring_size {max}"),
                ));
            }
            LbPolicy::RingHash {
                min_ring_size: min,
                max_ring_size: max,
            }
        }
        Ok(cluster_pb::LbPolicy::Maglev) => {
            let table_size = match &c.lb_config {
                Some(LbConfigPb::MaglevLbConfig(m)) => {
                    m.table_size.map_or(DEFAULT_MAGLEV_TABLE_SIZE, |v| v.value)
                }
                _ => DEFAULT_MAGLEV_TABLE_SIZE,
            };
            if table_size > MAX_MAGLEV_TABLE_SIZE || !is_prime(table_size) {
                return Err(UnsupportedField::new(
                    "maglev_lb_config.table_size",
                    format!(
                        "must be a prime number no larger than {MAX_MAGLEV_TABLE_SIZE}, got \
                         {table_size}"
                    ),
                ));
            }
            LbPolicy::Maglev { table_size }
        }
        Ok(other) => {
            return Err(UnsupportedField::new(
                "lb_policy",
                format!(
                    "{} is not supported (use ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH or \
                     MAGLEV)",
                    other.as_str_name()
                ),
            ));
        }
        Err(_) => {
            return Err(UnsupportedField::new(
                "lb_policy",
                format!("unknown value {}", c.lb_policy),
            ));
        }
    };

    let mut healthy_panic_threshold = DEFAULT_HEALTHY_PANIC_THRESHOLD;
    if let Some(common) = &c.common_lb_config {
        if let Some(p) = &common.healthy_panic_threshold {
            if !(0.0..=100.0).contains(&p.value) {
                return Err(UnsupportedField::new(
                    "common_lb_config.healthy_panic_threshold",
                    format!("must be a percentage between 0 and 100, got {}", p.value),
                ));
            }
            healthy_panic_threshold = p.value;
        }
        if let Some(ch) = &common.consistent_hashing_lb_config {
            if ch.use_hostname_for_hashing {
                return Err(UnsupportedField::new(
                    "common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing",
                    "hashing on hostnames is not supported; hosts are hashed by address",
                ));
            }
            if ch.hash_balance_factor.is_some() {
                return Err(UnsupportedField::new(
                    "common_lb_config.consistent_hashing_lb_config.hash_balance_factor",
                    "bounded-load consistent hashing is not supported",
                ));
            }
        }
    }

    Ok(LbConfig {
        policy,
        healthy_panic_threshold,
        slow_start,
    })
}

/// Reads a `slow_start_config` (at `field`); `None` when absent or with a zero window, which
/// Envoy takes as slow start off. The aggression's `runtime_key` is not consulted: Weft has no
/// runtime layer, so its `default_value` applies.
fn slow_start_from(
    field: &str,
    c: Option<&cluster_pb::SlowStartConfig>,
) -> Result<Option<SlowStart>, UnsupportedField> {
    let Some(c) = c else { return Ok(None) };
    let window = match &c.slow_start_window {
        Some(d) => duration_from_proto(&format!("{field}.slow_start_window"), d)?,
        None => Duration::ZERO,
    };
    if window.is_zero() {
        return Ok(None);
    }
    let aggression = c.aggression.as_ref().map_or(1.0, |a| a.default_value);
    if !(aggression.is_finite() && aggression > 0.0) {
        return Err(UnsupportedField::new(
            format!("{field}.aggression.default_value"),
            format!("must be greater than 0, got {aggression}"),
        ));
    }
    let min_percent = c
        .min_weight_percent
        .as_ref()
        .map_or(DEFAULT_SLOW_START_MIN_WEIGHT_PERCENT, |p| p.value);
    if !(0.0..=100.0).contains(&min_percent) {
        return Err(UnsupportedField::new(
            format!("{field}.min_weight_percent"),
            format!("must be a percentage between 0 and 100, got {min_percent}"),
        ));
    }
    Ok(Some(SlowStart {
        window,
        aggression,
        min_weight: min_percent / 100.0,
    }))
}

/// Converts a protobuf `Duration`, refusing negative or out-of-range values.
pub(crate) fn duration_from_proto(
    field: &str,
    d: &PbDuration,
) -> Result<Duration, UnsupportedField> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(UnsupportedField::new(
            field,
            format!(
                "must be a non-negative duration, got {}s {}ns",
                d.seconds, d.nanos
            ),
        ));
    }
    // `seconds >= 0` and `0 <= nanos < 1e9` were checked above.
    Ok(Duration::new(
        d.seconds.unsigned_abs(),
        d.nanos.unsigned_abs(),
    ))
}

/// Trial-division primality test (table sizes are at most a few million).
pub(crate) fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u64;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------------------------

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// Fallback state when the thread-local generator is unavailable (thread teardown).
static FALLBACK_RNG: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

/// A fast, non-cryptographic random `u64` from a thread-local `SmallRng`.
pub(crate) fn random_u64() -> u64 {
    RNG.try_with(|r| r.try_borrow_mut().ok().map(|mut r| r.next_u64()))
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            // splitmix64 over a shared counter: never panics, good enough for a fallback.
            let mut z = FALLBACK_RNG
                .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
                .wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
}

/// Uniform value in `0..n` (`n > 0`; returns 0 for `n == 0`), multiply-shift without division.
#[inline]
pub(crate) fn uniform(n: u64) -> u64 {
    ((u128::from(random_u64()) * u128::from(n)) >> 64) as u64
}

#[inline]
fn uniform_index(n: usize) -> usize {
    uniform(n as u64) as usize
}

// ---------------------------------------------------------------------------------------------
// Per-priority pick structures
// ---------------------------------------------------------------------------------------------

/// The precomputed load-balancing state of one priority level's host list.
pub(crate) enum PriorityLb {
    RoundRobin(RoundRobin),
    Random(Weights),
    LeastRequest { weights: Weights, choice_count: u32 },
    Ring(Ring),
    Maglev(Maglev),
}

impl fmt::Debug for PriorityLb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RoundRobin(rr) => f
                .debug_struct("RoundRobin")
                .field("schedule_len", &rr.schedule.as_ref().map(|s| s.len()))
                .finish(),
            Self::Random(_) => f.write_str("Random"),
            Self::LeastRequest { choice_count, .. } => f
                .debug_struct("LeastRequest")
                .field("choice_count", choice_count)
                .finish(),
            Self::Ring(r) => f
                .debug_struct("RingHash")
                .field("points", &r.points.len())
                .finish(),
            Self::Maglev(m) => f
                .debug_struct("Maglev")
                .field("table_size", &m.table.len())
                .finish(),
        }
    }
}

#[inline]
fn usable(host: &Host, skip_ejected: bool) -> bool {
    !skip_ejected || !host.is_ejected()
}

impl PriorityLb {
    /// Builds the structure for `hosts` (non-empty in practice; empty is handled).
    pub(crate) fn build(hosts: &[Arc<Host>], policy: &LbPolicy) -> Self {
        match policy {
            LbPolicy::RoundRobin => Self::RoundRobin(RoundRobin::build(hosts)),
            LbPolicy::Random => Self::Random(Weights::build(hosts)),
            LbPolicy::LeastRequest { choice_count } => Self::LeastRequest {
                weights: Weights::build(hosts),
                choice_count: (*choice_count).max(1),
            },
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
            } => Self::Ring(Ring::build(hosts, *min_ring_size, *max_ring_size)),
            LbPolicy::Maglev { table_size } => Self::Maglev(Maglev::build(hosts, *table_size)),
        }
    }

    /// Picks an index into `hosts`. `attempt` > 0 perturbs hash-based choices like Envoy's
    /// host-selection retries. With `skip_ejected`, ejected hosts are avoided and `None` means
    /// none is usable; without it, `None` only for an empty list.
    pub(crate) fn pick(
        &self,
        hosts: &[Arc<Host>],
        hash: Option<u64>,
        attempt: u32,
        skip_ejected: bool,
    ) -> Option<usize> {
        if hosts.is_empty() {
            return None;
        }
        match self {
            Self::RoundRobin(rr) => rr.pick(hosts, skip_ejected),
            Self::Random(w) => w.pick_skipping(hosts, skip_ejected),
            Self::LeastRequest {
                weights,
                choice_count,
            } => {
                let mut best: Option<usize> = None;
                for _ in 0..*choice_count {
                    let i = weights.sample(hosts.len());
                    let Some(h) = hosts.get(i) else { continue };
                    if !usable(h, skip_ejected) {
                        continue;
                    }
                    best = match best.and_then(|b| hosts.get(b).map(|bh| (b, bh))) {
                        Some((b, bh)) if bh.active_requests() <= h.active_requests() => Some(b),
                        _ => Some(i),
                    };
                }
                best.or_else(|| weights.pick_skipping(hosts, skip_ejected))
            }
            Self::Ring(ring) => ring.pick(
                hosts,
                hash.unwrap_or_else(random_u64),
                attempt,
                skip_ejected,
            ),
            Self::Maglev(m) => m.pick(
                hosts,
                hash.unwrap_or_else(random_u64),
                attempt,
                skip_ejected,
            ),
        }
    }
}

/// Scans `hosts` from a random start for the first usable one.
fn scan_from_random(hosts: &[Arc<Host>], skip_ejected: bool) -> Option<usize> {
    let n = hosts.len();
    let start = uniform_index(n);
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| hosts.get(i).is_some_and(|h| usable(h, skip_ejected)))
}

/// Weighted round robin with an atomic cursor.
pub(crate) struct RoundRobin {
    cursor: AtomicUsize,
    /// `None` when all weights are equal: plain modulo over the host list.
    schedule: Option<Box<[u32]>>,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// An EDF deadline `k / w` of host `idx`, ordered by value then index.
#[derive(PartialEq, Eq)]
struct Deadline {
    k: u64,
    w: u64,
    idx: u32,
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (u128::from(self.k) * u128::from(other.w))
            .cmp(&(u128::from(other.k) * u128::from(self.w)))
            .then(self.idx.cmp(&other.idx))
    }
}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl RoundRobin {
    fn build(hosts: &[Arc<Host>]) -> Self {
        // A random start so that many proxies do not all hit the first host together.
        let cursor = AtomicUsize::new(uniform_index(hosts.len().max(1)));
        let equal = hosts.windows(2).all(|w| w[0].weight == w[1].weight);
        if equal {
            return Self {
                cursor,
                schedule: None,
            };
        }
        let mut weights: Vec<u64> = hosts.iter().map(|h| u64::from(h.weight.max(1))).collect();
        let g = weights.iter().copied().fold(0, gcd).max(1);
        weights.iter_mut().for_each(|w| *w /= g);
        let total: u64 = weights.iter().sum();
        if total > MAX_RR_SCHEDULE {
            // Scale down, keeping every host at least once.
            for w in &mut weights {
                let scaled = u128::from(*w) * u128::from(MAX_RR_SCHEDULE) / u128::from(total);
                *w = u64::try_from(scaled).unwrap_or(MAX_RR_SCHEDULE).max(1);
            }
        }
        let total: u64 = weights.iter().sum();
        // Earliest-deadline-first: host i is due at 1/w_i, 2/w_i, ... Over one cycle of `total`
        // picks each host appears exactly w_i times, spread evenly.
        let mut heap: BinaryHeap<std::cmp::Reverse<Deadline>> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                std::cmp::Reverse(Deadline {
                    k: 1,
                    w,
                    idx: u32::try_from(i).unwrap_or(u32::MAX),
                })
            })
            .collect();
        let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for _ in 0..total {
            let Some(std::cmp::Reverse(d)) = heap.pop() else {
                break;
            };
            schedule.push(d.idx);
            heap.push(std::cmp::Reverse(Deadline { k: d.k + 1, ..d }));
        }
        Self {
            cursor,
            schedule: Some(schedule.into_boxed_slice()),
        }
    }

    #[inline]
    fn pick(&self, hosts: &[Arc<Host>], skip_ejected: bool) -> Option<usize> {
        let len = self.schedule.as_ref().map_or(hosts.len(), |s| s.len());
        if len == 0 {
            return None;
        }
        for _ in 0..len {
            let c = self.cursor.fetch_add(1, Ordering::Relaxed);
            let idx = match &self.schedule {
                Some(s) => s.get(c % len).map_or(0, |&i| i as usize),
                None => c % len,
            };
            if hosts.get(idx).is_some_and(|h| usable(h, skip_ejected)) {
                return Some(idx);
            }
        }
        None
    }
}

/// Weighted sampling table (prefix sums), or uniform when weights are equal.
pub(crate) struct Weights {
    cumulative: Option<Box<[u64]>>,
    total: u64,
}

impl Weights {
    fn build(hosts: &[Arc<Host>]) -> Self {
        let equal = hosts.windows(2).all(|w| w[0].weight == w[1].weight);
        if equal {
            return Self {
                cumulative: None,
                total: hosts.len() as u64,
            };
        }
        let mut acc = 0u64;
        let cumulative: Box<[u64]> = hosts
            .iter()
            .map(|h| {
                acc += u64::from(h.weight.max(1));
                acc
            })
            .collect();
        Self {
            cumulative: Some(cumulative),
            total: acc,
        }
    }

    /// One weighted sample in `0..n` (`n` is the host count).
    #[inline]
    fn sample(&self, n: usize) -> usize {
        match &self.cumulative {
            None => uniform_index(n),
            Some(c) => {
                let r = uniform(self.total);
                c.partition_point(|&x| x <= r).min(n.saturating_sub(1))
            }
        }
    }

    fn pick_skipping(&self, hosts: &[Arc<Host>], skip_ejected: bool) -> Option<usize> {
        for _ in 0..RANDOM_SKIP_TRIES {
            let i = self.sample(hosts.len());
            if hosts.get(i).is_some_and(|h| usable(h, skip_ejected)) {
                return Some(i);
            }
        }
        scan_from_random(hosts, skip_ejected)
    }
}

// ---------------------------------------------------------------------------------------------
// Slow start
// ---------------------------------------------------------------------------------------------

/// A priority level's picks while some of its hosts are within their slow-start window.
///
/// As in Envoy, an earliest-deadline-first schedule where a picked host is queued again with
/// its weight at that moment: its configured weight scaled by its slow-start factor, and for
/// least request divided by its active requests + 1. Once the last host's window has passed,
/// [`pick`](Self::pick) answers `None` for good and the level's precomputed structure takes
/// over. Until then a pick reads the clock and takes this schedule's lock.
pub(crate) struct Ramp {
    cfg: SlowStart,
    least_request: bool,
    /// When the newest host of the level leaves its window.
    until: Instant,
    over: AtomicBool,
    edf: Mutex<Edf>,
}

impl fmt::Debug for Ramp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ramp")
            .field("cfg", &self.cfg)
            .field("until", &self.until)
            .field("over", &self.over.load(Ordering::Relaxed))
            .finish()
    }
}

/// The schedule: virtual time advances to each picked deadline.
struct Edf {
    now: f64,
    seq: u64,
    queue: BinaryHeap<std::cmp::Reverse<Due>>,
}

/// One host's next deadline; ties go to the host queued first.
struct Due {
    at: f64,
    seq: u64,
    idx: u32,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Due {}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.at.total_cmp(&other.at).then(self.seq.cmp(&other.seq))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Edf {
    fn queue(&mut self, idx: usize, weight: f64) {
        self.seq += 1;
        self.queue.push(std::cmp::Reverse(Due {
            at: self.now + 1.0 / weight.max(f64::MIN_POSITIVE),
            seq: self.seq,
            idx: u32::try_from(idx).unwrap_or(u32::MAX),
        }));
    }
}

impl Ramp {
    /// The ramp of a level whose hosts are `hosts`, or `None` when no host of it is within its
    /// window at `now`, the level has a single host, or the policy has no slow start (Envoy
    /// offers it for round robin and least request only).
    pub(crate) fn build(
        hosts: &[Arc<Host>],
        cfg: &SlowStart,
        policy: &LbPolicy,
        now: Instant,
    ) -> Option<Self> {
        let least_request = match policy {
            LbPolicy::RoundRobin => false,
            LbPolicy::LeastRequest { .. } => true,
            _ => return None,
        };
        if hosts.len() < 2 {
            return None;
        }
        let until = hosts.iter().map(|h| h.added + cfg.window).max()?;
        if until <= now {
            return None;
        }
        let ramp = Self {
            cfg: cfg.clone(),
            least_request,
            until,
            over: AtomicBool::new(false),
            edf: Mutex::new(Edf {
                now: 0.0,
                seq: 0,
                queue: BinaryHeap::with_capacity(hosts.len()),
            }),
        };
        {
            let mut edf = ramp.edf.lock().unwrap_or_else(|p| p.into_inner());
            // A random host first, so that proxies updated together do not move in step.
            let start = uniform_index(hosts.len());
            for k in 0..hosts.len() {
                let i = (start + k) % hosts.len();
                if let Some(h) = hosts.get(i) {
                    edf.queue(i, ramp.weight(h, now));
                }
            }
        }
        Some(ramp)
    }

    /// A host's weight at `now`.
    fn weight(&self, host: &Host, now: Instant) -> f64 {
        let mut w = f64::from(host.weight.max(1));
        if self.least_request {
            w /= f64::from(host.active_requests()) + 1.0;
        }
        w * self.cfg.factor(now.saturating_duration_since(host.added))
    }

    /// Whether picks still go through the ramp (one atomic load once it is over).
    #[inline]
    pub(crate) fn running(&self) -> bool {
        !self.over.load(Ordering::Relaxed)
    }

    /// Picks an index into `hosts` (the level's hosts, in the order given to
    /// [`build`](Self::build)); `None` once every host is past its window, or when no host is
    /// usable.
    pub(crate) fn pick(
        &self,
        hosts: &[Arc<Host>],
        skip_ejected: bool,
        now: Instant,
    ) -> Option<usize> {
        if now >= self.until {
            self.over.store(true, Ordering::Relaxed);
            return None;
        }
        let mut edf = self.edf.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..hosts.len() {
            let std::cmp::Reverse(due) = edf.queue.pop()?;
            edf.now = due.at;
            let idx = due.idx as usize;
            let host = hosts.get(idx)?;
            let w = self.weight(host, now);
            edf.queue(idx, w);
            if usable(host, skip_ejected) {
                return Some(idx);
            }
        }
        None
    }
}

/// Hashes a host's address and a counter, as ring points / maglev permutations are keyed.
fn host_key_hasher(host: &Host, seed: u64) -> KeyHasher {
    let mut h = KeyHasher::with_seed(seed);
    // Formatting into a stack buffer avoids allocating per host.
    let mut buf = [0u8; 64];
    let len = {
        use std::io::Write;
        let mut cur = std::io::Cursor::new(&mut buf[..]);
        let _ = write!(cur, "{}", host.addr);
        usize::try_from(cur.position()).unwrap_or(0)
    };
    h.write(buf.get(..len).unwrap_or_default());
    h
}

/// Ketama-style hash ring; points per host proportional to weight.
pub(crate) struct Ring {
    points: Box<[u64]>,
    owners: Box<[u32]>,
}

impl Ring {
    fn build(hosts: &[Arc<Host>], min_ring_size: u64, max_ring_size: u64) -> Self {
        if hosts.is_empty() {
            return Self {
                points: Box::new([]),
                owners: Box::new([]),
            };
        }
        let max_ring = max_ring_size.clamp(1, DEFAULT_MAX_RING_SIZE);
        let min_ring = min_ring_size.clamp(1, max_ring);
        let total: f64 = hosts.iter().map(|h| f64::from(h.weight.max(1))).sum();
        let min_weight = hosts.iter().map(|h| h.weight.max(1)).min().unwrap_or(1);
        // Points per unit of weight: enough for `min_ring` points in total and one point for
        // the lightest host, rounded up to a power of two. Unlike Envoy's exact scaling, this
        // keeps each host's points unchanged when other hosts come and go (unless the cluster
        // size crosses a power of two), so removing a host only remaps that host's keys.
        // The ring ends up between `min_ring` and twice that, capped at `max_ring`.
        let need = (min_ring as f64 / total).max(1.0 / f64::from(min_weight));
        let mut per_weight = 2f64.powi(need.log2().ceil() as i32);
        if total * per_weight > max_ring as f64 {
            per_weight = max_ring as f64 / total;
        }
        let capacity: f64 = hosts
            .iter()
            .map(|h| (f64::from(h.weight.max(1)) * per_weight).round().max(1.0))
            .sum();
        let mut entries: Vec<(u64, u32)> = Vec::with_capacity(capacity as usize);
        for (idx, host) in hosts.iter().enumerate() {
            let base = host_key_hasher(host, 0);
            let points = (f64::from(host.weight.max(1)) * per_weight)
                .round()
                .max(1.0) as u64;
            for i in 0..points {
                let mut h = base;
                h.write(b"_");
                h.write(&i.to_le_bytes());
                entries.push((h.finish(), u32::try_from(idx).unwrap_or(u32::MAX)));
            }
        }
        entries.sort_unstable();
        let (points, owners): (Vec<u64>, Vec<u32>) = entries.into_iter().unzip();
        Self {
            points: points.into_boxed_slice(),
            owners: owners.into_boxed_slice(),
        }
    }

    #[inline]
    fn pick(
        &self,
        hosts: &[Arc<Host>],
        hash: u64,
        attempt: u32,
        skip_ejected: bool,
    ) -> Option<usize> {
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        let first = self.points.partition_point(|&p| p < hash) % len;
        // Like Envoy, a host-selection retry behaves as if the chosen point were not there.
        let start = (first + attempt as usize) % len;
        for k in 0..len {
            let owner = self
                .owners
                .get((start + k) % len)
                .map_or(0, |&o| o as usize);
            if hosts.get(owner).is_some_and(|h| usable(h, skip_ejected)) {
                return Some(owner);
            }
        }
        None
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }
}

/// Maglev lookup table of host indices.
pub(crate) struct Maglev {
    table: Box<[u32]>,
}

const MAGLEV_EMPTY: u32 = u32::MAX;

impl Maglev {
    fn build(hosts: &[Arc<Host>], table_size: u64) -> Self {
        if hosts.is_empty() {
            return Self {
                table: Box::new([]),
            };
        }
        // A non-prime size would leave slots unreachable by the permutations: fall back.
        let m = if table_size <= MAX_MAGLEV_TABLE_SIZE && is_prime(table_size) {
            table_size
        } else {
            DEFAULT_MAGLEV_TABLE_SIZE
        };
        struct Entry {
            offset: u64,
            skip: u64,
            weight: u64,
            target: u64,
            next: u64,
        }
        let mut entries: Vec<Entry> = hosts
            .iter()
            .map(|h| Entry {
                offset: host_key_hasher(h, 0).finish() % m,
                skip: host_key_hasher(h, 1).finish() % (m - 1) + 1,
                weight: u64::from(h.weight.max(1)),
                target: 0,
                next: 0,
            })
            .collect();
        let max_weight = entries.iter().map(|e| e.weight).max().unwrap_or(1);
        let size = usize::try_from(m).unwrap_or(usize::MAX);
        let mut table = vec![MAGLEV_EMPTY; size];
        let mut filled = 0usize;
        let mut iteration = 1u64;
        while filled < size {
            for (idx, e) in entries.iter_mut().enumerate() {
                if filled >= size {
                    break;
                }
                // A host of max weight fills a slot every iteration; one of a third of it,
                // every third iteration (Envoy's weighted maglev).
                if iteration * e.weight < e.target {
                    continue;
                }
                e.target += max_weight;
                // `m` is prime and 1 <= skip < m, so the permutation visits every slot.
                let mut c = (e.offset + e.skip * e.next) % m;
                while table.get(c as usize).is_some_and(|&s| s != MAGLEV_EMPTY) {
                    e.next += 1;
                    c = (e.offset + e.skip * (e.next % m)) % m;
                }
                if let Some(slot) = table.get_mut(c as usize) {
                    *slot = u32::try_from(idx).unwrap_or(0);
                }
                e.next += 1;
                filled += 1;
            }
            iteration += 1;
        }
        Self {
            table: table.into_boxed_slice(),
        }
    }

    #[inline]
    fn pick(
        &self,
        hosts: &[Arc<Host>],
        hash: u64,
        attempt: u32,
        skip_ejected: bool,
    ) -> Option<usize> {
        let len = self.table.len();
        if len == 0 {
            return None;
        }
        // Envoy's retry perturbation: flip many bits so retries spread over hosts.
        let h = if attempt > 0 {
            hash ^ 0u64.wrapping_sub(u64::from(attempt))
        } else {
            hash
        };
        let start = (h % len as u64) as usize;
        for k in 0..len {
            let owner = self.table.get((start + k) % len).map_or(0, |&o| o as usize);
            if hosts.get(owner).is_some_and(|h| usable(h, skip_ejected)) {
                return Some(owner);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::host::Locality;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        CommonLbConfig, LeastRequestLbConfig, MaglevLbConfig, RingHashLbConfig,
    };
    use envoy_types::pb::envoy::r#type::v3::Percent;
    use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};
    use std::collections::HashMap;
    use std::net::SocketAddr;

    fn host(i: u16, weight: u32) -> Arc<Host> {
        let addr: SocketAddr = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 8080));
        Arc::new(Host::new(addr, weight, 0, Locality::default()))
    }

    fn hosts(weights: &[u32]) -> Vec<Arc<Host>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| host(i as u16, w))
            .collect()
    }

    fn counts(
        lb: &PriorityLb,
        hs: &[Arc<Host>],
        n: usize,
        hash: impl Fn(usize) -> Option<u64>,
    ) -> Vec<usize> {
        let mut c = vec![0; hs.len()];
        for k in 0..n {
            let i = lb.pick(hs, hash(k), 0, true).expect("a host");
            c[i] += 1;
        }
        c
    }

    #[test]
    fn round_robin_equal_weights_rotates_exactly() {
        let hs = hosts(&[1, 1, 1]);
        let lb = PriorityLb::build(&hs, &LbPolicy::RoundRobin);
        let seq: Vec<usize> = (0..9)
            .map(|_| lb.pick(&hs, None, 0, true).unwrap())
            .collect();
        for w in seq.windows(2) {
            assert_eq!(w[1], (w[0] + 1) % 3, "sequence {seq:?}");
        }
    }

    #[test]
    fn round_robin_weighted_exact_proportions_and_interleaving() {
        let hs = hosts(&[1, 2, 5]);
        let lb = PriorityLb::build(&hs, &LbPolicy::RoundRobin);
        let c = counts(&lb, &hs, 8 * 100, |_| None);
        assert_eq!(c, vec![100, 200, 500]);
        // Smooth: the heavy host never gets more than 3 picks in a row within a cycle.
        let seq: Vec<usize> = (0..16)
            .map(|_| lb.pick(&hs, None, 0, true).unwrap())
            .collect();
        let max_run = seq.chunk_by(|a, b| a == b).map(|r| r.len()).max().unwrap();
        assert!(max_run <= 3, "{seq:?}");
    }

    #[test]
    fn round_robin_scales_huge_weights() {
        let hs = hosts(&[1_000_000, 3_000_001, 7]);
        let lb = PriorityLb::build(&hs, &LbPolicy::RoundRobin);
        let PriorityLb::RoundRobin(rr) = &lb else {
            panic!()
        };
        let len = rr.schedule.as_ref().unwrap().len() as u64;
        assert!(len <= MAX_RR_SCHEDULE + 3, "{len}");
        let c = counts(&lb, &hs, len as usize, |_| None);
        assert!(c[2] >= 1);
        let ratio = c[1] as f64 / c[0] as f64;
        assert!((ratio - 3.0).abs() < 0.01, "{ratio}");
    }

    #[test]
    fn round_robin_skips_ejected() {
        let hs = hosts(&[1, 1, 1]);
        hs[1]
            .outlier
            .mark_ejected(std::time::Instant::now(), Duration::from_secs(30));
        let lb = PriorityLb::build(&hs, &LbPolicy::RoundRobin);
        let c = counts(&lb, &hs, 100, |_| None);
        assert_eq!(c[1], 0);
        assert_eq!(c[0], 50);
        // Without skipping, the ejected host is used.
        assert!((0..3).any(|_| lb.pick(&hs, None, 0, false) == Some(1)));
    }

    #[test]
    fn random_distribution_follows_weights() {
        let hs = hosts(&[1, 3]);
        let lb = PriorityLb::build(&hs, &LbPolicy::Random);
        let c = counts(&lb, &hs, 40_000, |_| None);
        let share = c[1] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.03, "{c:?}");
        let hs = hosts(&[1, 1, 1, 1]);
        let lb = PriorityLb::build(&hs, &LbPolicy::Random);
        let c = counts(&lb, &hs, 40_000, |_| None);
        assert!(c.iter().all(|&x| (8_000..12_000).contains(&x)), "{c:?}");
    }

    #[test]
    fn least_request_prefers_less_loaded() {
        let hs = hosts(&[1, 1]);
        let _busy: Vec<_> = (0..10).map(|_| hs[0].track_request()).collect();
        let lb = PriorityLb::build(&hs, &LbPolicy::LeastRequest { choice_count: 2 });
        let c = counts(&lb, &hs, 10_000, |_| None);
        // P2C picks host 0 only when both draws are host 0: ~25%.
        assert!(c[1] > 6_500 && c[0] > 1_500, "{c:?}");
        // Equal load: roughly even.
        drop(_busy);
        let c = counts(&lb, &hs, 10_000, |_| None);
        assert!(c[0] > 4_000 && c[1] > 4_000, "{c:?}");
        // Larger choice count with a full view never picks the busy host among 2.
        let _busy: Vec<_> = (0..3).map(|_| hs[0].track_request()).collect();
        let lb = PriorityLb::build(&hs, &LbPolicy::LeastRequest { choice_count: 64 });
        let c = counts(&lb, &hs, 1_000, |_| None);
        assert_eq!(c[0], 0, "{c:?}");
    }

    fn consistency_check(policy: LbPolicy) {
        let hs = hosts(&[1, 1, 1, 1, 1]);
        let lb = PriorityLb::build(&hs, &policy);
        // Same hash, same host.
        for k in 0..100u64 {
            let h = KeyHasher::hash(&k.to_le_bytes());
            let a = lb.pick(&hs, Some(h), 0, true);
            assert_eq!(a, lb.pick(&hs, Some(h), 0, true));
        }
        // Distribution roughly even.
        let n = 20_000;
        let c = counts(&lb, &hs, n, |k| {
            Some(KeyHasher::hash(&(k as u64).to_le_bytes()))
        });
        assert!(
            c.iter().all(|&x| x > n / 5 * 7 / 10 && x < n / 5 * 13 / 10),
            "{c:?}"
        );
        // Removing host 4 only remaps the keys it owned.
        let fewer: Vec<_> = hs[..4].to_vec();
        let lb2 = PriorityLb::build(&fewer, &policy);
        let mut moved = 0;
        for k in 0..n {
            let h = KeyHasher::hash(&(k as u64).to_le_bytes());
            let before = lb.pick(&hs, Some(h), 0, true).unwrap();
            let after = lb2.pick(&fewer, Some(h), 0, true).unwrap();
            if before != after {
                assert_eq!(before, 4, "key {k} moved from a surviving host");
                moved += 1;
            }
        }
        let frac = moved as f64 / n as f64;
        assert!((0.12..0.28).contains(&frac), "moved {frac}");
    }

    #[test]
    fn ring_hash_consistent() {
        consistency_check(LbPolicy::RingHash {
            min_ring_size: 1024,
            max_ring_size: DEFAULT_MAX_RING_SIZE,
        });
    }

    #[test]
    fn maglev_consistent() {
        // Maglev is not perfectly minimal-disruption; allow a little churn on survivors.
        let policy = LbPolicy::Maglev { table_size: 65537 };
        let hs = hosts(&[1, 1, 1, 1, 1]);
        let lb = PriorityLb::build(&hs, &policy);
        let fewer: Vec<_> = hs[..4].to_vec();
        let lb2 = PriorityLb::build(&fewer, &policy);
        let n = 20_000;
        let mut moved_from_survivor = 0;
        let mut c = vec![0usize; 5];
        for k in 0..n {
            let h = KeyHasher::hash(&(k as u64).to_le_bytes());
            let before = lb.pick(&hs, Some(h), 0, true).unwrap();
            assert_eq!(Some(before), lb.pick(&hs, Some(h), 0, true));
            c[before] += 1;
            let after = lb2.pick(&fewer, Some(h), 0, true).unwrap();
            if before != after && before != 4 {
                moved_from_survivor += 1;
            }
        }
        assert!(c.iter().all(|&x| x > 3_000 && x < 5_000), "{c:?}");
        assert!(moved_from_survivor < n / 50, "{moved_from_survivor}");
    }

    #[test]
    fn hash_lbs_follow_weights() {
        for policy in [
            LbPolicy::RingHash {
                min_ring_size: 1024,
                max_ring_size: DEFAULT_MAX_RING_SIZE,
            },
            LbPolicy::Maglev { table_size: 65537 },
        ] {
            let hs = hosts(&[1, 3]);
            let lb = PriorityLb::build(&hs, &policy);
            let n = 20_000;
            let c = counts(&lb, &hs, n, |k| {
                Some(KeyHasher::hash(&(k as u64).to_le_bytes()))
            });
            let share = c[1] as f64 / n as f64;
            assert!((share - 0.75).abs() < 0.05, "{policy:?}: {c:?}");
        }
    }

    #[test]
    fn hash_lbs_skip_ejected_and_keep_others() {
        for policy in [
            LbPolicy::RingHash {
                min_ring_size: 1024,
                max_ring_size: DEFAULT_MAX_RING_SIZE,
            },
            LbPolicy::Maglev { table_size: 65537 },
        ] {
            let hs = hosts(&[1, 1, 1]);
            let lb = PriorityLb::build(&hs, &policy);
            let keys: Vec<u64> = (0..3000u64)
                .map(|k| KeyHasher::hash(&k.to_le_bytes()))
                .collect();
            let before: Vec<usize> = keys
                .iter()
                .map(|&h| lb.pick(&hs, Some(h), 0, true).unwrap())
                .collect();
            hs[0]
                .outlier
                .mark_ejected(std::time::Instant::now(), Duration::from_secs(30));
            let mut spread: HashMap<usize, usize> = HashMap::new();
            for (&h, &b) in keys.iter().zip(&before) {
                let a = lb.pick(&hs, Some(h), 0, true).unwrap();
                assert_ne!(a, 0);
                if b != 0 {
                    assert_eq!(a, b, "a healthy host's key moved");
                } else {
                    *spread.entry(a).or_default() += 1;
                }
            }
            assert_eq!(
                spread.len(),
                2,
                "{policy:?}: ejected keys all went to one host"
            );
            // Retry attempts move away from the first choice for some keys.
            hs[0].outlier.mark_unejected(std::time::Instant::now());
            let moved = keys
                .iter()
                .filter(|&&h| lb.pick(&hs, Some(h), 0, true) != lb.pick(&hs, Some(h), 1, true))
                .count();
            assert!(moved > 300, "{policy:?}: {moved}");
        }
    }

    #[test]
    fn ring_size_bounds_and_weights() {
        let hs = hosts(&[1, 1, 2]);
        let r = Ring::build(&hs, 1024, 8 * 1024 * 1024);
        assert!((1024..=1030).contains(&r.len()), "{}", r.len());
        let r = Ring::build(&hs, 1024, 100);
        assert!(r.len() <= 101, "{}", r.len());
        // Between min and twice min; a surviving host keeps its points.
        let r5 = Ring::build(&hosts(&[1, 1, 1, 1, 1]), 1024, DEFAULT_MAX_RING_SIZE);
        assert_eq!(r5.len(), 5 * 256);
        let r4 = Ring::build(&hosts(&[1, 1, 1, 1]), 1024, DEFAULT_MAX_RING_SIZE);
        assert_eq!(r4.len(), 4 * 256);
        // Lightest host gets a point even with huge weights; the cap holds.
        let r = Ring::build(&hosts(&[1, 4_000_000_000]), 1024, 1 << 20);
        assert!(
            r.owners.contains(&0) && r.len() <= (1 << 20) + 1,
            "{}",
            r.len()
        );
    }

    #[test]
    fn maglev_table_filled_and_weighted() {
        let hs = hosts(&[1, 2]);
        let m = Maglev::build(&hs, 65537);
        assert_eq!(m.table.len(), 65537);
        assert!(m.table.iter().all(|&s| s != MAGLEV_EMPTY));
        let c1 = m.table.iter().filter(|&&s| s == 1).count();
        assert!((c1 as f64 / 65537.0 - 2.0 / 3.0).abs() < 0.01, "{c1}");
        // A non-prime size falls back to the default instead of looping.
        assert_eq!(Maglev::build(&hs, 1000).table.len(), 65537);
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(5_000_011) && is_prime(2) && is_prime(3));
        assert!(!is_prime(1) && !is_prime(65536) && !is_prime(9) && !is_prime(0));
    }

    #[test]
    fn translate_policies() {
        let mut c = Cluster::default();
        assert_eq!(lb_config_from_cluster(&c).unwrap(), LbConfig::default());

        c.lb_policy = cluster_pb::LbPolicy::LeastRequest as i32;
        c.lb_config = Some(LbConfigPb::LeastRequestLbConfig(LeastRequestLbConfig {
            choice_count: Some(UInt32Value { value: 3 }),
            ..Default::default()
        }));
        c.common_lb_config = Some(CommonLbConfig {
            healthy_panic_threshold: Some(Percent { value: 0.0 }),
            ..Default::default()
        });
        let cfg = lb_config_from_cluster(&c).unwrap();
        assert_eq!(cfg.policy, LbPolicy::LeastRequest { choice_count: 3 });
        assert_eq!(cfg.healthy_panic_threshold, 0.0);

        c.lb_config = Some(LbConfigPb::LeastRequestLbConfig(LeastRequestLbConfig {
            choice_count: Some(UInt32Value { value: 1 }),
            ..Default::default()
        }));
        assert_eq!(
            lb_config_from_cluster(&c).unwrap_err().field,
            "least_request_lb_config.choice_count"
        );

        let mut c = Cluster {
            lb_policy: cluster_pb::LbPolicy::RingHash as i32,
            ..Default::default()
        };
        c.lb_config = Some(LbConfigPb::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: 2048 }),
            ..Default::default()
        }));
        assert_eq!(
            lb_config_from_cluster(&c).unwrap().policy,
            LbPolicy::RingHash {
                min_ring_size: 2048,
                max_ring_size: DEFAULT_MAX_RING_SIZE
            }
        );
        c.lb_config = Some(LbConfigPb::RingHashLbConfig(RingHashLbConfig {
            hash_function: cluster_pb::ring_hash_lb_config::HashFunction::MurmurHash2 as i32,
            ..Default::default()
        }));
        let e = lb_config_from_cluster(&c).unwrap_err();
        assert_eq!(e.field, "ring_hash_lb_config.hash_function");
        assert_eq!(
            e.to_string(),
            "field `ring_hash_lb_config.hash_function`: only XX_HASH is supported"
        );

        let mut c = Cluster {
            lb_policy: cluster_pb::LbPolicy::Maglev as i32,
            ..Default::default()
        };
        assert_eq!(
            lb_config_from_cluster(&c).unwrap().policy,
            LbPolicy::Maglev { table_size: 65537 }
        );
        c.lb_config = Some(LbConfigPb::MaglevLbConfig(MaglevLbConfig {
            table_size: Some(UInt64Value { value: 65536 }),
        }));
        assert!(lb_config_from_cluster(&c).is_err());

        let c = Cluster {
            lb_policy: cluster_pb::LbPolicy::ClusterProvided as i32,
            ..Default::default()
        };
        assert_eq!(lb_config_from_cluster(&c).unwrap_err().field, "lb_policy");
        let c = Cluster {
            lb_policy: 42,
            ..Default::default()
        };
        assert_eq!(lb_config_from_cluster(&c).unwrap_err().field, "lb_policy");
        let c = Cluster {
            common_lb_config: Some(CommonLbConfig {
                healthy_panic_threshold: Some(Percent { value: 120.0 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(lb_config_from_cluster(&c).is_err());
    }

    #[test]
    fn durations() {
        let d = duration_from_proto(
            "x",
            &PbDuration {
                seconds: 2,
                nanos: 5,
            },
        )
        .unwrap();
        assert_eq!(d, Duration::new(2, 5));
        assert!(
            duration_from_proto(
                "x",
                &PbDuration {
                    seconds: -1,
                    nanos: 0
                }
            )
            .is_err()
        );
        assert!(
            duration_from_proto(
                "x",
                &PbDuration {
                    seconds: 0,
                    nanos: 2_000_000_000
                }
            )
            .is_err()
        );
    }

    fn ss(window_ms: u64, aggression: f64, min_weight: f64) -> SlowStart {
        SlowStart {
            window: Duration::from_millis(window_ms),
            aggression,
            min_weight,
        }
    }

    #[test]
    fn slow_start_factor_follows_envoy() {
        let s = ss(10_000, 1.0, 0.1);
        let at = |ms| s.factor(Duration::from_millis(ms));
        assert_eq!(at(0), 0.1, "floor at min_weight_percent");
        assert!((at(5_000) - 0.5).abs() < 1e-9);
        assert!((at(9_000) - 0.9).abs() < 1e-9);
        assert_eq!(at(10_000), 1.0);
        assert_eq!(at(60_000), 1.0);
        // Aggression 2: the square root of the time factor.
        let s = ss(10_000, 2.0, 0.1);
        assert!((s.factor(Duration::from_millis(2_500)) - 0.5).abs() < 1e-9);
        // No floor: a host just added counts as 1 ms old.
        let s = ss(10_000, 1.0, 0.0);
        assert!((s.factor(Duration::ZERO) - 0.0001).abs() < 1e-12);
    }

    #[test]
    fn slow_start_config_read_and_checked() {
        use envoy_types::pb::envoy::config::cluster::v3::cluster::{
            RoundRobinLbConfig, SlowStartConfig,
        };
        use envoy_types::pb::envoy::config::core::v3::RuntimeDouble;
        let cfg = |window: i64, aggression: Option<f64>, min: Option<f64>| SlowStartConfig {
            slow_start_window: Some(PbDuration {
                seconds: window,
                nanos: 0,
            }),
            aggression: aggression.map(|a| RuntimeDouble {
                default_value: a,
                runtime_key: "k".into(),
            }),
            min_weight_percent: min.map(|value| Percent { value }),
        };
        let rr = |c: SlowStartConfig| Cluster {
            lb_policy: cluster_pb::LbPolicy::RoundRobin as i32,
            lb_config: Some(LbConfigPb::RoundRobinLbConfig(RoundRobinLbConfig {
                slow_start_config: Some(c),
            })),
            ..Default::default()
        };
        let lr = |c: SlowStartConfig| Cluster {
            lb_policy: cluster_pb::LbPolicy::LeastRequest as i32,
            lb_config: Some(LbConfigPb::LeastRequestLbConfig(LeastRequestLbConfig {
                slow_start_config: Some(c),
                ..Default::default()
            })),
            ..Default::default()
        };
        let got = lb_config_from_cluster(&rr(cfg(30, None, None))).unwrap();
        assert_eq!(got.policy, LbPolicy::RoundRobin);
        assert_eq!(
            got.slow_start,
            Some(ss(30_000, 1.0, 0.1)),
            "Envoy's defaults"
        );
        let got = lb_config_from_cluster(&lr(cfg(5, Some(2.0), Some(25.0)))).unwrap();
        assert_eq!(got.policy, LbPolicy::LeastRequest { choice_count: 2 });
        assert_eq!(got.slow_start, Some(ss(5_000, 2.0, 0.25)));
        // A zero window is slow start off.
        assert_eq!(
            lb_config_from_cluster(&rr(cfg(0, None, None)))
                .unwrap()
                .slow_start,
            None
        );
        let e = lb_config_from_cluster(&rr(cfg(5, Some(0.0), None))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "field `round_robin_lb_config.slow_start_config.aggression.default_value`: must be \
             greater than 0, got 0"
        );
        let e = lb_config_from_cluster(&lr(cfg(5, None, Some(150.0)))).unwrap_err();
        assert_eq!(
            e.field,
            "least_request_lb_config.slow_start_config.min_weight_percent"
        );
        let e = lb_config_from_cluster(&lr(cfg(-5, None, None))).unwrap_err();
        assert_eq!(
            e.field,
            "least_request_lb_config.slow_start_config.slow_start_window"
        );
    }

    /// Hosts with the given weights that joined `ago` before `now`.
    fn joined(now: Instant, spec: &[(u32, Duration)]) -> Vec<Arc<Host>> {
        spec.iter()
            .enumerate()
            .map(|(i, &(w, ago))| {
                let mut h = Host::new(
                    SocketAddr::from(([10, 1, 0, i as u8], 8080)),
                    w,
                    0,
                    Locality::default(),
                );
                h.added = now - ago;
                Arc::new(h)
            })
            .collect()
    }

    fn ramp_counts(ramp: &Ramp, hs: &[Arc<Host>], n: usize, now: Instant) -> Vec<usize> {
        let mut c = vec![0; hs.len()];
        for _ in 0..n {
            c[ramp.pick(hs, true, now).expect("a host")] += 1;
        }
        c
    }

    #[test]
    fn a_new_host_ramps_up_over_the_window() {
        let t0 = Instant::now();
        let old = Duration::from_secs(100);
        let hs = joined(t0, &[(1, old), (1, Duration::ZERO), (1, old)]);
        let cfg = ss(10_000, 1.0, 0.1);
        let ramp = Ramp::build(&hs, &cfg, &LbPolicy::RoundRobin, t0).expect("a host is new");
        // 2 s in: weights 1, 0.2, 1 — the new host gets 0.2 / 2.2 of the picks, in an exact
        // schedule.
        let c = ramp_counts(&ramp, &hs, 2_200, t0 + Duration::from_secs(2));
        assert!((c[1] as i64 - 200).abs() <= 2, "{c:?}");
        assert!(
            (c[0] as i64 - 1_000).abs() <= 2 && (c[2] as i64 - 1_000).abs() <= 2,
            "{c:?}"
        );
        // 8 s in: 0.8 / 2.8.
        let c = ramp_counts(&ramp, &hs, 2_800, t0 + Duration::from_secs(8));
        assert!((c[1] as i64 - 800).abs() <= 3, "{c:?}");
        // Once its window has passed, the ramp hands back to the level's own structure.
        assert!(ramp.running());
        assert_eq!(ramp.pick(&hs, true, t0 + Duration::from_secs(10)), None);
        assert!(!ramp.running());

        // Nothing to ramp: every host past its window, a single host, or a hashing policy.
        let settled = joined(t0, &[(1, old), (1, old)]);
        assert!(Ramp::build(&settled, &cfg, &LbPolicy::RoundRobin, t0).is_none());
        let single = joined(t0, &[(1, Duration::ZERO)]);
        assert!(Ramp::build(&single, &cfg, &LbPolicy::RoundRobin, t0).is_none());
        let ring = LbPolicy::RingHash {
            min_ring_size: 1024,
            max_ring_size: 1024,
        };
        assert!(Ramp::build(&hs, &cfg, &ring, t0).is_none());
    }

    #[test]
    fn ramp_weights_combine_with_weight_aggression_and_active_requests() {
        let t0 = Instant::now();
        let old = Duration::from_secs(100);
        // Weight 3, new, aggression 2, 4 s into a 16 s window: 3 * sqrt(0.25) = 1.5 against 1.
        let hs = joined(t0, &[(1, old), (3, Duration::ZERO)]);
        let ramp = Ramp::build(&hs, &ss(16_000, 2.0, 0.1), &LbPolicy::RoundRobin, t0).unwrap();
        let c = ramp_counts(&ramp, &hs, 2_500, t0 + Duration::from_secs(4));
        assert!((c[1] as i64 - 1_500).abs() <= 2, "{c:?}");
        // Least request divides by active requests + 1: the old host with one request in flight
        // weighs 0.5, like the new host at half its window.
        let hs = joined(t0, &[(1, old), (1, Duration::ZERO)]);
        let _busy = hs[0].track_request();
        let lr = LbPolicy::LeastRequest { choice_count: 2 };
        let ramp = Ramp::build(&hs, &ss(10_000, 1.0, 0.1), &lr, t0).unwrap();
        let c = ramp_counts(&ramp, &hs, 2_000, t0 + Duration::from_secs(5));
        assert!((c[0] as i64 - 1_000).abs() <= 2, "{c:?}");
        // An ejected host is skipped; with every host ejected, nothing is usable.
        hs[1].outlier.mark_ejected(t0, Duration::from_secs(60));
        let c = ramp_counts(&ramp, &hs, 100, t0 + Duration::from_secs(5));
        assert_eq!(c, [100, 0]);
        assert!(ramp.pick(&hs, false, t0 + Duration::from_secs(5)).is_some());
        hs[0].outlier.mark_ejected(t0, Duration::from_secs(60));
        assert_eq!(ramp.pick(&hs, true, t0 + Duration::from_secs(5)), None);
    }
}
