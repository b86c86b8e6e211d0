"""The paper's autoencoder mapper, ``Linear(d_s, h) -> ReLU -> Linear(h, d_t)``.

Training follows the paper's recipe (AdamW, lr 1e-4, MSE, 10 % validation split) with early
stopping on the validation MSE and the best-validation weights kept. Rows are tokens: the split
and the batches are over token rows, not sequences as in the paper's trainer.

Standardisation (``standardize=True``, the default) is done *only during training* and then
folded into the weights, so the saved model is exactly the paper's architecture (same
``encoder.0.*`` / ``decoder.*`` state-dict keys) with no extra buffers. Why standardise at all:
residual streams have large mean components and a few "massive activation" dimensions, which
make Adam at lr 1e-4 slow and badly conditioned on raw inputs. Why it does not change the model
or the objective: inputs are standardised per dimension (absorbed exactly by the first linear
layer), targets are centred per dimension (absorbed by the output bias) and divided by one
scalar RMS (which rescales the MSE by a constant, so the minimiser is the paper's). Only the
AdamW weight decay then acts on standardised-space weights. Set ``standardize=False`` to train
on raw activations exactly as the paper does.

:class:`.gradient.GradientConfig` and :func:`.gradient.train_mse` (the trainer, shared with the
affine mapper's ``sgd`` solver) live in :mod:`.gradient`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from .base import FitReport, Mapper, register_mapper
from .gradient import GradientConfig, check_number, init_linear_, train_mse


@dataclass
class AutoencoderConfig(GradientConfig):
    """``hidden_dim`` defaults to the paper's ``int(sqrt(d_source * d_target))``."""

    hidden_dim: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden_dim is None:
            # isqrt == int(sqrt()) for all realistic widths, without float rounding at squares.
            self.hidden_dim = math.isqrt(self.source_dim * self.target_dim)
        check_number("hidden_dim", self.hidden_dim, low=1, low_inclusive=True, integer=True)


@register_mapper("autoencoder")
class AutoencoderMapper(Mapper):
    """``decoder(encoder(x))`` with ``encoder = Sequential(Linear(d_s, h), ReLU())``."""

    config_cls = AutoencoderConfig
    config: AutoencoderConfig

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config)
        hidden = int(config.hidden_dim or 1)
        # skip_init avoids the global RNG; weights come from config.seed in reset_parameters.
        self.encoder = nn.Sequential(
            nn.utils.skip_init(nn.Linear, config.source_dim, hidden), nn.ReLU()
        )
        self.decoder = nn.utils.skip_init(nn.Linear, hidden, config.target_dim)
        self.reset_parameters()

    @property
    def input_layer(self) -> nn.Linear:
        """The input layer ``encoder[0]`` (typed: ``Sequential`` indexing gives a Module)."""
        return cast(nn.Linear, self.encoder[0])

    def reset_parameters(self) -> None:
        generator = torch.Generator().manual_seed(self.config.seed)
        init_linear_(self.input_layer, generator)
        init_linear_(self.decoder, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def _fit(self, source: torch.Tensor, target: torch.Tensor, show_progress: bool) -> FitReport:
        # Fit from the seed's initialisation every time, so a fit is a function of config + data.
        self.reset_parameters()
        return train_mse(
            self, self.input_layer, self.decoder, source, target, self.config,
            show_progress=show_progress, desc="autoencoder",
        )
