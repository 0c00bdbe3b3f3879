//! End-to-end harness for `weft-proxy`: runs the real binary on an Envoy v3 bootstrap rendered
//! from a template, next to upstream test servers (HTTP/1.1 + h2c echo, TCP echo, server-first
//! TCP, WebSocket echo, gRPC) that live on the test's tokio runtime, and drives it with real
//! clients (hyper, tonic, tungstenite, curl, h2load).
//!
//! It exists so that every e2e test states only what it checks. It must not talk to anything
//! but 127.0.0.1, must not wait without a deadline, must not sleep where it can poll, and must
//! not leave a process or task behind: everything it starts stops on drop. It must not hide
//! what the proxy said either: dropping a [`Proxy`] writes its bootstrap, stdout/stderr and
//! access log to the test's captured output, which `cargo test` shows only when a test fails.
#![allow(dead_code)]

use std::convert::Infallible;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

/// The binary under test.
pub const PROXY_BIN: &str = env!("CARGO_BIN_EXE_weft-proxy");
/// How long a started proxy may take to answer `GET /ready` with 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline of one client request (connect + response + body).
pub const REQ_TIMEOUT: Duration = Duration::from_secs(15);
/// Default deadline for "eventually" conditions (reloads, ejections, log lines).
pub const WAIT: Duration = Duration::from_secs(10);
/// Poll period of [`eventually`].
pub const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------------
// Time limits and polling
// ---------------------------------------------------------------------------------------------

/// Runs a whole test body under a deadline, so that no test can hang.
pub async fn within<T>(secs: u64, fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .map_err(|_| anyhow!("test did not finish within {secs} s"))?
}

/// Polls `probe` every [`POLL`] until it yields `Some`, or fails after `timeout`.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// A 127.0.0.1 port that was free a moment ago. Only the proxy's own ports are picked this way;
/// upstream servers keep their listener.
///
/// Ports come from just below the kernel's ephemeral range, walked from a per-process random
/// start: a port from `bind(0)` could be handed out again — to another test's `bind(0)` or as
/// the source port of any outgoing connection — between being picked and being bound by the
/// proxy; ports outside that range never are.
pub fn free_port() -> u16 {
    static NEXT: LazyLock<(u16, u16, AtomicU16)> = LazyLock::new(|| {
        let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
        let (lo, hi) = if low > 12_000 {
            (low - 10_000, low)
        } else {
            (0, 0)
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id().wrapping_mul(2_654_435_761);
        let span = u32::from(hi - lo).max(1);
        (lo, hi, AtomicU16::new((seed % span) as u16))
    });
    let (lo, hi, next) = &*NEXT;
    if hi > lo {
        for _ in 0..2_000 {
            let p = lo + next.fetch_add(1, Ordering::Relaxed) % (hi - lo);
            if StdTcpListener::bind(("127.0.0.1", p)).is_ok() {
                return p;
            }
        }
    }
    let l = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr of a bound socket").port()
}

/// A 127.0.0.1 address with nothing listening on it (for connect-failure tests).
pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------------------------------------
// Bootstrap YAML
// ---------------------------------------------------------------------------------------------

/// Replaces every `{{KEY}}` in `template`.
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    s
}

/// Re-indents a YAML block: drops blank lines at both ends, removes the common leading
/// indentation, then prefixes every line with `n` spaces. Lets tests write YAML in raw strings
/// at whatever indentation the Rust code has.
pub fn indent(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.iter().position(|l| !l.trim().is_empty());
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    let (Some(first), Some(last)) = (first, last) else {
        return String::new();
    };
    let lines = &lines[first..=last];
    let min = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let pad = " ".repeat(n);
    let mut out = String::new();
    for l in lines {
        if l.trim().is_empty() {
            out.push('\n');
        } else {
            out.push_str(&pad);
            out.push_str(&l[min..]);
            out.push('\n');
        }
    }
    out
}

/// The router filter every HTTP connection manager here ends with.
pub const ROUTER_FILTER: &str = r#"
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#;

/// Upstream HTTP/2 (h2c) for a cluster: `typed_extension_protocol_options` with
/// `explicit_http_config.http2_protocol_options`.
pub const H2_UPSTREAM: &str = r#"
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config:
      http2_protocol_options: {}
"#;

/// A file access log (Envoy's default text format) at `{{DIR}}/access.log`.
pub const FILE_ACCESS_LOG: &str = r#"
access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: "{{DIR}}/access.log"
"#;

/// A whole bootstrap: admin on `{{ADMIN_PORT}}` plus the given listener and cluster list items
/// (each a column-0 YAML block starting with `- name:`).
pub fn bootstrap(listeners: &[String], clusters: &[String]) -> String {
    let mut s = String::from(
        "admin:\n  address:\n    socket_address: { address: 127.0.0.1, port_value: {{ADMIN_PORT}} }\n",
    );
    s.push_str("static_resources:\n");
    if listeners.is_empty() {
        s.push_str("  listeners: []\n");
    } else {
        s.push_str("  listeners:\n");
        for l in listeners {
            s.push_str(&indent(l, 2));
        }
    }
    if clusters.is_empty() {
        s.push_str("  clusters: []\n");
    } else {
        s.push_str("  clusters:\n");
        for c in clusters {
            s.push_str(&indent(c, 2));
        }
    }
    s
}

/// A STATIC cluster with the given endpoints (in that order) and extra cluster fields
/// (column-0 YAML, e.g. `lb_policy: RING_HASH`).
pub fn cluster(name: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    let mut s = format!(
        "- name: {name}\n  type: STATIC\n  connect_timeout: 1s\n  load_assignment:\n    cluster_name: {name}\n"
    );
    if endpoints.is_empty() {
        s.push_str("    endpoints: []\n");
    } else {
        s.push_str("    endpoints:\n    - lb_endpoints:\n");
        for a in endpoints {
            s.push_str(&format!(
                "      - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n",
                a.ip(),
                a.port()
            ));
        }
    }
    s.push_str(&indent(extra, 2));
    s
}

/// A STATIC cluster whose upstream protocol is HTTP/2 (h2c).
pub fn h2_cluster(name: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    let mut all = indent(H2_UPSTREAM, 0);
    all.push_str(&indent(extra, 0));
    cluster(name, endpoints, &all)
}

/// The `envoy.filters.network.http_connection_manager` filter list item (column 0) with an
/// inline route config. `vhosts` is the column-0 `virtual_hosts` list; `hcm_extra` holds more
/// HttpConnectionManager fields (column 0).
pub fn hcm_filter(stat_prefix: &str, vhosts: &str, hcm_extra: &str) -> String {
    let mut s = String::from(
        "- name: envoy.filters.network.http_connection_manager\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n",
    );
    s.push_str(&format!(
        "    stat_prefix: {stat_prefix}\n    codec_type: AUTO\n"
    ));
    s.push_str(&indent(hcm_extra, 4));
    s.push_str(&format!(
        "    route_config:\n      name: {stat_prefix}_routes\n      virtual_hosts:\n"
    ));
    s.push_str(&indent(vhosts, 6));
    s.push_str("    http_filters:\n");
    s.push_str(&indent(ROUTER_FILTER, 4));
    s
}

/// The `envoy.filters.network.tcp_proxy` filter list item (column 0).
pub fn tcp_proxy_filter(stat_prefix: &str, cluster: &str) -> String {
    format!(
        "- name: envoy.filters.network.tcp_proxy\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n    stat_prefix: {stat_prefix}\n    cluster: {cluster}\n"
    )
}

/// `address:` line of a 127.0.0.1 listener (column 2, i.e. inside a listener list item).
fn listener_head(name: &str, port: u16) -> String {
    format!(
        "- name: {name}\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}\n"
    )
}

/// A listener with a single tcp_proxy filter chain (no listener filters: server-first
/// protocols get their bytes at once).
pub fn tcp_listener(name: &str, port: u16, cluster: &str) -> String {
    let mut s = listener_head(name, port);
    s.push_str("  filter_chains:\n  - filters:\n");
    s.push_str(&indent(&tcp_proxy_filter(name, cluster), 4));
    s
}

/// A listener whose filter chains are given as column-0 YAML (for TLS, protocol detection...).
pub fn custom_listener(name: &str, port: u16, body: &str) -> String {
    let mut s = listener_head(name, port);
    s.push_str(&indent(body, 2));
    s
}

/// Builder for the common case: one HTTP connection manager listener.
#[derive(Clone, Debug)]
pub struct HttpListener {
    name: String,
    port: u16,
    vhosts: String,
    hcm_extra: String,
    listener_extra: String,
    access_log: bool,
}

pub fn http_listener(name: &str, port: u16, vhosts: &str) -> HttpListener {
    HttpListener {
        name: name.to_string(),
        port,
        vhosts: vhosts.to_string(),
        hcm_extra: String::new(),
        listener_extra: String::new(),
        access_log: true,
    }
}

impl HttpListener {
    /// More HttpConnectionManager fields (column-0 YAML).
    pub fn hcm(mut self, extra: &str) -> Self {
        self.hcm_extra.push_str(&indent(extra, 0));
        self
    }
    /// More Listener fields (column-0 YAML), e.g. `per_connection_buffer_limit_bytes`.
    pub fn listener(mut self, extra: &str) -> Self {
        self.listener_extra.push_str(&indent(extra, 0));
        self
    }
    /// Leaves out the default file access log (e.g. when the test configures its own).
    pub fn no_access_log(mut self) -> Self {
        self.access_log = false;
        self
    }
    pub fn build(&self) -> String {
        let mut extra = String::new();
        if self.access_log {
            extra.push_str(&indent(FILE_ACCESS_LOG, 0));
        }
        extra.push_str(&self.hcm_extra);
        let mut s = listener_head(&self.name, self.port);
        s.push_str(&indent(&self.listener_extra, 2));
        s.push_str("  filter_chains:\n  - filters:\n");
        s.push_str(&indent(&hcm_filter(&self.name, &self.vhosts, &extra), 4));
        s
    }
}

/// One virtual host `name` for `domains` ("*" etc.) sending every path to `cluster`.
pub fn vhost_to(name: &str, domains: &str, cluster: &str) -> String {
    format!(
        "- name: {name}\n  domains: [{domains}]\n  routes:\n  - match: {{ prefix: \"/\" }}\n    route: {{ cluster: {cluster} }}\n"
    )
}

/// The simplest useful bootstrap: one HTTP listener on `port`, every request to cluster `web`
/// made of `endpoints`.
pub fn simple_http_bootstrap(port: u16, endpoints: &[SocketAddr]) -> String {
    bootstrap(
        &[http_listener("main", port, &vhost_to("all", "\"*\"", "web")).build()],
        &[cluster("web", endpoints, "")],
    )
}

// ---------------------------------------------------------------------------------------------
// The proxy process
// ---------------------------------------------------------------------------------------------

/// A running `weft-proxy`: its temp dir holds `bootstrap.yaml`, `stdout.log`, `stderr.log`,
/// `access.log` (where the bootstrap says so), and a self-signed `cert.pem`/`key.pem` for
/// 127.0.0.1/localhost. Killed (SIGKILL) on drop unless it already exited.
pub struct Proxy {
    child: Mutex<Child>,
    pid: u32,
    dir: tempfile::TempDir,
    pub admin: SocketAddr,
    http: Http,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("pid", &self.pid)
            .field("dir", &self.dir.path())
            .field("admin", &self.admin)
            .finish()
    }
}

impl Proxy {
    /// Starts the proxy with `--concurrency 1` and waits until `/ready` answers 200.
    pub async fn start(template: &str) -> Result<Proxy> {
        Self::start_with(template, &["--concurrency", "1"]).await
    }

    /// Starts the proxy with exactly `args` after `-c BOOTSTRAP` and waits until ready.
    pub async fn start_with(template: &str, args: &[&str]) -> Result<Proxy> {
        let p = Self::spawn(template, args)?;
        p.wait_ready().await?;
        Ok(p)
    }

    /// Starts the proxy without waiting for anything.
    pub fn spawn(template: &str, args: &[&str]) -> Result<Proxy> {
        let dir = tempfile::Builder::new()
            .prefix("weft-e2e-")
            .tempdir()
            .context("creating temp dir")?;
        write_self_signed(dir.path())?;
        let admin = local(free_port());
        let bootstrap = dir.path().join("bootstrap.yaml");
        std::fs::write(&bootstrap, render_bootstrap(template, admin, dir.path())?)
            .context("writing bootstrap")?;
        let out = File::create(dir.path().join("stdout.log"))?;
        let err = File::create(dir.path().join("stderr.log"))?;
        let child = Command::new(PROXY_BIN)
            .arg("-c")
            .arg(&bootstrap)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {PROXY_BIN}"))?;
        let pid = child.id();
        Ok(Proxy {
            child: Mutex::new(child),
            pid,
            dir,
            admin,
            http: Http::h1().with_timeout(Duration::from_secs(5)),
        })
    }

    /// Runs the proxy until it exits by itself (config-error tests). Fails if it is still
    /// running after `timeout`. Returns the exit status and stdout+stderr.
    pub async fn run_to_exit(
        template: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<(ExitStatus, String)> {
        let p = Self::spawn(template, args)?;
        let status = p
            .wait_exit(timeout)
            .await
            .with_context(|| format!("the proxy kept running; its output so far:\n{}", p.logs()))?;
        Ok((status, p.logs()))
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn bootstrap_path(&self) -> PathBuf {
        self.dir.path().join("bootstrap.yaml")
    }

    /// `Some(status)` once the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child.try_wait().ok().flatten()
    }

    pub async fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        eventually("the proxy to exit", timeout, async || self.exit_status()).await
    }

    /// Waits until `GET /ready` on the admin listener answers 200; fails at once (with the
    /// proxy's output) if the process exits first.
    pub async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(st) = self.exit_status() {
                bail!(
                    "weft-proxy exited with {st} before becoming ready; output:\n{}",
                    self.logs()
                );
            }
            if let Ok(r) = self.admin_get("/ready").await
                && r.status == 200
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "weft-proxy not ready (GET {}/ready != 200) within {READY_TIMEOUT:?}; output:\n{}",
                    self.admin,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...) with `kill`.
    pub fn signal(&self, sig: &str) -> Result<()> {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .context("running kill")?;
        if !st.success() {
            bail!("kill -{sig} {} failed: {st}", self.pid);
        }
        Ok(())
    }

    /// Atomically replaces the bootstrap file (write to a sibling, then rename).
    pub fn write_bootstrap(&self, template: &str) -> Result<()> {
        let text = render_bootstrap(template, self.admin, self.dir.path())?;
        let tmp = self.dir.path().join(".bootstrap.yaml.new");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.bootstrap_path())?;
        Ok(())
    }

    /// Rewrites the bootstrap in place (truncate + write), as an editor without rename would.
    pub fn overwrite_bootstrap_in_place(&self, template: &str) -> Result<()> {
        let text = render_bootstrap(template, self.admin, self.dir.path())?;
        std::fs::write(self.bootstrap_path(), text)?;
        Ok(())
    }

    /// Rewrites the bootstrap, sends SIGHUP, and waits until `/config_dump` contains `expect`
    /// (a string only the new config has).
    pub async fn reload(&self, template: &str, expect: &str) -> Result<()> {
        self.write_bootstrap(template)?;
        self.signal("HUP")?;
        self.wait_config_dump_contains(expect).await
    }

    pub async fn wait_config_dump_contains(&self, expect: &str) -> Result<()> {
        eventually(
            &format!("/config_dump to contain {expect:?}"),
            WAIT,
            async || {
                let t = self.config_dump_text().await.ok()?;
                t.contains(expect).then_some(())
            },
        )
        .await
    }

    pub async fn admin_get(&self, path: &str) -> Result<Resp> {
        self.http.send(self.admin, Req::get(path)).await
    }

    pub async fn admin_post(&self, path: &str) -> Result<Resp> {
        self.http
            .send(self.admin, Req::post(path, Bytes::new()))
            .await
    }

    pub async fn config_dump_text(&self) -> Result<String> {
        let r = self.admin_get("/config_dump").await?;
        if r.status != 200 {
            bail!("GET /config_dump -> {}", r.status);
        }
        Ok(r.text())
    }

    pub async fn config_dump(&self) -> Result<serde_json::Value> {
        let t = self.config_dump_text().await?;
        serde_json::from_str(&t).context("/config_dump is not JSON")
    }

    pub async fn stats(&self) -> Result<Stats> {
        let r = self.admin_get("/stats/prometheus").await?;
        if r.status != 200 {
            bail!("GET /stats/prometheus -> {}", r.status);
        }
        Ok(Stats::parse(&r.text()))
    }

    /// Waits until a Prometheus sample `name` with `labels` reaches `pred`.
    pub async fn wait_stat(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        what: &str,
        pred: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        eventually(&format!("stat {name}{labels:?} {what}"), WAIT, async || {
            let v = self.stats().await.ok()?.value(name, labels)?;
            pred(v).then_some(v)
        })
        .await
    }

    /// stdout followed by stderr, lossily decoded.
    pub fn logs(&self) -> String {
        let mut s = read_lossy(&self.dir.path().join("stdout.log"));
        s.push_str(&read_lossy(&self.dir.path().join("stderr.log")));
        s
    }

    pub async fn wait_logs_contain(&self, needle: &str) -> Result<()> {
        eventually(
            &format!("proxy output to contain {needle:?}"),
            WAIT,
            async || self.logs().contains(needle).then_some(()),
        )
        .await
    }

    /// Lines of a file in the proxy's dir (e.g. `access.log`), empty if it does not exist.
    pub fn file_lines(&self, name: &str) -> Vec<String> {
        read_lossy(&self.dir.path().join(name))
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Lines of `{{DIR}}/access.log`.
    pub fn access_log_lines(&self) -> Vec<String> {
        self.file_lines("access.log")
    }

    /// Waits for an `access.log` line (Envoy default text format) matching `pred`.
    pub async fn wait_access(
        &self,
        what: &str,
        pred: impl Fn(&AccessLine) -> bool,
    ) -> Result<AccessLine> {
        eventually(&format!("access log line: {what}"), WAIT, async || {
            self.access_log_lines()
                .iter()
                .filter_map(|l| AccessLine::parse(l))
                .find(|l| pred(l))
        })
        .await
    }

    /// Waits until at least `n` `access.log` lines match `pred`; returns all that match.
    pub async fn wait_access_count(
        &self,
        what: &str,
        n: usize,
        pred: impl Fn(&AccessLine) -> bool,
    ) -> Result<Vec<AccessLine>> {
        eventually(&format!("{n} access log lines: {what}"), WAIT, async || {
            let v: Vec<AccessLine> = self
                .access_log_lines()
                .iter()
                .filter_map(|l| AccessLine::parse(l))
                .filter(|l| pred(l))
                .collect();
            (v.len() >= n).then_some(v)
        })
        .await
    }

    fn dump(&self) {
        const TAIL: usize = 80;
        let dir = self.dir.path();
        eprintln!(
            "===== weft-proxy pid {} (dir {}) =====",
            self.pid,
            dir.display()
        );
        for f in ["bootstrap.yaml", "stdout.log", "stderr.log", "access.log"] {
            let text = read_lossy(&dir.join(f));
            let lines: Vec<&str> = text.lines().collect();
            let skip = if f == "bootstrap.yaml" {
                0
            } else {
                lines.len().saturating_sub(TAIL)
            };
            eprintln!("----- {f} ({} lines, from {}) -----", lines.len(), skip + 1);
            for l in &lines[skip..] {
                eprintln!("{l}");
            }
        }
        eprintln!("===== end of weft-proxy pid {} =====", self.pid);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        // Captured by the test harness: shown only when the test fails.
        self.dump();
        if std::env::var_os("WEFT_E2E_KEEP").is_some() {
            self.dir.disable_cleanup(true);
        }
    }
}

fn render_bootstrap(template: &str, admin: SocketAddr, dir: &Path) -> Result<String> {
    let port = admin.port().to_string();
    let dir = dir.display().to_string();
    let text = render(template, &[("ADMIN_PORT", &port), ("DIR", &dir)]);
    if let Some(i) = text.find("{{") {
        let end = text[i..].find("}}").map_or(text.len(), |e| i + e + 2);
        bail!("unrendered placeholder {} in bootstrap", &text[i..end]);
    }
    Ok(text)
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as `cert.pem` and
/// `key.pem` into `dir`.
pub fn write_self_signed(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".into()])
        .context("generating a self-signed certificate")?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.signing_key.serialize_pem())?;
    Ok((cert, key))
}

// ---------------------------------------------------------------------------------------------
// Admin output: Prometheus stats and access log lines
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parsed `/stats/prometheus` text.
#[derive(Clone, Debug)]
pub struct Stats {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Stats {
    pub fn parse(text: &str) -> Stats {
        let samples = text.lines().filter_map(parse_sample).collect();
        Stats {
            text: text.to_string(),
            samples,
        }
    }

    /// Sum of the samples named `name` that carry all of `labels`; `None` if there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in &self.samples {
            if s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            {
                *found.get_or_insert(0.0) += s.value;
            }
        }
        found
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (head, labels) = match line.find('{') {
        Some(i) => {
            let end = line.rfind('}')?;
            (&line[..i], parse_labels(&line[i + 1..end]))
        }
        None => (line.split_whitespace().next()?, Vec::new()),
    };
    let after = match line.rfind('}') {
        Some(e) => &line[e + 1..],
        None => &line[head.len()..],
    };
    let value: f64 = after.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: head.to_string(),
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().to_string();
        let after = &rest[eq + 1..];
        let Some(after) = after.strip_prefix('"') else {
            break;
        };
        let mut val = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.push((key, val));
        rest = &after[end.min(after.len())..];
    }
    out
}

/// One line of Envoy's default text access log format:
/// `[START] "METHOD PATH PROTOCOL" CODE FLAGS ...`.
#[derive(Clone, Debug)]
pub struct AccessLine {
    pub raw: String,
    pub method: String,
    pub path: String,
    pub protocol: String,
    pub code: u16,
    pub flags: Vec<String>,
}

static ACCESS_RE: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r#"^\[[^\]]*\] "(\S+) (\S+) (\S+)" (\d+) (\S+)"#).expect("valid regex")
});

impl AccessLine {
    pub fn parse(line: &str) -> Option<AccessLine> {
        let c = ACCESS_RE.captures(line)?;
        Some(AccessLine {
            raw: line.to_string(),
            method: c[1].to_string(),
            path: c[2].to_string(),
            protocol: c[3].to_string(),
            code: c[4].parse().ok()?,
            flags: c[5]
                .split(',')
                .filter(|f| *f != "-")
                .map(str::to_string)
                .collect(),
        })
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client (hyper)
// ---------------------------------------------------------------------------------------------

/// A request to send with [`Http`].
#[derive(Clone, Debug)]
pub struct Req {
    pub method: http::Method,
    pub path: String,
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Req {
    pub fn get(path: &str) -> Req {
        Req {
            method: http::Method::GET,
            path: path.to_string(),
            host: None,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }
    pub fn post(path: &str, body: impl Into<Bytes>) -> Req {
        Req {
            method: http::Method::POST,
            body: body.into(),
            ..Req::get(path)
        }
    }
    pub fn method(mut self, m: &str) -> Req {
        self.method = http::Method::from_bytes(m.as_bytes()).unwrap_or(http::Method::GET);
        self
    }
    /// The Host header (HTTP/1.1). The connection still goes to the address given to `send`.
    pub fn host(mut self, h: &str) -> Req {
        self.host = Some(h.to_string());
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    fn build(self, addr: SocketAddr) -> Result<Request<Full<Bytes>>> {
        let mut b = Request::builder()
            .method(self.method)
            .uri(format!("http://{addr}{}", self.path));
        if let Some(h) = &self.host {
            b = b.header(http::header::HOST, h);
        }
        for (k, v) in &self.headers {
            b = b.header(k, v);
        }
        b.body(Full::new(self.body)).context("building request")
    }
}

/// A fully read response.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The `x-upstream` header the echo servers set ("" when absent).
    pub fn upstream(&self) -> &str {
        self.header("x-upstream").unwrap_or("")
    }
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {}", self.text()))
    }
}

/// hyper's pooled client, HTTP/1.1 or h2c prior knowledge, with a deadline on every request.
#[derive(Clone, Debug)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Http {
    /// HTTP/1.1 with keep-alive (pooled connections).
    pub fn h1() -> Http {
        Self::build(false, true)
    }
    /// HTTP/1.1, a new connection for every request.
    pub fn h1_fresh() -> Http {
        Self::build(false, false)
    }
    /// HTTP/2 over cleartext with prior knowledge.
    pub fn h2c() -> Http {
        Self::build(true, true)
    }
    fn build(h2: bool, pool: bool) -> Http {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(5)));
        let mut b = Client::builder(TokioExecutor::new());
        if h2 {
            b.http2_only(true);
        }
        if !pool {
            b.pool_max_idle_per_host(0);
        }
        Http {
            client: b.build(conn),
            timeout: REQ_TIMEOUT,
        }
    }
    pub fn with_timeout(mut self, t: Duration) -> Http {
        self.timeout = t;
        self
    }

    /// Sends and returns the response head; the body is left to the caller.
    pub async fn raw(&self, addr: SocketAddr, req: Req) -> Result<Response<Incoming>> {
        let what = format!("{} {}", req.method, req.path);
        let r = req.build(addr)?;
        tokio::time::timeout(self.timeout, self.client.request(r))
            .await
            .map_err(|_| {
                anyhow!(
                    "{what} via {addr}: no response head within {:?}",
                    self.timeout
                )
            })?
            .with_context(|| format!("{what} via {addr}"))
    }

    /// Sends and reads the whole response (body and trailers) under the deadline.
    pub async fn send(&self, addr: SocketAddr, req: Req) -> Result<Resp> {
        let what = format!("{} {}", req.method, req.path);
        let fut = async {
            let r = req.build(addr)?;
            let resp = self
                .client
                .request(r)
                .await
                .with_context(|| format!("{what} via {addr}"))?;
            let (parts, body) = resp.into_parts();
            let collected = body
                .collect()
                .await
                .with_context(|| format!("{what} via {addr}: reading body"))?;
            let trailers = collected.trailers().cloned();
            Ok(Resp {
                status: parts.status.as_u16(),
                version: parts.version,
                headers: parts.headers,
                body: collected.to_bytes(),
                trailers,
            })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| anyhow!("{what} via {addr}: not complete within {:?}", self.timeout))?
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Resp> {
        self.send(addr, Req::get(path)).await
    }
}

/// Sends `n` copies of `req` at once; results in completion order.
pub async fn concurrent(http: &Http, addr: SocketAddr, n: usize, req: Req) -> Vec<Result<Resp>> {
    futures_util::future::join_all((0..n).map(|_| http.send(addr, req.clone()))).await
}

// ---------------------------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------------------------

pub async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect {addr}: timed out"))?
        .with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Reads exactly `n` bytes within `timeout`.
pub async fn read_n(s: &mut TcpStream, n: usize, timeout: Duration) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(timeout, s.read_exact(&mut buf))
        .await
        .map_err(|_| anyhow!("did not receive {n} bytes within {timeout:?}"))?
        .context("reading")?;
    Ok(buf)
}

/// Reads until `needle` has been seen (returns everything read), EOF or `timeout`.
pub async fn read_until(s: &mut TcpStream, needle: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 16 * 1024];
    loop {
        if !needle.is_empty() && out.windows(needle.len()).any(|w| w == needle) {
            return Ok(out);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => bail!(
                "timed out after {timeout:?} waiting for {:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0)) => return Ok(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) if out.is_empty() => return Err(e).context("reading"),
            Ok(Err(_)) => return Ok(out),
        }
    }
}

/// Writes raw bytes to a fresh connection and returns what came back up to the end of the
/// response head (or EOF). Write errors are ignored: a proxy may answer and close early.
pub async fn raw_http(addr: SocketAddr, bytes: &[u8]) -> Result<String> {
    let mut s = connect(addr).await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(bytes)).await;
    let got = read_until(&mut s, b"\r\n\r\n", Duration::from_secs(10)).await?;
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// Status code of the first response line (`HTTP/1.1 400 Bad Request`).
pub fn status_of(head: &str) -> Option<u16> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    let proto = parts.next()?;
    if !proto.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// External tools (curl, h2load)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Runs a program with a 60 s deadline (killed on timeout).
pub async fn run_tool(program: &str, args: &[&str]) -> Result<Output> {
    let start = Instant::now();
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .map_err(|_| anyhow!("{program} {args:?}: did not finish within 60 s"))?;
    let out = match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("`{program}` is not installed: run scripts/test-deps")
        }
        other => other.with_context(|| format!("running {program}"))?,
    };
    Ok(Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    })
}

/// `curl -sS --max-time 20 ARGS...`
pub async fn curl(args: &[&str]) -> Result<Output> {
    let mut all = vec!["-sS", "--max-time", "20"];
    all.extend_from_slice(args);
    run_tool("curl", &all).await
}

/// Parsed summary of an `h2load` run.
#[derive(Clone, Debug, Default)]
pub struct H2loadSummary {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub status_2xx: u64,
}

impl H2loadSummary {
    pub fn parse(stdout: &str) -> Option<H2loadSummary> {
        let mut s = H2loadSummary::default();
        let mut seen = false;
        for line in stdout.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("requests:") {
                seen = true;
                for part in rest.split(',') {
                    let mut it = part.split_whitespace();
                    let (Some(n), Some(what)) = (it.next(), it.next()) else {
                        continue;
                    };
                    let n: u64 = n.parse().ok()?;
                    match what {
                        "total" => s.total = n,
                        "succeeded" => s.succeeded = n,
                        "failed" => s.failed = n,
                        "errored" => s.errored = n,
                        _ => {}
                    }
                }
            } else if let Some(rest) = line.strip_prefix("status codes:") {
                for part in rest.split(',') {
                    let mut it = part.split_whitespace();
                    if let (Some(n), Some("2xx")) = (it.next(), it.next()) {
                        s.status_2xx = n.parse().ok()?;
                    }
                }
            }
        }
        seen.then_some(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream servers
// ---------------------------------------------------------------------------------------------

/// Accepts on `listener` until `stop` is dropped; each connection runs `handler` and is cut
/// when `stop` is dropped.
fn spawn_acceptor<F, Fut>(listener: TcpListener, stop: watch::Receiver<()>, handler: F)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut stop_accept = stop.clone();
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => {
                        let _ = s.set_nodelay(true);
                        let mut stop = stop.clone();
                        let fut = handler(s);
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = fut => {}
                                _ = stop.changed() => {}
                            }
                        });
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                },
                _ = stop_accept.changed() => break,
            }
        }
    });
}

async fn bind_local() -> Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").await.context("bind")?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Decrements `a` if it is above zero; true if it did.
fn take(a: &AtomicUsize) -> bool {
    a.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

#[derive(Debug, Default)]
struct EchoState {
    name: String,
    requests: AtomicUsize,
    h2_requests: AtomicUsize,
    connections: AtomicUsize,
    active: AtomicUsize,
    max_active: AtomicUsize,
    fail_remaining: AtomicUsize,
    fail_status: AtomicU16,
    reset_remaining: AtomicUsize,
    delay_remaining: AtomicUsize,
    delay_ms: AtomicU64,
}

struct ActiveGuard(Arc<EchoState>);

impl ActiveGuard {
    fn new(s: &Arc<EchoState>) -> ActiveGuard {
        let n = s.active.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_active.fetch_max(n, Ordering::SeqCst);
        ActiveGuard(s.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Returned by the echo service to make hyper drop the connection (HTTP/1) or reset the
/// stream (HTTP/2) without a response.
#[derive(Debug)]
struct ResetRequested;

impl fmt::Display for ResetRequested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("reset requested by the test")
    }
}

impl std::error::Error for ResetRequested {}

type EchoBody = BoxBody<Bytes, Infallible>;

/// HTTP/1.1 + h2c echo server (hyper, `auto` builder). Every response carries `x-upstream:
/// NAME` and `x-echo-extra: remove-me`. Behaviour is steered by path segments, which combine
/// and may follow any prefix:
/// `/status/N`, `/delay/MS`, `/reset` (drop the connection / reset the stream without a
/// response), `/headers` (JSON: upstream, method, path, version, headers), `/echo` (request
/// body back), `/stream` (5 chunks 200 ms apart), `/trailers` (body then trailer
/// `x-trailer: done`); anything else answers 200 with body NAME. Test-wide modes:
/// [`fail_first`](Self::fail_first), [`reset_first`](Self::reset_first),
/// [`delay_first`](Self::delay_first).
pub struct EchoServer {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<EchoState>,
    _stop: watch::Sender<()>,
}

impl fmt::Debug for EchoServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EchoServer({} @ {})", self.name, self.addr)
    }
}

pub const STREAM_CHUNKS: usize = 5;
pub const STREAM_INTERVAL: Duration = Duration::from_millis(200);

impl EchoServer {
    pub async fn start(name: &str) -> Result<EchoServer> {
        let (listener, addr) = bind_local().await?;
        let state = Arc::new(EchoState {
            name: name.to_string(),
            ..EchoState::default()
        });
        let (stop_tx, stop_rx) = watch::channel(());
        let st = state.clone();
        spawn_acceptor(listener, stop_rx, move |stream| {
            let st = st.clone();
            async move {
                st.connections.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(move |req| echo_handle(st.clone(), req));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            }
        });
        Ok(EchoServer {
            name: name.to_string(),
            addr,
            state,
            _stop: stop_tx,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// Requests received (counted on arrival, whatever the answer).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
    /// Requests received over HTTP/2.
    pub fn h2_requests(&self) -> usize {
        self.state.h2_requests.load(Ordering::SeqCst)
    }
    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
    /// Requests being handled right now.
    pub fn active(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }
    /// Highest number of requests handled at the same time.
    pub fn max_active(&self) -> usize {
        self.state.max_active.load(Ordering::SeqCst)
    }
    /// The next `n` requests answer `status` once their body is read (`usize::MAX`: always).
    pub fn fail_first(&self, n: usize, status: u16) {
        self.state.fail_status.store(status, Ordering::SeqCst);
        self.state.fail_remaining.store(n, Ordering::SeqCst);
    }
    /// The next `n` requests get no response: the connection is dropped / stream reset.
    pub fn reset_first(&self, n: usize) {
        self.state.reset_remaining.store(n, Ordering::SeqCst);
    }
    /// The next `n` requests are held `ms` before being handled.
    pub fn delay_first(&self, n: usize, ms: u64) {
        self.state.delay_ms.store(ms, Ordering::SeqCst);
        self.state.delay_remaining.store(n, Ordering::SeqCst);
    }
    /// Zeroes the counters (requests, connections, max_active).
    pub fn reset_counters(&self) {
        self.state.requests.store(0, Ordering::SeqCst);
        self.state.h2_requests.store(0, Ordering::SeqCst);
        self.state.connections.store(0, Ordering::SeqCst);
        self.state.max_active.store(0, Ordering::SeqCst);
    }
}

#[derive(Debug, Default, PartialEq)]
enum EchoMode {
    #[default]
    Name,
    Headers,
    Echo,
    Stream,
    Trailers,
}

#[derive(Debug, Default)]
struct EchoSpec {
    status: Option<u16>,
    delay_ms: Option<u64>,
    reset: bool,
    mode: EchoMode,
}

impl EchoSpec {
    fn parse(path: &str) -> EchoSpec {
        let mut spec = EchoSpec::default();
        let mut segs = path.split('/').filter(|s| !s.is_empty());
        while let Some(seg) = segs.next() {
            match seg {
                "status" => spec.status = segs.next().and_then(|v| v.parse().ok()),
                "delay" => spec.delay_ms = segs.next().and_then(|v| v.parse().ok()),
                "reset" => spec.reset = true,
                "headers" => spec.mode = EchoMode::Headers,
                "echo" => spec.mode = EchoMode::Echo,
                "stream" => spec.mode = EchoMode::Stream,
                "trailers" => spec.mode = EchoMode::Trailers,
                _ => {}
            }
        }
        spec
    }
}

fn full_body(b: impl Into<Bytes>) -> EchoBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

async fn echo_handle(
    st: Arc<EchoState>,
    req: Request<Incoming>,
) -> std::result::Result<Response<EchoBody>, ResetRequested> {
    st.requests.fetch_add(1, Ordering::SeqCst);
    if req.version() == http::Version::HTTP_2 {
        st.h2_requests.fetch_add(1, Ordering::SeqCst);
    }
    let _active = ActiveGuard::new(&st);
    if take(&st.reset_remaining) {
        return Err(ResetRequested);
    }
    if take(&st.delay_remaining) {
        tokio::time::sleep(Duration::from_millis(st.delay_ms.load(Ordering::SeqCst))).await;
    }
    let base = Response::builder()
        .header("x-upstream", st.name.as_str())
        .header("x-echo-extra", "remove-me");
    if take(&st.fail_remaining) {
        // Read the whole request first, so that the failure is a plain response to a complete
        // request (an early answer would race the client's upload).
        let _ = req.into_body().collect().await;
        let code = StatusCode::from_u16(st.fail_status.load(Ordering::SeqCst))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(base
            .status(code)
            .body(full_body(st.name.clone()))
            .unwrap_or_else(|_| Response::new(full_body("bad response"))));
    }
    let spec = EchoSpec::parse(req.uri().path());
    if let Some(ms) = spec.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if spec.reset {
        return Err(ResetRequested);
    }
    let status = spec
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let base = base.status(status);
    let resp = match spec.mode {
        EchoMode::Name => base.body(full_body(st.name.clone())),
        EchoMode::Headers => {
            let mut headers = serde_json::Map::new();
            for name in req.headers().keys() {
                let vals: Vec<&str> = req
                    .headers()
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap_or("<binary>"))
                    .collect();
                headers.insert(name.as_str().to_string(), vals.join(", ").into());
            }
            let doc = serde_json::json!({
                "upstream": st.name,
                "method": req.method().as_str(),
                "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                "authority": req.uri().authority().map(|a| a.as_str()),
                "version": format!("{:?}", req.version()),
                "headers": headers,
            });
            base.header("content-type", "application/json")
                .body(full_body(doc.to_string()))
        }
        EchoMode::Echo => {
            let body = match req.into_body().collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => return Err(ResetRequested),
            };
            base.header("x-body-len", body.len().to_string())
                .body(full_body(body))
        }
        EchoMode::Stream => {
            let stream = futures_util::stream::unfold(0usize, |i| async move {
                if i >= STREAM_CHUNKS {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(STREAM_INTERVAL).await;
                }
                let frame = Frame::data(Bytes::from(format!("chunk-{i}\n")));
                Some((Ok::<_, Infallible>(frame), i + 1))
            });
            base.body(BodyExt::boxed(StreamBody::new(stream)))
        }
        EchoMode::Trailers => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-trailer", http::HeaderValue::from_static("done"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"trailers-body"))),
                Ok(Frame::trailers(trailers)),
            ];
            base.body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
        }
    };
    Ok(resp.unwrap_or_else(|_| Response::new(full_body("bad response"))))
}

/// Raw TCP echo server.
pub struct TcpEcho {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    _stop: watch::Sender<()>,
}

impl TcpEcho {
    pub async fn start() -> Result<TcpEcho> {
        Self::start_with_banner(None).await
    }

    async fn start_with_banner(banner: Option<&'static [u8]>) -> Result<TcpEcho> {
        let (listener, addr) = bind_local().await?;
        let connections = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop_rx) = watch::channel(());
        let conns = connections.clone();
        spawn_acceptor(listener, stop_rx, move |mut s| {
            conns.fetch_add(1, Ordering::SeqCst);
            async move {
                if let Some(b) = banner
                    && s.write_all(b).await.is_err()
                {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            }
        });
        Ok(TcpEcho {
            addr,
            connections,
            _stop: stop_tx,
        })
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// What the server-first server writes as soon as it accepts.
pub const BANNER: &[u8] = b"220 weft-test banner ready\r\n";

/// A server-first TCP protocol: writes [`BANNER`] on accept, then echoes.
pub struct BannerServer(TcpEcho);

impl BannerServer {
    pub async fn start() -> Result<BannerServer> {
        Ok(BannerServer(
            TcpEcho::start_with_banner(Some(BANNER)).await?,
        ))
    }
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }
}

/// WebSocket echo server (tokio-tungstenite): text and binary messages come back as sent.
pub struct WsEcho {
    pub addr: SocketAddr,
    _stop: watch::Sender<()>,
}

impl WsEcho {
    pub async fn start() -> Result<WsEcho> {
        let (listener, addr) = bind_local().await?;
        let (stop_tx, stop_rx) = watch::channel(());
        spawn_acceptor(listener, stop_rx, |s| async move {
            let Ok(ws) = tokio_tungstenite::accept_async(s).await else {
                return;
            };
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(m)) = rx.next().await {
                if m.is_text() || m.is_binary() {
                    if tx.send(m).await.is_err() {
                        break;
                    }
                } else if m.is_close() {
                    break;
                }
            }
        });
        Ok(WsEcho {
            addr,
            _stop: stop_tx,
        })
    }
}

/// Opens a WebSocket through `proxy` to `ws://HOST/PATH`.
pub async fn ws_connect(
    proxy: SocketAddr,
    host: &str,
    path: &str,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>> {
    Ok(ws_handshake(proxy, host, path).await?.0)
}

/// [`ws_connect`], also returning the headers of the proxy's `101` answer.
pub async fn ws_handshake(
    proxy: SocketAddr,
    host: &str,
    path: &str,
) -> Result<(
    tokio_tungstenite::WebSocketStream<TcpStream>,
    http::HeaderMap,
)> {
    let tcp = connect(proxy).await?;
    let (ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(format!("ws://{host}{path}"), tcp),
    )
    .await
    .map_err(|_| anyhow!("WebSocket handshake timed out"))?
    .context("WebSocket handshake")?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        bail!("WebSocket handshake answered {}", resp.status());
    }
    Ok((ws, resp.headers().clone()))
}

// --- gRPC ------------------------------------------------------------------------------------

/// `type_url` that makes the ADS echo end the stream with `ABORTED` (after the responses so
/// far), so that the status travels in real trailers after data.
pub const ABORT_TYPE_URL: &str = "weft.test/abort";

#[derive(Debug, Default)]
struct GrpcState {
    checks: AtomicUsize,
    fail_remaining: AtomicUsize,
    fail_code: AtomicI32,
    streams: AtomicUsize,
    messages: AtomicUsize,
}

/// gRPC server (tonic) with two services generated in `envoy-types`:
/// - ADS (`StreamAggregatedResources`, bidi): every DiscoveryRequest is answered by a
///   DiscoveryResponse with the same `type_url` and `version_info` and nonce 1, 2, ...;
///   [`ABORT_TYPE_URL`] ends the stream with `ABORTED` "aborted by request".
/// - Authorization `Check` (unary): OK, or the configured failure for the next N calls; failures
///   carry message "injected CODE" and metadata `x-test-detail: injected`.
pub struct GrpcServer {
    pub addr: SocketAddr,
    state: Arc<GrpcState>,
    _stop: oneshot::Sender<()>,
}

impl GrpcServer {
    pub async fn start() -> Result<GrpcServer> {
        let (listener, addr) = bind_local().await?;
        let state = Arc::new(GrpcState::default());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let router = GrpcRouter {
            ads: AggregatedDiscoveryServiceServer::new(AdsEcho(state.clone())),
            auth: AuthorizationServer::new(AuthCheck(state.clone())),
        };
        let server = tonic::transport::Server::builder().serve_with_incoming_shutdown(
            router,
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = stop_rx.await;
            },
        );
        tokio::spawn(server);
        Ok(GrpcServer {
            addr,
            state,
            _stop: stop_tx,
        })
    }
    /// `Check` calls received.
    pub fn checks(&self) -> usize {
        self.state.checks.load(Ordering::SeqCst)
    }
    /// ADS streams opened.
    pub fn streams(&self) -> usize {
        self.state.streams.load(Ordering::SeqCst)
    }
    /// ADS messages received.
    pub fn messages(&self) -> usize {
        self.state.messages.load(Ordering::SeqCst)
    }
    /// The next `n` `Check` calls fail with `code` (`usize::MAX` for always).
    pub fn fail_first(&self, n: usize, code: tonic::Code) {
        self.state.fail_code.store(code as i32, Ordering::SeqCst);
        self.state.fail_remaining.store(n, Ordering::SeqCst);
    }
}

/// Dispatches to the two generated services by path (tonic's own router needs axum).
#[derive(Clone)]
struct GrpcRouter {
    ads: AggregatedDiscoveryServiceServer<AdsEcho>,
    auth: AuthorizationServer<AuthCheck>,
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for GrpcRouter {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req
            .uri()
            .path()
            .starts_with("/envoy.service.auth.v3.Authorization/")
        {
            self.auth.call(req)
        } else {
            self.ads.call(req)
        }
    }
}

fn injected_status(code: tonic::Code, msg: &str) -> tonic::Status {
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert(
        "x-test-detail",
        tonic::metadata::MetadataValue::from_static("injected"),
    );
    tonic::Status::with_metadata(code, msg, md)
}

struct AdsEcho(Arc<GrpcState>);

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsEcho {
    type StreamAggregatedResourcesStream = tonic::codegen::BoxStream<DiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> std::result::Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status>
    {
        self.0.streams.fetch_add(1, Ordering::SeqCst);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let state = self.0.clone();
        tokio::spawn(async move {
            let mut nonce = 0u64;
            while let Some(Ok(req)) = inbound.next().await {
                state.messages.fetch_add(1, Ordering::SeqCst);
                if req.type_url == ABORT_TYPE_URL {
                    let _ = tx
                        .send(Err(injected_status(
                            tonic::Code::Aborted,
                            "aborted by request",
                        )))
                        .await;
                    return;
                }
                nonce += 1;
                let resp = DiscoveryResponse {
                    type_url: req.type_url,
                    version_info: req.version_info,
                    nonce: nonce.to_string(),
                    ..Default::default()
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        let out =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        Ok(tonic::Response::new(Box::pin(out)))
    }

    type DeltaAggregatedResourcesStream = tonic::codegen::BoxStream<DeltaDiscoveryResponse>;

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> std::result::Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status>
    {
        let out = request.into_inner().map(|r| {
            r.map(|req| DeltaDiscoveryResponse {
                type_url: req.type_url,
                ..Default::default()
            })
        });
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

struct AuthCheck(Arc<GrpcState>);

#[tonic::async_trait]
impl Authorization for AuthCheck {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> std::result::Result<tonic::Response<CheckResponse>, tonic::Status> {
        self.0.checks.fetch_add(1, Ordering::SeqCst);
        if take(&self.0.fail_remaining) {
            let code = tonic::Code::from_i32(self.0.fail_code.load(Ordering::SeqCst));
            return Err(injected_status(code, &format!("injected {code:?}")));
        }
        Ok(tonic::Response::new(CheckResponse::default()))
    }
}

/// A tonic channel to `http://ADDR` (h2c prior knowledge), e.g. the proxy's listener.
pub async fn grpc_channel(addr: SocketAddr) -> Result<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(REQ_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("gRPC connect to {addr}"))
}
