//! Credentials as a test controls them: a `docker-credential-<name>`
//! program, as docker and podman run them (`get`, the server URL on stdin,
//! `{"ServerURL", "Username", "Secret"}` on stdout), written into a
//! directory the test puts first on PATH; and commands that see none of
//! the user's own credentials.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Writes `bin/docker-credential-<name>`: it answers `username` and
/// `secret` for `registry` and "credentials not found" for anything else,
/// and appends every server it is asked about to `bin/asked`.
pub fn write(bin: &Path, name: &str, registry: &str, username: &str, secret: &str) {
    std::fs::create_dir_all(bin).unwrap();
    let script = bin.join(format!("docker-credential-{name}"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\necho \"$server\" >> {asked}\n\
             if [ \"$server\" = \"{registry}\" ]; then\n  \
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{username}\",\"Secret\":\"{secret}\"}}' \"$server\"\n\
             else\n  echo 'credentials not found in native keychain'\n  exit 1\nfi\n",
            asked = asked_file(bin).display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Where the helpers in `bin` log the servers they were asked about.
pub fn asked_file(bin: &Path) -> PathBuf {
    bin.join("asked")
}

/// PATH with `bin` first.
pub fn path_with(bin: &Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// `cmd` with nothing of the user's own credentials: `home` as HOME, and
/// none of the variables that name an auth file, credentials or a blob
/// source (the test sets those it means).
pub fn without_user_credentials<'a>(
    cmd: &'a mut std::process::Command,
    home: &Path,
) -> &'a mut std::process::Command {
    cmd.env("HOME", home);
    for var in [
        "DOCKER_CONFIG",
        "REGISTRY_AUTH_FILE",
        "XDG_RUNTIME_DIR",
        "EXPLODER_REGISTRY_AUTH_FILE",
        "EXPLODER_REGISTRY_USERNAME",
        "EXPLODER_REGISTRY_PASSWORD",
        "EXPLODER_REGISTRY_TOKEN",
        "EXPLODER_BLOB_SOURCE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}
