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

# ---------------------------------------------------------------------------
# Docker: the engine and Compose for the compose stack (its test and
# scripts/demo-compose), and offline stand-ins for the Docker Hub images
# the compose file and the Dockerfile name.

# The pid of the dockerd ensure_docker started, if it did (stop_docker).
EXPLODER_DOCKERD_PID=

# ensure_docker: Debian's docker.io (dockerd) and docker-compose (Compose
# v1) when missing, and dockerd started when no daemon answers. Call
# stop_docker on exit: it stops the daemon only if this started it.
ensure_docker() {
    ensure_packages dockerd:docker.io docker:docker.io docker-compose:docker-compose
    docker info >/dev/null 2>&1 && return 0
    local log=${EXPLODER_DOCKERD_LOG:-${TMPDIR:-/tmp}/exploder-dockerd.log}
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "==> starting dockerd (log: $log)" >&2
    $sudo dockerd >"$log" 2>&1 &
    EXPLODER_DOCKERD_PID=$!
    local i
    for ((i = 0; i < 600; i++)); do
        docker info >/dev/null 2>&1 && return 0
        if ! kill -0 "$EXPLODER_DOCKERD_PID" 2>/dev/null; then
            EXPLODER_DOCKERD_PID=
            echo "dockerd exited at start; its log ($log) ends:" >&2
            tail -n 20 "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "dockerd did not answer within 60 s; see $log" >&2
    return 1
}

# stop_docker: stops the dockerd ensure_docker started (it stops its
# containers first), waiting up to 60 s; nothing if it found one running.
stop_docker() {
    [ -n "$EXPLODER_DOCKERD_PID" ] || return 0
    local pid=$EXPLODER_DOCKERD_PID i sudo=""
    EXPLODER_DOCKERD_PID=
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "==> stopping the dockerd started for this run" >&2
    $sudo kill "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 600; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "dockerd ($pid) still runs 60 s after SIGTERM; left alone" >&2
}

# The label stand-ins carry: a hash of their recipe (compose/standins and
# the functions below), so a changed recipe rebuilds them. Images without
# it are the real ones (pulled from Docker Hub): never replaced.
STANDIN_LABEL=org.exploder.standin

# debian_mirror RELEASE: the mirror apt uses for RELEASE here (the first
# deb source listing that suite), else deb.debian.org. This machine may
# reach no other mirror than apt's.
debian_mirror() {
    local release=$1 m
    m=$(awk -v rel="$release" '$1 == "deb" {
            i = 2
            if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
            if ($(i + 1) == rel) { print $i; exit }
        }' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null)
    [ -n "$m" ] || m=$(awk -v rel="$release" 'BEGIN { RS = "" } {
            types = ""; uris = ""; suites = ""; enabled = "yes"
            n = split($0, lines, "\n")
            for (j = 1; j <= n; j++) {
                if (lines[j] ~ /^[ \t]*#/) continue
                k = lines[j]; sub(/:.*/, "", k); k = tolower(k)
                v = lines[j]; sub(/^[^:]*:[ \t]*/, "", v)
                if (k == "types") types = v
                else if (k == "uris") uris = v
                else if (k == "suites") suites = v
                else if (k == "enabled") enabled = v
            }
            if ((" " types " ") ~ / deb / && (" " suites " ") ~ (" " rel " ") && enabled != "no") {
                split(uris, u, /[ \t]+/); print u[1]; exit
            }
        }' /etc/apt/sources.list.d/*.sources 2>/dev/null)
    echo "${m:-http://deb.debian.org/debian}"
}

# standin_minbase IMAGE: `debootstrap --variant=minbase bookworm`, imported
# as IMAGE (the root of every stand-in), unless IMAGE exists with this
# function's hash.
standin_minbase() {
    local image=$1 key
    key=$(declare -f standin_minbase | sha256sum | cut -c1-16)
    [ "$(standin_label "$image")" = "$key" ] && return 0
    ensure_packages debootstrap:debootstrap
    local dir
    dir=$(mktemp -d "${TMPDIR:-/var/tmp}/exploder-minbase.XXXXXX")
    echo "==> debootstrap --variant=minbase bookworm (stand-ins' base)" >&2
    if ! debootstrap --variant=minbase bookworm "$dir/rootfs" "$(debian_mirror bookworm)" \
        >"$dir.log" 2>&1; then
        echo "debootstrap failed; its log ($dir.log) ends:" >&2
        tail -n 20 "$dir.log" >&2
        # It may leave /proc and /sys mounted in the target: unmount them
        # (deepest first) before removing anything.
        findmnt -rno TARGET | grep "^$dir/" | sort -r | xargs -r -n1 umount -l
        findmnt -rno TARGET | grep -q "^$dir/" || rm -rf "$dir"
        return 1
    fi
    if ! tar --numeric-owner --xattrs -C "$dir/rootfs" -c . |
        docker import --change "LABEL $STANDIN_LABEL=$key" - "$image" >/dev/null; then
        echo "docker import of the debootstrapped bookworm failed" >&2
        rm -rf "$dir"
        return 1
    fi
    rm -rf "$dir" "$dir.log"
}

# standin_label IMAGE: the stand-in label of IMAGE; empty for an image
# without it (a real one), "missing" when there is no such image.
standin_label() {
    local label
    label=$(docker image inspect -f "{{ index .Config.Labels \"$STANDIN_LABEL\" }}" "$1" 2>/dev/null) ||
        { echo missing; return 0; }
    [ "$label" = "<no value>" ] && label=""
    echo "$label"
}

# standin_build IMAGE RECIPE KEY [ARGS...]: docker build of
# compose/standins/RECIPE as IMAGE, labelled KEY (quiet; the log on failure).
standin_build() {
    local image=$1 recipe=$2 key=$3
    shift 3
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/exploder-standin-$recipe.XXXXXX")
    echo "==> building the stand-in $image (compose/standins/$recipe)" >&2
    if ! docker build --label "$STANDIN_LABEL=$key" -t "$image" "$@" \
        "compose/standins/$recipe" >"$log" 2>&1; then
        echo "building $image failed; its log ($log) ends:" >&2
        tail -n 30 "$log" >&2
        return 1
    fi
    rm -f "$log"
}

# ensure_standins: every image of compose/standins/images exists, built
# here from a debootstrapped Debian and Debian's packages when missing or
# built from an older recipe (a real image of that name is kept). Runs
# from the repository's root; one build at a time per machine.
ensure_standins() {
    (
        flock 9
        standins_update
    ) 9>"${TMPDIR:-/tmp}/exploder-standins.lock"
}

standins_update() {
    local key
    key=$({
        declare -f standins_update standin_build standin_minbase
        find compose/standins -type f -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16)
    local names=() recipes=() name recipe label
    while read -r name recipe; do
        case "$name" in "" | "#"*) continue ;; esac
        label=$(standin_label "$name")
        if [ "$label" = missing ] || { [ -n "$label" ] && [ "$label" != "$key" ]; }; then
            names+=("$name")
            recipes+=("$recipe")
        fi
    done <compose/standins/images
    [ ${#names[@]} -gt 0 ] || return 0
    local started=$SECONDS i
    standin_minbase exploder-standin/minbase:bookworm || return 1
    # The base first (everything else is built on it), then the service
    # packages the others share, then the others.
    for i in "${!names[@]}"; do
        [ "${recipes[$i]}" = base ] || continue
        standin_build "${names[$i]}" base "$key" --build-arg BASE=exploder-standin/minbase:bookworm ||
            return 1
    done
    for i in "${!names[@]}"; do
        case "${recipes[$i]}" in rabbitmq | redis | registry | prometheus) ;; *) continue ;; esac
        if [ "$(standin_label exploder-standin/services)" != "$key" ]; then
            standin_build exploder-standin/services services "$key" || return 1
        fi
        break
    done
    for i in "${!names[@]}"; do
        [ "${recipes[$i]}" = base ] && continue
        standin_build "${names[$i]}" "${recipes[$i]}" "$key" || return 1
    done
    echo "==> stand-ins built in $((SECONDS - started)) s: ${names[*]}" >&2
}
