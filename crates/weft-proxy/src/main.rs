//! `weft-proxy`: parses the command line and runs the proxy library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let opts = weft_proxy::Options::parse();
    match weft_proxy::run(opts) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-proxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
