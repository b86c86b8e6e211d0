"""Reference "mappers" that must fail every bar (not registered: the matrix never runs them).

Why: a bar is only evidence if the weakest possible mapper fails it. :class:`MeanOutputMapper`
ignores its input and returns the target's mean activation, so its mapped steering vector is
zero and replacing a layer with its output is mean ablation; tests register it for one test
(``register_mapper("mean_output")(MeanOutputMapper)``) and check that every verdict, fidelity
and safety-switch bar rejects it.
"""

from __future__ import annotations

import torch

from .base import FitReport, Mapper, MapperConfig


class MeanOutputMapper(Mapper):
    """Maps every activation to the target's mean activation over the fit rows."""

    target_mean: torch.Tensor

    def __init__(self, config: MapperConfig) -> None:
        super().__init__(config)
        self.register_buffer("target_mean", torch.zeros(config.target_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target_mean.expand(*x.shape[:-1], self.target_dim).clone()

    def _fit(self, source: torch.Tensor, target: torch.Tensor, show_progress: bool) -> FitReport:
        with torch.no_grad():
            self.target_mean.copy_(target.double().mean(0).float())
        return FitReport(n_train=len(source), n_val=0, seconds=0.0)
