# exploder in one image: the CLI (`exploder`), `exploder-worker` and
# `exploder-producer`, on Debian bookworm. Built by compose/docker-compose.yml;
# by hand: docker build -t exploder:local .
#
# Plain Dockerfile syntax, no BuildKit-only features: Compose v1
# (docker-compose 1.29) and `docker build` without buildx use the classic
# builder, which knows no `RUN --mount` and cannot fetch a `# syntax=`
# frontend from Docker Hub when Docker Hub is out of reach.
#
# The image runs as root unless told otherwise, because only root can give
# exploded files the owners recorded in the image's layers (chown) — what
# makes a tree equal to `umoci unpack`'s. The unprivileged user "exploder"
# (uid/gid 10001) is there for running rootless (docker run --user 10001:10001,
# or EXPLODER_USER in compose/.env): files then belong to that user, device
# nodes cannot be created and security.capability xattrs are dropped. See
# compose/README.md, "Running rootless".

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
# Empty (the default): compile the workspace here, in release mode. A
# directory of the build context holding exploder, exploder-worker and
# exploder-producer already built for this Debian release (glibc):
# install those instead. The test suite hands in the binaries it built
# (target/compose-prebuilt/, which .dockerignore lets through).
ARG EXPLODER_PREBUILT=
WORKDIR /src
COPY . .
RUN set -eu; mkdir -p /out; \
    if [ -n "$EXPLODER_PREBUILT" ]; then \
        for bin in exploder exploder-worker exploder-producer; do \
            install -m 0755 "$EXPLODER_PREBUILT/$bin" /out/; \
        done; \
    else \
        cargo build --release --locked --bins; \
        cp target/release/exploder target/release/exploder-worker target/release/exploder-producer /out/; \
    fi

FROM debian:${DEBIAN_RELEASE}-slim
# ca-certificates: registries over TLS. curl: the compose healthchecks
# (GET /readyz on the metrics port). e2fsprogs, erofs-utils,
# squashfs-tools: the disk image exports (--export ext4,erofs,squashfs);
# fakeroot, attr: the same from a rootless worker's store (its recorded
# owners and xattrs, given under fakeroot with chown and setfattr).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
        e2fsprogs erofs-utils squashfs-tools fakeroot attr \
    && rm -rf /var/lib/apt/lists/*
# The store's mount point belongs to "exploder", so a fresh named volume
# mounted there is writable by it too (Docker copies the ownership).
RUN groupadd --system --gid 10001 exploder \
    && useradd --system --uid 10001 --gid exploder --no-create-home \
        --home-dir /var/lib/exploder --shell /usr/sbin/nologin exploder \
    && install -d -o exploder -g exploder -m 0755 /var/lib/exploder
COPY --from=builder /out/ /usr/local/bin/
ENV EXPLODER_STORE=/var/lib/exploder
# 8088: the producer's webhooks; 9100: /metrics, /healthz, /readyz.
EXPOSE 8088 9100
CMD ["exploder", "--help"]
