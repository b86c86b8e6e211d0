"""Speed of extraction (with early exit) and of steered generation, relative to plain runs.

Targets (issue #2): extraction of the last layer >= 0.95x plain-forward throughput, of a layer
at one third depth >= 1.6x (early exit), steered generation <= 1.05x plain generation time.
The asserted bounds are looser regression guards (calibration in ``CALIBRATION``); the measured
figures go to reports/performance.md.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from steering_transfer import hooks
from steering_transfer.activations import forward_layer
from steering_transfer.generation import generate
from steering_transfer.models import ModelHandle
from steering_transfer.suite import Cell
from steering_transfer.suite.matrix import PERF_TASK

# task "perf" for --tasks; outside every --pairs/--layers/--mappers selection
pytestmark = pytest.mark.st_cell(Cell(tasks=(PERF_TASK,)))

SEED = 0
N_TEXTS = 16
ROUNDS = 5
# Measured on the 2-core dev machine with SmolLM2-135M (2026-11-24): extraction last layer
# ~1.2x, one-third depth ~3x, steered generation ~1.0x. Guards leave a wide margin for noise.
CALIBRATION = {"extract_last": 0.85, "extract_third": 1.3, "steered_generation": 1.25}

TEXTS = [
    f"Question {i}: explain in a few sentences why the {topic} matters for everyday life. Answer:"
    for i, topic in enumerate(
        [
            "weather",
            "ocean",
            "economy",
            "garden",
            "library",
            "bridge",
            "river",
            "market",
            "kitchen",
            "forest",
            "school",
            "harbor",
            "museum",
            "orchard",
            "railway",
            "theater",
        ]
    )
]


@dataclass
class SpeedResult:
    name: str
    reference_s: float
    candidate_s: float
    bound: float
    higher_is_better: bool

    @property
    def ratio(self) -> float:
        """Throughput ratio (reference/candidate time) or time ratio (candidate/reference)."""
        if self.higher_is_better:
            return self.reference_s / self.candidate_s
        return self.candidate_s / self.reference_s

    @property
    def passed(self) -> bool:
        return self.ratio >= self.bound if self.higher_is_better else self.ratio <= self.bound

    @property
    def message(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        return f"{self.name}: ratio {self.ratio:.3f}, guard {op} {self.bound}"


def _interleaved(reference: Callable[[], Any], candidate: Callable[[], Any]) -> tuple[float, float]:
    ref_t: list[float] = []
    cand_t: list[float] = []
    reference()
    candidate()  # warm-up
    for _ in range(ROUNDS):
        for fn, store in ((reference, ref_t), (candidate, cand_t)):
            start = time.perf_counter()
            fn()
            store.append(time.perf_counter() - start)
    return statistics.median(ref_t), statistics.median(cand_t)


def _record(perf_report: Any, benchmark: Any, result: SpeedResult, **extra: Any) -> None:
    benchmark.extra_info.update({"ratio": result.ratio, "reference_s": result.reference_s})
    perf_report.add(
        stage=result.name,
        reference_s=round(result.reference_s, 4),
        candidate_s=round(result.candidate_s, 4),
        ratio=round(result.ratio, 3),
        guard=result.bound,
        seed=SEED,
        rounds=ROUNDS,
        **extra,
    )


@pytest.mark.benchmark(group="extraction")
@pytest.mark.parametrize("depth", ["last", "third"])
def test_extraction_throughput(
    benchmark: Any, perf_model: ModelHandle, perf_report: Any, depth: str
) -> None:
    enc = perf_model.tokenize(TEXTS, max_length=128)
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask")}
    layer = perf_model.n_layers - 1 if depth == "last" else perf_model.n_layers // 3

    def plain() -> None:
        with torch.no_grad():
            perf_model.model(**inputs, use_cache=False)

    def extract() -> None:
        forward_layer(perf_model, enc, layer)

    n_tokens = inputs["input_ids"].shape[1]
    ref, cand = _interleaved(plain, extract)
    benchmark.pedantic(extract, rounds=3, warmup_rounds=0)
    result = SpeedResult(f"extract_{depth}", ref, cand, CALIBRATION[f"extract_{depth}"], True)
    _record(
        perf_report,
        benchmark,
        result,
        model=perf_model.model_id,
        detail=f"layer {layer}/{perf_model.n_layers}, {N_TEXTS} texts x {n_tokens} tok",
    )
    assert result.passed, result.message


@pytest.mark.benchmark(group="generation")
def test_steered_generation_overhead(
    benchmark: Any, perf_model: ModelHandle, perf_report: Any
) -> None:
    generator = torch.Generator().manual_seed(SEED)
    vector = torch.randn(perf_model.hidden_size, generator=generator)
    prompts = TEXTS[:8]

    def plain() -> None:
        generate(perf_model, prompts, max_new_tokens=16, batch_size=8, min_new_tokens=16)

    def steered() -> None:
        generate(
            perf_model,
            prompts,
            max_new_tokens=16,
            batch_size=8,
            min_new_tokens=16,
            intervention=lambda prompts, enc: hooks.add(
                perf_model, perf_model.n_layers // 2, vector, 4.0
            ),
        )

    ref, cand = _interleaved(plain, steered)
    benchmark.pedantic(steered, rounds=2, warmup_rounds=0)
    result = SpeedResult("steered_generation", ref, cand, CALIBRATION["steered_generation"], False)
    _record(
        perf_report,
        benchmark,
        result,
        model=perf_model.model_id,
        detail="8 prompts, exactly 16 new tokens, greedy, batch 8",
    )
    assert result.passed, result.message
