//! `bookinfo` — runs one Bookinfo service (`productpage`, `details`,
//! `reviews --version vN`, `ratings`) on `--listen`/`WEFT_LISTEN_ADDR`.
//!
//! Only wiring lives here: argument parsing, binding, and handing the service
//! to the shared server loop. Exit status is 0 after SIGTERM/SIGINT, 1 when
//! the configuration is unusable, 2 for bad arguments.

fn main() -> std::process::ExitCode {
    bookinfo::cli::main(std::env::args().collect())
}
