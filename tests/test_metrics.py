"""Metrics: exact values on hand-checkable inputs, masks, and the Wilson interval."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from steering_transfer.errors import SteeringTransferError
from steering_transfer.metrics import Rate, cosine, fvu, mse, wilson_interval

PRED = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
TARGET = torch.tensor([[1.0, 0.0], [0.0, 4.0]])


def test_mse_exact() -> None:
    # squared errors 0 + 4 + 9 + 0 = 13 over 2 tokens x 2 dims
    assert float(mse(PRED, TARGET)) == pytest.approx(13 / 4, abs=1e-12)


@pytest.mark.parametrize(
    "mask", [torch.tensor([True, False]), torch.tensor([1, 0]), torch.tensor([1.0, 0.0])]
)
def test_mse_row_mask_bool_int_float(mask: torch.Tensor) -> None:
    assert float(mse(PRED, TARGET, mask)) == pytest.approx(4 / 2, abs=1e-12)


def test_batched_mask_matches_flattened_selection() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 5, 4, generator=gen)
    target = torch.randn(3, 5, 4, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    keep = mask.bool()
    for fn in (mse, cosine, fvu):
        expected = fn(pred[keep], target[keep])
        assert float(fn(pred, target, mask)) == pytest.approx(float(expected), rel=1e-12)


def test_mse_is_differentiable() -> None:
    pred = PRED.clone().requires_grad_(True)
    mse(pred, TARGET).backward()
    assert pred.grad is not None
    # d/dŷ of Σ(ŷ - y)² / (n d) = 2 (ŷ - y) / 4
    assert torch.allclose(pred.grad, (PRED - TARGET) / 2)


def test_cosine_exact() -> None:
    pred = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # cosines 1, 1/sqrt(2), -1
    expected = (1 + 1 / math.sqrt(2) - 1) / 3
    assert float(cosine(pred, target)) == pytest.approx(expected, abs=1e-12)
    assert float(cosine(pred, target, torch.tensor([True, True, False]))) == pytest.approx(
        (1 + 1 / math.sqrt(2)) / 2, abs=1e-12
    )


def test_fvu_per_dimension_and_scalar_mean() -> None:
    target = torch.tensor([[0.0, 10.0], [2.0, 14.0]])
    per_dim_mean = target.mean(0, keepdim=True).expand_as(target)
    # per-dim means (1, 12): denominator 1 + 1 + 4 + 4 = 10; predicting the mean scores 1
    assert float(fvu(per_dim_mean, target)) == pytest.approx(1.0, abs=1e-12)
    # scalar mean 6.5: denominator 6.5² + 3.5² + 4.5² + 7.5² = 131; numerator stays 10
    assert float(fvu(per_dim_mean, target, scalar_mean=True)) == pytest.approx(
        10 / 131, abs=1e-12
    )
    assert float(fvu(target, target)) == 0.0


def test_metric_shape_errors_name_the_parameter() -> None:
    with pytest.raises(SteeringTransferError, match=r"pred has shape \(2, 2\) but target"):
        mse(PRED, TARGET[:, :1])
    with pytest.raises(SteeringTransferError, match="mask has shape"):
        cosine(PRED, TARGET, torch.tensor([True, False, True]))
    with pytest.raises(SteeringTransferError, match="mask must be boolean or contain only 0"):
        mse(PRED, TARGET, torch.tensor([2, 0]))
    with pytest.raises(SteeringTransferError, match=r"pred must be a torch\.Tensor"):
        mse([[1.0]], TARGET)  # type: ignore[arg-type]


def test_metric_empty_selection_raises() -> None:
    with pytest.raises(SteeringTransferError, match="no tokens to score"):
        mse(PRED, TARGET, torch.tensor([False, False]))
    with pytest.raises(SteeringTransferError, match="no tokens to score"):
        fvu(torch.zeros(0, 3), torch.zeros(0, 3))


def test_fvu_zero_variance_raises() -> None:
    with pytest.raises(SteeringTransferError, match="zero variance"):
        fvu(PRED, torch.ones(2, 2))


def test_wilson_interval_hand_computed() -> None:
    # 42/50, z = 1.96: p = 0.84, z² = 3.8416, denom = 1 + z²/n = 1.076832,
    # centre = (0.84 + 3.8416/100) / 1.076832 = 0.815741,
    # half = 1.96 * sqrt(0.84*0.16/50 + 3.8416/10000) / 1.076832 = 0.100886
    low, high = wilson_interval(42, 50)
    assert low == pytest.approx(0.815741 - 0.100886, abs=2e-6)
    assert high == pytest.approx(0.815741 + 0.100886, abs=2e-6)
    # 0/10: the interval is [0, z²/(n + z²)] = [0, 3.8416/13.8416]
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(3.8416 / 13.8416, abs=1e-12)
    low, high = wilson_interval(10, 10)
    assert high == 1.0
    assert low == pytest.approx(10 / 13.8416, abs=1e-12)


@pytest.mark.parametrize(
    ("successes", "n", "match"),
    [(0, 0, "n must be a positive"), (6, 5, "successes must be in"), (-1, 5, "successes"),
     (1.0, 5, "successes must be an int")],
)
def test_wilson_interval_rejects_bad_counts(successes: int, n: int, match: str) -> None:
    with pytest.raises(SteeringTransferError, match=match):
        wilson_interval(successes, n)


def test_rate() -> None:
    rate = Rate(42, 50)
    assert rate.rate == 0.84
    assert str(rate) == "0.84 [0.71, 0.92] (n=50)"
    assert rate.to_dict() == {
        "successes": 42, "n": 50, "rate": 0.84, "low": rate.low, "high": rate.high,
    }
    assert (rate.low, rate.high) == wilson_interval(42, 50)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rate.n = 10  # type: ignore[misc]
    with pytest.raises(SteeringTransferError, match="n must be a positive"):
        Rate(0, 0)


def test_wilson_interval_contains_the_estimate_at_the_boundaries() -> None:
    from steering_transfer.metrics import wilson_interval

    assert wilson_interval(60, 60)[1] == 1.0
    assert wilson_interval(0, 60)[0] == 0.0
