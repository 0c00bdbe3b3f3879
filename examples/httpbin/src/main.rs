//! `httpbin` — runs the httpbin-style service on `--listen`/`WEFT_LISTEN_ADDR`
//! (default `127.0.0.1:8000`). Only wiring lives here; exit status is 0 after
//! SIGTERM/SIGINT, 1 when the address cannot be bound, 2 for bad arguments.

fn main() -> std::process::ExitCode {
    httpbin::cli::main(std::env::args().collect())
}
