//! Where exploder deliberately differs from `umoci unpack`, each for a
//! reason a rootfs served to others needs.

use exploder_tests::{Entry, Image, Layer, LayerBuilder, Registry, explode_ok, linked_rootfs};

fn xattrs(path: &std::path::Path) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(path, &mut buf).unwrap();
    buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// `trusted.*` attributes mean something to the host (overlayfs keeps its
/// whiteouts there) and `security.selinux` labels are the host's policy:
/// umoci applies the first as root, exploder applies neither.
#[test]
fn trusted_and_selinux_xattrs_are_not_applied_user_and_capabilities_are() {
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755).entry(
        Entry::file("f", b"x", 0o644)
            .xattr("trusted.overlay.opaque", b"y")
            .xattr("security.selinux", b"system_u:object_r:shadow_t:s0")
            .xattr("user.kept", b"1")
            .xattr(
                "security.capability",
                [
                    1u8, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
    );
    let image = Image::oci().layer(Layer::gzip(b.build()));
    let registry = Registry::start();
    registry.push("team/app", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    explode_ok(
        &format!("{}/team/app:v1", registry.addr()),
        store.path(),
        &[],
    );
    let f = linked_rootfs(store.path(), "team", "app", "v1").join("f");
    let mut names = xattrs(&f);
    names.sort();
    if names.iter().any(|n| n == "security.selinux") {
        let mut value = vec![0u8; 256];
        let n = rustix::fs::lgetxattr(&f, "security.selinux", &mut value).unwrap();
        assert!(
            !value[..n].starts_with(b"system_u:object_r:shadow_t"),
            "the layer's label was applied"
        );
    }
    // security.selinux may be set by the host's own labelling; it must not
    // carry the layer's value.
    names.retain(|n| n != "security.selinux");
    assert_eq!(names, ["security.capability", "user.kept"]);
}
