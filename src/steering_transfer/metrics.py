"""Reconstruction metrics over token activations (paper App. D) and binomial rates with CIs.

Activations are ``(n, d)`` with an optional ``(n,)`` mask, or ``(batch, seq, d)`` with an
optional ``(batch, seq)`` mask (e.g. the attention mask, so padding is excluded). In general
the mask has the activations' shape without the last (feature) dimension. Sums are taken in
float64 so metrics over millions of tokens do not drift; results are 0-dim float64 tensors.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from steering_transfer.errors import SteeringTransferError

__all__ = ["PairedTest", "Rate", "cosine", "fvu", "mse", "paired_exact_test", "wilson_interval"]


def _prepare(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate shapes and return float64 ``(n_selected, d)`` rows plus the row count."""
    for name, tensor in (("pred", pred), ("target", target)):
        if not isinstance(tensor, torch.Tensor):
            raise SteeringTransferError(
                f"{name} must be a torch.Tensor, got {type(tensor).__name__}"
            )
        if tensor.ndim < 1 or tensor.shape[-1] == 0:
            raise SteeringTransferError(
                f"{name} must have a non-empty feature (last) dimension, got shape "
                f"{tuple(tensor.shape)}"
            )
    if pred.shape != target.shape:
        raise SteeringTransferError(
            f"pred has shape {tuple(pred.shape)} but target has shape {tuple(target.shape)}; "
            "they must match (map the source activations to the target width first)"
        )
    d = pred.shape[-1]
    pred64 = pred.reshape(-1, d).to(torch.float64)
    target64 = target.reshape(-1, d).to(torch.float64)
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise SteeringTransferError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if tuple(mask.shape) != tuple(pred.shape[:-1]):
            raise SteeringTransferError(
                f"mask has shape {tuple(mask.shape)} but activations have shape "
                f"{tuple(pred.shape)}; the mask must have shape {tuple(pred.shape[:-1])} "
                "(the activations' shape without the feature dimension)"
            )
        if mask.dtype != torch.bool:
            if bool(((mask != 0) & (mask != 1)).any()):
                raise SteeringTransferError(
                    "mask must be boolean or contain only 0 and 1 (e.g. an attention mask)"
                )
            mask = mask != 0
        keep = mask.reshape(-1).to(pred64.device)
        pred64, target64 = pred64[keep], target64[keep]
    n = pred64.shape[0]
    if n == 0:
        raise SteeringTransferError(
            "no tokens to score: the activations are empty or the mask selects nothing"
        )
    return pred64, target64, torch.tensor(float(n), dtype=torch.float64)


def mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Paper's masked MSE: ``Σ m ||ŷ - y||² / (Σ m · d)`` (mean over tokens and features)."""
    p, t, n = _prepare(pred, target, mask)
    return (p - t).square().sum() / (n * p.shape[1])


def cosine(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean per-token cosine similarity ``Σ m cos(ŷ, y) / Σ m`` (a similarity: higher is better).

    A zero vector has cosine 0 with anything (PyTorch's eps convention), rather than NaN.
    """
    p, t, n = _prepare(pred, target, mask)
    return F.cosine_similarity(p, t, dim=-1).sum() / n


def fvu(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scalar_mean: bool = False,
) -> torch.Tensor:
    """Fraction of variance unexplained ``Σ m ||ŷ - y||² / Σ m ||y - ȳ||²`` (0 is perfect).

    By default ``ȳ`` is the per-dimension mean of the masked target tokens, the standard
    definition (1 - R², so predicting the per-dimension mean scores exactly 1). The authors'
    code instead uses one scalar mean over all masked elements (``scalar_mean=True``); its
    denominator also counts the spread between dimensions' means, so it is larger and the FVU
    smaller (flattering) whenever the target has a non-constant mean vector - residual streams
    do. Use ``scalar_mean=True`` only to compare with the paper's numbers.
    """
    p, t, _ = _prepare(pred, target, mask)
    centre = t.mean() if scalar_mean else t.mean(dim=0)
    denom = (t - centre).square().sum()
    if float(denom) == 0.0:
        raise SteeringTransferError(
            "target has zero variance over the selected tokens, so FVU is undefined; "
            "score on more (or more varied) tokens"
        )
    return (p - t).square().sum() / denom


# ------------------------------------------------------------------------------ binomial rates


def _check_counts(successes: int, n: int) -> None:
    for name, value in (("successes", successes), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SteeringTransferError(
                f"{name} must be an int, got {type(value).__name__} {value!r}"
            )
    if n <= 0:
        raise SteeringTransferError(f"n must be a positive number of trials, got {n}")
    if not 0 <= successes <= n:
        raise SteeringTransferError(f"successes must be in [0, n={n}], got {successes}")


def _confidence_level(z: float) -> float:
    """The two-sided confidence level of ``±z`` standard errors, as scipy wants it."""
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not z > 0 or math.isinf(z):
        raise SteeringTransferError(f"z must be a positive finite number, got {z!r}")
    level = float(stats.norm.cdf(z) - stats.norm.sf(z))
    if level >= 1.0:  # z above ~8.2: the level rounds to 1 and scipy's interval is NaN
        raise SteeringTransferError(
            f"z={z!r} is too large: its confidence level rounds to 1 in floating point "
            "(use z <= 8)"
        )
    return level


@functools.lru_cache(maxsize=4096)
def _wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    # Cached: Rate.low, Rate.high and to_dict each ask, and binomtest also computes a p-value.
    ci = stats.binomtest(successes, n).proportion_ci(
        confidence_level=_confidence_level(z), method="wilson"
    )
    # scipy already returns exact 0 at 0/n and 1 at n/n; pinned here because a bound a hair
    # inside would put the point estimate outside its own interval (and fail baseline checks).
    low = 0.0 if successes == 0 else max(0.0, float(ci.low))
    high = 1.0 if successes == n else min(1.0, float(ci.high))
    return low, high


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % for the default ``z``).

    Preferred over the normal (Wald) interval because steering success rates sit near 0 or 1
    on small prompt sets, where Wald collapses to zero width or leaves [0, 1]. Computed by
    ``scipy.stats.binomtest(...).proportion_ci(method="wilson")`` at the two-sided level of
    ``z`` (``z=1.96`` is the level 0.950004).
    """
    _check_counts(successes, n)
    _confidence_level(z)  # validates z before the cache sees it
    return _wilson(successes, n, float(z))


@dataclass(frozen=True)
class Rate:
    """A success rate with its Wilson 95 % interval, e.g. ``0.84 [0.71, 0.92] (n=50)``."""

    successes: int
    n: int

    def __post_init__(self) -> None:
        _check_counts(self.successes, self.n)

    @classmethod
    def pooled(cls, rates: Sequence[Rate]) -> Rate:
        """One rate over several prompt sets (successes and trials summed), e.g. over seeds."""
        if isinstance(rates, (Rate, str)) or not isinstance(rates, Sequence):
            raise SteeringTransferError(
                f"rates must be a sequence of Rate, got {type(rates).__name__}"
            )
        if not rates:
            raise SteeringTransferError("rates is empty; pooling needs at least one Rate")
        bad = [i for i, r in enumerate(rates) if not isinstance(r, Rate)]
        if bad:
            raise SteeringTransferError(
                f"rates must hold only Rate objects; item {bad[0]} is "
                f"{type(rates[bad[0]]).__name__}"
            )
        return cls(sum(r.successes for r in rates), sum(r.n for r in rates))

    @property
    def rate(self) -> float:
        return self.successes / self.n

    @property
    def low(self) -> float:
        return wilson_interval(self.successes, self.n)[0]

    @property
    def high(self) -> float:
        return wilson_interval(self.successes, self.n)[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "successes": self.successes,
            "n": self.n,
            "rate": self.rate,
            "low": self.low,
            "high": self.high,
        }

    def __str__(self) -> str:
        return f"{self.rate:.2f} [{self.low:.2f}, {self.high:.2f}] (n={self.n})"


# ------------------------------------------------------------------------- paired comparisons

_ALTERNATIVES = ("greater", "less", "two-sided")


@dataclass(frozen=True)
class PairedTest:
    """Exact McNemar test of two conditions scored on the same prompts.

    ``x_only``/``y_only`` count prompts where only x (only y) succeeded; ``n`` is the number of
    prompts. ``alternative="greater"`` tests whether x succeeds more often than y.
    """

    x_only: int
    y_only: int
    n: int
    p_value: float
    alternative: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_outcomes(name: str, values: Sequence[bool]) -> list[bool]:
    if isinstance(values, np.ndarray) and values.ndim == 1:
        values = values.tolist()  # a bool array becomes Python bools; anything else fails below
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise SteeringTransferError(
            f"{name} must be a sequence of bools (one per prompt), got {type(values).__name__}"
        )
    for i, v in enumerate(values):
        if not isinstance(v, (bool, np.bool_)):
            raise SteeringTransferError(
                f"{name}[{i}] must be a bool (success on that prompt), got "
                f"{type(v).__name__} {v!r}"
            )
    return [bool(v) for v in values]


def paired_exact_test(
    x: Sequence[bool], y: Sequence[bool], alternative: str = "greater"
) -> PairedTest:
    """Exact McNemar test: does condition x succeed more often than y on the same prompts?

    Two rates on the same prompts are not independent, so comparing their Wilson intervals
    wastes power; only the discordant prompts carry information. Under the null each of them
    is equally likely to favour x or y, so the p-value is
    ``scipy.stats.binomtest(x_only, x_only + y_only, 0.5, alternative=...)``; with no
    discordant prompt there is no evidence either way and ``p_value`` is 1.
    """
    if not isinstance(alternative, str) or alternative not in _ALTERNATIVES:
        raise SteeringTransferError(
            f"alternative must be one of {', '.join(_ALTERNATIVES)}, got {alternative!r}"
        )
    xs, ys = _check_outcomes("x", x), _check_outcomes("y", y)
    if len(xs) != len(ys):
        raise SteeringTransferError(
            f"x has {len(xs)} outcomes but y has {len(ys)}; a paired test needs both scored "
            "on the same prompts"
        )
    if not xs:
        raise SteeringTransferError("x and y are empty; a paired test needs at least one prompt")
    x_only = sum(a and not b for a, b in zip(xs, ys, strict=True))
    y_only = sum(b and not a for a, b in zip(xs, ys, strict=True))
    discordant = x_only + y_only
    p = 1.0 if discordant == 0 else float(
        stats.binomtest(x_only, discordant, 0.5, alternative=alternative).pvalue
    )
    return PairedTest(x_only=x_only, y_only=y_only, n=len(xs), p_value=p, alternative=alternative)
