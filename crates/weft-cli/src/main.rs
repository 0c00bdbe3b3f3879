//! `weft`: the command users run. Thin: parses arguments and calls the libraries (the control
//! plane, the proxy, the demo apps) or the control plane's API.

mod bootstrap;
mod client;
mod cmds;
mod demo;
mod process;
mod run;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "weft",
    version,
    about = "Weft: a service mesh that runs Istio's config, on one laptop or many machines."
)]
struct Cli {
    /// The control plane's API (default http://127.0.0.1:15014).
    #[arg(
        long,
        global = true,
        env = "WEFT_CONTROL",
        default_value = "http://127.0.0.1:15014"
    )]
    control: String,
    /// Log level for commands that run servers.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the control plane on a directory of Istio YAML (watched: edits apply live).
    Up {
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:15010")]
        xds: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:15014")]
        api: SocketAddr,
        /// Push debounce, in milliseconds.
        #[arg(long, default_value_t = 100)]
        debounce_ms: u64,
    },
    /// Run an application with its sidecar: `weft run --name reviews-v1 --labels app=reviews,version=v1 --port 9080 -- CMD ARGS`.
    Run(run::RunArgs),
    /// Start a complete demo mesh: control plane, ingress gateway on 127.0.0.1:8080, Bookinfo.
    Demo(demo::DemoArgs),
    /// Apply Istio YAML (files or directories) through the control plane's API.
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// List resources: `weft get virtualservices`, `weft get vs reviews -n default -o yaml`.
    Get {
        kind: String,
        name: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// table, json or yaml.
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
    /// Delete a resource applied through the API: `weft delete vs reviews`.
    Delete {
        kind: String,
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Check Istio YAML for errors and cross-resource problems (IST codes), without a cluster.
    Analyze {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Every connected proxy and whether it has the latest config (SYNCED / STALE / NACK).
    ProxyStatus,
    /// What one proxy runs: `weft proxy-config routes productpage-v1`.
    ProxyConfig {
        /// listeners, routes, clusters or endpoints.
        what: String,
        /// Workload name (`reviews-v1` or `reviews-v1.default`), or an admin address `IP:PORT`.
        proxy: String,
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
    /// Run the data-plane proxy (same as the `weft-proxy` binary).
    #[command(hide = true)]
    Proxy {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a demo application (used by `weft demo`; `weft app bookinfo productpage`).
    #[command(hide = true)]
    App {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn init_logs(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    weft_control::mem::limit_arenas();
    let cli = Cli::parse();
    // Subcommands that run another program's own main.
    match &cli.cmd {
        Cmd::Proxy { args } => {
            let argv = std::iter::once("weft-proxy".to_string()).chain(args.iter().cloned());
            let opts = match <weft_proxy::Options as clap::Parser>::try_parse_from(argv) {
                Ok(o) => o,
                Err(e) => {
                    let _ = e.print();
                    return ExitCode::from(2);
                }
            };
            return match weft_proxy::run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("weft proxy: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::App { args } => return demo::run_app(args),
        _ => {}
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let control = cli.control.trim_end_matches('/').to_string();
    let result: anyhow::Result<i32> = rt.block_on(async move {
        match cli.cmd {
            Cmd::Up {
                dir,
                xds,
                api,
                debounce_ms,
            } => {
                init_logs(&cli.log_level);
                cmds::up(dir, xds, api, debounce_ms).await.map(|_| 0)
            }
            Cmd::Run(args) => {
                init_logs("warn");
                run::run(&control, args).await
            }
            Cmd::Demo(args) => {
                init_logs(&cli.log_level);
                demo::demo(args).await.map(|_| 0)
            }
            Cmd::Apply { files } => cmds::apply(&control, &files).await,
            Cmd::Get {
                kind,
                name,
                namespace,
                output,
            } => cmds::get(&control, &kind, name.as_deref(), &namespace, &output).await,
            Cmd::Delete {
                kind,
                name,
                namespace,
            } => cmds::delete(&control, &kind, &name, &namespace).await,
            Cmd::Analyze { paths } => cmds::analyze(&paths),
            Cmd::ProxyStatus => cmds::proxy_status(&control).await,
            Cmd::ProxyConfig {
                what,
                proxy,
                output,
            } => cmds::proxy_config(&control, &what, &proxy, &output).await,
            Cmd::Proxy { .. } | Cmd::App { .. } => Ok(0),
        }
    });
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("weft: {e:#}");
            ExitCode::FAILURE
        }
    }
}
