"""Pairwise win rates (the paper's MvA and TvS) with Wilson intervals; ties are excluded."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SteeringTransferError
from ..metrics import Rate

__all__ = ["WinRate", "mva", "tvs", "win_rate"]

_DERIVED = frozenset({"rate", "low", "high", "wins", "losses"})


@dataclass(frozen=True)
class WinRate(Rate):
    """Wins over decided pairs (``successes`` = wins, ``n`` = wins + losses), plus the ties.

    A :class:`~steering_transfer.metrics.Rate`, so it prints and serialises like the other
    rates; ties are kept alongside because a high tie count means the judge cannot tell the
    two systems apart, which the rate alone would hide.
    """

    ties: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.ties, bool) or not isinstance(self.ties, int) or self.ties < 0:
            raise SteeringTransferError(f"ties must be an int >= 0, got {self.ties!r}")

    @property
    def wins(self) -> int:
        return self.successes

    @property
    def losses(self) -> int:
        return self.n - self.successes

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "ties": self.ties}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WinRate:
        """Inverse of :meth:`to_dict`; derived keys (rate, low, high) are recomputed."""
        unknown = sorted(set(data) - {"successes", "n", "ties"} - _DERIVED)
        if unknown:
            raise SteeringTransferError(
                f"unknown WinRate fields {unknown}; known fields: ['n', 'successes', 'ties']"
            )
        return cls(successes=data["successes"], n=data["n"], ties=data.get("ties", 0))

    def __str__(self) -> str:
        return f"{super().__str__()[:-1]}, {self.ties} ties excluded)"


def _floats(values: Sequence[float] | torch.Tensor, param: str) -> list[float]:
    if isinstance(values, torch.Tensor):
        if values.ndim != 1:
            raise SteeringTransferError(
                f"{param} must be 1-D (one similarity per prompt), got shape {tuple(values.shape)}"
            )
        out = [float(v) for v in values.tolist()]
    elif isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise SteeringTransferError(
            f"{param} must be a sequence of floats, got {type(values).__name__}"
        )
    else:
        try:
            out = [float(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise SteeringTransferError(f"{param} must hold only numbers ({exc})") from exc
    if not out:
        raise SteeringTransferError(f"{param} is empty; pass one similarity per prompt")
    bad = [i for i, v in enumerate(out) if not math.isfinite(v)]
    if bad:
        raise SteeringTransferError(
            f"{param}[{bad[0]}] is {out[bad[0]]}; NaN/inf similarities cannot be compared"
        )
    return out


def win_rate(
    sim_a: Sequence[float] | torch.Tensor,
    sim_b: Sequence[float] | torch.Tensor,
    *,
    tie_tolerance: float = 0.0,
) -> WinRate:
    """Share of prompts where ``sim_a[i] > sim_b[i]``, among prompts that are not ties.

    Ties (``|a - b| <= tie_tolerance``) are excluded rather than counted half, so the result
    stays an integer binomial count with a valid Wilson interval; their number is reported.
    Use a small tolerance (e.g. 1e-6) for float32 embedding cosines, where batching noise would
    otherwise turn true ties into random wins and losses. Raises if every pair is a tie, since
    the win rate is then undefined (neither 0 nor 0.5).
    """
    a, b = _floats(sim_a, "sim_a"), _floats(sim_b, "sim_b")
    if len(a) != len(b):
        raise SteeringTransferError(
            f"sim_a has {len(a)} values but sim_b has {len(b)}; pass one pair per prompt"
        )
    if (
        isinstance(tie_tolerance, bool)
        or not isinstance(tie_tolerance, (int, float))
        or not math.isfinite(tie_tolerance)
        or tie_tolerance < 0
    ):
        raise SteeringTransferError(
            f"tie_tolerance must be a finite float >= 0, got {tie_tolerance!r}"
        )
    wins = losses = ties = 0
    for x, y in zip(a, b, strict=True):
        if abs(x - y) <= tie_tolerance:
            ties += 1
        elif x > y:
            wins += 1
        else:
            losses += 1
    if wins + losses == 0:
        raise SteeringTransferError(
            f"all {ties} pairs are ties, so the win rate is undefined; the judge cannot tell "
            "the two systems apart on these prompts"
        )
    return WinRate(successes=wins, n=wins + losses, ties=ties)


def mva(
    sim_mapped_target: Sequence[float] | torch.Tensor,
    sim_ablated_target: Sequence[float] | torch.Tensor,
    *,
    tie_tolerance: float = 0.0,
) -> WinRate:
    """MvA: how often the mapped replacement beats mean ablation at matching the target.

    Win when sim(mapped, target) > sim(mean-ablated, target) for the same prompt.
    """
    return win_rate(sim_mapped_target, sim_ablated_target, tie_tolerance=tie_tolerance)


def tvs(
    sim_mapped_target: Sequence[float] | torch.Tensor,
    sim_mapped_source: Sequence[float] | torch.Tensor,
    *,
    tie_tolerance: float = 0.0,
) -> WinRate:
    """TvS: how often the mapped completion is closer to the target's than to the source's.

    Win when sim(mapped, target) > sim(mapped, source) for the same prompt, i.e. the mapped
    activations behave like the target model rather than just copying the source model.
    """
    return win_rate(sim_mapped_target, sim_mapped_source, tie_tolerance=tie_tolerance)
