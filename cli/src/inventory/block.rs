//! `exploder block DIGEST --reason TEXT`, `exploder block --list`,
//! `exploder unblock DIGEST`: the store's block list (see
//! `exploder_common::store::block`). A blocked image is never linked:
//! explode, enqueue, the producer and the workers refuse it with the
//! reason, and the tags linked to it are unlinked, each recorded in its
//! history with the reason.

use std::process::ExitCode;

use clap::Args;
use exploder_common::digest::Digest;
use serde_json::json;

use super::StoreArgs;
use crate::Output;
use crate::operator::render_table;

#[derive(Args)]
pub struct BlockArgs {
    /// The image to block: its manifest digest, or the digest of the index
    /// it is part of (what the registry shows for a multi-platform tag).
    /// `exploder inspect REF` shows both.
    #[arg(required_unless_present = "list", conflicts_with = "list")]
    digest: Option<String>,
    /// Why (a CVE, "leaked credentials"): shown in every refusal and in the
    /// history of the tags unlinked.
    #[arg(long, required_unless_present = "list")]
    reason: Option<String>,
    /// List the blocked digests instead.
    #[arg(long)]
    list: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub struct UnblockArgs {
    /// The digest to unblock. Tags the block unlinked are not linked again
    /// by this: the next push, poll or `exploder enqueue` links them.
    digest: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// A digest argument, or a usage error that says what to give.
fn digest_arg(arg: &str) -> Result<Digest, ExitCode> {
    arg.parse().map_err(|e| {
        eprintln!(
            "exploder: {arg}: not a digest ({e}); give sha256:<hex> (`exploder inspect REF` shows \
             an image's digests)"
        );
        ExitCode::from(2)
    })
}

pub fn block(a: BlockArgs) -> ExitCode {
    let layout = a.store.layout();
    if a.list {
        return list(&a.store);
    }
    let (Some(arg), Some(reason)) = (a.digest.as_deref(), a.reason.as_deref()) else {
        unreachable!("clap requires a digest and a reason without --list");
    };
    let digest = match digest_arg(arg) {
        Ok(d) => d,
        Err(code) => return code,
    };
    if reason.trim().is_empty() {
        eprintln!("exploder: --reason is empty: say why the image is blocked");
        return ExitCode::from(2);
    }
    match layout.block(&digest, reason, "cli/block") {
        Ok(blocked) => {
            let unlinked: Vec<String> = blocked.unlinked.iter().map(|l| l.to_string()).collect();
            match a.store.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "digest": digest,
                        "reason": reason,
                        "already_blocked": blocked.already,
                        "unlinked": unlinked,
                    }))
                    .expect("serializes")
                ),
                Output::Text => {
                    let verb = if blocked.already {
                        "still blocked (reason replaced)"
                    } else {
                        "blocked"
                    };
                    println!("{verb} {digest}: {reason}");
                    for link in &unlinked {
                        println!("unlinked {link}");
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "exploder: blocking {digest} in {}: {e}",
                layout.root().display()
            );
            ExitCode::from(1)
        }
    }
}

fn list(store: &StoreArgs) -> ExitCode {
    let layout = store.layout();
    let (blocks, unreadable) = match layout.blocks() {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "exploder: reading the block list of {}: {e}",
                layout.root().display()
            );
            return ExitCode::from(1);
        }
    };
    match store.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&blocks).expect("serializes")
        ),
        Output::Text if blocks.is_empty() => {
            eprintln!("nothing is blocked in {}", layout.root().display());
        }
        Output::Text => {
            let rows: Vec<Vec<String>> = blocks
                .iter()
                .map(|b| {
                    vec![
                        b.digest.to_string(),
                        b.blocked_at.clone(),
                        b.by.clone(),
                        b.reason.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                render_table(&["DIGEST", "BLOCKED", "BY", "REASON"], &rows)
            );
        }
    }
    super::skipped(&unreadable)
}

pub fn unblock(a: UnblockArgs) -> ExitCode {
    let layout = a.store.layout();
    let digest = match digest_arg(&a.digest) {
        Ok(d) => d,
        Err(code) => return code,
    };
    match layout.unblock(&digest) {
        Ok(was) => {
            match a.store.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"digest": digest, "was_blocked": was}))
                        .expect("serializes")
                ),
                Output::Text if was => println!("unblocked {digest}"),
                Output::Text => println!("{digest} was not blocked"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "exploder: unblocking {digest} in {}: {e}",
                layout.root().display()
            );
            ExitCode::from(1)
        }
    }
}
