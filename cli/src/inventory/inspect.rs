//! `exploder inspect REF|DIGEST`: one exploded image, like `kubectl
//! describe`: its manifest and config at a glance (platform, environment,
//! entrypoint, ports, labels), its layers, the tags that point at it,
//! where it came from and where its tree is.

use std::process::ExitCode;

use clap::Args;
use exploder_common::digest::Digest;
use exploder_common::store::file as store_file;
use exploder_worker::export::exported;
use exploder_worker::finalize::ImageInfo;
use exploder_worker::gc::layer_bytes;
use exploder_worker::gc::read_image_info;
use exploder_worker::layer::objects;
use serde_json::{Value, json};

use super::{StoreArgs, human_bytes, short};
use crate::Output;
use crate::operator::render_table;

#[derive(Args)]
pub struct InspectArgs {
    /// A tag (registry/repo:tag or repo:tag) or a manifest digest
    /// (sha256:..., or its start as `ls` prints it).
    target: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// A JSON value read from a file of the digest directory (a store file:
/// see `store::file`).
fn read_json(path: &std::path::Path) -> Option<Value> {
    serde_json::from_slice(&store_file::read(path, store_file::Kind::Image).ok()?).ok()
}

pub fn inspect(a: InspectArgs) -> ExitCode {
    let layout = a.store.layout();
    let digest: Digest = match a.target.parse() {
        Ok(d) => d,
        Err(_) if let Some(found) = super::image_by_prefix(&layout, &a.target) => match found {
            Ok(d) => d,
            Err(code) => return code,
        },
        Err(_) => {
            let link = match a.store.link(&a.target) {
                Ok(l) => l,
                Err(code) => return code,
            };
            match layout.read_link(&link.name(), &link.tag) {
                Ok(Some(d)) => d,
                Ok(None) => {
                    eprintln!("exploder: {link} is not linked in the store: see `exploder ls`");
                    return ExitCode::from(1);
                }
                Err(e) => {
                    eprintln!("exploder: reading {link}: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    };
    let dir = layout.digest_dir(&digest);
    let info: Option<ImageInfo> = match read_image_info(&layout, &digest) {
        Ok(info) => Some(info),
        Err(damaged) if layout.has_image(&digest) => {
            eprintln!(
                "exploder: {digest} is in the store, but its record is damaged: {damaged}. \
                 Restore the file from a backup, or remove the image's tags (exploder rm) and \
                 explode it again"
            );
            return ExitCode::from(1);
        }
        Err(_) => None,
    };
    let (Some(info), Some(manifest), Some(config)) = (
        info,
        read_json(&dir.join("manifest.json")),
        read_json(&dir.join("config.json")),
    ) else {
        eprintln!(
            "exploder: {digest} is not in the store (no complete {}): see `exploder ls`",
            dir.display()
        );
        return ExitCode::from(1);
    };
    let tags: Vec<String> = layout
        .tags()
        .unwrap_or_default()
        .into_iter()
        .filter(|l| layout.read_link(&l.name(), &l.tag).ok().flatten().as_ref() == Some(&digest))
        .map(|l| l.to_string())
        .collect();
    let c = &config["config"];
    let platform = [&config["os"], &config["architecture"], &config["variant"]]
        .iter()
        .filter_map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join("/");
    let ports: Vec<String> = c["ExposedPorts"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let layers: Vec<Value> = manifest["layers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .zip(&info.diff_ids)
        .map(|(l, diff_id)| {
            json!({
                "digest": l["digest"],
                "diff_id": diff_id,
                "media_type": l["mediaType"],
                "size": l["size"],
                "uncompressed": layer_bytes(&layout.layer_dir(diff_id)),
                "shared_bytes": layer_shared_bytes(&layout.layer_dir(diff_id)),
            })
        })
        .collect();
    let source = info.source.as_ref().map(|s| s.source());
    let exports: Vec<Value> = exported(&layout, &digest)
        .into_iter()
        .map(|(format, bytes)| {
            json!({"format": format, "path": dir.join(format.file_name()), "bytes": bytes})
        })
        .collect();
    let summary = json!({
        "digest": digest,
        "index_digest": info.index_digest,
        "media_type": manifest["mediaType"],
        "source": source,
        "platform": platform,
        "created": config["created"],
        "finalized_at": info.finalized_at,
        "materialize": info.materialize,
        "rootfs": layout.rootfs_dir(&digest),
        "exports": exports,
        "tags": tags,
        "env": c["Env"],
        "entrypoint": c["Entrypoint"],
        "cmd": c["Cmd"],
        "working_dir": c["WorkingDir"],
        "user": c["User"],
        "ports": ports,
        "labels": c["Labels"],
        "layers": layers,
        "devices_skipped": info.devices_skipped,
        "store_objects": objects::summary(&layout).ok(),
    });
    match a.store.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("serializes")
        ),
        Output::Text => print!("{}", describe(&summary)),
    }
    ExitCode::SUCCESS
}

/// The bytes a layer's files share with file objects an earlier layer made
/// (its `layer.json`; 0 if unreadable or from before objects).
fn layer_shared_bytes(dir: &std::path::Path) -> u64 {
    read_json(&dir.join("layer.json"))
        .and_then(|v| v["shared_bytes"].as_u64())
        .unwrap_or(0)
}

/// `kubectl describe`-style text of the summary.
fn describe(s: &Value) -> String {
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) if s.is_empty() => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".to_string(),
        other => other.to_string(),
    };
    let list = |v: &Value, sep: &str| match v.as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(sep),
        _ => "-".to_string(),
    };
    let mut out = String::new();
    let mut field = |name: &str, value: String| out.push_str(&format!("{name:<13}{value}\n"));
    field("Digest:", text(&s["digest"]));
    field("Index:", text(&s["index_digest"]));
    field("Source:", text(&s["source"]));
    field("Platform:", text(&s["platform"]));
    field("Created:", text(&s["created"]));
    field("Finalized:", text(&s["finalized_at"]));
    field("Rootfs:", text(&s["rootfs"]));
    let images = match s["exports"].as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|e| {
                format!(
                    "{} ({})",
                    text(&e["path"]),
                    human_bytes(e["bytes"].as_u64().unwrap_or(0))
                )
            })
            .collect::<Vec<_>>()
            .join("\n             "),
        _ => "-".to_string(),
    };
    field("Disk images:", images);
    field("Tags:", list(&s["tags"], ", "));
    field("Entrypoint:", text(&s["entrypoint"]));
    field("Cmd:", text(&s["cmd"]));
    field("WorkingDir:", text(&s["working_dir"]));
    field("User:", text(&s["user"]));
    field("Ports:", list(&s["ports"], ", "));
    let env = list(&s["env"], "\n             ");
    field("Env:", env);
    let labels = match s["labels"].as_object() {
        Some(o) if !o.is_empty() => o
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n             "),
        _ => "-".to_string(),
    };
    field("Labels:", labels);
    out.push_str("Layers:\n");
    let rows: Vec<Vec<String>> = s["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            vec![
                short(&text(&l["digest"])),
                short(&text(&l["diff_id"])),
                human_bytes(l["size"].as_u64().unwrap_or(0)),
                human_bytes(l["uncompressed"].as_u64().unwrap_or(0)),
                human_bytes(l["shared_bytes"].as_u64().unwrap_or(0)),
                text(&l["media_type"]),
            ]
        })
        .collect();
    for line in render_table(
        &[
            "DIGEST",
            "DIFF_ID",
            "SIZE",
            "UNCOMPRESSED",
            "SHARED",
            "MEDIA TYPE",
        ],
        &rows,
    )
    .lines()
    {
        out.push_str(&format!("  {line}\n"));
    }
    let o = &s["store_objects"];
    if !o.is_null() {
        out.push_str(&format!(
            "Store:       {} file objects; {} files shared, {} saved\n",
            o["objects"].as_u64().unwrap_or(0),
            o["shared_files"].as_u64().unwrap_or(0),
            human_bytes(o["saved_bytes"].as_u64().unwrap_or(0))
        ));
    }
    out
}
