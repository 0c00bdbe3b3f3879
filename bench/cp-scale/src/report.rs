//! The figures of one run and their markdown table (the format `bench/proxy.sh` prints: one
//! table, metric rows, then how it was measured).
//!
//! It exists to keep formatting apart from measuring; it must not measure anything nor judge
//! anything but the two stated targets (change → all ACKed p99 < 1 s, RSS < 300 MB).

use crate::cp::Mem;
use crate::mesh::Scale;
use std::fmt::Write as _;
use std::time::Duration;

/// Target: a config change is ACKed by every proxy within this (debounce included), at p99.
pub const CHANGE_TARGET: Duration = Duration::from_secs(1);
/// Target: control-plane RSS, in MB (10^6 bytes, as the issue states it).
pub const RSS_TARGET_MB: f64 = 300.0;

/// How long each of `total` clients took to reach a state; `done` may be fewer on timeout.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fleet {
    pub total: usize,
    /// Per client that got there, sorted.
    pub times: Vec<Duration>,
}

impl Fleet {
    pub fn complete(&self) -> bool {
        self.times.len() == self.total
    }

    /// The time to the last client, if all got there.
    pub fn last(&self) -> Option<Duration> {
        if self.complete() {
            self.times.last().copied()
        } else {
            None
        }
    }

    pub fn first(&self) -> Option<Duration> {
        self.times.first().copied()
    }

    /// "1.23 s" or "timeout (150/200 clients)".
    pub fn show_last(&self) -> String {
        match self.last() {
            Some(d) => dur(d),
            None => format!("timeout ({}/{} clients)", self.times.len(), self.total),
        }
    }
}

/// The endpoint-change step.
#[derive(Debug, Clone, Default)]
pub struct EndpointChange {
    pub fleet: Fleet,
    /// Fewest and most ClusterLoadAssignments one client received for the edit.
    pub clas_min: usize,
    pub clas_max: usize,
    /// Names the inspector client received.
    pub names: Vec<String>,
    pub expected: Vec<String>,
    /// Updates of other types (LDS/CDS/RDS) any client received meanwhile.
    pub other_updates: usize,
}

/// Average CPU use over a phase, in vCPU (CPU-seconds per second).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// The cp-scale process (the simulated clients).
    pub bench: f64,
    pub control_plane: f64,
    /// The whole machine minus both: a compile or a neighbour competing for the cores.
    pub other: f64,
}

impl Load {
    fn show(&self) -> String {
        format!(
            "{:.2} / {:.2} / {:.2}",
            self.control_plane, self.bench, self.other
        )
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub scale: Option<Scale>,
    pub clients: usize,
    pub files: usize,
    pub listening: Duration,
    pub initial: Fleet,
    /// Per client after the initial push: listeners, routes, clusters, CLAs, bytes.
    pub per_client: [usize; 5],
    /// Per change run: every client's time to the new route.
    pub changes: Vec<Fleet>,
    pub route_checked: Option<bool>,
    /// CPU seconds the control plane used per change run.
    pub change_cpu_s: Option<f64>,
    pub endpoint: EndpointChange,
    pub restart_full: Fleet,
    pub restart_full_listening: Duration,
    pub restart_resume: Fleet,
    /// Resources resent in all to clients that reported what they held.
    pub resume_resent: usize,
    pub mem_initial: Mem,
    pub mem_changes: Mem,
    pub mem_restart: Mem,
    pub non_eds: usize,
    pub undecodable: usize,
    /// During the change runs, and over the whole run.
    pub load_changes: Option<Load>,
    pub load_all: Option<Load>,
}

/// Nearest-rank percentile (`p` in 0..=100) of sorted values.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// `850 ms`, `12.3 ms`, `1.23 s`.
pub fn dur(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn mb(kb: Option<u64>) -> Option<f64> {
    kb.map(|k| k as f64 * 1024.0 / 1e6)
}

fn show_mb(kb: Option<u64>) -> String {
    mb(kb).map_or_else(|| "—".into(), |m| format!("{m:.1} MB"))
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "—",
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Results {
    /// p50 and p99 over the change runs of the time to the last client (timeouts count as
    /// slower than any completed run).
    pub fn change_percentiles(&self) -> (Option<Duration>, Option<Duration>, usize) {
        let mut last: Vec<Duration> = self.changes.iter().filter_map(Fleet::last).collect();
        let timeouts = self.changes.len() - last.len();
        last.extend(std::iter::repeat_n(Duration::MAX, timeouts));
        last.sort();
        let p = |q| percentile(&last, q).filter(|d| *d != Duration::MAX);
        (p(50.0), p(99.0), timeouts)
    }

    fn first_p50(&self) -> Option<Duration> {
        let mut first: Vec<Duration> = self.changes.iter().filter_map(Fleet::first).collect();
        first.sort();
        percentile(&first, 50.0)
    }

    /// Whether the RSS target was met (peak over both control-plane processes).
    pub fn rss_ok(&self) -> Option<bool> {
        let peaks = [
            self.mem_initial.hwm_kb,
            self.mem_changes.hwm_kb,
            self.mem_restart.hwm_kb,
        ];
        let max = peaks.into_iter().flatten().max()?;
        mb(Some(max)).map(|m| m < RSS_TARGET_MB)
    }

    pub fn change_ok(&self) -> Option<bool> {
        if self.changes.is_empty() {
            return None;
        }
        Some(
            self.change_percentiles()
                .1
                .is_some_and(|p| p < CHANGE_TARGET),
        )
    }

    /// The markdown table and the notes under it.
    pub fn markdown(&self) -> String {
        let mut t = String::new();
        let (p50, p99, timeouts) = self.change_percentiles();
        let opt = |d: Option<Duration>| d.map_or_else(|| "—".to_string(), dur);
        let _ = writeln!(t, "| metric | value | target |");
        let _ = writeln!(t, "|---|---|---|");
        let row = |t: &mut String, m: &str, v: String, target: String| {
            let _ = writeln!(t, "| {m} | {v} | {target} |");
        };
        row(
            &mut t,
            "control plane start → xDS and API listening",
            dur(self.listening),
            "—".into(),
        );
        row(
            &mut t,
            &format!(
                "initial full push: all {} clients have LDS+CDS+RDS+EDS",
                self.clients
            ),
            self.initial.show_last(),
            "—".into(),
        );
        row(
            &mut t,
            &format!(
                "config change → last ACK, p50 over {} runs",
                self.changes.len()
            ),
            opt(p50),
            "—".into(),
        );
        row(
            &mut t,
            &format!(
                "config change → last ACK, p99 over {} runs",
                self.changes.len()
            ),
            if timeouts > 0 && p99.is_none() {
                format!("timeout in {timeouts} run(s)")
            } else {
                opt(p99)
            },
            format!("< 1 s incl. debounce: {}", verdict(self.change_ok())),
        );
        row(
            &mut t,
            "config change → first ACK, p50",
            opt(self.first_p50()),
            "—".into(),
        );
        row(
            &mut t,
            "control-plane CPU per config change",
            self.change_cpu_s
                .map_or_else(|| "—".into(), |s| format!("{:.0} ms", s * 1000.0)),
            "—".into(),
        );
        let e = &self.endpoint;
        row(
            &mut t,
            "endpoint change → last ACK",
            e.fleet.show_last(),
            "—".into(),
        );
        let only = e.clas_max == e.expected.len() && e.clas_min == e.expected.len();
        row(
            &mut t,
            "endpoint change: CLAs pushed per client (other types pushed)",
            format!(
                "{}{} ({})",
                e.clas_min,
                if e.clas_max != e.clas_min {
                    format!("–{}", e.clas_max)
                } else {
                    String::new()
                },
                e.other_updates
            ),
            format!(
                "only the {} affected, no other type: {}",
                e.expected.len(),
                verdict(Some(only && e.other_updates == 0))
            ),
        );
        row(
            &mut t,
            "restart (SIGKILL) → all clients have a full config again",
            self.restart_full.show_last(),
            "—".into(),
        );
        row(
            &mut t,
            "restart → all clients resynced (reconnect with known versions, as weft-proxy)",
            self.restart_resume.show_last(),
            "—".into(),
        );
        row(
            &mut t,
            "control-plane RSS after initial push (VmRSS)",
            show_mb(self.mem_initial.rss_kb),
            "< 300 MB".into(),
        );
        row(
            &mut t,
            "control-plane RSS after the changes (VmRSS)",
            show_mb(self.mem_changes.rss_kb),
            "< 300 MB".into(),
        );
        row(
            &mut t,
            "control-plane peak RSS, first process (VmHWM)",
            show_mb(self.mem_changes.hwm_kb),
            format!("< 300 MB: {}", verdict(self.rss_ok())),
        );
        row(
            &mut t,
            "control-plane RSS / peak after restart + full push",
            format!(
                "{} / {}",
                show_mb(self.mem_restart.rss_kb),
                show_mb(self.mem_restart.hwm_kb)
            ),
            "< 300 MB".into(),
        );
        let load = |l: &Option<Load>| l.map_or_else(|| "—".into(), |l| l.show());
        row(
            &mut t,
            "CPU during the change runs: control plane / clients / other (vCPU)",
            load(&self.load_changes),
            "other ≈ 0 for a clean run".into(),
        );
        row(
            &mut t,
            "CPU over the whole run: control plane / clients / other (vCPU)",
            load(&self.load_all),
            "other ≈ 0 for a clean run".into(),
        );
        let _ = writeln!(t);
        if let Some(s) = &self.scale {
            let _ = writeln!(
                t,
                "Mesh: {} ServiceEntries (STATIC, port 8080 HTTP), {} endpoints, {} DestinationRules (2 subsets), {} VirtualServices — {} files in the watched directory; {} simulated sidecars (delta ADS, `weft_xds::client::XdsClient`, namespace bench) in one process.",
                thousands(s.services),
                thousands(s.endpoints()),
                s.with_subsets,
                s.with_routes,
                thousands(self.files),
                self.clients
            );
        }
        let [l, r, c, eds, bytes] = self.per_client;
        let _ = writeln!(
            t,
            "Per client: {l} listener, {r} route config, {} clusters, {} endpoint assignments, {:.1} MB of resources; × {} clients = {:.0} MB pushed in a full push.",
            thousands(c),
            thousands(eds),
            bytes as f64 / 1e6,
            self.clients,
            (bytes * self.clients) as f64 / 1e6,
        );
        let _ = writeln!(
            t,
            "Times are from the file write (rename) or the process start to the handler's apply of the update, which the client ACKs at once; each run's value is its *last* client. The control plane polls its directory every 250 ms and debounces 100 ms, so a change waits 100–350 ms before translation starts. Initial push: clients start once the control plane is past its 1 s start-up warm-up; restart times include that warm-up (by design: it waits for proxies to reconnect) and the clients' reconnect backoff (50–100 ms, doubling)."
        );
        if let Some(ok) = self.route_checked {
            let _ = writeln!(
                t,
                "Route check: the decoded `outbound` route {} the new weight after every run.",
                if ok {
                    "carried"
                } else {
                    "did **not** always carry"
                }
            );
        }
        let _ = writeln!(
            t,
            "Endpoint edit: endpoint 0 (v1) of svc-0 moved; expected {}; received by one client: {}. Restart (full push) listening after {}. Resumed clients were resent {} resources in all.",
            e.expected.join(", "),
            if e.names.is_empty() {
                "—".to_string()
            } else {
                e.names.join(", ")
            },
            dur(self.restart_full_listening),
            self.resume_resent
        );
        if let Some(l) = self.load_changes.filter(|l| l.other > 0.1) {
            let _ = writeln!(
                t,
                "**Not a clean run**: other processes used {:.2} vCPU during the change runs (2 vCPU in all).",
                l.other
            );
        }
        if self.non_eds > 0 || self.undecodable > 0 {
            let _ = writeln!(
                t,
                "Oddities: {} non-EDS clusters, {} resources that did not decode.",
                self.non_eds, self.undecodable
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=20).map(ms).collect();
        assert_eq!(percentile(&v, 50.0), Some(ms(10)));
        assert_eq!(percentile(&v, 99.0), Some(ms(20)));
        assert_eq!(percentile(&v, 0.0), Some(ms(1)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn durations_and_numbers_format() {
        assert_eq!(dur(ms(850)), "850 ms");
        assert_eq!(dur(Duration::from_micros(1234)), "1.2 ms");
        assert_eq!(dur(ms(1234)), "1.23 s");
        assert_eq!(thousands(5000), "5,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn targets_and_timeouts() {
        let done = |v: u64| Fleet {
            total: 2,
            times: vec![ms(v / 2), ms(v)],
        };
        let mut r = Results {
            changes: vec![done(300), done(400), done(900)],
            ..Default::default()
        };
        assert_eq!(r.change_percentiles(), (Some(ms(400)), Some(ms(900)), 0));
        assert_eq!(r.change_ok(), Some(true));
        r.changes.push(Fleet {
            total: 2,
            times: vec![ms(10)],
        });
        let (_, p99, timeouts) = r.change_percentiles();
        assert_eq!((p99, timeouts), (None, 1));
        assert_eq!(r.change_ok(), Some(false));
        assert!(r.markdown().contains("timeout in 1 run(s)"));
        r.mem_changes.hwm_kb = Some(200_000);
        assert_eq!(r.rss_ok(), Some(true));
        r.mem_restart.hwm_kb = Some(400_000);
        assert_eq!(r.rss_ok(), Some(false), "409.6 MB");
    }
}
