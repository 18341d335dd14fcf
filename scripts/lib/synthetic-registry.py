#!/usr/bin/env python3
"""Writes N synthetic images straight into a registry's storage directory
(distribution's filesystem layout), as scripts/bench-scale needs them: far
faster than pushing 10,000 images through the API, and what the registry
then serves is exactly what a push would have left.

Each image: a base layer shared by all (~300 files) plus a layer of its own
(~50 files), an OCI config and manifest. Image i is tagged twice:
`<prefix>/r<i>:v1` (one repository each: many repositories) and
`<prefix>/tags:t<i>` (one repository, many tags).

    synthetic-registry.py ROOT N [PREFIX]     prints nothing; exit 0
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

root, n = sys.argv[1], int(sys.argv[2])
prefix = sys.argv[3] if len(sys.argv) > 3 else "scale"
v2 = os.path.join(root, "docker", "registry", "v2")


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def blob(data):
    """Stores a blob once; returns its sha256 hex."""
    hexd = hashlib.sha256(data).hexdigest()
    path = os.path.join(v2, "blobs", "sha256", hexd[:2], hexd, "data")
    if not os.path.exists(path):
        write(path, data)
    return hexd


def layer(files):
    """A gzipped tar of (name, bytes); returns (blob hex, diff id hex, size)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = set()
        for name, data in files:
            d = os.path.dirname(name)
            if d and d not in dirs:
                dirs.add(d)
                info = tarfile.TarInfo(d)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                t.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            t.addfile(info, io.BytesIO(data))
    tar = raw.getvalue()
    gz = gzip.compress(tar, compresslevel=6, mtime=0)
    return blob(gz), hashlib.sha256(tar).hexdigest(), len(gz)


def link(repo, kind, hexd):
    write(os.path.join(v2, "repositories", repo, kind, "sha256", hexd, "link"),
          f"sha256:{hexd}".encode())


def tag(repo, name, hexd):
    t = os.path.join(v2, "repositories", repo, "_manifests", "tags", name)
    write(os.path.join(t, "current", "link"), f"sha256:{hexd}".encode())
    write(os.path.join(t, "index", "sha256", hexd, "link"), f"sha256:{hexd}".encode())


base = layer([(f"usr/share/base/f{i:03}", (b"base file %d\n" % i) * 40) for i in range(300)])
for i in range(n):
    own = layer([(f"srv/app{i}/f{j:02}", (b"image %d file %d\n" % (i, j)) * 20) for j in range(50)])
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": [f"IMAGE={i}"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{base[1]}", f"sha256:{own[1]}"]},
    }, sort_keys=True).encode()
    config_hex = blob(config)
    layer_type = "application/vnd.oci.image.layer.v1.tar+gzip"
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": f"sha256:{config_hex}", "size": len(config)},
        "layers": [{"mediaType": layer_type, "digest": f"sha256:{h}", "size": s}
                   for h, _, s in (base, own)],
    }, sort_keys=True).encode()
    manifest_hex = blob(manifest)
    for repo, name in ((f"{prefix}/r{i:05}", "v1"), (f"{prefix}/tags", f"t{i:05}")):
        for h in (base[0], own[0], config_hex):
            link(repo, "_layers", h)
        link(repo, "_manifests/revisions", manifest_hex)
        tag(repo, name, manifest_hex)
