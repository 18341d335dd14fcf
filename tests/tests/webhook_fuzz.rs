//! A bounded, seeded fuzz of the webhook receiver: a few thousand mutated
//! payloads of every dialect, authenticated, against the running
//! `exploder-producer` (tags made digests and repository names given
//! control characters among them). Whatever they say, the answer is never
//! a 5xx other than 503, nothing is enqueued (the one registry they may
//! name holds no image), and nothing is written: no tag the registry does
//! not have leaves a directory.

use std::time::Duration;

use exploder_common::job::JobKind;
use exploder_tests::fleet::Fleet;
use exploder_tests::{Registry, SplitMix64};

const TOKEN: &str = "fuzz-token";
const SECRET: &str = "fuzz-secret";
const REQUESTS: usize = 2000;

/// Valid payloads of each dialect naming `registry`, to mutate.
fn seeds(registry: &str) -> Vec<(&'static str, String)> {
    let d = format!("sha256:{}", "b".repeat(64));
    vec![
        (
            "registry",
            format!(
                r#"{{"events":[{{"action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","repository":"fuzz/app","url":"http://{registry}/v2/fuzz/app/manifests/{d}","tag":"t1"}},"request":{{"host":"{registry}"}}}}]}}"#
            ),
        ),
        (
            "registry",
            format!(
                r#"{{"action":"delete","target":{{"digest":"{d}","repository":"fuzz/app"}},"request":{{"host":"{registry}"}}}}"#
            ),
        ),
        (
            "dockerhub",
            r#"{"push_data":{"tag":"latest"},"repository":{"repo_name":"fuzz/app"}}"#.into(),
        ),
        (
            "harbor",
            format!(
                r#"{{"type":"PUSH_ARTIFACT","event_data":{{"resources":[{{"digest":"{d}","tag":"v1","resource_url":"{registry}/fuzz/app:v1"}}],"repository":{{"repo_full_name":"fuzz/app"}}}}}}"#
            ),
        ),
        (
            "quay",
            format!(
                r#"{{"repository":"fuzz/app","docker_url":"{registry}/fuzz/app","updated_tags":["v1","latest"]}}"#
            ),
        ),
        (
            "generic",
            format!(r#"{{"reference":"{registry}/fuzz/app:v2"}}"#),
        ),
    ]
}

/// The seeds' tags: a mutation may make any of them a digest.
const TAGS: [&str; 4] = ["t1", "v1", "v2", "latest"];

/// Control characters as JSON escapes: strings whose value holds them
/// (names the parsers must refuse, and logs must not print raw).
const CONTROL: [&str; 8] = [
    r"\u0001",
    r"\u001b[31m",
    r"\u007f",
    r"\t",
    r"\r\n",
    r"\u0000",
    r"\u0085",
    r"\u2028",
];

/// Mutates `seed`: whole-token changes first (a tag made a digest, a
/// repository name given control characters), then byte flips, deletions,
/// insertions of characters that matter to JSON, paths and hosts,
/// truncation, repetition.
fn mutate(rng: &mut SplitMix64, seed: &str) -> Vec<u8> {
    let mut seed = seed.to_string();
    if rng.between(0, 3) == 0 {
        let tag = TAGS[rng.between(0, TAGS.len() as u64 - 1) as usize];
        let digest = format!("sha256:{}", "c".repeat(64));
        // A tag position holding a digest: `"tag":"sha256:..."`,
        // `:sha256:...` in a reference.
        seed = seed
            .replace(&format!("\"{tag}\""), &format!("\"{digest}\""))
            .replace(&format!(":{tag}\""), &format!(":{digest}\""));
    }
    if rng.between(0, 3) == 0 {
        // Escaped, or (one in four) the raw character: not JSON, a 400.
        let c = if rng.between(0, 3) == 0 {
            char::from_u32(rng.between(1, 0x1f) as u32)
                .unwrap()
                .to_string()
        } else {
            CONTROL[rng.between(0, CONTROL.len() as u64 - 1) as usize].to_string()
        };
        let at = ["fuzz/", "fuzz/app"][rng.between(0, 1) as usize];
        seed = seed.replacen(at, &format!("{at}{c}"), 1);
    }
    let seed = seed.as_str();
    const INTERESTING: [&[u8]; 14] = [
        b"\"",
        b"\\",
        b"/",
        b"..",
        b":",
        b"@",
        b"\n",
        b"\0",
        b"%2e",
        b"{",
        b"]",
        b"99999",
        b"\xff",
        b"127.0.0.1:1",
    ];
    let mut b = seed.as_bytes().to_vec();
    for _ in 0..rng.between(1, 6) {
        if b.is_empty() {
            break;
        }
        let at = rng.between(0, b.len() as u64 - 1) as usize;
        match rng.between(0, 5) {
            0 => b[at] = rng.next_u64() as u8,
            1 => {
                b.remove(at);
            }
            2 => {
                let ins = INTERESTING[rng.between(0, INTERESTING.len() as u64 - 1) as usize];
                b.splice(at..at, ins.iter().copied());
            }
            3 => b.truncate(at),
            4 => {
                let end = (at + rng.between(1, 40) as usize).min(b.len());
                let piece = b[at..end].to_vec();
                b.splice(at..at, piece.repeat(rng.between(1, 20) as usize));
            }
            _ => {}
        }
    }
    b
}

#[test]
fn thousands_of_mutated_payloads_get_no_server_error_and_enqueue_nothing() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let log = store.path().join("p.log");
    let config = store.path().join("producer.yaml");
    let r = registry.addr();
    std::fs::write(
        &config,
        format!(
            "webhooks:\n  registry: {{ registries: [{r}] }}\n  dockerhub: {{ pull_from: {r} }}\n  \
             harbor: {{ registries: [{r}] }}\n  quay: {{ registries: [{r}] }}\n  \
             generic: {{ registries: [{r}] }}\n"
        ),
    )
    .unwrap();
    let mut fleet = Fleet::new("fuzz");
    fleet.apply_topology();
    let port = fleet.start_producer(
        store.path(),
        &log,
        &["--config", config.to_str().unwrap()],
        &[
            ("EXPLODER_WEBHOOK_TOKEN", TOKEN),
            ("EXPLODER_WEBHOOK_DOCKERHUB_TOKEN", TOKEN),
            ("EXPLODER_WEBHOOK_HARBOR_TOKEN", TOKEN),
            ("EXPLODER_WEBHOOK_QUAY_TOKEN", TOKEN),
            ("EXPLODER_WEBHOOK_GENERIC_HMAC_SECRET", SECRET),
        ],
    );
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build(),
    );
    let seeds = seeds(&r);
    let mut rng = SplitMix64(0x5eed_f022);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..REQUESTS {
        let (endpoint, seed) = &seeds[i % seeds.len()];
        let body = mutate(&mut rng, seed);
        let mut req = agent.post(format!("http://127.0.0.1:{port}/webhook/{endpoint}"));
        req = if *endpoint == "generic" {
            let sig = exploder_producer::sources::webhook::auth::sign_now(SECRET, &body);
            req.header("X-Signature", &sig)
        } else {
            req.header("Authorization", &format!("Bearer {TOKEN}"))
        };
        let resp = req.send(&body[..]).expect("the producer answers");
        let status = resp.status().as_u16();
        assert!(
            status < 500 || status == 503,
            "request {i} to /webhook/{endpoint} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        *statuses.entry(status).or_default() += 1;
    }
    eprintln!("answers by status: {statuses:?}");
    assert!(fleet.drain(JobKind::Image).is_empty(), "junk enqueued");
    assert!(fleet.drain(JobKind::Layer).is_empty(), "junk enqueued");
    // No tag was ever linked: not one tag directory (a history of an
    // unlink of nothing) either.
    let images = store.path().join("images");
    assert!(
        std::fs::read_dir(&images).map_or(true, |mut d| d.next().is_none()),
        "tag directories left under {}",
        images.display()
    );
    for entry in std::fs::read_dir(store.path()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            [
                "images",
                "tmp",
                "requests",
                "producer.yaml",
                "p.log",
                "digest",
                "layers",
                "gc"
            ]
            .contains(&name.as_str()),
            "unexpected {name} in the store"
        );
    }
}
