//! `cp-scale` — the control plane at mesh scale: 1,000 services, 5,000 endpoints and 200
//! simulated delta-ADS clients against one `weft up` process. It measures the initial full push,
//! config change → last ACK (p50/p99 over 20 runs), what an endpoint edit pushes, the re-push
//! after a SIGKILL restart, and the control plane's RSS; then prints one markdown table.
//!
//! It exists because these figures only mean something end to end: file poll, debounce,
//! translation, JSON → protobuf, per-stream diffing, the wire and the client's ACK. It is a
//! benchmark, not a test: it asserts nothing about time (the table says whether targets were
//! met). It must only use 127.0.0.1 (the generated endpoints in 127.1.x.y are never contacted),
//! bound every wait, and never leave the control plane running (killed on drop, on error and on
//! SIGINT/SIGTERM). Run it through `bench/cp.sh`.

mod cp;
mod mesh;
mod report;
mod sim;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use prost::Message;
use report::{EndpointChange, Fleet, Results};
use sim::{Event, SimProxy, Ty};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use weft_xds::client::XdsClient;

#[derive(Parser, Debug)]
#[command(
    name = "cp-scale",
    about = "Control-plane scale benchmark (see bench/cp-scale/README.md)"
)]
struct Args {
    /// The `weft` binary (release build).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release/weft"))]
    weft: PathBuf,
    /// ServiceEntries (one host each).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Inline endpoints per ServiceEntry.
    #[arg(long, default_value_t = 5)]
    endpoints: usize,
    /// Services with a DestinationRule (subsets v1, v2).
    #[arg(long, default_value_t = 100)]
    subsets: usize,
    /// Services with a VirtualService (weighted v1/v2).
    #[arg(long, default_value_t = 100)]
    routes: usize,
    /// Simulated xDS clients.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Config-change runs.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Smoke test: 100 services, 20 clients, 10 subsets/routes, 5 runs (overrides the above).
    #[arg(long)]
    quick: bool,
    /// Work directory (config, control-plane log); default a new one under the temp dir.
    #[arg(long)]
    work: Option<PathBuf>,
    /// Keep the work directory.
    #[arg(long)]
    keep: bool,
    /// Control-plane log level.
    #[arg(long, default_value = "warn")]
    log_level: String,
    /// Limit for each wait (initial push, a change, a restart), in seconds.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    /// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
    /// Also write the table to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the raw figures (every client's time per run) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Progress lines on stderr, with the time since start.
macro_rules! say {
    ($start:expr, $($arg:tt)*) => {
        eprintln!("[cp-scale +{:6.1}s] {}", $start.elapsed().as_secs_f64(), format!($($arg)*))
    };
}

/// Removes the work directory on drop unless kept.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("[cp-scale] kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The simulated proxies and their client tasks (stopped on drop).
struct Clients {
    proxies: Vec<Arc<SimProxy>>,
    forget: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
}

impl Clients {
    fn start(n: usize, xds: std::net::SocketAddr) -> Self {
        let forget = Arc::new(AtomicBool::new(false));
        let (stop, _) = watch::channel(false);
        let mut proxies = Vec::with_capacity(n);
        for i in 0..n {
            let proxy = Arc::new(SimProxy::new(i, forget.clone(), i == 0));
            let client = XdsClient::new(format!("http://{xds}"), sim::node(i), proxy.clone());
            let mut rx = stop.subscribe();
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                if let Err(e) = client.run(shutdown).await {
                    eprintln!("[cp-scale] client {i}: {e}");
                }
            });
            proxies.push(proxy);
        }
        Self {
            proxies,
            forget,
            stop,
        }
    }

    /// Every client's time from `since` to the instant `done` finds in its events (polled every
    /// 10 ms, up to `limit`).
    async fn wait(
        &self,
        since: Instant,
        limit: Duration,
        done: impl Fn(&[Event]) -> Option<Instant>,
    ) -> Fleet {
        let deadline = since + limit;
        let mut at: Vec<Option<Instant>> = vec![None; self.proxies.len()];
        loop {
            for (slot, p) in at.iter_mut().zip(&self.proxies) {
                if slot.is_none() {
                    *slot = done(&p.events_since(since));
                }
            }
            if at.iter().all(Option::is_some) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut times: Vec<Duration> = at.iter().flatten().map(|t| *t - since).collect();
        times.sort();
        Fleet {
            total: self.proxies.len(),
            times,
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// CPU counters at one instant, to compute a phase's [`report::Load`].
#[derive(Debug, Clone, Copy)]
struct CpuMark {
    at: Instant,
    machine: Option<u64>,
    bench: Option<u64>,
    /// Control-plane ticks: processes already killed plus the running one.
    cp: Option<u64>,
}

impl CpuMark {
    fn now(cp_done: u64, plane: &cp::ControlPlane) -> Self {
        Self {
            at: Instant::now(),
            machine: cp::machine_busy_ticks(),
            bench: cp::own_cpu_ticks(),
            cp: plane.cpu_ticks().map(|t| t + cp_done),
        }
    }

    fn load(&self, end: &CpuMark, clk_tck: u64) -> Option<report::Load> {
        let secs = (end.at - self.at).as_secs_f64() * clk_tck.max(1) as f64;
        if secs <= 0.0 {
            return None;
        }
        let d = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?) as f64);
        let machine = d(self.machine, end.machine)?;
        let bench = d(self.bench, end.bench)?;
        let cp = d(self.cp, end.cp)?;
        Some(report::Load {
            bench: bench / secs,
            control_plane: cp / secs,
            other: (machine - bench - cp).max(0.0) / secs,
        })
    }
}

/// The v1 weight the outbound route gives service `i`, from an encoded RouteConfiguration.
fn route_weight(encoded: &[u8], i: usize) -> Option<u32> {
    let rc = RouteConfiguration::decode(encoded).ok()?;
    let vh_name = format!("{}:{}", mesh::host(i), mesh::PORT);
    let v1 = mesh::cluster(i, "v1");
    let vh = rc.virtual_hosts.iter().find(|v| v.name == vh_name)?;
    vh.routes.iter().find_map(|r| match &r.action {
        Some(Action::Route(ra)) => match &ra.cluster_specifier {
            Some(ClusterSpecifier::WeightedClusters(wc)) => wc
                .clusters
                .iter()
                .find(|c| c.name == v1)
                .and_then(|c| c.weight.as_ref().map(|w| w.value)),
            _ => None,
        },
        _ => None,
    })
}

/// v1 weight of change run `r` (never the initial 90, never the previous run's for a service).
fn run_weight(r: usize) -> u32 {
    50 + u32::try_from((r * 7) % 40).unwrap_or(0)
}

fn first_route_update(events: &[Event]) -> Option<Instant> {
    events
        .iter()
        .find(|e| e.ty == Ty::Rds && e.route_version.is_some())
        .map(|e| e.at)
}

fn first_of(ty: Ty) -> impl Fn(&[Event]) -> Option<Instant> {
    move |events| events.iter().find(|e| e.ty == ty).map(|e| e.at)
}

async fn run(args: Args, start: Instant) -> Result<Results> {
    let mut scale = mesh::Scale {
        services: args.services,
        endpoints_per_service: args.endpoints,
        with_subsets: args.subsets,
        with_routes: args.routes,
    };
    let (mut clients_n, mut runs) = (args.clients, args.runs);
    if args.quick {
        scale = mesh::Scale {
            services: 100,
            endpoints_per_service: 5,
            with_subsets: 10,
            with_routes: 10,
        };
        (clients_n, runs) = (20, 5);
    }
    scale.validate()?;
    if clients_n == 0 || clients_n > 250 * 250 {
        bail!("--clients must be in 1..=62500");
    }
    if !args.weft.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p weft-cli) or pass --weft",
            args.weft.display()
        );
    }
    let limit = Duration::from_secs(args.timeout_s.max(1));
    let work = match &args.work {
        Some(p) => p.clone(),
        None => std::env::temp_dir().join(format!("weft-cp-scale.{}", std::process::id())),
    };
    if work.exists() {
        bail!("{} exists; pass a new --work directory", work.display());
    }
    let work = WorkDir {
        path: work,
        keep: args.keep,
    };
    let dir = work.path.join("config");
    let files = mesh::write_all(&dir, &scale)?;
    say!(
        start,
        "wrote {files} files ({} services, {} endpoints) into {}",
        scale.services,
        scale.endpoints(),
        dir.display()
    );

    let (xds, api) = cp::free_ports()?;
    let spec = cp::Spec {
        weft: args.weft.clone(),
        dir: dir.clone(),
        xds,
        api,
        log: work.path.join("control-plane.log"),
        log_level: args.log_level.clone(),
    };
    let mut r = Results {
        scale: Some(scale),
        clients: clients_n,
        files,
        ..Default::default()
    };

    // ---- start, wait past the 1 s warm-up, then connect every client at once
    let mut plane = cp::ControlPlane::start(&spec)?;
    let mut cp_done = 0u64;
    let whole = CpuMark::now(cp_done, &plane);
    say!(
        start,
        "control plane pid {} (xDS {xds}, API {api})",
        plane.pid
    );
    r.listening = plane.wait_listening(&spec, limit).await?;
    let warm = Duration::from_millis(1500).saturating_sub(plane.started.elapsed());
    tokio::time::sleep(warm).await;
    say!(start, "starting {clients_n} clients");
    let clients = Clients::start(clients_n, xds);
    let t0 = Instant::now();
    let clusters = scale.clusters();
    r.initial = clients
        .wait(t0, limit, |ev| sim::complete_at(ev, clusters))
        .await;
    say!(start, "initial full push: {}", r.initial.show_last());
    if !r.initial.complete() {
        bail!(
            "initial push incomplete: {}/{} clients; control-plane log:\n{}",
            r.initial.times.len(),
            clients_n,
            cp::log_tail(&spec.log, 20)
        );
    }
    let inspector = clients.proxies[0].clone();
    let bytes: usize = inspector.events_since(t0).iter().map(|e| e.bytes).sum();
    r.per_client = [
        inspector.held(Ty::Lds),
        inspector.held(Ty::Rds),
        inspector.held(Ty::Cds),
        inspector.held(Ty::Eds),
        bytes,
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.mem_initial = plane.mem();

    // ---- config change → last ACK
    let cpu0 = plane.cpu_ticks();
    let changes_start = CpuMark::now(cp_done, &plane);
    let mut route_ok = true;
    for run in 0..runs {
        // Vary the write's phase against the control plane's 250 ms poll.
        tokio::time::sleep(Duration::from_millis(300 + (run as u64 * 97) % 250)).await;
        let svc = run % scale.with_routes;
        let weight = run_weight(run);
        let mark = Instant::now();
        mesh::write_atomic(
            &mesh::vs_path(&dir, svc),
            &mesh::virtual_service(svc, weight),
        )?;
        let fleet = clients.wait(mark, limit, first_route_update).await;
        let got = inspector.last_route().and_then(|b| route_weight(&b, svc));
        route_ok &= got == Some(weight);
        say!(
            start,
            "change {}/{runs} (svc-{svc} v1 weight {weight}): first {}, last {}{}",
            run + 1,
            fleet.first().map_or_else(|| "—".into(), report::dur),
            fleet.show_last(),
            if got == Some(weight) {
                String::new()
            } else {
                format!(" — route carries weight {got:?}")
            }
        );
        r.changes.push(fleet);
    }
    r.load_changes = changes_start.load(&CpuMark::now(cp_done, &plane), args.clk_tck);
    if let (Some(a), Some(b)) = (cpu0, plane.cpu_ticks())
        && runs > 0
    {
        r.change_cpu_s = Some((b - a) as f64 / args.clk_tck.max(1) as f64 / runs as f64);
    }
    r.route_checked = (runs > 0).then_some(route_ok);

    // ---- endpoint change: only the affected ClusterLoadAssignments may move
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mark = Instant::now();
    mesh::write_atomic(
        &mesh::se_path(&dir, 0),
        &mesh::service_entry(&scale, 0, Some(1)),
    )?;
    let fleet = clients.wait(mark, limit, first_of(Ty::Eds)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut e = EndpointChange {
        fleet,
        clas_min: usize::MAX,
        expected: if scale.with_subsets > 0 {
            vec![mesh::cluster(0, ""), mesh::cluster(0, mesh::version_of(0))]
        } else {
            vec![mesh::cluster(0, "")]
        },
        ..Default::default()
    };
    for p in &clients.proxies {
        let ev = p.events_since(mark);
        let clas: usize = ev.iter().filter(|e| e.ty == Ty::Eds).map(|e| e.added).sum();
        e.clas_min = e.clas_min.min(clas);
        e.clas_max = e.clas_max.max(clas);
        e.other_updates += ev.iter().filter(|e| e.ty != Ty::Eds).count();
        if p.index == 0 {
            e.names = ev
                .iter()
                .filter(|e| e.ty == Ty::Eds)
                .flat_map(|e| e.names.iter().cloned())
                .collect();
        }
    }
    e.expected.sort();
    e.names.sort();
    say!(
        start,
        "endpoint change: last {}, CLAs per client {}–{}, other updates {}",
        e.fleet.show_last(),
        e.clas_min,
        e.clas_max,
        e.other_updates
    );
    r.endpoint = e;
    r.mem_changes = plane.mem();
    (r.non_eds, r.undecodable) = inspector.oddities();

    // ---- restart: SIGKILL, start again; clients reconnect without versions (full re-push)
    clients.forget.store(true, Ordering::Relaxed);
    if !plane.alive() {
        bail!(
            "the control plane died; log:\n{}",
            cp::log_tail(&spec.log, 20)
        );
    }
    cp_done += plane.kill().unwrap_or(0);
    let mark = Instant::now();
    let mut plane = cp::ControlPlane::start(&spec)?;
    r.restart_full_listening = plane.wait_listening(&spec, limit).await?;
    r.restart_full = clients
        .wait(mark, limit, |ev| sim::complete_at(ev, clusters))
        .await;
    say!(
        start,
        "restart (full re-push): listening after {}, all clients complete after {}",
        report::dur(r.restart_full_listening),
        r.restart_full.show_last()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.mem_restart = plane.mem();

    // ---- restart again; clients report what they hold, as weft-proxy does
    tokio::time::sleep(Duration::from_secs(1)).await;
    clients.forget.store(false, Ordering::Relaxed);
    cp_done += plane.kill().unwrap_or(0);
    let mark = Instant::now();
    let mut plane = cp::ControlPlane::start(&spec)?;
    plane.wait_listening(&spec, limit).await?;
    r.restart_resume = clients.wait(mark, limit, sim::every_type_at).await;
    r.resume_resent = clients
        .proxies
        .iter()
        .flat_map(|p| p.events_since(mark))
        .map(|e| e.added)
        .sum();
    say!(
        start,
        "restart (resume): all clients resynced after {}, {} resources resent",
        r.restart_resume.show_last(),
        r.resume_resent
    );
    if !plane.alive() {
        return Err(anyhow!(
            "the control plane died; log:\n{}",
            cp::log_tail(&spec.log, 20)
        ));
    }
    r.load_all = whole.load(&CpuMark::now(cp_done, &plane), args.clk_tck);
    drop(plane);
    drop(clients);
    drop(work);
    Ok(r)
}

fn raw_json(r: &Results) -> serde_json::Value {
    let ms = |f: &Fleet| -> Vec<f64> {
        f.times
            .iter()
            .map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
            .collect()
    };
    serde_json::json!({
        "scale": r.scale.map(|s| serde_json::json!({
            "services": s.services, "endpoints": s.endpoints(), "destination_rules": s.with_subsets,
            "virtual_services": s.with_routes,
        })),
        "clients": r.clients,
        "listening_ms": r.listening.as_secs_f64() * 1e3,
        "initial_ms": ms(&r.initial),
        "changes_ms": r.changes.iter().map(ms).collect::<Vec<_>>(),
        "change_cpu_s": r.change_cpu_s,
        "endpoint_ms": ms(&r.endpoint.fleet),
        "restart_full_ms": ms(&r.restart_full),
        "restart_resume_ms": ms(&r.restart_resume),
        "rss_kb": {
            "initial": r.mem_initial.rss_kb, "after_changes": r.mem_changes.rss_kb,
            "hwm_first": r.mem_changes.hwm_kb, "after_restart": r.mem_restart.rss_kb,
            "hwm_restart": r.mem_restart.hwm_kb,
        },
    })
}

async fn signals() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let start = Instant::now();
    let (out, json) = (args.out.clone(), args.json.clone());
    let result = tokio::select! {
        r = run(args, start) => r,
        s = signals() => Err(s.err().unwrap_or_else(|| anyhow!("interrupted"))),
    };
    match result {
        Ok(r) => {
            let table = r.markdown();
            println!("{table}");
            if let Some(p) = out
                && let Err(e) = std::fs::write(&p, &table)
            {
                eprintln!("cp-scale: cannot write {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
            if let Some(p) = json
                && let Err(e) = std::fs::write(&p, raw_json(&r).to_string())
            {
                eprintln!("cp-scale: cannot write {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cp-scale: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::{
        Route, RouteAction, VirtualHost, WeightedCluster, weighted_cluster::ClusterWeight,
    };
    use envoy_types::pb::google::protobuf::UInt32Value;

    #[test]
    fn run_weights_differ_from_initial_and_stay_valid() {
        for r in 0..200 {
            let w = run_weight(r);
            assert!((50..90).contains(&w));
            assert_ne!(w, mesh::INITIAL_WEIGHT);
        }
        assert_ne!(run_weight(0), run_weight(1));
    }

    #[test]
    fn reads_the_v1_weight_from_a_route() {
        let cw = |subset: &str, w: u32| ClusterWeight {
            name: mesh::cluster(3, subset),
            weight: Some(UInt32Value { value: w }),
            ..Default::default()
        };
        let rc = RouteConfiguration {
            name: "outbound".into(),
            virtual_hosts: vec![VirtualHost {
                name: format!("{}:8080", mesh::host(3)),
                routes: vec![Route {
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(
                            WeightedCluster {
                                clusters: vec![cw("v1", 61), cw("v2", 39)],
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = rc.encode_to_vec();
        assert_eq!(route_weight(&bytes, 3), Some(61));
        assert_eq!(route_weight(&bytes, 4), None);
        assert_eq!(route_weight(b"\xff\xff", 3), None);
    }
}
