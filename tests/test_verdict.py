"""The steering verdict (experiments/verdict.py) on hand-made rates: every verdict is reachable,
each condition of "beats noise" is needed, and a mapped vector that is just one more random
direction (or the ensemble's own majority vote) never earns transfer or partial."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from steering_transfer.errors import SteeringTransferError
from steering_transfer.experiments.backdoor import _evidence
from steering_transfer.experiments.protocol import Ensemble, Outcomes
from steering_transfer.experiments.verdict import (
    ALPHA,
    BEATS_NOISE,
    NATIVE_FRACTION,
    VERDICTS,
    Evidence,
    check_verdict,
)
from steering_transfer.metrics import Rate

N = 60


def _ev(**changes: Any) -> Evidence:
    """Evidence of a clear transfer (native 1.00, mapped 0.90, noise 0.02), with ``changes``."""
    values: dict[str, Any] = {
        "native": Rate(60, N),
        "mapped": Rate(54, N),
        "noise": Rate(8, 480),
        "noise_worst": 0.05,
        "paired_p": 1e-9,
    }
    return Evidence(**{**values, **changes})


# ----------------------------------------------------------------------------- every verdict


def test_every_verdict_is_reachable() -> None:
    seen = {
        _ev().verdict(),
        _ev(mapped=Rate(30, N)).verdict(),
        _ev(mapped=Rate(2, N), paired_p=0.9).verdict(),
        _ev(separating=False).verdict(),
    }
    assert seen == set(VERDICTS)
    assert BEATS_NOISE == ("transfer", "partial")


def test_transfer_and_partial_split_at_the_native_fraction() -> None:
    assert NATIVE_FRACTION == 0.8
    # 48/60 is exactly 0.8 x 60/60: the boundary counts as transfer
    assert _ev(mapped=Rate(48, N)).verdict() == "transfer"
    assert _ev(mapped=Rate(47, N)).verdict() == "partial"
    # the fraction is of native's rate, not of 1
    assert _ev(native=Rate(40, N), mapped=Rate(32, N)).verdict() == "transfer"
    assert _ev(native=Rate(40, N), mapped=Rate(31, N)).verdict() == "partial"


def test_mapped_above_native_is_transfer() -> None:
    assert _ev(native=Rate(30, N), mapped=Rate(60, N)).verdict() == "transfer"


# ---------------------------------------------------------------------- beats_noise: all three


def test_beats_noise_needs_the_lower_bound_above_the_noise_upper_bound() -> None:
    ev = _ev(mapped=Rate(14, N), noise=Rate(10, N), noise_worst=0.1)
    assert ev.mapped.rate > ev.noise_worst and ev.paired_p < ALPHA
    assert ev.mapped.low <= ev.noise.high
    assert not ev.beats_noise and ev.verdict() == "none"
    assert ev.margin_low == pytest.approx(ev.mapped.low - ev.noise.high)
    assert ev.margin_low <= 0 < _ev().margin_low


def test_beats_noise_needs_more_than_the_best_single_direction() -> None:
    # the pooled ensemble is low, but one random direction does as well as mapped
    for worst in (0.9, 0.91, 1.0):
        ev = _ev(noise_worst=worst)
        assert ev.mapped.low > ev.noise.high and ev.paired_p < ALPHA
        assert not ev.beats_noise and ev.verdict() == "none", worst
    assert _ev(noise_worst=0.89).verdict() == "transfer"


def test_beats_noise_needs_a_significant_paired_test() -> None:
    for p in (ALPHA, 0.06, 0.5, 1.0):
        ev = _ev(paired_p=p)
        assert ev.mapped.low > ev.noise.high and ev.mapped.rate > ev.noise_worst
        assert not ev.beats_noise and ev.verdict() == "none", p
    assert _ev(paired_p=ALPHA * 0.99).verdict() == "transfer"
    assert _ev(paired_p=float("nan")).verdict() == "none"  # no test, no claim


# ------------------------------------------------------------------------------ uninformative


def test_uninformative_when_no_strength_separated_on_validation() -> None:
    ev = _ev(separating=False)
    assert ev.beats_noise and not ev.native_informative
    assert ev.verdict() == "uninformative"


def test_uninformative_when_native_is_not_above_native_noise() -> None:
    # the native-norm ensemble at native's strength is as good as native: nothing to transfer
    ev = _ev(native_noise=Rate(55, N))
    assert ev.beats_noise and ev.native.low <= Rate(55, N).high
    assert ev.verdict() == "uninformative"
    # native_noise, not the mapped-strength reference, decides informativeness
    assert _ev(native_noise=Rate(1, N), noise=Rate(8, 480)).verdict() == "transfer"
    high_reference = _ev(native=Rate(40, N), noise=Rate(40, N), native_noise=Rate(0, N),
                         mapped=Rate(60, N), noise_worst=0.7)
    assert high_reference.native_informative and high_reference.verdict() == "transfer"
    # without native_noise the reference itself is used
    assert _ev(native=Rate(20, N), noise=Rate(20, N)).verdict() == "uninformative"
    # a native that fails outright is uninformative, not "none"
    assert _ev(native=Rate(0, N), mapped=Rate(0, N), paired_p=1.0).verdict() == "uninformative"


# -------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize(
    "ev",
    [_ev(), _ev(separating=False), _ev(native_noise=Rate(3, N)), _ev(mapped=Rate(0, N)),
     _ev(paired_p=1.0, noise_worst=0.0)],
)
def test_evidence_round_trips_through_json(ev: Evidence) -> None:
    data = json.loads(json.dumps(ev.to_dict()))
    assert data["verdict"] == ev.verdict()
    back = Evidence.from_dict(data)
    assert back == ev and back.verdict() == ev.verdict()


def test_from_dict_defaults_for_older_records() -> None:
    data = _ev().to_dict()
    del data["separating"], data["native_noise"]
    assert Evidence.from_dict(data) == _ev()


def _broken(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(_ev(native_noise=Rate(1, N)).to_dict()))
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


MALFORMED = [
    _broken(("native",), KeyError),
    _broken(("mapped",), KeyError),
    _broken(("noise",), KeyError),
    _broken(("noise_worst",), KeyError),
    _broken(("paired_p",), KeyError),
    _broken(("native", "successes"), KeyError),
    _broken(("mapped", "n"), KeyError),
    _broken(("native_noise", "n"), KeyError),
    _broken(("native",), "0.9"),
    _broken(("mapped",), None),
    _broken(("noise",), [3, 60]),
    _broken(("native", "successes"), "many"),
    _broken(("mapped", "n"), None),
    _broken(("noise_worst",), None),
    _broken(("noise_worst",), "high"),
    _broken(("paired_p",), {"p": 0.01}),
    _broken(("native", "successes"), 61),  # more successes than trials
    _broken(("mapped", "n"), 0),
]


@pytest.mark.parametrize("data", [*MALFORMED, [], None, "transfer", {}])
def test_from_dict_on_malformed_data_raises(data: Any) -> None:
    with pytest.raises(SteeringTransferError):
        Evidence.from_dict(data)


def test_check_verdict() -> None:
    for name in VERDICTS:
        assert check_verdict(name, "min_verdict") == name
    with pytest.raises(SteeringTransferError, match=r"min_verdict='good'.*transfer, partial"):
        check_verdict("good", "min_verdict")


# -------------------------------------------- mapped = noise must fail (backdoor._evidence)


def _outcomes(success: list[bool], coherent: list[bool] | None = None) -> Outcomes:
    coherent = coherent if coherent is not None else [True] * len(success)
    return Outcomes(labels=["x"] * len(success), success=success, coherent=coherent,
                    losses=[0.0] * len(success))


def _random_ensemble(rng: random.Random, k: int, n: int, max_rate: float) -> Ensemble:
    """K directions with varied success rates and per-prompt patterns (some incoherent)."""
    members = []
    for _ in range(k):
        p = rng.uniform(0.0, max_rate)
        success = [rng.random() < p for _ in range(n)]
        coherent = [rng.random() < 0.9 for _ in range(n)]
        members.append(_outcomes(success, coherent))
    return Ensemble(members)


def _rotating_ensemble(k: int, n: int) -> Ensemble:
    """Member j succeeds everywhere except on prompts i with i % k == j: each member's rate is
    (k-1)/k but their majority succeeds on every prompt (more than any single direction)."""
    return Ensemble([_outcomes([i % k != j for i in range(n)]) for j in range(k)])


NATIVE = _outcomes([True] * N)


def _ensembles() -> list[tuple[Ensemble, Ensemble, Ensemble]]:
    """(native_noise, at_native, at_mapped) triples of varied shapes."""
    rng = random.Random(0)
    cases = []
    for k in (3, 4, 8):
        for max_rate in (0.1, 0.3, 0.6):
            cases.append((
                _random_ensemble(rng, k, N, 0.1),
                _random_ensemble(rng, k, N, max_rate),
                _random_ensemble(rng, k, N, max_rate),
            ))
    quiet = _random_ensemble(rng, 3, N, 0.05)
    for k in (3, 5):
        rotating = _rotating_ensemble(k, N)
        cases.append((quiet, rotating, rotating))
    return cases


@pytest.mark.parametrize("case", range(len(_ensembles())))
def test_a_mapped_vector_that_is_one_of_the_noise_directions_never_beats_noise(case: int) -> None:
    native_noise, at_native, at_mapped = _ensembles()[case]
    # a "mapped" vector that is one of the noise directions has that direction's norm: the
    # ensemble of its own norm (the verdict's reference) is the one it belongs to
    for ensemble in (at_native, at_mapped):
        for j, member in enumerate(ensemble.members):
            for separating in (True, False):
                ev = _evidence(member, NATIVE, native_noise, at_native, ensemble, separating)
                assert ev.verdict() not in BEATS_NOISE, (case, j, ev)
                assert not ev.beats_noise
                # ... and the verdict says so: "none" where native itself is informative
                if separating and ev.native_informative:
                    assert ev.verdict() == "none"


@pytest.mark.parametrize("case", range(len(_ensembles())))
def test_a_mapped_vector_that_is_the_ensembles_majority_never_beats_noise(case: int) -> None:
    native_noise, at_native, at_mapped = _ensembles()[case]
    for ensemble in (at_native, at_mapped):
        # mapped scores exactly what the ensemble's majority scores, prompt by prompt; the
        # ensemble is both references (the mapped norm equals the native norm)
        mapped = _outcomes(ensemble.majority())
        ev = _evidence(mapped, NATIVE, native_noise, ensemble, ensemble, separating=True)
        assert ev.paired_p == 1.0  # no discordant prompt against its own majority
        assert ev.verdict() not in BEATS_NOISE, (case, ev)


def test_the_majority_can_beat_every_single_direction_but_not_the_paired_test() -> None:
    """Why the paired test is part of the rule: a rotating ensemble's majority is above the
    pooled rate's interval and above every single direction."""
    rotating = _rotating_ensemble(5, N)
    mapped = _outcomes(rotating.majority())
    assert mapped.rate == Rate(N, N)
    assert mapped.rate.low > rotating.pooled.high and mapped.rate.rate > rotating.worst
    quiet = Ensemble([_outcomes([False] * N)] * 3)
    ev = _evidence(mapped, NATIVE, quiet, rotating, rotating, separating=True)
    assert ev.native_informative and ev.verdict() == "none"


def test_a_mapped_vector_that_does_better_than_noise_is_recognised() -> None:
    """The counterpart of the tests above: the same ensembles do not block a real effect."""
    for native_noise, at_native, at_mapped in _ensembles()[:9]:  # random ensembles (<= 0.6)
        ev = _evidence(NATIVE, NATIVE, native_noise, at_native, at_mapped, separating=True)
        assert ev.verdict() == "transfer", ev
