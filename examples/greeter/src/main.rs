//! `greeter` — serves `helloworld.Greeter` (+ gRPC health) as version
//! `--version vN` on `--listen`/`WEFT_LISTEN_ADDR` (default `127.0.0.1:50051`).
//! Only wiring lives here; exit status is 0 after SIGTERM/SIGINT, 1 when the
//! server cannot start, 2 for bad arguments.

fn main() -> std::process::ExitCode {
    greeter::cli::main(std::env::args().collect())
}
