//! The command line of the `bookinfo` binary, as a library function so that `weft app bookinfo`
//! (used by `weft demo`) runs the same code in the `weft` executable.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use crate::client::Outbound;
use crate::details::Details;
use crate::productpage::ProductPage;
use crate::ratings::Ratings;
use crate::reviews::{Reviews, Version};
use crate::server::{App, serve, shutdown_signal};
use crate::service_base;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "bookinfo", about = "Istio's Bookinfo services, in Rust")]
struct Cli {
    /// Address to listen on.
    #[arg(
        long,
        global = true,
        env = "WEFT_LISTEN_ADDR",
        default_value = "127.0.0.1:9080"
    )]
    listen: SocketAddr,
    #[command(subcommand)]
    service: Service,
}

#[derive(Subcommand, Debug)]
enum Service {
    /// The HTML front end (calls details and reviews).
    Productpage,
    /// Book details.
    Details,
    /// Book reviews; v2 and v3 call ratings.
    Reviews {
        /// v1 (no stars), v2 (black stars) or v3 (red stars).
        #[arg(long, default_value = "v1")]
        version: Version,
    },
    /// Star ratings.
    Ratings,
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
            eprintln!("bookinfo: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bookinfo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.service {
        Service::Details => start(cli.listen, "details".into(), Details).await,
        Service::Ratings => start(cli.listen, "ratings".into(), Ratings).await,
        Service::Reviews { version } => {
            let app = Reviews::new(version, outbound()?, service_base("ratings"));
            start(cli.listen, format!("reviews-{}", version.as_str()), app).await
        }
        Service::Productpage => {
            let app = ProductPage::new(
                outbound()?,
                service_base("details"),
                service_base("reviews"),
                service_base("ratings"),
            );
            start(cli.listen, "productpage".into(), app).await
        }
    }
}

fn outbound() -> Result<Outbound, String> {
    Outbound::from_env().map_err(|e| e.to_string())
}

async fn start<A: App>(addr: SocketAddr, default_name: String, app: A) -> Result<(), String> {
    // Handlers first: `weft run` may signal as soon as it sees the line below.
    let stop = shutdown_signal();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let name = std::env::var("WEFT_WORKLOAD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or(default_name);
    say(format_args!(
        "{name} listening on {} (namespace {})",
        listener.local_addr().map_or(addr, |a| a),
        std::env::var("WEFT_NAMESPACE").unwrap_or_else(|_| "default".into())
    ));
    serve(listener, Arc::new(app), Arc::from(name.as_str()), stop).await;
    say(format_args!("{name} stopped"));
    Ok(())
}

/// A line on stdout; a closed stdout is not a reason to die.
fn say(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{args}");
}
