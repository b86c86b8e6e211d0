"""Table 1/2 analogue: mapped-replacement completions vs the target's, beside mean ablation."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..config import DictConfig
from ..errors import SteeringTransferError
from ..validate import check_texts
from .embedding import EmbeddingJudge, cosine_to_score
from .rouge import rouge_l
from .winrate import WinRate, mva, tvs

__all__ = [
    "EMBEDDING_TIE_TOLERANCE",
    "CompletionComparison",
    "compare_completions",
    "default_embedding_judge",
]

# float32 cosines of identical texts can differ by ~1e-7 across batches (different padding)
EMBEDDING_TIE_TOLERANCE = 1e-6


class PairSimilarity(Protocol):
    """What compare_completions needs from an embedding judge: row-wise cosines."""

    name: str

    def similarity(self, a: list[str], b: list[str]) -> torch.Tensor: ...


class CompletionRater(Protocol):
    """What compare_completions needs from an LLM judge."""

    model: str

    def similarity(self, completion: str, reference: str) -> int: ...

    def coherence(self, completion: str) -> int: ...


@functools.lru_cache(maxsize=1)
def default_embedding_judge() -> EmbeddingJudge:
    """The packaged all-MiniLM-L6-v2 judge, loaded once per process (about a second)."""
    return EmbeddingJudge.from_packaged()


@dataclass
class CompletionComparison(DictConfig):
    """Means over prompts; ``*_mapped`` compare mapped to target, ``*_ablated`` ablated to target.

    Win rates use the raw cosines (``mva``, ``tvs``) or the LLM grades (``mva_llm``,
    ``tvs_llm``); a win rate is None when it was not computed or every pair tied.
    """

    n: int
    embedder: str
    rouge_l_mapped: float
    rouge_l_ablated: float
    embedding_mapped: float
    embedding_ablated: float
    mva: WinRate | None = None
    tvs: WinRate | None = None
    llm_model: str | None = None
    llm_similarity_mapped: float | None = None
    llm_similarity_ablated: float | None = None
    llm_coherence_mapped: float | None = None
    llm_coherence_ablated: float | None = None
    mva_llm: WinRate | None = None
    tvs_llm: WinRate | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v.to_dict() if isinstance(v, WinRate) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompletionComparison:  # type: ignore[override]
        rates = {"mva", "tvs", "mva_llm", "tvs_llm"}
        data = {
            k: WinRate.from_dict(v) if k in rates and isinstance(v, dict) else v
            for k, v in data.items()
        }
        return super().from_dict(data)


def _check_same_length(texts: dict[str, list[str]]) -> int:
    (first, ref), *rest = texts.items()
    for name, other in rest:
        if len(other) != len(ref):
            raise SteeringTransferError(
                f"{name} has {len(other)} completions but {first} has {len(ref)}; pass one "
                "completion per prompt, in the same prompt order"
            )
    return len(ref)


def _win_or_none(
    rate: Any, a: Sequence[float], b: Sequence[float], tolerance: float
) -> WinRate | None:
    if all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True)):
        return None  # every pair tied: undefined, recorded as missing rather than raising
    return rate(a, b, tie_tolerance=tolerance)  # type: ignore[no-any-return]


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def compare_completions(
    mapped: Sequence[str],
    target: Sequence[str],
    ablated: Sequence[str],
    source: Sequence[str] | None = None,
    *,
    embedder: PairSimilarity | None = None,
    llm: CompletionRater | None = None,
) -> CompletionComparison:
    """Score mapped and mean-ablated completions against the target model's own completions.

    ``mapped[i]``, ``ablated[i]``, ``target[i]`` (and ``source[i]``, the source model's
    completion, for TvS) belong to prompt ``i``. ``embedder=None`` uses the packaged
    all-MiniLM-L6-v2 (:func:`default_embedding_judge`); ``llm`` adds the LLM-J and COH columns
    at four requests per prompt (five with ``source``).
    """
    texts = {
        "mapped": check_texts(mapped, param="mapped"),
        "target": check_texts(target, param="target"),
        "ablated": check_texts(ablated, param="ablated"),
    }
    if source is not None:
        texts["source"] = check_texts(source, param="source")
    n = _check_same_length(texts)
    m, t, a = texts["mapped"], texts["target"], texts["ablated"]
    judge = embedder if embedder is not None else default_embedding_judge()

    cos_mt = judge.similarity(m, t).double()
    cos_at = judge.similarity(a, t).double()
    result = CompletionComparison(
        n=n,
        embedder=str(getattr(judge, "name", type(judge).__name__)),
        rouge_l_mapped=_mean([rouge_l(x, y) for x, y in zip(m, t, strict=True)]),
        rouge_l_ablated=_mean([rouge_l(x, y) for x, y in zip(a, t, strict=True)]),
        embedding_mapped=float(cosine_to_score(cos_mt).mean()),
        embedding_ablated=float(cosine_to_score(cos_at).mean()),
        mva=_win_or_none(mva, cos_mt.tolist(), cos_at.tolist(), EMBEDDING_TIE_TOLERANCE),
    )
    if source is not None:
        cos_ms = judge.similarity(m, texts["source"]).double()
        result.tvs = _win_or_none(tvs, cos_mt.tolist(), cos_ms.tolist(), EMBEDDING_TIE_TOLERANCE)
    if llm is not None:
        sim_mt = [float(llm.similarity(x, y)) for x, y in zip(m, t, strict=True)]
        sim_at = [float(llm.similarity(x, y)) for x, y in zip(a, t, strict=True)]
        result.llm_model = str(getattr(llm, "model", type(llm).__name__))
        result.llm_similarity_mapped = _mean(sim_mt)
        result.llm_similarity_ablated = _mean(sim_at)
        result.llm_coherence_mapped = _mean([float(llm.coherence(x)) for x in m])
        result.llm_coherence_ablated = _mean([float(llm.coherence(x)) for x in a])
        result.mva_llm = _win_or_none(mva, sim_mt, sim_at, 0.0)
        if source is not None:
            sim_ms = [float(llm.similarity(x, y)) for x, y in zip(m, texts["source"], strict=True)]
            result.tvs_llm = _win_or_none(tvs, sim_mt, sim_ms, 0.0)
    return result
