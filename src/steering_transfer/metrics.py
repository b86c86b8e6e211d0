"""Reconstruction metrics over token activations (paper App. D) and binomial rates with CIs.

Activations are ``(n, d)`` with an optional ``(n,)`` mask, or ``(batch, seq, d)`` with an
optional ``(batch, seq)`` mask (e.g. the attention mask, so padding is excluded). In general
the mask has the activations' shape without the last (feature) dimension. Sums are taken in
float64 so metrics over millions of tokens do not drift; results are 0-dim float64 tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from steering_transfer.errors import SteeringTransferError

__all__ = ["Rate", "cosine", "fvu", "mse", "wilson_interval"]


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


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % for the default ``z``).

    Preferred over the normal (Wald) interval because steering success rates sit near 0 or 1
    on small prompt sets, where Wald collapses to zero width or leaves [0, 1].
    """
    for name, value in (("successes", successes), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SteeringTransferError(
                f"{name} must be an int, got {type(value).__name__} {value!r}"
            )
    if n <= 0:
        raise SteeringTransferError(f"n must be a positive number of trials, got {n}")
    if not 0 <= successes <= n:
        raise SteeringTransferError(f"successes must be in [0, n={n}], got {successes}")
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not z > 0 or math.isinf(z):
        raise SteeringTransferError(f"z must be a positive finite number, got {z!r}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At 0/n and n/n the bound is exactly 0 or 1; floating point lands a hair inside, which
    # would put the point estimate outside its own interval (and fail baseline checks).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class Rate:
    """A success rate with its Wilson 95 % interval, e.g. ``0.84 [0.71, 0.92] (n=50)``."""

    successes: int
    n: int

    def __post_init__(self) -> None:
        wilson_interval(self.successes, self.n)  # validates successes and n

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
