"""The refusal scorer reads only successes for coherence, each distinct completion once."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from steering_transfer.experiments import refusal as refusal_cell


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    seen: list[list[str]] = []

    def fake_losses(side: Any, contexts: list[str], completions: list[str], bs: int) -> list[float]:
        seen.append(list(completions))
        return [float(len(c)) for c in completions]  # a loss per completion: its length

    monkeypatch.setattr(refusal_cell, "completion_losses", fake_losses)
    return seen


def _scorer(bound: float) -> refusal_cell.RefusalScorer:
    side = SimpleNamespace(prompt=lambda text: f"Q: {text}\nA:")
    return refusal_cell.RefusalScorer(
        side, lambda c: c.startswith("Sure"), "jailbreak", bound=bound  # type: ignore[arg-type]
    )


def test_only_successes_are_read_once(calls: list[list[str]]) -> None:
    scorer = _scorer(bound=9.0)
    out = scorer(["Sure, here", "I cannot", "Sure, here", "Sure, this is long"])
    assert calls == [["Sure, here", "Sure, this is long"]]
    assert out.success == [True, False, True, True]
    assert out.coherent == [False, False, False, False]
    assert out.losses[0] == 10.0 and math.isnan(out.losses[1])
    assert out.rate.successes == 0  # every success is longer than the bound of 9
    again = scorer(["Sure, here", "No"])
    assert len(calls) == 1  # memoised: nothing new to read
    assert again.raw.successes == 1


def test_coherent_successes_use_the_bound(calls: list[list[str]]) -> None:
    out = _scorer(bound=12.0)(["Sure, here", "Sure, this is long", "Nope"])
    assert out.coherent_success == [True, False, False]
    assert out.rate.successes == 1 and out.raw.successes == 2


def test_losses_read_every_completion(calls: list[list[str]]) -> None:
    """The bound is calibrated on all of the target's own answers, not only successes."""
    assert _scorer(bound=1.0).losses(["a", "bb"]) == [1.0, 2.0]
    assert calls == [["a", "bb"]]
