//! `exploder rm REF...`: take tags out of the store by hand. Recorded in
//! each tag's history like a registry delete (decided now, `by=cli/rm`),
//! ordered by decision time like every other change: a job enqueued
//! before the removal does not bring the tag back, and an outstanding
//! request for the tag is withdrawn. The space is reclaimed by `exploder
//! gc` once `--keep-younger-than` has passed.

use std::process::ExitCode;

use clap::Args;
use exploder_common::history::{self, Origin};
use exploder_common::store::Unlinked;
use serde_json::json;

use super::StoreArgs;
use crate::Output;

#[derive(Args)]
pub struct RmArgs {
    /// The tags to remove, as references (registry/repo:tag or repo:tag).
    #[arg(required = true)]
    references: Vec<String>,
    #[command(flatten)]
    store: StoreArgs,
}

pub fn rm(a: RmArgs) -> ExitCode {
    let layout = a.store.layout();
    let mut results = Vec::new();
    let mut failed = false;
    for reference in &a.references {
        let link = match a.store.link(reference) {
            Ok(l) => l,
            Err(code) => return code,
        };
        let name = link.name();
        let requested = layout.request_path(&link).is_file();
        let outcome = match layout.read_link(&name, &link.tag) {
            // Nothing to remove: say so, and write nothing (a typo must not
            // create a tag directory).
            Ok(None) if !requested => Err(format!(
                "{link} is not in the store (no link, no request): see `exploder ls`"
            )),
            Ok(_) => layout
                .unlink(
                    &name,
                    &link.tag,
                    history::now_millis(),
                    &Origin::by("cli/rm"),
                )
                .map_err(|e| format!("removing {link}: {e}")),
            Err(e) => Err(format!("reading {link}: {e}")),
        };
        match outcome {
            Ok(Unlinked::Removed(d)) => {
                if a.store.output == Output::Text {
                    println!("removed {link} (was {d})");
                }
                results.push(json!({"reference": reference, "link": link.to_string(), "ok": true, "removed": d}));
            }
            Ok(Unlinked::NotLinked) => {
                if a.store.output == Output::Text {
                    println!("withdrew the request for {link} (it was not linked yet)");
                }
                results.push(json!({"reference": reference, "link": link.to_string(), "ok": true, "removed": null, "withdrew_request": true}));
            }
            // Checked above already; a request withdrawn meanwhile.
            Ok(Unlinked::Unknown) => {
                failed = true;
                let e =
                    format!("{link} is not in the store (no link, no request): see `exploder ls`");
                eprintln!("exploder: {e}");
                results.push(json!({"reference": reference, "link": link.to_string(), "ok": false, "error": e}));
            }
            Ok(Unlinked::Superseded(newer)) => {
                failed = true;
                eprintln!(
                    "exploder: {link}: not removed: a change decided later is recorded ({})",
                    newer.line()
                );
                results.push(json!({"reference": reference, "link": link.to_string(), "ok": false, "error": "a later change is recorded"}));
            }
            Ok(
                Unlinked::OtherRegistry { linked: from }
                | Unlinked::RequestedFromOtherRegistry { requested: from },
            ) => {
                let linked = from;
                // An origin without a registry is never refused; kept for
                // completeness.
                failed = true;
                eprintln!("exploder: {link}: not removed: linked to an image from {linked}");
                results.push(json!({"reference": reference, "link": link.to_string(), "ok": false, "error": format!("linked to an image from {linked}")}));
            }
            Err(e) => {
                failed = true;
                eprintln!("exploder: {e}");
                results.push(json!({"reference": reference, "link": link.to_string(), "ok": false, "error": e}));
            }
        }
    }
    crate::finish(a.store.output, &results, failed)
}
