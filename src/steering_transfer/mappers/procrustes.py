"""Scaled orthogonal Procrustes mapper (not in the paper): a rotation between centred spaces.

``y = mean_t + (scale_t / scale_s) * R (x - mean_s)`` with ``R`` (d_t, d_s) semi-orthogonal
(orthonormal columns when d_t >= d_s, orthonormal rows otherwise), solved in closed form from
the SVD of the cross-covariance ``Cov(y, x) = U S V^T`` as ``R = U V^T``.

Why a scalar RMS scale per side rather than per-dimension standard deviations: a single scalar
keeps the map conformal (it preserves angles, so cosine structure and the relative geometry of
steering directions survive), and it does not inflate near-constant, noisy dimensions the way
per-dimension whitening does. ``scale = sqrt(mean ||x - mean||^2)`` is the RMS norm of the
centred token activations, so mapped activations get the target's typical norm. This is not the
least-squares optimal scale (``tr(S) / ||X_c||^2``), which shrinks towards zero when the spaces
are poorly aligned; matching norms is what an intervention added to the target stream needs.
With d_t < d_s the rotation drops the source directions outside its row space, so the output
norm is then smaller than the target's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from steering_transfer.errors import SteeringTransferError

from .affine import compute_moments
from .base import FitReport, Mapper, MapperConfig, register_mapper


@dataclass
class ProcrustesConfig(MapperConfig):
    """No hyperparameters: the fit is closed form and deterministic."""


@register_mapper("procrustes")
class ProcrustesMapper(Mapper):
    """Centre, rescale to unit RMS norm, rotate, rescale to the target's RMS norm, un-centre."""

    config_cls = ProcrustesConfig

    source_mean: torch.Tensor
    target_mean: torch.Tensor
    source_scale: torch.Tensor
    target_scale: torch.Tensor
    rotation: torch.Tensor

    def __init__(self, config: ProcrustesConfig) -> None:
        super().__init__(config)
        d_s, d_t = config.source_dim, config.target_dim
        self.register_buffer("source_mean", torch.zeros(d_s))
        self.register_buffer("target_mean", torch.zeros(d_t))
        self.register_buffer("source_scale", torch.ones(()))
        self.register_buffer("target_scale", torch.ones(()))
        # Unfitted: the canonical semi-orthogonal embedding/truncation.
        self.register_buffer("rotation", torch.eye(d_t, d_s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = self.target_scale / self.source_scale
        return torch.addmm(
            self.target_mean, (x - self.source_mean).reshape(-1, self.source_dim),
            self.rotation.T * gain,
        ).reshape(*x.shape[:-1], self.target_dim)

    def _fit(self, source: torch.Tensor, target: torch.Tensor, show_progress: bool) -> FitReport:
        start = time.perf_counter()
        moments = compute_moments(source, target, need_xx=False)
        if moments.var_x <= 0:
            raise SteeringTransferError(
                "source has zero variance (all rows identical); a rotation cannot be fitted"
            )
        # Scaling both sides by scalars does not change the SVD's singular vectors, so the
        # rotation is solved on the raw cross-covariance; the scales only enter the output.
        u, _, vh = torch.linalg.svd(moments.xy.T, full_matrices=False)  # (d_t, d_s)
        with torch.no_grad():
            self.rotation.copy_(u @ vh)
            self.source_mean.copy_(moments.mean_x)
            self.target_mean.copy_(moments.mean_y)
            self.source_scale.fill_(moments.var_x**0.5)
            self.target_scale.fill_(moments.var_y**0.5)
        return FitReport(n_train=moments.n, n_val=0, seconds=time.perf_counter() - start)
