//! `exploder-producer`: the event-driven producer daemon (webhooks,
//! ImageStream watch, polling). The job queue it feeds arrives with the fleet
//! work; until then it says so and exits with a usage error.

use clap::Parser;

/// Turns registry and OpenShift events into explode jobs (not available yet:
/// use `exploder explode`).
#[derive(Parser)]
#[command(name = "exploder-producer", version)]
struct Args {}

fn main() -> std::process::ExitCode {
    let _ = Args::parse();
    eprintln!(
        "exploder-producer: the job queue is not built yet; run `exploder explode REF --store DIR` \
         to explode images in one process"
    );
    std::process::ExitCode::from(2)
}
