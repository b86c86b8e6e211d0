"""ROUGE-N and ROUGE-L F1 between two texts, implemented here (no dependency).

The paper reports ROUGE-1/2/L of mapped completions against the target model's originals;
these functions are the per-pair scores, to be averaged over prompts by the caller.
"""

from __future__ import annotations

import re
from collections import Counter

from ..errors import SteeringTransferError

__all__ = ["rouge_l", "rouge_n", "tokenize"]

# Runs of Unicode letters and digits; everything else (spaces, punctuation, underscores) splits.
_WORD = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens: maximal runs of letters and digits, all else is a separator.

    On ASCII text this is exactly the default tokenizer of Google's ``rouge-score`` without
    stemming (lowercase, non-alphanumerics become spaces), so numbers are comparable with
    papers that used it: ``"Don't stop!"`` -> ``["don", "t", "stop"]``. Unlike ``rouge-score``,
    non-ASCII letters are kept (``"Café"`` -> ``["café"]``) instead of being deleted.
    """
    if not isinstance(text, str):
        raise SteeringTransferError(f"text must be a str, got {type(text).__name__}")
    return _WORD.findall(text.lower())


def _f1(overlap: int, n_candidate: int, n_reference: int) -> float:
    if overlap == 0:
        return 0.0
    precision = overlap / n_candidate
    recall = overlap / n_reference
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence length, O(len(a)·len(b)) time and O(len(b)) memory."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[-1]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1: LCS of the two token sequences over candidate and reference lengths.

    Tokens come from :func:`tokenize` (lowercase runs of letters/digits). As in ``rouge-score``,
    the score is 0.0 when either text has no tokens (so two empty texts score 0, not 1).
    """
    c, r = tokenize(candidate), tokenize(reference)
    if not c or not r:
        return 0.0
    return _f1(_lcs_length(c, r), len(c), len(r))


def rouge_n(candidate: str, reference: str, n: int) -> float:
    """ROUGE-N F1: clipped n-gram overlap (each n-gram counts at most as often as in the other).

    Tokens come from :func:`tokenize`; the score is 0.0 when either text has fewer than ``n``
    tokens, as in ``rouge-score``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SteeringTransferError(f"n must be an int >= 1 (1 for ROUGE-1), got {n!r}")
    c, r = tokenize(candidate), tokenize(reference)
    c_grams = Counter(tuple(c[i : i + n]) for i in range(len(c) - n + 1))
    r_grams = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
    if not c_grams or not r_grams:
        return 0.0
    overlap = sum((c_grams & r_grams).values())
    return _f1(overlap, sum(c_grams.values()), sum(r_grams.values()))
