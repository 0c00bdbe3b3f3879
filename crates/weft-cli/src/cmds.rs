//! The `weft` commands that talk to the control plane (`apply`, `get`, `delete`,
//! `proxy-status`, `proxy-config`), run it (`up`), or work offline (`analyze`).

/// Prints a line to stdout; a closed pipe (`weft get vs | head`) ends the command quietly
/// instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

use crate::client;
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use serde_json::Value as Json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub async fn up(dir: PathBuf, xds: SocketAddr, api: SocketAddr, debounce_ms: u64) -> Result<()> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let opts = weft_control::Options {
        dir: Some(dir),
        xds_addr: xds,
        api_addr: api,
        debounce: Duration::from_millis(debounce_ms),
        ..Default::default()
    };
    let cp = weft_control::ControlPlane::new(opts);
    cp.serve(shutdown_signal()).await
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut t), Ok(mut i)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
}

/// YAML/JSON files under `paths` (directories recursively), sorted.
pub fn config_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        if p.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .flatten()
                .map(|e| e.path())
                .collect();
            entries.sort();
            for e in entries {
                walk(&e, out)?;
            }
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p.to_path_buf());
        } else if !p.exists() {
            bail!("{}: no such file or directory", p.display());
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        walk(p, &mut out)?;
    }
    Ok(out)
}

pub async fn apply(control: &str, files: &[PathBuf]) -> Result<i32> {
    let mut failed = false;
    for f in config_files(files)? {
        let text = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        let name = f.display().to_string();
        let url = format!(
            "{control}/api/v1/resources?source={}",
            name.replace(' ', "%20")
        );
        let (status, body) = client::call(
            http::Method::POST,
            &url,
            Some((Bytes::from(text), "application/yaml")),
        )
        .await?;
        if status == 200 {
            let v: Json = serde_json::from_slice(&body)?;
            for a in v["applied"].as_array().into_iter().flatten() {
                out!("{}", a.as_str().unwrap_or_default());
            }
            for w in v["warnings"].as_array().into_iter().flatten() {
                eprintln!("warning: {}", w.as_str().unwrap_or_default());
            }
        } else {
            failed = true;
            eprintln!("{}", client::error_text(status, &body));
        }
    }
    Ok(if failed { 1 } else { 0 })
}

pub async fn get(
    control: &str,
    kind: &str,
    name: Option<&str>,
    ns: &str,
    output: &str,
) -> Result<i32> {
    let url = match name {
        Some(n) => format!("{control}/api/v1/resources/{kind}/{ns}/{n}"),
        None => format!("{control}/api/v1/resources/{kind}"),
    };
    let v = client::get_json(&url).await?;
    let items = v["items"].as_array().cloned().unwrap_or_default();
    match output {
        "json" => out!(
            "{}",
            serde_json::to_string_pretty(
                &items
                    .iter()
                    .map(|i| i["object"].clone())
                    .collect::<Vec<_>>()
            )?
        ),
        "yaml" => {
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out!("---");
                }
                print!("{}", to_yaml(&it["object"], 0));
            }
        }
        _ => {
            if items.is_empty() {
                out!("No resources found.");
                return Ok(0);
            }
            out!("{:<22} {:<14} {:<28} SOURCE", "KIND", "NAMESPACE", "NAME");
            for it in items {
                out!(
                    "{:<22} {:<14} {:<28} {}:{}",
                    it["kind"].as_str().unwrap_or(""),
                    it["namespace"].as_str().unwrap_or(""),
                    it["name"].as_str().unwrap_or(""),
                    it["source"].as_str().unwrap_or(""),
                    it["line"]
                );
            }
        }
    }
    Ok(0)
}

/// A small YAML emitter for `-o yaml` (block style, strings quoted when needed).
fn to_yaml(v: &Json, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let scalar = |v: &Json| match v {
        Json::String(s)
            if s.is_empty()
                || s.contains(':')
                || s.contains('#')
                || s.starts_with(['*', '&', '!', '-', '{', '[', '"', '\''])
                || s.parse::<f64>().is_ok()
                || ["true", "false", "null", "yes", "no"].contains(&s.as_str()) =>
        {
            serde_json::to_string(s).unwrap_or_default()
        }
        Json::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = String::new();
    match v {
        Json::Object(m) => {
            for (k, v) in m {
                match v {
                    Json::Object(o) if !o.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n{}", to_yaml(v, indent + 2)))
                    }
                    Json::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n{}", to_yaml(v, indent)))
                    }
                    Json::Object(_) => out.push_str(&format!("{pad}{k}: {{}}\n")),
                    Json::Array(_) => out.push_str(&format!("{pad}{k}: []\n")),
                    other => out.push_str(&format!("{pad}{k}: {}\n", scalar(other))),
                }
            }
        }
        Json::Array(a) => {
            for item in a {
                match item {
                    Json::Object(_) | Json::Array(_) => {
                        let inner = to_yaml(item, indent + 2);
                        let trimmed = inner.trim_start();
                        out.push_str(&format!("{pad}- {trimmed}"));
                    }
                    other => out.push_str(&format!("{pad}- {}\n", scalar(other))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
    out
}

pub async fn delete(control: &str, kind: &str, name: &str, ns: &str) -> Result<i32> {
    let (status, body) = client::call(
        http::Method::DELETE,
        &format!("{control}/api/v1/resources/{kind}/{ns}/{name}"),
        None,
    )
    .await?;
    if status == 200 {
        let v: Json = serde_json::from_slice(&body)?;
        out!("{} deleted", v["deleted"].as_str().unwrap_or_default());
        Ok(0)
    } else {
        eprintln!("{}", client::error_text(status, &body));
        Ok(1)
    }
}

/// Offline analysis: every file is parsed and validated (errors with file:line and field
/// path), then cross-resource checks run over all of them.
pub fn analyze(paths: &[PathBuf]) -> Result<i32> {
    let mut parsed = Vec::new();
    let mut errors = 0;
    for f in config_files(paths)? {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        match weft_api::parse_documents(&f.display().to_string(), &text) {
            Ok(list) => parsed.extend(list),
            Err(errs) => {
                for e in errs {
                    errors += 1;
                    out!("Error [IST0106] (SchemaValidationError) {e}");
                }
            }
        }
    }
    let findings = weft_api::analyze(&parsed, &[]);
    for f in &findings {
        out!("{f}");
        if matches!(f.severity, weft_api::Severity::Error) {
            errors += 1;
        }
    }
    // Valid Istio that this version of Weft would not act on, as the control plane reports it.
    let mut unimplemented = 0;
    for p in &parsed {
        for w in weft_control::translate::unimplemented(&weft_control::store::stored(p).res()) {
            unimplemented += 1;
            // The field is the message's first `quoted` path (some add `: VALUE` after it).
            let field = w.split('`').nth(1).and_then(|q| q.split([':', ' ']).next());
            let (line, col) = field.and_then(|f| p.spans.locate(f)).unwrap_or((p.line, 1));
            out!("Warning [unimplemented] {}:{line}:{col} {w}", p.source);
        }
    }
    if errors == 0 && findings.is_empty() && unimplemented == 0 {
        out!(
            "✔ No validation issues found when analyzing {} resource(s).",
            parsed.len()
        );
    }
    Ok(if errors > 0 { 1 } else { 0 })
}

pub async fn proxy_status(control: &str) -> Result<i32> {
    let v = client::get_json(&format!("{control}/debug/syncz")).await?;
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        out!("No proxies connected.");
        return Ok(0);
    }
    let types = [
        ("CDS", "Cluster"),
        ("LDS", "Listener"),
        ("EDS", "ClusterLoadAssignment"),
        ("RDS", "RouteConfiguration"),
    ];
    out!(
        "{:<64} {:<10} {:<10} {:<10} {:<10}",
        "NAME",
        "CDS",
        "LDS",
        "EDS",
        "RDS"
    );
    let mut nacks = Vec::new();
    for n in &list {
        let id = n["node_id"].as_str().unwrap_or("");
        let mut cols = Vec::new();
        for (short, t) in types {
            let st = n["per_type"].as_object().and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.ends_with(&format!(".{t}")))
                    .map(|(_, v)| v.clone())
            });
            let state = st
                .as_ref()
                .and_then(|s| s["state"].as_str())
                .unwrap_or("NOT SENT")
                .to_ascii_uppercase();
            if let Some(nack) = st
                .as_ref()
                .and_then(|s| s.get("nacked"))
                .filter(|n| !n.is_null())
            {
                nacks.push(format!("{id} {short}: {nack}"));
            }
            cols.push(state);
        }
        out!(
            "{:<64} {:<10} {:<10} {:<10} {:<10}",
            id,
            cols[0],
            cols[1],
            cols[2],
            cols[3]
        );
    }
    for n in nacks {
        out!("NACK {n}");
    }
    Ok(0)
}

/// Finds a proxy's admin address from the control plane's workload list.
async fn admin_of(control: &str, proxy: &str) -> Result<String> {
    if proxy.parse::<SocketAddr>().is_ok() {
        return Ok(proxy.to_string());
    }
    let v = client::get_json(&format!("{control}/api/v1/workloads")).await?;
    let (name, ns) = proxy.split_once('.').unwrap_or((proxy, ""));
    for w in v["workloads"].as_array().into_iter().flatten() {
        if w["name"] == name && (ns.is_empty() || w["namespace"] == ns) {
            return Ok(format!("{}:15000", w["ip"].as_str().unwrap_or("127.0.0.1")));
        }
    }
    bail!("no connected proxy named {proxy} (see `weft proxy-status`)")
}

pub async fn proxy_config(control: &str, what: &str, proxy: &str, output: &str) -> Result<i32> {
    let admin = admin_of(control, proxy).await?;
    let dump = client::get_json(&format!("http://{admin}/config_dump")).await?;
    let configs = dump["configs"].as_array().cloned().unwrap_or_default();
    let find = |t: &str| {
        configs
            .iter()
            .find(|c| c["@type"].as_str().is_some_and(|s| s.ends_with(t)))
            .cloned()
            .unwrap_or(Json::Null)
    };
    let (section, items): (&str, Vec<Json>) = match what {
        "listeners" | "listener" | "lds" => {
            let d = find("ListenersConfigDump");
            let mut v: Vec<Json> = d["static_listeners"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|l| l["listener"].clone())
                .collect();
            for l in d["dynamic_listeners"].as_array().into_iter().flatten() {
                v.push(l["active_state"]["listener"].clone());
            }
            ("listeners", v)
        }
        "routes" | "route" | "rds" => (
            "routes",
            find("RoutesConfigDump")["dynamic_route_configs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|r| r["route_config"].clone())
                .collect(),
        ),
        "clusters" | "cluster" | "cds" => {
            let d = find("ClustersConfigDump");
            let mut v: Vec<Json> = d["static_clusters"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|c| c["cluster"].clone())
                .collect();
            v.extend(
                d["dynamic_active_clusters"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| c["cluster"].clone()),
            );
            ("clusters", v)
        }
        "endpoints" | "endpoint" | "eds" => (
            "endpoints",
            find("EndpointsConfigDump")["dynamic_endpoint_configs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|c| c["endpoint_config"].clone())
                .collect(),
        ),
        other => bail!("unknown config type `{other}` (listeners, routes, clusters or endpoints)"),
    };
    if output == "json" {
        out!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(0);
    }
    match section {
        "listeners" => {
            out!("{:<28} {:<24} WHAT", "NAME", "ADDRESS");
            for l in items {
                let a = &l["address"]["socket_address"];
                let addr = format!(
                    "{}:{}",
                    a["address"].as_str().unwrap_or(""),
                    a["port_value"]
                );
                let chains = l["filter_chains"].as_array().map_or(0, Vec::len);
                let what = if l["api_listener"].is_object() {
                    "API listener".to_string()
                } else {
                    format!("{chains} filter chain(s)")
                };
                out!(
                    "{:<28} {:<24} {}",
                    l["name"].as_str().unwrap_or(""),
                    addr,
                    what
                );
            }
        }
        "routes" => {
            out!(
                "{:<14} {:<48} {:<36} ACTION",
                "ROUTE CONFIG",
                "VIRTUAL HOST",
                "MATCH"
            );
            for rc in items {
                for vh in rc["virtual_hosts"].as_array().into_iter().flatten() {
                    for r in vh["routes"].as_array().into_iter().flatten() {
                        let m = &r["match"];
                        let mut mm = if let Some(p) = m["prefix"].as_str() {
                            format!("prefix {p}")
                        } else if let Some(p) = m["path"].as_str() {
                            format!("path {p}")
                        } else if m["safe_regex"].is_object() {
                            format!("regex {}", m["safe_regex"]["regex"].as_str().unwrap_or(""))
                        } else if m["connect_matcher"].is_object() {
                            "CONNECT".to_string()
                        } else {
                            "*".to_string()
                        };
                        for h in m["headers"].as_array().into_iter().flatten() {
                            mm.push_str(&format!(
                                " {}={}",
                                h["name"].as_str().unwrap_or(""),
                                h["string_match"]
                                    .as_object()
                                    .and_then(|o| o.values().next())
                                    .map_or_else(|| "*".to_string(), |v| v.to_string())
                            ));
                        }
                        let action = if let Some(c) = r["route"]["cluster"].as_str() {
                            c.to_string()
                        } else if let Some(wc) =
                            r["route"]["weighted_clusters"]["clusters"].as_array()
                        {
                            wc.iter()
                                .map(|c| {
                                    format!("{}:{}", c["name"].as_str().unwrap_or(""), c["weight"])
                                })
                                .collect::<Vec<_>>()
                                .join(", ")
                        } else if r["redirect"].is_object() {
                            "redirect".into()
                        } else if r["direct_response"].is_object() {
                            format!("direct {}", r["direct_response"]["status"])
                        } else {
                            String::new()
                        };
                        out!(
                            "{:<14} {:<48} {:<36} {}",
                            rc["name"].as_str().unwrap_or(""),
                            vh["name"].as_str().unwrap_or(""),
                            mm,
                            action
                        );
                    }
                }
            }
        }
        "clusters" => {
            out!("{:<64} {:<8} {:<14}", "NAME", "TYPE", "LB");
            for c in items {
                out!(
                    "{:<64} {:<8} {:<14}",
                    c["name"].as_str().unwrap_or(""),
                    c["type"].as_str().unwrap_or("STATIC"),
                    c["lb_policy"].as_str().unwrap_or("ROUND_ROBIN")
                );
            }
        }
        _ => {
            out!("{:<64} {:<22} LOCALITY", "CLUSTER", "ENDPOINT");
            for cla in items {
                for loc in cla["endpoints"].as_array().into_iter().flatten() {
                    let l = &loc["locality"];
                    let locality = [
                        l["region"].as_str(),
                        l["zone"].as_str(),
                        l["sub_zone"].as_str(),
                    ]
                    .iter()
                    .flatten()
                    .copied()
                    .collect::<Vec<_>>()
                    .join("/");
                    for e in loc["lb_endpoints"].as_array().into_iter().flatten() {
                        let a = &e["endpoint"]["address"]["socket_address"];
                        out!(
                            "{:<64} {:<22} {}",
                            cla["cluster_name"].as_str().unwrap_or(""),
                            format!(
                                "{}:{}",
                                a["address"].as_str().unwrap_or(""),
                                a["port_value"]
                            ),
                            locality
                        );
                    }
                }
            }
        }
    }
    Ok(0)
}
