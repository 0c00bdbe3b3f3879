//! `weft demo`: a complete mesh on one laptop with one command — the control plane, an ingress
//! gateway (label `istio: ingressgateway`, its port 80 served on 127.0.0.1:8080, its port 443 on
//! `--https-port` when given) and Istio's Bookinfo (productpage, details, reviews v1/v2/v3,
//! ratings on port 9080 in `default`), each app with its own sidecar. Istio's own Bookinfo YAML
//! applies unchanged.
//!
//! Everything runs from this one binary: apps are `weft app ...` child processes, proxies are
//! `weft proxy ...` child processes.

use crate::bootstrap::ProxySpec;
use crate::{process, run};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Local port for the ingress gateway's port 80.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Local port for the ingress gateway's port 443 (HTTPS / TLS servers of Gateways); without
    /// it such servers bind 443 itself, which needs privileges.
    #[arg(long)]
    pub https_port: Option<u16>,
    /// Directory of Istio YAML the control plane watches (default: a fresh one with the demo's
    /// services, gateway and destination rules).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Control plane xDS address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub xds: SocketAddr,
    /// Control plane API address (what `weft` commands reach through `--control`).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub api: SocketAddr,
    /// The ingress gateway's admin address.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub gateway_admin: SocketAddr,
}

/// The demo's starting configuration (Istio's own files where Istio has one).
const DEMO_FILES: &[(&str, &str)] = &[
    (
        "services.yaml",
        include_str!("../../../examples/bookinfo/networking/services.yaml"),
    ),
    (
        "bookinfo-gateway.yaml",
        include_str!("../../../examples/bookinfo/networking/bookinfo-gateway.yaml"),
    ),
    (
        "destination-rule-all.yaml",
        include_str!("../../../examples/bookinfo/networking/destination-rule-all.yaml"),
    ),
];

struct App {
    name: &'static str,
    labels: &'static [(&'static str, &'static str)],
    args: &'static [&'static str],
}

const APPS: &[App] = &[
    App {
        name: "details-v1",
        labels: &[("app", "details"), ("version", "v1")],
        args: &["bookinfo", "details"],
    },
    App {
        name: "ratings-v1",
        labels: &[("app", "ratings"), ("version", "v1")],
        args: &["bookinfo", "ratings"],
    },
    App {
        name: "reviews-v1",
        labels: &[("app", "reviews"), ("version", "v1")],
        args: &["bookinfo", "reviews", "--version", "v1"],
    },
    App {
        name: "reviews-v2",
        labels: &[("app", "reviews"), ("version", "v2")],
        args: &["bookinfo", "reviews", "--version", "v2"],
    },
    App {
        name: "reviews-v3",
        labels: &[("app", "reviews"), ("version", "v3")],
        args: &["bookinfo", "reviews", "--version", "v3"],
    },
    App {
        name: "productpage-v1",
        labels: &[("app", "productpage"), ("version", "v1")],
        args: &["bookinfo", "productpage"],
    },
];

/// `weft app NAME ARGS`: runs a demo application in this process.
pub fn run_app(args: &[String]) -> ExitCode {
    let Some((app, rest)) = args.split_first() else {
        eprintln!("weft app: name an application (bookinfo, httpbin, greeter)");
        return ExitCode::from(2);
    };
    let argv: Vec<String> = std::iter::once(app.clone())
        .chain(rest.iter().cloned())
        .collect();
    match app.as_str() {
        "bookinfo" => bookinfo::cli::main(argv),
        "httpbin" => httpbin::cli::main(argv),
        "greeter" => greeter::cli::main(argv),
        other => {
            eprintln!("weft app: unknown application `{other}` (bookinfo, httpbin, greeter)");
            ExitCode::from(2)
        }
    }
}

pub async fn demo(a: DemoArgs) -> Result<()> {
    let dir = match a.dir {
        Some(d) => d,
        None => {
            let d = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            for (name, text) in DEMO_FILES {
                std::fs::write(d.join(name), text)?;
            }
            d
        }
    };
    // Logs and proxy bootstraps live in a hidden subdirectory, which the watcher skips.
    let logs = dir.join(".weft");
    std::fs::create_dir_all(&logs)?;
    let opts = weft_control::Options {
        dir: Some(dir.clone()),
        xds_addr: a.xds,
        api_addr: a.api,
        ..Default::default()
    };
    let xds = opts.xds_addr;
    let cp = weft_control::ControlPlane::new(opts);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cp.clone().serve(async move {
        let _ = stop_rx.await;
    }));
    // Give the servers a moment to bind; fail early if they could not.
    tokio::time::sleep(Duration::from_millis(200)).await;
    if server.is_finished() {
        return server
            .await
            .context("control plane")?
            .context("control plane");
    }
    let mut children = Vec::new();
    let mut port_map = vec![(80, a.port)];
    port_map.extend(a.https_port.map(|p| (443, p)));
    let result = start_all(&cp, &logs, xds, port_map, a.gateway_admin, &mut children).await;
    if result.is_ok() {
        println!(
            "\nWeft demo mesh is up.\n\n  Open  http://127.0.0.1:{port}/productpage   (Bookinfo through the ingress gateway)\n  Sign in as `jason` on the page, or send `end-user: jason`.\n\n  Shift traffic by applying Istio's own Bookinfo YAML (in examples/bookinfo/networking/):\n    weft apply -f examples/bookinfo/networking/virtual-service-all-v1.yaml          # all to reviews-v1\n    weft apply -f examples/bookinfo/networking/virtual-service-reviews-50-v3.yaml   # 50/50 v1/v3\n    weft apply -f examples/bookinfo/networking/virtual-service-reviews-test-v2.yaml # jason sees v2\n    weft apply -f examples/bookinfo/networking/virtual-service-reviews-v3.yaml      # all to v3\n\n  Inspect:  weft proxy-status · weft proxy-config routes productpage-v1 · weft get vs\n  Config directory (watched): {}\n  Logs: {}\n\nPress Ctrl-C to stop.",
            dir.display(),
            logs.display(),
            port = a.port
        );
        crate::cmds::shutdown_signal().await;
        eprintln!("weft demo: stopping");
    }
    for c in children.iter_mut().rev() {
        process::stop(c, Duration::from_secs(3)).await;
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    result
}

async fn start_all(
    cp: &std::sync::Arc<weft_control::ControlPlane>,
    logs: &std::path::Path,
    xds: SocketAddr,
    port_map: Vec<(u16, u16)>,
    gateway_admin: SocketAddr,
    children: &mut Vec<tokio::process::Child>,
) -> Result<()> {
    let log = |name: &str| std::fs::File::create(logs.join(format!("{name}.log")));
    // Ingress gateway.
    let gw = ProxySpec {
        role: "router",
        name: "istio-ingressgateway".into(),
        namespace: "istio-system".into(),
        labels: BTreeMap::from([
            ("istio".into(), "ingressgateway".into()),
            ("app".into(), "istio-ingressgateway".into()),
        ]),
        service_account: "istio-ingressgateway-service-account".into(),
        ip: "127.0.0.1".parse()?,
        inbound: Vec::new(),
        port_map: port_map.clone(),
        admin: gateway_admin,
        xds,
    };
    // Apps and their sidecars; the gateway last, once it has routes to them.
    for app in APPS {
        let r = cp
            .reserve(app.name, "default", vec![9080])
            .map_err(anyhow::Error::msg)?;
        let spec = ProxySpec {
            role: "sidecar",
            name: app.name.into(),
            namespace: "default".into(),
            labels: app
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: format!("bookinfo-{}", app.labels[0].1),
            ip: r.address,
            inbound: vec![(9080, weft_control::api::app_port(9080))],
            port_map: Vec::new(),
            admin: SocketAddr::new(r.address, 15000),
            xds,
        };
        children
            .push(run::start_proxy(&spec, logs, Some(log(&format!("{}-proxy", app.name))?)).await?);
        let outbound = format!("http://{}:15001", r.address);
        let mut cmd = tokio::process::Command::new(process::self_exe()?);
        cmd.arg("app")
            .args(app.args)
            .env(
                "WEFT_LISTEN_ADDR",
                SocketAddr::new(r.address, weft_control::api::app_port(9080)).to_string(),
            )
            .env("HTTP_PROXY", &outbound)
            .env("http_proxy", &outbound)
            .env("WEFT_WORKLOAD_NAME", app.name)
            .env("WEFT_NAMESPACE", "default")
            .stdout(log(app.name)?)
            .stderr(log(&format!("{}-err", app.name))?);
        children.push(process::spawn(cmd)?);
        eprintln!("weft demo: {} on {}", app.name, r.address);
    }
    children.push(run::start_proxy(&gw, logs, Some(log("istio-ingressgateway")?)).await?);
    for (gw_port, local) in &port_map {
        eprintln!("weft demo: ingress gateway port {gw_port} on 127.0.0.1:{local}");
    }
    Ok(())
}
