//! The command line of the `httpbin` binary, as a library function so that `weft app httpbin`
//! (used by `weft demo`) runs the same code in the `weft` executable.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "httpbin", about = "httpbin-style HTTP test service")]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "WEFT_LISTEN_ADDR", default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
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
            eprintln!("httpbin: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        // Handlers first: `weft run` may signal as soon as it sees "listening".
        let stop = crate::shutdown_signal();
        let listener = match tokio::net::TcpListener::bind(cli.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("httpbin: cannot listen on {}: {e}", cli.listen);
                return ExitCode::FAILURE;
            }
        };
        let name = std::env::var("WEFT_WORKLOAD_NAME")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "httpbin".into());
        let addr = listener.local_addr().map_or(cli.listen, |a| a);
        let _ = writeln!(std::io::stdout().lock(), "{name} listening on {addr}");
        crate::serve(listener, &name, stop).await;
        let _ = writeln!(std::io::stdout().lock(), "{name} stopped");
        ExitCode::SUCCESS
    })
}
