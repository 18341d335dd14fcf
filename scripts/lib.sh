# Shared by scripts/demo, scripts/test and scripts/bench: install what is
# missing (Debian packages) so a fresh machine needs nothing else.

# ensure_packages CMD:PACKAGE...  installs PACKAGE when CMD is not found.
ensure_packages() {
    local missing=()
    for pair in "$@"; do
        local cmd=${pair%%:*} pkg=${pair#*:}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> installing ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# What the explode core and its tests use: a registry, the reference
# unpacker and copier, debootstrap for realistic images, and compressors.
ensure_core_tools() {
    ensure_packages \
        docker-registry:docker-registry \
        skopeo:skopeo \
        umoci:umoci \
        debootstrap:debootstrap \
        zstd:zstd \
        pigz:pigz
    # debootstrap needs these to unpack packages.
    ensure_packages ar:binutils xz:xz-utils
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo is required (https://rustup.rs)" >&2
        exit 1
    fi
}

# free_port: prints a TCP port nothing listens on (best effort).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_http URL [SECONDS]: waits until URL answers.
wait_http() {
    local url=$1 secs=${2:-20} i
    for ((i = 0; i < secs * 10; i++)); do
        curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for $url" >&2
    return 1
}
