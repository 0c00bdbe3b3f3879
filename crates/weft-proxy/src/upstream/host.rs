//! Upstream hosts and the immutable per-update snapshot of a cluster's endpoints
//! ([`EndpointSet`]), which is what a request picks its host from.
//!
//! Priorities and health follow Envoy: a host is unhealthy while outlier-ejected; each
//! priority's health is `min(100, 1.4 * 100 * healthy / total)`, load goes to P0 first and
//! spills to later priorities; a priority whose healthy share is below the panic threshold
//! uses all its hosts. That per-priority state is cached per health epoch (it changes only
//! when some host is ejected or returned), so a steady-state pick is: one epoch load, one
//! snapshot load, one load-balancer step. This module must not do I/O, hold locks on the pick
//! path, or mutate hosts' health (that is `outlier.rs`'s job).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;

use super::lb::{LbConfig, PriorityLb, Ramp, random_u64, uniform};
use super::outlier::{OutlierState, health_epoch};

/// Envoy's overprovisioning factor, in percent.
const OVERPROVISIONING_PERCENT: u64 = 140;
/// Random picks [`EndpointSet::pick`] makes before scanning for an untried host, unless the
/// retry policy's `host_selection_retry_max_attempts` sets [`LbContext::max_picks`].
pub const HOST_SELECTION_MAX_ATTEMPTS: u32 = 5;

/// Where a host runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

/// One upstream endpoint. Shared (`Arc`) between endpoint sets so that its counters and
/// outlier state survive endpoint updates.
#[derive(Debug)]
pub struct Host {
    pub addr: SocketAddr,
    pub hostname: Option<String>,
    /// Load-balancing weight, at least 1.
    pub weight: u32,
    /// Priority level (0 is the most preferred).
    pub priority: u32,
    pub locality: Locality,
    /// When the host joined its cluster (kept across endpoint updates): where its slow start
    /// counts from.
    pub added: Instant,
    pub(crate) active_rq: AtomicU32,
    pub outlier: OutlierState,
}

impl Host {
    /// A host; `weight` 0 is raised to 1.
    pub fn new(addr: SocketAddr, weight: u32, priority: u32, locality: Locality) -> Self {
        Self {
            addr,
            hostname: None,
            weight: weight.max(1),
            priority,
            locality,
            added: Instant::now(),
            active_rq: AtomicU32::new(0),
            outlier: OutlierState::default(),
        }
    }

    /// Sets the hostname (for logs, SNI defaults, admin output).
    pub fn with_hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into());
        self
    }

    /// Requests currently in flight to this host.
    #[inline]
    pub fn active_requests(&self) -> u32 {
        self.active_rq.load(Ordering::Relaxed)
    }

    /// Counts one in-flight request until the returned guard is dropped.
    #[inline]
    pub fn track_request(self: &Arc<Self>) -> ActiveRequest {
        self.active_rq.fetch_add(1, Ordering::Relaxed);
        ActiveRequest {
            host: Arc::clone(self),
        }
    }

    /// Whether outlier detection currently ejects this host. A host returns to service on the
    /// detector's sweep after its ejection time, as in Envoy.
    #[inline]
    pub fn is_ejected(&self) -> bool {
        self.outlier.is_ejected()
    }
}

/// An in-flight request on a host (see [`Host::track_request`]); `Send + 'static`.
#[derive(Debug)]
#[must_use = "the request stops being counted when the guard is dropped"]
pub struct ActiveRequest {
    host: Arc<Host>,
}

impl ActiveRequest {
    /// The host the request is on.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.host.active_rq.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the load balancer needs to know about a request.
#[derive(Debug, Clone, Copy, Default)]
pub struct LbContext<'a> {
    /// Request hash from the route's hash policies (ring hash / maglev).
    pub hash: Option<u64>,
    /// Hosts this request already tried (retry `previous_hosts` predicate).
    pub excluded: &'a [Arc<Host>],
    /// Envoy's bounded search (`host_selection_retry_max_attempts`): at most this many picks
    /// while the picked host was already tried, then the last one picked. None: weft's search,
    /// which finds an untried healthy host whenever one exists.
    pub max_picks: Option<u32>,
}

/// The hosts of one priority level and their load-balancing structure.
#[derive(Debug)]
struct Level {
    priority: u32,
    hosts: Box<[Arc<Host>]>,
    lb: PriorityLb,
    /// Picks while some host of the level is within its slow-start window.
    ramp: Option<Box<Ramp>>,
}

/// Per-priority load and panic state for one health epoch.
#[derive(Debug)]
struct HealthState {
    epoch: u64,
    /// Cumulative load percentages; the last is 100.
    load_cum: Box<[u32]>,
    panic: Box<[bool]>,
}

/// The health state a pick needs: a single level only needs its panic bit.
#[derive(Debug, Clone, Copy)]
enum HealthView<'a> {
    Single { panic: bool },
    Multi(&'a HealthState),
}

impl HealthView<'_> {
    #[inline]
    fn panic(self, level: usize) -> bool {
        match self {
            Self::Single { panic } => panic,
            Self::Multi(h) => h.panic.get(level).copied().unwrap_or(true),
        }
    }

    /// The level receiving a request whose priority draw is `r` in `1..=100`.
    #[inline]
    fn level_for(self, r: u32) -> usize {
        match self {
            Self::Single { .. } => 0,
            Self::Multi(h) => h.load_cum.iter().position(|&c| r <= c).unwrap_or(0),
        }
    }
}

/// An immutable snapshot of a cluster's endpoints with precomputed load-balancing structures.
/// Build one per endpoint update; picking is cheap and lock-free. Cloning is cheap and shares
/// everything (round-robin cursor included).
#[derive(Debug, Clone)]
pub struct EndpointSet {
    inner: Arc<SetInner>,
}

#[derive(Debug)]
struct SetInner {
    hosts: Vec<Arc<Host>>,
    levels: Box<[Level]>,
    hash_based: bool,
    panic_threshold: f64,
    health: ArcSwap<HealthState>,
    /// Single-level fast path: `(epoch << 1) | panic`, avoiding the `ArcSwap` load.
    single: AtomicU64,
}

impl EndpointSet {
    /// Groups `hosts` by priority and precomputes each level's schedule, ring or table.
    pub fn new(hosts: Vec<Arc<Host>>, lb: &LbConfig) -> EndpointSet {
        let mut priorities: Vec<u32> = hosts.iter().map(|h| h.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let now = Instant::now();
        let levels: Box<[Level]> = priorities
            .into_iter()
            .map(|p| {
                let level_hosts: Box<[Arc<Host>]> =
                    hosts.iter().filter(|h| h.priority == p).cloned().collect();
                let ramp = lb
                    .slow_start
                    .as_ref()
                    .and_then(|s| Ramp::build(&level_hosts, s, &lb.policy, now))
                    .map(Box::new);
                let lb = PriorityLb::build(&level_hosts, &lb.policy);
                Level {
                    priority: p,
                    hosts: level_hosts,
                    lb,
                    ramp,
                }
            })
            .collect();
        let panic_threshold = if lb.healthy_panic_threshold.is_finite() {
            lb.healthy_panic_threshold.clamp(0.0, 100.0)
        } else {
            crate::upstream::lb::DEFAULT_HEALTHY_PANIC_THRESHOLD
        };
        let epoch = health_epoch();
        let health = compute_health(&levels, panic_threshold, epoch);
        let single = (epoch << 1) | u64::from(health.panic.first().copied().unwrap_or(false));
        EndpointSet {
            inner: Arc::new(SetInner {
                hosts,
                levels,
                hash_based: lb.policy.is_hash_based(),
                panic_threshold,
                health: ArcSwap::from_pointee(health),
                single: AtomicU64::new(single),
            }),
        }
    }

    /// All hosts, in the order given to [`new`](Self::new).
    pub fn hosts(&self) -> &[Arc<Host>] {
        &self.inner.hosts
    }

    /// Whether the set has no host.
    pub fn is_empty(&self) -> bool {
        self.inner.hosts.is_empty()
    }

    /// The distinct priority levels, most preferred first.
    pub fn priorities(&self) -> impl Iterator<Item = u32> + '_ {
        self.inner.levels.iter().map(|l| l.priority)
    }

    /// Current load percentage per priority level (same order as
    /// [`priorities`](Self::priorities)), and whether each is in panic mode.
    pub fn priority_load(&self) -> Vec<(u32, bool)> {
        self.with_health(|h| {
            let mut prev = 0;
            h.load_cum
                .iter()
                .zip(h.panic.iter())
                .map(|(&c, &p)| {
                    let l = c - prev;
                    prev = c;
                    (l, p)
                })
                .collect()
        })
    }

    /// Picks a host for a request. Hosts in `ctx.excluded` are avoided when any other healthy
    /// host exists; `None` only when the set is empty.
    pub fn pick(&self, ctx: &LbContext<'_>) -> Option<Arc<Host>> {
        match self.inner.levels.len() {
            0 => None,
            1 => self.pick_with(
                ctx,
                HealthView::Single {
                    panic: self.single_panic(),
                },
            ),
            _ => self.with_health(|h| self.pick_with(ctx, HealthView::Multi(h))),
        }
    }

    fn pick_with(&self, ctx: &LbContext<'_>, health: HealthView<'_>) -> Option<Arc<Host>> {
        let mut last: Option<(usize, usize)> = None;
        let picks = ctx.max_picks.unwrap_or(HOST_SELECTION_MAX_ATTEMPTS).max(1);
        for attempt in 0..picks {
            let (l, i) = self.pick_once(ctx.hash, attempt, health);
            let host = self.inner.levels.get(l)?.hosts.get(i)?;
            if !is_excluded(host, ctx.excluded) {
                return Some(Arc::clone(host));
            }
            last = Some((l, i));
        }
        if ctx.max_picks.is_some() {
            // Envoy: after the last re-pick, the host picked last is used, tried or not.
            let (l, i) = last?;
            return self.inner.levels.get(l)?.hosts.get(i).cloned();
        }
        // Every attempt hit a tried host: look for any other healthy one, then (if the
        // level is in panic) any other one of that level, else reuse a tried host.
        if let Some(h) = self.scan(|h| !h.is_ejected() && !is_excluded(h, ctx.excluded)) {
            return Some(h);
        }
        let (l, i) = last?;
        let level = self.inner.levels.get(l)?;
        if health.panic(l)
            && let Some(h) = level.hosts.iter().find(|h| !is_excluded(h, ctx.excluded))
        {
            return Some(Arc::clone(h));
        }
        level.hosts.get(i).cloned()
    }

    /// One pick: (level index, host index within the level).
    #[inline]
    fn pick_once(&self, hash: Option<u64>, attempt: u32, health: HealthView<'_>) -> (usize, usize) {
        let l = if self.inner.levels.len() == 1 {
            0
        } else {
            let key = match hash {
                Some(h) if self.inner.hash_based => h,
                _ => random_u64(),
            };
            let r = u32::try_from(key % 100).unwrap_or(0) + 1;
            health.level_for(r)
        };
        let Some(level) = self.inner.levels.get(l) else {
            return (0, 0);
        };
        let panic = health.panic(l);
        if let Some(ramp) = level.ramp.as_ref().filter(|r| r.running())
            && let Some(i) = ramp.pick(&level.hosts, !panic, Instant::now())
        {
            return (l, i);
        }
        let i = level
            .lb
            .pick(&level.hosts, hash, attempt, !panic)
            // Nothing healthy after all (a host was ejected since the snapshot, or the panic
            // threshold is 0): use the level ignoring health rather than fail.
            .or_else(|| level.lb.pick(&level.hosts, hash, attempt, false))
            .unwrap_or(0);
        (l, i)
    }

    /// First host matching `pred`, levels in priority order, from a random start per level.
    fn scan(&self, pred: impl Fn(&Arc<Host>) -> bool) -> Option<Arc<Host>> {
        self.inner.levels.iter().find_map(|level| {
            let n = level.hosts.len();
            let start = uniform(n as u64) as usize;
            (0..n)
                .filter_map(|k| level.hosts.get((start + k) % n))
                .find(|h| pred(h))
                .cloned()
        })
    }

    /// The panic bit of a single-level set for the current epoch, recomputed if stale.
    #[inline]
    fn single_panic(&self) -> bool {
        let epoch = health_epoch();
        let cached = self.inner.single.load(Ordering::Acquire);
        if cached >> 1 >= epoch {
            return cached & 1 == 1;
        }
        let panic = compute_health(&self.inner.levels, self.inner.panic_threshold, epoch)
            .panic
            .first()
            .copied()
            .unwrap_or(false);
        // Never go back to an older epoch if another thread stored a newer one.
        self.inner
            .single
            .fetch_max((epoch << 1) | u64::from(panic), Ordering::AcqRel);
        panic
    }

    /// Runs `f` with the health state of the current epoch, recomputing it if stale.
    #[inline]
    fn with_health<R>(&self, f: impl FnOnce(&HealthState) -> R) -> R {
        let epoch = health_epoch();
        let current = self.inner.health.load();
        if current.epoch >= epoch {
            return f(&current);
        }
        drop(current);
        let fresh = Arc::new(compute_health(
            &self.inner.levels,
            self.inner.panic_threshold,
            epoch,
        ));
        self.inner.health.rcu(|cur| {
            if cur.epoch >= fresh.epoch {
                Arc::clone(cur)
            } else {
                Arc::clone(&fresh)
            }
        });
        f(&fresh)
    }
}

#[inline]
fn is_excluded(host: &Arc<Host>, excluded: &[Arc<Host>]) -> bool {
    excluded
        .iter()
        .any(|e| Arc::ptr_eq(e, host) || e.addr == host.addr)
}

/// Envoy's priority load and panic computation.
fn compute_health(levels: &[Level], panic_threshold: f64, epoch: u64) -> HealthState {
    let n = levels.len();
    let counts: Vec<(u64, u64)> = levels
        .iter()
        .map(|l| {
            let total = l.hosts.len() as u64;
            let healthy = l.hosts.iter().filter(|h| !h.is_ejected()).count() as u64;
            (healthy, total)
        })
        .collect();
    let health: Vec<u32> = counts
        .iter()
        .map(|&(healthy, total)| {
            (OVERPROVISIONING_PERCENT * healthy)
                .checked_div(total)
                .map_or(0, |h| u32::try_from(h.min(100)).unwrap_or(100))
        })
        .collect();
    let normalized_total = health.iter().sum::<u32>().min(100);
    let mut panic: Vec<bool> = counts
        .iter()
        .map(|&(healthy, total)| {
            let pct = if total == 0 {
                0.0
            } else {
                100.0 * healthy as f64 / total as f64
            };
            pct < panic_threshold
        })
        .collect();
    let mut load = vec![0u32; n];
    // Total panic: nothing healthy anywhere, or every level in panic. Spread by host count
    // and ignore health. (Envoy fails the pick when the threshold is 0 and nothing is
    // healthy; Weft still sends the request somewhere.)
    let total_panic = normalized_total == 0 || panic.iter().all(|&p| p);
    if total_panic {
        let total_hosts: u64 = counts.iter().map(|c| c.1).sum();
        let mut remaining = 100u32;
        for (i, &(_, total)) in counts.iter().enumerate() {
            let l = u32::try_from(100 * total / total_hosts.max(1)).unwrap_or(0);
            load[i] = l.min(remaining);
            remaining -= load[i];
        }
        if let Some(first) = counts.iter().position(|c| c.1 > 0) {
            load[first] += remaining;
        }
        panic.iter_mut().for_each(|p| *p = true);
    } else {
        let mut remaining = 100u32;
        for (i, &h) in health.iter().enumerate() {
            load[i] = (h * 100 / normalized_total).min(remaining);
            remaining -= load[i];
        }
        if let Some(first) = health.iter().position(|&h| h > 0) {
            load[first] += remaining;
        }
    }
    let mut acc = 0;
    let load_cum: Box<[u32]> = load
        .iter()
        .map(|&l| {
            acc += l;
            acc
        })
        .collect();
    HealthState {
        epoch,
        load_cum,
        panic: panic.into_boxed_slice(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::lb::LbPolicy;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    fn host(i: u8, weight: u32, priority: u32) -> Arc<Host> {
        Arc::new(Host::new(
            SocketAddr::from(([10, 2, priority as u8, i], 80)),
            weight,
            priority,
            Locality::default(),
        ))
    }

    fn eject(h: &Host) {
        h.outlier
            .mark_ejected(Instant::now(), Duration::from_secs(60));
    }

    fn tally(
        set: &EndpointSet,
        n: usize,
        ctx: impl Fn(usize) -> Option<u64>,
    ) -> HashMap<SocketAddr, usize> {
        let mut m = HashMap::new();
        for k in 0..n {
            let h = set
                .pick(&LbContext {
                    hash: ctx(k),
                    excluded: &[],
                    max_picks: None,
                })
                .expect("host");
            *m.entry(h.addr).or_default() += 1;
        }
        m
    }

    fn policies() -> Vec<LbPolicy> {
        vec![
            LbPolicy::RoundRobin,
            LbPolicy::Random,
            LbPolicy::LeastRequest { choice_count: 2 },
            LbPolicy::RingHash {
                min_ring_size: 1024,
                max_ring_size: 1 << 20,
            },
            LbPolicy::Maglev { table_size: 65537 },
        ]
    }

    fn cfg(policy: LbPolicy) -> LbConfig {
        LbConfig {
            policy,
            ..LbConfig::default()
        }
    }

    #[test]
    fn empty_set_picks_none() {
        let set = EndpointSet::new(vec![], &LbConfig::default());
        assert!(set.pick(&LbContext::default()).is_none());
        assert!(set.is_empty());
    }

    #[test]
    fn round_robin_weighted_exact_through_set() {
        let hs = vec![host(1, 1, 0), host(2, 3, 0)];
        let set = EndpointSet::new(hs.clone(), &cfg(LbPolicy::RoundRobin));
        let t = tally(&set, 400, |_| None);
        assert_eq!(t[&hs[0].addr], 100);
        assert_eq!(t[&hs[1].addr], 300);
    }

    #[test]
    fn ejected_host_skipped_by_every_policy() {
        for policy in policies() {
            let hs: Vec<_> = (0..4).map(|i| host(i, 1, 0)).collect();
            let set = EndpointSet::new(hs.clone(), &cfg(policy.clone()));
            eject(&hs[2]);
            let t = tally(&set, 2000, |k| {
                Some((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            });
            assert!(!t.contains_key(&hs[2].addr), "{policy:?}: {t:?}");
            assert_eq!(t.len(), 3, "{policy:?}: {t:?}");
        }
    }

    #[test]
    fn excluded_hosts_avoided_then_reused() {
        for policy in policies() {
            let hs: Vec<_> = (0..3).map(|i| host(i, 1, 0)).collect();
            let set = EndpointSet::new(hs.clone(), &cfg(policy.clone()));
            let excluded = [hs[0].clone(), hs[1].clone()];
            for k in 0..200u64 {
                let h = set
                    .pick(&LbContext {
                        hash: Some(k),
                        excluded: &excluded,
                        max_picks: None,
                    })
                    .unwrap();
                assert_eq!(h.addr, hs[2].addr, "{policy:?}");
            }
            // The only other host is ejected: fall back to a tried one.
            eject(&hs[2]);
            let h = set
                .pick(&LbContext {
                    hash: Some(1),
                    excluded: &excluded,
                    max_picks: None,
                })
                .unwrap();
            assert_ne!(h.addr, hs[2].addr, "{policy:?}");
            // All excluded: still a host.
            let all = [hs[0].clone(), hs[1].clone(), hs[2].clone()];
            assert!(
                set.pick(&LbContext {
                    hash: None,
                    excluded: &all,
                    max_picks: None,
                })
                .is_some()
            );
        }
    }

    #[test]
    fn limited_picks_follow_envoy() {
        let hs: Vec<_> = (0..2).map(|i| host(i, 1, 0)).collect();
        let set = EndpointSet::new(hs.clone(), &cfg(LbPolicy::RoundRobin));
        let excluded = [hs[0].clone()];
        let ctx = |max_picks| LbContext {
            hash: None,
            excluded: &excluded,
            max_picks: Some(max_picks),
        };
        // One pick (host_selection_retry_max_attempts 0): round robin alternates, so about
        // half the picks land on the tried host, which is then used anyway.
        let mut tried_again = 0;
        for _ in 0..100 {
            if set.pick(&ctx(1)).unwrap().addr == hs[0].addr {
                tried_again += 1;
            }
        }
        assert!((40..=60).contains(&tried_again), "{tried_again}");
        // Two picks: round robin never gives the tried host twice in a row.
        for _ in 0..100 {
            assert_eq!(set.pick(&ctx(2)).unwrap().addr, hs[1].addr);
        }
        // Everything tried: the last pick is used.
        let all = [hs[0].clone(), hs[1].clone()];
        let ctx = LbContext {
            hash: None,
            excluded: &all,
            max_picks: Some(5),
        };
        assert!(set.pick(&ctx).is_some());
        let empty = EndpointSet::new(Vec::new(), &cfg(LbPolicy::RoundRobin));
        assert!(empty.pick(&ctx).is_none());
    }

    #[test]
    fn priority_failover_when_p0_ejected() {
        let p0: Vec<_> = (0..2).map(|i| host(i, 1, 0)).collect();
        let p1: Vec<_> = (0..2).map(|i| host(i, 1, 1)).collect();
        let all: Vec<_> = p0.iter().chain(&p1).cloned().collect();
        for policy in policies() {
            p0.iter()
                .for_each(|h| h.outlier.mark_unejected(Instant::now()));
            let set = EndpointSet::new(all.clone(), &cfg(policy.clone()));
            let t = tally(&set, 500, |k| Some(k as u64 * 7919));
            assert!(
                t.keys().all(|a| p0.iter().any(|h| h.addr == *a)),
                "{policy:?}: {t:?}"
            );
            p0.iter().for_each(|h| eject(h));
            let t = tally(&set, 500, |k| Some(k as u64 * 7919));
            assert!(
                t.keys().all(|a| p1.iter().any(|h| h.addr == *a)),
                "{policy:?}: {t:?}"
            );
            assert_eq!(set.priority_load(), vec![(0, true), (100, false)]);
        }
        p0.iter()
            .for_each(|h| h.outlier.mark_unejected(Instant::now()));
    }

    #[test]
    fn overprovisioning_spills_partial_load() {
        // 10 hosts in P0 with 3 ejected: health 140*7/10 = 98 → 2% spills to P1.
        let p0: Vec<_> = (0..10).map(|i| host(i, 1, 0)).collect();
        let p1 = vec![host(0, 1, 1)];
        let set = EndpointSet::new(
            p0.iter().chain(&p1).cloned().collect(),
            &cfg(LbPolicy::Random),
        );
        assert_eq!(set.priority_load(), vec![(100, false), (0, false)]);
        // 8 of 10 healthy: 112% capped, still all on P0.
        p0[..2].iter().for_each(|h| eject(h));
        assert_eq!(set.priority_load(), vec![(100, false), (0, false)]);
        eject(&p0[2]);
        assert_eq!(set.priority_load(), vec![(98, false), (2, false)]);
        let t = tally(&set, 20_000, |_| None);
        let on_p1 = t.get(&p1[0].addr).copied().unwrap_or(0);
        assert!((200..700).contains(&on_p1), "{on_p1}");
    }

    #[test]
    fn panic_mode_uses_all_hosts_and_threshold_zero_disables() {
        let hs: Vec<_> = (0..4).map(|i| host(i, 1, 0)).collect();
        hs[..3].iter().for_each(|h| eject(h));
        // 25% healthy < 50%: panic, ejected hosts get traffic.
        let set = EndpointSet::new(hs.clone(), &cfg(LbPolicy::RoundRobin));
        assert_eq!(set.priority_load(), vec![(100, true)]);
        let t = tally(&set, 400, |_| None);
        assert_eq!(t.len(), 4, "{t:?}");
        // Threshold 0: never panic, only the healthy host.
        let set = EndpointSet::new(
            hs.clone(),
            &LbConfig {
                policy: LbPolicy::RoundRobin,
                healthy_panic_threshold: 0.0,
                slow_start: None,
            },
        );
        let t = tally(&set, 400, |_| None);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[&hs[3].addr], 400);
        // Everything ejected with threshold 0: still picks (total panic).
        eject(&hs[3]);
        assert!(set.pick(&LbContext::default()).is_some());
        // 50% healthy is not below 50: no panic.
        hs[..2]
            .iter()
            .for_each(|h| h.outlier.mark_unejected(Instant::now()));
        let set = EndpointSet::new(hs.clone(), &cfg(LbPolicy::RoundRobin));
        let t = tally(&set, 400, |_| None);
        assert_eq!(t.len(), 2, "{t:?}");
    }

    #[test]
    fn single_level_health_follows_later_ejections() {
        let hs: Vec<_> = (0..4).map(|i| host(i, 1, 0)).collect();
        let set = EndpointSet::new(hs.clone(), &cfg(LbPolicy::RoundRobin));
        assert_eq!(tally(&set, 400, |_| None).len(), 4);
        eject(&hs[0]);
        assert_eq!(tally(&set, 400, |_| None).len(), 3);
        // Now 25% healthy: panic, all four again.
        eject(&hs[1]);
        eject(&hs[2]);
        assert_eq!(tally(&set, 400, |_| None).len(), 4);
        assert_eq!(set.priority_load(), vec![(100, true)]);
        hs[..3]
            .iter()
            .for_each(|h| h.outlier.mark_unejected(Instant::now()));
        eject(&hs[3]);
        let t = tally(&set, 400, |_| None);
        assert_eq!(t.len(), 3, "{t:?}");
        assert!(!t.contains_key(&hs[3].addr));
    }

    #[test]
    fn hash_chooses_same_host_across_priorities() {
        let hs: Vec<_> = (0..4).map(|i| host(i, 1, i as u32 % 2)).collect();
        let set = EndpointSet::new(hs, &cfg(LbPolicy::Maglev { table_size: 65537 }));
        for k in 0..100u64 {
            let ctx = LbContext {
                hash: Some(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                excluded: &[],
                max_picks: None,
            };
            assert_eq!(set.pick(&ctx).unwrap().addr, set.pick(&ctx).unwrap().addr);
        }
    }

    #[test]
    fn active_request_guard_counts() {
        let h = host(1, 1, 0);
        let g1 = h.track_request();
        let g2 = h.track_request();
        assert_eq!(h.active_requests(), 2);
        drop(g1);
        assert_eq!(h.active_requests(), 1);
        std::thread::spawn(move || drop(g2)).join().unwrap();
        assert_eq!(h.active_requests(), 0);
    }

    #[test]
    fn weight_zero_becomes_one() {
        assert_eq!(
            Host::new(
                SocketAddr::from(([127, 0, 0, 1], 1)),
                0,
                0,
                Locality::default()
            )
            .weight,
            1
        );
    }

    #[test]
    fn slow_start_ramps_a_host_that_joins_an_existing_set() {
        use crate::upstream::lb::SlowStart;
        let window = Duration::from_millis(1_000);
        let cfg = LbConfig {
            policy: LbPolicy::RoundRobin,
            slow_start: Some(SlowStart {
                window,
                aggression: 1.0,
                min_weight: 0.1,
            }),
            ..LbConfig::default()
        };
        let old = host(1, 1, 0);
        std::thread::sleep(window);
        // The first host is past its window when the second joins: the newcomer starts at the
        // 10% floor (until 100 ms into its window), about 1 pick in 11 — against 1 in 2 without
        // slow start; the bound leaves room for a descheduled test thread.
        let set = EndpointSet::new(vec![old.clone(), host(2, 1, 0)], &cfg);
        let t = tally(&set, 1_100, |_| None);
        let new = t.get(&host(2, 1, 0).addr).copied().unwrap_or(0);
        assert!((80..=300).contains(&new), "{t:?}");
        // Once the window has passed: plain round robin again, an exact alternation.
        std::thread::sleep(window);
        let t = tally(&set, 1_000, |_| None);
        assert_eq!(t.values().copied().collect::<Vec<_>>(), [500, 500], "{t:?}");
    }
}
