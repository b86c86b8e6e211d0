"""Atomic artifact writing (temp file + rename), safetensors + JSON only, and the cache root.

Free of heavy imports at module level: the pytest plugin writes reports through it, and torch
(with safetensors) is imported only by the tensor functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SteeringTransferError

if TYPE_CHECKING:  # torch and safetensors load only when tensors are written or read
    import torch

CACHE_ENV = "STEERING_TRANSFER_CACHE"


def cache_root() -> Path:
    """Cache directory: ``$STEERING_TRANSFER_CACHE`` or ``~/.cache/steering-transfer``."""
    root = os.environ.get(CACHE_ENV)
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "steering-transfer"
    path.mkdir(parents=True, exist_ok=True)
    return path


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object, stable across runs and machines."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write JSON atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically (reports, leaderboards)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SteeringTransferError(
            f"path {str(path)!r} does not exist; check the directory you passed"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SteeringTransferError(
            f"{path} is not valid JSON ({exc}); delete it and re-create it"
        ) from exc
    if not isinstance(data, dict):
        raise SteeringTransferError(f"{path} must hold a JSON object")
    return data


def write_tensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write tensors to safetensors atomically (contiguous CPU copies)."""
    from safetensors.torch import save_file

    path = Path(path)
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=dict(metadata) if metadata else None)
    return path


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning corruption into a clear error."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise SteeringTransferError(
            f"path {str(path)!r} does not exist; check the directory you passed"
        )
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several error types for corrupt headers
        raise SteeringTransferError(
            f"{path} is not a readable safetensors file ({exc}); delete it so it is rebuilt"
        ) from exc


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
