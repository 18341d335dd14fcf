//! A store whose files are not what exploder writes (issue 26, item 8):
//! a FIFO where a tag's `history`, a block or a request should be (a FIFO
//! at a `link` is rewritten from the history by the reader, as a link a
//! crashed writer left behind is). Every command that reads the store names the file and goes on
//! without it (gc keeps everything); none hangs. Each command runs under a
//! hang guard: before store files were opened without blocking, each of
//! these waited for ever on the FIFO.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use exploder_tests::fleet::Fleet;
use exploder_tests::{
    Image, Layer, LayerBuilder, Registry, block_ok, explode_ok, run_exploder_guarded,
};

/// Generous: each command here takes well under a second when it works.
const GUARD: Duration = Duration::from_secs(120);

fn image(name: &str) -> Image {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file(format!("etc/{name}"), name.as_bytes(), 0o644);
    Image::oci().layer(Layer::gzip(b.build()))
}

/// A store with `team/app:v1` and `team/app:v2` linked, each to an image
/// of its own.
fn store_with_two_tags() -> (Registry, tempfile::TempDir) {
    let registry = Registry::start();
    registry.push("team/app", "v1", &image("one"));
    registry.push("team/app", "v2", &image("two"));
    let store = tempfile::tempdir().unwrap();
    for tag in ["v1", "v2"] {
        explode_ok(
            &format!("{}/team/app:{tag}", registry.addr()),
            store.path(),
            &[],
        );
    }
    (registry, store)
}

fn tag_file(store: &Path, tag: &str, file: &str) -> PathBuf {
    store.join("images/team/app").join(tag).join(file)
}

/// Replaces `path` (if any) with a FIFO nobody writes to.
fn make_fifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
}

fn exploder(store: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--store", store.to_str().unwrap()]);
    run_exploder_guarded(&all, GUARD)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file under `dir`, for "nothing was removed".
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                todo.push(e.path());
            }
            out.push(e.path());
        }
    }
    out.sort();
    out
}

#[test]
fn ls_names_a_tag_whose_history_is_a_fifo_and_lists_the_others() {
    let (_registry, store) = store_with_two_tags();
    let link = tag_file(store.path(), "v1", "history");
    make_fifo(&link);
    let out = exploder(store.path(), &["ls"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&link.display().to_string()), "{err}");
    assert!(err.contains("a FIFO"), "{err}");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("team/app:v2"), "{listed}");
    assert!(!listed.contains("team/app:v1"), "{listed}");
}

#[test]
fn ls_reads_no_further_than_a_bound_when_an_image_record_is_a_symlink_to_dev_zero() {
    let (_registry, store) = store_with_two_tags();
    let link = std::fs::read_to_string(tag_file(store.path(), "v1", "link")).unwrap();
    let record = store
        .path()
        .join("digest/sha256")
        .join(link.trim().strip_prefix("sha256:").unwrap())
        .join("image.json");
    std::fs::remove_file(&record).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &record).unwrap();
    let out = exploder(store.path(), &["ls"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("team/app:v2"), "{listed}{}", stderr(&out));
}

#[test]
fn inspect_of_a_tag_whose_history_is_a_fifo_says_which_file() {
    let (_registry, store) = store_with_two_tags();
    let history = tag_file(store.path(), "v1", "history");
    make_fifo(&history);
    let out = exploder(store.path(), &["inspect", "team/app:v1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&history.display().to_string()), "{err}");
    // The other tag reads as before.
    let out = exploder(store.path(), &["inspect", "team/app:v2"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn history_skips_a_request_that_is_a_fifo_and_names_it() {
    let (_registry, store) = store_with_two_tags();
    let request = store
        .path()
        .join("requests")
        .join(format!("{}.json", "a".repeat(64)));
    make_fifo(&request);
    let out = exploder(store.path(), &["history", "team/app:v1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&request.display().to_string()), "{err}");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("linked"), "{shown}");
}

#[test]
fn block_list_skips_a_block_that_is_a_fifo_and_names_it() {
    let (_registry, store) = store_with_two_tags();
    let v2 = std::fs::read_to_string(tag_file(store.path(), "v2", "link")).unwrap();
    block_ok(store.path(), v2.trim(), "CVE-2026-0001");
    let fifo = store
        .path()
        .join("blocked/sha256")
        .join(format!("{}.json", "b".repeat(64)));
    make_fifo(&fifo);
    let out = exploder(store.path(), &["block", "--list"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&fifo.display().to_string()), "{err}");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(v2.trim()), "{listed}");
}

#[test]
fn gc_keeps_everything_when_a_tags_history_is_a_fifo_and_names_it() {
    let fleet = Fleet::new("gcfifo");
    let (_registry, store) = store_with_two_tags();
    // v2 deleted: without the damage, its image and layer would go.
    let out = exploder(store.path(), &["rm", "team/app:v2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // (A FIFO at `link` alone is repaired from the history, which says
    // what the link is: the history is the record that cannot be.)
    let link = tag_file(store.path(), "v1", "history");
    make_fifo(&link);
    let before = tree(&store.path().join("digest"))
        .into_iter()
        .chain(tree(&store.path().join("layers")))
        .collect::<Vec<_>>();
    let out = exploder(
        store.path(),
        &[
            "gc",
            "--confirm",
            "--keep-revisions",
            "0",
            "--keep-younger-than",
            "0s",
            "--grace",
            "0s",
            "--redis-url",
            &fleet.redis,
            "--prefix",
            &fleet.prefix,
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&link.display().to_string()), "{err}");
    let after = tree(&store.path().join("digest"))
        .into_iter()
        .chain(tree(&store.path().join("layers")))
        .collect::<Vec<_>>();
    assert_eq!(after, before, "gc removed something: {err}");
}
