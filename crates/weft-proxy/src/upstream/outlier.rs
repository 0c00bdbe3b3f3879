//! Outlier detection (Envoy's passive health checking): hosts that return consecutive 5xx or
//! gateway errors, or whose success rate falls behind their peers', are ejected from load
//! balancing for a growing period, and returned to service by a periodic sweep.
//!
//! Envoy's detectors, with its defaults: the consecutive ones (`consecutive_5xx`,
//! `consecutive_gateway_failure`, `consecutive_local_origin_failure`) act on the response that
//! completes a run; success rate (a host more than `success_rate_stdev_factor`/1000 standard
//! deviations below the mean of the hosts with enough requests; on by default) and failure
//! percentage (a host failing at least `failure_percentage_threshold` percent of its requests;
//! off by default) act at each sweep, over the requests of the interval that ended.
//! Local-origin errors (connect failure, reset, timeout) count as 503/504, as in Envoy, unless
//! `split_external_local_origin_errors` is set: then they count only towards the local-origin
//! detectors (`consecutive_local_origin_failure`, and the local-origin success rate and failure
//! percentage over connection attempts), the other detectors see only responses the upstream
//! actually sent, and any response ends a run of local-origin errors (the connection worked).
//!
//! The per-response path is two relaxed atomic operations for a success, up to two more while
//! a rate detector is enforced; ejection decisions (rare) and sweeps take a small mutex.
//! Nothing here is held across an await, and this module never picks hosts: it only flips each
//! host's ejected flag, which the load balancer reads.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;
use envoy_types::pb::google::protobuf::UInt32Value;

use super::host::{EndpointSet, Host};
use super::lb::{UnsupportedField, duration_from_proto, random_u64, uniform};

/// Bumped whenever any host's ejection state flips. Endpoint sets cache their priority load
/// and panic state per epoch and recompute when it moves (rare: ejections are rare).
static HEALTH_EPOCH: AtomicU64 = AtomicU64::new(0);

/// The current health epoch.
#[inline]
pub(crate) fn health_epoch() -> u64 {
    HEALTH_EPOCH.load(Ordering::Acquire)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Outlier detection settings of one cluster (defaults are Envoy's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Consecutive 5xx (incl. local-origin errors) before an ejection; 0 disables.
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors (502/503/504, local-origin errors) before an ejection; 0
    /// disables.
    pub consecutive_gateway_failure: u32,
    /// Percent chance that a consecutive-5xx detection actually ejects.
    pub enforcing_consecutive_5xx: u32,
    /// Percent chance that a consecutive-gateway-failure detection actually ejects.
    pub enforcing_consecutive_gateway_failure: u32,
    /// Local-origin errors are counted on their own instead of as 503/504.
    pub split_external_local_origin_errors: bool,
    /// Consecutive local-origin errors before an ejection, when split; 0 disables.
    pub consecutive_local_origin_failure: u32,
    /// Percent chance that a consecutive-local-origin-failure detection actually ejects.
    pub enforcing_consecutive_local_origin_failure: u32,
    /// Percent chance that a success-rate outlier is actually ejected.
    pub enforcing_success_rate: u32,
    /// The same for the local-origin success rate (split only).
    pub enforcing_local_origin_success_rate: u32,
    /// Hosts with `success_rate_request_volume` requests in an interval needed to judge any.
    pub success_rate_minimum_hosts: u32,
    /// Requests a host needs in an interval for its success rate to count.
    pub success_rate_request_volume: u32,
    /// Ejection threshold: the mean success rate minus this/1000 standard deviations.
    pub success_rate_stdev_factor: u32,
    /// Failure percentage (0–100) at or above which a host is an outlier.
    pub failure_percentage_threshold: u32,
    /// Percent chance that a failure-percentage outlier is actually ejected.
    pub enforcing_failure_percentage: u32,
    /// The same for the local-origin failure percentage (split only).
    pub enforcing_failure_percentage_local_origin: u32,
    /// Hosts with `failure_percentage_request_volume` requests needed to judge any.
    pub failure_percentage_minimum_hosts: u32,
    /// Requests a host needs in an interval for its failure percentage to count.
    pub failure_percentage_request_volume: u32,
    /// Period of the un-ejection sweep.
    pub interval: Duration,
    /// Ejection time, multiplied by the host's ejection backoff.
    pub base_ejection_time: Duration,
    /// Cap on the ejection time (never below `base_ejection_time`).
    pub max_ejection_time: Duration,
    /// Random extra ejection time in `[0, jitter]`, so hosts do not return all at once.
    pub max_ejection_time_jitter: Duration,
    /// Maximum percent of the cluster's hosts ejected at once.
    pub max_ejection_percent: u32,
    /// Allow one ejection even when `max_ejection_percent` would forbid it (small clusters).
    /// Weft defaults this to `true`: with Envoy's default (`false`) and a 10% limit, a
    /// cluster with fewer than 10 hosts could never eject anything.
    pub always_eject_one_host: bool,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 0,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_success_rate: 100,
            enforcing_local_origin_success_rate: 100,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            enforcing_failure_percentage: 0,
            enforcing_failure_percentage_local_origin: 0,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 10,
            always_eject_one_host: true,
        }
    }
}

fn percent(field: &str, v: Option<u32>, default: u32) -> Result<u32, UnsupportedField> {
    let v = v.unwrap_or(default);
    if v > 100 {
        return Err(UnsupportedField::new(
            field,
            format!("must be a percentage between 0 and 100, got {v}"),
        ));
    }
    Ok(v)
}

impl OutlierConfig {
    /// Percent chance that `detector`'s detection actually ejects.
    fn enforcing(&self, detector: Detector) -> u32 {
        match detector {
            Detector::Consecutive5xx => self.enforcing_consecutive_5xx,
            Detector::ConsecutiveGatewayFailure => self.enforcing_consecutive_gateway_failure,
            Detector::ConsecutiveLocalOriginFailure => {
                self.enforcing_consecutive_local_origin_failure
            }
            Detector::SuccessRate(Origin::External) => self.enforcing_success_rate,
            Detector::SuccessRate(Origin::Local) => self.enforcing_local_origin_success_rate,
            Detector::FailurePercentage(Origin::External) => self.enforcing_failure_percentage,
            Detector::FailurePercentage(Origin::Local) => {
                self.enforcing_failure_percentage_local_origin
            }
        }
    }

    /// Whether outcomes of `origin` are counted per interval: a rate detector on them can
    /// eject. Local origin has detectors of its own only when errors are split.
    fn counts(&self, origin: Origin) -> bool {
        (origin == Origin::External || self.split_external_local_origin_errors)
            && (self.enforcing(Detector::SuccessRate(origin)) > 0
                || self.enforcing(Detector::FailurePercentage(origin)) > 0)
    }

    /// Translates Envoy's `OutlierDetection`; error fields are relative to that message.
    ///
    /// Refused: `monitors`, `detect_degraded_hosts`, a percentage above 100, a zero
    /// `interval`, and a `max_ejection_time` below `base_ejection_time` (Envoy refuses it too).
    pub fn from_proto(p: &OutlierDetection) -> Result<OutlierConfig, UnsupportedField> {
        let d = OutlierConfig::default();
        // Envoy's wrapped integers: a count, or a percentage (0–100) with its field name.
        let count = |v: Option<UInt32Value>, default| v.map_or(default, |v| v.value);
        let pct = |field: &str, v: Option<UInt32Value>, default| {
            percent(field, v.map(|v| v.value), default)
        };
        if !p.monitors.is_empty() {
            return Err(UnsupportedField::new(
                "monitors",
                "outlier detection extensions are not supported",
            ));
        }
        if p.detect_degraded_hosts.is_some_and(|v| v.value) {
            return Err(UnsupportedField::new(
                "detect_degraded_hosts",
                "degraded hosts are not supported",
            ));
        }
        let dur =
            |field: &str, v: Option<&envoy_types::pb::google::protobuf::Duration>, default| {
                v.map(|v| duration_from_proto(field, v))
                    .transpose()
                    .map(|v| v.unwrap_or(default))
            };
        let interval = dur("interval", p.interval.as_ref(), d.interval)?;
        if interval.is_zero() {
            return Err(UnsupportedField::new(
                "interval",
                "must be greater than zero",
            ));
        }
        let base_ejection_time = dur(
            "base_ejection_time",
            p.base_ejection_time.as_ref(),
            d.base_ejection_time,
        )?;
        let max_ejection_time = dur(
            "max_ejection_time",
            p.max_ejection_time.as_ref(),
            d.max_ejection_time.max(base_ejection_time),
        )?;
        if max_ejection_time < base_ejection_time {
            return Err(UnsupportedField::new(
                "max_ejection_time",
                "must not be smaller than base_ejection_time",
            ));
        }
        Ok(OutlierConfig {
            consecutive_5xx: count(p.consecutive_5xx, d.consecutive_5xx),
            consecutive_gateway_failure: count(
                p.consecutive_gateway_failure,
                d.consecutive_gateway_failure,
            ),
            enforcing_consecutive_5xx: pct(
                "enforcing_consecutive_5xx",
                p.enforcing_consecutive_5xx,
                d.enforcing_consecutive_5xx,
            )?,
            enforcing_consecutive_gateway_failure: pct(
                "enforcing_consecutive_gateway_failure",
                p.enforcing_consecutive_gateway_failure,
                d.enforcing_consecutive_gateway_failure,
            )?,
            split_external_local_origin_errors: p.split_external_local_origin_errors,
            consecutive_local_origin_failure: count(
                p.consecutive_local_origin_failure,
                d.consecutive_local_origin_failure,
            ),
            enforcing_consecutive_local_origin_failure: pct(
                "enforcing_consecutive_local_origin_failure",
                p.enforcing_consecutive_local_origin_failure,
                d.enforcing_consecutive_local_origin_failure,
            )?,
            enforcing_success_rate: pct(
                "enforcing_success_rate",
                p.enforcing_success_rate,
                d.enforcing_success_rate,
            )?,
            enforcing_local_origin_success_rate: pct(
                "enforcing_local_origin_success_rate",
                p.enforcing_local_origin_success_rate,
                d.enforcing_local_origin_success_rate,
            )?,
            success_rate_minimum_hosts: count(
                p.success_rate_minimum_hosts,
                d.success_rate_minimum_hosts,
            ),
            success_rate_request_volume: count(
                p.success_rate_request_volume,
                d.success_rate_request_volume,
            ),
            success_rate_stdev_factor: count(
                p.success_rate_stdev_factor,
                d.success_rate_stdev_factor,
            ),
            failure_percentage_threshold: pct(
                "failure_percentage_threshold",
                p.failure_percentage_threshold,
                d.failure_percentage_threshold,
            )?,
            enforcing_failure_percentage: pct(
                "enforcing_failure_percentage",
                p.enforcing_failure_percentage,
                d.enforcing_failure_percentage,
            )?,
            enforcing_failure_percentage_local_origin: pct(
                "enforcing_failure_percentage_local_origin",
                p.enforcing_failure_percentage_local_origin,
                d.enforcing_failure_percentage_local_origin,
            )?,
            failure_percentage_minimum_hosts: count(
                p.failure_percentage_minimum_hosts,
                d.failure_percentage_minimum_hosts,
            ),
            failure_percentage_request_volume: count(
                p.failure_percentage_request_volume,
                d.failure_percentage_request_volume,
            ),
            interval,
            base_ejection_time,
            max_ejection_time,
            max_ejection_time_jitter: dur(
                "max_ejection_time_jitter",
                p.max_ejection_time_jitter.as_ref(),
                d.max_ejection_time_jitter,
            )?,
            // Envoy clamps to 100 rather than refusing.
            max_ejection_percent: count(p.max_ejection_percent, d.max_ejection_percent).min(100),
            always_eject_one_host: p
                .always_eject_one_host
                .map_or(d.always_eject_one_host, |v| v.value),
        })
    }
}

/// What happened to one request sent to a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Status(u16),
    /// The connection could not be established (counts as 503).
    ConnectFailure,
    /// The stream or connection was reset before a response (counts as 503).
    Reset,
    /// The upstream did not answer in time (counts as 504).
    Timeout,
}

impl Outcome {
    /// Whether the proxy's side of the exchange failed (no response from the upstream).
    #[inline]
    fn is_local_origin(self) -> bool {
        !matches!(self, Outcome::Status(_))
    }

    /// `(is 5xx, is gateway error)`.
    #[inline]
    fn classify(self) -> (bool, bool) {
        match self {
            Outcome::Status(s) => ((500..600).contains(&s), matches!(s, 502..=504)),
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout => (true, true),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct EjectionTimes {
    /// Lifetime number of ejections (for display).
    num_ejections: u32,
    /// Multiplier of `base_ejection_time`; grows per ejection, decays while healthy.
    backoff: u32,
    ejected_at: Option<Instant>,
    ejected_until: Option<Instant>,
    last_unejected: Option<Instant>,
}

/// Per-host outlier-detection state.
#[derive(Debug, Default)]
pub struct OutlierState {
    ejected: AtomicBool,
    consecutive_5xx: AtomicU32,
    consecutive_gateway_failure: AtomicU32,
    consecutive_local_origin_failure: AtomicU32,
    /// Requests and successes since the last sweep, by origin (`Origin as usize`): upstream
    /// responses (every outcome when errors are not split), and connection attempts.
    rates: [Bucket; 2],
    times: Mutex<EjectionTimes>,
}

impl OutlierState {
    /// Whether the host is currently ejected (it returns to service on a detector sweep).
    #[inline]
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Number of times this host has been ejected.
    pub fn num_ejections(&self) -> u32 {
        lock(&self.times).num_ejections
    }

    /// When the current ejection ends (`None` when not ejected).
    pub fn ejected_until(&self) -> Option<Instant> {
        let t = lock(&self.times);
        if self.is_ejected() {
            t.ejected_until
        } else {
            None
        }
    }

    /// The current ejection-time multiplier.
    pub fn ejection_backoff(&self) -> u32 {
        lock(&self.times).backoff
    }

    /// Current run of consecutive 5xx.
    pub fn consecutive_5xx(&self) -> u32 {
        self.consecutive_5xx.load(Ordering::Relaxed)
    }

    /// Current run of consecutive gateway errors.
    pub fn consecutive_gateway_failure(&self) -> u32 {
        self.consecutive_gateway_failure.load(Ordering::Relaxed)
    }

    /// Current run of consecutive local-origin errors (counted only when split).
    pub fn consecutive_local_origin_failure(&self) -> u32 {
        self.consecutive_local_origin_failure
            .load(Ordering::Relaxed)
    }

    /// Ejects for exactly `duration` (no backoff bookkeeping).
    #[cfg(test)]
    pub(crate) fn mark_ejected(&self, now: Instant, duration: Duration) {
        let mut t = lock(&self.times);
        t.num_ejections = t.num_ejections.saturating_add(1);
        t.ejected_at = Some(now);
        t.ejected_until = Some(now + duration);
        self.set_ejected(true);
    }

    /// Returns the host to service and clears its error runs.
    pub(crate) fn mark_unejected(&self, now: Instant) {
        let mut t = lock(&self.times);
        t.last_unejected = Some(now);
        t.ejected_until = None;
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway_failure.store(0, Ordering::Relaxed);
        self.consecutive_local_origin_failure
            .store(0, Ordering::Relaxed);
        self.set_ejected(false);
    }

    fn set_ejected(&self, ejected: bool) {
        if self.ejected.swap(ejected, Ordering::Release) != ejected {
            HEALTH_EPOCH.fetch_add(1, Ordering::AcqRel);
        }
    }

    #[inline]
    fn reset_if_set(counter: &AtomicU32) {
        if counter.load(Ordering::Relaxed) != 0 {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// Requests and successes of one host in the current interval.
#[derive(Debug, Default)]
struct Bucket {
    total: AtomicU32,
    success: AtomicU32,
}

impl Bucket {
    #[inline]
    fn record(&self, success: bool) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if success {
            self.success.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The interval's requests and success rate (percent), starting the next interval.
    fn take(&self) -> (u32, f64) {
        let total = self.total.swap(0, Ordering::Relaxed);
        let success = self.success.swap(0, Ordering::Relaxed).min(total);
        let rate = if total == 0 {
            100.0
        } else {
            f64::from(success) * 100.0 / f64::from(total)
        };
        (total, rate)
    }
}

/// Which side of an exchange an outcome is about (told apart only when errors are split).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The upstream's answers.
    External = 0,
    /// The proxy's connection attempts.
    Local = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detector {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate(Origin),
    FailurePercentage(Origin),
}

/// The outlier detector of one cluster.
#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierConfig,
    /// Whether outcomes are counted per interval, by origin (`Origin as usize`): only while a
    /// rate detector on them is enforced, so that the response path does no more otherwise.
    counting: [bool; 2],
    /// Serialises ejection decisions and sweeps (rare paths only).
    decisions: Mutex<()>,
    ejections_total: AtomicU64,
    ejections_active: AtomicU32,
    ejections_overflow: AtomicU64,
}

impl OutlierDetector {
    /// A detector with `config`.
    pub fn new(config: OutlierConfig) -> Self {
        Self {
            counting: [
                config.counts(Origin::External),
                config.counts(Origin::Local),
            ],
            config,
            decisions: Mutex::new(()),
            ejections_total: AtomicU64::new(0),
            ejections_active: AtomicU32::new(0),
            ejections_overflow: AtomicU64::new(0),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// Ejections enforced since start (Envoy's `ejections_enforced_total`).
    pub fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    /// Hosts currently ejected (recounted on every sweep).
    pub fn ejections_active(&self) -> u32 {
        self.ejections_active.load(Ordering::Relaxed)
    }

    /// Ejections refused because of `max_ejection_percent`.
    pub fn ejections_overflow(&self) -> u64 {
        self.ejections_overflow.load(Ordering::Relaxed)
    }

    /// Records the outcome of one request to `host`, a member of `hosts` (the cluster's
    /// current hosts, e.g. `set.hosts()`), ejecting it immediately when a consecutive
    /// threshold is reached.
    #[inline]
    pub fn report(&self, hosts: &[Arc<Host>], host: &Host, outcome: Outcome) {
        self.report_with(hosts, host, outcome, Instant::now);
    }

    fn report_with(
        &self,
        hosts: &[Arc<Host>],
        host: &Host,
        outcome: Outcome,
        now: impl Fn() -> Instant,
    ) {
        let st = &host.outlier;
        let cfg = &self.config;
        let local = outcome.is_local_origin();
        let split = cfg.split_external_local_origin_errors;
        let (is_5xx, is_gateway) = outcome.classify();
        let [external_rates, local_rates] = self.counting;
        if external_rates && !(local && split) {
            st.rates[Origin::External as usize].record(!is_5xx);
        }
        if local_rates {
            st.rates[Origin::Local as usize].record(!local);
        }
        if split {
            if local {
                // Counted apart: the runs of upstream responses neither grow nor end.
                self.extend_run(hosts, host, Detector::ConsecutiveLocalOriginFailure, &now);
                return;
            }
            // A response came back: the connection side worked.
            OutlierState::reset_if_set(&st.consecutive_local_origin_failure);
        }
        if !is_5xx {
            OutlierState::reset_if_set(&st.consecutive_5xx);
            OutlierState::reset_if_set(&st.consecutive_gateway_failure);
            return;
        }
        if is_gateway {
            self.extend_run(hosts, host, Detector::ConsecutiveGatewayFailure, &now);
        } else {
            OutlierState::reset_if_set(&st.consecutive_gateway_failure);
        }
        self.extend_run(hosts, host, Detector::Consecutive5xx, &now);
    }

    /// One more error in `detector`'s run on `host`; at the configured count (0: never) the
    /// run restarts — like Envoy, whether or not the detection ejects — and `host` may be
    /// ejected.
    fn extend_run(
        &self,
        hosts: &[Arc<Host>],
        host: &Host,
        detector: Detector,
        now: &impl Fn() -> Instant,
    ) {
        let st = &host.outlier;
        let cfg = &self.config;
        let (run, count) = match detector {
            Detector::Consecutive5xx => (&st.consecutive_5xx, cfg.consecutive_5xx),
            Detector::ConsecutiveGatewayFailure => (
                &st.consecutive_gateway_failure,
                cfg.consecutive_gateway_failure,
            ),
            Detector::ConsecutiveLocalOriginFailure => (
                &st.consecutive_local_origin_failure,
                cfg.consecutive_local_origin_failure,
            ),
            // Judged per interval, in `sweep_rates`: no runs.
            Detector::SuccessRate(_) | Detector::FailurePercentage(_) => return,
        };
        let n = run.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if count == 0 || n != count {
            return;
        }
        let decisions = lock(&self.decisions);
        run.store(0, Ordering::Relaxed);
        if hosts.iter().any(|h| std::ptr::eq(&**h, host)) {
            self.try_eject(&decisions, hosts, host, detector, now());
        }
    }

    /// Ejects `host`, one of `hosts`, for `detector`, unless it is ejected already, the cluster
    /// is at `max_ejection_percent`, or the enforcement draw says no. The decisions lock, held
    /// by the caller, keeps any other decision out meanwhile.
    fn try_eject(
        &self,
        _decisions: &MutexGuard<'_, ()>,
        hosts: &[Arc<Host>],
        host: &Host,
        detector: Detector,
        now: Instant,
    ) {
        if host.outlier.is_ejected() {
            return;
        }
        let total = hosts.len() as u64;
        let active = hosts.iter().filter(|h| h.is_ejected()).count() as u64;
        let within_limit =
            (active + 1) * 100 <= u64::from(self.config.max_ejection_percent) * total;
        let allowed = within_limit || (self.config.always_eject_one_host && active == 0);
        if !allowed {
            self.ejections_overflow.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let enforcing = self.config.enforcing(detector);
        if enforcing == 0 || (enforcing < 100 && uniform(100) >= u64::from(enforcing)) {
            return;
        }
        self.eject(host, now);
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        self.ejections_active.store(
            u32::try_from(active + 1).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
    }

    fn eject(&self, host: &Host, now: Instant) {
        let cfg = &self.config;
        let base = cfg.base_ejection_time;
        let max = cfg.max_ejection_time.max(base);
        let st = &host.outlier;
        let mut t = lock(&st.times);
        // Envoy: grow the multiplier only while base * backoff < max + base.
        if base.saturating_mul(t.backoff) < max.saturating_add(base) {
            t.backoff = t.backoff.saturating_add(1);
        }
        let jitter_ms = u64::try_from(cfg.max_ejection_time_jitter.as_millis()).unwrap_or(u64::MAX);
        let jitter = if jitter_ms == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(random_u64() % jitter_ms.saturating_add(1))
        };
        let duration = base
            .saturating_mul(t.backoff)
            .min(max)
            .saturating_add(jitter);
        t.num_ejections = t.num_ejections.saturating_add(1);
        t.ejected_at = Some(now);
        t.ejected_until = Some(now.checked_add(duration).unwrap_or(now));
        st.set_ejected(true);
    }

    /// The periodic sweep: returns hosts whose ejection has elapsed to service, decays the
    /// ejection backoff of hosts healthy for a whole interval, and recounts active ejections.
    pub fn tick(&self, hosts: &[Arc<Host>], now: Instant) {
        let decisions = lock(&self.decisions);
        let mut active = 0u32;
        for h in hosts {
            let st = &h.outlier;
            if st.is_ejected() {
                let until = lock(&st.times).ejected_until;
                if until.is_none_or(|u| now >= u) {
                    st.mark_unejected(now);
                } else {
                    active += 1;
                }
            } else {
                let mut t = lock(&st.times);
                if t.backoff > 0
                    && t.last_unejected
                        .is_some_and(|u| now.saturating_duration_since(u) >= self.config.interval)
                {
                    t.backoff -= 1;
                }
            }
        }
        self.ejections_active.store(active, Ordering::Relaxed);
        // Then the rate detectors, over the interval that just ended (Envoy's order).
        for origin in [Origin::External, Origin::Local] {
            if self.counting[origin as usize] {
                self.sweep_rates(&decisions, hosts, origin, now);
            }
        }
    }

    /// Success-rate and failure-percentage ejections over the interval that ended, as Envoy
    /// computes them: only hosts not ejected and with enough requests are judged, and only
    /// when there are enough of those.
    fn sweep_rates(
        &self,
        decisions: &MutexGuard<'_, ()>,
        hosts: &[Arc<Host>],
        origin: Origin,
        now: Instant,
    ) {
        let cfg = &self.config;
        // Every host's bucket starts over, the ejected ones' too.
        let rates: Vec<(u32, f64)> = hosts
            .iter()
            .map(|h| h.outlier.rates[origin as usize].take())
            .collect();
        let judged = |volume: u32| -> Vec<(usize, f64)> {
            rates
                .iter()
                .enumerate()
                .filter(|&(i, &(n, _))| n > 0 && n >= volume && !hosts[i].is_ejected())
                .map(|(i, &(_, rate))| (i, rate))
                .collect()
        };
        let sr = judged(cfg.success_rate_request_volume);
        if !sr.is_empty() && sr.len() >= cfg.success_rate_minimum_hosts as usize {
            let n = sr.len() as f64;
            let mean = sr.iter().map(|&(_, r)| r).sum::<f64>() / n;
            let variance = sr.iter().map(|&(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
            let factor = f64::from(cfg.success_rate_stdev_factor) / 1000.0;
            let threshold = mean - factor * variance.sqrt();
            for &(i, rate) in &sr {
                if rate < threshold {
                    let d = Detector::SuccessRate(origin);
                    self.try_eject(decisions, hosts, &hosts[i], d, now);
                }
            }
        }
        let fp = judged(cfg.failure_percentage_request_volume);
        if !fp.is_empty() && fp.len() >= cfg.failure_percentage_minimum_hosts as usize {
            for &(i, rate) in &fp {
                if 100.0 - rate >= f64::from(cfg.failure_percentage_threshold) {
                    let d = Detector::FailurePercentage(origin);
                    self.try_eject(decisions, hosts, &hosts[i], d, now);
                }
            }
        }
    }

    /// Runs [`tick`](Self::tick) every `interval` on the current tokio runtime. The task
    /// stops when `hosts_source` returns `None` (the cluster is gone) or the detector is
    /// dropped; the returned handle can also abort it. Outside a tokio runtime nothing is
    /// spawned (logged as an error, `None` returned): ejected hosts would then stay ejected.
    pub fn spawn_ticker<F>(self: &Arc<Self>, hosts_source: F) -> Option<tokio::task::JoinHandle<()>>
    where
        F: Fn() -> Option<Arc<EndpointSet>> + Send + 'static,
    {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                "outlier detection sweep not started: no tokio runtime; ejected hosts would \
                 never return to service"
            );
            return None;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        let period = self.config.interval.max(Duration::from_millis(1));
        Some(handle.spawn(async move {
            let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                timer.tick().await;
                let Some(detector) = weak.upgrade() else {
                    break;
                };
                let Some(set) = hosts_source() else { break };
                detector.tick(set.hosts(), Instant::now());
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::host::Locality;
    use crate::upstream::lb::LbConfig;
    use envoy_types::pb::google::protobuf::{BoolValue, Duration as PbDuration};
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicBool;

    fn hosts(n: u16) -> Vec<Arc<Host>> {
        (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([10, 1, 0, i as u8], 80));
                Arc::new(Host::new(addr, 1, 0, Locality::default()))
            })
            .collect()
    }

    fn fail(d: &OutlierDetector, hs: &[Arc<Host>], i: usize, n: u32, now: Instant) {
        for _ in 0..n {
            d.report_with(hs, &hs[i], Outcome::Status(500), || now);
        }
    }

    #[test]
    fn five_consecutive_5xx_eject_and_success_resets() {
        let d = OutlierDetector::new(OutlierConfig::default());
        let hs = hosts(3);
        let now = Instant::now();
        fail(&d, &hs, 0, 4, now);
        assert!(!hs[0].is_ejected());
        d.report(&hs, &hs[0], Outcome::Status(200));
        assert_eq!(hs[0].outlier.consecutive_5xx(), 0);
        fail(&d, &hs, 0, 4, now);
        assert!(!hs[0].is_ejected(), "a success must reset the run");
        fail(&d, &hs, 0, 1, now);
        assert!(hs[0].is_ejected());
        assert_eq!(d.ejections_total(), 1);
        assert_eq!(d.ejections_active(), 1);
        assert_eq!(
            hs[0].outlier.ejected_until(),
            Some(now + Duration::from_secs(30))
        );
        // 4xx is a success for outlier detection.
        fail(&d, &hs, 1, 4, now);
        d.report(&hs, &hs[1], Outcome::Status(404));
        fail(&d, &hs, 1, 4, now);
        assert!(!hs[1].is_ejected());
    }

    #[test]
    fn local_origin_errors_count_and_gateway_detector() {
        // Gateway detector enforced, 5xx detector off.
        let cfg = OutlierConfig {
            consecutive_5xx: 0,
            consecutive_gateway_failure: 3,
            enforcing_consecutive_gateway_failure: 100,
            max_ejection_percent: 100,
            ..Default::default()
        };
        let d = OutlierDetector::new(cfg);
        let hs = hosts(2);
        d.report(&hs, &hs[0], Outcome::ConnectFailure);
        d.report(&hs, &hs[0], Outcome::Timeout);
        d.report(&hs, &hs[0], Outcome::Status(500)); // 5xx but not gateway: resets the run
        d.report(&hs, &hs[0], Outcome::Reset);
        d.report(&hs, &hs[0], Outcome::Status(502));
        assert!(!hs[0].is_ejected());
        d.report(&hs, &hs[0], Outcome::Status(504));
        assert!(hs[0].is_ejected());
        // Default config: gateway detection does not enforce, 5xx does (on local errors too).
        let d = OutlierDetector::new(OutlierConfig::default());
        let hs = hosts(2);
        for _ in 0..5 {
            d.report(&hs, &hs[1], Outcome::ConnectFailure);
        }
        assert!(hs[1].is_ejected());
        assert_eq!(d.ejections_total(), 1);
    }

    #[test]
    fn ejection_time_grows_and_decays() {
        let cfg = OutlierConfig::default();
        let (base, interval) = (cfg.base_ejection_time, cfg.interval);
        let d = OutlierDetector::new(cfg);
        let hs = hosts(1);
        let mut now = Instant::now();
        for k in 1..=3u32 {
            fail(&d, &hs, 0, 5, now);
            assert!(hs[0].is_ejected());
            let until = hs[0].outlier.ejected_until().unwrap();
            assert_eq!(until - now, base * k, "ejection {k}");
            d.tick(&hs, until - Duration::from_millis(1));
            assert!(hs[0].is_ejected(), "returned early");
            d.tick(&hs, until);
            assert!(!hs[0].is_ejected(), "not returned");
            assert_eq!(d.ejections_active(), 0);
            now = until;
        }
        assert_eq!(hs[0].outlier.num_ejections(), 3);
        assert_eq!(hs[0].outlier.ejection_backoff(), 3);
        // A whole healthy interval decays the multiplier by one per sweep.
        d.tick(&hs, now + interval);
        assert_eq!(hs[0].outlier.ejection_backoff(), 2);
        d.tick(&hs, now + interval * 2);
        assert_eq!(hs[0].outlier.ejection_backoff(), 1);
        fail(&d, &hs, 0, 5, now + interval * 2);
        let until = hs[0].outlier.ejected_until().unwrap();
        assert_eq!(until - (now + interval * 2), base * 2);
    }

    #[test]
    fn ejection_time_capped() {
        let cfg = OutlierConfig {
            base_ejection_time: Duration::from_secs(100),
            max_ejection_time: Duration::from_secs(250),
            ..Default::default()
        };
        let d = OutlierDetector::new(cfg);
        let hs = hosts(1);
        let mut now = Instant::now();
        let mut got = vec![];
        for _ in 0..5 {
            fail(&d, &hs, 0, 5, now);
            let until = hs[0].outlier.ejected_until().unwrap();
            got.push((until - now).as_secs());
            d.tick(&hs, until);
            now = until;
        }
        assert_eq!(got, vec![100, 200, 250, 250, 250]);
    }

    #[test]
    fn max_ejection_percent_with_at_least_one() {
        // 5 hosts, 10%: the first ejection is allowed only thanks to "at least one".
        let d = OutlierDetector::new(OutlierConfig::default());
        let hs = hosts(5);
        let now = Instant::now();
        fail(&d, &hs, 0, 5, now);
        assert!(hs[0].is_ejected());
        fail(&d, &hs, 1, 5, now);
        assert!(!hs[1].is_ejected());
        assert_eq!(d.ejections_overflow(), 1);
        // Envoy's default behaviour without "at least one": nothing is ejected.
        let d = OutlierDetector::new(OutlierConfig {
            always_eject_one_host: false,
            ..Default::default()
        });
        let hs = hosts(5);
        fail(&d, &hs, 0, 5, now);
        assert!(!hs[0].is_ejected());
        // 50% of 4 hosts: two ejections, not three.
        let d = OutlierDetector::new(OutlierConfig {
            max_ejection_percent: 50,
            ..Default::default()
        });
        let hs = hosts(4);
        for i in 0..3 {
            fail(&d, &hs, i, 5, now);
        }
        assert_eq!(hs.iter().filter(|h| h.is_ejected()).count(), 2);
        assert_eq!(d.ejections_active(), 2);
        // A host not in the cluster any more is ignored.
        let stranger = hosts(1);
        for _ in 0..5 {
            d.report_with(&hs, &stranger[0], Outcome::Status(503), || now);
        }
        assert!(!stranger[0].is_ejected());
    }

    #[test]
    fn enforcement_zero_detects_without_ejecting() {
        let d = OutlierDetector::new(OutlierConfig {
            enforcing_consecutive_5xx: 0,
            ..Default::default()
        });
        let hs = hosts(1);
        fail(&d, &hs, 0, 20, Instant::now());
        assert!(!hs[0].is_ejected());
        assert_eq!(d.ejections_total(), 0);
    }

    #[test]
    fn tick_recounts_active_for_the_current_hosts() {
        let d = OutlierDetector::new(OutlierConfig {
            max_ejection_percent: 100,
            ..Default::default()
        });
        let hs = hosts(3);
        let now = Instant::now();
        fail(&d, &hs, 0, 5, now);
        fail(&d, &hs, 1, 5, now);
        assert_eq!(d.ejections_active(), 2);
        // Host 1 left the cluster: the sweep only sees the rest.
        let remaining = vec![hs[0].clone(), hs[2].clone()];
        d.tick(&remaining, now + Duration::from_secs(1));
        assert_eq!(d.ejections_active(), 1);
    }

    #[test]
    fn from_proto_defaults_and_refusals() {
        let c = OutlierConfig::from_proto(&OutlierDetection::default()).unwrap();
        assert_eq!(c, OutlierConfig::default());
        let p = OutlierDetection {
            consecutive_5xx: Some(UInt32Value { value: 7 }),
            base_ejection_time: Some(PbDuration {
                seconds: 600,
                nanos: 0,
            }),
            enforcing_success_rate: Some(UInt32Value { value: 0 }),
            max_ejection_percent: Some(UInt32Value { value: 250 }),
            always_eject_one_host: Some(BoolValue { value: false }),
            ..Default::default()
        };
        let c = OutlierConfig::from_proto(&p).unwrap();
        assert_eq!(c.consecutive_5xx, 7);
        assert_eq!(c.base_ejection_time, Duration::from_secs(600));
        // max defaults to max(300s, base).
        assert_eq!(c.max_ejection_time, Duration::from_secs(600));
        assert_eq!(c.max_ejection_percent, 100);
        assert!(!c.always_eject_one_host);

        let refused = [
            OutlierDetection {
                enforcing_success_rate: Some(UInt32Value { value: 101 }),
                ..Default::default()
            },
            OutlierDetection {
                failure_percentage_threshold: Some(UInt32Value { value: 101 }),
                ..Default::default()
            },
            OutlierDetection {
                split_external_local_origin_errors: true,
                enforcing_consecutive_local_origin_failure: Some(UInt32Value { value: 101 }),
                ..Default::default()
            },
            OutlierDetection {
                interval: Some(PbDuration::default()),
                ..Default::default()
            },
            OutlierDetection {
                max_ejection_time: Some(PbDuration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            },
            OutlierDetection {
                enforcing_consecutive_5xx: Some(UInt32Value { value: 101 }),
                ..Default::default()
            },
        ];
        for p in refused {
            assert!(OutlierConfig::from_proto(&p).is_err(), "{p:?}");
        }

        // Split errors as Istio sends them; local-origin success rate unset or 0, and ignored
        // (as by Envoy) when errors are not split.
        let p = OutlierDetection {
            split_external_local_origin_errors: true,
            consecutive_local_origin_failure: Some(UInt32Value { value: 3 }),
            enforcing_consecutive_local_origin_failure: Some(UInt32Value { value: 100 }),
            enforcing_local_origin_success_rate: Some(UInt32Value { value: 0 }),
            ..Default::default()
        };
        let c = OutlierConfig::from_proto(&p).unwrap();
        assert!(c.split_external_local_origin_errors);
        assert_eq!(c.consecutive_local_origin_failure, 3);
        assert_eq!(c.enforcing_consecutive_local_origin_failure, 100);
        // The rate detectors' settings.
        let p = OutlierDetection {
            enforcing_success_rate: Some(UInt32Value { value: 0 }),
            success_rate_minimum_hosts: Some(UInt32Value { value: 3 }),
            success_rate_request_volume: Some(UInt32Value { value: 20 }),
            success_rate_stdev_factor: Some(UInt32Value { value: 1000 }),
            failure_percentage_threshold: Some(UInt32Value { value: 50 }),
            enforcing_failure_percentage: Some(UInt32Value { value: 100 }),
            enforcing_failure_percentage_local_origin: Some(UInt32Value { value: 30 }),
            failure_percentage_minimum_hosts: Some(UInt32Value { value: 2 }),
            failure_percentage_request_volume: Some(UInt32Value { value: 10 }),
            ..Default::default()
        };
        let c = OutlierConfig::from_proto(&p).unwrap();
        assert_eq!(
            (
                c.enforcing_success_rate,
                c.success_rate_minimum_hosts,
                c.success_rate_request_volume,
                c.success_rate_stdev_factor
            ),
            (0, 3, 20, 1000)
        );
        assert_eq!(
            (
                c.failure_percentage_threshold,
                c.enforcing_failure_percentage,
                c.enforcing_failure_percentage_local_origin,
                c.failure_percentage_minimum_hosts,
                c.failure_percentage_request_volume
            ),
            (50, 100, 30, 2, 10)
        );
    }

    /// Reports `ok` successes and `bad` failures (`err`) to host `i`, interleaved so that no
    /// run of failures is longer than the ratio needs.
    fn mixed(d: &OutlierDetector, hs: &[Arc<Host>], i: usize, ok: u32, bad: u32, err: Outcome) {
        let (mut ok, mut bad) = (ok, bad);
        while ok + bad > 0 {
            if bad > 0 && (ok == 0 || bad >= ok) {
                d.report(hs, &hs[i], err);
                bad -= 1;
            }
            if ok > 0 {
                d.report(hs, &hs[i], Outcome::Status(200));
                ok -= 1;
            }
        }
    }

    #[test]
    fn success_rate_ejects_the_host_far_below_the_mean() {
        let cfg = OutlierConfig {
            success_rate_request_volume: 10,
            max_ejection_percent: 100,
            ..Default::default()
        };
        let d = OutlierDetector::new(cfg.clone());
        let hs = hosts(6);
        for i in 0..5 {
            mixed(&d, &hs, i, 10, 0, Outcome::Status(500));
        }
        // 50% against five hosts at 100%: mean 91.7, stdev 18.6, threshold 56.3.
        mixed(&d, &hs, 5, 5, 5, Outcome::Status(500));
        assert!(!hs[5].is_ejected(), "no consecutive run ejected it");
        let now = Instant::now();
        d.tick(&hs, now);
        assert!(hs[5].is_ejected());
        assert!(hs[..5].iter().all(|h| !h.is_ejected()));
        assert_eq!((d.ejections_total(), d.ejections_active()), (1, 1));

        // The buckets started over: an empty interval judges no one.
        d.tick(&hs, now);
        assert_eq!(d.ejections_total(), 1);

        // A host under the request volume is not judged, and four judged hosts are too few
        // (counting host 4 would make five, and eject both it and host 5).
        let d = OutlierDetector::new(cfg.clone());
        let hs = hosts(6);
        for i in 0..3 {
            mixed(&d, &hs, i, 10, 0, Outcome::Status(500));
        }
        mixed(&d, &hs, 4, 3, 5, Outcome::Status(503));
        mixed(&d, &hs, 5, 5, 5, Outcome::Status(500));
        d.tick(&hs, now);
        assert!(hs.iter().all(|h| !h.is_ejected()));

        // Not enforced: not even counted.
        let d = OutlierDetector::new(OutlierConfig {
            enforcing_success_rate: 0,
            ..cfg
        });
        let hs = hosts(6);
        for i in 0..5 {
            mixed(&d, &hs, i, 10, 0, Outcome::Status(500));
        }
        mixed(&d, &hs, 5, 5, 5, Outcome::Status(500));
        assert_eq!(hs[5].outlier.rates[0].total.load(Ordering::Relaxed), 0);
        d.tick(&hs, now);
        assert!(!hs[5].is_ejected());
    }

    #[test]
    fn failure_percentage_ejects_at_its_threshold() {
        let cfg = OutlierConfig {
            consecutive_5xx: 0,
            enforcing_success_rate: 0,
            enforcing_failure_percentage: 100,
            failure_percentage_request_volume: 10,
            max_ejection_percent: 100,
            ..Default::default()
        };
        let d = OutlierDetector::new(cfg);
        let hs = hosts(6);
        for i in 0..3 {
            mixed(&d, &hs, i, 10, 0, Outcome::Status(500));
        }
        mixed(&d, &hs, 3, 2, 8, Outcome::Reset); // 80%: below 85
        mixed(&d, &hs, 4, 1, 9, Outcome::Status(502)); // 90%
        mixed(&d, &hs, 5, 3, 17, Outcome::Status(500)); // 85%: the threshold itself ejects
        d.tick(&hs, Instant::now());
        assert!(hs[4].is_ejected() && hs[5].is_ejected());
        assert!(hs[..4].iter().all(|h| !h.is_ejected()));
    }

    #[test]
    fn split_success_rates_judge_each_origin_on_its_own() {
        // Local-origin success rate on (Envoy's default), the upstream's off.
        let cfg = OutlierConfig {
            split_external_local_origin_errors: true,
            consecutive_local_origin_failure: 0,
            consecutive_5xx: 0,
            enforcing_success_rate: 0,
            success_rate_request_volume: 10,
            max_ejection_percent: 100,
            ..Default::default()
        };
        let d = OutlierDetector::new(cfg.clone());
        let hs = hosts(7);
        for i in 0..5 {
            mixed(&d, &hs, i, 10, 0, Outcome::Status(500));
        }
        // Half its connections fail: a local-origin outlier.
        mixed(&d, &hs, 5, 5, 5, Outcome::ConnectFailure);
        // Every response a 503: the connections all worked, and upstream errors are not judged.
        for _ in 0..10 {
            d.report(&hs, &hs[6], Outcome::Status(503));
        }
        d.tick(&hs, Instant::now());
        assert!(hs[5].is_ejected());
        assert!(!hs[6].is_ejected());
        assert_eq!(d.ejections_total(), 1);

        // The upstream's success rate sees only answers: host 5's connect failures leave it at
        // 100% and host 6, failing half its answers, is the one outlier. (Were the connect
        // failures counted, both would sit at 50% and neither fall below the threshold.)
        let d = OutlierDetector::new(OutlierConfig {
            enforcing_success_rate: 100,
            enforcing_local_origin_success_rate: 0,
            ..cfg.clone()
        });
        let hs = hosts(7);
        for i in 0..5 {
            mixed(&d, &hs, i, 10, 0, Outcome::Status(500));
        }
        mixed(&d, &hs, 5, 10, 10, Outcome::ConnectFailure);
        mixed(&d, &hs, 6, 5, 5, Outcome::Status(503));
        d.tick(&hs, Instant::now());
        assert!(
            !hs[5].is_ejected(),
            "connect failures counted as upstream answers"
        );
        assert!(hs[6].is_ejected());

        // Local-origin failure percentage: connection attempts only.
        let d = OutlierDetector::new(OutlierConfig {
            enforcing_local_origin_success_rate: 0,
            enforcing_failure_percentage_local_origin: 100,
            failure_percentage_request_volume: 10,
            ..cfg
        });
        let hs = hosts(5);
        for i in 0..3 {
            mixed(&d, &hs, i, 10, 0, Outcome::Status(500));
        }
        mixed(&d, &hs, 3, 1, 9, Outcome::ConnectFailure);
        for _ in 0..10 {
            d.report(&hs, &hs[4], Outcome::Status(503));
        }
        d.tick(&hs, Instant::now());
        assert!(hs[3].is_ejected());
        assert!(
            !hs[4].is_ejected(),
            "upstream answers counted as connection failures"
        );
    }

    #[test]
    fn split_local_origin_errors_have_their_own_run() {
        let cfg = OutlierConfig {
            consecutive_5xx: 2,
            consecutive_gateway_failure: 2,
            enforcing_consecutive_gateway_failure: 100,
            split_external_local_origin_errors: true,
            consecutive_local_origin_failure: 3,
            max_ejection_percent: 100,
            ..Default::default()
        };
        let d = OutlierDetector::new(cfg.clone());
        let hs = hosts(3);
        // Local errors neither count towards nor end a run of upstream 5xx.
        d.report(&hs, &hs[0], Outcome::Status(503));
        d.report(&hs, &hs[0], Outcome::ConnectFailure);
        d.report(&hs, &hs[0], Outcome::Timeout);
        assert_eq!(hs[0].outlier.consecutive_5xx(), 1);
        assert_eq!(hs[0].outlier.consecutive_gateway_failure(), 1);
        assert_eq!(hs[0].outlier.consecutive_local_origin_failure(), 2);
        assert!(!hs[0].is_ejected());
        // Any response ends the local run, a 5xx one included; the 5xx run goes on.
        d.report(&hs, &hs[0], Outcome::Status(500));
        assert_eq!(hs[0].outlier.consecutive_local_origin_failure(), 0);
        assert!(
            hs[0].is_ejected(),
            "second consecutive 5xx from the upstream"
        );

        // Three local errors in a row eject; without split, two would have (5xx run).
        d.report(&hs, &hs[1], Outcome::Reset);
        d.report(&hs, &hs[1], Outcome::ConnectFailure);
        assert!(!hs[1].is_ejected());
        d.report(&hs, &hs[1], Outcome::ConnectFailure);
        assert!(hs[1].is_ejected());
        assert_eq!(d.ejections_total(), 2);

        // Enforcement 0: detected, not ejected; the run restarts.
        let d = OutlierDetector::new(OutlierConfig {
            enforcing_consecutive_local_origin_failure: 0,
            ..cfg.clone()
        });
        for _ in 0..3 {
            d.report(&hs, &hs[2], Outcome::ConnectFailure);
        }
        assert!(!hs[2].is_ejected());
        assert_eq!(hs[2].outlier.consecutive_local_origin_failure(), 0);

        // Unsplit, the same local errors are 5xx and gateway errors.
        let d = OutlierDetector::new(OutlierConfig {
            split_external_local_origin_errors: false,
            ..cfg
        });
        let hs = hosts(2);
        d.report(&hs, &hs[0], Outcome::ConnectFailure);
        d.report(&hs, &hs[0], Outcome::Timeout);
        assert!(hs[0].is_ejected());
        assert_eq!(hs[0].outlier.consecutive_local_origin_failure(), 0);
    }

    #[test]
    fn ejection_moves_health_epoch() {
        let hs = hosts(1);
        let before = health_epoch();
        hs[0]
            .outlier
            .mark_ejected(Instant::now(), Duration::from_secs(1));
        assert!(health_epoch() > before);
    }

    #[test]
    fn ticker_returns_hosts_and_stops() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let d = Arc::new(OutlierDetector::new(OutlierConfig {
                interval: Duration::from_millis(10),
                base_ejection_time: Duration::from_millis(20),
                ..Default::default()
            }));
            let set = Arc::new(EndpointSet::new(hosts(2), &LbConfig::default()));
            for _ in 0..5 {
                d.report(set.hosts(), &set.hosts()[0], Outcome::Status(503));
            }
            assert!(set.hosts()[0].is_ejected());
            let alive = Arc::new(AtomicBool::new(true));
            let (a, s) = (alive.clone(), set.clone());
            let task = d
                .spawn_ticker(move || a.load(Ordering::SeqCst).then(|| s.clone()))
                .unwrap();
            tokio::time::timeout(Duration::from_secs(5), async {
                while set.hosts()[0].is_ejected() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("host returned to service");
            alive.store(false, Ordering::SeqCst);
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("ticker stopped")
                .unwrap();
        });
        // Outside a runtime: no task, no panic.
        let d = Arc::new(OutlierDetector::new(OutlierConfig::default()));
        assert!(d.spawn_ticker(|| None).is_none());
    }
}
