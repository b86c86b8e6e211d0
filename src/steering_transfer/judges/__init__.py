"""Offline judges of completion similarity for the paper's Table 1/2 analogue.

Mapped-replacement completions are compared with the target model's original completions,
beside the mean-ablation baseline:

* :mod:`.rouge` - ROUGE-N / ROUGE-L F1 (own implementation, no dependency)
* :mod:`.embedding` - all-MiniLM-L6-v2 cosine on the 0-5 scale, offline from a PyPI wheel
* :mod:`.winrate` - MvA / TvS win rates with Wilson intervals
* :mod:`.llm` - optional LLM judge (0-5 similarity and coherence) over an OpenAI-compatible API
* :mod:`.local_llm` - the same grades from a locally loaded instruct model (digit logits), and
  :func:`judge_from_env`, which picks the HTTP or the local judge from the environment
* :mod:`.calibration` - a calibration set with known answers and :func:`calibrate_judge`
* :mod:`.compare` - :func:`compare_completions`, the per-dataset aggregate
"""

from .calibration import (
    CALIBRATION_SET,
    CalibrationItem,
    CategoryScores,
    JudgeCalibration,
    calibrate_judge,
    calibration_markdown,
)
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
from .local_llm import (
    JUDGE_SKIP_REASON,
    LOCAL_ENV,
    DigitScore,
    LocalLLMJudge,
    judge_from_env,
)
from .rouge import rouge_l, rouge_n, tokenize
from .winrate import WinRate, mva, tvs, win_rate

__all__ = [
    "CALIBRATION_SET",
    "COHERENCE_RUBRIC",
    "EMBEDDING_TIE_TOLERANCE",
    "JUDGE_SKIP_REASON",
    "LLM_JUDGE_SKIP_REASON",
    "LOCAL_ENV",
    "PACKAGED_EMBEDDING_MODEL",
    "PACKAGED_EMBEDDING_PIP",
    "SIMILARITY_RUBRIC",
    "CalibrationItem",
    "CategoryScores",
    "CompletionComparison",
    "DigitScore",
    "EmbeddingJudge",
    "JudgeCalibration",
    "LLMJudge",
    "LocalLLMJudge",
    "WinRate",
    "calibrate_judge",
    "calibration_markdown",
    "compare_completions",
    "cosine_to_score",
    "default_embedding_judge",
    "judge_from_env",
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
