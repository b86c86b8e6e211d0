"""Refusal (paper sec. 4.3): each organism's refusal direction, and directions mapped across pairs.

Each test computes a result object, records it for reports/refusal.md and asserts only on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from steering_transfer.experiments.cell import Side
from steering_transfer.experiments.refusal import PreparedRefusalPair, run_refusal_cell
from steering_transfer.experiments.refusal_direction import (
    NoRefusalDirection,
    fallback_layer,
    refusal_starts,
    select_refusal_direction,
)
from steering_transfer.organisms import get_spec
from steering_transfer.suite.cells.backdoor import settle
from steering_transfer.suite.cells.refusal import (
    direction_record,
    judge_refusal,
    refusal_details,
    refusal_record,
)
from steering_transfer.suite.matrix import PairSpec
from steering_transfer.tasks import refusal
from steering_transfer.tasks.prompts import prompt_add_special_tokens

N_DIRECTION = 64  # train requests per class for the candidates
N_VALIDATION = 24  # validation requests per class for the selection


def test_refusal_transfer(
    refusal_pair: PairSpec,
    mapper: str,
    prepared_refusal: Callable[[PairSpec], PreparedRefusalPair],
    st_record: Any,
) -> None:
    result = run_refusal_cell(prepared_refusal(refusal_pair), mapper)
    bars = refusal_pair.thresholds_for(mapper)
    verdict = judge_refusal(result, bars)
    st_record(refusal_record(refusal_pair, result, verdict))
    st_record(refusal_details(refusal_pair, result))
    settle(verdict, bars)


@pytest.fixture
def direction_protocol() -> None:
    """Marker fixture: parametrized with each refusal organism and its used layers in conftest."""


@pytest.mark.usefixtures("direction_protocol")
def test_refusal_direction(
    organism: str,
    used_layers: list[int],
    source_layers: list[int],
    selection_settings: dict[str, Any],
    dtype: str,
    sides: Callable[[str, str], Side],
    st_record: Any,
) -> None:
    side = sides(organism, dtype)
    hold_out = get_spec(organism).data_options.get("hold_out", "activity")
    splits = refusal.make_splits(0, hold_out=hold_out)

    def prompts(items: Any) -> list[str]:
        return [side.prompt(p.text) for p in items]

    settings = dict(selection_settings)  # [refusal_selection.<organism>] in bench.toml
    expected_none = settings.pop("expect_no_direction", None)
    rule = settings.pop("fallback", None)
    resolved = [side.handle.layer(layer) for layer in used_layers]  # as a target (may be none)
    as_source = [side.handle.layer(layer) for layer in source_layers]
    try:
        choice = select_refusal_direction(
            side.handle,
            harmful_train=prompts(splits.harmful("train")[:N_DIRECTION]),
            harmless_train=prompts(splits.harmless("train")[:N_DIRECTION]),
            harmful_val=prompts(splits.harmful("validation")[:N_VALIDATION]),
            harmless_val=prompts(splits.harmless("validation")[:N_VALIDATION]),
            starts=refusal_starts(side.style),
            add_special_tokens=prompt_add_special_tokens(side.style),
            batch_size=24,
            **settings,
        )
    except NoRefusalDirection as none:
        fallback = None if rule is None else fallback_layer(none, rule)
        st_record(direction_record(organism, none, resolved, dtype, fallback=fallback, rule=rule))
        if expected_none is None:
            raise
        if rule is not None:
            picked = "nothing" if fallback is None else f"L{fallback.layer}"
            assert fallback is not None and all(
                layer == fallback.layer for layer in resolved + as_source
            ), (
                f"{organism}: the fallback rule {rule!r} picks {picked} but the refusal cells "
                f"use it at layers {sorted(set(resolved + as_source))}; update fixtures/bench.toml"
            )
        pytest.xfail(f"{expected_none} | {none}")
    st_record(direction_record(organism, choice, resolved, dtype))
    if expected_none is not None:
        pytest.fail(
            f"{organism}: the matrix expects no refusal direction ({expected_none}) but "
            f"L{choice.layer} passes the filters; update fixtures/bench.toml"
        )
    assert all(layer == choice.layer for layer in resolved), (
        f"{organism}: refusal cells use it as a target at layers {resolved} but the selection "
        f"picks L{choice.layer} (kept: {[c.layer for c in choice.candidates if c.kept]}); the "
        "used layer must be the selected one: update fixtures/bench.toml from reports/refusal.md"
    )
