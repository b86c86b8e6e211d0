"""Metrics: exact values on hand-checkable inputs, masks, and the Wilson interval."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from steering_transfer.errors import SteeringTransferError
from steering_transfer.metrics import (
    PairedTest,
    Rate,
    cosine,
    fvu,
    mse,
    paired_exact_test,
    wilson_interval,
)

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


def _textbook_wilson(k: int, n: int, z: float) -> tuple[float, float]:
    """Wilson (1927) as in textbooks: (p + z²/2n ± z √(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return (centre - half) / denom, (centre + half) / denom


@pytest.mark.parametrize("z", [1.0, 1.96, 2.576])
def test_wilson_interval_matches_the_textbook_formula(z: float) -> None:
    for n in range(1, 61):
        for k in range(n + 1):
            low, high = wilson_interval(k, n, z)
            want_low, want_high = _textbook_wilson(k, n, z)
            assert low == pytest.approx(want_low, abs=1e-12), (k, n)
            assert high == pytest.approx(want_high, abs=1e-12), (k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0
            assert isinstance(low, float) and isinstance(high, float)
        assert wilson_interval(0, n, z)[0] == 0.0 and wilson_interval(n, n, z)[1] == 1.0


@pytest.mark.parametrize("z", [0, -1.0, math.inf, math.nan, True, "1.96", 9.0])
def test_wilson_interval_rejects_bad_z(z: object) -> None:
    with pytest.raises(SteeringTransferError, match="z"):
        wilson_interval(3, 10, z)  # type: ignore[arg-type]


def test_rate_pooled_sums_successes_and_trials() -> None:
    pooled = Rate.pooled([Rate(3, 10), Rate(0, 5), Rate(7, 7)])
    assert pooled == Rate(10, 22)
    assert (pooled.low, pooled.high) == wilson_interval(10, 22)
    assert Rate.pooled((Rate(1, 2),)) == Rate(1, 2)
    with pytest.raises(SteeringTransferError, match="rates is empty"):
        Rate.pooled([])
    with pytest.raises(SteeringTransferError, match="item 1 is tuple"):
        Rate.pooled([Rate(1, 2), (1, 2)])  # type: ignore[list-item]
    with pytest.raises(SteeringTransferError, match="sequence of Rate"):
        Rate.pooled(Rate(1, 2))  # type: ignore[arg-type]


def test_paired_exact_test_hand_computed() -> None:
    # 10 prompts: 5 only x solves, 1 only y solves, 3 both, 1 neither. Under the null the 6
    # discordant prompts are fair coin flips: P(X >= 5 | Bin(6, 1/2)) = (6 + 1) / 64.
    x = [True] * 5 + [False] + [True] * 3 + [False]
    y = [False] * 5 + [True] + [True] * 3 + [False]
    test = paired_exact_test(x, y)
    assert (test.x_only, test.y_only, test.n, test.alternative) == (5, 1, 10, "greater")
    assert test.p_value == pytest.approx(7 / 64, abs=1e-12)
    assert paired_exact_test(x, y, "two-sided").p_value == pytest.approx(14 / 64, abs=1e-12)
    assert paired_exact_test(x, y, "less").p_value == pytest.approx(63 / 64, abs=1e-12)
    swapped = paired_exact_test(y, x)  # "greater" is about the first argument
    assert (swapped.x_only, swapped.y_only) == (1, 5)
    assert swapped.p_value == pytest.approx(63 / 64, abs=1e-12)
    assert test.to_dict() == {"x_only": 5, "y_only": 1, "n": 10, "p_value": test.p_value,
                              "alternative": "greater"}
    assert isinstance(test.p_value, float)
    assert paired_exact_test(np.array(x), tuple(y)) == test  # bool arrays and tuples work too
    with pytest.raises(dataclasses.FrozenInstanceError):
        test.n = 3  # type: ignore[misc]


def test_paired_exact_test_without_discordant_prompts_is_uninformative() -> None:
    same = [True, False, True]
    for alternative in ("greater", "less", "two-sided"):
        assert paired_exact_test(same, same, alternative) == PairedTest(0, 0, 3, 1.0, alternative)


@pytest.mark.parametrize(
    ("x", "y", "alternative", "match"),
    [
        ([True, False], [True], "greater", "x has 2 outcomes but y has 1"),
        ([], [], "greater", "empty"),
        ([True, 1], [True, True], "greater", r"x\[1\] must be a bool"),
        ([True], [0.0], "greater", r"y\[0\] must be a bool"),
        ("TF", "TF", "greater", "x must be a sequence of bools"),
        (np.array([1, 0]), [True, False], "greater", r"x\[0\] must be a bool"),
        ([True], [False], "bigger", "alternative must be one of greater, less, two-sided"),
    ],
)
def test_paired_exact_test_rejects_bad_input(
    x: object, y: object, alternative: str, match: str
) -> None:
    with pytest.raises(SteeringTransferError, match=match):
        paired_exact_test(x, y, alternative)  # type: ignore[arg-type]
