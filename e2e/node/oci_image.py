"""Write a one-layer OCI image archive from host files, without Docker or a registry.

e2e/node/images.sh calls it to build the real e2e node's images (the pause sandbox and
the llama.cpp server engine), which cluster.sh then imports with
``ctr -n k8s.io images import``. The archive is an OCI image layout in a tar
(``oci-layout``, ``index.json``, ``blobs/sha256/...``; image-spec v1.1): one uncompressed
layer, one config, one manifest; the index entry carries the image name as
``io.containerd.image.name`` (what ``ctr images import`` tags) and the tag as
``org.opencontainers.image.ref.name``. Every timestamp is 0 and every entry is sorted and
owned by root, so the same inputs give the same digests.

    python e2e/node/oci_image.py --ref NAME:TAG --out image.tar \\
        --add /host/file:/in/image[:mode] --dir /tmp:1777 \\
        --entrypoint '["/app/llama-server"]' --env K=V --workdir /app --label k=v
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
EPOCH = "1970-01-01T00:00:00Z"


@dataclass
class Layer:
    """The files of the single layer: image path -> (content, mode), plus directories."""

    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    dirs: dict[str, int] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    def add_file(self, path: str, content: bytes, mode: int) -> None:
        self.files[_clean(path)] = (content, mode)

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self.dirs[_clean(path)] = mode

    def add_symlink(self, path: str, target: str) -> None:
        self.links[_clean(path)] = target

    def tar(self) -> bytes:
        """The layer as a deterministic tar (parents first, then sorted)."""
        entries: dict[str, tarfile.TarInfo] = {}
        payload: dict[str, bytes] = {}
        for path in [*self.files, *self.dirs, *self.links]:
            for parent in reversed(PurePosixPath(path).parents):
                name = str(parent)
                if name not in (".", "/", "") and name not in entries:
                    entries[name] = _info(name, tarfile.DIRTYPE, self.dirs.get(name, 0o755))
        for path, mode in self.dirs.items():
            entries[path] = _info(path, tarfile.DIRTYPE, mode)
        for path, target in self.links.items():
            info = _info(path, tarfile.SYMTYPE, 0o777)
            info.linkname = target
            entries[path] = info
        for path, (content, mode) in self.files.items():
            info = _info(path, tarfile.REGTYPE, mode)
            info.size = len(content)
            entries[path] = info
            payload[path] = content
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(entries):
                data = payload.get(name)
                tar.addfile(entries[name], io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def _clean(path: str) -> str:
    """Image paths are absolute in the CLI and relative (no leading /) in the tar."""
    clean = str(PurePosixPath("/", path)).lstrip("/")
    if not clean or ".." in PurePosixPath(clean).parts:
        raise ValueError(f"bad image path {path!r}")
    return clean


def _info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def image_archive(
    ref: str,
    layer: Layer,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    env: list[str] | None = None,
    workdir: str | None = None,
    user: str | None = None,
    labels: dict[str, str] | None = None,
) -> bytes:
    """Return the OCI image layout tar of a one-layer linux/amd64 image named ``ref``.

    Args:
        ref: full image reference with a tag (``ghcr.io/ggml-org/llama.cpp:server-b1``).
        layer: the files of the image.
        entrypoint, cmd, env, workdir, user, labels: the image config's fields
            (``Entrypoint``, ``Cmd``, ``Env``, ``WorkingDir``, ``User``, ``Labels``).

    Returns:
        The archive's bytes, for ``ctr images import``.
    """
    if ":" not in ref.rsplit("/", 1)[-1]:
        raise ValueError(f"{ref!r} has no tag")
    layer_digest, layer_bytes = _blob(layer.tar())
    config: dict[str, Any] = {
        "created": EPOCH,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            k: v
            for k, v in {
                "Entrypoint": entrypoint,
                "Cmd": cmd,
                "Env": env or None,
                "WorkingDir": workdir,
                "User": user,
                "Labels": labels or None,
            }.items()
            if v is not None
        },
        # Uncompressed layer: its diff ID is its digest.
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": EPOCH, "created_by": "e2e/node/oci_image.py"}],
    }
    config_digest, config_bytes = _blob(_json(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": LAYER_TYPE, "digest": layer_digest, "size": len(layer_bytes)}],
    }
    manifest_digest, manifest_bytes = _blob(_json(manifest))
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": MANIFEST_TYPE,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1],
                },
            }
        ],
    }
    out = Layer()
    out.add_file("oci-layout", _json({"imageLayoutVersion": "1.0.0"}), 0o644)
    out.add_file("index.json", _json(index), 0o644)
    for digest, data in (
        (layer_digest, layer_bytes),
        (config_digest, config_bytes),
        (manifest_digest, manifest_bytes),
    ):
        out.add_file(f"blobs/sha256/{digest.split(':', 1)[1]}", data, 0o644)
    return out.tar()


def _parse_add(spec: str) -> tuple[Path, str, int | None]:
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"--add wants SRC:DEST[:MODE], got {spec!r}")
    mode = int(parts[2], 8) if len(parts) == 3 else None
    return Path(parts[0]), parts[1], mode


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", required=True, help="image name with tag")
    p.add_argument("--out", required=True, type=Path, help="archive to write")
    p.add_argument("--add", action="append", default=[], type=_parse_add,
                   metavar="SRC:DEST[:MODE]", help="a host file (symlinks resolved)")  # fmt: skip
    p.add_argument("--dir", action="append", default=[], metavar="DEST[:MODE]")
    p.add_argument("--symlink", action="append", default=[], metavar="DEST:TARGET")
    p.add_argument("--entrypoint", type=json.loads, help="JSON list")
    p.add_argument("--cmd", type=json.loads, help="JSON list")
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.add_argument("--workdir")
    p.add_argument("--user")
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    args = p.parse_args(argv[1:])

    layer = Layer()
    for src, dest, mode in args.add:
        real = src.resolve(strict=True)
        if mode is None:
            mode = real.stat().st_mode & 0o7777
        layer.add_file(dest, real.read_bytes(), mode)
    for spec in args.dir:
        dest, _, mode = spec.partition(":")
        layer.add_dir(dest, int(mode, 8) if mode else 0o755)
    for spec in args.symlink:
        dest, _, target = spec.partition(":")
        layer.add_symlink(dest, target)
    labels = dict(kv.split("=", 1) for kv in args.label)
    data = image_archive(args.ref, layer, args.entrypoint, args.cmd, args.env, args.workdir,
                         args.user, labels)  # fmt: skip
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
