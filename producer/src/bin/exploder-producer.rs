//! `exploder-producer`: the event-driven producer daemon (webhooks,
//! ImageStream watch, polling). Its event sources arrive with the sources
//! work (issue 4); until then it says so and exits with a usage error.

use clap::Parser;

/// Turns registry and OpenShift events into explode jobs (event sources not
/// available yet: use `exploder enqueue`).
#[derive(Parser)]
#[command(name = "exploder-producer", version)]
struct Args {}

fn main() -> std::process::ExitCode {
    let _ = Args::parse();
    eprintln!(
        "exploder-producer: event sources are not built yet; publish jobs with \
         `exploder enqueue REF...` (or explode in one process with `exploder explode`)"
    );
    std::process::ExitCode::from(2)
}
