//! The control plane under test: `weft up DIR --xds ADDR --api ADDR` as a child process, and
//! what `/proc` says about it (RSS, peak RSS, CPU time).
//!
//! It exists so the control plane runs in its own process (its RSS is its own, and SIGKILL is a
//! real crash) and so it can never outlive the benchmark: dropping a [`ControlPlane`] kills it.
//! It must only ever bind and contact 127.0.0.1.

use anyhow::{Context, Result, bail};
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start the control plane (kept to restart it identically).
#[derive(Debug, Clone)]
pub struct Spec {
    pub weft: PathBuf,
    pub dir: PathBuf,
    pub xds: SocketAddr,
    pub api: SocketAddr,
    pub log: PathBuf,
    pub log_level: String,
}

/// A running `weft up`; killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct ControlPlane {
    child: Child,
    pub pid: u32,
    pub started: Instant,
}

impl ControlPlane {
    pub fn start(spec: &Spec) -> Result<Self> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("opening {}", spec.log.display()))?;
        let err = log.try_clone().context("duplicating the log handle")?;
        let started = Instant::now();
        let child = Command::new(&spec.weft)
            .arg("--log-level")
            .arg(&spec.log_level)
            .arg("up")
            .arg(&spec.dir)
            .arg("--xds")
            .arg(spec.xds.to_string())
            .arg("--api")
            .arg(spec.api.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", spec.weft.display()))?;
        let pid = child.id();
        Ok(Self {
            child,
            pid,
            started,
        })
    }

    /// Waits until both ports accept connections (the directory is loaded by then). Returns
    /// the time since start.
    pub async fn wait_listening(&mut self, spec: &Spec, limit: Duration) -> Result<Duration> {
        let deadline = Instant::now() + limit;
        for addr in [spec.xds, spec.api] {
            loop {
                if let Some(status) = self.child.try_wait().context("polling the child")? {
                    bail!(
                        "the control plane exited ({status}) before listening; see {}",
                        spec.log.display()
                    );
                }
                let attempt = tokio::time::timeout(
                    Duration::from_millis(500),
                    tokio::net::TcpStream::connect(addr),
                )
                .await;
                if matches!(attempt, Ok(Ok(_))) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "the control plane does not listen on {addr} after {limit:?}; see {}",
                        spec.log.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(self.started.elapsed())
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL and reap; returns the CPU ticks it used (read right before the kill).
    pub fn kill(mut self) -> Option<u64> {
        let ticks = self.cpu_ticks();
        self.kill_now();
        ticks
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn mem(&self) -> Mem {
        Mem::read(self.pid)
    }

    /// utime + stime so far, in clock ticks.
    pub fn cpu_ticks(&self) -> Option<u64> {
        cpu_ticks(self.pid)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// VmRSS and VmHWM of a process, in kB (`None` when unreadable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mem {
    pub rss_kb: Option<u64>,
    pub hwm_kb: Option<u64>,
}

impl Mem {
    pub fn read(pid: u32) -> Mem {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| parse_status(&s))
            .unwrap_or_default()
    }
}

fn parse_status(text: &str) -> Mem {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Mem {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
    }
}

/// CPU time the whole machine spent (user, nice, system, irq, softirq, steal), clock ticks.
pub fn machine_busy_ticks() -> Option<u64> {
    parse_busy(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Some([0, 1, 2, 5, 6, 7].iter().filter_map(|i| f.get(*i)).sum())
}

/// utime + stime of this process so far, clock ticks.
pub fn own_cpu_ticks() -> Option<u64> {
    cpu_ticks(std::process::id())
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime from a `/proc/PID/stat` line (fields 14 and 15; the command name may contain
/// spaces and parentheses, so count from the last `)`).
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Two free loopback ports (bound on 127.0.0.1:0, then released).
pub fn free_ports() -> Result<(SocketAddr, SocketAddr)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok((a.local_addr()?, b.local_addr()?))
}

/// The last lines of the control plane's log, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tweft\nVmPeak:\t  9999 kB\nVmHWM:\t   45678 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(
            parse_status(status),
            Mem {
                rss_kb: Some(12345),
                hwm_kb: Some(45678)
            }
        );
        assert_eq!(parse_status("Name: x\n"), Mem::default());
        let stat = "4242 (we ft) S 1 4242 4242 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 3 0 100";
        assert_eq!(parse_stat_ticks(stat), Some(22));
        assert_eq!(parse_stat_ticks("garbage"), None);
        let proc_stat = "cpu  10 1 5 1000 7 2 3 4 0 0\ncpu0 5 0 2 500 3 1 1 2 0 0\n";
        assert_eq!(parse_busy(proc_stat), Some(10 + 1 + 5 + 2 + 3 + 4));
        assert_eq!(parse_busy("intr 1 2\n"), None);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let m = Mem::read(me);
        assert!(m.rss_kb.is_some_and(|k| k > 0));
        assert!(m.hwm_kb >= m.rss_kb);
        assert!(cpu_ticks(me).is_some());
        assert!(own_cpu_ticks().is_some() && machine_busy_ticks().is_some());
        let (a, b) = free_ports().expect("ports");
        assert_ne!(a, b);
        assert!(a.ip().is_loopback());
    }
}
