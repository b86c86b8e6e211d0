"""llama.cpp GGUF control vectors: export and import of :class:`.SteeringVector` s.

A control vector file holds one ``direction.N`` tensor per layer; llama.cpp adds it to the
output of its layer ``N``, which is our block ``N`` (no offset). Our own fields ride along under
extra ``steering_transfer.*`` keys that llama.cpp ignores, so a round trip is lossless.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from steering_transfer.errors import SteeringTransferError
from steering_transfer.io import atomic_path

from .steering_vector import FORMAT_VERSION, SteeringVector

_GGUF_ARCH = "controlvector"
_GGUF_PREFIX = "steering_transfer."


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
            # Sorted keys: equal vectors give equal bytes whatever their metadata's order.
            fields = json.dumps(v.to_dict(), sort_keys=True)
            writer.add_string(f"{_GGUF_PREFIX}direction.{v.layer}", fields)
            data = v.vector.detach().to("cpu", torch.float32).contiguous().numpy()
            writer.add_tensor(f"direction.{v.layer}", np.ascontiguousarray(data, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _stored_fields(path: Path, name: str, stored: Any) -> dict[str, Any]:
    """Our JSON fields stored beside tensor ``name``, or a clear error."""
    try:
        data = json.loads(stored)
    except (TypeError, json.JSONDecodeError) as exc:
        raise SteeringTransferError(
            f"{path}: the {_GGUF_PREFIX} metadata of {name} is not valid JSON ({exc}); "
            "re-export the file"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("metadata") or {}, dict):
        raise SteeringTransferError(
            f"{path}: the {_GGUF_PREFIX} metadata of {name} must be a JSON object (with an "
            "object under 'metadata'); re-export the file"
        )
    return data


def load_gguf_control_vector(path: str | Path) -> list[SteeringVector]:
    """Read every ``direction.N`` of a GGUF control vector, sorted by layer (N = our layer).

    Files from other tools (llama.cpp's cvector-generator, repeng) load too: without our
    extra keys the model id is ``"gguf:<model_hint>"`` and the method ``"gguf"``. The layer is
    the tensor name's ``N`` (the layer llama.cpp steers); a file whose stored fields name
    another layer is refused as inconsistent.
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
            data = _stored_fields(path, name, stored)
            if data.get("layer") != layer:
                # llama.cpp steers the layer in the tensor name; loading the JSON's layer
                # would steer a different block than the file does in llama.cpp
                raise SteeringTransferError(
                    f"{path}: tensor {name} (llama.cpp steers layer {layer}) carries "
                    f"{_GGUF_PREFIX}direction.{layer} metadata with layer "
                    f"{data.get('layer')!r}; the file is inconsistent: re-export it with "
                    "save_gguf_control_vector (or delete that metadata key to trust the "
                    "tensor name)"
                )
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
