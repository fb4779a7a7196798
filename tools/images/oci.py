"""A small OCI image writer: one root filesystem tarball in, one OCI archive out.

``mmdebstrap`` already writes a root filesystem as a tar file, which is exactly an OCI layer;
what is left is the image config, the manifest, the index and the archive around them (OCI
image-spec 1.0). The archive loads with ``ctr -n k8s.io images import`` and ``kind load
image-archive``: the index names the image with both ``org.opencontainers.image.ref.name`` and
``io.containerd.image.name``. Standard library only, so it runs before any venv exists.

    python3 oci.py ROOTFS.tar OUT.oci.tar --name jiomosa.local/jiomosa-browser:0.2.0 \
        --config config.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

LAYER = "application/vnd.oci.image.layer.v1.tar"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def _digest_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _blob(data: bytes) -> tuple[str, int, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), len(data), data


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))


def write_archive(rootfs: Path, out: Path, name: str, container: dict[str, Any],
                  created: str | None = None) -> dict[str, Any]:
    """Write ``out`` (an OCI archive of one image named ``name``) and return its manifest
    digest and sizes."""
    created = created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    layer_digest, layer_size = _digest_file(rootfs)
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": container,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": created, "created_by": "tools/images/build.sh (mmdebstrap)"}],
    }
    config_digest, config_size, config_bytes = _blob(
        json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": LAYER, "digest": layer_digest, "size": layer_size}],
    }
    manifest_digest, manifest_size, manifest_bytes = _blob(
        json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [{
            "mediaType": MANIFEST, "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": name,
                            "io.containerd.image.name": name},
        }],
    }
    mtime = time.time()
    tmp = out.with_suffix(out.suffix + ".part")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as archive:
        _add_bytes(archive, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', mtime)
        _add_bytes(archive, "index.json", json.dumps(index, indent=1).encode(), mtime)
        for digest, data in ((config_digest, config_bytes), (manifest_digest, manifest_bytes)):
            _add_bytes(archive, "blobs/sha256/" + digest.split(":", 1)[1], data, mtime)
        info = archive.gettarinfo(str(rootfs), "blobs/sha256/" + layer_digest.split(":", 1)[1])
        info.mode, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, "", ""
        with rootfs.open("rb") as layer:
            archive.addfile(info, layer)
    tmp.replace(out)
    return {"name": name, "manifest": manifest_digest, "layer_bytes": layer_size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rootfs", type=Path, help="root filesystem as a tar file")
    parser.add_argument("out", type=Path, help="the OCI archive to write")
    parser.add_argument("--name", required=True, help="full image reference")
    parser.add_argument("--config", type=Path, required=True,
                        help="JSON of the image's container config (User, Env, Entrypoint, ...)")
    args = parser.parse_args()
    result = write_archive(args.rootfs, args.out, args.name,
                           json.loads(args.config.read_text()))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
