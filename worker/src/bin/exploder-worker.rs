//! `exploder-worker`: the fleet worker. The job queue arrives with the
//! fleet work (issue 3); until then it says so and exits with a usage error.

use clap::Parser;

/// Consumes layer and image jobs and explodes them into the store (not
/// available yet: use `exploder explode`).
#[derive(Parser)]
#[command(name = "exploder-worker", version)]
struct Args {}

fn main() -> std::process::ExitCode {
    let _ = Args::parse();
    eprintln!(
        "exploder-worker: the job queue is not built yet; run `exploder explode REF --store DIR` \
         to explode images in one process"
    );
    std::process::ExitCode::from(2)
}
