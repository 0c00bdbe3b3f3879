//! The command line of the `greeter` binary, as a library function so that `weft app greeter`
//! (used by `weft demo`) runs the same code in the `weft` executable.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use crate::GreeterServer;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "greeter", about = "gRPC helloworld Greeter")]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "WEFT_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Version label used in replies (`Hello NAME from greeter-VERSION`).
    #[arg(long, default_value = "v1", value_parser = crate::parse_version)]
    version: String,
}

/// Runs the command line `args` (program name first), as the binary does.
pub fn main(args: Vec<String>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("greeter: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    // Handlers first: `weft run` may signal as soon as it sees "listening".
    let stop = shutdown_signal();
    let listener = match tokio::net::TcpListener::bind(cli.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("greeter: cannot listen on {}: {e}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    let name = std::env::var("WEFT_WORKLOAD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("greeter-{}", cli.version));
    let addr = listener.local_addr().map_or(cli.listen, |a| a);
    let _ = writeln!(std::io::stdout().lock(), "{name} listening on {addr}");
    let server = GreeterServer::new(&cli.version, &name);
    let res = tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(
            server,
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop,
        )
        .await;
    match res {
        Ok(()) => {
            let _ = writeln!(std::io::stdout().lock(), "{name} stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("greeter: server failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Registers SIGTERM/SIGINT handlers now (so a signal that arrives before
/// the returned future is first polled is not lost, nor fatal) and returns a
/// future that completes on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut t), Ok(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {}
                        _ = i.recv() => {}
                    }
                }
                (Ok(mut t), Err(_)) => {
                    t.recv().await;
                }
                (Err(_), Ok(mut i)) => {
                    i.recv().await;
                }
                // No signal handling possible: run until killed.
                (Err(_), Err(_)) => std::future::pending::<()>().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
