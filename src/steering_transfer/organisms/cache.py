"""Where built organisms live, and how a complete one is told from a partial or corrupt one.

An organism is built in a temporary folder and renamed into place (``io.atomic_directory``);
inside, ``manifest.json`` lists the sha256 of every file and the completion marker is written
last. A folder missing the marker, a file, or with a wrong hash is treated as absent and rebuilt,
so a killed or half-copied build is never loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from steering_transfer.io import cache_root, write_json
from steering_transfer.organisms.spec import CODE_VERSION, OrganismSpec, get_spec

MANIFEST = "manifest.json"
RECORD = "organism.json"
COMPLETE = "COMPLETE.json"


def organism_dir(spec: OrganismSpec) -> Path:
    """Cache folder of a built organism (it may not exist yet)."""
    return cache_root() / "zoo" / f"{spec.id}-{spec.cache_key}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, extra: Mapping[str, Any] | None = None) -> None:
    """Hash every file into ``manifest.json``, then write the completion marker last."""
    files = {
        str(p.relative_to(folder)): {"sha256": _sha256(p), "size": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST, COMPLETE)
    }
    write_json(folder / MANIFEST, {"files": files})
    write_json(folder / COMPLETE, {
        "manifest_sha256": _sha256(folder / MANIFEST), "code_version": CODE_VERSION,
        **(dict(extra) if extra else {}),
    })


def verify_folder(folder: str | Path, *, check_hashes: bool = True) -> str | None:
    """``None`` if ``folder`` is a complete organism, else what is wrong with it."""
    folder = Path(folder)
    if not folder.is_dir():
        return "folder does not exist"
    if not (folder / COMPLETE).is_file():
        return f"completion marker {COMPLETE} is missing (interrupted build)"
    if not (folder / MANIFEST).is_file():
        return f"{MANIFEST} is missing"
    try:
        marker = json.loads((folder / COMPLETE).read_text())
        manifest = json.loads((folder / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"unreadable manifest or marker ({exc})"
    if marker.get("manifest_sha256") != _sha256(folder / MANIFEST):
        return f"{MANIFEST} does not match the completion marker"
    files = manifest.get("files", {})
    if not files:
        return f"{MANIFEST} lists no files"
    for name, meta in files.items():
        path = folder / name
        if not path.is_file():
            return f"file {name} is missing"
        if path.stat().st_size != meta.get("size"):
            return f"file {name} has size {path.stat().st_size}, expected {meta.get('size')}"
        if check_hashes and _sha256(path) != meta.get("sha256"):
            return f"file {name} has a wrong sha256 (corrupt)"
    return None


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """Serialise builds of one organism across processes (pytest-xdist, bench + CLI)."""
    lock_path = folder.parent / f".{folder.name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no cross-process lock
        yield
        return
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def remove_stale(folder: Path) -> None:
    """Delete leftovers of killed builds (temporary folders) and an incomplete final folder."""
    for tmp in folder.parent.glob(f".{folder.name}.*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)


def organism_record(
    organism: str | OrganismSpec, spec_path: str | Path | None = None
) -> dict[str, Any] | None:
    """The stored build record (metrics, timings) of a built organism, or ``None``."""
    spec = get_spec(organism, spec_path)
    if spec.source == "hub":
        return None
    folder = organism_dir(spec)
    if verify_folder(folder, check_hashes=False) is not None:
        return None
    return dict(json.loads((folder / RECORD).read_text()))
