"""The :class:`SteeringVector` type: validation, safetensors persistence, steering, controls.

A vector is a 1-D direction tied to one model and one site, the output of decoder block
``layer`` (the residual stream after that block, see :mod:`steering_transfer.hooks`). It is
saved as safetensors (tensor ``direction.{layer}``, fields in the safetensors metadata) or
exported as a llama.cpp GGUF control vector (:mod:`.gguf`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steering_transfer import hooks
from steering_transfer.errors import SteeringTransferError
from steering_transfer.io import write_tensors
from steering_transfer.models import ModelHandle
from steering_transfer.positions import PositionSpec
from steering_transfer.validate import check_finite

FORMAT_VERSION = 1
HOOK_SITES = ("block_output",)
_META_KEY = "steering_transfer"

MetadataValue = str | int | float


@dataclass
class SteeringVector:
    """A direction in one model's residual stream at the output of decoder block ``layer``.

    ``metadata`` holds provenance (sample counts, positions, mapper, seed); its values are
    restricted to str/int/float so that it serialises losslessly to JSON.
    """

    vector: torch.Tensor
    model_id: str
    layer: int
    method: str
    hook_site: str = "block_output"
    metadata: dict[str, MetadataValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.vector, torch.Tensor):
            raise SteeringTransferError(
                f"vector must be a torch.Tensor, got {type(self.vector).__name__}"
            )
        if self.vector.ndim != 1 or self.vector.shape[0] == 0:
            raise SteeringTransferError(
                f"vector must be 1-D (hidden_size,), got shape {tuple(self.vector.shape)}; "
                "average or select rows before building a SteeringVector"
            )
        self.vector = check_finite(self.vector.detach(), param="vector")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise SteeringTransferError(
                f"layer must be a non-negative int (resolved block index), got {self.layer!r}; "
                "resolve negative indices with handle.layer(i) first"
            )
        if not isinstance(self.model_id, str) or not self.model_id:
            raise SteeringTransferError("model_id must be a non-empty string")
        if not isinstance(self.method, str) or not self.method:
            raise SteeringTransferError("method must be a non-empty string, e.g. 'diff_in_means'")
        if self.hook_site not in HOOK_SITES:
            raise SteeringTransferError(
                f"hook_site={self.hook_site!r} is not supported; use one of {HOOK_SITES}"
            )
        self.metadata = _check_metadata(self.metadata)

    # ------------------------------------------------------------------------------- basics

    @property
    def hidden_size(self) -> int:
        return int(self.vector.shape[0])

    def norm(self) -> float:
        """Euclidean norm, computed in float64 so bf16 vectors report it accurately."""
        return float(self.vector.double().norm())

    def to(self, *args: Any, **kwargs: Any) -> SteeringVector:
        """Copy with the tensor moved/cast like ``Tensor.to`` (device and/or dtype)."""
        return dataclasses.replace(
            self, vector=self.vector.to(*args, **kwargs), metadata=dict(self.metadata)
        )

    def to_dict(self) -> dict[str, Any]:
        """The non-tensor fields (JSON-serialisable)."""
        return {
            "model_id": self.model_id,
            "layer": self.layer,
            "hook_site": self.hook_site,
            "method": self.method,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], vector: torch.Tensor) -> SteeringVector:
        """Rebuild from :meth:`to_dict` output plus the tensor."""
        missing = [k for k in ("model_id", "layer", "method") if k not in data]
        if missing:
            raise SteeringTransferError(f"steering vector fields {missing} are missing")
        unknown = sorted(set(data) - {"model_id", "layer", "hook_site", "method", "metadata"})
        if unknown:
            raise SteeringTransferError(f"unknown steering vector fields {unknown}")
        return cls(
            vector=vector,
            model_id=data["model_id"],
            layer=data["layer"],
            method=data["method"],
            hook_site=data.get("hook_site", "block_output"),
            metadata=dict(data.get("metadata") or {}),
        )

    def check_compatible(self, handle: ModelHandle) -> SteeringVector:
        """Raise unless this vector can be applied to ``handle`` (width and layer)."""
        if self.hidden_size != handle.hidden_size:
            raise SteeringTransferError(
                f"this vector was built for {self.model_id!r} (hidden size {self.hidden_size}) "
                f"but {handle.model_id!r} has hidden size {handle.hidden_size}: a vector of the "
                "wrong model; map it into the target's residual stream first with "
                "map_vector(mapper, ...)"
            )
        if self.layer >= handle.n_layers:
            raise SteeringTransferError(
                f"vector layer {self.layer} is out of range for {handle.model_id!r} with "
                f"{handle.n_layers} decoder blocks (vector built for {self.model_id!r}); "
                "map it to a target layer first with map_vector(..., target_layer=...)"
            )
        return self

    @contextmanager
    def apply(
        self, handle: ModelHandle, alpha: float = 1.0, *, positions: PositionSpec = "all"
    ) -> Iterator[None]:
        """Steer ``handle`` inside a ``with`` block: add ``alpha * vector`` at block ``layer``.

        The steering-vectors library's ``apply`` idiom on top of :func:`hooks.add` (same hook,
        so the same numbers); the hook is removed on exit, also when the body raises.
        ``positions`` is any :data:`~steering_transfer.positions.PositionSpec`.
        """
        self.check_compatible(handle)
        with hooks.add(handle, self.layer, self.vector, alpha, positions):
            yield

    # ------------------------------------------------------------------------- safetensors

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file: tensor ``direction.{layer}`` and the fields as metadata.

        Everything lives in one file so the write is atomic; the fields are also stored as a
        JSON string so int/float metadata keeps its type. The same vector gives the same bytes
        in every process (sorted JSON, canonical header: see ``io.write_tensors``).
        """
        meta = {
            "format_version": str(FORMAT_VERSION),
            "model_id": self.model_id,
            "layer": str(self.layer),
            "hook_site": self.hook_site,
            "method": self.method,
            _META_KEY: json.dumps(self.to_dict(), sort_keys=True),
        }
        return write_tensors(path, {f"direction.{self.layer}": self.vector}, metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Read a file written by :meth:`save`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise SteeringTransferError(f"path {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                names = list(f.keys())
                tensors = {name: f.get_tensor(name) for name in names}
        except Exception as exc:  # safetensors raises several error types for corrupt headers
            raise SteeringTransferError(
                f"{path} is not a readable safetensors file ({exc})"
            ) from exc
        if _META_KEY not in meta or meta.get("format_version") != str(FORMAT_VERSION):
            raise SteeringTransferError(
                f"{path} is not a steering-transfer vector file (format_version "
                f"{FORMAT_VERSION} metadata missing); GGUF control vectors load with from_gguf"
            )
        try:
            data = json.loads(meta[_META_KEY])
        except json.JSONDecodeError as exc:
            raise SteeringTransferError(f"{path} has corrupt vector metadata ({exc})") from exc
        name = f"direction.{data.get('layer')}"
        if name not in tensors:
            raise SteeringTransferError(f"{path} has no tensor {name!r}; found {names}")
        return cls.from_dict(data, tensors[name])

    # -------------------------------------------------------------------------------- GGUF

    def to_gguf(self, path: str | Path, model_hint: str | None = None) -> Path:
        """Export as a llama.cpp control vector (see :func:`.gguf.save_gguf_control_vector`)."""
        from .gguf import save_gguf_control_vector  # .gguf builds on this module

        return save_gguf_control_vector([self], path, model_hint=model_hint)

    @classmethod
    def from_gguf(cls, path: str | Path, layer: int | None = None) -> SteeringVector:
        """Read one direction of a GGUF control vector (``layer`` picks one of several)."""
        from .gguf import load_gguf_control_vector  # .gguf builds on this module

        vectors = load_gguf_control_vector(path)
        if layer is None:
            if len(vectors) != 1:
                raise SteeringTransferError(
                    f"{path} holds directions for layers {[v.layer for v in vectors]}; pass "
                    "layer=... or use load_gguf_control_vector for all of them"
                )
            return vectors[0]
        for vector in vectors:
            if vector.layer == layer:
                return vector
        raise SteeringTransferError(
            f"{path} has no direction for layer {layer}; layers: {[v.layer for v in vectors]}"
        )


def _check_metadata(metadata: Any) -> dict[str, MetadataValue]:
    if not isinstance(metadata, dict):
        raise SteeringTransferError(f"metadata must be a dict, got {type(metadata).__name__}")
    out: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise SteeringTransferError(f"metadata key {key!r} must be a str")
        if not isinstance(value, (str, int, float)):
            raise SteeringTransferError(
                f"metadata[{key!r}] is {type(value).__name__}; only str, int and float values "
                "are allowed (they must survive JSON)"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise SteeringTransferError(f"metadata[{key!r}]={value} is not finite")
        out[key] = value
    return out


def random_like(vector: SteeringVector, seed: int) -> SteeringVector:
    """A uniformly random direction with the same norm, model and layer ("noise" baseline).

    Reviewers asked for this control: a mapped vector's effect only means something if a
    random vector of equal norm does not do the same.
    """
    if not isinstance(vector, SteeringVector):
        raise SteeringTransferError(f"vector must be a SteeringVector, got {type(vector).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SteeringTransferError(f"seed must be an int, got {seed!r}")
    target_norm = vector.norm()
    if target_norm == 0.0:
        raise SteeringTransferError("vector has zero norm; a same-norm random vector is all zeros")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(vector.hidden_size, generator=generator, dtype=torch.float64)
    noise = noise / noise.norm() * target_norm
    meta = {k: v for k, v in vector.metadata.items() if k == "model_hint"}
    meta.update({"seed": seed, "source_method": vector.method, "norm": target_norm})
    return SteeringVector(
        vector=noise.to(device=vector.vector.device, dtype=vector.vector.dtype),
        model_id=vector.model_id,
        layer=vector.layer,
        method="random",
        hook_site=vector.hook_site,
        metadata=meta,
    )
