//! `weft run`: starts an application with its sidecar on a loopback address of its own, holds
//! the application until the sidecar has its configuration, and stops both together (with the
//! application's exit code) — so jobs finish and nothing is left running.

use crate::bootstrap::ProxySpec;
use crate::{client, process};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Workload name (e.g. reviews-v1).
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Labels, `k=v,k2=v2` (the `app` and `version` labels select it into services and subsets).
    #[arg(long, value_parser = parse_labels, default_value = "")]
    pub labels: BTreeMap<String, String>,
    /// Service port(s) the workload serves; the sidecar listens there and forwards to the app.
    #[arg(long = "port")]
    pub ports: Vec<u16>,
    #[arg(long = "service-account", default_value = "default")]
    pub service_account: String,
    /// The command to run, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for kv in s.split(',').map(str::trim).filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("label `{kv}` is not key=value"))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// What the control plane assigned to a new workload.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Assignment {
    pub address: IpAddr,
    pub xds: SocketAddr,
    pub inbound: Vec<Inbound>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Inbound {
    pub port: u16,
    pub app_port: u16,
}

pub async fn register(control: &str, a: &RunArgs) -> Result<Assignment> {
    let v = client::post_json(
        &format!("{control}/api/v1/workloads"),
        &json!({"name": a.name, "namespace": a.namespace, "labels": a.labels, "ports": a.ports, "service_account": a.service_account}),
    )
    .await
    .context("registering the workload with the control plane")?;
    serde_json::from_value(v).context("unexpected answer from the control plane")
}

/// Writes a bootstrap and starts a proxy (`weft proxy -c FILE`); returns when it is ready.
pub async fn start_proxy(
    spec: &ProxySpec,
    dir: &std::path::Path,
    log: Option<std::fs::File>,
) -> Result<tokio::process::Child> {
    let path = dir.join(format!("{}.{}.bootstrap.json", spec.name, spec.namespace));
    std::fs::write(&path, serde_json::to_vec_pretty(&spec.bootstrap())?)
        .with_context(|| format!("writing {}", path.display()))?;
    let mut cmd = tokio::process::Command::new(process::self_exe()?);
    cmd.arg("proxy").arg("-c").arg(&path).args([
        "--concurrency",
        "1",
        "--drain-time-s",
        "2",
        "-l",
        "warn",
    ]);
    if let Some(f) = log {
        cmd.stdout(f.try_clone()?).stderr(f);
    }
    let mut child = process::spawn(cmd)?;
    let ready = format!("http://{}/ready", spec.admin);
    let dump = format!("http://{}/config_dump", spec.admin);
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = client::call(http::Method::GET, &ready, None).await {
            return Ok(child);
        }
        if let Ok(Some(st)) = child.try_wait() {
            bail!(
                "the proxy for {}.{} exited before it was ready ({st}); see its log",
                spec.name,
                spec.namespace
            );
        }
        // A config the proxy refused (e.g. a port already in use) will not fix itself: say so
        // after a few seconds instead of waiting the whole timeout.
        let refused = if started.elapsed() > Duration::from_secs(3) {
            client::get_json(&dump)
                .await
                .ok()
                .and_then(|d| d["weft"]["last_reload_error"].as_str().map(str::to_string))
        } else {
            None
        };
        if let Some(why) = refused.filter(|_| started.elapsed() > Duration::from_secs(5)) {
            process::stop(&mut child, Duration::from_secs(1)).await;
            bail!(
                "the proxy for {}.{} refused its configuration: {why}",
                spec.name,
                spec.namespace
            );
        }
        if tokio::time::Instant::now() > deadline {
            process::stop(&mut child, Duration::from_secs(1)).await;
            bail!(
                "the proxy for {}.{} did not get its configuration within 30 s (is the control plane up?)",
                spec.name,
                spec.namespace
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(control: &str, a: RunArgs) -> Result<i32> {
    let asg = register(control, &a).await?;
    let dir = std::env::temp_dir().join(format!("weft-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let spec = ProxySpec {
        role: "sidecar",
        name: a.name.clone(),
        namespace: a.namespace.clone(),
        labels: a.labels.clone(),
        service_account: a.service_account.clone(),
        ip: asg.address,
        inbound: asg.inbound.iter().map(|i| (i.port, i.app_port)).collect(),
        port_map: Vec::new(),
        admin: SocketAddr::new(asg.address, 15000),
        xds: asg.xds,
    };
    let result = supervise(control, &a, &asg, &spec, &dir).await;
    let _ = client::call(
        http::Method::DELETE,
        &format!("{control}/api/v1/workloads/{}/{}", a.namespace, a.name),
        None,
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn supervise(
    _control: &str,
    a: &RunArgs,
    asg: &Assignment,
    spec: &ProxySpec,
    dir: &std::path::Path,
) -> Result<i32> {
    let mut proxy = start_proxy(spec, dir, None).await?;
    let outbound = format!("http://{}:15001", asg.address);
    let (program, args) = a
        .command
        .split_first()
        .context("no command given after --")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("HTTP_PROXY", &outbound)
        .env("http_proxy", &outbound)
        .env("WEFT_WORKLOAD_NAME", &a.name)
        .env("WEFT_NAMESPACE", &a.namespace);
    if let Some(first) = asg.inbound.first() {
        cmd.env(
            "WEFT_LISTEN_ADDR",
            SocketAddr::new(asg.address, first.app_port).to_string(),
        )
        .env("PORT", first.app_port.to_string());
    }
    let mut app = match process::spawn(cmd) {
        Ok(c) => c,
        Err(e) => {
            process::stop(&mut proxy, Duration::from_secs(2)).await;
            return Err(e);
        }
    };
    eprintln!(
        "weft: {} running on {} (sidecar outbound {outbound})",
        a.name, asg.address
    );
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let code = tokio::select! {
        st = app.wait() => st.ok().and_then(|s| s.code()).unwrap_or(1),
        st = proxy.wait() => {
            eprintln!("weft: the sidecar of {} exited ({:?}); stopping the application", a.name, st.ok());
            process::stop(&mut app, Duration::from_secs(5)).await;
            1
        }
        _ = term.recv() => { process::stop(&mut app, Duration::from_secs(5)).await.and_then(|s| s.code()).unwrap_or(143) }
        _ = int.recv() => { process::stop(&mut app, Duration::from_secs(5)).await.and_then(|s| s.code()).unwrap_or(130) }
    };
    process::stop(&mut proxy, Duration::from_secs(3)).await;
    Ok(code)
}
