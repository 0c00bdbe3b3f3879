//! weft-proxy: the data-plane proxy of the Weft service mesh.
//!
//! The proxy's runtime model is its own (listeners, route tables, clusters, endpoint sets); it
//! is compiled once per config generation from Envoy v3 resources and the hot path never
//! touches protobuf types. Request path: `listener` (accept, detect, filter chain, TLS) →
//! `http` (connection manager, `http::proxy` router) → `upstream` (load balancing, pools,
//! circuit breakers, outlier detection) — or `tcp` for opaque streams.

pub mod access_log;
pub mod admin;
pub mod after_write;
pub mod config;
pub mod fastmap;
pub mod flags;
pub mod http;
pub mod io;
pub mod listener;
pub mod mem;
pub mod router;
pub mod runtime;
pub mod stats;
pub mod supported;
pub mod tcp;
pub mod tls;
pub mod upstream;
pub mod xds;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Command-line options, Envoy-compatible where Envoy has the same flag.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "weft-proxy",
    version,
    about = "Weft's data-plane proxy. Takes an Envoy v3 bootstrap (YAML or JSON)."
)]
pub struct Options {
    /// Bootstrap file (Envoy v3 format, YAML or JSON). Watched: edits apply live, as does SIGHUP.
    #[arg(short = 'c', long = "config-path", env = "WEFT_PROXY_CONFIG")]
    pub config_path: PathBuf,
    /// Worker threads (default: available cores). 1 runs everything on one thread.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Longest time to wait for open connections to finish on shutdown, in seconds.
    #[arg(long = "drain-time-s", default_value_t = 5)]
    pub drain_time_s: u64,
    /// Log level or filter (trace, debug, info, warn, error; or a tracing filter).
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    pub log_level: String,
    /// `serve` runs the proxy; `validate` only checks the bootstrap and exits.
    #[arg(long, default_value = "serve", value_parser = ["serve", "validate"])]
    pub mode: String,
}

/// Runs the proxy until it is told to stop. Returns an error (to print) on a bad bootstrap.
pub fn run(opts: Options) -> anyhow::Result<()> {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_new(&opts.log_level)
        .map_err(|e| anyhow::anyhow!("invalid --log-level `{}`: {e}", opts.log_level))?;
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();

    if opts.mode == "validate" {
        let (b, _) = runtime::read_bootstrap(&opts.config_path)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            runtime::compile(&b, &Default::default(), None, &stats::Stats::new(), 1)
        })?;
        println!("configuration '{}' OK", opts.config_path.display());
        return Ok(());
    }
    let workers = opts
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let stats = Arc::new(stats::Stats::new());
        let proxy = runtime::Control::start(
            opts.config_path.clone(),
            stats,
            Some(runtime::LogReload(reload)),
        )?;
        let shared = proxy.shared.clone();
        let snap = shared.snapshot();
        let admin_addr = admin_address(&snap.bootstrap)?;
        let admin_listener = listener::bind(admin_addr)
            .map_err(|e| anyhow::anyhow!("cannot bind admin on {admin_addr}: {e}"))?;
        tracing::info!(%admin_addr, "admin listening");
        let (xds_stop, xds_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let xds_task = tokio::spawn(xds::run(proxy.clone(), async move {
            let _ = xds_stop_rx.await;
        }));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let handler: Arc<dyn admin::AdminHandler> = Arc::new(runtime::Admin(shared.clone()));
        let admin_task = tokio::spawn(admin::serve(admin_listener, handler, async move {
            let _ = stop_rx.await;
        }));
        proxy.run(Duration::from_secs(opts.drain_time_s)).await?;
        // The last requests' access-log lines are on their writer threads' queues.
        let _ = tokio::task::spawn_blocking(|| access_log::flush_all(Duration::from_secs(2))).await;
        let _ = stop_tx.send(());
        let _ = xds_stop.send(());
        let _ = xds_task.await;
        let _ = admin_task.await;
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

fn admin_address(
    b: &envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap,
) -> anyhow::Result<std::net::SocketAddr> {
    match b.admin.as_ref().and_then(|a| a.address.as_ref()) {
        None => Ok(([127, 0, 0, 1], 15000).into()),
        Some(a) => Ok(config::socket_addr(
            &config::Ctx::new("admin", "admin"),
            "admin.address",
            Some(a),
        )?),
    }
}
