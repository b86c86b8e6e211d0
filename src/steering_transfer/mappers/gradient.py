"""Gradient training shared by the mappers fitted by AdamW on the MSE.

The paper trains its mappers with AdamW (lr 1e-4, MSE, 10 % validation split); here that recipe
lives in :func:`train_mse`, with early stopping on the validation MSE, the best-validation
weights kept and training-time standardisation folded back into the weights (see
:mod:`.autoencoder` for why standardising does not change the model or the objective). It is
used by the autoencoder mapper and by the affine mapper's ``sgd`` solver, so it sits in its own
module rather than inside either architecture. All randomness comes from generators seeded by
``config.seed``; the global RNG is never touched.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from steering_transfer.errors import SteeringTransferError

from .base import FitReport, FitSplit, MapperConfig

#: Rows per forward pass when computing the validation loss and the standardisation stats.
_EVAL_ROWS = 8192
#: A fit is called diverged when the loss of the weights it would return exceeds this many
#: times the larger of the loss before training and the target variance (the loss of
#: predicting the mean). Converging fits end far below both; the diverging fits this catches
#: (a too-large lr) end many orders of magnitude above, with finite losses.
DIVERGENCE_FACTOR = 1e3


def check_number(name: str, value: object, *, low: float, high: float = math.inf,
                  low_inclusive: bool = False, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    ok = (
        not isinstance(value, bool)
        and isinstance(value, kind)
        and math.isfinite(value)
        and (value >= low if low_inclusive else value > low)
        and value < high
    )
    if not ok:
        bracket = "[" if low_inclusive else "("
        type_name = "an int" if integer else "a number"
        raise SteeringTransferError(
            f"{name} must be {type_name} in {bracket}{low}, {high}), got {value!r}"
        )


@dataclass
class GradientConfig(MapperConfig):
    """Settings for mappers trained by AdamW on the MSE (token rows are the unit of batching)."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 512
    max_epochs: int = 50
    patience: int = 3
    standardize: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("lr", self.lr, low=0.0)
        check_number("weight_decay", self.weight_decay, low=0.0, low_inclusive=True)
        check_number("batch_size", self.batch_size, low=1, low_inclusive=True, integer=True)
        check_number("max_epochs", self.max_epochs, low=1, low_inclusive=True, integer=True)
        check_number("patience", self.patience, low=1, low_inclusive=True, integer=True)
        if not isinstance(self.standardize, bool):
            raise SteeringTransferError(f"standardize must be a bool, got {self.standardize!r}")


def init_linear_(linear: nn.Linear, generator: torch.Generator) -> None:
    """PyTorch's default ``nn.Linear`` distribution, U(±1/sqrt(fan_in)), from a local generator.

    ``nn.Linear``'s own init draws from the global RNG; we never touch global state so that
    fitting a mapper does not perturb the caller's random streams (and vice versa).
    """
    bound = 1.0 / math.sqrt(linear.in_features)
    with torch.no_grad():
        weight = torch.empty(linear.weight.shape).uniform_(-bound, bound, generator=generator)
        linear.weight.copy_(weight)
        if linear.bias is not None:
            bias = torch.empty(linear.bias.shape).uniform_(-bound, bound, generator=generator)
            linear.bias.copy_(bias)


@dataclass
class _Standardizer:
    """Training-time affine normalisation; float64 stats, applied in the model's dtype."""

    mean_x: torch.Tensor
    std_x: torch.Tensor
    mean_y: torch.Tensor
    scale_y: float

    @classmethod
    def from_rows(
        cls, source: torch.Tensor, target: torch.Tensor, rows: torch.Tensor
    ) -> _Standardizer:
        f64 = torch.float64
        n = rows.numel()
        chunks = rows.split(_EVAL_ROWS)
        # Python's sum (0 + first chunk + ...), kept as is: its rounding is part of every fit.
        sum_x = cast(torch.Tensor, sum(source[c.to(source.device)].sum(0, dtype=f64)
                                       for c in chunks))
        sum_y = cast(torch.Tensor, sum(target[c.to(target.device)].sum(0, dtype=f64)
                                       for c in chunks))
        mean_x, mean_y = sum_x / n, sum_y / n
        ss_x = sum((source[c.to(source.device)].to(f64) - mean_x).square().sum(0) for c in chunks)
        ss_y = sum(float((target[c.to(target.device)].to(f64) - mean_y).square().sum())
                   for c in chunks)
        std_x = torch.as_tensor(ss_x / n).sqrt()
        # Constant or near-constant input dims keep unit scale instead of being blown up.
        std_x = torch.where(std_x > 1e-6 * std_x.max(), std_x, torch.ones_like(std_x))
        scale_y = math.sqrt(ss_y / (n * target.shape[1]))
        return cls(mean_x, std_x, mean_y, scale_y if scale_y > 0 else 1.0)

    def to(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        return (
            self.mean_x.to(device, dtype),
            self.std_x.to(device, dtype),
            self.mean_y.to(device, dtype),
        )

    def fold_into(self, first: nn.Linear, last: nn.Linear) -> None:
        """Rewrite ``first``/``last`` so the network maps raw activations to raw activations.

        Input: ``W (x - m)/s + b = (W/s) x + (b - (W/s) m)``. Output: ``my + sy (W h + b)``.
        Works when ``first is last`` (the affine case) because the two steps compose.
        """
        if first.bias is None or last.bias is None:
            raise SteeringTransferError("internal: folding needs linear layers with a bias")
        f64 = torch.float64
        with torch.no_grad():
            dev = first.weight.device
            weight = first.weight.to(f64) / self.std_x.to(dev)
            bias = first.bias.to(f64) - weight @ self.mean_x.to(dev)
            first.weight.copy_(weight)
            first.bias.copy_(bias)
            dev = last.weight.device
            last.weight.copy_(last.weight.to(f64) * self.scale_y)
            last.bias.copy_(self.mean_y.to(dev) + self.scale_y * last.bias.to(f64))


def train_mse(
    module: nn.Module,
    first: nn.Linear,
    last: nn.Linear,
    source: torch.Tensor,
    target: torch.Tensor,
    config: GradientConfig,
    *,
    split: FitSplit | None = None,
    show_progress: bool,
    desc: str,
) -> FitReport:
    """AdamW on the MSE with early stopping on the split's held-out rows and best-weight restore.

    ``module`` maps (standardised) source rows to (standardised) target rows; ``first`` and
    ``last`` are its input and output linear layers, into which the standardisation is folded
    afterwards. ``split`` is the fit's (:meth:`Mapper.fit` draws it; default: drawn here from
    ``config``); its generator continues into the epoch shuffles. Losses in the
    report are the paper's MSE in raw activation units. A fit that diverges (a NaN/inf loss,
    or returned weights whose loss exceeds :data:`DIVERGENCE_FACTOR` times both the loss
    before training and the target variance) raises, naming ``lr``.
    """
    start = time.perf_counter()
    if split is None:
        split = FitSplit.draw(source.shape[0], config.val_fraction, config.seed)
    generator, val_rows, train_rows = split.generator, split.val_rows, split.train_rows
    n_val, n_train = val_rows.numel(), train_rows.numel()

    param = next(module.parameters())
    device, dtype = param.device, param.dtype
    norm = _Standardizer.from_rows(source, target, train_rows) if config.standardize else None
    if norm is not None:
        mean_x, std_x, mean_y = norm.to(device, dtype)
    loss_scale = norm.scale_y**2 if norm is not None else 1.0

    def batch(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = source[rows.to(source.device)].to(device, dtype)
        y = target[rows.to(target.device)].to(device, dtype)
        if norm is not None:
            x = (x - mean_x) / std_x
            y = (y - mean_y) / norm.scale_y
        return x, y

    def rows_loss(rows_all: torch.Tensor) -> float:
        total = torch.zeros((), dtype=torch.float64, device=device)
        with torch.no_grad():
            for rows in rows_all.split(_EVAL_ROWS):
                x, y = batch(rows)
                total += (module(x) - y).double().square().sum()
        return float(total) / (rows_all.numel() * target.shape[1]) * loss_scale

    def val_loss() -> float:
        return rows_loss(val_rows)

    # references for the divergence check (forward passes only: no RNG, no weight change)
    monitored_rows = val_rows if n_val else train_rows
    initial_loss = rows_loss(monitored_rows)
    reference = max(initial_loss, _target_variance(target, monitored_rows))

    optimizer = torch.optim.AdamW(module.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    train_curve: list[float] = []
    val_curve: list[float] = []
    best = math.inf
    best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    bad_epochs = 0
    stopped_early = False
    epochs = 0
    module.train()
    bar = tqdm(range(config.max_epochs), desc=desc, disable=not show_progress, leave=False)
    for _ in bar:
        epochs += 1
        order = train_rows[torch.randperm(n_train, generator=generator)]
        total = torch.zeros((), dtype=torch.float64, device=device)
        for rows in order.split(config.batch_size):
            x, y = batch(rows)
            loss = F.mse_loss(module(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().double() * rows.numel()
        train_curve.append(float(total) / n_train * loss_scale)
        if n_val:
            val_curve.append(val_loss())
        monitored = val_curve[-1] if n_val else train_curve[-1]
        postfix = {"train": f"{train_curve[-1]:.4g}"}
        if n_val:
            postfix["val"] = f"{val_curve[-1]:.4g}"
        bar.set_postfix(postfix)
        if not math.isfinite(monitored):
            raise SteeringTransferError(
                f"training diverged (loss {monitored}); lower lr (currently {config.lr})"
            )
        if monitored < best:
            best = monitored
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= config.patience:
                stopped_early = True
                break
    bar.close()
    module.load_state_dict(best_state)
    # the returned weights' loss: the validation loss that chose them, or (no validation
    # split) their training loss, which the epoch averages (taken before each step) miss
    returned = best if n_val else rows_loss(train_rows)
    if not math.isfinite(returned) or returned > DIVERGENCE_FACTOR * reference:
        _diverged(config, returned, initial_loss, reference, "validation" if n_val else "training")
    if norm is not None:
        norm.fold_into(first, last)
    module.eval()
    return FitReport(
        n_train=n_train,
        n_val=n_val,
        seconds=time.perf_counter() - start,
        train_loss=train_curve,
        val_loss=val_curve,
        epochs=epochs,
        stopped_early=stopped_early,
    )


def _target_variance(target: torch.Tensor, rows: torch.Tensor) -> float:
    """Mean per-element variance of ``target[rows]`` (the MSE of predicting their mean)."""
    f64 = torch.float64
    chunks = rows.split(_EVAL_ROWS)
    total = sum(target[c.to(target.device)].sum(0, dtype=f64) for c in chunks)
    mean = torch.as_tensor(total) / rows.numel()
    ss = sum(float((target[c.to(target.device)].to(f64) - mean).square().sum()) for c in chunks)
    return ss / (rows.numel() * target.shape[1])


def _diverged(
    config: GradientConfig, best: float, initial: float, reference: float, split: str
) -> None:
    hint = "" if config.standardize else " or set standardize=True"
    raise SteeringTransferError(
        f"training diverged: the returned weights' {split} loss {best:.3g} is more than "
        f"{DIVERGENCE_FACTOR:g}x the loss before training ({initial:.3g}) and the target "
        f"variance (reference {reference:.3g}); lower lr (currently {config.lr:g}, try "
        f"{config.lr / 10:g}){hint}"
    )
