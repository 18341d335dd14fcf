//! `exploder`: the command line.
//!
//! Exit codes: 0 success; 1 a reference failed (the error says why and what
//! to do); 2 usage error (bad flags, invalid reference); 141 stdout was
//! closed (see `print`).

// First: its println!/eprintln! replace std's in every module below.
#[macro_use]
mod print;

mod commands;
mod fleet;
mod gc;
mod inventory;
mod json_error;
mod operator;
mod poll;
mod progress;

use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use exploder_args::LogArgs;

/// Explode container images into plain directory trees.
///
/// exploder resolves an image from a registry, a registry's storage
/// directory or an OCI layout, ingests each layer once into a verified
/// layer store, and assembles the image's rootfs, equal to `umoci unpack`,
/// under DIR/digest/sha256/<manifest>/rootfs, linked from
/// DIR/images/<namespace>/<image>/<tag>/link.
#[derive(Parser)]
#[command(name = "exploder", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Parse an image reference and print its parts.
    ///
    /// Accepts REGISTRY/REPOSITORY[:TAG][@DIGEST] (Docker's rules: docker.io
    /// and library/ by default; docker://... too), oci:PATH[:TAG] (an OCI
    /// image layout), oci-archive:FILE[:TAG], docker-archive:FILE[:REF] and
    /// file://ROOT/REPOSITORY[:TAG] (a registry storage directory).
    Parse(commands::ParseArgs),
    /// Resolve a reference and print its manifest (or, with --config, the
    /// image config).
    Manifest(commands::ManifestArgs),
    /// Explode images into the store: resolve, ingest missing layers,
    /// finalize, link.
    Explode(commands::ExplodeArgs),
    /// Resolve images and publish their layer jobs and image job to the
    /// fleet (the producer's fan-out, from the command line).
    Enqueue(fleet::EnqueueArgs),
    /// Scan the config's watch list (poll: section) and enqueue the tags
    /// whose digest changed; --once scans now and exits.
    Poll(poll::PollArgs),
    /// Remove digest directories no retained tag references, then layers no
    /// remaining image uses (a dry run unless --confirm), saying why each
    /// goes or stays.
    Gc(gc::GcArgs),
    /// List the tags in the store: digest, source, when linked, size on
    /// disk, and whether a request for it is in progress or failed.
    Ls(inventory::LsArgs),
    /// Describe one exploded image (a tag or a digest): platform, config,
    /// layers, the tags pointing at it, where it came from.
    Inspect(inventory::InspectArgs),
    /// Every change of a tag: when, to which digest, from where, decided by
    /// whom.
    History(inventory::HistoryArgs),
    /// Remove tags from the store (recorded in their history like a
    /// registry delete); `exploder gc` then reclaims the space.
    Rm(inventory::RmArgs),
    /// Mark an image as not to be served (a vulnerability, a leaked
    /// secret): it is never linked again, the tags linked to it are
    /// unlinked (recorded with the reason), explode, enqueue, the producer
    /// and the workers refuse it. --list shows the block list.
    Block(inventory::BlockArgs),
    /// Lift a block (the tags it unlinked are linked again by the next
    /// push, poll or enqueue).
    Unblock(inventory::UnblockArgs),
    /// Declare or check the fleet's exchanges and queues on RabbitMQ.
    #[command(subcommand)]
    Topology(fleet::TopologyCommand),
    /// Show the fleet: ready messages and consumers per queue, dead
    /// letters, layers known to Redis, active claims, and (with --store)
    /// the requested links outstanding and failed.
    Status(operator::StatusArgs),
    /// List, show, replay or purge dead-lettered jobs.
    #[command(subcommand)]
    Dlq(operator::DlqCommand),
}

/// Prints per-reference results as JSON when asked, and turns "did any
/// reference fail" into the exit code (0, or 1).
pub fn finish(output: Output, results: &[serde_json::Value], failed: bool) -> ExitCode {
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(results).expect("serializes")
        );
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Whether the command the user gave prints JSON (its `-o`, or
/// `EXPLODER_OUTPUT`, as clap resolved them).
fn wants_json(matches: &ArgMatches) -> bool {
    if let Ok(Some(output)) = matches.try_get_one::<Output>("output") {
        return *output == Output::Json;
    }
    matches.subcommand().is_some_and(|(_, sub)| wants_json(sub))
}

/// Ends a command line clap refused: exit 2 (help and --version, 0),
/// with `-o json` leaving its error on stdout as every failure does.
fn refused(e: clap::Error) -> ! {
    let usage = !matches!(
        e.kind(),
        clap::error::ErrorKind::DisplayHelp
            | clap::error::ErrorKind::DisplayVersion
            | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    let words: Vec<String> = std::env::args().collect();
    if usage && json_error::asked_in(&words) {
        let _ = e.print();
        let rendered = e.render().to_string();
        let first = rendered.lines().next().unwrap_or_default();
        json_error::enable();
        json_error::said(&format!(
            "exploder: {}",
            first.trim_start_matches("error: ")
        ));
        let _ = json_error::finish(ExitCode::from(2));
        std::process::exit(2);
    }
    e.exit()
}

/// The command line, parsed (see [`refused`] for one that is not).
fn parse_command_line() -> Cli {
    let matches = Cli::command()
        .try_get_matches()
        .unwrap_or_else(|e| refused(e));
    if wants_json(&matches) {
        json_error::enable();
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| refused(e))
}

fn main() -> ExitCode {
    // ring, before any TLS client (docs/ARCHITECTURE.md, "TLS").
    exploder_common::tls::install_provider();
    let cli = parse_command_line();
    // lapin logs every failed handshake and closed channel at ERROR, then
    // returns the error, which the command reports itself once, with what
    // to do: its lines are noise to a person at a terminal (RUST_LOG can
    // still ask for them; the daemons keep them).
    cli.log.init(match cli.verbose {
        0 => "warn,lapin=off",
        1 => "info,lapin=warn",
        _ => "debug",
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        match cli.command {
            Command::Parse(a) => commands::parse(a),
            Command::Manifest(a) => commands::manifest(a).await,
            Command::Explode(a) => commands::explode(a).await,
            Command::Enqueue(a) => fleet::enqueue(a).await,
            Command::Poll(a) => poll::poll(a).await,
            Command::Gc(a) => gc::gc(a).await,
            Command::Ls(a) => inventory::ls(a),
            Command::Inspect(a) => inventory::inspect(a),
            Command::History(a) => inventory::history(a),
            Command::Rm(a) => inventory::rm(a),
            Command::Block(a) => inventory::block(a),
            Command::Unblock(a) => inventory::unblock(a),
            Command::Topology(c) => fleet::topology(c).await,
            Command::Status(a) => operator::status(a).await,
            Command::Dlq(c) => operator::dlq(c).await,
        }
    });
    json_error::finish(code)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_flags_of_every_command_compose_without_clashes() {
        super::Cli::command().debug_assert();
    }

    /// `command`'s long flags, and its subcommands', that no `EXPLODER_*`
    /// variable sets, as `exploder SUB --flag`.
    pub(crate) fn flags_without_env(command: &clap::Command, path: &str) -> Vec<String> {
        let path = format!("{path} {}", command.get_name());
        let mut missing: Vec<String> = command
            .get_arguments()
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .filter(|a| a.get_long().is_some() && a.get_env().is_none())
            .map(|a| format!("{path} --{}", a.get_long().unwrap_or_default()))
            .collect();
        for sub in command.get_subcommands() {
            missing.extend(flags_without_env(sub, &path));
        }
        missing
    }

    /// Flags with no variable, on purpose: RUST_LOG is -v's; the others
    /// choose what one invocation does, and a variable left in the
    /// environment must never delete, replay or purge anything by itself.
    const WITHOUT_ENV: &[&str] = &[
        " exploder --verbose",
        " exploder block --list",
        " exploder block --reason",
        " exploder dlq purge --yes",
        " exploder dlq replay --all",
        " exploder gc --confirm",
        " exploder manifest --config",
        " exploder manifest --summary",
        " exploder poll --once",
        " exploder status --watch",
    ];

    #[test]
    fn every_flag_has_its_environment_variable() {
        let missing: Vec<String> = flags_without_env(&super::Cli::command(), "")
            .into_iter()
            .filter(|f| !WITHOUT_ENV.contains(&f.as_str()))
            .collect();
        assert!(missing.is_empty(), "flags without EXPLODER_*: {missing:#?}");
    }
}
