"""Affine mapper ``y = W x + b``: the paper's "LinearMapping", fitted in closed form by default.

The closed form is exact least squares (optionally ridge), so it is both faster and better than
the paper's AdamW training for this architecture; the ``sgd`` solver is kept to compare against
that training recipe. The streaming moment helpers here are shared by the other closed-form
mappers (:mod:`.lowrank`, :mod:`.procrustes`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from steering_transfer.errors import SteeringTransferError
from steering_transfer.validate import check_finite, check_nonnegative

from .base import FitReport, FitSplit, Mapper, register_mapper
from .gradient import GradientConfig, init_linear_, train_mse

logger = logging.getLogger(__name__)

#: Rows per chunk when streaming moments; 8192 x 1216 float64 is ~80 MB of scratch.
CHUNK_ROWS = 8192
#: Cholesky is abandoned for lstsq when ``min(diag L) / max(diag L)`` falls below this,
#: i.e. when the (regularised) covariance has condition number above ~1e12.
_CHOLESKY_MIN_DIAG_RATIO = 1e-6
#: Relative singular-value cutoff of the lstsq fallback (on the covariance, so ~1e-6 on the data).
_LSTSQ_RCOND = 1e-12


# ---------------------------------------------------------------------------- streaming moments


@dataclass
class Moments:
    """Centred first and second moments of paired activations, all float64.

    ``xx`` and ``xy`` are divided by ``n`` (biased covariances), so they stay O(1) for any
    number of tokens and ridge strengths do not depend on ``n``.
    """

    n: int
    mean_x: torch.Tensor  # (d_s,)
    mean_y: torch.Tensor  # (d_t,)
    xx: torch.Tensor | None  # (d_s, d_s), None when not requested
    xy: torch.Tensor  # (d_s, d_t)
    var_x: float  # mean squared norm of centred source rows = trace(xx)
    var_y: float  # mean squared norm of centred target rows


def _row_chunks(n: int, chunk_rows: int) -> Iterator[slice]:
    for start in range(0, n, chunk_rows):
        yield slice(start, min(start + chunk_rows, n))


def compute_moments(
    source: torch.Tensor,
    target: torch.Tensor,
    *,
    need_xx: bool = True,
    chunk_rows: int = CHUNK_ROWS,
) -> Moments:
    """Two-pass (mean, then centred products) float64 moments, streamed in row chunks.

    Centring before the products matters: residual streams have large mean components, and the
    one-pass ``E[xx^T] - mu mu^T`` formula loses most of its digits to cancellation. Chunking
    keeps the float64 scratch bounded (100k x 576 would be 460 MB as one float64 copy). Each
    chunk is centred into one reused ``[x | y]`` buffer so a single GEMM per block yields both
    ``xx`` and ``xy``; the lower-left block of the symmetric ``xx`` is skipped (~10 % fewer
    flops) and filled in by transposition at the end.
    """
    n, d_s = source.shape
    d_t = target.shape[1]
    f64 = torch.float64
    dev = source.device
    sum_x = torch.zeros(d_s, dtype=f64, device=dev)
    sum_y = torch.zeros(d_t, dtype=f64, device=dev)
    for rows in _row_chunks(n, chunk_rows):
        sum_x += source[rows].sum(0, dtype=f64)
        sum_y += target[rows].to(dev).sum(0, dtype=f64)
    mean_x, mean_y = sum_x / n, sum_y / n

    half = d_s // 2
    buf = torch.empty(min(chunk_rows, n), d_s + d_t, dtype=f64, device=dev)
    # Rows index source dims; columns are [x | y] (or just y when xx is not needed).
    acc = torch.zeros(d_s, d_s + d_t if need_xx else d_t, dtype=f64, device=dev)
    ss_x = torch.zeros((), dtype=f64, device=dev)
    ss_y = torch.zeros((), dtype=f64, device=dev)
    for rows in _row_chunks(n, chunk_rows):
        block = buf[: rows.stop - rows.start]
        xc, yc = block[:, :d_s], block[:, d_s:]
        torch.sub(source[rows], mean_x, out=xc)
        torch.sub(target[rows].to(dev), mean_y, out=yc)
        if need_xx:
            acc[:half].addmm_(xc[:, :half].T, block)
            acc[half:, half:].addmm_(xc[:, half:].T, block[:, half:])
        else:
            acc.addmm_(xc.T, yc)
        ss_x += torch.linalg.vector_norm(xc).square()
        ss_y += torch.linalg.vector_norm(yc).square()
    acc /= n
    xx: torch.Tensor | None = None
    if need_xx:
        xx = acc[:, :d_s]
        xx[half:, :half] = xx[:half, half:].T
        xy = acc[:, d_s:]
    else:
        xy = acc
    return Moments(n, mean_x, mean_y, xx, xy, float(ss_x) / n, float(ss_y) / n)


def solve_spd(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``matrix @ X = rhs`` for a symmetric PSD ``matrix`` (float64).

    Cholesky is fast and accurate when the matrix is well conditioned. Residual streams often
    are not (constant or duplicated dimensions, massive-activation outliers), and then Cholesky
    either fails or amplifies noise; the fallback is the minimum-norm least-squares solution
    (SVD-based ``gelsd``), which simply ignores directions the data never varies in.
    """
    chol, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        diag = chol.diagonal()
        if float(diag.min()) > _CHOLESKY_MIN_DIAG_RATIO * float(diag.max()):
            return torch.cholesky_solve(rhs, chol)
    logger.info("covariance is ill-conditioned; using minimum-norm lstsq instead of Cholesky")
    # gelsd is CPU-only; the system is only d x d, so solving it on the CPU is cheap.
    solution = torch.linalg.lstsq(
        matrix.cpu(), rhs.cpu(), rcond=_LSTSQ_RCOND, driver="gelsd"
    ).solution
    return solution.to(matrix.device)


def ridge_penalty(moments: Moments, ridge: float) -> float:
    """Absolute diagonal loading for a relative ``ridge``.

    ``ridge`` is measured in units of the average source variance (``trace(Cov x) / d_s``), so
    the same value shrinks equally for a model whose residual norm is 5 or 500.
    """
    d_s = moments.mean_x.shape[0]
    return ridge * moments.var_x / d_s


def ridge_solution(moments: Moments, ridge: float) -> torch.Tensor:
    """Ridge coefficients ``B`` (d_s, d_t) of centred data: ``(Cov x + lam I) B = Cov(x, y)``.

    Centring means the bias is never penalised; it is recovered as ``mean_y - B^T mean_x``.
    """
    if moments.xx is None:
        raise SteeringTransferError("internal: ridge_solution needs moments with need_xx=True")
    gram = moments.xx.clone()
    gram.diagonal().add_(ridge_penalty(moments, ridge))
    return solve_spd(gram, moments.xy)


# ---------------------------------------------------------------------------------- the mapper


@dataclass
class AffineConfig(GradientConfig):
    """``ridge`` (relative, closed form only) and the solver; SGD fields apply to ``sgd`` only."""

    ridge: float = 0.0
    solver: Literal["closed_form", "sgd"] = "closed_form"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.solver not in ("closed_form", "sgd"):
            raise SteeringTransferError(
                f"solver must be 'closed_form' or 'sgd', got {self.solver!r}"
            )
        check_nonnegative(self.ridge, param="ridge")
        if self.solver == "sgd" and self.ridge != 0:
            raise SteeringTransferError(
                "ridge only applies to solver='closed_form'; for solver='sgd' use weight_decay"
            )


@register_mapper("affine")
class AffineMapper(Mapper):
    """``y = W x + b`` with ``W`` of shape (d_target, d_source)."""

    config_cls = AffineConfig
    config: AffineConfig

    def __init__(self, config: AffineConfig) -> None:
        super().__init__(config)
        # skip_init: build without consuming the global RNG; we initialise from config.seed.
        self.linear = nn.utils.skip_init(nn.Linear, config.source_dim, config.target_dim)
        self.reset_parameters()

    @classmethod
    def from_weights(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None, **hyperparameters: Any
    ) -> AffineMapper:
        """A mapper computing ``weight @ x + bias`` exactly, with no fit (a fixed map).

        ``weight`` is ``(d_target, d_source)``; ``bias`` defaults to zeros. Other config fields
        (e.g. ``seed``) go in ``hyperparameters``. Values are copied into the float32
        parameters, so e.g. an identity stays exact.
        """
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight)
            raise SteeringTransferError(
                f"weight must be a 2-D tensor (d_target, d_source), got {shape}"
            )
        target_dim, source_dim = (int(n) for n in weight.shape)
        if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (target_dim,)):
            shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias)
            raise SteeringTransferError(f"bias must have shape ({target_dim},), got {shape}")
        check_finite(weight, param="weight")
        if bias is not None:
            check_finite(bias, param="bias")
        config = AffineConfig.from_dict(
            {"source_dim": source_dim, "target_dim": target_dim, **hyperparameters}
        )
        mapper = cls(config)
        with torch.no_grad():
            mapper.linear.weight.copy_(weight)
            if bias is None:
                mapper.linear.bias.zero_()
            else:
                mapper.linear.bias.copy_(bias)
        return mapper

    @classmethod
    def identity(cls, dim: int, **hyperparameters: Any) -> AffineMapper:
        """``y = x`` on a ``dim``-wide stream: the "no mapping" reference (e.g. a model mapped
        onto itself in the safety switch), built without writing into ``linear`` by hand."""
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise SteeringTransferError(f"dim must be a positive int, got {dim!r}")
        return cls.from_weights(torch.eye(dim), None, **hyperparameters)

    def reset_parameters(self) -> None:
        """PyTorch-default-style uniform init drawn from a generator seeded by ``config.seed``."""
        generator = torch.Generator().manual_seed(self.config.seed)
        init_linear_(self.linear, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def _fit_split(
        self, source: torch.Tensor, target: torch.Tensor, split: FitSplit, show_progress: bool
    ) -> FitReport:
        if self.config.solver == "sgd":  # the autoencoder's trainer, same split and stopping
            self.reset_parameters()
            return train_mse(
                self, self.linear, self.linear, source, target, self.config, split=split,
                show_progress=show_progress, desc="affine (sgd)",
            )
        return super()._fit_split(source, target, split, show_progress)

    def _fit(self, source: torch.Tensor, target: torch.Tensor, show_progress: bool) -> FitReport:
        if self.config.solver == "sgd":
            return self._fit_split(
                source, target, FitSplit.draw(source.shape[0], 0.0, self.config.seed),
                show_progress,
            )
        start = time.perf_counter()
        moments = compute_moments(source, target)
        coef = ridge_solution(moments, self.config.ridge)  # (d_s, d_t)
        weight = coef.T
        bias = moments.mean_y - weight @ moments.mean_x
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        return FitReport(n_train=moments.n, n_val=0, seconds=time.perf_counter() - start)
