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
    # The disk image exports, and the checkers the tests read them with.
    ensure_packages mkfs.ext4:e2fsprogs mkfs.erofs:erofs-utils mksquashfs:squashfs-tools \
        fakeroot:fakeroot setfattr:attr
}

# The partition tests: network namespaces, veths and a bridge (iproute2),
# blackholes (iptables), capped links (tc, in iproute2).
ensure_netns_tools() {
    ensure_packages ip:iproute2 tc:iproute2 iptables:iptables
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

# The fleet's services: RabbitMQ and Redis on loopback, installed from
# Debian and started when not running (tests isolate themselves with their
# own EXPLODER_PREFIX, so sharing the default instances is fine).
ensure_services() {
    ensure_packages rabbitmq-server:rabbitmq-server redis-server:redis-server
    if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        echo "==> starting redis-server" >&2
        mkdir -p /var/lib/redis /var/log/redis
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
            --appendonly no --dir /var/lib/redis --logfile /var/log/redis/exploder-ci.log
    fi
    if ! rabbitmqctl -q status >/dev/null 2>&1; then
        echo "==> starting rabbitmq-server" >&2
        rabbitmq-server -detached
    fi
    # Wait (up to 2 minutes: a first start initializes its database) for
    # the AMQP listener.
    local i
    for ((i = 0; i < 120; i++)); do
        (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && break
        sleep 1
    done
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null || { echo "RabbitMQ did not come up on 127.0.0.1:5672" >&2; exit 1; }
}
