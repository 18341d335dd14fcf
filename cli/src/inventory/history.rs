//! `exploder history REF`: every change of a tag, oldest first, with when
//! it was written and decided, the digest, where the image came from and
//! who decided it; then what the tag is now, and what is requested for it.

use std::process::ExitCode;

use clap::Args;
use exploder_common::history::{Change, Record, rfc3339, rfc3339_millis};
use exploder_common::request;
use serde_json::{Value, json};

use super::{StoreArgs, short};
use crate::Output;
use crate::operator::render_table;

#[derive(Args)]
pub struct HistoryArgs {
    /// The tag, as a reference (registry/repo:tag or repo:tag).
    reference: String,
    #[command(flatten)]
    store: StoreArgs,
}

fn record_json(r: &Record) -> Value {
    let (change, digest) = match &r.change {
        Change::Linked(d) => ("linked", Some(d.to_string())),
        Change::Unlinked => ("unlinked", None),
    };
    json!({
        "written": rfc3339(r.at),
        "decided": r.decided.map(rfc3339_millis),
        "change": change,
        "digest": digest,
        "registry": r.origin.registry,
        "repository": r.origin.repository,
        "by": r.origin.by,
        "reason": r.origin.reason,
    })
}

pub fn history(a: HistoryArgs) -> ExitCode {
    let link = match a.store.link(&a.reference) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let layout = a.store.layout();
    let name = link.name();
    let (records, current) = match (
        layout.history(&name, &link.tag),
        layout.read_link(&name, &link.tag),
    ) {
        (Ok(h), Ok(c)) => (h, c),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("exploder: reading {link}: {e}");
            return ExitCode::from(1);
        }
    };
    let (requested, unreadable) = match request::list(&layout) {
        Ok((all, unreadable)) => (all.into_iter().find(|r| r.link == link), unreadable),
        Err(e) => (None, vec![e]),
    };
    if records.is_empty() && current.is_none() && requested.is_none() {
        eprintln!("exploder: {link} is not in the store: see `exploder ls`");
        return ExitCode::from(1);
    }
    let request_json = requested.as_ref().map(|r| {
        json!({
            "digest": r.job.manifest_digest,
            "decided": r.job.enqueued_at,
            "by": r.job.decided_by,
            "failed": r.failed,
        })
    });
    match a.store.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "link": link.to_string(),
                "current": current,
                "changes": records.iter().map(record_json).collect::<Vec<_>>(),
                "request": request_json,
            }))
            .expect("serializes")
        ),
        Output::Text => {
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|r| {
                    let (change, digest) = match &r.change {
                        Change::Linked(d) => ("linked", short(d)),
                        Change::Unlinked => ("unlinked", "-".into()),
                    };
                    vec![
                        rfc3339(r.at),
                        r.decided.map_or("-".into(), rfc3339_millis),
                        change.into(),
                        digest,
                        r.origin.source(),
                        r.origin.by.clone().unwrap_or_else(|| "-".into()),
                        r.origin.reason.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                render_table(
                    &[
                        "WRITTEN", "DECIDED", "CHANGE", "DIGEST", "SOURCE", "BY", "REASON"
                    ],
                    &rows
                )
            );
            match &current {
                Some(d) => println!("\n{link} is linked to {d}"),
                None => println!("\n{link} is not linked"),
            }
            if let Some(r) = &requested {
                let state = match &r.failed {
                    Some(why) => format!("failed: {why}"),
                    None => "outstanding".into(),
                };
                println!(
                    "requested: {} (decided {} by {}), {state}",
                    r.job.manifest_digest, r.job.enqueued_at, r.job.decided_by
                );
            }
        }
    }
    super::skipped(&unreadable)
}
