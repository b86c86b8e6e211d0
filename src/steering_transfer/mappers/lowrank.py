"""Rank-r affine mapper by reduced-rank (ridge) regression, in closed form (not in the paper).

A low-rank map tests how many directions of the source stream the transfer actually needs, and
is much smaller than a full d_s x d_t matrix. The fit is the exact minimiser of
``mean ||W x + b - y||^2 + lam ||W||_F^2`` subject to ``rank(W) <= r``: take the ridge solution
``B`` and project it onto the top-r right singular directions of its fitted values. With ridge
those fitted values are taken on the ridge-augmented data (``[X; sqrt(lam) I]``), i.e. the
projection uses ``B^T (Cov x + lam I) B``; for ``ridge=0`` this is classic reduced-rank
regression (Izenman 1975; ridge version: Mukherjee & Zhu 2011).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from steering_transfer.errors import SteeringTransferError
from steering_transfer.validate import check_nonnegative

from .affine import compute_moments, ridge_penalty, ridge_solution
from .base import FitReport, Mapper, MapperConfig, register_mapper


@dataclass
class LowRankConfig(MapperConfig):
    """``rank`` of ``W`` (<= min(d_s, d_t)); ``ridge`` is relative, as in the affine mapper."""

    rank: int = 32
    ridge: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        max_rank = min(self.source_dim, self.target_dim)
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not (
            1 <= self.rank <= max_rank
        ):
            raise SteeringTransferError(
                f"rank must be an int in [1, {max_rank}] (min of source_dim and target_dim), "
                f"got {self.rank!r}"
            )
        check_nonnegative(self.ridge, param="ridge")


@register_mapper("lowrank")
class LowRankMapper(Mapper):
    """``y = up(down(x))``: ``down`` (r, d_s) without bias, ``up`` (d_t, r) with the bias."""

    config_cls = LowRankConfig
    config: LowRankConfig

    def __init__(self, config: LowRankConfig) -> None:
        super().__init__(config)
        self.down = nn.utils.skip_init(nn.Linear, config.source_dim, config.rank, bias=False)
        self.up = nn.utils.skip_init(nn.Linear, config.rank, config.target_dim)
        with torch.no_grad():  # closed-form only, so zeros (deterministic, no RNG) until fitted
            for param in self.parameters():
                param.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def _fit(self, source: torch.Tensor, target: torch.Tensor, show_progress: bool) -> FitReport:
        start = time.perf_counter()
        moments = compute_moments(source, target)
        coef = ridge_solution(moments, self.config.ridge)  # B: (d_s, d_t)
        assert moments.xx is not None
        gram = moments.xx.clone()
        gram.diagonal().add_(ridge_penalty(moments, self.config.ridge))
        fitted_gram = coef.T @ gram @ coef  # (d_t, d_t) = Yhat^T Yhat / n
        fitted_gram = (fitted_gram + fitted_gram.T) / 2  # exact symmetry for eigh
        _, vecs = torch.linalg.eigh(fitted_gram)  # ascending eigenvalues
        top = vecs[:, -self.config.rank:].flip(-1)  # (d_t, r), largest first
        down = top.T @ coef.T  # (r, d_s)
        bias = moments.mean_y - top @ (down @ moments.mean_x)
        with torch.no_grad():
            self.down.weight.copy_(down)
            self.up.weight.copy_(top)
            self.up.bias.copy_(bias)
        return FitReport(n_train=moments.n, n_val=0, seconds=time.perf_counter() - start)
